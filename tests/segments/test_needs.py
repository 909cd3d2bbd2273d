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
from chorus.profiles import state as pstate
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate
from chorus.segments.needs import ALL, needs, restrict
from chorus.segments.person import Event, Person
from chorus.segments.summary import Summary
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


def _payload(i: int, m: dict) -> dict:
    # a stored payload carries its channel at the top (collect.messages normalises it there)
    return {**m, "messageId": f"e{i}", "channel": m["context"]["channel"]}


@st.composite
def summarised_people(draw):
    """A random person with her events, and the same person carrying the summary her profile state keeps of them
    (``profiles.state`` folds the very payloads), with room for one name per type or for many."""
    who, raws = draw(props.people()), draw(st.lists(comp.an_event(), max_size=12))
    limit = draw(st.sampled_from([1, 100]))
    payloads = [_payload(i, m) for i, m in enumerate(raws)]
    evs = tuple(sorted((Event.from_payload(p) for p in payloads), key=lambda e: (e.at, e.id)))
    saved = dict(pstate.MAX_NAMES), pstate.MAX_NAMES_OTHER
    pstate.MAX_NAMES.update(track=limit)
    pstate.MAX_NAMES_OTHER = limit
    try:
        state = pstate.empty()
        for p in payloads:
            pstate.apply_event(state, p, "user_id:u1")
    finally:
        pstate.MAX_NAMES.clear()
        pstate.MAX_NAMES.update(saved[0])
        pstate.MAX_NAMES_OTHER = saved[1]
    plain = replace(who, events=evs)
    return plain, replace(plain, summary=Summary.of(state))


summary_rules = st.one_of(
    comp.rules,
    st.builds(lambda k, s, t: {k: {**s, **t}}, st.sampled_from(["first_time", "last_time"]),
              st.one_of(st.builds(lambda e: {"event": e}, st.sampled_from(props.EVENTS)),
                        st.builds(lambda t: {"type": t}, st.sampled_from(["page", "identify"]))),
              st.one_of(st.builds(lambda op, d: {op: d}, st.sampled_from(["within_last", "more_than_ago"]),
                                  st.sampled_from(props.DURATIONS)),
                        st.just({"exists": True}), st.just({"exists": False}))),
    st.builds(lambda e, c: {"performed": {"event": e, "times": c}}, st.sampled_from(props.EVENTS), props.counts),
    st.builds(lambda t: {"aggregate": {"type": "page", "function": "count", **t}}, props.numbers),
    st.builds(lambda c: {"used_channel": {"channel": c}}, st.sampled_from(props.CHANNELS)),
    st.builds(lambda t: {"channel_count": t}, props.numbers),
    st.builds(lambda c: {"last_channel": {"equals": c}}, st.sampled_from(props.CHANNELS)),
    st.builds(lambda t: {"channel_mix": {"equals": t}}, st.sampled_from(["online", "offline", "both"])),
)  # fmt: skip


@props.SETTINGS
@given(st.lists(summary_rules, min_size=1, max_size=3), summarised_people(), st.data())
def test_the_summary_gives_the_same_answer_and_next_change_as_the_events(raws, pair, data):
    """Read from her summary and only the events its needs keep, every rule answers as from her whole history,
    with the same next change: the summary is exact wherever it is used, and falls back where it is not (a name
    past the cut, events stamped after ``now``: ``now`` is often among her events' times)."""
    plain, summarised = pair
    near = [e.at + timedelta(minutes=m) for e in plain.events for m in (-1, 0, 1)]
    now = data.draw(st.one_of(props.nows, st.sampled_from(near)) if near else props.nows)
    rules = [r.parse(raw) for raw in raws]
    cut = restrict(summarised, needs(rules, now))
    for rule in rules:
        want = evaluate(rule, plain, now, topics=comp.TOPICS)
        assert evaluate(rule, summarised, now, topics=comp.TOPICS) == want, (r.to_json(rule), now)
        assert evaluate(rule, cut, now, topics=comp.TOPICS) == want, (r.to_json(rule), now)


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


def test_unbounded_leaves_read_the_summary_or_everything_and_a_channel_rule_reads_every_name():
    first = r.parse({"first_time": {"event": "Viewed", "within_last": "1d"}})
    need = needs([first], T0)
    assert need.names == {} and need.summed == (first.selection,) and need.parts() == ("events", "segments")
    assert need.whole().names == {"Viewed": ALL}  # a person without a summary that covers it: every Viewed
    filtered = r.parse({"first_time": {"event": "Viewed", "where": [{"property": "k", "equals": "x"}],
                                       "within_last": "1d"}})  # fmt: skip
    assert needs([filtered], T0).names == {"Viewed": ALL} and not needs([filtered], T0).summarised
    ever = r.parse({"or": [{"last_channel": {"equals": "web"}}, {"used_channel": {"channel": "store"}}]})
    need = needs([ever], T0)
    assert need.any_event is None and need.last_channel and need.channel_summary
    assert need.whole().any_event == ALL
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


def test_a_page_name_that_is_not_a_string_is_no_name():
    """The door checks only a track's name; a page's is stored as sent. One that is not a text (or is empty) is no
    name, as in the events.event column the store's queries compare, and a restricted read does not fail on it (it
    raised a TypeError in ``Needs.wants``, which a journey's read-back calls: found by adding such names to the
    compiler tests' random events)."""
    t = props.T0
    for hostile in (7, ["Home"], {"n": "Home"}, True, ""):
        e = Event.from_payload({"type": "page", "name": hostile, "timestamp": t.isoformat(), "channel": "web",
                                "messageId": "m1"})  # fmt: skip
        assert e.name is None
        rule = r.parse({"performed": {"type": "page", "event": "Home", "window": "7d"}})
        need = needs([rule], t)
        assert need is not None and not need.wants(e)
        person = replace(Person("p1"), events=(e,))
        assert restrict(person, need).events == ()
        assert evaluate(rule, person, t).value is False
    named = Event.from_payload({"type": "page", "name": "Home", "timestamp": t.isoformat(), "channel": "web"})
    assert named.name == "Home"


def test_a_held_journey_input_from_before_the_check_loses_its_hostile_name():
    """(review) A paused journey's held inputs were stored with the name as read then: one held before the check
    comes back with no name, so its replay at resume neither fails the read-back nor the hearing."""
    from chorus.journeys.runtime import Hearing
    from chorus.journeys.store import input_from_json

    for hostile in (7, ["Home"], True, ""):
        e = input_from_json({"kind": "event", "name": hostile, "type": "page", "at": "2026-01-01T00:00:00Z",
                             "channel": "web", "properties": {}, "id": "m", "outbound": False})  # fmt: skip
        assert e.name is None
        need = needs([r.parse({"performed": {"type": "page", "event": "Home", "window": "7d"}})], props.T0)
        assert need is not None and need.wants(e) in (True, False)
        assert Hearing(events=frozenset({"Home"})).hears(e) is False
    kept = input_from_json({"kind": "event", "name": "Home", "type": "page", "at": "2026-01-01T00:00:00Z",
                            "channel": "web", "properties": {}, "id": "m"})  # fmt: skip
    assert kept.name == "Home"
