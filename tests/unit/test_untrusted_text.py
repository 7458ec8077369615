"""What servers and users say is untrusted: names are validated when parsed, strings are bounded,
every text is escaped for the Slack field it goes in, a report stays within a few messages, and
the topology cannot silently take a server to plain HTTP."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from bot.commands import HELP
from bot.render import blocks
from bot.render import text as render
from cms import topology as topo
from cms.messages import ActionOutcome
from cms.models import (
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
from cms.parsers import parse_backup, parse_cms_status, parse_location, parse_reachability
from cms.ps_json import MAX_TEXT, as_host, as_str, is_fqdn
from cms.settings import Settings
from workers import probes
from workers.transport.fleet import PlainHttpRefused, downgraded, endpoint
from workers.transport.winrm import Output, ProbeFailed

HOSTILE = "<!channel> <https://evil.example/login|Click to re-auth>"
NOW = "2026-11-21T12:00:00.000Z"


def cms_status(master: str, ftas: list[str], replicas: list[str]) -> dict:
    return {"CollectedAt": NOW, "ProductVersion": "7.0.2046.0",
            "Replicas": [{"ReplicaFqdn": r, "UpToDate": True, "LastStatusReport": NOW} for r in replicas],
            "Store": {"ActiveMasterFqdn": master, "ActiveFileTransferAgents": ftas, "ActiveReplicas": replicas,
                      "DeletedReplicas": []},
            "Services": [{"PoolFqdn": "pool01.contoso.com", "Active": True}, {"PoolFqdn": HOSTILE, "Active": False}]}


# -- names are validated when parsed -----------------------------------------------------------


def test_a_hostile_active_master_is_left_out_of_the_model_with_an_invalid_name_note():
    status = parse_cms_status(cms_status(HOSTILE, ["fe01.contoso.com", HOSTILE], ["fe01.contoso.com", "a b.c"]))
    assert status.store.active_master_fqdn is None
    assert status.store.active_file_transfer_agents == ["fe01.contoso.com"]
    assert [r.fqdn for r in status.replicas] == ["fe01.contoso.com"]
    assert [s.pool_fqdn for s in status.services] == ["pool01.contoso.com"]
    assert len(status.notes) == 5  # master, one FTA, one replica (and in ActiveReplicas), one pool
    assert all("invalid name left out" in n for n in status.notes)
    master = next(n for n in status.notes if n.startswith("ActiveMasterFqdn"))
    assert "<" not in master and ">" not in master and "evil.example" in master  # shown, but inert anywhere


def test_names_that_are_names_are_kept_lower_case_without_the_trailing_dot():
    notes: list[str] = []
    assert as_host("FE01.Contoso.COM.", "x", notes) == "fe01.contoso.com"
    assert as_host("sql_01.contoso.com", "x", notes) == "sql_01.contoso.com"  # Windows DNS allows underscores
    assert as_host("10.0.0.7", "x", notes, address=True) == "10.0.0.7"
    assert as_host("fe80::1", "x", notes, address=True) == "fe80::1"
    assert notes == []
    for bad in ("fe80::1", "-a.contoso.com", "a..b", "x" * 64 + ".com", "a.b/c", "host name", "a" * 254):
        assert as_host(bad, "x", notes) is None
    assert len(notes) == 7 and not is_fqdn("")


def test_every_other_name_a_server_reports_is_checked_too():
    reach = parse_reachability("fe01.contoso.com", {
        "From": "fe01.contoso.com", "CollectedAt": NOW,
        "Results": [{"Fqdn": "edge01.contoso.com", "Address": "<https://evil.example|x>", "Port": 4443,
                     "Connected": True},
                    {"Fqdn": "edge02.contoso.com", "Address": "192.0.2.10", "Port": 4443, "Connected": True},
                    {"Fqdn": HOSTILE, "Address": "192.0.2.11", "Port": 4443, "Connected": True}]})
    assert [(r.fqdn, r.address) for r in reach.results] == [("edge01.contoso.com", "edge01.contoso.com"),
                                                              ("edge02.contoso.com", "192.0.2.10")]
    assert len(reach.notes) == 2
    backup = parse_backup({"Pools": [{"PoolFqdn": HOSTILE}, {"PoolFqdn": "pool01.contoso.com",
                                                             "BackupPoolFqdn": "<!here>"}]})
    assert [(p.pool, p.backup_pool) for p in backup.pools] == [("pool01.contoso.com", None)]
    assert len(backup.notes) == 2
    location = parse_location({"Connection": {"SqlServer": "sql01.contoso.com; DROP"},
                               "Pools": [{"PoolFqdn": "pool01.contoso.com", "BackendSql": "<@U0ADMIN>"}]})
    assert location.store_sql is None and location.backend_sql == {"pool01.contoso.com": None}
    assert len(location.notes) == 2


# -- strings are bounded -----------------------------------------------------------------------


def test_strings_a_server_sends_are_cut_and_say_so():
    text = as_str("x" * 1_000_000)
    assert text is not None and len(text) < MAX_TEXT + 100 and "truncated: 1,000,000 characters" in text
    assert as_str("y" * 5000, None) == "y" * 5000  # data kept whole (an exported zip's base64)


def test_a_probe_error_of_a_megabyte_is_cut_to_a_readable_length():
    doc = {"probe": "cms-status", "version": 1, "error": {"message": "E" * 1_000_000}}
    with pytest.raises(ProbeFailed) as e:
        probes.decode("cms-status", Output(json.dumps(doc).encode(), b"", 0))
    assert len(e.value.reason) < 1200 and "truncated" in e.value.reason


# -- every text escaped for its field --------------------------------------------------------------


def report(**update) -> StatusReport:
    now = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    base = StatusReport(scope="all", checked_at=now, servers=["fe01.contoso.com"],
                        cms=CmsStatus(collected_at=now, replicas=[ReplicaStatus(fqdn="fe01.contoso.com",
                                                                                up_to_date=True)],
                                      store=StoreStatus(active_master_fqdn="fe01.contoso.com",
                                                        active_file_transfer_agents=["fe01.contoso.com"])),
                        cms_source="fe01.contoso.com")
    return base.model_copy(update=update)


def all_text(rendered: blocks.Rendered) -> str:
    return json.dumps([m.payload() for m in rendered.messages])


def test_notes_are_shown_escaped_and_every_mrkdwn_text_is_verbatim():
    rendered = blocks.report(report(notes=[f"fe01.contoso.com (cms-status): {HOSTILE}"]))
    payloads = [m.payload() for m in rendered.messages]
    text = json.dumps(payloads)
    assert "Notes" in text and "&lt;!channel&gt;" in text and "<!channel>" not in text and "<https://" not in text

    def mrkdwn(node):
        if isinstance(node, dict):
            if node.get("type") == "mrkdwn":
                yield node
            for v in node.values():
                yield from mrkdwn(v)
        elif isinstance(node, list):
            for v in node:
                yield from mrkdwn(v)
    found = list(mrkdwn(payloads))
    assert found and all(t.get("verbatim") is True for t in found)


def test_mentions_are_only_of_user_ids():
    message = blocks.parent("/cms-status", "<!channel>", None)
    assert "<!channel>" not in json.dumps(message.payload())
    assert "<@U0OPS>" in json.dumps(blocks.parent("/cms-status", "U0OPS", None).payload())


def test_plain_text_fields_stay_printable_and_short():
    button = blocks.action_button("start-replica", "fe01.contoso.com", "Start\n\x07" + "x" * 200)
    label = button.to_dict()["text"]["text"]
    assert len(label) <= 75 and "\n" not in label and "\x07" not in label


def test_help_says_how_to_restrict_the_channels_when_no_list_is_configured():
    open_help = json.dumps(blocks.help_message(list(HELP.values()), open_channels=True).payload())
    assert "CMSBOT_SLACK_CHANNELS" in open_help and "<event>" not in open_help
    assert "CMSBOT_SLACK_CHANNELS" not in json.dumps(blocks.help_message(list(HELP.values())).payload())


# -- a report never exceeds a few messages ------------------------------------------------------------


def test_a_report_with_thousands_of_errors_and_long_texts_stays_within_a_few_messages():
    errors = [HostError(server=f"fe{i:04d}.contoso.com", kind=HostErrorKind.probe_failed, probe="replica-health",
                        reason="E" * 100_000) for i in range(2000)]
    findings = [Finding(code="replica.behind", severity=Severity.error, subject=f"fe{i:04d}.contoso.com",
                        summary="S" * 50_000, evidence=[Evidence(text="V" * 50_000)] * 40, fix=["F" * 5000] * 5)
                for i in range(100)]
    rendered = blocks.report(report(host_errors=errors, findings=findings, notes=["N" * 10_000] * 500))
    assert len(rendered.messages) <= blocks.MAX_MESSAGES
    text = all_text(rendered)
    assert len(text) < 400_000
    assert "and 1980 more servers that could not be checked" in text and "truncated" in text
    assert rendered.attachment is not None and "fe1999.contoso.com" in rendered.attachment


def test_an_action_with_a_huge_answer_is_bounded_and_attached():
    action = ActionOutcome(kind="failover", target="pool02.contoso.com", ok=False, text="E" * 1_000_000,
                           changes=[f"change {i}" for i in range(500)])
    rendered = blocks.action_result(action, None, [])
    assert len(rendered.messages) <= blocks.MAX_MESSAGES and len(all_text(rendered)) < 20_000
    assert rendered.attachment is not None and "change 499" in rendered.attachment
    rendered = blocks.action_result(action, report())
    assert len(rendered.messages) <= blocks.MAX_MESSAGES and rendered.attachment is not None


def test_the_plain_text_report_lists_the_notes():
    assert "Notes\n  ! x: invalid name" in render.report_text(report(notes=["x: invalid name"]))


# -- the topology cannot silently take a server to plain HTTP ---------------------------------------------

TOPOLOGY = """
deployment: {version: sfb2019}
cms_pool: pool01.contoso.com
pools:
  - fqdn: pool01.contoso.com
    role: frontend
    servers:
      - {fqdn: fe01.contoso.com}
      - {fqdn: fe02.contoso.com, endpoint: "http://fe02.contoso.com:5985/wsman"}
