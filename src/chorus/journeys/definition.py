"""The journey definition language: parsing and complete validation into immutable plain-data nodes.

A journey is JSON (or YAML in files): an ``entry``, how a person may enter again (``reentry``), an optional
``goal`` and ``exit`` criteria, and a map of ``nodes`` by id, each with a ``type`` and the ids of the nodes that
follow it. Event selections and property tests are the segment rule language's own (:mod:`chorus.segments.rules`),
and a condition split takes a whole segment rule, so one vocabulary serves both. The reference, with examples, is
``docs/journeys.md``; why this shape, decision 0035.

Validation is complete: a definition that parses can be run by the interpreter for anybody without an error.
Errors are :class:`ChorusError` naming the place as written (``nodes.wait_cart.branches[1].event.where[0].equals``).
Structure is checked here (every node reachable from ``start``, no dangling ``next``, a cycle only through a node
with ``max_visits`` *and* a waiting node); references to templates, segments, lists and audiences are checked by
:func:`check_references` against the names the caller knows (pure: the runtime passes what the store has).

Nothing here does I/O. :func:`parse` takes decoded JSON, :func:`parse_yaml` YAML text; :func:`to_json` gives the
canonical JSON back (``parse(to_json(d)) == d``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Union
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import orjson

from chorus import safejson
from chorus.errors import ChorusError
from chorus.messaging.outbox import KINDS, STATUS_EVENTS
from chorus.messaging.policy import MESSAGE_CHANNELS, TOPIC_NAME, TOPIC_RULE
from chorus.segments import rules as r
from chorus.segments.rules import (  # the rule language's own validators: one vocabulary, one set of messages
    _bad,
    _ident,
    _keys,
    _name,
    _one_of,
    _selection,
    _strings,
    _text,
    _topic,
)
from chorus.segments.times import DateValue, Duration, day_start
from chorus.timeutil import iso

MAX_NODES = 200  # nodes of one journey
MAX_BRANCHES = 20  # branches of one wait, arms of one split
MAX_SAME = 10  # properties a wait or goal matches against the entry event
MAX_VISITS = 1000  # the largest max_visits bound
MAX_URL = 2000
MAX_KEY = r.MAX_NAME  # characters of any key of a definition's objects (a data key, a node id is shorter still)
# Bytes (as JSON) of a value a step carries: an update_trait value, a message's or a webhook's data. A tracked message
# is at most 32 KB (collect.messages.MAX_MESSAGE_BYTES), so no trait or event property a person has is longer.
MAX_VALUE = 32 * 1024
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):([0-5][0-9])")
_OFFSET = re.compile(r"([+-]?)(.+)")
_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")  # one label of a host name (idna-encoded)
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
REENTRY = ("never", "after_exit", "cooldown", "per_key")
NODE_TYPES = (
    "delay", "wait", "condition", "split", "message", "update_trait", "list", "audience", "webhook", "exit",
)  # fmt: skip
WAITING_TYPES = ("delay", "wait")  # a node where time passes: a cycle must go through one
# Statuses of the journey's own message a wait can react to: what the person did, or what became of the message.
MESSAGE_STATUSES = tuple(s for s in STATUS_EVENTS if s != "queued")
ACTIONS = ("add", "remove")
METHODS = ("POST", "PUT")


# -- the model --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Same:
    """The event's ``property`` must equal the entry event's ``entry`` property (both present)."""

    property: str
    entry: str


@dataclass(frozen=True, slots=True)
class EventMatch:
    """An event of the person: the rule language's selection (no window) and properties shared with the entry."""

    selection: r.Selection
    same: tuple[Same, ...] = ()


@dataclass(frozen=True, slots=True)
class SegmentChange:
    segment: str
    change: str  # entered | exited


@dataclass(frozen=True, slots=True)
class MessageMatch:
    """A status of a message this instance sent (at message node ``node``, or at any of its message nodes)."""

    statuses: tuple[str, ...]
    node: str | None = None


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A segment rule that holds for the person at the input's instant (a spend over 100 in 7 days, a trait)."""

    rule: r.Node


Criterion = Union[EventMatch, SegmentChange, RuleMatch]  # noqa: UP007 (a runtime Union keeps isinstance)
Trigger = Union[EventMatch, SegmentChange, MessageMatch]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class EventEntry:
    match: EventMatch
    key: str | None = None  # a property of the entry event: dedup and concurrency per key


@dataclass(frozen=True, slots=True)
class SegmentEntry:
    segment: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """A scheduled audience: ``segment`` (None: everybody) entered at a fixed instant (``at``), at a local time on a
    day (``on`` + ``time``), every ``every`` from ``start``, or at a local ``time`` on ``weekdays`` (all when
    empty) from ``on`` (the first day, optional)."""

    segment: str | None = None
    at: datetime | None = None
    on: date | None = None
    time: time | None = None
    every: Duration | None = None
    start: datetime | None = None
    weekdays: tuple[int, ...] = ()
    until: date | None = None  # recurring local runs: the last day (included)

    @property
    def recurring(self) -> bool:
        """A local time with ``on`` alone is one day; with weekdays, until or no ``on`` it recurs."""
        if self.every is not None:
            return True
        return self.time is not None and (self.on is None or bool(self.weekdays) or self.until is not None)


@dataclass(frozen=True, slots=True)
class ApiEntry:
    key: str | None = None  # a field of the start request's data


Entry = Union[EventEntry, SegmentEntry, Schedule, ApiEntry]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class Reentry:
    mode: str = "after_exit"
    cooldown: Duration | None = None


@dataclass(frozen=True, slots=True)
class Goal:
    criterion: Criterion
    within: Duration | None = None  # from entry; None: as long as the person is in the journey


@dataclass(frozen=True, slots=True)
class Offset:
    """A signed exact duration (``-1d``, ``+2h``)."""

    sign: int
    duration: Duration

    @property
    def delta(self) -> timedelta:
        return self.sign * self.duration.delta

    def text(self) -> str:
        return ("-" if self.sign < 0 else "+") + self.duration.text()


@dataclass(frozen=True, slots=True)
class DateFrom:
    """A date read from a profile trait (``source="trait"``, ``computed.x`` for a computed one) or a property of
    the entry event (``source="property"``)."""

    source: str
    name: str


@dataclass(frozen=True, slots=True)
class Delay:
    next: str
    duration: Duration | None = None  # ``for``
    at: time | None = None  # a local time of day, on ``weekdays`` (all when empty)
    weekdays: tuple[int, ...] = ()
    until: DateFrom | None = None
    offset: Offset | None = None
    missing: str | None = None  # where to go when ``until``'s date is absent (default: next)


@dataclass(frozen=True, slots=True)
class Branch:
    name: str
    on: Trigger
    next: str


@dataclass(frozen=True, slots=True)
class Wait:
    branches: tuple[Branch, ...]
    timeout: Duration
    timeout_next: str


