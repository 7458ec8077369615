"""Team-approved CMS failover and recovery, end to end: the real bot over signed
HTTP, the Slack fake, a real worker on real Redis, pywinrm against the lab's
failover state machine."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
import redis

from cms import topology as topo
from cms.models import CmdletRun
from cms.preflight import recognise
from hub import approvals, cms_lock
from hub.contract import CHANGE, Request, id_for_delivery, submit
from hub.jobs import EXECUTE_JOB, REMEDIATE_JOB
from hub.keys import KEYS, Hub
from tests.harness import (
    SLACK_WORKER,
    RedisServer,
    WorkerProcess,
    children_of,
    jobs_in_flight,
    stop_cleanly,
    wait_idle,
    wait_settled,
    wait_until,
)
from tests.slack_support import APPROVER, APPROVER2, BOTH, OPERATOR, BotProcess, blocks_text, parents
from workers.runs.failover import run_change


def cards(fake) -> list[dict]:
    return [m for m in parents(fake) if "Preflight" in blocks_text(m)]


def request_card(bot, fake, text: str = "", *, command: str = "/cms-failover", user: str = OPERATOR) -> dict:
    before = {c["ts"] for c in cards(fake)}
    status, body = bot.command(command, text, user=user)
    assert status == 200, body
    wait_until(lambda: any(c["ts"] not in before for c in cards(fake)), 30, f"no card: {body}")
    return next(c for c in cards(fake) if c["ts"] not in before)


def card_now(fake, card: dict) -> dict:
    return next(m for m in fake.messages() if m["ts"] == card["ts"])


def card_buttons(card: dict) -> dict[str, dict]:
    return {e["action_id"]: e for b in card.get("blocks") or [] if b.get("type") == "actions" for e in b["elements"]}


def click(bot, fake, card: dict, action: str, user: str) -> None:
    button = card_buttons(card)[action]
    assert bot.click(fake, action, button["value"], user=user, thread=card["ts"])[0] == 200


def answers_to(fake, n_before: int) -> list[str]:
    return [c.params["text"] for c in fake.calls("response_url")[n_before:]]


def thread_text(fake, card: dict) -> str:
    return " ".join(blocks_text(m) + m.get("text", "") for m in fake.thread(card["ts"])[1:])


def wait_in_thread(fake, card: dict, text: str, timeout: float = 60) -> None:
    wait_until(lambda: text in thread_text(fake, card), timeout,
               f"{text!r} not in thread: {thread_text(fake, card)[-1500:]}")


def test_gate_requester_and_non_approver_refused_then_normal_failover_converges(bot, fake, edge_lab):
    edge_lab.scenarios()
    card = request_card(bot, fake, user=BOTH)
    text = blocks_text(card)
    assert "normal failover from `pool01.contoso.com` to `pool02.contoso.com`" in text
    assert "Invoke-CsManagementServerFailover -Confirm:$false" in text and "BLOCK" not in text
    assert set(card_buttons(card)) == {"approval-approve", "approval-deny"}
    seen = len(fake.calls("response_url"))
    click(bot, fake, card, "approval-approve", BOTH)  # the requester
    click(bot, fake, card, "approval-approve", OPERATOR)  # not an approver
    wait_until(lambda: len(answers_to(fake, seen)) == 2, 10, "no refusals")
    refusals = " ".join(answers_to(fake, seen))
    assert "someone else has to approve" in refusals and "approver" in refusals
    assert edge_lab.probe_count("cms-failover") == 0
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "converged in")
    assert "master fe03.contoso.com" in thread_text(fake, card)
    wait_until(lambda: "executed" in blocks_text(card_now(fake, card)), 10, "card not updated")
    assert edge_lab.probe_count("cms-failover") == 1


def test_denied_or_expired_requests_cannot_start(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios()
    card = request_card(bot, fake)
    click(bot, fake, card, "approval-deny", APPROVER2)
    wait_until(lambda: "denied by" in blocks_text(card_now(fake, card)), 10, "card not denied")
    assert card_buttons(card_now(fake, card)) == {}
    seen = len(fake.calls("response_url"))
    click(bot, fake, card, "approval-approve", APPROVER)  # the old button, still on screen somewhere
    wait_until(lambda: answers_to(fake, seen), 10, "no answer")
    assert "already denied" in answers_to(fake, seen)[0]

    card = request_card(bot, fake)
    wait_until(lambda: "expired" in blocks_text(card_now(fake, card)), 20, "card did not expire")
    seen = len(fake.calls("response_url"))
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_until(lambda: answers_to(fake, seen), 10, "no answer")
    assert "already expired" in answers_to(fake, seen)[0]
    wait_idle(slack_redis)  # the refusal came after any job the click could have started
    assert edge_lab.probe_count("cms-failover") == 0


def test_racing_approvers_and_double_clicks_start_exactly_one_execution(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios()
    card = request_card(bot, fake)
    seen = len(fake.calls("response_url"))
    clicks = [threading.Thread(target=click, args=(bot, fake, card, "approval-approve", user))
              for user in (APPROVER, APPROVER, APPROVER2, APPROVER2, BOTH)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join()
    wait_in_thread(fake, card, "converged in")
    # the four clicks that lost the race were each told so: every click has been handled,
    # so once the queue is idle, every job a click could have started has ended
    wait_until(lambda: len(answers_to(fake, seen)) == 4, 20, "not every losing click was answered")
    wait_idle(slack_redis)
    assert edge_lab.probe_count("cms-failover") == 1
    notes = [m for m in fake.thread(card["ts"])[1:] if "approved: executing" in m.get("text", "")]
    assert len(notes) == 1


def test_a_job_enqueued_without_a_consumed_approval_refuses_to_run(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios()
    card = request_card(bot, fake)
    approval_id = card_buttons(card)["approval-approve"]["value"]
    conn = redis.Redis.from_url(slack_redis)
    approval = approvals.load(Hub(conn, KEYS), approval_id)
    req = Request(command="cms-execute", args={"approval": approval_id, "plan_hash": approval.hash}, user="U0ROGUE",
                  origin="console")
    submit(Hub(conn, KEYS), req, EXECUTE_JOB, kind=CHANGE, timeout=120)

    def failed() -> str:
        for _, f in conn.xrange(KEYS.events):
            if f[b"request"].decode() == req.id and f[b"kind"] == b"failed":
                return json.loads(f[b"body"])["reason"]
        return ""
    wait_until(failed, 30, "the rogue job did not refuse")
    assert "not executed: it has not been approved" in failed()
    assert approvals.load(Hub(conn, KEYS), approval_id).status == "pending"
    assert edge_lab.probe_count("cms-failover") == 0


def test_an_approval_from_a_channel_not_allowed_is_refused(bot, fake, edge_lab, slack_redis):
    card = request_card(bot, fake)
    approval_id = card_buttons(card)["approval-approve"]["value"]
    seen = len(fake.calls("response_url"))
    assert bot.click(fake, "approval-approve", approval_id, user=APPROVER, thread=card["ts"],
                     channel="C0RANDOM")[0] == 200
    wait_until(lambda: answers_to(fake, seen), 10, "no answer")
    assert "channel" in answers_to(fake, seen)[0]
    assert approvals.load(Hub(redis.Redis.from_url(slack_redis), KEYS), approval_id).status == "pending"
    assert jobs_in_flight(slack_redis) == 0 and edge_lab.probe_count("cms-failover") == 0


@pytest.fixture
def second_worker(tmp_path, slack_redis, edge_lab, slack_worker):
    """Production runs several workers: a request's preflight runs while another job executes."""
    w = WorkerProcess(tmp_path, slack_redis, edge_lab.topology, **slack_worker.settings)
    yield w
    stop_cleanly(w)


