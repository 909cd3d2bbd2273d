"""The journeys' tables: definitions and their immutable versions, instances, timers, held inputs, records and
scheduled runs. Only this module reads or writes them; every function that writes takes the caller's connection, so
a transition commits its state, timers, records and messages together.

Inputs are kept as JSON (held while a journey is paused) with :func:`input_to_json` / :func:`input_from_json`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import BindParameter
from sqlalchemy.sql.visitors import replacement_traverse

from chorus.errors import Conflict, NotFound
from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.segments.person import Event
from chorus.store import bulk
from chorus.store.tables import (
    journey_held,
    journey_instances,
    journey_records,
    journey_runs,
    journey_timers,
    journey_versions,
    journeys,
)
from chorus.timeutil import iso, parse_ts

STATUSES = ("active", "paused", "stopped", "archived")
KINDS = ("journey", "broadcast")


# -- statements built once -------------------------------------------------------------------------------------
# The hot reads and writes of a transition are built once per process and dialect, with named parameters, and
# executed with their values: a statement built on each call (``sa.select(...).where(...)``) cost 50-150 µs of
# Python to build and as much again for SQLAlchemy to key it for its compiled cache, more than many of them take
# in the database (a demo's profile: a third of its Python time in SQLAlchemy's statement building). A built
# statement keeps its cache key, so each execution only binds its parameters.
_BUILT: dict[tuple[str, str], sa.Executable] = {}


def prepared(conn: Connection, name: str, build: Callable[[str], sa.Executable]) -> sa.Executable:
    """The statement ``build(dialect name)``, built on the first call for the connection's dialect and kept under
    ``name`` (unique per statement): its parameters are bound at execution, ``conn.execute(q, {...})``."""
    key = (name, conn.dialect.name)
    q = _BUILT.get(key)
    if q is None:
        q = _BUILT[key] = build(conn.dialect.name)
    return q


def in_param(col: sa.Column, name: str, dialect: str):
    """``bulk.in_(col, ...)`` (the same SQL: one parameter however long the list) with its parameter named
    ``name``, for a statement built once; its value at execution is :func:`in_value` of the list."""
    # bulk.in_'s one parameter is anonymous, bound to its list: named here, with its type (array, or JSON text)
    return replacement_traverse(bulk.in_(col, [], dialect), {},
                                lambda el: sa.bindparam(name, type_=el.type) if isinstance(el, BindParameter)
                                else None)  # fmt: skip


def in_value(values: Iterable, dialect: str):
    """The value of an :func:`in_param` parameter: what ``bulk.in_`` binds (a list; JSON text on SQLite)."""
    values = list(values)
    return values if dialect == "postgresql" else orjson.dumps(values).decode()


FEW_ROWS = 50  # on PostgreSQL, an insert of up to this many rows is one INSERT, not bulk's COPY (insert_rows)


def insert_rows(conn: Connection, table: sa.Table, rows: list[dict], *, conflict: Sequence[str] = ()) -> None:
    """``bulk.insert_rows`` (with ``conflict``: rows whose key exists are skipped), but a few rows on PostgreSQL go
    as one ``INSERT`` of a statement built once: bulk's COPY path costs four statements (its staging table made,
    filled, copied, emptied), which a claim of a few people (a live worker's, a timer pass's) paid for each table
    it writes, more than the rows themselves."""
    if not rows:
        return
    if conn.dialect.name != "postgresql" or len(rows) > FEW_ROWS:
        bulk.insert_rows(conn, table, rows, conflict=conflict or None)
        return
    q = prepared(conn, f"insert:{table.name}:{','.join(conflict)}", lambda _: (
        pg_insert(table).on_conflict_do_nothing(index_elements=list(conflict)) if conflict else table.insert()))
    conn.execute(q, rows)


@dataclass(frozen=True)
class Journey:
    id: str
    name: str
    kind: str
    entry: str
    status: str
    version: int  # the current version: new people enter it
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    sweep: bool

    @property
    def interpreter_status(self) -> str:
        """What the interpreter is told: an archived journey is a stopped one."""
        return "stopped" if self.status == "archived" else self.status


def _journey(row) -> Journey:
    return Journey(row.id, row.name, row.kind, row.entry, row.status, row.version, row.created_at, row.updated_at,
                   row.started_at, bool(row.sweep))  # fmt: skip


def all_journeys(conn: Connection, ws: str, *, share: bool = False,
                 texts: dict[tuple[str, int], str] | None = None) -> dict[str, Journey]:  # fmt: skip
    """The workspace's journeys. ``share`` (PostgreSQL): the rows locked shared until the transaction ends, so a
    status change (``control``, which locks its row for update) waits for the transitions that read the old status,
    and none of them can hold an input after a resume's sweep found nothing left to give again. ``texts``: filled
    with the stored definition of each one's current version ((id, version) -> its text, for
    :func:`definition_from_text`), read by the same statement (a transition reads them all: one statement per
    journey before)."""
    name = f"all_journeys:{'share' if share else ''}:{'texts' if texts is not None else ''}"
    q = prepared(conn, name, lambda dialect: _all_journeys(dialect, share, texts is not None))
    out = {}
    for r in conn.execute(q, {"ws": ws}):
        out[r.id] = _journey(r)
        if texts is not None and r.definition_text is not None:
            texts[(r.id, r.version)] = r.definition_text
    return out


def _all_journeys(dialect: str, share: bool, texts: bool):
    q = sa.select(journeys)
    if texts:
        v = journey_versions.c
        q = q.add_columns(_text(dialect, v.definition).label("definition_text")).select_from(
            journeys.outerjoin(journey_versions, sa.and_(v.workspace_id == journeys.c.workspace_id,
                                                         v.journey_id == journeys.c.id,
                                                         v.version == journeys.c.version)))  # fmt: skip
    q = q.where(journeys.c.workspace_id == sa.bindparam("ws")).order_by(journeys.c.id)
    # the journeys' rows alone are locked, not their versions' (immutable)
    return q.with_for_update(read=True, of=journeys) if share and dialect == "postgresql" else q


def _text(dialect: str, col):
    """A JSON column read as its stored text (not decoded: see _parse_text)."""
    return sa.cast(col, sa.Text) if dialect == "postgresql" else sa.type_coerce(col, sa.Text)


def get(conn: Connection, ws: str, jid: str, *, lock: bool = False) -> Journey:
    q = prepared(conn, "get:lock" if lock else "get", lambda dialect: _get(dialect, lock))
    row = conn.execute(q, {"ws": ws, "jid": jid}).first()
    if row is None:
        raise NotFound(f"journey {jid} not found")
    return _journey(row)


def _get(dialect: str, lock: bool):
    q = sa.select(journeys).where(journeys.c.workspace_id == sa.bindparam("ws"), journeys.c.id == sa.bindparam("jid"))
    return q.with_for_update() if lock and dialect == "postgresql" else q


@functools.lru_cache(maxsize=512)
def _parse(raw: bytes) -> d.Definition:
    # versions are immutable: a parsed definition is kept by its canonical JSON, whoever reads it
    return d.parse(orjson.loads(raw), strict=False)  # published under the rules of its day (d.parse)


def definition(conn: Connection, ws: str, jid: str, version: int) -> d.Definition:
    if not 1 <= version <= 2**31 - 1:  # the column's range: a bigger number is no version (not a database error)
        raise NotFound(f"journey {jid} version {version} not found", field="version")
    raw = conn.execute(prepared(conn, "definition", _definition), {"ws": ws, "jid": jid, "v": version}).scalar()
    if raw is None:
        raise NotFound(f"journey {jid} version {version} not found")
    return _parse_text(raw)


def _definition(dialect: str):
    # the stored text, not the document: a version read again (each transaction reads its journeys') is found by
    # it in _parse_text without decoding and encoding it again
    t = journey_versions.c
    return sa.select(_text(dialect, t.definition)).where(
        t.workspace_id == sa.bindparam("ws"), t.journey_id == sa.bindparam("jid"), t.version == sa.bindparam("v"))


@functools.lru_cache(maxsize=512)
def _parse_text(raw: str) -> d.Definition:
    return _parse(orjson.dumps(orjson.loads(raw), option=orjson.OPT_SORT_KEYS))  # its canonical JSON, as before


def definition_from_text(raw: str) -> d.Definition:
    """The version whose stored text ``all_journeys(..., texts=...)`` read: what :func:`definition` answers."""
    return _parse_text(raw)


def version_keys(conn: Connection, ws: str) -> list[tuple[str, int]]:
    """Every (journey id, version) ever published in the workspace (the primary key alone: no definition read)."""
    t = journey_versions.c
    q = prepared(conn, "version_keys",
                 lambda _: sa.select(t.journey_id, t.version).where(t.workspace_id == sa.bindparam("ws")))
    return [tuple(r) for r in conn.execute(q, {"ws": ws})]


def versions(conn: Connection, ws: str, jid: str) -> list[dict]:
    rows = conn.execute(sa.select(journey_versions.c.version, journey_versions.c.published_at).where(
        journey_versions.c.workspace_id == ws, journey_versions.c.journey_id == jid,
    ).order_by(journey_versions.c.version))  # fmt: skip
    return [{"version": r.version, "published_at": iso(r.published_at)} for r in rows]


def create_version(conn: Connection, ws: str, defn: d.Definition, kind: str, now: datetime) -> int:
    """Publish ``defn`` as a new version of its journey (created when new). Returns the version number."""
    try:
        cur = get(conn, ws, defn.id, lock=True)
    except NotFound:
        cur = None
    if cur is not None and cur.kind != kind:
        raise Conflict(f"{defn.id} is a {cur.kind}, not a {kind}", field="id")
    if cur is not None and cur.status == "archived":
        raise Conflict(f"{kind} {defn.id} is archived", field="id")
    version = 1 if cur is None else cur.version + 1
    conn.execute(journey_versions.insert().values(workspace_id=ws, journey_id=defn.id, version=version,
                                                  definition=d.to_json(defn), published_at=now))  # fmt: skip
    name, entry = defn.name or defn.id, entry_kind(defn)
    if cur is None:
        conn.execute(journeys.insert().values(workspace_id=ws, id=defn.id, name=name, kind=kind, entry=entry,
                                              status="active", version=1, created_at=now, updated_at=now,
                                              started_at=now))  # fmt: skip
    else:
        conn.execute(journeys.update().where(journeys.c.workspace_id == ws, journeys.c.id == defn.id)
                     .values(version=version, name=name, entry=entry, updated_at=now))  # fmt: skip
    return version


def entry_kind(defn: d.Definition) -> str:
    e = defn.entry
    return {d.EventEntry: "event", d.SegmentEntry: "segment", d.Schedule: "schedule", d.ApiEntry: "api"}[type(e)]


def scheduled(conn: Connection) -> list[tuple[str, str]]:
    """(workspace, journey) of every active journey entered by a schedule."""
    t = journeys.c
    q = prepared(conn, "scheduled", lambda _: sa.select(t.workspace_id, t.id).where(
        t.entry == "schedule", t.status == "active").order_by(t.workspace_id, t.id))  # fmt: skip
    return [(r.workspace_id, r.id) for r in conn.execute(q)]


def set_status(conn: Connection, ws: str, jid: str, status: str, now: datetime, *, sweep: bool) -> None:
    conn.execute(journeys.update().where(journeys.c.workspace_id == ws, journeys.c.id == jid)
                 .values(status=status, updated_at=now, sweep=sweep))  # fmt: skip


def swept(conn: Connection, ws: str, jid: str) -> None:
    conn.execute(journeys.update().where(journeys.c.workspace_id == ws, journeys.c.id == jid).values(sweep=False))


def to_sweep(conn: Connection, limit: int = 20) -> list[tuple[str, str]]:
    t = journeys.c
    q = prepared(conn, "to_sweep", lambda _: sa.select(t.workspace_id, t.id).where(t.sweep)
                 .order_by(t.workspace_id, t.id).limit(sa.bindparam("limit")))  # fmt: skip
    return [(r.workspace_id, r.id) for r in conn.execute(q, {"limit": limit})]


# -- instances ------------------------------------------------------------------------------------------------
def instances_of(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, list[j.State]]:
    """Every instance (exited ones too: re-entry reads them) of these people, per profile id, in entry order."""
    out: dict[str, list[j.State]] = {p: [] for p in profile_ids}
    if not profile_ids:
        return out
    t = journey_instances.c
    q = prepared(conn, "instances_of", lambda dialect: sa.select(t.profile_id, t.state).where(
        t.workspace_id == sa.bindparam("ws"), in_param(t.profile_id, "pids", dialect))
        .order_by(t.profile_id, t.entered_at, t.id))  # fmt: skip
    for pid, state in conn.execute(q, {"ws": ws, "pids": in_value(profile_ids, conn.dialect.name)}):
        out.setdefault(pid, []).append(j.state_from_json(state))
    return out


def save_instances(conn: Connection, ws: str, states: Iterable[tuple[j.State, bool]], now: datetime) -> None:
    """Write instances: (state, new). A new one is inserted, the others updated."""
    rows_new, rows_old = [], []
    for s, new in states:
        if new:
            rows_new.append({"workspace_id": ws, "id": s.instance_id, "journey_id": s.journey_id,
                             "version": s.version, "profile_id": s.profile_id, "status": s.status, "node": s.node,
                             "entered_at": s.entered_at, "updated_at": now, "state": j.state_to_json(s)})  # fmt: skip
        else:
            rows_old.append({"w_ws": ws, "w_id": s.instance_id, "w_pid": s.profile_id, "w_status": s.status,
                             "w_node": s.node, "w_at": now, "w_state": j.state_to_json(s)})  # fmt: skip
    if rows_new:
        insert_rows(conn, journey_instances, rows_new)
    if rows_old:  # one statement for all (executemany: pipelined by psycopg, one prepared statement on SQLite)
        conn.execute(prepared(conn, "save_instances", _save_instances), rows_old)


def _save_instances(_dialect: str):
    t = journey_instances.c
    return (journey_instances.update()
            .where(t.workspace_id == sa.bindparam("w_ws"), t.id == sa.bindparam("w_id"))
            .values(profile_id=sa.bindparam("w_pid"), status=sa.bindparam("w_status"), node=sa.bindparam("w_node"),
                    updated_at=sa.bindparam("w_at"), state=sa.bindparam("w_state")))  # fmt: skip


def live_instances(conn: Connection, ws: str, jid: str, limit: int, after: str | None = None) -> list[tuple[str, str]]:
    """(profile id, instance id) of the journey's instances not exited, by profile id, after ``after``."""
    t = journey_instances.c
    q = sa.select(t.profile_id, t.id).where(t.workspace_id == ws, t.journey_id == jid, t.status != "exited")
    if after is not None:
        q = q.where(t.profile_id > after)
    return [(r.profile_id, r.id) for r in conn.execute(q.order_by(t.profile_id, t.id).limit(limit))]


