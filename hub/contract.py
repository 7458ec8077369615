"""What crosses between the bot and the workers: requests, jobs and events.

A request is stored as JSON under its namespace's key; the RQ job's id is the
request id and its only argument; the worker reports back by appending events
to one Redis stream. Nothing pickled crosses a process boundary.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

import redis
from pydantic import BaseModel, Field
from redis.commands.core import Script
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.serializers import JSONSerializer

from cms.messages import Accepted, Message, Unreadable, from_wire, to_wire
from hub.keys import Hub

REQUEST_TTL = 21 * 24 * 3600
# The last resort only: XADD trims beyond this many entries whatever the consumer groups have read, and
# counts what it cut (field "capped" of the delivery counts). Normal trimming is trim_events(): acknowledged
# entries only.
EVENTS_CAP = 1_000_000
STATUS = "status"  # read-only diagnostics; may be retried
CHANGE = "change"  # remediations, failover, recovery; never retried
# the read-only preflight of a failover or recovery: a queue of its own, taken before any status check
# (never behind a flood of them) and apart from the changes (it reads the change queue to grade a plan)
PREFLIGHT = "preflight"
# telling on-call (PagerDuty, Opsgenie, a webhook) about an incident: seconds of HTTP, never behind a flood of
# status checks; its retries wait in RQ's scheduled registry, which `cmsbot watch` moves along
ONCALL = "oncall"

TERMINAL_KINDS = frozenset({"result", "failed"})
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return "r" + secrets.token_hex(8)


def id_for_delivery(team: str, trigger_id: str) -> str:
    """The same Slack delivery (same trigger) always maps to the same request,
    so a retried or duplicated delivery cannot start a second execution."""
    return "r" + hashlib.sha256(f"{team}:{trigger_id}".encode()).hexdigest()[:16]


class Request(BaseModel):
    id: str = Field(default_factory=new_id)
    command: str
    args: dict[str, Any] = Field(default_factory=dict)
    user: str
    channel: str | None = None
    thread: str | None = None
    origin: Literal["slack", "console"] = "console"
    created_at: datetime = Field(default_factory=utcnow)
    # Slack's response_url of the command or click (valid RESPONSE_URL_TTL, at most RESPONSE_URL_USES
    # uses): how the user still gets an answer when the bot cannot post in the channel
    response_url: str | None = Field(default=None, repr=False)


RESPONSE_URL_TTL = 30 * 60  # seconds Slack accepts posts to a response_url
RESPONSE_URL_USES = 5


@dataclass(frozen=True)
class Event:
    """One stream entry: its request, its seq, its kind and the message its body carries
    (`Unreadable` when this reader cannot read it: an unknown kind or a malformed body)."""

    request: str
    seq: int
    kind: str
    message: Message | Unreadable

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    @classmethod
    def from_fields(cls, fields: dict[bytes | str, bytes | str]) -> Event:
        f = {_s(k): _s(v) for k, v in fields.items()}
        kind = f.get("kind", "")
        return cls(request=f["request"], seq=int(f["seq"]), kind=kind, message=from_wire(kind, f.get("body")))


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def connect(url: str) -> redis.Redis:
    """A client that rides out a Redis restart: retries on connection errors, but not on a refused
    password or user (WRONGPASS, NOAUTH: redis-py's AuthenticationError is a ConnectionError) or a
    TLS certificate that does not verify, which no retry mends: those are reported at once."""
    import ssl

    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    class _Retry(Retry):
        def call_with_retry(self, do: Callable[[], T], fail: Any,
                            is_retryable: Callable[[Exception], bool] | None = None,
                            with_failure_count: bool = False) -> T:
            def retryable(e: Exception) -> bool:
                if isinstance(e, redis.AuthenticationError) or isinstance(e.__context__, ssl.SSLCertVerificationError):
                    return False
                return is_retryable is None or is_retryable(e)
            return super().call_with_retry(do, fail, retryable, with_failure_count)

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=_Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def queues(hub: Hub) -> list[Queue]:
    """A worker's queues, most urgent first: RQ takes the next job from the first queue that has one."""
    return [queue(hub, kind) for kind in (CHANGE, PREFLIGHT, ONCALL, STATUS)]


# A connection's Queue objects by name, kept on the connection (so they go with it), each made once: RQ's
# Queue() checks its serializer at every construction, a cost the ack path paid per request.
_QUEUES = "_cmsbot_queues"


def queue(hub: Hub, kind: str) -> Queue:
    """Queues are in the namespace, so a demo or a test never feeds another
    deployment's workers (and theirs never take its jobs)."""
    name = hub.keys.queue(kind)
    known: dict[str, Queue] | None = getattr(hub.redis, _QUEUES, None)
    if known is None:
        known = {}
        setattr(hub.redis, _QUEUES, known)
    q = known.get(name)
    if q is None:
        q = known[name] = Queue(name, connection=hub.redis, serializer=JSONSerializer)
    return q


def workers_on(hub: Hub, kind: str) -> int:
    """Live workers listening on a queue (dead ones drop out after their TTL)."""
    from rq import Worker

    return len(Worker.all(queue=queue(hub, kind), serializer=JSONSerializer))


RESULT_TTL = 3600  # seconds RQ keeps a finished job's result
FAILURE_TTL = 7 * 24 * 3600  # seconds RQ keeps a failed job in its failed registry
# What RQ's enqueue of a job without dependencies writes (its queue in the set of queues, the job's hash, its
# id on the queue; EXPIRE with a job ttl). Anything else (a dependency's WATCH, a rate limit's registry) is
# refused by submit() rather than replayed.
_RQ_ENQUEUE_WRITES = frozenset({"SADD", "HSET", "RPUSH", "LPUSH", "EXPIRE"})


def submit(hub: Hub, req: Request, job: str, *, kind: str, timeout: int,
           accepted: Accepted | None = None, audit: dict[str, Any] | None = None, **job_options: Any) -> None:
    """Store the request, enqueue its job and, when given, append its `accepted`
    event and an audit entry: one Lua script, so one round trip, all or nothing.

    The job is RQ's own: RQ builds it and makes its enqueue's writes on a pipeline that is never
    executed; the script replays exactly those writes (see _SUBMIT) with the request, the event
    (the same append as append_event(): seq counter, idempotency token) and the audit entry. The
    submission's token makes a retry after a lost reply (redis-py retries on a dropped connection)
    write nothing twice: not the event, not the job's id on its queue, not the audit entry."""
    writes = _rq_enqueue(hub, req.id, job, kind=kind, timeout=timeout, job_options=job_options)
    token = secrets.token_hex(8)
    kind_wire, body = to_wire(accepted) if accepted is not None else ("", "")
    args: list[EncodableT] = [token, req.model_dump_json(), REQUEST_TTL, kind_wire, body, EVENTS_CAP, req.id,
                              _framed(writes, hub.redis.get_encoder())]
    if audit is not None:
        for field, value in _audit_entry(dict(request=req.id, who=req.user, **audit)).items():
            args.extend((field, value))
    keys = [hub.keys.request(req.id), hub.keys.events, hub.keys.seq(req.id), hub.keys.delivery_counts,
            hub.keys.appended(req.id), hub.keys.audit]
    if not _SUBMIT_SCRIPT:
        _SUBMIT_SCRIPT.append(hub.redis.register_script(_SUBMIT))
    _SUBMIT_SCRIPT[0](keys=keys, args=args, client=hub.redis)


def _rq_enqueue(hub: Hub, request_id: str, job: str, *, kind: str, timeout: int,
                job_options: dict[str, Any]) -> list[tuple[EncodableT, ...]]:
    """The writes RQ's own enqueue makes for this job (what Queue.enqueue_call would send in its
    MULTI), recorded on a pipeline that is never executed."""
    if job_options.get("depends_on") is not None:  # RQ would WATCH them on the connection, outside any script
        raise ValueError("submit() enqueues jobs without dependencies")
    q = queue(hub, kind)
    rq_job = q.create_job(job, args=(request_id,), job_id=request_id, timeout=timeout, result_ttl=RESULT_TTL,
                          failure_ttl=FAILURE_TTL, **job_options)
    with hub.redis.pipeline(transaction=True) as recorder:
        q.enqueue_job(rq_job, pipeline=recorder)
        writes = [args for args, _ in recorder.command_stack]
    refused = {str(args[0]) for args in writes} - _RQ_ENQUEUE_WRITES
    if refused:
        raise ValueError(f"RQ's enqueue of {job} wrote {', '.join(sorted(refused))}: not a plain enqueue")
    return writes


def _framed(commands: list[tuple[EncodableT, ...]], encoder: Any) -> bytes:
    """Commands as one argument of the script (`<words>;` then `<length>:<word>` for each word): one
    word to pack instead of some fifty (redis-py packs each argument in Python, slowly). Each word is
    the bytes redis-py's `encoder` would send (text in its encoding, an int or a float by its repr)."""
    encoding, errors = encoder.encoding, encoder.encoding_errors
    parts: list[bytes] = []
    for command in commands:
        parts.append(b"%d;" % len(command))
        for word in command:
            if isinstance(word, str):
                data = word.encode(encoding, errors)
            elif isinstance(word, (bytes, bytearray, memoryview)):
                data = bytes(word)
            elif isinstance(word, (int, float)) and not isinstance(word, bool):
                data = repr(word).encode()
            else:
                raise TypeError(f"cannot send a {type(word).__name__} to Redis")
            parts.append(b"%d:" % len(data))
            parts.append(data)
    return b"".join(parts)


def claim(hub: Hub, request_id: str) -> bool:
    """True for the first execution of a request only."""
    return bool(hub.redis.set(hub.keys.claim(request_id), 1, nx=True, ex=REQUEST_TTL))


def load_request(hub: Hub, request_id: str) -> Request:
    raw = hub.redis.get(hub.keys.request(request_id))
    if raw is None:
        raise LookupError(f"request {request_id} not found (expired or never stored)")
    return Request.model_validate_json(raw)


# The append of one event, shared by append_event() and submit(): the stream, the request's seq counter,
# the delivery counts, the request's appended tokens; then the request id, the event's kind and body, the
# cap, the TTL and the token. A token seen before returns its seq and appends nothing: a write retried after
# a lost reply (the client's own retries, a job's outbox) is one event, not two.
_APPEND_FUNCTION = """
local function append(stream, seq_key, counts, appended, request, kind, body, cap, ttl, token)
  local seen = redis.call('HGET', appended, token)
  if seen then return tonumber(seen) end
  local seq = redis.call('INCR', seq_key)
  redis.call('HSET', appended, token, seq)
  redis.call('EXPIRE', appended, ttl)
  redis.call('EXPIRE', seq_key, ttl)
  local before = redis.call('XLEN', stream)
  redis.call('XADD', stream, 'MAXLEN', '~', cap, '*', 'request', request, 'seq', seq, 'kind', kind, 'body', body)
  local cut = before + 1 - redis.call('XLEN', stream)
  if cut > 0 then redis.call('HINCRBY', counts, 'capped', cut) end
  return seq
end
"""  # noqa: E501 -- Lua script text kept verbatim: wrapping it would change the script sent to Redis

# KEYS: the stream, the request's seq counter, the delivery counts, the request's appended tokens.
# ARGV: the request id, the event's kind, its body, the cap, the TTL, the token.
_APPEND = _APPEND_FUNCTION + """
return append(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6])
"""

# submit(): KEYS: the request, the events stream, its seq counter, the delivery counts, its appended tokens,
# the audit stream. ARGV: 1 the submission's token, 2 the request (JSON), 3 the TTL, 4 the accepted event's
# kind ('' for none), 5 its body, 6 the events cap, 7 the request id, 8 RQ's writes (framed by _framed());
# then the audit entry's fields and values, if any.
# A token seen before (a retry after a lost reply) writes nothing. A Redis out of memory refuses a script at
# its first write only (once it has written, it runs to its end): here that is RQ's first, so nothing is written.
_SUBMIT = _APPEND_FUNCTION + """
local token, ttl = ARGV[1], ARGV[3]
local seen = redis.call('HGET', KEYS[5], token)
if seen then return tonumber(seen) end
local writes, at = ARGV[8], 1
while at <= #writes do
  local semicolon = string.find(writes, ';', at, true)
  local command = {}
  for w = 1, tonumber(string.sub(writes, at, semicolon - 1)) do
    local colon = string.find(writes, ':', semicolon + 1, true)
    local length = tonumber(string.sub(writes, semicolon + 1, colon - 1))
    command[w] = string.sub(writes, colon + 1, colon + length)
    semicolon = colon + length
  end
  at = semicolon + 1
  redis.call(unpack(command))
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
local seq = 0
if ARGV[4] ~= '' then
  seq = append(KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[7], ARGV[4], ARGV[5], ARGV[6], ttl, token)
else
  redis.call('HSET', KEYS[5], token, 0)
  redis.call('EXPIRE', KEYS[5], ttl)
end
if #ARGV > 8 then redis.call('XADD', KEYS[6], '*', unpack(ARGV, 9)) end
return seq
"""
_SUBMIT_SCRIPT: list[Script] = []  # registered once; EVALSHA from then on (loaded again after a Redis restart)


def append_event(hub: Hub, request_id: str, message: Message, token: str | None = None):
    """Append one event; `seq` is allocated atomically with the append so the
    stream order and the seq order of a request always agree. Returns the seq
    (or the pipeline, when given one). `token` names this event for retries: the same
    token appends once (a new one is made when none is given). The stream is trimmed by
    trim_events(), which respects the consumer groups; the cap here is a last resort,
    counted when it cuts."""
    kind, payload = to_wire(message)
    result = hub.redis.eval(_APPEND, 4, hub.keys.events, hub.keys.seq(request_id), hub.keys.delivery_counts,
                            hub.keys.appended(request_id), request_id, kind, payload, EVENTS_CAP, REQUEST_TTL,
                            token or secrets.token_hex(8))
    return int(result) if isinstance(result, (int, bytes, str)) else result


@dataclass(frozen=True)
class Trimmed:
    removed: int  # entries removed by this trim
    held_by: str | None  # the consumer group whose unacknowledged entries stopped it, if one did
    capped: int  # entries the last-resort cap (EVENTS_CAP) has cut since the counts began


def _stream_id(value: bytes | str) -> tuple[int, int]:
    ms, _, seq = _s(value).partition("-")
    return int(ms), int(seq or 0)


def trim_events(hub: Hub, keep: float, *, mine: str, abandoned_after: float) -> Trimmed:
    """Trim the events stream (XTRIM MINID) below the oldest entry some consumer group still
    needs: one it has read and not acknowledged, or not read yet; and keep what is younger than
    `keep` seconds. A group other than `mine` whose consumers have all been idle for
    `abandoned_after` seconds (a `cmsbot chat` killed before it cleaned up) stops counting."""
    conn, stream = hub.redis, hub.keys.events
    capped = int(cast(bytes | None, conn.hget(hub.keys.delivery_counts, "capped")) or 0)
    cutoff, held_by = (int((time.time() - keep) * 1000), 0), None
    try:
        groups = cast(list[dict[str, Any]], conn.xinfo_groups(stream))
    except redis.ResponseError:  # no stream (yet)
        return Trimmed(0, None, capped)
    abandoned_ms = abandoned_after * 1000
    for group in groups:
        name = _s(group["name"])
        if name != mine:
            consumers = cast(list[dict[str, Any]], conn.xinfo_consumers(stream, name))
            idle = (min(int(c["idle"]) for c in consumers) if consumers
                    else time.time() * 1000 - _stream_id(group["last-delivered-id"])[0])
            if idle > abandoned_ms:
                continue
        if int(group["pending"]):
            floor = _stream_id(cast(dict[str, Any], conn.xpending(stream, name))["min"])
        else:  # everything up to its last-delivered id is acknowledged; what follows is unread
            ms, seq = _stream_id(group["last-delivered-id"])
            floor = (ms, seq + 1)
        if floor < cutoff:
            cutoff, held_by = floor, name
    removed = int(cast(int, conn.xtrim(stream, minid=f"{cutoff[0]}-{cutoff[1]}", approximate=True)))
    return Trimmed(removed, held_by, capped)


def append_audit(hub: Hub, **fields: Any) -> None:
    """Append-only record of who asked for, approved or ran what, and the result."""
    hub.redis.xadd(hub.keys.audit, _audit_entry(fields))


def _audit_entry(fields: dict[str, Any]) -> dict[FieldT, EncodableT]:
    entry: dict[FieldT, EncodableT] = {"at": utcnow().isoformat(timespec="seconds")}
    entry.update({k: v if isinstance(v, str) else json.dumps(v, default=str)
                  for k, v in fields.items() if v is not None})
    return entry
