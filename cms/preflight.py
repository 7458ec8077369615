"""Preflight of a team-approved CMS failover and of the recovery runbook (seed cms-failover-fails.md).

Pure: the facts are gathered by workers.runs.failover.gather().
preflight_*(): every check GO / WARN / BLOCK with its reason, and the exact plan.
recognise():   the seed article's failure modes in the failover cmdlet's output.
converged():   whether the CMS has settled in the target pool after a failover.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from cms.knowledge import FindingCode
from cms.models import (
    CmsService,
    CmsStatus,
    Evidence,
    Finding,
    HostError,
    Location,
    Model,
    PoolBackup,
    ReplicaHealth,
    ServiceState,
    Severity,
)
from cms.topology import Topology


class Verdict(str, Enum):
    """A check's grade: any BLOCK disables approval, WARN is for the approvers to weigh, GO passes.
    The value is what the card, the audit and the approval's stored checks show."""

    GO = "GO"
    WARN = "WARN"
    BLOCK = "BLOCK"


GO, WARN, BLOCK = Verdict.GO, Verdict.WARN, Verdict.BLOCK
SERVICES = ("REPLICA", "MASTER", "FTA", "LYNCBACKUP")
FRESH_CHANGE = timedelta(minutes=5)  # the Backup Service syncs every 2 minutes; give it two rounds
RECOVER_POINTER = "Run /cms-recover (the article's recovery runbook) before any further failover"


class Check(Model):
    name: str
    verdict: Verdict
    reason: str
    ref: str | None = None  # what the check is about, for a button on the card (an unknown outcome's id)


class Step(Model):
    kind: str  # start-service | restore | reseed-local | force-replication | status
    server: str
    detail: str  # the exact cmdlet, for the card and the audit
    params: dict[str, Any] = {}


class Plan(Model):
    action: str  # failover | recover
    source: str | None = None
    target: str | None = None
    mode: str | None = None
    run_on: str | None = None
    cmdlet: str | None = None
    steps: list[Step] = []


class OutcomeUnknown(Model):
    """A CMS change or remediation that ended without a known outcome (its worker died, its lock was
    lost after it started, its cmdlet's answer never came). Sticky: no CMS change starts, and no
    remediation runs, until an approver other than its requester says it was checked."""

    id: str  # the request of the change or remediation
    what: str  # what was running, in words
    check: str  # what to check before anything else
    requester: str  # who asked for it (never the one who clears it)
    at: datetime


class RedisDurability(Model):
    """Whether the Redis holding the CMS lock keeps it across a restart (AOF), as Redis reports it."""

    persistent: bool | None  # None: Redis would not say
    detail: str
    accepted: bool = False  # CMSBOT_ALLOW_VOLATILE_REDIS: the operator accepts a Redis that may forget


class Facts(Model):
    collected_at: datetime
    source: str  # the CMS pool as the topology names it
    standby: str | None
    location: Location | None = None
    cms: CmsStatus | None = None
    backup: list[PoolBackup] = []
    health: list[ReplicaHealth] = []
    host_errors: list[HostError] = []
    lock_holder: str | None = None
    cooldown: str | None = None
    changes_in_flight: list[str] = []  # CMS changes queued or started in the job queue (RQ's registries)
    unknown: list[OutcomeUnknown] = []
    redis: RedisDurability | None = None  # None: not read (facts gathered without Redis)


class Preflight(Model):
    plan: Plan
    checks: list[Check]

    @property
    def blocked(self) -> bool:
        return any(c.verdict == BLOCK for c in self.checks)


# -- preflight -------------------------------------------------------------------------


def active_pools(facts: Facts) -> list[str]:
    services = facts.location.services if facts.location else (facts.cms.services if facts.cms else [])
    return [s.pool_fqdn for s in services if s.active]


