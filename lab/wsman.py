"""A WS-Management (WinRM shell) endpoint for the simulated servers.

Speaks the subset of WS-Management that pywinrm uses, over HTTP/1.1 with Basic
auth: Create (environment variables taken from the request), Command, Receive
(long-polled up to the request's OperationTimeout, large output in several
chunks), Signal and Delete. Every server is served on one port under
`/wsman/<fqdn>`. A small JSON control API under `/_lab/` lets tests change
scenarios and read what the lab received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from lab import answers, host
from lab.deployment import LabServer, LabState, ScenarioError

log = logging.getLogger("lab")

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
ACTION = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
CHUNK = 16 * 1024
TIMED_OUT_CODE = 2150858793
MAX_BODY = 4 * 1024 * 1024


@dataclass
class Command:
    probe: str | None  # None: nothing ran (an empty script, or the bootstrap failed)
    version: int
    params: dict[str, Any]
    ready_at: float
    params_error: str | None = None  # the probe answers with its error document
    params_error_command: str = ""
    failure: host.TerminatingError | None = None  # stderr as CLIXML, exit code 1
    output: bytes | None = None
    stderr: bytes = b""
    exit_code: int = 0
    sent: int = 0
    stdin: bytearray = field(default_factory=bytearray)
    stdin_open: bool = False  # the probe reads stdin: it answers once stdin is closed
    console_stdin: bool = True  # WINRS_CONSOLEMODE_STDIN: sent bytes never reach the process


@dataclass
class Shell:
    server: str
    env: dict[str, str]
    codepage: str
    commands: dict[str, Command] = field(default_factory=dict)


class Fault(Exception):
    """Answered as a SOAP fault with HTTP 500, as WinRM does."""

    def __init__(self, reason: str, code: int = 2150858752, subcode: str = "w:InternalError"):
        super().__init__(reason)
        self.reason, self.code, self.subcode = reason, code, subcode


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    shells: dict[str, int] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "shells": self.shells, "commands": self.commands}


class Lab:
    """The lab's protocol handling over a mutable LabState."""

    def __init__(self, make_state: Callable[[list[str]], LabState], scenarios: list[str],
                 username: str, password: str, latency_ms: int = 0):
        self._make_state = make_state
        self.scenarios = list(scenarios)
        self.state = make_state(self.scenarios)
        self._auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        self.latency = latency_ms / 1000.0
        self.shells: dict[str, Shell] = {}
        self.stats = Stats()

    # -- HTTP ---------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                response = await self._route(method, path, headers, body)
                if response is None:  # the simulated host does not answer
                    writer.transport.abort()
                    return
                fault = self._fault_of(path)
                if fault in ("fault-reset", "fault-trickle") and b"ReceiveResponse" in response:
                    await _misbehave(writer, response, fault)
                    return
                writer.write(response)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not stop the lab
            log.exception("lab: request failed")
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes | None:
        if path.startswith("/_lab/"):
            return self._control(method, path, body)
        if not path.startswith("/wsman/") or method != "POST":
            return _http(404, b"not found", "text/plain")
        fqdn = path[len("/wsman/"):].strip("/").lower()
        server = self.state.servers.get(fqdn)
        if server is None:
            return _http(404, b"no such server in the lab", "text/plain")
        self.stats.requests[fqdn] = self.stats.requests.get(fqdn, 0) + 1
        if server.fault == "unreachable" or not server.winrm:
            return None
        if headers.get("authorization") != self._auth or server.fault == "fault-401":
            return _http(401, b"", "text/plain", extra={"WWW-Authenticate": 'Basic realm="WSMAN"'})
        if server.fault == "fault-500":
            return _http(500, _fault(Fault("The WS-Management service cannot process the request: the service is "
                                           "overloaded (simulated).", code=2150859046)).encode(),
                         "application/soap+xml;charset=UTF-8")
        if server.fault == "fault-xml":
            return _http(200, b"<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope'><s:Body><rsp:Receiv",
                         "application/soap+xml;charset=UTF-8")
        try:
            xml = await self._soap(server, body)
            return _http(200, xml.encode("utf-8"), "application/soap+xml;charset=UTF-8")
        except Fault as f:
            return _http(500, _fault(f).encode("utf-8"), "application/soap+xml;charset=UTF-8")

    # -- WS-Management ----------------------------------------------------------------
    async def _soap(self, server: LabServer, body: bytes) -> str:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Fault("The WS-Management service cannot process the request because the XML is invalid.",
                        code=2150858817, subcode="w:SchemaValidationError") from None
        action = _text(root, "s:Header/a:Action")
        message_id = _text(root, "s:Header/a:MessageID")
        shell_id = _text(root, "s:Header/w:SelectorSet/w:Selector[@Name='ShellId']")
        timeout = _seconds(_text(root, "s:Header/w:OperationTimeout"), default=60.0)
        body_el = root.find("s:Body", NS)

        if action == ACTION + "Create":
            return self._create(server, root, body_el, message_id)
        shell = self.shells.get(shell_id)
        if shell is None or shell.server != server.fqdn:
            raise Fault("The request for the Windows Remote Shell with ShellId failed because the shell was not found "
                        "on the server.", code=2150858843, subcode="w:InvalidSelectors")
        if action == SHELL_ACTION + "Command":
            return self._command(server, shell, root, body_el, message_id)
        if action == SHELL_ACTION + "Receive":
            return await self._receive(server, shell, body_el, message_id, timeout)
        if action == SHELL_ACTION + "Send":
            return self._send(shell, body_el, message_id)
        if action == SHELL_ACTION + "Signal":
            signal_el = body_el.find("rsp:Signal", NS) if body_el is not None else None
            assert body_el is None or signal_el is not None  # as before: a Body without rsp:Signal fails the request
            command_id = signal_el.get("CommandId") if signal_el is not None else None
            shell.commands.pop(command_id or "", None)
            return _envelope(action, message_id, "<rsp:SignalResponse/>")
        if action == ACTION + "Delete":
            self.shells.pop(shell_id, None)
            return _envelope(action, message_id, "")
        raise Fault(f"The WS-Management service does not support the action {action}.",
                    code=2150858771, subcode="a:ActionNotSupported")

    def _create(self, server: LabServer, root: ET.Element, body: ET.Element | None, message_id: str) -> str:
        env = {}
        if body is not None:
            for var in body.findall("rsp:Shell/rsp:Environment/rsp:Variable", NS):
                env[var.get("Name", "")] = var.text or ""
        codepage = _text(root, "s:Header/w:OptionSet/w:Option[@Name='WINRS_CODEPAGE']") or "437"
        shell_id = str(uuid.uuid4()).upper()
        self.shells[shell_id] = Shell(server=server.fqdn, env=env, codepage=codepage)
        self.stats.shells[server.fqdn] = self.stats.shells.get(server.fqdn, 0) + 1
        created = (
            "<x:ResourceCreated><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:Address>"
            "<a:ReferenceParameters><w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
            f"</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">{shell_id}</w:Selector></w:SelectorSet>"
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell_id}</rsp:ShellId><rsp:ResourceUri>http://schemas.microsoft.com/wbem/wsman/1/"
            "windows/shell/cmd</rsp:ResourceUri><rsp:Owner>cmsbot</rsp:Owner><rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
        )
        return _envelope(ACTION + "Create", message_id, created)

    def _command(self, server: LabServer, shell: Shell, root: ET.Element, body: ET.Element | None,
                 message_id: str) -> str:
        line = body.find("rsp:CommandLine", NS) if body is not None else None
        if line is None:
            raise Fault("The Command request has no CommandLine.")
        args = (line.findtext("rsp:Arguments", "", NS) or "").split()
        invocation, failure = self._invocation(shell, args)
        probe, params = invocation.probe, invocation.params
        self.stats.commands.append({"server": server.fqdn, "probe": probe, "params": params})
        command_id = str(uuid.uuid4()).upper()
        ready = time.monotonic() + self.latency
        # WinRS defaults to console mode; only in pipe mode (FALSE) does the process read what is sent
        # as redirected standard input (MS-WSMV 3.1.4.11, Command). In console mode a probe that reads stdin
        # sees a console and answers at once, without waiting for any Send.
        console = (_text(root, "s:Header/w:OptionSet/w:Option[@Name='WINRS_CONSOLEMODE_STDIN']") or "TRUE").upper()
        console_stdin = console != "FALSE"
        shell.commands[command_id] = Command(probe=probe, version=invocation.version, params=params, ready_at=ready,
                                             params_error=invocation.params_error,
                                             params_error_command=invocation.params_error_command, failure=failure,
                                             stdin_open=probe in answers.READS_STDIN and not console_stdin,
                                             console_stdin=console_stdin)
        return _envelope(SHELL_ACTION + "Command", message_id,
                         f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>")

    def _invocation(self, shell: Shell, args: list[str]) -> tuple[host.Invocation, host.TerminatingError | None]:
        """Which probe the bootstrap runs, read back from the shell environment as the host would
        (lab/host.py), or the terminating error the host's powershell.exe would end with."""
        try:
            invocation = host.run(args, shell.env)
        except host.NotABootstrap as e:
            raise Fault(f"The lab runs only cms-chatops probes ({e}).") from None
        except host.UnknownScript as e:
            raise Fault(f"The lab does not know the probe {str(e) or '(empty)'!r}.") from None
        except host.TerminatingError as e:
            return host.Invocation(probe=None), e
        if invocation.probe is not None and invocation.probe not in answers.ANSWERS:
            raise Fault(f"The lab does not know the probe {invocation.header[:80]!r}.")
        return invocation, None

    def _output(self, server: LabServer, cmd: Command) -> bytes:
        """What the command prints on stdout (its stderr and exit code set on `cmd`)."""
        if cmd.failure is not None:
            cmd.stderr, cmd.exit_code = cmd.failure.clixml(), 1
            return b""
        if cmd.probe is None:
            return b""
        if cmd.params_error is not None:
            text = answers.to_ps51_json({"probe": cmd.probe, "version": cmd.version, "error": {
                "message": cmd.params_error, "category": "NotSpecified", "command": cmd.params_error_command}})
        else:
            text = answers.run(self.state, server, cmd.probe, cmd.version, cmd.params,
                               None if cmd.console_stdin else bytes(cmd.stdin))
        if server.fault == "fault-codepage":  # what a shell left at code page 850 prints
            text = text.replace("Volume license key installed", "Volumenlizenzschlüssel installiert")
            return text.encode("cp850", errors="replace") + b"\r\n"
        return text.encode("utf-8") + b"\r\n"

    def _send(self, shell: Shell, body: ET.Element | None, message_id: str) -> str:
        stream = body.find("rsp:Send/rsp:Stream", NS) if body is not None else None
        cmd = shell.commands.get(stream.get("CommandId", "") if stream is not None else "")
        if cmd is None or stream is None:
            raise Fault("The command was not found.", code=2150858843, subcode="w:InvalidSelectors")
        if not cmd.console_stdin:  # in console mode WinRS accepts the bytes, the process never reads them
            cmd.stdin += base64.b64decode(stream.text or "")
        if stream.get("End", "false").lower() == "true":
            cmd.stdin_open = False
            cmd.ready_at = time.monotonic() + self.latency
        return _envelope(SHELL_ACTION + "Send", message_id, "<rsp:SendResponse/>")

    async def _receive(self, server: LabServer, shell: Shell, body: ET.Element | None, message_id: str,
                       timeout: float) -> str:
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
        command_id = stream.get("CommandId", "") if stream is not None else ""
        cmd = shell.commands.get(command_id)
        if cmd is None:
            raise Fault("The command was not found.", code=2150858843, subcode="w:InvalidSelectors")
        waiting = server.fault == "hang" or cmd.stdin_open
        wait = timeout if waiting else cmd.ready_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, timeout))
            if server.fault == "hang" or cmd.stdin_open or time.monotonic() < cmd.ready_at:
                raise Fault("The WS-Management service cannot complete the operation within the time specified in "
                            "OperationTimeout.", code=TIMED_OUT_CODE, subcode="w:TimedOut")
        if cmd.output is None:
            cmd.output = self._output(server, cmd)
        chunk = cmd.output[cmd.sent:cmd.sent + CHUNK]
        cmd.sent += len(chunk)
        done = cmd.sent >= len(cmd.output)
        streams = f'<rsp:Stream Name="stdout" CommandId="{command_id}">{base64.b64encode(chunk).decode()}</rsp:Stream>'
        if done:
            if cmd.stderr:
                streams += (f'<rsp:Stream Name="stderr" CommandId="{command_id}">'
                            f"{base64.b64encode(cmd.stderr).decode()}</rsp:Stream>")
            streams += (f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
                        f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
                        f'<rsp:CommandState CommandId="{command_id}" State="{DONE}">'
                        f"<rsp:ExitCode>{cmd.exit_code}</rsp:ExitCode></rsp:CommandState>")
        else:
            streams += f'<rsp:CommandState CommandId="{command_id}" State="{RUNNING}"/>'
        return _envelope(SHELL_ACTION + "Receive", message_id, f"<rsp:ReceiveResponse>{streams}</rsp:ReceiveResponse>")

    def _fault_of(self, path: str) -> str | None:
        server = (self.state.servers.get(path[len("/wsman/"):].strip("/").lower()) if path.startswith("/wsman/")
                  else None)
        return server.fault if server else None

    # -- control API ------------------------------------------------------------------
    def _control(self, method: str, path: str, body: bytes) -> bytes:
        if path == "/_lab/stats" and method == "GET":
            return _json(200, self.stats.as_json())
        if path == "/_lab/stats/reset" and method == "POST":
            self.stats = Stats()
            return _json(200, {"ok": True})
        if path == "/_lab/scenarios" and method == "POST":
            try:
                wanted = json.loads(body or b"{}").get("scenarios", [])
                self.state = self._make_state(wanted)
            except (ScenarioError, ValueError, AttributeError) as e:
                return _json(400, {"error": str(e)})
            self.scenarios, self.shells, self.stats = list(wanted), {}, Stats()
            return _json(200, {"scenarios": self.scenarios})
        if path == "/_lab/scenarios" and method == "GET":
            return _json(200, {"scenarios": self.scenarios})
        return _json(404, {"error": "unknown control path"})


