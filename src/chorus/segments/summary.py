"""A person's activity as counts and first/last times, read from her profile state instead of her events.

``profiles.state`` keeps, per event type and per type and name, how many events and the first and last timestamps
(``activity``), and per channel her first and last activity (``channels``). A rule's *unbounded* conditions read
only that much of her history: "ever ordered (N times)", "first order more than a year ago", "last visit in the
last 30 days", the last channel, the channels she ever used. :class:`Summary` answers them, and ``evaluate`` uses
it when the person carries one, so a loyal customer's 500 orders are not read for "ordered at least once".
Decision 0046.

What it answers, and when it is exact (the property tests check each against the events):

* a selection is *summarisable* (:func:`summarisable`) when it has no property filter, no channel and no window,
  and names an event (not one of Chorus' own timeline records, whose names are reserved: those are written
  straight onto a known person's timeline and never folded into her state, ``collect.messages.OWN_PREFIXES``,
  checked by ``collect.ingest.store``), or a type other than ``track`` (Chorus' own records are tracks);
* the count, the first and the last time are exact when the summary knows the name (kept, not past the type's
  cut) and no such event is stamped later than ``now`` (an event in the future starts to count at its time, which a
  count cannot tell); the first time alone is exact whatever the future holds;
* channel conditions without a window read each channel's first activity (exact); the last channel also needs
  every channel's last activity at or before ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from chorus.collect.messages import own_name
from chorus.segments import rules as r
from chorus.timeutil import parse_ts


@dataclass(frozen=True, slots=True)
class Tally:
    n: int
    first: datetime | None
    last: datetime | None


NONE = Tally(0, None, None)


def _tally(raw: list | None) -> Tally:
    return NONE if raw is None else Tally(raw[0], parse_ts(raw[1]), parse_ts(raw[2]))


def _add(a: Tally, b: Tally) -> Tally:
    assert a.first and a.last and b.first and b.last
    return Tally(a.n + b.n, min(a.first, b.first), max(a.last, b.last))


def summarisable(sel: r.Selection) -> bool:
    """Whether a summary can answer a count, first or last time of ``sel`` (see the module's doc)."""
    if sel.where or sel.channels or sel.channel_group or sel.window != r.Window():
        return False
    if sel.event is not None:
        return not own_name(sel.event)
    return sel.type is not None and sel.type != "track"


@dataclass(frozen=True)
class Summary:
    """The state's ``activity`` and ``channels`` as stored (timestamps as text): only what a rule asks is parsed,
    since a person is loaded with her summary whatever the rules read."""

    types: Mapping[str, list]  # type -> [n, first, last]
    names: Mapping[str, Mapping[str, list]]  # type -> name -> [n, first, last]
    cut: Mapping[str, str]  # type -> the greatest name kept, for a type with more names than it keeps
    activity: Mapping[str, Mapping[str, Any]]  # activity channel -> {first_seen, last_seen, ...}
    # selection -> its tally: and/or ask again at each step they take
    _tallies: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, state: Mapping[str, Any]) -> Summary | None:
        """From ``profiles.state``; None for a state stored before activity was kept (it is not known)."""
        act = state.get("activity")
        if not isinstance(act, Mapping):
            return None
        return cls(act["types"], act["names"], act["cut"], state.get("channels") or {})

    @cached_property
    def channels(self) -> dict[str, tuple[datetime, datetime]]:
        """Activity channel -> her first and last activity on it."""
        return {ch: (parse_ts(c["first_seen"]), parse_ts(c["last_seen"])) for ch, c in self.activity.items()}

    def tally(self, sel: r.Selection) -> Tally | None:
        """The selection's count and first/last times (the selection is :func:`summarisable`); None when this
        summary does not know them (a name past a type's cut)."""
        if sel in self._tallies:
            return self._tallies[sel]
        found = self._tallies[sel] = self._count(sel)
        return found

    def _count(self, sel: r.Selection) -> Tally | None:
        if sel.event is None:
            return _tally(self.types.get(sel.type or ""))
        types = [sel.type] if sel.type is not None else sorted(set(self.names) | set(self.cut))
        found = NONE
        for t in types:
            cut = self.cut.get(t)
            if cut is not None and sel.event > cut:
                return None
            x = _tally(self.names.get(t, {}).get(sel.event))
            if x.n:
                found = x if found.n == 0 else _add(found, x)
        return found

    def settled(self, sel: r.Selection, at: datetime) -> Tally | None:
        """The tally when it is exact for a count or a last time at ``at`` and later: known, and no such event
        stamped after ``at``."""
        t = self.tally(sel)
        return t if t is not None and (t.last is None or t.last <= at) else None

    def channels_settled(self, at: datetime) -> bool:
        """Whether the last channel at ``at`` and later can be read from the channels (none active after ``at``)."""
        return all(last <= at for _, last in self.channels.values())

    def covers(self, sels: tuple[r.Selection, ...], last_channel: bool, at: datetime) -> bool:
        """Whether every summarised read of a set of rules evaluated at ``at`` or later is exact here: what
        ``load.people`` asks before reading a person's events without those selections."""
        return all(self.settled(s, at) is not None for s in sels) and (not last_channel or self.channels_settled(at))
