"""The interpreter node by node: entry and re-entry, delays from dates, loops, stale timers, conditions, effects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chorus.errors import ChorusError
from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.messaging import outbox
from chorus.segments.person import Event, Person
from tests.journeys.driver import Driver, event

T = datetime(2026, 3, 2, 9, tzinfo=UTC)


def journey(nodes: dict, start: str = "a", **top) -> d.Definition:
    return d.parse({"id": "j", "entry": {"api": {"key": "k"}}, "start": start, "nodes": nodes, **top})


def started(defn: d.Definition, person: Person | None = None, **data) -> Driver:
    dr = Driver(defn, person or Person("p1"), T)
    dr.give(j.Start("s1", T, {"k": "x", **data}))
    return dr


# -- entry ----------------------------------------------------------------------------------------------------------
def test_entry_reasons():
    defn = journey({"a": {"type": "exit"}}, reentry="never")
    p = Person("p1")
    assert j.enter(defn, p, event("X", T), [], T).reason == "this journey is entered by a start (API or schedule)"
    assert j.enter(defn, p, j.Start("s", T, {}), [], T).reason == "the entry has no k (a text or whole number)"
    assert j.enter(defn, p, j.Start("s", T, {"k": True}), [], T).state is None
    first = j.enter(defn, p, j.Start("s", T, {"k": 7}), [], T)
    assert first.state is not None and first.state.key == "7"
    assert j.enter(defn, p, j.Start("s2", T, {"k": 7}), [first.state], T).reason == "k '7' has entered already"
    assert "reentry: never" in j.enter(defn, p, j.Start("s3", T, {"k": 8}), [first.state], T).reason


def test_cooldown_counts_from_the_last_entry():
    defn = journey({"a": {"type": "exit"}}, reentry={"cooldown": "1d"})
    dr = started(defn)
    assert dr.instances[0].status == "exited"
    late = T + timedelta(hours=23)
    assert "cool-down" in j.enter(defn, dr.person, j.Start("s2", late, {"k": "y"}), dr.instances, late).reason
    assert j.enter(defn, dr.person, j.Start("s2", T + timedelta(days=1), {"k": "y"}), dr.instances,
                   T + timedelta(days=1)).state  # fmt: skip
    # processed two hours late, an input from within the cool-down is still within it (as in the simulator)
    assert "cool-down" in j.enter(defn, dr.person, j.Start("s3", late, {"k": "z"}), dr.instances,
                                  late + timedelta(hours=2)).reason  # fmt: skip


def test_a_transition_is_dated_by_its_input_whatever_the_lag():
    defn = journey({"a": {"type": "delay", "for": "1h", "next": "b"},
                    "b": {"type": "wait", "branches": [{"event": {"event": "X"}, "next": "c"}],
                          "timeout": {"after": "1h", "next": "c"}},
                    "c": {"type": "exit"}})  # fmt: skip
    outs = []
    for lag in (timedelta(0), timedelta(minutes=50)):
        dr = Driver(defn, Person("p1"), T + lag)
        dr.give(j.Start("s1", T, {"k": "x"}))
        [delay] = [c for _, c in dr.commands if isinstance(c, j.SetTimer)]
        dr.now = T + timedelta(hours=1) + lag  # the timer fires late
        dr._apply(0, j.TimerFired(dr.instances[0].instance_id, delay.key, delay.at))
        dr.timers.pop(delay.key)
        outs.append([(c.at if isinstance(c, j.SetTimer | j.Record) else c) for _, c in dr.commands])
    assert outs[0] == outs[1]
    assert [c for c in outs[0] if isinstance(c, datetime)][-1] == T + timedelta(hours=1)


def test_held_inputs_are_given_again_in_order_of_their_own_time():
    """Paused: the wait's timeout fires (10:00) and then a purchase stamped 09:40 arrives. On resume the purchase
    comes first: no reminder, and the conversion is credited where she was at 09:40, dated 09:40."""
    defn = journey({"a": {"type": "wait", "branches": [{"event": {"event": "Other"}, "next": "m"}],
                          "timeout": {"after": "1h", "next": "m"}},
                    "m": {"type": "message", "template": "t", "next": "x"}, "x": {"type": "exit"}},
                   goal={"event": {"event": "Paid"}, "within": "1d"})  # fmt: skip
    dr = started(defn)
    dr.status = "paused"
    dr.run_until(T + timedelta(hours=1, minutes=30))
    dr.give(event("Paid", T + timedelta(minutes=40)))
    dr.now = T + timedelta(days=1)
    dr.resume()
    assert dr.of(j.Send) == [] and dr.instances[0].exit_reason == "goal reached"
    [conv] = dr.records("converted")
    assert (conv.node, conv.at) == ("a", T + timedelta(minutes=40))


def test_entry_event_filters_and_segment_entry():
    defn = d.parse({"id": "j", "entry": {"event": {"event": "Order Cancelled", "channel": ["store", "web"],
                                                   "where": [{"property": "total", "gte": 10}]}},
                    "start": "a", "nodes": {"a": {"type": "exit"}}})  # fmt: skip
    p = Person("p1")
    assert j.enter(defn, p, event("Order Cancelled", T, channel="store", total=10), [], T).state
    assert not j.enter(defn, p, event("Order Cancelled", T, channel="app", total=10), [], T).state
    assert not j.enter(defn, p, event("Order Cancelled", T, channel="store", total=9.99), [], T).state
    assert not j.enter(defn, p, event("Order Cancelled", T, channel="store", total="10"), [], T).state
    seg = d.parse({"id": "j", "entry": {"segment": "vip"}, "start": "a", "nodes": {"a": {"type": "exit"}}})
    assert j.enter(seg, p, j.SegmentChanged("vip", "entered", T, "1"), [], T).state
    assert not j.enter(seg, p, j.SegmentChanged("vip", "exited", T, "2"), [], T).state
    assert not j.enter(seg, p, j.SegmentChanged("other", "entered", T, "3"), [], T).state


# -- delays from dates -------------------------------------------------------------------------------------------------
DATED = {
    "a": {"type": "delay", "until": {"trait": "appointment"}, "offset": "-1d", "missing": "none", "next": "remind"},
    "remind": {"type": "message", "template": "reminder", "next": "end"},
    "none": {"type": "update_trait", "trait": "needs_date", "value": True, "next": "end"},
    "end": {"type": "exit"},
}


def test_delay_until_a_trait_date_with_an_offset_in_the_profile_zone():
    p = Person("p1", state={"traits": {"appointment": "2026-03-10"}, "attrs": {"timezone": ["Europe/Paris"]}})
    dr = started(journey(DATED), p)
    assert dr.of(j.SetTimer)[0].at == datetime(2026, 3, 8, 23, tzinfo=UTC)  # local midnight of the 10th, minus 24 h
    dr.run_until(T + timedelta(days=10))
    assert [s.template for s in dr.of(j.Send)] == ["reminder"]


def test_delay_until_a_date_in_the_workspaces_zone_for_a_person_without_one():
    """Person.zone: her own zone if known, else the workspace's (``zone_default``), else UTC."""
    paris, kolkata = datetime(2026, 3, 8, 23, tzinfo=UTC), datetime(2026, 3, 8, 18, 30, tzinfo=UTC)
    for attrs, default, due in (({}, "Europe/Paris", paris), ({"timezone": ["Nowhere/Land"]}, "Europe/Paris", paris),
                                ({"timezone": ["Asia/Kolkata"]}, "Europe/Paris", kolkata),
                                ({}, None, datetime(2026, 3, 9, tzinfo=UTC))):  # fmt: skip
        p = Person("p1", state={"traits": {"appointment": "2026-03-10"}, "attrs": attrs}, zone_default=default)
        assert started(journey(DATED), p).of(j.SetTimer)[0].at == due, (attrs, default)


