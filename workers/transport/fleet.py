"""The WinRM shells of one job, run in parallel with a deadline per server.

One shell per server per job, opened on first use with every probe that job
may run on that server already in its environment, reused for each probe,
closed when the job ends. All of a job's servers are asked at once on one
asyncio event loop (at most `settings.fanout` at a time), the servers with the
most to do first; one slow or dead server costs its own deadline, never the
whole report's.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from cms.models import HostError, HostErrorKind, Model
from cms.parsers import ParseError, parse_answer
from cms.ps_json import clip
from cms.settings import Settings
from cms.topology import Topology
from workers import probes
from workers.transport.winrm import CLEANUP_TIMEOUT, Credentials, HostFailure, Output, Shell

log = logging.getLogger(__name__)

# How long past the sum of a server's probe deadlines we wait before giving up on it (the shell's own
# deadline ends every exchange first; this is the net under it).
STRAGGLER_MARGIN = 2 * CLEANUP_TIMEOUT + 1.0  # room for a timed-out command's Signal and its shell's Delete
# The Create message around the environment (SOAP headers, shell options), generously; and what each
# variable adds around its name and value: <rsp:Variable Name="...">...</rsp:Variable>
ENVELOPE_BASE = 4096
PER_VARIABLE = 48
MAX_REASON = 1000  # characters of a server's own error text kept in a host error


def envelope_size(env: dict[str, str]) -> int:
    """Bytes of the Create request that carries `env`, and of the host's response, which echoes it."""
    return ENVELOPE_BASE + sum(len(k) + len(v) + PER_VARIABLE for k, v in env.items())


def credentials(settings: Settings) -> Credentials:
    """The WinRM account and how to reach the servers, from the settings."""
    return Credentials(username=settings.winrm_username, password=settings.winrm_password.get_secret_value(),
                       transport=settings.winrm_transport,
                       ca_bundle=str(settings.winrm_ca_bundle) if settings.winrm_ca_bundle else None,
                       connect_timeout=settings.winrm_connect_timeout, proxy=settings.winrm_proxy)


def packed(calls: dict[str, dict[str, Any]], limit: int) -> list[dict[str, dict[str, Any]]]:
    """A server's probes in groups whose environment fits one Create of `limit` bytes, measured before
    it is sent: one group (one shell) whenever they fit together."""
    if envelope_size(probes.shell_env(calls)) <= limit:
        return [dict(calls)]
    groups: list[dict[str, dict[str, Any]]] = []
    for name, params in calls.items():
        fits = next((g for g in groups if envelope_size(probes.shell_env({**g, name: params})) <= limit), None)
        if fits is None:
            groups.append({name: params})
        else:
            fits[name] = params
    return groups


class EnvelopeTooLarge(HostFailure):
    """One probe's script and parameters alone exceed the envelope limit: it is not sent."""


M = TypeVar("M", bound=Model)


@dataclass
class HostRun:
    """One server's answers in one job: each probe's model, the failure that stopped the server
    (unreachable, timed out, the probe's own error), and the answers that could not be read."""

    server: str
    results: dict[str, Model] = field(default_factory=dict)
    error: HostError | None = None
    unreadable: list[HostError] = field(default_factory=list)

    def answer(self, probe: str, model: type[M]) -> M | None:
        found = self.results.get(probe)
        return found if isinstance(found, model) else None

    @property
    def errors(self) -> list[HostError]:
        return ([self.error] if self.error else []) + self.unreadable

    @property
    def failure(self) -> str:
        """Why an answer is missing, for the thread."""
        return self.errors[0].reason if self.errors else "no answer"

    def read(self, probe: str, data: Any) -> None:
        """Parse one probe's decoded data into its model; an unreadable answer is this probe's error
        (the server's other probes still count)."""
        try:
            self.results[probe] = parse_answer(probe, self.server, data)
        except ParseError as e:
            log.warning("%s on %s: unreadable answer: %s", probe, self.server, e)
            self.unreadable.append(HostError(server=self.server, kind=HostErrorKind.probe_failed, probe=probe,
                                             reason=f"unreadable answer ({e})"[:300]))


class PlainHttpRefused(HostFailure):
    """The topology asks for plain HTTP to a server while the settings say HTTPS, and does not allow it."""


_downgrades_logged: set[str] = set()


def _configured(topology: Topology, settings: Settings, server: str) -> str:
    s = topology.server(server)
    if s.endpoint:
        return s.endpoint
    scheme = topology.winrm.scheme or settings.winrm_scheme
    port = topology.winrm.port or (5986 if scheme == "https" else 5985)
    return f"{scheme}://{server}:{port}/wsman"


