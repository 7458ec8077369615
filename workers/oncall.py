"""Telling on-call: the pages the watch decided for one incident key, sent to one system
(PagerDuty, Opsgenie, the webhook) in their order, each at most once.

The job holds the key's lock (one sender per key and system, so a resolve never overtakes its
trigger), reads the pages and their idempotency records (hub/incidents.py), and sends what
cms/oncall.plan says is still owed. A page is recorded as handled once the system accepted it
(2xx) or refused it for good (4xx other than 429: retrying would not help; the incident's thread
says so); a network error, a 429 or a 5xx raises, and RQ retries the job with doubling waits.
A retried or repeated job finds the record and sends nothing twice; should a job die between the
system's answer and the record, PagerDuty's dedup_key, Opsgenie's alias and the webhook's
idempotency_key make the repeat harmless on their side.

The routing key, the API key, the webhook's URL and signing secret stay here: never in a log
line, an event or an exception's text.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests

from cms.messages import OncallFailed
from cms.oncall import LABEL, opsgenie_call, pagerduty_event, plan, webhook_body
from cms.settings import Settings
from cms.watch import Page
from hub import incidents
from hub.keys import Hub

log = logging.getLogger(__name__)

LOCK_TTL = 120.0  # seconds; longer than the job's requests together (each has settings.oncall_timeout)
USER_AGENT = "cms-chatops (on-call)"


class RetryLater(RuntimeError):
    """A page could not be sent now (network error, 429, 5xx, or another job holds the key): RQ retries."""

    def __init__(self, message: str, page: Page | None = None):
        super().__init__(message)
        self.page = page


class Refused(RuntimeError):
    """The system refused the page for good (a 4xx): retrying would not help."""


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]
    secrets: tuple[str, ...]  # what must never be printed (scrubbed from any text we keep)


def request_for(settings: Settings, target: str, page: Page) -> Request:
    namespace = settings.namespace
    if target == "pagerduty":
        key = settings.pagerduty_routing_key.get_secret_value()
        body = {"routing_key": key, **pagerduty_event(page, namespace)}
        return Request(settings.pagerduty_url, json.dumps(body).encode(), {"Content-Type": "application/json"}, (key,))
    if target == "opsgenie":
        key = settings.opsgenie_api_key.get_secret_value()
        call = opsgenie_call(page, namespace)
        query = urlencode(call.params)
        url = settings.opsgenie_url.rstrip("/") + call.path + (f"?{query}" if query else "")
        return Request(url, json.dumps(call.body).encode(),
                       {"Content-Type": "application/json", "Authorization": f"GenieKey {key}"}, (key,))
    if target == "webhook":
        url = settings.oncall_webhook_url.get_secret_value()
        signing = settings.oncall_webhook_secret.get_secret_value()
        raw = json.dumps(webhook_body(page, namespace)).encode()
        headers = {"Content-Type": "application/json", "X-Cmsbot-Idempotency-Key": page.id}
        if signing:
            headers["X-Cmsbot-Signature"] = "sha256=" + hmac.new(signing.encode(), raw, hashlib.sha256).hexdigest()
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        return Request(url, raw, headers, tuple(s for s in (url, path if len(path) > 1 else "", signing) if s))
    raise ValueError(f"unknown on-call target {target!r}")


def _scrub(text: str, hidden: tuple[str, ...], limit: int = 300) -> str:
    for secret in sorted(hidden, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "[secret]")
    return text[:limit]


class _Redact(logging.Filter):
    """urllib3 logs each request's path at DEBUG: the webhook's URL may carry its token there."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.hidden:
            text = record.getMessage()
            if any(h in text for h in self.hidden):
                record.msg, record.args = _scrub(text, tuple(self.hidden), 10_000), None
        return True


_REDACT = _Redact()
logging.getLogger("urllib3.connectionpool").addFilter(_REDACT)


def send(settings: Settings, target: str, page: Page) -> None:
    """POST one page. Returns when accepted; raises RetryLater or Refused."""
    req = request_for(settings, target, page)
    _REDACT.hidden.update(req.secrets)
    what = f"{LABEL[target]} ({page.action} of incident {page.incident.id})"
    try:
        response = requests.post(req.url, data=req.body, headers={"User-Agent": USER_AGENT, **req.headers},
                                 timeout=settings.oncall_timeout, allow_redirects=False)
    except requests.RequestException as e:  # its text may quote the URL (the webhook's is a secret)
        raise RetryLater(f"{what}: {type(e).__name__}", page) from None
    if 200 <= response.status_code < 300:
        log.info("%s: accepted (HTTP %s)", what, response.status_code)
        return
    said = _scrub(response.text or "", req.secrets)
    if response.status_code == 429 or response.status_code >= 500:
        raise RetryLater(f"{what}: HTTP {response.status_code} {said}", page)
    raise Refused(f"{what}: refused, HTTP {response.status_code} {said}".strip())


def flush(hub: Hub, settings: Settings, target: str, key: str) -> dict[str, Any]:
    """Send what is owed to `target` for one incident key, in order; raises RetryLater to be retried."""
    token = secrets.token_hex(8)
    if not incidents.lock(hub, target, key, token, LOCK_TTL):
        raise RetryLater(f"{LABEL[target]}: another job is sending the pages of {key}")
    sent = skipped = refused = 0
    try:
        for step in plan(incidents.pages(hub, target, key), incidents.handled(hub, target, key)):
            if step.page is None:
                log.info("%s: %s %s", LABEL[target], ", ".join(step.done), step.note)
                incidents.record(hub, target, key, step.done, f"skipped: {step.note}")
                skipped += len(step.done)
                continue
            try:
                send(settings, target, step.page)
            except Refused as e:
                log.error("%s", e)
                incidents.record(hub, target, key, step.done, f"refused: {e}")
                incidents.tell_thread(hub, step.page.incident.id, OncallFailed(
                    target=LABEL[target], action=step.page.action, reason=str(e)), f"oncall:{target}:{step.page.id}")
                refused += 1
                continue
            incidents.record(hub, target, key, step.done, "sent")
            sent += 1
    finally:
        incidents.unlock(hub, target, key, token)
    return {"sent": sent, "skipped": skipped, "refused": refused}


def gave_up(hub: Hub, target: str, error: RetryLater) -> None:
    """The job's last retry failed: the incident's thread says that on-call may not know."""
    page = error.page
    if page is None:
        return
    log.error("%s: giving up after the last retry: %s", LABEL[target], error)
    incidents.tell_thread(hub, page.incident.id, OncallFailed(
        target=LABEL[target], action=page.action, reason=f"{error}; retries exhausted"),
        f"oncall-gave-up:{target}:{page.id}")
