"""Our WinRM client (real pywinrm, unmodified) against the lab over TCP."""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
import winrm
from winrm.exceptions import WinRMTransportError, WSManFaultError

from cms import topology as topo
from cms.models import CmsStatus
from tests.harness import LAB_PASSWORD, LAB_USER, LabProcess, cmsbot, scaled, stop_cleanly
from workers import probes
from workers.probes import wire
from workers.runs.status import probe_params
from workers.transport.fleet import Fleet, credentials
from workers.transport.winrm import AuthFailed, Credentials, HostShell, Output, ProbeFailed


def shell_for(lab, server: str, env: dict[str, str], password: str = LAB_PASSWORD, deadline: float = 10) -> HostShell:
    endpoint = topo.load(lab.topology).server(server).endpoint
    creds = credentials(lab.client_settings(winrm_password=password))
    return HostShell(server, endpoint, creds, env, deadline=time.monotonic() + deadline)


def test_unknown_probe_is_answered_with_a_soap_fault(lab):
    lab.scenarios()
    script = "# probe: no-such-probe v1\nWrite-Output 'hi'\n"
    env = probes.shell_env({}) | {"CMSBOT_SCRIPT_CMS_STATUS_0": wire.packed(script)}
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
    # each finished command got the final Signal before the shell was deleted (MS-WSMV 3.1.4.14)
    assert (stats["signals"], stats["unsignalled"]) == (2, 0)


def test_one_command_runs_several_probes_each_answering_for_itself(lab):
    """One powershell.exe for the probes of a shell (one start, one module load on the host): each answer is
    its own line, and each probe reads its own parameters."""
    lab.scenarios()
    env = probes.shell_env({"cms-status": {}, "replica-health": {"note": "x"}})
    shell = shell_for(lab, "fe01.contoso.com", env)
    out = shell.run(*probes.command("cms-status", "replica-health"))
    shell.close()
    assert probes.decode("cms-status", out)["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"
    assert probes.decode("replica-health", out)["Services"]["REPLICA"] == "Running"
    stats = lab.stats()
    assert [c["probe"] for c in stats["commands"]] == ["cms-status", "replica-health"]
    assert stats["commands"][1]["params"] == {"note": "x"}
    assert stats["processes"] == {"fe01.contoso.com": 1}


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
    settings = big_lab.client_settings(host_deadline=20)
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
    lab = LabProcess(tmp_path, "--servers", "3", "--product", "lync2013")
    try:
        assert lab.text().strip() == f"lab ready: 3 servers, topology {lab.topology}, CA {lab.ca}"
        assert lab.ca == tmp_path / "lab-tls" / "ca.pem"
        topology = topo.load(lab.topology)
        assert topology.deployment.version is topo.Version.lync2013
        assert [s.fqdn for s in topology.servers] == ["fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com"]
    finally:
        stop_cleanly(lab)


# -- a strict lab: what a Windows host refuses, the lab refuses the same way ----------------------------------


def _protocol(lab, server: str = "fe01.contoso.com") -> winrm.Protocol:
    """Real pywinrm, transport basic, against the lab (plain HTTP on loopback: no certificate)."""
    return winrm.Protocol(topo.load(lab.topology).server(server).endpoint, transport="basic", username=LAB_USER,
                          password=LAB_PASSWORD, server_cert_validation="ignore")


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory):
    """A host configured like Windows Server 2008 R2 (MaxEnvelopeSizekb 150), with a small shell quota, a short
    IdleTimeout and a visible module-load time."""
    lab = LabProcess(tmp_path_factory.mktemp("smalllab"), "--servers", "3", "--max-envelope-kb", "150",
                     "--max-shells-per-user", "3", "--idle-timeout-s", str(scaled(2)), "--module-load-ms", "300")
    yield lab
    stop_cleanly(lab)


def test_a_request_above_max_envelope_size_is_refused_with_http_413(small_lab):
    """MS-WSMV 3.1.4.1.20: a request larger than MaxEnvelopeSizekb gets HTTP 413, unprocessed."""
    small_lab.scenarios()
    env = {"CMSBOT_FILLER_0": "A" * 160_000}  # a Create body above 150 KB
    with pytest.raises(WinRMTransportError) as raised:
        _protocol(small_lab).open_shell(env_vars=env)
    assert raised.value.code == 413
    shell = shell_for(small_lab, "fe01.contoso.com", env)
    with pytest.raises(ProbeFailed, match="answered HTTP 413"):
        shell.run(*probes.command("cms-status"))
    stats = small_lab.stats()
    assert stats["refused"]["413"] == 2 and stats["shells"] == {}
    # just under the limit, the same host creates the shell, and echoes the environment back
    p = _protocol(small_lab)
    p.close_shell(p.open_shell(env_vars={"CMSBOT_FILLER_0": "A" * 140_000}))


