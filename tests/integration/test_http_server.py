"""The HTTP endpoint under attack and under failure: the real `cmsbot bot` (gunicorn, its master
and serving processes, the reporter next to them) against raw sockets that send bad lengths,
huge bodies, half a request or nothing, while correctly signed commands keep coming."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from lab.processes import alive, children_of, describe
from tests.harness import scaled, wait_until
from tests.slack_support import BotProcess, parents

HEAD = b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Type: application/x-www-form-urlencoded\r\n"




def _connect(bot: BotProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", bot.port), timeout=30)


def _answer(s: socket.socket) -> bytes:
    """What the server sends until it closes (or 64 KB of it)."""
    out = b""
    while len(out) < 65536:
        try:
            data = s.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        out += data
    return out


def _timed_ack(bot: BotProcess, i: int) -> tuple[int, float]:
    started = time.monotonic()
    status, _ = bot.command("/cms-status", trigger=f"valid-{i}-{time.monotonic_ns()}")
    return status, time.monotonic() - started


def _serving(bot: BotProcess) -> list[int]:
    return [p for p in children_of(bot.proc.pid) if "reporter" not in describe(p)]


def _reporter(bot: BotProcess) -> list[int]:
    return [p for p in children_of(bot.proc.pid) if "reporter" in describe(p)]


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    except (OSError, StopIteration):
        return 0.0


def test_lengths_it_cannot_use_are_answered_before_the_body(start_bot):
    bot = start_bot()

    def raw(headers: bytes, body: bytes = b"x" * 65536) -> bytes:
        with _connect(bot) as s:
            s.sendall(HEAD + headers + b"\r\n" + body)
            return _answer(s)
    assert raw(b"Transfer-Encoding: chunked\r\n").startswith(b"HTTP/1.1 411")
    assert raw(b"Content-Length: 10\r\nContent-Length: 10\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"Content-Length: +10\r\n").startswith(b"HTTP/1.1 400")
    assert raw(b"X-Big: " + b"a" * 70000 + b"\r\n").startswith(b"HTTP/1.1 4")  # 431 or 400: refused
    assert raw(b"Content-Length: 1048577\r\n").startswith(b"HTTP/1.1 413")  # the cap: 1 MiB
    assert raw(b"Content-Length: 3\r\n", b"\xff\xfe\xfd").startswith(b"HTTP/1.1 400")  # not UTF-8
    with _connect(bot) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
        assert _answer(s).startswith(b"HTTP/1.1 200")
    assert bot.command("/cms-status")[0] == 200


def test_a_slow_request_is_cut_at_its_deadline_and_holds_no_thread(start_bot):
    """One serving process with two threads, and more silent or half-sent connections than that:
    a valid request is still served at once, and the slow ones get 408 at their deadline."""
    bot = start_bot(http_processes="1", http_threads="2", http_header_timeout="1", http_body_timeout="1")
    idle = [_connect(bot) for _ in range(10)]
    slow_head = [_connect(bot) for _ in range(10)]
    slow_body = [_connect(bot) for _ in range(10)]
    started = time.monotonic()
    for s in slow_head:
        s.sendall(HEAD)  # no blank line: the headers never end
    for s in slow_body:
        s.sendall(HEAD + b"Content-Length: 100\r\n\r\n" + b"x" * 10)
    status, seconds = _timed_ack(bot, 0)
    assert status == 200 and seconds < 1.0, f"{seconds:.2f} s"
    for s in slow_head + slow_body:
        assert _answer(s).startswith(b"HTTP/1.1 408")
    cut_after = time.monotonic() - started
    assert 1.0 <= cut_after < scaled(4.0), f"{cut_after:.1f} s"
    for s in slow_head + slow_body + idle:
        s.close()


def test_negative_huge_and_slow_requests_leave_the_bot_small_and_valid_acks_fast(start_bot):
    """The issue's attack on the default settings, from a process of its own (tests/http_attack.py):
    300 silent connections, 1,500 half-sent requests (headers, or a body, a byte every half second),
    20 bodies of 4 MB streamed at it, 20 negative lengths. Meanwhile signed /cms-status keep coming
    (limits off: each one goes through Redis to the queue). Every valid ack within 1 s, every
    process of the bot under 200 MB, and every attacking request answered for what it is."""
    bot = start_bot(limit_user="0", limit_channel="0")
    tree = [bot.proc.pid, *children_of(bot.proc.pid)]
    stop = threading.Event()
    peak: dict[int, float] = {}

    def sample() -> None:
        while not stop.is_set():
            for pid in [bot.proc.pid, *children_of(bot.proc.pid)]:
                peak[pid] = max(peak.get(pid, 0.0), _rss_mb(pid))
            stop.wait(0.1)

    threading.Thread(target=sample, daemon=True).start()
    attack = subprocess.Popen([sys.executable, "-m", "tests.http_attack", str(bot.port)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert attack.stdout is not None and attack.stdout.readline().strip() == "ready"
        acks = []
        while attack.poll() is None:  # valid commands as long as the attack goes on
            acks.append(_timed_ack(bot, len(acks)))
            time.sleep(0.1)  # pacing, not a proof
        answers = json.loads(attack.stdout.read())
    finally:
        stop.set()
        if attack.poll() is None:
            attack.kill()
        attack.wait()
    worst = max(seconds for _, seconds in acks)
    print(f"{len(acks)} valid acks, the worst {worst * 1000:.0f} ms; the attack was answered {answers}; peak RSS "
          f"(MB) of the bot's processes: {sorted(round(mb) for mb in peak.values())}")
    assert all(status == 200 for status, _ in acks)
    assert worst < 1.0, f"a valid ack took {worst:.2f} s"
    assert answers == {"slow headers": {"408": 750}, "slow body": {"408": 750}, "huge body": {"413": 20},
                       "negative length": {"400": 20}, "silent": {"none": 300}}
    assert peak and max(peak.values()) < 200, peak
    assert all(alive(p) for p in tree), "a process of the bot died under the attack"


def test_a_serving_process_that_dies_is_replaced_and_the_reporter_too(start_bot, fake):
    bot = start_bot(http_processes="2")
    before = wait_until(lambda: len(_serving(bot)) == 2 and _serving(bot), 30, "two serving processes")
    os.kill(before[0], signal.SIGKILL)
    wait_until(lambda: len(_serving(bot)) == 2 and set(_serving(bot)) != set(before), 30,
               "the dead serving process was not replaced")
    (reporter,) = wait_until(lambda: _reporter(bot), 30, "no reporter")
    os.kill(reporter, signal.SIGKILL)
    wait_until(lambda: _reporter(bot) and _reporter(bot) != [reporter], 30, "the reporter was not restarted")
    # and both work: commands acked by the serving processes, delivered by the new reporter
    assert all(_timed_ack(bot, i)[0] == 200 for i in range(10))
    assert "restarting it" in bot.text()
    wait_until(lambda: parents(fake), 30, "nothing delivered by the new reporter")


def test_the_connection_cap_holds_the_next_connection_until_one_closes(start_bot):
    bot = start_bot(http_processes="1", http_threads="2", http_connections="4", http_keepalive="30")
    held = []
    for _ in range(4):  # four kept-alive connections: the cap of the one serving process
        s = _connect(bot)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        held.append(s)
    fifth = _connect(bot)  # the kernel completes the handshake; the server does not take it
    fifth.sendall(b"GET /healthz HTTP/1.1\r\nHost: bot\r\nConnection: close\r\n\r\n")
    fifth.settimeout(0.5)
    with pytest.raises(TimeoutError):
        fifth.recv(4096)
    held.pop().close()
    fifth.settimeout(10)
    assert _answer(fifth).startswith(b"HTTP/1.1 200")
    for s in [fifth, *held]:
        s.close()
