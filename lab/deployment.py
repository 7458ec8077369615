"""The simulated deployment: servers, their replication state, and scenarios.

State holds causes (a blocked port, a stopped service, a bad certificate, a
missing ACE, ...). What the probes see is derived from the causes: a replica
with a live cause cannot apply snapshots, so it falls behind; the File Transfer
Agent logs the event that names it, in the seed article's words. Fixing a cause
(as a remediation does) and replicating brings the replica back. Scenarios are
named, take an optional target (`name:fqdn`) and combine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

from cms.topology import Deployment, Pool, Server, ServerRole, Topology, Version, WinrmDefaults

DOMAIN = "contoso.com"
ROOT_CA = "CN=Contoso Root CA, DC=contoso, DC=com"
ISSUING_CA = "CN=Contoso Issuing CA, DC=contoso, DC=com"
OTHER_ROOT = "CN=Fabrikam Root CA, O=Fabrikam"
REPLICATOR_GROUP = "RTC Local Config Replicator"
ADMIN_GROUP = "CONTOSO\\RTCUniversalServerAdmins"  # the lab's WinRM account is a member

PRODUCT = {
    Version.lync2010: ("Microsoft Lync Server 2010", "4.0.7577.0"),
    Version.lync2013: ("Microsoft Lync Server 2013", "5.0.8308.0"),
    Version.sfb2015: ("Skype for Business Server 2015", "6.0.9319.0"),
    Version.sfb2019: ("Skype for Business Server 2019", "7.0.2046.0"),
}

RUNNING, STOPPED = "Running", "Stopped"
REPORT_EVERY = timedelta(seconds=40)  # a healthy replica's last status report is this old
EVENT_EVERY = timedelta(minutes=15)  # the FTA logs a persisting failure this often


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class LabCert:
    use: str
    subject: str
    dns_names: list[str]
    has_private_key: bool = True
    not_after: datetime = field(default_factory=lambda: now() + timedelta(days=400))
    issuer: str = ISSUING_CA
    root: str = ROOT_CA
    thumbprint: str = "0" * 40


@dataclass
class LabServer:
    fqdn: str
    pool: str
    role: ServerRole
    site: str
    winrm: bool = True
    internal_address: str | None = None
    services: dict[str, str] = field(default_factory=dict)
    cert: LabCert | None = None
    share_acl_ok: bool = True
    in_group: bool = True  # computer account in RTCUniversalConfigReplicator
    port_4443_blocked: bool = False
    stuck: bool = False  # behind with no visible cause (replica-behind)
    master_watch_failed: bool = False  # MASTER cannot watch its folder on the File Store
    synced_at: datetime | None = None  # last snapshot applied
    reported_at: datetime | None = None  # last status report the master received
    failing_since: datetime | None = None
    fault: str | None = None  # None | "unreachable" | "hang" | one of FAULTS
    oversize: str | None = None  # "answer": its probes answer HUGE_ANSWER bytes; "error": a HUGE_ERROR message
    # what `cmsbot doctor` checks (scenarios no-dns, powershell-2, module-missing, account-no-rights, envelope-150)
    resolves: bool = True  # its name resolves in DNS
    powershell: str | None = None  # its Windows PowerShell, when not the product version's usual one
    module: bool = True  # the Lync / SkypeForBusiness module is installed
    groups: list[str] = field(default_factory=lambda: [ADMIN_GROUP])  # the WinRM account's RTC groups here
    max_envelope_kb: int | None = None  # its MaxEnvelopeSizekb, when not the lab's (--max-envelope-kb)
    tls: str | None = None  # its HTTPS listener's certificate fault: "expired" | "wrong-name" | "untrusted" (--tls)

    @property
    def netbios(self) -> str:
        return self.fqdn.split(".")[0].upper()


@dataclass
class LabState:
    version: Version
    pools: dict[str, list[str]]  # pool fqdn -> server fqdns, in order
    roles: dict[str, ServerRole]
    sites: dict[str, str]
    pairs: dict[str, str]  # pool -> its backup pool (both directions)
    servers: dict[str, LabServer]
    cms_pool: str
    active_master: str | None
    ftas: list[str]
    last_change: datetime
    active_pools: set[str]  # pools whose CMS database says "active" (Get-CsService -CentralManagement)
    backup_errors: set[str] = field(default_factory=set)  # pools whose CMS export is in ErrorState
    owner_pool: str = ""  # the pool whose SQL store holds the CMS (Get-CsManagementConnection)
    sql: dict[str, str] = field(default_factory=dict)  # pool -> back-end SQL server
    forced_from: str | None = None  # a forced (disaster) failover left this pool's database saying "active"
    moving_to: str | None = None  # a failover in progress towards this pool
    moving_until: datetime | None = None  # when it converges (None: stuck)
    down: set[str] = field(default_factory=set)  # pools that are down
    convergence: timedelta = timedelta(seconds=2)
    dropped: set[tuple[str, str]] = field(default_factory=set)  # (probe, property) the cmdlet does not emit
    hostile_names: bool = False  # cms-status reports HOSTILE_NAME as ActiveMasterFqdn and among the FTAs
    # the WinRM service configuration every server runs with (lab/wsman.py's HostConfig sets it)
    winrm_config: dict[str, int] = field(default_factory=lambda: {
        "MaxEnvelopeSizekb": 500, "MaxShellsPerUser": 30, "MaxMemoryPerShellMB": 1024})

    @property
    def product(self) -> tuple[str, str]:
        return PRODUCT[self.version]

    @property
    def product_name(self) -> str:
        return "Microsoft Lync Server" if self.version.value.startswith("lync") else "Skype for Business Server"

    def server(self, fqdn: str) -> LabServer:
        try:
            return self.servers[fqdn.lower().rstrip(".")]
        except KeyError:
            raise ScenarioError(f"no server {fqdn!r} in the lab; servers: {', '.join(self.servers)}") from None

    @property
    def fta_host(self) -> LabServer:
        """The server whose File Transfer Agent copies snapshots (and logs the failures)."""
        return self.servers[self.ftas[0] if self.ftas else self.pools[self.cms_pool][0]]

    # -- derived replication state --------------------------------------------------
    def failure(self, s: LabServer) -> str | None:
        """Why this replica cannot apply snapshots: master-watch | https | certificate | access | stopped | None."""
        if s.master_watch_failed:
            return "master-watch"
        if s.role is ServerRole.edge:
            if s.port_4443_blocked or s.services.get("REPLICA") != RUNNING:
                return "https"
            if s.cert is not None and cert_problems(s.cert, s, self):
                return "certificate"
            return None
        fta = self.fta_host
        if not s.share_acl_ok or (not fta.in_group and s.fqdn != fta.fqdn):
            return "access"
        if s.services.get("REPLICA") != RUNNING:
            return "stopped"
        return None

    def tick(self) -> None:
        """Advance what time alone changes: a failover in progress converges."""
        if self.moving_to and self.moving_until and now() >= self.moving_until:
            target, self.moving_to, self.moving_until = self.moving_to, None, None
            self._make_cms(target)
            self.replicate()

    def _make_cms(self, pool: str) -> None:
        """The CMS lives in `pool` now: its master and FTA run there, the pair reads backup."""
        self.cms_pool = self.owner_pool = pool
        master = next(s for s in self.pools[pool] if self.servers[s].fault != "unreachable")
        self.active_master, self.ftas = master, [master]
        self.active_pools = {pool}

    def pool_up(self, pool: str) -> bool:
        return pool not in self.down

    def up_to_date(self, s: LabServer) -> bool:
        return s.synced_at is not None and s.synced_at >= self.last_change

    def replicate(self, only: str | None = None) -> None:
        """What Invoke-CsManagementStoreReplication achieves: every replica that can be
        reached applies the latest snapshot and reports back."""
        t = now()
        for s in self.servers.values():
            if only and s.fqdn != only:
                continue
            if self.active_master and not s.stuck and self.failure(s) is None:
                s.synced_at, s.reported_at, s.failing_since = t, t, None

    def topology(self, endpoint: Callable[[str], str]) -> Topology:
        """The topology file the bot uses, pointing every server at the lab."""
        pools = []
        for pool_fqdn, members in self.pools.items():
            servers = []
            for fqdn in members:
                s = self.servers[fqdn]
                url = endpoint(fqdn) if s.winrm else None
                if url and not s.resolves:  # a name that does not resolve (RFC 6761: .invalid never does)
                    parts = urlsplit(url)
                    url = parts._replace(netloc=f"{s.netbios.lower()}.nodns.invalid:{parts.port}").geturl()
                servers.append(Server(fqdn=fqdn, endpoint=url,
                                      winrm=s.winrm, internal_address=s.internal_address))
            pools.append(Pool(fqdn=pool_fqdn, role=self.roles[pool_fqdn], site=self.sites[pool_fqdn],
                              backup_pool=self.pairs.get(pool_fqdn), backend_sql=self.sql.get(pool_fqdn),
                              backend_sql_instance="rtc" if pool_fqdn in self.sql else None, servers=servers))
        # the lab speaks plain HTTP: its topology says so, so a worker left at CMSBOT_WINRM_SCHEME=https
        # reaches it (and notes it in every report) instead of refusing the downgrade
        return Topology(deployment=Deployment(name="contoso lab", version=self.version, domain=DOMAIN),
                        cms_pool=self.cms_pool, winrm=WinrmDefaults(allow_http=True), pools=pools)


def cert_problems(cert: LabCert, s: LabServer, state: LabState) -> list[str]:
    names = {n.lower() for n in cert.dns_names} | {cert.subject.split(",")[0].removeprefix("CN=").lower()}
    problems = []
    if not cert.has_private_key:
        problems.append("no-private-key")
    if s.fqdn not in names and s.pool not in names:
        problems.append("wrong-name")
    if cert.root != ROOT_CA:
        problems.append("other-root")
    if cert.not_after < now():
        problems.append("expired")
    return problems


class ScenarioError(ValueError):
    pass


# -- building ------------------------------------------------------------------

# (server, pool, role, site, internal address) in the order `--servers N` keeps them.
_DEFAULT = [
    ("fe01", "pool01", ServerRole.frontend, "site1", None),
    ("fe02", "pool01", ServerRole.frontend, "site1", None),
    ("fe03", "pool02", ServerRole.frontend, "site2", None),
    ("fe04", "pool02", ServerRole.frontend, "site2", None),
    ("edge01", "edgepool", ServerRole.edge, "site1", "192.0.2.11"),
    ("edge02", "edgepool", ServerRole.edge, "site1", "192.0.2.12"),
    ("dir01", "dirpool", ServerRole.director, "site1", None),
    ("med01", "medpool", ServerRole.mediation, "site1", None),
]
EXTRA_POOL_SIZE = 10


def build(version: Version = Version.sfb2019, servers: int = len(_DEFAULT), edge_winrm: bool = False) -> LabState:
    if servers < 1:
        raise ScenarioError("--servers must be at least 1")
    rows = list(_DEFAULT[:servers])
    for i in range(servers - len(rows)):
        pool_no = 3 + i // EXTRA_POOL_SIZE
        rows.append((f"fe{5 + i:02d}", f"pool{pool_no:02d}", ServerRole.frontend, f"site{pool_no}", None))

    t = now()
    pools: dict[str, list[str]] = {}
    roles: dict[str, ServerRole] = {}
    sites: dict[str, str] = {}
    lab_servers: dict[str, LabServer] = {}
    for name, pool, role, site, address in rows:
        fqdn, pool_fqdn = f"{name}.{DOMAIN}", f"{pool}.{DOMAIN}"
        pools.setdefault(pool_fqdn, []).append(fqdn)
        roles[pool_fqdn], sites[pool_fqdn] = role, site
        lab_servers[fqdn] = LabServer(
            fqdn=fqdn, pool=pool_fqdn, role=role, site=site,
            winrm=role is not ServerRole.edge or edge_winrm, internal_address=address,
            services=_services(role, version), synced_at=t - timedelta(minutes=90), reported_at=t - REPORT_EVERY,
        )
    for pool_fqdn, members in pools.items():
        for fqdn in members:
            lab_servers[fqdn].cert = _cert(roles[pool_fqdn], pool_fqdn, members, fqdn)

    cms_pool = f"pool01.{DOMAIN}"
    standby = f"pool02.{DOMAIN}"
    pairs = {cms_pool: standby, standby: cms_pool} if standby in pools and version is not Version.lync2010 else {}
    master = pools[cms_pool][0]
    sql = {p: f"sql{p.split('.')[0].removeprefix('pool')}.{DOMAIN}"
           for p, r in roles.items() if r is ServerRole.frontend}
    return LabState(
        version=version, pools=pools, roles=roles, sites=sites, pairs=pairs, servers=lab_servers,
        cms_pool=cms_pool, active_master=master, ftas=[master], last_change=t - timedelta(hours=2),
        active_pools={cms_pool}, owner_pool=cms_pool, sql=sql,
    )


def _services(role: ServerRole, version: Version) -> dict[str, str]:
    services = {"REPLICA": RUNNING}
    if role is ServerRole.frontend:
        services.update(MASTER=RUNNING, FTA=RUNNING)
        if version is not Version.lync2010:
            services["LYNCBACKUP"] = RUNNING
    return services


def _cert(role: ServerRole, pool: str, members: list[str], fqdn: str) -> LabCert:
    if role is ServerRole.edge:  # the Edge internal interface's certificate, shared by the pool
        return LabCert(use="Internal", subject=f"CN={pool}", dns_names=[pool, *members])
    return LabCert(use="Default", subject=f"CN={pool}", dns_names=[pool, fqdn])


# -- scenarios -------------------------------------------------------------------

Scenario = Callable[[LabState, LabServer | None], None]
SCENARIOS: dict[str, tuple[Scenario, str | None]] = {}  # name -> (apply, target role or "any" or None)


def scenario(name: str, target: str | None) -> Callable[[Scenario], Scenario]:
    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = (fn, target)
        return fn
    return register


def apply(state: LabState, spec: str) -> None:
    name, _, target = spec.partition(":")
    if name not in SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}")
    fn, wants = SCENARIOS[name]
    server = None
    if wants == "property":
        _drop_property(state, target)
        return
    if wants:
        if not target:
            raise ScenarioError(f"scenario {name} needs a target: {name}:<server fqdn>")
        server = state.server(target)
        if wants != "any" and server.role.value != wants:
            raise ScenarioError(f"scenario {name} applies to a {wants} server; {server.fqdn} is {server.role.value}")
    elif target:
        raise ScenarioError(f"scenario {name} takes no target")
    fn(state, server)


# -- what `cmsbot doctor` checks, one failure each ------------------------------------------------


@scenario("no-dns", "any")
def _no_dns(state: LabState, s: LabServer | None) -> None:
    """The server's name does not resolve: the topology the lab writes at start names it by a name that never
    resolves (<host>.nodns.invalid, RFC 6761), and the CMS Front End's port tests do not find it either."""
    assert s
    s.resolves = False