def _pool_down(topology: Topology, facts: Facts, pool: str) -> bool:
    failed = {e.server for e in facts.host_errors if e.kind.value in ("unreachable", "timed_out")}
    servers = [s.fqdn for s in topology.pool(pool).servers if s.winrm]
    return bool(servers) and all(s in failed for s in servers)


def _services_checks(topology: Topology, facts: Facts, pool: str, verdict: Verdict, label: str) -> Check:
    by_server = {h.fqdn: h for h in facts.health}
    stopped, unknown = [], []
    for s in topology.pool(pool).servers:
        if not s.winrm:
            continue
        h = by_server.get(s.fqdn)
        if h is None:
            unknown.append(s.fqdn)
            continue
        for name in SERVICES:
            state = h.services.get(name)
            if state is not None and state not in (ServiceState.running, ServiceState.missing):
                stopped.append(f"{name} {state.value} on {s.fqdn}")
    if stopped:
        return Check(name=label, verdict=verdict, reason="; ".join(stopped))
    if unknown:
        return Check(name=label, verdict=WARN, reason="could not read: " + ", ".join(unknown))
    return Check(name=label, verdict=GO, reason="LYNCBACKUP, MASTER, REPLICA, FTA running")


def _lock_check(facts: Facts, *, cooldown_blocks: bool = True) -> Check:
    """A running or queued change always blocks; a cooldown blocks a failover but not a recovery,
    which is what a failed failover calls for."""
    if facts.lock_holder:
        return Check(name="one change at a time", verdict=BLOCK,
                     reason=f"another CMS change is running: {facts.lock_holder}")
    if facts.changes_in_flight:
        return Check(name="one change at a time", verdict=BLOCK, reason=(
            "a change is queued or running: " + "; ".join(facts.changes_in_flight)))
    if facts.cooldown:
        return Check(name="one change at a time", verdict=BLOCK if cooldown_blocks else WARN,
                     reason=f"cooldown after the last CMS change: {facts.cooldown}")
    return Check(name="one change at a time", verdict=GO, reason="no CMS change running, no cooldown")


UNKNOWN_CHECK = "unknown outcome"
REDIS_CHECK = "Redis persistence"
ALLOW_VOLATILE = "CMSBOT_ALLOW_VOLATILE_REDIS"


def unknown_reason(m: OutcomeUnknown) -> str:
    return (f"{m.what} ({m.at.strftime('%Y-%m-%d %H:%M UTC')}). {m.check} Once checked, an approver other than "
            "its requester clears it with the button; until then no CMS change or remediation starts.")


def _unknown_checks(facts: Facts) -> list[Check]:
    """One BLOCK for every unknown outcome nobody has cleared: they never expire."""
    return [Check(name=UNKNOWN_CHECK, verdict=BLOCK, reason=unknown_reason(m), ref=m.id) for m in facts.unknown]


def redis_check(d: RedisDurability) -> Check:
    """The CMS lock, its fencing token and the unknown-outcome marker live in Redis: a Redis that
    forgets them on a restart lets a second change start while the first is still converging."""
    if d.persistent:
        return Check(name=REDIS_CHECK, verdict=GO, reason=f"{d.detail}: the CMS lock survives a Redis restart")
    risk = (f"{d.detail}: a Redis restart during the change would forget the CMS lock, and a second change "
            "could start before the first has converged")
    if d.accepted:
        return Check(name=REDIS_CHECK, verdict=WARN, reason=f"{risk}. Accepted by {ALLOW_VOLATILE}")
    return Check(name=REDIS_CHECK, verdict=BLOCK, reason=(
        f"{risk}. Turn on AOF (`appendonly yes` in redis.conf, or `redis-server --appendonly yes`), or accept "
        f"the risk with {ALLOW_VOLATILE}=1 on the workers"))


def _store_checks(facts: Facts) -> list[Check]:
    return ([redis_check(facts.redis)] if facts.redis is not None else []) + _unknown_checks(facts)