@dataclass(frozen=True, slots=True)
class Condition:
    """``rule`` (a segment rule, evaluated for the person now) or ``entry`` (a test of an entry event property)."""

    then: str
    otherwise: str
    rule: r.Node | None = None
    entry: r.Filter | None = None


# The variants the uplift report reads as held out (``analytics.uplift``): the runtime marks a holdout arm with the
# first, and never gives a treated arm one of these as its variant.
HOLDOUT_VARIANTS = ("holdout", "control")
# What a split's bucket hashes: her profile id (Chorus' own, random), or her anchor identifier (her user id when she
# has one, else her email, ..., else her anonymous id: identity.identifiers.anchor_of), which does not depend on
# Chorus' ids, so the same people land in the same arms in another workspace or a replay of the same data.
SPLIT_BY = ("profile", "identifier")


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    weight: int  # percent
    next: str | None  # None for a holdout arm
    holdout: bool = False


@dataclass(frozen=True, slots=True)
class Split:
    arms: tuple[Arm, ...]
    seed: str | None = None  # default: "<journey id>:<node id>"
    by: str = "profile"  # what her bucket hashes: "profile" (her profile id) or "identifier" (her anchor identifier)


@dataclass(frozen=True, slots=True)
class SendMessage:
    template: str
    next: str
    channel: str | tuple[str, ...] = "auto"
    kind: str = "marketing"
    topic: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class UpdateTrait:
    trait: str
    value: Any
    next: str


@dataclass(frozen=True, slots=True)
class ListStep:
    list: str
    action: str
    next: str


@dataclass(frozen=True, slots=True)
class AudienceStep:
    audience: str
    action: str
    next: str


@dataclass(frozen=True, slots=True)
class WebhookStep:
    url: str
    next: str
    method: str = "POST"
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ExitStep:
    pass


