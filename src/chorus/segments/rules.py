"""The segment rule language: parsing and validation into immutable plain-data nodes.

A rule is JSON (or YAML in files): every condition is an object with exactly one key that names its kind, so a
rule reads as what it says and an error names its place the way the user wrote it (``rule.and[2].performed.
window``). The language reference, with examples, is ``docs/segments.md``; why this shape, decision 0023.

Validation is complete: a rule that parses can be evaluated for anybody without an error. Values stay data (they
are compared in Python here, and bound as parameters by a SQL compiler, never written into SQL text).

Nothing here does I/O. :func:`parse` takes decoded JSON, :func:`parse_yaml` YAML text; :func:`to_json` gives the
canonical JSON back (``parse(to_json(r)) == r``); :func:`check_references` checks a set of segment definitions
for unknown references and cycles; :func:`dependencies` says which inputs a rule reads (for an engine's index
from changes to segments).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from chorus import safejson
from chorus.errors import ChorusError
from chorus.messaging.outbox import STATUS_EVENTS
from chorus.messaging.policy import ADS_CHANNEL, MESSAGE_CHANNELS
from chorus.segments.times import (
    MAX_ANNIVERSARY_DAYS,
    DateValue,
    Duration,
    parse_date,
    parse_duration,
)

MAX_DEPTH = 16  # conditions nested in and/or/not, the top one included
MAX_NODES = 500  # conditions in one rule
MAX_LIST = 1000  # values of one ``in``
MAX_WHERE = 20  # property filters of one event condition
MAX_TEXT = 1000  # characters of a value compared with text
MAX_NAME = 200  # characters of a trait, event or property name
MAX_ID = 64  # characters of a segment, list, message, template, journey, campaign id or topic
MAX_YAML = 256 * 1024

# Channel groups, as the omnichannel report has them (chorus.analytics.omnichannel.ONLINE/OFFLINE; a test keeps
# the two equal: that module pulls the dataframe stack in, which a worker evaluating segments does not need).
ONLINE = (
    "web", "app", "email", "sms", "push", "whatsapp", "messenger", "social", "ads", "in_app", "marketplace", "chat",
)  # fmt: skip
OFFLINE = ("store", "call_center", "catalog")
CHANNEL_GROUPS = {"online": ONLINE, "offline": OFFLINE}
MIXES = ("online", "offline", "both", "unknown")  # the omnichannel report's mix groups
EVENT_TYPES = ("track", "page", "screen", "identify", "group", "alias")
# A message's statuses as the outbox records them (each is also a ``Message …`` event on the timeline);
# ``received`` is sent or delivered: the message left Chorus for the person (SMTP never reports delivery).
RECEIVED = ("sent", "delivered")
MESSAGE_STATUSES = (*STATUS_EVENTS, "received")
AGGREGATES = ("sum", "avg", "count")
_CHANNEL = re.compile(r"[a-z][a-z0-9_]{0,39}")

# -- tests: one comparison of one value -----------------------------------------------------------------------
VALUE_OPS = ("equals", "not_equals", "in", "contains", "starts_with", "exists", "includes")
NUMBER_OPS = ("gt", "gte", "lt", "lte", "between")
ABSOLUTE_DATE_OPS = ("since", "before", "date_between")
RELATIVE_DATE_OPS = ("within_last", "more_than_ago", "within_next")
DATE_OPS = (*ABSOLUTE_DATE_OPS, *RELATIVE_DATE_OPS, "anniversary")
ALL_OPS = (*VALUE_OPS, *NUMBER_OPS, *DATE_OPS)
NUMERIC_TESTS = ("equals", *NUMBER_OPS)  # of a number the rule computes (a sum, a count)
NAME_TESTS = ("equals", "not_equals", "in", "exists")  # of a name the rule reads (a channel, a mix)
PAST_TESTS = ("exists", *ABSOLUTE_DATE_OPS, "within_last", "more_than_ago")  # of when an event happened
FILTER_TESTS = (*VALUE_OPS, *NUMBER_OPS, *ABSOLUTE_DATE_OPS)  # of an event property: no time-relative test
COUNT_OPS = ("eq", "gte", "lte")


@dataclass(frozen=True, slots=True)
class Anniversary:
    """``{"next_days": 3}`` → before=3, after=0; ``{"last_days": 7}`` → before=0, after=7."""

    before: int = 0
    after: int = 0


@dataclass(frozen=True, slots=True)
class Test:
    """One comparison: ``op`` and its argument (a scalar, a tuple, a Duration, a DateValue, a pair, an
    Anniversary, or a bool for ``exists``)."""

    op: str
    arg: Any


@dataclass(frozen=True, slots=True)
class Count:
    """How many times: ``op`` (eq, gte, lte) and ``n``."""

    op: str = "gte"
    n: int = 1

    def holds(self, k: int) -> bool:
        return k == self.n if self.op == "eq" else k >= self.n if self.op == "gte" else k <= self.n


@dataclass(frozen=True, slots=True)
class Window:
    """A rolling ``within`` or dated ``since``/``before``; all None means all of the person's history."""

    within: Duration | None = None
    since: DateValue | None = None
    before: DateValue | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    """A test of one event property (a dotted path into ``properties``)."""

    property: str
    test: Test


