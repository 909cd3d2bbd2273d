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
    result = scrub(engine, ["computed_traits"], attempts=1)
    assert result["done"] == [] and "snapshot" in result["pending"]["wal"]
    reader.execute("COMMIT")
    reader.close()
    assert scrub(engine, ["computed_traits"]) == {"done": ["wal_checkpoint(TRUNCATE)"], "pending": {}}
    with open(path + "-wal", "rb") as fh:
        assert fh.read() == b""


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
