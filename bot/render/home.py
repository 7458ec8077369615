"""The bot's Home tab and /cms-history's answer, rendered (pure, Block Kit through slack_sdk.models).

The Home (`home_view`): for the person looking, the last verdict of every pool with its time and
thread, the open incidents with their threads, the checks and changes running or queued now, the
approval cards waiting (with what the viewer may do about each), and the next scheduled runs. Every
group says something useful when it is empty. However large the deployment, the view stays within
Slack's 100 blocks a view and 3000 characters a section: each group shows its first few and counts
the rest.

/cms-history (`history_message`): one line per entry, newest first: when, who, what, the outcome, the
scope, and a link to the thread where there is one.

Every text from a server, a user or Redis is escaped (`esc`) and every mrkdwn object is verbatim, as in
bot/render/blocks.py; links are only the ones the bot built (checked by `_link`).
"""

from __future__ import annotations

import re
from datetime import datetime

from slack_sdk.models.blocks import Block, ContextBlock, DividerBlock, HeaderBlock, SectionBlock
from slack_sdk.models.views import View

from bot.render.blocks import MAX_SECTION, Message, clip, esc, md, plain_text, user_mention
from cms.verdicts import Outcome
from hub.home import Activity, HistoryEntry, Home, PendingApproval, PoolRow
from hub.incidents import WATCH_USER, OpenIncident
from hub.schedule import ScheduledRun

MAX_VIEW_BLOCKS = 100  # Slack's limit for a Home view
MAX_POOLS = 30
MAX_INCIDENTS = 10
MAX_ACTIVITY = 10
MAX_APPROVALS = 8
MAX_RUNS = 8
MAX_HISTORY_BLOCKS = 50  # a message's limit
_URL = re.compile(r"^(https?|slack)://[^\s<>|]+$")

OUTCOME_ICON = {Outcome.ok: ":large_green_circle:", Outcome.problems: ":red_circle:",
                Outcome.incomplete: ":large_yellow_circle:", Outcome.failed: ":red_circle:"}
SEVERITY_ICON = {"critical": ":rotating_light:", "error": ":red_circle:", "warning": ":warning:",
                 "pending": ":hourglass_flowing_sand:", "info": ":information_source:"}
COMMANDS = {"/cms-status": "status check", "/cms-doctor": "doctor", "/cms-replicate": "forced replication",
            "/cms-failover": "failover preflight", "/cms-recover": "recovery preflight", "cms-execute": "CMS change",
            "remediate": "remediation"}
WHAT = {"status": "check", "force-replication": "forced replication", "start-replica": "replica started",
        "reseed": "replica re-seeded", "failover": "CMS failover", "preflight:failover": "failover preflight",
        "preflight:recover": "recovery preflight", "execute": "CMS change", "approve": "approval",
        "deny": "denial", "approval": "approval card", "incident": "incident", "clear-unknown": "unknown outcome",
        "convergence": "convergence", "lock": "CMS lock", "recover-status": "recovery check"}
WHAT_ICON = {"status": ":mag:", "incident": ":rotating_light:", "approve": ":ballot_box_with_check:",
             "deny": ":x:", "approval": ":ballot_box_with_check:"}


def _link(url: str | None, label: str) -> str:
    """A mrkdwn link to one of the bot's own URLs (never text from elsewhere); "" without one."""
    if not url or not _URL.match(url):
        return ""
    return f"<{url}|{label}>"


def _ago(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{max(s, 0)} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def _at(moment: datetime | None, now: datetime) -> str:
    """"14:03 UTC (5 min ago)", or with the date when it is not today's; "in 5 min" for the future."""
    if moment is None:
        return "unknown"
    day = "" if moment.date() == now.date() else moment.strftime("%Y-%m-%d ")
    delta = (now - moment).total_seconds()
    rel = f"{_ago(delta)} ago" if delta >= 0 else f"in {_ago(-delta)}"
    return f"{day}{moment:%H:%M} UTC ({rel})"


def _who(user: str | None) -> str:
    if user == WATCH_USER:
        return "the watch"
    return user_mention(user) if user else "cmsbot"


def _scope(target: str | None) -> str:
    return f"`{esc(clip(target, 200))}`" if target else "the whole deployment"


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=md(clip(text, MAX_SECTION - 20)))


