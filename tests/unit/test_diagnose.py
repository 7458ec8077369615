"""Diagnosis of every lab scenario from probe output recorded from the lab.

The recordings (tests/fixtures/recorded/, made by tests/fixtures/record_lab.py) hold the raw
probe JSON each server answered (the probes' 2.0-compatible writer, workers/probes/_lib.ps1). Here they go through the product's pure
functions only: probes.decode -> parsers -> status.build_report / second_stage /
add_second_stage -> diagnose. The expectations come from README.md (findings table, lab
scenarios) and shared/domain.md (the seed articles' events, ports, certificates and ACLs).
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import pytest

from bot.render import text as render
from cms.diagnose import diagnose
from cms.messages import Progress
from cms.models import HostErrorKind, Severity
from cms.parsers import parse_replica_health
from lab.deployment import SCENARIOS, TLS_FAULTS
from tests.unit import recorded as R

pytestmark = pytest.mark.unit

README = R.RECORDED.parents[2] / "README.md"

EDGE1, EDGE2 = "edge01.contoso.com", "edge02.contoso.com"
FE1, FE2, FE3, FE4 = "fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com", "fe04.contoso.com"
DIR1 = "dir01.contoso.com"
POOL1, POOL2 = "pool01.contoso.com", "pool02.contoso.com"
FTA_LOG = f"'Lync Server' log on {FE1}"  # the File Transfer Agent runs on the CMS master, fe01
INTERNAL_REPLICAS = [FE2, FE3, FE4, DIR1, "med01.contoso.com"]

# Codes the lab cannot produce: no lab scenario stops MASTER, FTA or LYNCBACKUP (replica-stopped
# stops REPLICA only). Covered below by a test on a recording with one service state changed.
DERIVED_ONLY = {"cms.service-stopped"}


# -- the replay is what the product does --------------------------------------------------------


@pytest.mark.parametrize("name", R.NAMES)
def test_replay_decides_the_same_second_stage_as_the_recorded_job(name):
    replay = R.status_replay(name)
    assert replay.stage2_planned == replay.stage2_recorded


@pytest.mark.parametrize("name", ["healthy", "combined", "hang", "cms-pool-down", "winrm-faults@edge-winrm"])
def test_run_status_on_the_recorded_answers_reports_what_the_pure_replay_reports(name):
    report, emitted = R.run_status_replayed(name)
    assert [(f.code, f.subject, f.summary) for f in report.findings] == \
        [(f.code, f.subject, f.summary) for f in R.findings(name)]
    assert report.host_errors == R.report(name).host_errors
    assert emitted and all(isinstance(m, Progress) for m in emitted)


# -- coverage: every README finding code and every lab scenario ----------------------------------


def readme_finding_codes() -> set[str]:
    """The codes of README's findings table; `-no-private-key` abbreviates `replica.edge-cert-no-private-key`."""
    text = README.read_text(encoding="utf-8")
    table = text.split("| finding | seen from | typical evidence |", 1)[1].split("\n\n", 1)[0]
    codes: set[str] = set()
    for row in table.splitlines()[2:]:
        first = row.split("|")[1]
        stem = ""
        for token in re.findall(r"`([^`]+)`", first):
            if token.startswith("-"):
                codes.add(stem + token)
            else:
                codes.add(token)
                stem = token.rsplit("-", 1)[0]  # replica.edge-cert-invalid -> replica.edge-cert
    return codes


def readme_lab_scenarios() -> set[str]:
    text = README.read_text(encoding="utf-8")
    listing = text.split("Lab scenarios, which you can combine:", 1)[1].split("\n\n", 1)[0]
    return {token.split(":")[0] for token in re.findall(r"`([^`]+)`", listing)}


def recorded_codes() -> set[str]:
    return {f.code for name in R.NAMES for f in R.findings(name)}


def recorded_scenarios() -> set[str]:
    return {spec.split(":")[0] for name in R.NAMES for spec in R.doc(name)["scenarios"]}


def test_the_readme_table_is_read_completely():
    codes = readme_finding_codes()
    assert {"replica.edge-cert-no-private-key", "replica.edge-cert-expired", "backup.error",
            "cms.service-stopped", "replica.share-acl-missing"} <= codes
    assert len(codes) == 18


def test_every_readme_finding_code_is_diagnosed_from_a_recording():
    missing = readme_finding_codes() - recorded_codes() - DERIVED_ONLY
    assert not missing, f"no recording is diagnosed as {sorted(missing)}"
    assert not DERIVED_ONLY & recorded_codes(), "the lab produces it now: drop it from DERIVED_ONLY"


