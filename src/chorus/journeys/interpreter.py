"""The one journey interpreter: ``step(definition, state, input, ctx) -> (new state, commands)``, pure.

The runtime on the store, the simulator and a later Temporal adapter all run this function; none of them decides
anything about a journey. An instance is one person's pass through one journey: :func:`enter` decides whether an
input starts one (entry, dedup key, re-entry), and :func:`step` applies one input to it:

* **inputs** — an :class:`~chorus.segments.person.Event` of the person (any channel, an import included), a
  :class:`MessageEvent` (a status of a message this instance sent), a :class:`SegmentChanged`, a
  :class:`TimerFired` (a timer this instance set) and a :class:`Start` (an API call or a scheduled run);
* **commands** — plain data for the runtime to carry out in the transaction that stores the new state:
  :class:`Send`, :class:`SetTimer`, :class:`CancelTimer`, :class:`UpdateTrait`, :class:`ListChange`,
  :class:`AudienceChange`, :class:`Webhook`, :class:`Record` (timeline and node stats), :class:`Exit`, and
  :class:`Hold` (the journey is paused: keep the input and give it again on resume).

On every input the goal and the exit criteria are checked first, whatever node the person is at (a delay
included); then the node the person waits at reacts. From there the interpreter runs through instantaneous nodes
until a delay, a wait, a holdout or an exit: the definition guarantees that no cycle is instantaneous, so one
step passes each node at most once. Every side effect carries an idempotency key ``<instance id>:<step number>``:
the step number only grows, so keys are unique per instance, and a retried transition computes the same ones.

The state is plain data (:func:`state_to_json`, :func:`state_from_json`) that the runtime stores as a row.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Union
from zoneinfo import ZoneInfo

import orjson

from chorus.journeys import definition as d
from chorus.segments import rules as r
from chorus.segments.evaluate import bucket, check, evaluate, lookup, same
from chorus.segments.person import Event, Person
from chorus.segments.times import EARLIEST, plus, value_instant
from chorus.timeutil import iso, parse_ts

STATUSES = ("active", "paused", "stopped")  # of the journey (version), given by the runtime in the context


# -- inputs -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessageEvent:
    """A status of a message Chorus sent (the outbox's record): ``key`` is the idempotency key of the
    :class:`Send` that queued it, which ties it to the instance and the message node."""

    status: str
    message_id: str
    journey_id: str | None
    key: str | None
    at: datetime
    channel: str | None = None


@dataclass(frozen=True, slots=True)
class SegmentChanged:
    """``id`` tells two changes apart (the runtime passes the change feed's sequence number): an entry by a segment
    is an instance whose id derives from it."""

    segment: str
    change: str  # entered | exited
    at: datetime
    id: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    instance_id: str
    key: str
    due: datetime


@dataclass(frozen=True, slots=True)
class Start:
    """An API call or a scheduled run: ``id`` is unique per start (a request id, or the schedule's run instant)."""

    id: str
    at: datetime
    data: Mapping[str, Any] = field(default_factory=dict)


def scheduled_start(run_id: str, at: datetime) -> Start:
    """A scheduled run's start: its id is the run's, and so is its ``run`` (``definition.RUN_KEY``), the key of a
    scheduled journey whose runs are entered side by side (``reentry: per_key``)."""
    return Start(run_id, at, {d.RUN_KEY: run_id})


@dataclass(frozen=True, slots=True)
class Merged:
    """Another profile was merged into the person: its instances are hers now. ``superseded`` (from
    :func:`superseded`) are the instances that duplicate another of hers where the journey lets a person be in it
    once at a time, or once per key value: they exit, their messages not out yet withdrawn."""

    at: datetime
    superseded: frozenset[str] = frozenset()
    # journeys whose duplicates the runtime ranked with her exited instances still waiting to send
    # (:func:`superseded_exited`): for those, ``superseded`` is the answer, not :func:`superseded` of the live ones
    ranked: frozenset[str] = frozenset()


Input = Union[Event, MessageEvent, SegmentChanged, TimerFired, Start, Merged]  # noqa: UP007


def input_time(inp: Input) -> datetime:
    """An input's own time: a timer's due instant, any other input's ``at``. Held inputs are given again on resume
    in this order, and a transition is dated by it (never later than now)."""
    return inp.due if isinstance(inp, TimerFired) else inp.at


@dataclass(frozen=True)
class Context:
    """What the runtime knows besides the state: the time, the person as segments see her (traits, computed traits,
    time zone, memberships, events for condition rules), the journey's status and the workspace's topics.

    ``before_entry``: the person's events that the caller has already given (processed) before the entry input,
    the only ones an entry step checks its goal and exit criteria against. Not ``person.events``: a runtime reads
    the person from the store, where events it has not processed yet (they will come as inputs later) are already
    present, and the instance would see them twice, and otherwise than the simulator."""

    now: datetime
    person: Person
    status: str = "active"
    topics: Mapping | None = None
    before_entry: tuple[Event, ...] = ()


# -- commands ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Send:
    template: str
    channel: str | tuple[str, ...]  # "auto" or the channels to try in order
    kind: str
    topic: str | None
    event: Mapping[str, Any]  # the entry event's properties (templates read them as event.*)
    data: Mapping[str, Any] | None
    journey_id: str
    version: int
    node: str
    instance_id: str
    profile_id: str
    key: str  # the outbox's idempotency key

    def request(self) -> dict:
        """The outbox's send request (``messaging.outbox.parse_request``)."""
        out: dict[str, Any] = {
            "profile_id": self.profile_id, "template": self.template, "kind": self.kind,
            "channel": self.channel if self.channel == "auto" else list(self.channel), "journey_id": self.journey_id,
            "event": dict(self.event),
        }  # fmt: skip
        if self.topic is not None:
            out["topic"] = self.topic
        if self.data is not None:
            out["data"] = dict(self.data)
        return out


@dataclass(frozen=True, slots=True)
class SetTimer:
    key: str
    at: datetime


@dataclass(frozen=True, slots=True)
class CancelTimer:
    key: str


@dataclass(frozen=True, slots=True)
class UpdateTrait:
    trait: str
    value: Any  # None removes it
    key: str
    node: str | None = None  # the step's node (an error it meets is recorded there)


@dataclass(frozen=True, slots=True)
class ListChange:
    list: str
    action: str  # add | remove
    key: str
    node: str | None = None  # the step's node (an error it meets is recorded there)


@dataclass(frozen=True, slots=True)
class AudienceChange:
    audience: str
    action: str
    key: str
    node: str | None = None  # the step's node (an error it meets is recorded there)


@dataclass(frozen=True, slots=True)
class Webhook:
    url: str
    method: str
    body: Mapping[str, Any]
    key: str
    node: str | None = None  # the step's node (an error it meets is recorded there)


@dataclass(frozen=True, slots=True)
class Record:
    """For the timeline and node stats. ``kind``: entered (the journey), waiting (started waiting at ``node``),
    step (passed ``node``, leaving by ``branch``), converted (at ``node``, on ``branch``, the last branch taken),
    exited (``detail`` says why)."""

    kind: str
    node: str | None
    branch: str | None = None
    at: datetime = EARLIEST
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Exit:
    reason: str
    # The idempotency keys of the instance's messages to withdraw if they have not gone out yet (deferred by caps or
    # quiet hours, waiting for a retry): every message it sent when it leaves because the message stopped being
    # relevant (its goal reached, with exit_on_goal; an exit criterion met; the journey stopped); none at the end of
    # its path, whose last step is often the very message still on its way.
    withdraw: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Hold:
    """The journey is paused: the runtime keeps the input pending, unapplied, and gives it again on resume."""


Command = Union[Send, SetTimer, CancelTimer, UpdateTrait, ListChange, AudienceChange, Webhook, Record, Exit, Hold]  # noqa: UP007
EFFECTS = (Send, UpdateTrait, ListChange, AudienceChange, Webhook)  # commands with an idempotency key


# -- state ------------------------------------------------------------------------------------------------------
@dataclass
class State:
    instance_id: str
    journey_id: str
    version: int
    profile_id: str
    entered_at: datetime
    entry: dict  # the entry input as JSON: kind, id, at, and name, channel, properties (data of a start)
    key: str | None = None
    status: str = "new"  # new (admitted, not stepped yet), active, tracking (past its end, goal window open), exited
    node: str | None = None
    branch: str | None = None  # the last branch taken (arm, then/else, wait branch)
    waiting: str | None = None  # delay | wait | holdout | goal_window
    step: int = 0
    visits: dict[str, int] = field(default_factory=dict)
    arms: dict[str, str] = field(default_factory=dict)  # split node -> arm
    timers: dict[str, dict] = field(default_factory=dict)  # key -> {"purpose", "due"} of the timers set and alive
    sent: dict[str, str] = field(default_factory=dict)  # idempotency key of a Send -> its message node
    converted_at: datetime | None = None
    exited_at: datetime | None = None
    exit_reason: str | None = None

    @property
    def properties(self) -> Mapping[str, Any]:
        return self.entry.get("properties") or {}


_TIMES = ("entered_at", "converted_at", "exited_at")


def _fresh(s: State) -> State:
    """A copy of ``s`` that a step may change, leaving ``s`` as it was: its containers are new (timers' included,
    which a wait updates); ``entry``, which nothing changes, is shared."""
    return replace(s, visits=dict(s.visits), arms=dict(s.arms), timers={k: dict(v) for k, v in s.timers.items()},
                   sent=dict(s.sent))  # fmt: skip


def state_to_json(s: State) -> dict:
    out = {k: getattr(s, k) for k in State.__dataclass_fields__}
    for k in _TIMES:
        out[k] = iso(out[k]) if out[k] is not None else None
    return _json_copy(out)


def _json_copy(x: dict) -> dict:
    """A copy sharing nothing with ``x``: through orjson, ten times a deepcopy's speed; a deepcopy for what it
    refuses (an integer past 64 bits, which no input can hold through the API, though a store could)."""
    try:
        return orjson.loads(orjson.dumps(x))
    except TypeError:
        return copy.deepcopy(x)


def state_from_json(raw: Mapping) -> State:
    data = _json_copy(dict(raw))
    for k in _TIMES:
        data[k] = parse_ts(data[k]) if data.get(k) is not None else None
    return State(**data)


# -- entry ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Admission:
    state: State | None  # None: not admitted
    reason: str


def _entry_json(inp: Input) -> dict:
    if isinstance(inp, Event):
        return {"kind": "event", "id": inp.id, "at": iso(inp.at), "name": inp.name, "type": inp.type,
                "channel": inp.channel, "properties": dict(inp.properties)}  # fmt: skip
    if isinstance(inp, SegmentChanged):
        return {"kind": "segment", "id": inp.id or f"{inp.segment}:{inp.change}:{iso(inp.at)}", "at": iso(inp.at),
                "segment": inp.segment, "properties": {}}  # fmt: skip
    assert isinstance(inp, Start)
    return {"kind": "start", "id": inp.id, "at": iso(inp.at), "properties": dict(inp.data)}


def _is_entry(s: State, inp: Input) -> bool:
    """Is ``inp`` the input that admitted ``s`` (by kind, id and time, as stored in the state's JSON)?"""
    if not isinstance(inp, Event | SegmentChanged | Start):
        return False
    e = _entry_json(inp)
    return all(e[k] == s.entry.get(k) for k in ("kind", "id", "at"))


def _key_of(props: Mapping, name: str) -> str | None:
    v = lookup(props, name)
    if isinstance(v, bool) or not isinstance(v, str | int) or v == "":
        return None
    return str(v)


def enter(
    defn: d.Definition,
    person: Person,
    inp: Input,
    instances: Sequence[State],
    now: datetime,
    *,
    version: int = 1,
    status: str = "active",
) -> Admission:
    """Does ``inp`` start an instance of ``defn`` for ``person``, given her ``instances`` of this journey (every
    version, active or exited, as far back as the runtime keeps them)?

    A key value (``entry.event.key``, ``entry.api.key``) enters once: a second Product Added of the same cart
    starts nothing. Then ``reentry``: ``never`` (no earlier instance), ``after_exit`` (none active, and the input
    stamped no earlier than the last exit: processed late, it would overlap that instance), ``cooldown`` (that, and
    the last entry at least that long ago), ``per_key`` (whenever the key value is new: each value enters once,
    different values run side by side). The instance id is derived from the journey, the person and the input's
    id, so a redelivered input yields the same instance (the runtime's unique key makes it a no-op).

    A stopped journey admits nobody (an instance would only exit at once, and count as an entry against
    ``reentry``). A paused one admits: the entry is held like any input and begins on resume, dated by its time."""
    if status not in STATUSES:
        raise ValueError(f"journey status is one of {', '.join(STATUSES)}")
    if status == "stopped":
        return Admission(None, "the journey is stopped")
    e = defn.entry
    if isinstance(e, d.EventEntry):
        if not isinstance(inp, Event) or not _event_matches(e.match, inp, {}, person.zone):
            return Admission(None, "not the entry event")
    elif isinstance(e, d.SegmentEntry):
        if not (isinstance(inp, SegmentChanged) and inp.segment == e.segment and inp.change == "entered"):
            return Admission(None, f"not an entry into segment {e.segment!r}")
    elif not isinstance(inp, Start):
        return Admission(None, "this journey is entered by a start (API or schedule)")
    entry = _entry_json(inp)
    key = None
    if defn.entry_key is not None:
        key = _key_of(entry["properties"], defn.entry_key)
        if key is None:
            return Admission(None, f"the entry has no {defn.entry_key} (a text or whole number)")
        if any(i.key == key for i in instances):
            return Admission(None, f"{defn.entry_key} {key!r} has entered already")
    active = [i for i in instances if i.status != "exited"]
    mode = defn.reentry.mode
    if mode == "never" and instances:
        return Admission(None, "the person has been in this journey (reentry: never)")
    if mode in ("after_exit", "cooldown") and active:
        return Admission(None, "the person is in this journey now")
    # the entry is dated by its input's time (not later than now), and so is the cool-down's end: a backlog in
    # processing decides nothing the simulator, where now is the input's time, would decide otherwise
    t = min(inp.at, now)
    # An entry stamped before an earlier instance's exit (processed late) would overlap it in time, which the
    # simulator, giving inputs in time order, never admits: it would have found the person in the journey.
    if mode in ("after_exit", "cooldown"):
        last_exit = max((i.exited_at for i in instances if i.exited_at is not None), default=None)
        if last_exit is not None and t < last_exit:
            return Admission(None, f"stamped {iso(t)}, before the person's last exit at {iso(last_exit)}")
    if mode == "cooldown" and instances:
        assert defn.reentry.cooldown is not None
        last = max(i.entered_at for i in instances)
        if t < plus(last, defn.reentry.cooldown.delta):
            return Admission(None, f"entered at {iso(last)}, within the cool-down of {defn.reentry.cooldown.text()}")
    # An input without an id (an event with no messageId, a start without one) is told apart by its time and key
    # value: two carts added at once are two instances, and a redelivery of the same one is still the same.
    ident = entry["id"] or f"{entry['at']}\x1e{key or ''}"
    digest = hashlib.sha256("\x1f".join((defn.id, person.id, entry["kind"], ident)).encode()).hexdigest()
    # Entry is dated by the entry input's own time (not later than now): goals, windows and "events from entry on"
    # then compare event times with an event time, whatever the lag between an event and its processing.
    if defn.draws_by_identifier:
        # what a split by identifier draws by, fixed at entry: the entry event's own anchor, else (an entry by a
        # segment, a schedule, the API) hers as read now; None: none known, her profile id is drawn by
        drawn = inp.anchor if isinstance(inp, Event) else None
        entry["anchor"] = drawn or person.anchor or None
    state = State(
        instance_id="ji_" + digest[:24], journey_id=defn.id, version=version, profile_id=person.id,
        entered_at=t, entry=entry, key=key,
    )  # fmt: skip
    return Admission(state, "entered")


def superseded(defn: d.Definition, instances: Sequence[State]) -> frozenset[str]:
    """After a merge gave a person another profile's instances of this journey: the live ones that duplicate another
    and must exit. Where ``reentry`` lets her be in the journey once at a time (``never``, ``after_exit``,
    ``cooldown``), all live instances but the first entered; with ``per_key``, all but the first of each key value
    (an entry key enters once). The first entered stays: it is the furthest along (an outside probe: both profiles
    had entered a browse journey before one identify joined them, and she got its email twice)."""
    one_at_a_time = defn.reentry.mode in ("never", "after_exit", "cooldown")
    first: dict = {}
    out = set()
    for s in sorted((s for s in instances if s.status != "exited"), key=lambda s: (s.entered_at, s.instance_id)):
        group = None if one_at_a_time else s.key
        if group in first:
            out.add(s.instance_id)
        else:
            first[group] = s.instance_id
    return frozenset(out)


def superseded_exited(defn_of: Callable[[int], d.Definition], instances: Sequence[State], pending: Mapping[str, str]
                      ) -> tuple[dict[str, tuple[str, ...]], frozenset[str]]:  # fmt: skip
    """After a merge: her instances of one journey that duplicate another of hers. In entry order (at one instant,
    the one that left first first), an instance is a duplicate when its version (``defn_of``) would not have admitted
    it, had every instance kept before it been hers all along (:func:`_admits`); her own re-entries (after an exit,
    after a cool-down, another key value) were hers to make, whichever profile made them (review). An exited one is
    judged beside every instance kept before it; a live one beside those kept that still act (live, or exited with
    a message waiting). Returns the exited duplicates with their messages not gone out yet to withdraw
    (``pending``: the idempotency keys of her messages still waiting), and the live duplicates, which exit by
    ``Merged``: among live ones alone this is the ranking of :func:`superseded`. An outside probe: both profiles
    had reached a message then an exit, the messages waited out quiet hours, and she got both after the merge."""
    kept: list[State] = []
    out: dict[str, tuple[str, ...]] = {}
    live: set[str] = set()

    def acting(k: State) -> bool:
        return k.status != "exited" or any(key in pending for key in k.sent)

    order = sorted(instances, key=lambda s: (s.entered_at, s.exited_at is None, s.exited_at or s.entered_at,
                                             s.instance_id))  # fmt: skip
    for s in order:
        if s.status != "exited":
            # a live one beside those still acting: one done (its messages gone out) decides nothing about her
            # future any more (review: a live re-entry exited over an old overlap)
            if _admits(defn_of(s.version), [k for k in kept if acting(k)], s):
                kept.append(s)
            else:
                live.add(s.instance_id)
        elif _admits(defn_of(s.version), kept, s):  # an exited one beside all kept, done ones included: a message
            kept.append(s)  # she already had makes another profile's copy of it a duplicate (review)
        elif keys := tuple(sorted(k for k in s.sent if k in pending)):
            out[s.instance_id] = keys
    return out, frozenset(live)


def _admits(defn: d.Definition, kept: Sequence[State], s: State) -> bool:
    """Whether the journey's re-entry rule lets ``s`` in, its entry instant and key value, beside ``kept`` (as
    :func:`enter` decides it when the entry comes)."""
    if not kept:
        return True
    t, mode = s.entered_at, defn.reentry.mode
    if defn.entry_key is not None and s.key is not None and any(k.key == s.key for k in kept):
        return False
    if mode == "never":
        return False
    if mode in ("after_exit", "cooldown") and any(k.exited_at is None or t < k.exited_at for k in kept):
        return False  # one of hers was still in it then
    if mode == "cooldown":
        assert defn.reentry.cooldown is not None
        if t < plus(max(k.entered_at for k in kept), defn.reentry.cooldown.delta):
            return False
    return True


# -- matching ---------------------------------------------------------------------------------------------------
def _event_matches(m: d.EventMatch, ev: Event, entry_props: Mapping, tz: ZoneInfo) -> bool:
    sel = m.selection
    if sel.event is not None and ev.name != sel.event:
        return False
    if sel.type is not None and ev.type != sel.type:
        return False
    chans = set(sel.channels or r.CHANNEL_GROUPS.get(sel.channel_group or "", ()))
    if chans and ev.channel not in chans:
        return False
    if not all(check(f.test, lookup(ev.properties, f.property), EARLIEST, tz).value for f in sel.where):
        return False
    for s in m.same:
        mine, theirs = lookup(ev.properties, s.property), lookup(entry_props, s.entry)
        if mine is None or theirs is None or not same(mine, theirs):
            return False
    return True


def _matches(c: d.Trigger, inp: Input, s: State, tz: ZoneInfo) -> bool:
    if isinstance(c, d.EventMatch):
        return isinstance(inp, Event) and inp.at >= s.entered_at and _event_matches(c, inp, s.properties, tz)
    if isinstance(c, d.SegmentChange):
        # like an event, a change from before the entry (processed late) is not the person's doing in this journey
        return (
            isinstance(inp, SegmentChanged)
            and inp.at >= s.entered_at
            and inp.segment == c.segment
            and inp.change == c.change
        )
    return (
        isinstance(inp, MessageEvent)
        and inp.key is not None
        and inp.key in s.sent
        and (c.node is None or s.sent[inp.key] == c.node)
        and inp.status in c.statuses
    )


# -- stepping ---------------------------------------------------------------------------------------------------
def step(defn: d.Definition, state: State, inp: Input, ctx: Context) -> tuple[State, tuple[Command, ...]]:
    """Apply ``inp`` to ``state``. ``state`` is not modified; the new state and the commands are returned.

    The first step of an admitted state (status ``new``) takes the entry input: the person enters and runs from
    ``start``. After an exit nothing is emitted, whatever comes. In a paused journey the answer is ``Hold()`` and
    the same state; in a stopped one the person exits (timers cancelled, nothing sent)."""
    if state.status == "exited":
        return state, ()
    if isinstance(inp, Merged):  # whatever the journey's status: two of her in it would each go on
        if state.instance_id not in inp.superseded:
            return state, ()
        run = _Run(defn, _fresh(state), ctx, inp)
        run.exit("merged: she is in this journey already (another profile of hers entered it)", withdraw=True)
        return run.s, tuple(run.out)
    if ctx.status == "paused":
        return state, (Hold(),)
    if ctx.status not in STATUSES:
        raise ValueError(f"journey status is one of {', '.join(STATUSES)}")
    run = _Run(defn, _fresh(state), ctx, inp)
    if isinstance(inp, TimerFired) and inp.instance_id == run.s.instance_id:
        # a timer that fired is no longer the instance's to cancel, whatever happens next (a stop included)
        fired = run.s.timers.pop(inp.key, None)
    else:
        fired = None
    if ctx.status == "stopped":
        run.exit("journey stopped", withdraw=True)
    elif run.s.status == "new":
        # Admitted while paused, it begins with its own entry input, given again on resume in time order. An input
        # given before that one (stamped earlier: it happened before the instance existed) changes nothing, as in
        # the simulator, where the instance does not exist yet when that input comes.
        if _is_entry(run.s, inp):
            run.begin()
    elif isinstance(inp, TimerFired):
        # one that is not among its live timers (cancelled, fired already, another instance's) moves nothing
        if not run.criteria(inp) and fired is not None:
            run.timer(fired)
    elif not run.criteria(inp) and not isinstance(inp, Start):
        run.react(inp)
    return run.s, tuple(run.out)


class _Run:
    def __init__(self, defn: d.Definition, s: State, ctx: Context, inp: Input):
        # One time base per transition: the input's own time (a timer's due), never later than now. Records, delays,
        # timeouts and exits are dated by it, and segment rules (criteria, conditions) are evaluated at it, so a lag
        # between an input and its processing (a backlog, a pause) changes no decision: the runtime and the
        # simulator agree. Rules read the person's events up to that instant (a window counts from an event's time
        # on); her traits and memberships are the ones the caller read.
        # Never before the entry either: a late input (an event imported after the fact, a held one on resume) must
        # not date a record, a delay or a timeout before the instance existed, which the simulator, giving inputs
        # in time order, never does.
        self.defn, self.s, self.ctx = defn, s, ctx
        self.now = max(min(input_time(inp), ctx.now), s.entered_at)
        self.out: list[Command] = []
        self.tz = ctx.person.zone

    def record(self, kind: str, node: str | None, branch: str | None = None, detail: str | None = None,
               at: datetime | None = None) -> None:  # fmt: skip
        self.out.append(Record(kind, node, branch, at or self.now, detail))

    def begin(self) -> None:
        self.s.status = "active"
        self.record("entered", self.defn.start)
        if not self.at_entry():
            self.advance(self.defn.start)

    def at_entry(self) -> bool:
        """The goal and exit criteria, checked before the first node: a rule that holds already, and the person's
        events from entry on that the caller processed before the entry (``Context.before_entry``: an offline batch,
        an import), in time order; True when she exited. The entry event itself is not among them: an entry that met
        an exit criterion would never start."""
        s = self.s
        # a Start matches no event, segment or message criterion: only the rules are evaluated by it
        if self.criteria(Start("", s.entered_at)):
            return True
        entry_id = s.entry.get("id")
        later = sorted((e for e in self.ctx.before_entry if e.at >= s.entered_at and e.id != entry_id),
                       key=lambda e: e.at)  # fmt: skip
        return any(self.criteria(e) for e in later)

    def exit(self, reason: str, withdraw: bool = False) -> None:
        s = self.s
        self.cancel_timers()
        self.record("exited", s.node, s.branch, reason)
        self.out.append(Exit(reason, tuple(s.sent) if withdraw else ()))
        s.status, s.exited_at, s.exit_reason, s.waiting = "exited", self.now, reason, None

    def finish(self, reason: str) -> None:
        """The person reached the end of her path (an exit node, a max_visits overflow with nowhere to go). While
        the goal window is open she stays, tracked and sent nothing, until entered_at + within: a holdout waits out
        the window too, so both arms are measured over the same window and uplift is not biased against treatment."""
        s, goal = self.s, self.defn.goal
        if goal is None or goal.within is None or s.converted_at is not None:
            self.exit(reason)
            return
        end = plus(s.entered_at, goal.within.delta)
        if end <= self.now:
            self.exit(reason)
            return
        self.cancel_timers()
        s.status, s.exit_reason = "tracking", reason
        self.wait("goal_window", end)

    def set_timer(self, purpose: str, at: datetime) -> str:
        key = f"{self.s.instance_id}:{self.s.step}:{purpose}"
        self.s.timers[key] = {"purpose": purpose, "due": iso(at)}
        self.out.append(SetTimer(key, at))
        return key

    def cancel_timers(self) -> None:
        for key in self.s.timers:
            self.out.append(CancelTimer(key))
        self.s.timers = {}

    # -- inputs while active -------------------------------------------------------------------------------------
    def holds(self, c: d.Trigger | d.RuleMatch, inp: Input) -> bool:
        if isinstance(c, d.RuleMatch):
            return evaluate(c.rule, self.ctx.person, self.now, topics=self.ctx.topics).value
        return _matches(c, inp, self.s, self.tz)

    def criteria(self, inp: Input) -> bool:
        """The goal, then the exit criteria, whatever node the person is at; True when she exited."""
        s, goal = self.s, self.defn.goal
        # an event or a segment change counts at its own time (a held or late input included); a rule at the time base
        timed = isinstance(inp, Event | MessageEvent | SegmentChanged)
        at = inp.at if timed and not (goal and isinstance(goal.criterion, d.RuleMatch)) else self.now
        if goal is not None and s.converted_at is None and self.holds(goal.criterion, inp):
            if at >= s.entered_at and (goal.within is None or at <= plus(s.entered_at, goal.within.delta)):
                s.converted_at = at
                self.record("converted", s.node, s.branch, at=at)
                # a holdout, like a finished (tracking) treated person, has nothing left to measure once converted:
                # both arms exit at conversion whatever exit_on_goal says, so they stay symmetric (re-entry included)
                if self.defn.exit_on_goal or s.status == "tracking" or s.waiting == "holdout":
                    # with exit_on_goal: false the author keeps converted people's messages, unless the same input
                    # also meets an exit criterion: that says they stopped being relevant, as it would alone (a
                    # cross-sell still on its way when she orders again, the exit being her next order)
                    withdraw = self.defn.exit_on_goal or any(self.holds(c, inp) for c in self.defn.exits)
                    self.exit("goal reached", withdraw=withdraw)
                    return True
        for i, c in enumerate(self.defn.exits):
            if self.holds(c, inp):
                self.exit(f"exit[{i}] met", withdraw=True)
                return True
        return False

    def react(self, inp: Input) -> None:
        s = self.s
        if s.waiting != "wait":
            return
        assert s.node is not None
        node = self.defn.node(s.node).body
        assert isinstance(node, d.Wait)
        for br in node.branches:
            if _matches(br.on, inp, s, self.tz):
                self.cancel_timers()
                self.record("step", s.node, br.name)
                s.branch = br.name
                self.advance(br.next)
                return

    def timer(self, t: dict) -> None:
        """The instance's timer ``t`` (its purpose, and where a delay goes on) fired."""
        s = self.s
        assert s.node is not None
        node = self.defn.node(s.node).body
        if t["purpose"] == "holdout":
            self.exit("holdout: goal window over")
        elif t["purpose"] == "goal_window":
            self.exit(s.exit_reason or "goal window over")
        elif t["purpose"] == "timeout":
            assert isinstance(node, d.Wait)
            self.record("step", s.node, "timeout")
            s.branch = "timeout"
            self.advance(node.timeout_next)
        else:
            assert isinstance(node, d.Delay)
            self.record("step", s.node, t.get("branch"))
            self.advance(t.get("next", node.next))

    # -- nodes ---------------------------------------------------------------------------------------------------
    def advance(self, nid: str) -> None:
        s, defn = self.s, self.defn
        s.waiting = None
        # Each node runs at most once per step: every loop passes a waiting node that waits (definition.parse, and
        # a delay on a loop always yields), and a visit past max_visits never leads back to its node.
        for _ in range(2 * len(defn.nodes) + 1):
            node = defn.node(nid)
            s.node = nid
            s.visits[nid] = s.visits.get(nid, 0) + 1
            if node.max_visits is not None and s.visits[nid] > node.max_visits:
                self.record("step", nid, "overflow")
                if node.overflow is None:
                    self.finish(f"{nid}: max_visits ({node.max_visits}) reached")
                    return
                nid = node.overflow
                continue
            s.step += 1
            following = self.run_node(node)
            if following is None:
                return
            nid = following
        raise AssertionError("an instantaneous cycle passed validation")  # pragma: no cover

    def run_node(self, node: d.Node) -> str | None:
        """Carry out ``node``; the next node to run now, or None when the person waits or has exited."""
        s, b, nid = self.s, node.body, node.id
        key = f"{s.instance_id}:{s.step}"
        match b:
            case d.ExitStep():
                self.record("step", nid)
                self.finish("exit node")
                return None
            case d.SendMessage():
                self.out.append(Send(
                    b.template, b.channel, b.kind, b.topic, dict(s.properties), b.data, s.journey_id, s.version, nid,
                    s.instance_id, s.profile_id, key,
                ))  # fmt: skip
                s.sent[key] = nid
            case d.UpdateTrait():
                self.out.append(UpdateTrait(b.trait, b.value, key, nid))
            case d.ListStep():
                self.out.append(ListChange(b.list, b.action, key, nid))
            case d.AudienceStep():
                self.out.append(AudienceChange(b.audience, b.action, key, nid))
            case d.WebhookStep():
                body = {
                    "journey_id": s.journey_id, "version": s.version, "node": nid, "profile_id": s.profile_id,
                    "instance_id": s.instance_id, "event": dict(s.properties), "data": dict(b.data or {}),
                }  # fmt: skip
                self.out.append(Webhook(b.url, b.method, body, key, nid))
            case d.Condition():
                if b.rule is not None:
                    value = evaluate(b.rule, self.ctx.person, self.now, topics=self.ctx.topics).value
                else:
                    assert b.entry is not None
                    value = check(b.entry.test, lookup(s.properties, b.entry.property), self.now, self.tz).value
                s.branch = "then" if value else "else"
                self.record("step", nid, s.branch)
                return b.then if value else b.otherwise
            case d.Split():
                arm = self.arm(nid, b)
                s.arms[nid] = arm.name
                s.branch = arm.name
                if not arm.holdout:
                    self.record("step", nid, arm.name)
                    return arm.next
                assert self.defn.goal is not None and self.defn.goal.within is not None
                end = plus(s.entered_at, self.defn.goal.within.delta)
                if end <= self.now:
                    self.record("step", nid, arm.name)
                    self.exit("holdout: goal window over")
                    return None
                self.wait("holdout", end, arm.name)
                return None
            case d.Delay():
                due, branch = self.due(b)
                target = b.missing if branch == "no_date" and b.missing is not None else b.next
                # A delay on a loop always waits for its timer, even one due now: each round of a loop is then at
                # least one transition of its own, and one step runs each node at most once.
                if nid not in self.defn.cyclic and (due is None or due <= self.now):
                    self.record("step", nid, branch)
                    return target
                self.wait("delay", max(due or self.now, self.now), then=(target, branch))
                return None
            case d.Wait():
                self.wait("timeout", plus(self.now, b.timeout.delta))
                return None
        self.record("step", nid)
        return b.next

    def wait(self, purpose: str, due: datetime, branch: str | None = None, then: tuple | None = None) -> None:
        """Wait at the current node for a timer; ``then`` is where a delay goes on and by which branch."""
        assert self.s.node is not None
        self.s.waiting = {"timeout": "wait"}.get(purpose, purpose)
        key = self.set_timer(purpose, due)
        if then is not None:
            self.s.timers[key].update(next=then[0], branch=then[1])
        self.record("waiting", self.s.node, branch)

    def arm(self, nid: str, split: d.Split) -> d.Arm:
        """The arm for the person: kept when she comes back to the node; otherwise her stable bucket, cut by the
        cumulative weights. ``by: profile`` hashes her profile id (the segment rule ``bucket`` with the same seed
        selects the same people); ``by: identifier`` her anchor identifier, or her profile id when she has none."""
        if nid in self.s.arms:
            found = [a for a in split.arms if a.name == self.s.arms[nid]]
            if found:
                return found[0]
        key = self.s.profile_id
        if split.by == "identifier":
            # the anchor fixed at entry (an instance from before it was kept: hers as read now)
            fixed = self.s.entry["anchor"] if "anchor" in self.s.entry else self.ctx.person.anchor
            key = fixed or key
        point = bucket(key, split.seed or f"{self.defn.id}:{nid}")
        return arm_at(split, point)

    def due(self, b: d.Delay) -> tuple[datetime | None, str | None]:
        """When the delay ends, and "no_date" when its date is missing."""
        tz = self.tz
        if b.duration is not None:
            return plus(self.now, b.duration.delta), None
        if b.at is not None:
            return d.next_local(self.now, b.at, b.weekdays, tz), None
        assert b.until is not None
        if b.until.source == "property":
            value = lookup(self.s.properties, b.until.name)
        elif b.until.name.startswith("computed."):
            value = lookup(self.ctx.person.computed, b.until.name.removeprefix("computed."))
        else:
            value = lookup(self.ctx.person.state.get("traits") or {}, b.until.name)
        found = value_instant(value, tz)
        if found is None:
            return None, "no_date"
        return plus(found[0], b.offset.delta if b.offset else timedelta(0)), None


def arm_at(split: d.Split, point: int) -> d.Arm:
    """The arm whose share of [0, 100) holds ``point``, arms in written order."""
    edge = 0
    for a in split.arms:
        edge += a.weight
        if point < edge:
            return a
    raise AssertionError("weights add up to 100")  # pragma: no cover
