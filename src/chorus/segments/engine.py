"""The incremental segment engine: membership kept true the moment anything changes, and at the exact instant time
alone changes it.

- **Changes** (chorus.profiles.feed): the consumer ``segments`` receives every change of a person. An index from
  inputs to segments (:func:`affected`, over :func:`chorus.segments.rules.dependencies`) picks the segments the
  change can affect; they are evaluated for that person only (``evaluate``, the reference semantics), in dependency
  order, and the segments that refer to one whose membership changed are evaluated after it.
- **Time**: every evaluation returns the next instant its answer can change by the passage of time alone; it is
  kept per person and segment (``segment_timers``) and the timer task evaluates the person again then. No polling.
- **Membership changes** are written with their cause (``segment_members``, ``segment_history``), put on the
  person's timeline as ``Segment Entered`` / ``Segment Exited`` events, and recorded in the change feed (cause
  ``segment``) for journeys; all in the transaction of the change that caused them.
- **Batch** (:func:`recompute`): a segment whose rule is new or changed is computed for everybody, chunk by chunk
  of profile ids, by the SQL compiler (``segments.batch``: the chunk's rows locked, then one query for its span)
  and applied as a diff that writes the same rows, events and timers.

On PostgreSQL the person's profile row is locked while she is evaluated, so the consumer, the timer task and a
batch never write one person's membership at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import metrics
from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise_internal
from chorus.errors import ChorusError
from chorus.messaging.consent import identity_fields
from chorus.messaging.outbox import STATUS_EVENTS
from chorus.profiles import feed, views
from chorus.profiles.views import lock_people
from chorus.registry import Registry
from chorus.segments import batch, load, store
from chorus.segments import rules as r
from chorus.segments.evaluate import Evaluation
from chorus.segments.needs import Needs
from chorus.segments.needs import needs as needs_of
from chorus.segments.person import Person
from chorus.store import bulk
from chorus.store.db import any_row, read_only
from chorus.store.tables import profiles, segment_timers
from chorus.timeutil import iso, utcnow

log = logging.getLogger("chorus.segments")


def now() -> datetime:
    """The engine's clock (tests and simulations replace it; every evaluation reads it once)."""
    return utcnow()
CONSUMER = "segments"
STRUCTURAL = frozenset({"merge", "replay", "created"})  # the person's identity changed: every segment may


@dataclass
class Outcome:
    entered: list[str] = field(default_factory=list)
    exited: list[str] = field(default_factory=list)


# -- which segments a change can affect ---------------------------------------------------------------------------
def _reads_events(i: r.Inputs) -> bool:
    # any event can carry traits (context.traits), a time zone, consent, and is activity on a channel
    return bool(i.events or i.traits or i.activity or i.timezone or i.consent)


# the timeline events Chorus stores already attributed (no "event" change): a rule may read them as events
SEGMENT_EVENTS = frozenset({"Segment Entered", "Segment Exited"})
MESSAGE_EVENTS = frozenset(STATUS_EVENTS.values())


def _reads(i: r.Inputs, names: frozenset[str]) -> bool:
    return "*" in i.events or bool(i.events & names)


@dataclass(frozen=True)
class Index:
    """From inputs to the segments reading them (``rules.dependencies``), built once per set of definitions, so
    that routing a change costs a few set lookups instead of a pass over every definition.

    An event change is routed by what its feed record says (``resolver.event_change``): its name goes to the
    segments reading events of that name, and to those reading any event or channel activity; only an event that
    may have changed the profile itself (``profile``: traits, time zone, consent, addresses) goes to the segments
    reading those too. A record without that flag (written before it existed) goes everywhere events matter."""

    every: frozenset[str]
    events: frozenset[str]  # anything an event may change matters (the coarse route)
    any_event: frozenset[str]  # any event matters: "*" (by type, by channel) or channel activity
    by_name: dict[str, frozenset[str]]
    profile: frozenset[str]  # traits, time zone, consent or addresses
    consent: frozenset[str]
    computed: frozenset[str]
    message: frozenset[str]
    segment_events: frozenset[str]
    lists: dict[str, frozenset[str]]

    @classmethod
    def of(cls, defs: dict[str, store.Definition]) -> Index:
        def where(test) -> frozenset[str]:
            return frozenset(sid for sid, d in defs.items() if test(d.inputs))

        by_name: dict[str, set[str]] = {}
        lists: dict[str, set[str]] = {}
        for sid, d in defs.items():
            for name in d.inputs.events - {"*"}:
                by_name.setdefault(name, set()).add(sid)
            for lid in d.inputs.lists:
                lists.setdefault(lid, set()).add(sid)
        return cls(
            every=frozenset(defs), events=where(_reads_events),
            any_event=where(lambda i: "*" in i.events or i.activity),
            by_name={k: frozenset(v) for k, v in by_name.items()},
            profile=where(lambda i: bool(i.traits or i.timezone or i.consent)),
            consent=where(lambda i: bool(i.consent or i.traits)), computed=where(lambda i: bool(i.computed)),
            message=where(lambda i: i.messages or _reads(i, MESSAGE_EVENTS)),
            # not the segments referring to it: the evaluation that made the change evaluated them after it, in
            # its own transaction (Evaluator.people); only the timeline event it stored is news
            segment_events=where(lambda i: _reads(i, SEGMENT_EVENTS)),
            lists={k: frozenset(v) for k, v in lists.items()},
        )  # fmt: skip

    def route(self, c: feed.Delivered) -> frozenset[str]:
        cause = c.cause
        if cause == "event":
            d = c.detail
            if d.get("new"):  # the batch made her profile: any segment may be true of it (not in a list, a bucket)
                return self.every
            if d.get("profile") is not False:
                return self.events
            name = d.get("event")
            named = self.by_name.get(name) if name is not None else None
            return self.any_event | named if named else self.any_event
        if cause in STRUCTURAL:
            return self.every
        if cause == "consent":
            return self.consent
        if cause == "computed":
            return self.computed
        if cause == "message":
            return self.message
        if cause == "segment":
            return self.segment_events
        if cause == "list":
            return self.lists.get(c.detail.get("list"), frozenset())
        return frozenset()

    def affected(self, changes: Iterable[feed.Delivered]) -> set[str]:
        out: set[str] = set()
        for c in changes:
            out |= self.route(c)
            if len(out) == len(self.every):
                break
        return out


