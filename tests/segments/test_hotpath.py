"""The incremental engine's hot path, on both engines: definitions parsed once per transaction yet never stale, a
person's timers and memberships written only when they change, consume transactions sized by time, and SQLite
reading one person's rows through the per-profile indexes (migration 0012)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus.profiles import feed
from chorus.segments import engine as seg
from chorus.segments import rules, store
from chorus.store.tables import segment_history, segment_timers
from tests.identity.helpers import profile_of
from tests.segments.conftest import T0
from tests.segments.test_engine import define, ev, members, send, settle

VIEWED = {"performed": {"event": "Product Viewed", "window": "7d"}}
BOUGHT = {"performed": {"event": "Order Completed"}}


def person(engine, ws, worker, clock, user="u1"):
    send(engine, ws, [ev("Product Viewed", clock.at, user=user)], received_at=clock.at)
    settle(worker)
    return profile_of(engine, ws, f"user_id:{user}")


# -- definitions: parsed once per transaction, never stale ---------------------------------------------------------
def test_a_save_in_the_same_transaction_is_seen_by_the_next_evaluation(engine, ws, clock, worker):
    define(engine, ws, "s", BOUGHT)
    pid = person(engine, ws, worker, clock)
    with engine.begin() as conn:
        assert seg.Evaluator(conn, ws, clock.at).person(pid, {"s"}, "test").entered == []  # never bought
        first = seg.context(conn, ws)
        assert seg.context(conn, ws) is first  # the same transaction: parsed once
        store.save(conn, ws, "s", "s", rules.parse(VIEWED), T0)
        assert seg.Evaluator(conn, ws, clock.at).person(pid, {"s"}, "test").entered == ["s"]
    with engine.begin() as conn:
        assert seg.context(conn, ws) is not first  # a new transaction reads them again


def test_a_savepoint_rolled_back_drops_what_was_parsed_after_a_save_inside_it(engine, ws, clock, worker):
    define(engine, ws, "s", BOUGHT)
    pid = person(engine, ws, worker, clock)
    with engine.begin() as conn:
        with pytest.raises(RuntimeError), conn.begin_nested():
            store.save(conn, ws, "s", "s", rules.parse(VIEWED), T0)
            assert seg.context(conn, ws).defs["s"].rule == rules.parse(VIEWED)
            raise RuntimeError("undo the save")
        assert seg.context(conn, ws).defs["s"].rule == rules.parse(BOUGHT)
        assert seg.Evaluator(conn, ws, clock.at).person(pid, {"s"}, "test").entered == []


def test_a_segment_saved_between_two_consume_passes_is_evaluated_by_the_next(engine, ws, clock, worker):
    define(engine, ws, "viewers", VIEWED)
    pid = person(engine, ws, worker, clock)
    define(engine, ws, "viewers2", VIEWED)
    send(engine, ws, [ev("Product Viewed", clock.at + timedelta(minutes=1))], received_at=clock.at)
    settle(worker)
    assert pid in members(engine, ws, "viewers2")


def test_definition_inputs_are_the_rules_dependencies():
    d = store.Definition("s", "s", rules.parse({"and": [VIEWED, {"segment": "x"}]}), 1, None, None)
    assert d.inputs is d.inputs  # walked once
    assert d.inputs == rules.dependencies(d.rule)


# -- writes only when something changes ------------------------------------------------------------------------------
def _writes_to(engine, table: str):
    seen: list[str] = []

    def spy(conn, cursor, statement, params, context, executemany):
        s = statement.lstrip().upper()
        if s.startswith(("INSERT", "UPDATE", "DELETE")) and table.upper() in s.split("WHERE")[0]:
            seen.append(statement)

    return seen, spy


def test_an_evaluation_that_leaves_the_timer_where_it_was_does_not_write_it(engine, ws, clock, worker):
    define(engine, ws, "bought", {"performed": {"event": "Order Completed", "window": "30d"}})
    define(engine, ws, "views", {"performed": {"event": "Product Viewed", "window": "7d"}})
    send(engine, ws, [ev("Order Completed", clock.at)], received_at=clock.at)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        before = store.timers_many(conn, ws, [pid])[pid]
    assert before["bought"] == T0 + timedelta(days=30)
    seen, spy = _writes_to(engine, "segment_timers")
    sa.event.listen(engine, "before_cursor_execute", spy)
    try:
        with engine.begin() as conn:  # the order's timer stays; the views one is not there yet: nothing to write
            seg.Evaluator(conn, ws, clock.at + timedelta(hours=1)).person(pid, {"bought"}, "test")
        assert seen == []
        with engine.begin() as conn:  # a later instant of a window that moved: written
            out = seg.Evaluator(conn, ws, clock.at + timedelta(days=31)).person(pid, {"bought"}, "test")
        assert out.exited == ["bought"] and len(seen) == 1
    finally:
        sa.event.remove(engine, "before_cursor_execute", spy)
    with engine.connect() as conn:
        assert "bought" not in store.timers_many(conn, ws, [pid]).get(pid, {})  # out for good


def test_peoples_segments_entered_and_left_at_once_report_only_real_changes(engine, ws):
    at = T0
    with engine.begin() as conn:
        assert store.enter_many(conn, ws, [("p1", "b", "x"), ("p1", "a", "x"), ("p2", "a", "y")], at) == {
            ("p1", "b"), ("p1", "a"), ("p2", "a")}
        assert store.enter_many(conn, ws, [("p1", "c", "x"), ("p1", "a", "x"), ("p2", "d", "y")], at) == {
            ("p1", "c"), ("p2", "d")}
        assert store.leave_many(conn, ws, [("p1", "z", "x"), ("p2", "d", "y"), ("p1", "a", "x"), ("p2", "b", "y")],
                                at) == {("p2", "d"), ("p1", "a")}
        assert store.memberships(conn, ws, "p1") == {"b", "c"} and store.memberships(conn, ws, "p2") == {"a"}
        hist = conn.execute(sa.select(segment_history.c.profile_id, segment_history.c.segment_id,
                                      segment_history.c.change, segment_history.c.cause)
                            .where(segment_history.c.workspace_id == ws).order_by(segment_history.c.id)).all()
        store.set_timers_many(conn, ws, {"p1": {"b": at, "c": at + timedelta(days=1)}, "p2": {"a": at}})
        store.set_timers_many(conn, ws, {"p1": {"b": None, "c": at + timedelta(days=2)}, "p2": {"a": None}})
        assert store.timers_many(conn, ws, ["p1", "p2", "p3"]) == {"p1": {"c": at + timedelta(days=2)}}
    assert [tuple(h) for h in hist] == [  # history for the real changes only, each with its own cause
        ("p1", "b", "entered", "x"), ("p1", "a", "entered", "x"), ("p2", "a", "entered", "y"),
        ("p1", "c", "entered", "x"), ("p2", "d", "entered", "y"),
        ("p2", "d", "exited", "y"), ("p1", "a", "exited", "x")]  # fmt: skip


# -- consume transactions sized by time ------------------------------------------------------------------------------
def test_a_pass_handles_its_batch_in_transactions_of_about_max_hold(engine, ws):
    feed.subscribe(engine, "slow")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i:03d}", "list", detail={"list": "x"}) for i in range(120)])
    per_txn: dict[int, int] = {}
    keep = []  # the transaction objects: none is collected and its id reused while counting

    def handle(conn, ws_id, pid, changes):
        txn = conn.get_transaction()
        keep.append(txn)
        per_txn[id(txn)] = per_txn.get(id(txn), 0) + 1
        time.sleep(0.005)  # 5 ms a person: 200 a second

    task = feed.FeedTask(engine, [("slow", handle)], batch=100)
    task.MAX_HOLD, task.MIN_BATCH = 0.05, 4
    assert task.run_once() == 100  # a pass still takes its batch...
    sizes = list(per_txn.values())
    assert sizes[0] == 4 and len(sizes) >= 5  # ...in short transactions: the first one, rate unknown, the least
    assert max(sizes) <= 40  # about 200/s x 0.05 s (a slow machine measures a lower rate: smaller ones)
    assert task.run_once() == 20 and task.run_once() == 0


# -- SQLite plans one person's rows on the per-profile indexes -------------------------------------------------------
@pytest.mark.parametrize("table,columns,index", [
    ("segment_members", "profile_id, segment_id", "ix_segment_members_profile"),  # load.people, memberships
    ("list_members", "profile_id, list_id", "ix_list_members_profile"),
    ("segment_timers", "segment_id, due_at", "ix_segment_timers_profile"),  # timers_many
])  # fmt: skip
def test_sqlite_reads_one_persons_rows_by_the_profile_index(engine, table, columns, index):
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's planner")
    with engine.connect() as conn:
        plan = " ".join(r[3] for r in conn.exec_driver_sql(
            f"EXPLAIN QUERY PLAN SELECT {columns} FROM {table} WHERE workspace_id = 'w' AND profile_id = 'p'"))
    # not the primary key's index on the workspace alone, which reads every row of the workspace
    assert f"COVERING INDEX {index} (workspace_id=? AND profile_id=?)" in plan


def test_timers_are_kept_per_person(engine, ws, clock, worker):
    define(engine, ws, "views", VIEWED)
    pid = person(engine, ws, worker, clock)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(segment_timers.c.segment_id, segment_timers.c.due_at)
                            .where(segment_timers.c.profile_id == pid)).all()  # fmt: skip
        assert store.timers_many(conn, ws, [pid])[pid] == dict(rows) == {"views": clock.at + timedelta(days=7)}


def test_a_segment_change_goes_to_readers_of_its_timeline_event_not_to_segments_referring_to_it(engine, ws, clock,
                                                                                                  worker):  # fmt: skip
    """The evaluation that changed a membership evaluated the segments referring to it after it, in its own
    transaction: its feed change brings nothing new to them, only the ``Segment Entered`` event to its readers."""
    define(engine, ws, "viewers", VIEWED)
    define(engine, ws, "fans", {"and": [{"segment": "viewers"}, VIEWED]})
    define(engine, ws, "told", {"performed": {"event": "Segment Entered"}})
    with engine.connect() as conn:
        defs = store.definitions(conn, ws)
    change = feed.Delivered(1, ws, "p", "segment", None, None, T0, {"segment": "viewers", "change": "entered"})
    assert seg.affected(defs, [change]) == {"told"}
    pid = person(engine, ws, worker, clock)
    assert pid in members(engine, ws, "fans") and pid in members(engine, ws, "told")


def test_a_pass_whose_later_transaction_fails_counts_what_the_earlier_ones_committed(engine, ws, caplog):
    """The database failing in the middle of a pass (a transient error: the transaction is abandoned) ends the pass;
    the worker still hears of the changes handled before it, which stay handled, and the rest are retried."""
    feed.subscribe(engine, "flaky")
    with engine.begin() as conn:
        feed.record(conn, ws, [feed.Change(f"p{i:03d}", "list", detail={"list": "x"}) for i in range(30)])
    seen: list[str] = []

    def handle(conn, ws_id, pid, changes):
        if len(seen) == 4:  # the second transaction: the database goes away
            raise sa.exc.OperationalError("SELECT 1", {}, Exception("database is locked"))
        seen.append(pid)

    task = feed.FeedTask(engine, [("flaky", handle)], batch=100)
    task.MIN_BATCH = 4
    assert task._consume("flaky", handle) == 4
    assert "failed" in caplog.text
    with engine.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).select_from(feed.feed_pending)
                            .where(feed.feed_pending.c.consumer == "flaky")).scalar_one()  # fmt: skip
    assert left == 26  # the four handled are gone; the failed one and the rest wait, no attempt counted
    seen.append("after")  # the database is back
    assert task.run_once() == 26


# -- a claim's people evaluated together ---------------------------------------------------------------------------
def test_a_claims_people_are_evaluated_with_statements_that_do_not_grow_with_their_number(engine, ws, clock):
    """30 people whose events enter them in two segments and one referring to them: one consume transaction runs a
    fixed number of statements (decision 0034), and each person gets her memberships, history, timers, timeline
    events and feed changes, as one evaluated alone does."""
    from chorus.store.tables import events, profile_changes
    from tests.identity.helpers import resolve

    define(engine, ws, "viewers", VIEWED)
    define(engine, ws, "buyers", BOUGHT)
    define(engine, ws, "both", {"and": [{"segment": "viewers"}, {"segment": "buyers"}]})
    for sid in ("viewers", "buyers", "both"):
        seg.recompute(engine, ws, sid)
    feed.subscribe(engine, seg.CONSUMER)
    for i in range(30):
        evs = [ev("Product Viewed", clock.at, user=f"u{i:02d}")]
        if i % 2:
            evs.append(ev("Order Completed", clock.at, user=f"u{i:02d}"))
        send(engine, ws, evs, received_at=clock.at)
    resolve(engine)
    statements: list[str] = []

    def spy(conn, cursor, statement, params, context, executemany):
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", spy)
    try:
        assert feed.consume(engine, seg.CONSUMER, seg.consumer(), limit=500) >= 30
    finally:
        sa.event.remove(engine, "before_cursor_execute", spy)
    assert len(statements) < 60, len(statements)  # one person alone runs about 25; 30 people one by one, 750
    ids = {f"u{i:02d}": profile_of(engine, ws, f"user_id:u{i:02d}") for i in range(30)}
    assert members(engine, ws, "viewers") == set(ids.values())
    odd = {ids[f"u{i:02d}"] for i in range(1, 30, 2)}
    assert members(engine, ws, "buyers") == odd and members(engine, ws, "both") == odd
    with engine.connect() as conn:
        timers = store.timers_many(conn, ws, list(ids.values()))
        entered = conn.execute(sa.select(events.c.profile_id, sa.func.count()).where(
            events.c.workspace_id == ws, events.c.event == "Segment Entered").group_by(events.c.profile_id)).all()
        fed = conn.execute(sa.select(profile_changes.c.profile_id, sa.func.count()).where(
            profile_changes.c.workspace_id == ws, profile_changes.c.cause == "segment")
            .group_by(profile_changes.c.profile_id)).all()  # fmt: skip
        hist = conn.execute(sa.select(segment_history.c.profile_id, segment_history.c.segment_id,
                                      segment_history.c.cause).where(segment_history.c.workspace_id == ws)).all()
    assert timers == {pid: {"viewers": clock.at + timedelta(days=7)} for pid in ids.values()}
    expected = {pid: 3 if pid in odd else 1 for pid in ids.values()}
    assert dict(entered) == expected and dict(fed) == expected
    assert sorted(hist) == sorted([(pid, "viewers", "event") for pid in ids.values()]
                                  + [(pid, s, "event") for pid in odd for s in ("buyers", "both")])


def _defs(**rls) -> dict[str, store.Definition]:
    return {sid: store.Definition(sid, sid, rules.parse(rl), 1, 1, T0) for sid, rl in rls.items()}


def _event(**detail) -> feed.Delivered:
    return feed.Delivered(1, "w", "p", "event", 1, None, T0, detail)


def test_an_event_goes_only_to_the_segments_that_can_read_it():
    """The index routes a plain event (one that changed only activity) by its name; traits, consent and
    reachability are read only after an event that may have changed them; a record without the flag (older rows)
    goes everywhere events matter."""
    idx = seg.Index.of(_defs(
        viewed=VIEWED, home={"performed": {"event": "Home"}}, any_page={"performed": {"type": "page"}},
        web={"used_channel": {"channel": "web"}}, pro={"trait": {"name": "plan", "equals": "pro"}},
        mail={"reachable": {"channel": "email"}}, score={"trait": {"name": "computed.clv", "gt": 1}},
    ))  # fmt: skip
    plain = {"any_page", "web"}  # any event matters to them
    assert idx.affected([_event(type="track", event="Product Viewed", profile=False)]) == plain | {"viewed"}
    assert idx.affected([_event(type="page", event="Home", profile=False)]) == plain | {"home"}
    assert idx.affected([_event(type="track", event="Order Completed", profile=False)]) == plain
    everything_but_computed = {"viewed", "home", "any_page", "web", "pro", "mail"}
    assert idx.affected([_event(type="track", event="Form Sent", profile=True)]) == everything_but_computed
    assert idx.affected([_event(type="track", event="Form Sent")]) == everything_but_computed
    assert idx.affected([_event(type="page", event="Home", profile=True, new=True)]) == set(idx.every)
    assert idx.affected([feed.Delivered(1, "w", "p", "computed", None, None, T0, {})]) == {"score"}
    assert idx.affected([feed.Delivered(1, "w", "p", "merge", None, "q", T0, {})]) == set(idx.every)


@pytest.mark.parametrize(("msg", "touches"), [
    ({"type": "track", "event": "Product Viewed", "userId": "u1"}, False),
    ({"type": "page", "name": "Home", "anonymousId": "a1"}, False),
    ({"type": "identify", "userId": "u1"}, True),
    ({"type": "group", "userId": "u1", "groupId": "g"}, True),
    ({"type": "track", "event": "X", "userId": "u1", "context": {"traits": {"plan": "pro"}}}, True),
    ({"type": "track", "event": "X", "userId": "u1", "context": {"timezone": "Europe/Paris"}}, True),
    ({"type": "track", "event": "X", "userId": "u1", "context": {"consent": {"categoryPreferences": {"ads": True}}}},
     True),
    ({"type": "track", "event": "Consent Updated", "userId": "u1", "properties": {"status": "denied"}}, True),
    ({"type": "track", "event": "X", "userId": "u1", "context": {"traits": {"email": "a@b.io"}}}, True),
])  # fmt: skip
def test_the_feed_says_whether_an_event_may_have_changed_the_profile(msg, touches):
    from chorus.collect.messages import normalise
    from chorus.identity.identifiers import IdentityConfig, extract
    from chorus.identity.resolver import Pending, event_change

    payload = normalise({**msg, "messageId": "m1", "timestamp": T0.isoformat()}, received_at=T0,
                        source_kind="server").payload  # fmt: skip
    p = Pending(1, payload, True, extract(payload, IdentityConfig()))
    change = event_change("p", p)
    assert change.detail["profile"] is touches
    assert change.detail.get("event") == (msg.get("event") or msg.get("name"))


def test_a_new_profile_made_by_a_plain_event_enters_the_segments_true_of_an_empty_profile(engine, ws, clock, worker):
    """Her first event is a plain view (it changes no trait), but the profile is new: the segments on traits,
    reachability and subscriptions true of an empty profile take her in at once, as the batch does."""
    rls = {"not_pro": {"not": {"trait": {"name": "plan", "equals": "pro"}}},
           "inbox": {"reachable": {"channel": "in_app"}},
           "news": {"subscribed": {"channel": "email", "topic": "newsletter"}},
           "not_vip": {"not": {"list": "vip"}}, "sample": {"bucket": {"from": 0, "to": 100}}}  # fmt: skip
    with engine.begin() as conn:
        store.save_list(conn, ws, "vip", "VIP", T0)
    for sid, rl in rls.items():
        define(engine, ws, sid, rl)
    settle(worker)
    clock.at = T0 + timedelta(minutes=1)
    send(engine, ws, [ev("Product Viewed", T0, user="new1")])
    settle(worker)
    pid = profile_of(engine, ws, "user_id:new1")
    got = {sid: members(engine, ws, sid) for sid in rls}
    for sid, rl in rls.items():  # the batch's answer for the same data: the same rules, defined afresh
        define(engine, ws, sid + "_b", rl)
    settle(worker)
    assert {sid: members(engine, ws, sid + "_b") for sid in rls} == {sid: {pid} for sid in rls}
    assert got == {sid: {pid} for sid in rls}