def test_every_code_the_diagnosis_reports_is_in_the_readme_table():
    assert recorded_codes() - readme_finding_codes() == set()


def test_every_lab_scenario_is_recorded():
    assert readme_lab_scenarios() <= set(SCENARIOS), "README lists a scenario the lab does not know"
    # the certificate faults of `cmsbot lab --tls` stop the transport before any probe runs: what they look like
    # to the user is the doctor's TLS row and a host error, tested against the lab itself (test_lab_auth.py)
    missing = set(SCENARIOS) - recorded_scenarios() - {"healthy"} - set(TLS_FAULTS)
    assert not missing, f"lab scenarios without a recording: {sorted(missing)}"
    assert "healthy" in R.NAMES


# -- one finding per scenario: code, subject, severity, and what the user needs to read ------------

# (recording, code, subject, severity, texts the finding must show: evidence, where it was seen, fix)
CASES = [
    # seed replication scenario 1 (event 1017): Edge unreachable on TCP 4443, or REPLICA stopped on it
    ("edge-4443-blocked", "replica.https-unreachable", EDGE1, Severity.error,
     ["Event 1017", f"{EDGE1}: Https destination unavailable", FTA_LOG, "TCP 4443 to 192.0.2.11: TimedOut",
      "REPLICA state on edge01.contoso.com", "Allow TCP 4443"]),
    ("edge-replica-stopped", "replica.replica-stopped", EDGE2, Severity.error,
     ["Event 1017", "TCP 4443 to 192.0.2.12: ConnectionRefused", "REPLICA is most likely stopped",
      "Start-CsWindowsService -Name REPLICA"]),
    ("edge-replica-stopped@edge-winrm", "replica.replica-stopped", EDGE2, Severity.error,
     ["REPLICA is stopped (Get-Service on edge02.contoso.com)", "Event 1017", "Start-CsWindowsService -Name REPLICA"]),
    # seed replication scenario 2 (event 1015): the Edge's internal certificate
    ("edge-cert-no-private-key", "replica.edge-cert-invalid", EDGE1, Severity.error,
     ["Event 1015", "unable to match host/cluster against certificate", FTA_LOG,
      "the internal certificate on edge01.contoso.com: not reachable over WinRM", "private key", "same root CA"]),
    ("edge-cert-other-root", "replica.edge-cert-invalid", EDGE2, Severity.error,
     ["Event 1015", "the internal certificate on edge02.contoso.com: not reachable over WinRM", "same PKI"]),
    ("edge-cert-expired", "replica.edge-cert-invalid", EDGE1, Severity.error,
     ["Event 1015", "the internal certificate on edge01.contoso.com: not reachable over WinRM", "expired"]),
    ("edge-cert-wrong-name", "replica.edge-cert-name-mismatch", EDGE1, Severity.error,
     ["Event 1015", "presents a certificate for sip.contoso.com", "CN=sip.contoso.com", "SAN"]),
    ("edge-cert-no-private-key@edge-winrm", "replica.edge-cert-no-private-key", EDGE1, Severity.error,
     ["Event 1015", "private key MISSING", "Get-CsCertificate -Type Internal on edge01.contoso.com",
      "WITH its private key", "Set-CsCertificate -Type Internal"]),
    ("edge-cert-wrong-name@edge-winrm", "replica.edge-cert-name-mismatch", EDGE1, Severity.error,
     ["Event 1015", "CN=sip.contoso.com (SAN sip.contoso.com, access.contoso.com)", "does not name it",
      "Set-CsCertificate -Type Internal"]),
    ("edge-cert-other-root@edge-winrm", "replica.edge-cert-other-root", EDGE2, Severity.error,
     ["chains to CN=Fabrikam Root CA", "the Front Ends' to CN=Contoso Root CA", "Event 1015",
      "the CA that issued the Front End pool's certificate"]),
    ("edge-cert-expired@edge-winrm", "replica.edge-cert-expired", EDGE1, Severity.error,
     ["internal certificate expired on", "Event 1015", "Renew the internal certificate"]),
    # REPLICA stopped on an internal server
    ("replica-stopped", "replica.replica-stopped", FE3, Severity.error,
     ["REPLICA is stopped (Get-Service on fe03.contoso.com)", "Start-CsWindowsService -Name REPLICA"]),
    # seed replication scenario 3 (event 1034): the xds-replica share, the group, stale credentials
    ("share-acl-missing", "replica.share-acl-missing", FE3, Severity.error,
     ["Event 1034", r"\\fe03.contoso.com\xds-replica\from-master\data.zip", FTA_LOG,
      "share xds-replica grants 'RTC Local Config Replicator' no Change right", "no Modify right",
      r"write test to \\fe03.contoso.com\xds-replica\from-master", "take ownership", "Modify"]),
    ("share-acl-missing+unreachable", "replica.share-access-denied", FE3, Severity.error,
     ["Event 1034", r"\\fe03.contoso.com\xds-replica\from-master\data.zip",
      "the xds-replica ACL on fe03.contoso.com: unreachable", "RTCUniversalConfigReplicator"]),
    ("share-acl-missing+unreachable", "replica.smb-unreachable", FE3, Severity.error,
     ["TCP 445 to fe03.contoso.com: TimedOut", "TCP connect from fe01.contoso.com", "TCP 445 is allowed"]),
    ("computer-not-in-group", "cms.fta-not-in-group", FE1, Severity.error,
     ["FE01 not a member of CN=RTCUniversalConfigReplicator", "LDAP query", "access denied on xds-replica of",
      *INTERNAL_REPLICAS, "RTCUniversalConfigReplicator > Members", "-Members FE01$"]),
    # the master's side (event 2020 of the Master Replicator Agent, Microsoft's unsupported file store article)
    ("master-watch-failed", "cms.master-replicator-watch-failed", FE3, Severity.error,
     ["Event 2020", r"Can't watch \\fs01.contoso.com\pool01\1-CentralMgmt-1\CMSFileStore\xds-master\replicas"
      r"\fe03.contoso.com\from-replica", FTA_LOG, "supported Windows file server"]),
    # no known signature / a change minutes ago
    ("replica-behind", "replica.behind", DIR1, Severity.error,
     ["UpToDate False", "no File Transfer Agent event names it", "TCP 445 from the FTA host connects",
      "REPLICA is running", "ACLs grant 'RTC Local Config Replicator' change rights",
      "Invoke-CsManagementStoreReplication -ReplicaFqdn dir01.contoso.com"]),
    ("transient", "replica.pending", FE4, Severity.pending,
     ["is catching up with a change made at", "re-check after", "UpToDate False"]),
    # the CMS's own view
    ("cms-unavailable", "cms.unavailable", POOL1, Severity.critical,
     ["ActiveMasterFqdn and ActiveFileTransferAgents empty", "-CentralManagementStoreStatus on fe01.contoso.com",
      "Get-CsManagementConnection", "/cms-recover"]),
    ("failover-in-progress", "cms.unavailable", POOL1, Severity.critical,  # seed failover scenario 3
     ["ActiveMasterFqdn and ActiveFileTransferAgents empty", "/cms-recover"]),
    ("cms-pool-down", "cms.unavailable", POOL1, Severity.critical,
     ["ActiveMasterFqdn and ActiveFileTransferAgents empty", "on fe03.contoso.com", "/cms-recover"]),
    ("both-active", "cms.both-active", f"{POOL1} and {POOL2}", Severity.critical,
     [f"Active True for {POOL1}, {POOL2}", "Get-CsService -CentralManagement",
      "Do not run Invoke-CsManagementServerFailover", "/cms-recover"]),
    ("standby-not-backup", "cms.both-active", f"{POOL1} and {POOL2}", Severity.critical,
     ["Get-CsService -CentralManagement", "/cms-recover"]),
    ("moving-after-forced-failover", "cms.both-active", f"{POOL2} and {POOL1}", Severity.critical,
     ["Get-CsService -CentralManagement", "/cms-recover"]),
    ("backup-error", "backup.error", POOL1, Severity.error,
     ["ExportStatus ErrorState", f"paired with {POOL2}", "LYNCBACKUP runs in both pools",
      "Get-CsBackupServiceStatus -PoolFqdn pool01.contoso.com -Category CMS"]),
]

