"""Remediations an operator can start from a button, and /cms-replicate.

Each one changes one thing, reports every step, waits the documented
replication delay and re-checks, so the thread shows whether it worked.
Targets are re-validated against the topology here too (defence in depth).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cms.messages import Emit, Progress, no_emit
from cms.models import ConfigurationFile, ReplicationRequest, ServiceStart, StatusReport
from cms.remediation import RemediationKind, UnknownRemediation
from cms.settings import Settings
from cms.topology import Target, Topology, UnknownTarget
from workers.runs.status import cms_candidates, run_status
from workers.transport.fleet import Fleet

log = logging.getLogger(__name__)

class RemediationRefused(ValueError):
    """The action cannot be attempted; the message says why, for the thread."""


@dataclass
class Outcome:
    ok: bool
    text: str
    report: StatusReport | None = None
    changes: list[str] | None = None


def _server(topology: Topology, target: str, *, winrm: bool) -> str:
    try:
        resolved = topology.resolve(target)
    except UnknownTarget:
        raise RemediationRefused(f"{target} is not a server of this deployment") from None
    if resolved.kind != "server":
        raise RemediationRefused(f"{target} is a pool; this action takes one server")
    if winrm and not topology.server(resolved.name).winrm:
        raise RemediationRefused(f"{resolved.name} is not reachable over WinRM (perimeter network): "
                                 "run the step on the server itself")
    return resolved.name


def _cms_server(topology: Topology) -> str:
    candidates = [c for c in cms_candidates(topology) if topology.pool_of(c).fqdn == topology.cms_pool]
    if not candidates:
        raise RemediationRefused("no CMS pool Front End is reachable over WinRM")
    return candidates[0]


def remediate(topology: Topology, settings: Settings, kind: str, target: str, request_id: str, emit: Emit,
              scope: Target | None = None) -> Outcome:
    """Run one remediation, then re-check `scope` (the thread's original scope; else the target)."""
    try:
        remediation = RemediationKind.parse(kind)
    except UnknownRemediation as e:
        raise RemediationRefused(str(e)) from None
    server = _server(topology, target, winrm=kind != "force-replication")
    cms = _cms_server(topology)
    export_name = f"cmsbot-export-{request_id}.zip"
    import_params: dict[str, Any] = {"fileName": export_name}

    def calls(host: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if host == server and kind == "start-replica":
            out["start-service"] = {"name": "REPLICA"}
        if host == cms:
            out["force-replication"] = {"replicas": [server]}
            out["export-configuration"] = {"fileName": export_name}
        return out

    def import_calls(host: str) -> dict[str, dict[str, Any]]:
        # its own shell: the parameters (the export's checksum) exist only after the export
        return {"import-configuration": import_params} if host == server else {}

    with Fleet(topology, settings, calls) as fleet:
        if kind == "start-replica":
            emit(Progress(text=f"starting REPLICA on {server}"))
            run = fleet.run(server, ["start-service"])
            started = run.answer("start-service", ServiceStart)
            if started is None:
                return Outcome(False, f"could not start REPLICA on {server}: {run.failure}")
            emit(Progress(text=f"REPLICA on {server}: {started.before} -> {started.after}"))
            if not started.running:
                return Outcome(False, f"REPLICA on {server} is {started.after} after the start attempt")
        elif kind == "reseed":
            emit(Progress(text=f"exporting the configuration on {cms}"))
            run = fleet.run(cms, ["export-configuration"])
            export = run.answer("export-configuration", ConfigurationFile)
            if export is None:
                return Outcome(False, f"Export-CsConfiguration on {cms} failed: {run.failure}")
            import_params["sha256"] = export.sha256
            emit(Progress(text=f"exported {export.bytes} bytes to {export.path} on {cms} "
                               f"(kept there as a backup); importing into {server}'s local store"))
            with Fleet(topology, settings, import_calls) as importer:
                run = importer.run(server, ["import-configuration"],
                                   stdin={"import-configuration": export.content.encode("ascii")})
            if run.answer("import-configuration", ConfigurationFile) is None:
                return Outcome(False, f"Import-CsConfiguration -LocalStore on {server} failed: {run.failure}")
        emit(Progress(text=f"forcing replication to {server} from {cms}"))
        run = fleet.run(cms, ["force-replication"])
        if run.answer("force-replication", ReplicationRequest) is None:
            return Outcome(False, f"Invoke-CsManagementStoreReplication on {cms} failed: {run.failure}")
    report = recheck(topology, settings, scope or topology.resolve(server), emit)
    current = next((r.up_to_date for r in report.cms.replicas if r.fqdn == server), None) if report.cms else None
    done = remediation.action(server)
    if current:
        return Outcome(True, f"{done}: {server} is up to date now", report, [f"{server}: UpToDate True"])
    state = "could not be read" if current is None else "is still not up to date"
    return Outcome(False, f"{done}; but {server} {state} after the re-check: see the findings below", report,
                   [f"{server}: UpToDate {current}"])


def replicate(topology: Topology, settings: Settings, target: Target, emit: Emit) -> Outcome:
    """/cms-replicate: status, force replication for the scope, wait, status, difference."""
    cms = _cms_server(topology)
    emit(Progress(text="reading the current state"))
    before = run_status(topology, settings, target, no_emit)
    replicas = [] if target.kind == "deployment" else list(target.servers)
    with Fleet(topology, settings,
               lambda h: {"force-replication": {"replicas": replicas}} if h == cms else {}) as fleet:
        run = fleet.run(cms, ["force-replication"])
    forced = run.answer("force-replication", ReplicationRequest)
    if forced is None:
        return Outcome(False, f"Invoke-CsManagementStoreReplication on {cms} failed: {run.failure}", before)
    after = recheck(topology, settings, target, emit)
    text = f"forced replication to {'every replica' if not replicas else ', '.join(replicas)} from {cms}"
    if forced.errors:
        text += "; errors: " + "; ".join(f"{e.replica}: {e.message}" for e in forced.errors)
    return Outcome(not forced.errors, text, after, _changes(before, after))


def recheck(topology: Topology, settings: Settings, target: Target, emit: Emit) -> StatusReport:
    wait = settings.replication_wait
    emit(Progress(text=f"waiting {wait:g} s for replication (UpToDate is False for 2-3 minutes after a "
                       "forced replication), then re-checking"))
    time.sleep(wait)
    return run_status(topology, settings, target, emit)


def _changes(before: StatusReport | None, after: StatusReport) -> list[str]:
    """Replicas whose UpToDate differs between the two readings (or the after state alone)."""
    if after.cms is None:
        return []
    was = {r.fqdn: r.up_to_date for r in before.cms.replicas} if before and before.cms else {}
    scope = set(after.servers)
    out = []
    for r in after.cms.replicas:
        if r.fqdn not in scope:
            continue
        old = was.get(r.fqdn)
        if old is None or old != r.up_to_date:
            out.append(f"{r.fqdn}: UpToDate {'' if old is None else str(old) + ' -> '}{r.up_to_date}")
    return out
