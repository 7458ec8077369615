"""What the bot's App Home and /cms-history read from Redis, and the little the Home keeps there.

- The last verdict of each pool (cms/verdicts.py), written where a check's report is produced: a
  status job (with its audit entry, so /cms-history lists the check) and a scheduled watch run (no
  audit entry: one every few minutes would bury the rest of the history).
- Who opened the Home lately (a sorted set that expires): the reporter publishes a fresh Home for them
  when something it shows changes.
- `gather()`: everything the Home shows, in a few round trips: the pools' verdicts, the watch's open
  incidents and next runs (hub/incidents.overview), the checks and changes running or queued now,
  the approval cards waiting.
- `history()`: the audit stream's latest entries for a scope, newest first, one line per request and
  step, with the thread of each where it has one.

Links: `permalink(channel, ts)` is the caller's (the bot builds Slack's); without one, no links.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from pydantic import ValidationError

from cms.models import StatusReport
from cms.settings import Settings
from cms.topology import Target, Topology, UnknownTarget
from cms.verdicts import Outcome, PoolVerdict, pool_verdicts
from hub import approvals
from hub.contract import CHANGE, PREFLIGHT, STATUS, Request, append_audit, queue
from hub.incidents import OpenIncident, overview
from hub.jobs import INCIDENT_COMMAND, WATCH_NOTICE_COMMAND
from hub.keys import Hub
from hub.schedule import ScheduledRun

log = logging.getLogger(__name__)

Permalink = Callable[[str, str], str | None]

VIEWER_RECENT = 3600  # seconds after opening the Home that a person still gets it refreshed
VIEWERS_MAX = 50  # at most this many (the most recent) get a refresh: one views.publish each
HISTORY_LIMIT = 15
HISTORY_SCAN = 5000  # audit entries read back, at most, to find a scope's latest ones
_CHUNK = 250
CHECK = "status"  # the audit's `what` of a status check
WHOLE = frozenset({"", "all", "*", "(default)"})  # an audit target meaning the whole deployment (or the CMS)


# -- the pools' last verdicts ---------------------------------------------------------------------


def record_check(hub: Hub, report: StatusReport, *, request: str | None = None, who: str | None = None,
                 audit: bool = True) -> list[PoolVerdict]:
    """Keep each pool's verdict from this report and, with `audit`, the check's audit entry; one
    transaction."""
    verdicts = pool_verdicts(report, request=request, by=who)
    with hub.redis.pipeline() as pipe:
        if verdicts:
            pipe.hset(hub.keys.pool_verdicts, mapping={v.pool: v.model_dump_json() for v in verdicts})
        if audit:
            append_audit(hub.over(pipe), request=request, who=who, what=CHECK, target=report.scope,
                         result=_overall(verdicts), detail=_clip("; ".join(f"{v.pool}: {v.text}" for v in verdicts)))
        pipe.execute()
    return verdicts


def _overall(verdicts: list[PoolVerdict]) -> str:
    for outcome in (Outcome.failed, Outcome.problems, Outcome.incomplete):
        if any(v.outcome is outcome for v in verdicts):
            return outcome.value
    return Outcome.ok.value


def _clip(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def last_verdicts(hub: Hub) -> dict[str, PoolVerdict]:
    raw = cast(dict[bytes, bytes], hub.redis.hgetall(hub.keys.pool_verdicts))
    out = {}
    for pool, value in raw.items():
        try:
            out[pool.decode()] = PoolVerdict.model_validate_json(value)
        except ValidationError:
            log.warning("an unreadable verdict for pool %s was left out", pool.decode())
    return out


# -- who looks at the Home -------------------------------------------------------------------------


def note_viewer(hub: Hub, user: str, now: float | None = None) -> None:
    now = time.time() if now is None else now
    name = hub.keys.home_viewers
    with hub.redis.pipeline() as pipe:
        pipe.zadd(name, {user: now})
        pipe.zremrangebyscore(name, "-inf", now - VIEWER_RECENT)
        pipe.zremrangebyrank(name, 0, -VIEWERS_MAX - 1)
        pipe.expire(name, VIEWER_RECENT)
        pipe.execute()


def recent_viewers(hub: Hub, now: float | None = None) -> list[str]:
    """Who opened the Home in the last VIEWER_RECENT seconds, most recent first."""
    now = time.time() if now is None else now
    found = cast(list[bytes], hub.redis.zrevrangebyscore(hub.keys.home_viewers, "+inf", now - VIEWER_RECENT,
                                                         start=0, num=VIEWERS_MAX))
    return [u.decode() for u in found]


# -- what the Home shows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRow:
    pool: str
    verdict: PoolVerdict | None  # None: no check has covered it yet (or Redis lost it)
    link: str | None  # the thread of the check that gave the verdict


@dataclass(frozen=True)
class Activity:
    """A check or change in flight: its job running, or waiting in its queue."""

    id: str
    command: str  # the request's command: /cms-status, /cms-replicate, cms-execute, remediate, ...
    args: dict[str, Any]
    user: str
    running: bool  # False: queued
    since: datetime  # when it was requested
    link: str | None


@dataclass(frozen=True)
class PendingApproval:
    id: str
    kind: str  # failover | recover
    requester: str
    needed: int
    approvers: tuple[str, ...]
    expires: datetime
    plan: dict[str, Any]
    link: str | None  # the thread with the card


@dataclass(frozen=True)
class Home:
    pools: list[PoolRow]  # every pool of the topology, in its order
    incidents: list[OpenIncident]
    activity: list[Activity]
    approvals: list[PendingApproval]
    runs: list[ScheduledRun]
    paused: str | None  # why the watch is not looking now
    at: datetime  # when this was read


def gather(hub: Hub, settings: Settings, topology: Topology, permalink: Permalink | None = None) -> Home:
    links = _Links(hub, permalink)
    verdicts = last_verdicts(hub)
    pools = [PoolRow(p.fqdn, verdicts.get(p.fqdn), links.of(v.request if (v := verdicts.get(p.fqdn)) else None))
             for p in topology.pools]
    watch = overview(hub, settings, permalink)
    return Home(pools=pools, incidents=watch.incidents, activity=activity(hub, links),
                approvals=pending_approvals(hub, links), runs=watch.runs, paused=watch.paused, at=datetime.now(UTC))


def activity(hub: Hub, links: _Links) -> list[Activity]:
    """The requests whose job runs now (a fresh heartbeat), then those queued, oldest first."""
    running = [i.decode() for i in cast(list[bytes], hub.redis.zrange(hub.keys.running, 0, -1))]
    queued = [i for kind in (CHANGE, PREFLIGHT, STATUS) for i in queue(hub, kind).get_job_ids()]
    seen: set[str] = set()
    out = []
    for request_id, is_running in [(i, True) for i in running] + [(i, False) for i in queued]:
        if request_id in seen:
            continue
        seen.add(request_id)
        req = links.request(request_id)
        if req is None or req.command in (INCIDENT_COMMAND, WATCH_NOTICE_COMMAND):
            continue  # a scheduled watch run (no request), or a record that is gone
        out.append(Activity(id=req.id, command=req.command, args=dict(req.args), user=req.user, running=is_running,
                            since=req.created_at, link=links.of(req.id)))
    return sorted(out, key=lambda a: (not a.running, a.since))


def pending_approvals(hub: Hub, links: _Links | None = None) -> list[PendingApproval]:
    """The approval cards waiting for a decision, the soonest to expire first."""
    links = links or _Links(hub, None)
    ids = [i.decode() for i in cast(list[bytes], hub.redis.zrangebyscore(hub.keys.approvals_pending, time.time(),
                                                                         "+inf"))]
    out = []
    for approval_id in ids:
        try:
            a = approvals.load(hub, approval_id)
        except LookupError:
            continue
        if a.status is not approvals.ApprovalStatus.pending:
            continue
        out.append(PendingApproval(id=a.id, kind=a.kind, requester=a.requester, needed=a.needed,
                                   approvers=tuple(a.approvers), expires=datetime.fromtimestamp(a.expires, tz=UTC),
                                   plan=a.plan, link=links.of(a.request)))
    return out


class _Links:
    """Requests and the links to their threads, each read once."""

    def __init__(self, hub: Hub, permalink: Permalink | None):
        self.hub, self.permalink = hub, permalink
        self._requests: dict[str, Request | None] = {}
        self._links: dict[str, str | None] = {}

    def request(self, request_id: str) -> Request | None:
        if request_id not in self._requests:
            raw = cast(bytes | None, self.hub.redis.get(self.hub.keys.request(request_id)))
            try:
                self._requests[request_id] = Request.model_validate_json(raw) if raw else None
            except ValidationError:
                self._requests[request_id] = None
        return self._requests[request_id]

    def of(self, request_id: str | None) -> str | None:
        """A link to the request's thread: its parent message in its channel, once posted."""
        if not request_id or self.permalink is None:
            return None
        if request_id not in self._links:
            self._links[request_id] = self._link(request_id)
        return self._links[request_id]

    def _link(self, request_id: str) -> str | None:
        req = self.request(request_id)
        if req is None and request_id.startswith("a"):  # an approval's entry: its card is in its request's thread
            owner = cast(bytes | None, self.hub.redis.hget(self.hub.keys.approval(request_id), "request"))
            req = self.request(owner.decode()) if owner else None
        if req is None or not req.channel:
            return None
        ts = cast(bytes | None, self.hub.redis.hget(self.hub.keys.slack_thread(req.id), "parent"))
        if not ts:
            return None
        assert self.permalink is not None
        try:
            return self.permalink(req.channel, ts.decode())
        except Exception:  # noqa: BLE001 - a missing link must not hide the line
            log.warning("no link for the thread of request %s", req.id)
            return None


