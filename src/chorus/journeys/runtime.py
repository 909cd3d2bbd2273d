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

import copy
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise_internal
from chorus.identity.identifiers import event_anchor
from chorus.identity.resolver import state_as_of
from chorus.journeys import definition as d
from chorus.journeys import dispatch, store
from chorus.journeys import interpreter as j
from chorus.messaging import outbox
from chorus.messaging.consent import identity_fields
from chorus.profiles import feed, views
from chorus.profiles import state as pstate
from chorus.segments import load
from chorus.segments.needs import Needs, beyond
from chorus.segments.needs import needs as needs_of
from chorus.segments.person import Event, Person
from chorus.segments.rules import Node as Rule
from chorus.segments.summary import Summary
from chorus.store import bulk
from chorus.store.db import read_only
from chorus.store.tables import events, journey_timers
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
        detail = c.detail or {}
        # "queued" (and any status no wait names) cannot be an input: its change would cost a transition for nothing
        return bool(detail.get("journey_id")) and detail.get("status") in d.MESSAGE_STATUSES
    return c.cause in CAUSES


# -- registered effects ------------------------------------------------------------------------------------------------
Effect = Callable[["PersonRun", j.State, j.Command], None]
Flush = Callable[["Claim", list], None]
_EFFECTS: dict[type, Effect] = {}
_FLUSHES: dict[str, Flush] = {}


def _registrar(table: dict, key, what: str) -> Callable:
    def add(fn):
        if key in table:
            raise ValueError(f"{what} is registered twice")
        table[key] = fn
        return fn

    return add


def effect(kind: type) -> Callable[[Effect], Effect]:
    """Register how a command of ``kind`` is carried out: ``handler(run, state, command)``, on ``run.conn``. A
    handler may write at once, or put its work aside (``run.claim.defer(name, item)``) for a flush registered with
    :func:`flush`, which does the work of every person of the claim in one go (the messages: one outbox batch)."""
    return _registrar(_EFFECTS, kind, f"an effect for {kind.__name__}")


def flush(name: str) -> Callable[[Flush], Flush]:
    """Register the flush of the work put aside under ``name``: ``flusher(claim, items)``, before the claim writes
    its instances and records (a flusher may still record, e.g. an error on a person's journey). A claim's flushes
    run in the order they were registered."""
    return _registrar(_FLUSHES, name, f"a flush for {name}")


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
        # shared locks on PostgreSQL: a status change waits for the transitions reading the old one (store); the
        # current versions' definitions come with them (parsed when asked for)
        self._texts: dict[tuple[str, int], str] = {}
        self.all = store.all_journeys(conn, ws_id, share=True, texts=self._texts)
        self.topics = (self.ws.settings.get("messaging") or {}).get("topics")
        self._defs: dict[tuple[str, int], d.Definition] = {}
        self._links = None
        self._hearing: Hearing | None = None
        self._needs: dict[tuple[frozenset, datetime], Needs | None] = {}
        self._draws: bool | None = None

    def defn(self, jid: str, version: int) -> d.Definition:
        key = (jid, version)
        if key not in self._defs:
            text = self._texts.get(key)
            self._defs[key] = (store.definition(self.conn, self.ws.id, jid, version) if text is None
                               else store.definition_from_text(text))  # fmt: skip
        return self._defs[key]

    @property
    def links(self):
        if self._links is None:
            from chorus.messaging import links

            self._links = links.for_store(self.conn)
        return self._links

    def hears(self, inp: j.Input) -> bool:
        """Can ``inp`` change anything for anybody in this workspace, in any version ever published? An event only
        if an entry, a wait, a goal or an exit names it (or selects events without a name); a message status only
        if a wait names it; a segment change only if an entry, a wait, a goal or an exit names the segment. A goal
        or exit that is a rule is evaluated at every input (and may read anything): then every input is heard.
        What nobody hears is handled without loading the person and her instances: every message a journey sends
        comes back as its statuses and their timeline events, which cost her an empty transition each before."""
        if self._hearing is None:
            if any(jr.status == "paused" or jr.sweep for jr in self.all.values()):
                # a paused journey holds its people's inputs for its version at resume, which may be published
                # during the pause and hear more: while one is paused (or its resume is being given), all are given
                self._hearing = Hearing(everything=True)
            else:
                self._hearing = Hearing.union(
                    _heard_by(self.ws.id, key, self.defn) for key in store.version_keys(self.conn, self.ws.id))
        return self._hearing.hears(inp)

    def needs(self, keys: Iterable[tuple[str, int]], at: datetime) -> Needs | None:
        """What the journey versions ``keys`` (journey id, version) can read of a person when evaluated at ``at`` or
        later (:class:`Reads`): ``load.people``'s ``needs``, or None for the whole person (a version this code cannot
        read). Each version's reads are parsed once per process (``_READ``); their union at an instant once per
        transaction."""
        key = (frozenset(keys), at)
        if key not in self._needs:
            reads = Reads.union(_read_by(self.ws.id, k, self.defn) for k in sorted(key[0]))
            self._needs[key] = reads.at(at)
        return self._needs[key]

    def runnable(self, instances: Iterable[j.State]) -> set[tuple[str, int]]:
        """The versions that inputs may run for people with these ``instances``: each journey's current version
        (unless stopped or archived: nothing enters one, and its instances exit without evaluating anything), and
        the versions of the live instances."""
        keys = {(jid, jr.version) for jid, jr in self.all.items() if jr.status not in ("stopped", "archived")}
        keys |= {(s.journey_id, s.version) for s in instances if s.status != "exited" and s.journey_id in self.all}
        return keys

    @property
    def draws_by_identifier(self) -> bool:
        """Does a journey people may enter split by identifier (its entries keep their event's anchor)?"""
        if self._draws is None:
            try:
                self._draws = any(self.defn(jid, jr.version).draws_by_identifier for jid, jr in self.all.items()
                                  if jr.status not in ("stopped", "archived"))  # fmt: skip
            except Exception:  # noqa: BLE001 - a version this code cannot read: anchor the events, to be safe
                self._draws = True
        return self._draws

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


