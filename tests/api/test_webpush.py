"""Web push end to end: a browser subscription, VAPID-signed and RFC 8291-encrypted delivery that the push
service stand-in verifies and decrypts, and an expired subscription that is dropped."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.api.verify import user_hash
from tests.conftest import _ASGIThread, wait_until
from tests.standins.pushservice import PushService, b64u

TEMPLATE = {"kind": "marketing", "topic": "offers", "variants": {
    "push": {"title": "Back in stock", "body": "{{ traits.first_name }}, your {{ data.item }} is back",
             "url": "https://shop.example/p/1", "image": "https://shop.example/i/1.jpg"}}}  # fmt: skip


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def push(http, server, workspace, monkeypatch):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_VAPID_KEY", pem.decode())
    monkeypatch.setenv("CHORUS_ALLOW_LOOPBACK_PUSH", "1")  # the stand-in push service listens on 127.0.0.1
    service = PushService()
    with _ASGIThread(service.app) as srv:
        service.base_url = srv.base_url
        h = bearer(workspace)
        conf = {"type": "webpush", "vapid_private_key_env": "CHORUS_VAPID_KEY", "subject": "mailto:ops@shop.example"}
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"push": [conf]}}}, headers=h)
        assert r.status_code == 200, r.text
        r = http.post("/v1/identify", auth=(workspace["write_key"], ""),
                      json={"userId": "u1", "traits": {"first_name": "Ana"}})  # fmt: skip
        server.settle()
        assert http.put("/api/templates/restock", json=TEMPLATE, headers=h).status_code == 200
        service.vapid_public = b64u(key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint))  # fmt: skip
        yield service, h


def send(http, h, key):
    body = {"to": {"user_id": "u1"}, "template": "restock", "data": {"item": "red shoes"}}
    r = http.post("/api/messages", json=body, headers={**h, "Idempotency-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


def test_web_push_is_encrypted_signed_and_decryptable(http, server, workspace, push):
    service, h = push
    wk = (workspace["write_key"], "")
    assert http.get("/v1/push/vapid-key", auth=wk).json() == {"publicKey": service.vapid_public}
    browser = service.browser(service.base_url, "b1")
    r = http.post("/v1/push/subscriptions", auth=wk,
                  json={"userId": "u1", "userHash": user_hash(http, h, "u1"), "subscription": browser.subscription})
    assert r.status_code == 201, r.text
    m = send(http, h, "p1")
    assert m["channel"] == "push" and m["address"] == browser.subscription["endpoint"]
    sent = wait_status(http, h, m["id"], "sent", "failed", "retrying")
    assert sent["status"] == "sent", sent
    got = service.received[0]
    assert got["payload"] == {"title": "Back in stock", "body": "Ana, your red shoes is back",
                              "url": "https://shop.example/p/1", "image": "https://shop.example/i/1.jpg",
                              "message_id": m["id"]}  # fmt: skip
    assert f"k={service.vapid_public}" in got["headers"]["authorization"].replace(" ", "")
    assert int(got["headers"]["ttl"]) == 86400 and got["headers"]["urgency"] == "normal"


def test_an_expired_subscription_is_dropped(http, server, workspace, push):
    service, h = push
    wk = (workspace["write_key"], "")
    browser = service.browser(service.base_url, "b2")
    http.post("/v1/push/subscriptions", auth=wk,
              json={"userId": "u1", "userHash": user_hash(http, h, "u1"), "subscription": browser.subscription})
    service.gone.add("b2")
    m = send(http, h, "g1")
    failed = wait_status(http, h, m["id"], "failed", "sent", "retrying")
    assert failed["status"] == "failed" and "410" in failed["reason"]
    later = send(http, h, "g2")
    assert later["status"] == "skipped" and "no reachable address" in str(later["choice"])  # the browser is gone
    profile = http.get(f"/api/profiles/{m['profile_id']}", headers=h).json()
    assert "push:*" not in profile["consent"]  # one dead browser is not an opt-out


def test_bad_subscriptions_are_refused_with_the_field(http, workspace, push):
    wk = (workspace["write_key"], "")
    uh = user_hash(http, push[1], "u1")
    sub = {"endpoint": "http://push.example/x", "keys": {"p256dh": "a", "auth": "b"}}
    r = http.post("/v1/push/subscriptions", auth=wk, json={"userId": "u1", "userHash": uh, "subscription": sub})
    assert r.status_code == 400 and r.json()["field"] == "subscription.endpoint"
    sub["endpoint"] = "https://push.example/x"
    del sub["keys"]["auth"]
    r = http.post("/v1/push/subscriptions", auth=wk, json={"userId": "u1", "userHash": uh, "subscription": sub})
    assert r.status_code == 400 and r.json()["field"] == "subscription.keys.auth"
    r = http.post("/v1/push/subscriptions", auth=("wk_nope", ""), json={"userId": "u1", "subscription": sub})
    assert r.status_code == 401


def test_subscriptions_are_guarded(http, workspace, push, monkeypatch):
    service, h = push
    wk = (workspace["write_key"], "")
    browser = service.browser(service.base_url, "b9")
    monkeypatch.delenv("CHORUS_ALLOW_LOOPBACK_PUSH")
    r = http.post("/v1/push/subscriptions", auth=wk, json={"anonymousId": "a9", "subscription": browser.subscription})
    assert r.status_code == 400 and "public push service" in r.json()["message"]  # no requests to local services
    monkeypatch.setenv("CHORUS_ALLOW_LOOPBACK_PUSH", "1")
    # identity verification is on by default: only the brand's server (userHash) can say whose browser it is
    r = http.post("/v1/push/subscriptions", auth=wk, json={"userId": "u1", "subscription": browser.subscription})
    assert r.status_code == 401 and r.json()["field"] == "userHash"
    good = user_hash(http, h, "u1")
    r = http.post("/v1/push/subscriptions", auth=wk,
                  json={"userId": "u1", "userHash": good, "subscription": browser.subscription})  # fmt: skip
    assert r.status_code == 201
    long = {**browser.subscription, "endpoint": "https://push.example/" + "x" * 400}
    r = http.post("/v1/push/subscriptions", auth=wk, json={"userId": "u1", "userHash": good, "subscription": long})
    assert r.status_code == 400 and r.json()["field"] == "subscription.endpoint"


@pytest.mark.parametrize("key", [None, "nope", "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"])
def test_vapid_key_without_a_usable_key_is_a_503_that_names_no_secret(http, server, workspace, push, monkeypatch,
                                                                       caplog, key):  # fmt: skip
    """The variable unset (or holding something that is not a key) on the API server: the server is not configured
    for web push, a 503 in Chorus' words, not a 500; the reason, by variable and setting, goes to the log only."""
    if key is None:
        monkeypatch.delenv("CHORUS_VAPID_KEY")
    else:
        monkeypatch.setenv("CHORUS_VAPID_KEY", key)
    with caplog.at_level("WARNING", logger="chorus.api.push"):
        r = http.get("/v1/push/vapid-key", auth=(workspace["write_key"], ""))
    assert r.status_code == 503, r.text
    body = r.json()
    assert body == {"code": "push_not_configured",
                    "message": "this server is not configured for web push (its VAPID key is missing or unusable); "
                               "the server's log says why"}  # fmt: skip
    logged = [rec.getMessage() for rec in caplog.records if rec.name == "chorus.api.push"]
    why = "which is not set" if key is None else "is not a P-256 private key"
    assert any("CHORUS_VAPID_KEY" in m and "push[0].vapid_private_key_env" in m and why in m for m in logged), logged
    assert not any(key and key in m for m in logged)  # the secret itself is never logged
