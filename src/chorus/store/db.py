"""Engine creation and migrations for both engines (SQLite embedded, PostgreSQL in production)."""

from __future__ import annotations

import contextlib
import decimal
import fcntl
import hashlib
import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import orjson
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

MIGRATIONS = Path(__file__).parent / "migrations"
log = logging.getLogger("chorus.store")
BUSY_TIMEOUT_MS = 30000


def normalise_url(url: str) -> str:
    # Users paste plain postgresql:// URLs; the driver we ship is psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_size_limit=67108864")  # give the WAL file back after a checkpoint
    cur.execute("PRAGMA foreign_keys=ON")
    # freed space (deleted rows, index entries, pages) is overwritten with zeros, not just marked free: an erased
    # person's bytes must not stay readable in the file (see scrub)
    cur.execute("PRAGMA secure_delete=ON")
    cur.close()
    _sqlite_functions(dbapi_conn)


# -- what PostgreSQL has and SQLite lacks, registered on every SQLite connection ----------------------------------
# Exact decimals: numbers are the decimals they are written as (a float is its shortest repr, as JSON stores it), so
# 0.1 + 0.2 is 0.3, as with PostgreSQL's NUMERIC. The precision is large enough for any sum of doubles' decimals.
_EXACT = decimal.Context(prec=2000, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[decimal.Inexact,
                         decimal.InvalidOperation, decimal.Overflow])  # fmt: skip


def _decimal(value) -> decimal.Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return decimal.Decimal(value)
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, str | bytes):
        try:
            return decimal.Decimal(value.decode() if isinstance(value, bytes) else value)
        except decimal.InvalidOperation:
            return None
    return None


class _DecimalSum:
    """``decimal_sum(x)``: the exact sum of the numbers among x (text, in ``decimal_cmp``'s terms); '0' for none."""

    def __init__(self):
        self.total = decimal.Decimal(0)

    def step(self, value):
        d = _decimal(value) if not isinstance(value, str) else None  # numbers only: text is not summed
        if d is not None:
            self.total = _EXACT.add(self.total, d)

    def finalize(self):
        return str(self.total)


def _decimal_cmp(a, b, n=1) -> int | None:
    """``decimal_cmp(a, b, n)``: the sign of a - b·n, exactly (a, b numbers or decimal text; None if either is
    not a number)."""
    x, y, k = _decimal(a), _decimal(b), _decimal(n)
    if x is None or y is None or k is None:
        return None
    diff = _EXACT.subtract(x, _EXACT.multiply(y, k))
    return (diff > 0) - (diff < 0)


def _sha256(value) -> bytes | None:
    if value is None:
        return None
    return hashlib.sha256(value.encode() if isinstance(value, str) else bytes(value)).digest()


def _sqlite_functions(dbapi_conn) -> None:
    dbapi_conn.create_function("sha256", 1, _sha256, deterministic=True)
    dbapi_conn.create_function("decimal_cmp", 3, _decimal_cmp, deterministic=True)
    dbapi_conn.create_aggregate("decimal_sum", 1, _DecimalSum)


def _fast_json() -> None:
    # psycopg decodes jsonb with the stdlib json module; orjson is several times faster on event payloads.
    from psycopg.types.json import set_json_dumps, set_json_loads

    set_json_loads(orjson.loads)
    set_json_dumps(lambda obj: orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))


