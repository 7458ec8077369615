"""The console adapter: runs a command through the real queue and prints the
thread as text. A second reporter next to Slack's, on the same events."""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import TextIO

import redis
from rq import Callback

from bot import commands
from bot.delivery.reporter import Reporter
from bot.render import text as render
from cms.doctor import DoctorReport
from cms.messages import ActionOutcome, Failed, Progress, Result, Unreadable
from cms.models import StatusReport
from cms.settings import Settings
from cms.topology import Topology
from hub.contract import STATUS, Event, Request, submit, workers_on
from hub.jobs import FAILURE_CALLBACK, STATUS_JOB
from hub.keys import Hub

EXIT_HEALTHY, EXIT_PROBLEMS, EXIT_CANNOT_RUN = 0, 1, 2

log = logging.getLogger(__name__)


def workers_listening(hub: Hub) -> int:
    return workers_on(hub, STATUS)


class ConsoleThread:
    """Prints one request's events as a thread; remembers how it ended."""

    def __init__(self, request: Request, out: TextIO):
        self.request, self.out = request, out
        self.exit_code: int | None = None
        self.report: StatusReport | None = None

    def parent(self) -> None:
        self._print(f"{self.request.user} > {self.request.command} {self.request.args.get('target', '')}".rstrip())

    def deliver(self, event: Event) -> bool:
        match event.message:
            case Progress(text=text):
                self._print(f"  | {text}")
            case Result(report=StatusReport() as report):
                self.report = report
                for line in render.report_text(report).splitlines():
                    self._print(f"  | {line}".rstrip())
                self._print(f"verdict: {render.verdict(report)}")
                self.exit_code = EXIT_HEALTHY if report.healthy else EXIT_PROBLEMS
            case Result(action=ActionOutcome() as action):
                self._print(f"  | {action.text}")
                self.exit_code = EXIT_HEALTHY if action.ok else EXIT_PROBLEMS
            case Result(doctor=DoctorReport() as doctor):
                for line in render.doctor_text(doctor).splitlines():
                    self._print(f"  | {line}".rstrip())
                self._print(f"verdict: {render.doctor_verdict(doctor)}")
                self.exit_code = EXIT_HEALTHY if doctor.ready else EXIT_PROBLEMS
            case Failed(reason=reason):
                self._failed(reason)
            case Unreadable() as unreadable if event.terminal:
                self._failed(unreadable.reason)
            case Unreadable() as unreadable:
                log.warning("skipping event %s/%s: %s", event.request, event.seq, unreadable.error)
            case _:
                pass  # accepted, preflight and approval events concern Slack threads only
        return True

    def _failed(self, reason: str) -> None:
        self._print(f"  | FAILED: {reason}")
        self._print("verdict: FAILED")
        self.exit_code = EXIT_CANNOT_RUN

    def _print(self, text: str) -> None:
        print(text, file=self.out, flush=True)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    report: StatusReport | None = None
    request_id: str | None = None


CONSOLE_USAGE = "The console runs `/cms-status [pool|server]`."


def refusal(text: str) -> str | None:
    """Why `text` does not run from the console, or None when it may (`/cms-status`): every Slack
    command gets a clear answer, before Redis or the topology is looked at."""
    words = text.split()
    if not words:
        return f"Type a command, e.g. `/cms-status`. {CONSOLE_USAGE}"
    name = words[0].lower()
    if name == "/cms-status":
        return None
    if name == "/cms-replicate":
        return ("`/cms-replicate` changes the deployment and runs only from Slack, where roles and the audit apply. "
                + CONSOLE_USAGE)
    if name == "/cms-doctor":
        return ("`/cms-doctor` runs here as `cmsbot doctor [pool|server]` (with the workers' WinRM settings). "
                + CONSOLE_USAGE)
    if name == "/cms-history":
        return ("`/cms-history` reads the audit log in Slack; here: `cmsbot audit [--since 24h] [--json]`. "
                + CONSOLE_USAGE)
    if name in commands.ELSEWHERE:
        return f"`{name}` {commands.ELSEWHERE[name]}. {CONSOLE_USAGE}"
    shown = "".join(c for c in name[:40] if c.isprintable() and c != "`")
    return (f"Unknown command `{shown}`. {CONSOLE_USAGE} The Slack commands are "
            + ", ".join(f"`{c}`" for c in commands.HELP) + ".")


def run_chat(hub: Hub, settings: Settings, topology: Topology, text: str, user: str,
             out: TextIO = sys.stdout) -> Outcome:
    """Run one command through the queue, printing its thread as it arrives."""
    if (why := refusal(text)) is not None:
        print(why, file=out)
        return Outcome(EXIT_CANNOT_RUN)
    try:
        command = commands.parse(text, topology)
    except commands.CommandError as e:
        print(str(e), file=out)
        return Outcome(EXIT_CANNOT_RUN)
    if not workers_listening(hub):
        print(f"No worker is listening on the `{hub.keys.queue(STATUS)}` queue of "
              f"{_redis_name(hub.redis)}, so nothing would "
              "answer. Start one with `cmsbot worker` (same REDIS_URL and CMSBOT_TOPOLOGY) and try again.", file=out)
        return Outcome(EXIT_CANNOT_RUN)
    request = Request(command=command.name, args=command.args, user=user, origin="console")
    thread = ConsoleThread(request, out)
    reporter = Reporter(hub, group=f"console:{request.id}", consumer="console", deliver=thread.deliver,
                        wants=lambda e: e.request == request.id, start="$")
    try:
        submit(hub, request, STATUS_JOB, kind=STATUS,
               timeout=settings.job_timeout(len(topology.servers)), on_failure=Callback(FAILURE_CALLBACK))
        thread.parent()
        deadline = time.monotonic() + settings.chat_timeout
        while thread.exit_code is None and time.monotonic() < deadline:
            reporter.poll(block_ms=500)
        if thread.exit_code is None:
            print(f"No answer within {settings.chat_timeout:g} s; the job may still finish (request {request.id}).",
                  file=out)
            return Outcome(EXIT_CANNOT_RUN, request_id=request.id)
        return Outcome(thread.exit_code, thread.report, request.id)
    finally:
        reporter.destroy()
        reporter.forget(request.id)


def _redis_name(conn: redis.Redis) -> str:
    kw = conn.connection_pool.connection_kwargs
    return f"Redis at {kw.get('host', '?')}:{kw.get('port', '?')}"
