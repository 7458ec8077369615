"""Every supported product version end to end (issue 16, "Done when"): for a lab of each version,
with a realistic module-load time, the real bot over signed HTTP, a Slack fake, a real worker on
real Redis and pywinrm against the lab:

1. /cms-status on a replica that is behind: the verdict names it (on Lync Server 2010, whose
   Get-CsService has no Active, the thread says "not reported by this version");
2. an operator clicks Re-seed on that replica (a viewer's click is refused): export, import
   -LocalStore, and the re-check shows it up to date;
3. /cms-recover on a CMS that calls for recovery, approved by a second person, brings the
   deployment back; on Lync Server 2010, which has no Invoke-CsManagementServerFailover, the
   /cms-recover and /cms-failover cards BLOCK with the manual Move-CsManagementServer path and
   nothing runs.

The four deployments (a lab, a worker, the bot and a Slack fake each, on a Redis database each)
run side by side: most of their time is the labs' module load, which is waiting, not work, so
together they take about as long as the slowest alone. Each version's test reports its own run.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.slack_fake import SlackFake
from tests.harness import SLACK_WORKER, LabProcess, Managed, WorkerProcess, scaled, stop_cleanly, wait_until
from tests.slack_support import (
    APPROVER,
    GROUP_OPERATOR,
    OPERATOR,
    VIEWER,
    BotProcess,
    blocks_text,
    buttons,
    parents,
    wait_for_verdict,
)

VERSIONS = ["lync2010", "lync2013", "sfb2015", "sfb2019"]
# What Import-Module Lync / SkypeForBusiness costs each probe that loads it in these labs. A real
# Front End takes a few seconds (`cmsbot lab` defaults to 2000 ms). 1000 ms keeps the module load
# the largest part of every probe, as on a real host, so the probes run one after another on a
# server and the long jobs (a recovery's preflight, restore, re-seeds, replication and re-check)
# take many module loads in a row, while the four versions together still take well under a
# minute and a half on a 2-core machine.
MODULE_LOAD_MS = 1000
# The workers' CMSBOT_HOST_DEADLINE: a read-only probe's 1 s of module load, WinRM and a machine
# running four deployments at once, with room to spare (the suite's other workers use 4 s with no
# module load); the long probes' deadlines scale with it (re-seed 600/30 times it, restore 900/30).
HOST_DEADLINE = scaled(12.0)
WORKER = dict(SLACK_WORKER, host_deadline=str(HOST_DEADLINE), approval_ttl=str(scaled(120)),
              failover_deadline=str(scaled(60)))

BEHIND = "fe03.contoso.com"


@dataclass
class Run:
    """One version's deployment, and what driving it end to end found."""

    version: str
    workdir: Path
    db: str
    fake: SlackFake = field(default_factory=lambda: SlackFake(usergroups={"S0OPS": [GROUP_OPERATOR]}))
    processes: list[Managed] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def __call__(self) -> None:
        try:
            self.fake.start()
            started = time.monotonic()
            lab = LabProcess(self.workdir, "--product", self.version, "--module-load-ms", str(MODULE_LOAD_MS))
            self.processes.append(lab)
            worker = WorkerProcess.spawned(self.workdir, self.db, lab.topology, WORKER)  # imports while the bot starts
            self.processes.append(worker)
            bot = BotProcess(self.workdir, self.db, lab.topology, self.fake)
            self.processes.append(bot)
            worker.wait_ready()
            self.timings["start"] = time.monotonic() - started
            drive(self, lab, bot)
        except BaseException as e:  # noqa: BLE001 - reported by this version's test
            self.error = e


