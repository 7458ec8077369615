"""`cmsbot lab`: serve the simulated deployment until stopped."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

from cms import topology as topo
from cms.secret_files import read_secret
from cms.topology import Version
from lab.deployment import LabState, ScenarioError, apply, build
from lab.replay import Replay, ReplayError
from lab.wsman import HostConfig, Lab

DEFAULT_USER = "cmsbot"
DEFAULT_PASSWORD = "lab-password"


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
                password: str, config: HostConfig | None = None, replay: Replay | None = None) -> None:
    make = replay_state_factory(replay) if replay else make_state_factory(version, servers, edge_winrm, convergence_s)
    lab = Lab(make, scenarios, username, password, latency_ms, config, replay)
    server = await asyncio.start_server(lab.handle, host, port, backlog=1024, limit=8 * 1024 * 1024)
    bound = server.sockets[0].getsockname()[1]
    source = replay.topology if replay else lab.state.topology
    topology = source(lambda fqdn: f"http://{advertise}:{bound}/wsman/{fqdn}")
    topology_out.parent.mkdir(parents=True, exist_ok=True)
    topology_out.write_text(
        f"# written by `cmsbot lab` on port {bound}; control API: http://{advertise}:{bound}/_lab/\n"
        + topo.dump(topology),
        encoding="utf-8",
    )
    replaying = f" replaying {replay.folder}" if replay else ""
    print(f"lab ready: {len(lab.state.servers)} servers{replaying}, topology {topology_out}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


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
    try:
        if getattr(args, "replay", None):
            replay = Replay.load(args.replay)
            replay_state_factory(replay)(args.scenario)
        else:
            make_state_factory(Version(args.product), args.servers, args.edge_winrm)(args.scenario)
    except (ScenarioError, ReplayError) as e:
        print(f"cmsbot lab: {e}", file=sys.stderr)
        return 2
    config = HostConfig(max_envelope_kb=args.max_envelope_kb, max_shells_per_user=args.max_shells_per_user,
                        idle_timeout_s=args.idle_timeout_s, module_load_ms=args.module_load_ms)
    if config.max_envelope_kb < 32 or config.max_shells_per_user < 1 or config.idle_timeout_s <= 0 \
            or config.module_load_ms < 0:
        print("cmsbot lab: --max-envelope-kb must be at least 32 (WinRM's minimum), --max-shells-per-user at least 1, "
              "--idle-timeout-s above 0 and --module-load-ms not negative", file=sys.stderr)
        return 2
    advertise = args.advertise or ("127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host)
    try:
        asyncio.run(serve(host=args.host, port=args.port, advertise=advertise, version=Version(args.product),
                          servers=args.servers, edge_winrm=args.edge_winrm,
                          convergence_s=args.convergence_s, latency_ms=args.latency_ms, scenarios=args.scenario,
                          topology_out=Path(args.topology_out), username=username, password=password,
                          config=config, replay=replay))
    except OSError as e:
        print(f"cmsbot lab: cannot listen on {args.host}:{args.port}: {e.strerror}", file=sys.stderr)
        return 2
    return 0
