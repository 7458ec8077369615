"""Delivery that never gives up on what matters: the reporter against real Redis (its sink a
function that refuses on demand, as Slack does when it is down), then the whole bot, worker, lab
and Slack fake under a FLUSHDB, a Slack outage and SIGTERM, in both serving modes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import redis

from bot.delivery.reporter import Hooks, Reporter
from cms.messages import Accepted, Failed, Progress
from hub.contract import Event, append_event, trim_events
from hub.keys import KEYS, Hub, Keys
from lab.processes import Managed, alive, cmsbot, descendants
from tests.harness import scaled, stop_cleanly, wait_settled, wait_until
from tests.slack_support import CHANNEL, OPERATOR, TOKEN, BotProcess, blocks_text, parents, wait_for_verdict

# -- the reporter alone, on real Redis ---------------------------------------------------------


def _result() -> Failed:
    return Failed(reason="the end of the request (a terminal event)")


class Sink:
    """Takes events, except those of `refused` requests (Slack answering 503 for them)."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.delivered: list[tuple[str, int, str]] = []
        self.attempts = 0

    def __call__(self, event: Event) -> bool:
        self.attempts += 1
        if event.request in self.refused:
            return False
        self.delivered.append((event.request, event.seq, event.kind))
        return True

    def of(self, request: str) -> list[tuple[int, str]]:
        return [(seq, kind) for r, seq, kind in self.delivered if r == request]


def _hub(db_url: str) -> Hub:
    return Hub(redis.Redis.from_url(db_url), Keys("delivery-test"))


def test_a_held_request_keeps_its_order_collapses_its_progress_and_never_stalls_the_others(db_url):
    hub, sink = _hub(db_url), Sink()
    late: list[tuple[str, int]] = []
    reporter = Reporter(hub, "slack", "c1", sink, start="0", backoff=0.2, late_after=0,
                        hooks=Hooks(late=lambda e, s: late.append((e.request, e.seq)) is None))
    stuck, other = "r-stuck", "r-other"
    sink.refused.add(stuck)
    append_event(hub, stuck, Accepted())
    for i in range(3):
        append_event(hub, stuck, Progress(text=f"{i} of 3 servers answered"))
    append_event(hub, other, Accepted())
    append_event(hub, stuck, _result())
    append_event(hub, other, Progress(text="1 of 1 servers answered"))
    append_event(hub, other, _result())

    def other_done() -> bool:
        reporter.poll(block_ms=50)
        return bool(sink.of(other)) and sink.of(other)[-1] == (3, "failed")
    wait_until(other_done, 20, "the other request waited behind the stuck one")
    # held for a moment behind the gate the stuck one closed, its progress was not worth delivering late
    assert sink.of(other) in ([(1, "accepted"), (2, "progress"), (3, "failed")], [(1, "accepted"), (3, "failed")])
    assert sink.of(stuck) == [] and reporter.held == 2  # accepted and the result; the progress collapsed
    tried = sink.attempts
    wait_until(lambda: reporter.poll(block_ms=50) is not None and sink.attempts > tried + 1, 20, "no retries")

    sink.refused.clear()  # Slack takes it again
    wait_until(lambda: reporter.poll(block_ms=50) is not None and reporter.held == 0, 20, "not delivered")
    assert sink.of(stuck) == [(1, "accepted"), (5, "failed")]
    assert [seq for request, seq in late if request == stuck] == [5]  # one note, with its last event
    assert reporter.counts["progress_collapsed"] >= 3
    assert hub.redis.xpending(hub.keys.events, "slack")["pending"] == 0
    # exactly once: a second reporter on the same group (a restart) redelivers nothing
    again = Sink()
    Reporter(hub, "slack", "c1", again, start="0").poll(block_ms=50)
    assert again.delivered == []


