"""One run of the watch: the status check of a scope, and what it means (cms/watch.py) written to
Redis (hub/incidents.py): incidents for the alert channel's threads, pages for on-call.

A run does not look while a CMS change runs, is queued, or its cooldown holds (the deployment is
moving: its replicas are legitimately behind and its master may be blank for minutes); it says so
once. A change that started while the run was checking makes the run's findings moot, too.
"""

from __future__ import annotations

import logging

from cms.messages import no_emit
from cms.settings import Settings
from cms.topology import Topology
from cms.watch import ALL, Decision, decide, skip
from hub.cms_lock import change_state, changes_in_flight
from hub.contract import utcnow
from hub.home import record_check
from hub.incidents import Delivery, commit
from hub.jobs import CHANGE_COMMAND
from hub.keys import Hub
from workers.runs.status import run_status

log = logging.getLogger(__name__)


def change_running(hub: Hub) -> str | None:
    """Why the watch should not look now: a CMS change running, queued or cooling down (None: it may).
    An unknown outcome nobody has cleared does not stop it: then the watch is wanted most."""
    held, holder, cooldown = change_state(hub)
    if held:
        return f"a CMS change is running ({holder or 'holder unknown'})"
    if queued := changes_in_flight(hub, {CHANGE_COMMAND}):
        return f"a CMS change is queued or starting ({'; '.join(queued)})"
    if cooldown:
        return f"the deployment is converging after a CMS change (cooldown {cooldown})"
    return None


def delivery(settings: Settings) -> Delivery:
    return Delivery(channel=settings.alert_channel, targets=tuple(settings.oncall_targets()),
                    retry_intervals=tuple(settings.oncall_retry_intervals()))


def run_watch(hub: Hub, settings: Settings, topology: Topology, scope: str) -> Decision:
    where = delivery(settings)
    if not where.channel:
        log.warning("CMSBOT_ALERT_CHANNEL is not set: the watch tracks incidents and pages on-call, but posts "
                    "nothing in Slack")
    if reason := change_running(hub):
        log.info("watch of %s skipped: %s", scope, reason)
        return _skip(hub, reason, where)
    target = topology.everything() if scope in (ALL, "all") else topology.resolve(scope)
    started = utcnow()
    report = run_status(topology, settings, target, no_emit)
    if reason := change_running(hub):  # a change started while the servers were being checked
        log.info("watch of %s skipped after its check: %s", scope, reason)
        return _skip(hub, reason, where)
    name = ALL if target.kind == "deployment" else target.name
    record_check(hub, report, audit=False)  # the pools' last verdicts (the App Home); no audit line per run
    return commit(hub, lambda state: decide(state, report, utcnow(), settings.watch_policy(), scope=name,
                                            started=started), where)


def _skip(hub: Hub, reason: str, where: Delivery) -> Decision:
    return commit(hub, lambda state: skip(state, reason, utcnow()), where)
