"""`cmsbot bot`: the Slack app plus its reporter, in one process.

Socket Mode when an app-level token is configured (no inbound port), else the
HTTP endpoint /slack/events (Bolt verifies every request's signature) and
/healthz for a load balancer.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from rq import Worker
from rq.serializers import JSONSerializer

from bot.app import build_app, web_client
from bot.config import SlackSettings
from bot.handlers import Deps
from bot.reporter import Reporter
from bot.roles import Roles
from bot.slack_threads import SlackThreads
from workers import approvals
from workers.jobs import lost_reason
from workers.liveness import watch
from workers.contract import append_audit, append_event, queue
from workers.settings import Settings
from workers.topology import Topology

log = logging.getLogger("cmsbot.bot")

REPORTER_GROUP = "slack"
EXPIRY_EVERY = 2.0


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 256


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("http: " + format, *args)


def missing_settings(slack: SlackSettings) -> list[str]:
    missing = [] if slack.bot_token.get_secret_value() else ["CMSBOT_SLACK_BOT_TOKEN"]
    if not slack.app_token.get_secret_value() and not slack.signing_secret.get_secret_value():
        missing.append("CMSBOT_SLACK_SIGNING_SECRET (or CMSBOT_SLACK_APP_TOKEN for Socket Mode)")
    return missing


def run(settings: Settings, slack: SlackSettings, conn: redis.Redis, topology: Topology) -> int:
    client = web_client(slack)
    roles = Roles(slack)
    # the listeners' own client: short timeouts, no retries, so a struggling Redis costs at
    # most about a second before the user gets a clear error instead of Slack's timeout
    fast = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
    deps = Deps(conn=fast, settings=settings, slack=slack, topology=topology, roles=roles)
    app = build_app(deps, client)
    stop = threading.Event()

    def listening(queue_name: str) -> int:
        return len(Worker.all(queue=queue(conn, queue_name), serializer=JSONSerializer))

    threads = SlackThreads(conn, client, listening)
    workers = [threading.Thread(target=_report, args=(conn, threads, stop), name="reporter", daemon=True),
               threading.Thread(target=_refresh_groups, args=(roles, client, slack, stop), name="groups", daemon=True),
               threading.Thread(target=_expire_approvals, args=(conn, stop), name="expiry", daemon=True),
               threading.Thread(target=watch, args=(conn, lambda rid, cmd: lost_reason(conn, rid, cmd), stop),
                                name="watchdog", daemon=True)]
    for t in workers:
        t.start()

    if slack.app_token.get_secret_value():
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, slack.app_token.get_secret_value())
        signal.signal(signal.SIGTERM, lambda *_: (stop.set(), handler.close()))
        print("cmsbot bot: connected to Slack in Socket Mode", flush=True)
        handler.start()
        return 0

    from slack_bolt.adapter.wsgi import SlackRequestHandler

    bolt = SlackRequestHandler(app)

    def wsgi(environ, start_response):
        if environ.get("PATH_INFO") == "/healthz":
            ok = _redis_ok(conn)
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok" if ok else b"redis unreachable"]
        return bolt(environ, start_response)

    server = make_server(slack.http_host, slack.http_port, wsgi, server_class=_Server, handler_class=_QuietHandler)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"cmsbot bot: listening on http://{slack.http_host}:{server.server_port}/slack/events", flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        stop.set()
        server.server_close()
    return 0


def _redis_ok(conn: redis.Redis) -> bool:
    try:
        return bool(conn.ping())
    except (redis.RedisError, OSError):
        return False


def _report(conn: redis.Redis, threads: SlackThreads, stop: threading.Event) -> None:
    """Deliver events to Slack until stopped; survive Redis restarts."""
    reporter = None
    while not stop.is_set():
        try:
            if reporter is None:
                reporter = Reporter(conn, group=REPORTER_GROUP, consumer=socket.gethostname(),
                                    deliver=threads.deliver, wants=threads.wants, start="$")
            reporter.poll(block_ms=1000)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("reporter: Redis unavailable (%s); retrying", type(e).__name__)
            reporter = None
            stop.wait(1.0)
        except Exception:  # noqa: BLE001 - a bad event must not stop delivery of the others
            log.exception("reporter: unexpected error; continuing")
            stop.wait(1.0)


def _expire_approvals(conn: redis.Redis, stop: threading.Event) -> None:
    """Close approval cards whose time ran out, so the card says so."""
    while not stop.wait(EXPIRY_EVERY):
        try:
            for approval_id in approvals.expire_due(conn):
                a = approvals.load(conn, approval_id)
                append_audit(conn, request=a.request, approval=approval_id, what="approval", result="expired")
                append_event(conn, a.request, "approval", {"approval": approval_id, "outcome": "expired"})
        except (redis.ConnectionError, redis.TimeoutError):
            log.warning("expiry: Redis unavailable; retrying")
        except Exception:  # noqa: BLE001
            log.exception("expiry: unexpected error; continuing")


def _refresh_groups(roles: Roles, client, slack: SlackSettings, stop: threading.Event) -> None:
    while not stop.is_set():
        roles.refresh(client)
        stop.wait(slack.group_refresh)
