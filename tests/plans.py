"""Query plans of the statements a piece of code runs: how the plan tests check that a read goes by an index and
not through a growing table (structure, not timings; docs/benchmarks.md tells what each one found)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


def statements(engine: Engine, run: Callable[[Connection], object], *, write: bool = False) -> list[tuple[str, object]]:
    """(statement, parameters) of each statement ``run(conn)`` executes, in a transaction committed if ``write``."""
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.begin() if write else engine.connect() as conn:
            run(conn)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return seen


def plan(engine: Engine, statement: str, params) -> str:
    """The engine's plan of one statement, its lines joined by `` | ``: SQLite's ``EXPLAIN QUERY PLAN``, PostgreSQL's
    ``EXPLAIN`` (which does not run it)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(("EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN ") + statement, params)
        return " | ".join(str(r[-1]) for r in cur.fetchall())
    finally:
        raw.rollback()
        raw.close()


def plans(engine: Engine, run: Callable[[Connection], object], *, write: bool = False,
          selects: bool = False) -> list[tuple[str, str]]:  # fmt: skip
    """(statement, plan) of each statement ``run(conn)`` executes (only its SELECTs if ``selects``)."""
    return [(s, plan(engine, s, p)) for s, p in statements(engine, run, write=write)
            if not selects or s.lstrip().upper().startswith("SELECT")]  # fmt: skip
