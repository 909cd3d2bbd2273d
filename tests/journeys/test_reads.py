"""A claim reads of a person only what its journey versions can evaluate (decision 0043): ``runtime.Reads`` of the
versions, at the earliest instant the claim may evaluate.

* pure: the needs only widen as the instant goes back (so the earliest instant's read serves every later one), and
  random journeys (random segment rules in their goal, exits and conditions) given random inputs — late, backdated,
  processed with a lag — decide exactly the same with the person cut to those needs as with her whole history;
* on the store (SQLite and PostgreSQL): a claim's read is that cut, in SQL; a backdated entry, a late timer and an
  input earlier than the claim was told still see what the whole history would have shown them.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus.identity.resolver import Resolver
from chorus.journeys import definition as d
from chorus.journeys import dispatch, runtime
from chorus.journeys import interpreter as j
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.needs import needs, restrict
from chorus.segments.person import Event, MessageRecord, Person
from chorus.store.tables import journey_records
from tests.identity.helpers import profile_of
from tests.journeys import conftest
from tests.journeys import test_properties as jp
from tests.journeys.driver import Driver
from tests.journeys.generate import definition
from tests.journeys.test_runtime import ev, instances, journey_messages, publish, send, settle
from tests.segments import test_compile as comp
from tests.segments import test_properties as props
from tests.segments.test_needs import people as people_with_events

P0 = props.T0  # the segment property tests' instant (their random histories are around it)
T0 = conftest.T0  # the runtime's tests' clock
NAMES = [*props.EVENTS, "Product Added", "Order Completed"]


# -- pure ------------------------------------------------------------------------------------------------------------
@props.SETTINGS
@given(st.lists(comp.rules, min_size=1, max_size=3), people_with_events, props.nows, st.integers(0, 24 * 40))
def test_needs_only_widen_as_the_instant_goes_back(raws, who, now, back):
    """``needs`` is monotone: what it keeps at an instant, it keeps at any earlier one. So the needs at the earliest
    instant a claim may evaluate read at least what every later evaluation would have read for itself."""
    rules = [r.parse(raw) for raw in raws]
    early, late = needs(rules, now - timedelta(hours=back)), needs(rules, now)
    kept_late = restrict(who, late)
    kept_early = restrict(who, early)
    assert {e.id for e in kept_late.events} <= {e.id for e in kept_early.events}
    assert set(kept_late.messages) <= set(kept_early.messages)
    assert (late.computed, late.addresses, late.lists) == (early.computed, early.addresses, early.lists)


def test_what_a_version_reads():
    defn = d.parse({
        "id": "r", "entry": {"event": {"event": "Product Added"}}, "start": "c",
        "goal": {"event": {"event": "Order Completed", "channel": "store"}, "within": "7d"},
        "exit": [{"rule": {"performed": {"event": "Viewed", "window": "1d"}}}, {"event": {"type": "page"}},
                 {"segment": {"entered": "vip"}}],
        "nodes": {
            "c": {"type": "condition", "if": {"message": {"status": "opened", "window": "3d"}}, "then": "w",
                  "else": "x"},
            "w": {"type": "delay", "until": {"trait": "computed.next_order"}, "next": "x"},
            "x": {"type": "exit"},
        },
    })  # fmt: skip
    reads = runtime.Reads.of(defn)
    assert reads.names == {"Order Completed"} and reads.types == {"page"} and not reads.any_event
    assert reads.computed and len(reads.rules) == 2
    need = reads.at(P0)
    assert need.names == {"Order Completed": P0, "Viewed": P0 - timedelta(days=1)}
    assert need.types == {"page": P0} and need.messages == P0 - timedelta(days=3)
    assert need.computed and not need.addresses and not need.lists
    # a journey whose criteria and rules read nothing of her history reads none of it
    nothing = runtime.Reads.of(d.parse({"id": "n", "entry": {"api": {}}, "start": "x",
                                        "nodes": {"x": {"type": "exit"}}}))  # fmt: skip
    assert nothing.at(P0).parts() == ("segments",)
    assert runtime.Reads.union([reads, runtime.Reads(everything=True)]).at(P0) is None


class StoreDriver(Driver):
    """The driver with the runtime's view of an entry: ``before_entry`` is the person's events (as read from the
    store) that were given already (``PersonRun.before_entry``), not the driver's own list of given events."""

    def ctx(self) -> j.Context:
        return replace(super().ctx(), before_entry=self._before())

    def _before(self) -> tuple[Event, ...]:
        ids = {e.id for e in self.given}
        return tuple(e for e in self.person.events if e.id in ids)

    def give(self, inp: j.Input) -> list[j.Command]:
        out: list[j.Command] = []
        versions = {s.version: self.defn for s in self.instances} | {1: self.defn}
        outcomes = dispatch.offer(versions, 1, self.person, self.instances, inp, self.now + self.lag,
                                  status=self.status, before_entry=self._before())  # fmt: skip
        for o in outcomes:
            out += self._keep(o, inp)
        if isinstance(inp, Event) and not any(o.held for o in outcomes):
            self.given.append(inp)
        return out


