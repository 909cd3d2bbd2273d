"""Storing accepted events and rejected ones. The hot path of ingestion: one multi-row insert per batch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import metrics, safejson
from chorus.collect.messages import OWN_PREFIXES, Event, Rejection, own_record
from chorus.identity.identifiers import MAX_IDENT_LEN, id_text
from chorus.safejson import text_problem
from chorus.store import bulk
from chorus.store.db import read_only
from chorus.store.tables import events, rejected_events
from chorus.workspaces import Source

MAX_REJECTED_PAYLOAD = 64 * 1024  # characters of a refused payload kept (a tracked message is at most 32 KB)


@dataclass
class StoreResult:
    accepted: int
    duplicates: int
    rejected: int


def rejected_identifiers(payload) -> dict:
    """Identifiers of a rejected event by kind, so that export and erasure can find it.

    Ids are read with the same :func:`chorus.identity.identifiers.id_text` as identity resolution; emails are
    lower-cased, phones reduced to digits (no region is known here: erasure compares suffixes). A value that
    cannot be stored (NUL, lone surrogate) is kept escaped: no profile can hold it, and the rest still match.
    """
    if not isinstance(payload, dict):
        return {}
    out: dict[str, list[str]] = {}

    def add(kind: str, value) -> None:
        text = id_text(value, kind)
        if text is not None and text.strip():
            out.setdefault(safejson.escape(kind)[:64], []).append(safejson.escape(text.strip())[:MAX_IDENT_LEN])

    add("user_id", payload.get("userId"))
    add("anonymous_id", payload.get("anonymousId"))
    ctx = payload.get("context") if isinstance(payload.get("context"), dict) else {}
    for traits in (payload.get("traits"), ctx.get("traits")):
        if isinstance(traits, dict):
            if isinstance(traits.get("email"), str):
                add("email", traits["email"].strip().lower())
            if isinstance(traits.get("phone"), str | int) and not isinstance(traits.get("phone"), bool):
                add("phone", "".join(ch for ch in str(traits["phone"]) if ch.isdigit()))
    ext = ctx.get("externalIds")
    for item in ext if isinstance(ext, list) else ():
        if isinstance(item, dict) and isinstance(item.get("type"), str) and item["type"].strip():
            add(item["type"], item.get("id"))
    return out


def rejection_row(workspace_id: str, source_id: str | None, received_at: datetime, r: Rejection) -> dict:
    """The rejected_events row of ``r``, storable whatever was refused: a payload too deep, too large or holding
    NULs is kept as lossy JSON text (see safejson.dumps_lossy); ids and texts are escaped and cut to the columns."""
    return {
        "workspace_id": workspace_id,
        "received_at": received_at,
        "source_id": source_id,
        "message_id": r.message_id if r.message_id and len(r.message_id) <= 200 and not text_problem(r.message_id)
        else None,
        "field": safejson.escape(r.field)[:200] if r.field else None,
        "reason": safejson.escape(r.reason)[:2000],
        "payload": rejected_payload(r.payload),
        "identifiers": rejected_identifiers(r.payload),
    }


def rejected_payload(payload: object) -> str:
    if isinstance(payload, str):  # already text (a line that was not JSON)
        return safejson.escape(payload)[:MAX_REJECTED_PAYLOAD]
    return safejson.dumps_lossy(without_credentials(payload), max_chars=MAX_REJECTED_PAYLOAD)


def without_credentials(payload: object) -> object:
    """A refused message as it may be kept: no write key and no user hash (accepted events lose them too, see
    normalise and verification.seal), whatever else was wrong with it."""
    if not isinstance(payload, dict):
        return payload
    out = {k: v for k, v in payload.items() if k not in ("writeKey", "userHash", "userHashVerified")}
    ctx = out.get("context")
    if isinstance(ctx, dict) and "userHash" in ctx:
        out["context"] = {k: v for k, v in ctx.items() if k != "userHash"}
    return out


def _check_own(accepted: list[Event], profile_of: dict[str, str]) -> None:
    """An event stored already attributed is never folded into the profile's state, so it must be what the state
    leaves out: Chorus' own outbound record, a track with a reserved name (``messages.OWN_PREFIXES``). Anything else
    would make the state's activity summary miss it (segments.summary). A programming error, not bad input."""
    for e in accepted:
        if e.message_id in profile_of and not own_record(e.payload):
            raise ValueError(f"event {e.message_id} is stored attributed but is not an outbound track with a "
                             f"reserved name ({', '.join(OWN_PREFIXES)}...)")


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
    if profile_of:
        _check_own(accepted, profile_of)
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
            rejected_events.insert(), [rejection_row(source.workspace_id, source.id, received_at, r) for r in rejected]
        )
    duplicates, fields = len(accepted) - inserted, [r.field or "" for r in rejected]

    def count() -> None:
        metrics.events_accepted.inc(inserted)
        metrics.events_duplicate.inc(duplicates)
        for f in fields:
            metrics.events_rejected.labels(field=f).inc()

    metrics.after_commit(conn, count)
    return StoreResult(inserted, len(accepted) - inserted, len(rejected))


class Backlog:
    """How many accepted events still wait for identity resolution, re-read at most once a second.

    Read through ``read_only``: on SQLite an ordinary transaction takes the write lock at BEGIN, and a worker's
    long write would hold every tracking call (and /metrics) for up to busy_timeout. :meth:`value` still does I/O
    when the figure is stale: async callers use :meth:`fresh` first and call :meth:`value` in the threadpool."""

    def __init__(self, engine: Engine, interval: float = 1.0):
        self.engine = engine
        self.interval = interval
        self._value = 0
        self._at = 0.0
        self._lock = threading.Lock()

    def fresh(self) -> int | None:
        """The figure if it was read within the interval, else None; never touches the store."""
        return self._value if time.monotonic() - self._at < self.interval else None

    def value(self) -> int:
        if self.fresh() is None and self._lock.acquire(blocking=False):
            # a caller that finds another re-reading it takes the last figure rather than queue behind the read
            try:
                if self.fresh() is None:
                    self._value = self._read()
                    self._at = time.monotonic()
                    metrics.backlog.set(self._value)
            finally:
                self._lock.release()
        return self._value

    def _read(self) -> int:
        with read_only(self.engine) as conn:
            if conn.dialect.name == "sqlite":  # it would count through the whole timeline index
                sql = "SELECT count(*) FROM events INDEXED BY ix_events_pending WHERE profile_id IS NULL"
                return conn.exec_driver_sql(sql).scalar_one()
            # PostgreSQL counts by visiting every pending row; the span of pending seqs is two index-endpoint
            # lookups and bounds the count from above (equal when no gaps).
            return conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(events.c.seq) - sa.func.min(events.c.seq) + 1, 0)).where(
                    events.c.profile_id.is_(None)
                )
            ).scalar_one()


def reject_stored(conn: Connection, failures: dict[int, Exception]) -> int:
    """Move accepted but unresolvable events (seq -> error) to the rejected events, in ``conn``'s transaction.

    Only still-pending events move (another worker may have settled one meanwhile); returns how many moved.
    """
    q = sa.select(events).where(bulk.in_(events.c.seq, sorted(failures), conn.dialect.name))
    q = q.where(events.c.profile_id.is_(None))
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    for row in rows:
        exc = failures[row.seq]
        r = Rejection(None, f"identity resolution failed: {type(exc).__name__}: {exc}", row.message_id, row.payload)
        row_out = rejection_row(row.workspace_id, row.source_id, row.received_at, r)
        conn.execute(rejected_events.insert().values(row_out))
        conn.execute(events.delete().where(events.c.seq == row.seq))
    return len(rows)