def repoint(conn: Connection, ws: str, merged: str, survivor: str) -> int:
    """A merged person's instances, timers and held inputs become the survivor's (her journeys go on)."""
    n = 0
    t = journey_instances.c
    for row in conn.execute(sa.select(t.id, t.state).where(t.workspace_id == ws, t.profile_id == merged)).all():
        state = dict(row.state)
        state["profile_id"] = survivor
        conn.execute(journey_instances.update().where(t.workspace_id == ws, t.id == row.id)
                     .values(profile_id=survivor, state=state))  # fmt: skip
        n += 1
    for table in (journey_timers, journey_held):
        conn.execute(table.update().where(table.c.workspace_id == ws, table.c.profile_id == merged)
                     .values(profile_id=survivor))  # fmt: skip
    return n


def doubled(conn: Connection, ws: str, profile_ids: list[str]) -> set[str]:
    """Of these people, those with two live instances of one journey (a merge gave them another profile's)."""
    if not profile_ids:
        return set()
    t = journey_instances.c
    q = prepared(conn, "doubled", lambda dialect: sa.select(t.profile_id).where(
        t.workspace_id == sa.bindparam("ws"), in_param(t.profile_id, "pids", dialect), t.status != "exited")
        .group_by(t.profile_id, t.journey_id).having(sa.func.count() > 1))  # fmt: skip
    return set(conn.execute(q, {"ws": ws, "pids": in_value(profile_ids, conn.dialect.name)}).scalars())


