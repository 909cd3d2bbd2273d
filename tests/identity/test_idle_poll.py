"""An idle pass of identity resolution reads only the pending events' partial index, on SQLite too.

The worker asks "is anything pending?" on every pass. Without an ORDER BY on the indexed column, SQLite answered it
by scanning the timeline index for a NULL profile, that is the whole store once nothing is pending: 40 ms a pass at
290,000 events in the demo, growing with the store (docs/benchmarks.md). Plans, not timings: the test reads
SQLite's query plan of every statement an idle pass runs."""

from __future__ import annotations

import re

from sqlalchemy import event

from chorus import workspaces
from chorus.identity.resolver import Resolver
from chorus.store.db import create_engine, upgrade
from tests.identity.helpers import send


def test_an_idle_pass_reads_the_pending_index_not_the_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = create_engine(url)
    ws = workspaces.create(engine, "shop")["id"]
    send(engine, ws, [{"type": "track", "event": "Viewed", "anonymousId": f"a{i % 50}", "messageId": f"m{i}"}
                      for i in range(400)])  # fmt: skip
    resolver = Resolver(engine)
    resolver.drain()
    with engine.connect() as conn:  # the statistics a long-running store has (the resolver analyzes as it goes)
        conn.exec_driver_sql("ANALYZE")
    seen: list[tuple[str, tuple]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        assert resolver.process_pending() == 0
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    on_events = [(s, p) for s, p in seen if re.search(r"\bFROM events\b", s)]
    assert on_events, seen  # the idle poll reads the events table
    raw = engine.raw_connection()
    try:
        for statement, params in on_events:
            plan = " | ".join(str(r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall())
            assert "ix_events_pending" in plan, (statement, plan)
    finally:
        raw.close()
    engine.dispose()
