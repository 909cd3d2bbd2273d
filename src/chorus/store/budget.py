"""A time budget for a read that a person waits for (a segment preview, a save's estimate).

A rule over a big store can take minutes to count; an API worker must not be held that long for an answer nobody
waits for. Inside :func:`time_budget`, the block's statements share one deadline, ``seconds`` after the block
starts: each statement is stopped by the database once the deadline passes (PostgreSQL by ``statement_timeout``,
set before each statement to the time left; SQLite by a progress handler that interrupts the statement, called
every 1,000 virtual machine steps), and a statement that would start after it is not run. Either way the caller
gets :class:`OverBudget`. Python work between two statements is not interrupted; it is counted at the next one.
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


class _Expired(Exception):
    """The deadline passed before a statement started."""


@contextmanager
def time_budget(conn: Connection, seconds: float | None, what: str, *, hint: str = "",
                field: str | None = None) -> Iterator[None]:  # fmt: skip
    """Run the block with its statements on ``conn`` stopped once ``seconds`` have passed since it began (None: no
    budget); a statement stopped becomes :class:`OverBudget` saying ``what`` was stopped, the budget, then
    ``hint``. On PostgreSQL the block runs in the connection's transaction (begun here if none is), which a stopped
    statement aborts."""
    if not seconds:
        yield
        return
    deadline = time.monotonic() + seconds
    stop = _pg_budget if conn.dialect.name == "postgresql" else _sqlite_budget
    try:
        with stop(conn, deadline):
            yield
    except (OperationalError, _Expired) as exc:
        if isinstance(exc, OperationalError) and not _stopped(exc):
            raise
        raise OverBudget(f"{what} was stopped: it ran past its time budget of {seconds:g} s{hint}",
                         field=field) from None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _Expired
    return left


@contextmanager
def _pg_budget(conn: Connection, deadline: float) -> Iterator[None]:
    # local to the transaction (set_config(..., true) is SET LOCAL): the pooled connection's next user does not
    # inherit it; set again before each statement to what is left of the block's time
    before = conn.execute(sa.text("SELECT current_setting('statement_timeout')")).scalar_one()
    raw = conn.connection.dbapi_connection

    def arm(*_args) -> None:
        ms = str(max(1, round(_left(deadline) * 1000)))
        raw.execute("SELECT set_config('statement_timeout', %s, true)", (ms,))

    sa.event.listen(conn, "before_cursor_execute", arm)
    try:
        yield
    finally:
        sa.event.remove(conn, "before_cursor_execute", arm)
        # the rest of the transaction runs with the timeout it had before; after a database error the transaction
        # is aborted (rolled back with the setting) or the connection lost: nothing to restore, and a statement
        # there would replace the real error by SQLAlchemy's "pending rollback"
        from psycopg.pq import TransactionStatus

        if not conn.invalidated and raw.info.transaction_status == TransactionStatus.INTRANS:
            conn.execute(sa.text("SELECT set_config('statement_timeout', :before, true)"), {"before": before})


@contextmanager
def _sqlite_budget(conn: Connection, deadline: float) -> Iterator[None]:
    def check(*_args) -> None:
        _left(deadline)

    raw = conn.connection.dbapi_connection
    sa.event.listen(conn, "before_cursor_execute", check)
    raw.set_progress_handler(lambda: time.monotonic() > deadline, SQLITE_STEPS)
    try:
        yield
    finally:  # the connection goes back to the pool: its next user runs without the handler
        raw.set_progress_handler(None, 0)
        sa.event.remove(conn, "before_cursor_execute", check)


def _stopped(exc: OperationalError) -> bool:
    """Was the statement stopped by the budget (and not failed for another reason)?"""
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == PG_QUERY_CANCELED:
        return True
    return type(orig).__module__ == "sqlite3" and str(orig) == "interrupted"
