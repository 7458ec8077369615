"""Pure rendering to Slack Block Kit, through slack_sdk.models (which validates).

Every message stays within Slack's limits however large the deployment: at
most 50 blocks a message and 3000 characters a section. A long report is
split across messages, the findings, host errors and notes past the first few
are summarised with a count, and a report never takes more than MAX_MESSAGES
messages: the full text goes into a file in the thread whenever anything was cut.

Every text is made safe for the field it goes in: mrkdwn (sections, context, the
notification `text` of chat.postMessage / chat.update) is escaped with `esc` and
marked verbatim, so that neither a server's nor a user's text can mention, link or
be auto-linked; plain_text fields (headers, buttons, dialog titles) go through
`plain_text`, which keeps them printable and within their length limits.
"""

from __future__ import annotations

import json
import re
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
from cms.doctor import CheckStatus, Checkup, DoctorReport
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
MAX_MESSAGES = 3  # a report's messages in the thread; anything past them is in the attached report
MAX_ERRORS_SHOWN = 20  # host errors listed; the rest are counted
MAX_NOTES_SHOWN = 10
MAX_NAMES_SHOWN = 10  # File Transfer Agents, CMS pools listed in the summary
MAX_EVIDENCE_SHOWN = 10  # evidence lines of one finding
MAX_FINDING_TEXT = 2500  # characters of one finding's text (its evidence, fix...) in the thread
MAX_NOTIFICATION = 3000  # characters of a message's notification text
ACTION_PREFIX = "remediate-"
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,20}$")

ICON = {Severity.critical: ":rotating_light:", Severity.error: ":red_circle:", Severity.warning: ":warning:",
        Severity.pending: ":hourglass_flowing_sand:", Severity.info: ":information_source:"}


CONFIRM_MAX = 300  # Slack's limit for a confirmation dialog's text


def _short(text: str) -> str:
    return text if len(text) <= CONFIRM_MAX else text[:CONFIRM_MAX - 1] + "…"


