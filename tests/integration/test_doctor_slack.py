"""/cms-doctor in Slack end to end: the real `cmsbot bot` over its HTTP endpoint with signed requests, its
WebClient against the Slack fake, a real worker on real Redis running the doctor over WS-Management against
the lab, in which one server's WinRM port is closed and another rejects the credentials. What is asserted is
what a Slack user sees: the ack, the parent message and its verdict, the thread; and the refusals (not an
operator, an unknown pool or server, over the fair-use limit), which start nothing."""

from __future__ import annotations

import time

import redis

from hub.keys import KEYS
from tests.harness import jobs_in_flight, wait_idle, wait_until
from tests.slack_support import CHANNEL, OPERATOR, VIEWER, ack_body, parents
from tests.unit.test_render import mrkdwn_texts

CLOSED, REJECTS = "fe03.contoso.com", "fe04.contoso.com"  # both in pool02.contoso.com
READY = ["fe01.contoso.com", "fe02.contoso.com", "edge01.contoso.com", "edge02.contoso.com", "dir01.contoso.com",
         "med01.contoso.com"]


def shown(message: dict) -> str:
    """The text a person reads in a message: its blocks' mrkdwn."""
    return "\n".join(mrkdwn_texts(message.get("blocks") or []))


def verdict_of(fake, command: str, timeout: float = 60) -> dict:
    """The parent message of `command`, once its verdict has replaced "checking"."""
    def done() -> dict | None:
        return next((p for p in parents(fake) if p["edits"] and f"`{command}" in shown(p)
                     and not p["text"].endswith("checking")), None)
    return wait_until(done, timeout, f"no verdict for {command}; messages: "
                                     f"{[(m['text'], m.get('thread_ts')) for m in fake.messages(CHANNEL)]}")


