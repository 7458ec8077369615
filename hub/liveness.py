"""Nothing spins forever: running jobs heartbeat; a watchdog reports the ones that stop.

A job that dies with its whole worker (SIGKILL, OOM, power loss) leaves no
callback behind, and RQ would only notice at its job timeout. Each running job
keeps a score in a sorted set; a watchdog, in every worker and in the bot,
removes entries whose heartbeat is older than CMSBOT_HEARTBEAT_STALE (STALE) and appends a
`failed` event for them. Removal is atomic, so exactly one reporter speaks.

A Redis outage silences every heartbeat at once: the watchdog does not judge heartbeats until
every running job has had STALE seconds to beat again (after its own last Redis error, after a
slow answer, and while Redis has been up for less than STALE).

A CMS change or remediation that is lost leaves an unknown outcome (hub.cms_lock) that no TTL
ends: an approver other than its requester clears it once someone has checked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from cms.messages import Failed
from cms.preflight import OutcomeUnknown, Plan, describe_plan
from cms.remediation import describe
from hub import approvals, cms_lock
from hub.contract import REQUEST_TTL, append_audit, append_event, load_request, utcnow
from hub.jobs import CHANGE_COMMAND, REMEDIATE_COMMAND
from hub.keys import Hub

log = logging.getLogger(__name__)

BEAT_EVERY = 5.0
STALE = 20.0
LOST_CHECK = "the worker running this check stopped before it finished; the check was lost. Run it again."
CHECK_CHANGE = (
    "Before anything else, run /cms-status and, on a Front End, Get-CsManagementStoreReplicationStatus "
    "-CentralManagementStoreStatus and Get-CsService -CentralManagement: check ActiveMasterFqdn, "
    "ActiveFileTransferAgents and which pool is Active. If the master is blank or both pools are Active, run "
    "/cms-recover once this is cleared."
)
STOPPED = "ended with an unknown outcome: its worker stopped"
CHECK_REMEDIATION = "Run /cms-status to see the server's state before running it again."
STICKY = (" No CMS change or remediation starts until an approver other than the requester has checked and "
          "pressed \"Checked: clear\".")
UNKNOWN_OUTCOME = "the worker stopped in the middle of the {what}: its outcome is unknown. It will NOT be retried. " \
    + CHECK_CHANGE + STICKY
UNKNOWN_REMEDIATION = ("the worker stopped in the middle of {what}: its outcome is unknown (it may have run). "
                       + CHECK_REMEDIATION + STICKY)

_SWEEP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, id in ipairs(ids) do redis.call('ZREM', KEYS[1], id) end
return ids
"""


class Heartbeat:
    """While the job runs, its entry in the running set stays fresh. On success the entry goes;
    on an exception it stays, for the failure callback (or, failing that, the watchdog).
    Hooks (a CMS change's lock guard) run with every beat, in the heartbeat's thread."""

    def __init__(self, hub: Hub, request_id: str):
        self.hub, self.request_id = hub, request_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{request_id}", daemon=True)
        self._hooks: list[Callable[[], None]] = []

    def add(self, hook: Callable[[], None]) -> None:
        self._hooks.append(hook)

    def remove(self, hook: Callable[[], None]) -> None:
        if hook in self._hooks:
            self._hooks.remove(hook)

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_EVERY):
            try:
                self.hub.redis.zadd(self.hub.keys.running, {self.request_id: time.time()})
            except redis.RedisError:
                log.warning("heartbeat for %s: Redis unavailable", self.request_id)
            for hook in list(self._hooks):
                try:
                    hook()
                except Exception:  # noqa: BLE001 - a hook must not stop the heartbeat
                    log.exception("heartbeat for %s: a hook failed", self.request_id)

    def __enter__(self) -> Heartbeat:
        self.hub.redis.zadd(self.hub.keys.running, {self.request_id: time.time()})
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        self._hooks.clear()
        if exc_type is None:
            try:
                self.hub.redis.zrem(self.hub.keys.running, self.request_id)
            except redis.RedisError:  # the job has said its last word (mark_ended): the watchdog skips it
                log.warning("heartbeat for %s: Redis unavailable at the end", self.request_id)


def claim_report(hub: Hub, request_id: str) -> bool:
    """True for the one reporter of a dead job (callback or watchdog), False for the others."""
    hub.redis.zrem(hub.keys.running, request_id)
    return bool(hub.redis.set(hub.keys.lost(request_id), 1, nx=True, ex=REQUEST_TTL))


def mark_ended(hub: Hub, request_id: str) -> None:
    """The job has delivered its own last word: no callback or watchdog reports it afterwards
    (RQ's own bookkeeping may still fail after it, e.g. in a Redis outage)."""
    hub.redis.set(hub.keys.lost(request_id), 1, nx=True, ex=REQUEST_TTL)


