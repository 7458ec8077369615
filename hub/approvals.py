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
from enum import Enum
from typing import Any, cast

from redis.typing import EncodableT, FieldT

from hub.contract import REQUEST_TTL, append_audit
from hub.keys import Hub


class ApprovalStatus(str, Enum):
    """Where an approval stands; stored as its value in the approval's hash (the Lua scripts
    read and write the same words)."""

    pending = "pending"
    approved = "approved"  # the threshold was crossed: its execution is queued
    denied = "denied"
    expired = "expired"
    consumed = "consumed"  # the execution took it (single use)
    blocked = "blocked"  # preflight said BLOCK: it can never be approved


class DecisionOutcome(str, Enum):
    """What one Approve or Deny click did."""

    approved = "approved"  # this click crossed the threshold: start the execution
    recorded = "recorded"  # counted; more approvals are needed
    denied = "denied"
    own_request = "self"  # the requester decided on their own request: refused
    duplicate = "duplicate"  # this approver had approved already
    missing = "missing"  # no such approval
    closed = "closed"  # already approved, denied, expired, consumed or blocked (see Decision.closed)


@dataclass(frozen=True)
class Decision:
    outcome: DecisionOutcome
    count: int  # approvals so far (approved, recorded, duplicate); 0 otherwise
    closed: ApprovalStatus | None = None  # what it already was, when the outcome is closed

    @classmethod
    def from_script(cls, outcome: str, count: int) -> Decision:
        """From the words of the decide script: an outcome, or "closed:<status>"."""
        if outcome.startswith("closed:"):
            return cls(DecisionOutcome.closed, count, ApprovalStatus(outcome.split(":", 1)[1]))
        return cls(DecisionOutcome(outcome), count)


def plan_hash(plan: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(plan, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class Approval:
    id: str
    kind: str
    status: ApprovalStatus
    plan: dict[str, Any]
    hash: str
    requester: str
    needed: int
    approvers: list[str]
    expires: float
    request: str  # the request whose card this is
    checks: list[dict[str, Any]]
    decided_by: str | None


def create(hub: Hub, *, kind: str, plan: dict[str, Any], checks: list[dict[str, Any]], requester: str,
           request: str, needed: int, ttl: float, blocked: bool) -> Approval:
    approval_id = "a" + secrets.token_hex(8)
    expires = time.time() + ttl
    fields: dict[FieldT, EncodableT] = {
        "kind": kind, "status": (ApprovalStatus.blocked if blocked else ApprovalStatus.pending).value,
        "plan": json.dumps(plan, sort_keys=True),
        "hash": plan_hash(plan), "requester": requester, "needed": needed, "expires": expires,
        "request": request, "checks": json.dumps(checks),
    }
    key = hub.keys.approval(approval_id)
    with hub.redis.pipeline() as pipe:
        pipe.hset(key, mapping=fields)
        pipe.expire(key, REQUEST_TTL)
        if not blocked:
            pipe.zadd(hub.keys.approvals_pending, {approval_id: expires})
        pipe.execute()
    return load(hub, approval_id)


def load(hub: Hub, approval_id: str) -> Approval:
    # the connection does not decode responses: replies are bytes
    fields = cast(dict[bytes, bytes], hub.redis.hgetall(hub.keys.approval(approval_id)))
    raw = {k.decode(): v.decode() for k, v in fields.items()}
    if not raw:
        raise LookupError(f"approval {approval_id} not found")
    approvers = sorted(m.decode() for m in cast(set[bytes], hub.redis.smembers(hub.keys.approvers(approval_id))))
    return Approval(id=approval_id, kind=raw["kind"], status=ApprovalStatus(raw["status"]),
                    plan=json.loads(raw["plan"]), hash=raw["hash"], requester=raw["requester"],
                    needed=int(raw["needed"]), approvers=approvers, expires=float(raw["expires"]),
                    request=raw["request"], checks=json.loads(raw.get("checks", "[]")),
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


def decide(hub: Hub, approval_id: str, user: str, approve: bool) -> Decision:
    """One atomic decision (see DecisionOutcome). The audit records the script's words:
    the outcome, or closed:<status>."""
    outcome, count = hub.redis.eval(_DECIDE, 3, hub.keys.approval(approval_id), hub.keys.approvers(approval_id),
                                    hub.keys.approvals_pending, user, "approve" if approve else "deny", time.time(),
                                    approval_id)
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    append_audit(hub, request=approval_id, who=user, what="approve" if approve else "deny", result=outcome)
    return Decision.from_script(outcome, int(count))


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


def consume(hub: Hub, approval_id: str, consumer: str, approved_hash: str, max_age: float) -> Approval:
    """Atomically turn an approved approval into a consumed one, if its plan still has the
    hash the approver saw and the approval is fresh; anything else refuses."""
    outcome = hub.redis.eval(_CONSUME, 1, hub.keys.approval(approval_id), approved_hash, consumer, time.time(), max_age)
    outcome = outcome.decode() if isinstance(outcome, bytes) else outcome
    if outcome != ApprovalStatus.consumed:
        raise NotApproved({"pending": "it has not been approved", "denied": "it was denied",
                           "expired": "the approval expired", "consumed": "it already ran (approvals are single-use)",
                           "blocked": "preflight blocked it", "hash-mismatch": "the plan is not the one approved",
                           "stale": "the approval is too old to act on; request it again",
                           "missing": "there is no such approval"}
                          .get(outcome, f"approval status is {outcome}"))
    return load(hub, approval_id)


# KEYS[1] pending zset, KEYS[2..] the approval hashes; ARGV[1..] their ids
_EXPIRE = """
local out = {}
for i, id in ipairs(ARGV) do
  local k = KEYS[i + 1]
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HGET', k, 'status') == 'pending' then
    redis.call('HSET', k, 'status', 'expired')
    table.insert(out, id)
  end
end
return out
"""


def expire_due(hub: Hub) -> list[str]:
    """Mark every pending approval past its expiry as expired; returns their ids. The due ids are
    read first, so the script names every key it touches (KEYS[]); one removed meanwhile by a
    decision is skipped (ZREM returns 0)."""
    due = [i.decode() for i in cast(list[bytes], hub.redis.zrangebyscore(hub.keys.approvals_pending, "-inf",
                                                                          time.time()))]
    if not due:
        return []
    expired = hub.redis.eval(_EXPIRE, 1 + len(due), hub.keys.approvals_pending,
                             *[hub.keys.approval(i) for i in due], *due)
    return [i.decode() for i in expired]
