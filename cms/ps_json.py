"""Reading the JSON that Windows PowerShell 5.1's ConvertTo-Json prints.

5.1 writes dates as "\\/Date(ms)\\/", turns a one-element array into a bare
value and an empty one into null, writes enums as numbers, and may write an
empty string where a value is missing. These helpers make each of those read
as what it means.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from cms.models import ServiceState

_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def as_str(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def as_fqdn(value: Any) -> str | None:
    """A host name as we compare them everywhere: lower case, no trailing dot."""
    text = as_str(value)
    return text.rstrip(".").lower() if text else None


def as_strings(value: Any) -> list[str]:
    return [s for s in (as_str(v) for v in as_list(value)) if s]


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return False


def as_datetime(value: Any) -> datetime | None:
    """A 5.1 date (/Date(ms)/, ISO 8601 or empty) as an aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, dict) and "value" in value:  # Get-Date | ConvertTo-Json
        return as_datetime(value["value"])
    text = str(value).strip()
    m = _MS_DATE.match(text.replace("\\/", "/"))
    if m:
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=int(m.group(1)))
        return moment
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


# System.ServiceProcess.ServiceControllerStatus, as 5.1 writes the enum.
_SERVICE_CODES = {1: "stopped", 2: "starting", 3: "stopping", 4: "running", 5: "starting", 6: "stopping", 7: "paused"}
_SERVICE_NAMES = {
    "stopped": "stopped", "startpending": "starting", "stoppending": "stopping", "running": "running",
    "continuepending": "starting", "pausepending": "stopping", "paused": "paused", "missing": "missing",
}


def as_service_state(value: Any) -> ServiceState:
    if isinstance(value, bool) or value is None:
        return ServiceState.unknown
    if isinstance(value, (int, float)):
        return ServiceState(_SERVICE_CODES.get(int(value), "unknown"))
    name = _SERVICE_NAMES.get(str(value).strip().lower().replace(" ", ""), "unknown")
    return ServiceState(name)
