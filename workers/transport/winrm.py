"""The WinRM client: the only module that imports `winrm` (and pyspnego).

pywinrm stays the WinRM library: its `Protocol` writes every envelope and its `Encryption` frames
NTLM/Kerberos message encryption (MS-WSMV 2.2.9.1); pyspnego runs the handshakes. What is ours is
the I/O under them, because pywinrm's own transport (requests) cost more than the WinRM work itself:
about 54% of the client's CPU per server went to requests (proxy lookup over the environment,
settings merging, a session per server), the CA bundle was reloaded for every HTTPS connection,
and requests' `no_proxy` handling rewrote `os.environ` on every call while other threads read it
(healthy servers reported as "unexpected client error (KeyError)").

- **Envelopes**: each kind of message is built once by pywinrm's `Protocol` (through a transport
  that keeps the message instead of sending it) and filled in per use: a Create per distinct
  environment, a Command per distinct command line, one Receive, Signal and Delete.
- **HTTP/1.1**: one keep-alive connection per shell, on asyncio; one SSLContext per process and
  CA bundle; no environment read or written; an explicit proxy (CMSBOT_WINRM_PROXY) by CONNECT.
- **Authentication** per connection: Basic (only to loopback over plain HTTP), or NTLM/Kerberos
  through pyspnego, with channel binding over HTTPS (RFC 5929 tls-server-end-point) and message
  encryption over HTTP (pywinrm's `Encryption`).
- **Deadlines are ours**: every exchange is bounded by the time the host has left, so a server
  that trickles its answer a byte at a time costs its own deadline and no more; then the command
  is signalled and the shell dropped. Every failure becomes one of four errors the rest of the
  code understands.

`Shell` is the asynchronous shell the fleet runs many of on one event loop; `HostShell` is the
same on its own loop, for callers that ask one server at a time.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import base64
import functools
import ipaddress
import logging
import re
import socket
import ssl
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import certifi
import spnego
import winrm
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from spnego._ntlm_raw.crypto import ntowfv1  # MD4 of the UTF-16LE password (MS-NLMP 3.3.1), OpenSSL 3 has none
from spnego.channel_bindings import GssChannelBindings
from winrm.encryption import Encryption

from cms.models import HostErrorKind

log = logging.getLogger(__name__)

# Longest single Receive long-poll; keeps deadline checks frequent enough.
MAX_OPERATION_TIMEOUT = 10
CLEANUP_TIMEOUT = 3.0
STDIN_CHUNK = 96 * 1024  # base64 text per Send, well inside WinRM's default MaxEnvelopeSize
DEFAULT_MAX_ANSWER = 8 * 1024 * 1024  # bytes of output one command may send (CMSBOT_WINRM_MAX_ANSWER_MB)
# One HTTP response may carry at most this much more than the output it encodes (base64 is 4/3 of the
# bytes, plus the SOAP envelope); a compliant host keeps each under our MaxEnvelopeSize (150 KB) anyway.
RESPONSE_OVERHEAD = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
USER_AGENT = "cmsbot (pywinrm envelopes)"
# MS-WSMV 3.1.4.14 / 2.2.4.41: the fault a Receive answers when OperationTimeout passed with no output
# (ERROR_WSMAN_OPERATION_TIMEDOUT); pywinrm raises WinRMOperationTimeoutError for the same code.
OPERATION_TIMED_OUT = 2150858793
ENCRYPTED_PROTOCOL = 'protocol="application/HTTP-SPNEGO-session-encrypted"'  # MS-WSMV 2.2.9.1.1
SOAP = {"s": "http://www.w3.org/2003/05/soap-envelope", "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault"}


class HostFailure(Exception):
    """A server could not be asked or did not answer; `reason` is for humans. `partial`: what the command
    wrote before it failed (a command that runs several probes may have finished the first ones)."""

    kind: HostErrorKind = HostErrorKind.probe_failed
    partial: Output | None = None

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Unreachable(HostFailure):
    kind = HostErrorKind.unreachable


class AuthFailed(HostFailure):
    kind = HostErrorKind.auth_failed


class TimedOut(HostFailure):
    kind = HostErrorKind.timed_out


class ProbeFailed(HostFailure):
    kind = HostErrorKind.probe_failed


class AnswerTooLarge(ProbeFailed):
    """More output than CMSBOT_WINRM_MAX_ANSWER_MB: reading stopped."""


class _StillRunning(Exception):
    """A Receive's OperationTimeout passed with no output: the command runs on; poll again."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # plain only inside this module; never logged
    transport: Literal["ntlm", "kerberos", "basic"]
    ca_bundle: str | None = None
    connect_timeout: float = 5.0
    proxy: str | None = None

    def __repr__(self) -> str:  # keep the password out of any traceback or log
        return f"Credentials(username={self.username!r}, transport={self.transport!r})"


