"""Diagnosis: pure functions from what the probes saw to Findings.

For each replica that is behind: name the known failure from whatever evidence
there is (the File Transfer Agent's event alone names the scenario; the port
test, the service state, the certificate and the ACL confirm it and narrow the
cause), say what could not be checked and why, and give the fix in order.
A replica can carry several findings; one event can name several replicas.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cms.eventlog import MASTER_WATCH_FAILED, classify
from cms.knowledge import KNOWLEDGE
from cms.models import (
    Action,
    Evidence,
    Finding,
    HostError,
    PortTest,
    ReplicaHealth,
    ReplicaStatus,
    ReplicationEvent,
    ServiceState,
    Severity,
    StatusReport,
)
from cms.remediation import RemediationKind

CMS_VIEW = "Get-CsManagementStoreReplicationStatus"
PENDING_WINDOW = timedelta(minutes=5)  # domain: UpToDate is legitimately False 2-3 minutes after a change
RECHECK_AFTER = timedelta(minutes=3)
REPORTING_WINDOW = timedelta(minutes=15)
EVENT_SLACK = timedelta(minutes=5)
REPLICATOR_GROUP = "rtc local config replicator"
CHANGE_SHARE_RIGHTS = {"full", "change"}
CHANGE_NTFS_RIGHTS = ("fullcontrol", "modify")
CMS_SERVICES = ("MASTER", "FTA", "LYNCBACKUP")


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


def finding(code: str, severity: Severity, subject: str, summary: str, evidence: list[Evidence],
            unchecked: list[str] | None = None, actions: list[Action] | None = None,
            fix: list[str] | None = None) -> Finding:
    if code.startswith("replica.") and severity is Severity.error and not any(
            a.kind == "force-replication" for a in actions or []):
        actions = [*(actions or []), force_button(subject)]
    return Finding(code=code, severity=severity, subject=subject, summary=summary, evidence=evidence,
                   fix=fix if fix is not None else list(KNOWLEDGE[code].fix), unchecked=unchecked or [],
                   actions=actions or [])


def force_button(server: str) -> Action:
    return _button(RemediationKind.force_replication, server)


def start_button(server: str) -> Action:
    return _button(RemediationKind.start_replica, server)


def reseed_button(server: str) -> Action:
    return _button(RemediationKind.reseed, server)


def _button(kind: RemediationKind, server: str) -> Action:
    return Action(kind=kind.value, target=server, label=kind.label)


@dataclass
class _Clues:
    """Everything known about one replica, gathered once."""

    status: ReplicaStatus
    role: str
    pool: str | None
    health: ReplicaHealth | None
    host_error: HostError | None
    events: dict[str, list[ReplicationEvent]] = field(default_factory=dict)  # code -> newest first
    port: PortTest | None = None

    def latest(self, code: str) -> ReplicationEvent | None:
        newest = self.events.get(code)
        return newest[0] if newest else None


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
        clues = _Clues(status=status, role=report.roles.get(status.fqdn, "other"), pool=report.pools.get(status.fqdn),
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


def events_by_replica(events: list[ReplicationEvent]) -> dict[str, dict[str, list[ReplicationEvent]]]:
    """replica fqdn -> finding code -> its events, newest first."""
    out: dict[str, dict[str, list[ReplicationEvent]]] = {}
    for e in sorted(events, key=lambda ev: ev.time, reverse=True):
        c = classify(e.id, e.source, e.message)
        if c.code is None:
            continue
        for replica in c.replicas:
            out.setdefault(replica.lower(), {}).setdefault(c.code, []).append(e)
    return out


def master_watch_finding(e: ReplicationEvent, replica: str) -> Finding:
    """The master's side of replication: MASTER cannot watch this replica's folder on the File Store."""
    paths = classify(e.id, e.source, e.message).paths
    return finding(MASTER_WATCH_FAILED, Severity.error, replica,
                   f"the Master Replicator Agent cannot watch {replica}'s folder on the CMS File Store",
                   [event_evidence(e, f"Access failed (Can't watch {', '.join(paths) or replica})")])


def event_evidence(e: ReplicationEvent, detail: str) -> Evidence:
    return Evidence(text=f"Event {e.id} from {e.source}: {detail}",
                    source=f"'Lync Server' log on {e.computer or 'the FTA host'}", at=e.time)


def front_end_root(report: StatusReport) -> str | None:
    """The root CA of the CMS pool Front Ends' certificates (what an Edge must share)."""
    for h in report.health:
        if report.roles.get(h.fqdn) == "frontend" and h.certificate and h.certificate.root:
            return h.certificate.root
    return None