@dataclass(frozen=True)
class Hearing:
    """What inputs a journey version can use (:meth:`Journeys.hears`)."""

    events: frozenset[str] = frozenset()  # event names an entry, wait, goal or exit selects
    any_event: bool = False  # a selection without an event name (by type, channel or properties)
    statuses: frozenset[str] = frozenset()  # message statuses a wait names
    segments: frozenset[str] = frozenset()  # segments an entry, wait, goal or exit names
    everything: bool = False  # a goal or exit rule: evaluated at every input

    @staticmethod
    def of(defn: d.Definition) -> Hearing:
        triggers: list = [b.on for n in defn.nodes if isinstance(n.body, d.Wait) for b in n.body.branches]
        triggers += [*defn.exits, *([defn.goal.criterion] if defn.goal else [])]
        if isinstance(defn.entry, d.EventEntry):
            triggers.append(defn.entry.match)
        segments = {t.segment for t in triggers if isinstance(t, d.SegmentChange)}
        if isinstance(defn.entry, d.SegmentEntry):
            segments.add(defn.entry.segment)
        names = [t.selection.event for t in triggers if isinstance(t, d.EventMatch)]
        return Hearing(frozenset(n for n in names if n is not None), None in names,
                       frozenset(st for t in triggers if isinstance(t, d.MessageMatch) for st in t.statuses),
                       frozenset(segments), any(isinstance(t, d.RuleMatch) for t in triggers))  # fmt: skip

    @staticmethod
    def union(parts) -> Hearing:
        parts = list(parts)
        return Hearing(frozenset().union(*(p.events for p in parts)), any(p.any_event for p in parts),
                       frozenset().union(*(p.statuses for p in parts)), frozenset().union(*(p.segments for p in parts)),
                       any(p.everything for p in parts))  # fmt: skip

    def hears(self, inp: j.Input) -> bool:
        if self.everything:
            return True
        if isinstance(inp, j.MessageEvent):
            return inp.status in self.statuses
        if isinstance(inp, j.SegmentChanged):
            return inp.segment in self.segments
        if isinstance(inp, Event):
            return self.any_event or inp.name in self.events
        return True  # a start or a timer is always someone's


# (workspace, journey, version) -> what it hears: a published version never changes, so it is parsed for this once
# per process
_HEARD: dict[tuple[str, str, int], Hearing] = {}


def _of_version(cache: dict, make: Callable, whole, ws: str, key: tuple[str, int],
                defn: Callable[[str, int], d.Definition], meaning: str):  # fmt: skip
    """``make(definition)`` of one published version, kept in ``cache`` per process (a version never changes);
    ``whole`` (hear, or read, everything) for a version this code cannot read, not kept: read again next time."""
    got = cache.get((ws, *key))
    if got is None:
        try:
            got = make(defn(*key))
        except Exception:  # noqa: BLE001 - a version this code cannot read must not stop the workspace's journeys
            log.exception("journey %s version %s of workspace %s cannot be read: %s", *key, ws, meaning)
            return whole
        cache[(ws, *key)] = got
    return got


def _heard_by(ws: str, key: tuple[str, int], defn: Callable[[str, int], d.Definition]) -> Hearing:
    return _of_version(_HEARD, Hearing.of, Hearing(everything=True), ws, key, defn, "every input is given")


@dataclass(frozen=True)
class Reads:
    """What a journey version's interpreter can read of a person besides her profile state and memberships (decision
    0043): the segment rules of its goal, exit criteria and condition nodes (evaluated at an input's instant, never
    before it), the events its goal and exit *event* criteria select (an entry checks them against her events from
    the entry on, ``PersonRun.before_entry``), her computed traits (a delay until ``computed.x``) and her anchor
    identifier (a split ``by: identifier``, read with her addresses). Waits and
    entries match the input itself, and a message step's rendering and channel choice are the outbox's own reads.

    :meth:`at` is the ``segments.needs`` of all that for evaluations at ``t`` or later: horizons only move forward
    with ``t`` (a rolling window's ``t - length``; a dated window's start and ``ALL`` do not move), so the needs at
    the earliest instant a claim may evaluate read at least what any later evaluation looks at."""

    rules: tuple[Rule, ...] = ()
    names: frozenset[str] = frozenset()  # event names a goal or exit event criterion selects
    types: frozenset[str] = frozenset()  # event types one selects without a name
    any_event: bool = False  # one selects neither (channels or properties alone)
    computed: bool = False
    identity: bool = False  # a split by identifier: her anchor identifier (read with her addresses)
    everything: bool = False  # a version this code cannot read: the whole person

    @staticmethod
    def of(defn: d.Definition) -> Reads:
        criteria = [*defn.exits, *([defn.goal.criterion] if defn.goal else [])]
        rules = [c.rule for c in criteria if isinstance(c, d.RuleMatch)]
        rules += [n.body.rule for n in defn.nodes if isinstance(n.body, d.Condition) and n.body.rule is not None]
        sels = [c.selection for c in criteria if isinstance(c, d.EventMatch)]
        computed = any(isinstance(n.body, d.Delay) and n.body.until is not None and n.body.until.source != "property"
                       and n.body.until.name.startswith("computed.") for n in defn.nodes)  # fmt: skip
        identity = any(isinstance(n.body, d.Split) and n.body.by == "identifier" for n in defn.nodes)
        return Reads(tuple(rules), frozenset(s.event for s in sels if s.event is not None),
                     frozenset(s.type for s in sels if s.event is None and s.type is not None),
                     any(s.event is None and s.type is None for s in sels), computed, identity)  # fmt: skip

    @staticmethod
    def union(parts: Iterable[Reads]) -> Reads:
        parts = list(parts)
        rules = list(dict.fromkeys(x for p in parts for x in p.rules))  # the same rule in many versions, once
        return Reads(tuple(rules), frozenset().union(*(p.names for p in parts)),
                     frozenset().union(*(p.types for p in parts)), any(p.any_event for p in parts),
                     any(p.computed for p in parts), any(p.identity for p in parts),
                     any(p.everything for p in parts))  # fmt: skip

    def at(self, t: datetime) -> Needs | None:
        """``load.people``'s needs for evaluations at ``t`` or later; None: the whole person."""
        if self.everything:
            return None
        base = needs_of(self.rules, t)
        names, types = dict(base.names), dict(base.types)
        for n in self.names:  # read from t: an entry at t or later checks her events from its entry on
            names[n] = min(names.get(n, t), t)
        for ty in self.types:
            types[ty] = min(types.get(ty, t), t)
        every = base.any_event
        if self.any_event:
            every = t if every is None else min(every, t)
        names, types = beyond(names, types, every)  # what every event is read from on is not asked for again
        # the rules' summarised reads (segments.summary) stay as they are: the journey's own reads are horizons
        return replace(base, names=names, types=types, any_event=every, computed=base.computed or self.computed,
                       addresses=base.addresses or self.identity)


