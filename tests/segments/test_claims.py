"""A claim's people evaluated together (decision 0034): the timer task skips a person another worker holds and
evaluates the others once; a claim that fails halfway leaves nothing of its bulk attempt and each person is then
handled alone; the timer task and the consumer never wait for each other in a cycle (PostgreSQL)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import metrics
from chorus.profiles import feed
from chorus.segments import engine as seg
from chorus.store.tables import events, feed_pending, profile_changes, profiles, segment_history
from tests.identity.helpers import profile_of, resolve
from tests.segments.test_engine import T0, define, ev, members, send

RECENT = {"performed": {"event": "Product Viewed", "window": "7d"}}


def _people(engine, ws, n=4):
    define(engine, ws, "recent", RECENT)
    seg.recompute(engine, ws, "recent")
    feed.subscribe(engine, seg.CONSUMER)
    for i in range(n):
        send(engine, ws, [ev("Product Viewed", T0, user=f"u{i}")], received_at=T0)
    resolve(engine)
    assert feed.consume(engine, seg.CONSUMER, seg.consumer(lambda: T0)) >= n
    ids = [profile_of(engine, ws, f"user_id:u{i}") for i in range(n)]
    assert members(engine, ws, "recent") == set(ids)
    return ids


def _written(engine, ws):
    """Per person: history rows by change, `segment` feed changes, Segment Entered/Exited timeline events."""
    with engine.connect() as conn:
        h = conn.execute(sa.select(segment_history.c.profile_id, segment_history.c.change, sa.func.count())
                         .where(segment_history.c.workspace_id == ws)
                         .group_by(segment_history.c.profile_id, segment_history.c.change)).all()  # fmt: skip
        fc = conn.execute(sa.select(profile_changes.c.profile_id, sa.func.count())
                          .where(profile_changes.c.workspace_id == ws, profile_changes.c.cause == "segment")
                          .group_by(profile_changes.c.profile_id)).all()  # fmt: skip
        te = conn.execute(sa.select(events.c.profile_id, sa.func.count())
                          .where(events.c.workspace_id == ws,
                                 events.c.event.in_(["Segment Entered", "Segment Exited"]))
                          .group_by(events.c.profile_id)).all()  # fmt: skip
    return {(p, c): n for p, c, n in h}, dict(fc), dict(te)


def test_the_timer_task_skips_a_person_another_worker_holds_and_evaluates_the_others_once(engine, ws, clock):
    if engine.dialect.name != "postgresql":
        pytest.skip("SKIP LOCKED: PostgreSQL (SQLite has one writer)")
    ids = _people(engine, ws)
    at = T0 + timedelta(days=7)  # every view leaves the window now
    held = sorted(ids)[1]
    with engine.connect() as other:
        tx = other.begin()
        other.execute(sa.select(profiles.c.id).where(profiles.c.id == held).with_for_update())
        assert seg.due(engine, clock=lambda: at) == 3
        tx.rollback()
    assert members(engine, ws, "recent") == {held}
    assert seg.due(engine, clock=lambda: at) == 1 and members(engine, ws, "recent") == set()
    assert seg.due(engine, clock=lambda: at) == 0
    h, fc, te = _written(engine, ws)
    for p in ids:  # entered, then exited exactly once
        assert (h[(p, "entered")], h[(p, "exited")], fc[p], te[p]) == (1, 1, 2, 2)


def test_a_claim_that_fails_halfway_leaves_nothing_and_each_person_is_handled_alone(engine, ws, clock, monkeypatch):
    ids = _people(engine, ws)
    bad = sorted(ids)[2]
    real = seg.decide

    def decide(defs, order, dependents, sids, person, *a, **k):
        if person.id == bad:
            raise RuntimeError("her data breaks a rule")
        return real(defs, order, dependents, sids, person, *a, **k)

    monkeypatch.setattr(seg, "decide", decide)
    at = T0 + timedelta(days=8)  # a new event for everybody, evaluated out of the 7-day window: they leave
    for i in range(len(ids)):  # an identify (a page view of another name would not reach "recent": engine.Index)
        send(engine, ws, [{**ev("Other", at, user=f"u{i}"), "type": "identify", "traits": {"seen": True}}],
             received_at=at)  # fmt: skip
    resolve(engine)
    before = metrics.feed_bulk_fallbacks.labels(seg.CONSUMER)._value.get()
    feed.consume(engine, seg.CONSUMER, seg.consumer(lambda: at))
    with engine.connect() as conn:  # her change counted an attempt; the others' were handled (their exits wait)
        failed = set(conn.execute(sa.select(feed_pending.c.profile_id).where(
            feed_pending.c.consumer == seg.CONSUMER, feed_pending.c.workspace_id == ws,
            feed_pending.c.attempts > 0)).scalars())  # fmt: skip
    assert failed == {bad}
    assert metrics.feed_bulk_fallbacks.labels(seg.CONSUMER)._value.get() == before + 1
    h, fc, te = _written(engine, ws)
    for p in ids:  # the failed bulk attempt wrote nothing: one exit each, from the person-by-person pass
        assert (h.get((p, "exited"), 0), fc[p], te[p]) == ((0, 1, 1) if p == bad else (1, 2, 2))
    assert members(engine, ws, "recent") == {bad}


@pytest.mark.parametrize("path", ["claim", "person by person"])
def test_the_timer_task_and_the_consumer_never_deadlock_over_a_merged_away_person(engine, ws, clock, monkeypatch,
                                                                                  path):  # fmt: skip
    """A merged-away person's rows are written (she leaves everything) before a live person's row is locked, by
    the consumer and by the timer task alike; the timer task holding the live row while waiting for hers, and the
    consumer holding hers while waiting for the live row, was a cycle (found by review)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    define(engine, ws, "recent", RECENT)
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()}])
    send(engine, ws, [{**ev("Product Viewed", T0), "userId": None, "anonymousId": "a1"}])
    send(engine, ws, [ev("Product Viewed", T0, user="u2")])
    resolve(engine)
    anon, live = profile_of(engine, ws, "anonymous_id:a1"), profile_of(engine, ws, "user_id:u2")
    with engine.begin() as conn:  # both members, with timers due in 7 days
        seg.Evaluator(conn, ws, T0).people({anon: {"recent"}, live: {"recent"}}, {anon: "event", live: "event"})
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": (T0 + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    resolve(engine)  # the anonymous profile merges into u1's
    survivor = profile_of(engine, ws, "user_id:u1")
    at = T0 + timedelta(days=7)
    merge = feed.Delivered(1, ws, anon, "merge", None, survivor, at)
    change = feed.Delivered(2, ws, live, "event", None, None, at)
    real_lock = seg.lock_people
    due_locked = threading.Event()

    def lock_people(conn, ws_, pids, *, skip_locked=False):
        if threading.current_thread().name == "consumer":
            due_locked.wait(3)  # give the timer task the chance to lock the live person first
        out = real_lock(conn, ws_, pids, skip_locked=skip_locked)
        if threading.current_thread().name == "due" and skip_locked:
            due_locked.set()
        return out

    monkeypatch.setattr(seg, "lock_people", lock_people)
    errors: dict[str, BaseException] = {}

    def consumer():
        try:
            with engine.begin() as conn:
                c = seg.consumer(lambda: at)
                if path == "claim":
                    c.many(conn, {(ws, anon): [merge], (ws, live): [change]})
                else:
                    c(conn, ws, anon, [merge])
                    c(conn, ws, live, [change])
        except Exception as exc:  # noqa: BLE001
            errors["consumer"] = exc

    def due():
        try:
            seg.due(engine, clock=lambda: at)
        except Exception as exc:  # noqa: BLE001
            errors["due"] = exc

    tc = threading.Thread(target=consumer, name="consumer")
    tc.start()
    time.sleep(1.0)  # the consumer has written the merged-away person's rows and waits before locking the live one
    td = threading.Thread(target=due, name="due")
    td.start()
    tc.join(30)
    td.join(30)
    assert not errors, {k: repr(v)[:300] for k, v in errors.items()}
    assert members(engine, ws, "recent") == set()
