"""Telemetry's pure parts: the JSON log lines and their request id, the slash commands' outcomes and ack
times, what a job's result gives the metrics, the delivery lag, and the pages /metrics, /healthz and
/readyz answer. (The deployment's state read from Redis, and the processes serving all of it, are
tests/integration/test_telemetry.py's.)"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import tests.unit.recorded as R
from cms import logs
from hub import telemetry


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def log_lines():
    """A logger writing JSON lines into a buffer; returns (logger, a function giving the lines so far)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.formatter("json"))
    logger = logging.getLogger("cmsbot.test-telemetry")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    yield logger, lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    logger.removeHandler(handler)


def test_a_json_line_carries_time_level_logger_message_and_the_request_id_while_one_is_set(log_lines):
    logger, lines = log_lines
    logger.info("outside %s", "any request")
    with logs.request("r0123456789abcdef"):
        logger.warning("Slack is busy; will retry event %s/%d — ünïcode", "r0123456789abcdef", 3)
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    logger.info("after it")
    outside, busy, failed, after = lines()
    assert set(outside) == {"time", "level", "logger", "message", "process"}
    assert outside["level"] == "INFO" and outside["logger"] == "cmsbot.test-telemetry"
    assert outside["message"] == "outside any request" and outside["time"].endswith("+00:00")
    assert busy["request_id"] == "r0123456789abcdef" and busy["level"] == "WARNING"
    assert busy["message"] == "Slack is busy; will retry event r0123456789abcdef/3 — ünïcode"
    assert failed["request_id"] == "r0123456789abcdef" and "ValueError: boom" in failed["exception"]
    assert "request_id" not in after


def test_text_is_the_default_format():
    assert not isinstance(logs.formatter(None), logs.JsonFormatter)
    assert not isinstance(logs.formatter("text"), logs.JsonFormatter)
    assert isinstance(logs.formatter("JSON"), logs.JsonFormatter)


def test_a_slash_command_is_counted_with_what_it_came_to_and_its_ack_timed():
    started = _value("cmsbot_requests_total", command="/cms-status", outcome="started")
    answered = _value("cmsbot_requests_total", command="/cms-help", outcome="answered")
    errors = _value("cmsbot_requests_total", command="/cms-status", outcome="error")
    acks = _value("cmsbot_ack_seconds_count", command="/cms-status")
    with telemetry.command("/cms-status") as handled:
        telemetry.outcome("invalid")  # the last noted wins
        telemetry.outcome("started")
    assert handled.outcome == "started" and handled.seconds > 0
    with telemetry.command("/cms-help"):
        pass
    with pytest.raises(RuntimeError), telemetry.command("/cms-status"):
        raise RuntimeError("a bug")
    telemetry.outcome("started")  # outside a command (a button, the console): nothing to note it in
    assert _value("cmsbot_requests_total", command="/cms-status", outcome="started") == started + 1
    assert _value("cmsbot_requests_total", command="/cms-help", outcome="answered") == answered + 1
    assert _value("cmsbot_requests_total", command="/cms-status", outcome="error") == errors + 1
    assert _value("cmsbot_ack_seconds_count", command="/cms-status") == acks + 2


def test_a_status_result_carries_its_host_errors_by_kind_and_the_replicas_behind():
    assert telemetry.report_summary(R.report("share-acl-missing+unreachable")) == {
        "host_error_kinds": {"unreachable": 1}, "replicas_behind": 1}
    assert telemetry.report_summary(R.report("oversize")) == {"host_error_kinds": {"probe_failed": 2},
                                                              "replicas_behind": 0}
    # the CMS could not be read: how many replicas are behind is not known (not 0)
    assert telemetry.report_summary(R.report("cms-readers-unreachable"))["replicas_behind"] is None


def test_a_job_that_ended_is_timed_and_its_host_errors_counted_only_by_known_kinds():
    jobs = _value("cmsbot_job_seconds_count", kind="status", outcome="finished")
    unreachable = _value("cmsbot_host_errors_total", kind="unreachable")
    summary = telemetry.report_summary(R.report("cms-readers-unreachable"))  # 4 servers unreachable
    telemetry.job_ended("status", "finished", 2.5, {"healthy": False, **summary})
    # what Redis hands back is not trusted to name a series: unknown kinds and odd counts are left out
    telemetry.job_ended("status", "finished", 1.0, {"host_error_kinds": {"x" * 300: 1, "unreachable": "9"}})
    telemetry.job_ended("status", "failed", 1.0, None)
    assert _value("cmsbot_job_seconds_count", kind="status", outcome="finished") == jobs + 2
    assert _value("cmsbot_host_errors_total", kind="unreachable") == unreachable + 4
    assert _value("cmsbot_host_errors_total", kind="x" * 300) == 0


