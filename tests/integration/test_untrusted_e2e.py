"""The front door end to end, with the real `cmsbot bot` over signed HTTP, the Slack fake, a real
worker on real Redis and pywinrm against the lab: every user gets an answer (a private channel the
bot is not in included), server text never reaches Slack unescaped, answers and reports are
bounded, approvals post only into their own request's thread, and plain HTTP to a server is
refused unless the topology allows it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import redis

from cms import topology as topo
from cms.settings import Settings
from hub.keys import hub_for
from lab.slack_fake import SlackFake
from tests.harness import HOST_DEADLINE, SLACK_WORKER, LabProcess, scaled, stop_cleanly, wait_settled, wait_until
from tests.slack_support import (
    APPROVER,
    CHANNEL,
    OPERATOR,
    BotProcess,
    ack_body,
    blocks_text,
    buttons,
    parents,
    wait_for_verdict,
)

PRIVATE, PUBLIC, OTHER = "C0PRIVATE", "C0PUBLIC", "C0OTHER"
HOSTILE_PARTS = ("<!channel>", "<https://evil", "<!here>", "<event>", "<@U0ADMIN>")


def answers(fake: SlackFake, channel: str) -> list[dict]:
    """What reached the user through response_url, for commands run in `channel`."""
    return [e for e in fake.ephemeral() if e.get("via") == "response_url" and e["channel"] == channel]


def test_a_private_channel_without_the_bot_gets_an_answer_with_the_invite_hint(tmp_path, slack_redis, edge_lab,
                                                                                 slack_worker, fake):
    fake.reset()
    fake.channel(PRIVATE, private=True, member=False)
    fake.channel(PUBLIC, member=False)  # and the app has no chat:write.public
    edge_lab.scenarios()
    bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake, slack_channels=f"{CHANNEL},{PRIVATE},{PUBLIC}")
    try:
        status, body = bot.command("/cms-status", channel=PRIVATE)
        assert status == 200
        assert "Checking the whole deployment now" in ack_body(body)["text"]  # the ack says what is happening
        first = wait_until(lambda: answers(fake, PRIVATE), 20, "no answer through response_url")[0]
        assert first["user"] == OPERATOR and first["response_type"] == "ephemeral"
        assert "`/invite @cmsbot`" in first["text"] and "channel_not_found" in first["text"]
        # the job ran on: its verdict comes the same way, once
        done = wait_until(lambda: [a for a in answers(fake, PRIVATE) if "finished" in a["text"]], 40, "no verdict")
        assert "OK: 8/8 replicas up to date" in done[0]["text"]
        wait_settled(slack_redis)
        assert fake.messages(PRIVATE) == []  # Slack refused every post there...
        refused = [c for c in fake.calls() if c.params.get("channel") == PRIVATE]
        assert refused and all(c.error == "channel_not_found" for c in refused)
        assert len(answers(fake, PRIVATE)) == 2  # ...and response_url was used twice of its 5 times

        bot.command("/cms-status", "pool02.contoso.com", channel=PUBLIC)
        first = wait_until(lambda: answers(fake, PUBLIC), 20, "no answer in the public channel")[0]
        assert "not_in_channel" in first["text"] and "`/invite @cmsbot`" in first["text"]
    finally:
        slack_worker.terminate()
        stop_cleanly(bot)


def every_text(fake: SlackFake, acks: list[str]) -> str:
    recorded = [c.params for c in fake.calls()] + [fake.messages(), fake.ephemeral()]
    files = [f["content"].decode("utf-8", "replace") for f in fake.uploads() if f["content"]]
    return json.dumps(recorded) + "".join(files) + "".join(acks)


def test_hostile_server_and_user_text_never_reaches_slack_unescaped(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios("hostile-names")
    acks = [bot.command("/cms-status")[1], bot.command("/cms-status", "<!channel>")[1],
            bot.command("/cms-help")[1], bot.command("/cms-nosuch", "<@U0ADMIN>")[1],
            bot.command("/cms-failover", "<!here> <https://evil.example|x>")[1]]
    parent = wait_for_verdict(fake)
    wait_settled(slack_redis)
    result = next(m for m in fake.thread(parent["ts"])[1:] if "CMS status" in blocks_text(m))
    # left out of the report as an invalid name, and said so
    assert "ActiveMasterFqdn: invalid name left out" in blocks_text(result)
    assert "*CMS master* `(none)`" in blocks_text(result)
    assert "&lt;event&gt;" in acks[2] and "&lt;event&gt;" in acks[3]  # the help and the usage, escaped
    text = every_text(fake, acks)
    assert fake.calls("chat.postMessage") and fake.calls("chat.update")
    for part in HOSTILE_PARTS:
        assert part not in text, f"{part} reached Slack unescaped"


def test_oversize_answers_are_cut_and_the_report_stays_within_a_few_messages(tmp_path, workers, edge_lab, fake):
    edge_lab.scenarios("oversize-answer:dir01.contoso.com", "oversize-error:med01.contoso.com",
                       "oversize-error:edge02.contoso.com")
    # 2 MB: the 1 MB error message gets through the transport, to be cut when it is read
    worker = workers.take(edge_lab.topology, **SLACK_WORKER, winrm_max_answer_mb="2")
    fake.reset()
    bot = BotProcess(tmp_path, worker.redis_url, edge_lab.topology, fake)
    try:
        bot.command("/cms-status")
        parent = wait_for_verdict(fake, timeout=60)
        wait_settled(worker.redis_url)
        thread = [m for m in fake.thread(parent["ts"])[1:]]
        text = " ".join(blocks_text(m) for m in thread)
        assert "dir01.contoso.com`: probe failed [replica-health]: answer larger than 2 MB" in text
        assert "med01.contoso.com`: probe failed [replica-health]: replica-health: EEEE" in text
        assert "truncated" in text
        results = [m for m in thread if "CMS status" in blocks_text(m) or "(part " in m["text"]]
        assert len(results) <= 3
        assert sum(len(json.dumps(m["blocks"])) for m in thread) < 100_000
        # the worker ended the oversize command and went on: the other servers answered
        assert parent["text"].startswith("INCOMPLETE: 8/8 replicas up to date")
        assert "3 servers could not be checked" in parent["text"]
    finally:
        worker.terminate()
        stop_cleanly(bot, worker)


def test_approve_posts_into_the_requests_own_thread_whatever_the_click_says(tmp_path, slack_redis, edge_lab,
                                                                             slack_worker, fake):
    fake.reset()
    edge_lab.scenarios()
    bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake, slack_channels=f"{CHANNEL},{OTHER}")
    try:
        assert bot.command("/cms-failover")[0] == 200
        card = wait_until(lambda: [m for m in parents(fake) if "Preflight" in blocks_text(m)], 30, "no card")[0]
        approve = next(b for b in buttons(card) if b["action_id"] == "approval-approve")
        # a channel outside the allow-list is refused, whatever the card
        seen = len(fake.calls("response_url"))
        bot.click(fake, "approval-approve", approve["value"], user=APPROVER, thread=card["ts"], channel="C0RANDOM")
        wait_until(lambda: len(fake.calls("response_url")) > seen, 10, "no refusal")
        assert "channel allowed for cms-chatops" in fake.calls("response_url")[seen].params["text"]
        # an allowed channel and another message in the payload: the execution still reports under the card
        bot.click(fake, "approval-approve", approve["value"], user=APPROVER, thread="1700000000.999999",
                  channel=OTHER)
        wait_until(lambda: any("converged in" in blocks_text(m) for m in fake.thread(card["ts"])), 60,
                   "the failover did not report in the card's thread")
        assert fake.messages(OTHER) == []
        assert any("approved: executing" in m["text"] for m in fake.thread(card["ts"])[1:])
    finally:
        slack_worker.terminate()
        stop_cleanly(bot)


def test_without_a_channel_list_the_bot_starts_warns_and_help_says_how_to_restrict_it(tmp_path, slack_redis,
                                                                                        edge_lab, fake):
    fake.reset()
    bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake, slack_channels="")
    try:
        assert "CMSBOT_SLACK_CHANNELS is not set" in bot.text()
        assert "CMSBOT_SLACK_CHANNELS" in bot.command("/cms-help", channel="C0ANY")[1]
    finally:
        stop_cleanly(bot)


def _chat(worker, topology_path: Path) -> str:
    from bot.delivery.console import run_chat

    settings = Settings(redis_url=worker.redis_url, topology=topology_path, chat_timeout=scaled(60))
    out = io.StringIO()
    run_chat(hub_for(redis.Redis.from_url(worker.redis_url), settings), settings, topo.load(topology_path),
             "/cms-status", "U-TEST", out=out)
    return out.getvalue()


def test_plain_http_from_the_topology_is_refused_under_https_unless_it_allows_it(tmp_path, workers):
    lab = LabProcess(tmp_path, tls=False)  # plain HTTP endpoints, in a topology that says allow_http: true
    try:
        allowed = lab.topology
        assert topo.load(allowed).winrm.allow_http
        refused = tmp_path / "refused.yaml"
        refused.write_text(allowed.read_text().replace("allow_http: true", "allow_http: false"))
        for topology, check in ((refused, "refused"), (allowed, "noted")):
            worker = workers.take(topology, host_deadline=str(HOST_DEADLINE), winrm_scheme="https")
            try:
                thread = _chat(worker, topology)
            finally:
                stop_cleanly(worker)
            if check == "refused":
                # every server that answers WinRM (the Edges do not, in this lab), none of them asked
                assert thread.count("refused to use plain HTTP") == 6, thread
                assert "6 servers could not be checked" in thread and "set winrm.allow_http: true" in thread
            else:
                assert "WinRM over plain HTTP to dir01.contoso.com, edge01.contoso.com" not in thread  # Edges: no WinRM
                assert "WinRM over plain HTTP to dir01.contoso.com, fe01.contoso.com" in thread, thread
                assert "verdict: OK: 8/8 replicas up to date" in thread
    finally:
        stop_cleanly(lab)
