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
from tests.identity.helpers import T0, profile_of, resolve, send


def _waiting_on_an_advisory_lock(engine) -> bool:
    with engine.connect() as conn:
        return bool(conn.execute(sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                         "AND database = (SELECT oid FROM pg_database WHERE datname = "
                                         "current_database())")).scalar_one())  # fmt: skip


def test_an_opt_out_applied_while_a_replay_waits_for_the_lock_is_kept(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
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

    stop = engine.connect()
    stop.begin()
    consent.record(stop, ws, {"userId": "u1"}, channel="whatsapp", topic="*", status="denied", reason="STOP",
                   at=T0, direction="inbound", key="wamid-1", profile_id=known, unique_key=True)  # fmt: skip
    done: list[int] = []
    resolver = threading.Thread(target=lambda: done.append(Resolver(engine).process_pending()))
    resolver.start()  # reads the merge (not the uncommitted STOP), then waits for the identity lock
    deadline = time.monotonic() + 20
    while not _waiting_on_an_advisory_lock(engine):
        assert time.monotonic() < deadline, "the resolver never waited for the identity lock"
        time.sleep(0.02)
    stop.commit()
    stop.close()
    resolver.join(30)
    assert done and done[0] >= 1

    survivor = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        cfg = workspaces.get(conn, ws).identity
        view = views.get_profile(conn, ws, survivor, cfg)
    assert view["consent"]["whatsapp:*"]["status"] == "denied", view["consent"]