def _context(text: str) -> ContextBlock:
    return ContextBlock(elements=[md(clip(text, MAX_SECTION - 20))])


def _group(title: str, rows: list[str], cap: int, empty: str, more: str) -> list[Block]:
    out: list[Block] = [HeaderBlock(text=plain_text(title, 150))]
    if not rows:
        return out + [_section(empty), DividerBlock()]
    out += [_section(r) for r in rows[:cap]]
    if len(rows) > cap:
        out.append(_context(f"…and {len(rows) - cap} more {more}."))
    return out + [DividerBlock()]


# -- the Home ------------------------------------------------------------------------------------


def _pool(row: PoolRow, now: datetime) -> str:
    v = row.verdict
    if v is None:
        return (f":white_circle: *{esc(row.pool)}*: not checked yet. `/cms-status {esc(row.pool)}` checks it.")
    by = "the watch" if v.by is None else _who(v.by)
    thread = _link(row.link, "thread")
    return (f"{OUTCOME_ICON[v.outcome]} *{esc(row.pool)}*: {esc(v.text)}\n"
            f"checked {_at(v.checked_at, now)} by {by}" + (f" · {thread}" if thread else ""))


def _incident(i: OpenIncident, now: datetime) -> str:
    thread = _link(i.link, "thread")
    return (f"{SEVERITY_ICON.get(i.severity, ':warning:')} *{esc(clip(i.subject, 200))}*: {esc(clip(i.summary, 500))}\n"
            f"{esc(i.severity)} · open since {_at(i.opened_at, now)}" + (f" · {thread}" if thread else ""))


def _activity(a: Activity, now: datetime) -> str:
    what = COMMANDS.get(a.command, a.command)
    target = a.args.get("target")
    action = a.args.get("action")
    head = (f"*{esc(what)}*" + (f" `{esc(str(action))}`" if action else "")
            + f" of {_scope(str(target) if target else None)}")
    state = "running" if a.running else "queued"
    thread = _link(a.link, "thread")
    return (f"{':arrows_counterclockwise:' if a.running else ':hourglass_flowing_sand:'} {head}\n"
            f"{state} · asked by {_who(a.user)} {_at(a.since, now)}" + (f" · {thread}" if thread else ""))


def _approval(a: PendingApproval, viewer: str, can_approve: bool, now: datetime) -> str:
    if a.kind == "failover":
        what = (f"*CMS failover* from `{esc(str(a.plan.get('source')))}` to `{esc(str(a.plan.get('target')))}`"
                if a.plan.get("source") else "*CMS failover*")
    else:
        what = "*CMS recovery runbook*" + (f" in `{esc(str(a.plan.get('target')))}`" if a.plan.get("target") else "")
    if a.requester == viewer:
        yours = "your request: another approver has to decide"
    elif viewer in a.approvers:
        yours = "you approved it; it needs more approvals"
    elif can_approve:
        yours = "you can approve or deny it on its card"
    else:
        yours = "an approver has to decide"
    card = _link(a.link, "open the card")
    return (f":ballot_box_with_check: {what} requested by {_who(a.requester)}\n"
            f"{len(a.approvers)} of {a.needed} approvals · expires {_at(a.expires, now)} · {yours}"
            + (f" · {card}" if card else ""))


def _run(r: ScheduledRun, now: datetime) -> str:
    scope = "the whole deployment" if r.scope in ("*", "all") else f"`{esc(r.scope)}`"
    line = f":calendar: {scope}: next {_at(r.next_run, now) if r.next_run else 'never'} · cron `{esc(r.cron)}`"
    if not r.scheduled:
        line += "\n:warning: no `cmsbot watch` is running: nothing will start it"
    return line


