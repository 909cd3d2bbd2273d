"""The segments package's tables: definitions, members, history, timers and static lists. Other packages call these
functions; every function that writes takes the caller's connection."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.errors import ChorusError, Conflict, NotFound
from chorus.registry import Person
from chorus.segments import rules as r
from chorus.store import bulk
from chorus.store.tables import (
    list_members,
    segment_history,
    segment_members,
    segment_timers,
    segments,
    static_lists,
)

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Definition:
    id: str
    name: str
    rule: r.Node
    version: int
    computed_version: int | None
    computed_at: datetime | None

    @property
    def inputs(self) -> r.Inputs:
        return r.dependencies(self.rule)


def check_id(value: object, field: str = "id") -> str:
    if not isinstance(value, str) or not ID.fullmatch(value):
        raise ChorusError(f"{field} must be 1 to 64 letters, digits, '_', '-' or '.', starting with a letter or digit",
                          field=field)  # fmt: skip
    return value


def _definition(row) -> Definition:
    return Definition(row.id, row.name, r.parse(row.rule), row.version, row.computed_version, row.computed_at)


def definitions(conn: Connection, ws: str) -> dict[str, Definition]:
    rows = conn.execute(sa.select(segments).where(segments.c.workspace_id == ws).order_by(segments.c.id)).all()
    return {row.id: _definition(row) for row in rows}


def get(conn: Connection, ws: str, segment_id: str) -> Definition:
    row = conn.execute(sa.select(segments).where(segments.c.workspace_id == ws, segments.c.id == segment_id)).first()
    if row is None:
        raise NotFound(f"no segment {segment_id!r}", field="id")
    return _definition(row)


def save(conn: Connection, ws: str, segment_id: str, name: str, rule: r.Node, now: datetime) -> tuple[Definition, bool]:
    """Create or replace a segment's definition; returns it and whether its rule changed (a new version, to be
    computed in batch). The rule's references are checked against the workspace's other segments and lists."""
    others = {d.id: d.rule for d in definitions(conn, ws).values() if d.id != segment_id}
    r.check_references({**others, segment_id: rule}, focus=segment_id)
    lists = set(conn.execute(sa.select(static_lists.c.id).where(static_lists.c.workspace_id == ws)).scalars())
    for missing in sorted(r.dependencies(rule).lists - lists):
        raise ChorusError(f"rule: static list {missing!r} does not exist (create it with PUT /api/lists/{missing})",
                          field="rule")  # fmt: skip
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
            .values(name=name, rule=canon, version=row.version + (1 if changed else 0), updated_at=now)
        )
    return get(conn, ws, segment_id), changed


def delete(conn: Connection, ws: str, segment_id: str) -> None:
    get(conn, ws, segment_id)
    users = [d.id for d in definitions(conn, ws).values() if segment_id in d.inputs.segments]
    if users:
        raise Conflict(f"segment {segment_id!r} is used by {', '.join(sorted(users))}: change those first", field="id")
    for t in (segment_members, segment_timers):
        conn.execute(t.delete().where(t.c.workspace_id == ws, t.c.segment_id == segment_id))
    conn.execute(segments.delete().where(segments.c.workspace_id == ws, segments.c.id == segment_id))


def mark_computed(conn: Connection, ws: str, segment_id: str, version: int, at: datetime) -> None:
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


def enter(conn: Connection, ws: str, segment_id: str, profile_ids: Iterable[str], at: datetime, cause: str) -> None:
    rows = [{"workspace_id": ws, "segment_id": segment_id, "profile_id": p, "since": at} for p in profile_ids]
    if rows:
        bulk.insert_rows(conn, segment_members, rows, conflict=["workspace_id", "segment_id", "profile_id"])
        _history(conn, ws, segment_id, [x["profile_id"] for x in rows], "entered", at, cause)


def leave(conn: Connection, ws: str, segment_id: str, profile_ids: Iterable[str], at: datetime, cause: str) -> None:
    ids = list(profile_ids)
    for i in range(0, len(ids), 5000):
        conn.execute(segment_members.delete().where(
            segment_members.c.workspace_id == ws, segment_members.c.segment_id == segment_id,
            segment_members.c.profile_id.in_(ids[i : i + 5000])))  # fmt: skip
    _history(conn, ws, segment_id, ids, "exited", at, cause)


def _history(conn, ws, segment_id, ids, change, at, cause) -> None:
    bulk.insert_rows(conn, segment_history, [
        {"workspace_id": ws, "segment_id": segment_id, "profile_id": p, "change": change, "at": at, "cause": cause}
        for p in ids
    ])  # fmt: skip


def set_timer(conn: Connection, ws: str, segment_id: str, profile_id: str, due: datetime | None) -> None:
    key = (segment_timers.c.workspace_id == ws, segment_timers.c.segment_id == segment_id,
           segment_timers.c.profile_id == profile_id)  # fmt: skip
    if due is None:
        conn.execute(segment_timers.delete().where(*key))
        return
    bulk.insert_rows(conn, segment_timers, [{"workspace_id": ws, "segment_id": segment_id, "profile_id": profile_id,
                                              "due_at": due}],
                     conflict=["workspace_id", "segment_id", "profile_id"], update=["due_at"])  # fmt: skip


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
