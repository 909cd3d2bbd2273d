"""The durable runtime: the one interpreter (``interpreter``, through ``dispatch.offer``) run on the store.

Nothing here decides anything about a journey. The runtime turns what happened into the interpreter's inputs,
gives them to it one person at a time, and carries out the commands it answers with, **in the transaction that
stores the new state**: instances, timers, held inputs and records are rows (``journeys.store``), messages go to
the outbox on the same connection (``outbox.enqueue_in``) with the interpreter's idempotency key
(``<instance>:<step>``). A crash rolls everything back together and the input is given again: the same state
gives the same commands and the same keys, so a step is never lost nor sent twice.

Where inputs come from:

- the change feed (consumer ``journeys``): an event folded into the profile, a segment entered or exited, a
  status of a message Chorus sent; a merge moves the merged person's instances to the survivor;
- the timer task (``journey_timers``): timers due now, claimed with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
  any number of workers share them and a million waiting people cost no worker memory;
- ``schedule.py`` (scheduled entries and broadcasts) and ``start_person`` (the API entry): a ``Start``;
- the sweep task (``journey_sweep``): on resume, the inputs held while the journey was paused, in their own time
  order; on stop or archive, every live instance is told (it exits, its timers are cancelled, nothing more is
  sent).

One person's inputs are applied in order by one transaction at a time: every path locks her profile row first
(``profiles.views.lock_people``, the lock segments take too), then reads her instances.

Side effects other than timers and records are **registered** (:func:`effect`): ``journeys.effects`` adds the
message, trait, list, audience and webhook steps, each writing with the caller's connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise
from chorus.journeys import definition as d
from chorus.journeys import dispatch, store
from chorus.journeys import interpreter as j
from chorus.messaging.consent import identity_fields
from chorus.profiles import feed, views
from chorus.segments import load
from chorus.segments.person import Event, Person
from chorus.store import bulk
from chorus.store.tables import events
from chorus.timeutil import iso, utcnow

log = logging.getLogger("chorus.journeys")

CONSUMER = "journeys"
CAUSES = frozenset({"event", "segment", "message", "merge"})  # what can be an input, or move one's instances
TIMELINE = {"entered": "Journey Entered", "step": "Journey Step", "converted": "Journey Converted",
            "exited": "Journey Exited"}  # fmt: skip


def now() -> datetime:
    """The runtime's clock (tests replace it, as ``segments.engine.now``)."""
    return utcnow()


def wants(c: feed.Change) -> bool:
    """The feed records for the journeys consumer only the changes that can be an input (or a merge). A message
    status matters to the journey that sent the message (a wait for its open or click); those of other messages (an
    API send) are left out, so they cost the journeys nothing. A goal or exit *rule* that reads message statuses
    is then checked at her next input (the simulator, which has no statuses, does the same)."""
    if c.cause == "message":
        return bool((c.detail or {}).get("journey_id"))
    return c.cause in CAUSES


# -- registered effects ------------------------------------------------------------------------------------------------
Effect = Callable[["PersonRun", j.State, j.Command], None]
_EFFECTS: dict[type, Effect] = {}


def effect(kind: type) -> Callable[[Effect], Effect]:
    """Register how a command of ``kind`` is carried out: ``handler(run, state, command)``, on ``run.conn``."""

    def add(handler: Effect) -> Effect:
        if kind in _EFFECTS:
            raise ValueError(f"an effect for {kind.__name__} is registered twice")
        _EFFECTS[kind] = handler
        return handler

    return add


def supported(defn: d.Definition) -> None:
    """Refuse to publish a journey with a step this runtime cannot carry out (an effect not registered)."""
    from chorus import registry
    from chorus.errors import ChorusError

    registry.installed()  # every installed package has registered its effects (a CLI process loads nothing else)

    need = {d.SendMessage: j.Send, d.UpdateTrait: j.UpdateTrait, d.ListStep: j.ListChange,
            d.AudienceStep: j.AudienceChange, d.WebhookStep: j.Webhook}  # fmt: skip
    for n in defn.nodes:
        cmd = need.get(type(n.body))
        if cmd is not None and cmd not in _EFFECTS:
            raise ChorusError(f"{n.type} steps cannot run here: no effect is installed for them",
                              field=f"nodes.{n.id}.type")  # fmt: skip


