"""RQ's worker, riding out a short Redis outage while a job runs, and recording each job's telemetry.

The worker process watches its work-horse and, every `job_monitoring_interval`, writes RQ's
heartbeats to Redis. RQ lets a Redis error there end the whole worker ("found an unhandled
exception, quitting"), which would leave a CMS failover's convergence watch without its
worker. Here a missed heartbeat is logged and the next one tries again; RQ's own TTLs (a
minute past the interval) cover an outage of tens of seconds. The job itself holds what it
writes until Redis is back (workers/outbox.py).

Telemetry (hub/telemetry.py explains the choice): the work-horse records nothing, since it lives for
one job. This process times each job around its horse, reads the job's outcome and result once the
horse has ended, and records them; the horse is forked with the job's request id set, so every line
either process logs about the job carries it (cms/logs.py). `serve_telemetry` answers /metrics,
/healthz and /readyz (Redis answers, and this worker is registered with RQ and heartbeating).
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Worker as RQWorker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus

from cms import logs
from hub import telemetry
from hub.keys import Hub
from workers.allowed_jobs import ENTRY_POINTS

ENDED = {JobStatus.FINISHED: "finished", JobStatus.FAILED: "failed", JobStatus.STOPPED: "stopped",
         JobStatus.CANCELED: "canceled"}


class Worker(RQWorker):
    def __init__(self, *args: Any, hub: Hub | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hub = hub  # the deployment's names, for what a status check leaves as deployment state

    def maintain_heartbeats(self, job, execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.log.warning("Worker %s: Redis unavailable (%s) while job %s runs; it keeps running",
                             self.name, type(e).__name__, job.id)

    def execute_job(self, job: Job, queue) -> None:
        started = time.monotonic()
        with logs.request(job.id):  # a job's id is its request's id; the work-horse is forked with it
            try:
                super().execute_job(job, queue)
            finally:
                self._recording = True
                try:
                    self._ended(job, time.monotonic() - started)
                finally:
                    self._recording = False

    _recording = False  # in _ended: the horse is gone, the worker still busy with its own bookkeeping

    def _shutdown(self) -> None:
        """A warm shutdown asked while the worker records a job that ended: noted, and honoured by RQ's loop
        before it takes the next job. RQ's own answer when no horse runs is to raise StopRequested from the
        signal handler, which a log call running at that moment swallows ("--- Logging error ---"), and the
        worker then ran on until it was killed."""
        if self._recording:
            self._stop_requested = True
            return
        super()._shutdown()

    def _ended(self, job: Job, seconds: float) -> None:
        """Record the job that just ended: its duration and outcome, and what its result says."""
        name = job.func_name or ""
        kind = name.rsplit(".", 1)[-1] if name in ENTRY_POINTS else "foreign"  # a fixed set of labels
        outcome, result = "unknown", None
        try:
            status = job.get_status(refresh=True)
            outcome = ENDED.get(status, "unknown")
            if status == JobStatus.FINISHED:
                result = job.return_value(refresh=True)
            if kind == "status" and self.hub is not None:
                telemetry.note_status(self.hub, result)
        except (redis.RedisError, OSError, InvalidJobOperation, NoSuchJobError) as e:  # its duration still counts
            self.log.warning("job %s: its outcome could not be read for the metrics (%s)", job.id, type(e).__name__)
        telemetry.job_ended(kind, outcome, seconds, result)
        self.log.info("job %s (%s): %s after %.1f s", job.id, kind, outcome, seconds)


def serve_telemetry(worker: Worker, hub: Hub, redis_url: str, host: str, port: int):
    """/metrics, /healthz and /readyz of this worker on `host`:`port`, from a daemon thread; OSError when
    the port cannot be bound. Ready: Redis answers, and RQ knows this worker (registered, and its
    heartbeat not expired)."""
    health = redis.Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=1)

    def ready() -> str | None:
        if (why := telemetry.redis_answers(health)) is not None:
            return why
        try:
            registered = health.exists(worker.key)
        except (redis.RedisError, OSError) as e:
            return f"Redis does not answer ({type(e).__name__})"
        return None if registered else "not registered with RQ (starting, or its heartbeat stopped)"

    return telemetry.serve(host, port, telemetry.worker_registry(Hub(health, hub.keys)), ready)
