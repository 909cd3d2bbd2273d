"""Audiences in the operational store: definitions, the rows each platform holds, and what erasure leaves.

The I/O edge of the audiences package; the rules are in :mod:`membership` and :mod:`rows`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus.errors import ChorusError, Conflict, NotFound
from chorus.identity.identifiers import kind_of, value_of
from chorus.messaging.audiences.membership import Synced
from chorus.messaging.audiences.settings import FILE
from chorus.profiles.state import public_view
from chorus.registry import Person
from chorus.segments import store as segment_store
from chorus.store import bulk
from chorus.store.tables import (
    audience_changes,
    audience_members,
    audience_removals,
    audiences,
    identifiers,
    profile_aliases,
    profile_changes,
    profiles,
)
from chorus.timeutil import iso

CHUNK = 1000
LEASE = timedelta(minutes=30)  # a sync that died is taken over after this long


def _chunks(values: list, size: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(values), size):
        yield values[i : i + size]


# -- definitions --------------------------------------------------------------------------------------------------
def create(engine: Engine, ws: str, clean: dict, now: datetime) -> dict:
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(audiences.c.id).where(audiences.c.workspace_id == ws, audiences.c.name == clean["name"])
        ).first()
        if exists:
            raise Conflict(f"an audience named {clean['name']!r} already exists", field="name")
        follow = clean["options"].get("follow")
        if follow is not None:
            # held until this commits: a deletion of the segment waits, then finds this audience following it
            segment_store.lock_definitions(conn, ws, shared=True)
            try:
                segment_store.get(conn, ws, follow["segment"])
            except NotFound:
                raise ChorusError(
                    f"no segment {follow['segment']!r} in this workspace", field="source.segment"
                ) from None
        # skipped on the name's key: a create of the same name at the same time (PostgreSQL) committed first,
        # after the check above (the insert failed on the key, a 500)
        row = {"id": "aud_" + uuid.uuid4().hex[:20], "workspace_id": ws, "created_at": now, "updated_at": now, **clean}
        if not bulk.insert_rows(conn, audiences, [row], conflict=["workspace_id", "name"], returning="id"):
            raise Conflict(f"an audience named {clean['name']!r} already exists", field="name")
        return view(conn, get(conn, ws, clean["name"]))


def get(conn: Connection, ws: str, name: str):
    row = conn.execute(sa.select(audiences).where(audiences.c.workspace_id == ws, audiences.c.name == name)).first()
    if row is None:
        raise NotFound(f"audience {name!r} not found")
    return row


def view(conn: Connection, row) -> dict:
    members = conn.execute(
        sa.select(sa.func.count()).select_from(audience_members).where(audience_members.c.audience_id == row.id)
    ).scalar_one()
    pending = conn.execute(
        sa.select(sa.func.count()).select_from(audience_removals).where(audience_removals.c.audience_id == row.id)
    ).scalar_one()
    return {
        "name": row.name, "provider": row.provider, "format": row.format, "destination": row.destination,
        "identifiers": row.identifiers, "consent": {"topic": row.consent_topic, "mode": row.consent_mode},
        **({"ad_consent": row.options["ad_consent"]} if row.options.get("ad_consent") else {}),
        **({"source": source_view(row.options["follow"])} if row.options.get("follow") else {}),
        "members": members, "pending_removals": pending, "syncing": row.sync_started_at is not None,
        "last_sync": row.last_sync, "created_at": iso(row.created_at),
    }  # fmt: skip


def source_view(follow: dict) -> dict:
    return {"segment": follow["segment"], "interval_seconds": follow["interval_seconds"],
            "following": not follow.get("stopped"), "changes_pending": _pending(follow),
            "synced_at": follow["synced_at"]}  # fmt: skip


def list_all(conn: Connection, ws: str) -> list[dict]:
    rows = conn.execute(sa.select(audiences).where(audiences.c.workspace_id == ws).order_by(audiences.c.name))
    return [view(conn, r) for r in rows]


def claim(engine: Engine, audience_id: str, name: str, now: datetime) -> None:
    """Mark the audience as syncing, or Conflict while another sync runs (its claim lasts :data:`LEASE`)."""
    with engine.begin() as conn:
        got = conn.execute(
            audiences.update()
            .where(
                audiences.c.id == audience_id,
                sa.or_(audiences.c.sync_started_at.is_(None), audiences.c.sync_started_at < now - LEASE),
            )
            .values(sync_started_at=now)
        ).rowcount
    if not got:
        raise Conflict(f"audience {name!r} is being synced right now; try again when that sync has finished")


def release(engine: Engine, audience_id: str, last_sync: dict, now: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            audiences.update()
            .where(audiences.c.id == audience_id)
            .values(sync_started_at=None, last_sync=last_sync, updated_at=now)
        )


# -- following a segment -------------------------------------------------------------------------------------------
def _followers(conn: Connection, ws: str | None) -> list:
    """The audiences that follow a segment (in one workspace, or all), in id order (the order rows are locked in).
    Audiences are few per workspace, so the follow state lives in ``options`` and is filtered here."""
    query = sa.select(audiences).order_by(audiences.c.id)
    if ws is not None:
        query = query.where(audiences.c.workspace_id == ws)
    return [r for r in conn.execute(query) if (r.options or {}).get("follow")]


def _pending(follow: dict) -> bool:
    return follow["changed"] >= follow["synced"]


def audiences_holding(conn: Connection, ws: str, profile_id: str) -> set[str]:
    """The audiences a platform holds this person in (their ids)."""
    return set(conn.execute(sa.select(audience_members.c.audience_id).where(
        audience_members.c.workspace_id == ws, audience_members.c.profile_id == profile_id)).scalars())  # fmt: skip


def audiences_holding_many(conn: Connection, ws: str, profile_ids: list[str]) -> set[str]:
    """The audiences a platform holds any of these people in (their ids), in one statement."""
    if not profile_ids:
        return set()
    return set(conn.execute(sa.select(audience_members.c.audience_id).where(
        audience_members.c.workspace_id == ws,
        bulk.in_(audience_members.c.profile_id, sorted(set(profile_ids)), conn.dialect.name)).distinct()).scalars())


def want_sync(conn: Connection, ws: str, segment_ids: set[str], audience_ids: set[str] = frozenset()) -> int:
    """Segments whose membership changed, and audiences whose members' consent changed: those followers want a
    sync. Runs in the feed consumer's transaction; returns how many audiences it marked.

    Epochs make this one write per audience per sync, not per change: a follow sync starts a new epoch before it
    reads the segment (:func:`begin_follow_sync`), and a change marks the audience changed *in the current epoch*.
    An audience already marked in this epoch is left alone (no lock, no write), so a busy segment costs its
    followers one update between two syncs. Rows to mark are locked and read again, in id order; the consumer
    calls this once per workspace for a whole claim (``follow.handle_many``), so two consumer workers lock the
    audiences they share in the same order and cannot deadlock."""
    marked = 0
    for candidate in _followers(conn, ws):
        follow = candidate.options["follow"]
        wanted = follow["segment"] in segment_ids or candidate.id in audience_ids
        if not wanted or follow.get("stopped") or follow["changed"] == follow["epoch"]:
            continue
        row = conn.execute(sa.select(audiences).where(audiences.c.id == candidate.id).with_for_update()).first()
        follow = (row.options or {}).get("follow") if row is not None else None
        if not follow or follow.get("stopped") or follow["changed"] == follow["epoch"]:
            continue
        options = {**row.options, "follow": {**follow, "changed": follow["epoch"]}}
        conn.execute(audiences.update().where(audiences.c.id == row.id).values(options=options))
        marked += 1
    return marked


def begin_follow_sync(engine: Engine, audience_id: str) -> tuple[int, dict]:
    """Start a new epoch before a follow sync reads the segment; returns it, and the follow state as it was (the
    incremental sync's base and marks, read under the claim). A change handled from now on marks the audience
    changed in this epoch, which the sync does not cover, so it is synced again."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(audiences).where(audiences.c.id == audience_id).with_for_update()).first()
        follow = row.options["follow"]
        epoch = follow["epoch"] + 1
        conn.execute(audiences.update().where(audiences.c.id == audience_id)
                     .values(options={**row.options, "follow": {**follow, "epoch": epoch}}))  # fmt: skip
    return epoch, follow


def due_follows(conn: Connection, now: datetime) -> list[tuple[str, str]]:
    """(workspace id, audience name) of following audiences with changes not yet synced, with removals an erasure
    queued, or whose segment was deleted, and whose last follow sync is at least their interval ago."""
    out = []
    rows = [r for r in _followers(conn, None) if not r.options["follow"].get("stopped")]
    queued: set[str] = set()
    for part in _chunks([r.id for r in rows]):
        queued.update(conn.execute(sa.select(audience_removals.c.audience_id).distinct().where(
            audience_removals.c.audience_id.in_(part))).scalars())  # fmt: skip
    alive: dict[str, set[str]] = {}  # workspace -> its segments: a deleted one (even empty: no exits) stops them
    for row in rows:
        follow = row.options["follow"]
        if row.workspace_id not in alive:
            alive[row.workspace_id] = segment_store.ids(conn, row.workspace_id)  # ids only: no rule parsed
        gone = follow["segment"] not in alive[row.workspace_id]
        if not _pending(follow) and row.id not in queued and not gone:
            continue
        last = follow["synced_at"]
        if last is not None and datetime.fromisoformat(last) + timedelta(seconds=follow["interval_seconds"]) > now:
            continue
        out.append((row.workspace_id, row.name))
    return out


def followed(
    engine: Engine, audience_id: str, epoch: int | None, now: datetime, stopped: bool = False, *,
    mark: tuple[datetime, int] | None = None, base: dict | None = None,
) -> None:  # fmt: skip
    """A follow sync ended at ``now``: it covered the changes of the epochs before ``epoch`` (None when it failed:
    they stay due, tried again after the interval). ``mark`` is the feed's position when it began (kept for the
    incremental syncs after it); ``base`` is given when it succeeded: what the next incremental sync starts from
    (see :func:`incremental_base`)."""
    with engine.begin() as conn:
        row = conn.execute(sa.select(audiences).where(audiences.c.id == audience_id).with_for_update()).first()
        follow = (row.options or {}).get("follow") if row is not None else None
        if follow is None:
            return
        follow = {**follow, "synced_at": iso(now)}
        if epoch is not None:
            follow["synced"] = max(follow["synced"], epoch)
        if stopped:
            follow["stopped"] = True
        if base is not None:
            follow["base"] = base
        if mark is not None:
            follow["marks"] = _kept_marks([*follow.get("marks", []), [iso(mark[0]), mark[1]]], follow.get("base"))
        conn.execute(audiences.update().where(audiences.c.id == audience_id)
                     .values(options={**row.options, "follow": follow}))  # fmt: skip


# -- incremental follow syncs (docs/decisions/0049-incremental-follow-sync.md) -------------------------------------
# A change whose feed record was given a sequence number is visible to every read that starts this long after: the
# feed's rows are a transaction's last statements, numbered just before it commits. Generous, as it also absorbs
# the clock skew between the processes that sync (a worker, the API).
MARGIN = timedelta(minutes=2)
# A full pass at least this often: the feed keeps handled changes 7 days (feed.RETENTION), and a full pass repairs
# whatever a writer that changed a profile without recording it would have left behind.
FULL_EVERY = timedelta(days=1)
MAX_MARKS = 16
# Changes that cannot change what a row or the consent decision reads (a profile's traits, consent and
# identifiers): the feed records them, but they write neither ``profiles.state`` nor ``identifiers``.
NOT_ROW_CAUSES = ("segment", "list", "message", "computed")
PROBE_RATIO = 4  # the feed's rows scanned per person probed, about, at which both ways cost the same


def feed_mark(conn: Connection) -> int:
    """The feed's last sequence number visible now (0 when empty). Read *before* the instant it is kept with, so
    that every change numbered after that instant has a greater number."""
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(profile_changes.c.seq), 0))).scalar_one()