Body = Union[  # noqa: UP007
    Delay, Wait, Condition, Split, SendMessage, UpdateTrait, ListStep, AudienceStep, WebhookStep, ExitStep
]
TYPE_OF = {
    Delay: "delay", Wait: "wait", Condition: "condition", Split: "split", SendMessage: "message",
    UpdateTrait: "update_trait", ListStep: "list", AudienceStep: "audience", WebhookStep: "webhook", ExitStep: "exit",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    body: Body
    max_visits: int | None = None
    overflow: str | None = None  # where the visit after max_visits goes (default: the person exits)

    @property
    def type(self) -> str:
        return TYPE_OF[type(self.body)]


@dataclass(frozen=True)
class Definition:
    id: str
    entry: Entry
    start: str
    nodes: tuple[Node, ...]
    name: str | None = None
    reentry: Reentry = field(default_factory=Reentry)
    goal: Goal | None = None
    exit_on_goal: bool = True
    exits: tuple[Criterion, ...] = ()
    by_id: Mapping[str, Node] = field(init=False, repr=False, compare=False, hash=False)
    cyclic: frozenset[str] = field(init=False, repr=False, compare=False, hash=False)  # the nodes on a loop
    # a split draws by identifier: an instance keeps the identifier it draws by from its entry
    draws_by_identifier: bool = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        by_id = {n.id: n for n in self.nodes}
        object.__setattr__(self, "by_id", by_id)
        cyclic: frozenset[str] = frozenset()
        if all(t in by_id for n in self.nodes for _, t in successors(n)):  # parse reports a dangling edge itself
            cyclic = frozenset(n.id for n in self.nodes if n.id in _reach(self, n.id))
        object.__setattr__(self, "cyclic", cyclic)
        object.__setattr__(self, "draws_by_identifier",
                           any(isinstance(n.body, Split) and n.body.by == "identifier" for n in self.nodes))

    def node(self, node_id: str) -> Node:
        return self.by_id[node_id]

    @property
    def entry_key(self) -> str | None:
        return _entry_key(self.entry, self.reentry)


# The key of a scheduled entry with ``reentry: per_key``: each run is entered once, runs side by side (a recurring
# broadcast with a goal window longer than its period reaches everybody at every run). Every scheduled start
# carries its run's id under this name (``interpreter.scheduled_start``).
RUN_KEY = "run"


def _entry_key(entry, reentry: Reentry) -> str | None:
    if isinstance(entry, EventEntry | ApiEntry):
        return entry.key
    if isinstance(entry, Schedule) and reentry.mode == "per_key":
        return RUN_KEY
    return None


def successors(node: Node) -> list[tuple[str, str]]:
    """(field path inside the node, target id) of every edge leaving ``node``, in written order."""
    b = node.body
    out: list[tuple[str, str]] = []
    if isinstance(b, Delay):
        out.append(("next", b.next))
        if b.missing is not None:
            out.append(("missing", b.missing))
    elif isinstance(b, Wait):
        out += [(f"branches[{i}].next", br.next) for i, br in enumerate(b.branches)]
        out.append(("timeout.next", b.timeout_next))
    elif isinstance(b, Condition):
        out += [("then", b.then), ("else", b.otherwise)]
    elif isinstance(b, Split):
        out += [(f"arms[{i}].next", a.next) for i, a in enumerate(b.arms) if a.next is not None]
    elif not isinstance(b, ExitStep):
        out.append(("next", b.next))
    if node.overflow is not None:
        out.append(("overflow", node.overflow))
    return out


def _object(body: object, path: str) -> dict:
    if not isinstance(body, dict):
        raise _bad(path, "expected an object here")
    return body


def _duration(value: object, path: str) -> Duration:
    """The rule language's duration, with a message for a missing or non-text value (never its Python repr)."""
    if value is None:
        raise _bad(path, "a duration is required: a whole number and a unit, m, h, d or w (e.g. 1h)")
    if not isinstance(value, str):
        raise _bad(path, "a duration is text: a whole number and a unit, m, h, d or w (e.g. 1h)")
    if len(value) > 20:
        raise _bad(path, "not a duration: write a whole number and a unit, m, h, d or w (e.g. 1h)")
    return r._duration(value, path)


def _date(value: object, path: str) -> DateValue:
    """The rule language's date, with a message for a missing or non-text value (never its Python repr)."""
    if value is None:
        raise _bad(path, "a date is required: YYYY-MM-DD, or an ISO-8601 date-time with its zone")
    if not isinstance(value, str):
        raise _bad(path, "a date is text: YYYY-MM-DD, or an ISO-8601 date-time with its zone")
    if len(value) > 64:
        raise _bad(path, "not a date: write YYYY-MM-DD, or an ISO-8601 date-time with its zone")
    return r._date(value, path)


def _bounded_value(value: object, path: str, what: str) -> object:
    """``value`` (checked storable already) if its JSON is at most :data:`MAX_VALUE` bytes."""
    if len(orjson.dumps(value)) > MAX_VALUE:
        raise _bad(path, f"{what} is at most {MAX_VALUE // 1024} KB as JSON")
    return value


def _long_key(raw: object, path: str) -> tuple[str, str] | None:
    """(the object's path, the key) of the first object key longer than :data:`MAX_KEY` in ``raw``, or None."""
    stack: list[tuple[object, str]] = [(raw, path)]
    while stack:
        item, here = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and len(k) > MAX_KEY:
                    return here, k
                stack.append((v, safejson.join(here, str(k))))
        elif isinstance(item, list):
            stack.extend((v, f"{here}[{i}]") for i, v in enumerate(item))
    return None


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a webhook's address (None: it can, as far as its text goes; the address its host
    resolves to is checked at delivery, ``webhooks.refused_address``)."""
    if any(c.isspace() or ord(c) < 32 or 127 <= ord(c) < 160 for c in url):
        return "the url has a space or a control character; encode it (%20)"
    if "\\" in url:
        return "the url has a backslash; write / (or encode it, %5C)"
    try:
        parts = urlsplit(url)
        port = parts.port  # a port out of range or not a number raises here
    except ValueError:
        return "the url is not a valid URL (its host or port cannot be read)"
    if parts.scheme.lower() not in ("http", "https") or not url[len(parts.scheme):].startswith("://"):
        return "the url must be absolute, http:// or https:// (e.g. https://example.com/hook)"
    host = parts.hostname or ""
    if not host:
        return "the url has no host (e.g. https://example.com/hook)"
    if port == 0:
        return "the url's port is 1 to 65535"
    if ":" in host:  # an IPv6 literal, bracketed: urlsplit read it
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return f"the url's host [{host}] is not an IPv6 address"
        return None
    try:
        ascii_host = host.rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        return f"the url's host '{host[:100]}' is not a host name"
    if not all(_LABEL.fullmatch(label) for label in ascii_host.split(".")):
        return f"the url's host '{host[:100]}' is not a host name (letters, digits, '-' and '.')"
    return None


def _reach(defn: Definition, start: str, *, include_start: bool = False) -> set[str]:
    """The nodes reachable from ``start`` by at least one edge (and ``start`` itself with ``include_start``)."""
    seen: set[str] = {start} if include_start else set()
    stack = [t for _, t in successors(defn.by_id[start])]
    while stack:
        nid = stack.pop()
        if nid not in seen:
            seen.add(nid)
            stack.extend(t for _, t in successors(defn.by_id[nid]))
    return seen


# -- parsing ----------------------------------------------------------------------------------------------------
def _node_id(value: object, path: str, what: str = "a node id") -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise _bad(path, f"{what} is 1 to 64 letters, digits, '_', '.' or '-' (not starting with '.' or '-')")
    return value


def _event_match(raw: object, path: str, *, entry: bool = False) -> EventMatch:
    body = _object(raw, path)
    if "window" in body:
        raise _bad(f"{path}.window", "a journey reacts to events as they happen; an event here takes no window")
    _keys(body, path, (*r.SELECTION_KEYS, *(("key",) if entry else ("same",))))
    sel = _selection(body, path, need_event=True)
    same: list[Same] = []
    if "same" in body:
        items = body["same"]
        if not isinstance(items, list) or not items or len(items) > MAX_SAME:
            raise _bad(f"{path}.same", f"same is a list of 1 to {MAX_SAME} properties shared with the entry event")
        for i, item in enumerate(items):
            here = f"{path}.same[{i}]"
            if isinstance(item, str):
                prop = _name(item, here, "a property name")
                same.append(Same(prop, prop))
                continue
            if not isinstance(item, dict):
                raise _bad(here, 'give a property name (cart_id) or {"property": ..., "entry": ...}')
            _keys(item, here, ("property", "entry"))
            prop = _name(item.get("property"), f"{here}.property", "a property name")
            same.append(Same(prop, _name(item.get("entry"), f"{here}.entry", "a property of the entry event")))
    return EventMatch(sel, tuple(same))


def _segment_change(raw: object, path: str) -> SegmentChange:
    body = _object(raw, path)
    _keys(body, path, ("entered", "exited"))
    if len(body) != 1:
        raise _bad(path, 'give {"entered": segment} or {"exited": segment}')
    ((change, seg),) = body.items()
    return SegmentChange(_ident(seg, f"{path}.{change}"), change)


def _one_key(raw: object, path: str, kinds: tuple[str, ...], what: str) -> tuple[str, object]:
    if not isinstance(raw, dict) or len(raw) != 1:
        raise _bad(path, f"{what} is an object with exactly one key, its kind: {', '.join(kinds)}")
    ((kind, body),) = raw.items()
    if kind not in kinds:
        raise _bad(path, f"unknown kind '{kind}'; {what} is one of {', '.join(kinds)}")
    return kind, body


def _criterion(raw: object, path: str) -> Criterion:
    kind, body = _one_key(raw, path, ("event", "segment", "rule"), "a criterion")
    if kind == "event":
        return _event_match(body, f"{path}.event")
    if kind == "rule":
        return RuleMatch(r.parse(body, f"{path}.rule"))
    return _segment_change(body, f"{path}.segment")


def _hhmm(value: object, path: str) -> time:
    m = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _bad(path, "a local time of day is HH:MM, 00:00 to 23:59 (e.g. 09:00)")
    return time(int(m.group(1)), int(m.group(2)))


def _weekdays(value: object, path: str) -> tuple[int, ...]:
    days = _strings(value, path, lambda v, p: _one_of(v, p, WEEKDAYS, "a weekday"))
    return tuple(sorted(WEEKDAYS.index(d) for d in days))


def _instant(value: object, path: str) -> datetime:
    d = _date(value, path)
    if d.at is None:
        raise _bad(path, "give an instant with its zone, e.g. 2026-12-01T09:00:00Z (a day alone is local)")
    return d.at


def _day(value: object, path: str) -> date:
    d = _date(value, path)
    if d.day is None:
        raise _bad(path, "give a day, YYYY-MM-DD (local to each profile)")
    return d.day


def _bounded_int(value: object, path: str, lo: int, hi: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(path, f"{what} is a whole number from {lo} to {hi}")
    return value


def _data(value: object, path: str, what: str, strict: bool = True) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "data is a JSON object")
    if strict:
        _bounded_value(value, path, what)
    return value


def _entry(raw: object, path: str) -> Entry:
    kind, body = _one_key(raw, path, ("event", "segment", "schedule", "api"), "an entry")
    here = f"{path}.{kind}"
    if kind == "event":
        match = _event_match(body, here, entry=True)
        key = _name(body["key"], f"{here}.key", "the key property") if "key" in body else None
        return EventEntry(match, key)
    if kind == "segment":
        return SegmentEntry(_ident(body, here))
    if kind == "api":
        body = _object(body, here)
        _keys(body, here, ("key",))
        return ApiEntry(_name(body["key"], f"{here}.key", "the key field") if "key" in body else None)
    return _schedule(_object(body, here), here)


def _schedule(body: dict, path: str) -> Schedule:
    _keys(body, path, ("segment", "at", "on", "time", "every", "start", "weekdays", "until"))
    seg = _ident(body["segment"], f"{path}.segment") if "segment" in body else None
    forms = {
        "at": ("at",), "every": ("every", "start"), "time": ("time", "on", "weekdays", "until"),
    }  # fmt: skip
    chosen = [k for k in forms if k in body]
    if len(chosen) != 1:
        raise _bad(path, "give one of at (a fixed instant), every + start (recurring), or time (a local time of day, "
                   "with on for one day, or weekdays/until for a recurring run)")  # fmt: skip
    form = chosen[0]
    for key in body:
        if key != "segment" and key not in forms[form]:
            raise _bad(f"{path}.{key}", f"{key} does not go with {form}")
    if form == "at":
        return Schedule(seg, at=_instant(body["at"], f"{path}.at"))
    if form == "every":
        if "start" not in body:
            raise _bad(f"{path}.start", "a recurring schedule needs its first run, e.g. 2026-12-01T09:00:00Z")
        every = _duration(body["every"], f"{path}.every")
        if every.delta < timedelta(hours=1):
            raise _bad(f"{path}.every", "a schedule runs at most once an hour")
        return Schedule(seg, every=every, start=_instant(body["start"], f"{path}.start"))
    at = _hhmm(body["time"], f"{path}.time")
    on = _day(body["on"], f"{path}.on") if "on" in body else None
    weekdays = _weekdays(body["weekdays"], f"{path}.weekdays") if "weekdays" in body else ()
    until = _day(body["until"], f"{path}.until") if "until" in body else None
    if on is not None and until is not None and until < on:
        raise _bad(f"{path}.until", "until must not be before on")
    return Schedule(seg, on=on, time=at, weekdays=weekdays, until=until)


def _reentry(raw: object, path: str) -> Reentry:
    if isinstance(raw, str):
        if raw == "cooldown":
            raise _bad(path, 'give the cool-down: {"cooldown": "7d"}')
        return Reentry(_one_of(raw, path, REENTRY, "reentry"))
    body = _object(raw, path)
    _keys(body, path, ("cooldown",))
    if "cooldown" not in body:
        raise _bad(path, 'reentry is never, after_exit, per_key or {"cooldown": "7d"}')
    return Reentry("cooldown", _duration(body["cooldown"], f"{path}.cooldown"))


def _goal(raw: object, path: str) -> Goal:
    body = _object(raw, path)
    _keys(body, path, ("event", "segment", "rule", "within"))
    crit = {k: v for k, v in body.items() if k != "within"}
    criterion = _criterion(crit, path)
    within = _duration(body["within"], f"{path}.within") if "within" in body else None
    return Goal(criterion, within)


def _offset(value: object, path: str) -> Offset:
    m = _OFFSET.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise _bad(path, "an offset is a duration with an optional sign, e.g. -1d or +2h")
    return Offset(-1 if m.group(1) == "-" else 1, _duration(m.group(2), path))


def _message_channel(value: object, path: str) -> str:
    """One channel of a message node's ``channel``, the refusal naming the value sent (review: it named 'auto')."""
    if isinstance(value, str) and value in MESSAGE_CHANNELS:
        return value
    choices = ", ".join(MESSAGE_CHANNELS)
    if value == "auto":  # inside a list: auto picks one channel itself
        raise _bad(path, f"'auto' is given alone (channel: auto), not in a list of channels ({choices})")
    sent = r._quote(value) if isinstance(value, str) else r._shown(value)
    raise _bad(path, f"{sent} is not a channel: give auto, or one of {choices} (or a list of them)")


