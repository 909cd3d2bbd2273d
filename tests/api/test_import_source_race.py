"""The source row of an import channel (and of a webhook, Chorus' own events) is created on first use. Two first
uses at once must both get the one row: the second waits for the first transaction and reads its row, never a
500 on uq_sources_workspace_id_name (PostgreSQL: two imports naming a new channel at the same moment)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.store.tables import sources

PG = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
# sessions of this database waiting for a lock (the second insert of a name waits for the first transaction)
WAITING = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)


def _wait_for_lock_wait(engine, thread) -> int:
    deadline, waiting = time.monotonic() + 10, 0
    # autocommit: within one transaction pg_stat_activity answers the snapshot its first read took
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
        while time.monotonic() < deadline and thread.is_alive():
            waiting = watch.execute(WAITING).scalar_one()
            if waiting:
                break
            time.sleep(0.02)
    return waiting


@PG
def test_two_first_uses_at_once_share_one_source_row(engine):
    ws = workspaces.create(engine, "race")["id"]
    name = f"import:store-{uuid.uuid4().hex[:6]}"
    first = engine.connect()
    tx = first.begin()
    mine = workspaces.internal_source(first, ws, "import", name)  # inserted, not yet committed
    out: dict = {}

    def other():
        try:
            with engine.begin() as conn:
                out["source"] = workspaces.internal_source(conn, ws, "import", name)
        except Exception as exc:  # noqa: BLE001 - the assertion below shows what it was
            out["error"] = exc

    thread = threading.Thread(target=other)
    thread.start()
    try:
        # the other transaction did not see the uncommitted row: its insert waits on the unique index
        assert _wait_for_lock_wait(engine, thread), f"the second first use never waited for the first: {out}"
        tx.commit()
    finally:
        thread.join(15)
        first.close()
    assert "error" not in out, repr(out.get("error"))
    assert out["source"] == mine
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sources.c.id).where(sources.c.workspace_id == ws, sources.c.name == name)).all()
    assert [r.id for r in rows] == [mine.id]


@PG
def test_first_use_after_the_other_rolled_back_creates_the_row(engine):
    ws = workspaces.create(engine, "race")["id"]
    name = f"import:store-{uuid.uuid4().hex[:6]}"
    first = engine.connect()
    tx = first.begin()
    workspaces.internal_source(first, ws, "import", name)
    out: dict = {}

    def other():
        try:
            with engine.begin() as conn:
                out["source"] = workspaces.internal_source(conn, ws, "import", name)
        except Exception as exc:  # noqa: BLE001
            out["error"] = exc

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert _wait_for_lock_wait(engine, thread)
        tx.rollback()
    finally:
        thread.join(15)
        first.close()
    assert "error" not in out, repr(out.get("error"))
    with engine.connect() as conn:
        ids = conn.execute(sa.select(sources.c.id).where(sources.c.workspace_id == ws, sources.c.name == name)).all()
    assert [r.id for r in ids] == [out["source"].id]


def test_a_name_taken_by_another_kind_is_a_conflict_naming_the_source(engine):
    from chorus.errors import Conflict

    ws = workspaces.create(engine, "race")["id"]
    with engine.begin() as conn:
        workspaces.internal_source(conn, ws, "webhook", "shared-name")
    with engine.begin() as conn, pytest.raises(Conflict) as err:
        workspaces.internal_source(conn, ws, "import", "shared-name")
    assert err.value.field == "source"
