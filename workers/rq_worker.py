"""RQ's worker, riding out a short Redis outage while a job runs.

The worker process watches its work-horse and, every `job_monitoring_interval`, writes RQ's
heartbeats to Redis. RQ lets a Redis error there end the whole worker ("found an unhandled
exception, quitting"), which would leave a CMS failover's convergence watch without its
worker. Here a missed heartbeat is logged and the next one tries again; RQ's own TTLs (a
minute past the interval) cover an outage of tens of seconds. The job itself holds what it
writes until Redis is back (workers/outbox.py).
"""

from __future__ import annotations

import redis
from rq import Worker as RQWorker


class Worker(RQWorker):
    def maintain_heartbeats(self, job, execution) -> None:
        try:
            super().maintain_heartbeats(job, execution)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self.log.warning("Worker %s: Redis unavailable (%s) while job %s runs; it keeps running",
                             self.name, type(e).__name__, job.id)
