"""The door every message passes (collect.messages.normalise): total on any JSON, and what it accepts can be
stored on both engines and resolved; what it refuses can be stored as a rejection. Plus the event-time rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus import safejson
from chorus.collect.ingest import rejection_row
from chorus.collect.messages import EARLIEST, MAX_FUTURE, Event, Rejection, event_time, normalise
from chorus.identity.identifiers import MAX_IDENT_LEN, IdentityConfig, NoIdentifier, extract, id_text
from chorus.profiles import state as pstate
from tests.collect import hostile

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CFG = IdentityConfig(default_region="NL")


def _storable(value) -> None:
    safejson.check(value)
    orjson.dumps(value)


@settings(max_examples=150, deadline=None)
@given(hostile.message(), st.sampled_from(["client", "server", "import"]), st.booleans())
def test_normalise_is_total_and_accepted_messages_store_and_resolve(msg, kind, batch_item):
    res = normalise(msg, received_at=NOW, source_kind=kind, max_bytes=32 * 1024 if batch_item else None)
    if isinstance(res, Rejection):
        row = rejection_row("ws", None, NOW, res)
        for col in ("message_id", "field", "reason", "payload"):
            assert row[col] is None or safejson.text_problem(row[col]) is None, col
        assert row["message_id"] is None or len(row["message_id"]) <= 200
        assert row["field"] is None or len(row["field"]) <= 200
        _storable(row["identifiers"])
        return
    assert isinstance(res, Event)
    _storable(res.payload)
    assert len(res.message_id) <= 200 and all(len(i or "") <= 200 for i in (res.user_id, res.anonymous_id))
    assert res.timestamp == NOW or EARLIEST <= res.timestamp <= NOW + MAX_FUTURE
    try:
        ext = extract(res.payload, CFG, trusted=kind == "server")
    except NoIdentifier:
        assert kind == "import"  # tracking requires userId or anonymousId
        return
    assert all(len(i) <= MAX_IDENT_LEN and "\x00" not in i for i in (ext.anchor, *ext.others))
    if res.user_id is not None:  # the events column and the identifier are the same text
        assert f"user_id:{res.user_id}" in (ext.anchor, *ext.others)
    pstate.apply_event(pstate.empty(), res.payload, ext.anchor, {}, ext.warnings)


moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC))
receipts = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))


@settings(max_examples=200, deadline=None)
@given(st.none() | moments, st.none() | moments, receipts)
def test_event_time_is_total_and_in_the_accepted_range(original, sent, received):
    ts, how = event_time(original, sent, received)
    assert ts == received or EARLIEST <= ts <= received + MAX_FUTURE
    in_range = original is not None and EARLIEST <= original <= received + MAX_FUTURE
    if in_range and (sent is None or sent < original):  # nothing sane to correct with: the client's time
        assert (ts, how) == (original, "as sent")
    if original is not None and not in_range and (sent is None or sent < original):
        assert ts == received and how not in ("as sent", "corrected")


def test_the_issue_timestamps():
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)

    def stamp(**fields):
        ev = normalise({"type": "track", "userId": "u", "event": "E", **fields}, received_at=now, source_kind="client")
        assert isinstance(ev, Event), ev
        return ev

    # originalTimestamp in 9999 with a 2026 sentAt: the wait is negative, 9999 is out of range -> receivedAt
    ev = stamp(originalTimestamp="9999-12-31T23:59:59Z", sentAt="2026-12-02T11:00:00Z")
    assert ev.timestamp == now and ev.payload["originalTimestamp"] == "9999-12-31T23:59:59.000000Z" and ev.adjusted
    # sentAt in 9999: the correction overflows; the event's own 2026 time is in range and kept
    ev = stamp(originalTimestamp="2026-12-02T10:00:00Z", sentAt="9999-12-31T23:59:59Z")
    assert ev.timestamp == datetime(2026, 12, 2, 10, tzinfo=UTC) and ev.payload["sentAt"] == "9999-12-31T23:59:59Z"
    # a batch sentAt in year 0001 once moved a 2026 event to 4052: sent before it happened is not a correction
    ev = stamp(originalTimestamp="2026-12-02T10:00:00Z", sentAt="0001-01-01T00:00:00Z")
    assert ev.timestamp == datetime(2026, 12, 2, 10, tzinfo=UTC)
    # a device clock reset to 1970 is what the correction is for
    ev = stamp(originalTimestamp="1970-01-01T00:00:00Z", sentAt="1970-01-01T00:05:00Z")
    assert ev.timestamp == now - timedelta(minutes=5) and not ev.adjusted
    # before 2000 without sentAt -> receivedAt; a date typed a day ahead is kept
    assert stamp(timestamp="1999-12-31T23:59:59Z").timestamp == now
    assert stamp(timestamp="2026-12-03T12:00:00Z").timestamp == datetime(2026, 12, 3, 12, tzinfo=UTC)
    # an offset that leaves the calendar is not a timestamp at all: rejected, naming the field
    r = normalise({"type": "track", "userId": "u", "event": "E", "timestamp": "0001-01-01T00:00:00+01:00"},
                  received_at=now, source_kind="client")  # fmt: skip
    assert isinstance(r, Rejection) and r.field == "timestamp"


def test_hostile_values_are_rejected_naming_the_field():
    def field(msg):
        r = normalise({"type": "track", "event": "E", "userId": "u", **msg}, received_at=NOW, source_kind="client")
        assert isinstance(r, Rejection), r
        assert "\x00" not in r.reason and "Traceback" not in r.reason
        return r.field

    deep = hostile.nested(300)
    assert field({"properties": {"a": deep}}).startswith("properties.a")
    assert field({"type": "identify", "traits": {"t": deep}}).startswith("traits.t")
    assert field({"event": "A\x00B"}) == "event"
    assert field({"userId": "u\x00"}) == "userId"
    assert field({"anonymousId": "a\x00"}) == "anonymousId"
    assert field({"properties": {"note": "x\x00"}}) == "properties.note"
    assert field({"properties": {"k\x00": 1}}) == "properties"
    assert field({"messageId": "m" * 201}) == "messageId"
    assert field({"context": {"externalIds": {"type": []}}}) == "context.externalIds"
    assert field({"context": {"externalIds": ["x"]}}) == "context.externalIds[0]"
    assert field({"context": {"externalIds": [{"type": [], "id": "1"}]}}) == "context.externalIds[0].type"
    assert field({"context": {"externalIds": [{"type": "loyalty_id", "id": {"a": 1}}]}}) == "context.externalIds[0].id"
    assert field({"context": {"device": {"token": {"a": 1}}}}) == "context.device.token"
    r = normalise({"type": "track", "event": "E", "userId": "u", "messageId": "m" * 300}, received_at=NOW,
                  source_kind="client")  # fmt: skip
    assert r.message_id is None  # a messageId that cannot be stored is not the rejection's messageId


def test_one_identifier_normalisation():
    assert id_text(5.0) == id_text(5) == id_text("5") == "5"
    assert id_text(" LC-1 ", "loyalty_id") == "LC-1" and id_text(" u1 ") == " u1 "  # user ids are opaque
    assert id_text(True) is id_text({}) is id_text([]) is id_text("") is None
    ev = normalise({"type": "track", "event": "E", "userId": 5.0}, received_at=NOW, source_kind="client")
    assert ev.user_id == "5" and extract(ev.payload, CFG).anchor == "user_id:5"


def test_rejection_of_an_unwritable_payload_is_stored_in_a_safe_form():
    msg = {"type": "track", "event": "E", "userId": "u\x00", "properties": {"deep": hostile.nested(5000)},
           "context": {"externalIds": [{"type": "loyalty_id", "id": "L\x00"}], "traits": {"email": "A@x.io"}}}
    r = normalise(msg, received_at=NOW, source_kind="client")
    row = rejection_row("ws", None, NOW, r)
    assert "\x00" not in row["payload"] and "\\u0000" in row["payload"] and len(row["payload"]) < 2000
    assert row["identifiers"] == {"user_id": ["u\\u0000"], "email": ["a@x.io"], "loyalty_id": ["L\\u0000"]}
