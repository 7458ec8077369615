"""RQ job entry points. Thin: load the request, call the logic, append events.

Jobs are enqueued by dotted path with the request id as their only argument;
they report only through the events stream, never to Slack.
"""

from __future__ import annotations

import logging
from typing import Any

from rq import get_current_job
from rq.exceptions import AbandonedJobError
from rq.timeouts import JobTimeoutException

from workers import topology as topo
from workers.contract import append_event, load_request
from workers.settings import Settings
from workers.status import run_status

log = logging.getLogger(__name__)

STATUS_JOB = "workers.jobs.status"
FAILURE_CALLBACK = "workers.jobs.report_failure"


def status(request_id: str) -> dict[str, Any]:
    conn = get_current_job().connection
    request = load_request(conn, request_id)
    settings = Settings()
    topology = topo.load(settings.topology)
    target = topology.resolve(request.args["target"]) if request.args.get("target") else topology.everything()

    def emit(kind: str, body: dict[str, Any]) -> None:
        append_event(conn, request_id, kind, body)

    report = run_status(topology, settings, target, emit)
    emit("result", {"report": report.model_dump(mode="json"), "healthy": report.healthy})
    return {"healthy": report.healthy, "findings": len(report.findings), "host_errors": len(report.host_errors)}


def report_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ on_failure callback: the thread hears that the job died, in plain words."""
    if isinstance(exc_value, AbandonedJobError) or exc_type is AbandonedJobError:
        reason = "the worker running this check stopped before it finished; the check was lost. Run it again."
    elif isinstance(exc_value, JobTimeoutException):
        reason = "the check ran past its time limit and was stopped. Run it again; if it repeats, a server is hanging."
    else:
        reason = f"the check failed with an internal error ({exc_type.__name__}); the worker log has the details."
        log.error("job %s failed: %s", job.id, exc_type.__name__, exc_info=(exc_type, exc_value, tb))
    append_event(connection, job.id, "failed", {"reason": reason})
