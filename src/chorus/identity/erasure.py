"""What the identity graph holds about a person, for erasure: who they are (their identifiers and aliases, read
before anything is deleted), their links, identifiers, aliases and merge records, and the copies of their
identifiers that other profiles claimed."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.registry import Person
from chorus.store import bulk
from chorus.store.tables import events, identifiers, identity_links, merges, profile_aliases

TABLES = {
    "identity_links": "identity_links", "identifiers": "identifiers", "aliases": "profile_aliases",
    "merges": "merges",
    "claimant_events_redacted": "events",  # rewritten without the person's identifiers: the old versions are freed
}  # fmt: skip


def identifiers_of(conn: Connection, ws: str, pid: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(identifiers.c.ident).where(identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid)
        ).scalars()
    )


def aliases_of(conn: Connection, pid: str) -> list[str]:
    return list(
        conn.execute(sa.select(profile_aliases.c.alias_id).where(profile_aliases.c.profile_id == pid)).scalars()
    )


def aliases_among(conn: Connection, ws: str, pids: list[str]) -> list[str]:
    """The ids merged into any of ``pids`` (rows that keep the id they were made for belong to the survivor)."""
    out: list[str] = []
    for i in range(0, len(pids), 5000):
        part = pids[i : i + 5000]
        out += conn.execute(sa.select(profile_aliases.c.alias_id).where(
            profile_aliases.c.workspace_id == ws, profile_aliases.c.profile_id.in_(part))).scalars()  # fmt: skip
    return out


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    pid, idents, ids = person.profile_id, list(person.identifiers), person.profile_ids
    claimants = _claimants(conn, ws, pid, idents)  # before the links that show them are deleted
    counts = {"identity_links": 0}
    for i in range(0, len(idents), 500):
        part = idents[i : i + 500]
        for side in (identity_links.c.a, identity_links.c.b):  # a statement each: each side probes its own index
            counts["identity_links"] += conn.execute(
                identity_links.delete().where(identity_links.c.workspace_id == ws, side.in_(part))).rowcount
    counts["identifiers"] = conn.execute(
        identifiers.delete().where(identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid)
    ).rowcount
    counts["aliases"] = conn.execute(profile_aliases.delete().where(profile_aliases.c.profile_id == pid)).rowcount
    # a statement for each side, each by its index (with one OR of both, SQLite read every merge of the workspace)
    counts["merges"] = sum(conn.execute(merges.delete().where(merges.c.workspace_id == ws, side.in_(ids))).rowcount
                           for side in (merges.c.survivor_id, merges.c.merged_id))  # fmt: skip
    # The claimants that exist only through her links go with her (the erasure found them first: ``with_her``, and
    # erases each next, whole); the others are rebuilt without her identifiers.
    gone = set(person.vanished)
    counts["claimant_events_redacted"] = _unclaim(conn, ws, [c for c in claimants if c not in gone], set(idents),
                                                  person)  # fmt: skip
    return counts


def with_her(conn: Connection, ws: str, pid: str, idents: list[str]) -> list[str]:
    """The other profiles that exist only through the person's identity links, to be erased with her: claimants
    (:func:`_claimants`) every link of whose identifiers touches one of hers. Her app's push token, reported from
    the client with her user id, is kept off her server-known profile as a profile of its own with no event (an
    event's anchor always has a link of its own); once her links are deleted nothing would remain to make it from,
    and it is her data. Read before anything is deleted or locked, so that the erasure locks them all at once."""
    claimants = _claimants(conn, ws, pid, idents)
    if not claimants:
        return []
    t, i, dialect = identity_links.c, identifiers.c, conn.dialect.name
    hers = sorted(set(idents))
    # one link her erasure leaves (neither end hers) keeps a claimant: an EXISTS per identifier of it stops at the
    # first, where reading every link of a popular claimant (a shared kiosk's id) would read thousands (review)
    leaves = sa.or_(
        sa.exists().where(t.workspace_id == ws, t.a == i.ident, ~bulk.in_(t.b, hers, dialect)),
        sa.exists().where(t.workspace_id == ws, t.b == i.ident, ~bulk.in_(t.a, hers, dialect)),
    )
    keep: set[str] = set()
    for k in range(0, len(claimants), 500):
        keep.update(conn.execute(sa.select(i.profile_id).where(
            i.workspace_id == ws, i.profile_id.in_(claimants[k : k + 500]), leaves).distinct()).scalars())  # fmt: skip
    return [c for c in claimants if c not in keep]


def _claimants(conn: Connection, ws: str, pid: str, idents: list[str]) -> list[str]:
    """Other profiles linked to the person's identifiers: the links the merge guards refused (someone else's
    browser claiming this person's email), so their events still carry the person's identifiers."""
    others: set[str] = set()
    for i in range(0, len(idents), 500):
        part = idents[i : i + 500]
        # a statement for each side, each by its index: with one OR of both, SQLite read every link of the workspace
        for side in (identity_links.c.a, identity_links.c.b):
            # ``at`` is read for nothing: with (a, b) alone, SQLite walked the workspace's primary key (it holds
            # both) rather than probe the index of side b and read the rows
            for a, b, _at in conn.execute(sa.select(identity_links.c.a, identity_links.c.b, identity_links.c.at).where(
                    identity_links.c.workspace_id == ws, side.in_(part))):  # fmt: skip
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


def _unclaim(conn: Connection, ws: str, claimants: list[str], idents: set[str], person: Person) -> int:
    """Take the erased person's identifiers out of the claimants' events, then rebuild the claimants' profiles from
    their links and events, so that no trait, export or replay of theirs holds the person's email any more."""
    if not claimants:
        return 0
    from chorus import workspaces as ws_api
    from chorus.identity.identifiers import without_identifiers
    from chorus.identity.resolver import Rebuild
    from chorus.profiles import feed

    settings = ws_api.get(conn, ws)
    cfg = settings.identity
    redacted = 0
    for row in conn.execute(
        sa.select(events.c.seq, events.c.payload).where(events.c.workspace_id == ws, events.c.profile_id.in_(claimants))
    ).all():
        clean = without_identifiers(row.payload, cfg, idents)
        if clean != row.payload:
            conn.execute(events.update().where(events.c.seq == row.seq).values(payload=clean))
            person.rewritten_events.append(row.seq)
            redacted += 1
    seeds = set(
        conn.execute(
            sa.select(identifiers.c.ident).where(
                identifiers.c.workspace_id == ws, identifiers.c.profile_id.in_(claimants)
            )
        ).scalars()
    )
    if seeds:
        changes = Rebuild(conn, ws, cfg, settings.settings.get("trait_policies", {}), person.now).run(seeds, [])
        feed.record(conn, ws, changes, person.now)  # the claimants changed: their consumers re-read them
    return redacted
