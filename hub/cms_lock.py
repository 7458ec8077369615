"""One CMS change at a time: the deployment-wide lock, who holds it, and the cooldown after.

A failover or recovery holds the lock while it runs; the cooldown keeps the next one out
until the deployment has converged. Remediations and /cms-replicate are refused while
either holds, because they would act on a store that is moving or has no active master.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from redis.lock import Lock

from hub.keys import Hub


def change_state(hub: Hub) -> tuple[bool, str | None, str | None]:
    """Whether the CMS lock is held, who holds it (None if not held or not said), and the cooldown text."""
    held = bool(hub.redis.exists(hub.keys.cms_lock))
    # the connection does not decode responses: replies are bytes
    holder = cast(bytes | None, hub.redis.get(hub.keys.cms_lock_holder)) if held else None
    cooldown = cast(bytes | None, hub.redis.get(hub.keys.cms_cooldown))
    return held, holder.decode() if holder else None, cooldown.decode() if cooldown else None


def cms_change_blocking(hub: Hub) -> str | None:
    """Why nothing else may touch the CMS now, or None."""
    held, holder, cooldown = change_state(hub)
    if held:
        return f"another CMS change is running ({holder or 'holder unknown'})"
    return f"cooldown after the last CMS change {cooldown}" if cooldown else None


def lock(hub: Hub, timeout: int) -> Lock:
    return hub.redis.lock(hub.keys.cms_lock, timeout=timeout, blocking=False)


def holder(hub: Hub) -> str | None:
    raw = cast(bytes | None, hub.redis.get(hub.keys.cms_lock_holder))
    return raw.decode() if raw else None


def set_holder(hub: Hub, text: str, ttl: int) -> None:
    hub.redis.set(hub.keys.cms_lock_holder, text, ex=ttl)


def clear_holder(hub: Hub) -> None:
    hub.redis.delete(hub.keys.cms_lock_holder)


def break_lock(hub: Hub) -> None:
    """Its holder is dead (the watchdog said so): free the lock; the cooldown still holds."""
    hub.redis.delete(hub.keys.cms_lock, hub.keys.cms_lock_holder)


def cooldown(hub: Hub) -> str | None:
    return change_state(hub)[2]


def cooldown_text(reason: str, seconds: float) -> str:
    until = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"until {until.strftime('%H:%M:%S UTC')} ({reason})"


def set_cooldown(hub: Hub, seconds: float, reason: str) -> None:
    if seconds > 0:
        hub.redis.set(hub.keys.cms_cooldown, cooldown_text(reason, seconds), ex=int(seconds))
