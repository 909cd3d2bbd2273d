"""The reference evaluator: is this person in the segment at ``now``, and when can time alone change that?

``evaluate(rule, person, now)`` is a pure function. Its :class:`Result` holds the answer and ``next_change``, the
exact next instant after ``now`` at which the passage of time alone changes it (None: it never does). An
incremental engine keeps ``next_change`` as a timer per profile and segment; a SQL compiler is checked against
this function. Semantics, condition by condition, are in ``docs/segments.md``.

How exactness is kept:

* every leaf is a step function of ``now`` on half-open intervals ``[a, b)`` and returns the instant its own
  answer flips (the window functions in :mod:`chorus.segments.windows`, the date tests in
  :mod:`chorus.segments.times`);
* ``not`` keeps its child's instant;
* ``and``/``or`` look only at the children that can change the answer (a false ``and`` waits on its false
  children: if one of them never changes, neither does the ``and``), take the earliest of their instants,
  re-evaluate the children that change there, and go on until the combined answer flips. If that takes more than
  :data:`MAX_STEPS` steps (e.g. ``birthday soon or not birthday soon``, which never changes but whose children
  change every year), the last instant checked is returned: it is still safe (the answer is constant until then),
  just not the flip itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any

from chorus.messaging.policy import addresses_for, consent_decision
from chorus.segments import rules as r
from chorus.segments import windows as w
from chorus.segments.person import Event, Person
from chorus.segments.summary import Tally, summarisable
from chorus.segments.times import EARLIEST, Result, anniversary, instant, relative, value_instant

MAX_STEPS = 256
ACTIVITY_CHANNELS = frozenset((*r.ONLINE, *r.OFFLINE))  # the channels that count as channels used
# a message condition's filters -> the message record's fields
MESSAGE_FILTERS = (
    ("message_id", "message_id"), ("template", "template"), ("journey", "journey_id"), ("campaign", "campaign_id"),
    ("channel", "channel"), ("topic", "topic"),
)  # fmt: skip

__all__ = ["Result", "evaluate", "Evaluation", "bucket", "MAX_STEPS"]


def bucket(profile_id: str, seed: str | None = None) -> int:
    """The profile's stable bucket in [0, 100): the first 4 bytes of SHA-256 of ``seed:profile_id`` (or of the id
    alone), big-endian, modulo 100. Any engine (PostgreSQL's ``sha256``, Python) computes the same."""
    key = f"{seed}:{profile_id}" if seed is not None else profile_id
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100


def evaluate(rule: r.Node | Mapping, person: Person, now: datetime, *, topics: Mapping | None = None) -> Result:
    """Evaluate ``rule`` (a parsed rule, or its JSON) for ``person`` at ``now`` (aware).

    ``topics`` is the workspace's ``messaging.topics`` setting (opt-in topics need a grant to count as
    subscribed), as delivery reads it."""
    return Evaluation(person, topics).evaluate(rule, now)


class Evaluation:
    """One person's rules evaluated one after the other: what does not depend on the rule or on ``now`` (her
    time zone, policy view, non-outbound events, the events each selection picks) is computed once and shared by
    every rule, as ``and``/``or`` share it while they step ahead. An engine deciding twenty segments for her
    filters her events once per selection instead of once per segment. ``evaluate`` gives exactly what the
    function :func:`evaluate` gives for the person with ``segments`` as her memberships."""

    def __init__(self, person: Person, topics: Mapping | None = None):
        self.person = person
        self.segments: frozenset[str] | set[str] = person.segments  # what a SegmentRef reads
        self.tz = person.zone
        self.topics = dict(topics) if topics else None
        self._view: dict | None = None
        # keyed by the selection without its window: windows differ between rules more often than what they pick
        self._selected: dict[tuple, list[Event]] = {}
        self.activity = [e for e in person.events if not e.outbound]

    def evaluate(self, rule: r.Node | Mapping, now: datetime,
                 segments: frozenset[str] | set[str] | None = None) -> Result:  # fmt: skip
        """``rule`` at ``now`` (aware); ``segments``, when given, are her memberships for this rule (an engine's
        as it decides them in dependency order), otherwise the person's."""
        if isinstance(rule, Mapping):
            rule = r.parse(dict(rule))
        if now.tzinfo is None:
            raise ValueError("now must be an aware datetime")
        self.segments = self.person.segments if segments is None else segments
        return self.eval(rule, now.astimezone(UTC))

    @property
    def view(self) -> dict:
        if self._view is None:
            self._view = self.person.policy_view()
        return self._view

    def eval(self, node: r.Node, now: datetime) -> Result:
        match node:
            case r.And() | r.Or():
                return self._combine(node, now)
            case r.Not(child):
                value, change = self.eval(child, now)
                return Result(not value, change)
            case r.Trait():
                return check(node.test, self._trait(node), now, self.tz)
            case r.Performed(sel, times):
                if (t := self._settled(sel, now)) is not None:
                    return Result(times.holds(t.n), None)
                return w.count([e.at for e in self.selected(sel)], self.window(sel.window), now, times.holds)
            case r.Aggregate():
                return self._aggregate(node, now)
            case r.LastValue(sel, prop, test):
                items = [(e.at, e.id, v) for e in self.selected(sel) if (v := lookup(e.properties, prop)) is not None]
                return w.latest(items, self.window(sel.window), now, lambda v, t: check(test, v, t, self.tz))
            case r.EventTime(which, sel, test):

                def test_time(x, t):
                    return check(test, x, t, self.tz)

                if which == "first":
                    # the first time is the earliest whatever is stamped later: known is enough
                    if (t := self._tally(sel)) is not None:
                        return w.earliest([t.first] if t.first else [], now, test_time)
                    return w.earliest([e.at for e in self.selected(sel)], now, test_time)
                if (t := self._settled(sel, now)) is not None:
                    return w.latest([(t.last, "", t.last)] if t.last else [], w.EVER, now, test_time)
                return w.latest([(e.at, "", e.at) for e in self.selected(sel)], w.EVER, now, test_time)
            case r.UsedChannel(channels, group, window):
                chans = set(channels or r.CHANNEL_GROUPS[group or ""])
                return w.count([at for ch, at in self._activity(window) if ch in chans], self.window(window), now,
                               bool)  # fmt: skip
            case r.LastChannel(test):
                # the newest activity; at the same instant the greatest channel name, as profiles.state.summary
                s = self.person.summary
                if s is not None and s.channels_settled(now):
                    items = [(last, ch, ch) for ch, (_, last) in s.channels.items()]
                else:
                    items = [(e.at, e.channel, e.channel) for e in self.activity]
                return w.latest(items, w.EVER, now, lambda v, t: check(test, v, t, self.tz))
            case r.ChannelCount(test, window):
                keyed = [(ch, at) for ch, at in self._activity(window) if ch in ACTIVITY_CHANNELS]
                return w.distinct(keyed, self.window(window), now, lambda k: check(test, k, now, self.tz).value)
            case r.ChannelMix(test, window):
                return self._mix(test, window, now)
            case r.Reachable(channel, topic):
                if not addresses_for(self.view, channel):
                    return Result(False, None)
                kind = "marketing" if topic is not None else "transactional"
                return Result(consent_decision(self.view, channel, topic or "*", kind, self.topics).allowed, None)
            case r.Subscribed(channel, topic):
                return Result(consent_decision(self.view, channel, topic, "marketing", self.topics).allowed, None)
            case r.Message():
                return self._message(node, now)
            case r.SegmentRef(segment):
                # a membership as the engine recorded it (the evaluation that changes it evaluates dependants next)
                return Result(segment in self.segments, None)
            case r.InList(list_id):
                return Result(list_id in self.person.lists, None)
            case r.Bucket(start, end, seed):
                return Result(start <= bucket(self.person.id, seed) < end, None)
        raise TypeError(f"not a rule node: {node!r}")

    # -- and / or ----------------------------------------------------------------------------------------------
    def _combine(self, node: r.And | r.Or, now: datetime) -> Result:
        is_and = isinstance(node, r.And)

        def join(results: list[Result]) -> bool:
            return all(x.value for x in results) if is_and else any(x.value for x in results)

        children = node.children
        results = [self.eval(c, now) for c in children]
        value = join(results)
        t = now
        for _ in range(MAX_STEPS):
            if value == is_and:  # a true and / a false or: any child's flip flips it
                relevant = results
            else:  # a false and waits for its false children (an or for its true ones): all must flip
                relevant = [x for x in results if x.value != is_and]
                if any(x.next_change is None for x in relevant):
                    return Result(value, None)
            step = min((x.next_change for x in relevant if x.next_change is not None), default=None)
            if step is None:
                return Result(value, None)
            t = step
            results = [
                self.eval(c, t) if x.next_change is not None and x.next_change <= t else x
                for c, x in zip(children, results, strict=True)
            ]
            if join(results) != value:
                return Result(value, t)
        return Result(value, t)  # safe: the answer is the same at every step checked up to t

    # -- behaviour -------------------------------------------------------------------------------------------
    def _tally(self, sel: r.Selection) -> Tally | None:
        s = self.person.summary
        return s.tally(sel) if s is not None and summarisable(sel) else None

    def _settled(self, sel: r.Selection, now: datetime) -> Tally | None:
        s = self.person.summary
        return s.settled(sel, now) if s is not None and summarisable(sel) else None

    def _activity(self, window: r.Window) -> list[tuple[str, datetime]]:
        """(channel, time) of her activity, for a channel condition. Without a window, an event counts from its
        time on for ever, so each channel's first activity says all of it: the summary's, when she has one."""
        s = self.person.summary
        if s is not None and window == r.Window():
            return [(ch, first) for ch, (first, _) in s.channels.items()]
        return [(e.channel, e.at) for e in self.activity]

    def selected(self, sel: r.Selection) -> list[Event]:
        key = (sel.event, sel.type, sel.where, sel.channels, sel.channel_group)
        found = self._selected.get(key)
        if found is None:
            chans = set(sel.channels or r.CHANNEL_GROUPS.get(sel.channel_group or "", ()))
            found = [
                e
                for e in self.person.events
                if (sel.event is None or e.name == sel.event)
                and (sel.type is None or e.type == sel.type)
                and (not chans or e.channel in chans)
                and all(check(f.test, lookup(e.properties, f.property), EARLIEST, self.tz).value for f in sel.where)
            ]
            self._selected[key] = found
        return found

    def window(self, win: r.Window) -> w.Window:
        if win.within is not None:
            return w.Window(length=win.within.delta)
        return w.Window(
            since=instant(win.since, self.tz) if win.since else None,
            before=instant(win.before, self.tz) if win.before else None,
        )

    def _aggregate(self, node: r.Aggregate, now: datetime) -> Result:
        evs, window, test = self.selected(node.selection), self.window(node.selection.window), node.test
        if node.function == "count":
            if (t := self._settled(node.selection, now)) is not None:
                return Result(check(test, t.n, now, self.tz).value, None)
            return w.count([e.at for e in evs], window, now, lambda k: check(test, k, now, self.tz).value)
        assert node.property is not None
        pairs = [(e.at, w.exact(v)) for e in evs if is_number(v := lookup(e.properties, node.property))]
        if node.function == "sum":
            return w.total(pairs, window, now, lambda s, n: check(test, s, now, self.tz).value)
        # an average of nothing is not a number: no test holds for it
        return w.total(pairs, window, now, lambda s, n: n > 0 and check(test, s / n, now, self.tz).value)

    def _trait(self, node: r.Trait) -> Any:
        if node.computed is not None:
            return lookup(self.person.computed, node.computed)
        return lookup(self.person.state.get("traits") or {}, node.name)

    def _mix(self, test: r.Test, window: r.Window, now: datetime) -> Result:
        win = self.window(window)
        groups: dict[str, list] = {"online": [], "offline": []}
        for ch, at in self._activity(window):
            group = "online" if ch in r.ONLINE else "offline" if ch in r.OFFLINE else None
            if group and (s := win.span(at)) is not None:
                groups[group].append(s)

        def mix(active: frozenset) -> bool:
            name = "both" if len(active) == 2 else next(iter(active)) if active else "unknown"
            return check(test, name, now, self.tz).value

        return w.presence(groups, now, mix)

    def _message(self, node: r.Message, now: datetime) -> Result:
        statuses = {s for name in node.statuses for s in (r.RECEIVED if name == "received" else (name,))}
        filters = [(attr, set(values)) for key, attr in MESSAGE_FILTERS if (values := getattr(node, key))]
        keyed = [
            (m.message_id, m.at)
            for m in self.person.messages
            if m.status in statuses and all(getattr(m, attr) in values for attr, values in filters)
        ]
        return w.distinct(keyed, self.window(node.window), now, node.times.holds)


# -- values and tests ---------------------------------------------------------------------------------------------
def lookup(data: Any, path: str) -> Any:
    """The value at a dotted path (``address.city``, ``items.0.sku``), or None."""
    cur = data
    for part in path.split("."):
        if isinstance(cur, Mapping):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
        if cur is None:
            return None
    return cur


def is_number(v: object) -> bool:
    return isinstance(v, int | float | Fraction) and not isinstance(v, bool)


def _exact(v: int | float | Fraction) -> Fraction:
    return v if isinstance(v, Fraction) else w.exact(v)


def same(a: object, b: object) -> bool:
    """JSON equality with types kept apart: true is not 1, "42" is not 42; 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return _exact(a) == _exact(b)  # type: ignore[arg-type]
    return isinstance(a, str) and isinstance(b, str) and a == b


def check(test: r.Test, value: Any, now: datetime, tz) -> Result:
    """``test`` of ``value`` at ``now``; a value of the wrong type fails every test but ``not_equals`` and
    ``exists: false``."""
    op, arg = test.op, test.arg
    if op == "equals":
        return Result(same(value, arg), None)
    if op == "not_equals":
        return Result(not same(value, arg), None)
    if op == "in":
        return Result(any(same(value, a) for a in arg), None)
    if op == "exists":
        return Result((value is not None) == arg, None)
    if op == "contains":
        return Result(isinstance(value, str) and arg in value, None)
    if op == "starts_with":
        return Result(isinstance(value, str) and value.startswith(arg), None)
    if op == "includes":
        return Result(isinstance(value, list) and any(same(x, arg) for x in value), None)
    if op in r.NUMBER_OPS:
        if not is_number(value):
            return Result(False, None)
        x = _exact(value)
        if op == "between":
            return Result(_exact(arg[0]) <= x <= _exact(arg[1]), None)
        y = _exact(arg)
        return Result(x > y if op == "gt" else x >= y if op == "gte" else x < y if op == "lt" else x <= y, None)
    # dates: an event's time, or a trait or property value that reads as a date
    if isinstance(value, datetime):
        at, day = value, value.date()
    else:
        found = value_instant(value, tz)
        if found is None:
            return Result(False, None)
        at, day = found
    if op == "since":
        return Result(at >= instant(arg, tz), None)
    if op == "before":
        return Result(at < instant(arg, tz), None)
    if op == "date_between":
        return Result(instant(arg[0], tz) <= at < instant(arg[1], tz), None)
    if op in r.RELATIVE_DATE_OPS:
        return relative(op, arg.delta, at, now)
    if op == "anniversary":
        return anniversary(day, arg.before, arg.after, now, tz)
    raise AssertionError(op)