@st.composite
def journeys_with_rules(draw) -> dict:
    """A generated journey whose goal, exits and conditions are random segment rules and event criteria over the
    names the random histories hold, and whose delays may wait until a computed trait."""
    doc = copy.deepcopy(draw(definition()))

    def criterion() -> dict:
        kind = draw(st.sampled_from(["rule", "rule", "event", "type", "segment"]))
        if kind == "rule":
            return {"rule": draw(comp.rules)}
        if kind == "event":
            return {"event": {"event": draw(st.sampled_from(NAMES)),
                              **draw(st.sampled_from([{}, {"channel": "store"}, {"where": [{"property": "k",
                                                                                             "equals": "x"}]}]))}}
        if kind == "type":
            return {"event": draw(st.sampled_from([{"type": "page"}, {"type": "identify"},
                                                   {"type": "track", "channel": "web"}]))}  # fmt: skip
        return {"segment": {"entered": "vip"}}

    if "goal" in doc or draw(st.booleans()):
        doc["goal"] = {**criterion(), **({"within": doc["goal"]["within"]} if "within" in doc.get("goal", {}) else {})}
        doc.setdefault("exit_on_goal", draw(st.booleans()))
    if "exit" in doc or draw(st.booleans()):
        doc["exit"] = [criterion() for _ in range(draw(st.integers(1, 2)))]
    for node in doc["nodes"].values():
        if node["type"] == "condition" and "if" in node:
            node["if"] = draw(comp.rules)
        elif node["type"] == "delay" and "until" in node and draw(st.booleans()):
            node["until"] = {"trait": "computed.clv"}
    return doc


script = st.lists(
    st.one_of(
        # an event of the person, stamped now or back in time (an import, a late device)
        st.tuples(st.just("event"), st.sampled_from(NAMES), st.sampled_from(props.CHANNELS),
                  st.sampled_from([0, 0, 0, 90, 3000, 20000]), st.sampled_from(["x", "y", 1])),
        st.tuples(st.just("segment"), st.sampled_from(["vip", "lapsed"]), st.sampled_from(["entered", "exited"])),
        st.tuples(st.just("message"), st.sampled_from(["opened", "clicked"]), st.integers(0, 5)),
        st.tuples(st.just("time"), st.sampled_from([1, 30, 600, 1440, 4320, 20000])),
        st.tuples(st.just("start"), st.sampled_from([0, 0, 600, 4000])),
        st.tuples(st.just("entry"), st.sampled_from([0, 0, 120, 5000])),
        st.tuples(st.just("pause"), st.booleans()),
    ),
    max_size=25,
)  # fmt: skip


