"""One command for several probes (workers/transport/fleet.py): when it fails part-way, the probes that
answered before still count, and the first probe without an answer is the one blamed. The answers are
the raw lines the lab printed (tests/fixtures/recorded/healthy.json)."""

from __future__ import annotations

import json
from pathlib import Path

from cms.models import CmsStatus, HostErrorKind, ReplicaHealth
from cms.settings import Settings
from cms.topology import load
from workers.transport.fleet import Fleet, HostRun
from workers.transport.winrm import Output, TimedOut

FOLDER = Path(__file__).resolve().parent.parent / "fixtures" / "recorded"
RECORDED = json.loads((FOLDER / "healthy.json").read_text(encoding="utf-8"))
FE = "fe01.contoso.com"
LINES = RECORDED["status"][0]["runs"][FE]["stdout"]  # probe -> the JSON line it printed


def _fleet() -> Fleet:
    return Fleet(load(FOLDER / RECORDED["topology"]), Settings(), lambda server: {})


def test_a_command_that_times_out_after_its_first_probe_keeps_that_answer_and_blames_the_second():
    fleet = _fleet()
    try:
        run = HostRun(FE)
        failure = TimedOut("no answer within the host deadline")
        partial = Output((LINES["cms-status"] + "\r\n").encode(), b"", -1)
        assert not fleet._read(run, ["cms-status", "replica-health"], partial, failure)
        assert run.answer("cms-status", CmsStatus) is not None
        assert run.error is not None
        assert (run.error.probe, run.error.kind) == ("replica-health", HostErrorKind.timed_out)
    finally:
        fleet.close()


def test_a_command_that_answers_for_every_probe_reads_each_as_if_it_ran_alone():
    fleet = _fleet()
    try:
        run = HostRun(FE)
        out = Output("\r\n".join([LINES["cms-status"], LINES["replica-health"], ""]).encode(), b"", 0)
        assert fleet._read(run, ["cms-status", "replica-health"], out, None)
        assert run.answer("cms-status", CmsStatus) is not None
        assert run.answer("replica-health", ReplicaHealth) is not None
        assert run.errors == []
    finally:
        fleet.close()