@scenario("powershell-2", "any")
def _powershell_2(state: LabState, s: LabServer | None) -> None:
    """The server runs Windows PowerShell 2.0 although the product is Lync Server 2013 or later (which needs 3.0);
    the lab reads every script it runs as a 2.0 host would. Its other probes still answer (the lab does not model
    the module failing to load under 2.0)."""
    assert s
    if state.version is Version.lync2010:
        raise ScenarioError("powershell-2 is for Lync Server 2013 and later: Lync Server 2010 runs on 2.0")
    s.powershell = "2.0"


@scenario("module-missing", "any")
def _module_missing(state: LabState, s: LabServer | None) -> None:
    """Neither the SkypeForBusiness nor the Lync PowerShell module is installed on the server: every probe that
    loads it answers Import-CsModule's error."""
    assert s
    s.module = False


@scenario("account-no-rights", "any")
def _account_no_rights(state: LabState, s: LabServer | None) -> None:
    """On this server the WinRM account is in neither RTCUniversalServerAdmins nor RTCUniversalReadOnlyAdmins (as
    `cmsbot doctor` reads its token); the other probes' answers do not model the cmdlets refusing it."""
    assert s
    s.groups = []


@scenario("envelope-150", "any")
def _envelope_150(state: LabState, s: LabServer | None) -> None:
    """The server's WinRM accepts messages of at most 150 KB (MaxEnvelopeSizekb 150, Windows Server 2008 R2's
    default): larger requests get HTTP 413, as from --max-envelope-kb for the whole lab."""
    assert s
    s.max_envelope_kb = 150


