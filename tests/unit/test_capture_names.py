"""The names and secrets a capture must not carry (workers/runs/anonymize.py), and that replacing them
changes nothing the diagnosis sees: every recording of tests/fixtures/recorded, its answers and its
topology renamed, gives the same findings, named after the replacements."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import pytest
from pydantic import SecretStr

from cms import topology as topo
from cms.diagnose import diagnose
from cms.models import HostError, HostErrorKind, StatusReport
from cms.settings import Settings
from tests.unit import recorded as R
from workers import probes
from workers.runs.anonymize import SCRUBBED, Renamer
from workers.runs.capture import Answer, ServerCapture, renamed_topology, secrets_of, write
from workers.runs.status import add_second_stage, build_report, cms_candidates
from workers.transport.fleet import HostRun
from workers.transport.winrm import Output

pytestmark = pytest.mark.unit

TOPOLOGY = R.RECORDED / "topology" / "sfb2019.yaml"


def renamer(**kw: Any) -> Renamer:
    return Renamer(topo.load(TOPOLOGY), account="cmsbot", **kw)


def test_one_name_has_one_replacement_wherever_it_stands():
    r = renamer()
    line = json.dumps({"probe": "x", "ps": "5.1", "data": {
        "Fqdn": "fe03.contoso.com", "Upper": "FE03.CONTOSO.COM", "Netbios": "FE03",
        "Unc": "\\\\fe03.contoso.com\\xds-replica\\from-master\\data.zip",
        "Acl": "FE03\\RTC Local Config Replicator",
        "Dn": "CN=FE03,OU=Lync Servers,DC=contoso,DC=com",
        "Event": "Access denied. (\\\\fe03.contoso.com\\xds-replica\\from-master\\data.zip)\r\n",
        "Cert": "CN=fe03.contoso.com, OU=Certificates, O=Contoso"}}, separators=(",", ":"))
    r.discover([line])
    data = json.loads(r.output(line))["data"]
    assert data["Fqdn"] == "server-003.example.invalid"
    assert data["Upper"] == "SERVER-003.EXAMPLE.INVALID"
    assert data["Netbios"] == "SERVER-003"
    assert data["Unc"] == "\\\\server-003.example.invalid\\xds-replica\\from-master\\data.zip"
    assert data["Acl"] == "SERVER-003\\RTC Local Config Replicator"
    assert data["Dn"] == "CN=SERVER-003,OU=Lync Servers,DC=example,DC=invalid"
    assert data["Event"] == "Access denied. (\\\\server-003.example.invalid\\xds-replica\\from-master\\data.zip)\r\n"
    assert data["Cert"] == "CN=server-003.example.invalid, OU=Certificates, O=Example"
    assert r.mapping["fe03.contoso.com"] == "server-003.example.invalid"


def test_names_the_topology_lacks_are_found_in_the_answers():
    r = renamer()
    texts = ["CN=sip.contoso.com, OU=Certificates, O=Contoso", "CN=Fabrikam Root CA, O=Fabrikam",
             "host=edge02.contoso.com, CN=x, O=Litware Inc.\r\n\r\nCause: an invalid certificate",
             "CONTOSO\\jdoe ran it", "mail jdoe@contoso.com", "OTHERDOM\\svc-lync"]
    r.discover(texts)
    out = [r.text(t) for t in texts]
    assert out[0] == "CN=host-001.example.invalid, OU=Certificates, O=Example"
    assert out[1] == "CN=Organization-1 Root CA, O=Organization-1"
    assert out[2] == "host=server-006.example.invalid, CN=x, O=Organization-2.\r\n\r\nCause: an invalid certificate"
    assert out[3] == "EXAMPLE\\account-002 ran it"  # account-001 is the WinRM account
    assert out[4] == "mail account-002@example.invalid"
    assert out[5].startswith("DOMAIN-") and "svc-lync" not in out[5] and "OTHERDOM" not in out[5]


def test_products_protocols_and_well_known_principals_stay():
    r = renamer()
    kept = ["Skype for Business Server 2019 (7.0.2046.0): Volume license key installed.",
            "NT AUTHORITY\\SYSTEM", "BUILTIN\\Administrators", "CN=RTCUniversalConfigReplicator,CN=Users",
            "LS File Transfer Agent Service", "C:\\RtcReplicaRoot\\xds-replica", "192.0.2.11",
            "cmsbot-write-test-5f0c2d7e.tmp", "Https destination unavailable."]
    r.discover(kept)
    assert [r.text(t) for t in kept] == kept


def test_a_host_glued_behind_a_sentence_is_the_known_host():
    r = renamer()
    text = "failures: edge01.contoso.com: Https destination unavailable.edge02.contoso.com: Https destination"
    r.discover([text])
    assert r.text(text) == ("failures: server-005.example.invalid: Https destination unavailable."
                            "server-006.example.invalid: Https destination")


def test_secrets_are_scrubbed_even_when_names_are_kept():
    secret = 'p4ss"w\\rd!'
    r = renamer(secrets=[secret], keep_names=True)
    line = json.dumps({"probe": "x", "data": {"Said": f"logon as cmsbot with {secret}",
                                              "Token": "xoxb-1234567890-abcdefghij"}})
    out = r.output(line)
    assert secret not in out and json.dumps(secret)[1:-1] not in out
    assert "xoxb-1234567890" not in out
    data = json.loads(out)["data"]
    assert data["Said"] == f"logon as cmsbot with {SCRUBBED}"  # the name kept, the secret gone
    assert r.mapping == {}


def test_output_that_is_not_utf8_survives_byte_for_byte_where_no_name_is():
    r = renamer()
    raw = "Volumenlizenzschlüssel installiert fe01.contoso.com".encode("cp850") + b"\r\n"
    out = r.raw(raw)
    assert out == "Volumenlizenzschlüssel installiert ".encode("cp850") + b"server-001.example.invalid\r\n"


def test_the_renamed_topology_loads_and_names_the_same_deployment():
    r = renamer()
    t = topo.parse(renamed_topology(topo.load(TOPOLOGY), r))
    assert t.cms_pool == "pool-001.example.invalid"
    paired = t.paired_pool(t.cms_pool)
    assert paired is not None and paired.fqdn == "pool-002.example.invalid"
    assert [s.fqdn for s in t.servers][:2] == ["server-001.example.invalid", "server-002.example.invalid"]
    assert t.deployment.domain == "example.invalid" and t.deployment.name == "deployment"
    assert "contoso" not in renamed_topology(topo.load(TOPOLOGY), r).lower()


# -- renaming changes nothing the diagnosis sees ---------------------------------------------------


@cache
def renamed(name: str) -> tuple[Renamer, StatusReport]:
    """The recording's /cms-status, every answer, host error and the topology renamed first."""
    original = R.topology_of(name)
    calls = R.doc(name)["status"]
    r = Renamer(original, account="cmsbot")
    r.discover([out for call in calls for run in _runs(call).values() for out in run["stdout"].values()])
    topology = topo.parse(renamed_topology(original, r))

    def host_run(server: str, rec: dict[str, Any]) -> HostRun:
        error = HostError.model_validate(rec["error"]) if rec["error"] else None
        if error:
            error = error.model_copy(update={"server": r.name(error.server), "reason": r.text(error.reason)})
        run = HostRun(server=r.name(server), error=error)
        for probe, stdout in rec["stdout"].items():
            run.read(probe, probes.decode(probe, Output(r.output(stdout).encode(), b"", 0)))
        return run

    candidates = cms_candidates(topology)
    stage1 = {r.name(s): host_run(s, rec) for s, rec in calls[0]["runs"].items()}
    attempts = ([stage1[candidates[0]]] if candidates else []) + [
        host_run(c["server"], c["run"]) for c in calls[1:] if c["call"] == "run"]
    report = build_report(topology, topology.everything(), stage1, attempts)
    stage2 = [c for c in calls[1:] if c["call"] == "run_all"]
    if stage2:
        report = add_second_stage(report, {r.name(s): host_run(s, rec) for s, rec in stage2[0]["runs"].items()})
    return r, report.model_copy(update={"findings": diagnose(report)})


