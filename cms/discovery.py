"""`cmsbot discover`, the pure part: the discover probe's answer -> a Topology, the comments on what
had to be guessed, the topology file's text, and the difference between two topologies.

Pure: no I/O. The probe (workers/probes/discover.ps1) reads the deployment on one Front End with
Get-CsPool, Get-CsComputer, Get-CsService (per role, and -CentralManagement), Get-CsPoolBackupRelationship
and Get-CsServerVersion, and resolves each Edge server's FQDN there; workers/runs/discover.py runs it.

How each value of the topology is found:

- pools and their servers: Get-CsPool (Computers, Site), cross-checked with Get-CsComputer (a pool
  none of whose computers Get-CsComputer lists runs no Lync / Skype for Business service: a SQL
  Server back end, a file store, a PSTN gateway; it is left out);
- the role of a pool: its services (Get-CsPool's Services and Get-CsService per role): EdgeServer ->
  edge; a pool Get-CsService -Director names -> director; Registrar or UserServer -> frontend;
  MediationServer -> mediation (a Mediation service collocated on a Front End pool leaves it a
  frontend pool); PersistentChatServer -> persistentchat; any other pool with Lync servers -> other
  (guessed, with a comment);
- the CMS pool: the pool Get-CsService -CentralManagement says is Active (Lync Server 2010 has no
  Active: its one CMS service); pairing: Get-CsPoolBackupRelationship (Lync Server 2013 and later);
- the back-end SQL server of a Front End pool: the UserDatabase its User Services (Get-CsService
  -UserServer) depend on, its instance from Get-CsService -UserDatabase;
- an Edge server's internal_address: its FQDN resolved on the Front End (the topology's Edge
  computer FQDN is its internal interface's name); one that does not resolve keeps its FQDN, with
  a comment; Edge servers get `winrm: false` (perimeter network);
- the version: the build in Get-CsServerVersion's text (4.0 Lync Server 2010, 5.0 Lync Server 2013,
  6.0 Skype for Business Server 2015, 7.0 Skype for Business Server 2019).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml

from cms.models import CmsService, Model
from cms.ps_json import as_datetime, as_host, as_list, as_optional_bool, as_str, as_strings, is_address
from cms.topology import Deployment, Pool, Server, ServerRole, Topology, Version, WinrmDefaults
from cms.topology import parse as parse_topology


class DiscoveryError(ValueError):
    """The answer does not describe a deployment a topology can be written for; the message says why."""


# -- the probe's answer ---------------------------------------------------------------------------


class FoundPool(Model):
    """One object of Get-CsPool."""

    fqdn: str
    site: str | None = None
    computers: list[str] = []
    services: list[str] = []  # the services' identities, "Registrar:pool01.contoso.com"


class FoundService(Model):
    """One object of Get-CsService -<Switch>."""

    switch: str  # the Get-CsService parameter that returned it: Registrar, Director, EdgeServer, ...
    identity: str | None = None
    pool_fqdn: str | None = None
    site_id: str | None = None
    version: str | None = None
    user_database: str | None = None  # -UserServer: "UserDatabase:<sql fqdn>"
    sql_instance: str | None = None  # -UserDatabase: SqlInstanceName


class Discovery(Model):
    """What the discover probe read on one Front End."""

    collected_at: datetime
    source: str | None = None
    product_version: str | None = None
    pools: list[FoundPool] = []
    computers: dict[str, str | None] = {}  # Get-CsComputer: computer -> its pool
    services: list[FoundService] = []
    cms: list[CmsService] = []
    pairs: dict[str, str | None] = {}  # Get-CsPoolBackupRelationship: pool -> its backup pool
    addresses: dict[str, list[str]] = {}  # Edge FQDN -> the addresses it resolved to on the Front End
    address_errors: dict[str, str] = {}  # Edge FQDN -> why it did not resolve
    errors: list[str] = []  # the parts the probe could not read (PoolsError, ...), in its words
    notes: list[str] = []  # names the parser left out as invalid, and why


def _sans_prefix(text: str | None, prefix: str) -> str | None:
    """'Site:Redmond' -> 'Redmond', 'UserDatabase:sql01.contoso.com' -> 'sql01.contoso.com'."""
    if not text:
        return None
    if text.lower().startswith(prefix.lower()):
        return text[len(prefix):].strip() or None
    return text


def parse_discover(data: Any) -> Discovery:
    if not isinstance(data, dict):
        raise ValueError("discover: expected an object")
    collected = as_datetime(data.get("CollectedAt"))
    if collected is None:
        raise ValueError("discover: CollectedAt missing")
    notes: list[str] = []
    pools = []
    for p in as_list(data.get("Pools")):
        if not isinstance(p, dict):
            continue
        fqdn = as_host(p.get("Fqdn") or p.get("Identity"), "Get-CsPool Fqdn", notes)
        if fqdn:
            pools.append(FoundPool(fqdn=fqdn, site=_sans_prefix(as_str(p.get("Site")), "site:"),
                                   computers=[c for c in (as_host(x, "Get-CsPool Computers", notes)
                                                          for x in as_list(p.get("Computers"))) if c],
                                   services=as_strings(p.get("Services"))))
    computers: dict[str, str | None] = {}
    for c in as_list(data.get("Computers")):
        if isinstance(c, dict):
            name = as_host(c.get("Fqdn") or c.get("Identity"), "Get-CsComputer Fqdn", notes)
            if name:
                computers[name] = as_host(c.get("Pool"), "Get-CsComputer Pool", notes)
    services = []
    for s in as_list(data.get("Services")):
        if isinstance(s, dict) and as_str(s.get("Switch")):
            services.append(FoundService(
                switch=as_str(s.get("Switch")) or "", identity=as_str(s.get("Identity")),
                pool_fqdn=as_host(s.get("PoolFqdn"), "Get-CsService PoolFqdn", notes),
                site_id=_sans_prefix(as_str(s.get("SiteId")), "site:"), version=as_str(s.get("Version")),
                user_database=as_host(_sans_prefix(as_str(s.get("UserDatabase")), "userdatabase:"),
                                      "Get-CsService -UserServer UserDatabase", notes),
                sql_instance=as_str(s.get("SqlInstanceName"))))
    cms = []
    for s in as_list(data.get("CentralManagement")):
        if isinstance(s, dict) and (pool := as_host(s.get("PoolFqdn"), "Get-CsService -CentralManagement", notes)):
            cms.append(CmsService(pool_fqdn=pool, site_id=_sans_prefix(as_str(s.get("SiteId")), "site:"),
                                  version=as_str(s.get("Version")), active=as_optional_bool(s.get("Active"))))
    pairs: dict[str, str | None] = {}
    for p in as_list(data.get("Pairs")):
        if isinstance(p, dict) and (pool := as_host(p.get("PoolFqdn"), "Get-CsPoolBackupRelationship", notes)):
            pairs[pool] = as_host(p.get("BackupPoolFqdn"), "BackupPoolFqdn", notes)
    addresses: dict[str, list[str]] = {}
    address_errors: dict[str, str] = {}
    for a in as_list(data.get("Addresses")):
        if isinstance(a, dict) and (edge := as_host(a.get("Fqdn"), "Edge FQDN", notes)):
            addresses[edge] = [x for x in as_strings(a.get("Addresses")) if is_address(x)]
            if error := as_str(a.get("Error"), 300):
                address_errors[edge] = error
    errors = [e for e in (as_str(data.get(k), 500) for k in ("PoolsError", "ComputersError", "CentralManagementError",
                                                             "ProductVersionError")) if e]
    errors += [f"Get-CsService -{as_str(e.get('Switch'))}: {as_str(e.get('Error'), 300)}"
               for e in as_list(data.get("ServiceErrors")) if isinstance(e, dict)]
    if pairs_error := as_str(data.get("PairsError"), 300):
        errors.append(pairs_error)
    return Discovery(collected_at=collected, source=as_host(data.get("From"), "From", notes),
                     product_version=as_str(data.get("ProductVersion")), pools=pools, computers=computers,
                     services=services, cms=cms, pairs=pairs, addresses=addresses, address_errors=address_errors,
                     errors=errors, notes=notes)


# -- the topology ---------------------------------------------------------------------------------

# where a comment goes: ("deployment", "version"), ("cms_pool",), ("pool", fqdn, key), ("server", fqdn, key)
Where = tuple[str, ...]

# the major build of each product (Get-CsServerVersion: "Skype for Business Server 2019 (7.0.2046.0): ...")
BUILDS = {"4": Version.lync2010, "5": Version.lync2013, "6": Version.sfb2015, "7": Version.sfb2019}
_BUILD = re.compile(r"\((\d+)\.\d+\.\d+\.\d+\)")
_YEAR = {"2010": Version.lync2010, "2013": Version.lync2013, "2015": Version.sfb2015, "2019": Version.sfb2019}

EDGE_WINRM = ("Edge servers sit in the perimeter network: checked from the CMS Front End (TCP 4443); "
              "set true if cmsbot can reach this one over WinRM")


@dataclass
class Discovered:
    """A topology as discovered, with a comment on every value that had to be guessed."""

    topology: Topology
    comments: dict[Where, str] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)  # what the file says first (where it came from, what is missing)

    @property
    def guesses(self) -> int:
        return sum(1 for text in self.comments.values() if text.startswith("guessed"))


def _version(d: Discovery, comments: dict[Where, str]) -> Version:
    text = d.product_version or ""
    m = _BUILD.search(text)
    if m and m.group(1).split(".")[0] in BUILDS:
        return BUILDS[m.group(1).split(".")[0]]
    for year, version in _YEAR.items():
        if year in text:
            return version
    majors = {(s.version or "").split(".")[0] for s in d.cms} - {""}
    if len(majors) == 1 and (major := majors.pop()) in BUILDS:
        comments[("deployment", "version")] = (f"guessed from Get-CsService -CentralManagement's Version {major}: "
                                               "Get-CsServerVersion gave no build")
        return BUILDS[major]
    comments[("deployment", "version")] = ("guessed: neither Get-CsServerVersion nor the CMS service named the "
                                           "product; set lync2010, lync2013, sfb2015 or sfb2019")
    return Version.sfb2019


def _role(pool: FoundPool, by_switch: dict[str, set[str]]) -> ServerRole | None:
    kinds = {s.split(":", 1)[0].lower() for s in pool.services}

    def has(switch: str) -> bool:
        return switch.lower() in kinds or pool.fqdn in by_switch.get(switch, set())

    if has("EdgeServer"):
        return ServerRole.edge
    if pool.fqdn in by_switch.get("Director", set()):
        return ServerRole.director
    if has("Registrar") or has("UserServer"):
        return ServerRole.frontend
    if has("MediationServer"):
        return ServerRole.mediation
    if has("PersistentChatServer"):
        return ServerRole.persistentchat
    return None


def build_topology(d: Discovery, *, name: str | None = None, endpoint_template: str | None = None,
                   source: str | None = None) -> Discovered:
    """The topology the answer describes. `endpoint_template` ("http://127.0.0.1:5985/wsman/{fqdn}"):
    each WinRM server's endpoint; without it no endpoint is written (the workers reach
    `<scheme>://<fqdn>:<port>/wsman` from CMSBOT_WINRM_SCHEME and the topology's `winrm:`)."""
    comments: dict[Where, str] = {}
    source = (source or d.source or "").lower()
    version = _version(d, comments)
    by_switch: dict[str, set[str]] = {}
    for s in d.services:
        if s.pool_fqdn:
            by_switch.setdefault(s.switch, set()).add(s.pool_fqdn)
    lync_computers = set(d.computers)
    found = list(d.pools)
    # a pool Get-CsPool did not list (it failed) but Get-CsComputer names: its computers, its role from the services
    listed = {p.fqdn for p in found}
    for pool in list(d.computers.values()):
        if pool and pool not in listed:
            found.append(FoundPool(fqdn=pool, computers=[c for c, p in d.computers.items() if p == pool],
                                   services=[f"{s.switch}:{pool}" for s in d.services if s.pool_fqdn == pool]))
            listed.add(pool)
    sites = {s.pool_fqdn: s.site_id for s in d.services if s.pool_fqdn and s.site_id}

    pools: list[Pool] = []
    for p in found:
        if lync_computers and not any(c in lync_computers for c in p.computers):
            continue  # SQL Server, file store, PSTN gateway, Office Web Apps: no Lync service, no replica
        if not p.computers:
            continue
        role = _role(p, by_switch)
        if role is None:
            role = ServerRole.other
            kinds = sorted({s.split(":", 1)[0] for s in p.services}) or ["none"]
            comments[("pool", p.fqdn, "role")] = f"guessed: services {', '.join(kinds)} match no role cmsbot knows"
        site = p.site or sites.get(p.fqdn)
        servers = []
        for fqdn in p.computers:
            endpoint = endpoint_template.replace("{fqdn}", fqdn) if endpoint_template else None
            if role is ServerRole.edge:
                address = next((a for a in d.addresses.get(fqdn, []) if "." in a),
                               next(iter(d.addresses.get(fqdn, [])), None))
                if address is None:
                    why = d.address_errors.get(fqdn) or "no address"
                    comments[("server", fqdn, "internal_address")] = (
                        f"guessed: {fqdn} did not resolve on {source or 'the Front End'} ({why}); replication "
                        "uses TCP 4443 to the Edge's internal interface: set its IP address")
                    address = fqdn
                comments.setdefault(("server", fqdn, "winrm"), EDGE_WINRM)
                servers.append(Server(fqdn=fqdn, winrm=False, internal_address=address))
            else:
                servers.append(Server(fqdn=fqdn, endpoint=endpoint))
        backend_sql, instance = None, None
        if role is ServerRole.frontend:
            backend_sql = next((s.user_database for s in d.services
                                if s.switch == "UserServer" and s.pool_fqdn == p.fqdn and s.user_database), None)
            if backend_sql:
                instance = next((s.sql_instance for s in d.services
                                 if s.switch == "UserDatabase" and s.pool_fqdn == backend_sql), None)
        pools.append(Pool(fqdn=p.fqdn, role=role, site=site, backend_sql=backend_sql,
                          backend_sql_instance=instance if backend_sql else None, servers=servers))
    if not pools:
        raise DiscoveryError("the answer names no pool with Lync or Skype for Business servers"
                             + (f" ({'; '.join(d.errors)})" if d.errors else ""))

    names = {p.fqdn for p in pools}
    pools = [_paired(p, d, names, comments) for p in pools]
    cms_pool = _cms_pool(d, pools, source, comments)
    domain = source.split(".", 1)[1] if "." in source else (cms_pool.split(".", 1)[1] if "." in cms_pool else None)
    header = [f"Get-CsPool / Get-CsComputer / Get-CsService read on {source or 'a Front End'}"
              + (f" at {d.collected_at:%Y-%m-%d %H:%M} UTC" if d.collected_at else "")]
    if d.product_version:
        header.append(f"product: {d.product_version}")
    header += [f"not read: {e}" for e in d.errors if "PersistentChatServer" not in e and "not available" not in e]
    header += [f"left out: {n}" for n in d.notes]
    if endpoint_template:
        header.append(f"endpoints: {endpoint_template}")
    else:
        header.append("endpoints: none written; the workers reach <scheme>://<fqdn>:<port>/wsman (CMSBOT_WINRM_SCHEME, "
                      "5986 for https, 5985 for http, or this file's `winrm:`); an `endpoint:` on a server overrides")
    topology = Topology(deployment=Deployment(name=name or domain or "deployment", version=version, domain=domain),
                        cms_pool=cms_pool, pools=pools)
    return Discovered(topology=topology, comments=comments, header=header)


