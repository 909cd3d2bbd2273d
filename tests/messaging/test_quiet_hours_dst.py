"""Quiet hours by the person's wall clock across DST nights: the end of quiet hours is the first instant at or
after ``now`` whose local time is outside the window (the end time read on the clock, or a jump past it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging import policy
from chorus.messaging.policy import pace, quiet_until

# The 2026 transitions (UTC) of the zones with DST, and instants in zones without: "now" is drawn around them.
TRANSITIONS = {
    "America/New_York": ["2026-03-08T07:00", "2026-11-01T06:00"],  # 02:00 -> 03:00; 02:00 EDT -> 01:00 EST
    "Europe/Paris": ["2026-03-29T01:00", "2026-10-25T01:00"],
    "Australia/Sydney": ["2026-04-04T16:00", "2026-10-03T16:00"],  # back at 03:00, forward at 02:00
    "America/Santiago": ["2026-04-05T03:00", "2026-09-06T04:00"],  # at midnight: 24:00 -> 23:00; 00:00 -> 01:00
    "Australia/Lord_Howe": ["2026-04-04T15:00", "2026-10-03T15:30"],  # half-hour shifts
    "Pacific/Chatham": ["2026-04-04T14:00", "2026-09-26T14:00"],  # at 03:45 / 02:45, offsets of +12:45 / +13:45
    "UTC": ["2026-03-29T01:00", "2026-11-01T06:00"],
    "Asia/Kolkata": ["2026-03-08T07:00", "2026-10-25T01:00"],
    "Asia/Tokyo": ["2026-04-04T16:00", "2026-09-06T04:00"],
}
ANCHORS = [(z, datetime.fromisoformat(t).replace(tzinfo=UTC)) for z, ts in TRANSITIONS.items() for t in ts]
DST = {z for z in TRANSITIONS if z not in ("UTC", "Asia/Kolkata", "Asia/Tokyo")}

hhmm = st.tuples(st.integers(0, 23), st.integers(0, 59)).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
# ends and starts near the transitions' own wall times are the interesting ones: weight them
near = st.tuples(st.sampled_from([0, 1, 2, 3, 23]), st.sampled_from([0, 10, 15, 30, 45, 59])).map(
    lambda t: f"{t[0]:02d}:{t[1]:02d}"
)
clock = st.one_of(hhmm, near)


def minutes(text: str) -> int:
    h, m = text.split(":")
    return int(h) * 60 + int(m)


def quiet(at: datetime, tz: ZoneInfo, start: str, end: str) -> bool:
    """The oracle: is the person's wall clock at ``at`` inside start-end (which may wrap midnight)?"""
    local = at.astimezone(tz)
    t, s, e = local.hour * 60 + local.minute, minutes(start), minutes(end)
    return (s <= t < e) if s < e else (s > e and (t >= s or t < e))


def test_the_anchors_are_the_zones_transitions():
    for name, at in ANCHORS:
        tz = ZoneInfo(name)
        before, after = (at - timedelta(seconds=1)).astimezone(tz), at.astimezone(tz)
        assert (before.utcoffset() != after.utcoffset()) == (name in DST), name


@given(
    st.sampled_from(ANCHORS),
    st.integers(-36 * 3600, 36 * 3600),
    clock,
    clock,
)
@settings(max_examples=1500, deadline=None)
def test_quiet_hours_end_at_the_first_instant_the_wall_clock_is_outside_them(anchor, seconds, start, end):
    name, at = anchor
    tz = ZoneInfo(name)
    now = at + timedelta(seconds=seconds)
    until = policy.quiet_end(now, tz, start, end)
    assert until >= now
    assert until.utcoffset() == timedelta(0)
    assert not quiet(until, tz, start, end)
    if not quiet(now, tz, start, end):
        assert until == now and quiet_until(now, tz, start, end) is None
        return
    assert quiet_until(now, tz, start, end) == until
    # Windows and zone offsets are whole minutes here, so the wall clock's quietness can only change on a whole
    # UTC minute: checking now and every whole minute before `until` covers every instant of [now, until).
    first = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    m = first
    while m < until:
        assert quiet(m, tz, start, end), (m, m.astimezone(tz))
        m += timedelta(minutes=1)
    # a quiet period lasts at most a day of wall clock, plus an hour given back on a fall-back night; when the
    # only times outside it are skipped that night (00:01-00:00 in Santiago on 2026-09-06), another day
    assert until - now <= timedelta(hours=49)
    # the message is held exactly that long by the pacing rule (no caps)
    p = pace(now, channel="sms", kind="marketing", timezone_name=name, history=[],
             settings={"quiet_hours": {"start": start, "end": end}})  # fmt: skip
    assert p.at == until and "quiet hours" in p.reason


