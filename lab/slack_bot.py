"""The real `cmsbot bot` process over its HTTP endpoint, driven as Slack drives it: correctly
signed requests (Slack's v0 signing, written here from Slack's documentation, not with the
bot's own library), its WebClient pointed at the simulated Slack (`lab.slack_fake`)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from lab.processes import Managed, alive, cmsbot, free_port, wait_until
from lab.slack_fake import SlackFake

SECRET = "test-signing-secret"
TOKEN = "xoxb-test-token"
CHANNEL = "C0OPS"
OPERATOR, VIEWER, GROUP_OPERATOR = "U0OPERATOR", "U0VIEWER", "U0GROUPOP"
APPROVER, APPROVER2, BOTH = "U0APPROVER", "U0APPROVER2", "U0BOTH"  # BOTH: operator and approver
OPERATOR_GROUP = "S0OPS"  # a user group of operators; GROUP_OPERATOR is in it when the fake says so


def signature(secret: str, timestamp: str, body: str) -> str:
    """X-Slack-Signature: "v0=" + hex HMAC-SHA256 of "v0:<timestamp>:<body>" keyed with the signing secret."""
    digest = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={digest}"


class BotProcess(Managed):
    """`cmsbot bot` over HTTP, its Slack client pointed at the fake; returns once it listens."""

    def __init__(self, workdir: Path, redis_url: str, topology: Path, fake: SlackFake, token: str = TOKEN,
                 secret: str = SECRET, **settings: str):
        self.secret = secret
        self.fake = fake
        self.port = free_port()
        env = dict(os.environ, REDIS_URL=redis_url, CMSBOT_TOPOLOGY=str(topology),
                   CMSBOT_SLACK_BOT_TOKEN=token, CMSBOT_SLACK_SIGNING_SECRET=secret,
                   CMSBOT_SLACK_API_URL=fake.base_url, CMSBOT_HTTP_PORT=str(self.port),
                   CMSBOT_HTTP_HOST="127.0.0.1", CMSBOT_SLACK_OPERATORS=f"{OPERATOR},{BOTH},{OPERATOR_GROUP}",
                   CMSBOT_SLACK_APPROVERS=f"{APPROVER},{APPROVER2},{BOTH}",
                   CMSBOT_SLACK_CHANNELS=CHANNEL, CMSBOT_LOG_LEVEL="INFO")
        env.update({f"CMSBOT_{k.upper()}": v for k, v in settings.items()})
        env.pop("CMSBOT_SLACK_APP_TOKEN", None)
        super().__init__(cmsbot("bot"), env, workdir / f"bot-{time.monotonic_ns()}.log")
        self._wait_listening(1)

    def _wait_listening(self, times: int) -> None:
        self.wait_for(lambda: self.text().count("listening on") >= times, 30, "the bot")

    def start(self) -> None:
        """Start it again (after kill()), once what the killed one left behind has exited by itself."""
        wait_until(lambda: not any(alive(p) for p in self.orphans), self.grace, "the killed bot's children live on")
        times = self.text().count("listening on") + 1
        self.restart()
        self._wait_listening(times)

    # -- Slack's side of the HTTP endpoint ------------------------------------------
    def post(self, body: str, *, secret: str | None = None, timestamp: int | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, str]:
        secret = secret or self.secret
        ts = str(timestamp if timestamp is not None else int(time.time()))
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/slack/events", data=body.encode(), method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp": ts,
                     "X-Slack-Signature": signature(secret, ts, body), **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def command(self, name: str, text: str = "", *, user: str = OPERATOR, channel: str = CHANNEL,
                trigger: str | None = None, **kw) -> tuple[int, str]:
        body = urllib.parse.urlencode({
            "token": "legacy", "team_id": "T0001", "team_domain": "contoso", "channel_id": channel,
            "channel_name": "ops", "user_id": user, "user_name": user.lower(), "command": name, "text": text,
            "api_app_id": "A0001", "response_url": self.fake.response_url(channel, user),
            "trigger_id": trigger or f"trig-{time.monotonic_ns()}"})
        return self.post(body, **kw)

    def click(self, fake: SlackFake, action_id: str, value: str, *, user: str, thread: str,
              channel: str = CHANNEL) -> tuple[int, str]:
        payload = {
            "type": "block_actions", "team": {"id": "T0001"}, "user": {"id": user}, "api_app_id": "A0001",
            "trigger_id": f"trig-{time.monotonic_ns()}", "channel": {"id": channel},
            "container": {"type": "message", "message_ts": thread, "channel_id": channel, "thread_ts": thread},
            "response_url": fake.response_url(channel, user),
            "actions": [{"action_id": action_id, "block_id": "b1", "type": "button", "value": value,
                         "action_ts": str(time.time())}],
        }
        return self.post(urllib.parse.urlencode({"payload": json.dumps(payload)}))
