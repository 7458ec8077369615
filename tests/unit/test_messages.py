"""The typed messages between the processes: every kind survives the stream's wire format, and an
event a reader cannot read (an unknown kind, a malformed body) never stops the thread."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from bot.delivery.console import EXIT_CANNOT_RUN, EXIT_HEALTHY, EXIT_PROBLEMS, ConsoleThread
from cms.messages import (
    KINDS,
    Accepted,
    ActionOutcome,
    ApprovalChanged,
    Failed,
    IncidentOpened,
    IncidentResolved,
    IncidentUpdated,
    Message,
    OncallFailed,
    PreflightReady,
    Progress,
    Result,
    Unreadable,
    WatchResumed,
    WatchSkipped,
    to_wire,
)
from cms.models import (
    CmsStatus,
    Evidence,
    Finding,
    HostError,
    HostErrorKind,
    ReplicaStatus,
    Severity,
    StatusReport,
    StoreStatus,
)
from cms.watch import Incident
from hub.contract import Event, Request

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FE = "fe01.contoso.com"

FINDING = Finding(code="replica.https-unreachable", severity=Severity.error, subject="edge01.contoso.com",
                  summary="the CMS cannot reach edge01.contoso.com over HTTPS 4443",
                  evidence=[Evidence(text="Event 1017", source="FTA log", at=AT)], fix=["open TCP 4443"])
REPORT = StatusReport(
    checked_at=AT, scope="deployment", servers=[FE, "edge01.contoso.com"], cms_source=FE,
    cms=CmsStatus(store=StoreStatus(active_master_fqdn=FE, active_file_transfer_agents=[FE]),
                  replicas=[ReplicaStatus(fqdn=FE, up_to_date=True, last_status_report=AT),
                            ReplicaStatus(fqdn="edge01.contoso.com", up_to_date=False)],
                  collected_at=AT),
    findings=[FINDING],
    host_errors=[HostError(server="fe02.contoso.com", kind=HostErrorKind.unreachable, reason="refused")])
INCIDENT = Incident(id="i0123456789abcde", key="replica/edge01.contoso.com", problem="replica",
                    subject="edge01.contoso.com", causes=("replica.https-unreachable",), severity=Severity.error,
                    summary=FINDING.summary, findings=(FINDING,), first_seen=AT, opened_at=AT)
ACTION = ActionOutcome(kind="reseed", target="fe03.contoso.com", ok=True, text="re-seeded: fe03 is up to date now",
                       changes=["fe03.contoso.com: UpToDate True"])

EVERY_KIND: list[Message] = [
    Accepted(queue="status"),
    Accepted(queue="change", text="started: Start-CsWindowsService -Name REPLICA on fe03.contoso.com"),
    Progress(text="3 of 7 servers answered", done=3, total=7),
    Progress(text="reading the current state"),
    Result(report=REPORT),
    Result(action=ACTION, report=REPORT),
    Result(action=ActionOutcome(kind="failover", target="pool02.contoso.com", ok=False, text="the cmdlet failed"),
           findings=[FINDING]),
    Failed(reason="not done: another CMS change is running (CMS recovery in pool01.contoso.com)"),
    PreflightReady(approval="a1b2c3"),
    ApprovalChanged(approval="a1b2c3", outcome="approved", by="U123"),
    ApprovalChanged(approval="a1b2c3", outcome="expired"),
    # the watch (cms/watch.py)
    IncidentOpened(incident=INCIDENT),
    IncidentUpdated(incident=INCIDENT, before_causes=("replica.behind",), before_severity=Severity.warning),
    IncidentResolved(incident=INCIDENT, resolved_at=datetime(2024, 5, 1, 12, 42, tzinfo=UTC)),
    WatchSkipped(reason="a CMS change is running (normal failover)", since=AT),
    WatchResumed(reason="a CMS change is running (normal failover)", since=AT,
                 until=datetime(2024, 5, 1, 12, 30, tzinfo=UTC), runs=6),
    OncallFailed(target="PagerDuty", action="trigger", reason="HTTP 400 invalid event"),
]


def stream_fields(message: Message, request: str = "r1", seq: int = 1) -> dict[bytes | str, bytes | str]:
    """What XRANGE / XREADGROUP give back for an appended event (the connection does not decode)."""
    kind, body = to_wire(message)
    return {b"request": request.encode(), b"seq": str(seq).encode(), b"kind": kind.encode(), b"body": body.encode()}


def raw_event(kind: str, body: str, seq: int = 1) -> Event:
    return Event.from_fields({b"request": b"r1", b"seq": str(seq).encode(), b"kind": kind.encode(),
                              b"body": body.encode()})


@pytest.mark.parametrize("message", EVERY_KIND, ids=lambda m: m.kind)
def test_every_kind_comes_back_from_the_stream_as_the_same_message(message):
    event = Event.from_fields(stream_fields(message, seq=4))
    assert (event.request, event.seq, event.kind) == ("r1", 4, message.kind)
    assert event.message == message
    assert type(event.message) is type(message)


def test_every_kind_that_exists_is_covered():
    assert {m.kind for m in EVERY_KIND} == KINDS


def test_the_body_on_the_wire_is_the_json_the_readers_of_raw_streams_expect():
    """The stream keeps its fields: kind apart, the body without it; absent optional fields stay absent."""
    assert json.loads(stream_fields(Failed(reason="not executed: x"))[b"body"]) == {"reason": "not executed: x"}
    assert json.loads(stream_fields(Accepted(queue="status"))[b"body"]) == {"queue": "status"}
    assert json.loads(stream_fields(ApprovalChanged(approval="a", outcome="expired"))[b"body"]) == \
        {"approval": "a", "outcome": "expired"}
    result = json.loads(stream_fields(Result(action=ACTION, report=REPORT))[b"body"])
    assert result["healthy"] is False and result["action"]["kind"] == "reseed"
    assert result["report"] == REPORT.model_dump(mode="json")
    assert "healthy" not in json.loads(stream_fields(Result(action=ACTION))[b"body"])


@pytest.mark.parametrize(("kind", "body", "says"), [
    ("celebrate", '{"text": "a kind from a newer worker"}', "unknown kind 'celebrate'"),
    ("progress", '{"done": 1}', "text: Field required"),
    ("result", "{}", "a report, an action's outcome or both"),
    ("result", '{"report": {"servers": "not a list"}}', "report."),
    ("failed", "not json at all", "not JSON"),
    ("failed", '["a", "list"]', "not a JSON object"),
    ("preflight", "", "approval: Field required"),
])
def test_an_event_that_cannot_be_read_is_unreadable_and_says_why(kind, body, says):
    event = raw_event(kind, body)
    assert isinstance(event.message, Unreadable)
    assert event.message.kind == kind and says in event.message.error


def test_a_body_with_fields_this_reader_does_not_know_is_still_read():
    assert raw_event("failed", '{"reason": "boom", "added_later": 1}').message == Failed(reason="boom")


# -- the console thread, which prints the same thread as Slack, as text ---------------------


def console(*messages: Message | tuple[str, str]) -> tuple[ConsoleThread, list[str]]:
    out = io.StringIO()
    thread = ConsoleThread(Request(command="/cms-status", user="alice"), out)
    for seq, m in enumerate(messages, 1):
        event = raw_event(*m, seq=seq) if isinstance(m, tuple) else Event.from_fields(stream_fields(m, seq=seq))
        assert thread.deliver(event) is True  # always done with the event: never retried forever
    return thread, out.getvalue().splitlines()


def test_the_console_prints_progress_then_the_report_and_its_verdict():
    thread, lines = console(Accepted(queue="status"), Progress(text="1 of 2 servers answered", done=1, total=2),
                            Result(report=REPORT))
    assert lines[0] == "  | 1 of 2 servers answered"
    assert lines[-1].startswith("verdict: ") and thread.report == REPORT
    assert thread.exit_code == EXIT_PROBLEMS


def test_the_console_prints_an_actions_outcome():
    thread, lines = console(Result(action=ACTION))
    assert lines == [f"  | {ACTION.text}"] and thread.exit_code == EXIT_HEALTHY


def test_the_console_prints_a_failure():
    thread, lines = console(Failed(reason="the worker stopped"))
    assert lines == ["  | FAILED: the worker stopped", "verdict: FAILED"] and thread.exit_code == EXIT_CANNOT_RUN


def test_an_unknown_kind_is_skipped_and_the_thread_goes_on():
    thread, lines = console(("celebrate", "{}"), Progress(text="still here"))
    assert lines == ["  | still here"] and thread.exit_code is None


def test_an_unreadable_last_event_ends_the_thread_as_failed_instead_of_waiting_forever():
    thread, lines = console(Progress(text="working"), ("result", '{"report": 42}'))
    assert lines[1].startswith("  | FAILED: this bot cannot read the result event the worker sent (report")
    assert lines[-1] == "verdict: FAILED" and thread.exit_code == EXIT_CANNOT_RUN
