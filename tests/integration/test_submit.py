"""submit(): the request, its RQ job, its "accepted" event and its audit entry in one Lua script.

The job is RQ's own (RQ builds it and records its enqueue's writes; the script replays them), so
the hash is the one RQ's enqueue_call writes, a real worker runs it with its time limit and its
failure callback, and a submission retried after a lost reply is written once."""

from __future__ import annotations

import contextlib
import socket
import threading
import zlib
from urllib.parse import urlsplit

import redis
from rq import Callback, Retry
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from cms.messages import Accepted, Failed
from cms.settings import Settings
from hub.contract import FAILURE_TTL, RESULT_TTL, STATUS, Event, Request, connect, queue, submit
from hub.jobs import FAILURE_CALLBACK, STATUS_JOB
from hub.keys import KEYS, Hub, hub_for
from tests.harness import wait_until


def _events(hub: Hub, request_id: str) -> list[Event]:
    return [e for e in (Event.from_fields(f) for _, f in hub.redis.xrange(hub.keys.events)) if e.request == request_id]


def _audit(hub: Hub, request_id: str) -> list[dict[bytes, bytes]]:
    return [f for _, f in hub.redis.xrange(hub.keys.audit) if f.get(b"request") == request_id.encode()]


def test_submit_writes_the_job_rqs_own_enqueue_writes_with_the_request_event_and_audit(db_url):
    """Field for field the hash Queue.enqueue_call writes (timestamps and the id aside), on the same
    queue, with the options the bot uses and a retry; then the request, one event, one audit entry."""
    hub = Hub(redis.Redis.from_url(db_url), KEYS)
    options = dict(on_failure=Callback(FAILURE_CALLBACK), retry=Retry(max=2, interval=[1, 5]))
    queue(hub, STATUS).enqueue_call(STATUS_JOB, args=("r-by-rq",), job_id="r-by-rq", timeout=42,
                                    result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL, **options)
    req = Request(id="r-submitted", command="/cms-status", user="U1", channel="C1", origin="slack")
    submit(hub, req, STATUS_JOB, kind=STATUS, timeout=42, accepted=Accepted(queue=STATUS),
           audit={"command": "/cms-status", "args": {"target": None}}, **options)

    by_rq, ours = (hub.redis.hgetall(f"rq:job:{i}") for i in ("r-by-rq", req.id))
    assert set(ours) == set(by_rq)
    for field in set(ours) - {b"created_at", b"enqueued_at"}:
        mine, theirs = ours[field], by_rq[field]
        if field == b"data":
            mine, theirs = zlib.decompress(mine), zlib.decompress(theirs)
        assert mine.replace(req.id.encode(), b"<id>") == theirs.replace(b"r-by-rq", b"<id>"), field
    assert hub.redis.ttl(f"rq:job:{req.id}") == hub.redis.ttl("rq:job:r-by-rq") == -1
    assert hub.redis.lrange(f"rq:queue:{KEYS.queue(STATUS)}", 0, -1) == [b"r-by-rq", req.id.encode()]
    assert f"rq:queue:{KEYS.queue(STATUS)}".encode() in hub.redis.smembers("rq:queues")
    job = Job.fetch(req.id, connection=hub.redis, serializer=JSONSerializer)
    assert (job.func_name, job.args, job.timeout, job.retries_left, job.retry_intervals) == (
        STATUS_JOB, [req.id], 42, 2, [1, 5])
    assert job.get_status() == JobStatus.QUEUED and ours[b"failure_callback_name"] == FAILURE_CALLBACK.encode()

    assert Request.model_validate_json(hub.redis.get(KEYS.request(req.id))) == req
    (event,) = _events(hub, req.id)
    assert (event.seq, event.kind, event.message) == (1, "accepted", Accepted(queue=STATUS))
    (entry,) = _audit(hub, req.id)
    assert entry[b"who"] == b"U1" and entry[b"command"] == b"/cms-status" and entry[b"args"] == b'{"target": null}'


