"""The test side of the process harness (lab/processes.py): the session's mark, scaled timing,
stopping that fails a test when a SIGKILL was needed, and the pools of the fixtures.

Every process the suite starts carries this test session's mark in its environment (so the
session can prove at its end that none outlived it): the mark is set in this process's
environment on import, and the harness starts children with it. Deadlines scale with one
factor, CMSBOT_TEST_TIME_FACTOR (default 1): raise it on a machine much slower than a quiet
2-core one.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from lab import processes
from lab.processes import (
    GRACE,
    LAB_PASSWORD,
    LAB_USER,
    Managed,
    alive,
    children_of,
    cmsbot,
    descendants,
    kill_all,
    redis_answers,
)

__all__ = ["GRACE", "LAB_PASSWORD", "LAB_USER", "Managed", "alive", "children_of", "cmsbot", "descendants",
           "kill_all"]

T = TypeVar("T")

TIME_FACTOR = float(os.environ.get("CMSBOT_TEST_TIME_FACTOR") or 1)
SESSION_MARK = "CMSBOT_TEST_SESSION"
# Inherited by every child process, and by theirs.
SESSION_ID = os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)


def scaled(seconds: float) -> float:
    return seconds * TIME_FACTOR


HOST_DEADLINE = scaled(4.0)  # the workers' per-server deadline: what a hung host costs a test
# a worker for the Slack tests: short waits, approvals and deadlines; the session's Redis runs without
# AOF (a test that restarts Redis uses one with it), so CMS changes run with that risk accepted
SLACK_WORKER = dict(host_deadline=str(HOST_DEADLINE), replication_wait="1", approval_ttl=str(scaled(8)),
                    failover_poll="0.5", failover_deadline=str(scaled(20)), cooldown="60",
                    allow_volatile_redis="1")


def wait_until(cond: Callable[[], T], timeout: float, message: str) -> T:
    """Poll `cond` until it is truthy (returning its value) or the scaled deadline passes (a failed test)."""
    try:
        return processes.wait_until(cond, scaled(timeout), message)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


def marked_processes() -> list[int]:
    """Live processes (other than this one) that carry this session's mark."""
    mark = f"{SESSION_MARK}={SESSION_ID}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if mark in f.read().split(b"\0") and alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def stop_cleanly(*procs: Managed) -> None:
    """Stop them all; fail if any had to be killed (a process that ignores SIGTERM is a bug)."""
    killed = [k for p in procs for k in p.stop()]
    assert not killed, f"had to SIGKILL after {scaled(GRACE):.0f} s: {killed}"


# -- redis-server ----------------------------------------------------------------------------


class _OwnRedis(processes.RedisServer):
    factor = TIME_FACTOR


class RedisServer:
    """Our own `redis-server` on a free port when the binary is present, else REDIS_URL (never flushed)."""

    DATABASES = 4096

    def __init__(self, workdir: Path, durable: bool = False, **options: Any):
        """`options`: processes.RedisServer's (requirepass, args, auth), for a server of our own only."""
        self.workdir = workdir
        self.durable = durable
        self.owned = shutil.which("redis-server") is not None
        self.server: processes.RedisServer | None = None
        self._next_db = 0
        if self.owned:
            self.server = _OwnRedis(workdir, durable=durable, databases=self.DATABASES, **options)
            self.url = self.server.url
        else:
            self.url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            if not redis_answers(self.url):
                raise RuntimeError("no redis-server binary and REDIS_URL does not answer")

    def start(self) -> None:
        """Start our own server again (after stop()), on the same port and files."""
        assert self.server is not None, "not our own redis-server"
        self.server.start()

    def stop(self) -> list[str]:
        return self.server.stop() if self.server else []

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def fresh_db(self) -> str:
        """The URL of a database no test has used: each integration test gets its own.
        Without our own server the one database of REDIS_URL is shared (and never flushed)."""
        if not self.owned:
            return self.url
        self._next_db += 1
        if self._next_db >= self.DATABASES:
            raise RuntimeError(f"more than {self.DATABASES} databases asked for in one session")
        url = f"{self.url.rsplit('/', 1)[0]}/{self._next_db}"
        redis.Redis.from_url(url).flushdb()
        return url


