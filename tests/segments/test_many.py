"""``members_many`` against the reference evaluator and against ``members``, on SQLite and PostgreSQL.

Random rule sets (the compiler tests' random rules, with references between them and to stored segments) on random
people stored through the real paths: for each id, the answer is ``{p : evaluate(rule, person(p), now).value}``
where the person's segments of the same call are their answers at ``now`` (taken in dependency order), and the
stored memberships for the others.
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus import workspaces
from chorus.errors import ChorusError
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.compile import members, zones_of
from chorus.segments.evaluate import evaluate
from chorus.segments.many import _groups, _order, members_many
from chorus.store import bulk
from chorus.store.tables import profiles
from tests.segments import test_compile as tc
from tests.segments import test_properties as props
from tests.segments.test_batch import spans

T0 = props.T0


def expected_many(conn, ws: str, parsed: dict, now, topics=None) -> dict[str, set[str]]:
    """The reference: the evaluator, in dependency order, each person's in-call segments being this call's answers."""
    cfg = workspaces.get(conn, ws).identity
    ids = list(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == ws)).scalars())
    people = load.people(conn, ws, ids, cfg)
    inside: dict[str, set[str]] = {pid: set() for pid in people}
    out: dict[str, set[str]] = {}
    for sid in _order(parsed):
        out[sid] = set()
        for pid, who in people.items():
            segs = (who.segments - parsed.keys()) | inside[pid]
            if evaluate(parsed[sid], dataclasses.replace(who, segments=frozenset(segs)), now, topics=topics).value:
                out[sid].add(pid)
        for pid in out[sid]:
            inside[pid].add(sid)
    return out


@st.composite
def rule_sets(draw):
    """Two to five rules ``n1``...; rule ``ni`` may refer to an earlier ``nj`` (in the call) or to ``s1``/``s2``
    (not in the call: the stored memberships, as the random rules' own references)."""
    n = draw(st.integers(2, 5))
    out = {}
    for i in range(1, n + 1):
        rule = draw(tc.rules)
        refs = [f"n{j}" for j in range(1, i)] + ["s1", "s2"]
        if draw(st.booleans()):
            ref = {"segment": draw(st.sampled_from(refs))}
            rule = {draw(st.sampled_from(["and", "or"])): [rule, ref]} if draw(st.booleans()) else ref
        out[f"n{i}"] = rule
    if draw(st.booleans()):  # the same rule twice: its leaves compile once
        out[f"n{n + 1}"] = out["n1"]
    return out


@tc.SETTINGS
@given(st.lists(tc.a_person(), min_size=1, max_size=4), rule_sets(), props.nows, st.sampled_from([200, 2, 1]),
       st.lists(st.integers(0, 3), max_size=3))  # fmt: skip
def test_many_rules_are_exactly_the_evaluators(engine, people, raws, now, max_leaves, cuts):
    """And for a span of profile ids (the engine's batch, chunk by chunk): the answer for the span's people, and
    only theirs, whatever the cut."""
    w = tc.new_workspace(engine)
    tc.store_people(engine, w, people)
    parsed = {sid: r.parse(raw) for sid, raw in raws.items()}
    with engine.connect() as conn:
        want = expected_many(conn, w["id"], parsed, now, tc.TOPICS)
        got = members_many(conn, w["id"], parsed, now, tc.TOPICS, max_leaves=max_leaves)
        assert got == want, {sid: sorted(got[sid] ^ want[sid]) for sid in got if got[sid] != want[sid]}
        ids = sorted(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == w["id"])).scalars())
        for span in spans(ids, cuts):
            mine = {p for p in ids if (span[0] is None or p > span[0]) and p <= span[1]}
            part = members_many(conn, w["id"], parsed, now, tc.TOPICS, max_leaves=max_leaves, span=span)
            assert part == {sid: want[sid] & mine for sid in want}, span


def test_the_bench_segments_agree_with_members_one_by_one(engine, shop_many):
    """Without in-call references, each answer is ``members``' for that rule alone."""
    ws, rules_ = shop_many
    with engine.connect() as conn:
        got = members_many(conn, ws, rules_, T0)
        for sid, rule in rules_.items():
            assert got[sid] == members(conn, ws, rule, T0), sid


def test_a_reference_reads_the_call_not_the_stored_members(engine, shop_many):
    ws, _ = shop_many
    rules_ = {"vip": {"trait": {"name": "plan", "equals": "silver"}}, "ref": {"segment": "vip"}}
    with engine.connect() as conn:
        stored = members(conn, ws, {"segment": "vip"}, T0)  # u0 is stored as vip
        got = members_many(conn, ws, rules_, T0)
        silver = members(conn, ws, rules_["vip"], T0)
    assert got == {"vip": silver, "ref": silver}
    assert stored and stored != silver


def test_a_cycle_is_refused_with_its_path(engine, shop_many):
    ws, _ = shop_many
    with engine.connect() as conn, pytest.raises(ChorusError) as err:
        members_many(conn, ws, {"a": {"segment": "b"}, "b": {"not": {"segment": "a"}}}, T0)
    assert "rule" in (err.value.field or "")


