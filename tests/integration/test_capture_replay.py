"""`cmsbot capture` from the live lab, then `cmsbot lab --replay` of that folder: /cms-status through the
console adapter gives the same thread as on the live lab (apart from times, and from names when the
capture replaced them), and no password or real name is in the folder.

Real parts throughout: the lab over WS-Management, the `cmsbot capture` and `cmsbot lab --replay`
command lines, pywinrm, RQ workers, Redis, the console adapter."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import redis

from bot.delivery.console import run_chat
from cms import topology as topo
from cms.settings import Settings
from hub.keys import hub_for
from lab.processes import client_environment, client_settings
from tests.harness import (
    HOST_DEADLINE,
    LAB_PASSWORD,
    LAB_USER,
    LabProcess,
    WorkerProcess,
    cmsbot,
    scaled,
    stop_cleanly,
)

SCENARIOS = ("edge-4443-blocked:edge01.contoso.com", "edge-cert-wrong-name:edge02.contoso.com",
             "share-acl-missing:fe03.contoso.com", "unreachable:fe04.contoso.com")
TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?: UTC|Z)?|\b\d\d:\d\d:\d\d UTC\b")
LAB_PORT = re.compile(r"127\.0\.0\.1:\d+")
PROGRESS = re.compile(r"^\s*\| (\d+) of (\d+) servers answered$")


def comparable(thread: str) -> list[str]:
    """The thread without what legitimately differs between two runs: times, the lab's random port, and the
    intermediate progress lines (they are paced by the clock)."""
    lines = []
    for line in thread.splitlines():
        m = PROGRESS.match(line)
        if m and m.group(1) != m.group(2):
            continue
        lines.append(LAB_PORT.sub("127.0.0.1:PORT", TIME.sub("<time>", line)))
    return lines


def capture(lab: LabProcess, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CMSBOT_TOPOLOGY=str(lab.topology), CMSBOT_WINRM_USERNAME=LAB_USER,
               CMSBOT_WINRM_PASSWORD=LAB_PASSWORD, CMSBOT_HOST_DEADLINE=str(HOST_DEADLINE),
               **client_environment(lab.topology))
    env.pop("CMSBOT_WINRM_PASSWORD_FILE", None)
    return subprocess.run(cmsbot("capture", "--out", str(out), *args), env=env, capture_output=True, text=True,
                          timeout=scaled(120))


def discovered(topology: Path, source: str = "fe01.contoso.com") -> str:
    """What `cmsbot discover` reads from a Front End of this topology (its discover probe over WinRM), times
    masked."""
    from workers.runs.discover import read

    settings = client_settings(topology, host_deadline=HOST_DEADLINE)
    endpoint = topo.load(topology).server(source).endpoint
    assert endpoint is not None
    return TIME.sub("<time>", read(settings, source, endpoint.replace(source, "{fqdn}")).model_dump_json())


def status_on_replay(tmp_path: Path, redis_server, folder: Path, also: Any = None):
    """`cmsbot lab --replay folder`, a worker for its topology, /cms-status through the console adapter; `also`,
    given, is called with the replay's topology while the lab runs."""
    replay = LabProcess(tmp_path / "replay", "--replay", str(folder))
    worker = None
    try:
        if also is not None:
            also(replay.topology)
        worker = WorkerProcess(tmp_path / "replay", redis_server.fresh_db(), replay.topology,
                               host_deadline=str(HOST_DEADLINE))
        settings = Settings(redis_url=worker.redis_url, topology=replay.topology, chat_timeout=scaled(60))
        out = io.StringIO()
        outcome = run_chat(hub_for(redis.Redis.from_url(worker.redis_url), settings), settings,
                           topo.load(replay.topology), "/cms-status", "U-TEST", out=out)
        assert outcome.report is not None, out.getvalue()
        return outcome, out.getvalue(), replay.topology
    finally:
        stop_cleanly(*[p for p in (worker, replay) if p is not None])


