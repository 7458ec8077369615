"""Telemetry of the real processes: /metrics of the bot (HTTP and Socket Mode) and of a worker after a
/cms-status went through them, /healthz and /readyz (503 while Redis is down, 200 again after), the
deployment's state read from Redis at scrape time, and the JSON log lines that carry one request id from
the slash command through the worker's job to the Slack calls that deliver its events."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from cms.messages import Progress
from cms.settings import Settings
from hub import approvals, telemetry
from hub.contract import Request, append_event, submit
from hub.jobs import STATUS_JOB
from hub.keys import hub_for
from lab.processes import free_port
from lab.slack_bot import CHANNEL, OPERATOR, SECRET, TOKEN
from tests.harness import HOST_DEADLINE, LAB_PASSWORD, Managed, WorkerProcess, cmsbot, stop_cleanly, wait_until
from tests.slack_support import BotProcess, wait_for_verdict

# -- reading what they answer -------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:  # not listening (yet)
        return 0, str(e)


def _answered(url: str) -> tuple[int, str] | None:
    """The answer, once something listens there."""
    status, text = _get(url)
    return (status, text) if status else None


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def _value(text: str, name: str, **labels: str) -> float | None:
    """The sample `name` with exactly these labels, or None when there is none."""
    found = [v for n, ls, v in _samples(text) if n == name and ls == labels]
    return found[0] if found else None


def _metrics(port: int) -> str:
    status, text = _get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200, text
    return text


def _json_lines(path: Path) -> list[dict]:
    """The log's JSON lines (a process also prints a few plain lines of its own, e.g. `listening on`)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def _worker(tmp_path: Path, url: str, topology: Path, port: int) -> WorkerProcess:
    return WorkerProcess(tmp_path, url, topology, host_deadline=str(HOST_DEADLINE), metrics_port=str(port),
                         metrics_host="127.0.0.1", log_format="json")


# -- the deployment's state, read from Redis at scrape time ----------------------------------------


def test_the_fleet_collector_reads_the_deployments_state_from_redis(db_url):
    from bot.delivery.reporter import Reporter

    settings = Settings(redis_url=db_url, namespace="telemetry-fleet")
    hub = hub_for(redis.Redis.from_url(db_url), settings)
    for user in ("U1", "U2"):  # no worker on this database: the jobs wait in the queue
        submit(hub, Request(command="/cms-status", user=user), STATUS_JOB, kind="status", timeout=60)
    approvals.create(hub, kind="failover", plan={"target": "pool02"}, checks=[], requester="U1", request="r1",
                     needed=1, ttl=60, blocked=False)
    telemetry.note_status(hub, {"replicas_behind": 3, "host_error_kinds": {}})
    Reporter.ensure_group(hub, "slack", "0")
    append_event(hub, "r1", Progress(text="checking"))
    append_event(hub, "r1", Progress(text="still checking"))
    hub.redis.hincrby(hub.keys.delivery_counts, "given_up", 2)

    registry = CollectorRegistry()
    registry.register(telemetry.Fleet(hub))
    text = generate_latest(registry).decode()
    assert _value(text, "cmsbot_redis_up") == 1
    assert _value(text, "cmsbot_queue_depth", queue="status") == 2
    assert _value(text, "cmsbot_queue_depth", queue="change") == 0
    assert _value(text, "cmsbot_pending_approvals") == 1
    assert _value(text, "cmsbot_open_incidents") == 0
    assert _value(text, "cmsbot_replicas_behind") == 3
    assert time.time() - (_value(text, "cmsbot_replicas_behind_checked_timestamp_seconds") or 0) < 600
    assert _value(text, "cmsbot_events_waiting", group="slack") == 2
    assert _value(text, "cmsbot_delivery_problems_total", reason="given_up") == 2

    # another namespace on the same database sees none of it
    other = CollectorRegistry()
    other.register(telemetry.Fleet(hub_for(redis.Redis.from_url(db_url), Settings(namespace="telemetry-other"))))
    text = generate_latest(other).decode()
    assert _value(text, "cmsbot_queue_depth", queue="status") == 0 and _value(text, "cmsbot_replicas_behind") is None

    # Redis not answering: the scrape still succeeds, and says so
    gone = CollectorRegistry()
    gone.register(telemetry.Fleet(hub_for(redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0",
                                                               socket_connect_timeout=1), settings)))
    text = generate_latest(gone).decode()
    assert _value(text, "cmsbot_redis_up") == 0 and _value(text, "cmsbot_queue_depth", queue="status") is None


