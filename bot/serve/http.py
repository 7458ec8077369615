"""The HTTP endpoint: gunicorn's threaded workers serving Bolt through its WSGI adapter.

gunicorn does the serving: pre-forked processes on one listening socket, a process that dies or
stops beating replaced by the master (which bot/serve/server.py runs, with the reporter next to
the workers), its HTTP/1.1 parser with request-line and header limits (414, 431; 400 for a
Content-Length that is negative, not a number or given twice), a cap on the connections each
process holds, keep-alive with an idle timeout, and a graceful stop on SIGTERM.

What it leaves to the application, added here:
- the body cap: 411 without a Content-Length (or chunked), 413 above `http_max_body`, both
  answered before the body is read;
- deadlines: the headers must arrive within `http_header_timeout` of the request's first byte,
  the body within `http_body_timeout` of the headers, else 408 and the connection is closed; a
  connection that sends nothing is closed after `http_keepalive` seconds;
- slow clients hold no thread: each worker's main loop reads a request ahead, without blocking,
  and gives it to a thread once it is all there (gunicorn's threaded worker gives a thread to a
  connection as soon as it is accepted, so a few hundred half-sent requests would hold every
  thread and stall the valid ones behind them);
- the lingering close after an error answer runs in the request's thread, bounded, not in the
  worker's main loop (where gunicorn lingers up to 2 s per connection).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import resource
import selectors
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.glogging import Logger as GunicornLogger
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.workers import gthread
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler

from cms import logs
from cms.settings import Settings

EVENTS_PATH = "/slack/events"
LINGER = 1.0  # seconds a closing connection may still send what it was sending (so no reset hides our answer)
LINGER_BYTES = 8 * 1024 * 1024
HEADERS_AHEAD = 64 * 1024  # headers read ahead at most; longer ones are gunicorn's to refuse
READ_AHEAD_CHUNK = 64 * 1024
READ_AHEAD_BUDGET = 16 * 1024 * 1024  # bytes one process holds read ahead for requests not complete yet
SWEEP_EVERY = 0.2  # seconds between two looks for requests past their deadline
TIMED_OUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
WORKER_SILENT = 30  # seconds without a heartbeat from a serving process before the master replaces it
GRACEFUL_STOP = 3  # seconds the serving processes get, after SIGTERM, to finish the requests in flight

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Limits:
    max_body: int
    header_timeout: float
    body_timeout: float

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.http_max_body, settings.http_header_timeout, settings.http_body_timeout)


class ReadTimeout(NoMoreData):
    """A read past the request's deadline. A NoMoreData, so gunicorn closes the connection quietly
    (a slow client is not a server error worth a traceback)."""

    def __str__(self) -> str:
        return "the client did not send the request in time"


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length[ \t]*:[ \t]*([^\r\n]*)")
_AT_ONCE = (b"\r\ntransfer-encoding", b"\r\nexpect")  # gunicorn or the endpoint answers these after the headers


class Connection(socket.socket):
    """A client connection: what the worker's main loop reads ahead of a thread, and reads that
    never wait past a deadline.

    The main loop reads a request (headers, then a body of the Content-Length announced, up to
    the body cap) without blocking; a thread is given the connection once the request is all
    there, and gunicorn's parser reads it back from here. A request still incomplete at its
    deadline (headers `header_timeout` after its first byte, body `body_timeout` after its
    headers) is answered 408 and closed by the main loop; a connection that sends nothing is
    closed after the keep-alive timeout."""

    limits: Limits
    deadline: float | None = None  # None: no request begun (a thread's first read starts one)
    started = False  # a byte of the request being read ahead has come
    request: Any = None  # gunicorn's request being served (to close the connection after an error answer)

    @classmethod
    def adopt(cls, sock: socket.socket, limits: Limits) -> Connection:
        conn = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        conn.limits = limits
        conn._ahead, conn._pos = b"", 0
        conn.begin(None)
        return conn

    # -- the main loop's side: read a whole request ahead, without blocking --------------------------
    def begin(self, idle_until: float | None) -> None:
        self._acc, self._scan, self._need = bytearray(), 0, -1
        self.deadline, self.started = idle_until, False

    @property
    def buffered(self) -> int:
        return len(self._acc)

    def took(self, data: bytes, now: float) -> bool:
        """Add what the main loop read; True once the request is all there (or what follows its
        headers is for gunicorn or the endpoint to answer at once)."""
        if not self.started:
            self.started, self.deadline = True, now + self.limits.header_timeout
        self._acc += data
        if self._need < 0:
            end = self._acc.find(b"\r\n\r\n", max(0, self._scan - 3))
            if end < 0:
                self._scan = len(self._acc)
                return len(self._acc) > HEADERS_AHEAD  # too long: gunicorn's parser refuses it (431)
            head = bytes(self._acc[:end]).lower()
            lengths = _CONTENT_LENGTH.findall(head)
            if len(lengths) != 1 or any(h in head for h in _AT_ONCE) or not lengths[0].strip().isdigit():
                return True  # 400 or 411 from what is there
            length = int(lengths[0].strip())
            if length > self.limits.max_body:
                return True  # 413 before the body
            self._need, self.deadline = end + 4 + length, now + self.limits.body_timeout
        return len(self._acc) >= self._need

    def hand_over(self) -> None:
        """The request read ahead goes to a thread: gunicorn's parser reads it back through recv()."""
        self._ahead, self._pos = bytes(self._acc), 0
        self.begin(time.monotonic() + self.limits.header_timeout)
        self.started = True

    # -- a thread's side ------------------------------------------------------------------------------
    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        if self._ahead:
            chunk = self._ahead[self._pos:self._pos + bufsize]
            self._pos += len(chunk)
            if self._pos >= len(self._ahead):
                self._ahead, self._pos = b"", 0
            return chunk
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.limits.header_timeout
        left = self.deadline - now
        if left <= 0:
            raise ReadTimeout()
        timeout = self.gettimeout()
        if timeout != 0.0:  # a blocking read: it waits until the deadline at most
            self.settimeout(left if timeout is None else min(timeout, left))
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            raise ReadTimeout() from None

    def leftover(self) -> bytes:
        """Read ahead but not parsed (a pipelined request), taken back."""
        rest, self._ahead, self._pos = self._ahead[self._pos:], b"", 0
        return rest

    def close_after_response(self) -> None:
        if self.request is not None:
            self.request.force_close()


