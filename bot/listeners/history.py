"""/cms-history [pool|server]: the last checks, changes, decisions and incidents of a scope, from the
audit stream (hub/home.history), answered in the ack.

Ephemeral, to the person who asked: it is a look-up, not news for the channel (a check's or a change's
own thread already told the channel), and an ephemeral answer adds nothing to the channel's history
however often it is asked. Nothing runs on a server: a Redis read (one XREVRANGE per 250 entries, the
requests' threads), so no fair-use limit applies.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bot import commands
from bot.delivery.home import Links
from bot.listeners import Deps, command_text, guarded, permitted
from bot.render.blocks import esc
from bot.render.home import history_message
from hub import home, telemetry

NAME = "/cms-history"


def usage() -> str:
    form, _, example = commands.HELP[NAME]
    return f"Usage: `{form}`, e.g. `{example}` (no pool or server: the whole deployment)."


def register(app, deps: Deps) -> None:
    links = Links(app.client)

    @app.command(NAME)
    @guarded
    def cms_history(ack, command):
        if not permitted(ack, command, deps, "read the history"):
            return
        try:  # the name resolves against the topology, or the answer lists the valid ones
            parsed = commands.parse(f"{NAME} {command_text(command)}", deps.topology)
        except commands.CommandError as e:
            telemetry.outcome("invalid")
            why = str(e) if "Usage:" in str(e) else f"{e} {usage()}"
            return ack(text=esc(why))
        name = parsed.args.get("target")
        scope = deps.topology.resolve(name) if name else None
        entries = home.history(deps.hub, deps.topology, scope, limit=home.HISTORY_LIMIT, permalink=links.permalink)
        ack(**history_message(entries, name, datetime.now(UTC), home.HISTORY_LIMIT).payload())
