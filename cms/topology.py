"""The deployment as the bot knows it: pools, servers, the CMS pool, pairings.

Loaded from YAML. Every validation error names the file, the line and the fix,
because the person reading it is editing that file by hand.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator


class Version(str, Enum):
    lync2010 = "lync2010"
    lync2013 = "lync2013"
    sfb2015 = "sfb2015"
    sfb2019 = "sfb2019"

    @property
    def label(self) -> str:
        return {
            "lync2010": "Lync Server 2010",
            "lync2013": "Lync Server 2013",
            "sfb2015": "Skype for Business Server 2015",
            "sfb2019": "Skype for Business Server 2019",
        }[self.value]

    @property
    def has_failover_cmdlet(self) -> bool:
        return self is not Version.lync2010


class ServerRole(str, Enum):
    """The role of a pool and so of its servers (frontend, edge, ...); not bot.roles.Role, a Slack user's."""

    frontend = "frontend"
    edge = "edge"
    director = "director"
    mediation = "mediation"
    persistentchat = "persistentchat"
    backend = "backend"
    other = "other"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _fqdn(value: str | None) -> str | None:
    """One spelling everywhere: DNS names compare case-insensitively, Windows reports them in any case."""
    return value.strip().rstrip(".").lower() if isinstance(value, str) else value


class Server(_Strict):
    fqdn: str
    endpoint: str | None = None
    winrm: bool = True
    internal_address: str | None = None

    _lower = field_validator("fqdn")(_fqdn)


class Pool(_Strict):
    fqdn: str
    role: ServerRole
    site: str | None = None
    backup_pool: str | None = None
    backend_sql: str | None = None  # the pool's back-end SQL Server (disaster failover targets it)
    backend_sql_instance: str | None = None
    servers: list[Server] = Field(min_length=1)

    _lower = field_validator("fqdn", "backup_pool", "backend_sql")(_fqdn)


class WinrmDefaults(_Strict):
    scheme: Literal["https", "http"] | None = None
    port: int | None = None
    # plain HTTP to a server (`scheme: http`, or an `endpoint` with http://) while CMSBOT_WINRM_SCHEME is
    # https is refused unless this says so; then it is logged and each /cms-status says which servers
    allow_http: bool = False


class Deployment(_Strict):
    name: str = "deployment"
    version: Version
    domain: str | None = None


class Topology(_Strict):
    deployment: Deployment
    cms_pool: str
    winrm: WinrmDefaults = WinrmDefaults()
    pools: list[Pool] = Field(min_length=1)

    _lower = field_validator("cms_pool")(_fqdn)

    # -- lookups, indexed once: a job looks servers up for every server it checks ---------
    _pools_by_name: dict[str, Pool] = PrivateAttr(default_factory=dict)
    _pool_of_server: dict[str, Pool] = PrivateAttr(default_factory=dict)
    _servers_by_name: dict[str, Server] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._pools_by_name.update({p.fqdn: p for p in self.pools})
        self._pool_of_server.update({s.fqdn: p for p in self.pools for s in p.servers})
        self._servers_by_name.update({s.fqdn: s for p in self.pools for s in p.servers})

    def pool(self, fqdn: str) -> Pool:
        try:
            return self._pools_by_name[fqdn.lower()]
        except KeyError:
            raise StopIteration(fqdn) from None

    @property
    def cms(self) -> Pool:
        return self.pool(self.cms_pool)

    @property
    def servers(self) -> list[Server]:
        return [s for p in self.pools for s in p.servers]

    def server(self, fqdn: str) -> Server:
        try:
            return self._servers_by_name[fqdn.lower()]
        except KeyError:
            raise StopIteration(fqdn) from None

    def pool_of(self, server_fqdn: str) -> Pool:
        try:
            return self._pool_of_server[server_fqdn.lower()]
        except KeyError:
            raise StopIteration(server_fqdn) from None

    def role_of(self, server_fqdn: str) -> ServerRole:
        return self.pool_of(server_fqdn).role

    def paired_pool(self, pool_fqdn: str) -> Pool | None:
        pool = self.pool(pool_fqdn)
        if pool.backup_pool:
            return self.pool(pool.backup_pool)
        return next((p for p in self.pools if (p.backup_pool or "").lower() == pool.fqdn.lower()), None)

    @property
    def names(self) -> list[str]:
        """Every name a user may type: pools first, then servers."""
        seen: dict[str, None] = {}
        for p in self.pools:
            seen[p.fqdn] = None
        for s in self.servers:
            seen[s.fqdn] = None
        return list(seen)

    def resolve(self, name: str) -> Target:
        """Map user text to a pool or server; raise UnknownTarget otherwise.

        Case and a trailing dot are ignored; a short host name is accepted
        when exactly one pool or server has it.
        """
        wanted = name.strip().rstrip(".").lower()
        if wanted:
            for p in self.pools:
                if p.fqdn.lower() == wanted:
                    return Target(kind="pool", name=p.fqdn, servers=tuple(s.fqdn for s in p.servers))
            for s in self.servers:
                if s.fqdn.lower() == wanted:
                    return Target(kind="server", name=s.fqdn, servers=(s.fqdn,))
            if "." not in wanted:
                hits = [n for n in self.names if n.lower().split(".")[0] == wanted]
                if len(hits) == 1:
                    return self.resolve(hits[0])
        raise UnknownTarget(name, self.names)

    def everything(self) -> Target:
        return Target(kind="deployment", name=self.deployment.name, servers=tuple(s.fqdn for s in self.servers))