def test_the_create_response_echoes_the_shell_environment(lab):
    """A Windows host's CreateResponse describes the shell, its environment included (pypsrp
    test_winrs_environment.yml)."""
    lab.scenarios()
    env = probes.shell_env({"cms-status": {}})
    p = _protocol(lab)
    responses: list[bytes] = []
    send = p.transport.send_message

    def recording(message):
        responses.append(send(message))
        return responses[-1]
    p.transport.send_message = recording
    shell_id = p.open_shell(env_vars=env)
    p.close_shell(shell_id)
    created = ET.fromstring(responses[0])
    ns = {"rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell"}
    echoed = {v.get("Name"): v.text or "" for v in created.iterfind(".//rsp:Shell/rsp:Environment/rsp:Variable", ns)}
    assert echoed == env
    assert created.findtext(".//rsp:Shell/rsp:IdleTimeOut", None, ns) == "PT7200.000S"
    assert created.findtext(".//rsp:Shell/rsp:Owner", None, ns) == LAB_USER


def test_a_create_response_above_the_clients_max_envelope_size_is_an_encoding_limit_fault(lab):
    """The echoed environment counts: a 200 KB environment is accepted by a 500 KB host, but its
    CreateResponse would exceed pywinrm's MaxEnvelopeSize (153600), so the host answers a fault."""
    lab.scenarios()
    env = {f"CMSBOT_FILLER_{i}": "B" * 30_000 for i in range(7)}
    with pytest.raises(WSManFaultError) as raised:
        _protocol(lab).open_shell(env_vars=env)
    assert (raised.value.fault_subcode, raised.value.wsman_fault_code) == ("w:EncodingLimit", 2150858790)
    assert "exceeds the maximum envelope size that is allowed (153600)" in raised.value.reason
    assert lab.stats()["shells"] == {}


def test_max_shells_per_user_is_a_quota_limit_fault(small_lab):
    """MS-WSMV 3.1.4.5.2.1: the shell over MaxShellsPerUser gets w:QuotaLimit, code 2150859173."""
    small_lab.scenarios()
    p = _protocol(small_lab)
    shells = [p.open_shell() for _ in range(3)]
    with pytest.raises(WSManFaultError) as raised:
        p.open_shell()
    assert (raised.value.fault_code, raised.value.fault_subcode) == ("s:Sender", "w:QuotaLimit")
    assert raised.value.wsman_fault_code == 2150859173
    assert "maximum number of concurrent shells" in raised.value.reason
    other = _protocol(small_lab, "fe02.contoso.com")  # the quota is per host
    other.close_shell(other.open_shell())
    p.close_shell(shells.pop())
    shells.append(p.open_shell())  # a closed shell frees its place
    for shell_id in shells:
        p.close_shell(shell_id)


def test_an_idle_shell_expires_and_then_has_invalid_selectors(small_lab):
    """MS-WSMV 3.1.4.1.31.5: a shell idle for IdleTimeout is deleted; what is then sent to it gets the fault a
    Windows host sends for an unknown shell (s:Sender, w:InvalidSelectors, code 2150858843)."""
    small_lab.scenarios()
    env = probes.shell_env({"cms-status": {}})
    p = _protocol(small_lab)
    shell_id = p.open_shell(env_vars=env)
    time.sleep(scaled(2) + 0.8)  # the shell sits idle past its IdleTimeout; what is asserted is what happens next
    with pytest.raises(WSManFaultError) as raised:
        p.run_command(shell_id, *probes.command("cms-status"))
    assert (raised.value.fault_code, raised.value.fault_subcode) == ("s:Sender", "w:InvalidSelectors")
    assert raised.value.wsman_fault_code == 2150858843
    assert small_lab.stats()["expired"] == 1