def test_a_second_failover_while_one_runs_or_during_the_cooldown_is_refused(bot, fake, edge_lab, second_worker):
    edge_lab.scenarios()
    card = request_card(bot, fake)
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "waiting for convergence")
    second = request_card(bot, fake, "pool01.contoso.com")
    assert "another CMS change is running" in blocks_text(second)
    assert card_buttons(second) == {} and "approval is disabled" in blocks_text(second)
    wait_in_thread(fake, card, "converged in")
    third = request_card(bot, fake, "pool01.contoso.com")
    assert "cooldown after the last CMS change" in blocks_text(third) and card_buttons(third) == {}


def test_disaster_mode_only_when_the_cms_pool_is_down(bot, fake, edge_lab):
    edge_lab.scenarios()
    card = request_card(bot, fake, "disaster")
    assert "disaster mode only when the CMS pool is down" in blocks_text(card) and card_buttons(card) == {}

    edge_lab.scenarios("cms-pool-down")
    card = request_card(bot, fake)
    assert "The CMS pool is down: use disaster mode" in blocks_text(card) and card_buttons(card) == {}
    card = request_card(bot, fake, "pool02.contoso.com disaster")
    text = blocks_text(card)
    assert "-BackupSqlServerFqdn sql02.contoso.com -BackupSqlInstanceName rtc -Force" in text
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "converged in")
    assert "master fe03.contoso.com" in thread_text(fake, card)