def _words(text: str) -> tuple[str, ...]:
    return tuple(sorted(text.replace(",", " ").split()))


def _runs(call: dict[str, Any]) -> dict[str, Any]:
    return call["runs"] if call["call"] == "run_all" else {call["server"]: call["run"]}


@pytest.mark.parametrize("name", R.NAMES)
def test_a_renamed_recording_is_diagnosed_the_same(name):
    r, report = renamed(name)
    # a summary lists names sorted, and the replacements sort differently: compare its words
    before = sorted((f.code.value, r.name(f.subject), _words(r.text(f.summary))) for f in R.findings(name))
    after = sorted((f.code.value, f.subject, _words(f.summary)) for f in report.findings)
    assert after == before
    assert [(e.server, e.kind, e.probe) for e in report.host_errors] == \
        sorted((r.name(e.server), e.kind, e.probe) for e in R.report(name).host_errors)


@pytest.mark.parametrize("name", ["combined", "computer-not-in-group", "edge-cert-other-root@edge-winrm",
                                  "share-acl-missing+unreachable"])
def test_no_real_name_is_left_in_a_renamed_recording(name):
    r, report = renamed(name)
    text = report.model_dump_json().lower()
    real = {s.fqdn for s in R.topology_of(name).servers} | {p.fqdn for p in R.topology_of(name).pools}
    assert not [n for n in real if n in text]
    assert "contoso" not in text and "fabrikam" not in text


