"""Probe output (5.1 fixtures) -> decode() -> parsers -> what a user sees."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cms.models import HostErrorKind, ServiceState
from cms.parsers import ParseError, parse_cms_status, parse_replica_health
from workers import probes
from workers.transport.winrm import Output, ProbeFailed

UTC = UTC
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "ps51"

CLIXML_MODULE_ERROR = (
    b"#< CLIXML\r\n"
    b'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b"<S S=\"Error\">Import-Module : The specified module 'SkypeForBusiness' was not loaded_x000D__x000A_</S>"
    b"</Objs>"
)

CLIXML_PROGRESS = (
    b"#< CLIXML\r\n"
    b'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
    b'<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
    b"<T>System.Object</T></TN><MS><I64 N=\"SourceId\">1</I64><PR N=\"Record\"><AV>Preparing modules for first use.</AV>"
    b"<AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
    b"</Objs>"
)


def raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decoded(probe: str, fixture: str):
    return probes.decode(probe, Output(raw(fixture), b"", 0))


def cms(fixture: str):
    return parse_cms_status(decoded("cms-status", fixture))


def health(fixture: str, server: str = "fe01.contoso.com"):
    return parse_replica_health(server, decoded("replica-health", fixture))


# -- the fixtures are 5.1-shaped ---------------------------------------------------

ALL_FIXTURES = sorted(p.name for p in FIXTURES.glob("*.json"))


def test_fixture_set_is_complete():
    assert set(ALL_FIXTURES) >= {
        "cms-status-healthy.json",
        "cms-status-edge-behind.json",
        "cms-status-single-replica.json",
        "cms-status-unavailable.json",
        "cms-status-error.json",
        "replica-health-running.json",
        "replica-health-enum.json",
    }


@pytest.mark.parametrize("name", ALL_FIXTURES)
def test_fixture_is_one_compressed_5_1_document(name):
    text = raw(name).decode("utf-8")
    body = text.rstrip("\r\n")
    assert "\n" not in body and "\r" not in body  # -Compress: one line
    assert '": ' not in body and '", "' not in body  # -Compress: no spaces between tokens
    assert '"/Date(' not in body  # 5.1 escapes the slashes
    doc = json.loads(body)
    assert list(doc)[:2] == ["probe", "version"]
    assert doc["version"] == 1
    assert ("data" in doc) != ("error" in doc)


@pytest.mark.parametrize("name", [n for n in ALL_FIXTURES if "error" not in n])
def test_fixture_dates_are_written_as_5_1_writes_them(name):
    assert rb'"\/Date(' in raw(name)


# -- cms-status: healthy -----------------------------------------------------------

def test_healthy_every_replica_up_to_date():
    status = cms("cms-status-healthy.json")
    assert [r.fqdn for r in status.replicas] == [
        "fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com", "fe04.contoso.com",
        "edge01.contoso.com", "edge02.contoso.com", "dir01.contoso.com", "med01.contoso.com",
    ]
    assert all(r.up_to_date for r in status.replicas)


def test_healthy_timestamps_are_exact_utc():
    status = cms("cms-status-healthy.json")
    assert status.collected_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    by_fqdn = {r.fqdn: r for r in status.replicas}
    assert by_fqdn["fe01.contoso.com"].last_status_report == datetime(2023, 11, 14, 22, 12, 35, tzinfo=UTC)
    assert by_fqdn["edge01.contoso.com"].last_status_report == datetime(2023, 11, 14, 22, 12, 50, tzinfo=UTC)
    assert by_fqdn["med01.contoso.com"].last_status_report == datetime(2023, 11, 14, 22, 12, 58, tzinfo=UTC)
    assert all(r.last_update_creation == datetime(2023, 11, 14, 22, 10, 0, tzinfo=UTC) for r in status.replicas)
    assert all(r.last_status_report.utcoffset().total_seconds() == 0 for r in status.replicas)


def test_healthy_store_and_pools():
    status = cms("cms-status-healthy.json")
    assert status.store.active_master_fqdn == "fe01.contoso.com"
    assert status.store.active_file_transfer_agents == ["fe01.contoso.com", "fe02.contoso.com"]
    assert status.store.available is True
    assert len(status.store.active_replicas) == 8
    assert status.store.deleted_replicas == []
    assert [(s.pool_fqdn, s.active) for s in status.services] == [
        ("pool01.contoso.com", True),
        ("pool02.contoso.com", False),
    ]
    assert [s.pool_fqdn for s in status.services if s.active] == ["pool01.contoso.com"]
    assert status.services[0].site_id == "Site:Redmond"
    assert status.product_version.startswith("Skype for Business Server 2019")
    assert {r.product_version for r in status.replicas} == {"7.0.2046.0"}


# -- cms-status: a failing Edge -------------------------------------------------------

def test_edge_behind_only_edge01_is_not_up_to_date():
    status = cms("cms-status-edge-behind.json")
    assert [r.fqdn for r in status.replicas if not r.up_to_date] == ["edge01.contoso.com"]
    assert len([r for r in status.replicas if r.up_to_date]) == 7


def test_edge_behind_has_no_report_and_no_version():
    status = cms("cms-status-edge-behind.json")
    edge = next(r for r in status.replicas if r.fqdn == "edge01.contoso.com")
    assert edge.last_status_report is None  # null in the JSON
    assert edge.product_version is None  # "" in the JSON
    assert edge.last_update_creation == datetime(2023, 11, 14, 22, 15, 0, tzinfo=UTC)
    fe01 = next(r for r in status.replicas if r.fqdn == "fe01.contoso.com")
    assert fe01.last_status_report == datetime(2023, 11, 14, 22, 17, 35, tzinfo=UTC)
    assert status.collected_at == datetime(2023, 11, 14, 22, 18, 20, tzinfo=UTC)
    assert status.store.available is True


# -- cms-status: one of everything (Standard Edition) --------------------------------

def test_single_replica_bare_object_is_one_replica():
    status = cms("cms-status-single-replica.json")
    assert len(status.replicas) == 1
    only = status.replicas[0]
    assert only.fqdn == "se01.contoso.com"
    assert only.up_to_date is True
    assert only.last_status_report == datetime(2023, 11, 14, 23, 13, 10, tzinfo=UTC)
    assert only.last_update_creation == datetime(2023, 11, 14, 23, 11, 40, tzinfo=UTC)
    assert only.product_version == "6.0.9319.0"


def test_single_replica_bare_string_ftas_and_null_deleted():
    status = cms("cms-status-single-replica.json")
    assert status.store.active_master_fqdn == "se01.contoso.com"
    assert status.store.active_file_transfer_agents == ["se01.contoso.com"]
    assert status.store.active_replicas == ["se01.contoso.com"]
    assert status.store.deleted_replicas == []
    assert status.store.available is True


def test_single_replica_bare_service_object():
    status = cms("cms-status-single-replica.json")
    assert len(status.services) == 1
    assert status.services[0].pool_fqdn == "se01.contoso.com"
    assert status.services[0].active is True
    assert status.services[0].version == "7"


# -- cms-status: CMS unavailable -------------------------------------------------------

def test_unavailable_store():
    status = cms("cms-status-unavailable.json")
    assert status.store.active_master_fqdn is None
    assert status.store.active_file_transfer_agents == []
    assert status.store.available is False
    assert status.collected_at == datetime(2023, 11, 15, 0, 13, 20, tzinfo=UTC)
    assert [r.fqdn for r in status.replicas if r.up_to_date] == []
    assert [r.fqdn for r in status.replicas] == [
        "fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com", "fe04.contoso.com",
    ]
    assert status.replicas[1].last_status_report == datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)


# -- replica-health --------------------------------------------------------------------

def test_replica_health_string_states():
    h = health("replica-health-running.json", "fe02.contoso.com")
    assert h.fqdn == "fe02.contoso.com"
    assert h.collected_at == datetime(2023, 11, 14, 22, 13, 25, tzinfo=UTC)
    assert h.services == {
        "REPLICA": ServiceState.running,
        "MASTER": ServiceState.running,
        "FTA": ServiceState.running,
        "LYNCBACKUP": ServiceState.running,
    }
    assert h.product_version.startswith("Skype for Business Server 2019")


def test_replica_health_enum_numbers():
    h = health("replica-health-enum.json")
    assert h.collected_at == datetime(2023, 11, 14, 22, 13, 27, tzinfo=UTC)
    assert h.services == {
        "REPLICA": ServiceState.running,   # 4
        "MASTER": ServiceState.running,    # 4
        "FTA": ServiceState.stopped,       # 1
        "LYNCBACKUP": ServiceState.starting,  # 2 = StartPending
    }


# -- parser guards -----------------------------------------------------------------------

def test_parse_cms_status_without_collected_at_is_an_error():
    data = decoded("cms-status", "cms-status-healthy.json")
    del data["CollectedAt"]
    with pytest.raises(ParseError, match="CollectedAt"):
        parse_cms_status(data)


def test_parse_cms_status_rejects_a_non_object():
    with pytest.raises(ParseError):
        parse_cms_status(["not", "an", "object"])


def test_parse_replica_health_without_collected_at_is_an_error():
    with pytest.raises(ParseError, match="CollectedAt"):
        parse_replica_health("fe01.contoso.com", {"Services": {"REPLICA": 4}})


# -- decode() failures --------------------------------------------------------------------

def test_error_document_raises_probe_failed_with_the_message():
    with pytest.raises(ProbeFailed) as info:
        decoded("cms-status", "cms-status-error.json")
    reason = info.value.reason
    assert "The term 'Get-CsManagementStoreReplicationStatus' is not recognized" in reason
    assert reason.startswith("cms-status")
    assert info.value.kind is HostErrorKind.probe_failed


def test_non_utf8_output_raises_probe_failed_naming_utf8():
    # A German host that ignored code page 65001: the text arrives as cp437.
    text = '{"probe":"cms-status","version":1,"error":{"message":"Der Begriff wurde nicht erkannt. Überprüfen Sie die Schreibweise."}}'
    stdout = text.encode("cp437")
    with pytest.raises(UnicodeDecodeError):
        stdout.decode("utf-8")  # the precondition: these bytes are not UTF-8
    with pytest.raises(ProbeFailed) as info:
        probes.decode("cms-status", Output(stdout, b"", 0))
    assert "UTF-8" in info.value.reason


def test_empty_stdout_with_clixml_error_reports_the_error_text():
    with pytest.raises(ProbeFailed) as info:
        probes.decode("cms-status", Output(b"", CLIXML_MODULE_ERROR, 1))
    reason = info.value.reason
    assert "Import-Module : The specified module 'SkypeForBusiness' was not loaded" in reason
    assert "_x000D__x000A_" not in reason
    assert "<S" not in reason and "CLIXML" not in reason


def test_empty_stdout_without_stderr_says_so():
    with pytest.raises(ProbeFailed) as info:
        probes.decode("cms-status", Output(b"", b"", 0))
    assert "no output" in info.value.reason
    with pytest.raises(ProbeFailed) as info:
        probes.decode("cms-status", Output(b"", b"", 3))
    assert "exit code 3" in info.value.reason


def test_clixml_progress_on_stderr_does_not_spoil_good_output():
    data = probes.decode("cms-status", Output(raw("cms-status-healthy.json"), CLIXML_PROGRESS, 0))
    status = parse_cms_status(data)
    assert len(status.replicas) == 8
    assert status.store.active_master_fqdn == "fe01.contoso.com"


def test_text_before_the_json_line_is_skipped():
    stdout = b"WARNING: something the module printed\r\n" + raw("replica-health-enum.json")
    h = parse_replica_health("fe01.contoso.com", probes.decode("replica-health", Output(stdout, b"", 0)))
    assert h.services["FTA"] is ServiceState.stopped


def test_answer_for_another_probe_is_rejected():
    with pytest.raises(ProbeFailed) as info:
        probes.decode("replica-health", Output(raw("cms-status-healthy.json"), b"", 0))
    assert "cms-status" in info.value.reason


# -- the fleet's one registry of parsers ---------------------------------------------------------


def test_every_probe_has_a_parser_so_no_job_reads_powershell_property_names():
    from cms.parsers import PARSED_PROBES

    assert PARSED_PROBES == set(probes.names())


def test_an_unreadable_answer_is_that_probes_error_and_the_servers_other_answers_still_count():
    from cms.models import CmsStatus, ReplicaHealth
    from workers.transport.fleet import HostRun

    run = HostRun("fe01.contoso.com")
    run.read("cms-status", ["not", "an", "object"])
    run.read("start-service", {"Name": "REPLICA", "Before": "Stopped", "After": "Running"})
    assert run.answer("cms-status", CmsStatus) is None
    assert run.answer("cms-status", ReplicaHealth) is None
    (error,) = run.errors
    assert (error.server, error.probe, error.kind) == ("fe01.contoso.com", "cms-status", HostErrorKind.probe_failed)
    assert error.reason.startswith("unreadable answer (cms-status: expected an object")
    assert run.failure == error.reason
    started = run.results["start-service"]
    assert (started.name, started.before, started.after, started.running) == ("REPLICA", "Stopped", "Running", True)


def test_the_change_probes_answers_become_their_models():
    from cms.parsers import parse_answer

    forced = parse_answer("force-replication", "fe01.contoso.com", {
        "Replicas": "edge01.contoso.com", "Errors": [{"Replica": "edge01.contoso.com", "Message": "access denied"}]})
    assert forced.replicas == ["edge01.contoso.com"]
    assert [(e.replica, e.message) for e in forced.errors] == [("edge01.contoso.com", "access denied")]
    refused = parse_answer("cms-restore", "fe01.contoso.com", {"Succeeded": False, "Errors": "Cannot restore",
                                                               "Warnings": None, "Command": "Invoke-Cs..."})
    assert (refused.succeeded, refused.errors, refused.warnings) == (False, ["Cannot restore"], [])
    export = parse_answer("export-configuration", "fe01.contoso.com",
                          {"Path": "C:\\x.zip", "Bytes": 12, "Sha256": "AB", "Content": "UEs="})
    assert (export.path, export.bytes, export.sha256, export.content) == ("C:\\x.zip", 12, "AB", "UEs=")
    with pytest.raises(ParseError, match="no parser"):
        parse_answer("no-such-probe", "fe01.contoso.com", {})


# -- both shapes: the probes' 2.0-compatible writer and 5.1's ConvertTo-Json ------------------------
# The probes print with the JSON writer of _lib.ps1 (Windows PowerShell 2.0 has no ConvertTo-Json): ISO
# dates, enums by name, every list an array, plain ASCII, "ps" in the envelope, null + data.NotReported
# for a property the version lacks. The parsers read that and 5.1's ConvertTo-Json alike.

def as_probe_writer(value):
    """A 5.1-shaped value in the probe writer's shape: ISO dates, every bare single a one-item list."""
    from cms.ps_json import as_datetime
    from lab.answers import json_date

    lists = {"Replicas", "ActiveFileTransferAgents", "ActiveReplicas", "DeletedReplicas"}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            v = as_probe_writer(v)
            # cms-status's Services is a list of pools (replica-health's is a dictionary of services)
            if k in lists or (k == "Services" and (v is None or isinstance(v, list) or "PoolFqdn" in v)):
                v = [] if v is None else (v if isinstance(v, list) else [v])
            out[k] = v
        return out
    if isinstance(value, list):
        return [as_probe_writer(v) for v in value]
    if isinstance(value, str) and value.startswith("/Date("):
        return json_date(as_datetime(value))
    return value


