"""Faults, restarts, hostile input, secrets and contention, on the real parts."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import threading
import time

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.delivery.console import run_chat
from cms import topology as topo
from cms.settings import Settings
from hub.keys import hub_for
from tests.harness import (
    HOST_DEADLINE,
    SLACK_WORKER,
    LabProcess,
    WorkerProcess,
    children_of,
    scaled,
    stop_cleanly,
    wait_settled,
    wait_until,
)
from tests.slack_support import APPROVER, APPROVER2, BOTH, OPERATOR, BotProcess, blocks_text, parents

# -- WinRM faults, per host ------------------------------------------------------------------

FAULTS = [
    ("fault-500", "probe_failed", "WS-Management fault from fe04.contoso.com"),
    ("fault-xml", "probe_failed", "malformed WS-Management response"),
    ("fault-401", "auth_failed", "credentials were rejected"),
    ("fault-reset", "unreachable", "the connection to 127.0.0.1"),
    ("fault-trickle", "timed_out", "within the host deadline"),
    ("fault-codepage", "probe_failed", "not UTF-8"),
]


@pytest.mark.parametrize("fault, kind, reason", FAULTS)
def test_a_winrm_fault_is_that_hosts_error_and_the_report_stays_whole(status, fault, kind, reason):
    outcome, thread = status(f"{fault}:fe04.contoso.com")
    report = outcome.report
    errors = [e for e in report.host_errors if e.server == "fe04.contoso.com"]
    assert errors, report.host_errors
    assert errors[0].kind.value == kind and reason in errors[0].reason, errors[0]
    assert "Traceback" not in thread
    assert len(report.cms.replicas) == 8 and report.cms_source == "fe01.contoso.com"
    assert {h.fqdn for h in report.health} == {"fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com",
                                               "dir01.contoso.com", "med01.contoso.com"}
    assert [e.server for e in report.host_errors] == ["fe04.contoso.com"]


# -- a worker killed outright ------------------------------------------------------------------


def test_a_worker_killed_mid_check_turns_into_a_failed_message(db_url, lab, tmp_path):
    """The whole worker (parent and work-horse) dies: no callback runs; another worker of the
    deployment, started after the kill (so it cannot take the check itself), reports it."""
    lab.scenarios("hang:fe03.contoso.com")  # the check runs a host deadline long
    victim = WorkerProcess(tmp_path, db_url, lab.topology, host_deadline="30")
    settings = Settings(redis_url=db_url, topology=lab.topology, chat_timeout=scaled(60))
    out, result = io.StringIO(), {}
    chat = threading.Thread(target=lambda: result.update(outcome=run_chat(
        hub_for(redis.Redis.from_url(db_url), settings), settings, topo.load(lab.topology), "/cms-status", "U-TEST",
        out=out)))
    chat.start()
    wait_until(lambda: "checking" in out.getvalue(), 20, "the check did not start")
    horses = wait_until(lambda: children_of(victim.proc.pid), 20, "no work-horse running")
    for pid in [victim.proc.pid, *horses]:  # the worker and its work-horse, as a power cut would
        os.kill(pid, signal.SIGKILL)
    victim.proc.wait()
    killed = time.monotonic()
    survivor = WorkerProcess(tmp_path, db_url, lab.topology, heartbeat_stale="10")  # the least allowed
    chat.join(scaled(70))
    assert not chat.is_alive()
    assert result["outcome"].exit_code == 2
    assert "the check was lost" in out.getvalue()
    print(f"reported {time.monotonic() - killed:.0f} s after the kill")
    stop_cleanly(survivor)


# -- Redis restarted in the middle of a flow ---------------------------------------------------




def test_redis_restarted_mid_flow_everything_reconnects(durable_redis, lab, tmp_path):
    lab.scenarios("hang:fe03.contoso.com")
    w = WorkerProcess(tmp_path, durable_redis.url, lab.topology, host_deadline=str(HOST_DEADLINE))
    settings = Settings(redis_url=durable_redis.url, topology=lab.topology, chat_timeout=scaled(60))
    try:
        from hub.contract import connect

        conn = hub_for(connect(durable_redis.url), settings)
        out, result = io.StringIO(), {}
        chat = threading.Thread(target=lambda: result.update(outcome=run_chat(
            conn, settings, topo.load(lab.topology), "/cms-status", "U-TEST", out=out)))
        chat.start()
        wait_until(lambda: "checking" in out.getvalue(), 20, "the check did not start")
        assert not durable_redis.stop()
        time.sleep(1)  # an outage of a second, not a wait for anything
        durable_redis.start()
        chat.join(scaled(70))
        assert not chat.is_alive()
        outcome = result["outcome"]
        # completed (fe03 timed out, the rest reported) or failed visibly: never silent
        assert (outcome.exit_code == 1 and outcome.report is not None) or "FAILED" in out.getvalue(), out.getvalue()
        # and the next request runs normally on the reconnected worker
        lab.scenarios()
        again = run_chat(conn, settings, topo.load(lab.topology), "/cms-status", "U-TEST", out=io.StringIO())
        assert again.exit_code == 0
        assert w.running
    finally:
        stop_cleanly(w)


def test_after_a_redis_restart_the_watchdog_lets_running_jobs_beat_before_it_calls_any_lost(durable_redis):
    """Every heartbeat is old after an outage: a job that is alive must not be reported lost
    (a CMS change would be called "outcome unknown") before it has had a heartbeat period."""
    from hub.contract import connect
    from hub.keys import KEYS, Hub
    from hub.liveness import watch

    hub = Hub(connect(durable_redis.url), KEYS)
    before = time.time() - 60  # both last beat a minute ago, before the outage
    hub.redis.zadd(KEYS.running, {"r-alive": before, "r-dead": before})
    assert not durable_redis.stop()
    durable_redis.start()
    reported: list[str] = []
    stop = threading.Event()

    def beat() -> None:  # r-alive's heartbeat, back as soon as Redis is
        while not stop.wait(1.0):
            hub.redis.zadd(KEYS.running, {"r-alive": time.time()})
    threads = [threading.Thread(target=beat, daemon=True),
               threading.Thread(target=watch, args=(hub, lambda rid, cmd: reported.append(rid), stop),
                                kwargs={"every": 0.2, "stale": 10}, daemon=True)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: "r-dead" in reported, 40, "the dead job was never reported")
        assert reported == ["r-dead"]
    finally:
        stop.set()
        for t in threads:
            t.join(10)


# -- hostile input ----------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300) | st.sampled_from([
    "pool01.contoso.com; Remove-Item C:\\ -Recurse", "$(Stop-Computer)", "`whoami`", "fe01.contoso.com' -or '1",
    "<!channel>", "&lt;script&gt;", "..\\..\\windows", "fe01.contoso.com\x00", "a" * 5000, "disaster disaster"])
COMMANDS = st.sampled_from(["/cms-status", "/cms-explain", "/cms-replicate", "/cms-failover", "/cms-recover",
                            "/cms-help", "/cms-unknown"])
PAYLOAD_VALUES = st.one_of(TEXT, st.just(""), st.builds(json.dumps, st.dictionaries(
    st.sampled_from(["a", "t", "x"]), TEXT | st.integers() | st.none(), max_size=3)))
ACTIONS = st.sampled_from(["remediate-start-replica", "remediate-force-replication", "remediate-reseed",
                           "approval-approve", "approval-deny", "remediate-anything"])

ALLOWED_WORDS = {"REPLICA", "RTCUniversalConfigReplicator", "normal", "disaster", "edge", "frontend", "director",
                 "mediation", "rtc"}


def strings_in(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return []


def test_hostile_text_and_payloads_never_break_anything_and_never_reach_powershell(bot, fake, edge_lab, slack_redis):
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(command=COMMANDS, text=TEXT, action=ACTIONS, value=PAYLOAD_VALUES, users=st.sampled_from([OPERATOR, BOTH]))
    def one(command, text, action, value, users):
        status, body = bot.command(command, text, user=users)
        assert status == 200, body
        assert "Traceback" not in body and "Error:" not in body.split("error ")[0]
        status, body = bot.click(fake, action, value, user=users, thread="1700000000.000100")
        assert status == 200 and "Traceback" not in body

    one()
    wait_settled(slack_redis, timeout=120)
    # what reached the servers: only names from the topology, fixed words, and our own file names
    topology = topo.load(edge_lab.topology)
    names = set(topology.names) | {s.internal_address for s in topology.servers if s.internal_address}
    for command in edge_lab.stats()["commands"]:
        for s in strings_in(command["params"]):
            assert (s in names or s in ALLOWED_WORDS or re.fullmatch(r"[A-Z0-9]{2,15}", s)
                    or re.fullmatch(r"cmsbot-(export|config)-[a-z0-9-]+\.zip", s)
                    or re.fullmatch(r"[0-9A-F]{64}", s)), f"{s!r} reached a probe ({command['probe']})"
    # and nothing shown to users carries a stack trace
    for call in fake.calls():
        text = json.dumps(call.params)
        assert "Traceback" not in text and 'File "' not in text


# -- secrets ----------------------------------------------------------------------------------

CANARY_PASSWORD = "canary-winrm-Zq81xTs0"
CANARY_TOKEN = "xoxb-canary-Pp42mWn7"
CANARY_SECRET = "canary-signing-Hq55"


def dump(conn: redis.Redis, key: bytes):
    read = {"string": conn.get, "hash": conn.hgetall, "stream": conn.xrange, "set": conn.smembers,
            "list": lambda k: conn.lrange(k, 0, -1), "zset": lambda k: conn.zrange(k, 0, -1)}
    return read.get(conn.type(key).decode(), lambda k: b"")(key)


def test_canary_secrets_never_appear_anywhere(tmp_path, db_url, fake):
    url = db_url
    lab = LabProcess(tmp_path, password=CANARY_PASSWORD)
    worker = WorkerProcess(tmp_path, url, lab.topology, host_deadline=str(HOST_DEADLINE),
                           winrm_password=CANARY_PASSWORD)
    fake.reset()
    bot = BotProcess(tmp_path, url, lab.topology, fake, token=CANARY_TOKEN, secret=CANARY_SECRET)
    try:
        lab.scenarios("fault-401:fe02.contoso.com", "share-acl-missing:fe03.contoso.com")
        bot.command("/cms-status", secret=CANARY_SECRET)
        wait_until(lambda: any(p["edits"] and "PROBLEMS" in p["text"] for p in parents(fake)), 40, "no verdict")
        # /cms-explain answers in the ack; then every job has ended and every event is delivered
        bot.command("/cms-explain", f"password={CANARY_PASSWORD} token", secret=CANARY_SECRET)
        wait_settled(url)
        leaks = []
        for call in fake.calls():
            if CANARY_PASSWORD in json.dumps(call.params) or CANARY_TOKEN in json.dumps(call.params):
                leaks.append(f"slack {call.method}")
        for log in (bot.log, worker.log, lab.log):
            text = log.read_text()
            for canary in (CANARY_PASSWORD, CANARY_TOKEN, CANARY_SECRET):
                if canary in text:
                    leaks.append(f"{log.name}: {canary}")
        conn = redis.Redis.from_url(url)
        for key in conn.scan_iter("*"):
            text = repr(dump(conn, key))
            for canary in (CANARY_PASSWORD, CANARY_TOKEN, CANARY_SECRET):
                # the user pasted the password into /cms-explain: it may be echoed back to that user only
                if canary in text and not (canary == CANARY_PASSWORD and "explain" in text):
                    leaks.append(f"redis {key!r}: {canary}")
        assert leaks == []
        # the auth failure is reported, without the password
        assert any("credentials were rejected" in json.dumps(m.get("blocks")) for m in fake.messages())
    finally:
        stop_cleanly(bot, worker, lab)


# -- approvals under contention ---------------------------------------------------------------


def test_twenty_racing_requests_and_clicks_run_one_failover(fake, edge_lab, db_url, tmp_path):
    """Two workers and the bot on the test's own database."""
    url = db_url
    edge_lab.scenarios()
    fake.reset()
    workers = [WorkerProcess(tmp_path, url, edge_lab.topology, **SLACK_WORKER) for _ in range(2)]
    bot = BotProcess(tmp_path, url, edge_lab.topology, fake)
    try:
        requests = [threading.Thread(target=bot.command, args=("/cms-failover", "")) for _ in range(20)]
        for t in requests:
            t.start()
        for t in requests:
            t.join()
        try:
            wait_until(lambda: len([p for p in parents(fake) if "Approve" in blocks_text(p)]) == 20, 120, "")
        except AssertionError:
            raise AssertionError(f"not 20 open cards: {[p['text'][:160] for p in parents(fake)]}") from None
        cards = [p for p in parents(fake) if "Approve" in blocks_text(p)]

        def approve(card, user):
            button = next(e for b in card["blocks"] if b.get("type") == "actions" for e in b["elements"]
                          if e["action_id"] == "approval-approve")
            bot.click(fake, "approval-approve", button["value"], user=user, thread=card["ts"])
        # 20 clicks on the first card, and one on each of the other 19, all at once
        clicks = [threading.Thread(target=approve, args=(cards[0], (APPROVER, APPROVER2, BOTH)[i % 3]))
                  for i in range(20)]
        clicks += [threading.Thread(target=approve, args=(c, APPROVER)) for c in cards[1:]]
        for t in clicks:
            t.start()
        for t in clicks:
            t.join()
        wait_until(lambda: sum("converged in" in blocks_text(m) for m in fake.messages()) >= 1, 60, "nothing converged")
        wait_settled(url)
        assert [c["probe"] for c in edge_lab.stats()["commands"]].count("cms-failover") == 1
        refusals = sum(("another CMS change is running" in blocks_text(m) or "cooldown" in blocks_text(m))
                       for m in fake.messages() if m.get("thread_ts"))
        assert refusals == 19
    finally:
        stop_cleanly(bot, *workers)
