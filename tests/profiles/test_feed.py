"""The change feed (chorus.profiles.feed): every change to a profile is recorded with it, and each consumer gets
each change exactly once, one person's changes in order, whatever the crashes and the number of workers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import registry as reg
from chorus import workspaces
from chorus.messaging import consent
from chorus.profiles import computed, feed, privacy
from chorus.store.tables import events, feed_pending, profile_changes
from chorus.timeutil import utcnow
from chorus.worker import Worker
from tests.identity.helpers import profile_of, resolve, send

# a consumer's own effects, committed with the deletion of what it handled (the test's stand-in for segments)
seen = sa.Table(
    "test_feed_seen", sa.MetaData(),
    sa.Column("consumer", sa.String(60)), sa.Column("seq", sa.BigInteger), sa.Column("profile_id", sa.String(40)),
    sa.Column("cause", sa.String(16)),
)  # fmt: skip


@pytest.fixture
def ws(engine):
    seen.create(engine, checkfirst=True)
    with engine.begin() as conn:
        conn.execute(seen.delete())
    return workspaces.create(engine, "feed-" + uuid.uuid4().hex[:6])["id"]


def changes(engine, ws_id=None, cause=None):
    q = sa.select(profile_changes).order_by(profile_changes.c.seq)
    if ws_id:
        q = q.where(profile_changes.c.workspace_id == ws_id)
    if cause:
        q = q.where(profile_changes.c.cause == cause)
    with engine.connect() as conn:
        return conn.execute(q).all()


def remember(name):
    def handle(conn, ws_id, pid, chs):
        last = conn.execute(sa.select(sa.func.max(seen.c.seq)).where(seen.c.consumer == name,
                                                                    seen.c.profile_id == pid)).scalar()  # fmt: skip
        assert last is None or last < chs[0].seq, f"{pid}: {chs[0].seq} handled after {last}"
        assert [c.seq for c in chs] == sorted(c.seq for c in chs)
        conn.execute(seen.insert(), [{"consumer": name, "seq": c.seq, "profile_id": pid, "cause": c.cause}
                                     for c in chs])  # fmt: skip

    return handle


def seen_rows(engine, name):
    with engine.connect() as conn:
        return conn.execute(sa.select(seen.c.seq, seen.c.profile_id, seen.c.cause).where(seen.c.consumer == name)
                            .order_by(seen.c.seq)).all()  # fmt: skip


# -- every path records its changes -----------------------------------------------------------------------------------
def test_each_resolved_event_is_one_change_of_its_profile(engine, ws):
    send(engine, ws, [{"type": "page", "anonymousId": "a1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z"}])
    resolve(engine)  # her profile exists before the view: a view of a profile made in its own batch is news in full
    send(engine, ws, [
        {"type": "track", "anonymousId": "a1", "event": "Product Viewed", "messageId": "m2",
         "timestamp": "2026-01-01T10:01:00Z", "context": {"channel": "web"}},
        {"type": "identify", "userId": "u1", "anonymousId": "a2", "messageId": "m3",
         "timestamp": "2026-01-01T10:02:00Z"},
    ])  # fmt: skip
    resolve(engine)
    with engine.connect() as conn:
        evs = {r.message_id: r for r in conn.execute(sa.select(events.c.seq, events.c.message_id, events.c.profile_id)
                                                     .where(events.c.workspace_id == ws))}  # fmt: skip
    got = {(c.event_seq, c.profile_id) for c in changes(engine, ws, "event")}
    assert got == {(e.seq, e.profile_id) for e in evs.values()}
    viewed = next(c for c in changes(engine, ws, "event") if c.event_seq == evs["m2"].seq)
    assert viewed.detail == {"type": "track", "event": "Product Viewed", "channel": "web", "profile": False}
    signed_in = next(c for c in changes(engine, ws, "event") if c.event_seq == evs["m3"].seq)
    assert signed_in.detail == {"type": "identify", "channel": "server", "profile": True, "new": True}  # her profile


def test_a_merge_points_at_the_survivor_and_a_replay_rewrites(engine, ws):
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z",
                       "traits": {"email": "ana@example.com"}}])  # fmt: skip
    send(engine, ws, [{"type": "page", "anonymousId": "a1", "messageId": "m2", "timestamp": "2026-01-01T10:05:00Z"}])
    resolve(engine)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m3",
                       "timestamp": "2026-01-01T10:06:00Z"}])  # fmt: skip
    resolve(engine)
    known = profile_of(engine, ws, "user_id:u1")
    merges = [(c.profile_id, c.target_id) for c in changes(engine, ws, "merge")]
    assert (anon, known) in merges and (known, known) in merges
    # an event older than what the profile has seen: its component is replayed, and that is a change too
    send(engine, ws, [{"type": "identify", "anonymousId": "a0", "userId": "u1", "messageId": "m0",
                       "timestamp": "2026-01-01T09:00:00Z"}])  # fmt: skip
    resolve(engine)
    assert profile_of(engine, ws, "user_id:u1") in {c.profile_id for c in changes(engine, ws, "replay")}
    m0 = [c for c in changes(engine, ws, "event") if c.detail["type"] == "identify"]
    assert len(m0) == 3  # one change per event, replayed or not


def test_consent_computed_traits_and_message_statuses_are_changes(engine, ws):
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z",
                       "traits": {"email": "ana@example.com"}}])  # fmt: skip
    resolve(engine)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.begin() as conn:
        consent.record(conn, ws, {"userId": "u1"}, channel="email", topic="*", status="denied", reason="unsubscribe",
                       at=utcnow(), direction="inbound", key="k1", profile_id=pid)  # fmt: skip
        computed.replace(conn, ws, "clv", {pid: {"clv_12m": 120.5}}, utcnow())
    (c,) = changes(engine, ws, "consent")
    assert (c.profile_id, c.detail["slot"], c.detail["status"]) == (pid, "email:*", "denied")
    (c,) = changes(engine, ws, "computed")
    assert (c.profile_id, c.detail) == (pid, {"model": "clv"})
    with engine.begin() as conn:  # a new run that no longer scores her removes her traits: a change again
        computed.replace(conn, ws, "clv", {}, utcnow() + timedelta(seconds=1))
    assert [c.profile_id for c in changes(engine, ws, "computed")] == [pid, pid]


def test_a_change_commits_with_its_cause_or_not_at_all(engine, ws):
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z"}])
    resolve(engine)
    pid = profile_of(engine, ws, "user_id:u1")
    before = len(changes(engine, ws))
    with pytest.raises(RuntimeError), engine.begin() as conn:
        consent.record(conn, ws, {"userId": "u1"}, channel="sms", topic="*", status="denied", reason="STOP",
                       at=utcnow(), direction="inbound", key="k2", profile_id=pid)  # fmt: skip
        raise RuntimeError("the caller's transaction fails after the change")
    assert len(changes(engine, ws)) == before


def test_a_change_recorded_in_a_savepoint_rolled_back_is_dropped_and_others_kept(engine, ws):
    """Savepoints nest: the changes of one rolled back go (with those of the savepoints inside it, released or not),
    the changes before it and after it stay. SQLAlchemy names a savepoint only after its event fires, so a mark kept
    by name was never found and a rolled-back change was written anyway (a journey step's message that was rolled
    back left its "queued" change)."""
    before = len(changes(engine, ws))
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("kept-1", "event")])
        with pytest.raises(RuntimeError), conn.begin_nested():
            feed.record(conn, ws, [feed.Change("gone-1", "event")])
            with conn.begin_nested():  # released inside the one rolled back: gone with it
                feed.record(conn, ws, [feed.Change("gone-2", "message")])
            raise RuntimeError("the outer savepoint fails")
        with conn.begin_nested():
            feed.record(conn, ws, [feed.Change("kept-2", "event")])
            with pytest.raises(RuntimeError), conn.begin_nested():
                feed.record(conn, ws, [feed.Change("gone-3", "event")])
                raise RuntimeError("an inner one fails alone")
            feed.record(conn, ws, [feed.Change("kept-3", "event")])
    got = [c.profile_id for c in changes(engine, ws)][before:]
    assert got == ["kept-1", "kept-2", "kept-3"]


# -- consumers -----------------------------------------------------------------------------------------------------
def test_a_consumer_gets_each_change_once_in_order_and_failures_are_isolated(engine, ws):
    feed.subscribe(engine, "c1")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i % 3}", "event", event_seq=i) for i in range(12)])
    broken = {"p1"}

    def handle(conn, ws_id, pid, chs):
        remember("c1")(conn, ws_id, pid, chs)
        if pid in broken:
            raise ValueError("cannot handle p1 yet")

    assert feed.consume(engine, "c1", handle) == 8
    assert {r.profile_id for r in seen_rows(engine, "c1")} == {"p0", "p2"}  # p1's effects were rolled back
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(feed_pending.c.attempts, feed_pending.c.error)
                                .where(feed_pending.c.consumer == "c1")).all()  # fmt: skip
    # her first change counted an attempt; her later ones wait behind it (her order is kept)
    assert sorted(a for a, _ in attempts) == [0, 0, 0, 1] and "cannot handle p1 yet" in max(attempts)[1]
    broken.clear()
    assert feed.consume(engine, "c1", handle) == 4
    assert [r.seq for r in seen_rows(engine, "c1")] == sorted(r.seq for r in seen_rows(engine, "c1"))
    assert len(seen_rows(engine, "c1")) == 12 and feed.consume(engine, "c1", handle) == 0


class _Whole:
    """A handler that also takes whole claims (``handle.many``), failing while a person of the claim is broken."""

    def __init__(self, name, broken=()):
        self.name, self.broken, self.claims = name, set(broken), []

    def __call__(self, conn, ws_id, pid, chs):
        remember(self.name)(conn, ws_id, pid, chs)
        if pid in self.broken:
            raise ValueError(f"cannot handle {pid} yet")

    def many(self, conn, claimed):
        self.claims.append(sorted(claimed))
        for (ws_id, pid), chs in claimed.items():
            self(conn, ws_id, pid, chs)


def test_a_handler_may_take_the_whole_claim_and_falls_back_to_each_person_when_it_fails(engine, ws):
    feed.subscribe(engine, "c3")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i % 3}", "event", event_seq=i) for i in range(12)])
    h = _Whole("c3", broken={"p1"})
    # the claim at once fails (p1); rolled back, then person by person: p0 and p2 handled, p1 counts an attempt
    assert feed.consume(engine, "c3", h) == 8
    assert h.claims == [[(ws, "p0"), (ws, "p1"), (ws, "p2")]]
    rows = seen_rows(engine, "c3")
    assert sorted({r.profile_id for r in rows}) == ["p0", "p2"] and len(rows) == 8  # nothing of the failed claim
    h.broken.clear()
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(p, "consent") for p in ("p0", "p2")])
    # p1's four, and one more each for p0 and p2: one claim, handled at once
    assert feed.consume(engine, "c3", h) == 6 and h.claims[-1] == [(ws, "p0"), (ws, "p1"), (ws, "p2")]
    rows = seen_rows(engine, "c3")
    assert len(rows) == 14 and len({r.seq for r in rows}) == 14 and feed.consume(engine, "c3", h) == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(feed_pending)
                            .where(feed_pending.c.consumer == "c3")).scalar() == 0  # fmt: skip


def test_a_change_that_keeps_failing_is_parked_and_the_person_goes_on(engine, ws):
    feed.subscribe(engine, "c2")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "event", event_seq=1)])
        feed.record(conn, ws, [feed.Change("p1", "event", event_seq=2)])

    def handle(conn, ws_id, pid, chs):
        if any(c.event_seq == 1 for c in chs):
            raise ValueError("poison")
        remember("c2")(conn, ws_id, pid, chs)

    for _ in range(feed.MAX_ATTEMPTS):
        assert feed.consume(engine, "c2", handle) == 0
    assert feed.consume(engine, "c2", handle) == 1  # the poisoned change is parked; the next one is handled
    with engine.connect() as conn:
        (lag,) = [row for row in feed.lag(conn) if row["consumer"] == "c2"]
    assert (lag["waiting"], lag["parked"]) == (0, 1)


def test_changes_recorded_before_a_consumer_subscribed_are_not_its_own(engine, ws):
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "event")])
    feed.subscribe(engine, "late")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "consent")])
    feed.consume(engine, "late", remember("late"))
    assert [r.cause for r in seen_rows(engine, "late")] == ["consent"]


def test_several_workers_and_writers_never_lose_double_or_reorder_a_change(engine, ws):
    """Writers record changes for a few people while four consumer workers claim them (SKIP LOCKED on PostgreSQL):
    each change is handled once, and each person's changes in seq order (checked inside the handler)."""
    feed.subscribe(engine, "many")
    people, per_writer, writers = [f"p{i}" for i in range(5)], 40, 3
    errors: list[BaseException] = []
    stop = threading.Event()

    def write(w):
        try:
            for i in range(per_writer):
                with engine.begin() as conn:
                    feed.record(conn, ws, [feed.Change(people[(i + w) % 5], "event"),
                                           feed.Change(people[(i * 7 + w) % 5], "message")])  # fmt: skip
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def work():
        try:
            while not stop.is_set():
                feed.consume(engine, "many", remember("many"), limit=7)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    ws_threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    cs_threads = [threading.Thread(target=work) for _ in range(4 if engine.dialect.name == "postgresql" else 2)]
    for t in ws_threads + cs_threads:
        t.start()
    for t in ws_threads:
        t.join()
    while feed.consume(engine, "many", remember("many")):
        pass
    stop.set()
    for t in cs_threads:
        t.join()
    while feed.consume(engine, "many", remember("many")):
        pass
    assert not errors, errors
    with engine.connect() as conn:
        failed = conn.execute(sa.select(sa.func.count()).select_from(feed_pending)
                              .where(feed_pending.c.consumer == "many")).scalar()  # fmt: skip
    handled = [r.seq for r in seen_rows(engine, "many")]
    assert failed == 0 and len(handled) == len(set(handled)) == writers * per_writer * 2