def fta_not_in_group(report: StatusReport) -> list[str]:
    """CMS Front End computer accounts missing from RTCUniversalConfigReplicator."""
    if report.membership is None or report.membership.group is None:
        return []
    return [m.computer for m in report.membership.computers if m.found and not m.member]


def active_fta_not_member(report: StatusReport, not_member: list[str]) -> bool:
    """Only the active File Transfer Agent's account explains other replicas' access denied."""
    ftas = {f.split(".")[0].upper() for f in (report.cms.store.active_file_transfer_agents if report.cms else [])}
    return any(c.upper() in ftas for c in not_member)


def with_unchecked(f: Finding, notes: list[str]) -> Finding:
    """The finding, also listing `notes` as not checked (once)."""
    new = [n for n in notes if n not in f.unchecked]
    return f.model_copy(update={"unchecked": [*f.unchecked, *new]}) if new else f


def _unreachable_note(clues: _Clues, what: str) -> str:
    server = clues.status.fqdn
    if clues.host_error:
        return f"{what} on {server}: {clues.host_error.kind.value.replace('_', ' ')} ({clues.host_error.reason})"
    return f"{what} on {server}: not reachable over WinRM (perimeter network); check it on the server itself"


def _event_note(report: StatusReport) -> list[str]:
    """What to say when the File Transfer Agent's event log was not read (empty: it was)."""
    if report.events_source:
        return []
    ftas = report.cms.store.active_file_transfer_agents if report.cms else []
    fta = ", ".join(ftas)
    err = next((e for e in report.host_errors if e.probe == "replication-events"), None) or next(
        (e for e in report.host_errors if e.server.lower() in {f.lower() for f in ftas}), None)
    reason = f"{err.kind.value.replace('_', ' ')} ({err.reason})" if err else "not read"
    return [f"'Lync Server' event log on the FTA host {fta or '(none active)'}: {reason}"]


# -- Edge ----------------------------------------------------------------------------


def edge_findings(clues: _Clues, report: StatusReport, fe_root: str | None) -> list[Finding]:
    found: list[Finding] = []
    subject = clues.status.fqdn
    https_event = clues.latest("replica.https-unreachable")
    cert_event = clues.latest("replica.edge-cert-invalid")
    port = clues.port
    replica_state = clues.health.services.get("REPLICA") if clues.health else None

    evidence: list[Evidence] = []
    if https_event:
        evidence.append(event_evidence(https_event, f"{subject}: Https destination unavailable"))
    if port is not None:
        evidence.append(port_evidence(port, report))
    if replica_state is not None:
        assert clues.health is not None  # replica_state was read from it
        evidence.append(Evidence(text=f"REPLICA is {replica_state.value}", source=f"Get-Service on {subject}",
                                 at=clues.health.collected_at))

    if replica_state is not None and replica_state is not ServiceState.running:
        found.append(finding("replica.replica-stopped", Severity.error, subject,
                             f"REPLICA (Replica Replicator Agent) is {replica_state.value} on the Edge {subject}",
                             evidence, actions=[start_button(subject)]))
    elif port is not None and not port.connected and port.error == "ConnectionRefused":
        found.append(finding("replica.replica-stopped", Severity.error, subject,
                             f"Nothing listens on TCP 4443 on the Edge {subject}: REPLICA is most likely stopped",
                             evidence,
                             unchecked=[_unreachable_note(clues, "REPLICA state")] if replica_state is None else []))
    elif port is not None and not port.connected:
        found.append(finding("replica.https-unreachable", Severity.error, subject,
                             f"TCP 4443 from the FTA host to the Edge {subject} ({port.address}) fails: "
                             f"{_socket_error(port.error)}", evidence,
                             unchecked=[_unreachable_note(clues, "REPLICA state")] if replica_state is None else []))
    elif https_event:
        note = []
        if port is not None and port.connected:
            note = ["TCP 4443 connects now: the failure may be intermittent or already fixed"]
        found.append(finding("replica.https-unreachable", Severity.error, subject,
                             f"The File Transfer Agent cannot deliver to the Edge {subject} over HTTPS 4443",
                             evidence,
                             unchecked=note + ([] if port is not None else ["TCP 4443 test from the FTA host: not run"])
                             + ([_unreachable_note(clues, "REPLICA state")] if replica_state is None else [])))

    found += certificate_findings(clues, cert_event, fe_root)
    return found


