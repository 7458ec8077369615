"""Fair use: per-user and per-channel limits on requests that reach the servers, identical status
checks merged, and failover preflights on a queue of their own. The counting alone on real Redis,
then the real bot (two serving processes sharing the counts) with a real worker and the lab."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from rq.job import Job
from rq.serializers import JSONSerializer

from cms import topology as topo
from cms.settings import Settings
from hub.contract import PREFLIGHT, STATUS, Request, queue, queues, submit
from hub.fair_use import admit
from hub.jobs import PREFLIGHT_JOB, STATUS_JOB
from hub.keys import KEYS, Hub
from tests.harness import wait_settled, wait_until
from tests.slack_support import CHANNEL, OPERATOR, VIEWER, ack_body, blocks_text, parents

# -- the counting, on real Redis -------------------------------------------------------------------


def _hub(db_url: str) -> Hub:
    return Hub(redis.Redis.from_url(db_url), KEYS)


def test_a_user_over_the_limit_is_told_when_to_retry_and_the_refusal_costs_the_channel_nothing(db_url):
    hub, settings = _hub(db_url), Settings(limit_user=3, limit_channel=5, limit_window=60)
    outcomes = [admit(hub, settings, f"r{i}", user="U1", channel="C1").outcome for i in range(10)]
    assert outcomes == ["admitted"] * 3 + ["limited"] * 7
    refused = admit(hub, settings, "r-next", user="U1", channel="C1")
    assert refused.limit == "user" and refused.allowed == 3 and 55 < refused.retry_after <= 60
    # U1's seven refusals took nothing from the channel: two more people still fit, then the channel is full
    assert [admit(hub, settings, f"s{u}", user=u, channel="C1").outcome for u in ("U2", "U3")] == ["admitted"] * 2
    full = admit(hub, settings, "s4", user="U4", channel="C1")
    assert full.outcome == "limited" and full.limit == "channel" and full.allowed == 5
    # another channel and another user are counted apart
    assert admit(hub, settings, "t1", user="U4", channel="C2").outcome == "admitted"
    # the same delivery again (Slack retried it) is not counted twice
    assert admit(hub, settings, "t1", user="U4", channel="C2").outcome == "duplicate"
    assert hub.redis.zcard(KEYS.limit_user("U4")) == 1


def test_a_place_frees_up_when_the_oldest_request_leaves_the_window(db_url):
    hub, settings = _hub(db_url), Settings(limit_user=2, limit_channel=0, limit_window=1)
    assert [admit(hub, settings, f"r{i}", user="U1", channel="C1").outcome for i in range(3)] == [
        "admitted", "admitted", "limited"]
    started = time.monotonic()
    wait_until(lambda: admit(hub, settings, "r-later", user="U1", channel="C1").go, 5, "the window never slid")
    assert time.monotonic() - started <= 1.5


def test_an_identical_status_check_is_merged_while_its_job_is_queued_or_running(db_url):
    hub, settings = _hub(db_url), Settings(limit_user=10, limit_channel=10)
    first = Request(id="r-first", command="/cms-status", args={"target": "pool01.contoso.com"}, user="U1",
                    channel="C1", origin="slack")
    assert admit(hub, settings, first.id, user="U1", channel="C1", status_scope="pool01.contoso.com").go
    submit(hub, first, STATUS_JOB, kind=STATUS, timeout=60)  # no worker here: it stays queued
    hub.redis.hset(KEYS.slack_thread(first.id), "parent", "1700000000.000100")
    merged = admit(hub, settings, "r-second", user="U2", channel="C1", status_scope="pool01.contoso.com")
    assert (merged.outcome, merged.owner, merged.owner_user, merged.thread) == (
        "merged", "r-first", "U1", "1700000000.000100")
    # not merged: another scope, another channel
    assert admit(hub, settings, "r-3", user="U2", channel="C1", status_scope="all").go
    assert admit(hub, settings, "r-4", user="U2", channel="C2", status_scope="pool01.contoso.com").go
    # a merged request counts against nobody's limit
    assert hub.redis.zcard(KEYS.limit_user("U2")) == 2
    # once its job has ended, the same check starts again
    Job.fetch("r-first", connection=hub.redis, serializer=JSONSerializer).set_status("finished")
    assert admit(hub, settings, "r-5", user="U2", channel="C1", status_scope="pool01.contoso.com").go


def test_a_worker_takes_changes_then_preflights_then_status_checks(db_url):
    hub = _hub(db_url)
    # on-call pages (the watch) before status checks: seconds of HTTP that must not wait behind a flood of checks
    assert [q.name for q in queues(hub)] == ["cmsbot-change", "cmsbot-preflight", "cmsbot-oncall", "cmsbot-status"]
    assert queue(hub, PREFLIGHT).name == KEYS.queue(PREFLIGHT)


# -- the real bot ------------------------------------------------------------------------------------




def _targets(topology_path) -> list[str]:
    """Every scope a /cms-status can have here: each pool and each server."""
    t = topo.load(topology_path)
    return [p.fqdn for p in t.pools] + [s.fqdn for s in t.servers]


def _kind(body: str) -> str:
    text = ack_body(body)["text"]
    if "Not started" in text and "Try again in" in text:
        return "limited"
    if "already running in this channel" in text:
        return "merged"
    return "admitted"


def _card_ready(fake) -> bool:
    return any("approval-approve" in blocks_text(m) for m in parents(fake))


def test_200_status_checks_from_one_user_in_2_s_meet_the_limit_and_a_failover_preflight_starts_at_once(
        start_bot, fake, edge_lab, slack_redis):
    """The default limits (10 per user, 30 per channel, a minute); the checks cycle over every scope,
    so most are neither merged nor allowed: the limit answers. Two serving processes share the count."""
    bot = start_bot(http_processes="2")
    scopes = _targets(edge_lab.topology)
    assert len(scopes) > Settings().limit_user  # more distinct checks than the limit allows
    conn = redis.Redis.from_url(slack_redis)
    answers: list[tuple[int, str, float]] = []
    failover: dict[str, float] = {}

    def send(i: int) -> None:
        due = started + i * 2.0 / 200
        time.sleep(max(0.0, due - time.monotonic()))  # pacing the flood over 2 s, not a proof
        sent = time.monotonic()
        status, body = bot.command("/cms-status", scopes[i % len(scopes)], trigger=f"flood-{i}")
        answers.append((status, body, time.monotonic() - sent))
        if i == 15:  # in the same second, the flood still coming: the preflight
            failover["sent"] = time.monotonic()
            failover["status"] = bot.command("/cms-failover", "pool02.contoso.com", trigger="flood-failover")[0]

    started = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        list(pool.map(send, range(200)))
    elapsed = time.monotonic() - started
    kinds = [_kind(body) for _, body, _ in answers]
    counts = {k: kinds.count(k) for k in ("admitted", "merged", "limited")}
    print(f"200 /cms-status in {elapsed:.2f} s: {counts}; slowest ack {max(t for *_, t in answers) * 1000:.0f} ms")
    assert elapsed < 3.0 and all(status == 200 for status, _, _ in answers)
    assert max(t for *_, t in answers) < 3.0  # every one acked within Slack's 3 s
    assert counts["admitted"] == Settings().limit_user  # the two processes share one count
    assert counts["limited"] > 0 and counts["admitted"] + counts["merged"] + counts["limited"] == 200
    limited = next(ack_body(b)["text"] for _, b, _ in answers if _kind(b) == "limited")
    wait = int(re.search(r"Try again in (\d+) s", limited).group(1))
    assert "you have started 10 checks" in limited and 1 <= wait <= 60

    # the preflight was not queued behind the status checks: the worker took it next
    assert failover["status"] == 200
    wait_until(lambda: _card_ready(fake), 60, "no approval card")
    card_after = time.monotonic() - failover["sent"]
    jobs = [Job.fetch(k.decode().removeprefix("rq:job:"), connection=conn, serializer=JSONSerializer)
            for k in conn.scan_iter("rq:job:*") if conn.type(k) == b"hash"]
    (preflight,) = [j for j in jobs if j.func_name == PREFLIGHT_JOB]
    checks = [j for j in jobs if j.func_name == STATUS_JOB]
    assert len(checks) == counts["admitted"]
    jumped = [j.id for j in checks if j.started_at and preflight.enqueued_at < j.started_at < preflight.started_at]
    assert not jumped, f"status checks started while the preflight waited: {jumped}"
    still_queued_then = [j for j in checks if not j.started_at or j.started_at > preflight.started_at]
    print(f"card {card_after:.1f} s after the failover; {len(still_queued_then)} of {len(checks)} checks "
          "started after the preflight")
    assert still_queued_then, "the flood was over before the preflight started: nothing was shown"
    wait_settled(slack_redis, timeout=120)
    assert edge_lab.probe_count("cms-status") >= counts["admitted"]


def test_a_second_identical_check_is_pointed_to_the_running_thread(start_bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios("hang:fe03.contoso.com")  # the check takes a host deadline: it is still running
    bot = start_bot(slack_channels=f"{CHANNEL},C0OTHER")
    assert bot.command("/cms-status", user=OPERATOR)[0] == 200
    wait_until(lambda: len(parents(fake)) == 1, 30, "no parent")
    (parent,) = parents(fake)
    status, body = bot.command("/cms-status", user=VIEWER)
    text = ack_body(body)["text"]
    link = f"https://contoso.slack.com/archives/{CHANNEL}/p{parent['ts'].replace('.', '')}"
    assert status == 200 and "already running in this channel" in text and f"<@{OPERATOR}>" in text
    assert link in text and parent["ts"] in text
    # the same scope in another channel is a check of its own
    assert _kind(bot.command("/cms-status", channel="C0OTHER", user=VIEWER)[1]) == "admitted"
    wait_settled(slack_redis, timeout=60)
    assert len(parents(fake)) == 1  # in this channel: one thread
    assert edge_lab.probe_count("cms-status") == 2  # one check here, one in the other channel
    # finished: the same check starts again
    assert _kind(bot.command("/cms-status", user=VIEWER)[1]) == "admitted"


def test_replicate_and_remediations_count_against_the_same_limits(start_bot, fake, slack_redis):
    bot = start_bot(limit_user="1")
    assert _kind(bot.command("/cms-replicate", "pool02.contoso.com", user=OPERATOR)[1]) == "admitted"
    status, body = bot.command("/cms-replicate", "pool02.contoso.com", user=OPERATOR)
    assert "you have started 1 checks and actions" in ack_body(body)["text"]
    value = '{"a": "start-replica", "t": "edge02.contoso.com"}'
    assert bot.click(fake, "remediate-start-replica", value, user=OPERATOR, thread="1700000000.000001")[0] == 200
    wait_until(lambda: fake.calls("response_url"), 10, "no answer to the click")
    answer = fake.calls("response_url")[0].params
    assert "Try again in" in answer["text"] and answer["response_type"] == "ephemeral"
    # refused, so the remediation's one-at-a-time guard was released
    assert not redis.Redis.from_url(slack_redis).exists(KEYS.remediating("start-replica", "edge02.contoso.com"))
    wait_settled(slack_redis, timeout=60)
    audit = [{k.decode(): v.decode() for k, v in f.items()} for _, f in redis.Redis.from_url(slack_redis).xrange(
        KEYS.audit)]
    assert [a["what"] for a in audit if a.get("result") == "requested"] == ["force-replication"]