def downgraded(topology: Topology, settings: Settings, server: str) -> bool:
    """Whether the topology takes this server to plain HTTP although CMSBOT_WINRM_SCHEME is https."""
    return settings.winrm_scheme == "https" and urlsplit(_configured(topology, settings, server)).scheme != "https"


def endpoint(topology: Topology, settings: Settings, server: str) -> str:
    """The server's WS-Management URL. The topology may not silently take a server to plain HTTP when
    CMSBOT_WINRM_SCHEME is https: that is refused (PlainHttpRefused) unless its `winrm.allow_http` is
    true, and then logged (once per server and process) and noted in every /cms-status."""
    url = _configured(topology, settings, server)
    if downgraded(topology, settings, server):
        where = "its endpoint" if topology.server(server).endpoint else "winrm.scheme"
        if not topology.winrm.allow_http:
            raise PlainHttpRefused(f"refused to use plain HTTP ({where} in the topology says {url}) while "
                                   "CMSBOT_WINRM_SCHEME=https; use HTTPS, or set winrm.allow_http: true in the "
                                   "topology to accept it")
        if server not in _downgrades_logged:
            _downgrades_logged.add(server)
            log.warning("%s: WinRM over plain HTTP (%s in the topology: %s) although CMSBOT_WINRM_SCHEME=https, "
                        "because the topology sets winrm.allow_http: true", server, where, url)
    return url


