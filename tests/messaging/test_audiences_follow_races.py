"""Following audiences under concurrency: a follow sync reads the segment only once it holds the audience's claim,
and two feed consumers mark the audiences of their claims in one order (no deadlock between them)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.errors import Conflict
from chorus.messaging.audiences import follow, store, sync
from chorus.messaging.audiences.settings import validate_audience
from chorus.profiles import feed
from chorus.segments import rules
from chorus.segments import store as segment_store
from chorus.timeutil import utcnow
from tests.identity.helpers import resolve, send
from tests.messaging.test_audiences_follow import EMAILS, enter, held, setup, source
from tests.messaging.test_audiences_store import Recorder


@pytest.fixture
def subscribed(engine):
    feed.subscribe(engine, follow.CONSUMER)
    return engine


def test_a_sync_that_finishes_while_another_waits_to_claim_is_not_undone(subscribed, monkeypatch):
    """A follow sync about to claim the audience, and another that syncs it completely just then, after a new
    member entered: the first must not take the platform back to the membership before that entry. It read the
    segment before claiming, so it sent the older membership and, the entry covered by the other's epoch, nothing
    was due to repair it."""
    engine = subscribed
    w, ids = setup(engine)
    enter(engine, w, [ids[EMAILS[0]]])
    client = Recorder()
    sync.sync_followed(engine, w, "follow", client=client)
    feed.consume(engine, follow.CONSUMER, follow.handle)
    claim = store.claim
    other: list[dict] = []

    def another_sync_first(*args):
        if not other:  # the first claim only: the other sync's own claim goes through
            other.append({})
            enter(engine, w, [ids[EMAILS[1]]])
            feed.consume(engine, follow.CONSUMER, follow.handle)
            other[0] = sync.sync_followed(engine, w, "follow", client=client)
        return claim(*args)

    monkeypatch.setattr(store, "claim", another_sync_first)
    sync.sync_followed(engine, w, "follow", client=client)
    assert other[0]["added"] == 1  # the other sync sent the new member
    assert client.held == held(EMAILS[0], EMAILS[1])  # and this one did not take her off again


def test_a_sync_that_finds_another_running_reads_nothing_and_starts_no_epoch(subscribed):
    engine = subscribed
    w, ids = setup(engine)
    sync.sync_followed(engine, w, "follow", client=Recorder())
    with engine.connect() as conn:
        before = store.get(conn, w.id, "follow")
    store.claim(engine, before.id, "follow", utcnow())  # another sync runs
    with pytest.raises(Conflict):
        sync.sync_followed(engine, w, "follow", client=Recorder())
    with engine.connect() as conn:
        after = store.get(conn, w.id, "follow")
    assert after.options["follow"] == before.options["follow"]
    assert source(engine, w)["changes_pending"] is False


# -- two consumers ------------------------------------------------------------------------------------------------
def _two_followed_segments(engine):
    """Four people; audiences ``lo`` and ``hi`` (by id: the order rows are locked in) follow segments ``s_lo`` and
    ``s_hi``, both synced once. Pending for the consumer, in this order: the first two people enter ``s_hi`` then
    ``s_lo``, the last two ``s_lo`` then ``s_hi`` (each pair in profile id order, the order a claim is handled)."""
    ws = workspaces.create(engine, f"aud-race-{uuid.uuid4().hex[:6]}")
    send(engine, ws["id"], [{"type": "identify", "userId": f"u{i}", "messageId": f"m{i}",
                             "traits": {"email": f"p{i}@example.com"}} for i in range(4)])  # fmt: skip
    resolve(engine)
    with engine.begin() as conn:
        w = workspaces.get(conn, ws["id"])
        pids = sorted(store.owners(conn, w.id, [f"email:p{i}@example.com" for i in range(4)]).values())
        rule = rules.parse({"trait": {"name": "plan", "equals": "pro"}})
        for seg in ("s_a", "s_b"):
            segment_store.save(conn, w.id, seg, seg, rule, utcnow())
    made = {}
    for seg in ("s_a", "s_b"):
        body = {"name": f"follow-{seg}", "provider": "file", "identifiers": ["email"], "source": {"segment": seg}}
        made[seg] = store.create(engine, w.id, validate_audience(body, {}), utcnow())
    feed.consume(engine, follow.CONSUMER, follow.handle)
    with engine.connect() as conn:
        ids = {seg: store.get(conn, w.id, f"follow-{seg}").id for seg in made}
    s_lo, s_hi = sorted(made, key=ids.get)
    for seg in made:
        sync.sync_followed(engine, w, f"follow-{seg}")
    for pid, seg in zip(pids, (s_hi, s_lo, s_lo, s_hi), strict=True):
        with engine.begin() as conn:
            segment_store.enter(conn, w.id, seg, [pid], utcnow(), "event")
            feed.record(conn, w.id, [feed.Change(pid, "segment", detail={"segment": seg, "change": "entered"})])
    return w


def _waiting_for_a_lock(engine) -> int:
    with engine.connect() as conn:
        # a row lock waited for is a transaction id lock, which names no database: the waiting session does
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN "
            "(SELECT pid FROM pg_stat_activity WHERE datname = current_database())")).scalar_one())  # fmt: skip


def test_two_consumers_with_people_of_two_audiences_in_opposite_orders_do_not_deadlock(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    feed.subscribe(engine, follow.CONSUMER)
    w = _two_followed_segments(engine)
    inside, go_on = threading.Event(), threading.Event()

    def pause():
        if not inside.is_set():
            inside.set()
            assert go_on.wait(20)

    def first_then_pause(conn, ws, pid, changes):  # the registered consumer, paused after its first person
        follow.handle(conn, ws, pid, changes)
        pause()

    if hasattr(follow.handle, "many"):
        first_then_pause.many = lambda conn, claimed: (follow.handle.many(conn, claimed), pause())

    errors: list[Exception] = []

    def consume(handler):
        try:
            feed.consume(engine, follow.CONSUMER, handler, limit=2)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    first = threading.Thread(target=consume, args=(first_then_pause,), daemon=True)
    second = threading.Thread(target=consume, args=(follow.handle,), daemon=True)
    first.start()
    assert inside.wait(20)  # the first worker holds its claim (the first two people) and the locks it took
    second.start()  # claims the last two people, then waits for a lock the first holds
    deadline = time.monotonic() + 20
    while not _waiting_for_a_lock(engine):
        assert time.monotonic() < deadline and second.is_alive(), "the second consumer never waited"
        time.sleep(0.02)
    go_on.set()
    first.join(30)
    second.join(30)
    assert not errors, errors  # a deadlock: PostgreSQL aborted one of them
    for seg in ("s_a", "s_b"):
        with engine.connect() as conn:
            aud = store.get(conn, w.id, f"follow-{seg}")
        assert store.source_view(aud.options["follow"])["changes_pending"], seg


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_creates_of_one_audience_name_at_once_give_a_409_not_a_500(engine):
    """The create checked the name, then inserted: a create of the same name that committed in between made the
    insert fail on the name's key (a 500); it is the 409 naming ``name`` that a create after it gets."""
    w = workspaces.create(engine, "ar-" + uuid.uuid4().hex[:6])
    clean = validate_audience({"name": "dup", "provider": "file", "identifiers": ["email"]}, {})
    out: list = [None]

    def second():
        try:
            out[0] = store.create(engine, w["id"], clean, utcnow())
        except Exception as exc:  # noqa: BLE001 - the test reads what it was
            out[0] = exc

    with engine.begin() as conn:  # the first create's insert, not committed yet when the second checks the name
        conn.execute(store.audiences.insert().values(id="aud_first", workspace_id=w["id"], created_at=utcnow(),
                                                     updated_at=utcnow(), **clean))  # fmt: skip
        t = threading.Thread(target=second)
        t.start()
        t.join(1.0)
    t.join(30)
    assert isinstance(out[0], Conflict) and out[0].field == "name", out[0]
