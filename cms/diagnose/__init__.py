"""Diagnosis: pure functions from what the probes saw to Findings.

For each replica that is behind: name the known failure from whatever evidence
there is (the File Transfer Agent's event alone names the scenario; the port
test, the service state, the certificate and the ACL confirm it and narrow the
cause), say what could not be checked and why, and give the fix in order.
A replica can carry several findings; one event can name several replicas.

By family: `edge` (Edge servers), `internal` (internal servers' replicas),
`master` (the CMS itself: master, FTA, store, Backup Service); `common` holds
what they share. Here: the entry point and what no family owns (an event's
replicas, a replica catching up, one behind with no known cause).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from cms.diagnose.common import (
    CMS_VIEW,
    Clues,
    finding,
    force_button,
    reseed_button,
    start_button,
    unreachable_note,
    when,
    with_unchecked,
)
from cms.diagnose.edge import edge_findings, front_end_root
from cms.diagnose.internal import acl_unread, internal_findings, missing_aces
from cms.diagnose.master import (
    active_fta_not_member,
    cms_findings,
    cms_service_findings,
    fta_not_in_group,
    group_finding,
    master_watch_finding,
)
from cms.eventlog import MASTER_WATCH_FAILED, classify
from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Evidence, Finding, ReplicaStatus, ReplicationEvent, ServiceState, Severity, StatusReport

PENDING_WINDOW = timedelta(minutes=5)  # domain: UpToDate is legitimately False 2-3 minutes after a change
RECHECK_AFTER = timedelta(minutes=3)
REPORTING_WINDOW = timedelta(minutes=15)
EVENT_SLACK = timedelta(minutes=5)


def diagnose(report: StatusReport) -> list[Finding]:
    findings = cms_findings(report)
    cms = report.cms
    if cms is None:
        return findings
    now = cms.collected_at
    scope = set(report.servers)
    named = events_by_replica(report.events)
    ports = {t.fqdn.lower(): t for t in (report.reachability.results if report.reachability else [])}
    fe_root = front_end_root(report)
    not_member = fta_not_in_group(report)
    denied_for_group: list[ReplicaStatus] = []
    event_note = _event_note(report)

    for status in cms.replicas:
        if status.fqdn not in scope:
            continue
        key = status.fqdn.lower()
        clues = Clues(status=status, role=report.roles.get(status.fqdn, "other"), pool=report.pools.get(status.fqdn),
                       health=report.health_of(status.fqdn),
                       host_error=report.error_of(status.fqdn), port=ports.get(key))
        for code, events in named.get(key, {}).items():
            fresh = [e for e in events if status.last_status_report is None
                     or e.time >= status.last_status_report - EVENT_SLACK]
            if fresh:
                clues.events[code] = fresh
        if status.up_to_date:
            findings += stopped_service_warnings(clues)
            continue
        found = edge_findings(clues, report, fe_root) if clues.role == "edge" else internal_findings(
            clues, report, not_member if active_fta_not_member(report, not_member) else [])
        if found is None:  # explained by the FTA's group membership: reported once, below
            denied_for_group.append(status)
            continue
        if not found and (watch := clues.latest(MASTER_WATCH_FAILED)):
            found = [master_watch_finding(watch, status.fqdn)]
        if not found:
            found = [pending(status, now)] if is_pending(status, now) else [behind(clues, report)]
        findings += [with_unchecked(f, event_note) for f in found]
    if not_member:
        findings.append(group_finding(report, not_member, denied_for_group))
    findings += cms_service_findings(report)
    return findings


# -- evidence helpers -------------------------------------------------------------


def events_by_replica(events: list[ReplicationEvent]) -> dict[str, dict[FindingCode, list[ReplicationEvent]]]:
    """replica fqdn -> finding code -> its events, newest first."""
    out: dict[str, dict[FindingCode, list[ReplicationEvent]]] = {}
    for e in sorted(events, key=lambda ev: ev.time, reverse=True):
        c = classify(e.id, e.source, e.message)
        if c.code is None:
            continue
        for replica in c.replicas:
            out.setdefault(replica.lower(), {}).setdefault(c.code, []).append(e)
    return out


def _event_note(report: StatusReport) -> list[str]:
    """What to say when the File Transfer Agent's event log was not read (empty: it was)."""
    if report.events_source:
        return []
    ftas = report.cms.store.active_file_transfer_agents if report.cms else []
    fta = ", ".join(ftas)
    err = next((e for e in report.host_errors if e.probe == "replication-events"), None) or next(
        (e for e in report.host_errors if e.server.lower() in {f.lower() for f in report.fta_hosts}), None)
    reason = f"{err.kind.value.replace('_', ' ')} ({err.reason})" if err else "not read"
    return [f"'Lync Server' event log on the FTA host {fta or '(none active)'}: {reason}"]


