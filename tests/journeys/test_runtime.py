"""The durable runtime on the store, on both engines: inputs from the change feed, timers, messages committed with
the transition, redelivery and replays that send nothing twice, pause/resume/stop, merges and erasure."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.identity.identifiers import anchor_of
from chorus.identity.resolver import Resolver
from chorus.journeys import interpreter as j
from chorus.journeys import manage, runtime, store
from chorus.messaging import outbox
from chorus.profiles import feed, privacy, views
from chorus.segments.evaluate import bucket
from chorus.store.tables import (
    events,
    feed_pending,
    identifiers,
    journey_held,
    journey_instances,
    journey_records,
    journey_timers,
    message_status,
    messages,
    profile_changes,
)
from tests.identity.helpers import profile_of
from tests.identity.helpers import send as _send
from tests.journeys.conftest import T0, failing_sends

CART = {
    "id": "cart", "name": "Abandoned cart",
    "entry": {"event": {"event": "Product Added", "key": "cart_id"}}, "reentry": "per_key",
    "goal": {"event": {"event": "Order Completed"}, "within": "7d"}, "exit_on_goal": False,
    "start": "wait",
    "nodes": {
        "wait": {"type": "wait", "timeout": {"after": "1h", "next": "remind"}, "branches": [
            {"name": "bought", "event": {"event": "Order Completed", "same": ["cart_id"]}, "next": "done"}]},
        "remind": {"type": "message", "template": "cart_reminder", "channel": ["in_app"], "kind": "marketing",
                   "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip


NOW = {**CART, "start": "remind", "nodes": {k: v for k, v in CART["nodes"].items() if k != "wait"}}  # no wait


def ev(name, at, user="u1", channel="web", **props):
    return {"type": "track", "userId": user, "event": name, "messageId": uuid.uuid4().hex, "timestamp": at.isoformat(),
            "properties": props, "context": {"channel": channel}}  # fmt: skip


def send(engine, ws, msgs, at):
    _send(engine, ws, msgs, received_at=at)


def settle(worker, n=4):
    for _ in range(n):
        worker.run_once()


def publish(engine, ws, raw, at=T0, **kw):
    with engine.begin() as conn:
        return manage.publish(conn, ws, raw, at, **kw)


def journey_messages(engine, ws, jid="cart"):
    with engine.connect() as conn:
        return conn.execute(sa.select(messages.c.idempotency_key, messages.c.profile_id, messages.c.content,
                                      messages.c.channel).where(messages.c.workspace_id == ws,
                                                                messages.c.journey_id == jid)
                            .order_by(messages.c.created_at, messages.c.idempotency_key)).all()  # fmt: skip


def instances(engine, ws, jid="cart"):
    with engine.connect() as conn:
        return conn.execute(sa.select(journey_instances).where(journey_instances.c.workspace_id == ws,
                                                               journey_instances.c.journey_id == jid)
                            .order_by(journey_instances.c.entered_at, journey_instances.c.id)).all()  # fmt: skip


def timers(engine, ws):
    with engine.connect() as conn:
        return conn.execute(sa.select(journey_timers).where(journey_timers.c.workspace_id == ws)).all()


def test_abandoned_cart_reminds_only_the_cart_not_bought_and_a_store_purchase_cancels_it(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A"), ev("Product Added", T0, cart_id="B")], T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert [(i.status, i.node) for i in instances(engine, ws)] == [("active", "wait"), ("active", "wait")]
    assert len(timers(engine, ws)) == 2  # one timeout each, rows: nothing in the worker's memory

    clock.at = T0 + timedelta(minutes=30)  # cart A bought in a store: its instance leaves by "bought"
    send(engine, ws, [ev("Order Completed", clock.at, channel="store", cart_id="A")], clock.at)
    settle(worker)
    by_key = {i.state["key"]: i for i in instances(engine, ws)}
    assert by_key["A"].status == "exited" and by_key["A"].state["branch"] == "bought"
    assert by_key["B"].status == "active"
    assert len(timers(engine, ws)) == 1
    assert journey_messages(engine, ws) == []

    clock.at = T0 + timedelta(minutes=59)
    settle(worker)
    assert journey_messages(engine, ws) == []  # not due yet
    clock.at = T0 + timedelta(hours=1, seconds=1)
    settle(worker)
    (msg,) = journey_messages(engine, ws)
    b = by_key["B"].id
    assert msg.profile_id == pid and msg.channel == "in_app"
    assert msg.idempotency_key.startswith(b + ":")  # the step's key: instance and step number
    assert "cart_reminder B" in str(msg.content)  # the entry event's properties reach the template as event.*
    assert timers(engine, ws) == []
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1
    with engine.connect() as conn:
        recs = conn.execute(
            sa.select(journey_records.c.kind, journey_records.c.node, journey_records.c.branch)
            .where(journey_records.c.instance_id == b)
            .order_by(journey_records.c.id)
        ).all()
        timeline = [r.payload["event"] for r in conn.execute(sa.select(events.c.payload).where(
            events.c.workspace_id == ws, events.c.profile_id == pid).order_by(events.c.seq))]  # fmt: skip
    assert ("converted", "wait", None) in recs  # cart A's order counts as B's goal (any order within 7 days)
    assert recs[-1][0] == "exited"
    assert timeline.count("Journey Entered") == 2 and timeline.count("Journey Exited") == 2
    assert "Journey Converted" in timeline and "Journey Step" in timeline


def test_a_change_delivered_again_starts_nobody_twice_and_sends_nothing_twice(engine, ws, clock, worker):
    publish(engine, ws, NOW)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1
    # the consumer's claim committed; as after a crash between the work and the delete, hand the changes again
    with engine.begin() as conn:
        rows = conn.execute(sa.select(profile_changes).where(profile_changes.c.workspace_id == ws)).all()
        conn.execute(
            feed_pending.insert(),
            [
                {
                    "seq": r.seq,
                    "consumer": runtime.CONSUMER,
                    "workspace_id": ws,
                    "profile_id": r.profile_id,
                    "attempts": 0,
                }
                for r in rows
            ],
        )
    settle(worker)
    assert len(instances(engine, ws)) == 1
    assert len(journey_messages(engine, ws)) == 1


def test_a_transition_that_fails_leaves_no_trace_and_runs_again(engine, ws, clock, worker, monkeypatch):
    publish(engine, ws, NOW)
    boom = {"on": True}
    real = store.add_records

    def failing(conn, ws_id, rows):
        real(conn, ws_id, rows)
        if boom["on"]:
            raise RuntimeError("crash after the message was queued")

    monkeypatch.setattr(store, "add_records", failing)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    assert journey_messages(engine, ws) == [] and instances(engine, ws) == []  # rolled back together
    boom["on"] = False
    with engine.begin() as conn:  # the feed retries a failed change (attempts < MAX_ATTEMPTS)
        assert conn.execute(sa.select(sa.func.count()).select_from(feed_pending).where(
            feed_pending.c.consumer == runtime.CONSUMER)).scalar() == 1  # fmt: skip
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1 and len(instances(engine, ws)) == 1


def test_paused_holds_inputs_and_timers_and_resume_gives_them_in_time_order(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "pause", T0)
    clock.at = T0 + timedelta(minutes=10)
    send(engine, ws, [ev("Product Added", clock.at, cart_id="B")], clock.at)  # an entry while paused: held
    clock.at = T0 + timedelta(hours=2)
    settle(worker)  # A's timeout fired while paused: held, nothing sent
    assert journey_messages(engine, ws) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(journey_held)).scalar() == 2
    send(engine, ws, [ev("Order Completed", clock.at, cart_id="B")], clock.at)  # B bought before resume
    settle(worker)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "resume", clock.at)
    settle(worker)
    # A's timeout (due 10:00), B's entry (09:10) and B's purchase (11:00), in their own time order, B's timeout
    # (10:10, set by her entry given on resume) among them: B's entry, A reminded, B reminded, then her purchase,
    # after her hour was up (an outside probe: the purchase was given before the timeout, `bought`, where the
    # simulator said `timeout`; this test had asserted that)
    msgs = journey_messages(engine, ws)
    by_key = {i.state["key"]: i for i in instances(engine, ws)}
    assert sorted(m.idempotency_key.split(":")[0] for m in msgs) == sorted([by_key["A"].id, by_key["B"].id])
    assert by_key["B"].status == "exited" and by_key["B"].state["branch"] != "bought", by_key["B"].state
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(journey_held)).scalar() == 0


def test_stop_exits_everybody_cancels_timers_and_nothing_more_is_sent(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A"), ev("Product Added", T0, user="u2", cart_id="C")], T0)
    settle(worker)
    assert len(timers(engine, ws)) == 2
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "stop", T0)
    settle(worker)
    assert [i.status for i in instances(engine, ws)] == ["exited", "exited"]
    assert timers(engine, ws) == []
    clock.at = T0 + timedelta(hours=3)
    send(engine, ws, [ev("Product Added", clock.at, cart_id="D")], clock.at)
    settle(worker)
    assert journey_messages(engine, ws) == [] and len(instances(engine, ws)) == 2  # nobody enters a stopped one
    with engine.begin() as conn, pytest.raises(Exception, match="stopped"):
        manage.control(conn, ws, "cart", "resume", clock.at)


def test_a_merge_moves_the_merged_persons_journeys_to_the_survivor(engine, ws, clock, worker):
    publish(engine, ws, CART)
    anon = {"type": "track", "anonymousId": "a1", "event": "Product Added", "messageId": "m1",
            "timestamp": T0.isoformat(), "properties": {"cart_id": "A"}, "context": {"channel": "web"}}  # fmt: skip
    send(engine, ws, [anon, ev("Page Viewed", T0, user="u9")], T0)
    settle(worker)
    (inst,) = instances(engine, ws)
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "a1", "messageId": "m2",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    survivor = profile_of(engine, ws, "user_id:u9")
    (moved,) = instances(engine, ws)
    assert moved.profile_id == survivor and moved.state["profile_id"] == survivor
    assert {t.profile_id for t in timers(engine, ws)} == {survivor}
    clock.at = T0 + timedelta(minutes=20)  # the purchase under the known id ends the anonymous cart's wait
    send(engine, ws, [ev("Order Completed", clock.at, user="u9", cart_id="A")], clock.at)
    settle(worker)
    assert instances(engine, ws)[0].status == "exited"


BROWSE = {"id": "browse", "entry": {"event": {"event": "Browse"}}, "start": "pause",
          "nodes": {"pause": {"type": "delay", "for": "1m", "next": "mail"},
                    "mail": {"type": "message", "template": "cart_reminder", "channel": ["in_app"],
                             "kind": "marketing", "next": "done"},
                    "done": {"type": "exit"}}}  # fmt: skip


@pytest.mark.parametrize("reentry, left", [("after_exit", 1), ("per_key", 2)])
def test_a_merge_of_two_people_in_one_journey_leaves_her_in_it_once(engine, ws, clock, worker, reentry, left):
    """A visitor and a known customer both entered the journey, then one identify joined them (an outside probe:
    two instances of the survivor went on, and she got the message twice). Where she may be in it once at a time,
    the first entered goes on and the other exits; per key, one per key value (two carts are two)."""
    raw = dict(BROWSE)
    if reentry == "per_key":
        raw["entry"] = {"event": {"event": "Browse", "key": "cart_id"}}
        raw["reentry"] = "per_key"
    publish(engine, ws, raw)
    anon = {"type": "track", "anonymousId": "a1", "event": "Browse", "messageId": "m1", "timestamp": T0.isoformat(),
            "properties": {"cart_id": "A"}, "context": {"channel": "web"}}  # fmt: skip
    later = clock.at = T0 + timedelta(seconds=10)
    send(engine, ws, [anon, ev("Browse", later, user="u9", cart_id="B")], later)
    settle(worker)
    assert len(instances(engine, ws, "browse")) == 2
    clock.at = T0 + timedelta(seconds=20)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "a1", "messageId": "m2",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    survivor = profile_of(engine, ws, "user_id:u9")
    live = [i for i in instances(engine, ws, "browse") if i.status != "exited"]
    assert len(live) == left and {i.profile_id for i in live} == {survivor}
    if left == 1:  # the first entered (the visitor's, 10 s earlier) goes on; the other left with the reason
        assert live[0].state["entry"]["properties"]["cart_id"] == "A"
        (gone,) = [i for i in instances(engine, ws, "browse") if i.status == "exited"]
        assert gone.state["exit_reason"].startswith("merged")
    clock.at = T0 + timedelta(minutes=5)
    settle(worker)
    sent = journey_messages(engine, ws, "browse")
    assert len(sent) == left and {m.profile_id for m in sent} == {survivor}


def test_an_event_stamped_after_it_arrived_is_given_at_its_own_time(engine, ws, clock, worker):
    """A client clock ahead: the order is stamped 11:30 and arrives at 10:10 (the API keeps times up to two days
    ahead). The simulator and the segments put it at 11:30; the runtime gave it at once, and the wait for it took
    the "bought" branch at 10:10 instead of timing out at 11:00 (an outside probe). It is now kept until 11:30:
    the reminder goes at 11:00, the conversion counts at 11:30."""
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=10)
    stamped = T0 + timedelta(minutes=90)
    send(engine, ws, [ev("Order Completed", stamped, cart_id="A")], clock.at)
    settle(worker)
    (inst,) = instances(engine, ws)
    assert inst.node == "wait" and inst.status == "active"  # still waiting: the order has not happened yet
    clock.at = T0 + timedelta(minutes=61)
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1  # the timeout's reminder
    clock.at = T0 + timedelta(minutes=91)
    settle(worker)
    with engine.connect() as conn:
        converted = conn.execute(sa.select(journey_records.c.at).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "converted")).scalars().all()  # fmt: skip
        held = conn.execute(sa.select(sa.func.count()).select_from(journey_held).where(
            journey_held.c.workspace_id == ws)).scalar()  # fmt: skip
    assert converted == [stamped] and held == 0 and timers(engine, ws) == []


def test_her_export_has_her_journeys_and_segments(engine, ws, clock, worker):
    """Review: the journeys' and segments' rows about her were erased with her but were in no export (what was decided
    about her: the journeys she is in, each step and arm, her segment memberships and their history)."""
    import orjson

    from chorus.identity.identifiers import IdentityConfig
    from chorus.segments import rules
    from chorus.segments import store as segments_store

    publish(engine, ws, CART)
    with engine.begin() as conn:
        segments_store.save(conn, ws, "carts", "Carts", rules.parse({"performed": {"event": "Product Added"}}), T0)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker, 6)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        out = privacy.export(conn, ws, pid, IdentityConfig())
    orjson.dumps({k: out[k] for k in ("journeys", "segments")})  # JSON as they are (the API answers with orjson)
    (inst,) = out["journeys"]["instances"]
    assert inst["journey_id"] == "cart" and inst["state"]["entry"]["properties"]["cart_id"] == "A"
    assert [r["kind"] for r in out["journeys"]["records"]][:1] == ["entered"] and out["journeys"]["timers"]
    assert [m["segment_id"] for m in out["segments"]["members"]] == ["carts"]
    assert [h["change"] for h in out["segments"]["history"]] == ["entered"]


def test_erasure_leaves_no_journey_rows(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "pause", T0)
    send(engine, ws, [ev("Product Added", T0, cart_id="Z")], T0)
    settle(worker)
    out = privacy.forget(engine, ws, pid)
    assert out["deleted"]["journey_instances"] == 2  # A, and Z admitted while paused
    assert out["deleted"]["journey_held"] == 1
    with engine.connect() as conn:
        for table in (journey_instances, journey_timers, journey_held, journey_records):
            assert conn.execute(sa.select(sa.func.count()).select_from(table).where(
                table.c.workspace_id == ws)).scalar() == 0, table.name  # fmt: skip


def test_api_start_enters_once_per_key_and_says_why_not(engine, ws, clock, worker):
    publish(engine, ws, {"id": "receipt", "entry": {"api": {"key": "order_id"}}, "reentry": "per_key",
                         "start": "send", "nodes": {
                             "send": {"type": "message", "template": "receipt", "channel": ["in_app"],
                                      "kind": "transactional", "next": "done"},
                             "done": {"type": "exit"}}})  # fmt: skip
    send(engine, ws, [ev("Page Viewed", T0)], T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.begin() as conn:
        first = manage.start(conn, ws, "receipt", pid, {"order_id": "o1"}, "req-1", T0)
    with engine.begin() as conn:
        again = manage.start(conn, ws, "receipt", pid, {"order_id": "o1"}, "req-2", T0)
    publish(engine, ws, CART)
    with engine.begin() as conn, pytest.raises(Exception, match="not entered by an API call"):
        manage.start(conn, ws, "cart", pid, {}, "req-3", T0)
    assert first["entered"] is True and first["status"] == "exited"
    assert again["entered"] is False and "order_id 'o1' has entered already" in again["reason"]
    assert len(journey_messages(engine, ws, "receipt")) == 1


def test_publish_checks_references_and_a_dry_run_writes_nothing(engine, ws, clock, worker):
    bad = {**CART, "nodes": {**CART["nodes"], "remind": {**CART["nodes"]["remind"], "template": "nope"}}}
    with pytest.raises(Exception, match="template 'nope' does not exist") as e:
        publish(engine, ws, bad)
    assert e.value.field == "nodes.remind.template"
    sms = {**CART, "nodes": {**CART["nodes"], "remind": {**CART["nodes"]["remind"], "channel": ["sms"]}}}
    with pytest.raises(Exception, match="has no sms variant"):
        publish(engine, ws, sms)
    out = publish(engine, ws, CART, dry_run=True)
    assert out["dry_run"] and out["version"] == 1
    with engine.connect() as conn, pytest.raises(Exception, match="not found"):
        store.get(conn, ws, "cart")


def test_new_version_keeps_people_on_theirs_unless_a_migration_moves_them(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A"), ev("Product Added", T0, user="u2", cart_id="B")], T0)
    settle(worker)
    v2 = {**CART, "start": "hold", "nodes": {**CART["nodes"], "hold": {**CART["nodes"]["wait"]}}}
    del v2["nodes"]["wait"]
    plan = publish(engine, ws, v2, dry_run=True, migrate={"wait": "hold"})
    assert plan["people_inside"] == 2 and plan["moving"] == 2
    assert plan["where"] == [{"version": 1, "node": "wait", "status": "active", "people": 2, "moves_to": "hold"}]
    assert {i.version for i in instances(engine, ws)} == {1}  # the dry run moved nobody
    with pytest.raises(Exception, match="same waiting kind"):
        publish(engine, ws, v2, migrate={"wait": "remind"})
    publish(engine, ws, v2, migrate={"wait": "hold"})
    assert {(i.version, i.node) for i in instances(engine, ws)} == {(2, "hold")}
    clock.at = T0 + timedelta(hours=1, seconds=1)
    settle(worker)  # their timeouts (set at v1) fire at v2's node
    assert len(journey_messages(engine, ws)) == 2


def test_timers_are_claimed_by_one_worker_at_a_time_on_postgresql(engine, db_url, ws, clock, worker):
    if not db_url.startswith("postgresql"):
        pytest.skip("SKIP LOCKED: PostgreSQL's concurrency")
    import threading

    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, user=f"u{i}", cart_id=f"c{i}") for i in range(40)], T0)
    settle(worker)
    assert len(timers(engine, ws)) == 40
    clock.at = T0 + timedelta(hours=2)
    barrier = threading.Barrier(3)
    done = []

    def fire():
        barrier.wait()
        for _ in range(5):
            done.append(runtime.due(engine, limit=7))

    threads = [threading.Thread(target=fire) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(done) == 40
    msgs = journey_messages(engine, ws)
    assert len(msgs) == 40 and len({m.idempotency_key for m in msgs}) == 40


def test_records_carry_the_time_of_the_input_not_of_processing(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    clock.at = T0 + timedelta(minutes=20)  # processed 20 minutes late
    settle(worker)
    with engine.connect() as conn:
        (entered_at,) = conn.execute(sa.select(journey_records.c.at).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "entered")).scalars()  # fmt: skip
        (due,) = conn.execute(sa.select(journey_timers.c.due_at)).scalars()
    assert entered_at == T0 and due == T0 + timedelta(hours=1)


def test_an_event_processed_before_the_entry_counts_at_entry_once(engine, ws, clock, worker):
    """An import gives a store purchase (10:30) before the cart add it follows (10:00): the entry checks its goal
    against what was processed before it, so she converts at entry and gets no reminder; the purchase is not
    counted again (a second conversion) when events pending in the feed are kept out of the entry's view."""
    publish(engine, ws, {**CART, "exit_on_goal": True})
    at = T0 + timedelta(minutes=30)
    send(engine, ws, [ev("Order Completed", at, channel="store", cart_id="A"), ev("Product Added", T0, cart_id="A"),
                      ev("Product Added", T0, cart_id="B")], at)  # fmt: skip
    clock.at = T0 + timedelta(hours=2)
    settle(worker)
    assert journey_messages(engine, ws) == []
    with engine.connect() as conn:
        kinds = conn.execute(sa.select(journey_records.c.kind).where(journey_records.c.workspace_id == ws)
                             .order_by(journey_records.c.id)).scalars().all()  # fmt: skip
    assert kinds.count("converted") == 2 and kinds.count("exited") == 2  # A and B: any order is the goal
    assert [i.status for i in instances(engine, ws)] == ["exited", "exited"]


