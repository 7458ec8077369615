"""What the simulated host's Windows PowerShell makes of a script, version by version.

The lab does not run PowerShell. For a Lync Server 2010 host (Windows Server 2008 R2, Windows
PowerShell 2.0, the Lync 2010 module) it reads each script the bootstrap dot-sources and finds the
first construct that host cannot run, so a probe that would fail there fails in the lab the same
way. Written from Microsoft's documentation, never from our probes or tests:

- a construct the 2.0 parser rejects (`-in`/`-notin`/`-shl`/`-shr`, a stream merge other than
  `2>&1`/`1>&2`) makes `[ScriptBlock]::Create` throw, so nothing of that script runs: a
  terminating error, CLIXML on stderr, exit code 1 (PARSE);
- a construct that parses but fails when it runs (`[ordered]`, a 3.0+ cmdlet such as
  ConvertTo-Json, `$PSItem` under Set-StrictMode, `[Type]::new()`, a cmdlet the Lync 2010 module
  or Windows Server 2008 R2 does not have) fails where it runs (RUNTIME; lab/host.py decides
  whether Invoke-Probe's catch sees it);
- a call to a missing cmdlet is not counted when the script guards it: the cmdlet's name appears
  in a string (`Get-Command -Name '<cmdlet>'`) or the call sits inside a `try { }` block;
- comments and string contents are never read as code.

`[pscustomobject]@{...}` is a special case: Windows PowerShell 2.0 runs it without an error and
yields a Hashtable (nightroman/PowerShellTraps, Basic/PSCustomObject; about_PSCustomObject: "The
[pscustomobject] type accelerator was added in PowerShell 3.0"), so the object silently loses its
property order. The lab cannot reproduce a silent difference it does not execute; it refuses the
construct with a message that says so, rather than letting it pass unnoticed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from cms.topology import Version

NOT_RECOGNIZED = ("The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable "
                  "program. Check the spelling of the name, or if a path was included, verify that the path is "
                  "correct and try again.")

# Cmdlets that came with Windows PowerShell 3.0 or later, or with modules Windows Server 2008 R2 does not have
# (about_Windows_PowerShell_3.0 "new cmdlets"; the SmbShare, DnsClient and NetTCPIP modules ship with Windows
# Server 2012 and later).
NEWER_CMDLETS = frozenset({
    "ConvertTo-Json", "ConvertFrom-Json", "Invoke-RestMethod", "Invoke-WebRequest", "Get-CimInstance",
    "Invoke-CimMethod", "New-CimSession", "Get-CimClass", "Set-CimInstance", "Remove-CimInstance", "Get-FileHash",
    "New-TemporaryFile", "Get-ItemPropertyValue", "Compress-Archive", "Expand-Archive", "ConvertFrom-String",
    "Write-Information", "Get-LocalGroupMember", "Get-LocalUser", "Get-SmbShare", "Get-SmbShareAccess",
    "Resolve-DnsName", "Test-NetConnection", "Get-NetTCPConnection",
})

# Lync Server 2010 cmdlets that are not there: each of these pages of MicrosoftDocs/office-docs-powershell
# (skype/skype-ps/skype/<cmdlet>.md) says "This cmdlet was introduced in Lync Server 2013" and lists
# Lync Server 2013 and later as applicable.
LYNC2013_CMDLETS = frozenset({
    "Invoke-CsManagementServerFailover", "Get-CsPoolBackupRelationship", "Get-CsBackupServiceStatus",
    "Invoke-CsBackupServiceSync", "Get-CsPoolFabricState", "Invoke-CsPoolFailOver", "Invoke-CsPoolFailBack",
    "Reset-CsPoolRegistrarState", "Get-CsPoolUpgradeReadinessState",
})


@dataclass(frozen=True)
class Host:
    """The PowerShell a simulated server runs probes with."""

    powershell: str  # "2.0" | "5.1"
    missing: frozenset[str] = frozenset()  # cmdlets this host does not have

    @property
    def legacy(self) -> bool:
        return self.powershell == "2.0"


CURRENT = Host("5.1")
LYNC2010 = Host("2.0", NEWER_CMDLETS | LYNC2013_CMDLETS)


def host_for(version: Version) -> Host:
    """Lync Server 2010 runs on Windows Server 2008 R2 with Windows PowerShell 2.0; the lab answers every
    later version as Windows PowerShell 5.1 does."""
    return LYNC2010 if version is Version.lync2010 else CURRENT


@dataclass(frozen=True)
class Incompatibility:
    construct: str
    parse: bool  # True: the script does not parse, nothing of it runs
    message: str
    category: str  # CategoryInfo, as the error record prints it
    error_id: str  # FullyQualifiedErrorId
    line: int
    short_category: str = "NotSpecified"  # $_.CategoryInfo.Category, what Invoke-Probe's catch records


# -- reading code -----------------------------------------------------------------------------------------


@lru_cache(maxsize=128)  # the same library and probes arrive with every command
def code_only(script: str) -> tuple[str, tuple[str, ...]]:
    """The script with comments and string contents blanked (newlines kept, so positions and line numbers
    hold), and the contents of its string literals."""
    out = list(script)
    strings: list[str] = []
    i, n = 0, len(script)

    def blank(start: int, end: int) -> None:
        for k in range(start, end):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = script[i]
        if script.startswith("<#", i):
            end = script.find("#>", i + 2)
            end = n if end < 0 else end + 2
            blank(i, end)
            i = end
        elif c == "#" and (i == 0 or script[i - 1] in " \t\r\n;(){}|"):
            end = script.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif script.startswith("@'", i) or script.startswith('@"', i):
            quote = script[i + 1]
            close = re.compile(r"\n[ \t]*" + re.escape(quote) + "@")
            m = close.search(script, i + 2)
            end = n if m is None else m.end()
            strings.append(script[i + 2:(m.start() if m else n)].strip("\r\n"))
            blank(i + 2, end - 2 if m else n)
            i = end
        elif c == "'":
            j = i + 1
            while j < n:
                if script[j] == "'":
                    if j + 1 < n and script[j + 1] == "'":
                        j += 2
                        continue
                    break
                j += 1
            strings.append(script[i + 1:j].replace("''", "'"))
            blank(i + 1, j)
            i = j + 1
        elif c == '"':
            j = i + 1
            while j < n:
                if script[j] == "`":
                    j += 2
                    continue
                if script[j] == '"':
                    if j + 1 < n and script[j + 1] == '"':
                        j += 2
                        continue
                    break
                j += 1
            strings.append(script[i + 1:j])
            blank(i + 1, j)
            i = j + 1
        else:
            i += 1
    return "".join(out), tuple(strings)


def _try_blocks(code: str) -> list[tuple[int, int]]:
    """Spans of the `try { ... }` blocks of code whose strings and comments are blanked."""
    spans = []
    for m in re.finditer(r"(?i)(?<![\w-])try\s*\{", code):
        depth, k = 0, m.end() - 1
        while k < len(code):
            if code[k] == "{":
                depth += 1
            elif code[k] == "}":
                depth -= 1
                if depth == 0:
                    break
            k += 1
        spans.append((m.end(), k))
    return spans


def _line(code: str, pos: int) -> int:
    return code.count("\n", 0, pos) + 1


# -- the checks -------------------------------------------------------------------------------------------

# Operators the 2.0 parser does not know: in expression mode the tokenizer reads them as a parameter
# (about_Comparison_Operators: -in and -notin, and -shl/-shr in about_Arithmetic_Operators, were introduced in
# Windows PowerShell 3.0).
_NEW_OPERATOR = re.compile(r"(?i)(?<![\w$-])-(in|notin|shl|shr)(?![\w-])")
# Stream merges: the 2.0 grammar has only 2>&1 and 1>&2 (about_Redirection: "The All (*), Warning (3), Verbose
# (4) and Debug (5) redirection operators were introduced in Windows PowerShell 3.0").
_NEW_MERGE = re.compile(r"(?<![\w$])([3-6*])>&[12]")
_ORDERED = re.compile(r"(?i)\[ordered\]")  # about_Hash_Tables: [ordered] was introduced in PowerShell 3.0
_PSCUSTOMOBJECT = re.compile(r"(?i)\[pscustomobject\]")
_PSITEM = re.compile(r"(?i)\$PSItem\b")  # about_Automatic_Variables: $PSItem, new in PowerShell 3.0
_NEW_METHOD = re.compile(r"\[([A-Za-z_][\w.]*)\]::new\s*\(")  # the static new() of PowerShell 5.0
_STRICT = re.compile(r"(?i)Set-StrictMode\s+-Version\s+(2|2\.0|3|3\.0|Latest)\b")
_FUNCTION = re.compile(r"(?im)^[ \t]*function[ \t]+([A-Za-z][\w-]*)")


def _parse_error(construct: str, message: str, error_id: str, code: str, pos: int) -> Incompatibility:
    return Incompatibility(construct, True, message, f"ParserError: ({construct}:String) [], ParseException",
                           error_id, _line(code, pos))


def check(script: str, host: Host, *, defined: set[str] | frozenset[str] = frozenset(),
          strict: bool = False) -> list[Incompatibility]:
    """Every construct of `script` that `host` cannot run, in order of position (none on 5.1).
    `defined`: functions the scripts dot-sourced before define (lower case); `strict`: a script before
    this one turned Set-StrictMode on."""
    if not host.legacy and not host.missing:
        return []
    code, strings = code_only(script)
    found: list[tuple[int, Incompatibility]] = []
    if host.legacy:
        for m in _NEW_OPERATOR.finditer(code):
            token = m.group(0)
            found.append((m.start(), _parse_error(token, f"Unexpected token '{token}' in expression or statement.",
                                                  "UnexpectedToken", code, m.start())))
        for m in _NEW_MERGE.finditer(code):
            # 2.0 reads `3` as an argument and `>` as a file redirection whose file name is missing
            found.append((m.start(), _parse_error(m.group(0), "Missing file specification after redirection "
                                                  "operator.", "MissingFileSpecification", code, m.start())))
        for m in _ORDERED.finditer(code):
            found.append((m.start(), Incompatibility(
                "[ordered]", False, "Unable to find type [ordered]: make sure that the assembly containing this "
                "type is loaded.", "InvalidOperation: (ordered:String) [], RuntimeException", "TypeNotFound",
                _line(code, m.start()), "InvalidOperation")))
        for m in _PSCUSTOMOBJECT.finditer(code):
            found.append((m.start(), Incompatibility(
                "[pscustomobject]", False, "cmsbot lab (Windows PowerShell 2.0 host): [pscustomobject]@{...} yields "
                "a Hashtable on PowerShell 2.0, not an object (no error there: the properties lose their order); the "
                "lab refuses it so the difference cannot pass unnoticed.", "NotImplemented: (pscustomobject:String) "
                "[], RuntimeException", "PSCustomObjectOnPowerShell2", _line(code, m.start()), "NotImplemented")))
        strict = strict or _STRICT.search(code) is not None
        for m in _PSITEM.finditer(code):
            if strict:
                message = "The variable '$PSItem' cannot be retrieved because it has not been set."
                error_id, category = "VariableIsUndefined", "InvalidOperation"
            else:
                message = ("cmsbot lab (Windows PowerShell 2.0 host): $PSItem is an unset variable on PowerShell "
                           "2.0 ($null there, without Set-StrictMode); the lab refuses it.")
                error_id, category = "PSItemOnPowerShell2", "NotImplemented"
            found.append((m.start(), Incompatibility("$PSItem", False, message,
                                                     f"{category}: (PSItem:Token) [], RuntimeException", error_id,
                                                     _line(code, m.start()), category)))
        for m in _NEW_METHOD.finditer(code):
            found.append((m.start(), Incompatibility(
                f"[{m.group(1)}]::new()", False, f"Method invocation failed because [{m.group(1)}] doesn't contain "
                "a method named 'new'.", "InvalidOperation: (new:String) [], RuntimeException", "MethodNotFound",
                _line(code, m.start()), "InvalidOperation")))
    if host.missing:
        defined = set(defined) | {f.lower() for f in _FUNCTION.findall(code)}
        named = {s.strip().lower() for s in strings}
        guarded = _try_blocks(code)
        for name in sorted(host.missing):
            if name.lower() in defined:
                continue
            for m in re.finditer(r"(?i)(?<![\w$.-])" + re.escape(name) + r"(?![\w-])", code):
                if name.lower() in named or any(a <= m.start() < b for a, b in guarded):
                    continue
                found.append((m.start(), Incompatibility(
                    name, False, NOT_RECOGNIZED.format(name=name),
                    f"ObjectNotFound: ({name}:String) [], CommandNotFoundException", "CommandNotFoundException",
                    _line(code, m.start()), "ObjectNotFound")))
    return [inc for _, inc in sorted(found, key=lambda f: f[0])]


def turns_on_strict_mode(script: str) -> bool:
    return _STRICT.search(code_only(script)[0]) is not None


def functions(script: str) -> set[str]:
    """Names (lower case) of the functions a script defines, comments and strings excluded."""
    return {f.lower() for f in _FUNCTION.findall(code_only(script)[0])}


_IMPORT_CS_MODULE = re.compile(r"(?i)(?<![\w$.-])Import-CsModule(?![\w-])")


def imports_module(probe_script: str) -> bool:
    """Whether the probe loads the Lync/SkypeForBusiness module: Invoke-Probe does, unless called with
    -NoModule; a -NoModule probe still does when its body calls Import-CsModule itself (replica-health
    loads it inside a try, so the other parts are read when it fails; import-configuration after reading
    its standard input)."""
    code = code_only(probe_script)[0]
    return re.search(r"(?i)(?<![\w-])-NoModule\b", code) is None or _IMPORT_CS_MODULE.search(code) is not None
