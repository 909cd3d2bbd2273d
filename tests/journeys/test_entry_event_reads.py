"""A journey entered by a segment or a schedule has no entry event: a publish refuses what reads one (``same`` in a
wait branch, the goal or an exit criterion; a condition's ``entry`` test; a delay ``until`` an entry ``property``),
naming it. An outside probe: all passed the dry run and could never match (``same`` false, the condition always
``else``, the delay ``no_date``). An event- or API-entered journey keeps them (a start's data are its entry's)."""

from __future__ import annotations

import pytest

from chorus.errors import ChorusError
from chorus.journeys import manage
from chorus.segments import rules
from chorus.segments import store as segments_store
from tests.journeys.conftest import T0

WAIT = {"type": "wait", "branches": [{"event": {"event": "Order Completed", "same": ["cart_id"]}, "next": "done"}],
        "timeout": {"after": "1d", "next": "done"}}
READS = [
    ({"start": "w", "nodes": {"w": WAIT, "done": {"type": "exit"}}}, "nodes.w.branches[0].event.same"),
    ({"start": "c", "nodes": {"c": {"type": "condition", "entry": {"property": "channel", "equals": "app"},
                                    "then": "done", "else": "done"}, "done": {"type": "exit"}}}, "nodes.c.entry"),
    ({"start": "d", "nodes": {"d": {"type": "delay", "until": {"property": "ship_by"}, "next": "done"},
                              "done": {"type": "exit"}}}, "nodes.d.until.property"),
    ({"start": "done", "nodes": {"done": {"type": "exit"}},
      "goal": {"event": {"event": "Order Completed", "same": ["cart_id"]}}}, "goal.event.same"),
    ({"start": "done", "nodes": {"done": {"type": "exit"}},
      "exit": [{"segment": {"exited": "vip"}},
               {"event": {"event": "Order Completed", "same": ["cart_id"]}}]}, "exit[1].event.same"),
]  # fmt: skip
ENTRIES = [{"segment": "vip"}, {"schedule": {"time": "09:00", "weekdays": ["mon"]}}]


@pytest.fixture
def vip(engine, ws):
    with engine.begin() as conn:
        segments_store.save(conn, ws, "vip", "VIP", rules.parse({"trait": {"name": "plan", "equals": "vip"}}), T0)
    return ws


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize(("body", "field"), READS)
def test_reading_the_entry_event_without_one_is_refused_naming_the_place(engine, vip, entry, body, field):
    for dry in (True, False):
        with engine.begin() as conn, pytest.raises(ChorusError) as caught:
            manage.publish(conn, vip, {"id": "j", "entry": entry, **body}, T0, dry_run=dry)
        assert caught.value.status == 400 and caught.value.field == field, caught.value
        assert "reads the entry event" in caught.value.message


@pytest.mark.parametrize(("body", "field"), READS)
def test_an_event_or_api_entry_may_read_it(engine, vip, body, field):
    for n, entry in enumerate(({"event": {"event": "Product Added"}}, {"api": {}})):
        with engine.begin() as conn:
            manage.publish(conn, vip, {"id": f"ok{n}", "entry": entry, **body}, T0)
