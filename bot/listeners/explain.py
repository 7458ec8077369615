"""/cms-explain <pasted event>: pure and fast, so it answers in the ack."""

from __future__ import annotations

from bot.listeners import Deps, command_text, guarded, permitted
from bot.render import blocks
from cms.explain import explain

MAX_TEXT = 20_000


def register(app, deps: Deps) -> None:
    @app.command("/cms-explain")
    @guarded
    def cms_explain(ack, command):
        if not permitted(ack, command, deps, "explain events"):
            return
        text = command_text(command)[:MAX_TEXT]
        if not text.strip():
            return ack(text="Paste the event as Event Viewer copies it (Details > Copy), e.g. "
                            "`/cms-explain Log Name: Lync Server Source: LS File Transfer Agent Service ...`")
        ack(response_type="in_channel", **blocks.explanation(explain(text)).payload())