def esc(text: str) -> str:
    """Text from servers or users, made inert in mrkdwn (no mentions, no links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """At most `limit` characters of `text`, saying so when it was cut (before escaping it)."""
    return text if len(text) <= limit else text[:limit] + "… (truncated)"


def plain_text(text: str, limit: int) -> PlainTextObject:
    """A plain_text object (Slack shows it as it is, with no markup to escape): printable
    characters only, at most `limit` of them."""
    text = "".join(c if c.isprintable() else " " for c in text)
    return PlainTextObject(text=text if len(text) <= limit else text[:limit - 1] + "…")


def md(text: str) -> MarkdownTextObject:
    """A mrkdwn text object whose text is already escaped where it must be: verbatim, so Slack does not
    turn bare URLs, channel names or words like @channel in it into links or mentions."""
    return MarkdownTextObject(text=text, verbatim=True)


def user_mention(user: str | None) -> str:
    """A mention of a Slack user id (<@U...>); "someone" for anything that is not one."""
    return f"<@{user}>" if user and _USER_ID.match(user) else "someone"


@dataclass
class Message:
    text: str  # the notification / fallback text
    blocks: list[Block] = field(default_factory=list)

    def payload(self) -> dict:
        # Slack reads `text` as mrkdwn too (notifications, fallbacks): escaped like every block,
        # so a server-supplied "<!channel>" or "<https://...|...>" stays inert text
        text = self.text if len(self.text) <= MAX_NOTIFICATION else self.text[:MAX_NOTIFICATION - 1] + "…"
        return {"text": esc(text), "blocks": [b.to_dict() for b in self.blocks]}


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
    return [SectionBlock(text=md(c)) for c in out]


def paginate(blocks: list[Block], text: str) -> list[Message]:
    pages = [blocks[i:i + MAX_BLOCKS] for i in range(0, len(blocks), MAX_BLOCKS)] or [[]]
    return [Message(text=text if i == 0 else f"{text} (part {i + 1} of {len(pages)})", blocks=page)
            for i, page in enumerate(pages)]


def bounded(blocks: list[Block], text: str, max_messages: int = MAX_MESSAGES) -> tuple[list[Message], bool]:
    """`paginate`, in at most `max_messages` messages: past them the blocks are cut, the last says how
    many and points to the attached report. True when something was cut."""
    room = MAX_BLOCKS * max_messages
    if len(blocks) <= room:
        return paginate(blocks, text), False
    kept = blocks[:room - 1]
    kept.append(SectionBlock(text=md(f"…{len(blocks) - len(kept)} more parts of this report did not fit in "
                                     f"{max_messages} messages: the whole report is in the attached file.")))
    return paginate(kept, text), True


def _capped(lines: list[str], limit: int, what: str) -> tuple[list[str], bool]:
    """The first `limit` lines, and one that counts the rest; True when some were left out."""
    if len(lines) <= limit:
        return lines, False
    return lines[:limit] + [f"…and {len(lines) - limit} more {what}: all of them are in the attached report."], True


# -- the thread ---------------------------------------------------------------------


def parent(command: str, user: str, target: str | None) -> Message:
    what = f"`{esc(command)}{' ' + esc(target) if target else ''}`"
    text = f":mag: {what} requested by {user_mention(user)}: checking..."
    return Message(text=f"{command} requested: checking", blocks=[SectionBlock(text=md(text))])


def parent_verdict(command: str, user: str, target: str | None, verdict: str, ok: bool) -> Message:
    icon = ":white_check_mark:" if ok else ":x:"
    what = f"`{esc(command)}{' ' + esc(target) if target else ''}`"
    return Message(text=verdict, blocks=[
        SectionBlock(text=md(f"{icon} *{esc(clip(verdict, MAX_SECTION - 100))}*")),
        ContextBlock(elements=[md(f"{what} requested by {user_mention(user)} · details in the thread")]),
    ])


def progress(text: str, done: bool = False) -> Message:
    icon = ":heavy_check_mark:" if done else ":hourglass_flowing_sand:"
    return Message(text=text, blocks=[ContextBlock(elements=[md(f"{icon} {esc(clip(text, 2900))}")])])


def note(text: str, icon: str = ":information_source:", mention: str | None = None) -> Message:
    who = f"{user_mention(mention)} " if mention else ""
    return Message(text=text, blocks=sections(f"{icon} {who}{esc(clip(text, 2 * MAX_SECTION))}"))


def plain(text: str) -> Message:
    """A fallback when Slack rejects blocks: the text in code blocks."""
    chunks = [text[i:i + MAX_SECTION - 10] for i in range(0, len(text), MAX_SECTION - 10)] or [""]
    return Message(text=text[:300], blocks=[SectionBlock(text=md(f"```{esc(c)}```"))
                                            for c in chunks[:MAX_BLOCKS]])


def failed(reason: str, unknown: str | None = None) -> Message:
    """A failure; one that left an unknown outcome carries the button that clears it."""
    body: list[Block] = list(sections(f":warning: *The command failed.* {esc(clip(reason, 2 * MAX_SECTION))}"))
    if unknown:
        body.append(ActionsBlock(elements=[clear_button(unknown)]))
    return Message(text=f"Failed: {reason}", blocks=body)


# -- the result ----------------------------------------------------------------------


def report(r: StatusReport, *, operator_buttons: bool = True, heading: str | None = None) -> Rendered:
    verdict = render.verdict(r)
    blocks: list[Block] = [HeaderBlock(text=plain_text(heading or "CMS status", 150))]
    blocks += sections(f"*{esc(verdict)}*")
    cut = False
    if r.notes:
        lines, cut = _capped([f"• {esc(clip(n, 500))}" for n in r.notes], MAX_NOTES_SHOWN, "notes")
        blocks += sections("\n".join([f":warning: *Notes* ({len(r.notes)})", *lines]))
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
            found, finding_cut = _finding_blocks(f, operator_buttons)
            blocks += found
            cut |= finding_cut
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
        lines, errors_cut = _capped([f"• `{esc(e.server)}`: {render.HOST_ERROR_TEXT[e.kind.value]}"
                                     f"{f' [{esc(e.probe)}]' if e.probe else ''}: {esc(clip(e.reason, 500))}"
                                     for e in r.host_errors], MAX_ERRORS_SHOWN, "servers that could not be checked")
        cut |= errors_cut or any(len(e.reason) > 500 for e in r.host_errors)
        blocks += sections("\n".join([f"*Could not check* ({len(r.host_errors)})", *lines]))
    messages, pages_cut = bounded(blocks, verdict)
    return Rendered(messages=messages, attachment=render.report_text(r) if cut or pages_cut else None)


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{esc(n)}`" for n in names[:MAX_NAMES_SHOWN])
    return shown + (f" and {len(names) - MAX_NAMES_SHOWN} more" if len(names) > MAX_NAMES_SHOWN else "")


def cms_summary(r: StatusReport) -> str:
    cms = r.cms
    assert cms is not None
    active = _names([s.pool_fqdn for s in cms.services if s.active]) or "none"
    standby = _names([s.pool_fqdn for s in cms.services if s.active is False]) or "none"
    unknown = _names([s.pool_fqdn for s in cms.services if s.active is None])  # Lync Server 2010 has no Active
    known = any(s.active is not None for s in cms.services)
    pools = (f"*CMS pool* {unknown} (active: not reported by this version)" if unknown and not known
             else f"*Active pool* {active} · *backup* {standby}"
             + (f" · *active not reported* {unknown}" if unknown else ""))
    return (f"*CMS master* `{esc(cms.store.active_master_fqdn or '(none)')}` · *file transfer agents* "
            f"{_names(cms.store.active_file_transfer_agents) or '(none)'}\n"
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
    return _finding_blocks(f, operator_buttons)[0]


def _finding_blocks(f: Finding, operator_buttons: bool) -> tuple[list[Block], bool]:
    """A finding's blocks, its text within MAX_FINDING_TEXT; True when some of it was cut."""
    lines = [f"{ICON[f.severity]} *{esc(clip(f.subject, 300))}*: {esc(clip(f.summary, 1000))}  `{f.code.value}`"]
    evidence = []
    for ev in f.evidence:
        where = f" _({esc(clip(ev.source, 200))}{', ' + render.when(ev.at) if ev.at else ''})_" if ev.source else ""
        evidence.append(f"• {esc(clip(ev.text, 1000))}{where}")
    shown, cut = _capped(evidence, MAX_EVIDENCE_SHOWN, "pieces of evidence")
    lines += shown
    for u in f.unchecked[:MAX_EVIDENCE_SHOWN]:
        lines.append(f"• _not checked:_ {esc(clip(u, 500))}")
    if f.fix:
        lines.append("*Fix*")
        lines += [f"{i}. {esc(clip(step, 1000))}" for i, step in enumerate(f.fix, 1)]
    text = "\n".join(lines)
    cut |= len(f.unchecked) > MAX_EVIDENCE_SHOWN or "… (truncated)" in text
    if len(text) > MAX_FINDING_TEXT:  # cut at a line end where there is one
        end = text.rfind("\n", 0, MAX_FINDING_TEXT)
        text = text[:end if end > 0 else MAX_FINDING_TEXT] + "\n…(truncated: the rest is in the attached report)"
        cut = True
    blocks: list[Block] = list(sections(text))
    if operator_buttons and f.actions:
        blocks.append(ActionsBlock(elements=[action_button(a.kind, a.target, a.label) for a in f.actions[:5]]))
    return blocks, cut