def test_output_arrives_while_running_and_done_comes_last(small_lab):
    """A real host returns output with CommandState Running and says Done (with End and the exit code) in a
    later Receive (pypsrp test_winrs_operation_timeout.yml); the client assembles the whole answer, then
    sends the Signal MS-WSMV 3.1.4.14 asks for."""
    small_lab.scenarios()
    env = probes.shell_env({"cms-status": {}})
    p = _protocol(small_lab)
    shell_id = p.open_shell(env_vars=env)
    command_id = p.run_command(shell_id, *probes.command("cms-status"))
    started, receives = time.monotonic(), []
    while not receives or not receives[-1][3]:
        receives.append(p.get_command_output_raw(shell_id, command_id))
    assert time.monotonic() - started >= 0.3  # cms-status loads the SkypeForBusiness module
    assert len(receives) >= 2 and receives[0][0] and not receives[0][3]
    assert receives[-1][:2] == (b"", b"") and receives[-1][2] == 0
    p.cleanup_command(shell_id, command_id)
    p.close_shell(shell_id)

    shell = shell_for(small_lab, "fe01.contoso.com", env)
    out = shell.run(*probes.command("cms-status"))
    shell.close()
    raw = Output(b"".join(r[0] for r in receives), b"", 0)
    assert out.exit_code == 0 and probes.decode("cms-status", out)["Store"] == probes.decode("cms-status", raw)["Store"]
    stats = small_lab.stats()
    assert (stats["signals"], stats["unsignalled"]) == (2, 0)


