"""Nothing spins forever: running jobs heartbeat; a watchdog reports the ones that stop.

A job that dies with its whole worker (SIGKILL, OOM, power loss) leaves no
callback behind, and RQ would only notice at its job timeout. Each running job
keeps a score in a sorted set; a watchdog, in every worker and in the bot,
removes entries whose heartbeat is older than CMSBOT_HEARTBEAT_STALE (STALE) and appends a
`failed` event for them. Removal is atomic, so exactly one reporter speaks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from hub.contract import REQUEST_TTL, append_event, load_request

log = logging.getLogger(__name__)

RUNNING = "cmsbot:running"
BEAT_EVERY = 5.0
STALE = 20.0
LOST_CHECK = "the worker running this check stopped before it finished; the check was lost. Run it again."

_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"""


def lost_marker(request_id: str) -> str:
    return f"cmsbot:lost:{request_id}"


class Heartbeat:
    """While the job runs, its entry in RUNNING stays fresh. On success the entry goes;
    on an exception it stays, for the failure callback (or, failing that, the watchdog)."""

    def __init__(self, conn: redis.Redis, request_id: str):
        self.conn, self.request_id = conn, request_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{request_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_EVERY):
            try:
                self.conn.zadd(RUNNING, {self.request_id: time.time()})
            except redis.RedisError:
                log.warning("heartbeat for %s: Redis unavailable", self.request_id)

    def __enter__(self) -> Heartbeat:
        self.conn.zadd(RUNNING, {self.request_id: time.time()})
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if exc_type is None:
            self.conn.zrem(RUNNING, self.request_id)


def claim_report(conn: redis.Redis, request_id: str) -> bool:
    """True for the one reporter of a dead job (callback or watchdog), False for the others."""
    conn.zrem(RUNNING, request_id)
    return bool(conn.set(lost_marker(request_id), 1, nx=True, ex=REQUEST_TTL))


def sweep(conn: redis.Redis, on_lost: Callable[[str, str], str | None], stale: float = STALE) -> list[str]:
    """Report every request whose heartbeat stopped. `on_lost(request_id, command)` may return
    its own reason (a CMS change: outcome unknown); None means the generic one."""
    lost = [i.decode() for i in conn.eval(_SWEEP, 1, RUNNING, time.time() - stale)]
    for request_id in lost:
        if not conn.set(lost_marker(request_id), 1, nx=True, ex=REQUEST_TTL):
            continue
        try:
            command = load_request(conn, request_id).command
        except LookupError:
            command = ""
        reason = on_lost(request_id, command) or LOST_CHECK
        append_event(conn, request_id, "failed", {"reason": reason})
        log.warning("request %s lost its worker; reported", request_id)
    return lost


def watch(conn: redis.Redis, on_lost: Callable[[str, str], str | None], stop: threading.Event,
          every: float = BEAT_EVERY, stale: float = STALE) -> None:
    """The watchdog loop (a daemon thread in workers and in the bot)."""
    while not stop.wait(every):
        try:
            sweep(conn, on_lost, stale)
        except redis.RedisError as e:
            log.warning("watchdog: Redis unavailable (%s)", type(e).__name__)
        except Exception:  # noqa: BLE001 - the watchdog must outlive a bad entry
            log.exception("watchdog: unexpected error")
