"""/cms-doctor [pool|server]: `cmsbot doctor` from Slack, for operators. For every server in scope: DNS, the
WinRM port, TLS, the credentials, PowerShell, the module, rights, the WinRM limits and, from the CMS Front
End, the replication paths; the thread gets one line per server that is not ready, with its first failing
check and the fix. Read-only, but it opens connections to every server: operators only, and counted
against the same limits as the other commands that reach the servers."""

from __future__ import annotations

from bot import commands
from bot.listeners import Deps, guarded, permitted, scoped_request
from bot.listeners.fair_use import admit, limited_text
from bot.render.blocks import esc
from bot.render.text import started
from bot.roles import Role
from hub.jobs import DOCTOR_JOB

NAME = "/cms-doctor"


def usage() -> str:
    form, _, example = commands.HELP[NAME]
    return f"Usage: `{form}`, e.g. `{example}` (no pool or server: every server of the deployment)."


def register(app, deps: Deps) -> None:
    @app.command(NAME)
    @guarded
    def cms_doctor(ack, command):
        if not permitted(ack, command, deps, "run the doctor", Role.operator):
            return
        # the name resolves against the topology, or nothing runs: no user text goes further
        req = scoped_request(ack, command, deps, NAME, usage=usage())
        if req is None:
            return
        admission = admit(deps, req)
        if admission.outcome == "limited":
            return ack(text=limited_text(admission, deps))
        if admission.go:  # not a second delivery of the same command
            deps.enqueue(req, DOCTOR_JOB, change=False)  # read-only: the status queue and its time limit
        ack(text=esc(started(NAME, req.args.get("target"))))