def test_after_a_resume_a_new_input_waits_behind_the_held_ones(engine, ws, clock, worker):
    """Resumed, the held inputs are given again by the sweep; an input that arrives before the sweep reached her
    (a store purchase imported late, stamped 09:30) is held behind them, so her inputs run in their time order:
    the cart added at 09:00 while paused begins first, then the purchase ends its wait. Given at once instead, the
    purchase would find no cart yet, and the cart would be reminded."""
    publish(engine, ws, CART)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "pause", T0)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(hours=2)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "resume", clock.at)
    bought = T0 + timedelta(minutes=30)
    send(engine, ws, [ev("Order Completed", bought, channel="store", cart_id="A")], clock.at)
    settle(worker)
    assert journey_messages(engine, ws) == []
    (a,) = instances(engine, ws)
    assert a.status == "exited" and a.state["branch"] == "bought"
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(journey_held)).scalar() == 0
        assert not store.get(conn, ws, "cart").sweep


def test_a_timer_waits_for_her_earlier_inputs_still_in_the_feed(engine, ws, clock, worker):
    """Bought at 09:50 (stored and resolved) but not yet handled by the journeys consumer when her 10:00 timeout is
    due: the timer task leaves her to the consumer, which gives the purchase first (found by review)."""
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    at = T0 + timedelta(minutes=50)
    send(engine, ws, [ev("Order Completed", at, channel="store", cart_id="A")], at)
    Resolver(engine).drain()
    clock.at = T0 + timedelta(hours=1, seconds=1)
    runtime.due(engine)  # the timer task of one worker runs before the consumer of another
    feed.consume(engine, runtime.CONSUMER, runtime.Consumer())
    settle(worker)
    assert journey_messages(engine, ws) == []  # as in time order: she bought, then the hour was up
    (a,) = instances(engine, ws)
    assert a.state["branch"] == "bought"