@dataclass(frozen=True, slots=True)
class Selection:
    """Which of the person's events a behaviour condition looks at."""

    event: str | None = None
    type: str | None = None
    where: tuple[Filter, ...] = ()
    channels: tuple[str, ...] = ()
    channel_group: str | None = None
    window: Window = field(default_factory=Window)


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    child: Node


@dataclass(frozen=True, slots=True)
class Trait:
    """A profile trait (``plan``, ``address.city``) or a computed one (``computed.clv_12m``)."""

    name: str
    test: Test

    @property
    def computed(self) -> str | None:
        return self.name.removeprefix("computed.") if self.name.startswith("computed.") else None


@dataclass(frozen=True, slots=True)
class Performed:
    selection: Selection
    times: Count = field(default_factory=Count)


@dataclass(frozen=True, slots=True)
class Aggregate:
    """sum / avg of a numeric property, or count, of the selected events, tested as a number."""

    selection: Selection
    function: str
    property: str | None
    test: Test


@dataclass(frozen=True, slots=True)
class LastValue:
    """The value of ``property`` on the newest selected event that has it."""

    selection: Selection
    property: str
    test: Test


@dataclass(frozen=True, slots=True)
class EventTime:
    """When the person first (``which="first"``) or last did the selected thing, tested as a date."""

    which: str
    selection: Selection
    test: Test


@dataclass(frozen=True, slots=True)
class UsedChannel:
    """Any activity of the person on one of ``channels`` (or the group) in the window."""

    channels: tuple[str, ...]
    channel_group: str | None
    window: Window


@dataclass(frozen=True, slots=True)
class LastChannel:
    test: Test


@dataclass(frozen=True, slots=True)
class ChannelCount:
    test: Test
    window: Window


@dataclass(frozen=True, slots=True)
class ChannelMix:
    test: Test
    window: Window


@dataclass(frozen=True, slots=True)
class Reachable:
    """An address on ``channel`` and consent: for any message, or for marketing on ``topic`` when given."""

    channel: str
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Subscribed:
    channel: str
    topic: str


@dataclass(frozen=True, slots=True)
class Message:
    """Messages that reached one of ``statuses`` in the window, filtered by what they were."""

    statuses: tuple[str, ...]
    message_id: tuple[str, ...] = ()
    template: tuple[str, ...] = ()
    journey: tuple[str, ...] = ()
    campaign: tuple[str, ...] = ()
    channel: tuple[str, ...] = ()
    topic: tuple[str, ...] = ()
    window: Window = field(default_factory=Window)
    times: Count = field(default_factory=Count)


@dataclass(frozen=True, slots=True)
class SegmentRef:
    segment: str


@dataclass(frozen=True, slots=True)
class Bucket:
    """The profile's stable bucket in [0, 100) is in [start, end)."""

    start: int
    end: int
    seed: str | None = None


@dataclass(frozen=True, slots=True)
class InList:
    list: str


Node = Union[  # noqa: UP007 (the dataclasses above name Node before it exists; a runtime Union keeps isinstance)
    And, Or, Not, Trait, Performed, Aggregate, LastValue, EventTime, UsedChannel, LastChannel, ChannelCount,
    ChannelMix, Reachable, Subscribed, Message, SegmentRef, Bucket, InList,
]  # fmt: skip
KINDS = (
    "and", "or", "not", "trait", "performed", "aggregate", "last_value", "first_time", "last_time", "used_channel",
    "last_channel", "channel_count", "channel_mix", "reachable", "subscribed", "message", "segment", "bucket", "list",
)  # fmt: skip


