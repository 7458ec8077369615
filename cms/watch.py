"""The watch: what one scheduled status check means for the alert channel and for on-call. Pure.

`decide(state, report, now, policy)` takes what the watch knew before (the problems it tracks and
the incidents it has open), the new report and the time, and returns the new state and the
actions: open an incident, post an update in its thread, resolve it, or nothing. `skip(...)` is
the same for a run that did not look (a CMS change is running). No clock, no I/O: the caller
passes `now`, so grace periods and flapping are tested by moving time by hand.

What is one problem, and when is it the same problem:

- A finding's **fingerprint** is `code + server + cause`: the *problem* it is part of (its code's
  family: `replica` for everything that keeps one replica from being current, `cms` for the
  deployment-level "no active master" / "two active pools" / "the CMS cannot be read", ...), the
  server (or pool) it is about, and the *cause*: the finding codes the diagnosis named. The
  problem and the server make the **incident key** (`replica/fe03.contoso.com`): one incident per
  key, the on-call systems' dedup key / alias. The cause may change while the problem lasts
  (`replica.behind`, then `replica.replica-stopped` once the server answers again): that is an
  update in the incident's thread, not a new incident.
- A problem whose findings are all transient (`replica.pending`: UpToDate is legitimately False
  for minutes after a change; a server that could not be reached over WinRM this time) is tracked
  quietly and becomes an incident only once it has lasted `grace`. Anything else opens at once,
  and a deployment-level `cms` problem (no active master, or the CMS unreadable) opens at once
  whatever its findings say.
- A problem that persists with the same cause and severity says nothing more. One that is gone
  resolves its incident once it has stayed gone `clear_after` (0: the first clean run), and a
  later recurrence is a new incident. A problem this run could not see (a server that was not
  checked, a CMS that could not be read) is neither present nor gone: its state is kept.
- On-call (PagerDuty, Opsgenie, a webhook) is paged for an incident once its severity reaches
  `page_at`; an update reaches on-call only once it has paged, and so does the resolution.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import SEVERITY_ORDER, Evidence, Finding, Severity, StatusReport

DEPLOYMENT = "deployment"  # the subject of a deployment-level problem
CMS_UNREADABLE = "cms.unreadable"  # the watch's own cause: no CMS pool server could read the CMS
HOST_CAUSE = "host."  # the cause of a `check` problem: host.<HostErrorKind> (unreachable, timed_out, ...)

# a finding code's problem; codes not named here are their own problem (the part before the dot)
PROBLEM: dict[FindingCode, str] = {
    **{code: "replica" for code in FindingCode if code.value.startswith("replica.")},
    FindingCode.cms_master_replicator_watch_failed: "replica",  # its subject is the replica it cannot watch
    FindingCode.cms_unavailable: "cms",
    FindingCode.cms_both_active: "cms",
    FindingCode.cms_service_stopped: "cms-service",
    FindingCode.cms_fta_not_in_group: "fta-group",
    FindingCode.backup_error: "backup",
}
DEPLOYMENT_PROBLEMS = frozenset({"cms"})  # one subject: the deployment; always an incident at once
CHECK = "check"  # a server the run could not check (a host error): transient


class Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


ALL = "*"  # the scope of a watch over the whole deployment


class WatchSchedule(Model):
    """One line of CMSBOT_WATCH: check `scope` ("*", or a pool or server of the topology) on `cron`."""

    scope: str = ALL
    cron: str

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, value: str) -> str:
        # RQ's cron scheduler reads it with croniter, which `cmsbot watch` asks before it starts
        if len(value.split()) != 5:
            raise ValueError(f"{value!r}: a cron expression has five fields (minute hour day month weekday), "
                             "e.g. '*/5 * * * *'")
        return value.strip()

    @field_validator("scope")
    @classmethod
    def _named(cls, value: str) -> str:
        value = value.strip()
        if not value or len(value) > 255 or any(c.isspace() for c in value):
            raise ValueError(f"{value!r}: a scope is '*' or one pool or server name of the topology")
        return value

    @property
    def target(self) -> str | None:
        """The topology name the check resolves (None: the whole deployment)."""
        return None if self.scope in (ALL, "all") else self.scope


class Policy(Model):
    grace: timedelta = timedelta(minutes=15)  # how long a transient problem may last before it is an incident
    clear_after: timedelta = timedelta(0)  # how long a problem must stay gone before its incident resolves
    page_at: Severity = Severity.error  # the least severity that pages on-call


def severity_rank(severity: Severity) -> int:
    """Higher is worse: critical 4 ... info 0."""
    return len(SEVERITY_ORDER) - 1 - SEVERITY_ORDER.index(severity)


def worst(severities: list[Severity]) -> Severity:
    return max(severities, key=severity_rank) if severities else Severity.info


class Fingerprint(Model):
    """code + server + cause. `key` (code and server) names the incident; the cause may change under it."""

    problem: str
    subject: str
    causes: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.problem}/{self.subject.lower()}"

    def __str__(self) -> str:
        return f"{self.key}#{'+'.join(self.causes)}"


class Observation(Model):
    """One problem as one report shows it."""

    problem: str
    subject: str
    causes: tuple[str, ...]
    severity: Severity
    summary: str
    findings: tuple[Finding, ...] = ()
    detail: tuple[str, ...] = ()  # what a problem without findings says (a host error's reason)
    transient: bool = False
    immediate: bool = False

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(problem=self.problem, subject=self.subject, causes=self.causes)

    @property
    def key(self) -> str:
        return self.fingerprint.key


class Incident(Model):
    """What the alert channel and on-call are told about one problem: the latest of it."""

    id: str
    key: str
    problem: str
    subject: str
    causes: tuple[str, ...]
    severity: Severity
    summary: str
    scope: str = "all"
    findings: tuple[Finding, ...] = ()
    detail: tuple[str, ...] = ()
    first_seen: datetime
    opened_at: datetime

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(problem=self.problem, subject=self.subject, causes=self.causes)


class Tracked(Model):
    """A problem the watch has seen and not yet seen go: waiting out its grace, or an open incident."""

    key: str
    problem: str
    subject: str
    causes: tuple[str, ...]
    severity: Severity
    summary: str
    transient: bool = False
    first_seen: datetime  # the start of this streak
    last_seen: datetime
    incident: str | None = None  # the open incident's id; None while a transient problem waits out its grace
    opened_at: datetime | None = None
    gone_since: datetime | None = None  # the first run that no longer saw it (waiting out clear_after)
    paged: bool = False  # on-call was paged for this incident
    scope: str = "all"


class Skipping(Model):
    """The watch is not looking (a CMS change is running): said once, with this notice."""

    id: str
    reason: str
    since: datetime
    runs: int = 1


class WatchState(Model):
    tracked: dict[str, Tracked] = Field(default_factory=dict)
    skipping: Skipping | None = None
    # when the newest report applied was started: runs that overlap (two schedules) commit in the order they
    # finish, and an older report must not re-open what a newer one resolved
    newest: datetime | None = None


# -- actions -------------------------------------------------------------------------------------


class Opened(Model):
    kind: Literal["open"] = "open"
    incident: Incident


class Updated(Model):
    kind: Literal["update"] = "update"
    incident: Incident
    before_causes: tuple[str, ...]
    before_severity: Severity


class Resolved(Model):
    kind: Literal["resolve"] = "resolve"
    incident: Incident
    resolved_at: datetime

    @property
    def lasted(self) -> timedelta:
        return self.resolved_at - self.incident.opened_at


class SkipNoticed(Model):
    kind: Literal["skip"] = "skip"
    notice: str
    reason: str
    since: datetime


class Resumed(Model):
    kind: Literal["resume"] = "resume"
    notice: str
    reason: str
    since: datetime
    until: datetime
    runs: int  # runs skipped


Action = Annotated[Opened | Updated | Resolved | SkipNoticed | Resumed, Field(discriminator="kind")]


class Page(Model):
    """One thing to tell on-call: trigger (a new alert), update (more on an open one) or resolve."""

    action: Literal["trigger", "update", "resolve"]
    incident: Incident
    at: datetime

    @property
    def id(self) -> str:
        """Unique per (incident, action): the idempotency record's name (an update, per cause and severity)."""
        if self.action != "update":
            return f"{self.incident.id}:{self.action}"
        what = hashlib.sha256(f"{'+'.join(self.incident.causes)}|{self.incident.severity.value}|"
                              f"{self.at.isoformat()}".encode()).hexdigest()[:12]
        return f"{self.incident.id}:update:{what}"


