"""Executing an approved CMS failover or recovery. Never retried automatically.

Order matters: consume the approval (atomic, single use) -> refuse unless Redis keeps the lock
across a restart (or the risk is accepted) -> take the deployment-wide lock with its fencing
token -> refuse during a cooldown, while an unknown outcome is not cleared, or while a
remediation runs -> re-run preflight (state may have changed since the card) -> verify the lock
is still ours -> run exactly the stored plan (verifying the lock again before every recovery
step) -> watch it converge -> start the cooldown. Every step goes to the thread and to the audit
stream, through the job's outbox, so a Redis outage during the watch delays them and loses
nothing. A lock lost after something started leaves an unknown outcome: no change starts until
an approver has checked and cleared it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from cms.messages import ActionOutcome, Failed, Progress, Result, no_emit
from cms.models import CmdletRun, ConfigurationFile, Model
from cms.preflight import (
    RECOVER_POINTER,
    OutcomeUnknown,
    Plan,
    Verdict,
    describe_plan,
    preflight_failover,
    preflight_recover,
    recognise,
    redis_check,
)
from cms.settings import Settings
from cms.topology import Topology
from hub import approvals, cms_lock
from hub.cms_lock import CmsLock, LockGuard, LockLost
from hub.contract import Request, utcnow
from hub.jobs import REMEDIATE_COMMAND, REPLICATE_COMMAND
from hub.keys import Hub
from hub.liveness import CHECK_CHANGE, UNKNOWN_OUTCOME, Heartbeat
from workers.outbox import Outbox
from workers.runs.failover import gather, run_change, wait_for_convergence
from workers.runs.status import run_status

log = logging.getLogger(__name__)

STEP_PROBES = {"start-service": "start-service", "restore": "cms-restore", "reseed-local": "reseed-local",
               "force-replication": "force-replication"}
LOCK_LOST = "lock lost: check before anything else"


@dataclass
class Change:
    """One execution: what it writes goes through its outbox; `started` once anything was sent to a server."""

    request: Request
    approval_id: str
    requester: str
    what: str
    outbox: Outbox
    started: bool = False

    def emit(self, message) -> None:
        self.outbox.emit(self.request.id, message)

    def audit(self, what: str, result: str, **extra: Any) -> None:
        self.outbox.audit(request=self.request.id, approval=self.approval_id, who=self.request.user, what=what,
                          result=result, **extra)

    def start(self) -> None:
        self.started = True

    def unknown(self, how: str) -> None:
        """Sticky until an approver clears it (hub.cms_lock): nothing else starts meanwhile."""
        marker = OutcomeUnknown(id=self.request.id, what=f"the {self.what} (request {self.request.id}) {how}",
                                check=CHECK_CHANGE, requester=self.requester, at=utcnow())
        self.outbox.put("record the unknown outcome", lambda hub: cms_lock.record_unknown(hub, marker))

    def lock_lost(self, why: str) -> None:
        """The guard's hook, from the heartbeat or a check before a step: flag the audit, and, once
        something has started, leave the change's outcome to be checked."""
        self.audit("lock", f"lost: {LOCK_LOST}", detail=why)
        if self.started:
            self.unknown(f"lost its CMS lock while it ran ({why})")