def test_a_replayed_capture_gives_the_live_thread(status, lab, tmp_path, redis_server):
    (tmp_path / "replay").mkdir()
    live, live_thread = status(*SCENARIOS)
    # both stages, and a server that does not answer: every kind of answer the thread shows
    assert "[replica.https-unreachable]" in live_thread and "[replica.share-acl-missing]" in live_thread
    assert "fe04.contoso.com: unreachable" in live_thread
    folder = tmp_path / "capture"
    done = capture(lab, folder, "--keep-names")
    assert done.returncode == 1, done.stdout + done.stderr  # fe04 does not answer: said, and written down
    assert "no answer: fe04.contoso.com replica-health" in done.stdout

    live_discovery = discovered(lab.topology)
    replay_discovery: list[str] = []

    replayed, replay_thread, replay_topology = status_on_replay(
        tmp_path, redis_server, folder, also=lambda t: replay_discovery.append(discovered(t)))

    assert comparable(replay_thread) == comparable(live_thread)
    assert replay_discovery == [live_discovery]  # `cmsbot discover` reads the replay as it read the live lab
    assert replayed.exit_code == live.exit_code == 1
    # the topology written is the captured one, pointed at the replaying lab (its endpoints, plain HTTP)
    lab_side: Any = {"winrm": True, "pools": {"__all__": {"servers": {"__all__": {"endpoint"}}}}}
    assert topo.load(replay_topology).model_dump(exclude=lab_side) == \
        topo.load(folder / "topology.yaml").model_dump(exclude=lab_side)
    assert LAB_PASSWORD not in "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_servers_that_failed_fail_the_same_way_in_the_replay(status, lab, tmp_path, redis_server):
    """A server that hangs, one that refuses the credentials, one that answers WS-Management faults: the capture
    writes down how each failed, and the replay fails them the same way."""
    (tmp_path / "replay").mkdir()
    live, live_thread = status("hang:fe02.contoso.com", "fault-401:fe04.contoso.com", "fault-500:dir01.contoso.com")
    assert all(f"{s}.contoso.com: " in live_thread for s in ("fe02", "fe04", "dir01")), live_thread
    folder = tmp_path / "capture"
    done = capture(lab, folder, "--keep-names")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = {p.parent.name: json.loads(p.read_text())["error"]["kind"]
              for p in folder.glob("servers/*/replica-health.json") if json.loads(p.read_text())["error"]}
    assert errors == {"fe02.contoso.com": "timed_out", "fe04.contoso.com": "auth_failed",
                      "dir01.contoso.com": "probe_failed"}

    replayed, replay_thread, _ = status_on_replay(tmp_path, redis_server, folder)

    assert comparable(replay_thread) == comparable(live_thread)
    assert replayed.exit_code == live.exit_code


def test_a_renamed_capture_holds_no_secret_or_real_name_and_replays_the_same_findings(status, lab, tmp_path,
                                                                                       redis_server):
    (tmp_path / "replay").mkdir()
    live, _ = status(*SCENARIOS)
    folder = tmp_path / "capture"
    done = capture(lab, folder)
    assert done.returncode == 1, done.stdout + done.stderr

    everything = b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())
    assert LAB_PASSWORD.encode() not in everything
    real = topo.load(lab.topology)
    names = [s.fqdn for s in real.servers] + [p.fqdn for p in real.pools] + \
            [s.fqdn.split(".")[0] for s in real.servers] + ["contoso", "\\" + LAB_USER]
    leaked = [n for n in names if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", everything.decode(
        "utf-8", errors="replace"), re.I)]
    assert not leaked, f"real names in the capture: {leaked}"
    # the mapping is beside the folder, not in it
    mapping = json.loads((folder.parent / "capture.names.json").read_text())["names"]
    assert mapping["fe01.contoso.com"] == "server-001.example.invalid"
    back = {v: k for k, v in mapping.items()}

    replayed, thread, _ = status_on_replay(tmp_path, redis_server, folder)

    assert "server-001.example.invalid" in thread and "contoso" not in thread
    assert sorted((f.code, back.get(f.subject, f.subject)) for f in replayed.report.findings) == \
        sorted((f.code, f.subject) for f in live.report.findings)
    assert [(back[e.server], e.kind, e.probe) for e in replayed.report.host_errors] == \
        [(e.server, e.kind, e.probe) for e in live.report.host_errors]
    assert replayed.exit_code == live.exit_code
