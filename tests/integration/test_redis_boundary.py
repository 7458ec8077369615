"""Redis as a trust boundary: whoever writes to it cannot make a worker run foreign code, a Redis
that refuses our password says so, and the production Redis set-up the README documents works
(an ACL user for the app, a password for everyone, the data of transactions kept over a restart)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis
from rq import Callback
from rq.webhook import Webhook

from cms.settings import Settings
from hub.contract import CHANGE, STATUS, claim, queue
from hub.jobs import PREFLIGHT_JOB, STATUS_JOB
from hub.keys import hub_for
from tests.harness import RedisServer, cmsbot, scaled, wait_idle, wait_until

ROOT = Path(__file__).resolve().parents[2]
FOREIGN_CALLBACK = "tests.integration.foreign_code.drop_marker"
OURS = {STATUS: STATUS_JOB, CHANGE: PREFLIGHT_JOB}  # one of our entry points for each queue


class _Hooks:
    """A local HTTP endpoint that counts the requests it gets (a job's webhooks would arrive here)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_worker_runs_only_cms_chatops_jobs_on_each_queue(worker, chat, tmp_path):
    """Anyone who can write to Redis could enqueue any dotted path, with any callbacks and webhooks,
    on either queue: the worker refuses the function and the callbacks before importing them, sends
    no webhook, logs each as a security event, and goes on serving."""
    # the foreign callback is importable where the worker runs: only the guard keeps it from running
    assert subprocess.run([sys.executable, "-c", f"import {FOREIGN_CALLBACK.rsplit('.', 1)[0]}"],
                          capture_output=True).returncode == 0
    hooks = _Hooks()
    conn = redis.Redis.from_url(worker.redis_url)
    hub = hub_for(conn, Settings(redis_url=worker.redis_url))
    expected: list[str] = []
    jobs, markers = [], []

    def enqueue(q, func: str, arg: str, marker: Path):
        markers.append(marker)
        job = q.enqueue_call(func, args=(arg,), meta={"marker": str(marker)},
                             on_failure=Callback(FOREIGN_CALLBACK), on_success=Callback(FOREIGN_CALLBACK),
                             webhooks=[Webhook(hooks.url, "failed"), Webhook(hooks.url, "finished")])
        jobs.append(job)
        expected.append(f"ERROR cmsbot.security: security: ignored the webhooks of job {job.id} ({hooks.url})")
        return job

    try:
        for kind in (STATUS, CHANGE):
            q = queue(hub, kind)
            ran = tmp_path / f"{kind}-os-system"
            markers.append(ran)
            job = enqueue(q, "os.system", f"touch {ran}", tmp_path / f"{kind}-foreign")
            expected += [f"ERROR cmsbot.security: security: refused job {job.id}: 'os.system' is not a cms-chatops job",
                         f"security: ignored the failure callback '{FOREIGN_CALLBACK}' of job {job.id}"]
            # our own entry point on a request that does not exist: it fails, its failure callback is foreign
            job = enqueue(q, OURS[kind], f"r-missing-{kind}", tmp_path / f"{kind}-fails")
            expected.append(f"security: ignored the failure callback '{FOREIGN_CALLBACK}' of job {job.id}")
            # ... on a request that already ran: it ends without work, its success callback is foreign
            assert claim(hub, f"r-done-{kind}")
            job = enqueue(q, OURS[kind], f"r-done-{kind}", tmp_path / f"{kind}-succeeds")
            expected.append(f"security: ignored the success callback '{FOREIGN_CALLBACK}' of job {job.id}")
        wait_idle(worker.redis_url)
        # each line is written where the callback or the webhook would have run: once there, it is settled
        wait_until(lambda: all(line in worker.text() for line in expected), 20,
                   f"security lines missing from the worker's log: {[x for x in expected if x not in worker.text()]}")
        assert [j.get_status(refresh=True) for j in jobs] == ["failed", "failed", "finished"] * 2
        assert [m.name for m in markers if m.exists()] == []
        assert hooks.hits == []
    finally:
        hooks.close()
    code, _ = chat("/cms-status")  # the worker goes on with real work
    assert code == 0


# -- a Redis that refuses our password ---------------------------------------------------------

PASSWORD = "the-right-password"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("locked-redis"), requirepass=PASSWORD)
    assert server.owned, "needs a redis-server binary"
    yield server
    assert not server.stop(), "redis-server had to be killed"