def _kept_marks(marks: list, base: dict | None) -> list:
    """The marks a later incremental sync may still use: the newest at least :data:`MARGIN` older than the base,
    and every newer one (at most :data:`MAX_MARKS`)."""
    marks = sorted(marks, key=lambda m: datetime.fromisoformat(m[0]))
    if base is not None:
        limit = datetime.fromisoformat(base["at"]) - MARGIN
        older = [m for m in marks if datetime.fromisoformat(m[0]) <= limit]
        marks = older[-1:] + [m for m in marks if datetime.fromisoformat(m[0]) > limit]
    return marks[-MAX_MARKS:]


def incremental_base(follow: dict, fingerprint: str, now: datetime) -> int | None:
    """The feed position an incremental sync reads changes after, or None when it must be a full pass.

    The base is the start of the last follow sync that succeeded (a failed one may have left a removal undone, so
    it moves nothing). A change that sync did not see committed after it began, so its feed number was given after
    ``base.at - MARGIN``, and is greater than a mark taken at or before that instant: the newest such mark is the
    bound. None when nothing succeeded yet, the row's inputs changed (the fingerprint: format, identifiers, consent,
    the workspace's default region, the row code's version), the base is older than :data:`FULL_EVERY`, or no mark
    is old enough (an interval shorter than the margin)."""
    base = follow.get("base")
    if not base or base.get("fingerprint") != fingerprint:
        return None
    at = datetime.fromisoformat(base["at"])
    if now - at > FULL_EVERY or now < at:
        return None
    usable = [(datetime.fromisoformat(t), seq) for t, seq in follow.get("marks", [])]
    usable = [m for m in usable if m[0] <= at - MARGIN]
    return max(usable)[1] if usable else None


