"""A minimal in-memory driver of the interpreter for tests: it keeps instances, their timers and what they emitted,
and fires timers in due order on a virtual clock. It decides nothing itself (that is the interpreter's job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from chorus.journeys import definition as d
from chorus.journeys import dispatch
from chorus.journeys import interpreter as j
from chorus.segments.person import Event, Person

DEFINITIONS = Path(__file__).parent / "definitions"
SEEDS = ("welcome", "abandoned_cart", "browse_abandonment", "post_purchase", "winback", "pickup_cancelled")


def seed(name: str) -> d.Definition:
    return d.parse_yaml((DEFINITIONS / f"{name}.yaml").read_text())


def event(name: str, at: datetime, channel: str = "web", n: int = 0, **properties) -> Event:
    return Event(name=name, type="track", at=at, channel=channel, properties=properties, id=f"{name}:{at}:{n}")


@dataclass
class Driver:
    defn: d.Definition
    person: Person
    now: datetime
    status: str = "active"
    instances: list[j.State] = field(default_factory=list)
    timers: dict[str, tuple[datetime, str]] = field(default_factory=dict)  # key -> (due, instance id)
    commands: list[tuple[str, j.Command]] = field(default_factory=list)  # (instance id, command)
    pending: list[tuple[str, j.Input]] = field(default_factory=list)  # (instance id, input) held while paused
    held_timers: set[str] = field(default_factory=set)  # timers that fired while paused, still the instance's
    given: list[Event] = field(default_factory=list)  # events processed (not held): an entry checks those after it
    lag: timedelta = timedelta(0)  # between an input's time (the virtual clock) and its processing

    def ctx(self) -> j.Context:
        return j.Context(self.now + self.lag, self.person, self.status, before_entry=tuple(self.given))

    def _keep(self, o: dispatch.Outcome, inp: j.Input) -> tuple[j.Command, ...]:
        """Keep what one outcome of the interpreter says: the new state, its timers, or the input held."""
        if o.new:
            self.instances.append(o.state)
        i = next(n for n, s in enumerate(self.instances) if s.instance_id == o.state.instance_id)
        if o.held:
            self.pending.append((o.state.instance_id, inp))
            if isinstance(inp, j.TimerFired):
                self.held_timers.add(inp.key)
            return o.commands
        if isinstance(inp, j.TimerFired):
            self.held_timers.discard(inp.key)
        self.instances[i] = o.state
        for c in o.commands:
            self.commands.append((o.state.instance_id, c))
            if isinstance(c, j.SetTimer):
                assert c.key not in self.timers, "a timer key is set once"
                self.timers[c.key] = (c.at, o.state.instance_id)
            elif isinstance(c, j.CancelTimer) and c.key in self.held_timers:
                self.held_timers.discard(c.key)  # fired while paused, held: its input will change nothing
            elif isinstance(c, j.CancelTimer):
                self.timers.pop(c.key)  # the interpreter cancels only timers it set and that have not fired
        return o.commands

    def _apply(self, i: int, inp: j.Input) -> tuple[j.Command, ...]:
        state, cmds = j.step(self.defn, self.instances[i], inp, self.ctx())
        held = any(isinstance(c, j.Hold) for c in cmds)
        return self._keep(dispatch.Outcome(self.instances[i] if held else state, cmds, held=held), inp)

    def give(self, inp: j.Input) -> list[j.Command]:
        """Offer ``inp`` to the journey (dispatch.offer: every instance of the person, then as a possible entry)."""
        out: list[j.Command] = []
        versions = {s.version: self.defn for s in self.instances} | {1: self.defn}
        outcomes = dispatch.offer(versions, 1, self.person, self.instances, inp, self.now + self.lag,
                                  status=self.status, before_entry=self.given)  # fmt: skip
        for o in outcomes:
            out += self._keep(o, inp)
        if isinstance(inp, Event) and not any(o.held for o in outcomes):
            self.given.append(inp)
        return out

    def resume(self) -> None:
        """The journey is active again: the held inputs are applied, each to its instance, in order of their own time
        (an event's at, a timer's due; arrival order between equal times), as the runtime gives them."""
        self.status = "active"
        held, self.pending = sorted(self.pending, key=lambda h: j.input_time(h[1])), []
        for iid, inp in held:
            self._apply(next(n for n, s in enumerate(self.instances) if s.instance_id == iid), inp)
            if isinstance(inp, Event) and not any(e is inp for e in self.given):
                self.given.append(inp)

    def run_until(self, t: datetime) -> None:
        """Fire every timer due up to ``t``, in due order, each at its own instant; then the clock is ``t``."""
        while True:
            due = sorted((at, key) for key, (at, _) in self.timers.items() if at <= t)
            if not due:
                break
            at, key = due[0]
            self.now = max(self.now, at)
            iid = self.timers.pop(key)[1]
            i = next(n for n, s in enumerate(self.instances) if s.instance_id == iid)
            self._apply(i, j.TimerFired(iid, key, at))
        self.now = max(self.now, t)

    def of(self, kind: type) -> list:
        return [c for _, c in self.commands if isinstance(c, kind)]

    def records(self, kind: str) -> list[j.Record]:
        return [c for c in self.of(j.Record) if c.kind == kind]
