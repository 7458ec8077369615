"""Pure rendering to Slack Block Kit, through slack_sdk.models (which validates).

Every message stays within Slack's limits however large the deployment: at
most 50 blocks a message and 3000 characters a section. A long report is
split across messages, the findings past the first few are summarised, and the
full text goes into a file in the thread whenever anything was cut.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.render import text as render
from cms.explain import Explanation
from cms.messages import ActionOutcome
from cms.models import SEVERITY_ORDER, Finding, Severity, StatusReport
from cms.preflight import UNKNOWN_CHECK, Verdict
from cms.remediation import describe
from hub.approvals import ApprovalStatus

MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FINDINGS_SHOWN = 15
MAX_TABLE_ROWS = 25
ACTION_PREFIX = "remediate-"

ICON = {Severity.critical: ":rotating_light:", Severity.error: ":red_circle:", Severity.warning: ":warning:",
        Severity.pending: ":hourglass_flowing_sand:", Severity.info: ":information_source:"}


CONFIRM_MAX = 300  # Slack's limit for a confirmation dialog's text


def _short(text: str) -> str:
    return text if len(text) <= CONFIRM_MAX else text[:CONFIRM_MAX - 1] + "…"


def esc(text: str) -> str:
    """Text from servers or users, made inert in mrkdwn (no mentions, no links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@dataclass
class Message:
    text: str  # the notification / fallback text
    blocks: list[Block] = field(default_factory=list)

    def payload(self) -> dict:
        # Slack reads `text` as mrkdwn too (notifications, fallbacks): escaped like every block,
        # so a server-supplied "<!channel>" or "<https://...|...>" stays inert text
        return {"text": esc(self.text), "blocks": [b.to_dict() for b in self.blocks]}


@dataclass
class Rendered:
    messages: list[Message]
    attachment: str | None = None  # full text report, uploaded when something was cut


def sections(text: str) -> list[Block]:
    """One or more sections, each within the 3000-character limit (split at line ends)."""
    out, chunk = [], ""
    for line in text.splitlines(keepends=True):
        while len(line) > MAX_SECTION:
            if chunk:
                out.append(chunk)
                chunk = ""
            out.append(line[:MAX_SECTION])
            line = line[MAX_SECTION:]
        if len(chunk) + len(line) > MAX_SECTION:
            out.append(chunk)
            chunk = ""
        chunk += line
    if chunk.strip():
        out.append(chunk)
    return [SectionBlock(text=MarkdownTextObject(text=c)) for c in out]


def paginate(blocks: list[Block], text: str) -> list[Message]:
    pages = [blocks[i:i + MAX_BLOCKS] for i in range(0, len(blocks), MAX_BLOCKS)] or [[]]
    return [Message(text=text if i == 0 else f"{text} (part {i + 1} of {len(pages)})", blocks=page)
            for i, page in enumerate(pages)]


# -- the thread ---------------------------------------------------------------------


def parent(command: str, user: str, target: str | None) -> Message:
    what = f"`{command}{' ' + esc(target) if target else ''}`"
    text = f":mag: {what} requested by <@{user}>: checking..."
    return Message(text=f"{command} requested: checking", blocks=[SectionBlock(text=MarkdownTextObject(text=text))])


def parent_verdict(command: str, user: str, target: str | None, verdict: str, ok: bool) -> Message:
    icon = ":white_check_mark:" if ok else ":x:"
    what = f"`{command}{' ' + esc(target) if target else ''}`"
    return Message(text=verdict, blocks=[
        SectionBlock(text=MarkdownTextObject(text=f"{icon} *{esc(verdict)}*")),
        ContextBlock(elements=[MarkdownTextObject(text=f"{what} requested by <@{user}> · details in the thread")]),
    ])


def progress(text: str, done: bool = False) -> Message:
    icon = ":heavy_check_mark:" if done else ":hourglass_flowing_sand:"
    return Message(text=text, blocks=[ContextBlock(elements=[MarkdownTextObject(text=f"{icon} {esc(text)}")])])


def note(text: str, icon: str = ":information_source:", mention: str | None = None) -> Message:
    who = f"<@{mention}> " if mention and mention.isalnum() else ""
    return Message(text=text, blocks=sections(f"{icon} {who}{esc(text)}"))


def plain(text: str) -> Message:
    """A fallback when Slack rejects blocks: the text in code blocks."""
    chunks = [text[i:i + MAX_SECTION - 10] for i in range(0, len(text), MAX_SECTION - 10)] or [""]
    return Message(text=text[:300], blocks=[SectionBlock(text=MarkdownTextObject(text=f"```{esc(c)}```"))
                                            for c in chunks[:MAX_BLOCKS]])


def failed(reason: str, unknown: str | None = None) -> Message:
    """A failure; one that left an unknown outcome carries the button that clears it."""
    body: list[Block] = list(sections(f":warning: *The command failed.* {esc(reason)}"))
    if unknown:
        body.append(ActionsBlock(elements=[clear_button(unknown)]))
    return Message(text=f"Failed: {reason}", blocks=body)


# -- the result ----------------------------------------------------------------------


def report(r: StatusReport, *, operator_buttons: bool = True, heading: str | None = None) -> Rendered:
    verdict = render.verdict(r)
    blocks: list[Block] = [HeaderBlock(text=PlainTextObject(text=(heading or "CMS status")[:150]))]
    blocks += sections(f"*{esc(verdict)}*")
    cut = False
    if r.cms is not None:
        blocks += sections(cms_summary(r))
        table, table_cut = replica_table(r)
        cut |= table_cut
        blocks += sections(table)
    shown = sorted(r.findings, key=lambda f: SEVERITY_ORDER.index(f.severity))
    for sev in SEVERITY_ORDER:
        group = [f for f in shown[:MAX_FINDINGS_SHOWN] if f.severity == sev]
        if not group:
            continue
        blocks.append(DividerBlock())
        blocks += sections(f"{ICON[sev]} *{sev.value.upper()}* ({sum(f.severity == sev for f in r.findings)})")
        for f in group:
            blocks += finding_blocks(f, operator_buttons)
    if len(shown) > MAX_FINDINGS_SHOWN:
        cut = True
        rest = shown[MAX_FINDINGS_SHOWN:]
        counts: dict[str, int] = {}
        for f in rest:
            counts[f.code.value] = counts.get(f.code.value, 0) + 1
        blocks += sections(f"…and {len(rest)} more findings: "
                           + ", ".join(f"{n} × `{c}`" for c, n in sorted(counts.items()))
                           + ". All of them are in the attached report.")
    if r.host_errors:
        blocks.append(DividerBlock())
        lines = [f"*Could not check* ({len(r.host_errors)})"]
        lines += [f"• `{esc(e.server)}`: {render.HOST_ERROR_TEXT[e.kind.value]}"
                  f"{f' [{e.probe}]' if e.probe else ''}: {esc(e.reason)}" for e in r.host_errors]
        blocks += sections("\n".join(lines))
    messages = paginate(blocks, verdict)
    return Rendered(messages=messages, attachment=render.report_text(r) if cut else None)


def cms_summary(r: StatusReport) -> str:
    cms = r.cms
    assert cms is not None
    active = ", ".join(f"`{esc(s.pool_fqdn)}`" for s in cms.services if s.active) or "none"
    standby = ", ".join(f"`{esc(s.pool_fqdn)}`" for s in cms.services if s.active is False) or "none"
    unknown = [f"`{esc(s.pool_fqdn)}`" for s in cms.services if s.active is None]  # Lync Server 2010 has no Active
    known = any(s.active is not None for s in cms.services)
    pools = (f"*CMS pool* {', '.join(unknown)} (active: not reported by this version)" if unknown and not known
             else f"*Active pool* {active} · *backup* {standby}"
             + (f" · *active not reported* {', '.join(unknown)}" if unknown else ""))
    return (f"*CMS master* `{esc(cms.store.active_master_fqdn or '(none)')}` · *file transfer agents* "
            f"{', '.join(f'`{esc(f)}`' for f in cms.store.active_file_transfer_agents) or '(none)'}\n"
            f"{pools} · read on `{esc(r.cms_source or '?')}` at {render.when(cms.collected_at)}")


def replica_table(r: StatusReport) -> tuple[str, bool]:
    """The replicas as a code block; only those not up to date when there are many."""
    assert r.cms is not None
    scope = set(r.servers)
    rows = [x for x in r.cms.replicas if x.fqdn in scope]
    current = sum(x.up_to_date for x in rows)
    shown = rows if len(rows) <= MAX_TABLE_ROWS else [x for x in rows if not x.up_to_date][:MAX_TABLE_ROWS]
    cut = len(shown) < len(rows)
    width = max([len(x.fqdn) for x in shown] + [7])
    lines = [f"{'Replica':<{width}}  UpToDate  Last status report"]
    for x in sorted(shown, key=lambda x: (x.up_to_date, x.fqdn)):
        lines.append(f"{x.fqdn:<{width}}  {str(x.up_to_date):<8}  "
                     f"{render.when(x.last_status_report, r.cms.collected_at)}")
    head = f"*Replicas:* {current}/{len(rows)} up to date"
    if cut:
        head += f" (showing the {len(shown)} not up to date; the full table is in the attached report)"
    return head + "\n```" + esc("\n".join(lines)) + "```", cut


def finding_blocks(f: Finding, operator_buttons: bool) -> list[Block]:
    lines = [f"{ICON[f.severity]} *{esc(f.subject)}*: {esc(f.summary)}  `{f.code.value}`"]
    for ev in f.evidence:
        where = f" _({esc(ev.source)}{', ' + render.when(ev.at) if ev.at else ''})_" if ev.source else ""
        lines.append(f"• {esc(ev.text)}{where}")
    for u in f.unchecked:
        lines.append(f"• _not checked:_ {esc(u)}")
    if f.fix:
        lines.append("*Fix*")
        lines += [f"{i}. {esc(step)}" for i, step in enumerate(f.fix, 1)]
    blocks: list[Block] = list(sections("\n".join(lines)))
    if operator_buttons and f.actions:
        blocks.append(ActionsBlock(elements=[action_button(a.kind, a.target, a.label) for a in f.actions[:5]]))
    return blocks


def action_button(kind: str, target: str, label: str) -> ButtonElement:
    return ButtonElement(
        text=PlainTextObject(text=label[:75]),
        action_id=f"{ACTION_PREFIX}{kind}",
        value=json.dumps({"a": kind, "t": target}),
        style="primary",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Run this remediation?"),
            text=MarkdownTextObject(text=_short(f"`{esc(describe(kind, target))}`. It runs as a job, reports in this "
                                                "thread and is written to the audit log.")),
            confirm=PlainTextObject(text="Run it"),
            deny=PlainTextObject(text="Cancel"),
        ),
    )