# -- timers ---------------------------------------------------------------------------------------------------
def set_timers(conn: Connection, ws: str, rows: list[dict]) -> None:
    """rows: key, journey_id, instance_id, profile_id, due_at. A key is set once (the interpreter's keys are unique
    per instance and step; a scheduled start's per run and person): setting it again changes nothing."""
    if rows:
        insert_rows(conn, journey_timers, [{"workspace_id": ws, **r} for r in rows],
                         conflict=["workspace_id", "key"])  # fmt: skip


def cancel_timers(conn: Connection, ws: str, keys: list[str]) -> None:
    if keys:
        t = journey_timers.c
        q = prepared(conn, "cancel_timers", lambda dialect: journey_timers.delete().where(
            t.workspace_id == sa.bindparam("ws"), in_param(t.key, "keys", dialect)))  # fmt: skip
        conn.execute(q, {"ws": ws, "keys": in_value(keys, conn.dialect.name)})


RETRY_FIRST = timedelta(minutes=1)
RETRY_MAX = timedelta(days=1)


def postpone_timers(conn: Connection, ws: str, keys: list[str], at: datetime, error: str | None = None) -> None:
    """Try these timers again later: a minute after ``at``, twice as long after each failure (``error``, kept),
    a day at most; the instant a timer was first due is kept (``first_due``): it stays the time of its input.
    A timer of someone who is not a profile right now (merged, the move not applied yet) waits a minute without
    counting an attempt."""
    if not keys:
        return
    t = journey_timers.c
    mine = (t.workspace_id == ws, bulk.in_(t.key, keys, conn.dialect.name))
    if error is None:  # the instant it was first due stays its input's time (review: it was lost here)
        conn.execute(journey_timers.update().where(*mine).values(
            due_at=at + RETRY_FIRST, first_due=sa.func.coalesce(t.first_due, t.due_at)))  # fmt: skip
        return
    for key, attempts, due_at, first_due in conn.execute(sa.select(t.key, t.attempts, t.due_at, t.first_due)
                                                         .where(*mine)).all():  # fmt: skip
        wait = min(RETRY_FIRST * 2 ** min(attempts, 16), RETRY_MAX)
        conn.execute(journey_timers.update().where(t.workspace_id == ws, t.key == key)
                     .values(due_at=at + wait, attempts=attempts + 1, error=error[:300],
                             first_due=first_due or due_at))  # fmt: skip