def changed_since(conn: Connection, ws: str, seq: int, opaque: bool, among: set[str], upto: int) -> set[str]:
    """The profiles among ``among`` whose traits, consent or identifiers may have changed after feed position ``seq``
    (a merge names both profiles; a replay every profile it rewrote), read up to about ``upto`` (the feed's last
    position: later changes may be left out or not). An event the resolver says touched only activity
    (``detail.profile`` false) is left out, unless ``opaque``: it may still have given her a user id, which a row's
    ``external_id`` reads.

    Two ways to the same answer, the cheaper taken: the feed's range after ``seq`` (every workspace's changes, by
    the primary key), or, when the people are fewer than a quarter of that range, their own changes
    (``ix_profile_changes_profile``, one probe each)."""
    t = profile_changes.c
    dialect = conn.dialect.name
    if len(among) * PROBE_RATIO < upto - seq:
        query = sa.select(t.profile_id, t.cause, t.target_id, t.detail).where(
            t.seq > seq, t.workspace_id == ws, t.cause.not_in(NOT_ROW_CAUSES))
        parts = [query.where(bulk.in_(t.profile_id, part, dialect)) for part in _chunks(sorted(among))]
    else:
        # SQLite (no statistics) took the workspace's equality over the range of the primary key and read every
        # change the workspace kept (7 days: 39,000 rows a sync at 10,000 customers, for the hour's 1,300 after
        # ``seq``): ``workspace_id || ''`` is a term no index serves, so the range is read
        own = t.workspace_id.concat("") if dialect == "sqlite" else t.workspace_id
        parts = [sa.select(t.profile_id, t.cause, t.target_id, t.detail).where(
            t.seq > seq, own == ws, t.cause.not_in(NOT_ROW_CAUSES))]  # fmt: skip
    out: set[str] = set()
    for part in parts:
        for pid, cause, target, detail in conn.execute(part):
            if cause == "event" and not opaque and isinstance(detail, dict) and detail.get("profile") is False:
                continue
            out.add(pid)
            if target:
                out.add(target)
    return out


