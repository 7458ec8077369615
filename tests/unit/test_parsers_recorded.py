"""The parsers on probe output recorded from the lab (tests/fixtures/recorded/).

tests/unit/test_parsers.py covers cms-status and replica-health service states on the
hand-written 5.1 fixtures in tests/fixtures/ps51/ (5.1's ConvertTo-Json shape, which the parsers
still read) and on answers in the probes' own writer's shape. This covers what those fixtures do not:
the event log, the port and share test, the AD group, the Backup Service, the CMS location,
and replica-health's ACL and certificate, each on what the probes answered in a lab scenario.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from cms.eventlog import classify
from cms.models import ServiceState
from cms.parsers import (
    parse_ad_membership,
    parse_backup_status,
    parse_cms_status,
    parse_location,
    parse_reachability,
    parse_replica_health,
    parse_replication_events,
)
from tests.unit import recorded as R
from workers import probes
from workers.transport.winrm import Output

pytestmark = pytest.mark.unit

FTA = "fe01.contoso.com"
EDGE1, EDGE2, FE3 = "edge01.contoso.com", "edge02.contoso.com", "fe03.contoso.com"
INTERNAL = ["fe02.contoso.com", FE3, "fe04.contoso.com", "dir01.contoso.com", "med01.contoso.com"]


def raw_lines(name: str, job: str = "status"):
    """(server, probe, raw stdout) of every probe a recorded job decoded."""
    for call in R.doc(name).get(job, []):
        runs = call["runs"] if call["call"] == "run_all" else {call["server"]: call["run"]}
        for server, run in runs.items():
            for probe, stdout in run["stdout"].items():
                yield server, probe, stdout


def data(name: str, probe: str, server: str | None = None, job: str = "status"):
    hits = [(s, out) for s, p, out in raw_lines(name, job) if p == probe and (server is None or s == server)]
    assert hits, f"{name}: no {probe} answer" + (f" from {server}" if server else "")
    server, out = hits[-1]
    return server, probes.decode(probe, Output(out.encode("utf-8"), b"", 0))


ALL_LINES = [(n, s, p) for n in R.NAMES for job in ("status", "preflight") for s, p, _ in raw_lines(n, job)]


# -- the recordings are what the probes' JSON writer prints (workers/probes/_lib.ps1) -------------

ISO_UTC = re.compile(r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"')


@pytest.mark.parametrize("name", R.NAMES)
def test_every_recorded_answer_is_one_line_of_the_probe_writer(name):
    for job in ("status", "preflight"):
        for server, probe, out in raw_lines(name, job):
            assert out.endswith("\r\n") and "\n" not in out[:-2], (server, probe)
            assert out.isascii(), (server, probe)  # every other character escaped as \\uXXXX
            assert '": ' not in out and "/Date(" not in out, (server, probe)  # compact, ISO 8601 dates
            doc = json.loads(out)
            assert list(doc)[:3] == ["probe", "version", "ps"] and doc["probe"] == probe and "data" in doc
            assert re.fullmatch(r"\d+\.\d+(\.\d+\.\d+)?", doc["ps"]), (server, probe, doc["ps"])
            assert ISO_UTC.search(out), (server, probe)  # CollectedAt at least


def test_the_recordings_cover_every_read_only_probe():
    seen = {p for _, _, p in ALL_LINES}
    assert {"cms-status", "replica-health", "replication-events", "reachability", "ad-membership", "backup-status",
            "cms-location"} <= seen


# -- replication-events: the File Transfer Agent's log ------------------------------------------------------


def test_events_are_newest_first_from_the_fta_host():
    computer, events = parse_replication_events(data("computer-not-in-group", "replication-events")[1])
    assert computer == FTA
    assert events and all(e.computer == FTA and e.source == "LS File Transfer Agent Service" for e in events)
    assert [e.time for e in events] == sorted((e.time for e in events), reverse=True)
    assert all(e.time.tzinfo is not None and e.time.utcoffset().total_seconds() == 0 for e in events)
    assert {e.id for e in events} == {1034} and {e.level for e in events} == {"Error"}


def test_event_1034_names_each_replica_share_path():
    _, events = parse_replication_events(data("computer-not-in-group", "replication-events")[1])
    paths = {p for e in events for p in classify(e.id, e.source, e.message).paths}
    assert paths == {f"\\\\{r}\\xds-replica\\from-master\\data.zip" for r in INTERNAL}


def test_one_event_1017_names_both_edges():
    _, events = parse_replication_events(data("edge-4443-blocked-both", "replication-events")[1])
    newest_1017 = next(e for e in events if e.id == 1017)
    assert "Https destination unavailable" in newest_1017.message
    assert set(classify(newest_1017.id, newest_1017.source, newest_1017.message).replicas) == {EDGE1, EDGE2}


def test_event_1015_carries_the_presented_certificate():
    _, events = parse_replication_events(data("edge-cert-wrong-name", "replication-events")[1])
    e = next(e for e in events if e.id == 1015)
    cert = classify(e.id, e.source, e.message).certificate
    assert (cert.host, cert.cluster, cert.subject_cn) == (EDGE1, "edgepool.contoso.com", "sip.contoso.com")


def test_a_healthy_lab_reads_no_event_log():
    assert "replication-events" not in {p for _, p, _ in raw_lines("healthy")}


# -- reachability: TCP 4443 to Edges, TCP 445 and a write test to internal replicas ----------------------------


def test_reachability_blocked_edge_times_out_on_its_internal_address():
    server, d = data("edge-4443-blocked", "reachability")
    r = parse_reachability(server, d)
    assert (r.source, r.identity) == (FTA, "CONTOSO\\cmsbot")
    edge = next(t for t in r.results if t.fqdn == EDGE1)
    assert (edge.address, edge.port, edge.connected, edge.error) == ("192.0.2.11", 4443, False, "TimedOut")
    assert edge.share_writable is None  # Edges are not written over SMB
    internal = [t for t in r.results if t.port == 445]
    assert {t.fqdn for t in internal} == set(INTERNAL)
    assert all(t.connected and t.share_writable is True for t in internal)


def test_reachability_stopped_replica_on_an_edge_refuses():
    server, d = data("edge-replica-stopped", "reachability")
    edge = next(t for t in parse_reachability(server, d).results if t.fqdn == EDGE2)
    assert (edge.connected, edge.error) == (False, "ConnectionRefused")


def test_reachability_share_write_denied_says_why():
    server, d = data("share-acl-missing", "reachability")
    fe3 = next(t for t in parse_reachability(server, d).results if t.fqdn == FE3)
    assert fe3.connected and fe3.share_writable is False
    assert fe3.share_error.startswith(f"Access to the path '\\\\{FE3}\\xds-replica\\from-master\\")
    assert fe3.share_error.endswith("is denied.")


# -- ad-membership, backup-status, cms-location ----------------------------------------------------------------


def test_membership_of_the_cms_front_ends():
    m = parse_ad_membership(data("computer-not-in-group", "ad-membership")[1])
    assert m.group == "CN=RTCUniversalConfigReplicator,CN=Users,DC=contoso,DC=com"
    # the order is the job's (a set of the CMS Front Ends): compare without it
    assert sorted((c.computer, c.found, c.member) for c in m.computers) == [
        ("FE01", True, False), ("FE02", True, True), ("FE03", True, True), ("FE04", True, True)]
    fe01 = next(c for c in m.computers if c.computer == "FE01")
    assert fe01.distinguished_name == "CN=FE01,OU=Lync Servers,DC=contoso,DC=com"


def test_backup_status_of_both_pools_of_the_pair():
    pools = parse_backup_status(data("backup-error", "backup-status")[1])
    assert [(p.pool, p.backup_pool, p.error) for p in pools] == [
        ("pool01.contoso.com", "pool02.contoso.com", None), ("pool02.contoso.com", "pool01.contoso.com", None)]
    assert [(m.identity, m.export_status, m.import_status) for m in pools[0].modules] == [
        ("CentralMgmt.CMSMaster", "ErrorState", "NormalState")]
    assert pools[1].modules[0].export_status == "SteadyState"


def test_lync_2010_has_no_backup_service_to_ask():
    assert "backup-status" not in {p for _, p, _ in raw_lines("healthy@lync2010")}
    assert "backup-status" not in {p for _, p, _ in raw_lines("healthy@lync2010", "preflight")}


def test_cms_location_after_a_forced_failover():
    loc = parse_location(data("moving-after-forced-failover", "cms-location", job="preflight")[1])
    assert loc.store_sql == "sql02.contoso.com" and loc.store_text == "SQL Server: sql02.contoso.com\\rtc"
    assert {(s.pool_fqdn, s.active) for s in loc.services} == {("pool01.contoso.com", True),
                                                               ("pool02.contoso.com", True)}
    assert loc.pairs == {"pool01.contoso.com": "pool02.contoso.com", "pool02.contoso.com": "pool01.contoso.com"}
    assert loc.backend_sql == {"pool01.contoso.com": "sql01.contoso.com", "pool02.contoso.com": "sql02.contoso.com"}


def test_cms_status_with_both_pools_active():
    status = parse_cms_status(data("both-active", "cms-status")[1])
    assert [(s.pool_fqdn, s.active) for s in status.services] == [
        ("pool01.contoso.com", True), ("pool02.contoso.com", True)]


def test_cms_status_with_no_active_master():
    store = parse_cms_status(data("failover-in-progress", "cms-status")[1]).store
    assert store.active_master_fqdn is None and store.active_file_transfer_agents == []
    assert store.available is False and store.active_replicas == []


# -- replica-health: ACL and certificate ---------------------------------------------------------------------


def test_replica_health_reads_the_xds_replica_share_and_folder():
    h = parse_replica_health(FE3, data("healthy", "replica-health", FE3)[1])
    assert h.acl.path == "C:\\RtcReplicaRoot\\xds-replica" and h.acl.owner == "BUILTIN\\Administrators"
    group = "FE03\\RTC Local Config Replicator"
    assert (group, "Change", True) in {(a.identity, a.rights, a.allow) for a in h.acl.share}
    assert (group, "Modify, Synchronize", True) in {(a.identity, a.rights, a.allow) for a in h.acl.folder}
    assert h.acl.share_error is None and h.acl.folder_error is None


def test_replica_health_without_the_replicator_aces():
    h = parse_replica_health(FE3, data("share-acl-missing", "replica-health", FE3)[1])
    assert all("RTC Local Config Replicator" not in a.identity for a in h.acl.share + h.acl.folder)
    assert h.services["REPLICA"] is ServiceState.running


def test_replica_health_services_by_role():
    fe = parse_replica_health(FTA, data("healthy", "replica-health", FTA)[1])
    assert {n: s for n, s in fe.services.items()} == {n: ServiceState.running for n in ("REPLICA", "MASTER", "FTA",
                                                                                          "LYNCBACKUP")}
    director = parse_replica_health("dir01.contoso.com", data("healthy", "replica-health", "dir01.contoso.com")[1])
    assert director.services["REPLICA"] is ServiceState.running and director.services["MASTER"] is ServiceState.missing
    lync = parse_replica_health(FTA, data("healthy@lync2010", "replica-health", FTA)[1])
    assert lync.services["LYNCBACKUP"] is ServiceState.missing  # no Backup Service before Lync 2013
    stopped = parse_replica_health(FE3, data("replica-stopped", "replica-health", FE3)[1])
    assert stopped.services["REPLICA"] is ServiceState.stopped


def test_replica_health_reads_the_edge_internal_certificate():
    h = parse_replica_health(EDGE1, data("edge-cert-no-private-key@edge-winrm", "replica-health", EDGE1)[1])
    c = h.certificate
    assert (c.use, c.subject, c.has_private_key) == ("Internal", "CN=edgepool.contoso.com", False)
    assert c.dns_names == ["edgepool.contoso.com", EDGE1, EDGE2]
    assert (c.issuer, c.root) == ("CN=Contoso Issuing CA, DC=contoso, DC=com", "CN=Contoso Root CA, DC=contoso, DC=com")
    assert c.not_after > h.collected_at and c.not_after.tzinfo == UTC
    assert h.certificate_error is None


def test_replica_health_of_an_expired_certificate_from_another_root():
    expired = parse_replica_health(EDGE1, data("edge-cert-expired@edge-winrm", "replica-health", EDGE1)[1])
    assert expired.certificate.not_after < expired.collected_at
    other = parse_replica_health(EDGE2, data("edge-cert-other-root@edge-winrm", "replica-health", EDGE2)[1])
    assert other.certificate.root == "CN=Fabrikam Root CA, O=Fabrikam"
    assert other.certificate.chain_status == ["PartialChain"]


def test_front_end_certificate_is_the_default_one():
    h = parse_replica_health(FTA, data("healthy", "replica-health", FTA)[1])
    assert h.certificate.use == "Default" and h.certificate.root == "CN=Contoso Root CA, DC=contoso, DC=com"
    assert isinstance(h.collected_at, datetime)
