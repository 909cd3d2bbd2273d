"""Hostile input gets a 4xx whose message is Chorus' own: it names the field (or line and column), says where it
was (query parameter, header), and never passes on a library's text (pydantic, orjson, zlib, csv), a Python repr
or a huge echoed value. Found by a hostile-input probe; fixed centrally (app.py's validation handler, the admin
gate in api/guard.py, common.error_response). Real HTTP; the errors do not depend on the engine: SQLite only."""

from __future__ import annotations

import gzip

import orjson
import pytest

from chorus.api import validation
from chorus.segments.times import parse_duration
from tests.api.openapi_check import Documented

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

# what pydantic, orjson, zlib and Python say in their own words: none of it may reach a client
LIBRARY_WORDS = ("Input should", "Field required", "valid dictionary", "unable to parse", "char ", "Error -3",
                 "Traceback", "None is", "Value error", "JSONDecodeError", "zero-length")  # fmt: skip


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def _clean(r, status: int, field: str | None) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text[:500])
    body = r.json()
    assert set(body) <= {"code", "message", "field"}, body
    if field is not None:
        assert body.get("field") == field, body
    assert not any(w in body["message"] for w in LIBRARY_WORDS), body
    return body


# -- 1. pydantic's messages: worded by Chorus, the field named, its location said ------------------------------------
@SQLITE
def test_validation_errors_are_worded_by_chorus_not_pydantic(http, workspace):
    h = {**bearer(workspace), "Content-Type": "application/json"}
    cases = [
        ("GET", "/api/templates", {"params": {"limit": "abc"}}, "limit",
         "limit (query parameter) must be a whole number"),
        ("GET", "/api/templates", {"params": {"limit": "5000"}}, "limit",
         "limit (query parameter) must be at most 1000"),
        ("GET", "/api/templates", {"params": {"limit": "0"}}, "limit", "limit (query parameter) must be at least 1"),
        ("GET", "/api/analytics/attribution", {"params": {"half_life_days": "x"}}, "half_life_days",
         "half_life_days (query parameter) must be a number"),
        ("GET", "/api/analytics/attribution", {"params": {"half_life_days": "99999"}}, "half_life_days",
         "half_life_days (query parameter) must be at most 3660"),
        ("PUT", "/api/segments/s", {"params": {"estimate": "maybe"}, "json": {"rule": {}}}, "estimate",
         "estimate (query parameter) must be true or false"),
        ("GET", "/api/messages", {"params": {"since": "yesterday"}}, "since",
         "since (query parameter) must be a date and time like 2026-01-31T09:30:00Z"),
        ("GET", "/api/profiles/search", {}, "prefix", "prefix (query parameter) is required"),
        ("GET", "/api/profiles/search", {"params": {"prefix": ""}}, "prefix",
         "prefix (query parameter) must not be empty"),
        ("GET", "/api/profiles/search", {"params": {"prefix": "a" * 300}}, "prefix",
         "prefix (query parameter) must be at most 200 characters long"),
        ("PUT", "/api/segments/s", {"content": b"[1, 2]"}, "body", "body must be a JSON object"),
        ("PUT", "/api/segments/s", {"content": b'"text"'}, "body", "body must be a JSON object"),
        ("PUT", "/api/segments/s", {}, "body", "body is required"),
    ]  # fmt: skip
    for method, path, kw, field, message in cases:
        r = http.request(method, path, headers=h, **kw)
        body = _clean(r, 400, field)
        assert body == {"code": "bad_request", "message": message, "field": field}, (path, kw, body)


