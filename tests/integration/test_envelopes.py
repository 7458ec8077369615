"""The Create request is measured before it is sent: packed, a large deployment's CMS Front End fits
an older host's 150 KB MaxEnvelopeSizekb (and pywinrm's 153,600-byte limit on the response that
echoes the environment); above the limit its probes are spread over several shells, never refused."""

from __future__ import annotations

import pytest

from cms import topology as topo
from tests.harness import LabProcess, stop_cleanly
from workers.runs.status import cms_candidates, probe_params
from workers.transport.fleet import Fleet

SERVERS = 1000


@pytest.fixture(scope="module")
def thousand_lab(tmp_path_factory):
    # the host limit of Windows Server 2008 R2 (MS-WSMV 2.2.4.10, note <8>)
    lab = LabProcess(tmp_path_factory.mktemp("thousand"), "--servers", str(SERVERS), "--max-envelope-kb", "150")
    yield lab
    stop_cleanly(lab)


def _front_end_answers(lab, max_kb: int):
    topology = topo.load(lab.topology)
    assert len(topology.servers) == SERVERS
    settings = lab.client_settings(host_deadline=20, winrm_max_envelope_kb=max_kb)
    front_end = cms_candidates(topology)[0]
    calls = probe_params(topology, topology.everything())
    with Fleet(topology, settings, calls) as fleet:
        return fleet.run(front_end, sorted(calls(front_end))), sorted(calls(front_end))


def test_a_thousand_servers_cms_front_end_fits_one_shell_on_an_older_host(thousand_lab):
    """Packed, its Create (and the response that echoes it) stays under 150 KB: the lab answers HTTP 413
    to a larger request and an EncodingLimit fault to a response over pywinrm's 153,600 bytes."""
    before = thousand_lab.stats()["shells"].get("fe01.contoso.com", 0)
    run, probes_run = _front_end_answers(thousand_lab, max_kb=150)
    assert run.errors == [], run.errors
    assert sorted(run.results) == probes_run
    assert thousand_lab.stats()["shells"]["fe01.contoso.com"] - before == 1


def test_above_the_limit_the_probes_are_spread_over_shells_that_fit(thousand_lab):
    before = thousand_lab.stats()["shells"].get("fe01.contoso.com", 0)
    run, probes_run = _front_end_answers(thousand_lab, max_kb=40)
    assert run.errors == [], run.errors
    assert sorted(run.results) == probes_run  # every probe answered: reachability to 999 replicas included
    shells = thousand_lab.stats()["shells"]["fe01.contoso.com"] - before
    assert 1 < shells <= len(probes_run)
