"""`cmsbot discover`'s pure part (cms/discovery.py) on the discover probe's answers as the lab prints them
(lab/answers.py, the probes' JSON writer), decoded as the workers decode them (workers.probes.decode)."""

from __future__ import annotations

import pytest

from cms import topology as topo
from cms.discovery import (
    Discovery,
    DiscoveryError,
    FoundPool,
    build_topology,
    diff,
    keep_local_settings,
    parse_discover,
    render,
)
from cms.models import CmsService
from cms.parsers import parse_answer
from cms.topology import Pool, Server, ServerRole, Topology, Version
from lab import answers
from lab.deployment import apply, build
from workers import probes
from workers.transport.winrm import Output

TEMPLATE = "http://127.0.0.1:5985/wsman/{fqdn}"
FE1 = "fe01.contoso.com"


def discovered(version: Version = Version.sfb2019, servers: int = 8, *scenarios: str, template: str | None = TEMPLATE):
    state = build(version, servers)
    for spec in scenarios:
        apply(state, spec)
    stdout = answers.run(state, state.servers[FE1], "discover", 1, {}).encode() + b"\r\n"
    answer = parse_answer("discover", FE1, probes.decode("discover", Output(stdout, b"", 0)))
    assert isinstance(answer, Discovery)
    return state, build_topology(answer, endpoint_template=template, source=FE1)


def as_data(t: Topology) -> dict:
    """The topology as data, local settings aside: the deployment's name (the lab calls its own "contoso lab")
    and the `winrm:` defaults (the lab's allows plain HTTP)."""
    doc = t.model_dump(mode="json")
    doc["deployment"].pop("name")
    doc.pop("winrm")
    doc["pools"] = sorted(doc["pools"], key=lambda p: p["fqdn"])
    return doc


@pytest.mark.parametrize("version", list(Version))
@pytest.mark.parametrize("servers", [10, 200])
def test_the_discovered_topology_is_the_labs_own(version, servers):
    state, found = discovered(version, servers)
    assert as_data(found.topology) == as_data(state.topology(lambda fqdn: TEMPLATE.replace("{fqdn}", fqdn)))
    assert found.guesses == 0
    text = render(found)
    assert as_data(topo.parse(text)) == as_data(found.topology)  # the file loads without edits


def test_what_is_read_and_how():
    _, found = discovered()
    t = found.topology
    assert t.deployment.version is Version.sfb2019 and t.deployment.domain == "contoso.com"
    assert t.cms_pool == "pool01.contoso.com" and t.paired_pool(t.cms_pool).fqdn == "pool02.contoso.com"
    assert {p.fqdn: p.role for p in t.pools} == {
        "pool01.contoso.com": ServerRole.frontend, "pool02.contoso.com": ServerRole.frontend,
        "edgepool.contoso.com": ServerRole.edge, "dirpool.contoso.com": ServerRole.director,
        "medpool.contoso.com": ServerRole.mediation}  # the SQL back ends (Get-CsPool lists them) are left out
    assert (t.pool("pool01.contoso.com").backend_sql, t.pool("pool01.contoso.com").backend_sql_instance) == \
        ("sql01.contoso.com", "rtc")
    edge = t.server("edge01.contoso.com")
    assert (edge.winrm, edge.internal_address, edge.endpoint) == (False, "192.0.2.11", None)
    assert t.server(FE1).endpoint == "http://127.0.0.1:5985/wsman/fe01.contoso.com"
    text = render(found, ["written by a test"])
    assert text.startswith("# written by a test\n")
    assert "winrm: false  # Edge servers sit in the perimeter network" in text
    assert "guessed" not in text


def test_without_a_template_no_endpoint_is_written_and_the_header_says_how_servers_are_reached():
    _, found = discovered(template=None)
    assert all(s.endpoint is None for s in found.topology.servers)
    assert "endpoints: none written; the workers reach <scheme>://<fqdn>:<port>/wsman" in render(found)


