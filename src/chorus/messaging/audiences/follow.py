"""Audiences that follow a segment: the change-feed consumer that notes their segment changed, and the worker task
that syncs them, at most once per audience per interval.

The consumer does not send anything: it marks the audience changed in its current *epoch*, in the consumer's
transaction (so a change is noted exactly once, or retried), and only when it is not marked yet. The task syncs
each audience marked since its last sync (or with removals an erasure queued) whose last follow sync is at least
``interval_seconds`` old: the sync starts a new epoch, then reads the segment's members as the membership; the
diff sends only the differences, so ten entries and exits of one person between two syncs cost nothing or one
row. The task's syncs are incremental: members whose profile has no change in the feed since the last successful
sync keep their rows unread (docs/decisions/0049-incremental-follow-sync.md). See
docs/decisions/0029-audiences-follow-segments-by-interval.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Connection, Engine

from chorus import workspaces
from chorus.errors import ChorusError, Conflict
from chorus.messaging.audiences import store, sync
from chorus.messaging.audiences.base import AudienceClient
from chorus.profiles import feed
from chorus.registry import TaskOptions
from chorus.store.db import read_only
from chorus.timeutil import utcnow

log = logging.getLogger("chorus.audiences")

CONSUMER = "audiences"


def segment_changes(changes: list[feed.Delivered]) -> set[str]:
    """The segments one person entered or left in these changes."""
    return {c.detail["segment"] for c in changes if c.cause == "segment" and c.detail.get("change") in
            ("entered", "exited") and isinstance(c.detail.get("segment"), str)}  # fmt: skip


def _may_change_row(c: feed.Delivered | feed.Change) -> bool:
    """Whether the change may take her off a platform or change the row it holds: consent Chorus learned itself
    (an unsubscribe, STOP), a ``Consent Updated`` event, an identify (new traits: consent, an e-mail address).
    Consent carried in another event's context is applied at the audience's next sync."""
    if c.cause == "consent":
        return True
    d = c.detail or {}
    return c.cause == "event" and (d.get("type") == "identify" or d.get("event") == "Consent Updated")


def wants(c: feed.Change) -> bool:
    """The changes this consumer acts on (``feed.interest``): a segment entered or left, and what may change a
    member's row. An ordinary event (most of the feed) is not even recorded for it."""
    return c.cause == "segment" or _may_change_row(c)


def handle(conn: Connection, ws: str, pid: str, changes: list[feed.Delivered]) -> None:
    """The feed consumer: note that the followers of the segments this person entered or left want a sync, and,
    when her consent or identifiers may have changed, the following audiences that hold her (an opt-out must not
    wait for the segment's next entry or exit, which a quiet segment may never have)."""
    segments = segment_changes(changes)
    holding = store.audiences_holding(conn, ws, pid) if any(map(_may_change_row, changes)) else set()
    if segments or holding:
        store.want_sync(conn, ws, segments, holding)


def handle_many(conn: Connection, claimed: dict[tuple[str, str], list[feed.Delivered]]) -> None:
    """The feed consumer for a whole claim (``Handler.many``): what every person of it wants, marked once per
    workspace, in workspace then audience id order. Person by person, one claim locked the audiences of each
    person's segments in turn, and two workers whose claims had people of two audiences in opposite orders
    deadlocked (PostgreSQL broke it, and the pass was retried); one ordered pass over the union cannot."""
    wanted: dict[str, tuple[set[str], list[str]]] = {}
    for (ws, pid), changes in claimed.items():
        segments, people = wanted.setdefault(ws, (set(), []))
        segments |= segment_changes(changes)
        if any(map(_may_change_row, changes)):
            people.append(pid)
    for ws, (segments, people) in sorted(wanted.items()):
        if not (segments or people) or not store.following(conn, ws):
            continue  # no audience follows a segment here (stopped ones mark nothing): the common case, one read
        holding = store.audiences_holding_many(conn, ws, people)
        if segments or holding:
            store.want_sync(conn, ws, segments, holding)


handle.many = handle_many  # type: ignore[attr-defined]


class FollowTask:
    """Each worker pass: sync the following audiences due (changed or removals queued; interval passed)."""

    def __init__(
        self, engine: Engine, options: TaskOptions | None = None, clock: Callable[[], datetime] = utcnow,
        client: Callable[[], AudienceClient] | None = None,
    ):  # fmt: skip
        self.engine = engine
        self.clock = clock
        self.client = client  # makes the platform client; None: from the workspace's settings (tests pass a double)

    def run_once(self) -> int:
        with read_only(self.engine) as conn:  # an idle poll: no write lock (SQLite)
            due = store.due_follows(conn, self.clock())
        done = 0
        for ws_id, name in due:
            try:
                with read_only(self.engine) as conn:
                    ws = workspaces.get(conn, ws_id)
                client = self.client() if self.client is not None else None
                sync.sync_followed(self.engine, ws, name, client=client, clock=self.clock, incremental=True)
                done += 1
            except Conflict:
                pass  # another worker is syncing it; what it misses stays due
            except ChorusError as exc:  # the platform failed or the provider is gone: tried again after the interval
                log.warning("audience %s (workspace %s) could not follow its segment: %s", name, ws_id, exc.message)
            except Exception:  # noqa: BLE001 - one audience must not stop the others; it stays due
                log.exception("audience %s (workspace %s) could not follow its segment", name, ws_id)
        return done

    def close(self) -> None:
        pass