class Fleet:
    """A job's shells. Its methods block the calling thread while the job's event loop runs."""

    def __init__(self, topology: Topology, settings: Settings, calls_for: Callable[[str], dict[str, dict[str, Any]]]):
        self._topology = topology
        self._settings = settings
        self._calls_for = calls_for
        self._creds = credentials(settings)
        self._shells: dict[tuple[str, int], Shell] = {}
        self._groups: dict[str, list[dict[str, dict[str, Any]]]] = {}
        self._loop = asyncio.new_event_loop()
        self._slots = asyncio.Semaphore(settings.fanout)
        _allow_sockets(settings.fanout)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _shell(self, server: str, name: str) -> Shell:
        """The shell whose environment carries probe `name`: one per server, unless its probes together
        would make a Create larger than the envelope limit; then as few as fit."""
        groups = self._groups_of(server)
        index = next((i for i, g in enumerate(groups) if name in g), None)
        if index is None:  # a probe the job did not plan for this server: a shell of its own, without parameters
            groups.append({name: {}})
            index = len(groups) - 1
        if (server, index) not in self._shells:
            env = probes.shell_env(groups[index])
            if envelope_size(env) > self._limit:
                raise EnvelopeTooLarge(f"{name}: its script and parameters make a {envelope_size(env) // 1024} KB "
                                       f"WS-Management message, over the {self._limit // 1024} KB limit "
                                       "(CMSBOT_WINRM_MAX_ENVELOPE_KB and the host's MaxEnvelopeSizekb)")
            self._shells[(server, index)] = Shell(server, endpoint(self._topology, self._settings, server),
                                                  self._creds, env, deadline=0.0,
                                                  max_answer=self._settings.winrm_max_answer_mb * 1024 * 1024)
        return self._shells[(server, index)]

    def _groups_of(self, server: str) -> list[dict[str, dict[str, Any]]]:
        groups = self._groups.get(server)
        if groups is None:
            groups = self._groups[server] = self._packed(self._calls_for(server))
        return groups

    def _batches(self, server: str, names: list[str], stdin: dict[str, bytes]) -> list[list[str]]:
        """`names` in commands: consecutive probes whose scripts are in the same shell run in one command
        (one powershell.exe, one module load on the host; the CMS Front End's two probes cost one probe's
        time, not two); a probe that reads input runs alone."""
        groups = self._groups_of(server)

        def shell_of(name: str) -> int | None:
            return next((i for i, g in enumerate(groups) if name in g), None)

        batches: list[list[str]] = []
        for name in names:
            last = batches[-1][-1] if batches else None
            if last is not None and name not in stdin and last not in stdin and shell_of(name) is not None \
                    and shell_of(name) == shell_of(last):
                batches[-1].append(name)
            else:
                batches.append([name])
        return batches

    @property
    def _limit(self) -> int:
        return self._settings.winrm_max_envelope_kb * 1024

    def _packed(self, calls: dict[str, dict[str, Any]]) -> list[dict[str, dict[str, Any]]]:
        return packed(calls, self._limit)

    def deadline(self, name: str) -> float:
        """Seconds one probe may take here: its declared deadline, scaled by the settings."""
        return self._settings.probe_deadline(probes.probe(name).deadline)

    def budget(self, names: list[str]) -> float:
        """Seconds a server's probes may take in a row."""
        return sum(self.deadline(n) for n in names)

    def run(self, server: str, names: list[str], stdin: dict[str, bytes] | None = None) -> HostRun:
        """Run probes on one server in order, each within its deadline even if the server
        trickles its answer a byte at a time (socket timeouts alone would not end that)."""
        return self._loop.run_until_complete(self._bounded(server, names, stdin))

    def run_all(self, plan: dict[str, list[str]],
                on_done: Callable[[HostRun], None] | None = None) -> dict[str, HostRun]:
        """Run every server's probes at once; each result reported as it lands."""
        return self._loop.run_until_complete(self._all(plan, on_done))

    async def _all(self, plan: dict[str, list[str]], on_done: Callable[[HostRun], None] | None) -> dict[str, HostRun]:
        # the servers with the longest run (the CMS Front End) start first: they set the floor of the check
        order = sorted(plan, key=lambda s: -self.budget(plan[s]))
        runs: dict[str, HostRun] = {}
        for landed in asyncio.as_completed([self._bounded(s, plan[s]) for s in order]):
            run = await landed
            runs[run.server] = run
            if on_done:
                try:
                    on_done(run)
                except Exception:  # noqa: BLE001 - reporting progress must not sink the report
                    log.exception("progress callback failed for %s", run.server)
        return {s: runs[s] for s in plan}

    async def _bounded(self, server: str, names: list[str], stdin: dict[str, bytes] | None = None) -> HostRun:
        async with self._slots:  # waiting for a slot does not use the server's deadline
            try:
                async with asyncio.timeout(self.budget(names) + STRAGGLER_MARGIN):
                    return await self._run(server, names, stdin)
            except TimeoutError:
                return HostRun(server, error=HostError(server=server, kind=HostErrorKind.timed_out, probe=names[0],
                                                       reason="no complete answer within the host deadline"))
            except Exception:  # noqa: BLE001 - a bug in one host's run must not sink the report
                log.exception("probe run on %s failed", server)
                return HostRun(server, error=HostError(server=server, kind=HostErrorKind.probe_failed,
                                                       reason="internal error while reading this server's answer"))

    async def _run(self, server: str, names: list[str], stdin: dict[str, bytes] | None = None) -> HostRun:
        """Run probes on one server in order; stop at its first failure."""
        run = HostRun(server)
        stdin = stdin or {}
        for batch in self._batches(server, names, stdin):
            failure: HostFailure | None = None
            try:
                shell = self._shell(server, batch[0])
                # the probes' deadlines together; the first also covers opening the shell
                shell.deadline = self._loop.time() + self.budget(batch)
                out: Output | None = await shell.run(*probes.command(*batch), stdin.get(batch[0]))
            except HostFailure as f:  # the probes that answered before it failed still count
                out, failure = f.partial, f
            except Exception:  # noqa: BLE001 - a bug talking to one host is that host's error
                log.exception("probes %s on %s failed unexpectedly", batch, server)
                out, failure = None, HostFailure("internal error while reading this server's answer")
            if not self._read(run, batch, out, failure):
                break
        return run

    def _read(self, run: HostRun, batch: list[str], out: Output | None, failure: HostFailure | None) -> bool:
        """Read each probe's answer in order, as if each had run alone; the first probe without one (or with
        its own error) is the server's error, and False stops the server."""
        for name in batch:
            try:
                if failure is not None and (out is None or not probes.answered(name, out)):
                    raise failure
                assert out is not None
                run.read(name, probes.decode(name, out))
            except HostFailure as f:
                run.error = HostError(server=run.server, kind=f.kind, reason=clip(f.reason, MAX_REASON), probe=name)
                return False
            except Exception:  # noqa: BLE001 - a bug reading one host's answer is that host's error
                log.exception("probe %s on %s failed unexpectedly", name, run.server)
                run.error = HostError(server=run.server, kind=HostErrorKind.probe_failed, probe=name,
                                      reason="internal error while reading this server's answer")
                return False
        return True

    def close(self) -> None:
        """Delete every shell (at once, short deadlines) and end the loop."""
        if self._loop.is_closed():
            return
        shells = list(self._shells.values())
        self._shells.clear()

        async def close_all() -> None:
            # a run cut short (the job's own time limit) leaves its tasks pending: they end here, before the
            # shells are deleted, so none of them sends anything afterwards
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            await asyncio.gather(*(s.close() for s in shells), return_exceptions=True)

        self._loop.run_until_complete(close_all())
        self._loop.close()


def _allow_sockets(fanout: int) -> None:
    """Raise this process's open-file limit (up to its hard limit) so `fanout` connections fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = fanout + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE,
                           (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
