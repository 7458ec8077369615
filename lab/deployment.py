"""The simulated deployment: servers, their replication state, and scenarios.

A scenario changes the state the way the real failure would, so that every
probe answer derived from the state is consistent with it. Scenarios are named,
take an optional target (`name:fqdn`) and combine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable

from workers.topology import Deployment, Pool, Role, Server, Topology, Version

DOMAIN = "contoso.com"

PRODUCT = {
    Version.lync2010: ("Microsoft Lync Server 2010", "4.0.7577.0"),
    Version.lync2013: ("Microsoft Lync Server 2013", "5.0.8308.0"),
    Version.sfb2015: ("Skype for Business Server 2015", "6.0.9319.0"),
    Version.sfb2019: ("Skype for Business Server 2019", "7.0.2046.0"),
}

RUNNING, STOPPED = "Running", "Stopped"


def now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class LabServer:
    fqdn: str
    pool: str
    role: Role
    site: str
    winrm: bool = True
    internal_address: str | None = None
    services: dict[str, str] = field(default_factory=dict)
    up_to_date: bool = True
    last_status_report: datetime | None = None
    reports_version: bool = True
    fault: str | None = None  # None | "unreachable" | "hang"


@dataclass
class LabState:
    version: Version
    pools: dict[str, list[str]]  # pool fqdn -> server fqdns, in order
    roles: dict[str, Role]  # pool fqdn -> role
    sites: dict[str, str]
    pairs: dict[str, str]  # pool -> its backup pool (both directions)
    servers: dict[str, LabServer]
    cms_pool: str
    active_master: str | None
    ftas: list[str]
    last_change: datetime
    active_pools: set[str]

    @property
    def product(self) -> tuple[str, str]:
        return PRODUCT[self.version]

    def server(self, fqdn: str) -> LabServer:
        try:
            return self.servers[fqdn.lower()]
        except KeyError:
            raise ScenarioError(f"no server {fqdn!r} in the lab; servers: {', '.join(self.servers)}") from None

    def topology(self, endpoint: Callable[[str], str]) -> Topology:
        """The topology file the bot uses, pointing every server at the lab."""
        pools = []
        for pool_fqdn, members in self.pools.items():
            servers = []
            for fqdn in members:
                s = self.servers[fqdn]
                servers.append(Server(fqdn=fqdn, endpoint=endpoint(fqdn) if s.winrm else None,
                                      winrm=s.winrm, internal_address=s.internal_address))
            pools.append(Pool(fqdn=pool_fqdn, role=self.roles[pool_fqdn], site=self.sites[pool_fqdn],
                              backup_pool=self.pairs.get(pool_fqdn), servers=servers))
        return Topology(deployment=Deployment(name="contoso lab", version=self.version, domain=DOMAIN),
                        cms_pool=self.cms_pool, pools=pools)


class ScenarioError(ValueError):
    pass


# -- building ------------------------------------------------------------------

# (server, pool, role, site, internal address) in the order `--servers N` keeps them.
_DEFAULT = [
    ("fe01", "pool01", Role.frontend, "site1", None),
    ("fe02", "pool01", Role.frontend, "site1", None),
    ("fe03", "pool02", Role.frontend, "site2", None),
    ("fe04", "pool02", Role.frontend, "site2", None),
    ("edge01", "edgepool", Role.edge, "site1", "192.0.2.11"),
    ("edge02", "edgepool", Role.edge, "site1", "192.0.2.12"),
    ("dir01", "dirpool", Role.director, "site1", None),
    ("med01", "medpool", Role.mediation, "site1", None),
]
EXTRA_POOL_SIZE = 10


def build(version: Version = Version.sfb2019, servers: int = len(_DEFAULT)) -> LabState:
    if servers < 1:
        raise ScenarioError("--servers must be at least 1")
    rows = list(_DEFAULT[:servers])
    extra = servers - len(rows)
    for i in range(extra):
        pool_no = 3 + i // EXTRA_POOL_SIZE
        rows.append((f"fe{5 + i:02d}", f"pool{pool_no:02d}", Role.frontend, f"site{pool_no}", None))

    t = now()
    pools: dict[str, list[str]] = {}
    roles: dict[str, Role] = {}
    sites: dict[str, str] = {}
    lab_servers: dict[str, LabServer] = {}
    for name, pool, role, site, address in rows:
        fqdn, pool_fqdn = f"{name}.{DOMAIN}", f"{pool}.{DOMAIN}"
        pools.setdefault(pool_fqdn, []).append(fqdn)
        roles[pool_fqdn], sites[pool_fqdn] = role, site
        lab_servers[fqdn] = LabServer(
            fqdn=fqdn, pool=pool_fqdn, role=role, site=site,
            winrm=role is not Role.edge, internal_address=address,
            services=_services(role, version), last_status_report=t - timedelta(seconds=40),
        )

    cms_pool = f"pool01.{DOMAIN}"
    pairs: dict[str, str] = {}
    standby = f"pool02.{DOMAIN}"
    if standby in pools and version is not Version.lync2010:
        pairs = {cms_pool: standby, standby: cms_pool}
    master = pools[cms_pool][0]
    return LabState(
        version=version, pools=pools, roles=roles, sites=sites, pairs=pairs, servers=lab_servers,
        cms_pool=cms_pool, active_master=master, ftas=[master], last_change=t - timedelta(hours=2),
        active_pools={cms_pool},
    )


def _services(role: Role, version: Version) -> dict[str, str]:
    services = {"REPLICA": RUNNING}
    if role is Role.frontend:
        services.update(MASTER=RUNNING, FTA=RUNNING)
        if version is not Version.lync2010:
            services["LYNCBACKUP"] = RUNNING
    return services


# -- scenarios -------------------------------------------------------------------

Scenario = Callable[[LabState, str | None], None]
SCENARIOS: dict[str, Scenario] = {}
NEEDS_TARGET: set[str] = set()


def scenario(name: str, *, target: bool) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        if target:
            NEEDS_TARGET.add(name)
        return fn
    return register


def apply(state: LabState, spec: str) -> None:
    name, _, target = spec.partition(":")
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    if name in NEEDS_TARGET and not target:
        raise ScenarioError(f"scenario {name} needs a target: {name}:<server fqdn>")
    SCENARIOS[name](state, target or None)


@scenario("healthy", target=False)
def _healthy(state: LabState, target: str | None) -> None:
    """The default state: every replica up to date, every service running."""


@scenario("replica-behind", target=True)
def _replica_behind(state: LabState, target: str | None) -> None:
    """The replica stopped reporting hours ago, with no event that says why."""
    s = state.server(target or "")
    s.up_to_date = False
    s.last_status_report = state.last_change - timedelta(hours=3)


@scenario("unreachable", target=True)
def _unreachable(state: LabState, target: str | None) -> None:
    """WinRM on the server does not answer (host down or port blocked)."""
    state.server(target or "").fault = "unreachable"


@scenario("hang", target=True)
def _hang(state: LabState, target: str | None) -> None:
    """WinRM accepts commands on the server but they never finish."""
    state.server(target or "").fault = "hang"