@pytest.fixture(scope="module")
def runs(request, redis_server, tmp_path_factory):
    """Each selected version's deployment, started and driven in a thread of its own."""
    selected = {item.callspec.params["version"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")} or set(VERSIONS)
    found = {v: Run(v, tmp_path_factory.mktemp(v), redis_server.fresh_db()) for v in VERSIONS if v in selected}
    for run in found.values():
        run.thread = threading.Thread(target=run, name=f"versions-{run.version}", daemon=True)
        run.thread.start()
    yield found
    for run in found.values():
        assert run.thread is not None
        run.thread.join(scaled(300))
    try:
        stop_cleanly(*[p for run in found.values() for p in reversed(run.processes)])
    finally:
        for run in found.values():
            run.fake.stop()


@pytest.mark.parametrize("version", VERSIONS)
def test_status_reseed_and_recovery(version, runs):
    run = runs[version]
    assert run.thread is not None
    run.thread.join(scaled(300))
    assert not run.thread.is_alive(), f"{version}: still running after {scaled(300):.0f} s"
    if run.error is not None:
        raise run.error
    print(f"{version}: " + ", ".join(f"{k} {v:.1f} s" for k, v in run.timings.items()))


# -- driving one deployment ---------------------------------------------------------------------


def cards(fake: SlackFake) -> list[dict]:
    return [m for m in parents(fake) if "Preflight" in blocks_text(m)]


def request_card(bot: BotProcess, fake: SlackFake, command: str) -> dict:
    before = {c["ts"] for c in cards(fake)}
    status, body = bot.command(command, user=OPERATOR)
    assert status == 200, body
    wait_until(lambda: any(c["ts"] not in before for c in cards(fake)), 60, f"no preflight card for {command}: {body}")
    return next(c for c in cards(fake) if c["ts"] not in before)


def thread_text(fake: SlackFake, ts: str) -> str:
    return " ".join(blocks_text(m) + m.get("text", "") for m in fake.thread(ts)[1:])


def card_buttons(card: dict) -> dict[str, dict]:
    return {e["action_id"]: e for e in buttons(card)}


def drive(run: Run, lab: LabProcess, bot: BotProcess) -> None:
    fake, legacy = run.fake, run.version == "lync2010"

    # 1. /cms-status: the replica that is behind, with its Re-seed button
    started = time.monotonic()
    lab.scenarios(f"replica-behind:{BEHIND}")
    assert bot.command("/cms-status")[0] == 200
    parent = wait_for_verdict(fake, timeout=60)
    run.timings["status"] = time.monotonic() - started
    assert run.timings["status"] >= MODULE_LOAD_MS / 1000, "the lab loaded no module"
    assert parent["text"].startswith("PROBLEMS"), parent["text"]
    assert "could not be checked" not in parent["text"], f"a server failed on {run.version}: {parent['text']}"
    result = next(m for m in fake.thread(parent["ts"])[1:] if "CMS status" in blocks_text(m))
    assert "7/8 replicas up to date" in blocks_text(result)
    assert f"{BEHIND} is behind the Central Management Store" in blocks_text(result)
    assert ("active: not reported by this version" in blocks_text(result)) is legacy
    reseed = next(b for b in buttons(result) if b["action_id"] == "remediate-reseed"
                  and json.loads(b["value"])["t"] == BEHIND)
    assert f"Import-CsConfiguration -LocalStore on {BEHIND}" in json.dumps(reseed["confirm"])

    # 2. Re-seed, operators only: the re-check shows the replica up to date
    seen = len(fake.calls("response_url"))
    assert bot.click(fake, reseed["action_id"], reseed["value"], user=VIEWER, thread=parent["ts"])[0] == 200
    wait_until(lambda: len(fake.calls("response_url")) > seen, 10, "no answer to the viewer's click")
    assert "operator" in fake.calls("response_url")[seen].params["text"]
    started = time.monotonic()
    assert bot.click(fake, reseed["action_id"], reseed["value"], user=GROUP_OPERATOR, thread=parent["ts"])[0] == 200
    wait_until(lambda: "Re-check after the action" in thread_text(fake, parent["ts"]), 90,
               f"no re-check in the thread: {thread_text(fake, parent['ts'])[-1500:]}")
    run.timings["re-seed"] = time.monotonic() - started
    recheck = next(m for m in fake.thread(parent["ts"]) if "Re-check after the action" in blocks_text(m))
    assert "8/8 replicas up to date" in blocks_text(recheck), blocks_text(recheck)[:1500]
    wait_until(lambda: fake.thread(parent["ts"])[0]["text"].startswith("OK: 8/8"), 10, "parent verdict not updated")
    imports = [c["server"] for c in lab.stats()["commands"] if c["probe"] == "import-configuration"]
    assert imports == [BEHIND] and lab.probe_count("export-configuration") == 1

    # 3. /cms-recover, approved by a second person
    started = time.monotonic()
    if legacy:
        # a 2010 lab pairs no pools; a CMS without a master is what calls for recovery there
        lab.scenarios("cms-unavailable")
        card = request_card(bot, fake, "/cms-recover")
        text = blocks_text(card)
        assert "*BLOCK* version: Lync Server 2010 has no Invoke-CsManagementServerFailover -Restore" in text, text
        assert "Move-CsManagementServer" in text and "step 1" not in text.lower(), text
        assert card_buttons(card) == {}, "a BLOCK leaves nothing to approve"
        card = request_card(bot, fake, "/cms-failover")
        text = blocks_text(card)
        assert "*BLOCK* version: Lync Server 2010 has no Invoke-CsManagementServerFailover" in text, text
        assert "Move-CsManagementServer" in text and card_buttons(card) == {}
        assert [lab.probe_count(p) for p in ("cms-restore", "cms-failover", "reseed-local")] == [0, 0, 0]
    else:
        lab.scenarios("failover-in-progress")  # the seed's blocked failover: no active master
        card = request_card(bot, fake, "/cms-recover")
        text = blocks_text(card)
        assert "Invoke-CsManagementServerFailover -Restore" in text and "BLOCK" not in text, text
        assert bot.click(fake, "approval-approve", card_buttons(card)["approval-approve"]["value"], user=APPROVER,
                         thread=card["ts"])[0] == 200
        wait_until(lambda: "recovery finished" in thread_text(fake, card["ts"]), 120,
                   f"no end of the recovery: {thread_text(fake, card['ts'])[-1500:]}")
        assert "the deployment is healthy" in thread_text(fake, card["ts"]), thread_text(fake, card["ts"])[-1500:]
        assert lab.probe_count("cms-restore") == 1 and lab.probe_count("reseed-local") == 2
    run.timings["recover"] = time.monotonic() - started
