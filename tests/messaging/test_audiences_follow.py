"""Audiences that follow a segment, against the store (SQLite and PostgreSQL): the definition, the feed consumer's
epoch mark, the interval, the first full upload, only differences afterwards, and a deleted segment."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus import workspaces
from chorus.errors import ChorusError, Conflict
from chorus.messaging.audiences import follow, store, sync
from chorus.messaging.audiences.membership import Entry
from chorus.messaging.audiences.settings import validate_audience, validate_source
from chorus.profiles import feed, privacy
from chorus.segments import rules
from chorus.segments import store as segment_store
from chorus.timeutil import utcnow
from tests.identity.helpers import resolve, send
from tests.messaging.test_audiences_store import Recorder

EMAILS = ("one@example.com", "two@example.com", "three@example.com")


def held(*emails: str) -> set[str]:
    """What the platform holds for these people: their e-mail addresses, normalised and SHA-256 hashed."""
    return {hashlib.sha256(e.encode()).hexdigest() for e in emails}


def setup(engine, interval: int = 60, provider: str = "meta"):
    ws = workspaces.create(engine, f"aud-follow-{uuid.uuid4().hex[:6]}")
    send(engine, ws["id"], [
        {"type": "identify", "userId": f"u{i}", "messageId": f"m{i}", "timestamp": f"2026-01-01T00:00:0{i}Z",
         "traits": {"email": e}}
        for i, e in enumerate(EMAILS)
    ])  # fmt: skip
    resolve(engine)
    with engine.begin() as conn:
        w = workspaces.get(conn, ws["id"])
        ids = {e: store.owners(conn, w.id, [f"email:{e}"])[f"email:{e}"] for e in EMAILS}
        # the rule does not matter here: membership changes are written below as the segment engine writes them
        rule = rules.parse({"trait": {"name": "plan", "equals": "pro"}})
        segment_store.save(conn, w.id, "browsers", "Browsers", rule, utcnow())
    body = {"name": "follow", "provider": provider, "identifiers": ["email"],
            "source": {"segment": "browsers", "interval_seconds": interval}}  # fmt: skip
    if provider == "meta":
        body["destination"] = "1"
        w_settings = {"audiences": {"providers": [{"type": "meta", "access_token_env": "CHORUS_X"}]}}
    else:
        w_settings = {}
    store.create(engine, w.id, validate_audience(body, w_settings), utcnow())
    feed.consume(engine, follow.CONSUMER, follow.handle)  # the profiles' creation: nothing for audiences
    return w, ids


def enter(engine, w, pids, change="entered"):
    """Membership changes as the segment engine makes them: the member rows and a feed change each."""
    now = utcnow()
    with engine.begin() as conn:
        (segment_store.enter if change == "entered" else segment_store.leave)(conn, w.id, "browsers", pids, now,
                                                                               "event")  # fmt: skip
        feed.record(conn, w.id, [feed.Change(p, "segment", detail={"segment": "browsers", "change": change})
                                 for p in pids])  # fmt: skip


def source(engine, w) -> dict:
    with engine.connect() as conn:
        return store.view(conn, store.get(conn, w.id, "follow"))["source"]


@pytest.fixture
def subscribed(engine):
    feed.subscribe(engine, follow.CONSUMER)
    return engine


def test_the_source_is_checked_and_names_the_field():
    assert validate_source(None) is None
    assert validate_source({"segment": "a"})["interval_seconds"] == 300
    for bad, field in (("a", "source"), ({"segment": 5}, "source.segment"), ({"segment": "a", "x": 1}, "source"),
                       ({"segment": "a", "interval_seconds": 0}, "source.interval_seconds"),
                       ({"segment": "a", "interval_seconds": True}, "source.interval_seconds"),
                       ({"segment": "bad id"}, "source.segment"), ({}, "source")):  # fmt: skip
        with pytest.raises(ValueError) as exc:
            validate_source(bad)
        assert str(exc.value).split(" ", 1)[0].rstrip(":") == field, bad


def test_a_missing_segment_is_refused_naming_source_segment(engine):
    w, _ids = setup(engine)
    body = {"name": "other", "provider": "file", "source": {"segment": "nope"}}
    with pytest.raises(ChorusError) as exc:
        store.create(engine, w.id, validate_audience(body, {}), utcnow())
    assert exc.value.field == "source.segment" and exc.value.status == 400


def test_first_follow_uploads_everyone_then_only_differences(subscribed):
    engine = subscribed
    w, ids = setup(engine)
    enter(engine, w, [ids[EMAILS[0]], ids[EMAILS[1]]])
    assert source(engine, w)["changes_pending"]  # created wanting its first, full, sync
    client = Recorder()
    got = sync.sync_followed(engine, w, "follow", client=client)
    assert got["added"] == 2 and client.held == held(EMAILS[0], EMAILS[1])
    assert got["source"] == {"segment": "browsers", "members": 2, "deleted": False}
    assert feed.consume(engine, follow.CONSUMER, follow.handle) == 2  # the two entries, recorded before the sync
    # handled after that sync began: one more sync is due, and it sends nothing
    assert source(engine, w)["changes_pending"]
    got = sync.sync_followed(engine, w, "follow", client=client)
    assert (got["added"], got["removed"], got["unchanged"]) == (0, 0, 2) and len(client.calls) == 1
    assert not source(engine, w)["changes_pending"]
    # one leaves, one enters: one removal and one addition, nothing else
    enter(engine, w, [ids[EMAILS[0]]], "exited")
    enter(engine, w, [ids[EMAILS[2]]])
    assert feed.consume(engine, follow.CONSUMER, follow.handle) == 2
    got = sync.sync_followed(engine, w, "follow", client=client)
    assert (got["added"], got["removed"], got["unchanged"]) == (1, 1, 1)
    assert client.held == held(EMAILS[1], EMAILS[2]) and client.calls[1:] == [("remove", 1), ("add", 1)]


def test_changes_of_other_segments_and_causes_want_nothing(subscribed):
    engine = subscribed
    w, ids = setup(engine)
    sync.sync_followed(engine, w, "follow", client=Recorder())
    feed.interest(follow.CONSUMER, follow.wants)  # as the package's register() declares it
    with engine.begin() as conn:
        pid = ids[EMAILS[0]]
        feed.record(conn, w.id, [feed.Change(pid, "segment", detail={"segment": "other", "change": "entered"}),
                                 feed.Change(pid, "event", detail={"event": "Product Viewed"})])  # fmt: skip
    assert feed.consume(engine, follow.CONSUMER, follow.handle) == 1  # the view was not even recorded for it
    assert not source(engine, w)["changes_pending"]


def test_the_task_waits_the_interval_between_syncs(subscribed):
    engine = subscribed
    w, ids = setup(engine, interval=60, provider="file")  # a file audience: recorded, uploaded nowhere
    start = utcnow()
    clock = [start]
    task = follow.FollowTask(engine, clock=lambda: clock[0])
    assert task.run_once() == 1  # the first follow, at once
    enter(engine, w, [ids[EMAILS[0]]])
    feed.consume(engine, follow.CONSUMER, follow.handle)
    clock[0] = start + timedelta(seconds=30)
    assert task.run_once() == 0 and source(engine, w)["changes_pending"]  # within the interval: waits
    clock[0] = start + timedelta(seconds=61)
    assert task.run_once() == 1
    assert task.run_once() == 0  # nothing new
    with engine.connect() as conn:
        assert store.view(conn, store.get(conn, w.id, "follow"))["members"] == 1


def test_a_following_audience_takes_no_list_and_a_deleted_segment_empties_it(subscribed):
    engine = subscribed
    w, ids = setup(engine)
    client = Recorder()
    with pytest.raises(Conflict) as exc:
        sync.sync(engine, w, "follow", [Entry("x", profile_id=ids[EMAILS[0]])], client=client)
    assert exc.value.field == "profiles"
    enter(engine, w, [ids[EMAILS[0]]])
    sync.sync_followed(engine, w, "follow", client=client)
    with engine.begin() as conn:
        segment_store.leave(conn, w.id, "browsers", [ids[EMAILS[0]]], utcnow(), "deleted")
        segment_store.delete(conn, w.id, "browsers")
    got = sync.sync_followed(engine, w, "follow", client=client)
    assert got["removed"] == 1 and client.held == set() and got["source"]["deleted"]
    assert source(engine, w)["following"] is False
    # no longer following: the caller's lists work again, and the follow sync says why it cannot run
    assert sync.sync(engine, w, "follow", [Entry("x", profile_id=ids[EMAILS[1]])], client=client)["added"] == 1
    with pytest.raises(ChorusError) as exc:
        sync.sync_followed(engine, w, "follow", client=client)
    assert exc.value.field == "profiles"


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["enter", "leave", "feed", "sync"]), st.integers(0, 2)), max_size=14))
def test_after_the_last_sync_the_platform_holds_exactly_the_members(subscribed, steps):
    """Any interleaving of entries, exits, the consumer and syncs: a final consume and sync leave the platform
    holding the segment's members, no row is sent twice in a row, and nothing stays due."""
    engine = subscribed
    w, ids = setup(engine)
    client = Recorder()
    members: set[str] = set()
    for op, i in steps:
        email = EMAILS[i]
        if op == "enter" and email not in members:
            enter(engine, w, [ids[email]])
            members.add(email)
        elif op == "leave" and email in members:
            enter(engine, w, [ids[email]], "exited")
            members.discard(email)
        elif op == "feed":
            feed.consume(engine, follow.CONSUMER, follow.handle)
        elif op == "sync":
            before = set(client.held)
            got = sync.sync_followed(engine, w, "follow", client=client)
            assert got["added"] == len(client.held - before) and got["removed"] == len(before - client.held)
    feed.consume(engine, follow.CONSUMER, follow.handle)
    sync.sync_followed(engine, w, "follow", client=client)
    assert client.held == held(*members) and not source(engine, w)["changes_pending"]