# -- a /cms-status through the real bot and a real worker ------------------------------------------


def test_a_status_check_moves_the_counters_and_one_request_id_runs_through_the_json_logs(fake, edge_lab, db_url,
                                                                                        tmp_path):
    from hub.contract import id_for_delivery

    fake.reset()
    edge_lab.scenarios("unreachable:fe04.contoso.com", "replica-behind:fe03.contoso.com")
    worker_port = free_port()
    worker = bot = None
    try:
        worker = _worker(tmp_path, db_url, edge_lab.topology, worker_port)
        bot = BotProcess(tmp_path, db_url, edge_lab.topology, fake, log_format="json")
        fake.fail("chat.postMessage", status=503, times=2)  # the parent, and the client's own retry: held, retried
        status, ack = bot.command("/cms-status", trigger="telemetry-status-1")
        assert status == 200, ack
        wait_for_verdict(fake, timeout=60)
        request_id = id_for_delivery("T0001", "telemetry-status-1")

        # the bot: the command, its ack, its events' delivery (the reporter's, summed in the same /metrics)
        text = _metrics(bot.port)
        assert (_value(text, "cmsbot_requests_total", command="/cms-status", outcome="started") or 0) >= 1
        assert (_value(text, "cmsbot_ack_seconds_count", command="/cms-status") or 0) >= 1
        wait_until(lambda: (_value(_metrics(bot.port), "cmsbot_slack_delivery_lag_seconds_count",  # noqa: B023
                                   kind="result") or 0) >= 1, 30, "the reporter's delivery was not counted")
        text = _metrics(bot.port)
        assert (_value(text, "cmsbot_slack_delivery_failures_total", reason="unavailable") or 0) >= 1
        # the parent waited for Slack's retry: its `accepted` event was not delivered within 0.5 s
        assert (_value(text, "cmsbot_slack_delivery_lag_seconds_bucket", kind="accepted", le="0.5") or 0) == 0
        assert (_value(text, "cmsbot_slack_delivery_lag_seconds_count", kind="accepted") or 0) == 1
        assert _value(text, "cmsbot_queue_depth", queue="status") == 0
        assert _value(text, "cmsbot_redis_up") == 1

        # the worker: the job, once its main process has seen the work-horse end
        def job_counted() -> str:  # its /metrics once they count the job, else "" (not yet)
            text = _metrics(worker_port)
            return text if (_value(text, "cmsbot_job_seconds_count", kind="status", outcome="finished") or 0) else ""

        on_worker = wait_until(job_counted, 30, "the worker did not count the status job")
        assert (_value(on_worker, "cmsbot_host_errors_total", kind="unreachable") or 0) >= 1
        assert _value(on_worker, "cmsbot_queue_depth", queue="status") == 0
        assert (_value(on_worker, "cmsbot_replicas_behind") or 0) >= 1  # the deployment's state: on every process
        assert _value(_metrics(bot.port), "cmsbot_replicas_behind") == _value(on_worker, "cmsbot_replicas_behind")

        # one request id, from the slash command to the last Slack call
        bot_lines, worker_lines = _json_lines(bot.log), _json_lines(worker.log)
        assert any(line["logger"] == "cmsbot.slack" and line.get("request_id") == request_id
                   and line["message"].startswith("/cms-status: started") for line in bot_lines), bot_lines
        ours = [line for line in worker_lines if line.get("request_id") == request_id]
        assert any(f"job {request_id} (status): finished" in line["message"] for line in ours), worker_lines
        assert len({line["process"] for line in ours}) == 2, "the work-horse's lines carry it too"
        delivered = [line for line in bot_lines if line.get("request_id") == request_id
                     and line["logger"] == "cmsbot.bot" and "delivered" in line["message"]]
        assert any("(result) delivered" in line["message"] for line in delivered), bot_lines
        assert len({line["process"] for line in bot_lines if line.get("request_id") == request_id}) >= 2
        # no secret in any line
        assert not any(s in bot.text() for s in (SECRET, TOKEN)) and LAB_PASSWORD not in worker.text()
    finally:
        edge_lab.scenarios()
        if worker is not None:
            worker.terminate()
        stop_cleanly(*(p for p in (bot, worker) if p is not None))


