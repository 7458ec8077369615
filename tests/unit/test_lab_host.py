"""The lab reads the probe wire format its own way, as a Windows host would: from the shell's
environment as the WS-Man Create body carries it. The environment here is built by hand (literal
variable names, gzip and base64 computed here), not with the client's helpers, so an encoding bug in the
client could not be copied into both sides of this test."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape, quoteattr

from lab.deployment import build
from lab.wsman import NS, Lab
from workers import probes

SERVER = "fe01.contoso.com"
USER, PASSWORD = "cmsbot", "unit-password"
ENVELOPE = ('<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
            'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
            'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
            'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell">')
SHELL = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"

LIBRARY = "# probe-lib: written for this test\nfunction Invoke-Probe {\n    param($Name, $Version, $Body)\n}\n"
SCRIPT = "# probe: cms-status v7\nInvoke-Probe -Name 'cms-status' -Version 7 -Body { param($Params) }\n"
PARAMS = '{"note": "\'; Remove-Item C:\\\\ -Recurse #", "minutes": 5, "unicode": "\\u00dcberpr\\u00fcfen"}'


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def packed(text: str) -> str:
    """The documented packing: UTF-8, gzip (RFC 1952), base64."""
    return base64.b64encode(gzip.compress(text.encode("utf-8"))).decode("ascii")


def environment(script: str = packed(SCRIPT), params: str = packed(PARAMS)) -> dict[str, str]:
    """Script and parameters each in three chunks cut at odd places: the host joins, then unpacks."""
    return {"CMSBOT_PROBE_LIB_0": packed(LIBRARY),
            "CMSBOT_SCRIPT_CMS_STATUS_0": script[:7], "CMSBOT_SCRIPT_CMS_STATUS_1": script[7:30],
            "CMSBOT_SCRIPT_CMS_STATUS_2": script[30:],
            "CMSBOT_PARAMS_CMS_STATUS_0": params[:5], "CMSBOT_PARAMS_CMS_STATUS_1": params[5:40],
            "CMSBOT_PARAMS_CMS_STATUS_2": params[40:]}


def _header(action: str, shell_id: str = "", options: str = "") -> str:
    selector = f'<w:SelectorSet><w:Selector Name="ShellId">{shell_id}</w:Selector></w:SelectorSet>' if shell_id else ""
    return (f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:1</a:MessageID>{selector}"
            f"<w:OperationTimeout>PT5S</w:OperationTimeout>{options}</s:Header>")


def _post(lab: Lab, body: str) -> ET.Element:
    auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    raw = asyncio.run(lab._route("POST", f"/wsman/{SERVER}", {"authorization": auth}, body.encode()))
    assert raw is not None
    head, _, xml = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), raw.decode(errors="replace")
    return ET.fromstring(xml)


def run_probe(env: dict[str, str]) -> tuple[bytes, bytes, int, Lab]:
    """Create a shell with `env`, run the client's cms-status command in it: (stdout, stderr, exit code)."""
    lab = Lab(lambda scenarios: build(), [], USER, PASSWORD)
    variables = "".join(f"<rsp:Variable Name={quoteattr(k)}>{escape(v)}</rsp:Variable>" for k, v in env.items())
    created = _post(lab, f"{ENVELOPE}{_header('http://schemas.xmlsoap.org/ws/2004/09/transfer/Create')}<s:Body>"
                         f"<rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr"
                         f"</rsp:OutputStreams><rsp:Environment>{variables}</rsp:Environment></rsp:Shell>"
                         "</s:Body></s:Envelope>")
    shell_id = created.findtext(".//rsp:ShellId", "", NS)
    exe, args = probes.command("cms-status")  # the command line is the client's; the environment is not
    started = _post(lab, f"{ENVELOPE}{_header(SHELL + 'Command', shell_id)}<s:Body><rsp:CommandLine>"
                         f"<rsp:Command>{exe}</rsp:Command><rsp:Arguments>{escape(' '.join(args))}</rsp:Arguments>"
                         "</rsp:CommandLine></s:Body></s:Envelope>")
    command_id = started.findtext(".//rsp:CommandId", "", NS)
    stdout, stderr, exit_code = b"", b"", None
    while exit_code is None:
        answer = _post(lab, f"{ENVELOPE}{_header(SHELL + 'Receive', shell_id)}<s:Body><rsp:Receive>"
                            f'<rsp:DesiredStream CommandId="{command_id}">stdout stderr</rsp:DesiredStream>'
                            "</rsp:Receive></s:Body></s:Envelope>")
        for stream in answer.iterfind(".//rsp:Stream", NS):
            data = base64.b64decode(stream.text or "")
            if stream.get("Name") == "stdout":
                stdout += data
            else:
                stderr += data
        code = answer.findtext(".//rsp:ExitCode", None, NS)
        exit_code = int(code) if code is not None else None
    return stdout, stderr, exit_code, lab