@dataclass(frozen=True)
class Output:
    stdout: bytes
    stderr: bytes
    exit_code: int


def _megabytes(n: int) -> str:
    mb = n / (1024 * 1024)
    return f"{mb:.0f} MB" if mb == int(mb) else f"{mb:.1f} MB"


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# asyncio gives every TLS connection a 256 KB read buffer (SSLProtocol.max_size): 256 MB for a job of 1,000
# servers. WinRM answers arrive in envelopes of at most 150 KB anyway; reading them 16 KB at a time costs nothing.
asyncio.sslproto.SSLProtocol.max_size = 16 * 1024


@functools.cache
def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """One context per process and CA bundle: loading the bundle costs ~75 ms of CPU, which requests
    paid again for every new connection."""
    return ssl.create_default_context(cafile=ca_bundle or certifi.where())


# -- envelopes ------------------------------------------------------------------------------------
_SHELL = "cmsbot-shell-id"
_COMMAND = "cmsbot-command-id"
_MESSAGE_ID = re.compile(r"<a:MessageID>uuid:[0-9a-fA-F-]+</a:MessageID>")
_OPERATION_TIMEOUT = re.compile(r"<w:OperationTimeout>PT\d+S</w:OperationTimeout>")


class _Keep:
    """A pywinrm transport that keeps the message instead of sending it, and answers what the caller
    needs to finish (a shell id, a command id, the RelatesTo of the message)."""

    def __init__(self) -> None:
        self.sent = ""

    def send_message(self, message: str) -> bytes:
        self.sent = message
        relates = _MESSAGE_ID.search(message)
        related = relates.group(0)[len("<a:MessageID>"):-len("</a:MessageID>")] if relates else ""
        return (f'<r><x Name="ShellId">{_SHELL}</x><CommandId>{_COMMAND}</CommandId>'
                f'<RelatesTo>{related}</RelatesTo></r>').encode()

    def close_session(self) -> None:
        pass


def _template(build: Callable[[winrm.Protocol], object]) -> str:
    protocol = winrm.Protocol("http://windows-host:5985/wsman", username="-", password="-", transport="basic")
    keep = _Keep()
    protocol.transport = keep  # type: ignore[assignment]  # duck-typed: only send_message and close_session
    build(protocol)
    escaped = keep.sent.replace("{", "{{").replace("}", "}}")
    text = _MESSAGE_ID.sub("<a:MessageID>uuid:{message_id}</a:MessageID>", escaped)
    return _OPERATION_TIMEOUT.sub("<w:OperationTimeout>PT{timeout}S</w:OperationTimeout>", text)


@functools.lru_cache(maxsize=64)
def _create(env: tuple[tuple[str, str], ...]) -> str:
    return _template(lambda p: p.open_shell(env_vars=dict(env), codepage=65001, noprofile=True))


@functools.lru_cache(maxsize=256)
def _command(command: str, arguments: tuple[str, ...], console_mode_stdin: bool) -> str:
    return _template(lambda p: p.run_command(_SHELL, command, list(arguments), console_mode_stdin=console_mode_stdin))


@functools.cache
def _fixed(kind: str) -> str:
    builders: dict[str, Callable[[winrm.Protocol], object]] = {
        "receive": lambda p: p.get_command_output_raw(_SHELL, _COMMAND),
        "signal": lambda p: p.cleanup_command(_SHELL, _COMMAND),
        "delete": lambda p: p.close_shell(_SHELL, close_session=False),
    }
    return _template(builders[kind])


