"""/cms-failover [target-pool] [disaster] and /cms-recover: operators request, a read-only
preflight job grades the plan, and an approval card goes to the channel."""

from __future__ import annotations

from bot.listeners import Deps, command_text, guarded, permitted, slack_request
from bot.render.blocks import esc
from bot.render.text import started
from bot.roles import Role
from cms.topology import ServerRole, UnknownTarget
from hub.contract import PREFLIGHT
from hub.jobs import PREFLIGHT_JOB

USAGE = "Usage: `/cms-failover [target-pool] [disaster]`, e.g. `/cms-failover pool02.contoso.com`"


def parse_failover(text: str, deps: Deps) -> dict[str, str]:
    args = {"mode": "normal"}
    words = text.split()
    if "disaster" in (w.lower() for w in words):
        args["mode"] = "disaster"
        words = [w for w in words if w.lower() != "disaster"]
    if len(words) > 1:
        raise ValueError(f"Too many words. {USAGE}")
    if words:
        try:
            target = deps.topology.resolve(words[0])
        except UnknownTarget:
            pools = ", ".join(p.fqdn for p in deps.topology.pools if p.role is ServerRole.frontend)
            raise ValueError(f"That is not a pool of this deployment. Front End pools: {pools}. {USAGE}") from None
        if target.kind != "pool" or deps.topology.pool(target.name).role is not ServerRole.frontend:
            raise ValueError(f"{target.name} is not a Front End pool: the CMS fails over between Front End pools.")
        args["target"] = target.name
    return args


def register(app, deps: Deps) -> None:
    def request(ack, command, name: str, args: dict[str, str]) -> None:
        user, channel = command["user_id"], command["channel_id"]
        req = slack_request(command, name, args, user=user, channel=channel)
        deps.enqueue(req, PREFLIGHT_JOB, change=False, queue=PREFLIGHT,  # never behind a flood of status checks
                     audit={"what": name.lstrip("/"), "target": args.get("target", "(default)"), "result": "requested",
                            "detail": args.get("mode", "")})
        ack(text=esc(started(name, args.get("target"))))

    @app.command("/cms-failover")
    @guarded
    def cms_failover(ack, command):
        if not permitted(ack, command, deps, "request a CMS failover", Role.operator):
            return
        try:
            args = parse_failover(command_text(command), deps)
        except ValueError as e:
            return ack(text=esc(str(e)))
        request(ack, command, "/cms-failover", args)

    @app.command("/cms-recover")
    @guarded
    def cms_recover(ack, command):
        if not permitted(ack, command, deps, "request the CMS recovery", Role.operator):
            return
        if command_text(command).strip():
            return ack(text="`/cms-recover` takes no arguments: the plan is computed from the live deployment.")
        request(ack, command, "/cms-recover", {})
