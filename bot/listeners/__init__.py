"""Slack listeners: one module per slash command and per button action.

Every listener is thin: validate against the topology, check the role, store
the request and enqueue its job in one round trip (one Lua script), ack. Nothing
before the ack talks to Slack or to a Windows server.
"""

from __future__ import annotations

import functools
import html
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq import Callback

from bot import commands
from bot.config import SlackSettings
from bot.render.blocks import esc
from bot.roles import Role, Roles
from cms.messages import Accepted
from cms.settings import Settings
from cms.topology import Topology
from hub import telemetry
from hub.contract import CHANGE, STATUS, Request, id_for_delivery, submit
from hub.jobs import FAILURE_CALLBACK
from hub.keys import Hub

log = logging.getLogger("cmsbot.slack")

SAFE_ERROR = ("Something went wrong on our side and nothing was started (error {ref}). "
              "The team running cms-chatops can find it in the bot's log.")


@dataclass
class Deps:
    hub: Hub
    settings: Settings
    slack: SlackSettings
    topology: Topology
    roles: Roles

    def _timeout(self, change: bool) -> int:
        servers = len(self.topology.servers)
        return self.settings.change_timeout(servers) if change else self.settings.job_timeout(servers)

    def enqueue(self, req: Request, job: str, *, change: bool, note: str | None = None,
                audit: dict[str, Any] | None = None, timeout: int | None = None, queue: str | None = None) -> None:
        """`note`: what the thread says when the request starts inside an existing thread; `queue`: another
        queue than the change or status queue `change` chooses (a preflight's own)."""
        kind = queue or (CHANGE if change else STATUS)
        submit(self.hub, req, job, kind=kind, timeout=timeout or self._timeout(change),
               on_failure=Callback(FAILURE_CALLBACK), accepted=Accepted(queue=kind, text=note), audit=audit)
        telemetry.outcome("started")


def command_text(command: dict[str, Any]) -> str:
    """The user's text, with Slack's &amp; &lt; &gt; escaping undone."""
    return html.unescape(str(command.get("text") or ""))


def slack_request(payload: dict[str, Any], command: str, args: dict[str, str], *, user: str, channel: str,
                  thread: str | None = None) -> Request:
    team = str(payload.get("team_id") or (payload.get("team") or {}).get("id") or "")
    trigger = str(payload.get("trigger_id") or "")
    rid = id_for_delivery(team, trigger) if trigger else None
    # kept with the request: when the bot cannot post in the channel, the reporter answers through it
    response_url = str(payload.get("response_url") or "") or None
    return Request(**({"id": rid} if rid else {}), command=command, args=args, user=user, channel=channel,
                   thread=thread, origin="slack", response_url=response_url)


def just_ack(ack) -> None:
    """A button's ack: immediate; its work runs in a lazy listener after the response."""
    ack()


def permitted(ack, command: dict[str, Any], deps: Deps, what: str, role: Role | None = None) -> bool:
    """The channel allow-list, then the role; a refusal is acked to the user, naming the role."""
    if not deps.roles.channel_allowed(command["channel_id"]):
        telemetry.outcome("refused")
        ack(text=deps.roles.refusal(Role.viewer, what))
        return False
    if role is not None and not deps.roles.has(command["user_id"], role):
        telemetry.outcome("refused")
        ack(text=deps.roles.refusal(role, what))
        return False
    return True


def scoped_request(ack, command: dict[str, Any], deps: Deps, name: str, usage: str | None = None) -> Request | None:
    """`<name> [pool|server]` resolved against the topology; an unknown name is acked with the known ones
    (and `usage`, when given, unless the answer has the usage already)."""
    try:
        parsed = commands.parse(f"{name} {command_text(command)}", deps.topology)
    except commands.CommandError as e:
        telemetry.outcome("invalid")
        why = str(e) if usage is None or "Usage:" in str(e) else f"{e} {usage}"
        ack(text=esc(why))  # it may quote what the user typed, and the usage's <placeholders>
        return None
    return slack_request(command, name, parsed.args, user=command["user_id"], channel=command["channel_id"])


def guarded(listener: Callable[..., None]) -> Callable[..., None]:
    """Any unexpected error: logged with a reference, answered with a short safe message."""

    @functools.wraps(listener)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        ack = kwargs.get("ack")
        acked = False

        def tracking_ack(*a: Any, **kw: Any) -> Any:
            nonlocal acked
            acked = True
            assert ack is not None  # installed only when the listener got an ack
            return ack(*a, **kw)

        if ack is not None:
            kwargs["ack"] = tracking_ack
        try:
            listener(*args, **kwargs)
        except Exception:  # noqa: BLE001 - the user gets a reference, the log gets the details
            ref = secrets.token_hex(4)
            telemetry.outcome("error")
            log.exception("listener %s failed (ref %s)", listener.__name__, ref)
            message = SAFE_ERROR.format(ref=ref)
            if ack is not None and not acked:
                ack(text=message)
            elif kwargs.get("respond") is not None:
                kwargs["respond"](text=message, response_type="ephemeral", replace_original=False)
    return wrapper