def test_an_event_is_given_up_only_when_its_patience_is_spent_and_that_is_counted(db_url):
    hub, sink = _hub(db_url), Sink()
    reporter = Reporter(hub, "slack", "c1", sink, start="0", backoff=0.1, patience=scaled(1))
    sink.refused.add("r1")
    append_event(hub, "r1", _result())
    started = time.monotonic()
    wait_until(lambda: reporter.poll(block_ms=50) is not None and reporter.counts["given_up"], 20, "never given up")
    assert time.monotonic() - started >= scaled(1)
    assert sink.attempts > 2 and reporter.counts["given_up"] == 1 and reporter.held == 0
    assert hub.redis.hget(hub.keys.delivery_counts, "given_up") == b"1"


def test_a_lost_group_is_created_again_and_what_follows_is_delivered(db_url):
    hub, sink = _hub(db_url), Sink()
    reporter = Reporter(hub, "slack", "c1", sink, start="$")
    append_event(hub, "r1", Accepted())
    wait_until(lambda: reporter.poll(block_ms=50) is not None and sink.delivered, 20, "not delivered")
    hub.redis.flushdb()  # Redis restarted without persistence, or FLUSHDB
    append_event(hub, "r1", _result())  # the job goes on: its seqs start again
    wait_until(lambda: reporter.poll(block_ms=50) is not None and sink.of("r1")[1:], 20, "nothing after the loss")
    assert sink.of("r1") == [(1, "accepted"), (1, "failed")]
    assert reporter.counts["group_recreated"] == 1


def test_trimming_keeps_what_a_group_has_not_acknowledged_and_a_trimmed_pending_entry_is_counted(db_url):
    hub = _hub(db_url)
    for i in range(400):
        append_event(hub, f"r{i}", Accepted())
    Reporter.ensure_group(hub, "slack", "0")
    conn, stream = hub.redis, hub.keys.events
    read = conn.xreadgroup("slack", "c1", {stream: ">"}, count=300)[0][1]
    conn.xack(stream, "slack", *[entry_id for entry_id, _ in read[:250]])  # 50 read and not acknowledged
    oldest_pending = read[250][0]
    trimmed = trim_events(hub, 0, mine="slack", abandoned_after=3600)
    assert trimmed.removed > 0 and trimmed.held_by == "slack"
    first = conn.xrange(stream, count=1)[0][0]
    assert first <= oldest_pending and conn.xrange(stream, oldest_pending, oldest_pending)
    assert conn.xlen(stream) >= 150
    # whoever trims past the group anyway: the reporter says so and counts it, and goes on
    conn.xtrim(stream, maxlen=0, approximate=False)
    sink = Sink()
    reporter = Reporter(hub, "slack", "c1", sink, start="0")
    wait_until(lambda: reporter.poll(block_ms=50) is not None and reporter.counts["trimmed_pending"] == 50, 20,
               "the trimmed pending entries were not counted")
    assert sink.delivered == [] and conn.xpending(stream, "slack")["pending"] == 0


# -- the whole bot ---------------------------------------------------------------------------------


def _results(fake, parent: dict) -> list[dict]:
    return [m for m in fake.thread(parent["ts"])[1:] if "CMS status" in blocks_text(m)]


def test_flushdb_during_a_check_the_result_still_reaches_its_thread_once(fake, edge_lab, slack_worker, slack_redis,
                                                                         tmp_path):
    edge_lab.scenarios("hang:fe03.contoso.com")  # the check takes a host deadline
    fake.reset()
    bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake)
    try:
        assert bot.command("/cms-status")[0] == 200
        wait_until(lambda: [m for m in fake.messages(CHANNEL) if m.get("thread_ts")], 30,
                   f"the check did not start: {fake.messages(CHANNEL)}")
        redis.Redis.from_url(slack_redis).flushdb()  # Redis loses everything while the check runs
        parent = wait_for_verdict(fake, timeout=60)
        assert "could not be checked" in parent["text"]  # fe03 timed out; the rest answered
        wait_settled(slack_redis)
        assert len(_results(fake, parent)) == 1 and len(parents(fake)) == 1
        assert all(m.get("thread_ts") == parent["ts"] for m in fake.messages(CHANNEL) if m["ts"] != parent["ts"])
        assert "recreating" in bot.text() or "creating it again" in bot.text()
    finally:
        slack_worker.terminate()
        stop_cleanly(bot)


