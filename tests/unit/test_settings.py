"""The jobs' hard time limits follow from the deadlines and the fan-out."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cms.settings import Settings


def test_a_status_job_has_time_for_every_fan_out_wave():
    """40 slow servers with a fan-out of 2 are 20 waves; in each, a server may take each of its (up to 3)
    probes' deadline: RQ must not kill the check while servers are still answering (it would discard
    every result)."""
    settings = Settings(host_deadline=30, fanout=2)
    assert settings.job_timeout(40) >= 20 * 3 * 30 + 4 * 30
    assert settings.change_timeout(40) >= 2 * (20 * 3 * 30) + 660 + settings.replication_wait


def test_the_limits_follow_the_probes_declared_deadlines():
    """One wave: the status check's stages; a remediation: two checks, the re-seed's export, import and
    forced replication (660 s declared) and the replication wait; CMSBOT_HOST_DEADLINE scales them."""
    settings = Settings(host_deadline=30, fanout=256)
    assert settings.job_timeout(8) == 30 * 7 + 60
    assert settings.change_timeout(8) == 2 * 30 * 7 + 660 + settings.replication_wait + 60
    assert settings.probe_deadline(240) == 240
    fast = Settings(host_deadline=3, fanout=256)
    assert fast.probe_deadline(240) == 24 and fast.change_timeout(8) == 2 * 3 * 7 + 66 + fast.replication_wait + 60


def test_the_cooldown_has_a_floor_and_volatile_redis_is_refused_unless_accepted():
    """A CMS change is never followed at once by the next; CMSBOT_COOLDOWN=0 is refused, not obeyed."""
    with pytest.raises(ValidationError):
        Settings(cooldown=0)
    with pytest.raises(ValidationError):
        Settings(cooldown=59)
    assert Settings(cooldown=60).cooldown == 60
    assert Settings().allow_volatile_redis is False
    assert Settings(allow_volatile_redis="1").allow_volatile_redis is True