def test_an_overdue_timer_fires_before_a_later_input(engine, ws, clock, worker):
    """The timeout was due at 10:00 and the timer task lags; an order at 10:02 reaches the consumer first: her
    timers due before it fire first, so the reminder goes, as in time order (found by review)."""
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    at = T0 + timedelta(hours=1, minutes=2)
    clock.at = at + timedelta(minutes=1)
    send(engine, ws, [ev("Order Completed", at, channel="store", cart_id="A")], at)
    Resolver(engine).drain()
    feed.consume(engine, runtime.CONSUMER, runtime.Consumer())
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1
    (a,) = instances(engine, ws)
    assert a.state["branch"] == "timeout" or a.status == "exited"


def test_a_person_whose_resume_fails_does_not_hold_up_the_others(engine, ws, clock, worker, monkeypatch):
    """One person's replay raises on resume: she is rolled back alone (her poisoned input dropped, loudly), the
    others' held inputs are given again and the resume completes (found by review)."""

    publish(engine, ws, NOW)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "pause", T0)
    send(engine, ws, [ev("Product Added", T0, user="bad", cart_id="A"),
                      ev("Product Added", T0, user="good", cart_id="B")], T0)  # fmt: skip
    settle(worker)
    bad = profile_of(engine, ws, "user_id:bad")
    failing_sends(monkeypatch, lambda run, s: run.person.id == bad)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "resume", T0)
    runtime.sweep(engine)
    (msg,) = journey_messages(engine, ws)
    assert msg.profile_id == profile_of(engine, ws, "user_id:good")
    with engine.connect() as conn:
        assert not store.get(conn, ws, "cart").sweep
        assert conn.execute(sa.select(sa.func.count()).select_from(journey_held)).scalar() == 0


