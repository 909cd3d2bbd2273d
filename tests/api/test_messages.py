"""Sending messages through the admin API to a real SMTP server: idempotency, consent, tracking, failover."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import free_port, wait_until

TEMPLATE = {
    "kind": "marketing",
    "topic": "offers",
    "variants": {
        "email": {
            "subject": "{{ traits.first_name | default: 'Hello' }}, your {{ event.product }} is waiting",
            "html": '<html><body><p>Hi {{ traits.first_name }}!</p><a href="https://shop.example/cart?id=7">Back to'
            ' your cart</a> <a href="{{ message.unsubscribe_url }}">Unsubscribe</a></body></html>',
        },
        "sms": {"text": "{{ traits.first_name }}, your cart is waiting"},
    },
}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def smtp_conf(smtp, **over):
    conf = {
        "type": "smtp", "name": "primary", "host": "127.0.0.1", "port": smtp.port, "username": "chorus",
        "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>", "ca_file": smtp.ca_file,
    }  # fmt: skip
    return {**conf, **over}


def prepare_shop(http, server, workspace, email_providers: list, template: dict) -> dict:
    """Email providers and an opt-out 'offers' topic, Ana identified, the 'cart' template saved: the headers."""
    h = bearer(workspace)
    messaging = {"providers": {"email": email_providers}, "topics": {"offers": {"mode": "opt_out"}}}
    r = http.patch("/api/workspace/settings", json={"messaging": messaging}, headers=h)
    assert r.status_code == 200, r.text
    r = http.post(
        "/v1/identify", auth=(workspace["server_write_key"], ""),
        json={"userId": "u1", "traits": {"email": "Ana@Example.com", "first_name": "Ana"}},
    )  # fmt: skip
    assert r.status_code == 200
    server.settle()
    assert http.put("/api/templates/cart", json=template, headers=h).status_code == 200
    return h


@pytest.fixture
def shop(http, server, workspace, smtp_server, monkeypatch):
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")
    return prepare_shop(http, server, workspace, [smtp_conf(smtp_server)], TEMPLATE)


def send(http, h, key, **body):
    payload = {"to": {"email": "ana@example.com"}, "template": "cart", "event": {"product": "red shoes"}, **body}
    return http.post("/api/messages", json=payload, headers={**h, "Idempotency-Key": key})


def wait_status(http, h, mid, *statuses, timeout=20):
    return wait_until(
        lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m, timeout=timeout
    )


def test_send_is_rendered_delivered_once_and_recorded(http, server, shop, smtp_server):
    r = send(http, shop, "cart-1")
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["status"] == "queued" and m["channel"] == "email" and m["address"] == "ana@example.com"
    assert "variant" in " ".join(c["reason"] for c in m["choice"]["considered"] if c["channel"] == "push")
    sent = wait_status(http, shop, m["id"], "sent", "failed", "retrying")
    assert sent["status"] == "sent" and sent["provider"] == "primary", sent
    assert [h["status"] for h in sent["history"]] == ["queued", "sent"]
    prom = http.get("/metrics").text
    assert 'chorus_messages_status_total{channel="email",status="sent"}' in prom
    assert 'chorus_provider_send_seconds_count{channel="email",outcome="ok"}' in prom

    # the same key again: the same message, no second email; a different request under that key is refused
    again = send(http, shop, "cart-1")
    assert again.status_code == 200 and again.json()["id"] == m["id"]
    assert send(http, shop, "cart-1", event={"product": "blue hat"}).status_code == 409
    server.settle()
    assert len(smtp_server.messages) == 1

    mail = smtp_server.messages[0]["msg"]
    assert mail["Subject"] == "Ana, your red shoes is waiting"
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    unsub = re.fullmatch(r"<(.+)>", mail["List-Unsubscribe"]).group(1)
    assert unsub.startswith(server.base_url + "/u/")
    html = mail.get_body(("html",)).get_content()
    assert "Hi Ana!" in html and unsub in html  # the unsubscribe link is not click-tracked
    base = re.escape(server.base_url)
    click = re.search(rf'href="({base}/c/[^"]+)"', html).group(1)
    pixel = re.search(rf'src="({base}/o/[^"]+)"', html).group(1)
    assert "Back to" in mail.get_body(("plain",)).get_content()

    # click: redirected to the shop with UTM tags, recorded on the message and the timeline
    r = http.get(click.replace("&amp;", "&"), follow_redirects=False)
    assert r.status_code == 302
    target = urlsplit(r.headers["location"])
    q = parse_qs(target.query)
    assert target.netloc == "shop.example" and q["id"] == ["7"] and q["utm_medium"] == ["email"]
    assert q["utm_campaign"] == ["cart"] and q["utm_content"] == [m["id"]]
    assert http.get(pixel).headers["content-type"] == "image/gif"
    hist = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert [h["status"] for h in hist] == ["queued", "sent", "clicked", "opened"]
    assert hist[2]["url"] == r.headers["location"]
    server.settle()
    timeline = http.get(f"/api/profiles/{m['profile_id']}/events", headers=shop).json()["events"]
    names = [e["event"] for e in timeline if e.get("event", "").startswith("Message")]
    assert sorted(names) == ["Message Clicked", "Message Opened", "Message Queued", "Message Sent"]
    assert all(e["properties"]["message_id"] == m["id"] for e in timeline if e.get("event", "").startswith("Message"))
    profile = http.get(f"/api/profiles/{m['profile_id']}", headers=shop).json()
    assert "email" in profile["channels"]  # clicking and opening are activity on email; being sent mail is not
    assert profile["channels"]["email"]["count"] == 2


def test_one_click_unsubscribe_stops_marketing_but_not_transactional(http, server, shop, smtp_server, workspace):
    m = send(http, shop, "k1").json()
    wait_status(http, shop, m["id"], "sent")
    unsub = re.fullmatch(r"<(.+)>", smtp_server.messages[0]["msg"]["List-Unsubscribe"]).group(1)
    assert "Unsubscribe" in http.get(unsub).text  # a GET (a mail scanner) changes nothing
    r = http.post(unsub, content="List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200 and "unsubscribed" in r.text
    skipped = send(http, shop, "k2").json()
    assert skipped["status"] == "skipped" and skipped["channel"] is None
    assert "email:offers denied" in skipped["reason"] + str(skipped["choice"])
    receipt = send(http, shop, "k3", kind="transactional", topic="orders").json()
    assert receipt["status"] == "queued"
    wait_status(http, shop, receipt["id"], "sent")
    assert len(smtp_server.messages) == 2
    hist = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert hist[-1]["status"] == "unsubscribed" and hist[-1]["how"] == "one-click"
    # the preference page shows the topic off, and turning it back on works
    page = http.get(unsub + "/preferences")
    assert page.status_code == 200 and 'value="offers">' in page.text
    assert http.post(unsub + "/preferences", data={"topic": ["offers"]}).status_code == 200
    server.settle()
    assert send(http, shop, "k4").json()["status"] == "queued"
    assert http.get(unsub.replace("/u/", "/u/x")).status_code == 404  # a forged token
    # the same link's one-click again, after that: she is unsubscribed again (an outside probe: it was taken for a
    # mailbox provider's repeat of the first one, and the offers kept coming); a repeat of it changes nothing more
    for _ in range(2):
        r = http.post(unsub, content="List-Unsubscribe=One-Click",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
        assert r.status_code == 200 and "unsubscribed" in r.text
    server.settle()
    again = send(http, shop, "k5").json()
    assert again["status"] == "skipped" and "email:offers denied" in again["reason"] + str(again["choice"])
    timeline = http.get(f"/api/profiles/{m['profile_id']}/events", headers=shop, params={"limit": 200}).json()
    denials = [e for e in timeline["events"] if e.get("event") == "Consent Updated"
               and e["properties"]["status"] == "denied"]  # fmt: skip
    assert len(denials) == 2  # the first one-click and the one after the grant; not the repeat
    # turned back on by a wider grant (the channel's marketing, as a checkout's opt-in sends it), which a send reads
    # as outranking her email:offers denial: the link unsubscribes her again (review: taken for a repeat)
    r = http.post("/v1/track", auth=(workspace["server_write_key"], ""), json={
        "userId": "u1", "event": "Consent Updated",
        "properties": {"channel": "email", "topic": "marketing", "status": "granted"}})  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    assert send(http, shop, "k6").json()["status"] == "queued"
    r = http.post(unsub, content="List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    assert send(http, shop, "k7").json()["status"] == "skipped"
    # a block of the whole channel (as a complaint records it) is no word on the topic: her click during it stands
    # once the block ends (review: taken for a repeat, and the offers came back with the channel)
    def consent(topic, status):
        r = http.post("/v1/track", auth=(workspace["server_write_key"], ""), json={
            "userId": "u1", "event": "Consent Updated",
            "properties": {"channel": "email", "topic": topic, "status": status}})  # fmt: skip
        assert r.status_code == 200, r.text
        server.settle()

    consent("offers", "granted")
    consent("*", "denied")
    r = http.post(unsub, content="List-Unsubscribe=One-Click",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    consent("*", "granted")
    assert send(http, shop, "k8").json()["status"] == "skipped"


def test_failover_to_the_secondary_provider_and_retry_when_all_are_down(http, server, shop, smtp_server):
    down = smtp_conf(smtp_server, name="down", port=free_port(), timeout=2)
    r = http.patch(
        "/api/workspace/settings",
        json={"messaging": {"providers": {"email": [down, smtp_conf(smtp_server, name="backup")]}}},
        headers=shop,
    )
    assert r.status_code == 200, r.text
    m = send(http, shop, "f1").json()
    sent = wait_status(http, shop, m["id"], "sent", "failed", "retrying")
    assert sent["status"] == "sent" and sent["provider"] == "backup"
    http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": [down]}}}, headers=shop)
    m = send(http, shop, "f2").json()
    retrying = wait_status(http, shop, m["id"], "retrying")
    assert "down: cannot connect" in retrying["reason"] and retrying["attempts"] == 1
    assert retrying["next_attempt_at"] > retrying["created_at"]


def test_hard_bounce_blocks_the_address_for_every_later_message(http, server, shop, workspace, smtp_server):
    r = http.post(
        "/v1/identify", auth=(workspace["server_write_key"], ""),
        json={"userId": "u2", "traits": {"email": "bounce@example.com", "first_name": "Bo"}},
    )  # fmt: skip
    assert r.status_code == 200
    server.settle()
    m = send(http, shop, "b1", to={"email": "bounce@example.com"}).json()
    bounced = wait_status(http, shop, m["id"], "bounced", "failed", "sent")
    assert bounced["status"] == "bounced" and "User unknown" in bounced["reason"]
    later = send(http, shop, "b2", to={"email": "bounce@example.com"}, kind="transactional").json()
    assert later["status"] == "skipped" and "email:* denied" in str(later["choice"])


def test_bad_templates_and_requests_name_the_field(http, shop):
    bad = {"variants": {"email": {"subject": "Hi {{ traits.name ", "html": "<p>x</p>"}}}
    r = http.put("/api/templates/broken", json=bad, headers=shop)
    assert r.status_code == 400 and r.json()["field"] == "variants.email.subject", r.text
    r = http.post("/api/messages", json={"to": {"email": "ana@example.com"}}, headers=shop)
    assert r.status_code == 400 and r.json()["field"] == "template"
    r = send(http, shop, "x1", channel="fax")
    assert r.status_code == 400 and r.json()["field"] == "channel"
    r = send(http, shop, "x2", to={"email": "nobody@example.com"})
    assert r.status_code == 404
    for bad, field in (({"email": 5}, "to.email"), ({"phone": ["x"]}, "to.phone"), ({"cfg": "x"}, "to.cfg")):
        for path in ("/api/messages", "/api/messages/preview"):
            r = http.post(path, json={"to": bad, "template": "cart"}, headers=shop)
            assert r.status_code == 400 and r.json()["field"] == field, (path, bad, r.text)
    # preview answers as a send would (an outside probe: preview named `email` where the send named `to.email`)
    for who, status, field in (({"to": {"email": "not-an-email"}}, 400, "to.email"),
                               ({"to": {"phone": "+1 415 555"}}, 400, "to.phone"),
                               ({"to": {"anonymous_id": "nobody"}}, 404, "to.anonymous_id"),
                               ({"profile_id": "p_nobody"}, 404, "profile_id")):  # fmt: skip
        for path in ("/api/messages", "/api/messages/preview"):
            r = http.post(path, json={**who, "template": "cart"}, headers={**shop, "Idempotency-Key": "pv"})
            assert (r.status_code, r.json().get("field")) == (status, field), (path, who, r.text)
    r = http.put("/api/templates/" + "t" * 65, json=TEMPLATE, headers=shop)
    assert r.status_code == 400 and r.json()["field"] == "name"
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": [{"type": "smtp"}]}}},
                   headers=shop)  # fmt: skip
    assert r.status_code == 400 and "providers.email[0].host" in r.json()["message"]


def test_a_topic_is_named_as_consent_names_it(http, shop):
    """An outside probe: a message's topic "offers " or " offers" slipped past an email:offers opt-out, and "*"
    made its unsubscribe link deny every email (receipts too); a topic label that was not text made the hosted
    preference page a 500 for everyone."""
    for topic in ("*", " * ", "", "of fers", "offers:email", 5):
        r = send(http, shop, f"t-{topic!r}", topic=topic)
        assert r.status_code == 400 and r.json()["field"] == "topic", (topic, r.text)
    assert send(http, shop, "t-ok", topic="offers.spring-26").status_code in (200, 201, 202)
    for n, topic in enumerate(("offers ", " Offers")):  # read as consent names the slot: email:offers
        r = send(http, shop, f"t-norm-{n}", topic=topic)
        assert r.status_code in (200, 201) and r.json()["topic"] == "offers", r.text
    for topics, words in (({"offers": {"mode": "opt_out", "label": 5}}, "topics.offers.label"),
                          ({"offers": {"mode": "opt_out", "label": ""}}, "topics.offers.label"),
                          ({"Offers ": {"mode": "opt_out"}}, "a topic's name")):  # fmt: skip
        r = http.patch("/api/workspace/settings", json={"messaging": {"topics": topics}}, headers=shop)
        assert r.status_code == 400 and words in r.json()["message"], r.text
    # the HELP answer is TwiML: a control character there made Twilio refuse it, and the person got no help
    r = http.patch("/api/workspace/settings", json={"messaging": {"sms_help": "Call us\x07"}}, headers=shop)
    assert r.status_code == 400 and "sms_help must not hold control characters" in r.json()["message"], r.text
    r = http.patch("/api/workspace/settings", json={"messaging": {"sms_help": "Shop help:\ncall 555"}}, headers=shop)
    assert r.status_code == 200, r.text


def test_missing_value_skips_the_send_with_the_reason(http, server, shop, smtp_server):
    tpl = {"variants": {"email": {"subject": "Your code {{ data.code }}", "html": "<p>{{ data.code }}</p>"}}}
    assert http.put("/api/templates/code", json=tpl, headers=shop).status_code == 200
    m = send(http, shop, "m1", template="code", kind="transactional").json()
    assert m["status"] == "skipped" and "data.code" in m["reason"]
    server.settle()
    assert smtp_server.messages == []


def test_preview_renders_every_variant(http, shop):
    r = http.post("/api/messages/preview", json={"to": {"email": "ana@example.com"}, "template": "cart",
                                                 "event": {"product": "red shoes"}}, headers=shop)  # fmt: skip
    assert r.status_code == 200, r.text
    v = r.json()["variants"]
    assert v["email"]["subject"] == "Ana, your red shoes is waiting"
    assert v["sms"]["text"] == "Ana, your cart is waiting" and v["sms"]["segments"] == 1
    # each variant sees its own channel, as its send does (it was empty in preview: an outside probe)
    by_channel = {"name": "by channel", "kind": "transactional",
                  "variants": {"email": {"subject": "on {{ message.channel }}", "html": "x"},
                               "sms": {"text": "on {{ message.channel }}"}}}  # fmt: skip
    r = http.post("/api/messages/preview", json={"to": {"email": "ana@example.com"}, "content": by_channel},
                  headers=shop)  # fmt: skip
    assert r.status_code == 200, r.text
    v = r.json()["variants"]
    assert (v["email"]["subject"], v["sms"]["text"]) == ("on email", "on sms"), r.text


def _untokened(text: str) -> str:
    """A rendering with its per-message link tokens (click, open, unsubscribe) and message ids blanked."""
    return re.sub(r"(/c/|/o/|/u/|unsubscribe/|m=|msg_)[A-Za-z0-9_.~%=-]+", r"\1*", text)


def test_preview_shows_what_a_send_would_send_and_do(http, server, shop, smtp_server):
    """An outside probe: the preview showed the template's bare rendering, without the tracked links, the open
    pixel or the RFC 8058 headers a send puts on, and nothing of what a send would decide. Now it renders through
    the send's own steps and says what a send now would do (channel, reason, consent, caps, quiet hours)."""
    body = {"to": {"email": "ana@example.com"}, "template": "cart", "event": {"product": "red shoes"}}
    pv = http.post("/api/messages/preview", json=body, headers=shop)
    assert pv.status_code == 200, pv.text
    pv = pv.json()
    assert pv["send"]["channel"] == "email" and pv["send"]["status"] == "queued", pv["send"]
    assert pv["send"]["address"] == "ana@example.com"
    email = pv["variants"]["email"]
    assert email["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert email["tracking"] is True and "/o/" in email["html"] and "/c/" in email["html"]
    assert "https://shop.example/cart" not in email["html"]  # the link is tracked, as sent
    assert "StatusCallback" in pv["variants"]["sms"]["headers"]
    sent = send(http, shop, "pv-1").json()
    assert (sent["status"], sent["channel"]) == ("queued", "email")
    for k in ("subject", "html", "text"):
        assert _untokened(sent["content"][k]) == _untokened(email[k]), k
    assert set(sent["content"]["headers"]) == set(email["headers"])
    # a tracked link of the preview leads where the send's does, and records nothing
    link = re.search(r'href="([^"]*/c/[^"]+)"', email["html"]).group(1)
    r = http.get(link.replace(server.base_url, ""), follow_redirects=False)
    assert r.status_code == 302 and r.headers["location"].startswith("https://shop.example/cart?id=7")
    # what a send would decide: she unsubscribes, and the preview says the send's reason
    wait_status(http, shop, sent["id"], "sent")
    unsub = re.fullmatch(r"<(.+)>", smtp_server.messages[0]["msg"]["List-Unsubscribe"]).group(1)
    http.post(unsub, content="List-Unsubscribe=One-Click",
              headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    pv = http.post("/api/messages/preview", json=body, headers=shop).json()
    skipped = send(http, shop, "pv-2").json()
    assert skipped["status"] == "skipped"
    assert (pv["send"]["status"], pv["send"]["channel"], pv["send"]["reason"]) == (
        "skipped", None, skipped["reason"]), pv["send"]
    assert "email:offers denied" in pv["send"]["reason"] + str(pv["send"]["choice"])
    assert pv["variants"]["email"]["subject"] == "Ana, your red shoes is waiting"  # still rendered, for the editor


def test_messages_and_templates_stay_in_their_workspace(http, server, engine, shop):
    from chorus import workspaces

    m = send(http, shop, "iso-1").json()
    other = {"Authorization": f"Bearer {workspaces.create(engine, 'rival')['api_key']}"}
    assert http.get(f"/api/messages/{m['id']}", headers=other).status_code == 404
    assert http.get("/api/templates/cart", headers=other).status_code == 404
    r = http.post("/api/messages", json={"profile_id": m["profile_id"], "template": "cart"}, headers=other)
    assert r.status_code == 404
    r = http.post("/api/messages/preview", json={"profile_id": m["profile_id"], "template": "cart"}, headers=other)
    assert r.status_code == 404
    # the same idempotency key in another workspace is another message
    assert http.put("/api/templates/cart", json=TEMPLATE, headers=other).status_code == 200
    assert http.post("/api/messages", json={"to": {"email": "ana@example.com"}, "template": "cart"},
                     headers={**other, "Idempotency-Key": "iso-1"}).status_code == 404  # fmt: skip
    assert http.get("/api/messages/nope", headers=shop).status_code == 404


def test_batch_send_gives_one_result_per_item_and_keeps_the_good_ones(http, server, shop, workspace, smtp_server):
    r = http.post(
        "/v1/identify", auth=(workspace["server_write_key"], ""),
        json={"userId": "u2", "traits": {"email": "bo@example.com", "first_name": "Bo"}},
    )  # fmt: skip
    assert r.status_code == 200
    server.settle()

    def item(key, email, **more):
        return {"idempotency_key": key, "to": {"email": email}, "template": "cart", **more}

    items = [
        item("b-ana", "ana@example.com", event={"product": "hat"}),
        item("b-bad", "ana@example.com", kind="spam"),
        item("b-nobody", "nobody@example.com"),
        "not an object",
        item("b-bo", "bo@example.com", event={"product": "cap"}),
        item("b-ana", "ana@example.com", event={"product": "hat"}),
        item("b-bo", "bo@example.com", event={"product": "?"}),
    ]
    r = http.post("/api/messages/batch", json={"messages": items}, headers=shop)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["created"], out["existing"], out["error"]) == (2, 1, 4)
    res = out["results"]
    assert [x["index"] for x in res] == list(range(len(items)))
    assert [x["result"] for x in res] == ["created", "error", "error", "error", "created", "existing", "error"]
    assert res[1]["error"]["field"] == "messages[1].kind"
    assert res[2]["error"] == {"code": "not_found", "message": "no profile with email 'nobody@example.com'",
                               "field": "messages[2].to.email"}  # fmt: skip
    assert res[3]["error"]["field"] == "messages[3]"
    assert res[5]["message"]["id"] == res[0]["message"]["id"]  # the same key twice: one message
    assert res[6]["error"]["code"] == "conflict" and res[6]["error"]["field"] == "messages[6].idempotency_key"

    # replaying the whole batch (a client retry after a timeout) creates nothing new
    again = http.post("/api/messages/batch", json={"messages": items}, headers=shop).json()
    assert (again["created"], again["existing"]) == (0, 3)
    for x in (res[0], res[4]):
        assert wait_status(http, shop, x["message"]["id"], "sent", "failed")["status"] == "sent"
    server.settle()
    subjects = sorted(m["msg"]["Subject"] for m in smtp_server.messages)
    assert subjects == ["Ana, your hat is waiting", "Bo, your cap is waiting"]

    for bad, field in (({}, "messages"), ({"messages": []}, "messages"), ({"messages": [{}] * 1001}, "messages")):
        r = http.post("/api/messages/batch", json=bad, headers=shop)
        assert r.status_code == 400 and r.json()["field"] == field


def test_the_email_size_limit_is_on_what_is_sent_tracked_links_included(http, server, shop, smtp_server):
    """An outside probe: 1,200 links rendered to 87 KB (under Gmail's 102 KB) went out as 373 KB once each became a
    tracked redirect: clipped, its unsubscribe link hidden. The limit is checked on what is sent."""
    links = "".join(f'<a href="https://shop.example/p/{i}">item {i}</a> ' for i in range(1200))
    big = {"kind": "marketing", "topic": "offers", "variants": {"email": {"subject": "Deals",
           "html": f"<html><body>{links}</body></html>"}}}  # fmt: skip
    assert http.put("/api/templates/big", json=big, headers=shop).status_code == 200
    r = send(http, shop, "big-1", template="big")
    assert r.status_code in (200, 201), r.text
    m = r.json()
    assert m["status"] == "skipped" and "with its tracked links" in m["reason"] and "102" in m["reason"], m
    assert not smtp_server.messages
