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


def test_an_erasure_with_a_second_profile_locks_their_messages_in_one_order_with_delivery(engine):
    """Delivery records a batch's statuses holding its message rows, locked in id order. A batch with a message to
    her token's profile and one to her: the erasure locked hers, then the token's (person by person), while the
    delivery held the token's and waited for hers: a deadlock (review). The erasure's hold phase locks all their
    messages in one statement, in id order."""
    from datetime import UTC, datetime

    from chorus.store.tables import messages

    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    ws, her, token = _her_and_her_token(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = f"msg_a_{ws}", f"msg_b_{ws}"  # the token's sorts first, as the token's profile does
    with engine.begin() as conn:
        conn.execute(messages.insert(), [
            {"id": mid, "workspace_id": ws, "idempotency_key": mid, "request_hash": "x" * 64, "profile_id": pid,
             "template": "t", "kind": "marketing", "topic": "news", "channel": "push", "address": "tok",
             "status": "sending", "choice": {}, "content": {}, "attempts": 1, "created_at": now, "updated_at": now}
            for mid, pid in ((first, token), (second, her))])  # fmt: skip
    delivery = engine.connect()
    tx = delivery.begin()
    delivery.execute(sa.select(messages.c.id).where(messages.c.id == first).with_for_update()).all()
    out: dict = {}

    def erase():
        try:
            out["answer"] = privacy.forget(engine, ws, her, vacuum="plain")
        except Exception as exc:  # noqa: BLE001 - the test reports it
            out["error"] = exc

    t = threading.Thread(target=erase)
    t.start()
    time.sleep(1.0)  # the erasure waits on the token's message (first in id order), holding none of hers
    try:
        delivery.execute(sa.select(messages.c.id).where(messages.c.id == second).with_for_update()).all()
        tx.commit()
    finally:
        delivery.close()
    t.join(60)
    assert "error" not in out, out
    assert out["answer"]["erased_with"] == [token] and out["answer"]["deleted"]["messages"] == 2