def test_a_rolled_back_savepoint_drops_the_journeys_it_read_under_its_locks(engine, db_url, ws, clock):
    """On PostgreSQL a savepoint rolled back releases the shared locks on the journeys read inside it: the next
    transition of the same transaction reads them again, so a pause committed meanwhile is seen (found by review)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL")
    publish(engine, ws, CART)
    with engine.connect() as a:
        a.begin()
        with pytest.raises(RuntimeError), a.begin_nested():  # feed.consume: one person, in a savepoint
            assert runtime.journeys_of(a, ws).all["cart"].status == "active"
            raise RuntimeError("this person's transition failed")
        with engine.begin() as b:
            b.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
            manage.control(b, ws, "cart", "pause", T0)
        assert runtime.journeys_of(a, ws).all["cart"].status == "paused"
        a.rollback()


def test_the_variant_on_the_timeline_says_holdout_by_the_split_not_by_the_arms_name(engine, ws, clock, worker):
    """The uplift report reads `variant`: a holdout arm named `keep_out` is `holdout`, a treated arm named
    `control` is not read as one (found by review)."""
    publish(engine, ws, {
        "id": "ab", "entry": {"event": {"event": "Signed Up"}}, "goal": {"event": {"event": "Order Completed"},
        "within": "1d"}, "start": "arm", "nodes": {
            "arm": {"type": "split", "seed": "fixed", "arms": [{"name": "control", "weight": 50, "next": "done"},
                                                               {"name": "keep_out", "weight": 50, "holdout": True}]},
            "done": {"type": "exit"}}})  # fmt: skip
    send(engine, ws, [ev("Signed Up", T0, user=f"u{i}") for i in range(12)], T0)
    settle(worker)
    with engine.connect() as conn:
        steps = [r.payload["properties"] for r in conn.execute(sa.select(events.c.payload).where(
            events.c.workspace_id == ws)) if r.payload.get("event") == "Journey Step"]  # fmt: skip
        arms = dict(conn.execute(sa.select(journey_instances.c.id, journey_instances.c.state).where(
            journey_instances.c.workspace_id == ws)).all())  # fmt: skip
    got = {p["instance_id"]: (p["arm"], p["variant"]) for p in steps if "variant" in p}
    assert set(got) == set(arms)
    for iid, state in arms.items():
        arm = state["arms"]["arm"]
        assert got[iid] == (arm, "holdout" if arm == "keep_out" else "treated:control")
    assert {v for _, v in got.values()} == {"holdout", "treated:control"}


def test_a_split_by_identifier_draws_each_person_by_her_anchor_identifier(engine, ws, clock, worker):
    """`by: identifier`: a known customer's arm is the bucket of her user id, an anonymous visitor's the bucket of her
    anonymous id, never of the random profile id Chorus gave them (so another run of the same data, or another
    workspace, draws the same people); the claim reads her identifiers for it."""
    publish(engine, ws, {
        "id": "ab", "entry": {"event": {"event": "Product Added"}}, "start": "arm", "nodes": {
            "arm": {"type": "split", "by": "identifier", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                                                  {"name": "b", "weight": 50, "next": "done"}]},
            "done": {"type": "exit"}}})  # fmt: skip
    # known customers browsed on a device first: their anonymous id sorts before the user id as text, but the
    # anchor is the user id (identity resolution's rank, not the alphabet)
    known = [{**ev("Product Added", T0, user=f"u{i}"), "anonymousId": f"dev-{i}"} for i in range(10)]
    anonymous = []
    for i in range(10):
        e = ev("Product Added", T0, user=None)
        del e["userId"]
        anonymous.append({**e, "anonymousId": f"anon-{i}"})
    send(engine, ws, known + anonymous, T0)
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journey_instances.c.profile_id, journey_instances.c.state).where(
            journey_instances.c.workspace_id == ws)).all()  # fmt: skip
        cfg = workspaces.find(conn, ws).identity
        found = views.idents_of(conn, ws, [p for p, _ in rows])
        anchors = {pid: anchor_of(ids, cfg) for pid, ids in found.items()}
        split = store.definition(conn, ws, "ab", 1).node("arm").body
    assert {len(found[pid]) for pid, _ in rows} == {1, 2}
    assert len(rows) == 20 and sorted(anchors.values()) == sorted(
        [*(f"user_id:u{i}" for i in range(10)), *(f"anonymous_id:anon-{i}" for i in range(10))])
    for pid, state in rows:
        assert state["arms"]["arm"] == j.arm_at(split, bucket(anchors[pid], "ab:arm")).name
    assert {state["arms"]["arm"] for _, state in rows} == {"a", "b"}


@pytest.mark.parametrize("together", [True, False])
def test_a_split_by_identifier_draws_by_the_entry_events_anchor_however_the_passes_fell(engine, ws, clock, worker,
                                                                                        together):  # fmt: skip
    """She adds to her cart anonymously, then signs up a minute later. Whether the worker resolved her sign-up
    before the journeys consumer handled her entry (sent together) or not (a pass in between), her arm is drawn by
    the entry event's anchor, her anonymous id, and the backtest of the same events predicts it (review: live, it
    was her identifiers as stored when the consumer ran: her user id in one case, her anonymous id in the other)."""
    from chorus import workspaces
    from chorus.journeys import definition as d
    from chorus.journeys import simulate as sm
    from chorus.journeys.cli import backtest_subjects

    ab = {"id": "ab", "entry": {"event": {"event": "Product Added"}}, "start": "arm", "nodes": {
        "arm": {"type": "split", "by": "identifier", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                                              {"name": "b", "weight": 50, "next": "done"}]},
        "done": {"type": "exit"}}}  # fmt: skip
    publish(engine, ws, ab)
    split = d.parse(ab).node("arm").body

    def arm(ident):
        return j.arm_at(split, bucket(ident, "ab:arm")).name

    # people whose user id and anonymous id draw different arms: the case where the two readings disagree
    ks = [k for k in range(200) if arm(f"user_id:u{k}") != arm(f"anonymous_id:anon{k}")][:6]
    added, signed = [], []
    for k in ks:
        e = ev("Product Added", T0, user=None)
        del e["userId"]
        added.append({**e, "anonymousId": f"anon{k}"})
        signed.append({"type": "identify", "userId": f"u{k}", "anonymousId": f"anon{k}", "traits": {},
                       "messageId": uuid.uuid4().hex, "timestamp": (T0 + timedelta(minutes=1)).isoformat()})
    clock.at = T0 + timedelta(minutes=2)
    if together:
        send(engine, ws, added + signed, T0)
        settle(worker)
    else:
        send(engine, ws, added, T0)
        settle(worker)
        send(engine, ws, signed, T0)
        settle(worker)
    with engine.connect() as conn:
        live = conn.execute(sa.select(journey_instances.c.profile_id, journey_instances.c.state).where(
            journey_instances.c.workspace_id == ws)).all()  # fmt: skip
        w = workspaces.find(conn, ws)
        subjects = backtest_subjects(conn, w, T0 - timedelta(days=1), T0 + timedelta(days=1))
    mine = {p: k for k in ks for p in [profile_of(engine, ws, f"user_id:u{k}")]}
    assert len(live) == len(ks)
    for pid, state in live:
        assert state["arms"]["arm"] == arm(f"anonymous_id:anon{mine[pid]}")
    rep = sm.simulate(d.parse(ab), subjects, since=T0 - timedelta(days=1), until=T0 + timedelta(days=1),
                      identity=w.identity)  # fmt: skip
    predicted = {name: s.entered for name, s in rep.arms["arm"].items() if s.entered}
    got: dict[str, int] = {}
    for _, state in live:
        got[state["arms"]["arm"]] = got.get(state["arms"]["arm"], 0) + 1
    assert predicted == got


def test_a_version_published_before_a_newer_publishing_rule_still_runs(engine, ws, clock, worker):
    """Stored versions are read without the rules added since they were published (a split of holdouts only, a
    webhook url the url check refuses): one refused at load failed the journeys consumer for everybody in the
    workspace, the other journeys included (review). It runs as it did, and publishing it again is refused."""
    from chorus.errors import ChorusError
    from chorus.journeys import store as jstore
    from chorus.store.tables import journey_versions

    good = {"id": "good", "entry": {"event": {"event": "X"}}, "start": "done", "nodes": {"done": {"type": "exit"}}}
    old = {"id": "old", "entry": {"event": {"event": "X"}}, "goal": {"event": {"event": "Z"}, "within": "7d"},
           "start": "hook", "nodes": {
               "hook": {"type": "webhook", "url": "https://shop.example:99999/h", "next": "arm"},
               "arm": {"type": "split", "arms": [{"name": "h1", "weight": 50, "holdout": True},
                                                 {"name": "h2", "weight": 50, "holdout": True}]}}}  # fmt: skip
    publish(engine, ws, good)
    with pytest.raises(ChorusError):
        publish(engine, ws, old)
    with engine.begin() as conn:  # as the code before those rules stored it: good's rows, another definition
        jrow = dict(conn.execute(sa.select(jstore.journeys).where(jstore.journeys.c.workspace_id == ws)).one()._mapping)
        conn.execute(jstore.journeys.insert().values(**{**jrow, "id": "old"}))
        v = journey_versions
        vrow = dict(conn.execute(sa.select(v).where(v.c.workspace_id == ws)).one()._mapping)
        conn.execute(journey_versions.insert().values(**{**vrow, "journey_id": "old", "definition": old}))
    clock.at = T0 + timedelta(minutes=1)
    send(engine, ws, [ev("X", T0)], T0)
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journey_instances.c.journey_id, journey_instances.c.state).where(
            journey_instances.c.workspace_id == ws)).all()  # fmt: skip
    assert sorted(j for j, _ in rows) == ["good", "old"]
    assert [s["arms"]["arm"] for j, s in rows if j == "old"][0] in ("h1", "h2")


def test_the_journeys_consumer_is_given_only_what_can_be_an_input():
    from chorus.profiles import feed as f

    assert runtime.wants(f.Change("p", "event", 1, detail={"event": "Product Added"}))
    assert runtime.wants(f.Change("p", "segment", detail={"segment": "s", "change": "entered"}))
    assert runtime.wants(f.Change("p", "merge", target_id="q"))
    assert runtime.wants(f.Change("p", "message", detail={"status": "clicked", "journey_id": "cart"}))
    assert not runtime.wants(f.Change("p", "message", detail={"status": "queued"}))  # not a journey's message
    # a journey's message queued: no wait can be for that status, and the change would cost a transition
    assert not runtime.wants(f.Change("p", "message", detail={"status": "queued", "journey_id": "cart"}))
    assert not any(runtime.wants(f.Change("p", cause)) for cause in ("consent", "computed", "list", "replay"))


def _statements(engine, fn) -> int:
    """How many SQL statements ``fn`` sends (the cost of a claim, whatever the machine's speed)."""
    n = {"count": 0}

    def count(*_args, **_kw):
        n["count"] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    return n["count"]


def test_a_claim_costs_the_same_statements_for_three_people_or_thirty(engine, ws, clock, worker):
    """The consumer takes the feed's whole claim at once (``Consumer.many``, one ``Claim``): reads and writes are one
    statement per table whoever many people move, and each gets her message."""
    publish(engine, ws, NOW)
    costs = []
    for n, tag in ((2, "w"), (3, "a"), (30, "b")):  # the first claim also makes the journeys' internal source
        send(engine, ws, [ev("Product Added", T0, user=f"{tag}{i}", cart_id=f"{tag}{i}") for i in range(n)], T0)
        Resolver(engine).drain()
        costs.append(_statements(engine, lambda: feed.consume(engine, runtime.CONSUMER, runtime.Consumer())))
    assert len(journey_messages(engine, ws)) == 35
    # one person at a time, the 27 more people would cost hundreds more (about twenty statements each)
    assert abs(costs[2] - costs[1]) <= 4, costs


@pytest.mark.parametrize("where", ["give", "flush"])
def test_a_failing_person_in_a_claim_is_retried_alone_and_the_others_move_on(engine, ws, clock, worker, monkeypatch,
                                                                             where):  # fmt: skip
    """One person's transition raises, while her input is given or when the claim writes: the claim is rolled back
    and each person goes alone (the feed's fallback); the others get their message in that same pass, hers waits
    with an attempt counted."""

    publish(engine, ws, NOW)
    send(engine, ws, [ev("Product Added", T0, user=u, cart_id=u) for u in ("bad", "g1", "g2", "g3")], T0)
    Resolver(engine).drain()
    bad = profile_of(engine, ws, "user_id:bad")
    real_records = store.add_records

    def add_records(conn, ws_id, rows):
        if any(r["profile_id"] == bad for r in rows):
            raise ValueError("a row of this one person cannot be written")
        real_records(conn, ws_id, rows)

    fixed = lambda: None  # noqa: E731
    if where == "give":
        fixed = failing_sends(monkeypatch, lambda run, s: run.person.id == bad)
    else:
        monkeypatch.setattr(store, "add_records", add_records)
    feed.consume(engine, runtime.CONSUMER, runtime.Consumer())
    sent = journey_messages(engine, ws)
    assert len(sent) == 3 and bad not in {m.profile_id for m in sent}
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(feed_pending.c.profile_id, feed_pending.c.attempts).where(
            feed_pending.c.consumer == runtime.CONSUMER)).all()  # fmt: skip
    assert row.profile_id == bad and row.attempts == 1
    fixed()
    monkeypatch.setattr(store, "add_records", real_records)
    feed.consume(engine, runtime.CONSUMER, runtime.Consumer())
    assert len(journey_messages(engine, ws)) == 4


def test_due_timers_fire_together_and_a_failing_person_is_postponed_alone(engine, ws, clock, worker, monkeypatch):
    """The timer task fires everybody's due timers in one claim; when one person's transition raises, each goes
    alone: the others' reminders are queued, hers are tried again a minute later."""

    publish(engine, ws, CART)
    users = ("bad", "g1", "g2")
    send(engine, ws, [ev("Product Added", T0, user=u, cart_id=u) for u in users], T0)
    settle(worker)
    waits = {t.key for t in timers(engine, ws) if t.due_at.replace(tzinfo=T0.tzinfo) == T0 + timedelta(hours=1)}
    assert len(waits) == 3
    bad = profile_of(engine, ws, "user_id:bad")
    fixed = failing_sends(monkeypatch, lambda run, s: run.person.id == bad)
    clock.at = T0 + timedelta(hours=1, seconds=1)
    assert runtime.due(engine) == 2
    sent = journey_messages(engine, ws)
    assert len(sent) == 2 and bad not in {m.profile_id for m in sent}
    (left,) = [t for t in timers(engine, ws) if t.key in waits]
    assert left.profile_id == bad and left.due_at.replace(tzinfo=T0.tzinfo) == clock.at + timedelta(minutes=1)
    fixed()
    clock.at += timedelta(minutes=2)
    assert runtime.due(engine) == 1
    assert len(journey_messages(engine, ws)) == 3 and not [t for t in timers(engine, ws) if t.key in waits]
    with engine.connect() as conn:  # her timeout is the input of 10:00 it was, not of the retry that ran it
        (step,) = conn.execute(sa.select(journey_records.c.at).where(
            journey_records.c.profile_id == bad, journey_records.c.kind == "step",
            journey_records.c.node == "remind")).all()  # fmt: skip
    assert step.at.replace(tzinfo=T0.tzinfo) == T0 + timedelta(hours=1)


def test_a_claim_is_split_so_that_it_never_reads_too_many_events_at_once(engine, ws, clock, worker, monkeypatch):
    """The people of a feed claim are read in consecutive claims whose events *to read* stay under EVENTS_PER_CLAIM
    (a person alone may be more): a worker's memory is bounded by that, not by how long customers have been around.
    Only what the journeys' rules can read counts (decision 0043): here a windowless rule on Page Viewed reads them
    all, but not the Product Added nobody's rule reads. Everybody still gets her message."""
    publish(engine, ws, {**NOW, "exit": [{"rule": {"performed": {"event": "Page Viewed", "times": {"gte": 5}}}}]})
    users = [f"p{i}" for i in range(6)]
    send(engine, ws, [ev("Page Viewed", T0 - timedelta(hours=1), user=u) for u in users for _ in range(3)], T0)
    send(engine, ws, [ev("Product Added", T0, user=u, cart_id=u) for u in users], T0)
    Resolver(engine).drain()
    monkeypatch.setattr(runtime, "EVENTS_PER_CLAIM", 7)  # two people's three page views, not three people's
    pids = sorted(profile_of(engine, ws, f"user_id:{u}") for u in users)
    with engine.begin() as conn:
        groups = [c.pids for c in runtime.claims(conn, runtime.journeys_of(conn, ws), pids, T0)]
    assert groups == [pids[0:2], pids[2:4], pids[4:6]]
    feed.consume(engine, runtime.CONSUMER, runtime.Consumer())
    assert sorted(m.profile_id for m in journey_messages(engine, ws)) == pids


