"""Everything held about a person (export) and forgetting them (erasure)."""

from __future__ import annotations

import hashlib

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus.identity.identifiers import IdentityConfig, kind_of, value_of
from chorus.messaging.audiences import store as audience_store
from chorus.profiles import computed
from chorus.profiles.views import get_profile, merge_history, resolve_id
from chorus.store.db import scrub
from chorus.store.tables import (
    dead_addresses,
    erasures,
    events,
    identifiers,
    identity_links,
    imports,
    merges,
    message_status,
    messages,
    profile_aliases,
    profiles,
    push_subscriptions,
    rejected_events,
)
from chorus.timeutil import utcnow


def _idents(conn: Connection, ws: str, pid: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(identifiers.c.ident).where(identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid)
        ).scalars()
    )


def _matches(idents: list[str], found: dict) -> bool:
    mine: dict[str, set[str]] = {}
    for i in idents:
        mine.setdefault(kind_of(i), set()).add(value_of(i).lower())
    for kind, values in (found or {}).items():
        if not isinstance(values, list):  # rows written before identifiers were kept by kind
            values = [values]
        for v in values:
            v = str(v).lower()
            if kind == "phone":
                digits = v.lstrip("0")
                if len(digits) >= 6 and any(p.lstrip("+").endswith(digits) for p in mine.get("phone", ())):
                    return True
            elif v in mine.get(kind, ()):
                return True
    return False


def _rejected_of(conn: Connection, ws: str, idents: list[str]):
    for r in conn.execute(sa.select(rejected_events).where(rejected_events.c.workspace_id == ws)):
        if _matches(idents, r.identifiers):
            yield r


def export(conn: Connection, ws: str, profile_id: str, cfg: IdentityConfig) -> dict:
    prof = get_profile(conn, ws, profile_id, cfg)
    pid = prof["id"]
    evs = conn.execute(
        sa.select(events.c.payload)
        .where(events.c.workspace_id == ws, events.c.profile_id == pid)
        .order_by(events.c.timestamp)
    ).scalars()
    idents = _idents(conn, ws, pid)
    row = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == pid)).scalar_one()
    return {
        "profile": prof,
        "state": row,
        "events": list(evs),
        "merges": merge_history(conn, ws, pid),
        "push_subscriptions": [
            {"endpoint": r.endpoint, "created_at": r.created_at}
            for r in conn.execute(
                sa.select(push_subscriptions).where(
                    push_subscriptions.c.workspace_id == ws,
                    push_subscriptions.c.ident.in_([i for i in idents if kind_of(i) in ("user_id", "anonymous_id")]),
                )
            )
        ],
        "messages": [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(
                    messages.c.id,
                    messages.c.channel,
                    messages.c.address,
                    messages.c.status,
                    messages.c.content,
                    messages.c.created_at,
                )
                .where(messages.c.workspace_id == ws, messages.c.profile_id.in_([pid, *prof["aliases"]]))
                .order_by(messages.c.created_at)
            )
        ],
        "audiences": audience_store.of_profiles(conn, ws, [pid, *prof["aliases"]]),
        "rejected_events": [
            {
                "reason": r.reason,
                "field": r.field,
                "payload": orjson.loads(r.payload) if r.payload.startswith("{") else r.payload,
            }
            for r in _rejected_of(conn, ws, idents)
        ],
    }


def erased_hash(profile_id: str) -> str:
    """How ``erasures`` names an erased profile id: enough to find its rows in a copy, nothing more."""
    return hashlib.sha256(profile_id.encode()).hexdigest()


