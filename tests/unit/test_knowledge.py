"""cms.knowledge: every finding code is a FindingCode, with its knowledge, and travels as its string."""

from __future__ import annotations

import json

import pytest

from cms.knowledge import KNOWLEDGE, FindingCode
from cms.models import Finding, Severity
from cms.preflight import SIGNATURES

pytestmark = pytest.mark.unit


def test_the_knowledge_covers_every_code_but_the_failover_failure_modes():
    failover_modes = {code for code, _, _ in SIGNATURES}
    assert all(isinstance(code, FindingCode) for code in KNOWLEDGE)
    assert set(KNOWLEDGE) == set(FindingCode) - failover_modes
    assert all(code.value.startswith("failover.") for code in failover_modes)


def test_a_code_is_its_string_in_json_and_in_comparisons():
    f = Finding(code="replica.https-unreachable", severity=Severity.error, subject="edge01", summary="s")
    assert f.code is FindingCode.replica_https_unreachable
    assert f.code == "replica.https-unreachable" and f.code.value == "replica.https-unreachable"
    assert json.loads(f.model_dump_json())["code"] == "replica.https-unreachable"
    assert Finding.model_validate_json(f.model_dump_json()) == f