# (workspace, journey, version) -> what it reads: parsed once per process, as _HEARD
_READ: dict[tuple[str, str, int], Reads] = {}


def _read_by(ws: str, key: tuple[str, int], defn: Callable[[str, int], d.Definition]) -> Reads:
    return _of_version(_READ, Reads.of, Reads(everything=True), ws, key, defn, "people are read whole")


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


# -- many people, one transaction --------------------------------------------------------------------------------------
class Claim:
    """The people of one workspace whose inputs one transaction applies (a feed claim, a batch of due timers, a
    broadcast's chunk; or one person), each with her :class:`PersonRun`. What the runs read is read for all of
    them at once, one statement per table however many they are, and what they write (instances, records,
    timers, timeline events, and the effects put aside, such as messages) is written at :meth:`flush`, one
    statement per table: a transition costs about the same few statements whether one person moves or 500.

    The caller has locked the people (``views.lock_people``). A failure anywhere fails the whole claim: callers
    roll it back (a savepoint) and go again one person at a time, each in her own claim."""

    def __init__(self, conn: Connection, js: Journeys, pids: Sequence[str], at: datetime,
                 since: datetime | None = None, *, plan: _Plan | None = None):  # fmt: skip
        self.conn, self.js, self.at = conn, js, at
        self.ws = js.ws.id
        self.pids = list(dict.fromkeys(pids))
        plan = plan or _Plan.read(conn, js, self.pids, at, since)
        self.plan = plan
        # only what the runnable versions can read, at the earliest instant the claim may evaluate (decision 0043)
        people = load.people(conn, self.ws, self.pids, js.ws.identity, needs=plan.need,
                             zone_default=js.ws.timezone)
        found = [p for p in self.pids if p in people]
        self.runs: dict[str, PersonRun] = {p: PersonRun(conn, js, people[p], at, list(plan.instances.get(p, ())),
                                                        claim=self,
                                                        since=plan.since if plan.need is not None else None,
                                                        need=plan.need)
                                           for p in found}  # fmt: skip
        self._timers: dict[str, dict[str, tuple]] = plan.timers
        self._unseen: dict[str, set[str]] | None = None
        self._held: set[tuple[str, str]] | None = None
        self._idents: dict[str, dict] | None = None
        self._set: dict[str, dict] = {}  # timers to set, by key
        self._cancel: set[str] = set()  # timer keys to delete
        self._deferred: dict[str, list] = {}
        self._states: dict[tuple[str, datetime], dict] = {}  # (person, instant) -> her state then (person_at)

    # reads, for every person of the claim (the timers with the plan, before the people; the rest at the first
    # run's need)
    def state_at(self, pid: str, at: datetime) -> dict:
        """Her profile state as it was at ``at`` (``identity.resolver.state_as_of``), once per claim."""
        key = (pid, at)
        if key not in self._states:
            self._states[key] = state_as_of(self.conn, self.js.ws, pid, at)
        return self._states[key]

    def timers(self, pid: str) -> dict[str, tuple]:
        """Her live timers: key -> (due, journey, instance, the time of its input)."""
        return self._timers.setdefault(pid, {})

    def read_back(self, run: PersonRun, t: datetime) -> None:
        """``run`` is given an input that evaluates at ``t``, before the instant her person was read for (a caller
        that did not say, ``since``, how early its inputs go): what the rules can read from ``t`` on, and was not
        read, is added to her person. Only that: an event stored during the claim (a trait step's identify) stays
        out of her person, as it was out of the first read."""
        need = self.js.needs(self.plan.keys, t)
        fresh = load.people(self.conn, self.ws, [run.person.id], self.js.ws.identity, needs=need).get(run.person.id)
        old = run.need
        if fresh is not None and old is not None:
            had = {(e.id, e.at) for e in run.person.events}
            msgs = set(run.person.messages)
            run.person = replace(
                run.person,
                events=tuple(e for e in fresh.events if not old.wants(e) or (e.id, e.at) in had),
                messages=tuple(m for m in fresh.messages
                               if old.messages is None or m.at < old.messages or m in msgs),
            )  # fmt: skip
        run.since, run.need = t, need

    def unseen(self, pid: str) -> set[str]:
        """Message ids of her events whose feed change the consumer has not handled yet."""
        if self._unseen is None:
            self._unseen = {p: set() for p in self.runs}
            seqs = feed.pending_events_of(self.conn, CONSUMER, self.ws, list(self.runs))
            owner = {seq: p for p, mine in seqs.items() for seq in mine}
            order = sorted(owner)
            q = store.prepared(self.conn, "runtime.unseen", lambda d_: sa.select(events.c.seq, events.c.message_id)
                               .where(store.in_param(events.c.seq, "seqs", d_)))  # fmt: skip
            for i in range(0, len(order), 5000):
                part = store.in_value(order[i : i + 5000], self.conn.dialect.name)
                for seq, mid in self.conn.execute(q, {"seqs": part}):
                    self._unseen[owner[seq]].add(str(mid))
        return self._unseen.setdefault(pid, set())

    def held(self, jid: str, pid: str) -> bool:
        """Has she inputs held for the journey (read once: what this claim holds is known to its runs)?"""
        if self._held is None:
            # only a journey being resumed is asked about (PersonRun.give): naming them keeps the read on the
            # table's (workspace, journey, profile) index, which a resume of a big paused journey makes large
            resuming = [j_ for j_, jr in self.js.all.items() if jr.sweep]
            self._held = store.held_pairs(self.conn, self.ws, resuming, list(self.runs))
        return (jid, pid) in self._held

    def ident(self, pid: str) -> dict:
        """Her identifiers as a call about her carries them (``identity_fields``); empty when she has none."""
        if self._idents is None:
            found = views.identifiers_of(self.conn, self.ws, list(self.runs))
            self._idents = {p: identity_fields({"identifiers": found.get(p, {})}) for p in self.runs}
        return self._idents.get(pid) or {}

    # writes, put aside until the flush
    def set_timer(self, row: dict) -> None:
        self._set[row["key"]] = row

    def cancel_timer(self, key: str) -> None:
        self._set.pop(key, None)
        self._cancel.add(key)

    def defer(self, name: str, item) -> None:
        """Work of a registered flush (``flush(name)``), done for the whole claim at once."""
        if name not in _FLUSHES:
            raise RuntimeError(f"no flush is registered for {name}")
        self._deferred.setdefault(name, []).append(item)

    def flush(self) -> None:
        """Write what the runs did since the last flush: the effects put aside first (they may record errors),
        then instances, records, timers and timeline events."""
        while self._deferred:
            # in the order the flushes were registered, not the order the work came: a withdrawal of an instance's
            # messages (an exit) comes after the messages of the claim, which may include one it withdraws
            name = next(n for n in _FLUSHES if n in self._deferred)
            _FLUSHES[name](self, self._deferred.pop(name))
        runs = list(self.runs.values())
        store.save_instances(self.conn, self.ws, [(s, r._dirty[s.instance_id]) for r in runs for s in r.instances
                                                  if s.instance_id in r._dirty], self.at)  # fmt: skip
        store.add_records(self.conn, self.ws, [rec for r in runs for rec in r._records])
        # deleted before set: a key cancelled and set again in one claim is set (as the run did, in its order)
        store.cancel_timers(self.conn, self.ws, sorted(self._cancel))
        store.set_timers(self.conn, self.ws, list(self._set.values()))
        timeline = [(ev, r.person.id) for r in runs for ev in r._timeline]
        if timeline:
            source = ws_api.internal_source(self.conn, self.ws, "internal", "chorus-journeys")
            ingest.store(self.conn, source, [ev for ev, _ in timeline], [], self.at,
                         {ev.message_id: pid for ev, pid in timeline})  # fmt: skip
        for r in runs:
            r._dirty, r._records, r._timeline = {}, [], []
        self._set, self._cancel = {}, set()


