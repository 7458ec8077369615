"""Failover and recovery preflight, failure-mode recognition and the approved plan, from facts
gathered out of probe output recorded from the lab.

workers.runs.failover.gather() reads the Fleet and builds its Facts in one function, so the facts come
from running gather() on a stand-in Fleet that answers with the recorded calls (tests/unit/
recorded.py). Everything after it is pure (cms.preflight): preflight_failover, preflight_recover,
recognise, converged, describe_plan, plan_json, and approvals.plan_hash. One test per GO / WARN / BLOCK rule.
Expectations come from README.md ("Team-approved CMS failover and recovery") and the seed article
cms-failover-fails.md as restated in shared/domain.md section 5.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from cms import topology as topo
from cms.models import Severity
from cms.preflight import (
    BLOCK,
    GO,
    RECOVER_POINTER,
    WARN,
    OutcomeUnknown,
    RedisDurability,
    converged,
    describe_plan,
    plan_json,
    preflight_failover,
    preflight_recover,
    recognise,
)
from hub import approvals
from tests.unit import recorded as R

pytestmark = pytest.mark.unit

FE1, FE2, FE3, FE4 = "fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com", "fe04.contoso.com"
POOL1, POOL2 = "pool01.contoso.com", "pool02.contoso.com"
RECOVER = "/cms-recover"


def failover(name: str, target: str | None = None, mode: str = "normal", **facts_update):
    facts = R.facts(name).model_copy(update=facts_update)
    return preflight_failover(R.topology_of(name), facts, target, mode)


def recover(name: str, plan_id: str = "a1b2c3", **facts_update):
    facts = R.facts(name).model_copy(update=facts_update)
    return preflight_recover(R.topology_of(name), facts, plan_id)


def check(pre, name: str):
    hits = [c for c in pre.checks if c.name == name]
    assert len(hits) == 1, f"check {name!r}: {[c.name for c in pre.checks]}"
    return hits[0]


def verdict_of(pre, name: str) -> tuple[str, str]:
    c = check(pre, name)
    return c.verdict, c.reason


# -- the whole preflight ---------------------------------------------------------------------------------


def test_a_healthy_pair_is_go_on_every_check_with_the_exact_plan():
    pre = failover("healthy")
    assert not pre.blocked
    assert {c.verdict for c in pre.checks} == {GO}
    assert [c.name for c in pre.checks] == [
        "version", "one change at a time", "target", "CMS location", "CMS store", "active master", "Backup Service",
        f"services in {POOL2}", f"services in {POOL1}", "replicas", "last CMS change"]
    plan = pre.plan
    assert (plan.action, plan.source, plan.target, plan.mode, plan.run_on) == ("failover", POOL1, POOL2, "normal", FE3)
    assert plan.cmdlet == "Invoke-CsManagementServerFailover -Confirm:$false"  # run on the pool that takes over
    assert [(s.kind, s.server, s.detail) for s in plan.steps] == [("failover", FE3, plan.cmdlet)]


# -- version ---------------------------------------------------------------------------------------------


def test_version_go_names_the_failover_cmdlet():
    assert verdict_of(failover("healthy"), "version") == (
        GO, "Skype for Business Server 2019: Invoke-CsManagementServerFailover")


def test_version_lync_2010_blocks_and_explains_the_manual_move():
    v, reason = verdict_of(failover("healthy@lync2010"), "version")
    assert v == BLOCK
    assert "Lync Server 2010 has no Invoke-CsManagementServerFailover" in reason
    assert "Move-CsManagementServer" in reason and "Install-CsDatabase -CentralManagementDatabase" in reason


# -- one change at a time ---------------------------------------------------------------------------------

HOLDER = "normal failover of the CMS from pool01.contoso.com to pool02.contoso.com (request r1)"
COOLDOWN = "until 12:15:00 UTC (after the failover of request r1)"


def test_lock_go_when_nothing_runs_and_no_cooldown():
    assert verdict_of(failover("healthy"), "one change at a time") == (GO, "no CMS change running, no cooldown")


def test_lock_a_running_change_blocks_a_failover():
    assert verdict_of(failover("healthy", lock_holder=HOLDER), "one change at a time") == (
        BLOCK, f"another CMS change is running: {HOLDER}")


def test_lock_the_cooldown_blocks_a_failover():
    assert verdict_of(failover("healthy", cooldown=COOLDOWN), "one change at a time") == (
        BLOCK, f"cooldown after the last CMS change: {COOLDOWN}")


# -- target ----------------------------------------------------------------------------------------------


def test_target_go_is_the_paired_backup_pool():
    assert verdict_of(failover("healthy"), "target") == (GO, f"{POOL2} is the backup pool of {POOL1}")


def test_target_no_paired_pool_blocks():
    assert verdict_of(failover("healthy@lync2010"), "target") == (BLOCK, f"{POOL1} has no paired pool to fail over to")


def test_target_the_pool_that_holds_the_cms_blocks():
    assert verdict_of(failover("healthy", POOL1), "target") == (BLOCK, f"{POOL1} already holds the CMS")


def test_target_a_front_end_pool_that_is_not_the_backup_pool_blocks():
    assert verdict_of(failover("healthy@3-pools", "pool03.contoso.com"), "target") == (
        BLOCK, f"pool03.contoso.com is not the backup pool of {POOL1} (that is {POOL2})")


# -- CMS location (Get-CsService -CentralManagement) -------------------------------------------------------


def test_location_go_names_the_active_pool():
    assert verdict_of(failover("healthy"), "CMS location") == (GO, f"the CMS is in {POOL1}")


@pytest.mark.parametrize("name", ["both-active", "standby-not-backup", "moving-after-forced-failover"])
def test_location_two_active_pools_block_and_point_to_the_recovery(name):
    v, reason = verdict_of(failover(name), "CMS location")
    assert v == BLOCK
    assert POOL1 in reason and POOL2 in reason and "both claim the CMS" in reason and RECOVER in reason


def test_location_unreadable_warns():
    assert verdict_of(failover("cms-readers-unreachable"), "CMS location") == (
        WARN, "Get-CsService -CentralManagement could not be read")


# -- CMS store (Get-CsManagementConnection) ------------------------------------------------------------------


def test_store_go_names_the_sql_store_and_its_pool():
    assert verdict_of(failover("healthy"), "CMS store") == (
        GO, f"Get-CsManagementConnection: sql01.contoso.com ({POOL1})")


def test_store_owned_by_the_other_pool_blocks():
    """Seed failover scenario 1: after a forced failover AD and the topology disagree on where the CMS is."""
    v, reason = verdict_of(failover("moving-after-forced-failover"), "CMS store")
    assert v == BLOCK
    assert f"the CMS SQL store (sql02.contoso.com) belongs to {POOL2}, but {POOL1} is active" in reason
    assert RECOVER in reason


def test_store_unreadable_warns():
    assert verdict_of(failover("cms-readers-unreachable"), "CMS store") == (
        WARN, "Get-CsManagementConnection could not be read")


def test_store_outside_the_pair_warns():
    """Derived: the lab's store is always one of the pair's back ends; here the recorded location
    of the healthy lab says another SQL Server holds it."""
    location = R.facts("healthy").location.model_copy(update={"store_sql": "sql99.contoso.com"})
    assert verdict_of(failover("healthy", location=location), "CMS store") == (
        WARN, "the SQL store sql99.contoso.com belongs to no pool of the pair")


# -- active master (normal mode) ----------------------------------------------------------------------------


def test_active_master_go_names_it():
    assert verdict_of(failover("healthy"), "active master") == (GO, f"ActiveMasterFqdn {FE1}")


@pytest.mark.parametrize("name", ["cms-unavailable", "failover-in-progress"])
def test_active_master_blank_blocks_and_points_to_the_recovery(name):
    """Seed failover scenario 3: ActiveMasterFqdn blank."""
    assert verdict_of(failover(name), "active master") == (
        BLOCK, f"ActiveMasterFqdn is blank: the CMS is unavailable. {RECOVER_POINTER}")


def test_active_master_blank_with_the_cms_pool_down_points_to_disaster_mode():
    assert verdict_of(failover("cms-pool-down"), "active master") == (
        BLOCK, "ActiveMasterFqdn is blank: the CMS is unavailable. The CMS pool is down: use disaster mode.")


def test_active_master_unreadable_blocks():
    assert verdict_of(failover("cms-readers-unreachable"), "active master") == (
        BLOCK, "the CMS could not be read from any server")


# -- disaster mode (README: allowed only when preflight shows the CMS pool is down) -------------------------


def test_disaster_mode_blocks_while_the_cms_pool_answers():
    pre = failover("healthy", mode="disaster")
    assert verdict_of(pre, "disaster mode") == (
        BLOCK, f"disaster mode only when the CMS pool is down; {POOL1} answers: use normal mode")
    assert pre.blocked


def test_disaster_mode_go_when_the_cms_pool_is_down_with_the_exact_cmdlet():
    pre = failover("cms-pool-down", mode="disaster")
    assert verdict_of(pre, "disaster mode") == (GO, f"{POOL1} is down")
    assert not pre.blocked
    assert pre.plan.run_on == FE3 and pre.plan.mode == "disaster"
    assert pre.plan.cmdlet == ("Invoke-CsManagementServerFailover -BackupSqlServerFqdn sql02.contoso.com "
                               "-BackupSqlInstanceName rtc -Force -Confirm:$false")
    assert pre.plan.steps[0].params == {"mode": "disaster", "backupSqlServerFqdn": "sql02.contoso.com",
                                        "backupSqlInstanceName": "rtc"}


def test_disaster_mode_go_when_the_cms_is_unavailable():
    assert verdict_of(failover("cms-unavailable", mode="disaster"), "disaster mode") == (GO, "the CMS is unavailable")


def test_disaster_mode_does_not_ask_for_the_services_of_the_pool_that_is_down():
    names = [c.name for c in failover("cms-pool-down", mode="disaster").checks]
    assert f"services in {POOL2}" in names and f"services in {POOL1}" not in names


def test_disaster_mode_blocks_when_the_backup_sql_server_is_unknown():
    """Derived: the lab always knows each pool's back end; here the topology (as a user may write
    it) has no backend_sql and the recorded location is read without it."""
    name = "cms-pool-down"
    text = (R.RECORDED / R.doc(name)["topology"]).read_text()
    without_sql = topo.parse(re.sub(r"\n\s+backend_sql(_instance)?: \S+", "", text))
    location = R.facts(name).location.model_copy(update={"backend_sql": {}})
    pre = preflight_failover(without_sql, R.facts(name).model_copy(update={"location": location}), None, "disaster")
    assert verdict_of(pre, "backup SQL") == (
        BLOCK, f"the back-end SQL Server of {POOL2} is unknown: add backend_sql to its pool in the topology")


# -- Backup Service, both directions -------------------------------------------------------------------------


def test_backup_go_shows_export_and_import_of_both_pools():
    assert verdict_of(failover("healthy"), "Backup Service") == (
        GO, f"{POOL1}: export SteadyState, import NormalState; {POOL2}: export SteadyState, import NormalState")


def test_backup_error_state_blocks_a_normal_failover():
    v, reason = verdict_of(failover("backup-error"), "Backup Service")
    assert v == BLOCK and reason.startswith("CMS backup in ErrorState") and f"{POOL1}: export ErrorState" in reason


def test_backup_error_state_only_warns_in_disaster_mode_and_names_the_rpo():
    v, reason = verdict_of(failover("cms-pool-down+backup-error", mode="disaster"), "Backup Service")
    assert v == WARN and f"{POOL1}: export ErrorState" in reason
    assert "the standby may miss recent changes (RPO)" in reason


def test_backup_unreadable_warns():
    assert verdict_of(failover("cms-readers-unreachable"), "Backup Service") == (
        WARN, "Get-CsBackupServiceStatus could not be read")


# -- the four replication services in both pools ----------------------------------------------------------


def test_services_go_when_all_four_run():
    assert verdict_of(failover("healthy"), f"services in {POOL2}") == (GO, "LYNCBACKUP, MASTER, REPLICA, FTA running")


def test_services_stopped_in_the_target_pool_block():
    assert verdict_of(failover("replica-stopped"), f"services in {POOL2}") == (BLOCK, f"REPLICA stopped on {FE3}")


def test_services_stopped_in_the_source_pool_warn():
    pre = failover("replica-stopped-cms-pool")
    assert verdict_of(pre, f"services in {POOL1}") == (WARN, f"REPLICA stopped on {FE2}")
    assert not pre.blocked


def test_services_unreadable_warn_and_name_the_servers():
    pre = failover("unreachable")
    assert verdict_of(pre, f"services in {POOL2}") == (WARN, f"could not read: {FE4}")
    assert verdict_of(pre, f"services in {POOL1}") == (WARN, f"could not read: {FE2}")
    assert pre.plan.run_on == FE3  # the failover runs on a server of the target pool that answers


# -- replicas, last change, where it runs ---------------------------------------------------------------------


def test_replicas_go_when_all_are_up_to_date():
    assert verdict_of(failover("healthy"), "replicas") == (GO, "all 8 up to date")


def test_replicas_behind_warn_and_are_named():
    assert verdict_of(failover("replica-behind"), "replicas") == (WARN, "1 not up to date: dir01.contoso.com")


def test_replicas_unreadable_warn():
    assert verdict_of(failover("cms-readers-unreachable"), "replicas") == (WARN, "replication status could not be read")


def test_last_change_long_ago_is_go():
    assert verdict_of(failover("healthy"), "last CMS change") == (GO, "120 min ago")  # the lab's change: 2 h ago


def test_last_change_within_two_backup_rounds_warns():
    """domain.md 3: the Backup Service syncs every 2 minutes; the transient lab changed 45 s ago."""
    v, reason = verdict_of(failover("transient"), "last CMS change")
    assert v == WARN
    assert re.fullmatch(r"4\d s ago: the Backup Service copies the CMS every 2 minutes; wait until it has", reason)


def test_last_change_unknown_warns():
    assert verdict_of(failover("cms-readers-unreachable"), "last CMS change") == (WARN, "unknown")


def test_run_on_blocks_when_no_server_of_the_target_answers():
    pre = failover("standby-pool-unreachable")
    assert verdict_of(pre, "run on") == (BLOCK, f"no server of {POOL2} answers WinRM")
    assert pre.plan.run_on is None


# -- recovery: the article's resolution ------------------------------------------------------------------------


def test_recover_version_go_uses_restore_and_lync_2010_blocks():
    assert verdict_of(recover("both-active"), "version") == (GO, "Invoke-CsManagementServerFailover -Restore")
    legacy = recover("healthy@lync2010")
    v, reason = verdict_of(legacy, "version")
    assert v is BLOCK and reason.startswith("Lync Server 2010 has no Invoke-CsManagementServerFailover -Restore")
    assert "Move-CsManagementServer on a server of the new pool" in reason
    # the runbook starts with the cmdlet 2010 lacks: the card shows no plan to approve
    assert legacy.plan.steps == [] and [c.name for c in legacy.checks] == ["version"]


def test_recover_a_running_change_blocks_but_the_cooldown_only_warns():
    """README: the cooldown holds back the next failover; recovery may run during it."""
    assert verdict_of(recover("both-active", lock_holder=HOLDER), "one change at a time") == (
        BLOCK, f"another CMS change is running: {HOLDER}")
    pre = recover("both-active", cooldown=COOLDOWN)
    assert verdict_of(pre, "one change at a time") == (WARN, f"cooldown after the last CMS change: {COOLDOWN}")
    assert not pre.blocked
    assert verdict_of(recover("both-active"), "one change at a time") == (GO, "no CMS change running, no cooldown")


def test_recover_the_store_owner_is_found_from_get_csmanagementconnection():
    assert verdict_of(recover("both-active"), "CMS store owner") == (
        GO, f"Get-CsManagementConnection: sql01.contoso.com is {POOL1}'s")
    assert verdict_of(recover("moving-after-forced-failover"), "CMS store owner") == (
        GO, f"Get-CsManagementConnection: sql02.contoso.com is {POOL2}'s")


def test_recover_blocks_when_the_store_owner_cannot_be_told():
    v, reason = verdict_of(recover("cms-readers-unreachable"), "CMS store owner")
    assert v == BLOCK and "cannot tell which pool owns the CMS SQL store" in reason
    assert "Get-CsManagementConnection unreadable" in reason


def test_recover_warns_that_a_healthy_cms_does_not_need_it():
    assert verdict_of(recover("healthy"), "needed") == (
        WARN, "the CMS looks healthy (one active pool, master set): recovery is not needed")


@pytest.mark.parametrize("name, says", [
    ("both-active", f"active pools: {POOL1}, {POOL2}; master: {FE1}"),
    ("cms-unavailable", f"active pools: {POOL1}; master: blank"),
])
def test_recover_is_needed_when_two_pools_are_active_or_the_master_is_blank(name, says):
    assert verdict_of(recover(name), "needed") == (GO, says)


def test_recover_servers_go_warn_block():
    assert verdict_of(recover("healthy"), "servers") == (GO, f"2 of {POOL1}'s servers answer")
    assert verdict_of(recover("unreachable"), "servers") == (WARN, f"1 of {POOL1}'s servers answer; skipped: {FE2}")
    assert verdict_of(recover("cms-pool-down"), "servers") == (BLOCK, f"no server of {POOL1} answers WinRM")


def test_recover_plan_follows_the_article_in_the_pool_that_owns_the_store():
    """Seed failover resolution: (1) start stopped services in both pools, (3) -Restore on one server of
    the owning pool, (4) export + import -LocalStore on each of its servers, (5) replicate on each,
    then check the status."""
    pre = recover("moving-after-forced-failover", plan_id="a77")
    assert not pre.blocked and pre.plan.target == POOL2
    assert [(s.kind, s.server) for s in pre.plan.steps] == [
        ("restore", FE3), ("reseed-local", FE3), ("reseed-local", FE4),
        ("force-replication", FE3), ("force-replication", FE4), ("status", POOL2)]
    restore, export = pre.plan.steps[0], pre.plan.steps[1]
    assert restore.detail == "Invoke-CsManagementServerFailover -Restore -Confirm:$false"
    assert "Export-CsConfiguration" in export.detail and "Import-CsConfiguration" in export.detail
    assert "-LocalStore" in export.detail and "kept as a DR backup" in export.detail
    assert export.params == {"fileName": "cmsbot-config-a77-fe03.zip"}


def test_recover_starts_stopped_services_first():
    pre = recover("replica-stopped")
    assert (pre.plan.steps[0].kind, pre.plan.steps[0].server, pre.plan.steps[0].detail) == (
        "start-service", FE3, f"Start-CsWindowsService -Name REPLICA (on {FE3})")
    assert [s.kind for s in pre.plan.steps[1:]][:1] == ["restore"]


# -- recognising the seed article's failure modes in the cmdlet's own output -----------------------------------

SEED_TEXT = {  # verbatim from shared/seeds/cms-failover-fails.md
    "failover.being-moved": (
        ["###50020:XDSForceReplication: This central management store is being moved to another location. No changes "
         "can be made until this move is complete"],
        ["The Central Management Store database in Active Directory doesn't match the one in the topology"]),
    "failover.not-backup-mode": (
        ["Invoke-CsManagementServerFailover: Cannot fail over the Central Management Server. The new Central "
         'Management Store located at "skypepool.contoso.com" is not in Backup mode.'], []),
    "failover.in-progress": (
        ["Invoke-CSManagementServerFailover: Central Management Server cannot be moved to pool skypepool.contoso.com "
         "because either a previous failover attempt failover or there is already a failover in progress. If the "
         "central management server was recently moved to another pool this condition might be caused by a delay in "
         "Active Directory Replication"], []),
}


@pytest.mark.parametrize("name, code", [
    ("moving-after-forced-failover", "failover.being-moved"),  # seed scenario 1
    ("standby-not-backup", "failover.not-backup-mode"),  # seed scenario 2, first message
    ("failover-in-progress", "failover.in-progress"),  # seed scenario 2, second message
])
def test_each_failure_mode_is_recognised_in_the_recorded_cmdlet_output(name, code):
    server, cmdlet = R.failover_attempt(name)
    assert cmdlet.succeeded is False
    found = recognise(cmdlet.errors, cmdlet.warnings, server)
    assert [f.code for f in found] == [code]
    f = found[0]
    assert (f.subject, f.severity) == (server, Severity.critical)
    assert [e.text for e in f.evidence] == cmdlet.errors + [f"WARNING: {w}" for w in cmdlet.warnings]
    assert all(e.source == f"Invoke-CsManagementServerFailover on {server}" for e in f.evidence)
    assert f.fix == ["Do not retry the failover now", RECOVER_POINTER]


@pytest.mark.parametrize("code", list(SEED_TEXT))
def test_each_failure_mode_is_recognised_in_the_seed_articles_words(code):
    errors, warnings = SEED_TEXT[code]
    assert [f.code for f in recognise(errors, warnings, FE3)] == [code]


def test_the_seed_scenario_1_warning_alone_is_not_taken_for_another_failure():
    assert recognise([], SEED_TEXT["failover.being-moved"][1], FE1) == []


def test_both_scenario_2_messages_together_give_both_findings():
    errors = SEED_TEXT["failover.not-backup-mode"][0] + SEED_TEXT["failover.in-progress"][0]
    assert {f.code for f in recognise(errors, [], FE3)} == {"failover.not-backup-mode", "failover.in-progress"}


# -- the approved plan: what the approver sees is what runs ----------------------------------------------------


def test_the_plan_hash_is_the_same_for_the_same_facts_and_key_order():
    a, b = plan_json(failover("healthy")), plan_json(failover("healthy"))
    assert approvals.plan_hash(a) == approvals.plan_hash(b)
    assert approvals.plan_hash(dict(reversed(list(a.items())))) == approvals.plan_hash(a)


def test_the_plan_hash_changes_with_anything_the_approver_saw():
    normal = plan_json(failover("cms-pool-down"))
    disaster = plan_json(failover("cms-pool-down", mode="disaster"))
    moved = plan_json(failover("unreachable"))  # run on fe03 as well, same cmdlet: same plan
    elsewhere = dict(normal, run_on=FE4, steps=[dict(normal["steps"][0], server=FE4)])
    hashes = {approvals.plan_hash(p) for p in (normal, disaster, elsewhere)}
    assert len(hashes) == 3
    assert approvals.plan_hash(moved) == approvals.plan_hash(plan_json(failover("healthy")))


def test_the_plan_is_described_with_the_exact_cmdlet():
    assert describe_plan(failover("healthy").plan) == (
        f"normal failover of the CMS from {POOL1} to {POOL2} on {FE3}: "
        "`Invoke-CsManagementServerFailover -Confirm:$false`")
    assert describe_plan(recover("both-active").plan) == f"CMS recovery in {POOL1}: 6 steps"


# -- convergence (README: master and FTAs in the target, the old pool Backup, every replica up to date) ---------


def test_converged_only_when_master_ftas_and_the_only_active_pool_are_the_target():
    facts = R.facts("healthy")
    topology = R.topology_of("healthy")
    ok, state = converged(facts.cms, facts.location.services, POOL1, topology)
    assert ok and state == f"master {FE1}, FTA {FE1}, active {POOL1}, 8/8 replicas up to date"
    assert converged(facts.cms, facts.location.services, POOL2, topology)[0] is False


def test_converged_when_the_store_names_the_pool_not_a_server():
    """Microsoft's failover article: ActiveMasterFqdn points "to the FQDN of CMS_Pool" (an Enterprise pool)."""
    facts = R.facts("healthy")
    store = facts.cms.store.model_copy(update={"active_master_fqdn": POOL1, "active_file_transfer_agents": [POOL1]})
    cms = facts.cms.model_copy(update={"store": store})
    ok, state = converged(cms, facts.location.services, POOL1, R.topology_of("healthy"))
    assert ok and state.startswith(f"master {POOL1}, FTA {POOL1}")
    assert converged(cms, facts.location.services, POOL2, R.topology_of("healthy"))[0] is False


