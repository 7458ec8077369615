"""RQ job entry points. Thin: load the request, call the logic, append events.

Jobs are enqueued by dotted path with the request id as their only argument;
they report only through the events stream, never to Slack.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from workers import topology as topo
from workers.contract import append_audit, append_event, claim, load_request
from workers.remediate import RemediationRefused, describe, remediate, replicate
from workers.settings import Settings
from workers.status import run_status

log = logging.getLogger(__name__)

STATUS_JOB = "workers.jobs.status"
REPLICATE_JOB = "workers.jobs.replicate_scope"
REMEDIATE_JOB = "workers.jobs.remediation"
FAILURE_CALLBACK = "workers.jobs.report_failure"


def _start(request_id: str):
    """The request, its settings and topology, and an emitter; None for a duplicate delivery."""
    conn = get_current_job().connection
    if not claim(conn, request_id):
        log.info("request %s already ran (duplicate delivery); skipping", request_id)
        return None
    request = load_request(conn, request_id)
    settings = Settings()
    topology = topo.load(settings.topology)

    def emit(kind: str, body: dict[str, Any]) -> None:
        append_event(conn, request_id, kind, body)
    return conn, request, settings, topology, emit


def _target(topology, request):
    return topology.resolve(request.args["target"]) if request.args.get("target") else topology.everything()


def status(request_id: str) -> dict[str, Any] | None:
    started = _start(request_id)
    if started is None:
        return None
    conn, request, settings, topology, emit = started
    report = run_status(topology, settings, _target(topology, request), emit)
    emit("result", {"report": report.model_dump(mode="json"), "healthy": report.healthy})
    return {"healthy": report.healthy, "findings": len(report.findings), "host_errors": len(report.host_errors)}


def replicate_scope(request_id: str) -> dict[str, Any] | None:
    started = _start(request_id)
    if started is None:
        return None
    conn, request, settings, topology, emit = started
    outcome = replicate(topology, settings, _target(topology, request), emit)
    return _finish(conn, request, emit, "force-replication", request.args.get("target", "all"), outcome)


def remediation(request_id: str) -> dict[str, Any] | None:
    started = _start(request_id)
    if started is None:
        return None
    conn, request, settings, topology, emit = started
    kind, target = request.args.get("action", ""), request.args.get("target", "")
    try:
        append_audit(conn, request=request_id, who=request.user, what=kind, target=target,
                     detail=describe(kind, target), result="started")
        scope = request.args.get("scope")
        outcome = remediate(topology, settings, kind, target, request_id, emit,
                            scope=topology.everything() if scope == "all" else topology.resolve(scope) if scope else None)
    except RemediationRefused as e:
        append_audit(conn, request=request_id, who=request.user, what=kind, target=target, result=f"refused: {e}")
        emit("failed", {"reason": f"not done: {e}"})
        return {"ok": False}
    return _finish(conn, request, emit, kind, target, outcome)


def _finish(conn, request, emit, kind: str, target: str, outcome) -> dict[str, Any]:
    append_audit(conn, request=request.id, who=request.user, what=kind, target=target,
                 result="ok" if outcome.ok else "failed", detail=outcome.text)
    body: dict[str, Any] = {"action": {"kind": kind, "target": target, "ok": outcome.ok, "text": outcome.text,
                                       "changes": outcome.changes or []}}
    if outcome.report is not None:
        body["report"] = outcome.report.model_dump(mode="json")
        body["healthy"] = outcome.report.healthy
    emit("result", body)
    return {"ok": outcome.ok}


def report_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ on_failure callback: the thread hears that the job died, in plain words."""
    if isinstance(exc_value, AbandonedJobError) or exc_type is AbandonedJobError:
        reason = "the worker running this check stopped before it finished; the check was lost. Run it again."
    elif isinstance(exc_value, JobTimeoutException):
        reason = "the check ran past its time limit and was stopped. Run it again; if it repeats, a server is hanging."
    else:
        reason = f"the check failed with an internal error ({exc_type.__name__}); the worker log has the details."
        log.error("job %s failed: %s", job.id, exc_type.__name__, exc_info=(exc_type, exc_value, tb))
    append_event(connection, job.id, "failed", {"reason": reason})
