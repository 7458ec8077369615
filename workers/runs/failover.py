"""Team-approved CMS failover and the recovery runbook: the I/O around the pure preflight
(cms.preflight).

gather():               read-only facts from both pools of the CMS pair (the preflight job).
run_change():           one change probe (the failover cmdlet, a recovery step) on one server.
read_state():           the CMS's view from the new CMS pool.
wait_for_convergence(): poll read_state() until cms.preflight.converged() or the deadline.
workers.runs.change runs the approved plan with these. Nothing here is retried automatically.
"""

from __future__ import annotations

import time
from typing import Any

from cms.messages import Emit, Progress
from cms.models import BackupStatus, CmsService, CmsStatus, Location, ReplicaHealth
from cms.preflight import Facts, converged
from cms.settings import Settings
from cms.topology import Topology
from hub.cms_lock import change_state, changes_in_flight, durability, unknown_outcomes
from hub.contract import utcnow
from hub.keys import Hub
from workers.runs.status import cms_candidates
from workers.transport.fleet import Fleet, HostRun


def gather(topology: Topology, settings: Settings, hub: Hub | None) -> Facts:
    """Read-only: the CMS's view, its location, the Backup Service, the four services in both pools."""
    source = topology.cms_pool
    standby_pool = topology.paired_pool(source)
    standby = standby_pool.fqdn if standby_pool else None
    pools = [source] + ([standby] if standby else [])
    servers = [s.fqdn for p in pools for s in topology.pool(p).servers if s.winrm]
    readers = [c for c in cms_candidates(topology)]
    has_backup = topology.deployment.version.has_failover_cmdlet

    def calls(host: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"replica-health": {"role": topology.role_of(host).value}}
        if host in readers:
            out["cms-status"] = {}
            out["cms-location"] = {"pools": pools}
            if has_backup:
                out["backup-status"] = {"pools": pools}
        return out

    plan = {s: ["replica-health"] for s in servers}
    with Fleet(topology, settings, calls) as fleet:
        runs = fleet.run_all(plan)
        readings: HostRun | None = None
        for reader in readers:
            if runs.get(reader) and runs[reader].error:
                continue
            attempt = fleet.run(reader, ["cms-status", "cms-location"] + (["backup-status"] if has_backup else []))
            if attempt.error is None or "cms-status" in attempt.results:
                readings = attempt
                if attempt.error is None:
                    break
    errors = [e for r in runs.values() for e in r.errors]
    health = [h for r in runs.values() if (h := r.answer("replica-health", ReplicaHealth))]
    facts = Facts(collected_at=utcnow(), source=source, standby=standby, health=health, host_errors=errors)
    if readings is not None:
        backup = readings.answer("backup-status", BackupStatus)
        facts = facts.model_copy(update={
            "cms": readings.answer("cms-status", CmsStatus),
            "location": readings.answer("cms-location", Location),
            "backup": backup.pools if backup else [],
            "host_errors": errors + readings.errors,
        })
    if hub is not None:  # read last: the closest to the card
        _, holder, cooldown = change_state(hub)
        facts = facts.model_copy(update={
            "lock_holder": holder, "cooldown": cooldown, "changes_in_flight": changes_in_flight(hub),
            "unknown": unknown_outcomes(hub), "redis": durability(hub, settings.allow_volatile_redis)})
    return facts


def run_change(topology: Topology, settings: Settings, server: str, probe: str, params: dict[str, Any]) -> HostRun:
    with Fleet(topology, settings, lambda h: {probe: params} if h == server else {}) as fleet:
        return fleet.run(server, [probe])


def read_state(topology: Topology, settings: Settings, pool: str) -> tuple[CmsStatus | None, list[CmsService]]:
    """The CMS's view as seen from a server of `pool` (the new CMS pool)."""
    readers = [s.fqdn for s in topology.pool(pool).servers if s.winrm]
    pools = [p for p in (topology.cms_pool, pool) if p]
    with Fleet(topology, settings, lambda h: {"cms-status": {}, "cms-location": {"pools": pools}}) as fleet:
        for reader in readers:
            run = fleet.run(reader, ["cms-status", "cms-location"])
            if cms := run.answer("cms-status", CmsStatus):
                loc = run.answer("cms-location", Location)
                return cms, loc.services if loc else []
    return None, []


def wait_for_convergence(topology: Topology, settings: Settings, target: str, emit: Emit) -> tuple[bool, str, float]:
    started = time.monotonic()
    deadline = started + settings.failover_deadline
    state = "not read yet"
    while time.monotonic() < deadline:
        cms, services = read_state(topology, settings, target)
        ok, state = converged(cms, services, target, topology)
        elapsed = time.monotonic() - started
        if ok:
            return True, state, elapsed
        emit(Progress(text=f"waiting for convergence ({int(elapsed)} s): {state}"))
        time.sleep(min(settings.failover_poll, max(0.0, deadline - time.monotonic())))
    return False, state, time.monotonic() - started
