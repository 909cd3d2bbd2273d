"""The lake belongs to one store (decision 0054): an export notices another store's lake and a store that went back
behind the lake's marks (a restore from a backup), and refuses rather than skipping new events and erasures; one
export at a time per lake; a damaged state file is an error naming the file and the key."""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.analytics import lake
from chorus.identity.resolver import Resolver
from chorus.profiles import privacy, views
from chorus.store.db import create_engine, upgrade
from chorus.store.tables import erasures, events
from chorus.timeutil import utcnow
from tests.analytics.test_lake import read, store

NOW0 = timedelta(0)


def _track(engine, w, prefix: str, n: int) -> None:
    msgs = [{"type": "track", "userId": f"{prefix}-{i}", "event": "Product Viewed", "messageId": f"{prefix}-{i}",
             "timestamp": "2026-06-01T10:00:00Z"} for i in range(n)]  # fmt: skip
    store(engine, w, *msgs, at=utcnow())  # stored now, as in production: the checks compare with the last run
    Resolver(engine).drain()


def _export(engine, root):
    return lake.export(engine, root, settle=NOW0)


def _restore(engine, events_upto: int, erasures_upto: int) -> None:
    """What a restore from a backup taken at (events_upto, erasures_upto) does to the numbering: the later rows are
    gone, and the next rows get the numbers again (SQLite reuses max + 1; PostgreSQL's sequences go back)."""
    with engine.begin() as conn:
        conn.execute(events.delete().where(events.c.seq > events_upto))
        conn.execute(erasures.delete().where(erasures.c.id > erasures_upto))
        if conn.dialect.name == "postgresql":
            for table, col, value in (("events", "seq", events_upto), ("erasures", "id", erasures_upto)):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), :v, :called)"),
                             {"v": max(value, 1), "called": value > 0})  # fmt: skip


def _max_seq(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.max(events.c.seq))).scalar() or 0


def _users(root) -> set[str]:
    return {e["user_id"] for e in read(root, "events")}


def test_new_events_after_a_restore_are_not_skipped_silently(engine, tmp_path):
    w = workspaces.create(engine, "restore")
    _track(engine, w, "a", 5)
    backup = _max_seq(engine)
    _track(engine, w, "r1", 5)
    _export(engine, tmp_path)
    _restore(engine, backup, 0)
    _track(engine, w, "r2", 5)  # numbered like r1's events: at or below the lake's mark
    assert _max_seq(engine) == backup + 5
    with pytest.raises(ValueError, match="went back behind the lake") as err:
        _export(engine, tmp_path)
    assert "new, empty --out directory" in str(err.value)
    assert not {f"r2-{i}" for i in range(5)} & _users(tmp_path)
    fresh = tmp_path / "rebuilt"
    assert _export(engine, fresh).events == 10  # the way out it names: a new lake has the store as it is
    assert {f"r2-{i}" for i in range(5)} <= _users(fresh)


def test_new_events_past_the_mark_after_a_restore_are_noticed_too(engine, tmp_path):
    """More new events than the restore removed: the numbers go past the lake's mark, and the events under it
    are still new ones."""
    w = workspaces.create(engine, "restore2")
    _track(engine, w, "a", 3)
    backup = _max_seq(engine)
    _track(engine, w, "r1", 3)
    _export(engine, tmp_path)
    _restore(engine, backup, 0)
    _track(engine, w, "r2", 8)
    with pytest.raises(ValueError, match="went back behind the lake"):
        _export(engine, tmp_path)