def test_a_claim_whose_journeys_read_no_events_is_not_split(engine, ws, clock, monkeypatch):
    """With nothing to read of their events (NOW's goal criterion reads only Order Completed, of which they have
    none; its rules none), the people are one claim whatever their histories: no counting query either."""
    publish(engine, ws, {k: v for k, v in NOW.items() if k != "goal"})
    users = [f"p{i}" for i in range(4)]
    send(engine, ws, [ev("Page Viewed", T0 - timedelta(hours=1), user=u) for u in users for _ in range(3)], T0)
    Resolver(engine).drain()
    monkeypatch.setattr(runtime, "EVENTS_PER_CLAIM", 1)
    pids = sorted(profile_of(engine, ws, f"user_id:{u}") for u in users)
    seen: list[str] = []
    with engine.begin() as conn:
        sa.event.listen(conn, "before_cursor_execute", lambda *a: seen.append(a[2]))
        (claim,) = runtime.claims(conn, runtime.journeys_of(conn, ws), pids, T0)
        assert claim.pids == pids and all(run.person.events == () for run in claim.runs.values())
    assert not [q for q in seen if "FROM events" in q], "neither counted nor read"


OPENED = {
    "id": "nudge", "name": "Nudge until opened", "entry": {"event": {"event": "Product Added"}}, "start": "remind",
    "nodes": {
        "remind": {"type": "message", "template": "cart_reminder", "channel": ["in_app"], "kind": "marketing",
                   "next": "wait"},
        "wait": {"type": "wait", "timeout": {"after": "1d", "next": "again"}, "branches": [
            {"name": "read", "message": {"status": "opened", "node": "remind"}, "next": "done"}]},
        "again": {"type": "message", "template": "cart_reminder_2", "channel": ["in_app"], "kind": "marketing",
                  "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip


def _claimed(monkeypatch) -> list[list[str]]:
    """The people each claim of the journeys' runtime loads (the expensive part of an input), as they come."""
    seen, real = [], runtime.claims

    def spy(conn, js, pids, at, since=None):
        seen.append(list(pids))
        return real(conn, js, pids, at, since)

    monkeypatch.setattr(runtime, "claims", spy)
    return seen


def _open(engine, ws, jid, at):
    from chorus.messaging import outbox

    with engine.begin() as conn:
        for row in conn.execute(sa.select(messages).where(messages.c.workspace_id == ws,
                                                          messages.c.journey_id == jid)).all():  # fmt: skip
            outbox.set_status(conn, dict(row._mapping), "opened", at=at, detail={"via": "inbox"})


def test_a_message_status_nothing_listens_to_loads_nobody(engine, ws, clock, worker, monkeypatch):
    """Every delivered message comes back through the feed as its statuses (sent, delivered, opened...). With no
    wait on a status and no goal or exit rule in any published version, they are handled without loading the
    person: before, each cost her a second, empty transition."""
    publish(engine, ws, NOW)
    claimed = _claimed(monkeypatch)
    send(engine, ws, [ev("Product Added", T0, cart_id="c1")], T0)
    settle(worker)
    assert len(journey_messages(engine, ws)) == 1 and claimed == [[profile_of(engine, ws, "user_id:u1")]]
    _open(engine, ws, "cart", T0 + timedelta(minutes=5))
    settle(worker)
    assert len(claimed) == 1  # the opened status (and the sent one before it): nobody loaded
    with engine.connect() as conn:  # handled all the same: nothing left in the feed for the journeys
        assert conn.execute(sa.select(sa.func.count()).select_from(feed_pending).where(
            feed_pending.c.consumer == runtime.CONSUMER)).scalar() == 0  # fmt: skip


def test_a_wait_on_a_status_hears_it_through_the_feed(engine, ws, clock, worker, monkeypatch):
    """End to end on the store: the message step, its status from the outbox through the change feed, the wait's
    branch; the statuses the wait does not name (sent) load nobody, the one it names moves her on."""
    publish(engine, ws, OPENED)
    claimed = _claimed(monkeypatch)
    send(engine, ws, [ev("Product Added", T0, cart_id="c1")], T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert len(journey_messages(engine, ws, "nudge")) == 1 and len(claimed) == 1
    _open(engine, ws, "nudge", T0 + timedelta(minutes=5))
    settle(worker)
    assert claimed == [[pid], [pid]]  # the opened status only
    (inst,) = instances(engine, ws, "nudge")
    assert inst.status == "exited" and inst.node == "done"
    clock.at = T0 + timedelta(days=2)
    settle(worker)
    assert len(journey_messages(engine, ws, "nudge")) == 1  # read: no second reminder


def test_a_goal_rule_hears_every_status(engine, ws, clock, worker, monkeypatch):
    """A goal or exit criterion that is a rule is evaluated at every input, and a rule may read message statuses:
    with one in any published version, no status is left out."""
    publish(engine, ws, {**NOW, "goal": {"rule": {"message": {"status": "opened"}}}})
    claimed = _claimed(monkeypatch)
    send(engine, ws, [ev("Product Added", T0, cart_id="c1")], T0)
    settle(worker)
    _open(engine, ws, "cart", T0 + timedelta(minutes=5))
    settle(worker)
    assert len(claimed) >= 2


HOT = {"id": "hot", "name": "hot", "entry": {"segment": "hot"}, "exit": [{"segment": {"exited": "hot"}}],
       "start": "pause", "nodes": {"pause": {"type": "delay", "for": "30d", "next": "done"},
                                   "done": {"type": "exit"}}}  # fmt: skip


@pytest.mark.parametrize("lag", [timedelta(days=3), timedelta(seconds=1)])
def test_a_journey_on_a_segment_of_segments_sees_its_exit_after_a_late_timer(engine, ws, clock, worker, lag):
    """The journey enters on "hot" (which refers to "recent") and exits when she leaves it. "recent"'s timer is
    decided after her cart add entered her in "hot" (a worker days behind, or one second in a normal pass): the
    exit of "hot" it causes is dated no earlier than her entry, so the journey is given it and she exits (found by
    review: dated back at the timer's instant, it came before the entry and was ignored)."""
    from chorus.segments import rules as seg_rules
    from chorus.segments import store as seg_store

    with engine.begin() as conn:
        seg_store.save(conn, ws, "recent", "recent", seg_rules.parse(
            {"performed": {"event": "Product Viewed", "window": "1d"}}), T0)  # fmt: skip
        seg_store.save(conn, ws, "hot", "hot", seg_rules.parse(
            {"and": [{"segment": "recent"}, {"performed": {"event": "Product Added", "window": "30d"}}]}), T0)
    publish(engine, ws, HOT)
    settle(worker)
    send(engine, ws, [ev("Product Viewed", T0)], T0)
    settle(worker)
    added = T0 + timedelta(days=1) + lag / 2  # after recent's timer fell due, before any worker ran it
    send(engine, ws, [ev("Product Added", added)], added)
    clock.at = T0 + timedelta(days=1) + lag
    for task in ("resolve", "feed"):  # her add first, as in a pass (the feed runs before the timer task)
        worker.task(task).run_once()
    worker.task("feed").run_once()  # the journey's entry on "hot"
    settle(worker, 6)
    (inst,) = instances(engine, ws, "hot")
    assert inst.status == "exited"


NURTURE = {"id": "nurture", "name": "n", "entry": {"event": {"event": "Signed Up"}}, "start": "w",
           "nodes": {"w": {"type": "wait", "timeout": {"after": "7d", "next": "done"},
                           "branches": [{"name": "clicked", "event": {"event": "Clicked"}, "next": "done"}]},
                     "done": {"type": "exit"}}}  # fmt: skip


def test_an_input_only_a_version_published_during_a_pause_hears_is_held_and_given_at_resume(engine, ws, clock,
                                                                                            worker):
    """While a journey is paused its people's inputs are held and given at resume to the version then current; a
    version published during the pause may hear what none heard when the input came (found by review: such an
    input was dropped as unheard, and the new exit criterion never saw it)."""
    publish(engine, ws, NURTURE)
    send(engine, ws, [ev("Signed Up", T0)], T0)
    settle(worker)
    with engine.begin() as conn:
        manage.control(conn, ws, "nurture", "pause", T0)
    clock.at = T0 + timedelta(hours=1)
    send(engine, ws, [ev("Unsubscribed", clock.at)], clock.at)  # no version hears it yet
    settle(worker)
    clock.at = T0 + timedelta(hours=2)
    publish(engine, ws, {**NURTURE, "exit": [{"event": {"event": "Unsubscribed"}}]}, at=clock.at, migrate={"w": "w"})
    with engine.begin() as conn:
        manage.control(conn, ws, "nurture", "resume", clock.at)
    settle(worker)
    (inst,) = instances(engine, ws, "nurture")
    assert (inst.version, inst.status) == (2, "exited")


# -- messages that stopped being relevant -----------------------------------------------------------------------------
QUIET = {"messaging": {"timezone": "UTC", "quiet_hours": {"start": "08:00", "end": "20:00", "channels": ["in_app"]}}}
REMIND = {**NOW, "goal": {"event": {"event": "Order Completed"}, "within": "7d"}, "exit_on_goal": True,
          "exit": [{"event": {"event": "Unsubscribed"}}]}  # fmt: skip


def message_rows(engine, ws, jid="cart"):
    """(user, status, reason) of the journey's messages, by user id."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.profile_id, messages.c.status, messages.c.reason).where(
            messages.c.workspace_id == ws, messages.c.journey_id == jid)).all()  # fmt: skip
    with engine.connect() as conn:
        users = {pid: ident.removeprefix("user_id:") for pid, ident in conn.execute(
            sa.select(identifiers.c.profile_id, identifiers.c.ident).where(
                identifiers.c.workspace_id == ws, identifiers.c.ident.startswith("user_id:")))}  # fmt: skip
    return {users[r.profile_id]: (r.status, r.reason) for r in rows}


def quiet_workspace(engine, ws, worker, clock):
    from chorus import registry as reg
    from chorus import workspaces

    workspaces.update_settings(engine, ws, QUIET, registry=reg.installed())
    worker.task("deliver").clock = clock  # delivery on the test's clock too: it checks quiet hours again


def test_a_deferred_message_is_withdrawn_when_she_converts_or_exits_and_sent_otherwise(engine, ws, clock, worker):
    """The reminder waits out quiet hours (08:00–20:00 here) in the outbox. The person who buys meanwhile (in a store:
    another channel) and the one who meets the exit criterion never get it; the one who does neither gets it at 20:00,
    although her instance ended at once (its last step was that message)."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, REMIND)
    send(engine, ws, [ev("Product Added", T0, user=u, cart_id=u) for u in ("u1", "u2", "u3")], T0)
    settle(worker)
    assert {u: s for u, (s, _) in message_rows(engine, ws).items()} == {"u1": "queued", "u2": "queued", "u3": "queued"}
    # at the end of their path already (its last step was the message), tracked for the goal window
    assert [i.status for i in instances(engine, ws)] == ["tracking"] * 3

    clock.at = T0 + timedelta(minutes=30)
    send(engine, ws, [ev("Order Completed", clock.at, channel="store"),
                      ev("Unsubscribed", clock.at, user="u2")], clock.at)  # fmt: skip
    settle(worker)
    got = message_rows(engine, ws)
    # converting withdraws what she was sent (the message is about the cart she has now bought), as does an exit
    assert got["u1"] == ("skipped", "withdrawn: journey cart: the person left it (goal reached) before it went out")
    assert got["u2"] == ("skipped", "withdrawn: journey cart: the person left it (exit[0] met) before it went out")
    assert got["u3"][0] == "queued"

    clock.at = T0 + timedelta(hours=11, minutes=1)  # 20:01: quiet hours over
    settle(worker)
    got = message_rows(engine, ws)
    assert [got[u][0] for u in ("u1", "u2", "u3")] == ["skipped", "skipped", "sent"]
    with engine.connect() as conn:
        sent = conn.execute(sa.select(sa.func.count()).select_from(messages).join(
            message_status, message_status.c.message_id == messages.c.id).where(
            messages.c.workspace_id == ws, message_status.c.status == "sent")).scalar()  # fmt: skip
    assert sent == sum(1 for s, _ in got.values() if s == "sent")


def test_a_message_sent_and_withdrawn_in_one_claim_never_goes_out(engine, ws, clock, worker):
    """Her cart and her purchase reach the journey together (a batch, a backlog): the reminder is queued and withdrawn
    in one transaction."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, REMIND)
    clock.at = T0 + timedelta(seconds=1)  # both have happened (one stamped ahead of the clock would wait its time)
    send(engine, ws, [ev("Product Added", T0, cart_id="A"), ev("Order Completed", T0 + timedelta(seconds=1))], T0)
    settle(worker)
    assert message_rows(engine, ws)["u1"][0] == "skipped"
    (inst,) = instances(engine, ws)
    assert inst.status == "exited" and inst.state["exit_reason"] == "goal reached"


def test_stopping_a_journey_withdraws_what_it_has_not_sent_yet(engine, ws, clock, worker):
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, REMIND)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    assert message_rows(engine, ws)["u1"][0] == "queued"
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "stop", T0)
    settle(worker)
    # withdrawn by the stop itself, in its transaction (the instance's exit, later, finds nothing left to withdraw)
    assert message_rows(engine, ws)["u1"] == ("skipped", "withdrawn: journey cart was stopped before it went out")
    (inst,) = instances(engine, ws)
    assert (inst.status, inst.state["exit_reason"]) == ("exited", "journey stopped")
    clock.at = T0 + timedelta(hours=12)
    settle(worker)
    assert message_rows(engine, ws)["u1"][0] == "skipped"


# -- found by review: a message being sent when she left, then given back to the queue by its worker ------------------
def _status(engine, ws):
    with engine.connect() as conn:
        return tuple(conn.execute(sa.select(messages.c.status, messages.c.reason).where(
            messages.c.workspace_id == ws, messages.c.journey_id == "cart")).one())  # fmt: skip


def _all_but_delivery(worker, n=4):
    for _ in range(n):
        for name, _label, task in worker.tasks:
            if name != "deliver":
                task.run_once()


def _buy(engine, ws, worker, at):
    send(engine, ws, [ev("Order Completed", at, channel="store")], at)
    _all_but_delivery(worker)


WITHDRAWN_GOAL = "withdrawn: journey cart: the person left it (goal reached) before it went out"


def test_a_message_being_sent_when_she_leaves_is_skipped_when_a_transient_failure_puts_it_back(engine, ws, clock,
                                                                                                worker):  # fmt: skip
    """The provider times out while she buys in the store: the withdrawal leaves the message to its worker (it may
    be going out), which then schedules a retry; the retry is the skip, never a send after she bought."""
    import threading

    from chorus.messaging.providers import TransientError

    dl = worker.task("deliver")
    dl.clock = lambda: clock.at - timedelta(minutes=1)  # nothing due for delivery yet
    publish(engine, ws, REMIND)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    _all_but_delivery(worker)
    assert _status(engine, ws)[0] == "queued"

    class Slow:
        name = "flaky"

        def send(self, out):
            _buy(engine, ws, worker, clock.at)  # while the provider is being called
            raise TransientError("timed out")

    class NoLimit:
        def wait(self):
            pass

    real_get = dl.providers.get
    dl.providers.get = lambda w, ch: [(Slow(), NoLimit(), threading.Lock())]
    dl.clock = clock
    dl.run_once()
    dl.providers.get = real_get
    (inst,) = instances(engine, ws)
    assert inst.state["exit_reason"] == "goal reached"
    assert _status(engine, ws) == ("skipped", WITHDRAWN_GOAL)
    clock.at = T0 + timedelta(minutes=5)
    dl.run_once()
    assert _status(engine, ws)[0] == "skipped"


def test_a_message_being_sent_when_she_leaves_is_skipped_when_quiet_hours_put_it_back(engine, ws, clock, worker):
    quiet_workspace(engine, ws, worker, clock)
    dl = worker.task("deliver")
    t = T0 - timedelta(minutes=61)  # 07:59, before quiet hours: queued, due at once
    clock.at = t
    dl.clock = lambda: t - timedelta(minutes=1)
    publish(engine, ws, REMIND, at=t)
    send(engine, ws, [ev("Product Added", t, cart_id="A")], t)
    _all_but_delivery(worker)
    assert _status(engine, ws)[0] == "queued"
    clock.at = T0 - timedelta(minutes=59, seconds=30)  # 08:00:30: the worker claims it, quiet hours have begun
    dl.clock = clock
    real = dl._paced

    def paced(w, msg, profile):  # she buys between the worker's claim and its pacing check
        _buy(engine, ws, worker, clock.at)
        return real(w, msg, profile)

    dl._paced = paced
    dl.run_once()
    dl._paced = real
    assert _status(engine, ws) == ("skipped", WITHDRAWN_GOAL)
    clock.at = T0 + timedelta(hours=11, minutes=1)  # 20:01
    dl.run_once()
    assert _status(engine, ws)[0] == "skipped"


def test_with_exit_on_goal_false_a_conversion_withdraws_nothing(engine, ws, clock, worker):
    """The author keeps converted people's messages: the one queued before she converted goes out, as the one queued
    after (found by review: a conversion in the goal window after her path withdrew it)."""
    quiet_workspace(engine, ws, worker, clock)
    assert NOW["exit_on_goal"] is False
    publish(engine, ws, NOW)
    later = {**CART, "id": "later", "start": "pause",
             "nodes": {"pause": {"type": "delay", "for": "10m", "next": "remind"}, **NOW["nodes"]}}  # fmt: skip
    publish(engine, ws, later)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [ev("Order Completed", clock.at, channel="store")], clock.at)
    settle(worker)
    clock.at = T0 + timedelta(minutes=11)
    settle(worker)
    assert message_rows(engine, ws, "later")["u1"][0] == "queued"
    assert message_rows(engine, ws, "cart")["u1"][0] == "queued"
    (inst,) = instances(engine, ws)
    assert inst.state["exit_reason"] == "goal reached"


def test_a_conversion_that_also_meets_an_exit_criterion_withdraws_even_with_exit_on_goal_false(engine, ws, clock,
                                                                                              worker):  # fmt: skip
    """The demo's post-purchase journey: `exit_on_goal: false` (a conversion alone keeps her messages) and an exit
    on her next order. At the end of her path (tracking the goal window) her cross-sell waits out quiet hours; her
    next order is the goal and the exit at once: the exit says the message stopped being relevant, so it is
    withdrawn (found in the demo: the goal's exit was taken first and withdrew nothing)."""
    quiet_workspace(engine, ws, worker, clock)
    both = {**NOW, "exit": [{"event": {"event": "Order Completed"}}]}
    publish(engine, ws, both)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    (inst,) = instances(engine, ws)
    assert inst.state["status"] == "tracking" and message_rows(engine, ws, "cart")["u1"][0] == "queued"
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [ev("Order Completed", clock.at, channel="store")], clock.at)
    settle(worker)
    assert message_rows(engine, ws, "cart")["u1"][0] == "skipped"
    (inst,) = instances(engine, ws)
    assert (inst.state["exit_reason"], inst.state["converted_at"] is not None) == ("goal reached", True)


def test_a_stop_withdraws_in_batches_the_stop_first_then_the_sweep(engine, ws, clock, worker, monkeypatch):
    """Everybody has left (no goal: the message was the end of their path) and their messages wait out quiet hours:
    the stop withdraws the first batch in its own transaction, the sweep the rest, and the journey is swept only
    then."""
    monkeypatch.setattr(runtime, "WITHDRAW_BATCH", 2)
    quiet_workspace(engine, ws, worker, clock)
    plain = {k: v for k, v in NOW.items() if k not in ("goal", "exit_on_goal")}
    publish(engine, ws, plain)
    send(engine, ws, [ev("Product Added", T0, user=u, cart_id=u) for u in ("u1", "u2", "u3")], T0)
    settle(worker)
    assert [i.status for i in instances(engine, ws)] == ["exited"] * 3
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "stop", T0)
    assert sorted(s for s, _ in message_rows(engine, ws).values()) == ["queued", "skipped", "skipped"]
    with engine.connect() as conn:
        assert store.get(conn, ws, "cart").sweep
    runtime.sweep(engine, clock=clock)
    assert {s for s, _ in message_rows(engine, ws).values()} == {"skipped"}
    with engine.connect() as conn:
        assert not store.get(conn, ws, "cart").sweep
    clock.at = T0 + timedelta(hours=12)
    settle(worker)
    assert {s for s, _ in message_rows(engine, ws).values()} == {"skipped"}


def test_give_back_racing_an_uncommitted_withdrawal_is_still_skipped(engine, ws, clock, worker):
    """A withdrawal marks a message being sent and has not committed when its worker gives it back (a retry): the
    give-back waits for it and skips the message (found by review: it read no mark and sent it later)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers")
    dl = worker.task("deliver")
    dl.clock = lambda: clock.at - timedelta(minutes=1)
    publish(engine, ws, REMIND)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    _all_but_delivery(worker)
    dl.clock = clock
    (msg,) = dl._claim(10)  # the worker has it: status sending
    assert _status(engine, ws)[0] == "sending"

    a = engine.connect()
    ta = a.begin()
    assert outbox.withdraw_journey(a, ws, "cart", "stopped", clock.at) == [msg["id"]]  # marked, not committed

    def give_back():  # the worker: a transient failure, a retry later
        with engine.begin() as b:
            outbox.set_statuses(b, [dl._retry(msg, "timed out", clock.at)])

    t = threading.Thread(target=give_back)
    t.start()
    time.sleep(1.0)  # the give-back has read withdraw_reason (NULL in its snapshot) and waits on the UPDATE
    ta.commit()
    a.close()
    t.join(10)
    with engine.connect() as conn:
        st, reason = conn.execute(sa.select(messages.c.status, messages.c.withdraw_reason).where(
            messages.c.id == msg["id"])).one()
    assert st == "skipped", (st, reason)  # it is 'retrying' with withdraw_reason set: claimed and sent later


def test_a_transactional_message_is_owed_whatever_she_does_next(engine, ws, clock, worker):
    """Her receipt waits (a provider outage, here no delivery yet) when she meets the exit criterion: it is not
    withdrawn; only marketing is."""
    receipt = {**REMIND, "nodes": {**REMIND["nodes"], "remind": {**REMIND["nodes"]["remind"], "kind": "transactional"}}}
    publish(engine, ws, receipt)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    _all_but_delivery(worker)
    clock.at = T0 + timedelta(minutes=1)
    send(engine, ws, [ev("Unsubscribed", clock.at)], clock.at)
    _all_but_delivery(worker)
    (inst,) = instances(engine, ws)
    assert inst.state["exit_reason"] == "exit[0] met"
    assert _status(engine, ws)[0] == "queued"


def test_a_timer_postponed_without_an_error_keeps_the_instant_it_was_first_due(engine, ws):
    """Review: a timer of someone who is not a profile right now (a merge not applied yet) waits a minute without an
    attempt; it lost its first due instant, so it later fired dated a minute late. Both postponements keep it."""
    due = T0 + timedelta(hours=1)
    with engine.begin() as conn:
        store.set_timers(conn, ws, [{"key": k, "journey_id": "cart", "instance_id": "i", "profile_id": "p",
                                     "due_at": due} for k in ("a", "b")])  # fmt: skip
        store.postpone_timers(conn, ws, ["a"], due)
        store.postpone_timers(conn, ws, ["b"], due, error="boom")
        store.postpone_timers(conn, ws, ["a", "b"], due + timedelta(minutes=5))
    assert {t.key: t.first_due for t in timers(engine, ws)} == {"a": due, "b": due}


STAGE = {"id": "stage", "entry": {"event": {"event": "Go", "key": "k"}}, "reentry": "per_key", "start": "c0",
         "nodes": {"c0": {"type": "condition", "if": {"trait": {"name": "stage", "equals": "one"}},
                          "then": "done", "else": "set"},
                   "set": {"type": "update_trait", "trait": "stage", "value": "one", "next": "done"},
                   "done": {"type": "exit"}}}  # fmt: skip


def test_a_trait_step_is_seen_by_her_next_input_in_the_same_pass(engine, ws, clock, worker):
    """An outside probe: two entries of one person in one batch (keys a and b, 2 s apart); the first sets the
    trait, the second, handled in the same claim from the person read before, took `else` too. The step's identify
    is folded into her person at once (as the simulator does): the second takes `then`."""
    publish(engine, ws, STAGE)
    clock.at = T0 + timedelta(seconds=2)
    send(engine, ws, [ev("Go", T0, k="a"), ev("Go", clock.at, k="b")], clock.at)
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journey_records.c.node, journey_records.c.branch)
                            .where(journey_records.c.workspace_id == ws, journey_records.c.node == "c0")).all()
    assert sorted(r.branch for r in rows if r.branch) == ["else", "then"], rows


def test_a_resume_waits_for_her_changes_still_in_the_feed(engine, ws, clock, worker):
    """Review: a resume fired the timers due before each held input without looking at the feed, as the timer task
    does. B's purchase at 10:05, before her timeout (10:10), reached Chorus late and was resolved but not yet handed
    to the journeys when the sweep ran: the timeout fired first and B was reminded. She is resumed after it."""
    from chorus.identity.resolver import Resolver as _Resolver

    publish(engine, ws, CART)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "pause", T0)
    clock.at = T0 + timedelta(minutes=10)
    send(engine, ws, [ev("Product Added", clock.at, cart_id="B")], clock.at)  # held: her wait would end 10:10
    settle(worker)
    clock.at = T0 + timedelta(minutes=90)
    send(engine, ws, [ev("Product Added", clock.at, cart_id="C")], clock.at)  # held too
    settle(worker)
    clock.at = T0 + timedelta(hours=2)
    with engine.begin() as conn:
        manage.control(conn, ws, "cart", "resume", clock.at)
    send(engine, ws, [ev("Order Completed", T0 + timedelta(minutes=65), cart_id="B")], clock.at)
    _Resolver(engine).drain()
    runtime.sweep(engine, clock=lambda: clock.at)  # before the consumer: she waits for it
    settle(worker)
    by_key = {i.state["key"]: i for i in instances(engine, ws)}
    assert by_key["B"].state.get("branch") == "bought", by_key["B"].state


def test_a_topic_is_read_as_consent_names_it_at_publish_and_at_send(engine, ws, clock, worker):
    """Review: the send refused a topic publishing had accepted ("Offers"), an error for every person. A topic is
    read in lower case, trimmed, at both; one the send cannot take is refused at publish, naming the node."""
    nodes = {**NOW["nodes"], "remind": {**NOW["nodes"]["remind"], "topic": "Offers"}}
    publish(engine, ws, {**NOW, "nodes": nodes})
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    with engine.connect() as conn:
        errors = conn.execute(sa.select(journey_records.c.detail).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "error")).scalars().all()  # fmt: skip
        topics = conn.execute(sa.select(messages.c.topic).where(messages.c.workspace_id == ws)).scalars().all()
    assert errors == [] and topics == ["offers"], (errors, topics)
    bad = {**NOW, "id": "cart2", "nodes": {**NOW["nodes"], "remind": {**NOW["nodes"]["remind"], "topic": "of fers"}}}
    with pytest.raises(Exception, match=r"nodes\.remind\.topic"):
        publish(engine, ws, bad)


POINTS = {"id": "points", "entry": {"event": {"event": "Go", "key": "k"}}, "reentry": "per_key", "start": "c0",
          "nodes": {"c0": {"type": "condition", "if": {"trait": {"name": "points", "equals": 5}},
                           "then": "done", "else": "set"},
                    "set": {"type": "update_trait", "trait": "points", "value": 5, "next": "done"},
                    "done": {"type": "exit"}}}  # fmt: skip


def test_a_sum_trait_set_by_a_step_reads_as_resolution_will_store_it(engine, ws, clock, worker):
    """Review: the step's identify was folded into her person anchored on the profile id, where resolution anchors
    it on her user id; under a "sum" policy (a part per anchor) she read 10 + 5 for her next input in the pass,
    where the store will hold 5."""
    workspaces.update_settings(engine, ws, {"trait_policies": {"points": "sum"}})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "id1", "timestamp": T0.isoformat(),
                       "traits": {"points": 10}}], T0)  # fmt: skip
    settle(worker)
    publish(engine, ws, POINTS)
    clock.at = T0 + timedelta(seconds=2)
    send(engine, ws, [ev("Go", T0 + timedelta(seconds=1), k="a"), ev("Go", clock.at, k="b")], clock.at)
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(journey_records.c.branch).where(
            journey_records.c.workspace_id == ws, journey_records.c.node == "c0")).scalars().all()  # fmt: skip
    assert sorted(b for b in rows if b) == ["else", "then"], rows


NUDGE = {"id": "nudge", "entry": {"event": {"event": "Browse"}}, "reentry": "never", "start": "mail",
         "nodes": {"mail": {"type": "message", "template": "cart_reminder", "channel": ["in_app"],
                            "kind": "marketing", "next": "done"},
                   "done": {"type": "exit"}}}  # fmt: skip


def test_a_merge_withdraws_the_second_of_two_messages_still_waiting_after_both_exited(engine, ws, clock, worker):
    """An outside probe: a visitor and a known customer both went through a message then an exit, both messages
    waiting out quiet hours; one identify joined them, and she got both (the merge rule saw no live instance to
    exit). The later entered one's message is withdrawn; the first entered's still goes out, once."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, NUDGE)
    anon = {"type": "track", "anonymousId": "a1", "event": "Browse", "messageId": "m1", "timestamp": T0.isoformat(),
            "properties": {"cart_id": "A"}, "context": {"channel": "web"}}  # fmt: skip
    later = clock.at = T0 + timedelta(seconds=10)
    send(engine, ws, [anon, ev("Browse", later, user="u9", cart_id="B")], later)
    settle(worker)
    assert [i.status for i in instances(engine, ws, "nudge")] == ["exited", "exited"]
    with engine.connect() as conn:
        waiting = conn.execute(sa.select(messages.c.status).where(messages.c.workspace_id == ws,
                                                                  messages.c.journey_id == "nudge")).scalars().all()
    assert waiting == ["queued", "queued"]  # both waiting for 20:00
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "a1", "messageId": "m2",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    clock.at = T0 + timedelta(hours=11, minutes=1)  # 20:01: quiet hours over
    settle(worker)
    survivor = profile_of(engine, ws, "user_id:u9")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.profile_id, messages.c.status, messages.c.reason,
                                      messages.c.idempotency_key).where(
            messages.c.workspace_id == ws, messages.c.journey_id == "nudge")).all()  # fmt: skip
    first = min(instances(engine, ws, "nudge"), key=lambda i: i.state["entered_at"])
    assert sorted(r.status for r in rows) == ["sent", "skipped"], rows
    (kept,) = [r for r in rows if r.status == "sent"]
    (gone,) = [r for r in rows if r.status == "skipped"]
    assert kept.idempotency_key.startswith(first.id)  # the visitor's, entered 10 s earlier (under her old id)
    assert "merged" in gone.reason and survivor in {kept.profile_id, gone.profile_id}


def test_an_unrelated_merge_withdraws_nothing_of_her_own_re_entries(engine, ws, clock, worker):
    """Review: with reentry after_exit she went through the journey twice on her own profile, both messages waiting
    out quiet hours; a device of hers merged in later must not take the second for a duplicate."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, {**NUDGE, "reentry": "after_exit"})
    send(engine, ws, [ev("Browse", T0, user="u9", cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=1)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="B")], clock.at)
    settle(worker)
    assert [i.status for i in instances(engine, ws, "nudge")] == ["exited", "exited"]
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Page Viewed", "messageId": "p1",
                       "timestamp": clock.at.isoformat(), "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    device = profile_of(engine, ws, "anonymous_id:d1")
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert profile_of(engine, ws, "anonymous_id:d1") != device  # merged into hers
    with engine.connect() as conn:
        statuses = conn.execute(sa.select(messages.c.status).where(messages.c.workspace_id == ws,
                                                                   messages.c.journey_id == "nudge")).scalars().all()
    assert statuses == ["queued", "queued"]


def _nudge_statuses(engine, ws):
    with engine.connect() as conn:
        return conn.execute(sa.select(messages.c.profile_id, messages.c.status, messages.c.reason).where(
            messages.c.workspace_id == ws, messages.c.journey_id == "nudge").order_by(messages.c.created_at)).all()


def test_a_re_entry_after_an_earlier_merge_is_not_withdrawn_by_a_later_unrelated_one(engine, ws, clock, worker):
    """Review: a device's entry merged into her, then her own re-entry an hour later (after_exit admits it), both
    messages waiting out quiet hours: a later, unrelated merge withdrew the re-entry's message."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, {**NUDGE, "reentry": "after_exit"})
    send(engine, ws, [ev("Signed Up", T0 - timedelta(minutes=5), user="u9"),
                      {"type": "track", "anonymousId": "d0", "event": "Browse", "messageId": "b0",
                       "properties": {"cart_id": "A"}, "timestamp": T0.isoformat(),
                       "context": {"channel": "web"}}], T0)  # fmt: skip
    settle(worker)
    clock.at = T0 + timedelta(minutes=1)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d0", "messageId": "i0",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    clock.at = T0 + timedelta(hours=1)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="B")], clock.at)
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued", "queued"]
    clock.at = T0 + timedelta(hours=2)  # a new device of hers, merged in: nothing to do with this journey
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Page Viewed", "messageId": "p1",
                       "timestamp": clock.at.isoformat(), "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued", "queued"], _nudge_statuses(engine, ws)


