"""The compiler's month-day sets of an anniversary: the evaluator's answer, worked out without asking every zone
for every day (an outside probe: an ``or`` of 200 anniversaries took minutes to compile with profiles in many
zones, and a batch compiles a rule under the write lock for each chunk)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, available_timezones

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.segments import compile
from chorus.segments.times import anniversary, day_start


def _reference(before: int, after: int, now: datetime, tz) -> str:
    """The set as the compiler first computed it: the evaluator asked for every day within reach of today."""
    today = now.astimezone(tz).date()
    reach = before + after + 3
    days = set()
    for k in range(-reach, reach + 1):
        try:
            days.add((today + timedelta(days=k)).replace(year=2000))
        except (OverflowError, ValueError):
            continue
    days.update((date(2000, 2, 28), date(2000, 2, 29), date(2000, 3, 1)))
    hits = sorted(d.strftime("%m-%d") for d in days if anniversary(d, before, after, now, tz).value)
    return "," + ",".join(hits) + ","


ZONES = sorted(available_timezones())
ODD = ["America/Sitka", "Pacific/Apia", "Pacific/Kwajalein", "Asia/Manila", "America/Sao_Paulo", "Pacific/Kiritimati"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.sampled_from(ODD), st.sampled_from(ZONES)),
       st.datetimes(datetime(1840, 1, 1), datetime(2150, 1, 1)),
       st.integers(0, 180), st.integers(0, 180), st.booleans())  # fmt: skip
def test_the_set_is_the_evaluators(name, now, before, after, near_new_year):
    tz = ZoneInfo(name)
    if near_new_year:  # the year's turn and 29 February, where the occurrences' years matter
        now = now.replace(month=12, day=31) if now.year % 2 else now.replace(month=2, day=27)
    now = now.replace(tzinfo=UTC)
    compile._anniversary_set.cache_clear()
    assert compile._anniversary_set(before, after, now, tz) == _reference(before, after, now, tz)


def test_a_wide_span_works_out_few_instants():
    # 181 candidate days: each asked by its dates, the zone's midnights worked out only for days near today
    now = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night Europe moves its clocks
    for name in ("Europe/Paris", "America/New_York", "Pacific/Apia", "Asia/Kolkata"):
        compile._anniversary_set.cache_clear()
        day_start.cache_clear()
        days = compile._anniversary_set(180, 0, now, ZoneInfo(name))
        assert days.count(",") == 182  # today and the next 180 local days
        assert day_start.cache_info().misses <= 20, name
