"""Internal replicas (Front Ends, Directors, Mediation, ...): the File Transfer Agent copies to
their xds-replica share over SMB, as a member of RTCUniversalConfigReplicator."""

from __future__ import annotations

from cms.diagnose.common import (
    Clues,
    event_evidence,
    finding,
    port_evidence,
    socket_error,
    start_button,
    unreachable_note,
)
from cms.eventlog import classify
from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Evidence, Finding, ServiceState, Severity, StatusReport

REPLICATOR_GROUP = "rtc local config replicator"
CHANGE_SHARE_RIGHTS = {"full", "change"}
CHANGE_NTFS_RIGHTS = ("fullcontrol", "modify")


def internal_findings(clues: Clues, report: StatusReport, not_member: list[str]) -> list[Finding] | None:
    found: list[Finding] = []
    subject = clues.status.fqdn
    denied = clues.latest(FindingCode.replica_share_access_denied)
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
        found.append(finding(FindingCode.replica_replica_stopped, Severity.error, subject,
                             f"REPLICA (Replica Replicator Agent) is {replica_state.value} on {subject}",
                             [Evidence(text=f"REPLICA is {replica_state.value}", source=f"Get-Service on {subject}",
                                       at=clues.health.collected_at)],
                             actions=[start_button(subject)]))
    if port is not None and not port.connected:
        found.append(finding(FindingCode.replica_smb_unreachable, Severity.error, subject,
                             f"TCP 445 from the FTA host to {subject} fails: {socket_error(port.error)}",
                             [port_evidence(port, report)]))

    acl = clues.health.acl if clues.health else None
    missing = missing_aces(acl) if acl else None
    if missing:
        acl_evidence = Evidence(text="; ".join(missing),
                                source=f"share ACL (Get-SmbShareAccess or WMI) and folder ACL on {subject}",
                                at=clues.health.collected_at if clues.health else None)
        found.append(finding(FindingCode.replica_share_acl_missing, Severity.error, subject,
                             f"'RTC Local Config Replicator' lacks change rights on {subject}'s xds-replica",
                             evidence + [acl_evidence]))
        return found
    if denied and not_member:
        return None if not found else found  # the group finding names this replica
    if denied:
        unchecked = []
        if clues.health is None:
            unchecked.append(unreachable_note(clues, "the xds-replica ACL"))
        else:
            unchecked += acl_unread(acl)
        if report.membership is None:
            unchecked.append("RTCUniversalConfigReplicator membership of the CMS Front Ends: not checked")
        summary = f"The File Transfer Agent is denied access to {subject}'s xds-replica share"
        fix = list(KNOWLEDGE[FindingCode.replica_share_access_denied].fix)
        if not unchecked:
            summary += "; its ACL and the group membership look right, so stale cached credentials are likely"
            fix = ["On the replica and the FTA host, purge the computer's Kerberos tickets (klist -li 0x3e7 purge) "
                   "or restart them", *fix[-2:]]
        found.append(finding(FindingCode.replica_share_access_denied, Severity.error, subject, summary, evidence,
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
