"""Node statistics on the store, on both engines: journeys run through the worker as in test_runtime, then every
count of ``stats.stats`` checked against what the people did (and the split arms against their instances)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.errors import ChorusError, NotFound
from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.journeys import stats, store
from chorus.messaging import outbox
from tests.journeys.conftest import T0
from tests.journeys.driver import Driver
from tests.journeys.generate import definition
from tests.journeys.test_properties import ZONES, inputs, person, play
from tests.journeys.test_runtime import CART, ev, instances, publish, send, settle


def read(engine, ws, jid="cart", version=None):
    with engine.connect() as conn:
        return stats.stats(conn, ws, jid, version)


def node(out, nid, version=1):
    (v,) = [x for x in out["versions"] if x["version"] == version]
    return next(n for n in v["nodes"] if n["node"] == nid)


def pairs(items):
    return {p["key"]: p["count"] for p in items}


def test_abandoned_cart_counts_every_arrival_pass_conversion_and_exit(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A"), ev("Product Added", T0, cart_id="B"),
                      ev("Product Added", T0, user="u2", cart_id="C")], T0)  # fmt: skip
    settle(worker)
    out = read(engine, ws)
    assert out["totals"] == {"entered": 3, "inside": 3, "active": 3, "tracking": 0, "converted": 0, "exited": 0,
                             "conversion_rate": 0.0}  # fmt: skip
    wait = node(out, "wait")
    assert (wait["entered"], wait["waiting_now"], wait["passed"], wait["pass_rate"]) == (3, 3, 0, 0.0)
    assert node(out, "remind")["entered"] == 0 and node(out, "remind")["pass_rate"] is None

    # u1 buys cart A in a store: A leaves by "bought", and the order is B's goal too (any order within 7 days)
    clock.at = T0 + timedelta(minutes=30)
    send(engine, ws, [ev("Order Completed", clock.at, channel="store", cart_id="A")], clock.at)
    settle(worker)
    clock.at = T0 + timedelta(hours=1, seconds=1)  # B and C time out: reminded
    settle(worker)
    out = read(engine, ws)
    wait, remind, done = node(out, "wait"), node(out, "remind"), node(out, "done")
    assert (wait["entered"], wait["waiting_now"], wait["passed"]) == (3, 0, 3)
    assert pairs(wait["passed_by_branch"]) == {"bought": 1, "timeout": 2}
    assert (wait["converted"], pairs(wait["converted_by_branch"]), wait["conversion_rate"]) == (2, {None: 2}, 0.6667)
    assert (remind["entered"], remind["passed"], remind["exited"], remind["pass_rate"]) == (2, 2, 0, 1.0)
    # A and B reach the end converted and exit; C (not converted) waits out the goal window at the exit node: her
    # waiting there is not a second arrival. Nobody passes an exit node: entered = passed + waiting + exited (an
    # outside probe: it showed passed = 3, a pass rate of 1.0 for a node nobody leaves)
    assert (done["entered"], done["passed"], done["exited"], done["tracking_now"]) == (3, 0, 2, 1)
    assert done["passed_by_branch"] == [] and done["pass_rate"] == 0.0
    assert pairs(done["exited_by_reason"]) == {"exit node": 2}
    assert out["totals"] == {"entered": 3, "inside": 1, "active": 0, "tracking": 1, "converted": 2, "exited": 2,
                             "conversion_rate": 0.6667}  # fmt: skip
    with engine.connect() as conn:
        (at,) = stats.people_at(conn, ws, "cart", "done")
        assert at["status"] == "tracking" and at["version"] == 1
        assert stats.people_at(conn, ws, "cart", "wait") == []

    clock.at = T0 + timedelta(days=7, seconds=1)  # C's goal window closes: she exits where she was
    settle(worker)
    done = node(read(engine, ws), "done")
    assert (done["entered"], done["exited"], done["tracking_now"]) == (3, 3, 0)
    assert read(engine, ws)["totals"]["inside"] == 0


HOLDOUT = {
    "id": "promo", "entry": {"event": {"event": "Signed Up"}}, "reentry": "never",
    "goal": {"event": {"event": "Order Completed"}, "within": "3d"}, "exit_on_goal": False, "start": "arm",
    "nodes": {
        "arm": {"type": "split", "arms": [{"name": "control", "weight": 50, "holdout": True},
                                          {"name": "treat", "weight": 50, "next": "send"}]},
        "send": {"type": "message", "template": "offer", "channel": ["in_app"], "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip


def test_split_arms_count_entries_and_conversions_per_arm(engine, ws, clock, worker):
    publish(engine, ws, HOLDOUT)
    users = [f"p{i}" for i in range(16)]
    send(engine, ws, [ev("Signed Up", T0, user=u, cart_id="c1") for u in users], T0)  # the offer names event.cart_id
    settle(worker)
    clock.at = T0 + timedelta(hours=2)
    buyers = users[::3]
    send(engine, ws, [ev("Order Completed", clock.at, user=u) for u in buyers], clock.at)
    settle(worker)
    out = read(engine, ws, "promo", version=1)
    rows = instances(engine, ws, "promo")
    truth = {arm: [r for r in rows if r.state["arms"]["arm"] == arm] for arm in ("control", "treat")}
    assert truth["control"] and truth["treat"], "16 people fill both arms of a 50/50 split"
    got = {a["arm"]: a for a in out["versions"][0]["arms"]}
    for arm, inside in truth.items():
        conv = sum(1 for r in inside if r.state["converted_at"])
        assert (got[arm]["entered"], got[arm]["converted"]) == (len(inside), conv)
        assert got[arm]["holdout"] == (arm == "control") and got[arm]["split"] == "arm"
        assert got[arm]["conversion_rate"] == round(conv / len(inside), 4)
    assert sum(a["converted"] for a in got.values()) == len(buyers) == out["totals"]["converted"]
    arm = node(out, "arm")
    # the treated pass the split; the holdout wait at it, tracked, until the goal window closes or they convert
    waiting = sum(1 for r in truth["control"] if not r.state["converted_at"])
    assert (arm["entered"], arm["passed"], arm["waiting_now"]) == (16, len(truth["treat"]), waiting)
    assert pairs(arm["passed_by_branch"]) == {"treat": len(truth["treat"])}
    assert node(out, "send")["entered"] == len(truth["treat"])

    with engine.connect() as conn:
        page1 = stats.people_at(conn, ws, "promo", "arm", version=1, limit=3)
        page2 = stats.people_at(conn, ws, "promo", "arm", version=1, limit=100, after=page1[-1]["instance_id"])
        counts = outbox.journey_message_counts(conn, ws, "promo")
    ids = [p["instance_id"] for p in page1 + page2]
    still = [r for r in truth["control"] if not r.state["converted_at"]]  # a converted holdout has left
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == len(still)
    assert {p["profile_id"] for p in page1 + page2} == {r.profile_id for r in still}
    # the treated were each sent the offer (queued in the transition), the holdout nothing
    assert counts["total"] == len(truth["treat"]) == sum(counts["by_status"].values())
    # queued in the transition, then sent by the worker's delivery (in-app): each status reached is counted once
    assert counts["reached"]["queued"] == len(truth["treat"]), counts
    assert all(counts["reached"][k] >= n for k, n in counts["by_status"].items()), counts

    clock.at = T0 + timedelta(days=3, seconds=1)  # the window closes: the holdout exit at the split
    settle(worker)
    arm = node(read(engine, ws, "promo"), "arm")
    gone = len(truth["control"]) - len(still)  # the holdout who converted left then, like the tracked treated
    want = {"holdout: goal window over": len(still), "goal reached": gone}
    assert pairs(arm["exited_by_reason"]) == {k: n for k, n in want.items() if n}
    assert arm["waiting_now"] == 0


def test_a_new_version_is_counted_apart_and_unknown_versions_are_named(engine, ws, clock, worker):
    publish(engine, ws, CART)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    publish(engine, ws, {**CART, "name": "Cart v2"})
    send(engine, ws, [ev("Product Added", T0, user="u2", cart_id="B")], T0)
    settle(worker)
    out = read(engine, ws)
    assert [v["version"] for v in out["versions"]] == [1, 2]
    assert [v["totals"]["entered"] for v in out["versions"]] == [1, 1] and out["totals"]["entered"] == 2
    only2 = read(engine, ws, version=2)
    assert [v["version"] for v in only2["versions"]] == [2] and only2["totals"]["entered"] == 1
    with engine.connect() as conn:
        assert len(stats.people_at(conn, ws, "cart", "wait")) == 2
        assert len(stats.people_at(conn, ws, "cart", "wait", version=1)) == 1
        with pytest.raises(ChorusError) as err:
            stats.stats(conn, ws, "cart", 9)
        assert err.value.field == "version"
        with pytest.raises(NotFound):
            stats.stats(conn, ws, "nope")


def test_a_loop_back_to_a_delay_is_a_new_arrival_each_round(engine, ws, clock, worker):
    loop = {
        "id": "nudge", "entry": {"event": {"event": "Signed Up"}}, "start": "pause",
        "nodes": {
            "pause": {"type": "delay", "for": "1h", "next": "pause", "max_visits": 3, "overflow": "done"},
            "done": {"type": "exit"},
        },
    }  # fmt: skip
    publish(engine, ws, loop)
    send(engine, ws, [ev("Signed Up", T0)], T0)
    settle(worker)
    for h in range(1, 5):
        clock.at = T0 + timedelta(hours=h, seconds=1)
        settle(worker)
    pause = node(read(engine, ws, "nudge"), "pause")
    # three waits of an hour, each a round's arrival, then the fourth arrival overflows to the exit
    assert (pause["entered"], pause["passed"]) == (4, 4)
    assert pairs(pause["passed_by_branch"]) == {None: 3, "overflow": 1}
    assert node(read(engine, ws, "nudge"), "done")["exited"] == 1


# -- property: the counts from SQL are what the interpreter did, on generated journeys -------------------------------
_RUNS = iter(range(10**9))


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(definition(), inputs, st.sampled_from(ZONES), st.integers(0, 3))
def test_counts_match_the_interpreters_own_visits_on_generated_journeys(engine, ws, doc, script, zone, cut):
    """Every generated journey, driven by random inputs (the interpreter alone, in memory), its records and instances
    written as the runtime writes them: each node's arrivals are the sum of the instances' own visit counters
    (``State.visits``, counted by the interpreter at each arrival), the people at a node are the instances there,
    the totals are the instances', and each arm's conversions are those that came after the person entered it."""
    doc = {**doc, "id": f"gen{next(_RUNS)}"}
    defn = d.parse(doc)
    dr = Driver(defn, person("p1", zone), T0)
    play(dr, [("entry", "c1"), *script])
    for _ in range(cut):  # some runs end with people still inside, some with everybody out
        if dr.timers:
            dr.run_until(min(at for at, _ in dr.timers.values()))
    with engine.begin() as conn:
        store.create_version(conn, ws, defn, "journey", T0)
        store.save_instances(conn, ws, [(s, True) for s in dr.instances], dr.now)
        recs = [(iid, c) for iid, c in dr.commands if isinstance(c, j.Record)]
        store.add_records(conn, ws, [{"journey_id": defn.id, "version": 1, "instance_id": iid, "profile_id": "p1",
                                      "kind": c.kind, "node": c.node, "branch": c.branch, "arm": None, "at": c.at,
                                      "detail": c.detail} for iid, c in recs])  # fmt: skip
        out = stats.stats(conn, ws, defn.id)
    (v,) = out["versions"]
    by_node = {n["node"]: n for n in v["nodes"]}
    assert set(by_node) == {n.id for n in defn.nodes}
    for n in defn.nodes:
        assert by_node[n.id]["entered"] == sum(s.visits.get(n.id, 0) for s in dr.instances), n.id
        here = [s for s in dr.instances if s.node == n.id]
        assert by_node[n.id]["waiting_now"] == sum(s.status == "active" for s in here)
        assert by_node[n.id]["tracking_now"] == sum(s.status == "tracking" for s in here)
    assert out["totals"]["entered"] == len(dr.instances)
    assert out["totals"]["exited"] == sum(s.status == "exited" for s in dr.instances)
    assert out["totals"]["converted"] == sum(s.converted_at is not None for s in dr.instances)
    truth = {}
    for s in dr.instances:
        recs = [c for iid, c in dr.commands if iid == s.instance_id and isinstance(c, j.Record)]
        for split, arm in s.arms.items():
            first = next(i for i, c in enumerate(recs) if c.node == split and c.kind in ("step", "waiting"))
            conv = any(c.kind == "converted" for c in recs[first + 1 :])
            e, k = truth.get((split, arm), (0, 0))
            truth[(split, arm)] = (e + 1, k + conv)
    assert {(a["split"], a["arm"]): (a["entered"], a["converted"]) for a in v["arms"]} == truth