@dataclass
class _Plan:
    """What a claim reads before its people, to know what to read of them: their instances and timers, the
    earliest instant it may evaluate, the versions that may run and their needs at that instant (decision 0043)."""

    instances: dict[str, list[j.State]]
    timers: dict[str, dict[str, tuple]]
    since: datetime
    keys: frozenset[tuple[str, int]]
    need: Needs | None

    @staticmethod
    def read(conn: Connection, js: Journeys, pids: list[str], at: datetime, since: datetime | None) -> _Plan:
        """``since``: the earliest own time of the inputs the caller will give (default ``at``). A transition is
        evaluated at its input's time, never later than ``at`` (``interpreter._Run``): the claim may evaluate at
        ``since``, or at the first due instant of a timer due by ``at`` (fired before an input, or by the timer
        task), whichever is earlier. An input earlier than all that is still right: ``PersonRun.give`` reads back."""
        ws = js.ws.id
        instances = store.instances_of(conn, ws, pids)
        timers: dict[str, dict[str, tuple]] = {p: {} for p in pids}
        firsts = [at] if since is None else [min(since, at)]
        for t in store.timers_of(conn, ws, pids):
            # (claimable at, journey, instance, its input's time: when it was first due, before any retry)
            first = t.first_due or t.due_at
            timers.setdefault(t.profile_id, {})[t.key] = (t.due_at, t.journey_id, t.instance_id, first)
            if t.due_at <= at:
                firsts.append(first)
        earliest = min(firsts)
        keys = frozenset(js.runnable(s for mine in instances.values() for s in mine))
        return _Plan(instances, timers, earliest, keys, js.needs(keys, earliest))


EVENTS_PER_CLAIM = 200_000  # a claim reads at most about this many of its people's events at once


def claims(conn: Connection, js: Journeys, pids: Sequence[str], at: datetime,
           since: datetime | None = None) -> Iterable[Claim]:  # fmt: skip
    """The people ``pids`` (in this order) as consecutive claims, ``since`` the earliest own time of the inputs the
    caller will give them (:class:`_Plan`). A claim reads of their events only what its journeys' rules and criteria
    can look at (decision 0043): usually nothing, or a window. When they read some, the people are cut into claims
    whose events *to read* (counted with the same conditions) stay under EVENTS_PER_CLAIM (one person alone may
    be more): a rule with no window (``first_time``, a ``performed`` ever) reads a name's whole history, and 500
    long-lived customers read at once could hold millions of events in a worker's memory. The caller runs each
    claim's people and flushes it before the next."""
    pids = list(dict.fromkeys(pids))
    plan = _Plan.read(conn, js, pids, at, since)
    # counted as if nobody had an activity summary (decision 0046): a person whose summary does not cover the rules
    # (a profile from before it, a name past its cut) is read whole, and which one is not known before her state is
    counted = plan.need.whole() if plan.need is not None else None
    if len(pids) <= 1 or (counted is not None and not counted.events):
        yield Claim(conn, js, pids, at, plan=plan)
        return
    e = events.c
    sizes = dict(conn.execute(sa.select(e.profile_id, sa.func.count()).where(
        e.workspace_id == js.ws.id, bulk.in_(e.profile_id, pids, conn.dialect.name), *load.events_where(counted))
        .group_by(e.profile_id)).all())  # fmt: skip
    group: list[str] = []
    weight = 0
    for pid in pids:
        n = sizes.get(pid, 0)
        if group and weight + n > EVENTS_PER_CLAIM:
            yield Claim(conn, js, group, at, plan=plan)
            group, weight = [], 0
        group.append(pid)
        weight += n
    if group:
        yield Claim(conn, js, group, at, plan=plan)


