"""Code that is not cms-chatops's, which someone with write access to Redis could name in a job.
tests/integration/test_redis_boundary.py names it as a job's callbacks: a worker must never run it.
Importable from the suite's working directory, as a worker without the guard would import it."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def drop_marker(job: Any, connection: Any, *rest: Any) -> None:
    """An RQ callback (success: job, connection, result; failure: job, connection, type, value,
    traceback): creates the file the job's meta names, the proof that it ran."""
    Path(job.meta["marker"]).touch()
