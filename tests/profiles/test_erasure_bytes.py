"""An erased person leaves no bytes in the database files.

Everything is done through the public HTTP API (tracking, push subscription, messages, inbox, erasure) of a
real server on a loopback port; then the raw files are read: on SQLite the main file, ``-wal`` and ``-shm``; on
PostgreSQL every file of the tables, their TOAST tables and indexes (after a CHECKPOINT, so that what is in
shared buffers is on disk). Identifiers are random strings, so a hit is unambiguous. A second person stays: the
same scan must still find them, so the scan works after the erasure and nothing of theirs was lost.
"""

from __future__ import annotations

import glob
import hashlib
import hmac
import os
import secrets
import signal
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.profiles import computed, privacy
from chorus.timeutil import utcnow
from tests.conftest import LiveServer, ServeProcess, wait_until

TEMPLATE = {
    "kind": "marketing",
    "topic": "offers",
    "variants": {
        "email": {"subject": "Hello {{ traits.name }}", "html": "<p>{{ traits.word }}</p>"},
        "in_app": {"title": "Hi {{ traits.name }}", "body": "Inbox {{ traits.word }}"},
    },
}


def _person() -> dict:
    tag = secrets.token_hex(6)
    return {
        "user_id": f"uid{tag}", "anonymous_id": f"anon{tag}", "email": f"mail{tag}@example.org",
        "phone": "+3161" + "".join(secrets.choice("0123456789") for _ in range(7)), "name": f"Name{tag}",
        "word": f"Word{tag}",  # rendered into the messages' content
        # long and incompressible: stored out of line (SQLite overflow pages, PostgreSQL TOAST)
        "bio": f"Bio{tag}" + secrets.token_hex(3000), "endpoint": f"https://push.example/sub{tag}",
        "computed": f"Computed{tag}",
    }  # fmt: skip


def needles(p: dict) -> dict[str, bytes]:
    out = {k: p[k].encode() for k in ("user_id", "anonymous_id", "email", "phone", "name", "word", "endpoint",
                                      "computed")}  # fmt: skip
    out["bio"] = p["bio"][:40].encode()
    out.update({f"profile:{pid}": pid.encode() for pid in p.get("profile_ids", ())})
    return out


