"""store.txn: what a transaction keeps for its commit follows its savepoints, its rollback and the pool."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.store import txn

SEEN = txn.Buffer("test_txn", lambda conn, items: None, order=50)


def test_savepoints_nest_and_a_rolled_back_one_drops_only_its_own(engine):
    with engine.connect() as conn:
        conn.begin()
        SEEN.add(conn, [1])
        outer = conn.begin_nested()
        SEEN.add(conn, [2])
        inner = conn.begin_nested()
        SEEN.add(conn, [3])
        inner.rollback()
        SEEN.add(conn, [4])
        outer.commit()  # released: its items stay
        again = conn.begin_nested()
        SEEN.add(conn, [5])
        again.rollback()
        assert SEEN.take(conn) == [1, 2, 4]
        assert SEEN.take(conn) == []  # taken once
        conn.rollback()


def test_drop_keeps_the_marks_of_the_savepoints_on_what_is_kept(engine):
    with engine.connect() as conn:
        conn.begin()
        SEEN.add(conn, ["a", "x", "b"])
        sp = conn.begin_nested()
        SEEN.add(conn, ["x", "c"])
        SEEN.drop(conn, lambda v: v == "x")
        sp.rollback()  # drops "c" (and the "x" dropped already), nothing from before the savepoint
        assert SEEN.take(conn) == ["a", "b"]
        conn.rollback()


def test_a_rollback_or_a_connection_back_in_the_pool_keeps_nothing(engine):
    with engine.connect() as conn:
        conn.begin()
        SEEN.add(conn, [1])
        conn.rollback()
        assert SEEN.take(conn) == []
        SEEN.add(conn, [2])  # autobegun, then the connection goes back without commit or rollback
        dbapi = conn.connection.dbapi_connection
    for _ in range(5):  # the pool hands the same DBAPI connection out again: it keeps nothing of the last user
        with engine.connect() as conn:
            if conn.connection.dbapi_connection is dbapi:
                assert SEEN.take(conn) == []
                break
            conn.execute(sa.text("SELECT 1"))
    else:
        raise AssertionError("the pool never handed that connection out again: the test proves nothing")


def test_a_commit_that_a_buffer_fails_counts_nothing(engine, monkeypatch):
    """Review: the metrics' counts ran in the commit event before the feed wrote its changes there; a feed write
    that failed rolled the transaction back after its counts were made (a retry then counted twice)."""
    import pytest
    from prometheus_client import Counter

    from chorus import metrics
    from chorus.profiles import feed

    probe = Counter("test_txn_probe", "probe", registry=None)

    def failing(*a, **k):
        raise RuntimeError("the feed's write failed (a lock timeout, a deadlock)")

    monkeypatch.setattr(feed.bulk, "insert_rows", failing)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        metrics.after_commit(conn, probe.inc)
        feed.record(conn, "ws", [feed.Change("p1", "created")])
    assert probe._value.get() == 0, "counted for a transaction that rolled back"


def test_a_connection_lost_mid_transaction_is_still_said_to_be_transient(engine, db_url):
    """Review: the rollback listener read the invalidated connection's info, and its PendingRollbackError replaced
    the disconnect: ``db.transient`` no longer saw a transient failure (the resolver then split a good batch)."""
    import pytest

    from chorus.store.db import transient

    if not db_url.startswith("postgresql"):
        pytest.skip("a server to kill the connection of")
    admin = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(Exception) as info, engine.begin() as conn:
            SEEN.add(conn, [1])
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
            with admin.connect() as a:
                a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.execute(sa.text("SELECT 1"))
        assert transient(info.value), repr(info.value)
    finally:
        admin.dispose()


def test_no_listener_hides_the_failure_of_a_lost_connection(tmp_path):
    """Review: after store.txn, three other listeners (the journeys' and segments' parsed definitions dropped on a
    savepoint rolled back, the SQLite writer queue's release) still read the invalidated connection, and their
    PendingRollbackError replaced the real error."""
    import pytest

    import chorus.journeys.runtime  # noqa: F401  its rollback_savepoint listener
    import chorus.segments.store  # noqa: F401  its rollback_savepoint listener
    from chorus.store.db import create_engine

    queued = create_engine(f"sqlite:///{tmp_path / 'q.db'}")  # with the writer queue
    with pytest.raises(Exception) as info, queued.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        conn.invalidate()  # what SQLAlchemy does on a disconnect
        raise RuntimeError("the original error")
    assert isinstance(info.value, RuntimeError), repr(info.value)
    plain = sa.create_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with pytest.raises(Exception) as info, plain.connect() as conn:
        conn.begin()
        with conn.begin_nested():
            conn.invalidate()
            raise RuntimeError("the original error")
    assert isinstance(info.value, RuntimeError), repr(info.value)
    queued.dispose()
    plain.dispose()


def test_a_connection_lost_inside_a_savepoint_is_still_said_to_be_transient(engine, db_url):
    import pytest

    import chorus.journeys.runtime  # noqa: F401
    import chorus.segments.store  # noqa: F401
    from chorus.store.db import transient

    if not db_url.startswith("postgresql"):
        pytest.skip("a server to kill the connection of")
    admin = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(Exception) as info, engine.begin() as conn:
            with conn.begin_nested():
                pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
                with admin.connect() as a:
                    a.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                conn.execute(sa.text("SELECT 1"))
        assert transient(info.value), repr(info.value)
    finally:
        admin.dispose()
