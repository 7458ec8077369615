"""/cms-status [pool|server]"""

from __future__ import annotations

from bot import commands
from bot.handlers import Deps, command_text, guarded, slack_request
from bot.roles import Role
from workers.jobs import STATUS_JOB


def register(app, deps: Deps) -> None:
    @app.command("/cms-status")
    @guarded
    def cms_status(ack, command):
        user, channel = command["user_id"], command["channel_id"]
        if not deps.roles.channel_allowed(channel):
            return ack(text=deps.roles.refusal(Role.viewer, "check the CMS"))
        try:
            parsed = commands.parse(f"/cms-status {command_text(command)}", deps.topology)
        except commands.CommandError as e:
            return ack(text=str(e))
        req = slack_request(command, "/cms-status", parsed.args, user=user, channel=channel)
        deps.enqueue(req, STATUS_JOB, change=False)
        ack()