def test_the_delivery_lag_is_counted_from_the_stream_entry_id():
    before = _value("cmsbot_slack_delivery_lag_seconds_count", kind="result")
    within_60 = _value("cmsbot_slack_delivery_lag_seconds_bucket", kind="result", le="60.0")
    within_300 = _value("cmsbot_slack_delivery_lag_seconds_bucket", kind="result", le="300.0")
    appended = int((time.time() - 90) * 1000)  # appended 90 s ago
    telemetry.delivered("result", f"{appended}-0".encode())
    telemetry.delivered("not-a-kind", f"{appended}-1")
    assert _value("cmsbot_slack_delivery_lag_seconds_count", kind="result") == before + 1
    assert _value("cmsbot_slack_delivery_lag_seconds_bucket", kind="result", le="60.0") == within_60
    assert _value("cmsbot_slack_delivery_lag_seconds_bucket", kind="result", le="300.0") == within_300 + 1
    assert _value("cmsbot_slack_delivery_lag_seconds_count", kind="other") >= 1


def _page(path: str, ready: telemetry.Ready) -> tuple[int, str, bytes]:
    found = telemetry.page(path, REGISTRY, ready)
    assert found is not None, path
    return found


def test_the_pages_liveness_readiness_and_metrics():
    assert _page("/healthz", lambda: "Redis does not answer")[:2] == (200, "text/plain; charset=utf-8")
    status, _, body = _page("/readyz", lambda: "Redis does not answer")
    assert (status, body) == (503, b"not ready: Redis does not answer\n")
    assert _page("/readyz", lambda: None)[0] == 200
    status, content_type, body = _page("/metrics", lambda: None)
    assert status == 200 and content_type.startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"cmsbot_requests", "cmsbot_ack_seconds", "cmsbot_job_seconds", "cmsbot_host_errors"} <= names
    assert telemetry.page("/slack/events", REGISTRY, lambda: None) is None


def test_the_readme_names_every_metric_and_outcome():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    telemetry_section = readme.split("## Telemetry", 1)[1].split("\n## ", 1)[0]
    recorded = [m._name for m in (telemetry.REQUESTS, telemetry.ACK_SECONDS, telemetry.JOB_SECONDS,
                                  telemetry.HOST_ERRORS, telemetry.DELIVERY_FAILURES, telemetry.DELIVERY_LAG)]
    fleet = ["cmsbot_redis_up", "cmsbot_queue_depth", "cmsbot_pending_approvals", "cmsbot_open_incidents",
             "cmsbot_replicas_behind", "cmsbot_events_waiting", "cmsbot_delivery_problems_total"]
    for name in [*recorded, *fleet]:
        assert f"`{name}" in telemetry_section, name
    for outcome in telemetry.OUTCOMES:
        assert f"`{outcome}`" in telemetry_section, outcome
    for variable in ("CMSBOT_METRICS_PORT", "CMSBOT_METRICS_HOST", "CMSBOT_LOG_FORMAT"):
        assert variable in telemetry_section and f"| `{variable}` |" in readme, variable


def test_the_bot_removes_the_metrics_directories_of_bots_killed_before_they_could(tmp_path):
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                              check=True)
    dead = tmp_path / f"cmsbot-metrics-{finished.stdout.strip()}-abc123"  # its bot was killed (SIGKILL, OOM)
    live = tmp_path / f"cmsbot-metrics-{os.getpid()}-def456"  # a bot that runs (this process stands in for it)
    other = tmp_path / "cmsbot-metrics-of-someone-else"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"")
    code = "from hub import telemetry; print(telemetry.multiprocess())"
    made = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=dict(os.environ, TMPDIR=str(tmp_path)), cwd=Path(__file__).resolve().parents[2])
    assert not dead.exists() and live.exists() and other.exists()
    new = Path(made.stdout.strip())
    assert new.parent == tmp_path and new.name.startswith("cmsbot-metrics-") and new.is_dir()
