"""Set-based statements for the hot paths, written once per engine.

On PostgreSQL a batch becomes one statement over ``unnest`` of arrays (one round trip, no per-row planning);
on SQLite, which runs in-process, ``executemany`` is already the fast path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection

from chorus.store.types import JSONDoc, UTCDateTime

_PG_TYPES = {
    sa.String: "text",
    sa.Text: "text",
    sa.Integer: "bigint",
    sa.BigInteger: "bigint",
    sa.Boolean: "boolean",
}


def _pg_type(col: sa.Column) -> str:
    t = col.type
    if isinstance(t, JSONDoc):
        return "jsonb"
    if isinstance(t, UTCDateTime):
        return "timestamp"
    for cls, name in _PG_TYPES.items():
        if isinstance(t, cls):
            return name
    raise TypeError(f"no array type for {col}")


def _pg_value(col: sa.Column, value):
    if value is None:
        return None
    t = col.type
    if isinstance(t, JSONDoc):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(t, UTCDateTime):
        return t.process_bind_param(value, None)
    return value


def _arrays(table: sa.Table, cols: Sequence[str], rows: Sequence[dict]) -> tuple[str, list[list]]:
    parts, params = [], []
    for name in cols:
        col = table.c[name]
        pgt = _pg_type(col)
        # jsonb travels as text and is cast per element (psycopg has no jsonb[] adapter for plain str)
        parts.append("%s::text[]" if pgt == "jsonb" else f"%s::{pgt}[]")
        params.append([_pg_value(col, r[name]) for r in rows])
    return ", ".join(parts), params


def _select_list(table: sa.Table, cols: Sequence[str]) -> str:
    return ", ".join(f"u.{c}::jsonb" if _pg_type(table.c[c]) == "jsonb" else f"u.{c}" for c in cols)


def in_(col: sa.Column, values: Iterable, dialect: str):
    """``col IN values``; on PostgreSQL ``col = ANY(array)``, a single parameter however long the list."""
    values = list(values)
    if dialect == "postgresql":
        return col == sa.any_(
            sa.bindparam(
                None, values, type_=ARRAY(col.type if not isinstance(col.type, sa.BigInteger) else sa.BigInteger())
            )
        )
    return col.in_(values)


def insert_rows(
    conn: Connection,
    table: sa.Table,
    rows: list[dict],
    *,
    conflict: Sequence[str] | None = None,
    update: Sequence[str] = (),
    returning: str | None = None,
) -> list:
    """Multi-row insert; with ``conflict``, rows whose key exists are skipped (or updated: ``update`` columns).

    Returns the ``returning`` column of the rows actually written (PostgreSQL, or SQLite with ``returning``).
    """
    if not rows:
        return []
    cols = list(rows[0].keys())
    if conn.dialect.name == "postgresql":
        arrays, params = _arrays(table, cols, rows)
        sql = f"INSERT INTO {table.name} ({', '.join(cols)}) SELECT {_select_list(table, cols)} FROM unnest({arrays}) AS u({', '.join(cols)})"
        if conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) "
            sql += "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in update) if update else "DO NOTHING"
        if returning:
            sql += f" RETURNING {returning}"
            return [r[0] for r in conn.exec_driver_sql(sql, tuple(params)).all()]
        conn.exec_driver_sql(sql, tuple(params))
        return []
    from sqlalchemy.dialects.sqlite import insert

    stmt = insert(table)
    if conflict:
        stmt = (
            stmt.on_conflict_do_update(index_elements=list(conflict), set_={c: stmt.excluded[c] for c in update})
            if update
            else stmt.on_conflict_do_nothing(index_elements=list(conflict))
        )
    if returning:
        # SQLite reports rows changed by an executemany; that is what callers count
        n = conn.execute(stmt, rows).rowcount
        return [None] * n
    conn.execute(stmt, rows)
    return []


def update_rows(conn: Connection, table: sa.Table, key: str, rows: list[dict]) -> None:
    """``UPDATE table SET cols = row[cols] WHERE key = row[key]`` for every row, in one statement on PostgreSQL."""
    if not rows:
        return
    cols = [c for c in rows[0] if c != key]
    if conn.dialect.name == "postgresql":
        allc = [key, *cols]
        arrays, params = _arrays(table, allc, rows)
        sets = ", ".join(f"{c} = u.{c}::jsonb" if _pg_type(table.c[c]) == "jsonb" else f"{c} = u.{c}" for c in cols)
        sql = (
            f"UPDATE {table.name} AS t SET {sets} FROM unnest({arrays}) AS u({', '.join(allc)}) WHERE t.{key} = u.{key}"
        )
        conn.exec_driver_sql(sql, tuple(params))
        return
    stmt = (
        table.update().where(table.c[key] == sa.bindparam("b_key")).values(**{c: sa.bindparam("b_" + c) for c in cols})
    )
    conn.execute(stmt, [{"b_key": r[key], **{"b_" + c: r[c] for c in cols}} for r in rows])


__all__ = ["in_", "insert_rows", "update_rows", "datetime"]