class SlackWorker(gthread.ThreadWorker):
    """gunicorn's threaded worker, reading requests ahead in its main loop (see `Connection`): a
    client that sends slowly, or sends nothing, holds no thread."""

    limits = Limits(1024 * 1024, 5.0, 10.0)  # see worker_class()

    def init_process(self) -> None:
        self._reading: dict[Any, None] = {}  # connections whose request is being read ahead, oldest first
        self._buffered = 0  # bytes read ahead and not yet handed to a thread
        self._next_sweep = self._notified = 0.0
        _raise_open_files(self.cfg.worker_connections + self.cfg.threads + 64)
        super().init_process()

    def notify(self) -> None:
        """The heartbeat the master watches: gunicorn writes it at every turn of the main loop (a
        file's mtime, so a system call or more per request); once a second is plenty for its 30 s."""
        now = time.monotonic()
        if now - self._notified >= 1.0:
            self._notified = now
            super().notify()

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):  # another process took it
            return
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, Connection.adopt(client, self.limits), addr, listener.getsockname())
        self._read_ahead(conn, time.monotonic() + self.cfg.keepalive)

    def on_client_socket_readable(self, conn: Any, client: Any) -> None:
        """A kept-alive connection: its next request is read ahead too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._read_ahead(conn, None)

    def _read_ahead(self, conn: Any, idle_until: float | None) -> None:
        """Read what is there already (most requests arrive whole); wait in the poller for the rest."""
        conn.sock.begin(idle_until)
        if (done := self._read(conn)) is not None:
            return done()
        self._reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self._on_readable, conn))

    def _on_readable(self, conn: Any, _fileobj: Any = None) -> None:
        if (done := self._read(conn)) is not None:
            self._stop_reading(conn)
            done()

    def _read(self, conn: Any) -> Callable[[], None] | None:
        """What to do with the connection once it is out of the poller: give it to a thread (the
        request is all there), or close it (the client went away); None: wait for more."""
        sock = conn.sock
        try:
            data = socket.socket.recv(sock, READ_AHEAD_CHUNK)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            data = b""
        if not data:  # the client went away
            return functools.partial(self._close, conn)
        self._buffered += len(data)
        # over the budget, the rest of a body is read by a thread (with its deadline): threads bound it
        if sock.took(data, time.monotonic()) or self._buffered > READ_AHEAD_BUDGET:
            return functools.partial(self._dispatch, conn)
        return None

    def _dispatch(self, conn: Any) -> None:
        self._buffered -= conn.sock.buffered
        conn.sock.hand_over()
        conn.data_ready = True
        self.enqueue_req(conn)

    def _stop_reading(self, conn: Any) -> None:
        self.poller.unregister(conn.sock)
        del self._reading[conn]

    def _drop(self, conn: Any, answer: bytes = b"") -> None:
        self._stop_reading(conn)
        if answer:
            with contextlib.suppress(OSError):
                socket.socket.send(conn.sock, answer)
        self._close(conn)

    def _close(self, conn: Any) -> None:
        self._buffered -= conn.sock.buffered
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        """Every turn of the main loop: requests past their deadline are answered 408 and closed;
        once stopping, every request not complete yet (Slack sends it again)."""
        super().murder_pending()
        now = time.monotonic()
        if self.alive and now < self._next_sweep:  # the loop turns at every event: sweep a few times a second
            return
        self._next_sweep = now + SWEEP_EVERY
        for conn in list(self._reading):
            sock = conn.sock
            if not self.alive or (sock.deadline is not None and now >= sock.deadline):
                self._drop(conn, TIMED_OUT if sock.started else b"")

    def handle(self, conn: Any) -> Any:
        result = super().handle(conn)
        sock = conn.sock
        if result is True and isinstance(sock, Connection):
            sock.deadline, sock.request = None, None  # the next request on it gets deadlines of its own
            if rest := sock.leftover():  # gunicorn serves it next, from its buffer, after what it holds
                conn.parser.unreader.unread(conn.parser.unreader.take_buffered() + rest)
        elif result is False:
            _linger(sock)
        return result

    def handle_request(self, req: Any, conn: Any) -> bool:
        if isinstance(conn.sock, Connection):
            conn.sock.request = req
        return super().handle_request(req, conn)


def worker_class(limits: Limits) -> type[SlackWorker]:
    return type("SlackWorker", (SlackWorker,), {"limits": limits})


def _raise_open_files(wanted: int) -> None:
    """Each connection is a file descriptor: the soft limit may be far below the cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard),
                                                    hard))


