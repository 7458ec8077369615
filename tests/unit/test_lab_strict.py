"""The strict lab's pure parts: what a Windows PowerShell 2.0 host refuses (lab/powershell.py, lab/host.py),
the WS-Management limits of lab/wsman.py, and the drop-property scenario. The scripts here are written for
the test, not taken from workers/probes."""

from __future__ import annotations

import base64
import gzip

import pytest

from lab import host, powershell
from lab.deployment import ScenarioError, apply, build
from lab.powershell import CURRENT, LYNC2010, check, code_only
from lab.wsman import (
    INVALID_TIMEOUT_CODE,
    UNSUPPORTED_TIMEOUT_CODE,
    Command,
    Fault,
    HostConfig,
    Lab,
    _take,
    duration_seconds,
)


def constructs(script: str, **kw) -> list[tuple[str, bool]]:
    return [(i.construct, i.parse) for i in check(script, LYNC2010, **kw)]


# -- reading PowerShell ------------------------------------------------------------------------------------


def test_comments_and_strings_are_not_code():
    script = ("# ConvertTo-Json in a comment\n<# and [ordered] in a block\n comment #>\n$a = 'x -in y'; $b = \"3>&1\"\n"
              "$c = @'\nConvertFrom-Json\n'@\n$d = 'it''s'\n")
    code, strings = code_only(script)
    assert code.count("\n") == script.count("\n")
    for word in ("ConvertTo-Json", "[ordered]", "-in", "3>&1", "ConvertFrom-Json"):
        assert word not in code
    assert strings == ("x -in y", "3>&1", "ConvertFrom-Json", "it's")
    assert check(script, LYNC2010) == []


def test_what_the_2_0_parser_rejects():
    assert constructs("if ($a -in $b) { 1 }\n$x -NotIn $y") == [("-in", True), ("-NotIn", True)]
    assert constructs("& { Write-Warning 'w' } 2>&1 3>&1 4>&1 | Out-Null") == [("3>&1", True), ("4>&1", True)]
    assert constructs("Get-Item x 2>&1; Get-Item y -InputObject $z") == []  # 2>&1 is 2.0; -InputObject is no -in
    (inc,) = check("$a -shl 2", LYNC2010)
    assert inc.message == "Unexpected token '-shl' in expression or statement." and inc.line == 1


def test_what_fails_when_it_runs_on_2_0():
    script = "Set-StrictMode -Version 2\n$o = [ordered]@{}\n$o | ConvertTo-Json\n$PSItem\n[Text.StringBuilder]::new()\n"
    found = check(script, LYNC2010)
    assert [(i.construct, i.parse, i.line) for i in found] == [
        ("[ordered]", False, 2), ("ConvertTo-Json", False, 3), ("$PSItem", False, 4),
        ("[Text.StringBuilder]::new()", False, 5)]
    assert found[0].message.startswith("Unable to find type [ordered]") and found[0].error_id == "TypeNotFound"
    assert found[1].message.startswith("The term 'ConvertTo-Json' is not recognized as the name of a cmdlet")
    assert (found[1].short_category, found[2].error_id) == ("ObjectNotFound", "VariableIsUndefined")
    # without Set-StrictMode $PSItem is a silent $null on 2.0: the lab refuses it and says so
    assert "cmsbot lab" in check("$PSItem", LYNC2010)[0].message
    assert "cmsbot lab" in check("[pscustomobject]@{a = 1}", LYNC2010)[0].message
    assert check(script, CURRENT) == []  # a 5.1 host runs all of it


def test_a_missing_cmdlet_counts_only_where_it_runs_unguarded():
    lacking = "Invoke-CsManagementServerFailover -Restore"
    assert constructs(lacking) == [("Invoke-CsManagementServerFailover", False)]
    assert constructs("if (Get-Command -Name 'Invoke-CsManagementServerFailover' -ErrorAction SilentlyContinue) {\n"
                      f"    {lacking}\n}}") == []
    assert constructs(f"try {{\n    {{ {lacking} }}\n}} catch {{ $problem = $_ }}") == []
    assert constructs(f"try {{ 1 }} catch {{ 2 }}\n{lacking}") == [("Invoke-CsManagementServerFailover", False)]
    # a function of the script's own (or of the library dot-sourced before it) is not the missing cmdlet
    assert constructs("function ConvertTo-Json { param($x) }\n$a | ConvertTo-Json") == []
    assert constructs("$a | ConvertTo-Json", defined={"convertto-json"}) == []
    assert check(lacking, CURRENT) == []


def test_module_load_is_for_probes_that_import_the_module():
    assert powershell.imports_module("Invoke-Probe -Name 'x' -Version 1 -Body { 1 }")
    assert not powershell.imports_module("Invoke-Probe -Name 'x' -Version 1 -NoModule -Body { 1 }")
    assert powershell.imports_module("# run with -NoModule? no\nInvoke-Probe -Name 'x' -Version 1 -Body { 1 }")
    # -NoModule, but the body loads it itself (after reading its input, or inside a try of its own)
    assert powershell.imports_module("Invoke-Probe -Name 'x' -Version 1 -NoModule -Body {\n"
                                     "    $in = [Console]::In.ReadToEnd()\n    $null = Import-CsModule\n}")
    assert powershell.imports_module("Invoke-Probe -Name 'x' -Version 1 -NoModule -Body {\n"
                                     "    try { $null = Import-CsModule } catch { $e = $_ }\n}")
    assert not powershell.imports_module("Invoke-Probe -Name 'x' -Version 1 -NoModule -Body {\n"
                                         "    # no Import-CsModule here\n    'Import-CsModule'\n}")


