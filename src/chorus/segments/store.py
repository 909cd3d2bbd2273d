"""The segments package's tables: definitions, members, history, timers and static lists. Other packages call these
functions; every function that writes takes the caller's connection."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_sql
from sqlalchemy.engine import Connection

from chorus import registry as reg
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.identity.erasure import aliases_among
from chorus.profiles import views
from chorus.registry import Person, Registry
from chorus.safecsv import cell
from chorus.segments import rules as r
from chorus.store import bulk
from chorus.store.tables import (
    list_members,
    profile_aliases,
    segment_history,
    segment_members,
    segment_timers,
    segments,
    static_lists,
)
from chorus.timeutil import iso, zone

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Definition:
    id: str
    name: str
    rule: r.Node
    version: int
    computed_version: int | None
    computed_at: datetime | None

    @cached_property
    def inputs(self) -> r.Inputs:
        # the rule never changes (frozen): walk it once, not at every change routed through engine.affected
        return r.dependencies(self.rule)


def check_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise ChorusError(f"{field} must be 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
                          field=field)  # fmt: skip
    return value


def _definition(row) -> Definition:
    rule, inputs = _parsed(orjson.dumps(row.rule, option=orjson.OPT_SORT_KEYS))
    d = Definition(row.id, row.name, rule, row.version, row.computed_version, row.computed_at)
    d.__dict__["inputs"] = inputs  # the cached_property's slot: walked once per rule, not per transaction
    return d


@lru_cache(maxsize=4096)
def _parsed(rule_json: bytes) -> tuple[r.Node, r.Inputs]:
    """A stored rule parsed and walked, by its canonical JSON: every consume transaction reads the workspace's
    definitions (the lock order), and validating and parsing 20 rules again each time was a tenth of its cost. The
    key is the rule's text itself, so an edited or re-created segment can never get another rule's parse; rules and
    their inputs are frozen, safe to share."""
    rule = r.parse(orjson.loads(rule_json))
    return rule, r.dependencies(rule)


def definitions(conn: Connection, ws: str) -> dict[str, Definition]:
    rows = conn.execute(sa.select(segments).where(segments.c.workspace_id == ws).order_by(segments.c.id)).all()
    return {row.id: _definition(row) for row in rows}


def ids(conn: Connection, ws: str, *, hold: bool = False) -> set[str]:
    """The workspace's segment ids, without reading or parsing their rules. ``hold``: what is checked against them
    may be a new use of one (a journey published): the definitions lock is held shared until the transaction ends,
    so that the segment's deletion (engine.drop, exclusive) cannot commit between the check and the use. Not for a
    reader that only polls (the worker's follow poll would wait behind every save and deletion; review)."""
    if hold:
        lock_definitions(conn, ws, shared=True)
    return set(conn.execute(sa.select(segments.c.id).where(segments.c.workspace_id == ws)).scalars())


# key in the DBAPI connection's info where the engine keeps the definitions it parsed in the current transaction
PARSED = "chorus_segment_definitions"


def _changed(conn: Connection) -> None:
    """A save or deletion in this transaction: definitions parsed earlier in it are stale (engine.Context)."""
    conn.info.pop(PARSED, None)


def get(conn: Connection, ws: str, segment_id: str) -> Definition:
    row = conn.execute(sa.select(segments).where(segments.c.workspace_id == ws, segments.c.id == segment_id)).first()
    if row is None:
        raise NotFound(f"no segment {segment_id!r}", field="id")
    return _definition(row)


def save(conn: Connection, ws: str, segment_id: str, name: str, rule: r.Node, now: datetime) -> tuple[Definition, bool]:
    """Create or replace a segment's definition; returns it and whether its rule changed (a new version, to be
    computed in batch). The rule's references are checked against the workspace's other segments and lists."""
    lock_definitions(conn, ws)
    _changed(conn)
    check_rule(conn, ws, segment_id, rule)
    canon = r.to_json(rule)
    row = conn.execute(
        sa.select(segments).where(segments.c.workspace_id == ws, segments.c.id == segment_id).with_for_update()
    ).first()
    if row is None:
        conn.execute(segments.insert().values(workspace_id=ws, id=segment_id, name=name, rule=canon, version=1,
                                              created_at=now, updated_at=now))  # fmt: skip
        changed = True
    else:
        changed = row.rule != canon
        conn.execute(
            segments.update()
            .where(segments.c.workspace_id == ws, segments.c.id == segment_id)
            .values(name=name, rule=canon, version=row.version + (1 if changed else 0), updated_at=now,
                    **({"batch_after": None, "batch_version": None} if changed else {}))  # a new batch from the start
        )
    return get(conn, ws, segment_id), changed


def check_rule(conn: Connection, ws: str, segment_id: str | None, rule: r.Node) -> None:
    """The segments and lists the rule refers to exist, and no segment depends on itself (``segment_id``: the one
    being saved; None for a rule that is not saved, a preview)."""
    focus = segment_id or "(preview)"  # not a valid id: it collides with no segment
    others = {d.id: d.rule for d in definitions(conn, ws).values() if d.id != focus}
    r.check_references({**others, focus: rule}, focus=focus)
    lists = set(conn.execute(sa.select(static_lists.c.id).where(static_lists.c.workspace_id == ws)).scalars())
    for n, path in r.walk(rule):  # named by the path to the reference, as a missing segment is (an outside probe)
        if isinstance(n, r.InList) and n.list not in lists:
            raise ChorusError(f"{path}.list: static list {n.list!r} does not exist (create it with PUT "
                              f"/api/lists/{n.list})", field=f"{path}.list")  # fmt: skip


def lock_definitions(conn: Connection, ws: str, *, shared: bool = False) -> None:
    """Definition changes of a workspace one at a time (PostgreSQL; SQLite has one writer): a save that refers to
    a segment and its concurrent deletion cannot both commit, nor two creations of one id.

    ``shared``: an evaluation (consumer, timers, batch) holds the definitions it read steady until it commits, so a
    segment deleted meanwhile cannot get members again after its deletion. Every writer takes this lock before any
    profile or segment row (the lock order is in docs/segments.md)."""
    if conn.dialect.name == "postgresql":
        fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        conn.execute(sa.text(f"SELECT {fn}(hashtext(:k))"), {"k": "segments:" + ws})


def messaging_changed(conn: Connection, ws: str, before: dict | None, after: dict | None) -> None:
    """The workspace's ``messaging`` settings changed. Segments answer with two of them: ``timezone`` (the local
    dates of people with no zone of their own) and ``topics`` (``reachable``/``subscribed``). The segments that read
    a changed one are computed again by the batch (:func:`_compute_again`)."""
    before, after = before or {}, after or {}
    zone_moved = zone(before.get("timezone")).key != zone(after.get("timezone")).key  # unset and "UTC" are one
    topics_moved = before.get("topics") != after.get("topics")
    if zone_moved or topics_moved:
        _compute_again(conn, ws, lambda i: (zone_moved and i.timezone) or (topics_moved and i.consent))


def identifiers_changed(conn: Connection, ws: str, before, after) -> None:
    """``settings.identifiers`` says which identifiers are addresses of which channel: ``reachable`` reads it."""
    _compute_again(conn, ws, lambda i: i.consent)


def _compute_again(conn: Connection, ws: str, reads: Callable[[r.Inputs], bool]) -> None:
    """The segments whose inputs ``reads`` are computed again by the batch, from the start, as after a rule change:
    their members and timers were decided with the old setting. The definitions lock (exclusive) waits for the
    evaluations under way, so none of them commits an answer of the old setting after the batch has read the new
    one (and the settings change waits for them: a long batch step delays it, as it delays a save)."""
    lock_definitions(conn, ws)
    stale = sorted(sid for sid, d in definitions(conn, ws).items() if reads(d.inputs))
    if stale:
        _changed(conn)
        conn.execute(segments.update().where(segments.c.workspace_id == ws, bulk.in_(segments.c.id, stale,
                                                                                   conn.dialect.name))
                     .values(computed_version=None, batch_after=None, batch_version=None))  # fmt: skip


def refuse_in_use(conn: Connection, ws: str, segment_id: str, registry: Registry | None = None) -> None:
    """Conflict while anything can still use the segment: another segment's rule, or what a package registered as
    a user of segments (chorus.registry: a journey's entry, exit, goal or step, a broadcast's audience, an audience
    that follows it). Called under the exclusive definitions lock: a save, or a journey's publication that checked
    the segment exists (:func:`ids` holds the lock shared), cannot commit a new use meanwhile."""
    segs = sorted(d.id for d in definitions(conn, ws).values() if segment_id in d.inputs.segments)
    others = (registry or reg.installed()).uses_of_segment(conn, ws, segment_id)
    if not others:
        if segs:
            raise Conflict(f"segment {segment_id!r} is used by {', '.join(segs)}: change those first", field="id")
        return
    users = [f"segment {s!r}" for s in segs] + others
    named = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} and {users[-1]}"
    raise Conflict(f"segment {segment_id!r} is used by {named}; remove those uses first", field="id")