def test_an_erasure_after_a_restore_reaches_the_lake(engine, tmp_path):
    """The restored store gives the new erasure the number of one the lake applied already: the export refuses,
    and still removes the erased person from the lake."""
    w = workspaces.create(engine, "erase")
    _track(engine, w, "p", 4)
    _export(engine, tmp_path)
    with engine.connect() as conn:
        p0, p1 = (views.find_by_ident(conn, w["id"], f"user_id:p-{i}") for i in (0, 1))
    with engine.begin() as conn:
        privacy.erase(conn, w["id"], p0)  # erasure 1, applied by the lake
    _export(engine, tmp_path)
    with engine.connect() as conn:
        (first,) = conn.execute(sa.select(erasures.c.id)).scalars().all()
    _restore(engine, _max_seq(engine), first - 1)  # a backup from before that erasure
    with engine.begin() as conn:
        privacy.erase(conn, w["id"], p1)  # gets erasure 1's number again
    with engine.connect() as conn:
        assert conn.execute(sa.select(erasures.c.id)).scalars().all() == [first]
    assert "p-1" in _users(tmp_path)
    with pytest.raises(ValueError, match="went back behind the lake") as err:
        _export(engine, tmp_path)
    assert "removed from the lake every person the store has erased" in str(err.value)
    assert "p-1" not in _users(tmp_path) and p1 not in {e["profile_id"] for e in read(tmp_path, "events")}
    assert {"p-2", "p-3"} <= _users(tmp_path)