def test_not_converged_while_both_pools_claim_the_cms():
    facts = R.facts("moving-after-forced-failover")
    ok, state = converged(facts.cms, facts.location.services, POOL2, R.topology_of("moving-after-forced-failover"))
    assert not ok and f"master {FE3}" in state and POOL1 in state.split("active ")[1]


def test_not_converged_while_a_replica_is_behind_or_the_master_is_blank():
    behind = R.facts("replica-behind")
    assert converged(behind.cms, behind.location.services, POOL1, R.topology_of("replica-behind")) == (
        False, f"master {FE1}, FTA {FE1}, active {POOL1}, 7/8 replicas up to date")
    blank = R.facts("failover-in-progress")
    ok, state = converged(blank.cms, blank.location.services, POOL2, R.topology_of("failover-in-progress"))
    assert not ok and state.startswith("master blank, FTA none")


# -- the store of the lock: Redis persistence, changes queued, unknown outcomes -------------------------------

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LOST = OutcomeUnknown(id="r0lost", what="the normal failover of the CMS (request r0lost) ended with an unknown "
                                        "outcome: its worker stopped", check="Run /cms-status first.",
                      requester="U0OPERATOR", at=AT)


def test_redis_with_aof_is_go_and_not_reading_it_adds_no_check():
    aof = RedisDurability(persistent=True, detail="AOF on (appendfsync everysec)")
    assert verdict_of(failover("healthy", redis=aof), "Redis persistence") == (
        GO, "AOF on (appendfsync everysec): the CMS lock survives a Redis restart")
    assert "Redis persistence" not in [c.name for c in failover("healthy").checks]  # gathered without Redis


