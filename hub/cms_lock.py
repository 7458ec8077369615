"""One CMS change at a time: the deployment-wide lock and its fencing token, who holds it, the
cooldown after, the unknown outcomes nobody has cleared yet, and whether Redis keeps all of it
across a restart.

A failover or recovery holds the lock while it runs; the cooldown keeps the next one out
until the deployment has converged. Every lock carries a fencing token (the next number of a
counter, and the holder's request): the running job re-asserts it with every heartbeat, and
checks it before every step that changes something, so a lock that was lost (a Redis restart
that forgot it, a watchdog that broke it) or taken by someone else stops what has not started.
An unknown outcome is sticky: it has no TTL and blocks every CMS change and remediation until an
approver other than its requester clears it. Remediations and /cms-replicate are refused while
any of these holds, because they would act on a store that is moving or has no active master.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, cast

import redis

from cms.preflight import OutcomeUnknown, RedisDurability
from cms.remediation import describe
from hub.contract import CHANGE, append_audit, load_request, queue
from hub.jobs import CHANGE_COMMAND, REMEDIATE_COMMAND, REPLICATE_COMMAND
from hub.keys import Hub

log = logging.getLogger(__name__)



def change_state(hub: Hub) -> tuple[bool, str | None, str | None]:
    """Whether the CMS lock is held, who holds it (None if not held or not said), and the cooldown text."""
    held = bool(hub.redis.exists(hub.keys.cms_lock))
    # the connection does not decode responses: replies are bytes
    holder = cast(bytes | None, hub.redis.get(hub.keys.cms_lock_holder)) if held else None
    cooldown = cast(bytes | None, hub.redis.get(hub.keys.cms_cooldown))
    return held, holder.decode() if holder else None, cooldown.decode() if cooldown else None


def cms_change_blocking(hub: Hub) -> str | None:
    """Why nothing else may touch the CMS now, or None: a change running or queued, an unknown
    outcome nobody has cleared, or the cooldown."""
    held, holder, cooldown = change_state(hub)
    if held:
        return f"another CMS change is running ({holder or 'holder unknown'})"
    if queued := changes_in_flight(hub, {CHANGE_COMMAND}):
        return f"a CMS change is queued or starting ({'; '.join(queued)})"
    if unknown := unknown_outcomes(hub):
        return (f"{unknown[0].what}, and nobody has cleared it yet. {unknown[0].check} An approver other than its "
                "requester clears it with the button in its thread or on a blocked failover card")
    return f"cooldown after the last CMS change {cooldown}" if cooldown else None


def holder(hub: Hub) -> str | None:
    raw = cast(bytes | None, hub.redis.get(hub.keys.cms_lock_holder))
    return raw.decode() if raw else None


def set_holder(hub: Hub, text: str, ttl: int) -> None:
    hub.redis.set(hub.keys.cms_lock_holder, text, ex=ttl)


def break_lock(hub: Hub, request_id: str) -> bool:
    """Its holder is dead (the watchdog said so): free the lock if that request holds it; the
    cooldown and the unknown outcome still hold."""
    return bool(hub.redis.eval(_BREAK, 2, hub.keys.cms_lock, hub.keys.cms_lock_holder, f":{request_id}"))


# KEYS[1] lock, KEYS[2] holder; ARGV[1] ":<request id>", the end of its holder's token
_BREAK = """
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, -string.len(ARGV[1])) == ARGV[1] then redis.call('DEL', KEYS[1], KEYS[2]) return 1 end
return 0
"""


def cooldown(hub: Hub) -> str | None:
    return change_state(hub)[2]


def cooldown_text(reason: str, seconds: float) -> str:
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"until {until.strftime('%H:%M:%S UTC')} ({reason})"


def set_cooldown(hub: Hub, seconds: float, reason: str) -> None:
    if seconds > 0:
        hub.redis.set(hub.keys.cms_cooldown, cooldown_text(reason, seconds), ex=int(seconds))


# -- the lock and its fencing token --------------------------------------------------------------

# KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms. 'ours' (and the TTL renewed), 'missing', or the other token
_REASSERT = """
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 'ours' end
if not v then return 'missing' end
return v
"""
# KEYS[1] lock, KEYS[2] holder; ARGV[1] token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1], KEYS[2]) return 1 end
return 0
"""


class LockLost(Exception):
    """The CMS lock is no longer ours (or could not be verified): nothing more may start."""