def action_button(kind: str, target: str, label: str) -> ButtonElement:
    return ButtonElement(
        text=plain_text(label, 75),
        action_id=f"{ACTION_PREFIX}{kind}",
        value=json.dumps({"a": kind, "t": target}),
        style="primary",
        confirm=ConfirmObject(
            title=PlainTextObject(text="Run this remediation?"),
            text=md(_short(f"`{esc(describe(kind, target))}`. It runs as a job, reports in this "
                                                "thread and is written to the audit log.")),
            confirm=PlainTextObject(text="Run it"),
            deny=PlainTextObject(text="Cancel"),
        ),
    )


def action_result(action: ActionOutcome, r: StatusReport | None, findings: list[Finding] | None = None) -> Rendered:
    head = (f"{':white_check_mark:' if action.ok else ':x:'} *{esc(clip(action.kind, 100))}* on "
            f"`{esc(clip(action.target, 300))}`: {esc(clip(action.text, 2000))}")
    changes, cut = _capped([f"• {esc(clip(c, 300))}" for c in action.changes], MAX_ERRORS_SHOWN, "changes")
    if changes:
        head += "\n*Changes:*\n" + "\n".join(changes)
    cut |= len(action.text) > 2000
    if r is None:
        messages, pages_cut = bounded(list(sections(head)) + finding_list(findings or []), action.text)
        full = "\n".join([action.text, *action.changes, *(line for f in findings or [] for line in
                                                           render.finding_text(f))])
        return Rendered(messages=messages, attachment=full if cut or pages_cut else None)
    rendered = report(r, heading="Re-check after the action")
    blocks = list(sections(head)) + [b for m in rendered.messages for b in m.blocks]
    messages, pages_cut = bounded(blocks, rendered.messages[0].text)
    full = "\n".join([action.text, *action.changes, "", render.report_text(r)])
    return Rendered(messages=messages, attachment=full if cut or pages_cut or rendered.attachment else None)