def test_lync_2010_has_no_pairing_and_one_cms_service_without_active():
    _, found = discovered(Version.lync2010)
    t = found.topology
    assert t.deployment.version is Version.lync2010 and t.cms_pool == "pool01.contoso.com"
    assert all(p.backup_pool is None for p in t.pools)
    assert found.guesses == 0


def test_an_edge_that_does_not_resolve_keeps_its_fqdn_with_a_comment_and_the_file_still_loads():
    _, found = discovered(Version.sfb2019, 8, "no-dns:edge02.contoso.com")
    assert found.topology.server("edge02.contoso.com").internal_address == "edge02.contoso.com"
    text = render(found)
    line = next(x for x in text.splitlines() if "internal_address: edge02.contoso.com" in x)
    assert "# guessed: edge02.contoso.com did not resolve on fe01.contoso.com (No such host is known)" in line
    assert found.guesses == 1
    assert topo.parse(text).server("edge02.contoso.com").internal_address == "edge02.contoso.com"


def test_two_active_cms_pools_are_a_guess_with_a_comment():
    _, found = discovered(Version.sfb2019, 8, "both-active")
    assert found.topology.cms_pool == "pool01.contoso.com"
    line = next(x for x in render(found).splitlines() if x.startswith("cms_pool:"))
    assert "# guessed: Get-CsService -CentralManagement says pool01.contoso.com and pool02.contoso.com are all Active" \
        in line


def _answer(**overrides) -> Discovery:
    from datetime import UTC, datetime

    base = dict(
        collected_at=datetime(2024, 1, 1, tzinfo=UTC), source=FE1,
        product_version="Skype for Business Server 2015 (6.0.9319.0): Volume license key installed.",
        pools=[FoundPool(fqdn="pool01.contoso.com", site="Redmond", computers=[FE1],
                         services=["Registrar:pool01.contoso.com", "UserServer:pool01.contoso.com"]),
               FoundPool(fqdn="vis.contoso.com", site="Redmond", computers=["vis01.contoso.com"],
                         services=["VideoInteropServer:vis.contoso.com"]),
               FoundPool(fqdn="fs.contoso.com", computers=["fs.contoso.com"], services=["FileStore:fs.contoso.com"])],
        computers={FE1: "pool01.contoso.com", "vis01.contoso.com": "vis.contoso.com"},
        cms=[CmsService(pool_fqdn="pool01.contoso.com", active=True)])
    base.update(overrides)
    return Discovery(**base)


def test_a_pool_with_lync_servers_and_an_unknown_role_is_other_with_a_comment_and_a_file_store_is_left_out():
    found = build_topology(_answer())
    t = found.topology
    assert t.deployment.version is Version.sfb2015
    assert [(p.fqdn, p.role) for p in t.pools] == [("pool01.contoso.com", ServerRole.frontend),
                                                    ("vis.contoso.com", ServerRole.other)]
    assert found.comments[("pool", "vis.contoso.com", "role")].startswith(
        "guessed: services VideoInteropServer match no role")
    assert "role: other  # guessed" in render(found)


def test_the_version_falls_back_to_the_cms_service_then_to_a_commented_guess():
    found = build_topology(_answer(product_version=None,
                                   cms=[CmsService(pool_fqdn="pool01.contoso.com", active=True, version="5")]))
    assert found.topology.deployment.version is Version.lync2013
    assert found.comments[("deployment", "version")].startswith("guessed from Get-CsService -CentralManagement")
    found = build_topology(_answer(product_version=None))
    assert found.topology.deployment.version is Version.sfb2019
    assert "version: sfb2019  # guessed: neither Get-CsServerVersion" in render(found)


def test_no_cms_service_guesses_the_pool_of_the_server_asked():
    found = build_topology(_answer(cms=[]))
    assert found.topology.cms_pool == "pool01.contoso.com"
    assert found.comments[("cms_pool",)].startswith("guessed: Get-CsService -CentralManagement named no pool")


