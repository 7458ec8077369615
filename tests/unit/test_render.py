"""The thread as text (bot/render/text.py) and as Block Kit (bot/render/blocks.py), for reports diagnosed
from probe output recorded from the lab, and the approval card for recorded preflights.

Slack's limits checked here: 50 blocks a message, 3000 characters a section's text, 150 a
header, 75 a button's text, 300 a confirmation's text, 2000 a button's value. Server text is
escaped so it can never become a mention or a link (<!channel>, <@U..>, <http://..|..>).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from bot.render import blocks
from bot.render import text as render
from cms.diagnose import diagnose
from cms.models import SEVERITY_ORDER
from cms.parsers import parse_replica_health
from cms.preflight import OutcomeUnknown, plan_json, preflight_failover, preflight_recover
from hub.approvals import Approval, ApprovalStatus, plan_hash
from tests.unit import recorded as R

pytestmark = pytest.mark.unit

EDGE1 = "edge01.contoso.com"
FE3 = "fe03.contoso.com"
HOSTILE = "<!channel> <@U0ADMIN> <https://evil.example/x|click here>"


def payloads(rendered: blocks.Rendered) -> list[dict]:
    return [m.payload() for m in rendered.messages]  # to_dict() runs slack_sdk's validation


def mrkdwn_texts(node) -> list[str]:
    """Every text Slack would render as mrkdwn, anywhere in a payload."""
    out = []
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn":
            out.append(node["text"])
        for value in node.values():
            out += mrkdwn_texts(value)
    elif isinstance(node, list):
        for value in node:
            out += mrkdwn_texts(value)
    return out


def buttons(payload: dict) -> list[dict]:
    return [e for b in payload["blocks"] if b["type"] == "actions" for e in b["elements"]]


def assert_within_slack_limits(payload: dict) -> None:
    assert 1 <= len(payload["blocks"]) <= 50
    for b in payload["blocks"]:
        if b["type"] == "section":
            assert len(b["text"]["text"]) <= 3000
        if b["type"] == "header":
            assert len(b["text"]["text"]) <= 150
        for e in b.get("elements", []):
            if e.get("type") == "button":
                assert len(e["text"]["text"]) <= 75 and len(e["value"]) <= 2000
                assert len(e["confirm"]["text"]["text"]) <= 300 if "confirm" in e else True
        if b["type"] == "actions":
            ids = [e["action_id"] for e in b["elements"]]
            assert len(ids) == len(set(ids)) <= 25


# -- the text thread ----------------------------------------------------------------------------------


def test_the_text_thread_gives_every_finding_with_evidence_unchecked_and_numbered_fix():
    r = R.report("combined")
    text = render.report_text(r)
    for f in r.findings:
        assert f"  * {f.subject}: {f.summary}  [{f.code.value}]" in text
        for e in f.evidence:
            assert f"evidence: {e.text}" in text
        for u in f.unchecked:
            assert f"not checked: {u}" in text
        for i, step in enumerate(f.fix, 1):
            assert f"fix {i}. {step}" in text
    assert "evidence: Event 1017 from LS File Transfer Agent Service" in text
    assert "evidence: TCP 4443 to 192.0.2.11: TimedOut" in text


def test_the_text_thread_groups_findings_by_severity_most_severe_first():
    """combined plus a critical: built from two recordings' findings, each diagnosed from real output."""
    r = R.report("combined")
    r = r.model_copy(update={"findings": R.findings("both-active") + r.findings + R.findings("transient")})
    text = render.report_text(r)
    headings = [line for line in text.splitlines() if re.fullmatch(r"[A-Z]+ \(\d+\)", line)]
    assert headings == ["CRITICAL (1)", "ERROR (4)", "PENDING (1)"]
    order = [s.value.upper() for s in SEVERITY_ORDER]
    assert [order.index(h.split()[0]) for h in headings] == sorted(order.index(h.split()[0]) for h in headings)


def test_the_replica_table_lists_the_replicas_behind_first():
    r = R.report("combined")
    rows = render.replica_table(r)[1:]
    flags = [row.split()[1] for row in rows]
    assert flags == ["False"] * 3 + ["True"] * 5
    assert {row.split()[0] for row in rows[:3]} == {EDGE1, "edge02.contoso.com", FE3}
    # domain.md 3: a failing Edge shows no LastStatusReport and no ProductVersion
    edge_row = next(row for row in rows if row.startswith(EDGE1))
    assert "never" in edge_row and edge_row.rstrip().endswith("-")


@pytest.mark.parametrize("name, starts", [
    ("healthy", "OK: 8/8 replicas up to date in the deployment (CMS master fe01.contoso.com)"),
    ("transient", "OK: 7/8 replicas up to date"),  # pending is not a failure
    ("combined", "PROBLEMS: 5/8 replicas up to date in the deployment; findings: 4 errors"),
    ("both-active", "PROBLEMS: 8/8 replicas up to date in the deployment; findings: 1 critical"),
    ("unreachable", "INCOMPLETE: 8/8 replicas up to date in the deployment; 2 servers could not be checked"),
    ("cms-readers-unreachable", "FAILED: could not read the Central Management Store for the deployment; "
                                "4 servers could not be checked"),
])
def test_the_one_line_verdict(name, starts):
    assert render.verdict(R.report(name)).startswith(starts)