def test_every_pydantic_error_type_gets_chorus_words():
    cases = [
        ({"type": "missing", "loc": ("body", "to", "email")}, "to.email", "to.email is required"),
        ({"type": "int_parsing", "loc": ("body", "items", 2, "qty")}, "items[2].qty",
         "items[2].qty must be a whole number"),
        ({"type": "string_type", "loc": ("header", "Idempotency-Key")}, "Idempotency-Key",
         "Idempotency-Key (header) must be text"),
        ({"type": "literal_error", "loc": ("query", "status"), "ctx": {"expected": "'computing' or 'ready'"}},
         "status", "status (query parameter) must be one of computing, ready"),
        ({"type": "enum", "loc": ("path", "kind"), "ctx": {"expected": "'a', 'b' or 'c'"}}, "kind",
         "kind (path segment) must be one of a, b, c"),
        ({"type": "greater_than", "loc": ("query", "x"), "ctx": {"gt": 0.0}}, "x",
         "x (query parameter) must be greater than 0"),
        ({"type": "extra_forbidden", "loc": ("body", "colour")}, "colour", "colour is not a known field"),
        ({"type": "json_invalid", "loc": ("body", 12), "ctx": {"error": "EOF while parsing"}}, "body",
         "body is not valid JSON"),
        ({"type": "value_error", "loc": ("body", "x"), "msg": "Value error, <internal>", "ctx": {"error": "x"}}, "x",
         "x is not valid"),
        ({"type": "some_future_type", "loc": ("query", "q"), "msg": "pydantic's own words"}, "q",
         "q (query parameter) is not valid"),
        ({}, "body", "body is not valid"),
    ]  # fmt: skip
    for error, field, message in cases:
        exc = validation.explain([error])
        assert (exc.field, exc.message) == (field, message), error


# -- 2. a JSON body in another media type: 415, naming what the operation reads; tracking stays lenient -------------
@SQLITE
def test_a_json_operation_given_another_content_type_is_a_415(http, workspace):
    doc = Documented(http.get("/openapi.json").json())
    body = b'{"rule": {"performed": {"event": "x"}}}'
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**bearer(workspace), **({"Content-Type": content_type} if content_type else {})}
        r = http.put("/api/segments/s", content=body, headers=headers)
        err = _clean(doc.check(r, "/api/segments/{segment_id}"), 415, "Content-Type")
        assert err["code"] == "unsupported_media_type" and "application/json" in err["message"], err
    # a form where JSON is expected (it used to be "body: Input should be a valid dictionary")
    r = http.post("/api/messages", files={"f": ("a.txt", b"x")}, headers=bearer(workspace))
    assert _clean(r, 415, "Content-Type")["code"] == "unsupported_media_type"
    # an operation that reads more than JSON says so; one that reads a form says that
    r = http.post("/api/lists/vip/members", content=b"x", headers={**bearer(workspace), "Content-Type": "text/plain"})
    assert "application/json or text/csv" in _clean(r, 415, "Content-Type")["message"]
    r = http.post("/api/imports", content=b"a,b\n", headers={**bearer(workspace), "Content-Type": "text/csv"})
    assert "multipart/form-data" in _clean(r, 415, "Content-Type")["message"]
    # application/*+json is JSON, and a charset parameter changes nothing
    r = http.put("/api/lists/vip", content=b'{"name": "VIP"}',
                 headers={**bearer(workspace), "Content-Type": "application/merge-patch+json; charset=utf-8"})
    assert r.status_code == 201, r.text
    # every admin operation with a body documents the 415
    for path, item in doc.doc["paths"].items():
        for method, op in item.items():
            if path.startswith("/api/") and op.get("requestBody"):
                assert "415" in op["responses"], (method, path)