class _WriterQueue:
    """First come, first served hand-over of SQLite's one write lock between chorus' connections, in any process.

    SQLite lets a writer that finds the lock taken sleep and retry (busy_timeout: sleeps growing to 100 ms), so a
    writer that commits and begins again at once (the worker resolving a backlog) takes the lock back before the
    sleeping one retries, again and again: an import running next to a worker waited for whole worker batches,
    many in a row, and ran at the speed of identity resolution. Here every write transaction first queues on two
    file locks next to the database (a turnstile, then the lock): whoever waits at the turnstile holds it until it
    has the lock, so the writer that just finished queues behind it instead of barging in; the waiting writer polls
    the lock every few milliseconds instead of SQLite's sleeps of up to 100 ms. A writer that cannot get through
    the queue within busy_timeout falls back to SQLite's own wait and error, so the queue never hangs. The locks are
    flock(2) locks of open files, one pair per connection: they order threads of one process too, and vanish with
    a process that dies. SQLite's own lock still guards the data (writers outside chorus fall back to busy_timeout)."""

    def __init__(self, db_path: str):
        self.gate_path = db_path + "-chorus-queue"
        self.lock_path = db_path + "-chorus-writer"
        self.last_waited_for = -1e9  # monotonic time of this process' last commit that another writer waited for

    def open(self, record) -> None:
        record.info["chorus_writer_fds"] = (
            os.open(self.gate_path, os.O_RDWR | os.O_CREAT, 0o600),
            os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600),
        )

    def acquire(self, record) -> None:
        me = threading.get_ident()
        if me in _WRITING.get(self.lock_path, ()):
            # a second write transaction opened by a thread inside its first (through any engine on this file)
            # cannot get SQLite's lock either: it must fail after busy_timeout as it always did, not wait here
            return
        gate, lock = record.info["chorus_writer_fds"]
        deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
        if not _flock_before(gate, deadline):
            return  # the queue did not move within busy_timeout: SQLite's own wait and error decide, as before
        try:
            got = _flock_before(lock, deadline)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        if got:
            record.info["chorus_writing"] = me
            _WRITING.setdefault(self.lock_path, set()).add(me)

    def release(self, record) -> None:
        fds = record.info.get("chorus_writer_fds")
        if fds is None:
            return
        gate, lock = fds
        holder = record.info.pop("chorus_writing", None)
        if holder is not None:
            _WRITING.get(self.lock_path, set()).discard(holder)
            try:  # someone at the turnstile is waiting for this transaction to end
                fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(gate, fcntl.LOCK_UN)
            except BlockingIOError:
                self.last_waited_for = time.monotonic()
        # always: a lock taken just before an interruption (the holder not yet recorded) must not outlive the
        # transaction; unlocking a lock this descriptor does not hold does nothing
        fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self, record) -> None:
        _WRITING.get(self.lock_path, set()).discard(record.info.pop("chorus_writing", None))
        for fd in record.info.pop("chorus_writer_fds", ()):
            os.close(fd)  # also releases its lock


# Threads inside a write transaction, per database file (lock path), across every engine of the process.
_WRITING: dict[str, set[int]] = {}


def _flock_before(fd: int, deadline: float) -> bool:
    """An exclusive flock of ``fd``, polled until ``deadline`` (a blocking flock would wait for ever: a holder
    that waits for this thread, or a stuck process, must end in SQLite's busy error as before, not a hang)."""
    pause = 0.0002
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.005)


def writers_waited(engine: Engine, within: float) -> bool:
    """Whether another writer (thread or process) waited for one of this engine's write transactions in the last
    ``within`` seconds: SQLite's write lock is contended, and long transactions hold the others up."""
    queue = getattr(engine, "chorus_writer_queue", None)
    return queue is not None and time.monotonic() - queue.last_waited_for < within


def _sqlite_begin(conn) -> None:
    # a connection from read_only() only reads: a deferred BEGIN reads a WAL snapshot without waiting for writers
    if conn.get_execution_options().get("chorus_read_only"):
        conn.exec_driver_sql("BEGIN")
        return
    record = conn.connection._connection_record
    queue = getattr(conn.engine, "chorus_writer_queue", None)
    queued = queue is not None and record is not None and "chorus_writer_fds" in record.info
    if queued:
        queue.acquire(record)
    try:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    except BaseException:
        if queued:
            queue.release(record)
        raise


def _sqlite_end(conn) -> None:
    if conn.invalidated:  # the pool's "invalidate" listener frees its slot; reading it here would hide the failure
        return
    record = conn.connection._connection_record
    queue = getattr(conn.engine, "chorus_writer_queue", None)
    if queue is not None and record is not None:
        queue.release(record)


