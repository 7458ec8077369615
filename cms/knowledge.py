"""What each finding code means, how to confirm it, and how to fix it.

Restated from the seed articles and domain notes; one entry per code, used by
the diagnosis (fix steps) and by `explain` (meaning and checks). Wording is for
the admin reading it at three in the morning: imperative, in order, exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class FindingCode(str, Enum):
    """Every finding's stable code, as Findings, events and the README's table carry it. A member
    equals its string and serialises as it; in text write `code.value` (str() and format() of a
    (str, Enum) member give "FindingCode.<name>")."""

    replica_https_unreachable = "replica.https-unreachable"
    replica_replica_stopped = "replica.replica-stopped"
    replica_edge_cert_invalid = "replica.edge-cert-invalid"
    replica_edge_cert_no_private_key = "replica.edge-cert-no-private-key"
    replica_edge_cert_name_mismatch = "replica.edge-cert-name-mismatch"
    replica_edge_cert_other_root = "replica.edge-cert-other-root"
    replica_edge_cert_expired = "replica.edge-cert-expired"
    replica_share_access_denied = "replica.share-access-denied"
    replica_share_acl_missing = "replica.share-acl-missing"
    cms_fta_not_in_group = "cms.fta-not-in-group"
    replica_smb_unreachable = "replica.smb-unreachable"
    replica_behind = "replica.behind"
    replica_pending = "replica.pending"
    cms_master_replicator_watch_failed = "cms.master-replicator-watch-failed"
    cms_unavailable = "cms.unavailable"
    cms_both_active = "cms.both-active"
    cms_service_stopped = "cms.service-stopped"
    backup_error = "backup.error"
    # what recognise() names in the failover cmdlet's output (cms.preflight.SIGNATURES)
    failover_being_moved = "failover.being-moved"
    failover_not_backup_mode = "failover.not-backup-mode"
    failover_in_progress = "failover.in-progress"


FORCE_AND_RECHECK = [
    "Run Invoke-CsManagementStoreReplication (or /cms-replicate) to force replication",
    "Wait 2-3 minutes, then run /cms-status again: UpToDate must turn True",
]


@dataclass(frozen=True)
class Knowledge:
    title: str
    meaning: str
    checks: list[str] = field(default_factory=list)
    fix: list[str] = field(default_factory=list)


KNOWLEDGE: dict[FindingCode, Knowledge] = {
    FindingCode.replica_https_unreachable: Knowledge(
        title="Edge replica unreachable over HTTPS 4443",
        meaning="The File Transfer Agent on the CMS Front End cannot deliver configuration to the Edge's internal "
                "interface on TCP 4443 (firewall, routing or load balancer), or the Replica Replicator Agent "
                "(REPLICA) is stopped on the Edge. Until it is fixed the Edge runs on old configuration.",
        checks=["REPLICA (Replica Replicator Agent) is running on the Edge (services.msc or Get-Service REPLICA)",
                "From the FTA host: Test-NetConnection <Edge internal IP> -Port 4443 (or telnet <IP> 4443)",
                "Static routes on the Edge's internal NIC, the perimeter internal firewall, the HLB's 4443 rule"],
        fix=["Start REPLICA on the Edge if it is stopped",
             "Allow TCP 4443 from every Front End of the CMS pool to each Edge internal interface",
             "Fix routing to the Edge internal network (static routes on the internal NIC; HLB configuration)",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_replica_stopped: Knowledge(
        title="Replica Replicator Agent stopped",
        meaning="REPLICA applies configuration snapshots to the server's local store. While it is stopped the "
                "server keeps running on old configuration (on an Edge, TCP 4443 refuses connections).",
        checks=["Get-CsWindowsService -Name REPLICA on the server (or services.msc on an Edge)"],
        fix=["Start it: Start-CsWindowsService -Name REPLICA (on an Edge: services.msc, start "
             "'Replica Replicator Agent')", "If it stops again, read the 'Lync Server' event log on that server",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_edge_cert_invalid: Knowledge(
        title="Edge presented an invalid certificate",
        meaning="The Edge's Replica Replicator Agent presented a certificate the File Transfer Agent rejects: "
                "no private key, a subject/SAN that does not match the Edge, a chain to another root CA than the "
                "Front End pool's, or an expired certificate.",
        checks=["On the Edge, certificate snap-in (computer account): the internal certificate says "
                "'You have a private key that corresponds to this certificate'",
                "Its subject or SAN contains the Edge pool's internal FQDN and the Edge's FQDN",
                "It chains to the same root CA as the Front End pool's certificate",
                "It has not expired"],
        fix=["Request or export the internal certificate from the same PKI as the Front End pool, "
             "with its private key (for an Edge pool: export with the key, import on every Edge)",
             "Assign it: Set-CsCertificate -Type Internal -Thumbprint <thumbprint> (or the Deployment Wizard)",
             "Restart REPLICA on the Edge", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_edge_cert_no_private_key: Knowledge(
        title="Edge internal certificate has no private key",
        meaning="The certificate assigned to the Edge internal interface was imported without its private key, "
                "so the Edge cannot prove it owns it.",
        fix=["Export the internal certificate WITH its private key (.pfx) from the server it was requested on",
             "Import the .pfx into the Edge's Local Computer\\Personal store",
             "Assign it: Set-CsCertificate -Type Internal -Thumbprint <thumbprint>",
             "Restart REPLICA on the Edge", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_edge_cert_name_mismatch: Knowledge(
        title="Edge internal certificate names another host",
        meaning="Neither the subject nor the SAN of the Edge's internal certificate contains the Edge's FQDN or "
                "its pool's internal FQDN, so the File Transfer Agent cannot match host/cluster against it.",
        fix=["Request a certificate whose subject is the Edge pool's internal FQDN and whose SAN includes it "
             "(the Deployment Wizard's certificate request does this)",
             "Assign it: Set-CsCertificate -Type Internal -Thumbprint <thumbprint>",
             "Restart REPLICA on the Edge", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_edge_cert_other_root: Knowledge(
        title="Edge internal certificate comes from another PKI",
        meaning="The Front End pool and the Edge internal interfaces must share one PKI. The Edge's internal "
                "certificate chains to a different root CA than the Front End's, so no trust is established.",
        fix=["Request the Edge internal certificate from the CA that issued the Front End pool's certificate",
             "Make sure that CA's root and intermediate certificates are in the Edge's computer stores",
             "Assign it: Set-CsCertificate -Type Internal -Thumbprint <thumbprint>",
             "Restart REPLICA on the Edge", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_edge_cert_expired: Knowledge(
        title="Edge internal certificate expired",
        meaning="The certificate assigned to the Edge internal interface is past its NotAfter date.",
        fix=["Renew the internal certificate from the same PKI as the Front End pool (with its private key)",
             "Assign it: Set-CsCertificate -Type Internal -Thumbprint <thumbprint>",
             "Restart REPLICA on the Edge", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_share_access_denied: Knowledge(
        title="Access denied on the replica's xds-replica share",
        meaning="The File Transfer Agent cannot write to \\\\<replica>\\xds-replica\\from-master: the share or "
                "folder lost its default ACEs, the CMS Front End's computer account is not in "
                "RTCUniversalConfigReplicator, or the replica holds stale cached credentials for it.",
        checks=["On the replica: the xds-replica share and folder grant 'RTC Local Config Replicator' Change "
                "(share) and Modify (NTFS); owner is the local Administrators group",
                "In AD: the CMS Front End's computer account is a member of RTCUniversalConfigReplicator"],
        fix=["On the replica: take ownership of <drive>:\\RtcReplicaRoot\\xds-replica for the local "
             "Administrators group, replacing the owner on sub-containers and objects",
             "Share permissions: grant 'RTC Local Config Replicator' Change (co-owner / read-write)",
             "NTFS permissions: grant 'RTC Local Config Replicator' Modify",
             "In AD: add the CMS Front End's computer account to RTCUniversalConfigReplicator",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_share_acl_missing: Knowledge(
        title="xds-replica share or folder lost its replication ACEs",
        meaning="'RTC Local Config Replicator' no longer holds change rights on the replica's xds-replica share "
                "or folder, so the File Transfer Agent is denied when it copies the snapshot.",
        fix=["On the replica: take ownership of <drive>:\\RtcReplicaRoot\\xds-replica for the local "
             "Administrators group, replacing the owner on sub-containers and objects",
             "Share permissions (Share > Change sharing permissions): add 'RTC Local Config Replicator' with "
             "Change (co-owner / read-write)",
             "Security tab: grant 'RTC Local Config Replicator' Modify on the folder and its children",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.cms_fta_not_in_group: Knowledge(
        title="CMS Front End computer account not in RTCUniversalConfigReplicator",
        meaning="The File Transfer Agent runs as the CMS Front End's computer account, which must be a member of "
                "RTCUniversalConfigReplicator to write to the replicas' shares. Without it every internal replica "
                "is denied.",
        fix=["In Active Directory Users and Computers, open RTCUniversalConfigReplicator > Members and add the "
             "Front End's computer account (or: Add-ADGroupMember RTCUniversalConfigReplicator -Members <NAME>$)",
             "Wait for AD replication, then refresh the computer's group membership: restart the Front End, or "
             "purge its tickets (klist -li 0x3e7 purge) and restart the FTA service",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_smb_unreachable: Knowledge(
        title="Replica unreachable over SMB (TCP 445)",
        meaning="Internal replicas receive configuration over SMB on TCP 445. The File Transfer Agent's host "
                "cannot open TCP 445 to this replica.",
        fix=["Check that the server is up and that TCP 445 is allowed from the CMS pool (Windows Firewall "
             "'File and Printer Sharing', network firewalls)", *FORCE_AND_RECHECK],
    ),
    FindingCode.replica_behind: Knowledge(
        title="Replica behind, cause not identified",
        meaning="The replica has not applied the latest configuration and no known failure signature explains it.",
        fix=["Run Invoke-CsManagementStoreReplication -ReplicaFqdn <replica>",
             "Wait 2-3 minutes and run /cms-status again",
             "If it stays False: read the 'Lync Server' event log on the replica and on the FTA host, and check "
             "REPLICA on the replica"],
    ),
    FindingCode.replica_pending: Knowledge(
        title="Replica catching up",
        meaning="A configuration change or a forced replication happened minutes ago. UpToDate is legitimately "
                "False for 2-3 minutes afterwards; this is not a failure yet.",
        fix=["Run /cms-status again at the re-check time; only a False that persists is a fault"],
    ),
    # Event 2020, source LS Master Replicator Agent Service: the Master Replicator on the active CMS Front End
    # "Can't watch \\<file store>\<share>\1-CentralMgmt-1\CMSFileStore\xds-master\replicas\<replica>\
    # from-replica". Text and cause: Microsoft's "Issues when the Lync Server File Store share is in an
    # unsupported configuration" (SupportArticles-docs, issue-file-store-share-unsupported.md); the xds-master
    # permissions: "More Information" of the CMS replication failures article (the seed).
    FindingCode.cms_master_replicator_watch_failed: Knowledge(
        title="Master Replicator cannot watch the CMS file store's replica folders",
        meaning="The Master Replicator Agent (MASTER) on the active CMS Front End watches each replica's folder "
                "under the pool's File Store share (<share>\\1-CentralMgmt-1\\CMSFileStore\\xds-master\\replicas\\"
                "<replica>\\from-replica) for the replica's status reports. It cannot open that folder: the file "
                "store is unreachable or hosted in an unsupported configuration (Microsoft names NAS devices), or the "
                "CMSFileStore / xds-master folders lost the RTCUniversalConfigReplicator rights. Until it is fixed, "
                "configuration changes are not delivered to the replicas it names. This is the master's side, not the "
                "File Transfer Agent's xds-replica share on a replica.",
        checks=["/cms-status: ActiveMasterFqdn names the server that logged the event (the active master)",
                "From that server: Test-Path on the UNC path in the event, and Get-CsService -FileStore (the "
                "UncPath the pool uses)",
                "The file store is a Windows file server or DFS share, not a NAS device",
                "CMSFileStore share ACL: RTCUniversalConfigReplicator with Change (contributor); NTFS: Modify "
                "(Standard Edition: also 'RTC Local Config Replicator')",
                "In AD: the CMS Front End's computer account is a member of RTCUniversalConfigReplicator"],
        fix=["Bring the file store share back (file server, DFS, network path from the CMS pool)",
             "If it is on an unsupported device, move the pool's file store to a supported Windows file server "
             "(Topology Builder, publish) and reassign the pool to it",
             "Restore RTCUniversalConfigReplicator's share (Change) and NTFS (Modify) rights on CMSFileStore so "
             "xds-master and its subfolders inherit them; add the CMS Front End's computer account to the group",
             "Restart MASTER on the active CMS Front End: Start-CsWindowsService -Name MASTER (after "
             "Stop-CsWindowsService -Name MASTER)",
             *FORCE_AND_RECHECK],
    ),
    FindingCode.cms_unavailable: Knowledge(
        title="Central Management Store unavailable",
        meaning="ActiveMasterFqdn or ActiveFileTransferAgents is empty: no Master Replicator is active, so no "
                "server receives configuration changes. Typical after a failed or interrupted CMS failover.",
        fix=["Check that LYNCBACKUP, MASTER, REPLICA and FTA run in both pools of the CMS pair",
             "Run Get-CsManagementConnection to find the pool that owns the CMS SQL store",
             "Run the recovery runbook for that pool: /cms-recover (needs an approver)"],
    ),
    FindingCode.cms_both_active: Knowledge(
        title="Two pools both claim the CMS",
        meaning="Get-CsService -CentralManagement shows both pools of the pair as Active, a known broken state "
                "after a bad failover. Do not start another failover.",
        fix=["Do not run Invoke-CsManagementServerFailover now",
             "Run Get-CsManagementConnection to find the pool that owns the CMS SQL store",
             "Run the recovery runbook for that pool: /cms-recover (needs an approver)"],
    ),
    FindingCode.cms_service_stopped: Knowledge(
        title="CMS replication service stopped on a CMS pool server",
        meaning="The Master Replicator (MASTER), File Transfer Agent (FTA) or Backup Service (LYNCBACKUP) is "
                "stopped on a server of the CMS pool or its backup pool.",
        fix=["Start it: Start-CsWindowsService -Name <service> on that server",
             "If it stops again, read the 'Lync Server' event log on that server"],
    ),
    FindingCode.backup_error: Knowledge(
        title="Backup Service CMS replication in error",
        meaning="The Backup Service copies the CMS from the active pool to its paired pool. Its CMS export or "
                "import is in ErrorState, so the standby does not have current data and a failover would lose "
                "changes.",
        fix=["Check that LYNCBACKUP runs in both pools of the pair",
             "Read the 'Lync Server' event log (source LS Backup Service) on the pool's Front Ends",
             "Run Invoke-CsBackupServiceSync -PoolFqdn <pool>, then Get-CsBackupServiceStatus -PoolFqdn <pool> "
             "-Category CMS until export and import are Steady/Final and Normal"],
    ),
}
