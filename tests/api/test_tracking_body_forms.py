"""Tracking API bodies over real HTTP: a UTF-8 byte order mark before the JSON (what some clients on Windows write)
is skipped, not reported as "not valid JSON at line 1, column 1"; a form body is a 415 saying the body must be
JSON, not a complaint about column 2 of its boundary line."""

from __future__ import annotations

import gzip
import json

import pytest
import sqlalchemy as sa

from chorus.store.tables import events

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
BOM = b"\xef\xbb\xbf"


def _message_ids(engine, ws_id) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(events.c.message_id).where(events.c.workspace_id == ws_id)).scalars())


def test_a_leading_bom_is_skipped(http, server, workspace):
    auth = (workspace["write_key"], "")
    r = http.post("/v1/track", content=BOM + b'{"userId": "bom-user", "event": "X", "messageId": "bom-1"}', auth=auth,
                  headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200, r.text
    # the BOM of a compressed body is inside the compression, and a batch's like a single message's
    body = BOM + b'{"batch": [{"type": "track", "userId": "bom-user", "event": "X", "messageId": "bom-2"}]}'
    r = http.post("/v1/batch", content=gzip.compress(body), auth=auth,
                  headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"})  # fmt: skip
    assert r.status_code == 200, r.text
    assert sorted(_message_ids(server.engine, workspace["id"])) == ["bom-1", "bom-2"]


@SQLITE
def test_only_one_bom_is_skipped(http, workspace):
    r = http.post("/v1/track", content=BOM + BOM + b'{"userId": "u", "event": "X"}', auth=(workspace["write_key"], ""))
    assert r.status_code == 400 and r.json()["field"] == "body"


@SQLITE
@pytest.mark.parametrize("content_type, content", [
    ("multipart/form-data; boundary=b", b"--b\r\n\r\nx\r\n--b--"),
    ("multipart/form-data; boundary=b", b'--b\r\nContent-Disposition: form-data; name="userId"\r\n\r\nu\r\n--b--'),
    ("application/x-www-form-urlencoded", b"userId=u&event=X"),
    ("Multipart/Form-Data;boundary=b", b"--b--"),
])  # fmt: skip
def test_a_form_body_is_415_saying_the_body_must_be_json(http, workspace, content_type, content):
    auth = (workspace["write_key"], "")
    r = http.post("/v1/track", content=content, auth=auth, headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["code"] == "unsupported_media_type" and body["field"] == "Content-Type"
    assert body["message"].startswith("the body must be JSON: send it as application/json or text/plain, not ")
    assert "line 1" not in body["message"]


def test_json_labelled_as_a_form_is_still_accepted(http, workspace):
    """Review: `curl -u KEY: -d '{…}'` (the docs' own examples) labels its JSON as a form; it was accepted before the
    415 for forms, and must still be: only a body that is not JSON gets the 415."""
    r = http.post("/v1/track", content=json.dumps({"userId": "u1", "event": "E"}),
                  headers={"Content-Type": "application/x-www-form-urlencoded"},
                  auth=(workspace["write_key"], ""))  # fmt: skip
    assert r.status_code == 200, r.text
