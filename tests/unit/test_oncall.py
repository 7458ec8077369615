"""What on-call systems are told (cms/oncall.py), in their APIs' shapes; the order and the idempotency
of sending (plan); the alert channel's messages (bot/render/watch.py); the settings' on-call block."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from urllib.parse import unquote

import pytest
from slack_sdk.models.blocks import Block

from bot.render import watch as render
from bot.render.blocks import MAX_BLOCKS
from cms.knowledge import FindingCode
from cms.models import Action, Evidence, Finding, Severity
from cms.oncall import (
    OG_ALIAS_MAX,
    PD_DEDUP_MAX,
    dedup_key,
    opsgenie_call,
    pagerduty_event,
    plan,
    webhook_body,
)
from cms.settings import Settings
from cms.watch import Incident, Page

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
FE03 = "fe03.contoso.com"
FINDING = Finding(code=FindingCode.replica_behind, severity=Severity.error, subject=FE03,
                  summary=f"{FE03} is behind the Central Management Store and no known failure explains it",
                  evidence=[Evidence(text="UpToDate False", source="Get-CsManagementStoreReplicationStatus")],
                  fix=["Run Invoke-CsManagementStoreReplication -ReplicaFqdn fe03.contoso.com"],
                  actions=[Action(kind="force-replication", target=FE03, label="Force replication and re-check")])


def incident(n: int = 1, **update) -> Incident:
    base = Incident(id=f"i{n:015d}", key=f"replica/{FE03}", problem="replica", subject=FE03,
                    causes=("replica.behind",), severity=Severity.error, summary=FINDING.summary, findings=(FINDING,),
                    first_seen=T0, opened_at=T0)
    return base.model_copy(update=update)


def page(action: str, n: int = 1, minutes: int = 0, **update) -> Page:
    return Page(action=action, incident=incident(n, **update), at=T0 + timedelta(minutes=minutes))  # type: ignore


# -- PagerDuty Events API v2 ------------------------------------------------------------------------------------


def test_a_pagerduty_trigger_has_what_the_events_api_requires():
    event = pagerduty_event(page("trigger"), "cmsbot")
    assert event["event_action"] == "trigger" and event["dedup_key"] == f"cms-chatops/cmsbot/replica/{FE03}"
    assert "routing_key" not in event  # added where it is sent, never built into a body here
    payload = event["payload"]
    assert payload["summary"].startswith("CMS replication: fe03.contoso.com is behind") and payload["source"] == FE03
    assert payload["severity"] == "error" and payload["timestamp"] == T0.isoformat()
    assert payload["custom_details"]["fingerprint"] == f"replica/{FE03}#replica.behind"


def test_a_resolve_carries_the_same_dedup_key_and_nothing_else():
    trigger, resolve = pagerduty_event(page("trigger"), "ns"), pagerduty_event(page("resolve", minutes=42), "ns")
    assert resolve == {"event_action": "resolve", "dedup_key": trigger["dedup_key"]}


def test_an_update_is_a_trigger_on_the_same_key_saying_what_changed():
    event = pagerduty_event(page("update", causes=("replica.replica-stopped",), severity=Severity.critical), "ns")
    assert event["event_action"] == "trigger" and event["dedup_key"] == "cms-chatops/ns/replica/fe03.contoso.com"
    assert event["payload"]["severity"] == "critical" and "replica.replica-stopped" in event["payload"]["summary"]


@pytest.mark.parametrize("severity, pd", [(Severity.critical, "critical"), (Severity.error, "error"),
                                          (Severity.warning, "warning"), (Severity.pending, "warning"),
                                          (Severity.info, "info")])
def test_every_severity_is_one_pagerduty_accepts(severity, pd):
    assert pagerduty_event(page("trigger", severity=severity), "ns")["payload"]["severity"] == pd


def test_the_limits_hold_whatever_the_names():
    long = "x" * 400 + ".contoso.com"
    event = pagerduty_event(page("trigger", subject=long, key=f"replica/{long}", summary="s" * 5000), "n" * 64)
    assert len(event["dedup_key"]) == PD_DEDUP_MAX and len(event["payload"]["summary"]) == 1024
    assert dedup_key("n" * 64, f"replica/{long}") == event["dedup_key"]  # the same every time
    assert dedup_key("n" * 64, f"replica/{long}") != dedup_key("n" * 64, f"replica/{long}x")
    call = opsgenie_call(page("trigger", subject=long, key=f"replica/{long}", summary="s" * 5000), "ns")
    assert len(call.body["message"]) == 130 and len(call.body["alias"]) <= OG_ALIAS_MAX


# -- Opsgenie Alert API ---------------------------------------------------------------------------------------


def test_opsgenie_creates_by_alias_notes_and_closes_by_alias():
    create = opsgenie_call(page("trigger"), "cmsbot")
    assert (create.method, create.path, create.params) == ("POST", "/v2/alerts", {})
    alias = create.body["alias"]
    assert alias == "cms-chatops/cmsbot/replica/fe03.contoso.com" and create.body["priority"] == "P2"
    assert create.body["entity"] == FE03 and all(isinstance(v, str) for v in create.body["details"].values())
    note = opsgenie_call(page("update", severity=Severity.critical), "cmsbot")
    close = opsgenie_call(page("resolve", minutes=42), "cmsbot")
    for call, end in ((note, "/notes"), (close, "/close")):
        assert call.params == {"identifierType": "alias"} and call.path.endswith(end)
        assert unquote(call.path.removeprefix("/v2/alerts/").removesuffix(end)) == alias
        assert "/" not in call.path.removeprefix("/v2/alerts/").removesuffix(end)  # the alias is one path segment
    assert "resolved after 42 min" in close.body["note"]


# -- the webhook ---------------------------------------------------------------------------------------------------


def test_the_webhook_body_names_the_action_the_incident_and_an_idempotency_key():
    trigger, resolve = webhook_body(page("trigger"), "ns"), webhook_body(page("resolve", minutes=42), "ns")
    assert (trigger["action"], resolve["action"]) == ("trigger", "resolve")
    assert trigger["incident"] == resolve["incident"] and trigger["dedup_key"] == resolve["dedup_key"]
    assert trigger["idempotency_key"] != resolve["idempotency_key"] and resolve["resolved_after_s"] == 42 * 60
    assert trigger["findings"][0]["code"] == "replica.behind"
    json.dumps(trigger)


# -- the order of sending: nothing twice, nothing stale -------------------------------------------------------


def ids(steps) -> list[tuple[str | None, tuple[str, ...]]]:
    return [(s.page.id if s.page else None, s.done) for s in steps]


def test_each_page_is_sent_once_in_order():
    pages = [page("trigger"), page("update", minutes=5, severity=Severity.critical), page("resolve", minutes=9)]
    (step,) = plan(pages, set())  # resolved before anything was sent: nothing is, each is recorded
    assert step.page is None and set(step.done) == {p.id for p in pages}
    sent = {pages[0].id}
    steps = plan(pages, sent)
    assert ids(steps) == [(None, (pages[1].id,)), (pages[2].id, (pages[2].id,))]  # the update is superseded
    assert plan(pages, {p.id for p in pages}) == []


def test_a_trigger_not_sent_yet_carries_the_latest_state_and_covers_the_updates():
    pages = [page("trigger"), page("update", minutes=5, causes=("replica.replica-stopped",))]
    (step,) = plan(pages, set())
    assert step.page is not None and step.page.action == "trigger"
    assert step.page.incident.causes == ("replica.replica-stopped",) and step.done == (pages[0].id, pages[1].id)


def test_an_incident_resolved_before_on_call_heard_of_it_is_not_paged():
    pages = [page("trigger"), page("resolve", minutes=1)]
    (step,) = plan(pages, set())
    assert step.page is None and set(step.done) == {p.id for p in pages} and "resolved before" in step.note


def test_a_recurrence_is_paged_after_the_previous_incident_is_resolved():
    pages = [page("trigger", 1), page("resolve", 1, minutes=5), page("trigger", 2, minutes=9)]
    steps = plan(pages, {pages[0].id})
    assert [s.page.action if s.page else None for s in steps] == ["resolve", "trigger"]
    assert steps[1].page.incident.id == incident(2).id


def test_a_page_written_twice_is_sent_once():
    p = page("trigger")
    assert len(plan([p, p], set())) == 1


# -- the alert channel's messages ---------------------------------------------------------------------------------


def texts(blocks: list[Block]) -> str:
    return json.dumps([b.to_dict() for b in blocks], ensure_ascii=False)


def buttons(blocks: list[Block]) -> list[dict]:
    return [e for b in blocks for e in b.to_dict().get("elements", []) if e.get("type") == "button"]


def test_the_incident_parent_carries_the_diagnosis_and_its_remediation_buttons():
    message = render.incident(incident())
    assert message.text.startswith("CMS incident: fe03.contoso.com is behind")
    assert [b["action_id"] for b in buttons(message.blocks)] == ["remediate-force-replication"]
    assert "`replica.behind`" in texts(message.blocks) and "Invoke-CsManagementStoreReplication" in texts(message.blocks)


def test_the_resolved_parent_says_after_how_long_and_drops_its_buttons():
    message = render.incident_resolved(incident(), T0 + timedelta(minutes=42))
    assert message.text.startswith("Resolved after 42 min") and "Resolved after 42 min" in texts(message.blocks)
    assert buttons(message.blocks) == []


def test_an_update_says_what_changed():
    after = incident(causes=("replica.replica-stopped",), severity=Severity.critical)
    message = render.incident_update(after, ("replica.behind",), Severity.error)
    said = texts(message.blocks)
    assert "cause `replica.behind` → `replica.replica-stopped`" in said and "severity error → critical" in said


def test_what_servers_say_stays_inert_and_a_big_incident_fits_one_message():
    hostile = "<!channel> <https://evil.example|re-auth>"
    many = tuple(FINDING.model_copy(update={"summary": hostile}) for _ in range(40))
    message = render.incident(incident(summary=hostile, findings=many))
    said = texts(message.blocks) + message.payload()["text"]
    assert "<!channel>" not in said and "<https://" not in said
    assert len(message.blocks) <= MAX_BLOCKS and "more findings" in said


def test_the_paused_notice_and_its_resumed_edit():
    paused = render.watch_paused("a CMS change is running (failover)", T0)
    resumed = render.watch_resumed("a CMS change is running (failover)", T0, T0 + timedelta(minutes=30), 6)
    assert "The watch is paused" in texts(paused.blocks)
    assert "resumed" in texts(resumed.blocks) and "skipped 6 scheduled checks" in texts(resumed.blocks)


# -- the settings' block -------------------------------------------------------------------------------------------


def test_the_schedule_and_the_on_call_secrets_come_from_the_environment_and_files(tmp_path, monkeypatch):
    key = tmp_path / "pd"
    key.write_text("R0123456789abcdef0123456789abcd\n")
    monkeypatch.setenv("CMSBOT_WATCH", '[{"scope": "*", "cron": "*/5 * * * *"}, {"scope": "pool02.contoso.com", '
                                       '"cron": "* * * * *"}]')
    monkeypatch.setenv("CMSBOT_PAGERDUTY_ROUTING_KEY_FILE", str(key))
    monkeypatch.setenv("CMSBOT_ONCALL_WEBHOOK_URL", "https://hooks.example/abc")
    monkeypatch.setenv("CMSBOT_ALERT_CHANNEL", "C0ALERTS")
    s = Settings()
    assert [(w.scope, w.cron) for w in s.watch] == [("*", "*/5 * * * *"), ("pool02.contoso.com", "* * * * *")]
    assert s.oncall_targets() == ["pagerduty", "webhook"]
    assert s.pagerduty_routing_key.get_secret_value() == "R0123456789abcdef0123456789abcd"
    assert "R0123456789abcdef" not in repr(s) and "hooks.example" not in repr(s)
    assert s.watch_policy().grace == timedelta(minutes=15) and s.watch_policy().page_at is Severity.error
    assert s.oncall_retry_intervals() == [10, 20, 40, 80, 160, 320, 640, 1280]


def test_the_schedule_may_be_scope_cron_pairs_so_that_a_compose_default_can_hold_it(monkeypatch):
    monkeypatch.setenv("CMSBOT_WATCH", "*=*/5 * * * *; pool02.contoso.com=0 6 * * 1-5")
    assert [(w.scope, w.cron) for w in Settings().watch] == [("*", "*/5 * * * *"), ("pool02.contoso.com", "0 6 * * 1-5")]
    monkeypatch.setenv("CMSBOT_WATCH", "every five minutes")
    with pytest.raises(ValueError, match="SCOPE=CRON"):
        Settings()


def test_a_schedule_that_is_not_five_cron_fields_is_refused(monkeypatch):
    monkeypatch.setenv("CMSBOT_WATCH", '[{"scope": "*", "cron": "every five minutes"}]')
    with pytest.raises(ValueError, match="five fields"):
        Settings()


# -- the requests as sent (workers/oncall.py): each key only where its API wants it ------------------------------


def test_each_request_carries_its_key_only_where_its_api_wants_it():
    import hashlib
    import hmac

    from workers.oncall import request_for

    s = Settings(pagerduty_routing_key="R0123456789abcdef0123456789abcd", opsgenie_api_key="og-key",
                 oncall_webhook_url="https://hooks.example/t0k3n?x=1", oncall_webhook_secret="s3cr3t-s1g")
    pd = request_for(s, "pagerduty", page("trigger"))
    assert pd.url == "https://events.pagerduty.com/v2/enqueue"
    assert json.loads(pd.body)["routing_key"] == "R0123456789abcdef0123456789abcd" and pd.secrets == (
        "R0123456789abcdef0123456789abcd",)
    og = request_for(s, "opsgenie", page("resolve", minutes=3))
    assert og.headers["Authorization"] == "GenieKey og-key" and b"og-key" not in og.body
    assert og.url == ("https://api.opsgenie.com/v2/alerts/cms-chatops%2Fcmsbot%2Freplica%2Ffe03.contoso.com/close"
                      "?identifierType=alias")
    hook = request_for(s, "webhook", page("trigger"))
    expected = "sha256=" + hmac.new(b"s3cr3t-s1g", hook.body, hashlib.sha256).hexdigest()
    assert hook.headers["X-Cmsbot-Signature"] == expected and b"s3cr3t-s1g" not in hook.body
    assert "/t0k3n?x=1" in hook.secrets and hook.url in hook.secrets  # what logs and messages never show
