"""`cmsbot capture`: every read-only probe on every reachable server, raw answers into a folder.

What a user attaches to a bug report, and what `cmsbot lab --replay` serves back. The probes
and their parameters are the status check's (both stages: `probe_params` of the whole
deployment), plus the read-only probes of `cmsbot doctor` and `cmsbot discover` (`read_only_calls`),
run on every server the topology marks reachable over WinRM, one shell per
server, in parallel, each probe within its deadline. Nothing is parsed away: each answer's
stdout and stderr are kept byte for byte (names replaced, secrets scrubbed), with its exit
code, the Windows PowerShell it reports ("ps"), when it ran and how long it took, and whether
cms-chatops could read it.

The folder (format `cmsbot-capture/1`):

    manifest.json                    product version, probe versions, servers, when, cmsbot version
    topology.yaml                    the topology the capture ran with (renamed like the rest)
    servers/<fqdn>/<probe>.json      one probe on one server: parameters, exit code, ps, timing,
                                     what reading it gave, or the error that stopped it
    servers/<fqdn>/<probe>.stdout    its standard output, as the host sent it
    servers/<fqdn>/<probe>.stderr    its standard error (only when there was any)
    README.md                        what this is and how to replay it

Names are replaced consistently (workers/runs/anonymize.py) unless `keep_names`; the mapping
is written next to the folder, never inside it, for the owner to read answers back.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cms import topology as topo
from cms.doctor import cmdlets_for
from cms.models import HostErrorKind
from cms.parsers import ParseError, parse_answer
from cms.settings import Settings
from cms.topology import Topology
from workers import probes
from workers.runs.anonymize import Renamer
from workers.runs.status import cms_candidates, probe_params
from workers.transport.fleet import credentials, endpoint, envelope_size, packed
from workers.transport.winrm import Credentials, HostFailure, HostShell, Output

log = logging.getLogger(__name__)

FORMAT = "cmsbot-capture/1"
STRAGGLER_MARGIN = 2.0  # seconds past a server's probes' deadlines before its thread is given up
# A server whose first probe failed this way answers none: its other probes are not tried (each would cost
# its own deadline, for nothing).
SERVER_LEVEL = (HostErrorKind.unreachable, HostErrorKind.auth_failed, HostErrorKind.timed_out)


def read_only_calls(topology: Topology) -> Callable[[str], dict[str, dict[str, Any]]]:
    """Every read-only probe a status check may run on a server (stage 1 and 2), with its parameters; then
    `cmsbot doctor`'s probe on every server and `cmsbot discover`'s on the servers that read the CMS, with the
    parameters those commands give them, so a replay answers them too."""
    status_calls = probe_params(topology, topology.everything())
    candidates = set(cms_candidates(topology))
    version = topology.deployment.version

    def calls(server: str) -> dict[str, dict[str, Any]]:
        out = status_calls(server)
        out["doctor"] = {"cmdlets": cmdlets_for(version, server in candidates)}
        if server in candidates:
            out["discover"] = {}
        return out
    return calls


@dataclass
class Answer:
    """One probe on one server, as the host answered it (or the error that stopped it)."""

    server: str
    probe: str
    params: dict[str, Any]
    started_at: str
    elapsed_s: float
    output: Output | None = None
    error_kind: HostErrorKind | None = None
    error_reason: str = ""
    reading: str = "not read"

    @property
    def ps(self) -> str | None:
        """The Windows PowerShell the answer reports ("ps" in the probes' JSON envelope)."""
        doc = document(self.output.stdout) if self.output else None
        value = doc.get("ps") if doc else None
        return value if isinstance(value, str) else None


@dataclass
class ServerCapture:
    fqdn: str
    answers: list[Answer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # probes not tried: the server did not answer at all
    gave_up: bool = False  # still running past every deadline


@dataclass
class CaptureResult:
    folder: Path
    servers: list[ServerCapture]
    names_file: Path | None

    @property
    def answered(self) -> int:
        return sum(1 for s in self.servers for a in s.answers if a.output is not None)

    @property
    def failed(self) -> list[tuple[str, str, str]]:
        """(server, probe, reason) of every probe without an answer."""
        out = [(s.fqdn, a.probe, a.error_reason) for s in self.servers for a in s.answers if a.output is None]
        out += [(s.fqdn, p, "not tried: the server did not answer") for s in self.servers for p in s.skipped]
        return out


def document(stdout: bytes) -> dict[str, Any] | None:
    """The probe's JSON envelope in its output (the last JSON line), or None."""
    text = stdout.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    for candidate in [text] + [line for line in reversed(text.splitlines()) if line.lstrip().startswith("{")]:
        try:
            doc = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(doc, dict):
            return doc
    return None


def _utc(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def reading_of(server: str, probe: str, out: Output) -> str:
    """What cms-chatops makes of an answer: "ok", or why it cannot use it."""
    try:
        parse_answer(probe, server, probes.decode(probe, out))
    except HostFailure as e:
        return e.reason
    except ParseError as e:
        return f"unreadable answer ({e})"
    return "ok"


class _Runner:
    """The probes of one server in its own shells (one per envelope-sized group), in order."""

    def __init__(self, topology: Topology, settings: Settings, creds: Credentials):
        self._topology, self._settings, self._creds = topology, settings, creds

    def run(self, server: str, calls: dict[str, dict[str, Any]], into: ServerCapture) -> None:
        shells: dict[int, HostShell] = {}
        groups = packed(calls, self._settings.winrm_max_envelope_kb * 1024)
        try:
            names = list(calls)
            for i, name in enumerate(names):
                index = next(n for n, g in enumerate(groups) if name in g)
                started, t0 = _utc(), time.monotonic()
                answer = Answer(server=server, probe=name, params=calls[name], started_at=started, elapsed_s=0.0)
                try:
                    env = probes.shell_env(groups[index])
                    if envelope_size(env) > self._settings.winrm_max_envelope_kb * 1024:
                        raise HostFailure(f"{name}: its script and parameters exceed the "
                                          f"{self._settings.winrm_max_envelope_kb} KB envelope limit")
                    if index not in shells:
                        shells[index] = HostShell(server, endpoint(self._topology, self._settings, server),
                                                  self._creds, env, deadline=0.0,
                                                  max_answer=self._settings.winrm_max_answer_mb * 1024 * 1024)
                    shell = shells[index]
                    shell.deadline = time.monotonic() + self._settings.probe_deadline(probes.probe(name).deadline)
                    cmd, args = probes.command(name)
                    answer.output = shell.run(cmd, args)
                    answer.reading = reading_of(server, name, answer.output)
                except HostFailure as f:
                    answer.error_kind, answer.error_reason = f.kind, f.reason
                    answer.reading = f.reason
                answer.elapsed_s = round(time.monotonic() - t0, 3)
                into.answers.append(answer)
                if answer.error_kind in SERVER_LEVEL and all(a.output is None for a in into.answers):
                    into.skipped = names[i + 1:]
                    break
        finally:
            for shell in shells.values():
                shell.close()


def run_probes(topology: Topology, settings: Settings,
               calls_for: Callable[[str], dict[str, dict[str, Any]]] | None = None,
               on_done: Callable[[ServerCapture], None] | None = None) -> list[ServerCapture]:
    """Every reachable server's read-only probes, servers in parallel (at most `settings.fanout` at once),
    each probe within its deadline; a server still running past all of them is given up."""
    calls_for = calls_for or read_only_calls(topology)
    runner = _Runner(topology, settings, credentials(settings))
    servers = [s.fqdn for s in topology.servers if s.winrm]
    plans = {s: calls_for(s) for s in servers}
    captures = {s: ServerCapture(s) for s in servers}
    slots = threading.BoundedSemaphore(settings.fanout)
    finished: dict[str, threading.Event] = {s: threading.Event() for s in servers}

    def one(server: str) -> None:
        with slots:
            try:
                runner.run(server, plans[server], captures[server])
            except Exception:  # noqa: BLE001 - a bug on one server must not lose the others' answers
                log.exception("capture on %s failed", server)
                captures[server].gave_up = True
            finally:
                finished[server].set()
                if on_done:
                    on_done(captures[server])

    # daemon threads: a server that trickles its answer past every deadline must not hold the process
    for server in servers:
        threading.Thread(target=one, args=(server,), name=f"capture-{server}", daemon=True).start()
    budget = max((sum(settings.probe_deadline(probes.probe(n).deadline) for n in p) for p in plans.values()),
                 default=0.0)
    give_up = time.monotonic() + budget * settings.waves(len(servers)) + STRAGGLER_MARGIN
    out = []
    for server in servers:
        capture = captures[server]
        if not finished[server].wait(max(0.0, give_up - time.monotonic())):
            # still running past every deadline (a host trickling its answer): what it answered so far, and the
            # probe it is stuck in as timed out, as the status check reports it; its thread is left behind
            done = list(capture.answers)
            names = list(plans[server])
            stuck = names[len(done)] if len(done) < len(names) else names[-1]
            timed_out = Answer(server=server, probe=stuck, params=plans[server][stuck], started_at="",
                               elapsed_s=0.0, error_kind=HostErrorKind.timed_out,
                               error_reason="no complete answer within the host deadline",
                               reading="no complete answer within the host deadline")
            capture = ServerCapture(server, done + ([timed_out] if len(done) < len(names) else []),
                                    names[len(done) + 1:], gave_up=True)
        out.append(capture)
    return out


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cms-chatops")
    except PackageNotFoundError:
        return "(not installed)"


def secrets_of(settings: Settings, environ: dict[str, str]) -> list[str]:
    """Every secret a capture must never contain: the WinRM password, and any value of the environment
    whose name says it is a password, token, secret or key (Slack tokens, Redis URLs with a password)."""
    found = [settings.winrm_password.get_secret_value()]
    for name, value in environ.items():
        upper = name.upper()
        if any(word in upper for word in ("PASSWORD", "TOKEN", "SECRET", "_KEY")) and not upper.endswith("_FILE") \
                and len(value) >= 8:  # a short flag ("1", "true") is no secret, and scrubbing it would mangle texts
            found.append(value)
    if "@" in settings.redis_url and ":" in settings.redis_url.split("@")[0].split("//")[-1]:
        found.append(settings.redis_url.split("@")[0].split("//")[-1].split(":", 1)[1])
    return [s for s in found if s]


README = """# A cms-chatops capture

Written by `cmsbot capture` ({cmsbot}) at {when}: the raw answer of every read-only probe the
status check runs, on every server the topology marks reachable over WinRM. {names}
No password or token is in it.

- `manifest.json`: product version, probe versions, servers, what was captured and what failed
- `topology.yaml`: the topology it ran with
- `servers/<server>/<probe>.json`: parameters, exit code, PowerShell version, timing, what
  cms-chatops made of the answer (`reading`), or the error that stopped the probe
- `servers/<server>/<probe>.stdout` / `.stderr`: the output, byte for byte

To see what cms-chatops sees, serve it as a simulated deployment and run the status check on it:

    cmsbot lab --replay <this folder> --port 0 --topology-out replay-topology.yaml
"""


def write(folder: Path, topology: Topology, settings: Settings, captures: list[ServerCapture], renamer: Renamer,
          started: str, finished: str) -> None:
    """The capture folder; every text goes through `renamer` (names, secrets) on its way to the disk."""
    servers_dir = folder / "servers"
    servers_dir.mkdir(parents=True, exist_ok=True)
    roles = {s.fqdn: topology.role_of(s.fqdn).value for s in topology.servers}
    reported: dict[str, None] = {}
    powershell: dict[str, None] = {}
    listing = []
    for capture in captures:
        name = renamer.name(capture.fqdn)
        where = servers_dir / name
        where.mkdir(exist_ok=True)
        for a in capture.answers:
            meta: dict[str, Any] = {
                "server": name, "probe": a.probe, "probe_version": probes.probe(a.probe).version,
                "params": renamer.value(a.params), "started_at": a.started_at, "elapsed_s": a.elapsed_s,
                "exit_code": a.output.exit_code if a.output else None, "ps": a.ps,
                "reading": renamer.text(a.reading),
                "error": {"kind": a.error_kind.value, "reason": renamer.text(a.error_reason)} if a.error_kind else None,
            }
            (where / f"{a.probe}.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
            if a.output is not None:
                (where / f"{a.probe}.stdout").write_bytes(renamer.raw(a.output.stdout))
                if a.output.stderr:
                    (where / f"{a.probe}.stderr").write_bytes(renamer.raw(a.output.stderr))
                doc = document(a.output.stdout)
                data = doc.get("data") if doc else None
                if isinstance(data, dict) and isinstance(data.get("ProductVersion"), str):
                    reported[renamer.text(data["ProductVersion"])] = None
                if a.ps:
                    powershell[a.ps] = None
        listing.append({
            "fqdn": name, "pool": renamer.name(topology.pool_of(capture.fqdn).fqdn), "role": roles[capture.fqdn],
            "probes": [a.probe for a in capture.answers],
            "answered": sum(1 for a in capture.answers if a.output is not None),
            "failed": {a.probe: renamer.text(a.error_reason) for a in capture.answers if a.output is None},
            "not_tried": capture.skipped, "gave_up": capture.gave_up,
        })
    for server in topology.servers:
        if not server.winrm:
            listing.append({"fqdn": renamer.name(server.fqdn), "pool": renamer.name(topology.pool_of(server.fqdn).fqdn),
                            "role": roles[server.fqdn], "winrm": False, "probes": []})
    version = topology.deployment.version
    manifest = {
        "format": FORMAT,
        "cmsbot": _version(),
        "started_at": started,
        "finished_at": finished,
        "names": "kept" if renamer.keep_names else "replaced",
        "product": {"version": version.value, "label": version.label, "reported": list(reported),
                    "powershell": list(powershell)},
        "probes": {n: probes.probe(n).version for n in sorted({a.probe for c in captures for a in c.answers})},
        "winrm": {"transport": settings.winrm_transport, "scheme": topology.winrm.scheme or settings.winrm_scheme,
                  "max_envelope_kb": settings.winrm_max_envelope_kb, "host_deadline_s": settings.host_deadline},
        "topology": "topology.yaml",
        "servers": listing,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    (folder / "topology.yaml").write_text(renamed_topology(topology, renamer), encoding="utf-8")
    names = ("Server, pool, domain and account names are replaced consistently (`server-001.example.invalid`, ...)."
             if not renamer.keep_names else "Names are kept as they are (`--keep-names`).")
    (folder / "README.md").write_text(README.format(cmsbot=_version(), when=started, names=names), encoding="utf-8")


def renamed_topology(topology: Topology, renamer: Renamer) -> str:
    data = topology.model_dump(mode="json", exclude_none=True)
    if not renamer.keep_names:
        data["deployment"]["name"] = "deployment"
    data = renamer.value(data)
    for pool in data["pools"]:  # the topology's own spelling: lower case
        for key in ("fqdn", "backup_pool", "backend_sql"):
            if isinstance(pool.get(key), str):
                pool[key] = pool[key].lower()
        for server in pool["servers"]:
            server["fqdn"] = server["fqdn"].lower()
    data["cms_pool"] = data["cms_pool"].lower()
    text = topo.dump(Topology.model_validate(data))
    return "# captured by `cmsbot capture`" + (" (names replaced)" if not renamer.keep_names else "") + "\n" + text


def texts_of(captures: list[ServerCapture]) -> list[str]:
    """Every text of the answers, in capture order: where the renamer looks for names the topology lacks."""
    out: list[str] = []
    for c in captures:
        for a in c.answers:
            if a.output is not None:
                out += [a.output.stdout.decode("utf-8", errors="replace"),
                        a.output.stderr.decode("utf-8", errors="replace")]
            out.append(a.error_reason)
    return out


def capture(topology: Topology, settings: Settings, folder: Path, *, keep_names: bool = False,
            environ: dict[str, str] | None = None,
            calls_for: Callable[[str], dict[str, dict[str, Any]]] | None = None,
            on_done: Callable[[ServerCapture], None] | None = None) -> CaptureResult:
    """Run every read-only probe on every reachable server and write the folder (see the module's text)."""
    import os

    started = _utc()
    captures = run_probes(topology, settings, calls_for, on_done)
    finished = _utc()
    renamer = Renamer(topology, account=settings.winrm_username,
                      secrets=secrets_of(settings, dict(os.environ if environ is None else environ)),
                      keep_names=keep_names)
    renamer.discover(texts_of(captures))
    folder.mkdir(parents=True, exist_ok=True)
    write(folder, topology, settings, captures, renamer, started, finished)
    names_file = None
    if not keep_names:
        names_file = folder.parent / f"{folder.name}.names.json"
        names_file.write_text(json.dumps({"capture": folder.name, "note": "the real names behind this capture's: "
                                          "keep this file, do not attach it", "names": renamer.mapping},
                                         indent=1) + "\n", encoding="utf-8")
    return CaptureResult(folder=folder, servers=captures, names_file=names_file)
