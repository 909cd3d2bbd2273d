"""Windowed measures over a person's matching events, with the exact instant each answer changes.

These are the small functions every behaviour, channel and message condition goes through. Their input is what
an incremental engine can keep per profile instead of a full history: the times (and values) of the events that
match one condition, sorted. Each returns an :class:`~chorus.segments.times.Result`: the answer at ``now`` and
the exact next instant after ``now`` when the passage of time alone changes it.

A window says when an event *counts*, as a half-open span of ``now``:

* rolling (``within 7d``): an event at ``t`` counts while ``t <= now < t + 7d``;
* dated (``since``/``before``): an event at ``t`` with ``since <= t < before`` counts from ``t`` on, for ever;
* none: every event counts from its own time on.

An event stamped after ``now`` (a device clock ahead, or the engine asking about the future) does not count yet:
it starts to count at its time, which is a change like any other. So a measure is a step function of ``now``
whose steps are the span ends; the functions below walk those steps in order and stop at the first one where the
answer differs.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from chorus.segments.times import NEVER, Result, plus

Span = tuple[datetime, datetime]  # [start, end); end NEVER = for ever


@dataclass(frozen=True, slots=True)
class Window:
    """A window resolved for one profile: ``length`` (rolling) or ``since``/``before`` instants, or neither."""

    length: timedelta | None = None
    since: datetime | None = None
    before: datetime | None = None

    def span(self, t: datetime) -> Span | None:
        """When an event at ``t`` counts, or None if it never does."""
        if self.length is not None:
            return t, plus(t, self.length)
        if (self.since is not None and t < self.since) or (self.before is not None and t >= self.before):
            return None
        return t, NEVER


EVER = Window()


def _next(t: datetime) -> datetime | None:
    return t if t < NEVER else None


def spans(times: Iterable[datetime], window: Window) -> list[Span]:
    return [s for t in times if (s := window.span(t)) is not None]


def union(items: Iterable[Span]) -> list[Span]:
    """Disjoint, sorted spans covering the same instants (touching spans are joined)."""
    out: list[Span] = []
    for start, end in sorted(items):
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


# -- counts and sums -------------------------------------------------------------------------------------------
def count(times: Iterable[datetime], window: Window, now: datetime, test: Callable[[int], bool]) -> Result:
    """``test`` of the number of events that count at ``now``."""
    return span_count(spans(times, window), now, test)


def distinct(
    keyed: Iterable[tuple[Hashable, datetime]], window: Window, now: datetime, test: Callable[[int], bool]
) -> Result:
    """``test`` of the number of distinct keys with at least one event that counts (messages, channels)."""
    per: dict[Hashable, list[Span]] = {}
    for key, t in keyed:
        if (s := window.span(t)) is not None:
            per.setdefault(key, []).append(s)
    return span_count([s for group in per.values() for s in union(group)], now, test)


def span_count(items: list[Span], now: datetime, test: Callable[[int], bool]) -> Result:
    """``test`` of how many spans hold ``now``, and the first later span end where that answer changes."""
    starts = sorted(s for s, _ in items)
    ends = sorted(e for _, e in items if e < NEVER)
    i, j = bisect_right(starts, now), bisect_right(ends, now)
    n = i - j
    value = test(n)
    while i < len(starts) or j < len(ends):
        t = min(starts[i] if i < len(starts) else NEVER, ends[j] if j < len(ends) else NEVER)
        while i < len(starts) and starts[i] == t:
            n, i = n + 1, i + 1
        while j < len(ends) and ends[j] == t:
            n, j = n - 1, j + 1
        if test(n) != value:
            return Result(value, _next(t))
    return Result(value, None)


def exact(value: int | float) -> Fraction:
    """A number as the exact decimal it was written as (``0.1`` is one tenth), so sums are exact and do not depend
    on the order of the events; a money total compared with 100 is never off by a float's rounding."""
    return Fraction(value) if isinstance(value, int) else Fraction(repr(value))


