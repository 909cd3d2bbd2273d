"""Storing accepted events and rejected ones. The hot path of ingestion: one multi-row insert per batch."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import orjson
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
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str every surrogate is lone (pairs are decoded)


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
    """What is kept of a refused payload: JSON text that always reads back (export and erasure parse it), at most
    MAX_REJECTED_PAYLOAD characters. Lone surrogates become U+FFFD (no JSON parser that writes UTF-8 reads them
    back; dumps_lossy would keep them as ``\\ud800`` escapes); a payload longer than the cap becomes
    ``{"_truncated": true, "text": "<its first characters>"}``, never a cut-off fragment of JSON."""
    if isinstance(payload, str):  # text, not a JSON value (a message that was a string): kept as a JSON string
        return _json_within(_without_lone_surrogates(payload), MAX_REJECTED_PAYLOAD)
    value = without_credentials(payload)
    text = safejson.dumps_lossy(value, max_chars=MAX_REJECTED_PAYLOAD)
    if "\\ud" in text or "\\uD" in text:  # an escaped surrogate, maybe lone (dumps_lossy writes them escaped)
        text = safejson.dumps_lossy(_without_lone_surrogates(value), max_chars=MAX_REJECTED_PAYLOAD)
    try:
        orjson.loads(text)
        return text
    except orjson.JSONDecodeError:  # cut at the cap (or anything else it cannot read back): say so, in JSON
        return orjson.dumps({"_truncated": True, "text": _cut_to_json(text, MAX_REJECTED_PAYLOAD - 40)}).decode()


def _json_within(text: str, limit: int) -> str:
    """``text`` as a JSON string, or the truncation object when that would pass ``limit`` characters."""
    out = orjson.dumps(text).decode()
    if len(out) <= limit:
        return out
    return orjson.dumps({"_truncated": True, "text": _cut_to_json(text, limit - 40)}).decode()


def _cut_to_json(text: str, limit: int) -> str:
    """The longest start of ``text`` whose JSON string is at most ``limit`` characters (quotes and backslashes
    double, control characters take six)."""
    low, high = 0, min(len(text), limit)  # a binary search: the rare path of a refused over-long payload
    while low < high:
        mid = (low + high + 1) // 2
        if len(orjson.dumps(text[:mid]).decode()) <= limit:
            low = mid
        else:
            high = mid - 1
    return text[:low]


def _without_lone_surrogates(value: object) -> object:
    """``value`` with every lone surrogate in its strings and keys replaced by U+FFFD (a copy; any depth)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if not isinstance(value, dict | list):
        return value
    root: list = [None]
    stack: list[tuple[object, object, object]] = [(value, root, 0)]
    while stack:
        node, parent, slot = stack.pop()
        if isinstance(node, dict):
            copy: object = {}
            for k, v in node.items():
                key = _LONE_SURROGATE.sub("\ufffd", k) if isinstance(k, str) else k
                copy[key] = None
                stack.append((v, copy, key))
        elif isinstance(node, list):
            copy = [None] * len(node)
            stack.extend((v, copy, i) for i, v in enumerate(node))
        elif isinstance(node, str):
            copy = _LONE_SURROGATE.sub("\ufffd", node)
        else:
            copy = node
        parent[slot] = copy
    return root[0]


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
    duplicates, fields = len(accepted) - inserted, [rejected_label(r.field) for r in rejected]

    def count() -> None:
        metrics.events_accepted.inc(inserted)
        metrics.events_duplicate.inc(duplicates)
        for f in fields:
            metrics.events_rejected.labels(field=f).inc()

    metrics.after_commit(conn, count)
    return StoreResult(inserted, len(accepted) - inserted, len(rejected))


# The top-level fields of a message (the Segment spec's, as Chorus reads them). A rejection is counted under the one
# its field starts with, or "other": a label's values must be a fixed set. The field's whole path carries the
# sender's own keys (``properties.<any key>``, an import's column names), which anyone with the public write key
# could turn into any number of series on the unauthenticated /metrics (an outside probe: 6,505 series, an email
# address among them).
REJECTED_LABELS = frozenset({
    "type", "event", "name", "category", "userId", "anonymousId", "previousId", "groupId", "messageId",
    "timestamp", "sentAt", "receivedAt", "originalTimestamp", "properties", "traits", "context", "integrations",
    "channel",
    "batch", "identifiers",  # Chorus' own names: a message over the size limit, an import row naming nobody
})  # fmt: skip


def rejected_label(field: str | None) -> str:
    """The ``field`` label of ``chorus_events_rejected_total`` for a rejection naming ``field`` ("" for none)."""
    if not field:
        return ""
    head = re.split(r"[.\[]", field, maxsplit=1)[0]
    return head if head in REJECTED_LABELS else "other"


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