@contextlib.contextmanager
def read_only(engine: Engine) -> Iterator[sa.Connection]:
    """A connection for reads only, as ``with read_only(engine) as conn``. On SQLite every other transaction takes
    the write lock at BEGIN (see create_engine), so reads that do not need it (what to deliver, profiles to render)
    use this instead and never wait for a writer. Writing through it on SQLite can fail with "database is locked".

    Every cursor it opened is closed when the block ends, however it ends. A result left half-read (an exception
    while iterating it, a loop left early, a generator still holding it) keeps its SQLite statement running, and
    with it a read snapshot, after the ROLLBACK that returns the connection to the pool (Python's sqlite3 no longer
    resets statements on rollback); the next transaction on that pooled connection then cannot take the write lock
    once anyone has written since ("database is locked" at once, whatever busy_timeout), until the process ends."""
    conn = engine.connect().execution_options(chorus_read_only=True)
    cursors: weakref.WeakSet = weakref.WeakSet()
    sa.event.listen(conn, "after_cursor_execute", lambda _c, cursor, *_a: cursors.add(cursor))
    try:
        yield conn
    finally:
        try:
            for cursor in list(cursors):
                try:
                    cursor.close()  # resets its statement: ends the read; closing a closed cursor does nothing
                except Exception:  # noqa: BLE001 - a cursor that cannot close must not keep the connection
                    conn.invalidate()
                    break
        finally:
            conn.close()


def any_row(engine: Engine, query) -> bool:
    """Whether ``query`` finds a row, read without a write transaction. A worker task asks this before the write
    transaction that would find its work: most passes find none, and on SQLite a write transaction takes the one
    write lock that ingestion and the other tasks wait for (an idle pass took it five times for nothing)."""
    with read_only(engine) as conn:
        return conn.execute(query.limit(1)).first() is not None


class FreshStatistics:
    """ANALYZE some tables each time ``note`` has counted enough new rows (PostgreSQL; nothing on SQLite).

    Bulk loads grow tables faster than autovacuum re-analyses them, and with the statistics of a small table the
    planner scans or filters row by row where it should probe an index. The threshold doubles each time (tables
    grow; analyse less often), up to a million rows.
    """

    def __init__(self, tables: str, first: int):
        self.tables = tables
        self._since, self._every = 0, first
        self._lock = threading.Lock()

    def note(self, engine: Engine, n: int) -> None:
        if engine.dialect.name != "postgresql" or not n:
            return
        with self._lock:
            self._since += n
            if self._since < self._every:
                return
            self._since, self._every = 0, min(self._every * 2, 1_000_000)
        # each table in its own transaction (autocommit), and one another process is analysing is skipped rather
        # than waited for: the caller is a worker pass, and several workers reach their thresholds together
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql(f"ANALYZE (SKIP_LOCKED) {self.tables}")


def create_engine(url: str, **kwargs) -> Engine:
    url = normalise_url(url)
    kwargs.setdefault("hide_parameters", True)  # statement parameters are personal data; keep them out of logs
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling defers BEGIN; take the write lock at BEGIN instead so that two
        # writers queue on busy_timeout rather than failing with "database is locked" on upgrade.
        sa.event.listen(engine, "connect", lambda c, r: setattr(c, "isolation_level", None))
        sa.event.listen(engine, "begin", _sqlite_begin)
        path = engine.url.database
        if path and path != ":memory:" and not path.startswith("file:"):
            queue = engine.chorus_writer_queue = _WriterQueue(os.path.abspath(path))
            sa.event.listen(engine, "connect", lambda c, r: queue.open(r))
            # "commit"/"rollback" run just before the COMMIT/ROLLBACK: the next writer's BEGIN IMMEDIATE may find
            # SQLite's lock still held for that instant and retry after 1 ms
            sa.event.listen(engine, "commit", _sqlite_end)
            sa.event.listen(engine, "rollback", _sqlite_end)
            sa.event.listen(engine.pool, "checkin", lambda c, r: r is not None and queue.release(r))
            sa.event.listen(engine.pool, "close", lambda c, r: queue.close(r))
            sa.event.listen(engine.pool, "invalidate", lambda c, r, e: queue.close(r))
        return engine
    _fast_json()
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


