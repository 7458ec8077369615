"""What crosses between the bot and the workers: requests, jobs and events.

A request is stored as JSON under its namespace's key; the RQ job's id is the
request id and its only argument; the worker reports back by appending events
to one Redis stream. Nothing pickled crosses a process boundary.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field
from redis.typing import EncodableT, FieldT
from rq import Queue
from rq.serializers import JSONSerializer

from cms.messages import Accepted, Message, Unreadable, from_wire, to_wire
from hub.keys import Hub

REQUEST_TTL = 21 * 24 * 3600
EVENTS_MAXLEN = 100_000
STATUS = "status"  # read-only diagnostics; may be retried
CHANGE = "change"  # remediations, failover, recovery; never retried

TERMINAL_KINDS = frozenset({"result", "failed"})


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
    """A client that rides out a Redis restart: retries on connection errors."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.1), retries=8),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def queues(hub: Hub) -> list[Queue]:
    """A worker's queues, most urgent first."""
    return [queue(hub, kind) for kind in (CHANGE, STATUS)]


def queue(hub: Hub, kind: str) -> Queue:
    """Queues are in the namespace, so a demo or a test never feeds another
    deployment's workers (and theirs never take its jobs)."""
    return Queue(hub.keys.queue(kind), connection=hub.redis, serializer=JSONSerializer)


def workers_on(hub: Hub, kind: str) -> int:
    """Live workers listening on a queue (dead ones drop out after their TTL)."""
    from rq import Worker

    return len(Worker.all(queue=queue(hub, kind), serializer=JSONSerializer))


def submit(hub: Hub, req: Request, job: str, *, kind: str, timeout: int,
           accepted: Accepted | None = None, audit: dict[str, Any] | None = None, **job_options: Any) -> None:
    """Store the request, enqueue its job and, when given, append its `accepted`
    event and an audit entry: one pipelined round trip, all or nothing."""
    q = queue(hub, kind)
    with hub.redis.pipeline() as pipe:
        # RQ opens the MULTI itself, so it must queue its commands first.
        q.enqueue_call(job, args=(req.id,), job_id=req.id, timeout=timeout, result_ttl=3600,
                       failure_ttl=7 * 24 * 3600, pipeline=pipe, **job_options)
        pipe.set(hub.keys.request(req.id), req.model_dump_json(), ex=REQUEST_TTL)
        if accepted is not None:
            append_event(hub.over(pipe), req.id, accepted)
        if audit is not None:
            append_audit(hub.over(pipe), request=req.id, who=req.user, **audit)
        pipe.execute()


def claim(hub: Hub, request_id: str) -> bool:
    """True for the first execution of a request only."""
    return bool(hub.redis.set(hub.keys.claim(request_id), 1, nx=True, ex=REQUEST_TTL))


def load_request(hub: Hub, request_id: str) -> Request:
    raw = hub.redis.get(hub.keys.request(request_id))
    if raw is None:
        raise LookupError(f"request {request_id} not found (expired or never stored)")
    return Request.model_validate_json(raw)


_APPEND = """
local seq = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'request', ARGV[1], 'seq', seq, 'kind', ARGV[2], 'body', ARGV[3])
return seq
"""  # noqa: E501 -- Lua script text kept verbatim: wrapping it would change the script sent to Redis


def append_event(hub: Hub, request_id: str, message: Message):
    """Append one event; `seq` is allocated atomically with the append so the
    stream order and the seq order of a request always agree. Returns the seq
    (or the pipeline, when given one)."""
    kind, payload = to_wire(message)
    result = hub.redis.eval(_APPEND, 2, hub.keys.events, hub.keys.seq(request_id), request_id, kind, payload,
                            EVENTS_MAXLEN, REQUEST_TTL)
    return int(result) if isinstance(result, (int, bytes, str)) else result


def append_audit(hub: Hub, **fields: Any) -> None:
    """Append-only record of who asked for, approved or ran what, and the result."""
    entry: dict[FieldT, EncodableT] = {"at": utcnow().isoformat(timespec="seconds")}
    entry.update({k: v if isinstance(v, str) else json.dumps(v, default=str)
                  for k, v in fields.items() if v is not None})
    hub.redis.xadd(hub.keys.audit, entry)
