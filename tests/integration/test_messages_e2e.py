"""Typed messages through a real Redis stream and the real reporter: what a worker appends comes
back as the same message, and entries this bot cannot read are reported or skipped, never stuck."""

from __future__ import annotations

import io

import redis

from bot.delivery.console import EXIT_CANNOT_RUN, ConsoleThread
from bot.delivery.reporter import Reporter
from cms.messages import Progress
from hub.contract import Request, append_event
from hub.keys import Hub, Keys


def test_the_reporter_delivers_typed_messages_and_gets_past_unreadable_ones(db_url):
    hub = Hub(redis.Redis.from_url(db_url), Keys("messages-test"))
    request = Request(command="/cms-status", user="alice")
    out = io.StringIO()
    thread = ConsoleThread(request, out)
    delivered = []

    def deliver(event):
        delivered.append(event)
        return thread.deliver(event)

    reporter = Reporter(hub, group="messages-test", consumer="c1", deliver=deliver,
                        wants=lambda e: e.request == request.id, start="0")
    def raw(seq: int, kind: str, body: str) -> None:
        hub.redis.xadd(hub.keys.events, {"request": request.id, "seq": seq, "kind": kind, "body": body})
        hub.redis.set(hub.keys.seq(request.id), seq)

    assert append_event(hub, request.id, Progress(text="1 of 2 servers answered", done=1, total=2)) == 1
    # what an older or newer writer (or a bug) could leave in the stream, between well-formed events
    raw(2, "celebrate", "{}")
    raw(3, "progress", "not json")
    assert append_event(hub, request.id, Progress(text="still here")) == 4
    raw(5, "result", '{"report": 42}')

    for _ in range(3):
        reporter.poll(block_ms=100)
    assert [(e.seq, e.kind) for e in delivered] == [(1, "progress"), (2, "celebrate"), (3, "progress"),
                                                    (4, "progress"), (5, "result")]
    assert delivered[0].message == Progress(text="1 of 2 servers answered", done=1, total=2)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["  | 1 of 2 servers answered", "  | still here"]
    assert lines[2].startswith("  | FAILED: this bot cannot read the result event the worker sent (report")
    assert lines[3:] == ["verdict: FAILED"]
    assert thread.exit_code == EXIT_CANNOT_RUN
    # everything was acknowledged: nothing waits to be redelivered, the delivery loop goes on
    assert hub.redis.xpending(hub.keys.events, "messages-test")["pending"] == 0
    reporter.destroy()


def test_a_retried_append_is_one_event(db_url):
    """A write whose reply was lost is sent again (the client's retries, a job's outbox): with the same
    token it appends nothing more, and the thread shows the event once."""
    hub = Hub(redis.Redis.from_url(db_url), Keys("append-test"))
    request = Request(command="/cms-status", user="alice")
    first = append_event(hub, request.id, Progress(text="checking"), token="t-1")
    again = append_event(hub, request.id, Progress(text="checking"), token="t-1")
    other = append_event(hub, request.id, Progress(text="checking"))
    assert (first, again, other) == (1, 1, 2)
    assert [f[b"seq"] for _, f in hub.redis.xrange(hub.keys.events)] == [b"1", b"2"]
