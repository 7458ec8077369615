"""The WinRM client: the only module that imports `winrm`.

One `HostShell` is one WinRM shell on one server for one job. The deadline is
ours, not pywinrm's (which would wait forever on a hung command): every
WS-Management call is bounded by the time the host has left, and when it runs
out the command is signalled and the shell closed. Every pywinrm / requests
failure becomes one of four errors the rest of the code understands.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import requests
import winrm
from winrm.exceptions import (
    InvalidCredentialsError,
    WinRMError,
    WinRMOperationTimeoutError,
    WinRMTransportError,
    WSManFaultError,
)

from cms.models import HostErrorKind

log = logging.getLogger(__name__)

T = TypeVar("T")

# Longest single Receive long-poll; keeps deadline checks frequent enough.
MAX_OPERATION_TIMEOUT = 10
CLEANUP_TIMEOUT = 3.0
STDIN_CHUNK = 96 * 1024  # base64 text per Send, well inside WinRM's default MaxEnvelopeSize
DEFAULT_MAX_ANSWER = 8 * 1024 * 1024  # bytes of output one command may send (CMSBOT_WINRM_MAX_ANSWER_MB)
# One HTTP response may carry at most this much more than the output it encodes (base64 is 4/3 of the
# bytes, plus the SOAP envelope); a compliant host keeps each under our MaxEnvelopeSize (150 KB) anyway.
RESPONSE_OVERHEAD = 64 * 1024


class HostFailure(Exception):
    """A server could not be asked or did not answer; `reason` is for humans."""

    kind: HostErrorKind = HostErrorKind.probe_failed

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


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str  # plain only inside this module; never logged
    transport: Literal["ntlm", "kerberos", "credssp", "basic"]
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


def bounded_responses(max_answer: int, server: str) -> Callable[..., requests.Response]:
    """A requests response hook (it runs before requests reads the body) that reads at most what a
    response carrying `max_answer` bytes of output can take: a larger one (by its Content-Length, or as
    it arrives) fails the probe instead of being read into memory."""
    limit = max_answer * 4 // 3 + RESPONSE_OVERHEAD  # base64 of the output, and the envelope around it

    def hook(response: requests.Response, *args: object, **kwargs: object) -> requests.Response:
        declared = response.headers.get("Content-Length", "")
        too_large = AnswerTooLarge(f"answer larger than {_megabytes(max_answer)}: {server} sent a single "
                                   f"WS-Management response of more than {_megabytes(limit)}; stopped reading it "
                                   "(CMSBOT_WINRM_MAX_ANSWER_MB)")
        if declared.isdigit() and int(declared) > limit:
            response.close()
            raise too_large
        if declared.isdigit() or response.raw is None:
            return response  # within the limit: requests reads it as usual
        body = response.raw.read(limit + 1, decode_content=True)  # no length given (chunked): read a bounded amount
        if len(body) > limit:
            response.close()
            raise too_large
        response._content = body  # what requests' own reading would have set
        response._content_consumed = True  # type: ignore[attr-defined]  # requests keeps it private
        return response

    return hook


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class HostShell:
    """One shell on one server, opened on first use, reused for the job's probes."""

    def __init__(self, server: str, endpoint: str, creds: Credentials, env: dict[str, str], deadline: float,
                 max_answer: int = DEFAULT_MAX_ANSWER):
        self.server = server
        self.endpoint = endpoint
        self.deadline = deadline
        self.max_answer = max_answer  # bytes of output (stdout and stderr) one command may send
        self._creds = creds
        self._env = env
        self._protocol: winrm.Protocol | None = None
        self._shell_id: str | None = None
        self._lock = threading.Lock()

    # -- public ----------------------------------------------------------------
    def run(self, command: str, arguments: list[str], stdin: bytes | None = None) -> Output:
        """Run one command to completion within the host's deadline; `stdin`, when
        given, is sent in chunks and then closed."""
        with self._lock:
            shell_id = self._open()
            # With input, the command runs with WINRS_CONSOLEMODE_STDIN=FALSE: in console mode (pywinrm's
            # default) Windows does not hand the sent bytes to the process as redirected input, so
            # [Console]::IsInputRedirected is false and import-configuration.ps1 gets no zip.
            # MS-WSMV 3.1.4.11 (Command, option WINRS_CONSOLEMODE_STDIN); Ansible's winrm
            # connection plugin passes console_mode_stdin=(stdin is None) for the same reason.
            command_id = self._call(lambda p: p.run_command(shell_id, command, arguments,
                                                            console_mode_stdin=stdin is None))
            if stdin is not None:
                chunks = [stdin[i:i + STDIN_CHUNK] for i in range(0, len(stdin), STDIN_CHUNK)] or [b""]
                for i, chunk in enumerate(chunks):
                    last = i == len(chunks) - 1
                    self._call(lambda p, c=chunk, e=last: p.send_command_input(  # type: ignore[misc]  # mypy#15459
                        shell_id, command_id, c, end=e))
            out: list[bytes] = []
            err: list[bytes] = []
            received = 0
            try:
                while True:
                    try:
                        o, e, code, done = self._call(lambda p: p.get_command_output_raw(shell_id, command_id),
                                                      receive=True)
                    except WinRMOperationTimeoutError:
                        continue  # the command is still running; poll again while time remains
                    received += len(o) + len(e)
                    if received > self.max_answer:
                        raise AnswerTooLarge(f"answer larger than {_megabytes(self.max_answer)}: stopped reading "
                                          f"after {received / (1024 * 1024):.1f} MB and ended the command "
                                          "(CMSBOT_WINRM_MAX_ANSWER_MB)")
                    out.append(o)
                    err.append(e)
                    if done:
                        break
            except (TimedOut, AnswerTooLarge):  # out of time, or too much: end the command, drop the shell
                out.clear()
                err.clear()
                self._quietly(lambda p: p.cleanup_command(shell_id, command_id))
                self.close()
                raise
            # MS-WSMV 3.1.4.14: "a final Signal message MUST also be issued for the command after all the
            # stream data has been received" (code terminate); pywinrm's Session.run_cmd and Ansible's winrm
            # connection plugin (cleanup_command after every command) do the same. Best effort within the
            # host's deadline: the output is complete, and the shell's Delete at the end of the job frees it.
            try:
                self._call(lambda p: p.cleanup_command(shell_id, command_id))
            except HostFailure as exc:
                log.debug("Signal after the last Receive on %s failed: %s", self.server, exc.reason)
            return Output(b"".join(out), b"".join(err), code)

    def close(self) -> None:
        """Delete the shell (best effort, short deadline) and drop the connection."""
        if self._protocol is None:
            return
        shell_id, self._shell_id = self._shell_id, None
        if shell_id:
            self._quietly(lambda p: p.close_shell(shell_id, close_session=False))
        self._protocol.transport.close_session()
        self._protocol = None

    # -- internals ---------------------------------------------------------------
    def _open(self) -> str:
        if self._shell_id is None:
            if self._protocol is None:
                self._protocol = self._make_protocol()
            self._shell_id = self._call(lambda p: p.open_shell(env_vars=self._env, codepage=65001, noprofile=True))
        return self._shell_id

    def _make_protocol(self) -> winrm.Protocol:
        c = self._creds
        plain_http = urlsplit(self.endpoint).scheme == "http"
        if c.transport == "basic" and plain_http and not is_loopback(self.endpoint):
            raise AuthFailed("credentials not sent: Basic authentication over plain HTTP is allowed only to loopback; "
                             "use HTTPS or NTLM/Kerberos")
        protocol = winrm.Protocol(
            endpoint=self.endpoint,
            transport=c.transport,
            username=c.username,
            password=c.password,
            server_cert_validation="validate",
            # types-requests leaves requests.certs empty; where() is there at runtime (the packager's CA bundle)
            ca_trust_path=c.ca_bundle or requests.certs.where(),  # type: ignore[attr-defined]
            read_timeout_sec=MAX_OPERATION_TIMEOUT + 5,
            operation_timeout_sec=MAX_OPERATION_TIMEOUT,
            message_encryption="auto",
            proxy=c.proxy,  # explicit: None means no proxy, whatever the environment says
        )
        # every response of the session is bounded before requests reads it: pywinrm builds its
        # session on the first message, so the hook is added to it as it is built
        transport = protocol.transport
        build, hook = transport.build_session, bounded_responses(self.max_answer, self.server)

        def bounded_session() -> requests.Session:
            fresh = transport.session is None
            session = build()
            if fresh:
                session.hooks["response"].append(hook)
            return session

        transport.build_session = bounded_session  # type: ignore[method-assign]
        return protocol

    def _call(self, fn: Callable[[winrm.Protocol], T], *, receive: bool = False) -> T:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimedOut("no answer within the host deadline")
        p = self._protocol
        assert p is not None
        # A Receive is held by the server up to OperationTimeout, so the HTTP read
        # must outlast it; both shrink as the deadline approaches.
        op = max(1, min(MAX_OPERATION_TIMEOUT, int(remaining) - 1)) if receive else MAX_OPERATION_TIMEOUT
        p.operation_timeout_sec = op
        # pywinrm annotates an int, but hands it to requests, which takes a (connect, read) pair
        p.transport.read_timeout_sec = (  # type: ignore[assignment]
            min(self._creds.connect_timeout, remaining), min(remaining, op + 2.0))
        try:
            return fn(p)
        except WinRMOperationTimeoutError:
            if receive:
                raise  # the command is still running: the caller polls again
            raise TimedOut("no answer within the host deadline (WS-Management operation timeout)") from None
        except HostFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is mapped below
            raise self._map(exc) from None

    def _quietly(self, fn: Callable[[winrm.Protocol], object]) -> None:
        """Signal / Delete on the way out: short deadline, failures only logged."""
        saved = self.deadline
        self.deadline = time.monotonic() + CLEANUP_TIMEOUT
        try:
            if self._protocol is not None:
                self._call(fn)
        except Exception as exc:  # noqa: BLE001
            log.debug("cleanup on %s failed: %s", self.server, type(exc).__name__)
        finally:
            self.deadline = saved

    def _map(self, exc: Exception) -> HostFailure:
        port = urlsplit(self.endpoint).port or ""
        where = f"{urlsplit(self.endpoint).hostname}:{port}"
        if isinstance(exc, InvalidCredentialsError):
            return AuthFailed(f"the WinRM credentials were rejected by {self.server} (HTTP 401)")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return Unreachable(f"no TCP connection to {where} within {self._creds.connect_timeout:g} s")
        if isinstance(exc, requests.exceptions.ReadTimeout):
            return TimedOut("no answer within the host deadline")
        if isinstance(exc, requests.exceptions.SSLError):
            return Unreachable(f"TLS handshake with {where} failed (certificate not trusted or wrong name)")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return Unreachable(f"the connection to {where} broke in the middle of a response")
        if isinstance(exc, requests.exceptions.ConnectionError):
            text = str(exc).lower()
            if "refused" in text:
                return Unreachable(f"connection to {where} refused (WinRM not listening or blocked)")
            if "reset" in text or "aborted" in text or "remotedisconnected" in text or "closed" in text:
                return Unreachable(f"the connection to {where} was reset before a complete answer")
            if "name or service" in text or "getaddrinfo" in text or "resolve" in text:
                return Unreachable(f"the name {urlsplit(self.endpoint).hostname} does not resolve")
            return Unreachable(f"cannot connect to {where}")
        if isinstance(exc, WSManFaultError):
            return ProbeFailed(f"WS-Management fault from {self.server}: {exc.reason.strip()}")
        if isinstance(exc, WinRMTransportError):
            if exc.code == 401:
                return AuthFailed(f"the WinRM credentials were rejected by {self.server} (HTTP 401)")
            return ProbeFailed(f"{self.server} answered HTTP {exc.code} with no WS-Management fault")
        if isinstance(exc, (ET.ParseError, StopIteration, AssertionError, UnicodeDecodeError)):
            return ProbeFailed(f"{self.server} sent a malformed WS-Management response")
        if isinstance(exc, WinRMError):
            return ProbeFailed(f"WinRM error talking to {self.server}: {type(exc).__name__}")
        log.exception("unexpected WinRM client error for %s", self.server)
        return ProbeFailed(f"unexpected client error talking to {self.server} ({type(exc).__name__})")