def affected(defs: dict[str, store.Definition], changes: Iterable[feed.Delivered]) -> set[str]:
    """The segments ``changes`` can affect (``Index.affected``; an engine keeps its index in its context)."""
    return Index.of(defs).affected(changes)


def _order(defs: dict[str, store.Definition]) -> list[str]:
    """Dependency order (a segment after those it refers to). A reference to a segment that is gone reads as not
    a member; it never stops the others (definition changes are serialised, but be total anyway)."""
    order: list[str] = []
    state: dict[str, int] = {}
    for root in sorted(defs):
        stack = [(root, iter(sorted(defs[root].inputs.segments)))]
        if state.get(root):
            continue
        state[root] = 1
        while stack:
            sid, refs = stack[-1]
            nxt = next((x for x in refs if x in defs and not state.get(x)), None)
            if nxt is None:
                stack.pop()
                state[sid] = 2
                order.append(sid)
            else:
                state[nxt] = 1
                stack.append((nxt, iter(sorted(defs[nxt].inputs.segments))))
    return order


def _dependents(defs: dict[str, store.Definition]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for sid, d in defs.items():
        for ref in d.inputs.segments:
            out.setdefault(ref, set()).add(sid)
    return out


# -- the person, as evaluate reads her ----------------------------------------------------------------------------
def load_person(conn: Connection, ws: ws_api.Workspace, pid: str, need: Needs | None = None) -> Person | None:
    """The person from the store (segments.load, which the SQL compiler is tested against), or None when ``pid``
    is no longer a profile. With ``need`` (``segments.needs``) only what those rules can still read is loaded
    (decision 0028)."""
    return load.people(conn, ws.id, [pid], ws.identity, needs=need, zone_default=ws.timezone).get(pid)


# -- evaluating one person ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Context:
    """What evaluations of one workspace share in one transaction: its settings and its definitions, parsed once
    (parsing every rule for every person was a sixth of the consumer's time)."""

    ws: ws_api.Workspace
    defs: dict[str, store.Definition]
    order: list[str]
    dependents: dict[str, set[str]]
    topics: dict | None
    index: Index


def context(conn: Connection, ws_id: str) -> Context:
    """The workspace's definitions, read and parsed once per transaction, under the definitions lock taken shared
    (before any profile row). They cannot change until the transaction ends: a save or a deletion waits for that
    lock (PostgreSQL) or for the one writer (SQLite); one made in this very transaction drops what was parsed
    (``store._changed``), and so does a savepoint rolled back."""
    txn = conn.get_transaction()
    cached = conn.info.get(store.PARSED)
    # the cache holds the transaction object itself: a later transaction is never the same object
    if cached is not None and cached[0] is txn and ws_id in cached[1]:
        return cached[1][ws_id]
    store.lock_definitions(conn, ws_id, shared=True)  # before any profile row: the definitions stay as read
    ws = ws_api.get(conn, ws_id)
    defs = store.definitions(conn, ws_id)
    ctx = Context(ws, defs, _order(defs) if defs else [], _dependents(defs),
                  (ws.settings.get("messaging") or {}).get("topics"), Index.of(defs))  # fmt: skip
    if txn is not None:
        if cached is None or cached[0] is not txn:
            cached = (txn, {})
            conn.info[store.PARSED] = cached
        cached[1][ws_id] = ctx
    return ctx


class Evaluator:
    """Evaluates people of one workspace at one instant; what does not change between them (definitions,
    settings) comes from the transaction's :func:`context`."""

    def __init__(self, conn: Connection, ws_id: str, now: datetime):
        self.conn, self.now = conn, now
        ctx = context(conn, ws_id)
        self.ws, self.defs, self.order, self.dependents, self.topics = (
            ctx.ws, ctx.defs, ctx.order, ctx.dependents, ctx.topics)  # fmt: skip
        self._needs: dict[tuple[frozenset[str], datetime], Needs] = {}

    def needs(self, segment_ids: set[str], at: datetime | None = None) -> Needs:
        """What evaluating ``segment_ids``, and every segment that may be re-evaluated because one of them changed,
        can read of a person at ``at`` (default ``self.now``; an earlier instant reads further back): computed once
        per set of segments and instant (a consumer sees few sets, and one instant)."""
        at = at or self.now
        closure, todo = set(), [s for s in segment_ids if s in self.defs]
        while todo:
            sid = todo.pop()
            if sid not in closure:
                closure.add(sid)
                todo.extend(self.dependents.get(sid, ()))
        key = (frozenset(closure), at)
        if key not in self._needs:
            self._needs[key] = needs_of([self.defs[s].rule for s in sorted(key[0])], at)
        return self._needs[key]

    def person(self, pid: str, segment_ids: set[str], cause: str, at: datetime | None = None) -> Outcome:
        """Evaluate ``segment_ids`` (and what refers to them, when they change) for ``pid``; apply the diff."""
        return self.people({pid: set(segment_ids)}, {pid: cause}, None if at is None else {pid: at}).get(pid,
                                                                                                       Outcome())

    def people(self, todo: dict[str, set[str]], causes: dict[str, str], at: dict[str, datetime] | None = None,
               merged: dict[str, list[tuple[str, str]]] | None = None) -> dict[str, Outcome]:  # fmt: skip
        """:meth:`person` for many people of the workspace at once, with the statements of one: their rows
        locked in one statement (in id order, the order of every locker), read in one load, their timers in one
        read, and the diffs written in one statement per table (``store.*_many``), one ``feed.record`` and one
        ``ingest.store``. A consume transaction of 100 people cost 100 times each statement (decision 0034).
        ``causes`` names each person's cause (the last change's); the outcomes are the real changes.

        ``at`` gives some people their own instant (default ``self.now``): a person whose timer fell due is decided
        at the timer's instant, not at the moment a worker found it, so her entry, its history, its feed change and
        the journey it starts are dated when her answer changed, however late the worker was.

        ``merged``: survivor -> the (merged id, segment id) memberships the profiles merged into her just left
        (:meth:`_leave_all`): the survivors are locked with the others, and those exits go on their timelines."""
        outs = {pid: Outcome() for pid in todo}
        todo = {pid: set(sids) & set(self.defs) for pid, sids in todo.items()}
        todo = {pid: sids for pid, sids in todo.items() if sids}
        merged = {s: left for s, left in (merged or {}).items() if left}
        if not (todo or merged) or not self.defs:
            return outs
        ws = self.ws.id
        pids = sorted(todo)
        held = set(lock_people(self.conn, ws, sorted(set(pids) | set(merged))))
        # before her evaluation, which then reads them (a rule on `Segment Exited` events); a survivor gone since
        # gets none (erased; or merged on between the consumer's read of her alias and this lock, which is rare: the
        # exit is then missing from the timeline, the history and the feed have it)
        self._merged_exits({s: left for s, left in merged.items() if s in held})
        if not pids:
            return outs
        when = {pid: (at or {}).get(pid, self.now) for pid in pids}
        need = self.needs(set().union(*todo.values()), min(when.values()))  # the earliest instant reads furthest
        found = load.people(self.conn, ws, pids, self.ws.identity, needs=need, zone_default=self.ws.timezone)
        gone = [pid for pid in pids if pid not in found]  # merged away or erased: she is in nothing any more
        survivors = views.resolve_ids(self.conn, ws, gone) if gone else {}
        late: dict[str, list[tuple[str, str]]] = {}
        for pid in gone:
            if (survivor := survivors.get(pid)) not in (None, pid):
                # merged while this claim waited for her row (its changes came before the merge's): she leaves as
                # the merge's own change would have made her leave, and her exits go on the survivor's timeline
                # (review: they were left with the cause of her last event, and the merge's change then found
                # nothing left, so the survivor's timeline kept her entries open)
                late.setdefault(survivor, []).extend((pid, sid) for sid in self._leave_all(pid, "merge"))
            else:
                self._leave_all(pid, causes[pid])
        if late := {s: left for s, left in late.items() if left}:
            # the survivor's row is locked only if nobody holds it (other people's rows are held already: waiting
            # here could close a cycle); held by another, her exits stay in the history and the feed alone (rare)
            self._merged_exits({s: late[s] for s in lock_people(self.conn, ws, sorted(late), skip_locked=True)})
        timers = store.timers_many(self.conn, ws, list(found))
        moved: dict[str, dict[str, datetime | None]] = {}
        for pid, person in found.items():
            outs[pid], moved[pid] = decide(self.defs, self.order, self.dependents, todo[pid], person,
                                           timers.get(pid, {}), when[pid], self.topics)  # fmt: skip
        store.set_timers_many(self.conn, ws, moved)
        self.apply_many({pid: outs[pid] for pid in found}, causes, when)
        return outs

    def _leave_all(self, pid: str, cause: str) -> list[str]:
        """A profile merged away or erased: out of everything, once (leave reports only real exits). Returns the
        segments she left."""
        was = store.memberships(self.conn, self.ws.id, pid)
        self.conn.execute(segment_timers.delete().where(segment_timers.c.workspace_id == self.ws.id,
                                                        segment_timers.c.profile_id == pid))  # fmt: skip
        left = [sid for sid in sorted(was) if store.leave(self.conn, self.ws.id, sid, [pid], self.now, cause)]
        if left:
            feed.record(self.conn, self.ws.id, [feed.Change(pid, "segment", detail={"segment": sid,
                                                                                    "change": "exited"})
                                                for sid in left], self.now)  # fmt: skip
        return left

    def _merged_exits(self, merged: dict[str, list[tuple[str, str]]]) -> None:
        """The exits of profiles merged away, on their survivor's timeline (``Segment Exited``, cause ``merge``,
        ``merged_id`` the merged profile): her `Segment Entered` events moved there with her other events, and
        without their exit the survivor's timeline showed two entries of a segment she is in once, or an entry of
        one she is not in (an outside probe). The exit is what the history and the feed record already (the merged
        profile's membership ended, cause ``merge``); the survivor's own membership is untouched, so it has no feed
        change: journeys saw the merged profile's exit under its id. Her rows must be locked (``people``): an
        erasure or a further merge of hers waits, and the event is deleted or moved with the rest of hers."""
        if not merged:
            return
        idents = views.identifiers_of(self.conn, self.ws.id, sorted(merged))
        evs, owner = [], {}
        for survivor, left in sorted(merged.items()):
            ident = identity_fields({"id": survivor, "identifiers": idents.get(survivor, {})})
            for gone, sid in left:
                d = self.defs.get(sid)
                ev = _timeline_event(ident, sid, d.name if d else sid, "exited", "merge", self.now, merged_id=gone)
                if ev is not None:
                    evs.append(ev)
                    owner[ev.message_id] = survivor
        if evs:
            source = ws_api.internal_source(self.conn, self.ws.id, "internal", "chorus-segments")
            ingest.store(self.conn, source, evs, [], self.now, owner)

    def _apply(self, pid: str, out: Outcome, cause: str) -> None:
        self.apply_many({pid: out}, {pid: cause})

    def apply_many(self, outs: dict[str, Outcome], causes: dict[str, str],
                   at: dict[str, datetime] | None = None) -> None:  # fmt: skip
        """Write these people's diffs (profile id -> entered and exited, each one's cause): memberships and
        history in one statement each, the ``segment`` feed changes in one ``feed.record`` per instant, the
        timeline events in one ``ingest.store``. Each Outcome is narrowed to the real changes (an entry already a
        member is none). ``at``: a person's own instant, when it is not ``self.now``."""
        ws, now = self.ws.id, self.now
        when = {pid: (at or {}).get(pid, now) for pid in outs}
        entering = [(pid, sid, causes[pid]) for pid, o in sorted(outs.items()) for sid in o.entered]
        leaving = [(pid, sid, causes[pid]) for pid, o in sorted(outs.items()) for sid in o.exited]
        if not entering and not leaving:
            return
        entered = store.enter_many(self.conn, ws, entering, now, when)
        exited = store.leave_many(self.conn, ws, leaving, now, when)
        for pid, o in outs.items():
            o.entered = [sid for sid in o.entered if (pid, sid) in entered]
            o.exited = [sid for sid in o.exited if (pid, sid) in exited]
        moved = sorted(pid for pid, o in outs.items() if o.entered or o.exited)
        if not moved:
            return
        changes: dict[datetime, list[feed.Change]] = {}
        evs, owner = [], {}
        idents = views.identifiers_of(self.conn, ws, moved)
        for pid in moved:
            ident = identity_fields({"id": pid, "identifiers": idents.get(pid, {})})
            for change, ids in (("entered", outs[pid].entered), ("exited", outs[pid].exited)):
                for sid in ids:
                    changes.setdefault(when[pid], []).append(
                        feed.Change(pid, "segment", detail={"segment": sid, "change": change}))
                    ev = _timeline_event(ident, sid, self.defs[sid].name, change, causes[pid], when[pid])
                    if ev is not None:
                        evs.append(ev)
                        owner[ev.message_id] = pid
        for instant, theirs in changes.items():  # a buffer append each: the feed writes them all at commit
            feed.record(self.conn, ws, theirs, instant)
        if evs:
            source = ws_api.internal_source(self.conn, ws, "internal", "chorus-segments")
            ingest.store(self.conn, source, evs, [], now, owner)


def decide(defs: dict[str, store.Definition], order: list[str], dependents: dict[str, set[str]],
           segment_ids: set[str], person: Person, timers: dict[str, datetime], now: datetime,
           topics: dict | None) -> tuple[Outcome, dict[str, datetime | None]]:  # fmt: skip
    """The pure step of the incremental engine for one person: evaluate ``segment_ids`` in dependency order (and
    the segments referring to one whose answer changed, after it), with ``person.segments`` as her memberships.
    Returns what she entered and exited, and the timers that move (segment id -> next change, None: none); an
    unmoved timer is not rewritten."""
    out = Outcome()
    todo = set(segment_ids) & set(defs)
    inside = set(person.segments)
    moved: dict[str, datetime | None] = {}
    her = Evaluation(person, topics)  # her events picked once per selection, for all the segments
    for sid in order:
        if sid not in todo:
            continue
        res = her.evaluate(defs[sid].rule, now, segments=inside)
        if timers.get(sid) != res.next_change:  # many changes leave it where it was: no write
            moved[sid] = res.next_change
        if res.value == (sid in inside):
            continue
        if res.value:
            inside.add(sid)
            out.entered.append(sid)
        else:
            inside.discard(sid)
            out.exited.append(sid)
        todo |= dependents.get(sid, set())
    return out, moved


def lock_person(conn: Connection, ws: str, pid: str) -> None:
    """One writer of a person's membership at a time (consumer, timers, batch, a deleted segment): her profile row,
    locked until the transaction ends (PostgreSQL; SQLite has one writer). Lockers take people in id order."""
    lock_people(conn, ws, [pid])


def _timeline_event(ident: dict, sid: str, name: str, change: str, cause: str, at: datetime,
                    merged_id: str | None = None) -> Stored | None:  # fmt: skip
    """``merged_id``: the exit is that merged profile's, recorded on its survivor's timeline (its key is in the
    messageId: the survivor's own exit at the same instant is another event)."""
    if not ident:
        return None
    key = ident_key({**ident, "merged_id": merged_id} if merged_id else ident)
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "track", "event": "Segment Entered" if change == "entered" else "Segment Exited",
        "properties": {"segment_id": sid, "segment_name": name, "cause": cause,
                       **({"merged_id": merged_id} if merged_id else {})},
        "context": {**ident.get("context", {}), "channel": "internal", "direction": "outbound"},
        "messageId": f"chorus-segment-{sid}-{change}-{iso(at)}-{key}"[:200], "timestamp": iso(at),
    }  # fmt: skip
    ev = normalise_internal(raw, at=at, received_at=at)
    return ev if isinstance(ev, Stored) else None


