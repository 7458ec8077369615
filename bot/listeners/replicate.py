"""/cms-replicate [pool|server]: force replication, wait, re-check, report the difference."""

from __future__ import annotations

from bot.listeners import Deps, guarded, permitted, scoped_request
from bot.listeners.fair_use import admit, limited_text
from bot.render.blocks import esc
from bot.render.text import started
from bot.roles import Role
from hub.cms_lock import cms_change_blocking
from hub.jobs import REPLICATE_JOB


def register(app, deps: Deps) -> None:
    @app.command("/cms-replicate")
    @guarded
    def cms_replicate(ack, command):
        if not permitted(ack, command, deps, "force replication", Role.operator):
            return
        req = scoped_request(ack, command, deps, "/cms-replicate")
        if req is None:
            return
        if blocked := cms_change_blocking(deps.hub):
            return ack(text=esc(f"Not now: {blocked}. Forcing replication waits until the CMS change has converged."))
        admission = admit(deps, req)
        if admission.outcome == "limited":
            return ack(text=limited_text(admission, deps))
        if admission.go:  # not a second delivery of the same command
            deps.enqueue(req, REPLICATE_JOB, change=True,
                         audit={"what": "force-replication", "target": req.args.get("target", "all"),
                                "result": "requested"})
        ack(text=esc(started("/cms-replicate", req.args.get("target"))))
