"""What on-call systems are told about incidents, in their own API's shapes. Pure: no HTTP here, and
no secret (the routing key, the API key and the webhook's signing secret are added where the
request is sent, workers/oncall.py).

- **PagerDuty Events API v2**: POST https://events.pagerduty.com/v2/enqueue, a JSON body with
  `routing_key`, `event_action` (`trigger` | `acknowledge` | `resolve`), `dedup_key` (at most 255
  characters) and, for a trigger, `payload.summary` (at most 1024), `payload.source`,
  `payload.severity` (`critical` | `error` | `warning` | `info`). Later events with the same
  dedup_key apply to the open alert (a trigger adds a log entry to it); once it is resolved, a
  trigger with that key opens a new alert. 202 means accepted; 400 is not retried; 429, 5xx and
  network errors are. (PagerDuty's developer documentation, "Send an Alert Event" and "Events API
  v2 Overview", section "Response Codes & Retry Logic": github.com/PagerDuty/developer-docs,
  docs/events-API-v2/02-Trigger-Events.md and 01-Overview.md.)
- **Opsgenie Alert API** (v2): `Authorization: GenieKey <API integration key>`; create: POST
  /v2/alerts with `message` (at most 130 characters), `alias` (the dedup key: one open alert per
  alias, at most 512), `description` (at most 15000), `priority` P1-P5, `source`, `entity`,
  `tags`, `details`; close: POST /v2/alerts/<alias>/close?identifierType=alias; a note: POST
  /v2/alerts/<alias>/notes?identifierType=alias. Requests are processed asynchronously and
  answered 202 Accepted. Base URL https://api.opsgenie.com (EU: https://api.eu.opsgenie.com).
  (Opsgenie documentation, "Alert API": https://docs.opsgenie.com/docs/alert-api; the limits are
  those of its Create Alert parameters.)
- **A generic JSON webhook**: POST of `webhook_body` (documented in the README), signed with
  HMAC-SHA256 when a secret is set.

The dedup key (PagerDuty) and the alias (Opsgenie) are the incident key (the fingerprint's code
and server) within the deployment's namespace, so a resolve reaches the alert its trigger opened,
and a recurrence after it opens a new one.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict

from cms.models import Severity
from cms.watch import Page, lasted

Target = Literal["pagerduty", "opsgenie", "webhook"]
TARGETS: tuple[Target, ...] = ("pagerduty", "opsgenie", "webhook")
LABEL: dict[str, str] = {"pagerduty": "PagerDuty", "opsgenie": "Opsgenie", "webhook": "the on-call webhook"}
SOURCE = "cms-chatops"

PD_SEVERITY = {Severity.critical: "critical", Severity.error: "error", Severity.warning: "warning",
               Severity.pending: "warning", Severity.info: "info"}
OPSGENIE_PRIORITY = {Severity.critical: "P1", Severity.error: "P2", Severity.warning: "P3", Severity.pending: "P4",
                     Severity.info: "P5"}
PD_DEDUP_MAX, PD_SUMMARY_MAX = 255, 1024
OG_MESSAGE_MAX, OG_ALIAS_MAX, OG_DESCRIPTION_MAX, OG_NOTE_MAX = 130, 512, 15000, 25000


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def dedup_key(namespace: str, key: str, limit: int = PD_DEDUP_MAX) -> str:
    """The incident key within the namespace, at most `limit` characters (a hash stands in for the tail)."""
    full = f"{SOURCE}/{namespace}/{key}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:16]
    return full[:limit - 17] + "#" + digest


def title(page: Page) -> str:
    i = page.incident
    return f"CMS replication: {i.summary}"


def details(page: Page) -> dict[str, Any]:
    i = page.incident
    return {"incident": i.id, "fingerprint": str(i.fingerprint), "problem": i.problem, "subject": i.subject,
            "causes": list(i.causes), "severity": i.severity.value, "scope": i.scope,
            "opened_at": i.opened_at.isoformat(), "first_seen": i.first_seen.isoformat(),
            "findings": [{"code": f.code.value, "severity": f.severity.value, "subject": f.subject,
                          "summary": f.summary, "fix": f.fix[:10]} for f in i.findings[:10]],
            "detail": list(i.detail[:10])}


def what_changed(page: Page) -> str:
    i = page.incident
    return f"now {i.severity.value}: {i.summary} (cause: {', '.join(i.causes)})"


# -- PagerDuty ---------------------------------------------------------------------------------------


def pagerduty_event(page: Page, namespace: str) -> dict[str, Any]:
    """The Events API v2 body, without its routing_key (added when it is sent). An update is a
    trigger with the same dedup_key: PagerDuty adds it to the open alert's log."""
    i = page.incident
    key = dedup_key(namespace, i.key)
    if page.action == "resolve":
        return {"event_action": "resolve", "dedup_key": key}
    summary = title(page) if page.action == "trigger" else f"CMS replication: {what_changed(page)}"
    return {"event_action": "trigger", "dedup_key": key, "client": SOURCE,
            "payload": {"summary": _cut(summary, PD_SUMMARY_MAX), "source": i.subject,
                        "severity": PD_SEVERITY[i.severity], "timestamp": page.at.isoformat(),
                        "component": i.problem, "group": namespace, "class": "+".join(i.causes),
                        "custom_details": details(page)}}


