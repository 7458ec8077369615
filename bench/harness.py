"""The real parts a benchmark needs, started and stopped: Redis, the lab, workers, the bot.

Reuses the test harness (tests/), so a benchmark and a test start things the same way.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace

from tests.harness import LabProcess, RedisServer, WorkerProcess, children_of, wait_until
from tests.slack_fake import SlackFake
from tests.slack_support import BotProcess


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
        self.redis = RedisServer(workdir)
        stack.callback(self.redis.stop)

    def lab(self, *args: str) -> LabProcess:
        lab = LabProcess(Path(tempfile.mkdtemp(dir=self.workdir)), *args)
        self.stack.callback(lab.stop)
        return lab

    def worker(self, lab: LabProcess, **settings: str) -> WorkerProcess:
        w = WorkerProcess(self.workdir, self.redis.url, lab.topology, **settings)
        self.stack.callback(w.stop)
        return w

    def slack(self) -> SlackFake:
        fake = SlackFake().start()
        self.stack.callback(fake.stop)
        return fake

    def slack_process(self) -> SlackFake:
        """The Slack fake in a process of its own, so it does not share the client's GIL
        (Slack's servers are not on this machine either). Only its base_url is used."""
        import subprocess
        import sys

        proc = subprocess.Popen([sys.executable, "-m", "tests.slack_fake"], stdout=subprocess.PIPE, text=True)
        self.stack.callback(proc.terminate)
        assert proc.stdout is not None  # stdout=PIPE
        return SimpleNamespace(base_url=proc.stdout.readline().strip())  # type: ignore[return-value]

    def bot(self, lab: LabProcess, fake: SlackFake) -> BotProcess:
        bot = BotProcess(self.workdir, self.redis.url, lab.topology, fake)
        self.stack.callback(bot.stop)
        return bot


@contextmanager
def parts() -> Iterator[Parts]:
    with tempfile.TemporaryDirectory(prefix="cmsbot-bench-") as tmp, ExitStack() as stack:
        yield Parts(stack, Path(tmp))


__all__ = ["parts", "summary_ms", "percentile", "rss_kb", "children_of", "wait_until"]