def due_timers(conn: Connection, at: datetime, limit: int) -> list:
    """Timers due at ``at``, earliest first, locked (PostgreSQL: those another worker holds are skipped)."""
    return conn.execute(prepared(conn, "due_timers", _due_timers), {"at": at, "limit": limit}).all()


def _due_timers(dialect: str):
    t = journey_timers.c
    q = sa.select(journey_timers).where(t.due_at <= sa.bindparam("at")).order_by(t.due_at).limit(sa.bindparam("limit"))
    return q.with_for_update(skip_locked=True) if dialect == "postgresql" else q


def timers_of(conn: Connection, ws: str, profile_ids: list[str]) -> list:
    t = journey_timers.c
    q = prepared(conn, "timers_of", lambda dialect: sa.select(journey_timers).where(
        t.workspace_id == sa.bindparam("ws"), in_param(t.profile_id, "pids", dialect)).order_by(t.due_at, t.key))
    return conn.execute(q, {"ws": ws, "pids": in_value(profile_ids, conn.dialect.name)}).all()  # fmt: skip


def start_key(jid: str, run: str, pid: str) -> str:
    """The timer that starts a person in a run of a scheduled journey at her local time."""
    return f"start|{jid}|{run}|{pid}"


def start_id(key: str) -> str:
    """The start's id of a start timer: the run alone, not the person, so that the instance it makes is the same
    whoever the timer was set for (a merge gives the survivor both people's timers: one entry, not two)."""
    return key.split("|")[2]