def _paired(pool: Pool, d: Discovery, names: set[str], comments: dict[Where, str]) -> Pool:
    backup = d.pairs.get(pool.fqdn)
    if not backup:
        return pool
    if backup not in names:
        comments[("pool", pool.fqdn, "fqdn")] = (f"Get-CsPoolBackupRelationship pairs it with {backup}, which is "
                                                  "not a pool of this file: left out")
        return pool
    return pool.model_copy(update={"backup_pool": backup})


def _cms_pool(d: Discovery, pools: list[Pool], source: str, comments: dict[Where, str]) -> str:
    frontends = [p.fqdn for p in pools if p.role is ServerRole.frontend]
    cms = [s for s in d.cms if s.pool_fqdn in frontends]
    active = [s.pool_fqdn for s in cms if s.active]
    if len(active) == 1:
        return active[0]
    if len(cms) == 1 and cms[0].active is None:  # Lync Server 2010: one CMS service, no Active flag
        return cms[0].pool_fqdn
    own = next((p.fqdn for p in pools if any(s.fqdn == source for s in p.servers)), None)
    if active:
        chosen = active[0]
        comments[("cms_pool",)] = (f"guessed: Get-CsService -CentralManagement says {' and '.join(active)} are "
                                   "all Active (a failover gone wrong?): check with Get-CsManagementConnection")
    elif cms:
        chosen = cms[0].pool_fqdn
        comments[("cms_pool",)] = (f"guessed: none of {', '.join(s.pool_fqdn for s in cms)} is Active in "
                                   "Get-CsService -CentralManagement")
    elif own in frontends:
        chosen = own
        comments[("cms_pool",)] = f"guessed: Get-CsService -CentralManagement named no pool; the pool of {source}"
    elif frontends:
        chosen = frontends[0]
        comments[("cms_pool",)] = "guessed: Get-CsService -CentralManagement named no pool; the first Front End pool"
    else:
        raise DiscoveryError("no Front End pool found: the Central Management Store is hosted by one")
    return chosen


