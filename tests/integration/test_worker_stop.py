"""A warm shutdown (SIGTERM) that arrives while the worker records a job that just ended. RQ answers a stop
asked while no horse runs by raising StopRequested from the signal handler; raised inside a log call, it
was swallowed by logging ("--- Logging error ---") and the worker ran on until it was killed. Ours notes
the request, and RQ's loop ends before taking another job."""

from __future__ import annotations

import signal

import redis
from rq.serializers import JSONSerializer

from cms.settings import Settings
from hub.contract import queues
from hub.keys import hub_for
from workers.rq_worker import Worker


def test_a_stop_asked_while_a_job_is_recorded_ends_the_worker_before_the_next_job(db_url):
    conn = redis.Redis.from_url(db_url)
    hub = hub_for(conn, Settings(redis_url=db_url))
    worker = Worker(queues(hub), connection=conn, serializer=JSONSerializer, hub=hub)
    worker._recording = True  # what execute_job sets around _ended
    worker._shutdown()  # no StopRequested here, where a log call would swallow it
    worker._recording = False
    assert worker._stop_requested
    # RQ's loop checks the request before it dequeues: it returns without waiting for a job
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert worker.work(burst=False, with_scheduler=False) is False
    finally:  # work() installs RQ's handlers in this (the test's) process
        for s, handler in handlers.items():
            signal.signal(s, handler)
    assert worker.get_state() != "busy"
