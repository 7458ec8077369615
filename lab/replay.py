"""`cmsbot lab --replay DIR`: the lab serving a folder written by `cmsbot capture`.

Each server answers each probe with what the captured host answered: its stdout and stderr
byte for byte and its exit code (lab/wsman.py asks `answer()` where it would otherwise ask
lab/answers.py). The topology the lab writes is the captured one (renamed, if the capture
renamed), its servers pointed at the lab. What the capture could not get is reproduced as
well as WS-Management allows: a server that did not answer at all does not answer (unreachable),
refuses the credentials (HTTP 401) or hangs; a probe that timed out never completes; a probe that failed
without output (a WS-Management fault) answers that fault. The status check, the diagnosis and
everything else run against it unchanged, over real WS-Management.

The folder's format is described in workers/runs/capture.py (`cmsbot-capture/1`); a folder
built by hand needs only `manifest.json` (format and product version), `topology.yaml` and, per
server and probe, `servers/<fqdn>/<probe>.json` with the exit code or the error, next to
`<probe>.stdout` (and `<probe>.stderr` if any). Written from that description, without the
capture's code (the lab imports nothing of workers/).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cms import topology as topo
from cms.topology import Topology, WinrmDefaults
from lab.deployment import LabServer, LabState, now

log = logging.getLogger("lab")

FORMATS = ("cmsbot-capture/1",)
WSMAN_FAULT = "WS-Management fault from "


class ReplayError(ValueError):
    """The folder is not a capture the lab can serve; the message says what is missing."""


@dataclass(frozen=True)
class Captured:
    """One probe's captured answer, or how it failed."""

    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    error_kind: str | None = None  # unreachable | auth_failed | timed_out | probe_failed
    error_reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    ps: str | None = None

    @property
    def hangs(self) -> bool:
        return self.error_kind == "timed_out"

    @property
    def fault(self) -> str | None:
        """The WS-Management fault to answer with: a failure that left no output."""
        if self.error_kind in (None, "timed_out"):
            return None
        reason = self.error_reason
        head, sep, rest = reason.partition(": ")
        return rest if sep and head.startswith(WSMAN_FAULT) else reason


