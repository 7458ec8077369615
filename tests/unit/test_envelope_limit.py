"""A server's probes are measured before their shell's Create is sent (workers/transport/fleet.py)."""

from __future__ import annotations

import hashlib

from cms.models import HostErrorKind
from cms.settings import Settings
from lab.deployment import build
from workers import probes
from workers.transport.fleet import Fleet, envelope_size

UNREACHABLE = "http://127.0.0.1:9/wsman"  # nothing may be sent: the discard port would refuse it anyway


def _targets(n: int) -> list[dict]:
    names = [hashlib.sha256(str(i).encode()).hexdigest() + ".contoso.com" for i in range(n)]  # incompressible
    return [{"fqdn": f, "address": f, "port": 445, "share": True} for f in names]


def test_a_probe_too_large_for_any_shell_is_not_sent_and_the_error_says_why():
    topology = build().topology(lambda server: UNREACHABLE)
    big = {"reachability": {"targets": _targets(1500), "timeoutMs": 2000}}
    assert envelope_size(probes.shell_env(big)) > 32 * 1024
    settings = Settings(winrm_max_envelope_kb=32, host_deadline=5)
    with Fleet(topology, settings, lambda server: big) as fleet:
        run = fleet.run("fe01.contoso.com", ["reachability"])
    (error,) = run.errors
    assert (error.kind, error.probe) == (HostErrorKind.probe_failed, "reachability")
    assert "over the 32 KB limit" in error.reason and "MaxEnvelopeSizekb" in error.reason
