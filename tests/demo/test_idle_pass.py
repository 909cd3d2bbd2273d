"""An idle worker pass takes no write transaction on SQLite.

The worker runs every task on each pass, and most passes find nothing to do. On SQLite a write transaction takes
the store's one write lock (``BEGIN IMMEDIATE``), which the tracking API's inserts and every other task queue for;
an idle pass of the demo's store took it five times for nothing (journey schedules twice, segment timers, journey
timers, the journeys' resume-and-stop sweep, the segment batch probe). Each task now asks whether it has work with a
read first (``store.db.any_row``, ``read_only``), and opens its write transaction only for work."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import event

from chorus.demo import run as demo_run
from chorus.store.db import create_engine
from chorus.store.tables import journey_timers, journeys, segment_timers
from chorus.timeutil import utcnow
from chorus.worker import Worker


def test_an_idle_pass_takes_no_write_lock(tmp_path):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    start = datetime.combine(utcnow().date() - timedelta(days=3), datetime.min.time(), UTC)
    opts = demo_run.Options(customers=30, days=3, seed=2, database_url=url, outbox=str(tmp_path / "outbox"),
                            lake=str(tmp_path / "lake"), start=start)  # fmt: skip
    demo_run.run(opts)
    engine = create_engine(url)
    worker = Worker(engine)
    try:
        for _ in range(50):  # what fell due between the demo's last hour and now, on the real clock
            if worker.run_once() == 0:
                break
        else:
            raise AssertionError("the worker did not settle")
        now = utcnow()
        with engine.connect() as conn:  # work waits in the future, for each task that asks: the pass is not empty
            assert conn.execute(sa.select(sa.func.count()).select_from(journey_timers)
                                .where(journey_timers.c.due_at > now)).scalar() > 0  # fmt: skip
            assert conn.execute(sa.select(sa.func.count()).select_from(segment_timers)
                                .where(segment_timers.c.due_at > now)).scalar() > 0  # fmt: skip
            assert conn.execute(sa.select(sa.func.count()).select_from(journeys)
                                .where(journeys.c.entry == "schedule", journeys.c.status == "active")).scalar() > 0
        writes, statements = [], []

        def capture(conn, cursor, statement, parameters, context, executemany):
            statements.append(statement)
            if statement.lstrip().upper().startswith(("BEGIN IMMEDIATE", "INSERT", "UPDATE", "DELETE")):
                writes.append(statement)

        event.listen(engine, "before_cursor_execute", capture)
        try:
            assert worker.run_once() == 0
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert len(statements) > 10  # every task asked
        assert writes == [], writes
    finally:
        worker.stop()
        engine.dispose()