MANUAL_MOVE = ("Lync Server 2010 has no Invoke-CsManagementServerFailover. Move the CMS manually: install the "
               "database on the new store (Install-CsDatabase -CentralManagementDatabase), then run "
               "Move-CsManagementServer on a server of the new pool, then publish and re-run setup")


def preflight_failover(topology: Topology, facts: Facts, requested_target: str | None, mode: str) -> Preflight:
    checks: list[Check] = []
    active = active_pools(facts)
    source = active[0] if len(active) == 1 else facts.source
    pairs = facts.location.pairs if facts.location else {}
    paired = pairs.get(source) or (pp.fqdn if (pp := topology.paired_pool(source)) else None)
    target = requested_target or paired

    version = topology.deployment.version
    if not version.has_failover_cmdlet:
        checks.append(Check(name="version", verdict=BLOCK, reason=MANUAL_MOVE))
    else:
        checks.append(Check(name="version", verdict=GO, reason=f"{version.label}: Invoke-CsManagementServerFailover"))
    checks.append(_lock_check(facts))
    checks += _store_checks(facts)

    if target is None:
        checks.append(Check(name="target", verdict=BLOCK, reason=f"{source} has no paired pool to fail over to"))
    elif target == source:
        checks.append(Check(name="target", verdict=BLOCK, reason=f"{target} already holds the CMS"))
    elif paired and target != paired:
        checks.append(Check(name="target", verdict=BLOCK,
                            reason=f"{target} is not the backup pool of {source} (that is {paired})"))
    else:
        checks.append(Check(name="target", verdict=GO, reason=f"{target} is the backup pool of {source}"))

    if len(active) > 1:
        checks.append(Check(name="CMS location", verdict=BLOCK,
                            reason=f"{' and '.join(active)} both claim the CMS. {RECOVER_POINTER}"))
    elif not active:
        checks.append(Check(name="CMS location", verdict=WARN,
                            reason="Get-CsService -CentralManagement could not be read"))
    else:
        checks.append(Check(name="CMS location", verdict=GO, reason=f"the CMS is in {source}"))

    checks.append(_store_check(topology, facts, source))
    source_down = _pool_down(topology, facts, source)
    master = facts.cms.store.active_master_fqdn if facts.cms else None
    if mode == "disaster":
        if source_down or (facts.cms is not None and not facts.cms.store.available):
            checks.append(Check(name="disaster mode", verdict=GO,
                                reason=f"{source} is down" if source_down else "the CMS is unavailable"))
        else:
            checks.append(Check(name="disaster mode", verdict=BLOCK,
                                reason=f"disaster mode only when the CMS pool is down; {source} answers: "
                                       "use normal mode"))
    elif facts.cms is None:
        checks.append(Check(name="active master", verdict=BLOCK, reason="the CMS could not be read from any server"))
    elif not master:
        checks.append(Check(name="active master", verdict=BLOCK, reason=(
            "ActiveMasterFqdn is blank: the CMS is unavailable. "
            + ("The CMS pool is down: use disaster mode." if source_down else RECOVER_POINTER))))
    else:
        checks.append(Check(name="active master", verdict=GO, reason=f"ActiveMasterFqdn {master}"))

    if target:
        checks.append(_backup_check(facts, source, target, mode))
        checks.append(_services_checks(topology, facts, target, BLOCK, f"services in {target}"))
    if mode != "disaster":
        checks.append(_services_checks(topology, facts, source, WARN, f"services in {source}"))
    checks.append(_replicas_check(facts))
    checks.append(_change_age_check(facts))

    run_on = _first_answering(topology, facts, target) if target else None
    if target and run_on is None:
        checks.append(Check(name="run on", verdict=BLOCK, reason=f"no server of {target} answers WinRM"))
    # -Force belongs to the disaster parameter set only (and skips the wait for replication)
    cmdlet = "Invoke-CsManagementServerFailover -Confirm:$false"
    params: dict[str, Any] = {"mode": mode}
    if mode == "disaster" and target:
        sql = (facts.location.backend_sql.get(target) if facts.location else None) or topology.pool(target).backend_sql
        instance = topology.pool(target).backend_sql_instance
        if not sql:
            checks.append(Check(name="backup SQL", verdict=BLOCK, reason=(
                f"the back-end SQL Server of {target} is unknown: add backend_sql to its pool in the topology")))
        else:
            params["backupSqlServerFqdn"] = sql
            cmdlet = f"Invoke-CsManagementServerFailover -BackupSqlServerFqdn {sql}"
            if instance:
                params["backupSqlInstanceName"] = instance
                cmdlet += f" -BackupSqlInstanceName {instance}"
            cmdlet += " -Force -Confirm:$false"
    plan = Plan(action="failover", source=source, target=target, mode=mode, run_on=run_on, cmdlet=cmdlet,
                steps=[Step(kind="failover", server=run_on or "?", detail=cmdlet, params=params)])
    return Preflight(plan=plan, checks=checks)


