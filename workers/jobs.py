"""RQ job entry points. Thin: load the request, call the logic, append events.

Jobs are enqueued by dotted path with the request id as their only argument;
they report only through the events stream, never to Slack. Each one claims its
request (a duplicate delivery runs nothing) and heartbeats while it runs. Everything
a job writes goes through its outbox (workers/outbox.py): in order, held in the job
while Redis is down and written when it is back; the job ends once it is written.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from cms import topology as topo
from cms.messages import ActionOutcome, Failed, Message, PreflightReady, Progress, Result
from cms.remediation import describe
from cms.settings import Settings
from hub import approvals, home, telemetry
from hub.cms_lock import cms_change_blocking
from hub.contract import Request, append_event, claim, load_request
from hub.jobs import CHANGE_COMMAND, EXECUTE_JOB, REMEDIATE_COMMAND, REMEDIATE_JOB
from hub.keys import Hub, hub_for
from hub.liveness import LOST_CHECK, Heartbeat, claim_report, lost_reason, mark_ended
from workers.outbox import Outbox
from workers.runs.doctor import run_doctor
from workers.runs.remediate import RemediationRefused, remediate, replicate
from workers.runs.status import run_status

log = logging.getLogger(__name__)

REDIS_GRACE = 600.0  # seconds a finished job waits for Redis to come back to write what it holds
TIMEOUT_MARGIN = 10.0  # seconds kept from RQ's hard limit, to end with a log line instead of a kill


class RedisDidNotReturn(RuntimeError):
    """The job ended but what it had to write could not be written: the watchdog reports it later."""


@dataclass
class Ctx:
    hub: Hub
    request: Request
    settings: Settings
    topology: topo.Topology
    outbox: Outbox
    heartbeat: Heartbeat

    def emit(self, message: Message) -> None:
        """The one emit path: in order, held through a Redis outage (see workers/outbox.py)."""
        self.outbox.emit(self.request.id, message)

    def audit(self, **fields: Any) -> None:
        self.outbox.audit(**fields)

    def target(self) -> topo.Target:
        t = self.request.args.get("target")
        return self.topology.resolve(t) if t else self.topology.everything()


def _run(request_id: str, body: Callable[[Ctx], dict[str, Any]]) -> dict[str, Any] | None:
    job = get_current_job()
    assert job is not None  # _run is the body of an RQ job
    started = time.monotonic()
    settings = Settings()
    hub = hub_for(job.connection, settings)
    if not claim(hub, request_id):
        log.info("request %s already ran (duplicate delivery); skipping", request_id)
        return None
    with Heartbeat(hub, request_id) as beat:
        outbox = Outbox(hub, name=f"outbox-{request_id}")
        try:
            ctx = Ctx(hub, load_request(hub, request_id), settings, topo.load(settings.topology), outbox, beat)
            result = body(ctx)
        finally:
            limit = (job.timeout or 0) - (time.monotonic() - started) - TIMEOUT_MARGIN
            written = outbox.close(min(REDIS_GRACE, limit) if job.timeout and job.timeout > 0 else REDIS_GRACE)
        if not written:
            raise RedisDidNotReturn(f"request {request_id}: Redis did not come back in time to write its outcome")
        try:
            mark_ended(hub, request_id)
        except redis.RedisError:
            log.warning("request %s: could not mark it ended (Redis unavailable)", request_id)
        return result


def status(request_id: str) -> dict[str, Any] | None:
    return _run(request_id, _status)


def _status(ctx: Ctx) -> dict[str, Any]:
    report = run_status(ctx.topology, ctx.settings, ctx.target(), ctx.emit)
    # the pools' verdicts (the App Home) and the check's audit entry (/cms-history), before the result: the
    # reporter refreshes the Home when it delivers the result, and finds them there
    request, who = ctx.request.id, ctx.request.user
    ctx.outbox.put("the pools' verdicts and the check's audit entry",
                   lambda hub: home.record_check(hub, report, request=request, who=who))
    ctx.emit(Result(report=report))
    return {"healthy": report.healthy, "findings": len(report.findings), "host_errors": len(report.host_errors),
            **telemetry.report_summary(report)}  # host errors by kind, replicas behind: the worker's metrics


def doctor(request_id: str) -> dict[str, Any] | None:
    """/cms-doctor: `cmsbot doctor`'s checks of every server in scope, its report as the result."""
    return _run(request_id, _doctor)