def delete(conn: Connection, ws: str, segment_id: str) -> None:
    """Delete a segment's rows: its members have left it and nothing uses it (engine.drop writes their exits first,
    after :func:`refuse_in_use`). Conflict still while another segment's rule refers to it: a rule left naming a
    missing segment could no longer be read."""
    lock_definitions(conn, ws)
    _changed(conn)
    get(conn, ws, segment_id)
    users = [d.id for d in definitions(conn, ws).values() if segment_id in d.inputs.segments]
    if users:
        raise Conflict(f"segment {segment_id!r} is used by {', '.join(sorted(users))}: change those first", field="id")
    for t in (segment_members, segment_timers, segment_history):
        conn.execute(t.delete().where(t.c.workspace_id == ws, t.c.segment_id == segment_id))
    conn.execute(segments.delete().where(segments.c.workspace_id == ws, segments.c.id == segment_id))


def mark_computed(conn: Connection, ws: str, segment_id: str, version: int, at: datetime) -> None:
    _changed(conn)
    conn.execute(
        segments.update()
        .where(segments.c.workspace_id == ws, segments.c.id == segment_id)
        .values(computed_version=version, computed_at=at)
    )


# -- membership ---------------------------------------------------------------------------------------------------
def memberships(conn: Connection, ws: str, profile_id: str) -> set[str]:
    return set(conn.execute(sa.select(segment_members.c.segment_id).where(
        segment_members.c.workspace_id == ws, segment_members.c.profile_id == profile_id)).scalars())  # fmt: skip


