"""Replay of the probe output recorded from the lab (tests/fixtures/record_lab.py).

Each recording holds, in order, the calls a job made on its `Fleet` (`run_all` with its plan, or
`run` on one server) and, for every server, the raw JSON line of each probe (as the probes' writer prints it)
the product decoded, or the HostError it reported. Replaying means: `probes.decode` each raw line
into the HostRun the job saw, then call the product's pure functions with them. No lab, no
sockets, no Redis: only files.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from unittest import mock

from cms import topology as topo
from cms.diagnose import diagnose
from cms.messages import Message
from cms.models import CmdletRun, Finding, HostError, StatusReport
from cms.preflight import Facts
from cms.settings import Settings
from workers import probes
from workers.runs import failover, status
from workers.runs.status import add_second_stage, build_report, cms_candidates, second_stage
from workers.transport.fleet import HostRun
from workers.transport.winrm import Output

RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "recorded"
NAMES = sorted(p.stem for p in RECORDED.glob("*.json"))


@cache
def doc(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))


@cache
def topology_of(name: str) -> topo.Topology:
    return topo.load(RECORDED / doc(name)["topology"])


def host_run(server: str, rec: dict[str, Any]) -> HostRun:
    """What the job's Fleet returned for one server: each probe's answer read as the fleet reads
    it (decoded, then parsed into its model), or the server's error."""
    run = HostRun(server=server, error=HostError.model_validate(rec["error"]) if rec["error"] else None)
    for probe, stdout in rec["stdout"].items():
        run.read(probe, probes.decode(probe, Output(stdout.encode("utf-8"), b"", 0)))
    return run


def runs_of(call: dict[str, Any]) -> dict[str, HostRun]:
    return {server: host_run(server, rec) for server, rec in call["runs"].items()}


# -- /cms-status: the pure functions of workers.runs.status and cms.diagnose ----------------------


@dataclass(frozen=True)
class StatusReplay:
    report: StatusReport  # the report before diagnosis (stage 1, the CMS fallbacks, stage 2)
    stage2_planned: dict[str, list[str]]  # what second_stage() decides from stage 1
    stage2_recorded: dict[str, list[str]]  # what the job ran in stage 2 when it was recorded


@cache
def status_replay(name: str) -> StatusReplay:
    """Stage 1 is the first run_all, each `run` after it a CMS fallback attempt, and a second
    run_all the second stage: exactly the order in which run_status calls its Fleet."""
    calls = doc(name)["status"]
    topology = topology_of(name)
    target = topology.everything()
    candidates = cms_candidates(topology)
    stage1 = runs_of(calls[0])
    fallbacks = [host_run(c["server"], c["run"]) for c in calls[1:] if c["call"] == "run"]
    stage2 = [c for c in calls[1:] if c["call"] == "run_all"]
    attempts = ([stage1[candidates[0]]] if candidates else []) + fallbacks
    report = build_report(topology, target, stage1, attempts)
    planned = second_stage(topology, report, candidates)
    if stage2:
        report = add_second_stage(report, runs_of(stage2[0]))
    return StatusReplay(report=report, stage2_planned=planned, stage2_recorded=stage2[0]["plan"] if stage2 else {})


@cache
def report(name: str) -> StatusReport:
    """The /cms-status report of a recording, diagnosed."""
    before = status_replay(name).report
    return before.model_copy(update={"findings": diagnose(before)})


def findings(name: str) -> list[Finding]:
    return report(name).findings


def codes(name: str) -> set[tuple[str, str]]:
    return {(f.code, f.subject) for f in findings(name)}


def the(name: str, code: str, subject: str) -> Finding:
    hits = [f for f in findings(name) if f.code == code and f.subject == subject]
    assert hits, f"no {code} on {subject} in {name}; findings: {sorted(codes(name))}"
    assert len(hits) == 1, f"{code} on {subject} reported {len(hits)} times in {name}"
    return hits[0]


def evidence(f: Finding) -> str:
    return " | ".join(e.text for e in f.evidence)


def everything_said(f: Finding) -> str:
    """All a user reads of one finding: summary, evidence with sources, unchecked, fix."""
    parts = [f.summary] + [f"{e.text} ({e.source})" for e in f.evidence] + f.unchecked + f.fix
    return " | ".join(parts)


# -- jobs whose composition is entangled with their Fleet: replayed through a stand-in Fleet -------


class ReplayFleet:
    """Stands in for workers.transport.fleet.Fleet: answers each call with the recorded one, in order, and
    fails if the code under test asks for something else than it asked for when recorded."""

    def __init__(self, calls: list[dict[str, Any]]):
        self._calls = list(calls)

    def __call__(self, topology: Any, settings: Any, calls_for: Any) -> ReplayFleet:  # used as the class
        return self

    def __enter__(self) -> ReplayFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def _next(self, kind: str) -> dict[str, Any]:
        assert self._calls, f"the code made a {kind} call the recording does not have"
        call = self._calls.pop(0)
        assert call["call"] == kind, f"recorded {call['call']}, the code now makes {kind}"
        return call

    def run_all(self, plan: dict[str, list[str]], on_done: Any = None) -> dict[str, HostRun]:
        call = self._next("run_all")
        assert plan == call["plan"], f"plan changed since the recording: {plan} != {call['plan']}"
        runs = runs_of(call)
        for run in runs.values():
            if on_done:
                on_done(run)
        return runs

    def run(self, server: str, names: list[str], stdin: Any = None) -> HostRun:
        call = self._next("run")
        assert (server, list(names)) == (call["server"], call["probes"]), "a different run than recorded"
        return host_run(server, call["run"])

    @property
    def unused(self) -> list[dict[str, Any]]:
        return self._calls


@contextmanager
def replaying(module: Any, calls: list[dict[str, Any]]):
    fleet = ReplayFleet(calls)
    with mock.patch.object(module, "Fleet", fleet):
        yield fleet


def settings() -> Settings:
    return Settings.model_construct()  # defaults only; the environment plays no part in a replay


@cache
def facts(name: str) -> Facts:
    """The preflight job's facts (workers.runs.failover.gather), from the recorded probes. gather()
    reads the Fleet and builds the facts in one function, so it runs on a ReplayFleet."""
    with replaying(failover, doc(name)["preflight"]) as fleet:
        result = failover.gather(topology_of(name), settings(), None)
    assert not fleet.unused, "gather() made fewer calls than recorded"
    return result


def run_status_replayed(name: str) -> tuple[StatusReport, list[Message]]:
    """run_status itself (stage choice and CMS fallback included) on a ReplayFleet."""
    emitted: list[Message] = []
    topology = topology_of(name)
    with replaying(status, doc(name)["status"]) as fleet:
        result = status.run_status(topology, settings(), topology.everything(), emitted.append)
    assert not fleet.unused, "run_status made fewer calls than recorded"
    return result, emitted


def failover_attempt(name: str) -> tuple[str, CmdletRun]:
    """The server a recorded failover ran on, and what the cms-failover probe's answer says."""
    attempt = doc(name)["failover_attempt"]
    (call,) = attempt["calls"]
    answer = host_run(attempt["server"], call["run"]).answer("cms-failover", CmdletRun)
    assert answer is not None, "the recorded cms-failover answer is unreadable"
    return attempt["server"], answer
