"""An opt-out applied before its event is resolved survives a replay that the resolver ran meanwhile (PostgreSQL,
where they can interleave; SQLite has one writer).

``messaging.consent.record`` (a STOP keyword, an unsubscribe link) stores its ``Consent Updated`` event and applies
the opt-out to the profile's state at once, under the identity lock, so that no message goes out before the event
is resolved. A resolver batch read before that event committed, and waiting for the lock meanwhile, must not
rebuild the profile's state (a merge's replay) from the events it knows and drop the opt-out."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.identity.resolver import Resolver
from chorus.messaging import consent
from chorus.profiles import views
from chorus.store.tables import events, rejected_events
from tests.identity.helpers import T0, profile_of, resolve, send


def _waiting_on_an_advisory_lock(engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                         "AND database = (SELECT oid FROM pg_database WHERE datname = "
                                         "current_database())")).scalar_one())  # fmt: skip


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    return engine


def _two_profiles_and_a_pending_merge(engine) -> tuple[str, str]:
    """u1 (with a phone) and the anonymous a1 are two profiles; the identify that merges them is pending."""
    ws = workspaces.create(engine, "optout-race")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat(),
                       "traits": {"phone": "+31612345678"}},
                      {"type": "track", "event": "Viewed", "anonymousId": "a1", "messageId": "v1",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    resolve(engine)
    known = profile_of(engine, ws, "user_id:u1")
    assert known != profile_of(engine, ws, "anonymous_id:a1")
    # pending: the identify that merges the two (the resolver replays the component)
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    return ws, known


def _whatsapp_consent(engine, ws: str) -> dict | None:
    survivor = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        view = views.get_profile(conn, ws, survivor, workspaces.get(conn, ws).identity)
    return view["consent"].get("whatsapp:*")


def _stop(conn, ws: str, profile_id: str, key: str = "wamid-1") -> None:
    consent.record(conn, ws, {"userId": "u1"}, channel="whatsapp", topic="*", status="denied", reason="STOP",
                   at=T0, direction="inbound", key=key, profile_id=profile_id, unique_key=True)  # fmt: skip


def _wait_for_a_waiter(engine) -> None:
    deadline = time.monotonic() + 20
    while not _waiting_on_an_advisory_lock(engine):
        assert time.monotonic() < deadline, "nobody waited for the identity lock"
        time.sleep(0.02)


def test_an_opt_out_applied_while_a_replay_waits_for_the_lock_is_kept(pg):
    engine = pg
    ws, known = _two_profiles_and_a_pending_merge(engine)
    stop = engine.connect()
    stop.begin()
    done: list[int] = []
    resolver = threading.Thread(target=lambda: done.append(Resolver(engine).process_pending()), daemon=True)
    try:
        _stop(stop, ws, known)
        resolver.start()  # reads the merge (not the uncommitted STOP), then waits for the identity lock
        _wait_for_a_waiter(engine)
    finally:
        stop.commit()
        stop.close()
    resolver.join(30)
    assert done and done[0] >= 1
    assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"


def test_an_opt_out_whose_event_another_worker_holds_survives_a_replay(pg):
    engine = pg
    ws, known = _two_profiles_and_a_pending_merge(engine)
    with engine.begin() as conn:
        _stop(conn, ws, known)
    assert _whatsapp_consent(engine, ws)["status"] == "denied"
    other = engine.connect()  # another worker's batch holds the STOP's row (it waits for the lock we will take)
    other.begin()
    try:
        held = other.execute(sa.text("SELECT seq FROM events WHERE profile_id IS NULL AND event = 'Consent Updated' "
                                     "FOR UPDATE")).all()  # fmt: skip
        assert len(held) == 1
        assert Resolver(engine).process_pending() >= 1  # the merge, replayed without the STOP in its batch
        assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"
    finally:
        other.rollback()
        other.close()


def test_an_opt_out_for_a_profile_merged_away_while_it_waited_goes_to_the_survivor(pg):
    engine = pg
    ws, _known = _two_profiles_and_a_pending_merge(engine)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    holder = engine.connect()
    holder.begin()
    holder.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    resolver = threading.Thread(target=lambda: Resolver(engine).process_pending(), daemon=True)
    errors: list[Exception] = []

    def writer():
        try:
            with engine.begin() as conn:  # the STOP names the anonymous profile, which the merge retires
                consent.record(conn, ws, {"anonymousId": "a1"}, channel="whatsapp", topic="*", status="denied",
                               reason="STOP", at=T0, direction="inbound", key="wamid-2", profile_id=anon,
                               unique_key=True)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    stopper = threading.Thread(target=writer, daemon=True)
    try:
        resolver.start()
        _wait_for_a_waiter(engine)
        stopper.start()  # stores its event, then queues for the lock behind the resolver
        time.sleep(0.5)
    finally:
        holder.commit()
        holder.close()
    resolver.join(30)
    stopper.join(30)
    assert not errors, errors
    assert profile_of(engine, ws, "anonymous_id:a1") == profile_of(engine, ws, "user_id:u1")
    assert (_whatsapp_consent(engine, ws) or {}).get("status") == "denied"


def test_a_pending_grant_that_is_then_rejected_never_stands_over_an_opt_out(engine):
    """A replay re-applies only the opt-outs Chorus applied early (``record``'s own denials): a pending grant from
    anyone waits for its batch, which here rejects it (a stored timestamp the resolver refuses)."""
    ws = workspaces.create(engine, "grant-race")["id"]
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()},
                      {"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "c0",
                       "timestamp": T0.isoformat(), "properties": {"channel": "whatsapp", "status": "denied"}},
                      {"type": "track", "event": "Viewed", "anonymousId": "a1", "messageId": "v1",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    resolve(engine)
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": T0.isoformat()}])  # fmt: skip
    send(engine, ws, [{"type": "track", "event": "Consent Updated", "userId": "u1", "messageId": "bad",
                       "timestamp": T0.isoformat(), "properties": {"channel": "whatsapp", "status": "granted"}}])
    with engine.begin() as conn:
        row = conn.execute(sa.select(events.c.seq, events.c.payload).where(events.c.message_id == "bad")).one()
        conn.execute(events.update().where(events.c.seq == row.seq).values(payload={**row.payload,
                                                                                    "timestamp": "zzzz"}))  # fmt: skip
    Resolver(engine).process_pending(limit=1)  # the merge alone: a replay, the bad grant still pending
    resolve(engine)
    with engine.connect() as conn:
        rejected = {r.message_id for r in conn.execute(sa.select(rejected_events.c.message_id))}
    assert "bad" in rejected
    assert _whatsapp_consent(engine, ws)["status"] == "denied"
