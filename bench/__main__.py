"""python -m bench ack|fanout|requests|soak|all

Each benchmark starts its own Redis, lab, workers and (where it needs one) the
real bot over HTTP with a local Slack fake, measures, prints one JSON object,
and stops what it started. `all` runs them in turn and prints a table.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable

from bench.harness import children_of, parts, percentile, rss_kb, summary_ms, wait_until


def bench_ack(total: int = 200, concurrency: int = 50) -> dict:
    """Signed /cms-status requests against the HTTP endpoint: time to the ack.

    The figures: every request admitted (each from a channel of its own, fair-use limits off), so
    each one stores its request and enqueues its job, as every request did before fair use. Then
    `one_user_flood`: the same requests from one user in one channel on the default limits (most
    are merged into the check in flight or refused by the limit), with how they were answered."""
    admitted = _ack_run(total, concurrency, spread=True)
    flood = _ack_run(total, concurrency, spread=False)
    return {"bench": "ack", "requests": total, "concurrency": concurrency, **admitted,
            "one_user_flood": {k: flood[k] for k in ("ok", "p50_ms", "p99_ms", "max_ms", "answers")},
            "target": "p99 <= 100 ms"}


def _ack_run(total: int, concurrency: int, *, spread: bool) -> dict:
    """Requests are signed before the clock starts (Slack signs before it sends), and each of
    the `concurrency` clients keeps its HTTP/1.1 connection open, as Slack's senders do.
    A first burst of `concurrency` requests against the fresh bot is reported apart (cold):
    it pays for new connections, threads and Redis connection pools once per process."""
    import http.client
    import queue as queues

    from lab.slack_bot import signature

    with parts() as p:
        lab = p.lab()
        fake = p.slack_process()
        settings = {"slack_channels": "", "limit_user": "0", "limit_channel": "0"} if spread else {}
        bot = p.bot(lab, fake, **settings)

        def signed(command: str, channel: str, trigger: str) -> tuple[bytes, dict[str, str]]:
            body = urllib.parse.urlencode({
                "team_id": "T0001", "team_domain": "contoso", "channel_id": channel, "user_id": "U0OPERATOR",
                "command": command, "text": "", "trigger_id": trigger, "response_url": ""})
            ts = str(int(time.time()))
            return body.encode(), {"Content-Type": "application/x-www-form-urlencoded",
                                   "X-Slack-Request-Timestamp": ts,
                                   "X-Slack-Signature": signature(bot.secret, ts, body)}
        warm = http.client.HTTPConnection("127.0.0.1", bot.port, timeout=10)
        warm.request("POST", "/slack/events", *signed("/cms-help", "C0OPS", "bench-warm"))
        warm.getresponse().read()
        warm.close()
        work: queues.Queue = queues.Queue()
        for i in range(total + concurrency):
            work.put(signed("/cms-status", f"C0BENCH{i}" if spread else "C0OPS", f"bench-ack-{i}"))
        latencies: list[float] = []
        statuses: list[int] = []
        answers: list[str] = []
        cold: list[float] = []
        barrier = threading.Barrier(concurrency)

        def send(conn, body, headers) -> tuple[float, int, str]:
            started = time.perf_counter()
            conn.request("POST", "/slack/events", body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
            return time.perf_counter() - started, resp.status, text

        def client() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", bot.port, timeout=10)
            cold.append(send(conn, *work.get_nowait())[0])  # the first burst, on a fresh bot
            barrier.wait()
            while True:
                try:
                    body, headers = work.get_nowait()
                except queues.Empty:
                    break
                elapsed, status, text = send(conn, body, headers)
                latencies.append(elapsed)
                statuses.append(status)
                answers.append("limited" if "Try again in" in text else
                               "merged" if "already running" in text else "admitted")
            conn.close()
        threads = [threading.Thread(target=client) for _ in range(concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return {"ok": statuses.count(200), **summary_ms(latencies), "cold_burst_p99_ms": summary_ms(cold)["p99_ms"],
            "answers": {k: answers.count(k) for k in ("admitted", "merged", "limited")}}


def _status_wall_time(servers: int, latency_ms: int) -> tuple[float, dict]:
    from bot.delivery.console import run_chat
    from cms import topology as topo
    from cms.settings import Settings
    from hub.keys import hub_for

    with parts() as p:
        lab = p.lab("--servers", str(servers), "--latency-ms", str(latency_ms))
        p.worker(lab, host_deadline="30")
        settings = Settings(redis_url=p.redis.url, topology=lab.topology, chat_timeout=120)
        topology = topo.load(lab.topology)
        hub = hub_for(p.redis.client(), settings)
        run_chat(hub, settings, topology, "/cms-status", "bench", out=io.StringIO())  # warm up the worker
        lab.scenarios()
        started = time.perf_counter()
        outcome = run_chat(hub, settings, topology, "/cms-status", "bench", out=io.StringIO())
        elapsed = time.perf_counter() - started
        assert outcome.report is not None, "no result"
        probed = len(outcome.report.health)
        return elapsed, {"exit": outcome.exit_code, "servers_probed": probed, "stats": lab.stats()}


def bench_fanout(servers: int = 200, latency_ms: int = 500) -> dict:
    """Enqueue -> result for a full-deployment /cms-status, each probe taking latency_ms."""
    big, big_info = _status_wall_time(servers, latency_ms)
    one, one_info = _status_wall_time(1, latency_ms)
    # the CMS Front End runs cms-status then replica-health: two sequential probe stages
    floor = 2 * latency_ms / 1000
    return {"bench": "fanout", "latency_ms": latency_ms,
            f"servers_{servers}_s": round(big, 2), "servers_1_s": round(one, 2), "floor_s": floor,
            "replica_health_runs": big_info["servers_probed"], "exit": big_info["exit"],
            "sequential_estimate_s": round(servers * latency_ms / 1000, 1),
            "invoke_command_throttle32_estimate_s": round(-(-servers // 32) * latency_ms / 1000 + latency_ms / 1000, 1),
            "target": "<= 2.0 s at 200 servers"}


def bench_requests(servers: int = 8) -> dict:
    """WS-Management HTTP requests per server for one /cms-status, counted by the lab."""
    _, info = _status_wall_time(servers, 0)
    stats = info["stats"]
    probes_per_server: dict[str, int] = {}
    for c in stats["commands"]:
        probes_per_server[c["server"]] = probes_per_server.get(c["server"], 0) + 1
    single = {s: n for s, n in stats["requests"].items() if probes_per_server.get(s) == 1}
    return {"bench": "requests", "servers": servers,
            "max_requests_single_probe_server": max(single.values()),
            "requests_per_server": stats["requests"], "shells_per_server_max": max(stats["shells"].values()),
            "probes_per_server": probes_per_server, "target": "1 shell per server per job, <= 6 requests"}


def bench_soak(total: int = 500, window_s: float = 10.0, servers: int = 20, workers: int = 2) -> dict:
    """500 /cms-status through Slack within 10 s, 20-server lab, 2 workers: all complete exactly once."""
    with parts() as p:
        lab = p.lab("--servers", str(servers))
        worker_procs = [p.worker(lab, host_deadline="30") for _ in range(workers)]
        fake = p.slack()
        # 500 distinct checks: each from a channel of its own (identical ones in flight in one channel are
        # merged into one), fair-use limits off
        bot = p.bot(lab, fake, slack_channels="", limit_user="0", limit_channel="0")
        peak = {w.proc.pid: 0 for w in worker_procs}
        horse_peak = 0
        sampling = threading.Event()

        def sample() -> None:
            nonlocal horse_peak
            while not sampling.is_set():
                for w in worker_procs:
                    peak[w.proc.pid] = max(peak[w.proc.pid], rss_kb(w.proc.pid))
                    for child in children_of(w.proc.pid):
                        horse_peak = max(horse_peak, rss_kb(child))
                time.sleep(0.1)
        threading.Thread(target=sample, daemon=True).start()

        sent: dict[str, float] = {}
        started = time.perf_counter()
        for i in range(total):
            due = started + i * window_s / total
            time.sleep(max(0.0, due - time.perf_counter()))
            threading.Thread(target=bot.command, args=("/cms-status",),
                             kwargs={"trigger": f"soak-{i}", "channel": f"C0SOAK{i}"}).start()
            sent[f"soak-{i}"] = time.time()
        submitted_in = time.perf_counter() - started

        def verdicts() -> list[dict]:
            return [m for m in fake.messages() if not m.get("thread_ts") and m["edits"]
                    and not m["text"].endswith("checking")]
        wait_until(lambda: len(verdicts()) >= total, 900, f"only {len(verdicts())} of {total} completed")
        sampling.set()
        parents = [m for m in fake.messages() if not m.get("thread_ts")]
        # completion: from the command's post to the verdict edit of its parent
        edits = {c.params["ts"]: c.at for c in fake.calls("chat.update") if c.params.get("ts")}
        posts = sorted(c.at for c in fake.calls("chat.postMessage") if not c.params.get("thread_ts"))
        firsts = sorted(sent.values())
        completion = [edits[m["ts"]] - firsts[i] for i, m in enumerate(sorted(parents, key=lambda m: m["ts"]))
                      if m["ts"] in edits]
        results = [m for m in fake.messages() if m.get("thread_ts") and "CMS status" in json.dumps(m.get("blocks"))]
        per_parent: dict[str, int] = {}
        for m in results:
            per_parent[m["thread_ts"]] = per_parent.get(m["thread_ts"], 0) + 1
        return {"bench": "soak", "requests": total, "submitted_in_s": round(submitted_in, 1), "servers": servers,
                "workers": workers, "completed": len(verdicts()), "parents": len(parents), "parent_posts": len(posts),
                "duplicate_results": sum(n - 1 for n in per_parent.values() if n > 1),
                "missing_results": total - len(per_parent),
                "completion_p50_s": round(percentile(completion, 50), 1),
                "completion_p95_s": round(percentile(completion, 95), 1),
                "worker_peak_rss_mb": round(max(peak.values()) / 1024, 1),
                "workhorse_peak_rss_mb": round(horse_peak / 1024, 1),
                "target": "all complete exactly once; RSS < 200 MB per worker"}


BENCHES: dict[str, Callable[[], dict]] = {"ack": bench_ack, "fanout": bench_fanout, "requests": bench_requests,
                                          "soak": bench_soak}


def main(argv: list[str]) -> int:
    name = argv[0] if argv else ""
    if name not in (*BENCHES, "all"):
        print(f"usage: python -m bench {'|'.join(BENCHES)}|all", file=sys.stderr)
        return 2
    if name != "all":
        print(json.dumps(BENCHES[name]()))
        return 0
    results = []
    for bench in BENCHES.values():
        result = bench()
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    keys = {"ack": ["p50_ms", "p99_ms", "max_ms"], "fanout": ["servers_200_s", "servers_1_s", "floor_s"],
            "requests": ["max_requests_single_probe_server", "shells_per_server_max"],
            "soak": ["completed", "duplicate_results", "completion_p50_s", "completion_p95_s", "worker_peak_rss_mb",
                     "workhorse_peak_rss_mb"]}
    print(f"{'bench':<10} {'figures':<100} target")
    for r in results:
        figures = ", ".join(f"{k}={r.get(k)}" for k in keys[r["bench"]])
        print(f"{r['bench']:<10} {figures:<100} {r['target']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
