"""Every Redis name one deployment uses, built from its namespace in this one place.

Two deployments (or `cmsbot demo` next to a running bot) on one Redis database
with different namespaces share nothing: not the events, the CMS lock, the
cooldown, the approvals, the audit, the queues or the Slack bookkeeping.
RQ's own bookkeeping (`rq:job:<id>`, registries) is RQ's; our job ids are the
request ids, which are unique, and only our namespace's queues carry them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis import Redis

from cms.settings import DEFAULT_NAMESPACE, NAMESPACE_PATTERN, Settings

_VALID = re.compile(NAMESPACE_PATTERN)


@dataclass(frozen=True)
class Keys:
    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        if not _VALID.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r}: use 1-64 letters, digits, '_', '.' or '-'")

    def _key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    # requests, jobs and events
    def queue(self, kind: str) -> str:
        return f"{self.namespace}-{kind}"

    def request(self, request_id: str) -> str:
        return self._key("request", request_id)

    def claim(self, request_id: str) -> str:
        return self._key("claim", request_id)

    def seq(self, request_id: str) -> str:
        return self._key("seq", request_id)

    def appended(self, request_id: str) -> str:
        return self._key("appended", request_id)

    @property
    def events(self) -> str:
        return self._key("events")

    @property
    def audit(self) -> str:
        return self._key("audit")

    # liveness
    @property
    def running(self) -> str:
        return self._key("running")

    def lost(self, request_id: str) -> str:
        return self._key("lost", request_id)

    # the approval gate
    def approval(self, approval_id: str) -> str:
        return self._key("approval", approval_id)

    def approvers(self, approval_id: str) -> str:
        return self._key("approval", approval_id, "approvers")

    @property
    def approvals_pending(self) -> str:
        return self._key("approvals", "pending")

    # one CMS change at a time
    @property
    def cms_lock(self) -> str:
        return self._key("lock", "cms")

    @property
    def cms_lock_holder(self) -> str:
        return self._key("lock", "cms", "holder")

    @property
    def cms_fence(self) -> str:
        """The fencing counter (INCR, no TTL): every CMS lock carries the next number."""
        return self._key("lock", "cms", "fence")

    @property
    def cms_cooldown(self) -> str:
        return self._key("cooldown", "cms")

    @property
    def outcome_unknown(self) -> str:
        """Unknown outcomes nobody has cleared yet (a hash: request id -> JSON; no TTL)."""
        return self._key("unknown", "cms")

    def remediating(self, kind: str, target: str) -> str:
        return self._key("remediating", kind, target)

    # fair use (hub/fair_use.py): one sliding window per limit, shared by every serving process
    def limit_user(self, user: str) -> str:
        """The requests one user started lately (a sorted set: request id -> ms)."""
        return self._key("limit", "user", user)

    def limit_channel(self, channel: str) -> str:
        """The requests started in one channel lately (a sorted set: request id -> ms)."""
        return self._key("limit", "channel", channel)

    def status_running(self, channel: str, scope: str) -> str:
        """The status check of this scope last started in this channel (a hash: request, at)."""
        return self._key("inflight", "status", channel, scope)

    # delivery bookkeeping of the adapters
    def delivered(self, group: str, request_id: str) -> str:
        return self._key("delivered", group, request_id)

    def slack_parent(self, channel: str, ts: str) -> str:
        return self._key("slack", "parent", channel, ts)

    def slack_thread(self, request_id: str) -> str:
        return self._key("slack", "thread", request_id)

    def slack_steps(self, request_id: str) -> str:
        return self._key("slack", "steps", request_id)

    @property
    def delivery_counts(self) -> str:
        """What delivery lost or gave up, by reason (a hash of counters, for the operators)."""
        return self._key("delivery", "counts")

    # telemetry (hub/telemetry.py)
    @property
    def last_status(self) -> str:
        """What the last finished status check found, for the metrics (a hash: replicas_behind, at)."""
        return self._key("telemetry", "last-status")

    # the App Home (hub/home.py)
    @property
    def pool_verdicts(self) -> str:
        """The last verdict of each pool (a hash: pool -> JSON of cms.verdicts.PoolVerdict; no TTL)."""
        return self._key("home", "verdicts")

    @property
    def home_viewers(self) -> str:
        """Who opened the bot's Home lately (a sorted set: user id -> when; the key expires when none does)."""
        return self._key("home", "viewers")

    # the watch and on-call (hub/incidents.py, hub/schedule.py)
    @property
    def watch_state(self) -> str:
        """What the watch tracks: its problems, open incidents and skip notice (JSON; no TTL)."""
        return self._key("watch", "state")

    def oncall_pages(self, target: str, key: str) -> str:
        """The pages decided for one incident key and on-call target, in order (a list of JSON)."""
        return self._key("oncall", target, key, "pages")

    def oncall_sent(self, target: str, key: str) -> str:
        """The idempotency records of those pages (a hash: page id -> what became of it)."""
        return self._key("oncall", target, key, "sent")

    def oncall_lock(self, target: str, key: str) -> str:
        return self._key("oncall", target, key, "lock")

    def job_id(self, *parts: str) -> str:
        """An RQ job id of this namespace's own (RQ's job keys are shared by every namespace); RQ takes
        letters, digits, '-' and '_' only."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", "-".join((self.namespace, *parts)))


KEYS = Keys()  # the default deployment's names


@dataclass(frozen=True)
class Hub:
    """A Redis connection (or pipeline) and the names of one deployment: what every hub
    function takes, so no caller can reach another deployment's keys by accident."""

    redis: Redis
    keys: Keys

    def over(self, pipe: Redis) -> Hub:
        """The same deployment's names over a pipeline of this connection."""
        return Hub(pipe, self.keys)


def hub_for(conn: Redis, settings: Settings) -> Hub:
    return Hub(conn, Keys(settings.namespace))
