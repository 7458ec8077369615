"""Approve / Deny on an approval card. Approvers only; never the requester; every
decision atomic in Redis; only the decision that crosses the threshold starts it."""

from __future__ import annotations

from typing import cast

from bot.listeners import Deps, guarded, just_ack, slack_request
from bot.render.blocks import APPROVE_ACTION, DENY_ACTION
from bot.roles import Role
from cms.messages import ApprovalChanged
from hub import approvals
from hub.approvals import DecisionOutcome
from hub.contract import Request, append_event, load_request
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

    def card_of(owner: Request, body) -> str | None:
        """The ts of the request's card (its thread's parent), as the reporter recorded it; the clicked
        message only when Redis says it is that request's card."""
        keys = deps.hub.keys
        card = cast(bytes | None, deps.hub.redis.hget(keys.slack_thread(owner.id), "parent"))
        if card:
            return card.decode()
        clicked = str((body.get("container") or {}).get("message_ts") or "")
        mapped = cast(bytes | None, deps.hub.redis.get(keys.slack_parent(owner.channel or "", clicked)))
        return clicked if clicked and mapped == owner.id.encode() else None

    def decide(body, respond, approve: bool) -> None:
        user = str((body.get("user") or {}).get("id") or "")
        approval_id = str(((body.get("actions") or [{}])[0]).get("value") or "")
        if not deps.roles.has(user, Role.approver):
            return respond(text=deps.roles.refusal(Role.approver, "approve or deny CMS changes"),
                           response_type="ephemeral", replace_original=False)
        clicked_in = str((body.get("channel") or {}).get("id") or "")
        try:
            owner = load_request(deps.hub, approvals.load(deps.hub, approval_id).request)
        except LookupError:
            return respond(text=ANSWERS[DecisionOutcome.missing], response_type="ephemeral", replace_original=False)
        # as for every other command and button: the channel clicked in, and the request's own, where it posts
        if not (deps.roles.channel_allowed(clicked_in) and deps.roles.channel_allowed(owner.channel)):
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
            # the execution reports in the request's own channel and thread (its card), whatever channel
            # and message the click's payload names
            args = {"approval": approval_id, "kind": approval.kind, "plan_hash": approval.hash}
            req = slack_request(body, "cms-execute", args, user=user, channel=owner.channel or clicked_in,
                                thread=card_of(owner, body))
            deps.enqueue(req, EXECUTE_JOB, change=True, timeout=deps.settings.failover_timeout,
                         note=f"approved: executing the {approval.kind}")
