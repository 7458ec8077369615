"""Simulated on-call services: local fakes of PagerDuty's Events API v2, Opsgenie's Alert API and a
generic webhook receiver (standard library only), as the Slack fake is for Slack. The workers send to
them unmodified: only the base URLs point here.

    with OncallFake() as fake:
        # CMSBOT_PAGERDUTY_URL=fake.pagerduty_url, CMSBOT_OPSGENIE_URL=fake.opsgenie_url,
        # CMSBOT_ONCALL_WEBHOOK_URL=fake.webhook_url
        ...
        assert [r.body["event_action"] for r in fake.requests("pagerduty")] == ["trigger", "resolve"]

Each service answers as its documentation says (written from the documentation, not from our
client): PagerDuty 202 {"status": "success", "message": "Event processed", "dedup_key": ...}, or
400 "invalid event" when the routing key, the action or a trigger's summary, source or severity is
missing or wrong; Opsgenie 202 {"result": "Request will be processed", "requestId": ...}, 401 without
`Authorization: GenieKey <key>`, 422 without a message; the webhook 200. `fail(service, times,
status)` makes the next `times` requests to a service fail with `status` (a 429 or 5xx is what the
sender must retry; a 4xx what it must not). Every request is recorded, failed ones too.

PagerDuty's alerts are kept the way its dedup_key works: a trigger opens an alert for its key or
adds to the open one, a resolve closes the open one, and a trigger after that opens a new alert
(`pagerduty_alerts()`). Opsgenie's the same way by alias (`opsgenie_alerts()`).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from lab.local_http import LocalHttp

PD_SEVERITIES = {"critical", "error", "warning", "info"}
PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
WEBHOOK_PATH = "/hook/"


@dataclass
class Recorded:
    service: str  # pagerduty | opsgenie | webhook | unknown
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the JSON body (None when it was not JSON)
    raw: bytes
    status: int  # what the fake answered


@dataclass
class Alert:
    key: str  # dedup_key (PagerDuty) or alias (Opsgenie)
    status: str = "open"  # open | resolved
    log: list[dict[str, Any]] = field(default_factory=list)  # the events applied to it, in order


class OncallFake(LocalHttp):
    thread_name = "oncall-fake"

    def __init__(self, token: str = "test-hook-token"):
        super().__init__()
        self.token = token
        self._lock = threading.Lock()
        self.reset()

    # -- lifecycle -------------------------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                try:
                    fake._handle(self)
                except Exception as e:  # a bug in the fake: answer, don't drop the connection
                    _reply(self, 500, {"error": f"fake_error: {e!r}"})

            do_GET = do_POST

            def log_message(self, *args):
                pass

        return Handler

    @property
    def pagerduty_url(self) -> str:
        return self.root + "/v2/enqueue"

    @property
    def opsgenie_url(self) -> str:
        return self.root

    @property
    def webhook_url(self) -> str:
        return self.root + WEBHOOK_PATH + self.token

    # -- configuration and what happened ----------------------------------------------------------------
    def reset(self) -> None:
        with self._lock:
            self._requests: list[Recorded] = []
            self._faults: dict[str, list[int]] = {}
            self._pd: dict[str, list[Alert]] = {}
            self._og: dict[str, list[Alert]] = {}

    def fail(self, service: str, times: int = 1, status: int = 503) -> None:
        """The next `times` requests to `service` answer `status` (and change nothing)."""
        with self._lock:
            self._faults.setdefault(service, []).extend([status] * times)

    def requests(self, service: str | None = None, *, accepted: bool | None = None) -> list[Recorded]:
        """What was sent, in order; `accepted`: only those answered 2xx (True) or not (False)."""
        with self._lock:
            found = [r for r in self._requests if service is None or r.service == service]
        if accepted is not None:
            found = [r for r in found if (200 <= r.status < 300) == accepted]
        return found

    def pagerduty_alerts(self, key: str | None = None) -> list[Alert]:
        with self._lock:
            return [a for k, alerts in self._pd.items() if key is None or k == key for a in alerts]

    def opsgenie_alerts(self, alias: str | None = None) -> list[Alert]:
        with self._lock:
            return [a for k, alerts in self._og.items() if alias is None or k == alias for a in alerts]

    # -- the services ----------------------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(req.path)
        length = int(req.headers.get("Content-Length") or 0)
        raw = req.rfile.read(length) if length > 0 else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = parts.path
        service = ("pagerduty" if path == "/v2/enqueue" else "opsgenie" if path.startswith("/v2/alerts")
                   else "webhook" if path.startswith(WEBHOOK_PATH) else "unknown")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        headers = {k.lower(): v for k, v in req.headers.items()}
        status: int
        answer: dict[str, Any]
        with self._lock:
            faults = self._faults.get(service) or []
            if faults:
                status, answer = faults.pop(0), {"error": "injected failure"}
            elif service == "pagerduty":
                status, answer = self._pagerduty(body)
            elif service == "opsgenie":
                status, answer = self._opsgenie(req.command, path, query, headers, body)
            elif service == "webhook":
                ok = path == WEBHOOK_PATH + self.token and isinstance(body, dict)
                status, answer = (200, {"ok": True}) if ok else (404 if body is not None else 400, {"ok": False})
            else:
                status, answer = 404, {"error": "not found"}
            self._requests.append(Recorded(service, req.command, path, query, headers, body, raw, status))
        _reply(req, status, answer)

    def _pagerduty(self, body: Any) -> tuple[int, dict]:
        """Events API v2: POST /v2/enqueue."""
        errors = []
        if not isinstance(body, dict):
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": ["not JSON"]}
        if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
            errors.append("'routing_key' is missing or blank")
        action = body.get("event_action")
        if action not in PD_ACTIONS:
            errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
        key = body.get("dedup_key")
        if key is not None and (not isinstance(key, str) or len(key) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action == "trigger":
            payload = body.get("payload") or {}
            for name in ("summary", "source", "severity"):
                if not payload.get(name):
                    errors.append(f"'payload.{name}' is missing or blank")
            if payload.get("severity") and payload["severity"] not in PD_SEVERITIES:
                errors.append("'payload.severity' is invalid (must be one of: critical, error, warning, info)")
            if len(str(payload.get("summary") or "")) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
        elif not key:
            errors.append("'dedup_key' is required for acknowledge and resolve")
        if errors:
            return 400, {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
        key = key or uuid.uuid4().hex
        alerts = self._pd.setdefault(key, [])
        open_alert = next((a for a in alerts if a.status == "open"), None)
        if action == "trigger":
            if open_alert is None:
                open_alert = Alert(key)
                alerts.append(open_alert)
            open_alert.log.append(body)
        elif open_alert is not None:  # acknowledge / resolve apply to the open alert; else they are dropped
            open_alert.log.append(body)
            if action == "resolve":
                open_alert.status = "resolved"
        return 202, {"status": "success", "message": "Event processed", "dedup_key": key}

    def _opsgenie(self, method: str, path: str, query: dict[str, str], headers: dict[str, str],
                  body: Any) -> tuple[int, dict]:
        """Alert API v2: create (POST /v2/alerts), close and add note (.../<identifier>/close|notes)."""
        auth = headers.get("authorization", "")
        if not auth.startswith("GenieKey ") or not auth.removeprefix("GenieKey ").strip():
            return 401, {"message": "Could not authenticate", "took": 0.0, "requestId": str(uuid.uuid4())}
        accepted = {"result": "Request will be processed", "took": 0.01, "requestId": str(uuid.uuid4())}
        if path == "/v2/alerts" and method == "POST":
            if not isinstance(body, dict) or not body.get("message"):
                return 422, {"message": "Request body is not processable. Please check the errors.",
                             "errors": {"message": "Message can not be empty."}, "took": 0.0}
            if len(body["message"]) > 130 or len(body.get("alias") or "") > 512:
                return 422, {"message": "Request body is not processable.", "errors": {"message": "too long"}}
            alias = body.get("alias") or uuid.uuid4().hex
            alerts = self._og.setdefault(alias, [])
            open_alert = next((a for a in alerts if a.status == "open"), None)
            if open_alert is None:  # one open alert per alias: a second create is deduplicated into it
                open_alert = Alert(alias)
                alerts.append(open_alert)
            open_alert.log.append({"action": "create", **body})
            return 202, accepted
        segments = path.split("/")  # "", v2, alerts, <identifier>, close|notes
        if len(segments) == 5 and method == "POST" and segments[4] in ("close", "notes"):
            identifier, what = unquote(segments[3]), segments[4]
            if query.get("identifierType", "id") != "alias":
                return 404, {"message": "Alert does not exist", "took": 0.0}
            open_alert = next((a for a in self._og.get(identifier, []) if a.status == "open"), None)
            if open_alert is not None:  # processed asynchronously: an unknown alias fails later, not here
                open_alert.log.append({"action": what, **(body or {})})
                if what == "close":
                    open_alert.status = "resolved"
            return 202, accepted
        return 404, {"message": "not found"}


def _reply(req: BaseHTTPRequestHandler, status: int, answer: Any) -> None:
    data = json.dumps(answer).encode("utf-8")
    req.send_response(status)
    req.send_header("Content-Type", "application/json; charset=utf-8")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


if __name__ == "__main__":  # `python -m lab.oncall_fake`: serve until stopped
    import signal
    import sys

    fake = OncallFake().start()
    print(f"pagerduty {fake.pagerduty_url} opsgenie {fake.opsgenie_url} webhook {fake.webhook_url}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.pause()
