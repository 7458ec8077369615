"""One replication failure of each family of the seed article, set up in the lab and
diagnosed through the real pipeline (Redis, RQ worker, pywinrm, lab). Every scenario
and finding code is covered from recorded probe output in tests/unit/test_diagnose.py."""

from __future__ import annotations

from cms.models import Finding, Severity

EDGE1, EDGE2 = "edge01.contoso.com", "edge02.contoso.com"


def codes(outcome) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in outcome.report.findings}


def the(outcome, code: str, subject: str) -> Finding:
    hits = [f for f in outcome.report.findings if f.code == code and f.subject == subject]
    assert hits, f"no {code} on {subject}; findings: {codes(outcome)}"
    return hits[0]


def evidence(f: Finding) -> str:
    return " | ".join(e.text for e in f.evidence)


def test_edge_4443_blocked(status):
    outcome, thread = status(f"edge-4443-blocked:{EDGE1}")
    f = the(outcome, "replica.https-unreachable", EDGE1)
    assert "Event 1017" in evidence(f) and f"{EDGE1}: Https destination unavailable" in evidence(f)
    assert "TCP 4443 to 192.0.2.11: TimedOut" in evidence(f)
    assert any("REPLICA state" in u for u in f.unchecked)
    assert codes(outcome) == {("replica.https-unreachable", EDGE1)}
    assert outcome.exit_code == 1
    assert "[replica.https-unreachable]" in thread and "fix 1." in thread


def test_edge_replica_stopped_confirmed_on_the_edge(edge_status):
    outcome, _ = edge_status(f"edge-replica-stopped:{EDGE2}")
    f = the(outcome, "replica.replica-stopped", EDGE2)
    assert "REPLICA is stopped" in evidence(f)
    assert [a.kind for a in f.actions] == ["start-replica", "force-replication"]


def test_edge_cert_wrong_name_from_the_event_and_from_the_certificate(status, edge_status):
    outcome, _ = status(f"edge-cert-wrong-name:{EDGE1}")
    f = the(outcome, "replica.edge-cert-name-mismatch", EDGE1)
    assert "sip.contoso.com" in f.summary
    outcome, _ = edge_status(f"edge-cert-wrong-name:{EDGE1}")
    f = the(outcome, "replica.edge-cert-name-mismatch", EDGE1)
    assert "CN=sip.contoso.com (SAN sip.contoso.com, access.contoso.com)" in evidence(f)


def test_share_acl_missing(status):
    outcome, _ = status("share-acl-missing:fe03.contoso.com")
    f = the(outcome, "replica.share-acl-missing", "fe03.contoso.com")
    ev = evidence(f)
    assert "Event 1034" in ev and "\\\\fe03.contoso.com\\xds-replica\\from-master\\data.zip" in ev
    assert "no Change right" in ev and "no Modify right" in ev
    assert codes(outcome) == {("replica.share-acl-missing", "fe03.contoso.com")}


def test_fta_computer_not_in_group_explains_every_denied_replica_once(status):
    outcome, _ = status("computer-not-in-group:fe01.contoso.com")
    f = the(outcome, "cms.fta-not-in-group", "fe01.contoso.com")
    assert f.severity is Severity.error
    ev = evidence(f)
    assert "FE01 not a member of CN=RTCUniversalConfigReplicator" in ev
    for replica in ("fe02", "fe03", "fe04", "dir01", "med01"):
        assert f"{replica}.contoso.com" in ev
    assert codes(outcome) == {("cms.fta-not-in-group", "fe01.contoso.com")}


def test_transient_replica_is_pending_not_failed(status):
    outcome, _ = status("transient:fe04.contoso.com")
    f = the(outcome, "replica.pending", "fe04.contoso.com")
    assert f.severity is Severity.pending and "re-check after" in f.summary
    assert outcome.exit_code == 0


def test_cms_unavailable(status):
    outcome, _ = status("cms-unavailable")
    f = the(outcome, "cms.unavailable", "pool01.contoso.com")
    assert f.severity is Severity.critical
    assert "ActiveMasterFqdn and ActiveFileTransferAgents empty" in evidence(f)
    assert any("/cms-recover" in step for step in f.fix)


def test_combined_scenarios_each_diagnosed(status):
    outcome, _ = status(f"edge-4443-blocked:{EDGE1}", f"edge-cert-wrong-name:{EDGE2}",
                        "share-acl-missing:fe03.contoso.com", "backup-error")
    assert codes(outcome) == {
        ("replica.https-unreachable", EDGE1),
        ("replica.edge-cert-name-mismatch", EDGE2),
        ("replica.share-acl-missing", "fe03.contoso.com"),
        ("backup.error", "pool01.contoso.com"),
    }


def test_hung_fta_host_still_gives_the_report_naming_it(status):
    outcome, thread = status("hang:fe01.contoso.com", f"edge-4443-blocked:{EDGE1}")
    report = outcome.report
    assert report.cms_source == "fe02.contoso.com"
    assert any(e.server == "fe01.contoso.com" and e.kind.value == "timed_out" for e in report.host_errors)
    f = the(outcome, "replica.https-unreachable", EDGE1)
    assert "TimedOut" in evidence(f)
    assert "fe01.contoso.com: timed out" in thread
