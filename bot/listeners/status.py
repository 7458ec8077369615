"""/cms-status [pool|server]"""

from __future__ import annotations

from bot.listeners import Deps, guarded, permitted, scoped_request
from hub.jobs import STATUS_JOB


def register(app, deps: Deps) -> None:
    @app.command("/cms-status")
    @guarded
    def cms_status(ack, command):
        if not permitted(ack, command, deps, "check the CMS"):
            return
        req = scoped_request(ack, command, deps, "/cms-status")
        if req is None:
            return
        deps.enqueue(req, STATUS_JOB, change=False)
        ack()
