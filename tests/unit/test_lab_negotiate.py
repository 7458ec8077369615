"""The lab's pure parts of the product's default WinRM path: the NTLM acceptor and the MS-WSMV 2.2.9.1.1
encrypted message (lab/negotiate.py), against pywinrm's own Encryption class on a pyspnego client; and the
certificates `cmsbot lab --tls` generates (lab/tls.py), read back with `cryptography` and checked as a client
checks them."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from types import SimpleNamespace

import pytest
import spnego
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from requests_ntlm.requests_ntlm import ShimSessionSecurity, _get_certificate_hash
from winrm.encryption import Encryption

from lab import negotiate, tls

USER, PASSWORD = "cmsbot", "unit-password"


@pytest.fixture
def users(tmp_path, monkeypatch):
    monkeypatch.setenv("NTLM_USER_FILE", "")  # restored after the test, whatever user_file sets
    return negotiate.user_file(tmp_path, USER, PASSWORD)


def handshake(conn: negotiate.Connection, password: str = PASSWORD, username: str = USER) -> spnego.ContextProxy:
    client = spnego.client(username, password, hostname="fe01.contoso.com", service="HTTP", protocol="ntlm")
    challenge = conn.accept(client.step() or b"")
    assert challenge and not conn.authenticated
    assert conn.accept(client.step(challenge) or b"") is None
    return client


def pywinrm_encryption(client: spnego.ContextProxy) -> Encryption:
    """pywinrm's Encryption as its transport builds it: on requests_ntlm's session security over the context."""
    session = SimpleNamespace(auth=SimpleNamespace(session_security=ShimSessionSecurity(client)))
    return Encryption(session, "ntlm")  # type: ignore[arg-type]


def test_the_credential_file_and_who_it_accepts(users, tmp_path):
    assert users.read_text() == f":{USER}:{PASSWORD}\n" and users.stat().st_mode & 0o777 == 0o600
    conn = negotiate.Connection(tls=False)
    handshake(conn)
    assert conn.authenticated
    with pytest.raises(negotiate.Refused):
        handshake(negotiate.Connection(tls=False), password="wrong")
    negotiate.user_file(tmp_path, "CONTOSO\\cmsbot", PASSWORD)  # a domain account is matched with its domain
    with pytest.raises(negotiate.Refused):
        handshake(negotiate.Connection(tls=False))
    handshake(negotiate.Connection(tls=False), username="CONTOSO\\cmsbot")


def test_a_token_out_of_order_is_refused_and_a_new_negotiate_starts_again(users):
    client = spnego.client(USER, PASSWORD, hostname="h", service="HTTP", protocol="ntlm")
    other = spnego.server(protocol="ntlm", options=spnego.NegotiateOptions.use_ntlm)
    authenticate = client.step(other.step(client.step() or b"")) or b""
    conn = negotiate.Connection(tls=False)
    with pytest.raises(negotiate.Refused):  # an authenticate message for another connection's challenge
        conn.accept(authenticate)
    with pytest.raises(negotiate.Refused):
        conn.accept(b"not a token")
    handshake(conn)
    handshake(conn)  # authenticated, then a new handshake on the same connection
    assert conn.authenticated


def test_messages_both_ways_in_the_framing_pywinrm_writes_and_reads(users):
    conn = negotiate.Connection(tls=False)
    encryption = pywinrm_encryption(handshake(conn))
    for message in (b"<s:Envelope>request</s:Envelope>", "<s:Envelope>é€ 😀</s:Envelope>".encode(), b"x" * 70_000):
        body = encryption._encrypt_message(message, "fe01") + encryption.MIME_BOUNDARY + b"--\r\n"
        assert message not in body and negotiate.unseal(conn.context, body) == message
        answer = message.replace(b"request", b"response")
        sealed = negotiate.seal(conn.context, answer)
        response = SimpleNamespace(content=sealed, headers={"Content-Type": negotiate.CONTENT_TYPE},
                                   request=SimpleNamespace(url="http://127.0.0.1:5985/wsman/fe01"))
        assert encryption.parse_encrypted_response(response) == answer  # type: ignore[arg-type]


def test_an_http_response_is_sealed_with_its_headers_rewritten(users):
    conn = negotiate.Connection(tls=False)
    encryption = pywinrm_encryption(handshake(conn))
    assert conn.context is not None
    body = b"<s:Envelope>fault</s:Envelope>"
    response = (b"HTTP/1.1 500 Internal Server Error\r\nServer: Microsoft-HTTPAPI/2.0\r\n"
                b"Content-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: 30\r\n\r\n" + body)
    head, _, sealed = negotiate.sealed_response(response, conn.context).partition(b"\r\n\r\n")
    assert head.split(b"\r\n") == [b"HTTP/1.1 500 Internal Server Error", b"Server: Microsoft-HTTPAPI/2.0",
                                   f"Content-Type: {negotiate.CONTENT_TYPE}".encode(),
                                   f"Content-Length: {len(sealed)}".encode()]
    response_ = SimpleNamespace(content=sealed, headers={"Content-Type": negotiate.CONTENT_TYPE},
                                request=SimpleNamespace(url="http://h/wsman"))
    assert encryption.parse_encrypted_response(response_) == body  # type: ignore[arg-type]
    empty = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert negotiate.sealed_response(empty, conn.context) == empty


def test_what_unseal_refuses(users):
    conn = negotiate.Connection(tls=False)
    encryption = pywinrm_encryption(handshake(conn))
    good = encryption._encrypt_message(b"<a/>", "h") + encryption.MIME_BOUNDARY + b"--\r\n"
    with pytest.raises(negotiate.Undecryptable, match="not an MS-WSMV"):
        negotiate.unseal(conn.context, b"<s:Envelope/>")
    with pytest.raises(negotiate.Undecryptable, match="not an MS-WSMV"):
        negotiate.unseal(conn.context, good.removesuffix(b"--Encrypted Boundary--\r\n"))
    with pytest.raises(negotiate.Undecryptable, match="length"):
        negotiate.unseal(conn.context, good.replace(b"Length=4", b"Length=5"))
    with pytest.raises(negotiate.Undecryptable, match="does not decrypt"):
        negotiate.unseal(conn.context, good)  # a replay: the sequence number has moved on
    assert negotiate.is_sealed('Multipart/Encrypted;protocol="application/HTTP-SPNEGO-session-encrypted"')
    assert not negotiate.is_sealed("application/soap+xml;charset=UTF-8")
    assert not negotiate.is_sealed('multipart/encrypted;protocol="application/HTTP-CredSSP-session-encrypted"')


def test_the_generated_certificates(tmp_path):
    pki = tls.generate(tmp_path / "lab-tls", ["127.0.0.1", "localhost", "lab.example.test"])
    ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
    leaf = x509.load_pem_x509_certificate(pki.cert.read_bytes())
    alt = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert alt.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert alt.get_values_for_type(x509.DNSName) == ["localhost", "lab.example.test"]
    leaf.verify_directly_issued_by(ca)
    assert pki.key.stat().st_mode & 0o777 == 0o600
    now = dt.datetime.now(dt.UTC)
    expired, wrong, untrusted = (x509.load_pem_x509_certificate((pki.folder / f"{f}.pem").read_bytes())
                                 for f in tls.FAULTS)
    assert expired.not_valid_after_utc < now < leaf.not_valid_after_utc
    wrong_names = wrong.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert wrong_names.get_values_for_type(x509.DNSName) == [tls.WRONG_NAME]
    assert not wrong_names.get_values_for_type(x509.IPAddress)
    with pytest.raises(ValueError):  # signed by another CA, never written out
        untrusted.verify_directly_issued_by(ca)


def test_the_channel_binding_hash_is_the_one_an_ntlm_client_computes(tmp_path):
    pki = tls.generate(tmp_path, ["127.0.0.1"])
    der = x509.load_pem_x509_certificate(pki.cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert pki.context().end_point == tls.end_point_hash(der) == _get_certificate_hash(der)
    assert isinstance(pki.context("expired"), ssl.SSLContext)
    assert pki.context("expired").end_point != pki.context().end_point
