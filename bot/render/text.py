"""Pure rendering of reports and events as plain text (console, logs, files)."""

from __future__ import annotations

from datetime import datetime

from cms.doctor import DoctorReport, table
from cms.explain import Explanation
from cms.models import SEVERITY_ORDER, Finding, HostError, StatusReport

HOST_ERROR_TEXT = {
    "unreachable": "unreachable",
    "auth_failed": "access denied",
    "timed_out": "timed out",
    "probe_failed": "probe failed",
}


STARTED = {
    "/cms-status": "Checking {scope} now: the report appears in this channel, in a thread under my message.",
    "/cms-replicate": "Forcing replication for {scope}: after the replication wait and a re-check, the result "
                      "appears in this channel, in a thread under my message.",
    "/cms-failover": "Running the read-only preflight of the CMS failover: the plan and its approval card appear in "
                     "this channel.",
    "/cms-recover": "Running the read-only preflight of the CMS recovery: the plan and its approval card appear in "
                    "this channel.",
    "/cms-doctor": "Running the doctor on {scope} (DNS, the WinRM port, TLS, credentials, PowerShell, module, "
                   "rights, WinRM limits, replication paths): the servers that are not ready, each with the fix, "
                   "appear in this channel, in a thread under my message.",
}


def started(command: str, target: str | None = None) -> str:
    """What the ack of an accepted command tells its user is happening (plain text: escape it for Slack)."""
    return STARTED.get(command, f"{command} started: its result appears in this channel.").format(
        scope=target or "the whole deployment")