def test_the_lab_decodes_the_environment_as_a_host_would_and_fails_where_a_host_fails():
    # a well-formed environment: the probe is known by its script's header, the parameters are decoded
    stdout, stderr, code, lab = run_probe(environment())
    doc = json.loads(stdout)
    assert (doc["probe"], doc["version"], code, stderr) == ("cms-status", 7, 0, b"")
    assert doc["data"]["Store"]["ActiveMasterFqdn"]
    assert lab.stats.commands == [{"server": SERVER, "probe": "cms-status", "params": json.loads(PARAMS)}]

    # bad base64 in the script: [Convert]::FromBase64String stops the bootstrap (ErrorActionPreference
    # Stop); powershell.exe prints nothing, writes the error record to stderr as CLIXML, exits 1
    stdout, stderr, code, _ = run_probe(environment(script="!!" + packed(SCRIPT)[2:]))
    assert (stdout, code) == (b"", 1)
    assert stderr.startswith(b"#< CLIXML\r\n") and b"FromBase64String" in stderr and b"FormatException" in stderr
    assert "not a valid Base-64 string" in probes.clixml_errors(stderr)

    # a missing chunk: the host joins up to the first gap; here what it joins is not whole base64
    env = environment()
    del env["CMSBOT_SCRIPT_CMS_STATUS_1"]
    stdout, stderr, code, _ = run_probe(env)
    assert (stdout, code) == (b"", 1)
    assert "Invalid length for a Base-64 char array" in probes.clixml_errors(stderr)

    # a script sent as plain base64, not packed: GZipStream refuses it
    stdout, stderr, code, _ = run_probe(environment(script=b64(SCRIPT)))
    assert (stdout, code) == (b"", 1)
    assert "The magic number in GZip header is not correct" in probes.clixml_errors(stderr)

    # the parameters are unpacked by the library inside Invoke-Probe: bad base64, a missing chunk or
    # JSON that does not parse is the probe's own error document, as Invoke-Probe prints it, exit code 0
    stdout, stderr, code, _ = run_probe(environment(params="%%%%" + packed(PARAMS)[4:]))
    doc = json.loads(stdout)
    assert (doc["probe"], code, stderr, "data" in doc) == ("cms-status", 0, b"", False)
    assert "not a valid Base-64 string" in doc["error"]["message"]
    env = environment(params=packed(PARAMS)[:41] + "=" * 3)
    doc = json.loads(run_probe(env)[0])
    assert "Base-64" in doc["error"]["message"]
    doc = json.loads(run_probe(environment(params=packed(PARAMS[:-9])))[0])
    assert doc["error"]["message"].startswith("Invalid JSON primitive")
    assert doc["error"]["command"] == "ConvertFrom-Json"

    # without the library, the script's call to Invoke-Probe is a command PowerShell does not know
    env = environment()
    del env["CMSBOT_PROBE_LIB_0"]
    stdout, stderr, code, _ = run_probe(env)
    assert (stdout, code) == (b"", 1)
    assert "The term 'Invoke-Probe' is not recognized" in probes.clixml_errors(stderr)