# -- held inputs ------------------------------------------------------------------------------------------------
def hold(conn: Connection, ws: str, jid: str, pid: str, inp: j.Input) -> None:
    conn.execute(prepared(conn, "hold", lambda _: journey_held.insert()),
                 {"workspace_id": ws, "journey_id": jid, "profile_id": pid, "at": j.input_time(inp),
                  "input": input_to_json(inp)})  # fmt: skip


def held_people(conn: Connection, ws: str, jid: str, limit: int) -> list[str]:
    t = journey_held.c
    return list(conn.execute(sa.select(t.profile_id).where(t.workspace_id == ws, t.journey_id == jid)
                             .group_by(t.profile_id).order_by(t.profile_id).limit(limit)).scalars())  # fmt: skip


def has_held(conn: Connection, ws: str, jid: str, pid: str) -> bool:
    t = journey_held.c
    return conn.execute(sa.select(t.seq).where(t.workspace_id == ws, t.journey_id == jid, t.profile_id == pid)
                        .limit(1)).first() is not None  # fmt: skip


def held_pairs(conn: Connection, ws: str, jids: list[str], profile_ids: list[str]) -> set[tuple[str, str]]:
    """(journey, profile) of these people's held inputs of these journeys: :func:`has_held` of many at once."""
    if not profile_ids or not jids:
        return set()
    t = journey_held.c
    d = conn.dialect.name
    q = prepared(conn, "held_pairs", lambda dialect: sa.select(t.journey_id, t.profile_id).distinct().where(
        t.workspace_id == sa.bindparam("ws"), in_param(t.journey_id, "jids", dialect),
        in_param(t.profile_id, "pids", dialect)))  # fmt: skip
    return {(r.journey_id, r.profile_id) for r in conn.execute(
        q, {"ws": ws, "jids": in_value(jids, d), "pids": in_value(profile_ids, d)})}  # fmt: skip


DEFERRED = ""  # the journey id of an input held until its own time, for every journey (runtime.Consumer)


def defer(conn: Connection, ws: str, pid: str, inp: j.Input, key: str) -> None:
    """Keep an input stamped after now until its own time: a timer ``key`` then gives it (PersonRun.fire_due)."""
    hold(conn, ws, DEFERRED, pid, inp)
    set_timers(conn, ws, [{"key": key, "journey_id": DEFERRED, "instance_id": "", "profile_id": pid,
                           "due_at": j.input_time(inp)}])  # fmt: skip


def take_deferred(conn: Connection, ws: str, pid: str, until: datetime) -> list[j.Input]:
    """Her deferred inputs whose time has come by ``until``, in time order (then as they came), deleted."""
    t = journey_held.c
    q = prepared(conn, "take_deferred", lambda _: sa.select(t.seq, t.input).where(
        t.workspace_id == sa.bindparam("ws"), t.journey_id == DEFERRED, t.profile_id == sa.bindparam("pid"),
        t.at <= sa.bindparam("until")).order_by(t.at, t.seq))  # fmt: skip
    rows = conn.execute(q, {"ws": ws, "pid": pid, "until": until}).all()
    if rows:
        conn.execute(prepared(conn, "held:delete", lambda dialect: journey_held.delete().where(
            in_param(t.seq, "seqs", dialect))), {"seqs": in_value([r.seq for r in rows], conn.dialect.name)})
    return [input_from_json(r.input) for r in rows]


def take_held(conn: Connection, ws: str, jid: str, pid: str) -> list[j.Input]:
    """The person's held inputs of the journey, in their own time order (then as they came), deleted."""
    t = journey_held.c
    rows = conn.execute(
        sa.select(t.seq, t.input)
        .where(t.workspace_id == ws, t.journey_id == jid, t.profile_id == pid)
        .order_by(t.at, t.seq)
    ).all()
    if rows:
        conn.execute(journey_held.delete().where(t.seq.in_([r.seq for r in rows])))
    return [input_from_json(r.input) for r in rows]


