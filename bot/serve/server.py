"""`cmsbot bot`: the Slack app, and its reporter in a child process it supervises.

Socket Mode when an app-level token is configured (no inbound port), else the
HTTP endpoint /slack/events (Bolt verifies every request's signature), served by
gunicorn (bot/serve/http.py): its master runs in this process and keeps both the
serving processes and the reporter running.

Telemetry (hub/telemetry.py): /metrics, /healthz and /readyz on the HTTP port, and on
CMSBOT_METRICS_PORT when it is set (in Socket Mode, the only place: a small server in
this process). The bot's processes record into one multiprocess directory, made here.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import redis
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from slack_bolt.error import BoltError
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot.config import SlackSettings
from bot.delivery.home import HomePublisher, Refresher
from bot.delivery.reporter import Hooks, Reporter
from bot.delivery.slack_thread import SlackThreads
from bot.listeners import Deps
from bot.roles import Roles
from bot.serve.app import build_app, web_client
from bot.serve.http import Limits, endpoint, serve
from cms import logs
from cms import topology as topo
from cms.messages import ApprovalChanged
from cms.settings import Settings
from cms.topology import Topology
from hub import approvals, telemetry
from hub.contract import Event, append_audit, append_event, workers_on
from hub.keys import Hub, hub_for
from hub.liveness import lost_reason, watch

log = logging.getLogger("cmsbot.bot")

REPORTER_GROUP = "slack"
REPORTER_NICENESS = 5
WORKERS_FRESH = 5.0
EXPIRY_EVERY = 2.0
SHUTDOWN_GRACE = 2.5  # seconds the reporter may take, after SIGTERM, to finish the delivery in flight
REPORTER_STOP_WAIT = 3.5  # the bot waits this long for its reporter after SIGTERM (then SIGKILL)
SOCKET_CLOSE_WAIT = 1.5
SLACK_DOWN = ("service_unavailable", "internal_error", "fatal_error", "ratelimited", "request_timeout")
# Set by the bot for the reporter it starts (see _exit_with_parent).
PARENT_ENV = "CMSBOT_REPORTER_PARENT"


def missing_settings(slack: SlackSettings) -> list[str]:
    missing = [] if slack.bot_token.get_secret_value() else ["CMSBOT_SLACK_BOT_TOKEN"]
    if not slack.app_token.get_secret_value() and not slack.signing_secret.get_secret_value():
        missing.append("CMSBOT_SLACK_SIGNING_SECRET (or CMSBOT_SLACK_APP_TOKEN for Socket Mode)")
    return missing


def run(settings: Settings, slack: SlackSettings, conn: redis.Redis, topology: Topology) -> int:
    """Serve Slack, the bot's processes recording their metrics into one directory (removed at the end)."""
    metrics_dir, owner = telemetry.multiprocess(), os.getpid()
    try:
        return _serve(settings, slack, conn, topology)
    finally:
        telemetry.remove_directory(metrics_dir, owner)  # in this process only: a serving process unwinds here too


def _serve(settings: Settings, slack: SlackSettings, conn: redis.Redis, topology: Topology) -> int:
    """Serve Slack (HTTP or Socket Mode) here; deliver in a supervised child process, so
    acks never wait behind the reporter's work. Over HTTP, gunicorn's master runs in this
    process: `http_processes` serving processes forked from it share the listening socket, so
    acks use every core, and it keeps the reporter running next to them."""
    stop = threading.Event()
    # until the serving loop installs its own: a SIGTERM while starting (Slack down) unwinds cleanly
    signal.signal(signal.SIGTERM, _exit_now)
    # The delivery group exists before the first command is acked: the reporter process
    # may take a moment to start, and must still see every event from here on.
    Reporter.ensure_group(hub_for(conn, settings), REPORTER_GROUP)
    if slack.app_token.get_secret_value():
        return _socket_mode(settings, slack, topology, stop)

    reporter = ReporterChild()
    reporter.keep()  # delivery starts now, even if Slack keeps the app waiting below
    try:
        app, roles, client = _build(settings, slack, topology, waiting=reporter.keep)
        health = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)

        def ready(address: str) -> None:
            print(f"cmsbot bot: listening on {address}/slack/events ({slack.http_processes} processes)", flush=True)

        def worker_started() -> None:  # in each serving process: its own refresh of the user groups
            threading.Thread(target=_refresh_groups, args=(roles, client, slack, threading.Event()), name="groups",
                             daemon=True).start()

        registry = telemetry.bot_registry(hub_for(health, settings))
        wsgi = endpoint(app, Limits.of(settings),
                        lambda path: telemetry.page(path, registry, lambda: telemetry.redis_answers(health)),
                        metrics_port=settings.metrics_port)
        serve(wsgi, settings, host=slack.http_host, port=slack.http_port, processes=slack.http_processes,
              sidecar=reporter, ready=ready, worker_started=worker_started)
    finally:
        reporter.stop()
    return 0


