"""Issue 12 §3 through HTTP only: a social audience on Meta follows a browse-abandonment segment. Noor browses
laptops on the web shop, enters the segment, and the worker adds her hashed e-mail to the Custom Audience; she
buys in the store, leaves the segment, and the worker removes her. Each is sent once."""

from __future__ import annotations

import hashlib

from tests.api.test_audiences import AUD, meta  # noqa: F401 - the Meta stand-in fixture
from tests.conftest import wait_until
from tests.e2e.test_segments_scenario import ago

RULE = {"and": [
    {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                   "window": "7d", "times": {"gte": 1}}},
    {"not": {"performed": {"event": "Order Completed", "window": "7d"}}},
]}  # fmt: skip


def test_an_audience_following_a_segment_adds_and_removes_her_on_meta(http, server, workspace, meta):  # noqa: F811
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    providers = [{"type": "meta", "name": "meta", "access_token_env": "CHORUS_META_ADS_TOKEN",
        "base_url": meta.base_url,
                  "retry_base_seconds": 0.01}]  # fmt: skip
    r = http.patch("/api/workspace/settings", json={"audiences": {"providers": providers}}, headers=h)
    assert r.status_code == 200, r.text
    r = http.put("/api/segments/laptop-browsers", json={"name": "Laptop browsers", "rule": RULE}, headers=h)
    assert r.status_code == 201, r.text
    wait_until(lambda: http.get("/api/segments/laptop-browsers", headers=h).json()["status"] == "ready")

    audience = {"name": "laptops-instagram", "provider": "meta", "destination": AUD, "identifiers": ["email"]}
    r = http.post("/api/audiences", json={**audience, "source": {"segment": "nope"}}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "source.segment", r.text
    r = http.post("/api/audiences", json={**audience, "source": {"segment": "laptop-browsers", "interval_seconds": -1}},
                  headers=h)  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "source.interval_seconds", r.text
    r = http.post("/api/audiences", json={**audience, "source": {"segment": "laptop-browsers", "interval_seconds": 1}},
                  headers=h)  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["source"]["segment"] == "laptop-browsers" and r.json()["source"]["following"]
    # its members come from the segment: a caller's list is refused
    r = http.post("/api/audiences/laptops-instagram/sync", json={"profiles": ["p_x"]}, headers=h)
    assert r.status_code == 409 and r.json()["field"] == "profiles", r.text

    # Noor, known by her e-mail, views a laptop on the web shop
    sk, wk = (workspace["server_write_key"], ""), (workspace["write_key"], "")
    identify = {"type": "identify", "userId": "noor", "traits": {"email": "Noor@Example.com"}, "timestamp": ago(400)}
    assert http.post("/v1/batch", auth=sk, json={"batch": [identify]}).status_code == 200
    view = {"type": "track", "userId": "noor", "event": "Product Viewed", "timestamp": ago(300),
            "properties": {"category": "laptops", "sku": "L-1"}}  # fmt: skip
    assert http.post("/v1/batch", auth=wk, json={"batch": [view]}).status_code == 200

    noor = hashlib.sha256(b"noor@example.com").hexdigest()
    wait_until(lambda: meta.emails(AUD) == {noor}, timeout=30)
    shown = wait_until(lambda: (a := http.get("/api/audiences/laptops-instagram", headers=h).json())["members"] and a)
    assert shown["members"] == 1

    # she buys the laptop in the store; the POS export is imported; she leaves the segment and the audience
    when = ago(-2)[:19].replace("T", " ")
    pos = f"receipt_no,timestamp,email,revenue,currency,store\nR-9,{when},noor@example.com,1299.00,EUR,Amsterdam\n"
    r = http.post("/api/imports", headers=h, data={"source": "store"},
                  files={"file": ("pos.csv", pos.encode(), "text/csv")})  # fmt: skip
    assert r.status_code == 200 and r.json()["imported"] == 1, r.text
    wait_until(lambda: meta.emails(AUD) == set(), timeout=30)
    wait_until(lambda: not http.get("/api/audiences/laptops-instagram", headers=h).json()["source"]["changes_pending"])

    # one add and one removal reached Meta, each with her one row: no double sends
    sent = [(q["method"], q["params"]["payload"]) for q in meta.requests]
    assert [m for m, _p in sent] == ["POST", "DELETE"], sent
    assert all(noor in str(p) for _m, p in sent)
    # a sync asked for now sends nothing more
    r = http.post("/api/audiences/laptops-instagram/sync", json={}, headers=h)
    assert r.status_code == 200 and (r.json()["added"], r.json()["removed"]) == (0, 0), r.text
    assert len(meta.requests) == 2