# -- scrubbing: after rows were deleted for good (an erasure), their bytes leave the files ------------------------
VACUUM_MODES = ("full", "plain")


def scrub(
    engine: Engine, tables: list[str], vacuum: str = "full", attempts: int = 5, lock_timeout: str = "10s"
) -> dict:
    """Make deleted rows of ``tables`` unreadable in the database files, after the deleting transaction committed.

    SQLite: deleted content is already zeroed in its pages (``secure_delete``), but a page's unused space can still
    hold a stale copy of a row that lived there before SQLite moved it to another page (an outside probe found an
    erased person's event whole in a live page), and the WAL holds older copies of the pages. ``vacuum="full"``
    runs ``VACUUM`` (every page written anew from the live rows, in the writers' queue: other writers wait for it
    as for any transaction), then a TRUNCATE checkpoint copies the pages back and empties the WAL; ``plain`` only
    checkpoints. A reader holding an older snapshot blocks the checkpoint: retried ``attempts`` times (2 s each),
    then reported as pending (the next erasure, or closing the last connection at shutdown, completes it).

    PostgreSQL: VACUUM the tables (their TOAST tables and indexes with them). Plain VACUUM removes the dead rows
    and their index entries, but the freed space of a page keeps the old bytes until new rows overwrite them;
    VACUUM FULL (``vacuum="full"``) writes each table into new files and deletes the old ones, at the cost of an
    exclusive lock on the table while it does (not waited for longer than ``lock_timeout``). What neither
    removes (WAL segments, replicas, backups) is in docs/operations.md. Returns what was done, and what is pending
    with the reason.
    """
    if vacuum not in VACUUM_MODES:
        raise ValueError(f"vacuum must be one of {', '.join(VACUUM_MODES)}, got {vacuum!r}")
    if engine.dialect.name == "sqlite":
        return _sqlite_scrub(engine, vacuum, attempts)
    if engine.dialect.name != "postgresql":
        return {"done": [], "pending": {}}
    done, pending = [], {}
    # VACUUM cannot run inside a transaction block
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        # VACUUM keeps a deleted row that a snapshot older than the delete may still read (it is "recently dead",
        # and VACUUM FULL copies it into the new files): wait for those snapshots to end, or say the scrub waits
        older = _wait_for_older_snapshots(conn, timeout=attempts * 2.0)
        if older:
            reason = f"{older} transaction(s) older than the erasure are still open: their snapshots keep the rows"
            log.warning("erasure: VACUUM postponed: %s", reason)
            return {"done": [], "pending": {name: reason for name in dict.fromkeys(tables)}}
        # an exclusive lock that cannot be had soon is reported, not waited for while every query queues behind it
        conn.execute(sa.text("SELECT set_config('lock_timeout', :t, false)"), {"t": lock_timeout})
        try:
            for name in dict.fromkeys(tables):
                options = "FULL" if vacuum == "full" else "INDEX_CLEANUP ON"  # plain: never skip the index pass
                # VACUUM only warns, and skips the table, when the role does not own it: that is not "done"
                owner = "SELECT pg_has_role((SELECT relowner FROM pg_class WHERE oid = to_regclass(:n)), 'MEMBER')"
                if not conn.execute(sa.text(owner), {"n": f'"{name}"'}).scalar():
                    pending[name] = f"the database role {engine.url.username!r} does not own the table: VACUUM skips it"
                    log.warning("erasure: VACUUM of %s impossible: %s", name, pending[name])
                    continue
                try:
                    conn.exec_driver_sql(f'VACUUM ({options}) "{name}"')
                    done.append(name)
                except sa.exc.OperationalError as exc:  # lock_timeout: a long transaction holds the table
                    pending[name] = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                    log.warning("erasure: VACUUM %s of %s postponed: %s", options, name, pending[name])
        finally:
            conn.exec_driver_sql("RESET lock_timeout")
    return {"done": done, "pending": pending}


