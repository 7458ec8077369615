"""The watch in the alert channel, rendered (pure, Block Kit through slack_sdk.models).

An incident is one parent message: what is wrong, and the diagnosis with its remediation buttons
(the same finding blocks and buttons as a /cms-status report). Its thread collects the changes.
Resolved, the parent says so, and after how long, and drops its buttons. The notice that the
watch is paused while a CMS change runs is one message, edited when the watch resumes.
"""

from __future__ import annotations

from datetime import datetime

from slack_sdk.models.blocks import Block, ContextBlock, DividerBlock

from bot.render import text as render
from bot.render.blocks import (
    ICON,
    MAX_BLOCKS,
    MAX_SECTION,
    Message,
    clip,
    esc,
    finding_blocks,
    md,
    note,
    sections,
)
from cms.models import Severity
from cms.watch import Incident, lasted

MAX_INCIDENT_FINDINGS = 5  # findings (with their buttons) on the parent; /cms-status shows them all
MAX_DETAIL = 10


def _causes(causes: tuple[str, ...]) -> str:
    return ", ".join(f"`{esc(c)}`" for c in causes) or "(none)"


def _context(i: Incident, extra: str = "") -> Block:
    line = (f"`{esc(clip(i.subject, 200))}` · cause {_causes(i.causes)} · opened {render.when(i.opened_at)}"
            + (f" · first seen {render.when(i.first_seen)}" if i.first_seen < i.opened_at else "")
            + (f" · {extra}" if extra else ""))
    return ContextBlock(elements=[md(clip(line, MAX_SECTION - 100))])


def _diagnosis(i: Incident) -> list[Block]:
    out: list[Block] = []
    for f in i.findings[:MAX_INCIDENT_FINDINGS]:
        out += finding_blocks(f, operator_buttons=True)
    if len(i.findings) > MAX_INCIDENT_FINDINGS:
        out += sections(f"…and {len(i.findings) - MAX_INCIDENT_FINDINGS} more findings: run `/cms-status` "
                        "for all of them.")
    if i.detail:
        out += sections("\n".join(f"• {esc(clip(d, 500))}" for d in i.detail[:MAX_DETAIL]))
    return out


def _fit(blocks: list[Block]) -> list[Block]:
    """One message: at most MAX_BLOCKS blocks (the parent cannot spill over into a second one)."""
    if len(blocks) <= MAX_BLOCKS:
        return blocks
    return blocks[:MAX_BLOCKS - 1] + sections("…the rest of the diagnosis did not fit: run `/cms-status`.")


def incident(i: Incident) -> Message:
    """The parent message of an open incident."""
    what = f"`{esc(clip(i.subject, 300))}`" if i.findings else esc(clip(i.summary, 2000))  # a finding says the rest
    head = f"{ICON[i.severity]} *CMS incident · {i.severity.value}*: {what}"
    body: list[Block] = [*sections(head), _context(i, "this thread follows every change"), DividerBlock(),
                         *_diagnosis(i)]
    return Message(text=f"CMS incident: {i.summary}", blocks=_fit(body))


def incident_update(i: Incident, before_causes: tuple[str, ...], before_severity: Severity) -> Message:
    """In the thread: what changed, and the diagnosis now (with its buttons)."""
    changes = []
    if tuple(before_causes) != tuple(i.causes):
        changes.append(f"cause {_causes(before_causes)} → {_causes(i.causes)}")
    if before_severity != i.severity:
        changes.append(f"severity {before_severity.value} → {i.severity.value}")
    what = "; ".join(changes) or "the diagnosis changed"
    head = f":arrows_counterclockwise: *Changed*: {what}\n{ICON[i.severity]} {esc(clip(i.summary, 2000))}"
    return Message(text=f"Changed: {'; '.join(changes) or i.summary}",
                   blocks=_fit([*sections(head), *_diagnosis(i)]))


def incident_resolved(i: Incident, resolved_at: datetime) -> Message:
    """The parent once the problem is gone: resolved, after how long; no buttons."""
    after = lasted((resolved_at - i.opened_at).total_seconds())
    head = f":white_check_mark: *Resolved after {after}*: ~{esc(clip(i.summary, 2000))}~"
    context = _context(i, f"resolved {render.when(resolved_at)}")
    return Message(text=f"Resolved after {after}: {i.summary}", blocks=[*sections(head), context])


def incident_cleared(i: Incident, resolved_at: datetime) -> Message:
    """In the thread, when it resolves."""
    after = lasted((resolved_at - i.opened_at).total_seconds())
    return note(f"Cleared at {render.when(resolved_at)}: the watch no longer sees it. Resolved after {after}. "
                "If it comes back, a new incident opens.", ":white_check_mark:")


def watch_paused(reason: str, since: datetime) -> Message:
    text = (f"The watch is paused since {render.when(since)}: {reason}. Scheduled checks are skipped until that "
            "is over; this message says when the watch resumes.")
    return note(text, ":double_vertical_bar:")


def watch_resumed(reason: str, since: datetime, until: datetime, runs: int) -> Message:
    text = (f"The watch resumed at {render.when(until)}: it skipped {runs} scheduled check{'s' if runs != 1 else ''} "
            f"in {lasted((until - since).total_seconds())} (paused since {render.when(since)}: {reason}).")
    return note(text, ":arrow_forward:")


def oncall_failed(target: str, action: str, reason: str) -> Message:
    verb = {"trigger": "paged", "update": "updated", "resolve": "told it is resolved"}.get(action, action)
    return note(f"{target} was not {verb}: {reason}. Check the on-call settings (CMSBOT_PAGERDUTY_*, "
                "CMSBOT_OPSGENIE_*, CMSBOT_ONCALL_WEBHOOK_*) and tell on-call yourself if needed.", ":warning:")
