"""`cmsbot doctor`: is every server of the topology ready for cmsbot? One row per server, its first
failing check and the fix (cms/doctor.py grades the facts; this module gathers them).

For every server in scope, in parallel: its name resolves (DNS), TCP to the WinRM port and an answer
from the listener there (an unauthenticated POST: the 401 names the authentication schemes it offers),
TLS when https (the chain to CMSBOT_WINRM_CA_BUNDLE or certifi's bundle, the name, the days left);
then, in parallel over WinRM with the configured credentials, the doctor probe (PowerShell, module,
cmdlets, the account's groups, the WinRM limits); last, from a CMS Front End, the reachability probe's
TCP 445 / 4443 tests to every server in scope (the replication paths).
"""

from __future__ import annotations

import math
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import certifi

from cms import doctor as d
from cms.doctor import Check, CheckStatus, Checkup, DoctorAnswer, DoctorReport
from cms.models import HostErrorKind, PortTest, Reachability
from cms.ps_json import is_address
from cms.settings import Settings
from cms.topology import ServerRole, Target, Topology
from hub.contract import utcnow
from workers import probes
from workers.runs.status import cms_candidates, probe_params
from workers.transport.fleet import Fleet, HostRun, endpoint, envelope_size, packed
from workers.transport.winrm import HostFailure

PORT_TIMEOUT_MS = 3000
CMS_SOURCES = 3  # CMS Front Ends tried for the replication paths
MAX_HEAD = 64 * 1024  # bytes of the listener's answer read

# the WWW-Authenticate schemes each CMSBOT_WINRM_TRANSPORT can use
SCHEMES = {"ntlm": {"negotiate", "ntlm"}, "kerberos": {"negotiate", "kerberos"}, "basic": {"basic"}}
ENABLE_AUTH = {"ntlm": "Negotiate", "kerberos": "Kerberos", "basic": "Basic"}


def _skip_rest(checks: dict[str, Check], reason: str) -> None:
    for name in d.CHECKS:
        if name != "replica-path":
            checks.setdefault(name, d.skip(name, reason))


def network_checks(topology: Topology, settings: Settings, fqdn: str) -> tuple[dict[str, Check], bool]:
    """DNS, the WinRM port and its listener, TLS and the authentication schemes offered; whether the
    server can be asked over WinRM next."""
    checks: dict[str, Check] = {}
    if not topology.server(fqdn).winrm:
        _skip_rest(checks, "winrm: false in the topology (a perimeter server): checked from the CMS Front End only")
        return checks, False
    try:
        url = endpoint(topology, settings, fqdn)
    except HostFailure as e:
        checks["winrm-port"] = d.fail("winrm-port", e.reason)
        _skip_rest(checks, "not checked: the topology's endpoint is refused")
        return checks, False
    parts = urlsplit(url)
    host, https = parts.hostname or fqdn, parts.scheme == "https"
    port = parts.port or (5986 if https else 5985)
    where = f"{host}:{port}"

    def stop(name: str, detail: str, fix: str) -> tuple[dict[str, Check], bool]:
        checks[name] = d.fail(name, detail, fix)
        _skip_rest(checks, f"not checked: {name} failed")
        return checks, False

    # -- DNS --
    if is_address(host):
        checks["dns"] = d.ok("dns", f"{host} is an address")
    else:
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            return stop("dns", f"{host} does not resolve ({getattr(e, 'strerror', None) or e})",
                        f"add a DNS (A) record for {host} where cmsbot runs, or give the server an `endpoint:` in "
                        "the topology")
        addresses = sorted({str(info[4][0]) for info in found})
        checks["dns"] = d.ok("dns", f"{host} resolves to {', '.join(addresses[:3])}")

    # -- TCP to the WinRM port --
    open_winrm = (f"on {fqdn}: `winrm quickconfig` (or Enable-PSRemoting{' with an HTTPS listener' if https else ''})"
                  f", and allow TCP {port} in its firewall and every firewall between cmsbot and it")
    timeout = settings.winrm_connect_timeout
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return stop("winrm-port", f"TCP {where}: connection refused (nothing listens there)", open_winrm)
    except TimeoutError:
        return stop("winrm-port", f"TCP {where}: no answer within {timeout:g} s (dropped by a firewall?)", open_winrm)
    except OSError as e:
        return stop("winrm-port", f"TCP {where}: {e.strerror or e}", open_winrm)

    conn: socket.socket = raw
    try:
        # -- TLS --
        if https:
            context = ssl.create_default_context(cafile=str(settings.winrm_ca_bundle or certifi.where()))
            try:
                conn = context.wrap_socket(raw, server_hostname=host)
            except ssl.SSLCertVerificationError as e:
                return stop("tls", f"the certificate of {where} is refused: {e.verify_message}",
                            "bind a certificate to the HTTPS listener that names the host (CN or SAN) and chains to "
                            "a CA in CMSBOT_WINRM_CA_BUNDLE; renew it if it expired")
            except (ssl.SSLError, OSError) as e:
                return stop("tls", f"TLS handshake with {where} failed: {e}",
                            "check the HTTPS listener's certificate binding (winrm enumerate winrm/config/listener)")
            cert = conn.getpeercert() or {}
            left = math.floor((ssl.cert_time_to_seconds(str(cert.get("notAfter"))) - time.time()) / 86400) \
                if cert.get("notAfter") else None
            if left is not None and left <= d.CERT_WARN_DAYS:
                checks["tls"] = d.warn("tls", f"the certificate of {where} is valid but expires in {left} days",
                                       "renew the WinRM listener's certificate")
            else:
                checks["tls"] = d.ok("tls", f"the certificate chains to a trusted CA and names {host}"
                                     + (f"; {left} days left" if left is not None else ""))
        else:
            checks["tls"] = d.skip("tls", "not checked over http (the certificate chain, name and expiry are checked "
                                          "for https endpoints only)")
        # -- the listener, and the schemes it offers --
        conn.settimeout(timeout)
        path = parts.path or "/wsman"
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Length: 0\r\n"
                     "Content-Type: application/soap+xml;charset=UTF-8\r\nConnection: close\r\n\r\n".encode("ascii"))
        head = b""
        try:
            while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
        except OSError:
            pass
    finally:
        conn.close()
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n") if head else []
    status = lines[0].split(" ", 2) if lines else []
    if len(status) < 2 or not status[1].isdigit():
        return stop("winrm-port", f"TCP {where} connects, but the connection closes without an HTTP answer (WinRM "
                                  "is not listening there, or a device in between drops the request)", open_winrm)
    code = int(status[1])
    if code == 404:
        return stop("winrm-port", f"{where} answers HTTP 404 for {path}: no WinRM listener at that path",
                    "check the endpoint (the default path is /wsman) or the listener's URLPrefix")
    checks["winrm-port"] = d.ok("winrm-port", f"TCP {where} connects and the listener answers (HTTP {code})")
    offered = {line.split(":", 1)[1].strip().split(" ")[0].lower() for line in lines[1:]
               if line.lower().startswith("www-authenticate:")}
    transport = settings.winrm_transport
    if code == 401 and offered and not offered & SCHEMES[transport]:
        return stop("auth", f"the listener offers {', '.join(sorted(offered))}, not {transport} "
                            "(CMSBOT_WINRM_TRANSPORT)",
                    f"on {fqdn}: winrm set winrm/config/service/auth @{{{ENABLE_AUTH[transport]}=\"true\"}}, or set "
                    "CMSBOT_WINRM_TRANSPORT to a scheme it offers")
    return checks, True


