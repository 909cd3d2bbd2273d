"""An event that identity resolution cannot process is moved to the rejected events; the queue keeps going."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.identity.resolver import Resolver
from chorus.store.tables import events, rejected_events
from tests.identity.helpers import T0, partition, send


def test_poison_event_is_rejected_with_reason_and_others_resolve(engine, workspace):
    ws = workspace["id"]
    send(engine, ws, [{"type": "track", "userId": "u1", "event": "A", "messageId": "good-1"}])
    with engine.begin() as conn:  # a row that bypassed validation: no identifier at all
        conn.execute(events.insert().values(
            workspace_id=ws, message_id="poison", type="track", event="B", channel="web", user_id=None,
            anonymous_id=None, timestamp=T0, received_at=T0, source_id=None, trusted=True,
            payload={"type": "track", "event": "B", "messageId": "poison", "timestamp": "2026-01-01T00:00:00.000000Z"},
        ))  # fmt: skip
    send(engine, ws, [{"type": "track", "userId": "u2", "event": "C", "messageId": "good-2"}])
    r = Resolver(engine)
    while r.process_pending(100):
        pass
    assert partition(engine, ws) == {frozenset({"user_id:u1"}), frozenset({"user_id:u2"})}
    with engine.connect() as conn:
        rej = conn.execute(sa.select(rejected_events)).one()
        assert rej.message_id == "poison" and "identity resolution failed" in rej.reason
        assert (
            conn.execute(
                sa.select(sa.func.count()).select_from(events).where(events.c.profile_id.is_(None))
            ).scalar_one()
            == 0
        )


def test_poison_event_keeps_identifiers_for_erasure(engine, workspace):
    ws = workspace["id"]
    with engine.begin() as conn:  # an email-only event whose email cannot be used: nothing identifies it
        conn.execute(events.insert().values(
            workspace_id=ws, message_id="p2", type="track", event="B", channel="store", user_id=None,
            anonymous_id=None, timestamp=T0, received_at=T0, source_id=None, trusted=True,
            payload={"type": "track", "event": "B", "messageId": "p2", "timestamp": "2026-01-01T00:00:00.000000Z",
                     "context": {"traits": {"email": "Broken@@Example.com", "phone": "+33 6 12"}}},
        ))  # fmt: skip
    Resolver(engine).drain()
    with engine.connect() as conn:
        rej = conn.execute(sa.select(rejected_events)).one()
    assert rej.identifiers == {"email": ["broken@@example.com"], "phone": ["33612"]}