def test_her_own_re_entry_stays_when_the_first_instance_came_from_the_merged_profile(engine, ws, clock, worker):
    """Review: a device browsed first, she 10 s later, then again an hour later (after_exit admits both: the device's
    instance had left at once). Merging the device into her withdraws neither."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, {**NUDGE, "reentry": "after_exit"})
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Browse", "messageId": "b0",
                       "properties": {"cart_id": "A"}, "timestamp": T0.isoformat(), "context": {"channel": "web"}},
                      ev("Browse", T0 + timedelta(seconds=10), user="u9", cart_id="B")],
         T0 + timedelta(seconds=10))  # fmt: skip
    settle(worker)
    clock.at = T0 + timedelta(hours=1)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="C")], clock.at)
    settle(worker)
    assert [i.status for i in instances(engine, ws, "nudge")] == ["exited"] * 3
    clock.at = T0 + timedelta(hours=2)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued"] * 3, _nudge_statuses(engine, ws)


def test_each_instance_is_judged_by_its_own_version_after_a_merge(engine, ws, clock, worker):
    """Review: v1 (after_exit) let her in twice, both messages waiting; v2 adds an entry key. An unrelated merge
    judged her v1 instances by v2's rules and withdrew the second ("another profile of hers entered it": false)."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, {**NUDGE, "reentry": "after_exit"})
    send(engine, ws, [ev("Browse", T0, user="u9", cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(hours=1)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="B")], clock.at)
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued", "queued"]
    publish(engine, ws, {**NUDGE, "reentry": "after_exit", "entry": {"event": {"event": "Browse", "key": "cart_id"}}},
            at=clock.at)  # fmt: skip
    clock.at = T0 + timedelta(hours=2)
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Page Viewed", "messageId": "p1",
                       "timestamp": clock.at.isoformat(), "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued", "queued"], _nudge_statuses(engine, ws)