def drop_held(conn: Connection, ws: str, jid: str) -> int:
    """A stopped journey's held inputs: never to be applied."""
    t = journey_held.c
    return conn.execute(journey_held.delete().where(t.workspace_id == ws, t.journey_id == jid)).rowcount or 0


def end_instances(conn: Connection, ws: str, jid: str, pid: str, at: datetime, reason: str) -> None:
    """Mark exited the instances of a person who is no longer a profile (no transition can run for her)."""
    t = journey_instances.c
    for row in conn.execute(
        sa.select(t.id, t.state).where(
            t.workspace_id == ws, t.journey_id == jid, t.profile_id == pid, t.status != "exited"
        )
    ).all():
        state = {**row.state, "status": "exited", "exited_at": iso(at), "exit_reason": reason, "timers": {}}
        conn.execute(journey_instances.update().where(t.workspace_id == ws, t.id == row.id)
                     .values(status="exited", state=state, updated_at=at))  # fmt: skip
    conn.execute(
        journey_timers.delete().where(
            journey_timers.c.workspace_id == ws, journey_timers.c.journey_id == jid, journey_timers.c.profile_id == pid
        )
    )


# -- records ----------------------------------------------------------------------------------------------------
def add_records(conn: Connection, ws: str, rows: list[dict]) -> None:
    if rows:
        insert_rows(conn, journey_records, [{"workspace_id": ws, **r} for r in rows])


def records_of(conn: Connection, ws: str, profile_ids: list[str], limit: int = 500) -> list[dict]:
    t = journey_records.c
    rows = conn.execute(sa.select(journey_records).where(t.workspace_id == ws, bulk.in_(
        t.profile_id, profile_ids, conn.dialect.name)).order_by(t.id).limit(limit))  # fmt: skip
    return [
        {
            "journey_id": r.journey_id,
            "version": r.version,
            "instance_id": r.instance_id,
            "kind": r.kind,
            "node": r.node,
            "branch": r.branch,
            "arm": r.arm,
            "at": iso(r.at),
            "detail": r.detail,
        }
        for r in rows
    ]


# -- scheduled runs -----------------------------------------------------------------------------------------------
RUN_ATTEMPTS = 3  # a chunk that failed together this many times goes one person at a time


def runs_open(conn: Connection, at: datetime, limit: int = 10) -> list:
    """Runs not done and not waiting for a retry, oldest first."""
    return conn.execute(prepared(conn, "runs_open", _runs_open), {"at": at, "limit": limit}).all()


def _runs_open(dialect: str):
    t = journey_runs.c
    q = (sa.select(journey_runs).where(sa.not_(t.done), sa.or_(t.retry_at.is_(None), t.retry_at <= sa.bindparam("at")))
         .order_by(t.run_at).limit(sa.bindparam("limit")))  # fmt: skip
    return q.with_for_update(skip_locked=True) if dialect == "postgresql" else q


def lock_run(conn: Connection, ws: str, jid: str, run_at: datetime):
    """The open run, locked (PostgreSQL: None when another worker walks it), or None when it is done."""
    t = journey_runs.c
    q = sa.select(journey_runs).where(t.workspace_id == ws, t.journey_id == jid, t.run_at == run_at,
                                      sa.not_(t.done))  # fmt: skip
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    return conn.execute(q).first()


def run_failed(conn: Connection, ws: str, jid: str, run_at: datetime, at: datetime, error: str) -> None:
    """A chunk of the run failed: tried again a minute after ``at``, twice as long after each failure, a day at
    most; the error kept (the journey's runs show it)."""
    t = journey_runs.c
    mine = (t.workspace_id == ws, t.journey_id == jid, t.run_at == run_at)
    attempts = conn.execute(sa.select(t.attempts).where(*mine)).scalar() or 0
    wait = min(RETRY_FIRST * 2 ** min(attempts, 16), RETRY_MAX)
    conn.execute(journey_runs.update().where(*mine).values(attempts=attempts + 1, retry_at=at + wait,
                                                           error=error[:300]))  # fmt: skip


def add_run(conn: Connection, ws: str, jid: str, run_at: datetime, version: int) -> bool:
    """A run to walk. The planner adds one only when the current schedule has none at ``run_at``, so a row there is
    an older schedule's (a new audience at the same time, a weekday added, a time moved and moved back: review): it
    becomes this version's run, walked again from the start (its people started already are not started twice: a
    start's id is its run's)."""
    t = journey_runs.c
    conn.execute(journey_runs.update().where(t.workspace_id == ws, t.journey_id == jid, t.run_at == run_at,
                                             t.version < version)
                 .values(version=version, after=None, done=False, started=0, attempts=0, retry_at=None,
                         error=None))  # fmt: skip
    return bool(
        bulk.insert_rows(
            conn,
            journey_runs,
            [
                {
                    "workspace_id": ws,
                    "journey_id": jid,
                    "run_at": run_at,
                    "version": version,
                    "done": False,
                    "started": 0,
                }
            ],
            conflict=["workspace_id", "journey_id", "run_at"],
            returning="journey_id",
        )
    )