# -- the folder as written: nothing secret in any file ----------------------------------------------


def test_no_file_of_a_capture_holds_the_password_or_a_token(tmp_path):
    password = "Winrm-P4ss!word"
    token = "xoxb-1111111111-2222222222-abcdefabcdef"
    t = topo.load(TOPOLOGY)
    settings = Settings.model_construct(winrm_password=SecretStr(password),
                                        winrm_transport="ntlm", winrm_scheme="https", winrm_max_envelope_kb=150,
                                        host_deadline=30.0, redis_url="redis://:redis-secret-1@r:6379/0")
    secrets = secrets_of(settings, {"CMSBOT_SLACK_BOT_TOKEN": token, "CMSBOT_SLACK_SIGNING_SECRET": "s1gning-secret"})
    stdout = json.dumps({"probe": "replica-health", "version": 2, "ps": "5.1", "data": {
        "Said": f"password {password} for CONTOSO\\cmsbot on fe01.contoso.com", "Token": token}}) + "\r\n"
    answered = Answer(server="fe01.contoso.com", probe="replica-health", params={"role": f"frontend {password}"},
                      started_at="2024-01-01T00:00:00.000Z", elapsed_s=0.5,
                      output=Output(stdout.encode(), f"#< CLIXML {password}".encode(), 0), reading="ok")
    failed = Answer(server="fe02.contoso.com", probe="replica-health", params={}, started_at="x", elapsed_s=1.0,
                    error_kind=HostErrorKind.auth_failed, error_reason=f"rejected {password} and s1gning-secret")
    captures = [ServerCapture("fe01.contoso.com", [answered]), ServerCapture("fe02.contoso.com", [failed])]
    for keep in (False, True):
        folder = tmp_path / f"keep-{keep}"
        r = Renamer(t, account="CONTOSO\\cmsbot", secrets=secrets, keep_names=keep)
        r.discover([stdout])
        write(folder, t, settings, captures, r, "start", "end")
        everything = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
        for secret in (password, token, "s1gning-secret", "redis-secret-1"):
            assert secret.encode() not in everything, (keep, secret)
        assert SCRUBBED.encode() in everything
        assert (b"fe01.contoso.com" in everything) is keep
    manifest = json.loads((tmp_path / "keep-False" / "manifest.json").read_text())
    assert manifest["names"] == "replaced" and manifest["format"] == "cmsbot-capture/1"
    assert [s["fqdn"] for s in manifest["servers"]][:2] == ["server-001.example.invalid", "server-002.example.invalid"]
    meta = json.loads((tmp_path / "keep-False" / "servers" / "server-001.example.invalid" / "replica-health.json")
                      .read_text())
    assert (meta["ps"], meta["exit_code"], meta["elapsed_s"]) == ("5.1", 0, 0.5)