class _Parser:
    def __init__(self, strict: bool = True) -> None:
        self.strict = strict  # the rules added after versions were stored (see parse)
        self.refs: list[tuple[str, str]] = []  # (path, node id) of every edge, checked once all nodes are known
        self.message_refs: list[tuple[str, str]] = []  # (path, node id) of waits on a message node's message

    def target(self, value: object, path: str) -> str:
        node_id = _node_id(value, path)
        self.refs.append((path, node_id))
        return node_id

    def node(self, node_id: str, raw: object, path: str) -> Node:
        body = _object(raw, path)
        kind = body.get("type")
        if kind not in NODE_TYPES:
            raise _bad(f"{path}.type", f"a node's type is one of {', '.join(NODE_TYPES)}")
        common = ("type", "max_visits", "overflow")
        max_visits = overflow = None
        if "max_visits" in body:
            max_visits = _bounded_int(body["max_visits"], f"{path}.max_visits", 1, MAX_VISITS, "max_visits")
        if "overflow" in body:
            if max_visits is None:
                raise _bad(f"{path}.overflow", "overflow is where the visit after max_visits goes; set max_visits")
            overflow = self.target(body["overflow"], f"{path}.overflow")
        rest = {k: v for k, v in body.items() if k not in common}
        parsed = getattr(self, "_" + kind)(rest, path, common)
        return Node(node_id, parsed, max_visits, overflow)

    def _next(self, body: dict, path: str, key: str = "next") -> str:
        if key not in body:
            raise _bad(f"{path}.{key}", f"name the node that comes next ({key})")
        return self.target(body[key], f"{path}.{key}")

    def _delay(self, body: dict, path: str, common: tuple) -> Delay:
        _keys(body, path, ("for", "at", "weekdays", "until", "offset", "missing", "next", *common))
        forms = [k for k in ("for", "at", "until") if k in body]
        if len(forms) != 1:
            raise _bad(path, 'a delay takes one of for ("1h"), at (a local time, "09:00") or until (a date)')
        form = forms[0]
        allowed = {"for": (), "at": ("weekdays",), "until": ("offset", "missing")}[form]
        for key in ("weekdays", "offset", "missing"):
            if key in body and key not in allowed:
                raise _bad(f"{path}.{key}", f"{key} does not go with {form}")
        nxt = self._next(body, path)
        if form == "for":
            return Delay(nxt, duration=_duration(body["for"], f"{path}.for"))
        if form == "at":
            days = _weekdays(body["weekdays"], f"{path}.weekdays") if "weekdays" in body else ()
            return Delay(nxt, at=_hhmm(body["at"], f"{path}.at"), weekdays=days)
        until = _object(body["until"], f"{path}.until")
        kind, name = _one_key(until, f"{path}.until", ("trait", "property"), "until")
        source = DateFrom(kind, _name(name, f"{path}.until.{kind}", f"the {kind} holding the date"))
        offset = _offset(body["offset"], f"{path}.offset") if "offset" in body else None
        missing = self.target(body["missing"], f"{path}.missing") if "missing" in body else None
        return Delay(nxt, until=source, offset=offset, missing=missing)

    def _wait(self, body: dict, path: str, common: tuple) -> Wait:
        _keys(body, path, ("branches", "timeout", *common))
        raw = body.get("branches")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_BRANCHES:
            raise _bad(f"{path}.branches", f"a wait has 1 to {MAX_BRANCHES} branches")
        branches, names = [], set()
        for i, item in enumerate(raw):
            here = f"{path}.branches[{i}]"
            b = _object(item, here)
            _keys(b, here, ("name", "event", "segment", "message", "next"))
            name = _ident(b["name"], f"{here}.name") if "name" in b else str(i)
            if name in names or name == "timeout":
                raise _bad(f"{here}.name", f"branch name '{name}' is used twice in this wait (timeout is taken)")
            names.add(name)
            kinds = [k for k in ("event", "segment", "message") if k in b]
            if len(kinds) != 1:
                raise _bad(here, "a branch waits for one of event, segment or message")
            kind = kinds[0]
            on: Trigger
            if kind == "event":
                on = _event_match(b["event"], f"{here}.event")
            elif kind == "segment":
                on = _segment_change(b["segment"], f"{here}.segment")
            else:
                on = self._message_match(b["message"], f"{here}.message")
            branches.append(Branch(name, on, self._next(b, here)))
        if "timeout" not in body:
            raise _bad(f"{path}.timeout", 'a wait needs a timeout: {"after": "1h", "next": node}')
        t = _object(body["timeout"], f"{path}.timeout")
        _keys(t, f"{path}.timeout", ("after", "next"))
        if "after" not in t:
            raise _bad(f"{path}.timeout.after", "how long to wait, e.g. 1h")
        after = _duration(t["after"], f"{path}.timeout.after")
        return Wait(tuple(branches), after, self._next(t, f"{path}.timeout"))

    def _message_match(self, raw: object, path: str) -> MessageMatch:
        body = _object(raw, path)
        _keys(body, path, ("status", "node"))
        if "status" not in body:
            raise _bad(f"{path}.status", f"name the status: {', '.join(MESSAGE_STATUSES)}")
        statuses = _strings(body["status"], f"{path}.status", lambda v, p: _one_of(v, p, MESSAGE_STATUSES, "a status"))
        node = None
        if "node" in body:
            node = _node_id(body["node"], f"{path}.node")
            self.message_refs.append((f"{path}.node", node))
        return MessageMatch(statuses, node)

    def _condition(self, body: dict, path: str, common: tuple) -> Condition:
        _keys(body, path, ("if", "entry", "then", "else", *common))
        if ("if" in body) == ("entry" in body):
            raise _bad(f"{path}.if", 'give if (a segment rule, e.g. {"segment": "vip"}) or entry (a test of an '
                       'entry event property, e.g. {"property": "channel", "equals": "app"})')  # fmt: skip
        then, otherwise = self._next(body, path, "then"), self._next(body, path, "else")
        if "if" in body:
            return Condition(then, otherwise, rule=r.parse(body["if"], f"{path}.if"))
        here = f"{path}.entry"
        f = _object(body["entry"], here)
        _keys(f, here, ("property", *r.FILTER_TESTS))
        prop = _name(f.get("property"), f"{here}.property", "a property name")
        return Condition(then, otherwise, entry=r.Filter(prop, r._test(f, here, r.FILTER_TESTS)))

    def _split(self, body: dict, path: str, common: tuple) -> Split:
        _keys(body, path, ("arms", "seed", "by", *common))
        raw = body.get("arms")
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_BRANCHES:
            raise _bad(f"{path}.arms", f"a split has 2 to {MAX_BRANCHES} arms")
        arms, names = [], set()
        for i, item in enumerate(raw):
            here = f"{path}.arms[{i}]"
            a = _object(item, here)
            _keys(a, here, ("name", "weight", "next", "holdout"))
            name = _ident(a.get("name"), f"{here}.name")
            if name in names:
                raise _bad(f"{here}.name", f"arm name '{name}' is used twice in this split")
            names.add(name)
            weight = _bounded_int(a.get("weight"), f"{here}.weight", 1, 100, "a weight (percent)")
            holdout = a.get("holdout", False)
            if not isinstance(holdout, bool):
                raise _bad(f"{here}.holdout", "holdout is true or false")
            if holdout:
                if "next" in a:
                    raise _bad(f"{here}.next", "a holdout arm gets nothing: it has no next")
                arms.append(Arm(name, weight, None, True))
            else:
                arms.append(Arm(name, weight, self._next(a, here)))
        total = sum(a.weight for a in arms)
        if total != 100:
            raise _bad(f"{path}.arms", f"the arms' weights are percentages and add up to 100 (here {total})")
        if self.strict and all(a.holdout for a in arms):
            raise _bad(f"{path}.arms", "every arm is a holdout: nobody would ever go on; give at least one arm a next")
        seed = _ident(body["seed"], f"{path}.seed") if "seed" in body else None
        by = body.get("by", "profile")
        if by not in SPLIT_BY:
            raise _bad(f"{path}.by", f"a split is by {' or '.join(SPLIT_BY)} (what the person's bucket hashes)")
        return Split(tuple(arms), seed, by)

    def _message(self, body: dict, path: str, common: tuple) -> SendMessage:
        _keys(body, path, ("template", "channel", "kind", "topic", "data", "next", *common))
        template = _ident(body.get("template"), f"{path}.template")
        channel: str | tuple[str, ...] = "auto"
        if body.get("channel", "auto") != "auto":
            channel = _strings(body["channel"], f"{path}.channel", _message_channel)
        kind = _one_of(body["kind"], f"{path}.kind", KINDS, "kind") if "kind" in body else "marketing"
        topic = _topic(body["topic"], f"{path}.topic") if "topic" in body else None
        if topic is not None and not TOPIC_NAME.fullmatch(topic.strip().lower()):
            # what the send refuses (outbox.parse_request): refused at publish, not an error for every person
            raise _bad(f"{path}.topic", f"a topic is {TOPIC_RULE} (read in lower case)")
        data = _data(body["data"], f"{path}.data", "a message's data", self.strict) if "data" in body else None
        return SendMessage(template, self._next(body, path), channel, kind, topic, data)

    def _update_trait(self, body: dict, path: str, common: tuple) -> UpdateTrait:
        _keys(body, path, ("trait", "value", "next", *common))
        trait = _name(body.get("trait"), f"{path}.trait", "a trait name")
        if trait.startswith("computed."):
            raise _bad(f"{path}.trait", "computed traits belong to the analytics that compute them")
        if "value" not in body:
            raise _bad(f"{path}.value", "give the value (null removes the trait)")
        value = _bounded_value(body["value"], f"{path}.value", "a trait's value") if self.strict else body["value"]
        return UpdateTrait(trait, value, self._next(body, path))

    def _list(self, body: dict, path: str, common: tuple) -> ListStep:
        _keys(body, path, ("list", "action", "next", *common))
        action = _one_of(body.get("action"), f"{path}.action", ACTIONS, "action")
        return ListStep(_ident(body.get("list"), f"{path}.list"), action, self._next(body, path))

    def _audience(self, body: dict, path: str, common: tuple) -> AudienceStep:
        _keys(body, path, ("audience", "action", "next", *common))
        action = _one_of(body.get("action"), f"{path}.action", ACTIONS, "action")
        return AudienceStep(_ident(body.get("audience"), f"{path}.audience"), action, self._next(body, path))

    def _webhook(self, body: dict, path: str, common: tuple) -> WebhookStep:
        _keys(body, path, ("url", "method", "data", "next", *common))
        if body.get("url") is None:
            raise _bad(f"{path}.url", "the url is required: http:// or https:// with a host")
        url = _text(body["url"], f"{path}.url", MAX_URL, "the url")
        why = url_problem(url) if self.strict else None  # a stored version's url is checked again at delivery
        if why is not None:
            raise _bad(f"{path}.url", why)
        method = _one_of(body["method"], f"{path}.method", METHODS, "method") if "method" in body else "POST"
        data = _data(body["data"], f"{path}.data", "a webhook's data", self.strict) if "data" in body else None
        return WebhookStep(url, self._next(body, path), method, data)

    def _exit(self, body: dict, path: str, common: tuple) -> ExitStep:
        _keys(body, path, common)
        return ExitStep()


