"""A segment is not deleted while a journey, a broadcast or a social audience can still use it (an outside probe:
DELETE answered 204, the scheduled broadcast then ran for nobody, the journey could not be published again and the
audience was emptied). The packages say how they use a segment through the registry (segment users); what can send
nothing more (a stopped or archived journey, a one-off broadcast that has gone out) does not hold it."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chorus import registry as reg
from chorus import workspaces
from chorus.errors import Conflict
from chorus.journeys import manage, runtime
from chorus.messaging import outbox
from chorus.messaging.audiences import store as audiences
from chorus.messaging.audiences.settings import validate_audience
from chorus.registry import Registry
from chorus.segments import engine as seg
from chorus.segments import rules, store
from chorus.worker import Worker
from tests.segments.conftest import Clock

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock(monkeypatch):
    c = Clock(T0)
    monkeypatch.setattr(runtime, "now", c)
    monkeypatch.setattr(seg, "now", c)
    return c


@pytest.fixture
def ws(engine):
    w = workspaces.create(engine, "del-" + uuid.uuid4().hex[:6])["id"]
    outbox.save_template(engine, w, "offer", {"kind": "marketing", "variants": {"in_app": {"title": "t", "body": "b"}}})
    with engine.begin() as conn:
        for sid in ("vip", "other"):
            store.save(conn, w, sid, sid, rules.parse({"trait": {"name": "plan", "equals": sid}}), T0)
    return w


@pytest.fixture
def worker(engine):
    w = Worker(engine, registry=reg.installed())
    yield w
    w.stop()


def journey(jid: str, segment: str = "vip", **more) -> dict:
    return {"id": jid, "entry": {"segment": segment}, "start": "done", "nodes": {"done": {"type": "exit"}}, **more}


def publish(engine, ws, raw, at=T0):
    with engine.begin() as conn:
        return manage.publish(conn, ws, raw, at)


def broadcast(engine, ws, bid, schedule, segment="vip", at=T0):
    with engine.begin() as conn:
        return manage.publish_broadcast(conn, ws, {"id": bid, "template": "offer", "channel": ["in_app"],
                                                   "segment": segment, "schedule": schedule}, at)  # fmt: skip


def follow(engine, ws, name, segment="vip"):
    body = {"name": name, "provider": "meta", "destination": "1", "identifiers": ["email"],
            "source": {"segment": segment, "interval_seconds": 60}}  # fmt: skip
    settings = {"audiences": {"providers": [{"type": "meta", "access_token_env": "CHORUS_X"}]}}
    audiences.create(engine, ws, validate_audience(body, settings), T0)


def refused(engine, ws, segment="vip") -> Conflict:
    with pytest.raises(Conflict) as info:
        seg.drop(engine, ws, segment)
    with engine.connect() as conn:
        assert segment in store.ids(conn, ws)  # nothing deleted
    return info.value


def test_a_segment_used_by_a_journey_a_broadcast_and_an_audience_is_not_deleted(engine, ws, clock):
    publish(engine, ws, journey("welcome"))
    broadcast(engine, ws, "bf", {"at": "2030-01-01T09:00:00Z"})
    follow(engine, ws, "ig-vip")
    publish(engine, ws, journey("elsewhere", "other"))  # uses another segment: not named
    exc = refused(engine, ws)
    assert exc.status == 409 and exc.field == "id"
    assert str(exc) == ("segment 'vip' is used by journey 'welcome' (entry), broadcast 'bf' and audience 'ig-vip'; "
                        "remove those uses first")  # fmt: skip
    publish(engine, ws, journey("welcome"))  # the journey can still be published: its segment is there
    with engine.connect() as conn:
        assert store.get(conn, ws, "vip").id == "vip"
    assert "journey 'elsewhere' (entry)" in str(refused(engine, ws, "other"))


def test_every_place_a_journey_names_the_segment_is_said(engine, ws, clock):
    publish(engine, ws, {
        "id": "j", "entry": {"event": {"event": "Signed Up"}}, "start": "check",
        "goal": {"segment": {"entered": "vip"}, "within": "7d"},
        "exit": [{"segment": {"exited": "vip"}}],
        "nodes": {
            "check": {"type": "condition", "if": {"segment": "vip"}, "then": "hold", "else": "done"},
            "hold": {"type": "wait", "branches": [{"segment": {"entered": "vip"}, "next": "done"}],
                     "timeout": {"after": "1d", "next": "done"}},
            "done": {"type": "exit"},
        },
    })  # fmt: skip
    assert str(refused(engine, ws)) == ("segment 'vip' is used by journey 'j' (goal, exit, step 'check', "
                                        "step 'hold'); remove those uses first")  # fmt: skip


def test_another_segment_and_a_journey_are_named_together(engine, ws, clock):
    with engine.begin() as conn:
        store.save(conn, ws, "big", "big", rules.parse({"segment": "vip"}), T0)
    publish(engine, ws, journey("welcome"))
    assert str(refused(engine, ws)) == ("segment 'vip' is used by segment 'big' and journey 'welcome' (entry); "
                                        "remove those uses first")  # fmt: skip


def test_a_paused_journey_and_a_recurring_broadcast_hold_it(engine, ws, clock):
    publish(engine, ws, journey("welcome"))
    with engine.begin() as conn:
        manage.control(conn, ws, "welcome", "pause", T0)  # it may be resumed
    broadcast(engine, ws, "weekly", {"time": "09:00", "weekdays": ["mon"]})
    assert str(refused(engine, ws)) == ("segment 'vip' is used by journey 'welcome' (entry) and broadcast 'weekly'; "
                                        "remove those uses first")  # fmt: skip


def test_what_can_send_nothing_more_does_not_hold_it(engine, ws, clock, worker):
    publish(engine, ws, journey("stopped"))
    publish(engine, ws, journey("archived"))
    broadcast(engine, ws, "sent", "now")
    with engine.begin() as conn:
        manage.control(conn, ws, "stopped", "stop", T0)
        manage.control(conn, ws, "archived", "archive", T0)
    # not gone out yet
    assert str(refused(engine, ws)) == "segment 'vip' is used by broadcast 'sent'; remove those uses first"
    for _ in range(4):
        worker.run_once()  # the one-off run goes out
    clock.at = T0 + timedelta(minutes=5)
    for _ in range(2):
        worker.run_once()
    seg.drop(engine, ws, "vip")
    with engine.connect() as conn:
        assert "vip" not in store.ids(conn, ws)


def test_the_deletion_asks_the_registry_it_is_given(engine, ws):
    r = Registry()
    asked = []

    def users(conn, ws_id, segment_id):
        asked.append(segment_id)
        return ["report 'weekly'"] if segment_id == "vip" else []

    r.segment_users("reports", users)
    with pytest.raises(ValueError, match="twice"):
        r.segment_users("reports", users)
    with pytest.raises(Conflict, match="^segment 'vip' is used by report 'weekly'; remove those uses first$"):
        seg.drop(engine, ws, "vip", registry=r)
    with engine.begin() as conn, pytest.raises(Conflict, match="report 'weekly'"):
        store.refuse_in_use(conn, ws, "vip", registry=r)
    seg.drop(engine, ws, "other", registry=r)
    assert asked[-1] == "other"


def test_the_installed_packages_say_how_they_use_segments():
    assert reg.installed().segment_user_names() == ["journeys", "audiences"]


def test_a_journey_published_while_the_segment_is_deleted_is_refused_or_refuses_it(engine, ws, clock, db_url):
    """The publication checks the segment exists and holds the definitions lock shared (segments.store.ids) until it
    commits: the deletion waits for it, then sees the journey (PostgreSQL; SQLite has one writer)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers")
    conn = engine.connect()
    tx = conn.begin()
    manage.publish(conn, ws, journey("late"), T0)
    out: list = []

    def delete():
        try:
            seg.drop(engine, ws, "vip")
            out.append("deleted")
        except Conflict as exc:
            out.append(str(exc))

    t = threading.Thread(target=delete)
    t.start()
    time.sleep(0.5)
    assert t.is_alive()  # waits for the publication
    tx.commit()
    conn.close()
    t.join(10)
    assert out == ["segment 'vip' is used by journey 'late' (entry); remove those uses first"]