def probe_writer_output(fixture: str, ps: str = "2.0") -> bytes:
    from lab.answers import to_probe_json

    doc = json.loads(raw(fixture))
    return (to_probe_json({"probe": doc["probe"], "version": doc["version"], "ps": ps,
                           "data": as_probe_writer(doc["data"])}) + "\r\n").encode("ascii")


@pytest.mark.parametrize("fixture", ["cms-status-healthy.json", "cms-status-edge-behind.json",
                                     "cms-status-single-replica.json", "cms-status-unavailable.json"])
def test_cms_status_reads_the_same_from_both_writers(fixture):
    out = probe_writer_output(fixture)
    assert b"/Date(" not in out and out.isascii()
    assert parse_cms_status(probes.decode("cms-status", Output(out, b"", 0))) == cms(fixture)


def test_the_probe_writer_shape_has_iso_dates_and_arrays_everywhere():
    doc = json.loads(probe_writer_output("cms-status-single-replica.json"))
    data = doc["data"]
    assert doc["ps"] == "2.0"
    assert data["CollectedAt"] == "2023-11-14T23:13:20.000Z"
    assert isinstance(data["Replicas"], list) and isinstance(data["Services"], list)
    assert data["Store"]["ActiveFileTransferAgents"] == ["se01.contoso.com"]
    assert data["Store"]["DeletedReplicas"] == []