def test_a_request_lost_with_redis_is_reported_in_its_thread(fake, edge_lab, db_url, tmp_path):
    """No worker listens: the job waits in the queue, and FLUSHDB loses it with everything else."""
    fake.reset()
    bot = BotProcess(tmp_path, db_url, edge_lab.topology, fake, heartbeat_stale="10")
    try:
        assert bot.command("/cms-status")[0] == 200
        wait_until(lambda: any("No worker is listening" in m["text"] for m in fake.messages(CHANNEL)), 30,
                   "the request was not accepted")
        redis.Redis.from_url(db_url).flushdb()
        parent = wait_for_verdict(fake, timeout=60)
        assert parent["text"].startswith("FAILED: Redis lost this request's events")
        (lost,) = [m for m in fake.thread(parent["ts"])[1:] if "Redis lost" in blocks_text(m)]
        assert "Run it again" in blocks_text(lost)
    finally:
        stop_cleanly(bot)


def test_a_slack_outage_during_a_check_delays_the_result_and_the_thread_says_so(fake, edge_lab, slack_worker,
                                                                               slack_redis, tmp_path):
    edge_lab.scenarios("hang:fe03.contoso.com")
    fake.reset()
    bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake, delivery_backoff="1",
                     delivery_late_note=str(scaled(3)))
    outage = scaled(10)  # ten minutes, in seconds
    try:
        assert bot.command("/cms-status")[0] == 200
        wait_until(lambda: len(parents(fake)) == 1, 30, "no parent")
        fake.outage(outage)
        down = time.monotonic()
        conn = redis.Redis.from_url(slack_redis)
        wait_until(lambda: any(f[b"kind"] == b"result" for _, f in conn.xrange(KEYS.events)), 60,
                   "the check did not finish")
        assert time.monotonic() - down < outage, "the result came after the outage: nothing was tested"
        parent = wait_for_verdict(fake, timeout=outage + 60)
        wait_settled(slack_redis)
        assert time.monotonic() - down >= outage
        assert len(_results(fake, parent)) == 1 and len(parents(fake)) == 1
        notes = [m for m in fake.thread(parent["ts"]) if "delivered late: Slack was unavailable" in (m["text"] or "")]
        assert len(notes) == 1
        assert sum(c.status == 503 for c in fake.calls()) >= 2
    finally:
        slack_worker.terminate()
        stop_cleanly(bot)


# -- SIGTERM -------------------------------------------------------------------------------------

EXIT_WITHIN = 5.0
# each mode, on every suite run; CMSBOT_TEST_SIGTERM_TIMES=20 runs the 20 in a row
TIMES = int(os.environ.get("CMSBOT_TEST_SIGTERM_TIMES") or 3)


def _exit_seconds(proc: Managed) -> float:
    """SIGTERM, then how long until it and every process it started have exited."""
    tree = descendants(proc.proc.pid)
    started = time.monotonic()
    proc.proc.terminate()
    wait_until(lambda: proc.proc.poll() is not None and not any(alive(p) for p in tree), 30, "did not exit")
    seconds = time.monotonic() - started
    print(f"exited {seconds:.2f} s after SIGTERM")
    return seconds


def test_sigterm_stops_the_http_bot_and_its_reporter_within_5_seconds(fake, edge_lab, slack_worker, slack_redis,
                                                                      tmp_path):
    """The last time, Slack is down: the reporter holds the check's events when it is stopped."""
    fake.reset()
    bot = None
    try:
        for i in range(TIMES):
            bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake)
            if i == TIMES - 1:  # this check takes a host deadline: its later events meet the outage
                edge_lab.scenarios("hang:fe03.contoso.com")
            assert bot.command("/cms-status")[0] == 200
            wait_until(lambda: len(parents(fake)) == i + 1, 30, "no parent")  # noqa: B023 - delivering now
            if i == TIMES - 1:
                fake.outage(scaled(8))
                wait_until(lambda: any(c.status == 503 for c in fake.calls()), 30, "Slack was not called")
            seconds = _exit_seconds(bot)
            assert seconds < scaled(EXIT_WITHIN), f"{seconds:.1f} s"
            assert bot.proc.returncode == 0
        # what the stopped reporters had not delivered, the next one does, and nothing twice
        bot = BotProcess(tmp_path, slack_redis, edge_lab.topology, fake)
        wait_settled(slack_redis)
        assert len(parents(fake)) == TIMES
        for parent in parents(fake):
            assert len(_results(fake, parent)) == 1, fake.thread(parent["ts"])
    finally:
        slack_worker.terminate()
        if bot is not None:
            stop_cleanly(bot)


