"""`cmsbot lab`: serve the simulated deployment until stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from cms import topology as topo
from cms.secret_files import read_secret
from cms.topology import Version
from lab import negotiate, tls
from lab.deployment import LabState, ScenarioError, apply, build
from lab.replay import Replay, ReplayError
from lab.wsman import HostConfig, Lab

DEFAULT_USER = "cmsbot"
DEFAULT_PASSWORD = "lab-password"
AUTH_SCHEMES = ("basic", "ntlm")


def make_state_factory(version: Version, servers: int, edge_winrm: bool = False, convergence_s: float = 2.0):
    def make(scenarios: list[str]) -> LabState:
        state = build(version, servers, edge_winrm)
        state.convergence = timedelta(seconds=convergence_s)
        for spec in scenarios:
            apply(state, spec)
        return state
    return make


def replay_state_factory(replay: Replay):
    def make(scenarios: list[str]) -> LabState:
        if scenarios:
            raise ScenarioError("a replay serves what was captured: it takes no scenarios")
        return replay.state()
    return make


async def serve(*, host: str, port: int, advertise: str, version: Version, servers: int, edge_winrm: bool,
                convergence_s: float, latency_ms: int, scenarios: list[str], topology_out: Path, username: str,
                password: str, config: HostConfig | None = None, replay: Replay | None = None,
                auth: frozenset[str] = frozenset(AUTH_SCHEMES), pki: tls.Pki | None = None) -> None:
    make = replay_state_factory(replay) if replay else make_state_factory(version, servers, edge_winrm, convergence_s)
    lab = Lab(make, scenarios, username, password, latency_ms, config, replay, auth)
    with tempfile.TemporaryDirectory(prefix="cmsbot-lab-") as work:
        if "ntlm" in auth:
            negotiate.user_file(Path(work), username, password)
        limit = 8 * 1024 * 1024
        server = await asyncio.start_server(lab.handle, host, port, backlog=1024, limit=limit,
                                            ssl=pki.context() if pki else None)
        bound = server.sockets[0].getsockname()[1]
        listeners, ports = [server], {}
        if pki:
            # a server with a certificate fault gets a listener of its own, presenting the certificate its state
            # names at each handshake (lab/tls.py); the topology points the server at it
            for s in lab.state.servers.values():
                if s.tls:
                    own = await asyncio.start_server(lab.handle, host, 0, limit=limit,
                                                     ssl=pki.listener(_fault_of(lab, s.fqdn)))
                    listeners.append(own)
                    ports[s.fqdn] = own.sockets[0].getsockname()[1]
            lab.tls_listeners = set(ports)
        scheme = "https" if pki else "http"
        source = replay.topology if replay else lab.state.topology
        topology = source(lambda fqdn: f"{scheme}://{advertise}:{ports.get(fqdn, bound)}/wsman/{fqdn}")
        topology_out.parent.mkdir(parents=True, exist_ok=True)
        # the CA goes on the first line too, so a client given only the topology can find what to trust
        trust = f"; CA {pki.ca}" if pki else ""
        topology_out.write_text(
            f"# written by `cmsbot lab` on port {bound}; control API: {scheme}://{advertise}:{bound}/_lab/{trust}\n"
            + topo.dump(topology),
            encoding="utf-8",
        )
        replaying = f" replaying {replay.folder}" if replay else ""
        ca = f", CA {pki.ca}" if pki else ""
        print(f"lab ready: {len(lab.state.servers)} servers{replaying}, topology {topology_out}{ca}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for listener in listeners:
                listener.close()
            for listener in listeners:
                await listener.wait_closed()


def _fault_of(lab: Lab, fqdn: str) -> Callable[[], str | None]:
    """The certificate fault `fqdn` has now (the control API may have changed the state since)."""
    def fault() -> str | None:
        s = lab.state.servers.get(fqdn)
        return s.tls if s is not None else None
    return fault


def main(args) -> int:
    password = os.environ.get("CMSBOT_WINRM_PASSWORD")
    if not password and os.environ.get("CMSBOT_WINRM_PASSWORD_FILE"):
        try:
            password = read_secret(os.environ["CMSBOT_WINRM_PASSWORD_FILE"], "CMSBOT_WINRM_PASSWORD_FILE")
        except ValueError as e:
            print(f"cmsbot lab: {e}", file=sys.stderr)
            return 2
    password = password or DEFAULT_PASSWORD
    username = os.environ.get("CMSBOT_WINRM_USERNAME") or DEFAULT_USER
    replay = None
    auth = frozenset(a.strip().lower() for a in (getattr(args, "auth", None) or ",".join(AUTH_SCHEMES)).split(","))
    if not auth or not auth <= set(AUTH_SCHEMES):
        print(f"cmsbot lab: --auth takes a comma list of {' and '.join(AUTH_SCHEMES)}, not {args.auth!r}",
              file=sys.stderr)
        return 2
    with_tls = bool(getattr(args, "tls", False))
    try:
        if getattr(args, "replay", None):
            replay = Replay.load(args.replay)
            replay_state_factory(replay)(args.scenario)
        else:
            state = make_state_factory(Version(args.product), args.servers, args.edge_winrm)(args.scenario)
            faulty = [f"tls-{s.tls}:{s.fqdn}" for s in state.servers.values() if s.tls]
            if faulty and not with_tls:
                raise ScenarioError(f"{', '.join(faulty)}: a certificate fault needs --tls")
    except (ScenarioError, ReplayError) as e:
        print(f"cmsbot lab: {e}", file=sys.stderr)
        return 2
    topology_out = Path(args.topology_out)
    config = HostConfig(max_envelope_kb=args.max_envelope_kb, max_shells_per_user=args.max_shells_per_user,
                        idle_timeout_s=args.idle_timeout_s, module_load_ms=args.module_load_ms)
    if config.max_envelope_kb < 32 or config.max_shells_per_user < 1 or config.idle_timeout_s <= 0 \
            or config.module_load_ms < 0:
        print("cmsbot lab: --max-envelope-kb must be at least 32 (WinRM's minimum), --max-shells-per-user at least 1, "
              "--idle-timeout-s above 0 and --module-load-ms not negative", file=sys.stderr)
        return 2
    advertise = args.advertise or ("127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host)
    pki = None
    if with_tls:
        tls_dir = Path(args.tls_dir) if getattr(args, "tls_dir", None) else topology_out.parent / "lab-tls"
        try:
            pki = tls.generate(tls_dir, ["127.0.0.1", "localhost", advertise])
        except OSError as e:
            print(f"cmsbot lab: cannot write the CA and certificates into {tls_dir}: {e.strerror}", file=sys.stderr)
            return 2
    try:
        asyncio.run(serve(host=args.host, port=args.port, advertise=advertise, version=Version(args.product),
                          servers=args.servers, edge_winrm=args.edge_winrm,
                          convergence_s=args.convergence_s, latency_ms=args.latency_ms, scenarios=args.scenario,
                          topology_out=topology_out, username=username, password=password,
                          config=config, replay=replay, auth=auth, pki=pki))
    except OSError as e:
        print(f"cmsbot lab: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    return 0