FAILURE_MODES = [
    ("moving-after-forced-failover", "cms.both-active", "failover.being-moved"),
    ("standby-not-backup", "cms.both-active", "failover.not-backup-mode"),
    ("failover-in-progress", "cms.unavailable", "failover.in-progress"),
]


@pytest.mark.parametrize("scenario, status_code, cmdlet_code", FAILURE_MODES)
def test_each_failure_mode_is_recognised_and_recovery_restores_health(bot, fake, edge_lab, scenario, status_code,
                                                                       cmdlet_code):
    edge_lab.scenarios(scenario)
    # in status
    bot.command("/cms-status")
    wait_until(lambda: any(p["edits"] and "PROBLEMS" in p["text"] for p in parents(fake)), 40, "no status verdict")
    assert status_code in json.dumps([m.get("blocks") for m in fake.messages()])
    # in the cmdlet's own output (what the failover job would read back)
    topology = topo.load(edge_lab.topology)
    settings = edge_lab.client_settings()
    target = "fe01.contoso.com" if scenario == "moving-after-forced-failover" else "fe03.contoso.com"
    cmdlet = run_change(topology, settings, target, "cms-failover", {"mode": "normal"}).answer("cms-failover", CmdletRun)
    assert cmdlet is not None and not cmdlet.succeeded
    assert cmdlet_code in {f.code for f in recognise(cmdlet.errors, cmdlet.warnings, target)}
    # the failover itself is refused before it starts, pointing to the recovery
    card = request_card(bot, fake, "pool01.contoso.com" if scenario == "moving-after-forced-failover" else "")
    assert "/cms-recover" in blocks_text(card) and card_buttons(card) == {}
    # the recovery runbook, approved, brings the lab back
    card = request_card(bot, fake, command="/cms-recover")
    assert "Invoke-CsManagementServerFailover -Restore" in blocks_text(card)
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "recovery finished", timeout=90)
    assert "the deployment is healthy" in thread_text(fake, card)
    fake.reset()
    bot.command("/cms-status")
    wait_until(lambda: any(p["edits"] and p["text"].startswith("OK: 8/8") for p in parents(fake)), 40, "not healthy")


def audit_of(conn: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in f.items()} for _, f in conn.xrange(KEYS.audit)]


