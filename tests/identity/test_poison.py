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


def _raw(engine, ws: str, payloads: list[dict]) -> None:
    """Events stored as they were before the door checked them (rows from an older version, or bypassing it)."""
    with engine.begin() as conn:
        conn.execute(events.insert(), [
            {"workspace_id": ws, "message_id": p["messageId"], "type": p.get("type", "track"), "event": "X",
             "channel": "web", "user_id": None, "anonymous_id": None, "timestamp": T0, "received_at": T0,
             "source_id": None, "trusted": True, "payload": {"timestamp": "2026-01-01T00:00:00.000000Z", **p}}
            for p in payloads
        ])  # fmt: skip


def _goods(n: int, tag: str) -> list[dict]:
    return [{"type": "track", "userId": f"{tag}-{i % 50}", "anonymousId": f"a-{tag}-{i}", "event": "E",
             "messageId": f"{tag}-{i}"} for i in range(n)]  # fmt: skip


def test_poisoned_events_cost_o1_passes_each_and_stall_nothing(engine, workspace):
    from chorus import workspaces

    ws, other = workspace["id"], workspaces.create(engine, "other")["id"]
    send(engine, ws, _goods(600, "g"))
    send(engine, other, _goods(400, "o"))
    base = {"type": "track", "event": "X"}
    found_early = [  # what the resolver finds before changing anything: rejected in the batch's own transaction
        {**base, "messageId": "p-noid"},
        {**base, "messageId": "p-noid2", "context": {"traits": {"email": "broken@@x"}}},
        {**base, "messageId": "p-ts", "userId": "u", "timestamp": 5},
        {**base, "messageId": "p-ts2", "userId": "u", "timestamp": "not a time"},
    ]
    found_folding = [  # found while folding state (half done): one retry of the batch without it
        {**base, "messageId": f"p-ctx{i}", "userId": "u", "context": ["not", "an", "object"]} for i in range(4)
    ]
    once_fatal = [  # the malformed externalIds: identifier extraction now skips what is not an id
        {**base, "messageId": "x-1", "userId": "ux", "context": {"externalIds": {"type": []}}},
        {**base, "messageId": "x-2", "userId": "ux", "context": {"externalIds": [{"type": []}, "x", 3]}},
        {**base, "messageId": "x-3", "userId": "ux", "context": {"externalIds": [{"type": "loyalty_id", "id": {}}]}},
    ]  # fmt: skip
    _raw(engine, ws, found_early + found_folding + once_fatal)
    r = Resolver(engine)
    while r.process_pending(500):
        pass
    windows = -(-(600 + 400 + 11) // 500)  # 3 batches of 500
    # each early poison costs nothing; each folding poison one rejection and one retry (never the window)
    assert r.passes <= windows + 2 * len(found_folding), r.passes
    with engine.connect() as conn:
        rejected = set(conn.execute(sa.select(rejected_events.c.message_id)).scalars())
        assert rejected == {p["messageId"] for p in found_early + found_folding}
        assert conn.execute(sa.select(sa.func.count()).select_from(events).where(events.c.profile_id.is_(None))
                            ).scalar_one() == 0  # fmt: skip
        assert conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one() == 600 + 400 + 3
    assert len(partition(engine, ws)) == 51 and len(partition(engine, other)) == 50  # 50 users (+ ux)


def _trap(engine) -> None:
    """A database that refuses some identifiers: a failure no event's data announces (real trigger, no mock)."""
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER trap BEFORE INSERT ON identifiers WHEN NEW.ident LIKE 'user_id:trap%' "
                "BEGIN SELECT RAISE(ABORT, 'identifier refused'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE OR REPLACE FUNCTION trap() RETURNS trigger AS $$ BEGIN "
                "IF NEW.ident LIKE 'user_id:trap%%' THEN RAISE EXCEPTION 'identifier refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER trap BEFORE INSERT ON identifiers FOR EACH ROW EXECUTE FUNCTION trap()"
            )


def _untrap(engine) -> None:
    with engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("DROP TRIGGER trap")
        else:
            conn.exec_driver_sql("DROP TRIGGER trap ON identifiers")
            conn.exec_driver_sql("DROP FUNCTION trap()")


def test_a_failure_naming_no_event_is_bisected_to_that_event(engine, workspace):
    ws = workspace["id"]
    goods = _goods(256, "g")
    traps = [{"type": "track", "userId": f"trap-{i}", "event": "E", "messageId": f"trap-{i}"} for i in range(2)]
    send(engine, ws, goods[:100] + traps[:1] + goods[100:200] + traps[1:] + goods[200:])
    _trap(engine)
    try:
        r = Resolver(engine)
        assert r.process_pending(1000) == 258
    finally:
        _untrap(engine)
    # 1 failed batch, then per trap about 2 log2(258) transactions: far from one per event
    assert r.passes <= 1 + 2 * (2 * 9 + 1), r.passes
    with engine.connect() as conn:
        rej = conn.execute(sa.select(rejected_events.c.message_id, rejected_events.c.reason)).all()
        assert {m for m, _ in rej} == {"trap-0", "trap-1"} and all("identifier refused" in why for _, why in rej)
        assert conn.execute(sa.select(sa.func.count()).select_from(events).where(events.c.profile_id.is_(None))
                            ).scalar_one() == 0  # fmt: skip
    assert len(partition(engine, ws)) == 50