def execute(hub: Hub, request: Request, topology: Topology, settings: Settings, outbox: Outbox,
            heartbeat: Heartbeat) -> dict[str, Any]:
    approval_id = request.args.get("approval", "")
    emit = outbox.emitter(request.id)

    def audit(what: str, result: str, **extra: Any) -> None:
        outbox.audit(request=request.id, approval=approval_id, who=request.user, what=what, result=result, **extra)

    try:
        approval = approvals.consume(hub, approval_id, consumer=request.id,
                                     approved_hash=request.args.get("plan_hash", ""), max_age=settings.approval_ttl)
    except approvals.NotApproved as e:
        audit("execute", f"refused: {e}")
        emit(Failed(reason=f"not executed: {e}"))
        return {"ok": False}
    plan = Plan.model_validate(approval.plan)
    what = describe_plan(plan)
    store = cms_lock.durability(hub, settings.allow_volatile_redis)
    if not store.persistent and not store.accepted:
        check = redis_check(store)
        audit("execute", f"refused: {check.name}", detail=check.reason)
        emit(Failed(reason=f"not executed: {check.reason}"))
        return {"ok": False}
    lock = CmsLock.acquire(hub, request.id, settings.failover_timeout)
    if lock is None:
        audit("execute", "refused: another CMS change holds the lock")
        emit(Failed(reason=f"not executed: another CMS change is running ({cms_lock.holder(hub) or '?'})"))
        return {"ok": False}
    change = Change(request, approval_id, approval.requester, what, outbox)
    guard = LockGuard(lock, change.lock_lost)
    heartbeat.add(guard.beat)  # the heartbeat re-asserts the lock every few seconds
    try:
        cms_lock.set_holder(hub, f"{what} (approved by {', '.join(approval.approvers)}, started "
                                 f"{utcnow().strftime('%H:%M:%S UTC')}, request {request.id})",
                            ttl=settings.failover_timeout)
        if refusal := _refusal(hub, plan, request.id):
            audit("execute", f"refused: {refusal}")
            emit(Failed(reason=f"not executed: {refusal}"))
            return {"ok": False}
        audit("execute", "started", detail=what, token=lock.token)
        try:
            return _run_plan(plan, approval_id, topology, settings, change, guard)
        except LockLost as e:  # before anything was sent to a server
            audit("execute", f"stopped: {LOCK_LOST}", detail=str(e))
            emit(Failed(reason=f"{LOCK_LOST}. Not executed: {e}"))
            return {"ok": False}
        except Exception as e:
            if change.started:
                raise  # the failure callback says its outcome is unknown and records it
            log.exception("the %s stopped before anything was sent to a server", plan.action)
            audit("execute", f"stopped: internal error ({type(e).__name__})")
            emit(Failed(reason=f"not executed: an internal error ({type(e).__name__}) stopped it before anything "
                               "was sent to a server; the worker log has the details"))
            return {"ok": False}
        finally:
            if change.started:  # nothing sent to a server, nothing to wait for
                outbox.put("start the cooldown", lambda h: cms_lock.set_cooldown(
                    h, settings.cooldown, f"after the {plan.action} of request {request.id}"))
    finally:
        heartbeat.remove(guard.beat)
        outbox.put("release the CMS lock", lambda h: guard.release())


def _refusal(hub: Hub, plan: Plan, request_id: str) -> str | None:
    """Checked under the lock, so nothing can slip in between."""
    cooldown = cms_lock.cooldown(hub)
    if cooldown and plan.action == "failover":
        return f"cooldown after the last CMS change {cooldown}"
    if unknown := cms_lock.unknown_outcomes(hub):
        return f"{unknown[0].what}, and nobody has cleared it yet. {unknown[0].check}"
    # a remediation that started before the lock was taken (one queued checks the lock when it starts)
    if running := cms_lock.changes_in_flight(hub, {REMEDIATE_COMMAND, REPLICATE_COMMAND}, exclude=request_id,
                                             started_only=True):
        return "a remediation is running: " + "; ".join(running)
    return None


def _run_plan(plan: Plan, approval_id: str, topology: Topology, settings: Settings, change: Change,
              guard: LockGuard) -> dict[str, Any]:
    emit = change.emit
    emit(Progress(text="re-running preflight: the deployment may have changed since the card"))
    facts = gather(topology, settings, None)
    pre = (preflight_failover(topology, facts, plan.target, plan.mode or "normal") if plan.action == "failover"
           else preflight_recover(topology, facts, approval_id))
    blocks = [f"{c.name}: {c.reason}" for c in pre.checks
              if c.verdict == Verdict.BLOCK and c.name != "one change at a time"]
    if blocks:
        change.audit("execute", "stopped: preflight BLOCK", detail="; ".join(blocks))
        emit(Failed(reason="not executed, preflight now says BLOCK: " + "; ".join(blocks)))
        return {"ok": False}
    if plan.action == "failover" and (pre.plan.run_on, pre.plan.cmdlet) != (plan.run_on, plan.cmdlet):
        change.audit("execute", "stopped: plan no longer matches")
        emit(Failed(reason=f"not executed: the approved plan ({plan.cmdlet} on {plan.run_on}) no longer "
                           f"matches the deployment ({pre.plan.cmdlet} on {pre.plan.run_on}); request it again"))
        return {"ok": False}
    if plan.action == "failover":
        return _failover(plan, topology, settings, change, guard)
    return _recover(plan, topology, settings, change, guard)


def _lock_note(guard: LockGuard) -> str:
    return f" {LOCK_LOST.upper()}: {guard.lost}." if guard.lost else ""


