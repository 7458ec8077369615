"""The remediation buttons on findings: operators only, each as a job."""

from __future__ import annotations

import json
import re
from typing import cast

from bot.listeners import Deps, guarded, just_ack, slack_request
from bot.listeners.fair_use import admit, limited_text
from bot.render.blocks import ACTION_PREFIX, esc
from bot.roles import Role
from cms.remediation import RemediationKind, describe
from cms.topology import UnknownTarget
from hub.cms_lock import cms_change_blocking
from hub.contract import load_request
from hub.jobs import REMEDIATE_COMMAND, REMEDIATE_JOB

INVALID = "This button is no longer valid; run /cms-status again for fresh ones."
REMEDIATION_GUARD = 600  # seconds; released when the job finishes


def thread_scope(deps: Deps, channel: str, thread: str | None) -> str:
    """What the command owning this thread checked, so the re-check covers the same ground."""
    # the connection does not decode responses: replies are bytes
    owner = cast(bytes | None, deps.hub.redis.get(deps.hub.keys.slack_parent(channel, thread or "")))
    if owner:
        try:
            return load_request(deps.hub, owner.decode()).args.get("target") or "all"
        except LookupError:
            pass
    return "all"


def register(app, deps: Deps) -> None:
    @guarded
    def on_remediate(body, respond):
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        container = body.get("container") or {}
        thread = container.get("thread_ts") or container.get("message_ts")
        try:
            value = json.loads((body.get("actions") or [{}])[0].get("value") or "")
            kind, target = str(value["a"]), str(value["t"])
            server = deps.topology.resolve(target)
        except (ValueError, KeyError, TypeError, AttributeError, UnknownTarget):
            return respond(text=INVALID, response_type="ephemeral", replace_original=False)
        if kind not in {k.value for k in RemediationKind} or server.kind != "server" or not channel:
            return respond(text=INVALID, response_type="ephemeral", replace_original=False)
        if not deps.roles.has(user, Role.operator):
            return respond(text=deps.roles.refusal(Role.operator, "run remediations"),
                           response_type="ephemeral", replace_original=False)
        if not deps.roles.channel_allowed(channel):
            return respond(text=deps.roles.refusal(Role.viewer, "run remediations here"),
                           response_type="ephemeral", replace_original=False)
        if blocked := cms_change_blocking(deps.hub):
            return respond(text=esc(f"Not now: {blocked}. Remediations wait until the CMS change has converged."),
                           response_type="ephemeral", replace_original=False)
        # one run of an action on a server at a time: a double click or two operators
        guard = deps.hub.keys.remediating(kind, server.name)
        if not deps.hub.redis.set(guard, user, nx=True, ex=REMEDIATION_GUARD):
            return respond(text=f"{kind} on {server.name} is already running; its result will appear in the thread.",
                           response_type="ephemeral", replace_original=False)
        action = describe(kind, server.name)
        args = {"action": kind, "target": server.name, "scope": thread_scope(deps, channel, thread)}
        req = slack_request(body, REMEDIATE_COMMAND, args, user=user, channel=channel, thread=thread)
        admission = admit(deps, req)
        if admission.outcome == "limited":
            deps.hub.redis.delete(guard)  # nothing was started: the next click may run
            return respond(text=limited_text(admission, deps), response_type="ephemeral", replace_original=False)
        if admission.go:  # not a second delivery of the same click
            deps.enqueue(req, REMEDIATE_JOB, change=True, note=f"started: {action}",
                         audit={"what": kind, "target": server.name, "detail": action, "result": "requested"})

    app.action(re.compile(f"^{ACTION_PREFIX}"))(ack=just_ack, lazy=[on_remediate])
