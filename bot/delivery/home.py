"""Publishing the bot's Home tab (views.publish): for one person when they open it (bot/listeners/home.py),
and again for the people who opened it lately whenever something it shows changes (the reporter).

The reporter sees every event: a check's result, a change starting or ending, an approval card and its
decisions, an incident opening or resolving. Each one `touch()`es the Refresher; the Refresher waits
until DEBOUNCE seconds have passed since the first touch of a burst, then reads Redis once and publishes
once per recent viewer (hub/home.py keeps who they are, for an hour). A burst of events is one publish
per viewer, and a slow or failing Slack holds this thread, never the delivery of the events.

Links to threads are built from the workspace's URL (auth.test, asked once per process): no Slack
call per link.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.render.home import closed_home_view, home_view
from bot.roles import Role, Roles
from cms.settings import Settings
from cms.topology import Topology
from hub import home
from hub.contract import Event
from hub.keys import Hub

log = logging.getLogger(__name__)

DEBOUNCE = 2.0  # seconds from the first change of a burst to the publish
QUIET_KINDS = frozenset({"progress"})  # events that change nothing the Home shows


class Links:
    """Slack's links to messages: the workspace's URL (auth.test), the channel, the ts without its dot."""

    def __init__(self, client: WebClient):
        self.client = client
        self._base: str | None = None
        self._lock = threading.Lock()

    def base(self) -> str | None:
        with self._lock:
            if self._base is None:
                try:
                    url = str(self.client.auth_test().get("url") or "")
                except SlackApiError as e:
                    log.warning("auth.test failed (%s): no links to threads for now", e.response.get("error"))
                    return None
                except OSError as e:  # Slack unreachable: the next look asks again
                    log.warning("auth.test failed (%s): no links to threads for now", type(e).__name__)
                    return None
                if url.startswith(("https://", "http://")):
                    self._base = url if url.endswith("/") else url + "/"
            return self._base

    def permalink(self, channel: str, ts: str) -> str | None:
        base = self.base()
        if base is None or not channel.isalnum() or not ts.replace(".", "").isdigit():
            return None
        return f"{base}archives/{channel}/p{ts.replace('.', '')}"


class HomePublisher:
    def __init__(self, hub: Hub, settings: Settings, topology: Callable[[], Topology], client: WebClient,
                 roles: Roles | None = None):
        self.hub, self.settings, self.topology, self.client, self.roles = hub, settings, topology, client, roles
        self.links = Links(client)

    def may_read(self, user: str) -> bool:
        """Who sees the deployment's state here: anyone while the bot answers in every channel (its reports
        are anyone's to read then); operators and approvers once CMSBOT_SLACK_CHANNELS limits it."""
        roles = self.roles
        return roles is None or not roles.channels or roles.has(user, Role.operator) or roles.has(user, Role.approver)

    def publish(self, users: list[str]) -> int:
        """Read what the Home shows once and publish it for each of `users`; returns how many got it."""
        if not users:
            return 0
        state = home.gather(self.hub, self.settings, self.topology(), self.links.permalink)
        done = 0
        for user in users:
            can_approve = self.roles is not None and self.roles.has(user, Role.approver)
            view = home_view(state, user, can_approve=can_approve) if self.may_read(user) else closed_home_view(user)
            try:
                self.client.views_publish(user_id=user, view=view)
                done += 1
            except SlackApiError as e:  # that person's tab keeps its last view; the next change tries again
                log.warning("views.publish for %s failed: %s", user, e.response.get("error"))
        return done


class Refresher:
    """Debounced refreshes of the recent viewers' Home, from a thread of its own."""

    def __init__(self, publisher: HomePublisher, debounce: float = DEBOUNCE):
        self.publisher, self.debounce = publisher, debounce
        self._due: float | None = None
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="home-refresh", daemon=True)

    def start(self) -> Refresher:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def seen(self, event: Event) -> None:
        """The reporter's hook: every event read (delivered to Slack or not)."""
        if event.kind not in QUIET_KINDS:
            self.touch()

    def touch(self) -> None:
        with self._cond:
            if self._due is None:
                self._due = time.monotonic() + self.debounce
                self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (self._due is None or time.monotonic() < self._due):
                    self._cond.wait(None if self._due is None else max(0.01, self._due - time.monotonic()))
                if self._stop:
                    return
                self._due = None
            try:
                viewers = home.recent_viewers(self.publisher.hub)
                if viewers:
                    published = self.publisher.publish(viewers)
                    log.info("Home refreshed for %d of %d recent viewers", published, len(viewers))
            except (redis.ConnectionError, redis.TimeoutError):
                log.warning("Home refresh: Redis unavailable; the next change tries again")
            except Exception:  # noqa: BLE001 - a refresh must never stop the next ones
                log.exception("Home refresh failed")
