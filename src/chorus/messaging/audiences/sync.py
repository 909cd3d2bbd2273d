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
from collections.abc import Callable

from sqlalchemy.engine import Engine

from chorus.errors import ChorusError, Conflict, NotFound
from chorus.messaging.audiences import rows as R
from chorus.messaging.audiences import settings as S
from chorus.messaging.audiences import store
from chorus.messaging.audiences.base import AudienceClient, Upload
from chorus.messaging.audiences.membership import MODES, Entry, Skip, members_after, plan
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


def resolve(conn, ws: Workspace, entries: list[Entry | Skip]) -> tuple[dict[str, Entry], list[Skip]]:
    """Profile id -> the first entry that named it; and the entries that name nobody."""
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
    ids = store.resolve_profile_ids(conn, ws.id, [e.profile_id for e in good if e.profile_id is not None])
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
        return S.client_for(ws.settings, aud.provider)
    except ConfigError as exc:
        raise ChorusError(f"audience {aud.name!r}: {exc}", field="provider") from None


def _claimed(
    engine: Engine, ws: Workspace, aud, read_entries: Callable[[], list[Entry | Skip]], mode: str,
    client: AudienceClient | None, clock: Clock,
) -> dict:  # fmt: skip
    """Claim the audience (Conflict while another sync of it runs), then read ``read_entries()`` and sync them. The
    membership is read only once the claim is held: read before it, it could be older than what a sync that held
    the claim meanwhile sent, and this sync would take the platform back to it."""
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
            given, skips = resolve(conn, ws, entries)
            previous = store.synced(conn, aud.id)
            now_of = store.resolve_profile_ids(conn, ws.id, [s.profile_id for s in previous if s.profile_id])
            before = set(now_of.values())
            members = members_after(mode, before, set(given))
            people = store.people(conn, ws.id, sorted(members))
        region = ws.identity.default_region
        current: dict[str, tuple[str, dict]] = {}
        out_because: dict[str, str] = {}
        for pid in sorted(members):
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
        todo = plan(previous, current)
        result["unchanged"] = len(todo.keep)
        store.kept(engine, todo.keep, todo.drop, aud.id)

        why: Counter = Counter()
        for s in todo.remove:
            pid = now_of.get(s.profile_id) if s.profile_id else None
            if s.id is None:
                why["erased"] += 1
            elif pid is None or (pid in members and pid not in people):
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


def sync_followed(
    engine: Engine, ws: Workspace, name: str, *, client: AudienceClient | None = None, clock: Clock = utcnow
) -> dict:
    """Sync an audience that follows a segment: the segment's current members are the membership (``replace``),
    through the same consent check, hashing and diff as a caller's list, so only differences are sent.

    The audience is claimed first (:func:`_claimed`); then a new epoch starts before the members are read
    (:func:`store.begin_follow_sync`), so a change handled after that keeps the audience due for the next sync. A
    sync that finds another running reads nothing and starts no epoch. A deleted segment has no members: the
    audience empties and stops following (its members' exits were recorded when it was deleted)."""
    with read_only(engine) as conn:
        aud = store.get(conn, ws.id, name)
    follow = (aud.options or {}).get("follow")
    if not follow or follow.get("stopped"):
        raise ChorusError(f"audience {name!r} follows no segment: give it profiles to sync", field="profiles")
    read: dict = {}

    def segment_members() -> list[Entry | Skip]:
        read["covered"] = store.begin_follow_sync(engine, aud.id)
        with read_only(engine) as conn:
            try:
                segment_store.get(conn, ws.id, follow["segment"])
                read["members"], read["gone"] = segment_store.members(conn, ws.id, follow["segment"]), False
            except NotFound:
                read["members"], read["gone"] = set(), True
        where = f"segment {follow['segment']}"
        return [Entry(where, profile_id=pid) for pid in sorted(read["members"])]

    try:
        result = _claimed(engine, ws, aud, segment_members, "replace", _client(ws, aud, client), clock)
    except Conflict:
        raise  # another sync of it runs: that one records its own end
    except ChorusError:
        store.followed(engine, aud.id, None, clock())  # tried: the next try waits the interval, as a success does
        raise
    store.followed(engine, aud.id, read["covered"], clock(), stopped=read["gone"])
    result["source"] = {"segment": follow["segment"], "members": len(read["members"]), "deleted": read["gone"]}
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