class Decision(Model):
    state: WatchState
    actions: tuple[Action, ...] = ()
    pages: tuple[Page, ...] = ()

    def of(self, kind: str) -> list[Action]:
        return [a for a in self.actions if a.kind == kind]


# -- reading a report ------------------------------------------------------------------------------


def problem_of(code: FindingCode) -> str:
    return PROBLEM.get(code, code.value.split(".")[0])


def observe(report: StatusReport) -> list[Observation]:
    """The problems a report shows, one per incident key, worst first."""
    groups: dict[tuple[str, str], list[Finding]] = {}
    for f in report.findings:
        problem = problem_of(f.code)
        subject = DEPLOYMENT if problem in DEPLOYMENT_PROBLEMS else f.subject
        groups.setdefault((problem, subject.lower()), []).append(f)
    out: list[Observation] = []
    if report.cms is None:
        groups.setdefault(("cms", DEPLOYMENT), []).insert(0, unreadable_finding(report))
    for (problem, _), findings in groups.items():
        findings = sorted(findings, key=lambda f: (-severity_rank(f.severity), f.code.value))
        causes = sorted({f.code.value for f in findings})
        if report.cms is None and problem == "cms":
            causes = sorted({CMS_UNREADABLE, *causes} - {FindingCode.cms_unavailable.value})
        severity = worst([f.severity for f in findings])
        head = findings[0].summary + (f" (and {len(findings) - 1} more finding{'s' if len(findings) > 2 else ''})"
                                      if len(findings) > 1 else "")
        out.append(Observation(
            problem=problem, subject=DEPLOYMENT if problem in DEPLOYMENT_PROBLEMS else findings[0].subject,
            causes=tuple(causes), severity=severity, summary=head, findings=tuple(findings),
            transient=all(f.severity is Severity.pending for f in findings),
            immediate=problem in DEPLOYMENT_PROBLEMS))
    for server in sorted({e.server for e in report.host_errors}):
        errors = [e for e in report.host_errors if e.server == server]
        kinds = sorted({e.kind.value for e in errors})
        out.append(Observation(
            problem=CHECK, subject=server, causes=tuple(HOST_CAUSE + k for k in kinds), severity=Severity.warning,
            summary=f"{server} could not be checked over WinRM ({', '.join(k.replace('_', ' ') for k in kinds)})",
            detail=tuple(f"{e.probe or 'connect'}: {e.reason}" for e in errors), transient=True))
    return sorted(out, key=lambda o: (-severity_rank(o.severity), o.key))


