"""A message's first state (queued or skipped) is written with its row: no UPDATE after the INSERT. The row, its
history, its feed change, its timeline event and the metrics must be what ``set_statuses`` would have made of
the same change (the row's ``updated_at`` the later of the enqueue's clock and the wall clock)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from chorus import metrics
from chorus.messaging import outbox
from chorus.store.db import read_only
from chorus.store.tables import events, message_status, messages, profile_changes
from chorus.timeutil import utcnow
from tests.messaging import test_outbox_in_transaction as inline

LINKS, T0 = inline.LINKS, inline.T0
ws = inline.ws  # the fixture: a workspace with one person (ana@example.com) and the email template "hi"


def _count(channel: str, status: str) -> float:
    return metrics.message_status.labels(channel=channel, status=status)._value.get()


@pytest.mark.parametrize("clock", ["past", "future"])
def test_first_states_are_what_set_statuses_records(engine, ws, clock):
    now = T0 if clock == "past" else utcnow() + timedelta(days=1)
    items = [
        (outbox.parse_request({"to": {"email": "ana@example.com"}, "template": "hi"}), "k-queued"),
        # no phone: skipped, with the channel choice's reason
        (outbox.parse_request({"to": {"email": "ana@example.com"}, "template": "hi", "channel": "sms"}), "k-skipped"),
    ]
    queued, skipped = _count("email", "queued"), _count("none", "skipped")
    before = utcnow()
    with engine.begin() as conn:
        results = outbox.enqueue_in(conn, ws, items, LINKS, now)
    after = utcnow()
    assert [(r["status"], created) for r, created in results] == [("queued", True), ("skipped", True)]
    assert _count("email", "queued") == queued + 1 and _count("none", "skipped") == skipped + 1
    with read_only(engine) as conn:
        rows = {r.idempotency_key: r for r in conn.execute(sa.select(messages).where(messages.c.workspace_id == ws.id))}
        history = {r.message_id: r for r in conn.execute(sa.select(message_status))}
        changes = conn.execute(sa.select(profile_changes.c.detail, profile_changes.c.at).where(
            profile_changes.c.workspace_id == ws.id, profile_changes.c.cause == "message")).all()  # fmt: skip
        timeline = conn.execute(sa.select(events.c.event, events.c.profile_id, events.c.payload).where(
            events.c.workspace_id == ws.id, events.c.event.like("Message %"))).all()  # fmt: skip
    q, s = rows["k-queued"], rows["k-skipped"]
    # the row's updated_at: the later of the clock and the wall clock, as set_statuses' UPDATE set it
    for row in (q, s):
        assert row.created_at == now
        if clock == "past":
            assert before <= row.updated_at <= after
        else:
            assert row.updated_at == now
    assert (q.status, q.reason, q.next_attempt_at, q.channel) == ("queued", None, now, "email")
    assert (s.status, s.next_attempt_at, s.channel) == ("skipped", None, None)
    assert s.reason
    hq, hs = history[q.id], history[s.id]
    assert (hq.status, hq.at, hq.detail) == ("queued", now, {"channel_reason": q.choice["reason"]})
    assert (hs.status, hs.at, hs.detail) == ("skipped", now, {"reason": s.reason})
    assert sorted((c.detail["status"], c.detail["message_id"], c.at) for c in changes) == sorted(
        [("queued", q.id, now), ("skipped", s.id, now)])  # fmt: skip
    assert sorted((e.event, e.profile_id, e.payload["properties"]["message_id"]) for e in timeline) == sorted(
        [("Message Queued", q.profile_id, q.id), ("Message Skipped", s.profile_id, s.id)])  # fmt: skip


def test_a_replayed_key_writes_nothing_more(engine, ws):
    item = (outbox.parse_request({"to": {"email": "ana@example.com"}, "template": "hi"}), "k1")
    with engine.begin() as conn:
        ((first, created),) = outbox.enqueue_in(conn, ws, [item], LINKS, T0)
    with engine.begin() as conn:
        ((again, created_again),) = outbox.enqueue_in(conn, ws, [item], LINKS, T0 + timedelta(hours=1))
    assert created and not created_again and again["id"] == first["id"]
    with read_only(engine) as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(message_status)).scalar() == 1
