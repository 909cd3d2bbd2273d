"""The admin API's lists: one convention for all of them, and the queries behind them.

Every list takes ``limit`` (1 to 1000) and ``cursor`` and answers ``{"<items>": [...], "next_cursor": ...}``,
newest first (templates, partials and profile searches: by name or id). It is keyset pagination: the cursor is
the sort key of the last item, opaque to clients (base64 of JSON, tagged with the list it belongs to), so pages
stay correct while rows are added and each page costs one index range scan however deep it is. ``next_cursor``
is null on the last page. A cursor from another list, or altered, is a 400 naming ``cursor``.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus import safejson
from chorus.errors import ChorusError
from chorus.identity.identifiers import IdentityConfig
from chorus.messaging import outbox
from chorus.profiles import views
from chorus.store.tables import (
    identifiers,
    imports,
    message_status,
    messages,
    partials,
    profile_aliases,
    profiles,
    rejected_events,
)
from chorus.store.tables import templates as templates_t
from chorus.timeutil import iso, parse_ts

MAX_LIMIT = 1000


def encode_cursor(kind: str, key: list) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([kind, *key])).decode().rstrip("=")


def decode_cursor(cursor: str, kind: str, types: tuple[type, ...]) -> list:
    """The sort key in ``cursor`` (made by :func:`encode_cursor` for ``kind``), else a 400 naming ``cursor``."""
    bad = ChorusError("cursor is not a cursor returned by this list", field="cursor")
    try:
        raw = safejson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), "cursor")
    except (ChorusError, binascii.Error, ValueError):
        raise bad from None
    if not isinstance(raw, list) or len(raw) != len(types) + 1 or raw[0] != kind:
        raise bad
    key = []
    for value, want in zip(raw[1:], types, strict=True):
        if want is datetime:
            try:
                value = parse_ts(value) if isinstance(value, str) else None
            except Exception:
                value = None
        if not isinstance(value, want) or isinstance(value, bool) or (want is int and not -(2**63) <= value < 2**63):
            raise bad
        key.append(value)
    return key


def _after(cols: list, key: list, descending: bool):
    """Rows strictly after ``key`` in the order of ``cols`` (all descending or all ascending). Several columns are
    one row-value comparison, ``(created_at, id) < (?, ?)``: both engines bound the index range with it, so a page
    after a cursor starts at the cursor (the same test spelled ``a < x OR (a = x AND b < y)`` walked the index from
    the newest row on SQLite and sorted every older row on PostgreSQL: a deep page cost what the list holds)."""
    if len(cols) == 1:
        return cols[0] < key[0] if descending else cols[0] > key[0]
    left = sa.tuple_(*cols)
    right = sa.tuple_(*(sa.literal(v, type_=c.type) for c, v in zip(cols, key, strict=True)))
    return left < right if descending else left > right


def _page(conn: Connection, q, kind: str, cols: list, types: tuple, limit: int, cursor: str | None,
          descending: bool = True) -> tuple[list, str | None]:  # fmt: skip
    if not 1 <= limit <= MAX_LIMIT:
        raise ChorusError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    if cursor:
        q = q.where(_after(cols, decode_cursor(cursor, kind, types), descending))
    order = [c.desc() if descending else c.asc() for c in cols]
    rows = conn.execute(q.order_by(*order).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    if not more:
        return rows, None
    last = rows[-1]._mapping
    key = [iso(last[c.name]) if t is datetime else last[c.name] for c, t in zip(cols, types, strict=True)]
    return rows, encode_cursor(kind, key)


def instant(value: datetime | None, field: str) -> datetime | None:
    """A time filter as aware UTC (naive means UTC); one that cannot be expressed in UTC is a 400."""
    if value is None:
        return None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ChorusError(f"{field} is out of range", field=field) from None


def list_templates(conn: Connection, ws: str, limit: int, cursor: str | None) -> dict:
    q = sa.select(templates_t).where(templates_t.c.workspace_id == ws)
    rows, nxt = _page(conn, q, "templates", [templates_t.c.name], (str,), limit, cursor, descending=False)
    items = [
        {"name": r.name, "version": r.version, "kind": r.definition.get("kind"), "topic": r.definition.get("topic"),
         "channels": sorted(r.definition.get("variants") or {}), "updated_at": iso(r.updated_at)}
        for r in rows
    ]  # fmt: skip
    return {"templates": items, "next_cursor": nxt}


def list_partials(conn: Connection, ws: str, limit: int, cursor: str | None) -> dict:
    q = sa.select(partials).where(partials.c.workspace_id == ws)
    rows, nxt = _page(conn, q, "partials", [partials.c.name], (str,), limit, cursor, descending=False)
    items = [{"name": r.name, "size": len(r.source), "updated_at": iso(r.updated_at)} for r in rows]
    return {"partials": items, "next_cursor": nxt}


def list_messages(conn: Connection, ws: str, limit: int, cursor: str | None, *, profile_id: str | None = None,
                  status: str | None = None, channel: str | None = None, template: str | None = None,
                  since: datetime | None = None, until: datetime | None = None) -> dict:  # fmt: skip
    """Messages newest first (by creation), filtered; a profile's include those sent under its merged ids."""
    q = sa.select(messages).where(messages.c.workspace_id == ws)
    if profile_id is not None:
        pid = views.resolve_id(conn, ws, profile_id)  # 404 for an unknown profile
        ids = [pid, *conn.execute(sa.select(profile_aliases.c.alias_id).where(
            profile_aliases.c.workspace_id == ws, profile_aliases.c.profile_id == pid)).scalars()]  # fmt: skip
        q = q.where(messages.c.profile_id.in_(ids))
    if status is not None:
        q = q.where(_status_is(status))
    for col, value in ((messages.c.channel, channel), (messages.c.template, template)):
        if value is not None:
            q = q.where(col == value)
    if since is not None:
        q = q.where(messages.c.created_at >= since)
    if until is not None:
        q = q.where(messages.c.created_at < until)
    cols = [messages.c.created_at, messages.c.id]
    rows, nxt = _page(conn, q, "messages", cols, (datetime, str), limit, cursor)
    items = [
        {"id": r.id, "profile_id": r.profile_id, "template": r.template, "kind": r.kind, "topic": r.topic,
         "channel": r.channel, "status": r.status, "reason": r.reason, "journey_id": r.journey_id,
         "campaign_id": r.campaign_id, "attempts": r.attempts, "created_at": iso(r.created_at),
         "sent_at": iso(r.sent_at) if r.sent_at else None, "updated_at": iso(r.updated_at)}
        for r in rows
    ]  # fmt: skip
    engaged: dict[str, set[str]] = {}
    if items:
        for mid, st in conn.execute(sa.select(message_status.c.message_id, message_status.c.status).where(
                message_status.c.message_id.in_([i["id"] for i in items]),
                message_status.c.status.in_(sorted(outbox.ENGAGEMENT)))):  # fmt: skip
            engaged.setdefault(mid, set()).add(st)
    for i in items:  # what the person did with it (the status says where its delivery stands)
        i["engagement"] = sorted(engaged.get(i["id"], ()))
    return {"messages": items, "next_cursor": nxt}


