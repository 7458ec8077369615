"""Each probe has its own deadline, declared in its header for a real host (module load included)
and scaled by CMSBOT_HOST_DEADLINE: a long operation is not cut off at a read-only probe's
deadline, and a hung read-only probe does not wait as long as a long one."""

from __future__ import annotations

import time

from cms import topology as topo
from cms.models import HostErrorKind
from cms.settings import Settings
from workers import probes
from workers.transport.fleet import Fleet

SERVER = "fe03.contoso.com"


def _timed_run(lab, settings: Settings, probe: str) -> tuple[float, Fleet, object]:
    topology = topo.load(lab.topology)
    with Fleet(topology, settings, lambda h: {probe: {"name": "REPLICA"} if probe == "start-service" else {}}) as fleet:
        started = time.monotonic()
        run = fleet.run(SERVER, [probe])
        return time.monotonic() - started, fleet, run


def test_a_hung_probe_times_out_at_its_own_deadline(lab):
    lab.scenarios(f"hang:{SERVER}")
    settings = lab.client_settings(host_deadline=0.6)
    short, fleet, run = _timed_run(lab, settings, "replica-health")
    assert [(e.kind, e.probe) for e in run.errors] == [(HostErrorKind.timed_out, "replica-health")]
    long, fleet, run = _timed_run(lab, settings, "start-service")
    assert [(e.kind, e.probe) for e in run.errors] == [(HostErrorKind.timed_out, "start-service")]
    # start-service declares 240 s against the read-only probes' 30 s: 8 times as long here
    assert probes.probe("start-service").deadline == 8 * probes.probe("replica-health").deadline
    assert fleet.deadline("start-service") == 8 * fleet.deadline("replica-health") == 8 * 0.6
    assert short >= 0.6 and long >= 8 * 0.6
    print(f"replica-health gave up after {short:.1f} s, start-service after {long:.1f} s")
