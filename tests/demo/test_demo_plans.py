"""No statement of the simulated period reads a growing table whole, on SQLite: every distinct statement the demo's
hours run (the tracking API, imports, provider callbacks, link clicks, the worker's every task) is explained, and a
plan that scans a growing table, or searches one by the workspace alone (every row of the workspace all the same),
fails the test unless it is one of the reads listed below with the reason it is bounded.

Three such reads were found on the hourly path by hand before this test (docs/benchmarks.md): resolution's idle
poll, the follow sync's identifiers and its changes since the mark, each growing with the store every simulated
hour. A small run shows the plans a large store gets (tests.plans.wide)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from sqlalchemy import event
from sqlalchemy.engine import Engine

from chorus.demo import run as demo_run
from chorus.store.db import create_engine
from tests.plans import plan, wide

# (statement pattern, why its whole-table read is bounded or rare)
BOUNDED = [
    (r"DELETE FROM profile_changes WHERE profile_changes\.seq IN \(SELECT .* ORDER BY profile_changes\.seq",
     "the feed's prune: from the oldest change, in seq order, stopped by its LIMIT at the first one too young"),
    (r"json_type\(profiles\.state, '\$\.activity'\) IS NULL",
     "the activity backfill (decision 0046): once per store, resumed by key, then idle"),
    (r"FROM segment_members WHERE .* AND NOT \(EXISTS \(SELECT \* FROM profiles",
     "the end of a segment's batch recompute: members whose profile is gone, once per recompute"),
]  # fmt: skip


def test_the_hours_of_the_demo_read_no_growing_table_whole(tmp_path, monkeypatch):
    seen: dict[str, object] = {}
    during = {"period": False}

    def capture(conn, cursor, statement, parameters, context, executemany):
        if during["period"] and conn.dialect.name == "sqlite" and statement not in seen:
            seen[statement] = parameters[0] if executemany and parameters else parameters

    loop_run = demo_run._Loop.run

    def period(self):  # only the simulated hours: not the set-up, nor the lake export and the report after them
        during["period"] = True
        try:
            return loop_run(self)
        finally:
            during["period"] = False

    monkeypatch.setattr(demo_run._Loop, "run", period)
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    opts = demo_run.Options(customers=200, days=8, seed=4, database_url=url, outbox=str(tmp_path / "outbox"),
                            lake=str(tmp_path / "lake"), start=datetime(2026, 3, 2, tzinfo=UTC))  # fmt: skip
    event.listen(Engine, "before_cursor_execute", capture)
    try:
        out = demo_run.run(opts)
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    assert out.events_sent > 100 and out.passes > 0
    # the period ran every kind of work: resolution, the feed's consumers, journeys and their timers, delivery and
    # the callbacks (bulk inserts go to the driver directly, unseen here: they read nothing)
    for read in ("FROM events", "FROM feed_pending", "FROM journey_instances", "FROM journey_timers",
                 "FROM segment_members", "UPDATE messages", "FROM message_status", "FROM audience_members",
                 "UPDATE feed_pending SET profile_id"):  # a merge
        assert any(read in s for s in seen), read

    engine = create_engine(url)
    broad = []
    try:
        for statement, params in seen.items():
            head = statement.lstrip().upper()
            if not head.startswith(("SELECT", "UPDATE", "DELETE", "INSERT", "WITH")):
                continue
            if head.startswith("INSERT") and not re.search(r"\bSELECT\b", head):
                continue  # INSERT ... VALUES reads nothing (and many-row forms are bound row by row)
            parts = wide(plan(engine, statement, params))
            if not parts:
                continue
            flat = " ".join(statement.split())
            if not any(re.search(pattern, flat) for pattern, _why in BOUNDED):
                broad.append(f"{flat[:400]}\n    {parts}")
    finally:
        engine.dispose()
    assert not broad, "statements of the simulated period that read a growing table whole:\n" + "\n".join(broad)