def member_hashes(conn: Connection, audience_id: str) -> list[Synced]:
    """The rows the platform holds, without their keys (``keys`` empty): what an incremental sync compares. The keys
    are read for the rows it removes only (:func:`with_keys`); queued removals come whole (they are few)."""
    rows = [Synced(r.id, r.profile_id, r.row_hash, {}) for r in conn.execute(
        sa.select(audience_members.c.id, audience_members.c.profile_id, audience_members.c.row_hash)
        .where(audience_members.c.audience_id == audience_id))]  # fmt: skip
    rows += [
        Synced(None, None, r.row_hash, r.hashed_keys)
        for r in conn.execute(sa.select(audience_removals).where(audience_removals.c.audience_id == audience_id))
    ]
    return rows


def with_keys(conn: Connection, rows: list[Synced]) -> list[Synced]:
    """The same rows with the keys the platform holds (read for those read without them)."""
    want = [s.id for s in rows if s.id is not None and not s.keys]
    keys: dict[int, dict] = {}
    for part in _chunks(want):
        keys.update(conn.execute(sa.select(audience_members.c.id, audience_members.c.hashed_keys)
                                 .where(audience_members.c.id.in_(part))).all())  # fmt: skip
    return [Synced(s.id, s.profile_id, s.row_hash, keys.get(s.id, s.keys)) if s.id in keys else s for s in rows]