def _send(shell_id: str, command_id: str, data: bytes, end: bool) -> str:
    """Input is different every time: pywinrm builds it."""
    return _template(lambda p: p.send_command_input(shell_id, command_id, data, end=end))


def _fill(template: str, shell_id: str = "", command_id: str = "", timeout: int = MAX_OPERATION_TIMEOUT) -> bytes:
    text = template.format(message_id=uuid.uuid4(), timeout=timeout)
    return text.replace(_SHELL, shell_id).replace(_COMMAND, command_id).encode("utf-8")


# -- answers (what pywinrm's Protocol reads from each response) ---------------------------------------
def _shell_id(root: ET.Element) -> str:
    return next(n for n in root.iter() if n.get("Name") == "ShellId").text or ""


def _command_id(root: ET.Element) -> str:
    return next(n for n in root.iter() if n.tag.endswith("CommandId")).text or ""


def _streams(root: ET.Element) -> tuple[bytes, bytes, int, bool]:
    out: list[bytes] = []
    err: list[bytes] = []
    for node in root.iter():
        if node.tag.endswith("Stream") and node.text:
            (out if node.get("Name") == "stdout" else err if node.get("Name") == "stderr" else []).append(
                base64.b64decode(node.text.encode("ascii")))
    done = any(n.get("State", "").endswith("CommandState/Done") for n in root.iter())
    code = int(next(n for n in root.iter() if n.tag.endswith("ExitCode")).text or -1) if done else -1
    return b"".join(out), b"".join(err), code, done


