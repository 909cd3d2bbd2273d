"""Computed traits: values analytics write back to profiles (lifetime value, probability alive, RFM), kept apart
from the traits a person's events set, so that a recomputation replaces them whole and never fights a merge
policy. Profile views show them under ``computed_traits``."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.profiles import feed
from chorus.store import bulk
from chorus.store.tables import computed_traits
from chorus.timeutil import iso

CHUNK = 5_000


def replace(conn: Connection, ws: str, model: str, values: dict[str, dict], at: datetime) -> dict:
    """Write ``values`` (profile id -> {trait: value}) as ``model``'s traits, computed at ``at``; the model's traits
    not written this time (a profile that no longer qualifies) are removed. Profile ids merged since the data was
    read are written to the profile they are now part of; ids that are no longer profiles (erased) are skipped."""
    from chorus.profiles.views import resolve_ids  # views shows computed traits: import it late

    if conn.dialect.name == "postgresql":  # an erasure of one of these people waits, or is waited for: never both
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})

    written = skipped = collided = 0
    owner: dict[str, str] = {}  # profile written -> the scored id its values came from
    differs: set[str] = set()  # profiles whose values this run changes: a change for the feed
    ids = list(values)
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        current = resolve_ids(conn, ws, part)
        rows = {}
        for pid in part:
            target = current.get(pid)
            if target is None:
                skipped += 1
                continue
            if target in owner:
                # two scored ids are one person now (merged after the export): the survivor's own row wins
                collided += 1
                if owner[target] == target or pid != target:
                    continue
                written -= 1  # the survivor's own row replaces the one written for a merged id
            owner[target] = pid
            for name, value in values[pid].items():
                rows[(target, name)] = {
                    "workspace_id": ws, "profile_id": target, "name": name, "value": value, "model": model,
                    "computed_at": at,
                }  # fmt: skip
            written += 1
        ct = computed_traits.c
        before = {
            (r.profile_id, r.name): r.value
            for r in conn.execute(sa.select(ct.profile_id, ct.name, ct.value)
                                  .where(ct.workspace_id == ws, ct.profile_id.in_({k[0] for k in rows})))
        }  # fmt: skip
        differs.update(k[0] for k, row in rows.items() if k not in before or before[k] != row["value"])
        bulk.insert_rows(
            conn, computed_traits, list(rows.values()), conflict=["workspace_id", "profile_id", "name"],
            update=["value", "model", "computed_at"],
        )  # fmt: skip
    gone = conn.execute(
        computed_traits.delete()
        .where(
            computed_traits.c.workspace_id == ws, computed_traits.c.model == model, computed_traits.c.computed_at < at
        )
        .returning(computed_traits.c.profile_id)
    ).scalars().all()
    # every profile whose computed traits changed or were removed: segments on computed.* re-read them (a run that
    # rescored a million people with the same values records nothing)
    changed = sorted(differs | set(gone))
    feed.record(conn, ws, [feed.Change(pid, "computed", detail={"model": model}) for pid in changed], at)
    return {"profiles": written, "skipped": skipped, "merged": collided, "removed": len(gone)}


def read(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, dict]:
    """Profile id -> {trait: {value, model, computed_at}}."""
    out: dict[str, dict] = {}
    if not profile_ids:
        return out
    rows = conn.execute(
        sa.select(computed_traits).where(
            computed_traits.c.workspace_id == ws,
            bulk.in_(computed_traits.c.profile_id, profile_ids, conn.dialect.name),
        )
    )
    for r in rows:
        out.setdefault(r.profile_id, {})[r.name] = {
            "value": r.value,
            "model": r.model,
            "computed_at": iso(r.computed_at),
        }
    return out


def forget(conn: Connection, ws: str, profile_ids: list[str]) -> int:
    return conn.execute(
        computed_traits.delete().where(
            computed_traits.c.workspace_id == ws, bulk.in_(computed_traits.c.profile_id, profile_ids, conn.dialect.name)
        )
    ).rowcount
