"""Feed Segment messages straight into the store and resolve them (no HTTP), for identity tests."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

import sqlalchemy as sa

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import Event, normalise
from chorus.identity.resolver import Resolver
from chorus.profiles import state as pstate
from chorus.store.tables import identifiers, profiles

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def send(engine, ws_id: str, messages: list[dict], trusted: bool = True, received_at: datetime = T0) -> None:
    with engine.begin() as conn:
        src = workspaces.internal_source(conn, ws_id, "server" if trusted else "client", "test-" + str(trusted))
        evs = []
        for m in messages:
            e = normalise(m, received_at=received_at, source_kind=src.kind)
            assert isinstance(e, Event), e
            evs.append(e)
        ingest.store(conn, src, evs, [], received_at)


def resolve(engine) -> None:
    Resolver(engine).drain()


def partition(engine, ws_id: str) -> frozenset[frozenset[str]]:
    groups = defaultdict(set)
    with engine.connect() as conn:
        for ident, pid in conn.execute(
            sa.select(identifiers.c.ident, identifiers.c.profile_id).where(identifiers.c.workspace_id == ws_id)
        ):
            groups[pid].add(ident)
    return frozenset(frozenset(g) for g in groups.values())


def states_by_group(engine, ws_id: str) -> dict[frozenset[str], dict]:
    groups = defaultdict(set)
    out = {}
    with engine.connect() as conn:
        for ident, pid in conn.execute(
            sa.select(identifiers.c.ident, identifiers.c.profile_id).where(identifiers.c.workspace_id == ws_id)
        ):
            groups[pid].add(ident)
        rows = {r.id: r for r in conn.execute(sa.select(profiles).where(profiles.c.workspace_id == ws_id))}
    assert set(rows) == set(groups), "every profile owns identifiers and every identifier has a live profile"
    for pid, g in groups.items():
        st = rows[pid].state
        out[frozenset(g)] = {"traits": st["traits"], "channels": st["channels"], "consent": st["consent"],
                             "refused": pstate.refused_grants(st), "known": rows[pid].known}  # fmt: skip
    return out


def profile_of(engine, ws_id: str, ident: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(identifiers.c.profile_id).where(identifiers.c.workspace_id == ws_id, identifiers.c.ident == ident)
        ).scalar_one()
