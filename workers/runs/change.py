"""Executing an approved CMS failover or recovery. Never retried automatically.

Order matters: consume the approval (atomic, single use) -> take the
deployment-wide lock -> refuse during a cooldown -> re-run preflight (state may
have changed since the card) -> run exactly the stored plan -> verify -> start
the cooldown. Every step goes to the thread and to the audit stream.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import LockError

from cms.messages import ActionOutcome, Emit, Failed, Progress, Result, no_emit
from cms.models import CmdletRun, ConfigurationFile, Model
from cms.preflight import (
    RECOVER_POINTER,
    Plan,
    Verdict,
    describe_plan,
    preflight_failover,
    preflight_recover,
    recognise,
)
from cms.settings import Settings
from cms.topology import Topology
from hub import approvals, cms_lock
from hub.contract import Request, append_audit, utcnow
from hub.keys import Hub
from hub.liveness import UNKNOWN_OUTCOME
from workers.runs.failover import gather, run_change, wait_for_convergence
from workers.runs.status import run_status

log = logging.getLogger(__name__)

STEP_PROBES = {"start-service": "start-service", "restore": "cms-restore", "reseed-local": "reseed-local",
               "force-replication": "force-replication"}



def execute(hub: Hub, request: Request, topology: Topology, settings: Settings, emit: Emit) -> dict[str, Any]:
    approval_id = request.args.get("approval", "")
    audit = _auditor(hub, request, approval_id)
    try:
        approval = approvals.consume(hub, approval_id, consumer=request.id,
                                     approved_hash=request.args.get("plan_hash", ""), max_age=settings.approval_ttl)
    except approvals.NotApproved as e:
        audit("execute", f"refused: {e}")
        emit(Failed(reason=f"not executed: {e}"))
        return {"ok": False}
    plan = Plan.model_validate(approval.plan)
    what = describe_plan(plan)
    lock = cms_lock.lock(hub, timeout=settings.failover_timeout)
    if not lock.acquire(blocking=False):
        audit("execute", "refused: another CMS change holds the lock")
        emit(Failed(reason=f"not executed: another CMS change is running ({cms_lock.holder(hub) or '?'})"))
        return {"ok": False}
    try:
        cms_lock.set_holder(hub, f"{what} (approved by {', '.join(approval.approvers)}, started "
                                 f"{utcnow().strftime('%H:%M:%S UTC')}, request {request.id})",
                            ttl=settings.failover_timeout)
        cooldown = cms_lock.cooldown(hub)
        if cooldown and plan.action == "failover":
            audit("execute", "refused: cooldown")
            emit(Failed(reason=f"not executed: cooldown after the last CMS change {cooldown}"))
            return {"ok": False}
        audit("execute", "started", detail=what)
        emit(Progress(text="re-running preflight: the deployment may have changed since the card"))
        facts = gather(topology, settings, None)
        pre = (preflight_failover(topology, facts, plan.target, plan.mode or "normal") if plan.action == "failover"
               else preflight_recover(topology, facts, approval_id))
        blocks = [f"{c.name}: {c.reason}" for c in pre.checks
                  if c.verdict == Verdict.BLOCK and c.name != "one change at a time"]
        if blocks:
            audit("execute", "stopped: preflight BLOCK", detail="; ".join(blocks))
            emit(Failed(reason="not executed, preflight now says BLOCK: " + "; ".join(blocks)))
            return {"ok": False}
        if plan.action == "failover" and (pre.plan.run_on, pre.plan.cmdlet) != (plan.run_on, plan.cmdlet):
            audit("execute", "stopped: plan no longer matches")
            emit(Failed(reason=f"not executed: the approved plan ({plan.cmdlet} on {plan.run_on}) no longer "
                               f"matches the deployment ({pre.plan.cmdlet} on {pre.plan.run_on}); "
                               "request it again"))
            return {"ok": False}
        try:
            if plan.action == "failover":
                return _failover(plan, topology, settings, emit, audit)
            return _recover(plan, topology, settings, emit, audit)
        finally:
            cms_lock.set_cooldown(hub, settings.cooldown, f"after the {plan.action} of request {request.id}")
    finally:
        cms_lock.clear_holder(hub)
        try:
            lock.release()
        except LockError:
            log.warning("the CMS lock expired before the %s finished", plan.action)


def _auditor(hub: Hub, request: Request, approval_id: str):
    def audit(what: str, result: str, **extra: Any) -> None:
        append_audit(hub, request=request.id, approval=approval_id, who=request.user, what=what, result=result,
                     **extra)
    return audit


def _failover(plan: Plan, topology: Topology, settings: Settings, emit: Emit, audit) -> dict[str, Any]:
    assert plan.run_on and plan.target
    emit(Progress(text=f"running `{plan.cmdlet}` on {plan.run_on}"))
    run = run_change(topology, settings, plan.run_on, "cms-failover", plan.steps[0].params)
    if run.error:
        audit("failover", f"unknown: {run.error.reason}")
        emit(Failed(reason=UNKNOWN_OUTCOME.format(what="failover") + f" (the WinRM call failed: {run.error.reason})"))
        return {"ok": False}
    cmdlet = run.answer("cms-failover", CmdletRun)
    if cmdlet is None:
        audit("failover", f"unknown: {run.failure}")
        emit(Failed(reason=UNKNOWN_OUTCOME.format(what="failover") + f" (its answer could not be read: {run.failure})"))
        return {"ok": False}
    errors, warnings = cmdlet.errors, cmdlet.warnings
    audit("failover", "ok" if cmdlet.succeeded else "failed", detail=str(cmdlet.command), errors=errors,
          warnings=warnings)
    if not cmdlet.succeeded:
        findings = recognise(errors, warnings, plan.run_on, utcnow())
        text = "the cmdlet failed: " + " | ".join(errors + [f"WARNING: {w}" for w in warnings])
        if not findings:
            text += f". {RECOVER_POINTER} if the CMS is left without a master."
        emit(Result(action=ActionOutcome(kind="failover", target=plan.target, ok=False, text=text),
                    findings=findings))
        return {"ok": False}
    emit(Progress(text=f"the cmdlet returned; watching convergence (deadline {settings.failover_deadline:g} s, "
                       "RTO target 5 minutes)"))
    ok, state, elapsed = wait_for_convergence(topology, settings, plan.target, emit)
    audit("convergence", "converged" if ok else "timed out", detail=state)
    report = run_status(topology, settings, topology.everything(), no_emit)
    text = (f"converged in {elapsed:.0f} s: {state}" if ok else
            f"did NOT converge within {settings.failover_deadline:g} s: {state}. {RECOVER_POINTER}")
    emit(Result(action=ActionOutcome(kind="failover", target=plan.target, ok=ok, text=text), report=report))
    return {"ok": ok}


def _recover(plan: Plan, topology: Topology, settings: Settings, emit: Emit, audit) -> dict[str, Any]:
    done: list[str] = []
    for i, step in enumerate(plan.steps, 1):
        label = f"step {i}/{len(plan.steps)}: {step.detail}"
        if step.kind == "status":
            emit(Progress(text=label))
            report = run_status(topology, settings, topology.everything(), no_emit)
            audit("recover-status", "healthy" if report.healthy else "problems")
            text = "recovery finished: " + ("the deployment is healthy" if report.healthy else
                                            "the final status check still shows problems (see below)")
            emit(Result(action=ActionOutcome(kind="recover", target=plan.target, ok=report.healthy, text=text,
                                             changes=done), report=report))
            return {"ok": report.healthy}
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
