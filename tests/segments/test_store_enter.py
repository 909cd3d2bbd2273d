"""``store.enter`` returns only the people who were not members: on PostgreSQL the driver answers an INSERT's
rowcount as -1 (true), new row or not, so it took every member for a newcomer and wrote her entry again."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from chorus.segments import store
from chorus.store.tables import segment_history

AT = datetime(2026, 6, 1, tzinfo=UTC)


def test_enter_reports_only_newcomers_and_writes_their_history_once(engine, workspace):
    ws = workspace["id"]
    with engine.begin() as conn:
        assert store.enter(conn, ws, "s1", ["p1"], AT, "test") == ["p1"]
        assert store.enter(conn, ws, "s1", ["p1", "p2"], AT, "test") == ["p2"]
        n = conn.execute(sa.select(sa.func.count()).select_from(segment_history)
                         .where(segment_history.c.workspace_id == ws)).scalar_one()  # fmt: skip
    assert n == 2
