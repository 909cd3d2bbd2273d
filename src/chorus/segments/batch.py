"""A segment computed in batch, one chunk of profiles at a time, by the SQL compiler (``compile.py``).

A chunk is a span of profile ids ``(after, last]``, locked first (PostgreSQL: the chunk's profile rows in id order,
the lock order of every writer of memberships). Then, and only then, the compiled query is run for that span, so
that it reads what was committed before the locks were held (READ COMMITTED): a person the consumer evaluated
meanwhile is read with what it read, never with an older answer. The answer is applied as a difference with the
span's members through ``Evaluator._apply`` (the incremental path's rows, history, timeline events and feed
changes), and the segments that refer to this one are evaluated for the people whose membership changed, as the
incremental path does.

Timers: the evaluator keeps, per person and segment, the next instant time alone changes the answer. The batch
leaves the same: the people whose answer *can* change by time alone are found in SQL (:func:`timed_candidates`, a
superset: they have an event, a message or a trait that a time-dependent condition reads), and only they are
evaluated, to get their exact ``next_change``; everybody else in the chunk has none. Decision 0031.

Several pending segments of a workspace are computed together (:func:`compute_many`, decision 0027): one
``many.members_many`` query for the span answers all of them, a reference from one to another reading the other's
new answer; :func:`together` keeps out a segment that reaches one of them only through a segment outside the group.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.segments import compile as sql
from chorus.segments import load
from chorus.segments import rules as r
from chorus.segments.evaluate import Evaluation, evaluate
from chorus.segments.needs import ALL, Needs, _window
from chorus.segments.needs import needs as needs_of
from chorus.store import bulk
from chorus.store.tables import (
    events,
    message_status,
    messages,
    profile_aliases,
    profiles,
    segment_members,
    segment_timers,
)

if TYPE_CHECKING:
    from chorus.segments.engine import Evaluator

log = logging.getLogger("chorus.segments")
Span = tuple[str | None, str]


def lock_chunk(conn: Connection, ws: str, after: str | None, size: int, upto: str | None = None) -> list[str]:
    """The next ``size`` profile ids after ``after`` (and not past ``upto``), in id order; on PostgreSQL their rows
    are locked (in that order: rows are locked as the ordered scan returns them) until the transaction ends."""
    q = (sa.select(profiles.c.id).where(profiles.c.workspace_id == ws, profiles.c.id > (after or ""),
                                        *([profiles.c.id <= upto] if upto is not None else []))
         .order_by(profiles.c.id).limit(size))  # fmt: skip
    return list(conn.execute(q.with_for_update() if conn.dialect.name == "postgresql" else q).scalars())


def in_span(col, span: Span):
    after, last = span
    return sa.and_(col > after if after is not None else sa.true(), col <= last)


# -- membership -------------------------------------------------------------------------------------------------------
def members_in(conn: Connection, ev: Evaluator, segment_id: str, span: Span, at: datetime) -> set[str]:
    """The compiled rule's answer for the profiles of ``span`` (read now: call it after the chunk's locks)."""
    rule = ev.defs[segment_id].rule
    zones = zones_in(conn, ev.ws.id, span) if sql.needs_zones(rule) else []
    q = sql.members_query(rule, ev.ws.id, at, dialect=conn.dialect.name, topics=ev.topics, zones=zones,
                          zone_default=ev.ws.timezone,
                          identity=ev.ws.identity, span=span)  # fmt: skip
    return q.run(conn)


def zones_in(conn: Connection, ws: str, span: Span) -> list[str | None]:
    """The time zone attributes of the span's profiles (``compile.zones_of`` for a span: it reads the chunk only)."""
    key = sql.zone_key(profiles.c.state, conn.dialect.name)
    return list(conn.execute(sa.select(key).where(profiles.c.workspace_id == ws, in_span(profiles.c.id, span))
                             .distinct()).scalars())  # fmt: skip


def current(conn: Connection, ws: str, segment_id: str, span: Span) -> set[str]:
    return current_many(conn, ws, [segment_id], span)[segment_id]


def current_many(conn: Connection, ws: str, segment_ids: list[str], span: Span) -> dict[str, set[str]]:
    """The stored members of each segment among the span's profiles (one statement for all of them)."""
    sm = segment_members.c
    out: dict[str, set[str]] = {sid: set() for sid in segment_ids}
    for sid, pid in conn.execute(sa.select(sm.segment_id, sm.profile_id).where(
            sm.workspace_id == ws, sm.segment_id.in_(segment_ids), in_span(sm.profile_id, span))):  # fmt: skip
        out[sid].add(pid)
    return out


# -- timers -----------------------------------------------------------------------------------------------------------
def _relative(test: r.Test) -> bool:
    return test.op in r.RELATIVE_DATE_OPS or test.op == "anniversary"


def _horizon(win: r.Window, now: datetime) -> datetime:
    """The earliest event time that can still change a windowed answer as time passes: an event in a rolling
    window leaves it, one in a dated window counts until its end; without a window only an event stamped later
    than now (it starts to count at its time)."""
    return now if win == r.Window() else _window(win, now)