# -- one person --------------------------------------------------------------------------------------------------------
@dataclass
class PersonRun:
    """One person's inputs given to the interpreter, one after the other, and their commands carried out.

    The caller has locked her profile row. ``give`` may be called many times; what it writes is written by her
    claim's flush (``flush``), with the other people's of the claim."""

    conn: Connection
    js: Journeys
    person: Person
    now: datetime
    instances: list[j.State] = field(default_factory=list)
    claim: Claim | None = None
    since: datetime | None = None  # the earliest instant her person was read for (None: her whole history)
    need: Needs | None = None  # what was read of her (``segments.needs``; None: everything)
    given: list[Event] = field(default_factory=list)  # the events given so far (entries read those after them)
    _dirty: dict[str, bool] = field(default_factory=dict)  # instance id -> new
    _records: list[dict] = field(default_factory=list)
    _timeline: list[Stored] = field(default_factory=list)
    _seen: dict[tuple, int] = field(default_factory=dict)  # timeline records per (instance, step, kind, node)
    _held: dict[str, bool] = field(default_factory=dict)  # journey -> she has inputs held for it (once asked)
    held_behind: set[str] = field(default_factory=set)  # journeys an input was held for, behind a resume
    replaying: set[str] = field(default_factory=set)  # journeys whose held inputs this run gives again
    unreplayed: dict[str, set[str]] = field(default_factory=dict)  # journey -> ids of held events not given yet
    _latest: tuple[dict, str] | None = None  # (her stored state, the latest instant it holds), for person_at
    stepped: list[tuple[dict, str]] = field(default_factory=list)  # her trait steps' identifies (payload, anchor)
    # her identifiers as a timeline event carries them: (the call's fields, its context), or () without any; made at
    # her first record (her claim reads her identifiers once)
    _addressed: tuple | None = None

    def __post_init__(self) -> None:
        if self.claim is None:
            raise ValueError("a person's run belongs to a claim (Claim, or person_run for one person)")

    @property
    def ws(self) -> str:
        return self.js.ws.id

    @property
    def ident(self) -> dict:
        """Her identifiers, for a call about her (a trait's identify, a timeline event)."""
        assert self.claim is not None
        return self.claim.ident(self.person.id)

    def give(self, inp: j.Input, *, only: Iterable[str] | None = None) -> list[dispatch.Outcome]:
        """Offer ``inp`` to the journeys it can concern (``only``: these alone, a start or a sweep)."""
        out: list[dispatch.Outcome] = []
        wanted = set(only) if only is not None else None
        t = min(j.input_time(inp), self.now)  # no rule of this input is evaluated before (interpreter._Run.now)
        seen: tuple[Person, Person] | None = None  # (her person, as of t)
        if self.since is not None and t < self.since:
            assert self.claim is not None
            self.claim.read_back(self, t)
        # her instances by journey, once per input: a journey's outcomes replace or add only its own instances
        by_journey: dict[str, list[j.State]] = {}
        for s in self.instances:
            by_journey.setdefault(s.journey_id, []).append(s)
        for jid, jr in self.js.all.items():
            if wanted is not None and jid not in wanted:
                continue
            mine = by_journey.get(jid, [])
            if isinstance(inp, j.Merged):  # housekeeping, not an input of hers: never held, nobody enters by it
                live = {s.version for s in mine if s.status != "exited"}
                # two live ones, ranked by the current version; and those the runtime found beside an exited one
                # whose message still waits (its ``superseded``)
                if not live:
                    gone = frozenset()
                elif jid in inp.ranked:  # ranked with her exited ones still waiting to send: that ranking alone
                    gone = inp.superseded & {s.instance_id for s in mine if s.status != "exited"}
                else:
                    gone = j.superseded(self.js.defn(jid, jr.version), mine)
                if gone:
                    versions = {v: self.js.defn(jid, v) for v in live}
                    merged = replace(inp, superseded=gone)
                    for o in dispatch.offer(versions, jr.version, self.person, mine, merged, self.now,
                                            status=jr.interpreter_status, topics=self.js.topics):  # fmt: skip
                        self._keep(jid, o)
                        out.append(o)
                continue
            may_enter = None  # asked once per journey, when needed
            if isinstance(inp, j.TimerFired):
                if not any(s.instance_id == inp.instance_id for s in mine):
                    continue
            elif not any(s.status != "exited" for s in mine):
                may_enter = self.js.may_enter(jid, inp)
                if not may_enter:
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
            if may_enter is None:
                may_enter = self.js.may_enter(jid, inp)
            # an instance that begins checks its goal and exit criteria against her events given before it
            # (interpreter._Run.at_entry): a version with neither has nothing to check them against, and her claim
            # need not read which of her events are still waiting in the feed (Claim.unseen)
            entering = (may_enter or any(s.status == "new" for s in mine)) and any(
                v.goal is not None or v.exits for v in versions.values())  # fmt: skip
            if seen is None or seen[0] is not self.person:  # once per input, again after a trait step
                seen = (self.person, self.person_at(t))
            outcomes = dispatch.offer(
                versions, jr.version, seen[1], mine, inp, self.now, status=jr.interpreter_status,
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

    def person_at(self, t: datetime) -> Person:
        """Her person as the rules of an input at ``t`` read her, as the simulator gives it (decision 0053): her
        traits, consent, channels and activity folded from her events up to ``t``. The stored state holds what came
        after when the input is handled late (a backlog; her later events resolved first). Most inputs are handled
        before anything later of hers: then she is read as stored. Her segments are those read (a membership's
        history is dated when the engine decided it, not when her answer changed). What a message step sends and
        to whom is decided at the send, on her profile as it is then (an opt-out since ``t`` stands)."""
        assert self.claim is not None
        p = self.person
        if self._latest is None or self._latest[0] is not p.state:
            self._latest = (p.state, pstate.latest(p.state))
        at = iso(t)
        if self._latest[1] <= at:
            return p
        state = self.claim.state_at(p.id, t)
        # her trait steps of this run are hers at once (an input handled after the step reads it, as the simulator
        # folds the step's identify at once)
        if self.stepped:  # still pending in this transaction: never in the refold (review)
            state = copy.deepcopy(state)
            policies = dict(self.js.ws.settings.get("trait_policies") or {})
            for payload, anchor in self.stepped:
                pstate.apply_event(state, payload, anchor, policies)
        return replace(p, state=state, summary=Summary.of(state))

    def has_held(self, jid: str) -> bool:
        if jid not in self._held:
            assert self.claim is not None
            self._held[jid] = self.claim.held(jid, self.person.id)
        return self._held[jid]

    def replay(self, jid: str, held: Sequence[j.Input]) -> None:
        """Give the journey's held inputs again (a resume), in the order given (their time order)."""
        self.replaying.add(jid)
        self.unreplayed[jid] = {i.id for i in held if isinstance(i, Event)}
        for inp in held:
            # her timers due before it come first, as the consumer gives them: a wait begun by an earlier held input
            # times out before a later one that came after its timeout (an outside probe: a purchase 75 s after
            # the entry took the `bought` branch of a wait with a 1-minute timeout, the simulator said `timeout`)
            self.fire_due(min(j.input_time(inp), self.now))
            self.give(inp, only=[jid])
        self.replaying.discard(jid)
        self.unreplayed.pop(jid, None)

    def before_entry(self, jid: str) -> tuple[Event, ...]:
        """The person's events given to the journey before the input at hand: those stored whose feed change the
        consumer has handled, and those given in this run. Not the ones still waiting in the feed, nor those held
        for this journey while it was paused and not given again yet (both come as inputs, later): an entry checks
        its goal and exit criteria against what happened before it was processed, as the simulator does, never
        twice."""
        assert self.claim is not None
        unseen = self.claim.unseen(self.person.id)
        given = {e.id for e in self.given}
        later = self.unreplayed.get(jid, set())
        return tuple(e for e in self.person.events if (e.id not in unseen or e.id in given) and e.id not in later)

    def _keep(self, jid: str, o: dispatch.Outcome) -> None:
        assert self.claim is not None
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
        live = self.claim.timers(self.person.id)
        for c in o.commands:
            if isinstance(c, j.SetTimer):
                self.claim.set_timer({"key": c.key, "journey_id": jid, "instance_id": s.instance_id,
                                      "profile_id": self.person.id, "due_at": c.at})  # fmt: skip
                live[c.key] = (c.at, jid, s.instance_id, c.at)
            elif isinstance(c, j.CancelTimer):
                self.claim.cancel_timer(c.key)
                live.pop(c.key, None)
            elif isinstance(c, j.Record):
                self._record(s, c)
            elif isinstance(c, j.EFFECTS) or (isinstance(c, j.Exit) and c.withdraw):
                handler = _EFFECTS.get(type(c))
                if handler is None:  # publish refuses such a journey (``supported``); one published before
                    raise RuntimeError(f"no effect is installed for {type(c).__name__}")
                handler(self, s, c)

    def fire_due(self, until: datetime) -> int:
        """Fire her timers due at or before ``until``, earliest first (then by key), each deleted and given as its
        input: before an input of that time (the consumer), or up to now (the timer task). Her inputs are then
        applied in their time order whichever task brought them, as the simulator applies them."""
        assert self.claim is not None
        live = self.claim.timers(self.person.id)
        n = 0
        while True:
            ready = [(first, key) for key, (due, _, _, first) in live.items() if due <= until]
            if not ready:
                return n
            first, key = min(ready)  # in the order they were first due (a retried one keeps its place)
            _, jid, iid, _ = live.pop(key)
            self.claim.cancel_timer(key)
            if jid == store.DEFERRED:  # inputs stamped after they were received: given now their time has come
                for inp in store.take_deferred(self.conn, self.ws, self.person.id, first):
                    self.give(inp)
            elif jid in self.js.all:
                self.give(j.TimerFired(iid, key, first) if iid else j.scheduled_start(store.start_id(key), first),
                          only=[jid])  # fmt: skip
            n += 1

    def _record(self, s: j.State, c: j.Record) -> None:
        arm = s.arms[min(s.arms)] if s.arms else None  # the first in name order
        self._records.append({"journey_id": s.journey_id, "version": s.version, "instance_id": s.instance_id,
                              "profile_id": self.person.id, "kind": c.kind, "node": c.node, "branch": c.branch,
                              "arm": arm, "at": c.at, "detail": (c.detail or None) and c.detail[:200]})  # fmt: skip
        # a split's assignment (a step by an arm, or a holdout's wait) is the person's variant: the uplift report
        # reads it from her timeline (analytics.uplift)
        assigned = c.kind in ("step", "waiting") and c.node in s.arms and s.arms[c.node] == c.branch
        name = TIMELINE.get(c.kind) or ("Journey Step" if assigned else None)
        if name is None:
            return
        addressed = self._addressed
        if addressed is None:
            ident = self.ident
            addressed = self._addressed = (
                {k: v for k, v in ident.items() if k != "context"},
                {**ident.get("context", {}), "channel": "internal", "direction": "outbound"},
            ) if ident else ()  # fmt: skip
        if not addressed:
            return
        fields, context = addressed
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
            **fields,
            "type": "track", "event": name, "properties": props,
            "context": dict(context),  # each event its own (its payload is stored, and may be changed, alone)
            # the step number and the record's place in it: a transition computed again makes the same ids
            "messageId": f"chorus-journey-{s.instance_id}-{s.step}-{c.kind}-{c.node}-{n}"[:200],
            "timestamp": iso(c.at),
        }  # fmt: skip
        ev = normalise_internal(raw, at=c.at, received_at=self.now)
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
        """Write what her claim's runs did so far (hers, and the others' of the claim)."""
        assert self.claim is not None
        self.claim.flush()


