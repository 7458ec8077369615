"""The watch's schedule: RQ's own cron scheduler (rq.cron) enqueueing the watch job, one cron
expression per scope (CMSBOT_WATCH), and moving the on-call jobs' retries along when they are due.

`cmsbot watch` runs `scheduler(...)`. Two details differ from rq.cron's defaults, and why:

- A job is enqueued through our queue (JSON serializer, the namespace's queue, the worker's job
  class refuses anything else), not rq.cron's pickling one, and its id names the scheduled
  minute: two schedulers running by mistake enqueue the same job id, and the job runs once (it
  claims its id).
- RQ keeps a failed job's next retry in its scheduled registry until a scheduler moves it back to
  the queue. The workers run without RQ's scheduler (cmsbot worker), so this process moves the
  on-call queue's due retries, under RQ's own per-queue scheduler lock.
"""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis
from rq import cron_job_registry
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_CRON_SCHEDULER_TTL
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from cms.settings import Settings
from cms.topology import Topology, UnknownTarget
from cms.watch import ALL, WatchSchedule
from hub.contract import ONCALL, STATUS, queue
from hub.jobs import WATCH_JOB
from hub.keys import Hub

log = logging.getLogger(__name__)

RETRY_POLL = 1.0  # seconds between looks for on-call retries that are due


class ScheduleError(ValueError):
    """CMSBOT_WATCH names a scope the topology does not have, or a cron expression croniter refuses."""


def cron_name(hub: Hub, scope: str) -> str:
    """The cron job's name in RQ's monitoring (its registry is shared by every namespace)."""
    return f"{hub.keys.namespace}:watch:{scope}"


