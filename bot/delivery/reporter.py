"""Turns the events stream into messages, exactly once per (request, seq).

Reads the namespace's events stream with a consumer group, delivers each event through a
sink, and acknowledges it only after the sink accepted it. After a restart it
first re-reads what it had read but not acknowledged. A per-request high-water
mark makes redelivery of an already delivered event a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import cast

import redis

from hub.contract import REQUEST_TTL, Event
from hub.keys import Hub

log = logging.getLogger(__name__)

Deliver = Callable[[Event], bool]
# XREADGROUP's reply on a connection that does not decode responses:
# [[stream, [(entry id, its fields, empty once trimmed from the stream), ...]]]
ReadReply = list[tuple[bytes, list[tuple[bytes, dict[bytes | str, bytes | str]]]]]


STALE_MS = 60_000  # another consumer's entry unacknowledged this long: that consumer is gone
CLAIM_EVERY = 30.0
RETRY_DELAY = 1.0
MAX_ATTEMPTS = 30  # a transient failure this often in a row: give the event up, keep the others flowing


class Reporter:
    def __init__(self, hub: Hub, group: str, consumer: str, deliver: Deliver,
                 wants: Callable[[Event], bool] = lambda e: True, start: str = "0"):
        self.hub, self.conn, self.stream = hub, hub.redis, hub.keys.events
        self.group, self.consumer = group, consumer
        self._deliver, self._wants = deliver, wants
        self._backlog = True  # first read our own unacknowledged entries
        self._next_claim = 0.0
        self._attempts: dict[bytes, int] = {}
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

    def poll(self, block_ms: int = 1000, count: int = 100) -> int:
        """Deliver what is waiting; returns how many events were delivered."""
        if time.monotonic() >= self._next_claim:
            self._claim_stale()
        stream_id = "0" if self._backlog else ">"
        reply = cast(ReadReply, self.conn.xreadgroup(self.group, self.consumer, {self.stream: stream_id},
                                                     count=count, block=None if self._backlog else block_ms))
        entries = reply[0][1] if reply else []
        if self._backlog and not entries:
            self._backlog = False
        delivered = 0
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream while pending
                self.conn.xack(self.stream, self.group, entry_id)
                continue
            event = Event.from_fields(fields)
            if not self._wants(event):
                self.conn.xack(self.stream, self.group, entry_id)
                continue
            mark = self._mark_key(event.request)
            last = int(self.conn.get(mark) or 0)
            if event.seq <= last:
                self.conn.xack(self.stream, self.group, entry_id)
                continue
            if not self._try(entry_id, event):
                self._backlog = True  # keep order: retry this one first, a little later
                time.sleep(RETRY_DELAY)
                break
            with self.conn.pipeline() as pipe:
                pipe.set(mark, event.seq, ex=REQUEST_TTL)
                pipe.xack(self.stream, self.group, entry_id)
                pipe.execute()
            delivered += 1
        return delivered

    def _try(self, entry_id: bytes, event: Event) -> bool:
        """Deliver one event; True when done with it. A bug in delivering one event
        must never stop delivery of the others, and nothing retries forever."""
        try:
            done = self._deliver(event)
        except Exception:  # noqa: BLE001 - logged with the event, then given up
            log.exception("delivering event %s/%s (%s) failed; giving it up", event.request, event.seq, event.kind)
            done = True
        if done:
            self._attempts.pop(entry_id, None)
            return True
        attempts = self._attempts[entry_id] = self._attempts.get(entry_id, 0) + 1
        if attempts >= MAX_ATTEMPTS:
            log.error("event %s/%s (%s) still undeliverable after %d attempts; giving it up",
                      event.request, event.seq, event.kind, attempts)
            self._attempts.pop(entry_id, None)
            return True
        return False

    def _claim_stale(self) -> None:
        """Take over entries a dead consumer read but never acknowledged."""
        self._next_claim = time.monotonic() + CLAIM_EVERY
        claimed = self.conn.xautoclaim(self.stream, self.group, self.consumer, min_idle_time=STALE_MS,
                                       start_id="0-0", count=100, justid=True)
        if claimed:  # redis-py gives just the claimed ids when justid is set
            log.info("%s took over %d unacknowledged events", self.consumer, len(claimed))
            self._backlog = True

    def forget(self, request: str) -> None:
        self.conn.delete(self._mark_key(request))

    def destroy(self) -> None:
        self.conn.xgroup_destroy(self.stream, self.group)
