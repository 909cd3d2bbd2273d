"""The change feed under concurrency on PostgreSQL: recording never deadlocks with the other locks a transaction
takes, and pruning never deletes a change a consumer still has to handle (found by review, decision 0024)."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.identity.resolver import Resolver
from chorus.messaging import consent
from chorus.profiles import feed
from chorus.store.tables import profile_changes
from chorus.timeutil import utcnow
from tests.identity.helpers import profile_of, resolve, send


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    return engine


def test_a_status_then_consent_never_deadlocks_with_the_resolver(pg):
    """A bounce records the message's status (the feed), then the opt-out (consent takes the workspace's identity
    lock), while the resolver holds that lock and records the same person's changes."""
    ws = workspaces.create(pg, "dl-" + uuid.uuid4().hex[:6])["id"]
    send(pg, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z",
                   "traits": {"email": "ana@example.com"}}])  # fmt: skip
    resolve(pg)
    pid = profile_of(pg, ws, "user_id:u1")
    send(pg, ws, [{"type": "track", "userId": "u1", "event": "X", "messageId": "m2",
                   "timestamp": "2026-01-01T11:00:00Z"}])  # fmt: skip
    errors: list = []
    with pg.connect() as conn:
        tx = conn.begin()
        feed.record(conn, ws, [feed.Change(pid, "message", detail={"status": "bounced"})])
        def resolver():
            try:
                Resolver(pg).process_pending()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=resolver)
        t.start()
        time.sleep(1.0)  # the resolver now holds the identity lock and records her event
        consent.record(conn, ws, {"userId": "u1"}, channel="email", topic="*", status="denied", reason="bounce",
                       at=utcnow(), direction="outbound", key="k1", profile_id=pid)  # fmt: skip
        tx.commit()
        t.join(30)
    assert not errors and not t.is_alive()
    causes = [c for (c,) in _rows(pg, ws)]
    assert sorted(causes) == ["consent", "event", "event", "message"]


def test_transactions_recording_in_two_workspaces_in_opposite_orders_do_not_deadlock(pg):
    errors: list = []

    def tx(first, second):
        try:
            with pg.begin() as conn:
                feed.record(conn, first[0], [feed.Change(first[1], "message")])
                time.sleep(0.5)
                feed.record(conn, second[0], [feed.Change(second[1], "message")])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    a, b = ("ws_a", "p_1"), ("ws_b", "p_2")
    threads = [threading.Thread(target=tx, args=(a, b)), threading.Thread(target=tx, args=(b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_prune_never_deletes_a_change_committed_while_it_runs(pg):
    ws = workspaces.create(pg, "pr-" + uuid.uuid4().hex[:6])["id"]
    name = "c-" + uuid.uuid4().hex[:6]
    feed.subscribe(pg, name)
    erase_conn = pg.connect()  # a transaction that commits while prune runs
    erase_tx = erase_conn.begin()
    old = utcnow() - timedelta(days=8)  # old enough to be pruned once handled
    feed.record(erase_conn, ws, [feed.Change("p_late", "consent")], old)
    erase_conn.execute(sa.text("SELECT 1"))  # (the change is written at commit)
    with pg.begin() as conn:
        feed.record(conn, ws, [feed.Change("p_other", "event")], old)
    prune_conn = pg.connect()

    @sa.event.listens_for(prune_conn, "before_cursor_execute")
    def commit_the_erasure_first(conn, cursor, statement, params, context, executemany):
        if statement.startswith("DELETE FROM profile_changes") and erase_tx.is_active:
            erase_tx.commit()

    with prune_conn.begin():
        feed.prune(prune_conn, utcnow())
    prune_conn.close()
    erase_conn.close()
    got: list = []
    feed.consume(pg, name, lambda c, w, p, chs: got.extend((p, x.cause) for x in chs))
    assert ("p_late", "consent") in got


def _rows(engine, ws):
    with engine.connect() as conn:
        return conn.execute(sa.select(profile_changes.c.cause).where(profile_changes.c.workspace_id == ws)).all()