# -- the file -------------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _comment(text: str | None) -> str:
    if not text:
        return ""
    clean = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return f"  # {clean}"


def render(found: Discovered, preface: list[str] | None = None) -> str:
    """The topology file: plain YAML that cms.topology.load reads without edits, a comment on every
    value that was guessed (they start with "guessed") or needs a word."""
    t, notes = found.topology, found.comments
    lines = [f"# {line}" for line in (preface or []) + found.header]

    def put(indent: str, key: str, value: Any, where: Where | None = None) -> None:
        if value is None:
            return
        lines.append(f"{indent}{key}: {_scalar(value)}{_comment(notes.get(where) if where else None)}")

    lines.append("deployment:")
    put("  ", "name", t.deployment.name)
    put("  ", "version", t.deployment.version.value, ("deployment", "version"))
    put("  ", "domain", t.deployment.domain)
    put("", "cms_pool", t.cms_pool, ("cms_pool",))
    defaults = t.winrm.model_dump(exclude_defaults=True)
    if defaults:
        lines.append("winrm:")
        for key, value in defaults.items():
            put("  ", key, value)
    lines.append("pools:")
    for p in t.pools:
        lines.append(f"- fqdn: {_scalar(p.fqdn)}{_comment(notes.get(('pool', p.fqdn, 'fqdn')))}")
        put("  ", "role", p.role.value, ("pool", p.fqdn, "role"))
        put("  ", "site", p.site)
        put("  ", "backup_pool", p.backup_pool)
        put("  ", "backend_sql", p.backend_sql)
        put("  ", "backend_sql_instance", p.backend_sql_instance)
        lines.append("  servers:")
        for s in p.servers:
            lines.append(f"  - fqdn: {_scalar(s.fqdn)}")
            put("    ", "endpoint", s.endpoint)
            if not s.winrm or ("server", s.fqdn, "winrm") in notes:
                put("    ", "winrm", s.winrm, ("server", s.fqdn, "winrm"))
            put("    ", "internal_address", s.internal_address, ("server", s.fqdn, "internal_address"))
    text = "\n".join(lines) + "\n"
    again = parse_topology(text, "<discovered>")  # what is written loads without edits, and means the same
    if again != t:
        raise AssertionError("the written topology does not read back as the discovered one")
    return text