class Replay:
    def __init__(self, folder: Path, manifest: dict[str, Any], topology: Topology,
                 answers: dict[tuple[str, str], Captured]):
        self.folder, self.manifest, self.captured_topology, self.answers = folder, manifest, topology, answers
        self.probes = frozenset(p for _, p in answers)
        self.version = topology.deployment.version

    @classmethod
    def load(cls, folder: Path | str) -> Replay:
        folder = Path(folder)
        manifest_path = folder / "manifest.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReplayError(f"{folder} has no manifest.json: give a folder written by `cmsbot capture`") from None
        except ValueError as e:
            raise ReplayError(f"{manifest_path}: not JSON ({e})") from None
        if manifest.get("format") not in FORMATS:
            raise ReplayError(f"{manifest_path}: format {manifest.get('format')!r}, expected one of {FORMATS}")
        try:
            topology = topo.load(folder / str(manifest.get("topology", "topology.yaml")))
        except topo.TopologyError as e:
            raise ReplayError(f"the captured topology: {e}") from None
        product = (manifest.get("product") or {}).get("version")
        if product and product != topology.deployment.version.value:
            raise ReplayError(f"{manifest_path}: product {product} but the topology says "
                              f"{topology.deployment.version.value}")
        answers: dict[tuple[str, str], Captured] = {}
        for meta_path in sorted((folder / "servers").glob("*/*.json")):
            server, probe = meta_path.parent.name.lower(), meta_path.stem
            try:
                topology.server(server)
            except StopIteration:
                raise ReplayError(f"{meta_path}: server {server} is not in the captured topology") from None
            answers[(server, probe)] = _captured(meta_path)
        if not answers:
            raise ReplayError(f"{folder / 'servers'} holds no captured answer")
        return cls(folder, manifest, topology, answers)

    # -- what the lab needs ------------------------------------------------------------
    def state(self) -> LabState:
        """A lab state with the captured topology's servers: who answers WinRM, who did not answer at all."""
        t = self.captured_topology
        servers = {}
        for pool in t.pools:
            for s in pool.servers:
                servers[s.fqdn] = LabServer(fqdn=s.fqdn, pool=pool.fqdn, role=pool.role, site=pool.site or "",
                                            winrm=s.winrm, internal_address=s.internal_address,
                                            fault=self._server_fault(s.fqdn))
        pairs = {p.fqdn: p.backup_pool for p in t.pools if p.backup_pool}
        pairs.update({b: a for a, b in list(pairs.items()) if b not in pairs})
        return LabState(version=t.deployment.version, pools={p.fqdn: [s.fqdn for s in p.servers] for p in t.pools},
                        roles={p.fqdn: p.role for p in t.pools}, sites={p.fqdn: p.site or "" for p in t.pools},
                        pairs=pairs, servers=servers, cms_pool=t.cms_pool, active_master=None, ftas=[],
                        last_change=now(), active_pools=set())

    def _server_fault(self, server: str) -> str | None:
        """A server none of whose probes answered: it could not be reached, refused the credentials, or never
        completed an answer."""
        mine = [c for (s, _), c in self.answers.items() if s == server]
        if not mine or any(c.error_kind is None for c in mine):
            return None
        kinds = {c.error_kind or "" for c in mine}
        return {frozenset({"unreachable"}): "unreachable", frozenset({"auth_failed"}): "fault-401",
                frozenset({"timed_out"}): "hang"}.get(frozenset(kinds))

    def topology(self, endpoint: Callable[[str], str]) -> Topology:
        """The captured topology, every server that answers WinRM pointed at the lab (plain HTTP, as the lab's own
        topology says it is: allow_http)."""
        t = self.captured_topology
        pools = [pool.model_copy(update={"servers": [
            s.model_copy(update={"endpoint": endpoint(s.fqdn) if s.winrm else None}) for s in pool.servers]})
            for pool in t.pools]
        return Topology(deployment=t.deployment, cms_pool=t.cms_pool, winrm=WinrmDefaults(allow_http=True),
                        pools=pools)

    def hangs(self, server: str, probe: str | None) -> bool:
        found = self.answers.get((server.lower(), probe or ""))
        return bool(found and found.hangs)

    def answer(self, server: str, probe: str, params: dict[str, Any] | None = None) -> Captured:
        """What the captured host answered to `probe`; a probe the capture did not run there answers the probe's
        error document (as Invoke-Probe writes one), saying so."""
        found = self.answers.get((server.lower(), probe))
        if found is None:
            ps = next((c.ps for (s, _), c in self.answers.items() if s == server.lower() and c.ps), None) or "5.1"
            message = f"not in the capture: {probe} was not captured on {server}"
            doc = {"probe": probe, "version": 0, "ps": ps,
                   "error": {"message": message, "category": "ObjectNotFound", "command": ""}}
            return Captured(stdout=json.dumps(doc, separators=(",", ":")).encode() + b"\r\n")
        if params is not None and found.params and params != found.params:
            log.warning("replay: %s on %s asked with other parameters than captured; answering what was captured",
                        probe, server)
        return found


def _captured(meta_path: Path) -> Captured:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ReplayError(f"{meta_path}: not JSON ({e})") from None
    error = meta.get("error") or None
    stdout_path, stderr_path = meta_path.with_suffix(".stdout"), meta_path.with_suffix(".stderr")
    if error is None and not stdout_path.exists():
        raise ReplayError(f"{meta_path}: no error and no {stdout_path.name}")
    return Captured(
        stdout=stdout_path.read_bytes() if stdout_path.exists() else b"",
        stderr=stderr_path.read_bytes() if stderr_path.exists() else b"",
        exit_code=int(meta.get("exit_code") or 0),
        error_kind=error.get("kind") if error else None,
        error_reason=str(error.get("reason", "")) if error else "",
        params=meta.get("params") or {},
        ps=meta.get("ps"),
    )
