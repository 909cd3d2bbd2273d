"""Email through a stand-in of SendGrid's v3 Mail Send API; fail-over with SMTP; its Signed Event Webhook."""

from __future__ import annotations

import orjson
import pytest

from tests.api.test_messages import prepare_shop
from tests.conftest import _ASGIThread, free_port, wait_until
from tests.standins.sendgrid import EventSigner, SendGridStandIn, event

TEMPLATE = {
    "kind": "marketing",
    "topic": "offers",
    "variants": {
        "email": {
            "subject": "{{ traits.first_name }}, your {{ event.product }} is waiting",
            "html": '<html><body><p>Hi {{ traits.first_name }}!</p><a href="https://shop.example/cart?id=7">Back to'
            ' your cart</a> <a href="{{ message.unsubscribe_url }}">Unsubscribe</a></body></html>',
        }
    },
}


@pytest.fixture
def sendgrid():
    """The SendGrid Mail Send stand-in (tests/standins/sendgrid.py) on a loopback port."""
    standin = SendGridStandIn("SG.test-key.0123456789")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def signer():
    return EventSigner()


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def sg_conf(sendgrid, signer, **over):
    conf = {
        "type": "sendgrid", "name": "sendgrid", "api_key_env": "CHORUS_SENDGRID_KEY",
            "from": "Shop <news@shop.example>",
        "reply_to": "Care <care@shop.example>", "base_url": sendgrid.base_url, "webhook_public_key": signer.public_key,
    }  # fmt: skip
    return {**conf, **over}


def smtp_conf(smtp, **over):
    conf = {
        "type": "smtp", "name": "backup", "host": "127.0.0.1", "port": smtp.port, "username": "chorus",
        "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>", "ca_file": smtp.ca_file,
    }  # fmt: skip
    return {**conf, **over}


def set_providers(http, h, *confs):
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": list(confs)}}}, headers=h)
    assert r.status_code == 200, r.text


@pytest.fixture
def shop(http, server, workspace, sendgrid, signer, monkeypatch):
    monkeypatch.setenv("CHORUS_SENDGRID_KEY", sendgrid.api_key)
    return prepare_shop(http, server, workspace, [sg_conf(sendgrid, signer)], TEMPLATE)