NY = ZoneInfo("America/New_York")


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-11-01T05:10", "2026-11-01T05:30"),  # the first 01:10 (EDT): until the first 01:30
        ("2026-11-01T06:10", "2026-11-01T06:30"),  # the second 01:10 (EST): until the second 01:30 (was 05:30Z)
        ("2026-11-01T06:40", "2026-11-01T06:40"),  # 01:40 EST: outside quiet hours
        ("2026-11-01T05:40", "2026-11-01T05:40"),  # 01:40 EDT: outside (quiet again from 02:00 EDT = 01:00 EST)
        ("2026-11-01T06:00", "2026-11-01T06:30"),  # the turn: 01:00 EST, quiet again until the second 01:30
        ("2026-11-01T02:30", "2026-11-01T05:30"),  # 22:30 EDT the evening before
    ],
)
def test_the_probe_fall_back_night(now, expected):
    """The outside probe's case: 22:00-01:30 in New York on 2026-11-01, when 01:00-02:00 happens twice."""
    q = {"quiet_hours": {"start": "22:00", "end": "01:30"}}
    p = pace(utc(now), channel="email", kind="marketing", timezone_name="America/New_York", history=[], settings=q)
    assert p.at == utc(expected)
    assert (p.reason is None) == (now == expected)


def test_other_transitions():
    # an end in the skipped hour: the night ends at the jump (02:00 EST -> 03:00 EDT)
    assert policy.quiet_end(utc("2026-03-08T06:30"), NY, "22:00", "02:15") == utc("2026-03-08T07:00")
    # a start in the repeated hour: 01:45-03:00 is over when the clock goes back from 02:00 EDT to 01:00 EST, and
    # begins again at the second 01:45
    assert policy.quiet_end(utc("2026-11-01T05:50"), NY, "01:45", "03:00") == utc("2026-11-01T06:00")
    assert policy.quiet_end(utc("2026-11-01T06:50"), NY, "01:45", "03:00") == utc("2026-11-01T08:00")
    # Santiago jumps at midnight: 22:00-00:30 on 2026-09-05 ends at the jump from 00:00 to 01:00
    scl = ZoneInfo("America/Santiago")
    assert policy.quiet_end(utc("2026-09-06T03:00"), scl, "22:00", "00:30") == utc("2026-09-06T04:00")
    # ...and on 2026-04-04 24:00 becomes 23:00: 23:30-00:15 is over at the turn, and quiet again from the second
    # 23:30 until 00:15
    assert policy.quiet_end(utc("2026-04-05T02:40"), scl, "23:30", "00:15") == utc("2026-04-05T03:00")
    assert policy.quiet_end(utc("2026-04-05T03:40"), scl, "23:30", "00:15") == utc("2026-04-05T04:15")
    # 00:01-00:00 on the night Santiago skips 00:00-01:00: quiet until the next night's 00:00
    assert policy.quiet_end(utc("2026-09-06T01:59:59"), scl, "00:01", "00:00") == utc("2026-09-07T03:00")
    # an empty window is never quiet; a window that does not cross midnight
    assert policy.quiet_end(utc("2026-11-01T06:10"), NY, "01:30", "01:30") == utc("2026-11-01T06:10")
    assert policy.quiet_end(utc("2026-11-01T06:10"), NY, "01:00", "01:30") == utc("2026-11-01T06:30")