TOP_KEYS = ("id", "name", "entry", "reentry", "goal", "exit_on_goal", "exit", "start", "nodes")


def parse(raw: object, path: str = "", *, strict: bool = True) -> Definition:
    """A journey from decoded JSON, validated; a :class:`ChorusError` names the bad place and why.

    ``strict=False`` reads a stored version: the checks added after versions were published (bounded keys and
    values, webhook urls, a split of holdouts only) are publishing rules, and a version published before them must
    still load (review: one version refused at load failed the journeys consumer for everybody in its workspace)."""
    p = (lambda key: f"{path}.{key}") if path else (lambda key: key)
    if not isinstance(raw, dict):
        raise _bad(path or "journey", "a journey is an object: id, entry, start, nodes, ...")
    for key, value in raw.items():  # NUL, lone surrogates, 64-bit integers, finite numbers, depth: named by path
        safejson.check(value, p(str(key)[:MAX_KEY]))
    long = _long_key(raw, path) if strict else None
    if long is not None:  # before any message names a path through it
        where, key = long
        raise _bad(where or "journey", f"a key is at most {MAX_KEY} characters (not '{key[:40]}…')")
    _keys(raw, path or "journey", TOP_KEYS)
    for key in ("id", "entry", "start", "nodes"):
        if key not in raw:
            raise _bad(p(key), f"a journey needs {key}")
    jid = _node_id(raw["id"], p("id"), "a journey id")
    name = _text(raw["name"], p("name"), r.MAX_NAME, "a name") if "name" in raw else None
    entry = _entry(raw["entry"], p("entry"))
    reentry = _reentry(raw["reentry"], p("reentry")) if "reentry" in raw else Reentry()
    key = _entry_key(entry, reentry)
    if reentry.mode == "per_key" and key is None:
        raise _bad(p("reentry"), "per_key needs the entry's key (entry.event.key or entry.api.key; a schedule's "
                                 "is its run)")
    goal = _goal(raw["goal"], p("goal")) if "goal" in raw else None
    exit_on_goal = raw.get("exit_on_goal", True)
    if not isinstance(exit_on_goal, bool):
        raise _bad(p("exit_on_goal"), "exit_on_goal is true or false")
    exits: tuple[Criterion, ...] = ()
    if "exit" in raw:
        items = raw["exit"]
        if not isinstance(items, list) or not items or len(items) > MAX_BRANCHES:
            raise _bad(p("exit"), f"exit is a list of 1 to {MAX_BRANCHES} criteria")
        exits = tuple(_criterion(c, f"{p('exit')}[{i}]") for i, c in enumerate(items))
    nodes_raw = raw["nodes"]
    if not isinstance(nodes_raw, dict) or not nodes_raw:
        raise _bad(p("nodes"), "nodes is an object: node id -> node")
    if len(nodes_raw) > MAX_NODES:
        raise _bad(p("nodes"), f"a journey has at most {MAX_NODES} nodes; split it into journeys")
    parser = _Parser(strict)
    nodes = []
    for node_id, body in nodes_raw.items():
        here = f"{p('nodes')}.{node_id}"
        nodes.append(parser.node(_node_id(node_id, here), body, here))
    start = parser.target(raw["start"], p("start"))
    # Nodes are a map: their order carries no meaning (PostgreSQL's JSONB does not keep it), so the model keeps
    # them sorted by id and a definition equals itself read back from any store.
    nodes.sort(key=lambda n: n.id)
    defn = Definition(jid, entry, start, tuple(nodes), name, reentry, goal, exit_on_goal, exits)
    _check_structure(defn, parser, p)
    return defn