def _inputs(defn: d.Definition, items: list) -> list:
    """The script as (clock advance | input) steps, with every event's own time fixed in advance: the clock only
    moves by the script's own steps, so the person's stored history (which holds these events) is known before
    the run, as the store knows it before a claim reads her."""
    now, out = P0, []
    for n, item in enumerate(items):
        kind = item[0]
        if kind == "time":
            now += timedelta(minutes=item[1])
            out.append(("time", now))
        elif kind == "event":
            _, name, channel, back, k = item
            out.append(("give", Event(name, "page" if name == "Viewed" and n % 2 else "track",
                                      now - timedelta(minutes=back), channel, {"k": k, "cart_id": "c1"}, f"in{n}")))
        elif kind == "segment":
            out.append(("give", j.SegmentChanged(item[1], item[2], now, f"c{n}")))
        elif kind == "message":
            out.append(("message", item[1], item[2], now, n))
        elif kind == "start":
            out.append(("give", j.Start(f"s{n}", now - timedelta(minutes=item[1]), {"cart_id": "c1"})))
        elif kind == "entry":
            out.append(("give", jp.entry_input(defn, n, now - timedelta(minutes=item[1]))))
        else:
            out.append(("pause", item[1]))
    return out


# her history close to the inputs' times (within days, as rule windows are), so that a horizon a little too late
# would change an answer; messages likewise
history = st.lists(st.builds(
    lambda name, page, m, ch, k, i: Event(name, "page" if page else "track", P0 + timedelta(minutes=m), ch,
                                          {"k": k, "v": i % 7}, f"h{i}"),
    st.sampled_from(NAMES), st.booleans(), st.integers(-6000, 3000), st.sampled_from(props.CHANNELS),
    st.sampled_from(["x", "y", 1]), st.integers(0, 10**6)), max_size=25, unique_by=lambda e: e.id)  # fmt: skip
statuses = st.lists(st.builds(
    lambda m, status, t, minutes: MessageRecord(m, status, P0 + timedelta(minutes=minutes), "email", t),
    st.sampled_from(["m1", "m2"]), st.sampled_from(props.STATUSES), st.sampled_from(["t1", "t2"]),
    st.integers(-6000, 3000)), max_size=6)  # fmt: skip


def _run(defn: d.Definition, who: Person, steps: list, lag: timedelta) -> tuple:
    dr = StoreDriver(defn, who, P0, lag=lag)
    for step in steps:
        if step[0] == "time":
            dr.run_until(step[1])
        elif step[0] == "give":
            dr.give(step[1])
        elif step[0] == "message":
            sent = dr.of(j.Send)
            if sent:
                dr.give(j.MessageEvent(step[1], f"m{step[4]}", defn.id, sent[step[2] % len(sent)].key, step[3]))
        elif step[1] and dr.status == "active":
            dr.status = "paused"
        elif dr.status == "paused":
            dr.resume()
    if dr.status == "paused":
        dr.resume()
    dr.run_until(dr.now + timedelta(days=60))
    return dr.commands, [j.state_to_json(s) for s in dr.instances]


def _when(step) -> object:
    inp = step[1]
    return j.input_time(inp) if step[0] == "give" else step[3] if step[0] == "message" else None


@jp.SETTINGS
@given(journeys_with_rules(), script, props.people(), history, statuses,
       st.sampled_from([timedelta(0), timedelta(minutes=37), timedelta(days=2)]))  # fmt: skip
def test_a_journey_decides_the_same_on_what_its_reads_keep_as_on_the_whole_history(doc, items, base, past, sent,
                                                                                     lag):  # fmt: skip
    """Random journeys, histories and inputs (late, backdated, held while paused, processed ``lag`` after their
    time): the commands (their dates, keys, branches) and the states are the same whether the person is her whole
    history or only what ``Reads.at(earliest input time)`` keeps of it, as a claim reads her."""
    defn = d.parse(doc)
    steps = [("give", jp.entry_input(defn, -1, P0)), *_inputs(defn, items)]
    given_events = [s[1] for s in steps if s[0] == "give" and isinstance(s[1], Event)]
    # the store holds her history and the events given as inputs (some stored before they are given)
    mine = sorted([*base.events, *past, *given_events], key=lambda e: (e.at, e.id))
    msgs = sorted([*base.messages, *sent], key=lambda m: m.at)
    who = replace(base, id="p1", events=tuple(mine), messages=tuple(msgs))
    earliest = min(t for t in map(_when, steps) if t is not None)
    need = runtime.Reads.of(defn).at(earliest)
    assert _run(defn, restrict(who, need), steps, lag) == _run(defn, who, steps, lag)