# -- manual changes (a journey's audience step) ---------------------------------------------------------------------
def following(conn: Connection, ws: str) -> set[str]:
    """Names of the audiences that follow a segment: their members come from it, so they take no manual change."""
    return {r.name for r in _followers(conn, ws) if not r.options["follow"].get("stopped")}


def queue_change(conn: Connection, ws: str, name: str, profile_id: str, action: str, key: str, now: datetime) -> bool:
    """Queue adding (or removing) one person to the audience ``name``, in the caller's transaction; the
    ``audience_changes`` task applies it with the audience's sync. One change per ``key``: False when it was queued
    already. NotFound for an unknown audience, Conflict for one that follows a segment."""
    if action not in ("add", "remove"):
        raise ChorusError("action must be add or remove", field="action")
    aud = get(conn, ws, name)
    follow = (aud.options or {}).get("follow")
    if follow and not follow.get("stopped"):
        raise Conflict(f"audience {name!r} follows segment {follow['segment']!r}: its members come from there",
                       field="audience")  # fmt: skip
    return bool(bulk.insert_rows(conn, audience_changes, [{
        "workspace_id": ws, "key": key, "audience_id": aud.id, "profile_id": profile_id, "action": action,
        "queued_at": now, "applied": False}], conflict=["workspace_id", "key"], returning="seq"))  # fmt: skip


def changes_due(conn: Connection) -> list[tuple[str, str]]:
    """(workspace id, audience name) of the audiences with manual changes not applied yet."""
    ids = list(conn.execute(sa.select(audience_changes.c.audience_id).where(sa.not_(audience_changes.c.applied))
                            .distinct()).scalars())  # fmt: skip
    out = []
    for part in _chunks(sorted(ids)):
        out += [(r.workspace_id, r.name) for r in conn.execute(sa.select(audiences.c.workspace_id, audiences.c.name)
                                                                .where(audiences.c.id.in_(part)))]  # fmt: skip
    return sorted(out)


def pending_changes(conn: Connection, audience_id: str, limit: int = 10_000) -> list[tuple[int, str, str]]:
    """(seq, profile id, action) of the audience's changes not applied yet, in the order they were queued."""
    t = audience_changes.c
    rows = conn.execute(sa.select(t.seq, t.profile_id, t.action).where(t.audience_id == audience_id,
                        sa.not_(t.applied)).order_by(t.seq).limit(limit))  # fmt: skip
    return [(r.seq, r.profile_id, r.action) for r in rows]


def changes_applied(engine: Engine, seqs: list[int], now: datetime) -> None:
    """These changes were applied (or dropped): kept as applied, so their keys stay taken."""
    with engine.begin() as conn:
        for part in _chunks(seqs):
            conn.execute(audience_changes.update().where(audience_changes.c.seq.in_(part))
                         .values(applied=True, applied_at=now))  # fmt: skip


def forget_changes(conn: Connection, ws: str, pids: list[str]) -> int:
    """Erasure: the person's manual changes, applied or not (an applied add is a member row, erased with it)."""
    t = audience_changes.c
    return conn.execute(audience_changes.delete().where(t.workspace_id == ws, bulk.in_(
        t.profile_id, pids, conn.dialect.name))).rowcount or 0  # fmt: skip


