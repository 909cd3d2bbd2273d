"""Reading profiles: by id (old merged ids resolve through aliases), by identifier, and the timeline."""

from __future__ import annotations

import base64

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.errors import ChorusError, NotFound
from chorus.identity.identifiers import IdentityConfig, id_text, kind_of, normalise_email, normalise_phone, value_of
from chorus.profiles import computed
from chorus.profiles.state import public_view
from chorus.store import bulk
from chorus.store.tables import events, identifiers, merges, profile_aliases, profiles
from chorus.timeutil import iso, parse_ts


def resolve_id(conn: Connection, ws: str, profile_id: str) -> str:
    row = conn.execute(
        sa.select(profiles.c.id).where(profiles.c.workspace_id == ws, profiles.c.id == profile_id)
    ).first()
    if row:
        return row.id
    alias = conn.execute(
        sa.select(profile_aliases.c.profile_id).where(
            profile_aliases.c.workspace_id == ws, profile_aliases.c.alias_id == profile_id
        )
    ).first()
    if alias:
        return alias.profile_id
    raise NotFound(f"profile {profile_id} not found")


def lookup_ident(cfg: IdentityConfig, *, email=None, phone=None, user_id=None, anonymous_id=None, **declared) -> str:
    given = [
        (k, v)
        for k, v in dict(email=email, phone=phone, user_id=user_id, anonymous_id=anonymous_id, **declared).items()
        if v
    ]
    if len(given) != 1:
        raise ChorusError("give exactly one of email, phone, user_id, anonymous_id or a declared identifier")
    kind, value = given[0]
    try:
        if kind == "email":
            value = normalise_email(value)
        elif kind == "phone":
            value = normalise_phone(value, cfg.default_region)
        else:  # as ingestion stores them: user and anonymous ids kept as sent, a declared one's spaces trimmed
            value = id_text(value, kind)
    except ValueError as exc:
        raise ChorusError(f"{kind}: {exc}", field=kind) from None
    if value is None:
        raise ChorusError(f"{kind} must be text that is not blank, or a whole number", field=kind)
    return f"{kind}:{value}"


def find_by_ident(conn: Connection, ws: str, ident: str) -> str:
    row = conn.execute(
        sa.select(identifiers.c.profile_id).where(identifiers.c.workspace_id == ws, identifiers.c.ident == ident)
    ).first()
    if row is None:
        raise NotFound(f"no profile with {ident.split(':', 1)[0]} {ident.split(':', 1)[1]!r}")
    return row.profile_id


def get_profile(conn: Connection, ws: str, profile_id: str, cfg: IdentityConfig) -> dict:
    pid = resolve_id(conn, ws, profile_id)
    view = get_profiles(conn, ws, [pid], cfg)[pid]
    return {**view, "requested_id": profile_id}


def get_profiles(conn: Connection, ws: str, profile_ids: list[str], cfg: IdentityConfig) -> dict[str, dict]:
    """Views of current profiles by id, three queries however many: what batch sends read. Ids that are not
    (or no longer) profiles are missing from the result."""
    ids = list(dict.fromkeys(profile_ids))
    if not ids:
        return {}
    dialect = conn.dialect.name
    p = profiles.c  # the columns the view shows (not the resolver's bookkeeping: created_msg, links_max_*...)
    rows = conn.execute(
        sa.select(p.id, p.known, p.created_at, p.first_seen, p.last_seen, p.last_channel, p.state).where(
            p.workspace_id == ws, bulk.in_(p.id, ids, dialect)
        )
    ).all()
    idents: dict[str, list[str]] = {}
    for pid, ident in conn.execute(
        sa.select(identifiers.c.profile_id, identifiers.c.ident).where(
            identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.profile_id, ids, dialect)
        )
    ):
        idents.setdefault(pid, []).append(ident)
    aliases: dict[str, list[str]] = {}
    for pid, alias in conn.execute(
        sa.select(profile_aliases.c.profile_id, profile_aliases.c.alias_id).where(
            profile_aliases.c.workspace_id == ws, bulk.in_(profile_aliases.c.profile_id, ids, dialect)
        )
    ):
        aliases.setdefault(pid, []).append(alias)
    derived = computed.read(conn, ws, [r.id for r in rows])
    out = {}
    for row in rows:
        by_kind: dict[str, list[str]] = {}
        for i in sorted(idents.get(row.id, ())):
            by_kind.setdefault(kind_of(i), []).append(value_of(i))
        addresses = addresses_from(idents.get(row.id, ()), cfg)
        out[row.id] = {
            "id": row.id,
            "requested_id": row.id,
            "known": row.known,
            "created_at": iso(row.created_at),
            "first_seen": iso(row.first_seen) if row.first_seen else None,
            "last_seen": iso(row.last_seen) if row.last_seen else None,
            "last_channel": row.last_channel,
            "identifiers": by_kind,
            "addresses": addresses,
            "aliases": sorted(aliases.get(row.id, ())),
            **public_view(row.state),
            "computed_traits": derived.get(row.id, {}),
        }
    return out