def total(
    pairs: Iterable[tuple[datetime, Fraction]], window: Window, now: datetime, test: Callable[[Fraction, int], bool]
) -> Result:
    """``test(sum, n)`` of the values of the events that count at ``now`` (sum and average of a property)."""
    steps: dict[datetime, list] = {}
    value_sum, n = Fraction(0), 0
    for t, v in pairs:
        s = window.span(t)
        if s is None:
            continue
        start, end = s
        if start <= now:
            value_sum, n = value_sum + v, n + 1
        else:
            step = steps.setdefault(start, [Fraction(0), 0])
            step[0] += v
            step[1] += 1
        if now < end < NEVER:
            step = steps.setdefault(end, [Fraction(0), 0])
            step[0] -= v
            step[1] -= 1
        elif end <= now and start <= now:
            value_sum, n = value_sum - v, n - 1
    value = test(value_sum, n)
    for t in sorted(steps):
        dv, dn = steps[t]
        value_sum, n = value_sum + dv, n + dn
        if test(value_sum, n) != value:
            return Result(value, t)
    return Result(value, None)


# -- the latest (or earliest) event and its value ---------------------------------------------------------------
MISSING: Any = None  # what a test sees when no event counts


def latest(
    items: Iterable[tuple[datetime, Any, Any]],
    window: Window,
    now: datetime,
    test: Callable[[Any, datetime], Result],
    max_steps: int = 10_000,
) -> Result:
    """``test(value, now)`` of the newest event that counts (by time, then ``order``), or of :data:`MISSING`.

    Items are ``(time, order, value)``. The newest event that counts changes when a later event starts to count or
    when the newest one's window ends; between those steps ``test`` may itself change with time (the value is a
    date tested against ``now``), so both kinds of step are walked in order.
    """
    entries = sorted(
        ((s[0], s[1], order, value) for t, order, value in items if (s := window.span(t)) is not None),
        key=lambda e: (e[0], e[2]),  # never the values: they may not compare (a number and a list)
    )
    starts = [e[0] for e in entries]
    pending = bisect_right(starts, now)
    heap: list = []  # the newest active entry on top: (-time, -order) cannot negate a string, so a key class

    def push(k: int) -> None:
        heapq.heappush(heap, _Newest(entries[k]))

    for k in range(pending):
        push(k)

    def top(t: datetime):
        while heap and heap[0].entry[1] <= t:  # its window has ended
            heapq.heappop(heap)
        return heap[0].entry if heap else None

    cur = top(now)
    value, change = test(cur[3] if cur else MISSING, now)
    t = now
    for _ in range(max_steps):
        nxt_start = starts[pending] if pending < len(starts) else NEVER
        nxt_end = cur[1] if cur else NEVER
        step = min(nxt_start, nxt_end, change or NEVER)
        if step >= NEVER:
            return Result(value, None)
        t = step
        while pending < len(starts) and starts[pending] <= t:
            push(pending)
            pending += 1
        cur = top(t)
        v, change = test(cur[3] if cur else MISSING, t)
        if v != value:
            return Result(value, t)
    return Result(value, t)  # safe: the answer was checked at every step up to t


class _Newest:
    """Heap entry that sorts the newest (time, order) first."""

    __slots__ = ("entry",)

    def __init__(self, entry):
        self.entry = entry

    def __lt__(self, other: _Newest) -> bool:
        return (self.entry[0], self.entry[2]) > (other.entry[0], other.entry[2])


def earliest(times: Iterable[datetime], now: datetime, test: Callable[[Any, datetime], Result]) -> Result:
    """``test(first, now)`` where ``first`` is the time of the person's earliest event if it is at or before
    ``now``, else :data:`MISSING`: it changes once, when the first event happens."""
    first = min(times, default=None)
    if first is None or first <= now:
        return test(MISSING if first is None else first, now)
    value, change = test(MISSING, now)
    if change is not None and change < first:
        return Result(value, change)
    v, change = test(first, first)  # from then on the first event is fixed: its test's own changes are exact
    return Result(value, first if v != value else change)


def presence(groups: dict[Hashable, list[Span]], now: datetime, test: Callable[[frozenset], bool]) -> Result:
    """``test`` of the set of groups with a span holding ``now`` (the online/offline mix)."""
    merged = {g: union(s) for g, s in groups.items()}

    def active(t: datetime) -> frozenset:
        return frozenset(g for g, ss in merged.items() if any(a <= t < b for a, b in ss))

    value = test(active(now))
    steps = sorted({x for ss in merged.values() for span in ss for x in span if now < x < NEVER})
    for t in steps:
        if test(active(t)) != value:
            return Result(value, t)
    return Result(value, None)