def _socket_error(error: str | None) -> str:
    return {"TimedOut": "no answer within the timeout (dropped by a firewall, or not routed)",
            "ConnectionRefused": "connection refused",
            "HostNotFound": "the address does not resolve",
            "NetworkUnreachable": "no route to the network",
            "HostUnreachable": "no route to the host"}.get(error or "", error or "failed")


def port_evidence(port, report: StatusReport) -> Evidence:
    source = report.reachability.source if report.reachability else "the FTA host"
    at = report.reachability.collected_at if report.reachability else None
    if port.connected:
        text = f"TCP {port.port} to {port.address} connects ({port.elapsed_ms} ms)"
    else:
        text = f"TCP {port.port} to {port.address}: {port.error or 'failed'} after {port.elapsed_ms} ms"
    return Evidence(text=text, source=f"TCP connect from {source}", at=at)


def certificate_findings(clues: _Clues, cert_event: ReplicationEvent | None, fe_root: str | None) -> list[Finding]:
    subject = clues.status.fqdn
    cert = clues.health.certificate if clues.health else None
    evidence = []
    if cert_event:
        facts = classify(cert_event.id, cert_event.source, cert_event.message).certificate
        presented = f" (presented {facts.subject})" if facts and facts.subject else ""
        evidence.append(event_evidence(cert_event, f"unable to match host/cluster against certificate{presented}"))
    if cert is None:
        if not cert_event:
            return []
        unchecked = [_unreachable_note(clues, "the internal certificate")]
        facts = classify(cert_event.id, cert_event.source, cert_event.message).certificate
        names = {n.lower() for n in (facts.host, facts.cluster) if n} if facts else set()
        if facts and facts.subject_cn and names and facts.subject_cn.lower() not in names:
            return [finding("replica.edge-cert-name-mismatch", Severity.error, subject,
                            f"The Edge {subject} presents a certificate for {facts.subject_cn}, not for "
                            f"{' or '.join(sorted(names))}", evidence, unchecked=unchecked)]
        return [finding("replica.edge-cert-invalid", Severity.error, subject,
                        f"The Edge {subject} presented a certificate the File Transfer Agent rejects", evidence,
                        unchecked=unchecked + ["whether the key, names, root or expiry is the cause: see the checks"],
                        fix=[*KNOWLEDGE["replica.edge-cert-invalid"].checks,
                             *KNOWLEDGE["replica.edge-cert-invalid"].fix])]
    facts_text = (f"internal certificate {cert.subject} (SAN {', '.join(cert.dns_names) or 'none'}), issued by "
                  f"{cert.issuer}, root {cert.root}, expires {when(cert.not_after)}, "
                  f"private key {'present' if cert.has_private_key else 'MISSING'}")
    evidence.append(Evidence(text=facts_text, source=f"Get-CsCertificate -Type {cert.use} on {subject}",
                             at=clues.health.collected_at if clues.health else None))
    out = []
    names = {n.lower() for n in cert.dns_names} | {(cert.subject or "").split(",")[0].removeprefix("CN=").lower()}
    if not cert.has_private_key:
        out.append(finding("replica.edge-cert-no-private-key", Severity.error, subject,
                           f"The Edge {subject}'s internal certificate has no private key", evidence))
    if subject.lower() not in names and (clues.pool or "").lower() not in names:
        out.append(finding("replica.edge-cert-name-mismatch", Severity.error, subject,
                           f"The Edge {subject}'s internal certificate does not name it: {cert.subject}", evidence))
    root_note = [] if fe_root else ["the root CA was not compared: no Front End certificate was read in this check"]
    if fe_root and cert.root and cert.root != fe_root:
        out.append(finding("replica.edge-cert-other-root", Severity.error, subject,
                           f"The Edge {subject}'s internal certificate chains to {cert.root}, the Front Ends' to "
                           f"{fe_root}", evidence))
    if cert.not_after and cert.not_after < (clues.health.collected_at if clues.health else cert.not_after):
        out.append(finding("replica.edge-cert-expired", Severity.error, subject,
                           f"The Edge {subject}'s internal certificate expired on {when(cert.not_after)}", evidence))
    if not out and cert_event:
        looked = "key, names and expiry" + ("" if root_note else ", root")
        out.append(finding("replica.edge-cert-invalid", Severity.error, subject,
                           f"The Edge {subject} presented a certificate the File Transfer Agent rejects, though its "
                           f"{looked} look right", evidence,
                           unchecked=root_note + ["revocation and intermediate certificates: "
                                                  "check the chain in the snap-in"]))
    return out