def identifiers_of(conn: Connection, ws: str, pids: list[str]) -> dict[str, dict[str, list[str]]]:
    """Each profile's identifiers by kind, sorted, as its view shows them (``identifiers`` of
    :func:`get_profiles`, which also reads the profile, its aliases and computed traits: most of the cost, for
    the one field a call about her needs, ``consent.identity_fields``)."""
    out: dict[str, dict[str, list[str]]] = {}
    if not pids:
        return out
    rows = conn.execute(sa.select(identifiers.c.profile_id, identifiers.c.ident).where(
        identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.profile_id, pids, conn.dialect.name))).all()
    for pid, i in sorted(rows):
        out.setdefault(pid, {}).setdefault(kind_of(i), []).append(value_of(i))
    return out


def addresses_from(idents, cfg: IdentityConfig) -> dict[str, list[str]]:
    """Message channel -> the profile's addresses on it, from its identifiers (``kind:value``)."""
    addresses: dict[str, list[str]] = {}
    for i in sorted(idents):
        for ch in cfg.address_channels(kind_of(i)):
            addresses.setdefault(ch, []).append(value_of(i))
    return addresses


def idents_of(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, list[str]]:
    """Profile id -> its identifiers as stored (``kind:value``), one query for any number of profiles."""
    ids = list(dict.fromkeys(profile_ids))
    idents: dict[str, list[str]] = {}
    if ids:
        for pid, ident in conn.execute(
            sa.select(identifiers.c.profile_id, identifiers.c.ident).where(
                identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.profile_id, ids, conn.dialect.name)
            )
        ):
            idents.setdefault(pid, []).append(ident)
    return idents


def addresses_of(conn: Connection, ws: str, profile_ids: list[str], cfg: IdentityConfig) -> dict[str, dict]:
    """Profile id -> its addresses by message channel, as profile views show them (one query for any number)."""
    return {pid: addresses_from(found, cfg) for pid, found in idents_of(conn, ws, profile_ids).items()}


def resolve_ids(conn: Connection, ws: str, profile_ids: list[str]) -> dict[str, str]:
    """Requested id -> current profile id (old merged ids resolve through aliases); unknown ids are missing."""
    ids = list(dict.fromkeys(profile_ids))
    if not ids:
        return {}
    dialect = conn.dialect.name
    found = {
        r.id: r.id
        for r in conn.execute(
            sa.select(profiles.c.id).where(profiles.c.workspace_id == ws, bulk.in_(profiles.c.id, ids, dialect))
        )
    }
    rest = [i for i in ids if i not in found]
    if rest:
        for r in conn.execute(
            sa.select(profile_aliases.c.alias_id, profile_aliases.c.profile_id).where(
                profile_aliases.c.workspace_id == ws, bulk.in_(profile_aliases.c.alias_id, rest, dialect)
            )
        ):
            found[r.alias_id] = r.profile_id
    return found


