"""The jobs' hard time limits follow from the deadlines and the fan-out."""

from __future__ import annotations

from cms.settings import Settings


def test_a_status_job_has_time_for_every_fan_out_wave():
    """40 slow servers with a fan-out of 2 are 20 waves of one host deadline each: RQ must not kill the
    check while servers are still answering (it would discard every result)."""
    settings = Settings(host_deadline=30, fanout=2)
    assert settings.job_timeout(40) >= 20 * 30 + 2 * 30
    assert settings.change_timeout(40) >= 2 * 20 * 30 + settings.replication_wait


def test_one_wave_keeps_the_limits_of_a_small_deployment():
    settings = Settings(host_deadline=30, fanout=256)
    assert settings.job_timeout(8) == 30 * 3 + 60
    assert settings.change_timeout(8) == 30 * 6 + settings.replication_wait + 60