def unreadable_finding(report: StatusReport) -> Finding:
    """What the watch says when no CMS pool server could read the CMS: the CMS is unavailable as far as
    anyone can tell, and that is a deployment-level incident at once."""
    where = report.cms_pool or "the CMS pool"
    evidence = [Evidence(text=f"{e.server} ({e.probe or 'connect'}): {e.kind.value.replace('_', ' ')}: {e.reason}",
                         source="WinRM") for e in report.host_errors if e.probe in (None, "cms-status")]
    return Finding(code=FindingCode.cms_unavailable, severity=Severity.critical, subject=DEPLOYMENT,
                   summary=f"The Central Management Store could not be read from any server of {where} or its "
                           "backup pool: whether it has an active master is unknown",
                   evidence=evidence or [Evidence(text="no CMS pool server answered the cms-status probe")],
                   fix=["Check that the CMS pool's Front Ends are up and answer WinRM (cmsbot doctor)",
                        *KNOWLEDGE[FindingCode.cms_unavailable].fix])


def covers(report: StatusReport, problem: str, subject: str) -> bool:
    """Whether this report could have seen the problem: only then does its absence mean it is gone."""
    servers = {s.lower() for s in report.servers}
    subject = subject.lower()
    if problem == "cms":
        return True  # the CMS read, or the CMS unreadable: either way this run knows
    if problem == "replica":
        return report.cms is not None and subject in servers
    if problem == "cms-service":  # read from the server itself: only a server that answered can say
        return subject in servers and any(h.fqdn.lower() == subject for h in report.health)
    if problem == "fta-group":
        return report.membership is not None
    if problem == "backup":
        return bool(report.backup)
    if problem == CHECK:
        return subject in servers
    return False  # a problem this version does not know: keep it until a version that knows it decides


# -- deciding ----------------------------------------------------------------------------------------


def incident_id(key: str, opened_at: datetime) -> str:
    return "i" + hashlib.sha256(f"{key}|{opened_at.isoformat()}".encode()).hexdigest()[:15]


def notice_id(reason: str, since: datetime) -> str:
    return "n" + hashlib.sha256(f"{reason}|{since.isoformat()}".encode()).hexdigest()[:15]