# -- profiles -----------------------------------------------------------------------------------------------------
def resolve_profile_ids(conn: Connection, ws: str, ids: list[str]) -> dict[str, str]:
    """Requested id -> current profile id (merged-away ids resolve through aliases); unknown ids are missing."""
    found: dict[str, str] = {}
    dialect = conn.dialect.name
    for part in _chunks(list(dict.fromkeys(ids))):
        for (pid,) in conn.execute(
            sa.select(profiles.c.id).where(profiles.c.workspace_id == ws, bulk.in_(profiles.c.id, part, dialect))
        ):
            found[pid] = pid
        rest = [i for i in part if i not in found]
        if rest:
            for alias, pid in conn.execute(
                sa.select(profile_aliases.c.alias_id, profile_aliases.c.profile_id).where(
                    profile_aliases.c.workspace_id == ws, bulk.in_(profile_aliases.c.alias_id, rest, dialect)
                )
            ):
                found[alias] = pid
    return found


def owners(conn: Connection, ws: str, idents: list[str]) -> dict[str, str]:
    """``kind:value`` identifier -> the profile that holds it."""
    out: dict[str, str] = {}
    for part in _chunks(list(dict.fromkeys(idents))):
        out.update(
            conn.execute(
                sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
                    identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.ident, part, conn.dialect.name)
                )
            ).all()
        )
    return out


def people(conn: Connection, ws: str, pids: list[str]) -> dict[str, dict]:
    """What audiences read of each profile: identifiers by kind, traits and consent (as in the profile view)."""
    out: dict[str, dict] = {}
    dialect = conn.dialect.name
    for part in _chunks(list(dict.fromkeys(pids))):
        for pid, state in conn.execute(
            sa.select(profiles.c.id, profiles.c.state).where(
                profiles.c.workspace_id == ws, bulk.in_(profiles.c.id, part, dialect)
            )
        ):
            shown = public_view(state)
            out[pid] = {"id": pid, "identifiers": {}, "traits": shown["traits"], "consent": shown["consent"]}
        for pid, ident in conn.execute(
            sa.select(identifiers.c.profile_id, identifiers.c.ident)
            .where(identifiers.c.workspace_id == ws, bulk.in_(identifiers.c.profile_id, part, dialect))
            # by person first: ordered by ``ident`` alone, SQLite walked the workspace's whole primary key (every
            # identifier of every customer) to skip the sort of the few it wanted
            .order_by(identifiers.c.profile_id, identifiers.c.ident)
        ):
            if pid in out:
                out[pid]["identifiers"].setdefault(kind_of(ident), []).append(value_of(ident))
    return out


# -- synced rows --------------------------------------------------------------------------------------------------
def synced(conn: Connection, audience_id: str) -> list[Synced]:
    """The rows the platform holds (profile ids as recorded) and the removals erasures queued."""
    rows = [
        Synced(r.id, r.profile_id, r.row_hash, r.hashed_keys)
        for r in conn.execute(sa.select(audience_members).where(audience_members.c.audience_id == audience_id))
    ]
    rows += [
        Synced(None, None, r.row_hash, r.hashed_keys)
        for r in conn.execute(sa.select(audience_removals).where(audience_removals.c.audience_id == audience_id))
    ]
    return rows


def removed(engine: Engine, audience_id: str, done: list[Synced]) -> None:
    """The platform no longer holds these rows: forget them (and the queued removals among them)."""
    members = [s.id for s in done if s.id is not None]
    hashes = [s.row_hash for s in done if s.id is None]
    with engine.begin() as conn:
        for part in _chunks(members):
            conn.execute(audience_members.delete().where(audience_members.c.id.in_(part)))
        for part in _chunks(hashes):
            conn.execute(
                audience_removals.delete().where(
                    audience_removals.c.audience_id == audience_id, audience_removals.c.row_hash.in_(part)
                )
            )


def added(engine: Engine, ws: str, audience_id: str, rows: list[tuple[str, str, dict]], now: datetime) -> None:
    """The platform holds these rows now. A profile merged meanwhile is recorded under its survivor; a profile
    erased meanwhile is not recorded at all: its row is queued for removal instead, as erasure would have."""
    if not rows:
        return
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":  # the lock erasure holds: it cannot run between check and insert
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
        now_of = resolve_profile_ids(conn, ws, [pid for pid, _h, _row in rows])
        members = [
            dict(audience_id=audience_id, workspace_id=ws, profile_id=now_of[pid], row_hash=h, hashed_keys=row,
                 synced_at=now)
            for pid, h, row in rows
            if pid in now_of
        ]  # fmt: skip
        gone = [
            dict(audience_id=audience_id, workspace_id=ws, row_hash=h, hashed_keys=row, queued_at=now)
            for pid, h, row in rows
            if pid not in now_of
        ]
        for part in _chunks(members):
            conn.execute(audience_members.insert(), part)
        if gone:
            conn.execute(audience_removals.insert(), gone)


