"""Erasing Zoe (user id "<n>") must not touch Bob, an unrelated customer whose *loyalty id* happens to be the same
number (review: the cleanup by value took any identifier of another profile whose value equalled one of hers, under
any kind, for her claim, dropped it with its links, and scrubbed every equal value, numbers too, from his events)."""

from __future__ import annotations

import secrets

from tests.conftest import wait_until


def test_unrelated_profile_with_equal_value_under_another_kind_is_untouched(http, server, workspace):
    admin = {"Authorization": f"Bearer {workspace['api_key']}"}
    sk = (workspace["server_write_key"], "")
    n = str(100000 + secrets.randbelow(800000))
    bob = f"bob{secrets.token_hex(4)}"
    r = http.post("/v1/batch", auth=sk, json={"batch": [
        {"type": "identify", "userId": n, "traits": {"email": f"zoe{n}@example.com"}},
        {"type": "identify", "userId": bob, "traits": {"loyalty_id": n, "email": f"{bob}@example.com"}},
        {"type": "track", "userId": bob, "event": "Order", "properties": {"order_total": int(n), "note": "x"}},
    ]})
    assert r.status_code == 200, r.text
    server.settle()
    wait_until(lambda: http.get("/api/profiles", params={"user_id": bob}, headers=admin).status_code == 200)
    zoe = http.get("/api/profiles", params={"user_id": n}, headers=admin).json()
    before = http.get("/api/profiles", params={"user_id": bob}, headers=admin).json()
    assert before["identifiers"]["loyalty_id"] == [n]
    assert http.delete(f"/api/profiles/{zoe['id']}", headers=admin).status_code == 200
    server.settle()
    after = http.get("/api/profiles", params={"user_id": bob}, headers=admin).json()
    assert after["identifiers"].get("loyalty_id") == [n], after["identifiers"]
    assert after["traits"].get("loyalty_id") == n, after["traits"]
    evs = http.get(f"/api/profiles/{after['id']}/events", headers=admin).text
    assert f'"order_total":{n}' in evs.replace(" ", ""), evs[:1500]
