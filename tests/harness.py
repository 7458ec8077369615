"""Real processes for the integration tests and the benchmarks: redis-server,
the lab, RQ workers (the Slack bot is in `tests.slack_support`).

Every process started here is a `Managed` process: it carries this test
session's mark in its environment (so the session can prove at its end that
none outlived it), and it is stopped with SIGTERM, a grace period, then SIGKILL.
`stop()` returns what it had to kill, so a fixture can fail a test whose
processes did not stop by themselves.

Deadlines scale with one factor, CMSBOT_TEST_TIME_FACTOR (default 1): raise it
on a machine much slower than a quiet 2-core one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from bot.local_redis import answers, free_port

T = TypeVar("T")

LAB_USER = "cmsbot"
LAB_PASSWORD = "lab-test-password"
TIME_FACTOR = float(os.environ.get("CMSBOT_TEST_TIME_FACTOR") or 1)
SESSION_MARK = "CMSBOT_TEST_SESSION"
# Inherited by every child process, and by theirs.
SESSION_ID = os.environ.setdefault(SESSION_MARK, uuid.uuid4().hex)
GRACE = 10.0  # seconds a process has to exit after SIGTERM


def scaled(seconds: float) -> float:
    return seconds * TIME_FACTOR


HOST_DEADLINE = scaled(4.0)  # the workers' per-server deadline: what a hung host costs a test
# a worker for the Slack tests: short waits, approvals and deadlines
SLACK_WORKER = dict(host_deadline=str(HOST_DEADLINE), replication_wait="1", approval_ttl=str(scaled(8)),
                    failover_poll="0.5", failover_deadline=str(scaled(20)), cooldown="60")


def wait_until(cond: Callable[[], T], timeout: float, message: str) -> T:
    """Poll `cond` until it is truthy (returning its value) or the scaled deadline passes."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {scaled(timeout):.0f} s)")
        time.sleep(0.05)


# -- processes -------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (an RQ worker's work-horse runs in a session of its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) and stat[1] == pid:
            out.append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children_of(todo.pop())
        found += kids
        todo += kids
    return found


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


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


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        return f"{pid} ({argv})"
    except OSError:
        return str(pid)


