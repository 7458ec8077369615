"""The chat side's configuration (Slack), from the environment. Listed in the README."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Annotated, ClassVar, cast

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from cms import secret_files

Ids = Annotated[frozenset[str], NoDecode]  # "U123,S456" in the environment, not JSON


def _ids(value: object) -> frozenset[str]:
    if value is None or value == "":
        return frozenset()
    if isinstance(value, str):
        return frozenset(v.strip() for v in value.replace(";", ",").split(",") if v.strip())
    return frozenset(str(v).strip() for v in cast(Iterable[object], value))  # a list or set given in code


SECRETS = ("bot_token", "signing_secret", "app_token")


class SlackSettings(secret_files.SecretFileSettings):
    # CMSBOT_SLACK_BOT_TOKEN_FILE, ..._SIGNING_SECRET_FILE, ..._APP_TOKEN_FILE, or CMSBOT_SECRETS_DIR
    secret_variables: ClassVar[dict[str, tuple[str, ...]]] = {
        name: (f"CMSBOT_SLACK_{name.upper()}",) for name in SECRETS}
    model_config = SettingsConfigDict(env_prefix="CMSBOT_SLACK_", extra="ignore", env_ignore_empty=True)

    bot_token: SecretStr = SecretStr("")
    signing_secret: SecretStr = SecretStr("")
    app_token: SecretStr = SecretStr("")  # set: Socket Mode; empty: HTTP endpoint
    api_url: str = "https://slack.com/api/"
    http_port: int = Field(3000, validation_alias="CMSBOT_HTTP_PORT")
    http_host: str = Field("0.0.0.0", validation_alias="CMSBOT_HTTP_HOST")
    # pre-forked processes serving /slack/events (acks use every core)
    http_processes: int = Field(default_factory=lambda: min(os.cpu_count() or 1, 4), ge=1, le=16,
                                validation_alias="CMSBOT_HTTP_PROCESSES")

    # Roles: Slack user ids (U...) or user-group ids (S...), comma separated.
    channels: Ids = frozenset()  # viewers: where status and explain may run (empty: any channel)
    operators: Ids = frozenset()
    approvers: Ids = frozenset()
    group_refresh: float = 300.0  # seconds between refreshes of user-group membership

    @field_validator("channels", "operators", "approvers", mode="before")
    @classmethod
    def _split(cls, value: object) -> frozenset[str]:
        return _ids(value)
