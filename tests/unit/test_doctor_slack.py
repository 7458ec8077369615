"""/cms-doctor's pure parts: the doctor's report as a typed result event (through the stream's wire format and
back), the one-line verdict of the parent message, the thread in Block Kit (one line per server not ready with
its first failing check and the fix, the ready servers summarised, long lists split across messages within
Slack's limits, everything cut in the attached table), the console's reading of it, and the command's grammar."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest

from bot.commands import HELP, CommandError, parse
from bot.delivery.console import EXIT_HEALTHY, EXIT_PROBLEMS, ConsoleThread, refusal
from bot.render import blocks
from bot.render import text as render
from cms import doctor as d
from cms.doctor import Check, Checkup, DoctorAnswer, DoctorReport
from cms.messages import Result, Unreadable, from_wire, to_wire
from cms.models import PortTest
from cms.topology import ServerRole, Version
from hub.contract import Event, Request
from tests.unit import recorded as R
from tests.unit.test_render import assert_within_slack_limits, mrkdwn_texts

pytestmark = pytest.mark.unit

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOSTILE = "<!channel> <@U0ADMIN> <https://evil.example/x|click here>"
FE1 = "fe01.contoso.com"


def passed(*names: str) -> list[Check]:
    return [d.ok(n, f"{n} fine") for n in names]


def skipped_after(failed: str) -> list[Check]:
    after = d.CHECKS[d.CHECKS.index(failed) + 1:]
    return [d.skip(n, f"not checked: {failed} failed") for n in after if n != "replica-path"]


def row(server: str, checks: list[Check], role: str = "frontend", pool: str = "pool01.contoso.com") -> Checkup:
    return Checkup(server=server, pool=pool, role=role, checks=checks)


def port_closed(server: str) -> Checkup:
    failed = d.fail("winrm-port", "TCP 127.0.0.1:5985 connects, but the connection closes without an HTTP answer",
                    f"on {server}: `winrm quickconfig`, and allow TCP 5985 in its firewall")
    return row(server, [d.ok("dns", "127.0.0.1 is an address"), failed, *skipped_after("winrm-port")],
               pool="pool02.contoso.com")


def no_rights(server: str) -> Checkup:
    rights = d.grade_rights(DoctorAnswer(identity="CONTOSO\\svc-cmsbot", groups=[]))
    return row(server, [*passed("dns", "winrm-port", "tls", "auth", "powershell", "module", "cmdlets"), rights,
                        d.ok("winrm-limits", "fine")], role="director", pool="dirpool.contoso.com")


def ready(server: str, role: str = "frontend") -> Checkup:
    return row(server, passed(*d.CHECKS), role=role)


def expiring(server: str) -> Checkup:
    tls = d.warn("tls", f"the certificate of {server}:5986 is valid but expires in 12 days",
                 "renew the WinRM listener's certificate")
    return row(server, [d.ok("dns", "resolves"), d.ok("winrm-port", "answers"), tls,
                        *passed(*d.CHECKS[3:])])


def edge_blocked() -> Checkup:
    test = PortTest(fqdn="edge01.contoso.com", address="192.0.2.11", port=4443, connected=False, error="TimedOut")
    path = d.grade_path(test, role=ServerRole.edge, source=FE1, unchecked=None)
    return row("edge01.contoso.com", [*[d.skip(n, "winrm: false in the topology") for n in d.CHECKS[:-1]], path],
               role="edge", pool="edgepool.contoso.com")


def report(servers: list[Checkup], scope: str = "all", notes: list[str] | None = None) -> DoctorReport:
    return DoctorReport(scope=scope, checked_at=AT, servers=servers, notes=notes or [])


# twelve servers, two not ready: the example
TWELVE = report([port_closed("fe03.contoso.com"), no_rights("dir01.contoso.com"),
                 *[ready(f"fe{i:02d}.contoso.com") for i in (1, 2, 4, 5, 6, 7, 8, 9, 10)],
                 expiring("fe11.contoso.com")],
                notes=["replication paths tested from fe01.contoso.com as CONTOSO\\svc-cmsbot"])


def texts(rendered: blocks.Rendered) -> str:
    return "\n".join(t for m in rendered.messages for t in mrkdwn_texts(m.payload()))


# -- the typed event --------------------------------------------------------------------------------------


def test_the_doctors_report_travels_as_a_result_and_comes_back_the_same():
    message = Result(doctor=TWELVE)
    kind, body = to_wire(message)
    assert kind == "result"
    doc = json.loads(body)
    assert set(doc) == {"doctor", "findings"}  # no report, no action; "healthy" is the status report's only
    back = from_wire(kind, body)
    assert back == message and isinstance(back, Result) and back.doctor == TWELVE
    assert back.doctor is not None and [s.ready for s in back.doctor.servers] == [s.ready for s in TWELVE.servers]
    event = Event.from_fields({b"request": b"r1", b"seq": b"3", b"kind": b"result", b"body": body.encode()})
    assert event.terminal and event.message == message  # it ends the thread like any result


def test_a_doctors_result_carries_nothing_else_and_a_bad_one_is_unreadable():
    with pytest.raises(ValueError, match="the doctor's report alone"):
        Result(doctor=TWELVE, report=R.report("healthy"))
    _, body = to_wire(Result(doctor=TWELVE))
    mixed = json.loads(body) | {"report": R.report("healthy").model_dump(mode="json")}
    found = from_wire("result", json.dumps(mixed))
    assert isinstance(found, Unreadable) and "the doctor's report alone" in found.error
    broken = from_wire("result", json.dumps({"doctor": {"scope": "all", "servers": "not a list"}}))
    assert isinstance(broken, Unreadable) and broken.error.startswith("doctor.")
    empty = from_wire("result", "{}")
    assert isinstance(empty, Unreadable) and "or the doctor's report" in empty.error


# -- the parent message's verdict -------------------------------------------------------------------------


def test_the_verdict_counts_the_servers_ready_and_not_ready():
    assert render.doctor_verdict(TWELVE) == "Doctor: 12 servers, 10 ready (1 with a warning), 2 not ready"
    pool = report([port_closed("fe03.contoso.com"), ready("fe04.contoso.com")], scope="pool02.contoso.com")
    assert render.doctor_verdict(pool) == "Doctor (pool02.contoso.com): 2 servers, 1 ready, 1 not ready"
    one = report([ready(FE1)], scope=FE1)
    assert render.doctor_verdict(one) == f"Doctor ({FE1}): 1 server, 1 ready, 0 not ready"


# -- the thread -------------------------------------------------------------------------------------------


def test_each_server_not_ready_is_one_line_with_its_first_failing_check_and_the_fix():
    rendered = blocks.doctor_report(TWELVE)
    assert len(rendered.messages) == 1 and rendered.attachment is None  # nothing was cut
    payload = rendered.messages[0].payload()
    assert_within_slack_limits(payload)
    assert payload["text"] == "Doctor: 12 servers, 10 ready (1 with a warning), 2 not ready"
    assert payload["blocks"][0] == {"type": "header", "text": {"type": "plain_text",
                                                               "text": "cmsbot doctor: is every server ready?"}}
    shown = texts(rendered)
    assert "*Not ready* (2): the first failing check of each server, and its fix" in shown
    lines = shown.splitlines()
    fe03 = lines.index(next(x for x in lines if "`fe03.contoso.com`" in x))
    assert lines[fe03] == (":x: `fe03.contoso.com` (frontend, pool02.contoso.com) · *winrm-port*: TCP "
                           "127.0.0.1:5985 connects, but the connection closes without an HTTP answer")
    assert lines[fe03 + 1].strip() == ("*Fix:* on fe03.contoso.com: `winrm quickconfig`, and allow TCP 5985 in its "
                                       "firewall")
    dir01 = next(x for x in lines if "`dir01.contoso.com`" in x)
    assert "*rights*: CONTOSO\\svc-cmsbot is in neither RTCUniversalServerAdmins nor RTCUniversalReadOnlyAdmins" \
        in dir01
    # only the first failing check of a server: the skipped ones after it are not listed
    assert "not checked: winrm-port failed" not in shown
    # the ready servers: those with a warning one line each, the others by name
    assert "*Ready, with a warning* (1)" in shown
    assert ":warning: `fe11.contoso.com` (frontend, pool01.contoso.com) · *tls*: the certificate of " \
           "fe11.contoso.com:5986 is valid but expires in 12 days" in shown
    ready_line = next(x for x in lines if x.startswith(":white_check_mark: *Ready* (9): "))
    assert ready_line.count("`") == 18 and "`fe01.contoso.com`" in ready_line and "fe03" not in ready_line
    assert "*Notes* (1)" in shown and "replication paths tested from fe01.contoso.com" in shown
    assert "run `/cms-doctor` again" in shown


def test_every_server_ready_says_so_without_a_not_ready_section():
    rendered = blocks.doctor_report(report([ready(FE1), ready("edge01.contoso.com", "edge")]))
    shown = texts(rendered)
    assert "Not ready" not in shown and "run `/cms-doctor` again" not in shown
    assert "*Doctor: 2 servers, 2 ready, 0 not ready*" in shown
    assert ":white_check_mark: *Ready* (2): `fe01.contoso.com`, `edge01.contoso.com`" in shown


def test_a_long_list_is_split_across_messages_within_slack_limits_and_the_rest_is_in_the_file():
    total = blocks.DOCTOR_ROWS_PER_MESSAGE * blocks.DOCTOR_MAX_MESSAGES + 37
    servers = [port_closed(f"fe{i:04d}.contoso.com") for i in range(total)] + [edge_blocked()] \
        + [ready(f"ok{i:03d}.contoso.com") for i in range(blocks.DOCTOR_READY_LISTED + 5)]
    r = report(servers)
    rendered = blocks.doctor_report(r)
    assert len(rendered.messages) == blocks.DOCTOR_MAX_MESSAGES
    for i, message in enumerate(rendered.messages):
        payload = message.payload()
        assert_within_slack_limits(payload)
        shown = "\n".join(mrkdwn_texts(payload))
        assert shown.count(":x: `") == blocks.DOCTOR_ROWS_PER_MESSAGE  # one line per server, 20 to a message
        if i:
            assert payload["text"].endswith(f"(part {i + 1} of {blocks.DOCTOR_MAX_MESSAGES})")
            first = i * blocks.DOCTOR_ROWS_PER_MESSAGE + 1
            assert f"*Not ready, continued* (servers {first}–{first + 19} of {total + 1})" in shown
    shown = texts(rendered)
    listed = blocks.DOCTOR_ROWS_PER_MESSAGE * blocks.DOCTOR_MAX_MESSAGES
    assert f"…and {total + 1 - listed} more servers not ready: all of them are in the attached report." in shown
    assert f"*Ready* ({blocks.DOCTOR_READY_LISTED + 5}): " in shown and "and 5 more" in shown
    # the file has every server, the Edge past the cut included, with its check and fix
    assert rendered.attachment is not None
    assert rendered.attachment == d.table(r)
    edge = next(x for x in rendered.attachment.splitlines() if x.startswith("edge01.contoso.com"))
    assert "NOT READY" in edge and "replica-path" in edge and "allow TCP 4443 from the CMS Front Ends" in edge
    assert f"{blocks.DOCTOR_READY_LISTED + 5} of {len(servers)} servers ready" in rendered.attachment


def test_server_text_is_escaped_and_long_details_are_cut_into_the_file():
    long_fix = "x" * 5000
    hostile = row("fe09.contoso.com", [d.ok("dns", "ok"), d.fail("auth", f"rejected {HOSTILE}", long_fix)])
    rendered = blocks.doctor_report(report([hostile]))
    for message in rendered.messages:
        payload = message.payload()
        assert_within_slack_limits(payload)
        for text in mrkdwn_texts(payload):
            assert "<!channel>" not in text and "<@U0ADMIN>" not in text and "<https://" not in text
    shown = texts(rendered)
    assert "&lt;!channel&gt;" in shown and "… (truncated)" in shown
    assert rendered.attachment is not None and long_fix in rendered.attachment


def test_the_console_prints_the_doctors_table_and_exits_as_the_cli_does():
    out = io.StringIO()
    thread = ConsoleThread(Request(command="/cms-doctor", user="alice"), out)
    _, body = to_wire(Result(doctor=TWELVE))
    thread.deliver(Event.from_fields({b"request": b"r1", b"seq": b"1", b"kind": b"result", b"body": body.encode()}))
    lines = out.getvalue().splitlines()
    assert lines[-1] == "verdict: Doctor: 12 servers, 10 ready (1 with a warning), 2 not ready"
    assert any(x.startswith("  | fe03.contoso.com") and "NOT READY" in x for x in lines)
    assert thread.exit_code == EXIT_PROBLEMS
    thread = ConsoleThread(Request(command="/cms-doctor", user="alice"), io.StringIO())
    _, body = to_wire(Result(doctor=report([ready(FE1)])))
    thread.deliver(Event.from_fields({b"request": b"r1", b"seq": b"1", b"kind": b"result", b"body": body.encode()}))
    assert thread.exit_code == EXIT_HEALTHY


# -- the command ------------------------------------------------------------------------------------------


def test_the_doctors_scope_resolves_against_the_topology_like_the_status_checks():
    topology = R.topology_of("healthy")
    assert parse("/cms-doctor", topology).args == {}
    assert parse("/cms-doctor POOL02.contoso.com.", topology).args == {"target": "pool02.contoso.com"}
    assert parse("/cms-doctor fe03", topology).args == {"target": "fe03.contoso.com"}
    with pytest.raises(CommandError, match="`pool99.contoso.com` is not a pool or server of this deployment"):
        parse("/cms-doctor pool99.contoso.com", topology)
    with pytest.raises(CommandError, match=r"Usage: `/cms-doctor \[pool\|server\]`"):
        parse("/cms-doctor fe01 fe02", topology)
    assert HELP["/cms-doctor"][0] == "/cms-doctor [pool|server]" and "operators" in HELP["/cms-doctor"][1]
    # the console does not run it, and says where it runs
    assert "`cmsbot doctor [pool|server]`" in (refusal("/cms-doctor pool01.contoso.com") or "")


def test_the_powershell_check_in_a_row_is_what_the_doctor_grades():
    """The rows above use the doctor's own graders where they are pure: a row here is what a worker sends."""
    check = d.grade_powershell(DoctorAnswer(ps_version="2.0"), Version.sfb2019)
    r = report([row("fe05.contoso.com", [*passed("dns", "winrm-port", "tls", "auth"), check])])
    assert "*powershell*: Windows PowerShell 2.0 on Skype for Business Server 2019, which needs 3.0 or later" \
        in texts(blocks.doctor_report(r))


def test_the_doctors_job_is_one_a_worker_runs():
    """The bot names the job by its dotted path (hub/jobs.py); the worker runs only the paths it allows."""
    import workers.jobs
    from hub.jobs import DOCTOR_JOB
    from workers.allowed_jobs import ENTRY_POINTS

    assert DOCTOR_JOB in ENTRY_POINTS
    module, _, name = DOCTOR_JOB.rpartition(".")
    assert module == "workers.jobs" and callable(getattr(workers.jobs, name))