def _status_is(status: str):
    """A delivery status is the message's own; an engagement (opened, clicked, replied, unsubscribed, complained) is
    in its history: a message opened then clicked is found by both."""
    if status in outbox.DELIVERY:
        return messages.c.status == status
    if status in outbox.ENGAGEMENT:
        return sa.exists().where(message_status.c.message_id == messages.c.id, message_status.c.status == status)
    known = ", ".join((*outbox.DELIVERY, *sorted(outbox.ENGAGEMENT)))
    raise ChorusError(f"status must be one of {known}", field="status")


def list_imports(conn: Connection, ws: str, limit: int, cursor: str | None) -> dict:
    q = sa.select(imports).where(imports.c.workspace_id == ws)
    rows, nxt = _page(conn, q, "imports", [imports.c.created_at, imports.c.id], (datetime, str), limit, cursor)
    items = [
        {"id": r.id, "source": r.source, "file": r.filename, "rows": r.rows, "imported": r.imported,
         "duplicates": r.duplicates, "failed": r.rows - r.imported - r.duplicates, "created_at": iso(r.created_at)}
        for r in rows
    ]  # fmt: skip
    return {"imports": items, "next_cursor": nxt}


def list_rejected(conn: Connection, ws: str, limit: int, cursor: str | None, before: int | None = None) -> dict:
    q = sa.select(rejected_events).where(rejected_events.c.workspace_id == ws)
    if before is not None:  # the older parameter, kept for existing clients: the same as a cursor at that id
        q = q.where(rejected_events.c.id < before)
    rows, nxt = _page(conn, q, "rejected", [rejected_events.c.id], (int,), limit, cursor)
    items = [
        {"id": r.id, "received_at": iso(r.received_at), "message_id": r.message_id, "field": r.field,
         "reason": r.reason, "payload": r.payload}
        for r in rows
    ]  # fmt: skip
    return {"rejected": items, "next_cursor": nxt, "next_before": rows[-1].id if nxt else None}


