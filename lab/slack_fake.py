"""A simulated Slack: a local fake of the Slack Web API (standard library only), as the lab is a
simulated deployment; the tests and the benchmarks run the real bot against it.

The real `slack_sdk.WebClient` runs against it unmodified:

    with SlackFake() as fake:
        client = WebClient(token="xoxb-test", base_url=fake.base_url)
        client.chat_postMessage(channel="C1", text="hi")
        assert fake.messages("C1")[0]["text"] == "hi"

As a pytest fixture:  `slack = pytest.fixture(lab.slack_fake.fixture, name="slack")`.

Every request is recorded as a `Call`. `fail()` and `delay()` inject rate limits,
server errors, `{"ok": false}` errors and slowness; `outage()` makes every method answer
503 for a while, as Slack down does. `messages()` / `thread()` show
the channel state after `chat.update` edits; `uploads()` shows files_upload_v2 shares.
The file bytes POSTed to an upload URL are recorded as a call of method "upload"
(fault it with `fail("upload", status=500)`).

Channels and membership, as Slack answers a bot: every channel is public with the bot in it
unless `channel()` says otherwise. In a private channel the bot is not in, everything it tries
(chat.postMessage, chat.postEphemeral, chat.update, conversations.info, sharing a file) answers
`channel_not_found`, as if the channel did not exist. In a public channel it is not in,
chat.postMessage and chat.postEphemeral answer `not_in_channel` unless the app has the
`chat:write.public` scope (`SlackFake(scopes=...)`), and sharing a file answers `not_in_channel`
whatever the scopes; conversations.info answers with is_member false.

response_url, as Slack hands one out with each slash command and interaction: `response_url(channel,
user)` mints one (what the test puts in the payload). A POST of a message to it is recorded as a
call of method "response_url"; it is shown to the user alone (`ephemeral()`, with "via":
"response_url") unless its response_type is "in_channel", which posts it into the channel whether
or not the bot is a member. Slack takes at most 5 posts to one URL within 30 minutes: past those
it answers HTTP 404 with `used_url` or `expired_url` (`response_url_ttl` shortens the 30 minutes).
`/api/response_url` is kept for older callers: it accepts every post and records it the same way.

The App Home: `views.publish` keeps the last view published for each user (`home(user)`, every one in
`homes(user)`) after checking what Slack checks (a view of type home, 1 to 100 blocks; else
`invalid_arguments`); `app_home_opened(user)` is the Events API envelope Slack sends the app when that
user opens the Home tab (what a test POSTs to the app's endpoint, or sends in Socket Mode).

Socket Mode, minimally: `apps.connections.open` hands out a ws:// URL of this server, which
upgrades to a WebSocket, says Slack's `hello`, answers pings and records what the app sends
(`socket_messages()`, the envelopes' acks); `socket_send()` pushes an envelope to the apps
connected (`socket_connections()` counts them).
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hashlib
import json
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from lab.local_http import LocalHttp

TEAM = {"team": "Contoso", "user": "cmsbot", "team_id": "T0001", "user_id": "U0BOT", "bot_id": "B0001"}
# The bot scopes of slack-manifest.yml; without chat:write.public, a public channel the bot is not in refuses its posts
DEFAULT_SCOPES = frozenset({"commands", "chat:write", "files:write", "usergroups:read"})
RESPONSE_URL_TTL = 30 * 60  # seconds: "up to 5 times within 30 minutes" of the user's action
RESPONSE_URL_USES = 5
# A bot's calls that act in one channel, and the parameter naming it
CHANNEL_METHODS = {"chat.postMessage": "channel", "chat.postEphemeral": "channel", "chat.update": "channel",
                   "conversations.info": "channel", "files.completeUploadExternal": "channel_id"}
# Form fields slack_sdk sends as JSON strings; recorded decoded.
JSON_FIELDS = {"blocks", "attachments", "files", "metadata", "user_auth_blocks", "view", "outputs", "unfurls"}
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, section 1.3


@dataclass
class Call:
    method: str
    params: dict
    headers: dict
    token: str | None
    at: float  # time.time() when the request arrived
    status: int = 200  # HTTP status answered
    error: str | None = None  # "error" of an {"ok": false} answer


@dataclass
class _Fault:
    status: int
    error: str
    retry_after: int | None
    times: int


@dataclass
class _Channel:
    private: bool = False
    member: bool = True


@dataclass
class _ResponseUrl:
    channel: str
    user: str
    created: float  # time.monotonic()
    uses: int = 0


@dataclass
class _Message:
    channel: str
    ts: str
    text: str | None
    thread_ts: str | None = None
    blocks: list | None = None
    attachments: list | None = None
    history: list = field(default_factory=list)  # earlier versions' text

    def view(self) -> dict:
        return {"channel": self.channel, "ts": self.ts, "thread_ts": self.thread_ts, "text": self.text,
                "blocks": self.blocks, "attachments": self.attachments, "user": TEAM["user_id"],
                "edits": len(self.history), "history": list(self.history)}


class SlackFake(LocalHttp):
    thread_name = "slack-fake"

    def __init__(self, usergroups: dict[str, list[str]] | None = None, scopes: frozenset[str] = DEFAULT_SCOPES,
                 response_url_ttl: float = RESPONSE_URL_TTL):
        super().__init__()
        self.usergroups: dict[str, list[str]] = dict(usergroups or {})
        self.scopes = frozenset(scopes)
        self.response_url_ttl = response_url_ttl
        self._lock = threading.Lock()
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                try:
                    if self.path.startswith("/socket-mode/"):
                        return fake._socket_mode(self)
                    fake._handle(self)
                except Exception as e:  # a bug in the fake: answer, don't drop the connection
                    _reply(self, 500, {"ok": False, "error": f"fake_error: {e!r}"})

            do_GET = do_POST

            def log_message(self, *args):
                pass

        return Handler

    def stop(self) -> None:
        for conn in self.socket_connections():  # Socket Mode's WebSockets hold their threads: end them first
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop()

    @property
    def base_url(self) -> str:
        return self.root + "/api/"

    # -- configuration ---------------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._calls: list[Call] = []
            self._faults: dict[str, list[_Fault]] = {}
            self._delays: dict[str, float] = {}
            self._messages: dict[str, _Message] = {}
            self._ephemeral: list[dict] = []
            self._files: dict[str, dict] = {}
            self._channels: dict[str, _Channel] = {}
            self._response_urls: dict[str, _ResponseUrl] = {}
            self._seq = 0
            self._down_until = 0.0
            self._sockets: list[tuple[socket.socket, threading.Lock]] = getattr(self, "_sockets", [])
            self._socket_messages: list[dict] = []
            self._views: dict[str, list[dict]] = {}

    def fail(self, method: str, status: int | None = None, *, error: str | None = None,
             retry_after: int | None = 1, times: int = 1) -> None:
        """Fault the next `times` calls of `method`: HTTP 429 (default) with Retry-After, another
        HTTP status (body {"ok": false, "error": error or "internal_error"}), or with only `error`
        given, HTTP 200 {"ok": false, "error": error}."""
        status = status or (200 if error else 429)
        error = error or {429: "ratelimited", 200: "fatal_error"}.get(status, "internal_error")
        with self._lock:
            self._faults.setdefault(method, []).append(
                _Fault(status, error, retry_after if status == 429 else None, times))

    def outage(self, seconds: float) -> None:
        """Slack is down for `seconds` from now: every method answers HTTP 503 (recorded as calls)."""
        with self._lock:
            self._down_until = time.monotonic() + seconds

    def delay(self, method: str, seconds: float) -> None:
        with self._lock:
            self._delays[method] = seconds

    def set_usergroup(self, usergroup: str, users: list[str]) -> None:
        with self._lock:
            self.usergroups[usergroup] = list(users)

    def channel(self, channel: str, *, private: bool = False, member: bool = True) -> None:
        """How `channel` is to the bot: public or private, the bot a member or not (until reset())."""
        with self._lock:
            self._channels[channel] = _Channel(private, member)

    def response_url(self, channel: str, user: str) -> str:
        """A response_url for an action of `user` in `channel`, as Slack puts one in the payload."""
        with self._lock:
            self._seq += 1
            key = f"{self._seq}/{secrets.token_hex(12)}"
            self._response_urls[key] = _ResponseUrl(channel, user, time.monotonic())
        return f"{self.root}/commands/{TEAM['team_id']}/{key}"
    # -- inspection ------------------------------------------------------------------------
    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def messages(self, channel: str | None = None) -> list[dict]:
        with self._lock:
            return [m.view() for m in self._messages.values() if channel is None or m.channel == channel]

    def thread(self, ts: str) -> list[dict]:
        """The parent message then its replies, in posting order."""
        with self._lock:
            return [m.view() for m in self._messages.values() if m.ts == ts or m.thread_ts == ts]

    def ephemeral(self) -> list[dict]:
        with self._lock:
            return list(self._ephemeral)

    def home(self, user: str) -> dict | None:
        """The Home view last published for `user` (None: none yet)."""
        with self._lock:
            views = self._views.get(user)
            return dict(views[-1]) if views else None

    def homes(self, user: str) -> list[dict]:
        """Every Home view published for `user`, oldest first."""
        with self._lock:
            return [dict(v) for v in self._views.get(user, [])]

    def socket_connections(self) -> list[socket.socket]:
        with self._lock:
            return [s for s, _ in self._sockets]

    def socket_messages(self) -> list[dict]:
        """What the connected apps sent (envelope acks), decoded."""
        with self._lock:
            return list(self._socket_messages)

    def socket_send(self, message: dict) -> int:
        """Push a Socket Mode message (an envelope) to every connected app; returns how many got it."""
        with self._lock:
            sockets = list(self._sockets)
        sent = 0
        for sock, lock in sockets:
            try:
                with lock:
                    sock.sendall(_ws_frame(0x1, json.dumps(message).encode()))
                sent += 1
            except OSError:
                pass
        return sent

    def uploads(self, thread_ts: str | None = None) -> list[dict]:
        """Completed file uploads: file_id, filename, title, content (bytes), channel, thread_ts..."""
        with self._lock:
            return [dict(f) for f in self._files.values()
                    if f["shared"] and (thread_ts is None or f["thread_ts"] == thread_ts)]

    # -- HTTP ------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        url = urlsplit(req.path)
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        headers = dict(req.headers.items())
        if url.path.startswith("/upload/"):  # the URL files.getUploadURLExternal handed out
            method, params = "upload", {"file_id": url.path.rsplit("/", 1)[-1], "length": len(body)}
        elif url.path.startswith("/commands/"):  # a response_url handed out with a command or an interaction
            method = "response_url"
            params = {**_parse_body(headers.get("Content-Type", ""), body),
                      "url_key": url.path.split("/", 3)[-1]}
        elif url.path.startswith("/api/"):
            method = url.path[len("/api/"):]
            params = dict(parse_qsl(url.query, keep_blank_values=True))
            params.update(_parse_body(headers.get("Content-Type", ""), body))
        else:
            return _reply(req, 404, {"ok": False, "error": "not_found"})
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else params.pop("token", None)
        call = Call(method, params, headers, token if isinstance(token, str) else None, time.time())
        with self._lock:
            self._calls.append(call)
            pause = self._delays.get(method, 0)
            faults = self._faults.get(method)
            fault = faults[0] if faults else None
            if time.monotonic() < self._down_until:
                fault = _Fault(503, "service_unavailable", None, 1)
            elif faults and fault:
                fault.times -= 1
                if fault.times <= 0:
                    faults.pop(0)
        if pause:
            time.sleep(pause)
        if fault:
            call.status, call.error = fault.status, fault.error
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return _reply(req, fault.status, {"ok": False, "error": fault.error}, extra)
        with self._lock:
            status, answer = self._answer(method, params, body)
        if isinstance(answer, dict) and not answer.get("ok", True):
            call.error = answer.get("error")
        call.status = status
        _reply(req, status, answer)

    def _socket_mode(self, req: BaseHTTPRequestHandler) -> None:
        """One Socket Mode connection, for as long as the app keeps it (RFC 6455, no extensions)."""
        key = req.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        req.send_response(101, "Switching Protocols")
        for name, value in (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept)):
            req.send_header(name, value)
        req.end_headers()
        req.close_connection = True
        sock, lock = req.connection, threading.Lock()
        with self._lock:
            self._calls.append(Call("socket_mode.connect", {"path": req.path}, dict(req.headers.items()), None,
                                    time.time(), 101))
            self._sockets.append((sock, lock))
        try:
            with lock:
                sock.sendall(_ws_frame(0x1, json.dumps({"type": "hello", "num_connections": 1,
                                                        "connection_info": {"app_id": "A0001"}}).encode()))
            while True:
                opcode, payload = _ws_read(req.rfile)
                if opcode is None or opcode == 0x8:  # gone, or closing: answer the close
                    with lock:
                        sock.sendall(_ws_frame(0x8, payload[:2]))
                    break
                if opcode == 0x9:  # ping
                    with lock:
                        sock.sendall(_ws_frame(0xA, payload))
                elif opcode == 0x1:
                    with self._lock:
                        self._socket_messages.append(json.loads(payload))
        except (OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._sockets = [s for s in self._sockets if s[0] is not sock]

    def _next_ts(self) -> str:
        self._seq += 1
        micros = 1_700_000_000_000_000 + self._seq * 100
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _refusal(self, method: str, p: dict) -> str | None:
        """Slack's error for a call in a channel the bot may not act in, or None."""
        name = CHANNEL_METHODS.get(method)
        ch = self._channels.get(str(p.get(name) or "")) if name else None
        if ch is None or ch.member:
            return None
        if ch.private:
            return "channel_not_found"  # a private channel the bot is not in does not exist for it
        if method in ("chat.postMessage", "chat.postEphemeral") and "chat:write.public" not in self.scopes:
            return "not_in_channel"
        if method == "files.completeUploadExternal":
            return "not_in_channel"
        return None

    def _respond(self, p: dict) -> tuple[int, Any]:
        key = p.pop("url_key", "")
        url = self._response_urls.get(key)
        if url is None:
            return 404, {"ok": False, "error": "invalid_url"}  # not one this Slack handed out
        if time.monotonic() - url.created > self.response_url_ttl:
            return 404, {"ok": False, "error": "expired_url"}
        if url.uses >= RESPONSE_URL_USES:
            return 404, {"ok": False, "error": "used_url"}
        url.uses += 1
        return self._deliver_response(p, url.channel, url.user)

    def _deliver_response(self, p: dict, channel: str, user: str | None) -> tuple[int, Any]:
        if p.get("response_type") == "in_channel":  # posted as the app, member of the channel or not
            m = _Message(channel, self._next_ts(), p.get("text"), p.get("thread_ts"), p.get("blocks"),
                         p.get("attachments"))
            self._messages[m.ts] = m
        else:
            self._ephemeral.append({**p, "channel": channel, "user": user, "via": "response_url",
                                    "message_ts": self._next_ts()})
        return 200, {"ok": True}

    def _answer(self, method: str, p: dict, body: bytes) -> tuple[int, Any]:  # called with the lock held
        if refused := self._refusal(method, p):
            return 200, {"ok": False, "error": refused}
        if method == "response_url":
            if "url_key" in p:
                return self._respond(p)
            return self._deliver_response(p, str(p.get("channel") or ""), None)  # the old /api/response_url
        if method == "upload":
            f = self._files.get(p["file_id"])
            if f is None:
                return 404, {"ok": False, "error": "file_not_found"}
            f["content"] = body
            return 200, f"OK - {len(body)}"
        if method == "auth.test":
            return 200, {"ok": True, "url": self.root + "/", **TEAM}
        if method == "apps.connections.open":
            self._seq += 1
            return 200, {"ok": True, "url": f"ws{self.root[4:]}/socket-mode/{self._seq}"}
        if method == "chat.postMessage":
            if not p.get("channel"):
                return 200, {"ok": False, "error": "channel_not_found"}
            m = _Message(p["channel"], self._next_ts(), p.get("text"), p.get("thread_ts"),
                         p.get("blocks"), p.get("attachments"))
            self._messages[m.ts] = m
            message: dict[str, Any] = {"type": "message", "text": m.text, "user": TEAM["user_id"],
                                       "bot_id": TEAM["bot_id"], "ts": m.ts}
            message.update({k: v for k, v in (("thread_ts", m.thread_ts), ("blocks", m.blocks)) if v})
            return 200, {"ok": True, "channel": m.channel, "ts": m.ts, "message": message}
        if method == "chat.update":
            old = self._messages.get(p.get("ts", ""))
            if old is None or old.channel != p.get("channel"):
                return 200, {"ok": False, "error": "message_not_found"}
            old.history.append(old.text)
            old.text = p.get("text", old.text)
            old.blocks = p.get("blocks", old.blocks)  # Slack keeps fields an update leaves out
            old.attachments = p.get("attachments", old.attachments)
            return 200, {"ok": True, "channel": old.channel, "ts": old.ts, "text": old.text,
                         "message": {"text": old.text, "blocks": old.blocks, "user": TEAM["user_id"]}}
        if method == "chat.postEphemeral":
            ts = self._next_ts()
            self._ephemeral.append({**p, "message_ts": ts})
            return 200, {"ok": True, "message_ts": ts}
        if method == "views.publish":
            view, user = p.get("view"), p.get("user_id")
            if not isinstance(user, str) or not user:
                return 200, {"ok": False, "error": "invalid_arguments"}
            blocks = view.get("blocks") if isinstance(view, dict) else None
            if not isinstance(view, dict) or view.get("type") != "home" or not isinstance(blocks, list) \
                    or not 0 < len(blocks) <= 100:
                return 200, {"ok": False, "error": "invalid_arguments"}
            self._seq += 1
            published = {**view, "id": f"V{self._seq:08d}", "team_id": TEAM["team_id"], "bot_id": TEAM["bot_id"]}
            self._views.setdefault(user, []).append(published)
            return 200, {"ok": True, "view": published}
        if method == "usergroups.users.list":
            return 200, {"ok": True, "users": list(self.usergroups.get(p.get("usergroup", ""), []))}
        if method == "conversations.info":
            ch = p.get("channel", "")
            known = self._channels.get(ch, _Channel())
            return 200, {"ok": True, "channel": {"id": ch, "name": ch.lower(), "is_channel": not known.private,
                                                 "is_private": known.private, "is_member": known.member}}
        if method == "files.getUploadURLExternal":
            file_id = f"F{len(self._files) + 1:08d}"
            self._files[file_id] = {"file_id": file_id, "filename": p.get("filename"), "length": p.get("length"),
                                    "title": None, "content": None, "channel": None, "thread_ts": None,
                                    "initial_comment": None, "shared": False}
            return 200, {"ok": True, "upload_url": f"{self.root}/upload/v1/{file_id}", "file_id": file_id}
        if method == "files.completeUploadExternal":
            done = []
            for item in p.get("files") or []:
                f = self._files.get(item.get("id"))
                if f is None or f["content"] is None:
                    return 200, {"ok": False, "error": "file_not_found"}
                f.update(title=item.get("title") or f["filename"], channel=p.get("channel_id") or p.get("channels"),
                         thread_ts=p.get("thread_ts"), initial_comment=p.get("initial_comment"), shared=True)
                done.append({"id": f["file_id"], "title": f["title"], "name": f["filename"], "size": len(f["content"])})
            return 200, {"ok": True, "files": done}
        return 200, {"ok": True}


