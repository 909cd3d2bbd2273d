"""Admin API over real HTTP: profiles, lookup, timeline, export, erasure, isolation between workspaces."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.store.tables import metadata
from tests.conftest import wait_until


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def post(http, ws, batch, key="write_key"):
    r = http.post("/v1/batch", json={"batch": batch}, auth=(ws[key], ""))
    assert r.status_code == 200, r.text
    return r


def ts(m):
    return f"2026-02-01T09:{m:02d}:00Z"


@pytest.fixture
def shopper(http, server, workspace):
    post(http, workspace, [
        {"type": "page", "anonymousId": "anon-1", "messageId": "e1", "timestamp": ts(1), "name": "Laptops",
         "context": {"page": {"path": "/laptops"}, "userAgent": "Mozilla/5.0"}},
        {"type": "track", "anonymousId": "anon-1", "event": "Product Viewed", "messageId": "e2", "timestamp": ts(2),
         "properties": {"sku": "LAP-1"}, "context": {"app": {"name": "shop"}, "timezone": "Europe/Amsterdam"}},
    ])  # fmt: skip
    server.settle()
    anon_pid = http.get("/api/profiles", params={"anonymous_id": "anon-1"}, headers=bearer(workspace)).json()["id"]
    post(http, workspace, [
        {"type": "identify", "userId": "cust-7", "messageId": "e3", "timestamp": ts(3),
         "traits": {"email": "Sanne@Example.nl", "phone": "+31 6 12345678", "name": "Sanne"}},
    ], key="server_write_key")  # fmt: skip
    server.settle()
    known_pid = http.get("/api/profiles", params={"user_id": "cust-7"}, headers=bearer(workspace)).json()["id"]
    post(http, workspace, [
        {"type": "track", "userId": "cust-7", "anonymousId": "anon-1", "event": "Order Completed", "messageId": "e4",
         "timestamp": ts(4), "properties": {"revenue": 999}, "context": {"channel": "store"}},
    ])  # fmt: skip
    server.settle()
    return {"anon": anon_pid, "known": known_pid}


def test_profile_unifies_channels_and_old_id_resolves(http, workspace, shopper):
    assert shopper["anon"] != shopper["known"]
    r = http.get(f"/api/profiles/{shopper['anon']}", headers=bearer(workspace))
    assert r.status_code == 200
    p = r.json()
    assert p["id"] == shopper["known"] and p["requested_id"] == shopper["anon"]
    assert shopper["anon"] in p["aliases"]
    assert p["identifiers"] == {"anonymous_id": ["anon-1"], "email": ["sanne@example.nl"], "phone": ["+31612345678"],
                                "user_id": ["cust-7"]}  # fmt: skip
    assert p["addresses"] == {"email": ["sanne@example.nl"], "sms": ["+31612345678"], "whatsapp": ["+31612345678"]}
    assert p["channels_used"] == ["app", "server", "store", "web"]
    assert {c: v["count"] for c, v in p["channels"].items()} == {"web": 1, "app": 1, "server": 1, "store": 1}
    assert p["last_channel"] == "store" and p["last_seen"] == "2026-02-01T09:04:00.000000Z"
    assert p["first_seen"] == "2026-02-01T09:01:00.000000Z"
    assert p["timezone"] == "Europe/Amsterdam" and p["traits"]["name"] == "Sanne" and p["known"] is True
    for params in ({"email": "SANNE@example.nl"}, {"phone": "+31612345678"}, {"anonymous_id": "anon-1"}):
        assert http.get("/api/profiles", params=params, headers=bearer(workspace)).json()["id"] == p["id"]
    merges = http.get(f"/api/profiles/{p['id']}/merges", headers=bearer(workspace)).json()["merges"]
    assert [(m["survivor_id"], m["merged_id"]) for m in merges] == [(shopper["known"], shopper["anon"])]


def test_timeline_newest_first_with_keyset_pages(http, workspace, shopper):
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        r = http.get(f"/api/profiles/{shopper['anon']}/events", params=params, headers=bearer(workspace))
        assert r.status_code == 200
        page = r.json()
        seen += [e["messageId"] for e in page["events"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == ["e4", "e3", "e2", "e1"]
    only_store = http.get(
        f"/api/profiles/{shopper['known']}/events", params={"channel": "store"}, headers=bearer(workspace)
    )
    assert [e["messageId"] for e in only_store.json()["events"]] == ["e4"]
    bad = http.get(f"/api/profiles/{shopper['known']}/events", params={"cursor": "zzz"}, headers=bearer(workspace))
    assert bad.status_code == 400 and bad.json()["field"] == "cursor"


def test_lookup_errors_name_the_field(http, workspace, shopper):
    r = http.get("/api/profiles", params={"email": "not an email"}, headers=bearer(workspace))
    assert r.status_code == 400 and r.json()["field"] == "email"
    r = http.get("/api/profiles", params={"email": "nobody@example.com"}, headers=bearer(workspace))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = http.get("/api/profiles", headers=bearer(workspace))
    assert r.status_code == 400
    r = http.get("/api/profiles/p_missing", headers=bearer(workspace))
    assert r.status_code == 404


def test_export_holds_everything(http, workspace, shopper):
    post(http, workspace, [{"type": "track", "userId": "cust-7", "messageId": "bad"}])  # rejected: no event
    r = http.get(f"/api/profiles/{shopper['known']}/export", headers=bearer(workspace))
    assert r.status_code == 200
    doc = r.json()
    assert [e["messageId"] for e in doc["events"]] == ["e1", "e2", "e3", "e4"]
    assert doc["profile"]["identifiers"]["user_id"] == ["cust-7"]
    assert doc["merges"] and doc["rejected_events"][0]["field"] == "event"


def _scan_for(engine, needles: list[str]) -> list[str]:
    """Every text cell of every table, searched for any of the needles."""
    hits = []
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                text = repr(tuple(row)).lower()
                for n in needles:
                    if n.lower() in text:
                        hits.append(f"{table.name}: {n}")
    return hits


def test_erasure_removes_the_person_from_every_table(http, server, workspace, shopper):
    post(http, workspace, [{"type": "track", "userId": "cust-7", "messageId": "bad"}])  # a rejected event of theirs
    other = {"type": "identify", "userId": "someone-else", "messageId": "o1", "traits": {"email": "other@example.com"}}
    post(http, workspace, [other])
    # a message to them (no provider is configured: skipped, it stays in the outbox with their address and name)
    tpl = {"variants": {"email": {"subject": "Hi {{ traits.name }}", "html": "<p>Hi {{ traits.name }}</p>"}}}
    assert http.put("/api/templates/hello", json=tpl, headers=bearer(workspace)).status_code == 200
    sent = http.post("/api/messages", json={"profile_id": shopper["known"], "template": "hello"},
                     headers=bearer(workspace))  # fmt: skip
    assert sent.status_code == 201 and sent.json()["address"] == "sanne@example.nl"
    wait_until(lambda: http.get(f"/api/messages/{sent.json()['id']}", headers=bearer(workspace)).json()["status"]
               == "skipped")  # no provider: skipped at once (Message Skipped joins Message Queued on the timeline)
    browser = {"endpoint": "https://push.example/sub-of-sanne", "keys": {"p256dh": "BPk", "auth": "xyz"}}
    r = http.post("/v1/push/subscriptions", auth=(workspace["write_key"], ""),
                  json={"anonymousId": "anon-1", "subscription": browser})  # fmt: skip
    assert r.status_code == 201
    server.settle()
    needles = ["cust-7", "anon-1", "sanne@example.nl", "+31612345678", shopper["known"], shopper["anon"],
               sent.json()["id"], "sub-of-sanne"]  # fmt: skip
    assert _scan_for(server.engine, needles)  # the scan does find them before
    r = http.delete(f"/api/profiles/{shopper['anon']}", headers=bearer(workspace))  # an old id works too
    assert r.status_code == 200 and r.json()["deleted"]["events"] == 6  # 4 of theirs + Queued, Skipped
    assert r.json()["deleted"]["messages"] == 1 and r.json()["deleted"]["push_subscriptions"] == 1
    assert _scan_for(server.engine, needles) == []
    assert http.get(f"/api/profiles/{shopper['known']}", headers=bearer(workspace)).status_code == 404
    assert http.get(f"/api/profiles/{shopper['anon']}", headers=bearer(workspace)).status_code == 404
    assert http.get("/api/profiles", params={"user_id": "someone-else"}, headers=bearer(workspace)).status_code == 200


def test_workspace_keys_never_cross(http, server, engine, workspace, shopper):
    other = workspaces.create(engine, "rival")
    post(http, other, [{"type": "identify", "userId": "cust-7", "messageId": "r1", "traits": {"name": "Rival"}}])
    server.settle()
    mine = shopper["known"]
    theirs = http.get("/api/profiles", params={"user_id": "cust-7"}, headers=bearer(other)).json()["id"]
    assert theirs != mine
    for method, path in [
        ("GET", f"/api/profiles/{mine}"), ("GET", f"/api/profiles/{mine}/events"),
        ("GET", f"/api/profiles/{mine}/export"), ("GET", f"/api/profiles/{mine}/merges"),
        ("DELETE", f"/api/profiles/{mine}"),
    ]:  # fmt: skip
        r = http.request(method, path, headers=bearer(other))
        assert r.status_code == 404, (method, path, r.status_code)
    assert http.get("/api/profiles", params={"email": "sanne@example.nl"}, headers=bearer(other)).status_code == 404
    rej = http.get("/api/events/rejected", headers=bearer(other)).json()["rejected"]
    assert rej == []
    assert http.get("/api/workspace", headers=bearer(other)).json()["id"] == other["id"]
    imp = http.post("/api/imports", files={"file": ("x.csv", "email,timestamp\na@example.com,2026-01-01\n")},
                    data={"source": "store"}, headers=bearer(workspace)).json()  # fmt: skip
    assert http.get(f"/api/imports/{imp['id']}", headers=bearer(workspace)).status_code == 200
    assert http.get(f"/api/imports/{imp['id']}", headers=bearer(other)).status_code == 404
    http.patch("/api/workspace/settings", json={"default_region": "GB"}, headers=bearer(other))
    assert http.get("/api/workspace", headers=bearer(workspace)).json()["settings"]["default_region"] is None
    # a write key only writes, and only into its own workspace; it never opens the admin API
    assert (
        http.get(f"/api/profiles/{mine}", headers={"Authorization": f"Bearer {workspace['write_key']}"}).status_code
        == 401
    )
    assert http.get(f"/api/profiles/{mine}").status_code == 401
    assert http.get(f"/api/profiles/{mine}", headers=bearer(workspace)).status_code == 200


def test_settings_patch_validates(http, workspace):
    r = http.patch("/api/workspace/settings", json={"default_region": "XX"}, headers=bearer(workspace))
    assert r.status_code == 400 and "default_region" in r.json()["message"]
    r = http.patch("/api/workspace/settings", json={"trait_policies": {"visits": "avg"}}, headers=bearer(workspace))
    assert r.status_code == 400 and "trait_policies" in r.json()["message"]
    r = http.patch("/api/workspace/settings", json={"default_region": "nl"}, headers=bearer(workspace))
    assert r.status_code == 200 and r.json()["settings"]["default_region"] == "NL"
    # the field named whole, a name with a space in it too (an outside probe: "settings.identifiers.a")
    for patch, field in (({"identifier_limits": {"anonymous_id": 0}}, "settings.identifier_limits.anonymous_id"),
                         ({"default_region": "XX"}, "settings.default_region"),
                         ({"messaging": {"timezone": "Mars/Base"}}, "settings.messaging.timezone")):  # fmt: skip
        r = http.patch("/api/workspace/settings", json=patch, headers=bearer(workspace))
        assert r.status_code == 400 and r.json()["field"] == field, (patch, r.json())


def test_openapi_documents_both_apis(http):
    spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for p in ["/v1/batch", "/v1/track", "/v1/identify", "/api/profiles/{profile_id}",
              "/api/profiles/{profile_id}/events",
              "/api/profiles/{profile_id}/export", "/api/events/rejected", "/api/imports"]:  # fmt: skip
        assert p in paths, p
    assert "delete" in paths["/api/profiles/{profile_id}"]


def test_openapi_documents_the_real_errors(http, workspace):
    spec = http.get("/openapi.json").json()
    assert '"422"' not in http.get("/openapi.json").text and "HTTPValidationError" not in spec["components"]["schemas"]
    assert spec["components"]["schemas"]["Error"]["required"] == ["code", "message"]
    admin_ops = [(p, m, op) for p, item in spec["paths"].items() if p.startswith("/api/") for m, op in item.items()]
    assert len(admin_ops) >= 30
    for path, method, op in admin_ops:
        for status in ("400", "401", "404", "409", "413", "429"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, status)
    # the answers are what the document says: a validation error is a 400 in the Error shape, malformed JSON
    # names the body (not a character offset), and a missing key is a 401
    r = http.get("/api/events/rejected", params={"limit": 0}, headers=bearer(workspace))
    assert r.status_code == 400 and r.json()["field"] == "limit" and set(r.json()) == {"code", "message", "field"}
    r = http.patch("/api/workspace/settings", content=b'{"default_region": "NL",,}', headers={
        **bearer(workspace), "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "body" and "(char " not in r.json()["message"]
    assert http.get("/api/workspace").status_code == 401


def test_unusable_email_is_reported_on_the_profile(http, server, workspace):
    post(http, workspace, [{"type": "identify", "userId": "w-1", "messageId": "bad-mail",
                            "traits": {"email": "nobody@@example"}}])  # fmt: skip
    server.settle()
    p = http.get("/api/profiles", params={"user_id": "w-1"}, headers=bearer(workspace)).json()
    assert "email" not in p["identifiers"] and p["traits"]["email"] == "nobody@@example"
    (w,) = p["identifier_warnings"]
    assert w["message_id"] == "bad-mail" and "traits.email" in w["warning"]
