"""The approval gate in front of CMS failover and recovery.

An approval holds the exact plan and its hash. Every decision is one atomic
Lua script in Redis, so double clicks, racing approvers and an expiry at the
same moment resolve to one outcome; the threshold is crossed exactly once,
and only that decision starts an execution. The execution job consumes the
approval atomically before it touches anything.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.typing import EncodableT, FieldT

from hub.contract import REQUEST_TTL, append_audit

PENDING_SET = "cmsbot:approvals:pending"

PENDING, APPROVED, DENIED, EXPIRED, CONSUMED, BLOCKED = (
    "pending", "approved", "denied", "expired", "consumed", "blocked")


def key(approval_id: str) -> str:
    return f"cmsbot:approval:{approval_id}"


def plan_hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Approval:
    id: str
    kind: str
    status: str
    plan: dict[str, Any]
    hash: str
    requester: str
    needed: int
    approvers: list[str]
    expires: float
    request: str  # the request whose card this is
    checks: list[dict[str, Any]]
    decided_by: str | None


def create(conn: redis.Redis, *, kind: str, plan: dict[str, Any], checks: list[dict[str, Any]], requester: str,
           request: str, needed: int, ttl: float, blocked: bool) -> Approval:
    approval_id = "a" + secrets.token_hex(8)
    expires = time.time() + ttl
    fields: dict[FieldT, EncodableT] = {
        "kind": kind, "status": BLOCKED if blocked else PENDING, "plan": json.dumps(plan, sort_keys=True),
        "hash": plan_hash(plan), "requester": requester, "needed": needed, "expires": expires,
        "request": request, "checks": json.dumps(checks),
    }
    with conn.pipeline() as pipe:
        pipe.hset(key(approval_id), mapping=fields)
        pipe.expire(key(approval_id), REQUEST_TTL)
        if not blocked:
            pipe.zadd(PENDING_SET, {approval_id: expires})
        pipe.execute()
    return load(conn, approval_id)


def load(conn: redis.Redis, approval_id: str) -> Approval:
    # the connection does not decode responses: replies are bytes
    raw = {k.decode(): v.decode() for k, v in cast(dict[bytes, bytes], conn.hgetall(key(approval_id))).items()}
    if not raw:
        raise LookupError(f"approval {approval_id} not found")
    approvers = sorted(m.decode() for m in cast(set[bytes], conn.smembers(key(approval_id) + ":approvers")))
    return Approval(id=approval_id, kind=raw["kind"], status=raw["status"], plan=json.loads(raw["plan"]),
                    hash=raw["hash"], requester=raw["requester"], needed=int(raw["needed"]), approvers=approvers,
                    expires=float(raw["expires"]), request=raw["request"], checks=json.loads(raw.get("checks", "[]")),
                    decided_by=raw.get("decided_by"))


# KEYS[1] approval hash, KEYS[2] approvers set, KEYS[3] pending zset
# ARGV[1] user, ARGV[2] "approve"|"deny", ARGV[3] now, ARGV[4] approval id
_DECIDE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing', 0} end
if status ~= 'pending' then return {'closed:' .. status, 0} end
if tonumber(redis.call('HGET', KEYS[1], 'expires')) <= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'status', 'expired')
  redis.call('ZREM', KEYS[3], ARGV[4])
  return {'closed:expired', 0}
end
if redis.call('HGET', KEYS[1], 'requester') == ARGV[1] then return {'self', 0} end
if ARGV[2] == 'deny' then
  redis.call('HSET', KEYS[1], 'status', 'denied', 'decided_by', ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[4])
  return {'denied', 0}
end
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return {'duplicate', redis.call('SCARD', KEYS[2])} end
redis.call('EXPIRE', KEYS[2], 1814400)
local count = redis.call('SCARD', KEYS[2])
if count >= tonumber(redis.call('HGET', KEYS[1], 'needed')) then
  redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', ARGV[1], 'approved_at', ARGV[3])
  redis.call('ZREM', KEYS[3], ARGV[4])
  return {'approved', count}
end
return {'recorded', count}
"""


def decide(conn: redis.Redis, approval_id: str, user: str, approve: bool) -> tuple[str, int]:
    """One atomic decision. Outcomes: approved (this click crossed the threshold: start it),
    recorded (more approvals needed), denied, self (the requester), duplicate, missing,
    closed:<status> (already approved, denied, expired, consumed or blocked)."""
    outcome, count = conn.eval(_DECIDE, 3, key(approval_id), key(approval_id) + ":approvers", PENDING_SET, user,
                               "approve" if approve else "deny", time.time(), approval_id)
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    append_audit(conn, request=approval_id, who=user, what="approve" if approve else "deny", result=outcome)
    return outcome, int(count)


_CONSUME = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'approved' then return status or 'missing' end
if redis.call('HGET', KEYS[1], 'hash') ~= ARGV[1] then return 'hash-mismatch' end
if tonumber(redis.call('HGET', KEYS[1], 'approved_at')) + tonumber(ARGV[4]) < tonumber(ARGV[3]) then return 'stale' end
redis.call('HSET', KEYS[1], 'status', 'consumed', 'consumed_by', ARGV[2])
return 'consumed'
"""


class NotApproved(Exception):
    """The execution must not run: the reason is for the thread."""


def consume(conn: redis.Redis, approval_id: str, consumer: str, approved_hash: str, max_age: float) -> Approval:
    """Atomically turn an approved approval into a consumed one, if its plan still has the
    hash the approver saw and the approval is fresh; anything else refuses."""
    outcome = conn.eval(_CONSUME, 1, key(approval_id), approved_hash, consumer, time.time(), max_age)
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    if outcome != "consumed":
        raise NotApproved({"pending": "it has not been approved", "denied": "it was denied",
                           "expired": "the approval expired", "consumed": "it already ran (approvals are single-use)",
                           "blocked": "preflight blocked it", "hash-mismatch": "the plan is not the one approved",
                           "stale": "the approval is too old to act on; request it again",
                           "missing": "there is no such approval"}
                          .get(outcome, f"approval status is {outcome}"))
    return load(conn, approval_id)


_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local k = 'cmsbot:approval:' .. id
  if redis.call('HGET', k, 'status') == 'pending' then
    redis.call('HSET', k, 'status', 'expired')
    table.insert(out, id)
  end
end
return out
"""


def expire_due(conn: redis.Redis) -> list[str]:
    """Mark every pending approval past its expiry as expired; returns their ids."""
    return [i.decode() for i in conn.eval(_EXPIRE, 1, PENDING_SET, time.time())]
