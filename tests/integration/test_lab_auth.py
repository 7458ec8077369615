"""The lab speaks the product's default WinRM path: HTTPS with a CA of its own (`cmsbot lab --tls`) and
Negotiate (NTLM) with message encryption over plain HTTP, besides Basic. The reference client is stock pywinrm
(winrm.Protocol); where a test needs a request pywinrm would never send, it drives pyspnego by hand on a raw
connection, framing the encrypted message from MS-WSMV 2.2.9.1.1.2 itself. And `cmsbot doctor`'s TLS check
against the lab's certificate faults."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import urllib.error
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from urllib.parse import urlsplit

import certifi
import pytest
import requests
import spnego
import winrm
from spnego.channel_bindings import GssChannelBindings
from winrm.exceptions import InvalidCredentialsError

from cms import topology as topo
from cms.doctor import CheckStatus
from cms.settings import Settings
from lab import processes
from tests.harness import LAB_PASSWORD, LAB_USER, TIME_FACTOR, LabProcess, cmsbot, scaled, stop_cleanly
from workers import probes
from workers.runs.doctor import network_checks
from workers.transport.winrm import Output

ENCRYPTED = 'multipart/encrypted;protocol="application/HTTP-SPNEGO-session-encrypted";boundary="Encrypted Boundary"'
FAULTY = {"fe02.contoso.com": "tls-expired", "fe03.contoso.com": "tls-wrong-name",
          "fe04.contoso.com": "tls-untrusted"}
CREATE = (b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
          b'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
          b'xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd" '
          b'xmlns:rsp="http://schemas.microsoft.com/wbem/wsman/1/windows/shell"><s:Header>'
          b"<a:Action>http://schemas.xmlsoap.org/ws/2004/09/transfer/Create</a:Action>"
          b"<a:MessageID>uuid:00000000-0000-0000-0000-000000000001</a:MessageID>"
          b"<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI></s:Header>"
          b"<s:Body><rsp:Shell><rsp:InputStreams>stdin</rsp:InputStreams>"
          b"<rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell></s:Body></s:Envelope>")


def endpoint(lab: LabProcess, server: str = "fe01.contoso.com") -> str:
    url = topo.load(lab.topology).server(server).endpoint
    assert url is not None
    return url


def cms_status(p: winrm.Protocol) -> dict:
    """cms-status through `p` (open_shell, run_command, get_command_output, close_shell): its decoded answer."""
    shell_id = p.open_shell(env_vars=probes.shell_env({"cms-status": {}}))
    command_id = p.run_command(shell_id, *probes.command("cms-status"))
    out, err, code = p.get_command_output(shell_id, command_id)
    p.cleanup_command(shell_id, command_id)
    p.close_shell(shell_id)
    return probes.decode("cms-status", Output(out, err, code))


def content_types(p: winrm.Protocol) -> list[str]:
    """The session pywinrm talks through (its NTLM context set up, for "always" the empty message sent), and a
    list that fills with the Content-Type of every response it receives from then on."""
    session = p.transport.build_session()
    seen: list[str] = []
    session.hooks["response"].append(lambda r, **_: seen.append(r.headers.get("Content-Type", "")))
    return seen


class Lab(processes.LabProcess):
    """The harness's lab with its `tls` and `auth` options, on the suite's time factor."""

    factor = TIME_FACTOR


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Plain HTTP, Basic and NTLM (the suite's own `lab` serves HTTPS)."""
    lab = Lab(tmp_path_factory.mktemp("httplab"), tls=False)
    yield lab
    stop_cleanly(lab)


@pytest.fixture(scope="module")
def tls_lab(tmp_path_factory):
    """HTTPS, Basic and NTLM; fe02, fe03 and fe04 get listeners of their own for their certificate faults."""
    lab = Lab(tmp_path_factory.mktemp("tlslab"), *[a for server, name in FAULTY.items()
                                                  for a in ("--scenario", f"{name}:{server}")], tls=True)
    yield lab
    stop_cleanly(lab)


@pytest.fixture(scope="module")
def ntlm_lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("ntlmlab"), "--servers", "2", auth="ntlm")
    yield lab
    stop_cleanly(lab)


# -- pywinrm, every way the product can be configured ----------------------------------------------------


