"""GET /api/profiles?<kind>=<value> normalises the value as ingestion does (docs/api.md): a declared identifier
is stored trimmed of surrounding spaces, so a lookup with those spaces finds it; user ids are opaque and kept as
sent on both sides."""

from __future__ import annotations


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def test_declared_identifier_lookup_is_trimmed_as_at_ingestion(http, server, workspace):
    r = http.post("/v1/identify", json={"userId": "lt-1", "messageId": "lt-m1", "traits": {"loyalty_id": "  L-1  "}},
                  auth=(workspace["server_write_key"], ""))  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    mine = http.get("/api/profiles", params={"user_id": "lt-1"}, headers=bearer(workspace))
    assert mine.status_code == 200 and "L-1" in mine.json()["identifiers"]["loyalty_id"], mine.text
    for sent in ("  L-1  ", "L-1", "\tL-1\n"):
        r = http.get("/api/profiles", params={"loyalty_id": sent}, headers=bearer(workspace))
        assert r.status_code == 200, (sent, r.text)
        assert r.json()["id"] == mine.json()["id"]
    # user ids are opaque, as at ingestion: " lt-1" is another id
    assert http.get("/api/profiles", params={"user_id": " lt-1"}, headers=bearer(workspace)).status_code == 404


def test_a_blank_declared_identifier_is_a_400_naming_it(http, workspace):
    r = http.get("/api/profiles", params={"loyalty_id": "   "}, headers=bearer(workspace))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "loyalty_id"