def test_the_worker_follow_poll_does_not_wait_for_a_segment_save(engine, ws, db_url):
    """Review: reading the ids took the definitions lock for every reader, so the worker's follow poll, which only
    reads them, waited behind every segment save or deletion of every workspace it visited."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises writers")
    follow(engine, ws, "ig-vip")
    holder = engine.connect()
    tx = holder.begin()
    store.lock_definitions(holder, ws)  # a segment save or deletion under way
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = '1s'"))
            audiences.due_follows(conn, T0)
    finally:
        tx.rollback()
        holder.close()


def test_a_sent_broadcast_with_nobody_inside_does_not_hold_its_goal_segment(engine, ws, clock, worker):
    """Review: the docs say a one-off broadcast that has gone out does not hold its segments once nobody is inside;
    its goal's segment was held forever (the current version always counted)."""
    with engine.begin() as conn:
        manage.publish_broadcast(conn, ws, {"id": "sent", "template": "offer", "channel": ["in_app"],
                                            "segment": "other", "schedule": "now",
                                            "goal": {"segment": {"entered": "vip"}, "within": "1d"}}, T0)  # fmt: skip
    for _ in range(4):
        worker.run_once()
    clock.at = T0 + timedelta(days=2)
    for _ in range(2):
        worker.run_once()
    seg.drop(engine, ws, "vip")
    with engine.connect() as conn:
        assert "vip" not in store.ids(conn, ws)
