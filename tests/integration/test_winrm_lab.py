"""Our WinRM client (real pywinrm, unmodified) against the lab over TCP."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import time

import pytest
import winrm

from cms import topology as topo
from cms.models import CmsStatus
from cms.settings import Settings
from tests.harness import LAB_PASSWORD, LAB_USER, LabProcess, cmsbot, scaled, stop_cleanly
from workers import probes
from workers.runs.status import probe_params
from workers.transport.fleet import Fleet
from workers.transport.winrm import AuthFailed, Credentials, HostShell, ProbeFailed


def shell_for(lab, server: str, env: dict[str, str], password: str = LAB_PASSWORD, deadline: float = 10) -> HostShell:
    endpoint = topo.load(lab.topology).server(server).endpoint
    creds = Credentials(username=LAB_USER, password=password, transport="basic")
    return HostShell(server, endpoint, creds, env, deadline=time.monotonic() + deadline)


def test_unknown_probe_is_answered_with_a_soap_fault(lab):
    lab.scenarios()
    script = "# probe: no-such-probe v1\nWrite-Output 'hi'\n"
    env = probes.shell_env({}) | {"CMSBOT_SCRIPT_CMS_STATUS_0": base64.b64encode(script.encode()).decode()}
    shell = shell_for(lab, "fe01.contoso.com", env)
    cmd, args = probes.command("cms-status")
    with pytest.raises(ProbeFailed, match=r"WS-Management fault from fe01\.contoso\.com: .*does not know the probe"):
        shell.run(cmd, args)
    shell.close()


def test_wrong_password_is_auth_failed(lab):
    lab.scenarios()
    shell = shell_for(lab, "fe02.contoso.com", probes.shell_env({"cms-status": {}}), password="wrong")
    cmd, args = probes.command("cms-status")
    with pytest.raises(AuthFailed, match="rejected"):
        shell.run(cmd, args)


def test_basic_over_plain_http_is_refused_off_loopback():
    creds = Credentials(username=LAB_USER, password=LAB_PASSWORD, transport="basic")
    shell = HostShell("fe01.contoso.com", "http://fe01.contoso.com:5985/wsman", creds, {}, deadline=time.monotonic() + 5)
    with pytest.raises(AuthFailed, match="only to loopback"):
        shell.run(*probes.command("cms-status"))


def test_one_shell_runs_several_probes_with_their_own_parameters(lab):
    lab.scenarios()
    env = probes.shell_env({"cms-status": {}, "replica-health": {"note": "x"}})
    shell = shell_for(lab, "fe01.contoso.com", env)
    first = probes.decode("cms-status", shell.run(*probes.command("cms-status")))
    second = probes.decode("replica-health", shell.run(*probes.command("replica-health")))
    shell.close()
    assert first["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"
    assert second["Services"]["REPLICA"] == "Running"
    stats = lab.stats()
    assert stats["shells"]["fe01.contoso.com"] == 1
    assert [c["probe"] for c in stats["commands"]] == ["cms-status", "replica-health"]
    assert stats["commands"][1]["params"] == {"note": "x"}


def test_standard_input_reaches_a_probe_only_in_pipe_mode(lab):
    """WinRS hands the bytes sent to a command to its process only with WINRS_CONSOLEMODE_STDIN=FALSE
    (MS-WSMV 3.1.4.11). Our client uses pipe mode whenever a command has input, so a re-seed's zip
    reaches import-configuration; pywinrm's default, console mode, never delivers it."""
    lab.scenarios()
    blob = b"PK\x03\x04 a configuration export"
    params = {"fileName": "cmsbot-export-test.zip", "sha256": hashlib.sha256(blob).hexdigest()}
    env = probes.shell_env({"import-configuration": params})
    cmd, args = probes.command("import-configuration")

    shell = shell_for(lab, "fe03.contoso.com", env)
    data = probes.decode("import-configuration", shell.run(cmd, args, stdin=base64.b64encode(blob)))
    shell.close()
    assert data["Imported"] is True and data["Sha256"] == params["sha256"].upper()

    console = winrm.Protocol(topo.load(lab.topology).server("fe03.contoso.com").endpoint, transport="basic",
                             username=LAB_USER, password=LAB_PASSWORD,
                             server_cert_validation="ignore")  # plain HTTP on loopback: no certificate
    shell_id = console.open_shell(env_vars=env)
    command_id = console.run_command(shell_id, cmd, args)  # console_mode_stdin=True, pywinrm's default
    console.send_command_input(shell_id, command_id, base64.b64encode(blob), end=True)
    out, _, _ = console.get_command_output(shell_id, command_id)
    console.close_shell(shell_id)
    assert b"standard input is a console, not the zip" in out


@pytest.fixture(scope="module")
def big_lab(tmp_path_factory):
    lab = LabProcess(tmp_path_factory.mktemp("biglab"), "--servers", "200")
    yield lab
    stop_cleanly(lab)


def test_large_output_arrives_in_several_receive_chunks(big_lab):
    topology = topo.load(big_lab.topology)
    assert len(topology.servers) == 200
    settings = Settings(winrm_username=LAB_USER, winrm_password=LAB_PASSWORD, winrm_transport="basic",
                        host_deadline=20)
    with Fleet(topology, settings, probe_params(topology, topology.everything())) as fleet:
        run = fleet.run("fe01.contoso.com", ["cms-status"])
    assert run.errors == [], run.errors
    cms = run.answer("cms-status", CmsStatus)
    assert cms is not None and len(cms.replicas) == 200 and all(r.up_to_date for r in cms.replicas)
    # Create + Command + >= 3 Receive (the answer is > 32 KB) + Delete
    assert big_lab.stats()["requests"]["fe01.contoso.com"] >= 6


def test_lab_rejects_an_unknown_scenario_with_the_known_ones(tmp_path):
    proc = subprocess.run(cmsbot("lab", "--port", "0", "--topology-out", str(tmp_path / "t.yaml"),
                                 "--scenario", "meltdown"), capture_output=True, text=True, timeout=scaled(30))
    assert proc.returncode == 2
    assert "unknown scenario 'meltdown'" in proc.stderr and "replica-behind" in proc.stderr


def test_lab_prints_ready_line_with_server_count(tmp_path):
    lab = LabProcess(tmp_path, "--servers", "3", "--version", "lync2013")
    try:
        assert lab.text().strip() == f"lab ready: 3 servers, topology {lab.topology}"
        topology = topo.load(lab.topology)
        assert topology.deployment.version is topo.Version.lync2013
        assert [s.fqdn for s in topology.servers] == ["fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com"]
    finally:
        stop_cleanly(lab)