def erase(conn: Connection, ws: str, profile_id: str) -> dict:
    """Delete the profile and everything that identifies the person; returns counts per table."""
    if conn.dialect.name == "postgresql":  # no resolver may re-attach half of the person meanwhile
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    pid = resolve_id(conn, ws, profile_id)
    idents = _idents(conn, ws, pid)
    aliases = list(
        conn.execute(sa.select(profile_aliases.c.alias_id).where(profile_aliases.c.profile_id == pid)).scalars()
    )
    counts = {}
    counts["events"] = conn.execute(
        events.delete().where(events.c.workspace_id == ws, events.c.profile_id == pid)
    ).rowcount
    # Events of this person not yet resolved would otherwise bring the profile back.
    users = [value_of(i) for i in idents if kind_of(i) == "user_id"]
    anons = [value_of(i) for i in idents if kind_of(i) == "anonymous_id"]
    counts["events"] += conn.execute(
        events.delete().where(
            events.c.workspace_id == ws,
            events.c.profile_id.is_(None),
            sa.or_(events.c.user_id.in_(users), events.c.anonymous_id.in_(anons)),
        )
    ).rowcount
    claimants = _claimants(conn, ws, pid, idents)
    counts["identity_links"] = 0
    for i in range(0, len(idents), 500):
        part = idents[i : i + 500]
        counts["identity_links"] += conn.execute(
            identity_links.delete().where(
                identity_links.c.workspace_id == ws, sa.or_(identity_links.c.a.in_(part), identity_links.c.b.in_(part))
            )
        ).rowcount
    counts["identifiers"] = conn.execute(
        identifiers.delete().where(identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid)
    ).rowcount
    counts["aliases"] = conn.execute(profile_aliases.delete().where(profile_aliases.c.profile_id == pid)).rowcount
    ids = [pid, *aliases]
    counts["merges"] = conn.execute(
        merges.delete().where(
            merges.c.workspace_id == ws, sa.or_(merges.c.survivor_id.in_(ids), merges.c.merged_id.in_(ids))
        )
    ).rowcount
    rej = [r.id for r in _rejected_of(conn, ws, idents)]
    counts["rejected_events"] = (
        conn.execute(rejected_events.delete().where(rejected_events.c.id.in_(rej))).rowcount if rej else 0
    )
    # Messages to the person: content and address identify them; queued ones must never go out now.
    msg_ids = list(
        conn.execute(
            sa.select(messages.c.id).where(messages.c.workspace_id == ws, messages.c.profile_id.in_(ids))
        ).scalars()
    )
    # The timeline events of those messages (chorus-<message id>-<status>-…) not yet resolved: one known only by
    # its email would otherwise create a profile for that email again.
    for i in range(0, len(msg_ids), 200):
        prefixes = [f"chorus-{m}-" for m in msg_ids[i : i + 200]]
        counts["events"] += conn.execute(
            events.delete().where(
                events.c.workspace_id == ws,
                events.c.profile_id.is_(None),
                sa.or_(*(sa.func.substr(events.c.message_id, 1, len(p)) == p for p in prefixes)),
            )
        ).rowcount
    counts["message_status"] = 0
    for i in range(0, len(msg_ids), 500):
        counts["message_status"] += conn.execute(
            message_status.delete().where(message_status.c.message_id.in_(msg_ids[i : i + 500]))
        ).rowcount
    counts["messages"] = conn.execute(
        messages.delete().where(messages.c.workspace_id == ws, messages.c.profile_id.in_(ids))
    ).rowcount
    push_idents = [i for i in idents if kind_of(i) in ("user_id", "anonymous_id")]
    endpoints = list(
        conn.execute(
            sa.select(push_subscriptions.c.endpoint).where(
                push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(push_idents)
            )
        ).scalars()
    )
    counts["dead_addresses"] = 0
    values = [value_of(i) for i in idents] + endpoints
    for i in range(0, len(values), 500):
        counts["dead_addresses"] += conn.execute(
            dead_addresses.delete().where(
                dead_addresses.c.workspace_id == ws, dead_addresses.c.address.in_(values[i : i + 500])
            )
        ).rowcount
    counts["push_subscriptions"] = (
        conn.execute(
            push_subscriptions.delete().where(
                push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(push_idents)
            )
        ).rowcount
        if push_idents
        else 0
    )
    # Ad platform audiences: the member rows go; rows a platform holds are removed there at the next sync.
    counts.update(audience_store.forget_profiles(conn, ws, ids, utcnow()))
    counts["import_errors_redacted"] = _redact_import_errors(conn, ws, idents)
    counts["computed_traits"] = computed.forget(conn, ws, ids)
    counts["profiles"] = conn.execute(profiles.delete().where(profiles.c.id == pid)).rowcount
    counts["claimant_events_redacted"] = _unclaim(conn, ws, claimants, set(idents))
    # copies outside the store (the event lake) remove the person at their next update
    conn.execute(erasures.insert().values(workspace_id=ws, profile_hashes=[erased_hash(i) for i in ids],
                                          erased_at=utcnow()))  # fmt: skip
    return {"profile_id": pid, "deleted": counts}


