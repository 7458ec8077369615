"""The processes' logs: plain text (the default) or one JSON object per line (CMSBOT_LOG_FORMAT=json),
each line carrying the id of the request it was written for.

The request id travels in a context variable, set where a request's work begins in each process:
the bot's dispatch of a slash command (bot/serve/app.py: the same id the listener gives the request),
the worker around each job (workers/rq_worker.py: a job's id is its request's id; the work-horse is
forked with it), and the reporter around the delivery of each of the request's events, Slack calls
included (bot/serve/server.py). A line written outside any request has no request id.

Nothing is added to a line but the record's own message: what a message may hold is the caller's
responsibility (no secret is ever logged; the settings hold them as SecretStr).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

REQUEST_ID: ContextVar[str | None] = ContextVar("cmsbot_request_id", default=None)


@contextmanager
def request(request_id: str | None) -> Iterator[None]:
    """Every line logged inside (in this thread or task) carries `request_id`."""
    token = REQUEST_ID.set(request_id)
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, and the
    request id when the line belongs to a request; the traceback, if any, as `exception`."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            doc["request_id"] = str(request_id)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(log_format: str | None) -> logging.Formatter:
    """The formatter of CMSBOT_LOG_FORMAT: `json`, else plain text."""
    return JsonFormatter() if (log_format or "").strip().lower() == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: str, log_format: str | None) -> None:
    """The root logger's one handler (standard error), at `level`, in `log_format`."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    logging.basicConfig(level=level, handlers=[handler])


def json_enabled() -> bool:
    """Whether the root logger writes JSON (so that libraries with handlers of their own, gunicorn's,
    can be made to write it too)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