def when(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    if now is not None:
        age = int((now - moment).total_seconds())
        text += f" ({_age(age)} ago)"
    return text


def _age(seconds: int) -> str:
    if seconds < 120:
        return f"{max(seconds, 0)} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} d"


def verdict(report: StatusReport) -> str:
    """One line for the parent message."""
    cms = report.cms
    scope = "the deployment" if report.scope == "all" else report.scope
    if cms is None:
        return f"FAILED: could not read the Central Management Store for {scope}" + _errors_suffix(report.host_errors)
    in_scope = [r for r in cms.replicas if r.fqdn in set(report.servers)]
    current = sum(r.up_to_date for r in in_scope)
    counts = _severity_counts(report.findings)
    if report.healthy:
        return (f"OK: {current}/{len(in_scope)} replicas up to date in {scope} "
                f"(CMS master {cms.store.active_master_fqdn})")
    parts = [_count(n, sev) for sev, n in counts.items() if n]
    head = "PROBLEMS" if report.findings else "INCOMPLETE"
    text = f"{head}: {current}/{len(in_scope)} replicas up to date in {scope}"
    if parts:
        text += "; findings: " + ", ".join(parts)
    return text + _errors_suffix(report.host_errors)


def _count(n: int, severity: str) -> str:
    plural = {"error": "errors", "warning": "warnings"}.get(severity, severity) if n != 1 else severity
    return f"{n} {plural}"


def _errors_suffix(errors: list[HostError]) -> str:
    if not errors:
        return ""
    servers = sorted({e.server for e in errors})
    return f"; {len(servers)} server{'s' if len(servers) != 1 else ''} could not be checked"


def _severity_counts(findings: list[Finding]) -> dict[str, int]:
    return {sev.value: sum(f.severity == sev for f in findings) for sev in SEVERITY_ORDER}


def doctor_verdict(report: DoctorReport) -> str:
    """One line for the parent message of /cms-doctor: how many servers are ready for cmsbot."""
    total = len(report.servers)
    ready = [s for s in report.servers if s.ready]
    warned = sum(s.headline is not None for s in ready)
    where = "" if report.scope == "all" else f" ({report.scope})"
    return (f"Doctor{where}: {total} server{'s' if total != 1 else ''}, {len(ready)} ready"
            + (f" ({warned} with a warning)" if warned else "") + f", {total - len(ready)} not ready")


def doctor_text(report: DoctorReport) -> str:
    """The whole doctor's report as text: `cmsbot doctor`'s table (every server, its first failing check
    and the fix)."""
    return table(report)


def report_text(report: StatusReport) -> str:
    lines: list[str] = []
    if report.notes:
        lines += ["Notes"] + [f"  ! {n}" for n in report.notes] + [""]
    cms = report.cms
    if cms is not None:
        active = [s.pool_fqdn for s in cms.services if s.active]
        standby = [s.pool_fqdn for s in cms.services if s.active is False]
        unknown = [s.pool_fqdn for s in cms.services if s.active is None]  # Lync Server 2010 has no Active
        lines.append(f"CMS master: {cms.store.active_master_fqdn or '(none)'}   "
                     f"file transfer agents: {', '.join(cms.store.active_file_transfer_agents) or '(none)'}")
        pools = ", ".join([f"{p} (active)" for p in active] + [f"{p} (backup)" for p in standby]
                          + [f"{p} (active: not reported by this version)" for p in unknown])
        lines.append(f"CMS pools: {pools or '(none reported)'}")
        lines.append(f"Read on {report.cms_source} at {when(cms.collected_at)}"
                     + (f" - {cms.product_version}" if cms.product_version else ""))
        lines.append("")
        lines.extend(replica_table(report))
    else:
        lines.append("The Central Management Store could not be read from any CMS pool server.")
    for sev in SEVERITY_ORDER:
        group = [f for f in report.findings if f.severity == sev]
        if not group:
            continue
        lines.append("")
        lines.append(f"{sev.value.upper()} ({len(group)})")
        for f in group:
            lines.extend(finding_text(f))
    if report.host_errors:
        lines.append("")
        lines.append("Could not check")
        for e in report.host_errors:
            probe = f" [{e.probe}]" if e.probe else ""
            lines.append(f"  {e.server}: {HOST_ERROR_TEXT[e.kind.value]}{probe} - {e.reason}")
    return "\n".join(lines)


def replica_table(report: StatusReport) -> list[str]:
    assert report.cms is not None
    scope = set(report.servers)
    rows = [r for r in report.cms.replicas if r.fqdn in scope]
    width = max([len(r.fqdn) for r in rows] + [len("Replica")])
    out = [f"{'Replica':<{width}}  {'UpToDate':<8}  {'Last status report':<42}  Version"]
    now = report.cms.collected_at
    for r in sorted(rows, key=lambda r: (r.up_to_date, r.fqdn)):
        out.append(f"{r.fqdn:<{width}}  {str(r.up_to_date):<8}  {when(r.last_status_report, now):<42}  "
                   f"{r.product_version or '-'}")
    missing = sorted(scope - {r.fqdn for r in report.cms.replicas})
    for fqdn in missing:
        out.append(f"{fqdn:<{width}}  {'?':<8}  {'not listed by the CMS':<42}  -")
    return out


def finding_text(f: Finding) -> list[str]:
    out = [f"  * {f.subject}: {f.summary}  [{f.code.value}]"]
    for ev in f.evidence:
        where = f" ({ev.source}" + (f", {when(ev.at)}" if ev.at else "") + ")" if ev.source else ""
        out.append(f"      evidence: {ev.text}{where}")
    for note in f.unchecked:
        out.append(f"      not checked: {note}")
    for i, step in enumerate(f.fix, 1):
        out.append(f"      fix {i}. {step}")
    return out


def explanation_text(e: Explanation) -> str:
    lines = [e.summary]
    seen = [f"event {e.event_id}" if e.event_id is not None else None, f"source {e.source}" if e.source else None,
            f"level {e.level}" if e.level else None, f"on {e.computer}" if e.computer else None]
    if e.time is not None:
        seen.append(f"at {when(e.time)}" + (" (day/month order assumed)" if e.date_ambiguous else ""))
    elif e.date_text:
        seen.append(f"date {e.date_text!r} not understood")
    parsed = ", ".join(s for s in seen if s)
    if parsed:
        lines.append(f"Parsed: {parsed}")
    if e.replicas:
        lines.append(f"Replicas named: {', '.join(e.replicas)}")
    if e.paths:
        lines.append(f"Paths: {', '.join(e.paths)}")
    if e.code is None:
        lines.append("It does not match the File Transfer Agent events for Edge HTTPS (1017), Edge certificate (1015) "
                     "or share access (1034). Run /cms-status for the live state.")
        return "\n".join(lines)
    lines += ["", f"What it means: {e.meaning}"]
    if e.checks:
        lines.append("Check:")
        lines += [f"  - {c}" for c in e.checks]
    lines.append("Fix:")
    lines += [f"  {i}. {step}" for i, step in enumerate(e.fix, 1)]
    return "\n".join(lines)