def test_groups_split_in_dependency_order_and_share_leaves():
    parsed = {sid: r.parse(raw) for sid, raw in {
        "a": {"trait": {"name": "x", "equals": 1}},
        "b": {"and": [{"segment": "a"}, {"trait": {"name": "x", "equals": 1}}]},  # no new leaf
        "c": {"or": [{"trait": {"name": "y", "equals": 1}}, {"trait": {"name": "z", "equals": 1}}]},
        "d": {"segment": "c"},
    }.items()}  # fmt: skip
    order = _order(parsed)
    assert order.index("a") < order.index("b") and order.index("c") < order.index("d")
    assert _groups(order, parsed, 200) == [order]
    groups = _groups(["a", "b", "c", "d"], parsed, 2)
    assert groups == [["a", "b"], ["c", "d"]]


@pytest.fixture
def shop_many(engine, shop):
    """The compiler tests' shop, with the benchmark's kinds of rules."""
    ws, _users = shop
    rules_ = {
        "gold": {"trait": {"name": "plan", "equals": "gold"}},
        "browse": {"and": [
            {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                           "window": "7d", "times": {"gte": 3}}},
            {"not": {"performed": {"event": "Order Completed", "window": "7d"}}}]},
        "spend": {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total", "gte": 100}},
        "lapsed": {"and": [{"performed": {"event": "Order Completed"}},
                           {"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}}]},
        "store": {"used_channel": {"channel": "store", "window": "30d"}},
        "last_web": {"last_channel": {"equals": "web"}},
        "mix": {"channel_mix": {"equals": "both"}},
        "opened": {"message": {"status": "opened", "template": "t1", "window": "7d"}},
        "reach": {"reachable": {"channel": "email", "topic": "offers"}},
        "bday": {"trait": {"name": "birthday", "anniversary": {"next_days": 2}}},
        "clv": {"trait": {"name": "computed.clv_12m", "gt": 500}},
        "last_total": {"last_value": {"event": "Order Completed", "property": "total", "equals": 0.2}},
        "in_vip": {"segment": "vip"},
        "holdout": {"and": [{"bucket": {"from": 0, "to": 50}}, {"not": {"list": "staff"}}]},
    }  # fmt: skip
    return ws, rules_


shop = tc.shop


def test_no_rules_answer_empty_and_a_naive_now_is_refused(engine, shop_many):
    ws, rules_ = shop_many
    with engine.connect() as conn:
        assert members_many(conn, ws, {}, T0) == {}
        with pytest.raises(ValueError, match="aware"):
            members_many(conn, ws, rules_, T0.replace(tzinfo=None))


def _person(traits: dict, events: list[dict] = (), zone: str | None = None) -> dict:
    ident = {"type": "identify", "timestamp": "2026-01-01T00:00:00Z", "traits": traits}
    return {"messages": [ident, *events], "computed": {}, "sent": [], "zone": zone, "segments": set(), "lists": set()}


def test_leaves_equal_to_python_but_not_to_the_evaluator_are_not_shared(engine):
    """``True == 1`` and ``2**62 == 2.0**62`` in Python; the evaluator tells them apart, so must the shared pass."""
    w = tc.new_workspace(engine)
    viewed = {"type": "track", "event": "Viewed", "timestamp": tc.iso(T0), "properties": {"p": 0}}
    tc.store_people(engine, w, [_person({"x": 1, "big": 2**62}, [viewed]), _person({"x": True, "big": 2.0**62})])
    rules_ = {
        "one": {"trait": {"name": "x", "equals": 1}}, "true": {"trait": {"name": "x", "equals": True}},
        "int": {"trait": {"name": "big", "equals": 2**62}}, "float": {"trait": {"name": "big", "equals": 2.0**62}},
        "zero": {"performed": {"event": "Viewed", "where": [{"property": "p", "in": [0]}]}},
        "false": {"performed": {"event": "Viewed", "where": [{"property": "p", "in": [False]}]}},
    }  # fmt: skip
    with engine.connect() as conn:
        got = members_many(conn, w["id"], rules_, T0)
        for sid, rule in rules_.items():
            assert got[sid] == members(conn, w["id"], rule, T0), sid
    assert got["one"] != got["true"] and got["zero"] and not got["false"]


def test_every_group_reads_the_time_zones_given(engine):
    """Zones passed as a one-shot iterable serve every group, not only the first (a profile in UTC+14, where the
    trait's instant is already 2 March: not before it)."""
    now = datetime(2026, 3, 2, 5, tzinfo=UTC)
    ws = workspaces.create(engine, f"zones-{uuid.uuid4().hex[:6]}")["id"]
    state = {"traits": {"d": "2026-03-01T12:00:00Z", "plan": "x"}, "trait_at": {}, "sums": {}, "channels": {},
             "consent": {}, "attrs": {"timezone": ["Pacific/Kiritimati"]}}  # fmt: skip
    with engine.begin() as conn:
        bulk.insert_rows(conn, profiles, [{"id": "p1", "workspace_id": ws, "created_at": now, "created_msg": "m",
                                           "links_max_at": now, "links_max_msg": "m", "known": True, "state": state,
                                           "updated_at": now}])  # fmt: skip
    rules_ = {"a": {"trait": {"name": "plan", "equals": "x"}}, "b": {"trait": {"name": "d", "before": "2026-03-02"}}}
    with engine.connect() as conn:
        zones = zones_of(conn, ws)
        alone = {sid: members(conn, ws, rule, now) for sid, rule in rules_.items()}
        assert alone == {"a": {"p1"}, "b": set()}
        assert members_many(conn, ws, rules_, now, zones=(z for z in zones)) == alone
        assert members_many(conn, ws, rules_, now, zones=(z for z in zones), max_leaves=1) == alone
