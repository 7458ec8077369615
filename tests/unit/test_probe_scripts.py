"""The PowerShell probes: syntax, headers, and the bootstrap that runs them."""

from __future__ import annotations

import base64
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


@pytest.mark.parametrize("name", probes.names())
def test_shell_env_carries_script_and_library_as_base64(name):
    env = probes.shell_env({name: {}})
    p = probes.probe(name)
    script_file = (PROBE_DIR / f"{name}.ps1").read_text(encoding="utf-8")
    lib_file = (PROBE_DIR / "_lib.ps1").read_text(encoding="utf-8")
    assert base64.b64decode(probes.joined(env, p.script_var)).decode("utf-8") == script_file
    assert base64.b64decode(probes.joined(env, probes.LIB_VAR)).decode("utf-8") == lib_file


HOSTILE = "'; Remove-Item C:\\ -Recurse #"


def test_shell_env_carries_params_as_base64_json():
    params = {"replica": "fe01.contoso.com", "minutes": 5, "note": HOSTILE, "unicode": "Überprüfen"}
    env = probes.shell_env({"cms-status": params})
    var = probes.probe("cms-status").params_var
    assert json.loads(base64.b64decode(probes.joined(env, var)).decode("utf-8")) == params
    for value in env.values():
        assert HOSTILE not in value
        assert re.fullmatch(r"[A-Za-z0-9+/]*={0,2}", value)


def test_shell_env_for_several_probes_keeps_each_ones_params():
    env = probes.shell_env({"cms-status": {"a": 1}, "replica-health": {"b": HOSTILE}})
    for name, params in (("cms-status", {"a": 1}), ("replica-health", {"b": HOSTILE})):
        var = probes.probe(name).params_var
        assert json.loads(base64.b64decode(probes.joined(env, var))) == params


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
    targets = [{"fqdn": f"fe{i:03d}.emea.corp.contoso.com", "address": f"fe{i:03d}.emea.corp.contoso.com",
                "port": 445, "share": True} for i in range(600)]
    env = probes.shell_env({"reachability": {"targets": targets, "timeoutMs": 2000}})
    assert all(len(v) <= 32_767 for v in env.values())
    var = probes.probe("reachability").params_var
    assert len([k for k in env if k.startswith(var)]) > 1  # it really was split
    assert json.loads(base64.b64decode(probes.joined(env, var)))["targets"] == targets


def test_the_wire_format_and_the_catalogue_load_no_pywinrm():
    """workers.probes.wire (and the catalogue) can be imported where pywinrm must not be loaded."""
    import subprocess
    import sys

    code = "import sys, workers.probes.wire, workers.probes; print('winrm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=PROBE_DIR.parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
