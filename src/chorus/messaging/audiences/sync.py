"""Syncing an audience to its ad platform, and exporting it as a customer file: the I/O edge.

A sync:

1. resolves the caller's list (profile ids, or one identifier each) to profiles; bad or unknown items are
   skipped with a reason, the others go on;
2. combines them with the last synced membership by the mode (:func:`membership.members_after`);
3. keeps the members whose consent allows ``ads:<topic>`` (:func:`chorus.messaging.policy.ads_decision`) and who
   have an identifier the audience sends, and builds their hashed rows (:func:`rows.build_row`);
4. diffs those rows with the rows the platform holds (:func:`membership.plan`), plus the rows of erased people;
5. removes, then adds, in batches; the store records each part as soon as the platform has taken it.

Only one sync of an audience runs at a time (a claim on the audience row). A failure stops the sync with the
platform's reason; what was done before it is recorded, so the next sync carries on from there.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Collection

import orjson
from sqlalchemy.engine import Connection, Engine

import chorus
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.messaging.audiences import rows as R
from chorus.messaging.audiences import settings as S
from chorus.messaging.audiences import store
from chorus.messaging.audiences.base import AudienceClient, Upload
from chorus.messaging.audiences.membership import MODES, Entry, Skip, Synced, members_after, plan
from chorus.messaging.policy import ads_decision
from chorus.messaging.providers import ConfigError, ProviderError
from chorus.profiles.views import lookup_ident
from chorus.segments import store as segment_store
from chorus.store.db import read_only
from chorus.timeutil import Clock, iso, utcnow
from chorus.workspaces import Workspace

MAX_SHOWN = 100  # skipped items listed in a result (all are counted)


class ProviderFailed(ChorusError):
    status = 502
    code = "provider_error"


def resolve(
    conn, ws: Workspace, entries: list[Entry | Skip], live: Collection[str] = ()
) -> tuple[dict[str, Entry], list[Skip]]:
    """Profile id -> the first entry that named it; and the entries that name nobody. ``live``: profile ids known to
    be live profiles, not looked up."""
    cfg = ws.identity
    skips = [e for e in entries if isinstance(e, Skip)]
    good = [e for e in entries if isinstance(e, Entry)]
    idents: dict[int, str] = {}
    for i, e in enumerate(good):
        if e.kind is not None:
            try:
                idents[i] = lookup_ident(cfg, **{e.kind: e.value})
            except ChorusError as exc:
                skips.append(Skip(e.where, e.shown, "invalid_input", exc.message))
    ids = {pid: pid for pid in live}
    ids.update(store.resolve_profile_ids(
        conn, ws.id, [e.profile_id for e in good if e.profile_id is not None and e.profile_id not in ids]))
    owners = store.owners(conn, ws.id, list(idents.values()))
    given: dict[str, Entry] = {}
    for i, e in enumerate(good):
        if e.kind is not None and i not in idents:
            continue
        pid = ids.get(e.profile_id) if e.profile_id is not None else owners.get(idents[i])
        if pid is None:
            what = f"profile {e.profile_id}" if e.profile_id is not None else f"profile with {e.kind} {e.value!r}"
            skips.append(Skip(e.where, e.shown, "unknown_profile", f"no {what} in this workspace"))
        else:
            given.setdefault(pid, e)
    return given, skips


def _skipped(skips: list[Skip]) -> dict:
    return {"total": len(skips), "by_reason": dict(Counter(s.reason for s in skips)),
            "items": [s.as_dict() for s in skips[:MAX_SHOWN]]}  # fmt: skip


def sync(
    engine: Engine, ws: Workspace, name: str, entries: list[Entry | Skip], mode: str = "replace", *,
    client: AudienceClient | None = None, clock: Clock = utcnow,
) -> dict:  # fmt: skip
    """Make the platform hold the audience's rows; returns the counts (see docs/messaging.md). An audience that
    follows a segment takes its members from there only (:func:`sync_followed`)."""
    if mode not in MODES:
        raise ChorusError(f"mode must be one of {', '.join(MODES)}", field="mode")
    with read_only(engine) as conn:
        aud = store.get(conn, ws.id, name)
    follow = (aud.options or {}).get("follow")
    if follow and not follow.get("stopped"):
        raise Conflict(f"audience {name!r} follows segment {follow['segment']!r}: its members come from there",
                       field="profiles")  # fmt: skip
    return _claimed(engine, ws, aud, lambda: entries, mode, _client(ws, aud, client), clock)


def sync_read(
    engine: Engine, ws: Workspace, aud, read_entries: Callable[[], list[Entry | Skip]], *,
    client: AudienceClient | None = None, clock: Clock = utcnow,
) -> dict:  # fmt: skip
    """Make the platform hold exactly the profiles ``read_entries()`` returns (``replace``), read once the audience is
    claimed: a caller that derives the membership from what was synced (``changes.apply``) then reads it as no other
    sync can change it. Conflict while another sync of the audience runs."""
    return _claimed(engine, ws, aud, read_entries, "replace", _client(ws, aud, client), clock)


def _client(ws: Workspace, aud, client: AudienceClient | None) -> AudienceClient | None:
    if aud.provider == S.FILE or client is not None:
        return client
    try:
        return S.client_for(ws.settings, aud.provider, workspace=ws.name)  # whose CHORUS_WS_ variables it reads
    except ConfigError as exc:
        raise ChorusError(f"audience {aud.name!r}: {exc}", field="provider") from None


# Given the read connection, the profile ids listed and the rows the platform holds: member -> the hash of the row
# she keeps without being loaded (an incremental follow sync, :func:`_reuse`).
Reuse = Callable[[Connection, set[str], list[Synced]], dict[str, str]]


def _claimed(
    engine: Engine, ws: Workspace, aud, read_entries: Callable[[], list[Entry | Skip]], mode: str,
    client: AudienceClient | None, clock: Clock, reuse: Reuse | None = None, stats: dict | None = None,
) -> dict:  # fmt: skip
    """Claim the audience (Conflict while another sync of it runs), then read ``read_entries()`` and sync them. The
    membership is read only once the claim is held: read before it, it could be older than what a sync that held
    the claim meanwhile sent, and this sync would take the platform back to it.

    With ``reuse`` (an incremental follow sync), the members it names keep the row they hold, unread and unhashed;
    the rows held are read without their keys, which are read for the rows removed only. ``stats`` receives how
    many rows were built and how many kept unread."""
    name = aud.name
    started = clock()
    try:
        store.claim(engine, aud.id, name, started)
    except Conflict:
        if client is not None:
            client.close()
        raise
    counts = Counter()
    upload = Upload()
    result: dict = {"audience": name, "mode": mode, "started_at": iso(started)}
    skips: list[Skip] = []
    try:
        entries = read_entries()
        with read_only(engine) as conn:
            previous = store.synced(conn, aud.id) if reuse is None else store.member_hashes(conn, aud.id)
            # a member kept unread holds a row under her own id and has no change since: not merged, replayed nor
            # erased (each is a change, and erasure deletes her rows), so she is live and not looked up either
            named = {e.profile_id for e in entries if isinstance(e, Entry) and e.profile_id is not None}
            kept_rows = reuse(conn, named, previous) if reuse is not None else {}
            given, skips = resolve(conn, ws, entries, kept_rows.keys())
            # a row recorded under a profile the list named is under a live profile (``resolve`` found it): only the
            # others may have been merged or erased since (one read of the ids fewer for a following audience)
            now_of = {s.profile_id: s.profile_id for s in previous if s.profile_id in given}
            now_of.update(store.resolve_profile_ids(
                conn, ws.id, [s.profile_id for s in previous if s.profile_id and s.profile_id not in given]))
            before = set(now_of.values())
            members = members_after(mode, before, set(given))
            people = store.people(conn, ws.id, sorted(members - kept_rows.keys()))
        region = ws.identity.default_region
        current: dict[str, tuple[str, dict]] = {pid: (h, {}) for pid, h in kept_rows.items()}  # held: never added
        out_because: dict[str, str] = {}
        built = 0
        for pid in sorted(members - kept_rows.keys()):
            person = people.get(pid)
            if person is None:
                continue
            decision = ads_decision(person, aud.consent_topic, aud.consent_mode)
            row = R.build_row(aud.format, person, aud.identifiers, region) if decision.allowed else None
            if row is None:
                reason = "no_identifier" if decision.allowed else "consent_denied"
                detail = (f"none of {', '.join(aud.identifiers)} is usable for {aud.format}" if decision.allowed
                          else decision.reason)  # fmt: skip
                if pid in given:
                    skips.append(Skip(given[pid].where, given[pid].shown, reason, detail))
                out_because[pid] = reason
                continue
            current[pid] = (R.fingerprint(row), row)
            built += 1
        if stats is not None:
            stats.update(rows_built=built, rows_kept_unread=len(kept_rows))
        todo = plan(previous, current)
        if reuse is not None and todo.remove:
            with read_only(engine) as conn:
                removing = store.with_keys(conn, todo.remove)
            # a row gone since it was read (erased meanwhile) is queued as a removal, with its keys, for the next sync
            todo.remove[:] = [s for s in removing if s.keys]
        result["unchanged"] = len(todo.keep)
        store.kept(engine, todo.keep, todo.drop, aud.id)

        why: Counter = Counter()
        for s in todo.remove:
            pid = now_of.get(s.profile_id) if s.profile_id else None
            if s.id is None:
                why["erased"] += 1
            elif pid is None or (pid in members and pid not in people and pid not in kept_rows):
                why["profile_gone"] += 1
            elif pid not in members:
                why["left"] += 1
            elif pid in out_because:
                why[out_because[pid]] += 1
            else:
                why["identifiers_changed"] += 1
        result["removed_by_reason"] = dict(why)

        def removed(indexes: list[int], rejected: dict[int, str]) -> None:
            store.removed(engine, aud.id, [todo.remove[i] for i in indexes])
            counts["removed"] += len(indexes)

        def added(indexes: list[int], rejected: dict[int, str]) -> None:
            store.added(engine, ws.id, aud.id, [todo.add[i] for i in indexes], clock())
            counts["added"] += len(indexes)
            counts["rejected"] += len(rejected)

        for op, items, done in (("remove", [s.keys for s in todo.remove], removed),
                                ("add", [row for _pid, _h, row in todo.add], added)):  # fmt: skip
            if not items:
                continue
            if client is None:  # a file audience: nothing to upload, the membership is recorded
                done(list(range(len(items))), {})
            else:
                upload.merge(client.apply(aud.destination, op, items, done, aud.options))
        result["ok"] = True
    except ProviderError as exc:
        result["ok"] = False
        result["error"] = exc.reason
        raise ProviderFailed(
            f"{aud.provider}: {exc.reason} (before it failed, {counts['removed']} rows were removed and "
            f"{counts['added']} added; the next sync continues from there)"
        ) from None
    finally:
        result.update(added=counts["added"], removed=counts["removed"], finished_at=iso(clock()))
        result["skipped"] = _skipped(skips)
        result["provider"] = {**upload.as_dict(), "rejected": counts["rejected"],
                              "retries": getattr(getattr(client, "retrying", None), "retries", 0)}  # fmt: skip
        stored = {**result, "skipped": {k: v for k, v in result["skipped"].items() if k != "items"}}
        store.release(engine, aud.id, stored, clock())
        if client is not None:
            client.close()
    with read_only(engine) as conn:
        result["members"] = store.view(conn, store.get(conn, ws.id, name))["members"]
    return result


def inputs_fingerprint(ws: Workspace, aud) -> str:
    """What every row and consent decision of the audience reads besides the person: its format, identifiers and
    consent, the workspace's default region, and the version of the code that builds rows. An incremental follow
    sync keeps the rows of unchanged people only while this is what it was at the last sync (else a full pass)."""
    inputs = [R.VERSION, chorus.__version__, aud.format, list(aud.identifiers), aud.consent_topic, aud.consent_mode,
              ws.identity.default_region]  # fmt: skip
    return R.n.sha256_hex(orjson.dumps(inputs).decode())


def _reuse(ws: Workspace, aud, since: int, upto: int) -> Reuse:
    """The incremental follow sync's rule: a member keeps the row the platform holds under her own profile id, unread
    and unhashed, unless the feed has a change of hers after ``since`` that may change her row (traits, consent,
    identifiers, a merge, a replay). A member with no row of her own (new, skipped last time, or sharing one row with
    another profile) or with two is built as in a full pass, so skips and their reasons stay exact."""
    opaque = aud.format == "meta" and "external_id" in aud.identifiers

    def reuse(conn: Connection, named: set[str], previous: list[Synced]) -> dict[str, str]:
        changed = store.changed_since(conn, ws.id, since, opaque, named, upto)
        held: dict[str, set[str]] = {}
        for s in previous:
            if s.id is not None and s.profile_id in named:
                held.setdefault(s.profile_id, set()).add(s.row_hash)
        return {pid: next(iter(hs)) for pid, hs in held.items() if len(hs) == 1 and pid not in changed}

    return reuse


def sync_followed(
    engine: Engine, ws: Workspace, name: str, *, client: AudienceClient | None = None, clock: Clock = utcnow,
    incremental: bool = False,
) -> dict:  # fmt: skip
    """Sync an audience that follows a segment: the segment's current members are the membership (``replace``),
    through the same consent check, hashing and diff as a caller's list, so only differences are sent.

    The audience is claimed first (:func:`_claimed`); then a new epoch starts before the members are read
    (:func:`store.begin_follow_sync`), so a change handled after that keeps the audience due for the next sync. A
    sync that finds another running reads nothing and starts no epoch. A deleted segment has no members: the
    audience empties and stops following (its members' exits were recorded when it was deleted).

    ``incremental`` (the worker task's syncs): members whose profile has no change in the feed since the last
    successful follow sync began (less a margin) keep their rows without being read or hashed
    (:func:`store.incremental_base`); the result is the full pass's. A full pass when no base is usable, and always
    without ``incremental`` (a manual sync: the way to force one). See
    docs/decisions/0049-incremental-follow-sync.md."""
    with read_only(engine) as conn:
        aud = store.get(conn, ws.id, name)
    follow = (aud.options or {}).get("follow")
    if not follow or follow.get("stopped"):
        raise ChorusError(f"audience {name!r} follows no segment: give it profiles to sync", field="profiles")
    fingerprint = inputs_fingerprint(ws, aud)
    read: dict = {}
    stats: dict = {}

    def segment_members() -> list[Entry | Skip]:
        read["covered"], state = store.begin_follow_sync(engine, aud.id)
        with read_only(engine) as conn:
            # the feed's position first, then the instant: every change numbered after that instant is greater
            seq = store.feed_mark(conn)
            read["mark"] = (clock(), seq)
            since = store.incremental_base(state, fingerprint, read["mark"][0]) if incremental else None
            read["reuse"] = _reuse(ws, aud, since, seq) if since is not None else None
            try:
                segment_store.get(conn, ws.id, follow["segment"])
                read["members"], read["gone"] = segment_store.members(conn, ws.id, follow["segment"]), False
            except NotFound:
                read["members"], read["gone"] = set(), True
        where = f"segment {follow['segment']}"
        return [Entry(where, profile_id=pid) for pid in sorted(read["members"])]

    def reuse(conn: Connection, members: set[str], previous: list[Synced]) -> dict[str, str]:
        return read["reuse"](conn, members, previous) if read.get("reuse") else {}

    try:
        client = _client(ws, aud, client)
        result = _claimed(engine, ws, aud, segment_members, "replace", client, clock, reuse, stats)
    except Conflict:
        raise  # another sync of it runs: that one records its own end
    except ChorusError:
        # tried: the next try waits the interval, as a success does; the base stays (a removal may be undone)
        store.followed(engine, aud.id, None, clock(), mark=read.get("mark"))
        raise
    base = {"at": iso(read["mark"][0]), "fingerprint": fingerprint}
    store.followed(engine, aud.id, read["covered"], clock(), stopped=read["gone"], mark=read["mark"], base=base)
    result["source"] = {"segment": follow["segment"], "members": len(read["members"]), "deleted": read["gone"]}
    result["follow_pass"] = {"pass": "incremental" if read.get("reuse") else "full", **stats}
    return result


def export(engine: Engine, ws: Workspace, name: str, fmt: str | None = None) -> tuple[str, dict]:
    """The audience's members as the platform's customer-file CSV (hashed), and counts.

    Rows are built from the members' profiles now, in the requested format, and consent is checked again, so
    the file never holds someone who opted out since the last sync.
    """
    with read_only(engine) as conn:
        aud = store.get(conn, ws.id, name)
        fmt = fmt or aud.format
        if fmt not in R.FORMATS:
            raise ChorusError("format must be meta or google", field="format")
        kinds = [k for k in aud.identifiers if k in R.KINDS[fmt]]
        if not kinds:
            raise ChorusError(f"audience {name!r} sends none of the identifiers a {fmt} file has", field="format")
        ids = store.resolve_profile_ids(conn, ws.id, store.member_profiles(conn, aud.id))
        people = store.people(conn, ws.id, sorted(set(ids.values())))
    columns = R.csv_columns(fmt, kinds)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([header for _key, header in columns])
    skipped: Counter = Counter()
    written = 0
    for pid in sorted(people):
        person = people[pid]
        if not ads_decision(person, aud.consent_topic, aud.consent_mode).allowed:
            skipped["consent_denied"] += 1
            continue
        row = R.build_row(fmt, person, kinds, ws.identity.default_region)
        if row is None:
            skipped["no_identifier"] += 1
            continue
        writer.writerow([row.get(key, "") for key, _header in columns])
        written += 1
    return buf.getvalue(), {"rows": written, "skipped": dict(skipped), "format": fmt}