def test_an_erased_member_is_removed_by_the_task_without_a_segment_change(subscribed):
    engine = subscribed
    w, ids = setup(engine, interval=60)
    client = Recorder()
    start = utcnow()
    clock = [start]
    task = follow.FollowTask(engine, clock=lambda: clock[0], client=lambda: client)
    enter(engine, w, [ids[EMAILS[0]], ids[EMAILS[1]]])
    assert task.run_once() == 1 and client.held == held(EMAILS[0], EMAILS[1])
    feed.consume(engine, follow.CONSUMER, follow.handle)
    clock[0] = start + timedelta(seconds=61)
    assert task.run_once() == 1 and client.calls == [("add", 2)]  # the entries' changes: nothing new to send
    with engine.begin() as conn:
        privacy.erase(conn, w.id, ids[EMAILS[0]])
    assert feed.consume(engine, follow.CONSUMER, follow.handle) == 0  # an erasure records nothing for audiences
    clock[0] = start + timedelta(seconds=90)
    assert task.run_once() == 0  # the queued removal waits the interval too
    clock[0] = start + timedelta(seconds=122)
    assert task.run_once() == 1 and client.held == held(EMAILS[1]) and client.calls[-1] == ("remove", 1)
    clock[0] = start + timedelta(seconds=200)
    assert task.run_once() == 0  # nothing changed, nothing queued