def test_servers_that_could_not_be_checked_are_listed_with_the_reason():
    text = render.report_text(R.report("winrm-faults@edge-winrm"))
    section = text.split("Could not check", 1)[1]
    assert "fe04.contoso.com: access denied [replica-health] - the WinRM credentials were rejected" in section
    assert "edge02.contoso.com: timed out [replica-health]" in section
    assert "med01.contoso.com: probe failed [replica-health] - replica-health: output is not UTF-8" in section


# -- Block Kit ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", R.NAMES)
def test_every_recorded_report_renders_within_slack_limits(name):
    for payload in payloads(blocks.report(R.report(name))):
        assert_within_slack_limits(payload)


@pytest.mark.parametrize("name", R.NAMES)
def test_no_server_text_reaches_slack_unescaped(name):
    """Nothing in a report's blocks can be a mention or a link: every '<' the servers, the
    knowledge base (<drive>, <thumbprint>) or the topology wrote arrives as &lt;."""
    for payload in payloads(blocks.report(R.report(name))):
        for text in mrkdwn_texts(payload):
            assert "<" not in text and ">" not in text, text


def test_hostile_text_in_probe_output_is_made_inert():
    """Derived: the lab writes no hostile text, so the recorded Edge certificate subject of
    edge-cert-wrong-name@edge-winrm is replaced by one before it is parsed and diagnosed."""
    name = "edge-cert-wrong-name@edge-winrm"
    replay = R.status_replay(name)
    (stage1,) = [c for c in R.doc(name)["status"] if c["call"] == "run_all" and EDGE1 in c["runs"]]
    data = json.loads(stage1["runs"][EDGE1]["stdout"]["replica-health"])["data"]
    data["Certificate"]["Subject"] = f"CN={HOSTILE}"
    health = [parse_replica_health(EDGE1, data) if h.fqdn == EDGE1 else h for h in replay.report.health]
    report = replay.report.model_copy(update={"health": health})
    report = report.model_copy(update={"findings": diagnose(report)})
    assert any(HOSTILE in f.summary for f in report.findings), "the subject reaches the finding"
    rendered = json.dumps(payloads(blocks.report(report)))
    for raw in ("<!channel>", "<@U0ADMIN>", "<https://evil.example"):
        assert raw not in rendered
    assert "&lt;!channel&gt;" in rendered and "&lt;@U0ADMIN&gt;" in rendered


def test_a_report_with_findings_fits_one_message_and_needs_no_attachment():
    rendered = blocks.report(R.report("combined"))
    assert len(rendered.messages) == 1 and rendered.attachment is None
    payload = rendered.messages[0].payload()
    assert payload["text"].startswith("PROBLEMS: 5/8 replicas up to date")
    text = "\n".join(mrkdwn_texts(payload))
    for f in R.findings("combined"):
        assert f"`{f.code.value}`" in text
    assert "*Fix*" in text and "1. Start REPLICA on the Edge if it is stopped" in text


def test_remediable_findings_get_their_buttons_with_the_exact_action():
    payload = blocks.report(R.report("edge-replica-stopped@edge-winrm")).messages[0].payload()
    (start, force) = buttons(payload)
    assert (start["action_id"], start["text"]["text"]) == ("remediate-start-replica", "Start REPLICA")
    assert json.loads(start["value"]) == {"a": "start-replica", "t": "edge02.contoso.com"}
    assert "Start-CsWindowsService -Name REPLICA on edge02.contoso.com" in start["confirm"]["text"]["text"]
    assert (force["action_id"], force["text"]["text"]) == (
        "remediate-force-replication", "Force replication and re-check")
    assert "Invoke-CsManagementStoreReplication -ReplicaFqdn edge02.contoso.com" in force["confirm"]["text"]["text"]


def test_reseed_is_offered_for_a_replica_behind_without_a_known_cause():
    payload = blocks.report(R.report("replica-behind")).messages[0].payload()
    assert [b["action_id"] for b in buttons(payload)] == ["remediate-force-replication", "remediate-reseed"]
    reseed = buttons(payload)[1]
    assert "Import-CsConfiguration -LocalStore on dir01.contoso.com" in reseed["confirm"]["text"]["text"]


@pytest.mark.parametrize("name", ["cms-unavailable", "both-active", "backup-error", "transient", "healthy"])
def test_findings_without_a_remediation_get_no_button(name):
    assert buttons(blocks.report(R.report(name)).messages[0].payload()) == []


def test_viewers_get_no_buttons():
    for name in ("combined", "edge-replica-stopped@edge-winrm", "replica-behind"):
        for payload in payloads(blocks.report(R.report(name), operator_buttons=False)):
            assert buttons(payload) == []