# -- no evidence ------------------------------------------------------------------------


def is_pending(status: ReplicaStatus, now: datetime) -> bool:
    """Catching up: a change minutes ago, and the replica itself reported recently.
    A replica silent for hours is behind, whatever changed a minute ago."""
    fresh_change = status.last_update_creation is not None and now - status.last_update_creation < PENDING_WINDOW
    reporting = status.last_status_report is not None and now - status.last_status_report < REPORTING_WINDOW
    return fresh_change and reporting


def pending(status: ReplicaStatus, now: datetime) -> Finding:
    assert status.last_update_creation
    recheck = max(status.last_update_creation + RECHECK_AFTER, now + timedelta(seconds=30))
    return finding(FindingCode.replica_pending, Severity.pending, status.fqdn,
                   f"{status.fqdn} is catching up with a change made at {when(status.last_update_creation)}; "
                   f"re-check after {recheck.strftime('%H:%M:%S UTC')}",
                   [Evidence(text=f"UpToDate False; last change {when(status.last_update_creation)}, last status "
                                  f"report {when(status.last_status_report)}", source=CMS_VIEW)])


def behind(clues: Clues, report: StatusReport) -> Finding:
    s = clues.status
    checked = []
    if report.events_source:
        checked.append(f"no File Transfer Agent event names it in the 'Lync Server' log on {report.events_source}")
    if clues.port is not None:
        checked.append(f"TCP {clues.port.port} from the FTA host {'connects' if clues.port.connected else 'fails'}")
    if clues.health:
        checked.append(f"REPLICA is {clues.health.services.get('REPLICA', ServiceState.unknown).value}")
        if clues.health.acl and not missing_aces(clues.health.acl) and not acl_unread(clues.health.acl):
            checked.append("xds-replica share and folder ACLs grant 'RTC Local Config Replicator' change rights")
    unchecked = _event_note(report)
    if clues.health is None:
        unchecked.append(unreachable_note(clues, "service state, ACL and certificate"))
    evidence = [Evidence(text=f"UpToDate False; last status report {when(s.last_status_report)}; last change "
                              f"{when(s.last_update_creation)}", source=f"{CMS_VIEW} on {report.cms_source}")]
    evidence += [Evidence(text=f"checked: {c}") for c in checked]
    return finding(FindingCode.replica_behind, Severity.error, s.fqdn,
                   f"{s.fqdn} is behind the Central Management Store and no known failure explains it", evidence,
                   unchecked=unchecked,
                   fix=[step.replace("<replica>", s.fqdn) for step in KNOWLEDGE[FindingCode.replica_behind].fix],
                   actions=[force_button(s.fqdn)] + ([reseed_button(s.fqdn)] if clues.health else []))


def stopped_service_warnings(clues: Clues) -> list[Finding]:
    """An up-to-date replica whose REPLICA is stopped will miss the next change."""
    state = clues.health.services.get("REPLICA") if clues.health else None
    if state is None or state in (ServiceState.running, ServiceState.missing):
        return []
    assert clues.health is not None  # state was read from it
    return [finding(FindingCode.replica_replica_stopped, Severity.warning, clues.status.fqdn,
                    f"REPLICA is {state.value} on {clues.status.fqdn}: "
                    "it is up to date now but will miss the next change",
                    [Evidence(text=f"REPLICA is {state.value}", source=f"Get-Service on {clues.status.fqdn}",
                              at=clues.health.collected_at)],
                    actions=[start_button(clues.status.fqdn)])]