def last_run(conn: Connection, ws: str, jid: str, since_version: int = 1) -> datetime | None:
    """The latest run of the journey's versions from ``since_version`` on (those of its current schedule)."""
    t = journey_runs.c
    q = prepared(conn, "last_run", lambda _: sa.select(sa.func.max(t.run_at)).where(
        t.workspace_id == sa.bindparam("ws"), t.journey_id == sa.bindparam("jid"), t.version >= sa.bindparam("v")))
    return conn.execute(q, {"ws": ws, "jid": jid, "v": since_version}).scalar()  # fmt: skip


def schedule_since(conn: Connection, ws: str, jid: str, version: int) -> tuple[int, datetime]:
    """The first version, and when it was published, of the run of versions up to ``version`` whose entry is the
    same as that version's: where its schedule took effect."""
    t = journey_versions.c
    rows = conn.execute(sa.select(t.version, t.published_at, t.definition).where(
        t.workspace_id == ws, t.journey_id == jid, t.version <= version).order_by(t.version.desc())).all()  # fmt: skip
    since, at = rows[0].version, rows[0].published_at
    for row in rows[1:]:
        if row.definition.get("entry") != rows[0].definition.get("entry"):
            break
        since, at = row.version, row.published_at
    return since, at


def reschedule(conn: Connection, ws: str, jid: str) -> None:
    """The journey's schedule changed: the starts its earlier schedule set for people's local times and did not
    reach yet are cancelled, and its runs still starting people are closed (the new schedule plans its own)."""
    tm = journey_timers.c
    conn.execute(journey_timers.delete().where(tm.workspace_id == ws, tm.journey_id == jid, tm.instance_id == ""))
    t = journey_runs.c
    conn.execute(journey_runs.update().where(t.workspace_id == ws, t.journey_id == jid, t.done.is_(False))
                 .values(done=True))  # fmt: skip


def move_run(conn: Connection, ws: str, jid: str, run_at: datetime, after: str | None, started: int,
             done: bool) -> None:  # fmt: skip
    t = journey_runs.c
    conn.execute(journey_runs.update().where(t.workspace_id == ws, t.journey_id == jid, t.run_at == run_at)
                 .values(after=after, started=t.started + started, done=done, attempts=0, retry_at=None,
                         error=None))  # fmt: skip


def runs_of(conn: Connection, ws: str, jid: str) -> list[dict]:
    t = journey_runs.c
    rows = conn.execute(sa.select(journey_runs).where(t.workspace_id == ws, t.journey_id == jid).order_by(t.run_at))
    return [{"run_at": iso(r.run_at), "version": r.version, "done": bool(r.done), "started": r.started,
             "attempts": r.attempts, "retry_at": iso(r.retry_at) if r.retry_at else None, "error": r.error}
            for r in rows]


# -- inputs as JSON -----------------------------------------------------------------------------------------------
def input_to_json(inp: j.Input) -> dict:
    if isinstance(inp, Event):
        return {"kind": "event", "name": inp.name, "type": inp.type, "at": iso(inp.at), "channel": inp.channel,
                "properties": dict(inp.properties), "id": inp.id, "outbound": inp.outbound,
                **({"anchor": inp.anchor} if inp.anchor else {})}  # fmt: skip
    if isinstance(inp, j.MessageEvent):
        return {"kind": "message", "status": inp.status, "message_id": inp.message_id, "journey_id": inp.journey_id,
                "key": inp.key, "at": iso(inp.at), "channel": inp.channel}  # fmt: skip
    if isinstance(inp, j.SegmentChanged):
        return {"kind": "segment", "segment": inp.segment, "change": inp.change, "at": iso(inp.at), "id": inp.id}
    if isinstance(inp, j.TimerFired):
        return {"kind": "timer", "instance_id": inp.instance_id, "key": inp.key, "due": iso(inp.due)}
    assert isinstance(inp, j.Start)
    return {"kind": "start", "id": inp.id, "at": iso(inp.at), "data": dict(inp.data)}


