"""The App Home and /cms-history, pure: a report read per pool (cms/verdicts.py), the Home view
(bot/render/home.py: valid Block Kit through slack_sdk.models, every group filled or saying something
useful when empty, inside Slack's 100 blocks however large the deployment) and the history's answer."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from slack_sdk.models.views import View

from bot.render import home as render
from cms.models import (
    CmsStatus,
    Finding,
    HostError,
    HostErrorKind,
    ReplicaStatus,
    Severity,
    StatusReport,
    StoreStatus,
)
from cms.verdicts import Outcome, PoolVerdict, pool_verdicts
from hub.home import Activity, HistoryEntry, Home, PendingApproval, PoolRow
from hub.incidents import WATCH_USER, OpenIncident
from hub.schedule import ScheduledRun

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
P1, P2, P3 = "pool01.contoso.com", "pool02.contoso.com", "edgepool.contoso.com"
LINK = "https://contoso.slack.com/archives/C0OPS/p1700000000000100"


def report(*, behind: tuple[str, ...] = (), errors: tuple[str, ...] = (), cms: bool = True,
           findings: tuple[Finding, ...] = ()) -> StatusReport:
    pools = {"fe01.contoso.com": P1, "fe02.contoso.com": P1, "fe03.contoso.com": P2, "edge01.contoso.com": P3}
    servers = list(pools)
    replicas = [ReplicaStatus(fqdn=s, up_to_date=s not in behind) for s in servers]
    return StatusReport(
        scope="all", checked_at=NOW, servers=servers, pools=pools,
        cms=CmsStatus(collected_at=NOW, replicas=replicas,
                      store=StoreStatus(active_master_fqdn=P1, active_file_transfer_agents=[P1])) if cms else None,
        findings=list(findings),
        host_errors=[HostError(server=s, kind=HostErrorKind.unreachable, reason="no route") for s in errors])


def finding(subject: str, severity: Severity = Severity.error) -> Finding:
    return Finding(code="replica.behind", severity=severity, subject=subject, summary=f"{subject} is behind")


# -- a report read per pool ----------------------------------------------------------------------


def test_each_pool_gets_its_own_verdict_from_one_report():
    verdicts = {v.pool: v for v in pool_verdicts(
        report(behind=("fe03.contoso.com",), errors=("edge01.contoso.com",),
               findings=(finding("fe03.contoso.com"), finding("fe03.contoso.com", Severity.warning))),
        request="r1", by="U0OPERATOR")}
    assert list(verdicts) == [P1, P2, P3]
    assert verdicts[P1].outcome is Outcome.ok and verdicts[P1].text == "2/2 replicas up to date"
    assert verdicts[P2].outcome is Outcome.problems
    assert verdicts[P2].text == "0/1 replicas up to date; 1 error; 1 warning"
    assert verdicts[P3].outcome is Outcome.incomplete and verdicts[P3].text == "1/1 replicas up to date; 1 server not checked"
    assert {(v.request, v.by, v.checked_at) for v in verdicts.values()} == {("r1", "U0OPERATOR", NOW)}


def test_a_finding_about_the_whole_cms_counts_against_every_pool_and_pending_ones_do_not():
    cms_wide = finding("Central Management Store", Severity.critical)
    verdicts = pool_verdicts(report(findings=(cms_wide, finding("fe01.contoso.com", Severity.pending))))
    assert all(v.outcome is Outcome.problems and v.text.endswith("; 1 critical") for v in verdicts)


def test_a_check_that_could_not_read_the_cms_fails_every_pool():
    verdicts = pool_verdicts(report(cms=False))
    assert {(v.outcome, v.text) for v in verdicts} == {(Outcome.failed, "the CMS could not be read")}


# -- the Home --------------------------------------------------------------------------------------


def full_home(pools: int = 3, incidents: int = 1, activity: int = 1, approvals: int = 1, runs: int = 1,
              paused: str | None = None) -> Home:
    names = [P1, P2, P3] if pools == 3 else [f"pool{i:03d}.contoso.com" for i in range(pools)]
    rows = [PoolRow(P1, PoolVerdict(pool=P1, outcome=Outcome.ok, text="2/2 replicas up to date",
                                    checked_at=NOW - timedelta(minutes=5), request="r1", by="U0OPERATOR"), LINK),
            PoolRow(P2, PoolVerdict(pool=P2, outcome=Outcome.problems, text="0/1 replicas up to date; 1 error",
                                    checked_at=NOW - timedelta(minutes=1)), None)]
    rows += [PoolRow(n, None, None) for n in names[len(rows):]]
    return Home(
        pools=rows[:pools],
        incidents=[OpenIncident(id=f"i{n}", key=f"replica/fe{n:02d}", subject=f"fe{n:02d}.contoso.com",
                                summary="fe03 is behind the CMS <!channel>", severity="error",
                                causes=("replica.behind",), opened_at=NOW - timedelta(hours=2), channel="C0ALERTS",
                                thread_ts="1700000000.000100", link=LINK) for n in range(incidents)],
        activity=[Activity(id=f"r{n}", command="/cms-status", args={"target": P1}, user="U0VIEWER",
                           running=n == 0, since=NOW - timedelta(seconds=20), link=LINK) for n in range(activity)],
        approvals=[PendingApproval(id=f"a{n}", kind="failover", requester="U0OPERATOR", needed=1, approvers=(),
                                   expires=NOW + timedelta(minutes=25), plan={"source": P1, "target": P2},
                                   link=LINK) for n in range(approvals)],
        runs=[ScheduledRun(scope="*", cron="*/5 * * * *", next_run=NOW + timedelta(minutes=3), scheduled=True)
              for _ in range(runs)],
        paused=paused, at=NOW)


def view_text(view: View) -> str:
    return json.dumps(view.to_dict(), ensure_ascii=False)


def sections_under(view: View, title: str) -> list[str]:
    """The texts of the blocks between the header `title` and the next divider."""
    out, inside = [], False
    for b in view.to_dict()["blocks"]:
        if b["type"] == "header":
            inside = b["text"]["text"] == title
        elif b["type"] == "divider":
            inside = False
        elif inside:
            out.append(b["text"]["text"] if b["type"] == "section" else b["elements"][0]["text"])
    return out


def test_the_home_shows_every_group_filled_for_the_viewer():
    view = render.home_view(full_home(), "U0APPROVER", can_approve=True)
    assert view.type == "home"
    View(**view.to_dict()).validate_json()  # what Slack gets parses back into a valid view
    pools = sections_under(view, "Last verdict per pool")
    assert pools[0].startswith(f":large_green_circle: *{P1}*: 2/2 replicas up to date\nchecked 11:55 UTC (5 min ago) "
                               "by <@U0OPERATOR>") and f"<{LINK}|thread>" in pools[0]
    assert pools[1].startswith(f":red_circle: *{P2}*: 0/1 replicas up to date; 1 error") and "by the watch" in pools[1]
    assert pools[2] == f":white_circle: *{P3}*: not checked yet. `/cms-status {P3}` checks it."
    (incident,) = sections_under(view, "Open incidents")
    assert "fe00.contoso.com" in incident and "&lt;!channel&gt;" in incident and "<!channel>" not in incident
    assert "open since 10:00 UTC (2 h ago)" in incident and f"<{LINK}|thread>" in incident
    (running,) = sections_under(view, "Running now")
    assert running.startswith(f":arrows_counterclockwise: *status check* of `{P1}`\nrunning · asked by <@U0VIEWER>")
    (card,) = sections_under(view, "Approvals waiting")
    assert f"*CMS failover* from `{P1}` to `{P2}` requested by <@U0OPERATOR>" in card
    assert "0 of 1 approvals · expires 12:25 UTC (in 25 min) · you can approve or deny it on its card" in card
    assert f"<{LINK}|open the card>" in card
    (run,) = sections_under(view, "Next scheduled run")
    assert run == ":calendar: the whole deployment: next 12:03 UTC (in 3 min) · cron `*/5 * * * *`"
    assert "For <@U0APPROVER>" in view_text(view)


def test_what_the_viewer_may_do_about_a_card_depends_on_who_they_are():
    home = full_home()
    assert "your request: another approver has to decide" in view_text(render.home_view(home, "U0OPERATOR"))
    assert "an approver has to decide" in view_text(render.home_view(home, "U0VIEWER", can_approve=False))


def test_empty_groups_say_something_useful():
    view = render.home_view(full_home(incidents=0, activity=0, approvals=0, runs=0), "U0VIEWER")
    assert sections_under(view, "Open incidents") == [":white_check_mark: No open incidents."]
    assert sections_under(view, "Running now") == ["Nothing is running: no check or change is in flight or queued."]
    assert sections_under(view, "Approvals waiting") == ["No approval card is waiting."]
    assert "set `CMSBOT_WATCH` and run `cmsbot watch`" in sections_under(view, "Next scheduled run")[0]


def test_a_paused_watch_and_a_schedule_nobody_runs_are_said():
    home = full_home(paused="a CMS change is running (normal failover)")
    home.runs[0] = ScheduledRun(scope=P2, cron="0 6 * * 1-5", next_run=NOW + timedelta(hours=18), scheduled=False)
    view = render.home_view(home, "U0VIEWER")
    assert sections_under(view, "Open incidents")[0].startswith(":double_vertical_bar: The watch is paused: a CMS")
    (run,) = sections_under(view, "Next scheduled run")
    assert f"`{P2}`: next 2026-11-22 06:00 UTC (in 18 h)" in run and "no `cmsbot watch` is running" in run


def test_a_huge_deployment_stays_within_slacks_limits_and_counts_what_it_leaves_out():
    view = render.home_view(full_home(pools=400, incidents=60, activity=80, approvals=20, runs=30), "U0VIEWER")
    d = view.to_dict()
    assert len(d["blocks"]) <= 100
    assert all(len(b["text"]["text"]) <= 3000 for b in d["blocks"] if b["type"] == "section")
    assert f"…and {400 - render.MAX_POOLS} more pools." in view_text(view)
    assert f"…and {60 - render.MAX_INCIDENTS} more open incidents." in view_text(view)
    assert f"…and {80 - render.MAX_ACTIVITY} more checks and changes." in view_text(view)


def test_only_the_bots_own_links_become_links():
    home = full_home()
    home.pools[0] = PoolRow(P1, home.pools[0].verdict, "https://evil.example/x|<!channel>")
    text = sections_under(render.home_view(home, "U0VIEWER"), "Last verdict per pool")[0]
    assert "evil" not in text and "thread" not in text


# -- /cms-history ----------------------------------------------------------------------------------


def entry(what: str, minutes: int, **kw) -> HistoryEntry:
    fields = dict(at=NOW - timedelta(minutes=minutes), request="r1", who="U0OPERATOR", what=what, target=P1,
                  result="ok", detail=None, link=None)
    fields.update(kw)
    return HistoryEntry(**fields)  # type: ignore[arg-type]


def test_the_history_lists_each_entry_with_when_who_what_outcome_and_thread():
    entries = [entry("status", 1, detail=f"{P1}: 2/2 replicas up to date", link=LINK),
               entry("incident", 30, who=WATCH_USER, target="fe03.contoso.com", result="resolved",
                     detail="fe03 is behind <@U123>"),
               entry("approve", 90, target=None, result="approved", who="U0APPROVER"),
               entry("preflight:failover", 95, target=None, result="ready", detail='[{"name": "x"}]')]
    payload = render.history_message(entries, P1, NOW, 15).payload()
    lines = [b["text"]["text"] for b in payload["blocks"] if b["type"] == "section"]
    assert lines[0].startswith(f"*History of `{P1}`*: the last 4 checks, changes, decisions and incidents")
    assert lines[1] == (f":mag: `11:59 UTC (60 s ago)` *check* of `{P1}` by <@U0OPERATOR>: *ok*\n"
                        f"{P1}: 2/2 replicas up to date · <{LINK}|thread>")
    assert lines[2].startswith(":rotating_light: `11:30 UTC (30 min ago)` *incident* of `fe03.contoso.com` by the "
                               "watch: *resolved*") and "&lt;@U123&gt;" in lines[2]
    assert "*approval* of the whole deployment by <@U0APPROVER>: *approved*" in lines[3]
    assert "*failover preflight*" in lines[4] and "[{" not in lines[4]  # a JSON detail is not shown
    assert len(payload["blocks"]) <= 50


def test_an_empty_history_says_how_to_start_one():
    payload = render.history_message([], None, NOW, 15).payload()
    assert "No check, change or incident recorded for the whole deployment yet" in json.dumps(payload)
    assert "`/cms-status` runs a check" in json.dumps(payload)
