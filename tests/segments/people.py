"""People for evaluator tests, built the way Chorus builds them: Segment messages through the one normaliser,
folded into profile state by ``profiles.state``, events read back from their stored payloads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise
from chorus.profiles import state as profile_state
from chorus.segments.person import Event, MessageRecord, Person
from chorus.timeutil import iso

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)


def at(days: float = 0, hours: float = 0) -> datetime:
    return T0 + timedelta(days=days, hours=hours)


def msg(when: datetime, **fields) -> dict:
    """A track message (``event=...``) or any other type (``type=...``) from the server write key."""
    fields.setdefault("type", "track")
    fields.setdefault("userId", "u1")
    return {**fields, "timestamp": iso(when)}


def person(*messages: dict, pid: str = "p1", **extra) -> Person:
    """Fold ``messages`` into a profile as the resolver does, and keep their events."""
    state = profile_state.empty()
    events = []
    for i, raw in enumerate(messages):
        raw = {"messageId": f"m{i:04d}", **raw}
        ev = normalise(raw, received_at=parse(raw["timestamp"]), source_kind="server")
        assert isinstance(ev, Stored), ev
        profile_state.apply_event(state, ev.payload, "user_id:u1")
        events.append(Event.from_payload(ev.payload))
    return Person(pid, state=state, events=tuple(events), **extra)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def record(message_id: str, status: str, when: datetime, **fields) -> MessageRecord:
    return MessageRecord(message_id, status, when, **{"channel": "email", **fields})
