"""`cmsbot doctor`, the pure part: the doctor probe's answer, the checks of one server graded from
facts, and the report as a table or JSON.

The checks, in the order a server is ready for cmsbot (the first that fails is the one to fix):

  dns           the name cmsbot connects to resolves
  winrm-port    TCP to the WinRM port, and the listener answers HTTP there
  tls           https only: the certificate chains to a trusted CA, names the host, is not about to expire
  auth          the listener offers the configured transport, and the account opens a shell with it
  powershell    the Windows PowerShell the probes meet (2.0 is a failure on Lync Server 2013 and later)
  module        the Lync / SkypeForBusiness module loads
  cmdlets       the cmdlets the probes use on this server exist
  rights        the account is in RTCUniversalServerAdmins (changes) or RTCUniversalReadOnlyAdmins (status)
  winrm-limits  MaxEnvelopeSizekb, MaxShellsPerUser, MaxMemoryPerShellMB against what the status check needs
  replica-path  from the CMS Front End: TCP 445 (SMB) to the server, TCP 4443 to an Edge's internal interface
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import Enum
from typing import Any

from cms.models import Model, PortTest
from cms.ps_json import as_datetime, as_host, as_optional_bool, as_str, as_strings
from cms.topology import ServerRole, Version

CHECKS = ("dns", "winrm-port", "tls", "auth", "powershell", "module", "cmdlets", "rights", "winrm-limits",
          "replica-path")
SERVER_ADMINS = "RTCUniversalServerAdmins"
READ_ONLY_ADMINS = "RTCUniversalReadOnlyAdmins"
CERT_WARN_DAYS = 30
MEMORY_WARN_MB = 512  # below it a shell that loads the module may run out of memory (1024 is WinRM 3.0+'s default)


class CheckStatus(str, Enum):
    ok = "ok"
    warn = "warn"  # works, with a caveat
    fail = "fail"
    skip = "skip"  # not checked: an earlier check failed, or it does not apply (said in the detail)


class Check(Model):
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None


def ok(name: str, detail: str) -> Check:
    return Check(name=name, status=CheckStatus.ok, detail=detail)


def warn(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name=name, status=CheckStatus.warn, detail=detail, fix=fix)


def fail(name: str, detail: str, fix: str | None = None) -> Check:
    return Check(name=name, status=CheckStatus.fail, detail=detail, fix=fix)


def skip(name: str, detail: str) -> Check:
    return Check(name=name, status=CheckStatus.skip, detail=detail)


class Checkup(Model):
    """One server's row."""

    server: str
    pool: str
    role: str
    checks: list[Check]

    @property
    def ready(self) -> bool:
        return all(c.status is not CheckStatus.fail for c in self.checks)

    @property
    def first_failure(self) -> Check | None:
        return next((c for c in self.checks if c.status is CheckStatus.fail), None)

    @property
    def headline(self) -> Check | None:
        """What the row shows: the first failure, else the first warning."""
        return self.first_failure or next((c for c in self.checks if c.status is CheckStatus.warn), None)


class DoctorReport(Model):
    scope: str
    checked_at: datetime
    servers: list[Checkup]
    notes: list[str] = []

    @property
    def ready(self) -> bool:
        return all(s.ready for s in self.servers)


# -- the doctor probe's answer ------------------------------------------------------------------------


class DoctorAnswer(Model):
    """What workers/probes/doctor.ps1 read on one server."""

    computer: str | None = None
    collected_at: datetime | None = None
    ps_version: str | None = None
    clr_version: str | None = None
    module: str | None = None
    module_error: str | None = None
    missing_cmdlets: list[str] = []
    identity: str | None = None
    groups: list[str] = []
    is_administrator: bool | None = None
    groups_error: str | None = None
    max_envelope_kb: int | None = None
    max_shells_per_user: int | None = None
    max_memory_per_shell_mb: int | None = None
    winrm_error: str | None = None


