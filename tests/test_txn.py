"""store.txn: what a transaction keeps for its commit follows its savepoints, its rollback and the pool."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.store import txn

SEEN = txn.Buffer("test_txn")


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