# -- internal replicas ----------------------------------------------------------------


def internal_findings(clues: _Clues, report: StatusReport, not_member: list[str]) -> list[Finding] | None:
    found: list[Finding] = []
    subject = clues.status.fqdn
    denied = clues.latest("replica.share-access-denied")
    port = clues.port
    evidence: list[Evidence] = []
    if denied:
        paths = classify(denied.id, denied.source, denied.message).paths
        evidence.append(event_evidence(denied, f"Access denied ({', '.join(paths) or subject})"))
    if port is not None and port.share_writable is not None:
        ident = report.reachability.identity if report.reachability else "the bot's account"
        evidence.append(Evidence(
            text=f"write test to \\\\{subject}\\xds-replica\\from-master as {ident}: "
                 + ("allowed" if port.share_writable else f"denied ({port.share_error})"),
            source=f"reachability probe on {report.reachability.source if report.reachability else 'the FTA host'}",
            at=report.reachability.collected_at if report.reachability else None))

    replica_state = clues.health.services.get("REPLICA") if clues.health else None
    if replica_state is not None and replica_state is not ServiceState.running:
        assert clues.health is not None  # replica_state was read from it
        found.append(finding("replica.replica-stopped", Severity.error, subject,
                             f"REPLICA (Replica Replicator Agent) is {replica_state.value} on {subject}",
                             [Evidence(text=f"REPLICA is {replica_state.value}", source=f"Get-Service on {subject}",
                                       at=clues.health.collected_at)],
                             actions=[start_button(subject)]))
    if port is not None and not port.connected:
        found.append(finding("replica.smb-unreachable", Severity.error, subject,
                             f"TCP 445 from the FTA host to {subject} fails: {_socket_error(port.error)}",
                             [port_evidence(port, report)]))

    acl = clues.health.acl if clues.health else None
    missing = missing_aces(acl) if acl else None
    if missing:
        acl_evidence = Evidence(text="; ".join(missing), source=f"Get-SmbShareAccess / Get-Acl on {subject}",
                                at=clues.health.collected_at if clues.health else None)
        found.append(finding("replica.share-acl-missing", Severity.error, subject,
                             f"'RTC Local Config Replicator' lacks change rights on {subject}'s xds-replica",
                             evidence + [acl_evidence]))
        return found
    if denied and not_member:
        return None if not found else found  # the group finding names this replica
    if denied:
        unchecked = []
        if clues.health is None:
            unchecked.append(_unreachable_note(clues, "the xds-replica ACL"))
        else:
            unchecked += acl_unread(acl)
        if report.membership is None:
            unchecked.append("RTCUniversalConfigReplicator membership of the CMS Front Ends: not checked")
        summary = f"The File Transfer Agent is denied access to {subject}'s xds-replica share"
        fix = list(KNOWLEDGE["replica.share-access-denied"].fix)
        if not unchecked:
            summary += "; its ACL and the group membership look right, so stale cached credentials are likely"
            fix = ["On the replica and the FTA host, purge the computer's Kerberos tickets (klist -li 0x3e7 purge) "
                   "or restart them", *fix[-2:]]
        found.append(finding("replica.share-access-denied", Severity.error, subject, summary, evidence,
                             unchecked=unchecked, fix=fix))
    return found


def acl_unread(acl) -> list[str]:
    """What of the ACL could not be read, and why (empty: both were read)."""
    out = []
    if acl is None or acl.share is None:
        out.append(f"xds-replica share ACL: {(acl.share_error if acl else None) or 'not read'}")
    if acl is None or acl.folder is None:
        out.append(f"xds-replica folder ACL: {(acl.folder_error if acl else None) or 'not read'}")
    return out