def test_could_not_check_lists_every_server_in_blocks():
    payload = blocks.report(R.report("winrm-faults@edge-winrm")).messages[0].payload()
    text = "\n".join(mrkdwn_texts(payload))
    assert "*Could not check* (6)" in text
    for server in ("fe03", "fe04", "dir01", "med01", "edge01", "edge02"):
        assert f"`{server}.contoso.com`" in text


# -- the approval card ------------------------------------------------------------------------------------


def approval(pre, kind: str = "failover") -> Approval:
    plan = plan_json(pre)
    status = ApprovalStatus.blocked if pre.blocked else ApprovalStatus.pending
    return Approval(id="a0123456789abcdef", kind=kind, status=status,
                    plan=plan, hash=plan_hash(plan), requester="U0OPERATOR", needed=1, approvers=[],
                    expires=1_900_000_000.0, request="r1", checks=[c.model_dump(mode="json") for c in pre.checks],
                    decided_by=None)


def test_the_card_shows_the_exact_plan_and_every_check_and_offers_approval():
    pre = preflight_failover(R.topology_of("healthy"), R.facts("healthy"), None, "normal")
    payload = blocks.card(approval(pre)).payload()
    assert_within_slack_limits(payload)
    text = "\n".join(mrkdwn_texts(payload))
    assert "requested by <@U0OPERATOR>" in text and "card expires" in text
    assert ("*Plan:* normal failover from `pool01.contoso.com` to `pool02.contoso.com`, run on `fe03.contoso.com`:\n"
            "`Invoke-CsManagementServerFailover -Confirm:$false`") in text
    for c in pre.checks:
        assert f"*{c.verdict.value}* {c.name}: {c.reason}" in text
    approve, deny = buttons(payload)
    assert (approve["action_id"], approve["value"]) == ("approval-approve", "a0123456789abcdef")
    assert deny["action_id"] == "approval-deny"
    assert "Invoke-CsManagementServerFailover -Confirm:$false on fe03.contoso.com" in approve["confirm"]["text"]["text"]


def test_a_blocked_card_disables_approval_and_says_why():
    pre = preflight_failover(R.topology_of("both-active"), R.facts("both-active"), None, "normal")
    assert pre.blocked
    payload = blocks.card(approval(pre)).payload()
    text = "\n".join(mrkdwn_texts(payload))
    assert buttons(payload) == []
    assert "approval is disabled" in text
    assert "*BLOCK* CMS location: pool01.contoso.com and pool02.contoso.com both claim the CMS" in text
    assert "/cms-recover" in text


def test_the_recovery_card_lists_the_runbook_steps_in_order():
    name = "moving-after-forced-failover"
    pre = preflight_recover(R.topology_of(name), R.facts(name), "a77")
    payload = blocks.card(approval(pre, kind="recover")).payload()
    assert_within_slack_limits(payload)
    text = "\n".join(mrkdwn_texts(payload))
    assert "*Plan:* restore the CMS in `pool02.contoso.com`, in this order:" in text
    steps = re.findall(r"^(\d+)\. `(.+?)` on `(.+?)`$", text, re.M)
    assert [(int(n), server) for n, _, server in steps] == [
        (1, FE3), (2, FE3), (3, "fe04.contoso.com"), (4, FE3), (5, "fe04.contoso.com"), (6, "pool02.contoso.com")]
    assert steps[0][1] == "Invoke-CsManagementServerFailover -Restore -Confirm:$false"


def test_a_card_blocked_by_an_unknown_outcome_offers_only_the_button_that_clears_it():
    lost = OutcomeUnknown(id="r0lost", what="the normal failover of the CMS (request r0lost) ended with an unknown "
                                            "outcome: its worker stopped", check="Run /cms-status first.",
                          requester="U0OPERATOR", at=datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
    facts = R.facts("healthy").model_copy(update={"unknown": [lost]})
    pre = preflight_failover(R.topology_of("healthy"), facts, None, "normal")
    payload = blocks.card(approval(pre)).payload()
    assert_within_slack_limits(payload)
    (clear,) = buttons(payload)
    assert (clear["action_id"], clear["value"]) == (blocks.CLEAR_UNKNOWN_ACTION, "r0lost")
    assert "Only once someone has checked the CMS" in clear["confirm"]["text"]["text"]
    assert "*BLOCK* unknown outcome: the normal failover of the CMS (request r0lost)" in "\n".join(
        mrkdwn_texts(payload))


def test_a_failure_that_left_an_unknown_outcome_carries_the_clear_button_and_others_none():
    (clear,) = buttons(blocks.failed("the worker stopped: its outcome is unknown", unknown="r0lost").payload())
    assert (clear["action_id"], clear["value"]) == (blocks.CLEAR_UNKNOWN_ACTION, "r0lost")
    assert buttons(blocks.failed("not executed: it was denied").payload()) == []
