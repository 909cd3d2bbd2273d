"""What the identity graph holds about a person, for erasure: who they are (their identifiers and aliases, read
before anything is deleted), their links, identifiers, aliases and merge records, and the copies of their
identifiers that other profiles claimed."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.identity.identifiers import (
    MAX_IDENT_LEN,
    event_anchor,
    id_text,
    kind_of,
    normalise_email,
    normalise_phone,
    value_of,
)
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
    # her values under another kind on someone else (an alias' previousId makes her user id an anonymous id of the
    # browser that sent it): that profile claimed her too, though no link of it touches one of her identifiers
    aliased = _aliased(conn, ws, pid, idents)
    claimants = sorted(set(claimants) | set(aliased.values()))
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
    theirs = {i: p for i, p in aliased.items() if p not in gone}
    counts["claimant_events_redacted"] = _unclaim(conn, ws, [c for c in claimants if c not in gone], set(idents),
                                                  person, theirs)  # fmt: skip
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


def _aliased(conn: Connection, ws: str, pid: str, idents: list[str]) -> dict[str, str]:
    """The identifiers of other profiles that are her user id made an anonymous id (``anonymous_id:<her user id>``,
    made by a browser's ``alias`` with her user id as ``previousId``), each with its profile. Only that shape: her
    values under any other kind are other people's own (review: an unrelated customer whose loyalty id was her
    numeric user id lost it, and every value equal to it in his events)."""
    hers = set(idents)
    candidates = {f"anonymous_id:{text}" for i in idents if kind_of(i) == "user_id"
                  if (text := id_text(value_of(i), "anonymous_id")) is not None}  # fmt: skip
    candidates = {c for c in candidates if len(c) <= MAX_IDENT_LEN and c not in hers}
    out: dict[str, str] = {}
    found = sorted(candidates)
    for k in range(0, len(found), 500):
        out.update(conn.execute(sa.select(identifiers.c.ident, identifiers.c.profile_id).where(
            identifiers.c.workspace_id == ws, identifiers.c.ident.in_(found[k : k + 500]))).all())  # fmt: skip
    return {i: p for i, p in out.items() if p != pid}


class _Hers:
    """Whether a value in a claimant's event is one of the erased person's identifier values, whatever its key
    (``backup_email``, a property): compared after the normalisation of each kind, so ``" Zoe@Example.com "`` is
    her email and ``"+44 7911 123456"`` her phone."""

    def __init__(self, idents: set[str], cfg) -> None:
        self.region = cfg.default_region
        self.emails = {value_of(i) for i in idents if kind_of(i) == "email"}
        self.phones = {value_of(i) for i in idents if kind_of(i) == "phone"}
        self.values = {value_of(i) for i in idents}

    def __call__(self, value: object) -> bool:
        if not isinstance(value, str):  # identifiers are text: a number equal to a numeric user id is not hers
            return False
        text = value
        if text in self.values or text.strip() in self.values:
            return True
        try:
            if self.emails and "@" in text and normalise_email(text) in self.emails:
                return True
            # a phone has digits enough: parsing every short string as a number would only cost time
            if self.phones and sum(c.isdigit() for c in text) >= 6:
                return normalise_phone(text, self.region) in self.phones
        except ValueError:
            return False
        return False


# what an event is, not what it says about anyone: never one of her values, and never taken out
_STRUCTURE = frozenset({"type", "messageId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "event",
                        "channel", "version", "userHash"})  # fmt: skip


def _scrub(value: object, hers: _Hers) -> object:
    """``value`` without the entries whose value is one of hers (a list item that is an object holding one, such
    as an external id, goes whole)."""
    if isinstance(value, dict):
        return {k: _scrub(v, hers) for k, v in value.items() if not hers(v)}
    if isinstance(value, list):
        return [_scrub(v, hers) for v in value
                if not hers(v) and not (isinstance(v, dict) and any(hers(x) for x in v.values()))]  # fmt: skip
    return value


def _without_her_values(payload: dict, hers: _Hers, cfg, trusted: bool) -> dict:
    out = {k: (v if k in _STRUCTURE else _scrub(v, hers)) for k, v in payload.items()
           if k in _STRUCTURE or not hers(v)}  # fmt: skip
    anchor = event_anchor(payload, cfg, trusted)
    if event_anchor(out, cfg, trusted) != anchor:
        # the event's own anchor stays (its profile is made from it); the anchor's identifier stays with it
        out.update({k: payload[k] for k in ("userId", "anonymousId") if k in payload})
    return out


def _unclaim(conn: Connection, ws: str, claimants: list[str], idents: set[str], person: Person,
             aliased: dict[str, str]) -> int:  # fmt: skip
    """Take the erased person's identifiers out of the claimants' events, then rebuild the claimants' profiles from
    their links and events, so that no trait, export or replay of theirs holds the person's email any more.

    Her identifier values go from every value of the claimants' events, whatever their key (a ``backup_email``
    trait, a property), and the identifiers of the claimants that are her values under another kind (``aliased``)
    go with their links, except one that anchors an event of theirs: the event's profile is made from it."""
    if not claimants:
        return 0
    from chorus import workspaces as ws_api
    from chorus.identity.identifiers import without_identifiers
    from chorus.identity.resolver import Rebuild
    from chorus.profiles import feed

    settings = ws_api.get(conn, ws)
    cfg = settings.identity
    hers = _Hers(idents | set(aliased), cfg)
    redacted = 0
    anchors: set[str | None] = set()
    for row in conn.execute(
        sa.select(events.c.seq, events.c.payload, events.c.trusted).where(
            events.c.workspace_id == ws, events.c.profile_id.in_(claimants)
        )
    ).all():
        clean = _without_her_values(without_identifiers(row.payload, cfg, idents), hers, cfg, row.trusted)
        anchors.add(event_anchor(clean, cfg, row.trusted))
        if clean != row.payload:
            # the columns copied from the payload follow it
            cols = {"user_id": id_text(clean.get("userId")),
                    "anonymous_id": id_text(clean.get("anonymousId"), "anonymous_id")}  # fmt: skip
            conn.execute(events.update().where(events.c.seq == row.seq).values(payload=clean, **cols))
            person.rewritten_events.append(row.seq)
            redacted += 1
    drop = sorted(i for i, p in aliased.items() if p in claimants and i not in anchors)
    left = set(conn.execute(sa.select(identifiers.c.profile_id).where(
        identifiers.c.workspace_id == ws, identifiers.c.profile_id.in_(claimants),
        identifiers.c.ident.not_in(drop) if drop else sa.true())).scalars())  # fmt: skip
    # a profile keeps at least one identifier: without one nothing would rebuild it (an anchor keeps it anyway)
    drop = [i for i in drop if aliased[i] in left]
    for k in range(0, len(drop), 500):
        part = drop[k : k + 500]
        for side in (identity_links.c.a, identity_links.c.b):  # a statement each: each side probes its own index
            conn.execute(identity_links.delete().where(identity_links.c.workspace_id == ws, side.in_(part)))
        conn.execute(identifiers.delete().where(identifiers.c.workspace_id == ws, identifiers.c.ident.in_(part)))
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
