"""A person's pending changes are found by the index, on both engines, for every consumer: a merge hands hers over
to the survivor, an erasure locks (PostgreSQL) and deletes them.

``feed_pending``'s index leads with the consumer (a claim reads one consumer's rows). The merge's and the
erasure's statements named the workspace and the person but no consumer, so both engines read every pending row
of every consumer, once per merge: 340,000 rows behind the 1,000,000-customer import of docs/benchmarks.md. Plans
(SQLite's EXPLAIN QUERY PLAN, PostgreSQL's EXPLAIN after ANALYZE), and what the statements do."""

from __future__ import annotations

import re

import sqlalchemy as sa

from chorus.profiles import feed
from chorus.store.tables import feed_consumers, feed_pending
from chorus.timeutil import utcnow
from tests.plans import plan, statements

CONSUMERS = ("audiences", "journeys", "segments")
PEOPLE = 400  # pending rows: PEOPLE x 5 changes x 3 consumers


class _Person:
    def __init__(self, ids):
        self.profile_ids = ids


def _fill(engine, ws: str) -> None:
    with engine.begin() as conn:
        conn.execute(feed_consumers.insert(), [{"name": n, "since": utcnow()} for n in CONSUMERS])
        conn.execute(feed_pending.insert(), [
            {"seq": 1 + i * 5 + k, "consumer": n, "workspace_id": ws, "profile_id": f"p{i}", "attempts": 0}
            for i in range(PEOPLE) for k in range(5) for n in CONSUMERS])  # fmt: skip
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")  # the statistics a running store has (the feed task analyses its tables)


def _by_index(engine, statements) -> None:
    assert statements
    for statement, params in statements:
        got = plan(engine, statement, params)
        if engine.dialect.name == "sqlite":
            assert "SCAN feed_pending" not in got and "feed_pending USING" in got, (statement, got)
        else:
            assert "Seq Scan on feed_pending" not in got and "on feed_pending" in got, (statement, got)


def _pending(engine, ws: str) -> dict[str, list[tuple[int, str]]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(feed_pending.c.profile_id, feed_pending.c.seq, feed_pending.c.consumer)
                            .where(feed_pending.c.workspace_id == ws)).all()  # fmt: skip
    out: dict[str, list[tuple[int, str]]] = {}
    for pid, seq, consumer in rows:
        out.setdefault(pid, []).append((seq, consumer))
    return {k: sorted(v) for k, v in out.items()}


def test_a_merge_and_an_erasure_find_the_persons_pending_changes_by_the_index(engine):
    ws = "ws_plans"
    _fill(engine, ws)
    before = _pending(engine, ws)

    merge = [(s, p) for s, p in statements(engine, lambda conn: feed.repoint(conn, ws, "p7", "p9"), write=True)
             if re.search(r"\bfeed_pending\b", s)]  # fmt: skip
    _by_index(engine, merge)
    after = _pending(engine, ws)
    assert "p7" not in after and after["p9"] == sorted(before["p7"] + before["p9"])  # every consumer's rows

    def erase(conn):
        feed.lock_person(conn, ws, ["p9", "p11"])
        feed.forget(conn, ws, _Person(["p9", "p11"]))

    # by the person, not by seq (those read her changes first)
    handed = [(s, p) for s, p in statements(engine, erase, write=True)
              if re.search(r"\bfeed_pending\b", s) and not re.search(r"\bprofile_changes\b", s)]  # fmt: skip
    _by_index(engine, handed)
    assert len(handed) == (2 if engine.dialect.name == "postgresql" else 1)  # the lock, then the delete
    left = _pending(engine, ws)
    assert "p9" not in left and "p11" not in left
    assert {k: v for k, v in left.items()} == {k: v for k, v in after.items() if k not in ("p9", "p11")}
