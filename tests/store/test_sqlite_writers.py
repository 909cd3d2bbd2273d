"""SQLite has one write lock for the whole store: chorus' writers take turns on it in arrival order, so a writer
that commits and begins again at once (a worker resolving a backlog) cannot starve another (an import)."""

from __future__ import annotations

import threading
import time

import sqlalchemy as sa

from chorus.store.db import create_engine, read_only


def _engine(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE log (who TEXT, at REAL)")
    return engine


def test_a_writer_that_begins_again_at_once_does_not_starve_another(tmp_path):
    engine = _engine(tmp_path)
    done = {}

    def greedy():  # back-to-back transactions of 50 ms, as a worker draining a backlog
        for _ in range(30):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO log VALUES ('greedy', ?)", (time.monotonic(),))
                time.sleep(0.05)
        done["greedy"] = time.monotonic()

    def other():  # short transactions with work in between, as an import
        time.sleep(0.1)
        for _ in range(5):
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO log VALUES ('other', ?)", (time.monotonic(),))
            time.sleep(0.01)
        done["other"] = time.monotonic()

    threads = [threading.Thread(target=greedy), threading.Thread(target=other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # with SQLite's busy_timeout alone, "other" retried after sleeps of up to 100 ms and found the lock taken
    # again every time: it finished only after "greedy" had finished all 30
    assert done["other"] < done["greedy"]
    with engine.connect() as conn:
        order = [w for (w,) in conn.exec_driver_sql("SELECT who FROM log ORDER BY rowid")]
    first_other = order.index("other")
    # each of its transactions waits for at most the one in progress: the five are interleaved, one greedy apart
    assert order[first_other:first_other + 10].count("other") == 5


def test_a_failed_or_dropped_transaction_leaves_the_lock_free(tmp_path):
    engine = _engine(tmp_path)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO log VALUES ('x', 0)")
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    conn = engine.connect()
    conn.begin()
    conn.exec_driver_sql("INSERT INTO log VALUES ('y', 0)")
    conn.invalidate()  # a connection lost mid-transaction: its queue files are closed with it
    with read_only(engine) as reader:  # a reader does not queue for the write lock
        assert reader.execute(sa.text("SELECT count(*) FROM log")).scalar() == 0
        box = {}
        # another thread (its own connection) writes while the reader is open, without waiting
        t = threading.Thread(target=lambda: box.setdefault("n", _write_and_count(engine)))
        t.start()
        t.join(10)
    assert box == {"n": 1}


def _write_and_count(engine) -> int:
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO log VALUES ('z', 0)")
        return conn.exec_driver_sql("SELECT count(*) FROM log").scalar()


def test_on_sqlite_the_worker_takes_short_batches_while_others_wait_for_it(engine, workspace):
    """While another writer waits for SQLite's write lock, a resolving transaction holds it for about
    Resolution.MAX_HOLD, whatever the backlog; alone (and always on PostgreSQL: row locks, no store-wide lock) the
    worker takes its configured batch."""
    from chorus.collect import ingest
    from chorus.collect.messages import normalise
    from chorus.store.db import writers_waited
    from chorus.timeutil import utcnow
    from chorus.worker import Worker
    from chorus.workspaces import source_by_write_key
    from tests.conftest import pending

    with engine.begin() as conn:
        src = source_by_write_key(conn, workspace["server_write_key"])
        now = utcnow()
        msgs = [{"type": "track", "userId": f"u{i}", "event": "Viewed", "messageId": f"m{i}",
                 "timestamp": "2026-06-01T08:00:00Z"} for i in range(300)]  # fmt: skip
        ingest.store(conn, src, [normalise(m, received_at=now, source_kind="server") for m in msgs], [], now)
    w = Worker(engine, batch=200)
    r = w.task("resolve")  # the batch sizing is the resolution task's
    assert r.next_batch() == 200  # nothing measured yet
    assert r.run_once() == 200 and r._rate
    r._rate = 100.0 / r.MAX_HOLD  # MAX_HOLD's worth is 100 events
    assert r.next_batch() == 200  # nobody waits: a full batch
    # another writer queues while this one holds the lock
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1")
        other = threading.Thread(target=_touch, args=(engine,))
        other.start()
        time.sleep(0.3)
    other.join(10)
    if engine.dialect.name == "sqlite":
        assert writers_waited(engine, 5.0)
        assert r.next_batch() == 100
        assert r.run_once() == 100 and pending(engine) == 0
    else:
        assert not writers_waited(engine, 5.0)
        assert r.next_batch() == 200
        assert r.run_once() == 100 and pending(engine) == 0


def _touch(engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1")


def test_a_writer_the_queue_cannot_let_through_fails_as_sqlite_would_instead_of_hanging(tmp_path, monkeypatch):
    # the queue waits at most busy_timeout; then SQLite's own busy handling answers "database is locked"
    monkeypatch.setattr("chorus.store.db.BUSY_TIMEOUT_MS", 300)
    first, second = _engine(tmp_path), create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    holding, release = threading.Event(), threading.Event()

    def hold():  # another thread inside a write transaction that does not end while we wait
        with first.begin() as conn:
            conn.exec_driver_sql("INSERT INTO log VALUES ('holder', 0)")
            holding.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        holding.wait(5)
        started = time.monotonic()
        try:
            with second.begin() as conn:
                conn.exec_driver_sql("INSERT INTO log VALUES ('late', 0)")
            raise AssertionError("a second writer got in while the first held the lock")
        except sa.exc.OperationalError as exc:
            assert "locked" in str(exc)
        assert time.monotonic() - started < 5  # the queue's wait plus SQLite's, not for ever
    finally:
        release.set()
        t.join()
    # and the queue works again once the holder is gone
    with second.begin() as conn:
        conn.exec_driver_sql("INSERT INTO log VALUES ('after', 0)")


def test_one_thread_writing_through_two_engines_on_one_file_gets_sqlites_error_not_a_hang(tmp_path, monkeypatch):
    monkeypatch.setattr("chorus.store.db.BUSY_TIMEOUT_MS", 300)
    first, second = _engine(tmp_path), create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    started = time.monotonic()
    with first.begin() as outer:
        outer.exec_driver_sql("INSERT INTO log VALUES ('outer', 0)")
        try:
            with second.begin() as inner:
                inner.exec_driver_sql("INSERT INTO log VALUES ('inner', 0)")
            raise AssertionError("two write transactions at once on one SQLite file")
        except sa.exc.OperationalError as exc:
            assert "locked" in str(exc)
    assert time.monotonic() - started < 5