def test_a_worker_killed_during_a_failover_never_runs_it_twice_and_its_unknown_outcome_holds_until_cleared(
        bot, fake, edge_lab, slack_worker, slack_redis):
    edge_lab.scenarios()
    conn = redis.Redis.from_url(slack_redis)
    card = request_card(bot, fake, user=BOTH)  # BOTH asks; it may approve others' changes, never clear its own
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "waiting for convergence")
    horses = children_of(slack_worker.proc.pid)
    assert horses, "no work-horse found"
    for pid in horses:
        os.kill(pid, signal.SIGKILL)
    wait_in_thread(fake, card, "outcome is unknown")
    assert "It will NOT be retried" in thread_text(fake, card)
    seen = len(fake.calls("response_url"))
    click(bot, fake, card, "approval-approve", APPROVER2)
    wait_until(lambda: answers_to(fake, seen), 10, "no answer")
    wait_idle(slack_redis)
    assert edge_lab.probe_count("cms-failover") == 1
    assert slack_worker.proc.poll() is None  # the worker itself lives on

    # the unknown outcome is sticky: no TTL, and the lock is free, yet nothing may start
    (marker,) = conn.hkeys(KEYS.outcome_unknown)
    assert conn.ttl(KEYS.outcome_unknown) == -1 and not conn.exists(KEYS.cms_lock)
    lost = next(m for m in fake.thread(card["ts"])[1:] if "outcome is unknown" in blocks_text(m))
    assert card_buttons(lost)["cms-clear-unknown"]["value"] == marker.decode()
    second = request_card(bot, fake, "pool01.contoso.com")
    assert "*BLOCK* unknown outcome: the normal failover of the CMS" in blocks_text(second)
    assert set(card_buttons(second)) == {"cms-clear-unknown"}, "no approval, only the way to clear it"
    value = json.dumps({"a": "start-replica", "t": "fe03.contoso.com"})
    seen = len(fake.calls("response_url"))
    assert bot.click(fake, "remediate-start-replica", value, user=OPERATOR, thread=card["ts"])[0] == 200
    wait_until(lambda: answers_to(fake, seen), 10, "no answer to the remediation")
    assert "Not now: the normal failover of the CMS" in answers_to(fake, seen)[0]
    assert "nobody has cleared it yet" in answers_to(fake, seen)[0]
    status, body = bot.command("/cms-replicate", "pool02.contoso.com")
    assert status == 200 and "Not now: the normal failover of the CMS" in body

    # cleared only by an approver, and never by the one who asked for the lost change
    for user, answer in ((OPERATOR, "approver"), (BOTH, "another approver has to confirm")):
        seen = len(fake.calls("response_url"))
        click(bot, fake, second, "cms-clear-unknown", user)
        wait_until(lambda n=seen: answers_to(fake, n), 10, "no answer to the clear button")
        assert answer in answers_to(fake, seen)[0]
        assert conn.hexists(KEYS.outcome_unknown, marker)
    seen = len(fake.calls("response_url"))
    click(bot, fake, lost, "cms-clear-unknown", APPROVER2)
    wait_until(lambda: answers_to(fake, seen), 10, "no answer to the clear button")
    assert f"<@{APPROVER2}> checked and cleared the unknown outcome" in answers_to(fake, seen)[0]
    assert not conn.exists(KEYS.outcome_unknown)
    clears = [(a["who"], a["result"]) for a in audit_of(conn) if a.get("what") == "clear-unknown"]
    assert clears == [(BOTH, "refused: own request"), (APPROVER2, "cleared")]
    third = request_card(bot, fake, "pool01.contoso.com")  # the cooldown holds on, the unknown outcome is gone
    assert "*BLOCK* unknown outcome" not in blocks_text(third)
    assert "cooldown after the last CMS change" in blocks_text(third)
    wait_idle(slack_redis)
    assert edge_lab.probe_count("cms-failover") == 1


def test_a_lock_taken_by_someone_else_stops_the_failover_before_its_cmdlet(bot, fake, edge_lab, slack_redis):
    """The lock carries a fencing token; the job verifies it is still ours right before the cmdlet."""
    edge_lab.scenarios("hang:fe02.contoso.com")  # the re-run preflight waits a host deadline for fe02
    conn = redis.Redis.from_url(slack_redis)
    card = request_card(bot, fake)
    click(bot, fake, card, "approval-approve", APPROVER)
    wait_in_thread(fake, card, "re-running preflight")
    token = wait_until(lambda: conn.get(KEYS.cms_lock), 10, "the change holds no lock")
    assert re.fullmatch(rb"\d+:r[0-9a-f]{16}", token), token  # the fencing counter, then the holder's request
    conn.set(KEYS.cms_lock, "999999:r-someone-else", ex=120)  # as a second change would, after a lost lock
    wait_in_thread(fake, card, "lock lost: check before anything else")
    wait_idle(slack_redis)
    assert "Not executed" in thread_text(fake, card) and "r-someone-else" in thread_text(fake, card)
    assert edge_lab.probe_count("cms-failover") == 0
    assert conn.get(KEYS.cms_lock) == b"999999:r-someone-else", "it must not free a lock that is not its own"
    results = [a["result"] for a in audit_of(conn) if a.get("what") in ("lock", "execute")]
    assert "lost: lock lost: check before anything else" in results
    assert results[-1] == "stopped: lock lost: check before anything else"
    assert not conn.exists(KEYS.outcome_unknown), "nothing had started: nothing to check"