def test_ntlm_over_http_encrypts_every_message_both_ways(lab):
    lab.scenarios()
    p = winrm.Protocol(endpoint(lab), transport="ntlm", username=LAB_USER, password=LAB_PASSWORD,
                       message_encryption="always")
    seen = content_types(p)
    assert cms_status(p)["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"
    # Create, Command, Receive(s), Signal, Delete: each answered encrypted (pywinrm decrypted every one)
    assert len(seen) >= 5 and set(seen) == {ENCRYPTED}
    assert [c["probe"] for c in lab.stats()["commands"]] == ["cms-status"]


def test_ntlm_over_https_without_message_encryption(tls_lab):
    """pywinrm's message_encryption='auto' does not encrypt over HTTPS: TLS protects the messages, and the
    NTLM authentication is bound to the listener's certificate (channel binding)."""
    tls_lab.scenarios(*[f"{name}:{server}" for server, name in FAULTY.items()])
    assert tls_lab.ca is not None and endpoint(tls_lab).startswith("https://")
    p = winrm.Protocol(endpoint(tls_lab), transport="ntlm", username=LAB_USER, password=LAB_PASSWORD,
                       ca_trust_path=str(tls_lab.ca))
    seen = content_types(p)
    assert cms_status(p)["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"
    assert p.transport.encryption is None and seen and all(s.startswith("application/soap+xml") for s in seen)


def test_basic_over_https_and_over_http(tls_lab, lab):
    lab.scenarios()
    for p in (winrm.Protocol(endpoint(tls_lab), transport="basic", username=LAB_USER, password=LAB_PASSWORD,
                             ca_trust_path=str(tls_lab.ca)),
              winrm.Protocol(endpoint(lab), transport="basic", username=LAB_USER, password=LAB_PASSWORD,
                             server_cert_validation="ignore")):  # plain HTTP on loopback: no certificate
        assert cms_status(p)["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"


@pytest.mark.parametrize("how", ["ntlm-http", "ntlm-https", "basic-http"])
def test_a_wrong_password_is_invalid_credentials(lab, tls_lab, how):
    lab.scenarios()
    transport, scheme = how.split("-")
    target = tls_lab if scheme == "https" else lab
    p = winrm.Protocol(endpoint(target), transport=transport, username=LAB_USER, password="wrong",
                       ca_trust_path=str(tls_lab.ca), message_encryption="auto")
    with pytest.raises(InvalidCredentialsError):
        p.open_shell()


def test_fault_401_rejects_ntlm_as_well(lab):
    lab.scenarios("fault-401:fe01.contoso.com")
    p = winrm.Protocol(endpoint(lab), transport="ntlm", username=LAB_USER, password=LAB_PASSWORD,
                       message_encryption="always")
    with pytest.raises(InvalidCredentialsError):
        p.open_shell()
    other = winrm.Protocol(endpoint(lab, "fe02.contoso.com"), transport="ntlm", username=LAB_USER,
                           password=LAB_PASSWORD, message_encryption="always")
    other.close_shell(other.open_shell())


def test_a_certificate_not_in_the_trust_path_is_an_ssl_error(tls_lab):
    tls_lab.scenarios()
    p = winrm.Protocol(endpoint(tls_lab), transport="ntlm", username=LAB_USER, password=LAB_PASSWORD,
                       ca_trust_path=certifi.where())  # public CAs only: the lab's own CA is not among them
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        p.open_shell()


def test_a_lab_that_accepts_only_ntlm_offers_only_negotiate(ntlm_lab):
    ntlm_lab.scenarios()
    basic = winrm.Protocol(endpoint(ntlm_lab), transport="basic", username=LAB_USER, password=LAB_PASSWORD,
                           server_cert_validation="ignore")
    with pytest.raises(InvalidCredentialsError):
        basic.open_shell()
    assert _unauthenticated_401(endpoint(ntlm_lab)).msg.get_all("WWW-Authenticate") == ["Negotiate"]
    p = winrm.Protocol(endpoint(ntlm_lab), transport="ntlm", username=LAB_USER, password=LAB_PASSWORD,
                       message_encryption="always")
    assert cms_status(p)["Store"]["ActiveMasterFqdn"] == "fe01.contoso.com"


# -- by hand: what pywinrm never sends ---------------------------------------------------------------------


class Negotiator:
    """One keep-alive HTTP(S) connection to a lab server and an NTLM client context (pyspnego) on it."""

    def __init__(self, url: str, password: str = LAB_PASSWORD, ca: Path | None = None,
                 bindings: GssChannelBindings | None = None):
        parts = urlsplit(url)
        self.path = parts.path
        if parts.scheme == "https":
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=scaled(10),
                context=ssl.create_default_context(cafile=str(ca)))
        else:
            self.conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=scaled(10))
        self.conn.connect()
        self.context = spnego.client(LAB_USER, password, hostname=parts.hostname, service="HTTP", protocol="ntlm",
                                     channel_bindings=bindings)

    def post(self, body: bytes, headers: dict[str, str]) -> Reply:
        self.conn.request("POST", self.path, body=body, headers=headers)
        response = self.conn.getresponse()
        return Reply(response.status, response.msg, response.read())

    def authenticate(self, body: bytes = b"") -> Reply:
        """The handshake on this connection; the authenticate message carries `body`. The last response."""
        token = self.context.step()
        while True:
            response = self.post(body, {"Authorization": f"Negotiate {base64.b64encode(token or b'').decode()}",
                                        "Content-Type": "application/soap+xml;charset=UTF-8"})
            offered = response.headers.get("WWW-Authenticate") or ""
            if response.status != 401 or not offered.startswith("Negotiate "):
                return response
            token = self.context.step(base64.b64decode(offered.split(" ", 1)[1]))

    def sealed(self, message: bytes) -> bytes:
        """MS-WSMV 2.2.9.1.1.2, written here from the specification: the part naming the original content, then
        the signature's length (32-bit little-endian), the signature and the sealed message."""
        wrapped = self.context.wrap_winrm(message)
        return (b"--Encrypted Boundary\r\n\tContent-Type: application/HTTP-SPNEGO-session-encrypted\r\n"
                b"\tOriginalContent: type=application/soap+xml;charset=UTF-8;Length=%d\r\n"
                b"--Encrypted Boundary\r\n\tContent-Type: application/octet-stream\r\n" % len(message)
                + len(wrapped.header).to_bytes(4, "little") + wrapped.header + wrapped.data
                + b"--Encrypted Boundary--\r\n")

    def opened(self, body: bytes) -> bytes:
        """The message of an encrypted body (the reverse of `sealed`)."""
        data = body.split(b"\tContent-Type: application/octet-stream\r\n", 1)[1].removesuffix(b"--Encrypted Boundary--\r\n")
        length = int.from_bytes(data[:4], "little")
        return self.context.unwrap_winrm(data[4:4 + length], data[4 + length:])

    def close(self) -> None:
        self.conn.close()


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes


def _unauthenticated_401(url: str) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=scaled(10))
    conn.request("POST", parts.path, body=CREATE, headers={"Content-Type": "application/soap+xml;charset=UTF-8"})
    response = conn.getresponse()
    conn.close()
    return response


