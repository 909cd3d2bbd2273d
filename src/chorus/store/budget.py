"""A time budget for the statements of a read that a person waits for (a segment preview, a save's estimate).

A rule over a big store can take minutes to count; an API worker must not be held that long for an answer nobody
waits for. Inside :func:`time_budget`, each statement the connection runs is stopped by the database once it has
run ``seconds``: PostgreSQL by ``SET LOCAL statement_timeout`` (the server cancels it), SQLite by a progress
handler that interrupts the statement (SQLite calls it every few thousand virtual machine steps; it answers
"stop" once the statement's deadline has passed). Either way the caller gets :class:`OverBudget`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError

from chorus.errors import ChorusError

SQLITE_STEPS = 1000  # virtual machine steps between two looks at the clock: well under a millisecond of work
PG_QUERY_CANCELED = "57014"  # SQLSTATE of a statement stopped by statement_timeout


class OverBudget(ChorusError):
    """A statement ran past its budget and was stopped (503: not the caller's mistake, nor retried as is)."""

    status = 503
    code = "over_budget"


@contextmanager
def time_budget(conn: Connection, seconds: float | None, what: str, *, hint: str = "",
                field: str | None = None) -> Iterator[None]:  # fmt: skip
    """Run the block with each statement on ``conn`` stopped after ``seconds`` (None: no budget); a statement
    stopped becomes :class:`OverBudget` saying ``what`` was stopped, the budget, then ``hint``. On PostgreSQL the
    block runs in the connection's transaction (begun here if none is), which a stopped statement aborts."""
    if not seconds:
        yield
        return
    stop = _pg_budget if conn.dialect.name == "postgresql" else _sqlite_budget
    try:
        with stop(conn, seconds):
            yield
    except OperationalError as exc:
        if not _stopped(exc):
            raise
        raise OverBudget(f"{what} was stopped: a statement ran past its time budget of {seconds:g} s{hint}",
                         field=field) from None


@contextmanager
def _pg_budget(conn: Connection, seconds: float) -> Iterator[None]:
    # local to the transaction (SET LOCAL): the pooled connection's next user does not inherit it
    before = conn.execute(sa.text("SELECT current_setting('statement_timeout'), set_config('statement_timeout', "
                                  ":ms, true)"), {"ms": str(max(1, round(seconds * 1000)))}).scalar_one()  # fmt: skip
    yield
    # the block succeeded, so the transaction is usable: the rest of it runs with the timeout it had before
    conn.execute(sa.text("SELECT set_config('statement_timeout', :before, true)"), {"before": before})


@contextmanager
def _sqlite_budget(conn: Connection, seconds: float) -> Iterator[None]:
    started = [time.monotonic()]

    def restart(*_args) -> None:  # each statement has the whole budget, as with PostgreSQL's statement_timeout
        started[0] = time.monotonic()

    raw = conn.connection.dbapi_connection
    sa.event.listen(conn, "before_cursor_execute", restart)
    raw.set_progress_handler(lambda: time.monotonic() - started[0] > seconds, SQLITE_STEPS)
    try:
        yield
    finally:  # the connection goes back to the pool: its next user runs without the handler
        raw.set_progress_handler(None, 0)
        sa.event.remove(conn, "before_cursor_execute", restart)


def _stopped(exc: OperationalError) -> bool:
    """Was the statement stopped by the budget (and not failed for another reason)?"""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == PG_QUERY_CANCELED:
        return True
    return type(orig).__module__ == "sqlite3" and str(orig) == "interrupted"
