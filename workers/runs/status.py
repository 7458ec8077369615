"""The /cms-status job: probe the scope in parallel, parse, diagnose, report.

Stage 1, in parallel: the CMS's own view (cms-status) on a CMS pool server,
replica-health on every reachable server in scope, the Backup Service state.
Stage 2, only when something is behind or the CMS is unavailable: the File
Transfer Agent's event log and its port/share tests, and the CMS Front Ends'
group membership. A healthy deployment costs one stage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from cms.diagnose import diagnose
from cms.messages import Emit, Progress
from cms.models import (
    BackupStatus,
    CmsStatus,
    EventLog,
    GroupMembership,
    HostError,
    PoolBackup,
    Reachability,
    ReplicaHealth,
    StatusReport,
)
from cms.settings import Settings
from cms.topology import ServerRole, Target, Topology
from hub.contract import utcnow
from workers.transport.fleet import Fleet, HostRun, downgraded

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.5  # seconds between progress events, so a big fan-out is not 200 messages
CMS_FALLBACKS = 2  # further CMS pool servers tried when the first cannot answer
EVENT_HOURS = 24
MAX_EVENTS = 500
PORT_TIMEOUT_MS = 2000
REPLICATOR_GROUP = "RTCUniversalConfigReplicator"


def cms_candidates(topology: Topology) -> list[str]:
    """Servers that can read the CMS: the CMS pool first, then its backup pool."""
    pools = [topology.cms]
    paired = topology.paired_pool(topology.cms_pool)
    if paired is not None:
        pools.append(paired)
    return [s.fqdn for p in pools if p.role is ServerRole.frontend for s in p.servers if s.winrm]


def probe_params(topology: Topology, target: Target) -> Callable[[str], dict[str, dict[str, Any]]]:
    """Every probe a status job may run on a server, with its parameters.

    Parameters come from the topology only (never from user text), so they are
    known before the shell opens and travel in its environment."""
    candidates = set(cms_candidates(topology))
    targets = []
    for fqdn in target.servers:
        s = topology.server(fqdn)
        if topology.role_of(fqdn) is ServerRole.edge:
            targets.append({"fqdn": fqdn, "address": s.internal_address or fqdn, "port": 4443, "share": False})
        else:
            targets.append({"fqdn": fqdn, "address": fqdn, "port": 445, "share": True})
    # both pools of the pair: after a failover the File Transfer Agent runs in the other one
    cms_front_ends = sorted(s.split(".")[0].upper() for s in candidates)  # a set: sorted, the same every run
    paired = topology.paired_pool(topology.cms_pool)
    backup_pools = [topology.cms_pool] + ([paired.fqdn] if paired else [])

    def calls(server: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"replica-health": {"role": topology.role_of(server).value}}
        if server in candidates:
            out["cms-status"] = {}
            out["replication-events"] = {"sinceHours": EVENT_HOURS, "maxEvents": MAX_EVENTS}
            out["reachability"] = {"targets": [t for t in targets if t["fqdn"] != server], "timeoutMs": PORT_TIMEOUT_MS}
            out["ad-membership"] = {"group": REPLICATOR_GROUP, "computers": cms_front_ends}
            if topology.deployment.version.has_failover_cmdlet:
                out["backup-status"] = {"pools": backup_pools}
        return out
    return calls


def run_status(topology: Topology, settings: Settings, target: Target, emit: Emit) -> StatusReport:
    reachable = [s for s in target.servers if topology.server(s).winrm]
    candidates = cms_candidates(topology)
    plan: dict[str, list[str]] = {s: ["replica-health"] for s in reachable}
    if candidates:
        plan[candidates[0]] = ["cms-status"] + plan.get(candidates[0], [])
        if topology.deployment.version.has_failover_cmdlet:
            # a second CMS server, when there is one, so the first is not doing everything
            backup_host = candidates[1] if len(candidates) > 1 else candidates[0]
            plan[backup_host] = plan.get(backup_host, []) + ["backup-status"]

    progress = _Progress(emit, total=len(plan))
    by_design = len(target.servers) - len(reachable)
    progress.start(f"checking {len(reachable)} of {len(target.servers)} servers over WinRM"
                   + (f" ({by_design} not reachable over WinRM by design, checked from the CMS side)"
                      if by_design else ""))
    with Fleet(topology, settings, probe_params(topology, target)) as fleet:
        runs = fleet.run_all(plan, on_done=progress.host_done)
        attempts = [runs[candidates[0]]] if candidates else []
        healthy = [c for c in candidates[1:] if not (runs.get(c) and runs[c].error)]
        for fallback in healthy[:CMS_FALLBACKS]:
            if "cms-status" in attempts[-1].results:
                break
            emit(Progress(text=f"{attempts[-1].server} could not read the CMS; asking {fallback}",
                          done=progress.done, total=progress.total))
            attempts.append(fleet.run(fallback, ["cms-status"]))
        report = build_report(topology, target, runs, attempts)
        stage2 = second_stage(topology, report, candidates)
        if stage2:
            emit(Progress(text="replicas are behind: reading the File Transfer Agent's event log, testing "
                               "ports and shares, checking group membership", done=progress.done,
                          total=progress.total))
            runs2 = fleet.run_all(stage2)
            report = add_second_stage(report, runs2)
    progress.finish()
    plain = sorted({s for s in [*reachable, *candidates] if downgraded(topology, settings, s)})
    if plain and topology.winrm.allow_http:  # without allow_http each of them is a host error instead
        report = report.model_copy(update={"notes": report.notes + [
            f"WinRM over plain HTTP to {', '.join(plain)}: the topology sets winrm.allow_http: true although "
            "CMSBOT_WINRM_SCHEME=https (credentials and answers cross the network unprotected unless the "
            "transport encrypts them)"]})
    return report.model_copy(update={"findings": diagnose(report)})


def second_stage(topology: Topology, report: StatusReport, candidates: list[str]) -> dict[str, list[str]]:
    cms = report.cms
    if cms is None:
        return {}
    scope = set(report.servers)
    behind = [r for r in cms.replicas if r.fqdn in scope and not r.up_to_date]
    if not behind and cms.store.available:
        return {}
    failed = {e.server for e in report.host_errors}
    up = [c for c in candidates if c not in failed]
    # events 1015/1017/1034 are logged on the active FTA host only: no other server's log stands in for it
    # (none active: the CMS is unavailable, and the CMS pool's first server is the best guess)
    ftas = {f.lower() for f in report.fta_hosts}
    events_host = next((c for c in up if not ftas or c.lower() in ftas), None)
    fta = events_host or next(iter(up), None)  # the port tests run from another CMS server if need be
    if fta is None:
        return {}
    plan = {fta: (["replication-events"] if events_host else []) + ["reachability"]}
    others = [c for c in up if c != fta and topology.pool_of(c).fqdn == topology.cms_pool]
    member_host = others[0] if others else fta
    plan[member_host] = plan.get(member_host, []) + ["ad-membership"]
    return plan


def build_report(topology: Topology, target: Target, runs: dict[str, HostRun],
                 cms_attempts: list[HostRun]) -> StatusReport:
    errors = _Errors()
    health: list[ReplicaHealth] = []
    backup: list[PoolBackup] = []
    notes: list[str] = []
    for server, run in runs.items():
        errors.add(*run.errors)
        if (h := run.answer("replica-health", ReplicaHealth)) and server in target.servers:
            health.append(h)
        if b := run.answer("backup-status", BackupStatus):
            backup += b.pools
            notes += [f"{server} (backup-status): {n}" for n in b.notes]
    cms, cms_source = None, None
    for attempt in cms_attempts:
        errors.add(*attempt.errors)
        if cms is None and (cms := attempt.answer("cms-status", CmsStatus)):
            cms_source = attempt.server
            notes += [f"{attempt.server} (cms-status): {n}" for n in cms.notes]
    paired = topology.paired_pool(topology.cms_pool)
    return StatusReport(
        scope=target.name if target.kind != "deployment" else "all",
        checked_at=utcnow(), servers=list(target.servers),
        roles={s.fqdn: topology.role_of(s.fqdn).value for s in topology.servers},
        pools={s.fqdn: topology.pool_of(s.fqdn).fqdn for s in topology.servers},
        cms_pool=topology.cms_pool, cms_backup_pool=paired.fqdn if paired else None,
        cms=cms, cms_source=cms_source, health=sorted(health, key=lambda h: h.fqdn), backup=backup,
        host_errors=errors.sorted(), notes=notes,
    )


def add_second_stage(report: StatusReport, runs: dict[str, HostRun]) -> StatusReport:
    errors = _Errors(report.host_errors)
    update: dict[str, Any] = {}
    for server, run in runs.items():
        errors.add(*run.errors)
        if log := run.answer("replication-events", EventLog):
            update["events_source"] = log.computer or server
            update["events"] = log.events
        if reach := run.answer("reachability", Reachability):
            update["reachability"] = reach
            update["notes"] = report.notes + [f"{server} (reachability): {n}" for n in reach.notes]
        if membership := run.answer("ad-membership", GroupMembership):
            update["membership"] = membership
    update["host_errors"] = errors.sorted()
    return report.model_copy(update=update)


class _Errors:
    """Host errors of one report, one per (server, probe)."""

    def __init__(self, existing: list[HostError] | None = None):
        self._errors = {(e.server, e.probe): e for e in existing or []}

    def add(self, *errors: HostError) -> None:
        for error in errors:
            self._errors.setdefault((error.server, error.probe), error)

    def sorted(self) -> list[HostError]:
        return sorted(self._errors.values(), key=lambda e: (e.server, e.probe or ""))


class _Progress:
    """Counts finished servers and emits at most one progress event per interval."""

    def __init__(self, emit: Emit, total: int):
        self._emit, self.total, self.done = emit, total, 0
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, text: str) -> None:
        self._emit(Progress(text=text, done=0, total=self.total))
        self._last = time.monotonic()

    def host_done(self, run: HostRun) -> None:
        with self._lock:
            self.done += 1
            if time.monotonic() - self._last >= PROGRESS_EVERY and self.done < self.total:
                self._last = time.monotonic()
                self._emit(Progress(text=f"{self.done} of {self.total} servers answered", done=self.done,
                                    total=self.total))

    def finish(self) -> None:
        self._emit(Progress(text=f"{self.done} of {self.total} servers answered", done=self.done, total=self.total))