def test_delay_until_a_date_passed_goes_on_and_a_missing_date_takes_missing():
    past = started(journey(DATED), Person("p1", state={"traits": {"appointment": "2026-03-01T10:00:00Z"}}))
    assert [s.template for s in past.of(j.Send)] == ["reminder"] and past.of(j.SetTimer) == []
    missing = started(journey(DATED), Person("p2", state={"traits": {"appointment": "soon"}}))
    assert missing.of(j.Send) == [] and missing.of(j.UpdateTrait)[0].trait == "needs_date"
    assert ("a", "no_date") in [(r.node, r.branch) for r in missing.records("step")]


def test_delay_until_an_entry_property_and_a_computed_trait():
    nodes = {"a": {"type": "delay", "until": {"property": "ship_by"}, "next": "b"},
             "b": {"type": "delay", "until": {"trait": "computed.next_purchase"}, "next": "c"},
             "c": {"type": "exit"}}  # fmt: skip
    p = Person("p1", computed={"next_purchase": "2026-04-01T00:00:00Z"})
    dr = started(journey(nodes), p, ship_by="2026-03-05T12:00:00Z")
    assert dr.of(j.SetTimer)[0].at == datetime(2026, 3, 5, 12, tzinfo=UTC)
    dr.run_until(datetime(2026, 3, 6, tzinfo=UTC))
    assert dr.of(j.SetTimer)[1].at == datetime(2026, 4, 1, tzinfo=UTC)


# -- loops ------------------------------------------------------------------------------------------------------------
def test_a_delay_on_a_loop_waits_even_when_its_date_has_passed():
    nodes = {
        "a": {"type": "message", "template": "nudge", "next": "b"},
        "b": {"type": "delay", "until": {"property": "due"}, "next": "a", "max_visits": 3, "overflow": "c"},
        "c": {"type": "exit"},
    }
    dr = started(journey(nodes), due="2020-01-01")
    assert len(dr.of(j.Send)) == 1 and dr.of(j.SetTimer)[0].at == T  # due now: a transition of its own
    dr.run_until(T)
    assert len(dr.of(j.Send)) == 4  # b waits three times (each ends at once), the fourth visit overflows
    assert len(dr.of(j.SetTimer)) == 3
    assert dr.instances[0].exit_reason == "exit node"
    assert ("b", "overflow") in [(r.node, r.branch) for r in dr.records("step")]


def test_max_visits_without_overflow_exits():
    nodes = {"a": {"type": "wait", "max_visits": 2, "timeout": {"after": "1h", "next": "a"},
                   "branches": [{"event": {"event": "Never"}, "next": "b"}]}, "b": {"type": "exit"}}  # fmt: skip
    dr = started(journey(nodes))
    dr.run_until(T + timedelta(hours=5))
    assert dr.instances[0].exit_reason == "a: max_visits (2) reached"
    assert len(dr.of(j.SetTimer)) == 2


def test_an_overflow_that_leads_back_is_refused():
    nodes = {"a": {"type": "delay", "for": "1h", "next": "a", "max_visits": 2, "overflow": "b"},
             "b": {"type": "update_trait", "trait": "x", "value": 1, "next": "a"}}  # fmt: skip
    with pytest.raises(ChorusError) as exc:
        journey(nodes)
    assert exc.value.field == "nodes.a.overflow" and "leads back to 'a'" in exc.value.message


