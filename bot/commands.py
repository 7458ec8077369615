"""Slash-command text -> a validated command, or a message for the user.

Only names that resolve to the topology survive; the user's text itself never
travels further than this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cms.topology import Topology, UnknownTarget

HELP = {
    "/cms-status": ("/cms-status [pool|server]", "replication status of every replica, or of one pool or server, "
                    "with the diagnosis of anything that is behind", "/cms-status pool01.contoso.com"),
    "/cms-explain": ("/cms-explain <event>", "what an event pasted from Event Viewer means, how to check it and "
                     "how to fix it", "/cms-explain Log Name: Lync Server Source: LS File Transfer Agent Service ..."),
    "/cms-replicate": ("/cms-replicate [pool|server]", "operators: force replication, wait the 2-3 minute delay, "
                       "re-check and report what changed", "/cms-replicate edge01.contoso.com"),
    "/cms-failover": ("/cms-failover [target-pool] [disaster]", "operators: request a CMS failover; a read-only "
                      "preflight grades it and another approver must approve the exact plan",
                      "/cms-failover pool02.contoso.com"),
    "/cms-recover": ("/cms-recover", "operators: request the CMS recovery runbook, computed from the live deployment, "
                     "with the same approval", "/cms-recover"),
    "/cms-doctor": ("/cms-doctor [pool|server]", "operators: is every server, or one pool or server, ready for "
                    "cmsbot (DNS, WinRM port, TLS, credentials, PowerShell, module, rights, WinRM limits, replication "
                    "paths); one line per server not ready with its first failing check and the fix",
                    "/cms-doctor pool02.contoso.com"),
    "/cms-history": ("/cms-history [pool|server]", "the last checks, changes, approvals and incidents of the "
                     "whole deployment, or of one pool or server, from the audit log, with links to their threads",
                     "/cms-history pool01.contoso.com"),
    "/cms-help": ("/cms-help", "this list", "/cms-help"),
}
# commands that take an optional pool or server, resolved against the topology
SCOPED = ("/cms-status", "/cms-replicate", "/cms-doctor", "/cms-history")
MAX_LISTED = 25
# commands that are real but cannot run from this path (`cmsbot chat`): where they do run
ELSEWHERE = {
    "/cms-failover": "needs another person's approval on its card: request it in Slack",
    "/cms-recover": "needs another person's approval on its card: request it in Slack",
    "/cms-explain": "runs without the queue here: `cmsbot explain FILE` (or - for standard input)",
    "/cms-help": "lists the commands in Slack; here: `cmsbot --help`",
}


class CommandError(ValueError):
    """The text cannot run; `str(self)` is written for the person who typed it."""


@dataclass(frozen=True)
class Command:
    name: str
    args: dict[str, str] = field(default_factory=dict)


def parse(text: str, topology: Topology) -> Command:
    words = text.split()
    if not words:
        raise CommandError("Type a command, e.g. `/cms-status`. " + usage())
    name, rest = words[0].lower(), words[1:]
    if name in ELSEWHERE:
        raise CommandError(f"`{name}` {ELSEWHERE[name]}.")
    if name not in SCOPED:
        raise CommandError(f"Unknown command. {usage()}")
    if name in SCOPED:
        if len(rest) > 1:
            raise CommandError(f"Too many words. Usage: `{HELP[name][0]}`")
        if not rest:
            return Command(name)
        try:
            target = topology.resolve(rest[0])
        except UnknownTarget as e:
            raise CommandError(unknown_target_text(e, topology)) from None
        return Command(name, {"target": target.name})
    raise CommandError(f"`{name}` takes no pool or server here. {usage()}")


def usage() -> str:
    return "Commands: " + "; ".join(f"`{u}`" for u, _, _ in HELP.values())


def unknown_target_text(e: UnknownTarget, topology: Topology) -> str:
    pools = [p.fqdn for p in topology.pools]
    servers = [s.fqdn for s in topology.servers if s.fqdn not in pools]
    shown = servers[:MAX_LISTED]
    more = f" and {len(servers) - len(shown)} more" if len(servers) > len(shown) else ""
    typed = "".join(c for c in e.text.strip()[:60] if c.isprintable() and c not in "`<>&*_~") or "(nothing)"
    return (f"`{typed}` is not a pool or server of this deployment. "
            f"Pools: {', '.join(pools)}. Servers: {', '.join(shown)}{more}.")