def ident_key(ident: dict) -> str:
    import hashlib

    return hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:12]


# -- the change-feed consumer -------------------------------------------------------------------------------------
class Consumer:
    """The ``segments`` change-feed consumer. ``many`` takes a whole claim: per workspace, the people merged away
    leave everything, and the others are evaluated together (``Evaluator.people``: one statement per table for
    all of them, decision 0034); calling it handles one person (the feed's fallback when a claim fails)."""

    def __init__(self, clock: Callable[[], datetime] | None = None):
        self.clock = clock  # None: the module's ``now``, looked up at each claim (tests and simulations replace it)

    def __call__(self, conn: Connection, ws: str, pid: str, changes: list[feed.Delivered]) -> None:
        self.many(conn, {(ws, pid): changes})

    def many(self, conn: Connection, claimed: dict[tuple[str, str], list[feed.Delivered]]) -> None:
        at = (self.clock or now)()
        by_ws: dict[str, dict[str, list[feed.Delivered]]] = {}
        for (ws, pid), changes in claimed.items():
            by_ws.setdefault(ws, {})[pid] = changes
        for ws in sorted(by_ws):  # each workspace's definitions lock before its people's rows, in one order
            ctx = context(conn, ws)  # once per consume transaction, not once per person
            if not ctx.defs:
                continue
            ev = Evaluator(conn, ws, at)
            todo: dict[str, set[str]] = {}
            causes: dict[str, str] = {}
            merged: dict[str, list[tuple[str, str]]] = {}  # survivor -> the memberships merged into her that ended
            for pid, changes in sorted(by_ws[ws].items()):
                into = [c.target_id for c in changes if c.cause == "merge" and c.target_id and c.profile_id == pid
                        and c.target_id != pid]  # fmt: skip
                if into:
                    if left := ev._leave_all(pid, "merge"):
                        # her survivor now, should that one have been merged on since (its aliases are repointed)
                        survivor = views.resolve_ids(conn, ws, [pid]).get(pid, into[-1])
                        merged.setdefault(survivor, []).extend((pid, sid) for sid in left)
                    continue
                todo[pid], causes[pid] = ctx.index.affected(changes), changes[-1].cause
            ev.people(todo, causes, merged=merged)