def test_a_real_worker_runs_a_submitted_job_within_its_time_limit_and_its_failure_callback_reports(worker, lab,
                                                                                                   conn):
    """The check waits for a hung fe01 for the host deadline (seconds); the job's limit is one second:
    RQ stops it and runs its failure callback, which tells the thread."""
    lab.scenarios("hang:fe01.contoso.com")
    hub = hub_for(conn, Settings(redis_url=worker.redis_url))
    req = Request(command="/cms-status", user="U-TEST", origin="console")
    submit(hub, req, STATUS_JOB, kind=STATUS, timeout=1, on_failure=Callback(FAILURE_CALLBACK),
           accepted=Accepted(queue=STATUS), audit={"command": "/cms-status"})

    wait_until(lambda: any(e.kind == "failed" for e in _events(hub, req.id)), 30, "the job's failure was not told")
    events = _events(hub, req.id)
    assert events[0].kind == "accepted" and [e.seq for e in events] == list(range(1, len(events) + 1))
    failed = events[-1].message
    assert isinstance(failed, Failed) and "ran past its time limit" in failed.reason, failed
    job = Job.fetch(req.id, connection=conn, serializer=JSONSerializer)
    wait_until(lambda: job.get_status() == JobStatus.FAILED, 10, "RQ did not mark the job failed")  # after the callback
    assert (job.timeout, job.result_ttl, job.failure_ttl) == (1, RESULT_TTL, FAILURE_TTL)
    assert req.id in FailedJobRegistry(queue=queue(hub, STATUS)).get_job_ids()
    assert len(_audit(hub, req.id)) == 1


class _LosesAScriptsReply:
    """A TCP proxy to Redis that, once, closes the client's connection where the reply to a script
    (EVALSHA) that ran should have gone: the script's writes are made, the client never hears of them."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.lost = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            script = threading.Event()  # a script was sent on this connection, its reply not yet passed on
            threading.Thread(target=self._up, args=(client, server, script), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, script), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, script: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                if b"EVALSHA" in data:
                    script.set()
                server.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)

    def _down(self, server: socket.socket, client: socket.socket, script: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if script.is_set() and not data.startswith(b"-") and not self.lost.is_set():
                    self.lost.set()  # the script ran (its reply is not an error such as NOSCRIPT): lose the reply
                    break
                if script.is_set():
                    script.clear()
                client.sendall(data)
        except OSError:
            pass
        for s in (client, server):  # shutdown, not close alone: it ends the other thread's recv at once
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()
        for s in self.sockets:
            s.close()


def test_a_submission_retried_after_its_reply_was_lost_is_written_once(db_url):
    """redis-py sends the script again on a new connection when the first one drops before the reply
    (connect()'s retries): the same submission's token finds its writes there and adds none: the job is
    queued once, and there is one event and one audit entry."""
    url = urlsplit(db_url)
    assert url.hostname and url.port
    proxy = _LosesAScriptsReply((url.hostname, url.port))
    try:
        hub = Hub(connect(url._replace(netloc=url.netloc.replace(f"{url.hostname}:{url.port}",
                                                                 f"127.0.0.1:{proxy.port}")).geturl()), KEYS)
        req = Request(command="/cms-status", user="U1", channel="C1", origin="slack")
        submit(hub, req, STATUS_JOB, kind=STATUS, timeout=60, on_failure=Callback(FAILURE_CALLBACK),
               accepted=Accepted(queue=STATUS), audit={"command": "/cms-status"})
        assert proxy.lost.is_set(), "no reply was lost: the retry was not exercised"
        direct = Hub(redis.Redis.from_url(db_url), KEYS)
        assert direct.redis.lrange(f"rq:queue:{KEYS.queue(STATUS)}", 0, -1) == [req.id.encode()]
        assert [(e.seq, e.kind) for e in _events(direct, req.id)] == [(1, "accepted")]
        assert len(_audit(direct, req.id)) == 1
        assert Request.model_validate_json(direct.redis.get(KEYS.request(req.id))) == req
    finally:
        proxy.close()
