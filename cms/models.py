"""Typed models shared by probes' parsers, diagnosis, rendering and the lab.

Every model is plain data: pydantic validates it at the edges (probe JSON in,
event JSON out) and the pure functions in between never see a dict.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field

from cms.knowledge import FindingCode


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ReplicaStatus(Model):
    """One row of Get-CsManagementStoreReplicationStatus."""

    fqdn: str
    up_to_date: bool
    last_status_report: datetime | None = None
    last_update_creation: datetime | None = None
    product_version: str | None = None


class StoreStatus(Model):
    """Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus."""

    active_master_fqdn: str | None = None
    active_file_transfer_agents: list[str] = Field(default_factory=list)
    active_replicas: list[str] = Field(default_factory=list)
    # None: not reported by this product version (no documentation names the property)
    deleted_replicas: list[str] | None = Field(default_factory=list)

    @property
    def available(self) -> bool:
        return bool(self.active_master_fqdn) and bool(self.active_file_transfer_agents)


class CmsService(Model):
    """One object of Get-CsService -CentralManagement."""

    pool_fqdn: str
    site_id: str | None = None
    version: str | None = None
    active: bool | None  # None: not reported by this product version (Lync Server 2010 has no Active)


class CmsStatus(Model):
    """What the cms-status probe reports from a CMS pool server."""

    collected_at: datetime
    product_version: str | None = None
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    store: StoreStatus
    services: list[CmsService] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what the parser left out (an invalid name), and why


class Location(Model):
    """Where the CMS lives, by its own account (cms-location)."""

    store_sql: str | None = None
    store_text: str | None = None
    services: list[CmsService] = []
    pairs: dict[str, str | None] = {}
    backend_sql: dict[str, str | None] = {}
    notes: list[str] = []  # what the parser left out (an invalid name), and why


class ServiceState(str, Enum):
    running = "running"
    stopped = "stopped"
    starting = "starting"
    stopping = "stopping"
    paused = "paused"
    missing = "missing"
    unknown = "unknown"


class Ace(Model):
    """One access rule of a share or folder ACL."""

    identity: str
    rights: str
    allow: bool = True
    inherited: bool = False


class ShareAcl(Model):
    """The xds-replica share and its folder, as one server sees them."""

    path: str | None = None
    share: list[Ace] | None = None  # None: could not be read
    folder: list[Ace] | None = None
    owner: str | None = None
    share_error: str | None = None
    folder_error: str | None = None


class CertificateInfo(Model):
    use: str  # Internal (Edge) or Default
    thumbprint: str | None = None
    subject: str | None = None
    dns_names: list[str] = Field(default_factory=list)
    has_private_key: bool = False
    not_after: datetime | None = None
    issuer: str | None = None
    root: str | None = None
    chain_status: list[str] = Field(default_factory=list)


class ReplicaHealth(Model):
    """What the replica-health probe reports from one server."""

    fqdn: str
    collected_at: datetime
    product_version: str | None = None
    services: dict[str, ServiceState] = Field(default_factory=dict)
    acl: ShareAcl | None = None
    certificate: CertificateInfo | None = None
    certificate_error: str | None = None


class ReplicationEvent(Model):
    """One entry of the `Lync Server` event log on the File Transfer Agent host."""

    id: int
    source: str
    time: datetime
    level: str | None = None
    message: str = ""
    computer: str | None = None


class PortTest(Model):
    """TCP connect (and share write) test from the FTA host to one replica."""

    fqdn: str
    address: str
    port: int
    connected: bool
    error: str | None = None
    elapsed_ms: int | None = None
    share_writable: bool | None = None
    share_error: str | None = None


class Reachability(Model):
    source: str
    identity: str | None = None
    collected_at: datetime
    results: list[PortTest] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what the parser left out (an invalid name), and why


class Membership(Model):
    computer: str
    found: bool
    member: bool
    distinguished_name: str | None = None


class GroupMembership(Model):
    group: str | None  # distinguished name; None: the group was not found
    computers: list[Membership] = Field(default_factory=list)


class BackupModule(Model):
    identity: str
    export_status: str | None = None
    import_status: str | None = None


class PoolBackup(Model):
    pool: str
    backup_pool: str | None = None
    modules: list[BackupModule] = Field(default_factory=list)
    error: str | None = None


class BackupStatus(Model):
    """Get-CsBackupServiceStatus for each pool of the CMS pair (backup-status)."""

    pools: list[PoolBackup] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # what the parser left out (an invalid name), and why


class EventLog(Model):
    """The replication entries of the `Lync Server` log on one host (replication-events)."""

    computer: str | None = None
    events: list[ReplicationEvent] = Field(default_factory=list)


class ServiceStart(Model):
    """Start-CsWindowsService on one service (start-service)."""

    name: str | None = None
    before: str | None = None
    after: str | None = None

    @property
    def running(self) -> bool:
        return (self.after or "").lower() == "running"


class ConfigurationFile(Model):
    """A CMS configuration zip on a server: exported (with its content), imported or re-seeded."""

    path: str | None = None
    bytes: int | None = None
    sha256: str = ""
    content: str = ""  # base64 of the zip, for an export that travels to another server


class ReplicationFailure(Model):
    replica: str
    message: str


class ReplicationRequest(Model):
    """Invoke-CsManagementStoreReplication, per replica (force-replication)."""

    replicas: list[str] = Field(default_factory=list)
    errors: list[ReplicationFailure] = Field(default_factory=list)


class CmdletRun(Model):
    """A CMS failover or restore: what the cmdlet said (its refusal is data, not a probe error)."""

    command: str | None = None
    succeeded: bool = False
    errors: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class HostErrorKind(str, Enum):
    unreachable = "unreachable"
    auth_failed = "auth_failed"
    timed_out = "timed_out"
    probe_failed = "probe_failed"


class HostError(Model):
    server: str
    kind: HostErrorKind
    reason: str
    probe: str | None = None


class Severity(str, Enum):
    critical = "critical"
    error = "error"
    warning = "warning"
    pending = "pending"
    info = "info"


SEVERITY_ORDER = [Severity.critical, Severity.error, Severity.warning, Severity.pending, Severity.info]


class Evidence(Model):
    """One observation behind a finding: what, where it was seen, when."""

    text: str
    source: str | None = None
    at: datetime | None = None


class Action(Model):
    """A remediation the bot may offer as a button."""

    kind: str  # start-replica | force-replication | reseed
    target: str
    label: str


class Finding(Model):
    code: FindingCode
    severity: Severity
    subject: str
    summary: str
    evidence: list[Evidence] = Field(default_factory=list)
    fix: list[str] = Field(default_factory=list)
    unchecked: list[str] = Field(default_factory=list)  # what could not be checked, and why
    actions: list[Action] = Field(default_factory=list)


class StatusReport(Model):
    """The result of one /cms-status: everything the renderers need."""

    scope: str
    checked_at: datetime
    servers: list[str]
    roles: dict[str, str] = Field(default_factory=dict)  # server -> its pool's role
    pools: dict[str, str] = Field(default_factory=dict)  # server -> its pool
    cms_pool: str | None = None
    cms_backup_pool: str | None = None
    cms: CmsStatus | None = None
    cms_source: str | None = None
    health: list[ReplicaHealth] = Field(default_factory=list)
    events: list[ReplicationEvent] = Field(default_factory=list)
    events_source: str | None = None
    reachability: Reachability | None = None
    membership: GroupMembership | None = None
    backup: list[PoolBackup] = Field(default_factory=list)
    host_errors: list[HostError] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    # what the reader should know besides the findings: names a server sent that were left out as
    # invalid, servers reached over plain HTTP because the topology allows it
    notes: list[str] = Field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.host_errors and all(f.severity in (Severity.pending, Severity.info) for f in self.findings)

    def health_of(self, server: str) -> ReplicaHealth | None:
        return next((h for h in self.health if h.fqdn == server), None)

    def error_of(self, server: str) -> HostError | None:
        return next((e for e in self.host_errors if e.server == server), None)

    def hosts_of(self, name: str) -> list[str]:
        """The servers a CMS name stands for. ActiveMasterFqdn and ActiveFileTransferAgents may name
        a server or the pool (Microsoft's failover article expects the master to point "to the FQDN
        of CMS_Pool"): a pool FQDN stands for its members, a server (or an unknown name) for itself."""
        wanted = name.lower().rstrip(".")
        members = sorted(s for s, pool in self.pools.items() if pool.lower() == wanted)
        return members or [next((s for s in self.pools if s.lower() == wanted), wanted)]

    @property
    def fta_hosts(self) -> list[str]:
        """The servers the active File Transfer Agents run on, pool FQDNs expanded."""
        ftas = self.cms.store.active_file_transfer_agents if self.cms else []
        return sorted({h for f in ftas for h in self.hosts_of(f)})