def _shells_needed(calls: dict[str, dict[str, Any]], limit: int) -> int:
    """How many shells the fleet opens on a server for these probes."""
    return len(packed(calls, limit))


def _graded(topology: Topology, settings: Settings, fqdn: str, run: HostRun, checks: dict[str, Check],
            cmdlets: list[str], status_calls: dict[str, dict[str, Any]]) -> None:
    """What the doctor probe's run on `fqdn` says: authentication first, then what its answer shows."""
    version = topology.deployment.version
    transport = settings.winrm_transport
    if run.error is not None:
        e = run.error
        if e.kind is HostErrorKind.auth_failed:
            checks["auth"] = d.fail("auth", f"{e.reason} ({transport})",
                                    "check CMSBOT_WINRM_USERNAME and CMSBOT_WINRM_PASSWORD (DOMAIN\\user or "
                                    "user@domain for ntlm and kerberos); the account must be allowed to use WinRM on "
                                    "the server (local Administrators, or Remote Management Users)")
        elif e.kind is HostErrorKind.unreachable:
            checks["winrm-port"] = d.fail("winrm-port", e.reason, f"on {fqdn}: check the WinRM service runs and "
                                          "that nothing between cmsbot and it resets connections")
        elif "413" in e.reason or "envelope" in e.reason.lower():
            checks["auth"] = d.ok("auth", f"the listener accepts {transport}")
            checks["winrm-limits"] = d.fail("winrm-limits", e.reason,
                                            "as an administrator on the server: Set-Item "
                                            "WSMan:\\localhost\\MaxEnvelopeSizekb 500")
        elif e.kind is HostErrorKind.timed_out:
            checks["auth"] = d.ok("auth", f"the listener accepts {transport}")
            checks["powershell"] = d.fail("powershell", f"the doctor probe did not finish: {e.reason}",
                                          "log on to the server: a hung powershell.exe, or a server too busy to "
                                          "start one")
        else:
            checks["auth"] = d.ok("auth", f"a shell opens with {transport}")
            checks["powershell"] = d.fail("powershell", f"powershell.exe could not run the probe: {e.reason}",
                                          "run `powershell.exe -NoProfile -Command $PSVersionTable` on the server "
                                          "as the WinRM account and fix what it says")
        _skip_rest(checks, "not checked: " + next(n for n in d.CHECKS if n in checks
                                                   and checks[n].status is CheckStatus.fail) + " failed")
        return
    answer = run.answer("doctor", DoctorAnswer)
    if answer is None:
        checks["auth"] = d.ok("auth", f"a shell opens with {transport}")
        checks["powershell"] = d.fail("powershell", f"the doctor probe's answer cannot be read: {run.failure}")
        _skip_rest(checks, "not checked: the answer cannot be read")
        return
    checks["auth"] = d.ok("auth", f"{answer.identity or settings.winrm_username} opens a shell with {transport}")
    checks["powershell"] = d.grade_powershell(answer, version)
    checks["module"] = d.grade_module(answer, version)
    checks["cmdlets"] = d.grade_cmdlets(answer, cmdlets)
    checks["rights"] = d.grade_rights(answer)
    limit = settings.winrm_max_envelope_kb * 1024
    need = max((envelope_size(probes.shell_env({name: params})) for name, params in status_calls.items()), default=0)
    checks["winrm-limits"] = d.grade_limits(answer, need_kb=math.ceil(need / 1024),
                                            configured_kb=settings.winrm_max_envelope_kb,
                                            shells_needed=_shells_needed(status_calls, limit))


