"""Telemetry for the operators: the Prometheus metrics, and /metrics, /healthz and /readyz.

Where each number comes from:

- What happens in a process is recorded there, when it happens: slash commands by command and
  outcome, and how long their ack took (the bot: bot/serve/app.py, the outcome noted by the
  listeners' shared helpers); Slack delivery failures and lag (the reporter: bot/serve/server.py,
  bot/delivery/); each job's duration by kind and outcome, and the host errors it met (the worker:
  workers/rq_worker.py).
- What is state of the whole deployment is read from Redis when /metrics is scraped, by one
  collector (`Fleet`): the queues' depth, approvals pending, open incidents, the replicas behind in
  the last status check, the events not delivered yet, what delivery lost or gave up. Nothing of it
  is kept in a process to go stale, and every process that serves /metrics reports the same values:
  aggregate them across instances with max(), never sum().

Why the bot and the workers record differently:

- The bot is several long-lived processes: gunicorn's serving processes (or the one Socket Mode
  process) and the reporter it starts. They record in prometheus_client's multiprocess mode, into a
  directory of their own that the bot creates when it starts (`multiprocess()`) and removes when it
  stops, so whichever process answers /metrics reports the sum of them all; a serving process that
  is replaced leaves its counts behind in its file, as counters must.
- A worker runs each job in a work-horse, a fork that lives for one job. What a horse counted in
  memory dies with it, and in multiprocess mode every job would leave files behind that each scrape
  reads again, more every day. So the horse records nothing: the worker's main process, which waits
  for every horse, times the job, reads its outcome and its result (which RQ keeps in Redis) when
  the horse ends, and records them in its own memory (`job_ended`); the replicas behind in a status
  check's result are deployment state, and go to Redis for `Fleet` (`note_status`).

Every metric is labelled: its values are made at the first `.labels()`, after `multiprocess()` has
chosen how they are kept. Label values come from fixed sets (commands, outcomes, kinds), so nothing a
user types or Redis holds can multiply the series.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socketserver
import tempfile
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cms.messages import KINDS
from cms.models import HostErrorKind, StatusReport
from cms.watch import open_incidents as still_open
from hub import incidents
from hub.contract import queues
from hub.keys import Hub

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_DIRECTORY = "cmsbot-metrics-"  # + the bot's pid + "-" + a random part, in the temporary directory
METRICS_PATH, HEALTH_PATH, READY_PATH = "/metrics", "/healthz", "/readyz"
# what a slash command came to (README, Telemetry): noted by the listeners' helpers, "answered" when none was
OUTCOMES = ("started", "merged", "limited", "duplicate", "refused", "invalid", "answered", "rejected", "error")
HOST_ERROR_KINDS = frozenset(k.value for k in HostErrorKind)
_REASON = re.compile(r"^[a-z_]{1,40}$")

REQUESTS = Counter("cmsbot_requests_total", "Slash commands the bot answered, by command and outcome",
                   ["command", "outcome"])
ACK_SECONDS = Histogram("cmsbot_ack_seconds", "Seconds from a slash command reaching the app to its ack being ready",
                        ["command"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0))
JOB_SECONDS = Histogram("cmsbot_job_seconds", "Seconds a job ran in the worker, by kind and outcome",
                        ["kind", "outcome"],
                        buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
HOST_ERRORS = Counter("cmsbot_host_errors_total", "Servers a status check could not read, by kind of error",
                      ["kind"])
DELIVERY_FAILURES = Counter("cmsbot_slack_delivery_failures_total",
                            "Deliveries to Slack that failed: unavailable (held and retried) or refused (for good)",
                            ["reason"])
DELIVERY_LAG = Histogram("cmsbot_slack_delivery_lag_seconds",
                         "Seconds from an event's append to its delivery to Slack, by kind of event", ["kind"],
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400))


# -- where it happens -----------------------------------------------------------------------------

@dataclass
class Handled:
    """One slash command being answered: what it came to, and how long its ack took (once done)."""

    outcome: str = "answered"
    seconds: float = 0.0


_HANDLING: ContextVar[Handled | None] = ContextVar("cmsbot_command_handled", default=None)


def outcome(name: str) -> None:
    """What the slash command being answered came to (one of OUTCOMES); the last noted wins. A no-op
    outside `command()` (a button, the console)."""
    handled = _HANDLING.get()
    if handled is not None:
        handled.outcome = name


@contextmanager
def command(name: str) -> Iterator[Handled]:
    """Count one slash command and time its ack: the block is its handling, up to the ack being
    ready. Its outcome is "answered" unless something notes another, "error" when the block raises."""
    handled = Handled()
    token = _HANDLING.set(handled)
    started = time.perf_counter()
    try:
        yield handled
    except BaseException:
        handled.outcome = "error"
        raise
    finally:
        _HANDLING.reset(token)
        handled.seconds = time.perf_counter() - started
        REQUESTS.labels(name, handled.outcome).inc()
        ACK_SECONDS.labels(name).observe(handled.seconds)


def job_ended(kind: str, outcome: str, seconds: float, result: Any) -> None:
    """A job ended (recorded by the worker's main process): its duration, and the host errors its
    result counts by kind (`report_summary`)."""
    JOB_SECONDS.labels(kind, outcome).observe(seconds)
    kinds = result.get("host_error_kinds") if isinstance(result, dict) else None
    for kind_, n in (kinds.items() if isinstance(kinds, dict) else ()):
        if kind_ in HOST_ERROR_KINDS and isinstance(n, int) and n > 0:
            HOST_ERRORS.labels(kind_).inc(n)


def report_summary(report: StatusReport) -> dict[str, Any]:
    """What a status job's result carries for the metrics: its host errors by kind, and the replicas
    the CMS says are not up to date (None when the CMS could not be read)."""
    behind = None if report.cms is None else sum(not r.up_to_date for r in report.cms.replicas)
    return {"host_error_kinds": dict(Tally(e.kind.value for e in report.host_errors)), "replicas_behind": behind}


def note_status(hub: Hub, result: Any) -> None:
    """Keep what a status check found about the replicas, as deployment state (`Fleet` exports it)."""
    behind = result.get("replicas_behind") if isinstance(result, dict) else None
    if isinstance(behind, int) and not isinstance(behind, bool):
        hub.redis.hset(hub.keys.last_status, mapping={"replicas_behind": behind, "at": f"{time.time():.3f}"})


def delivery_failed(reason: str) -> None:
    """A delivery to Slack failed: `unavailable` (Slack busy or unreachable: held, retried) or
    `refused` (Slack refused it for good: logged and skipped)."""
    DELIVERY_FAILURES.labels(reason).inc()


def delivered(kind: str, entry_id: bytes | str) -> None:
    """An event reached Slack: its lag since the append (the stream entry's id is its time in ms)."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    appended = int(text.partition("-")[0]) / 1000
    DELIVERY_LAG.labels(kind if kind in KINDS else "other").observe(max(0.0, time.time() - appended))


# -- the deployment's state, read at scrape time --------------------------------------------------


def open_incidents(hub: Hub) -> int:
    """Incidents the watch has open (hub/incidents.py holds them)."""
    return len(still_open(incidents.load(hub)))


class Fleet(Collector):
    """The deployment's state, from Redis, when scraped: one pipelined round trip (and XINFO GROUPS),
    on a client with short timeouts. A Redis that does not answer gives cmsbot_redis_up 0 and nothing
    else of this collector: the scrape itself still succeeds."""

    def __init__(self, hub: Hub):
        self.hub = hub

    def describe(self) -> list[Metric]:
        return []  # nothing to check for duplicates: registering it reads nothing

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cmsbot_redis_up", "1 when Redis answered this scrape, else 0")
        try:
            found = self._read()
        except (redis.RedisError, OSError):
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from found

    def _read(self) -> list[Metric]:
        hub, keys = self.hub, self.hub.keys
        kinds = {q.key: q.name.removeprefix(f"{keys.namespace}-") for q in queues(hub)}  # every queue a worker takes
        with hub.redis.pipeline(transaction=False) as pipe:
            for key in kinds:
                pipe.llen(key)
            pipe.zcard(keys.approvals_pending)
            pipe.hgetall(keys.last_status)
            pipe.hgetall(keys.delivery_counts)
            replies = pipe.execute()
        depths, (pending, last, counts) = replies[:len(kinds)], replies[len(kinds):]
        try:
            groups = cast(list[dict[str, Any]], hub.redis.xinfo_groups(keys.events))
        except redis.ResponseError:  # no events stream yet
            groups = []

        depth = GaugeMetricFamily("cmsbot_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        for kind, n in zip(kinds.values(), depths, strict=True):
            depth.add_metric([kind], int(n))
        metrics: list[Metric] = [depth]
        metrics.append(GaugeMetricFamily("cmsbot_pending_approvals", "Failover and recovery approval cards still open",
                                         value=int(pending)))
        metrics.append(GaugeMetricFamily("cmsbot_open_incidents", "Incidents the watch has open",
                                         value=open_incidents(hub)))
        last = {_text(k): _text(v) for k, v in cast(dict[bytes, bytes], last).items()}
        if last.get("replicas_behind", "").isdigit():
            metrics.append(GaugeMetricFamily("cmsbot_replicas_behind", "Replicas not up to date in the last "
                                             "status check that could read the CMS",
                                             value=int(last["replicas_behind"])))
            metrics.append(GaugeMetricFamily("cmsbot_replicas_behind_checked_timestamp_seconds",
                                             "When that status check ended (Unix time)",
                                             value=float(last.get("at") or 0)))
        waiting = GaugeMetricFamily("cmsbot_events_waiting", "Events a consumer group (the reporter's: slack) has "
                                    "not acknowledged yet, read or not", labels=["group"])
        for group in groups:
            lag = group.get("lag")
            waiting.add_metric([_text(group["name"])], int(group.get("pending") or 0) + int(lag or 0))
        metrics.append(waiting)
        problems = CounterMetricFamily("cmsbot_delivery_problems", "What delivery lost or gave up, by reason "
                                       "(the namespace's delivery counts)", labels=["reason"])
        for reason, n in cast(dict[bytes, bytes], counts).items():
            if _REASON.match(name := _text(reason)) and _text(n).isdigit():
                problems.add_metric([name], int(n))
        metrics.append(problems)
        return metrics


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the registries ----------------------------------------------------------------------------------


def multiprocess() -> str:
    """Record in prometheus_client's multiprocess mode, into a new directory that this process's forks
    (gunicorn's serving processes) and the children given its environment (the reporter) share.
    Call it before anything is recorded; returns the directory (`remove_directory` at the end).
    Directories left by bots that were killed before they could remove theirs go first."""
    for old in Path(tempfile.gettempdir()).glob(f"{_DIRECTORY}*-*"):
        pid = old.name.removeprefix(_DIRECTORY).split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(old, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{_DIRECTORY}{os.getpid()}-")
    os.environ[MULTIPROC_ENV] = path
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def remove_directory(path: str, owner: int) -> None:
    """Remove the multiprocess directory, from the process that made it only (a fork unwinding the
    same stack must not)."""
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


def bot_registry(hub: Hub) -> CollectorRegistry:
    """What the bot's /metrics reports: the sum of its processes' files, and the deployment's state."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        MultiProcessCollector(registry)
    registry.register(Fleet(hub))
    return registry


def worker_registry(hub: Hub) -> CollectorRegistry:
    """What a worker's /metrics reports: its own metrics (and the process's), and the deployment's state."""
    from prometheus_client import REGISTRY

    REGISTRY.register(Fleet(hub))
    return REGISTRY


# -- the endpoints ------------------------------------------------------------------------------------

Ready = Callable[[], str | None]  # None: ready; else why not


def page(path: str, registry: CollectorRegistry, ready: Ready) -> tuple[int, str, bytes] | None:
    """(status, content type, body) of /metrics, /healthz or /readyz; None for another path."""
    if path == METRICS_PATH:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)
    if path == HEALTH_PATH:  # liveness: the process answers
        return 200, "text/plain; charset=utf-8", b"ok\n"
    if path == READY_PATH:
        why = ready()
        return (200, "text/plain; charset=utf-8", b"ready\n") if why is None else (
            503, "text/plain; charset=utf-8", f"not ready: {why}\n".encode())
    return None


def redis_answers(conn: redis.Redis) -> str | None:
    """None when Redis answers a PING (on a client with short timeouts), else why not."""
    try:
        conn.ping()
    except (redis.RedisError, OSError) as e:
        return f"Redis does not answer ({type(e).__name__})"
    return None


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    block_on_close = False
    registry: CollectorRegistry
    ready: Ready


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        try:
            found = page(self.path.split("?", 1)[0], self.server.registry, self.server.ready)
        except Exception:  # noqa: BLE001 - a scrape must not take the server down
            found = 500, "text/plain; charset=utf-8", b"internal error\n"
        status, content_type, data = found or (404, "text/plain; charset=utf-8", b"not found\n")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape every few seconds is not worth a line


def serve(host: str, port: int, registry: CollectorRegistry, ready: Ready) -> _Server:
    """/metrics, /healthz and /readyz on a port of their own, from a daemon thread (a worker; the bot
    in Socket Mode). OSError when the port cannot be bound. `shutdown()` stops it."""
    server = _Server((host, port), _Handler)
    server.registry, server.ready = registry, ready
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="telemetry",
                     daemon=True).start()
    return server