def _doctor(ctx: Ctx) -> dict[str, Any]:
    report = run_doctor(ctx.topology, ctx.settings, ctx.target(),
                        on_progress=lambda text: ctx.emit(Progress(text=text)))
    ctx.emit(Result(doctor=report))
    ready = sum(s.ready for s in report.servers)
    return {"ready": report.ready, "servers": len(report.servers), "not_ready": len(report.servers) - ready}


def replicate_scope(request_id: str) -> dict[str, Any] | None:
    return _run(request_id, _replicate)


def _replicate(ctx: Ctx) -> dict[str, Any]:
    target = ctx.request.args.get("target", "all")
    if blocked := cms_change_blocking(ctx.hub):  # checked again here: the bot's check was at request time
        return _refused(ctx, "force-replication", target, blocked)
    return _finish(ctx, "force-replication", target, replicate(ctx.topology, ctx.settings, ctx.target(), ctx.emit))


def remediation(request_id: str) -> dict[str, Any] | None:
    return _run(request_id, _remediation)


def _remediation(ctx: Ctx) -> dict[str, Any]:
    kind, target = ctx.request.args.get("action", ""), ctx.request.args.get("target", "")
    who = ctx.request.user
    scope = ctx.request.args.get("scope")
    try:
        if blocked := cms_change_blocking(ctx.hub):
            raise RemediationRefused(blocked)
        ctx.audit(request=ctx.request.id, who=who, what=kind, target=target, detail=describe(kind, target),
                  result="started")
        outcome = remediate(ctx.topology, ctx.settings, kind, target, ctx.request.id, ctx.emit,
                            scope=ctx.topology.everything() if scope == "all" else
                            ctx.topology.resolve(scope) if scope else None)
    except RemediationRefused as e:
        return _refused(ctx, kind, target, str(e))
    return _finish(ctx, kind, target, outcome)


def _refused(ctx: Ctx, kind: str, target: str, reason: str) -> dict[str, Any]:
    """Nothing was done: free the guard, audit and say why."""
    ctx.outbox.put(f"free the {kind} guard", lambda hub: hub.redis.delete(hub.keys.remediating(kind, target)))
    ctx.audit(request=ctx.request.id, who=ctx.request.user, what=kind, target=target, result=f"refused: {reason}")
    ctx.emit(Failed(reason=f"not done: {reason}"))
    return {"ok": False}


def _finish(ctx: Ctx, kind: str, target: str, outcome) -> dict[str, Any]:
    ctx.outbox.put(f"free the {kind} guard", lambda hub: hub.redis.delete(hub.keys.remediating(kind, target)))
    ctx.audit(request=ctx.request.id, who=ctx.request.user, what=kind, target=target,
              result="ok" if outcome.ok else "failed", detail=outcome.text)
    ctx.emit(Result(action=ActionOutcome(kind=kind, target=target, ok=outcome.ok, text=outcome.text,
                                         changes=outcome.changes or []), report=outcome.report))
    return {"ok": outcome.ok}


def preflight(request_id: str) -> dict[str, Any] | None:
    return _run(request_id, _preflight)


def _preflight(ctx: Ctx) -> dict[str, Any]:
    """Read-only: gather the facts, grade every check, store the plan for approval."""
    from cms.preflight import plan_json, preflight_failover, preflight_recover
    from workers.runs.failover import gather

    kind = "failover" if ctx.request.command == "/cms-failover" else "recover"
    ctx.emit(Progress(text="preflight (read-only): the CMS's view and store, the Backup Service, the services "
                           "in both pools"))
    facts = gather(ctx.topology, ctx.settings, ctx.hub)
    args = ctx.request.args
    pre = (preflight_failover(ctx.topology, facts, args.get("target"), args.get("mode", "normal"))
           if kind == "failover" else preflight_recover(ctx.topology, facts, ctx.request.id))
    approval = approvals.create(ctx.hub, kind=kind, plan=plan_json(pre), checks=[c.model_dump() for c in pre.checks],
                                requester=ctx.request.user, request=ctx.request.id,
                                needed=ctx.settings.approvals_required, ttl=ctx.settings.approval_ttl,
                                blocked=pre.blocked)
    ctx.audit(request=ctx.request.id, approval=approval.id, who=ctx.request.user, what=f"preflight:{kind}",
              result="blocked" if pre.blocked else "ready", detail=json.dumps([c.model_dump() for c in pre.checks]))
    ctx.emit(PreflightReady(approval=approval.id))
    return {"approval": approval.id, "blocked": pre.blocked}