# -- one workspace's journeys, read once per transaction ---------------------------------------------------------------
class Journeys:
    """The journeys of one workspace as one transaction sees them, and their versions parsed on demand."""

    def __init__(self, conn: Connection, ws_id: str):
        self.conn = conn
        self.ws = ws_api.get(conn, ws_id)
        # shared locks on PostgreSQL: a status change waits for the transitions reading the old one (store)
        self.all = store.all_journeys(conn, ws_id, share=True)
        self.topics = (self.ws.settings.get("messaging") or {}).get("topics")
        self._defs: dict[tuple[str, int], d.Definition] = {}
        self._links = None

    def defn(self, jid: str, version: int) -> d.Definition:
        key = (jid, version)
        if key not in self._defs:
            self._defs[key] = store.definition(self.conn, self.ws.id, jid, version)
        return self._defs[key]

    @property
    def links(self):
        if self._links is None:
            from chorus.messaging import links

            self._links = links.for_store(self.conn)
        return self._links

    def may_enter(self, jid: str, inp: j.Input) -> bool:
        """Can ``inp`` be an entry to the journey's current version (a cheap test before the interpreter's)?"""
        jr = self.all[jid]
        if jr.status in ("stopped", "archived") or isinstance(inp, j.TimerFired | j.MessageEvent):
            return False
        e = self.defn(jid, jr.version).entry
        if isinstance(e, d.EventEntry):
            sel = e.match.selection
            return isinstance(inp, Event) and (sel.event is None or sel.event == inp.name)
        if isinstance(e, d.SegmentEntry):
            return isinstance(inp, j.SegmentChanged) and inp.segment == e.segment and inp.change == "entered"
        return isinstance(inp, j.Start)


def journeys_of(conn: Connection, ws_id: str) -> Journeys:
    """Per transaction and workspace: a journey published or paused in this transaction is seen by the next call
    only after ``forget_parsed``."""
    txn = conn.get_transaction()
    cached = conn.info.get("chorus_journeys")
    if cached is not None and cached[0] is txn and ws_id in cached[1]:
        return cached[1][ws_id]
    js = Journeys(conn, ws_id)
    if txn is not None:
        if cached is None or cached[0] is not txn:
            cached = (txn, {})
            conn.info["chorus_journeys"] = cached
        cached[1][ws_id] = js
    return js


def forget_parsed(conn: Connection) -> None:
    conn.info.pop("chorus_journeys", None)


