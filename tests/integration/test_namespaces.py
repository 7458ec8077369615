"""Two deployments on one Redis database, told apart only by CMSBOT_NAMESPACE, share nothing:
each bot posts only its own results with its own token, a CMS change held by one does not
block the other, one's approvals cannot be decided from the other, and the audit and events
of each name only its own requests."""

from __future__ import annotations

import json

import redis

from hub import cms_lock
from hub.keys import Hub, Keys
from lab.slack_fake import SlackFake
from tests.harness import SLACK_WORKER, WorkerProcess, stop_cleanly, wait_idle, wait_until
from tests.slack_support import APPROVER, CHANNEL, OPERATOR, BotProcess, ack_body, parents, wait_for_verdict


def _requests_in(conn: redis.Redis, stream: str) -> set[str]:
    return {f[b"request"].decode() for _, f in conn.xrange(stream)} if conn.exists(stream) else set()


def _audit_requests(conn: redis.Redis, stream: str) -> set[str]:
    return {f[b"request"].decode() for _, f in conn.xrange(stream) if b"request" in f} if conn.exists(stream) else set()


def test_two_deployments_on_one_redis_database_never_see_each_other(tmp_path, db_url, edge_lab):
    edge_lab.scenarios()
    conn = redis.Redis.from_url(db_url)
    names = ("alpha", "beta")
    hubs = {n: Hub(conn, Keys(n)) for n in names}
    fakes = {n: SlackFake().start() for n in names}
    workers = {n: WorkerProcess(tmp_path, db_url, edge_lab.topology, namespace=n, **SLACK_WORKER) for n in names}
    bots = {n: BotProcess(tmp_path, db_url, edge_lab.topology, fakes[n], token=f"xoxb-{n}", namespace=n)
            for n in names}
    try:
        # 1. both check at once; each thread is complete in its own Slack, and only there
        for n in names:
            assert bots[n].command("/cms-status")[0] == 200
        for n in names:
            assert wait_for_verdict(fakes[n])["text"].startswith("OK")
        wait_idle(db_url)
        for n in names:
            assert len(parents(fakes[n])) == 1
            assert {c.token for c in fakes[n].calls("chat.postMessage")} == {f"xoxb-{n}"}
        alpha_requests, beta_requests = (_requests_in(conn, hubs[n].keys.events) for n in names)
        assert alpha_requests and beta_requests and not alpha_requests & beta_requests

        # 2. a CMS change held in alpha holds alpha only
        lock = cms_lock.CmsLock.acquire(hubs["alpha"], "r-alpha-change", ttl=60)
        assert lock is not None
        cms_lock.set_holder(hubs["alpha"], "normal failover of the CMS (alpha)", ttl=60)
        status, body = bots["alpha"].command("/cms-replicate", "pool02.contoso.com")
        assert status == 200 and "Not now: another CMS change is running" in ack_body(body)["text"]
        status, body = bots["beta"].command("/cms-replicate", "pool02.contoso.com")
        assert status == 200 and "Not now" not in body
        wait_until(lambda: len(parents(fakes["beta"])) == 2 and not parents(fakes["beta"])[-1]["text"]
                   .endswith("checking"), 60, "beta's /cms-replicate did not finish")
        lock.release()

        # 3. alpha's approval card cannot be decided from beta, and beta has no card of its own
        status, _ = bots["alpha"].command("/cms-failover", user=OPERATOR)
        assert status == 200
        card = wait_until(lambda: next((m for m in fakes["alpha"].messages() if "approval-approve" in
                                        json.dumps(m.get("blocks"))), None), 30, "no approval card in alpha")
        approval_id = next(e["value"] for b in card["blocks"] if b.get("type") == "actions"
                           for e in b["elements"] if e["action_id"] == "approval-approve")
        seen = len(fakes["beta"].calls("response_url"))
        assert bots["beta"].click(fakes["beta"], "approval-approve", approval_id, user=APPROVER,
                                  thread=card["ts"], channel=CHANNEL)[0] == 200
        wait_until(lambda: len(fakes["beta"].calls("response_url")) > seen, 10, "beta did not answer the click")
        assert conn.zcard(hubs["beta"].keys.approvals_pending) == 0
        assert conn.zscore(hubs["alpha"].keys.approvals_pending, approval_id) is not None
        assert conn.hget(hubs["alpha"].keys.approval(approval_id), "status") == b"pending"
        wait_idle(db_url)

        # 4. each audit names only its own requests; every key but RQ's is under one namespace
        alpha_audit, beta_audit = (_audit_requests(conn, hubs[n].keys.audit) for n in names)
        assert alpha_audit and beta_audit and not alpha_audit & beta_audit
        assert not alpha_audit & _requests_in(conn, hubs["beta"].keys.events)
        ours = [k.decode() for k in conn.scan_iter() if not k.startswith(b"rq:")]
        assert ours and all(k.startswith(("alpha:", "beta:")) for k in ours), ours
    finally:
        for n in names:
            stop_cleanly(bots[n])
            stop_cleanly(workers[n])
            fakes[n].stop()