@SQLITE
def test_tracking_still_reads_text_plain_bodies(http, workspace):
    # navigator.sendBeacon and analytics.js post text/plain (no CORS preflight): not a 415
    msg = {"userId": "u1", "event": "Signed Up", "messageId": "tp1", "writeKey": workspace["write_key"]}
    r = http.post("/v1/track", content=orjson.dumps(msg), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json() == {"success": True}, r.text


# -- 3. parsers' and codecs' own text: our words, with the line and column ------------------------------------------
@SQLITE
def test_malformed_json_names_line_and_column_in_our_words(http, workspace):
    h = {**bearer(workspace), "Content-Type": "application/json"}
    r = http.patch("/api/workspace/settings", content=b'{\n  "default_region": "NL",,\n}', headers=h)
    err = _clean(r, 400, "body")
    assert err["message"] == "body is not valid JSON: expected a key in double quotes at line 2, column 26", err
    r = http.put("/api/lists/vip", content=b'{"name": "VIP",}', headers=h)
    assert _clean(r, 400, "body")["message"] == (
        "body is not valid JSON: a comma before a closing bracket or brace at line 1, column 15")


@SQLITE
def test_broken_gzip_and_csv_are_named_without_the_codecs_text(http, workspace):
    wk = workspace["write_key"]
    r = http.post("/v1/track", content=b"not gzip", auth=(wk, ""),
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert "gzip" in _clean(r, 400, "Content-Encoding")["message"]
    http.put("/api/lists/vip", json={"name": "VIP"}, headers=bearer(workspace))
    big = b"email\n" + b"x" * 200_000 + b"\n"  # over the csv module's field limit
    r = http.post("/api/lists/vip/members", content=big, headers={**bearer(workspace), "Content-Type": "text/csv"})
    err = _clean(r, 400, "line 2")
    assert err["message"] == "line 2: not readable as CSV (a cell longer than the limit)", err
    # gzip-compressed tracking bodies still work
    msg = {"userId": "u1", "event": "x", "messageId": "gz1"}
    r = http.post("/v1/track", content=gzip.compress(orjson.dumps(msg)), auth=(wk, ""),
                  headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert r.status_code == 200, r.text


@SQLITE
def test_a_broken_form_is_named_without_the_parsers_text(http, workspace):
    h = {**bearer(workspace), "Content-Type": "multipart/form-data"}
    r = http.post("/api/imports", content=b"--x\r\n", headers=h)
    assert _clean(r, 400, "body")["message"] == "body is not a valid form (its Content-Type has no boundary)"


@SQLITE
def test_a_broken_form_on_the_public_pages_and_webhooks_is_named_without_the_parsers_text(http, workspace):
    """An outside probe: the unsubscribe pages and the Twilio webhooks answered the form parser's own text
    ("Missing boundary in multipart.", code http_error), before any check of the token or the signature."""
    ws = workspace["id"]
    for path in ("/u/not-a-token", "/u/not-a-token/preferences", f"/webhooks/twilio/{ws}/inbound",
                 f"/webhooks/twilio/{ws}/status"):  # fmt: skip
        r = http.post(path, content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"})
        body = _clean(r, 400, "body")
        assert body["message"] == "the body is not a valid form (its Content-Type has no boundary)", (path, body)
    for path in ("/u/not-a-token", f"/webhooks/twilio/{ws}/inbound"):  # a boundary given, the body not multipart
        r = http.post(path, content=b"garbage without the boundary\r\n",
                      headers={"Content-Type": "multipart/form-data; boundary=xyz"})  # fmt: skip
        assert _clean(r, 400, "body")["message"].startswith("the body is not a valid form"), (path, r.text)
    r = http.post("/u/not-a-token", content=b"a=" + b"x" * (2 * 1024 * 1024),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert "a field is larger than the limit" in _clean(r, 400, "body")["message"]


# -- 4. no Python reprs, no huge echoed values ----------------------------------------------------------------------
@SQLITE
def test_a_huge_bad_value_is_not_echoed_whole(http, workspace):
    h = {**bearer(workspace), "Content-Type": "application/json"}
    huge = "w" * (5 * 2**20)
    r = http.put("/api/segments/s", content=orjson.dumps({"rule": {huge: {}}}), headers=h)
    err = _clean(r, 400, None)
    assert len(err["message"]) <= 400 and err["message"].startswith("rule") and "…" in err["message"], err
    assert len(err.get("field", "")) <= 200
    r = http.put("/api/segments/s", content=orjson.dumps({"rule": {"performed": {"event": "x", "window": huge}}}),
                 headers=h)  # fmt: skip
    err = _clean(r, 400, "rule.performed.window")
    assert len(err["message"]) <= 400 and "not a duration" in err["message"] and huge[:100] not in err["message"]


def test_durations_are_described_in_json_terms_not_python_reprs():
    for value, shown in ((None, "null"), (True, "true"), (7, "the number 7"), ("7 days", '"7 days"'),
                         ([], "a list"), ({}, "an object"), ("9" * 1000, "the text given")):  # fmt: skip
        with pytest.raises(ValueError) as info:
            parse_duration(value)
        assert str(info.value).startswith(f"{shown} is not a duration"), str(info.value)


# -- 5. duplicate keys: refused on admin definitions, taken on the tracking API --------------------------------------
@SQLITE
def test_duplicate_keys_in_an_admin_body_are_refused_by_their_path(http, workspace):
    h = {**bearer(workspace), "Content-Type": "application/json"}
    r = http.put("/api/lists/vip", content=b'{"name": "a", "name": "b"}', headers=h)
    assert _clean(r, 400, "body.name")["message"].startswith("body.name: this key appears more than once"), r.text
    r = http.put("/api/segments/s", headers=h,
                 content=b'{"rule": {"and": [{"performed": {"event": "a", "window": "7d", "event": "b"}}]}}')
    _clean(r, 400, "body.rule.and[0].performed.event")
    r = http.patch("/api/workspace/settings", content=b'{"default_region": "NL", "default_region": "US"}', headers=h)
    _clean(r, 400, "body.default_region")
    # the same key in two objects is not a duplicate
    r = http.put("/api/segments/s", headers=h, content=b'{"rule": {"and": [{"performed": {"event": "a"}}, '
                                                        b'{"performed": {"event": "b"}}]}}')  # fmt: skip
    assert r.status_code == 201, r.text


@SQLITE
def test_duplicate_keys_on_the_tracking_api_are_taken_as_browsers_take_them(http, workspace):
    body = b'{"userId": "u1", "event": "first", "event": "Signed Up", "messageId": "d1"}'
    r = http.post("/v1/track", content=body, auth=(workspace["write_key"], ""),
                  headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and r.json() == {"success": True}, r.text


# -- 6. a trailing slash: a 404 that names the path, not a redirect clients do not follow with their body -----------
@SQLITE
def test_a_trailing_slash_is_a_404_naming_the_path(http, workspace):
    for method in ("GET", "POST"):
        r = http.request(method, "/api/segments/", headers=bearer(workspace), json={}, follow_redirects=False)
        err = _clean(r, 404, "path")
        assert err["message"] == "no such path: /api/segments/ (without the trailing slash?)", err
    r = http.get("/api/no-such-thing", headers=bearer(workspace))
    assert _clean(r, 404, "path")["message"] == "no such path: /api/no-such-thing"
    r = http.delete("/api/templates", headers=bearer(workspace))
    assert _clean(r, 405, None)["message"] == "DELETE is not allowed on /api/templates; use GET"


def test_a_number_beyond_64_bits_is_told_the_parameters_own_bound(http, workspace):
    """The guard refuses integers beyond 64 bits before pydantic sees them; it states the parameter's declared bound,
    not the 64 bits (an outside probe: `order=10**26` said "at most 9223372036854775807" where the most is 3)."""
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    for path, name, high in (("/api/analytics/attribution", "order", 3), ("/api/templates", "limit", 1000)):
        for value, word in (("9" * 26, f"at most {high}"), ("-" + "9" * 26, "at least ")):
            r = http.get(path, params={name: value}, headers=h)
            body = r.json()
            assert r.status_code == 400 and body["field"] == name, r.text
            assert word in body["message"] and "9223372036854775807" not in body["message"], r.text