# -- one person --------------------------------------------------------------------------------------------------------
@dataclass
class PersonRun:
    """One person's inputs given to the interpreter, one after the other, and their commands carried out.

    The caller has locked her profile row. ``give`` may be called many times; ``flush`` writes the instances,
    records and timeline events at the end."""

    conn: Connection
    js: Journeys
    person: Person
    now: datetime
    instances: list[j.State] = field(default_factory=list)
    given: list[Event] = field(default_factory=list)  # the events given so far (entries read those after them)
    _dirty: dict[str, bool] = field(default_factory=dict)  # instance id -> new
    _records: list[dict] = field(default_factory=list)
    _timeline: list[Stored] = field(default_factory=list)
    _ident: dict | None = None
    _timers: dict[str, tuple] | None = None  # her live timers: key -> (due, journey, instance), once read
    _seen: dict[tuple, int] = field(default_factory=dict)  # timeline records per (instance, step, kind, node)
    _unseen: set[str] | None = None  # message ids of her events not handed to the journeys yet
    _held: dict[str, bool] = field(default_factory=dict)  # journey -> she has inputs held for it
    held_behind: set[str] = field(default_factory=set)  # journeys an input was held for, behind a resume
    replaying: set[str] = field(default_factory=set)  # journeys whose held inputs this run gives again
    unreplayed: dict[str, set[str]] = field(default_factory=dict)  # journey -> ids of held events not given yet

    @property
    def ws(self) -> str:
        return self.js.ws.id

    def give(self, inp: j.Input, *, only: Iterable[str] | None = None) -> list[dispatch.Outcome]:
        """Offer ``inp`` to the journeys it can concern (``only``: these alone, a start or a sweep)."""
        out: list[dispatch.Outcome] = []
        wanted = set(only) if only is not None else None
        for jid, jr in self.js.all.items():
            if wanted is not None and jid not in wanted:
                continue
            mine = [s for s in self.instances if s.journey_id == jid]
            if isinstance(inp, j.TimerFired):
                if not any(s.instance_id == inp.instance_id for s in mine):
                    continue
            elif not any(s.status != "exited" for s in mine) and not self.js.may_enter(jid, inp):
                continue
            if jr.status == "active" and jr.sweep and jid not in self.replaying and self.has_held(jid):
                # resumed, and her inputs held while paused are not given again yet: this one waits behind them,
                # so that her inputs are applied in their time order
                store.hold(self.conn, self.ws, jid, self.person.id, inp)
                self.held_behind.add(jid)
                continue
            versions = {v: self.js.defn(jid, v) for v in {s.version for s in mine if s.status != "exited"}}
            if jr.status not in ("stopped", "archived"):
                versions[jr.version] = self.js.defn(jid, jr.version)
            entering = self.js.may_enter(jid, inp) or any(s.status == "new" for s in mine)
            outcomes = dispatch.offer(
                versions, jr.version, self.person, mine, inp, self.now, status=jr.interpreter_status,
                topics=self.js.topics, before_entry=self.before_entry(jid) if entering else (),
            )  # fmt: skip
            if any(o.held for o in outcomes):  # paused: the input is kept once, for all her instances of it
                store.hold(self.conn, self.ws, jid, self.person.id, inp)
            for o in outcomes:
                self._keep(jid, o)
            out += outcomes
        if isinstance(inp, Event):
            self.given.append(inp)
            for ids in self.unreplayed.values():
                ids.discard(inp.id)
        return out

    def has_held(self, jid: str) -> bool:
        if jid not in self._held:
            self._held[jid] = store.has_held(self.conn, self.ws, jid, self.person.id)
        return self._held[jid]

    def replay(self, jid: str, held: Sequence[j.Input]) -> None:
        """Give the journey's held inputs again (a resume), in the order given (their time order)."""
        self.replaying.add(jid)
        self.unreplayed[jid] = {i.id for i in held if isinstance(i, Event)}
        for inp in held:
            self.give(inp, only=[jid])
        self.replaying.discard(jid)
        self.unreplayed.pop(jid, None)

    def before_entry(self, jid: str) -> tuple[Event, ...]:
        """The person's events given to the journey before the input at hand: those stored whose feed change the
        consumer has handled, and those given in this run. Not the ones still waiting in the feed, nor those held
        for this journey while it was paused and not given again yet (both come as inputs, later): an entry checks
        its goal and exit criteria against what happened before it was processed, as the simulator does, never
        twice."""
        if self._unseen is None:
            seqs = sorted(feed.pending_events(self.conn, CONSUMER, self.ws, self.person.id))
            ids: set[str] = set()
            for i in range(0, len(seqs), 5000):
                ids.update(str(m) for m in self.conn.execute(sa.select(events.c.message_id).where(
                    bulk.in_(events.c.seq, seqs[i : i + 5000], self.conn.dialect.name))).scalars())  # fmt: skip
            self._unseen = ids
        given = {e.id for e in self.given}
        later = self.unreplayed.get(jid, set())
        return tuple(e for e in self.person.events if (e.id not in self._unseen or e.id in given) and e.id not in later)

    def _keep(self, jid: str, o: dispatch.Outcome) -> None:
        s = o.state
        if o.held:
            # unapplied; an instance admitted while paused is kept as admitted ("new"): it counts for re-entry as
            # the simulator's does, and begins when its input is given again on resume
            if o.new:
                self.instances.append(s)
                self._dirty[s.instance_id] = True
            return
        if o.new:
            self.instances.append(s)
            self._dirty[s.instance_id] = True
        else:
            i = next(n for n, x in enumerate(self.instances) if x.instance_id == s.instance_id)
            self.instances[i] = s
            self._dirty.setdefault(s.instance_id, False)
        timers, cancel = [], []
        for c in o.commands:
            if isinstance(c, j.SetTimer):
                timers.append({"key": c.key, "journey_id": jid, "instance_id": s.instance_id,
                               "profile_id": self.person.id, "due_at": c.at})  # fmt: skip
            elif isinstance(c, j.CancelTimer):
                cancel.append(c.key)
            elif isinstance(c, j.Record):
                self._record(s, c)
            elif isinstance(c, j.EFFECTS):
                handler = _EFFECTS.get(type(c))
                if handler is None:  # publish refuses such a journey (``supported``); one published before
                    raise RuntimeError(f"no effect is installed for {type(c).__name__}")
                handler(self, s, c)
        store.cancel_timers(self.conn, self.ws, cancel)
        store.set_timers(self.conn, self.ws, timers)
        if self._timers is not None:
            for k in cancel:
                self._timers.pop(k, None)
            for t in timers:
                self._timers[t["key"]] = (t["due_at"], jid, s.instance_id)

    def fire_due(self, until: datetime) -> int:
        """Fire her timers due at or before ``until``, earliest first (then by key), each deleted and given as its
        input: before an input of that time (the consumer), or up to now (the timer task). Her inputs are then
        applied in their time order whichever task brought them, as the simulator applies them."""
        if self._timers is None:
            self._timers = {r.key: (r.due_at, r.journey_id, r.instance_id)
                            for r in store.timers_of(self.conn, self.ws, [self.person.id])}  # fmt: skip
        n = 0
        while True:
            ready = [(due, key) for key, (due, _, _) in self._timers.items() if due <= until]
            if not ready:
                return n
            due, key = min(ready)
            _, jid, iid = self._timers.pop(key)
            store.cancel_timers(self.conn, self.ws, [key])
            if jid in self.js.all:
                self.give(j.TimerFired(iid, key, due) if iid else j.Start(store.start_id(key), due), only=[jid])
            n += 1

    def _record(self, s: j.State, c: j.Record) -> None:
        arm = next((s.arms[k] for k in sorted(s.arms)), None)
        self._records.append({"journey_id": s.journey_id, "version": s.version, "instance_id": s.instance_id,
                              "profile_id": self.person.id, "kind": c.kind, "node": c.node, "branch": c.branch,
                              "arm": arm, "at": c.at, "detail": (c.detail or None) and c.detail[:200]})  # fmt: skip
        # a split's assignment (a step by an arm, or a holdout's wait) is the person's variant: the uplift report
        # reads it from her timeline (analytics.uplift)
        assigned = c.kind in ("step", "waiting") and c.node in s.arms and s.arms[c.node] == c.branch
        name = TIMELINE.get(c.kind) or ("Journey Step" if assigned else None)
        if name is None:
            return
        if self._ident is None:
            view = views.get_profiles(self.conn, self.ws, [self.person.id], self.js.ws.identity).get(self.person.id)
            self._ident = identity_fields(view) if view else {}
        if not self._ident:
            return
        props = {"journey_id": s.journey_id, "version": s.version, "instance_id": s.instance_id, "node": c.node}
        if c.branch is not None:
            props["branch"] = c.branch
        if c.detail is not None:
            props["reason" if c.kind == "exited" else "detail"] = c.detail
        if assigned:
            props["arm"] = c.branch
            props["variant"] = self._variant(s, c.node, c.branch)
        place = (s.instance_id, s.step, c.kind, c.node)
        n = self._seen[place] = self._seen.get(place, -1) + 1
        raw = {
            **{k: v for k, v in self._ident.items() if k != "context"},
            "type": "track", "event": name, "properties": props,
            "context": {**self._ident.get("context", {}), "channel": "internal", "direction": "outbound"},
            # the step number and the record's place in it: a transition computed again makes the same ids
            "messageId": f"chorus-journey-{s.instance_id}-{s.step}-{c.kind}-{c.node}-{n}"[:200],
            "timestamp": iso(c.at),
        }  # fmt: skip
        ev = normalise(raw, received_at=self.now, source_kind="internal", require_ids=False)
        if isinstance(ev, Stored):
            self._timeline.append(ev)

    def _variant(self, s: j.State, node: str, arm: str) -> str:
        """What the uplift report reads (``variant``): ``holdout`` for the arm the split holds out, whatever its
        name; a treated arm's name, unless that name reads as a holdout there (``control``), then ``treated:<name>``."""
        body = self.js.defn(s.journey_id, s.version).node(node).body
        if isinstance(body, d.Split) and any(a.name == arm and a.holdout for a in body.arms):
            return "holdout"
        return f"treated:{arm}" if arm.strip().lower() in d.HOLDOUT_VARIANTS else arm

    def error(self, s: j.State, c: j.Command, exc: Exception) -> None:
        """A side effect refused (its request names something deleted since publishing): recorded on the journey
        (node statistics show it), and the person goes on."""
        msg = getattr(exc, "message", None) or str(exc)
        log.warning("journey %s: %s of instance %s refused: %s", s.journey_id, type(c).__name__, s.instance_id, msg)
        self._record(s, j.Record("error", getattr(c, "node", None) or s.node, None, self.now, msg[:200]))

    def flush(self) -> None:
        store.save_instances(self.conn, self.ws, [(s, self._dirty[s.instance_id]) for s in self.instances
                                                  if s.instance_id in self._dirty], self.now)  # fmt: skip
        store.add_records(self.conn, self.ws, self._records)
        if self._timeline:
            source = ws_api.internal_source(self.conn, self.ws, "internal", "chorus-journeys")
            ingest.store(self.conn, source, self._timeline, [], self.now,
                         {ev.message_id: self.person.id for ev in self._timeline})  # fmt: skip
        self._dirty, self._records, self._timeline = {}, [], []


