"""A WS-Management (WinRM shell) endpoint for the simulated servers.

Speaks the shell operations of WS-Management (Create, Command, Send, Receive, Signal, Delete) over
HTTP/1.1 or HTTPS (`--tls`, lab/tls.py), with Basic or Negotiate (NTLM, with message encryption over plain HTTP:
lab/negotiate.py) auth, as strictly as a Windows host does; where this lab and a real host could
differ, the real host wins. Each behaviour names its source: MS-WSMV (Web Services Management
Protocol Extensions for Windows Vista) sections, and captures of real hosts in pypsrp's test data
(jborean93/pypsrp, tests/tests_pypsrp/responses/*.yml). In short:

- a request larger than MaxEnvelopeSizekb is refused with HTTP 413 before it is read as SOAP;
- the Create response echoes the shell (environment included) and is refused with an
  EncodingLimit fault when it would exceed the client's MaxEnvelopeSize;
- shells count against MaxShellsPerUser (a QuotaLimit fault) and expire after IdleTimeout;
- output arrives over several Receives, CommandState Running until a last Receive says Done;
  a failed powershell.exe writes CLIXML to stderr and exits 1;
- faults carry the codes, subcodes and FaultDetail Windows sends; a bad OperationTimeout is a
  fault, one above MaxTimeoutms is cut to it;
- the 401 offers the schemes the lab accepts (`--auth`), Negotiate first, then Basic; over plain HTTP an NTLM
  connection's messages must be encrypted (AllowUnencrypted=false).

Every server is served on one port under `/wsman/<fqdn>`. A small JSON control API under
`/_lab/` lets tests change scenarios and read what the lab received.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from lab import answers, host, negotiate, powershell
from lab.deployment import LabServer, LabState, ScenarioError
from lab.replay import Replay

log = logging.getLogger("lab")

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
ACTION = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
SHELL_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
SHELL_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
ANONYMOUS = "http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
FAULT_DETAIL = "http://schemas.dmtf.org/wbem/wsman/1/wsman/faultDetail/"
CHUNK = 16 * 1024  # most bytes of output one Receive carries
ENVELOPE_OVERHEAD = 2048  # room a ReceiveResponse needs besides the base64 of its output
MIN_ENVELOPE = 8192  # MS-WSMV 3.1.4.1.7: a MaxEnvelopeSize below 8192 octets is an EncodingLimit fault
MAX_DRAIN = 64 * 1024 * 1024  # an oversized request is read (and dropped) up to this size, then cut off

# WSManFault codes, from the Windows SDK's wsmerror.h
TIMED_OUT_CODE = 2150858793  # ERROR_WSMAN_OPERATION_TIMEDOUT 0x80338029
INVALID_SELECTORS_CODE = 2150858843  # ERROR_WSMAN_UNEXPECTED_SELECTORS 0x8033805B
QUOTA_MAX_SHELLS_CODE = 2150859173  # ERROR_WSMAN_QUOTA_MAX_SHELLS 0x803381A5
QUOTA_MAX_OPERATIONS_CODE = 2150859174  # ERROR_WSMAN_QUOTA_MAX_OPERATIONS 0x803381A6
ENVELOPE_TOO_LARGE_CODE = 2150858790  # ERROR_WSMAN_ENVELOPE_TOO_LARGE 0x80338026
MIN_ENVELOPE_CODE = 2150858878  # ERROR_WSMAN_MIN_ENVELOPE_SIZE 0x8033807E
INVALID_TIMEOUT_CODE = 2150858881  # ERROR_WSMAN_INVALID_TIMEOUT_HEADER 0x80338081
UNSUPPORTED_TIMEOUT_CODE = 2150858764  # ERROR_WSMAN_UNSUPPORTED_TIMEOUT 0x8033800C
ACTION_NOT_SUPPORTED_CODE = 2150858771  # ERROR_WSMAN_ACTION_NOT_SUPPORTED 0x80338013
SCHEMA_CODE = 2150858817  # ERROR_WSMAN_SCHEMA_VALIDATION_ERROR 0x80338041
PROVIDER_FAILURE_CODE = 2150858755  # ERROR_WSMAN_PROVIDER_FAILURE 0x80338003

INVALID_SELECTORS = ("The WS-Management service cannot process the request because the request contained invalid "
                     "selectors for the resource. ")
NO_SUCH_COMMAND = ("The Windows Remote Shell received a request to perform an operation on a command identifier "
                   "that does not exist. Either the command has completed execution or the client specified an "
                   "invalid command identifier. ")
TIMED_OUT = "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.  "


@dataclass(frozen=True)
class HostConfig:
    """The WinRM service configuration (winrm/config) every simulated host runs with."""

    # MaxEnvelopeSizekb: 500 on current Windows, 150 on Windows Server 2008 R2 and older (MS-WSMV 2.2.4.10 and
    # its note <8>); it caps both the request a host accepts (3.1.4.1.20) and the response it sends (3.1.4.1.7)
    max_envelope_kb: int = 500
    max_timeout_ms: int = 60_000  # MaxTimeoutms, default 60000 (MS-WSMV 2.2.4.10)
    # winrs MaxShellsPerUser: default 30 (MS-WSMV 2.2.4.42 WinrsType; WinRM 2.0 had 5: the PowerShell team's
    # "Configuring WSMAN Limits", 2010, quotes "This user is allowed a maximum number of 5 concurrent shells")
    max_shells_per_user: int = 30
    # winrs IdleTimeout: 7200000 ms on current hosts (the schema's default is 180000): a real Create response says
    # <rsp:IdleTimeOut>PT7200.000S</rsp:IdleTimeOut> (pypsrp test_winrs_environment.yml), and MS-WSMV
    # 3.1.4.1.31.5 deletes a shell idle that long
    idle_timeout_s: float = 7200.0
    module_load_ms: int = 0  # what Import-Module Lync / SkypeForBusiness costs a probe that loads it


@dataclass
class Command:
    probe: str | None  # None: nothing ran (an empty script, or the bootstrap failed)
    version: int
    params: dict[str, Any]
    ready_at: float
    params_error: str | None = None  # the probe answers with its error document
    params_error_command: str = ""
    params_error_category: str = "NotSpecified"
    failure: host.TerminatingError | None = None  # stderr as CLIXML, exit code 1
    writes: list[tuple[str, bytes]] | None = None  # (stream, bytes) in the order the process writes them
    sent: int = 0  # bytes of `writes` already received
    exit_code: int = 0
    done: bool = False  # the Receive that says CommandState Done was answered
    stdin: bytearray = field(default_factory=bytearray)
    stdin_open: bool = False  # the probe reads stdin: it answers once stdin is closed
    work: float = 0.0  # seconds of its own work once running (module load), after its input for one that reads stdin
    console_stdin: bool = True  # WINRS_CONSOLEMODE_STDIN: sent bytes never reach the process
    more: list[Command] = field(default_factory=list)  # the probes the same powershell.exe runs after this one


@dataclass
class Shell:
    server: str
    env: dict[str, str]
    codepage: str
    idle_timeout: float
    last_seen: float
    commands: dict[str, Command] = field(default_factory=dict)
    busy: int = 0  # requests in progress (a long-polled Receive keeps the shell from going idle)


class Fault(Exception):
    """Answered as a SOAP fault with HTTP 500, in the shape Windows sends: s:Sender for the client's mistakes,
    s:Receiver for the host's, a w:FaultDetail where Windows adds one, and the WSManFault code."""

    def __init__(self, reason: str, code: int = PROVIDER_FAILURE_CODE, subcode: str = "w:InternalError", *,
                 sender: bool = False, detail: str | None = None, message: str | None = None):
        super().__init__(reason)
        self.reason, self.code, self.subcode = reason, code, subcode
        self.sender, self.detail, self.message = sender, detail, message or reason


