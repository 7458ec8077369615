"""Fixtures for both tiers, and the session's guarantees.

- tests/unit is marked `unit`: the pure core from recorded probe output; no Redis, lab or worker.
- tests/integration is marked `integration`: real Redis (the session's own `redis-server` on a
  free port when the binary is present, else REDIS_URL, never flushed), the lab over real
  WS-Management, real RQ workers, the real bot against the Slack fake.
- Every integration test gets Redis databases of its own and its own workers, so it passes
  whatever ran before it (the suite runs in a random order: pytest-randomly prints the seed).
- Every process a fixture starts must stop on SIGTERM; a fixture that had to SIGKILL fails
  its test, and the session fails if any process it started is still alive at its end.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import redis

from lab.slack_fake import SlackFake
from tests.harness import (
    HOST_DEADLINE,
    LAB_PASSWORD,
    LAB_USER,
    SLACK_WORKER,
    LabProcess,
    RedisServer,
    WorkerPool,
    WorkerProcess,
    kill_all,
    marked_processes,
    scaled,
    stop_cleanly,
)
from tests.slack_support import GROUP_OPERATOR, BotProcess

__all__ = ["LAB_PASSWORD", "LAB_USER", "HOST_DEADLINE"]

TIERS = ("unit", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        tier = Path(str(item.path)).parent.name
        if tier in TIERS:
            item.add_marker(tier)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None:  # even with -q: a failure in a shuffled order must be repeatable
        terminalreporter.write_line(f"test order shuffled with --randomly-seed={seed}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leftovers = kill_all(marked_processes())
    if leftovers:
        print(f"\nFAILED: processes started by the suite were still running at its end: {leftovers}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except RuntimeError as e:
        pytest.exit(str(e), returncode=3)
    yield server
    assert not server.stop(), "redis-server had to be killed"


@pytest.fixture
def durable_redis(tmp_path):
    """A redis-server of the test's own, with AOF on, that the test may stop and start again."""
    server = RedisServer(tmp_path, durable=True)
    assert server.owned, "restarting Redis needs a redis-server binary (.ci/run installs it)"
    yield server
    assert not server.stop(), "redis-server had to be killed"


@pytest.fixture
def db_url(redis_server) -> str:
    """A Redis database of this test's own."""
    return redis_server.fresh_db()


@pytest.fixture
def conn(worker) -> redis.Redis:
    """A client of the database the test's worker serves."""
    return redis.Redis.from_url(worker.redis_url)


# -- the lab and the workers ------------------------------------------------------------------


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    lab = LabProcess(tmp_path_factory.mktemp("lab"))
    yield lab
    stop_cleanly(lab)


@pytest.fixture(scope="session")
def edge_lab(tmp_path_factory):
    """A lab whose Edge servers answer WinRM, so their certificates can be read."""
    lab = LabProcess(tmp_path_factory.mktemp("edgelab"), "--edge-winrm", "--convergence-s", "4")
    yield lab
    stop_cleanly(lab)


@pytest.fixture(scope="session")
def workers(redis_server, tmp_path_factory):
    pool = WorkerPool(redis_server, tmp_path_factory.mktemp("workers"))
    yield pool
    assert not pool.close(), "spare workers had to be killed"


@pytest.fixture
def worker(workers, lab):
    """A worker of this test's own, on a database of its own, for the lab."""
    lab.scenarios()  # every test starts from the healthy lab unless it says otherwise
    w = workers.take(lab.topology, host_deadline=str(HOST_DEADLINE))
    yield w
    stop_cleanly(w)


@pytest.fixture
def edge_worker(workers, edge_lab):
    edge_lab.scenarios()
    w = workers.take(edge_lab.topology, host_deadline=str(HOST_DEADLINE))
    yield w
    stop_cleanly(w)


def _status_runner(w: WorkerProcess, lab: LabProcess):
    from bot.delivery.console import run_chat
    from cms import topology as topo
    from cms.settings import Settings
    from hub.keys import hub_for

    settings = Settings(redis_url=w.redis_url, topology=lab.topology, chat_timeout=scaled(60))
    hub = hub_for(redis.Redis.from_url(w.redis_url), settings)

    def run(*scenarios: str, text: str = "/cms-status"):
        lab.scenarios(*scenarios)
        out = io.StringIO()
        outcome = run_chat(hub, settings, topo.load(lab.topology), text, "U-TEST", out=out)
        assert outcome.report is not None, out.getvalue()
        return outcome, out.getvalue()
    return run


@pytest.fixture
def status(worker, lab):
    """Set lab scenarios, run /cms-status: (outcome with the typed report, thread text)."""
    return _status_runner(worker, lab)


@pytest.fixture
def edge_status(edge_worker, edge_lab):
    return _status_runner(edge_worker, edge_lab)


@pytest.fixture
def chat(worker, lab, conn):
    """Run a slash command through the real queue; returns (exit code, thread text)."""
    from bot.delivery.console import run_chat
    from cms import topology as topo
    from cms.settings import Settings
    from hub.keys import hub_for

    settings = Settings(redis_url=worker.redis_url, topology=lab.topology, chat_timeout=scaled(60))

    def run(text: str, user: str = "U-TEST") -> tuple[int, str]:
        out = io.StringIO()
        outcome = run_chat(hub_for(conn, settings), settings, topo.load(lab.topology), text, user, out=out)
        return outcome.exit_code, out.getvalue()
    return run


# -- Slack: the fake Web API, a worker on the test's database, the bot process ---------------

@pytest.fixture(scope="session")
def fake():
    with SlackFake(usergroups={"S0OPS": [GROUP_OPERATOR]}) as f:
        yield f


@pytest.fixture
def slack_worker(workers, edge_lab):
    edge_lab.scenarios()
    w = workers.take(edge_lab.topology, **SLACK_WORKER)
    yield w
    stop_cleanly(w)


@pytest.fixture
def slack_redis(slack_worker) -> str:
    """The database of the Slack tests' worker and bot."""
    return slack_worker.redis_url


@pytest.fixture
def start_bot(fake, edge_lab, slack_worker, slack_redis, tmp_path):
    """The real bot on the test's database (with these settings), stopped cleanly at the end."""
    fake.reset()
    started: list[BotProcess] = []

    def start(**settings: str) -> BotProcess:
        started.append(BotProcess(tmp_path, slack_redis, edge_lab.topology, fake, **settings))
        return started[-1]
    yield start
    slack_worker.terminate()
    stop_cleanly(*started)


@pytest.fixture
def bot(tmp_path, slack_redis, edge_lab, slack_worker, fake):
    fake.reset()
    b = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake)
    yield b
    slack_worker.terminate()  # both stop at once; the worker's own fixture waits for it
    stop_cleanly(b)