def members(conn: Connection, ws: str, segment_id: str) -> set[str]:
    return set(conn.execute(sa.select(segment_members.c.profile_id).where(
        segment_members.c.workspace_id == ws, segment_members.c.segment_id == segment_id)).scalars())  # fmt: skip


def lists_of(conn: Connection, ws: str, profile_id: str) -> set[str]:
    return set(conn.execute(sa.select(list_members.c.list_id).where(
        list_members.c.workspace_id == ws, list_members.c.profile_id == profile_id)).scalars())  # fmt: skip


def enter(
    conn: Connection, ws: str, segment_id: str, profile_ids: Iterable[str], at: datetime, cause: str
) -> list[str]:
    """Make these people members; returns those who were not (history is written for them only)."""
    done = []
    for p in profile_ids:
        insert = pg_sql.insert if conn.dialect.name == "postgresql" else sqlite_sql.insert
        stmt = insert(segment_members).values(workspace_id=ws, segment_id=segment_id, profile_id=p, since=at)
        # RETURNING, not rowcount: PostgreSQL's driver answers -1 (true) for an INSERT here, new row or not
        if conn.execute(stmt.on_conflict_do_nothing().returning(segment_members.c.profile_id)).first() is not None:
            done.append(p)
    _history(conn, ws, segment_id, done, "entered", at, cause)
    return done


def leave(
    conn: Connection, ws: str, segment_id: str, profile_ids: Iterable[str], at: datetime, cause: str
) -> list[str]:
    """Take these people out; returns those who were members (history is written for them only)."""
    done = []
    for p in profile_ids:
        if conn.execute(segment_members.delete().where(
                segment_members.c.workspace_id == ws, segment_members.c.segment_id == segment_id,
                segment_members.c.profile_id == p)).rowcount:  # fmt: skip
            done.append(p)
    _history(conn, ws, segment_id, done, "exited", at, cause)
    return done