def _incident(t: Tracked, obs: Observation | None) -> Incident:
    assert t.incident is not None and t.opened_at is not None
    return Incident(id=t.incident, key=t.key, problem=t.problem, subject=t.subject, causes=t.causes,
                    severity=t.severity, summary=t.summary, scope=t.scope, first_seen=t.first_seen,
                    opened_at=t.opened_at, findings=obs.findings if obs else (), detail=obs.detail if obs else ())


def _pages(policy: Policy) -> int:
    return severity_rank(policy.page_at)


def decide(state: WatchState, report: StatusReport, now: datetime, policy: Policy | None = None,
           scope: str = "all", started: datetime | None = None) -> Decision:
    """The watch's actions for one report, taken at `now`; `started`: when its check began (default `now`).
    A report started before the newest one already applied changes nothing: what it saw is older."""
    started = started or now
    if state.newest is not None and started < state.newest:
        return Decision(state=state)
    policy = policy or Policy()
    actions: list[Action] = []
    pages: list[Page] = []
    tracked = dict(state.tracked)
    if state.skipping is not None:
        s = state.skipping
        actions.append(Resumed(notice=s.id, reason=s.reason, since=s.since, until=now, runs=s.runs))

    seen = {o.key: o for o in observe(report)}
    for key, obs in seen.items():
        before = tracked.get(key)
        if before is None:
            before = Tracked(key=key, problem=obs.problem, subject=obs.subject, causes=obs.causes,
                             severity=obs.severity, summary=obs.summary, transient=obs.transient, first_seen=now,
                             last_seen=now, scope=scope)
            fresh = True
        else:
            fresh = False
        t = before.model_copy(update={"causes": obs.causes, "severity": obs.severity, "summary": obs.summary,
                                      "transient": obs.transient, "last_seen": now, "gone_since": None})
        if t.incident is None:
            due = obs.immediate or not obs.transient or now - t.first_seen >= policy.grace
            if due:
                t = t.model_copy(update={"incident": incident_id(key, now), "opened_at": now})
                incident = _incident(t, obs)
                actions.append(Opened(incident=incident))
                if severity_rank(t.severity) >= _pages(policy):
                    t = t.model_copy(update={"paged": True})
                    pages.append(Page(action="trigger", incident=incident, at=now))
        elif not fresh and (t.causes != before.causes or t.severity != before.severity):
            incident = _incident(t, obs)
            actions.append(Updated(incident=incident, before_causes=before.causes, before_severity=before.severity))
            if t.paged:
                pages.append(Page(action="update", incident=incident, at=now))
            elif severity_rank(t.severity) >= _pages(policy):
                t = t.model_copy(update={"paged": True})
                pages.append(Page(action="trigger", incident=incident, at=now))
        tracked[key] = t

    for key, t in list(tracked.items()):
        if key in seen or not covers(report, t.problem, t.subject):
            continue
        if t.incident is None:  # gone within its grace: it never was an incident
            del tracked[key]
            continue
        gone = t.gone_since or now
        if now - gone >= policy.clear_after:
            incident = _incident(t, None)
            actions.append(Resolved(incident=incident, resolved_at=now))
            if t.paged:
                pages.append(Page(action="resolve", incident=incident, at=now))
            del tracked[key]
        elif t.gone_since is None:
            tracked[key] = t.model_copy(update={"gone_since": now})
    return Decision(state=WatchState(tracked=tracked, skipping=None, newest=started), actions=tuple(actions),
                    pages=tuple(pages))


def skip(state: WatchState, reason: str, now: datetime) -> Decision:
    """A run that did not look, and why. The first of a series says so; the others count."""
    if state.skipping is None:
        notice = Skipping(id=notice_id(reason, now), reason=reason, since=now)
        return Decision(state=state.model_copy(update={"skipping": notice}),
                        actions=(SkipNoticed(notice=notice.id, reason=reason, since=now),))
    counted = state.skipping.model_copy(update={"runs": state.skipping.runs + 1})
    return Decision(state=state.model_copy(update={"skipping": counted}))


def open_incidents(state: WatchState) -> list[Tracked]:
    """The incidents open now, worst and oldest first."""
    return sorted((t for t in state.tracked.values() if t.incident is not None),
                  key=lambda t: (-severity_rank(t.severity), t.opened_at or t.first_seen, t.key))


def lasted(seconds: float) -> str:
    """A duration as people say it: 45 s, 42 min, 3 h 5 min, 2 d 4 h."""
    s = max(0, int(seconds))
    if s < 90:
        return f"{s} s"
    minutes = round(s / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h" + (f" {minutes} min" if minutes else "")
    days, hours = divmod(hours, 24)
    return f"{days} d" + (f" {hours} h" if hours else "")