CRASHER = textwrap.dedent("""
    import os, signal, sys
    from chorus.profiles import feed
    from chorus.store.db import create_engine
    from tests.profiles.test_feed import seen
    engine = create_engine(sys.argv[1])  # the store's engine: BEGIN IMMEDIATE and real savepoints on SQLite
    n = {"people": 0}
    def handle(conn, ws, pid, chs):
        conn.execute(seen.insert(), [{"consumer": "crash", "seq": c.seq, "profile_id": pid, "cause": c.cause}
                                     for c in chs])
        n["people"] += 1
        if n["people"] == 3:  # mid-transaction, effects of two people written: the machine dies
            os.kill(os.getpid(), signal.SIGKILL)
    feed.consume(engine, "crash", handle)
""")


def test_a_worker_killed_mid_transaction_loses_and_doubles_nothing(engine, ws, db_url):
    feed.subscribe(engine, "crash")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i % 6}", "event") for i in range(30)])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.abspath("src"), os.path.abspath(".")])}
    engine.dispose()
    r = subprocess.run([sys.executable, "-c", CRASHER, db_url], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    assert seen_rows(engine, "crash") == []  # the killed transaction left nothing
    assert feed.consume(engine, "crash", remember("crash")) == 30
    assert len({r.seq for r in seen_rows(engine, "crash")}) == 30


# -- the worker and erasure -------------------------------------------------------------------------------------------
def test_the_worker_resolves_then_hands_the_changes_to_consumers_in_the_same_pass(engine, ws):
    registry = reg.load()
    registry.consumer("probe", remember("probe"))
    worker = Worker(engine, registry=registry)  # subscribes "probe": it gets what is recorded from now on
    try:
        send(engine, ws, [{"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "m1",
                           "timestamp": "2026-01-01T10:00:00Z"}])  # fmt: skip
        worker.run_once()
        pid = profile_of(engine, ws, "user_id:u1")
        assert [(r.profile_id, r.cause) for r in seen_rows(engine, "probe")] == [(pid, "event")]
    finally:
        worker.stop()


def test_erasure_removes_her_changes_and_what_consumers_had_pending(engine, ws):
    """No change names her after the erasure: consumers forget her through their own erasure participants, in the
    erasure's transaction (the feed tells them nothing: a notice would name her)."""
    feed.subscribe(engine, "c3")
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z",
                       "traits": {"email": "ana@example.com"}}])  # fmt: skip
    resolve(engine)
    pid = profile_of(engine, ws, "user_id:u1")
    assert changes(engine, ws)
    with engine.begin() as conn:
        out = privacy.erase(conn, ws, pid)
    assert out["deleted"]["profile_changes"] >= 1 and out["deleted"]["feed_pending"] >= 1
    assert changes(engine, ws) == []
    assert feed.consume(engine, "c3", remember("c3")) == 0 and seen_rows(engine, "c3") == []


