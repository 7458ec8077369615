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
import ssl
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
    from cms import logs

    # read here, before any setting: every line is in the one format (a wrong value is refused with the settings)
    logs.configure(os.environ.get("CMSBOT_LOG_LEVEL", "WARNING"), os.environ.get("CMSBOT_LOG_FORMAT"))
    return args.func(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cms-chatops")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


# Exit codes, as every subcommand's help states them (bot/delivery/console.py: EXIT_*)
CHECK_EXITS = "0 healthy, 1 problems found, 2 could not run (configuration, Redis, no worker, no answer in time, " \
              "or a command that does not run here)"
SERVICE_EXITS = "0 after a clean stop (SIGTERM or Ctrl-C), 2 could not start (configuration, Redis, topology)"

# What each environment variable means, as the subcommands' help lists them (every one is in the
# README's Configuration table; tests/unit/test_cli_help.py checks each is a real setting).
ENV: dict[str, str] = {
    "REDIS_URL": "Redis: redis://USER:PASSWORD@host:6379/0, rediss://... with TLS (default "
                 "redis://127.0.0.1:6379/0); or REDIS_URL_FILE, a file holding it",
    "CMSBOT_NAMESPACE": "the deployment's namespace in Redis; bot and workers must agree (default cmsbot)",
    "CMSBOT_TOPOLOGY": "the topology file (default topology.yaml)",
    "CMSBOT_SECRETS_DIR": "a directory of secret files, each named after its variable (e.g. cmsbot_slack_bot_token)",
    "CMSBOT_LOG_LEVEL": "Python log level (default WARNING; INFO for workers)",
    "CMSBOT_LOG_FORMAT": "text, or json: one JSON object per line, with the request id",
    "CMSBOT_METRICS_PORT": "the port of /metrics, /healthz and /readyz; 0: none of their own, though the bot over "
                           "HTTP serves them on its HTTP port anyway",
    "CMSBOT_METRICS_HOST": "the address that port listens on",
    "CMSBOT_CHAT_TIMEOUT": "seconds to wait for the result (default 180)",
    "CMSBOT_HOST_DEADLINE": "seconds a read-only probe may take on one server (default 30)",
    "CMSBOT_SLACK_BOT_TOKEN": "the bot token, xoxb-... (or CMSBOT_SLACK_BOT_TOKEN_FILE)",
    "CMSBOT_SLACK_SIGNING_SECRET": "verifies Slack's HTTP requests (or CMSBOT_SLACK_SIGNING_SECRET_FILE)",
    "CMSBOT_SLACK_APP_TOKEN": "xapp-...: set, Socket Mode; unset, HTTP (or CMSBOT_SLACK_APP_TOKEN_FILE)",
    "CMSBOT_HTTP_HOST": "where /slack/events and /healthz listen in HTTP mode (default 0.0.0.0)",
    "CMSBOT_HTTP_PORT": "their port (default 3000)",
    "CMSBOT_HTTP_PROCESSES": "processes serving HTTP (default: cores, at most 4)",
    # with no "(default ...)": the setting's own default is added (_meaning)
    "CMSBOT_HTTP_THREADS": "threads of one serving process",
    "CMSBOT_HTTP_CONNECTIONS": "connections one serving process holds open at once",
    "CMSBOT_HTTP_MAX_BODY": "bytes a request body may have; more is refused with 413",
    "CMSBOT_HTTP_HEADER_TIMEOUT": "seconds to receive a request's headers",
    "CMSBOT_HTTP_BODY_TIMEOUT": "seconds to receive its body",
    "CMSBOT_HTTP_KEEPALIVE": "seconds an idle connection stays open",
    "CMSBOT_LIMIT_WINDOW": "seconds the fair-use limits count over",
    "CMSBOT_LIMIT_USER": "requests that reach the servers one user may start per window; 0: no limit",
    "CMSBOT_LIMIT_CHANNEL": "requests that reach the servers one channel may start per window; 0: no limit",
    "CMSBOT_SLACK_CHANNELS": "channel ids where commands may run (default: any)",
    "CMSBOT_SLACK_OPERATORS": "user or user-group ids who may run changes",
    "CMSBOT_SLACK_APPROVERS": "user or user-group ids who may approve a failover or recovery",
    "CMSBOT_SLACK_GROUP_REFRESH": "seconds between refreshes of user-group membership (default 300)",
    "CMSBOT_SLACK_API_URL": "Slack Web API base URL (default https://slack.com/api/)",
    "CMSBOT_APPROVALS_REQUIRED": "distinct approvers a failover or recovery needs (default 1)",
    "CMSBOT_APPROVAL_TTL": "seconds an approval card stays open (default 900)",
    "CMSBOT_HEARTBEAT_STALE": "seconds without a heartbeat before a running job counts as lost (default 20)",
    "CMSBOT_DELIVERY_PATIENCE": "seconds to keep retrying an event Slack does not take (default 86400)",
    "CMSBOT_DELIVERY_BACKOFF": "the longest wait between two retries of one event (default 60)",
    "CMSBOT_DELIVERY_LATE_NOTE": "an event this many seconds late gets a note in its thread (default 60)",
    "CMSBOT_EVENTS_KEEP": "seconds delivered events stay in the events stream (default 86400)",
    "CMSBOT_WINRM_USERNAME": "the WinRM account (default cmsbot)",
    "CMSBOT_WINRM_PASSWORD": "its password (or CMSBOT_WINRM_PASSWORD_FILE)",
    "CMSBOT_WINRM_TRANSPORT": "ntlm, kerberos or basic (default ntlm)",
    "CMSBOT_WINRM_SCHEME": "https or http (default https)",
    "CMSBOT_WINRM_CA_BUNDLE": "PEM bundle that signs the servers' WinRM certificates",
    "CMSBOT_WINRM_CONNECT_TIMEOUT": "seconds to open a TCP connection to a server (default 5)",
    "CMSBOT_WINRM_PROXY": "an HTTP proxy for WinRM (default none)",
    "CMSBOT_WINRM_MAX_ENVELOPE_KB": "the largest WS-Management message, in KB (default 150)",
    "CMSBOT_WINRM_MAX_ANSWER_MB": "the most output one probe's answer may have, in MB (default 8)",
    "CMSBOT_FANOUT": "servers probed at once, on one event loop per job (default 1024)",
    "CMSBOT_REPLICATION_WAIT": "seconds between forcing replication and re-checking (default 150)",
    "CMSBOT_FAILOVER_DEADLINE": "seconds a failover may take to converge (default 900)",
    "CMSBOT_FAILOVER_POLL": "seconds between convergence checks (default 10)",
    "CMSBOT_COOLDOWN": "seconds after a CMS change before the next may start (default 900, at least 60)",
    "CMSBOT_ALLOW_VOLATILE_REDIS": "run CMS changes although Redis does not persist (default off)",
    # the watch and on-call (README: Watch and on-call)
    "CMSBOT_WATCH": 'the schedule, as JSON: [{"scope": "*", "cron": "*/5 * * * *"}], or as SCOPE=CRON pairs '
                    "separated by ';' (*=*/5 * * * *); \"*\" is the whole deployment, else a pool or server; cron "
                    "fields in local time (UTC in the container)",
    "CMSBOT_ALERT_CHANNEL": "the Slack channel ID incidents are posted in (unset: none are posted)",
    "CMSBOT_WATCH_GRACE": "seconds a transient problem (a replica catching up, a server not answering) may last "
                          "before it alerts",
    "CMSBOT_WATCH_CLEAR_AFTER": "seconds a problem must stay gone before its incident resolves",
    "CMSBOT_ONCALL_PAGE_AT": "the least severity that pages on-call: critical, error or warning",
    "CMSBOT_PAGERDUTY_ROUTING_KEY": "a PagerDuty Events API v2 integration key, or a file named by the variable "
                                    "with _FILE appended; unset: no PagerDuty",
    "CMSBOT_PAGERDUTY_URL": "the Events API v2 endpoint",
    "CMSBOT_OPSGENIE_API_KEY": "an Opsgenie API integration key (or a file, as above); unset: no Opsgenie",
    "CMSBOT_OPSGENIE_URL": "Opsgenie's API (EU: https://api.eu.opsgenie.com)",
    "CMSBOT_ONCALL_WEBHOOK_URL": "a URL that receives every incident event as JSON (or a file, as above)",
    "CMSBOT_ONCALL_WEBHOOK_SECRET": "signs the webhook's body: X-Cmsbot-Signature (or a file, as above)",
    "CMSBOT_ONCALL_RETRIES": "retries of an on-call request that failed, with doubling waits",
    "CMSBOT_ONCALL_RETRY_FIRST": "seconds before the first retry",
    "CMSBOT_ONCALL_TIMEOUT": "seconds one on-call request may take",
}
_COMMON = ("CMSBOT_SECRETS_DIR", "CMSBOT_LOG_LEVEL")
_TELEMETRY = ("CMSBOT_METRICS_PORT", "CMSBOT_METRICS_HOST", "CMSBOT_LOG_FORMAT")
_SLACK = ("CMSBOT_SLACK_BOT_TOKEN", "CMSBOT_SLACK_SIGNING_SECRET", "CMSBOT_SLACK_APP_TOKEN", "CMSBOT_SLACK_API_URL")
_DELIVERY = ("CMSBOT_HEARTBEAT_STALE", "CMSBOT_APPROVAL_TTL", "CMSBOT_DELIVERY_PATIENCE", "CMSBOT_DELIVERY_BACKOFF",
             "CMSBOT_DELIVERY_LATE_NOTE", "CMSBOT_EVENTS_KEEP")
_WATCH = ("CMSBOT_ALERT_CHANNEL", "CMSBOT_WATCH_GRACE", "CMSBOT_WATCH_CLEAR_AFTER", "CMSBOT_ONCALL_PAGE_AT",
          "CMSBOT_PAGERDUTY_ROUTING_KEY", "CMSBOT_PAGERDUTY_URL", "CMSBOT_OPSGENIE_API_KEY", "CMSBOT_OPSGENIE_URL",
          "CMSBOT_ONCALL_WEBHOOK_URL", "CMSBOT_ONCALL_WEBHOOK_SECRET", "CMSBOT_ONCALL_RETRIES",
          "CMSBOT_ONCALL_RETRY_FIRST", "CMSBOT_ONCALL_TIMEOUT")
SUBCOMMAND_ENV: dict[str, tuple[str, ...]] = {
    "demo": ("REDIS_URL", "CMSBOT_LOG_LEVEL"),
    "chat": ("REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_CHAT_TIMEOUT", "CMSBOT_HOST_DEADLINE",
             *_COMMON),
    "explain": ("CMSBOT_LOG_LEVEL",),
    "audit": ("REDIS_URL", "CMSBOT_NAMESPACE", *_COMMON),
    "bot": ("REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", *_SLACK, "CMSBOT_HTTP_HOST", "CMSBOT_HTTP_PORT",
            "CMSBOT_HTTP_PROCESSES", "CMSBOT_HTTP_THREADS", "CMSBOT_HTTP_CONNECTIONS", "CMSBOT_HTTP_MAX_BODY",
            "CMSBOT_HTTP_HEADER_TIMEOUT", "CMSBOT_HTTP_BODY_TIMEOUT", "CMSBOT_HTTP_KEEPALIVE", "CMSBOT_LIMIT_WINDOW",
            "CMSBOT_LIMIT_USER", "CMSBOT_LIMIT_CHANNEL", "CMSBOT_SLACK_CHANNELS", "CMSBOT_SLACK_OPERATORS",
            "CMSBOT_SLACK_APPROVERS", "CMSBOT_SLACK_GROUP_REFRESH", "CMSBOT_APPROVALS_REQUIRED", *_DELIVERY,
            *_TELEMETRY, *_COMMON),
    "reporter": ("REDIS_URL", "CMSBOT_NAMESPACE", *_SLACK, *_DELIVERY, "CMSBOT_LOG_FORMAT", *_COMMON),
    "worker": ("REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD",
               "CMSBOT_WINRM_TRANSPORT", "CMSBOT_WINRM_SCHEME", "CMSBOT_WINRM_CA_BUNDLE",
               "CMSBOT_WINRM_CONNECT_TIMEOUT", "CMSBOT_WINRM_PROXY", "CMSBOT_WINRM_MAX_ENVELOPE_KB",
               "CMSBOT_WINRM_MAX_ANSWER_MB", "CMSBOT_HOST_DEADLINE", "CMSBOT_FANOUT", "CMSBOT_HEARTBEAT_STALE",
               "CMSBOT_REPLICATION_WAIT", "CMSBOT_FAILOVER_DEADLINE", "CMSBOT_FAILOVER_POLL", "CMSBOT_COOLDOWN",
               "CMSBOT_ALLOW_VOLATILE_REDIS", *_WATCH, *_TELEMETRY, *_COMMON),
    "watch": ("REDIS_URL", "CMSBOT_NAMESPACE", "CMSBOT_TOPOLOGY", "CMSBOT_WATCH", "CMSBOT_HOST_DEADLINE",
              "CMSBOT_ALERT_CHANNEL", *_COMMON),
    "lab": ("CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD", "CMSBOT_LOG_LEVEL"),
    "capture": ("CMSBOT_TOPOLOGY", "CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD", "CMSBOT_WINRM_TRANSPORT",
                "CMSBOT_WINRM_SCHEME", "CMSBOT_WINRM_CA_BUNDLE", "CMSBOT_WINRM_CONNECT_TIMEOUT", "CMSBOT_WINRM_PROXY",
                "CMSBOT_WINRM_MAX_ENVELOPE_KB", "CMSBOT_HOST_DEADLINE", "CMSBOT_FANOUT", *_COMMON),
    "discover": ("CMSBOT_TOPOLOGY", "CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD", "CMSBOT_WINRM_TRANSPORT",
                 "CMSBOT_WINRM_SCHEME", "CMSBOT_WINRM_CA_BUNDLE", "CMSBOT_WINRM_CONNECT_TIMEOUT", "CMSBOT_WINRM_PROXY",
                 "CMSBOT_HOST_DEADLINE", *_COMMON),
    "doctor": ("CMSBOT_TOPOLOGY", "CMSBOT_WINRM_USERNAME", "CMSBOT_WINRM_PASSWORD", "CMSBOT_WINRM_TRANSPORT",
               "CMSBOT_WINRM_SCHEME", "CMSBOT_WINRM_CA_BUNDLE", "CMSBOT_WINRM_CONNECT_TIMEOUT", "CMSBOT_WINRM_PROXY",
               "CMSBOT_WINRM_MAX_ENVELOPE_KB", "CMSBOT_HOST_DEADLINE", "CMSBOT_FANOUT", *_COMMON),
}
# what a variable means where it is not the usual setting
_ENV_HERE = {
    ("demo", "REDIS_URL"): "used when a Redis answers there (in a namespace of the demo's own), else the demo starts "
                           "a private redis-server from PATH; a Redis that refuses the password is an error. The "
                           "demo configures its lab and worker itself: nothing else is read",
    ("lab", "CMSBOT_WINRM_USERNAME"): "the user name the lab accepts (Basic auth; default cmsbot)",
    ("lab", "CMSBOT_WINRM_PASSWORD"): "the password it accepts (or CMSBOT_WINRM_PASSWORD_FILE; default lab-password)",
}


def setting_default(variable: str) -> object:
    """The default of the setting `variable` sets (None when it has no plain one)."""
    from pydantic import AliasChoices

    from bot.config import SlackSettings
    from cms.settings import Settings

    for model, prefix in ((Settings, "CMSBOT_"), (SlackSettings, "CMSBOT_SLACK_")):
        for name, field in model.model_fields.items():
            alias = field.validation_alias
            names = set(alias.choices) if isinstance(alias, AliasChoices) else {alias or prefix + name.upper()}
            if variable in names:
                return field.default
    return None


def _meaning(command: str, variable: str) -> str:
    text = _ENV_HERE.get((command, variable), ENV[variable])
    default = setting_default(variable)
    if "(default" in text or isinstance(default, bool) or not isinstance(default, int | float | str):
        return text
    return f"{text} (default {default if isinstance(default, str | int) else f'{default:g}'})"


def _epilog(command: str, exits: str, more: str = "") -> str:
    names = SUBCOMMAND_ENV[command]
    width = max(len(n) for n in names)
    lines = [_wrap(_meaning(command, n), first=f"  {n.ljust(width)}  ", indent=" " * (width + 4)) for n in names]
    return (f"{more}environment:\n" + "\n".join(lines) + "\n  (every setting: README.md, Configuration)\n\n"
            + _wrap(f"exit codes: {exits}", indent=""))


def _wrap(text: str, indent: str = "  ", first: str | None = None) -> str:
    import textwrap

    return textwrap.fill(text, width=100, initial_indent=indent if first is None else first, subsequent_indent=indent,
                         break_on_hyphens=False, break_long_words=False)


def _scenarios() -> str:
    """The lab's scenario names, from its registry, with the target each takes."""
    from lab.deployment import SCENARIOS

    target = {None: "", "any": ":<server>", "edge": ":<edge>", "frontend": ":<front-end>",
              "property": ":<probe>:<Property>"}
    return ", ".join(f"{name}{target.get(wants, f':<{wants}>')}" for name, (_, wants) in sorted(SCENARIOS.items()))


class _Help(argparse.HelpFormatter):
    """Descriptions filled to the terminal's width; an epilog (it has line breaks) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _parser() -> argparse.ArgumentParser:
    raw = _Help
    p = argparse.ArgumentParser(prog="cmsbot",
                                description="ChatOps for the Lync / Skype for Business Central Management Store.",
                                epilog="`cmsbot COMMAND --help` describes each command, the environment variables "
                                       "it reads and its exit codes.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(title="commands", metavar="COMMAND")
    products = [v.value for v in Version]
    scenarios = "lab scenarios (combine them; NAME or NAME:target):\n" + _wrap(_scenarios()) + "\n\n"

    demo = sub.add_parser(
        "demo", help="run /cms-status end to end on the simulated lab and print the thread", formatter_class=raw,
        description="Start the simulated lab, a worker and the console adapter; run a command (by default "
                    "/cms-status) through the real queue, print the thread, stop everything it started. "
                    "No Slack and no Windows servers needed.",
        epilog=_epilog("demo", CHECK_EXITS, scenarios))
    demo.add_argument("--scenario", action="append", metavar="NAME[:target]",
                      help="lab scenario to inject instead of the demo's default (repeatable; listed below)")
    demo.add_argument("--product", choices=products, default=Version.sfb2019.value,
                      help="the product version the lab simulates (default sfb2019)")
    demo.add_argument("--command", default="/cms-status", help="slash command to run (default: /cms-status)")
    demo.set_defaults(func=cmd_demo)

    chat = sub.add_parser(
        "chat", help='run a slash command, e.g. cmsbot chat "/cms-status pool01.contoso.com"', formatter_class=raw,
        description="Run /cms-status [pool|server] through the queue, as Slack would, and print the thread as it "
                    "arrives; a worker (cmsbot worker) must be listening on the same Redis and namespace. The "
                    "other Slack commands do not run here and say where they do: /cms-replicate, /cms-failover "
                    "and /cms-recover change the deployment and run only from Slack (roles, approval, audit); "
                    "/cms-doctor is `cmsbot doctor`; /cms-explain is `cmsbot explain`; /cms-help is `cmsbot --help`.",
        epilog=_epilog("chat", CHECK_EXITS))
    chat.add_argument("text", help="the slash command and its argument, quoted")
    chat.add_argument("--user", default=None, help="user id to act as (default: your login name)")
    chat.set_defaults(func=cmd_chat)

    explain = sub.add_parser(
        "explain", help="explain an event pasted from Event Viewer (FILE, or - for stdin)", formatter_class=raw,
        description="Explain an event copied from Event Viewer: its meaning, how to check it and how to fix it. "
                    "Offline: no Redis, no worker.",
        epilog=_epilog("explain", "0 a known CMS replication signature, 1 not a known signature, 2 the file "
                                  "cannot be read"))
    explain.add_argument("file", help="file holding the event text as Event Viewer copies it, or - for stdin")
    explain.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    explain.set_defaults(func=cmd_explain)

    audit = sub.add_parser(
        "audit", help="print the append-only audit log (requests, decisions, executions)", formatter_class=raw,
        description="Print the deployment's append-only audit stream: every request, preflight, decision, step "
                    "and outcome, oldest first.",
        epilog=_epilog("audit", "0 printed, 2 could not run (configuration, Redis, --since)"))
    audit.add_argument("--since", default=None,
                       help="only entries newer than this: a duration (90m, 24h, 7d) or an ISO date/time")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.set_defaults(func=cmd_audit)

    bot = sub.add_parser(
        "bot", help="run the Slack app (Socket Mode or HTTP /slack/events) and its reporter", formatter_class=raw,
        description="Run the Slack app: Socket Mode when CMSBOT_SLACK_APP_TOKEN is set, else HTTP on "
                    "CMSBOT_HTTP_HOST:CMSBOT_HTTP_PORT (/slack/events, /metrics, /healthz, /readyz; these three "
                    "on CMSBOT_METRICS_PORT too, in either mode, when it is set). It starts and supervises "
                    "`cmsbot reporter`, which delivers the workers' events to Slack. Needs Redis, the topology "
                    "and at least one `cmsbot worker`.",
        epilog=_epilog("bot", SERVICE_EXITS))
    bot.set_defaults(func=cmd_bot)

    reporter = sub.add_parser(
        "reporter", help="Slack delivery, dead-job watchdog, approval expiry (`cmsbot bot` starts and supervises it)",
        formatter_class=raw,
        description="Deliver the workers' events to Slack threads (each once, in order), report jobs whose worker "
                    "died (heartbeat watchdog) and close expired approval cards. `cmsbot bot` runs it for you; run "
                    "it alone only to deliver without serving Slack's requests.",
        epilog=_epilog("reporter", SERVICE_EXITS))
    reporter.set_defaults(func=cmd_reporter)

    worker = sub.add_parser(
        "worker", help="run an RQ worker on the project's queues", formatter_class=raw,
        description="Run an RQ worker on the deployment's queues (<namespace>-change first, then "
                    "<namespace>-status): it probes the servers over WinRM and appends events for the bot. It runs "
                    "only cms-chatops's own jobs: anything else found in Redis is refused and logged as "
                    "`security: ...`.",
        epilog=_epilog("worker", "0 after a clean stop (SIGTERM: the running job finishes first) or, with --burst, "
                                 "when the queues are empty; 2 could not start (configuration, Redis, topology)"))
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(func=cmd_worker)

    watch = sub.add_parser(
        "watch", help="run the watch's schedule: status checks whose problems become incidents and pages",
        formatter_class=raw,
        description="Run RQ's cron scheduler with the watch's schedule (CMSBOT_WATCH): at each time it enqueues a "
                    "status check of its scope; a worker runs it, and what it finds opens an incident in the alert "
                    "channel (CMSBOT_ALERT_CHANNEL) and pages on-call, what clears resolves it (README: Watch and "
                    "on-call). It also moves on-call retries along when they are due. The workers read the "
                    "channel and on-call settings (`cmsbot worker --help`). One is enough; a second one enqueues "
                    "the same runs, and each runs once.",
        epilog=_epilog("watch", "0 after a clean stop (SIGTERM or Ctrl-C) or, with --now, once the runs are "
                                "enqueued; 2 could not start (configuration, schedule, Redis, topology)"))
    watch.add_argument("--now", nargs="?", const="", default=None, metavar="SCOPE",
                       help="enqueue one run now (of SCOPE, else of every scheduled scope) and exit")
    watch.set_defaults(func=cmd_watch)

    lab = sub.add_parser(
        "lab", help="serve the simulated deployment over WS-Management until stopped", formatter_class=raw,
        description="Serve a simulated Lync / Skype for Business deployment over WS-Management (HTTP, or HTTPS "
                    "with --tls; Basic and Negotiate (NTLM) auth) until stopped, and write its topology file; prints "
                    "`lab ready: <N> servers, topology <path>` (with --tls: `, CA <path>`). A control API at /_lab/ "
                    "changes scenarios while it runs.",
        epilog=_epilog("lab", "0 after a clean stop, 2 could not start (an unknown scenario, a bad limit, the port)",
                       scenarios))
    lab.add_argument("--product", choices=products, default=Version.sfb2019.value,
                     help="the product version to simulate (default sfb2019)")
    # its name until the product had its own option: still read, for scripts written against it
    lab.add_argument("--version", dest="product", choices=products, default=argparse.SUPPRESS, help=argparse.SUPPRESS)
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
    lab.add_argument("--scenario", action="append", default=[], metavar="NAME[:target]",
                     help="a scenario to start with (repeatable; listed below)")
    lab.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    lab.add_argument("--advertise", default=None, help="host name written into the topology (default: --host)")
    lab.add_argument("--port", type=int, default=5985, help="port to bind; 0 picks a free one")
    lab.add_argument("--topology-out", default="lab-topology.yaml", help="where to write the topology file")
    lab.add_argument("--tls", action="store_true",
                     help="serve HTTPS: generate a private CA and a certificate for 127.0.0.1, localhost and "
                          "--advertise into --tls-dir, write https:// endpoints and print the CA's path in the ready "
                          "line (trust it with CMSBOT_WINRM_CA_BUNDLE); the tls-* scenarios need it")
    lab.add_argument("--tls-dir", metavar="DIR", default=None,
                     help="where --tls writes ca.pem, server.pem and server.key (default: lab-tls beside "
                          "--topology-out)")
    lab.add_argument("--auth", default="basic,ntlm", metavar="SCHEMES",
                     help="the authentication schemes accepted, a comma list of basic and ntlm (default basic,ntlm); "
                          "ntlm is Negotiate, and over plain HTTP its messages must be encrypted, as on a Windows "
                          "host with AllowUnencrypted=false")
    lab.add_argument("--replay", metavar="DIR", default=None,
                     help="serve a folder written by `cmsbot capture` instead: each server answers each probe as the "
                          "captured host did, and the topology written is the captured one (no --scenario)")
    lab.set_defaults(func=cmd_lab)

    capture = sub.add_parser(
        "capture", help="save every server's raw probe answers into a folder, to attach to a bug report",
        formatter_class=raw,
        description="Run every read-only probe of the status check (both stages, with their parameters) on every "
                    "server the topology marks reachable over WinRM, and write each raw answer (stdout, stderr, exit "
                    "code, PowerShell version, timing) into a folder with a manifest. Server, pool, domain and "
                    "account names are replaced consistently unless --keep-names (the real names go to "
                    "DIR.names.json beside the folder: keep it, do not attach it); the WinRM password and tokens "
                    "never appear. `cmsbot lab --replay DIR` serves the folder back.",
        epilog=_epilog("capture", "0 every reachable server answered every probe, 1 some answers are missing (the "
                                  "folder says which and why), 2 could not run (configuration, topology, DIR not "
                                  "empty)"))
    capture.add_argument("--out", metavar="DIR", default=None,
                         help="the folder to write (default cmsbot-capture-<UTC time>); must be new or empty")
    capture.add_argument("--keep-names", action="store_true",
                         help="keep the real server, pool, domain and account names (secrets are still removed)")
    capture.set_defaults(func=cmd_capture)

    discover = sub.add_parser(
        "discover", help="read the deployment from one Front End and write the topology file", formatter_class=raw,
        description="Read the deployment from one Front End over WinRM (read-only: Get-CsPool, Get-CsComputer, "
                    "Get-CsService, Get-CsPoolBackupRelationship, Get-CsServerVersion) and write the topology file: "
                    "every pool with its role, site and servers, the CMS pool, the pairing, the back-end SQL servers, "
                    "each Edge server's internal address as the Front End resolves it, and `winrm: false` for Edge "
                    "servers. A value that had to be guessed carries a comment starting 'guessed'. On an existing "
                    "file it prints the difference (servers added, removed or moved, pools, CMS pool, pairing, Edge "
                    "addresses) and writes only with --write, keeping the file's deployment name, `winrm:` and each "
                    "server's `winrm` and `endpoint`.",
        epilog=_epilog("discover", "0 written, or the file is up to date, 1 the existing file differs and was not "
                                   "written (run again with --write), 2 could not run (configuration, the Front End "
                                   "did not answer)"))
    discover.add_argument("--from", dest="source", required=True, metavar="FE_FQDN",
                          help="a Front End of the deployment (the CMS pool's is best), reached over WinRM")
    discover.add_argument("--out", default=None, metavar="FILE",
                          help="the topology file (default: CMSBOT_TOPOLOGY, else topology.yaml); - prints it instead")
    discover.add_argument("--write", action="store_true", help="replace an existing file that differs")
    discover.add_argument("--endpoint-template", default=None, metavar="URL",
                          help="each WinRM server's endpoint, {fqdn} replaced, written into the file and used to "
                               "reach --from (e.g. https://{fqdn}.mgmt.contoso.com:5986/wsman, or a lab's "
                               "http://127.0.0.1:5985/wsman/{fqdn}); default: no endpoint is written and the workers "
                               "reach <scheme>://<fqdn>:5986 (https) or :5985 (http)/wsman")
    discover.add_argument("--name", default=None,
                          help="the deployment's name (default: the existing file's, else the domain)")
    discover.set_defaults(func=cmd_discover)

    doctor = sub.add_parser(
        "doctor", help="check every server is ready for cmsbot, one row per server with the fix",
        formatter_class=raw,
        description="For every server of the topology (or one pool or server), in parallel: DNS, TCP to the WinRM "
                    "port, TLS (https only: chain, name, days to expiry), authentication with the configured "
                    "transport, the Windows PowerShell version, the Lync/SkypeForBusiness module and the cmdlets the "
                    "probes use, the account's groups (RTCUniversalServerAdmins for changes, "
                    "RTCUniversalReadOnlyAdmins for status), the WinRM limits (MaxEnvelopeSizekb, MaxShellsPerUser, "
                    "MaxMemoryPerShellMB) and, from the CMS Front End, TCP 445 / 4443 to each replica. One row per "
                    "server: the first failing check and its fix. Read-only.",
        epilog=_epilog("doctor", "0 every server ready, 1 some servers not ready, 2 could not run (configuration, "
                                 "topology, unknown pool or server)"))
    doctor.add_argument("target", nargs="?", default=None, metavar="POOL|SERVER",
                        help="only this pool or server (default: every server)")
    doctor.add_argument("--json", action="store_true", help="one JSON document with every check of every server")
    doctor.set_defaults(func=cmd_doctor)
    return p


# -- shared set-up ----------------------------------------------------------------


class SetupError(Exception):
    """A one-paragraph explanation of what is missing and how to get it."""


def _settings(**overrides):
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from cms.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        raise SetupError(f"configuration error in {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    except SettingsError as e:  # a secret file (`*_FILE`, CMSBOT_SECRETS_DIR) that cannot be read
        raise SetupError(f"configuration error: {e}") from None


def _redis(url: str) -> redis.Redis:
    from hub.contract import connect

    conn = connect(url)
    try:
        conn.ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
        raise SetupError(_refused(url, e)) from None
    except redis.ConnectionError as e:
        if isinstance(e.__context__, ssl.SSLError):
            raise SetupError(
                f"Redis at {_safe_url(url)}: TLS failed ({e.__context__.reason or e.__context__}). A certificate "
                "from a private CA needs ?ssl_ca_certs=/path/to/ca.pem at the end of REDIS_URL.") from None
        raise SetupError(
            f"Redis at {_safe_url(url)} does not answer. Start Redis (e.g. `redis-server`, or `docker compose up "
            "redis`) or set REDIS_URL to one that runs (rediss:// when it serves TLS)."
        ) from None
    except (redis.RedisError, OSError):
        raise SetupError(
            f"Redis at {_safe_url(url)} does not answer. Start Redis (e.g. `redis-server`, or `docker compose up "
            "redis`) or set REDIS_URL to one that runs."
        ) from None
    return conn


def _refused(url: str, e: redis.RedisError) -> str:
    """What to say when Redis answered but refused us: the password or user (never shown), or the ACL."""
    where = f"Redis at {_safe_url(url)}"
    code, text = str(getattr(e, "status_code", "") or ""), str(e)
    fix = "Check REDIS_URL (or the file REDIS_URL_FILE names) against the Redis ACL user (README: Running it for real)."
    if isinstance(e, redis.exceptions.NoPermissionError):
        return f"{where} accepted the user in REDIS_URL, but its ACL refuses what cmsbot needs (NOPERM: {text}). {fix}"
    if code == "NOAUTH" or "authentication required" in text.lower():
        return (f"{where} needs a password (it answered NOAUTH) and REDIS_URL gives none: use "
                f"redis://USER:PASSWORD@host:port/db (rediss:// with TLS). {fix}")
    if code == "WRONGPASS" or "invalid username-password" in text or "invalid password" in text:
        return (f"{where} refused the user name or password in REDIS_URL (it answered WRONGPASS: a wrong password, "
                f"an unknown user or a disabled one). {fix}")
    if "no password" in text or "without any password configured" in text:
        return f"{where} has no password set, but REDIS_URL gives one. {fix}"
    return f"{where} refused to authenticate us: {text}. {fix}"


def _auth_refused(url: str) -> str | None:
    """A quick look (1 s): what _refused() says when Redis answers but refuses us, else None."""
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2).ping()
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError) as e:
        return _refused(url, e)
    except (redis.RedisError, OSError):
        return None
    return None


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


def cmd_capture(args) -> int:
    from datetime import UTC, datetime

    try:
        settings = _settings()
        topology = _topology(settings.topology)
        folder = Path(args.out or f"cmsbot-capture-{datetime.now(UTC):%Y%m%d-%H%M%S}")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise SetupError(f"{folder} exists and is not an empty folder: name a new one with --out")
    except SetupError as e:
        return _fail(e)
    from workers.runs.capture import capture

    reachable = [s.fqdn for s in topology.servers if s.winrm]
    print(f"capture: {len(reachable)} of {len(topology.servers)} servers over WinRM, every read-only probe",
          flush=True)

    def done(server) -> None:
        answered = sum(1 for a in server.answers if a.output is not None)
        print(f"  {server.fqdn}: {answered} of {len(server.answers) + len(server.skipped)} probes answered", flush=True)

    result = capture(topology, settings, folder, keep_names=args.keep_names, on_done=done)
    print(f"capture: {result.answered} answers written to {folder}"
          + ("" if args.keep_names else " (names replaced)"))
    for server, probe, reason in result.failed:
        print(f"  no answer: {server} {probe}: {reason}")
    if result.names_file:
        print(f"capture: the real names are in {result.names_file}: keep it, do not attach it")
    return 1 if result.failed else 0


def cmd_discover(args) -> int:
    try:
        settings = _settings()
    except SetupError as e:
        return _fail(e)
    from workers.runs.discover import DiscoverFailed, discover

    out = None if args.out == "-" else Path(args.out) if args.out else settings.topology
    command = f"cmsbot discover --from {args.source}" + (
        f" --endpoint-template {args.endpoint_template}" if args.endpoint_template else "")
    try:
        outcome = discover(settings, args.source, out, write=args.write, endpoint_template=args.endpoint_template,
                           name=args.name, command=command)
    except DiscoverFailed as e:
        return _fail(SetupError(f"discover: {e}"))
    from cms.discovery import summary

    found = outcome.discovered
    if out is None:
        print(outcome.text, end="")
        return 0
    guessed = [text for text in found.comments.values() if text.startswith("guessed")]
    if outcome.unreadable:
        print(f"discover: the existing file cannot be compared: {outcome.unreadable}")
    elif outcome.existing:
        if outcome.changes:
            print(f"discover: {len(outcome.changes)} difference{'s' * (len(outcome.changes) != 1)} from {out}:")
            for line in outcome.changes:
                print(f"  {line}")
        else:
            print(f"discover: {out} is up to date ({summary(found.topology)})")
    if outcome.written:
        print(f"discover: wrote {out}: {summary(found.topology)}")
        for text in guessed:
            print(f"  {text}")
        return 0
    if outcome.changes or outcome.unreadable:
        print(f"discover: {out} not written: run again with --write to replace it")
        return 1
    return 0


def cmd_doctor(args) -> int:
    import json

    from cms.topology import UnknownTarget

    try:
        settings = _settings()
        topology = _topology(settings.topology)
        try:
            target = topology.resolve(args.target) if args.target else topology.everything()
        except UnknownTarget as e:
            raise SetupError(f"doctor: unknown pool or server {e.text!r}; known: {', '.join(e.known)}") from None
    except SetupError as e:
        return _fail(e)
    from cms.doctor import as_json, table
    from workers.runs.doctor import run_doctor

    def progress(text: str) -> None:
        print(f"doctor: {text}", file=sys.stderr, flush=True)

    report = run_doctor(topology, settings, target, on_progress=None if args.json else progress)
    print(json.dumps(as_json(report), indent=2) if args.json else table(report))
    return 0 if report.ready else 1


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
    from workers.rq_worker import Worker, serve_telemetry  # rides out a short Redis outage while a job runs

    # OurJob: only the project's own entry points and callbacks run (Redis is a trust boundary)
    hub = hub_for(conn, settings)
    worker = Worker(queues(hub), connection=conn, serializer=JSONSerializer, worker_ttl=60,
                    work_horse_killed_handler=on_work_horse_killed, job_class=OurJob, hub=hub)
    if settings.metrics_port:  # /metrics, /healthz, /readyz
        try:
            serve_telemetry(worker, hub, settings.redis_url, settings.metrics_host, settings.metrics_port)
        except OSError as e:
            return _fail(SetupError(f"cannot serve /metrics on {settings.metrics_host}:{settings.metrics_port} "
                                    f"(CMSBOT_METRICS_PORT): {e.strerror or e}"))
    stop = threading.Event()
    threading.Thread(target=watch, args=(hub, lambda rid, cmd: lost_reason(hub, rid, cmd, settings.cooldown), stop),
                     kwargs={"stale": settings.heartbeat_stale}, name="watchdog", daemon=True).start()
    try:
        worker.work(burst=args.burst, with_scheduler=False, logging_level=os.environ.get("CMSBOT_LOG_LEVEL", "INFO"))
    finally:
        stop.set()
    return 0


def cmd_watch(args) -> int:
    from cms.topology import UnknownTarget
    from hub.schedule import ScheduleError, enqueue_watch, job_timeout, scheduler

    try:
        settings = _settings()
        conn = _redis(settings.redis_url)
        topology = _topology(settings.topology)
        hub = hub_for(conn, settings)
        if args.now is not None:
            scopes = [args.now] if args.now else [s.scope for s in settings.watch] or ["*"]
            for scope in scopes:
                job = enqueue_watch(hub, scope, job_timeout(settings, topology, scope))
                print(f"cmsbot watch: enqueued a run of {scope} ({job.id})", flush=True)
            return 0
        if not settings.watch:
            raise SetupError('CMSBOT_WATCH is empty: set the schedule, e.g. CMSBOT_WATCH=\'[{"scope": "*", '
                             '"cron": "*/5 * * * *"}]\' (README: Watch and on-call)')
        cron = scheduler(hub, settings, topology)
    except SetupError as e:
        return _fail(e)
    except (ScheduleError, UnknownTarget) as e:
        return _fail(SetupError(str(e)))
    if not settings.alert_channel:
        print("cmsbot watch: CMSBOT_ALERT_CHANNEL is not set: incidents are tracked and paged, but not posted in "
              "Slack", file=sys.stderr, flush=True)
    scheduled = "; ".join(f"{j.schedule.scope} at '{j.schedule.cron}'" for j in cron.watch_jobs)
    print(f"cmsbot watch: scheduling {scheduled}", flush=True)
    cron.start()
    return 0


def cmd_chat(args) -> int:
    from bot.delivery.console import EXIT_CANNOT_RUN, refusal, run_chat

    if (why := refusal(args.text)) is not None:  # needs no Redis: say it at once
        print(why)
        return EXIT_CANNOT_RUN
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
    from lab.processes import (
        NO_REDIS,
        DidNotStart,
        LabProcess,
        Managed,
        RedisServer,
        client_environment,
        cmsbot,
        redis_answers,
    )

    started: list[Managed] = []
    private = None
    with tempfile.TemporaryDirectory(prefix="cmsbot-demo-") as tmp:
        try:
            base = _settings()
            url = base.redis_url
            if refused := _auth_refused(url):  # a Redis that is there but refuses us is a mistake to report
                raise SetupError(refused)
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
                       CMSBOT_WINRM_USERNAME="cmsbot", CMSBOT_WINRM_PASSWORD=password)
            for inherited in ("CMSBOT_WINRM_PASSWORD_FILE", "CMSBOT_QUEUE_PREFIX", "CMSBOT_WINRM_CA_BUNDLE"):
                env.pop(inherited, None)
            print(f"demo: Redis {_safe_url(url)}{' (private)' if private else ''}; starting the lab and a worker",
                  flush=True)
            scenarios = args.scenario if args.scenario is not None else DEMO_SCENARIOS
            lab = LabProcess(Path(tmp), "--product", args.product, *[a for s in scenarios for a in ("--scenario", s)],
                             user="cmsbot", password=password, env=env, module_load_ms=DEMO_MODULE_LOAD_MS, tls=True)
            started.append(lab)
            # the worker takes the product's default path to the lab: HTTPS (trusting the lab's own CA) and NTLM
            env.update(client_environment(topology_path))
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
