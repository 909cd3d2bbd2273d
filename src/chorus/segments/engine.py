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
- **Batch** (:func:`recompute`): a segment whose rule is new or changed is computed for everybody and applied as
  a diff that writes the same rows and events.

On PostgreSQL the person's profile row is locked while she is evaluated, so the consumer, the timer task and a
batch never write one person's membership at the same time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event as Stored
from chorus.collect.messages import normalise
from chorus.messaging.consent import identity_fields
from chorus.profiles import feed, views
from chorus.segments import rules as r
from chorus.segments import store
from chorus.segments.evaluate import evaluate
from chorus.segments.person import Event, MessageRecord, Person
from chorus.store.tables import computed_traits, events, message_status, messages, profiles, segment_timers
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


def affected(defs: dict[str, store.Definition], changes: Iterable[feed.Delivered]) -> set[str]:
    out: set[str] = set()
    for c in changes:
        for sid, d in defs.items():
            i = d.inputs
            if (
                c.cause in STRUCTURAL
                or (c.cause == "event" and _reads_events(i))
                or (c.cause == "consent" and (i.consent or i.traits))
                or (c.cause == "computed" and i.computed)
                or (c.cause == "message" and i.messages)
                or (c.cause == "segment" and c.detail.get("segment") in i.segments)
                or (c.cause == "list" and c.detail.get("list") in i.lists)
            ):
                out.add(sid)
    return out


def _order(defs: dict[str, store.Definition]) -> list[str]:
    return r.check_references({sid: d.rule for sid, d in defs.items()})


