"""`cmsbot doctor`'s pure part (cms/doctor.py): the doctor probe's answer as the lab prints it, each check
graded from facts, and the table."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cms import doctor as d
from cms.doctor import CheckStatus, Checkup, DoctorAnswer, DoctorReport
from cms.models import PortTest
from cms.parsers import parse_answer
from cms.topology import ServerRole, Version
from lab import answers
from lab.deployment import apply, build
from workers import probes
from workers.transport.winrm import Output

FE = "fe03.contoso.com"


def answer(version: Version = Version.sfb2019, *scenarios: str, cmdlets: list[str] | None = None) -> DoctorAnswer:
    state = build(version)
    for spec in scenarios:
        apply(state, spec)
    wanted = cmdlets if cmdlets is not None else d.cmdlets_for(version, cms_server=True)
    stdout = answers.run(state, state.servers[FE], "doctor", 1, {"cmdlets": wanted}).encode()
    found = parse_answer("doctor", FE, probes.decode("doctor", Output(stdout, b"", 0)))
    assert isinstance(found, DoctorAnswer)
    return found


def test_a_healthy_server_passes_every_check_it_grades():
    a = answer()
    assert (a.ps_version, a.module, a.missing_cmdlets) == ("5.1.17763.1", "SkypeForBusiness", [])
    assert (a.max_envelope_kb, a.max_shells_per_user, a.max_memory_per_shell_mb) == (500, 30, 1024)
    wanted = d.cmdlets_for(Version.sfb2019, True)
    for check in (d.grade_powershell(a, Version.sfb2019), d.grade_module(a, Version.sfb2019),
                  d.grade_cmdlets(a, wanted), d.grade_rights(a),
                  d.grade_limits(a, need_kb=30, configured_kb=150, shells_needed=1)):
        assert check.status is CheckStatus.ok, check


@pytest.mark.parametrize("version", list(Version))
def test_the_cmdlets_asked_for_are_those_the_version_has(version):
    a = answer(version, cmdlets=d.cmdlets_for(version, cms_server=True))
    assert a.missing_cmdlets == []
    assert ("Invoke-CsManagementServerFailover" in d.cmdlets_for(version, True)) is version.has_failover_cmdlet
    assert d.grade_powershell(a, version).status is CheckStatus.ok  # 2.0 on Lync Server 2010 is right


def test_powershell_2_on_2013_and_later_fails_and_3_on_2010_is_a_warning():
    check = d.grade_powershell(answer(Version.sfb2019, f"powershell-2:{FE}"), Version.sfb2019)
    assert check.status is CheckStatus.fail and "Windows PowerShell 2.0 on Skype for Business Server 2019" in \
        check.detail
    late = DoctorAnswer(ps_version="5.1.14409.1005")
    assert d.grade_powershell(late, Version.lync2010).status is CheckStatus.warn


def test_the_module_missing_fails_and_the_cmdlets_are_not_graded():
    a = answer(Version.sfb2019, f"module-missing:{FE}")
    check = d.grade_module(a, Version.sfb2019)
    assert check.status is CheckStatus.fail and "Neither the SkypeForBusiness nor the Lync" in check.detail
    assert d.grade_cmdlets(a, ["Get-CsPool"]).status is CheckStatus.skip
    assert d.grade_cmdlets(DoctorAnswer(module="Lync", missing_cmdlets=["Get-CsPool"]), ["Get-CsPool"]).status \
        is CheckStatus.fail


def test_rights_server_admins_ok_read_only_warn_neither_fail():
    assert d.grade_rights(answer()).status is CheckStatus.ok
    none = d.grade_rights(answer(Version.sfb2019, f"account-no-rights:{FE}"))
    assert none.status is CheckStatus.fail and "in neither RTCUniversalServerAdmins nor RTCUniversalReadOnlyAdmins" \
        in none.detail
    read_only = d.grade_rights(DoctorAnswer(identity="CONTOSO\\cmsbot", groups=["CONTOSO\\RTCUniversalReadOnlyAdmins"]))
    assert read_only.status is CheckStatus.warn and "remediations and failover do not" in read_only.detail


def test_winrm_limits():
    small = answer(Version.sfb2019, f"envelope-150:{FE}")
    assert small.max_envelope_kb == 150
    assert d.grade_limits(small, need_kb=30, configured_kb=150, shells_needed=1).status is CheckStatus.ok
    over = d.grade_limits(small, need_kb=30, configured_kb=500, shells_needed=1)
    assert over.status is CheckStatus.fail and "below CMSBOT_WINRM_MAX_ENVELOPE_KB=500" in over.detail
    assert "MaxEnvelopeSizekb 500" in (over.fix or "")
    needs = d.grade_limits(small, need_kb=200, configured_kb=150, shells_needed=1)
    assert needs.status is CheckStatus.fail and "the status check sends 200 KB here" in needs.detail
    old = DoctorAnswer(max_envelope_kb=500, max_shells_per_user=5, max_memory_per_shell_mb=150)
    assert d.grade_limits(old, need_kb=30, configured_kb=150, shells_needed=1).status is CheckStatus.warn
    assert d.grade_limits(old, need_kb=30, configured_kb=150, shells_needed=6).status is CheckStatus.fail


def test_replica_paths():
    edge = PortTest(fqdn="edge01.contoso.com", address="192.0.2.11", port=4443, connected=False, error="TimedOut")
    check = d.grade_path(edge, role=ServerRole.edge, source="fe01.contoso.com", unchecked=None)
    assert check.status is CheckStatus.fail and "TCP 4443 to 192.0.2.11 (Edge internal interface)" in check.detail
    smb = PortTest(fqdn=FE, address=FE, port=445, connected=True, elapsed_ms=2)
    assert d.grade_path(smb, role=ServerRole.frontend, source="fe01.contoso.com", unchecked=None).status \
        is CheckStatus.ok
    assert d.grade_path(None, role=ServerRole.frontend, source=None, unchecked="no CMS Front End").status \
        is CheckStatus.skip


def test_the_table_shows_the_first_failure_and_its_fix_and_json_every_check():
    rows = [Checkup(server="fe01.contoso.com", pool="pool01.contoso.com", role="frontend",
                    checks=[d.ok("dns", "resolves"), d.skip("tls", "not checked over http")]),
            Checkup(server=FE, pool="pool02.contoso.com", role="frontend",
                    checks=[d.ok("dns", "resolves"), d.fail("auth", "rejected", "check the password"),
                            d.fail("rights", "none")])]
    report = DoctorReport(scope="all", checked_at=datetime(2024, 1, 1, tzinfo=UTC), servers=rows)
    text = d.table(report)
    assert "fe01.contoso.com  frontend  ready" in text
    assert "NOT READY  auth   rejected -> check the password" in text
    assert "1 of 2 servers ready; 1 not ready" in text
    doc = json.loads(json.dumps(d.as_json(report)))
    assert doc["ready"] is False and doc["servers"][1]["first_failure"]["name"] == "auth"
    assert [c["name"] for c in doc["servers"][0]["checks"]] == ["dns", "tls"]
