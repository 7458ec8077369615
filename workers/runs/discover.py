"""`cmsbot discover`: read the deployment from one Front End and write (or compare) the topology file.

The discover probe (workers/probes/discover.ps1, read-only) runs on the Front End named by --from over
WinRM with the worker's settings (CMSBOT_WINRM_*); cms/discovery.py turns its answer into a topology,
the file's text with a comment on every guessed value, and the difference from an existing file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cms import topology as topo
from cms.discovery import Discovered, Discovery, DiscoveryError, build_topology, diff, keep_local_settings, render
from cms.settings import Settings
from cms.topology import Deployment, Pool, Server, ServerRole, Topology, Version
from workers.transport.fleet import Fleet


class DiscoverFailed(Exception):
    """Discovery could not run: the Front End did not answer, or its answer describes no deployment."""


def read(settings: Settings, source: str, endpoint_template: str | None = None) -> Discovery:
    """The discover probe's answer from `source` (reached at the template's endpoint, else as the workers
    reach any server: <scheme>://<fqdn>:<port>/wsman)."""
    source = source.strip().rstrip(".").lower()
    endpoint = endpoint_template.replace("{fqdn}", source) if endpoint_template else None
    # the one server the probe runs on, as a topology the fleet can use
    server = Server(fqdn=source, endpoint=endpoint)
    only = Topology(deployment=Deployment(name="discover", version=Version.sfb2019), cms_pool=source,
                    pools=[Pool(fqdn=source, role=ServerRole.frontend, servers=[server])])
    with Fleet(only, settings, lambda server: {"discover": {}}) as fleet:
        run = fleet.run(source, ["discover"])
    found = run.answer("discover", Discovery)
    if found is None:
        raise DiscoverFailed(f"{source} did not answer the discover probe: {run.failure}")
    return found


@dataclass
class Outcome:
    text: str  # the file's text
    discovered: Discovered
    changes: list[str] = field(default_factory=list)  # against the existing file
    existing: bool = False  # the file was there (and readable)
    unreadable: str | None = None  # the file was there, but is not a topology: why
    written: bool = False


def discover(settings: Settings, source: str, out: Path | None, *, write: bool = False,
             endpoint_template: str | None = None, name: str | None = None, command: str = "") -> Outcome:
    """Discover from `source`; write `out` when it does not exist yet, or when `write` (its local settings
    kept: the deployment's name, `winrm:`, each server's `winrm` and `endpoint`). `out` None: only compute."""
    answer = read(settings, source, endpoint_template)
    try:
        found = build_topology(answer, name=name, endpoint_template=endpoint_template, source=source)
    except DiscoveryError as e:
        raise DiscoverFailed(str(e)) from None
    outcome = Outcome(text="", discovered=found)
    if out is not None and out.exists():
        try:
            old = topo.load(out)
        except topo.TopologyError as e:
            outcome.unreadable = str(e)
        else:
            outcome.existing = True
            outcome.changes = diff(old, found.topology)
            found = keep_local_settings(found, old, endpoints=endpoint_template is not None, name=name)
            outcome.discovered = found
    preface = [f"written by `{command or 'cmsbot discover --from ' + source}`; review the comments marked 'guessed'"]
    outcome.text = render(found, preface)
    if out is not None and (write or not out.exists()):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(outcome.text, encoding="utf-8")
        tmp.replace(out)
        outcome.written = True
    return outcome
