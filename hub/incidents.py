"""The watch's state in Redis: the problems it tracks, its open incidents, the notice that it is not
looking; what an incident's thread and on-call are owed; and the overview the App Home shows.

One JSON document holds the watch's state (no TTL: it lives as long as Redis keeps its data, as the
CMS lock does). A run reads it, decides (cms/watch.py, pure), and writes in one transaction,
optimistically (WATCH/MULTI; a run that lost the race decides again on the newer state): the new
state, each incident's request record and its events (delivered to Slack by the reporter, durably
and once), and the on-call pages with the jobs that send them. Every write is idempotent (events by
token, pages by id), so a transaction replayed after a lost reply changes nothing more.

An incident is a request of its own (INCIDENT_COMMAND) in the alert channel: its parent message is
the incident, its thread collects the updates, its remediation buttons work as in any thread.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import redis
from redis.client import Pipeline
from rq import Retry

from cms.messages import (
    IncidentOpened,
    IncidentResolved,
    IncidentUpdated,
    Message,
    OncallFailed,
    WatchResumed,
    WatchSkipped,
)
from cms.settings import Settings
from cms.watch import (
    ALL,
    Decision,
    Incident,
    Opened,
    Page,
    Resolved,
    Resumed,
    SkipNoticed,
    Tracked,
    Updated,
    WatchState,
    open_incidents,
)
from hub.contract import ONCALL, REQUEST_TTL, Request, append_audit, append_event, queue
from hub.jobs import INCIDENT_COMMAND, ONCALL_JOB, WATCH_NOTICE_COMMAND
from hub.keys import Hub
from hub.schedule import ScheduledRun, next_runs

log = logging.getLogger(__name__)

WATCH_USER = "cmsbot-watch"  # who "requested" an incident's thread (no Slack user: its mention is "someone")
ONCALL_KEEP = 30 * 24 * 3600  # seconds the pages of an incident key and their records are kept after the last
ONCALL_TIMEOUT = 120  # RQ's hard limit of one on-call job (each request has its own, shorter, timeout)
COMMIT_ATTEMPTS = 20


class WatchRaced(RuntimeError):
    """The watch's state kept changing under this run (many runs at once): it decided nothing."""


def load(hub: Hub) -> WatchState:
    raw = cast(bytes | None, hub.redis.get(hub.keys.watch_state))
    return _parse(raw)


def _parse(raw: bytes | None) -> WatchState:
    if not raw:
        return WatchState()
    try:
        return WatchState.model_validate_json(raw)
    except ValueError:
        # unreadable (written by a newer version?): starting afresh re-opens what is still wrong, which is
        # better than a watch that stops
        log.error("the watch's state in Redis is unreadable; starting from an empty one")
        return WatchState()


@dataclass(frozen=True)
class Delivery:
    """Where a decision goes: the alert channel (None: nowhere in Slack) and the on-call targets."""

    channel: str | None
    targets: tuple[str, ...] = ()
    retry_intervals: tuple[int, ...] = ()


def commit(hub: Hub, decide: Callable[[WatchState], Decision], delivery: Delivery) -> Decision:
    """Decide on the current state and write the outcome, atomically; decide again if another run
    wrote first."""
    for _ in range(COMMIT_ATTEMPTS):
        with hub.redis.pipeline() as pipe:
            try:
                pipe.watch(hub.keys.watch_state)
                decision = decide(_parse(cast(bytes | None, pipe.get(hub.keys.watch_state))))
                pipe.multi()
                _write(hub, hub.over(pipe), decision, delivery)
                pipe.execute()
                return decision
            except redis.WatchError:
                continue
    raise WatchRaced(f"the watch's state changed {COMMIT_ATTEMPTS} times while this run decided")