# -- timers, conditions, effects -------------------------------------------------------------------------------------
def test_stale_and_foreign_timers_change_nothing():
    dr = started(journey({"a": {"type": "delay", "for": "1h", "next": "b"}, "b": {"type": "exit"}}))
    state = dr.instances[0]
    [timer] = dr.of(j.SetTimer)
    ctx = j.Context(T + timedelta(hours=1), dr.person)
    assert j.step(dr.defn, state, j.TimerFired(state.instance_id, "other-key", timer.at), ctx) == (state, ())
    assert j.step(dr.defn, state, j.TimerFired("ji_other", timer.key, timer.at), ctx)[1] == ()
    after, cmds = j.step(dr.defn, state, j.TimerFired(state.instance_id, timer.key, timer.at), ctx)
    assert after.status == "exited"
    assert j.step(dr.defn, after, j.TimerFired(state.instance_id, timer.key, timer.at), ctx) == (after, ())


def test_a_start_for_a_running_instance_changes_nothing():
    dr = started(journey({"a": {"type": "delay", "for": "1h", "next": "b"}, "b": {"type": "exit"}}))
    state = dr.instances[0]
    assert j.step(dr.defn, state, j.Start("again", T, {"k": "x"}), j.Context(T, dr.person))[1] == ()


@pytest.mark.parametrize(("segments", "branch"), [(frozenset({"vip"}), "then"), (frozenset(), "else")])
def test_condition_reads_the_person_memberships(segments, branch):
    nodes = {"a": {"type": "condition", "if": {"or": [{"segment": "vip"}, {"trait": {"name": "plan", "equals": "x"}}]},
                   "then": "b", "else": "b"}, "b": {"type": "exit"}}  # fmt: skip
    dr = started(journey(nodes), Person("p1", segments=segments))
    assert ("a", branch) in [(r.node, r.branch) for r in dr.records("step")]


def test_effects_carry_their_keys_and_the_entry_data():
    nodes = {
        "a": {"type": "list", "list": "press", "action": "add", "next": "b"},
        "b": {"type": "audience", "audience": "lookalike", "action": "remove", "next": "c"},
        "c": {"type": "webhook", "url": "https://crm.example.com/hook", "method": "PUT", "data": {"src": "j"},
              "next": "d"},
        "d": {"type": "message", "template": "t", "channel": ["email", "sms"], "kind": "transactional",
              "topic": "orders", "next": "e"},
        "e": {"type": "exit"},
    }  # fmt: skip
    dr = started(journey(nodes), order="o1")
    iid = dr.instances[0].instance_id
    assert dr.of(j.ListChange) == [j.ListChange("press", "add", f"{iid}:1", "a")]
    assert dr.of(j.AudienceChange) == [j.AudienceChange("lookalike", "remove", f"{iid}:2", "b")]
    [hook] = dr.of(j.Webhook)
    assert (hook.url, hook.method, hook.key, hook.node) == ("https://crm.example.com/hook", "PUT", f"{iid}:3", "c")
    assert hook.body["event"] == {"k": "x", "order": "o1"} and hook.body["data"] == {"src": "j"}
    [send] = dr.of(j.Send)
    assert send.request() == {
        "profile_id": "p1", "template": "t", "kind": "transactional", "channel": ["email", "sms"],
        "journey_id": "j", "event": {"k": "x", "order": "o1"}, "topic": "orders",
    }  # fmt: skip
    assert send.key == f"{iid}:4" and send.version == 1 and send.node == "d"
    assert outbox.parse_request(send.request())["channel"] == ["email", "sms"]  # what the outbox accepts


def test_retrying_a_transition_gives_the_same_keys():
    defn = journey({"a": {"type": "delay", "for": "1h", "next": "b"},
                    "b": {"type": "message", "template": "t", "next": "c"}, "c": {"type": "exit"}})  # fmt: skip
    dr = started(defn)
    state, [timer] = dr.instances[0], dr.of(j.SetTimer)
    ctx = j.Context(timer.at, dr.person)
    first = j.step(defn, state, j.TimerFired(state.instance_id, timer.key, timer.at), ctx)
    again = j.step(defn, j.state_from_json(j.state_to_json(state)), j.TimerFired(state.instance_id, timer.key,
                                                                                    timer.at), ctx)  # fmt: skip
    assert first == again
    assert [c.key for c in first[1] if isinstance(c, j.Send)] == [f"{state.instance_id}:2"]


def test_events_before_entry_do_not_convert_or_take_branches():
    defn = journey({"a": {"type": "wait", "branches": [{"event": {"event": "Paid"}, "next": "b"}],
                          "timeout": {"after": "1d", "next": "b"}}, "b": {"type": "exit"}},
                   goal={"event": {"event": "Paid"}, "within": "1d"})  # fmt: skip
    dr = started(defn)
    dr.give(event("Paid", T - timedelta(minutes=1)))  # imported late, but from before the journey began
    assert dr.instances[0].status == "active" and dr.records("converted") == []
    dr.give(event("Paid", T + timedelta(days=1, minutes=1), n=1))  # after the goal window: no conversion
    assert dr.records("converted") == [] and dr.instances[0].status == "tracking"
    dr.run_until(T + timedelta(days=1))
    assert dr.records("converted") == [] and dr.instances[0].status == "exited"


