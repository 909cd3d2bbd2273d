"""A reply (not STOP/START) from a phone whose owner changes while the webhook runs goes to the new owner
(PostgreSQL, where the webhook and the resolver interleave; on SQLite the webhook's BEGIN IMMEDIATE excludes it).

The Twilio and WhatsApp inbound handlers look up who owns the sender's phone, then mark that profile's last
message on the channel ``replied`` (its timeline event names that profile's strongest identifier). They take the
workspace's identity lock before the lookup, as the STOP path does (tests/identity/test_optout_race.py): a replay
that moves the phone to another profile either commits before the lookup or waits for the reply's commit.
"""

from __future__ import annotations

import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.api import webhooks, webhooks_meta
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.store.tables import events, message_status
from chorus.timeutil import utcnow
from tests.identity.helpers import T0, profile_of, resolve, send
from tests.identity.test_optout_race import _resolver_waits_then_stop

PHONE = "+31612345678"
PROVIDERS = {
    "sms": [{"type": "twilio", "name": "twilio", "account_sid": "AC1", "auth_token_env": "CHORUS_UNSET_TWILIO_TOKEN",
             "from": "+15005550006"}],
    "whatsapp": [{"type": "whatsapp", "name": "whatsapp", "phone_number_id": "1065",
        "access_token_env": "CHORUS_UNSET_T",
                  "app_secret_env": "CHORUS_UNSET_S", "verify_token": "verify-token-1"}],
}  # fmt: skip


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: on SQLite the webhook's transaction holds the one write lock from its start")
    return engine


def _old_owner_with_a_message_and_a_pending_move(engine, channel: str) -> tuple[str, str, str, str]:
    """u1 has PHONE and a message on ``channel``; pending: u2's identify with PHONE, dated before u1's, whose replay
    moves the phone to u2 (a later link of it to u1 would join two user ids)."""
    ws = workspaces.create(engine, "reply-race-" + channel)["id"]
    workspaces.update_settings(engine, ws, {"messaging": {"providers": {channel: PROVIDERS[channel]}}})
    send(engine, ws, [{"type": "identify", "userId": "u2", "messageId": "m1", "timestamp": T0.isoformat()},
                      {"type": "identify", "userId": "u1", "messageId": "m2", "traits": {"phone": PHONE},
                       "timestamp": (T0 + timedelta(hours=2)).isoformat()}])  # fmt: skip
    resolve(engine)
    old, new = profile_of(engine, ws, "user_id:u1"), profile_of(engine, ws, "user_id:u2")
    with engine.connect() as conn:
        workspace = workspaces.get(conn, ws)
    text = {"text": "Your order has shipped"}
    req = outbox.parse_request({"profile_id": old, "channel": channel, "kind": "transactional",
                                "content": {"name": "shipped", "variants": {channel: text}}})  # fmt: skip
    view, _ = outbox.enqueue(engine, workspace, req, "k1", Links("http://127.0.0.1", b"k" * 32))
    assert view["channel"] == channel, view
    send(engine, ws, [{"type": "identify", "userId": "u2", "messageId": "m3", "traits": {"phone": PHONE},
                       "timestamp": (T0 + timedelta(hours=1)).isoformat()}])  # fmt: skip
    return ws, old, new, view["id"]


def _reply(engine, ws: str, channel: str, errors: list) -> None:
    """The provider's inbound webhook handler, as the route calls it after checking the signature."""
    try:
        with engine.connect() as conn:
            workspace = workspaces.get(conn, ws)
        svc = SimpleNamespace(engine=engine)
        if channel == "sms":
            webhooks._inbound(svc, workspace, {"From": PHONE, "Body": "Thanks!", "MessageSid": "SM-reply-1"})
        else:
            m = {"from": PHONE[1:], "id": "wamid.reply1", "timestamp": str(int(time.time())), "type": "text",
                 "text": {"body": "Thanks!"}}  # fmt: skip
            assert webhooks_meta._wa_message(svc, workspace, m, utcnow()) == 1
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_a_reply_whose_phone_moves_while_it_is_handled_goes_to_the_new_owner(pg, channel):
    engine = pg
    ws, old, new, old_message = _old_owner_with_a_message_and_a_pending_move(engine, channel)
    # the webhook queues behind the resolver for the lock (or, taking none, reads the old owner and is done)
    _resolver_waits_then_stop(
        engine, ws, stop_waits=False, webhook_call=lambda engine, ws, errors: _reply(engine, ws, channel, errors)
    )
    assert profile_of(engine, ws, f"phone:{PHONE}") == new  # the replay moved it while the reply waited
    with engine.connect() as conn:
        statuses = set(conn.execute(sa.select(message_status.c.status).where(
            message_status.c.message_id == old_message)).scalars())  # fmt: skip
    assert "replied" not in statuses  # u1's message was not answered by u1: the phone is no longer hers
    resolve(engine)
    with engine.connect() as conn:
        received = conn.execute(sa.select(events.c.profile_id, events.c.event).where(events.c.workspace_id == ws,
                                events.c.event.in_(("Message Received", "Message Replied")))).all()  # fmt: skip
    assert [tuple(r) for r in received] == [(new, "Message Received")]


@pytest.mark.parametrize("channel", ["sms", "whatsapp"])
def test_a_reply_from_the_owner_marks_her_last_message_replied(engine, channel):
    """Without a race (both stores): the owner's last message on the channel gets the reply."""
    ws, old, new, old_message = _old_owner_with_a_message_and_a_pending_move(engine, channel)
    errors: list[Exception] = []
    _reply(engine, ws, channel, errors)  # before the move: u1 owns the phone
    assert not errors, errors
    with engine.connect() as conn:
        statuses = set(conn.execute(sa.select(message_status.c.status).where(
            message_status.c.message_id == old_message)).scalars())  # fmt: skip
    assert "replied" in statuses