# -- helpers -----------------------------------------------------------------------


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    line = await reader.readline()
    if not line:
        return None
    try:
        method, path, _ = line.decode("latin-1").split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, str] = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    length = min(int(headers.get("content-length", "0") or 0), MAX_BODY)
    body = await reader.readexactly(length) if length else b""
    return method, path, headers, body


TRICKLE_FOR = 120.0  # seconds a trickling response keeps going


async def _misbehave(writer: asyncio.StreamWriter, response: bytes, fault: str) -> None:
    """A reset half-way through the body, or a body that arrives a byte at a time."""
    head, _, body = response.partition(b"\r\n\r\n")
    if fault == "fault-reset":
        writer.write(head + b"\r\n\r\n" + body[: len(body) // 2])
        await writer.drain()
        writer.transport.abort()
        return
    writer.write(head + b"\r\n\r\n")
    await writer.drain()
    stop = time.monotonic() + TRICKLE_FOR
    for byte in body:
        if time.monotonic() > stop:
            break
        writer.write(bytes([byte]))
        await writer.drain()
        await asyncio.sleep(0.5)
    writer.transport.abort()


def _http(status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
              500: "Internal Server Error"}[status]
    head = [f"HTTP/1.1 {status} {reason}", "Server: Microsoft-HTTPAPI/2.0", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _json(status: int, doc: Any) -> bytes:
    return _http(status, json.dumps(doc).encode(), "application/json")


def _text(root: ET.Element, path: str) -> str:
    el = root.find(path, NS)
    return (el.text or "").strip() if el is not None else ""


def _seconds(duration: str, default: float) -> float:
    m = re.fullmatch(r"PT(\d+(?:\.\d+)?)S", duration or "")
    return float(m.group(1)) if m else default


_ENVELOPE_OPEN = (
    '<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
    'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
    'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
    'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" xml:lang="en-US">'
)


def _envelope(action: str, relates_to: str, body: str) -> str:
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>{escape(action)}Response</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def _fault(f: Fault) -> str:
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>"
        f"<a:MessageID>uuid:{uuid.uuid4()}</a:MessageID></s:Header><s:Body><s:Fault>"
        f"<s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>{f.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(f.reason)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{f.code}" '
        f'Machine="lab"><f:Message>{escape(f.reason)}</f:Message></f:WSManFault></s:Detail></s:Fault></s:Body>'
        "</s:Envelope>"
    )
