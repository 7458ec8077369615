"""The Slack side of the integration tests: the real `cmsbot bot` process over its HTTP
endpoint, driven with correctly signed requests, its WebClient pointed at the simulated Slack
(lab/slack_bot.py and lab/slack_fake.py), on the suite's time factor; and what the tests read
back from the fake."""

from __future__ import annotations

import json

from lab import slack_bot
from lab.slack_bot import (
    APPROVER,
    APPROVER2,
    BOTH,
    CHANNEL,
    GROUP_OPERATOR,
    OPERATOR,
    SECRET,
    TOKEN,
    VIEWER,
)
from lab.slack_fake import SlackFake
from tests.harness import TIME_FACTOR, wait_until

__all__ = ["APPROVER", "APPROVER2", "BOTH", "CHANNEL", "GROUP_OPERATOR", "OPERATOR", "SECRET", "TOKEN", "VIEWER",
           "BotProcess"]


class BotProcess(slack_bot.BotProcess):
    factor = TIME_FACTOR

    def event(self, envelope: dict) -> tuple[int, str]:
        """An Events API delivery (e.g. lab.slack_fake.app_home_opened(user)): JSON, signed as Slack signs it."""
        return self.post(json.dumps(envelope), headers={"Content-Type": "application/json"})


def ack_body(body: str) -> dict:
    """Bolt answers ack(text=...) as plain text (Slack shows it only to the user), richer acks as JSON."""
    return json.loads(body) if body.startswith("{") else {"text": body}


def parents(fake: SlackFake) -> list[dict]:
    return [m for m in fake.messages(CHANNEL) if not m.get("thread_ts")]


def wait_for_verdict(fake: SlackFake, timeout: float = 40) -> dict:
    """The one parent message, once its verdict has been written into it."""
    wait_until(lambda: any(p["edits"] and not p["text"].endswith("checking") for p in parents(fake)), timeout,
          f"no verdict; messages: {[(m['text'], m.get('thread_ts')) for m in fake.messages(CHANNEL)]}")
    (parent,) = parents(fake)
    return parent


def blocks_text(message: dict) -> str:
    return json.dumps(message.get("blocks") or [])


def buttons(message: dict) -> list[dict]:
    return [e for b in message.get("blocks") or [] if b.get("type") == "actions" for e in b["elements"]]