def _linger(sock: socket.socket) -> None:
    """Half-close, then read what the client still sends, for a bounded time: closing with unread
    data would answer it with a reset, which can destroy our response before the client reads it.
    gunicorn's own close then finds the deadline passed and closes at once."""
    if not isinstance(sock, Connection) or sock.fileno() < 0:
        return
    sock.deadline = min(sock.deadline or float("inf"), time.monotonic() + LINGER)
    try:
        sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < LINGER_BYTES:
            data = sock.recv(65536)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass
    sock.deadline = 0.0


Page = tuple[int, str, bytes]  # status, content type, body
METRICS_PATH = "/metrics"


def endpoint(app: App, limits: Limits, pages: Callable[[str], Page | None], metrics_port: int = 0) -> WSGIApp:
    """The WSGI application: the telemetry's pages (/metrics, /healthz, /readyz: hub/telemetry.py), and
    /slack/events into Bolt once the body is complete and within the limits. With a `metrics_port` of its
    own (CMSBOT_METRICS_PORT), /metrics is served there only, not on the port Slack reaches."""
    bolt = SlackRequestHandler(app, EVENTS_PATH)

    def hidden(environ: dict[str, Any], path: str) -> bool:
        if path != METRICS_PATH or not metrics_port:
            return False
        sock = environ.get("gunicorn.socket")  # the port it arrived on, not the Host header a client writes
        return not isinstance(sock, socket.socket) or sock.getsockname()[1] != metrics_port

    def serve(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
        if method in ("GET", "HEAD") and path != EVENTS_PATH and not hidden(environ, path) \
                and (page := pages(path)) is not None:
            status, content_type, data = page
            start_response(f"{status} {HTTPStatus(status).phrase}", [("Content-Type", content_type),
                                                                     ("Content-Length", str(len(data)))])
            return [data]
        if path != EVENTS_PATH:
            return _answer(environ, start_response, 404, "not found")
        if method != "POST":
            return _answer(environ, start_response, 405, "POST only", [("Allow", "POST")])
        # Slack always sends one; without it (or chunked) the body's size is not known before it is read
        if "HTTP_TRANSFER_ENCODING" in environ or not environ.get("CONTENT_LENGTH"):
            return _answer(environ, start_response, 411, "a Content-Length is required", close=True)
        # gunicorn answered 400 to anything but digits
        if int(environ.get("CONTENT_LENGTH") or 0) > limits.max_body:
            return _answer(environ, start_response, 413, "request body too large", close=True)
        sock = environ.get("gunicorn.socket")
        if isinstance(sock, Connection):
            sock.deadline = time.monotonic() + limits.body_timeout
        try:
            body = environ["wsgi.input"].read(limits.max_body + 1)
        except ReadTimeout:
            return _answer(environ, start_response, 408, "the request body did not arrive in time", close=True)
        except (OSError, ParseException):  # the client went away, or a malformed body
            return _answer(environ, start_response, 400, "unreadable request body", close=True)
        if len(body) > limits.max_body:
            return _answer(environ, start_response, 413, "request body too large", close=True)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return _answer(environ, start_response, 400, "the body is not UTF-8", close=True)
        environ["wsgi.input"], environ["CONTENT_LENGTH"] = io.BytesIO(body), str(len(body))
        return bolt(environ, start_response)

    return serve


def _answer(environ: dict[str, Any], start_response: StartResponse, status: int, text: str,
            headers: list[tuple[str, str]] | None = None, *, close: bool = False) -> list[bytes]:
    if close and isinstance(sock := environ.get("gunicorn.socket"), Connection):
        sock.close_after_response()
    data = text.encode()
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
              411: "Length Required", 413: "Content Too Large", 503: "Service Unavailable"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "text/plain;charset=utf-8"),
                                          ("Content-Length", str(len(data))), *(headers or [])])
    return [data]