def test_treated_and_holdout_are_tracked_over_the_same_goal_window():
    """The treated arm reaches its exit node at once; a purchase a day later, within the goal window, still
    converts it, just as it converts a holdout that waits the window out."""
    split = {
        "type": "split",
        "arms": [{"name": "treat", "weight": 50, "next": "m"}, {"name": "control", "weight": 50, "holdout": True}],
    }
    nodes = {"a": split, "m": {"type": "message", "template": "t", "next": "x"}, "x": {"type": "exit"}}
    defn = journey(nodes, goal={"event": {"event": "Paid"}, "within": "7d"})
    seen = {}
    for n in range(40):
        dr = started(defn, Person(f"p{n}"))
        arm = dr.instances[0].arms["a"]
        assert dr.instances[0].status == ("tracking" if arm == "treat" else "active")
        assert all(not isinstance(c, j.Send) for c in dr.give(event("Other", T + timedelta(hours=1))))
        dr.now = T + timedelta(days=1)
        dr.give(event("Paid", dr.now, n=1))
        assert len(dr.records("converted")) == 1 and dr.instances[0].status == "exited"
        seen[arm] = True
        dr2 = started(defn, Person(f"p{n}"))
        dr2.run_until(T + timedelta(days=7))
        assert dr2.instances[0].status == "exited" and dr2.records("converted") == []
        assert dr2.instances[0].exit_reason == ("exit node" if arm == "treat" else "holdout: goal window over")
    assert set(seen) == {"treat", "control"}


def test_unknown_journey_status_is_refused():
    dr = started(journey({"a": {"type": "delay", "for": "1h", "next": "b"}, "b": {"type": "exit"}}))
    with pytest.raises(ValueError):
        j.step(dr.defn, dr.instances[0], event("X", T), j.Context(T, dr.person, status="archived"))


def test_rule_goal_and_rule_exit_hold_at_any_input():
    spend = {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total", "window": "7d",
                           "gte": 100}}  # fmt: skip
    defn = journey({"a": {"type": "delay", "for": "3d", "next": "b"}, "b": {"type": "message", "template": "t",
                                                                           "next": "c"}, "c": {"type": "exit"}},
                   goal={"rule": spend, "within": "7d"}, exit_on_goal=False,
                   exit=[{"rule": {"not": {"trait": {"name": "plan", "exists": True}}}}])  # fmt: skip
    gold = {"traits": {"plan": "gold"}}
    dr = started(defn, Person("p1", state=gold))
    orders = tuple(Event("Order Completed", "track", T + timedelta(hours=h), "store", {"total": 60}, f"o{h}")
                   for h in (1, 2))  # fmt: skip
    dr.person = Person("p1", state=gold, events=orders[:1])
    dr.give(orders[0])
    assert dr.records("converted") == []
    dr.person = Person("p1", state=gold, events=orders)
    dr.now = T + timedelta(hours=2)
    dr.give(orders[1])
    [conv] = dr.records("converted")
    assert (conv.node, conv.at) == ("a", T + timedelta(hours=2)) and dr.instances[0].status == "active"
    dr.person = Person("p1", state={"traits": {}}, events=orders)  # the trait is gone: checked at the timer too
    dr.run_until(T + timedelta(days=3))
    assert dr.instances[0].exit_reason == "exit[0] met" and dr.of(j.Send) == []
    assert d.references(defn) == [("nodes.b.template", "template", "t")]
    rule_refs = journey({"a": {"type": "exit"}}, goal={"rule": {"segment": "vip"}}, exit=[{"rule": {"list": "l"}}])
    assert d.references(rule_refs) == [("goal.rule.segment", "segment", "vip"), ("exit[0].rule.list", "list", "l")]


def test_entry_is_dated_by_the_entry_event_so_a_purchase_processed_just_after_counts():
    from tests.journeys.driver import seed

    defn = seed("abandoned_cart")
    added = event("Product Added", T, cart_id="c1")
    dr = Driver(defn, Person("p1"), T + timedelta(seconds=2))  # processed two seconds after it happened
    dr.give(added)
    assert dr.instances[0].entered_at == T
    dr.give(event("Order Completed", T + timedelta(seconds=1), channel="app"))  # stamped before the processing
    assert dr.instances[0].exit_reason == "goal reached"
    future = Driver(defn, Person("p2"), T)
    future.give(event("Product Added", T + timedelta(hours=1), cart_id="c1"))  # a device clock ahead
    assert future.instances[0].entered_at == T


def test_criteria_are_checked_on_the_entry_step():
    nodes = {"a": {"type": "message", "template": "t", "next": "w"}, "w": {"type": "delay", "for": "1d", "next": "x"},
             "x": {"type": "exit"}}  # fmt: skip
    # an exit rule that holds already: she exits before the first message
    defn = journey(nodes, exit=[{"rule": {"trait": {"name": "dnc", "equals": True}}}])
    dr = started(defn, Person("p1", state={"traits": {"dnc": True}}))
    assert dr.of(j.Send) == [] and dr.instances[0].exit_reason == "exit[0] met"
    # a goal event stamped after the entry but processed (given) before it converts at entry
    paid = event("Paid", T + timedelta(minutes=1))
    early = event("Paid", T - timedelta(minutes=1), n=1)  # before the entry: never counts
    defn = journey(nodes, goal={"event": {"event": "Paid"}, "within": "7d"})
    dr = Driver(defn, Person("p1", events=(early, paid)), T + timedelta(minutes=2))
    dr.give(early)
    dr.give(paid)
    dr.give(j.Start("s1", T, {"k": "x"}))  # the start is processed last, dated by its own time
    assert dr.of(j.Send) == [] and dr.instances[0].exit_reason == "goal reached"
    assert [c.at for c in dr.records("converted")] == [paid.at]
    dr = Driver(defn, Person("p1", events=(early,)), T + timedelta(minutes=2))
    dr.give(early)
    dr.give(j.Start("s1", T, {"k": "x"}))
    assert len(dr.of(j.Send)) == 1 and dr.records("converted") == []