def _invalid_selectors(message: str = INVALID_SELECTORS) -> Fault:
    # a Receive for an unknown command, or any request to an unknown (deleted, expired) shell, as a Windows host
    # answers it: pypsrp test_winrs_bad_cmd_id.yml and test_psrp_is_alive_invalid_selectors.yml
    return Fault(INVALID_SELECTORS, INVALID_SELECTORS_CODE, "w:InvalidSelectors", sender=True,
                 detail=FAULT_DETAIL + "UnexpectedSelectors", message=message)


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    shells: dict[str, int] = field(default_factory=dict)
    commands: list[dict[str, Any]] = field(default_factory=list)  # one per probe run
    processes: dict[str, int] = field(default_factory=dict)  # powershell.exe started (WS-Man Commands) per server
    signals: int = 0  # Signal requests for a command
    unsignalled: int = 0  # finished commands whose shell was deleted without the Signal MS-WSMV 3.1.4.14 asks for
    expired: int = 0  # shells deleted after IdleTimeout
    refused: dict[str, int] = field(default_factory=dict)  # "413", "quota", "envelope" -> count

    def as_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "shells": self.shells, "commands": self.commands,
                "processes": self.processes, "signals": self.signals,
                "unsignalled": self.unsignalled, "expired": self.expired, "refused": self.refused}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    too_large: bool = False  # Content-Length above MaxEnvelopeSizekb: the body was dropped unread


