"""What a set of rules can read (``segments.needs``): a person cut to it gives every rule the same answer and the
same ``next_change`` as the whole person, and ``load.people(..., needs=...)`` reads exactly that cut from the store
(SQLite and PostgreSQL). Decision 0028."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus import workspaces
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate
from chorus.segments.needs import ALL, needs, restrict
from chorus.segments.person import Event, Person
from chorus.store.tables import profiles
from tests.segments import test_compile as comp
from tests.segments import test_properties as props

T0 = props.T0


def _event(i: int, m: dict) -> Event:
    # a stored payload carries its channel at the top (collect.messages normalises it there)
    return Event.from_payload({**m, "messageId": f"e{i}", "channel": m["context"]["channel"]})


# the evaluator's random people, with track, page and identify events (the compiler tests' events)
people = st.builds(
    lambda who, evs: replace(who, events=tuple(sorted((_event(i, m) for i, m in enumerate(evs)),
                                                      key=lambda e: (e.at, e.id)))),
    props.people(), st.lists(comp.an_event(), max_size=12),
)  # fmt: skip
rule_sets = st.lists(comp.rules, min_size=1, max_size=3)


@props.SETTINGS
@given(rule_sets, people, props.nows)
def test_the_cut_person_gets_the_same_answer_and_next_change(raws, who, now):
    rules = [r.parse(raw) for raw in raws]
    cut = restrict(who, needs(rules, now))
    for rule in rules:
        assert evaluate(rule, cut, now, topics=comp.TOPICS) == evaluate(rule, who, now, topics=comp.TOPICS), (
            r.to_json(rule), now)


def test_a_rolling_window_reads_back_only_its_length():
    rule = r.parse({"performed": {"event": "Viewed", "window": "7d"}})
    need = needs([rule], T0)
    assert need.names == {"Viewed": T0 - timedelta(days=7)}
    assert need.any_event is None and need.messages is None and not need.computed
    old = Event("Viewed", "track", T0 - timedelta(days=8), "web", id="old")
    edge = Event("Viewed", "track", T0 - timedelta(days=7), "web", id="edge")
    other = Event("Ordered", "track", T0, "web", id="other")
    cut = restrict(Person("p1", events=(old, edge, other)), need)
    assert cut.events == (edge,)


def test_unbounded_leaves_read_everything_and_a_channel_rule_reads_every_name():
    first = r.parse({"first_time": {"event": "Viewed", "within_last": "1d"}})
    assert needs([first], T0).names == {"Viewed": ALL}
    chans = r.parse({"and": [{"used_channel": {"channel": "web", "window": "1d"}},
                             {"performed": {"event": "Viewed", "window": "7d"}}]})  # fmt: skip
    need = needs([chans], T0)
    assert need.any_event == T0 - timedelta(days=1) and need.names == {"Viewed": T0 - timedelta(days=7)}
    wide = r.parse({"and": [{"used_channel": {"channel": "web", "window": "30d"}},
                            {"performed": {"event": "Viewed", "window": "7d"}}]})  # fmt: skip
    need = needs([wide], T0)
    assert need.any_event == T0 - timedelta(days=30) and need.names == {}  # every event since then is read anyway
    dated = r.parse({"message": {"status": "opened", "window": {"since": "2024-03-01T00:00:00Z"}}})
    assert needs([dated], T0).messages == T0.replace(day=1, hour=0)
    assert needs([r.parse({"trait": {"name": "plan", "equals": "gold"}})], T0).parts() == ("segments",)


# -- the store reads the same cut ---------------------------------------------------------------------------------
@comp.SETTINGS
@given(st.lists(comp.a_person(), min_size=1, max_size=3), st.lists(st.tuples(rule_sets, props.nows), min_size=2,
                                                                   max_size=5))
def test_load_with_needs_reads_exactly_the_cut_person(engine, people, questions):
    w = comp.new_workspace(engine)
    comp.store_people(engine, w, people)
    with engine.connect() as conn:
        cfg = workspaces.get(conn, w["id"]).identity
        ids = list(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == w["id"])).scalars())
        full = load.people(conn, w["id"], ids, cfg)
        for raws, now in questions:
            need = needs([r.parse(raw) for raw in raws], now)
            got = load.people(conn, w["id"], ids, cfg, needs=need)
            assert got == {pid: restrict(who, need) for pid, who in full.items()}, (raws, now)
