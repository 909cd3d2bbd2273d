"""PostgreSQL: a stop's withdrawal locks a journey's messages in id order, as a delivery recording a batch does, so
the two never deadlock.

An outside probe stopped a 3,000-person broadcast while two workers delivered it: the stop answered 500
(``DeadlockDetected`` in ``withdraw_journey``), its transaction rolled back, the broadcast stayed active and went on
sending. The withdrawal locked the messages in due order (``next_attempt_at``), a batch's recording in id order."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.store.tables import messages
from tests.identity.helpers import resolve, send

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


def _journey_messages(engine, name: str, n: int = 2) -> tuple[dict, list[str]]:
    """A workspace with ``n`` people and a queued email to each from the journey ``promo``: (workspace, ids sorted)."""
    w = workspaces.create(engine, name)
    send(engine, w["id"], [{"type": "identify", "userId": f"u{i}", "messageId": f"m{i}",
                            "traits": {"email": f"u{i}@example.com"}} for i in range(n)], trusted=True)  # fmt: skip
    resolve(engine)
    outbox.save_template(engine, w["id"], "hi", {"variants": {"email": {"subject": "Hi", "html": "<p>Hello</p>"}}})
    with engine.connect() as conn:
        ws = workspaces.get(conn, w["id"])
    body = [outbox.parse_request({"to": {"user_id": f"u{i}"}, "template": "hi", "channel": "email"}) for i in range(n)]
    outbox.enqueue_many(engine, ws, [(b, f"k{i}") for i, b in enumerate(body)], Links("http://c.test", b"k" * 32),
                        lambda: T0)  # fmt: skip
    with engine.begin() as conn:
        ids = sorted(conn.execute(sa.select(messages.c.id).where(messages.c.workspace_id == w["id"])).scalars())
        conn.execute(messages.update().where(messages.c.workspace_id == w["id"]).values(journey_id="promo",
                                                                                        status="queued"))
    return w, ids


def test_a_stop_and_a_delivery_recording_its_batch_never_deadlock(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    w, (first, second) = _journey_messages(engine, "withdraw-locks")
    with engine.begin() as conn:  # the one with the greater id is due first: due order and id order disagree
        conn.execute(messages.update().where(messages.c.id == second).values(next_attempt_at=T0))
        conn.execute(messages.update().where(messages.c.id == first).values(next_attempt_at=T0 + timedelta(hours=1)))
    recording = engine.connect()
    tx = recording.begin()
    lock = sa.select(messages.c.id).where(messages.c.id == sa.bindparam("m")).with_for_update()
    recording.execute(lock, {"m": first})  # a delivery recording its batch holds the first (id order)
    out: dict = {}

    def stop():
        try:
            with engine.begin() as conn:
                out["withdrawn"] = outbox.withdraw_journey(conn, w["id"], "promo", "the journey was stopped", T0)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            out["error"] = exc

    t = threading.Thread(target=stop)
    t.start()
    time.sleep(1.0)  # the stop waits for the first; it must hold nothing the recording wants next
    try:
        recording.execute(lock, {"m": second})  # a deadlock here (or in the stop) on the code before
        tx.commit()
    finally:
        recording.close()
    t.join(30)
    assert not t.is_alive() and "error" not in out, out
    assert sorted(out["withdrawn"]) == [first, second]


def test_a_delivery_recording_a_mixed_batch_and_a_stop_never_deadlock(engine, monkeypatch):
    """Review: a batch with one message sent and one given back to the queue (a retry) locked the given-back row
    first (to read its withdrawal note), then the others: not id order, and a stop locking in id order between the
    two deadlocked with it. The whole batch is locked first now, in id order."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL (SQLite has one writer at a time)")
    w, _ = _journey_messages(engine, "withdraw-locks-mixed")
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.workspace_id == w["id"]).values(status="sending"))
        rows = [dict(r._mapping) for r in conn.execute(sa.select(messages).where(
            messages.c.workspace_id == w["id"]).order_by(messages.c.id))]
    first, second = rows
    real = outbox._unless_withdrawn
    started = threading.Event()

    def slow(conn, changes):
        out = real(conn, changes)  # on the code before: locks `second` (the put-back one) alone, first
        started.set()
        time.sleep(1.5)  # the stop comes now
        return out

    monkeypatch.setattr(outbox, "_unless_withdrawn", slow)
    res: dict = {}

    def stop():
        started.wait(10)
        try:
            with engine.begin() as conn:
                res["withdrawn"] = outbox.withdraw_journey(conn, w["id"], "promo", "the journey was stopped", T0)
        except Exception as exc:  # noqa: BLE001 - the test reports it
            res["stop_error"] = repr(exc)[:300]

    t = threading.Thread(target=stop)
    t.start()
    try:
        with engine.begin() as conn:
            outbox.set_statuses(conn, [
                outbox.Change(first, "sent", T0, {}, {"next_attempt_at": None}),
                outbox.Change(second, "retrying", T0, {}, {"next_attempt_at": T0}),
            ])
    except Exception as exc:  # noqa: BLE001 - the test reports it
        res["record_error"] = repr(exc)[:300]
    t.join(30)
    assert "stop_error" not in res and "record_error" not in res, res


def _going_out_after_pick(engine, gone: set[str]):
    """After the unlocked pick, commit `gone` as sent from another connection (a worker recording its batch)."""
    fired = {"n": 0}

    def after(conn, cursor, statement, params, context, executemany):
        if fired["n"] or "FOR UPDATE" in statement or not statement.lstrip().upper().startswith("SELECT MESSAGES.ID"):
            return
        if "journey_id" not in statement:
            return
        fired["n"] += 1
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as other:
            other.execute(messages.update().where(messages.c.id.in_(sorted(gone))).values(status="sent"))

    sa.event.listen(engine, "after_cursor_execute", after)
    return after


def test_a_sweep_is_not_told_none_is_left_when_what_it_picked_went_out_before_the_lock(engine):
    """Review: the two messages a stop's batch picked (due first) went out between the pick and the lock; the batch
    withdrew none, and a sweep counting what was withdrawn took "fewer than the batch" for "none left" and stopped,
    leaving a later queued one to go out. It counts what was picked; the next batch withdraws the last one."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the check under the lock: PostgreSQL")
    w, (a, b, c) = _journey_messages(engine, "withdraw-picked", 3)
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id.in_([a, b])).values(status="sending", next_attempt_at=T0))
        conn.execute(messages.update().where(messages.c.id == c).values(status="queued",
                                                                      next_attempt_at=T0 + timedelta(hours=5)))
    hook = _going_out_after_pick(engine, {a, b})
    try:
        with engine.begin() as conn:
            assert outbox.withdraw_journey_batch(conn, w["id"], "promo", "stopped", T0, limit=2) == ([], 2)
    finally:
        sa.event.remove(engine, "after_cursor_execute", hook)
    with engine.begin() as conn:
        assert outbox.withdraw_journey_batch(conn, w["id"], "promo", "stopped", T0, limit=2) == ([c], 1)