def test_the_entry_step_reads_only_the_events_given_before_it_not_the_stored_person():
    """The runtime reads the person from the store, where an event not processed yet is already present: the entry
    step must not see it (it will come as an input, and would count twice, unlike in the simulator)."""
    nodes = {"a": {"type": "message", "template": "t", "next": "w"}, "w": {"type": "delay", "for": "1d", "next": "x"},
             "x": {"type": "exit"}}  # fmt: skip
    defn = journey(nodes, goal={"event": {"event": "Paid"}, "within": "7d"}, exit_on_goal=False,
                   exit=[{"event": {"event": "Quit"}}])  # fmt: skip
    paid, quit_ = event("Paid", T + timedelta(minutes=1)), event("Quit", T + timedelta(minutes=2))
    dr = Driver(defn, Person("p1", events=(paid, quit_)), T)  # both stored, neither processed yet
    dr.give(j.Start("s1", T, {"k": "x"}))
    assert len(dr.of(j.Send)) == 1 and dr.records("converted") == [] and dr.instances[0].status == "active"
    dr.now = T + timedelta(minutes=2)
    dr.give(paid)  # now they come, once each, in order: converted then exits by the criterion
    dr.give(quit_)
    assert [c.at for c in dr.records("converted")] == [paid.at] and dr.instances[0].exit_reason == "exit[0] met"
    # called directly: only Context.before_entry counts, in time order, from the entry on, the entry event excepted
    admitted = j.enter(defn, dr.person, j.Start("s2", T, {"k": "y"}), [], T).state
    ctx = j.Context(T + timedelta(minutes=5), dr.person, before_entry=(quit_, paid, event("Paid", T - timedelta(1))))
    state, cmds = j.step(defn, admitted, j.Start("s2", T, {"k": "y"}), ctx)
    assert state.exit_reason == "exit[0] met" and state.converted_at == paid.at  # Paid (T+1m) before Quit (T+2m)
    assert not any(isinstance(c, j.Send) for c in cmds)


def test_the_entry_event_itself_does_not_meet_an_exit_criterion():
    defn = d.parse({"id": "j", "entry": {"event": {"event": "Signed Up"}}, "exit": [{"event": {"event": "Signed Up"}}],
                    "start": "a", "nodes": {"a": {"type": "message", "template": "t", "next": "x"},
                                            "x": {"type": "exit"}}})  # fmt: skip
    signed = event("Signed Up", T)
    dr = Driver(defn, Person("p1", events=(signed,)), T)
    dr.give(signed)
    assert len(dr.of(j.Send)) == 1


def test_a_stopped_journey_admits_nobody_and_a_paused_one_holds_the_entry():
    defn = journey({"a": {"type": "message", "template": "t", "next": "x"}, "x": {"type": "exit"}}, reentry="never")
    dr = Driver(defn, Person("p1"), T, status="stopped")
    dr.give(j.Start("s1", T, {"k": "x"}))
    assert dr.instances == [] and dr.commands == []
    with pytest.raises(ValueError):
        j.enter(defn, dr.person, j.Start("s1", T, {"k": "x"}), [], T, status="archived")
    dr.status = "paused"
    dr.give(j.Start("s2", T + timedelta(hours=1), {"k": "y"}))
    assert len(dr.instances) == 1 and dr.of(j.Send) == []
    dr.now = T + timedelta(days=1)
    dr.resume()
    assert len(dr.of(j.Send)) == 1 and dr.records("entered")[0].at == T + timedelta(hours=1)


def test_a_timer_that_fires_in_a_stopped_journey_is_not_cancelled():
    dr = started(journey({"a": {"type": "delay", "for": "1h", "next": "x"}, "x": {"type": "exit"}}))
    [timer] = dr.of(j.SetTimer)
    state, cmds = j.step(dr.defn, dr.instances[0], j.TimerFired(dr.instances[0].instance_id, timer.key, timer.at),
                         j.Context(timer.at, dr.person, "stopped"))  # fmt: skip
    assert not any(isinstance(c, j.CancelTimer) for c in cmds) and cmds[-1] == j.Exit("journey stopped")
    assert state.timers == {}


def test_entries_without_an_id_are_told_apart_by_time_and_key():
    defn = d.parse({"id": "c", "entry": {"event": {"event": "Product Added", "key": "cart_id"}}, "reentry": "per_key",
                    "start": "m", "nodes": {"m": {"type": "message", "template": "t", "next": "x"},
                                            "x": {"type": "exit"}}})  # fmt: skip
    p = Person("p1")
    a = j.enter(defn, p, Event("Product Added", "track", T, "web", {"cart_id": "c1"}), [], T).state
    b = j.enter(defn, p, Event("Product Added", "track", T, "web", {"cart_id": "c2"}), [a], T).state
    c = j.enter(defn, p, Event("Product Added", "track", T + timedelta(hours=1), "web", {"cart_id": "c3"}), [a, b], T)
    again = j.enter(defn, p, Event("Product Added", "track", T, "web", {"cart_id": "c1"}), [], T).state
    assert len({a.instance_id, b.instance_id, c.state.instance_id}) == 3 and again.instance_id == a.instance_id