def kill_all(pids: list[int]) -> list[str]:
    """SIGKILL what is still alive of `pids`; returns their descriptions."""
    killed = []
    for pid in pids:
        if alive(pid):
            killed.append(_describe(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return killed


class Managed:
    """One process started by the suite, with its log."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path):
        self.log = log
        self.env = env
        self.argv = argv
        self.orphans: list[int] = []  # descendants left by a deliberate kill(); they must exit too
        self._tree: list[int] | None = None
        self._deadline = 0.0
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen:
        with open(self.log, "a") as out:
            return subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT)

    def restart(self) -> None:
        self._tree = None
        self.proc = self._spawn()

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL this process alone, as a power cut would; its children must then exit by themselves."""
        self.orphans += descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """Send SIGTERM now (and remember what must exit with it); stop() waits."""
        if self._tree is None:
            self._tree = [*descendants(self.proc.pid), *self.orphans]
            self._deadline = time.monotonic() + scaled(GRACE)
            if self.running:
                self.proc.terminate()

    def stop(self) -> list[str]:
        """SIGTERM, wait for it and its descendants, SIGKILL what is left; returns what had to be killed."""
        self.terminate()
        tree, deadline = self._tree or [], self._deadline
        self._tree = None
        while time.monotonic() < deadline and (self.running or any(alive(p) for p in tree)):
            time.sleep(0.05)
        killed = kill_all([self.proc.pid, *tree]) if self.running or any(alive(p) for p in tree) else []
        self.proc.wait()
        return killed


def stop_cleanly(*processes: Managed) -> None:
    """Stop them all; fail if any had to be killed (a process that ignores SIGTERM is a bug)."""
    killed = [k for p in processes for k in p.stop()]
    assert not killed, f"had to SIGKILL after {scaled(GRACE):.0f} s: {killed}"


def cmsbot(*args: str) -> list[str]:
    return [sys.executable, "-m", "bot.cli", *args]


# -- redis-server ----------------------------------------------------------------------------


class RedisServer:
    """Our own `redis-server` on a free port when the binary is present, else REDIS_URL (never flushed)."""

    DATABASES = 4096

    def __init__(self, workdir: Path, durable: bool = False):
        self.workdir = workdir
        self.durable = durable
        self.owned = shutil.which("redis-server") is not None
        self.proc: Managed | None = None
        self._next_db = 0
        if self.owned:
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.start()
        else:
            self.url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            if not answers(self.url):
                raise RuntimeError("no redis-server binary and REDIS_URL does not answer")

    def start(self) -> None:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = Managed(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                             "--databases", str(self.DATABASES), *durability, "--dir", str(self.workdir)],
                            dict(os.environ), self.workdir / "redis.log")
        wait_until(lambda: answers(self.url), 10, "redis-server did not start")

    def stop(self) -> list[str]:
        return self.proc.stop() if self.proc else []

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


class LabProcess(Managed):
    """`cmsbot lab` on a free port, with its control API."""

    def __init__(self, workdir: Path, *args: str, password: str = LAB_PASSWORD):
        self.topology = workdir / "topology.yaml"
        env = dict(os.environ, CMSBOT_WINRM_USERNAME=LAB_USER, CMSBOT_WINRM_PASSWORD=password)
        super().__init__(cmsbot("lab", "--port", "0", "--topology-out", str(self.topology), *args), env,
                         workdir / "lab.log")
        wait_until(lambda: "lab ready" in self.text() or not self.running, 30, "lab did not start")
        if not self.running:
            raise RuntimeError(self.text())
        first = self.topology.read_text().splitlines()[0]
        self.base = first.split("control API: ")[1].rstrip("/").rsplit("/_lab", 1)[0]

    def _call(self, method: str, path: str, doc: dict | None = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=scaled(10)) as resp:
            return json.loads(resp.read())

    def scenarios(self, *specs: str) -> None:
        """Reset the lab to a new deployment with these scenarios (and zeroed statistics)."""
        self._call("POST", "/_lab/scenarios", {"scenarios": list(specs)})

    def stats(self) -> dict:
        return self._call("GET", "/_lab/stats")

    def probe_count(self, probe: str) -> int:
        return [c["probe"] for c in self.stats()["commands"]].count(probe)


class WorkerProcess(Managed):
    """`cmsbot worker` on `redis_url`, talking to the lab; returns once it listens."""

    def __init__(self, workdir: Path, redis_url: str, topology: Path, **settings: str):
        self._spawn_worker(workdir, redis_url, topology, settings)
        self.wait_ready()

    @classmethod
    def spawned(cls, workdir: Path, redis_url: str, topology: Path, settings: dict[str, str]) -> WorkerProcess:
        """Started but not waited for: see WorkerPool."""
        w = cls.__new__(cls)
        w._spawn_worker(workdir, redis_url, topology, settings)
        return w

    def _spawn_worker(self, workdir: Path, redis_url: str, topology: Path, settings: dict[str, str]) -> None:
        self.settings = settings
        self.redis_url = redis_url
        env = dict(os.environ, REDIS_URL=redis_url, CMSBOT_TOPOLOGY=str(topology),
                   CMSBOT_WINRM_USERNAME=LAB_USER, CMSBOT_WINRM_PASSWORD=LAB_PASSWORD,
                   CMSBOT_WINRM_TRANSPORT="basic", CMSBOT_WINRM_SCHEME="http", CMSBOT_LOG_LEVEL="INFO")
        env.update({f"CMSBOT_{k.upper()}": v for k, v in settings.items()})
        env.pop("CMSBOT_WINRM_PASSWORD_FILE", None)
        super().__init__(cmsbot("worker"), env, workdir / f"worker-{time.monotonic_ns()}.log")

    def wait_ready(self) -> WorkerProcess:
        wait_until(lambda: "Listening on" in self.text() or not self.running, 30, "worker did not start")
        assert self.running, self.text()
        return self


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
