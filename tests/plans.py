"""Query plans of the statements a piece of code runs: how the plan tests check that a read goes by an index and
not through a growing table (structure, not timings; docs/benchmarks.md tells what each one found)."""

from __future__ import annotations

import re
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


# tables that grow with customers, events, messages or time
GROWING = {
    "events", "profiles", "identifiers", "identity_links", "profile_aliases", "merges", "profile_changes",
    "feed_pending", "messages", "message_status", "journey_instances", "journey_records", "journey_timers",
    "segment_members", "segment_history", "segment_timers", "audience_members", "subscriptions",
}  # fmt: skip


def wide(sqlite_plan: str) -> list[str]:
    """The parts of a SQLite plan that read a growing table whole, or the workspace's whole part of it (a search by
    the workspace alone). Without statistics (a SQLite store has none) the planner's choice does not depend on the
    tables' sizes, so the plans of a small store are those a large one gets."""
    out = []
    for line in sqlite_plan.split(" | "):
        m = re.match(r"(SCAN|SEARCH) (\w+)(?: AS \w+)?(.*)", line)
        if not m or m.group(2) not in GROWING:
            continue
        how, rest = m.group(1), m.group(3)
        if "ix_events_pending" in rest:
            continue  # the partial index of events waiting for resolution: what is pending, not the store
        if how == "SCAN" or re.search(r"\(workspace_id=\?\)$", rest):
            out.append(line)
    return out
