"""RQ job entry points. Thin: load the request, call the logic, append events.

Jobs are enqueued by dotted path with the request id as their only argument;
they report only through the events stream, never to Slack.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from workers import approvals
from workers import topology as topo
from workers.contract import append_audit, append_event, claim, load_request
from workers.remediate import RemediationRefused, describe, remediate, replicate
from workers.settings import Settings
from workers.status import run_status

log = logging.getLogger(__name__)

STATUS_JOB = "workers.jobs.status"
REPLICATE_JOB = "workers.jobs.replicate_scope"
REMEDIATE_JOB = "workers.jobs.remediation"
PREFLIGHT_JOB = "workers.jobs.preflight"
EXECUTE_JOB = "workers.jobs.execute_change"
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
        conn.delete(f"cmsbot:remediating:{kind}:{target}")
        append_audit(conn, request=request_id, who=request.user, what=kind, target=target, result=f"refused: {e}")
        emit("failed", {"reason": f"not done: {e}"})
        return {"ok": False}
    return _finish(conn, request, emit, kind, target, outcome)


def preflight(request_id: str) -> dict[str, Any] | None:
    """Read-only: gather the facts, grade every check, store the plan for approval."""
    from workers.failover import gather, plan_json, preflight_failover, preflight_recover

    started = _start(request_id)
    if started is None:
        return None
    conn, request, settings, topology, emit = started
    kind = "failover" if request.command == "/cms-failover" else "recover"
    emit("progress", {"text": "preflight (read-only): the CMS's view and store, the Backup Service, the services in "
                              "both pools"})
    facts = gather(topology, settings, conn)
    pre = (preflight_failover(topology, facts, request.args.get("target"), request.args.get("mode", "normal"))
           if kind == "failover" else preflight_recover(topology, facts, request_id))
    approval = approvals.create(conn, kind=kind, plan=plan_json(pre), checks=[c.model_dump() for c in pre.checks],
                                requester=request.user, request=request_id, needed=settings.approvals_required,
                                ttl=settings.approval_ttl, blocked=pre.blocked)
    append_audit(conn, request=request_id, approval=approval.id, who=request.user, what=f"preflight:{kind}",
                 result="blocked" if pre.blocked else "ready", detail=json.dumps([c.model_dump() for c in pre.checks]))
    emit("preflight", {"approval": approval.id})
    return {"approval": approval.id, "blocked": pre.blocked}


def execute_change(request_id: str) -> dict[str, Any] | None:
    """An approved failover or recovery. Enqueued only by the decision that crossed the threshold."""
    from workers.execute import execute

    started = _start(request_id)
    if started is None:
        return None
    conn, request, settings, topology, emit = started
    return execute(conn, request, topology, settings, emit)


def _finish(conn, request, emit, kind: str, target: str, outcome) -> dict[str, Any]:
    conn.delete(f"cmsbot:remediating:{kind}:{target}")
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
    """RQ on_failure callback (and the work-horse-killed handler): the thread hears
    that the job died, in plain words; a CMS change is never retried."""
    from workers.execute import UNKNOWN_OUTCOME
    from workers.failover import HOLDER_KEY, LOCK_KEY, set_cooldown

    if job.func_name == EXECUTE_JOB:
        reason = UNKNOWN_OUTCOME.format(what="CMS change")
        holder = connection.get(HOLDER_KEY)
        if holder and f"request {job.id}" in holder.decode():
            connection.delete(LOCK_KEY, HOLDER_KEY)  # its holder is dead; the cooldown below still holds
        set_cooldown(connection, Settings(), "the last CMS change ended with an unknown outcome: check first")
        append_audit(connection, request=job.id, what="execute", result="unknown: the worker stopped")
    elif isinstance(exc_value, AbandonedJobError) or exc_type is AbandonedJobError:
        reason = "the worker running this check stopped before it finished; the check was lost. Run it again."
    elif isinstance(exc_value, JobTimeoutException):
        reason = "the check ran past its time limit and was stopped. Run it again; if it repeats, a server is hanging."
    else:
        reason = f"the check failed with an internal error ({exc_type.__name__}); the worker log has the details."
        log.error("job %s failed: %s", job.id, exc_type.__name__, exc_info=(exc_type, exc_value, tb))
    append_event(connection, job.id, "failed", {"reason": reason})


def on_work_horse_killed(job, retpid, ret_val, rusage) -> None:
    """RQ calls this when a job's work-horse dies (e.g. SIGKILL); RQ's own on_failure
    callback does not run in that case."""
    report_failure(job, job.connection, AbandonedJobError, AbandonedJobError(), None)
