"""cms.topology: loading the deployment YAML and resolving user text."""

from __future__ import annotations

import pytest

from cms.topology import ServerRole, Topology, TopologyError, UnknownTarget, Version, parse

PATH = "/etc/cmsbot/topology.yaml"

# Line numbers matter below: the tests name lines of this text.
GOOD = """\
deployment:
  name: contoso
  version: sfb2019
  domain: contoso.com
cms_pool: pool01.contoso.com
pools:
  - fqdn: pool01.contoso.com
    role: frontend
    site: redmond
    backup_pool: pool02.contoso.com
    servers:
      - fqdn: fe01.contoso.com
      - fqdn: fe02.contoso.com
  - fqdn: pool02.contoso.com
    role: frontend
    site: dublin
    servers:
      - fqdn: fe03.contoso.com
      - fqdn: fe01.emea.contoso.com
  - fqdn: edgepool.contoso.com
    role: edge
    servers:
      - fqdn: edge01.contoso.com
        winrm: false
        internal_address: 10.0.0.11
"""


def line_of(text: str, fragment: str) -> int:
    """1-based line of the only line that contains `fragment`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if fragment in line]
    assert len(hits) == 1, f"{fragment!r} is on lines {hits}"
    return hits[0]


def replaced(old: str, new: str, text: str = GOOD) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


@pytest.fixture
def topo() -> Topology:
    return parse(GOOD, PATH)


# -- good YAML ---------------------------------------------------------------------

def test_good_topology_loads(topo):
    assert topo.deployment.version is Version.sfb2019
    assert topo.cms.fqdn == "pool01.contoso.com"
    assert topo.paired_pool("pool01.contoso.com").fqdn == "pool02.contoso.com"
    assert topo.paired_pool("pool02.contoso.com").fqdn == "pool01.contoso.com"
    assert topo.role_of("edge01.contoso.com") is ServerRole.edge
    assert topo.server("edge01.contoso.com").winrm is False
    assert topo.names == [
        "pool01.contoso.com", "pool02.contoso.com", "edgepool.contoso.com",
        "fe01.contoso.com", "fe02.contoso.com", "fe03.contoso.com", "fe01.emea.contoso.com", "edge01.contoso.com",
    ]


def test_resolve_pool_gives_its_servers(topo):
    t = topo.resolve("pool01.contoso.com")
    assert (t.kind, t.name, t.servers) == ("pool", "pool01.contoso.com", ("fe01.contoso.com", "fe02.contoso.com"))


def test_resolve_is_case_insensitive(topo):
    t = topo.resolve("FE03.Contoso.COM")
    assert (t.kind, t.name, t.servers) == ("server", "fe03.contoso.com", ("fe03.contoso.com",))
    assert topo.resolve("POOL02.CONTOSO.COM").name == "pool02.contoso.com"


def test_resolve_ignores_a_trailing_dot_and_spaces(topo):
    assert topo.resolve("edge01.contoso.com.").name == "edge01.contoso.com"
    assert topo.resolve("  Edge01.Contoso.com.  ").name == "edge01.contoso.com"


def test_resolve_accepts_a_unique_short_name(topo):
    assert topo.resolve("fe02").name == "fe02.contoso.com"
    assert topo.resolve("EDGE01").name == "edge01.contoso.com"
    pool = topo.resolve("pool02")
    assert (pool.kind, pool.name) == ("pool", "pool02.contoso.com")


def test_resolve_unknown_text_lists_known_names(topo):
    with pytest.raises(UnknownTarget) as info:
        topo.resolve("fe09.contoso.com")
    assert info.value.text == "fe09.contoso.com"
    assert info.value.known == topo.names
    assert "fe09.contoso.com" in str(info.value)


def test_resolve_empty_text_is_unknown(topo):
    for text in ("", "   ", "."):
        with pytest.raises(UnknownTarget) as info:
            topo.resolve(text)
        assert info.value.known == topo.names


def test_resolve_ambiguous_short_name_is_unknown(topo):
    # fe01.contoso.com and fe01.emea.contoso.com share the short name fe01.
    with pytest.raises(UnknownTarget) as info:
        topo.resolve("fe01")
    assert info.value.known == topo.names
    assert topo.resolve("fe01.emea.contoso.com").name == "fe01.emea.contoso.com"


def test_resolve_partial_domain_is_not_a_short_name(topo):
    with pytest.raises(UnknownTarget):
        topo.resolve("fe02.contoso")


def test_everything_lists_every_server(topo):
    t = topo.everything()
    assert t.kind == "deployment" and t.name == "contoso"
    assert len(t.servers) == 5


def test_standard_edition_pool_and_server_with_one_name_is_not_ambiguous():
    text = """\
deployment:
  version: sfb2015
cms_pool: se01.contoso.com
pools:
  - fqdn: se01.contoso.com
    role: frontend
    servers:
      - fqdn: se01.contoso.com
