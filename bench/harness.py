"""The real parts a benchmark needs, started and stopped: Redis, the lab, workers, the bot.

Built on the lab's process harness (lab/processes.py, lab/slack_bot.py, lab/slack_fake.py), the
one the demo and the tests use, so a benchmark and a test start things the same way.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace

import redis

from lab.processes import LabProcess, RedisServer, WorkerProcess, children_of, redis_answers, wait_until
from lab.slack_bot import BotProcess
from lab.slack_fake import SlackFake


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary_ms(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {"p50_ms": round(percentile(ms, 50), 1), "p95_ms": round(percentile(ms, 95), 1),
            "p99_ms": round(percentile(ms, 99), 1), "max_ms": round(max(ms), 1) if ms else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 1) if ms else float("nan")}


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Parts:
    """Everything started for one benchmark; stopped in reverse order."""

    def __init__(self, stack: ExitStack, workdir: Path):
        self.stack, self.workdir = stack, workdir
        self.redis = Redis(stack, workdir)

    def lab(self, *args: str, tls: bool = True) -> LabProcess:
        lab = LabProcess(Path(tempfile.mkdtemp(dir=self.workdir)), *args, tls=tls)
        self.stack.callback(lab.stop)
        return lab

    def worker(self, lab: LabProcess, **settings: str) -> WorkerProcess:
        w = WorkerProcess(self.workdir, self.redis.url, lab.topology, settings)
        self.stack.callback(w.stop)
        return w

    def slack(self) -> SlackFake:
        fake = SlackFake().start()
        self.stack.callback(fake.stop)
        return fake

    def slack_process(self) -> SlackFake:
        """The Slack fake in a process of its own, so it does not share the client's GIL
        (Slack's servers are not on this machine either). Only its base_url is used."""
        proc = subprocess.Popen([sys.executable, "-m", "lab.slack_fake"], stdout=subprocess.PIPE, text=True)
        self.stack.callback(proc.terminate)
        assert proc.stdout is not None  # stdout=PIPE
        return SimpleNamespace(base_url=proc.stdout.readline().strip())  # type: ignore[return-value]

    def bot(self, lab: LabProcess, fake: SlackFake, **settings: str) -> BotProcess:
        bot = BotProcess(self.workdir, self.redis.url, lab.topology, fake, **settings)
        self.stack.callback(bot.stop)
        return bot


class Redis:
    """The benchmark's Redis: our own redis-server when the binary is present, else REDIS_URL (never flushed)."""

    def __init__(self, stack: ExitStack, workdir: Path):
        if shutil.which("redis-server"):
            server = RedisServer(workdir)
            stack.callback(server.stop)
            self.url = server.url
        else:
            self.url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
            if not redis_answers(self.url):
                raise RuntimeError("no redis-server binary and REDIS_URL does not answer")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)


@contextmanager
def parts() -> Iterator[Parts]:
    with tempfile.TemporaryDirectory(prefix="cmsbot-bench-") as tmp, ExitStack() as stack:
        yield Parts(stack, Path(tmp))


__all__ = ["parts", "summary_ms", "percentile", "rss_kb", "children_of", "wait_until"]
