"""The HTTP endpoint: Slack's requests straight into Bolt, without a WSGI layer.

Bolt verifies every request's signature in `App.dispatch`; this module only
moves bytes. It is small on purpose: acks must stay well inside Slack's 3 s
under bursts, and a generic WSGI server spent as much CPU per request as Bolt.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from slack_bolt import App
from slack_bolt.request import BoltRequest

log = logging.getLogger("cmsbot.http")

EVENTS_PATH = "/slack/events"
MAX_BODY = 1024 * 1024
SOCKET_TIMEOUT = 10.0  # seconds: Slack sends a whole request at once


class SlackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512


def make_server(listener: socket.socket, app: App, healthy: Callable[[], bool]) -> SlackHTTPServer:
    """A server on an already listening socket (shared by pre-forked processes)."""
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = SOCKET_TIMEOUT  # a client that stops sending frees its thread

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            url = urlsplit(self.path)
            if url.path != EVENTS_PATH:
                return self._send(404, {}, "")
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                length = -1
            if length < 0:  # rfile.read(-1) would read until the client stops sending
                self.close_connection = True
                return self._send(411 if "Content-Length" not in self.headers else 400, {}, "")
            if length > MAX_BODY:
                self.close_connection = True
                return self._send(413, {}, "")
            body = self.rfile.read(length).decode("utf-8", errors="replace")
            headers: dict[str, str | Sequence[str]] = {k.lower(): v for k, v in self.headers.items()}
            resp = app.dispatch(BoltRequest(body=body, query=url.query, headers=headers))
            self._send(resp.status, resp.headers, resp.body or "")

        def do_GET(self) -> None:  # noqa: N802
            if urlsplit(self.path).path == "/healthz":
                ok = healthy()
                return self._send(200 if ok else 503, {}, "ok" if ok else "redis unreachable")
            self._send(404, {}, "")

        def _send(self, status: int, headers: dict, body: str) -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            for name, values in headers.items():
                if name.lower() in ("content-length", "connection"):
                    continue
                for value in values if isinstance(values, (list, tuple)) else [values]:
                    self.send_header(name, value)
            if not any(k.lower() == "content-type" for k in headers):
                self.send_header("Content-Type", "text/plain;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
            log.debug("http: " + format, *args)

    server = SlackHTTPServer(listener.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket = listener
    return server