def _history(conn, ws, segment_id, ids, change, at, cause) -> None:
    if not ids:
        return
    bulk.insert_rows(conn, segment_history, [
        {"workspace_id": ws, "segment_id": segment_id, "profile_id": p, "change": change, "at": at, "cause": cause}
        for p in ids
    ])  # fmt: skip


def timers_many(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, dict[str, datetime]]:
    """People's timers in one statement: profile id -> segment id -> when it is due (ix_segment_timers_profile)."""
    out: dict[str, dict[str, datetime]] = {}
    if not profile_ids:
        return out
    t = segment_timers.c
    who = t.profile_id == profile_ids[0] if len(profile_ids) == 1 else bulk.in_(t.profile_id, profile_ids,
                                                                               conn.dialect.name)
    for pid, sid, due in conn.execute(sa.select(t.profile_id, t.segment_id, t.due_at).where(t.workspace_id == ws,
                                                                                            who)):  # fmt: skip
        out.setdefault(pid, {})[sid] = due
    return out


def set_timers_many(conn: Connection, ws: str, due: dict[str, dict[str, datetime | None]]) -> None:
    """Set people's timers (profile id -> segment id -> when, None: no timer) in at most two statements for all of
    them; only those given are touched."""
    gone = sorted((pid, sid) for pid, d in due.items() for sid, at in d.items() if at is None)
    t = segment_timers.c
    if gone:
        conn.execute(segment_timers.delete().where(
            t.workspace_id == ws, bulk.pairs_in(t.profile_id, t.segment_id, gone, conn.dialect.name)))
    rows = [{"workspace_id": ws, "segment_id": sid, "profile_id": pid, "due_at": at}
            for pid, d in sorted(due.items()) for sid, at in sorted(d.items()) if at is not None]  # fmt: skip
    if rows:
        insert = (pg_sql.insert if conn.dialect.name == "postgresql" else sqlite_sql.insert)(segment_timers)
        conn.execute(insert.on_conflict_do_update(index_elements=["workspace_id", "segment_id", "profile_id"],
                                                  set_={"due_at": insert.excluded.due_at, "first_due": None,
                                                        "attempts": 0}),
                     rows)  # fmt: skip


RETRY_FIRST, RETRY_MOST = timedelta(minutes=1), timedelta(days=1)


def retry_after(attempts: int, at: datetime) -> datetime:
    """When a timer whose evaluation failed at ``at``, after ``attempts`` earlier failures, is tried again: a minute
    later, twice as long after each failure (1, 2, 4, 8 ... minutes), a day at most. A passing cause (a deadlock, a
    restart) is retried within a minute however late the timer was; a profile whose evaluation fails for good costs
    a try a day, not one a minute for ever."""
    return at + min(RETRY_FIRST * 2 ** min(attempts, 16), RETRY_MOST)


def postpone_timers(conn: Connection, where: tuple, at: datetime) -> None:
    """Try these timers again later (an evaluation failed at ``at``: :func:`retry_after`), each keeping the instant
    it was first due. Failing timers are few: read and written one by one."""
    t = segment_timers.c
    rows = conn.execute(sa.select(t.workspace_id, t.segment_id, t.profile_id, t.attempts,
                                  sa.func.coalesce(t.first_due, t.due_at)).where(*where)).all()  # fmt: skip
    for ws, sid, pid, attempts, first in rows:
        conn.execute(segment_timers.update().where(t.workspace_id == ws, t.segment_id == sid, t.profile_id == pid)
                     .values(due_at=retry_after(attempts, at), first_due=first, attempts=attempts + 1))  # fmt: skip


def enter_many(conn: Connection, ws: str, entries: list[tuple[str, str, str]], at: datetime,
               times: Mapping[str, datetime] | None = None) -> set[tuple[str, str]]:  # fmt: skip
    """Make people members of segments ((profile id, segment id, cause) each) in one statement; returns the
    (profile id, segment id) pairs that were not members (history is written for them only, with their cause).
    ``times``: a profile's own instant of change, where it is not ``at``."""
    if not entries:
        return set()
    insert = pg_sql.insert if conn.dialect.name == "postgresql" else sqlite_sql.insert
    stmt = insert(segment_members).on_conflict_do_nothing().returning(segment_members.c.profile_id,
                                                                      segment_members.c.segment_id)  # fmt: skip
    times = times or {}
    rows = [{"workspace_id": ws, "segment_id": sid, "profile_id": pid, "since": times.get(pid, at)}
            for pid, sid, _ in entries]  # fmt: skip
    new = {tuple(r) for r in conn.execute(stmt, rows).all()}
    _many_history(conn, ws, [e for e in entries if (e[0], e[1]) in new], "entered", at, times)
    return new


