"""The outbox in the caller's transaction (``outbox.enqueue_in``): the message commits with the caller's own state,
vanishes with its rollback, replays by key across transactions and, on PostgreSQL, a key two transactions insert at
once ends as one message without undoing the rest of the waiting transaction."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.collect import ingest
from chorus.collect.messages import normalise
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.identity.resolver import Resolver
from chorus.messaging import links as links_mod
from chorus.messaging import outbox
from chorus.messaging.links import Links
from chorus.store.db import read_only
from chorus.store.tables import instance_secrets, message_status, messages, partials, profile_changes
from chorus.timeutil import iso

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
LINKS = Links("http://chorus.test", b"k" * 32)
# sessions of this database waiting for a lock (the second insert of a key waits for the first transaction)
WAITING = sa.text(
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
)
TEMPLATE = {"variants": {"email": {"subject": "Hi {{ traits.first_name }}", "html": "<p>Hello</p>"}}}


@pytest.fixture
def ws(engine):
    """A workspace with one person (ana@example.com) and one email template."""
    w = workspaces.create(engine, "inline")
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        msg = {"type": "identify", "userId": "u1", "traits": {"email": "ana@example.com", "first_name": "Ana"}}
        ingest.store(conn, src, [normalise(msg, received_at=T0, source_kind="server")], [], T0)
    Resolver(engine).drain()
    outbox.save_template(engine, w["id"], "hi", TEMPLATE)
    with engine.connect() as conn:
        return workspaces.get(conn, w["id"])


def req(email: str = "ana@example.com", **more) -> dict:
    return outbox.parse_request({"to": {"email": email}, "template": "hi", **more})


def by_key(engine, ws, key: str) -> list:
    with read_only(engine) as conn:
        return conn.execute(
            sa.select(messages).where(messages.c.workspace_id == ws.id, messages.c.idempotency_key == key)
        ).all()


def message_changes(engine, ws) -> list:
    with read_only(engine) as conn:
        return conn.execute(
            sa.select(profile_changes.c.detail, profile_changes.c.at)
            .where(profile_changes.c.workspace_id == ws.id, profile_changes.c.cause == "message")
            .order_by(profile_changes.c.seq)
        ).all()


def note_state(conn, ws, name: str) -> None:
    """The caller's own state, written in its transaction next to the message (a journey's transition)."""
    conn.execute(partials.insert().values(workspace_id=ws.id, name=name, source="x", updated_at=T0))


def has_state(engine, ws, name: str) -> bool:
    with read_only(engine) as conn:
        q = sa.select(partials.c.name).where(partials.c.workspace_id == ws.id, partials.c.name == name)
        return conn.execute(q).first() is not None


def test_the_message_commits_with_the_callers_transaction(engine, ws):
    with engine.begin() as conn:
        note_state(conn, ws, "step1")
        ((made, created),) = outbox.enqueue_in(conn, ws, [(req(), "j1:s1")], LINKS, T0, full=True)
        assert created and made["status"] == "queued"
        # not committed by enqueue_in: another connection does not see it yet
        assert by_key(engine, ws, "j1:s1") == []
    (row,) = by_key(engine, ws, "j1:s1")
    assert row.id == made["id"] and has_state(engine, ws, "step1")
    # dated by the caller's time, not a clock
    assert row.created_at == T0 and row.next_attempt_at == T0
    assert [h["at"] for h in made["history"]] == [iso(T0)]


def test_the_message_vanishes_with_the_callers_rollback(engine, ws):
    with engine.connect() as conn:
        with conn.begin() as tx:
            note_state(conn, ws, "step1")
            ((made, created),) = outbox.enqueue_in(conn, ws, [(req(), "j1:s1")], LINKS, T0)
            assert created
            tx.rollback()
    assert by_key(engine, ws, "j1:s1") == [] and not has_state(engine, ws, "step1")
    with read_only(engine) as conn:
        assert conn.execute(sa.select(message_status).where(message_status.c.message_id == made["id"])).all() == []
    assert message_changes(engine, ws) == []
    # the step retried after the rollback makes its message, once
    with engine.begin() as conn:
        ((again, created),) = outbox.enqueue_in(conn, ws, [(req(), "j1:s1")], LINKS, T0)
    assert created and again["id"] != made["id"] and len(by_key(engine, ws, "j1:s1")) == 1


def test_a_replay_in_a_later_transaction_returns_the_same_message(engine, ws):
    with engine.begin() as conn:
        ((first, created),) = outbox.enqueue_in(conn, ws, [(req(), "j1:s1")], LINKS, T0)
    assert created
    with engine.begin() as conn:
        ((again, created),) = outbox.enqueue_in(conn, ws, [(req(), "j1:s1")], LINKS, T0 + timedelta(minutes=5))
    assert not created and again == first
    # the same key with another request is a conflict, and writes nothing
    with engine.begin() as conn:
        ((err, created),) = outbox.enqueue_in(conn, ws, [(req(locale="fr"), "j1:s1")], LINKS, T0)
    assert isinstance(err, Conflict) and err.field == "Idempotency-Key" and not created
    assert len(by_key(engine, ws, "j1:s1")) == 1


def test_a_bad_request_next_to_good_ones(engine, ws):
    items = [
        (req(), "good-1"),
        (req("nobody@example.com"), "bad-1"),
        (req(), "x" * 201),
        (req(topic="news"), "good-2"),
    ]
    with engine.begin() as conn:
        results = outbox.enqueue_in(conn, ws, items, LINKS, T0)
    (g1, c1), (bad, cb), (long_key, cl), (g2, c2) = results
    assert c1 and c2 and not cb and not cl
    assert isinstance(bad, NotFound) and bad.field == "to.email"
    assert isinstance(long_key, ChorusError) and long_key.field == "Idempotency-Key"
    assert [r.id for r in by_key(engine, ws, "good-1")] == [g1["id"]]
    assert [r.id for r in by_key(engine, ws, "good-2")] == [g2["id"]]
    assert by_key(engine, ws, "bad-1") == []


def test_enqueue_many_still_replays_a_key_enqueue_in_committed(engine, ws):
    with engine.begin() as conn:
        ((first, _),) = outbox.enqueue_in(conn, ws, [(req(), "k")], LINKS, T0)
    ((again, created),) = outbox.enqueue_many(engine, ws, [(req(), "k")], LINKS, lambda: T0)
    assert not created and again == first


def test_the_feed_change_of_a_status_carries_the_idempotency_key(engine, ws):
    with engine.begin() as conn:
        ((made, _),) = outbox.enqueue_in(conn, ws, [(req(), "j9:step-3")], LINKS, T0)
    with engine.begin() as conn:
        row = conn.execute(sa.select(messages).where(messages.c.id == made["id"])).one()
        outbox.set_status(conn, dict(row._mapping), "sent", at=T0 + timedelta(seconds=3))
    changes = message_changes(engine, ws)
    assert [(c.detail["status"], c.detail["message_id"], c.detail["idempotency_key"]) for c in changes] == [
        ("queued", made["id"], "j9:step-3"),
        ("sent", made["id"], "j9:step-3"),
    ]
    # each dated by its change (a journey on a virtual clock sees its message's events then)
    assert [c.at for c in changes] == [T0, T0 + timedelta(seconds=3)]


def test_two_transactions_with_one_key_end_with_one_message(engine, ws):
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: two transactions never insert at once")
    first = engine.connect()
    tx = first.begin()
    ((mine, created),) = outbox.enqueue_in(first, ws, [(req(), "j1:s1")], LINKS, T0)
    assert created
    out: dict = {}

    def other() -> None:
        try:
            with engine.begin() as conn:
                note_state(conn, ws, "other-step")  # the waiting transaction's own state, before the message
                out["result"] = outbox.enqueue_in(conn, ws, [(req(), "j1:s1"), (req(), "j2:s1")], LINKS, T0)
        except Exception as exc:  # noqa: BLE001 - reported by the assertions below
            out["error"] = exc

    thread = threading.Thread(target=other)
    thread.start()
    try:
        # the other transaction did not see the uncommitted key: its insert waits on the unique index
        deadline, waiting = time.monotonic() + 10, 0
        # autocommit: within one transaction pg_stat_activity answers the snapshot its first read took
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
            while time.monotonic() < deadline and thread.is_alive():
                waiting = watch.execute(WAITING).scalar_one()
                if waiting:
                    break
                time.sleep(0.02)
        assert waiting, f"the second transaction never waited for the first: {out}"
        tx.commit()
    finally:
        first.close()
        thread.join(30)
    assert "error" not in out, out.get("error")
    (replayed, c1), (fresh, c2) = out["result"]
    assert (replayed, c1) == (mine, False) and c2
    assert [r.id for r in by_key(engine, ws, "j1:s1")] == [mine["id"]]
    assert [r.id for r in by_key(engine, ws, "j2:s1")] == [fresh["id"]]
    # the savepoint rolled back only the failed insert: the state written before it committed
    assert has_state(engine, ws, "other-step")
    # and the message's first state was recorded once, by the transaction that made it
    keys = [c.detail["idempotency_key"] for c in message_changes(engine, ws)]
    assert sorted(keys) == ["j1:s1", "j2:s1"]


# -- the signing key from a connection in a transaction --------------------------------------------------------------
def test_links_for_store_inside_a_write_transaction(engine, monkeypatch):
    monkeypatch.delenv("CHORUS_SECRET_KEY", raising=False)
    monkeypatch.setenv("CHORUS_PUBLIC_URL", "https://chorus.example/")
    with engine.connect() as conn:
        with conn.begin() as tx:
            made = links_mod.for_store(conn)
            tx.rollback()  # the key created with it is gone too
    with engine.connect() as conn:
        assert conn.execute(sa.select(instance_secrets)).all() == []
    # inside a write transaction (on SQLite it holds the only write lock: another connection would wait for ever)
    with engine.begin() as conn:
        links = links_mod.for_store(conn)
        assert links_mod.for_store(conn).key == links.key  # found, not made again
    assert links.public_url == "https://chorus.example"
    assert links_mod.signing_key(engine) == links.key and len(links.key) >= 48
    with engine.begin() as conn:
        assert links_mod.for_store(conn, "http://given") == Links("http://given", links.key)
    assert made.key != links.key
    monkeypatch.setenv("CHORUS_SECRET_KEY", "from-env")
    with engine.begin() as conn:
        assert links_mod.for_store(conn).key == b"from-env"