@scenario("drop-property", "property")
def _drop_property_doc(state: LabState, s: LabServer | None) -> None:
    """drop-property:<probe>:<Property>: the cmdlet behind the probe does not emit that property on this
    deployment (a version that lacks it, e.g. Active of Get-CsService before Lync Server 2013); the probe's
    answer shows it as its Get-Field does (lab/answers.py), e.g. drop-property:cms-status:DeletedReplicas."""


def _drop_property(state: LabState, target: str) -> None:
    from lab.answers import ANSWERS  # here: lab.answers imports this module

    probe, _, prop = target.partition(":")
    if not probe or not prop or ":" in prop:
        raise ScenarioError("drop-property needs a probe and a property: drop-property:<probe>:<Property>, "
                            "e.g. drop-property:cms-status:DeletedReplicas")
    if probe not in ANSWERS:
        raise ScenarioError(f"drop-property: no probe {probe!r} in the lab; probes: {', '.join(sorted(ANSWERS))}")
    state.dropped.add((probe, prop))


def _start_failing(s: LabServer, state: LabState, hours: float = 3) -> None:
    """The replica stopped receiving snapshots some hours ago, and a change has
    been made since, so it is behind."""
    since = now() - timedelta(hours=hours)
    s.failing_since = since
    s.synced_at = since
    s.reported_at = None if s.role is ServerRole.edge else since
    state.last_change = max(state.last_change, since + timedelta(minutes=30))


