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

from cms.messages import Failed
from cms.remediation import describe
from hub import cms_lock
from hub.contract import REQUEST_TTL, append_audit, append_event, load_request
from hub.jobs import CHANGE_COMMAND, REMEDIATE_COMMAND
from hub.keys import Hub

log = logging.getLogger(__name__)

BEAT_EVERY = 5.0
STALE = 20.0
LOST_CHECK = "the worker running this check stopped before it finished; the check was lost. Run it again."
UNKNOWN_OUTCOME = (
    "the worker stopped in the middle of the {what}: its outcome is unknown. It will NOT be retried. Before anything "
    "else, run /cms-status and, on a Front End, Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus "
    "and Get-CsService -CentralManagement: check ActiveMasterFqdn, ActiveFileTransferAgents and which pool is Active. "
    "If the master is blank or both pools are Active, run /cms-recover."
)
UNKNOWN_REMEDIATION = ("the worker stopped in the middle of {what}: its outcome is unknown (it may have run). "
                       "Run /cms-status to see the server's state before running it again.")

_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"""


class Heartbeat:
    """While the job runs, its entry in the running set stays fresh. On success the entry goes;
    on an exception it stays, for the failure callback (or, failing that, the watchdog)."""

    def __init__(self, hub: Hub, request_id: str):
        self.hub, self.request_id = hub, request_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{request_id}", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_EVERY):
            try:
                self.hub.redis.zadd(self.hub.keys.running, {self.request_id: time.time()})
            except redis.RedisError:
                log.warning("heartbeat for %s: Redis unavailable", self.request_id)

    def __enter__(self) -> Heartbeat:
        self.hub.redis.zadd(self.hub.keys.running, {self.request_id: time.time()})
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if exc_type is None:
            self.hub.redis.zrem(self.hub.keys.running, self.request_id)


def claim_report(hub: Hub, request_id: str) -> bool:
    """True for the one reporter of a dead job (callback or watchdog), False for the others."""
    hub.redis.zrem(hub.keys.running, request_id)
    return bool(hub.redis.set(hub.keys.lost(request_id), 1, nx=True, ex=REQUEST_TTL))


def sweep(hub: Hub, on_lost: Callable[[str, str], str | None], stale: float = STALE) -> list[str]:
    """Report every request whose heartbeat stopped. `on_lost(request_id, command)` may return
    its own reason (a CMS change: outcome unknown); None means the generic one."""
    lost = [i.decode() for i in hub.redis.eval(_SWEEP, 1, hub.keys.running, time.time() - stale)]
    for request_id in lost:
        if not hub.redis.set(hub.keys.lost(request_id), 1, nx=True, ex=REQUEST_TTL):
            continue
        try:
            command = load_request(hub, request_id).command
        except LookupError:
            command = ""
        reason = on_lost(request_id, command) or LOST_CHECK
        append_event(hub, request_id, Failed(reason=reason))
        log.warning("request %s lost its worker; reported", request_id)
    return lost


def watch(hub: Hub, on_lost: Callable[[str, str], str | None], stop: threading.Event,
          every: float = BEAT_EVERY, stale: float = STALE) -> None:
    """The watchdog loop (a daemon thread in workers and in the bot)."""
    while not stop.wait(every):
        try:
            sweep(hub, on_lost, stale)
        except redis.RedisError as e:
            log.warning("watchdog: Redis unavailable (%s)", type(e).__name__)
        except Exception:  # noqa: BLE001 - the watchdog must outlive a bad entry
            log.exception("watchdog: unexpected error")


def lost_reason(hub: Hub, request_id: str, command: str, cooldown: float) -> str | None:
    """What to say when a job's worker vanished; for a CMS change: outcome unknown, cooldown;
    for a remediation: outcome unknown, audited, its guard freed."""
    if command == REMEDIATE_COMMAND:
        return _lost_remediation(hub, request_id)
    if command != CHANGE_COMMAND:
        return None
    holder = cms_lock.holder(hub)
    if holder and f"request {request_id}" in holder:
        cms_lock.break_lock(hub)  # its holder is dead; the cooldown below still holds
    cms_lock.set_cooldown(hub, cooldown, "the last CMS change ended with an unknown outcome: check first")
    append_audit(hub, request=request_id, what="execute", result="unknown: the worker stopped")
    return UNKNOWN_OUTCOME.format(what="CMS change")


def _lost_remediation(hub: Hub, request_id: str) -> str:
    try:
        request = load_request(hub, request_id)
    except LookupError:
        return UNKNOWN_REMEDIATION.format(what="the remediation")
    kind, target = request.args.get("action", ""), request.args.get("target", "")
    hub.redis.delete(hub.keys.remediating(kind, target))  # it will never end by itself: the next click may run it
    append_audit(hub, request=request_id, who=request.user, what=kind, target=target,
                 result="unknown: the worker stopped")
    return UNKNOWN_REMEDIATION.format(what=describe(kind, target) if kind and target else "the remediation")
