"""What a set of rules can read of a person at ``now``: which events (by name, by type, or any), from which instant
on, and whether her messages, computed traits, addresses or lists matter. Decision 0028.

``needs(rules, now)`` is pure. An engine hands it to ``load.people`` so that a person with a long history is read
only as far back as some condition can look; :func:`restrict` is the same cut in Python (the tests check that
``evaluate`` gives the same answer and the same ``next_change`` for the restricted person, and that the store's
cut is this one).

Unbounded conditions that a person's activity summary answers (``segments.summary``: a count, first or last time
of a selection with no filter, channel or window; a channel condition without a window; the last channel) read no
events at all: they are kept in ``summed`` / ``channel_summary`` / ``last_channel`` instead of a horizon of ``ALL``.
A person whose summary does not cover them at ``at`` (none kept, a name past the cut, an event stamped later than
``at``) is read with :meth:`Needs.whole`, the horizons those conditions would have without a summary.

Why a horizon is exact: ``evaluate`` only ever looks at ``now`` and later instants (``and``/``or`` step forward,
never back). An event at ``t`` counts in a rolling window of length ``d`` while ``t <= x < t + d``; if
``t + d <= now`` it counts at no instant still to be looked at, and leaves no step after ``now`` either (its span
has ended). In a dated window (``since``) an event before the start never counts. Every other leaf (no window,
``first_time``, ``last_time``, ``last_value`` without a window, ``last_channel``) may read any event: unbounded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from chorus.segments import rules as r
from chorus.segments.person import Event, Person
from chorus.segments.summary import Summary, summarisable
from chorus.segments.times import EARLIEST, plus

ALL = EARLIEST  # a horizon that reads everything
NAME_COLUMN = 200  # the events.event column holds the first 200 characters of a page's name
NAMED_TYPES = ("track", "page", "screen")  # types whose name is in the events.event column
# A calendar date in a window is local to each profile: the earliest any zone starts that day (UTC+14), with
# margin for a zone's daylight saving, so one horizon serves every profile.
ZONE_SLACK = timedelta(hours=26)


@dataclass(frozen=True)
class Needs:
    """Horizons are the earliest instant (inclusive) a condition may read; a key absent is not read at all."""

    names: dict[str, datetime] = field(default_factory=dict)  # Event.name -> horizon
    types: dict[str, datetime] = field(default_factory=dict)  # event type (a selection by type alone) -> horizon
    any_event: datetime | None = None  # every event (channel conditions, a selection by channel alone)
    messages: datetime | None = None  # message status records at or after
    computed: bool = False
    addresses: bool = False  # her addresses and her anchor identifier (both from her identifiers)
    lists: bool = False
    summed: tuple[r.Selection, ...] = ()  # selections whose count, first or last time the summary answers
    channel_summary: bool = False  # a channel condition without a window: each channel's first activity
    last_channel: bool = False  # the last channel: each channel's last activity
    at: datetime | None = None  # the instant these needs are for (evaluations at it or later)

    @property
    def events(self) -> bool:
        return bool(self.names or self.types) or self.any_event is not None

    @property
    def summarised(self) -> bool:
        return bool(self.summed) or self.channel_summary or self.last_channel

    def covered(self, s: Summary | None) -> bool:
        """Whether a person's summary answers every summarised read at ``at`` and later."""
        if not self.summarised:
            return True
        return s is not None and self.at is not None and s.covers(self.summed, self.last_channel, self.at)

    def whole(self) -> Needs:
        """These needs without a summary: what its conditions read of the events instead (everything they
        select, whatever its time)."""
        if not self.summarised:
            return self
        names, types = dict(self.names), dict(self.types)
        every = ALL if self.channel_summary or self.last_channel else self.any_event
        for sel in self.summed:
            if sel.event is not None:
                names[sel.event] = ALL
            elif sel.type is not None:
                types[sel.type] = ALL
        names, types = beyond(names, types, every)
        return replace(self, names=names, types=types, any_event=every, summed=(), channel_summary=False,
                       last_channel=False)  # fmt: skip

    def parts(self) -> tuple[str, ...]:
        """``load.people``'s parts: the memberships always (an engine keeps them current as it evaluates)."""
        kinds = {"computed": self.computed, "addresses": self.addresses, "events": self.events or self.summarised,
                 "messages": self.messages is not None, "lists": self.lists, "segments": True}  # fmt: skip
        return tuple(k for k, on in kinds.items() if on)

    def wants(self, e: Event) -> bool:
        """Whether the restricted person keeps ``e``: the same test ``load.people`` makes in SQL, on the columns
        (an identify's or group's name is only in its payload, so those are kept for any name)."""
        if self.any_event is not None and e.at >= self.any_event:
            return True
        h = self.types.get(e.type)
        if h is not None and e.at >= h:
            return True
        if e.type in NAMED_TYPES:
            h = self.names.get((e.name or "")[:NAME_COLUMN]) if e.name else None
            return h is not None and e.at >= h
        return bool(self.names) and e.at >= min(self.names.values())


