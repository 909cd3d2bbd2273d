"""Storing accepted events and rejected ones. The hot path of ingestion: one multi-row insert per batch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import metrics
from chorus.collect.messages import Event, Rejection
from chorus.store import bulk
from chorus.store.tables import events, rejected_events
from chorus.workspaces import Source


@dataclass
class StoreResult:
    accepted: int
    duplicates: int
    rejected: int


def rejected_identifiers(payload) -> dict:
    """Identifiers of a rejected event by kind, so that export and erasure can find it.

    Emails are lower-cased, phones reduced to digits (no region is known here: erasure compares suffixes).
    """
    if not isinstance(payload, dict):
        return {}
    out: dict[str, list[str]] = {}

    def add(kind: str, value) -> None:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            out.setdefault(kind, []).append(str(value).strip())

    add("user_id", payload.get("userId"))
    add("anonymous_id", payload.get("anonymousId"))
    ctx = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    for traits in (payload.get("traits"), ctx.get("traits")):
        if isinstance(traits, dict):
            if isinstance(traits.get("email"), str):
                add("email", traits["email"].strip().lower())
            if isinstance(traits.get("phone"), str | int):
                add("phone", "".join(ch for ch in str(traits["phone"]) if ch.isdigit()))
    for item in ctx.get("externalIds") or []:
        if isinstance(item, dict) and isinstance(item.get("type"), str):
            add(item["type"], item.get("id"))
    return out


def store(
    conn: Connection,
    source: Source,
    accepted: list[Event],
    rejected: list[Rejection],
    received_at: datetime,
    profile_of: dict[str, str] | None = None,
) -> StoreResult:
    """Insert events (a repeated messageId in the workspace is a no-op) and keep rejections with their reason.

    ``profile_of`` (messageId -> profile id) stores events already attributed, which identity resolution then
    skips: Chorus' own records about a known person that change nothing in the profile (see outbox.set_statuses).
    """
    # The same messageId twice in one batch: keep the first, like a retry.
    seen: set[str] = set()
    rows = []
    for e in accepted:
        if e.message_id in seen:
            continue
        seen.add(e.message_id)
        rows.append(
            {
                "workspace_id": source.workspace_id,
                "message_id": e.message_id,
                "type": e.type,
                "event": e.event,
                "channel": e.channel,
                "user_id": e.user_id,
                "anonymous_id": e.anonymous_id,
                "timestamp": e.timestamp,
                "received_at": e.received_at,
                "source_id": source.id,
                "trusted": source.trusted,
                "payload": e.payload,
            }
        )
        if profile_of is not None:
            rows[-1]["profile_id"] = profile_of.get(e.message_id)
    inserted = len(bulk.insert_rows(conn, events, rows, conflict=["workspace_id", "message_id"], returning="seq"))
    if rejected:
        conn.execute(
            rejected_events.insert(),
            [
                {
                    "workspace_id": source.workspace_id,
                    "received_at": received_at,
                    "source_id": source.id,
                    "message_id": r.message_id,
                    "field": r.field,
                    "reason": r.reason,
                    "payload": r.payload if isinstance(r.payload, str) else orjson.dumps(r.payload).decode(),
                    "identifiers": rejected_identifiers(r.payload),
                }
                for r in rejected
            ],
        )
    metrics.events_accepted.inc(inserted)
    metrics.events_duplicate.inc(len(accepted) - inserted)
    for r in rejected:
        metrics.events_rejected.labels(field=r.field or "").inc()
    return StoreResult(inserted, len(accepted) - inserted, len(rejected))


class Backlog:
    """How many accepted events still wait for identity resolution, re-read at most once a second."""

    def __init__(self, engine: Engine, interval: float = 1.0):
        self.engine = engine
        self.interval = interval
        self._value = 0
        self._at = 0.0
        self._lock = threading.Lock()

    def value(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.interval:
            with self._lock:
                if now - self._at >= self.interval:
                    with self.engine.connect() as conn:
                        if conn.dialect.name == "sqlite":  # it would count through the whole timeline index
                            sql = "SELECT count(*) FROM events INDEXED BY ix_events_pending WHERE profile_id IS NULL"
                            self._value = conn.exec_driver_sql(sql).scalar_one()
                        else:
                            # PostgreSQL counts by visiting every pending row; the span of pending seqs is two
                            # index-endpoint lookups and bounds the count from above (equal when no gaps).
                            self._value = conn.execute(
                                sa.select(
                                    sa.func.coalesce(sa.func.max(events.c.seq) - sa.func.min(events.c.seq) + 1, 0)
                                ).where(events.c.profile_id.is_(None))
                            ).scalar_one()
                    self._at = time.monotonic()
                    metrics.backlog.set(self._value)
        return self._value
