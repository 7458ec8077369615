"""Approve / Deny on an approval card. Approvers only; never the requester; every
decision atomic in Redis; only the decision that crosses the threshold starts it."""

from __future__ import annotations

from bot.listeners import Deps, guarded, just_ack, slack_request
from bot.render.blocks import APPROVE_ACTION, DENY_ACTION
from bot.roles import Role
from cms.messages import ApprovalChanged
from hub import approvals
from hub.approvals import DecisionOutcome
from hub.contract import append_event
from hub.jobs import EXECUTE_JOB

ANSWERS = {
    DecisionOutcome.own_request: "You requested this change, so someone else has to approve it.",
    DecisionOutcome.duplicate: "You have approved this already; it needs another approver.",
    DecisionOutcome.recorded: "Approval recorded; it needs more approvers before it starts.",
    DecisionOutcome.missing: "This approval no longer exists.",
}


def register(app, deps: Deps) -> None:
    @guarded
    def approve(body, respond):
        decide(body, respond, approve=True)

    @guarded
    def deny(body, respond):
        decide(body, respond, approve=False)

    app.action(APPROVE_ACTION)(ack=just_ack, lazy=[approve])
    app.action(DENY_ACTION)(ack=just_ack, lazy=[deny])

    def decide(body, respond, approve: bool) -> None:
        user = str((body.get("user") or {}).get("id") or "")
        approval_id = str(((body.get("actions") or [{}])[0]).get("value") or "")
        if not deps.roles.has(user, Role.approver):
            return respond(text=deps.roles.refusal(Role.approver, "approve or deny CMS changes"),
                           response_type="ephemeral", replace_original=False)
        channel = str((body.get("channel") or {}).get("id") or "")
        if not deps.roles.channel_allowed(channel):  # as for every other command and button
            return respond(text=deps.roles.refusal(Role.viewer, "approve or deny CMS changes here"),
                           response_type="ephemeral", replace_original=False)
        decision = approvals.decide(deps.hub, approval_id, user, approve)
        outcome = decision.outcome
        if outcome in ANSWERS:
            respond(text=ANSWERS[outcome], response_type="ephemeral", replace_original=False)
        if decision.closed is not None:
            return respond(text=f"This request is already {decision.closed.value}.", response_type="ephemeral",
                           replace_original=False)
        if outcome not in (DecisionOutcome.approved, DecisionOutcome.recorded, DecisionOutcome.denied):
            return
        approval = approvals.load(deps.hub, approval_id)
        append_event(deps.hub, approval.request, ApprovalChanged(approval=approval_id, outcome=outcome, by=user))
        if outcome is DecisionOutcome.approved:
            card_ts = (body.get("container") or {}).get("message_ts")
            args = {"approval": approval_id, "kind": approval.kind, "plan_hash": approval.hash}
            req = slack_request(body, "cms-execute", args, user=user, channel=channel, thread=card_ts)
            deps.enqueue(req, EXECUTE_JOB, change=True, timeout=deps.settings.failover_timeout,
                         note=f"approved: executing the {approval.kind}")