def test_a_profile_made_for_a_refused_claim_is_a_change_too(engine, ws):
    send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z",
                       "traits": {"email": "vera@example.com"}}])  # fmt: skip
    send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "m2", "timestamp": "2026-01-01T10:01:00Z",
                       "traits": {"phone": "+447911000333"}}], trusted=False)  # a browser: the phone is refused
    resolve(engine)
    phone = profile_of(engine, ws, "phone:+447911000333")
    assert phone != profile_of(engine, ws, "user_id:vera")
    assert [(c.profile_id, c.cause) for c in changes(engine, ws) if c.profile_id == phone] == [(phone, "created")]


def test_a_rescoring_that_changes_nothing_records_nothing(engine, ws):
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z"}])
    resolve(engine)
    pid = profile_of(engine, ws, "user_id:u1")
    for i, value in enumerate((10.0, 10.0, 12.5)):
        with engine.begin() as conn:
            computed.replace(conn, ws, "clv", {pid: {"clv_12m": value}}, utcnow() + timedelta(seconds=i))
    assert [c.detail for c in changes(engine, ws, "computed")] == [{"model": "clv"}, {"model": "clv"}]


def test_a_change_number_is_never_given_twice(engine, ws):
    """SQLite would reuse the largest rowid once deleted; a consumer that has seen a number must never see it
    again for another change (AUTOINCREMENT)."""
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "event")])
    (first,) = [c.seq for c in changes(engine, ws)]
    with engine.begin() as conn:
        conn.execute(profile_changes.delete())
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "consent")])
    (second,) = [c.seq for c in changes(engine, ws)]
    assert second > first