def test_a_401_offers_negotiate_and_basic(lab):
    """A Windows host with Basic enabled answers 401 with Negotiate first, then Basic, and closes the
    connection; the lab still authenticates Basic only."""
    lab.scenarios()
    endpoint = urlsplit(topo.load(lab.topology).server("fe01.contoso.com").endpoint)
    conn = http.client.HTTPSConnection(endpoint.hostname or "", endpoint.port, timeout=scaled(10),
                                       context=ssl.create_default_context(cafile=str(lab.ca)))
    wrong = base64.b64encode(f"{LAB_USER}:wrong".encode()).decode()
    conn.request("POST", endpoint.path, body=b"<s:Envelope/>", headers={
        "Authorization": f"Basic {wrong}", "Content-Type": "application/soap+xml;charset=UTF-8"})
    response = conn.getresponse()
    conn.close()
    assert response.status == 401
    assert response.msg.get_all("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
    assert response.getheader("Connection") == "close"


def test_an_invalid_operation_timeout_is_a_fault(lab):
    """wsmerror.h ERROR_WSMAN_INVALID_TIMEOUT_HEADER: an OperationTimeout that is no xs:duration."""
    lab.scenarios()
    p = _protocol(lab)
    p.operation_timeout_sec = -5  # pywinrm writes PT{value}S: "PT-5S" is no xs:duration
    with pytest.raises(WSManFaultError) as raised:
        p.open_shell()
    assert raised.value.wsman_fault_code == 2150858881


# -- a Lync Server 2010 host: Windows PowerShell 2.0, the Lync 2010 module ----------------------------------

PS2_LIBRARY = ("# probe-lib: written for this test, in the 2.0 subset\nSet-StrictMode -Version 2\n"
               "function Invoke-Probe {\n    param([string]$Name, [int]$Version, [switch]$NoModule, $Body)\n}\n")


@pytest.fixture(scope="module")
def lync2010_lab(tmp_path_factory):
    lab = LabProcess(tmp_path_factory.mktemp("lync2010lab"), "--servers", "4", "--product", "lync2010")
    yield lab
    stop_cleanly(lab)


def _run_script(lab, body: str) -> Output:
    script = f"# probe: cms-status v1\nInvoke-Probe -Name 'cms-status' -Version 1 -Body {{\n{body}\n}}\n"
    env = wire.environment(PS2_LIBRARY, {"cms-status": (script, "{}")})
    shell = shell_for(lab, "fe01.contoso.com", env)
    try:
        return shell.run(*probes.command("cms-status"))
    finally:
        shell.close()


def test_a_powershell_2_host_fails_a_script_it_cannot_parse_with_clixml_on_stderr(lync2010_lab):
    """-in came with PowerShell 3.0: on 2.0 [ScriptBlock]::Create throws, powershell.exe writes the error
    record to stderr as CLIXML and exits 1; the client reports it as the host's error."""
    lync2010_lab.scenarios()
    out = _run_script(lync2010_lab, "    param($Params)\n    if ('a' -in @('a')) { 1 }")
    assert (out.stdout, out.exit_code) == (b"", 1) and out.stderr.startswith(b"#< CLIXML")
    with pytest.raises(ProbeFailed, match=r"""no JSON result \(Exception calling "Create" .*Unexpected token '-in'"""):
        probes.decode("cms-status", out)


def test_a_powershell_2_host_reports_what_fails_at_run_time_as_the_probes_error(lync2010_lab):
    """A 3.0+ cmdlet, or a cmdlet Lync Server 2010 does not have, fails when it runs; Invoke-Probe's catch
    turns it into the probe's error document. A guarded call (Get-Command first, or inside try) does not."""
    lync2010_lab.scenarios()
    out = _run_script(lync2010_lab, "    param($Params)\n    @{a = 1} | ConvertTo-Json")
    assert out.exit_code == 0
    with pytest.raises(ProbeFailed, match="The term 'ConvertTo-Json' is not recognized"):
        probes.decode("cms-status", out)
    out = _run_script(lync2010_lab, "    param($Params)\n    Invoke-CsManagementServerFailover -Restore")
    with pytest.raises(ProbeFailed, match="The term 'Invoke-CsManagementServerFailover' is not recognized"):
        probes.decode("cms-status", out)
    guarded = ("    param($Params)\n    if (Get-Command -Name 'Invoke-CsManagementServerFailover' "
               "-ErrorAction SilentlyContinue) { Invoke-CsManagementServerFailover -Restore }")
    assert probes.decode("cms-status", _run_script(lync2010_lab, guarded))["Store"]


def test_every_probe_runs_on_a_powershell_2_host(lync2010_lab):
    """Every probe, with the real library, parses and runs on the Lync Server 2010 lab: none meets a construct
    Windows PowerShell 2.0 lacks. (Failing probes answer their own errors here, e.g. for missing parameters;
    cms-failover and cms-restore answer that Lync Server 2010 has no Invoke-CsManagementServerFailover.)"""
    lync2010_lab.scenarios()
    refused = []
    for name in probes.names():
        shell = shell_for(lync2010_lab, "fe01.contoso.com", probes.shell_env({name: {}}))
        try:
            out = shell.run(*probes.command(name))
        finally:
            shell.close()
        try:
            probes.decode(name, out)
        except ProbeFailed as e:
            by_design = "'Invoke-CsManagementServerFailover' is not recognized" in e.reason
            if out.exit_code or (not by_design and re.search(
                    r"not recognized|Unable to find type|Unexpected token|Missing file specification|"
                    r"cmsbot lab \(Windows PowerShell 2\.0 host\)|cannot be retrieved because", e.reason)):
                refused.append(e.reason)
    assert not refused, "\n".join(refused)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_single_response_past_the_answer_limit_is_not_read(chunked):
    """A host that ignores our MaxEnvelopeSize and sends 20 MB in one response: reading stops at the
    limit (by its Content-Length, or as a chunked body arrives) and the probe fails saying why."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    size, sent = 20 * 1024 * 1024, []

    class Huge(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
            self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))))
            self.end_headers()
            block = b"x" * 65536
            try:
                for _ in range(size // len(block)):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
                    sent.append(len(block))
                if chunked:
                    self.wfile.write(b"0\r\n\r\n")
            except OSError:  # the client stopped reading and closed the connection
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Huge)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        creds = Credentials(username=LAB_USER, password=LAB_PASSWORD, transport="basic")
        shell = HostShell("fe01.contoso.com", f"http://127.0.0.1:{server.server_address[1]}/wsman", creds, {},
                          deadline=time.monotonic() + scaled(10), max_answer=1024 * 1024)
        with pytest.raises(ProbeFailed, match=r"answer larger than 1 MB: fe01\.contoso\.com sent a single .* 1\.4 MB"):
            shell.run(*probes.command("cms-status"))
        shell.close()
        assert sum(sent) < size  # the server could not push it all: nobody was reading
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("tls", "transport"), [(False, "basic"), (False, "ntlm"), (True, "ntlm"), (True, "basic")],
                         ids=["http-basic", "http-ntlm-encrypted", "https-ntlm", "https-basic"])
def test_every_transport_reads_the_same_answers(tmp_path, tls, transport):
    """Our client on each path a deployment may use, against a lab that accepts only that scheme: over plain
    HTTP, NTLM must encrypt every message (the lab refuses one in clear, as a host with AllowUnencrypted=false
    does); over HTTPS the certificate must chain to the lab's own CA."""
    lab = LabProcess(tmp_path, "--servers", "10", "--auth", transport, tls=tls)
    try:
        topology = topo.load(lab.topology)
        settings = lab.client_settings(winrm_transport=transport, host_deadline=10)
        reachable = [s.fqdn for s in topology.servers if s.winrm]
        with Fleet(topology, settings, probe_params(topology, topology.everything())) as fleet:
            runs = fleet.run_all({s: ["replica-health"] for s in reachable} | {"fe01.contoso.com": ["cms-status"]})
        assert {s: r.errors for s, r in runs.items()} == {s: [] for s in runs}
        status = runs["fe01.contoso.com"].answer("cms-status", CmsStatus)
        assert status is not None and status.store.active_master_fqdn == "fe01.contoso.com"
        assert len(runs) == len(reachable) == 8
    finally:
        stop_cleanly(lab)