def _write(base: Hub, hub: Hub, decision: Decision, delivery: Delivery) -> None:
    """Everything one decision writes, queued on `hub` (a transaction's pipeline); `base` is the
    connection itself (RQ builds its queue on it)."""
    hub.redis.set(hub.keys.watch_state, decision.state.model_dump_json())
    channel = delivery.channel
    for action in decision.actions:
        match action:
            case Opened(incident=incident):
                if channel:
                    req = Request(id=incident.id, command=INCIDENT_COMMAND, user=WATCH_USER, channel=channel,
                                  origin="slack", created_at=incident.opened_at,
                                  args={} if incident.scope in (ALL, "all") else {"target": incident.scope})
                    hub.redis.set(hub.keys.request(req.id), req.model_dump_json(), ex=REQUEST_TTL)
                    _event(hub, incident.id, IncidentOpened(incident=incident), "opened")
                _audit(hub, incident, f"opened ({incident.severity.value})")
            case Updated(incident=incident, before_causes=causes, before_severity=severity):
                if channel:
                    mark = _digest(f"{'+'.join(incident.causes)}|{incident.severity.value}|{incident.summary}|"
                                   f"{'+'.join(causes)}")
                    _event(hub, incident.id, IncidentUpdated(incident=incident, before_causes=causes,
                                                             before_severity=severity), f"update:{mark}")
                _audit(hub, incident, f"updated ({incident.severity.value})")
            case Resolved(incident=incident, resolved_at=at):
                if channel:
                    _event(hub, incident.id, IncidentResolved(incident=incident, resolved_at=at), "resolved")
                _audit(hub, incident, "resolved")
            case SkipNoticed(notice=notice, reason=reason, since=since):
                if channel:
                    req = Request(id=notice, command=WATCH_NOTICE_COMMAND, user=WATCH_USER, channel=channel,
                                  origin="slack", created_at=since)
                    hub.redis.set(hub.keys.request(req.id), req.model_dump_json(), ex=REQUEST_TTL)
                    _event(hub, notice, WatchSkipped(reason=reason, since=since), "skipped")
            case Resumed(notice=notice, reason=reason, since=since, until=until, runs=runs):
                if channel:
                    _event(hub, notice, WatchResumed(reason=reason, since=since, until=until, runs=runs), "resumed")
    # a long incident keeps its thread: its request and Slack bookkeeping live as long as it is open
    for t in open_incidents(decision.state):
        assert t.incident is not None
        for key in (hub.keys.request(t.incident), hub.keys.slack_thread(t.incident), hub.keys.slack_steps(t.incident),
                    hub.keys.seq(t.incident), hub.keys.appended(t.incident)):
            hub.redis.expire(key, REQUEST_TTL)
    for page in decision.pages:
        for target in delivery.targets:
            _page(base, hub, target, page, delivery.retry_intervals)


def _event(hub: Hub, incident: str, message: Message, step: str) -> None:
    append_event(hub, incident, message, token=f"{incident}:{step}")


def _audit(hub: Hub, incident: Incident, result: str) -> None:
    """The audit's line of an incident (what /cms-history lists), in the same transaction as its events. A
    transaction replayed after a lost reply could add it twice; /cms-history shows one line per incident
    and step all the same."""
    append_audit(hub, request=incident.id, who=WATCH_USER, what="incident", target=incident.subject,
                 result=result, detail=incident.summary[:300])


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _page(base: Hub, hub: Hub, target: str, page: Page, intervals: tuple[int, ...]) -> None:
    key = page.incident.key
    pages = hub.keys.oncall_pages(target, key)
    hub.redis.rpush(pages, page.model_dump_json())
    hub.redis.expire(pages, ONCALL_KEEP)
    queue(base, ONCALL).enqueue_call(
        ONCALL_JOB, args=(target, key), job_id=base.keys.job_id("oncall", target, _digest(page.id)),
        timeout=ONCALL_TIMEOUT, result_ttl=3600, failure_ttl=7 * 24 * 3600,
        retry=Retry(max=len(intervals), interval=list(intervals)) if intervals else None,
        pipeline=cast(Pipeline, hub.redis))


# -- the pages of one incident key, for the job that sends them (workers/oncall.py) --------------------


def pages(hub: Hub, target: str, key: str) -> list[Page]:
    raw = cast(list[bytes], hub.redis.lrange(hub.keys.oncall_pages(target, key), 0, -1))
    out = []
    for item in raw:
        try:
            out.append(Page.model_validate_json(item))
        except ValueError:
            log.error("an unreadable on-call page for %s (%s) was left out", key, target)
    return out


