"""The App Home and /cms-history end to end: the real `cmsbot bot` over signed HTTP (the Home opened with
Slack's own `app_home_opened` delivery, published with views.publish to the Slack fake), a real worker on
real Redis checking the lab over WinRM, the watch opening a real incident, a real failover preflight
leaving an approval card; nothing of ours stubbed."""

from __future__ import annotations

import json

import pytest
import redis
from rq.job import JobStatus
from slack_sdk import WebClient

from bot.delivery.home import HomePublisher, Refresher
from cms import topology as topo
from cms.settings import Settings
from hub import home
from hub.keys import KEYS, Hub
from hub.schedule import enqueue_watch
from lab.slack_fake import app_home_opened
from tests.harness import SLACK_WORKER, jobs_in_flight, scaled, stop_cleanly, wait_settled, wait_until
from tests.slack_support import (
    APPROVER,
    CHANNEL,
    OPERATOR,
    TOKEN,
    VIEWER,
    BotProcess,
    ack_body,
    blocks_text,
    parents,
    wait_for_verdict,
)

ALERTS = "C0ALERTS"
POOL1, POOL2 = "pool01.contoso.com", "pool02.contoso.com"
FE03, FE04 = "fe03.contoso.com", "fe04.contoso.com"
CRON = "*/5 * * * *"


@pytest.fixture
def home_worker(workers, edge_lab):
    """A worker whose approval cards stay open through the test, whose watch posts incidents, and whose
    per-server deadline keeps a hung check running long enough to be seen running."""
    edge_lab.scenarios()
    w = workers.take(edge_lab.topology, **{**SLACK_WORKER, "approval_ttl": "600", "host_deadline": str(scaled(10))},
                     alert_channel=ALERTS)
    yield w
    stop_cleanly(w)


@pytest.fixture
def home_bot(tmp_path, home_worker, edge_lab, fake):
    fake.reset()
    b = BotProcess(tmp_path, home_worker.redis_url, edge_lab.topology, fake,
                   watch=json.dumps([{"scope": "*", "cron": CRON}]))
    yield b
    home_worker.terminate()
    stop_cleanly(b)


def link(fake, channel: str, ts: str) -> str:
    """Slack's link to a message, from the workspace URL auth.test gives (the fake's root)."""
    return f"{fake.root}/archives/{channel}/p{ts.replace('.', '')}"


def group(view: dict, title: str) -> list[str]:
    """The texts under one header of a Home view, down to the next divider."""
    out, inside = [], False
    for b in view["blocks"]:
        if b["type"] == "header":
            inside = b["text"]["text"] == title
        elif b["type"] == "divider":
            inside = False
        elif inside:
            out.append(b["text"]["text"] if b["type"] == "section" else b["elements"][0]["text"])
    return out


def pool_line(view: dict, pool: str) -> str:
    (line,) = [t for t in group(view, "Last verdict per pool") if f"*{pool}*" in t]
    return line


def test_the_home_shows_verdicts_incidents_running_checks_cards_and_the_schedule_and_follows_a_check(
        home_bot, fake, edge_lab, home_worker):
    url = home_worker.redis_url
    hub = Hub(redis.Redis.from_url(url), KEYS)

    # an approval card waiting: the failover's read-only preflight on the healthy lab
    assert home_bot.command("/cms-failover", user=OPERATOR)[0] == 200
    card = wait_until(lambda: next((m for m in parents(fake) if "Preflight" in blocks_text(m)), None), 60, "no card")
    # an open incident: the watch's scheduled check finds fe03 behind (and gives every pool a verdict)
    edge_lab.scenarios(f"replica-behind:{FE03}")
    run = enqueue_watch(hub, "*", timeout=int(scaled(120)))
    wait_until(lambda: run.get_status(refresh=True) == JobStatus.FINISHED, 60, "the watch run did not end")
    wait_settled(url)
    (incident,) = [m for m in fake.messages(ALERTS) if not m.get("thread_ts")]
    # a finished check of pool01, after it: pool01's verdict is this one
    assert home_bot.command("/cms-status", POOL1, user=OPERATOR)[0] == 200
    checked = wait_until(lambda: next((m for m in parents(fake) if m["text"].startswith("OK: 2/2")), None), 60,
                         "no verdict for pool01")
    wait_settled(url)
    # a check running now: fe04 does not answer until its deadline
    edge_lab.scenarios(f"replica-behind:{FE03}", f"hang:{FE04}")
    assert home_bot.command("/cms-status", user=OPERATOR)[0] == 200
    wait_until(lambda: hub.redis.zcard(KEYS.running) == 1, 30, "the check is not running")
    running = wait_until(lambda: next((m for m in parents(fake) if m["text"].endswith("checking")), None), 30,
                         "the running check has no thread yet")

    # the approver opens the bot's Home
    status, _ = home_bot.event(app_home_opened(APPROVER))
    assert status == 200
    view = wait_until(lambda: fake.home(APPROVER), 30, "no Home published")
    assert view["type"] == "home" and len(view["blocks"]) <= 100

    pool01 = pool_line(view, POOL1)
    assert pool01.startswith(f":large_green_circle: *{POOL1}*: 2/2 replicas up to date\nchecked ")
    assert f"by <@{OPERATOR}>" in pool01 and f"<{link(fake, CHANNEL, checked['ts'])}|thread>" in pool01
    pool02 = pool_line(view, POOL2)
    assert pool02.startswith(f":red_circle: *{POOL2}*: ") and "error" in pool02 and "by the watch" in pool02
    (open_incident,) = group(view, "Open incidents")
    assert f"*{FE03}*" in open_incident and f"<{link(fake, ALERTS, incident['ts'])}|thread>" in open_incident
    (check,) = group(view, "Running now")
    assert check.startswith(":arrows_counterclockwise: *status check* of the whole deployment\nrunning · asked by "
                            f"<@{OPERATOR}>") and f"<{link(fake, CHANNEL, running['ts'])}|thread>" in check
    (waiting,) = group(view, "Approvals waiting")
    assert f"*CMS failover* from `{POOL1}` to `{POOL2}` requested by <@{OPERATOR}>" in waiting
    assert "0 of 1 approvals" in waiting and "you can approve or deny it on its card" in waiting
    assert f"<{link(fake, CHANNEL, card['ts'])}|open the card>" in waiting
    (schedule,) = group(view, "Next scheduled run")
    assert schedule.startswith(":calendar: the whole deployment: next ") and f"cron `{CRON}`" in schedule
    assert "no `cmsbot watch` is running" in schedule  # none runs in this test: the cron's own word

    # the check ends: the reporter publishes the Home again, with its verdicts and nothing running
    published = len(fake.homes(APPROVER))
    wait_until(lambda: len(fake.homes(APPROVER)) > published and group(fake.home(APPROVER), "Running now") == [
        "Nothing is running: no check or change is in flight or queued."], 60, "the Home was not refreshed")
    after = fake.home(APPROVER)
    assert "1 server not checked" in pool_line(after, POOL2) and f"by <@{OPERATOR}>" in pool_line(after, POOL2)
    assert pool_line(after, POOL1) != pool01  # the newer check of the whole deployment, with its own thread
    assert f"<{link(fake, CHANNEL, running['ts'])}|thread>" in pool_line(after, POOL1)
    wait_settled(url)
    assert [c.error for c in fake.calls("views.publish")] == [None] * len(fake.calls("views.publish"))
    assert TOKEN not in json.dumps(fake.homes(APPROVER)) and TOKEN not in home_bot.text()

    # the bot answers in its channel only (CMSBOT_SLACK_CHANNELS): to someone who is neither an operator nor an
    # approver, the Home shows none of the deployment's state
    assert home_bot.event(app_home_opened(VIEWER))[0] == 200
    closed = json.dumps(wait_until(lambda: fake.home(VIEWER), 30, "no Home published for a viewer"))
    assert "operators and approvers only" in closed
    assert POOL1 not in closed and FE03 not in closed and "failover" not in closed.lower()