def execute_change(request_id: str) -> dict[str, Any] | None:
    """An approved failover or recovery. Enqueued only by the decision that crossed the threshold."""
    from workers.runs.change import execute

    return _run(request_id, lambda ctx: execute(ctx.hub, ctx.request, ctx.topology, ctx.settings, ctx.outbox,
                                                ctx.heartbeat))


# -- the watch and on-call (cms/watch.py, hub/incidents.py) -------------------------------------------


def watch(scope: str) -> dict[str, Any] | None:
    """A scheduled status check of `scope` ("*": the whole deployment) and what it means for the alert
    channel and on-call. Its job id names the scheduled minute: enqueued twice, it runs once."""
    from cms.watch import open_incidents, skip
    from hub.contract import utcnow
    from hub.incidents import commit
    from workers.runs.watch import delivery, run_watch

    job = get_current_job()
    assert job is not None  # the body of an RQ job
    settings = Settings()
    hub = hub_for(job.connection, settings)
    if not claim(hub, job.id):
        log.info("watch run %s already ran (enqueued twice); skipping", job.id)
        return None
    try:
        decision = run_watch(hub, settings, topo.load(settings.topology), scope)
    except (redis.ConnectionError, redis.TimeoutError):
        raise  # nothing can be said without Redis; RQ records the failure
    except Exception as e:
        # a watch that cannot look must say so (once, as a paused watch does), not fail quietly on every run
        log.exception("the watch of %s failed", scope)
        reason = f"its check of {scope} failed ({type(e).__name__}); the worker's log has the details"
        commit(hub, lambda state: skip(state, reason, utcnow()), delivery(settings))
        raise
    return {"actions": [a.kind for a in decision.actions], "pages": len(decision.pages),
            "open": len(open_incidents(decision.state)), "skipping": decision.state.skipping is not None}


def oncall(target: str, key: str) -> dict[str, Any]:
    """Send what is owed to one on-call system for one incident key (workers/oncall.py); retried by RQ."""
    from workers.oncall import RetryLater, flush, gave_up

    job = get_current_job()
    assert job is not None  # the body of an RQ job
    settings = Settings()
    hub = hub_for(job.connection, settings)
    try:
        return flush(hub, settings, target, key)
    except RetryLater as e:
        if not job.retries_left:  # this was the last attempt RQ will make
            gave_up(hub, target, e)
        raise


# -- when a job dies ------------------------------------------------------------------------------


def report_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ on_failure callback (and the work-horse-killed handler): the thread hears that the
    job died, in plain words, once; a CMS change is never retried."""
    settings = Settings()
    hub = hub_for(connection, settings)
    if not claim_report(hub, job.id):
        return  # the watchdog (or another callback) has reported it already
    command = {EXECUTE_JOB: CHANGE_COMMAND, REMEDIATE_JOB: REMEDIATE_COMMAND}.get(job.func_name, "")
    lost = lost_reason(hub, job.id, command, settings.cooldown)
    if lost is not None:
        append_event(hub, job.id, lost)
        return
    if isinstance(exc_value, AbandonedJobError) or exc_type is AbandonedJobError:
        reason = LOST_CHECK
    elif isinstance(exc_value, JobTimeoutException):
        reason = "it ran past its time limit and was stopped. Run it again; if it repeats, a server is hanging."
    elif isinstance(exc_value, topo.TopologyError):
        reason = f"the worker's topology file has a problem: {exc_value}"
    else:
        reason = f"it failed with an internal error ({exc_type.__name__}); the worker log has the details."
        log.error("job %s failed: %s", job.id, exc_type.__name__, exc_info=(exc_type, exc_value, tb))
    append_event(hub, job.id, Failed(reason=reason))


def on_work_horse_killed(job, retpid, ret_val, rusage) -> None:
    """RQ calls this when a job's work-horse dies (e.g. SIGKILL); RQ's own on_failure
    callback does not run in that case."""
    report_failure(job, job.connection, AbandonedJobError, AbandonedJobError(), None)
