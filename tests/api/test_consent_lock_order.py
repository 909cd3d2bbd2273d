"""A status callback that withdraws consent (a bounce) races an inbound reply, or any transaction that takes the
identity lock and then the message row: the callback must take the identity lock before the row, or PostgreSQL
finds a lock-order cycle (DeadlockDetected) and fails one of them. Found in review; the reviewer's interleavings."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.api import webhooks, webhooks_meta, webhooks_sendgrid
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.messaging.reports import WA_BOUNCES
from chorus.store.tables import messages
from chorus.timeutil import utcnow
from tests.api.test_inbound_reply_race import PROVIDERS
from tests.identity.helpers import T0, profile_of, resolve, send

PHONE = "+31612345678"


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: on SQLite every write transaction holds the one write lock from BEGIN")
    return engine


def _message(engine, name: str, channel: str, provider_id: str | None = None):
    ws = workspaces.create(engine, name)["id"]
    if channel in PROVIDERS:
        workspaces.update_settings(engine, ws, {"messaging": {"providers": {channel: PROVIDERS[channel]}}})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": T0.isoformat(),
                       "traits": {"phone": PHONE, "email": "ana@example.com"}}])  # fmt: skip
    resolve(engine)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.connect() as conn:
        w = workspaces.get(conn, ws)
    variant = {"subject": "Hi", "html": "<p>hi</p>"} if channel == "email" else {"text": "hi"}
    req = outbox.parse_request({"profile_id": pid, "channel": channel, "kind": "transactional",
                                "content": {"name": "x", "variants": {channel: variant}}})  # fmt: skip
    view, _ = outbox.enqueue(engine, w, req, "k1", Links("http://127.0.0.1", b"k" * 32))
    if provider_id:
        with engine.begin() as conn:
            conn.execute(messages.update().where(messages.c.id == view["id"])
                         .values(provider_message_id=provider_id, status="sent"))  # fmt: skip
    return w, view["id"]


def _race(monkeypatch, status, reply) -> list:
    """Runs ``status`` until it has read its message (row locked, under the old order), then ``reply`` (identity
    lock, then that message), then lets ``status`` go on to consent; returns the errors of both."""
    locked, go = threading.Event(), threading.Event()
    real = outbox.has_status
    holder: dict = {}

    def has_status(conn, *a, **k):
        if threading.current_thread() is holder.get("t") and not locked.is_set():
            locked.set()
            go.wait(10)
        return real(conn, *a, **k)

    monkeypatch.setattr(outbox, "has_status", has_status)
    errors: list = []

    def run(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the test reports whichever failed
            errors.append((name, exc))

    t1 = threading.Thread(target=run, args=("status", status))
    holder["t"] = t1
    t1.start()
    assert locked.wait(10)
    t2 = threading.Thread(target=run, args=("reply", reply))
    t2.start()
    t2.join(1.5)  # under the old order the reply holds the identity lock here and waits for the message
    go.set()
    t1.join(20)
    t2.join(20)
    return errors


def test_twilio_bounce_callback_and_inbound_reply_do_not_deadlock(pg, monkeypatch):
    w, mid = _message(pg, "lock-order-sms", "sms", "SM1")  # sent: a callback about a queued one changes nothing
    svc = SimpleNamespace(engine=pg)
    form = {"MessageSid": "SM1", "MessageStatus": "failed", "ErrorCode": "30003"}
    errors = _race(monkeypatch, lambda: webhooks._apply_status(svc, w, form, "failed", mid),
                   lambda: webhooks._inbound(svc, w, {"From": PHONE, "Body": "Thanks!", "MessageSid": "SM-r"}))
    assert not errors, errors
    with pg.connect() as conn:
        assert outbox.has_status(conn, mid, "bounced") and outbox.has_status(conn, mid, "replied")


def test_whatsapp_bounce_report_and_inbound_reply_do_not_deadlock(pg, monkeypatch):
    w, mid = _message(pg, "lock-order-wa", "whatsapp", provider_id="wamid.M")
    svc = SimpleNamespace(engine=pg)
    now = utcnow()
    error = {"code": next(iter(WA_BOUNCES))}
    reply = {"from": PHONE[1:], "id": "wamid.reply1", "timestamp": str(int(time.time())), "type": "text",
             "text": {"body": "Thanks!"}}  # fmt: skip
    errors = _race(
        monkeypatch,
        lambda: webhooks_meta._report(svc, w, "wamid.M", "failed", "failed", now, error, now),
        lambda: webhooks_meta._wa_message(svc, w, reply, now),
    )
    assert not errors, errors
    with pg.connect() as conn:
        assert outbox.has_status(conn, mid, "bounced") and outbox.has_status(conn, mid, "replied")


def test_sendgrid_bounce_takes_the_identity_lock_before_the_message(pg):
    """A transaction that holds the identity lock and then locks the message (the order a reply or an erasure
    takes them) while a SendGrid hard bounce on that message arrives: both commit."""
    w, mid = _message(pg, "lock-order-sg", "email")
    svc = SimpleNamespace(engine=pg)
    ev = {"event": "bounce", "type": "bounce", "chorus_message_id": mid, "sg_event_id": "sg1",
          "timestamp": int(time.time()), "reason": "550 no such user"}  # fmt: skip
    errors: list = []

    def bounce():
        try:
            webhooks_sendgrid._apply(svc, w, [ev])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with pg.begin() as conn:
        webhooks.lock_identity(conn, w.id)
        t = threading.Thread(target=bounce)
        t.start()
        t.join(1.5)  # under the old order the bounce holds the message row here and waits for the identity lock
        conn.execute(sa.select(messages.c.id).where(messages.c.id == mid).with_for_update()).one()
    t.join(20)
    assert not errors, errors
    with pg.connect() as conn:
        assert outbox.has_status(conn, mid, "bounced")