def _claimants(conn: Connection, ws: str, pid: str, idents: list[str]) -> list[str]:
    """Other profiles linked to the person's identifiers: the links the merge guards refused (someone else's
    browser claiming this person's email), so their events still carry the person's identifiers."""
    others: set[str] = set()
    for i in range(0, len(idents), 500):
        part = idents[i : i + 500]
        for a, b in conn.execute(
            sa.select(identity_links.c.a, identity_links.c.b).where(
                identity_links.c.workspace_id == ws, sa.or_(identity_links.c.a.in_(part), identity_links.c.b.in_(part))
            )
        ):
            others.update((a, b))
    others -= set(idents)
    if not others:
        return []
    owners = set()
    for chunk in (sorted(others)[i : i + 500] for i in range(0, len(others), 500)):
        owners.update(
            conn.execute(
                sa.select(identifiers.c.profile_id).where(
                    identifiers.c.workspace_id == ws, identifiers.c.ident.in_(chunk)
                )
            ).scalars()
        )
    owners.discard(pid)
    return sorted(owners)


def _unclaim(conn: Connection, ws: str, claimants: list[str], idents: set[str]) -> int:
    """Take the erased person's identifiers out of the claimants' events, then rebuild the claimants' profiles from
    their links and events, so that no trait, export or replay of theirs holds the person's email any more."""
    if not claimants:
        return 0
    from chorus import workspaces as ws_api
    from chorus.identity.identifiers import without_identifiers
    from chorus.identity.resolver import Rebuild

    settings = ws_api.get(conn, ws)
    cfg = settings.identity
    redacted = 0
    for row in conn.execute(
        sa.select(events.c.seq, events.c.payload).where(events.c.workspace_id == ws, events.c.profile_id.in_(claimants))
    ).all():
        clean = without_identifiers(row.payload, cfg, idents)
        if clean != row.payload:
            conn.execute(events.update().where(events.c.seq == row.seq).values(payload=clean))
            redacted += 1
    seeds = set(
        conn.execute(
            sa.select(identifiers.c.ident).where(
                identifiers.c.workspace_id == ws, identifiers.c.profile_id.in_(claimants)
            )
        ).scalars()
    )
    if seeds:
        Rebuild(conn, ws, cfg, settings.settings.get("trait_policies", {}), utcnow()).run(seeds, [])
    return redacted


# The table behind each count of erase(): the tables whose freed space scrub() must clear after it.
TABLE_OF_COUNT = {
    "events": "events", "identity_links": "identity_links", "identifiers": "identifiers",
    "aliases": "profile_aliases", "merges": "merges", "rejected_events": "rejected_events",
    "message_status": "message_status", "messages": "messages", "dead_addresses": "dead_addresses",
    "push_subscriptions": "push_subscriptions", "audience_members": "audience_members",
    "import_errors_redacted": "imports", "computed_traits": "computed_traits", "profiles": "profiles",
    "claimant_events_redacted": "events",  # rewritten without the person's identifiers: the old versions are freed
}  # fmt: skip
NOT_DELETED = frozenset({"audience_removals_queued"})  # counts of rows written, not deleted: nothing to clear


def forget(engine: Engine, ws: str, profile_id: str, vacuum: str = "full") -> dict:
    """Erase the person (one transaction), then scrub the tables that held them so that no bytes remain in the
    database files (see store.db.scrub). The answer says what was deleted, scrubbed, and anything pending."""
    with engine.begin() as conn:
        result = erase(conn, ws, profile_id)
    touched = [TABLE_OF_COUNT[k] for k, n in result["deleted"].items() if n and k in TABLE_OF_COUNT]
    return {**result, "scrubbed": scrub(engine, touched, vacuum)}


def _redact_import_errors(conn: Connection, ws: str, idents: list[str]) -> int:
    """Import reports quote bad cells; any that quote this person's identifiers lose the quote."""
    values = [value_of(i).lower() for i in idents if len(value_of(i)) >= 3]
    redacted = 0
    for row in conn.execute(sa.select(imports.c.id, imports.c.errors).where(imports.c.workspace_id == ws)):
        changed = False
        errors = []
        for e in row.errors or []:
            if any(v in str(e.get("reason", "")).lower() for v in values):
                e = {**e, "reason": "[erased]"}
                changed = True
                redacted += 1
            errors.append(e)
        if changed:
            conn.execute(imports.update().where(imports.c.id == row.id).values(errors=errors))
    return redacted
