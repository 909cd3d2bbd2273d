"""WhatsApp and Messenger through a stand-in of Meta's Graph API; its signed webhooks (statuses, STOP/START,
replies) and verification handshake; outages and fail-over."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import _ASGIThread, wait_until
from tests.standins.meta import (
    MetaStandIn,
    messenger_notification,
    ms_delivery,
    ms_read,
    ms_text,
    sign,
    wa_status,
    wa_text,
    whatsapp_notification,
)

PHONE, WA_ID, PSID = "+31612345678", "31612345678", "2400000000000001"
APP_SECRET, VERIFY_TOKEN = "0123456789abcdef0123456789abcdef", "chorus-verify-7f3a"
TEXT = "Hi {{ traits.first_name }}, your order {{ data.order }} has shipped"


@pytest.fixture
def meta():
    """The Graph API stand-in (tests/standins/meta.py) on a loopback port."""
    standin = MetaStandIn("EAAG-test-token")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def wa_conf(meta, **over):
    conf = {
        "type": "whatsapp", "name": "whatsapp", "phone_number_id": meta.phone_number_id,
        "access_token_env": "CHORUS_META_TOKEN", "app_secret_env": "CHORUS_META_APP_SECRET",
            "verify_token": VERIFY_TOKEN,
        "base_url": meta.base_url,
    }  # fmt: skip
    return {**conf, **over}


def ms_conf(meta, **over):
    conf = {
        "type": "messenger", "name": "messenger", "access_token_env": "CHORUS_META_TOKEN",
        "app_secret_env": "CHORUS_META_APP_SECRET", "base_url": meta.base_url,
    }  # fmt: skip
    return {**conf, **over}


def set_providers(http, h, whatsapp=None, messenger=None):
    providers = {k: v for k, v in (("whatsapp", whatsapp), ("messenger", messenger)) if v is not None}
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": providers}}, headers=h)
    assert r.status_code == 200, r.text


@pytest.fixture
def shop(http, server, workspace, meta, monkeypatch):
    monkeypatch.setenv("CHORUS_META_TOKEN", meta.access_token)
    monkeypatch.setenv("CHORUS_META_APP_SECRET", APP_SECRET)
    h = bearer(workspace)
    set_providers(http, h, [wa_conf(meta)], [ms_conf(meta)])
    r = http.post(
        "/v1/identify", auth=(workspace["server_write_key"], ""),
        json={"userId": "u7", "traits": {"phone": PHONE, "first_name": "Noor"},
              "context": {"externalIds": [{"type": "messenger_psid", "id": PSID}]}},
    )  # fmt: skip
    assert r.status_code == 200
    server.settle()
    tpl = {"variants": {"whatsapp": {"text": TEXT}, "messenger": {"text": TEXT}}}
    assert http.put("/api/templates/shipped", json=tpl, headers=h).status_code == 200
    params = ["{{ traits.first_name }}", "{{ data.order }}"]
    tpl = {"variants": {"whatsapp": {"template": {"name": "order_update", "language": "en_US", "parameters": params}}}}
    assert http.put("/api/templates/shipped_tpl", json=tpl, headers=h).status_code == 200
    return h


def send(http, h, key, channel, template="shipped", **body):
    payload = {"to": {"phone": PHONE}, "template": template, "data": {"order": "A-17"}, "channel": channel, **body}
    r = http.post("/api/messages", json=payload, headers={**h, "Idempotency-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


DONE = ("sent", "failed", "bounced", "retrying")


def sent(http, h, meta, key, channel, **body):
    m = send(http, h, key, channel, **body)
    done = wait_status(http, h, m["id"], *DONE)
    assert done["status"] == "sent", done
    (req,) = [s for s in meta.sent if s["id"] == done["provider_message_id"]]
    return done, req


def notify(http, workspace, payload, secret=APP_SECRET, headers=None):
    body = orjson.dumps(payload)
    return http.post(f"/webhooks/meta/{workspace['id']}", content=body, headers=headers or sign(secret, body))


def history(http, h, mid):
    return http.get(f"/api/messages/{mid}", headers=h).json()["history"]


def profile(http, h, server, pid):
    server.settle()
    return http.get(f"/api/profiles/{pid}", headers=h).json()


# -- sending ------------------------------------------------------------------------------------------------------
def test_whatsapp_text_in_the_window_a_template_outside_it(http, server, shop, meta):
    meta.within_24h.add(WA_ID)
    done, req = sent(http, shop, meta, "w1", "whatsapp")
    assert req["path"] == f"/v21.0/{meta.phone_number_id}/messages"
    assert req["body"] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID, "type": "text",
        "text": {"body": "Hi Noor, your order A-17 has shipped", "preview_url": False},
    }  # fmt: skip
    assert done["provider"] == "whatsapp" and done["provider_message_id"].startswith("wamid.")
    assert meta.requests[-1]["authorization"] == f"Bearer {meta.access_token}"

    meta.within_24h.clear()  # a day later: free-form text is refused, an approved template goes out
    m = send(http, shop, "w2", "whatsapp")
    failed = wait_status(http, shop, m["id"], *DONE)
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "131047" in failed["reason"] and "approved template" in failed["reason"], failed
    assert "whatsapp:*" not in profile(http, shop, server, m["profile_id"]).get("consent", {})  # not a bounce

    done, req = sent(http, shop, meta, "w3", "whatsapp", template="shipped_tpl")
    assert req["body"] == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID, "type": "template",
        "template": {
            "name": "order_update", "language": {"code": "en_US"},
            "components": [{"type": "body", "parameters": [{"type": "text", "text": "Noor"},
                                                            {"type": "text", "text": "A-17"}]}],
        },
    }  # fmt: skip
    assert len(meta.sent) == 2


def test_whatsapp_refusals(http, server, shop, meta):
    meta.templates["order_update"] = {"en_US": 1}  # the approved template has one parameter: Meta's reason
    m = send(http, shop, "b1", "whatsapp", template="shipped_tpl")
    failed = wait_status(http, shop, m["id"], *DONE)
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "WhatsApp 400 error 132000" in failed["reason"] and "Number of parameters" in failed["reason"], failed

    meta.templates["order_update"] = {"en_US": 2}
    meta.not_on_whatsapp.add(WA_ID)
    m = send(http, shop, "b2", "whatsapp", template="shipped_tpl")
    bounced = wait_status(http, shop, m["id"], *DONE)
    assert bounced["status"] == "bounced" and "131026" in bounced["reason"], bounced
    assert profile(http, shop, server, m["profile_id"])["consent"]["whatsapp:*"]["status"] == "denied"
    skipped = send(http, shop, "b3", "whatsapp", template="shipped_tpl", kind="transactional")
    assert skipped["status"] == "skipped" and "whatsapp:* denied" in str(skipped["choice"])
    assert send(http, shop, "b4", "messenger")["status"] == "queued"  # Messenger is another channel


def test_messenger_with_and_without_a_tag(http, server, shop, meta):
    meta.within_24h.add(PSID)
    done, req = sent(http, shop, meta, "m1", "messenger")
    assert req["path"] == "/v21.0/me/messages"
    assert req["body"] == {
        "recipient": {"id": PSID}, "messaging_type": "RESPONSE",
        "message": {"text": "Hi Noor, your order A-17 has shipped"},
    }  # fmt: skip
    assert done["provider_message_id"].startswith("m_")

    meta.within_24h.clear()
    m = send(http, shop, "m2", "messenger")
    failed = wait_status(http, shop, m["id"], *DONE)
    assert failed["status"] == "failed" and "2018278" in failed["reason"] and "message tag" in failed["reason"]

    set_providers(http, shop, messenger=[ms_conf(meta, tag="POST_PURCHASE_UPDATE", page_id=meta.page_id)])
    done, req = sent(http, shop, meta, "m3", "messenger")
    assert req["path"] == f"/v21.0/{meta.page_id}/messages"
    assert req["body"] == {
        "recipient": {"id": PSID}, "messaging_type": "MESSAGE_TAG",
        "message": {"text": "Hi Noor, your order A-17 has shipped"}, "tag": "POST_PURCHASE_UPDATE",
    }  # fmt: skip

    meta.unavailable.add(PSID)
    m = send(http, shop, "m4", "messenger")
    bounced = wait_status(http, shop, m["id"], *DONE)
    assert bounced["status"] == "bounced" and "isn't available right now" in bounced["reason"], bounced
    assert profile(http, shop, server, m["profile_id"])["consent"]["messenger:*"]["status"] == "denied"


# -- webhooks -----------------------------------------------------------------------------------------------------
def test_status_notifications_are_recorded_once(http, server, workspace, shop, meta):
    meta.within_24h.update({WA_ID, PSID})
    wa, req = sent(http, shop, meta, "s1", "whatsapp")
    statuses = [wa_status(req["id"], "sent", WA_ID), wa_status(req["id"], "delivered", WA_ID),
                wa_status(req["id"], "read", WA_ID)]  # fmt: skip
    note = whatsapp_notification({"statuses": statuses})
    for _ in range(2):  # Meta retries a notification it thinks failed
        r = notify(http, workspace, note)
        assert r.status_code == 200, r.text
    assert notify(http, workspace, whatsapp_notification({"statuses": statuses[1:2]})).json()["applied"] == 0
    assert [s["status"] for s in history(http, shop, wa["id"])] == ["queued", "sent", "delivered", "opened"]
    assert http.get(f"/api/messages/{wa['id']}", headers=shop).json()["status"] == "delivered"

    ms, mreq = sent(http, shop, meta, "s2", "messenger")
    for _ in range(2):
        note = messenger_notification(
            meta.page_id, ms_delivery(PSID, meta.page_id, mreq["id"]), ms_read(PSID, meta.page_id)
        )
        assert notify(http, workspace, note).status_code == 200
    assert [s["status"] for s in history(http, shop, ms["id"])] == ["queued", "sent", "delivered", "opened"]

    failed, freq = sent(http, shop, meta, "s3", "whatsapp")
    err = {"code": 131026, "title": "Message undeliverable", "message": "Message undeliverable",
           "error_data": {"details": "Message Undeliverable."}}  # fmt: skip
    note = whatsapp_notification({"statuses": [wa_status(freq["id"], "failed", WA_ID, [err])]})
    assert notify(http, workspace, note).json()["applied"] == 1
    assert notify(http, workspace, note).json()["applied"] == 0
    got = http.get(f"/api/messages/{failed['id']}", headers=shop).json()
    assert got["status"] == "bounced" and "131026" in got["reason"], got
    assert [s["status"] for s in got["history"]] == ["queued", "sent", "bounced"]
    assert profile(http, shop, server, got["profile_id"])["consent"]["whatsapp:*"]["status"] == "denied"

    late = whatsapp_notification({"statuses": [wa_status(freq["id"], "delivered", WA_ID)]})
    assert notify(http, workspace, late).json()["applied"] == 0  # never moved back from bounced
    unknown = whatsapp_notification({"statuses": [wa_status("wamid.NOT-OURS", "delivered", WA_ID)]})
    assert notify(http, workspace, unknown).json() == {"ok": True, "applied": 0}
    garbage = {"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"statuses": "x"}}]}, 7]}
    assert notify(http, workspace, garbage).status_code == 200


def test_a_status_that_arrives_before_the_send_is_recorded_is_applied_when_it_is(http, server, workspace, shop, meta):
    import httpx

    meta.within_24h.add(WA_ID)
    answers = []

    def early(wamid):  # Meta calls back before its answer to the send has reached the worker
        note = orjson.dumps(whatsapp_notification({"statuses": [wa_status(wamid, "delivered", WA_ID)]}))
        with httpx.Client(base_url=server.base_url) as client:
            answers.append(client.post(f"/webhooks/meta/{workspace['id']}", content=note,
                                       headers=sign(APP_SECRET, note)).json())  # fmt: skip

    meta.before_answer = early
    m = send(http, shop, "early", "whatsapp")
    done = wait_status(http, shop, m["id"], "delivered", "failed", "retrying")
    assert answers == [{"ok": True, "applied": 0}]  # held: the message did not know its wamid yet
    assert done["status"] == "delivered", done
    assert [s["status"] for s in done["history"]] == ["queued", "sent", "delivered"]
    server.settle()
    timeline = http.get(f"/api/profiles/{m['profile_id']}/events", headers=shop).json()["events"]
    assert [e["event"] for e in timeline if e.get("event") == "Message Delivered"] == ["Message Delivered"]


def test_whatsapp_stop_start_and_replies(http, server, workspace, shop, meta):
    meta.within_24h.add(WA_ID)
    m, _ = sent(http, shop, meta, "i1", "whatsapp")
    reply = whatsapp_notification(wa_text(WA_ID, "Thanks, see you!"))
    for _ in range(2):
        assert notify(http, workspace, reply).status_code == 200
    hist = history(http, shop, m["id"])
    assert [h["status"] for h in hist].count("replied") == 1
    assert hist[-1] == {**hist[-1], "status": "replied", "text": "Thanks, see you!"}

    stop = whatsapp_notification(wa_text(WA_ID, " Stop ", ago=5))
    assert notify(http, workspace, stop).json()["applied"] == 1
    for key, kind in (("i2", "marketing"), ("i3", "transactional")):
        blocked = send(http, shop, key, "whatsapp", kind=kind)
        assert blocked["status"] == "skipped" and "whatsapp:* denied" in str(blocked["choice"]), blocked
    assert send(http, shop, "i4", "messenger")["status"] == "queued"  # only WhatsApp was stopped

    assert notify(http, workspace, stop).status_code == 200  # a retry: the same consent event, stored once
    notify(http, workspace, whatsapp_notification(wa_text(WA_ID, "START")))
    assert send(http, shop, "i5", "whatsapp")["status"] == "queued"
    p = profile(http, shop, server, m["profile_id"])
    assert p["consent"]["whatsapp:*"]["status"] == "granted"
    assert p["channels"]["whatsapp"]["count"] >= 3
    events = http.get(f"/api/profiles/{p['id']}/events", headers=shop, params={"channel": "whatsapp"}).json()
    changes = [e["properties"]["status"] for e in events["events"] if e.get("event") == "Consent Updated"]
    assert sorted(changes) == ["denied", "granted"]

    stranger = whatsapp_notification(wa_text("31687654321", "Hello, do you ship to Ghent?"))
    assert notify(http, workspace, stranger).json()["applied"] == 1
    server.settle()
    p = http.get("/api/profiles", params={"phone": "+31687654321"}, headers=shop).json()
    events = http.get(f"/api/profiles/{p['id']}/events", headers=shop).json()["events"]
    assert [e["properties"]["text"] for e in events if e.get("event") == "Message Received"] == [
        "Hello, do you ship to Ghent?"
    ]


def test_messenger_stop_start_and_replies(http, server, workspace, shop, meta):
    meta.within_24h.add(PSID)
    m, _ = sent(http, shop, meta, "n1", "messenger")
    note = messenger_notification(meta.page_id, ms_text(PSID, meta.page_id, "Where is my parcel?"))
    for _ in range(2):
        assert notify(http, workspace, note).status_code == 200
    hist = history(http, shop, m["id"])
    assert [h["status"] for h in hist].count("replied") == 1 and hist[-1]["text"] == "Where is my parcel?"

    echo = ms_text(meta.page_id, PSID, "STOP")
    echo["message"]["is_echo"] = True  # the page's own message, echoed: not the person's opt-out
    assert notify(http, workspace, messenger_notification(meta.page_id, echo)).json()["applied"] == 0

    notify(http, workspace, messenger_notification(meta.page_id, ms_text(PSID, meta.page_id, "unsubscribe")))
    blocked = send(http, shop, "n2", "messenger", kind="transactional")
    assert blocked["status"] == "skipped" and "messenger:* denied" in str(blocked["choice"])
    notify(http, workspace, messenger_notification(meta.page_id, ms_text(PSID, meta.page_id, "start")))
    assert send(http, shop, "n3", "messenger")["status"] == "queued"
    assert profile(http, shop, server, m["profile_id"])["consent"]["messenger:*"]["status"] == "granted"


def test_verification_handshake(http, workspace, shop):
    path = f"/webhooks/meta/{workspace['id']}"
    q = {"hub.mode": "subscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1158201444"}
    r = http.get(path, params=q)
    assert r.status_code == 200 and r.text == "1158201444" and r.headers["content-type"].startswith("text/plain")
    assert http.get(path, params={**q, "hub.verify_token": "guess-guess"}).status_code == 403
    assert http.get(path, params={**q, "hub.mode": "unsubscribe"}).status_code == 403
    assert http.get(path, params={k: v for k, v in q.items() if k != "hub.verify_token"}).status_code == 403
    assert http.get("/webhooks/meta/ws_unknown", params=q).status_code == 403


def test_forged_notifications_change_nothing(http, server, workspace, shop, meta):
    meta.within_24h.add(WA_ID)
    m, req = sent(http, shop, meta, "f1", "whatsapp")
    note = whatsapp_notification({"statuses": [wa_status(req["id"], "delivered", WA_ID)]})
    body = orjson.dumps(note)
    assert notify(http, workspace, note, secret="another-apps-secret").status_code == 403
    assert notify(http, workspace, note, headers={"Content-Type": "application/json"}).status_code == 403
    tampered = sign(APP_SECRET, body + b" ")
    assert http.post(f"/webhooks/meta/{workspace['id']}", content=body, headers=tampered).status_code == 403
    assert http.post("/webhooks/meta/ws_unknown", content=body, headers=sign(APP_SECRET, body)).status_code == 403
    stop = whatsapp_notification(wa_text(WA_ID, "STOP"))
    assert notify(http, workspace, stop, secret="another-apps-secret").status_code == 403
    assert [h["status"] for h in history(http, shop, m["id"])] == ["queued", "sent"]
    assert "whatsapp:*" not in profile(http, shop, server, m["profile_id"]).get("consent", {})
    assert notify(http, workspace, note).status_code == 200


# -- failures -----------------------------------------------------------------------------------------------------
def test_outage_is_retried_and_a_bad_token_fails_over(http, server, shop, meta, monkeypatch):
    meta.within_24h.update({WA_ID, PSID})
    meta.down = True
    m = send(http, shop, "o1", "whatsapp")
    retrying = wait_status(http, shop, m["id"], *DONE)
    assert retrying["status"] == "retrying" and "WhatsApp 500 error 2" in retrying["reason"], retrying
    m = send(http, shop, "o2", "messenger")
    assert wait_status(http, shop, m["id"], *DONE)["status"] == "retrying"
    meta.down = False

    monkeypatch.setenv("CHORUS_META_EXPIRED", "EAAG-expired")
    primary = wa_conf(meta, name="primary", access_token_env="CHORUS_META_EXPIRED")
    set_providers(http, shop, [primary, wa_conf(meta, name="backup")])
    done, req = sent(http, shop, meta, "o3", "whatsapp")
    assert done["provider"] == "backup" and req["body"]["to"] == WA_ID
    refused = [r for r in meta.requests if r["authorization"] == "Bearer EAAG-expired"]
    assert len(refused) == 1

    set_providers(http, shop, [primary])  # no other provider: the token error is retried, never a failure
    m = send(http, shop, "o4", "whatsapp")
    retrying = wait_status(http, shop, m["id"], *DONE)
    assert retrying["status"] == "retrying" and "190" in retrying["reason"], retrying


def test_settings_name_what_is_wrong(http, shop, meta):
    cases = [
        ({"whatsapp": [wa_conf(meta, phone_number_id="+1555")]}, "providers.whatsapp[0].phone_number_id"),
        ({"whatsapp": [wa_conf(meta, access_token_env=None)]}, "providers.whatsapp[0].access_token_env is required"),
        ({"whatsapp": [wa_conf(meta, api_version="21")]}, "providers.whatsapp[0].api_version"),
        ({"whatsapp": [wa_conf(meta, tag="ACCOUNT_UPDATE")]}, "providers.whatsapp[0].tag is not a WhatsApp setting"),
        ({"messenger": [ms_conf(meta, tag="PROMOTION")]}, "providers.messenger[0].tag must be one of"),
        ({"messenger": [ms_conf(meta, verify_token="short")]}, "providers.messenger[0].verify_token"),
        ({"sms": [ms_conf(meta)]}, "providers.sms[0] is a messenger provider"),
    ]
    for providers, message in cases:
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": providers}}, headers=shop)
        assert r.status_code == 400 and message in r.json()["message"], (message, r.text)


def test_a_stranger_message_the_door_refuses_is_kept_with_its_reason(http, server, workspace, shop, meta):
    """A WhatsApp text Chorus cannot store (a NUL in it) from someone it never wrote to: kept in the rejected events
    with its reason, not dropped; Meta still gets its 200 (a retry would bring the same text)."""
    stranger = whatsapp_notification(wa_text("31687654329", "hi\x00there"))
    r = notify(http, workspace, stranger)
    assert r.status_code == 200 and r.json()["applied"] == 0
    rows = http.get("/api/events/rejected", headers=shop).json()["rejected"]
    assert [(r["field"], "NUL" in r["reason"]) for r in rows] == [("properties.text", True)], rows
