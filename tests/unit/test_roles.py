"""Roles from Slack user ids and user-group ids."""

from __future__ import annotations

from bot.config import SlackSettings
from bot.roles import Role, Roles


def roles(**env) -> Roles:
    return Roles(SlackSettings(**env))


def test_ids_are_split_from_the_environment(monkeypatch):
    monkeypatch.setenv("CMSBOT_SLACK_OPERATORS", "U1, S9 ;U2")
    monkeypatch.setenv("CMSBOT_SLACK_CHANNELS", "C1")
    r = Roles(SlackSettings())
    assert r.has("U1", Role.operator) and r.has("U2", Role.operator) and not r.has("U3", Role.operator)
    assert r.channel_allowed("C1") and not r.channel_allowed("C2")


def test_user_group_membership_grants_the_role_once_known():
    r = roles(operators=["S9"])
    assert not r.has("U7", Role.operator)
    r.set_group("S9", frozenset({"U7"}))
    assert r.has("U7", Role.operator) and not r.has("U7", Role.approver)


def test_no_roles_configured_means_status_only():
    r = roles()
    assert r.channel_allowed("C-anything")
    assert not r.has("U1", Role.operator) and not r.has("U1", Role.approver)


def test_refusal_names_the_role():
    assert "be a cms-chatops operator" in roles().refusal(Role.operator, "run remediations")
