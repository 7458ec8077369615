"""The PowerShell probes: syntax, headers, and the bootstrap that runs them."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
import tree_sitter
import tree_sitter_powershell

from workers import probes

PROBE_DIR = Path(probes.__file__).resolve().parent
SCRIPTS = sorted(PROBE_DIR.glob("*.ps1"))
PROBE_SCRIPTS = [p for p in SCRIPTS if not p.name.startswith("_")]
CMD_LINE_LIMIT = 8191  # cmd.exe / CreateProcess command line limit WinRM runs into

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


def first_bad_node(node: tree_sitter.Node) -> tree_sitter.Node | None:
    if node.is_error or node.is_missing:
        return node
    for child in node.children:
        bad = first_bad_node(child)
        if bad is not None:
            return bad
    return None


def syntax_problem(source: bytes) -> str | None:
    tree = PARSER.parse(source)
    if not tree.root_node.has_error:
        return None
    bad = first_bad_node(tree.root_node)
    if bad is None:
        return "has_error but no ERROR/MISSING node found"
    row, col = bad.start_point
    kind = f"MISSING {bad.type}" if bad.is_missing else "ERROR"
    text = source.splitlines()[row].decode("utf-8", "replace") if row < len(source.splitlines()) else ""
    return f"line {row + 1}, column {col + 1}: {kind} near {text.strip()!r}"


# -- the scripts -----------------------------------------------------------------------

def test_the_probe_folder_has_the_library_and_probes():
    assert "_lib.ps1" in {p.name for p in SCRIPTS}
    assert PROBE_SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_as_powershell(script):
    problem = syntax_problem(script.read_bytes())
    assert problem is None, f"{script.name}: {problem}"


def test_syntax_check_can_fail():
    broken = b"$a = 1\n$b = 2\n$c = @{ x = 1\n"  # unclosed hashtable
    assert PARSER.parse(broken).root_node.has_error
    problem = syntax_problem(broken)
    assert problem is not None and problem.startswith("line 3,")
    assert syntax_problem(b"$a = @{ x = 1 }\n") is None


# -- the Windows PowerShell 2.0 subset -------------------------------------------------------
# Lync Server 2010 runs on Windows Server 2008 R2 with Windows PowerShell 2.0 on CLR 2 (.NET 3.5
# SP1): a script (and _lib.ps1, dot-sourced before every probe) that uses any construct below
# does not parse or does not run there. Each entry: what, the version that brought it, why it
# fails on 2.0. Text inside string literals is not syntax and is not checked (the one use,
# Invoke-CapturedFailover's 3>&1 4>&1, is parsed only after a version check).

# type literals: [name] (2.0 resolves them to no type, or to a type that behaves differently)
V3_TYPES = {
    "ordered": "3.0: [ordered]@{} ordered hashtable literal; 2.0: type not found",
    "pscustomobject": "3.0: [pscustomobject]@{} object literal; 2.0 has no such accelerator",
    "system.management.automation.pscustomobject": "3.0: casting a hashtable to it makes an object only from 3.0 on",
    "ciminstance": "3.0: CIM cmdlets' types (Microsoft.Management.Infrastructure), absent in 2.0",
    "cimsession": "3.0: CIM cmdlets' types, absent in 2.0",
    "cimclass": "3.0: CIM cmdlets' types, absent in 2.0",
    "cimtype": "3.0: CIM cmdlets' types, absent in 2.0",
    "cimconverter": "3.0: CIM cmdlets' types, absent in 2.0",
    "nullstring": "3.0: [NullString]::Value, absent in 2.0",
    "mailaddress": "5.0: accelerator absent in 2.0",
    "semver": "6.0: PowerShell (Core) only",
    "tuple": ".NET 4: System.Tuple does not exist on CLR 2",
    "system.tuple": ".NET 4: System.Tuple does not exist on CLR 2",
}
# operators
V3_OPERATORS = {
    "-in": "3.0: containment operator; 2.0: unexpected token", "-notin": "3.0: containment operator",
    "-iin": "3.0: containment operator", "-cin": "3.0: containment operator",
    "-inotin": "3.0: containment operator", "-cnotin": "3.0: containment operator",
    "-shl": "3.0: bit shift operator", "-shr": "3.0: bit shift operator",
}
# automatic variables and scope modifiers
V3_VARIABLES = {
    "$psitem": "3.0: alias of $_; unset (a StrictMode error) in 2.0",
    "$pscommandpath": "3.0: automatic variable, unset in 2.0",
    "$psdefaultparametervalues": "3.0: preference variable, no effect in 2.0",
    "$psscriptroot": "3.0 outside modules: unset in a 2.0 script",
}
V3_SCOPES = {"using": "3.0: $using: scope modifier (remoting/workflows); 2.0: unknown scope"}
# redirections: 2.0 knows only the output (1) and error (2) streams, and merges only 2>&1
V2_REDIRECTIONS = {">", ">>", "1>", "1>>", "2>", "2>>", "2>&1"}
V3_REDIRECTION = "3.0: warning/verbose/debug streams (3>, 4>, 5>), *> and 1>&2; 6> is 5.0; 2.0 refuses them"
# method names invoked on an object
V3_METHODS = {
    "foreach": "4.0: .ForEach() intrinsic method; 2.0: method not found",
    "where": "4.0: .Where() intrinsic method; 2.0: method not found",
    "new": "5.0: [Type]::new(); 2.0: method not found (use New-Object)",
    "isnullorwhitespace": ".NET 4: String.IsNullOrWhiteSpace is not in .NET 3.5 (PowerShell 2.0's CLR 2)",
    "enumeratefiles": ".NET 4: Directory.EnumerateFiles, not in .NET 3.5",
    "enumeratedirectories": ".NET 4: Directory.EnumerateDirectories, not in .NET 3.5",
    "enumeratefilesystementries": ".NET 4: not in .NET 3.5",
    "readlines": ".NET 4: File.ReadLines, not in .NET 3.5",
    "hasflag": ".NET 4: Enum.HasFlag, not in .NET 3.5",
}
# properties read on an object or type
V4_PROPERTIES = {
    "isinputredirected": ".NET 4.5: Console.IsInputRedirected, not in .NET 3.5 (read it by reflection, with a fallback)",
    "isoutputredirected": ".NET 4.5: Console.IsOutputRedirected, not in .NET 3.5",
    "iserrorredirected": ".NET 4.5: Console.IsErrorRedirected, not in .NET 3.5",
}
# statements and keywords
V3_STATEMENTS = {
    "class_statement": "5.0: class keyword; 2.0: parse error",
    "enum_statement": "5.0: enum keyword; 2.0: parse error",
    "workflow": "3.0: workflow keyword; 2.0: parse error",
    "using": "5.0: using statement; 2.0: command not found",
    "configuration": "4.0: DSC configuration keyword",
}
# cmdlets (and their aliases) a 2.0 host does not have. A cmdlet that some supported hosts lack
# may still be called where the same script first asks Get-Command -Name '<cmdlet>' for it.
V3_CMDLETS = {
    "convertto-json": "3.0: 2.0 has no JSON cmdlets (use ConvertTo-ProbeJson in _lib.ps1)",
    "convertfrom-json": "3.0: 2.0 has no JSON cmdlets (use ConvertFrom-ProbeJson in _lib.ps1)",
    "invoke-webrequest": "3.0", "invoke-restmethod": "3.0", "iwr": "3.0: alias of Invoke-WebRequest",
    "irm": "3.0: alias of Invoke-RestMethod",
    "get-ciminstance": "3.0: CIM cmdlets (use Get-WmiObject)", "gcim": "3.0: alias of Get-CimInstance",
    "get-cimclass": "3.0", "get-cimassociatedinstance": "3.0", "invoke-cimmethod": "3.0",
    "new-ciminstance": "3.0", "new-cimsession": "3.0", "remove-ciminstance": "3.0", "set-ciminstance": "3.0",
    "register-cimindicationevent": "3.0",
    "get-filehash": "4.0 (the probes hash with SHA256CryptoServiceProvider)",
    "test-netconnection": "Windows Server 2012 R2 (NetTCPIP module), not on 2008 R2",
    "resolve-dnsname": "Windows Server 2012 (DnsClient module), not on 2008 R2",
    "get-nettcpconnection": "Windows Server 2012 (NetTCPIP module)", "get-netipaddress": "Windows Server 2012",
    "get-smbshare": "Windows Server 2012 (SmbShare module): call only behind a Get-Command check",
    "get-smbshareaccess": "Windows Server 2012 (SmbShare module): call only behind a Get-Command check",
    "get-scheduledtask": "Windows Server 2012 (ScheduledTasks module)",
    "unblock-file": "3.0", "show-command": "3.0", "register-scheduledjob": "3.0", "get-typedata": "3.0",
    "new-temporaryfile": "5.0", "new-guid": "5.0", "get-itempropertyvalue": "5.0", "expand-archive": "5.0",
    "compress-archive": "5.0", "format-hex": "5.0", "convertfrom-string": "5.0", "write-information": "5.0",
    "get-clipboard": "5.0", "set-clipboard": "5.0", "import-powershelldatafile": "5.0", "get-runspace": "5.1",
}
# common parameters and values added after 2.0
V3_COMMON_PARAMETERS = {
    "-pipelinevariable": "4.0: common parameter", "-pv": "4.0: alias of -PipelineVariable",
    "-informationaction": "5.0: common parameter", "-infa": "5.0: alias of -InformationAction",
    "-informationvariable": "5.0: common parameter", "-iv": "5.0: alias of -InformationVariable",
}
ACTION_PARAMETERS = {"-erroraction", "-ea", "-warningaction", "-wa"}
V3_ACTION_VALUES = {"ignore": "3.0: the Ignore value of -ErrorAction/-WarningAction; 2.0 refuses it",
                    "suspend": "3.0: workflows only"}
# parameters of 2.0 cmdlets that came later
V3_PARAMETERS = {
    ("get-acl", "-literalpath"): "3.0 (use [IO.Directory]::GetAccessControl or Get-Item -LiteralPath)",
    ("get-childitem", "-file"): "3.0", ("get-childitem", "-directory"): "3.0",
    ("get-childitem", "-attributes"): "3.0", ("get-content", "-raw"): "3.0",
    ("set-content", "-nonewline"): "5.0", ("add-content", "-nonewline"): "5.0", ("out-file", "-nonewline"): "5.0",
    ("add-member", "-notepropertyname"): "3.0", ("add-member", "-notepropertyvalue"): "3.0",
    ("add-member", "-notepropertymembers"): "3.0", ("add-member", "-typename"): "3.0",
    ("foreach-object", "-membername"): "3.0", ("where-object", "-property"): "3.0 (simplified syntax)",
    ("select-object", "-skiplast"): "5.0",
}
# Where-Object / ForEach-Object without a script block: the 3.0 simplified syntax (Where-Object Name -eq 1)
FILTER_CMDLETS = {"where-object", "where", "?", "foreach-object", "%"}
FILTER_PARAMETERS = {"-filterscript", "-process", "-begin", "-end"}
V3_SIMPLIFIED = "3.0: Where-Object/ForEach-Object simplified syntax (no script block)"
REQUIRES = re.compile(r"#requires\s+-version\s+(\d+)", re.I)


def _walk(node: tree_sitter.Node):
    yield node
    for child in node.children:
        yield from _walk(child)


def _text(node: tree_sitter.Node) -> str:
    return node.text.decode("utf-8", "replace") if node.text is not None else ""


def _command_elements(command: tree_sitter.Node) -> list[tree_sitter.Node]:
    elements = next((c for c in command.children if c.type == "command_elements"), None)
    if elements is None:
        return []
    return [c for c in elements.children if c.type not in ("command_argument_sep", ":")]


def _unwrapped(node: tree_sitter.Node) -> tree_sitter.Node:
    """An argument without the expression layers the grammar wraps it in."""
    while node.type in ("array_literal_expression", "unary_expression") and node.named_child_count == 1:
        node = node.named_children[0]
    return node


def v3_constructs(source: bytes) -> list[str]:
    """Every construct of `source` that Windows PowerShell 2.0 cannot run, as 'line N: what (why)'."""
    root = PARSER.parse(source).root_node
    text = source.decode("utf-8", "replace")
    guarded = {m.lower() for m in re.findall(r"Get-Command\s+-Name\s+'([A-Za-z-]+)'", text)}
    found: list[str] = []

    def hit(node: tree_sitter.Node, what: str, why: str) -> None:
        found.append(f"line {node.start_point[0] + 1}: {what} ({why})")

    for node in _walk(root):
        kind = node.type
        if kind == "type_name" and node.parent is not None and node.parent.type == "type_spec":
            name = _text(node).lower()
            if name in V3_TYPES:
                hit(node, f"[{_text(node)}]", V3_TYPES[name])
        elif kind in V3_OPERATORS:
            hit(node, kind, V3_OPERATORS[kind])
        elif kind in ("variable", "braced_variable") and not (node.parent and node.parent.type == "braced_variable"):
            name = _text(node).lower().replace("{", "").replace("}", "")
            scope = name[1:].split(":", 1)[0] if ":" in name else ""
            if name in V3_VARIABLES:
                hit(node, _text(node), V3_VARIABLES[name])
            elif scope in V3_SCOPES:
                hit(node, _text(node), V3_SCOPES[scope])
        elif kind == "redirection":
            operator = node.children[0] if node.children else node
            if _text(operator).strip() not in V2_REDIRECTIONS:
                hit(node, _text(operator), V3_REDIRECTION)
        elif kind in ("invokation_expression", "invokation_foreach_expression"):
            if kind == "invokation_foreach_expression":
                hit(node, ".ForEach{}", V3_METHODS["foreach"])
                continue
            member = next((c for c in node.children if c.type == "member_name"), None)
            if member is not None and _text(member).lower() in V3_METHODS:
                hit(node, f"{_text(member)}()", V3_METHODS[_text(member).lower()])
        elif kind == "member_access":
            member = next((c for c in node.children if c.type == "member_name"), None)
            if member is not None and _text(member).lower() in V4_PROPERTIES:
                hit(node, _text(member), V4_PROPERTIES[_text(member).lower()])
        elif kind in ("class_statement", "enum_statement"):
            hit(node, kind.split("_")[0], V3_STATEMENTS[kind])
        elif kind == "workflow":
            hit(node, "workflow", V3_STATEMENTS["workflow"])
        elif kind == "comment":
            m = REQUIRES.search(_text(node))
            if m and int(m.group(1)) > 2:
                hit(node, m.group(0), f"{m.group(1)}.0: the script demands a newer PowerShell than 2.0")
        elif kind == "command":
            name_node = next((c for c in node.children if c.type == "command_name"), None)
            name = _text(name_node).lower() if name_node is not None else ""
            elements = _command_elements(node)
            if name in ("using", "configuration"):
                hit(node, name, V3_STATEMENTS[name])
            if name in V3_CMDLETS and name not in guarded:
                hit(node, _text(name_node), V3_CMDLETS[name])
            parameters = [_text(e).lower().rstrip(":") for e in elements if e.type == "command_parameter"]
            for i, element in enumerate(elements):
                if element.type != "command_parameter":
                    continue
                parameter = _text(element).lower().rstrip(":")
                if parameter in V3_COMMON_PARAMETERS:
                    hit(element, _text(element), V3_COMMON_PARAMETERS[parameter])
                if (name, parameter) in V3_PARAMETERS:
                    hit(element, f"{_text(name_node)} {_text(element)}", V3_PARAMETERS[(name, parameter)])
                if parameter in ACTION_PARAMETERS and i + 1 < len(elements):
                    value = _text(elements[i + 1]).strip("'\"").lower()
                    if value in V3_ACTION_VALUES:
                        hit(element, f"{_text(element)} {_text(elements[i + 1])}", V3_ACTION_VALUES[value])
            if name in FILTER_CMDLETS and not any(_unwrapped(e).type == "script_block_expression" for e in elements) \
                    and not FILTER_PARAMETERS & set(parameters):
                hit(node, _text(node)[:40], V3_SIMPLIFIED)
        elif kind == "hash_entry":
            key = next((c for c in node.children if c.type == "key_expression"), None)
            if key is not None and "-" + _text(key).lower() in ACTION_PARAMETERS:
                value = _text(node).split("=", 1)[-1].strip().strip("'\"").lower()
                if value in V3_ACTION_VALUES:
                    hit(node, _text(node), V3_ACTION_VALUES[value])
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_in_the_powershell_2_subset(script):
    found = v3_constructs(script.read_bytes())
    assert not found, f"{script.name} uses what Windows PowerShell 2.0 cannot run:\n  " + "\n  ".join(found)


@pytest.mark.parametrize("name", probes.names())
def test_bootstrap_is_in_the_powershell_2_subset(name):
    bootstrap = bootstrap_of(name)[2].encode("utf-8")
    assert syntax_problem(bootstrap) is None
    assert v3_constructs(bootstrap) == []


def pipeline_member_reads(source: bytes) -> list[str]:
    """Properties read straight off $_ (a cmdlet's object in the pipeline), not through Get-Field."""
    found = []
    for node in _walk(PARSER.parse(source).root_node):
        if node.type in ("member_access", "invokation_expression") and node.children \
                and _text(node.children[0]).lower() in ("$_", "$psitem"):
            found.append(f"line {node.start_point[0] + 1}: {_text(node)[:60]}")
    return found


@pytest.mark.parametrize("script", PROBE_SCRIPTS, ids=lambda p: p.name)
def test_probes_read_cmdlet_objects_through_get_field(script):
    # A property one product version lacks must become "not reported", not a StrictMode error that
    # fails the whole probe: the objects a cmdlet streams into the pipeline are read with Get-Field.
    found = pipeline_member_reads(script.read_bytes())
    assert not found, f"{script.name} reads $_ directly:\n  " + "\n  ".join(found)


def test_the_direct_read_check_can_fail():
    assert pipeline_member_reads(b"Get-CsService | ForEach-Object { [bool]$_.Active }")
    assert not pipeline_member_reads(b"Get-CsService | ForEach-Object { Get-FlagField $_ 'Active' 'Get-CsService' }")


@pytest.mark.parametrize(("snippet", "needle"), [
    ("$o = [ordered]@{ a = 1 }", "[ordered]"),
    ("$o = [pscustomobject]@{ a = 1 }", "[pscustomobject]"),
    ("$o = [PSCustomObject]@{ a = 1 }", "[PSCustomObject]"),
    ("$x = $d | ConvertTo-Json -Depth 8 -Compress", "ConvertTo-Json"),
    ("$p = $json | ConvertFrom-Json", "ConvertFrom-Json"),
    ("& { Get-X } 2>&1 3>&1 4>&1", "3>&1"),
    ("Get-X *> $null", "*>"),
    ("Get-X 5> log.txt", "5>"),
    ("if ($a -in $b) { 1 }", "-in"),
    ("if ($a -notin $b) { 1 }", "-notin"),
    ("$x = 1 -shl 2", "-shl"),
    ("$a | ForEach-Object { $PSItem }", "$PSItem"),
    ("Invoke-Command { $using:foo }", "$using:foo"),
    ("$l.ForEach{ $_ }", ".ForEach{}"),
    ("$l.Where({ $_ }, 'First')", "Where()"),
    ("$s = [Text.StringBuilder]::new()", "new()"),
    ("if ([string]::IsNullOrWhiteSpace($x)) { 1 }", "IsNullOrWhiteSpace()"),
    ("Get-X -ErrorAction Ignore", "-ErrorAction Ignore"),
    ("Get-X -ea 'Ignore'", "-ea 'Ignore'"),
    ("$s = @{ ErrorAction = 'Ignore' }", "ErrorAction = 'Ignore'"),
    ("Get-CimInstance -ClassName Win32_Share", "Get-CimInstance"),
    ("Invoke-WebRequest -Uri $u", "Invoke-WebRequest"),
    ("$h = Get-FileHash -Path $p", "Get-FileHash"),
    ("$a = Get-Acl -LiteralPath $p", "Get-Acl -LiteralPath"),
    ("$c = Get-Content -Raw -Path $p", "Get-Content -Raw"),
    ("$a | Where-Object Name -eq 'x'", "Where-Object Name"),
    ("$a | ForEach-Object Name", "ForEach-Object Name"),
    ("Get-X -PipelineVariable p", "-PipelineVariable"),
    ("class C { }", "class"),
    ("enum E { A }", "enum"),
    ("workflow W { }", "workflow"),
    ("#requires -Version 3.0\n$a = 1", "#requires -Version 3"),
    ("Get-SmbShare -Name x", "Get-SmbShare"),
    ("if (-not [Console]::IsInputRedirected) { 1 }", "IsInputRedirected"),
])
def test_the_subset_check_finds(snippet, needle):
    found = v3_constructs(snippet.encode("utf-8"))
    assert any(needle in f for f in found), found


@pytest.mark.parametrize("snippet", [
    "$o = New-Object -TypeName System.Collections.Specialized.OrderedDictionary",
    "& { Get-X } 2>&1 | ForEach-Object { $_ }",
    "Get-X 2> $null; Get-X > out.txt; Get-X >> out.txt",
    "if ($b -contains $a) { 1 }",
    "$a | Where-Object { $null -ne $_ } | ForEach-Object { [string]$_ }",
    "Get-X -ErrorAction SilentlyContinue -WarningAction SilentlyContinue",
    "$w = [ScriptBlock]::Create('& $Run 2>&1 3>&1 4>&1')",
    "if (Get-Command -Name 'Get-SmbShare' -ErrorAction SilentlyContinue) { Get-SmbShare -Name x }",
    "$s = New-Object -TypeName System.Collections.Generic.List[string]",
    "$x = $list.Contains('a'); $y = $text.Substring(1)",
])
def test_the_subset_check_lets_2_0_code_pass(snippet):
    assert v3_constructs(snippet.encode("utf-8")) == []


@pytest.mark.parametrize("script", PROBE_SCRIPTS, ids=lambda p: p.name)
def test_probe_header_names_the_file(script):
    first = script.read_text(encoding="utf-8").splitlines()[0]
    m = re.fullmatch(r"# probe: (\S+) v(\d+)", first)
    assert m, f"{script.name}: first line {first!r} is not '# probe: <name> v<N>'"
    assert m[1] == script.stem
    assert script.stem in probes.names()
    assert probes.probe(script.stem).version == int(m[2])


def test_names_are_exactly_the_probe_files():
    assert probes.names() == sorted(p.stem for p in PROBE_SCRIPTS)
    assert "_lib" not in probes.names()


@pytest.mark.parametrize("script", PROBE_SCRIPTS, ids=lambda p: p.name)
def test_probe_declares_the_same_name_and_version_to_invoke_probe(script):
    # The JSON envelope's "probe" is what decode() checks; it must match the file.
    p = probes.probe(script.stem)
    assert f"-Name '{p.name}' -Version {p.version}" in p.script


# -- command() and shell_env() -------------------------------------------------------------

def bootstrap_of(name: str) -> tuple[str, list[str], str]:
    exe, args = probes.command(name)
    encoded = args[args.index("-EncodedCommand") + 1]
    return exe, args, base64.b64decode(encoded, validate=True).decode("utf-16-le")


@pytest.mark.parametrize("name", probes.names())
def test_command_is_powershell_with_an_encoded_bootstrap(name):
    exe, args, bootstrap = bootstrap_of(name)
    assert exe == "powershell.exe"
    assert "-EncodedCommand" in args
    assert "-NoProfile" in args and "-NonInteractive" in args
    assert "-Command" not in args and "-File" not in args
    assert len(bootstrap) < CMD_LINE_LIMIT
    assert len(" ".join([exe, *args])) < CMD_LINE_LIMIT


@pytest.mark.parametrize("name", probes.names())
def test_bootstrap_carries_no_script_text(name):
    _, _, bootstrap = bootstrap_of(name)
    p = probes.probe(name)
    assert p.script.splitlines()[0] not in bootstrap
    assert "Invoke-Probe" not in bootstrap
    for source in (p.script, probes.library()):
        for line in source.splitlines():
            line = line.strip()
            if len(line) >= 10:
                assert line not in bootstrap, f"script line in the bootstrap: {line!r}"
        assert base64.b64encode(source.encode("utf-8")).decode()[:40] not in bootstrap


@pytest.mark.parametrize("name", probes.names())
def test_bootstrap_names_every_variable_shell_env_sets(name):
    _, _, bootstrap = bootstrap_of(name)
    env = probes.shell_env({name: {}})
    bases = {re.sub(r"_\d+$", "", var) for var in env}
    assert bases == {probes.LIB_VAR, f"CMSBOT_SCRIPT_{name.upper().replace('-', '_')}",
                     f"CMSBOT_PARAMS_{name.upper().replace('-', '_')}"}
    for var in bases:
        assert var in bootstrap


def unpacked(text: str) -> str:
    """The documented packing undone: base64, gunzip, UTF-8."""
    return gzip.decompress(base64.b64decode(text, validate=True)).decode("utf-8")


@pytest.mark.parametrize("name", probes.names())
def test_shell_env_carries_script_and_library_packed(name):
    env = probes.shell_env({name: {}})
    p = probes.probe(name)
    script_file = (PROBE_DIR / f"{name}.ps1").read_text(encoding="utf-8")
    lib_file = (PROBE_DIR / "_lib.ps1").read_text(encoding="utf-8")
    assert unpacked(probes.joined(env, p.script_var)) == script_file
    assert unpacked(probes.joined(env, probes.LIB_VAR)) == lib_file


HOSTILE = "'; Remove-Item C:\\ -Recurse #"


def test_shell_env_carries_params_as_packed_json():
    params = {"replica": "fe01.contoso.com", "minutes": 5, "note": HOSTILE, "unicode": "Überprüfen"}
    env = probes.shell_env({"cms-status": params})
    var = probes.probe("cms-status").params_var
    assert json.loads(unpacked(probes.joined(env, var))) == params
    for value in env.values():
        assert HOSTILE not in value
        assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", value)


def test_shell_env_for_several_probes_keeps_each_ones_params():
    env = probes.shell_env({"cms-status": {"a": 1}, "replica-health": {"b": HOSTILE}})
    for name, params in (("cms-status", {"a": 1}), ("replica-health", {"b": HOSTILE})):
        var = probes.probe(name).params_var
        assert json.loads(unpacked(probes.joined(env, var))) == params


def test_hostile_parameter_never_reaches_the_bootstrap():
    env = probes.shell_env({"cms-status": {"replica": HOSTILE}})
    exe, args, bootstrap = bootstrap_of("cms-status")
    assert HOSTILE not in bootstrap
    assert "Remove-Item" not in bootstrap
    assert all(HOSTILE not in a for a in [exe, *args])
    assert probes.joined(env, probes.probe("cms-status").params_var) not in bootstrap


def test_unknown_probe_is_refused():
    with pytest.raises((FileNotFoundError, ValueError, KeyError)):
        probes.command("no-such-probe")


def test_parameters_of_a_big_deployment_fit_the_windows_variable_limit():
    # names that do not compress (packed, thousands of look-alike names would fit in one variable)
    names = [hashlib.sha256(str(i).encode()).hexdigest()[:24] + ".emea.corp.contoso.com" for i in range(2000)]
    targets = [{"fqdn": n, "address": n, "port": 445, "share": True} for n in names]
    env = probes.shell_env({"reachability": {"targets": targets, "timeoutMs": 2000}})
    assert all(len(v) <= 32_767 for v in env.values())
    var = probes.probe("reachability").params_var
    assert len([k for k in env if k.startswith(var)]) > 1  # it really was split
    assert json.loads(unpacked(probes.joined(env, var)))["targets"] == targets


def test_the_wire_format_and_the_catalogue_load_no_pywinrm():
    """workers.probes.wire (and the catalogue) can be imported where pywinrm must not be loaded."""
    import subprocess
    import sys

    code = "import sys, workers.probes.wire, workers.probes; print('winrm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=PROBE_DIR.parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_every_probe_declares_its_deadline_and_the_jobs_limits_cover_them():
    """`# deadline: N s (why)` under each header; cms/settings.py's job limits are built on them."""
    from cms.settings import CHANGE_PROBES, READ_ONLY_DEADLINE, REMEDIATION_PROBES

    declared = {n: probes.probe(n).deadline for n in probes.names()}
    read_only = ["ad-membership", "backup-status", "cms-location", "cms-status", "reachability", "replica-health",
                 "replication-events"]
    assert {declared[n] for n in read_only} == {READ_ONLY_DEADLINE}
    reseed = declared["export-configuration"] + declared["import-configuration"] + declared["force-replication"]
    start = declared["start-service"] + declared["force-replication"]
    assert max(reseed, start, declared["force-replication"]) == REMEDIATION_PROBES
    assert max(declared["cms-failover"], declared["cms-restore"], declared["reseed-local"]) <= CHANGE_PROBES
    assert all(d > 0 for d in declared.values())


def test_a_bootstrap_that_runs_several_probes_is_in_the_powershell_2_subset():
    exe, args = probes.command("cms-status", "replica-health", "backup-status")
    bootstrap = base64.b64decode(args[args.index("-EncodedCommand") + 1]).decode("utf-16-le")
    assert syntax_problem(bootstrap.encode("utf-8")) is None
    assert v3_constructs(bootstrap.encode("utf-8")) == []
    # each probe in a child scope of its own, in the order asked
    assert bootstrap.count("&{$CmsbotParams=") == 3
    assert bootstrap.index("CMSBOT_SCRIPT_CMS_STATUS") < bootstrap.index("CMSBOT_SCRIPT_REPLICA_HEALTH") \
        < bootstrap.index("CMSBOT_SCRIPT_BACKUP_STATUS")