def input_from_json(raw: Mapping) -> j.Input:
    k = raw["kind"]
    if k == "event":
        # an input held before names were checked (segments.person.Event.from_payload) may carry a page name that is
        # not a text: no name, as the event would be read now
        name = raw["name"] if isinstance(raw["name"], str) and raw["name"] else None
        return Event(name=name, type=raw["type"], at=parse_ts(raw["at"]), channel=raw["channel"],
                     properties=raw["properties"], id=raw["id"], outbound=raw.get("outbound", False),
                     anchor=raw.get("anchor"))  # fmt: skip
    if k == "message":
        return j.MessageEvent(raw["status"], raw["message_id"], raw["journey_id"], raw["key"], parse_ts(raw["at"]),
                              raw.get("channel"))  # fmt: skip
    if k == "segment":
        return j.SegmentChanged(raw["segment"], raw["change"], parse_ts(raw["at"]), raw.get("id", ""))
    if k == "timer":
        return j.TimerFired(raw["instance_id"], raw["key"], parse_ts(raw["due"]))
    return j.Start(raw["id"], parse_ts(raw["at"]), raw.get("data") or {})


# -- erasure ------------------------------------------------------------------------------------------------------
TABLES = {
    "journey_instances": "journey_instances", "journey_timers": "journey_timers", "journey_held": "journey_held",
    "journey_records": "journey_records",
    # rewritten, not deleted; the old version of the row, her id in it, is left in the table's files until scrubbed
    "journey_runs_rewritten": "journey_runs",
}  # fmt: skip


def export(conn: Connection, ws: str, person) -> dict:
    """What the journeys hold about her, for her export: her instances (their state holds her entry event's
    properties), what each step recorded (entered, steps, arms, converted, exited with the reason), her timers and
    the inputs held for her (a paused journey's, or an event waiting for its own time)."""
    ids = list(person.profile_ids)

    def rows(q) -> list[dict]:
        # str(k): a column name is a str subclass, which a JSON encoder (orjson) refuses as a key
        return [{str(k): (iso(v) if isinstance(v, datetime) else v) for k, v in r._mapping.items()}
                for r in conn.execute(q)]

    i, rc, tm, hd = journey_instances.c, journey_records.c, journey_timers.c, journey_held.c
    return {"journeys": {
        "instances": rows(sa.select(i.id, i.journey_id, i.version, i.status, i.node, i.entered_at, i.updated_at,
                                    i.state).where(i.workspace_id == ws, i.profile_id.in_(ids))
                          .order_by(i.entered_at, i.id)),
        "records": rows(sa.select(rc.journey_id, rc.version, rc.instance_id, rc.kind, rc.node, rc.branch, rc.arm,
                                  rc.at, rc.detail).where(rc.workspace_id == ws, rc.profile_id.in_(ids))
                        .order_by(rc.at, rc.id)),
        "timers": rows(sa.select(tm.journey_id, tm.instance_id, tm.due_at).where(
            tm.workspace_id == ws, tm.profile_id.in_(ids)).order_by(tm.due_at)),
        "held": rows(sa.select(hd.journey_id, hd.at, hd.input).where(hd.workspace_id == ws, hd.profile_id.in_(ids))
                     .order_by(hd.at, hd.seq)),
    }}  # fmt: skip


def forget(conn: Connection, ws: str, person) -> dict[str, int]:
    """Erasure: the person's instances (their state holds her entry event's properties), timers, held inputs and
    records, under her profile id and the ids merged into it."""
    out = {}
    for name, table in (("journey_instances", journey_instances), ("journey_timers", journey_timers),
                        ("journey_held", journey_held), ("journey_records", journey_records)):  # fmt: skip
        res = conn.execute(table.delete().where(table.c.workspace_id == ws, table.c.profile_id.in_(person.profile_ids)))
        out[name] = res.rowcount or 0
    # a scheduled run's walk may stand at her id: a prefix of it keeps the walk's place (the few people whose ids
    # share it are started again, which starts nobody twice) and names nobody
    r = journey_runs.c
    out["journey_runs_rewritten"] = 0
    for pid in person.profile_ids:
        res = conn.execute(journey_runs.update().where(r.workspace_id == ws, r.after == pid).values(after=pid[:8]))
        out["journey_runs_rewritten"] += res.rowcount or 0
    return out


# -- what a journey still uses (a segment's deletion asks: chorus.journeys.schedule.segment_uses) ------------------
def versions_inside(conn: Connection, ws: str, jid: str) -> set[int]:
    """The versions somebody is still inside (active, or tracking a goal): their steps may still read a segment."""
    t = journey_instances.c
    return set(conn.execute(sa.select(t.version).distinct().where(t.workspace_id == ws, t.journey_id == jid,
                                                                  t.status != "exited")).scalars())  # fmt: skip


def starting(conn: Connection, ws: str, jid: str) -> bool:
    """A scheduled run is still starting people: a run not walked to its end, or a local-time start not due yet."""
    r, tm = journey_runs.c, journey_timers.c
    return conn.execute(sa.select(r.run_at).where(r.workspace_id == ws, r.journey_id == jid, sa.not_(r.done))
                        .limit(1)).first() is not None or conn.execute(
        sa.select(tm.key).where(tm.workspace_id == ws, tm.journey_id == jid, tm.instance_id == "").limit(1)
    ).first() is not None  # fmt: skip