def app_home_opened(user: str, tab: str = "home") -> dict:
    """The Events API envelope Slack sends the app when `user` opens its Home (or Messages) tab."""
    now = time.time()
    return {"token": "legacy", "team_id": TEAM["team_id"], "api_app_id": "A0001", "type": "event_callback",
            "event_id": f"Ev{secrets.token_hex(5).upper()}", "event_time": int(now),
            "event": {"type": "app_home_opened", "user": user, "channel": f"D{user[1:]}", "tab": tab,
                      "event_ts": f"{now:.6f}"}}


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame (a server's)."""
    n = len(payload)
    size = bytes([n]) if n < 126 else bytes([126]) + struct.pack(">H", n) if n < 1 << 16 else \
        bytes([127]) + struct.pack(">Q", n)
    return bytes([0x80 | opcode]) + size + payload


def _ws_read(rfile) -> tuple[int | None, bytes]:
    """One frame from a client (masked): (opcode, payload), (None, b"") once the connection is gone."""
    head = rfile.read(2)
    if len(head) < 2:
        return None, b""
    n = head[1] & 0x7F
    if n == 126:
        n = struct.unpack(">H", rfile.read(2))[0]
    elif n == 127:
        n = struct.unpack(">Q", rfile.read(8))[0]
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(n)
    return head[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _parse_body(content_type: str, body: bytes) -> dict:
    ctype = content_type.split(";")[0].strip().lower()
    if not body:
        return {}
    if ctype == "application/json":
        return json.loads(body)
    if ctype == "multipart/form-data":
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
        out = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)  # a leaf part, decoded
            out[name] = data if part.get_filename() else data.decode("utf-8")
        return _decode_json_fields(out)
    return _decode_json_fields(dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True)))


def _decode_json_fields(params: dict) -> dict:
    for key in JSON_FIELDS & params.keys():
        if isinstance(params[key], str):
            try:
                params[key] = json.loads(params[key])
            except ValueError:
                pass
    return params


def _reply(req: BaseHTTPRequestHandler, status: int, answer: Any, headers: dict | None = None) -> None:
    text = isinstance(answer, str)
    data = (answer if text else json.dumps(answer)).encode("utf-8")
    req.send_response(status)
    req.send_header("Content-Type", "text/plain; charset=utf-8" if text else "application/json; charset=utf-8")
    req.send_header("Content-Length", str(len(data)))
    for k, v in (headers or {}).items():
        req.send_header(k, v)
    req.end_headers()
    req.wfile.write(data)


def fixture() -> Iterator[SlackFake]:
    """pytest fixture body: `slack = pytest.fixture(fixture, name="slack")` in a conftest or test module."""
    with SlackFake() as fake:
        yield fake


if __name__ == "__main__":  # `python -m lab.slack_fake`: serve until stopped (benchmarks run it apart)
    import signal
    import sys

    fake = SlackFake().start()
    print(fake.base_url, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()