def _trait_text(conn: Connection, name: str):
    """The trait ``name`` of a profile as text, in SQL (traits live in the JSON ``state`` column)."""
    if conn.dialect.name == "postgresql":
        return sa.func.jsonb_extract_path_text(profiles.c.state, "traits", name)
    # SQLite as PostgreSQL reads it (an outside probe: `vip: true` was "1" here and "true" there; a name with a
    # quote or a backslash was refused here only): the trait found by its key (``json_each``: no path syntax), a
    # boolean as true/false (``value`` gives 1/0), a text without its quotes
    each = sa.func.json_each(profiles.c.state, sa.literal("$.traits", sa.Text)).table_valued("key", "value", "type")
    text = sa.case((each.c.type.in_(("true", "false")), each.c.type), else_=sa.cast(each.c.value, sa.Text))
    return sa.select(text).where(each.c.key == sa.literal(name, sa.Text)).scalar_subquery()


def search_profiles(conn: Connection, ws: str, cfg: IdentityConfig, limit: int, cursor: str | None, *,
                    prefix: str, identifier: str | None = None, trait: str | None = None) -> dict:  # fmt: skip
    """Profiles with an identifier of a kind, or a trait, starting with ``prefix`` (exact, case-sensitive; emails are
    stored lower-cased, so an email prefix is lower-cased too), by profile id. Not indexed for traits: it scans
    the workspace's profiles, which is fine for an admin search and wrong for a hot path."""
    if (identifier is None) == (trait is None):
        raise ChorusError("give exactly one of identifier (a kind: email, phone, user_id, ...) or trait",
                          field="identifier")  # fmt: skip
    if not prefix:
        raise ChorusError("prefix must not be empty", field="prefix")
    if identifier is not None:
        kinds = ("email", "phone", "user_id", "anonymous_id", *cfg.declared)
        if identifier not in kinds:
            raise ChorusError(f"identifier must be one of {', '.join(kinds)}", field="identifier")
        text = f"{identifier}:{prefix.lower() if identifier == 'email' else prefix}"
        q = sa.select(identifiers.c.profile_id).where(
            identifiers.c.workspace_id == ws, sa.func.substr(identifiers.c.ident, 1, len(text)) == text
        ).distinct()  # fmt: skip
        col = identifiers.c.profile_id
    else:
        q = sa.select(profiles.c.id).where(
            profiles.c.workspace_id == ws, sa.func.substr(_trait_text(conn, trait), 1, len(prefix)) == prefix
        )
        col = profiles.c.id
    if cursor:
        q = q.where(col > decode_cursor(cursor, "profiles", (str,))[0])
    if not 1 <= limit <= MAX_LIMIT:
        raise ChorusError(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
    ids = list(conn.execute(q.order_by(col).limit(limit + 1)).scalars())
    more, ids = len(ids) > limit, ids[:limit]
    found = views.get_profiles(conn, ws, ids, cfg)
    return {
        "profiles": [found[i] for i in ids if i in found],
        "next_cursor": encode_cursor("profiles", [ids[-1]]) if more else None,
    }