def leave_many(conn: Connection, ws: str, exits: list[tuple[str, str, str]], at: datetime,
               times: Mapping[str, datetime] | None = None) -> set[tuple[str, str]]:  # fmt: skip
    """Take people out of segments ((profile id, segment id, cause) each) in one statement; returns the pairs that
    were members (history is written for them only). ``times`` as for :func:`enter_many`."""
    if not exits:
        return set()
    gone = {tuple(r) for r in conn.execute(segment_members.delete().where(
        segment_members.c.workspace_id == ws,
        bulk.pairs_in(segment_members.c.profile_id, segment_members.c.segment_id, [(p, s) for p, s, _ in exits],
                      conn.dialect.name))
        .returning(segment_members.c.profile_id, segment_members.c.segment_id)).all()}  # fmt: skip
    _many_history(conn, ws, [e for e in exits if (e[0], e[1]) in gone], "exited", at, times)
    return gone


def _many_history(conn: Connection, ws: str, done: list[tuple[str, str, str]], change: str, at: datetime,
                  times: Mapping[str, datetime] | None = None) -> None:  # fmt: skip
    if done:
        times = times or {}
        conn.execute(segment_history.insert(), [
            {"workspace_id": ws, "segment_id": sid, "profile_id": pid, "change": change,
             "at": times.get(pid, at), "cause": cause}
            for pid, sid, cause in done
        ])  # fmt: skip


def last_changes(conn: Connection, ws: str, profile_ids: list[str], segment_ids: list[str]
                 ) -> dict[tuple[str, str], datetime]:  # fmt: skip
    """When each of these people last entered or left each of these segments (those she ever did), one statement."""
    if not profile_ids or not segment_ids:
        return {}
    h = segment_history.c
    rows = conn.execute(sa.select(h.profile_id, h.segment_id, sa.func.max(h.at)).where(
        h.workspace_id == ws, bulk.in_(h.profile_id, profile_ids, conn.dialect.name),
        bulk.in_(h.segment_id, segment_ids, conn.dialect.name)).group_by(h.profile_id, h.segment_id))  # fmt: skip
    return {(pid, sid): t for pid, sid, t in rows if t is not None}


def set_timer(conn: Connection, ws: str, segment_id: str, profile_id: str, due: datetime | None) -> None:
    key = (segment_timers.c.workspace_id == ws, segment_timers.c.segment_id == segment_id,
           segment_timers.c.profile_id == profile_id)  # fmt: skip
    if due is None:
        conn.execute(segment_timers.delete().where(*key))
        return
    bulk.insert_rows(conn, segment_timers, [{"workspace_id": ws, "segment_id": segment_id, "profile_id": profile_id,
                                              "due_at": due, "first_due": None, "attempts": 0}],
                     conflict=["workspace_id", "segment_id", "profile_id"],
                     update=["due_at", "first_due", "attempts"])  # fmt: skip


def forget_profile_rows(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, int]:
    out = {}
    for name, t in (("segment_members", segment_members), ("segment_history", segment_history),
                    ("segment_timers", segment_timers), ("list_members", list_members)):  # fmt: skip
        out[name] = conn.execute(t.delete().where(t.c.workspace_id == ws, t.c.profile_id.in_(profile_ids))).rowcount
    return out


# -- erasure (chorus.registry) -----------------------------------------------------------------------------------
TABLES = {"segment_members": "segment_members", "segment_history": "segment_history",
          "segment_timers": "segment_timers", "list_members": "list_members"}  # fmt: skip


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    """The person's memberships, their history, her timers and static list entries."""
    return forget_profile_rows(conn, ws, person.profile_ids)


