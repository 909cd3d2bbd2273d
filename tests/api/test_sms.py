"""SMS through a stand-in of Twilio's Messages API; signed status callbacks and inbound STOP/START/HELP/replies.

Signatures in these tests are computed with the official `twilio` library's RequestValidator, not with Chorus'
own code, so a mismatch between the two would fail here.
"""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from tests.conftest import wait_until

PHONE = "+31612345678"


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def sms_shop(http, server, workspace, twilio, monkeypatch):
    monkeypatch.setenv("CHORUS_TWILIO_TOKEN", twilio.auth_token)
    h = bearer(workspace)
    conf = {
        "type": "twilio", "name": "twilio", "account_sid": twilio.account_sid, "auth_token_env": "CHORUS_TWILIO_TOKEN",
        "from": "+15005550006", "base_url": twilio.base_url,
    }  # fmt: skip
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"sms": [conf]}}}, headers=h)
    assert r.status_code == 200, r.text
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                  json={"userId": "u9", "traits": {"phone": PHONE, "first_name": "Noor"}})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    tpl = {"variants": {"sms": {"text": "Hi {{ traits.first_name }}, your order {{ data.order }} has shipped"}}}
    assert http.put("/api/templates/shipped", json=tpl, headers=h).status_code == 200
    return h


def send(http, h, key, **body):
    payload = {"to": {"phone": PHONE}, "template": "shipped", "data": {"order": "A-17"}, **body}
    return http.post("/api/messages", json=payload, headers={**h, "Idempotency-Key": key})


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


def twilio_post(http, server, twilio, path, params, token=None):
    url = server.base_url + path
    sig = RequestValidator(token or twilio.auth_token).compute_signature(url, params)
    return http.post(path, data=params, headers={"X-Twilio-Signature": sig})


def test_sms_is_sent_and_status_callbacks_are_recorded(http, server, workspace, twilio, sms_shop):
    m = send(http, sms_shop, "s1").json()
    assert m["status"] == "queued" and m["channel"] == "sms" and m["content"]["segments"] == 1
    sent = wait_status(http, sms_shop, m["id"], "sent", "failed", "retrying")
    assert sent["status"] == "sent", sent
    assert len(twilio.sent) == 1
    req = twilio.sent[0]
    assert req["To"] == PHONE and req["From"] == "+15005550006"
    assert req["Body"] == "Hi Noor, your order A-17 has shipped"
    path = f"/webhooks/twilio/{workspace['id']}/status"
    assert req["StatusCallback"] == f"{server.base_url}{path}?m={m['id']}"  # finds it before the SID is recorded
    assert sent["provider_message_id"] == req["sid"]
    path += f"?m={m['id']}"
    params = {"MessageSid": req["sid"], "MessageStatus": "delivered", "AccountSid": twilio.account_sid,
              "From": "+15005550006", "To": PHONE, "ApiVersion": "2010-04-01"}  # fmt: skip
    forged = http.post(path, data=params, headers={"X-Twilio-Signature": "bm9wZQ=="})
    assert forged.status_code == 403
    assert twilio_post(http, server, twilio, path, params, token="another-account-token").status_code == 403
    assert twilio_post(http, server, twilio, path, params).status_code == 200
    hist = http.get(f"/api/messages/{m['id']}", headers=sms_shop).json()["history"]
    assert [h["status"] for h in hist] == ["queued", "sent", "delivered"]
    server.settle()
    events = http.get(f"/api/profiles/{m['profile_id']}/events", headers=sms_shop, params={"channel": "sms"}).json()
    assert {"Message Queued", "Message Sent", "Message Delivered"} <= {e.get("event") for e in events["events"]}


def test_stop_start_help_and_replies(http, server, workspace, twilio, sms_shop):
    inbound = f"/webhooks/twilio/{workspace['id']}/inbound"
    base = {"AccountSid": twilio.account_sid, "From": PHONE, "To": "+15005550006", "NumMedia": "0"}
    m = send(http, sms_shop, "r1").json()
    wait_status(http, sms_shop, m["id"], "sent")
    r = twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMin1", "Body": "Thanks, see you!"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/xml")
    hist = http.get(f"/api/messages/{m['id']}", headers=sms_shop).json()["history"]
    assert hist[-1] == {**hist[-1], "status": "replied", "text": "Thanks, see you!"}

    r = twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMin2", "Body": "help"})
    assert "<Message>Reply STOP" in r.text

    r = twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMin3", "Body": " Stop "})
    assert r.status_code == 200 and "<Message>" not in r.text  # Twilio confirms STOP itself
    for key, kind in (("r2", "marketing"), ("r3", "transactional")):
        blocked = send(http, sms_shop, key, kind=kind).json()
        assert blocked["status"] == "skipped" and "sms:* denied" in str(blocked["choice"]), blocked

    twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMin4", "Body": "START"})
    again = send(http, sms_shop, "r4").json()
    assert again["status"] == "queued"
    server.settle()
    profile = http.get(f"/api/profiles/{m['profile_id']}", headers=sms_shop).json()
    assert profile["consent"]["sms:*"]["status"] == "granted"
    assert profile["channels"]["sms"]["count"] >= 3  # the person's replies and keywords are activity on sms