def _populate(http: httpx.Client, keys: dict, p: dict) -> None:
    admin = {"Authorization": f"Bearer {keys['api_key']}"}
    wk = (keys["write_key"], "")
    r = http.post("/v1/batch", auth=wk, json={"batch": [
        {"type": "page", "anonymousId": p["anonymous_id"], "name": "Home", "context": {"page": {"path": "/"}}},
        {"type": "track", "userId": p["user_id"], "messageId": f"bad-{p['user_id']}"},  # rejected: no event name
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    r = http.post("/v1/batch", auth=(keys["server_write_key"], ""), json={"batch": [
        {"type": "identify", "userId": p["user_id"], "anonymousId": p["anonymous_id"],
         "traits": {"email": p["email"], "phone": p["phone"], "name": p["name"], "word": p["word"], "bio": p["bio"]}},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    sub = {"endpoint": p["endpoint"], "keys": {"p256dh": "BPk" + secrets.token_hex(8), "auth": secrets.token_hex(8)}}
    r = http.post("/v1/push/subscriptions", auth=wk, json={"anonymousId": p["anonymous_id"], "subscription": sub})
    assert r.status_code == 201, r.text
    wait_until(lambda: http.get("/api/profiles", params={"email": p["email"]}, headers=admin).status_code == 200)
    anon = http.get("/api/profiles", params={"anonymous_id": p["anonymous_id"]}, headers=admin).json()
    p["profile"], p["profile_ids"] = anon["id"], sorted({anon["id"], *anon["aliases"]})
    assert http.put("/api/templates/hello", json=TEMPLATE, headers=admin).status_code == 200
    sent = []
    for channel in ("email", "in_app"):  # email: no provider is configured; in_app: the inbox
        r = http.post("/api/messages", headers={**admin, "Idempotency-Key": f"{channel}-{p['user_id']}"},
                      json={"to": {"user_id": p["user_id"]}, "template": "hello", "channel": channel})  # fmt: skip
        assert r.status_code == 201, r.text
        sent.append(r.json()["id"])
    for mid in sent:  # delivered (in_app) or given up (email): the delivery attempt is recorded too
        wait_until(lambda m=mid: http.get(f"/api/messages/{m}", headers=admin).json()["status"] not in
                   ("queued", "sending", "retrying"))  # fmt: skip
    secret = http.get("/api/workspace/identity-secret", headers=admin).json()["identity_secret"]
    mac = hmac.new(secret.encode(), p["user_id"].encode(), hashlib.sha256).hexdigest()  # what the shop's server does
    inbox = http.get("/v1/inbox", params={"userId": p["user_id"], "userHash": mac}, auth=wk).json()["messages"]
    assert inbox and p["word"] in inbox[0]["body"]


def _computed(engine, ws_id: str, people: list[dict]) -> None:
    """Computed traits are written by analytics runs (one per model, replacing the last), not through HTTP."""
    with engine.begin() as conn:
        computed.replace(conn, ws_id, "test:notes", {p["profile"]: {"note": p["computed"]} for p in people}, utcnow())


# -- reading the files ------------------------------------------------------------------------------------------
def sqlite_files(url: str) -> list[Path]:
    path = Path(sa.make_url(url).database)
    return [Path(str(path) + suffix) for suffix in ("", "-wal", "-shm")]


def pg_files(engine) -> list[Path]:
    """Every file of every table, TOAST table and index of the test database."""
    with engine.connect() as conn:
        datadir = conn.execute(sa.text("SHOW data_directory")).scalar_one()
        rels = conn.execute(sa.text(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'pg_toast') AND c.relkind IN ('r', 'i', 't')"
        )).scalars().all()  # fmt: skip
    files = []
    for rel in rels:
        base = os.path.join(datadir, rel)
        files += [Path(f) for pattern in (base, base + ".*", base + "_*") for f in glob.glob(pattern)]
    return files


def checkpoint(engine) -> None:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("CHECKPOINT")


def scan(files: list[Path], wanted: dict[str, bytes]) -> dict[str, list[str]]:
    """needle name -> the files holding it."""
    hits: dict[str, list[str]] = {}
    for f in files:
        if not f.exists():
            continue
        data = f.read_bytes()
        for name, needle in wanted.items():
            if needle in data:
                hits.setdefault(name, []).append(f.name)
    return hits


def _files(db_url: str, engine) -> list[Path]:
    if db_url.startswith("sqlite"):
        return sqlite_files(db_url)
    checkpoint(engine)
    return pg_files(engine)


# -- the tests --------------------------------------------------------------------------------------------------
def test_erased_person_leaves_no_bytes_in_the_database_files(db_url, engine):
    if db_url.startswith("postgresql") and not os.access("/var/lib/postgresql", os.R_OK):
        pytest.skip("the PostgreSQL data files are not readable by this user")
    ws = workspaces.create(engine, f"shop-{secrets.token_hex(3)}")
    gone, kept = _person(), _person()
    with LiveServer(db_url, engine) as server, httpx.Client(base_url=server.base_url, timeout=60) as http:
        for p in (gone, kept):
            _populate(http, ws, p)
        _computed(engine, ws["id"], [gone, kept])
        server.settle()
        if db_url.startswith("sqlite"):  # as auto-checkpoints do in a running server: the person is in the main file
            raw = engine.raw_connection()  # outside a transaction
            assert raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            raw.close()
            assert set(scan(sqlite_files(db_url)[:1], needles(gone))) == set(needles(gone))
        before = scan(_files(db_url, engine), needles(gone))
        assert set(before) == set(needles(gone)), "the scan must find every needle before the erasure"

        admin = {"Authorization": f"Bearer {ws['api_key']}"}
        r = http.delete(f"/api/profiles/{gone['profile_ids'][-1]}", headers=admin)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["scrubbed"]["pending"] == {}
        # every count of the erasure names a table that is scrubbed (a new one must be added to TABLE_OF_COUNT)
        assert set(body["deleted"]) <= set(privacy.TABLE_OF_COUNT) | privacy.NOT_DELETED
        assert body["deleted"]["messages"] == 2 and body["deleted"]["push_subscriptions"] == 1
        assert body["deleted"]["rejected_events"] == 1 and body["deleted"]["computed_traits"] == 1

        assert scan(_files(db_url, engine), needles(gone)) == {}
        # the other person is untouched, in the files and through the API
        assert set(scan(_files(db_url, engine), needles(kept))) == set(needles(kept))
        assert http.get("/api/profiles", params={"email": kept["email"]}, headers=admin).json()["traits"]["bio"] == (
            kept["bio"]
        )
    # the server stopped: its connections are closed, and on SQLite the WAL with them
    if db_url.startswith("sqlite"):
        main, wal, shm = sqlite_files(db_url)
        assert not wal.exists() and not shm.exists()
    assert scan(_files(db_url, engine), needles(gone)) == {}


def test_chorus_serve_leaves_no_bytes_of_an_erased_person_after_it_stops(tmp_path):
    """The command itself, on its embedded SQLite store: erasure over HTTP, then SIGTERM."""
    url = f"sqlite:///{tmp_path / 'chorus.db'}"
    gone, kept = _person(), _person()
    with ServeProcess(url, tmp_path, CHORUS_WORKER_POLL_SECONDS="0.05") as serve:
        with httpx.Client(base_url=serve.base_url, timeout=60) as http:
            for p in (gone, kept):
                _populate(http, serve.keys, p)
            assert set(scan(sqlite_files(url), needles(gone))) == set(needles(gone)) - {"computed"}
            r = http.delete(f"/api/profiles/{gone['profile_ids'][0]}",
                            headers={"Authorization": f"Bearer {serve.keys['api_key']}"})  # fmt: skip
            assert r.status_code == 200, r.text
        assert scan(sqlite_files(url), needles(gone)) == {}
    # SIGTERM: uvicorn shuts down gracefully, the lifespan closes the pool, then it re-raises the signal it caught
    assert serve.proc.returncode in (0, -signal.SIGTERM), serve.output()
    main, wal, shm = sqlite_files(url)
    assert not wal.exists() and not shm.exists()
    assert scan([main], needles(gone)) == {}
    assert set(scan([main], needles(kept))) == set(needles(kept)) - {"computed"}