def action_result(action: ActionOutcome, r: StatusReport | None, findings: list[Finding] | None = None) -> Rendered:
    head = (f"{':white_check_mark:' if action.ok else ':x:'} *{esc(action.kind)}* on "
            f"`{esc(action.target)}`: {esc(action.text)}")
    if action.changes:
        head += "\n*Changes:*\n" + "\n".join(f"• {esc(c)}" for c in action.changes)
    if r is None:
        return Rendered(messages=paginate(list(sections(head)) + finding_list(findings or []), action.text))
    rendered = report(r, heading="Re-check after the action")
    first = rendered.messages[0]
    first.blocks = list(sections(head)) + first.blocks
    rendered.messages = paginate([b for m in rendered.messages for b in m.blocks], first.text)
    return rendered


# -- explain and help -------------------------------------------------------------------


def explanation(e: Explanation) -> Message:
    return Message(text=e.summary, blocks=sections(esc(render.explanation_text(e))))


def help_message(lines: list[tuple[str, str, str]]) -> Message:
    text = "*cms-chatops* checks and repairs Central Management Store replication.\n"
    text += "\n".join(f"• `{esc(u)}`: {esc(d)}. Example: `{esc(ex)}`" for u, d, ex in lines)
    return Message(text="cms-chatops commands", blocks=sections(text))