def home_view(home: Home, viewer: str, *, can_approve: bool = False) -> View:
    """The Home tab of `viewer` (a Slack user id); `can_approve`: the viewer has the approver role."""
    now = home.at
    blocks: list[Block] = [
        HeaderBlock(text=plain_text("CMS replication", 150)),
        _context(f"For {user_mention(viewer)} · as of {now:%H:%M:%S} UTC · refreshed when you open this tab and "
                 "when a check, change, approval or incident moves"),
    ]
    blocks += _group("Last verdict per pool", [_pool(p, now) for p in home.pools], MAX_POOLS,
                     "No pool in the topology.", "pools")
    incidents = _group("Open incidents", [_incident(i, now) for i in home.incidents], MAX_INCIDENTS,
                       ":white_check_mark: No open incidents.", "open incidents")
    if home.paused:
        incidents.insert(1, _section(f":double_vertical_bar: The watch is paused: {esc(clip(home.paused, 500))}"))
    blocks += incidents
    blocks += _group("Running now", [_activity(a, now) for a in home.activity], MAX_ACTIVITY,
                     "Nothing is running: no check or change is in flight or queued.", "checks and changes")
    blocks += _group("Approvals waiting", [_approval(a, viewer, can_approve, now) for a in home.approvals],
                     MAX_APPROVALS, "No approval card is waiting.", "approval cards")
    blocks += _group("Next scheduled run", [_run(r, now) for r in home.runs], MAX_RUNS,
                     "No scheduled check: set `CMSBOT_WATCH` and run `cmsbot watch` to have the deployment checked "
                     "on a schedule.", "scheduled scopes")
    blocks.append(_context("`/cms-status [pool|server]` checks now · `/cms-history [pool|server]` lists what "
                           "happened · `/cms-help` lists every command"))
    if len(blocks) > MAX_VIEW_BLOCKS:  # the caps keep it far below; never a view Slack refuses
        blocks = blocks[:MAX_VIEW_BLOCKS - 1] + [_context("…more than a Home tab can show.")]
    view = View(type="home", blocks=blocks)
    view.validate_json()
    return view


def closed_home_view(viewer: str) -> View:
    """The Home of someone who may not read the reports: CMSBOT_SLACK_CHANNELS limits them to its channels,
    and the Home (server names, incidents, approval plans) is no channel."""
    view = View(type="home", blocks=[
        HeaderBlock(text=plain_text("CMS replication", 150)),
        _section(f"{user_mention(viewer)}, cms-chatops reports in its own channels. This tab shows the deployment's "
                 "state to cms-chatops operators and approvers only: ask your cms-chatops admin if you should be "
                 "one."),
    ])
    view.validate_json()
    return view


# -- /cms-history --------------------------------------------------------------------------------


def _entry(e: HistoryEntry, now: datetime) -> str:
    icon = WHAT_ICON.get(e.what, ":arrows_counterclockwise:")
    what = WHAT.get(e.what, e.what.replace(":", " "))
    result = f": *{esc(clip(e.result, 200))}*" if e.result else ""
    line = f"{icon} `{_at(e.at, now)}` *{esc(what)}* of {_scope(e.target)} by {_who(e.who)}{result}"
    detail = e.detail or ""
    if detail and len(detail) <= 300 and not detail.lstrip().startswith(("[", "{")):
        line += f"\n{esc(detail)}"
    thread = _link(e.link, "thread")
    return line + (f" · {thread}" if thread else "")


def history_message(entries: list[HistoryEntry], scope: str | None, now: datetime, limit: int) -> Message:
    """/cms-history's answer: `scope` the pool or server asked for (None: the whole deployment)."""
    where = f"`{esc(scope)}`" if scope else "the whole deployment"
    if not entries:
        text = (f"No check, change or incident recorded for {where} yet (the audit keeps them). "
                f"`/cms-status{' ' + esc(scope) if scope else ''}` runs a check.")
        return Message(text=f"History of {scope or 'the whole deployment'}: nothing recorded yet",
                       blocks=[_section(text)])
    head = (f"*History of {where}*: the last {len(entries)} checks, changes, decisions and incidents, newest first"
            + (f" (at most {limit})" if len(entries) >= limit else ""))
    blocks: list[Block] = [_section(head)]
    blocks += [_section(_entry(e, now)) for e in entries[:MAX_HISTORY_BLOCKS - 2]]
    blocks.append(_context("All of it, with every field: `cmsbot audit --since 24h` on the bot's host."))
    return Message(text=f"History of {scope or 'the whole deployment'}: {len(entries)} entries", blocks=blocks)