def send(http, h, key, **body):
    payload = {"to": {"email": "ana@example.com"}, "template": "cart", "event": {"product": "red shoes"}, **body}
    r = http.post("/api/messages", json=payload, headers={**h, "Idempotency-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


def sent_via_sendgrid(http, h, sendgrid, key, **body):
    m = send(http, h, key, **body)
    done = wait_status(http, h, m["id"], "sent", "failed", "retrying", "bounced")
    assert done["status"] == "sent" and done["provider"] == "sendgrid", done
    (req,) = [
        s for s in sendgrid.sent if s["body"]["personalizations"][0]["custom_args"]["chorus_message_id"] == m["id"]
    ]
    return done, req


def post_events(http, signer, workspace, events, **kw):
    body = orjson.dumps(events)
    path = f"/webhooks/sendgrid/{workspace['id']}/events"
    return http.post(path, content=body, headers=signer.headers(body, **kw))


def statuses(http, h, mid):
    return [s["status"] for s in http.get(f"/api/messages/{mid}", headers=h).json()["history"]]


def test_a_message_goes_out_through_sendgrid(http, server, workspace, shop, sendgrid):
    m, req = sent_via_sendgrid(http, shop, sendgrid, "s1")
    assert m["provider_message_id"] == req["message_id"]
    assert [h["status"] for h in m["history"]] == ["queued", "sent"]
    assert req["headers"]["authorization"] == f"Bearer {sendgrid.api_key}"
    body = req["body"]
    assert body["personalizations"] == [{
        "to": [{"email": "ana@example.com"}],
        "custom_args": {"chorus_message_id": m["id"], "chorus_workspace_id": workspace["id"]},
    }]  # fmt: skip
    assert body["from"] == {"email": "news@shop.example", "name": "Shop"}
    assert body["reply_to"] == {"email": "care@shop.example", "name": "Care"}
    assert body["subject"] == "Ana, your red shoes is waiting"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "Back to" in body["content"][0]["value"] and "<a " not in body["content"][0]["value"]
    assert f'href="{server.base_url}/c/' in body["content"][1]["value"]  # Chorus tracks clicks itself
    assert body["headers"]["List-Unsubscribe"].startswith(f"<{server.base_url}/u/")
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    tracking = body["tracking_settings"]
    assert tracking["click_tracking"]["enable"] is False and tracking["open_tracking"]["enable"] is False
    assert tracking["subscription_tracking"]["enable"] is False

    _, receipt = sent_via_sendgrid(http, shop, sendgrid, "s2", kind="transactional", topic="orders")
    assert "List-Unsubscribe" not in receipt["body"]["headers"]


def test_fail_over_between_sendgrid_and_smtp(http, server, shop, sendgrid, signer, smtp_server, monkeypatch):
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")
    monkeypatch.setenv("CHORUS_SENDGRID_WRONG_KEY", "SG.revoked")
    set_providers(http, shop, sg_conf(sendgrid, signer), smtp_conf(smtp_server))
    sendgrid.down = True
    m = send(http, shop, "f1")
    done = wait_status(http, shop, m["id"], "sent", "failed", "retrying")
    assert done["status"] == "sent" and done["provider"] == "backup", done
    assert len(smtp_server.messages) == 1 and sendgrid.sent == []

    sendgrid.down = False  # credentials are our side: a 401 moves on to the next provider too
    set_providers(http, shop, sg_conf(sendgrid, signer, api_key_env="CHORUS_SENDGRID_WRONG_KEY"),
        smtp_conf(smtp_server))
    m = send(http, shop, "f2")
    assert wait_status(http, shop, m["id"], "sent", "failed", "retrying")["provider"] == "backup"
    assert len(smtp_server.messages) == 2 and sendgrid.sent == []

    set_providers(
        http, shop, smtp_conf(smtp_server, name="down", port=free_port(), timeout=2), sg_conf(sendgrid, signer)
    )
    m = send(http, shop, "f3")
    done = wait_status(http, shop, m["id"], "sent", "failed", "retrying")
    assert done["status"] == "sent" and done["provider"] == "sendgrid", done
    assert done["provider_message_id"] == sendgrid.sent[0]["message_id"]

    sendgrid.down = True
    set_providers(http, shop, sg_conf(sendgrid, signer))
    m = send(http, shop, "f4")
    retrying = wait_status(http, shop, m["id"], "retrying", "failed", "sent")
    assert retrying["status"] == "retrying" and "sendgrid: SendGrid 503" in retrying["reason"], retrying


def test_a_refused_request_fails_with_the_field(http, server, shop, sendgrid):
    sendgrid.invalid_addresses.add("ana@example.com")
    m = send(http, shop, "x1")
    failed = wait_status(http, shop, m["id"], "failed", "retrying", "sent", "bounced")
    assert failed["status"] == "failed" and failed["attempts"] == 1, failed
    assert "SendGrid 400" in failed["reason"] and "Does not contain a valid address." in failed["reason"]
    assert "personalizations.0.to.0.email" in failed["reason"]
    sendgrid.invalid_addresses.clear()  # not a bounce: the address stays usable
    assert send(http, shop, "x2")["status"] == "queued"

    sendgrid.verified_senders = {"orders@shop.example"}  # 403 is about our account: retried, not failed
    m = send(http, shop, "x3", kind="transactional")
    retrying = wait_status(http, shop, m["id"], "retrying", "failed", "sent")
    assert (
        retrying["status"] == "retrying"
        and "SendGrid 403" in retrying["reason"]
        and "(field from)" in retrying["reason"]
    )


def test_signed_events_are_recorded_once(http, server, workspace, shop, sendgrid, signer):
    m, req = sent_via_sendgrid(http, shop, sendgrid, "e1")
    url = "https://shop.example/cart?id=7"
    batch = [event(req, "processed"), event(req, "deferred", response="451 try later", attempt="1"),
             event(req, "delivered", response="250 OK"), event(req, "open", sg_machine_open=False),
             event(req, "click", url=url),
             {**event(req, "delivered"), "chorus_message_id": "msg_unknown"}]  # fmt: skip
    body = orjson.dumps(batch)
    path = f"/webhooks/sendgrid/{workspace['id']}/events"
    headers = signer.headers(body)

    tampered = body.replace(b"https://shop.example", b"https://evil.example")
    assert http.post(path, content=tampered, headers=headers).status_code == 403
    assert post_events(http, EventSigner(), workspace, batch).status_code == 403  # signed with another key
    assert http.post(path, content=body, headers={"Content-Type": "application/json"}).status_code == 403
    assert http.post("/webhooks/sendgrid/ws_unknown/events", content=body, headers=headers).status_code == 403
    assert statuses(http, shop, m["id"]) == ["queued", "sent"]

    r = http.post(path, content=body, headers=headers)
    assert r.status_code == 200 and r.json()["applied"] == 3, r.text
    hist = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert [h["status"] for h in hist] == ["queued", "sent", "delivered", "opened", "clicked"]
    assert hist[-1]["url"] == url and hist[2]["provider_event"] == "delivered"

    # SendGrid retries a batch it thinks failed, and anyone may replay a signed one: nothing changes twice
    assert http.post(path, content=body, headers=headers).json()["applied"] == 0
    assert post_events(http, signer, workspace, batch[2:4]).json()["applied"] == 0
    assert statuses(http, shop, m["id"]) == ["queued", "sent", "delivered", "opened", "clicked"]

    server.settle()
    timeline = http.get(f"/api/profiles/{m['profile_id']}/events", headers=shop).json()["events"]
    names = sorted(e["event"] for e in timeline if e.get("event", "").startswith("Message"))
    assert names == ["Message Clicked", "Message Delivered", "Message Opened", "Message Queued", "Message Sent"]


def test_unsubscribe_event_stops_the_topic_only(http, server, workspace, shop, sendgrid, signer):
    m, req = sent_via_sendgrid(http, shop, sendgrid, "u1")
    assert post_events(http, signer, workspace, [event(req, "group_unsubscribe", asm_group_id=42)]).status_code == 200
    hist = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert hist[-1]["status"] == "unsubscribed" and hist[-1]["topic"] == "offers"
    skipped = send(http, shop, "u2")
    assert skipped["status"] == "skipped" and "email:offers denied" in str(skipped["choice"]), skipped
    sent_via_sendgrid(http, shop, sendgrid, "u3", kind="transactional", topic="orders")


def test_spam_complaint_blocks_all_email(http, server, workspace, shop, sendgrid, signer):
    m, req = sent_via_sendgrid(http, shop, sendgrid, "c1")
    assert post_events(http, signer, workspace, [event(req, "spamreport")]).status_code == 200
    assert statuses(http, shop, m["id"])[-1] == "complained"
    # engagement (complaints included) is history; the status stays the delivery outcome
    assert http.get(f"/api/messages/{m['id']}", headers=shop).json()["status"] == "sent"
    for key, kind in (("c2", "marketing"), ("c3", "transactional")):
        later = send(http, shop, key, kind=kind)
        assert later["status"] == "skipped" and "email:* denied" in str(later["choice"]), later


def test_bounces_and_drops(http, server, workspace, shop, sendgrid, signer):
    m1, req1 = sent_via_sendgrid(http, shop, sendgrid, "b1")
    blocked = event(req1, "bounce", type="blocked", reason="550 5.7.1 blocked by policy", status="5.7.1")
    assert post_events(http, signer, workspace, [blocked]).status_code == 200
    failed = http.get(f"/api/messages/{m1['id']}", headers=shop).json()
    assert failed["status"] == "failed" and "blocked: 550 5.7.1 blocked by policy" in failed["reason"], failed

    m2, req2 = sent_via_sendgrid(http, shop, sendgrid, "b2", kind="transactional", topic="orders")  # still allowed
    assert post_events(http, signer, workspace, [event(req2, "dropped", reason="Invalid SMTPAPI header")]).is_success
    dropped = http.get(f"/api/messages/{m2['id']}", headers=shop).json()
    assert dropped["status"] == "failed" and "dropped: Invalid SMTPAPI header" in dropped["reason"]

    m3, req3 = sent_via_sendgrid(http, shop, sendgrid, "b3")
    hard = event(req3, "bounce", type="bounce", reason="550 5.1.1 The email account does not exist", status="5.1.1")
    assert post_events(http, signer, workspace, [hard, hard]).json()["applied"] == 1
    bounced = http.get(f"/api/messages/{m3['id']}", headers=shop).json()
    assert bounced["status"] == "bounced" and "does not exist" in bounced["reason"]
    assert [h["status"] for h in bounced["history"]] == ["queued", "sent", "bounced"]
    later = send(http, shop, "b4", kind="transactional", topic="orders")
    assert later["status"] == "skipped" and "email:* denied" in str(later["choice"]), later
    server.settle()
    profile = http.get(f"/api/profiles/{m3['profile_id']}", headers=shop).json()
    assert profile["consent"]["email:*"]["status"] == "denied"


def test_settings_name_what_is_wrong(http, shop, sendgrid, signer):
    cases = [
        (sg_conf(sendgrid, signer, tracking=True), "providers.email[0].tracking is not a SendGrid setting"),
        ({**sg_conf(sendgrid, signer), "api_key_env": None}, "providers.email[0].api_key_env is required"),
        (sg_conf(sendgrid, signer, webhook_public_key="MFkwEwYHKoZIzj0CAQY="), "providers.email[0].webhook_public_key"),
        (sg_conf(sendgrid, signer, **{"from": "no address"}), "providers.email[0].from 'no address' has no address"),
    ]
    for conf, message in cases:
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": [conf]}}}, headers=shop)
        assert r.status_code == 400 and message in r.json()["message"], (message, r.text)