@scenario("healthy", None)
def _healthy(state: LabState, s: LabServer | None) -> None:
    """The default: every replica up to date, every service running."""


@scenario("replica-behind", "any")
def _replica_behind(state: LabState, s: LabServer | None) -> None:
    """Behind for hours with no cause the probes can see."""
    assert s
    s.stuck = True
    _start_failing(s, state)


@scenario("unreachable", "any")
def _unreachable(state: LabState, s: LabServer | None) -> None:
    """WinRM on the server does not answer (host down or port blocked)."""
    assert s
    s.fault = "unreachable"


@scenario("hang", "any")
def _hang(state: LabState, s: LabServer | None) -> None:
    """WinRM accepts commands on the server but they never finish."""
    assert s
    s.fault = "hang"


FAULTS = {
    "fault-500": "WinRM answers HTTP 500 with a SOAP fault",
    "fault-xml": "WinRM answers with malformed XML",
    "fault-401": "WinRM rejects the credentials (HTTP 401)",
    "fault-reset": "the connection is reset in the middle of a response",
    "fault-trickle": "a response trickles in, a byte at a time, past any deadline",
    "fault-codepage": "the shell ignores code page 65001 and writes output in code page 850",
}


def _fault(name: str) -> Scenario:
    def apply_fault(state: LabState, s: LabServer | None) -> None:
        assert s
        s.fault = name
    apply_fault.__doc__ = FAULTS[name]
    return apply_fault


