"""The bot's Home tab: published for the person who opens it (`app_home_opened`), who is then kept for
an hour among the recent viewers the reporter refreshes when something the Home shows changes
(bot/delivery/home.py). The event is acked at once; reading Redis and publishing run after the ack."""

from __future__ import annotations

import logging

from bot.delivery.home import HomePublisher
from bot.listeners import Deps, just_ack
from hub import home

log = logging.getLogger("cmsbot.slack")


def register(app, deps: Deps) -> HomePublisher:
    publisher = HomePublisher(deps.hub, deps.settings, lambda: deps.topology, app.client, deps.roles)

    def publish_home(event):
        user = event.get("user")
        if event.get("tab", "home") != "home" or not isinstance(user, str) or not user:
            return  # the Messages tab, or an event without a person
        home.note_viewer(deps.hub, user)
        publisher.publish([user])

    app.event("app_home_opened")(ack=just_ack, lazy=[publish_home])
    return publisher