def _fault(body: bytes) -> tuple[int | None, str] | None:
    """The WS-Management fault in an HTTP 500 (MS-WSMV 2.2.4.18): its code and reason."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None
    fault = root.find("s:Body/s:Fault", SOAP)
    if fault is None:
        return None
    detail = fault.find("s:Detail/f:WSManFault[@Code]", SOAP)
    reason = fault.findtext("s:Reason/s:Text", default="", namespaces=SOAP).strip()
    return (int(detail.attrib["Code"]) if detail is not None else None), reason or "(no error message in fault)"


# -- HTTP and authentication -------------------------------------------------------------------------
@dataclass
class _Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str:
        return ", ".join(self.headers.get(name.lower(), []))

    @property
    def closes(self) -> bool:
        return self.header("connection").lower() == "close"


class _Broken(Exception):
    """The connection ended in the middle of a response."""


class _Reset(Exception):
    """The connection ended before any of a response arrived."""


class _SessionShim:
    """What pywinrm's `Encryption` reads from a requests session, over a pyspnego context: `auth`'s
    wrap/unwrap (NTLM, as requests_ntlm's shim) or wrap_winrm/unwrap_winrm (Kerberos, as
    requests_kerberos), and `prepare_request`, which here only carries the body and headers."""

    def __init__(self, context: Any):
        self.auth = self
        self.session_security = self
        self._context = context

    def wrap(self, message: bytes) -> tuple[bytes, bytes]:
        sealed = self._context.wrap(message, encrypt=True).data
        return sealed[16:], sealed[:16]

    def unwrap(self, message: bytes, signature: bytes) -> bytes:
        return self._context.unwrap(signature + message).data

    def wrap_winrm(self, host: object, message: bytes) -> tuple[bytes, bytes]:
        wrapped = self._context.wrap_winrm(message)
        return wrapped.data, wrapped.header

    def unwrap_winrm(self, host: object, message: bytes, signature: bytes) -> bytes:
        return self._context.unwrap_winrm(signature, message)

    def prepare_request(self, request: Any) -> Any:
        return _Prepared(request.data)


@dataclass
class _Prepared:
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Encrypted:
    """A response as `Encryption.parse_encrypted_response` reads it."""
    headers: dict[str, str]
    content: bytes
    url: str

    @property
    def request(self) -> _Encrypted:
        return self


def _channel_bindings(writer: asyncio.StreamWriter) -> GssChannelBindings | None:
    """RFC 5929 tls-server-end-point of the server's certificate, which WinRM checks when its
    CbtHardeningLevel asks (MS-WSMV 3.2.4.1.9; requests_ntlm sends the same)."""
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object else None
    if not der:
        return None
    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, (hashes.MD5, hashes.SHA1)):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


@functools.cache
def _ntlm_credential(username: str, password: str) -> spnego.NTLMHash:
    """pyspnego derives the LM and NT hashes from the password for every new context (the LM one by DES in
    pure Python: ~4 ms, most of the client's CPU per server): once per process instead. NTLMv2, pyspnego's
    default (LmCompatibilityLevel 3, MS-NLMP 3.3.2), uses the NT hash alone."""
    return spnego.NTLMHash(username, nt_hash=ntowfv1(password).hex())


class _Connection:
    """One keep-alive HTTP/1.1 connection to one WinRM listener, authenticated once."""

    def __init__(self, server: str, endpoint: str, creds: Credentials, max_answer: int):
        url = urlsplit(endpoint)
        self.server = server
        self.endpoint = endpoint
        self.host = url.hostname or ""
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = url.scheme == "https"
        self.path = (url.path or "/wsman") + (f"?{url.query}" if url.query else "")
        self.where = f"{self.host}:{self.port}"
        self._creds = creds
        self._max_answer = max_answer
        self._max_response = max_answer * 4 // 3 + RESPONSE_OVERHEAD  # base64 of the output, and the envelope
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._encryption: Encryption | None = None
        self._shim: _SessionShim | None = None

    # -- the connection ----------------------------------------------------------
    async def _open(self) -> None:
        c = self._creds
        if c.transport == "basic" and not self.tls and not is_loopback(self.endpoint):
            raise AuthFailed("credentials not sent: Basic authentication over plain HTTP is allowed only to "
                             "loopback; use HTTPS or NTLM/Kerberos")
        try:
            async with asyncio.timeout(c.connect_timeout):
                if c.proxy:
                    reader, writer = await self._through_proxy(c.proxy)
                else:
                    reader, writer = await asyncio.open_connection(
                        self.host, self.port, ssl=tls_context(c.ca_bundle) if self.tls else None,
                        limit=MAX_HEADER_BYTES)
        except TimeoutError:
            raise Unreachable(f"no TCP connection to {self.where} within {c.connect_timeout:g} s") from None
        except ssl.SSLCertVerificationError as e:
            raise Unreachable(f"TLS handshake with {self.where} failed (certificate not trusted or wrong name: "
                              f"{e.verify_message})") from None
        except ssl.SSLError:
            raise Unreachable(f"TLS handshake with {self.where} failed (certificate not trusted or wrong name)") \
                from None
        except socket.gaierror:
            raise Unreachable(f"the name {self.host} does not resolve") from None
        except ConnectionRefusedError:
            raise Unreachable(f"connection to {self.where} refused (WinRM not listening or blocked)") from None
        except OSError:
            raise Unreachable(f"cannot connect to {self.where}") from None
        self._reader, self._writer = reader, writer
        if c.transport in ("ntlm", "kerberos"):
            try:
                await self._negotiate()
            except BaseException:
                self.close()  # nothing more goes out on a connection that is not authenticated
                raise

    async def _through_proxy(self, proxy: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        p = urlsplit(proxy)
        reader, writer = await asyncio.open_connection(p.hostname, p.port or 8080, limit=MAX_HEADER_BYTES)
        try:
            writer.write(f"CONNECT {self.where} HTTP/1.1\r\nHost: {self.where}\r\n\r\n".encode("ascii"))
            status = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            code = status.split(b" ")[1:2]
            if code != [b"200"]:
                raise Unreachable(f"the proxy {p.hostname}:{p.port or 8080} refused a tunnel to {self.where} "
                                  f"(HTTP {(code or [b'?'])[0].decode('latin-1')})")
            if self.tls:
                await writer.start_tls(tls_context(self._creds.ca_bundle), server_hostname=self.host)
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def _negotiate(self) -> None:
        """The HTTP Negotiate handshake on this connection (MS-WSMV 3.2.5.1.1.2; pywinrm sends an empty
        message to set up encryption the same way), then message encryption over plain HTTP."""
        c = self._creds
        assert self._writer is not None
        who: Any = _ntlm_credential(c.username, c.password) if c.transport == "ntlm" else c.username
        context = spnego.client(who, None if c.transport == "ntlm" else c.password, hostname=self.host,
                                service="HTTP", protocol=c.transport, channel_bindings=_channel_bindings(self._writer))
        token = context.step()
        while True:
            offer = base64.b64encode(token or b"").decode()
            response = await self._exchange(b"", {"Authorization": f"Negotiate {offer}"})
            offered = response.header("www-authenticate")
            answer = base64.b64decode(offered.split("Negotiate ", 1)[1].split(",")[0].strip()) \
                if "Negotiate " in offered else None
            if response.closes:
                self.close()
            if response.status == 401 and answer and not context.complete and self._writer is not None:
                token = context.step(answer)
                continue
            if response.status == 401:
                raise AuthFailed(f"the WinRM credentials were rejected by {self.server} (HTTP 401)")
            if not 200 <= response.status < 300:
                raise ProbeFailed(f"{self.server} answered HTTP {response.status} to authentication")
            if answer and not context.complete:  # Kerberos: the host's mutual authentication token
                context.step(answer)
            break
        if not self.tls:
            self._shim = _SessionShim(context)
            self._encryption = Encryption(self._shim, c.transport)  # type: ignore[arg-type]

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()
        self._reader = self._writer = None
        self._encryption = self._shim = None

    # -- one message ----------------------------------------------------------------
    async def send(self, message: bytes) -> bytes:
        """POST one SOAP message, return the SOAP answer; HTTP and WS-Management failures raised."""
        if self._reader is not None and self._writer is not None \
                and (self._reader.at_eof() or self._writer.is_closing()):
            self.close()  # the host (or a proxy) closed it while idle: a new one, before anything is written
        if self._writer is None:
            await self._open()
        # never sent twice: a reset after the message left may mean the host has it (a Command that changes
        # the CMS must not run twice)
        response = await self._post(message)
        if response.closes:
            self.close()
        if response.status == 200:
            return response.body
        if response.status == 401:
            raise AuthFailed(f"the WinRM credentials were rejected by {self.server} (HTTP 401)")
        fault = _fault(response.body) if response.body.lstrip().startswith(b"<") else None
        if fault is None:
            raise ProbeFailed(f"{self.server} answered HTTP {response.status} with no WS-Management fault")
        code, reason = fault
        if code == OPERATION_TIMED_OUT:
            raise _StillRunning
        raise ProbeFailed(f"WS-Management fault from {self.server}: {reason}")

    async def _post(self, message: bytes) -> _Response:
        headers = {"Content-Type": "application/soap+xml;charset=UTF-8"}
        if self._creds.transport == "basic":
            pair = f"{self._creds.username}:{self._creds.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        if self._encryption is not None:
            prepared = self._encryption.prepare_encrypted_request(self._shim, self.endpoint, message)  # type: ignore[arg-type]
            message = prepared.body  # type: ignore[assignment]  # our shim's _Prepared carries bytes
            headers = {k: v for k, v in prepared.headers.items() if k.lower() != "content-length"}
        response = await self._exchange(message, headers)
        if self._encryption is not None and response.body:
            if ENCRYPTED_PROTOCOL not in response.header("content-type"):
                # pywinrm passes such a body through as it is: on plain HTTP anyone on the path could answer
                raise ProbeFailed(f"{self.server} answered in clear on an encrypted session (MS-WSMV 2.2.9.1)")
            encrypted = _Encrypted({"Content-Type": response.header("content-type")}, response.body, self.endpoint)
            plain = self._encryption.parse_encrypted_response(encrypted)  # type: ignore[arg-type]
            response = _Response(response.status, response.headers, plain)
        return response

    async def _exchange(self, body: bytes, headers: dict[str, str]) -> _Response:
        assert self._reader is not None and self._writer is not None
        head = [f"POST {self.path} HTTP/1.1", f"Host: {self.where}", f"User-Agent: {USER_AGENT}",
                f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
        try:
            self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            await self._writer.drain()
            status_line = await self._reader.readline()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            raise _Reset from None
        if not status_line:
            raise _Reset
        try:
            return await self._rest(status_line)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            raise _Broken from None

    async def _rest(self, status_line: bytes) -> _Response:
        assert self._reader is not None
        parts = status_line.decode("latin-1").split(" ", 2)
        status = int(parts[1])
        headers: dict[str, list[str]] = {}
        size = 0
        while True:
            line = await self._reader.readline()
            if line in (b"\r\n", b"\n"):
                break
            size += len(line)
            if not line or size > MAX_HEADER_BYTES:
                raise asyncio.IncompleteReadError(b"", None)
            name, _, value = line.decode("latin-1").partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        declared = ", ".join(headers.get("content-length", []))
        if "chunked" in ", ".join(headers.get("transfer-encoding", [])).lower():
            body = await self._chunked()
        elif declared:
            length = int(declared)
            if length > self._max_response:
                self.close()
                raise AnswerTooLarge(self._too_large())
            body = await self._reader.readexactly(length)
        elif status in (204, 304) or 100 <= status < 200:
            body = b""
        else:  # neither a length nor chunks: the body runs to the end of the connection (RFC 9112 6.3)
            body = await self._reader.read(self._max_response + 1)
            while len(body) <= self._max_response and (more := await self._reader.read(self._max_response)):
                body += more
            if len(body) > self._max_response:
                self.close()
                raise AnswerTooLarge(self._too_large())
            headers["connection"] = ["close"]
        return _Response(status, headers, body)

    async def _chunked(self) -> bytes:
        assert self._reader is not None
        body = bytearray()
        while True:
            size = int((await self._reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await self._reader.readline()) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            if len(body) + size > self._max_response:
                self.close()
                raise AnswerTooLarge(self._too_large())
            body += await self._reader.readexactly(size)
            await self._reader.readexactly(2)

    def _too_large(self) -> str:
        return (f"answer larger than {_megabytes(self._max_answer)}: {self.server} sent a single WS-Management "
                f"response of more than {_megabytes(self._max_response)}; stopped reading it "
                "(CMSBOT_WINRM_MAX_ANSWER_MB)")


# -- the shell ----------------------------------------------------------------------------------------
class Shell:
    """One shell on one server, opened on first use, reused for the job's probes; asynchronous."""

    def __init__(self, server: str, endpoint: str, creds: Credentials, env: dict[str, str], deadline: float,
                 max_answer: int = DEFAULT_MAX_ANSWER):
        self.server = server
        self.endpoint = endpoint
        self.deadline = deadline  # loop.time() by which the current probe must be done
        self.max_answer = max_answer  # bytes of output (stdout and stderr) one command may send
        self._creds = creds
        self._env = tuple(env.items())
        self._connection = _Connection(server, endpoint, creds, max_answer)
        self._shell_id: str | None = None

    async def run(self, command: str, arguments: list[str], stdin: bytes | None = None) -> Output:
        """Run one command to completion within the host's deadline; `stdin`, when given, is sent in
        chunks and then closed."""
        shell_id = await self._open()
        # With input, the command runs with WINRS_CONSOLEMODE_STDIN=FALSE: in console mode (pywinrm's
        # default) Windows does not hand the sent bytes to the process as redirected input, so
        # [Console]::IsInputRedirected is false and import-configuration.ps1 gets no zip.
        # MS-WSMV 3.1.4.11 (Command, option WINRS_CONSOLEMODE_STDIN); Ansible's winrm
        # connection plugin passes console_mode_stdin=(stdin is None) for the same reason.
        command_id = _command_id(await self._call(_fill(_command(command, tuple(arguments), stdin is None), shell_id)))
        if stdin is not None:
            chunks = [stdin[i:i + STDIN_CHUNK] for i in range(0, len(stdin), STDIN_CHUNK)] or [b""]
            for i, chunk in enumerate(chunks):
                await self._call(_fill(_send(shell_id, command_id, chunk, i == len(chunks) - 1)))
        out: list[bytes] = []
        err: list[bytes] = []
        received = 0
        try:
            while True:
                loop = asyncio.get_running_loop()
                # the host holds a Receive up to OperationTimeout: shorter as the deadline nears
                op = max(1, min(MAX_OPERATION_TIMEOUT, int(self.deadline - loop.time()) - 1))
                try:
                    answer = await self._call(_fill(_fixed("receive"), shell_id, command_id, timeout=op))
                except _StillRunning:
                    continue
                o, e, code, done = _streams(answer)
                received += len(o) + len(e)
                if received > self.max_answer:
                    raise AnswerTooLarge(f"answer larger than {_megabytes(self.max_answer)}: stopped reading after "
                                         f"{received / (1024 * 1024):.1f} MB and ended the command "
                                         "(CMSBOT_WINRM_MAX_ANSWER_MB)")
                out.append(o)
                err.append(e)
                if done:
                    break
        except HostFailure as failure:
            if not isinstance(failure, AnswerTooLarge):
                failure.partial = Output(b"".join(out), b"".join(err), -1)
            if isinstance(failure, (TimedOut, AnswerTooLarge)):  # out of time, or too much: end it, drop the shell
                await self._quietly(_fill(_fixed("signal"), shell_id, command_id))
                await self.close()
            raise
        # MS-WSMV 3.1.4.14: "a final Signal message MUST also be issued for the command after all the
        # stream data has been received" (code terminate); pywinrm's Session.run_cmd and Ansible's winrm
        # connection plugin (cleanup_command after every command) do the same. Best effort within the
        # host's deadline: the output is complete, and the shell's Delete at the end of the job frees it.
        try:
            await self._call(_fill(_fixed("signal"), shell_id, command_id))
        except HostFailure as exc:
            log.debug("Signal after the last Receive on %s failed: %s", self.server, exc.reason)
        return Output(b"".join(out), b"".join(err), code)

    async def close(self) -> None:
        """Delete the shell (best effort, short deadline) and drop the connection."""
        if self._shell_id:
            await self._quietly(_fill(_fixed("delete"), self._shell_id))
        self._shell_id = None  # only now: a Delete cut short (the job's end) is tried again by the fleet's close
        self._connection.close()

    async def _open(self) -> str:
        if self._shell_id is None:
            self._shell_id = _shell_id(await self._call(_fill(_create(self._env))))
        return self._shell_id

    async def _call(self, message: bytes) -> ET.Element:
        """Send one message within the deadline; its answer, parsed (a malformed one fails here, named as such)."""
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise TimedOut("no answer within the host deadline")
        try:
            async with asyncio.timeout(remaining):
                answer = await self._connection.send(message)
            return ET.fromstring(answer)
        except TimeoutError:
            self._connection.close()
            raise TimedOut("no answer within the host deadline") from None
        except (_StillRunning, HostFailure):
            raise
        except _Reset:
            self._connection.close()
            raise Unreachable(f"the connection to {self._connection.where} was reset before a complete answer") \
                from None
        except _Broken:
            self._connection.close()
            raise Unreachable(f"the connection to {self._connection.where} broke in the middle of a response") \
                from None
        except (ET.ParseError, StopIteration, UnicodeDecodeError, ValueError, struct.error):
            self._connection.close()
            raise ProbeFailed(f"{self.server} sent a malformed WS-Management response") from None
        except Exception as exc:  # noqa: BLE001 - a bug or a surprise in one host's exchange is that host's error
            log.exception("unexpected WinRM client error for %s", self.server)
            self._connection.close()
            raise ProbeFailed(f"unexpected client error talking to {self.server} ({type(exc).__name__})") from None

    async def _quietly(self, message: bytes) -> None:
        """Signal / Delete on the way out: short deadline, failures only logged."""
        saved = self.deadline
        self.deadline = asyncio.get_running_loop().time() + CLEANUP_TIMEOUT
        try:
            await self._call(message)
        except (HostFailure, _StillRunning) as exc:
            log.debug("cleanup on %s failed: %s", self.server, type(exc).__name__)
        finally:
            self.deadline = saved


class HostShell:
    """A `Shell` on its own event loop, for callers that ask one server at a time. `deadline` is
    `time.monotonic()` based (the loop's clock)."""

    def __init__(self, server: str, endpoint: str, creds: Credentials, env: dict[str, str], deadline: float,
                 max_answer: int = DEFAULT_MAX_ANSWER):
        self._loop = asyncio.new_event_loop()
        self._shell = Shell(server, endpoint, creds, env, deadline, max_answer)

    @property
    def deadline(self) -> float:
        return self._shell.deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._shell.deadline = value

    def run(self, command: str, arguments: list[str], stdin: bytes | None = None) -> Output:
        if self._loop.is_closed():  # closed, then asked again: a new shell on a new loop
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(self._shell.run(command, arguments, stdin))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._shell.close())
            self._loop.close()
