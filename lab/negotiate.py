"""Negotiate (NTLM) authentication and message encryption, as a Windows WinRM service does them.

- The authentication belongs to the TCP connection, not to a request (RFC 4559 section 4; MS-N2HT): the
  client sends `Authorization: Negotiate <NTLM negotiate>`, the host answers 401 with
  `WWW-Authenticate: Negotiate <challenge>` on the same connection, the client sends the authenticate message,
  and every later request on that connection is authenticated without a header.
- Over HTTPS the host checks the channel binding the client computed from its certificate when the client sends
  one (RFC 5929 tls-server-end-point; WinRM's default CbtHardeningLevel is Relaxed: "Installation and
  configuration for Windows Remote Management", winrm/config/service/auth).
- Over plain HTTP every message after the handshake travels encrypted with the connection's NTLM session
  (MS-WSMV 2.2.9.1.1, Negotiate Encrypted Message): a multipart/encrypted body whose first part names the
  original content and its length, the second the NTLM signature's length (a little-endian 32-bit integer),
  the signature, then the sealed message (MS-WSMV 2.2.9.1.1.2.2).

pyspnego is the acceptor (NTLM only, raw tokens, as pywinrm and our transport send them). It learns the
accepted credentials from a file named by NTLM_USER_FILE, `DOMAIN:user:password` lines (spnego/_ntlm.py,
_get_credential): `user_file` writes it.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import spnego
from spnego.channel_bindings import GssChannelBindings
from spnego.exceptions import SpnegoError

PROTOCOL = "application/HTTP-SPNEGO-session-encrypted"
CONTENT_TYPE = f'multipart/encrypted;protocol="{PROTOCOL}";boundary="Encrypted Boundary"'
BOUNDARY = b"--Encrypted Boundary"
ORIGINAL = "application/soap+xml;charset=UTF-8"

# MS-WSMV 2.2.9.1.1.2: two parts between the boundaries, the body closed by the final boundary
_SEALED = re.compile(
    rb"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
    rb"\tOriginalContent: type=[^;\r\n]+;charset=[^;\r\n]+;Length=(\d+)\r\n"
    rb"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n(.*)--Encrypted Boundary--\r\n\Z",
    re.DOTALL | re.IGNORECASE)


class Refused(ValueError):
    """The handshake failed: a wrong password, a token out of order or malformed, mismatched channel bindings."""


class Undecryptable(ValueError):
    """An encrypted body that is not the MS-WSMV framing, or whose signature or length does not check out."""


def user_file(folder: Path, username: str, password: str) -> Path:
    """Write the credential the NTLM acceptor accepts and point NTLM_USER_FILE at it (read by pyspnego at each
    authentication). DOMAIN\\user is matched with its domain, a plain or UPN name without one."""
    domain, _, user = username.rpartition("\\")
    path = folder / "ntlm-users"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(f"{domain}:{user}:{password}\n")
    os.environ["NTLM_USER_FILE"] = str(path)
    return path


@dataclass
class Connection:
    """What one TCP connection carries between its requests."""

    tls: bool
    end_point: bytes = b""  # the tls-server-end-point hash of the certificate this connection was shown
    context: spnego.ContextProxy | None = None  # its NTLM acceptor, from the first Negotiate token on
    sealed: bool = False  # the request being answered came encrypted: its response goes back encrypted

    @property
    def authenticated(self) -> bool:
        return self.context is not None and self.context.complete

    def accept(self, token: bytes) -> bytes | None:
        """One step of the handshake (the token to send back, None once complete); a negotiate message starts
        it again. Refused when the step fails, and the connection is then unauthenticated."""
        if self.context is None or self.context.complete or token.startswith(b"NTLMSSP\x00\x01"):
            bindings = GssChannelBindings(application_data=b"tls-server-end-point:" + self.end_point) \
                if self.end_point else None
            self.context = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm,
                                         channel_bindings=bindings)
        try:
            return self.context.step(token)
        except (SpnegoError, ValueError, struct.error) as e:  # pyspnego raises all three for a bad token
            self.context = None
            raise Refused(str(e)) from None


def is_sealed(content_type: str) -> bool:
    value = content_type.lower()
    return value.startswith("multipart/encrypted") and PROTOCOL.lower() in value


def unseal(context: spnego.ContextProxy, body: bytes) -> bytes:
    """The SOAP message of an encrypted body (MS-WSMV 2.2.9.1.1.2)."""
    m = _SEALED.match(body)
    if m is None:
        raise Undecryptable("not an MS-WSMV 2.2.9.1.1 encrypted message")
    data = m.group(2)
    signature_length = int.from_bytes(data[:4], "little")
    if len(data) < 4 + signature_length:
        raise Undecryptable("the signature is longer than the message")
    try:
        message = context.unwrap_winrm(data[4:4 + signature_length], data[4 + signature_length:])
    except SpnegoError as e:
        raise Undecryptable(f"the message does not decrypt ({e})") from None
    if len(message) != int(m.group(1)):
        raise Undecryptable("the decrypted length is not the length announced")
    return message


def seal(context: spnego.ContextProxy, message: bytes) -> bytes:
    """`message` as an encrypted body (MS-WSMV 2.2.9.1.1.2), the framing pywinrm's Encryption parses."""
    wrapped = context.wrap_winrm(message)
    return (BOUNDARY + b"\r\n\tContent-Type: " + PROTOCOL.encode() + b"\r\n"
            + f"\tOriginalContent: type={ORIGINAL};Length={len(message)}\r\n".encode()
            + BOUNDARY + b"\r\n\tContent-Type: application/octet-stream\r\n"
            + len(wrapped.header).to_bytes(4, "little") + wrapped.header + wrapped.data
            + BOUNDARY + b"--\r\n")


def sealed_response(response: bytes, context: spnego.ContextProxy) -> bytes:
    """An HTTP response with its body encrypted, as a host answers an encrypted request (MS-WSMV 2.2.9.1.1); one
    without a body goes as it is."""
    head, _, body = response.partition(b"\r\n\r\n")
    if not body:
        return response
    sealed = seal(context, body)
    lines = [line for line in head.split(b"\r\n")
             if not line.lower().startswith((b"content-type:", b"content-length:"))]
    lines[2:2] = [f"Content-Type: {CONTENT_TYPE}".encode(), f"Content-Length: {len(sealed)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + sealed