def person_run(conn: Connection, js: Journeys, pid: str, at: datetime,
               since: datetime | None = None) -> PersonRun | None:  # fmt: skip
    """Her run, alone in its claim, or None when ``pid`` is not a profile (merged away, erased). The caller locked
    her; ``since``: the earliest own time of the inputs it will give (:class:`_Plan`)."""
    return Claim(conn, js, [pid], at, since).runs.get(pid)


# -- the change feed ---------------------------------------------------------------------------------------------------
def _inputs(conn: Connection, js: Journeys,
            changes: Sequence[feed.Delivered]) -> list[tuple[feed.Delivered, j.Input]]:  # fmt: skip
    seqs = [c.event_seq for c in changes if c.cause == "event" and c.event_seq is not None]
    payloads = {}
    dialect = conn.dialect.name
    q = store.prepared(conn, "runtime.payloads", lambda d_: sa.select(events.c.seq, events.c.payload, events.c.trusted)
                       .where(store.in_param(events.c.seq, "seqs", d_)))  # fmt: skip
    for i in range(0, len(seqs), 5000):
        part = seqs[i : i + 5000]
        payloads.update((seq, (payload, trusted)) for seq, payload, trusted in conn.execute(
            q, {"seqs": store.in_value(part, dialect)}))  # fmt: skip
    anchored = js.draws_by_identifier
    out: list[tuple[feed.Delivered, j.Input]] = []
    for c in changes:
        if c.cause == "event" and c.event_seq in payloads:
            payload, trusted = payloads[c.event_seq]
            ev = Event.from_payload(payload)
            if anchored:  # as identity resolution read it (trusted as it was)
                ev = replace(ev, anchor=event_anchor(payload, js.ws.identity, bool(trusted)))
            out.append((c, ev))
        elif c.cause == "segment" and c.detail.get("segment") and c.detail.get("change") in ("entered", "exited"):
            out.append((c, j.SegmentChanged(c.detail["segment"], c.detail["change"], c.at, str(c.seq))))
        elif c.cause == "message" and c.detail.get("status") and c.detail.get("message_id"):
            out.append((c, j.MessageEvent(c.detail["status"], c.detail["message_id"], c.detail.get("journey_id"),
                                          c.detail.get("idempotency_key"), c.at, c.detail.get("channel"))))  # fmt: skip
    return out