# -- the lab and the workers -----------------------------------------------------------------


class LabProcess(processes.LabProcess):
    """`cmsbot lab` on a free port, with its control API, on the suite's time factor. It speaks the
    product's default path, HTTPS with a CA of its own (and NTLM or Basic), unless `tls=False`."""

    factor = TIME_FACTOR

    def __init__(self, workdir: Path, *args: str, password: str = LAB_PASSWORD, tls: bool = True):
        super().__init__(workdir, *args, user=LAB_USER, password=password, tls=tls)


class WorkerProcess(processes.WorkerProcess):
    """`cmsbot worker` on `redis_url`, talking to the lab; returns once it listens."""

    factor = TIME_FACTOR

    def __init__(self, workdir: Path, redis_url: str, topology: Path, *, _ready: bool = True, **settings: str):
        super().__init__(workdir, redis_url, topology, settings, ready=_ready)

    @classmethod
    def spawned(cls, workdir: Path, redis_url: str, topology: Path, settings: dict[str, str]) -> WorkerProcess:
        """Started but not waited for: see WorkerPool."""
        return cls(workdir, redis_url, topology, _ready=False, **settings)


class WorkerPool:
    """Hands each test a worker of its own on a fresh database, started while the previous
    test ran: a worker takes a second or two to import and register, and the suite needs dozens."""

    def __init__(self, redis_server: RedisServer, workdir: Path):
        self.redis_server, self.workdir = redis_server, workdir
        self.spares: dict[tuple, WorkerProcess] = {}

    def _spawn(self, topology: Path, settings: dict[str, str]) -> WorkerProcess:
        return WorkerProcess.spawned(self.workdir, self.redis_server.fresh_db(), topology, settings)

    def take(self, topology: Path, **settings: str) -> WorkerProcess:
        key = (str(topology), tuple(sorted(settings.items())))
        worker = self.spares.pop(key, None) or self._spawn(topology, settings)
        self.spares[key] = self._spawn(topology, settings)  # the next test's, starting now
        return worker.wait_ready()

    def close(self) -> list[str]:
        return [k for w in self.spares.values() for k in w.stop()]


def jobs_in_flight(url: str) -> int:
    """Jobs on this database that have not ended: queued, taken by a worker, or running. Read from
    each job's own status, so a job between its queue and the started registry still counts."""
    conn = redis.Redis.from_url(url)
    ended = {b"finished", b"failed", b"stopped", b"canceled"}
    return sum(1 for key in conn.scan_iter("rq:job:*")
               if conn.type(key) == b"hash" and conn.hget(key, "status") not in ended)


def wait_idle(url: str, timeout: float = 60) -> None:
    """Wait until every job enqueued on this database has finished: then counting what they did is final."""
    wait_until(lambda: jobs_in_flight(url) == 0, timeout, "jobs still queued or running")


def events_delivered(url: str, group: str) -> bool:
    """The consumer group has acknowledged every event appended so far."""
    from hub.keys import Keys

    conn, stream = redis.Redis.from_url(url, decode_responses=True), Keys().events
    if not conn.exists(stream):
        return True
    last = conn.xinfo_stream(stream)["last-generated-id"]
    mine = [g for g in conn.xinfo_groups(stream) if g["name"] == group]
    return bool(mine) and mine[0]["pending"] == 0 and mine[0]["last-delivered-id"] == last


def wait_settled(url: str, group: str = "slack", timeout: float = 60) -> None:
    """No job queued or running and every event delivered: what happened can now be counted."""
    wait_until(lambda: jobs_in_flight(url) == 0 and events_delivered(url, group), timeout,
               "jobs still running or events not yet delivered")