def _number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    text = as_str(value)
    return int(text) if text and text.isdigit() else None


def parse_doctor(server: str, data: Any) -> DoctorAnswer:
    if not isinstance(data, dict):
        raise ValueError("doctor: expected an object")
    notes: list[str] = []
    raw = data.get("WinRM")
    winrm: dict[str, Any] = raw if isinstance(raw, dict) else {}
    return DoctorAnswer(
        computer=as_host(data.get("Computer"), "Computer", notes) or server,
        collected_at=as_datetime(data.get("CollectedAt")),
        ps_version=as_str(data.get("PSVersion"), 40), clr_version=as_str(data.get("CLRVersion"), 40),
        module=as_str(data.get("Module"), 80), module_error=as_str(data.get("ModuleError"), 500),
        missing_cmdlets=as_strings(data.get("MissingCmdlets"), 80),
        identity=as_str(data.get("Identity"), 300), groups=as_strings(data.get("Groups"), 300),
        is_administrator=as_optional_bool(data.get("IsAdministrator")),
        groups_error=as_str(data.get("GroupsError"), 500),
        max_envelope_kb=_number(winrm.get("MaxEnvelopeSizekb")),
        max_shells_per_user=_number(winrm.get("MaxShellsPerUser")),
        max_memory_per_shell_mb=_number(winrm.get("MaxMemoryPerShellMB")),
        winrm_error=as_str(data.get("WinRMError"), 500),
    )


# -- what the probes need on a server -----------------------------------------------------------------

EVERY_SERVER = ["Get-CsServerVersion", "Get-CsCertificate", "Get-CsWindowsService", "Start-CsWindowsService",
                "Export-CsConfiguration", "Import-CsConfiguration"]
CMS_SERVER = ["Get-CsManagementStoreReplicationStatus", "Get-CsService", "Get-CsManagementConnection", "Get-CsPool",
              "Invoke-CsManagementStoreReplication"]
CMS_SERVER_2013 = ["Get-CsPoolBackupRelationship", "Get-CsBackupServiceStatus", "Invoke-CsManagementServerFailover"]


def cmdlets_for(version: Version, cms_server: bool) -> list[str]:
    """The cmdlets the probes call on a server (workers/probes/*.ps1): replica-health, start-service and the
    re-seed everywhere; on the servers that read the CMS (the CMS pool and its pair) the status, location,
    replication, backup and failover ones, those of Lync Server 2013 and later only there."""
    names = list(EVERY_SERVER)
    if cms_server:
        names += CMS_SERVER + (CMS_SERVER_2013 if version.has_failover_cmdlet else [])
    return names


# -- grading --------------------------------------------------------------------------------------------

_MAJOR = re.compile(r"^(\d+)")


def grade_powershell(a: DoctorAnswer, version: Version) -> Check:
    found = a.ps_version or "?"
    m = _MAJOR.match(found)
    major = int(m.group(1)) if m else 0
    if version is Version.lync2010:
        if major >= 3:
            return warn("powershell", f"Windows PowerShell {found} on {version.label}",
                        "Lync Server 2010 supports Windows PowerShell 2.0 (WMF 3.0 or later is not a supported "
                        "configuration there); the probes run on either")
        return ok("powershell", f"Windows PowerShell {found}")
    if major < 3:
        return fail("powershell", f"Windows PowerShell {found} on {version.label}, which needs 3.0 or later",
                    "install the Windows Management Framework the product requires (3.0 or later; Windows Server "
                    "2012 R2 and later have 4.0/5.1), or check the topology's version")
    return ok("powershell", f"Windows PowerShell {found}")