def entry_event_reads(defn: Definition) -> list[str]:
    """The places (paths, in written terms) where ``defn`` reads its entry's properties: ``same`` in a goal, an exit
    criterion or a wait branch; a condition's ``entry`` test; a delay ``until`` a ``property``. An entry by a
    segment or a schedule has no properties: there they can never match (a publish refuses them)."""
    out = []

    def crit(c, path: str) -> None:
        if isinstance(c, EventMatch) and c.same:
            out.append(f"{path}.event.same")

    if defn.goal is not None:
        crit(defn.goal.criterion, "goal")
    for i, c in enumerate(defn.exits):
        crit(c, f"exit[{i}]")
    for n in defn.nodes:
        b, here = n.body, f"nodes.{n.id}"
        if isinstance(b, Wait):
            for i, br in enumerate(b.branches):
                crit(br.on, f"{here}.branches[{i}]")
        elif isinstance(b, Condition) and b.entry is not None:
            out.append(f"{here}.entry")
        elif isinstance(b, Delay) and b.until is not None and b.until.source == "property":
            out.append(f"{here}.until.property")
    return out


def _check_structure(defn: Definition, parser: _Parser, p) -> None:
    by_id = defn.by_id
    for path, target in parser.refs:
        if target not in by_id:
            raise _bad(path, f"no node '{target}' in this journey")
    for path, target in parser.message_refs:
        if target not in by_id or not isinstance(by_id[target].body, SendMessage):
            raise _bad(path, f"'{target}' is not a message node of this journey")
    for n in defn.nodes:
        if isinstance(n.body, Split) and any(a.holdout for a in n.body.arms):
            if defn.goal is None or defn.goal.within is None:
                i = next(i for i, a in enumerate(n.body.arms) if a.holdout)
                raise _bad(f"{p('nodes')}.{n.id}.arms[{i}].holdout",
                           "a holdout is measured against the goal: give the journey a goal with within")  # fmt: skip
    # reachability from start; the first unreachable node by id is reported
    seen = _reach(defn, defn.start, include_start=True)
    for n in defn.nodes:
        if n.id not in seen:
            raise _bad(f"{p('nodes')}.{n.id}", f"node '{n.id}' cannot be reached from start ('{defn.start}')")
    # Every cycle must pass a node bounded by max_visits (so it ends) and a waiting node (so time passes between
    # rounds): equivalently, the graph without the bounded nodes is acyclic, and so is the graph without the
    # waiting ones.
    _acyclic(defn, lambda n: n.max_visits is None, "max_visits", p)
    _acyclic(defn, lambda n: n.type not in WAITING_TYPES, "a delay or wait", p)
    # A visit past max_visits does not run the node (nothing waits there): if the way out led back to it, the
    # person would go round without end.
    for n in defn.nodes:
        if n.overflow is not None and n.id in _reach(defn, n.overflow, include_start=True):
            raise _bad(f"{p('nodes')}.{n.id}.overflow", f"the way out of max_visits leads back to '{n.id}'")