def export(conn: Connection, ws: str, person: Person) -> dict:
    """What the segments hold about her, for her export: her memberships now, their history (when she entered and
    left which segment, and why) and her static list entries."""
    ids = list(person.profile_ids)

    def rows(q) -> list[dict]:
        # str(k): a column name is a str subclass, which a JSON encoder (orjson) refuses as a key
        return [{str(k): (iso(v) if isinstance(v, datetime) else v) for k, v in r._mapping.items()}
                for r in conn.execute(q)]

    m, h, lm = segment_members.c, segment_history.c, list_members.c
    return {"segments": {
        "members": rows(sa.select(m.segment_id, m.since).where(m.workspace_id == ws, m.profile_id.in_(ids))
                        .order_by(m.segment_id)),
        "history": rows(sa.select(h.segment_id, h.change, h.at, h.cause).where(
            h.workspace_id == ws, h.profile_id.in_(ids)).order_by(h.at, h.id)),
        "lists": rows(sa.select(lm.list_id, lm.added_at).where(lm.workspace_id == ws, lm.profile_id.in_(ids))
                      .order_by(lm.list_id)),
    }}  # fmt: skip


# -- views for the API and the CLI ---------------------------------------------------------------------------------
def view(conn: Connection, ws: str, d: Definition) -> dict:
    count = conn.execute(sa.select(sa.func.count()).select_from(segment_members).where(
        segment_members.c.workspace_id == ws, segment_members.c.segment_id == d.id)).scalar_one()  # fmt: skip
    row = conn.execute(sa.select(segments.c.created_at, segments.c.updated_at).where(
        segments.c.workspace_id == ws, segments.c.id == d.id)).one()  # fmt: skip
    return {
        "id": d.id, "name": d.name, "rule": r.to_json(d.rule), "version": d.version,
        # members are exact once the rule's batch computation has run; until then they follow changes only
        "status": "ready" if d.computed_version == d.version else "computing",
        "members": count, "computed_at": d.computed_at, "created_at": row.created_at, "updated_at": row.updated_at,
    }  # fmt: skip


def members_page(conn: Connection, ws: str, segment_id: str, limit: int, after: str | None) -> list[dict]:
    """Members in profile id order from ``after`` (keyset): one index range scan per page."""
    q = sa.select(segment_members.c.profile_id, segment_members.c.since).where(
        segment_members.c.workspace_id == ws, segment_members.c.segment_id == segment_id)
    if after is not None:
        q = q.where(segment_members.c.profile_id > after)
    rows = conn.execute(q.order_by(segment_members.c.profile_id).limit(limit)).all()
    return [{"profile_id": p, "since": s} for p, s in rows]


def profile_segments(conn: Connection, ws: str, profile_id: str, history_limit: int = 200) -> dict:
    current = conn.execute(
        sa.select(segment_members.c.segment_id, segment_members.c.since, segments.c.name)
        .join(segments, sa.and_(segments.c.workspace_id == segment_members.c.workspace_id,
                                segments.c.id == segment_members.c.segment_id))
        .where(segment_members.c.workspace_id == ws, segment_members.c.profile_id == profile_id)
        .order_by(segment_members.c.segment_id)
    ).all()  # fmt: skip
    # hers and the history of the ids merged into her (an outside probe: her export showed those, this did not)
    ids = [profile_id, *conn.execute(sa.select(profile_aliases.c.alias_id).where(
        profile_aliases.c.workspace_id == ws, profile_aliases.c.profile_id == profile_id)).scalars()]  # fmt: skip
    hist = conn.execute(
        sa.select(segment_history).where(segment_history.c.workspace_id == ws,
                                         bulk.in_(segment_history.c.profile_id, ids, conn.dialect.name))
        .order_by(segment_history.c.id.desc()).limit(history_limit)
    ).all()  # fmt: skip
    return {
        "profile_id": profile_id,
        "segments": [{"id": s, "name": n, "since": since} for s, since, n in current],
        "history": [{"segment_id": h.segment_id, "change": h.change, "at": h.at, "cause": h.cause,
                     "profile_id": h.profile_id} for h in hist],  # fmt: skip
    }


# -- static lists -------------------------------------------------------------------------------------------------
def save_list(conn: Connection, ws: str, list_id: str, name: str, now: datetime) -> bool:
    """Create a list (True) or rename it."""
    done = bulk.insert_rows(conn, static_lists, [{"workspace_id": ws, "id": list_id, "name": name, "created_at": now}],
                            conflict=["workspace_id", "id"], returning="id")  # fmt: skip
    if not done:
        conn.execute(static_lists.update().where(static_lists.c.workspace_id == ws, static_lists.c.id == list_id)
                     .values(name=name))  # fmt: skip
    return bool(done)