def test_a_live_duplicate_beside_an_exited_instance_with_a_waiting_message_exits(engine, ws, clock, worker):
    """Review: reentry never. Her instance sent (held by quiet hours) and left; a device of hers entered 5 minutes
    later, sent (held too) and waits at a delay. After the merge both messages were still queued: the live one was
    no duplicate of another live one, and the exited rule left live ones alone. It exits now, withdrawing its own."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, {**NUDGE, "reentry": "never",
                         "nodes": {"mail": {"type": "message", "template": "cart_reminder", "channel": ["in_app"],
                                            "kind": "marketing", "next": "c0"},
                                   "c0": {"type": "condition", "if": {"trait": {"name": "vip", "equals": True}},
                                          "then": "done", "else": "later"},
                                   "later": {"type": "delay", "for": "1d", "next": "done"},
                                   "done": {"type": "exit"}}})  # fmt: skip
    send(engine, ws, [{"type": "identify", "userId": "u9", "traits": {"vip": True}, "messageId": "id0",
                       "timestamp": (T0 - timedelta(minutes=1)).isoformat()}], T0)  # fmt: skip
    settle(worker)
    send(engine, ws, [ev("Browse", T0, user="u9", cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Browse", "messageId": "b1",
                       "properties": {"cart_id": "B"}, "timestamp": clock.at.isoformat(),
                       "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    assert [r.status for r in _nudge_statuses(engine, ws)] == ["queued", "queued"]
    clock.at = T0 + timedelta(minutes=10)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert sorted(r.status for r in _nudge_statuses(engine, ws)) == ["queued", "skipped"], _nudge_statuses(engine, ws)
    assert [i.status for i in instances(engine, ws, "nudge")] == ["exited", "exited"]


def test_a_merge_keeps_one_live_instance_when_both_rankings_would_differ(engine, ws, clock, worker):
    """Review: after_exit. X (hers) enters at 9:00, its message held by quiet hours, and leaves at 9:10; L1 (a device
    of hers) enters at 9:05, while X was in; L2 (hers again, after X left: allowed) at 9:20. The live-only ranking
    kept L1 and the ranking with X kept L2: their union exited both. One ranking now: L2 goes on, L1 exits."""
    quiet_workspace(engine, ws, worker, clock)
    send(engine, ws, [{"type": "identify", "userId": "u9", "traits": {"vip": True}, "messageId": "id0",
                       "timestamp": (T0 - timedelta(minutes=1)).isoformat()}], T0)  # fmt: skip
    settle(worker)
    publish(engine, ws, {**NUDGE, "reentry": "after_exit",
                         "nodes": {"mail": {"type": "message", "template": "cart_reminder", "channel": ["in_app"],
                                            "kind": "marketing", "next": "w"},
                                   "w": {"type": "delay", "for": "10m", "next": "c0"},
                                   "c0": {"type": "condition", "if": {"trait": {"name": "vip", "equals": True}},
                                          "then": "done", "else": "later"},
                                   "later": {"type": "delay", "for": "1d", "next": "done"},
                                   "done": {"type": "exit"}}})  # fmt: skip
    send(engine, ws, [ev("Browse", T0, user="u9", cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=5)
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Browse", "messageId": "b1",
                       "properties": {"cart_id": "B"}, "timestamp": clock.at.isoformat(),
                       "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    clock.at = T0 + timedelta(minutes=16)
    settle(worker)
    clock.at = T0 + timedelta(minutes=20)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="C")], clock.at)
    settle(worker)
    clock.at = T0 + timedelta(minutes=25)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    by_cart = {i.state["entry"]["properties"]["cart_id"]: i for i in instances(engine, ws, "nudge")}
    assert [by_cart[c].status != "exited" for c in "ABC"] == [False, False, True], by_cart
    assert sorted(r.status for r in _nudge_statuses(engine, ws)) == ["queued", "queued", "skipped"]


def test_a_device_copy_of_a_message_she_already_had_is_withdrawn_after_a_merge(engine, ws, clock, worker):
    """Review: reentry never. Her instance enters at 07:55, before quiet hours (08:00-20:00): its message goes out
    and it exits. A device of hers enters at 08:05: its message waits out quiet hours. After the merge the
    device's copy must be withdrawn, though hers is done: a ranking of only the instances still acting had let it
    go out at 20:00."""
    quiet_workspace(engine, ws, worker, clock)
    publish(engine, ws, NUDGE)
    clock.at = T0 - timedelta(minutes=65)
    send(engine, ws, [ev("Browse", clock.at, user="u9", cart_id="A")], clock.at)
    settle(worker)
    clock.at = T0 - timedelta(minutes=55)
    send(engine, ws, [{"type": "track", "anonymousId": "d1", "event": "Browse", "messageId": "b1",
                       "properties": {"cart_id": "B"}, "timestamp": clock.at.isoformat(),
                       "context": {"channel": "web"}}], clock.at)  # fmt: skip
    settle(worker)
    clock.at = T0 - timedelta(minutes=50)
    send(engine, ws, [{"type": "alias", "userId": "u9", "previousId": "d1", "messageId": "m3",
                       "timestamp": clock.at.isoformat()}], clock.at)  # fmt: skip
    settle(worker)
    assert sorted(r.status for r in _nudge_statuses(engine, ws)) == ["sent", "skipped"], _nudge_statuses(engine, ws)
