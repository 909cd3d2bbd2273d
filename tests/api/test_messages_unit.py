"""Pure validation and channel inference (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from chorus.collect.channels import infer_channel
from chorus.collect.messages import Event, Rejection, content_message_id, merge_batch_defaults, normalise

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("msg", "kind", "channel"),
    [
        ({"type": "track", "context": {"channel": "Call-Center"}}, "client", "call_center"),
        ({"type": "page"}, "client", "web"),
        ({"type": "screen"}, "client", "app"),
        ({"type": "track", "context": {"app": {"name": "x"}}}, "client", "app"),
        ({"type": "track", "context": {"os": {"name": "Android"}}}, "client", "app"),
        ({"type": "track", "context": {"device": {"type": "ios"}}}, "client", "app"),
        ({"type": "track", "context": {"userAgent": "Mozilla"}}, "client", "web"),
        ({"type": "track"}, "server", "server"),
        ({"type": "track"}, "client", "unknown"),
        ({"type": "track", "context": {"channel": "!!"}}, "client", "unknown"),
    ],
)
def test_channel_rule(msg, kind, channel):
    assert infer_channel(msg, kind) == channel


def test_source_channel_beats_inference_but_not_explicit():
    assert infer_channel({"type": "page"}, "import", "store") == "store"
    assert infer_channel({"type": "page", "context": {"channel": "catalog"}}, "import", "store") == "catalog"


def test_numeric_ids_and_content_ids():
    e = normalise({"type": "track", "userId": 42, "event": "X"}, received_at=NOW, source_kind="client")
    assert isinstance(e, Event) and e.user_id == "42" and e.message_id.startswith("chorus-")
    again = normalise({"type": "track", "userId": 42, "event": "X"}, received_at=NOW, source_kind="client")
    assert again.message_id == e.message_id == content_message_id({"type": "track", "userId": 42, "event": "X"})


@pytest.mark.parametrize(
    ("msg", "field"),
    [
        ({"type": "nope", "userId": "u"}, "type"),
        ({"type": "track", "userId": {"a": 1}, "event": "X"}, "userId"),
        ({"type": "track", "userId": "u", "event": "X", "properties": []}, "properties"),
        ({"type": "group", "userId": "u"}, "groupId"),
        ({"type": "alias", "userId": "u"}, "previousId"),
        ({"type": "track", "userId": "u", "event": "X", "sentAt": "soon"}, "sentAt"),
        ({"type": "track", "userId": "u" * 201, "event": "X"}, "userId"),
    ],
)
def test_rejections_name_the_field(msg, field):
    r = normalise(msg, received_at=NOW, source_kind="client")
    assert isinstance(r, Rejection) and r.field == field and r.reason


def test_not_an_object():
    r = normalise(["x"], received_at=NOW, source_kind="client")
    assert isinstance(r, Rejection) and "object" in r.reason


def test_batch_defaults_do_not_override_item():
    item = {"context": {"a": 1}}
    out = merge_batch_defaults(item, {"context": {"a": 2, "b": 3}, "sentAt": "2026-01-01T00:00:00Z"})
    assert out == {"context": {"a": 1, "b": 3}, "sentAt": "2026-01-01T00:00:00Z"} and item == {"context": {"a": 1}}


def test_missing_timestamps_default_to_received_at():
    e = normalise({"type": "track", "userId": "u", "event": "X"}, received_at=NOW, source_kind="client")
    assert e.timestamp == NOW and e.payload["receivedAt"] == "2026-06-01T12:00:00.000000Z"


def test_epoch_times_are_taken_as_numbers_or_as_quoted_digits():
    """docs/api.md: timestamps parse as ISO-8601 or epoch seconds/milliseconds; a probe's quoted epoch was refused."""
    at = NOW.timestamp() - 60
    for value in (at, str(int(at)), str(int(at * 1000))):
        e = normalise({"type": "track", "userId": "u", "event": "X", "timestamp": value}, received_at=NOW,
                      source_kind="client")  # fmt: skip
        assert not isinstance(e, Rejection), e
        assert abs((e.timestamp - NOW).total_seconds() + 60) < 1, (value, e.timestamp)
    r = normalise({"type": "track", "userId": "u", "event": "X", "timestamp": "17000000001234"}, received_at=NOW,
                  source_kind="client")  # fmt: skip
    assert isinstance(r, Rejection) and r.field == "timestamp" and "ISO-8601" in r.reason


def test_chorus_own_segment_and_journey_records_cannot_be_sent_from_outside():
    """An outside probe sent "Segment Entered" with the public write key: a rule on performed "Segment Entered"
    counted it as Chorus' own. Such names are refused from every outside source, with the field named."""
    for name in ("Segment Entered", "Segment Exited", "Journey Entered", "Journey Step", "Journey Exited",
                 "Journey Converted"):  # fmt: skip
        for kind in ("client", "server", "import", "webhook"):
            r = normalise({"type": "track", "userId": "u", "event": name, "context": {"channel": "internal",
                                                                                       "direction": "outbound"}},
                          received_at=NOW, source_kind=kind)  # fmt: skip
            assert isinstance(r, Rejection) and r.field == "event" and "Chorus records itself" in r.reason, (name, r)
    ok = normalise({"type": "track", "userId": "u", "event": "Segment Entered"}, received_at=NOW,
                   source_kind="internal", require_ids=False)  # fmt: skip
    assert not isinstance(ok, Rejection)
    near = normalise({"type": "track", "userId": "u", "event": "Journey Started"}, received_at=NOW,
                     source_kind="client")  # fmt: skip
    assert not isinstance(near, Rejection)  # only Chorus' own names
