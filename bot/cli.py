"""`cmsbot`: the command line.

  cmsbot demo      the whole pipeline on the simulated lab, no Slack needed
  cmsbot chat      run a slash command through the queue, print the thread
  cmsbot worker    an RQ worker on the project's queues
  cmsbot lab       serve the simulated deployment
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import cast

import redis

from cms.topology import Version
from hub.keys import hub_for

log = logging.getLogger("cmsbot")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=os.environ.get("CMSBOT_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cms-chatops")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmsbot",
                                description="ChatOps for the Lync / Skype for Business Central Management Store.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(title="commands")

    demo = sub.add_parser("demo", help="run /cms-status end to end on the simulated lab and print the thread")
    demo.add_argument("--scenario", action="append", metavar="NAME[:target]",
                      help="lab scenario to inject instead of the demo's default (repeatable)")
    demo.add_argument("--command", default="/cms-status", help="slash command to run (default: /cms-status)")
    demo.set_defaults(func=cmd_demo)

    chat = sub.add_parser("chat", help='run a slash command, e.g. cmsbot chat "/cms-status pool01.contoso.com"')
    chat.add_argument("text", help="the slash command and its argument, quoted")
    chat.add_argument("--user", default=None, help="user id to act as (default: your login name)")
    chat.set_defaults(func=cmd_chat)

    explain = sub.add_parser("explain", help="explain an event pasted from Event Viewer (FILE, or - for stdin)")
    explain.add_argument("file", help="file holding the event text as Event Viewer copies it, or - for stdin")
    explain.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    explain.set_defaults(func=cmd_explain)

    audit = sub.add_parser("audit", help="print the append-only audit log (requests, decisions, executions)")
    audit.add_argument("--since", default=None,
                       help="only entries newer than this: a duration (90m, 24h, 7d) or an ISO date/time")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)

    bot = sub.add_parser("bot", help="run the Slack app (Socket Mode or HTTP /slack/events) and its reporter")
    bot.set_defaults(func=cmd_bot)

    reporter = sub.add_parser("reporter", help="Slack delivery, dead-job watchdog, approval expiry "
                                               "(`cmsbot bot` starts and supervises it)")
    reporter.set_defaults(func=cmd_reporter)

    worker = sub.add_parser("worker", help="run an RQ worker on the project's queues")
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(func=cmd_worker)

    lab = sub.add_parser("lab", help="serve the simulated deployment over WS-Management until stopped")
    lab.add_argument("--version", choices=[v.value for v in Version], default=Version.sfb2019.value)
    lab.add_argument("--servers", type=int, default=8, help="number of servers (default 8; more adds Front End pools)")
    lab.add_argument("--edge-winrm", action="store_true",
                     help="Edge servers answer WinRM (by default they do not, as in perimeter networks)")
    lab.add_argument("--convergence-s", type=float, default=2.0,
                     help="seconds a CMS failover takes to converge (default 2)")
    lab.add_argument("--latency-ms", type=int, default=0, help="each probe takes this long")
    lab.add_argument("--module-load-ms", type=int, default=2000,
                     help="what loading the Lync/SkypeForBusiness module adds to each probe that loads it "
                          "(default 2000)")
    lab.add_argument("--max-envelope-kb", type=int, default=500,
                     help="WinRM MaxEnvelopeSizekb: larger requests get HTTP 413 (default 500; 150 on Windows Server "
                          "2008 R2)")
    lab.add_argument("--max-shells-per-user", type=int, default=30,
                     help="WinRM MaxShellsPerUser per server (default 30)")
    lab.add_argument("--idle-timeout-s", type=float, default=7200.0,
                     help="WinRM shell IdleTimeout: an unused shell is deleted after this long (default 7200)")
    lab.add_argument("--scenario", action="append", default=[], metavar="NAME[:target]", help="repeatable")
    lab.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    lab.add_argument("--advertise", default=None, help="host name written into the topology (default: --host)")
    lab.add_argument("--port", type=int, default=5985, help="port to bind; 0 picks a free one")
    lab.add_argument("--topology-out", default="lab-topology.yaml", help="where to write the topology file")
    lab.set_defaults(func=cmd_lab)
    return p


# -- shared set-up ----------------------------------------------------------------


class SetupError(Exception):
    """A one-paragraph explanation of what is missing and how to get it."""


def _settings(**overrides):
    from pydantic import ValidationError

    from cms.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        raise SetupError(f"configuration error in {'.'.join(map(str, err['loc']))}: {err['msg']}") from None


def _redis(url: str) -> redis.Redis:
    from hub.contract import connect

    conn = connect(url)
    try:
        conn.ping()
    except (redis.RedisError, OSError):
        raise SetupError(
            f"Redis at {_safe_url(url)} does not answer. Start Redis (e.g. `redis-server`, or `docker compose up "
            "redis`) or set REDIS_URL to one that runs."
        ) from None
    return conn


def _safe_url(url: str) -> str:
    """The URL without a password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path}"