def test_a_sqlite_store_restored_from_its_backup_file(tmp_path):
    """The probe's case, with SQLite's own backup: the restored file has the store's id, and its numbers."""
    path = tmp_path / "s.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    eng = create_engine(url)
    w = workspaces.create(eng, "shop")
    _track(eng, w, "a", 4)
    eng.dispose()
    with sqlite3.connect(path) as src, sqlite3.connect(tmp_path / "backup.db") as dst:
        src.backup(dst)
    eng = create_engine(url)
    _track(eng, w, "r1", 4)
    out = tmp_path / "lake"
    assert _export(eng, out).events == 8
    eng.dispose()
    os.replace(tmp_path / "backup.db", path)
    for extra in ("-wal", "-shm"):
        (tmp_path / f"s.db{extra}").unlink(missing_ok=True)
    eng = create_engine(url)
    _track(eng, w, "r2", 4)
    r = subprocess.run([sys.executable, "-m", "chorus.cli", "lake", "export", "--out", str(out), "--settle", "0",
                        "--db", url], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "went back behind the lake" in r.stderr and "Traceback" not in r.stderr
    eng.dispose()


def test_another_stores_export_into_the_lake_is_refused(engine, tmp_path):
    w = workspaces.create(engine, "one")
    _track(engine, w, "one", 3)
    out = tmp_path / "lake"
    _export(engine, out)
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(other_url)  # a store of its own: its own id
    other = create_engine(other_url)
    try:
        w2 = workspaces.create(other, "two")
        _track(other, w2, "two", 6)
        before = sorted(p.relative_to(out) for p in out.rglob("*"))
        with pytest.raises(ValueError, match="exported from another store") as err:
            _export(other, out)
        assert "its own, new --out directory" in str(err.value)
        assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # left as it was
        assert _export(other, tmp_path / "lake2").events == 6
    finally:
        other.dispose()


def test_a_normal_erasure_and_new_events_are_no_restore(engine, tmp_path):
    """The checks do not fire on a store that only moved on: erasures, new events, runs with nothing new."""
    w = workspaces.create(engine, "calm")
    _track(engine, w, "c", 4)
    _export(engine, tmp_path)
    with engine.connect() as conn:
        c0 = views.find_by_ident(conn, w["id"], "user_id:c-0")
    with engine.begin() as conn:
        privacy.erase(conn, w["id"], c0)
    _export(engine, tmp_path)
    _export(engine, tmp_path)
    _track(engine, w, "d", 3)
    assert _export(engine, tmp_path).events == 3
    assert _users(tmp_path) == {"c-1", "c-2", "c-3", "d-0", "d-1", "d-2"}


def test_new_events_numbered_like_the_erased_last_ones_are_exported(engine, tmp_path):
    """SQLite gives the next event the number after the highest one left: erasing the person of the last exported
    events hands their numbers to new events, with no restore. The lake holds none of those numbers any more, so
    the export goes on from what it holds (PostgreSQL never reuses a number: the same test passes plainly)."""
    w = workspaces.create(engine, "reuse")
    _track(engine, w, "k", 3)
    store(engine, w, *({"type": "track", "userId": "last", "event": "Product Viewed", "messageId": f"last-{i}",
                        "timestamp": "2026-06-01T11:00:00Z"} for i in range(3)), at=utcnow())  # fmt: skip
    Resolver(engine).drain()
    top = _max_seq(engine)
    _export(engine, tmp_path)
    with engine.connect() as conn:
        last = views.find_by_ident(conn, w["id"], "user_id:last")
    with engine.begin() as conn:
        privacy.erase(conn, w["id"], last)
    _track(engine, w, "n", 5)
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # the situation this test is about
            assert conn.execute(sa.select(sa.func.count()).where(events.c.seq <= top,
                                                                 events.c.user_id.like("n-%"))).scalar() == 3
    r = _export(engine, tmp_path)
    assert r.events == 5 and r.erased_profiles == 1
    ids = [e["message_id"] for e in read(tmp_path, "events")]
    assert sorted(ids) == sorted([f"k-{i}" for i in range(3)] + [f"n-{i}" for i in range(5)])
    _track(engine, w, "m", 2)
    assert _export(engine, tmp_path).events == 2  # and on from there, with nothing twice
    assert len({e["message_id"] for e in read(tmp_path, "events")}) == len(read(tmp_path, "events")) == 10


# -- one export at a time -------------------------------------------------------------------------------------------
def test_a_second_export_while_one_runs_fails_and_changes_nothing(db_url, engine, tmp_path):
    w = workspaces.create(engine, "lock")
    _track(engine, w, "x", 3)
    out = tmp_path / "lake"
    out.mkdir()
    with open(out / lake.LOCK_FILE, "a+") as held:  # what a running export holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match="another `chorus lake export` is writing the lake"):
            _export(engine, out)
        r = subprocess.run([sys.executable, "-m", "chorus.cli", "lake", "export", "--out", str(out), "--settle", "0",
                            "--db", db_url], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 2 and "another `chorus lake export`" in r.stderr and "Traceback" not in r.stderr
        assert read(out, "events") == [] and not (out / lake.STATE_FILE).exists()
    assert _export(engine, out).events == 3  # the lock went with its holder
    assert _export(engine, out).events == 0


def test_overlapping_exports_never_write_an_event_twice(engine, tmp_path):
    import threading

    w = workspaces.create(engine, "overlap")
    out = tmp_path / "lake"
    outcomes = []
    for round_ in range(4):
        _track(engine, w, f"o{round_}", 20)
        barrier = threading.Barrier(3)

        def run(barrier=barrier):
            barrier.wait()
            try:
                outcomes.append(_export(engine, out).events)
            except ValueError as exc:
                assert "another `chorus lake export`" in str(exc)
                outcomes.append("busy")

        threads = [threading.Thread(target=run) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    _export(engine, out)
    ids = [e["message_id"] for e in read(out, "events")]
    assert len(ids) == len(set(ids)) == 80


# -- the state file -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ('{"erasures_id": null}', "erasures_id"),
        ('{"events_seq": "abc"}', "events_seq"),
        ('{"events_seq": -5}', "events_seq"),
        ('{"events_seq": 1.5}', "events_seq"),
        ('{"events_seq": true}', "events_seq"),
        ('{"messages_cutoff": "yesterday"}', "messages_cutoff"),
        ('{"messages_cutoff": "2026-06-01T00:00:00"}', "messages_cutoff"),  # no offset: compared with UTC times
        ('{"store_id": 7}', "store_id"),
    ],
)
def test_a_bad_value_in_the_state_file_names_the_file_and_key(engine, tmp_path, doc, key):
    w = workspaces.create(engine, "state")
    _track(engine, w, "s", 2)
    (tmp_path / lake.STATE_FILE).write_text(doc)
    with pytest.raises(ValueError) as err:
        _export(engine, tmp_path)
    text = str(err.value)
    assert str(tmp_path / lake.STATE_FILE) in text and repr(key) in text and "remove the file" in text, text
    assert "invalid literal" not in text and "isoformat" not in text
    assert read(tmp_path, "events") == []  # nothing exported on a bad mark


def test_a_store_from_before_the_store_id_is_told_to_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0021")
    eng = create_engine(url)
    try:
        with pytest.raises(ValueError, match="run `chorus db upgrade` on it first"):
            _export(eng, tmp_path / "lake")
    finally:
        eng.dispose()
