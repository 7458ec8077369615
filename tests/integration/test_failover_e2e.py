"""Team-approved CMS failover and recovery, end to end: the real bot over signed
HTTP, the Slack fake, a real worker on real Redis, pywinrm against the lab's
failover state machine."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import redis

from cms import topology as topo
from cms.models import CmdletRun
from cms.preflight import recognise
from cms.settings import Settings
from hub import approvals
from hub.contract import CHANGE, Request, submit
from hub.jobs import EXECUTE_JOB
from hub.keys import KEYS, Hub
from tests.harness import (
    LAB_PASSWORD,
    LAB_USER,
    WorkerProcess,
    children_of,
    jobs_in_flight,
    stop_cleanly,
    wait_idle,
    wait_until,
)
from tests.slack_support import APPROVER, APPROVER2, BOTH, OPERATOR, blocks_text, parents
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
    settings = Settings(winrm_username=LAB_USER, winrm_password=LAB_PASSWORD, winrm_transport="basic")
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


def test_a_worker_killed_during_a_failover_never_runs_it_twice_and_says_the_outcome_is_unknown(
        bot, fake, edge_lab, slack_worker, slack_redis):
    edge_lab.scenarios()
    card = request_card(bot, fake)
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