# -- approval cards --------------------------------------------------------------------------

VERDICT_ICON = {Verdict.GO: ":large_green_circle:", Verdict.WARN: ":large_yellow_circle:",
                Verdict.BLOCK: ":red_circle:"}
APPROVE_ACTION, DENY_ACTION = "approval-approve", "approval-deny"
CLEAR_UNKNOWN_ACTION = "cms-clear-unknown"


def clear_button(marker_id: str) -> ButtonElement:
    """Approvers only, never the requester of the change whose outcome is unknown (bot/listeners/unknown.py)."""
    return ButtonElement(
        text=PlainTextObject(text="Checked: clear the unknown outcome"), action_id=CLEAR_UNKNOWN_ACTION,
        value=marker_id, style="danger",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Clear the unknown outcome?"),
            text=MarkdownTextObject(text=_short(
                "Only once someone has checked the CMS (/cms-status, ActiveMasterFqdn, which pool is Active). "
                "Clearing it lets CMS changes and remediations start again; it is written to the audit log.")),
            confirm=PlainTextObject(text="Checked: clear it"), deny=PlainTextObject(text="Cancel")),
    )


def card(a, status_line: str | None = None) -> Message:
    """The approval card for a failover or recovery (`a` is a hub.approvals.Approval)."""
    from datetime import UTC, datetime

    plan = a.plan
    title = "CMS failover" if a.kind == "failover" else "CMS recovery runbook"
    expires = datetime.fromtimestamp(a.expires, tz=UTC).strftime("%H:%M UTC")
    lines = [f":arrows_counterclockwise: *{title}* requested by <@{a.requester}> · card expires {expires}"]
    if a.kind == "failover":
        lines.append(f"*Plan:* {esc(str(plan.get('mode')))} failover from `{esc(str(plan.get('source')))}` to "
                     f"`{esc(str(plan.get('target')))}`, run on `{esc(str(plan.get('run_on')))}`:\n"
                     f"`{esc(str(plan.get('cmdlet')))}`")
    elif plan.get("steps"):
        lines.append(f"*Plan:* restore the CMS in `{esc(str(plan.get('target')))}`, in this order:")
        lines += [f"{i}. `{esc(s['detail'])}` on `{esc(s['server'])}`" for i, s in enumerate(plan["steps"], 1)]
    else:
        lines.append("*Plan:* none: the preflight below says why")
    lines.append("*Preflight*")
    lines += [f"{VERDICT_ICON.get(c['verdict'], '')} *{c['verdict']}* {esc(c['name'])}: {esc(c['reason'])}"
              for c in a.checks]
    if status_line is None:
        status_line = approval_status(a)
    lines.append(f"*Status:* {status_line}")
    body: list[Block] = list(sections("\n".join(lines)))
    unknown = [c["ref"] for c in a.checks if c.get("name") == UNKNOWN_CHECK and c.get("ref")]
    if unknown and a.status is ApprovalStatus.blocked:  # the card that is blocked by it offers to clear it
        body.append(ActionsBlock(elements=[clear_button(ref) for ref in unknown[:5]]))
    if a.status is ApprovalStatus.pending:
        body.append(ActionsBlock(elements=[
            ButtonElement(text=PlainTextObject(text="Approve"), action_id=APPROVE_ACTION, value=a.id, style="primary",
                          confirm=ConfirmObject(
                              title=PlainTextObject(text=f"Approve this {a.kind}?"),
                              text=MarkdownTextObject(text=_short(f"This starts: {esc(describe_change(plan))}")),
                              confirm=PlainTextObject(text="Approve"), deny=PlainTextObject(text="Cancel"))),
            ButtonElement(text=PlainTextObject(text="Deny"), action_id=DENY_ACTION, value=a.id, style="danger"),
        ]))
    return Message(text=f"{title}: {status_line}", blocks=body)


