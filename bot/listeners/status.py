"""/cms-status [pool|server]"""

from __future__ import annotations

from bot.listeners import Deps, guarded, permitted, scoped_request
from bot.listeners.fair_use import admit, limited_text, merged_text
from bot.render.blocks import esc
from bot.render.text import started
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
        # the same check in flight in this channel is pointed to, not run twice; then the limits
        admission = admit(deps, req, status_scope=req.args.get("target") or "all")
        if admission.outcome == "merged":
            return ack(text=merged_text(admission, deps, req, command))
        if admission.outcome == "limited":
            return ack(text=limited_text(admission, deps))
        if admission.go:  # not a second delivery of the same command
            deps.enqueue(req, STATUS_JOB, change=False)
        ack(text=esc(started("/cms-status", req.args.get("target"))))