def consumer(clock: Callable[[], datetime] | None = None) -> Consumer:
    return Consumer(clock)


# -- time ----------------------------------------------------------------------------------------------------------
def due(engine: Engine, limit: int = 500, clock: Callable[[], datetime] | None = None) -> int:
    """Evaluate the people whose answer time alone changes now (their timers are due). One transaction.

    The same lock order as the feed consumer: per workspace (in id order) its definitions lock, then its people's
    profile rows in one statement in id order, skipping those another worker holds (it is evaluating her, and her
    timers are still due at the next pass), then their timers. The people are evaluated together
    (``Evaluator.people``); if that fails, each alone, and a person whose evaluation fails is rolled back alone and
    tried again later: a minute, then twice as long after each failure, a day at most (``store.retry_after``), still
    decided at the instant it first fell due."""
    at = (clock or now)()
    if not any_row(engine, sa.select(segment_timers.c.due_at).where(segment_timers.c.due_at <= at)):
        return 0
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(segment_timers.c.workspace_id, segment_timers.c.profile_id)
            .where(segment_timers.c.due_at <= at)
            .order_by(segment_timers.c.due_at)
            .limit(limit)
        ).all()
        by_ws: dict[str, set[str]] = {}
        for ws, pid in rows:
            by_ws.setdefault(ws, set()).add(pid)
        done = 0
        for ws in sorted(by_ws):  # workspaces in one order: no cycle between two deletions' locks
            pids = sorted(by_ws[ws])
            t = segment_timers.c
            mine = (t.workspace_id == ws, bulk.in_(t.profile_id, pids, conn.dialect.name), t.due_at <= at)
            try:  # the definitions' shared lock before the rows: the lock order of every writer
                ev = Evaluator(conn, ws, at)
            except ChorusError:  # the workspace is being deleted
                store.postpone_timers(conn, mine, at)
                continue
            existing = set(conn.execute(sa.select(profiles.c.id).where(
                profiles.c.workspace_id == ws, bulk.in_(profiles.c.id, pids, conn.dialect.name))).scalars())
            # the people whose profile is gone first, while this holds no profile row: they leave everything, which
            # waits for their rows a consumer may hold, and that consumer may be waiting for a row locked below (the
            # consumer too handles the people merged away before it locks the others)
            done += _due_group(conn, ev, [p for p in pids if p not in existing], at)
            locked = set(lock_people(conn, ws, pids, skip_locked=True)) if existing else set()
            done += _due_group(conn, ev, [p for p in pids if p in locked], at)
    return done