class Consumer:
    """The ``journeys`` change-feed consumer: each person's changes become inputs, given in order. ``many`` takes
    a whole claim in one :class:`Claim` per workspace (the feed falls back to one person at a time, ``__call__``,
    when it fails)."""

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self.clock = clock

    def __call__(self, conn: Connection, ws: str, pid: str, changes: list[feed.Delivered]) -> None:
        self.many(conn, {(ws, pid): changes})

    def many(self, conn: Connection, claimed: dict[tuple[str, str], list[feed.Delivered]]) -> None:
        at = (self.clock or now)()
        by_ws: dict[str, dict[str, list[feed.Delivered]]] = {}
        for (ws, pid), changes in claimed.items():
            by_ws.setdefault(ws, {})[pid] = changes
        for ws in sorted(by_ws):
            people = by_ws[ws]
            js = journeys_of(conn, ws)
            if not js.all:
                continue
            merged: dict[str, datetime] = {}  # survivor -> the merge's time
            for changes in people.values():  # a merge: the merged person's journeys go on as the survivor's
                for c in changes:
                    if c.cause == "merge" and c.target_id:
                        if c.profile_id != c.target_id:
                            store.repoint(conn, ws, c.profile_id, c.target_id)
                        merged[c.target_id] = min(c.at, merged.get(c.target_id, c.at))
            # the survivor too, when only the merged one's change is in this claim (one lock statement, id order)
            locked = set(views.lock_people(conn, ws, sorted(set(people) | set(merged))))
            given: dict[str, list[j.Input]] = {}
            # first: two instances of hers must not both take her inputs (only for those a merge gave two)
            doubled = store.doubled(conn, ws, sorted(set(merged) & locked))
            # and a live one beside an exited one whose message still waits (review: both sent)
            beside, ranked = _withdraw_exited_doubles(conn, js, sorted(set(merged) & locked), at)
            for pid in sorted(doubled | set(beside)):
                given[pid] = [j.Merged(merged[pid], frozenset(beside.get(pid, ())), frozenset(ranked.get(pid, ())))]
            for c, inp in _inputs(conn, js, [c for pid in sorted(locked) for c in people.get(pid, ())]):
                if not js.hears(inp):
                    continue  # nothing can use it: the person is not even loaded for it
                if isinstance(inp, Event) and inp.at > at:
                    # stamped after now (a client clock ahead; the API takes up to two days): applied at its own time,
                    # as the simulator and the segments do, not now (an outside probe: an order stamped 11:30 that
                    # arrived at 10:10 took the "bought" branch of a wait that times out at 11:00)
                    store.defer(conn, ws, c.profile_id, inp, f"defer:{c.seq}")
                    continue
                given.setdefault(c.profile_id, []).append(inp)
            if not given:
                continue
            # the earliest input's own time: her person is read for evaluations from then on (decision 0043)
            since = min(j.input_time(i) for mine in given.values() for i in mine)
            for claim in claims(conn, js, sorted(given), at, since):
                for pid, run in claim.runs.items():
                    for inp in given[pid]:
                        run.fire_due(min(j.input_time(inp), at))  # her timers due before it come first
                        run.give(inp)
                claim.flush()


# -- timers ------------------------------------------------------------------------------------------------------------
def due(engine: Engine, limit: int = 500, clock: Callable[[], datetime] | None = None) -> int:
    """Fire the timers due now: one transaction; per workspace, the people whose timers are due (locked, skipping
    those another worker holds), each her due timers in due order, all in one :class:`Claim`. A scheduled start
    (no instance yet) is a ``Start`` of its journey. When the claim fails, each person goes alone, and a person
    whose transition fails is rolled back alone and her timers tried again later (``store.postpone_timers``: a
    minute, then twice as long after each failure)."""
    at = (clock or now)()
    done = 0
    with read_only(engine) as probe:  # as db.any_row, with a statement built once (store.prepared)
        if probe.execute(store.prepared(probe, "runtime.any_due", _any_due), {"at": at}).first() is None:
            return 0
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
            ready = []
            for pid in pids:
                if pid in busy:
                    continue
                if pid not in locked:
                    if not _is_profile(conn, ws, pid):  # merged away (the consumer moves them) or gone: later
                        _later(conn, ws, [r.key for r in by_person[(ws, pid)]], at)
                    continue  # another worker holds her: still due at the next pass
                ready.append(pid)
            if not ready:
                continue
            try:
                with conn.begin_nested():
                    done += _fire(conn, js, ready, by_person, at)
                continue
            except Exception as exc:  # noqa: BLE001 - then one person at a time, below
                feed.reraise_transient(exc)
                log.warning("journey timers of %d people failed together; each alone: %s", len(ready), exc)
            for pid in ready:
                try:
                    with conn.begin_nested():
                        # read again: a rolled-back savepoint released the journeys' shared locks (_forget_on_rollback)
                        done += _fire(conn, journeys_of(conn, ws), [pid], by_person, at)
                except Exception as exc:  # noqa: BLE001 - one person must not stop time for everybody
                    feed.reraise_transient(exc)
                    log.exception("journey timers of profile %s failed; tried again later", pid)
                    _later(conn, ws, [r.key for r in by_person[(ws, pid)]], at, f"{type(exc).__name__}: {exc}")
    return done


def _any_due(_dialect: str):
    return sa.select(journey_timers.c.due_at).where(journey_timers.c.due_at <= sa.bindparam("at")).limit(1)


def _fire(conn: Connection, js: Journeys, pids: list[str], by_person: dict, at: datetime) -> int:
    n = 0
    for claim in claims(conn, js, pids, at):
        for pid in claim.pids:
            run = claim.runs.get(pid)
            if run is None:  # not a profile any more
                store.cancel_timers(conn, js.ws.id, [r.key for r in by_person[(js.ws.id, pid)]])
            else:
                n += run.fire_due(at)
        claim.flush()
    return n


