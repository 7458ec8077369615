"""The CMS itself: its master and File Transfer Agent, the store's availability and location, the
services of the CMS pools, the FTA's group membership and the Backup Service."""

from __future__ import annotations

from cms.diagnose.common import CMS_VIEW, event_evidence, finding
from cms.eventlog import MASTER_WATCH_FAILED, classify
from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Evidence, Finding, ReplicaStatus, ReplicationEvent, ServiceState, Severity, StatusReport

CMS_SERVICES = ("MASTER", "FTA", "LYNCBACKUP")


def cms_findings(report: StatusReport) -> list[Finding]:
    cms = report.cms
    if cms is None:
        return []
    out = []
    source = f"{CMS_VIEW} -CentralManagementStoreStatus on {report.cms_source}"
    if not cms.store.available:
        missing = [n for n, v in (("ActiveMasterFqdn", cms.store.active_master_fqdn),
                                  ("ActiveFileTransferAgents", cms.store.active_file_transfer_agents)) if not v]
        out.append(finding(FindingCode.cms_unavailable, Severity.critical,
                           report.cms_pool or report.cms_source or "CMS",
                           "The Central Management Store has no active master: "
                           "no server receives configuration changes",
                           [Evidence(text=f"{' and '.join(missing)} empty", source=source, at=cms.collected_at)]))
    active = [s.pool_fqdn for s in cms.services if s.active]
    if len(active) > 1:
        out.append(finding(FindingCode.cms_both_active, Severity.critical, " and ".join(active),
                           f"{len(active)} pools are Active for the Central Management Store at once: "
                           + ", ".join(active),
                           [Evidence(text=f"Active True for {', '.join(active)}",
                                     source=f"Get-CsService -CentralManagement on {report.cms_source}",
                                     at=cms.collected_at)]))
    for pool in report.backup:
        if pool.error:
            out.append(finding(FindingCode.backup_error, Severity.warning, pool.pool,
                               f"The Backup Service state of {pool.pool} could not be read",
                               [Evidence(text=pool.error, source=f"Get-CsBackupServiceStatus -PoolFqdn {pool.pool}")],
                               fix=["Run Get-CsBackupServiceStatus -PoolFqdn " + pool.pool
                                    + " -Category CMS on a Front End and check that LYNCBACKUP runs in both pools"]))
        for m in pool.modules:
            bad = [f"export {m.export_status}" for _ in [0] if (m.export_status or "").lower() == "errorstate"]
            bad += [f"import {m.import_status}" for _ in [0] if (m.import_status or "").lower() == "errorstate"]
            if bad:
                out.append(finding(FindingCode.backup_error, Severity.error, pool.pool,
                                   f"Backup Service {m.identity} {' and '.join(bad)} on {pool.pool}"
                                   + (f" (paired with {pool.backup_pool})" if pool.backup_pool else ""),
                                   [Evidence(text=f"{m.identity}: ExportStatus {m.export_status}, ImportStatus "
                                                  f"{m.import_status}",
                                             source=f"Get-CsBackupServiceStatus -PoolFqdn {pool.pool} -Category CMS")],
                                   fix=[s.replace("<pool>", pool.pool)
                                        for s in KNOWLEDGE[FindingCode.backup_error].fix]))
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
                out.append(finding(FindingCode.cms_service_stopped, Severity.error, h.fqdn,
                                   f"{name} is {state.value} on {h.fqdn}",
                                   [Evidence(text=f"{name} is {state.value}", source=f"Get-Service on {h.fqdn}",
                                             at=h.collected_at)],
                                   fix=[s.replace("<service>", name)
                                        for s in KNOWLEDGE[FindingCode.cms_service_stopped].fix]))
    return out


def master_watch_finding(e: ReplicationEvent, replica: str) -> Finding:
    """The master's side of replication: MASTER cannot watch this replica's folder on the File Store."""
    paths = classify(e.id, e.source, e.message).paths
    return finding(MASTER_WATCH_FAILED, Severity.error, replica,
                   f"the Master Replicator Agent cannot watch {replica}'s folder on the CMS File Store",
                   [event_evidence(e, f"Access failed (Can't watch {', '.join(paths) or replica})")])


def fta_not_in_group(report: StatusReport) -> list[str]:
    """CMS Front End computer accounts missing from RTCUniversalConfigReplicator."""
    if report.membership is None or report.membership.group is None:
        return []
    return [m.computer for m in report.membership.computers if m.found and not m.member]


def active_fta_not_member(report: StatusReport, not_member: list[str]) -> bool:
    """Only the active File Transfer Agent's account explains other replicas' access denied."""
    ftas = {f.split(".")[0].upper() for f in report.fta_hosts}
    return any(c.upper() in ftas for c in not_member)


def group_finding(report: StatusReport, computers: list[str], affected: list[ReplicaStatus]) -> Finding:
    group = report.membership.group if report.membership else "RTCUniversalConfigReplicator"
    fta = {f.split(".")[0].upper(): f for f in report.fta_hosts}
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
    return finding(FindingCode.cms_fta_not_in_group, severity, subject, summary, evidence,
                   fix=[step.replace("<NAME>$", accounts) for step in KNOWLEDGE[FindingCode.cms_fta_not_in_group].fix])


def cms_server_named(report: StatusReport, computer: str) -> str:
    """The FQDN of the CMS pool (or its pair's) server whose computer account is `computer`,
    or `computer` itself when the topology has no such server."""
    cms_pools = {report.cms_pool, report.cms_backup_pool} - {None}
    return next((s for s in sorted(report.pools) if report.pools[s] in cms_pools
                 and s.split(".")[0].upper() == computer.upper()), computer)