def test_what_a_merged_profile_had_pending_is_handled_as_the_survivors(engine, ws):
    feed.subscribe(engine, "c4")
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T10:00:00Z"}])
    send(engine, ws, [{"type": "page", "anonymousId": "a1", "messageId": "m2", "timestamp": "2026-01-01T10:05:00Z"}])
    resolve(engine)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "m3",
                       "timestamp": "2026-01-01T10:06:00Z"}])  # fmt: skip
    resolve(engine)
    known = profile_of(engine, ws, "user_id:u1")
    got: dict = {}
    feed.consume(engine, "c4", lambda c, w, p, chs: got.setdefault(p, []).extend((x.profile_id, x.cause) for x in chs))
    assert set(got) == {known, anon}  # the anonymous page view was handed over as the survivor's
    assert (anon, "event") in got[known] and got[anon] == [(anon, "merge")]


def test_a_change_recorded_before_the_first_statement_of_a_transaction_is_kept(engine, ws):
    """record() on a connection that has not begun yet (autobegin at the first statement) or that commits with
    conn.commit(): the change is written at that commit; a connection closed without committing writes nothing."""
    with engine.connect() as conn:
        feed.record(conn, ws, [feed.Change("p1", "event")])
        conn.execute(sa.text("SELECT 1"))
        conn.commit()
    with engine.connect() as conn:
        feed.record(conn, ws, [feed.Change("p2", "event")])  # closed without commit: rolled back
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
        conn.commit()
    assert [c.profile_id for c in changes(engine, ws)] == ["p1"]


