"""The /cms-status job: probe the scope in parallel, parse, diagnose, report."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from workers.contract import utcnow
from workers.diagnose import diagnose
from workers.fleet import Fleet, HostRun
from workers.models import HostError, HostErrorKind, StatusReport
from workers.parsers import ParseError, parse_cms_status, parse_replica_health
from workers.settings import Settings
from workers.topology import Role, Target, Topology

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]

PROGRESS_EVERY = 0.5  # seconds between progress events, so a big fan-out is not 200 messages
CMS_FALLBACKS = 2  # further CMS pool servers tried when the first cannot answer


def cms_candidates(topology: Topology) -> list[str]:
    """Servers that can read the CMS: the CMS pool first, then its backup pool."""
    pools = [topology.cms]
    paired = topology.paired_pool(topology.cms_pool)
    if paired is not None:
        pools.append(paired)
    return [s.fqdn for p in pools if p.role is Role.frontend for s in p.servers if s.winrm]


def probes_for(topology: Topology) -> Callable[[str], dict[str, dict[str, Any]]]:
    """Every probe a status job may run on a server, with its parameters.

    Parameters come from the topology only, so they are known before the shell
    opens (the shell's environment carries them)."""
    candidates = set(cms_candidates(topology))

    def calls(server: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {"replica-health": {}}
        if server in candidates:
            out["cms-status"] = {}
        return out
    return calls


def run_status(topology: Topology, settings: Settings, target: Target, emit: Emit) -> StatusReport:
    reachable = [s for s in target.servers if topology.server(s).winrm]
    candidates = cms_candidates(topology)
    plan: dict[str, list[str]] = {s: ["replica-health"] for s in reachable}
    if candidates:
        plan[candidates[0]] = ["cms-status"] + plan.get(candidates[0], [])

    progress = _Progress(emit, total=len(plan))
    progress.start(f"checking {len(reachable)} of {len(target.servers)} servers over WinRM"
                   + (f" ({len(target.servers) - len(reachable)} not reachable over WinRM by design)"
                      if len(reachable) < len(target.servers) else ""))
    with Fleet(topology, settings, probes_for(topology)) as fleet:
        runs = fleet.run_all(plan, on_done=progress.host_done)
        attempts = [runs[candidates[0]]] if candidates else []
        for fallback in candidates[1:1 + CMS_FALLBACKS]:
            if "cms-status" in attempts[-1].results:
                break
            emit("progress", {"text": f"{attempts[-1].server} could not read the CMS; asking {fallback}",
                              "done": progress.done, "total": progress.total})
            attempts.append(fleet.run(fallback, ["cms-status"]))
    progress.finish()
    return build_report(target, runs, attempts)


def build_report(target: Target, runs: dict[str, HostRun], cms_attempts: list[HostRun]) -> StatusReport:
    host_errors: dict[tuple[str, str | None], HostError] = {}
    health = []
    for server, run in runs.items():
        if run.error:
            host_errors[(server, run.error.probe)] = run.error
        if "replica-health" in run.results and server in target.servers:
            try:
                health.append(parse_replica_health(server, run.results["replica-health"]))
            except ParseError as e:
                host_errors[(server, "replica-health")] = HostError(
                    server=server, kind=HostErrorKind.probe_failed, reason=str(e), probe="replica-health")
    cms, cms_source = None, None
    for attempt in cms_attempts:
        if attempt.error:
            host_errors.setdefault((attempt.server, attempt.error.probe), attempt.error)
        if cms is None and "cms-status" in attempt.results:
            try:
                cms, cms_source = parse_cms_status(attempt.results["cms-status"]), attempt.server
            except ParseError as e:
                host_errors[(attempt.server, "cms-status")] = HostError(
                    server=attempt.server, kind=HostErrorKind.probe_failed, reason=str(e), probe="cms-status")
    report = StatusReport(
        scope=target.name if target.kind != "deployment" else "all",
        checked_at=utcnow(), servers=list(target.servers), cms=cms, cms_source=cms_source,
        health=sorted(health, key=lambda h: h.fqdn),
        host_errors=sorted(host_errors.values(), key=lambda e: (e.server, e.probe or "")),
    )
    return report.model_copy(update={"findings": diagnose(report)})


class _Progress:
    """Counts finished servers and emits at most one progress event per interval."""

    def __init__(self, emit: Emit, total: int):
        self._emit, self.total, self.done = emit, total, 0
        self._last = 0.0
        self._lock = threading.Lock()

    def start(self, text: str) -> None:
        self._emit("progress", {"text": text, "done": 0, "total": self.total})
        self._last = time.monotonic()

    def host_done(self, run: HostRun) -> None:
        with self._lock:
            self.done += 1
            if time.monotonic() - self._last >= PROGRESS_EVERY and self.done < self.total:
                self._last = time.monotonic()
                self._emit("progress", {"text": f"{self.done} of {self.total} servers answered",
                                        "done": self.done, "total": self.total})

    def finish(self) -> None:
        self._emit("progress", {"text": f"{self.done} of {self.total} servers answered",
                                "done": self.done, "total": self.total})
