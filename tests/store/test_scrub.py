"""scrub(): what it cannot do yet is reported, never silently skipped (a reader's snapshot on SQLite, a lock held
on PostgreSQL), and done once the obstacle is gone."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from chorus.store.db import create_engine, scrub
from chorus.store.tables import computed_traits


def _row(engine, name: str) -> None:
    from chorus.timeutil import utcnow

    with engine.begin() as conn:
        conn.execute(computed_traits.insert().values(workspace_id="w", profile_id="p", name=name, value=1,
                                                     model="m", computed_at=utcnow()))  # fmt: skip


def test_every_sqlite_connection_zeroes_freed_space(engine):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA secure_delete").scalar() == 1


def test_a_reader_holding_a_snapshot_is_reported_then_the_wal_is_emptied(engine, db_url):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    path = sa.make_url(db_url).database
    _row(engine, "a")
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM computed_traits").fetchone()  # holds the snapshot with "a"
    _row(engine, "b")  # written after the reader's snapshot: the WAL cannot be reset under it
    result = scrub(engine, ["computed_traits"], attempts=1)  # VACUUM writes beside a reader (WAL); the reset waits
    assert result["done"] == ["VACUUM"] and "snapshot" in result["pending"]["wal"]
    reader.execute("COMMIT")
    reader.close()
    assert scrub(engine, ["computed_traits"]) == {"done": ["VACUUM", "wal_checkpoint(TRUNCATE)"], "pending": {}}
    with open(path + "-wal", "rb") as fh:
        assert fh.read() == b""


def _plant(path: str, table: str, data: bytes) -> None:
    """Write ``data`` into the unused space of a live leaf page of ``table``, between its cell pointers and its
    cells: where SQLite leaves a stale copy of a row it moved to another page (a page is rebuilt by a split, and the
    old bytes of its cells that went elsewhere stay there until new cells overwrite them). ``secure_delete`` zeroes
    a deleted cell where it is, not such a copy; an outside probe found an erased person's event whole in one."""
    db = sqlite3.connect(path)
    size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = [n for (n,) in db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (table,))]
    db.close()
    with open(path, "r+b") as fh:
        for n in pages:
            fh.seek((n - 1) * size + (100 if n == 1 else 0))
            head = fh.read(8)
            cells, start = int.from_bytes(head[3:5], "big"), int.from_bytes(head[5:7], "big") or 65536
            gap = (8 + 2 * cells, start - (100 if n == 1 else 0))
            if gap[1] - gap[0] >= len(data) + 16:
                fh.seek((n - 1) * size + (100 if n == 1 else 0) + gap[0] + 8)
                fh.write(data)
                return
    raise AssertionError(f"no leaf page of {table} with room")


def _count(path: str, data: bytes) -> int:
    import pathlib

    return sum(p.read_bytes().count(data) for p in pathlib.Path(path).parent.glob(pathlib.Path(path).name + "*"))


@pytest.mark.parametrize("vacuum", ["plain", "full"])
def test_a_stale_copy_in_a_live_pages_unused_space_is_cleared_by_full(engine, db_url, vacuum):
    """``full`` (the default) leaves none of it: VACUUM writes every page anew from the live rows. ``plain`` only
    empties the WAL and leaves it (the limit docs/operations.md states)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    path = sa.make_url(db_url).database
    for i in range(40):
        _row(engine, f"trait-{i}")
    engine.dispose()  # the last connection checkpoints: every page is in the file
    secret = b"stale-copy-of-ana@example.com"
    _plant(path, "computed_traits", secret)
    assert _count(path, secret) == 1
    fresh = create_engine(db_url)
    try:
        result = scrub(fresh, ["computed_traits"], vacuum=vacuum)
        assert result["pending"] == {}
        with fresh.connect() as conn:  # nothing live was lost or damaged
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
            assert conn.execute(sa.select(sa.func.count()).select_from(computed_traits)).scalar() == 40
    finally:
        fresh.dispose()
    assert _count(path, secret) == (1 if vacuum == "plain" else 0)


def test_a_table_locked_by_a_long_transaction_is_reported_not_waited_for(engine, db_url):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    _row(engine, "a")
    other = create_engine(db_url)
    try:
        with other.begin() as conn:
            conn.execute(sa.select(computed_traits)).all()  # an ACCESS SHARE lock until the commit
            result = scrub(engine, ["computed_traits", "dead_addresses"], lock_timeout="300ms")
        assert result["done"] == ["dead_addresses"]
        assert "lock timeout" in result["pending"]["computed_traits"]
        assert scrub(engine, ["computed_traits"], vacuum="plain") == {"done": ["computed_traits"], "pending": {}}
        assert scrub(engine, ["computed_traits"]) == {"done": ["computed_traits"], "pending": {}}
        with engine.connect() as conn:  # the session's lock_timeout was put back
            assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "0"
    finally:
        other.dispose()


def test_unknown_vacuum_mode_is_refused(engine):
    with pytest.raises(ValueError, match="vacuum must be one of full, plain"):
        scrub(engine, [], vacuum="fast")


def test_a_table_the_role_does_not_own_is_reported(engine, db_url):
    """VACUUM by a role that does not own the table only warns and skips it: that must not read as done."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    import secrets

    role = f"chorus_not_owner_{secrets.token_hex(4)}"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN')
    guest = create_engine(sa.make_url(db_url).set(username=role).render_as_string(hide_password=False))
    try:
        result = scrub(guest, ["computed_traits"], vacuum="plain")
        assert result["done"] == [] and "does not own" in result["pending"]["computed_traits"]
    finally:
        guest.dispose()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


def test_a_snapshot_older_than_the_delete_is_waited_for_then_reported(engine, db_url):
    """Found when the machine was loaded: VACUUM keeps a deleted row that an older snapshot may still read (FULL
    copies it into the new files), so a scrub that ran then said "done" and left the bytes. It now waits for such
    snapshots, and reports the tables pending when they outlast it."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    _row(engine, "a")
    other = create_engine(db_url)
    try:
        with other.connect() as conn:
            tx = conn.begin()
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            conn.execute(sa.select(computed_traits)).all()  # its snapshot still sees "a" after the delete below
            with engine.begin() as c:
                c.execute(computed_traits.delete())
            result = scrub(engine, ["computed_traits"], attempts=1)
            assert result["done"] == [] and "older than the erasure" in result["pending"]["computed_traits"]
            tx.rollback()
        assert scrub(engine, ["computed_traits"]) == {"done": ["computed_traits"], "pending": {}}
    finally:
        other.dispose()