def _acyclic(defn: Definition, keep, needs: str, p) -> None:
    kept = {n.id for n in defn.nodes if keep(n)}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in (n.id for n in defn.nodes if n.id in kept):
        if root in state:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        state[root] = 1
        while stack:
            nid, i = stack[-1]
            edges = [(f, t) for f, t in successors(defn.by_id[nid]) if t in kept]
            if i == len(edges):
                stack.pop()
                state[nid] = 2
                continue
            stack[-1] = (nid, i + 1)
            fld, target = edges[i]
            if state.get(target) == 1:
                ids = [s for s, _ in stack]
                chain = " → ".join([*ids[ids.index(target) :], target])
                at = f"{p('nodes')}.{nid}.{fld}"
                raise _bad(at, f"the loop {chain} must pass a node with {needs}")
            if target not in state:
                state[target] = 1
                stack.append((target, 0))


def load_yaml(text: str, path: str = "journey") -> object:
    """YAML text as plain data, by the segment rules' safe loader (no tags, no aliases, dates kept as text)."""
    if not isinstance(text, str) or len(text) > r.MAX_YAML:
        raise _bad(path, f"a YAML journey is text of at most {r.MAX_YAML // 1024} KB")
    try:
        return r.load_yaml(text, path)
    except ChorusError as exc:
        if "nested too deeply" in exc.message:
            raise _bad(path, "the YAML is nested too deeply") from None
        raise


def parse_yaml(text: str) -> Definition:
    return parse(load_yaml(text))