def timed_reads(rule: r.Node, now: datetime) -> tuple[Needs, list[str]]:
    """What the rule's time-dependent conditions read, from which instant on (a ``Needs``), and the traits read by
    a relative date test. A person with none of it has no ``next_change``: every other condition is constant in
    time, and ``and``/``or``/``not`` change only when a child does."""
    names: dict[str, datetime] = {}
    types: dict[str, datetime] = {}
    every: list[datetime] = []
    msgs: list[datetime] = []
    traits: list[str] = []

    def earlier(into: dict, key: str, at: datetime) -> None:
        into[key] = min(into.get(key, at), at)

    for n, _ in r.walk(rule):
        if isinstance(n, r.Trait) and _relative(n.test):
            traits.append(n.name)
        elif isinstance(n, r.Performed | r.Aggregate | r.LastValue | r.EventTime):
            sel = n.selection
            if isinstance(n, r.EventTime):  # no window: the first or last time moves only by a new event
                h = ALL if _relative(n.test) else now
            elif isinstance(n, r.LastValue) and _relative(n.test):  # the newest value's date ages
                h = _window(sel.window, now)
            else:  # ``where`` tests are read at the start of time: constant
                h = _horizon(sel.window, now)
            if sel.event is not None:
                earlier(names, sel.event, h)
            elif sel.type is not None:
                earlier(types, sel.type, h)
            else:
                every.append(h)
        elif isinstance(n, r.UsedChannel | r.ChannelCount | r.ChannelMix):
            every.append(_horizon(n.window, now))
        elif isinstance(n, r.LastChannel):
            every.append(now)
        elif isinstance(n, r.Message):
            msgs.append(_horizon(n.window, now))
    return Needs(names, types, min(every, default=None), min(msgs, default=None)), traits


def timed_candidates(conn: Connection, ws: str, rule: r.Node, at: datetime, span: Span) -> set[str]:
    """A superset of the span's profiles whose answer to ``rule`` can change by time alone after ``at`` (see
    :func:`timed_reads`): a few indexed probes, no evaluation."""
    if not r.dependencies(rule).timed:
        return set()
    reads, traits = timed_reads(rule, at)
    found: set[str] = set()
    if reads.events:
        e = events
        found |= set(conn.execute(sa.select(e.c.profile_id).where(
            e.c.workspace_id == ws, in_span(e.c.profile_id, span), *load._events_needed(reads)).distinct()).scalars())
    if reads.messages is not None:
        found |= _messaged(conn, ws, span, reads.messages)
    if traits:
        present = r.Or(tuple(r.Trait(name, r.Test("exists", True)) for name in dict.fromkeys(traits)))
        q = sql.members_query(present, ws, at, dialect=conn.dialect.name, span=span)
        found |= q.run(conn)
    return found


def _messaged(conn: Connection, ws: str, span: Span, since: datetime) -> set[str]:
    """The span's profiles with a message status at or after ``since``, sent to them or to an id merged into them."""
    m, s, pa = messages.c, message_status.c, profile_aliases.c
    recent = [s.workspace_id == ws, m.workspace_id == ws, *([s.at >= since] if since > ALL else [])]
    joined = message_status.join(messages, m.id == s.message_id)
    own = sa.select(m.profile_id).select_from(joined).where(*recent, in_span(m.profile_id, span))
    merged = (sa.select(pa.profile_id).select_from(joined.join(profile_aliases, pa.alias_id == m.profile_id))
              .where(*recent, pa.workspace_id == ws, in_span(pa.profile_id, span)))  # fmt: skip
    return set(conn.execute(sa.union(own, merged)).scalars())


def next_changes(conn: Connection, ev: Evaluator, segment_id: str, ids: Iterable[str], at: datetime) -> dict:
    """``evaluate(...).next_change`` of these people (read in bulk, cut to what the rule can read: decision 0028),
    as the incremental path would compute it."""
    ids = sorted(ids)
    if not ids:
        return {}
    rule, ws = ev.defs[segment_id].rule, ev.ws.id
    need = needs_of([rule], at)
    people = load.people(conn, ws, ids, ev.ws.identity, needs=need, zone_default=ev.ws.timezone)
    return {pid: evaluate(rule, p, at, topics=ev.topics).next_change for pid, p in people.items()}


def set_timers(conn: Connection, ws: str, segment_id: str, ids: list[str], due: dict) -> None:
    """The chunk's timers of the segment: ``due`` (person -> instant or None); none for everybody else in it."""
    t = segment_timers.c
    conn.execute(segment_timers.delete().where(t.workspace_id == ws, t.segment_id == segment_id,
                                               bulk.in_(t.profile_id, ids, conn.dialect.name)))  # fmt: skip
    rows = [{"workspace_id": ws, "segment_id": segment_id, "profile_id": pid, "due_at": at, "first_due": None,
             "attempts": 0} for pid, at in sorted(due.items()) if at is not None]  # fmt: skip
    if rows:
        bulk.insert_rows(conn, segment_timers, rows, conflict=["workspace_id", "segment_id", "profile_id"],
                         update=["due_at", "first_due", "attempts"])  # fmt: skip


