"""Durations, calendar dates in the profile's time zone, and anniversaries across DST changes and the date line."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.segments.times import (
    NEVER,
    Duration,
    anniversary,
    day_start,
    parse_date,
    parse_duration,
    plus,
    relative,
    value_instant,
    zone,
)

NY = ZoneInfo("America/New_York")
APIA = ZoneInfo("Pacific/Apia")
SAO_PAULO = ZoneInfo("America/Sao_Paulo")


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_durations_are_exact_lengths():
    assert parse_duration("7d") == Duration(7, "d")
    assert parse_duration("7d").delta == timedelta(hours=168)
    assert parse_duration("2w").delta == timedelta(days=14)
    assert parse_duration("90m").text() == "90m"
    for bad in ("7", "7 days", "0d", "-1d", "1.5h", "d", 7, None, "07d", "3661d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_dates_are_days_or_instants():
    assert parse_date("2024-01-01").day == date(2024, 1, 1)
    assert parse_date("2024-01-01T09:00:00+02:00").at == utc(2024, 1, 1, 7)
    assert parse_date("2024-01-01T09:00:00").at == utc(2024, 1, 1, 9)  # naive = UTC, as everywhere in Chorus
    for bad in ("2024-02-30", "yesterday", "2024/01/01", 20240101, "", "T"):
        with pytest.raises(ValueError):
            parse_date(bad)


def test_unknown_zone_is_utc():
    assert zone(None).key == "UTC"
    assert zone("Mars/Olympus_Mons").key == "UTC"
    assert zone("../../etc/passwd").key == "UTC"
    assert zone("Europe/Paris").key == "Europe/Paris"


def test_a_day_starts_at_local_midnight():
    assert day_start(date(2024, 7, 1), NY) == utc(2024, 7, 1, 4)  # EDT
    assert day_start(date(2024, 1, 1), NY) == utc(2024, 1, 1, 5)  # EST
    assert day_start(date(2024, 1, 1), APIA) == utc(2023, 12, 31, 11)  # UTC+13, across the date line


def test_a_day_whose_midnight_was_skipped_starts_at_the_jump():
    # Brazil moved clocks from 00:00 to 01:00 on 4 November 2018: that day began at 01:00 local (03:00 UTC)
    start = day_start(date(2018, 11, 4), SAO_PAULO)
    assert start == utc(2018, 11, 4, 3)
    assert start.astimezone(SAO_PAULO).date() == date(2018, 11, 4)
    assert (start - timedelta(microseconds=1)).astimezone(SAO_PAULO).date() == date(2018, 11, 3)


def test_a_day_the_zone_skipped_starts_with_the_next():
    # Samoa crossed the date line: 29 December 2011 was followed by 31 December
    assert day_start(date(2011, 12, 30), APIA) == day_start(date(2011, 12, 31), APIA) == utc(2011, 12, 30, 10)


@settings(max_examples=300, deadline=None)
@given(
    st.dates(min_value=date(1970, 1, 2), max_value=date(2037, 12, 30)),
    st.sampled_from(["America/New_York", "America/Sao_Paulo", "Pacific/Apia", "Asia/Kolkata", "Europe/London",
                     "Australia/Lord_Howe", "America/Santiago", "UTC"]),
)  # fmt: skip
def test_day_start_is_the_first_instant_of_the_day(d, name):
    tz = ZoneInfo(name)
    start = day_start(d, tz)
    assert start.astimezone(tz).date() >= d
    assert (start - timedelta(microseconds=1)).astimezone(tz).date() < d


def test_relative_tests_are_half_open_intervals_of_now():
    x = utc(2024, 3, 1, 12)
    d = timedelta(days=7)
    assert relative("within_last", d, x, x - timedelta(seconds=1)) == (False, x)
    assert relative("within_last", d, x, x) == (True, x + d)
    assert relative("within_last", d, x, x + d) == (False, None)
    assert relative("more_than_ago", d, x, x) == (False, x + d)
    assert relative("more_than_ago", d, x, x + d) == (True, None)
    assert relative("within_next", d, x, x - d - timedelta(1)) == (False, x - d)
    assert relative("within_next", d, x, x - d) == (True, x)
    assert relative("within_next", d, x, x) == (False, None)


def test_arithmetic_past_year_9999_saturates():
    far = utc(9999, 12, 31, 23)
    assert plus(far, timedelta(days=7)) == NEVER
    assert relative("within_last", timedelta(days=7), far, far) == (True, None)  # the window never ends


def test_date_values_read_from_traits():
    assert value_instant("1990-05-17", NY) == (utc(1990, 5, 17, 4), date(1990, 5, 17))
    assert value_instant("1990-05-17T00:00:00Z", NY) == (utc(1990, 5, 17), date(1990, 5, 17))  # its UTC date
    assert value_instant(642902400, NY) is None  # a number is not a date
    assert value_instant("soon", NY) is None


def test_birthday_in_the_next_three_days_across_spring_forward():
    # New York moved to EDT at 02:00 on Sunday 10 March 2024; the birthday is 12 March
    bday = date(1990, 3, 12)
    before = utc(2024, 3, 9, 4, 59)  # 8 March, 23:59 EST: 4 days ahead
    assert anniversary(bday, 3, 0, before, NY) == (False, utc(2024, 3, 9, 5))  # 9 March 00:00 EST
    assert anniversary(bday, 3, 0, utc(2024, 3, 9, 5), NY) == (True, utc(2024, 3, 13, 4))  # 13 March 00:00 EDT
    # the window is 4 local days but 95 hours long: the night lost an hour
    assert utc(2024, 3, 13, 4) - utc(2024, 3, 9, 5) == timedelta(hours=95)
    assert anniversary(bday, 3, 0, utc(2024, 3, 13, 4), NY) == (False, utc(2025, 3, 9, 5))


def test_birthday_across_the_date_line():
    # the same instant is 1 January in Apia and 31 December in New York
    now = utc(2023, 12, 31, 12)
    bday = date(2000, 1, 4)
    assert anniversary(bday, 3, 0, now, APIA).value is True  # 1 Jan local: the 4th is within 3 days
    assert anniversary(bday, 3, 0, now, NY).value is False  # 31 Dec local: 4 days ahead
    assert anniversary(bday, 3, 0, now, NY).next_change == day_start(date(2024, 1, 1), NY)


def test_birthday_on_a_skipped_day():
    # 30 December 2011 did not happen in Apia: a birthday on that day alone cannot be "today" that year
    bday = date(1980, 12, 30)
    assert anniversary(bday, 0, 0, utc(2011, 12, 30, 12), APIA) == (False, day_start(date(2012, 12, 30), APIA))
    # but "in the next 3 days" covers the days around it
    assert anniversary(bday, 3, 0, utc(2011, 12, 28, 12), APIA).value is True


def test_leap_day_birthdays_fall_on_the_28th():
    bday = date(2000, 2, 29)
    assert anniversary(bday, 0, 0, utc(2023, 2, 28, 12), ZoneInfo("UTC")) == (True, utc(2023, 3, 1))
    assert anniversary(bday, 0, 0, utc(2024, 2, 28, 12), ZoneInfo("UTC")) == (False, utc(2024, 2, 29))


def test_anniversary_in_the_last_days():
    bday = date(1990, 6, 10)
    tz = ZoneInfo("UTC")
    assert anniversary(bday, 0, 7, utc(2024, 6, 17, 23), tz) == (True, utc(2024, 6, 18))
    assert anniversary(bday, 0, 7, utc(2024, 6, 9, 23), tz) == (False, utc(2024, 6, 10))


# -- the compiler's shortcut: anniversary_holds is anniversary's answer --------------------------------------------
# where a zone's local date jumped or went back: Alaska moved across the date line (Oct 1867, back a day), Manila
# (Dec 1844) and Kwajalein (Aug 1993) forward a day, Apia skipped 30 Dec 2011, São Paulo moved its clocks at midnight
_JUMPS = [(ZoneInfo("America/Sitka"), utc(1867, 10, 19)), (ZoneInfo("America/Juneau"), utc(1867, 10, 19)),
          (ZoneInfo("Asia/Manila"), utc(1844, 12, 31)), (ZoneInfo("Pacific/Kwajalein"), utc(1993, 8, 21)),
          (APIA, utc(2011, 12, 30)), (SAO_PAULO, utc(2018, 11, 4, 3)), (SAO_PAULO, utc(2019, 2, 17, 2)),
          (ZoneInfo("America/Havana"), utc(2024, 3, 10, 5)),
          (ZoneInfo("Pacific/Kiritimati"), utc(1995, 1, 1))]  # fmt: skip
_ZONES = sorted(__import__("zoneinfo").available_timezones())


@st.composite
def _zone_and_instant(draw):
    if draw(st.booleans()):  # near a jump, to the minute, while the span's edges fall around it
        tz, at = draw(st.sampled_from(_JUMPS))
        return tz, at + timedelta(minutes=draw(st.integers(-5 * 1440, 5 * 1440)))
    tz = ZoneInfo(draw(st.sampled_from(_ZONES)))
    return tz, draw(st.datetimes(datetime(1850, 1, 1), datetime(2200, 1, 1))).replace(tzinfo=UTC)


@settings(max_examples=1500, deadline=None)
@given(_zone_and_instant(), st.dates(date(1900, 1, 1), date(2100, 12, 31)), st.integers(0, 180),
       st.integers(0, 180), st.integers(-3, 3))  # fmt: skip
def test_anniversary_holds_is_the_evaluators_answer(where, day, before, after, shift):
    from chorus.segments.times import anniversary_holds

    tz, now = where
    # the day near now's own date half of the time, so that the spans' edges fall on the days worked out exactly
    if shift and before < 20:
        local = now.astimezone(tz).date()
        try:
            day = (local + timedelta(days=before * (shift > 0) - after * (shift < 0) + shift)).replace(year=day.year)
        except ValueError:
            pass
    assert anniversary_holds(day, before, after, now, tz) is anniversary(day, before, after, now, tz).value


@settings(max_examples=3000, deadline=None)
@given(_zone_and_instant(), st.integers(-6, 6))
def test_a_day_far_from_today_starts_on_the_side_its_date_says(where, k):
    # the shortcut anniversary_holds takes: no zone's local date moves by a day or more at once
    from chorus.segments.times import _local_date, _starts_by

    tz, now = where
    today = _local_date(now, tz)
    try:
        d = today + timedelta(days=k)
    except OverflowError:
        return
    assert _starts_by(d, today, now, tz) is (day_start(d, tz) <= now)