def person_run(conn: Connection, js: Journeys, pid: str, at: datetime) -> PersonRun | None:
    """Her run, or None when ``pid`` is not a profile (merged away, erased). The caller locked her."""
    person = load.people(conn, js.ws.id, [pid], js.ws.identity).get(pid)
    if person is None:
        return None
    return PersonRun(conn, js, person, at, store.instances_of(conn, js.ws.id, [pid])[pid])


# -- the change feed ---------------------------------------------------------------------------------------------------
def inputs_of(conn: Connection, changes: Sequence[feed.Delivered]) -> list[j.Input]:
    """The interpreter's inputs for these changes, in order (a change that is none gives nothing)."""
    seqs = [c.event_seq for c in changes if c.cause == "event" and c.event_seq is not None]
    payloads = {}
    for i in range(0, len(seqs), 5000):
        part = seqs[i : i + 5000]
        payloads.update(conn.execute(sa.select(events.c.seq, events.c.payload).where(
            bulk.in_(events.c.seq, part, conn.dialect.name))).all())  # fmt: skip
    out: list[j.Input] = []
    for c in changes:
        if c.cause == "event" and c.event_seq in payloads:
            out.append(Event.from_payload(payloads[c.event_seq]))
        elif c.cause == "segment" and c.detail.get("segment") and c.detail.get("change") in ("entered", "exited"):
            out.append(j.SegmentChanged(c.detail["segment"], c.detail["change"], c.at, str(c.seq)))
        elif c.cause == "message" and c.detail.get("status") and c.detail.get("message_id"):
            out.append(j.MessageEvent(c.detail["status"], c.detail["message_id"], c.detail.get("journey_id"),
                                      c.detail.get("idempotency_key"), c.at, c.detail.get("channel")))  # fmt: skip
    return out


