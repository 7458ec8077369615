"""`python -m tests.http_attack PORT`: the issue's attack on the bot's HTTP endpoint (1,500 half-sent
requests, 300 silent connections, 4 MB bodies, negative lengths), from a process
of its own (so the test's own requests do not queue behind its threads for the GIL). Bounded: it
ends when every connection has been answered or closed, or after 40 s. Prints "ready" once its
connections are open, then one JSON line: what the server answered to each kind of request."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

HEAD = b"POST /slack/events HTTP/1.1\r\nHost: bot\r\nContent-Type: application/x-www-form-urlencoded\r\n"
LIMIT = 40.0  # seconds, at most


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def _answer(s: socket.socket) -> bytes:
    out = b""
    while len(out) < 65536:
        try:
            data = s.recv(65536)
        except OSError:
            break
        if not data:
            break
        out += data
    return out


def huge(port: int) -> bytes:
    """4 MB announced and streamed as fast as it goes."""
    with _connect(port) as s:
        s.sendall(HEAD + b"Content-Length: 4194304\r\n\r\n")
        try:
            for _ in range(64):
                s.sendall(b"x" * 65536)
        except OSError:
            pass  # closed after the 413
        return _answer(s)


def negative(port: int) -> bytes:
    with _connect(port) as s:
        s.sendall(HEAD + b"Content-Length: -1\r\n\r\n" + b"x" * 65536)
        return _answer(s)


def slow(port: int, body: bool) -> bytes:
    """A byte every half second, until the server answers or closes."""
    with _connect(port) as s:
        s.sendall(HEAD + (b"Content-Length: 1000000\r\n\r\n" if body else b""))
        s.settimeout(0.5)
        until = time.monotonic() + LIMIT
        while time.monotonic() < until:
            try:
                s.sendall(b"x")
                return s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        return b""


def main(port: int, *, idle: int = 300, slow_head: int = 750, slow_body: int = 750, huge_n: int = 20,
         negative_n: int = 20) -> dict[str, dict[str, int]]:
    silent = [_connect(port) for _ in range(idle)]
    lock = threading.Lock()
    answers: dict[str, dict[str, int]] = {}

    def run(kind: str, call) -> None:
        got = call()
        status = got[9:12].decode(errors="replace") if got.startswith(b"HTTP/1.1 ") else "none"
        with lock:
            answers.setdefault(kind, {}).setdefault(status, 0)
            answers[kind][status] += 1

    jobs = ([("slow headers", lambda: slow(port, False))] * slow_head + [("slow body", lambda: slow(port, True))]
            * slow_body + [("huge body", lambda: huge(port))] * huge_n + [("negative length", lambda: negative(port))]
            * negative_n)
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(run, kind, call) for kind, call in jobs]
        print("ready", flush=True)
        for f in futures:
            f.result()
    # the silent ones: closed by the server after its keep-alive timeout (nothing to answer)
    for s in silent:
        s.settimeout(LIMIT)
        run("silent", lambda s=s: _answer(s))
        s.close()
    return answers


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))), flush=True)
