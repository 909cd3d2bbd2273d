"""A database that is busy or gone for a moment is nobody's fault: the events stay pending and are resolved on
the next pass, never rejected (the resolver rejects only events that fail on their own)."""

from __future__ import annotations

import sqlite3
import threading

import sqlalchemy as sa

from chorus.identity.resolver import Resolver, transient
from chorus.store.db import create_engine
from chorus.store.tables import events, rejected_events
from tests.identity.helpers import send


def test_a_locked_sqlite_store_leaves_the_events_pending_then_resolves_them(tmp_path, monkeypatch):
    monkeypatch.setattr("chorus.store.db.BUSY_TIMEOUT_MS", 200)  # the queue's wait and SQLite's, both short
    from chorus import workspaces
    from chorus.store.db import upgrade

    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = create_engine(url)
    ws = workspaces.create(engine, "shop")["id"]
    send(engine, ws, [{"type": "identify", "userId": f"u{i}", "messageId": f"m{i}"} for i in range(20)])

    holder = sqlite3.connect(tmp_path / "c.db", isolation_level=None)  # another program holding the write lock
    holder.execute("BEGIN IMMEDIATE")
    resolver = Resolver(engine)
    failed: list[BaseException] = []
    t = threading.Thread(target=lambda: _run(resolver, failed))
    t.start()
    t.join(30)
    holder.execute("ROLLBACK")
    holder.close()
    assert failed and transient(failed[0]), failed  # the worker loop logs it and tries again after its poll
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(rejected_events)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).where(events.c.profile_id.is_(None))).scalar_one() == 20
    while resolver.process_pending(100):
        pass
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).where(events.c.profile_id.is_(None))).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(rejected_events)).scalar_one() == 0
    engine.dispose()


def _run(resolver: Resolver, failed: list) -> None:
    try:
        resolver.process_pending(100)
    except Exception as exc:  # noqa: BLE001 - what the worker loop would see
        failed.append(exc)


def test_what_counts_as_transient():
    locked = sa.exc.OperationalError("UPDATE profiles", {}, sqlite3.OperationalError("database is locked"))
    assert transient(locked)
    constraint = sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert not transient(constraint)
    assert not transient(ValueError("a bad event"))