def _run(args: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(cmsbot(*args), env=env, capture_output=True, text=True, timeout=scaled(timeout))


def _env(lab, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("CMSBOT_") or k.startswith("REDIS_URL"))}
    env.update(CMSBOT_TOPOLOGY=str(lab.topology), CMSBOT_NAMESPACE=f"locked-{time.monotonic_ns()}",
               CMSBOT_SLACK_BOT_TOKEN="xoxb-test", CMSBOT_SLACK_SIGNING_SECRET="test-secret",
               CMSBOT_TEST_SESSION=os.environ.get("CMSBOT_TEST_SESSION", ""), **more)
    return env


@pytest.mark.parametrize("command", [["bot"], ["worker"], ["chat", "/cms-status"]])
@pytest.mark.parametrize("password, answer", [("", "NOAUTH"), ("a-wrong-one", "WRONGPASS")])
def test_a_refused_password_is_reported_as_such(locked_redis, lab, command, password, answer):
    port = locked_redis.url.rsplit(":", 1)[1].split("/")[0]
    url = f"redis://{':' + password + '@' if password else ''}127.0.0.1:{port}/0"
    started = time.monotonic()
    proc = _run(command, _env(lab, REDIS_URL=url))
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert answer in out and "does not answer" not in out, out
    assert f"Redis at redis://127.0.0.1:{port}/0" in out and "a-wrong-one" not in out, out
    assert elapsed < scaled(15), f"{elapsed:.1f} s: a refused password must not be retried"


def test_the_right_password_from_a_file_gets_through(locked_redis, lab, tmp_path):
    """REDIS_URL_FILE (a Docker secret): the URL, password included, never in the environment."""
    secret = tmp_path / "redis_url"
    secret.write_text(locked_redis.url + "\n")
    env = _env(lab, REDIS_URL_FILE=str(secret))
    proc = _run(["worker", "--burst"], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run(["chat", "/cms-status"], env)  # past Redis: it looks for a worker (the burst one has gone)
    assert proc.returncode == 2 and "No worker is listening" in proc.stdout, proc.stdout + proc.stderr
    assert _run(["audit"], _env(lab, REDIS_URL_FILE=str(tmp_path / "missing"))).stderr.startswith(
        f"cmsbot: configuration error: REDIS_URL_FILE: cannot read {tmp_path / 'missing'}")


# -- the production set-up the README documents --------------------------------------------------


def _readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(re.escape(marker) + r".*?\n```sh\n(.*?)```", text, re.S)
    assert m, f"no shell block after {marker!r} in README.md"
    return m.group(1)


def test_the_documented_redis_acl_works_and_keeps_transactions_over_a_restart(lab, tmp_path):
    """README's commands make the secret files; Redis started with that ACL file (and AOF, as in
    docker-compose.yml) lets the app work as `cmsbot` and nothing more, asks everyone else for a
    password, answers the health check, and after a restart still has what the app wrote inside
    transactions (Redis replays the AOF as `default`, which therefore keeps its rights)."""
    script = _readme_block("<!-- compose secrets:")
    subprocess.run(["bash", "-euc", script], cwd=tmp_path, check=True, timeout=60)
    acl, url_file = tmp_path / "secrets" / "redis_users.acl", tmp_path / "secrets" / "redis_url"
    app_url = url_file.read_text().strip()
    assert re.fullmatch(r"redis://cmsbot:[0-9a-f]{64}@redis:6379/0", app_url)
    app = app_url.split("//", 1)[1].split("@", 1)[0]
    server = RedisServer(tmp_path, durable=True, args=("--aclfile", str(acl)), auth=app)
    try:
        local = server.url  # the app's user and password, this server's port
        url_file.write_text(local + "\n")
        env = _env(lab, REDIS_URL_FILE=str(url_file))
        proc = _run(["worker", "--burst"], env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        c = redis.Redis.from_url(local)
        for refused in (c.flushall, lambda: c.config_set("appendonly", "no"), lambda: c.keys("*"),
                        lambda: c.execute_command("ACL", "LIST")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        from hub.cms_lock import durability
        assert durability(hub_for(c, Settings(redis_url=local))).persistent is True  # INFO is allowed
        port = local.rsplit(":", 1)[1].split("/")[0]
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        health = redis.Redis(port=port, username="healthcheck", password="healthcheck")
        assert health.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            health.get("x")
        pipe = c.pipeline(transaction=True)  # MULTI ... EXEC, as the hub writes
        pipe.hset("probe:tx", "written", "in a transaction").sadd("probe:set", "x")
        pipe.execute()
        c.close()
        assert not server.stop()
        server.start()
        c = redis.Redis.from_url(local)
        assert c.hget("probe:tx", "written") == b"in a transaction" and c.smembers("probe:set") == {b"x"}
    finally:
        server.stop()