def test_an_unencrypted_message_on_an_ntlm_connection_over_http_is_refused(lab):
    """AllowUnencrypted=false: the authentication succeeds, the message in clear is refused with 401 (so
    pywinrm says the credentials were rejected), whether it rides on the authenticate message or comes after
    encrypted ones on the same connection."""
    lab.scenarios()
    url = endpoint(lab)
    n = Negotiator(url)
    refused = n.authenticate(CREATE)  # the handshake completes with a SOAP message in clear
    assert refused.status == 401 and refused.headers["Connection"] == "close"
    assert refused.headers.get_all("WWW-Authenticate") == ["Negotiate", 'Basic realm="WSMAN"']
    n.close()

    n = Negotiator(url)
    assert n.authenticate().status == 200  # the empty message pywinrm sets encryption up with
    created = n.post(n.sealed(CREATE), {"Content-Type": ENCRYPTED})
    assert created.status == 200 and created.headers["Content-Type"] == ENCRYPTED
    assert b"ResourceCreated" not in created.body and b"ResourceCreated" in n.opened(created.body)
    clear = n.post(CREATE, {"Content-Type": "application/soap+xml;charset=UTF-8"})
    assert clear.status == 401 and clear.headers["Connection"] == "close"
    n.close()
    assert lab.stats()["shells"] == {"fe01.contoso.com": 1}  # only the encrypted Create made a shell

    p = winrm.Protocol(url, transport="ntlm", username=LAB_USER, password=LAB_PASSWORD, message_encryption="never")
    with pytest.raises(InvalidCredentialsError):
        p.open_shell()


def test_a_tampered_encrypted_message_is_refused(lab):
    lab.scenarios()
    n = Negotiator(endpoint(lab))
    assert n.authenticate().status == 200
    body = bytearray(n.sealed(CREATE))
    body[-40] ^= 0xFF  # one bit of the sealed message: its signature no longer checks
    assert n.post(bytes(body), {"Content-Type": ENCRYPTED}).status == 400
    n.close()
    assert lab.stats()["shells"] == {}


def test_ntlm_over_https_is_bound_to_the_listeners_certificate(tls_lab):
    """Channel binding (RFC 5929 tls-server-end-point, checked by a host at CbtHardeningLevel Relaxed when the
    client sends it): the hash of the certificate the client saw authenticates; any other is refused, as when a
    proxy in between presented its own certificate."""
    tls_lab.scenarios()
    url = endpoint(tls_lab)
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=scaled(10)) as raw, \
            ssl.create_default_context(cafile=str(tls_lab.ca)).wrap_socket(raw, server_hostname=parts.hostname) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    seen = hashlib.sha256(der).digest()  # the certificate is signed with SHA-256: RFC 5929 4.1 hashes with it
    for digest, status in ((seen, 200), (hashlib.sha256(b"another certificate").digest(), 401)):
        n = Negotiator(url, ca=tls_lab.ca, bindings=GssChannelBindings(
            application_data=b"tls-server-end-point:" + digest))
        assert n.authenticate().status == status
        n.close()


