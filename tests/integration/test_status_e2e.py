"""/cms-status end to end: console -> Redis/RQ -> worker -> pywinrm -> lab -> events -> thread."""

from __future__ import annotations

import os
import re
import subprocess
import time

from hub.contract import STATUS, queue
from hub.keys import KEYS, Hub
from tests.harness import HOST_DEADLINE, cmsbot, scaled

LAB_SERVERS = ["fe01", "fe02", "fe03", "fe04", "edge01", "edge02", "dir01", "med01"]


def replica_rows(thread: str) -> dict[str, str]:
    """Replica -> UpToDate column, read from the printed table."""
    rows = {}
    for m in re.finditer(r"^\s*\|\s+(\S+\.contoso\.com)\s+(True|False|\?)\s", thread, re.M):
        rows[m.group(1)] = m.group(2)
    return rows


def test_healthy_deployment_lists_every_replica_up_to_date(chat):
    code, thread = chat("/cms-status")
    assert code == 0, thread
    rows = replica_rows(thread)
    assert rows == {f"{s}.contoso.com": "True" for s in LAB_SERVERS}
    assert "CMS master: fe01.contoso.com" in thread
    assert "pool01.contoso.com (active), pool02.contoso.com (backup)" in thread
    assert thread.strip().splitlines()[-1].startswith("verdict: OK: 8/8 replicas up to date")


def test_replica_behind_is_shown_false_and_reported(chat, lab):
    lab.scenarios("replica-behind:fe03.contoso.com")
    code, thread = chat("/cms-status")
    assert code == 1, thread
    rows = replica_rows(thread)
    assert rows["fe03.contoso.com"] == "False"
    assert all(v == "True" for k, v in rows.items() if k != "fe03.contoso.com")
    assert "[replica.behind]" in thread and "fe03.contoso.com is behind the Central Management Store" in thread
    assert "verdict: PROBLEMS: 7/8 replicas up to date" in thread


def test_scope_to_one_pool_lists_only_its_servers(chat):
    code, thread = chat("/cms-status POOL02.contoso.com.")
    assert code == 0, thread
    assert set(replica_rows(thread)) == {"fe03.contoso.com", "fe04.contoso.com"}
    assert "in pool02.contoso.com" in thread


def test_hung_host_times_out_alone_within_its_deadline(chat, lab):
    lab.scenarios("hang:fe03.contoso.com")
    started = time.monotonic()
    code, thread = chat("/cms-status")
    elapsed = time.monotonic() - started
    assert code == 1, thread
    assert re.search(r"fe03\.contoso\.com: timed out \[replica-health\]", thread), thread
    # the other servers still reported, and the table is complete
    assert replica_rows(thread)["fe04.contoso.com"] == "True"
    # our deadline ended the hung call (pywinrm alone would wait for ever, until the chat gave up)
    assert elapsed < HOST_DEADLINE + scaled(20), f"took {elapsed:.1f}s with a {HOST_DEADLINE}s host deadline"


def test_unreachable_host_is_reported_as_unreachable(chat, lab):
    lab.scenarios("unreachable:dir01.contoso.com")
    code, thread = chat("/cms-status")
    assert code == 1, thread
    assert re.search(r"dir01\.contoso\.com: unreachable \[replica-health\] - ", thread), thread
    assert "1 server could not be checked" in thread


def test_cms_is_read_from_the_next_cms_server_when_the_first_hangs(chat, lab):
    lab.scenarios("hang:fe01.contoso.com")
    code, thread = chat("/cms-status")
    assert code == 1, thread
    assert "Read on fe02.contoso.com" in thread
    assert re.search(r"fe01\.contoso\.com: timed out \[cms-status\]", thread), thread
    assert len(replica_rows(thread)) == 8


def test_unknown_target_lists_known_names_and_enqueues_nothing(chat, conn):
    before = (len(list(conn.scan_iter(KEYS.request("*")))), len(list(conn.scan_iter("rq:job:*"))))
    code, thread = chat("/cms-status pool99.contoso.com")
    assert code == 2
    assert "`pool99.contoso.com` is not a pool or server of this deployment" in thread
    assert "pool01.contoso.com" in thread and "fe03.contoso.com" in thread
    assert queue(Hub(conn, KEYS), STATUS).count == 0
    after = (len(list(conn.scan_iter(KEYS.request("*")))), len(list(conn.scan_iter("rq:job:*"))))
    assert after == before


def test_no_worker_listening_is_said_at_once(db_url, lab):
    # the test's own database: no worker is registered there
    env = dict(os.environ, REDIS_URL=db_url, CMSBOT_TOPOLOGY=str(lab.topology))
    # at once: well before the chat's own timeout (CMSBOT_CHAT_TIMEOUT, 180 s)
    proc = subprocess.run(cmsbot("chat", "/cms-status"), env=env, capture_output=True, text=True,
                          timeout=scaled(30))
    assert proc.returncode == 2
    assert "No worker is listening" in proc.stdout and "cmsbot worker" in proc.stdout


def test_chat_cli_exit_codes_follow_the_result(lab, worker):
    lab.scenarios("replica-behind:edge01.contoso.com")
    env = worker.env
    proc = subprocess.run(cmsbot("chat", "--user", "U42", "/cms-status"), env=env,
                          capture_output=True, text=True, timeout=scaled(60))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.startswith("U42 > /cms-status")
    lab.scenarios()
    proc = subprocess.run(cmsbot("chat", "/cms-status"), env=env,
                          capture_output=True, text=True, timeout=scaled(60))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_one_shell_per_server_and_few_requests(chat, lab):
    code, _ = chat("/cms-status")
    assert code == 0
    stats = lab.stats()
    assert all(n == 1 for n in stats["shells"].values()), stats["shells"]
    # a server that ran one probe: the two legs of the NTLM handshake, then Create, Command, Receive, Signal,
    # Delete, on one connection
    assert stats["requests"]["fe03.contoso.com"] <= 8, stats["requests"]
    # the CMS Front End's probes share one powershell.exe (one start, one module load): a check costs one
    # probe's time there, not the sum
    front_end = [c["probe"] for c in stats["commands"] if c["server"] == "fe01.contoso.com"]
    assert {"cms-status", "replica-health"} <= set(front_end) and stats["processes"]["fe01.contoso.com"] == 1, stats
    # edges are not reachable over WinRM by design: never contacted
    assert "edge01.contoso.com" not in stats["requests"]


def test_demo_runs_the_whole_pipeline(db_url):
    env = dict(os.environ, REDIS_URL=db_url)
    proc = subprocess.run(cmsbot("demo"), env=env, capture_output=True, text=True, timeout=scaled(90))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = replica_rows(proc.stdout)
    assert set(rows) == {f"{s}.contoso.com" for s in LAB_SERVERS}
    assert "CMS master: fe01.contoso.com" in proc.stdout
    # one failure of each seed scenario, each diagnosed
    for code in ("replica.https-unreachable", "replica.edge-cert-name-mismatch", "replica.share-acl-missing"):
        assert f"[{code}]" in proc.stdout