def test_redis_without_aof_blocks_with_the_fix_unless_the_risk_is_accepted():
    volatile = RedisDurability(persistent=False, detail="Redis runs without AOF (INFO persistence: aof_enabled:0)")
    v, reason = verdict_of(failover("healthy", redis=volatile), "Redis persistence")
    assert v == BLOCK and "a Redis restart during the change would forget the CMS lock" in reason
    assert "`appendonly yes`" in reason and "CMSBOT_ALLOW_VOLATILE_REDIS=1" in reason
    accepted = volatile.model_copy(update={"accepted": True})
    v, reason = verdict_of(failover("healthy", redis=accepted), "Redis persistence")
    assert v == WARN and reason.endswith("Accepted by CMSBOT_ALLOW_VOLATILE_REDIS")
    assert not failover("healthy", redis=accepted).blocked
    assert verdict_of(recover("both-active", redis=volatile), "Redis persistence")[0] == BLOCK


def test_redis_that_will_not_say_counts_as_not_persisting():
    unknown = RedisDurability(persistent=None, detail="Redis will not say whether it persists")
    assert verdict_of(failover("healthy", redis=unknown), "Redis persistence")[0] == BLOCK
    assert verdict_of(failover("healthy", redis=unknown.model_copy(update={"accepted": True})),
                      "Redis persistence")[0] == WARN


def test_a_change_queued_or_running_in_the_job_queue_blocks_without_the_lock():
    queued = ["the approved failover (request r9, queued)"]
    assert verdict_of(failover("healthy", changes_in_flight=queued), "one change at a time") == (
        BLOCK, "a change is queued or running: the approved failover (request r9, queued)")
    assert verdict_of(recover("both-active", changes_in_flight=queued), "one change at a time")[0] == BLOCK


def test_an_unknown_outcome_blocks_failover_and_recovery_until_cleared_and_names_itself_for_the_button():
    for pre in (failover("healthy", unknown=[LOST]), recover("both-active", unknown=[LOST])):
        c = check(pre, "unknown outcome")
        assert c.verdict == BLOCK and c.ref == "r0lost" and pre.blocked
        assert c.reason.startswith(f"{LOST.what} (2026-11-21 12:00 UTC). Run /cms-status first.")
        assert "an approver other than its requester clears it" in c.reason
    assert "unknown outcome" not in [c.name for c in failover("healthy").checks]