def _due_group(conn: Connection, ev: Evaluator, ours: list[str], at: datetime) -> int:
    """Evaluate these people's due timers together; if that fails, each alone."""
    if not ours:
        return 0
    t = segment_timers.c
    mine = (t.workspace_id == ev.ws.id, bulk.in_(t.profile_id, ours, conn.dialect.name), t.due_at <= at)
    # a timer postponed after a failure is decided at the instant it was first due
    rows = conn.execute(sa.select(t.profile_id, t.segment_id, sa.func.coalesce(t.first_due, t.due_at)).where(
        *mine)).all()  # fmt: skip
    when: dict[str, datetime] = {}
    for pid, _, due_at in rows:
        when[pid] = min(when.get(pid, due_at), due_at)
    # Each person is decided at her earliest due instant, and only for the segments due then: her answer at that
    # instant, dated then. A segment due later stays for a later pass: it may have been decided (by a change of
    # hers) after this instant, and deciding it here would go back in time (an exit before its own entry). A
    # segment's timer is always after its last decision, so deciding it at its timer never does.
    todo: dict[str, set[str]] = {}
    for pid, sid, due_at in rows:
        if due_at == when[pid]:
            todo.setdefault(pid, set()).add(sid)
    pairs = sorted((pid, sid) for pid, sids in todo.items() for sid in sids)
    _not_before_recorded(conn, ev, todo, when)
    try:
        with conn.begin_nested():
            conn.execute(segment_timers.delete().where(  # evaluating sets the next ones
                t.workspace_id == ev.ws.id, bulk.pairs_in(t.profile_id, t.segment_id, pairs, conn.dialect.name)))
            ev.people(todo, dict.fromkeys(todo, "timer"), when)
        return len(pairs)
    except Exception as exc:  # noqa: BLE001 - each person alone, below
        feed.reraise_transient(exc)
        log.warning("segment timers of %d people failed together; evaluated one by one: %s", len(todo), exc)
        metrics.feed_bulk_fallbacks.labels("segment_timers").inc()
        return _due_one_by_one(conn, ev, todo, at, when)