def test_a_consumer_gets_only_the_changes_it_declared_an_interest_in(engine, ws, monkeypatch):
    """``feed.interest``: a consumer that acts only on some changes gets copies of those alone (the others are not
    written for it); a consumer without one gets everything; a broken test records the change (never lost)."""
    monkeypatch.setattr(feed, "_INTEREST", {})
    for name in ("picky", "all", "broken"):
        feed.subscribe(engine, name)
    feed.interest("picky", lambda c: c.cause == "consent")
    feed.interest("broken", lambda c: 1 / 0)
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change("p1", "event", event_seq=1), feed.Change("p1", "consent"),
                               feed.Change("p2", "event", event_seq=2)])  # fmt: skip
    with engine.connect() as conn:
        got = {}
        for name, seq in conn.execute(sa.select(feed_pending.c.consumer, feed_pending.c.seq)
                                      .where(feed_pending.c.workspace_id == ws)):  # fmt: skip
            got.setdefault(name, set()).add(seq)
    assert len(got["picky"]) == 1 and len(got["all"]) == len(got["broken"]) == 3
    (only,) = got["picky"]
    assert [c.cause for c in changes(engine, ws) if c.seq == only] == ["consent"]


def test_the_audiences_consumer_is_told_only_of_what_it_acts_on():
    from chorus.messaging.audiences import follow

    assert follow.wants(feed.Change("p", "segment", detail={"segment": "s", "change": "entered"}))
    assert follow.wants(feed.Change("p", "consent", detail={"slot": "ads:*"}))
    assert follow.wants(feed.Change("p", "event", detail={"type": "identify", "profile": True}))
    assert not follow.wants(feed.Change("p", "event", detail={"type": "track", "event": "Product Viewed"}))
    assert not follow.wants(feed.Change("p", "merge", target_id="q"))


