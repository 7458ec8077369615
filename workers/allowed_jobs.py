"""Workers run only cms-chatops jobs.

RQ stores a job's function and callbacks as dotted paths and imports them when the job runs, even
with the JSON serializer. Anyone who can write to Redis could otherwise make a worker, which holds
an RTCUniversalServerAdmins credential, run any importable function (`os.system`). The worker's
job class refuses every function and callback that is not one of ours, before importing it, and
sends none of a job's webhooks (RQ 3 would POST the job's result or error to any URL a job names,
from inside the servers' network; ours name none). Each refusal is an ERROR line of the
`cmsbot.security` logger starting with "security:".
"""

from __future__ import annotations

import logging
from typing import Any

from rq.job import Job

from hub.jobs import (
    DOCTOR_JOB,
    EXECUTE_JOB,
    FAILURE_CALLBACK,
    ONCALL_JOB,
    PREFLIGHT_JOB,
    REMEDIATE_JOB,
    REPLICATE_JOB,
    STATUS_JOB,
    WATCH_JOB,
)

log = logging.getLogger("cmsbot.security")

ENTRY_POINTS = frozenset({STATUS_JOB, REPLICATE_JOB, REMEDIATE_JOB, PREFLIGHT_JOB, EXECUTE_JOB, DOCTOR_JOB,
                          WATCH_JOB, ONCALL_JOB})
CALLBACKS = frozenset({FAILURE_CALLBACK})


class ForeignJob(RuntimeError):
    """A job whose function is not a cms-chatops entry point."""


class OurJob(Job):
    @property
    def func(self) -> Any:
        if self.func_name not in ENTRY_POINTS or self.instance is not None:
            log.error("security: refused job %s: %r is not a cms-chatops job (was Redis written by "
                      "someone else?)", self.id, self.func_name)
            raise ForeignJob(f"refused: {self.func_name!r} is not a cms-chatops job")
        return super().func

    @property
    def success_callback(self) -> Any:
        return self._ours("success", self._success_callback_name, lambda: super(OurJob, self).success_callback)

    @property
    def failure_callback(self) -> Any:
        return self._ours("failure", self._failure_callback_name, lambda: super(OurJob, self).failure_callback)

    @property
    def stopped_callback(self) -> Any:
        return self._ours("stopped", self._stopped_callback_name, lambda: super(OurJob, self).stopped_callback)

    def send_webhooks(self, status: Any, *, exc_string: str | None = None) -> None:
        """None: cms-chatops jobs carry no webhooks, so any a job carries were written by someone else."""
        if self.webhooks:
            log.error("security: ignored the webhooks of job %s (%s): cms-chatops jobs carry none", self.id,
                      ", ".join(sorted({w.url for w in self.webhooks})))

    def _ours(self, kind: str, name: str | None, callback: Any) -> Any:
        """The callback when it is ours (or none is set); else no callback, and a security log line."""
        if name and name not in CALLBACKS:
            log.error("security: ignored the %s callback %r of job %s: not a cms-chatops callback", kind, name,
                      self.id)
            return None
        return callback()