def test_replica_health_enums_read_as_names_or_numbers():
    from cms.parsers import parse_replica_health as parse

    names = {"CollectedAt": "2023-11-14T22:13:27.000Z",
             "Services": {"REPLICA": "Running", "MASTER": "Running", "FTA": "Stopped", "LYNCBACKUP": "StartPending"}}
    numbers = json.loads(raw("replica-health-enum.json"))["data"]
    assert parse("fe01.contoso.com", names).services == parse("fe01.contoso.com", numbers).services
    acl = {"CollectedAt": "2023-11-14T22:13:27.000Z",
           "Share": {"Path": "C:\\x", "Access": [{"Account": "a", "Right": "Full", "Type": "Deny"}]},
           "Folder": {"Path": "C:\\x", "Owner": "o", "Access": {"Identity": "b", "Rights": "Modify", "Type": 1,
                                                                  "Inherited": False}}}
    health = parse("fe01.contoso.com", acl)
    assert health.acl is not None and [a.allow for a in health.acl.share or []] == [False]
    assert [a.allow for a in health.acl.folder or []] == [False]  # 5.1: AccessControlType Deny is 1


def test_not_reported_properties_are_none_in_the_probe_writer_shape():
    data = as_probe_writer(json.loads(raw("cms-status-healthy.json"))["data"])
    for service in data["Services"]:
        service["Active"] = None
    data["Store"]["DeletedReplicas"] = None
    data["NotReported"] = ["Get-CsService -CentralManagement: Active",
                           "Get-CsManagementStoreReplicationStatus -CentralManagementStoreStatus: DeletedReplicas"]
    status = parse_cms_status(data)
    assert [s.active for s in status.services] == [None, None]
    assert status.store.deleted_replicas is None
    # 5.1's null for an empty, unwrapped list stays an empty list: only NotReported says "not reported"
    assert cms("cms-status-single-replica.json").store.deleted_replicas == []


def test_a_version_too_old_for_a_probe_is_its_error():
    out = (b'{"probe":"cms-status","version":2,"ps":"2.0","error":{"message":"cms-status needs Windows PowerShell '
           b'3.0 or later; this server runs Windows PowerShell 2.0; nothing was run","category":"NotImplemented",'
           b'"command":"","needs":"3.0"}}\r\n')
    with pytest.raises(ProbeFailed, match="needs Windows PowerShell 3.0 or later; this server runs Windows PowerShell 2.0"):
        probes.decode("cms-status", Output(out, b"", 0))
