"""cms.ps_json: reading probe JSON, as the probes' own writer and Windows PowerShell 5.1's ConvertTo-Json print it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from cms.models import ServiceState
from cms.ps_json import as_bool, as_datetime, as_list, as_service_state, as_str, as_strings

UTC = UTC
# 1700000000000 ms after the epoch.
T0 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


# -- as_list -------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", []])
def test_as_list_empty_shapes_are_empty(value):
    # 5.1 writes an empty collection as null (or an empty string where a value is missing).
    assert as_list(value) == []


def test_as_list_wraps_a_bare_object():
    # 5.1 writes a one-element collection as the element itself.
    row = {"ReplicaFqdn": "se01.contoso.com"}
    assert as_list(row) == [row]


def test_as_list_wraps_a_bare_string():
    assert as_list("fe01.contoso.com") == ["fe01.contoso.com"]


def test_as_list_keeps_an_array_and_drops_nulls():
    assert as_list(["a", None, "b"]) == ["a", "b"]
    assert as_list([{"x": 1}, {"x": 2}]) == [{"x": 1}, {"x": 2}]


def test_as_list_keeps_falsy_scalars():
    assert as_list(0) == [0]
    assert as_list(False) == [False]


def test_as_strings_drops_blanks_and_stringifies():
    assert as_strings(["fe01.contoso.com", "", "  ", None, " fe02.contoso.com "]) == [
        "fe01.contoso.com",
        "fe02.contoso.com",
    ]
    assert as_strings("se01.contoso.com") == ["se01.contoso.com"]
    assert as_strings(None) == []


def test_as_str_blank_is_none():
    assert as_str("") is None
    assert as_str("   ") is None
    assert as_str(None) is None
    assert as_str(" 7.0.2046.0 ") == "7.0.2046.0"
    assert as_str(8) == "8"


# -- as_bool -------------------------------------------------------------------

@pytest.mark.parametrize("value", [True, 1, 1.0, -1, "True", "true", " TRUE ", "1", "yes"])
def test_as_bool_true(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, 0.0, "False", "false", "0", "no", "", None, {}, []])
def test_as_bool_false(value):
    assert as_bool(value) is False


# -- as_datetime -----------------------------------------------------------------

def test_ms_date_as_json_loads_leaves_it():
    # The raw 5.1 text has escaped slashes; json.loads removes the backslashes.
    value = json.loads(r'"\/Date(1700000000000)\/"')
    assert value == "/Date(1700000000000)/"
    assert as_datetime(value) == T0


def test_ms_date_with_backslashes_still_in_place():
    # E.g. read out of the raw text without a JSON decoder.
    assert as_datetime(r"\/Date(1700000000000)\/") == T0


def test_ms_date_is_aware_utc():
    moment = as_datetime("/Date(1700000000000)/")
    assert moment.tzinfo is not None
    assert moment.utcoffset() == timedelta(0)


def test_ms_date_keeps_milliseconds():
    assert as_datetime("/Date(1700000000123)/") == T0 + timedelta(milliseconds=123)


def test_ms_date_negative_is_before_the_epoch():
    assert as_datetime("/Date(-86400000)/") == datetime(1969, 12, 31, 0, 0, tzinfo=UTC)
    assert as_datetime(r"\/Date(-1)\/") == datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)


def test_ms_date_zero_is_the_epoch():
    assert as_datetime("/Date(0)/") == datetime(1970, 1, 1, tzinfo=UTC)


def test_ms_date_with_offset_suffix_counts_ms_from_utc_epoch():
    # .NET's "/Date(ms+hhmm)/": ms is always since the UTC epoch; the offset is informational.
    assert as_datetime("/Date(1700000000000+0100)/") == T0
    assert as_datetime("/Date(1700000000000-0500)/") == T0


def test_iso_with_z():
    assert as_datetime("2023-11-14T22:13:20Z") == T0


def test_iso_with_seven_fraction_digits_round_trip_format():
    # .NET's "o" format writes 100 ns ticks (7 digits).
    assert as_datetime("2023-11-14T22:13:20.1234567Z") == T0 + timedelta(microseconds=123456)


def test_iso_with_offset_names_the_right_instant():
    assert as_datetime("2023-11-15T00:13:20+02:00") == T0


def test_iso_with_offset_is_returned_in_utc():
    # The docstring promises "an aware UTC datetime"; an offset string keeps its
    # +02:00 tzinfo instead, so anything that formats it shows local wall time.
    moment = as_datetime("2023-11-15T00:13:20+02:00")
    assert moment.utcoffset() == timedelta(0)
    assert moment.hour == 22


def test_iso_without_zone_is_taken_as_utc():
    moment = as_datetime("2023-11-14T22:13:20")
    assert moment == T0
    assert moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize("value", [None, "", "   ", "not a date", "/Date(abc)/", "Date(1700000000000)"])
def test_missing_or_unreadable_dates_are_none(value):
    assert as_datetime(value) is None


def test_get_date_display_hint_shape():
    # `Get-Date | ConvertTo-Json` in 5.1 wraps the date with its note properties.
    raw = r'{"value":"\/Date(1700000000000)\/","DisplayHint":2,"DateTime":"Tuesday, November 14, 2023 10:13:20 PM"}'
    assert as_datetime(json.loads(raw)) == T0


def test_get_date_display_hint_shape_with_null_value():
    assert as_datetime({"value": None, "DisplayHint": 2}) is None


# -- as_service_state --------------------------------------------------------------

@pytest.mark.parametrize(
    ("code", "state"),
    [
        (1, ServiceState.stopped),
        (2, ServiceState.starting),   # StartPending
        (3, ServiceState.stopping),   # StopPending
        (4, ServiceState.running),
        (5, ServiceState.starting),   # ContinuePending
        (6, ServiceState.stopping),   # PausePending
        (7, ServiceState.paused),
        (4.0, ServiceState.running),
    ],
)
def test_service_state_enum_numbers(code, state):
    assert as_service_state(code) is state


@pytest.mark.parametrize("code", [0, 8, -1, 99])
def test_service_state_unknown_numbers(code):
    assert as_service_state(code) is ServiceState.unknown


@pytest.mark.parametrize(
    ("name", "state"),
    [
        ("Running", ServiceState.running),
        ("running", ServiceState.running),
        (" Running ", ServiceState.running),
        ("Stopped", ServiceState.stopped),
        ("StartPending", ServiceState.starting),
        ("Start Pending", ServiceState.starting),
        ("StopPending", ServiceState.stopping),
        ("ContinuePending", ServiceState.starting),
        ("PausePending", ServiceState.stopping),
        ("Paused", ServiceState.paused),
        ("Missing", ServiceState.missing),
    ],
)
def test_service_state_enum_names(name, state):
    assert as_service_state(name) is state


@pytest.mark.parametrize("value", [None, True, False, "", "Exploded", {}])
def test_service_state_unknown_values(value):
    # bool is an int subclass: True must not read as code 1 (Stopped).
    assert as_service_state(value) is ServiceState.unknown


# -- the probes' own writer (workers/probes/_lib.ps1): ISO 8601 UTC dates, null for "not reported" --

def test_probe_writer_date_is_utc_with_milliseconds():
    assert as_datetime("2023-11-14T22:13:20.000Z") == T0
    assert as_datetime("2023-11-14T22:13:20.123Z") == T0 + timedelta(milliseconds=123)
    assert as_datetime("2023-11-14T22:13:20.123Z").tzinfo is not None


def test_both_writers_read_the_same_instant():
    assert as_datetime("2023-11-14T22:13:20.000Z") == as_datetime(r"\/Date(1700000000000)\/")


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("  ", None), (True, True), (False, False),
                                                 ("True", True), ("False", False), (1, True), (0, False)])
def test_optional_bool_keeps_not_reported_apart_from_false(value, expected):
    from cms.ps_json import as_optional_bool

    assert as_optional_bool(value) is expected


@pytest.mark.parametrize(("value", "allow"), [("Allow", True), ("Deny", False), ("deny", False), (0, True), (1, False),
                                              (None, True), ("", True)])
def test_ace_type_by_name_or_5_1_number(value, allow):
    from cms.ps_json import as_ace_allow

    assert as_ace_allow(value) is allow
