"""``normalise_internal`` (the timeline events Chorus writes itself) gives exactly what ``normalise`` gives, for the
shapes its callers build and for anything else a caller could hand it (which it passes to ``normalise``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.collect.messages import Event, normalise, normalise_internal
from chorus.timeutil import iso

texts = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", "\x00", "\ud800", "x" * 201, "é", "internal"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), texts),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(texts, kids, max_size=3)),
    max_leaves=8,
)  # fmt: skip
ids = st.one_of(st.none(), texts, st.integers(), st.floats(allow_nan=False), st.booleans())
# UTC mostly (what the callers pass), and another zone or none: those must take normalise's way
zones = st.one_of(st.just(UTC), st.just(UTC), st.just(UTC), st.just(timezone(timedelta(hours=1))), st.none())
instants = st.datetimes(min_value=datetime(1999, 1, 1), max_value=datetime(2031, 1, 1), timezones=zones)
channels = st.one_of(st.sampled_from(["internal", "email", "sms", "web", "Push", ""]), texts, st.integers())
contexts = st.one_of(
    st.none(), st.integers(),
    st.fixed_dictionaries({"channel": channels}, optional={
        "direction": st.sampled_from(["inbound", "outbound"]),
        "traits": st.dictionaries(st.sampled_from(["email", "phone"]), texts, max_size=2),
        "externalIds": st.one_of(st.integers(), st.lists(st.fixed_dictionaries({"type": texts, "id": ids}),
                                                         max_size=2)),
        "device": st.one_of(st.integers(), st.fixed_dictionaries({"token": ids})),
        "app": json_values,
    }),
)  # fmt: skip


@st.composite
def messages(draw):
    at = draw(instants)
    stamp = at if at.tzinfo is not None else at.replace(tzinfo=UTC)  # what iso reads a naive one as (the host: UTC)
    msg = {"type": draw(st.sampled_from(["track", "track", "track", "identify", 7])),
           "event": draw(st.one_of(st.sampled_from(["Journey Step", "Segment Entered", "Message Queued"]), texts,
                                   st.none())),
           "properties": draw(st.one_of(st.dictionaries(texts, json_values, max_size=4), json_values)),
           "context": draw(contexts),
           "messageId": draw(st.one_of(st.just("chorus-journey-i1-3-step-n-0"), ids)),
           "timestamp": draw(st.sampled_from([iso(stamp), iso(stamp), at.isoformat(), "", "garbage"]))}  # fmt: skip
    for key in ("userId", "anonymousId", "sentAt", "originalTimestamp", "traits", "writeKey"):
        if draw(st.booleans()) and (key in ("userId", "anonymousId") or draw(st.integers(0, 5)) == 0):
            msg[key] = draw(ids if key in ("userId", "anonymousId") else json_values)
    for key in ("properties", "context"):
        if draw(st.integers(0, 4)) == 0:
            del msg[key]
    lag = draw(st.sampled_from([timedelta(0), timedelta(seconds=3), timedelta(days=-3), timedelta(days=3)]))
    return msg, at, stamp.astimezone(UTC) + lag


@settings(max_examples=600, deadline=None)
@given(messages())
def test_it_is_normalise(case):
    msg, at, received_at = case
    got = normalise_internal(msg, at=at, received_at=received_at)
    want = normalise(msg, received_at=received_at, source_kind="internal", require_ids=False)
    assert got == want
    if isinstance(got, Event):
        assert list(got.payload) == list(want.payload)  # the same document, keys in the same order
        # the same instants in the same zone (equal datetimes may differ in zone, and print differently)
        assert (got.timestamp.tzinfo, got.received_at.tzinfo) == (want.timestamp.tzinfo, want.received_at.tzinfo)


def test_the_shape_the_engines_write_takes_the_short_way_and_is_an_event():
    at = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    msg = {"userId": "u1", "type": "track", "event": "Journey Step",
           "properties": {"journey_id": "j", "node": "n", "branch": "b"},
           "context": {"traits": {"email": "a@b.c"}, "channel": "internal", "direction": "outbound"},
           "messageId": "chorus-journey-i-1-step-n-0", "timestamp": iso(at)}  # fmt: skip
    ev = normalise_internal(msg, at=at, received_at=at + timedelta(seconds=2))
    assert isinstance(ev, Event) and ev.channel == "internal" and ev.timestamp == at and ev.user_id == "u1"
    assert ev.payload["receivedAt"] == iso(at + timedelta(seconds=2)) and ev.payload["originalTimestamp"] == iso(at)
