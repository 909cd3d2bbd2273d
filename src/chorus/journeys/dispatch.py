"""How one input is offered to one journey for one person: to each of her live instances, then as a possible entry.

Pure, like the interpreter: the runtime on the store, the simulator and the tests' driver all call :func:`offer`, so
none of them decides differently which instances see an input, in which order, or when it starts a new one. The
caller carries out the commands and keeps what the outcomes say (the new states, the inputs held while paused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.segments.person import Event, Person


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one input did to one instance. ``new``: the instance was admitted by this input. ``held``: the journey
    is paused; the instance is unchanged (``state`` is the admitted state for a new one) and the caller keeps the
    input, unapplied, to give it again on resume (:func:`chorus.journeys.interpreter.input_time` orders them)."""

    state: j.State
    commands: tuple[j.Command, ...]
    new: bool = False
    held: bool = False


def offer(
    versions: Mapping[int, d.Definition],
    current: int,
    person: Person,
    instances: Sequence[j.State],
    inp: j.Input,
    now: datetime,
    *,
    status: str = "active",
    topics: Mapping | None = None,
    before_entry: Sequence[Event] = (),
) -> list[Outcome]:
    """Give ``inp`` to the person's ``instances`` of one journey (every version: each runs on its own definition in
    ``versions``), in the order given, then, unless it is a timer, try it as an entry to the ``current`` version.

    A timer goes only to the instance that set it. An instance that exited sees nothing more. Instances are
    stepped before the entry so that an event which both moves a waiting person on and enters her again (a second
    Product Added of another cart) is seen by the old instance first, as it happened after that one's entry.

    ``before_entry``: the person's events the caller has given before ``inp`` (the interpreter keeps those stamped
    from the entry on, the entry event excepted), against which a new instance checks its goal and exit criteria
    at entry (:class:`chorus.journeys.interpreter.Context`). Never events not given yet: they come as inputs."""
    ctx = j.Context(now, person, status, topics, tuple(before_entry))
    out: list[Outcome] = []
    for s in instances:
        if s.status == "exited" or (isinstance(inp, j.TimerFired) and inp.instance_id != s.instance_id):
            continue
        new, cmds = j.step(versions[s.version], s, inp, ctx)
        held = any(isinstance(c, j.Hold) for c in cmds)
        out.append(Outcome(s if held else new, cmds, held=held))
    if isinstance(inp, j.TimerFired) or current not in versions:
        return out
    known = [o.state for o in out] + [s for s in instances if s.status == "exited"]
    # every instance, exited ones included: re-entry rules and entry keys look at the whole history
    seen = {s.instance_id for s in known}
    known += [s for s in instances if s.instance_id not in seen]
    admission = j.enter(versions[current], person, inp, known, now, version=current, status=status)
    if admission.state is None or admission.state.instance_id in seen:
        return out
    new, cmds = j.step(versions[current], admission.state, inp, ctx)
    held = any(isinstance(c, j.Hold) for c in cmds)
    out.append(Outcome(admission.state if held else new, cmds, new=True, held=held))
    return out