def test_an_answer_without_pools_is_an_error():
    with pytest.raises(DiscoveryError, match="names no pool"):
        build_topology(_answer(pools=[], computers={}))


def test_invalid_names_are_left_out_and_said():
    data = {"CollectedAt": "2024-01-01T00:00:00.000Z", "From": FE1,
            "Pools": [{"Fqdn": "pool01.contoso.com", "Computers": [FE1, "bad name; rm -rf"],
                       "Services": ["Registrar:pool01.contoso.com"]}],
            "CentralManagement": [{"PoolFqdn": "pool01.contoso.com", "Active": True}]}
    d = parse_discover(data)
    assert d.pools[0].computers == [FE1]
    assert any("invalid name left out" in n for n in d.notes)
    assert any(line.startswith("# left out: ") for line in render(build_topology(d)).splitlines())


# -- the difference, and what a rewrite keeps -----------------------------------------------------------


def _edited(t: Topology) -> Topology:
    """fe02 gone, fe04 in pool01 instead of pool02, edge01 at another address, medpool missing."""
    pools = []
    for p in t.pools:
        if p.fqdn == "medpool.contoso.com":
            continue
        servers = [s for s in p.servers if s.fqdn not in ("fe02.contoso.com", "fe04.contoso.com")]
        if p.fqdn == "pool01.contoso.com":
            servers.append(Server(fqdn="fe04.contoso.com", endpoint="https://fe04-mgmt.contoso.com:5986/wsman"))
        servers = [s.model_copy(update={"internal_address": "10.0.0.1"}) if s.fqdn == "edge01.contoso.com" else s
                   for s in servers]
        pools.append(Pool(**{**p.model_dump(), "servers": [s.model_dump() for s in servers]}))
    pools.append(Pool(fqdn="old.contoso.com", role=ServerRole.director, servers=[Server(fqdn="dir09.contoso.com")]))
    return Topology(deployment=t.deployment.model_copy(update={"name": "contoso production"}), cms_pool=t.cms_pool,
                    pools=pools)


def test_the_difference_names_servers_added_removed_and_moved_pools_and_addresses():
    _, found = discovered()
    old = _edited(found.topology)
    assert sorted(diff(old, found.topology)) == sorted([
        "pool added: medpool.contoso.com (mediation, 1 server)",
        "pool removed: old.contoso.com",
        "server added: fe02.contoso.com (pool pool01.contoso.com)",
        "server added: med01.contoso.com (pool medpool.contoso.com)",
        "server removed: dir09.contoso.com (was in pool old.contoso.com)",
        "server moved: fe04.contoso.com from pool pool01.contoso.com to pool02.contoso.com",
        "edge01.contoso.com: internal_address 10.0.0.1 -> 192.0.2.11",
    ])
    assert diff(found.topology, found.topology) == []


def test_a_rewrite_keeps_the_files_name_and_each_servers_endpoint_and_winrm():
    _, found = discovered(template=None)
    old = _edited(found.topology)
    edge = old.server("edge02.contoso.com")
    old = Topology(**{**old.model_dump(), "pools": [
        {**p, "servers": [{**s, "winrm": True} if s["fqdn"] == edge.fqdn else s for s in p["servers"]]}
        for p in old.model_dump()["pools"]]})
    kept = keep_local_settings(found, old, endpoints=False)
    t = kept.topology
    assert t.deployment.name == "contoso production"
    assert t.server("fe04.contoso.com").endpoint == "https://fe04-mgmt.contoso.com:5986/wsman"
    assert t.server("edge02.contoso.com").winrm is True  # the admin's choice, kept
    assert t.server("edge01.contoso.com").winrm is False
    assert diff(old, t) == diff(old, found.topology)  # local settings are not differences
    text = render(kept)
    assert topo.parse(text) == t