def test_segment_changes_from_before_the_entry_take_no_branch_and_meet_no_criterion():
    defn = journey({"a": {"type": "wait", "branches": [{"segment": {"entered": "vip"}, "next": "m"}],
                          "timeout": {"after": "1d", "next": "x"}},
                    "m": {"type": "message", "template": "t", "next": "x"}, "x": {"type": "exit"}},
                   exit=[{"segment": {"exited": "lapsed"}}])  # fmt: skip
    dr = started(defn)
    dr.now = T + timedelta(hours=1)
    dr.give(j.SegmentChanged("lapsed", "exited", T - timedelta(minutes=1), "1"))
    dr.give(j.SegmentChanged("vip", "entered", T - timedelta(minutes=1), "2"))
    assert dr.instances[0].status == "active" and dr.of(j.Send) == []
    dr.give(j.SegmentChanged("vip", "entered", T + timedelta(minutes=1), "3"))
    assert len(dr.of(j.Send)) == 1


# -- processing order and lag ---------------------------------------------------------------------------------------
def test_a_late_input_dates_nothing_before_the_entry():
    """An event stamped before the entry, processed late, meets an exit rule: the exit is dated at the entry at the
    earliest (the time base is max(min(input time, now), entered_at)), never before the instance existed."""
    defn = journey({"a": {"type": "delay", "for": "1d", "next": "x"}, "x": {"type": "exit"}},
                   exit=[{"rule": {"trait": {"name": "dnc", "equals": True}}}])  # fmt: skip
    dr = started(defn)
    dr.person = Person("p1", state={"traits": {"dnc": True}})
    dr.now = T + timedelta(hours=2)
    dr.give(event("Imported", T - timedelta(hours=1)))
    s = dr.instances[0]
    assert s.exit_reason == "exit[0] met" and s.exited_at == T
    assert [r.at for r in dr.of(j.Record)] == [T, T, T]  # entered, waiting, exited
    # a stop reached by a late input is dated at the entry too
    dr = started(journey({"a": {"type": "delay", "for": "1d", "next": "x"}, "x": {"type": "exit"}}))
    dr.status, dr.now = "stopped", T + timedelta(hours=2)
    dr.give(event("Imported", T - timedelta(hours=1)))
    assert dr.instances[0].exited_at == T and dr.records("exited")[0].at == T


def test_an_instance_admitted_while_paused_begins_with_its_own_entry_input():
    """Paused: a Signed Up stamped 10:00 is admitted (held), then an event stamped 09:00 arrives late and is held for
    the new instance too. On resume the 09:00 event comes first: it happened before the instance existed and changes
    nothing; the instance begins with its entry event, dated 10:00, as the simulator (inputs in time order) would.
    Begun by the 09:00 event instead, the entry event would come next as an ordinary input and meet the exit."""
    defn = d.parse({"id": "j", "entry": {"event": {"event": "Signed Up"}}, "exit": [{"event": {"event": "Signed Up"}}],
                    "start": "a", "nodes": {"a": {"type": "delay", "for": "1h", "next": "m"},
                                            "m": {"type": "message", "template": "t", "next": "x"},
                                            "x": {"type": "exit"}}})  # fmt: skip
    dr = Driver(defn, Person("p1"), T + timedelta(hours=1), status="paused")
    dr.give(event("Signed Up", T + timedelta(hours=1)))
    dr.give(event("Other", T))
    assert len(dr.pending) == 2 and dr.commands == []
    dr.now = T + timedelta(hours=3)
    dr.resume()
    assert [r.at for r in dr.records("entered")] == [T + timedelta(hours=1)]
    assert dr.instances[0].status == "active" and [t.at for t in dr.of(j.SetTimer)] == [T + timedelta(hours=2)]
    dr.run_until(T + timedelta(hours=3))
    assert len(dr.of(j.Send)) == 1


def test_a_holdout_that_converts_exits_like_a_finished_treated_person():
    """exit_on_goal: false. The treated arm reaches its exit node at once (tracking) and exits on conversion; the
    holdout, with nothing left to measure either, exits on conversion too: both arms may enter again alike."""
    split = {
        "type": "split",
        "arms": [{"name": "treat", "weight": 50, "next": "x"}, {"name": "control", "weight": 50, "holdout": True}],
    }
    defn = journey({"a": split, "x": {"type": "exit"}}, goal={"event": {"event": "Paid"}, "within": "7d"},
                   exit_on_goal=False)  # fmt: skip
    seen = set()
    for n in range(30):
        dr = started(defn, Person(f"p{n}"))
        seen.add(dr.instances[0].arms["a"])
        dr.now = T + timedelta(days=1)
        dr.give(event("Paid", dr.now))
        s = dr.instances[0]
        assert (s.status, s.exit_reason, s.converted_at) == ("exited", "goal reached", dr.now), s.arms
        assert dr.timers == {}
    assert seen == {"treat", "control"}


GOAL_PAID = {"event": {"event": "Order Completed"}, "within": "7d"}
EXIT_BIG = [{"event": {"event": "Order Completed", "where": [{"property": "total", "gt": 10}]}}]
TRACKING = {"m": {"type": "message", "template": "t", "next": "e"}, "e": {"type": "exit"}}
HOLDOUT = {"m": {"type": "message", "template": "t", "next": "s"}, "s": {"type": "split", "seed": "x", "arms": [
    {"name": "a", "weight": 50, "next": "e"}, {"name": "h", "weight": 50, "holdout": True}]}, "e": {"type": "exit"}}


