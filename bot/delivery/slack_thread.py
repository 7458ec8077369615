"""Slack delivery of a request's events: its thread, exactly once per call.

The parent message is posted when the request's `accepted` event arrives
(after the slash command was acked), progress is one message edited in place,
the result goes into the thread and the verdict back into the parent. Each
Slack call is recorded under (request, seq, step) before the event is
acknowledged, so a restart or a redelivery never posts twice.

When Slack refuses the parent (a private channel the bot is not in answers
channel_not_found, a public one not_in_channel), the user still gets an
answer: through the command's response_url (stored with the request at ack
time; Slack takes up to 5 posts to it within 30 minutes), what happened and how
to invite the bot, then the verdict once the job ends.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

from bot.render import blocks
from bot.render import text as render
from bot.render import watch as watch_render
from cms.messages import (
    Accepted,
    ApprovalChanged,
    Failed,
    IncidentOpened,
    IncidentResolved,
    IncidentUpdated,
    OncallFailed,
    PreflightReady,
    Progress,
    Result,
    Unreadable,
    WatchResumed,
    WatchSkipped,
)
from hub import approvals, telemetry
from hub.contract import REQUEST_TTL, RESPONSE_URL_TTL, Event, Request, load_request, utcnow
from hub.jobs import INCIDENT_COMMAND, WATCH_NOTICE_COMMAND
from hub.keys import Hub

CHANGE_COMMANDS = {"/cms-failover", "/cms-recover"}
# a check, or a preflight: safe to run again
READ_ONLY_COMMANDS = {"/cms-status", "/cms-doctor", "/cms-failover", "/cms-recover"}

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
NOT_A_MEMBER = {"channel_not_found", "not_in_channel"}  # Slack's answers in a channel the bot is not in


def _transient(e: SlackApiError) -> bool:
    status = e.response.status_code if e.response is not None else 0
    error = (e.response.get("error") if e.response is not None else "") or ""
    return status == 429 or status >= 500 or error in TRANSIENT_ERRORS


def _error(e: SlackApiError) -> str:
    return str((e.response.get("error") if e.response is not None else "") or "unknown")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def _channel(req: Request) -> str:
    assert req.channel is not None  # wants() takes only requests with a channel
    return req.channel


class SlackThreads:
    def __init__(self, hub: Hub, client: WebClient, workers_listening: Callable[[str], int]):
        self.hub, self.conn, self.client = hub, hub.redis, client
        self._workers_listening = workers_listening
        self._bot_name: str | None = None
        self._requests: OrderedDict[str, Request | None] = OrderedDict()
        # each thread's state as this process last knew it: Redis may lose it (a restart without
        # persistence, FLUSHDB) while the request's job runs on and its events still come
        self._threads: OrderedDict[str, dict[str, str]] = OrderedDict()

    # -- reporter hooks ---------------------------------------------------------------
    def wants(self, event: Event) -> bool:
        req = self._request(event.request)
        if req is None and event.terminal:
            log.error("the %s event %s/%s has no request record (expired, or lost by Redis) and this process never "
                      "saw the request: there is no thread to deliver it to", event.kind, event.request, event.seq)
            self.conn.hincrby(self.hub.keys.delivery_counts, "no_request", 1)
        return req is not None and req.origin == "slack" and bool(req.channel)

    def late(self, event: Event, seconds: float) -> bool:
        """Say in the thread that its events came late because Slack failed (once per event);
        False when Slack cannot take the note now either."""
        req = self._request(event.request)
        parent = self._state(req).get("parent") if req is not None else None
        if req is None or not parent:
            return True
        text = f"delivered late: Slack was unavailable for {_duration(seconds)}"
        return self._attempt(req, event, lambda: self._once(req, event, "late", lambda: self._post(
            req, blocks.note(text, ":hourglass_flowing_sand:"), parent)))

    def lost(self, request_id: str) -> bool:
        """Redis lost the request's events (its result will never come): say so in its thread as a
        failure, once; False when Slack cannot take it now."""
        req = self._request(request_id)
        if req is None or not self.wants(Event(request_id, 0, "failed", Failed(reason=""))):
            return True
        if req.command in READ_ONLY_COMMANDS:
            reason = ("Redis lost this request's events before they reached this thread (restarted without "
                      "persistence, flushed or evicted), so its result will not appear. Run it again.")
        else:
            reason = ("Redis lost this request's events before they reached this thread (restarted without "
                      "persistence, flushed or evicted): its outcome is unknown here. Run /cms-status and check "
                      "the servers before running anything again.")
        event = Event(request_id, 0, "failed", Failed(reason=reason))  # seq 0: a step no worker event has
        return self._attempt(req, event, lambda: self._dispatch(req, event))

    def deliver(self, event: Event) -> bool:
        """True: done with this event (delivered, or permanently undeliverable)."""
        req = self._request(event.request)
        assert req is not None
        return self._attempt(req, event, lambda: self._dispatch(req, event))

    def _attempt(self, req: Request, event: Event, call: Callable[[], object]) -> bool:
        try:
            call()
            return True
        except SlackApiError as e:
            if _transient(e):
                log.warning("Slack is busy (%s); will retry event %s/%s", e.response.status_code, req.id, event.seq)
                return False
            log.error("Slack refused event %s/%s (%s): giving up on it", req.id, event.seq, e.response.get("error"))
            telemetry.delivery_failed("refused")
            return True
        except OSError as e:
            log.warning("cannot reach Slack (%s); will retry event %s/%s", type(e).__name__, req.id, event.seq)
            return False

    def _dispatch(self, req: Request, event: Event) -> None:
        if not req.thread and not isinstance(event.message, Accepted) and "unreachable" in self._state(req):
            return self._elsewhere(req, event)  # the channel refused the parent: the user hears through response_url
        match event.message:
            case Accepted() as accepted:
                self._on_accepted(req, event, accepted)
            case Progress(text=text):
                self._on_progress(req, event, text)
            case Result() as result:
                self._on_result(req, event, result)
            case Failed(reason=reason, unknown=unknown):
                self._on_failed(req, event, reason, unknown)
            case PreflightReady(approval=approval_id):
                self._on_preflight(req, event, approval_id)
            case ApprovalChanged():
                self._on_approval(req, event)
            case IncidentOpened() | IncidentUpdated() | IncidentResolved() | WatchSkipped() | WatchResumed() \
                    | OncallFailed():
                self._on_watch(req, event)
            case Unreadable() as unreadable if event.terminal:  # the thread must not wait forever
                log.error("event %s/%s is unreadable: %s", req.id, event.seq, unreadable.error)
                self._on_failed(req, event, unreadable.reason)
            case Unreadable() as unreadable:
                log.warning("skipping event %s/%s: %s", req.id, event.seq, unreadable.error)

    # -- state ------------------------------------------------------------------------------
    def _request(self, request_id: str) -> Request | None:
        if request_id not in self._requests:
            try:
                self._requests[request_id] = load_request(self.hub, request_id)
            except LookupError:
                self._requests[request_id] = None
            while len(self._requests) > 2000:
                self._requests.popitem(last=False)
        return self._requests[request_id]

    def _state_key(self, req: Request) -> str:
        return self.hub.keys.slack_thread(req.id)

    def _state(self, req: Request) -> dict[str, str]:
        # the connection does not decode responses: replies are bytes
        raw = cast(dict[bytes, bytes], self.conn.hgetall(self._state_key(req)))
        state = {k.decode(): v.decode() for k, v in raw.items()}
        known = self._threads.get(req.id)
        if not state and known:  # Redis lost it: put back what this process knows
            log.warning("the Slack thread state of %s was gone from Redis; restored from memory", req.id)
            self._save(req, **known)
            return dict(known)
        if state:
            self._remember(req.id, state)
        return state

    def _save(self, req: Request, **fields: str) -> None:
        key = self._state_key(req)
        with self.conn.pipeline() as pipe:
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # redis-py: Mapping's key type is invariant
            pipe.expire(key, REQUEST_TTL)
            pipe.execute()
        self._remember(req.id, {**self._threads.get(req.id, {}), **fields})

    def _remember(self, request_id: str, state: dict[str, str]) -> None:
        self._threads[request_id] = state
        self._threads.move_to_end(request_id)
        while len(self._threads) > 2000:
            self._threads.popitem(last=False)

    def _once(self, req: Request, event: Event, step: str, call: Callable[[], str]) -> str:
        """Run one Slack call for (event, step) at most once; returns its ts. A permanent
        Slack refusal of this one step is logged and skipped, so the steps after it
        (the verdict above all) still happen; transient errors propagate to be retried."""
        key, field = self.hub.keys.slack_steps(req.id), f"{event.seq}:{step}"
        done = cast(bytes | None, self.conn.hget(key, field))  # the connection does not decode responses
        if done is not None:
            return done.decode()
        try:
            ts = call() or ""
        except SlackApiError as e:
            if _transient(e):
                raise
            log.error("Slack refused step %s of event %s/%s: %s", step, req.id, event.seq,
                      e.response.get("error") if e.response is not None else e)
            telemetry.delivery_failed("refused")
            ts = ""
        with self.conn.pipeline() as pipe:
            pipe.hset(key, field, ts)
            pipe.expire(key, REQUEST_TTL)
            pipe.execute()
        return ts

    def _post(self, req: Request, message: blocks.Message, thread: str | None) -> str:
        kwargs: dict[str, Any] = {"thread_ts": thread} if thread else {}
        return self.client.chat_postMessage(channel=_channel(req), **message.payload(), **kwargs)["ts"]

    def _update(self, req: Request, ts: str, message: blocks.Message) -> str:
        self.client.chat_update(channel=_channel(req), ts=ts, **message.payload())
        return ts

    # -- events ------------------------------------------------------------------------------
    def _on_accepted(self, req: Request, event: Event, accepted: Accepted) -> None:
        state = self._state(req)
        if req.thread:  # started from a button or command inside an existing thread
            if not state:
                owner = cast(bytes | None, self.conn.get(self.hub.keys.slack_parent(req.channel or "", req.thread)))
                self._save(req, parent=req.thread, owner=owner.decode() if owner else "")
            text = accepted.text or f"{req.command} started"
            self._once(req, event, "note", lambda: self._post(
                req, blocks.note(text, ":hammer_and_wrench:", mention=req.user), req.thread))
        elif "parent" not in state:
            target = req.args.get("target")
            refusal: dict[str, str] = {}
            ts = self._once(req, event, "parent", lambda: self._noting_refusal(
                refusal, lambda: self._post(req, blocks.parent(req.command, req.user, target), None)))
            if not ts:
                error = refusal.get("error", "")
                self._save(req, unreachable=error or "refused")
                self._once(req, event, "cannot-post", lambda: self._answer(req, self._cannot_post(req, error)))
                return
            self._save(req, parent=ts, owner=req.id)
            self.conn.set(self.hub.keys.slack_parent(req.channel or "", ts), req.id, ex=REQUEST_TTL)
        else:
            return  # a duplicate delivery of the same command: its thread exists already
        queue = accepted.queue
        if queue and not self._workers_listening(queue):
            parent = self._state(req)["parent"]
            self._once(req, event, "no-worker", lambda: self._post(req, blocks.note(
                "No worker is listening right now, so this waits in the queue until one starts "
                "(ask the team running cms-chatops to check `cmsbot worker`).", ":warning:"), parent))

    def _on_progress(self, req: Request, event: Event, text: str) -> None:
        state = self._state(req)
        message = blocks.progress(text)
        if "progress" in state:
            self._once(req, event, "edit", lambda: self._update(req, state["progress"], message))
        else:
            ts = self._once(req, event, "post", lambda: self._post(req, message, state.get("parent")))
            self._save(req, progress=ts)

    def _on_result(self, req: Request, event: Event, result: Result) -> None:
        state = self._state(req)
        parent = state.get("parent")
        report, action, doctor = result.report, result.action, result.doctor
        if action is not None:
            rendered = blocks.action_result(action, report, result.findings)
        elif doctor is not None:
            rendered = blocks.doctor_report(doctor)
        else:
            assert report is not None  # a result carries a report, an action or both, or the doctor's report
            rendered = blocks.report(report)
        for i, message in enumerate(rendered.messages):
            ts = self._once(req, event, f"message-{i}", functools.partial(self._post, req, message, parent))
            if not ts and i == 0:  # Slack refused the blocks: the same report as plain text
                text = (render.report_text(report) if report is not None
                        else action.text if action is not None
                        else render.doctor_text(doctor) if doctor is not None else "")
                # _once calls it right away, within this iteration
                self._once(req, event, "plain", lambda: self._post(req, blocks.plain(text), parent))  # noqa: B023
        if "progress" in state:
            self._once(req, event, "progress-done", lambda: self._update(
                req, state["progress"], blocks.progress("finished", done=True)))
        owner = self._owner(req)
        if owner.command in CHANGE_COMMANDS and parent:
            ok, done = (action.ok, action.text) if action is not None else (False, "finished")
            line = (":white_check_mark: " if ok else ":x: ") + blocks.esc(done)
            self._once(req, event, "card", lambda: self._update_card(req, parent, f"executed: {line}"))
        elif report is not None and parent:
            verdict = render.verdict(report)
            self._once(req, event, "verdict", lambda: self._update_parent(req, parent, verdict, report.healthy))
        elif doctor is not None and parent:
            verdict = render.doctor_verdict(doctor)
            self._once(req, event, "verdict", lambda: self._update_parent(req, parent, verdict, doctor.ready))
        if attachment := rendered.attachment:
            self._once(req, event, "file", lambda: self._upload(req, attachment, parent, doctor=doctor is not None))

    def _on_failed(self, req: Request, event: Event, reason: str, unknown: str | None = None) -> None:
        state = self._state(req)
        parent = state.get("parent")
        self._once(req, event, "message", lambda: self._post(req, blocks.failed(reason, unknown), parent))
        if parent and self._owner(req).command in CHANGE_COMMANDS:
            self._once(req, event, "card", lambda: self._update_card(req, parent, f":x: {blocks.esc(reason)}"))
        elif parent and state.get("owner") == req.id:
            self._once(req, event, "verdict", lambda: self._update_parent(req, parent, f"FAILED: {reason}", False))

    def _on_preflight(self, req: Request, event: Event, approval_id: str) -> None:
        """The preflight is done: the parent message becomes the approval card."""
        state = self._state(req)
        self._save(req, approval=approval_id)
        if "progress" in state:
            self._once(req, event, "progress-done", lambda: self._update(
                req, state["progress"], blocks.progress("preflight finished", done=True)))
        self._once(req, event, "card", lambda: self._update_card(req, state["parent"]))

    def _on_approval(self, req: Request, event: Event) -> None:
        """A decision or an expiry: the card is edited in place."""
        parent = self._state(req).get("parent")
        if parent:
            self._once(req, event, "card", lambda: self._update_card(req, parent))

    # -- the watch: an incident's parent and thread in the alert channel, the paused-watch notice ----------
    def _on_watch(self, req: Request, event: Event) -> None:
        parent = self._state(req).get("parent")
        match event.message:
            case IncidentOpened() | WatchSkipped() as opened:
                message = (watch_render.incident(opened.incident) if isinstance(opened, IncidentOpened)
                           else watch_render.watch_paused(opened.reason, opened.since))
                ts = self._once(req, event, "parent", lambda: self._post(req, message, None))
                if ts and not parent:
                    self._save(req, parent=ts, owner=req.id)
                    self.conn.set(self.hub.keys.slack_parent(_channel(req), ts), req.id, ex=REQUEST_TTL)
            case IncidentUpdated(incident=incident, before_causes=causes, before_severity=severity):
                update = watch_render.incident_update(incident, causes, severity)
                self._once(req, event, "update", lambda: self._post(req, update, parent))
                if parent:  # the parent shows the diagnosis as it is now
                    self._once(req, event, "parent", lambda: self._update(req, parent, watch_render.incident(incident)))
            case IncidentResolved(incident=incident, resolved_at=at):
                if parent:
                    self._once(req, event, "parent", lambda: self._update(
                        req, parent, watch_render.incident_resolved(incident, at)))
                self._once(req, event, "note", lambda: self._post(req, watch_render.incident_cleared(incident, at),
                                                                  parent))
            case WatchResumed(reason=reason, since=since, until=until, runs=runs):
                resumed = watch_render.watch_resumed(reason, since, until, runs)
                self._once(req, event, "parent", lambda: self._update(req, parent, resumed) if parent
                           else self._post(req, resumed, None))
            case OncallFailed(target=target, action=action, reason=reason):
                self._once(req, event, "note", lambda: self._post(
                    req, watch_render.oncall_failed(target, action, reason), parent))

    def _update_card(self, req: Request, parent: str, status_line: str | None = None) -> str:
        owner = self._owner(req)
        approval_id = self._state(owner).get("approval")
        if not approval_id:
            return ""
        return self._update(req, parent, blocks.card(approvals.load(self.hub, approval_id), status_line))

    def _tell_user(self, req: Request, text: str) -> str:
        return self.client.chat_postEphemeral(channel=_channel(req), user=req.user, text=text).get("message_ts", "")

    # -- a channel that refuses the bot: answers through the command's response_url ---------------------
    @staticmethod
    def _noting_refusal(refusal: dict[str, str], call: Callable[[], str]) -> str:
        """`call`, noting Slack's error code in `refusal` when Slack refuses it for good."""
        try:
            return call()
        except SlackApiError as e:
            if not _transient(e):
                refusal["error"] = _error(e)
            raise

    def _name(self) -> str:
        """The bot's user name, for `/invite @name`."""
        if self._bot_name is None:
            try:
                self._bot_name = str(self.client.auth_test().get("user") or "cmsbot")
            except (SlackApiError, OSError):
                return "cmsbot"
        return self._bot_name

    def _cannot_post(self, req: Request, error: str) -> str:
        """What the user is told when Slack refused the parent message (mrkdwn, escaped)."""
        command = f"`{blocks.esc(req.command)}`"
        later = (f" {command} is still running: I will tell you here how it ended, but its full report needs "
                 "a channel I can post in.")
        if (req.channel or "").startswith("D"):
            return (f"I cannot post in this direct message, so {command} has nowhere to put its report. Run it "
                    f"in a channel I am a member of.{later}")
        if error in NOT_A_MEMBER:
            return (f"I cannot post in this channel (Slack answered `{blocks.esc(error)}`: it is private and I "
                    f"am not a member, or I was removed), so {command} has nowhere to put its report. Invite me "
                    f"with `/invite @{blocks.esc(self._name())}` (or use a channel I am in) and run it again."
                    + later)
        if error == "is_archived":
            return f"This channel is archived, so I cannot post {command}'s report in it. Run it in another channel." \
                + later
        return (f"Slack refused my message in this channel (`{blocks.esc(error or 'unknown error')}`), so "
                f"{command} has nowhere to put its report. Run it in a channel I am a member of." + later)

    def _elsewhere(self, req: Request, event: Event) -> None:
        """An event of a request whose channel refused the bot: the end (or the approval card that cannot
        be shown) goes to the user through response_url; progress goes nowhere."""
        command = f"`{blocks.esc(req.command)}`"
        match event.message:
            case Result(report=report, action=action, doctor=doctor):
                outcome = (render.verdict(report) if report is not None
                           else action.text if action is not None
                           else render.doctor_verdict(doctor) if doctor is not None else "finished")
                text = f"{command} finished: *{blocks.esc(outcome)}*"
            case Failed(reason=reason):
                text = f"{command} failed: {blocks.esc(reason)}"
            case Unreadable() as unreadable if event.terminal:
                text = f"{command} failed: {blocks.esc(unreadable.reason)}"
            case PreflightReady():
                text = (f"The preflight of {command} finished, but I cannot post its approval card in this channel, "
                        f"so nobody can approve it. Invite me with `/invite @{blocks.esc(self._name())}` and request "
                        "it again.")
            case _:
                return
        if not isinstance(event.message, PreflightReady):
            text += (f" The full report needs a channel I can post in: invite me with "
                     f"`/invite @{blocks.esc(self._name())}`, or use a channel I am in.")
        self._once(req, event, "elsewhere", lambda: self._answer(req, text))

    def _answer(self, req: Request, text: str) -> str:
        """Tell the user `text` (mrkdwn, escaped) where only they see it: through the request's response_url
        while Slack still takes it, else as an ephemeral message (which a channel that refused the bot
        refuses too)."""
        url = req.response_url
        if not url:
            return self._tell_user(req, text)
        age = (utcnow() - req.created_at).total_seconds()
        if age >= RESPONSE_URL_TTL:
            log.warning("request %s: its response_url expired %.0f s ago; the user cannot be told: %s", req.id,
                        age - RESPONSE_URL_TTL, text)
            return ""
        response = WebhookClient(url, timeout=10).send(text=text, response_type="ephemeral", replace_original=False)
        if response.status_code == 429 or response.status_code >= 500:
            raise ConnectionError(f"response_url answered HTTP {response.status_code}")  # retried, as Slack down is
        if response.status_code != 200:
            log.error("request %s: Slack refused the answer through response_url (HTTP %s: %s)", req.id,
                      response.status_code, (response.body or "")[:200])
            return ""
        return "response_url"

    def _update_parent(self, req: Request, parent: str, verdict: str, ok: bool) -> str:
        owner = self._owner(req)
        if owner.command in (INCIDENT_COMMAND, WATCH_NOTICE_COMMAND):
            return ""  # a remediation in an incident's thread: the parent is the incident's, the watch keeps it
        return self._update(req, parent, blocks.parent_verdict(owner.command, owner.user, owner.args.get("target"),
                                                               verdict, ok))

    def _owner(self, req: Request) -> Request:
        """The request whose parent message this thread hangs under."""
        owner_id = self._state(req).get("owner") or req.id
        return self._request(owner_id) or req

    def _upload(self, req: Request, text: str, thread: str | None, doctor: bool = False) -> str:
        name, title = (("cms-doctor", "Full doctor report: every server") if doctor
                       else ("cms-status", "Full CMS status report"))
        response = self.client.files_upload_v2(channel=req.channel, thread_ts=thread, content=text,
                                               filename=f"{name}-{req.id}.txt", title=title)
        files: list[dict[str, Any]] = response.get("files", [])
        return json.dumps([f.get("id") for f in files])
