"""Manual changes of an audience's membership (a journey's audience step), applied by the audience's own sync.

A change is a row (``audience_changes``, :func:`store.queue_change`) written in the caller's transaction, one per
idempotency key: a journey transition given again queues nothing new. The ``audience_changes`` worker task applies
each audience's pending changes in the order they were queued: the last change of a person wins (added then
removed before the pass: removed): the membership last synced, with the changes applied, is synced (``replace``,
read once the audience is claimed: :func:`sync.sync_read`) through the same consent check, hashing and diff as any
sync, so only the differences are sent, and the rows are then marked applied. A sync that fails leaves them
pending: the next pass after :data:`RETRY` tries again, and the diff sends only what the platform does not hold
yet. An audience that follows a segment takes no manual change (journeys
refuse to publish such a step); a change queued before it started following is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from chorus import workspaces
from chorus.errors import ChorusError, Conflict
from chorus.messaging.audiences import store, sync
from chorus.messaging.audiences.base import AudienceClient
from chorus.messaging.audiences.membership import Entry, Skip
from chorus.registry import TaskOptions
from chorus.store.db import read_only
from chorus.timeutil import utcnow
from chorus.workspaces import Workspace

log = logging.getLogger("chorus.audiences")

RETRY = timedelta(minutes=1)  # after a failed sync, an audience's changes wait this long


def apply(
    engine: Engine, ws: Workspace, name: str, *, client: Callable[[], AudienceClient] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> dict:  # fmt: skip
    """Apply the audience's pending changes; returns the sync's result and how many changes were applied. Conflict
    while another sync of the audience runs; ProviderFailed when the platform fails (the changes stay pending)."""
    with read_only(engine) as conn:
        aud = store.get(conn, ws.id, name)
    follow = (aud.options or {}).get("follow")
    if follow and not follow.get("stopped"):  # queued before it started following: its members are the segment's
        with read_only(engine) as conn:
            pending = store.pending_changes(conn, aud.id)
        log.warning("audience %s follows a segment: %d manual changes dropped", name, len(pending))
        store.changes_applied(engine, [seq for seq, _pid, _action in pending], clock())
        return {"audience": name, "applied": 0, "dropped": len(pending)}
    read: dict = {"pending": []}

    def membership() -> list[Entry | Skip]:
        # read under the audience's claim: no other sync (another worker applying these changes) runs meanwhile, so
        # the membership synced and the changes read agree, and a change is never applied over a newer one
        with read_only(engine) as conn:
            read["pending"] = pending = store.pending_changes(conn, aud.id)
            previous = store.synced(conn, aud.id)
            now_of = store.resolve_profile_ids(conn, ws.id, [s.profile_id for s in previous if s.profile_id]
                                               + [pid for _seq, pid, _action in pending])  # fmt: skip
        members = {now_of[s.profile_id] for s in previous if s.profile_id in now_of}
        for _seq, pid, action in pending:  # in the order queued: the last change of a person wins
            if pid in now_of:  # a profile erased since is nobody to add
                (members.add if action == "add" else members.discard)(now_of[pid])
        return [Entry(f"profile {pid}", profile_id=pid) for pid in sorted(members)]

    result = sync.sync_read(engine, ws, aud, membership, client=client() if client else None, clock=clock)
    store.changes_applied(engine, [seq for seq, _pid, _action in read["pending"]], clock())
    return {**result, "applied": len(read["pending"])}


class ChangesTask:
    """Each worker pass: apply the pending manual changes of every audience that has some (one that failed waits
    :data:`RETRY` before its next try)."""

    def __init__(
        self, engine: Engine, options: TaskOptions | None = None, clock: Callable[[], datetime] = utcnow,
        client: Callable[[], AudienceClient] | None = None,
    ):  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.client = client  # makes the platform client; None: from the workspace's settings (tests pass a double)
        self._wait: dict[tuple[str, str], datetime] = {}

    def run_once(self) -> int:
        with read_only(self.engine) as conn:  # an idle poll: no write lock (SQLite)
            due = store.changes_due(conn)
        done = 0
        now = self.clock()
        for ws_id, name in due:
            if self._wait.get((ws_id, name), now) > now:
                continue
            try:
                with read_only(self.engine) as conn:
                    ws = workspaces.get(conn, ws_id)
                apply(self.engine, ws, name, client=self.client, clock=self.clock)
                self._wait.pop((ws_id, name), None)
                done += 1
            except Conflict:
                pass  # another worker is syncing it: the changes stay pending for the next pass
            except ChorusError as exc:
                self._wait[(ws_id, name)] = now + RETRY
                log.warning("audience %s (workspace %s): changes not applied: %s", name, ws_id, exc.message)
            except Exception:  # noqa: BLE001 - one audience must not stop the others; its changes stay pending
                self._wait[(ws_id, name)] = now + RETRY
                log.exception("audience %s (workspace %s): changes not applied", name, ws_id)
        return done

    def close(self) -> None:
        pass