def _slug(scope: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", scope)[:80]


def enqueue_watch(hub: Hub, scope: str, timeout: int, tick: datetime | None = None) -> Job:
    """One watch run over `scope`, now. `tick`: the scheduled minute it stands for (one run per tick)."""
    stamp = tick.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ") if tick else "now-" + secrets.token_hex(6)
    return queue(hub, STATUS).enqueue_call(WATCH_JOB, args=(scope,), job_id=hub.keys.job_id("watch", _slug(scope),
                                                                                             stamp),
                                           timeout=timeout, result_ttl=3600, failure_ttl=7 * 24 * 3600)


def job_timeout(settings: Settings, topology: Topology, scope: str) -> int:
    target = topology.everything() if scope in (ALL, "all") else topology.resolve(scope)
    return settings.job_timeout(len(target.servers))


class WatchCronJob(CronJob):
    """rq.cron's CronJob for one scope of CMSBOT_WATCH, enqueued through our queue (see the module)."""

    def __init__(self, hub: Hub, schedule: WatchSchedule, timeout: int):
        super().__init__(queue_name=hub.keys.queue(STATUS), func_name=WATCH_JOB, args=(schedule.scope,),
                         cron=schedule.cron, job_timeout=timeout, name=cron_name(hub, schedule.scope))
        self.hub, self.schedule, self.timeout = hub, schedule, timeout

    def enqueue(self, connection: Redis) -> Job:
        job = enqueue_watch(self.hub, self.schedule.scope, self.timeout, tick=self.next_enqueue_time)
        at = (job.enqueued_at or datetime.now(UTC)).timestamp()
        with connection.pipeline() as pipe:  # RQ's monitoring of cron jobs, as CronJob.enqueue keeps it
            pipe.zadd(self.job_history_key, {job.id: at})
            pipe.zremrangebyrank(self.job_history_key, 0, -1001)
            cron_job_registry.add(self.name, pipe, enqueue_timestamp=at)
            pipe.execute()
        log.info("enqueued the watch of %s (%s)", self.schedule.scope, job.id)
        return job


def cron_jobs(hub: Hub, settings: Settings, topology: Topology) -> list[WatchCronJob]:
    """What RQ's cron scheduler runs for these settings: one job per line of CMSBOT_WATCH."""
    jobs = []
    for schedule in settings.watch:
        if next_run(schedule.cron, datetime.now(UTC)) is None:
            raise ScheduleError(f"CMSBOT_WATCH: {schedule.cron!r} is not a cron expression RQ's scheduler accepts")
        try:
            timeout = job_timeout(settings, topology, schedule.scope)
        except UnknownTarget as e:
            raise ScheduleError(f"CMSBOT_WATCH: scope {schedule.scope!r}: {e}") from None
        jobs.append(WatchCronJob(hub, schedule, timeout))
    return jobs


class WatchScheduler(CronScheduler):
    """RQ's cron scheduler with the watch's jobs, which also moves the on-call queue's due retries."""

    def __init__(self, hub: Hub, jobs: list[WatchCronJob], retry_poll: float = RETRY_POLL):
        super().__init__(connection=hub.redis)
        self.watch_jobs = list(jobs)
        self._cron_jobs = list(jobs)  # what CronScheduler.register() would have filled
        self.retry_poll = retry_poll
        self.retries = RQScheduler([hub.keys.queue(ONCALL)], connection=hub.redis, serializer=JSONSerializer,
                                   interval=max(1, int(retry_poll)))

    def enqueue_jobs(self) -> list[CronJob]:
        enqueued = super().enqueue_jobs()
        self.move_retries()
        return enqueued

    def move_retries(self) -> None:
        """The on-call jobs whose retry is due go back to their queue (one scheduler does it: RQ's lock)."""
        if self.retries.should_reacquire_locks:
            self.retries.acquire_locks()
        if self.retries.acquired_locks:
            self.retries.heartbeat()
            self.retries.enqueue_scheduled_jobs()

    def calculate_sleep_interval(self) -> float:
        return min(super().calculate_sleep_interval(), self.retry_poll)

    def register_death(self, pipeline=None) -> None:
        try:
            self.retries.release_locks()
        finally:
            super().register_death(pipeline)


def scheduler(hub: Hub, settings: Settings, topology: Topology) -> WatchScheduler:
    return WatchScheduler(hub, cron_jobs(hub, settings, topology))


# -- when the next runs are (the App Home) --------------------------------------------------------------


@dataclass(frozen=True)
class ScheduledRun:
    scope: str
    cron: str
    next_run: datetime | None
    scheduled: bool  # a live `cmsbot watch` has it; False: none runs it, next_run is what the cron would say


def next_runs(hub: Hub, settings: Settings, now: datetime | None = None) -> list[ScheduledRun]:
    """The next run of each scope of CMSBOT_WATCH: as a live scheduler has it in Redis, or, when none
    runs it, what its cron expression says (with `scheduled` False: nothing will run it)."""
    now = now or datetime.now(UTC)
    live: dict[str, datetime] = {}
    fresh = now - timedelta(seconds=DEFAULT_CRON_SCHEDULER_TTL)
    for s in CronScheduler.all(hub.redis, cleanup=False):
        beat = s.last_heartbeat
        if beat is None or beat < fresh:
            continue
        for job in s.get_jobs():
            if job.next_enqueue_time is not None:
                at = job.next_enqueue_time.replace(tzinfo=job.next_enqueue_time.tzinfo or UTC)
                live[job.name] = min(at, live.get(job.name, at))
    out = []
    for schedule in settings.watch:
        name = cron_name(hub, schedule.scope)
        if name in live:
            out.append(ScheduledRun(schedule.scope, schedule.cron, live[name], True))
            continue
        out.append(ScheduledRun(schedule.scope, schedule.cron, next_run(schedule.cron, now), False))
    return out


def next_run(cron: str, after: datetime) -> datetime | None:
    """When rq.cron would next run `cron` after `after` (its fields in local time); None: it cannot read it."""
    try:
        probe = CronJob(queue_name="-", func_name=WATCH_JOB, cron=cron)
    except (ValueError, KeyError):  # croniter's errors are ValueErrors
        return None
    probe.latest_enqueue_time = after
    return probe.get_next_enqueue_time()
