"""A person's activity summary (``segments.summary``, decision 0046): unbounded conditions read counts and
first/last times from her profile state instead of her whole history, and fall back to the events wherever the
summary is not exact. The property test beside the needs (tests/segments/test_needs.py) checks every rule against
the events; these are the cases by example, and the store's side."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise
from chorus.profiles import state as pstate
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate
from chorus.segments.needs import ALL, needs, restrict
from chorus.segments.summary import Summary, summarisable
from chorus.store.tables import profiles
from chorus.timeutil import iso
from tests.segments import test_compile as comp
from tests.segments.people import T0, at, msg, person


def summarised(*messages, **extra):
    who = person(*messages, **extra)
    return who, replace(who, summary=Summary.of(who.state))


def test_ever_ordered_is_read_from_the_summary_without_her_orders():
    orders = [msg(at(days=-d), event="Order Completed", properties={"total": d}) for d in range(1, 40)]
    plain, who = summarised(*orders, msg(at(days=-2), event="Product Viewed"))
    rule = r.parse({"and": [{"performed": {"event": "Order Completed", "times": {"gte": 30}}},
                            {"last_time": {"event": "Order Completed", "within_last": "7d"}},
                            {"first_time": {"event": "Order Completed", "more_than_ago": "30d"}}]})  # fmt: skip
    need = needs([rule], T0)
    assert need.names == {} and not need.events and need.covered(who.summary)
    cut = restrict(who, need)
    assert cut.events == ()  # none of her 39 orders is read
    got = evaluate(rule, cut, T0)
    assert got == evaluate(rule, plain, T0)
    # the last order (a day ago) stops being in the last 7 days six days from now
    assert got.value and got.next_change == at(days=6)


def test_an_event_stamped_after_now_makes_the_count_and_the_last_time_read_the_events():
    plain, who = summarised(msg(at(days=-3), event="Order Completed"), msg(at(days=2), event="Order Completed"))
    once = r.parse({"performed": {"event": "Order Completed", "times": {"eq": 1}}})
    need = needs([once], T0)
    assert not need.covered(who.summary)  # one of them counts only from the day after tomorrow
    cut = restrict(who, need)
    assert len(cut.events) == 2
    assert evaluate(once, cut, T0) == evaluate(once, plain, T0) == (True, at(days=2))
    # the first time is the first whatever comes later
    first = r.parse({"first_time": {"event": "Order Completed", "within_last": "7d"}})
    assert evaluate(first, who, T0) == evaluate(first, plain, T0) == (True, at(days=4))


def test_the_last_channel_with_a_later_event_on_the_same_channel_reads_the_events():
    plain, who = summarised(msg(at(days=-2), event="Viewed", context={"channel": "web"}),
                            msg(at(days=-1), event="Viewed", context={"channel": "store"}),
                            msg(at(days=-1, hours=1), event="Viewed", context={"channel": "web"}),
                            msg(at(days=3), event="Viewed", context={"channel": "web"}))  # fmt: skip
    rule = r.parse({"last_channel": {"equals": "web"}})
    assert not who.summary.channels_settled(T0)
    assert evaluate(rule, who, T0) == evaluate(rule, plain, T0) == (True, None)
    before = at(days=-1, hours=0.5)  # store is the last channel until web's next visit
    assert evaluate(rule, who, before) == evaluate(rule, plain, before) == (False, at(days=-1, hours=1))


def test_a_name_past_the_types_cut_reads_the_events(monkeypatch):
    monkeypatch.setitem(pstate.MAX_NAMES, "track", 2)
    plain, who = summarised(*(msg(at(days=-d), event=name) for d, name in enumerate(["A", "B", "C", "C"], 1)))
    assert who.state["activity"]["cut"] == {"track": "B"}
    for name, known in (("A", True), ("B", True), ("C", False), ("Z", False)):
        sel = r.parse({"performed": {"event": name}}).selection
        assert (who.summary.tally(sel) is not None) == known, name
        rule = r.parse({"performed": {"event": name, "times": {"gte": 2}}})
        cut = restrict(who, needs([rule], T0))
        assert evaluate(rule, cut, T0) == evaluate(rule, plain, T0) == (name == "C", None)


def test_what_a_summary_does_not_answer():
    def sel(body):
        return r.parse({"performed": body}).selection

    assert summarisable(sel({"event": "Order Completed"}))
    assert summarisable(sel({"type": "page"}))
    assert not summarisable(sel({"type": "track"}))  # Chorus' own records are tracks
    assert not summarisable(sel({"event": "Message Opened"}))  # Chorus' own timeline record (reserved name)
    assert not summarisable(sel({"event": "Segment Entered"}))
    assert not summarisable(sel({"event": "Order Completed", "window": "7d"}))
    assert not summarisable(sel({"event": "Order Completed", "channel": "store"}))
    assert not summarisable(sel({"event": "Order Completed", "where": [{"property": "total", "gt": 5}]}))
    sums = r.parse({"aggregate": {"event": "Order Completed", "function": "sum", "property": "total", "gt": 5}})
    assert needs([sums], T0).names == {"Order Completed": ALL}  # a sum reads every order
    assert not needs([sums], T0).summarised


# -- the store ----------------------------------------------------------------------------------------------------
def test_the_store_reads_the_summary_and_falls_back_for_a_state_from_before(engine):
    w = comp.new_workspace(engine)
    orders = [{"type": "track", "event": "Order Completed", "timestamp": iso(T0 - timedelta(days=d)),
               "context": {"channel": "web"}} for d in range(1, 6)]  # fmt: skip
    comp.store_people(engine, w, [{"messages": orders}, {"messages": orders[:2]}])
    ws = w["id"]
    rule = r.parse({"performed": {"event": "Order Completed", "times": {"gte": 3}}})
    need = needs([rule], T0)
    with engine.connect() as conn:
        cfg = workspaces.get(conn, ws).identity
        ids = sorted(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == ws)).scalars())
        got = load.people(conn, ws, ids, cfg, needs=need)
    assert all(p.summary is not None and p.events == () for p in got.values())
    assert {pid for pid, p in got.items() if evaluate(rule, p, T0).value} == comp.agree(engine, ws, rule, T0)
    assert sorted(p.summary.tally(rule.selection).n for p in got.values()) == [2, 5]

    # a profile stored before activity was kept: no summary, so her events are read as before
    old = ids[0]
    with engine.begin() as conn:
        state = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == old)).scalar_one()
        del state["activity"]
        conn.execute(profiles.update().where(profiles.c.id == old).values(state=state))
    with engine.connect() as conn:
        again = load.people(conn, ws, ids, cfg, needs=need)
    assert again[old].summary is None and len([e for e in again[old].events if e.name == "Order Completed"]) in (2, 5)
    assert {pid for pid, p in again.items() if evaluate(rule, p, T0).value} == comp.agree(engine, ws, rule, T0)


def test_the_store_refuses_an_attributed_event_the_summary_would_miss(engine):
    """Events stored already attributed are never folded into the state, so they must be Chorus' own outbound
    records with a reserved name: anything else would be missing from her summary."""
    w = comp.new_workspace(engine)
    by_user = comp.store_people(engine, w, [{"messages": []}])
    pid = by_user["u0"]

    def event(name: str, direction: str | None = "outbound"):
        ctx = {"channel": "internal", **({"direction": direction} if direction else {})}
        ev = normalise({"type": "track", "event": name, "userId": "u0", "messageId": f"own-{name}-{direction}",
                        "timestamp": iso(T0), "context": ctx}, received_at=T0, source_kind="internal",
                       require_ids=False)  # fmt: skip
        assert isinstance(ev, Stored)
        return ev

    with engine.begin() as conn:
        src = workspaces.internal_source(conn, w["id"], "internal", "test")
        for bad in (event("Order Completed"), event("Segment Entered", direction=None)):
            with pytest.raises(ValueError, match="reserved name"):
                ingest.store(conn, src, [bad], [], T0, {bad.message_id: pid})
        ok = event("Segment Entered")
        assert ingest.store(conn, src, [ok], [], T0, {ok.message_id: pid}).accepted == 1