# -- references ------------------------------------------------------------------------------------------------
def check_references(
    defn: Definition,
    *,
    templates: Mapping[str, frozenset[str] | set[str] | tuple[str, ...]],
    segments: set[str] | frozenset[str],
    lists: set[str] | frozenset[str] = frozenset(),
    audiences: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Check that what the journey names exists: ``templates`` maps a template name to the channels it has a
    variant for; a message step's explicit channels must all have one, and ``auto`` needs at least one."""
    for path, kind, name in references(defn):
        known = {"segment": segments, "list": lists, "audience": audiences, "template": templates}[kind]
        if name not in known:
            raise _bad(path, f"{kind} '{name}' does not exist")
    for n in defn.nodes:
        b = n.body
        if not isinstance(b, SendMessage):
            continue
        variants = set(templates[b.template])
        path = f"nodes.{n.id}.channel"
        if b.channel == "auto":
            if not variants & set(MESSAGE_CHANNELS):
                raise _bad(path, f"template '{b.template}' has no variant for any channel")
            continue
        for i, ch in enumerate(b.channel):
            if ch not in variants:
                at = path if len(b.channel) == 1 else f"{path}[{i}]"
                have = ", ".join(sorted(variants)) or "none"
                raise _bad(at, f"template '{b.template}' has no {ch} variant (it has: {have})")


def references(defn: Definition) -> list[tuple[str, str, str]]:
    """(path, kind, name) of every template, segment, list and audience the journey names, in written order."""
    out: list[tuple[str, str, str]] = []

    def rule(node: r.Node, path: str) -> None:
        for n, p in r.walk(node, path):
            if isinstance(n, r.SegmentRef):
                out.append((f"{p}.segment", "segment", n.segment))
            elif isinstance(n, r.InList):
                out.append((f"{p}.list", "list", n.list))

    def criterion(c: Criterion | Trigger, path: str) -> None:
        if isinstance(c, SegmentChange):
            out.append((f"{path}.segment.{c.change}", "segment", c.segment))
        elif isinstance(c, RuleMatch):
            rule(c.rule, f"{path}.rule")

    e = defn.entry
    if isinstance(e, SegmentEntry):
        out.append(("entry.segment", "segment", e.segment))
    elif isinstance(e, Schedule) and e.segment is not None:
        out.append(("entry.schedule.segment", "segment", e.segment))
    if defn.goal is not None:
        criterion(defn.goal.criterion, "goal")
    for i, c in enumerate(defn.exits):
        criterion(c, f"exit[{i}]")
    for n in defn.nodes:
        here, b = f"nodes.{n.id}", n.body
        if isinstance(b, SendMessage):
            out.append((f"{here}.template", "template", b.template))
        elif isinstance(b, ListStep):
            out.append((f"{here}.list", "list", b.list))
        elif isinstance(b, AudienceStep):
            out.append((f"{here}.audience", "audience", b.audience))
        elif isinstance(b, Wait):
            for i, br in enumerate(b.branches):
                criterion(br.on, f"{here}.branches[{i}]")
        elif isinstance(b, Condition) and b.rule is not None:
            rule(b.rule, f"{here}.if")
    return out


# -- back to JSON -----------------------------------------------------------------------------------------------
def _event_json(m: EventMatch) -> dict:
    out = r._selection_json(m.selection)
    if m.same:
        out["same"] = [s.property if s.property == s.entry else {"property": s.property, "entry": s.entry}
                       for s in m.same]  # fmt: skip
    return out


def _criterion_json(c: Criterion) -> dict:
    if isinstance(c, SegmentChange):
        return {"segment": {c.change: c.segment}}
    if isinstance(c, RuleMatch):
        return {"rule": r.to_json(c.rule)}
    return {"event": _event_json(c)}


def _days_json(days: tuple[int, ...]) -> list[str]:
    return [WEEKDAYS[d] for d in days]


def _entry_json(e: Entry) -> dict:
    if isinstance(e, EventEntry):
        return {"event": {**_event_json(e.match), **({"key": e.key} if e.key is not None else {})}}
    if isinstance(e, SegmentEntry):
        return {"segment": e.segment}
    if isinstance(e, ApiEntry):
        return {"api": {"key": e.key} if e.key is not None else {}}
    out: dict[str, Any] = {"segment": e.segment} if e.segment is not None else {}
    if e.at is not None:
        out["at"] = iso(e.at)
    if e.every is not None:
        out["every"] = e.every.text()
        out["start"] = iso(e.start)  # type: ignore[arg-type]
    if e.time is not None:
        out["time"] = e.time.strftime("%H:%M")
        if e.on is not None:
            out["on"] = e.on.isoformat()
        if e.weekdays:
            out["weekdays"] = _days_json(e.weekdays)
        if e.until is not None:
            out["until"] = e.until.isoformat()
    return {"schedule": out}


def _body_json(b: Body) -> dict:
    match b:
        case Delay():
            out: dict[str, Any] = {}
            if b.duration is not None:
                out["for"] = b.duration.text()
            if b.at is not None:
                out["at"] = b.at.strftime("%H:%M")
                if b.weekdays:
                    out["weekdays"] = _days_json(b.weekdays)
            if b.until is not None:
                out["until"] = {b.until.source: b.until.name}
                if b.offset is not None:
                    out["offset"] = b.offset.text()
                if b.missing is not None:
                    out["missing"] = b.missing
            return {**out, "next": b.next}
        case Wait():
            branches = []
            for br in b.branches:
                item: dict[str, Any] = {"name": br.name}
                if isinstance(br.on, MessageMatch):
                    msg: dict[str, Any] = {"status": r._one_or_list(br.on.statuses)}
                    if br.on.node is not None:
                        msg["node"] = br.on.node
                    item["message"] = msg
                else:
                    item.update(_criterion_json(br.on))
                branches.append({**item, "next": br.next})
            return {"branches": branches, "timeout": {"after": b.timeout.text(), "next": b.timeout_next}}
        case Condition():
            if b.rule is not None:
                test = {"if": r.to_json(b.rule)}
            else:
                assert b.entry is not None
                test = {"entry": {"property": b.entry.property, **r._test_json(b.entry.test)}}
            return {**test, "then": b.then, "else": b.otherwise}
        case Split():
            arms = [{"name": a.name, "weight": a.weight, **({"holdout": True} if a.holdout else {"next": a.next})}
                    for a in b.arms]  # fmt: skip
            return {"arms": arms, **({"seed": b.seed} if b.seed is not None else {}),
                    **({"by": b.by} if b.by != "profile" else {})}
        case SendMessage():
            out = {"template": b.template}
            if b.channel != "auto":
                out["channel"] = r._one_or_list(b.channel)  # type: ignore[arg-type]
            out["kind"] = b.kind
            if b.topic is not None:
                out["topic"] = b.topic
            if b.data is not None:
                out["data"] = b.data
            return {**out, "next": b.next}
        case UpdateTrait():
            return {"trait": b.trait, "value": b.value, "next": b.next}
        case ListStep():
            return {"list": b.list, "action": b.action, "next": b.next}
        case AudienceStep():
            return {"audience": b.audience, "action": b.action, "next": b.next}
        case WebhookStep():
            return {"url": b.url, "method": b.method, **({"data": b.data} if b.data is not None else {}),
                    "next": b.next}  # fmt: skip
        case ExitStep():
            return {}
    raise TypeError(f"not a journey node: {b!r}")


def node_json(n: Node) -> dict:
    out: dict[str, Any] = {"type": n.type, **_body_json(n.body)}
    if n.max_visits is not None:
        out["max_visits"] = n.max_visits
    if n.overflow is not None:
        out["overflow"] = n.overflow
    return out


def to_json(d: Definition) -> dict:
    """The canonical JSON of a journey: ``parse(to_json(d)) == d``."""
    out: dict[str, Any] = {"id": d.id}
    if d.name is not None:
        out["name"] = d.name
    out["entry"] = _entry_json(d.entry)
    rt = d.reentry
    out["reentry"] = {"cooldown": rt.cooldown.text()} if rt.cooldown is not None else rt.mode
    if d.goal is not None:
        goal = _criterion_json(d.goal.criterion)
        if d.goal.within is not None:
            goal["within"] = d.goal.within.text()
        out["goal"] = goal
    out["exit_on_goal"] = d.exit_on_goal
    if d.exits:
        out["exit"] = [_criterion_json(c) for c in d.exits]
    out["start"] = d.start
    out["nodes"] = {n.id: node_json(n) for n in d.nodes}
    return out


# -- schedules --------------------------------------------------------------------------------------------------
def local_instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The instant (UTC) of local time ``at`` on ``day`` in ``tz``: where that time happens twice (clocks back),
    the first; where it does not exist (clocks forward), the instant of the jump, the first valid instant after
    it. Midnight is :func:`chorus.segments.times.day_start`'s rule."""
    if at == time(0):
        return day_start(day, tz)
    local = datetime.combine(day, at)
    cands = [local.replace(tzinfo=tz, fold=f).astimezone(UTC) for f in (0, 1)]
    exact = [u for u in cands if u.astimezone(tz).replace(tzinfo=None) == local]
    if exact:
        return min(exact)
    # In a gap the two readings straddle the jump: before it (the later offset) the local clock shows less than
    # ``at``; from it on, more. The jump is on a whole second in every zone; search to the microsecond anyway.
    lo, hi = min(cands), max(cands)
    while hi - lo > timedelta(microseconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= local:
            hi = mid
        else:
            lo = mid
    return hi


def next_local(after: datetime, at: time, weekdays: tuple[int, ...], tz: ZoneInfo,
               *, inclusive: bool = True) -> datetime:  # fmt: skip
    """The first instant at or after ``after`` (strictly after when not ``inclusive``) that is local time ``at``
    on one of ``weekdays`` (0 = Monday; every day when empty) in ``tz``."""
    day = after.astimezone(tz).date() - timedelta(days=1)  # a gap's jump can put day d's instant on day d - 1
    for _ in range(10):
        t = local_instant(day, at, tz)
        if (not weekdays or day.weekday() in weekdays) and (t >= after if inclusive else t > after):
            return t
        day += timedelta(days=1)
    raise AssertionError("a weekday comes within 10 days")  # pragma: no cover


def next_run(s: Schedule, after: datetime, tz: ZoneInfo) -> datetime | None:
    """The first run of schedule ``s`` strictly after ``after`` for a profile in ``tz`` (fixed instants ignore
    it), or None when there is none left: none after the end of the calendar either (year 9999, which a schedule
    may name: ``until: 9999-12-31`` is "forever")."""
    try:
        return _next_run(s, after, tz)
    except OverflowError:
        return None


def _next_run(s: Schedule, after: datetime, tz: ZoneInfo) -> datetime | None:
    if s.at is not None:
        return s.at if s.at > after else None
    if s.every is not None:
        assert s.start is not None
        if s.start > after:
            return s.start
        k = (after - s.start) // s.every.delta + 1
        return s.start + k * s.every.delta
    assert s.time is not None
    if not s.recurring:
        assert s.on is not None
        t = local_instant(s.on, s.time, tz)
        return t if t > after else None
    if s.on is not None:
        after = max(after, local_instant(s.on, time(0), tz) - timedelta(microseconds=1))
    t = next_local(after, s.time, s.weekdays, tz, inclusive=False)
    if s.until is not None and s.until < date.max and t >= day_start(s.until + timedelta(days=1), tz):
        return None
    return t


__all__ = [
    "Definition", "Node", "parse", "parse_yaml", "to_json", "check_references", "references", "successors",
    "next_run", "next_local", "local_instant",
]  # fmt: skip
