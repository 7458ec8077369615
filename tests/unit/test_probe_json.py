"""The probes' JSON writer (workers/probes/_lib.ps1), the lab that prints what it prints, and the
version contract (the "ps" field, -PowerShell, data.NotReported).

No PowerShell runs here: the writer's string escaping is ported from the regular expression and
the escapes in _lib.ps1 (read from the file, so a change there is seen) and compared with the
lab's Python writer on awkward text; the rest is checked on the script text and the lab's answers.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cms.parsers import parse_cms_status, parse_location
from cms.topology import Version
from lab import answers
from lab.deployment import apply, build
from workers import probes

LIB = (Path(probes.__file__).resolve().parent / "_lib.ps1").read_text(encoding="utf-8")


def _function(name: str) -> str:
    start = LIB.index(f"function {name} {{")
    end = LIB.index("\n}\n", start)
    return LIB[start:end]


# -- the string escaping: the lab's json.dumps(ensure_ascii=True) is ConvertTo-JsonString ---------

WRITER = _function("ConvertTo-JsonString")
SPECIAL = re.search(r"Regex\]::Matches\(\$Text, '([^']+)'\)", WRITER)
ESCAPES = dict((int(code), text) for code, text in re.findall(r"\$code -eq (\d+)\) \{ \[void\]\$builder\.Append\('([^']+)'\)",
                                                                 WRITER))


def ps_json_string(text: str) -> str:
    """ConvertTo-JsonString, step by step as _lib.ps1 does it (on UTF-16 code units, as .NET strings are)."""
    assert SPECIAL is not None
    units = text.encode("utf-16-le")
    chars = [chr(int.from_bytes(units[i:i + 2], "little")) for i in range(0, len(units), 2)]
    out = []
    for ch in chars:
        if re.fullmatch(SPECIAL.group(1), ch):
            out.append(ESCAPES.get(ord(ch), "\\u" + format(ord(ch), "04x")))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def test_the_writer_escapes_are_read_from_the_script():
    assert SPECIAL is not None and SPECIAL.group(1) == r"[^\x20\x21\x23-\x5B\x5D-\x7E]"
    assert ESCAPES == {34: '\\"', 92: "\\\\", 8: "\\b", 9: "\\t", 10: "\\n", 12: "\\f", 13: "\\r"}
    assert "ToString('x4'" in WRITER  # the rest as \uXXXX, lower-case hex like Python's


AWKWARD = [
    "plain fe01.contoso.com",
    'quote " and backslash \\ and C:\\ProgramData\\cmsbot',
    "tab\tnew line\ncarriage return\r\nbackspace\b form feed\f",
    "controls \x00\x01\x1f and DEL \x7f",
    "Volumenlizenzschlüssel installiert — «¿Ü?»",
    "emoji 😀 outside the BMP, U+2028 \u2028 U+2029 \u2029",
    "/Date(1700000000000)/ and </script>",
    "",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_the_lab_escapes_strings_exactly_as_the_probe_writer(text):
    lab = answers.to_probe_json({"s": text})
    assert lab == '{"s":' + ps_json_string(text) + "}"
    assert lab.isascii()
    assert json.loads(lab)["s"] == text


def test_the_lab_writes_dates_as_the_probe_writer():
    # [DateTime].ToUniversalTime().ToString("yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fff'Z'"): 'fff' truncates.
    moment = datetime(2023, 11, 14, 22, 13, 20, 123999, tzinfo=UTC)
    assert answers.json_date(moment) == "2023-11-14T22:13:20.123Z"
    assert answers.json_date(moment.astimezone(timezone(timedelta(hours=-5)))) == "2023-11-14T22:13:20.123Z"
    assert answers.json_date(None) is None
    assert "yyyy'-'MM'-'dd'T'HH':'mm':'ss'.'fff'Z'" in _function("Add-JsonValue")


def test_the_writer_handles_every_value_kind():
    body = _function("Add-JsonValue")
    for kind in ("[System.DBNull]", "[string]", "[bool]", "[DateTime]", "[DateTimeOffset]", "[System.Enum]",
                 "[double]", "[decimal]", "[System.Collections.IDictionary]", "[System.Collections.IEnumerable]"):
        assert kind in body, kind
    assert "IsNaN" in body and "IsInfinity" in body  # no NaN/Infinity tokens in JSON: null
    assert "'R', $invariant" in body  # round-trip doubles, invariant culture


# -- the envelope: probe, version, ps, data | error -------------------------------------------------

@pytest.mark.parametrize(("version", "ps"), [(Version.lync2010, "2.0"), (Version.lync2013, "3.0"),
                                             (Version.sfb2015, "4.0"), (Version.sfb2019, "5.1.17763.1")])
def test_every_lab_answer_names_the_hosts_powershell(version, ps):
    state = build(version=version)
    server = next(iter(state.servers.values()))
    doc = json.loads(answers.run(state, server, "replica-health", 2, {"role": "frontend"}))
    assert list(doc)[:3] == ["probe", "version", "ps"] and doc["ps"] == ps and "data" in doc
    error = json.loads(answers.error_answer(state, "cms-status", 2, "boom"))
    assert error["ps"] == ps and error["error"]["message"] == "boom"


def test_invoke_probe_reports_the_powershell_and_refuses_an_older_one():
    body = _function("Invoke-Probe")
    assert "[string]$PowerShell = '2.0'" in body
    assert "$doc['ps'] = $found.ToString()" in body
    assert "' needs Windows PowerShell '" in body and "' or later; this server runs Windows PowerShell '" in body
    assert "$doc['error']['needs']" in body
    assert "Get-Variable -Name PSVersionTable" in _function("Get-PowerShellVersion")


def test_a_probe_declares_the_oldest_powershell_it_runs_on():
    assert {probes.probe(n).powershell for n in probes.names()} == {"2.0"}  # every probe runs on 2.0 today
    script = "# probe: x v1\nInvoke-Probe -Name 'x' -Version 1 -PowerShell '3.0' -Body {\n}\n"
    m = probes.MINIMUM_POWERSHELL.search(script)
    assert m is not None and m["version"] == "3.0"


# -- not reported: null and data.NotReported, never a failed probe -------------------------------------

def test_lync_2010_reports_no_active_pool_flag():
    state = build(version=Version.lync2010)
    fe = state.servers[state.fta_host.fqdn]
    data = json.loads(answers.run(state, fe, "cms-status", 2, {}))["data"]
    assert [s["Active"] for s in data["Services"]] == [None]
    assert data["NotReported"] == ["Get-CsService -CentralManagement: Active"]
    status = parse_cms_status(data)
    assert [s.active for s in status.services] == [None]
    assert status.store.deleted_replicas == []  # reported, and empty
    location = json.loads(answers.run(state, fe, "cms-location", 1, {"pools": [state.cms_pool]}))["data"]
    assert [s.active for s in parse_location(location).services] == [None]


def test_a_dropped_property_is_null_and_listed():
    state = build()
    apply(state, "drop-property:cms-status:DeletedReplicas")
    fe = state.servers[state.fta_host.fqdn]
    data = json.loads(answers.run(state, fe, "cms-status", 2, {}))["data"]
    assert data["Store"]["DeletedReplicas"] is None
    assert data["NotReported"] == ["Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus: "
                                   "DeletedReplicas"]
    assert parse_cms_status(data).store.deleted_replicas is None
    assert all(s["Active"] is not None for s in data["Services"])  # 2019 has it


def test_the_thread_says_not_reported_for_lync_2010s_pool_flag():
    from bot.render import blocks, text
    from tests.unit import recorded

    report = recorded.report("healthy@lync2010")
    assert report.cms is not None and [s.active for s in report.cms.services] == [None]
    assert "pool01.contoso.com (active: not reported by this version)" in text.report_text(report)
    summary = blocks.cms_summary(report)
    assert "not reported by this version" in summary and "*backup* none" not in summary