# -- parsing ----------------------------------------------------------------------------------------------------
def _bad(path: str, why: str) -> ChorusError:
    return ChorusError(f"{path}: {why}", field=path)


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def node(self, raw: object, path: str, depth: int) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _bad(path, f"a rule has at most {MAX_NODES} conditions; split it and refer to other segments")
        if depth > MAX_DEPTH:
            raise _bad(path, f"conditions nest at most {MAX_DEPTH} levels deep")
        if not isinstance(raw, dict) or len(raw) != 1:
            raise _bad(path, f"a condition is an object with exactly one key, its kind: {', '.join(KINDS)}")
        ((kind, body),) = raw.items()
        if kind not in KINDS:
            raise _bad(path, f"unknown condition {_quote(kind)}; the kinds are {', '.join(KINDS)}")
        here = f"{path}.{kind}"
        if kind in ("and", "or"):
            if not isinstance(body, list) or not body:
                raise _bad(here, f"{kind} takes a non-empty list of conditions")
            children = tuple(self.node(c, f"{here}[{i}]", depth + 1) for i, c in enumerate(body))
            return And(children) if kind == "and" else Or(children)
        if kind == "not":
            return Not(self.node(body, here, depth + 1))
        if kind == "segment":
            return SegmentRef(_ident(body, here))
        if kind == "list":
            return InList(_ident(body, here))
        return getattr(self, "_" + kind)(_object(body, here), here)

    # each kind: the body (a dict) and its path
    def _trait(self, body: dict, path: str) -> Trait:
        _keys(body, path, ("name", *ALL_OPS))
        if body.get("name") == "computed.":
            raise _bad(f"{path}.name", "name the computed trait after computed., e.g. computed.clv_12m")
        name = _name(body.get("name"), f"{path}.name", "a trait name")
        return Trait(name, _test(body, path, ALL_OPS))

    def _performed(self, body: dict, path: str) -> Performed:
        _keys(body, path, (*SELECTION_KEYS, "times"))
        times = _count(body["times"], f"{path}.times") if "times" in body else Count()
        return Performed(_selection(body, path, need_event=True), times)

    def _aggregate(self, body: dict, path: str) -> Aggregate:
        _keys(body, path, (*SELECTION_KEYS, "function", "property", *NUMERIC_TESTS))
        function = body.get("function")
        if function not in AGGREGATES:
            raise _bad(f"{path}.function", f"function is one of {', '.join(AGGREGATES)}")
        prop = None
        if function == "count":
            if "property" in body:
                raise _bad(f"{path}.property", "count counts events; it takes no property")
        else:
            prop = _name(body.get("property"), f"{path}.property", f"the numeric property to {function}")
        return Aggregate(_selection(body, path, need_event=True), function, prop, _test(body, path, NUMERIC_TESTS))

    def _last_value(self, body: dict, path: str) -> LastValue:
        _keys(body, path, (*SELECTION_KEYS, "property", *ALL_OPS))
        prop = _name(body.get("property"), f"{path}.property", "the property whose last value is tested")
        return LastValue(_selection(body, path, need_event=True), prop, _test(body, path, ALL_OPS))

    def _first_time(self, body: dict, path: str) -> EventTime:
        return self._event_time("first", body, path)

    def _last_time(self, body: dict, path: str) -> EventTime:
        return self._event_time("last", body, path)

    def _event_time(self, which: str, body: dict, path: str) -> EventTime:
        if "window" in body:
            raise _bad(f"{path}.window", f"{which}_time looks at all of the person's history; it takes no window")
        _keys(body, path, (*SELECTION_KEYS, *PAST_TESTS))
        return EventTime(which, _selection(body, path, need_event=True), _test(body, path, PAST_TESTS))

    def _used_channel(self, body: dict, path: str) -> UsedChannel:
        _keys(body, path, ("channel", "channel_group", *WINDOW_KEYS))
        channels, group = _channels(body, path)
        if not channels and group is None:
            raise _bad(f"{path}.channel", "name the channel (or a list of channels, or a channel_group)")
        return UsedChannel(channels, group, _window(body, path))

    def _last_channel(self, body: dict, path: str) -> LastChannel:
        _keys(body, path, NAME_TESTS)
        test = _test(body, path, NAME_TESTS)
        for value in _test_values(test):
            _channel(value, f"{path}.{test.op}")
        return LastChannel(test)

    def _channel_count(self, body: dict, path: str) -> ChannelCount:
        _keys(body, path, (*NUMERIC_TESTS, *WINDOW_KEYS))
        return ChannelCount(_test(body, path, NUMERIC_TESTS), _window(body, path))

    def _channel_mix(self, body: dict, path: str) -> ChannelMix:
        _keys(body, path, (*NAME_TESTS, *WINDOW_KEYS))
        test = _test(body, path, NAME_TESTS)
        for value in _test_values(test):
            if value not in MIXES:
                raise _bad(f"{path}.{test.op}", f"a mix is one of {', '.join(MIXES)}")
        return ChannelMix(test, _window(body, path))

    def _reachable(self, body: dict, path: str) -> Reachable:
        _keys(body, path, ("channel", "topic"))
        channel = _one_of(body.get("channel"), f"{path}.channel", MESSAGE_CHANNELS, "a message channel")
        topic = _topic(body["topic"], f"{path}.topic") if "topic" in body else None
        return Reachable(channel, topic)

    def _subscribed(self, body: dict, path: str) -> Subscribed:
        _keys(body, path, ("channel", "topic"))
        chans = (*MESSAGE_CHANNELS, ADS_CHANNEL)
        channel = _one_of(body.get("channel"), f"{path}.channel", chans, "a message channel (or ads)")
        if "topic" not in body:
            raise _bad(f"{path}.topic", "name the topic, e.g. newsletter")
        return Subscribed(channel, _topic(body["topic"], f"{path}.topic"))

    def _message(self, body: dict, path: str) -> Message:
        filters = ("message_id", "template", "journey", "campaign", "channel", "topic")
        _keys(body, path, ("status", *filters, *WINDOW_KEYS, "times"))
        if "status" not in body:
            raise _bad(f"{path}.status", f"name the status: {', '.join(MESSAGE_STATUSES)}")
        statuses = _strings(body["status"], f"{path}.status", lambda v, p: _one_of(v, p, MESSAGE_STATUSES, "a status"))
        found: dict[str, tuple[str, ...]] = {}
        for key in filters:
            if key in body:
                check = _message_channel if key == "channel" else _topic if key == "topic" else _ident
                found[key] = _strings(body[key], f"{path}.{key}", check)
        times = _count(body["times"], f"{path}.times") if "times" in body else Count()
        return Message(statuses, **found, window=_window(body, path), times=times)

    def _bucket(self, body: dict, path: str) -> Bucket:
        _keys(body, path, ("from", "to", "seed"))
        bounds = []
        for key in ("from", "to"):
            v = body.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100:
                raise _bad(f"{path}.{key}", "a bucket bound is a whole number from 0 to 100")
            bounds.append(v)
        if bounds[0] >= bounds[1]:
            raise _bad(f"{path}.to", "to must be greater than from (the bucket is [from, to) of 100)")
        seed = _ident(body["seed"], f"{path}.seed") if "seed" in body else None
        return Bucket(bounds[0], bounds[1], seed)


