"""The typed messages that cross between the processes: one model per event kind.

Workers (and the bot, for `accepted` and approval decisions) write them; every
reporter (Slack, console) reads them with `match`. On the wire an event is the
stream fields `kind` and `body`: `to_wire` gives the kind and the body as JSON
(the model without its `kind`, top-level fields that are None left out), and
`from_wire` turns them back into the model. `from_wire` never raises: an
unknown kind or a body that does not fit its model comes back as `Unreadable`,
so a reader can say so instead of stopping.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, computed_field, model_validator

from cms.doctor import DoctorReport
from cms.models import Finding, Severity, StatusReport
from cms.watch import Incident


class _Body(BaseModel):
    # extra fields are ignored: a newer writer may add one an older reader does not know
    model_config = ConfigDict(frozen=True, extra="ignore")


class ActionOutcome(_Body):
    """What a remediation, a failover or a recovery did (the head of its result)."""

    kind: str  # the remediation kind, or failover / recover
    target: str
    ok: bool
    text: str
    changes: list[str] = Field(default_factory=list)


class Accepted(_Body):
    """The request is stored and its job queued (written with the enqueue)."""

    kind: Literal["accepted"] = "accepted"
    queue: str | None = None  # the queue the job waits in, to warn when no worker listens
    text: str | None = None  # a note for the thread, when started inside an existing one


class Progress(_Body):
    kind: Literal["progress"] = "progress"
    text: str
    done: int | None = None
    total: int | None = None


class Result(_Body):
    """The end of a request: a status report, an action's outcome, or both (the re-check); or, alone, the
    doctor's report (/cms-doctor: is every server ready for cmsbot)."""

    kind: Literal["result"] = "result"
    action: ActionOutcome | None = None
    report: StatusReport | None = None
    findings: list[Finding] = Field(default_factory=list)  # recognised failure modes of a failed change
    doctor: DoctorReport | None = None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented use of a property
    @property
    def healthy(self) -> bool | None:
        return self.report.healthy if self.report is not None else None

    @model_validator(mode="after")
    def _says_something(self) -> Result:
        if self.doctor is not None:
            if self.action is not None or self.report is not None or self.findings:
                raise ValueError("a doctor's result carries the doctor's report alone")
            return self
        if self.action is None and self.report is None:
            raise ValueError("a result carries a report, an action's outcome or both (or the doctor's report)")
        return self


class Failed(_Body):
    kind: Literal["failed"] = "failed"
    reason: str
    unknown: str | None = None  # an unknown outcome it left (hub.cms_lock): the thread offers to clear it


class PreflightReady(_Body):
    """The preflight of a failover or recovery is done; its approval (card) exists."""

    kind: Literal["preflight"] = "preflight"
    approval: str


class ApprovalChanged(_Body):
    """A decision on an approval, or its expiry: the card is redrawn."""

    kind: Literal["approval"] = "approval"
    approval: str
    outcome: str  # the decision's outcome (approved, recorded, denied) or expired
    by: str | None = None  # the approver; None for an expiry


# -- the watch (cms/watch.py): incidents in the alert channel, and the notice of a skipped watch -------


class IncidentOpened(_Body):
    """A problem the watch found: the parent message of the incident's thread, with its diagnosis."""

    kind: Literal["incident-opened"] = "incident-opened"
    incident: Incident


class IncidentUpdated(_Body):
    """The incident's cause or severity changed: said in its thread."""

    kind: Literal["incident-updated"] = "incident-updated"
    incident: Incident
    before_causes: tuple[str, ...]
    before_severity: Severity


class IncidentResolved(_Body):
    """The problem is gone: the parent says it was resolved, and after how long."""

    kind: Literal["incident-resolved"] = "incident-resolved"
    incident: Incident
    resolved_at: datetime

    @property
    def lasted_s(self) -> float:
        return (self.resolved_at - self.incident.opened_at).total_seconds()


class WatchSkipped(_Body):
    """The watch is not looking while a CMS change runs (said once, then edited when it resumes)."""

    kind: Literal["watch-skipped"] = "watch-skipped"
    reason: str
    since: datetime


class WatchResumed(_Body):
    kind: Literal["watch-resumed"] = "watch-resumed"
    reason: str
    since: datetime
    until: datetime
    runs: int  # runs skipped


class OncallFailed(_Body):
    """On-call could not be told about the incident (its retries spent, or refused): said in its thread."""

    kind: Literal["oncall-failed"] = "oncall-failed"
    target: str  # PagerDuty, Opsgenie, the on-call webhook
    action: str  # trigger, update, resolve
    reason: str


WATCH_MESSAGES = (IncidentOpened, IncidentUpdated, IncidentResolved, WatchSkipped, WatchResumed, OncallFailed)


Message = Annotated[Accepted | Progress | Result | Failed | PreflightReady | ApprovalChanged | IncidentOpened
                    | IncidentUpdated | IncidentResolved | WatchSkipped | WatchResumed | OncallFailed,
                    Field(discriminator="kind")]
Emit = Callable[[Message], None]

_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message)
KINDS = frozenset(m.model_fields["kind"].default for m in (Accepted, Progress, Result, Failed, PreflightReady,
                                                           ApprovalChanged, *WATCH_MESSAGES))


def no_emit(message: Message) -> None:
    """An Emit that drops everything (a check whose progress nobody reads)."""


class Unreadable(_Body):
    """What `from_wire` gives for an event it cannot read: an unknown kind or a bad body."""

    kind: str
    body: str
    error: str

    @property
    def reason(self) -> str:
        """What a thread says when the request's last event is unreadable."""
        return (f"this bot cannot read the {self.kind} event the worker sent ({self.error}); "
                "the bot and the workers may run different versions")


def to_wire(message: Message) -> tuple[str, str]:
    """The stream's `kind` and `body` fields for a message."""
    body = {k: v for k, v in message.model_dump(mode="json", exclude={"kind"}).items() if v is not None}
    return message.kind, json.dumps(body)


def from_wire(kind: str, body: str | None) -> Message | Unreadable:
    """The message a stream entry carries; `Unreadable` (never an exception) when it cannot be read."""
    raw = body or "{}"
    try:
        data: Any = json.loads(raw)
    except ValueError as e:
        return Unreadable(kind=kind, body=raw, error=f"the body is not JSON ({e})")
    if not isinstance(data, dict):
        return Unreadable(kind=kind, body=raw, error="the body is not a JSON object")
    if kind not in KINDS:
        return Unreadable(kind=kind, body=raw, error=f"unknown kind {kind!r}")
    try:
        return _MESSAGE.validate_python({**data, "kind": kind})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])  # the first is the kind itself
        return Unreadable(kind=kind, body=raw, error=(f"{where}: " if where else "") + first["msg"][:300])