def approval_status(a) -> str:
    if a.status is ApprovalStatus.blocked:
        return ":no_entry: preflight says BLOCK: approval is disabled. Fix the blocking checks and request again."
    if a.status is ApprovalStatus.pending:
        have = (f" ({len(a.approvers)} of {a.needed}: {', '.join(f'<@{u}>' for u in a.approvers)})"
                if a.approvers else "")
        return (f"waiting for {a.needed} approval{'s' if a.needed > 1 else ''} "
                f"from an approver other than the requester{have}")
    if a.status in (ApprovalStatus.approved, ApprovalStatus.consumed):
        return f":white_check_mark: approved by {', '.join(f'<@{u}>' for u in a.approvers)}: executing (see the thread)"
    if a.status is ApprovalStatus.denied:
        return f":x: denied by <@{a.decided_by}>; nothing was changed"
    if a.status is ApprovalStatus.expired:
        return ":hourglass: expired without enough approvals; nothing was changed"
    return esc(a.status.value)


def describe_change(plan: dict) -> str:
    if plan.get("action") == "failover":
        return f"{plan.get('cmdlet')} on {plan.get('run_on')}"
    return f"{len(plan.get('steps', []))} recovery steps in {plan.get('target')}"


def finding_list(findings: list[Finding]) -> list[Block]:
    out: list[Block] = []
    for f in findings:
        out += finding_blocks(f, operator_buttons=False)
    return out
