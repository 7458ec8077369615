"""Configuration from the environment (every name is listed in the README)."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from pathlib import Path
from typing import Annotated, ClassVar, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from cms import secret_files
from cms.models import Severity
from cms.watch import Policy, WatchSchedule

# What the probes declare in their headers (workers/probes/*.ps1, `# deadline: N s`), for the jobs'
# hard time limits; tests/unit/test_probe_scripts.py keeps these in step with the headers.
READ_ONLY_DEADLINE = 30.0  # every read-only probe
REMEDIATION_PROBES = 660.0  # the longest remediation in a row: re-seed = export 300 + import 300 + force 60
CHANGE_PROBES = 3600.0  # a failover's cmdlet (900), or a recovery's steps (restore 900, re-seeds 600 each, ...)

DEFAULT_NAMESPACE = "cmsbot"
NAMESPACE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
MIN_COOLDOWN = 60.0  # seconds: a CMS change is never followed at once by the next


class Settings(secret_files.SecretFileSettings):
    # the secrets may come from files: REDIS_URL_FILE, CMSBOT_WINRM_PASSWORD_FILE, CMSBOT_SECRETS_DIR
    secret_variables: ClassVar[dict[str, tuple[str, ...]]] = {
        "redis_url": ("REDIS_URL", "CMSBOT_REDIS_URL"), "winrm_password": ("CMSBOT_WINRM_PASSWORD",),
        # on-call (the watch): CMSBOT_PAGERDUTY_ROUTING_KEY_FILE, CMSBOT_OPSGENIE_API_KEY_FILE, ...
        **{name: (f"CMSBOT_{name.upper()}",) for name in ("pagerduty_routing_key", "opsgenie_api_key",
                                                         "oncall_webhook_url", "oncall_webhook_secret")}}
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
    # no CredSSP: the probes need no delegation of credentials, and the transport does not speak it
    winrm_transport: Literal["ntlm", "kerberos", "basic"] = "ntlm"
    winrm_scheme: Literal["https", "http"] = "https"
    winrm_ca_bundle: Path | None = None
    winrm_connect_timeout: float = Field(5.0, gt=0)
    winrm_proxy: str | None = None  # e.g. http://proxy:8080; none by default
    winrm_max_envelope_kb: int = Field(
        150, ge=32, description="the largest WS-Management message a shell's Create may make, in KB: the host's "
                                "MaxEnvelopeSizekb (150 on Windows Server 2008 R2, 500 on current Windows) and "
                                "pywinrm's 150 KB for the response that echoes the environment; above it the "
                                "probes of a server are spread over several shells")
    winrm_max_answer_mb: int = Field(
        8, ge=1, le=1024, description="the most output one probe's answer may have, in MB: past it the worker stops "
                                      "reading, ends the command and reports the probe as failed (an export of a "
                                      "very large CMS may need more)")

    # Deadlines and fan-out
    host_deadline: float = Field(30.0, gt=0, description="seconds a read-only probe may take on one server, module "
                                                        "load included; the long probes' declared deadlines "
                                                        "(start-service 240 s, re-seed 600 s, ...) scale with it")
    fanout: int = Field(1024, ge=1, le=20000, description="servers probed at once (connections on one event loop)")
    chat_timeout: float = Field(180.0, gt=0, description="seconds `cmsbot chat` waits for a result")
    replication_wait: float = Field(150.0, ge=0, description="seconds between forcing replication and re-checking")
    heartbeat_stale: float = Field(20.0, ge=10, description="seconds without a heartbeat (jobs beat every 5 s) "
                                                             "before a running job counts as lost and is reported")

    # CMS failover and recovery
    approvals_required: int = Field(1, ge=1, le=5, description="distinct approvers needed")
    approval_ttl: float = Field(900.0, gt=0, description="seconds an approval card stays open")
    failover_deadline: float = Field(900.0, gt=0, description="seconds a failover may take to converge")
    failover_poll: float = Field(10.0, gt=0, description="seconds between convergence checks")
    cooldown: float = Field(900.0, ge=MIN_COOLDOWN, description="seconds after a CMS change before the next may "
                                                                 f"start; at least {MIN_COOLDOWN:g}")
    allow_volatile_redis: bool = Field(
        False, description="run CMS changes although Redis does not persist its data (no AOF), or cannot say: a "
                           "Redis restart then forgets the CMS lock. The preflight card shows the risk as WARN")

    # Delivery to Slack (the reporter)
    delivery_patience: float = Field(86400.0, gt=0, description="seconds the reporter keeps retrying an event "
                                                                "Slack does not take (an outage) before giving it up")
    delivery_backoff: float = Field(60.0, gt=0, description="the longest wait between two retries of one event")
    delivery_late_note: float = Field(60.0, ge=0, description="an event delivered this many seconds late because "
                                                              "Slack failed gets a note in its thread saying so")
    events_keep: float = Field(86400.0, ge=0, description="seconds delivered events stay in the events stream; "
                                                          "undelivered ones stay until every consumer group has them")

    # The HTTP endpoint (`cmsbot bot` in HTTP mode: gunicorn, bot/serve/http.py)
    http_threads: int = Field(32, ge=2, le=1024, description="threads of one serving process: requests it reads "
                                                             "and answers at once")
    http_connections: int = Field(1000, ge=4, le=100_000, description="connections one serving process holds "
                                                                      "open at once (a silent or half-sent one costs "
                                                                      "a socket, not a thread); more wait in the "
                                                                      "listen backlog")
    http_max_body: int = Field(1024 * 1024, ge=1024, description="bytes a request body may have; more: 413, "
                                                                 "answered before the body is read")
    http_header_timeout: float = Field(5.0, gt=0, description="seconds from a request's first byte to the end of "
                                                              "its headers; then the connection is closed")
    http_body_timeout: float = Field(10.0, gt=0, description="seconds to receive a request's body; then 408")
    http_keepalive: int = Field(5, ge=1, le=300, description="seconds an idle connection stays open (kept alive "
                                                             "after a request, or opened and silent)")

    # Fair use: requests that reach the servers (/cms-status, /cms-replicate, remediations), per
    # sliding window, in Redis so that every serving process counts the same; 0 turns a limit off
    limit_window: float = Field(60.0, gt=0, description="seconds the limits below count over")
    limit_user: int = Field(10, ge=0, description="requests one user may start per window")
    limit_channel: int = Field(30, ge=0, description="requests one channel may start per window")

    # Telemetry (hub/telemetry.py; README: Telemetry): /metrics, /healthz and /readyz, and the logs' format
    metrics_port: int = Field(0, ge=0, le=65535, description="the port of /metrics, /healthz and /readyz on a worker, "
                                                             "and on the bot in either mode (over HTTP they are on "
                                                             "CMSBOT_HTTP_PORT as well); 0: not served there")
    metrics_host: str = Field("0.0.0.0", min_length=1, description="the address CMSBOT_METRICS_PORT listens on")
    log_format: Literal["text", "json"] = Field("text", description="text, or json: one JSON object per line "
                                                                    "(time, level, logger, message, request_id)")

    # The watch and on-call (cms/watch.py; `cmsbot watch` runs RQ's cron scheduler): a status check per
    # scheduled scope; what it finds opens an incident in the alert channel and pages on-call, what clears
    # resolves it. The workers read all of these (they run the checks and page); `cmsbot watch` the schedule.
    watch: Annotated[list[WatchSchedule], NoDecode] = Field(
        default_factory=list, description='the schedule, as JSON: [{"scope": "*", "cron": "*/5 * * * *"}], or as '
                                          "SCOPE=CRON pairs separated by ';': '*=*/5 * * * *; pool02.contoso.com=0 "
                                          "* * * *'. \"*\" is the whole deployment, else a pool or server of the "
                                          "topology; cron in the scheduler's local time (UTC in the container)")
    alert_channel: str | None = Field(None, pattern=r"^[CGD][A-Z0-9]{2,40}$",
                                      description="the Slack channel ID incidents are posted in")
    watch_grace: float = Field(900.0, ge=0, description="seconds a transient problem (a replica catching up, a "
                                                        "server that did not answer) may last before it alerts")
    watch_clear_after: float = Field(0.0, ge=0, description="seconds a problem must stay gone before its incident "
                                                            "resolves (0: the first clean check); more damps flapping")
    oncall_page_at: Literal["critical", "error", "warning"] = Field(
        "error", description="the least severity that pages on-call (the alert channel hears of every incident)")
    pagerduty_routing_key: SecretStr = Field(SecretStr(""), description="PagerDuty Events API v2 integration key; "
                                                                        "empty: PagerDuty is not used")
    pagerduty_url: str = Field("https://events.pagerduty.com/v2/enqueue", pattern=r"^https?://",
                               description="the Events API v2 endpoint")
    opsgenie_api_key: SecretStr = Field(SecretStr(""), description="an Opsgenie API integration key; empty: Opsgenie "
                                                                   "is not used")
    opsgenie_url: str = Field("https://api.opsgenie.com", pattern=r"^https?://",
                              description="Opsgenie's API (EU: https://api.eu.opsgenie.com)")
    oncall_webhook_url: SecretStr = Field(SecretStr(""), description="a URL that receives every incident event as "
                                                                     "JSON (secret: it may carry a token)")
    oncall_webhook_secret: SecretStr = Field(SecretStr(""), description="signs the webhook's body: header "
                                                                        "X-Cmsbot-Signature: sha256=<hex HMAC>")
    oncall_retries: int = Field(8, ge=0, le=20, description="retries of an on-call request that failed (network "
                                                            "error, 429, 5xx), with doubling waits")
    oncall_retry_first: float = Field(10.0, gt=0, description="seconds before the first retry; each next one "
                                                              "waits twice as long, at most 30 minutes")
    oncall_timeout: float = Field(10.0, gt=0, description="seconds one on-call request may take")

    @field_validator("watch", mode="before")
    @classmethod
    def _schedule(cls, value: object) -> object:
        """JSON, or `SCOPE=CRON; SCOPE=CRON` (no braces: a Compose default can hold it)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return []
        if text.startswith("["):
            return json.loads(text)
        pairs = [part.partition("=") for part in text.split(";") if part.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"{value!r}: give the schedule as JSON or as SCOPE=CRON pairs separated by ';'")
        return [{"scope": scope.strip(), "cron": cron.strip()} for scope, _, cron in pairs]

    def watch_policy(self) -> Policy:
        return Policy(grace=timedelta(seconds=self.watch_grace), clear_after=timedelta(seconds=self.watch_clear_after),
                      page_at=Severity(self.oncall_page_at))

    def oncall_targets(self) -> list[str]:
        """The on-call systems configured (those with their key or URL set)."""
        return [name for name, secret in (("pagerduty", self.pagerduty_routing_key),
                                          ("opsgenie", self.opsgenie_api_key),
                                          ("webhook", self.oncall_webhook_url)) if secret.get_secret_value()]

    def oncall_retry_intervals(self) -> list[int]:
        return [int(min(self.oncall_retry_first * 2 ** n, 1800)) or 1 for n in range(self.oncall_retries)]

    @model_validator(mode="after")
    def _password_from_file(self) -> Settings:
        # winrm_password_file given in code (the environment's CMSBOT_WINRM_PASSWORD_FILE is read above)
        if self.winrm_password_file and not self.winrm_password.get_secret_value():
            try:
                secret = secret_files.read_secret(self.winrm_password_file, "winrm_password_file")
            except ValueError as e:  # SettingsError: a ValidationError from here
                raise ValueError(str(e)) from None
            object.__setattr__(self, "winrm_password", SecretStr(secret))
        return self

    def waves(self, servers: int) -> int:
        """How many rounds of `fanout` servers a stage over `servers` takes."""
        return max(1, math.ceil(servers / self.fanout))

    def probe_deadline(self, declared: float) -> float:
        """A probe's deadline here: what its header declares for a real host (module load included),
        scaled by CMSBOT_HOST_DEADLINE against the read-only probes' declared 30 s."""
        return declared * self.host_deadline / READ_ONLY_DEADLINE

    def _status_budget(self, servers: int) -> float:
        # stage 1: up to 3 read-only probes in a row on a server (the CMS Front End), one wave after
        # another; then the CMS fallbacks (2) and the second stage (2 probes in a row on the FTA host)
        return self.host_deadline * (3 * self.waves(servers) + 4)

    def job_timeout(self, servers: int) -> int:
        """RQ's hard limit for a status job over `servers`. Shorter, and RQ kills a check whose servers
        are still answering and discards every result."""
        return int(self._status_budget(servers) + 60)

    @property
    def failover_timeout(self) -> int:
        """RQ's hard limit for a failover or recovery job: preflight again, the cmdlet or the recovery's
        steps, convergence, the replication wait."""
        return int(self.host_deadline * 20 + self.probe_deadline(CHANGE_PROBES) + self.failover_deadline
                   + self.replication_wait + 120)

    def change_timeout(self, servers: int) -> int:
        """RQ's hard limit for a remediation or /cms-replicate over `servers`: the checks before and
        after, the longest remediation's probes in a row, the replication wait."""
        return int(2 * self._status_budget(servers) + self.probe_deadline(REMEDIATION_PROBES)
                   + self.replication_wait + 60)