def _is_profile(conn: Connection, ws: str, pid: str) -> bool:
    try:
        return views.resolve_id(conn, ws, pid) == pid
    except Exception:  # noqa: BLE001 - NotFound: erased
        return False


def _later(conn: Connection, ws: str, keys: list[str], at: datetime, error: str | None = None) -> None:
    store.postpone_timers(conn, ws, keys, at, error)


# -- entry by a call ---------------------------------------------------------------------------------------------------
def start_person(conn: Connection, ws: str, jid: str, pid: str, start: j.Start, at: datetime) -> dict:
    """Start ``pid`` in an API-entered journey (the caller checked the journey's entry). The answer says whether she
    entered, and why not (the interpreter's reason): held while the journey is paused."""
    js = journeys_of(conn, ws)
    views.lock_people(conn, ws, [pid])
    run = person_run(conn, js, pid, at, start.at)
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
def _withdraw_exited_doubles(conn: Connection, js: Journeys, survivors: list[str], at: datetime
                             ) -> tuple[dict[str, set], dict[str, set]]:  # fmt: skip
    """A merge gave these people another profile's instances. Of those that duplicate another of hers
    (``interpreter.superseded_exited``, each judged by its own version's rules), an exited one's messages not gone
    out yet are withdrawn here; the live ones are returned (profile id -> instance ids) to exit by ``Merged``, with
    the journeys so ranked (profile id -> journey ids: their live ones are not ranked again, alone, by
    ``superseded``, which could keep another one; review). Only journeys where one of hers exited with a message
    still waiting are read further."""
    live: dict[str, set] = {}
    ranked: dict[str, set] = {}
    for pid, mine in store.instances_of(conn, js.ws.id, survivors).items():
        by_journey: dict[str, list[j.State]] = {}
        for s in mine:
            by_journey.setdefault(s.journey_id, []).append(s)
        for jid, group in sorted(by_journey.items()):
            jr = js.all.get(jid)
            if jr is None or len(group) < 2 or not any(s.status == "exited" and s.sent for s in group):
                continue
            pending = outbox.withdrawable(conn, js.ws.id, jid, [k for s in group if s.status == "exited"
                                                                for k in s.sent])  # fmt: skip
            if not pending:
                continue
            why = (f"journey {jid}: merged: she is in this journey already (another profile of hers entered it) "
                   "before it went out")  # as effects' withdrawals say it
            exited, doubles = j.superseded_exited(lambda v, jid=jid: js.defn(jid, v), group, pending)
            for keys in exited.values():
                outbox.withdraw(conn, js.ws.id, jid, [(k, why) for k in keys], at)
            ranked.setdefault(pid, set()).add(jid)
            if doubles:
                live.setdefault(pid, set()).update(doubles)
    return live, ranked


WITHDRAW_BATCH = 1000  # messages of a stopped journey withdrawn per transaction (the stop's own, then each sweep)


def withdraw_stopped(conn: Connection, jr: store.Journey, ws: str, at: datetime) -> int:
    """A batch of the stopped (or archived) journey's messages not gone out yet, withdrawn (those due first first);
    how many. A stop sends nothing more: its own transaction takes the first batch, the sweep the rest."""
    reason = f"{jr.kind} {jr.id} was {jr.status} before it went out"
    # how many it picked, not withdrew: some may have gone out before the lock, and more may be left (review)
    return outbox.withdraw_journey_batch(conn, ws, jr.id, reason, at, limit=WITHDRAW_BATCH)[1]


def sweep(engine: Engine, limit: int = 200, clock: Callable[[], datetime] | None = None) -> int:
    """The work a status change leaves: after a resume, each person's held inputs are given again in their time
    order; after a stop or an archive, every live instance exits (timers cancelled) and held inputs are dropped.
    One batch of people per journey and pass; the flag is cleared when none is left."""
    at = (clock or now)()
    done = 0
    with read_only(engine) as probe:  # on SQLite without the write lock: each journey is locked below
        todo = store.to_sweep(probe)
    for ws, jid in todo:
        waiting = 0
        with engine.begin() as conn:
            # a stopped journey's messages first, in a transaction of their own: their rows are locked before people
            # here, and a transition locks her profile before her messages (review: one transaction with both orders
            # could deadlock on PostgreSQL)
            jr = store.get(conn, ws, jid, lock=True)
            if jr.sweep and jr.status in ("stopped", "archived"):
                waiting = withdraw_stopped(conn, jr, ws, at)
        with engine.begin() as conn:
            # the journey's row first, for update (as control and publish take it), then its people: the order
            # every transition keeps (journeys shared, then people), so none waits for a lock the other holds
            jr = store.get(conn, ws, jid, lock=True)
            if not jr.sweep:
                continue
            js = journeys_of(conn, ws)
            if jr.status == "active":
                pids = store.held_people(conn, ws, jid, limit)
                # a person with changes still waiting in the feed is resumed once the consumer has given them (it
                # holds them behind her held inputs): her replay fires the timers due before each input, and one of
                # those changes may be stamped before a timer (review: a purchase before a wait's timeout, not yet
                # handed over, lost the `bought` branch); the timer task waits for the feed the same way
                busy = feed.pending_people(conn, CONSUMER, ws, pids)
                for pid in views.lock_people(conn, ws, [p for p in pids if p not in busy]):
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
                if len(pids) < limit and not busy:
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
                if len(live) < limit and waiting < WITHDRAW_BATCH:
                    store.swept(conn, ws, jid)
            else:
                store.swept(conn, ws, jid)
    return done


def _replay(conn: Connection, js: Journeys, jid: str, pid: str, held: Sequence[j.Input], at: datetime) -> None:
    run = person_run(conn, js, pid, at, min((j.input_time(i) for i in held), default=None))
    if run is not None:
        run.replay(jid, held)
        run.flush()


def _forget_on_rollback(conn: Connection, name: str, context) -> None:
    """A savepoint rolled back released the row locks taken inside it (PostgreSQL), the journeys' shared locks
    included: what was read under them is read again (and locked again) by the next transition. Not on a lost
    connection: its info cannot be read then (PendingRollbackError would replace the disconnect), and is new when
    it reconnects (review)."""
    if not conn.invalidated:
        forget_parsed(conn)


sa.event.listen(Engine, "rollback_savepoint", _forget_on_rollback)


