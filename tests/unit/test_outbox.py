"""The job's outbox (workers/outbox.py): writes land in order, wait through an outage, and a job
that ends waits for them. The writes here are plain functions that fail like a Redis that is down."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest
import redis

from hub.keys import Hub, Keys
from workers import outbox as outbox_module
from workers.outbox import Outbox

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(outbox_module, "RETRY_EVERY", 0.01)


def hub() -> Hub:
    return Hub(cast(Any, None), Keys())  # the writes below never touch it


class Redis:
    """Down until `up` is set: every write raises what redis-py raises when the server is gone."""

    def __init__(self):
        self.up = threading.Event()
        self.written: list[str] = []
        self.attempts = 0

    def write(self, what: str):
        def do(_hub: Hub) -> None:
            self.attempts += 1
            if not self.up.is_set():
                raise redis.ConnectionError("Connection refused")
            self.written.append(what)
        return do


def test_writes_land_in_order_while_redis_answers():
    r, box = Redis(), Outbox(hub())
    r.up.set()
    for i in range(50):
        box.put(f"w{i}", r.write(f"w{i}"))
    assert box.close(5)
    assert r.written == [f"w{i}" for i in range(50)]


def test_an_outage_holds_the_writes_in_order_without_holding_the_job_and_they_land_when_redis_is_back():
    r, box = Redis(), Outbox(hub())
    for i in range(5):
        box.put(f"w{i}", r.write(f"w{i}"))  # returns at once: the job goes on (a watch keeps watching)
    assert not box.drain(0.2) and box.held and r.written == [] and r.attempts > 1
    r.up.set()
    assert box.close(5)
    assert r.written == [f"w{i}" for i in range(5)] and not box.held


def test_a_job_that_ends_during_a_long_outage_says_so_and_writes_nothing_out_of_order():
    r, box = Redis(), Outbox(hub())
    box.put("result", r.write("result"))
    assert not box.close(0.1)
    r.up.set()
    box.put("late", r.write("late"))  # after close: never written
    assert r.written == []


def test_a_write_that_fails_for_another_reason_is_dropped_and_does_not_hold_back_the_rest():
    r, box = Redis(), Outbox(hub())
    r.up.set()

    def broken(_hub: Hub) -> None:
        raise ValueError("a bug, not an outage")
    box.put("broken", broken)
    box.put("next", r.write("next"))
    assert box.close(5) and r.written == ["next"]
