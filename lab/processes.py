"""Child processes for `cmsbot demo`, the tests and the benchmarks: start, wait for, stop.

A `Managed` process writes its output to a log file, waits for a sign of readiness (or
fails with `DidNotStart`, its log's tail in the message, and is stopped), and stops with
SIGTERM, a grace period for it and every process it started, then SIGKILL; `stop()` returns
what it had to kill. Every wait scales with the class's `factor` (1 here; the tests raise it
on a slow machine). Linux only (/proc), like the rest of the lab.

On top: a private `redis-server`, `cmsbot lab` with its control API and `cmsbot worker`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis

from cms.settings import Settings

T = TypeVar("T")

GRACE = 10.0  # seconds a process has to exit after SIGTERM
LAB_USER = "cmsbot"
LAB_PASSWORD = "lab-test-password"

NO_REDIS = (
    "cmsbot needs Redis. REDIS_URL ({url}) did not answer and no `redis-server` binary is on PATH to start a "
    "private one. Either start Redis (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install "
    "redis`; Docker: `docker run -p 6379:6379 redis:7`) and point REDIS_URL at it, or install redis-server so the "
    "demo can start its own."
)


class DidNotStart(RuntimeError):
    """A child process exited, or was not ready in time; the message ends with its log's tail."""

    def __init__(self, what: str, log: str):
        super().__init__(f"{what} did not start: {log.strip()[-500:] or 'no output'}")
        self.log = log


def cmsbot(*args: str) -> list[str]:
    """The command line of `cmsbot <args>` with this interpreter."""
    return [sys.executable, "-m", "bot.cli", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping())
    except (redis.RedisError, OSError):
        return False


def wait_until(cond: Callable[[], T], timeout: float, message: str) -> T:
    """Poll `cond` until it is truthy (returning its value); TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} (after {timeout:.0f} s)")
        time.sleep(0.05)


# -- processes, read from /proc ------------------------------------------------------------


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


def describe(pid: int) -> str:
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
            killed.append(describe(pid))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return killed


class Managed:
    """One child process with its log."""

    factor = 1.0  # scales every wait and the grace period

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, *, factor: float | None = None):
        if factor is not None:
            self.factor = factor
        self.log = log
        self.env = env
        self.argv = argv
        self.orphans: list[int] = []  # descendants left by a deliberate kill(); they must exit too
        self._tree: list[int] | None = None
        self._deadline = 0.0
        self.proc = self._spawn()

    @property
    def grace(self) -> float:
        return GRACE * self.factor

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

    def wait_for(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        """Until `ready()`; if the process exits first or `timeout` (scaled) passes, it is stopped and
        DidNotStart says so with its log."""
        deadline = time.monotonic() + timeout * self.factor
        while not ready():
            if not self.running or time.monotonic() > deadline:
                self.stop()
                raise DidNotStart(what, self.text())
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL this process alone, as a power cut would; its children must then exit by themselves."""
        self.orphans += descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> None:
        """Send SIGTERM now (and remember what must exit with it); stop() waits."""
        if self._tree is None:
            self._tree = [*descendants(self.proc.pid), *self.orphans]
            self._deadline = time.monotonic() + self.grace
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


# -- redis-server, the lab, a worker --------------------------------------------------------


class RedisServer:
    """A `redis-server` of our own on a free loopback port, its files in `workdir`
    (FileNotFoundError without the binary). `start()` again after `stop()` keeps port and files.
    `requirepass`: it asks for that password; `args`: more of its options (e.g. `--aclfile`);
    `auth`: the "user:password" its `url` carries (default: the requirepass)."""

    factor = 1.0

    def __init__(self, workdir: Path, *, durable: bool = False, databases: int = 16, requirepass: str | None = None,
                 args: tuple[str, ...] = (), auth: str | None = None):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise FileNotFoundError("redis-server")
        self.workdir, self.durable, self.databases = workdir, durable, databases
        self.args = (*(("--requirepass", requirepass) if requirepass else ()), *args)
        self.port = free_port()
        auth = auth if auth is not None else (f":{requirepass}" if requirepass else "")
        self.url = f"redis://{auth + '@' if auth else ''}127.0.0.1:{self.port}/0"
        self.proc: Managed | None = None
        self.start()

    def start(self) -> None:
        assert self.binary is not None
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = Managed([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                             "--databases", str(self.databases), *durability, "--dir", str(self.workdir), *self.args],
                            dict(os.environ), self.workdir / "redis.log", factor=self.factor)
        self.proc.wait_for(lambda: redis_answers(self.url), 10, "redis-server")

    def stop(self) -> list[str]:
        return self.proc.stop() if self.proc else []

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