def missing_aces(acl) -> list[str]:
    """What the xds-replica share/folder lacks for RTC Local Config Replicator (empty: nothing
    missing in what could be read; see acl_unread for what could not)."""
    problems = []
    if acl.share is not None:
        ok = any(a.allow and a.identity.lower().endswith(REPLICATOR_GROUP) and a.rights.lower() in CHANGE_SHARE_RIGHTS
                 for a in acl.share)
        if not ok:
            present = ", ".join(f"{a.identity} {a.rights}" for a in acl.share) or "none"
            problems.append(f"share xds-replica grants 'RTC Local Config Replicator' no Change right "
                            f"(entries: {present})")
    if acl.folder is not None:
        ok = any(a.allow and a.identity.lower().endswith(REPLICATOR_GROUP)
                 and any(r in a.rights.lower().replace(" ", "") for r in CHANGE_NTFS_RIGHTS) for a in acl.folder)
        if not ok:
            present = ", ".join(f"{a.identity} {a.rights}" for a in acl.folder) or "none"
            problems.append(f"folder {acl.path or 'xds-replica'} grants 'RTC Local Config Replicator' no Modify "
                            f"right (entries: {present})")
    return problems


def group_finding(report: StatusReport, computers: list[str], affected: list[ReplicaStatus]) -> Finding:
    group = report.membership.group if report.membership else "RTCUniversalConfigReplicator"
    fta = {f.split(".")[0].upper(): f for f in (report.cms.store.active_file_transfer_agents if report.cms else [])}
    active = [c for c in computers if c.upper() in fta]
    subject = fta[active[0].upper()] if active else cms_server_named(report, computers[0])
    evidence = [Evidence(text=f"{', '.join(computers)} not a member of {group}",
                         source=f"LDAP query on {report.cms_source or 'a CMS Front End'}")]
    if affected:
        evidence.append(Evidence(text="access denied on xds-replica of " + ", ".join(r.fqdn for r in affected),
                                 source="File Transfer Agent events (1034)"))
    if active:
        summary = (f"The File Transfer Agent's computer account ({active[0]}) is not in RTCUniversalConfigReplicator: "
                   f"{len(affected)} internal replica{'s' if len(affected) != 1 else ''} cannot receive configuration")
        severity = Severity.error
    else:
        summary = (f"CMS Front End computer account{'s' if len(computers) > 1 else ''} {', '.join(computers)} not in "
                   "RTCUniversalConfigReplicator: replication will fail if it becomes the File Transfer Agent")
        severity = Severity.warning
    accounts = ",".join(f"{c}$" for c in computers)
    return finding("cms.fta-not-in-group", severity, subject, summary, evidence,
                   fix=[step.replace("<NAME>$", accounts) for step in KNOWLEDGE["cms.fta-not-in-group"].fix])


def cms_server_named(report: StatusReport, computer: str) -> str:
    """The FQDN of the CMS pool (or its pair's) server whose computer account is `computer`,
    or `computer` itself when the topology has no such server."""
    cms_pools = {report.cms_pool, report.cms_backup_pool} - {None}
    return next((s for s in sorted(report.pools) if report.pools[s] in cms_pools
                 and s.split(".")[0].upper() == computer.upper()), computer)


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
    return finding("replica.pending", Severity.pending, status.fqdn,
                   f"{status.fqdn} is catching up with a change made at {when(status.last_update_creation)}; "
                   f"re-check after {recheck.strftime('%H:%M:%S UTC')}",
                   [Evidence(text=f"UpToDate False; last change {when(status.last_update_creation)}, last status "
                                  f"report {when(status.last_status_report)}", source=CMS_VIEW)])


def behind(clues: _Clues, report: StatusReport) -> Finding:
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
        unchecked.append(_unreachable_note(clues, "service state, ACL and certificate"))
    evidence = [Evidence(text=f"UpToDate False; last status report {when(s.last_status_report)}; last change "
                              f"{when(s.last_update_creation)}", source=f"{CMS_VIEW} on {report.cms_source}")]
    evidence += [Evidence(text=f"checked: {c}") for c in checked]
    return finding("replica.behind", Severity.error, s.fqdn,
                   f"{s.fqdn} is behind the Central Management Store and no known failure explains it", evidence,
                   unchecked=unchecked,
                   fix=[step.replace("<replica>", s.fqdn) for step in KNOWLEDGE["replica.behind"].fix],
                   actions=[force_button(s.fqdn)] + ([reseed_button(s.fqdn)] if clues.health else []))


