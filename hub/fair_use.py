"""Fair use of the servers: per-user and per-channel limits, and identical status checks merged.

Every request that reaches the servers (a status check, forced replication, a remediation) is
admitted here first, in one Lua script, so the serving processes of a deployment share the
counts and two of them cannot both take the last place:

- a status check of the same scope already in flight in the same channel (its job queued or
  running in RQ) is not started again: the new requester is pointed to that one's thread, and
  nothing is counted;
- otherwise the user's and the channel's sliding windows (`limit_window` seconds, in Redis
  sorted sets) must both have room; a refusal says which limit and when a place frees up, and
  counts against neither (a user who is refused cannot use up the channel's share).

The same Slack delivery (a retry, same request id) is admitted once, and counted once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, cast

from redis import Redis
from redis.commands.core import Script
from redis.typing import EncodableT
from rq.job import Job

from cms.settings import Settings
from hub.keys import Hub

MARKER_TTL = 6 * 3600  # seconds; the job's own status decides whether the check is still in flight
# the marker is set just before the job is enqueued (a separate round trip): a marker this young
# whose job is not in RQ yet counts as in flight
ENQUEUE_GRACE_MS = 5000
IN_FLIGHT = ("created", "queued", "started", "deferred", "scheduled")

Outcome = Literal["admitted", "duplicate", "merged", "limited"]

# KEYS: the user's window, the channel's window, [the marker of this channel and scope's status check]
# ARGV: now (ms), window (ms), user limit, channel limit, request id, marker ttl (ms), RQ's job key prefix,
#       enqueue grace (ms), the in-flight statuses (comma separated), the user, the Slack thread key prefix
# The in-flight request's RQ job and Slack thread keys are built here from their prefixes (their id is
# only known here): one round trip for a merged request too.
_ADMIT = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local rid = ARGV[5]
if #KEYS == 3 then
  local marker = redis.call('HMGET', KEYS[3], 'request', 'at', 'user')
  local owner, at = marker[1], tonumber(marker[2] or '0')
  if owner == rid then return {'duplicate'} end
  if owner then
    local status = redis.call('HGET', ARGV[7] .. owner, 'status')
    if (status and string.find(',' .. ARGV[9] .. ',', ',' .. status .. ',', 1, true))
       or (not status and now - at < tonumber(ARGV[8])) then
      return {'merged', owner, marker[3] or '', redis.call('HGET', ARGV[11] .. owner, 'parent') or ''}
    end
  end
end
if redis.call('ZSCORE', KEYS[1], rid) then return {'duplicate'} end
local worst, which, allowed = 0, '', 0
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local names = {'user', 'channel'}
for i = 1, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
  if limits[i] > 0 then
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limits[i] then
      -- a place frees up when the entry that puts the count at the limit leaves the window
      local entry = redis.call('ZRANGE', KEYS[i], count - limits[i], count - limits[i], 'WITHSCORES')
      local wait = tonumber(entry[2]) + window - now
      if wait > worst or which == '' then worst, which, allowed = wait, names[i], limits[i] end
    end
  end
end
if which ~= '' then return {'limited', which, tostring(math.max(worst, 1)), tostring(allowed)} end
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], now, rid)
  redis.call('PEXPIRE', KEYS[i], window)
end
if #KEYS == 3 then
  redis.call('HSET', KEYS[3], 'request', rid, 'at', now, 'user', ARGV[10])
  redis.call('PEXPIRE', KEYS[3], ARGV[6])
end
return {'admitted'}
"""


_SCRIPT: list[Script] = []


def _run(conn: Redis, keys: list[str], args: list[EncodableT]) -> list[bytes]:
    """EVALSHA: the script is sent once per Redis (again after a restart that lost it)."""
    if not _SCRIPT:
        _SCRIPT.append(conn.register_script(_ADMIT))
    return cast(list[bytes], _SCRIPT[0](keys=keys, args=args, client=conn))


@dataclass(frozen=True)
class Admission:
    outcome: Outcome
    owner: str | None = None  # merged: the request whose check is in flight
    owner_user: str = ""  # merged: who started it
    thread: str | None = None  # merged: the ts of its Slack thread's parent message, once posted
    limit: Literal["user", "channel"] | None = None  # limited: which one
    allowed: int = 0  # limited: that limit's number of requests per window
    retry_after: float = 0.0  # limited: seconds until a place frees up

    @property
    def go(self) -> bool:
        """Start the request's job (a duplicate delivery's job was started by the first one)."""
        return self.outcome == "admitted"


def admit(hub: Hub, settings: Settings, request_id: str, *, user: str, channel: str,
          status_scope: str | None = None) -> Admission:
    """Count a request that reaches the servers against its user's and channel's limits.
    `status_scope`: a status check of this scope (merged with an identical one in flight)."""
    keys = [hub.keys.limit_user(user), hub.keys.limit_channel(channel)]
    if status_scope is not None:
        keys.append(hub.keys.status_running(channel, status_scope))
    now = int(time.time() * 1000)
    args: list[EncodableT] = [
        now, int(settings.limit_window * 1000), settings.limit_user, settings.limit_channel, request_id,
        MARKER_TTL * 1000, Job.redis_job_namespace_prefix, ENQUEUE_GRACE_MS, ",".join(IN_FLIGHT), user,
        hub.keys.slack_thread("")]
    reply = _run(hub.redis, keys, args)
    fields = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
    outcome = cast(Outcome, fields[0])
    if outcome == "merged":
        return Admission(outcome, owner=fields[1], owner_user=fields[2], thread=fields[3] or None)
    if outcome == "limited":
        return Admission(outcome, limit=cast(Literal["user", "channel"], fields[1]), retry_after=int(fields[2]) / 1000,
                         allowed=int(fields[3]))
    return Admission(outcome)
