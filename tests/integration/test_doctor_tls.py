"""`cmsbot doctor`'s TLS check against a real HTTPS listener (the lab has none): a local TLS server that
answers like a WinRM HTTPS listener (401 offering Negotiate and Basic) with certificates made here from a
test CA: valid, expiring soon, expired, for another name, from another CA."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cms.doctor import CheckStatus
from cms.settings import Settings
from cms.topology import Deployment, Pool, Server, ServerRole, Topology, Version
from workers.runs.doctor import network_checks

FQDN = "fe01.contoso.com"
NOW = dt.datetime.now(dt.UTC)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=30)).not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def make_leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], name: str, *, days_left: int,
              folder: Path) -> tuple[Path, Path]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=400)).not_valid_after(NOW + dt.timedelta(days=days_left))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = folder / f"{name}-{days_left}.pem", folder / f"{name}-{days_left}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@contextmanager
def https_listener(cert: Path, key: Path) -> Iterator[int]:
    """A TLS listener on loopback answering each request as a WinRM HTTPS listener does without credentials."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.settimeout(5)
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 401 \r\nServer: Microsoft-HTTPAPI/2.0\r\nWWW-Authenticate: Negotiate\r\n"
                                b"WWW-Authenticate: Basic realm=\"WSMAN\"\r\nContent-Length: 0\r\n"
                                b"Connection: close\r\n\r\n")
            except (ssl.SSLError, OSError):
                conn.close()  # the client refused the certificate: what a refused handshake looks like here

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def checks(port: int, ca_file: Path) -> dict:
    topology = Topology(deployment=Deployment(version=Version.sfb2019), cms_pool="pool01.contoso.com",
                        pools=[Pool(fqdn="pool01.contoso.com", role=ServerRole.frontend,
                                    servers=[Server(fqdn=FQDN, endpoint=f"https://localhost:{port}/wsman")])])
    settings = Settings(winrm_transport="basic", winrm_scheme="https", winrm_ca_bundle=ca_file,
                        winrm_connect_timeout=5)
    found, _ = network_checks(topology, settings, FQDN)
    return found


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca("cmsbot test CA")
    other = make_ca("another CA")
    ca_file, other_file = folder / "ca.pem", folder / "other.pem"
    ca_file.write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    other_file.write_bytes(other[1].public_bytes(serialization.Encoding.PEM))
    return folder, ca, ca_file, other_file


def test_a_valid_certificate_passes_and_says_how_long_it_has(pki):
    folder, ca, ca_file, _ = pki
    with https_listener(*make_leaf(ca, "localhost", days_left=400, folder=folder)) as port:
        found = checks(port, ca_file)
    assert found["tls"].status is CheckStatus.ok
    assert "chains to a trusted CA and names localhost; 399 days left" in found["tls"].detail \
        or "400 days left" in found["tls"].detail
    assert found["winrm-port"].status is CheckStatus.ok and "auth" not in found  # Basic is offered


def test_a_certificate_about_to_expire_is_a_warning(pki):
    folder, ca, ca_file, _ = pki
    with https_listener(*make_leaf(ca, "localhost", days_left=10, folder=folder)) as port:
        found = checks(port, ca_file)
    assert found["tls"].status is CheckStatus.warn and "expires in" in found["tls"].detail


@pytest.mark.parametrize(("name", "days_left", "trusted", "reason"), [
    ("localhost", -2, True, "certificate has expired"),
    ("other.contoso.com", 400, True, "Hostname mismatch"),
    ("localhost", 400, False, "unable to get local issuer certificate"),
])
def test_an_expired_wrong_name_or_untrusted_certificate_fails_the_tls_check(pki, name, days_left, trusted, reason):
    folder, ca, ca_file, other_file = pki
    with https_listener(*make_leaf(ca, name, days_left=days_left, folder=folder)) as port:
        found = checks(port, ca_file if trusted else other_file)
    assert found["tls"].status is CheckStatus.fail
    assert reason in found["tls"].detail
    assert "CMSBOT_WINRM_CA_BUNDLE" in (found["tls"].fix or "")
    assert found["auth"].status is CheckStatus.skip  # nothing after a failed check is tried
