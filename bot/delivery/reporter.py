"""Turns the events stream into messages, exactly once per (request, seq), in order per request.

Reads the namespace's events stream with a consumer group, delivers each event through a sink,
and acknowledges it only after the sink accepted it. After a restart it first re-reads what it
had read but not acknowledged. A per-request high-water mark makes redelivery of an already
delivered event a no-op.

When the sink cannot take an event now (Slack down or rate limiting), the event is *held*: kept
in memory and unacknowledged in the group, with the request's later events queued behind it,
and retried with backoff for up to `patience` seconds (a day by default), so a result, a
failure, an approval card or a decision is never dropped before then. Of the progress a held
request piles up only the latest is kept. A transient failure closes a gate for every request
for a moment (an outage stalls them all, without hammering Slack); each held request then waits
its own backoff, so one request that keeps failing while Slack takes the others cannot stop
them. Once a held request drains after a delay of `late_after` seconds or more, the sink's `late`
hook says so in its thread.

If the consumer group disappears (Redis restarted without persistence, FLUSHDB, eviction), it is
created again from the start of the stream, so whatever was appended since is delivered. Requests
this reporter had seen start and not finish are watched: one whose events do not come although
its job is no longer queued or running is handed to the sink's `lost` hook (its thread says
so). What is lost or given up is logged and counted in the namespace's delivery counts.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis
from redis.typing import StreamIdT

from hub import telemetry
from hub.contract import REQUEST_TTL, Event, trim_events
from hub.keys import Hub

log = logging.getLogger(__name__)

Deliver = Callable[[Event], bool]
# XREADGROUP's reply on a connection that does not decode responses:
# [[stream, [(entry id, its fields, empty once trimmed from the stream), ...]]]
ReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes | str, bytes | str]]]]]


STALE_MS = 60_000  # another consumer's entry unacknowledged this long: that consumer is gone
CLAIM_EVERY = 30.0
TRIM_EVERY = 60.0
RETRY_DELAY = 1.0  # the first wait after a failure; doubled after each further one, up to `backoff`
PATIENCE = 24 * 3600.0
BACKOFF = 60.0
LOST_GRACE = 20.0  # after the group came back, how long a started request may stay silent before it is checked
OPENING_KINDS = frozenset({"accepted"})
CLOSING_KINDS = frozenset({"result", "failed", "preflight"})  # preflight: the card waits for people, not the job
OPEN_TRACKED = 10_000


@dataclass
class _Held:
    """One request's events that the sink did not take yet, oldest first."""

    entries: deque[tuple[bytes, Event]]
    since: float  # time.time() when it was first held
    attempts: int = 0
    next_at: float = 0.0  # time.monotonic() of its next attempt


@dataclass
class _Suspect:
    check_at: float  # time.monotonic()
    notes: int = 0  # attempts to tell its thread


@dataclass(frozen=True)
class Hooks:
    """What a sink may do besides delivering (all optional)."""

    late: Callable[[Event, float], bool] | None = None  # say the event came `seconds` late; False: retry
    lost: Callable[[str], bool] | None = None  # say a request's events were lost; False: retry later
    in_flight: Callable[[str], bool] | None = None  # may its job still append events (queued or running)?
    # every event once it is delivered, or skipped as not the sink's (the App Home's refresh: it must not fail)
    seen: Callable[[Event], None] | None = None


