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
    prof = get_profile(conn, ws, profile_id, cfg)
    pid = prof["id"]
    person = Person(pid, tuple(prof["aliases"]), tuple(identity_erasure.identifiers_of(conn, ws, pid)), utcnow())
    row = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == pid)).scalar_one()
    out = {"profile": prof, "state": row, "merges": merge_history(conn, ws, pid)}
    for p in (registry or reg.installed()).participants():
        if p.export is not None:
            out.update(p.export(conn, ws, person))
    return out


def erased_hash(profile_id: str) -> str:
    """How ``erasures`` names an erased profile id: enough to find its rows in a copy, nothing more."""
    return hashlib.sha256(profile_id.encode()).hexdigest()


def erase(conn: Connection, ws: str, profile_id: str, registry: Registry | None = None) -> dict:
    """Delete the profile and everything that identifies the person; returns counts per table.

    Runs every registered participant, phase by phase, in the caller's transaction: one that fails fails the
    erasure, and nothing is deleted."""
    if conn.dialect.name == "postgresql":  # no resolver may re-attach half of the person meanwhile
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws})
    pid = resolve_id(conn, ws, profile_id)
    registry = registry or reg.installed()
    counts: dict[str, int] = {}
    person = _forget_one(conn, ws, pid, registry, counts)
    # profiles that held only identifiers learned from her own events (identity.erasure): erased with her, in this
    # transaction, by every participant; their rows are counted with hers
    with_her: list[str] = []
    queue = list(person.vanished)
    while queue:
        other = queue.pop(0)
        if other != pid and other not in with_her:
            with_her.append(other)
            queue += _forget_one(conn, ws, other, registry, counts).vanished
    return {"profile_id": pid, "deleted": counts, **({"erased_with": with_her} if with_her else {})}


def _forget_one(conn: Connection, ws: str, pid: str, registry: Registry, counts: dict[str, int]) -> Person:
    if conn.dialect.name == "postgresql":  # whoever is evaluating her (segments) finishes first, or waits for this
        from chorus.profiles import feed

        feed.lock_person(conn, ws, [pid, *identity_erasure.aliases_of(conn, pid)])  # the consumers' order
        conn.execute(sa.select(profiles.c.id).where(profiles.c.id == pid).with_for_update())
    # Who the person is, read once before any participant deletes anything.
    person = Person(
        pid, tuple(identity_erasure.aliases_of(conn, pid)), tuple(identity_erasure.identifiers_of(conn, ws, pid)),
        utcnow(),
    )  # fmt: skip
    for p in registry.participants():
        for name, n in p.forget(conn, ws, person).items():
            if name not in p.tables:  # the scrub would not know where this count's rows were
                raise RuntimeError(f"erasure participant {p.name!r} returned {name!r}, which it did not declare")
            counts[name] = counts.get(name, 0) + n
    return person


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
