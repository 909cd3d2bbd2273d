"""Give the activity summary to profiles stored before the state kept one (decision 0046).

A state without ``activity`` never gains a partial one from new events (``profiles.state``): a summary must count
every event of the person or say nothing. This worker task folds the summary of such profiles from their stored
events, a batch of profiles a pass, until none is left; until then the segment engine reads their events instead,
as it did before.

It is exact because it runs under the lock identity resolution holds for the workspace (PostgreSQL's advisory lock
``identity:<workspace>``; SQLite's one writer), which every writer of a profile's state takes too: no event of
these profiles can be folded, attributed or moved by a merge between the read of their events and the write of
their states (``count_activity`` leaves out Chorus' own records, as every fold does). A profile can lose its
summary after the task has walked past it only by a merge with a profile that has none (``state.merge`` keeps
``activity`` only when both sides have it): it is done at the next start, and meanwhile its events are read (a
missing summary is always safe; a wrong one would not be).
"""

from __future__ import annotations

import logging
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus.profiles import state as pstate
from chorus.registry import TaskOptions
from chorus.store import bulk
from chorus.store.tables import events, profiles

log = logging.getLogger("chorus.profiles.activity")

BATCH = 50  # profiles a transaction: their events are read whole, under the lock resolution waits for


def _lacking(conn: Connection):
    if conn.dialect.name == "postgresql":
        return sa.text("profiles.state -> 'activity' IS NULL")
    return sa.text("json_type(profiles.state, '$.activity') IS NULL")


def backfill(conn: Connection, limit: int = BATCH, after: tuple[str, str] | None = None) -> tuple[int, tuple | None]:
    """Fold the activity of up to ``limit`` profiles that have none, after the (workspace, profile id) ``after``,
    in the caller's transaction: the number done and the last (workspace, id) looked at (None: none left). The
    caller's transaction must be a write one (SQLite: ``BEGIN IMMEDIATE``, as the store's are)."""
    p = profiles.c
    q = sa.select(p.workspace_id, p.id).where(_lacking(conn))
    if after is not None:  # a cursor: each profile is looked at once, not every profile done again each pass
        q = q.where(sa.or_(p.workspace_id > after[0], sa.and_(p.workspace_id == after[0], p.id > after[1])))
    found = conn.execute(q.order_by(p.workspace_id, p.id).limit(limit)).all()
    if not found:
        return 0, None
    by_ws: dict[str, list[str]] = defaultdict(list)
    for ws, pid in found:
        by_ws[ws].append(pid)
    done = 0
    for ws in sorted(by_ws):
        if conn.dialect.name == "postgresql":  # resolution's lock for the workspace (identity.resolver)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
        d = conn.dialect.name
        # read again under the lock: a merge may have removed one, or given it a state with activity
        states = dict(conn.execute(sa.select(profiles.c.id, profiles.c.state).where(
            profiles.c.workspace_id == ws, bulk.in_(profiles.c.id, by_ws[ws], d), _lacking(conn))).all())  # fmt: skip
        if not states:
            continue
        acts = {pid: pstate.empty_activity() for pid in states}
        rows = conn.execute(sa.select(events.c.profile_id, events.c.payload).where(
            events.c.workspace_id == ws, bulk.in_(events.c.profile_id, sorted(states), d)))  # fmt: skip
        for pid, payload in rows:
            pstate.count_activity(acts[pid], payload)
        bulk.update_rows(conn, profiles, "id", [{"id": pid, "state": {**states[pid], "activity": acts[pid]}}
                                                for pid in sorted(states)])  # fmt: skip
        done += len(states)
    return done, tuple(found[-1])


class Backfill:
    """The worker task: a batch a pass, walking the profiles once in (workspace, id) order; then nothing more in
    this process (profiles made or folded since have a summary; one merged meanwhile with a profile without one is
    done at the next start)."""

    def __init__(self, engine: Engine, options: TaskOptions = TaskOptions()):
        self.engine = engine
        self.finished = False
        self.after: tuple | None = None

    def run_once(self) -> int:
        if self.finished:
            return 0
        with self.engine.begin() as conn:
            n, self.after = backfill(conn, BATCH, after=self.after)
        if self.after is None:
            self.finished = True
        if n:
            log.info("activity summary folded for %d profiles stored before it was kept", n)
        return max(n, 1) if not self.finished else n  # more to look at: the worker's next pass comes at once

    def close(self) -> None:
        pass