# -- one chunk --------------------------------------------------------------------------------------------------------
def compute(conn: Connection, ev: Evaluator, segment_id: str, ids: list[str], after: str | None,
            at: datetime) -> tuple[set[str], set[str], dict]:  # fmt: skip
    """Who enters and who leaves among ``ids`` (locked, in id order, the span ``(after, ids[-1]]``), and their
    timers: reads only, nothing written."""
    span = (after, ids[-1])
    chunk = set(ids)
    inside = members_in(conn, ev, segment_id, span, at) & chunk  # a profile created since the lock: the consumer's
    was = current(conn, ev.ws.id, segment_id, span) & chunk  # members whose profile is gone: the batch's end
    timed = timed_candidates(conn, ev.ws.id, ev.defs[segment_id].rule, at, span) & chunk
    due = next_changes(conn, ev, segment_id, timed, at)
    return inside - was, was - inside, due


# -- one chunk of several segments ------------------------------------------------------------------------------------
def together(refs: Mapping[str, Iterable[str]], pending: Iterable[str]) -> set[str]:
    """The segments of ``pending`` that one query can compute together (``refs``: every segment of the workspace ->
    the segments its rule refers to).

    A reference from one of them to another is answered inside the query (``many.members_many``), so it sees the
    new answer. But a segment ``d`` that reaches one of them, ``s``, only *through* a segment ``x`` outside the
    group (``d -> x -> s``) would read ``x`` as stored: when the batch changes ``s`` for a person, ``x`` is
    re-evaluated for her after the query (the incremental path's cascade), and ``d``'s answer would be stale (an
    entry the cascade then undoes: a history and a timeline that computing the segments one by one, in dependency
    order, would not have). Such a ``d`` waits: it is computed alone, after ``s``'s chunk, as before. The remainder
    is never empty: the first of ``pending`` in dependency order refers to none of the others."""
    group = set(pending)

    def reaches(start: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            x = todo.pop()
            if x in group:
                return True
            if x not in seen:
                seen.add(x)
                todo.extend(refs.get(x, ()))
        return False

    while True:
        late = {d for d in group if any(t not in group and reaches(t) for t in refs.get(d, ()))}
        if not late:
            return group
        group -= late  # those reaching them through a segment now outside are found at the next round


def compute_many(conn: Connection, ev: Evaluator, order: list[str], ids: list[str], after: str | None,
                 at: datetime) -> dict[str, tuple[set[str], set[str], dict]]:  # fmt: skip
    """:func:`compute` for several segments (``order``: dependency order, a :func:`together` group) in one
    ``many.members_many`` query over the span: per segment, who enters, who leaves, and the timers. A reference
    from one of them to another reads the other's new answer for the chunk, as computing them one after the other
    in dependency order would. Reads only, nothing written."""
    from chorus.segments.many import members_many

    span = (after, ids[-1])
    chunk = set(ids)
    ws = ev.ws.id
    rules = {sid: ev.defs[sid].rule for sid in order}
    zones = zones_in(conn, ws, span) if any(sql.needs_zones(rule) for rule in rules.values()) else []
    got = members_many(conn, ws, rules, at, ev.topics, zones=zones, span=span, zone_default=ev.ws.timezone)
    inside = {sid: got[sid] & chunk for sid in order}  # a profile created since the lock: the consumer's
    was = {sid: ids_ & chunk for sid, ids_ in current_many(conn, ws, order, span).items()}
    timed = {sid: timed_candidates(conn, ws, rules[sid], at, span) & chunk for sid in order}
    due = next_changes_many(conn, ev, order, timed, inside, at)
    return {sid: (inside[sid] - was[sid], was[sid] - inside[sid], due[sid]) for sid in order}


def next_changes_many(conn: Connection, ev: Evaluator, order: list[str], timed: Mapping[str, set[str]],
                      inside: Mapping[str, set[str]], at: datetime) -> dict[str, dict]:  # fmt: skip
    """:func:`next_changes` of each segment of ``order`` for its ``timed`` people, everybody read once (cut to what
    all those rules can read). A person's memberships of the group are its new answers (``inside``), the others
    as stored: what the evaluator would read, the segments computed one after the other."""
    out: dict[str, dict] = {sid: {} for sid in order}
    everyone = sorted(set().union(*timed.values()))
    if not everyone:
        return out
    need = needs_of([ev.defs[sid].rule for sid in order if timed[sid]], at)
    group = set(order)
    for pid, person in load.people(conn, ev.ws.id, everyone, ev.ws.identity, needs=need,
                                    zone_default=ev.ws.timezone).items():
        segs = frozenset((person.segments - group) | {sid for sid in order if pid in inside[sid]})
        her = Evaluation(person, ev.topics)  # her events picked once for all the group's rules
        for sid in order:
            if pid in timed[sid]:
                out[sid][pid] = her.evaluate(ev.defs[sid].rule, at, segments=segs).next_change
    return out