class SocketModeBot(Managed):
    """`cmsbot bot` in Socket Mode against the fake (an app-level token set, no HTTP port)."""

    def __init__(self, workdir: Path, redis_url: str, topology: Path, fake, wait: bool = True):
        env = dict(os.environ, REDIS_URL=redis_url, CMSBOT_TOPOLOGY=str(topology), CMSBOT_SLACK_BOT_TOKEN=TOKEN,
                   CMSBOT_SLACK_APP_TOKEN="xapp-test-token", CMSBOT_SLACK_API_URL=fake.base_url,
                   CMSBOT_SLACK_OPERATORS=OPERATOR, CMSBOT_SLACK_CHANNELS=CHANNEL, CMSBOT_LOG_LEVEL="INFO")
        env.pop("CMSBOT_SLACK_SIGNING_SECRET", None)
        super().__init__(cmsbot("bot"), env, workdir / f"socket-bot-{time.monotonic_ns()}.log")
        if wait:
            self.wait_for(lambda: "connected to Slack in Socket Mode" in self.text(), scaled(30), "the bot")


def _slash_command(envelope: str) -> dict:
    return {"envelope_id": envelope, "type": "slash_commands", "accepts_response_payload": True, "payload": {
        "token": "legacy", "team_id": "T0001", "team_domain": "contoso", "channel_id": CHANNEL, "channel_name": "ops",
        "user_id": OPERATOR, "user_name": "operator", "command": "/cms-status", "text": "", "api_app_id": "A0001",
        "response_url": "", "trigger_id": f"trig-{envelope}"}}


def test_socket_mode_serves_a_command_and_sigterm_stops_it_within_5_seconds(fake, edge_lab, slack_worker,
                                                                            slack_redis, tmp_path):
    fake.reset()
    try:
        for i in range(TIMES):
            bot = SocketModeBot(tmp_path, slack_redis, edge_lab.topology, fake)
            envelope = f"env-{i}"
            wait_until(lambda: fake.socket_send(_slash_command(envelope)), 10, "no connection")  # noqa: B023
            wait_until(lambda: {"envelope_id": envelope} in [  # noqa: B023
                {"envelope_id": m.get("envelope_id")} for m in fake.socket_messages()], 10, "the command was not acked")
            wait_until(lambda: len(parents(fake)) == i + 1, 30, "no parent")  # noqa: B023
            seconds = _exit_seconds(bot)
            assert seconds < scaled(EXIT_WITHIN), f"{seconds:.1f} s"
            assert bot.proc.returncode == 0
        assert not fake.socket_connections()
    finally:
        slack_worker.terminate()


def test_socket_mode_that_cannot_connect_still_stops_within_5_seconds(fake, edge_lab, db_url, tmp_path):
    fake.reset()
    fake.fail("apps.connections.open", error="invalid_auth", times=1000)
    bot = SocketModeBot(tmp_path, db_url, edge_lab.topology, fake, wait=False)
    wait_until(lambda: "cannot connect to Slack in Socket Mode" in bot.text(), 30, "no connection attempt")
    seconds = _exit_seconds(bot)
    assert seconds < scaled(EXIT_WITHIN), f"{seconds:.1f} s"
    assert json.dumps(fake.calls("apps.connections.open")[0].params).count("xapp") == 0  # the token travels in a header
