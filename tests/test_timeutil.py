"""``iso``: one fixed-width text per instant, whatever zone the datetime carries (its fast path for UTC included),
so that instants sort as text in time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from chorus.timeutil import iso, parse_ts

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
