"""One status report, read per pool: the verdict the App Home shows for each pool a check covered.

Pure: a StatusReport in, one PoolVerdict per pool of its scope out. A pool is OK when every replica of
it the CMS lists is up to date, none of its servers failed to answer, and no finding at error level or
worse names it, one of its servers, or the CMS as a whole (a blank master breaks every pool).
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum

from cms.models import Model, Severity, StatusReport

PROBLEM_SEVERITIES = frozenset({Severity.critical, Severity.error, Severity.warning})


class Outcome(str, Enum):
    ok = "ok"
    problems = "problems"  # findings that need someone
    incomplete = "incomplete"  # servers that could not be checked, no finding
    failed = "failed"  # the CMS could not be read: nothing is known of the replicas


class PoolVerdict(Model):
    pool: str
    outcome: Outcome
    text: str  # one line: "3/3 replicas up to date", "1/3 replicas up to date; 2 errors"
    checked_at: datetime
    request: str | None = None  # the check's request (its thread), None for a scheduled watch run
    by: str | None = None  # who asked for it (a Slack user id), None for the watch


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def pool_verdicts(report: StatusReport, *, request: str | None = None, by: str | None = None) -> list[PoolVerdict]:
    """One verdict per pool of the report's servers, in the order the pools first appear."""
    pools: dict[str, list[str]] = {}
    for server in report.servers:
        pools.setdefault(report.pools.get(server, server), []).append(server)
    known = set(report.servers) | set(pools)
    out = []
    for pool, servers in pools.items():
        members = set(servers) | {pool}
        findings = [f for f in report.findings if f.severity in PROBLEM_SEVERITIES
                    and (f.subject in members or f.subject not in known)]
        errors = sorted({e.server for e in report.host_errors if e.server in members})
        parts = []
        if report.cms is None:
            outcome, parts = Outcome.failed, ["the CMS could not be read"]
        else:
            replicas = [r for r in report.cms.replicas if r.fqdn in members]
            current = sum(r.up_to_date for r in replicas)
            parts.append(f"{current}/{len(replicas)} replicas up to date")
            outcome = Outcome.problems if findings else Outcome.incomplete if errors else Outcome.ok
        worst = [s for s in (Severity.critical, Severity.error, Severity.warning)
                 if any(f.severity == s for f in findings)]
        for severity in worst:
            n = sum(f.severity == severity for f in findings)
            word = severity.value if n == 1 or severity is Severity.critical else severity.value + "s"
            parts.append(f"{n} {word}")
        if errors:
            parts.append(f"{_plural(len(errors), 'server')} not checked")
        out.append(PoolVerdict(pool=pool, outcome=outcome, text="; ".join(parts), checked_at=report.checked_at,
                               request=request, by=by))
    return out