def _wait_for_older_snapshots(conn, timeout: float) -> int:
    """Wait until no other session of the cluster holds a snapshot or a transaction older than now; returns how
    many still do after ``timeout`` seconds (0: none). Other databases count: measured on PostgreSQL 15, a
    transaction open in another database of the cluster kept a deleted row through ``VACUUM FULL``."""
    # a transaction id allocated now, after the erasure committed: a session whose snapshot (backend_xmin) or whose
    # own transaction (backend_xid) is older may still read the deleted rows, so VACUUM would keep them
    horizon = conn.execute(sa.text("SELECT (pg_current_xact_id()::text::bigint % 4294967296)::text")).scalar_one()
    probe = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND backend_type = 'client backend' AND (age(backend_xmin) > age(CAST(:h AS xid)) "
        "OR age(backend_xid) > age(CAST(:h AS xid)))"
    )
    deadline = time.monotonic() + timeout
    while True:
        older = conn.execute(probe, {"h": str(horizon)}).scalar_one()
        if not older or time.monotonic() >= deadline:
            return int(older)
        time.sleep(0.05)


def _sqlite_scrub(engine: Engine, vacuum: str, attempts: int) -> dict:
    done: list[str] = []
    pending: dict[str, str] = {}
    raw = engine.raw_connection()  # no BEGIN: neither VACUUM nor a checkpoint can run inside a transaction
    try:
        cur = raw.cursor()
        if vacuum == "full":
            queue = getattr(engine, "chorus_writer_queue", None)
            record = getattr(raw, "_connection_record", None)
            queued = queue is not None and record is not None and "chorus_writer_fds" in record.info
            if queued:  # the other writers queue behind it in order, as behind any write transaction
                queue.acquire(record)
            try:
                cur.execute("VACUUM")
                done.append("VACUUM")
            except sqlite3.OperationalError as exc:  # busy past busy_timeout, or no room for the temporary copy
                pending["vacuum"] = f"VACUUM could not run ({exc}); the next erasure tries again"
                log.warning("erasure: %s", pending["vacuum"])
            finally:
                if queued:
                    queue.release(record)
        cur.execute("PRAGMA busy_timeout=2000")
        try:
            for i in range(attempts):
                busy, _log, _done = cur.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    done.append("wal_checkpoint(TRUNCATE)")
                    break
                time.sleep(0.05 * (i + 1))
            else:
                why = "a reader held an older snapshot; the WAL is emptied at the next erasure or when the server stops"
                log.warning("erasure: WAL checkpoint postponed: %s", why)
                pending["wal"] = why
        finally:
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.close()
    finally:
        raw.close()
    return {"done": done, "pending": pending}


# SQLSTATE classes of a database that is unavailable or busy for a while (connection, transaction rollback:
# serialization or deadlock, insufficient resources, object in use, operator intervention, system error): nothing the
# transaction wrote is to blame for them
_TRANSIENT_SQLSTATE = ("08", "40", "53", "55", "57", "58")


def rolled_back(exc: BaseException) -> bool:
    """Whether the database rolled the transaction back itself, for a passing reason (SQLSTATE class 40: a deadlock
    it broke by failing this side, a serialization failure): nothing of it committed, so doing it again is safe.
    Unlike :func:`transient`, not a lost connection, after which a commit may have happened."""
    return isinstance(exc, sa.exc.DBAPIError) and (getattr(exc.orig, "sqlstate", None) or "").startswith("40")


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is the database being unavailable or busy for a while (a lost connection, a restart, a lock
    held too long): whatever the transaction was writing is not at fault (an event stays pending, never rejected
    for it; a delivery's recording is written again)."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return False
    code = getattr(exc.orig, "sqlstate", None)
    if code:
        return code[:2] in _TRANSIENT_SQLSTATE
    text = str(exc.orig).lower()
    return "locked" in text or "busy" in text or isinstance(exc, sa.exc.InterfaceError)
