"""PostgreSQL: a Messenger read receipt (api/webhooks_meta.py _ms_read) locked the conversation's messages in
sent_at DESC order (``ORDER BY sent_at DESC LIMIT 200 FOR UPDATE``), not in id order (found in review; it now picks
them without a lock and locks them in id order), the order every other
writer of several messages keeps (outbox.set_statuses, _withdraw, an erasure's HOLD: messaging/erasure.py hold).
An erasure of the same person holding her lower-id message and wanting the higher one, while the read receipt
holds the higher (later-sent) one and wants the lower, is a cycle.

Both lock in one statement each, so a third transaction holding both rows lines them up: each waiter queues on
its first row (holding that row's tuple lock), and both go on at once when it commits."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.api import webhooks_meta
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.profiles import privacy
from chorus.store.tables import messages
from chorus.timeutil import utcnow
from tests.identity.helpers import T0, profile_of, resolve, send


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only")
    return engine


def _waiting(engine, n: int) -> None:
    """Until ``n`` sessions of this database wait for a lock."""
    q = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with engine.connect() as c:
            if c.execute(q).scalar_one() >= n:
                return
        time.sleep(0.05)
    raise AssertionError(f"{n} waiters never appeared")


def test_a_messenger_read_receipt_and_an_erasure_of_her_both_commit(pg):
    ws = workspaces.create(pg, "ms-read")["id"]
    send(pg, ws, [{"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": T0.isoformat(),
                   "traits": {"phone": "+31612345678"}}])  # fmt: skip
    resolve(pg)
    pid = profile_of(pg, ws, "user_id:u1")
    with pg.connect() as conn:
        w = workspaces.get(conn, ws)
    ids = []
    for key in ("k1", "k2"):
        req = outbox.parse_request({"profile_id": pid, "channel": "sms", "kind": "transactional",
                                    "content": {"name": "x", "variants": {"sms": {"text": "hi"}}}})  # fmt: skip
        view, _ = outbox.enqueue(pg, w, req, key, Links("http://127.0.0.1", b"k" * 32))
        ids.append(view["id"])
    lo, hi = sorted(ids)
    now = utcnow()
    with pg.begin() as conn:  # the higher id was sent later: the read receipt takes it first
        for mid, ago in ((lo, 20), (hi, 10)):
            conn.execute(messages.update().where(messages.c.id == mid).values(
                channel="messenger", address="psid1", status="sent", sent_at=now - timedelta(minutes=ago)))

    errors: list = []

    def run(name, fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001
            errors.append((name, exc))

    def erase():
        with pg.begin() as conn:
            privacy.erase(conn, ws, pid)

    read = threading.Thread(target=run, args=("read", lambda: webhooks_meta._ms_read(
        SimpleNamespace(engine=pg), w, "psid1", now)))
    era = threading.Thread(target=run, args=("erasure", erase))
    def lock(conn, mid):
        conn.execute(sa.select(messages.c.id).where(messages.c.id == mid).with_for_update()).all()

    # two other writers hold one row each (a delivery report, a click...): each waiter queues on its first row
    with pg.connect() as b_lo, pg.connect() as b_hi:
        t_lo, t_hi = b_lo.begin(), b_hi.begin()
        lock(b_lo, lo)
        lock(b_hi, hi)
        era.start()
        _waiting(pg, 1)  # the erasure waits on lo, its first row in id order
        read.start()
        _waiting(pg, 2)  # the read receipt waits on hi, its first row in sent_at DESC order
        t_lo.commit()  # the erasure takes lo, then queues on hi behind the read receipt
        time.sleep(0.5)
        t_hi.commit()  # the read receipt takes hi, then waits on lo: a cycle
    for t in (era, read):
        t.join(30)
        assert not t.is_alive()
    assert not errors, [(n, str(getattr(e, "orig", e))) for n, e in errors]