# -- the host: where a 2.0 failure lands ---------------------------------------------------------------------

BOOTSTRAP = ("$ErrorActionPreference='Stop';$CmsbotParams=(& $j 'CMSBOT_PARAMS_X');"
             ". ([ScriptBlock]::Create((& $d 'CMSBOT_PROBE_LIB')));. ([ScriptBlock]::Create((& $d 'CMSBOT_SCRIPT_X')))")
LIBRARY = "# probe-lib: test\nSet-StrictMode -Version 2\nfunction Invoke-Probe { param($Name, $Version, $Body) }\n"


def _run(library: str, body: str, on: powershell.Host = LYNC2010) -> host.Invocation:
    args = ["-EncodedCommand", base64.b64encode(BOOTSTRAP.encode("utf-16-le")).decode()]
    script = f"# probe: cms-status v1\nInvoke-Probe -Name 'cms-status' -Version 1 -Body {{\n{body}\n}}\n"
    def packed(data: bytes) -> str:  # the documented packing: gzip, then base64
        return base64.b64encode(gzip.compress(data)).decode()

    env = {"CMSBOT_PROBE_LIB_0": packed(library.encode()), "CMSBOT_SCRIPT_X_0": packed(script.encode()),
           "CMSBOT_PARAMS_X_0": packed(b"{}")}
    return host.run(args, env, on)


def test_a_parse_error_anywhere_stops_the_bootstrap_in_scriptblock_create():
    with pytest.raises(host.TerminatingError) as raised:
        _run(LIBRARY + "function Get-Merged { & { 1 } 3>&1 }\n", "1")
    assert raised.value.message == ('Exception calling "Create" with "1" argument(s): "Missing file specification '
                                    'after redirection operator."')
    assert raised.value.error_id == "DotNetMethodException"  # what 2.0 names a .NET method's exception
    assert b"#< CLIXML" in raised.value.clixml()
    with pytest.raises(host.TerminatingError, match="Unexpected token '-in'"):
        _run(LIBRARY, "if (1 -in @(1)) { 1 }")
    assert _run(LIBRARY, "if (1 -in @(1)) { 1 }", CURRENT).params_error is None


def test_a_run_time_failure_is_the_probes_error_unless_the_library_itself_fails():
    invocation = _run(LIBRARY, "@{a = 1} | ConvertTo-Json")
    assert invocation.probe == "cms-status"
    assert invocation.params_error is not None and "'ConvertTo-Json' is not recognized" in invocation.params_error
    assert invocation.params_error_category == "ObjectNotFound"
    with pytest.raises(host.TerminatingError, match=r"Unable to find type \[ordered\]"):
        _run(LIBRARY + "function New-Doc { [ordered]@{} }\n", "1")  # the library's error branch cannot run
    assert _run(LIBRARY, "1").params_error is None and _run(LIBRARY, "1").imports_module


# -- WS-Management limits ------------------------------------------------------------------------------------


def test_xs_duration():
    assert [duration_seconds(t) for t in ("PT20S", "PT60.000S", "P0DT0H0M5S", "PT1M", "PT1H0.5S", "P1D")] == [
        20.0, 60.0, 5.0, 60.0, 3600.5, 86400.0]
    assert [duration_seconds(t) for t in ("PT-5S", "", "P", "PT", "20", "PT5", "P1Y")] == [None] * 7


def test_operation_timeout_is_cut_to_max_timeout_or_refused():
    lab = Lab(lambda scenarios: build(), [], "u", "p", config=HostConfig(max_timeout_ms=60_000))
    assert lab._operation_timeout("PT20S") == 20.0
    assert lab._operation_timeout("PT600S") == 60.0  # MS-WSMV 3.1.4.1.6: above MaxTimeoutms means MaxTimeoutms
    assert lab._operation_timeout("") == 60.0
    with pytest.raises(Fault) as raised:
        lab._operation_timeout("PT-5S")
    assert (raised.value.code, raised.value.sender) == (INVALID_TIMEOUT_CODE, True)
    with pytest.raises(Fault) as raised:
        lab._operation_timeout("PT0.1S")
    assert raised.value.code == UNSUPPORTED_TIMEOUT_CODE


def test_the_response_limit_is_the_smaller_of_the_clients_and_the_hosts():
    lab = Lab(lambda scenarios: build(), [], "u", "p", config=HostConfig(max_envelope_kb=150))
    assert lab._max_envelope("512000") == 150 * 1024
    assert lab._max_envelope("153600") == 153600
    with pytest.raises(Fault, match="envelope size in the request is too small"):
        lab._max_envelope("4096")


def test_output_is_taken_in_the_order_written_within_a_budget():
    cmd = Command(probe="p", version=1, params={}, ready_at=0.0,
                  writes=[("stdout", b"abcdef"), ("stdout", b"\r\n"), ("stderr", b"xy")])
    assert _take(cmd, 4) == [("stdout", b"abcd")]
    assert _take(cmd, 4) == [("stdout", b"ef"), ("stdout", b"\r\n")]
    assert _take(cmd, 4) == [("stderr", b"xy")]
    assert _take(cmd, 4) == [] and cmd.sent == 10


# -- drop-property ---------------------------------------------------------------------------------------------


def test_drop_property_names_a_probe_and_a_property():
    state = build()
    apply(state, "drop-property:cms-status:DeletedReplicas")
    apply(state, "drop-property:cms-status:Active")
    assert state.dropped == {("cms-status", "DeletedReplicas"), ("cms-status", "Active")}
    for bad in ("drop-property", "drop-property:cms-status", "drop-property:no-such-probe:X",
                "drop-property:cms-status:A:B"):
        with pytest.raises(ScenarioError):
            apply(state, bad)