class CmsLock:
    """The deployment-wide lock, held under a fencing token: "<counter>:<request id>". The counter
    only grows (INCR, no TTL); the request id keeps two tokens apart even after a Redis that lost
    its data starts counting again."""

    def __init__(self, hub: Hub, token: str, ttl: float):
        self.hub, self.token, self.ttl_ms = hub, token, int(ttl * 1000)

    @classmethod
    def acquire(cls, hub: Hub, request_id: str, ttl: float) -> CmsLock | None:
        token = f"{int(hub.redis.incr(hub.keys.cms_fence))}:{request_id}"
        if hub.redis.set(hub.keys.cms_lock, token, nx=True, px=int(ttl * 1000)):
            return cls(hub, token, ttl)
        return None

    def check(self) -> str | None:
        """None while the lock is ours (its TTL renewed); else why it is not. Raises RedisError when
        Redis cannot be asked: that is not knowing, not a loss."""
        found = self.hub.redis.eval(_REASSERT, 1, self.hub.keys.cms_lock, self.token, self.ttl_ms)
        found = found.decode() if isinstance(found, bytes) else str(found)
        if found == "ours":
            return None
        if found == "missing":
            return f"the CMS lock (token {self.token}) is gone from Redis (a restart without persistence, or broken)"
        return f"the CMS lock (token {self.token}) is now held by another holder (token {found})"

    def release(self) -> bool:
        return bool(self.hub.redis.eval(_RELEASE, 2, self.hub.keys.cms_lock, self.hub.keys.cms_lock_holder,
                                        self.token))


class LockGuard:
    """A running change's hold on its lock: re-asserted with every heartbeat (`beat`), verified
    before every step that changes something (`ensure`). The first loss is kept: a lock that was
    lost once stays lost for this change, even if it could be taken again."""

    def __init__(self, lock: CmsLock, on_lost: Callable[[str], None]):
        self.lock, self.on_lost = lock, on_lost
        self.lost: str | None = None
        self._active = True
        self._mutex = threading.Lock()  # a beat never interleaves with the release

    def beat(self) -> None:
        """The heartbeat's hook. Redis not answering is not a loss: the next beat asks again."""
        with self._mutex:
            if not self._active or self.lost is not None:
                return
            try:
                why = self.lock.check()
            except redis.RedisError as e:
                log.warning("CMS lock %s: cannot verify it now (%s)", self.lock.token, type(e).__name__)
                return
            if why:
                self._lose(why)

    def ensure(self, then: Callable[[], None] | None = None) -> None:
        """Before a step that changes something: raises LockLost unless the lock is ours now.
        `then` runs once it is verified, before any beat can look again (the change marks itself
        started, so a loss seen after this point is a loss in the middle of the change)."""
        with self._mutex:
            if self.lost is None:
                try:
                    why = self.lock.check()
                except redis.RedisError as e:
                    raise LockLost(f"the CMS lock could not be verified: Redis did not answer ({type(e).__name__})")\
                        from None
                if why:
                    self._lose(why)
            if self.lost is not None:
                raise LockLost(self.lost)
            if then is not None:
                then()

    def _lose(self, why: str) -> None:
        self.lost = why
        log.error("CMS lock lost: %s", why)
        try:
            self.on_lost(why)
        except Exception:  # noqa: BLE001 - the loss is recorded above whatever the hook does
            log.exception("CMS lock: the on_lost hook failed")

    def release(self) -> None:
        """The change is over: no more beats; free the lock if it is still ours. One that is not
        ours any more was lost while the change ran, even if no beat saw it (a short outage)."""
        with self._mutex:
            self._active = False
            if self.lost is None and not self.lock.release():
                try:
                    why = self.lock.check()
                except redis.RedisError:
                    why = None
                self._lose(why or f"the CMS lock (token {self.lock.token}) was not ours any more at its release")


# -- changes queued or running (RQ's registries) ---------------------------------------------------


def changes_in_flight(hub: Hub, commands: set[str] | None = None, exclude: str | None = None,
                      started_only: bool = False) -> list[str]:
    """The change queue's jobs that are queued or started, in words (job ids are request ids).
    `commands`: only requests of these commands (a job whose request is gone always counts)."""
    q = queue(hub, CHANGE)
    found = [] if started_only else [(i, "queued") for i in q.get_job_ids()]
    # cleanup=False: reading must not run RQ's clean-up (and its failure callbacks) here
    found += [(i, "running") for i in q.started_job_registry.get_job_ids(cleanup=False)]
    out = []
    for job_id, state in found:
        if job_id == exclude:
            continue
        try:
            req = load_request(hub, job_id)
        except LookupError:
            out.append(f"job {job_id} ({state})")
            continue
        if commands is not None and req.command not in commands:
            continue
        args = req.args
        if req.command == CHANGE_COMMAND:
            what = f"the approved {args.get('kind', 'change')}"
        elif req.command == REMEDIATE_COMMAND:
            what = describe(str(args.get("action", "")), str(args.get("target", "")))
        elif req.command == REPLICATE_COMMAND:
            what = f"forced replication of {args.get('target') or 'everything'}"
        else:
            what = req.command
        out.append(f"{what} (request {job_id}, {state})")
    return out