SELECTION_KEYS = ("event", "type", "where", "channel", "channel_group", "window")
WINDOW_KEYS = ("window",)


def _object(body: object, path: str) -> dict:
    if not isinstance(body, dict):
        raise _bad(path, "this condition takes an object")
    return body


def _keys(body: dict, path: str, allowed: tuple[str, ...]) -> None:
    for key in body:
        if key in allowed:
            continue
        if key in ALL_OPS:  # a test, but not one that applies to this kind of value
            tests = [k for k in allowed if k in ALL_OPS and k not in WINDOW_KEYS]
            raise _bad(f"{path}.{key}", f"the test {key} does not apply here; use {', '.join(tests)}")
        raise _bad(f"{path}.{key[:60]}",
                   f"unknown key {_quote(key)} here; expected {', '.join(dict.fromkeys(allowed))}")  # fmt: skip


def _text(value: object, path: str, limit: int, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(path, f"{what} must be non-empty text")
    if len(value) > limit:
        raise _bad(path, f"{what} is at most {limit} characters")
    why = safejson.text_problem(value)
    if why:
        raise _bad(path, why)
    return value


def _name(value: object, path: str, what: str) -> str:
    name = _text(value, path, MAX_NAME, what)
    if any(not part for part in name.split(".")):
        raise _bad(path, f"{_quote(name)} has an empty part between dots")
    return name


def _ident(value: object, path: str) -> str:
    return _text(value, path, MAX_ID, "an id")


def _topic(value: object, path: str) -> str:
    topic = _text(value, path, MAX_ID, "a topic")
    if ":" in topic or topic == "*":
        raise _bad(path, "a topic is a name such as newsletter (no ':' and not '*')")
    return topic


def _channel(value: object, path: str) -> str:
    if not isinstance(value, str) or not _CHANNEL.fullmatch(value):
        raise _bad(path, "a channel is lower-case letters, digits and _ (e.g. web, store, call_center)")
    return value


def _message_channel(value: object, path: str) -> str:
    return _one_of(value, path, MESSAGE_CHANNELS, "a message channel")


def _one_of(value: object, path: str, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(path, f"{what} is one of {', '.join(allowed)}")
    return value


def _strings(value: object, path: str, check) -> tuple[str, ...]:
    """One string or a non-empty list of them."""
    if isinstance(value, list):
        if not value or len(value) > MAX_LIST:
            raise _bad(path, f"give one value or a list of 1 to {MAX_LIST}")
        return tuple(dict.fromkeys(check(v, f"{path}[{i}]") for i, v in enumerate(value)))
    return (check(value, path),)


def _channels(body: dict, path: str) -> tuple[tuple[str, ...], str | None]:
    if "channel" in body and "channel_group" in body:
        raise _bad(f"{path}.channel_group", "give channel or channel_group, not both")
    channels = _strings(body["channel"], f"{path}.channel", _channel) if "channel" in body else ()
    group = None
    if "channel_group" in body:
        group = _one_of(body["channel_group"], f"{path}.channel_group", tuple(CHANNEL_GROUPS), "a channel group")
    return channels, group


def _window(body: dict, path: str) -> Window:
    """``"window": "7d"`` (the last 7 days, rolling) or ``{"since": date, "before": date}`` (either or both)."""
    if "window" not in body:
        return Window()
    raw, path = body["window"], f"{path}.window"
    if isinstance(raw, str):
        return Window(within=_duration(raw, path))
    if not isinstance(raw, dict) or not raw:
        raise _bad(path, 'a window is a duration ("7d": the last 7 days) or {"since": date, "before": date}')
    _keys(raw, path, ("since", "before"))
    since = _date(raw["since"], f"{path}.since") if "since" in raw else None
    before = _date(raw["before"], f"{path}.before") if "before" in raw else None
    if since and before:
        _ordered(since, before, f"{path}.before", "before must be later than since")
    return Window(None, since, before)


def _ordered(a: DateValue, b: DateValue, path: str, why: str) -> None:
    """Two dates of the same form must be in order (a day against an instant depends on the profile's zone)."""
    if (a.day and b.day and a.day >= b.day) or (a.at and b.at and a.at >= b.at):
        raise _bad(path, why)


def _duration(value: object, path: str) -> Duration:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _bad(path, str(exc)) from None


def _date(value: object, path: str) -> DateValue:
    try:
        return parse_date(value)
    except ValueError as exc:
        raise _bad(path, str(exc)) from None


def _count(value: object, path: str) -> Count:
    if not isinstance(value, dict) or len(value) != 1:
        raise _bad(path, 'times is one comparison of a count: {"gte": 3}, {"eq": 0} or {"lte": 2}')
    ((op, n),) = value.items()
    if op not in COUNT_OPS:
        raise _bad(f"{path}.{op}", f"times compares with {', '.join(COUNT_OPS)}")
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 1_000_000:
        raise _bad(f"{path}.{op}", "a count is a whole number from 0 to 1000000")
    return Count(op, n)


def _selection(body: dict, path: str, need_event: bool) -> Selection:
    event = _name(body["event"], f"{path}.event", "an event name") if "event" in body else None
    etype = _one_of(body["type"], f"{path}.type", EVENT_TYPES, "an event type") if "type" in body else None
    if need_event and event is None and etype is None:
        raise _bad(f"{path}.event", "name the event (e.g. Order Completed), or at least its type (e.g. page)")
    where: tuple[Filter, ...] = ()
    if "where" in body:
        raw = body["where"]
        if not isinstance(raw, list) or not raw or len(raw) > MAX_WHERE:
            raise _bad(f"{path}.where", f"where is a list of 1 to {MAX_WHERE} property tests")
        items = []
        for i, f in enumerate(raw):
            fpath = f"{path}.where[{i}]"
            if not isinstance(f, dict):
                raise _bad(fpath, 'a property test is an object: {"property": "category", "equals": "laptops"}')
            _keys(f, fpath, ("property", *FILTER_TESTS))
            prop = _name(f.get("property"), f"{fpath}.property", "a property name")
            items.append(Filter(prop, _test(f, fpath, FILTER_TESTS)))
        where = tuple(items)
    channels, group = _channels(body, path)
    return Selection(event, etype, where, channels, group, _window(body, path))


def _test(body: dict, path: str, allowed: tuple[str, ...]) -> Test:
    ops = [k for k in body if k in ALL_OPS]
    if not ops:
        raise _bad(path, f"give one test: {', '.join(allowed)}")
    if len(ops) > 1:
        raise _bad(f"{path}.{ops[1]}", f"one test per condition (found {ops[0]} and {ops[1]}); combine with and")
    op = ops[0]
    here = f"{path}.{op}"
    if op not in allowed:
        raise _bad(here, f"{op} does not apply here; use {', '.join(allowed)}")
    return Test(op, _arg(op, body[op], here))


def _scalar(value: object, path: str) -> str | int | float | bool:
    if isinstance(value, str):
        return _text(value, path, MAX_TEXT, "a value")
    if isinstance(value, bool | int | float):
        safejson.check(value, path)  # 64-bit integers, finite numbers: what can be stored and bound
        return value
    raise _bad(path, "a value is text, a number, true or false")


def _number(value: object, path: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(path, "this test takes a number")
    safejson.check(value, path)
    return value


def _arg(op: str, value: object, path: str):
    if op in ("equals", "not_equals", "includes"):
        return _scalar(value, path)
    if op == "in":
        if not isinstance(value, list) or not value or len(value) > MAX_LIST:
            raise _bad(path, f"in takes a list of 1 to {MAX_LIST} values")
        return tuple(_scalar(v, f"{path}[{i}]") for i, v in enumerate(value))
    if op in ("contains", "starts_with"):
        return _text(value, path, MAX_TEXT, f"the text {op.replace('_', ' ')} looks for")
    if op == "exists":
        if not isinstance(value, bool):
            raise _bad(path, "exists takes true or false")
        return value
    if op in ("gt", "gte", "lt", "lte"):
        return _number(value, path)
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise _bad(path, "between takes [low, high] (both included)")
        lo, hi = _number(value[0], f"{path}[0]"), _number(value[1], f"{path}[1]")
        if lo > hi:
            raise _bad(f"{path}[1]", "high must not be below low")
        return (lo, hi)
    if op in ("since", "before"):
        return _date(value, path)
    if op == "date_between":
        if not isinstance(value, list) or len(value) != 2:
            raise _bad(path, "date_between takes [since, before] (since included, before excluded)")
        a, b = _date(value[0], f"{path}[0]"), _date(value[1], f"{path}[1]")
        if (a.day is None) != (b.day is None):
            raise _bad(f"{path}[1]", "give both as days (YYYY-MM-DD) or both as date-times")
        _ordered(a, b, f"{path}[1]", "the second date must be later than the first")
        return (a, b)
    if op in RELATIVE_DATE_OPS:
        return _duration(value, path)
    if op == "anniversary":
        if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("next_days", "last_days"):
            raise _bad(path, 'anniversary takes {"next_days": N} or {"last_days": N} (local calendar days)')
        ((key, n),) = value.items()
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_ANNIVERSARY_DAYS:
            raise _bad(f"{path}.{key}", f"a number of days from 0 (the day itself) to {MAX_ANNIVERSARY_DAYS}")
        return Anniversary(before=n) if key == "next_days" else Anniversary(after=n)
    raise AssertionError(op)


def _test_values(test: Test) -> tuple:
    if test.op == "in":
        return test.arg
    if test.op in ("equals", "not_equals"):
        return (test.arg,)
    return ()


def parse(raw: object, path: str = "rule") -> Node:
    """A rule from decoded JSON, validated; a :class:`ChorusError` names the bad node's path and why."""
    safejson.check(raw, path)  # NUL, lone surrogates, 64-bit integers, finite numbers, depth: named by path
    return _Parser().node(raw, path, 1)


# -- YAML -------------------------------------------------------------------------------------------------------
def load_yaml(text: str, path: str = "rule") -> object:
    """YAML text as plain data, safely: no tags, no aliases (a few lines could otherwise expand into millions of
    conditions), and dates left as text (``2024-01-01`` stays the string the rule means)."""
    try:
        import yaml  # PyYAML, MIT
    except ImportError:  # pragma: no cover - depends on the installation
        raise ChorusError("YAML rules need PyYAML (pip install pyyaml); JSON rules do not", field=path) from None
    if not isinstance(text, str) or len(text) > MAX_YAML:
        raise _bad(path, f"a YAML rule is text of at most {MAX_YAML // 1024} KB")

    class Loader(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise _OursYAML(mark, "aliases (*name) are not allowed in rules")
            return super().compose_node(parent, index)

        def construct_mapping(self, node, deep=False):
            # a key given twice is a mistake, as in a JSON body (PyYAML would keep the last silently)
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: {...}` merges a mapping in (flatten_mapping)
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str | int | float | bool) or key is None:
                    if key in seen:
                        raise _OursYAML(key_node.start_mark, f"the key {_shown(key)} appears twice in one mapping")
                    seen.add(key)
            return super().construct_mapping(node, deep)

    # JSON's types only: no binary, set, ordered map or timestamp, even when a tag asks for one
    json_tags = {f"tag:yaml.org,2002:{t}" for t in ("null", "bool", "int", "float", "str", "seq", "map")}
    Loader.yaml_constructors = {  # None: any other tag is refused ("could not determine a constructor")
        t: c for t, c in yaml.SafeLoader.yaml_constructors.items() if t in json_tags or t is None
    }
    Loader.yaml_implicit_resolvers = {
        ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    try:
        data = yaml.load(text, Loader=Loader)  # a SafeLoader subclass: plain data only
    except RecursionError:  # the loader recurses per level of nesting
        raise _bad(path, "the YAML is nested too deeply (a rule has at most 16 levels)") from None
    except _OursYAML as exc:
        where = f"line {exc.mark.line + 1}, column {exc.mark.column + 1}"
        raise _bad(path, f"not valid YAML ({where}): {exc.why}") from None
    except yaml.reader.ReaderError as exc:  # a character YAML refuses anywhere (a control character): no mark
        line, column = _line_column(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1] or "\0")
        raise _bad(path, f"not valid YAML (line {line}, column {column}): a character YAML does not allow in its "
                         f"text (U+{code:04X}); write it as \"\\u{code:04X}\" in a double-quoted value") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        # a problem the table does not know still gets a reason in our words, never PyYAML's
        why = (yaml_problem(getattr(exc, "problem", None) or "") or yaml_problem(getattr(exc, "context", None) or "")
               or ": the text does not follow YAML's syntax here")  # fmt: skip
        raise _bad(path, f"not valid YAML{where}{why}") from None
    _string_keys(data, path)
    return data


class _OursYAML(Exception):
    """A YAML rule refused for a reason of Chorus' own, at a place in the text."""

    def __init__(self, mark, why: str):
        super().__init__(why)
        self.mark, self.why = mark, why


# PyYAML's problems (its own wording, which the client never sees), by their start -> ours
_YAML_PROBLEMS = (
    ("mapping values are not allowed", "a ':' where no key can start; check the indentation"),
    ("found character '\\t'", "a tab: indent with spaces"),
    ("found character", "a character that cannot start a value here; quote the value"),
    ("expected ',' or ']'", "a list opened with '[' is not closed"),
    ("expected ',' or '}'", "a mapping opened with '{' is not closed"),
    ("could not find expected ':'", "a key without its ':'"),
    ("found unexpected end of stream", "a quote is not closed"),
    ("found unknown escape character", "an unknown escape (\\) in a double-quoted value"),
    ("could not determine a constructor", "a tag (!name) that rules do not take: write plain JSON values"),
    ("expected the node content", "a value is missing"),
    ("expected <block end>", "the indentation does not line up with the lines above"),
    ("but found another document", "more than one document (---): give one rule"),
    ("found undefined tag handle", "a tag (!name) that rules do not take: write plain JSON values"),
    ("found a tab character", "a tab: indent with spaces"),
    ("found unhashable key", "a key that is a list or a mapping: a key is a name"),
    ("found duplicate anchor", "an anchor (&name) given twice"),
    ("found undefined alias", "an alias (*name) of no anchor"),
    ("expected a single document", "more than one document (---): give one"),
    ("found unexpected document separator", "a document separator (---) inside a value"),
    ("expected escape sequence of", "an escape (\\x, \\u, \\U) without its hexadecimal digits"),
    ("expected a mapping for merging", "a merge (<<) of something that is not a mapping"),
    ("expected a mapping or list of mappings for merging", "a merge (<<) of something that is not a mapping"),
    ("expected alphabetic or numeric character", "an anchor, alias or tag name that is not letters and digits"),
    ("expected chomping or indentation indicators", "a block scalar (| or >) header that is not valid"),
    ("expected indentation indicator in the range 1-9", "a block scalar (| or >) indentation that is not 1 to 9"),
    ("expected a comment or a line break", "text after a block scalar (| or >) header or a directive"),
    ("expected '<document start>'", "a directive (%) without the document (---) it applies to"),
    ("found incompatible YAML document", "a YAML version other than 1.x"),
    ("found duplicate YAML directive", "a %YAML directive given twice"),
)


_LINE_BREAKS = re.compile("\r\n|[\n\r\x85\u2028\u2029]")  # what PyYAML counts as a line break


def _line_column(text: str, position: int) -> tuple[int, int]:
    """1-based line and column of a character offset in ``text``, counted as PyYAML counts them."""
    lines = _LINE_BREAKS.split(text[: max(position, 0)])
    return len(lines), len(lines[-1]) + 1


def yaml_problem(problem: str) -> str:
    """``: <what is wrong>`` in our words for a PyYAML problem, or nothing when it is not one we know."""
    ours = next((o for theirs, o in _YAML_PROBLEMS if problem.startswith(theirs)), None)
    return f": {ours}" if ours else ""


def _quote(text: object) -> str:
    """A name the user wrote, quoted, at most 60 characters (a hostile 5 MB key is not echoed back whole; the
    message's end, what was expected, is kept)."""
    text = str(text)
    return f"'{text}'" if len(text) <= 60 else f"'{text[:59]}…'"


def _shown(key: object) -> str:
    """A YAML key as JSON writes it (``"plan"``, ``true``, ``1``), at most 60 characters."""
    import json

    text = json.dumps(key, ensure_ascii=False)
    return text if len(text) <= 60 else text[:59] + "…"


def _string_keys(value: object, path: str) -> None:
    """YAML keys can be numbers or booleans (``on:`` is True); a rule's keys are names."""
    stack = [(value, path)]
    while stack:
        item, p = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if not isinstance(k, str):
                    raise _bad(p, f"key {_shown(k)} is not text (quote it; YAML reads on/off/yes/no as true/false)")
                stack.append((v, f"{p}.{k}"))
        elif isinstance(item, list):
            stack.extend((v, f"{p}[{i}]") for i, v in enumerate(item))


def parse_yaml(text: str, path: str = "rule") -> Node:
    return parse(load_yaml(text, path), path)


# -- back to JSON -----------------------------------------------------------------------------------------------
def _arg_json(op: str, arg):
    if isinstance(arg, Duration):
        return arg.text()
    if isinstance(arg, DateValue):
        return arg.text
    if isinstance(arg, Anniversary):
        return {"next_days": arg.before} if arg.before or not arg.after else {"last_days": arg.after}
    if op == "date_between":
        return [arg[0].text, arg[1].text]
    if isinstance(arg, tuple):
        return list(arg)
    return arg


def _test_json(test: Test) -> dict:
    return {test.op: _arg_json(test.op, test.arg)}


def _window_json(w: Window) -> dict:
    if w.within:
        return {"window": w.within.text()}
    dated = {k: v.text for k, v in (("since", w.since), ("before", w.before)) if v is not None}
    return {"window": dated} if dated else {}


def _one_or_list(values: tuple[str, ...]):
    return values[0] if len(values) == 1 else list(values)


def _selection_json(s: Selection) -> dict:
    out: dict = {}
    if s.event is not None:
        out["event"] = s.event
    if s.type is not None:
        out["type"] = s.type
    if s.where:
        out["where"] = [{"property": f.property, **_test_json(f.test)} for f in s.where]
    if s.channels:
        out["channel"] = _one_or_list(s.channels)
    if s.channel_group:
        out["channel_group"] = s.channel_group
    return {**out, **_window_json(s.window)}


def to_json(node: Node) -> dict:
    """The canonical JSON of a rule: ``parse(to_json(rule)) == rule``."""
    match node:
        case And(children):
            return {"and": [to_json(c) for c in children]}
        case Or(children):
            return {"or": [to_json(c) for c in children]}
        case Not(child):
            return {"not": to_json(child)}
        case Trait(name, test):
            return {"trait": {"name": name, **_test_json(test)}}
        case Performed(sel, times):
            body = _selection_json(sel)
            if times != Count():
                body["times"] = {times.op: times.n}
            return {"performed": body}
        case Aggregate(sel, function, prop, test):
            body = {**_selection_json(sel), "function": function}
            if prop is not None:
                body["property"] = prop
            return {"aggregate": {**body, **_test_json(test)}}
        case LastValue(sel, prop, test):
            return {"last_value": {**_selection_json(sel), "property": prop, **_test_json(test)}}
        case EventTime(which, sel, test):
            return {f"{which}_time": {**_selection_json(sel), **_test_json(test)}}
        case UsedChannel(channels, group, window):
            body = {"channel": _one_or_list(channels)} if channels else {"channel_group": group}
            return {"used_channel": {**body, **_window_json(window)}}
        case LastChannel(test):
            return {"last_channel": _test_json(test)}
        case ChannelCount(test, window):
            return {"channel_count": {**_test_json(test), **_window_json(window)}}
        case ChannelMix(test, window):
            return {"channel_mix": {**_test_json(test), **_window_json(window)}}
        case Reachable(channel, topic):
            return {"reachable": {"channel": channel, **({"topic": topic} if topic is not None else {})}}
        case Subscribed(channel, topic):
            return {"subscribed": {"channel": channel, "topic": topic}}
        case Message():
            body = {"status": _one_or_list(node.statuses)}
            for key in ("message_id", "template", "journey", "campaign", "channel", "topic"):
                if getattr(node, key):
                    body[key] = _one_or_list(getattr(node, key))
            body.update(_window_json(node.window))
            if node.times != Count():
                body["times"] = {node.times.op: node.times.n}
            return {"message": body}
        case SegmentRef(segment):
            return {"segment": segment}
        case Bucket(start, end, seed):
            return {"bucket": {"from": start, "to": end, **({"seed": seed} if seed is not None else {})}}
        case InList(list_id):
            return {"list": list_id}
    raise TypeError(f"not a rule node: {node!r}")


# -- walking ----------------------------------------------------------------------------------------------------
def walk(node: Node, path: str = "rule"):
    """Every condition of a rule with its path, parents first."""
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        yield n, p
        if isinstance(n, And | Or):
            key = "and" if isinstance(n, And) else "or"
            stack.extend((c, f"{p}.{key}[{i}]") for i, c in reversed(list(enumerate(n.children))))
        elif isinstance(n, Not):
            stack.append((n.child, f"{p}.not"))


def references(node: Node, path: str = "rule") -> list[tuple[str, str]]:
    """(path, segment id) of every reference to another segment, in rule order."""
    return [(f"{p}.segment", n.segment) for n, p in walk(node, path) if isinstance(n, SegmentRef)]


def check_references(defs: Mapping[str, Node], focus: str | None = None) -> list[str]:
    """Check that every segment a definition refers to exists and that no segment depends on itself.

    Returns the segment ids in dependency order (a segment after every segment it refers to), which is the order a
    batch recompute must follow. Raises a :class:`ChorusError` whose field is the path, in the offending
    definition's rule, of the reference at fault; with ``focus`` (the segment being saved), a cycle is reported
    from that segment when it is on one."""
    refs = {sid: references(rule) for sid, rule in defs.items()}
    ids = [focus] if focus in defs else []
    ids += sorted(sid for sid in defs if sid != focus)
    for sid in ids:
        for path, target in refs[sid]:
            if target not in defs:
                raise ChorusError(f"{path}: segment {_quote(target)} (referred to by {_quote(sid)}) does not exist",
                                  field=path)  # fmt: skip
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in ids:
        if state.get(root):
            continue
        # iterative depth-first search: (segment, index of its next reference); rules nest, chains may be long
        stack: list[tuple[str, int]] = [(root, 0)]
        via: dict[str, str] = {}  # segment on the current path -> the path of the reference followed from it
        state[root] = 1
        while stack:
            sid, i = stack[-1]
            if i == len(refs[sid]):
                stack.pop()
                state[sid] = 2
                order.append(sid)
                continue
            stack[-1] = (sid, i + 1)
            path, target = refs[sid][i]
            via[sid] = path
            if state.get(target) == 1:
                # reported in the rule of the cycle's first segment (the focus, when it is on the cycle)
                chain = [s for s, _ in stack[[s for s, _ in stack].index(target) :]] + [target]
                shown = " → ".join(repr(s) for s in chain)
                why = "refers to itself" if len(chain) == 2 else "depends on itself"
                at = via[target]
                raise ChorusError(f"{at}: segment {_quote(target)} {why}: {shown}", field=at)
            if not state.get(target):
                state[target] = 1
                stack.append((target, 0))
    return order


@dataclass(frozen=True)
class Inputs:
    """What a rule reads: an engine re-evaluates it for a profile only when one of these changed."""

    traits: frozenset[str] = frozenset()  # trait names as written (dotted paths)
    computed: frozenset[str] = frozenset()
    events: frozenset[str] = frozenset()  # event names; "*" when any event (of a type, or on a channel) may matter
    activity: bool = False  # any of the person's own events (channel conditions)
    messages: bool = False  # message status records
    consent: bool = False  # consent and addresses (reachable, subscribed)
    segments: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    timezone: bool = False  # the profile's time zone changes the answer (a calendar date or an anniversary)
    timed: bool = False  # time alone can change the answer (a timer is needed)


def dependencies(node: Node) -> Inputs:
    traits: set[str] = set()
    computed: set[str] = set()
    events: set[str] = set()
    segs: set[str] = set()
    lists: set[str] = set()
    flags = {"activity": False, "messages": False, "consent": False, "timezone": False, "timed": False}

    def test_time(test: Test) -> None:
        if test.op in RELATIVE_DATE_OPS or test.op == "anniversary":
            flags["timed"] = True
        if test.op in DATE_OPS:
            flags["timezone"] = True  # a YYYY-MM-DD value or bound is local to the profile

    def window_time(w: Window) -> None:
        flags["timed"] = True  # an event stamped later than now counts from its time; a rolling one stops
        if (w.since and w.since.day) or (w.before and w.before.day):
            flags["timezone"] = True

    for n, _ in walk(node):
        if isinstance(n, Trait):
            (computed if n.computed is not None else traits).add(n.computed or n.name)
            test_time(n.test)
        elif isinstance(n, Performed | Aggregate | LastValue | EventTime):
            events.add(n.selection.event or "*")
            window_time(n.selection.window)
            for f in n.selection.where:
                test_time(f.test)
            if isinstance(n, LastValue | EventTime):
                test_time(n.test)
        elif isinstance(n, UsedChannel | LastChannel | ChannelCount | ChannelMix):
            flags["activity"] = True
            flags["timed"] = True
            if not isinstance(n, LastChannel):
                window_time(n.window)
        elif isinstance(n, Reachable | Subscribed):
            flags["consent"] = True
        elif isinstance(n, Message):
            flags["messages"] = True
            window_time(n.window)
        elif isinstance(n, SegmentRef):
            segs.add(n.segment)
        elif isinstance(n, InList):
            lists.add(n.list)
    return Inputs(
        frozenset(traits), frozenset(computed), frozenset(events), segments=frozenset(segs), lists=frozenset(lists),
        **flags,
    )  # fmt: skip