# recordings whose only finding is the one in CASES (nothing spurious next to it)
ALONE = {"edge-4443-blocked", "edge-replica-stopped", "edge-replica-stopped@edge-winrm", "edge-cert-no-private-key",
         "edge-cert-other-root", "edge-cert-expired", "edge-cert-wrong-name", "edge-cert-no-private-key@edge-winrm",
         "edge-cert-wrong-name@edge-winrm", "edge-cert-other-root@edge-winrm", "edge-cert-expired@edge-winrm",
         "replica-stopped", "share-acl-missing", "computer-not-in-group", "replica-behind", "transient",
         "cms-unavailable", "failover-in-progress", "cms-pool-down", "both-active", "standby-not-backup",
         "moving-after-forced-failover", "backup-error"}


@pytest.mark.parametrize("name, code, subject, severity, texts", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_scenario_is_diagnosed_with_its_evidence_and_fix(name, code, subject, severity, texts):
    f = R.the(name, code, subject)
    assert f.severity is severity
    said = R.everything_said(f)
    missing = [t for t in texts if t not in said]
    assert not missing, f"{code} on {subject} does not say {missing}:\n{said}"
    assert f.fix, "every finding gives the fix in order"
    if name in ALONE:
        assert R.codes(name) == {(code, subject)}


def test_each_event_evidence_says_when_and_where_it_was_logged():
    for name, code, subject, _, _ in CASES:
        for e in R.the(name, code, subject).evidence:
            if e.text.startswith("Event "):
                assert e.source == FTA_LOG and isinstance(e.at, datetime), (name, e)


def test_the_expired_certificate_date_is_before_the_check():
    f = R.the("edge-cert-expired@edge-winrm", "replica.edge-cert-expired", EDGE1)
    expired_on = re.search(r"expired on (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", f.summary)
    assert expired_on, f.summary
    checked = R.report("edge-cert-expired@edge-winrm").health_of(EDGE1).collected_at
    assert datetime.fromisoformat(expired_on[1] + "+00:00") < checked


def test_replica_failures_end_with_forcing_replication_and_rechecking():
    """domain.md 4: before and after each fix, force replication and check the status again;
    README: a replica finding offers the 'Force replication and re-check' button."""
    replica_errors = [f for n in R.NAMES for f in R.findings(n)
                      if f.code.startswith("replica.") and f.severity is Severity.error]
    assert len(replica_errors) >= 20
    for f in replica_errors:
        assert any("Invoke-CsManagementStoreReplication" in step for step in f.fix), f
        assert any("/cms-status" in step for step in f.fix), f
        assert ("force-replication", f.subject) in {(a.kind, a.target) for a in f.actions}, f


def test_start_replica_is_offered_only_where_the_bot_can_reach_replica():
    """The Start REPLICA button needs WinRM to the server: offered when REPLICA was read as stopped,
    not when it is only inferred from a refused TCP 4443 on a perimeter Edge."""
    confirmed = R.the("edge-replica-stopped@edge-winrm", "replica.replica-stopped", EDGE2)
    assert [a.kind for a in confirmed.actions] == ["start-replica", "force-replication"]
    assert [a.kind for a in R.the("replica-stopped", "replica.replica-stopped", FE3).actions] == \
        ["start-replica", "force-replication"]
    inferred = R.the("edge-replica-stopped", "replica.replica-stopped", EDGE2)
    assert "start-replica" not in {a.kind for a in inferred.actions}
    assert any("REPLICA state on edge02.contoso.com" in u for u in inferred.unchecked)


def test_a_replica_behind_with_no_signature_offers_force_and_reseed():
    assert [a.kind for a in R.the("replica-behind", "replica.behind", DIR1).actions] == ["force-replication", "reseed"]


def test_the_fta_group_finding_explains_every_denied_replica_once():
    """One event 1034 per internal replica, one cause: one finding, on the FTA host, naming them all."""
    assert R.codes("computer-not-in-group") == {("cms.fta-not-in-group", FE1)}
    denied = {e.message.split("\\\\")[1].split("\\")[0] for e in R.report("computer-not-in-group").events
              if e.id == 1034}
    assert denied == set(INTERNAL_REPLICAS)


def test_a_standby_front_end_out_of_the_group_is_a_warning():
    hits = [f for f in R.findings("computer-not-in-group-standby") if f.code == "cms.fta-not-in-group"]
    assert len(hits) == 1
    f = hits[0]
    assert f.severity is Severity.warning
    assert "FE02 not a member of CN=RTCUniversalConfigReplicator" in R.evidence(f)
    assert "if it becomes the File Transfer Agent" in f.summary
    assert ("replica.behind", DIR1) in R.codes("computer-not-in-group-standby")


def test_a_standby_front_end_out_of_the_group_is_named_by_its_fqdn():
    (f,) = [f for f in R.findings("computer-not-in-group-standby") if f.code == "cms.fta-not-in-group"]
    assert f.subject == FE2
    assert any("-Members FE02$" in step for step in f.fix) and not any("<NAME>" in step for step in f.fix), f.fix


def test_a_transient_replica_is_pending_not_a_failure():
    """domain.md 3: UpToDate is legitimately False for 2-3 minutes after a change."""
    r = R.report("transient")
    assert r.healthy
    f = R.the("transient", "replica.pending", FE4)
    change = re.search(r"change made at \d{4}-\d\d-\d\d (\d\d:\d\d:\d\d) UTC", f.summary)[1]
    recheck = re.search(r"re-check after (\d\d:\d\d:\d\d) UTC", f.summary)[1]
    minutes = (datetime.strptime(recheck, "%H:%M:%S") - datetime.strptime(change, "%H:%M:%S")).seconds / 60
    assert 2 <= minutes <= 5


# -- healthy, combinations --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["healthy", "healthy@lync2010"])
def test_a_healthy_deployment_has_no_finding_and_needs_one_stage(name):
    r = R.report(name)
    assert r.findings == [] and r.host_errors == [] and r.healthy
    assert all(rep.up_to_date for rep in r.cms.replicas) and len(r.cms.replicas) == 8
    assert R.status_replay(name).stage2_recorded == {}  # no event log, port test or LDAP when nothing is behind


def test_combined_scenarios_are_each_diagnosed():
    assert R.codes("combined") == {
        ("replica.https-unreachable", EDGE1),
        ("replica.edge-cert-name-mismatch", EDGE2),
        ("replica.share-acl-missing", FE3),
        ("backup.error", POOL1),
    }


def test_one_event_naming_both_edges_gives_each_edge_its_finding():
    both = [e for e in R.report("edge-4443-blocked-both").events if e.id == 1017 and EDGE1 in e.message
            and EDGE2 in e.message]
    assert both, "the File Transfer Agent logs one 1017 naming both"
    assert R.codes("edge-4443-blocked-both") == {("replica.https-unreachable", EDGE1),
                                                 ("replica.https-unreachable", EDGE2)}
    for edge in (EDGE1, EDGE2):
        assert "Event 1017" in R.evidence(R.the("edge-4443-blocked-both", "replica.https-unreachable", edge))


def test_one_replica_can_carry_several_certificate_findings():
    assert R.codes("edge-cert-two-problems@edge-winrm") == {("replica.edge-cert-no-private-key", EDGE1),
                                                            ("replica.edge-cert-other-root", EDGE1)}


def test_an_unreadable_replica_named_by_event_1034_gets_both_the_denial_and_the_port_failure():
    assert R.codes("share-acl-missing+unreachable") == {("replica.share-access-denied", FE3),
                                                         ("replica.smb-unreachable", FE3)}
    assert [(e.server, e.kind) for e in R.report("share-acl-missing+unreachable").host_errors] == \
        [(FE3, HostErrorKind.unreachable)]


# -- servers that cannot be reached or hang ------------------------------------------------------------


def test_unreachable_servers_are_named_and_the_rest_of_the_report_is_complete():
    r = R.report("unreachable")
    assert {(e.server, e.kind) for e in r.host_errors} == {(FE2, HostErrorKind.unreachable),
                                                          (FE4, HostErrorKind.unreachable)}
    assert r.cms is not None and len(r.cms.replicas) == 8
    assert {h.fqdn for h in r.health} == {FE1, FE3, DIR1, "med01.contoso.com"}
    assert not r.healthy and r.findings == []
    assert "2 servers could not be checked" in render.verdict(r)


def test_a_hung_fta_host_is_named_and_the_cms_is_read_from_the_next_server():
    r = R.report("hang")
    assert [(e.server, e.kind, e.probe) for e in r.host_errors] == [(FE1, HostErrorKind.timed_out, "cms-status")]
    assert r.cms_source == FE2
    f = R.the("hang", "replica.https-unreachable", EDGE1)
    assert "TCP 4443 to 192.0.2.11: TimedOut" in R.evidence(f)
    assert "fe01.contoso.com: timed out [cms-status]" in render.report_text(r)


def test_a_finding_says_when_the_fta_hosts_event_log_could_not_be_read():
    r = R.report("hang+edge-cert-wrong-name")
    assert r.cms.store.active_file_transfer_agents == [FE1]
    (f,) = [f for f in r.findings if f.subject == EDGE1]
    assert any(FE1 in u and "log" in u for u in f.unchecked), f.unchecked


def test_no_cms_reader_answering_gives_no_diagnosis_but_names_every_server():
    r = R.report("cms-readers-unreachable")
    assert r.cms is None and r.findings == []
    assert sorted(e.server for e in r.host_errors) == [FE1, FE2, FE3, FE4]
    assert render.verdict(r).startswith("FAILED: could not read the Central Management Store")


def test_the_cms_pool_down_is_read_from_its_pair_and_names_the_pool_servers():
    r = R.report("cms-pool-down")
    assert r.cms_source in (FE3, FE4)
    assert sorted(e.server for e in r.host_errors) == [FE1, FE2]


@pytest.mark.parametrize("server, kind, says", [
    (FE3, HostErrorKind.probe_failed, "WS-Management fault"),
    (FE4, HostErrorKind.auth_failed, "credentials were rejected"),
    (DIR1, HostErrorKind.probe_failed, "malformed"),
    ("med01.contoso.com", HostErrorKind.probe_failed, "not UTF-8"),
    (EDGE1, HostErrorKind.unreachable, "broke in the middle of a response"),
    (EDGE2, HostErrorKind.timed_out, "no complete answer within the host deadline"),
])
def test_each_winrm_failure_is_named_with_its_reason(server, kind, says):
    r = R.report("winrm-faults@edge-winrm")
    (e,) = [e for e in r.host_errors if e.server == server]
    assert e.kind is kind and says in e.reason
    assert f"{server}: {render.HOST_ERROR_TEXT[kind.value]}" in render.report_text(r)
    assert r.findings == [] and len(r.cms.replicas) == 8


# -- a code the lab cannot produce ---------------------------------------------------------------------


def test_a_stopped_cms_service_on_a_cms_pool_server():
    """Derived: the lab has no scenario that stops MASTER, FTA or LYNCBACKUP, so this takes fe02's
    recorded replica-health answer from the healthy lab and changes only MASTER to Stopped."""
    replay = R.status_replay("healthy")
    (call,) = [c for c in R.doc("healthy")["status"] if c["call"] == "run_all"]
    raw = call["runs"][FE2]["stdout"]["replica-health"]
    envelope = json.loads(raw)
    assert envelope["data"]["Services"]["MASTER"] == "Running"
    envelope["data"]["Services"]["MASTER"] = "Stopped"
    stopped = parse_replica_health(FE2, envelope["data"])
    health = [stopped if h.fqdn == FE2 else h for h in replay.report.health]
    report = replay.report.model_copy(update={"health": health})
    (f,) = diagnose(report)
    assert (f.code, f.subject, f.severity) == ("cms.service-stopped", FE2, Severity.error)
    assert f.summary == "MASTER is stopped on fe02.contoso.com"
    assert "Start-CsWindowsService -Name MASTER" in " ".join(f.fix)


def test_a_master_and_file_transfer_agent_named_by_their_pool_read_as_its_servers():
    """Microsoft's failover article expects ActiveMasterFqdn to be the CMS pool's FQDN; a pool
    stands for its members wherever a server is looked for (the FTA's event log, its account)."""
    from workers.runs.status import cms_candidates, second_stage

    replay = R.status_replay("computer-not-in-group")
    named_by_server = replay.report
    assert named_by_server.cms is not None
    store = named_by_server.cms.store.model_copy(update={"active_master_fqdn": POOL1,
                                                         "active_file_transfer_agents": [POOL1]})
    named_by_pool = named_by_server.model_copy(update={"cms": named_by_server.cms.model_copy(update={"store": store})})
    assert named_by_pool.hosts_of(POOL1) == [FE1, FE2] and named_by_pool.hosts_of(FE3.upper()) == [FE3]
    assert named_by_pool.fta_hosts == [FE1, FE2]
    # the FTA's event log is read on a member of the pool, not skipped
    topology = R.topology_of("computer-not-in-group")
    plan = second_stage(topology, named_by_pool, cms_candidates(topology))
    assert any(server in (FE1, FE2) and "replication-events" in probes for server, probes in plan.items())
    # and the group finding still names the FTA host's account
    found = {(f.code, f.subject, f.severity) for f in diagnose(named_by_pool)}
    assert ("cms.fta-not-in-group", FE1, Severity.error) in found