def _failover(plan: Plan, topology: Topology, settings: Settings, change: Change, guard: LockGuard) -> dict[str, Any]:
    assert plan.run_on and plan.target
    emit, audit = change.emit, change.audit
    guard.ensure(then=change.start)  # the last moment before the cmdlet: is the lock still ours?
    emit(Progress(text=f"running `{plan.cmdlet}` on {plan.run_on}"))
    run = run_change(topology, settings, plan.run_on, "cms-failover", plan.steps[0].params)
    if run.error or run.answer("cms-failover", CmdletRun) is None:
        why = f"the WinRM call failed: {run.error.reason}" if run.error else f"its answer could not be read: " \
                                                                             f"{run.failure}"
        audit("failover", f"unknown: {why}")
        change.unknown(f"ended with an unknown outcome ({why})")
        emit(Failed(reason=UNKNOWN_OUTCOME.format(what="failover") + f" ({why})" + _lock_note(guard),
                    unknown=change.request.id))
        return {"ok": False}
    cmdlet = run.answer("cms-failover", CmdletRun)
    assert cmdlet is not None
    errors, warnings = cmdlet.errors, cmdlet.warnings
    audit("failover", "ok" if cmdlet.succeeded else "failed", detail=str(cmdlet.command), errors=errors,
          warnings=warnings)
    if not cmdlet.succeeded:
        findings = recognise(errors, warnings, plan.run_on, utcnow())
        text = "the cmdlet failed: " + " | ".join(errors + [f"WARNING: {w}" for w in warnings])
        if not findings:
            text += f". {RECOVER_POINTER} if the CMS is left without a master."
        emit(Result(action=ActionOutcome(kind="failover", target=plan.target, ok=False,
                                         text=text + _lock_note(guard)), findings=findings))
        return {"ok": False}
    emit(Progress(text=f"the cmdlet returned; watching convergence (deadline {settings.failover_deadline:g} s, "
                       "RTO target 5 minutes)"))
    # reads the servers, not Redis: it keeps watching through a Redis outage (its progress waits in the outbox)
    ok, state, elapsed = wait_for_convergence(topology, settings, plan.target, emit)
    audit("convergence", "converged" if ok else "timed out", detail=state)
    report = run_status(topology, settings, topology.everything(), no_emit)
    guard.beat()  # is the lock still ours? (said in the result; the release looks once more)
    text = (f"converged in {elapsed:.0f} s: {state}" if ok else
            f"did NOT converge within {settings.failover_deadline:g} s: {state}. {RECOVER_POINTER}")
    emit(Result(action=ActionOutcome(kind="failover", target=plan.target, ok=ok,
                                     text=text + _lock_note(guard)), report=report))
    return {"ok": ok}


def _recover(plan: Plan, topology: Topology, settings: Settings, change: Change, guard: LockGuard) -> dict[str, Any]:
    emit, audit = change.emit, change.audit
    done: list[str] = []
    for i, step in enumerate(plan.steps, 1):
        label = f"step {i}/{len(plan.steps)}: {step.detail}"
        if step.kind == "status":
            emit(Progress(text=label))
            report = run_status(topology, settings, topology.everything(), no_emit)
            audit("recover-status", "healthy" if report.healthy else "problems")
            guard.beat()  # is the lock still ours? (said in the result; the release looks once more)
            text = "recovery finished: " + ("the deployment is healthy" if report.healthy else
                                            "the final status check still shows problems (see below)")
            emit(Result(action=ActionOutcome(kind="recover", target=plan.target, ok=report.healthy,
                                             text=text + _lock_note(guard), changes=done), report=report))
            return {"ok": report.healthy}
        try:
            guard.ensure(then=change.start)  # between steps: a lost lock stops what has not started
        except LockLost as e:
            if not change.started:
                raise
            not_done = [f"{s.detail} on {s.server}" for s in plan.steps[i - 1:] if s.kind != "status"]
            audit("execute", f"stopped: {LOCK_LOST}", detail=str(e))
            emit(Result(action=ActionOutcome(kind="recover", target=plan.target, ok=False, changes=done, text=(
                f"{LOCK_LOST}: {e}. Stopped before {label}. Not done: " + ("; ".join(not_done) or "nothing")))))
            return {"ok": False}
        emit(Progress(text=f"{label} on {step.server}"))
        run = run_change(topology, settings, step.server, STEP_PROBES[step.kind], step.params)
        answer = run.results.get(STEP_PROBES[step.kind])
        failed = _step_failure(run.failure, answer)
        audit(f"recover:{step.kind}", "failed" if failed else "ok", target=step.server, detail=step.detail)
        if failed:
            not_done = [f"{s.detail} on {s.server}" for s in plan.steps[i:]]
            emit(Result(action=ActionOutcome(kind="recover", target=plan.target, ok=False, changes=done,
                                             text=f"{label} on {step.server} FAILED: {failed}. Stopped. Not done: "
                                                  + ("; ".join(not_done) or "nothing"))))
            return {"ok": False}
        note = f" (export kept at {answer.path})" if isinstance(answer, ConfigurationFile) and answer.path else ""
        done.append(f"{step.detail} on {step.server}: ok{note}")
    return {"ok": True}


def _step_failure(failure: str, answer: Model | None) -> str | None:
    """Why a recovery step failed, or None: no readable answer, or a cmdlet that refused."""
    if answer is None:
        return failure
    if isinstance(answer, CmdletRun) and not answer.succeeded:
        return " | ".join(answer.errors) or "the cmdlet reported failure"
    return None