def _dependents(defs: dict[str, store.Definition]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for sid, d in defs.items():
        for ref in d.inputs.segments:
            out.setdefault(ref, set()).add(sid)
    return out


# -- the person, as evaluate reads her ----------------------------------------------------------------------------
def load_person(conn: Connection, ws: ws_api.Workspace, pid: str, *, with_events: bool = True) -> Person | None:
    """The person from the store, or None when ``pid`` is no longer a profile."""
    row = conn.execute(
        sa.select(profiles.c.state).where(profiles.c.workspace_id == ws.id, profiles.c.id == pid)
    ).first()
    if row is None:
        return None
    view = views.get_profiles(conn, ws.id, [pid], ws.identity).get(pid) or {}
    computed = dict(conn.execute(sa.select(computed_traits.c.name, computed_traits.c.value).where(
        computed_traits.c.workspace_id == ws.id, computed_traits.c.profile_id == pid)).all())  # fmt: skip
    evs: tuple[Event, ...] = ()
    if with_events:
        evs = tuple(Event.from_payload(p) for p in conn.execute(
            sa.select(events.c.payload).where(events.c.workspace_id == ws.id, events.c.profile_id == pid)
            .order_by(events.c.timestamp, events.c.seq)).scalars())  # fmt: skip
    msgs = tuple(
        MessageRecord(m.id, m.status, m.at, m.channel, m.template, m.journey_id, m.campaign_id, m.topic)
        for m in conn.execute(
            sa.select(messages.c.id, message_status.c.status, message_status.c.at, messages.c.channel,
                      messages.c.template, messages.c.journey_id, messages.c.campaign_id, messages.c.topic)
            .join(message_status, message_status.c.message_id == messages.c.id)
            .where(messages.c.workspace_id == ws.id, messages.c.profile_id == pid)
        )
    )  # fmt: skip
    return Person(
        id=pid, state=row.state, computed=computed,
        addresses={ch: tuple(a) for ch, a in (view.get("addresses") or {}).items()},
        events=evs, messages=msgs, segments=frozenset(store.memberships(conn, ws.id, pid)),
        lists=frozenset(store.lists_of(conn, ws.id, pid)),
    )  # fmt: skip


# -- evaluating one person ----------------------------------------------------------------------------------------
class Evaluator:
    """Evaluates people of one workspace; keeps what does not change between them (definitions, settings)."""

    def __init__(self, conn: Connection, ws_id: str, now: datetime):
        self.conn, self.now = conn, now
        self.ws = ws_api.get(conn, ws_id)
        self.defs = store.definitions(conn, ws_id)
        self.order = _order(self.defs) if self.defs else []
        self.dependents = _dependents(self.defs)
        self.topics = (self.ws.settings.get("messaging") or {}).get("topics")

    def person(self, pid: str, segment_ids: set[str], cause: str) -> Outcome:
        """Evaluate ``segment_ids`` (and what refers to them, when they change) for ``pid``; apply the diff."""
        out = Outcome()
        if not segment_ids or not self.defs:
            return out
        ws = self.ws.id
        if self.conn.dialect.name == "postgresql":  # one writer of her membership at a time (consumer, timers, batch)
            self.conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == ws, profiles.c.id == pid)
                              .with_for_update())  # fmt: skip
        person = load_person(self.conn, self.ws, pid)
        if person is None:  # merged away or erased: she is in nothing any more
            self._leave_all(pid, cause)
            return out
        todo = set(segment_ids) & set(self.defs)
        inside = set(person.segments)
        for sid in self.order:
            if sid not in todo:
                continue
            res = evaluate(self.defs[sid].rule, _with(person, inside), self.now, topics=self.topics)
            store.set_timer(self.conn, ws, sid, pid, res.next_change)
            if res.value == (sid in inside):
                continue
            if res.value:
                inside.add(sid)
                out.entered.append(sid)
            else:
                inside.discard(sid)
                out.exited.append(sid)
            todo |= self.dependents.get(sid, set())
        self._apply(pid, out, cause, person)
        return out

    def _leave_all(self, pid: str, cause: str) -> None:
        was = store.memberships(self.conn, self.ws.id, pid)
        self.conn.execute(segment_timers.delete().where(segment_timers.c.workspace_id == self.ws.id,
                                                        segment_timers.c.profile_id == pid))  # fmt: skip
        for sid in sorted(was):
            store.leave(self.conn, self.ws.id, sid, [pid], self.now, cause)

    def _apply(self, pid: str, out: Outcome, cause: str, person: Person) -> None:
        ws, now = self.ws.id, self.now
        if not out.entered and not out.exited:
            return
        for sid in out.entered:
            store.enter(self.conn, ws, sid, [pid], now, cause)
        for sid in out.exited:
            store.leave(self.conn, ws, sid, [pid], now, cause)
        changes, evs = [], []
        profile = {"id": pid, "identifiers": views.get_profiles(self.conn, ws, [pid], self.ws.identity)
                   .get(pid, {}).get("identifiers", {})}  # fmt: skip
        ident = identity_fields(profile)
        for change, ids in (("entered", out.entered), ("exited", out.exited)):
            for sid in ids:
                changes.append(feed.Change(pid, "segment", detail={"segment": sid, "change": change}))
                ev = _timeline_event(ident, sid, self.defs[sid].name, change, cause, now)
                if ev is not None:
                    evs.append(ev)
        feed.record(self.conn, ws, changes, now)
        if evs:
            source = ws_api.internal_source(self.conn, ws, "internal", "chorus-segments")
            ingest.store(self.conn, source, evs, [], now, {e.message_id: pid for e in evs})


def _with(person: Person, inside: set[str]) -> Person:
    if person.segments == inside:
        return person
    from dataclasses import replace

    return replace(person, segments=frozenset(inside))


def _timeline_event(ident: dict, sid: str, name: str, change: str, cause: str, at: datetime) -> Stored | None:
    if not ident:
        return None
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "track", "event": "Segment Entered" if change == "entered" else "Segment Exited",
        "properties": {"segment_id": sid, "segment_name": name, "cause": cause},
        "context": {**ident.get("context", {}), "channel": "internal", "direction": "outbound"},
        "messageId": f"chorus-segment-{sid}-{change}-{iso(at)}-{ident_key(ident)}"[:200], "timestamp": iso(at),
    }  # fmt: skip
    ev = normalise(raw, received_at=at, source_kind="internal", require_ids=False)
    return ev if isinstance(ev, Stored) else None


def ident_key(ident: dict) -> str:
    import hashlib

    return hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:12]


# -- the change-feed consumer -------------------------------------------------------------------------------------
def consumer(clock: Callable[[], datetime] | None = None):
    def handle(conn: Connection, ws: str, pid: str, changes: list[feed.Delivered]) -> None:
        if any(c.cause == "erased" for c in changes):
            return  # her rows went with the erasure (store.forget)
        defs = store.definitions(conn, ws)
        if not defs:
            return
        ev = Evaluator(conn, ws, (clock or now)())
        merged_away = [c for c in changes if c.cause == "merge" and c.target_id and c.profile_id == pid
                       and c.target_id != pid]  # fmt: skip
        if merged_away:
            ev._leave_all(pid, "merge")
            return
        ev.person(pid, affected(defs, changes), changes[-1].cause)

    return handle