@pytest.mark.parametrize(("nodes", "state"),
                         [(TRACKING, ("tracking", "goal_window")), (HOLDOUT, ("active", "holdout"))])  # fmt: skip
def test_a_conversion_withdraws_with_exit_on_goal_false_only_when_an_exit_criterion_holds_too(nodes, state):
    """(review) At the end of her path, or held out after her message: an order of 5 is the goal alone and keeps
    the message; an order of 20 is the goal and the exit criterion, and withdraws it."""
    defn = d.parse({"id": "j", "entry": {"api": {"key": "k"}}, "start": "m", "nodes": nodes, "goal": GOAL_PAID,
                    "exit_on_goal": False, "exit": EXIT_BIG})  # fmt: skip

    def exit_on(total: float) -> tuple[j.Exit, str]:
        for n in range(200):  # a person in the wanted state (the holdout arm is a bucket of her id)
            dr = started(defn, Person(f"p{n}"))
            if (dr.instances[0].status, dr.instances[0].waiting) == state:
                break
        (sent,) = dr.of(j.Send)
        dr.now = T + timedelta(hours=1)
        dr.give(event("Order Completed", dr.now, total=total))
        (ex,) = dr.of(j.Exit)
        return ex, sent.key

    assert exit_on(5)[0] == j.Exit("goal reached", ())
    ex, key = exit_on(20)
    assert ex == j.Exit("goal reached", (key,))


@pytest.mark.parametrize("reentry", ["after_exit", {"cooldown": "1h"}])
def test_an_entry_stamped_before_the_last_exit_is_refused(reentry):
    """The first instance runs 09:00 to 11:00. A start stamped 10:30 and processed at 12:00 would overlap it; the
    simulator, giving inputs in time order, found her in the journey at 10:30 and refused it."""
    defn = journey({"a": {"type": "delay", "for": "2h", "next": "x"}, "x": {"type": "exit"}}, reentry=reentry)
    dr = started(defn)
    dr.run_until(T + timedelta(hours=2))
    assert dr.instances[0].exited_at == T + timedelta(hours=2)
    now = T + timedelta(hours=3)
    late = j.enter(defn, dr.person, j.Start("s2", T + timedelta(hours=1, minutes=30), {"k": "y"}), dr.instances, now)
    assert late.state is None and "before the person's last exit" in late.reason
    at_exit = j.enter(defn, dr.person, j.Start("s3", T + timedelta(hours=2), {"k": "z"}), dr.instances, now)
    assert at_exit.state is not None and at_exit.state.entered_at == T + timedelta(hours=2)


def test_rules_are_evaluated_at_the_transition_time_not_at_its_processing():
    """A condition "ordered within the last hour" at a delay's end (11:00), with an order at 10:30: processed at
    once or an hour late (the timer claimed late), the answer is the one at 11:00, as in the simulator."""
    defn = journey({"a": {"type": "delay", "for": "2h", "next": "c"},
                    "c": {"type": "condition", "if": {"performed": {"event": "Order Completed", "window": "1h"}},
                          "then": "x", "else": "m"},
                    "m": {"type": "message", "template": "t", "next": "x"}, "x": {"type": "exit"}})  # fmt: skip
    order = Event("Order Completed", "track", T + timedelta(hours=1, minutes=30), "web", {}, "o1")
    for lag in (timedelta(0), timedelta(hours=1)):
        dr = Driver(defn, Person("p1", events=(order,)), T, lag=lag)
        dr.give(j.Start("s1", T, {"k": "x"}))
        dr.run_until(T + timedelta(hours=3))
        assert [(r.node, r.branch) for r in dr.records("step") if r.node == "c"] == [("c", "then")], lag
        assert dr.of(j.Send) == []


# -- a merge gave her another profile's instances ------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _merged_instances(draw):
    out = []
    for i in range(draw(st.integers(0, 6))):
        out.append(j.State(instance_id=f"ji_{i}", journey_id="j", version=1, profile_id="p",
                           entered_at=T + timedelta(minutes=draw(st.integers(0, 3))), entry={"kind": "event"},
                           key=draw(st.sampled_from(["A", "B", None])),
                           status=draw(st.sampled_from(["new", "active", "tracking", "exited"]))))  # fmt: skip
    return out


@settings(max_examples=300, deadline=None)
@given(_merged_instances(), st.sampled_from(["never", "after_exit", "per_key", {"cooldown": "1d"}]))
def test_after_a_merge_one_instance_per_person_or_key_value_goes_on(instances, reentry):
    """Exactly the live duplicates exit: at most one live instance is left (once at a time) or one per key value
    (``per_key``), and it is the first entered of those it stood with."""
    entry = {"event": {"event": "Browse", "key": "k"}} if reentry == "per_key" else {"event": {"event": "Browse"}}
    defn = d.parse({"id": "j", "entry": entry, "reentry": reentry, "start": "a", "nodes": {"a": {"type": "exit"}}})
    gone = j.superseded(defn, instances)
    live = [s for s in instances if s.status != "exited"]
    assert gone <= {s.instance_id for s in live}
    kept = [s for s in live if s.instance_id not in gone]

    def group(s):
        return s.key if reentry == "per_key" else None

    assert len({group(s) for s in kept}) == len(kept) == len({group(s) for s in live})
    for s in live:
        (first,) = [k for k in kept if group(k) == group(s)]
        assert (first.entered_at, first.instance_id) <= (s.entered_at, s.instance_id)