class LabProcess(Managed):
    """`cmsbot lab` on a free port, its topology in `workdir`, with its control API. Probes take
    `module_load_ms` to load the Lync/SkypeForBusiness module (0 here, so the suite's time does not
    grow; `cmsbot lab` itself defaults to a realistic 2000) unless `args` sets --module-load-ms.
    `tls=True` serves HTTPS (`--tls`, its files in `workdir`/lab-tls): `ca` is then the CA file a client
    trusts (CMSBOT_WINRM_CA_BUNDLE, pywinrm's ca_trust_path), else None. `auth`: the schemes accepted
    (`--auth`, e.g. "ntlm" or "basic,ntlm"; default the lab's own, both)."""

    def __init__(self, workdir: Path, *args: str, user: str = LAB_USER, password: str = LAB_PASSWORD,
                 env: dict[str, str] | None = None, module_load_ms: int = 0, tls: bool = False,
                 auth: str | None = None):
        self.topology = workdir / "topology.yaml"
        env = dict(os.environ if env is None else env, CMSBOT_WINRM_USERNAME=user, CMSBOT_WINRM_PASSWORD=password)
        if "--module-load-ms" not in args:
            args = ("--module-load-ms", str(module_load_ms), *args)
        if tls:
            args = (*args, "--tls")
        if auth is not None:
            args = (*args, "--auth", auth)
        super().__init__(cmsbot("lab", "--port", "0", "--topology-out", str(self.topology), *args), env,
                         workdir / "lab.log")
        self.wait_for(lambda: "lab ready" in self.text(), 30, "the lab")
        first = self.topology.read_text().splitlines()[0]
        self.base = first.split("control API: ")[1].split(";")[0].rstrip("/").rsplit("/_lab", 1)[0]
        ready = next(line for line in self.text().splitlines() if line.startswith("lab ready"))
        self.ca: Path | None = Path(ready.rsplit(", CA ", 1)[1]) if ", CA " in ready else None
        self.user, self.password = user, password

    def client_settings(self, **overrides: Any) -> Settings:
        return client_settings(self.topology, **{"winrm_username": self.user, "winrm_password": self.password,
                                                 **overrides})

    def _call(self, method: str, path: str, doc: dict | None = None) -> Any:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        context = ssl.create_default_context(cafile=str(self.ca)) if self.ca else None
        with urllib.request.urlopen(req, timeout=10 * self.factor, context=context) as resp:
            return json.loads(resp.read())

    def scenarios(self, *specs: str) -> None:
        """Reset the lab to a new deployment with these scenarios (and zeroed statistics)."""
        self._call("POST", "/_lab/scenarios", {"scenarios": list(specs)})

    def stats(self) -> dict:
        return self._call("GET", "/_lab/stats")

    def probe_count(self, probe: str) -> int:
        return [c["probe"] for c in self.stats()["commands"]].count(probe)


def lab_ca(topology: Path) -> Path | None:
    """The CA of the `cmsbot lab --tls` that wrote `topology` (its first line names it), else None."""
    first = topology.read_text(encoding="utf-8").splitlines()[0] if topology.exists() else ""
    return Path(first.rsplit("; CA ", 1)[1].strip()) if first.startswith("# written by `cmsbot lab`") \
        and "; CA " in first else None


def client_environment(topology: Path) -> dict[str, str]:
    """How a worker reaches the lab that wrote `topology`: the product's defaults (HTTPS, NTLM) trusting
    the lab's CA when it serves TLS; plain HTTP with Basic (loopback only) when it does not."""
    ca = lab_ca(topology)
    if ca is None:
        return {"CMSBOT_WINRM_TRANSPORT": "basic", "CMSBOT_WINRM_SCHEME": "http"}
    return {"CMSBOT_WINRM_TRANSPORT": "ntlm", "CMSBOT_WINRM_SCHEME": "https", "CMSBOT_WINRM_CA_BUNDLE": str(ca)}


def client_settings(topology: Path, **overrides: Any) -> Settings:
    """Settings of a client that talks to the lab that wrote `topology` the way a worker does."""
    env = client_environment(topology)
    fields: dict[str, Any] = {"winrm_username": LAB_USER, "winrm_password": LAB_PASSWORD,
                              "winrm_transport": env["CMSBOT_WINRM_TRANSPORT"],
                              "winrm_scheme": env["CMSBOT_WINRM_SCHEME"],
                              "winrm_ca_bundle": env.get("CMSBOT_WINRM_CA_BUNDLE")}
    return Settings(**{**fields, **overrides})


class WorkerProcess(Managed):
    """`cmsbot worker` on `redis_url`, talking to the lab the way it speaks (`client_environment`).
    `settings` become CMSBOT_<NAME> variables. Waits until it listens unless `ready=False`."""

    def __init__(self, workdir: Path, redis_url: str, topology: Path, settings: dict[str, str] | None = None, *,
                 user: str = LAB_USER, password: str = LAB_PASSWORD, ready: bool = True):
        self.settings = dict(settings or {})
        self.redis_url = redis_url
        env = dict(os.environ, REDIS_URL=redis_url, CMSBOT_TOPOLOGY=str(topology),
                   CMSBOT_WINRM_USERNAME=user, CMSBOT_WINRM_PASSWORD=password, CMSBOT_LOG_LEVEL="INFO",
                   **client_environment(topology))
        env.update({f"CMSBOT_{k.upper()}": v for k, v in self.settings.items()})
        env.pop("CMSBOT_WINRM_PASSWORD_FILE", None)
        super().__init__(cmsbot("worker"), env, workdir / f"worker-{time.monotonic_ns()}.log")
        if ready:
            self.wait_ready()

    def wait_ready(self) -> WorkerProcess:
        self.wait_for(lambda: "Listening on" in self.text(), 30, "the worker")
        return self
