"""Set-based statements for the hot paths, written once per engine.

On PostgreSQL a batch travels by COPY into a session-scoped staging table and becomes one INSERT ... SELECT or
UPDATE ... FROM inside the server: COPY is several times faster than a multi-row INSERT of the same rows. On
SQLite, which runs in-process, ``executemany`` is already the fast path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import itemgetter

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement
from sqlalchemy.sql.visitors import InternalTraversal

from chorus.store.types import JSONDoc, UTCDateTime


def _pg_value(col: sa.Column, value):
    if value is None:
        return None
    t = col.type
    if isinstance(t, JSONDoc):
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(t, UTCDateTime):
        return t.process_bind_param(value, None)
    return value


def _stage(conn: Connection, table: sa.Table, cols: Sequence[str], rows: Sequence[dict]) -> str:
    """COPY rows into a temporary twin of ``table`` (one per connection); returns its name."""
    name = f"_stage_{table.name}"
    # Not cached per connection: a rolled-back transaction also rolls back the CREATE.
    collist = ", ".join(c.name for c in table.columns)
    conn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {name} AS SELECT {collist} FROM {table.name} WITH NO DATA")
    raw = conn.connection.driver_connection
    columns = [table.c[c] for c in cols]
    with raw.cursor() as cur, cur.copy(f"COPY {name} ({', '.join(cols)}) FROM STDIN") as copy:
        for r in rows:
            copy.write_row([_pg_value(col, r[col.name]) for col in columns])
    return name


def _array_of(col: sa.Column):
    # text, not the column's VARCHAR(n): a cast to VARCHAR(n)[] truncates silently, so a longer value given by a
    # caller would equal the stored one it starts with (PostgreSQL compares varchar as text, on the same index)
    return sa.Text() if isinstance(col.type, sa.String) else col.type


class _In(ColumnElement):
    """``column IN (the values of one parameter)``, built as one small element: the same statement written with
    ``func.json_each(...).table_valued()`` and a subquery cost about 100 µs of Python to build and as much again
    to key for the statement cache, on every call of the hot paths (a demo's profile: 4 % of all its Python time).
    ``_traverse_internals`` makes it a cacheable element: its SQL compiles once per shape, and each call only binds
    its parameters."""

    inherit_cache = True
    type = sa.Boolean()
    _is_implicitly_boolean = True  # a comparison: never rendered "= 1" on SQLite, which would defeat its index
    _traverse_internals = [
        ("cols", InternalTraversal.dp_clauseelement_tuple),
        ("params", InternalTraversal.dp_clauseelement_tuple),
    ]

    def __init__(self, cols: tuple, params: tuple):
        self.cols, self.params = cols, params

    @property
    def _from_objects(self):
        return [f for c in self.cols for f in c._from_objects]


@compiles(_In, "postgresql")
def _in_postgresql(element: _In, compiler, **kw) -> str:
    cols = [compiler.process(c, **kw) for c in element.cols]
    params = [compiler.process(p, **kw) for p in element.params]
    if len(cols) == 1:
        return f"({cols[0]} = ANY ({params[0]}))"  # parenthesised: whole under any operator, NOT included
    names = ", ".join(f"_v{i}" for i in range(len(cols)))
    return f"(({', '.join(cols)}) IN (SELECT {names} FROM unnest({', '.join(params)}) AS _u({names})))"


@compiles(_In)
def _in_sqlite(element: _In, compiler, **kw) -> str:
    cols = [compiler.process(c, **kw) for c in element.cols]
    param = compiler.process(element.params[0], **kw)
    if len(cols) == 1:
        return f"({cols[0]} IN (SELECT value FROM json_each({param})))"
    picks = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(cols)))
    return f"(({', '.join(cols)}) IN (SELECT {picks} FROM json_each({param})))"


def in_(col: sa.Column, values: Iterable, dialect: str):
    """``col IN values``; on PostgreSQL ``col = ANY(array)``: one parameter however long the list."""
    values = list(values)
    if dialect == "postgresql":
        return _In((col,), (sa.bindparam(None, values, type_=ARRAY(_array_of(col))),))
    # SQLite: one JSON parameter instead of thousands of bound ones, so the statement compiles once and caches
    return _In((col,), (sa.bindparam(None, orjson.dumps(values).decode(), type_=sa.Text()),))


def pairs_in(a: sa.Column, b: sa.Column, pairs: Sequence[tuple], dialect: str):
    """``(a, b) IN pairs`` as one parameter per column, like :func:`in_`: PostgreSQL unnests two arrays, SQLite
    reads a JSON list of pairs (a statement per count of pairs would defeat the statement cache, and SQLite caps
    bound parameters)."""
    if dialect == "postgresql":
        return _In((a, b), (sa.bindparam(None, [x for x, _ in pairs], type_=ARRAY(_array_of(a))),
                            sa.bindparam(None, [y for _, y in pairs], type_=ARRAY(_array_of(b)))))  # fmt: skip
    return _In((a, b), (sa.bindparam(None, orjson.dumps([list(x) for x in pairs]).decode(), type_=sa.Text()),))


def insert_rows(
    conn: Connection,
    table: sa.Table,
    rows: list[dict],
    *,
    conflict: Sequence[str] | None = None,
    update: Sequence[str] = (),
    returning: str | None = None,
) -> list:
    """Multi-row insert; with ``conflict``, rows whose key exists are skipped (or their ``update`` columns set).

    With ``returning``, returns one item per row actually written (the column's value on PostgreSQL).
    """
    if not rows:
        return []
    cols = list(rows[0].keys())
    if conn.dialect.name == "postgresql":
        stage = _stage(conn, table, cols, rows)
        collist = ", ".join(cols)
        sql = f"INSERT INTO {table.name} ({collist}) SELECT {collist} FROM {stage}"
        if conflict:
            sql += f" ON CONFLICT ({', '.join(conflict)}) "
            sql += "DO UPDATE SET " + ", ".join(f"{c} = EXCLUDED.{c}" for c in update) if update else "DO NOTHING"
        if returning:
            sql += f" RETURNING {returning}"
        result = conn.exec_driver_sql(sql)
        out = [r[0] for r in result.all()] if returning else []
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        return out
    # SQLite: the driver's executemany on pre-converted tuples (SQLAlchemy's per-row bind processing would
    # cost as much as the insert itself).
    sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
    if conflict:
        sql += f" ON CONFLICT ({', '.join(conflict)}) "
        sql += "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in update) if update else "DO NOTHING"
    params = _sqlite_params(table, cols, rows)
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(sql, params)
        n = cur.rowcount  # rows an executemany changed
    finally:
        cur.close()
    return [None] * n if returning else []


def _sqlite_params(table: sa.Table, cols: list[str], rows: list[dict]) -> list:
    """The rows as the driver's parameter sequences, in ``cols`` order, each value converted as SQLAlchemy would bind
    it. Read with one ``itemgetter`` per row and converted only in the columns that need it (JSON, instants,
    booleans): a generator over every column of every row cost more than the insert it fed."""
    get = itemgetter(*cols)
    one = len(cols) == 1  # itemgetter of one key returns the value itself, not a tuple
    convert = [(i, f) for i, f in enumerate(_sqlite_converter(table.c[c]) for c in cols) if f is not None]
    if not convert:
        return [(get(r),) for r in rows] if one else [get(r) for r in rows]
    params = []
    for r in rows:
        values = [get(r)] if one else list(get(r))
        for i, f in convert:
            values[i] = f(values[i])
        params.append(values)
    return params


def _sqlite_converter(col: sa.Column):
    t = col.type
    if isinstance(t, JSONDoc):
        return lambda v: None if v is None else orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS).decode()
    if isinstance(t, UTCDateTime):
        # SQLAlchemy's SQLite DATETIME text format, so that values compare equal to ones it binds. Rows of one batch
        # often share an instant (a change feed's "at", an import's received_at): each distinct one is converted once
        seen: dict = {}

        def convert(v):
            if v is None:
                return None
            text = seen.get(v)
            if text is None:
                text = seen[v] = t.process_bind_param(v, None).isoformat(" ", "microseconds")
            return text

        return convert
    if isinstance(t, sa.Boolean):
        return lambda v: None if v is None else int(v)
    return None


def update_rows(conn: Connection, table: sa.Table, key: str, rows: list[dict]) -> None:
    """``UPDATE table SET cols = row[cols] WHERE key = row[key]`` for every row, in one statement on PostgreSQL."""
    if not rows:
        return
    cols = [c for c in rows[0] if c != key]
    if conn.dialect.name == "postgresql":
        stage = _stage(conn, table, [key, *cols], rows)
        sets = ", ".join(f"{c} = s.{c}" for c in cols)
        conn.exec_driver_sql(f"UPDATE {table.name} AS t SET {sets} FROM {stage} AS s WHERE t.{key} = s.{key}")
        conn.exec_driver_sql(f"TRUNCATE {stage}")
        return
    order = [*cols, key]
    params = _sqlite_params(table, order, rows)
    sql = f"UPDATE {table.name} SET {', '.join(f'{c} = ?' for c in cols)} WHERE {key} = ?"
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(sql, params)
    finally:
        cur.close()
