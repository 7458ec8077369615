"""hub.approvals without Redis: the decide script's words, read as a typed Decision."""

from __future__ import annotations

import re

import pytest

from hub import approvals
from hub.approvals import ApprovalStatus, Decision, DecisionOutcome

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("words", ["approved", "recorded", "denied", "self", "duplicate", "missing"])
def test_each_outcome_of_the_script_is_read_as_its_member(words):
    decision = Decision.from_script(words, 2)
    assert decision.outcome.value == words and decision.count == 2 and decision.closed is None


@pytest.mark.parametrize("status", list(ApprovalStatus))
def test_closed_carries_the_status_the_approval_already_had(status):
    decision = Decision.from_script(f"closed:{status.value}", 0)
    assert decision.outcome is DecisionOutcome.closed and decision.closed is status


def test_every_word_the_decide_script_returns_is_an_outcome():
    words = set(re.findall(r"return \{'([a-z]+)'", approvals._DECIDE))
    assert words == {o.value for o in DecisionOutcome} - {"closed"}
    assert "'closed:' .. status" in approvals._DECIDE and "'closed:expired'" in approvals._DECIDE


def test_every_status_the_scripts_write_is_a_status():
    scripts = approvals._DECIDE + approvals._CONSUME + approvals._EXPIRE
    written = set(re.findall(r"'status', '([a-z]+)'", scripts))
    assert written and written <= {s.value for s in ApprovalStatus}


def test_words_the_script_never_returns_are_refused():
    with pytest.raises(ValueError):
        Decision.from_script("maybe", 0)
    with pytest.raises(ValueError):
        Decision.from_script("closed:maybe", 0)
