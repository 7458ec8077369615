"""A job's writes to Redis (its events, its audit entries, the state a CMS change leaves behind),
in order, riding out a Redis outage.

Every write goes through one queue drained by one thread: while Redis answers, a write lands
within milliseconds; while it does not, the writes wait in the job, in their order, and the
thread tries again until Redis is back. The job itself never waits for Redis to write, so a
convergence watch (which reads the servers, not Redis) keeps watching through an outage. At its
end the job waits for the queue to drain before it reports success.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from cms.messages import Emit, Message
from hub.contract import append_audit, append_event
from hub.keys import Hub

log = logging.getLogger(__name__)

RETRY_EVERY = 1.0  # seconds between attempts while Redis does not answer (each also has the client's retries)
OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError)


class Outbox:
    def __init__(self, hub: Hub, name: str = "outbox"):
        self.hub = hub
        self._queue: deque[tuple[str, Callable[[Hub], Any]]] = deque()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._drain, name=name, daemon=True)
        self._thread.start()

    # -- what a job writes -------------------------------------------------------------------------
    def put(self, what: str, write: Callable[[Hub], Any]) -> None:
        """Queue one write; `what` names it in the log if it is held or dropped."""
        with self._cond:
            self._queue.append((what, write))
            self._cond.notify_all()

    def emit(self, request_id: str, message: Message) -> None:
        token = secrets.token_hex(8)  # the same for every retry of this write: it appends once
        self.put(f"{message.kind} event of {request_id}", lambda hub: append_event(hub, request_id, message, token))

    def emitter(self, request_id: str) -> Emit:
        return lambda message: self.emit(request_id, message)

    def audit(self, **fields: Any) -> None:
        self.put(f"audit {fields.get('what')}={fields.get('result')}", lambda hub: append_audit(hub, **fields))

    # -- the end of the job -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    @property
    def held(self) -> bool:
        """Redis has not answered the last attempt: writes are waiting in the job."""
        return self._down_since is not None

    def drain(self, timeout: float) -> bool:
        """Wait until every queued write has landed; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 1.0))
        return True

    def close(self, timeout: float) -> bool:
        """Drain, then stop the thread. What could not be written is logged, write by write."""
        drained = self.drain(timeout)
        with self._cond:
            self._closed = True
            left = [what for what, _ in self._queue]
            self._queue.clear()
            self._cond.notify_all()
        for what in left:
            log.error("Redis did not come back in %.0f s: %s was not written", timeout, what)
        return drained

    # -- the thread ---------------------------------------------------------------------------------
    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                what, write = self._queue[0]
                self._busy = True
            try:
                write(self.hub)
            except OUTAGE as e:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("Redis unavailable (%s): holding the job's writes, in order, until it is back",
                                type(e).__name__)
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
                    self._cond.wait(RETRY_EVERY)  # keeps its place at the head of the queue
                continue
            except Exception:  # noqa: BLE001 - one bad write must not hold back the ones after it
                log.exception("could not write %s; dropped", what)
            if self._down_since is not None:
                log.warning("Redis is back after %.0f s: writing what the job held", time.monotonic() -
                            self._down_since)
                self._down_since = None
            with self._cond:
                if self._queue and self._queue[0][1] is write:
                    self._queue.popleft()
                self._busy = False
                self._cond.notify_all()