def _store_check(topology: Topology, facts: Facts, active: str) -> Check:
    store = facts.location.store_sql if facts.location else None
    if not store:
        return Check(name="CMS store", verdict=WARN, reason="Get-CsManagementConnection could not be read")
    owner = owner_pool(topology, facts)
    if owner is None:
        return Check(name="CMS store", verdict=WARN, reason=f"the SQL store {store} belongs to no pool of the pair")
    if owner != active:
        return Check(name="CMS store", verdict=BLOCK, reason=(
            f"the CMS SQL store ({store}) belongs to {owner}, but {active} is active: Active Directory and the "
            f"topology disagree. {RECOVER_POINTER}"))
    return Check(name="CMS store", verdict=GO, reason=f"Get-CsManagementConnection: {store} ({owner})")


def owner_pool(topology: Topology, facts: Facts) -> str | None:
    store = (facts.location.store_sql or "").lower() if facts.location else ""
    for pool in (facts.source, facts.standby):
        if not pool:
            continue
        sql = (facts.location.backend_sql.get(pool) if facts.location else None) or topology.pool(pool).backend_sql
        if store and sql and sql.lower() == store:
            return pool
    return None


def _backup_check(facts: Facts, source: str, target: str, mode: str) -> Check:
    if not facts.backup:
        return Check(name="Backup Service", verdict=WARN, reason="Get-CsBackupServiceStatus could not be read")
    bad, states = [], []
    for pool in facts.backup:
        for m in pool.modules:
            if not m.identity.lower().startswith("centralmgmt"):
                continue
            states.append(f"{pool.pool}: export {m.export_status}, import {m.import_status}")
            if "error" in (m.export_status or "").lower() or "error" in (m.import_status or "").lower():
                bad.append(pool.pool)
    if bad:
        verdict = WARN if mode == "disaster" else BLOCK
        return Check(name="Backup Service", verdict=verdict, reason=(
            "CMS backup in ErrorState (" + "; ".join(states) + ")"
            + (": the standby may miss recent changes (RPO)" if mode == "disaster" else "")))
    return Check(name="Backup Service", verdict=GO, reason="; ".join(states) or "no CMS module reported")


def _replicas_check(facts: Facts) -> Check:
    if facts.cms is None:
        return Check(name="replicas", verdict=WARN, reason="replication status could not be read")
    behind = [r.fqdn for r in facts.cms.replicas if not r.up_to_date]
    if behind:
        return Check(name="replicas", verdict=WARN, reason=f"{len(behind)} not up to date: {', '.join(behind[:8])}")
    return Check(name="replicas", verdict=GO, reason=f"all {len(facts.cms.replicas)} up to date")


