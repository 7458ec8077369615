"""/cms-help: every command with an example."""

from __future__ import annotations

from bot.commands import HELP
from bot.listeners import Deps, guarded
from bot.render import blocks


def register(app, deps: Deps) -> None:
    @app.command("/cms-help")
    @guarded
    def cms_help(ack, command):
        # no channel list: the help says how to restrict the bot (the bot logged a warning at start)
        ack(**blocks.help_message(list(HELP.values()), open_channels=not deps.roles.channels).payload())
