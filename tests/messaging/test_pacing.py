"""Frequency caps and quiet hours: properties of `policy.pace` over generated histories and settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging.policy import WINDOWS, pace, quiet_until

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # the night Europe switches to summer time
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
hhmm = st.tuples(st.integers(0, 23), st.sampled_from([0, 15, 30, 45])).map(lambda t: f"{t[0]:02d}:{t[1]:02d}")
history = st.lists(
    st.tuples(
        st.sampled_from(["email", "sms"]),
        st.integers(-7 * 24 * 60, 3 * 24 * 60).map(lambda m: NOW + timedelta(minutes=m)),
    ),
    max_size=12,
)
caps = st.dictionaries(
    st.sampled_from(["email", "sms", "total"]),
    st.dictionaries(st.sampled_from(["day", "week"]), st.integers(1, 4), min_size=1),
    max_size=3,
)
quiet = st.one_of(st.none(), st.fixed_dictionaries({"start": hhmm, "end": hhmm}))


def in_quiet(at, tz, q):
    return q is not None and quiet_until(at, ZoneInfo(tz), q["start"], q["end"]) is not None


@given(history, caps, quiet, st.sampled_from(ZONES), st.sampled_from(["email", "sms"]))
@settings(max_examples=500, deadline=None)
def test_a_deferred_send_lands_on_an_allowed_instant(hist, cap, q, tz, channel):
    conf = {"caps": cap, **({"quiet_hours": q} if q else {})}
    p = pace(NOW, channel=channel, kind="marketing", timezone_name=tz, history=hist, settings=conf)
    assert p.at is not None and p.at >= NOW
    assert (p.at == NOW) == (p.reason is None)
    # at the chosen instant no rule objects
    assert not in_quiet(p.at, tz, q)
    for scope, limits in cap.items():
        if scope not in ("total", channel):
            continue
        for window, limit in limits.items():
            n = sum(1 for ch, at in hist if (scope == "total" or ch == channel) and p.at - WINDOWS[window] < at <= p.at)
            assert n < limit, (scope, window, n, limit, p)
    # transactional messages are never held, and "drop" drops exactly what "defer" would delay
    assert pace(NOW, channel=channel, kind="transactional", timezone_name=tz, history=hist, settings=conf).at == NOW
    dropped = pace(NOW, channel=channel, kind="marketing", timezone_name=tz, history=hist,
                   settings={**conf, "pacing_action": "drop"})  # fmt: skip
    assert (dropped.at is None) == (p.at != NOW)


@given(quiet.filter(bool), st.sampled_from(ZONES), st.integers(0, 48 * 60))
@settings(max_examples=300, deadline=None)
def test_quiet_hours_end_exactly_when_the_local_night_ends(q, tz, minutes):
    at = NOW + timedelta(minutes=minutes)
    p = pace(at, channel="sms", kind="marketing", timezone_name=tz, history=[], settings={"quiet_hours": q})
    if not in_quiet(at, tz, q):
        assert p.at == at
        return
    local_end = p.at.astimezone(ZoneInfo(tz))
    assert local_end.strftime("%H:%M") == q["end"] or local_end.utcoffset() != at.astimezone(ZoneInfo(tz)).utcoffset()
    assert p.at - at <= timedelta(hours=25)
    assert not in_quiet(p.at, tz, q) and in_quiet(p.at - timedelta(minutes=1), tz, q)


def test_examples():
    night = {"quiet_hours": {"start": "21:00", "end": "08:00"}}
    at = datetime(2026, 6, 1, 20, 30, tzinfo=UTC)  # 22:30 in Paris
    p = pace(at, channel="sms", kind="marketing", timezone_name="Europe/Paris", history=[], settings=night)
    assert p.at == datetime(2026, 6, 2, 6, 0, tzinfo=UTC) and "quiet hours" in p.reason
    assert pace(at, channel="sms", kind="marketing", timezone_name="America/New_York", history=[],
                settings=night).at == at  # 16:30 in New York  # fmt: skip
    two = [("email", at - timedelta(hours=3)), ("email", at - timedelta(hours=1))]
    p = pace(at, channel="email", kind="marketing", timezone_name=None, history=two,
             settings={"caps": {"email": {"day": 2}}})  # fmt: skip
    assert p.at == at - timedelta(hours=3) + timedelta(days=1) and "email cap of 2 a day" in p.reason
    assert pace(at, channel="sms", kind="marketing", timezone_name=None, history=two,
                settings={"caps": {"email": {"day": 2}}}).at == at  # another channel's cap  # fmt: skip
    p = pace(at, channel="sms", kind="marketing", timezone_name=None, history=two,
             settings={"caps": {"total": {"day": 2}}})  # fmt: skip
    assert p.at > at and "total cap" in p.reason
