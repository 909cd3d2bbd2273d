"""Mobile push through FCM HTTP v1 with a service account (OAuth JWT bearer grant), device tokens from the
Segment context, dead tokens, and routing between FCM (apps) and web push (browsers)."""

from __future__ import annotations

import orjson
import pytest

from tests.api.verify import user_hash
from tests.conftest import _ASGIThread, wait_until
from tests.standins.fcm import FCMStandIn

PUSH = {"title": "Back in stock", "body": "{{ traits.first_name }}, your size is back", "url": "shop://p/1"}
TEMPLATE = {"kind": "marketing", "topic": "offers", "variants": {"push": PUSH}}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def app_shop(http, server, workspace, monkeypatch):
    fcm = FCMStandIn()
    with _ASGIThread(fcm.app) as srv:
        fcm.base_url = srv.base_url
        monkeypatch.setenv("CHORUS_FCM_ACCOUNT", orjson.dumps(fcm.service_account(srv.base_url)).decode())
        h = bearer(workspace)
        conf = {"type": "fcm", "service_account_env": "CHORUS_FCM_ACCOUNT", "base_url": srv.base_url}
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"push": [conf]}}}, headers=h)
        assert r.status_code == 200, r.text
        r = http.post("/v1/identify", auth=(workspace["write_key"], ""), json={
            "userId": "u1", "traits": {"first_name": "Ana"},
            "context": {"app": {"name": "Shop"}, "device": {"type": "ios", "token": "tok-ana-1"}}})  # fmt: skip
        assert r.status_code == 200
        server.settle()
        assert http.put("/api/templates/restock", json=TEMPLATE, headers=h).status_code == 200
        yield fcm, h, conf


def send(http, h, key):
    r = http.post("/api/messages", json={"to": {"user_id": "u1"}, "template": "restock"},
                  headers={**h, "Idempotency-Key": key})  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


def test_push_to_an_app_through_fcm(http, server, app_shop):
    fcm, h, _ = app_shop
    m1, m2 = send(http, h, "f1"), send(http, h, "f2")
    assert m1["channel"] == "push" and m1["address"] == "tok-ana-1"
    for m in (m1, m2):
        assert wait_status(http, h, m["id"], "sent", "failed", "retrying")["status"] == "sent"
    assert len(fcm.tokens_issued) == 1  # one OAuth token for both sends
    (msg,) = [s for s in fcm.sent if s["data"]["message_id"] == m1["id"]]  # sent in parallel: any order
    assert msg["token"] == "tok-ana-1"
    assert msg["notification"] == {"title": "Back in stock", "body": "Ana, your size is back"}
    assert msg["data"] == {"message_id": m1["id"], "url": "shop://p/1"} and msg["android"]["ttl"] == "86400s"


def test_an_unregistered_token_is_never_used_again(http, server, app_shop):
    fcm, h, _ = app_shop
    fcm.unregistered.add("tok-ana-1")
    m = send(http, h, "u1")
    failed = wait_status(http, h, m["id"], "failed", "sent", "retrying")
    assert failed["status"] == "failed" and "UNREGISTERED" in failed["reason"]
    later = send(http, h, "u2")
    assert later["status"] == "skipped" and "no reachable address" in str(later["choice"])
    profile = http.get(f"/api/profiles/{m['profile_id']}", headers=h).json()
    assert "push:*" not in profile["consent"]


def test_fcm_outage_retries(http, server, app_shop):
    fcm, h, _ = app_shop
    fcm.down = True
    m = send(http, h, "d1")
    retrying = wait_status(http, h, m["id"], "retrying", "failed", "sent")
    assert retrying["status"] == "retrying" and "UNAVAILABLE" in retrying["reason"]


def test_a_browser_goes_through_web_push_and_an_app_through_fcm(http, server, workspace, app_shop, monkeypatch):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from tests.standins.pushservice import PushService

    fcm, h, fcm_conf = app_shop
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_VAPID_KEY", pem.decode())
    monkeypatch.setenv("CHORUS_ALLOW_LOOPBACK_PUSH", "1")
    service = PushService()
    with _ASGIThread(service.app) as srv:
        web = {"type": "webpush", "vapid_private_key_env": "CHORUS_VAPID_KEY", "subject": "mailto:ops@shop.example"}
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"push": [fcm_conf, web]}}},
                       headers=h)  # fmt: skip
        assert r.status_code == 200
        browser = service.browser(srv.base_url, "b1")
        r = http.post("/v1/push/subscriptions", auth=(workspace["write_key"], ""),
                      json={"userId": "u1", "userHash": user_hash(http, h, "u1"),
                            "subscription": browser.subscription})  # fmt: skip
        assert r.status_code == 201
        m = send(http, h, "r1")  # the browser is the newest push address
        assert m["address"] == browser.subscription["endpoint"]
        assert wait_status(http, h, m["id"], "sent", "failed", "retrying")["provider"] == "webpush"
        assert fcm.sent == [] and service.received[0]["payload"]["message_id"] == m["id"]