# -- health: alive, ready, and not ready while Redis is down ----------------------------------------


def test_readyz_turns_503_while_redis_is_down_and_200_once_it_is_back(fake, edge_lab, durable_redis, tmp_path):
    fake.reset()
    worker_port, bot_metrics_port = free_port(), free_port()
    worker = bot = None
    try:
        worker = _worker(tmp_path, durable_redis.url, edge_lab.topology, worker_port)
        bot = BotProcess(tmp_path, durable_redis.url, edge_lab.topology, fake, metrics_port=str(bot_metrics_port),
                         metrics_host="127.0.0.1")
        ports = {"the bot's HTTP port": bot.port, "the bot's metrics port": bot_metrics_port,
                 "the worker": worker_port}

        def all_answer(path: str, status: int) -> bool:
            return all(_get(f"http://127.0.0.1:{p}{path}")[0] == status for p in ports.values())

        wait_until(lambda: all_answer("/readyz", 200), 30, "not ready")
        assert all_answer("/healthz", 200)
        assert _get(f"http://127.0.0.1:{bot.port}/nothing")[0] == 404

        durable_redis.stop()
        wait_until(lambda: all_answer("/readyz", 503), 30, "still ready without Redis")
        assert all_answer("/healthz", 200)  # alive: nothing to restart
        status, why = _get(f"http://127.0.0.1:{worker_port}/readyz")
        assert "Redis does not answer" in why
        for port in (bot_metrics_port, worker_port):  # the scrape works and says Redis did not answer
            assert _value(_metrics(port), "cmsbot_redis_up") == 0
        # with a metrics port of its own, /metrics is not served on the port Slack reaches
        assert _get(f"http://127.0.0.1:{bot.port}/metrics")[0] == 404

        durable_redis.start()
        wait_until(lambda: all_answer("/readyz", 200), 60, "not ready again after Redis came back")
    finally:
        if worker is not None:
            worker.terminate()
        stop_cleanly(*(p for p in (bot, worker) if p is not None))


def test_socket_mode_serves_its_metrics_and_is_ready_only_once_connected(fake, edge_lab, db_url, tmp_path):
    fake.reset()
    fake.fail("apps.connections.open", error="invalid_auth", times=1000)  # Slack keeps the app out, for now
    port = free_port()
    env = dict(os.environ, REDIS_URL=db_url, CMSBOT_TOPOLOGY=str(edge_lab.topology), CMSBOT_SLACK_BOT_TOKEN=TOKEN,
               CMSBOT_SLACK_APP_TOKEN="xapp-test-token", CMSBOT_SLACK_API_URL=fake.base_url,
               CMSBOT_SLACK_OPERATORS=OPERATOR, CMSBOT_SLACK_CHANNELS=CHANNEL, CMSBOT_LOG_LEVEL="INFO",
               CMSBOT_METRICS_PORT=str(port), CMSBOT_METRICS_HOST="127.0.0.1")
    env.pop("CMSBOT_SLACK_SIGNING_SECRET", None)
    bot = Managed(cmsbot("bot"), env, tmp_path / "socket-bot.log")
    try:
        answer = wait_until(lambda: _answered(f"http://127.0.0.1:{port}/readyz"), 30,
                            "the Socket Mode bot serves no /readyz")
        assert answer == (503, "not ready: not connected to Slack\n")
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200

        fake.reset()  # Slack lets it in
        wait_until(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, "not ready once connected")
        command = {"envelope_id": "env-telemetry", "type": "slash_commands", "accepts_response_payload": True,
                   "payload": {"token": "legacy", "team_id": "T0001", "team_domain": "contoso", "channel_id": CHANNEL,
                               "channel_name": "ops", "user_id": OPERATOR, "user_name": "operator",
                               "command": "/cms-status", "text": "", "api_app_id": "A0001", "response_url": "",
                               "trigger_id": "trig-telemetry"}}
        wait_until(lambda: fake.socket_send(command), 10, "no connection")
        wait_until(lambda: (_value(_metrics(port), "cmsbot_requests_total", command="/cms-status",
                                   outcome="started") or 0) >= 1, 30, "the command was not counted")
        assert (_value(_metrics(port), "cmsbot_queue_depth", queue="status") or 0) == 1  # no worker here
    finally:
        stop_cleanly(bot)