# -- the server -----------------------------------------------------------------------------------


class Sidecar(Protocol):
    """A process the master keeps running next to the serving processes (the reporter)."""

    def keep(self) -> None:
        """Start it, or start it again if it has exited (called about every second)."""

    def reap(self) -> None:
        """Collect its exit status if it has exited (before gunicorn reaps every child)."""

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM), without waiting."""

    def stop(self) -> None:
        """Stop it and wait for it, bounded."""


class _JsonLogger(GunicornLogger):
    """gunicorn's own log lines in the JSON of CMSBOT_LOG_FORMAT=json, like every other line."""

    def _set_handler(self, log: logging.Logger, output: Any, fmt: Any, stream: Any = None) -> None:
        super()._set_handler(log, output, logs.JsonFormatter(), stream)


class _Master(Arbiter):
    """gunicorn's master, also keeping the sidecar running and stopping it with the workers."""

    def __init__(self, app: BaseApplication, sidecar: Sidecar):
        self.sidecar = sidecar
        super().__init__(app)

    def manage_workers(self) -> None:
        super().manage_workers()
        self.sidecar.keep()

    def reap_workers(self) -> None:
        self.sidecar.reap()  # gunicorn's waitpid(-1) would take its exit status
        super().reap_workers()

    def stop(self, graceful: bool = True) -> None:
        self.sidecar.terminate()  # both wind down at once: the whole stop fits in SIGTERM's few seconds
        super().stop(graceful)
        self.sidecar.stop()


class _Server(BaseApplication):
    def __init__(self, wsgi: WSGIApp, options: dict[str, Any], sidecar: Sidecar):
        self._wsgi, self._options, self._sidecar = wsgi, options, sidecar
        super().__init__()

    def load_config(self) -> None:
        assert self.cfg is not None
        for name, value in self._options.items():
            self.cfg.set(name, value)

    def load(self) -> WSGIApp:
        return self._wsgi

    def run(self) -> None:
        _Master(self, self._sidecar).run()


def serve(wsgi: WSGIApp, settings: Settings, *, host: str, port: int, processes: int, sidecar: Sidecar,
          ready: Callable[[str], None], worker_started: Callable[[], None]) -> None:
    """Serve until SIGTERM (then exit through SystemExit). The application is built before this
    (gunicorn's preload): the serving processes are forked with it, and one that dies is replaced
    at once by a fresh fork of the master. With CMSBOT_METRICS_PORT set the same processes also
    listen there (for /metrics, /healthz and /readyz on a port kept off the Internet)."""
    limits = Limits.of(settings)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    binds = [(host, port), *([(settings.metrics_host, settings.metrics_port)] if settings.metrics_port else [])]
    options = {
        "bind": [f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in binds],
        "backlog": 2048,  # connections the kernel holds for the processes to take: a burst must not overflow it
        "workers": processes,
        "worker_class": worker_class(limits),
        "threads": settings.http_threads,
        "worker_connections": settings.http_connections,
        "keepalive": settings.http_keepalive,
        "timeout": WORKER_SILENT,
        "graceful_timeout": GRACEFUL_STOP,
        "limit_request_line": 4094,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        "preload_app": True,
        # the workers' heartbeat files: in memory where there is /dev/shm (gunicorn's advice for containers)
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,
        "proc_name": "cmsbot-bot",
        "errorlog": "-",
        "loglevel": level if level in ("debug", "info", "warning", "error", "critical") else "warning",
        "control_socket_disable": True,
        **({"logger_class": _JsonLogger} if logs.json_enabled() else {}),
        "when_ready": lambda master: ready(str(master.LISTENERS[0])),  # e.g. http://127.0.0.1:3000
        "post_worker_init": lambda _worker: worker_started(),
    }
    _Server(wsgi, options, sidecar).run()