class Consumer:
    """The ``journeys`` change-feed consumer: each person's changes become inputs, given in order."""

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self.clock = clock

    def __call__(self, conn: Connection, ws: str, pid: str, changes: list[feed.Delivered]) -> None:
        at = (self.clock or now)()
        js = journeys_of(conn, ws)
        if not js.all:
            return
        for c in changes:  # a merge: the merged person's journeys go on as the survivor's
            if c.cause == "merge" and c.target_id and c.profile_id != c.target_id:
                store.repoint(conn, ws, c.profile_id, c.target_id)
        if not views.lock_people(conn, ws, [pid]):
            return
        inputs = inputs_of(conn, changes)
        if not inputs:
            return
        run = person_run(conn, js, pid, at)
        if run is None:
            return
        for inp in inputs:
            run.fire_due(min(j.input_time(inp), at))  # her timers due before it come first
            run.give(inp)
        run.flush()


# -- timers ------------------------------------------------------------------------------------------------------------
def due(engine: Engine, limit: int = 500, clock: Callable[[], datetime] | None = None) -> int:
    """Fire the timers due now: one transaction; per person (locked, skipping those another worker holds), her due
    timers in due order. A scheduled start (no instance yet) is a ``Start`` of its journey. A person whose
    transition fails is rolled back alone and her timers tried again a minute later."""
    at = (clock or now)()
    done = 0
    with engine.begin() as conn:
        rows = store.due_timers(conn, at, limit)
        by_person: dict[tuple[str, str], list] = {}
        for r in rows:
            by_person.setdefault((r.workspace_id, r.profile_id), []).append(r)
        by_ws: dict[str, list[str]] = {}
        for ws, pid in by_person:
            by_ws.setdefault(ws, []).append(pid)
        for ws in sorted(by_ws):
            pids = sorted(by_ws[ws])
            js = journeys_of(conn, ws)
            # changes of hers still waiting in the feed may be stamped before these timers: the consumer gives
            # them first and fires her timers due before each (fire_due); her timers wait for it
            busy = feed.pending_people(conn, CONSUMER, ws, pids)
            locked = set(views.lock_people(conn, ws, [p for p in pids if p not in busy], skip_locked=True))
            for pid in pids:
                keys = [r.key for r in by_person[(ws, pid)]]
                if pid in busy:
                    continue
                if pid not in locked:
                    if not _is_profile(conn, ws, pid):  # merged away (the consumer moves them) or gone: later
                        _later(conn, ws, keys, at)
                    continue  # another worker holds her: still due at the next pass
                try:
                    with conn.begin_nested():
                        run = person_run(conn, js, pid, at)
                        if run is None:
                            store.cancel_timers(conn, ws, keys)
                        else:
                            done += run.fire_due(at)
                            run.flush()
                except Exception as exc:  # noqa: BLE001 - one person must not stop time for everybody
                    feed.reraise_transient(exc)
                    log.exception("journey timers of profile %s failed; tried again in a minute", pid)
                    _later(conn, ws, keys, at)
    return done