def _path_targets(topology: Topology, scope: list[str], source: str) -> list[dict[str, Any]]:
    targets = []
    for fqdn in scope:
        if fqdn == source:
            continue
        s = topology.server(fqdn)
        if topology.role_of(fqdn) is ServerRole.edge:
            targets.append({"fqdn": fqdn, "address": s.internal_address or fqdn, "port": 4443, "share": False})
        else:
            targets.append({"fqdn": fqdn, "address": fqdn, "port": 445, "share": False})
    return targets


def run_doctor(topology: Topology, settings: Settings, target: Target,
               on_progress: Callable[[str], None] | None = None) -> DoctorReport:
    scope = list(target.servers)
    say = on_progress or (lambda text: None)
    version = topology.deployment.version
    candidates = cms_candidates(topology)
    status_calls = probe_params(topology, topology.everything())

    def calls_for(server: str) -> dict[str, dict[str, Any]]:
        calls: dict[str, dict[str, Any]] = {"doctor": {"cmdlets": d.cmdlets_for(version, server in candidates)}}
        if server in candidates:
            calls["reachability"] = {"targets": _path_targets(topology, scope, server), "timeoutMs": PORT_TIMEOUT_MS}
        return calls

    say(f"checking {len(scope)} servers: DNS, the WinRM port, TLS")
    with ThreadPoolExecutor(max_workers=max(1, min(settings.fanout, len(scope))), thread_name_prefix="doctor") as pool:
        network = dict(zip(scope, pool.map(lambda s: network_checks(topology, settings, s), scope), strict=True))
    checks = {s: found[0] for s, found in network.items()}
    askable = [s for s, (_, ready) in network.items() if ready]
    notes: list[str] = []
    with Fleet(topology, settings, calls_for) as fleet:
        say(f"running the doctor probe on {len(askable)} servers over WinRM")
        runs = fleet.run_all({s: ["doctor"] for s in askable})
        for s in askable:
            _graded(topology, settings, s, runs[s], checks[s], calls_for(s)["doctor"]["cmdlets"], status_calls(s))
        # the replication paths, from a CMS Front End that answers
        tried = [c for c in candidates if c not in network or network[c][1]][:CMS_SOURCES]
        tried = [c for c in tried if not (c in runs and runs[c].error)]
        reach: Reachability | None = None
        source: str | None = None
        failures: list[str] = []
        for c in tried:
            if not _path_targets(topology, scope, c):
                source = c
                break
            say(f"testing the replication paths from {c}")
            run = fleet.run(c, ["reachability"])
            reach = run.answer("reachability", Reachability)
            if reach is not None:
                source = c
                break
            failures.append(f"{c}: {run.failure}")
    tests: dict[str, PortTest] = {t.fqdn: t for t in (reach.results if reach else [])}
    unchecked = (f"not tested: no CMS Front End answered ({'; '.join(failures)})" if failures
                 else "not tested: no CMS Front End could be asked" if not source else None)
    rows = []
    for fqdn in scope:
        found = checks[fqdn]
        if fqdn == source:
            found["replica-path"] = d.skip("replica-path", "the CMS Front End the paths are tested from")
        else:
            found["replica-path"] = d.grade_path(tests.get(fqdn), role=topology.role_of(fqdn), source=source,
                                                 unchecked=unchecked)
        rows.append(Checkup(server=fqdn, pool=topology.pool_of(fqdn).fqdn, role=topology.role_of(fqdn).value,
                            checks=[found[name] for name in d.CHECKS if name in found]))
    if reach is not None and reach.identity:
        notes.append(f"replication paths tested from {source} as {reach.identity}")
    return DoctorReport(scope=target.name if target.kind != "deployment" else "all", checked_at=utcnow(),
                        servers=rows, notes=notes)
