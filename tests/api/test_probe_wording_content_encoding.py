"""The admin API reads Content-Encoding as the tracking API does: gzip (x-gzip, deflate) is inflated, any other
encoding and a body that is not what its header says are a 400 naming Content-Encoding. Found by a probe: a gzip
body was answered "body is not valid JSON: text that is not UTF-8", and `Content-Encoding: br` on a plain body was
read as if absent. Real HTTP, SQLite only (the gate does not depend on the engine)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from chorus.api.guard import MAX_JSON_BODY

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
RULE = b'{"name": "ce", "rule": {"trait": {"name": "plan", "exists": true}}}'


def _put(http, ws, body: bytes, encoding: str | None, content_type: str = "application/json"):
    headers = {"Authorization": f"Bearer {ws['api_key']}", "Content-Type": content_type}
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    return http.put("/api/segments/ce_probe", content=body, headers=headers)


@SQLITE
def test_gzip_and_deflate_bodies_are_read(http, workspace):
    for encoding, body in (("gzip", gzip.compress(RULE)), ("x-gzip", gzip.compress(RULE)),
                           ("deflate", zlib.compress(RULE)), ("identity", RULE), ("", RULE)):  # fmt: skip
        r = _put(http, workspace, body, encoding)
        assert r.status_code < 300, (encoding, r.status_code, r.text)
        assert r.json()["name"] == "ce"


@SQLITE
def test_an_unsupported_encoding_is_a_400_naming_the_header(http, workspace):
    r = _put(http, workspace, RULE, "br")
    assert r.status_code == 400, r.text
    assert r.json() == {"code": "bad_request", "field": "Content-Encoding",
                        "message": "Content-Encoding 'br' is not supported (use gzip)"}  # fmt: skip


@SQLITE
def test_a_body_that_is_not_what_its_encoding_says_is_named(http, workspace):
    r = _put(http, workspace, RULE, "gzip")
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "Content-Encoding" and "not gzip-compressed data" in body["message"], body
    assert "Error -3" not in r.text and "UTF-8" not in r.text


@SQLITE
def test_a_body_inflating_past_the_limit_is_a_413(http, workspace):
    bomb = gzip.compress(b"[" + b" " * (MAX_JSON_BODY + 10) + b"]")  # about 10 KB that inflates past 10 MB
    r = _put(http, workspace, bomb, "gzip")
    assert r.status_code == 413, r.text
    assert "after decompression" in r.json()["message"]


@SQLITE
def test_a_compressed_form_is_refused_naming_the_header(http, workspace):
    headers = {"Authorization": f"Bearer {workspace['api_key']}", "Content-Encoding": "gzip"}
    r = http.post("/api/imports", files={"file": ("a.csv", gzip.compress(b"email\na@example.com\n"))},
                  headers=headers)  # fmt: skip
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "Content-Encoding"


@SQLITE
def test_a_cut_short_gzip_body_is_refused_and_every_member_of_one_is_read(http, workspace):
    """Review: a gzip body cut before its trailer was taken, and a second member (RFC 1952 allows several) was
    dropped unsaid; the tracking API reads compressed batches by the same rule."""
    for body in (gzip.compress(RULE)[:-8], gzip.compress(RULE) + b"\n"):
        r = _put(http, workspace, body, "gzip")
        assert r.status_code == 400 and r.json()["field"] == "Content-Encoding", (r.status_code, r.text)
        assert "one whole gzip-compressed stream" in r.json()["message"]
    r = _put(http, workspace, gzip.compress(RULE[:20]) + gzip.compress(RULE[20:]), "gzip")
    assert r.status_code in (200, 201), (r.status_code, r.text)
    batch = b'{"batch": [{"type": "track", "event": "E", "userId": "u"}]}'
    r = http.post("/v1/batch", content=gzip.compress(batch)[:-8],
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                           "Authorization": f"Bearer {workspace['server_write_key']}"})  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "Content-Encoding", (r.status_code, r.text)


@SQLITE
def test_without_the_api_key_nothing_of_the_body_is_read(http, workspace):
    """Review: an unauthenticated request got its body's 400 (and had the server inflate up to 10 MB): the 401 comes
    first, for an operation that takes the admin api key."""
    for headers in ({"Content-Type": "application/json", "Content-Encoding": "br"},
                    {"Content-Type": "application/json", "Content-Encoding": "gzip"},
                    {"Content-Type": "text/plain"}):  # fmt: skip
        r = http.put("/api/segments/ce_probe", content=gzip.compress(RULE), headers=headers)
        assert r.status_code == 401, (headers, r.status_code, r.text)
        assert r.json()["message"] == "send the workspace api key as 'Authorization: Bearer <api_key>'"


@SQLITE
def test_a_wrong_api_key_is_refused_before_the_body_is_read(http, workspace):
    """A key that opens no workspace (unknown, rotated, or the write key) is the 401 too, before the body's checks:
    it got the body's 400 (or 413), and had the server read and inflate it; the right key still gets them."""
    bad_bodies = [({"Content-Type": "application/json", "Content-Encoding": "br"}, gzip.compress(RULE)),
                  ({"Content-Type": "application/json"}, b'{"name": '),
                  ({"Content-Type": "text/plain"}, RULE)]  # fmt: skip
    for key in ("ak_not_a_key", workspace["write_key"]):
        for headers, body in bad_bodies:
            r = http.put("/api/segments/ce_probe", content=body, headers={**headers, "Authorization": f"Bearer {key}"})
            assert r.status_code == 401, (key, headers, r.status_code, r.text)
            assert r.json()["message"] == "unknown api key"
    for headers, body in bad_bodies:  # the right key: the body's own answer
        r = http.put("/api/segments/ce_probe", content=body,
                     headers={**headers, "Authorization": f"Bearer {workspace['api_key']}"})  # fmt: skip
        assert r.status_code in (400, 415), (headers, r.status_code, r.text)