def test_a_burst_of_changes_refreshes_each_recent_viewer_once(fake, db_url, edge_lab):
    """The reporter's refresher, on its own: twenty changes at once are one views.publish per recent viewer."""
    fake.reset()
    hub = Hub(redis.Redis.from_url(db_url), KEYS)
    settings = Settings(redis_url=db_url, topology=edge_lab.topology)
    client = WebClient(token=TOKEN, base_url=fake.base_url)
    refresher = Refresher(HomePublisher(hub, settings, lambda: topo.load(edge_lab.topology), client),
                          debounce=scaled(0.5)).start()
    try:
        for user in ("U0ONE", "U0TWO"):
            home.note_viewer(hub, user)
        for _ in range(20):
            refresher.touch()
        wait_until(lambda: len(fake.homes("U0ONE")) == 1 and len(fake.homes("U0TWO")) == 1, 10, "no refresh")
        refresher.touch()  # a later change: the next publish, so the burst's one is all there was
        wait_until(lambda: len(fake.homes("U0ONE")) == 2, 10, "no second refresh")
        assert len(fake.calls("views.publish")) == 4
        assert group(fake.home("U0ONE"), "Last verdict per pool")[0].startswith(":white_circle: *pool01.contoso.com*: "
                                                                                 "not checked yet")
    finally:
        refresher.stop()


def test_history_lists_the_check_that_just_ran_by_scope_and_refuses_an_unknown_one(bot, fake, slack_redis):
    assert bot.command("/cms-status", POOL1)[0] == 200
    parent = wait_for_verdict(fake)
    thread = f"<{link(fake, CHANNEL, parent['ts'])}|thread>"

    status, body = bot.command("/cms-history", POOL1)
    assert status == 200
    doc = ack_body(body)
    assert doc.get("response_type") in (None, "ephemeral")  # to the person who asked, not the channel
    shown = blocks_text(doc)
    assert f"*History of `{POOL1}`*" in shown
    assert f"*check* of `{POOL1}` by <@{OPERATOR}>: *ok*" in shown and thread in shown
    assert f"{POOL1}: 2/2 replicas up to date" in shown

    assert f"*check* of `{POOL1}`" in blocks_text(ack_body(bot.command("/cms-history", "fe01")[1]))  # its server
    assert f"*check* of `{POOL1}`" in blocks_text(ack_body(bot.command("/cms-history")[1]))  # the whole deployment
    other = ack_body(bot.command("/cms-history", FE03)[1])  # a server of another pool: not this check
    assert "No check, change or incident recorded for `fe03.contoso.com` yet" in blocks_text(other)

    posts = len(fake.calls("chat.postMessage"))
    status, body = bot.command("/cms-history", "pool99.contoso.com")
    text = ack_body(body)["text"]
    assert status == 200 and "`pool99.contoso.com` is not a pool or server of this deployment" in text
    assert f"Pools: {POOL1}, {POOL2}" in text and "Usage: `/cms-history [pool|server]`" in text
    assert jobs_in_flight(slack_redis) == 0 and len(fake.calls("chat.postMessage")) == posts  # nothing ran
