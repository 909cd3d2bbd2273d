"""The segment engine's writers under concurrency on PostgreSQL (found by review): an erasure that waits for an
evaluation leaves nothing of the person, an exit is recorded once, concurrent definition changes cannot leave a
dangling reference, and two creations of one segment do not end in a 500."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus.profiles import feed, privacy
from chorus.segments import engine as seg
from chorus.segments import rules, store
from chorus.store.tables import events, profile_changes, profiles, segment_history, segment_members, segment_timers
from tests.identity.helpers import profile_of, resolve
from tests.segments.test_engine import T0, define, ev, send, settle


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    return engine


def test_an_erasure_waiting_for_an_evaluation_leaves_nothing_of_her(pg, ws, clock):
    define(pg, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    send(pg, ws, [ev("Product Viewed", T0)])
    resolve(pg)
    pid = profile_of(pg, ws, "user_id:u1")
    errors: list = []
    with pg.connect() as conn_a:
        tx = conn_a.begin()
        conn_a.execute(sa.select(profiles.c.id).where(profiles.c.id == pid).with_for_update())

        def erase():
            try:
                privacy.forget(pg, ws, pid, vacuum="plain")
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=erase)
        t.start()
        time.sleep(1.0)  # the erasure waits for the evaluation to end
        seg.Evaluator(conn_a, ws, T0 + timedelta(minutes=1)).person(pid, {"viewers"}, "event")
        tx.commit()
        t.join(30)
    assert not errors
    with pg.connect() as conn:
        for t in (segment_members, segment_history, events, segment_timers):
            assert conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.profile_id == pid)).scalar() == 0


def test_a_merged_profile_leaves_once_whoever_tells_the_engine(pg, ws, clock, worker):
    define(pg, ws, "recent", {"performed": {"event": "Product Viewed", "window": "7d"}})
    send(pg, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()}])
    send(pg, ws, [{**ev("Product Viewed", T0), "userId": None, "anonymousId": "a1"}])
    settle(worker)
    anon = profile_of(pg, ws, "anonymous_id:a1")
    send(pg, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                   "timestamp": (T0 + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    resolve(pg)
    survivor = profile_of(pg, ws, "user_id:u1")
    at = T0 + timedelta(days=7)
    merge = feed.Delivered(1, ws, anon, "merge", None, survivor, at)

    def tell():
        with pg.begin() as conn:
            seg.consumer(lambda: at)(conn, ws, anon, [merge])

    threads = [threading.Thread(target=tell) for _ in range(2)]
    for t in threads:
        t.start()
    seg.due(pg, clock=lambda: at)
    for t in threads:
        t.join()
    with pg.connect() as conn:
        hist = conn.execute(sa.select(segment_history.c.change).where(segment_history.c.profile_id == anon)).scalars()
        assert list(hist).count("exited") == 1


def test_a_save_referring_to_a_segment_being_deleted_cannot_both_commit(pg, ws, clock):
    define(pg, ws, "x", {"bucket": {"from": 0, "to": 100}})
    errors: list = []
    with pg.connect() as c1:
        t1 = c1.begin()
        store.delete(c1, ws, "x")

        def save():
            try:
                with pg.begin() as c2:
                    store.save(c2, ws, "y", "y", rules.parse({"segment": "x"}), T0)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=save)
        t.start()
        time.sleep(0.5)
        t1.commit()
        t.join(30)
    assert len(errors) == 1 and "does not exist" in str(errors[0])
    with pg.connect() as conn:
        assert store.definitions(conn, ws) == {}


def test_two_creations_of_one_segment_at_once_are_a_create_and_an_update(pg, ws):
    rule = rules.parse({"bucket": {"from": 0, "to": 10}})
    errors: list = []
    with pg.connect() as c1:
        t1 = c1.begin()
        store.save(c1, ws, "new", "new", rule, T0)

        def save():
            try:
                with pg.begin() as c2:
                    store.save(c2, ws, "new", "New", rule, T0)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=save)
        t.start()
        time.sleep(0.5)
        t1.commit()
        t.join(30)
    assert not errors
    with pg.connect() as conn:
        assert store.get(conn, ws, "new").name == "New"


def test_a_segment_deleted_while_someone_enters_it_leaves_no_member_behind(pg, ws, clock):
    """The evaluation holds the definitions it read (a shared lock): the deletion waits for it, then records her
    exit; without it the deletion found no member, committed, and her entry landed in a segment that is gone."""
    define(pg, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    send(pg, ws, [ev("Product Viewed", T0)])
    resolve(pg)
    pid = profile_of(pg, ws, "user_id:u1")
    errors: list = []
    with pg.connect() as conn_a:
        tx = conn_a.begin()
        evaluator = seg.Evaluator(conn_a, ws, T0 + timedelta(minutes=1))

        def drop():
            try:
                seg.drop(pg, ws, "viewers", clock=lambda: T0 + timedelta(minutes=2))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=drop)
        t.start()
        time.sleep(1.0)  # the deletion waits for the evaluation
        assert t.is_alive()
        assert evaluator.person(pid, {"viewers"}, "event").entered == ["viewers"]
        tx.commit()
        t.join(30)
    assert not errors
    with pg.connect() as conn:
        for t in (segment_members, segment_timers):
            assert conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.profile_id == pid)).scalar() == 0
        assert store.definitions(conn, ws) == {}
        fed = [c.detail["change"] for c in conn.execute(sa.select(profile_changes).where(
            profile_changes.c.cause == "segment", profile_changes.c.profile_id == pid))]  # fmt: skip
        assert fed == ["entered", "exited"]