def _is_profile(conn: Connection, ws: str, pid: str) -> bool:
    try:
        return views.resolve_id(conn, ws, pid) == pid
    except Exception:  # noqa: BLE001 - NotFound: erased
        return False


def _later(conn: Connection, ws: str, keys: list[str], at: datetime) -> None:
    from chorus.store.tables import journey_timers

    conn.execute(journey_timers.update().where(journey_timers.c.workspace_id == ws, bulk.in_(
        journey_timers.c.key, keys, conn.dialect.name)).values(due_at=at + timedelta(minutes=1)))  # fmt: skip


# -- entry by a call ---------------------------------------------------------------------------------------------------
def start_person(conn: Connection, ws: str, jid: str, pid: str, start: j.Start, at: datetime) -> dict:
    """Start ``pid`` in an API-entered journey (the caller checked the journey's entry). The answer says whether she
    entered, and why not (the interpreter's reason): held while the journey is paused."""
    js = journeys_of(conn, ws)
    views.lock_people(conn, ws, [pid])
    run = person_run(conn, js, pid, at)
    if run is None:
        from chorus.errors import NotFound

        raise NotFound(f"profile {pid} not found", field="profile_id")
    before = {s.instance_id for s in run.instances}
    outcomes = run.give(start, only=[jid])
    run.flush()
    if jid in run.held_behind:
        return {"entered": False, "held": True, "reason": "the journey is resuming: the start is kept and runs after "
                "her inputs held while it was paused"}  # fmt: skip
    for o in outcomes:
        if o.new and o.held:
            return {"entered": False, "held": True, "instance_id": o.state.instance_id,
                    "reason": "the journey is paused: the start is kept and runs on resume"}  # fmt: skip
        if o.new and o.state.instance_id not in before:
            return {"entered": True, "instance_id": o.state.instance_id, "status": o.state.status,
                    "node": o.state.node}  # fmt: skip
    jr = js.all[jid]
    mine = [s for s in run.instances if s.journey_id == jid]
    adm = j.enter(js.defn(jid, jr.version), run.person, start, mine, at, version=jr.version,
                  status=jr.interpreter_status)  # fmt: skip
    return {
        "entered": False,
        "reason": adm.reason if adm.state is None else "this start has entered already",
        **({"instance_id": adm.state.instance_id} if adm.state is not None else {}),
    }


