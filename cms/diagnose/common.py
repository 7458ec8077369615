"""What every family of the diagnosis shares: how a finding is built (its fix from the knowledge
base, the force-replication button on a replica error), the clues gathered once per replica, and
the evidence and "not checked" wording the families have in common."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import (
    Action,
    Evidence,
    Finding,
    HostError,
    PortTest,
    ReplicaHealth,
    ReplicaStatus,
    ReplicationEvent,
    Severity,
    StatusReport,
)
from cms.remediation import RemediationKind

CMS_VIEW = "Get-CsManagementStoreReplicationStatus"


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "never"


def finding(code: FindingCode, severity: Severity, subject: str, summary: str, evidence: list[Evidence],
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
class Clues:
    """Everything known about one replica, gathered once."""

    status: ReplicaStatus
    role: str
    pool: str | None
    health: ReplicaHealth | None
    host_error: HostError | None
    events: dict[FindingCode, list[ReplicationEvent]] = field(default_factory=dict)  # code -> newest first
    port: PortTest | None = None

    def latest(self, code: FindingCode) -> ReplicationEvent | None:
        newest = self.events.get(code)
        return newest[0] if newest else None


def event_evidence(e: ReplicationEvent, detail: str) -> Evidence:
    return Evidence(text=f"Event {e.id} from {e.source}: {detail}",
                    source=f"'Lync Server' log on {e.computer or 'the FTA host'}", at=e.time)


def with_unchecked(f: Finding, notes: list[str]) -> Finding:
    """The finding, also listing `notes` as not checked (once)."""
    new = [n for n in notes if n not in f.unchecked]
    return f.model_copy(update={"unchecked": [*f.unchecked, *new]}) if new else f


def unreachable_note(clues: Clues, what: str) -> str:
    server = clues.status.fqdn
    if clues.host_error:
        return f"{what} on {server}: {clues.host_error.kind.value.replace('_', ' ')} ({clues.host_error.reason})"
    return f"{what} on {server}: not reachable over WinRM (perimeter network); check it on the server itself"


def socket_error(error: str | None) -> str:
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