class Lab:
    """The lab's protocol handling over a mutable LabState."""

    def __init__(self, make_state: Callable[[list[str]], LabState], scenarios: list[str],
                 username: str, password: str, latency_ms: int = 0, config: HostConfig | None = None,
                 replay: Replay | None = None, auth: frozenset[str] = frozenset({"basic", "ntlm"})):
        self.replay = replay  # `cmsbot lab --replay`: probes answer what a captured host answered (lab/replay.py)
        self._make_state = make_state
        self.scenarios = list(scenarios)
        self.state = make_state(self.scenarios)
        self.username = username
        self._auth = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        # the schemes accepted: "basic", "ntlm" (NTLM's credentials are read from NTLM_USER_FILE:
        # negotiate.user_file)
        self.auth = auth
        self.tls_listeners: set[str] = set()  # servers with an HTTPS listener of their own (lab/tls.py)
        self.latency = latency_ms / 1000.0
        self.config = config or HostConfig()
        self._configure(self.state)
        self.shells: dict[str, Shell] = {}
        self.stats = Stats()

    @property
    def max_request(self) -> int:
        return self.config.max_envelope_kb * 1024

    def _configure(self, state: LabState) -> LabState:
        """The WinRM configuration the state's servers report (the doctor probe reads it)."""
        state.winrm_config.update(MaxEnvelopeSizekb=self.config.max_envelope_kb,
                                  MaxShellsPerUser=self.config.max_shells_per_user)
        return state

    def _request_limit(self, path: str) -> int:
        """MaxEnvelopeSizekb of the server a request is for, in bytes (the envelope-150 scenario lowers one)."""
        server = self._server_of(path)
        if server is not None and server.max_envelope_kb:
            return server.max_envelope_kb * 1024
        return self.max_request

    # -- HTTP ---------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        tls = writer.get_extra_info("ssl_object")
        # the context that made the handshake (a server's own listener may have switched it: lab/tls.py) knows the
        # certificate it presented, which an NTLM client binds its authentication to
        conn = negotiate.Connection(tls=tls is not None,
                                    end_point=getattr(tls.context, "end_point", b"") if tls else b"")
        try:
            while True:
                request = await _read_request(reader, self._request_limit)
                if request is None:
                    break
                request.headers["x-lab-peer"] = str(peer[0]) if peer else "127.0.0.1"
                if request.too_large:
                    response: bytes | None = self._too_large(request.path)
                else:
                    response = await self._route(request.method, request.path, request.headers, request.body,
                                                 conn)
                if response is None:  # the simulated host does not answer
                    writer.transport.abort()
                    return
                fault = self._fault_of(request.path)
                misbehaves = fault in ("fault-reset", "fault-trickle") and b"ReceiveResponse" in response
                if conn.sealed and conn.context is not None:
                    conn.sealed = False
                    response = negotiate.sealed_response(response, conn.context)
                if misbehaves and fault:
                    await _misbehave(writer, response, fault)
                    return
                writer.write(response)
                await writer.drain()
                if b"\r\nConnection: close\r\n" in response.partition(b"\r\n\r\n")[0] + b"\r\n":
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception:  # noqa: BLE001 - one bad request must not stop the lab
            log.exception("lab: request failed")
        finally:
            writer.close()

    def _too_large(self, path: str) -> bytes | None:
        """MS-WSMV 3.1.4.1.20: "MUST return an HTTP status of 413 (Request Entity Too Large) without processing the
        SOAP message if the request packet from the client is larger than the MaxEnvelopeSizekb configuration
        setting" (seen from clients as pywinrm's "Bad HTTP response returned from server. Code 413":
        ansible-collections/ansible.windows#391 and #620)."""
        server = self._server_of(path)
        if server is not None and (server.fault == "unreachable" or not server.winrm):
            return None
        self.stats.refused["413"] = self.stats.refused.get("413", 0) + 1
        return _http(413, b"", "text/plain", close=True)

    async def _route(self, method: str, path: str, headers: dict[str, str], body: bytes,
                     conn: negotiate.Connection | None = None) -> bytes | None:
        conn = conn or negotiate.Connection(tls=False)
        if path.startswith("/_lab/"):
            return self._control(method, path, body)
        if not path.startswith("/wsman/"):
            return _http(404, b"not found", "text/plain")
        server = self._server_of(path)
        if server is None:
            return _http(404, b"no such server in the lab", "text/plain")
        fqdn = server.fqdn
        self.stats.requests[fqdn] = self.stats.requests.get(fqdn, 0) + 1
        if server.fault == "unreachable" or not server.winrm:
            return None
        if method != "POST":  # a GET of /wsman on a Windows host: 405 with Allow: POST
            return _http(405, b"", "text/plain", extra=[("Allow", "POST")], close=True)
        scheme = headers.get("authorization", "").partition(" ")[0].lower()
        if scheme == "basic" and "basic" in self.auth:
            if headers.get("authorization") != self._auth or server.fault == "fault-401":
                return self._unauthorized()
        elif (scheme == "negotiate" and "ntlm" in self.auth) or (not scheme and conn.authenticated):
            refused, body = self._negotiated(server, headers, body, conn)
            if refused is not None:
                return refused
        else:
            return self._unauthorized()
        if server.fault == "fault-500":
            # a host refusing work under load: MaxConcurrentOperationsPerUser reached (w:QuotaLimit, code
            # ERROR_WSMAN_QUOTA_MAX_OPERATIONS)
            overloaded = Fault("The WS-Management service cannot process the request. This user has exceeded the "
                               "maximum number of concurrent operations. Close existing operations for this user, "
                               "or raise the quota for this user. ", QUOTA_MAX_OPERATIONS_CODE, "w:QuotaLimit",
                               sender=True)
            return _http(500, _fault(overloaded, "", fqdn).encode(), "application/soap+xml;charset=UTF-8")
        if server.fault == "fault-xml":
            return _http(200, b"<s:Envelope xmlns:s='http://www.w3.org/2003/05/soap-envelope'><s:Body><rsp:Receiv",
                         "application/soap+xml;charset=UTF-8")
        address = f"{'https' if conn.tls else 'http'}://{headers.get('host', '127.0.0.1')}{path}"
        try:
            xml = await self._soap(server, body, address, headers.get("x-lab-peer", "127.0.0.1"))
            return _http(200, xml.encode("utf-8"), "application/soap+xml;charset=UTF-8")
        except _Faulted as f:
            return _http(500, _fault(f.fault, f.relates_to, fqdn).encode("utf-8"),
                         "application/soap+xml;charset=UTF-8")

    def _unauthorized(self) -> bytes:
        """A Windows host offers the schemes it accepts, Negotiate first, then Basic, and closes the connection:
        "WWW-Authenticate: Negotiate", "WWW-Authenticate: Basic realm="WSMAN"", "Connection: close" in a curl
        trace of a 401 from WinRM (Microsoft-HTTPAPI/2.0)."""
        offers = [("WWW-Authenticate", "Negotiate")] if "ntlm" in self.auth else []
        offers += [("WWW-Authenticate", 'Basic realm="WSMAN"')] if "basic" in self.auth else []
        return _http(401, b"", "text/plain", close=True, extra=offers)

    def _negotiated(self, server: LabServer, headers: dict[str, str], body: bytes,
                    conn: negotiate.Connection) -> tuple[bytes | None, bytes]:
        """Negotiate (NTLM) on this connection: (the response to send instead, or None) and the request's SOAP
        message (decrypted when it came encrypted). The handshake, the encryption and their sources:
        lab/negotiate.py."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "negotiate":
            try:
                reply = conn.accept(base64.b64decode(token.strip(), validate=True))
            except ValueError:  # negotiate.Refused, or a token that is no base64
                return self._unauthorized(), b""
            if not conn.authenticated:  # the challenge; the connection stays open for the authenticate message
                return _http(401, b"", "text/plain",
                             extra=[("WWW-Authenticate", f"Negotiate {base64.b64encode(reply or b'').decode()}")]), b""
        if server.fault == "fault-401":  # authenticated, and refused all the same (as an account not allowed)
            conn.context = None
            return self._unauthorized(), b""
        assert conn.context is not None
        if negotiate.is_sealed(headers.get("content-type", "")):
            try:
                body = negotiate.unseal(conn.context, body)
            except negotiate.Undecryptable:
                return _http(400, b"", "text/plain", close=True), b""
            conn.sealed = True
        elif body and not conn.tls:
            # Over plain HTTP a host with AllowUnencrypted=false, the service's default ("Installation and
            # configuration for Windows Remote Management", winrm/config/service), takes only encrypted messages
            # (MS-WSMV 2.2.9.1: "clients MUST use this message when sending a request ... if integrity protection
            # and encryption is required"). It refuses one sent in clear with HTTP 401: pywinrm's "the specified
            # credentials were rejected by the server", and in a capture of NTLM without encryption a 401 for
            # every message (jborean93 in hashicorp/packer#6205). The lab holds Basic to no such rule (its
            # tests and the demo use Basic over loopback HTTP, as a host with AllowUnencrypted=true would).
            return self._unauthorized(), b""
        elif not body:
            # the empty POST a client authenticates with before it encrypts anything (pywinrm's
            # setup_encryption; a status below 400 is all it needs)
            return _http(200, b"", "application/soap+xml;charset=UTF-8"), b""
        return None, body

    # -- WS-Management ----------------------------------------------------------------
    async def _soap(self, server: LabServer, body: bytes, address: str, peer: str) -> str:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise _Faulted(Fault("The WS-Management service cannot process the request because the XML is invalid. ",
                                 SCHEMA_CODE, "w:SchemaValidationError", sender=True), "") from None
        message_id = _text(root, "s:Header/a:MessageID")
        try:
            return await self._operation(server, root, message_id, address, peer)
        except Fault as f:
            raise _Faulted(f, message_id) from None

    async def _operation(self, server: LabServer, root: ET.Element, message_id: str, address: str,
                         peer: str) -> str:
        action = _text(root, "s:Header/a:Action")
        shell_id = _text(root, "s:Header/w:SelectorSet/w:Selector[@Name='ShellId']")
        timeout = self._operation_timeout(_text(root, "s:Header/w:OperationTimeout"))
        envelope = self._max_envelope(_text(root, "s:Header/w:MaxEnvelopeSize"), server)
        body_el = root.find("s:Body", NS)
        now = time.monotonic()
        self._expire(now)

        if action == ACTION + "Create":
            return self._create(server, root, body_el, message_id, address, peer, envelope)
        shell = self.shells.get(shell_id)
        if shell is None or shell.server != server.fqdn:
            raise _invalid_selectors()
        shell.busy += 1
        shell.last_seen = now
        try:
            if action == SHELL_ACTION + "Command":
                return self._command(server, shell, root, body_el, message_id)
            if action == SHELL_ACTION + "Receive":
                return await self._receive(server, shell, body_el, message_id, timeout, envelope)
            if action == SHELL_ACTION + "Send":
                return self._send(shell, body_el, message_id)
            if action == SHELL_ACTION + "Signal":
                return self._signal(shell, body_el, message_id)
            if action == ACTION + "Delete":
                self._drop(shell_id)
                return _envelope(action, message_id, "")
        finally:
            shell.busy -= 1
            shell.last_seen = time.monotonic()
        raise Fault("The WS-Management service does not support the action specified in the request. ",
                    ACTION_NOT_SUPPORTED_CODE, "a:ActionNotSupported", sender=True)

    def _operation_timeout(self, text: str) -> float:
        """MS-WSMV 3.1.4.1.6: no OperationTimeout, or one above MaxTimeoutms, means MaxTimeoutms. A value that is not
        an xs:duration is ERROR_WSMAN_INVALID_TIMEOUT_HEADER; one below the 500 ms minimum of MaxTimeoutms is
        ERROR_WSMAN_UNSUPPORTED_TIMEOUT (wsmerror.h)."""
        most = self.config.max_timeout_ms / 1000.0
        if not text:
            return most
        seconds = duration_seconds(text)
        if seconds is None:
            raise Fault("The WS-Management service cannot process the request because the timeout header in the "
                        "request is invalid. ", INVALID_TIMEOUT_CODE, "a:InvalidMessageInformationHeader",
                        sender=True, detail=FAULT_DETAIL + "InvalidValue")
        if seconds < 0.5:
            raise Fault("The WS-Management service does not support the specified timeout. The value specified is "
                        "smaller than the minimum allowed value for this setting. Change the timeout value and try "
                        "the request again. ", UNSUPPORTED_TIMEOUT_CODE, "w:UnsupportedFeature", sender=True,
                        detail=FAULT_DETAIL + "OperationTimeout")
        return min(seconds, most)

    def _max_envelope(self, text: str, server: LabServer | None = None) -> int:
        """MS-WSMV 3.1.4.1.7: the response limit is the client's MaxEnvelopeSize, but never above MaxEnvelopeSizekb;
        a MaxEnvelopeSize below 8192 octets is an EncodingLimit fault."""
        most = server.max_envelope_kb * 1024 if server is not None and server.max_envelope_kb else self.max_request
        try:
            asked = int(text) if text else most
        except ValueError:
            asked = most
        if asked < MIN_ENVELOPE:
            raise Fault("The WS-Management service cannot process the request because the envelope size in the "
                        "request is too small. ", MIN_ENVELOPE_CODE, "w:EncodingLimit", sender=True,
                        detail=FAULT_DETAIL + "MinimumEnvelopeLimit")
        return min(asked, most)

    def _expire(self, now: float) -> None:
        """MS-WSMV 3.1.4.1.31.5: a shell that received no request for IdleTimeout is deleted."""
        for shell_id, shell in list(self.shells.items()):
            if shell.busy == 0 and now - shell.last_seen > shell.idle_timeout:
                self._drop(shell_id)
                self.stats.expired += 1

    def _drop(self, shell_id: str) -> None:
        shell = self.shells.pop(shell_id, None)
        if shell is not None:
            self.stats.unsignalled += sum(1 for c in shell.commands.values() if c.done)

    def _create(self, server: LabServer, root: ET.Element, body: ET.Element | None, message_id: str,
                address: str, peer: str, envelope: int) -> str:
        live = sum(1 for s in self.shells.values() if s.server == server.fqdn)
        if live >= self.config.max_shells_per_user:
            # MS-WSMV 3.1.4.5.2.1 and its note <111> (the Windows 7 / 2008 R2 and later text); the fault's shape and
            # code as a Windows host sent it, quoted in unioslo/cerebrum Cerebrum/modules/ad2/winrm.py
            self.stats.refused["quota"] = self.stats.refused.get("quota", 0) + 1
            raise Fault("The WS-Management service cannot process the request. The maximum number of concurrent shells "
                        "for this user has been exceeded. Close existing shells or raise the quota for this user. ",
                        QUOTA_MAX_SHELLS_CODE, "w:QuotaLimit", sender=True,
                        message=f"The WS-Management service cannot process the request. This user is allowed a maximum "
                                f"number of {self.config.max_shells_per_user} concurrent shells, which has been "
                                "exceeded. Close existing shells or raise the quota for this user. ")
        variables: list[tuple[str, str]] = []
        idle = self.config.idle_timeout_s
        if body is not None:
            for var in body.findall("rsp:Shell/rsp:Environment/rsp:Variable", NS):
                variables.append((var.get("Name", ""), var.text or ""))
            asked = duration_seconds(body.findtext("rsp:Shell/rsp:IdleTimeOut", "", NS) or "")
            if asked is not None and asked > 0:
                idle = min(idle, asked)
        codepage = _text(root, "s:Header/w:OptionSet/w:Option[@Name='WINRS_CODEPAGE']") or "437"
        shell_id = str(uuid.uuid4()).upper()
        # The response describes the shell as a Windows host does, its environment echoed (MS-WSMV 3.1.4.5.2; pypsrp
        # test_winrs_environment.yml): a large environment makes a large response.
        environment = "".join(f"<rsp:Variable Name={quoteattr(k)}>{escape(v)}</rsp:Variable>" for k, v in variables)
        created = (
            f"<x:ResourceCreated><a:Address>{escape(address)}</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{SHELL_URI}</w:ResourceURI><w:SelectorSet><w:Selector Name=\"ShellId\">{shell_id}"
            "</w:Selector></w:SelectorSet></a:ReferenceParameters></x:ResourceCreated>"
            f'<rsp:Shell xmlns:rsp="{NS["rsp"]}"><rsp:ShellId>{shell_id}</rsp:ShellId>'
            f"<rsp:ResourceUri>{SHELL_URI}</rsp:ResourceUri><rsp:Owner>{escape(self.username)}</rsp:Owner>"
            f"<rsp:ClientIP>{escape(peer)}</rsp:ClientIP>"
            + (f"<rsp:Environment>{environment}</rsp:Environment>" if variables else "")
            + f"<rsp:IdleTimeOut>PT{idle:.3f}S</rsp:IdleTimeOut><rsp:InputStreams>stdin</rsp:InputStreams>"
            "<rsp:OutputStreams>stdout stderr</rsp:OutputStreams><rsp:ShellRunTime>P0DT0H0M0S</rsp:ShellRunTime>"
            "<rsp:ShellInactivity>P0DT0H0M0S</rsp:ShellInactivity></rsp:Shell>"
        )
        response = _envelope(ACTION + "Create", message_id, created)
        size = len(response.encode("utf-8"))
        if size > envelope:
            # DSP0226 6.2 (MS-WSMAN 3.1.4.1.9): a response larger than MaxEnvelopeSize is an EncodingLimit fault; the
            # text as Windows words it ("The computed response packet size (976820) exceeds the maximum envelope
            # size that is allowed (512000)", Esri/arcgis-powershell-dsc#688, Microsoft365DSC#3082)
            self.stats.refused["envelope"] = self.stats.refused.get("envelope", 0) + 1
            raise Fault(f"The WS-Management service cannot process the request. The computed response packet size "
                        f"({size}) exceeds the maximum envelope size that is allowed ({envelope}). ",
                        ENVELOPE_TOO_LARGE_CODE, "w:EncodingLimit", sender=True,
                        detail=FAULT_DETAIL + "MaxEnvelopeSize")
        now = time.monotonic()
        self.shells[shell_id] = Shell(server=server.fqdn, env=dict(variables), codepage=codepage, idle_timeout=idle,
                                      last_seen=now)
        self.stats.shells[server.fqdn] = self.stats.shells.get(server.fqdn, 0) + 1
        return response

    def _command(self, server: LabServer, shell: Shell, root: ET.Element, body: ET.Element | None,
                 message_id: str) -> str:
        line = body.find("rsp:CommandLine", NS) if body is not None else None
        if line is None:
            raise Fault("The Windows Remote Shell cannot process the request. The SOAP packet contains an element "
                        "CommandLine that is missing. ", SCHEMA_CODE, "w:SchemaValidationError", sender=True)
        args = (line.findtext("rsp:Arguments", "", NS) or "").split()
        # WinRS defaults to console mode; only in pipe mode (FALSE) does the process read what is sent
        # as redirected standard input (MS-WSMV 3.1.4.11, Command). In console mode a probe that reads stdin
        # sees a console and answers at once, without waiting for any Send (and before it loads the module).
        console = (_text(root, "s:Header/w:OptionSet/w:Option[@Name='WINRS_CONSOLEMODE_STDIN']") or "TRUE").upper()
        console_stdin = console != "FALSE"
        # one powershell.exe may run several probes in turn: each is a part of the command, the module loaded once
        parts = [self._part(server, invocation, failure, console_stdin)
                 for invocation, failure in self._invocations(shell, args)]
        cmd, more = parts[0], parts[1:]
        loads = any(p.probe is not None and p.work > 0 for p in parts)
        cmd.work = self.config.module_load_ms / 1000.0 if loads else 0.0
        cmd.ready_at = time.monotonic() + self.latency + cmd.work
        if self.replay is not None and any(self.replay.hangs(server.fqdn, p.probe) for p in parts):
            cmd.ready_at = math.inf  # it timed out when captured: it never completes here either
        cmd.more = more
        self.stats.processes[server.fqdn] = self.stats.processes.get(server.fqdn, 0) + 1
        command_id = str(uuid.uuid4()).upper()
        shell.commands[command_id] = cmd
        return _envelope(SHELL_ACTION + "Command", message_id,
                         f"<rsp:CommandResponse><rsp:CommandId>{command_id}</rsp:CommandId></rsp:CommandResponse>")

    def _part(self, server: LabServer, invocation: host.Invocation, failure: host.TerminatingError | None,
              console_stdin: bool) -> Command:
        if not server.module and invocation.imports_module and invocation.params_error is None \
                and invocation.probe not in answers.MODULE_CAUGHT:
            # Import-CsModule throws (module-missing), in Invoke-Probe or in the body: the probe answers that error
            invocation.params_error, invocation.params_error_category = answers.MODULE_MISSING, "OperationStopped"
        probe, params = invocation.probe, invocation.params
        self.stats.commands.append({"server": server.fqdn, "probe": probe, "params": params})
        loads = probe is not None and invocation.imports_module and not (probe in answers.READS_STDIN and console_stdin)
        return Command(probe=probe, version=invocation.version, params=params, ready_at=0.0,
                       params_error=invocation.params_error, params_error_command=invocation.params_error_command,
                       params_error_category=invocation.params_error_category, failure=failure,
                       stdin_open=probe in answers.READS_STDIN and not console_stdin,
                       work=self.config.module_load_ms / 1000.0 if loads else 0.0, console_stdin=console_stdin)

    def _invocations(self, shell: Shell, args: list[str]) -> list[tuple[host.Invocation, host.TerminatingError | None]]:
        """Which probes the bootstrap runs, read back from the shell environment as the host would
        (lab/host.py, with the host's PowerShell: lab/powershell.py), and the terminating error the host's
        powershell.exe would end with after them."""
        try:
            server = self.state.servers.get(shell.server)
            ps_host = powershell.host_for(self.state.version)
            if server is not None and server.powershell == "2.0" and not ps_host.legacy:  # powershell-2
                ps_host = powershell.Host("2.0", powershell.NEWER_CMDLETS)
            invocations, failure = host.run_each(args, shell.env, ps_host)
        except host.NotABootstrap as e:
            raise Fault(f"The lab runs only cms-chatops probes ({e}).") from None
        except host.UnknownScript as e:
            raise Fault(f"The lab does not know the probe {str(e) or '(empty)'!r}.") from None
        for invocation in invocations:
            # a replay answers every probe: what was captured, or an error document saying it was not
            if invocation.probe is not None and self.replay is None and invocation.probe not in answers.ANSWERS:
                raise Fault(f"The lab does not know the probe {invocation.header[:80]!r}.")
        parts: list[tuple[host.Invocation, host.TerminatingError | None]] = [(i, None) for i in invocations]
        return parts + [(host.Invocation(probe=None), failure)] if failure is not None or not parts else parts

    def _writes(self, server: LabServer, cmd: Command) -> list[tuple[str, bytes]]:
        """What the command's parts write, in order; its exit code (the last part's) set on `cmd`."""
        writes: list[tuple[str, bytes]] = []
        for part in [cmd, *cmd.more]:
            writes += self._part_writes(server, part)
            cmd.exit_code = part.exit_code
        return writes

    def _part_writes(self, server: LabServer, cmd: Command) -> list[tuple[str, bytes]]:
        """What one probe writes, in order, as (stream, bytes); its exit code set on `cmd`. A failed
        powershell.exe (-EncodedCommand, output redirected) writes its error record to stderr as CLIXML and exits
        1 (the lab's host.TerminatingError; pywinrm's and pypsrp's CLIXML handling of the same stream)."""
        if cmd.failure is not None:
            cmd.exit_code = 1
            return [("stderr", cmd.failure.clixml())]
        if cmd.probe is None:
            return []
        if self.replay is not None:  # what the captured host answered, byte for byte
            captured = self.replay.answer(server.fqdn, cmd.probe, cmd.params)
            if captured.fault is not None:
                raise Fault(captured.fault)
            cmd.exit_code = captured.exit_code
            return [("stdout", captured.stdout), ("stderr", captured.stderr)]
        if cmd.params_error is not None:
            text = answers.error_answer(self.state, cmd.probe, cmd.version, cmd.params_error,
                                        cmd.params_error_category, cmd.params_error_command, server=server)
        else:
            text = answers.run(self.state, server, cmd.probe, cmd.version, cmd.params,
                               None if cmd.console_stdin else bytes(cmd.stdin))
        if server.fault == "fault-codepage":  # what a shell left at code page 850 prints
            text = text.replace("Volume license key installed", "Volumenlizenzschlüssel installiert")
            return [("stdout", text.encode("cp850", errors="replace")), ("stdout", b"\r\n")]
        # the line and its end of line are two writes, as a real host's output arrives (pypsrp
        # test_winrs_operation_timeout.yml: "hi", then "\n", in separate streams)
        return [("stdout", text.encode("utf-8")), ("stdout", b"\r\n")]

    def _send(self, shell: Shell, body: ET.Element | None, message_id: str) -> str:
        stream = body.find("rsp:Send/rsp:Stream", NS) if body is not None else None
        cmd = shell.commands.get(stream.get("CommandId", "") if stream is not None else "")
        if cmd is None or stream is None:
            raise _invalid_selectors(NO_SUCH_COMMAND)
        if not cmd.console_stdin:  # in console mode WinRS accepts the bytes, the process never reads them
            cmd.stdin += base64.b64decode(stream.text or "")
        if stream.get("End", "false").lower() == "true":
            cmd.stdin_open = False
            # the probe that reads stdin (import-configuration) reads it first, then loads the module
            cmd.ready_at = time.monotonic() + self.latency + cmd.work
        return _envelope(SHELL_ACTION + "Send", message_id, "<rsp:SendResponse/>")

    def _signal(self, shell: Shell, body: ET.Element | None, message_id: str) -> str:
        """MS-WSMV 3.1.4.12 / 3.1.4.14: the Signal (terminate) after the last Receive lets the host discard the
        command; a Signal for a command the shell does not have is an InvalidSelectors fault."""
        signal_el = body.find("rsp:Signal", NS) if body is not None else None
        if signal_el is None:
            raise Fault("The Windows Remote Shell cannot process the request. The SOAP packet contains an element "
                        "Signal that is missing. ", SCHEMA_CODE, "w:SchemaValidationError", sender=True)
        command_id = signal_el.get("CommandId") or ""
        if shell.commands.pop(command_id, None) is None:
            raise _invalid_selectors(NO_SUCH_COMMAND)
        self.stats.signals += 1
        return _envelope(SHELL_ACTION + "Signal", message_id, "<rsp:SignalResponse/>")

    async def _receive(self, server: LabServer, shell: Shell, body: ET.Element | None, message_id: str,
                       timeout: float, envelope: int) -> str:
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
        command_id = stream.get("CommandId", "") if stream is not None else ""
        cmd = shell.commands.get(command_id)
        if cmd is None:
            raise _invalid_selectors(NO_SUCH_COMMAND)
        waiting = server.fault == "hang" or cmd.stdin_open
        wait = timeout if waiting else cmd.ready_at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, timeout))
            if server.fault == "hang" or cmd.stdin_open or time.monotonic() < cmd.ready_at:
                # MS-WSMV 3.1.4.14: no output within OperationTimeout is a WSManFault with code 2150858793; its
                # shape as in pypsrp test_winrs_operation_timeout.yml
                raise Fault(TIMED_OUT, TIMED_OUT_CODE, "w:TimedOut")
        if cmd.writes is None:
            cmd.writes = self._writes(server, cmd)
        total = sum(len(data) for _, data in cmd.writes)
        if cmd.sent < total:
            # Output as it comes, CommandState Running: the Done state comes in a Receive of its own once everything
            # was delivered (pypsrp test_winrs_operation_timeout.yml: output with Running, then a last response
            # with End and Done). One response never exceeds the client's MaxEnvelopeSize (MS-WSMV 3.1.4.1.7).
            budget = max(1024, min(CHUNK, (envelope - ENVELOPE_OVERHEAD) * 3 // 4))
            streams = "".join(f'<rsp:Stream Name="{name}" CommandId="{command_id}">'
                              f"{base64.b64encode(data).decode()}</rsp:Stream>"
                              for name, data in _take(cmd, budget))
            streams += f'<rsp:CommandState CommandId="{command_id}" State="{RUNNING}"></rsp:CommandState>'
        else:
            # MS-WSMV note <122>: on Windows stdout and stderr always end with rsp:Stream/@End
            cmd.done = True
            streams = (f'<rsp:Stream Name="stdout" CommandId="{command_id}" End="true"></rsp:Stream>'
                       f'<rsp:Stream Name="stderr" CommandId="{command_id}" End="true"></rsp:Stream>'
                       f'<rsp:CommandState CommandId="{command_id}" State="{DONE}">'
                       f"<rsp:ExitCode>{cmd.exit_code}</rsp:ExitCode></rsp:CommandState>")
        return _envelope(SHELL_ACTION + "Receive", message_id, f"<rsp:ReceiveResponse>{streams}</rsp:ReceiveResponse>")

    def _server_of(self, path: str) -> LabServer | None:
        if not path.startswith("/wsman/"):
            return None
        return self.state.servers.get(path[len("/wsman/"):].strip("/").lower())

    def _fault_of(self, path: str) -> str | None:
        server = self._server_of(path)
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
                state = self._make_state(wanted)
                # a certificate fault needs the server's own listener, opened at start (lab/server.py)
                for s in state.servers.values():
                    if s.tls and s.fqdn not in self.tls_listeners:
                        raise ScenarioError(f"tls-{s.tls}:{s.fqdn} needs a lab started with --tls and a tls-* "
                                            f"scenario for {s.fqdn} (its own listener is opened at start)")
                self.state = self._configure(state)
            except (ScenarioError, ValueError, AttributeError) as e:
                return _json(400, {"error": str(e)})
            self.scenarios, self.shells, self.stats = list(wanted), {}, Stats()
            return _json(200, {"scenarios": self.scenarios})
        if path == "/_lab/scenarios" and method == "GET":
            return _json(200, {"scenarios": self.scenarios})
        return _json(404, {"error": "unknown control path"})


class _Faulted(Exception):
    def __init__(self, fault: Fault, relates_to: str):
        super().__init__(fault.reason)
        self.fault, self.relates_to = fault, relates_to


# -- helpers -----------------------------------------------------------------------


def _take(cmd: Command, budget: int) -> list[tuple[str, bytes]]:
    """The next writes of `cmd`, at most `budget` bytes (a write cut where the budget ends)."""
    assert cmd.writes is not None
    taken: list[tuple[str, bytes]] = []
    offset = 0
    for name, data in cmd.writes:
        start, end = offset, offset + len(data)
        offset = end
        if end <= cmd.sent or not data:
            continue
        piece = data[max(0, cmd.sent - start):][:budget]
        taken.append((name, piece))
        cmd.sent += len(piece)
        budget -= len(piece)
        if budget <= 0:
            break
    return taken


_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def duration_seconds(text: str) -> float | None:
    """An xs:duration without years or months (PT20S, PT60.000S, P0DT0H0M5S) in seconds; None if it is not one."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or not any(m.groups()) or text.strip().endswith("T"):
        return None
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


async def _read_request(reader: asyncio.StreamReader, max_body: Callable[[str], int]) -> Request | None:
    """One HTTP request; a body longer than `max_body(path)` is dropped unread (too_large)."""
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
    length = int(headers.get("content-length", "0") or 0)
    if length > max_body(path):
        if length > MAX_DRAIN:
            return None
        while length > 0:  # read and drop the body, so the client gets the 413 and not a reset
            length -= len(await reader.readexactly(min(length, 1 << 16)))
        return Request(method, path, headers, b"", too_large=True)
    body = await reader.readexactly(length) if length else b""
    return Request(method, path, headers, body)


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


REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Request Entity Too Large", 500: "Internal Server Error"}


def _http(status: int, body: bytes, content_type: str, extra: list[tuple[str, str]] | None = None,
          close: bool = False) -> bytes:
    head = [f"HTTP/1.1 {status} {REASONS[status]}", "Server: Microsoft-HTTPAPI/2.0", f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (extra or [])]
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _json(status: int, doc: Any) -> bytes:
    return _http(status, json.dumps(doc).encode(), "application/json")


def _text(root: ET.Element, path: str) -> str:
    el = root.find(path, NS)
    return (el.text or "").strip() if el is not None else ""


_ENVELOPE_OPEN = (
    '<s:Envelope xml:lang="en-US" xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
    'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
    'xmlns:x="http://schemas.xmlsoap.org/ws/2004/09/transfer" '
    'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
    'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell" '
    'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
)


def _envelope(action: str, relates_to: str, body: str) -> str:
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>{escape(action)}Response</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID><a:To>{ANONYMOUS}</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header><s:Body>{body}</s:Body></s:Envelope>"
    )


def _fault(f: Fault, relates_to: str, machine: str) -> str:
    """A fault as a Windows host writes it (pypsrp test_winrs_bad_cmd_id.yml, test_winrs_operation_timeout.yml)."""
    relates = f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>" if relates_to else ""
    detail = f"<w:FaultDetail>{f.detail}</w:FaultDetail>" if f.detail else ""
    return (
        f"{_ENVELOPE_OPEN}<s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>"
        f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID><a:To>{ANONYMOUS}</a:To>{relates}</s:Header>"
        f"<s:Body><s:Fault><s:Code><s:Value>{'s:Sender' if f.sender else 's:Receiver'}</s:Value>"
        f"<s:Subcode><s:Value>{f.subcode}</s:Value></s:Subcode></s:Code>"
        f'<s:Reason><s:Text xml:lang="en-US">{escape(f.reason)}</s:Text></s:Reason><s:Detail>{detail}'
        f'<f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" Code="{f.code}" '
        f"Machine={quoteattr(machine)}><f:Message>{escape(f.message)}</f:Message></f:WSManFault></s:Detail>"
        "</s:Fault></s:Body></s:Envelope>"
    )