class Reporter:
    def __init__(self, hub: Hub, group: str, consumer: str, deliver: Deliver,
                 wants: Callable[[Event], bool] = lambda e: True, start: str = "0", *,
                 patience: float = PATIENCE, backoff: float = BACKOFF, late_after: float = 60.0,
                 keep: float | None = None, lost_grace: float = LOST_GRACE, hooks: Hooks | None = None):
        self.hub, self.conn, self.stream = hub, hub.redis, hub.keys.events
        self.group, self.consumer = group, consumer
        self._deliver, self._wants = deliver, wants
        self.patience, self.backoff, self.late_after = patience, backoff, late_after
        self.keep, self.lost_grace = keep, lost_grace  # keep None: this reporter does not trim the stream
        self.hooks = hooks or Hooks()
        self.counts: Counter[str] = Counter()  # what was lost, given up or collapsed, by reason
        self._backlog: str | None = "0"  # first read our own unacknowledged entries, from this id on
        self._next_claim = 0.0
        self._next_trim = time.monotonic() + TRIM_EVERY
        self._capped = -1
        self._held: dict[str, _Held] = {}
        self._held_ids: set[bytes] = set()
        self._orphans: set[bytes] = set()  # held entries whose stream is gone (see _recreate)
        self._gate_until = 0.0  # time.monotonic(): no delivery attempt before (Slack failed)
        self._streak = 0  # transient failures in a row, any request
        self._open: OrderedDict[str, None] = OrderedDict()  # started, not finished (what we delivered)
        self._suspects: dict[str, _Suspect] = {}
        self._caught_up = False
        self.ensure_group(hub, group, start)

    @staticmethod
    def ensure_group(hub: Hub, group: str, start: str = "$") -> None:
        """Create the consumer group unless it exists (then its position is kept)."""
        try:
            hub.redis.xgroup_create(hub.keys.events, group, id=start, mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _mark_key(self, request: str) -> str:
        return self.hub.keys.delivered(self.group, request)

    @property
    def held(self) -> int:
        """Events waiting for the sink (Slack) to take them."""
        return len(self._held_ids)

    # -- the loop -----------------------------------------------------------------------------
    def poll(self, block_ms: int = 1000, count: int = 100) -> int:
        """Deliver what is waiting (and retry what is held); returns how many events were delivered."""
        try:
            return self._poll(block_ms, count)
        except (redis.ConnectionError, redis.TimeoutError):
            self._backlog = "0"  # an entry read but not acknowledged when Redis went away: read it again
            raise
        except redis.ResponseError as e:
            if str(e).startswith("UNBLOCKED"):  # the stream was deleted while we waited: NOGROUP next time
                return 0
            if "NOGROUP" not in str(e):
                raise
            self._recreate()
            return 0

    def _poll(self, block_ms: int, count: int) -> int:
        now = time.monotonic()
        if now >= self._next_claim:
            self._claim_stale()
        if self.keep is not None and now >= self._next_trim:
            self.trim()
        delivered = self._retry_due()
        if self._backlog is not None:
            reply = cast(ReadReply, self.conn.xreadgroup(self.group, self.consumer, {self.stream: self._backlog},
                                                         count=count))
            entries = reply[0][1] if reply else []
            self._backlog = entries[-1][0].decode() if entries else None
        else:
            reply = cast(ReadReply, self.conn.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                                         count=count, block=self._block(block_ms)))
            entries = reply[0][1] if reply else []
            self._caught_up = len(entries) < count
        for entry_id, fields in entries:
            delivered += self._take(entry_id, fields)
        if self._suspects and self._caught_up:
            self._check_suspects()
        return delivered

    def _block(self, block_ms: int) -> int:
        """How long to wait for new entries: not past the next retry that is due."""
        if not self._held:
            return block_ms
        wake = max(self._gate_until, min(h.next_at for h in self._held.values()))
        return int(min(block_ms, max(10.0, (wake - time.monotonic()) * 1000)))

    def _take(self, entry_id: bytes, fields: dict[bytes | str, bytes | str]) -> int:
        """A newly read entry: deliver it, hold it behind its request's held ones, or skip it."""
        if entry_id in self._held_ids:  # re-read from our pending entries: it is waiting already
            return 0
        if not fields:  # trimmed from the stream after we read it and before we acknowledged it
            log.error("event %s was removed from the stream before it was delivered: it is lost", entry_id.decode())
            self._count("trimmed_pending")
            self.conn.xack(self.stream, self.group, entry_id)
            return 0
        event = Event.from_fields(fields)
        if not self._wants(event):
            self.conn.xack(self.stream, self.group, entry_id)
            self._seen(event)
            return 0
        held = self._held.get(event.request)
        if held is not None or self._gate_closed():
            self._hold(entry_id, event, held)
            return 0
        if self._deliver_one(entry_id, event, None):
            return 1
        held = self._hold(entry_id, event, None)
        self._failed(held)
        return 0

    # -- holding and retrying ----------------------------------------------------------------------
    def _gate_closed(self) -> bool:
        return time.monotonic() < self._gate_until

    def _hold(self, entry_id: bytes, event: Event, held: _Held | None) -> _Held:
        if held is None:
            held = self._held[event.request] = _Held(deque(), time.time())
        held.entries.append((entry_id, event))
        self._held_ids.add(entry_id)
        self._collapse(held)
        return held

    def _collapse(self, held: _Held) -> None:
        """Progress that a later event of the same request follows is not worth delivering late."""
        last = len(held.entries) - 1
        drop = [entry_id for i, (entry_id, event) in enumerate(held.entries) if event.kind == "progress" and i < last]
        if not drop:
            return
        held.entries = deque(e for e in held.entries if e[0] not in drop)
        for entry_id in drop:
            self._held_ids.discard(entry_id)
            if self._orphans.isdisjoint((entry_id,)):
                self.conn.xack(self.stream, self.group, entry_id)
            self._orphans.discard(entry_id)
        self.counts["progress_collapsed"] += len(drop)

    def _wait(self, attempts: int) -> float:
        return min(self.backoff, RETRY_DELAY * 2 ** max(0, attempts - 1))

    def _failed(self, held: _Held) -> None:
        """The sink refused the held request's first event for now: back off (it, and for a moment
        every request), or give the request up once its patience is spent."""
        now = time.monotonic()
        held.attempts += 1
        held.next_at = now + self._wait(held.attempts)
        self._streak += 1
        self._gate_until = now + self._wait(self._streak)
        request = held.entries[0][1].request
        waited = time.time() - held.since
        if held.attempts & (held.attempts - 1) == 0:  # the 1st, 2nd, 4th, 8th... attempt: a log that stays short
            log.warning("request %s: the sink did not take event %s (%s), attempt %d; holding it and %d later "
                        "events, retrying with backoff", request, held.entries[0][1].seq, held.entries[0][1].kind,
                        held.attempts, len(held.entries) - 1)
        if waited > self.patience:
            for entry_id, event in held.entries:
                log.error("event %s/%s (%s) still undeliverable after %.0f s; giving it up", event.request, event.seq,
                          event.kind, waited)
                self._count("given_up")
                self.conn.xack(self.stream, self.group, entry_id)
                self._held_ids.discard(entry_id)
                self._orphans.discard(entry_id)
            del self._held[request]

    def _retry_due(self) -> int:
        """Deliver held requests whose wait is over, earliest first, while the sink takes them."""
        if not self._held or self._gate_closed():
            return 0
        now, delivered = time.monotonic(), 0
        for request in sorted((r for r, h in self._held.items() if h.next_at <= now),
                              key=lambda r: self._held[r].next_at):
            held = self._held[request]
            self._collapse(held)
            while held.entries:
                entry_id, event = held.entries[0]
                if not self._deliver_one(entry_id, event, held):
                    self._failed(held)
                    return delivered
                held.entries.popleft()
                self._held_ids.discard(entry_id)
                self._orphans.discard(entry_id)
                delivered += 1
            del self._held[request]
            if held.attempts:
                log.info("request %s: delivered after %.0f s of holding (%d attempts)", request,
                         time.time() - held.since, held.attempts)
        return delivered

    def _deliver_one(self, entry_id: bytes, event: Event, held: _Held | None) -> bool:
        """Deliver one event and acknowledge it; False when the sink cannot take it now."""
        mark, orphan = self._mark_key(event.request), entry_id in self._orphans
        last = 0 if orphan else int(cast(bytes | None, self.conn.get(mark)) or 0)
        if event.seq <= last:  # delivered before (a redelivery after a restart)
            self.conn.xack(self.stream, self.group, entry_id)
            return True
        if not self._try(event):
            return False
        note = self.hooks.late
        if held is not None and len(held.entries) == 1 and note is not None:
            late = time.time() - held.since
            if late >= self.late_after and not self._call(lambda: note(event, late), "the late note"):
                return False  # delivery is idempotent per step: the retry only adds the note
        if not orphan:
            with self.conn.pipeline() as pipe:
                pipe.set(mark, event.seq, ex=REQUEST_TTL)
                pipe.xack(self.stream, self.group, entry_id)
                pipe.execute()
        self._streak = 0
        telemetry.delivered(event.kind, entry_id)  # its lag since the append, for the metrics
        self._track(event)
        self._seen(event)
        return True

    def _seen(self, event: Event) -> None:
        seen = self.hooks.seen
        if seen is None:
            return
        try:
            seen(event)
        except Exception:  # noqa: BLE001 - never a reason not to deliver the next event
            log.exception("the seen hook failed on event %s/%s", event.request, event.seq)

    def _try(self, event: Event) -> bool:
        """Deliver one event; True when done with it (delivered, or permanently undeliverable)."""
        return self._call(lambda: self._deliver(event), f"event {event.request}/{event.seq} ({event.kind})")

    def _call(self, call: Callable[[], bool], what: str) -> bool:
        """A bug in delivering one event must never stop delivery of the others: it is logged,
        counted and given up. Redis being unavailable is not a bug: the caller retries."""
        try:
            return bool(call())
        except (redis.ConnectionError, redis.TimeoutError):
            raise
        except Exception:  # noqa: BLE001 - logged with the event, then given up
            log.exception("delivering %s failed; giving it up", what)
            self._count("failed_in_delivery")
            return True

    def _count(self, reason: str, n: int = 1) -> None:
        self.counts[reason] += n
        self.conn.hincrby(self.hub.keys.delivery_counts, reason, n)

    # -- requests started and not finished, and the group coming back --------------------------------
    def _track(self, event: Event) -> None:
        if event.kind in OPENING_KINDS:
            self._open[event.request] = None
            self._open.move_to_end(event.request)
            while len(self._open) > OPEN_TRACKED:
                self._open.popitem(last=False)
        elif event.kind in CLOSING_KINDS:
            self._open.pop(event.request, None)
            self._suspects.pop(event.request, None)

    def _recreate(self) -> None:
        """The group is gone (with the stream, or alone): create it again from the start of the
        stream, so that everything appended since is delivered."""
        log.error("the consumer group %r of %s is gone (Redis restarted without persistence, FLUSHDB or eviction): "
                  "creating it again from the start of the stream; %d requests in flight are watched",
                  self.group, self.stream, len(self._open))
        self.ensure_group(self.hub, self.group, "0")
        self._count("group_recreated")
        self._backlog, self._caught_up = None, False
        # What we hold from the old group: entries still in the stream come again (and are skipped, being
        # held); those gone can only be delivered from here (progress among them is not worth it).
        for request, held in list(self._held.items()):
            kept: deque[tuple[bytes, Event]] = deque()
            for entry_id, event in held.entries:
                if self.conn.xrange(self.stream, entry_id, entry_id):
                    kept.append((entry_id, event))
                elif event.kind != "progress":  # delivered from here, without its mark: seqs may start again
                    kept.append((entry_id, event))
                    self._orphans.add(entry_id)
                else:
                    self._held_ids.discard(entry_id)
            held.entries = kept
            if not kept:
                del self._held[request]
        check_at = time.monotonic() + self.lost_grace
        for request in self._open:
            self._suspects.setdefault(request, _Suspect(check_at))

    def _check_suspects(self) -> None:
        """A started request whose events have not come since the group came back: once its job is
        neither queued nor running, its events are gone; the sink says so in its thread."""
        now = time.monotonic()
        for request, suspect in list(self._suspects.items()):
            if request not in self._open:
                del self._suspects[request]
                continue
            if now < suspect.check_at or request in self._held:
                continue
            if self.hooks.in_flight is not None and self.hooks.in_flight(request):
                suspect.check_at = now + self.lost_grace
                continue
            lost = self.hooks.lost
            told = lost is None or self._call(lambda: lost(request), f"the loss of {request}")  # noqa: B023
            if told:
                log.error("request %s: its events were lost with the consumer group and its job is no longer "
                          "queued or running", request)
                self._count("requests_lost")
                del self._suspects[request]
                self._open.pop(request, None)
            else:
                suspect.notes += 1
                suspect.check_at = now + self._wait(suspect.notes)

    # -- housekeeping ----------------------------------------------------------------------------------
    def trim(self) -> None:
        """Trim what every consumer group has acknowledged (and is older than `keep`)."""
        self._next_trim = time.monotonic() + TRIM_EVERY
        if self.keep is None:
            return
        trimmed = trim_events(self.hub, self.keep, mine=self.group, abandoned_after=self.patience)
        if trimmed.removed:
            log.debug("trimmed %d delivered events", trimmed.removed)
        if self._capped >= 0 and trimmed.capped > self._capped:
            log.error("the events stream reached its hard cap: %d entries were cut whatever the consumer groups "
                      "had read (%d so far); undelivered events among them are lost", trimmed.capped - self._capped,
                      trimmed.capped)
        self._capped = trimmed.capped

    def _claim_stale(self) -> None:
        """Take over entries a dead consumer read but never acknowledged, and keep the ones we hold
        our own (claiming resets their idle time, so another reporter does not take them)."""
        self._next_claim = time.monotonic() + CLAIM_EVERY
        held: list[StreamIdT] = [i for i in self._held_ids if i not in self._orphans]
        for i in range(0, len(held), 100):
            self.conn.xclaim(self.stream, self.group, self.consumer, 0, held[i:i + 100], justid=True)
        reply = cast(list, self.conn.xautoclaim(self.stream, self.group, self.consumer, min_idle_time=STALE_MS,
                                                start_id="0-0", count=100))
        claimed = [entry_id for entry_id, _ in reply[1] if entry_id not in self._held_ids]
        deleted = reply[2] if len(reply) > 2 else []
        if deleted:  # pending entries that were no longer in the stream: XAUTOCLAIM dropped them
            log.error("%d events were removed from the stream before they were delivered: they are lost",
                      len(deleted))
            self._count("trimmed_pending", len(deleted))
        if claimed:
            log.info("%s took over %d unacknowledged events", self.consumer, len(claimed))
            self._backlog = "0"

    def forget(self, request: str) -> None:
        self.conn.delete(self._mark_key(request))

    def destroy(self) -> None:
        self.conn.xgroup_destroy(self.stream, self.group)
