"""`cmsbot lab --tls`: a private CA and the certificates of the lab's HTTPS listeners.

Every start generates (with `cryptography`) a CA of its own and, signed by it, the certificate of the main
listener: named 127.0.0.1, localhost and the advertised host, as a WinRM HTTPS listener's certificate names
the host a client connects to. A client trusts the lab by trusting `ca.pem` (CMSBOT_WINRM_CA_BUNDLE).

The TLS scenarios give a server a listener of its own (all servers share the main port, and a client sends no
SNI to an address, so the certificate cannot be chosen per server there): `tls-expired` presents a
certificate past its notAfter, `tls-wrong-name` one that names another host, `tls-untrusted` one from a CA
no client was told to trust. Which one is chosen at each handshake, from the server's state, so a scenario
changed at run time (the control API) takes effect on the next connection.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FAULTS = ("expired", "wrong-name", "untrusted")  # what a server's own listener can present (LabServer.tls)
WRONG_NAME = "another-host.contoso.com"  # the only name on tls-wrong-name's certificate


class ServerContext(ssl.SSLContext):
    """A server-side context that knows its certificate's RFC 5929 tls-server-end-point hash (the channel
    binding an NTLM client computes from the certificate it was shown)."""

    end_point: bytes = b""


@dataclass
class Pki:
    folder: Path
    ca: Path  # what a client trusts
    cert: Path  # the main listener's certificate and key
    key: Path
    faulty: dict[str, tuple[Path, Path]]  # fault -> its certificate and key
    _contexts: dict[str | None, ServerContext] = field(default_factory=dict)

    def context(self, fault: str | None = None) -> ServerContext:
        """The context presenting the valid certificate, or the faulty one named."""
        if fault not in self._contexts:
            cert, key = (self.cert, self.key) if fault is None else self.faulty[fault]
            self._contexts[fault] = _server_context(cert, key)
        return self._contexts[fault]

    def listener(self, fault_of: Callable[[], str | None]) -> ServerContext:
        """The context of a server's own listener: at each handshake, the certificate its state names."""
        base = _server_context(self.cert, self.key)

        def choose(sock: ssl.SSLObject, _server_name: str | None, _context: ssl.SSLContext) -> None:
            # called for every ClientHello, with or without SNI; assigning the context here switches the
            # certificate this handshake presents
            sock.context = self.context(fault_of())
        base.sni_callback = choose
        return base


def generate(folder: Path, names: list[str]) -> Pki:
    """A new CA, the listener's certificate for `names` (addresses and DNS names) and the faulty ones, written
    into `folder` as PEM: ca.pem, server.pem, server.key, and <fault>.pem / <fault>.key."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = _ca("cmsbot lab CA", now)
    stranger = _ca("cmsbot lab untrusted CA", now)  # signs tls-untrusted's certificate; never written out
    (folder / "ca.pem").write_bytes(ca[1].public_bytes(serialization.Encoding.PEM))
    year = now + dt.timedelta(days=365)
    faulty = {
        "expired": _leaf(ca, names, now - dt.timedelta(days=2), folder / "expired"),
        "wrong-name": _leaf(ca, [WRONG_NAME], year, folder / "wrong-name"),
        "untrusted": _leaf(stranger, names, year, folder / "untrusted"),
    }
    return Pki(folder, folder / "ca.pem", *_leaf(ca, names, year, folder / "server"), faulty)


def end_point_hash(der: bytes) -> bytes:
    """RFC 5929 4.1 tls-server-end-point: the certificate hashed with its signature's hash, SHA-256 when that is
    MD5 or SHA-1."""
    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    name = algorithm.name if algorithm is not None and algorithm.name not in ("md5", "sha1") else "sha256"
    return hashlib.new(name, der).digest()


# -- helpers -----------------------------------------------------------------------


def _server_context(cert: Path, key: Path) -> ServerContext:
    context = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    der = x509.load_pem_x509_certificate(cert.read_bytes()).public_bytes(serialization.Encoding.DER)
    context.end_point = end_point_hash(der)
    return context


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str, now: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], names: list[str], not_after: dt.datetime,
          stem: Path) -> tuple[Path, Path]:
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):  # in order, once each
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(min(not_after, dt.datetime.now(dt.UTC)) - dt.timedelta(days=30))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # the private key readable by its owner only, from its creation on
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_file, key_file
