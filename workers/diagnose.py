"""Diagnosis: pure functions from what the probes saw to Findings."""

from __future__ import annotations

from datetime import datetime

from workers.models import Evidence, Finding, ReplicaStatus, Severity, StatusReport

CMS_SOURCE = "Get-CsManagementStoreReplicationStatus"


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


def diagnose(report: StatusReport) -> list[Finding]:
    findings: list[Finding] = []
    cms = report.cms
    if cms is None:
        return findings
    if not cms.store.available:
        missing = [n for n, v in (("ActiveMasterFqdn", cms.store.active_master_fqdn),
                                  ("ActiveFileTransferAgents", cms.store.active_file_transfer_agents)) if not v]
        findings.append(Finding(
            code="cms.unavailable", severity=Severity.critical, subject=report.cms_source or "CMS",
            summary="The Central Management Store has no active master: no server receives configuration changes",
            evidence=[Evidence(text=f"{' and '.join(missing)} empty in -CentralManagementStoreStatus",
                               source=f"{CMS_SOURCE} -CentralManagementStoreStatus on {report.cms_source}",
                               at=cms.collected_at)],
            fix=["Check that MASTER, FTA, REPLICA and LYNCBACKUP run in both pools of the CMS pair",
                 "Run Get-CsManagementConnection to find the pool that owns the CMS SQL store",
                 "Follow the CMS recovery runbook (/cms-recover) for that pool"],
        ))
    in_scope = set(report.servers)
    for replica in cms.replicas:
        if replica.fqdn in in_scope and not replica.up_to_date:
            findings.append(_behind(replica, report))
    return findings


def _behind(replica: ReplicaStatus, report: StatusReport) -> Finding:
    evidence = [Evidence(
        text=f"UpToDate False; last status report {_when(replica.last_status_report)}",
        source=f"{CMS_SOURCE} on {report.cms_source}", at=report.cms.collected_at if report.cms else None,
    )]
    return Finding(
        code="replica.behind", severity=Severity.error, subject=replica.fqdn,
        summary=f"{replica.fqdn} is not up to date with the Central Management Store",
        evidence=evidence,
        fix=["Run Invoke-CsManagementStoreReplication -ReplicaFqdn " + replica.fqdn,
             "Wait 2-3 minutes, then run /cms-status again"],
    )