def test_unknown_sender_becomes_a_profile_with_its_opt_out(http, server, workspace, twilio, sms_shop):
    inbound = f"/webhooks/twilio/{workspace['id']}/inbound"
    params = {"AccountSid": twilio.account_sid, "From": "+31687654321", "To": "+15005550006", "MessageSid": "SMx",
              "Body": "STOP"}  # fmt: skip
    assert twilio_post(http, server, twilio, inbound, params).status_code == 200
    server.settle()
    p = http.get("/api/profiles", params={"phone": "+31687654321"}, headers=sms_shop).json()
    assert p["consent"]["sms:*"]["status"] == "denied"


def test_twilio_refusal_is_a_bounce_and_an_outage_a_retry(http, server, twilio, sms_shop):
    twilio.opted_out.add(PHONE)
    m = send(http, sms_shop, "e1", kind="transactional").json()
    bounced = wait_status(http, sms_shop, m["id"], "bounced", "failed", "sent")
    assert bounced["status"] == "bounced" and "21610" in bounced["reason"]
    assert send(http, sms_shop, "e2", kind="transactional").json()["status"] == "skipped"  # sms:* is now denied


def test_twilio_outage_is_retried_later(http, server, twilio, sms_shop):
    twilio.down = True
    m = send(http, sms_shop, "d1").json()
    retrying = wait_status(http, sms_shop, m["id"], "retrying", "failed", "sent")
    assert retrying["status"] == "retrying" and "Twilio 503" in retrying["reason"]
    assert (
        twilio_post(http, server, twilio, "/webhooks/twilio/ws_unknown/status", {"MessageSid": "x"}).status_code == 403
    )


def test_late_or_repeated_callbacks_never_move_a_message_back(http, server, workspace, twilio, sms_shop):
    m = send(http, sms_shop, "o1").json()
    sent = wait_status(http, sms_shop, m["id"], "sent")
    path = f"/webhooks/twilio/{workspace['id']}/status"
    base = {"MessageSid": sent["provider_message_id"], "AccountSid": twilio.account_sid, "To": PHONE}
    for status in ("delivered", "delivered", "sent"):  # a repeat, then a late "sent"
        assert twilio_post(http, server, twilio, path, {**base, "MessageStatus": status}).status_code == 200
    v = http.get(f"/api/messages/{m['id']}", headers=sms_shop).json()
    assert v["status"] == "delivered" and [h["status"] for h in v["history"]] == ["queued", "sent", "delivered"]


def test_a_callback_about_a_message_no_provider_had_is_ignored(http, server, workspace, twilio, sms_shop):
    """An outside probe: a signed status callback naming a skipped message (``?m=``, any MessageSid) made it
    "bounced" and denied the person every SMS. No provider had it: the report is about another message."""
    m = http.post("/api/messages", json={"to": {"phone": PHONE}, "template": "shipped"},  # no data.order: skipped
                  headers={**sms_shop, "Idempotency-Key": "sk1"}).json()  # fmt: skip
    assert wait_status(http, sms_shop, m["id"], "skipped")
    path = f"/webhooks/twilio/{workspace['id']}/status?m={m['id']}"
    params = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "failed", "ErrorCode": "30003",
              "AccountSid": twilio.account_sid, "To": PHONE}  # fmt: skip
    assert twilio_post(http, server, twilio, path, params).status_code == 200
    v = http.get(f"/api/messages/{m['id']}", headers=sms_shop).json()
    assert v["status"] == "skipped" and [h["status"] for h in v["history"]] == ["skipped"], v
    server.settle()
    consent = http.get(f"/api/profiles/{m['profile_id']}", headers=sms_shop).json().get("consent") or {}
    assert "sms:*" not in consent, consent


def test_a_replayed_inbound_webhook_counts_once(http, server, workspace, twilio, sms_shop):
    inbound = f"/webhooks/twilio/{workspace['id']}/inbound"
    m = send(http, sms_shop, "rp1").json()
    wait_status(http, sms_shop, m["id"], "sent")
    base = {"AccountSid": twilio.account_sid, "From": PHONE, "To": "+15005550006"}
    for _ in range(2):  # Twilio retries a webhook that timed out: same MessageSid
        twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMrp1", "Body": "On my way"})
        twilio_post(http, server, twilio, inbound, {**base, "MessageSid": "SMrp2", "Body": "STOP"})
    hist = http.get(f"/api/messages/{m['id']}", headers=sms_shop).json()["history"]
    assert [h["status"] for h in hist].count("replied") == 1
    server.settle()
    events = http.get(f"/api/profiles/{m['profile_id']}/events", headers=sms_shop).json()["events"]
    assert sum(1 for e in events if e.get("event") == "Consent Updated") == 1


def test_an_inbound_message_the_door_refuses_is_kept_with_its_reason(http, server, workspace, twilio, sms_shop):
    """A text from someone Chorus never wrote to becomes an event; if its text cannot be stored (a NUL), it is kept
    in the rejected events with the reason, not dropped (Twilio still gets its 200: retrying would not help)."""
    inbound = f"/webhooks/twilio/{workspace['id']}/inbound"
    params = {"AccountSid": twilio.account_sid, "From": "+31687654322", "To": "+15005550006", "MessageSid": "SMnul",
              "Body": "hello\x00there"}  # fmt: skip
    assert twilio_post(http, server, twilio, inbound, params).status_code == 200
    server.settle()
    rejected = http.get("/api/events/rejected", headers=sms_shop).json()
    rows = [r for r in rejected["rejected"] if r["message_id"] == "twilio-SMnul"]
    assert len(rows) == 1 and rows[0]["field"] == "properties.text" and "NUL" in rows[0]["reason"], rows