def _exit_now(*_: object) -> None:
    raise SystemExit(0)


def _socket_mode(settings: Settings, slack: SlackSettings, topology: Topology, stop: threading.Event) -> int:
    """Socket Mode: connect (and keep reconnecting) in the background; the main thread only waits
    for SIGTERM, then closes the connection and stops the reporter. Not slack_bolt's start(): it
    blocks the main thread for good in Event().wait()."""
    from slack_bolt.adapter.socket_mode import SocketModeHandler

    health = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    connected: list[SocketModeHandler] = []

    def ready() -> str | None:
        if (why := telemetry.redis_answers(health)) is not None:
            return why
        return None if connected and connected[0].client.is_connected() else "not connected to Slack"

    endpoints = None
    if settings.metrics_port:  # up while Slack keeps the app waiting: alive, not ready
        try:
            endpoints = telemetry.serve(settings.metrics_host, settings.metrics_port,
                                        telemetry.bot_registry(hub_for(health, settings)), ready)
        except OSError as e:
            print(f"cmsbot: cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port} "
                  f"(CMSBOT_METRICS_PORT): {e.strerror or e}", file=sys.stderr)
            return 2
    app, roles, client = _build(settings, slack, topology)
    threading.Thread(target=_refresh_groups, args=(roles, client, slack, stop), name="groups", daemon=True).start()
    supervisor = threading.Thread(target=_supervise_reporter, args=(stop,), name="reporter-supervisor", daemon=True)
    supervisor.start()
    handler = SocketModeHandler(app, slack.app_token.get_secret_value())
    connected.append(handler)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=_connect, args=(handler, stop), name="socket-mode-connect", daemon=True).start()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        # close() joins the connection's threads: bounded, a half-open connection must not hold the exit
        closing = threading.Thread(target=handler.close, name="socket-mode-close", daemon=True)
        closing.start()
        closing.join(SOCKET_CLOSE_WAIT)
        supervisor.join(REPORTER_STOP_WAIT + 1)
        if endpoints is not None:
            endpoints.shutdown()
    return 0


def _connect(handler, stop: threading.Event) -> None:
    delay = 1.0
    while not stop.is_set():
        try:
            handler.connect()
        except Exception as e:  # noqa: BLE001 - Slack unreachable, or refusing the app token: keep trying
            log.warning("cannot connect to Slack in Socket Mode (%s: %s); retrying in %.0f s", type(e).__name__, e,
                        delay)
            stop.wait(delay)
            delay = min(delay * 2, 60.0)
            continue
        if not stop.is_set():
            print("cmsbot bot: connected to Slack in Socket Mode", flush=True)
        return


def _build(settings: Settings, slack: SlackSettings, topology: Topology, waiting: Callable[[], None] | None = None):
    client = web_client(slack)
    roles = Roles(slack)
    # the listeners' own client: short timeouts, no retries, so a struggling Redis costs at
    # most about a second before the user gets a clear error instead of Slack's timeout
    fast = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    deps = Deps(hub=hub_for(fast, settings), settings=settings, slack=slack, topology=topology, roles=roles)
    delay = 1.0
    while True:  # Bolt checks the token with auth.test: a bot started while Slack is down waits for it
        try:
            return build_app(deps, client), roles, client
        except (BoltError, OSError) as e:
            if not _slack_down(e):
                raise  # a wrong or revoked token: say so and stop
            log.warning("Slack did not answer auth.test (%s); retrying in %.0f s", e.__context__ or e, delay)
            if waiting is not None:
                waiting()
            time.sleep(delay)
            delay = min(delay * 2, 30.0)