def keep_local_settings(found: Discovered, old: Topology, *, endpoints: bool, name: str | None = None) -> Discovered:
    """What an admin set in the existing file and discovery cannot know: the deployment's name (unless `name`), the
    `winrm:` defaults, and for each server still there its `winrm` flag and (unless `endpoints`, when
    the template was given) its `endpoint`."""
    t = found.topology
    pools = []
    for p in t.pools:
        servers = []
        for s in p.servers:
            try:
                before = old.server(s.fqdn)
            except StopIteration:
                servers.append(s)
                continue
            update: dict[str, Any] = {"winrm": before.winrm}
            if not endpoints and before.endpoint:
                update["endpoint"] = before.endpoint
            if before.winrm and not s.winrm:
                found.comments.pop(("server", s.fqdn, "winrm"), None)
            servers.append(s.model_copy(update=update))
        pools.append(p.model_copy(update={"servers": servers}))
    topology = Topology(deployment=t.deployment.model_copy(update={"name": name or old.deployment.name}),
                        cms_pool=t.cms_pool, winrm=old.winrm if old.winrm != WinrmDefaults() else t.winrm,
                        pools=pools)
    return Discovered(topology=topology, comments=found.comments, header=found.header)


# -- the difference ---------------------------------------------------------------------------------


def diff(old: Topology, new: Topology) -> list[str]:
    """What changed, as data (endpoints and the deployment's name are local settings, not compared):
    servers added, removed or moved between pools, pools added or removed or changed, the CMS pool,
    the pairing, Edge addresses, the version."""
    out: list[str] = []
    if old.deployment.version != new.deployment.version:
        out.append(f"version: {old.deployment.version.value} -> {new.deployment.version.value}")
    if old.cms_pool != new.cms_pool:
        out.append(f"CMS pool: {old.cms_pool} -> {new.cms_pool}")
    old_pools = {p.fqdn: p for p in old.pools}
    new_pools = {p.fqdn: p for p in new.pools}
    for fqdn in new_pools.keys() - old_pools.keys():
        p = new_pools[fqdn]
        out.append(f"pool added: {fqdn} ({p.role.value}, {len(p.servers)} server{'s' * (len(p.servers) != 1)})")
    for fqdn in old_pools.keys() - new_pools.keys():
        out.append(f"pool removed: {fqdn}")
    for fqdn in sorted(old_pools.keys() & new_pools.keys()):
        a, b = old_pools[fqdn], new_pools[fqdn]
        for key, label in (("role", "role"), ("site", "site"), ("backup_pool", "paired with"),
                           ("backend_sql", "back-end SQL"), ("backend_sql_instance", "back-end SQL instance")):
            before, after = getattr(a, key), getattr(b, key)
            if before != after:
                show = [getattr(v, "value", v) or "(none)" for v in (before, after)]
                out.append(f"{fqdn}: {label} {show[0]} -> {show[1]}")
    old_home = {s.fqdn: p.fqdn for p in old.pools for s in p.servers}
    new_home = {s.fqdn: p.fqdn for p in new.pools for s in p.servers}
    for fqdn in sorted(new_home.keys() - old_home.keys()):
        out.append(f"server added: {fqdn} (pool {new_home[fqdn]})")
    for fqdn in sorted(old_home.keys() - new_home.keys()):
        out.append(f"server removed: {fqdn} (was in pool {old_home[fqdn]})")
    for fqdn in sorted(old_home.keys() & new_home.keys()):
        if old_home[fqdn] != new_home[fqdn]:
            out.append(f"server moved: {fqdn} from pool {old_home[fqdn]} to {new_home[fqdn]}")
        before, after = old.server(fqdn).internal_address, new.server(fqdn).internal_address
        if before != after:
            out.append(f"{fqdn}: internal_address {before or '(none)'} -> {after or '(none)'}")
    return out


def summary(t: Topology) -> str:
    edges = [s for p in t.pools if p.role is ServerRole.edge for s in p.servers]
    paired = t.paired_pool(t.cms_pool)
    return (f"{len(t.pools)} pools, {len(t.servers)} servers ({len(edges)} Edge, winrm: false by default), "
            f"{t.deployment.version.label}, CMS pool {t.cms_pool}" + (f" paired with {paired.fqdn}" if paired else ""))
