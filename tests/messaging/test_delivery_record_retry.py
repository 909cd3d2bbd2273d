"""A delivery's recording of its batch that the database rolled back for a passing reason (PostgreSQL broke a
deadlock by failing it, a serialization failure) is written again: giving up left every message of the batch
"sending" until its lease expired as "failed: may have been sent", although each went out. Only a rollback the
database is sure of (SQLSTATE class 40) is written again: after a lost connection the commit may have happened."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.messaging import delivery as delivery_mod
from chorus.messaging import outbox
from chorus.store.tables import message_status, messages
from tests.api.test_consent_lock_order import _message

_SET_STATUSES = outbox.set_statuses


class _Busy(Exception):
    sqlstate = "40P01"  # deadlock_detected


class _Gone(Exception):
    sqlstate = "08006"  # connection_failure


def _sending(engine, name: str) -> dict:
    w, mid = _message(engine, name, "email")
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == mid).values(status="sending"))
        return dict(conn.execute(sa.select(messages).where(messages.c.id == mid)).one()._mapping)


def _record_failing(engine, monkeypatch, msg: dict, error: Exception, times: int) -> str:
    real, calls = _SET_STATUSES, []

    def set_statuses(conn, changes):
        calls.append(len(changes))
        if len(calls) <= times:
            raise error
        return real(conn, changes)

    monkeypatch.setattr(outbox, "set_statuses", set_statuses)
    monkeypatch.setattr(delivery_mod.time, "sleep", lambda _s: None)
    d = delivery_mod.Deliverer(engine, threads=1)
    try:
        d._record([delivery_mod._Outcome(msg, "sent", provider="smtp", provider_id="<m1@chorus>")])
    finally:
        d.close()
    with engine.connect() as conn:
        return conn.execute(sa.select(messages.c.status).where(messages.c.id == msg["id"])).scalar_one()


def test_a_recording_rolled_back_by_a_deadlock_is_written_again(engine, monkeypatch):
    msg = _sending(engine, "record-retry")
    busy = sa.exc.OperationalError("UPDATE messages ...", {}, _Busy("deadlock detected"))
    assert _record_failing(engine, monkeypatch, msg, busy, times=2) == "sent"


def test_a_recording_that_keeps_failing_or_fails_for_another_reason_is_not_retried_for_ever(engine, monkeypatch):
    msg = _sending(engine, "record-retry-gives-up")
    busy = sa.exc.OperationalError("UPDATE messages ...", {}, _Busy("deadlock detected"))
    assert _record_failing(engine, monkeypatch, msg, busy, times=delivery_mod.RECORD_ATTEMPTS) == "sending"
    other = _sending(engine, "record-bug")
    assert _record_failing(engine, monkeypatch, other, ValueError("a bug of ours"), times=1) == "sending"


def test_a_lost_connection_is_not_written_again_nor_is_anything_after_the_commit(engine, monkeypatch):
    """Review: the whole recording was retried on any transient error, the work after its commit included; a
    connection lost after the commit (or in the read after it) wrote the batch twice: two "sent" in the history."""
    msg = _sending(engine, "record-after-commit")
    gone = sa.exc.OperationalError("SELECT messages.id ...", {}, _Gone("server closed the connection"),
                                   connection_invalidated=True)  # fmt: skip
    calls = []
    real = delivery_mod.Deliverer._unsink_erased

    def unsink(self, sunk):  # after the commit
        calls.append(1)
        if len(calls) == 1:
            raise gone
        return real(self, sunk)

    monkeypatch.setattr(delivery_mod.Deliverer, "_unsink_erased", unsink)
    assert _record_failing(engine, monkeypatch, msg, gone, times=0) == "sent"
    lost = _sending(engine, "record-connection-lost")
    assert _record_failing(engine, monkeypatch, lost, gone, times=1) == "sending"  # its lease decides, once
    with engine.connect() as conn:
        for mid, n in ((msg["id"], 1), (lost["id"], 0)):
            sent = conn.execute(sa.select(sa.func.count()).select_from(message_status).where(
                message_status.c.message_id == mid, message_status.c.status == "sent")).scalar_one()  # fmt: skip
            assert sent == n, mid
