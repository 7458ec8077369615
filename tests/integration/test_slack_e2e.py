"""The Slack app end to end: the real `cmsbot bot` over its HTTP endpoint with
signed requests, its real WebClient against a local fake of the Slack Web API,
a real worker on real Redis, pywinrm against the lab."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import redis

from hub.contract import CHANGE, Request, id_for_delivery, submit
from hub.jobs import REMEDIATE_JOB
from hub.keys import KEYS, Hub
from tests.harness import children_of, jobs_in_flight, wait_idle, wait_until
from tests.slack_support import (
    APPROVER,
    GROUP_OPERATOR,
    OPERATOR,
    VIEWER,
    ack_body,
    blocks_text,
    buttons,
    parents,
    wait_for_verdict,
)


def test_status_flow_posts_parent_progress_result_and_verdict(bot, fake):
    started = time.monotonic()
    status, body = bot.command("/cms-status")
    ack_seconds = time.monotonic() - started
    assert status == 200
    assert ack_body(body)["text"].startswith("Checking the whole deployment now")  # the ack says what happens
    parent = wait_for_verdict(fake)
    assert parent["text"].startswith("OK: 8/8 replicas up to date")
    thread = fake.thread(parent["ts"])[1:]
    assert thread and all(m["thread_ts"] == parent["ts"] for m in thread)
    progress = [m for m in thread if m["text"].endswith("answered") or m["text"] == "finished"]
    assert len(progress) == 1 and progress[0]["edits"] >= 1, "one progress message, edited in place"
    results = [m for m in thread if "CMS status" in blocks_text(m)]
    assert len(results) == 1 and "8/8 replicas up to date" in blocks_text(results[0])
    print(f"ack took {ack_seconds * 1000:.0f} ms")


def test_wrong_or_stale_signature_is_refused(bot, fake, slack_redis):
    assert bot.command("/cms-status", secret="not-the-secret")[0] == 401
    assert bot.command("/cms-status", timestamp=int(time.time()) - 600)[0] == 401
    # a signed request after them: once its thread is complete, anything the refused ones
    # had started would be there too
    assert bot.command("/cms-status")[0] == 200
    wait_for_verdict(fake)
    wait_idle(slack_redis)
    assert len(parents(fake)) == 1
    requests = {f[b"request"] for _, f in redis.Redis.from_url(slack_redis).xrange(KEYS.events)}
    assert len(requests) == 1


def test_retried_delivery_runs_once(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios()
    first = bot.command("/cms-status", trigger="trig-same")
    again = bot.command("/cms-status", trigger="trig-same", headers={"X-Slack-Retry-Num": "1",
                                                                     "X-Slack-Retry-Reason": "http_timeout"})
    assert first[0] == again[0] == 200
    wait_for_verdict(fake)
    wait_idle(slack_redis)
    assert len(parents(fake)) == 1
    assert edge_lab.probe_count("cms-status") == 1


def test_rate_limits_are_retried_and_nothing_is_lost(bot, fake):
    # more 429s than the client's retry handler absorbs: the reporter retries the event later
    fake.fail("chat.postMessage", status=429, retry_after=1, times=7)
    bot.command("/cms-status")
    parent = wait_for_verdict(fake, timeout=60)
    posts = fake.calls("chat.postMessage")
    assert sum(c.status == 429 for c in posts) == 7
    thread = fake.thread(parent["ts"])[1:]
    assert len([m for m in thread if "CMS status" in blocks_text(m)]) == 1
    assert len(parents(fake)) == 1


def test_bot_restarted_mid_request_completes_the_thread_once(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios("hang:fe03.contoso.com")  # the job takes a host deadline
    bot.command("/cms-status", trigger="trig-restart")
    request_id = id_for_delivery("T0001", "trig-restart").encode()
    wait_until(lambda: len(parents(fake)) == 1, 20, "no parent")
    bot.kill()
    conn = redis.Redis.from_url(slack_redis)
    wait_until(lambda: any(f[b"request"] == request_id and f[b"kind"] == b"result" for _, f in conn.xrange(KEYS.events)),
          30, "the job did not finish")
    bot.start()
    parent = wait_for_verdict(fake)
    assert "could not be checked" in parent["text"]
    thread = fake.thread(parent["ts"])[1:]
    assert len([m for m in thread if "CMS status" in blocks_text(m)]) == 1
    assert len(parents(fake)) == 1
    assert len([m for m in thread if m["text"].endswith("answered") or m["text"] == "finished"]) == 1


def test_unknown_target_lists_known_names_ephemerally(bot, fake, slack_redis):
    status, body = bot.command("/cms-status", "pool99.contoso.com")
    assert status == 200
    doc = ack_body(body)
    assert "pool99.contoso.com" in doc["text"] and "pool01.contoso.com" in doc["text"]
    assert doc.get("response_type") in (None, "ephemeral")
    assert jobs_in_flight(slack_redis) == 0  # a job is enqueued before the ack, or not at all
    assert fake.calls("chat.postMessage") == []


def test_channel_not_allowed_and_operator_only_commands_are_refused(bot, fake, slack_redis):
    status, body = bot.command("/cms-status", channel="C0RANDOM")
    assert "channel allowed for cms-chatops" in ack_body(body)["text"]
    status, body = bot.command("/cms-replicate", user=VIEWER)
    assert "operator" in ack_body(body)["text"]
    assert jobs_in_flight(slack_redis) == 0  # a job is enqueued before the ack, or not at all
    assert fake.calls("chat.postMessage") == []


def test_explain_and_help_answer_in_the_ack(bot):
    seed = (Path(__file__).parent.parent / "fixtures" / "events" / "seed-1017.txt").read_text()
    status, body = bot.command("/cms-explain", seed.replace("<", "&lt;").replace(">", "&gt;"))
    doc = json.loads(body)
    assert doc["response_type"] == "in_channel"
    assert "Edge replica unreachable over HTTPS 4443: sever05.contoso.com" in doc["text"]
    doc = json.loads(bot.command("/cms-help")[1])
    for name in ("/cms-status", "/cms-explain", "/cms-replicate", "/cms-help"):
        assert name in json.dumps(doc["blocks"])


def test_viewer_pressing_an_operator_button_is_refused(bot, fake, slack_redis):
    conn = redis.Redis.from_url(slack_redis)
    audits = conn.xlen(KEYS.audit) if conn.exists(KEYS.audit) else 0
    value = json.dumps({"a": "start-replica", "t": "edge02.contoso.com"})
    assert bot.click(fake, "remediate-start-replica", value, user=VIEWER, thread="1700000000.000001")[0] == 200
    wait_until(lambda: fake.calls("response_url"), 10, "no ephemeral answer")
    answer = fake.calls("response_url")[0].params
    assert "operator" in answer["text"] and answer["response_type"] == "ephemeral"
    # the refusal is the handler's last act: nothing after it can still come
    assert jobs_in_flight(slack_redis) == 0
    assert (conn.xlen(KEYS.audit) if conn.exists(KEYS.audit) else 0) == audits
    assert fake.calls("chat.postMessage") == []


def test_remediation_button_fixes_the_lab_and_the_recheck_shows_it(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios("edge-replica-stopped:edge02.contoso.com")
    bot.command("/cms-status")
    parent = wait_for_verdict(fake)
    assert parent["text"].startswith("PROBLEMS")
    result = next(m for m in fake.thread(parent["ts"])[1:] if "CMS status" in blocks_text(m))
    start = next(b for b in buttons(result) if b["action_id"] == "remediate-start-replica")
    assert "Start-CsWindowsService -Name REPLICA on edge02.contoso.com" in json.dumps(start["confirm"])
    # a member of the operators' user group clicks it
    assert bot.click(fake, start["action_id"], start["value"], user=GROUP_OPERATOR, thread=parent["ts"])[0] == 200
    wait_until(lambda: any("Re-check after the action" in blocks_text(m) for m in fake.thread(parent["ts"])), 60,
          "no re-check in the thread")
    recheck = next(m for m in fake.thread(parent["ts"]) if "Re-check after the action" in blocks_text(m))
    assert "8/8 replicas up to date" in blocks_text(recheck)
    wait_until(lambda: fake.thread(parent["ts"])[0]["text"].startswith("OK: 8/8"), 10, "parent verdict not updated")
    conn = redis.Redis.from_url(slack_redis)
    entries = [{k.decode(): v.decode() for k, v in f.items()} for _, f in conn.xrange(KEYS.audit)]
    mine = [e for e in entries if e.get("who") == GROUP_OPERATOR and e.get("target") == "edge02.contoso.com"]
    assert [e["result"] for e in mine][-3:] == ["requested", "started", "ok"]


def test_replicate_forces_replication_waits_rechecks_and_reports_the_difference(bot, fake, edge_lab, slack_redis):
    edge_lab.scenarios("transient:fe04.contoso.com")
    status, body = bot.command("/cms-replicate", "pool02.contoso.com")
    assert status == 200
    parent = wait_for_verdict(fake)
    assert parent["text"].startswith("OK: 2/2 replicas up to date in pool02.contoso.com")
    result = next(m for m in fake.thread(parent["ts"])[1:] if "force-replication" in blocks_text(m))
    assert "fe04.contoso.com: UpToDate False -&gt; True" in blocks_text(result)
    assert [c["probe"] for c in edge_lab.stats()["commands"]].count("force-replication") == 1


def test_remediations_and_replicate_wait_while_a_cms_change_runs_or_cools_down(bot, fake, edge_lab, slack_redis):
    """Forced replication, export and import must not act on a store that is moving."""
    conn = redis.Redis.from_url(slack_redis)
    conn.set(KEYS.cms_lock, "token")
    conn.set(KEYS.cms_lock_holder, "normal failover of the CMS from pool01.contoso.com to pool02.contoso.com")
    status, body = bot.command("/cms-replicate", "pool02.contoso.com")
    assert status == 200
    assert "Not now: another CMS change is running (normal failover of the CMS" in ack_body(body)["text"]
    value = json.dumps({"a": "reseed", "t": "fe03.contoso.com"})
    assert bot.click(fake, "remediate-reseed", value, user=OPERATOR, thread="1700000000.000001")[0] == 200
    wait_until(lambda: fake.calls("response_url"), 10, "no answer to the button")
    assert "Remediations wait until the CMS change has converged" in fake.calls("response_url")[0].params["text"]

    conn.delete(KEYS.cms_lock, KEYS.cms_lock_holder)
    conn.set(KEYS.cms_cooldown, "until 12:00:00 UTC (failover converged)")
    status, body = bot.command("/cms-replicate")
    assert "Not now: cooldown after the last CMS change until 12:00:00 UTC" in ack_body(body)["text"]
    # refused before anything was enqueued or sent to a server
    assert jobs_in_flight(slack_redis) == 0 and fake.calls("chat.postMessage") == []
    assert [c["probe"] for c in edge_lab.stats()["commands"]] == []


def test_a_remediation_job_rechecks_the_cms_lock_before_touching_anything(slack_worker, edge_lab, slack_redis):
    """The bot checks at request time; the worker checks again when the job starts."""
    conn = redis.Redis.from_url(slack_redis)
    conn.set(KEYS.cms_lock, "token")
    conn.set(KEYS.cms_lock_holder, "CMS recovery in pool01.contoso.com")
    req = Request(command="remediate", args={"action": "reseed", "target": "fe03.contoso.com"}, user=OPERATOR,
                  origin="console")
    submit(Hub(conn, KEYS), req, REMEDIATE_JOB, kind=CHANGE, timeout=120)

    def failed() -> list[dict]:
        return [json.loads(f[b"body"]) for _, f in conn.xrange(KEYS.events)
                if f[b"request"].decode() == req.id and f[b"kind"] == b"failed"]
    (failed_event,) = wait_until(failed, 30, "the job did not refuse")
    wait_idle(slack_redis)
    assert failed_event["reason"] == "not done: another CMS change is running (CMS recovery in pool01.contoso.com)"
    assert edge_lab.stats()["commands"] == []
    audit = [{k.decode(): v.decode() for k, v in f.items()} for _, f in conn.xrange(KEYS.audit)]
    assert [a["result"] for a in audit if a.get("request") == req.id][-1].startswith("refused: another CMS change")


def test_a_request_without_a_usable_length_is_refused_before_it_is_read(bot, fake):
    """rfile.read(-1) would buffer whatever the client streams, before any signature check."""
    def raw(length_header: str) -> bytes:
        with socket.create_connection(("127.0.0.1", bot.port), timeout=10) as s:
            s.sendall(f"POST /slack/events HTTP/1.1\r\nHost: bot\r\n{length_header}\r\n".encode() + b"x" * 65536)
            return s.recv(200)
    assert raw("Content-Length: -1\r\n").startswith(b"HTTP/1.1 400")
    assert raw("Content-Length: many\r\n").startswith(b"HTTP/1.1 400")
    assert raw("").startswith(b"HTTP/1.1 411")
    assert raw(f"Content-Length: {2 * 1024 * 1024}\r\n").startswith(b"HTTP/1.1 413")
    # and a real request right after is served as usual
    assert bot.command("/cms-status")[0] == 200
    assert wait_for_verdict(fake)["text"].startswith("OK")


def test_a_remediation_whose_worker_dies_is_reported_as_unknown_audited_and_can_run_again_once_cleared(
        bot, fake, edge_lab, slack_worker, slack_redis):
    edge_lab.scenarios("hang:fe03.contoso.com")  # Start REPLICA runs until the host deadline
    conn = redis.Redis.from_url(slack_redis)
    value = json.dumps({"a": "start-replica", "t": "fe03.contoso.com"})
    assert bot.click(fake, "remediate-start-replica", value, user=OPERATOR, thread="1700000000.000001")[0] == 200
    # killed in the middle of the action: after the job said it started it, while fe03 hangs
    wait_until(lambda: any(a.get(b"result") == b"started" for _, a in conn.xrange(KEYS.audit)), 20,
               "the remediation did not start")
    horses = wait_until(lambda: children_of(slack_worker.proc.pid), 20, "no work-horse running")
    for pid in horses:
        os.kill(pid, signal.SIGKILL)

    def failed() -> list[dict]:
        return [json.loads(f[b"body"]) for _, f in conn.xrange(KEYS.events) if f[b"kind"] == b"failed"]
    (lost,) = wait_until(failed, 30, "the lost remediation was not reported")
    reason = lost["reason"]
    assert "Start-CsWindowsService -Name REPLICA on fe03.contoso.com" in reason and "outcome is unknown" in reason
    audit = [{k.decode(): v.decode() for k, v in f.items()} for _, f in conn.xrange(KEYS.audit)]
    assert [a["result"] for a in audit if a.get("what") == "start-replica"] == [
        "requested", "started", "unknown: the worker stopped"]
    # its outcome stays unknown until an approver has checked: the next click is refused with the reason
    assert conn.hexists(KEYS.outcome_unknown, lost["unknown"])
    seen = len(fake.calls("response_url"))
    assert bot.click(fake, "remediate-start-replica", value, user=OPERATOR, thread="1700000000.000001")[0] == 200
    wait_until(lambda: len(fake.calls("response_url")) > seen, 10, "no answer to the click")
    assert "Not now: Start-CsWindowsService -Name REPLICA on fe03.contoso.com" in \
        fake.calls("response_url")[seen].params["text"]
    assert bot.click(fake, "cms-clear-unknown", lost["unknown"], user=APPROVER, thread="1700000000.000001")[0] == 200
    wait_until(lambda: not conn.exists(KEYS.outcome_unknown), 10, "the approver could not clear it")
    # cleared, and the guard is free: the next click runs instead of "already running"
    seen = len(fake.calls("response_url"))
    edge_lab.scenarios()
    assert bot.click(fake, "remediate-start-replica", value, user=OPERATOR, thread="1700000000.000001")[0] == 200
    wait_until(lambda: len([a for _, a in conn.xrange(KEYS.audit) if a.get(b"result") == b"ok"]) == 1, 60,
               "the second run did not finish")
    assert not [c for c in fake.calls("response_url")[seen:] if "already running" in c.params.get("text", "")]
