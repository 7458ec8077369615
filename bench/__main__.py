"""python -m bench ack|fanout|requests|soak|all  (ack: also `ack --open-loop --rate N --seconds S`)

Each benchmark starts its own Redis, lab, workers and (where it needs one) the
real bot over HTTP with a local Slack fake, measures, prints one JSON object,
and stops what it started. `all` runs them in turn and prints a table.
"""

from __future__ import annotations

import io
import json
import os
import statistics
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

    with parts() as p:
        lab = p.lab()
        fake = p.slack_process()
        settings = {"slack_channels": "", "limit_user": "0", "limit_channel": "0"} if spread else {}
        bot = p.bot(lab, fake, **settings)

        def signed(command: str, channel: str, trigger: str) -> tuple[bytes, dict[str, str]]:
            return _signed(bot.secret, command, channel, trigger)
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


def _signed(secret: str, command: str, channel: str, trigger: str) -> tuple[bytes, dict[str, str]]:
    """A slash command's body and headers, signed as Slack signs them."""
    from lab.slack_bot import signature

    body = urllib.parse.urlencode({
        "team_id": "T0001", "team_domain": "contoso", "channel_id": channel, "user_id": "U0OPERATOR",
        "command": command, "text": "", "trigger_id": trigger, "response_url": ""})
    ts = str(int(time.time()))
    return body.encode(), {"Content-Type": "application/x-www-form-urlencoded",
                           "X-Slack-Request-Timestamp": ts,
                           "X-Slack-Signature": signature(secret, ts, body)}


OPEN_LOOP_REUSE = 2.0  # seconds an idle connection is used again (the bot closes one idle for http_keepalive, 5 s)