OnLost = Callable[[str, str], Failed | str | None]


def sweep(hub: Hub, on_lost: OnLost, stale: float = STALE) -> list[str]:
    """Report every request whose heartbeat stopped. `on_lost(request_id, command)` may return
    its own message or reason (a CMS change: outcome unknown); None means the generic one."""
    lost = [i.decode() for i in hub.redis.eval(_SWEEP, 1, hub.keys.running, time.time() - stale)]
    for request_id in lost:
        if not hub.redis.set(hub.keys.lost(request_id), 1, nx=True, ex=REQUEST_TTL):
            continue
        try:
            command = load_request(hub, request_id).command
        except LookupError:
            command = ""
        found = on_lost(request_id, command)
        append_event(hub, request_id, found if isinstance(found, Failed) else Failed(reason=found or LOST_CHECK))
        log.warning("request %s lost its worker; reported", request_id)
    return lost


SLOW = 2.0  # seconds: a Redis answer this slow came through the client's retries, i.e. an outage


def redis_uptime(hub: Hub) -> float | None:
    try:
        return float(hub.redis.info("server")["uptime_in_seconds"])
    except (redis.ResponseError, KeyError, TypeError, ValueError):
        return None  # INFO refused (some managed services): the other guards still hold


def watch(hub: Hub, on_lost: OnLost, stop: threading.Event, every: float = BEAT_EVERY, stale: float = STALE) -> None:
    """The watchdog loop (a daemon thread in workers and in the bot). After a Redis outage every
    heartbeat is old: it waits `stale` seconds, so the jobs that are alive can beat again first."""
    quiet_until = 0.0
    while not stop.wait(every):
        try:
            asked = time.monotonic()
            uptime = redis_uptime(hub)
            if time.monotonic() - asked > SLOW:
                quiet_until = time.monotonic() + stale
            if time.monotonic() < quiet_until or (uptime is not None and uptime < stale):
                continue
            sweep(hub, on_lost, stale)
        except redis.RedisError as e:
            quiet_until = time.monotonic() + stale
            log.warning("watchdog: Redis unavailable (%s)", type(e).__name__)
        except Exception:  # noqa: BLE001 - the watchdog must outlive a bad entry
            log.exception("watchdog: unexpected error")


def lost_reason(hub: Hub, request_id: str, command: str, cooldown: float) -> Failed | None:
    """What to say when a job's worker vanished. A CMS change or a remediation: outcome unknown,
    recorded as such (sticky until an approver clears it) and audited; a CMS change also frees
    its lock and starts the cooldown, a remediation frees its guard."""
    if command == REMEDIATE_COMMAND:
        return _lost_remediation(hub, request_id)
    if command != CHANGE_COMMAND:
        return None
    what, requester = "CMS change", ""
    try:
        request = load_request(hub, request_id)
        approval = approvals.load(hub, str(request.args.get("approval", "")))
        what, requester = describe_plan(Plan.model_validate(approval.plan)), approval.requester
    except (LookupError, ValueError):
        pass
    cms_lock.record_unknown(hub, OutcomeUnknown(id=request_id, what=f"the {what} (request {request_id}) {STOPPED}",
                                                check=CHECK_CHANGE, requester=requester, at=utcnow()))
    cms_lock.break_lock(hub, request_id)  # its holder is dead; the unknown outcome and the cooldown still hold
    cms_lock.set_cooldown(hub, cooldown, "the last CMS change ended with an unknown outcome: check first")
    append_audit(hub, request=request_id, what="execute", result="unknown: the worker stopped")
    return Failed(reason=UNKNOWN_OUTCOME.format(what="CMS change"), unknown=request_id)


def _lost_remediation(hub: Hub, request_id: str) -> Failed:
    try:
        request = load_request(hub, request_id)
    except LookupError:
        cms_lock.record_unknown(hub, OutcomeUnknown(id=request_id, what=f"a remediation (request {request_id}) "
                                                    f"{STOPPED}", check=CHECK_REMEDIATION, requester="", at=utcnow()))
        return Failed(reason=UNKNOWN_REMEDIATION.format(what="the remediation"), unknown=request_id)
    kind, target = request.args.get("action", ""), request.args.get("target", "")
    what = describe(kind, target) if kind and target else "the remediation"
    hub.redis.delete(hub.keys.remediating(kind, target))  # it will never end by itself: the guard is free
    cms_lock.record_unknown(hub, OutcomeUnknown(id=request_id, what=f"{what} (request {request_id}) {STOPPED}",
                                                check=CHECK_REMEDIATION, requester=request.user, at=utcnow()))
    append_audit(hub, request=request_id, who=request.user, what=kind, target=target,
                 result="unknown: the worker stopped")
    return Failed(reason=UNKNOWN_REMEDIATION.format(what=what), unknown=request_id)