def grade_module(a: DoctorAnswer, version: Version) -> Check:
    if not a.module:
        return fail("module", f"the management module does not load: {a.module_error or 'no reason given'}",
                    "install the product's administrative tools (Lync Server / Skype for Business Server Core "
                    "Components) on this server, or remove the server from the topology if it runs no Lync service")
    expected = "Lync" if version in (Version.lync2010, Version.lync2013) else "SkypeForBusiness"
    if a.module != expected:
        return warn("module", f"module {a.module} loaded; {version.label} ships {expected}",
                    "check the topology's deployment.version")
    return ok("module", f"module {a.module}")


def grade_cmdlets(a: DoctorAnswer, wanted: list[str]) -> Check:
    if not a.module:
        return skip("cmdlets", "not checked: the module does not load")
    if a.missing_cmdlets:
        return fail("cmdlets", f"missing: {', '.join(a.missing_cmdlets)}",
                    "install the product's latest cumulative update on this server, or check the topology's "
                    "deployment.version")
    return ok("cmdlets", f"all {len(wanted)} cmdlets the probes use here")


def _short(group: str) -> str:
    return group.rsplit("\\", 1)[-1].lower()


def grade_rights(a: DoctorAnswer) -> Check:
    who = a.identity or "the WinRM account"
    names = {_short(g) for g in a.groups}
    if SERVER_ADMINS.lower() in names:
        return ok("rights", f"{who} is in {SERVER_ADMINS}: status and changes")
    add = f"add {who} to {SERVER_ADMINS} (changes: remediations, failover) or {READ_ONLY_ADMINS} (status only)"
    if a.groups_error and not a.groups:
        return fail("rights", f"the account's groups could not be read: {a.groups_error}", add)
    if READ_ONLY_ADMINS.lower() in names:
        return warn("rights", f"{who} is in {READ_ONLY_ADMINS}: /cms-status works, remediations and failover do not",
                    f"add {who} to {SERVER_ADMINS} for changes")
    return fail("rights", f"{who} is in neither {SERVER_ADMINS} nor {READ_ONLY_ADMINS}"
                + (f" (its RTC/Cs groups: {', '.join(a.groups)})" if a.groups else ""), add)


def grade_limits(a: DoctorAnswer, *, need_kb: int, configured_kb: int, shells_needed: int) -> Check:
    """need_kb: the largest message the status check sends this server (one probe, its parameters and the
    library); configured_kb: CMSBOT_WINRM_MAX_ENVELOPE_KB, the largest the workers send; shells_needed:
    the shells one status check opens here at once."""
    problems: list[tuple[CheckStatus, str, str]] = []
    envelope, shells, memory = a.max_envelope_kb, a.max_shells_per_user, a.max_memory_per_shell_mb
    raise_envelope = "as an administrator on the server: Set-Item WSMan:\\localhost\\MaxEnvelopeSizekb 500"
    if envelope is not None and envelope < need_kb:
        problems.append((CheckStatus.fail, f"MaxEnvelopeSizekb {envelope}: the status check sends {need_kb} KB here",
                         raise_envelope))
    elif envelope is not None and envelope < configured_kb:
        problems.append((CheckStatus.fail, f"MaxEnvelopeSizekb {envelope} is below CMSBOT_WINRM_MAX_ENVELOPE_KB="
                         f"{configured_kb}: larger messages are refused with HTTP 413",
                         f"{raise_envelope}; or set CMSBOT_WINRM_MAX_ENVELOPE_KB={envelope} for the workers"))
    if shells is not None and shells < shells_needed:
        problems.append((CheckStatus.fail, f"MaxShellsPerUser {shells}: a status check opens {shells_needed} here",
                         f"Set-Item WSMan:\\localhost\\Shell\\MaxShellsPerUser {max(30, shells_needed)}"))
    if memory is not None and 0 < memory < MEMORY_WARN_MB:
        problems.append((CheckStatus.warn, f"MaxMemoryPerShellMB {memory}: loading the management module in a shell "
                         "this small can fail for lack of memory (WinRM 3.0 and later default to 1024)",
                         "Set-Item WSMan:\\localhost\\Shell\\MaxMemoryPerShellMB 1024"))
    read = f"MaxEnvelopeSizekb {_shown(envelope)}, MaxShellsPerUser {_shown(shells)}, " \
           f"MaxMemoryPerShellMB {_shown(memory)}"
    failing = [p for p in problems if p[0] is CheckStatus.fail]
    if failing:
        return fail("winrm-limits", "; ".join(p[1] for p in failing), "; ".join(p[2] for p in failing))
    if problems:
        return warn("winrm-limits", "; ".join(p[1] for p in problems), "; ".join(p[2] for p in problems))
    if a.winrm_error and None in (envelope, shells, memory):
        return warn("winrm-limits", f"not all read ({read}): {a.winrm_error}",
                    "the account needs administrator rights on the server to read WSMan:\\localhost")
    return ok("winrm-limits", f"{read} (the status check sends at most {need_kb} KB here)")