def _change_age_check(facts: Facts) -> Check:
    if facts.cms is None or not facts.cms.replicas:
        return Check(name="last CMS change", verdict=WARN, reason="unknown")
    last = max((r.last_update_creation for r in facts.cms.replicas if r.last_update_creation), default=None)
    if last is None:
        return Check(name="last CMS change", verdict=WARN, reason="unknown")
    age = facts.cms.collected_at - last
    if age < FRESH_CHANGE:
        return Check(name="last CMS change", verdict=WARN, reason=(
            f"{int(age.total_seconds())} s ago: the Backup Service copies the CMS every 2 minutes; wait until it has"))
    return Check(name="last CMS change", verdict=GO, reason=f"{int(age.total_seconds() // 60)} min ago")


def _first_answering(topology: Topology, facts: Facts, pool: str) -> str | None:
    failed = {e.server for e in facts.host_errors}
    answered = {h.fqdn for h in facts.health}
    return next((s.fqdn for s in topology.pool(pool).servers
                 if s.winrm and s.fqdn in answered and s.fqdn not in failed), None)


def preflight_recover(topology: Topology, facts: Facts, plan_id: str) -> Preflight:
    """The article's resolution, as a plan computed from live facts."""
    if not topology.deployment.version.has_failover_cmdlet:
        # the runbook's step 1 is Invoke-CsManagementServerFailover -Restore: no plan to show
        return Preflight(plan=Plan(action="recover", target=None, run_on=None, steps=[]), checks=[
            Check(name="version", verdict=BLOCK, reason="Lync Server 2010 has no Invoke-CsManagementServerFailover "
                                                        "-Restore, so the article's recovery does not apply. "
                                                        + MANUAL_MOVE.split(". ", 1)[1])])
    checks = [Check(name="version", verdict=GO, reason="Invoke-CsManagementServerFailover -Restore"),
              _lock_check(facts, cooldown_blocks=False), *_store_checks(facts)]
    owner = owner_pool(topology, facts)
    store = facts.location.store_sql if facts.location else None
    if owner is None:
        checks.append(Check(name="CMS store owner", verdict=BLOCK, reason=(
            f"cannot tell which pool owns the CMS SQL store ({store or 'Get-CsManagementConnection unreadable'}); "
            "set backend_sql for both pools in the topology")))
    else:
        checks.append(Check(name="CMS store owner", verdict=GO,
                            reason=f"Get-CsManagementConnection: {store} is {owner}'s"))
    active = active_pools(facts)
    healthy = facts.cms is not None and facts.cms.store.available and len(active) == 1 and active[0] == owner
    checks.append(Check(name="needed", verdict=WARN if healthy else GO, reason=(
        "the CMS looks healthy (one active pool, master set): recovery is not needed" if healthy else
        f"active pools: {', '.join(active) or 'none'}; master: "
        f"{(facts.cms.store.active_master_fqdn if facts.cms else None) or 'blank'}")))
    steps: list[Step] = []
    by_server = {h.fqdn: h for h in facts.health}
    for pool in [p for p in (facts.source, facts.standby) if p]:
        for s in topology.pool(pool).servers:
            h = by_server.get(s.fqdn)
            for name in SERVICES:
                if h and h.services.get(name) not in (None, ServiceState.running, ServiceState.missing):
                    steps.append(Step(kind="start-service", server=s.fqdn, params={"name": name},
                                      detail=f"Start-CsWindowsService -Name {name} (on {s.fqdn})"))
    if owner:
        servers = [s.fqdn for s in topology.pool(owner).servers if s.winrm and s.fqdn in by_server]
        skipped = [s.fqdn for s in topology.pool(owner).servers if s.fqdn not in servers]
        if not servers:
            checks.append(Check(name="servers", verdict=BLOCK, reason=f"no server of {owner} answers WinRM"))
        else:
            checks.append(Check(name="servers", verdict=WARN if skipped else GO, reason=(
                f"{len(servers)} of {owner}'s servers answer"
                + (f"; skipped: {', '.join(skipped)}" if skipped else ""))))
            steps.append(Step(kind="restore", server=servers[0],
                              detail="Invoke-CsManagementServerFailover -Restore -Confirm:$false"))
            for server in servers:
                name = f"cmsbot-config-{plan_id}-{server.split('.')[0]}.zip".lower()
                steps.append(Step(kind="reseed-local", server=server, params={"fileName": name}, detail=(
                    f"Export-CsConfiguration -FileName %ProgramData%\\cmsbot\\exports\\{name}; Import-CsConfiguration "
                    f"-FileName (same) -LocalStore (the zip is kept as a DR backup)")))
            for server in servers:
                steps.append(Step(kind="force-replication", server=server, params={"replicas": []},
                                  detail="Invoke-CsManagementStoreReplication"))
    steps.append(Step(kind="status", server=owner or facts.source, detail="/cms-status of the deployment"))
    return Preflight(plan=Plan(action="recover", target=owner, run_on=steps[0].server if steps else None, steps=steps),
                     checks=checks)