def _slack_down(e: Exception) -> bool:
    """Slack unreachable or failing (not refusing the token)."""
    if isinstance(e, OSError):
        return True
    cause = e.__context__  # Bolt raises its BoltError while handling auth.test's SlackApiError
    if not isinstance(cause, SlackApiError) or cause.response is None:
        return isinstance(cause, OSError)
    status = cause.response.status_code
    return status == 429 or status >= 500 or cause.response.get("error") in SLACK_DOWN


class ReporterChild:
    """One `cmsbot reporter` child of this process: started again whenever it exits, stopped with
    the bot. Over HTTP, gunicorn's master calls it from its loop (bot/serve/http.py)."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None

    def keep(self) -> None:
        if self.child is not None and self.child.poll() is None:
            return
        if self.child is not None:
            log.warning("the reporter exited with %s; restarting it", self.child.returncode)
        self.child = subprocess.Popen([sys.executable, "-m", "bot.cli", "reporter"], stdin=subprocess.DEVNULL,
                                      env=dict(os.environ, **{PARENT_ENV: str(os.getpid())}))

    def reap(self) -> None:
        if self.child is not None:
            self.child.poll()

    def terminate(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is None or child.poll() is not None:
            return
        child.terminate()
        try:
            child.wait(REPORTER_STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _supervise_reporter(stop: threading.Event) -> None:
    """Keep one `cmsbot reporter` child running while the bot runs; stop it with the bot."""
    reporter = ReporterChild()
    try:
        while not stop.is_set():
            reporter.keep()
            stop.wait(1.0)
    finally:
        reporter.stop()


def run_reporter(settings: Settings, slack: SlackSettings, conn: redis.Redis) -> int:
    """`cmsbot reporter`: Slack delivery, the dead-job watchdog and approval expiry."""
    client = web_client(slack)
    # few retries inside one call: the reporter holds what Slack does not take and retries it with its
    # own backoff, for hours if need be, without blocking the others (or a shutdown) for long
    client.retry_handlers = [ConnectionErrorRetryHandler(max_retry_count=1),
                             RateLimitErrorRetryHandler(max_retry_count=2), ServerErrorRetryHandler(max_retry_count=1)]
    stop = threading.Event()

    def on_sigterm(*_: object) -> None:
        stop.set()
        timer = threading.Timer(SHUTDOWN_GRACE, _hand_back)
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_sigterm)
    if parent := os.environ.get(PARENT_ENV):
        _exit_with_parent(int(parent))
    # acks are latency-critical (Slack allows 3 s), delivery is not: under CPU contention the
    # serving processes go first
    os.nice(REPORTER_NICENESS)
    seen: dict[str, tuple[float, int]] = {}
    hub = hub_for(conn, settings)

    def listening(kind: str) -> int:
        """Workers on the queue, re-read at most every few seconds (not per event)."""
        at, count = seen.get(kind, (0.0, 0))
        if time.monotonic() - at > WORKERS_FRESH:
            count = workers_on(hub, kind)
            seen[kind] = (time.monotonic(), count)
        return count

    threads = SlackThreads(hub, client, listening)
    # the App Home of those who opened it lately, published again (debounced) when an event changes it
    roles = Roles(slack)  # who may approve: the Home says what each viewer may do about a card
    refresher = Refresher(HomePublisher(hub, settings, lambda: topo.load(settings.topology), client, roles)).start()
    hooks = Hooks(late=lambda event, seconds: _for_request(event.request, threads.late, event, seconds),
                  lost=lambda rid: _for_request(rid, threads.lost, rid), in_flight=lambda rid: _in_flight(hub, rid),
                  seen=refresher.seen)
    background = [threading.Thread(target=_expire_approvals, args=(hub, stop), name="expiry", daemon=True),
                  threading.Thread(target=watch, args=(hub, lambda rid, cmd: lost_reason(hub, rid, cmd,
                                                                                          settings.cooldown), stop),
                                   kwargs={"stale": settings.heartbeat_stale}, name="watchdog", daemon=True),
                  threading.Thread(target=_refresh_groups, args=(roles, client, slack, stop), name="groups",
                                   daemon=True)]
    for t in background:
        t.start()
    _report(hub, threads, stop, settings, hooks)
    refresher.stop()
    log.info("reporter stopped")
    return 0


def _for_request(request_id: str, call: Callable[..., bool], *args: object) -> bool:
    """A Slack delivery step for one request: its id on every line logged meanwhile, the Slack calls'
    included; counted when Slack did not take it (held, and retried)."""
    with logs.request(request_id):
        done = call(*args)
    if not done:
        telemetry.delivery_failed("unavailable")
    return done


def _delivered(event: Event, deliver: Callable[[Event], bool]) -> bool:
    """The delivery of one event, as `_for_request`; a line once Slack has it."""
    with logs.request(event.request):
        done = deliver(event)
        if done:
            log.info("request %s: event %d (%s) delivered", event.request, event.seq, event.kind)
    if not done:
        telemetry.delivery_failed("unavailable")
    return done


def _hand_back() -> None:
    """SIGTERM came and the delivery in flight did not finish in time (Slack hanging): exit anyway.
    Its event stays unacknowledged in the group and is delivered after the restart; the Slack
    calls it had made are recorded, so only a call cut off mid-flight can be repeated."""
    log.warning("delivery did not finish within %.0f s of SIGTERM; exiting, the event in flight is delivered "
                "after the restart", SHUTDOWN_GRACE)
    sys.stderr.flush()
    os._exit(0)


def _in_flight(hub: Hub, request_id: str) -> bool:
    """May the request's job still append events: running (a fresh heartbeat) or queued in RQ?"""
    if hub.redis.zscore(hub.keys.running, request_id) is not None:
        return True
    try:
        job = Job.fetch(request_id, connection=hub.redis, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED,
                                             JobStatus.SCHEDULED)


