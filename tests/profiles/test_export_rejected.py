"""A person's export with rejected messages that name her: whatever was refused (a lone surrogate, a message past
64 KB, a row kept by an earlier version that does not read back), the export answers, and a failed read leaves no
SQLite connection unable to write (real HTTP, both engines; read_only directly on SQLite)."""

from __future__ import annotations

import json

import orjson
import pytest
import sqlalchemy as sa

from chorus.collect.ingest import MAX_REJECTED_PAYLOAD, rejected_payload
from chorus.store.db import create_engine, read_only
from chorus.store.tables import rejected_events
from chorus.timeutil import utcnow


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def _zoe(http, server, ws) -> str:
    r = http.post("/v1/identify", content=json.dumps({"userId": "zoe", "traits": {"email": "zoe@example.com"}}),
                  auth=(ws["server_write_key"], ""))  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    return http.get("/api/profiles", params={"user_id": "zoe"}, headers=bearer(ws)).json()["id"]


def _track(http, ws, user: str) -> int:
    r = http.post("/v1/track", content=json.dumps({"userId": user, "event": "x"}), auth=(ws["write_key"], ""))
    return r.status_code


def test_export_reads_back_what_the_public_key_got_rejected(http, server, workspace):
    pid = _zoe(http, server, workspace)
    wk = (workspace["write_key"], "")
    # a lone surrogate, as a JSON escape: the message is rejected and kept under her id
    r = http.post("/v1/track", content=b'{"userId": "zoe", "event": "x\\ud800"}', auth=wk)
    assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "event", r.text
    # a batch item over 32 KB, longer than the 64 KB kept of a refused payload
    big = {"type": "track", "userId": "zoe", "event": "Big", "properties": {"s": "y" * 100_000}}
    r = http.post("/v1/batch", content=json.dumps({"batch": [big]}), auth=wk)
    assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "batch", r.text
    # more rejected rows after those, so that a failing export would leave its result half-read
    bad = [{"type": "track", "userId": "zoe", "event": "y", "timestamp": f"bad{i}"} for i in range(300)]
    assert http.post("/v1/batch", content=json.dumps({"batch": bad}), auth=wk).status_code == 200

    e = http.get(f"/api/profiles/{pid}/export", headers=bearer(workspace))
    assert e.status_code == 200, e.text[:300]
    payloads = [x["payload"] for x in e.json()["rejected_events"]]
    assert len(payloads) == 302
    assert payloads[0]["event"] == "x\ufffd" and payloads[0]["userId"] == "zoe"
    assert payloads[1]["_truncated"] is True and payloads[1]["text"].startswith('{"type":"track"')
    listed = http.get("/api/events/rejected", params={"limit": 1000}, headers=bearer(workspace)).json()["rejected"]
    assert all(len(x["payload"]) <= MAX_REJECTED_PAYLOAD and orjson.loads(x["payload"]) for x in listed)
    # tracking still works afterwards (SQLite: no pooled connection left holding a stale read snapshot)
    assert [_track(http, workspace, f"after-{i}") for i in range(15)] == [200] * 15


@pytest.mark.parametrize("stored", [
    '{"type":"track","userId":"zoe","properties":{"s":"yyyy',  # cut at 64 KB by an earlier version
    '{"type":"track","userId":"zoe","event":"x\\ud800"}',  # a lone surrogate kept as an escape
    "{not json",  # a text that was never JSON
], ids=["cut", "surrogate", "text"])  # fmt: skip
def test_export_shows_rows_stored_badly_before_as_text(http, server, engine, workspace, stored):
    pid = _zoe(http, server, workspace)
    rows = [{"workspace_id": workspace["id"], "received_at": utcnow(), "reason": "old", "payload": p,
             "identifiers": {"user_id": ["zoe"]}} for p in (stored, '{"ok":1}', *["{}"] * 200)]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(rejected_events.insert(), rows)
    e = http.get(f"/api/profiles/{pid}/export", headers=bearer(workspace))
    assert e.status_code == 200, e.text[:300]
    assert [x["payload"] for x in e.json()["rejected_events"][:2]] == [stored, {"ok": 1}]
    assert [_track(http, workspace, f"after-{i}") for i in range(15)] == [200] * 15


def test_an_exception_inside_read_only_leaves_no_connection_that_cannot_write(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/s.db", pool_size=1, max_overflow=0)
    other = create_engine(f"sqlite:///{tmp_path}/s.db")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
            conn.exec_driver_sql("INSERT INTO t (v) VALUES " + ",".join(["('a')"] * 300))

        def rows(conn):  # a generator over a result, as erasure's _rejected_of is
            yield from conn.execute(sa.text("SELECT * FROM t"))

        kept = []
        with pytest.raises(ValueError):
            with read_only(engine) as conn:
                it = rows(conn)
                kept.append(it)  # still referenced (a traceback, a log record) after the block
                for i, _ in enumerate(it):
                    if i == 3:
                        raise ValueError("a row that cannot be read")
        for _ in range(3):  # someone else writes, then this engine's (only) pooled connection writes
            with other.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t (v) VALUES ('other')")
            with engine.begin() as conn:
                conn.exec_driver_sql("INSERT INTO t (v) VALUES ('mine')")
        # a loop left early, without an exception, holds the statement just the same
        with read_only(engine) as conn:
            for _ in conn.execute(sa.text("SELECT * FROM t")):
                break
        with other.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES ('other')")
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO t (v) VALUES ('mine')")
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 308
    finally:
        engine.dispose()
        other.dispose()


# built in the test: a lone surrogate in a parameter cannot travel to a test worker (pytest-xdist sends UTF-8)
PAYLOADS = {
    "surrogates": lambda: {"userId": "zoe", "event": "x\ud800", "k\udc00": ["\ud83d\ude00"]},
    "long": lambda: {"userId": "zoe", "properties": {"s": "y" * 100_000}},
    "long-escapes": lambda: {"userId": "zoe", "properties": {"s": '"\\' * 40_000, "t": "\x00\ud800" * 10_000}},
    "long-text": lambda: "x\ud800" * 40_000,
    "text-surrogate": lambda: "{x\ud800",
    "text": lambda: "{not json",
    "list": lambda: [1, "a\x00"],
}


@pytest.mark.parametrize("name", list(PAYLOADS))
def test_a_rejected_payload_is_always_json_that_reads_back_within_the_cap(name):
    payload = PAYLOADS[name]()
    text = rejected_payload(payload)
    assert len(text) <= MAX_REJECTED_PAYLOAD
    value = orjson.loads(text)
    assert "\ud800" not in text and "\\ud800" not in text
    if isinstance(value, dict) and value.get("_truncated"):
        assert value["text"] and set(value) == {"_truncated", "text"}
    elif isinstance(payload, dict):
        assert value["userId"] == "zoe" and value.get("event", "x\ufffd") == "x\ufffd"
    else:
        assert value == (payload.replace("\ud800", "\ufffd") if isinstance(payload, str) else payload)