@dataclass(frozen=True)
class Target:
    kind: str  # deployment | pool | server
    name: str
    servers: tuple[str, ...]


class UnknownTarget(ValueError):
    def __init__(self, text: str, known: list[str]):
        self.text = text
        self.known = known
        super().__init__(f"unknown pool or server {text!r}")


class TopologyError(ValueError):
    """A topology file problem, phrased for the person who edits the file."""

    def __init__(self, path: Path | str, line: int | None, problem: str, fix: str):
        self.path, self.line, self.problem, self.fix = str(path), line, problem, fix
        where = f"{path}:{line}" if line else str(path)
        super().__init__(f"{where}: {problem}. Fix: {fix}")


# -- loading -----------------------------------------------------------------

_FIELD_HINTS = {
    "deployment": "add a `deployment:` mapping with `version:` (lync2010, lync2013, sfb2015 or sfb2019)",
    "version": "use one of lync2010, lync2013, sfb2015, sfb2019",
    "cms_pool": "set `cms_pool:` to the FQDN of the Front End pool that hosts the Central Management Store",
    "pools": "list the pools under `pools:`, each with `fqdn`, `role` and `servers`",
    "servers": "list at least one server (`- fqdn: host.example.com`) under the pool",
    "role": "use one of " + ", ".join(r.value for r in ServerRole),
    "fqdn": "give the fully qualified name, e.g. `fe01.contoso.com`",
    "winrm": "use `winrm: true` or `winrm: false` (false: not reachable over WinRM, e.g. Edge in the perimeter)",
}


# libyaml's loader when PyYAML was built with it: parsing 1,000 servers took ~0.6 s in pure Python
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: Path | str) -> Topology:
    """The topology in `path`, parsed once per process for as long as the file is unchanged (a worker forks
    a work horse per job from a parent that has already read it: see workers/rq_worker.py)."""
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise TopologyError(path, None, "file not found", "set CMSBOT_TOPOLOGY to the topology file's path") from None
    return _load(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: Path, mtime_ns: int, size: int) -> Topology:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(path, None, "file not found", "set CMSBOT_TOPOLOGY to the topology file's path") from None
    return parse(text, path)


def parse(text: str, path: Path | str = "<topology>") -> Topology:
    try:
        root = yaml.compose(text, Loader=_LOADER)
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader (CSafeLoader or SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise TopologyError(path, line, f"not valid YAML ({e.problem})",
                            "check indentation and quoting on that line") from None
    if not isinstance(data, dict):
        raise TopologyError(path, 1, "the file must be a YAML mapping",
                            "start with `deployment:`, `cms_pool:` and `pools:`")
    try:
        topo = Topology.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(err["loc"])
        field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
        if err["type"] == "extra_forbidden":
            problem, fix = f"unknown key `{field}`", "remove it or check its spelling"
        elif err["type"] == "missing":
            problem, fix = f"`{field}` is missing", _FIELD_HINTS.get(field, "add it")
        else:
            problem = f"`{'.'.join(map(str, loc))}`: {err['msg']}"
            fix = _FIELD_HINTS.get(field, "correct the value")
        raise TopologyError(path, _line_of(root, loc), problem, fix) from None
    _check_references(topo, root, path)
    return topo


def _check_references(topo: Topology, root: Any, path: Path | str) -> None:
    seen: dict[str, tuple[int, ...]] = {}
    for pi, pool in enumerate(topo.pools):
        for si, server in enumerate(pool.servers):
            key = server.fqdn.lower()
            if key in seen:
                raise TopologyError(
                    path, _line_of(root, ("pools", pi, "servers", si, "fqdn")),
                    f"server {server.fqdn} is listed twice", "keep one entry per server",
                )
            seen[key] = (pi, si)
            if pool.role is ServerRole.edge and not server.internal_address:
                raise TopologyError(
                    path, _line_of(root, ("pools", pi, "servers", si)),
                    f"Edge server {server.fqdn} has no internal_address",
                    "add `internal_address:` with the IP or name of its internal interface "
                    "(replication uses TCP 4443 to it)",
                )
    pool_names = {p.fqdn.lower(): i for i, p in enumerate(topo.pools)}
    if len(pool_names) != len(topo.pools):
        raise TopologyError(path, _line_of(root, ("pools",)), "a pool is listed twice", "keep one entry per pool")
    if topo.cms_pool.lower() not in pool_names:
        raise TopologyError(
            path, _line_of(root, ("cms_pool",)), f"cms_pool {topo.cms_pool} is not one of the pools",
            "set it to one of: " + ", ".join(p.fqdn for p in topo.pools),
        )
    if topo.cms.role is not ServerRole.frontend:
        raise TopologyError(path, _line_of(root, ("cms_pool",)), f"cms_pool {topo.cms_pool} is not a frontend pool",
                            "the CMS is hosted by a Front End pool; name that pool")
    for pi, pool in enumerate(topo.pools):
        if pool.backup_pool and pool.backup_pool.lower() not in pool_names:
            raise TopologyError(
                path, _line_of(root, ("pools", pi, "backup_pool")),
                f"backup_pool {pool.backup_pool} is not one of the pools",
                "name a pool listed in this file, or remove backup_pool",
            )


def _line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML key or item at `loc`, or of its nearest parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            pair = next(((k, v) for k, v in node.value if k.value == part), None)
            if pair is None:
                break
            line, node = pair[0].start_mark.line + 1, pair[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def dump(topo: Topology) -> str:
    return yaml.safe_dump(topo.model_dump(mode="json", exclude_none=True, exclude_defaults=False), sort_keys=False)
