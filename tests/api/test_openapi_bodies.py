"""The request bodies /openapi.json documents are the ones the handlers accept (an outside probe: the bodies of
POST /api/broadcasts, POST /api/journeys, POST /api/segments/preview and PUT /api/lists/{id} were free objects, so
schema-driven clients and fuzzers sent bodies the server had to refuse; the /start body was "object or null" and
"a closed object" at once; the cursor's 1,000-character limit was hidden inside an anyOf).

Each documented body names its fields, their types and what is required, with exactly the keys the handler reads;
real bodies the server accepts are valid against it, and the bodies it refuses at the top level (an unknown key, a
missing field, a wrong type) are refused by the document too, and answered 400 with the product's message naming
the field (never FastAPI's 422: the handlers still validate the bodies themselves)."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema_rs
import pytest

from chorus.journeys import definition, manage
from chorus.messaging import outbox

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the document is the same on both engines

BODIES = {  # (method, path template) -> (top-level keys the handler reads, required)
    ("post", "/api/broadcasts"): (set(manage.BROADCAST_KEYS), {"id", "template"}),
    ("post", "/api/journeys"): (set(definition.TOP_KEYS), {"id", "entry", "start", "nodes"}),
    ("post", "/api/segments/preview"): ({"rule", "yaml", "sample"}, set()),
    ("put", "/api/segments/{segment_id}"): ({"name", "rule", "yaml"}, set()),
    ("put", "/api/lists/{list_id}"): ({"name"}, set()),
    ("post", "/api/journeys/{journey_id}/start"): ({"profile_id", "to", "data"}, set()),
}
JOURNEY = {"id": "ping", "entry": {"api": {}}, "start": "done", "nodes": {"done": {"type": "exit"}}}
SALE = {"id": "s", "template": "t", "holdout": 5, "goal": {"event": {"event": "e"}, "within": "7d"}}
BUYERS = {"performed": {"event": "Order Completed", "window": "30d"}}


@pytest.fixture
def spec(http):
    return http.get("/openapi.json").json()


def _schema(spec: dict, method: str, path: str) -> dict:
    return spec["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def _valid(spec: dict, method: str, path: str, body: object) -> bool:
    root = {**_schema(spec, method, path), "components": spec.get("components", {})}
    return jsonschema_rs.Draft202012Validator(root, validate_formats=True).is_valid(body)


@SQLITE
def test_each_body_names_its_fields_types_and_what_is_required(spec):
    for (method, path), (keys, required) in BODIES.items():
        s = _schema(spec, method, path)
        where = f"{method.upper()} {path}"
        assert s.get("type") == "object" and s.get("additionalProperties") is False, (where, s)
        assert "anyOf" not in s, (where, "a body is an object, not 'object or null'", s)
        assert set(s["properties"]) == keys, (where, set(s["properties"]) ^ keys)
        assert set(s.get("required", [])) == required, where
        for name, prop in s["properties"].items():
            assert "type" in prop or "anyOf" in prop, (where, name, "no type")
    # exactly one of rule and yaml; exactly one of profile_id and to
    for method, path in (("post", "/api/segments/preview"), ("put", "/api/segments/{segment_id}")):
        assert _schema(spec, method, path)["oneOf"] == [{"required": ["rule"]}, {"required": ["yaml"]}]
    start = _schema(spec, "post", "/api/journeys/{journey_id}/start")
    assert start["oneOf"] == [{"required": ["profile_id"]}, {"required": ["to"]}]
    b = _schema(spec, "post", "/api/broadcasts")["properties"]
    assert b["holdout"]["minimum"] == 1 and b["holdout"]["maximum"] == 99
    assert b["holdout_by"]["enum"] == list(definition.SPLIT_BY) and b["kind"]["enum"] == list(outbox.KINDS)


@SQLITE
def test_an_optional_parameter_documents_its_limits(spec):
    """FastAPI writes ``str | None`` as anyOf [string, null]: a query parameter is absent, never null, and the
    cursor's maxLength (a longer one is a 400) must be where clients and fuzzers read it."""
    cursors = 0  # the admin API's shared cursor parameter (chorus.api.admin.Cursor)
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if not p.get("required"):
                    assert {"type": "null"} not in p["schema"].get("anyOf", []), (method, path, p["name"])
                if p["name"] == "cursor":  # every one: the timeline's had no limit (a probe)
                    assert p["schema"]["type"] == "string" and p["schema"]["maxLength"] == 1000, (path, p)
                    cursors += 1
    assert cursors >= 5