def stopped_service_warnings(clues: _Clues) -> list[Finding]:
    """An up-to-date replica whose REPLICA is stopped will miss the next change."""
    state = clues.health.services.get("REPLICA") if clues.health else None
    if state is None or state in (ServiceState.running, ServiceState.missing):
        return []
    assert clues.health is not None  # state was read from it
    return [finding("replica.replica-stopped", Severity.warning, clues.status.fqdn,
                    f"REPLICA is {state.value} on {clues.status.fqdn}: "
                    "it is up to date now but will miss the next change",
                    [Evidence(text=f"REPLICA is {state.value}", source=f"Get-Service on {clues.status.fqdn}",
                              at=clues.health.collected_at)],
                    actions=[start_button(clues.status.fqdn)])]


# -- CMS level ----------------------------------------------------------------------------


def cms_findings(report: StatusReport) -> list[Finding]:
    cms = report.cms
    if cms is None:
        return []
    out = []
    source = f"{CMS_VIEW} -CentralManagementStoreStatus on {report.cms_source}"
    if not cms.store.available:
        missing = [n for n, v in (("ActiveMasterFqdn", cms.store.active_master_fqdn),
                                  ("ActiveFileTransferAgents", cms.store.active_file_transfer_agents)) if not v]
        out.append(finding("cms.unavailable", Severity.critical, report.cms_pool or report.cms_source or "CMS",
                           "The Central Management Store has no active master: "
                           "no server receives configuration changes",
                           [Evidence(text=f"{' and '.join(missing)} empty", source=source, at=cms.collected_at)]))
    active = [s.pool_fqdn for s in cms.services if s.active]
    if len(active) > 1:
        out.append(finding("cms.both-active", Severity.critical, " and ".join(active),
                           f"{len(active)} pools are Active for the Central Management Store at once: "
                           + ", ".join(active),
                           [Evidence(text=f"Active True for {', '.join(active)}",
                                     source=f"Get-CsService -CentralManagement on {report.cms_source}",
                                     at=cms.collected_at)]))
    for pool in report.backup:
        if pool.error:
            out.append(finding("backup.error", Severity.warning, pool.pool,
                               f"The Backup Service state of {pool.pool} could not be read",
                               [Evidence(text=pool.error, source=f"Get-CsBackupServiceStatus -PoolFqdn {pool.pool}")],
                               fix=["Run Get-CsBackupServiceStatus -PoolFqdn " + pool.pool
                                    + " -Category CMS on a Front End and check that LYNCBACKUP runs in both pools"]))
        for m in pool.modules:
            bad = [f"export {m.export_status}" for _ in [0] if (m.export_status or "").lower() == "errorstate"]
            bad += [f"import {m.import_status}" for _ in [0] if (m.import_status or "").lower() == "errorstate"]
            if bad:
                out.append(finding("backup.error", Severity.error, pool.pool,
                                   f"Backup Service {m.identity} {' and '.join(bad)} on {pool.pool}"
                                   + (f" (paired with {pool.backup_pool})" if pool.backup_pool else ""),
                                   [Evidence(text=f"{m.identity}: ExportStatus {m.export_status}, ImportStatus "
                                                  f"{m.import_status}",
                                             source=f"Get-CsBackupServiceStatus -PoolFqdn {pool.pool} -Category CMS")],
                                   fix=[s.replace("<pool>", pool.pool) for s in KNOWLEDGE["backup.error"].fix]))
    return out


def cms_service_findings(report: StatusReport) -> list[Finding]:
    out = []
    cms_pools = {report.cms_pool, report.cms_backup_pool} - {None}
    for h in report.health:
        if report.pools.get(h.fqdn) not in cms_pools:
            continue
        for name in CMS_SERVICES:
            state = h.services.get(name)
            if state in (ServiceState.stopped, ServiceState.paused, ServiceState.stopping):
                out.append(finding("cms.service-stopped", Severity.error, h.fqdn,
                                   f"{name} is {state.value} on {h.fqdn}",
                                   [Evidence(text=f"{name} is {state.value}", source=f"Get-Service on {h.fqdn}",
                                             at=h.collected_at)],
                                   fix=[s.replace("<service>", name) for s in KNOWLEDGE["cms.service-stopped"].fix]))
    return out