# -- /cms-history ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    at: datetime
    request: str | None
    who: str | None
    what: str
    target: str | None  # None: the whole deployment (or the CMS)
    result: str | None
    detail: str | None
    link: str | None


def history(hub: Hub, topology: Topology, scope: Target | None = None, *, limit: int = HISTORY_LIMIT,
            permalink: Permalink | None = None, scan: int = HISTORY_SCAN) -> list[HistoryEntry]:
    """The latest `limit` checks, changes, decisions and incidents touching `scope` (None: all), newest
    first: one line per request and step (its latest entry: "requested" then "ok" is one line, "ok"),
    found among the last `scan` entries of the audit stream. Entries about the whole deployment or the
    CMS (a failover, an approval, a check of everything) touch every scope."""
    links = _Links(hub, permalink)
    out: list[HistoryEntry] = []
    seen: set[tuple[str, str]] = set()
    start: str = "+"
    read = 0
    while len(out) < limit and read < scan:
        batch = cast(list[tuple[bytes, dict[bytes, bytes]]],
                     hub.redis.xrevrange(hub.keys.audit, max=start, min="-", count=min(_CHUNK, scan - read)))
        if start != "+" and batch and batch[0][0].decode() == start:
            batch = batch[1:]  # the entry the last batch ended with
        if not batch:
            break
        read += len(batch)
        for entry_id, fields in batch:
            entry = {k.decode(): v.decode() for k, v in fields.items()}
            what = entry.get("what") or "?"
            request = entry.get("request")
            mark = (request or entry_id.decode(), what)
            if mark in seen:
                continue
            seen.add(mark)
            target = entry.get("target")
            target = None if target is None or target in WHOLE or target == topology.deployment.name else target
            if scope is not None and not _touches(topology, target, scope):
                continue
            out.append(HistoryEntry(at=_when(entry.get("at"), entry_id), request=request, who=entry.get("who"),
                                    what=what, target=target, result=entry.get("result"), detail=entry.get("detail"),
                                    link=links.of(request)))
            if len(out) >= limit:
                break
        start = batch[-1][0].decode()
    return out


def _touches(topology: Topology, target: str | None, scope: Target) -> bool:
    if target is None or scope.kind == "deployment":
        return True
    if target == scope.name:
        return True
    try:
        servers = set(topology.resolve(target).servers)
    except UnknownTarget:
        servers = {target}
    return bool(servers & set(scope.servers))


def _when(at: str | None, entry_id: bytes) -> datetime:
    if at:
        try:
            moment = datetime.fromisoformat(at)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        except ValueError:
            pass
    return datetime.fromtimestamp(int(entry_id.decode().partition("-")[0]) / 1000, tz=UTC)