# -- resume, stop ------------------------------------------------------------------------------------------------------
def sweep(engine: Engine, limit: int = 200, clock: Callable[[], datetime] | None = None) -> int:
    """The work a status change leaves: after a resume, each person's held inputs are given again in their time
    order; after a stop or an archive, every live instance exits (timers cancelled) and held inputs are dropped.
    One batch of people per journey and pass; the flag is cleared when none is left."""
    at = (clock or now)()
    done = 0
    with engine.connect() as probe:
        todo = store.to_sweep(probe)
    for ws, jid in todo:
        with engine.begin() as conn:
            # the journey's row first, for update (as control and publish take it), then its people: the order
            # every transition keeps (journeys shared, then people), so none waits for a lock the other holds
            jr = store.get(conn, ws, jid, lock=True)
            if not jr.sweep:
                continue
            js = journeys_of(conn, ws)
            if jr.status == "active":
                pids = store.held_people(conn, ws, jid, limit)
                for pid in views.lock_people(conn, ws, pids):
                    held = store.take_held(conn, ws, jid, pid)
                    done += len(held)
                    try:
                        with conn.begin_nested():  # one person's failure must not hold up everybody's resume
                            _replay(conn, js, jid, pid, held, at)
                    except Exception as exc:  # noqa: BLE001 - then her inputs one by one, below
                        feed.reraise_transient(exc)
                        log.warning("resume of journey %s failed for profile %s; her held inputs one by one: %s",
                                    jid, pid, exc)  # fmt: skip
                        for inp in held:
                            try:
                                with conn.begin_nested():
                                    _replay(conn, js, jid, pid, [inp], at)
                            except Exception as exc:  # noqa: BLE001 - a poisoned input is dropped, loudly
                                feed.reraise_transient(exc)
                                log.exception("journey %s: a held input of profile %s failed on resume; dropped",
                                              jid, pid)  # fmt: skip
                gone = set(pids) - set(views.lock_people(conn, ws, pids)) if pids else set()
                for pid in gone:  # not profiles any more: their held inputs have nobody to go to
                    store.take_held(conn, ws, jid, pid)
                if len(pids) < limit:
                    store.swept(conn, ws, jid)
            elif jr.status in ("stopped", "archived"):
                store.drop_held(conn, ws, jid)
                live = store.live_instances(conn, ws, jid, limit)
                pids = sorted({p for p, _ in live})
                for pid in views.lock_people(conn, ws, pids):
                    try:
                        with conn.begin_nested():
                            run = person_run(conn, js, pid, at)
                            if run is not None:
                                run.give(j.Start(f"{jr.status}:{iso(jr.updated_at)}", at), only=[jid])
                                run.flush()
                    except Exception as exc:  # noqa: BLE001 - she is ended without the interpreter, loudly
                        feed.reraise_transient(exc)
                        log.exception("journey %s: stopping profile %s failed; her instances are ended", jid, pid)
                        store.end_instances(conn, ws, jid, pid, at, f"journey {jr.status}")
                    done += 1
                stale = set(pids) - set(views.lock_people(conn, ws, pids)) if pids else set()
                for pid in stale:  # their profile is gone: the instances cannot run any more
                    store.end_instances(conn, ws, jid, pid, at, f"journey {jr.status}")
                if len(live) < limit:
                    store.swept(conn, ws, jid)
            else:
                store.swept(conn, ws, jid)
    return done


def _replay(conn: Connection, js: Journeys, jid: str, pid: str, held: Sequence[j.Input], at: datetime) -> None:
    run = person_run(conn, js, pid, at)
    if run is not None:
        run.replay(jid, held)
        run.flush()


def _forget_on_rollback(conn: Connection, name: str, context) -> None:
    """A savepoint rolled back released the row locks taken inside it (PostgreSQL), the journeys' shared locks
    included: what was read under them is read again (and locked again) by the next transition."""
    forget_parsed(conn)


sa.event.listen(Engine, "rollback_savepoint", _forget_on_rollback)


class TimerTask:
    def __init__(self, engine: Engine, options=None):
        self.engine = engine

    def run_once(self) -> int:
        return due(self.engine)

    def close(self) -> None:
        pass


class SweepTask:
    def __init__(self, engine: Engine, options=None):
        self.engine = engine

    def run_once(self) -> int:
        return sweep(self.engine)

    def close(self) -> None:
        pass
