"""timeutil: ``iso`` gives one fixed-width text per instant, whatever zone the datetime carries (its fast path for
UTC included), so that instants sort as text in time order; ``use_clock`` is the process-wide virtual clock that
`chorus demo` runs the real system on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chorus import timeutil
from chorus.timeutil import iso, parse_ts, use_clock, utcnow

instants = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
offsets = st.timedeltas(min_value=timedelta(hours=-23, minutes=59), max_value=timedelta(hours=23, minutes=59))


@given(instants, offsets)
def test_the_same_instant_in_any_zone_prints_the_same_fixed_width_text(t, offset):
    shifted = t.astimezone(timezone(offset))
    assert iso(t) == iso(shifted) == t.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert len(iso(t)) == 27 and parse_ts(iso(t)) == t


@given(instants, instants)
def test_texts_sort_in_time_order(a, b):
    assert (iso(a) < iso(b)) == (a < b)


T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_default_is_the_wall_clock():
    before = datetime.now(UTC)
    got = utcnow()
    assert before <= got <= datetime.now(UTC)


def test_override_reaches_names_imported_before_it_and_default_arguments():
    from chorus.api import tracking
    from chorus.identity import resolver
    from chorus.journeys import runtime
    from chorus.segments import engine

    now = [T0]
    with use_clock(lambda: now[0]):
        # modules that did `from chorus.timeutil import utcnow` at import, and the engines' own now() wrappers
        assert tracking.utcnow() == T0 and runtime.now() == T0 and engine.now() == T0
        # a default argument bound at import (Resolver(clock=utcnow)) reads the same clock
        assert resolver.Resolver.__init__.__defaults__[0]() == T0
        now[0] = T0 + timedelta(days=3)
        assert utcnow() == T0 + timedelta(days=3)
    assert abs(utcnow() - datetime.now(UTC)) < timedelta(seconds=5)


def test_every_thread_sees_the_virtual_time():
    seen = []
    with use_clock(lambda: T0):
        t = threading.Thread(target=lambda: seen.append(utcnow()))
        t.start()
        t.join()
    assert seen == [T0]


def test_a_second_clock_is_refused_and_the_first_stays():
    with use_clock(lambda: T0):
        with pytest.raises(RuntimeError, match="already in use"):
            with use_clock(lambda: T0 + timedelta(hours=1)):
                pass
        assert utcnow() == T0


def test_restored_after_an_error():
    with pytest.raises(ValueError):
        with use_clock(lambda: T0):
            raise ValueError("boom")
    assert timeutil._override is None
    assert utcnow() != T0


@pytest.mark.parametrize(("own", "fallback", "want"), [
    ("Europe/Paris", "America/New_York", "Europe/Paris"),  # her own zone first
    (None, "America/New_York", "America/New_York"),  # none of her own: the workspace's
    ("Nowhere/Land", "America/New_York", "America/New_York"),  # an unknown one (a device's): the workspace's
    ("", "Asia/Kolkata", "Asia/Kolkata"),
    (None, "Not/AZone", "UTC"),  # neither is known
    ("x" * 65, None, "UTC"),
    (["Europe/Paris"], None, "UTC"),  # not text
])  # fmt: skip
def test_a_persons_zone_is_hers_else_the_workspaces_else_utc(own, fallback, want):
    assert timeutil.zone(own, fallback).key == want


def test_quiet_hours_follow_the_same_rule_for_a_zone_nobody_knows():
    """A device's unknown zone falls back to the workspace's, as segments and journeys read it: 22:30 in Paris is
    quiet until 08:00 there (07:00 UTC); 21:30 in UTC would not be, nor 13:30 in Los Angeles."""
    from chorus.messaging.policy import pace

    settings = {"timezone": "Europe/Paris", "quiet_hours": {"start": "22:00", "end": "08:00"}}
    now = datetime(2026, 1, 15, 21, 30, tzinfo=UTC)
    for own in ("Nowhere/Land", None):
        got = pace(now, channel="sms", kind="marketing", timezone_name=own, history=[], settings=settings)
        assert got.at == datetime(2026, 1, 16, 7, 0, tzinfo=UTC), own
    la = pace(now, channel="sms", kind="marketing", timezone_name="America/Los_Angeles", history=[],
              settings=settings)
    assert la.at == now


@pytest.mark.parametrize("text", ["1796180645", "1796180645000", " 1796180645.5 ", "1796180645123"])
def test_epoch_seconds_or_milliseconds_in_a_string_read_as_the_number_would(text):
    """CSV files and some SDKs quote epoch times: a probe's ``"timestamp": "1700000000"`` was rejected although the
    docs say epoch seconds are taken. No ISO-8601 form is nine or more digits alone."""
    number = float(text)
    assert parse_ts(text) == parse_ts(number)
    assert parse_ts(text).year == 2026


@given(st.integers(min_value=100_000_000, max_value=9_999_999_999_999))
def test_any_9_to_13_digit_string_is_an_epoch_time_and_never_an_error(n):
    assert parse_ts(str(n)) == parse_ts(n)


@pytest.mark.parametrize("text", ["20261207", "2026-12-07", "2026-12-07T10:00:00Z"])
def test_iso_8601_forms_made_of_digits_stay_iso_8601(text):
    assert parse_ts(text) == datetime(2026, 12, 7, 10 if "T" in text else 0, tzinfo=UTC)


@pytest.mark.parametrize("text", ["12345678901234", "1.5", "-1796180645", "0x6B0F4F05"])
def test_other_numeric_texts_are_still_refused(text):
    with pytest.raises(ValueError):
        parse_ts(text)
