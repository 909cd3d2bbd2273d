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


def test_in_and_pairs_in_bind_each_call_s_values_through_the_statement_cache(engine):
    """``in_`` and ``pairs_in`` are one cached element each: the second call of the same statement shape reuses
    the compiled SQL, and must still read its own values (not the first call's); they negate, take an empty list,
    and stand as a plain condition, where SQLite would otherwise compare a boolean to 1 (and skip the index)."""
    t = segment_timers.c
    with engine.begin() as conn:
        conn.execute(segment_timers.insert(), [
            {"workspace_id": "w", "segment_id": s, "profile_id": p, "due_at": T0} for p in ("p1", "p2", "p3")
            for s in ("s1", "s2")])  # fmt: skip
        d = conn.dialect.name

        def ids(*where):
            q = sa.select(t.profile_id, t.segment_id).where(t.workspace_id == "w", *where)
            result = conn.execute(q.order_by(t.profile_id, t.segment_id))
            return result.context.cache_hit, [tuple(r) for r in result]

        first_hit, first = ids(bulk.in_(t.profile_id, ["p1"], d))
        hit, again = ids(bulk.in_(t.profile_id, ["p2", "p3"], d))
        assert first == [("p1", "s1"), ("p1", "s2")]
        assert again == [("p2", "s1"), ("p2", "s2"), ("p3", "s1"), ("p3", "s2")]
        assert hit == first_hit.__class__.CACHE_HIT  # the same compiled SQL, its values bound anew
        assert ids(~bulk.in_(t.profile_id, ["p1", "p2"], d))[1] == [("p3", "s1"), ("p3", "s2")]
        assert ids(bulk.in_(t.profile_id, [], d))[1] == []
        assert len(ids(~bulk.in_(t.profile_id, [], d))[1]) == 6
        assert ids(bulk.pairs_in(t.profile_id, t.segment_id, [("p1", "s2"), ("p3", "s1")], d))[1] == [
            ("p1", "s2"), ("p3", "s1")]  # fmt: skip
        assert ids(bulk.pairs_in(t.profile_id, t.segment_id, [("p2", "s2")], d))[1] == [("p2", "s2")]
        assert len(ids(~bulk.pairs_in(t.profile_id, t.segment_id, [("p2", "s2")], d))[1]) == 5
        # a condition of its own (no comparison around it), with its table found for the FROM clause
        picked = sa.select(sa.case((bulk.in_(t.profile_id, ["p2"], d), 1), else_=0))
        assert sorted(r[0] for r in conn.execute(picked)) == [0, 0, 0, 0, 1, 1]
        sql = str(sa.select(t.profile_id).where(bulk.in_(t.profile_id, ["p1"], d)).compile(dialect=conn.dialect))
        assert "= 1" not in sql and "= 0" not in sql


def test_insert_and_update_rows_bind_every_type_as_sqlalchemy_would(engine):
    """JSON documents, instants (any zone: stored as UTC), booleans, NULLs and plain values, written by the
    driver-level paths (SQLite) or COPY (PostgreSQL), read back through SQLAlchemy as the same values; one column
    alone too."""
    from datetime import timedelta, timezone

    from chorus.store.types import JSONDoc, UTCDateTime

    md = sa.MetaData()
    t = sa.Table("bulk_probe_" + engine.dialect.name, md, sa.Column("id", sa.String(20), primary_key=True),
                 sa.Column("doc", JSONDoc), sa.Column("at", UTCDateTime), sa.Column("ok", sa.Boolean),
                 sa.Column("n", sa.Integer))  # fmt: skip
    one = sa.Table("bulk_probe_one_" + engine.dialect.name, md, sa.Column("id", sa.String(20), primary_key=True))
    # one column that needs converting (review: the one-column path skipped the converters)
    when = sa.Table("bulk_probe_at_" + engine.dialect.name, md, sa.Column("at", UTCDateTime, primary_key=True))
    doc = sa.Table("bulk_probe_doc_" + engine.dialect.name, md, sa.Column("doc", JSONDoc))
    md.drop_all(engine)
    md.create_all(engine)
    try:
        paris = timezone(timedelta(hours=1))
        rows = [{"id": "a", "doc": {"x": [1, "é"], "y": None}, "at": T0, "ok": True, "n": 1},
                {"id": "b", "doc": None, "at": T0.astimezone(paris) + timedelta(microseconds=7), "ok": False,
                 "n": None},
                {"id": "c", "doc": [1, 2], "at": None, "ok": None, "n": 3}]  # fmt: skip
        with engine.begin() as conn:
            bulk.insert_rows(conn, t, rows)
            bulk.insert_rows(conn, one, [{"id": "a"}, {"id": "b"}])
            bulk.update_rows(conn, t, "id", [{"id": "c", "doc": {"z": 1}, "at": T0, "ok": True, "n": 4}])
            got = {r.id: r._asdict() for r in conn.execute(sa.select(t))}
            assert sorted(conn.execute(sa.select(one.c.id)).scalars()) == ["a", "b"]
            bulk.insert_rows(conn, when, [{"at": T0.astimezone(timezone(timedelta(hours=1)))}])
            assert conn.execute(sa.select(when.c.at).where(when.c.at == T0)).scalar() == T0
            bulk.insert_rows(conn, doc, [{"doc": {"a": [1]}}, {"doc": None}])
            assert sorted(conn.execute(sa.select(doc.c.doc)).scalars(), key=str) == [None, {"a": [1]}]
            # an instant bound by the driver compares equal to the same instant bound by SQLAlchemy
            assert conn.execute(sa.select(t.c.id).where(t.c.at == T0 + timedelta(microseconds=7))).scalar() == "b"
        assert got["a"] == {"id": "a", "doc": {"x": [1, "é"], "y": None}, "at": T0, "ok": True, "n": 1}
        assert got["b"] == {"id": "b", "doc": None, "at": T0 + timedelta(microseconds=7), "ok": False, "n": None}
        assert got["c"] == {"id": "c", "doc": {"z": 1}, "at": T0, "ok": True, "n": 4}
    finally:
        md.drop_all(engine)
