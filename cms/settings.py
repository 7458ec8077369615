"""Configuration from the environment (every name is listed in the README)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NAMESPACE = "cmsbot"
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CMSBOT_", extra="ignore", populate_by_name=True,
                                      env_ignore_empty=True)

    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("REDIS_URL", "CMSBOT_REDIS_URL"),
    )
    topology: Path = Path("topology.yaml")
    namespace: str = Field(
        DEFAULT_NAMESPACE, pattern=NAMESPACE_PATTERN,
        # CMSBOT_QUEUE_PREFIX was its name when it covered only the queues
        validation_alias=AliasChoices("CMSBOT_NAMESPACE", "CMSBOT_QUEUE_PREFIX", "namespace"),
        description="every Redis key, stream, lock and queue of this deployment lives under it: bot and "
                    "workers of one deployment must agree; two deployments on one Redis must differ")

    # WinRM
    winrm_username: str = "cmsbot"
    winrm_password: SecretStr = SecretStr("")
    winrm_password_file: Path | None = None
    winrm_transport: Literal["ntlm", "kerberos", "credssp", "basic"] = "ntlm"
    winrm_scheme: Literal["https", "http"] = "https"
    winrm_ca_bundle: Path | None = None
    winrm_connect_timeout: float = Field(5.0, gt=0)
    winrm_proxy: str | None = None  # e.g. http://proxy:8080; none by default

    # Deadlines and fan-out
    host_deadline: float = Field(30.0, gt=0, description="seconds one server may take for its probes in one job")
    fanout: int = Field(256, ge=1, le=1024, description="servers probed at once (I/O-bound threads)")
    chat_timeout: float = Field(180.0, gt=0, description="seconds `cmsbot chat` waits for a result")
    replication_wait: float = Field(150.0, ge=0, description="seconds between forcing replication and re-checking")
    heartbeat_stale: float = Field(20.0, ge=10, description="seconds without a heartbeat (jobs beat every 5 s) "
                                                             "before a running job counts as lost and is reported")

    # CMS failover and recovery
    approvals_required: int = Field(1, ge=1, le=5, description="distinct approvers needed")
    approval_ttl: float = Field(900.0, gt=0, description="seconds an approval card stays open")
    failover_deadline: float = Field(900.0, gt=0, description="seconds a failover may take to converge")
    failover_poll: float = Field(10.0, gt=0, description="seconds between convergence checks")
    cooldown: float = Field(900.0, ge=0, description="seconds after a CMS change before the next may start")

    @model_validator(mode="after")
    def _password_from_file(self) -> Settings:
        if self.winrm_password_file and not self.winrm_password.get_secret_value():
            secret = self.winrm_password_file.read_text(encoding="utf-8").strip()
            object.__setattr__(self, "winrm_password", SecretStr(secret))
        return self

    def waves(self, servers: int) -> int:
        """How many rounds of `fanout` servers a stage over `servers` takes."""
        return max(1, math.ceil(servers / self.fanout))

    def job_timeout(self, servers: int) -> int:
        """RQ's hard limit for a status job over `servers`: the first stage, one host deadline per
        fan-out wave, then the CMS fallback and the second stage, plus slack. Shorter, and RQ kills a
        check whose servers are still answering and discards every result."""
        return int(self.host_deadline * (self.waves(servers) + 2) + 60)

    @property
    def failover_timeout(self) -> int:
        """RQ's hard limit for a failover or recovery job: preflight, the change, convergence."""
        return int(self.host_deadline * 20 + self.failover_deadline + self.replication_wait + 120)

    def change_timeout(self, servers: int) -> int:
        """RQ's hard limit for a remediation or /cms-replicate over `servers`: its steps, the
        replication wait and the checks before and after (each one host deadline per wave)."""
        return int(self.host_deadline * (2 * self.waves(servers) + 4) + self.replication_wait + 60)
