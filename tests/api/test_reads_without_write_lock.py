"""Routes that only read answer while another transaction holds the store's write lock.

On SQLite every write transaction takes the one write lock at BEGIN (BEGIN IMMEDIATE, see chorus.store.db), so a
read that opened an ordinary transaction queued behind a long worker write for up to busy_timeout (30 s). Read
routes use ``read_only`` (a deferred BEGIN: a WAL snapshot, no lock). On PostgreSQL reads never waited for writers;
the test runs there too, to hold the routes to the same contract.
"""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from chorus.api import admin, analytics, audiences, inbox, messages, public, push, segments, tracking, webhooks_meta
from chorus.workspaces import verification
from tests.conftest import LiveServer
from tests.identity.helpers import resolve

ROUTERS = [admin.router, messages.router, audiences.router, segments.router, analytics.router, inbox.router,
           inbox.admin_router, push.router, public.router, tracking.router, webhooks_meta.router]  # fmt: skip
# GET routes that write, on purpose: a click or an open is recorded; the identity secret is generated on first use
# (its read is chorus.workspaces.verification's); a stream never ends
WRITES_OR_STREAMS = {"/c/{token}", "/o/{token}.gif", "/api/workspace/identity-secret", "/v1/inbox/stream"}
TEMPLATE = {"kind": "transactional", "variants": {"email": {"subject": "Hi", "html": "<p>Hello</p>"}}}
HELD = 10.0  # seconds a read may take while the lock is held (a loaded machine took over 3); a wait would be 30 s


def _get_routes() -> list[str]:
    return sorted({r.path for router in ROUTERS for r in router.routes if "GET" in r.methods} - WRITES_OR_STREAMS)


@pytest.fixture
def seeded(db_url, engine, workspace):
    """A profile, a template, a message and an audience to read, on a server without a worker."""
    with LiveServer(db_url, engine, run_worker=False) as srv, httpx.Client(base_url=srv.base_url, timeout=30) as http:
        h = {"Authorization": f"Bearer {workspace['api_key']}"}
        r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                      json={"userId": "u1", "traits": {"email": "ana@example.com"}})  # fmt: skip
        assert r.status_code == 200, r.text
        resolve(engine)
        pid = http.get("/api/profiles", params={"user_id": "u1"}, headers=h).json()["id"]
        assert http.put("/api/templates/welcome", json=TEMPLATE, headers=h).status_code == 200
        r = http.post("/api/messages", json={"profile_id": pid, "template": "welcome"}, headers=h)
        assert r.status_code == 201, r.text
        mid = r.json()["id"]
        audience = {"name": "welcome", "provider": "file", "identifiers": ["email"]}
        r = http.post("/api/audiences", headers=h, json=audience)
        assert r.status_code == 201, r.text
        values = {
            "profile_id": pid, "message_id": mid, "name": "welcome", "segment_id": "welcome", "import_id": "imp_none",
            "token": srv.app.state.services.links.token("u", mid), "write_key": workspace["write_key"],
            "workspace_id": workspace["id"],
        }  # fmt: skip
        query = {
            "/api/profiles": {"user_id": "u1"},
            "/api/profiles/search": {"prefix": "a", "identifier": "email"},
            "/v1/inbox": {"writeKey": workspace["write_key"], "anonymousId": "a1"},
            "/v1/push/vapid-key": {"writeKey": workspace["write_key"]},
        }
        yield http, h, values, query


def test_every_read_route_answers_while_a_writer_holds_the_lock(engine, seeded):
    http, h, values, query = seeded
    routes = _get_routes()
    assert "/api/profiles/{profile_id}" in routes and "/u/{token}/preferences" in routes  # the list is not empty
    holder = engine.connect()
    holder.begin()  # on SQLite: BEGIN IMMEDIATE, the write lock, as a worker's long pass holds it
    try:
        for path in routes:
            url = re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
            try:
                r = http.get(url, params=query.get(path), headers=h, timeout=HELD)
            except httpx.TimeoutException:
                pytest.fail(f"GET {path} waited for the write lock")
            assert r.status_code < 500, (path, r.status_code, r.text)
        # and what they read is the store's committed state: the profile, the message
        assert (
            http.get(f"/api/profiles/{values['profile_id']}", headers=h, timeout=HELD).json()["id"]
            == (values["profile_id"])
        )
        assert http.get(f"/api/messages/{values['message_id']}", headers=h, timeout=HELD).status_code == 200
    finally:
        holder.rollback()
        holder.close()


def test_a_write_route_still_waits_for_the_lock(engine, seeded, db_url):
    """The other side: a write still takes the lock at BEGIN on SQLite (lost-update protection), so it waits."""
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL writes to other rows never wait for this transaction")
    http, h, _values, _query = seeded
    holder = engine.connect()
    holder.begin()
    try:
        with pytest.raises(httpx.TimeoutException):
            http.put("/api/templates/other", json=TEMPLATE, headers=h, timeout=1.0)
    finally:
        holder.rollback()
        holder.close()


def test_a_verified_inbox_read_answers_while_a_writer_holds_the_lock(engine, seeded, workspace):
    """``userId`` + ``userHash``: the identity secret is read without the write lock (it exists already)."""
    http, _h, _values, _query = seeded
    s = verification.secret(engine, workspace["id"])  # generated before the lock is taken
    params = {"writeKey": workspace["write_key"], "userId": "u1", "userHash": verification.user_hash(s, "u1")}
    holder = engine.connect()
    holder.begin()
    try:
        try:
            r = http.get("/v1/inbox", params=params, timeout=HELD)
            wrong = http.get("/v1/inbox", params={**params, "userHash": "0" * 64}, timeout=HELD)
        except httpx.TimeoutException:
            pytest.fail("GET /v1/inbox (userId + userHash) waited for the write lock")
        assert r.status_code == 200, r.text
        assert wrong.status_code == 403, wrong.text
    finally:
        holder.rollback()
        holder.close()


def test_metrics_and_the_event_loop_answer_while_a_writer_holds_the_lock(engine, seeded, workspace):
    """A tracking call re-reads the ingestion backlog when its figure is stale: that read neither waits for the write
    lock nor runs on the event loop, so /healthz answers while the call waits to store; /metrics re-reads it too."""
    http, _h, _values, _query = seeded
    time.sleep(1.2)  # the backlog figure is re-read at most once a second: let it go stale
    holder = engine.connect()
    holder.begin()
    auth, event = (workspace["server_write_key"], ""), {"userId": "u9", "event": "X"}
    track = threading.Thread(target=lambda: http.post("/v1/track", auth=auth, json=event, timeout=60))
    try:
        track.start()
        time.sleep(0.3)
        try:
            health = http.get("/healthz", timeout=HELD)
            time.sleep(1.1)  # stale again, for /metrics to read it
            text = http.get("/metrics", timeout=HELD).text
        except httpx.TimeoutException:
            pytest.fail("the event loop or /metrics waited for the write lock (the ingestion backlog's read)")
        assert health.status_code == 200
        assert re.search(r"^chorus_ingest_backlog \d", text, re.M), text[:500]
    finally:
        holder.rollback()
        holder.close()
        track.join(60)
    assert not track.is_alive()