def _window(win: r.Window, now: datetime) -> datetime:
    if win.within is not None:
        return plus(now, -win.within.delta)
    if win.since is not None:
        return win.since.at if win.since.at is not None else _day(win.since.day)
    return ALL


def _day(day) -> datetime:
    start = datetime(day.year, day.month, day.day, tzinfo=EARLIEST.tzinfo)
    return plus(start, -ZONE_SLACK)


def _earlier(into: dict, key, at: datetime) -> None:
    into[key] = min(into.get(key, at), at)


def beyond(names: dict, types: dict, every: datetime | None) -> tuple[dict, dict]:
    """The name and type horizons still worth asking for when every event is read from ``every`` on: only those
    reaching further back."""
    if every is None:
        return names, types
    return {k: h for k, h in names.items() if h < every}, {k: h for k, h in types.items() if h < every}


def needs(rules: Iterable[r.Node], now: datetime) -> Needs:
    names: dict[str, datetime] = {}
    types: dict[str, datetime] = {}
    anyone: dict[str, datetime] = {}
    msgs: dict[str, datetime] = {}
    flags = {"computed": False, "addresses": False, "lists": False, "channel_summary": False, "last_channel": False}
    summed: dict[r.Selection, None] = {}
    for rule in rules:
        for n, _ in r.walk(rule):
            if isinstance(n, r.Performed | r.Aggregate | r.EventTime) and summarisable(n.selection) and (
                    not isinstance(n, r.Aggregate) or n.function == "count"):  # fmt: skip
                summed[n.selection] = None
            elif isinstance(n, r.UsedChannel | r.ChannelCount | r.ChannelMix) and n.window == r.Window():
                flags["channel_summary"] = True
            elif isinstance(n, r.LastChannel):
                flags["last_channel"] = True
            elif isinstance(n, r.Performed | r.Aggregate | r.LastValue | r.EventTime):
                sel = n.selection
                # first_time/last_time look at every matching event whatever the window
                h = ALL if isinstance(n, r.EventTime) else _window(sel.window, now)
                if sel.event is not None:
                    _earlier(names, sel.event, h)
                elif sel.type is not None:
                    _earlier(types, sel.type, h)
                else:
                    _earlier(anyone, "*", h)
            elif isinstance(n, r.UsedChannel | r.ChannelCount | r.ChannelMix):
                _earlier(anyone, "*", _window(n.window, now))
            elif isinstance(n, r.Message):
                _earlier(msgs, "*", _window(n.window, now))
            elif isinstance(n, r.Trait) and n.computed is not None:
                flags["computed"] = True
            elif isinstance(n, r.Reachable | r.Subscribed):
                flags["addresses"] = True
            elif isinstance(n, r.InList):
                flags["lists"] = True
    every = anyone.get("*")
    names, types = beyond(names, types, every)
    return Needs(names, types, every, msgs.get("*"), **flags, summed=tuple(summed), at=now)


def restrict(person: Person, need: Needs) -> Person:
    """``person`` as ``load.people(..., needs=need)`` reads her: only the events and messages ``need`` keeps (its
    :meth:`~Needs.whole` needs when her summary does not cover it)."""
    if not need.covered(person.summary):
        need = need.whole()
    keep = tuple(e for e in person.events if need.wants(e))
    msgs = () if need.messages is None else tuple(m for m in person.messages if m.at >= need.messages)
    return replace(person, events=keep, messages=msgs,
                   computed=person.computed if need.computed else {},
                   addresses=person.addresses if need.addresses else {},
                   anchor=person.anchor if need.addresses else None,
                   lists=person.lists if need.lists else frozenset())  # fmt: skip
