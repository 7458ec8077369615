"""Who may do what: viewers (allowed channels), operators, approvers.

Roles name Slack user ids or user-group ids. Group membership is fetched in
the background and cached, so checking a role never calls Slack on the hot
path before an ack.
"""

from __future__ import annotations

import logging
import threading
from enum import Enum

from bot.config import SlackSettings

log = logging.getLogger(__name__)


class Role(str, Enum):
    viewer = "viewer"
    operator = "operator"
    approver = "approver"


ROLE_TEXT = {
    Role.viewer: "run it in a channel allowed for cms-chatops",
    Role.operator: "be a cms-chatops operator",
    Role.approver: "be a cms-chatops approver",
}


class Roles:
    def __init__(self, settings: SlackSettings):
        self.channels = settings.channels
        if not self.channels:
            log.warning("CMSBOT_SLACK_CHANNELS is not set: the bot answers in any channel it is invited to, and "
                        "anyone there can read server names, addresses, certificates and ACLs in its reports. "
                        "Set it to the allowed channel IDs (comma-separated) to restrict it; /cms-help says so too")
        self._members = {Role.operator: settings.operators, Role.approver: settings.approvers}
        self._groups: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    @property
    def group_ids(self) -> set[str]:
        return {i for ids in self._members.values() for i in ids if i.startswith("S")}

    def set_group(self, group_id: str, users: frozenset[str]) -> None:
        with self._lock:
            self._groups[group_id] = users

    def channel_allowed(self, channel: str | None) -> bool:
        return not self.channels or (channel or "") in self.channels

    def has(self, user: str, role: Role) -> bool:
        if role is Role.viewer:
            return True  # viewers are defined by channel, checked with channel_allowed
        ids = self._members[role]
        if user in ids:
            return True
        with self._lock:
            return any(user in self._groups.get(g, frozenset()) for g in ids if g.startswith("S"))

    def refusal(self, role: Role, what: str) -> str:
        return f"Sorry, to {what} you need to {ROLE_TEXT[role]}. Ask your cms-chatops admin if you should be."

    def refresh(self, client) -> None:
        """Fetch every configured user group's members (called in the background)."""
        for group in self.group_ids:
            try:
                users = client.usergroups_users_list(usergroup=group)["users"]
                self.set_group(group, frozenset(users))
            except Exception as e:  # noqa: BLE001 - keep the last known membership
                log.warning("could not refresh user group %s: %s", group, type(e).__name__)
