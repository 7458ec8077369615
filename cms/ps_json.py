"""Reading probe JSON: the probes' own writer and Windows PowerShell 5.1's ConvertTo-Json.

The probes print their answer with the JSON writer of `workers/probes/_lib.ps1` (Windows
PowerShell 2.0 has no ConvertTo-Json): plain ASCII, dates as ISO 8601 UTC with milliseconds
("2023-11-14T22:13:20.000Z"), enums by name, every list an array, and null for a property the
product version does not have ("not reported"). 5.1's ConvertTo-Json, which the parsers accept
as well, writes dates as "\\/Date(ms)\\/", turns a one-element array into a bare value and an
empty one into null, writes enums as numbers, and may write an empty string where a value is
missing. These helpers make each shape read as what it means.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from cms.models import ServiceState

_MS_DATE = re.compile(r"^/Date\((-?\d+)([+-]\d{4})?\)/$")

# What a server may make us keep: a string longer than this is cut, and says so (`clip`). Event
# messages (the diagnosis reads replica names and paths out of them) and error texts get more room.
MAX_TEXT = 2000
MAX_MESSAGE = 16_000
# RFC 1123 host names: labels of letters, digits and hyphens, 1-63 characters, not starting or ending
# with a hyphen; at most 253 characters. Underscores are accepted (Windows DNS allows them in names).
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
MAX_FQDN = 253


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [v for v in value if v is not None]
    return [value]


def clip(text: str, limit: int | None = MAX_TEXT) -> str:
    """`text`, or its first `limit` characters followed by a note that says it was truncated."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}… (truncated: {len(text):,} characters)"


def as_str(value: Any, limit: int | None = MAX_TEXT) -> str | None:
    """A string a server sent, stripped; None when empty; cut to `limit` characters (None: kept whole,
    for data that must stay intact, such as an exported zip's base64)."""
    if value is None:
        return None
    text = str(value).strip()
    return clip(text, limit) if text else None


def as_fqdn(value: Any) -> str | None:
    """A host name as we compare them everywhere: lower case, no trailing dot."""
    text = as_str(value)
    return text.rstrip(".").lower() if text else None


def is_fqdn(name: str) -> bool:
    """A host name (RFC 1123 labels, at most 253 characters), without a trailing dot."""
    return 0 < len(name) <= MAX_FQDN and all(_LABEL.match(label) for label in name.split("."))


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def shown(value: Any, limit: int = 80) -> str:
    """A value that failed validation, safe to show anywhere: printable, without the characters that
    are markup in Slack or Markdown (<, >, &, backticks), and short."""
    text = "".join(c for c in str(value) if c.isprintable() and c not in "<>&`")
    return text if len(text) <= limit else text[:limit] + "…"


def as_host(value: Any, what: str, notes: list[str], *, address: bool = False) -> str | None:
    """A host name a server reported (ActiveMasterFqdn, a File Transfer Agent, a replica, a pool, an
    address), lower case and without a trailing dot, when it is one: anything else is kept out (None)
    and a note says so, naming `what` it was. `address`: an IP address is accepted too."""
    text = as_str(value, None)
    if not text:
        return None
    name = text.rstrip(".").lower()
    if is_fqdn(name) or (address and is_address(text)):
        return name if is_fqdn(name) else text
    notes.append(f'{what}: invalid name left out ("{shown(text)}", {len(text):,} characters): not a host name')
    return None


def as_hosts(value: Any, what: str, notes: list[str]) -> list[str]:
    """Each host name of a list, validated as `as_host` does."""
    return [h for h in (as_host(v, what, notes) for v in as_list(value)) if h]


def as_strings(value: Any, limit: int | None = MAX_TEXT) -> list[str]:
    return [s for s in (as_str(v, limit) for v in as_list(value)) if s]


def as_optional_bool(value: Any) -> bool | None:
    """A flag that may be "not reported" (null or missing): None then, else as_bool."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return as_bool(value)


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return False


def as_datetime(value: Any) -> datetime | None:
    """A date as the probes' writer (ISO 8601, "...Z") or 5.1 (/Date(ms)/) writes it, or empty,
    as an aware UTC datetime."""
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


# System.Security.AccessControl.AccessControlType, as 5.1 writes the enum.
_ACE_TYPES = {0: "allow", 1: "deny"}


def as_ace_allow(value: Any) -> bool:
    """An ACE's type ("Allow"/"Deny", or 5.1's 0/1) as allow: absent reads as Allow."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return _ACE_TYPES.get(int(value), "allow") != "deny"
    text = as_str(value)
    return (text or "Allow").lower() != "deny"