def test_without_redis_persistence_preflight_blocks_unless_the_risk_is_accepted(bot, fake, edge_lab, tmp_path,
                                                                                 db_url):
    edge_lab.scenarios()
    card = request_card(bot, fake)  # the suite's workers accept the risk (tests/harness.py SLACK_WORKER)
    assert ("*WARN* Redis persistence: Redis runs without AOF (INFO persistence: aof_enabled:0)"
            in blocks_text(card))
    assert "Accepted by CMSBOT_ALLOW_VOLATILE_REDIS" in blocks_text(card) and "approval-approve" in card_buttons(card)

    strict = {k: v for k, v in SLACK_WORKER.items() if k != "allow_volatile_redis"}
    worker = WorkerProcess(tmp_path, db_url, edge_lab.topology, **strict)
    other = BotProcess(tmp_path, db_url, edge_lab.topology, fake)
    try:
        card = request_card(other, fake)
        text = blocks_text(card)
        assert "*BLOCK* Redis persistence: Redis runs without AOF" in text
        assert "Turn on AOF (`appendonly yes`" in text and "CMSBOT_ALLOW_VOLATILE_REDIS=1" in text
        assert card_buttons(card) == {}
    finally:
        stop_cleanly(other, worker)




def test_redis_down_during_convergence_the_failover_ends_with_its_real_outcome(durable_redis, fake, edge_lab,
                                                                                    tmp_path):
    """Redis with AOF, restarted while the failover converges: the job holds its events and writes
    them once Redis is back; the watch reads the servers throughout; one cmdlet, the real outcome."""
    edge_lab.scenarios()
    fake.reset()
    url = durable_redis.url
    worker = WorkerProcess(tmp_path, url, edge_lab.topology, **SLACK_WORKER)
    other = BotProcess(tmp_path, url, edge_lab.topology, fake)
    try:
        card = request_card(other, fake)
        assert "*GO* Redis persistence: AOF on" in blocks_text(card)
        click(other, fake, card, "approval-approve", APPROVER)
        wait_in_thread(fake, card, "waiting for convergence")
        assert not durable_redis.stop()
        time.sleep(15)  # the outage itself (longer than the client's own retries), not a wait for anything
        durable_redis.start()
        wait_in_thread(fake, card, "converged in", timeout=120)
        wait_settled(url, timeout=60)
        text = thread_text(fake, card)
        assert "outcome is unknown" not in text and "lock lost" not in text and "master fe03.contoso.com" in text
        log = worker.log.read_text()
        assert "holding the job's writes" in log and "writing what the job held" in log, "the outage missed the job"
        assert edge_lab.probe_count("cms-failover") == 1
        conn = redis.Redis.from_url(url)
        assert not conn.exists(KEYS.outcome_unknown) and not conn.exists(KEYS.cms_lock)
        assert conn.exists(KEYS.cms_cooldown)
        assert [a["result"] for a in audit_of(conn) if a.get("what") == "convergence"] == ["converged"]
        wait_until(lambda: "executed" in blocks_text(card_now(fake, card)), 10, "card not updated")
    finally:
        stop_cleanly(other, worker)


