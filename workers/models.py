"""Typed models shared by probes' parsers, diagnosis, rendering and the lab.

Every model is plain data: pydantic validates it at the edges (probe JSON in,
event JSON out) and the pure functions in between never see a dict.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field


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
    deleted_replicas: list[str] = Field(default_factory=list)

    @property
    def available(self) -> bool:
        return bool(self.active_master_fqdn) and bool(self.active_file_transfer_agents)


class CmsService(Model):
    """One object of Get-CsService -CentralManagement."""

    pool_fqdn: str
    site_id: str | None = None
    version: str | None = None
    active: bool


class CmsStatus(Model):
    """What the cms-status probe reports from a CMS pool server."""

    collected_at: datetime
    product_version: str | None = None
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    store: StoreStatus
    services: list[CmsService] = Field(default_factory=list)


class ServiceState(str, Enum):
    running = "running"
    stopped = "stopped"
    starting = "starting"
    stopping = "stopping"
    paused = "paused"
    missing = "missing"
    unknown = "unknown"


class ReplicaHealth(Model):
    """What the replica-health probe reports from one server."""

    fqdn: str
    collected_at: datetime
    product_version: str | None = None
    services: dict[str, ServiceState] = Field(default_factory=dict)


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

    kind: str
    target: str
    label: str


class Finding(Model):
    code: str
    severity: Severity
    subject: str
    summary: str
    evidence: list[Evidence] = Field(default_factory=list)
    fix: list[str] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)


class StatusReport(Model):
    """The result of one /cms-status: everything the renderers need."""

    scope: str
    checked_at: datetime
    servers: list[str]
    cms: CmsStatus | None = None
    cms_source: str | None = None
    health: list[ReplicaHealth] = Field(default_factory=list)
    host_errors: list[HostError] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings and not self.host_errors
