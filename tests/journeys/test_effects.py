"""The webhook and audience steps on the store, on both engines: a webhook is queued by the transition and delivered
by the worker to a real HTTP server on loopback (signed, once per key, retried on a 5xx, refused at a private
address unless allowed); an audience step adds and removes the person through the audience's own sync."""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus import workspaces
from chorus.journeys import runtime, store, webhooks
from chorus.messaging.audiences import store as audiences_store
from chorus.messaging.audiences.settings import validate_audience
from chorus.messaging.providers.http import Client
from chorus.profiles import privacy
from chorus.segments import rules
from chorus.segments import store as segments_store
from chorus.store.tables import (
    audience_changes,
    audiences,
    feed_pending,
    journey_records,
    journey_webhooks,
    profile_changes,
)
from tests.identity.helpers import profile_of
from tests.journeys.conftest import T0
from tests.journeys.test_runtime import publish, send, settle

SECRET_ENV = "CHORUS_TEST_JOURNEY_WEBHOOK_SECRET"
SECRET = "s3cret-for-tests"


class Receiver:
    """A webhook receiver on a loopback port: records every request, answers the queued statuses (then 200)."""

    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"method": self.command, "path": self.path, "body": body,
                                          "headers": {k.lower(): v for k, v in self.headers.items()}})  # fmt: skip
                status = receiver.answers.pop(0) if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def signed(engine, ws, monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    workspaces.update_settings(engine, ws, {"journeys": {"webhooks": {"secret_env": SECRET_ENV}}})
    return ws


@pytest.fixture
def loopback_ok(monkeypatch):
    monkeypatch.setenv(webhooks.ALLOW_ENV, "1")  # the receiver listens on 127.0.0.1


def hook_journey(url, **step):
    return {"id": "hook", "entry": {"event": {"event": "Signed Up"}}, "start": "call",
            "nodes": {"call": {"type": "webhook", "url": url, "data": {"plan": "pro"}, "next": "done", **step},
                      "done": {"type": "exit"}}}  # fmt: skip


def signup(engine, ws, at, user="u1"):
    send(engine, ws, [
        {"type": "identify", "userId": user, "messageId": uuid.uuid4().hex, "timestamp": at.isoformat(),
         "traits": {"email": f"{user}@example.com"}},
        {"type": "track", "userId": user, "event": "Signed Up", "messageId": uuid.uuid4().hex,
         "timestamp": at.isoformat(), "properties": {"source": "ad"}, "context": {"channel": "web"}},
    ], at)  # fmt: skip


def rows(engine, ws):
    with engine.connect() as conn:
        return conn.execute(sa.select(journey_webhooks).where(journey_webhooks.c.workspace_id == ws)
                            .order_by(journey_webhooks.c.created_at, journey_webhooks.c.key)).all()  # fmt: skip


def valid_signature(req) -> bool:
    parts = dict(p.split("=", 1) for p in req["headers"]["chorus-signature"].split(","))
    mac = hmac.new(SECRET.encode(), f"{parts['t']}.".encode() + req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"])


# -- webhooks ----------------------------------------------------------------------------------------------------------
def test_a_webhook_step_is_delivered_once_signed_with_its_key(engine, signed, clock, worker, receiver, loopback_ok):
    ws = signed
    publish(engine, ws, hook_journey(receiver.url, method="PUT"))
    signup(engine, ws, T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    (req,) = receiver.requests
    (row,) = rows(engine, ws)
    assert req["method"] == "PUT" and req["path"] == "/hook"
    assert valid_signature(req)
    assert req["headers"]["idempotency-key"] == row.key and row.key.startswith(row.instance_id + ":")
    body = orjson.loads(req["body"])
    assert body["profile_id"] == pid and body["journey_id"] == "hook" and body["node"] == "call"
    assert body["data"] == {"plan": "pro"} and body["event"]["source"] == "ad"
    assert (row.status, row.attempts, row.answer, row.error) == ("delivered", 1, 200, None)

    # the consumer's claim committed; as after a crash between the work and the delete, hand the changes again
    with engine.begin() as conn:
        changes = conn.execute(sa.select(profile_changes).where(profile_changes.c.workspace_id == ws)).all()
        conn.execute(feed_pending.insert(), [{"seq": c.seq, "consumer": runtime.CONSUMER, "workspace_id": ws,
                                              "profile_id": c.profile_id, "attempts": 0} for c in changes])  # fmt: skip
    settle(worker)
    assert len(receiver.requests) == 1 and len(rows(engine, ws)) == 1


def test_a_transition_rolled_back_queues_nothing_and_its_retry_queues_once(
    engine, signed, clock, worker, receiver, loopback_ok, monkeypatch
):
    ws = signed
    publish(engine, ws, hook_journey(receiver.url))
    boom = {"on": True}
    real = store.add_records

    def failing(conn, ws_id, recs):
        real(conn, ws_id, recs)
        if boom["on"]:
            raise RuntimeError("crash after the webhook was queued")

    monkeypatch.setattr(store, "add_records", failing)
    signup(engine, ws, T0)
    settle(worker)
    assert rows(engine, ws) == [] and receiver.requests == []  # rolled back with the transition: never called
    boom["on"] = False
    settle(worker)  # the feed gives the change again
    assert len(rows(engine, ws)) == 1 and len(receiver.requests) == 1


def test_a_5xx_is_tried_again_with_backoff_then_delivered(engine, signed, clock, worker, receiver, loopback_ok):
    ws = signed
    receiver.answers = [500, 503]
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    settle(worker)
    (row,) = rows(engine, ws)
    assert (row.status, row.attempts, row.answer) == ("pending", 1, 500) and "500" in row.error
    assert row.due_at == T0 + webhooks.backoff(1)
    settle(worker)
    assert len(receiver.requests) == 1  # not due yet
    clock.at = T0 + webhooks.backoff(1)
    settle(worker)
    (row,) = rows(engine, ws)
    assert (row.status, row.attempts, row.answer) == ("pending", 2, 503)
    assert row.due_at == clock.at + webhooks.backoff(2)
    clock.at += webhooks.backoff(2)
    settle(worker)
    (row,) = rows(engine, ws)
    assert (row.status, row.attempts, row.answer, row.error) == ("delivered", 3, 200, None)
    assert len(receiver.requests) == 3
    assert len({r["headers"]["idempotency-key"] for r in receiver.requests}) == 1  # the receiver can drop repeats
    assert all(valid_signature(r) for r in receiver.requests)


def test_attempts_are_bounded_and_a_4xx_fails_at_once(engine, signed, clock, worker, receiver, loopback_ok):
    ws = signed
    receiver.answers = [500] * webhooks.MAX_ATTEMPTS
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    for _ in range(webhooks.MAX_ATTEMPTS + 2):
        settle(worker, 1)
        clock.at += webhooks.BACKOFF[1]
    (row,) = rows(engine, ws)
    assert (row.status, row.attempts) == ("failed", webhooks.MAX_ATTEMPTS)
    assert row.error.startswith(f"gave up after {webhooks.MAX_ATTEMPTS} attempts: webhook answered 500")
    assert len(receiver.requests) == webhooks.MAX_ATTEMPTS

    receiver.answers = [404]
    signup(engine, ws, clock.at, user="u2")
    settle(worker)
    (row,) = [r for r in rows(engine, ws) if r.profile_id == profile_of(engine, ws, "user_id:u2")]
    assert (row.status, row.attempts, row.answer) == ("failed", 1, 404)


def test_a_private_address_is_refused_unless_allowed(engine, signed, clock, worker, receiver, monkeypatch):
    ws = signed
    monkeypatch.delenv(webhooks.ALLOW_ENV, raising=False)
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    settle(worker)
    (row,) = rows(engine, ws)
    assert row.status == "failed" and "127.0.0.1, a private address" in row.error
    assert receiver.requests == []
    # the workspace setting allows them for this workspace (a brand calling its own network on purpose)
    allow = {"secret_env": SECRET_ENV, "allow_private": True}
    workspaces.update_settings(engine, ws, {"journeys": {"webhooks": allow}})
    signup(engine, ws, T0, user="u2")
    settle(worker)
    u2 = profile_of(engine, ws, "user_id:u2")
    assert [r.status for r in rows(engine, ws) if r.profile_id == u2] == ["delivered"] and len(receiver.requests) == 1


def test_without_a_secret_nothing_is_sent_unsigned(engine, ws, clock, worker, receiver, loopback_ok):
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    settle(worker)
    (row,) = rows(engine, ws)
    assert row.status == "failed" and "secret_env is required" in row.error and receiver.requests == []


def test_webhooks_are_claimed_by_one_worker_at_a_time_on_postgresql(
    engine, db_url, signed, clock, worker, receiver, loopback_ok
):
    if not db_url.startswith("postgresql"):
        pytest.skip("SKIP LOCKED: PostgreSQL's concurrency")
    ws = signed
    publish(engine, ws, hook_journey(receiver.url))
    with webhooks_paused(worker):
        for i in range(30):
            signup(engine, ws, T0, user=f"u{i}")
        settle(worker)
    assert len(rows(engine, ws)) == 30 and receiver.requests == []
    barrier = threading.Barrier(3)

    def deliver():
        client = Client(timeout=5)
        barrier.wait()
        for _ in range(6):
            webhooks.deliver(engine, client, limit=4)
        client.close()

    threads = [threading.Thread(target=deliver) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [r["headers"]["idempotency-key"] for r in receiver.requests]
    assert len(keys) == 30 and len(set(keys)) == 30  # each sent once, by one of the workers
    assert {r.status for r in rows(engine, ws)} == {"delivered"}


class webhooks_paused:
    """The worker without its webhook task: the rows are queued, and the test delivers them."""

    def __init__(self, worker):
        self.worker = worker

    def __enter__(self):
        self.tasks = self.worker.tasks
        self.worker.tasks = [t for t in self.tasks if t[0] != "journey_webhooks"]

    def __exit__(self, *exc):
        self.worker.tasks = self.tasks


@pytest.mark.parametrize("host", ["10.1.2.3", "192.168.0.1", "169.254.169.254", "100.64.0.1", "[::1]", "0.0.0.0",
                                  "[::ffff:127.0.0.1]", "[fd00::1]", "localhost"])  # fmt: skip
def test_private_and_loopback_addresses_are_refused(host):
    assert "a private address" in webhooks.refused_address(f"https://{host}/x", allow_private=False)
    assert webhooks.refused_address(f"https://{host}/x", allow_private=True) is None


def test_a_public_address_is_called():
    assert webhooks.refused_address("https://93.184.216.34:8443/x", allow_private=False) is None


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "https://", "http://h:99999/", 7])
def test_urls_that_are_not_http_are_refused(url):
    assert webhooks.check_url(url) is not None


@given(st.integers(min_value=1, max_value=200))
def test_backoff_grows_and_is_bounded(n):
    assert webhooks.BACKOFF[0] <= webhooks.backoff(n) <= webhooks.BACKOFF[1]
    assert webhooks.backoff(n) <= webhooks.backoff(n + 1)


@pytest.mark.parametrize("bad, field", [
    ({"webhooks": {"allow_private": "yes"}}, "allow_private"), ({"webhooks": {"secret_env": "a b"}}, "secret_env"),
    ({"webhooks": {"url": "x"}}, "url"), ({"hooks": {}}, "journeys"), ({"webhooks": []}, "webhooks"),
])  # fmt: skip
def test_the_journeys_setting_names_what_is_wrong(engine, bad, field):
    w = workspaces.create(engine, "hooks-" + uuid.uuid4().hex[:6])["id"]
    with pytest.raises(Exception, match=field):
        workspaces.update_settings(engine, w, {"journeys": bad})


def test_erasure_takes_her_webhook_requests(engine, signed, clock, worker, receiver, loopback_ok):
    ws = signed
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    signup(engine, ws, T0, user="u2")
    settle(worker)
    out = privacy.forget(engine, ws, profile_of(engine, ws, "user_id:u1"))
    assert out["deleted"]["journey_webhooks"] == 1
    assert [r.profile_id for r in rows(engine, ws)] == [profile_of(engine, ws, "user_id:u2")]


# -- audiences ---------------------------------------------------------------------------------------------------------
def audience_journey(audience="vip"):
    return {"id": "vip", "entry": {"event": {"event": "Signed Up"}}, "start": "add", "nodes": {
        "add": {"type": "audience", "audience": audience, "action": "add", "next": "wait"},
        "wait": {"type": "delay", "for": "1h", "next": "remove"},
        "remove": {"type": "audience", "audience": audience, "action": "remove", "next": "done"},
        "done": {"type": "exit"}}}  # fmt: skip


def make_audience(engine, ws, name="vip", **body):
    # a file audience: the membership is recorded by its sync, uploaded nowhere (as the audience tests use it)
    audiences_store.create(engine, ws, validate_audience({"name": name, "provider": "file", "identifiers": ["email"],
                                                         **body}, {}), T0)  # fmt: skip


def members(engine, ws, name="vip"):
    with engine.connect() as conn:
        return set(audiences_store.member_profiles(conn, audiences_store.get(conn, ws, name).id))


def test_an_audience_step_adds_then_a_later_step_removes_her(engine, ws, clock, worker):
    make_audience(engine, ws)
    publish(engine, ws, audience_journey())
    signup(engine, ws, T0)
    settle(worker)
    clock.at = T0 + timedelta(minutes=30)
    signup(engine, ws, clock.at, user="u2")
    settle(worker)
    u1, u2 = profile_of(engine, ws, "user_id:u1"), profile_of(engine, ws, "user_id:u2")
    assert members(engine, ws) == {u1, u2}
    clock.at = T0 + timedelta(hours=1, seconds=1)
    settle(worker)
    assert members(engine, ws) == {u2}  # her hour is up, not u2's
    clock.at = T0 + timedelta(hours=2)
    settle(worker)
    assert members(engine, ws) == set()
    with engine.connect() as conn:
        changes = conn.execute(sa.select(audience_changes.c.action, audience_changes.c.applied).where(
            audience_changes.c.workspace_id == ws)).all()  # fmt: skip
    assert sorted(changes) == [("add", True), ("add", True), ("remove", True), ("remove", True)]


def test_an_audience_change_is_queued_once_per_key(engine, ws, clock, worker):
    make_audience(engine, ws)
    signup(engine, ws, T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    with engine.begin() as conn:
        assert audiences_store.queue_change(conn, ws, "vip", pid, "add", "i1:1", T0) is True
        assert audiences_store.queue_change(conn, ws, "vip", pid, "add", "i1:1", T0) is False
        assert audiences_store.queue_change(conn, ws, "vip", pid, "remove", "i1:2", T0) is True
    settle(worker)
    assert members(engine, ws) == set()  # added then removed before the pass: the last change wins
    with engine.begin() as conn:  # a key applied stays taken: the add given again does nothing
        assert audiences_store.queue_change(conn, ws, "vip", pid, "add", "i1:1", T0) is False
    settle(worker)
    assert members(engine, ws) == set()


def test_publish_refuses_an_audience_step_on_an_audience_that_follows_a_segment(engine, ws, clock):
    with engine.begin() as conn:
        segments_store.save(conn, ws, "pros", "Pros", rules.parse({"trait": {"name": "plan", "equals": "pro"}}), T0)
    make_audience(engine, ws, name="followers", source={"segment": "pros"})
    with pytest.raises(Exception, match="follows a segment") as e:
        publish(engine, ws, audience_journey("followers"))
    assert e.value.field == "nodes.add.audience"
    with pytest.raises(Exception, match="does not exist"):
        publish(engine, ws, audience_journey("nope"))


def test_an_audience_deleted_since_publishing_is_an_error_on_the_journey_and_she_goes_on(engine, ws, clock, worker):
    make_audience(engine, ws)
    publish(engine, ws, audience_journey())
    with engine.begin() as conn:
        conn.execute(audiences.delete().where(audiences.c.workspace_id == ws, audiences.c.name == "vip"))
    signup(engine, ws, T0)
    settle(worker)
    with engine.connect() as conn:
        recs = conn.execute(sa.select(journey_records.c.kind, journey_records.c.node, journey_records.c.detail).where(
            journey_records.c.workspace_id == ws).order_by(journey_records.c.id)).all()  # fmt: skip
        assert conn.execute(sa.select(sa.func.count()).select_from(audience_changes)
                            .where(audience_changes.c.workspace_id == ws)).scalar() == 0  # fmt: skip
    # (recorded at the node she is at after the step: AudienceChange, like ListChange, does not carry its node)
    assert [(k, d) for k, _node, d in recs if k == "error"] == [("error", "audience 'vip' not found")]
    assert recs[-1][:2] == ("waiting", "wait")  # on to the delay: one bad step does not stall the journey


def test_erasure_takes_her_audience_changes(engine, ws, clock, worker):
    make_audience(engine, ws)
    publish(engine, ws, audience_journey())
    signup(engine, ws, T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    out = privacy.forget(engine, ws, pid)
    assert out["deleted"]["audience_changes"] == 1 and out["deleted"]["audience_members"] == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audience_changes).where(
            audience_changes.c.workspace_id == ws)).scalar() == 0  # fmt: skip