def test_doctor_names_the_servers_not_ready_in_the_thread_with_the_fix(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios(f"unreachable:{CLOSED}", f"fault-401:{REJECTS}")
    started = time.monotonic()
    status, body = bot.command("/cms-doctor", user=OPERATOR)
    ack_seconds = time.monotonic() - started
    assert status == 200
    assert ack_body(body)["text"].startswith("Running the doctor on the whole deployment (DNS, the WinRM port")

    parent = verdict_of(fake, "/cms-doctor")
    assert parent["text"] == "Doctor: 8 servers, 6 ready, 2 not ready"
    assert ":x: *Doctor: 8 servers, 6 ready, 2 not ready*" in shown(parent)
    assert f"`/cms-doctor` requested by <@{OPERATOR}>" in shown(parent)

    thread = fake.thread(parent["ts"])[1:]
    assert thread and all(m["thread_ts"] == parent["ts"] for m in thread)
    progress = [m for m in thread if m["text"] == "finished"]
    assert len(progress) == 1 and progress[0]["edits"] >= 1, "one progress message, edited in place"
    (result,) = [m for m in thread if "cmsbot doctor: is every server ready?" in str(m.get("blocks"))]
    text = shown(result)
    assert "*Not ready* (2): the first failing check of each server, and its fix" in text
    lines = text.splitlines()
    closed = lines.index(next(x for x in lines if f"`{CLOSED}`" in x))
    assert lines[closed].startswith(f":x: `{CLOSED}` (frontend, pool02.contoso.com) · *winrm-port*: TCP 127.0.0.1:")
    assert "closes without an HTTP answer" in lines[closed]
    assert lines[closed + 1].strip().startswith(f"*Fix:* on {CLOSED}: `winrm quickconfig`")
    rejects = lines.index(next(x for x in lines if f"`{REJECTS}`" in x))
    assert lines[rejects].startswith(f":x: `{REJECTS}` (frontend, pool02.contoso.com) · *auth*: ")
    assert "credentials were rejected" in lines[rejects]
    assert "CMSBOT_WINRM_USERNAME and CMSBOT_WINRM_PASSWORD" in lines[rejects + 1]
    # the ready servers are summarised by name, not listed one line each
    ready = next(x for x in lines if x.startswith(":white_check_mark: *Ready* (6): "))
    assert all(f"`{s}`" in ready for s in READY) and CLOSED not in ready and REJECTS not in ready
    assert sum(x.startswith(":x: ") for x in lines) == 2
    assert "run `/cms-doctor` again" in text
    assert fake.uploads(parent["ts"]) == []  # nothing was cut: no file
    # the doctor reached the servers: the lab ran its probe on every server that opened a shell
    assert edge_lab.probe_count("doctor") == len(READY)
    print(f"ack took {ack_seconds * 1000:.0f} ms")


def test_doctor_of_one_pool_and_the_fair_use_limit(start_bot, fake, edge_lab, slack_redis):
    bot = start_bot(limit_user="1")
    edge_lab.scenarios(f"unreachable:{CLOSED}")
    status, body = bot.command("/cms-doctor", "POOL02.contoso.com.")
    assert status == 200 and "Running the doctor on pool02.contoso.com" in ack_body(body)["text"]
    # the same person again at once: over their limit (1 a minute here), refused, nothing started
    status, body = bot.command("/cms-doctor", "pool01.contoso.com")
    assert "Not started: you have started 1 checks and actions on the servers" in ack_body(body)["text"]
    parent = verdict_of(fake, "/cms-doctor pool02.contoso.com")
    assert parent["text"] == "Doctor (pool02.contoso.com): 2 servers, 1 ready, 1 not ready"
    (result,) = [m for m in fake.thread(parent["ts"])[1:] if "cmsbot doctor" in str(m.get("blocks"))]
    text = shown(result)
    assert f":x: `{CLOSED}` (frontend, pool02.contoso.com) · *winrm-port*" in text
    assert ":white_check_mark: *Ready* (1): `fe04.contoso.com`" in text
    wait_idle(slack_redis)
    assert len(parents(fake)) == 1  # the refused one posted nothing
    assert edge_lab.probe_count("doctor") == 1  # only pool02's server that answers was asked


def test_doctor_is_refused_to_non_operators_and_for_unknown_names_with_the_help(bot, fake, edge_lab, slack_redis):
    status, body = bot.command("/cms-doctor", user=VIEWER)
    assert status == 200
    refused = ack_body(body)
    assert refused["text"] == ("Sorry, to run the doctor you need to be a cms-chatops operator. Ask your "
                               "cms-chatops admin if you should be.")
    assert refused.get("response_type") in (None, "ephemeral")

    status, body = bot.command("/cms-doctor", "pool99.contoso.com", user=OPERATOR)
    unknown = ack_body(body)
    assert unknown.get("response_type") in (None, "ephemeral")
    assert unknown["text"].startswith("`pool99.contoso.com` is not a pool or server of this deployment. Pools: ")
    assert "pool01.contoso.com" in unknown["text"] and "fe03.contoso.com" in unknown["text"]
    assert "Usage: `/cms-doctor [pool|server]`, e.g. `/cms-doctor pool02.contoso.com`" in unknown["text"]

    status, body = bot.command("/cms-doctor", "fe01 fe02", user=OPERATOR)
    assert ack_body(body)["text"] == "Too many words. Usage: `/cms-doctor [pool|server]`"

    # nothing was enqueued, posted, counted or sent to a server
    assert jobs_in_flight(slack_redis) == 0
    assert fake.calls("chat.postMessage") == []
    assert edge_lab.probe_count("doctor") == 0
    conn = redis.Redis.from_url(slack_redis)
    assert not conn.exists(KEYS.limit_user(OPERATOR)) and not conn.exists(KEYS.limit_user(VIEWER))

    help_text = str(ack_body(bot.command("/cms-help", user=VIEWER)[1]).get("blocks"))
    assert "/cms-doctor [pool|server]" in help_text and "Example: `/cms-doctor pool02.contoso.com`" in help_text