def test_an_entry_sees_the_goal_events_given_before_it_from_its_own_time():
    """A purchase given before the cart add it follows (an import, stamped 30 minutes later than the add): the entry
    converts at once on the cut person as on the whole one, because the goal's events are read from the earliest
    input's time, not from the claim's now nor from a rule's window."""
    defn = d.parse({"id": "cart", "entry": {"event": {"event": "Product Added"}}, "start": "w",
                    "goal": {"event": {"event": "Order Completed"}, "within": "1d"},
                    "nodes": {"w": {"type": "delay", "for": "1h", "next": "x"}, "x": {"type": "exit"}}})  # fmt: skip
    added = Event("Product Added", "track", P0, "web", {}, "add")
    bought = Event("Order Completed", "track", P0 + timedelta(minutes=30), "store", {}, "buy")
    old = Event("Order Completed", "track", P0 - timedelta(days=3), "store", {}, "old")
    who = Person("p1", events=(old, added, bought))
    steps = [("give", bought), ("give", added)]
    cut = restrict(who, runtime.Reads.of(defn).at(P0))
    assert [e.id for e in cut.events] == ["buy"]
    whole = _run(defn, who, steps, timedelta(hours=2))
    assert _run(defn, cut, steps, timedelta(hours=2)) == whole
    assert [c.kind for _, c in whole[0] if isinstance(c, j.Record)][:2] == ["entered", "converted"]
    # read from the claim's now (the inputs processed 2 hours late), the purchase would be missed
    late = restrict(who, runtime.Reads.of(defn).at(P0 + timedelta(hours=2)))
    assert _run(defn, late, steps, timedelta(hours=2)) != whole


