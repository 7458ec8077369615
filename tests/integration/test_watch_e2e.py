"""The watch end to end: a real worker runs the scheduled status check against the lab over WinRM,
decides on real Redis, the real bot's reporter posts the incident in the Slack fake's alert channel,
and the worker pages the on-call fakes (PagerDuty, Opsgenie, a webhook: lab/oncall_fake.py).

The schedule is driven by enqueueing the watch job directly, as RQ's cron scheduler does (its own
test: what the settings register is what rq.cron runs). Each run is waited for to its end (the job
finished, its on-call jobs finished, every event delivered) before anything is counted.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime

import pytest
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from cms import topology as topo
from cms.settings import Settings
from cms.watch import WatchSchedule
from hub import incidents, telemetry
from hub.contract import ONCALL, queue
from hub.jobs import ONCALL_JOB
from hub.keys import KEYS, Hub
from hub.schedule import cron_name, enqueue_watch, next_run, next_runs, scheduler
from lab.oncall_fake import OncallFake
from lab.processes import cmsbot
from tests.harness import SLACK_WORKER, Managed, scaled, stop_cleanly, wait_settled, wait_until
from tests.slack_support import BotProcess, blocks_text, buttons

ALERTS = "C0ALERTS"
PD_KEY = "R0123456789abcdef0123456789abcd"  # the shape of an Events API v2 integration key (32 characters)
OG_KEY = "0f0e0d0c-0b0a-0908-0706-050403020100"
HOOK_SECRET = "hook-signing-secret"
GRACE = 8.0  # seconds: longer than two watch runs against the lab, short enough to be outlived in a test
FE03, FE04 = "fe03.contoso.com", "fe04.contoso.com"
NEVER = "0 0 1 1 *"  # a schedule that does not fire during a test: `cmsbot watch` only moves retries along


@pytest.fixture(scope="module")
def oncall():
    with OncallFake() as fake:
        yield fake


@pytest.fixture
def watch_worker(workers, edge_lab, oncall):
    edge_lab.scenarios()
    oncall.reset()
    w = workers.take(edge_lab.topology, **SLACK_WORKER, alert_channel=ALERTS, watch_grace=str(scaled(GRACE)),
                     pagerduty_routing_key=PD_KEY, pagerduty_url=oncall.pagerduty_url, opsgenie_api_key=OG_KEY,
                     opsgenie_url=oncall.opsgenie_url, oncall_webhook_url=oncall.webhook_url,
                     oncall_webhook_secret=HOOK_SECRET, oncall_retry_first="1")
    yield w
    stop_cleanly(w)


@pytest.fixture
def alert_bot(tmp_path, watch_worker, edge_lab, fake):
    """The real bot (its reporter delivers the watch's events) on the watch worker's database."""
    fake.reset()
    b = BotProcess(tmp_path, watch_worker.redis_url, edge_lab.topology, fake)
    yield b
    watch_worker.terminate()
    stop_cleanly(b)


@pytest.fixture
def hub(watch_worker) -> Hub:
    return Hub(redis.Redis.from_url(watch_worker.redis_url), KEYS)


def run_watch(hub: Hub, url: str, scope: str = "*") -> dict:
    """One scheduled run, as the cron scheduler enqueues it; returns once everything it caused is done."""
    job = enqueue_watch(hub, scope, timeout=int(scaled(120)))
    wait_until(lambda: job.get_status(refresh=True) in (JobStatus.FINISHED, JobStatus.FAILED), 60,
               "the watch run did not end")
    assert job.get_status() == JobStatus.FINISHED, Job.fetch(job.id, hub.redis, serializer=JSONSerializer).exc_info
    wait_settled(url)
    return job.return_value() or {}


def parents(fake) -> list[dict]:
    return [m for m in fake.messages(ALERTS) if not m.get("thread_ts")]


def replies(fake, parent: dict) -> list[dict]:
    return fake.thread(parent["ts"])[1:]


def test_an_incident_opens_once_says_a_changed_cause_resolves_and_recurs(alert_bot, fake, oncall, edge_lab, hub,
                                                                         watch_worker):
    url = watch_worker.redis_url
    edge_lab.scenarios(f"replica-behind:{FE03}")
    assert run_watch(hub, url)["actions"] == ["open"]
    (parent,) = parents(fake)
    assert parent["text"].startswith(f"CMS incident: {FE03} is behind the Central Management Store")
    assert "`replica.behind`" in blocks_text(parent) and "Invoke-CsManagementStoreReplication" in blocks_text(parent)
    assert "remediate-force-replication" in [b["action_id"] for b in buttons(parent)]
    (trigger,) = oncall.requests("pagerduty")
    key = trigger.body["dedup_key"]
    assert trigger.body["event_action"] == "trigger" and trigger.body["routing_key"] == PD_KEY
    assert key == f"cms-chatops/cmsbot/replica/{FE03}" and trigger.body["payload"]["source"] == FE03
    (create,) = oncall.requests("opsgenie")
    assert create.path == "/v2/alerts" and create.body["alias"] == key and create.headers["authorization"] == \
        f"GenieKey {OG_KEY}"
    (hook,) = oncall.requests("webhook")
    assert hook.body["action"] == "trigger" and hook.headers["x-cmsbot-signature"].startswith("sha256=")

    # the App Home's view: the open incident and its thread, the schedule's next runs
    schedule = Settings(redis_url=url, watch=[WatchSchedule(scope="*", cron="*/5 * * * *")])
    view = incidents.overview(hub, schedule, permalink=lambda channel, ts: f"slack://{channel}/{ts}")
    (open_now,) = view.incidents
    assert (open_now.channel, open_now.thread_ts, open_now.key) == (ALERTS, parent["ts"], f"replica/{FE03}")
    assert telemetry.open_incidents(hub) == 1  # what /metrics reports as cmsbot_open_incidents
    assert open_now.link == f"slack://{ALERTS}/{parent['ts']}" and view.paused is None
    (next_check,) = view.runs  # no `cmsbot watch` runs in this test: the cron's own word
    assert next_check.scope == "*" and not next_check.scheduled and next_check.next_run > datetime.now(UTC)

    for _ in range(3):  # it persists: nothing more is said, nobody is paged again
        assert run_watch(hub, url)["actions"] == []
    assert len(parents(fake)) == 1 and replies(fake, parent) == [] and len(oncall.requests("pagerduty")) == 1

    edge_lab.scenarios(f"replica-stopped:{FE03}")  # the same replica, another cause
    assert run_watch(hub, url)["actions"] == ["update"]
    (update,) = replies(fake, parent)
    assert "cause `replica.behind` → `replica.replica-stopped`" in blocks_text(update).replace("\\u2192", "→")
    assert "remediate-start-replica" in [b["action_id"] for b in buttons(update)]
    assert [r.body["event_action"] for r in oncall.requests("pagerduty")] == ["trigger", "trigger"]  # added to the alert
    assert {r.body["dedup_key"] for r in oncall.requests("pagerduty")} == {key}
    assert len(oncall.pagerduty_alerts(key)) == 1

    edge_lab.scenarios()  # fixed
    assert run_watch(hub, url)["actions"] == ["resolve"]
    parent = fake.thread(parent["ts"])[0]
    assert re.match(r"Resolved after \d+ (s|min): ", parent["text"]) and parent["edits"] >= 2
    assert buttons(parent) == []
    assert "Cleared at" in replies(fake, parent)[-1]["text"]
    resolve = oncall.requests("pagerduty")[-1].body
    assert resolve == {"routing_key": PD_KEY, "event_action": "resolve", "dedup_key": key}
    (alert,) = oncall.pagerduty_alerts(key)
    assert alert.status == "resolved"
    assert [a.status for a in oncall.opsgenie_alerts(key)] == ["resolved"]
    assert [r.body["action"] for r in oncall.requests("webhook")] == ["trigger", "update", "resolve"]
    assert incidents.incidents_open(hub) == [] and telemetry.open_incidents(hub) == 0

    edge_lab.scenarios(f"replica-behind:{FE03}")  # it came back: a new incident, a new alert
    assert run_watch(hub, url)["actions"] == ["open"]
    assert len(parents(fake)) == 2 and parents(fake)[-1]["text"].startswith("CMS incident: ")
    assert [a.status for a in oncall.pagerduty_alerts(key)] == ["resolved", "open"]
    assert len(oncall.requests("pagerduty")) == 4 and all(r.status == 202 for r in oncall.requests("pagerduty"))


def test_incidents_decided_while_slack_is_down_are_posted_when_it_is_back_each_once(alert_bot, fake, oncall,
                                                                                     edge_lab, hub, watch_worker):
    url = watch_worker.redis_url
    fake.outage(scaled(4))
    edge_lab.scenarios(f"replica-behind:{FE03}")
    job = enqueue_watch(hub, "*", timeout=int(scaled(120)))  # opened while Slack answers 503
    wait_until(lambda: job.get_status(refresh=True) == JobStatus.FINISHED, 60, "the watch run did not end")
    edge_lab.scenarios()
    run_watch(hub, url)  # resolved, still while Slack is down or just back: waits until every event is delivered
    (parent,) = parents(fake)
    assert parent["text"].startswith("Resolved after ")  # the edit came after its post, in order
    assert [m["text"].startswith("Cleared at") for m in replies(fake, parent)] == [True]
    assert len([c for c in fake.calls("chat.postMessage") if c.status == 200]) == 2  # the parent and the note
    assert [r.body["event_action"] for r in oncall.requests("pagerduty")] == ["trigger", "resolve"]


def test_a_transient_state_shorter_than_the_grace_never_alerts_and_one_that_outlives_it_does(
        alert_bot, fake, oncall, edge_lab, hub, watch_worker):
    url = watch_worker.redis_url
    edge_lab.scenarios(f"transient:{FE04}")  # UpToDate False, a change 45 s ago: catching up
    assert run_watch(hub, url)["actions"] == []
    assert run_watch(hub, url)["actions"] == []
    edge_lab.scenarios()  # caught up within the grace
    assert run_watch(hub, url)["actions"] == []
    assert parents(fake) == [] and oncall.requests() == []
    assert incidents.load(hub).tracked == {}

    edge_lab.scenarios(f"transient:{FE04}")  # catching up for longer than the grace this time
    started = datetime.now(UTC)
    while not (done := run_watch(hub, url))["actions"]:
        assert (datetime.now(UTC) - started).total_seconds() < scaled(GRACE) + 60, "it never alerted"
    assert done["actions"] == ["open"]
    assert (datetime.now(UTC) - started).total_seconds() >= scaled(GRACE)  # not before the grace
    (parent,) = parents(fake)
    assert parent["text"].startswith(f"CMS incident: {FE04} is catching up")
    assert oncall.requests() == []  # pending does not page: below CMSBOT_ONCALL_PAGE_AT (error)


def test_while_a_cms_change_holds_the_lock_the_watch_skips_and_says_so_once(alert_bot, fake, oncall, edge_lab, hub,
                                                                            watch_worker):
    url = watch_worker.redis_url
    edge_lab.scenarios(f"replica-behind:{FE03}")
    hub.redis.set(KEYS.cms_lock, "7:r0000000000000001")
    hub.redis.set(KEYS.cms_lock_holder, "normal failover of the CMS from pool01.contoso.com to pool02.contoso.com")
    for _ in range(3):
        assert run_watch(hub, url)["skipping"] is True
    (notice,) = parents(fake)
    assert "The watch is paused" in notice["text"] and "normal failover of the CMS" in notice["text"]
    assert edge_lab.stats()["commands"] == []  # it did not look: no server was asked anything
    assert oncall.requests() == []

    hub.redis.delete(KEYS.cms_lock, KEYS.cms_lock_holder)  # the change is over
    assert run_watch(hub, url)["actions"] == ["resume", "open"]
    notice = fake.thread(notice["ts"])[0]
    assert "The watch resumed" in notice["text"] and "skipped 3 scheduled checks" in notice["text"]
    first, second = parents(fake)
    assert first["ts"] == notice["ts"] and second["text"].startswith(f"CMS incident: {FE03} is behind")


def test_a_watch_that_cannot_check_says_so_once_and_when_it_works_again(alert_bot, fake, edge_lab, hub,
                                                                        watch_worker):
    url = watch_worker.redis_url
    for _ in range(2):  # a scope the worker's topology does not have: the check itself fails
        job = enqueue_watch(hub, "pool99.contoso.com", timeout=int(scaled(60)))
        wait_until(lambda: job.get_status(refresh=True) == JobStatus.FAILED, 60, "the run did not fail")  # noqa: B023
    wait_settled(url)
    (notice,) = parents(fake)
    assert "The watch is paused" in notice["text"] and "its check of pool99.contoso.com failed (UnknownTarget)" in \
        notice["text"]
    assert run_watch(hub, url)["actions"] == ["resume"]
    assert "The watch resumed" in fake.thread(notice["ts"])[0]["text"] and len(parents(fake)) == 1


def test_on_call_is_retried_until_it_answers_and_never_told_twice(alert_bot, fake, oncall, edge_lab, hub,
                                                                  watch_worker, tmp_path):
    """RQ retries a failed page (its retries wait in RQ's scheduled registry; `cmsbot watch` moves them
    back when due); the idempotency records keep a repeated job from paging again; a refusal (4xx) is
    said in the incident's thread instead of retried."""
    url = watch_worker.redis_url
    env = dict(os.environ, REDIS_URL=url, CMSBOT_TOPOLOGY=str(edge_lab.topology),
               CMSBOT_WATCH=json.dumps([{"scope": "*", "cron": NEVER}]), CMSBOT_LOG_LEVEL="INFO")
    cron = Managed(cmsbot("watch"), env, tmp_path / "watch.log", factor=scaled(1))
    try:
        cron.wait_for(lambda: "cmsbot watch: scheduling" in cron.text(), 30, "cmsbot watch")
        oncall.fail("pagerduty", times=2, status=503)
        oncall.fail("opsgenie", times=1, status=429)
        oncall.fail("webhook", times=1, status=400)  # refused for good: not retried
        edge_lab.scenarios(f"replica-behind:{FE03}")
        run_watch(hub, url)  # returns once the retried jobs are done too
        assert [r.status for r in oncall.requests("pagerduty")] == [503, 503, 202]
        assert [r.status for r in oncall.requests("opsgenie")] == [429, 202]
        assert [r.status for r in oncall.requests("webhook")] == [400]
        (parent,) = parents(fake)
        wait_until(lambda: replies(fake, parent), 10, "no note in the thread")
        (note,) = replies(fake, parent)
        assert "the on-call webhook was not paged" in note["text"] and "HTTP 400" in note["text"]
        assert HOOK_SECRET not in json.dumps(fake.messages()) and "test-hook-token" not in json.dumps(fake.messages())

        # the same job again (a duplicate delivery, a retry after a lost answer): nothing is sent twice
        sent = len(oncall.requests())
        for target in ("pagerduty", "opsgenie", "webhook"):
            queue(hub, ONCALL).enqueue_call(ONCALL_JOB, args=(target, f"replica/{FE03}"))
        wait_settled(url)
        assert len(oncall.requests()) == sent
        assert len(oncall.pagerduty_alerts()) == 1
    finally:
        stop_cleanly(cron)
    assert PD_KEY not in cron.text() and OG_KEY not in cron.text() and "test-hook-token" not in cron.text()
    assert PD_KEY not in watch_worker.text() and OG_KEY not in watch_worker.text()
    assert HOOK_SECRET not in watch_worker.text() and "test-hook-token" not in watch_worker.text()


def test_the_schedule_in_the_settings_is_what_rq_cron_runs(alert_bot, fake, edge_lab, hub, watch_worker, tmp_path):
    """CMSBOT_WATCH becomes rq.cron's jobs (one per scope, the watch job on the status queue, its cron);
    made due, the scheduler enqueues a job the real worker runs; `cmsbot watch` says when each runs next."""
    url = watch_worker.redis_url
    topology = topo.load(edge_lab.topology)
    settings = Settings(redis_url=url, topology=edge_lab.topology,
                        watch=[WatchSchedule(scope="*", cron="*/5 * * * *"),
                               WatchSchedule(scope="pool02.contoso.com", cron="0 6 * * 1-5")])
    before = datetime.now(UTC)
    cron = scheduler(hub, settings, topology)
    after = datetime.now(UTC)
    registered = [(j.name, j.func_name, j.queue_name, j.cron, j.args) for j in cron.get_jobs()]
    assert registered == [
        ("cmsbot:watch:*", "workers.jobs.watch", "cmsbot-status", "*/5 * * * *", ("*",)),
        ("cmsbot:watch:pool02.contoso.com", "workers.jobs.watch", "cmsbot-status", "0 6 * * 1-5",
         ("pool02.contoso.com",))]
    for job in cron.get_jobs():  # what croniter says through rq.cron, from the moment it was registered
        assert job.next_enqueue_time in (next_run(job.cron or "", before), next_run(job.cron or "", after))

    edge_lab.scenarios(f"replica-behind:{FE03}")
    due = cron.get_jobs()[1]  # the pool's: fe03 is in pool02
    due.next_enqueue_time = datetime.now(UTC)
    try:
        assert cron.enqueue_jobs() == [due]
    finally:
        cron.retries.release_locks()  # it took RQ's scheduler lock of the on-call queue while it looked
    wait_until(lambda: incidents.load(hub).tracked, 60, "the worker did not run the scheduled watch")
    wait_settled(url)
    (parent,) = parents(fake)
    assert FE03 in parent["text"]
    assert hub.redis.zcard(due.job_history_key) == 1  # RQ's own monitoring saw it

    # the process: registers its schedule in RQ's registry, says when each scope runs next, stops on SIGTERM
    env = dict(os.environ, REDIS_URL=url, CMSBOT_TOPOLOGY=str(edge_lab.topology), CMSBOT_LOG_LEVEL="INFO",
               CMSBOT_WATCH=json.dumps([{"scope": "*", "cron": NEVER}]))
    proc = Managed(cmsbot("watch"), env, tmp_path / "watch.log", factor=scaled(1))
    try:
        proc.wait_for(lambda: "cmsbot watch: scheduling * at '0 0 1 1 *'" in proc.text(), 30, "cmsbot watch")
        mine = Settings(redis_url=url, watch=[WatchSchedule(scope="*", cron=NEVER)])
        (run,) = wait_until(lambda: [r for r in next_runs(hub, mine) if r.scheduled], 30, "not registered")
        assert run.next_run == next_run(NEVER, datetime.now(UTC)) and run.scope == "*"
        assert cron_name(hub, "*") == "cmsbot:watch:*"
    finally:
        stop_cleanly(proc)
    (idle,) = next_runs(hub, mine)
    assert idle.scheduled is False and idle.next_run == run.next_run  # none runs it now: the cron's word only


def test_cmsbot_watch_refuses_a_schedule_it_cannot_run(tmp_path, edge_lab, db_url):
    env = dict(os.environ, REDIS_URL=db_url, CMSBOT_TOPOLOGY=str(edge_lab.topology),
               CMSBOT_WATCH=json.dumps([{"scope": "pool99.contoso.com", "cron": "*/5 * * * *"}]))
    proc = Managed(cmsbot("watch"), env, tmp_path / "bad.log")
    assert proc.proc.wait(timeout=scaled(30)) == 2
    assert "pool99.contoso.com" in proc.text() and "Traceback" not in proc.text()