def _topology(path: Path):
    from cms import topology as topo

    try:
        return topo.load(path)
    except topo.TopologyError as e:
        raise SetupError(f"topology: {e}") from None


def _fail(e: SetupError) -> int:
    print(f"cmsbot: {e}", file=sys.stderr)
    return 2


# -- commands ----------------------------------------------------------------------


def cmd_lab(args) -> int:
    from lab.server import main as lab_main

    return lab_main(args)


def cmd_explain(args) -> int:
    import json

    from bot.render.text import explanation_text
    from cms.explain import explain

    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        return _fail(SetupError(f"cannot read {args.file}: {err.strerror}"))
    e = explain(text)
    if args.json:
        fields = ("source", "event_id", "computer", "replicas", "paths", "code", "summary")
        print(json.dumps({k: getattr(e, k) for k in fields}, indent=2))
    else:
        print(explanation_text(e))
    return 0 if e.code else 1


def cmd_audit(args) -> int:
    import json
    from datetime import UTC, datetime, timedelta

    try:
        settings = _settings()
        hub = hub_for(_redis(settings.redis_url), settings)
        start = "-"
        if args.since:
            units = {"m": "minutes", "h": "hours", "d": "days"}
            text = args.since.strip()
            try:
                if text[-1:] in units and text[:-1].isdigit():
                    since = datetime.now(UTC) - timedelta(**{units[text[-1]]: int(text[:-1])})
                else:
                    since = datetime.fromisoformat(text)
                    since = since if since.tzinfo else since.replace(tzinfo=UTC)
            except ValueError:
                raise SetupError(f"--since {text!r}: give a duration like 90m, 24h, 7d or an ISO date") from None
            start = str(int(since.timestamp() * 1000))
    except SetupError as e:
        return _fail(e)
    # the connection does not decode responses: ids, names and values are bytes
    for entry_id, fields in cast(list[tuple[bytes, dict[bytes, bytes]]], hub.redis.xrange(hub.keys.audit, min=start)):
        entry = {k.decode(): v.decode() for k, v in fields.items()}
        if args.json:
            print(json.dumps({"id": entry_id.decode(), **entry}))
            continue
        at = entry.pop("at", "?")
        head = " ".join(f"{entry.pop(k)}" for k in ("who", "what", "target", "result") if k in entry)
        rest = " ".join(f"{k}={v}" for k, v in entry.items() if len(v) < 200)
        print(f"{at}  {head}  {rest}".rstrip())
    return 0