# -- on the store ----------------------------------------------------------------------------------------------------
READER = {
    "id": "reader", "name": "reads a little", "entry": {"event": {"event": "Product Added"}}, "start": "c",
    "goal": {"event": {"event": "Order Completed"}, "within": "7d"},
    "exit": [{"rule": {"performed": {"event": "Coupon Used", "window": "2d"}}}],
    "nodes": {
        "c": {"type": "condition", "if": {"performed": {"event": "Page Viewed", "window": "1d"}}, "then": "send",
              "else": "done"},
        "send": {"type": "message", "template": "offer", "channel": ["in_app"], "kind": "marketing", "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip


def _history(engine, ws, at):
    """Her history: page views and a name nobody reads from 10 days back to ``at``, two coupons, an order."""
    hours = (1, 20, 30, 70, 240)
    old = [ev(name, at - timedelta(hours=h)) for h in hours for name in ("Page Viewed", "Newsletter Read")]
    coupons = [ev("Coupon Used", at - timedelta(hours=h)) for h in (30, 240)]
    send(engine, ws, [*old, *coupons, ev("Order Completed", at - timedelta(hours=3))], at)


def _statements(conn) -> list[str]:
    seen: list[str] = []
    sa.event.listen(conn, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_claim_reads_in_sql_only_what_its_versions_can_evaluate(engine, ws, clock):
    publish(engine, ws, READER)
    _history(engine, ws, T0)
    Resolver(engine).drain()
    pid = profile_of(engine, ws, "user_id:u1")
    since = T0 - timedelta(hours=2)
    with engine.begin() as conn:
        js = runtime.journeys_of(conn, ws)
        seen = _statements(conn)
        claim = runtime.Claim(conn, js, [pid], T0, since)
        read = [q for q in seen if "events.payload" in q and "FROM events" in q]
        full = load.people(conn, ws, [pid], js.ws.identity)[pid]
    need = claim.plan.need
    assert claim.plan.since == since and claim.plan.keys == {("reader", 1)}
    assert need.names == {"Page Viewed": since - timedelta(days=1), "Coupon Used": since - timedelta(days=2),
                          "Order Completed": since}  # fmt: skip
    assert need.messages is None and not need.computed
    person = claim.runs[pid].person
    assert person == restrict(full, need)
    assert sorted({e.name for e in person.events}) == ["Coupon Used", "Page Viewed"]  # the order is before `since`
    assert len(person.events) == 3 and len(full.events) == 13
    (q,) = read  # one statement, by name and time in SQL
    assert "events.event IN" in q and "events.timestamp >=" in q


def _no_read_back(monkeypatch) -> list:
    """The claims' read-backs (:meth:`runtime.Claim.read_back`): none when the callers say how early their inputs go."""
    calls: list = []
    real = runtime.Claim.read_back
    monkeypatch.setattr(runtime.Claim, "read_back", lambda self, run, t: (calls.append(t), real(self, run, t)))
    return calls


def _condition(engine, ws) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(sa.select(journey_records.c.branch).where(
            journey_records.c.workspace_id == ws, journey_records.c.node == "c",
            journey_records.c.kind == "step")).scalars().all()  # fmt: skip


def test_a_backdated_entry_sees_the_history_of_its_own_time(engine, ws, clock, worker, monkeypatch):
    """A cart added 3 days ago reaches the runtime now (an import): its condition is evaluated at the entry's time,
    when she had viewed a page an hour before. The claim reads from that instant on, not from now."""
    publish(engine, ws, READER)
    read_back = _no_read_back(monkeypatch)
    added = T0 - timedelta(days=3)
    send(engine, ws, [ev("Page Viewed", added - timedelta(hours=1))], T0)
    settle(worker)
    send(engine, ws, [ev("Product Added", added, cart_id="A")], T0)
    settle(worker)
    assert _condition(engine, ws) == ["then"] and len(journey_messages(engine, ws, "reader")) == 1
    assert read_back == []  # the consumer said how early its inputs go: the first read was the right one


LATE = {**READER, "id": "late", "start": "wait",
        "nodes": {"wait": {"type": "delay", "for": "1h", "next": "c"}, **READER["nodes"]}}  # fmt: skip


def test_a_late_timer_sees_the_history_of_its_due_time(engine, ws, clock, worker, monkeypatch):
    """The delay ended at 10:00 but no worker ran until three days later: the condition after it is evaluated at
    10:00 (a page viewed at 09:30 is within its day), so the claim reads from the timer's first due time on."""
    publish(engine, ws, LATE)
    read_back = _no_read_back(monkeypatch)
    send(engine, ws, [ev("Product Added", T0, cart_id="A")], T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=30)  # it arrives when it happens (one stamped ahead waits for its time)
    send(engine, ws, [ev("Page Viewed", T0 + timedelta(minutes=30))], T0 + timedelta(minutes=30))
    settle(worker)
    clock.at = T0 + timedelta(days=3)
    assert runtime.due(engine) == 1
    assert _condition(engine, ws) == ["then"] and len(journey_messages(engine, ws, "late")) == 1
    assert read_back == []  # the claim read from the timer's first due time: the first read was the right one


def test_an_input_earlier_than_the_claim_was_told_reads_back(engine, ws, clock):
    """A caller that does not say how early its inputs go (``since``) still gets the right answer: the run reads
    back what the rules can see from the input's time, and only that."""
    publish(engine, ws, {**{k: v for k, v in READER.items() if k != "goal"}, "entry": {"api": {}}})
    _history(engine, ws, T0)
    Resolver(engine).drain()
    pid = profile_of(engine, ws, "user_id:u1")
    start = j.Start("s1", T0 - timedelta(hours=69))  # a page viewed an hour before; no coupon in the 2 days
    with engine.begin() as conn:
        js = runtime.journeys_of(conn, ws)
        run = runtime.person_run(conn, js, pid, T0)  # read for inputs from T0 on
        assert run is not None and run.since == T0
        assert {e.name for e in run.person.events} == {"Page Viewed", "Coupon Used"}
        assert min(e.at for e in run.person.events) >= T0 - timedelta(days=2)
        run.give(start, only=["reader"])
        full = load.people(conn, ws, [pid], js.ws.identity)[pid]
        assert run.since == start.at and run.person == restrict(full, js.needs(run.claim.plan.keys, start.at))
        run.flush()
    assert _condition(engine, ws) == ["then"]  # as the whole history says: read from T0 on, it would be "else"
    (inst,) = instances(engine, ws, "reader")
    assert inst.entered_at.replace(tzinfo=T0.tzinfo) == start.at