# -- Opsgenie ------------------------------------------------------------------------------------------


class Call(BaseModel):
    """One HTTP request, relative to the service's base URL (no credentials)."""

    model_config = ConfigDict(frozen=True)
    method: str = "POST"
    path: str
    params: dict[str, str] = {}
    body: dict[str, Any]


def opsgenie_call(page: Page, namespace: str) -> Call:
    i = page.incident
    alias = dedup_key(namespace, i.key, OG_ALIAS_MAX)
    by_alias = {"identifierType": "alias"}
    where = f"/v2/alerts/{quote(alias, safe='')}"
    if page.action == "trigger":
        description = "\n".join([i.summary, "", f"Fingerprint: {i.fingerprint}", f"Opened: {i.opened_at.isoformat()}",
                                 *(f"- [{f.severity.value}] {f.subject}: {f.summary}" for f in i.findings[:10]),
                                 *i.detail[:10]])
        return Call(path="/v2/alerts", body={
            "message": _cut(title(page), OG_MESSAGE_MAX), "alias": alias,
            "description": _cut(description, OG_DESCRIPTION_MAX), "priority": OPSGENIE_PRIORITY[i.severity],
            "source": SOURCE, "entity": i.subject, "tags": [SOURCE, i.problem, namespace],
            "details": {k: str(v) for k, v in details(page).items() if not isinstance(v, list)}})
    if page.action == "update":
        return Call(path=f"{where}/notes", params=by_alias,
                    body={"note": _cut(what_changed(page), OG_NOTE_MAX), "source": SOURCE})
    return Call(path=f"{where}/close", params=by_alias, body={
        "note": f"cleared: resolved after {lasted((page.at - i.opened_at).total_seconds())}", "source": SOURCE})


# -- the generic webhook ---------------------------------------------------------------------------------


def webhook_body(page: Page, namespace: str) -> dict[str, Any]:
    """One JSON document per incident event. `idempotency_key` is the same for every retry of one
    event: a receiver that saw it already can drop it."""
    i = page.incident
    return {"version": 1, "source": SOURCE, "namespace": namespace, "action": page.action,
            "idempotency_key": page.id, "dedup_key": dedup_key(namespace, i.key), "at": page.at.isoformat(),
            "summary": i.summary, **details(page),
            **({"resolved_after_s": int((page.at - i.opened_at).total_seconds())}
               if page.action == "resolve" else {})}


# -- the order of sending --------------------------------------------------------------------------------


class Step(BaseModel):
    """Send `page` (or nothing) and record every id of `done` as handled."""

    model_config = ConfigDict(frozen=True)
    page: Page | None
    done: tuple[str, ...]
    note: str = ""


def plan(pages: list[Page], handled: set[str]) -> list[Step]:
    """What to send of one incident key's pages (in the order they were decided), given those handled
    already. An update that a later update or the resolve of the same incident supersedes is not
    sent; a trigger not sent yet carries the latest state; a trigger not sent yet whose incident is
    resolved already is not sent at all (nor its resolve): nobody is paged for what is over."""
    todo = [p for p in pages if p.id not in handled]
    steps: list[Step] = []
    seen: set[str] = set()
    for n, page in enumerate(todo):
        if page.id in seen:  # a duplicate entry (a retried write)
            continue
        seen.add(page.id)
        later = [p for p in todo[n + 1:] if p.incident.id == page.incident.id]
        resolve = next((p for p in later if p.action == "resolve"), None)
        if page.action == "trigger" and resolve is not None:
            skipped = (page.id, *(p.id for p in later if p.action == "update"), resolve.id)
            seen.update(skipped)
            steps.append(Step(page=None, done=skipped, note="resolved before on-call could be told: not sent"))
        elif page.action == "trigger" and any(p.action == "update" for p in later):
            newest = [p for p in later if p.action == "update"][-1]
            merged = page.model_copy(update={"incident": newest.incident})
            folded = tuple(p.id for p in later if p.action == "update")
            seen.update(folded)
            steps.append(Step(page=merged, done=(page.id, *folded)))
        elif page.action == "update" and any(p.action in ("update", "resolve") for p in later):
            steps.append(Step(page=None, done=(page.id,), note="superseded before it was sent"))
        else:
            steps.append(Step(page=page, done=(page.id,)))
    return steps