def test_a_change_queued_in_rq_blocks_preflight_and_remediations_like_a_held_lock(db_url):
    """Read from RQ's registries, not from the lock: a change approved but not started yet counts."""
    hub = Hub(redis.Redis.from_url(db_url), KEYS)  # no worker serves this database: jobs stay queued
    assert cms_lock.cms_change_blocking(hub) is None and cms_lock.changes_in_flight(hub) == []
    fix = Request(command="remediate", args={"action": "start-replica", "target": "fe03.contoso.com"}, user=OPERATOR)
    submit(hub, fix, REMEDIATE_JOB, kind=CHANGE, timeout=120)
    remediation = (f"Start-CsWindowsService -Name REPLICA on fe03.contoso.com, then force replication and re-check "
                   f"(request {fix.id}, queued)")
    assert cms_lock.changes_in_flight(hub) == [remediation]
    assert cms_lock.cms_change_blocking(hub) is None  # remediations do not hold back each other
    change = Request(command="cms-execute", args={"approval": "a1", "kind": "failover"}, user=APPROVER)
    submit(hub, change, EXECUTE_JOB, kind=CHANGE, timeout=120)
    queued = f"the approved failover (request {change.id}, queued)"
    assert cms_lock.changes_in_flight(hub) == [remediation, queued]
    assert cms_lock.cms_change_blocking(hub) == f"a CMS change is queued or starting ({queued})"


def approval_of(conn: redis.Redis, request_id: str) -> approvals.Approval | None:
    """The approval a preflight stored for this request, once it has."""
    hub = Hub(conn, KEYS)
    for key in conn.scan_iter(KEYS.approval("*")):
        if key.count(b":") == 2 and conn.hget(key, "request") == request_id.encode():
            return approvals.load(hub, key.decode().rsplit(":", 1)[1])
    return None


def test_redis_restarted_without_persistence_during_convergence_leaves_the_lock_lost_marker_and_one_cmdlet(
        fake, edge_lab, tmp_path):
    """The risk accepted (CMSBOT_ALLOW_VOLATILE_REDIS): the restart forgets the lock. The job notices
    with its next heartbeat, and, its cmdlet having run, leaves an unknown outcome: the next failover's
    preflight BLOCKs on it instead of running a second cmdlet into a CMS that is still moving."""
    edge_lab.scenarios()
    fake.reset()
    server = RedisServer(tmp_path, durable=False)
    assert server.owned, "restarting Redis needs a redis-server binary (.ci/run installs it)"
    worker = WorkerProcess(tmp_path, server.url, edge_lab.topology, **SLACK_WORKER)
    other = BotProcess(tmp_path, server.url, edge_lab.topology, fake)
    try:
        card = request_card(other, fake)
        assert "*WARN* Redis persistence" in blocks_text(card)
        click(other, fake, card, "approval-approve", APPROVER)
        wait_in_thread(fake, card, "waiting for convergence")
        assert not server.stop()
        time.sleep(2)  # the outage itself, not a wait for anything
        server.start()
        conn = redis.Redis.from_url(server.url)
        (marker,) = wait_until(lambda: conn.hvals(KEYS.outcome_unknown), 60, "no unknown outcome after the lost lock")
        assert "lost its CMS lock while it ran" in marker.decode() and "is gone from Redis" in marker.decode()
        audit = audit_of(conn)
        assert ("lock", "lost: lock lost: check before anything else") in [(a["what"], a["result"]) for a in audit]
        # the next failover, requested right away: its preflight BLOCKs on the unknown outcome
        assert other.command("/cms-failover", "pool01.contoso.com", trigger="after-the-restart")[0] == 200
        second = wait_until(lambda: approval_of(conn, id_for_delivery("T0001", "after-the-restart")), 60,
                            "the second preflight stored no approval")
        assert second.status is approvals.ApprovalStatus.blocked
        assert [c["verdict"] for c in second.checks if c["name"] == "unknown outcome"] == ["BLOCK"]
        wait_until(lambda: not conn.exists(KEYS.cms_lock), 60, "the first change did not end")
        assert edge_lab.probe_count("cms-failover") == 1
    finally:
        stop_cleanly(other, worker)
        assert not server.stop(), "redis-server had to be killed"
