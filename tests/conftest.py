"""Real parts for the integration tests: Redis, the lab, RQ workers.

The session starts its own `redis-server` on a free port when the binary is
present (and only ever flushes that one); otherwise it uses REDIS_URL. The lab
and the workers run as subprocesses through the `cmsbot` CLI, exactly as in
production, so pywinrm talks to the lab over real TCP.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from bot.local_redis import answers, free_port

LAB_USER = "cmsbot"
LAB_PASSWORD = "lab-test-password"


class RedisServer:
    def __init__(self, workdir: Path, durable: bool = False):
        self.workdir = workdir
        self.durable = durable
        self.owned = shutil.which("redis-server") is not None
        if self.owned:
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.proc: subprocess.Popen | None = None
            self.start()
        else:
            self.url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            if not answers(self.url):
                pytest.exit("no redis-server binary and REDIS_URL does not answer", returncode=3)

    def start(self) -> None:
        durability = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait(lambda: answers(self.url), 10, "redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (an RQ worker's work-horse runs in a session of its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _wait(cond, timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise RuntimeError(message)


class LabProcess:
    """`cmsbot lab` on a free port, with its control API."""

    def __init__(self, workdir: Path, *args: str, password: str = LAB_PASSWORD):
        self.topology = workdir / "topology.yaml"
        self.log = workdir / "lab.log"
        env = dict(os.environ, CMSBOT_WINRM_USERNAME=LAB_USER, CMSBOT_WINRM_PASSWORD=password)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "lab", "--port", "0", "--topology-out", str(self.topology), *args],
            env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        _wait(lambda: "lab ready" in self.log.read_text() or self.proc.poll() is not None, 30, "lab did not start")
        if self.proc.poll() is not None:
            raise RuntimeError(self.log.read_text())
        first = self.topology.read_text().splitlines()[0]
        self.base = first.split("control API: ")[1].rstrip("/").rsplit("/_lab", 1)[0]

    def _call(self, method: str, path: str, doc: dict | None = None) -> dict:
        data = json.dumps(doc).encode() if doc is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def scenarios(self, *specs: str) -> None:
        self._call("POST", "/_lab/scenarios", {"scenarios": list(specs)})

    def stats(self) -> dict:
        return self._call("GET", "/_lab/stats")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


class WorkerProcess:
    def __init__(self, workdir: Path, redis_url: str, topology: Path, **settings: str):
        self.settings = settings
        self.log = workdir / f"worker-{time.monotonic_ns()}.log"
        self.env = dict(os.environ, REDIS_URL=redis_url, CMSBOT_TOPOLOGY=str(topology),
                        CMSBOT_WINRM_USERNAME=LAB_USER, CMSBOT_WINRM_PASSWORD=LAB_PASSWORD,
                        CMSBOT_WINRM_TRANSPORT="basic", CMSBOT_WINRM_SCHEME="http", CMSBOT_LOG_LEVEL="INFO")
        self.env.update({f"CMSBOT_{k.upper()}": v for k, v in settings.items()})
        self.env.pop("CMSBOT_WINRM_PASSWORD_FILE", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "worker"], env=self.env,
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def conn(redis_server) -> redis.Redis:
    # Never flushed: the session's workers are registered in it. Tests compare
    # before/after on their own keys instead.
    return redis_server.client()


@pytest.fixture(scope="session")
def lab(tmp_path_factory) -> LabProcess:
    lab = LabProcess(tmp_path_factory.mktemp("lab"))
    yield lab
    lab.stop()


HOST_DEADLINE = 4.0


@pytest.fixture(scope="session")
def worker(tmp_path_factory, redis_server, lab) -> WorkerProcess:
    w = WorkerProcess(tmp_path_factory.mktemp("worker"), redis_server.url, lab.topology,
                      host_deadline=str(HOST_DEADLINE))
    from bot.console import workers_listening

    from workers.settings import Settings

    _wait(lambda: workers_listening(redis_server.client(), Settings()) > 0 or w.proc.poll() is not None, 30,
          "worker did not register")
    assert w.proc.poll() is None, w.log.read_text()
    yield w
    w.stop()


@pytest.fixture
def chat(redis_server, lab, worker, conn):
    """Run a slash command through the real queue; returns (exit code, thread text)."""
    from bot.console import run_chat
    from workers import topology as topo
    from workers.settings import Settings

    lab.scenarios()  # every test starts from the healthy lab unless it says otherwise
    settings = Settings(redis_url=redis_server.url, topology=lab.topology, chat_timeout=60)

    def run(text: str, user: str = "U-TEST") -> tuple[int, str]:
        out = io.StringIO()
        outcome = run_chat(conn, settings, topo.load(lab.topology), text, user, out=out)
        return outcome.exit_code, out.getvalue()
    return run


@pytest.fixture(scope="session")
def edge_lab(tmp_path_factory) -> LabProcess:
    """A lab whose Edge servers answer WinRM, so their certificates can be read."""
    lab = LabProcess(tmp_path_factory.mktemp("edgelab"), "--edge-winrm", "--convergence-s", "4")
    yield lab
    lab.stop()


@pytest.fixture(scope="session")
def edge_worker(tmp_path_factory, redis_server, edge_lab) -> WorkerProcess:
    from bot.console import workers_listening

    url = redis_server.url.rsplit("/", 1)[0] + "/1"  # its own database: its own queues
    w = WorkerProcess(tmp_path_factory.mktemp("edgeworker"), url, edge_lab.topology, host_deadline=str(HOST_DEADLINE))
    from workers.settings import Settings

    _wait(lambda: workers_listening(redis.Redis.from_url(url), Settings()) > 0 or w.proc.poll() is not None, 30,
          "worker did not register")
    assert w.proc.poll() is None, w.log.read_text()
    yield w
    w.stop()


def _status_runner(redis_url: str, lab: LabProcess):
    from bot.console import run_chat
    from workers import topology as topo
    from workers.settings import Settings

    settings = Settings(redis_url=redis_url, topology=lab.topology, chat_timeout=60)
    conn = redis.Redis.from_url(redis_url)

    def run(*scenarios: str, text: str = "/cms-status"):
        lab.scenarios(*scenarios)
        out = io.StringIO()
        outcome = run_chat(conn, settings, topo.load(lab.topology), text, "U-TEST", out=out)
        assert outcome.report is not None, out.getvalue()
        return outcome, out.getvalue()
    return run


@pytest.fixture
def status(redis_server, lab, worker):
    """Set lab scenarios, run /cms-status: (outcome with the typed report, thread text)."""
    return _status_runner(redis_server.url, lab)


@pytest.fixture
def edge_status(redis_server, edge_lab, edge_worker):
    return _status_runner(redis_server.url.rsplit("/", 1)[0] + "/1", edge_lab)


# -- Slack: the fake Web API, a worker on its own database, the bot process ------------------

from tests.slack_fake import SlackFake  # noqa: E402
from tests.slack_support import GROUP_OPERATOR, BotProcess  # noqa: E402

@pytest.fixture(scope="session")
def fake():
    with SlackFake(usergroups={"S0OPS": [GROUP_OPERATOR]}) as f:
        yield f


@pytest.fixture(scope="session")
def slack_redis(redis_server) -> str:
    return redis_server.url.rsplit("/", 1)[0] + "/2"


@pytest.fixture(scope="session")
def slack_worker(tmp_path_factory, slack_redis, edge_lab):
    from bot.console import workers_listening
    from workers.settings import Settings

    w = WorkerProcess(tmp_path_factory.mktemp("slackworker"), slack_redis, edge_lab.topology,
                      host_deadline=str(HOST_DEADLINE), replication_wait="1", approval_ttl="8",
                      failover_poll="0.5", failover_deadline="20", cooldown="60")
    _wait(lambda: workers_listening(redis.Redis.from_url(slack_redis), Settings()) > 0 or w.proc.poll() is not None,
          30, "worker did not register")
    yield w
    w.stop()


@pytest.fixture
def bot(tmp_path, slack_redis, edge_lab, slack_worker, fake):
    fake.reset()
    edge_lab.scenarios()
    b = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake)
    yield b
    b.stop()