for _name in FAULTS:
    scenario(_name, "any")(_fault(_name))

# the certificate a server's HTTPS listener presents (lab/tls.py; only with `cmsbot lab --tls`): what `cmsbot
# doctor`'s TLS check must name
TLS_FAULTS = {
    "tls-expired": "its HTTPS listener's certificate expired (needs --tls)",
    "tls-wrong-name": "its HTTPS listener's certificate names another host (needs --tls)",
    "tls-untrusted": "its HTTPS listener's certificate comes from a CA the client does not trust (needs --tls)",
}


def _tls_fault(name: str) -> Scenario:
    def apply_tls_fault(state: LabState, s: LabServer | None) -> None:
        assert s
        s.tls = name.removeprefix("tls-")
    apply_tls_fault.__doc__ = TLS_FAULTS[name]
    return apply_tls_fault


for _name in TLS_FAULTS:
    scenario(_name, "any")(_tls_fault(_name))


@scenario("edge-4443-blocked", "edge")
def _edge_blocked(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 1: the perimeter firewall drops TCP 4443 to the Edge internal interface."""
    assert s
    s.port_4443_blocked = True
    _start_failing(s, state)


@scenario("edge-replica-stopped", "edge")
def _edge_replica_stopped(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 1: the Replica Replicator Agent is stopped on the Edge."""
    assert s
    s.services["REPLICA"] = STOPPED
    _start_failing(s, state)


@scenario("edge-cert-no-private-key", "edge")
def _edge_cert_no_key(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 2: the internal certificate was imported without its private key."""
    assert s and s.cert
    s.cert.has_private_key = False
    _start_failing(s, state)


@scenario("edge-cert-wrong-name", "edge")
def _edge_cert_wrong_name(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 2: the internal certificate names another host."""
    assert s and s.cert
    s.cert.subject, s.cert.dns_names = f"CN=sip.{DOMAIN}", [f"sip.{DOMAIN}", f"access.{DOMAIN}"]
    _start_failing(s, state)


@scenario("edge-cert-other-root", "edge")
def _edge_cert_other_root(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 2: the internal certificate chains to another PKI than the Front Ends'."""
    assert s and s.cert
    s.cert.issuer, s.cert.root = "CN=Fabrikam Issuing CA, O=Fabrikam", OTHER_ROOT
    _start_failing(s, state)


@scenario("edge-cert-expired", "edge")
def _edge_cert_expired(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 2: the internal certificate has expired."""
    assert s and s.cert
    s.cert.not_after = now() - timedelta(days=2)
    _start_failing(s, state, hours=48)


@scenario("replica-stopped", "any")
def _replica_stopped(state: LabState, s: LabServer | None) -> None:
    """The Replica Replicator Agent is stopped on the server (any role)."""
    assert s
    s.services["REPLICA"] = STOPPED
    _start_failing(s, state)


@scenario("share-acl-missing", "any")
def _share_acl_missing(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 3: the xds-replica share and folder lost their RTC Local Config Replicator ACEs."""
    assert s
    if s.role is ServerRole.edge:
        raise ScenarioError("share-acl-missing applies to internal servers (Edge replicas use HTTPS 4443)")
    s.share_acl_ok = False
    _start_failing(s, state)


@scenario("master-watch-failed", "any")
def _master_watch_failed(state: LabState, s: LabServer | None) -> None:
    """The Master Replicator Agent cannot watch the replica's folder under CMSFileStore\\xds-master\\replicas on
    the File Store (an unsupported or unreachable file store, or lost rights): event 2020 of
    'LS Master Replicator Agent Service', as in Microsoft's article on unsupported file store shares."""
    assert s
    s.master_watch_failed = True
    _start_failing(s, state)


@scenario("computer-not-in-group", "frontend")
def _not_in_group(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 3: the CMS Front End's computer account left RTCUniversalConfigReplicator."""
    assert s
    s.in_group = False
    if s.fqdn == state.fta_host.fqdn:
        for r in state.servers.values():
            if r.role is not ServerRole.edge and r.fqdn != s.fqdn:
                _start_failing(r, state)


# What a compromised or broken server could answer, to prove the bot keeps it inert and bounded
HOSTILE_NAME = "<!channel> <https://evil.example/login|Click to re-auth>"
HUGE_ANSWER = 30 * 1024 * 1024  # bytes of one answer under the oversize-answer scenario
HUGE_ERROR = 1024 * 1024  # characters of the error message under oversize-error


@scenario("hostile-names", None)
def _hostile_names(state: LabState, s: LabServer | None) -> None:
    """A compromised CMS: cms-status names a Slack mention and a disguised link as ActiveMasterFqdn and
    among the File Transfer Agents (the bot must leave them out as invalid names, and never post them)."""
    state.hostile_names = True


@scenario("oversize-answer", "any")
def _oversize_answer(state: LabState, s: LabServer | None) -> None:
    """Every probe on the server answers 30 MB (a runaway script, or a hostile host)."""
    assert s
    s.oversize = "answer"


@scenario("oversize-error", "any")
def _oversize_error(state: LabState, s: LabServer | None) -> None:
    """Every probe on the server fails with a 1 MB error message."""
    assert s
    s.oversize = "error"


@scenario("transient", "any")
def _transient(state: LabState, s: LabServer | None) -> None:
    """A change made 45 seconds ago: this replica has not applied it yet, the rest have."""
    assert s
    t = now()
    state.last_change = t - timedelta(seconds=45)
    for r in state.servers.values():
        if r.failing_since is None and not r.stuck:
            r.synced_at = r.reported_at = t - timedelta(seconds=20)
    s.synced_at = s.reported_at = t - timedelta(minutes=2)


@scenario("cms-unavailable", None)
def _cms_unavailable(state: LabState, s: LabServer | None) -> None:
    """No active master and no File Transfer Agent: the CMS is unavailable."""
    state.active_master, state.ftas = None, []


@scenario("both-active", None)
def _both_active(state: LabState, s: LabServer | None) -> None:
    """After a bad failover both pools of the pair claim the CMS."""
    if state.cms_pool not in state.pairs:
        raise ScenarioError("both-active needs a paired CMS pool (the default lab has one)")
    state.active_pools = {state.cms_pool, state.pairs[state.cms_pool]}


@scenario("backup-error", None)
def _backup_error(state: LabState, s: LabServer | None) -> None:
    """The Backup Service's CMS export from the CMS pool is in ErrorState."""
    if state.cms_pool not in state.pairs:
        raise ScenarioError("backup-error needs a paired CMS pool (the default lab has one)")
    state.backup_errors.add(state.cms_pool)


# -- CMS failover scenarios (seed cms-failover-fails.md) ------------------------------------


def _standby(state: LabState) -> str:
    if state.cms_pool not in state.pairs:
        raise ScenarioError("this scenario needs a paired CMS pool (the default lab has one)")
    return state.pairs[state.cms_pool]


@scenario("cms-pool-down", None)
def _cms_pool_down(state: LabState, s: LabServer | None) -> None:
    """The CMS pool is down: its servers do not answer and the CMS is unavailable."""
    _standby(state)
    state.down.add(state.cms_pool)
    for fqdn in state.pools[state.cms_pool]:
        state.servers[fqdn].fault = "unreachable"
    state.active_master, state.ftas = None, []


@scenario("moving-after-forced-failover", None)
def _moving_after_forced(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 1: a forced failover moved the CMS to the standby; the failed pool is back
    and its database still says active, so a failback hits "being moved" (50020)."""
    source, target = state.cms_pool, _standby(state)
    state._make_cms(target)
    state.active_pools = {source, target}
    state.forced_from = source


@scenario("failover-in-progress", None)
def _failover_in_progress(state: LabState, s: LabServer | None) -> None:
    """Seed scenarios 2 and 3: a failover started and never converged; the master is blank."""
    target = _standby(state)
    state.moving_to, state.moving_until = target, None
    state.active_master, state.ftas = None, []


@scenario("standby-not-backup", None)
def _standby_not_backup(state: LabState, s: LabServer | None) -> None:
    """Seed scenario 2: the standby pool's CMS database is not in Backup mode."""
    state.active_pools = {state.cms_pool, _standby(state)}
