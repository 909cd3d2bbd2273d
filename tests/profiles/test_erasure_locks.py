"""PostgreSQL: an erasure that takes a second profile with the person (her app's token profile: ``erased_with``)
locks both as every other writer does, in id order, before it deletes anything, so it never deadlocks with a
segment batch's chunk (which locks profiles in id order as its scan reaches them).

Review: the second profile was found, and locked, only in the identity phase, after the person's row and the rows
deleted so far were held. A chunk holding the token's profile (its id first) and waiting for hers deadlocked with
it, and PostgreSQL may abort the erasure: a 500, and nothing erased."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.profiles import privacy
from chorus.segments.batch import lock_chunk
from chorus.store.tables import identifiers, profiles
from tests.identity.helpers import profile_of, resolve, send


def _her_and_her_token(engine) -> tuple[str, str, str]:
    """A workspace where her token's profile id sorts before hers (the order that deadlocked): (ws, her, token)."""
    for n in range(40):
        ws = workspaces.create(engine, f"locks-{n}")["id"]
        send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "v1", "timestamp": "2026-01-01T10:01:00Z",
                           "traits": {"email": "vera@example.com"}}], trusted=True)  # fmt: skip
        send(engine, ws, [{"type": "track", "event": "Product Viewed", "userId": "vera", "anonymousId": "app-vera",
                           "messageId": "a1", "timestamp": "2026-01-01T10:04:00Z",
                           "context": {"device": {"type": "ios", "token": "tok-vera"}}}], trusted=False)  # fmt: skip
        resolve(engine)
        her, token = profile_of(engine, ws, "user_id:vera"), profile_of(engine, ws, "device_token:tok-vera")
        assert token not in (None, her)
        if token < her:
            return ws, her, token
    raise AssertionError("no workspace where the token's profile id sorts first")


def test_an_erasure_with_a_second_profile_waits_for_a_batch_chunk_and_never_deadlocks(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    ws, her, token = _her_and_her_token(engine)
    chunk = engine.connect()
    tx = chunk.begin()
    assert lock_chunk(chunk, ws, None, 1) == [token]  # the chunk holds the token's row, and will want hers next
    out: dict = {}

    def erase():
        try:
            out["answer"] = privacy.forget(engine, ws, her)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            out["error"] = exc

    t = threading.Thread(target=erase)
    t.start()
    time.sleep(1.0)  # the erasure waits on the token's row (in id order, before hers): it holds nothing of hers yet
    try:
        assert lock_chunk(chunk, ws, token, 5) == [her]  # so the chunk gets hers, and ends
        tx.commit()
    finally:
        chunk.close()
    t.join(60)
    assert "error" not in out, out
    assert out["answer"]["profile_id"] == her and out["answer"]["erased_with"] == [token]
    with engine.connect() as conn:
        left = conn.execute(sa.select(identifiers.c.ident).where(identifiers.c.workspace_id == ws)).scalars().all()
        gone = conn.execute(sa.select(profiles.c.id).where(profiles.c.id.in_([her, token]))).scalars().all()
    assert left == [] and gone == []