def handled(hub: Hub, target: str, key: str) -> set[str]:
    return {k.decode() for k in cast(dict[bytes, bytes], hub.redis.hgetall(hub.keys.oncall_sent(target, key)))}


def record(hub: Hub, target: str, key: str, page_ids: tuple[str, ...], outcome: str) -> None:
    """The idempotency record of pages: once recorded, a retried or repeated job does not send them again."""
    name = hub.keys.oncall_sent(target, key)
    with hub.redis.pipeline() as pipe:
        pipe.hset(name, mapping={i: outcome for i in page_ids})
        pipe.expire(name, ONCALL_KEEP)
        pipe.execute()


def lock(hub: Hub, target: str, key: str, token: str, ttl: float) -> bool:
    """One sender per incident key and target at a time, so its pages leave in their order."""
    return bool(hub.redis.set(hub.keys.oncall_lock(target, key), token, nx=True, px=int(ttl * 1000)))


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def unlock(hub: Hub, target: str, key: str, token: str) -> None:
    hub.redis.eval(_UNLOCK, 1, hub.keys.oncall_lock(target, key), token)


def tell_thread(hub: Hub, incident: str, message: OncallFailed, step: str) -> None:
    """A note in the incident's thread (when it has one: an alert channel was set when it opened)."""
    if hub.redis.exists(hub.keys.request(incident)):
        append_event(hub, incident, message, token=f"{incident}:{step}")


# -- the App Home's overview ---------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenIncident:
    id: str
    key: str  # the fingerprint's code and server: the incident key (on-call's dedup key within the namespace)
    subject: str
    summary: str
    severity: str
    causes: tuple[str, ...]
    opened_at: datetime
    channel: str | None  # where its thread is (None: no alert channel when it opened, or not posted yet)
    thread_ts: str | None
    link: str | None  # a link to the thread, when the caller gave a way to make one


def incidents_open(hub: Hub, permalink: Callable[[str, str], str | None] | None = None) -> list[OpenIncident]:
    """The incidents open now, worst and oldest first, each with its thread in the alert channel.
    `permalink(channel, ts)`: how the caller links a message (the bot: Slack's chat.getPermalink)."""
    out = []
    for t in open_incidents(load(hub)):
        assert t.incident is not None and t.opened_at is not None
        channel, ts = _thread(hub, t)
        link = None
        if permalink is not None and channel and ts:
            try:
                link = permalink(channel, ts)
            except Exception:  # noqa: BLE001 - a missing link must not hide the incident
                log.warning("no link for the thread of incident %s", t.incident)
        out.append(OpenIncident(id=t.incident, key=t.key, subject=t.subject, summary=t.summary,
                                severity=t.severity.value, causes=t.causes, opened_at=t.opened_at, channel=channel,
                                thread_ts=ts, link=link))
    return out


def _thread(hub: Hub, t: Tracked) -> tuple[str | None, str | None]:
    assert t.incident is not None
    raw = cast(bytes | None, hub.redis.get(hub.keys.request(t.incident)))
    channel = Request.model_validate_json(raw).channel if raw else None
    ts = cast(bytes | None, hub.redis.hget(hub.keys.slack_thread(t.incident), "parent"))
    return channel, ts.decode() if ts else None


@dataclass(frozen=True)
class WatchOverview:
    """What the App Home shows of the watch."""

    incidents: list[OpenIncident]  # open now, worst and oldest first, with their threads
    runs: list[ScheduledRun]  # each scheduled scope's next run (`scheduled` False: no `cmsbot watch` runs it)
    paused: str | None  # why the watch is not looking now (a CMS change), or None


def overview(hub: Hub, settings: Settings, permalink: Callable[[str, str], str | None] | None = None) -> WatchOverview:
    """The open incidents with their thread links, and the next scheduled run per scope."""
    state = load(hub)
    return WatchOverview(incidents=incidents_open(hub, permalink), runs=next_runs(hub, settings),
                         paused=state.skipping.reason if state.skipping else None)