def bench_ack_open_loop(rate: float, seconds: float, warmup: float = 1.0, timeout: float = 10.0) -> dict:
    """Open loop: signed /cms-status requests sent at `rate` a second for `seconds`, whether or not the
    earlier ones have been answered (Slack's users do not wait for each other), each admitted (a channel
    of its own, fair-use limits off). A request's latency runs from the moment it was due, not from when
    the client got round to sending it, so a client that falls behind adds to the figures instead of
    hiding a slow bot (`client_lag_p99_ms` says how late the client itself was). A connection is kept
    open and used again, as Slack's senders do; a new one is opened when none is free. The first
    `warmup` seconds at the same rate are sent first and left out of the latencies.
    `serving_cpu_ms_per_request`: the CPU the bot's serving processes used (the reporter apart), per
    request sent, warm-up included: the cost of an ack, much steadier than latencies on a busy machine."""
    import asyncio

    with parts() as p:
        lab = p.lab()
        fake = p.slack_process()
        bot = p.bot(lab, fake, slack_channels="", limit_user="0", limit_channel="0")

        def raw(i: int) -> bytes:
            body, headers = _signed(bot.secret, "/cms-status", f"C0OPEN{i}", f"bench-open-{i}")
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            return (f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{bot.port}\r\n{head}"
                    f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        warm, total = round(warmup * rate), round(seconds * rate)
        requests = [raw(i) for i in range(warm + total)]  # signed before the clock starts, as Slack signs first
        serving = [pid for pid in children_of(bot.proc.pid) if "reporter" not in _cmdline(pid)]
        cpu = sum(_cpu_seconds(pid) for pid in serving)
        outcomes = asyncio.run(_open_loop(bot.port, requests, rate, timeout))
        cpu = sum(_cpu_seconds(pid) for pid in serving) - cpu
    measured = outcomes[warm:]
    latencies = [o[0] for o in measured if o[1] == "200"]
    errors: dict[str, int] = {}
    for _, what, _ in measured:
        if what != "200":
            errors[what] = errors.get(what, 0) + 1
    ms = [v * 1000 for v in latencies]
    lags = [o[2] * 1000 for o in measured]
    return {"bench": "ack", "mode": "open-loop", "rate": rate, "seconds": seconds, "warmup_s": warmup,
            "sent": len(measured), "ok": len(latencies), "errors": errors,
            **{f"p{q}_ms": round(percentile(ms, q), 1) for q in (50, 90, 99)},
            "max_ms": round(max(ms), 1) if ms else float("nan"),
            "client_lag_p99_ms": round(percentile(lags, 99), 1),
            "serving_cpu_ms_per_request": round(cpu * 1000 / len(requests), 2), "target": "p99 <= 100 ms"}


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) a process has used so far; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _open_loop(port: int, requests: list[bytes], rate: float,
                     timeout: float) -> list[tuple[float, str, float]]:
    """Each request sent when due; for each, in order: (seconds from due to the whole answer, its HTTP
    status or the error, seconds the client was late sending it)."""
    import asyncio

    loop = asyncio.get_running_loop()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []  # the most recently used last
    outcomes: list[tuple[float, str, float]] = [(0.0, "not sent", 0.0)] * len(requests)

    async def exchange(data: bytes) -> str:
        while idle:
            reader, writer, used = idle.pop()
            if loop.time() - used < OPEN_LOOP_REUSE and not reader.at_eof():
                break
            writer.close()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1].decode()
            fields = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:] if b":" in line)
            lowered = {k.strip().lower(): v.strip().lower() for k, v in fields.items()}
            await reader.readexactly(int(lowered.get(b"content-length", b"0")))
        except BaseException:  # an error or the timeout: this connection is not used again
            writer.close()
            raise
        if lowered.get(b"connection") == b"close":
            writer.close()
        else:
            idle.append((reader, writer, loop.time()))
        return status

    async def one(i: int, due: float) -> None:
        lag = loop.time() - due
        try:
            status = await asyncio.wait_for(exchange(requests[i]), timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as e:
            status = type(e).__name__
        outcomes[i] = (loop.time() - due, status, lag)

    start = loop.time() + 0.05
    tasks = []
    for i in range(len(requests)):
        due = start + i / rate
        if (wait := due - loop.time()) > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    for _, writer, _ in idle:
        writer.close()
    return outcomes


def _ack_main(args: list[str]) -> dict:
    """`ack` as it always ran (closed loop), or `ack --open-loop --rate N [--seconds S] [--warmup W]`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench ack")
    parser.add_argument("--open-loop", action="store_true", help="send at a fixed rate, whatever the answers")
    parser.add_argument("--rate", type=float, help="open loop: requests a second")
    parser.add_argument("--seconds", type=float, default=10.0, help="open loop: how long to send (default 10)")
    parser.add_argument("--warmup", type=float, default=1.0, help="open loop: seconds sent first, not counted")
    parser.add_argument("--requests", type=int, default=200, help="closed loop: requests (default 200)")
    parser.add_argument("--concurrency", type=int, default=50, help="closed loop: requests in flight (default 50)")
    opts = parser.parse_args(args)
    if opts.open_loop:
        if not opts.rate or opts.rate <= 0 or opts.seconds <= 0 or opts.warmup < 0:
            parser.error("--open-loop needs --rate > 0, --seconds > 0 and --warmup >= 0")
        return bench_ack_open_loop(opts.rate, opts.seconds, opts.warmup)
    if opts.rate is not None:
        parser.error("--rate is for --open-loop")
    return bench_ack(opts.requests, opts.concurrency)


# the WinRM paths a deployment uses: the lab's listener flags, and the worker's settings to match
MODES: dict[str, tuple[tuple[str, ...], bool, dict[str, str]]] = {
    "http-basic": (("--auth", "basic"), False, {"winrm_transport": "basic", "winrm_scheme": "http"}),
    "http-ntlm": (("--auth", "ntlm"), False, {"winrm_transport": "ntlm", "winrm_scheme": "http"}),
    "https-ntlm": (("--auth", "ntlm"), True, {"winrm_transport": "ntlm", "winrm_scheme": "https"}),
}


def _cpu_of_reaped_children(pid: int) -> float:
    """Seconds of CPU the worker's finished work horses used (cutime + cstime of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _sample_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    """The largest RSS (kB) of `pid`'s children (the work horse) until `stop`, every 20 ms."""
    while not stop.wait(0.02):
        peak[0] = max([peak[0], *(rss_kb(c) for c in children_of(pid))])


def _status_runs(servers: int, latency_ms: int, mode: str = "https-ntlm", runs: int = 1) -> dict:
    """`runs` full-deployment /cms-status checks, enqueue to result, on a lab on `mode`'s path: wall time,
    the work horse's CPU per server and its peak RSS (sampled every 20 ms)."""
    from bot.delivery.console import run_chat
    from cms import topology as topo
    from cms.settings import Settings
    from hub.keys import hub_for

    flags, tls, worker_settings = MODES[mode]
    with parts() as p:
        lab = p.lab("--servers", str(servers), "--latency-ms", str(latency_ms), *flags, tls=tls)
        worker = p.worker(lab, host_deadline="30", **worker_settings)
        settings = Settings(redis_url=p.redis.url, topology=lab.topology, chat_timeout=120)
        topology = topo.load(lab.topology)
        hub = hub_for(p.redis.client(), settings)
        run_chat(hub, settings, topology, "/cms-status", "bench", out=io.StringIO())  # warm up the worker
        walls, cpus, peaks, outcome = [], [], [], None
        for _ in range(runs):
            lab.scenarios()
            peak, sampling = [0], threading.Event()
            sampler = threading.Thread(target=_sample_rss, args=(worker.proc.pid, peak, sampling), daemon=True)
            sampler.start()
            cpu = _cpu_of_reaped_children(worker.proc.pid)
            started = time.perf_counter()
            outcome = run_chat(hub, settings, topology, "/cms-status", "bench", out=io.StringIO())
            walls.append(time.perf_counter() - started)
            sampling.set()
            sampler.join()
            assert outcome.report is not None, "no result"
            wait_until(lambda: not children_of(worker.proc.pid), 30, "the work horse to end")
            cpus.append(_cpu_of_reaped_children(worker.proc.pid) - cpu)
            peaks.append(peak[0])
        assert outcome is not None and outcome.report is not None
        errors = [e for e in outcome.report.host_errors]
        return {"wall_s": round(statistics.median(walls), 2), "wall_runs_s": [round(w, 2) for w in walls],
                "cpu_ms_per_server": round(statistics.median(cpus) * 1000 / servers, 2),
                "workhorse_peak_rss_mb": round(max(peaks) / 1024, 1), "host_errors": len(errors),
                "servers_probed": len(outcome.report.health), "exit": outcome.exit_code, "stats": lab.stats()}


def bench_fanout(sizes: tuple[int, ...] = (200, 1000), latency_ms: int = 500, runs: int = 5) -> dict:
    """A full-deployment /cms-status, enqueue to result, each probe taking latency_ms on the lab, on each
    WinRM path side by side: medians of `runs` checks."""
    figures: dict[str, dict] = {}
    for servers in sizes:
        for mode in MODES:
            result = _status_runs(servers, latency_ms, mode, runs)
            result.pop("stats")
            figures[f"{mode}_{servers}"] = result
            print(json.dumps({f"{mode}_{servers}": result}), file=sys.stderr, flush=True)
    one = _status_runs(1, latency_ms)
    return {"bench": "fanout", "latency_ms": latency_ms, "runs": runs, **figures,
            "servers_1_s": one["wall_s"], "floor_s": latency_ms / 1000,
            "sequential_estimate_s": {n: round(n * latency_ms / 1000, 1) for n in sizes},
            "invoke_command_throttle32_estimate_s": {n: round(-(-n // 32) * latency_ms / 1000, 1) for n in sizes},
            "target": "200: http-ntlm <= 1.0 s, https-ntlm <= 1.5 s; 1000: <= 3.0 s; RSS <= 150 MB"}


def bench_requests(servers: int = 8) -> dict:
    """WS-Management HTTP requests per server for one /cms-status, counted by the lab."""
    stats = _status_runs(servers, 0)["stats"]
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
    if name == "ack":
        print(json.dumps(_ack_main(argv[1:])))
        return 0
    if name != "all":
        print(json.dumps(BENCHES[name]()))
        return 0
    results = []
    for bench in BENCHES.values():
        result = bench()
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    keys = {"ack": ["p50_ms", "p99_ms", "max_ms"], "fanout": [f"{m}_{n}" for n in (200, 1000) for m in MODES],
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