# -- the doctor (/cms-doctor) -----------------------------------------------------------

DOCTOR_ROWS_PER_MESSAGE = 20  # servers not ready listed in one message of the thread
DOCTOR_MAX_MESSAGES = 10  # messages of servers not ready; past them a count, and the whole table in the file
DOCTOR_WARNINGS_SHOWN = 20  # ready servers with a warning, one line each; the rest counted
DOCTOR_READY_LISTED = 40  # names of the ready servers listed; the rest counted
DOCTOR_DETAIL = 700  # characters of a check's detail, and of its fix, in the thread


def doctor_row(s: Checkup) -> str:
    """One server's line (mrkdwn): its first failing check (else its first warning) and the fix."""
    where = f"`{esc(s.server)}` ({esc(s.role)}, {esc(s.pool)})"
    head = s.headline
    if head is None:
        return f":white_check_mark: {where}: every check passed"
    icon = ":x:" if head.status is CheckStatus.fail else ":warning:"
    line = f"{icon} {where} · *{esc(head.name)}*: {esc(clip(head.detail, DOCTOR_DETAIL))}"
    if head.fix:
        line += f"\n        *Fix:* {esc(clip(head.fix, DOCTOR_DETAIL))}"
    return line


def doctor_report(r: DoctorReport) -> Rendered:
    """The doctor's thread: the verdict, then one line per server not ready (its first failing check and the
    fix), DOCTOR_ROWS_PER_MESSAGE to a message; the ready servers summarised (those with a warning one line
    each, the others by name); the notes. Whatever is cut is in the attached table."""
    verdict = render.doctor_verdict(r)
    not_ready = [s for s in r.servers if not s.ready]
    warned = [s for s in r.servers if s.ready and s.headline is not None]
    clean = [s for s in r.servers if s.ready and s.headline is None]
    rows = [doctor_row(s) for s in not_ready]
    cut = any(len(c.detail) > DOCTOR_DETAIL or len(c.fix or "") > DOCTOR_DETAIL
              for s in not_ready + warned if (c := s.headline) is not None)
    pages = [rows[i:i + DOCTOR_ROWS_PER_MESSAGE] for i in range(0, len(rows), DOCTOR_ROWS_PER_MESSAGE)]
    shown = pages[:DOCTOR_MAX_MESSAGES]
    first: list[Block] = [HeaderBlock(text=plain_text("cmsbot doctor: is every server ready?", 150)),
                          *sections(f"*{esc(verdict)}*")]
    if rows:
        first += sections(f"*Not ready* ({len(rows)}): the first failing check of each server, and its fix")
    bodies: list[list[Block]] = [first] if not shown else []
    for i, page in enumerate(shown):
        body = first if i == 0 else list(sections(
            f"*Not ready, continued* (servers {i * DOCTOR_ROWS_PER_MESSAGE + 1}–"
            f"{i * DOCTOR_ROWS_PER_MESSAGE + len(page)} of {len(rows)})"))
        body += sections("\n".join(page))
        bodies.append(body)
    tail: list[Block] = []
    left = len(rows) - sum(len(p) for p in shown)
    if left:
        cut = True
        tail += sections(f"…and {left} more servers not ready: all of them are in the attached report.")
    if warned:
        lines, warned_cut = _capped([doctor_row(s) for s in warned], DOCTOR_WARNINGS_SHOWN, "servers with a warning")
        cut |= warned_cut
        tail += sections("\n".join([f"*Ready, with a warning* ({len(warned)})", *lines]))
    if clean:
        names = ", ".join(f"`{esc(s.server)}`" for s in clean[:DOCTOR_READY_LISTED])
        more = len(clean) - DOCTOR_READY_LISTED
        cut |= more > 0
        tail += sections(f":white_check_mark: *Ready* ({len(clean)}): {names}"
                         + (f" and {more} more (all of them are in the attached report)" if more > 0 else ""))
    if r.notes:
        lines, notes_cut = _capped([f"• {esc(clip(n, 500))}" for n in r.notes], MAX_NOTES_SHOWN, "notes")
        cut |= notes_cut or any(len(n) > 500 for n in r.notes)
        tail += sections("\n".join([f"*Notes* ({len(r.notes)})", *lines]))
    if rows:
        tail.append(ContextBlock(elements=[md("Fix the first failing check of each server and run `/cms-doctor` "
                                              "again: the next check may fail once this one passes.")]))
    bodies[-1] = bodies[-1] + tail
    messages: list[Message] = []
    for body in bodies:  # a message past 50 blocks (it cannot happen with these limits) is split, not refused
        messages += paginate(body, verdict)
    messages = [Message(text=verdict if i == 0 else f"{verdict} (part {i + 1} of {len(messages)})",
                        blocks=m.blocks) for i, m in enumerate(messages)]
    return Rendered(messages=messages, attachment=render.doctor_text(r) if cut else None)


