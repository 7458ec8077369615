"""Replay folders (tests/fixtures/replays/, the `cmsbot capture` format) as recorded cases of the
parsers and the diagnosis: every captured answer is read the way the fleet reads it, and the status
check's pure functions (build_report, second_stage, add_second_stage, diagnose) run over the folder
with the plan run_status makes. Files only: no lab, no sockets, no Redis."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.render import text as render
from cms.diagnose import diagnose
from cms.models import HostError, HostErrorKind, StatusReport
from lab.replay import Captured, Replay
from workers import probes
from workers.runs.status import add_second_stage, build_report, cms_candidates, second_stage
from workers.transport.fleet import HostRun
from workers.transport.winrm import Output, ProbeFailed

pytestmark = pytest.mark.unit

REPLAYS = Path(__file__).resolve().parents[1] / "fixtures" / "replays"
FOLDERS = sorted(p.name for p in REPLAYS.iterdir() if (p / "manifest.json").exists())


def host_run(server: str, probe_names: list[str], replay: Replay) -> HostRun:
    """What the fleet makes of a server's captured answers, probe after probe, stopping at the first failure
    (as Fleet._run does)."""
    run = HostRun(server)
    for name in probe_names:
        captured = replay.answers.get((server, name))
        if captured is None:
            run.error = HostError(server=server, kind=HostErrorKind.probe_failed, probe=name, reason="not captured")
            break
        if captured.error_kind:
            run.error = HostError(server=server, kind=HostErrorKind(captured.error_kind), probe=name,
                                  reason=captured.error_reason)
            break
        try:
            run.read(name, probes.decode(name, _output(captured)))
        except ProbeFailed as f:
            run.error = HostError(server=server, kind=f.kind, probe=name, reason=f.reason)
            break
    return run


def _output(c: Captured) -> Output:
    return Output(c.stdout, c.stderr, c.exit_code)


def status_report(folder: str) -> StatusReport:
    """/cms-status over a replay folder: stage 1 as run_status plans it, the CMS fallbacks, stage 2, diagnose."""
    replay = Replay.load(REPLAYS / folder)
    topology = replay.captured_topology
    target = topology.everything()
    candidates = cms_candidates(topology)
    plan: dict[str, list[str]] = {s.fqdn: ["replica-health"] for s in topology.servers if s.winrm}
    if candidates:
        plan[candidates[0]] = ["cms-status"] + plan.get(candidates[0], [])
        if topology.deployment.version.has_failover_cmdlet:
            backup_host = candidates[1] if len(candidates) > 1 else candidates[0]
            plan[backup_host] = plan.get(backup_host, []) + ["backup-status"]
    runs = {server: host_run(server, names, replay) for server, names in plan.items()}
    attempts = [runs[candidates[0]]] if candidates else []
    for fallback in [c for c in candidates[1:] if not runs[c].error][:2]:
        if "cms-status" in attempts[-1].results:
            break
        attempts.append(host_run(fallback, ["cms-status"], replay))
    report = build_report(topology, target, runs, attempts)
    stage2 = second_stage(topology, report, candidates)
    if stage2:
        report = add_second_stage(report, {s: host_run(s, names, replay) for s, names in stage2.items()})
    return report.model_copy(update={"findings": diagnose(report)})


# -- every folder ------------------------------------------------------------------------------


def test_there_is_a_replay_folder():
    assert "lync2010-edge-https-unavailable" in FOLDERS


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_captured_answer_reads(folder):
    """The parsers on each answer, as the fleet decodes it; an answer the capture recorded as unreadable must stay
    so (its `reading` says why)."""
    replay = Replay.load(REPLAYS / folder)
    assert replay.answers
    for (server, name), captured in replay.answers.items():
        if captured.error_kind:
            continue
        run = HostRun(server)
        run.read(name, probes.decode(name, _output(captured)))
        assert not run.unreadable, f"{folder}: {name} on {server}: {run.unreadable[0].reason}"
        assert name in run.results


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_status_check_runs_over_every_folder(folder):
    report = status_report(folder)
    assert report.cms is not None
    assert render.report_text(report)


# -- the hand-built folder: Microsoft's Scenario 1 (event 1017, TCP 4443 to the Edge) --------------

EDGE_FOLDER = "lync2010-edge-https-unavailable"
EDGE = "sever05.contoso.com"  # the article's own spelling


def test_an_edge_unreachable_on_4443_is_named_with_its_event_and_the_port_test():
    report = status_report(EDGE_FOLDER)
    assert [(f.code.value, f.subject) for f in report.findings] == [("replica.https-unreachable", EDGE)]
    (finding,) = report.findings
    evidence = " | ".join(e.text for e in finding.evidence)
    assert "Event 1017" in evidence and f"{EDGE}: Https destination unavailable" in evidence
    assert "TCP 4443 to 192.0.2.5: TimedOut" in evidence
    assert any("not reachable over WinRM" in u for u in finding.unchecked)


def test_the_cms_view_of_lync_2010_reads_as_documented():
    report = status_report(EDGE_FOLDER)
    assert report.cms is not None
    edge = next(r for r in report.cms.replicas if r.fqdn == EDGE)
    assert (edge.up_to_date, edge.last_status_report, edge.product_version or "") == (False, None, "")
    assert report.cms.store.active_master_fqdn == "server01.contoso.com"
    assert report.events_source == "server01.contoso.com"
    assert not report.host_errors
    assert render.verdict(report).startswith("PROBLEMS: 2/3 replicas up to date")


def test_the_folder_says_what_it_was_built_from():
    readme = (REPLAYS / EDGE_FOLDER / "README.md").read_text(encoding="utf-8")
    assert "central-management-store-replication-failures.md" in readme
    assert "built by hand" in readme.lower()
    # the event text is the article's, word for word (its typo included)
    message = "Replica file transfer failures: sever05.contoso.com: Https destination unavailable."
    stdout = (REPLAYS / EDGE_FOLDER / "servers" / "server01.contoso.com" / "replication-events.stdout").read_text()
    assert message in stdout