def _slack_settings():
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from bot.config import SlackSettings

    try:
        return SlackSettings()
    except ValidationError as e:
        err = e.errors()[0]
        raise SetupError(f"Slack configuration error in {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except SettingsError as e:
        raise SetupError(f"Slack configuration error: {e}") from None


def cmd_reporter(args) -> int:
    from bot.serve.server import run_reporter

    try:
        settings = _settings()
        slack = _slack_settings()
        conn = _redis(settings.redis_url)
    except SetupError as e:
        return _fail(e)
    return run_reporter(settings, slack, conn)


def cmd_bot(args) -> int:
    from bot.serve.server import missing_settings, run

    try:
        settings = _settings()
        slack = _slack_settings()
        missing = missing_settings(slack)
        if missing:
            raise SetupError("the Slack app needs " + " and ".join(missing) + " (see the README's Slack section)")
        conn = _redis(settings.redis_url)
        topology = _topology(settings.topology)
    except SetupError as e:
        return _fail(e)
    return run(settings, slack, conn, topology)


def cmd_worker(args) -> int:
    from rq.serializers import JSONSerializer

    from hub.contract import queues

    try:
        settings = _settings()
        conn = _redis(settings.redis_url)
        _topology(settings.topology)
    except SetupError as e:
        return _fail(e)
    import threading

    from hub.liveness import lost_reason, watch
    from workers.allowed_jobs import OurJob
    from workers.jobs import on_work_horse_killed
    from workers.rq_worker import Worker  # rides out a short Redis outage while a job runs

    # OurJob: only the project's own entry points and callbacks run (Redis is a trust boundary)
    hub = hub_for(conn, settings)
    worker = Worker(queues(hub), connection=conn, serializer=JSONSerializer, worker_ttl=60,
                    work_horse_killed_handler=on_work_horse_killed, job_class=OurJob)
    stop = threading.Event()
    threading.Thread(target=watch, args=(hub, lambda rid, cmd: lost_reason(hub, rid, cmd, settings.cooldown), stop),
                     kwargs={"stale": settings.heartbeat_stale}, name="watchdog", daemon=True).start()
    try:
        worker.work(burst=args.burst, with_scheduler=False, logging_level=os.environ.get("CMSBOT_LOG_LEVEL", "INFO"))
    finally:
        stop.set()
    return 0


def cmd_chat(args) -> int:
    from bot.delivery.console import run_chat

    try:
        settings = _settings()
        conn = _redis(settings.redis_url)
        topology = _topology(settings.topology)
    except SetupError as e:
        return _fail(e)
    return run_chat(hub_for(conn, settings), settings, topology, args.text, args.user or _login()).exit_code


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name in some containers
        return "console"


# One failure of each scenario of the seed article: Edge HTTPS 4443, Edge certificate, share access.
DEMO_SCENARIOS = ["edge-4443-blocked:edge01.contoso.com", "edge-cert-wrong-name:edge02.contoso.com",
                  "share-acl-missing:fe03.contoso.com"]
# What loading the Lync/SkypeForBusiness module costs each probe in the demo's lab: enough to be seen in the
# thread's progress, far below the 2 s default of `cmsbot lab`, so the demo stays a few seconds long.
DEMO_MODULE_LOAD_MS = 300


def cmd_demo(args) -> int:
    from bot.delivery.console import run_chat, workers_listening
    from lab.processes import NO_REDIS, DidNotStart, LabProcess, Managed, RedisServer, cmsbot, redis_answers

    started: list[Managed] = []
    private = None
    with tempfile.TemporaryDirectory(prefix="cmsbot-demo-") as tmp:
        try:
            base = _settings()
            url = base.redis_url
            if not redis_answers(url):
                try:
                    private = RedisServer(Path(tmp))
                except FileNotFoundError:
                    raise SetupError(NO_REDIS.format(url=_safe_url(url))) from None
                url = private.url
            topology_path = Path(tmp) / "topology.yaml"  # where LabProcess(Path(tmp)) writes it
            # a private namespace: the demo shares no key, queue, lock or approval with a bot on this Redis
            namespace = f"cmsbot-demo-{secrets.token_hex(4)}"
            password = secrets.token_urlsafe(18)
            env = dict(os.environ, REDIS_URL=url, CMSBOT_TOPOLOGY=str(topology_path), CMSBOT_NAMESPACE=namespace,
                       CMSBOT_WINRM_USERNAME="cmsbot", CMSBOT_WINRM_PASSWORD=password,
                       CMSBOT_WINRM_TRANSPORT="basic", CMSBOT_WINRM_SCHEME="http")
            for inherited in ("CMSBOT_WINRM_PASSWORD_FILE", "CMSBOT_QUEUE_PREFIX"):
                env.pop(inherited, None)
            print(f"demo: Redis {_safe_url(url)}{' (private)' if private else ''}; starting the lab and a worker",
                  flush=True)
            scenarios = args.scenario if args.scenario is not None else DEMO_SCENARIOS
            lab = LabProcess(Path(tmp), *[a for s in scenarios for a in ("--scenario", s)], user="cmsbot",
                             password=password, env=env, module_load_ms=DEMO_MODULE_LOAD_MS)
            started.append(lab)
            print("demo: " + lab.text().strip().splitlines()[-1], flush=True)
            worker = Managed(cmsbot("worker"), env, Path(tmp) / "worker.log")
            started.append(worker)
            settings = _settings(redis_url=url, topology=topology_path, namespace=namespace)
            hub = hub_for(_redis(url), settings)
            worker.wait_for(lambda: workers_listening(hub), 20, "the worker")
            print("", flush=True)
            return run_chat(hub, settings, _topology(topology_path), args.command, "demo-user").exit_code
        except DidNotStart as e:
            return _fail(SetupError(str(e)))
        except SetupError as e:
            return _fail(e)
        finally:
            for proc in reversed(started):
                proc.stop()
            if private:
                private.stop()


if __name__ == "__main__":
    sys.exit(main())