"""


def test_a_scheme_downgrade_from_the_topology_is_refused_unless_allowed():
    https = Settings(winrm_scheme="https")
    plain = topo.parse(TOPOLOGY + "winrm: {scheme: http}\n")
    with pytest.raises(PlainHttpRefused, match="allow_http"):
        endpoint(plain, https, "fe01.contoso.com")
    with pytest.raises(PlainHttpRefused, match="its endpoint"):
        endpoint(topo.parse(TOPOLOGY), https, "fe02.contoso.com")
    assert endpoint(topo.parse(TOPOLOGY), https, "fe01.contoso.com") == "https://fe01.contoso.com:5986/wsman"
    allowed = topo.parse(TOPOLOGY + "winrm: {scheme: http, allow_http: true}\n")
    assert endpoint(allowed, https, "fe01.contoso.com") == "http://fe01.contoso.com:5985/wsman"
    assert downgraded(allowed, https, "fe01.contoso.com")
    # CMSBOT_WINRM_SCHEME=http (the lab, the tests) is the operator's own choice: nothing is downgraded
    http = Settings(winrm_scheme="http")
    assert endpoint(plain, http, "fe01.contoso.com") == "http://fe01.contoso.com:5985/wsman"
    assert not downgraded(topo.parse(TOPOLOGY), http, "fe02.contoso.com")


# -- on what the lab's hostile and oversize scenarios answered (tests/fixtures/recorded/) ------------------


def test_the_recorded_hostile_cms_is_reported_without_its_names():
    from tests.unit import recorded as R

    report = R.report("hostile-names")
    assert report.cms is not None and report.cms.store.active_master_fqdn is None
    assert report.cms.store.active_file_transfer_agents == ["fe01.contoso.com"]
    assert [n.split(": invalid name")[0] for n in report.notes] == [
        "fe01.contoso.com (cms-status): ActiveMasterFqdn", "fe01.contoso.com (cms-status): ActiveFileTransferAgents"]
    text = all_text(blocks.report(report))
    assert "<!channel>" not in text and "<https://" not in text and "invalid name left out" in text


def test_the_recorded_oversize_answers_are_host_errors_that_say_why():
    from tests.unit import recorded as R

    errors = {e.server: e.reason for e in R.report("oversize").host_errors}
    assert errors["dir01.contoso.com"].startswith("answer larger than 2 MB: stopped reading after 2.0 MB")
    assert errors["med01.contoso.com"].startswith("replica-health: EEEE") and "truncated" in errors["med01.contoso.com"]
    assert len(errors["med01.contoso.com"]) < 1100
