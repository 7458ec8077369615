"""The watch's decisions (cms/watch.py), pure: the time is passed in, so grace periods, flapping and
resolution are tested by moving it by hand. Reports are the lab's recorded ones where a scenario
has one, built by hand where the point is one field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cms.knowledge import FindingCode
from cms.models import (
    CmsStatus,
    Finding,
    HostError,
    HostErrorKind,
    ReplicaHealth,
    ReplicaStatus,
    ServiceState,
    Severity,
    StatusReport,
    StoreStatus,
)
from cms.watch import (
    CMS_UNREADABLE,
    DEPLOYMENT,
    Page,
    Policy,
    Resolved,
    WatchSchedule,
    WatchState,
    decide,
    incident_id,
    lasted,
    observe,
    open_incidents,
    skip,
)
from tests.unit import recorded as R

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FE01, FE03, FE04, EDGE = "fe01.contoso.com", "fe03.contoso.com", "fe04.contoso.com", "edge02.contoso.com"
SERVERS = [FE01, "fe02.contoso.com", FE03, FE04, "edge01.contoso.com", EDGE, "dir01.contoso.com", "med01.contoso.com"]
GRACE = Policy()  # 15 min grace, resolved on the first clean run, pages from error up


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def finding(code: FindingCode, subject: str, severity: Severity = Severity.error, summary: str | None = None) -> Finding:
    return Finding(code=code, severity=severity, subject=subject, summary=summary or f"{code.value} on {subject}")


def report(*findings: Finding, servers: list[str] = SERVERS, cms: bool = True,
           host_errors: list[HostError] = (), health: list[str] = SERVERS) -> StatusReport:  # type: ignore[assignment]
    at = T0
    return StatusReport(
        scope="all", checked_at=at, servers=servers, pools={s: "pool" for s in SERVERS},
        cms=CmsStatus(collected_at=at, store=StoreStatus(active_master_fqdn=FE01, active_file_transfer_agents=[FE01]),
                      replicas=[ReplicaStatus(fqdn=s, up_to_date=True) for s in servers]) if cms else None,
        health=[ReplicaHealth(fqdn=s, collected_at=at, services={"REPLICA": ServiceState.running}) for s in health
                if s in servers],
        host_errors=list(host_errors), findings=list(findings))


HEALTHY = report()
BEHIND = report(finding(FindingCode.replica_behind, FE03))
STOPPED = report(finding(FindingCode.replica_replica_stopped, FE03))
PENDING = report(finding(FindingCode.replica_pending, FE04, Severity.pending))


def run(state: WatchState, r: StatusReport, at: datetime, policy: Policy = GRACE):
    d = decide(state, r, at, policy)
    return d.state, [a.kind for a in d.actions], [p.action for p in d.pages], d


# -- what one report shows -------------------------------------------------------------------------------


def test_a_recorded_failure_is_one_problem_keyed_by_its_family_and_server():
    (obs,) = observe(R.report("replica-behind"))
    assert (obs.key, obs.causes, obs.severity, obs.transient, obs.immediate) == \
        ("replica/dir01.contoso.com", ("replica.behind",), Severity.error, False, False)
    assert str(obs.fingerprint) == "replica/dir01.contoso.com#replica.behind"


def test_the_findings_of_one_replica_are_one_problem_whose_cause_names_them_all():
    (obs,) = observe(report(finding(FindingCode.replica_replica_stopped, FE03),
                            finding(FindingCode.replica_smb_unreachable, FE03, Severity.warning)))
    assert obs.key == f"replica/{FE03}" and obs.causes == ("replica.replica-stopped", "replica.smb-unreachable")
    assert obs.severity is Severity.error and len(obs.findings) == 2 and "and 1 more finding" in obs.summary


def test_a_deployment_level_problem_is_about_the_deployment_and_opens_at_once():
    for name in ("cms-unavailable", "cms-pool-down", "both-active"):
        obs = [o for o in observe(R.report(name)) if o.problem == "cms"]
        assert [(o.subject, o.immediate, o.severity) for o in obs] == [(DEPLOYMENT, True, Severity.critical)], name


def test_a_cms_no_server_could_read_is_the_deployment_level_problem_with_its_own_cause():
    errors = [HostError(server=FE01, kind=HostErrorKind.timed_out, reason="no answer in 30 s", probe="cms-status")]
    obs = observe(report(cms=False, host_errors=errors))
    cms = next(o for o in obs if o.problem == "cms")
    assert cms.causes == (CMS_UNREADABLE,) and cms.immediate and cms.severity is Severity.critical
    assert "could not be read" in cms.summary and "fe01.contoso.com (cms-status): timed out" in \
        cms.findings[0].evidence[0].text


def test_transient_states_are_the_pending_replica_and_the_server_that_did_not_answer():
    (pending,) = observe(R.report("transient"))
    assert pending.transient and pending.severity is Severity.pending
    unreachable = observe(R.report("unreachable"))
    assert [(o.key, o.causes, o.transient) for o in unreachable] == [
        ("check/fe02.contoso.com", ("host.unreachable",), True), ("check/fe04.contoso.com", ("host.unreachable",), True)]


# -- an incident: open, quiet, updated, resolved, recurring -------------------------------------------------


def test_the_life_of_an_incident():
    state, actions, pages, d = run(WatchState(), BEHIND, minutes(0))
    assert actions == ["open"] and pages == ["trigger"]
    opened = d.actions[0].incident
    assert opened.key == f"replica/{FE03}" and opened.causes == ("replica.behind",) and opened.findings

    for n in (5, 10, 15):  # it persists: nothing more is said
        state, actions, pages, _ = run(state, BEHIND, minutes(n))
        assert (actions, pages) == ([], [])

    state, actions, pages, d = run(state, STOPPED, minutes(20))  # the cause changed
    assert actions == ["update"] and pages == ["update"]
    update = d.actions[0]
    assert update.before_causes == ("replica.behind",) and update.incident.causes == ("replica.replica-stopped",)
    assert update.incident.id == opened.id
    state, actions, pages, _ = run(state, STOPPED, minutes(25))
    assert (actions, pages) == ([], [])

    state, actions, pages, d = run(state, HEALTHY, minutes(42))  # fixed
    assert actions == ["resolve"] and pages == ["resolve"]
    resolved = d.actions[0]
    assert isinstance(resolved, Resolved) and resolved.incident.id == opened.id
    assert lasted(resolved.lasted.total_seconds()) == "42 min"
    assert state.tracked == {}

    state, actions, pages, d = run(state, BEHIND, minutes(60))  # it came back: a new incident
    assert actions == ["open"] and pages == ["trigger"] and d.actions[0].incident.id != opened.id


def test_a_report_started_before_the_newest_one_applied_changes_nothing():
    """Two runs overlap (two schedules): they commit in the order they finish, not the order they looked."""
    state, _, _, _ = run(WatchState(), BEHIND, minutes(0))
    newer = decide(state, HEALTHY, minutes(12), GRACE, started=minutes(10))  # started later, finished first
    assert [a.kind for a in newer.actions] == ["resolve"]
    older = decide(newer.state, BEHIND, minutes(13), GRACE, started=minutes(5))  # still saw fe03 behind
    assert (older.actions, older.pages, older.state) == ((), (), newer.state)
    after = decide(newer.state, BEHIND, minutes(20), GRACE, started=minutes(15))  # a later look: it is back
    assert [a.kind for a in after.actions] == ["open"]


def test_a_severity_change_alone_is_an_update():
    state = run(WatchState(), BEHIND, minutes(0))[0]
    worse = report(finding(FindingCode.replica_behind, FE03, Severity.critical))
    state, actions, pages, d = run(state, worse, minutes(5))
    assert actions == ["update"] and d.actions[0].before_severity is Severity.error
    assert d.actions[0].incident.severity is Severity.critical


def test_two_problems_are_two_incidents_and_resolve_apart():
    both = report(finding(FindingCode.replica_behind, FE03), finding(FindingCode.replica_https_unreachable, EDGE))
    state, actions, _, _ = run(WatchState(), both, minutes(0))
    assert actions == ["open", "open"] and len(open_incidents(state)) == 2
    state, actions, _, d = run(state, BEHIND, minutes(5))
    assert actions == ["resolve"] and d.actions[0].incident.subject == EDGE
    assert [t.subject for t in open_incidents(state)] == [FE03]


def test_the_deployment_level_problem_opens_at_once_and_pages():
    _, actions, pages, d = run(WatchState(), R.report("cms-unavailable"), minutes(0))
    assert actions == ["open"] and pages == ["trigger"]
    assert d.actions[0].incident.key == "cms/deployment" and d.actions[0].incident.severity is Severity.critical


# -- grace: transient states alert only when they outlive it ------------------------------------------------


def test_a_transient_state_shorter_than_the_grace_never_alerts():
    state = WatchState()
    for n in (0, 5, 10, 14):
        state, actions, pages, _ = run(state, PENDING, minutes(n))
        assert (actions, pages) == ([], [])
    assert state.tracked[f"replica/{FE04}"].incident is None  # tracked quietly
    state, actions, pages, _ = run(state, HEALTHY, minutes(16))
    assert (actions, pages) == ([], []) and state.tracked == {}


def test_a_transient_state_that_outlives_the_grace_opens_then():
    state = run(WatchState(), PENDING, minutes(0))[0]
    state, actions, _, _ = run(state, PENDING, minutes(14))
    assert actions == []
    state, actions, pages, d = run(state, PENDING, minutes(15))
    assert actions == ["open"] and pages == []  # pending is below the paging severity
    assert d.actions[0].incident.first_seen == minutes(0) and d.actions[0].incident.opened_at == minutes(15)


def test_the_grace_is_a_setting():
    state = run(WatchState(), PENDING, minutes(0), Policy(grace=timedelta(minutes=2)))[0]
    _, actions, _, _ = run(state, PENDING, minutes(2), Policy(grace=timedelta(minutes=2)))
    assert actions == ["open"]
    _, actions, _, _ = run(WatchState(), PENDING, minutes(0), Policy(grace=timedelta(0)))
    assert actions == ["open"]


def test_a_transient_state_that_turns_into_an_error_opens_at_once():
    state = run(WatchState(), report(finding(FindingCode.replica_pending, FE03, Severity.pending)), minutes(0))[0]
    _, actions, pages, _ = run(state, BEHIND, minutes(3))
    assert actions == ["open"] and pages == ["trigger"]


def test_a_server_that_does_not_answer_alerts_only_once_it_has_lasted_the_grace():
    down = report(host_errors=[HostError(server=FE03, kind=HostErrorKind.unreachable, reason="refused")],
                  health=[s for s in SERVERS if s != FE03])
    state, actions, _, _ = run(WatchState(), down, minutes(0))
    assert actions == []
    state, actions, pages, d = run(state, down, minutes(15))
    assert actions == ["open"] and pages == [] and d.actions[0].incident.key == f"check/{FE03}"
    _, actions, _, _ = run(state, HEALTHY, minutes(20))
    assert actions == ["resolve"]


# -- flapping -------------------------------------------------------------------------------------------------


def test_a_flapping_transient_state_never_alerts_its_grace_restarting_each_time_it_clears():
    state = WatchState()
    for n in range(0, 120, 5):
        state, actions, _, _ = run(state, PENDING if n % 10 == 0 else HEALTHY, minutes(n))
        assert actions == []


def test_a_flapping_error_resolves_and_reopens_each_time_by_default():
    state, opened = WatchState(), []
    for n, r in enumerate([BEHIND, HEALTHY, BEHIND, HEALTHY, BEHIND]):
        state, actions, _, d = run(state, r, minutes(5 * n))
        assert actions == (["open"] if r is BEHIND else ["resolve"])
        opened += [a.incident.id for a in d.of("open")]
    assert len(set(opened)) == 3


def test_clear_after_damps_flapping_into_one_incident():
    damped = Policy(clear_after=timedelta(minutes=10))
    state, actions, _, d = run(WatchState(), BEHIND, minutes(0), damped)
    first = d.actions[0].incident.id
    for n, r in [(5, HEALTHY), (8, BEHIND), (12, HEALTHY), (20, HEALTHY)]:  # gone 5-8: back before 10 min
        state, actions, pages, _ = run(state, r, minutes(n), damped)
        assert (actions, pages) == ([], []), n
    state, actions, pages, d = run(state, HEALTHY, minutes(22), damped)  # gone since 12: 10 min now
    assert actions == ["resolve"] and pages == ["resolve"] and d.actions[0].incident.id == first
    assert lasted(d.actions[0].lasted.total_seconds()) == "22 min"


# -- what a run cannot see is neither present nor gone --------------------------------------------------------


def test_an_incident_outside_the_scope_of_a_run_is_kept():
    state = run(WatchState(), BEHIND, minutes(0))[0]
    pool01 = report(servers=[FE01, "fe02.contoso.com"])
    state, actions, _, _ = run(state, pool01, minutes(5))
    assert actions == [] and len(open_incidents(state)) == 1


def test_replica_incidents_are_kept_while_the_cms_cannot_be_read():
    state = run(WatchState(), BEHIND, minutes(0))[0]
    unreadable = report(cms=False, host_errors=[HostError(server=FE01, kind=HostErrorKind.unreachable,
                                                          reason="down", probe="cms-status")])
    state, actions, pages, d = run(state, unreadable, minutes(5))
    assert actions == ["open"] and d.actions[0].incident.key == "cms/deployment" and pages == ["trigger"]
    assert {t.key for t in open_incidents(state)} == {f"replica/{FE03}", "cms/deployment"}


def test_a_service_incident_is_kept_while_its_server_does_not_answer():
    stopped = report(finding(FindingCode.cms_service_stopped, FE01))
    state = run(WatchState(), stopped, minutes(0))[0]
    silent = report(host_errors=[HostError(server=FE01, kind=HostErrorKind.timed_out, reason="30 s")],
                    health=[s for s in SERVERS if s != FE01])
    state, actions, _, _ = run(state, silent, minutes(5))
    assert "resolve" not in actions and f"cms-service/{FE01}" in state.tracked
    _, actions, _, _ = run(state, HEALTHY, minutes(10))
    assert actions == ["resolve"]


# -- paging -----------------------------------------------------------------------------------------------------


def test_on_call_is_paged_from_its_severity_up_and_told_of_the_resolve_only_when_paged():
    warning = report(finding(FindingCode.replica_replica_stopped, FE03, Severity.warning))
    state, actions, pages, _ = run(WatchState(), warning, minutes(0))
    assert actions == ["open"] and pages == []
    state, actions, pages, _ = run(state, STOPPED, minutes(5))  # now an error: the first page is a trigger
    assert actions == ["update"] and pages == ["trigger"]
    state, actions, pages, _ = run(state, warning, minutes(10))  # paged: on-call hears of changes
    assert pages == ["update"]
    _, actions, pages, _ = run(state, HEALTHY, minutes(15))
    assert pages == ["resolve"]

    state = run(WatchState(), warning, minutes(0))[0]
    _, actions, pages, _ = run(state, HEALTHY, minutes(5))
    assert actions == ["resolve"] and pages == []  # never paged: nothing to resolve there


def test_page_at_is_a_setting():
    warning = report(finding(FindingCode.replica_replica_stopped, FE03, Severity.warning))
    _, _, pages, _ = run(WatchState(), warning, minutes(0), Policy(page_at=Severity.warning))
    assert pages == ["trigger"]
    _, _, pages, _ = run(WatchState(), BEHIND, minutes(0), Policy(page_at=Severity.critical))
    assert pages == []


def test_each_page_has_its_own_idempotency_id():
    state, _, _, d1 = run(WatchState(), BEHIND, minutes(0))
    state, _, _, d2 = run(state, STOPPED, minutes(5))
    state, _, _, d3 = run(state, BEHIND, minutes(10))
    _, _, _, d4 = run(state, HEALTHY, minutes(15))
    ids = [p.id for d in (d1, d2, d3, d4) for p in d.pages]
    incident = d1.actions[0].incident.id
    assert ids[0] == f"{incident}:trigger" and ids[-1] == f"{incident}:resolve" and len(set(ids)) == 4


# -- the notice that the watch is not looking --------------------------------------------------------------------


def test_skipped_runs_say_so_once_and_the_next_run_says_it_resumed():
    state = run(WatchState(), BEHIND, minutes(0))[0]
    d = skip(state, "a CMS change is running (failover)", minutes(5))
    assert [a.kind for a in d.actions] == ["skip"] and d.pages == ()
    notice = d.actions[0].notice
    for n in (10, 15, 20):
        d = skip(d.state, "a CMS change is running (failover)", minutes(n))
        assert d.actions == ()
    assert d.state.skipping.runs == 4 and len(open_incidents(d.state)) == 1  # what was open stays open
    state, actions, pages, d = run(d.state, BEHIND, minutes(25))
    assert actions == ["resume"] and pages == [] and d.actions[0].notice == notice and d.actions[0].runs == 4
    assert d.state.skipping is None
    d = skip(state, "cooldown", minutes(30))
    assert [a.kind for a in d.actions] == ["skip"] and d.actions[0].notice != notice  # a new series, a new notice


# -- the invariants, over any sequence of observations ---------------------------------------------------------

STATES = st.sampled_from(["healthy", "pending", "behind", "stopped", "warning", "unseen"])
SAMPLES = {"healthy": HEALTHY, "pending": PENDING.model_copy(update={"findings": [
    finding(FindingCode.replica_pending, FE03, Severity.pending)]}), "behind": BEHIND, "stopped": STOPPED,
    "warning": report(finding(FindingCode.replica_replica_stopped, FE03, Severity.warning)),
    "unseen": report(servers=[FE01])}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(STATES, st.integers(min_value=1, max_value=20)), min_size=1, max_size=30),
       st.integers(min_value=0, max_value=30), st.integers(min_value=0, max_value=15))
def test_any_history_keeps_the_invariants(history, grace, clear_after):
    policy = Policy(grace=timedelta(minutes=grace), clear_after=timedelta(minutes=clear_after))
    state, at, open_id, paged = WatchState(), T0, None, False
    pending_since = None
    for name, step in history:
        at += timedelta(minutes=step)
        if name == "pending":
            pending_since = pending_since or at
        elif name != "unseen":  # seen not pending: a pending streak ends (unseen: nobody knows)
            pending_since = None
        d = decide(state, SAMPLES[name], at, policy)
        kinds = [a.kind for a in d.actions]
        assert len(kinds) <= 1  # one key: one action at most
        for a in d.actions:
            if a.kind == "open":
                assert open_id is None, "a second incident opened while one was open"
                open_id = a.incident.id
                if name == "pending":
                    assert pending_since is not None and at - pending_since >= policy.grace
            elif a.kind in ("update", "resolve"):
                assert a.incident.id == open_id
                if a.kind == "resolve":
                    assert name not in ("pending", "behind", "stopped", "warning", "unseen")
                    open_id = None
        for p in d.pages:
            assert p.incident.id == (open_id or p.incident.id)
            if p.action == "trigger":
                assert not paged
                paged = True
            else:
                assert paged, "on-call heard of an update or a resolve without a trigger"
                if p.action == "resolve":
                    paged = False
        if name in ("behind", "stopped"):
            assert open_id is not None, "an error that is seen is always an open incident"
        state = d.state


# -- small things --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seconds, said", [(0, "0 s"), (45, "45 s"), (89, "89 s"), (90, "2 min"), (42 * 60, "42 min"),
                                           (119 * 60, "119 min"), (2 * 3600, "2 h"), (3 * 3600 + 300, "3 h 5 min"),
                                           (50 * 3600, "2 d 2 h"), (-5, "0 s")])
def test_lasted_says_a_duration_as_people_do(seconds, said):
    assert lasted(seconds) == said


def test_an_incident_id_is_the_same_for_the_same_key_and_time():
    assert incident_id("replica/x", T0) == incident_id("replica/x", T0) != incident_id("replica/x", minutes(1))


@pytest.mark.parametrize("line, ok", [({"scope": "*", "cron": "*/5 * * * *"}, True),
                                      ({"scope": "pool02.contoso.com", "cron": "0 * * * 1-5"}, True),
                                      ({"cron": "* * * * *"}, True),
                                      ({"scope": "*", "cron": "*/5 * * *"}, False),
                                      ({"scope": "two words", "cron": "* * * * *"}, False),
                                      ({"scope": "", "cron": "* * * * *"}, False)])
def test_a_schedule_line_is_a_scope_and_five_cron_fields(line, ok):
    if ok:
        assert WatchSchedule(**line).cron
    else:
        with pytest.raises(ValueError):
            WatchSchedule(**line)


def test_a_page_for_an_update_is_named_by_what_changed():
    state = run(WatchState(), BEHIND, minutes(0))[0]
    d = decide(state, STOPPED, minutes(5), GRACE)
    inc = d.actions[0].incident
    a = Page(action="update", incident=inc, at=minutes(5))
    b = Page(action="update", incident=inc.model_copy(update={"causes": ("replica.behind",)}), at=minutes(5))
    assert a.id != b.id and a.id.startswith(f"{inc.id}:update:")
