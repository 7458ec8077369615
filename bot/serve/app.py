"""The Bolt app, built by a factory from settings."""

from __future__ import annotations

import logging
import re
import secrets

from slack_bolt import App, BoltRequest, BoltResponse
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)

from bot import commands
from bot.config import SlackSettings
from bot.listeners import (
    SAFE_ERROR,
    Deps,
    approval,
    doctor,
    explain,
    failover,
    help,
    history,
    home,
    just_ack,
    remediate,
    replicate,
    status,
    unknown,
)
from cms import logs
from hub import telemetry
from hub.contract import id_for_delivery

log = logging.getLogger("cmsbot.slack")


class _App(App):
    """Bolt's app, counting and timing every slash command (hub/telemetry.py) and writing its request
    id on every line logged while it is answered (cms/logs.py): the id its listener gives the request,
    which the worker's and the reporter's lines about it carry too. The same in both modes: the HTTP
    adapter and Socket Mode both hand requests to dispatch()."""

    def dispatch(self, req: BoltRequest) -> BoltResponse:
        body = req.body if isinstance(req.body, dict) else {}
        name = body.get("command")
        if not isinstance(name, str) or not name:
            return super().dispatch(req)
        label = name if name in commands.HELP else "other"  # a fixed set of labels, whatever was sent
        team = str(body.get("team_id") or (body.get("team") or {}).get("id") or "")
        trigger = str(body.get("trigger_id") or "")
        with logs.request(id_for_delivery(team, trigger) if trigger else None):
            with telemetry.command(label) as handled:
                resp = super().dispatch(req)
                if resp.status >= 400 and handled.outcome == "answered":
                    handled.outcome = "rejected"  # not signed by Slack, or not served
            log.info("%s: %s, acked in %.0f ms (HTTP %s)", label, handled.outcome, handled.seconds * 1000,
                     resp.status)
        return resp


def web_client(slack: SlackSettings) -> WebClient:
    """Slack Web API client that rides out rate limits (honouring Retry-After),
    5xx answers and dropped connections."""
    return WebClient(
        token=slack.bot_token.get_secret_value(),
        base_url=slack.api_url,
        timeout=15,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=3),
        ],
    )


def _register_fallbacks(app: App) -> None:
    """Anything no listener claimed (an old button, a command renamed in the manifest) gets a
    plain answer, not Bolt's 404."""
    from bot.commands import usage
    from bot.render.blocks import esc

    @app.command(re.compile(".*"))
    def unknown_command(ack):
        ack(text=esc(f"I do not know that command. {usage()}"))  # the usage shows <placeholders>

    def stale_button(respond):
        respond(text="This button is no longer valid; run /cms-status again for fresh ones.",
                response_type="ephemeral", replace_original=False)

    app.action(re.compile(".*"))(ack=just_ack, lazy=[stale_button])


def build_app(deps: Deps, client: WebClient) -> App:
    app = _App(
        client=client,
        signing_secret=deps.slack.signing_secret.get_secret_value() or None,
        # Listeners answer synchronously (commands do one pipelined Redis round trip, then ack);
        # buttons ack at once and do their work in lazy listeners after the response. Without
        # this, Bolt hands each request to a thread and polls for the ack every 10 ms.
        process_before_response=True,
        raise_error_for_unhandled_request=False,
    )
    for module in (status, explain, replicate, failover, approval, unknown, help, remediate, doctor, history, home):
        module.register(app, deps)
    _register_fallbacks(app)

    @app.error
    def on_error(error, body, logger):  # anything a listener did not handle itself
        ref = secrets.token_hex(4)
        logger.error("unhandled error (ref %s): %s", ref, type(error).__name__, exc_info=error)
        response_url = (body or {}).get("response_url")
        if response_url:
            try:
                from slack_sdk.webhook import WebhookClient

                WebhookClient(response_url, timeout=5).send(text=SAFE_ERROR.format(ref=ref), response_type="ephemeral")
            except Exception:  # noqa: BLE001 - best effort
                logger.warning("could not tell the user about error %s", ref)
    return app
