"""The set-based statements of store/bulk.py, on both engines."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from chorus.store import bulk
from chorus.store.tables import segment_timers

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_longer_value_never_equals_the_stored_one_it_starts_with(engine):
    """PostgreSQL truncates a value cast to VARCHAR(n) without an error: with the column's own type as the array's,
    ``'p…' || 'XYZ'`` compared equal to the 40-character id it starts with. The lists are text."""
    t = segment_timers.c
    pid, sid = "p" * 40, "s" * 64
    with engine.begin() as conn:
        conn.execute(segment_timers.insert().values(workspace_id="w", segment_id=sid, profile_id=pid, due_at=T0))
        d = conn.dialect.name

        def count(*where):
            return conn.execute(sa.select(sa.func.count()).select_from(segment_timers).where(*where)).scalar()

        assert count(bulk.in_(t.profile_id, [pid], d)) == 1
        assert count(bulk.in_(t.profile_id, [pid + "XYZ", "other"], d)) == 0
        assert count(bulk.pairs_in(t.profile_id, t.segment_id, [(pid, sid)], d)) == 1
        assert count(bulk.pairs_in(t.profile_id, t.segment_id, [(pid + "X", sid), (pid, sid + "Y")], d)) == 0