def test_the_feed_task_keeps_its_tables_statistics_fresh_on_postgresql(engine, ws):
    """A bulk load fills feed_pending faster than autovacuum re-analyses it (and some servers run without it): with
    a small table's statistics PostgreSQL claimed a consumer's first changes by sorting all of its waiting ones. The
    task analyses the feed's tables as it handles changes; ANALYZE of a table this small reads every row, so its
    estimate is then the exact count."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner statistics")
    feed.subscribe(engine, "bulk")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i:04d}", "list", detail={"list": "x"}) for i in range(3000)])

    def handle(conn, ws_id, pid, changes):
        pass

    task = feed.FeedTask(engine, [("bulk", handle)], batch=2500)  # ANALYZE_EVERY: 2,000 handled changes
    task.MIN_BATCH = 500
    assert task.run_once() == 2500
    with engine.connect() as conn:
        waiting = conn.execute(sa.select(sa.func.count()).select_from(feed_pending)).scalar_one()
        recorded = conn.execute(sa.select(sa.func.count()).select_from(profile_changes)).scalar_one()
        estimate = dict(conn.exec_driver_sql(
            "SELECT relname, reltuples FROM pg_class WHERE relname IN ('feed_pending', 'profile_changes')").all())
    assert waiting >= 500 and estimate == {"feed_pending": waiting, "profile_changes": recorded}