@SQLITE
def test_what_the_server_accepts_the_document_accepts(http, spec, workspace, engine):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    outbox.save_template(engine, workspace["id"], "offer", {"kind": "marketing", "variants": {
        "in_app": {"title": "Offer", "body": "for you"}}})  # fmt: skip
    assert http.post("/v1/batch", auth=(workspace["server_write_key"], ""), json={"batch": [
        {"type": "identify", "userId": "ana", "traits": {"email": "ana@example.com"}}]}).status_code == 200
    assert http.put("/api/segments/buyers", json={"rule": BUYERS}, headers=h).status_code == 201
    accepted = [
        ("post", "/api/journeys", "/api/journeys", JOURNEY, 201),
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {"id": "sale", "template": "offer"}, 200),
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {
            "id": "sale", "name": "Sale", "template": "offer", "segment": "buyers", "channel": "in_app",
            "kind": "marketing", "topic": "offers", "data": {"code": "X"}, "schedule": "now",
            "goal": {"event": {"event": "Order Completed"}, "within": "7d"}, "holdout": 10,
            "holdout_by": "identifier"}, 200),
        ("post", "/api/segments/preview", "/api/segments/preview", {"rule": BUYERS, "sample": 5}, 200),
        ("post", "/api/segments/preview", "/api/segments/preview", {"yaml": "performed: {event: x}"}, 200),
        ("put", "/api/lists/{list_id}", "/api/lists/vip", {"name": "VIP"}, 201),
        ("put", "/api/lists/{list_id}", "/api/lists/all", {}, 201),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", {"to": {"user_id": "ana"}}, 200),
    ]  # fmt: skip
    for method, template, url, body, status in accepted:
        r = http.request(method.upper(), url, json=body, headers=h)
        assert r.status_code == status, (url, body, r.text)
        assert _valid(spec, method, template, body), (template, body, "accepted, but not valid for the document")


@SQLITE
def test_what_the_document_refuses_the_server_refuses_naming_the_field(http, spec, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    assert http.post("/api/journeys", json=JOURNEY, headers=h).status_code == 201
    refused = [  # (method, template, url, body, the field the 400 names)
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {"id": "s"}, "template"),
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {"id": "s", "template": "t", "x": 1}, "x"),
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {**SALE, "holdout": "10"}, "holdout"),
        ("post", "/api/broadcasts", "/api/broadcasts?dry_run=true", {**SALE, "holdout_by": "email"}, "holdout_by"),
        ("post", "/api/journeys", "/api/journeys", {k: v for k, v in JOURNEY.items() if k != "nodes"}, "nodes"),
        ("post", "/api/journeys", "/api/journeys", {**JOURNEY, "extra": 1}, "journey.extra"),
        ("post", "/api/journeys", "/api/journeys", {**JOURNEY, "exit_on_goal": "yes"}, "exit_on_goal"),
        ("post", "/api/segments/preview", "/api/segments/preview", {"sample": 5}, "rule"),
        ("post", "/api/segments/preview", "/api/segments/preview", {"rule": BUYERS, "yaml": "x"}, "rule"),
        ("post", "/api/segments/preview", "/api/segments/preview", {"rule": BUYERS, "sample": 101}, "sample"),
        ("post", "/api/segments/preview", "/api/segments/preview", {"rule": BUYERS, "name": "n"}, "body"),
        ("put", "/api/lists/{list_id}", "/api/lists/vip", {"name": ""}, "name"),
        ("put", "/api/lists/{list_id}", "/api/lists/vip", {"name": "a", "id": "b"}, "body"),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", {}, "profile_id"),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", {"data": {}}, "profile_id"),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", {"profile_id": "p", "z": 1}, "z"),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", [], "body"),
        ("post", "/api/journeys/{journey_id}/start", "/api/journeys/ping/start", None, "profile_id"),
    ]  # fmt: skip
    for method, template, url, body, field in refused:
        r = http.request(method.upper(), url, json=body, headers=h)
        assert r.status_code == 400, (url, body, r.status_code, r.text)
        assert r.json()["field"] == field and "validation" not in r.text.lower(), (url, body, r.text)
        assert not _valid(spec, method, template, body), (template, body, "refused, but valid for the document")
    cursor = http.get("/api/segments/x/members", params={"cursor": "a" * 1001}, headers=h)
    assert cursor.status_code == 400 and cursor.json()["field"] == "cursor", cursor.text


def test_docs_api_md_names_every_broadcast_field():
    """holdout_by was accepted but missing from the reference."""
    text = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| `POST /api/broadcasts?")]
    named = set(re.findall(r"[a-z_]+", row.split("|")[2]))
    assert set(manage.BROADCAST_KEYS) <= named, set(manage.BROADCAST_KEYS) - named
