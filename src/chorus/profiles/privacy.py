"""Everything held about a person (export) and forgetting them (erasure).

Neither reaches into another package's tables: each package that holds something about a person registers an
erasure participant (:mod:`chorus.registry`), which deletes or scrubs its own rows in the erasure's transaction and
may add its sections to the export. This module finds the person, runs the participants in their phases, records
the erasure, and scrubs the tables the participants named once the transaction commits. The profiles package's
own participant (the profile row and its computed traits) is here too, in the last phase.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import registry as reg
from chorus.identity import erasure as identity_erasure
from chorus.identity.identifiers import IdentityConfig
from chorus.profiles import computed
from chorus.profiles.views import get_profile, merge_history, resolve_id
from chorus.registry import Person, Registry
from chorus.store.db import scrub
from chorus.store.tables import erasures, profiles
from chorus.timeutil import utcnow


def export(conn: Connection, ws: str, profile_id: str, cfg: IdentityConfig, registry: Registry | None = None) -> dict:
    """Everything held about the person; with ``with_her``, the same of each profile an erasure would take with her
    (``identity.erasure.with_her``: her data too), absent when there is none."""
    registry = registry or reg.installed()
    out = _export_one(conn, ws, profile_id, cfg, registry)
    pid = out["profile"]["id"]
    others = identity_erasure.with_her(conn, ws, pid, identity_erasure.identifiers_of(conn, ws, pid))
    if others:
        out["with_her"] = [_export_one(conn, ws, other, cfg, registry) for other in others]
    return out


def _export_one(conn: Connection, ws: str, profile_id: str, cfg: IdentityConfig, registry: Registry) -> dict:
    prof = get_profile(conn, ws, profile_id, cfg)
    pid = prof["id"]
    person = Person(pid, tuple(prof["aliases"]), tuple(identity_erasure.identifiers_of(conn, ws, pid)), utcnow())
    row = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == pid)).scalar_one()
    out = {"profile": prof, "state": row, "merges": merge_history(conn, ws, pid)}
    for p in registry.participants():
        if p.export is not None:
            out.update(p.export(conn, ws, person))
    return out


def erased_hash(profile_id: str) -> str:
    """How ``erasures`` names an erased profile id: enough to find its rows in a copy, nothing more."""
    return hashlib.sha256(profile_id.encode()).hexdigest()


def erase(conn: Connection, ws: str, profile_id: str, registry: Registry | None = None) -> dict:
    """Delete the profile and everything that identifies the person; returns counts per table.

    Runs every registered participant, phase by phase, in the caller's transaction: one that fails fails the
    erasure, and nothing is deleted. The profiles that exist only through her identity links (her app's push token
    kept apart from her profile: ``identity.erasure.with_her``) go with her, every participant's part of them, and
    are named in ``erased_with``."""
    if conn.dialect.name == "postgresql":  # no resolver may re-attach half of the person meanwhile
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    pid = resolve_id(conn, ws, profile_id)
    registry = registry or reg.installed()
    # Who goes, read before any lock or delete: her, then the profiles that go with her. Locked all at once, in the
    # order every other writer takes them (review: locking the second one after the first's deletes held rows that
    # a segment batch or a feed consumer held the second one while waiting for: a deadlock, and a 500)
    now, hers = utcnow(), identity_erasure.identifiers_of(conn, ws, pid)  # one instant for every row it writes
    with_her = identity_erasure.with_her(conn, ws, pid, hers)
    people = [Person(pid, tuple(identity_erasure.aliases_of(conn, pid)), tuple(hers), now, vanished=with_her)]
    people += [Person(p, tuple(identity_erasure.aliases_of(conn, p)),
                      tuple(identity_erasure.identifiers_of(conn, ws, p)), now) for p in with_her]  # fmt: skip
    if conn.dialect.name == "postgresql":  # whoever is evaluating them (segments) finishes first, or waits for this
        from chorus.profiles import feed

        feed.lock_person(conn, ws, [i for person in people for i in person.profile_ids])  # the consumers' order:
        conn.execute(sa.select(profiles.c.id).where(profiles.c.id.in_([person.profile_id for person in people]))
                     .order_by(profiles.c.id).with_for_update()).all()  # their claim, then the people by id
    # Phase by phase, everyone in each: the locks of the HOLD phase are taken once for all of them (one Person
    # naming every id), so in one order (review: her messages locked, then the token's, while a delivery recording
    # a batch of both held the token's and waited for hers: a deadlock); every deleting phase then runs for each.
    everyone = Person(pid, tuple(i for person in people for i in person.profile_ids if i != pid),
                      tuple(i for person in people for i in person.identifiers), now)  # fmt: skip
    counts: dict[str, int] = {}
    for p in registry.participants():
        for person in [everyone] if p.phase == reg.Phase.HOLD else people:
            for name, n in p.forget(conn, ws, person).items():
                if name not in p.tables:  # the scrub would not know where this count's rows were
                    raise RuntimeError(f"erasure participant {p.name!r} returned {name!r}, which it did not declare")
                counts[name] = counts.get(name, 0) + n
    return {"profile_id": pid, "deleted": counts, **({"erased_with": with_her} if with_her else {})}


def forget(engine: Engine, ws: str, profile_id: str, vacuum: str = "full", registry: Registry | None = None) -> dict:
    """Erase the person (one transaction), then scrub the tables that held them so that no bytes remain in the
    database files (see store.db.scrub). The answer says what was deleted, scrubbed, and anything pending."""
    registry = registry or reg.installed()
    with engine.begin() as conn:
        result = erase(conn, ws, profile_id, registry)
    # every table of a participant that held something of her: rows it deleted earlier for its own reasons (a change
    # the feed's consumers handled, a message retried) left dead copies in the files too
    touched = [t for p in registry.participants() if any(result["deleted"].get(c) for c in p.tables)
               for t in p.tables.values() if t is not None]  # fmt: skip
    return {**result, "scrubbed": scrub(engine, touched, vacuum)}


def __getattr__(name: str):
    """TABLE_OF_COUNT and NOT_DELETED, as they were before participants declared their own tables: every count of
    an erasure -> the table scrubbed after it, and the counts of rows written rather than deleted."""
    if name == "TABLE_OF_COUNT":
        return reg.installed().table_of_count()
    if name == "NOT_DELETED":
        return reg.installed().counts_not_deleted()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the profiles package's participant ---------------------------------------------------------------------------
PROFILE_TABLES = {"computed_traits": "computed_traits", "profiles": "profiles"}


def forget_profile(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    """The profile row and its computed traits; then the record of the erasure, so that copies outside the store
    (the event lake) remove the person at their next update."""
    counts = {
        "computed_traits": computed.forget(conn, ws, person.profile_ids),
        "profiles": conn.execute(profiles.delete().where(profiles.c.id == person.profile_id)).rowcount,
    }
    conn.execute(erasures.insert().values(workspace_id=ws, profile_hashes=[erased_hash(i) for i in person.profile_ids],
                                          erased_at=person.now,
                                          rewritten_seqs=sorted(person.rewritten_events) or None))  # fmt: skip
    return counts