def test_a_merged_duplicate_exits_and_withdraws_what_it_queued():
    defn = journey({"a": {"type": "delay", "for": "1h", "next": "b"}, "b": {"type": "exit"}})
    person = Person("p")
    adm = j.enter(defn, person, j.Start("s1", T, {"k": "x"}), [], T)
    s, _ = j.step(defn, adm.state, j.Start("s1", T, {"k": "x"}), j.Context(T, person))
    s.sent["ji:1"] = "m"  # as if it had queued a message before
    ctx = j.Context(T + timedelta(minutes=1), person)
    same, cmds = j.step(defn, s, j.Merged(T + timedelta(minutes=1)), ctx)
    assert same == s and cmds == ()  # not superseded: nothing happens to it
    out, cmds = j.step(defn, s, j.Merged(T + timedelta(minutes=1), frozenset({s.instance_id})), ctx)
    assert out.status == "exited" and out.exit_reason.startswith("merged")
    assert [type(c) for c in cmds] == [j.CancelTimer, j.Record, j.Exit]
    assert cmds[-1].withdraw == tuple(s.sent)


def test_after_a_merge_the_later_of_two_exited_instances_with_a_message_waiting_withdraws_it():
    """Two instances whose messages still wait (quiet hours): the later one withdraws its own when its version would
    not have admitted it beside the first (never; after_exit while the first was still in it; within a cool-down;
    the same key value); a live one is returned to exit by ``Merged``. A re-entry the journey allows stays
    (review), one whose message went out has nothing to withdraw, and at one instant the one that left first
    comes first."""

    def journey(reentry, key=None):
        entry = {"event": "Browse", **({"key": key} if key else {})}
        return d.parse({"id": "n", "entry": {"event": entry}, "reentry": reentry, "start": "m",
                        "nodes": {"m": {"type": "message", "template": "t", "channel": ["in_app"],
                                        "kind": "marketing", "next": "x"}, "x": {"type": "exit"}}})  # fmt: skip

    def inst(iid, minute, out=None, status="exited", key=None, version=1):
        at = datetime(2026, 3, 2, 9, tzinfo=UTC) + timedelta(minutes=minute)
        gone = None if status != "exited" else at + timedelta(minutes=out or 0)
        return j.State(instance_id=iid, journey_id="n", version=version, profile_id="p", status=status, node="x",
                       entered_at=at, entry={}, key=key, sent={f"{iid}:1": "m"}, exited_at=gone)

    def dups(defn, instances, pending):
        return j.superseded_exited(lambda _v: defn, instances, pending)

    waiting = {"a:1": "x", "b:1": "x", "c:1": "x"}
    a, b = inst("a", 0, out=30), inst("b", 5)  # b entered while a was still in it (a left at 30)
    assert dups(journey("never"), [b, a], waiting) == ({"b": ("b:1",)}, frozenset())
    assert dups(journey("after_exit"), [a, b], waiting) == ({"b": ("b:1",)}, frozenset())
    assert dups(journey("never"), [a, b], {"a:1": "x"}) == ({}, frozenset())  # b's went out: nothing to withdraw
    later = inst("c", 60)  # entered after a had left: a re-entry after_exit allows
    assert dups(journey("after_exit"), [a, later], waiting) == ({}, frozenset())
    assert dups(journey({"cooldown": "2h"}), [a, later], waiting) == ({"c": ("c:1",)}, frozenset())  # within 2 h
    assert dups(journey({"cooldown": "30m"}), [a, later], waiting) == ({}, frozenset())
    live = inst("c", 9, status="active")
    assert dups(journey("after_exit"), [a, live], waiting) == ({}, frozenset({"c"}))  # Merged's to end
    x, y, z = inst("a", 0, key="A"), inst("b", 5, key="B"), inst("c", 9, key="A")
    assert dups(journey("per_key", key="cart"), [x, y, z], waiting) == ({"c": ("c:1",)}, frozenset())
    # each by its own version: v1 let her in twice (after_exit); v2 adds an entry key (review)
    v1, v2 = journey("after_exit"), journey("after_exit", key="cart")
    p, q = inst("a", 0, out=1), inst("b", 60)
    assert j.superseded_exited(lambda v: {1: v1, 2: v2}[v], [p, q], waiting) == ({}, frozenset())
    # a done one (its message sent) still makes another profile's waiting copy a duplicate, and her allowed
    # re-entry after it stays, live or exited (review)
    done, copy = inst("a", 0, out=10), inst("b", 5, out=3)
    again_live, again_gone = inst("c", 31, status="active"), inst("c", 31, out=1)
    only_b = {"b:1": "x", "c:1": "x"}
    assert dups(journey("never"), [done, copy], only_b) == ({"b": ("b:1",)}, frozenset())
    assert dups(journey({"cooldown": "30m"}), [done, copy, again_live], only_b) == ({"b": ("b:1",)}, frozenset())
    assert dups(journey({"cooldown": "30m"}), [done, copy, again_gone], only_b) == ({"b": ("b:1",)}, frozenset())
    # one instant: entered and left at 9:00, entered again at 9:00 (after_exit admits it), whatever the ids' order
    first, again = inst("z", 0, out=0), inst("b", 0, out=10)
    assert dups(journey("after_exit"), [again, first], waiting) == ({}, frozenset())
