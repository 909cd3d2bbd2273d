"""A migration (``publish(..., migrate={old: new})``) is checked against the definitions whoever is inside: an
unknown old or new node, a node nobody waits at, or a move to another kind of node is a 400 naming
``migrate.<old node>``, with nobody inside as with people waiting there (found by the hostile-input probe: with
nobody inside, any mapping was accepted)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.errors import ChorusError
from chorus.journeys import definition as d
from chorus.journeys import manage
from tests.journeys.conftest import T0

V1 = {
    "id": "nurture", "entry": {"api": {}}, "start": "hello",
    "nodes": {
        "hello": {"type": "message", "template": "welcome", "channel": "in_app", "next": "pause"},
        "pause": {"type": "delay", "for": "1d", "next": "listen"},
        "listen": {"type": "wait", "branches": [{"name": "bought", "event": {"event": "Order Completed"},
                                                 "next": "done"}],
                   "timeout": {"after": "2d", "next": "done"}},
        "done": {"type": "exit"},
    },
}  # fmt: skip
V2 = {
    **V1, "start": "hello",
    "nodes": {
        "hello": V1["nodes"]["hello"],
        "rest": {"type": "delay", "for": "12h", "next": "watch"},
        "watch": {**V1["nodes"]["listen"]},
        "done": {"type": "exit"},
    },
}  # fmt: skip
V2["nodes"]["hello"] = {**V1["nodes"]["hello"], "next": "rest"}


def publish(engine, ws, raw, **kw):
    with engine.begin() as conn:
        return manage.publish(conn, ws, raw, T0, **kw)


REFUSED = [
    ({"nope": "nope2"}, "migrate.nope", "no node 'nope' in any published version"),
    ({"pause": "nope2"}, "migrate.pause", "no node 'nope2' in the new version"),
    ({"hello": "done"}, "migrate.hello", "'hello' is a message node: only people waiting at a delay or a wait"),
    ({"done": "done"}, "migrate.done", "'done' is an exit node"),
    ({"pause": "watch"}, "migrate.pause", "people at 'pause' (a delay) can move only to a node of the same waiting"),
    ({"listen": "rest"}, "migrate.listen", "not to 'rest' (a delay)"),
    ({"listen": "hello"}, "migrate.listen", "not to 'hello' (a message)"),
    ({"pause": "rest", "x" * 65: "rest"}, "migrate", "is not a node id"),
    ({"pause": "a b"}, "migrate.pause", "'a b' is not a node id"),
]


@pytest.mark.parametrize(("moves", "field", "why"), REFUSED, ids=[f for _, f, _ in REFUSED])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_bad_migration_is_refused_with_nobody_inside(engine, ws, moves, field, why, dry_run):
    publish(engine, ws, V1)
    with pytest.raises(ChorusError) as exc:
        publish(engine, ws, V2, migrate=moves, dry_run=dry_run)
    assert exc.value.field == field and why in exc.value.message, exc.value.message
    assert exc.value.message.startswith(f"{field}: ")
    assert len(exc.value.message) < 300  # a long id is not echoed whole


def test_a_good_migration_with_nobody_inside_is_accepted(engine, ws):
    publish(engine, ws, V1)
    got = publish(engine, ws, V2, migrate={"pause": "rest", "listen": "watch"})
    assert (got["version"], got["moving"], got["people_inside"]) == (2, 0, 0)
    # a node only an older version had (people may be left on it) can still be moved from
    v3 = {**V2, "nodes": {**V2["nodes"], "rest": {"type": "delay", "for": "6h", "next": "watch"}}}
    assert publish(engine, ws, v3, migrate={"pause": "rest"})["version"] == 3


def test_a_migration_of_a_new_journey_is_refused(engine, ws):
    with pytest.raises(ChorusError) as exc:
        publish(engine, ws, V1, migrate={"pause": "pause"})
    assert exc.value.field == "migrate"


# -- the rule alone, on generated mappings ----------------------------------------------------------------------
OLD, NEW = d.parse(V1), d.parse(V2)
KINDS = {"delay": d.Delay, "wait": d.Wait}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from([*OLD.by_id, *NEW.by_id, "nope"]),
                       st.sampled_from([*OLD.by_id, *NEW.by_id, "nope"]), max_size=4))  # fmt: skip
def test_a_migration_is_accepted_exactly_when_each_move_is_between_nodes_of_one_waiting_kind(moves):
    ok = all(o in OLD.by_id and n in NEW.by_id and type(OLD.node(o).body) in KINDS.values()
             and type(OLD.node(o).body) is type(NEW.node(n).body) for o, n in moves.items())  # fmt: skip
    try:
        manage.check_migration([OLD], NEW, moves)
    except ChorusError as exc:
        assert not ok
        bad = next(o for o, n in moves.items() if not (
            o in OLD.by_id and n in NEW.by_id and type(OLD.node(o).body) in KINDS.values()
            and type(OLD.node(o).body) is type(NEW.node(n).body)))  # fmt: skip
        assert exc.field == f"migrate.{bad}" and exc.message.startswith(f"migrate.{bad}: ")
    else:
        assert ok