# -- unknown outcomes: sticky until an approver clears them ------------------------------------------


def record_unknown(hub: Hub, marker: OutcomeUnknown) -> None:
    """No TTL: it holds until someone has looked. Recording it again (the same id) changes nothing."""
    hub.redis.hsetnx(hub.keys.outcome_unknown, marker.id, marker.model_dump_json())


def unknown_outcomes(hub: Hub) -> list[OutcomeUnknown]:
    raw = cast(dict[bytes, bytes], hub.redis.hgetall(hub.keys.outcome_unknown))
    found = []
    for key, value in raw.items():
        try:
            found.append(OutcomeUnknown.model_validate_json(value))
        except ValueError:  # unreadable: still blocks, in the words we have
            found.append(OutcomeUnknown(id=key.decode(), what="a CMS change", check="(its record is unreadable)",
                                        requester="", at=datetime.now(UTC)))
    return sorted(found, key=lambda m: m.at)


class Cleared(str, Enum):
    cleared = "cleared"
    own = "own"  # the requester of the lost change may not be the one who says it was checked
    missing = "missing"  # cleared already, or never recorded


def clear_unknown(hub: Hub, marker_id: str, user: str) -> tuple[Cleared, OutcomeUnknown | None]:
    """An approver says the unknown outcome was checked. Audited; exactly one click clears it."""
    raw = cast(bytes | None, hub.redis.hget(hub.keys.outcome_unknown, marker_id))
    if raw is None:
        return Cleared.missing, None
    marker = OutcomeUnknown.model_validate_json(raw)
    if marker.requester and marker.requester == user:
        append_audit(hub, request=marker_id, who=user, what="clear-unknown", result="refused: own request")
        return Cleared.own, marker
    if not hub.redis.hdel(hub.keys.outcome_unknown, marker_id):
        return Cleared.missing, marker
    append_audit(hub, request=marker_id, who=user, what="clear-unknown", result="cleared", detail=marker.what)
    return Cleared.cleared, marker


# -- does Redis keep the lock across a restart? ---------------------------------------------------------


def durability(hub: Hub, accepted: bool = False) -> RedisDurability:
    """From INFO persistence (aof_enabled), else CONFIG GET appendonly. Managed services may refuse
    both (or rename CONFIG): then Redis cannot tell us, and that counts as not persistent."""
    facts: dict[str, Any] = {}
    try:
        facts = dict(hub.redis.info("persistence"))
    except redis.ResponseError:
        pass
    if "aof_enabled" in facts:
        aof = str(facts["aof_enabled"]) == "1"
        status = str(facts.get("aof_last_write_status", "ok"))
        if aof and status != "ok":
            return RedisDurability(persistent=False, accepted=accepted,
                                   detail=f"AOF is on but its last write failed ({status}): Redis is not persisting")
        if aof:
            return RedisDurability(persistent=True, detail="AOF on" + _fsync(hub), accepted=accepted)
        return RedisDurability(persistent=False, accepted=accepted,
                               detail="Redis runs without AOF (INFO persistence: aof_enabled:0)")
    try:
        appendonly = cast(dict[Any, Any], hub.redis.config_get("appendonly"))
    except redis.ResponseError:
        appendonly = {}
    value = next((v.decode() if isinstance(v, bytes) else str(v) for v in appendonly.values()), None)
    if value is None:
        return RedisDurability(persistent=None, accepted=accepted, detail=(
            "Redis will not say whether it persists (INFO persistence and CONFIG GET appendonly are refused, "
            "as on some managed services), so this counts as not persisting"))
    if value == "yes":
        return RedisDurability(persistent=True, detail="AOF on (CONFIG appendonly yes)", accepted=accepted)
    return RedisDurability(persistent=False, detail="Redis runs without AOF (CONFIG appendonly no)", accepted=accepted)


def _fsync(hub: Hub) -> str:
    try:
        got = cast(dict[Any, Any], hub.redis.config_get("appendfsync"))
    except redis.ResponseError:
        return ""
    value = next((v.decode() if isinstance(v, bytes) else str(v) for v in got.values()), "")
    return f" (appendfsync {value})" if value else ""