def test_a_busy_segment_marks_its_followers_once_between_two_syncs(engine):
    w, _ids = setup(engine)
    sync.sync_followed(engine, w, "follow", client=Recorder())
    with engine.begin() as conn:
        assert [store.want_sync(conn, w.id, {"browsers"}) for _ in range(5)] == [1, 0, 0, 0, 0]
        assert store.want_sync(conn, w.id, {"other"}) == 0
    sync.sync_followed(engine, w, "follow", client=Recorder())
    assert not source(engine, w)["changes_pending"]
    with engine.begin() as conn:
        assert store.want_sync(conn, w.id, {"browsers"}) == 1  # a new epoch: marked again


def test_an_opt_out_makes_the_audience_due_without_a_segment_change(subscribed):
    """Found by review: only entries and exits marked a follower, so a member who opted out of ads stayed on the
    platform for as long as the segment was quiet."""
    engine = subscribed
    w, ids = setup(engine, interval=60)
    client = Recorder()
    start = utcnow()
    clock = [start]
    task = follow.FollowTask(engine, clock=lambda: clock[0], client=lambda: client)
    enter(engine, w, [ids[EMAILS[0]], ids[EMAILS[1]]])
    assert task.run_once() == 1 and client.held == held(EMAILS[0], EMAILS[1])
    feed.consume(engine, follow.CONSUMER, follow.handle)
    clock[0] = start + timedelta(seconds=61)
    assert task.run_once() == 1  # the entries' own changes: nothing new to send
    send(engine, w.id, [{"type": "track", "userId": "u0", "event": "Consent Updated", "messageId": "c0",
                         "timestamp": utcnow().isoformat(), "properties": {"channel": "ads", "status": "denied"}}])
    resolve(engine)
    feed.consume(engine, follow.CONSUMER, follow.handle)
    assert source(engine, w)["changes_pending"]
    clock[0] = start + timedelta(seconds=122)
    assert task.run_once() == 1 and client.held == held(EMAILS[1]) and client.calls[-1] == ("remove", 1)


def test_an_empty_segment_deleted_stops_its_follower(subscribed):
    """Found by review: deleting an empty segment records no exit, so nothing marked the follower and it kept
    following (and would have followed a new segment made under the same id)."""
    engine = subscribed
    w, _ids = setup(engine, interval=60)
    client = Recorder()
    start = utcnow()
    clock = [start]
    task = follow.FollowTask(engine, clock=lambda: clock[0], client=lambda: client)
    assert task.run_once() == 1 and client.held == set()
    with engine.begin() as conn:
        segment_store.delete(conn, w.id, "browsers")
    clock[0] = start + timedelta(seconds=61)
    assert task.run_once() == 1
    assert source(engine, w)["following"] is False
    assert task.run_once() == 0