def find_by_idents(conn: Connection, ws: str, idents: list[str]) -> dict[str, str]:
    """Identifier -> profile id, for the identifiers that belong to a profile."""
    idents = list(dict.fromkeys(idents))
    if not idents:
        return {}
    return dict(
        conn.execute(
            sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.ident, idents, conn.dialect.name)
            )
        ).all()
    )


def _cursor_encode(ts, seq: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([iso(ts), seq])).decode().rstrip("=")


def _cursor_decode(cursor: str):
    try:
        ts, seq = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ts, seq = parse_ts(ts), int(seq)
    except Exception:
        raise ChorusError("cursor is not a cursor returned by this API", field="cursor") from None
    if not -(2**63) <= seq < 2**63:  # a forged one: no store holds such a seq (and the drivers refuse to bind it)
        raise ChorusError("cursor is not a cursor returned by this API", field="cursor")
    return ts, seq


def timeline(
    conn: Connection, ws: str, profile_id: str, limit: int = 50, cursor: str | None = None, channel: str | None = None
) -> dict:
    """One timeline across channels, newest first, keyset-paginated on (timestamp, seq)."""
    if not 1 <= limit <= 1000:
        raise ChorusError("limit must be between 1 and 1000", field="limit")
    pid = resolve_id(conn, ws, profile_id)
    q = sa.select(events.c.seq, events.c.timestamp, events.c.payload).where(
        events.c.workspace_id == ws, events.c.profile_id == pid
    )
    if channel:
        q = q.where(events.c.channel == channel)
    if cursor:
        ts, seq = _cursor_decode(cursor)
        # one row-value comparison, bounded in her timeline index by both engines (as the admin lists' cursors)
        q = q.where(sa.tuple_(events.c.timestamp, events.c.seq) < sa.tuple_(
            sa.literal(ts, type_=events.c.timestamp.type), sa.literal(seq, type_=events.c.seq.type)))
    rows = conn.execute(q.order_by(events.c.timestamp.desc(), events.c.seq.desc()).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "profile_id": pid,
        "events": [r.payload for r in rows],
        "next_cursor": _cursor_encode(rows[-1].timestamp, rows[-1].seq) if more else None,
    }


def merge_history(conn: Connection, ws: str, pid: str) -> list[dict]:
    rows = conn.execute(
        sa.select(merges).where(merges.c.workspace_id == ws, merges.c.survivor_id == pid).order_by(merges.c.id)
    )
    return [
        {"survivor_id": r.survivor_id, "merged_id": r.merged_id, "reason": r.reason, "message_id": r.message_id,
         "at": iso(r.at)}
        for r in rows
    ]  # fmt: skip


def lock_people(conn: Connection, ws: str, pids: list[str], *, skip_locked: bool = False) -> list[str]:
    """One writer of these people's derived state at a time (segments, journeys, an erasure): their profile rows,
    locked until the transaction ends (PostgreSQL; SQLite has one writer), in one statement taking the rows in id
    order (PostgreSQL locks rows as the ordered scan returns them), the order every locker of several keeps.
    Returns the ids locked: with ``skip_locked``, those another transaction holds are left out (the timer tasks);
    ids that are not profiles are never returned. SQLite: the ids that are profiles."""
    q = sa.select(profiles.c.id).where(profiles.c.workspace_id == ws)
    q = q.where(profiles.c.id == pids[0]) if len(pids) == 1 else q.where(bulk.in_(profiles.c.id, pids,
                                                                                  conn.dialect.name))
    if conn.dialect.name == "postgresql":
        q = q.order_by(profiles.c.id).with_for_update(skip_locked=skip_locked)
    return list(conn.execute(q).scalars())


def profile_ids_page(conn: Connection, ws: str, after: str | None, limit: int) -> list[str]:
    """The workspace's profile ids in id order from ``after`` (keyset): a walk over everybody, page by page."""
    q = sa.select(profiles.c.id).where(profiles.c.workspace_id == ws)
    if after is not None:
        q = q.where(profiles.c.id > after)
    return list(conn.execute(q.order_by(profiles.c.id).limit(limit)).scalars())