def _not_before_recorded(conn: Connection, ev: Evaluator, todo: dict[str, set[str]],
                         when: dict[str, datetime]) -> None:  # fmt: skip
    """Move a person's instant up to the last change recorded for her in a segment this evaluation can touch: the
    due segments and, transitively, the segments referring to them. A due segment's own timer always lies after
    its last decision, but a segment referring to it may have been decided since (by a change of hers, reading
    the due segment's membership before its timer fired): deciding it back at the timer's instant would date its
    change before one already recorded, and a journey would be given it as having happened before she entered."""
    reach: dict[str, set[str]] = {}
    for pid, sids in todo.items():
        out, stack = set(), list(sids)
        while stack:
            sid = stack.pop()
            if sid not in out:
                out.add(sid)
                stack.extend(ev.dependents.get(sid, ()))
        reach[pid] = out
    last = store.last_changes(conn, ev.ws.id, sorted(todo), sorted(set().union(*reach.values())))
    for (pid, sid), t in last.items():
        if sid in reach[pid] and t > when[pid]:
            when[pid] = t


def _due_one_by_one(conn: Connection, ev: Evaluator, todo: dict[str, set[str]], at: datetime,
                    when: dict[str, datetime]) -> int:  # fmt: skip
    done = 0
    for pid, sids in sorted(todo.items()):
        t = segment_timers.c
        hers = (t.workspace_id == ev.ws.id, t.profile_id == pid, t.segment_id.in_(sorted(sids)), t.due_at <= at)
        try:
            with conn.begin_nested():
                conn.execute(segment_timers.delete().where(*hers))
                ev.person(pid, sids, "timer", when[pid])
            done += len(sids)
        except Exception:  # noqa: BLE001 - one person must not stop time for everybody
            log.exception("segment timers of profile %s failed; tried again later (store.retry_after)", pid)
            store.postpone_timers(conn, hers, at)
    return done



# -- batch -----------------------------------------------------------------------------------------------------------
@dataclass
class BatchStep:
    """What one batch step did: the segments it computed a chunk of (dependency order), who entered and left each,
    and those it finished (``computed_version`` set)."""

    segments: list[str] = field(default_factory=list)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    computed: list[str] = field(default_factory=list)


def batch_step(engine: Engine, ws_id: str, segment_id: str, chunk: int = 500,
               clock: Callable[[], datetime] | None = None, *,
               compiled: bool = True) -> tuple[Outcome, bool]:  # fmt: skip
    """One chunk of one segment's batch computation (profiles in id order after the saved cursor), at the current
    instant, whether its rule is pending or not (a recompute on demand); returns the people who entered and left,
    and whether the computation is complete. The segment row is locked for the step (one step of a segment at a
    time), and a cursor left by an older version of the rule is started again from the beginning.

    The chunk is computed by the SQL compiler after its profile rows are locked (``segments.batch``), applied with
    the incremental path's writes; a rule or a chunk the compiler fails on is evaluated person by person (as is
    every chunk with ``compiled=False``: the baseline of ``bench/segments_batch.py``)."""
    step = _step(engine, ws_id, segment_id, chunk, clock, compiled)
    return step.outcomes.get(segment_id, Outcome()), not step.segments or segment_id in step.computed


def batch_many(engine: Engine, ws_id: str, chunk: int = 500, clock: Callable[[], datetime] | None = None, *,
               compiled: bool = True) -> BatchStep:  # fmt: skip
    """One chunk of the workspace's pending segments (new or changed rules) together: one ``members_many`` query
    for all of those whose cursor is the furthest behind (``batch.together``), applied and timed as
    :func:`batch_step` does for one. Each segment keeps its own cursor: one behind the others (a rule changed
    mid-pass starts again) is computed alone, its chunk cut at the next cursor ahead, until it reaches it and
    joins them. An empty ``segments``: nothing is pending."""
    return _step(engine, ws_id, None, chunk, clock, compiled)


def _pending():
    """A segment whose rule is new or changed since its last complete batch."""
    from chorus.store.tables import segments

    return sa.or_(segments.c.computed_version.is_(None), segments.c.computed_version != segments.c.version)


def _step(engine: Engine, ws_id: str, only: str | None, chunk: int, clock: Callable[[], datetime] | None,
          compiled: bool) -> BatchStep:  # fmt: skip
    """A batch step of ``only`` (one segment, pending or not) or of the workspace's pending segments. Lock order:
    the definitions (shared), the segment rows (id order), the chunk's profile rows (id order)."""
    from chorus.store.tables import segment_members, segments

    at = (clock or now)()
    step = BatchStep()
    with engine.begin() as conn:
        store.lock_definitions(conn, ws_id, shared=True)  # before the segment rows: a deletion's order
        q = sa.select(segments).where(segments.c.workspace_id == ws_id,
                                      segments.c.id == only if only is not None else _pending())
        q = q.order_by(segments.c.id)
        # FOR UPDATE re-checks a row changed meanwhile against "pending": one computed by another worker drops out
        rows = conn.execute(q.with_for_update() if conn.dialect.name == "postgresql" else q).all()
        if not rows:
            return step
        # a cursor left by an older version of the rule starts again from the beginning
        cursor = {row.id: row.batch_after if row.batch_version == row.version else None for row in rows}
        version = {row.id: row.version for row in rows}
        first = min(cursor.values(), key=lambda c: (c is not None, c or ""))
        ev = Evaluator(conn, ws_id, at)
        behind = [sid for sid, c in cursor.items() if c == first]
        group = batch.together({sid: d.inputs.segments for sid, d in ev.defs.items()}, behind)
        step.segments = [sid for sid in ev.order if sid in group]
        step.outcomes = {sid: Outcome() for sid in step.segments}
        # the next cursor ahead: the chunk stops there, so that those behind reach it and go on with those ahead
        upto = min((c for sid, c in cursor.items() if c is not None and c != first), default=None)
        ids = batch.lock_chunk(conn, ws_id, first, chunk, upto)  # the people's rows before reading anything of them

        def move(after: str | None, done: bool = False) -> None:
            for sid in step.segments:
                values = {"batch_after": after, "batch_version": None if done else version[sid]}
                if done:
                    values.update(computed_version=version[sid], computed_at=at)
                conn.execute(segments.update().where(segments.c.workspace_id == ws_id, segments.c.id == sid)
                             .values(**values))  # fmt: skip

        if ids:
            if not compiled:
                for sid in step.segments:
                    _batch_people(conn, ev, sid, ids, step.outcomes[sid])
            elif len(step.segments) == 1:
                _batch_chunk(conn, ev, step.segments[0], ids, first, step.outcomes[step.segments[0]])
            else:
                _batch_group(conn, ev, step.segments, ids, first, step.outcomes)
            move(ids[-1])
            return step
        if upto is not None:  # nobody between them and the cursor ahead: they are there
            move(upto)
            return step
        # done: members whose profile is gone (merged, erased) while nobody told the segments. All the group's
        # in one statement in (person, segment) order, the order Evaluator._leave_all deletes one gone person's
        # rows in: segment by segment, each in the order its rows came, was a deadlock cycle with it (review)
        # (locked in that order by the read, PostgreSQL: the delete's own order would be its plan's)
        sm = segment_members.c
        q = sa.select(sm.profile_id, sm.segment_id).where(
            sm.workspace_id == ws_id, sm.segment_id.in_(step.segments),
            ~sa.exists().where(profiles.c.id == sm.profile_id)).order_by(sm.profile_id, sm.segment_id)  # fmt: skip
        gone = conn.execute(q.with_for_update(of=segment_members) if conn.dialect.name == "postgresql" else q).all()
        left = store.leave_many(conn, ws_id, [(pid, sid, "batch") for pid, sid in gone], at)
        feed.record(conn, ws_id, [feed.Change(pid, "segment", detail={"segment": sid, "change": "exited"})
                                  for pid, sid in gone if (pid, sid) in left], at)  # fmt: skip
        for pid, sid in gone:
            if (pid, sid) in left:
                step.outcomes[sid].exited.append(pid)
        move(None, done=True)
        step.computed = list(step.segments)
        return step