# -- explain and help -------------------------------------------------------------------


def explanation(e: Explanation) -> Message:
    return Message(text=e.summary, blocks=sections(esc(render.explanation_text(e))))


OPEN_CHANNELS = ("This bot answers in any channel it is invited to: anyone there can read server names, addresses, "
                 "certificates and ACLs in its reports. To restrict it, the team running cms-chatops sets "
                 "`CMSBOT_SLACK_CHANNELS` to the allowed channel IDs (comma-separated, e.g. `C0123ABCD,C0456EFGH`).")


def help_message(lines: list[tuple[str, str, str]], open_channels: bool = False) -> Message:
    """`open_channels`: no channel list is configured; the help says how to restrict the bot."""
    text = "*cms-chatops* checks and repairs Central Management Store replication.\n"
    text += "\n".join(f"• `{esc(u)}`: {esc(d)}. Example: `{esc(ex)}`" for u, d, ex in lines)
    if open_channels:
        text += f"\n:warning: {OPEN_CHANNELS}"
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
            text=md(_short(
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
    lines = [f":arrows_counterclockwise: *{title}* requested by {user_mention(a.requester)} · card expires {expires}"]
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
                              title=plain_text(f"Approve this {a.kind}?", 24),
                              text=md(_short(f"This starts: {esc(describe_change(plan))}")),
                              confirm=PlainTextObject(text="Approve"), deny=PlainTextObject(text="Cancel"))),
            ButtonElement(text=PlainTextObject(text="Deny"), action_id=DENY_ACTION, value=a.id, style="danger"),
        ]))
    return Message(text=f"{title}: {status_line}", blocks=body)


def approval_status(a) -> str:
    if a.status is ApprovalStatus.blocked:
        return ":no_entry: preflight says BLOCK: approval is disabled. Fix the blocking checks and request again."
    if a.status is ApprovalStatus.pending:
        have = (f" ({len(a.approvers)} of {a.needed}: {', '.join(user_mention(u) for u in a.approvers)})"
                if a.approvers else "")
        return (f"waiting for {a.needed} approval{'s' if a.needed > 1 else ''} "
                f"from an approver other than the requester{have}")
    if a.status in (ApprovalStatus.approved, ApprovalStatus.consumed):
        return (f":white_check_mark: approved by {', '.join(user_mention(u) for u in a.approvers)}: executing "
                "(see the thread)")
    if a.status is ApprovalStatus.denied:
        return f":x: denied by {user_mention(a.decided_by)}; nothing was changed"
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