def get_list(conn: Connection, ws: str, list_id: str) -> dict:
    row = conn.execute(sa.select(static_lists).where(static_lists.c.workspace_id == ws,
                                                     static_lists.c.id == list_id)).first()  # fmt: skip
    if row is None:
        raise NotFound(f"no list {list_id!r}", field="id")
    count = conn.execute(sa.select(sa.func.count()).select_from(list_members).where(
        list_members.c.workspace_id == ws, list_members.c.list_id == list_id)).scalar_one()  # fmt: skip
    return {"id": row.id, "name": row.name, "members": count, "created_at": row.created_at}


def all_lists(conn: Connection, ws: str) -> list[dict]:
    ids = conn.execute(sa.select(static_lists.c.id).where(static_lists.c.workspace_id == ws)
                       .order_by(static_lists.c.id)).scalars()  # fmt: skip
    return [get_list(conn, ws, i) for i in ids]


def change_list(conn: Connection, ws: str, list_id: str, add: Iterable[str], remove: Iterable[str],
                now: datetime) -> dict:  # fmt: skip
    """Add and remove profiles; each one changed is a change of that person (cause ``list``), so the segments
    that read the list follow at once."""
    from chorus.profiles import feed

    get_list(conn, ws, list_id)
    add, remove = sorted(set(add)), sorted(set(remove) - set(add))
    # an entry keeps the profile id it was made for: removing a person removes it under the ids merged into hers
    # too (the caller names her by her profile id or an identifier, which resolve to the survivor)
    held = sorted(set(aliases_among(conn, ws, remove)) - set(add))
    added = bulk.insert_rows(conn, list_members, [
        {"workspace_id": ws, "list_id": list_id, "profile_id": p, "added_at": now} for p in add
    ], conflict=["workspace_id", "list_id", "profile_id"], returning="profile_id")  # fmt: skip
    removed = 0
    for i in range(0, len(remove), 5000):
        removed += conn.execute(list_members.delete().where(
            list_members.c.workspace_id == ws, list_members.c.list_id == list_id,
            list_members.c.profile_id.in_(remove[i : i + 5000]))).rowcount  # fmt: skip
    for i in range(0, len(held), 5000):
        removed += conn.execute(list_members.delete().where(
            list_members.c.workspace_id == ws, list_members.c.list_id == list_id,
            list_members.c.profile_id.in_(held[i : i + 5000]))).rowcount  # fmt: skip
    changed = [*(p for p in add), *remove]
    feed.record(conn, ws, [feed.Change(p, "list", detail={"list": list_id}) for p in changed], now)
    return {"added": len(added), "removed": removed}


def members_csv(conn: Connection, ws, segment_id: str) -> str:
    """The members as CSV, one row each (profile id, user id, email, phone, since): what the API's export and the
    CLI write, and what a marketer uploads elsewhere. ``ws`` is the workspace (its identity settings)."""

    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["profile_id", "user_id", "email", "phone", "since"])
    after = None
    while True:
        page = members_page(conn, ws.id, segment_id, 1000, after)
        if not page:
            break
        found = views.get_profiles(conn, ws.id, [m["profile_id"] for m in page], ws.identity)
        for m in page:
            ids = (found.get(m["profile_id"]) or {}).get("identifiers") or {}
            w.writerow([m["profile_id"], *(cell(";".join(ids.get(k) or [])) for k in ("user_id", "email", "phone")),
                        m["since"].isoformat()])  # fmt: skip
        after = page[-1]["profile_id"]
    return out.getvalue()


def _listen() -> None:
    """Once, at import, for every engine (class-level, as the change feed's): a savepoint rolled back may have
    undone a save or deletion made inside it, so the definitions parsed since are dropped too."""
    from sqlalchemy.engine import Engine

    # not on a lost connection: its info cannot be read then, and is new when it reconnects (store.txn)
    sa.event.listen(Engine, "rollback_savepoint",
                    lambda conn, name, context: None if conn.invalidated else _changed(conn))  # fmt: skip


_listen()
