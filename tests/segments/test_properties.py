"""Properties of the rule language and the evaluator, over random rules and random people.

* a rule survives JSON and YAML unchanged;
* the answer is constant on [now, next_change), and differs at next_change (exact, not merely safe);
* ``not`` inverts, ``and``/``or`` agree with Python's all/any;
* counts, sums and distinct counts agree with a brute-force count over the events;
* one :class:`Evaluation` shared by many rules (what the engine does for a person's segments) answers each rule
  as a fresh evaluation would, whatever the memberships each rule is given.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from fractions import Fraction

import orjson
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chorus.errors import ChorusError
from chorus.segments import rules as r
from chorus.segments.evaluate import Evaluation, evaluate
from chorus.segments.person import Event, MessageRecord, Person
from chorus.timeutil import iso

T0 = datetime(2024, 3, 8, 12, tzinfo=UTC)  # two days before New York's clocks go forward
ZONES = ["UTC", "America/New_York", "Europe/Paris", "Pacific/Apia", "Australia/Lord_Howe", "Asia/Kolkata"]
EVENTS = ["Viewed", "Ordered"]
CHANNELS = ["web", "app", "store", "email", "server", "call_center"]
STATUSES = ["sent", "delivered", "opened", "clicked", "bounced"]
DURATIONS = ["90m", "6h", "1d", "3d", "1w"]
FAR = timedelta(days=800)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hours = st.integers(-24 * 20, 24 * 20)
instants = st.builds(lambda h, m: T0 + timedelta(hours=h, minutes=m), hours, st.sampled_from([0, 0, 0, 30]))
day_text = st.builds(lambda h: (T0 + timedelta(hours=h)).date().isoformat(), hours)
instant_text = st.builds(iso, instants)
date_text = st.one_of(day_text, instant_text)


# -- people ---------------------------------------------------------------------------------------------------
@st.composite
def people(draw) -> Person:
    events = tuple(
        Event(
            name=draw(st.sampled_from(EVENTS)),
            type="track",
            at=draw(instants),
            channel=draw(st.sampled_from(CHANNELS)),
            properties=draw(st.fixed_dictionaries({}, optional={
                "k": st.sampled_from(["x", "y", 1]),
                "v": st.one_of(st.integers(-5, 20), st.sampled_from([0.1, 0.2, 2.5, "n/a"])),
            })),
            id=f"e{i}",
            outbound=draw(st.booleans()) and draw(st.booleans()),
        )
        for i in range(draw(st.integers(0, 10)))
    )  # fmt: skip
    messages = tuple(
        MessageRecord(draw(st.sampled_from(["m1", "m2", "m3"])), draw(st.sampled_from(STATUSES)), draw(instants),
                      channel="email", template=draw(st.sampled_from(["t1", "t2"])))
        for _ in range(draw(st.integers(0, 6)))
    )  # fmt: skip
    traits = draw(st.fixed_dictionaries({}, optional={
        "d": date_text, "n": st.integers(-3, 3), "s": st.sampled_from(["a", "b"]),
        "bday": st.builds(lambda d: d.isoformat(), st.dates(date(1950, 1, 1), date(2010, 12, 31))),
    }))  # fmt: skip
    state = {"traits": traits, "trait_at": {}, "sums": {}, "channels": {}, "consent": {},
             "attrs": {"timezone": [draw(st.sampled_from(ZONES)), ["", ""]]}}  # fmt: skip
    return Person(
        draw(st.sampled_from(["p1", "p2", "p3"])), state=state, events=events, messages=messages,
        computed=draw(st.fixed_dictionaries({}, optional={"clv": st.integers(0, 10)})),
        segments=frozenset(draw(st.sets(st.sampled_from(["s1", "s2"])))),
        lists=frozenset(draw(st.sets(st.sampled_from(["l1"])))),
    )  # fmt: skip


# -- rules ----------------------------------------------------------------------------------------------------
windows = st.one_of(
    st.just({}),
    st.builds(lambda d: {"window": d}, st.sampled_from(DURATIONS)),
    st.builds(lambda a: {"window": {"since": a}}, date_text),
    st.builds(lambda b: {"window": {"before": b}}, date_text),
)
counts = st.builds(lambda op, n: {op: n}, st.sampled_from(r.COUNT_OPS), st.integers(0, 3))
numbers = st.builds(lambda op, x: {op: x}, st.sampled_from(["equals", "gt", "gte", "lt", "lte"]),
                    st.sampled_from([0, 1, 2, 0.3, 2.5, 10]))  # fmt: skip
where = st.one_of(
    st.just({}), st.builds(lambda v: {"where": [{"property": "k", "equals": v}]}, st.sampled_from(["x", 1]))
)
selection = st.builds(
    lambda e, w, c: {"event": e, **w, **c},
    st.sampled_from(EVENTS),
    where,
    st.one_of(st.just({}), st.just({"channel_group": "online"}), st.just({"channel": "store"})),
)
relative = st.builds(lambda op, d: {op: d}, st.sampled_from(r.RELATIVE_DATE_OPS), st.sampled_from(DURATIONS))


performed = st.builds(lambda s, w, c: {"performed": {**s, **w, "times": c}}, selection, windows, counts)
aggregate = st.one_of(
    st.builds(lambda s, w, f, t: {"aggregate": {**s, **w, "function": f, "property": "v", **t}}, selection, windows,
              st.sampled_from(["sum", "avg"]), numbers),
    st.builds(lambda s, w, t: {"aggregate": {**s, **w, "function": "count", **t}}, selection, windows, numbers),
)  # fmt: skip
last_value = st.builds(
    lambda s, w, t: {"last_value": {**s, **w, "property": "k", **t}}, selection, windows,
    st.sampled_from([{"equals": "x"}, {"exists": True}, {"not_equals": 1}]),
)  # fmt: skip
event_time = st.builds(
    lambda which, s, t: {f"{which}_time": {**s, **t}}, st.sampled_from(["first", "last"]), selection,
    st.one_of(st.builds(lambda op, d: {op: d}, st.sampled_from(["within_last", "more_than_ago"]),
                        st.sampled_from(DURATIONS)),
              st.builds(lambda d: {"since": d}, date_text), st.just({"exists": True})),
)  # fmt: skip
channel = st.one_of(
    st.builds(lambda c, w: {"used_channel": {"channel": c, **w}}, st.sampled_from(CHANNELS), windows),
    st.builds(lambda c: {"last_channel": {"equals": c}}, st.sampled_from(CHANNELS)),
    st.builds(lambda t, w: {"channel_count": {**t, **w}}, numbers, windows),
    st.builds(lambda m, w: {"channel_mix": {"equals": m, **w}}, st.sampled_from(r.MIXES), windows),
)
message = st.builds(
    lambda s, t, w, c: {"message": {"status": s, **t, **w, "times": c}},
    st.one_of(st.sampled_from([*STATUSES, "received"]), st.lists(st.sampled_from(STATUSES), min_size=1, max_size=2)),
    st.one_of(st.just({}), st.builds(lambda t: {"template": t}, st.sampled_from(["t1", "t2"]))), windows, counts,
)  # fmt: skip
trait = st.one_of(
    st.builds(lambda t: {"trait": {"name": "d", **t}}, relative),
    st.builds(lambda d: {"trait": {"name": "d", "since": d}}, date_text),
    st.builds(lambda n, k: {"trait": {"name": "bday", "anniversary": {k: n}}}, st.integers(0, 10),
              st.sampled_from(["next_days", "last_days"])),
    st.builds(lambda t: {"trait": {"name": "n", **t}}, numbers),
    st.just({"trait": {"name": "s", "in": ["a", "c"]}}),
    st.just({"trait": {"name": "computed.clv", "gte": 5}}),
)  # fmt: skip
other = st.one_of(
    st.builds(lambda s: {"segment": s}, st.sampled_from(["s1", "s2"])),
    st.just({"list": "l1"}),
    st.builds(lambda a: {"bucket": {"from": a, "to": a + 40}}, st.integers(0, 60)),
)
TIMED_LEAVES = st.one_of(performed, aggregate, last_value, event_time, channel, message, trait)
leaves = st.one_of(TIMED_LEAVES, other)
rule_json = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda cs: {"and": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"or": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, inner),
    ),
    max_leaves=6,
)
nows = st.builds(lambda h: T0 + timedelta(hours=h), st.integers(-24 * 10, 24 * 30))


# -- round trips ------------------------------------------------------------------------------------------------
@SETTINGS
@given(rule_json)
def test_rules_round_trip_through_json_and_yaml(raw):
    rule = r.parse(raw)
    canonical = r.to_json(rule)
    assert r.parse(canonical) == rule
    assert r.parse(orjson.loads(orjson.dumps(canonical))) == rule
    assert r.to_json(r.parse(canonical)) == canonical
    assert r.parse_yaml(yaml.safe_dump(canonical, sort_keys=False)) == rule
    assert r.parse_yaml(orjson.dumps(canonical).decode()) == rule  # JSON is YAML


# -- time -------------------------------------------------------------------------------------------------------
def _at(rule, who, t):
    return evaluate(rule, who, t)


def critical(who: Person) -> set[datetime]:
    """Instants where an answer may change: every event or status time, and those plus every window length or
    date test length used by the rules above (each minus a microsecond too, the last instant before)."""
    base = [e.at for e in who.events] + [m.at for m in who.messages]
    shifts = [timedelta(0)] + [r.parse_duration(d).delta for d in DURATIONS]
    out = {t + s for t in base for s in shifts} | {t - s for t in base for s in shifts}
    return out | {t - timedelta(microseconds=1) for t in out}


@SETTINGS
@given(rule_json, people(), nows, st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=6))
def test_the_answer_holds_until_next_change_and_flips_there(raw, who, now, fractions):
    rule = r.parse(raw)
    value, change = _at(rule, who, now)
    assert change is None or change > now
    end = change or now + FAR
    last = end - timedelta(microseconds=1)
    probes = [min(now + (end - now) * f, last) for f in fractions] + [last]  # a float product may round up to end
    probes += sorted(t for t in critical(who) if now <= t < end)[:40]
    for t in probes:
        assert _at(rule, who, t).value == value, (t, change)
    if change is not None and change < now + timedelta(days=365 * 100):  # past MAX_STEPS: safe, not the flip
        assert _at(rule, who, change).value != value


@SETTINGS
@given(TIMED_LEAVES, people(), nows)
def test_a_single_condition_flips_exactly_at_next_change(raw, who, now):
    rule = r.parse(raw)
    value, change = _at(rule, who, now)
    if change is not None:
        assert _at(rule, who, change - timedelta(microseconds=1)).value == value
        assert _at(rule, who, change).value != value


busy_people = people().filter(lambda p: len(p.events) >= 4 and len(p.messages) >= 2)


@SETTINGS
@given(st.sampled_from(["and", "or"]), st.lists(TIMED_LEAVES, min_size=2, max_size=3), st.lists(st.booleans(),
       min_size=3, max_size=3), busy_people, nows)  # fmt: skip
def test_combinations_flip_exactly_where_they_flip(op, leaves, negate, who, now):
    """Two or three timed conditions that change at different instants: the combination's next change is the first
    instant where the combination itself changes, not merely the first child change."""
    children = tuple(r.Not(r.parse(x)) if neg else r.parse(x) for x, neg in zip(leaves, negate, strict=False))
    rule = r.And(children) if op == "and" else r.Or(children)
    value, change = _at(rule, who, now)
    instants = sorted({now, *(t for t in critical(who) if t > now)})
    # walk every candidate instant: the first one where the answer differs is the next change
    first = next((t for t in instants if _at(rule, who, t).value != value), None)
    if change is None:
        assert first is None
    else:
        assert first is None or first >= change
        if change < now + timedelta(days=365 * 100):  # a contradiction of yearly conditions stops at MAX_STEPS, safe
            assert _at(rule, who, change).value != value


@SETTINGS
@given(rule_json, people(), nows)
def test_not_inverts(raw, who, now):
    rule = r.parse(raw)
    assert _at(r.Not(rule), who, now) == (not _at(rule, who, now).value, _at(rule, who, now).next_change)


@SETTINGS
@given(st.lists(st.tuples(rule_json, nows, st.frozensets(st.sampled_from(["s1", "s2"]))), min_size=1, max_size=5),
       people())
def test_one_evaluation_shared_by_many_rules_answers_as_fresh_ones(asked, who):
    her = Evaluation(who)
    for raw, now, segs in asked:  # rules, instants and memberships in any order: nothing leaks from one to the next
        rule = r.parse(raw)
        fresh = evaluate(rule, Person(who.id, who.state, who.computed, who.addresses, who.events, who.messages,
                                      segs, who.lists), now)  # fmt: skip
        assert her.evaluate(rule, now, segments=segs) == fresh, (raw, now, segs)
    raw, now, _ = asked[0]
    assert her.evaluate(r.parse(raw), now) == evaluate(r.parse(raw), who, now)  # her own memberships by default


@SETTINGS
@given(st.lists(rule_json, min_size=1, max_size=4), people(), nows)
def test_and_or_agree_with_all_any(raws, who, now):
    rules = tuple(r.parse(x) for x in raws)
    values = [_at(x, who, now).value for x in rules]
    assert _at(r.And(rules), who, now).value == all(values)
    assert _at(r.Or(rules), who, now).value == any(values)
    # the combined answer changes no earlier than the first child that changes
    firsts = [c for x in rules if (c := _at(x, who, now).next_change) is not None]
    for combined in (r.And(rules), r.Or(rules)):
        change = _at(combined, who, now).next_change
        if change is not None:
            assert firsts and change >= min(firsts)


# -- brute force ------------------------------------------------------------------------------------------------
def _counts(t: datetime, window: dict, now: datetime, who: Person) -> bool:
    """Does an event at t count at now? Straight from the documented definition."""
    if t > now:
        return False
    w = window.get("window")
    if isinstance(w, str):
        return now - r.parse_duration(w).delta < t
    if isinstance(w, dict):
        from chorus.segments.times import instant, parse_date, zone

        tz = zone(who.timezone)
        lo = instant(parse_date(w["since"]), tz) if "since" in w else None
        hi = instant(parse_date(w["before"]), tz) if "before" in w else None
        return (lo is None or t >= lo) and (hi is None or t < hi)
    return True


def _matches(e: Event, sel: dict) -> bool:
    group = {"online": r.ONLINE}.get(sel.get("channel_group", ""), ())
    return (
        e.name == sel["event"]
        and all(e.properties.get("k") == f["equals"] and type(e.properties.get("k")) is type(f["equals"])
                for f in sel.get("where", []))
        and ("channel" not in sel or e.channel == sel["channel"])
        and ("channel_group" not in sel or e.channel in group)
    )  # fmt: skip


def _holds(test: dict, x) -> bool:
    ((op, y),) = test.items()
    x, y = Fraction(repr(x)) if isinstance(x, float) else Fraction(x), Fraction(repr(y)) if isinstance(y, float) else y
    return {"eq": x == y, "equals": x == y, "gt": x > y, "gte": x >= y, "lt": x < y, "lte": x <= y}[op]


def probes(who: Person, now: datetime) -> list[datetime]:
    """``now`` and the instants around every window boundary (where an off-by-one would show)."""
    return [now, *sorted(critical(who))[:60]]


@SETTINGS
@given(performed, people(), nows)
def test_performed_counts_agree_with_brute_force(raw, who, now):
    body = raw["performed"]
    rule = r.parse(raw)
    for t in probes(who, now):
        n = sum(1 for e in who.events if _matches(e, body) and _counts(e.at, body, t, who))
        assert evaluate(rule, who, t).value == _holds(body["times"], n), t


@SETTINGS
@given(aggregate, people(), nows)
def test_sums_and_averages_agree_with_brute_force(raw, who, now):
    body = raw["aggregate"]
    rule = r.parse(raw)
    test = {k: v for k, v in body.items() if k in r.NUMERIC_TESTS}
    for t in probes(who, now):
        evs = [e for e in who.events if _matches(e, body) and _counts(e.at, body, t, who)]
        if body["function"] == "count":
            expected = _holds(test, len(evs))
        else:
            vals = [Fraction(repr(v)) if isinstance(v, float) else Fraction(v) for e in evs
                    if isinstance(v := e.properties.get("v"), int | float)]  # fmt: skip
            if body["function"] == "sum":
                expected = _holds(test, sum(vals, Fraction(0)))
            else:
                expected = bool(vals) and _holds(test, sum(vals, Fraction(0)) / len(vals))
        assert evaluate(rule, who, t).value == expected, t


@SETTINGS
@given(message, people(), nows)
def test_message_counts_are_distinct_messages(raw, who, now):
    body = raw["message"]
    statuses = body["status"] if isinstance(body["status"], list) else [body["status"]]
    wanted = {s for x in statuses for s in (r.RECEIVED if x == "received" else (x,))}
    rule = r.parse(raw)
    for t in probes(who, now):
        ids = {m.message_id for m in who.messages if m.status in wanted
               and m.template == body.get("template", m.template) and _counts(m.at, body, t, who)}  # fmt: skip
        assert evaluate(rule, who, t).value == _holds(body["times"], len(ids)), t


@SETTINGS
@given(people(), nows, st.sampled_from(DURATIONS), numbers)
def test_channel_counts_agree_with_brute_force(who, now, window, test):
    rule = r.parse({"channel_count": {**test, "window": window}})
    for t in probes(who, now):
        channels = {e.channel for e in who.events if not e.outbound and e.channel in (*r.ONLINE, *r.OFFLINE)
                    and t - r.parse_duration(window).delta < e.at <= t}  # fmt: skip
        assert evaluate(rule, who, t).value == _holds(test, len(channels)), t


@SETTINGS
@given(people(), nows)
def test_dst_and_date_line_birthdays_flip_at_local_midnight(who, now):
    assume("bday" in who.state["traits"])
    raw = {"trait": {"name": "bday", "anniversary": {"next_days": 3}}}
    value, change = evaluate(raw, who, now)
    assert change is not None  # a birthday always comes round again
    from chorus.segments.times import zone

    local = change.astimezone(zone(who.timezone))
    before = (change - timedelta(microseconds=1)).astimezone(zone(who.timezone))
    assert local.date() != before.date()  # the flip is where a local day starts


# -- hostile input --------------------------------------------------------------------------------------------------
ODD_TEXT = ["0001-01-01", "9999-12-31", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "2024-02-29",
            "--05-17", "Z", "equals", "and", "7d"]  # fmt: skip
KEYS = [*r.KINDS, *r.ALL_OPS, "name", "event", "window", "times", "where", "property", "function", "channel",
        "status", "since", "before", "from", "to", "x"]  # fmt: skip
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12), st.sampled_from(ODD_TEXT)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
    max_leaves=12,
)  # fmt: skip


@SETTINGS
@given(json_values)
def test_any_json_is_a_rule_or_a_chorus_error(raw):
    try:
        r.parse(raw)
    except ChorusError as exc:
        assert exc.field and exc.field.startswith("rule") and exc.message.startswith(exc.field)


extreme_nows = st.datetimes(datetime(1990, 1, 1), datetime(2200, 1, 1), timezones=st.just(UTC))


@SETTINGS
@given(rule_json, people(), json_values, extreme_nows)
def test_odd_trait_values_never_break_evaluation(raw, who, value, now):
    state = {**who.state, "traits": {"d": value, "bday": value, "n": value, "s": value}}
    odd = Person(who.id, state=state, events=who.events, messages=who.messages)
    value_now, change = evaluate(r.parse(raw), odd, now)
    assert change is None or change > now
