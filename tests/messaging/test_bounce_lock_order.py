"""PostgreSQL: a bounce (a provider's callback, or a hard bounce a delivery records) and a journey's transition on
the same person never deadlock.

A transition locks the person's profile row (``views.lock_people``), then withdraws her messages not gone out yet
(an exit on the goal): her row, then her message rows. A bounce locked the message row and then wrote her consent
on her profile row: the other order. When both touched the same in-flight message, PostgreSQL found the cycle and
failed one of them: a callback answered 500 (Twilio does not send a status callback again: the bounce, and the
consent it withdraws, were lost), or a delivery's recording of its whole batch rolled back, leaving every message
of the batch "sending" until its lease expired as "failed: may have been sent". Every locker now takes the identity
lock, then the people, then their messages (``consent.lock_owners``)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from chorus.api import webhooks, webhooks_sendgrid
from chorus.messaging import delivery as delivery_mod
from chorus.messaging import outbox
from chorus.messaging.providers import PermanentError
from chorus.profiles import views
from chorus.store.tables import messages
from chorus.timeutil import utcnow
from tests.api.test_consent_lock_order import _message
from tests.identity.helpers import profile_of


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: on SQLite every write transaction holds the one write lock from BEGIN")
    return engine


def _in_flight(engine, name: str, channel: str):
    """A message of the journey ``promo`` being sent (its worker's lease held): what an exit withdraws."""
    w, mid = _message(engine, name, channel)
    with engine.begin() as conn:
        conn.execute(messages.update().where(messages.c.id == mid).values(
            journey_id="promo", status="sending", provider_message_id="SM1"))  # fmt: skip
    return w, mid, profile_of(engine, w.id, "user_id:u1")


def _transition_races(engine, ws: str, pid: str, bounce) -> tuple[list, list[str]]:
    """A transition holds her row; the bounce starts; the transition then withdraws her journey's messages and
    commits. Returns (the errors of both, the ids the transition withdrew)."""
    errors: list = []

    def run():
        try:
            bounce()
        except Exception as exc:  # noqa: BLE001 - the test reports it
            errors.append(("bounce", exc))

    t = threading.Thread(target=run)
    withdrawn: list[str] = []
    try:
        with engine.begin() as conn:
            assert views.lock_people(conn, ws, [pid]) == [pid]
            t.start()
            t.join(1.5)  # before the fix the bounce holds the message row here and waits for her profile row
            withdrawn = outbox.withdraw_journey(conn, ws, "promo", "the goal was reached", utcnow())
    except Exception as exc:  # noqa: BLE001 - the deadlock may fail this side instead
        errors.append(("transition", exc))
    t.join(30)
    assert not t.is_alive()
    return errors, withdrawn


def _bounced(engine, mid: str) -> tuple[bool, str | None]:
    with engine.connect() as conn:
        reason = conn.execute(sa.select(messages.c.withdraw_reason).where(messages.c.id == mid)).scalar_one()
        return outbox.has_status(conn, mid, "bounced"), reason


def test_a_twilio_bounce_and_a_journey_exit_on_the_same_message_both_commit(pg):
    w, mid, pid = _in_flight(pg, "bounce-order-sms", "sms")
    form = {"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "30003"}
    errors, withdrawn = _transition_races(
        pg, w.id, pid, lambda: webhooks._apply_status(SimpleNamespace(engine=pg), w, form, "failed", mid))
    assert not errors, errors
    assert withdrawn == [mid]
    assert _bounced(pg, mid) == (True, "the goal was reached")


def test_a_sendgrid_bounce_and_a_journey_exit_on_the_same_message_both_commit(pg):
    w, mid, pid = _in_flight(pg, "bounce-order-sg", "email")
    ev = {"event": "bounce", "type": "bounce", "chorus_message_id": mid, "sg_event_id": "sg1",
          "timestamp": int(time.time()), "reason": "550 no such user"}  # fmt: skip
    errors, withdrawn = _transition_races(
        pg, w.id, pid, lambda: webhooks_sendgrid._apply(SimpleNamespace(engine=pg), w, [ev]))
    assert not errors, errors
    assert withdrawn == [mid]
    assert _bounced(pg, mid) == (True, "the goal was reached")


def test_a_delivery_recording_a_hard_bounce_and_a_journey_exit_both_commit(pg):
    """The worse case: the recording is the whole batch's, and a rollback strands every message in it."""
    w, mid, pid = _in_flight(pg, "bounce-order-delivery", "email")
    with pg.connect() as conn:
        msg = dict(conn.execute(sa.select(messages).where(messages.c.id == mid)).one()._mapping)
    d = delivery_mod.Deliverer(pg, threads=1)
    try:
        outcome = delivery_mod._Outcome(msg, "permanent", provider="smtp",
                                        error=PermanentError("550 5.1.1 no such user", bounce=True))
        errors, withdrawn = _transition_races(pg, w.id, pid, lambda: d._write_outcomes([outcome]))
    finally:
        d.close()
    assert not errors, errors
    assert withdrawn == [mid]
    with pg.connect() as conn:
        status = conn.execute(sa.select(messages.c.status).where(messages.c.id == mid)).scalar_one()
    assert status == "bounced"