# -- time ----------------------------------------------------------------------------------------------------------
def due(engine: Engine, limit: int = 500, clock: Callable[[], datetime] | None = None) -> int:
    """Evaluate the people whose answer time alone changes now (their timers are due). One transaction."""
    at = (clock or now)()
    with engine.begin() as conn:
        q = (
            sa.select(segment_timers.c.workspace_id, segment_timers.c.segment_id, segment_timers.c.profile_id)
            .where(segment_timers.c.due_at <= at)
            .order_by(segment_timers.c.due_at)
            .limit(limit)
        )
        if conn.dialect.name == "postgresql":
            q = q.with_for_update(skip_locked=True)
        rows = conn.execute(q).all()
        by_person: dict[tuple[str, str], set[str]] = {}
        for ws, sid, pid in rows:
            by_person.setdefault((ws, pid), set()).add(sid)
        evaluators: dict[str, Evaluator] = {}
        for (ws, pid), sids in sorted(by_person.items()):
            for sid in sids:  # a timer fires once; evaluating sets the next one
                store.set_timer(conn, ws, sid, pid, None)
            ev = evaluators.get(ws) or evaluators.setdefault(ws, Evaluator(conn, ws, at))
            ev.person(pid, sids, "timer")
    return len(rows)


class TimerTask:
    def __init__(self, engine: Engine, options=None):
        self.engine = engine

    def run_once(self) -> int:
        return due(self.engine)

    def close(self) -> None:
        pass


# -- batch -----------------------------------------------------------------------------------------------------------
def recompute(engine: Engine, ws_id: str, segment_id: str, clock: Callable[[], datetime] | None = None,
              chunk: int = 500) -> Outcome:  # fmt: skip
    """Compute a segment for everybody in the workspace and apply the difference with its members as entries and
    exits (cause ``batch``), with the same rows, events and feed changes as the incremental path."""
    at = (clock or now)()
    total = Outcome()
    after = ""
    with engine.connect() as conn:
        version = store.get(conn, ws_id, segment_id).version
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(
                sa.select(profiles.c.id).where(profiles.c.workspace_id == ws_id, profiles.c.id > after)
                .order_by(profiles.c.id).limit(chunk)).scalars())  # fmt: skip
            if not ids:
                store.mark_computed(conn, ws_id, segment_id, version, at)
                break
            ev = Evaluator(conn, ws_id, at)
            for pid in ids:
                out = ev.person(pid, {segment_id}, "batch")
                total.entered += out.entered
                total.exited += out.exited
            after = ids[-1]
    with engine.begin() as conn:  # members whose profile is gone (merged, erased) while nobody told the segment
        gone = store.members(conn, ws_id, segment_id) - set(conn.execute(
            sa.select(profiles.c.id).where(profiles.c.workspace_id == ws_id)).scalars())  # fmt: skip
        if gone:
            store.leave(conn, ws_id, segment_id, sorted(gone), at, "batch")
    return total


def pending_batches(engine: Engine) -> list[tuple[str, str]]:
    from chorus.store.tables import segments

    with engine.connect() as conn:
        return [(w, s) for w, s in conn.execute(sa.select(segments.c.workspace_id, segments.c.id).where(
            sa.or_(segments.c.computed_version.is_(None), segments.c.computed_version != segments.c.version))
            .order_by(segments.c.updated_at)).all()]  # fmt: skip


class BatchTask:
    """Computes, in the worker, the segments whose rule is new or changed."""

    def __init__(self, engine: Engine, options=None):
        self.engine = engine

    def run_once(self) -> int:
        done = 0
        for ws, sid in pending_batches(self.engine)[:1]:  # one per pass: the other tasks run in between
            out = recompute(self.engine, ws, sid)
            log.info("segment %s computed: %d entered, %d exited", sid, len(out.entered), len(out.exited))
            done += 1
        return done

    def close(self) -> None:
        pass
