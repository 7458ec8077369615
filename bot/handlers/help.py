"""/cms-help: every command with an example."""

from __future__ import annotations

from bot import blocks
from bot.commands import HELP
from bot.handlers import Deps, guarded


def register(app, deps: Deps) -> None:
    @app.command("/cms-help")
    @guarded
    def cms_help(ack, command):
        ack(**blocks.help_message(list(HELP.values())).payload())
