"""Fair use, as the listeners answer it (the counting is hub/fair_use.py): a request over a limit
is refused, ephemerally, with which limit and when to try again; a status check identical to
one in flight in the channel points to that one's thread instead of starting a second job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bot.listeners import Deps
from bot.render.blocks import esc
from hub import fair_use, telemetry
from hub.contract import Request
from hub.fair_use import Admission


def admit(deps: Deps, req: Request, *, status_scope: str | None = None) -> Admission:
    admission = fair_use.admit(deps.hub, deps.settings, req.id, user=req.user, channel=req.channel or "",
                               status_scope=status_scope)
    if admission.outcome != "admitted":  # admitted: "started" once its job is enqueued
        telemetry.outcome(admission.outcome)
    return admission


def _window(seconds: float) -> str:
    if seconds == 60:
        return "minute"
    return f"{seconds / 60:g} minutes" if seconds >= 120 and seconds % 60 == 0 else f"{seconds:g} seconds"


def limited_text(admission: Admission, deps: Deps) -> str:
    wait = max(1, round(admission.retry_after))
    at = datetime.now(UTC) + timedelta(seconds=wait)
    who, per = ("you have", "per person") if admission.limit == "user" else ("this channel has", "per channel")
    return (f":hourglass: Not started: {who} started {admission.allowed} checks and actions on the servers in the "
            f"last {_window(deps.settings.limit_window)}, the limit {per}. Try again in {wait} s "
            f"(after {at:%H:%M:%S} UTC).")


def permalink(domain: str, channel: str, ts: str) -> str:
    """Slack's link to a message (and so to its thread): the workspace's domain, the channel, the ts
    without its dot."""
    return f"https://{domain}.slack.com/archives/{channel}/p{ts.replace('.', '')}"


def merged_text(admission: Admission, deps: Deps, req: Request, payload: dict[str, Any]) -> str:
    assert admission.owner is not None  # merged into a request in flight
    what = " ".join([req.command, *([req.args["target"]] if req.args.get("target") else [])])
    by = f", started by <@{esc(admission.owner_user)}>" if admission.owner_user else ""
    head = f":arrows_counterclockwise: The same check (`{esc(what)}`) is already running in this channel{by}"
    ts = admission.thread
    if ts is None:
        return f"{head}; its thread is being posted and the result will appear there. Nothing new was started."
    domain = str(payload.get("team_domain") or "")
    where = (f"<{permalink(domain, req.channel or '', ts)}|its thread>" if domain.replace("-", "").isalnum()
             else "its thread")
    return f"{head}: the result will appear in {where} (thread ts {ts}). Nothing new was started."
