"""/cms-replicate [pool|server]: force replication, wait, re-check, report the difference."""

from __future__ import annotations

from bot import commands
from bot.handlers import Deps, command_text, guarded, slack_request
from bot.roles import Role
from workers.jobs import REPLICATE_JOB


def register(app, deps: Deps) -> None:
    @app.command("/cms-replicate")
    @guarded
    def cms_replicate(ack, command):
        user, channel = command["user_id"], command["channel_id"]
        if not deps.roles.channel_allowed(channel):
            return ack(text=deps.roles.refusal(Role.viewer, "use cms-chatops"))
        if not deps.roles.has(user, Role.operator):
            return ack(text=deps.roles.refusal(Role.operator, "force replication"))
        try:
            parsed = commands.parse(f"/cms-replicate {command_text(command)}", deps.topology)
        except commands.CommandError as e:
            return ack(text=str(e))
        req = slack_request(command, "/cms-replicate", parsed.args, user=user, channel=channel)
        target = parsed.args.get("target", "all")
        deps.enqueue(req, REPLICATE_JOB, change=True,
                     audit={"what": "force-replication", "target": target, "result": "requested"})
        ack()