def kept(engine: Engine, keep: list[tuple[Synced, str]], drop: list[Synced], audience_id: str) -> None:
    """Rows that stay: follow merges to the surviving profile; forget duplicate records."""
    with engine.begin() as conn:
        for s, pid in keep:
            if s.profile_id != pid:
                conn.execute(audience_members.update().where(audience_members.c.id == s.id).values(profile_id=pid))
        removed_ids = [s.id for s in drop if s.id is not None]
        for part in _chunks(removed_ids):
            conn.execute(audience_members.delete().where(audience_members.c.id.in_(part)))
        hashes = [s.row_hash for s in drop if s.id is None]
        for part in _chunks(hashes):
            conn.execute(
                audience_removals.delete().where(
                    audience_removals.c.audience_id == audience_id, audience_removals.c.row_hash.in_(part)
                )
            )


def member_profiles(conn: Connection, audience_id: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(audience_members.c.profile_id).where(audience_members.c.audience_id == audience_id).distinct()
        ).scalars()
    )


# -- privacy ------------------------------------------------------------------------------------------------------
def of_profiles(conn: Connection, ws: str, pids: list[str]) -> list[dict]:
    """The audience rows held for a person (their export)."""
    rows = conn.execute(
        sa.select(audiences.c.name, audiences.c.provider, audiences.c.destination, audience_members.c.synced_at,
                  audience_members.c.hashed_keys)
        .join(audiences, audiences.c.id == audience_members.c.audience_id)
        .where(audience_members.c.workspace_id == ws, audience_members.c.profile_id.in_(pids))
        .order_by(audiences.c.name)
    )  # fmt: skip
    return [
        {"audience": r.name, "provider": r.provider, "destination": r.destination, "synced_at": iso(r.synced_at),
         "hashed_keys": r.hashed_keys}
        for r in rows
    ]  # fmt: skip


# The erasure participant (chorus.registry): counts -> tables; removals queued are rows written, not deleted.
ERASURE_TABLES = {"audience_members": "audience_members", "audience_removals_queued": None,
                  "audience_changes": "audience_changes"}  # fmt: skip


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    """Erasure: the person's rows go; rows a platform holds are removed there at the next sync."""
    return {**forget_profiles(conn, ws, person.profile_ids, person.now),
            "audience_changes": forget_changes(conn, ws, person.profile_ids)}  # fmt: skip


def export(conn: Connection, ws: str, person: Person) -> dict:
    return {"audiences": of_profiles(conn, ws, person.profile_ids)}


def forget_profiles(conn: Connection, ws: str, pids: list[str], now: datetime) -> dict[str, int]:
    """Erasure: delete the person's member rows. Rows a platform holds are queued, without the profile, so that
    the next sync of the audience removes them there; then the hashes are deleted too."""
    rows = conn.execute(
        sa.select(audience_members.c.id, audience_members.c.audience_id, audience_members.c.row_hash,
                  audience_members.c.hashed_keys, audiences.c.provider)
        .join(audiences, audiences.c.id == audience_members.c.audience_id)
        .where(audience_members.c.workspace_id == ws, audience_members.c.profile_id.in_(pids))
    ).all()  # fmt: skip
    queued = [
        dict(audience_id=r.audience_id, workspace_id=ws, row_hash=r.row_hash, hashed_keys=r.hashed_keys, queued_at=now)
        for r in rows
        if r.provider != FILE
    ]
    if queued:
        conn.execute(audience_removals.insert(), queued)
    deleted = 0
    for part in _chunks([r.id for r in rows]):
        deleted += conn.execute(audience_members.delete().where(audience_members.c.id.in_(part))).rowcount
    return {"audience_members": deleted, "audience_removals_queued": len(queued)}
