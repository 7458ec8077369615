"""Block Kit rendering stays within Slack's limits however large the deployment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.commands import HELP
from bot.render import blocks
from cms.models import (
    Action,
    CmsService,
    CmsStatus,
    Evidence,
    Finding,
    HostError,
    HostErrorKind,
    ReplicaStatus,
    Severity,
    StatusReport,
    StoreStatus,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def big_report(servers: int = 200, behind: int = 120) -> StatusReport:
    names = [f"fe{i:03d}.contoso.com" for i in range(servers)]
    replicas = [ReplicaStatus(fqdn=n, up_to_date=i >= behind, last_status_report=NOW - timedelta(hours=3),
                              last_update_creation=NOW - timedelta(hours=1)) for i, n in enumerate(names)]
    findings = [Finding(code="replica.share-acl-missing", severity=Severity.error, subject=n,
                        summary=f"'RTC Local Config Replicator' lacks change rights on {n}'s xds-replica <!channel>",
                        evidence=[Evidence(text="x" * 900, source="Get-Acl"), Evidence(text="y" * 900)],
                        fix=["step " * 60] * 4,
                        actions=[Action(kind="force-replication", target=n, label="Force replication and re-check")])
                for n in names[:behind]]
    return StatusReport(
        scope="all", checked_at=NOW, servers=names,
        cms=CmsStatus(collected_at=NOW, replicas=replicas,
                      store=StoreStatus(active_master_fqdn=names[0], active_file_transfer_agents=[names[0]]),
                      services=[CmsService(pool_fqdn="pool01.contoso.com", active=True)]),
        cms_source=names[0], findings=findings,
        host_errors=[HostError(server=n, kind=HostErrorKind.timed_out, reason="no answer") for n in names[150:170]],
    )


def test_a_huge_report_is_split_and_summarised_within_limits():
    rendered = blocks.report(big_report())
    assert 1 <= len(rendered.messages) <= blocks.MAX_MESSAGES
    for message in rendered.messages:
        payload = message.payload()  # to_dict() runs slack_sdk's validation
        assert len(payload["blocks"]) <= 50
        for b in payload["blocks"]:
            if b["type"] == "section":
                assert len(b["text"]["text"]) <= 3000
    text = "".join(str(m.payload()) for m in rendered.messages)
    assert "and 105 more findings" in text and "attached report" in text
    # everything cut is in the attachment, every finding and the full table
    assert rendered.attachment is not None
    assert all(f"fe{i:03d}.contoso.com" in rendered.attachment for i in range(200))


def test_server_text_cannot_mention_or_link():
    rendered = blocks.report(big_report(servers=3, behind=1))
    text = str(rendered.messages[0].payload())
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text


def test_buttons_carry_a_confirmation_with_the_exact_action():
    rendered = blocks.report(big_report(servers=3, behind=1))
    actions = [b for b in rendered.messages[0].payload()["blocks"] if b["type"] == "actions"]
    button = actions[0]["elements"][0]
    assert button["action_id"] == "remediate-force-replication"
    assert "Invoke-CsManagementStoreReplication -ReplicaFqdn fe000.contoso.com" in button["confirm"]["text"]["text"]


def test_small_healthy_report_is_one_message_without_attachment():
    r = big_report(servers=8, behind=0)
    rendered = blocks.report(r.model_copy(update={"host_errors": []}))
    assert len(rendered.messages) == 1 and rendered.attachment is None
    assert "8/8 replicas up to date" in str(rendered.messages[0].payload())


HOSTILE = "OK: master <!channel> <https://evil.example/login|Click to re-auth> & more"


@pytest.mark.parametrize("message", [
    blocks.parent_verdict("/cms-status", "U0OPS", None, HOSTILE, True),
    blocks.progress(HOSTILE),
    blocks.note(HOSTILE),
    blocks.plain(HOSTILE),
    blocks.failed(HOSTILE),
], ids=["verdict", "progress", "note", "plain", "failed"])
def test_the_notification_text_is_as_inert_as_the_blocks(message):
    """Slack reads `text` as mrkdwn in notifications and fallbacks: server text must not mention or link there."""
    text = message.payload()["text"]
    assert "<!channel>" not in text and "<https://" not in text
    assert "&lt;!channel&gt;" in text and "&amp; more" in text


def test_help_shows_placeholders_as_text_not_links():
    payload = blocks.help_message(list(HELP.values())).payload()
    assert "<event>" not in str(payload) and "&lt;event&gt;" in str(payload)