def _batch_group(conn: Connection, ev: Evaluator, order: list[str], ids: list[str], after: str | None,
                 outs: dict[str, Outcome]) -> None:  # fmt: skip
    """The chunk of several segments by one compiled query (``batch.compute_many``); each person's entries and
    exits of all of them applied at once, then the segments outside the group that refer to those she changed
    (none of the group's: ``batch.together``). If the query fails, each segment alone, as :func:`_batch_chunk`."""
    try:
        with conn.begin_nested():  # a failing query leaves nothing behind it
            found = batch.compute_many(conn, ev, order, ids, after, ev.now)
    except Exception as exc:  # noqa: BLE001 - one segment at a time can still do them
        feed.reraise_transient(exc)
        log.exception("segments %s: the compiled batch of them together failed for profiles after %r; "
                      "computed one at a time", ", ".join(order), after)  # fmt: skip
        for sid in order:  # dependency order: each reads the members the ones before it have just written
            _batch_chunk(conn, ev, sid, ids, after, outs[sid])
        return
    for sid in order:
        batch.set_timers(conn, ev.ws.id, sid, ids, found[sid][2])
    people = sorted(set().union(*(found[sid][0] | found[sid][1] for sid in order)))
    results = {pid: Outcome(entered=[s for s in order if pid in found[s][0]],
                            exited=[s for s in order if pid in found[s][1]]) for pid in people}  # fmt: skip
    for pid, res in _apply_chunk(conn, ev, results, set(order)).items():
        for sid in res.entered:
            outs[sid].entered.append(pid)
        for sid in res.exited:
            outs[sid].exited.append(pid)


def _apply_chunk(conn: Connection, ev: Evaluator, results: dict[str, Outcome], group: set[str]) -> dict[str, Outcome]:
    """Apply a chunk's diffs (profile id -> the segments of ``group`` she entered and left), then evaluate, as the
    incremental path does, the segments outside ``group`` that refer to one she moved in. All the people at once
    (``Evaluator.apply_many``, ``Evaluator.people``: decision 0034); if that fails, person by person, and a person
    who fails is retried by a timer. Returns what was applied, per person (her real changes)."""

    def follow(res: Outcome) -> set[str]:
        return set().union(*(ev.dependents.get(s, ()) for s in res.entered + res.exited)) - group

    fresh = {pid: Outcome(list(o.entered), list(o.exited)) for pid, o in results.items()}
    try:
        with conn.begin_nested():
            ev.apply_many(fresh, dict.fromkeys(fresh, "batch"))  # narrows them to the rows that really changed
            todo = {pid: f for pid, o in results.items() if (f := follow(o))}
            if todo:
                ev.people(todo, dict.fromkeys(todo, "batch"))
        return fresh
    except Exception as exc:  # noqa: BLE001 - each person alone, below
        feed.reraise_transient(exc)
        log.warning("segments %s: a chunk's %d changed people could not be applied together; one by one: %s",
                    ", ".join(sorted(group)), len(results), exc)  # fmt: skip
        metrics.feed_bulk_fallbacks.labels("segment_batch").inc()
    applied: dict[str, Outcome] = {}
    for pid, o in sorted(results.items()):
        res = Outcome(list(o.entered), list(o.exited))
        try:
            with conn.begin_nested():
                ev._apply(pid, res, "batch")
                if f := follow(o):
                    ev.person(pid, f, "batch")
        except Exception as exc:  # noqa: BLE001 - one person must not stop the segments
            feed.reraise_transient(exc)
            log.exception("segments %s: profile %s could not be applied; retried by a timer",
                          ", ".join(o.entered + o.exited), pid)  # fmt: skip
            for sid in o.entered + o.exited:
                store.set_timer(conn, ev.ws.id, sid, pid, ev.now + timedelta(minutes=1))
            continue
        applied[pid] = res
    return applied