"""
    topo = parse(text, PATH)
    t = topo.resolve("se01")
    assert (t.kind, t.name, t.servers) == ("pool", "se01.contoso.com", ("se01.contoso.com",))


def test_cms_pool_named_in_other_case_is_usable():
    # cms_pool is validated case-insensitively, so a differently-cased name
    # passes the check; the topology must then also find that pool.
    topo = parse(replaced("cms_pool: pool01.contoso.com", "cms_pool: POOL01.contoso.com"), PATH)
    assert topo.cms.fqdn == "pool01.contoso.com"


def test_backup_pool_named_in_other_case_is_usable():
    topo = parse(replaced("backup_pool: pool02.contoso.com", "backup_pool: Pool02.Contoso.com"), PATH)
    assert topo.paired_pool("pool01.contoso.com").fqdn == "pool02.contoso.com"


# -- bad YAML ------------------------------------------------------------------------

def error_for(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        parse(text, PATH)
    err = info.value
    assert str(err).startswith(PATH)
    assert err.path == PATH
    assert err.problem and err.fix.strip()
    assert err.fix in str(err) and err.problem in str(err)
    return err


def test_invalid_yaml_syntax():
    text = replaced("    role: edge\n", "    role: edge: perimeter\n")
    err = error_for(text)
    assert err.line == line_of(text, "role: edge: perimeter")
    assert "not valid YAML" in err.problem
    assert str(err).startswith(f"{PATH}:{err.line}:")


def test_invalid_yaml_indentation():
    text = replaced("    site: dublin\n", "     site: dublin\n")
    err = error_for(text)
    assert err.line == line_of(text, "site: dublin")
    assert "not valid YAML" in err.problem


def test_missing_cms_pool():
    err = error_for(replaced("cms_pool: pool01.contoso.com\n", ""))
    assert err.line == 1  # the top-level mapping it belongs in
    assert "cms_pool" in err.problem and "missing" in err.problem
    assert "cms_pool:" in err.fix and "Central Management Store" in err.fix


def test_unknown_key_typo():
    text = replaced("    site: redmond\n", "    stie: redmond\n")
    err = error_for(text)
    assert err.line == line_of(text, "stie: redmond")
    assert "unknown key" in err.problem and "stie" in err.problem
    assert "spelling" in err.fix


def test_unknown_key_typo_with_a_nested_value_points_at_the_key():
    # A mistyped block key: the line to fix is the key's own, not its first child's.
    text = GOOD + "winrm_defaults:\n  scheme: https\n"
    err = error_for(text)
    assert "winrm_defaults" in err.problem
    assert err.line == line_of(text, "winrm_defaults:")


def test_bad_role_value():
    text = replaced("    role: edge\n", "    role: egde\n")
    err = error_for(text)
    assert err.line == line_of(text, "role: egde")
    assert "role" in err.problem
    assert "frontend" in err.fix and "edge" in err.fix


def test_bad_version_value():
    text = replaced("version: sfb2019", "version: sfb2016")
    err = error_for(text)
    assert err.line == line_of(text, "version: sfb2016")
    assert "version" in err.problem
    assert "sfb2019" in err.fix and "lync2013" in err.fix


def test_cms_pool_not_among_pools():
    text = replaced("cms_pool: pool01.contoso.com", "cms_pool: pool09.contoso.com")
    err = error_for(text)
    assert err.line == line_of(text, "cms_pool:")
    assert "pool09.contoso.com" in err.problem and "not one of the pools" in err.problem
    assert "pool01.contoso.com" in err.fix and "pool02.contoso.com" in err.fix


def test_cms_pool_that_is_not_frontend():
    text = replaced("cms_pool: pool01.contoso.com", "cms_pool: edgepool.contoso.com")
    err = error_for(text)
    assert err.line == line_of(text, "cms_pool:")
    assert "not a frontend pool" in err.problem


def test_duplicate_server():
    # The second entry (differently cased) is the one to remove.
    text = replaced("      - fqdn: fe03.contoso.com", "      - fqdn: FE02.contoso.com")
    err = error_for(text)
    assert err.line == line_of(text, "FE02.contoso.com")
    assert "listed twice" in err.problem and "fe02.contoso.com" in err.problem.lower()
    assert "one entry" in err.fix


def test_edge_server_without_internal_address():
    text = replaced("        internal_address: 10.0.0.11\n", "")
    err = error_for(text)
    assert err.line == line_of(text, "- fqdn: edge01.contoso.com")
    assert "edge01.contoso.com" in err.problem and "internal_address" in err.problem
    assert "internal_address:" in err.fix and "4443" in err.fix


def test_backup_pool_naming_an_unknown_pool():
    text = replaced("backup_pool: pool02.contoso.com", "backup_pool: pool03.contoso.com")
    err = error_for(text)
    assert err.line == line_of(text, "backup_pool:")
    assert "pool03.contoso.com" in err.problem and "not one of the pools" in err.problem
    assert "remove backup_pool" in err.fix


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "just a string\n"])
def test_not_a_mapping(text):
    err = error_for(text)
    assert err.line == 1
    assert "mapping" in err.problem


def test_error_without_a_line_has_the_path_alone():
    err = TopologyError(PATH, None, "file not found", "set CMSBOT_TOPOLOGY")
    assert str(err) == f"{PATH}: file not found. Fix: set CMSBOT_TOPOLOGY"