def _shown(value: int | None) -> str:
    return "?" if value is None else str(value)


def grade_path(test: PortTest | None, *, role: ServerRole, source: str | None, unchecked: str | None) -> Check:
    """The replication path from the CMS Front End (`source`) to this server."""
    if test is None:
        return skip("replica-path", unchecked or "not tested")
    what = (f"TCP {test.port} to {test.address}" + (" (Edge internal interface)" if role is ServerRole.edge else ""))
    if test.connected:
        return ok("replica-path", f"{what} from {source}: connected" + (f" in {test.elapsed_ms} ms"
                                                                          if test.elapsed_ms is not None else ""))
    if role is ServerRole.edge:
        fix = (f"allow TCP 4443 from the CMS Front Ends to {test.address} (perimeter firewall, routes on the Edge's "
               "internal NIC) and check REPLICA runs on the Edge")
        if test.error == "HostNotFound":
            fix = f"make {test.address} resolve on the CMS Front Ends (internal DNS), or set its internal_address"
    else:
        fix = f"allow TCP 445 (SMB) from the CMS Front Ends to {test.fqdn}"
        if test.error == "HostNotFound":
            fix = f"add a DNS record for {test.fqdn} that the CMS Front Ends resolve"
    return fail("replica-path", f"{what} from {source}: {test.error or 'not connected'}", fix)


# -- output ----------------------------------------------------------------------------------------------

MARK = {CheckStatus.ok: "ok", CheckStatus.warn: "warn", CheckStatus.fail: "FAIL", CheckStatus.skip: "skip"}


def table(report: DoctorReport) -> str:
    """One row per server: ready or not, the first failing check (else the first warning) and its fix."""
    rows = [("SERVER", "ROLE", "STATUS", "CHECK", "WHAT / FIX")]
    for s in report.servers:
        head = s.headline
        status = "ready" if s.ready else "NOT READY"
        if head is None:
            rows.append((s.server, s.role, status, "", "every check passed"))
        else:
            text = head.detail + (f" -> {head.fix}" if head.fix else "")
            rows.append((s.server, s.role, status + (" (warn)" if s.ready else ""), head.name, text))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    ready = sum(1 for s in report.servers if s.ready)
    lines.append("")
    lines.append(f"{ready} of {len(report.servers)} servers ready" +
                 ("" if report.ready else f"; {len(report.servers) - ready} not ready: fix the first failing check "
                                          "of each and run `cmsbot doctor` again"))
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(line.rstrip() for line in lines)


def as_json(report: DoctorReport) -> dict[str, Any]:
    return {
        "scope": report.scope, "checked_at": report.checked_at.isoformat(), "ready": report.ready,
        "notes": report.notes,
        "servers": [{
            "server": s.server, "pool": s.pool, "role": s.role, "ready": s.ready,
            "first_failure": s.first_failure.model_dump(mode="json") if s.first_failure else None,
            "checks": [c.model_dump(mode="json") for c in s.checks],
        } for s in report.servers],
    }