# -- the certificates, and `cmsbot doctor`'s TLS check --------------------------------------------------------


def _handshake(url: str, ca: Path) -> str | None:
    """The reason a verifying client refuses the certificate at `url` (None: it verifies)."""
    parts = urlsplit(url)
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=scaled(10)) as raw:
        try:
            context.wrap_socket(raw, server_hostname=parts.hostname).close()
        except ssl.SSLCertVerificationError as e:
            return e.verify_message
    return None


def test_the_certificate_faults_fail_verification_for_their_reason(tls_lab):
    tls_lab.scenarios(*[f"{name}:{server}" for server, name in FAULTY.items()])
    assert tls_lab.ca is not None
    reasons = {s.fqdn: _handshake(s.endpoint, tls_lab.ca) for s in topo.load(tls_lab.topology).servers if s.endpoint}
    assert reasons.pop("fe02.contoso.com") == "certificate has expired"
    assert (reasons.pop("fe03.contoso.com") or "").startswith("IP address mismatch")  # it names another host
    assert reasons.pop("fe04.contoso.com") == "unable to get local issuer certificate"  # another CA
    assert reasons == {"fe01.contoso.com": None, "dir01.contoso.com": None, "med01.contoso.com": None}


def test_a_servers_own_listener_follows_the_scenarios_set_at_run_time(tls_lab):
    tls_lab.scenarios()
    assert tls_lab.ca is not None
    assert _handshake(endpoint(tls_lab, "fe02.contoso.com"), tls_lab.ca) is None
    tls_lab.scenarios("tls-expired:fe03.contoso.com")
    assert _handshake(endpoint(tls_lab, "fe03.contoso.com"), tls_lab.ca) == "certificate has expired"
    with pytest.raises(urllib.error.HTTPError) as refused:  # dir01 has no listener of its own
        tls_lab.scenarios("tls-expired:dir01.contoso.com")
    assert refused.value.code == 400 and "needs a lab started with --tls" in json.loads(refused.value.read())["error"]


def test_the_doctor_names_tls_for_exactly_the_servers_with_a_certificate_fault(tls_lab):
    tls_lab.scenarios(*[f"{name}:{server}" for server, name in FAULTY.items()])
    topology = topo.load(tls_lab.topology)
    settings = Settings(winrm_transport="ntlm", winrm_scheme="https", winrm_ca_bundle=tls_lab.ca,
                        winrm_connect_timeout=scaled(5))
    failing = {}
    for server in topology.servers:
        if not server.winrm:
            continue
        found, go_on = network_checks(topology, settings, server.fqdn)
        failed = [name for name, check in found.items() if check.status is CheckStatus.fail]
        if failed:
            failing[server.fqdn] = (failed, found["tls"].detail)
        else:
            assert go_on and found["tls"].status is CheckStatus.ok and found["winrm-port"].status is CheckStatus.ok
    assert {fqdn: names for fqdn, (names, _) in failing.items()} == {fqdn: ["tls"] for fqdn in FAULTY}
    assert "certificate has expired" in failing["fe02.contoso.com"][1]
    assert "IP address mismatch" in failing["fe03.contoso.com"][1]
    assert "unable to get local issuer certificate" in failing["fe04.contoso.com"][1]


# -- the command line ---------------------------------------------------------------------------------------


def test_a_certificate_fault_without_tls_is_refused(lab, tmp_path):
    proc = subprocess.run(cmsbot("lab", "--port", "0", "--topology-out", str(tmp_path / "t.yaml"),
                                 "--scenario", "tls-expired:fe02.contoso.com"),
                          capture_output=True, text=True, timeout=scaled(30))
    assert proc.returncode == 2 and "tls-expired:fe02.contoso.com: a certificate fault needs --tls" in proc.stderr
    with pytest.raises(urllib.error.HTTPError) as refused:  # nor at run time, on a plain HTTP lab
        lab.scenarios("tls-wrong-name:fe02.contoso.com")
    assert refused.value.code == 400


def test_an_unknown_auth_scheme_is_refused(tmp_path):
    proc = subprocess.run(cmsbot("lab", "--port", "0", "--topology-out", str(tmp_path / "t.yaml"),
                                 "--auth", "basic,kerberos"), capture_output=True, text=True, timeout=scaled(30))
    assert proc.returncode == 2 and "--auth takes a comma list of basic and ntlm" in proc.stderr
