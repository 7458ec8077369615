""""Checked: clear the unknown outcome": approvers only, never the requester of the change or
remediation whose outcome is unknown (they would be its only check), in an allowed channel.
Atomic and audited in hub.cms_lock.clear_unknown; until then no CMS change or remediation starts."""

from __future__ import annotations

from bot.listeners import Deps, guarded, just_ack
from bot.render.blocks import CLEAR_UNKNOWN_ACTION, esc
from bot.roles import Role
from hub.cms_lock import Cleared, clear_unknown

OWN = ("You requested the change whose outcome is unknown, so another approver has to confirm that it was checked "
       "before anything else starts.")
MISSING = "This unknown outcome has been cleared already."


def register(app, deps: Deps) -> None:
    @guarded
    def on_clear(body, respond):
        user = str((body.get("user") or {}).get("id") or "")
        channel = str((body.get("channel") or {}).get("id") or "")
        marker_id = str(((body.get("actions") or [{}])[0]).get("value") or "")
        if not deps.roles.has(user, Role.approver):
            return respond(text=deps.roles.refusal(Role.approver, "clear an unknown outcome"),
                           response_type="ephemeral", replace_original=False)
        if not deps.roles.channel_allowed(channel):
            return respond(text=deps.roles.refusal(Role.viewer, "clear an unknown outcome here"),
                           response_type="ephemeral", replace_original=False)
        outcome, marker = clear_unknown(deps.hub, marker_id, user)
        if outcome is Cleared.own:
            return respond(text=OWN, response_type="ephemeral", replace_original=False)
        if outcome is Cleared.missing or marker is None:
            return respond(text=MISSING, response_type="ephemeral", replace_original=False)
        respond(text=f":white_check_mark: <@{user}> checked and cleared the unknown outcome: {esc(marker.what)}. "
                     "CMS changes and remediations may start again (a cooldown may still hold).",
                response_type="in_channel", replace_original=False)

    app.action(CLEAR_UNKNOWN_ACTION)(ack=just_ack, lazy=[on_clear])