def _batch_chunk(conn: Connection, ev: Evaluator, segment_id: str, ids: list[str], after: str | None,
                 out: Outcome) -> None:  # fmt: skip
    """The chunk by the compiler (one query for its span); on failure, the same chunk person by person."""
    try:
        with conn.begin_nested():  # a failing query leaves nothing behind it
            entered, exited, due = batch.compute(conn, ev, segment_id, ids, after, ev.now)
    except Exception as exc:  # noqa: BLE001 - the evaluator can do every rule
        feed.reraise_transient(exc)
        log.exception("segment %s: the compiled batch failed for profiles after %r; evaluated one by one",
                      segment_id, after)  # fmt: skip
        _batch_people(conn, ev, segment_id, ids, out)
        return
    batch.set_timers(conn, ev.ws.id, segment_id, ids, due)
    results = {pid: Outcome(entered=[segment_id] if pid in entered else [],
                            exited=[segment_id] if pid in exited else []) for pid in sorted(entered | exited)}
    for pid, res in _apply_chunk(conn, ev, results, {segment_id}).items():
        out.entered += [pid] if segment_id in res.entered else []
        out.exited += [pid] if segment_id in res.exited else []


def _batch_people(conn: Connection, ev: Evaluator, segment_id: str, ids: list[str], out: Outcome) -> None:
    """The chunk evaluated person by person with the reference evaluator (the fallback, and the baseline of
    bench/segments_batch.py)."""
    for pid in ids:
        try:
            with conn.begin_nested():
                res = ev.person(pid, {segment_id}, "batch")
        except Exception as exc:  # noqa: BLE001 - one person must not stop the segment
            feed.reraise_transient(exc)  # the database busy or gone: the whole step is retried
            log.exception("segment %s: profile %s could not be evaluated; retried by a timer", segment_id, pid)
            store.set_timer(conn, ev.ws.id, segment_id, pid, ev.now + timedelta(minutes=1))
            continue
        out.entered += [pid] if segment_id in res.entered else []
        out.exited += [pid] if segment_id in res.exited else []


def recompute(engine: Engine, ws_id: str, segment_id: str, clock: Callable[[], datetime] | None = None,
              chunk: int = 500) -> Outcome:  # fmt: skip
    """Compute a segment for everybody now (every chunk) and apply the difference with its members as entries and
    exits (cause ``batch``), with the same rows, events and feed changes as the incremental path. Returns the
    people who entered and left."""
    from chorus.store.tables import segments

    with engine.begin() as conn:
        store.get(conn, ws_id, segment_id)
        conn.execute(segments.update().where(segments.c.workspace_id == ws_id, segments.c.id == segment_id)
                     .values(batch_after=None, batch_version=None))  # fmt: skip
    total = Outcome()
    while True:
        out, complete = batch_step(engine, ws_id, segment_id, chunk, clock)
        total.entered += out.entered
        total.exited += out.exited
        if complete:
            return total


def recompute_pending(engine: Engine, ws_id: str, clock: Callable[[], datetime] | None = None,
                      chunk: int = 500) -> dict[str, Outcome]:  # fmt: skip
    """Every pending segment of the workspace computed now, together (:func:`batch_many` until none is left): what
    the worker's batch task does one step per pass. Returns the people who entered and left, per segment."""
    total: dict[str, Outcome] = {}
    while True:
        step = batch_many(engine, ws_id, chunk, clock)
        if not step.segments:
            return total
        for sid, out in step.outcomes.items():
            t = total.setdefault(sid, Outcome())
            t.entered += out.entered
            t.exited += out.exited


def pending_batches(engine: Engine) -> list[tuple[str, str]]:
    """(workspace, segment) of every pending segment, the longest waiting first."""
    from chorus.store.tables import segments

    with read_only(engine) as conn:  # on SQLite without the write lock: batch_many locks what it computes
        return [(w, s) for w, s in conn.execute(sa.select(segments.c.workspace_id, segments.c.id).where(_pending())
                                                .order_by(segments.c.updated_at)).all()]  # fmt: skip


class BatchTask:
    """Computes, in the worker, the segments whose rule is new or changed: one chunk of the pending segments of one
    workspace (that of the longest waiting) per pass, all of them in one query (:func:`batch_many`), so that
    resolution, the feed and delivery run in between."""

    def __init__(self, engine: Engine, options=None):
        self.engine = engine

    def run_once(self) -> int:
        todo = pending_batches(self.engine)
        if not todo:
            return 0
        step = batch_many(self.engine, todo[0][0])
        for sid in step.computed:
            log.info("segment %s computed", sid)
        if not step.segments:  # another worker finished them meanwhile
            return 0
        return 1 + sum(len(o.entered) + len(o.exited) for o in step.outcomes.values())

    def close(self) -> None:
        pass


DROP_CHUNK = 1000  # members taken out of a deleted segment per statement


def drop(engine: Engine, ws_id: str, segment_id: str, clock: Callable[[], datetime] | None = None,
         registry: Registry | None = None) -> int:  # fmt: skip
    """Delete a segment: its members leave it first (cause ``deleted``: history, timeline events and feed
    changes, so that journeys see them go), then the definition goes. 409 while anything uses it: another segment,
    a journey or broadcast that can still send, an audience that follows it (:func:`store.refuse_in_use`)."""
    from chorus.store.tables import segment_members

    at = (clock or now)()
    with engine.begin() as conn:
        store.lock_definitions(conn, ws_id)
        d = store.get(conn, ws_id, segment_id)
        store.refuse_in_use(conn, ws_id, segment_id, registry)  # before anybody leaves it
        ev = Evaluator(conn, ws_id, at)
        left = 0
        everyone = sorted(store.members(conn, ws_id, segment_id))
        for i in range(0, len(everyone), DROP_CHUNK):
            chunk = everyone[i : i + DROP_CHUNK]
            lock_people(conn, ws_id, chunk)  # the consumer or an erasure may be writing their rows; in id order
            outs = {pid: Outcome(exited=[d.id]) for pid in chunk}
            ev.apply_many(outs, dict.fromkeys(chunk, "deleted"))
            left += sum(len(o.exited) for o in outs.values())
        conn.execute(segment_members.delete().where(segment_members.c.workspace_id == ws_id,
                                                    segment_members.c.segment_id == segment_id))  # fmt: skip
        store.delete(conn, ws_id, segment_id)
    return left