def _exit_with_parent(parent: int) -> None:
    """A child of the bot stops, through its own SIGTERM path, once the bot is gone: a bot that
    was killed outright cannot stop it, and it would serve or deliver on as an orphan."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        log.warning("the bot that started this process (pid %s) is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _report(hub: Hub, threads: SlackThreads, stop: threading.Event, settings: Settings, hooks: Hooks) -> None:
    """Deliver events to Slack until stopped; survive Redis restarts (and the loss of the group,
    which the reporter creates again itself). One reporter for the process's life: what it holds
    for Slack and the requests it watches must outlive a Redis outage."""
    reporter = None
    while not stop.is_set():
        try:
            if reporter is None:
                reporter = Reporter(hub, group=REPORTER_GROUP, consumer=socket.gethostname(),
                                    deliver=lambda event: _delivered(event, threads.deliver), wants=threads.wants,
                                    start="$",
                                    patience=settings.delivery_patience, backoff=settings.delivery_backoff,
                                    late_after=settings.delivery_late_note, keep=settings.events_keep,
                                    lost_grace=settings.heartbeat_stale, hooks=hooks)
            reporter.poll(block_ms=1000)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("reporter: Redis unavailable (%s); retrying", type(e).__name__)
            stop.wait(1.0)
        except Exception:  # noqa: BLE001 - a bad event must not stop delivery of the others
            log.exception("reporter: unexpected error; continuing")
            stop.wait(1.0)


def _expire_approvals(hub: Hub, stop: threading.Event) -> None:
    """Close approval cards whose time ran out, so the card says so."""
    while not stop.wait(EXPIRY_EVERY):
        try:
            for approval_id in approvals.expire_due(hub):
                a = approvals.load(hub, approval_id)
                append_audit(hub, request=a.request, approval=approval_id, what="approval", result="expired")
                append_event(hub, a.request, ApprovalChanged(approval=approval_id, outcome="expired"))
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("expiry: Redis unavailable; retrying")
        except Exception:  # noqa: BLE001
            log.exception("expiry: unexpected error; continuing")


def _refresh_groups(roles: Roles, client, slack: SlackSettings, stop: threading.Event) -> None:
    while not stop.is_set():
        roles.refresh(client)
        stop.wait(slack.group_refresh)