# -- failure recognition -------------------------------------------------------------

SIGNATURES = [
    (FindingCode.failover_being_moved, ("50020", "being moved"),
     "The CMS is marked as being moved (seed scenario 1): after a forced failover the returned pool's database "
     "still says active, and the Backup Service has not marked it Backup yet"),
    (FindingCode.failover_not_backup_mode, ("not in backup mode",),
     "The target pool's CMS database is not in Backup mode (seed scenario 2): a previous failover left it marked "
     "active"),
    (FindingCode.failover_in_progress, ("previous failover attempt", "failover in progress"),
     "A previous failover has not finished (seed scenario 2), or Active Directory has not replicated it yet"),
]


def recognise(errors: list[str], warnings: list[str], where: str, at: datetime | None = None) -> list[Finding]:
    text = " ".join(errors + warnings).lower()
    found = []
    for code, needles, meaning in SIGNATURES:
        if any(n in text for n in needles):
            evidence = [Evidence(text=e, source=f"Invoke-CsManagementServerFailover on {where}", at=at)
                        for e in errors + [f"WARNING: {w}" for w in warnings]]
            found.append(Finding(code=code, severity=Severity.critical, subject=where, summary=meaning,
                                 evidence=evidence, fix=["Do not retry the failover now", RECOVER_POINTER]))
    return found


# -- after the change ------------------------------------------------------------------------


def converged(cms: CmsStatus | None, location_services: list[CmsService], target: str,
              topology: Topology) -> tuple[bool, str]:
    if cms is None:
        return False, "the CMS could not be read"
    # Microsoft's failover article expects ActiveMasterFqdn to point "to the FQDN of CMS_Pool" (for a
    # Standard Edition server that is its own FQDN); the lab names a pool member. Accept either.
    in_target = {s.fqdn.lower() for s in topology.pool(target).servers} | {target.lower()}
    master = cms.store.active_master_fqdn
    ftas = cms.store.active_file_transfer_agents
    active = [s.pool_fqdn for s in (location_services or cms.services) if s.active]
    current = sum(r.up_to_date for r in cms.replicas)
    state = (f"master {master or 'blank'}, FTA {', '.join(ftas) or 'none'}, active {', '.join(active) or 'none'}, "
             f"{current}/{len(cms.replicas)} replicas up to date")
    ok = ((master or "").lower() in in_target and bool(ftas) and all(f.lower() in in_target for f in ftas)
          and active == [target] and current == len(cms.replicas))
    return ok, state


def describe_plan(plan: Plan) -> str:
    if plan.action == "failover":
        return f"{plan.mode} failover of the CMS from {plan.source} to {plan.target} on {plan.run_on}: `{plan.cmdlet}`"
    return f"CMS recovery in {plan.target}: {len(plan.steps)} steps"


def plan_json(preflight: Preflight) -> dict[str, Any]:
    return json.loads(preflight.plan.model_dump_json())
