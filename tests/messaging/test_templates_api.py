"""Templates through the public API on both engines, over real HTTP: hostile templates cannot hold the server, and
every error (save, preview, send, phone numbers) speaks the user's terms."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest

from tests.api.test_messages import prepare_shop, smtp_conf
from tests.conftest import wait_until
from tests.messaging.test_content_limits import INTERNALS

CHAIN = "{{ (1..10000) | join: ',' | split: ','" + " | uniq | sort | reverse" * 3000 + " }}"


@pytest.fixture
def shop(http, server, workspace, smtp_server, monkeypatch):
    monkeypatch.setenv("CHORUS_SMTP_PASSWORD", "s3cret")
    template = {"variants": {"email": {"subject": "Hi {{ traits.first_name }}", "html": "<p>{{ data.v }}</p>"}}}
    return prepare_shop(http, server, workspace, [smtp_conf(smtp_server)], template)


def email(html: str, subject: str = "Hi") -> dict:
    return {"kind": "transactional", "variants": {"email": {"subject": subject, "html": html}}}


def raw_json(obj: object) -> dict:
    """A body as JSON text with \\u escapes: httpx cannot encode a lone surrogate itself, a client can send one."""
    return {"content": json.dumps(obj, ensure_ascii=True), "headers": {"Content-Type": "application/json"}}


def assert_user_terms(body: dict) -> None:
    assert set(body) >= {"code", "message", "field"}, body
    assert not INTERNALS.search(body["message"]), body["message"]


@pytest.mark.parametrize(
    ("definition", "field", "words"),
    [
        (email("<p>one</p>\n<p>{{ data.v | }}</p>\n<p>three</p>\n<p>four</p>"), "variants.email.html", "line 2"),
        (email("<p>\n{{ data.v | append }}</p>"), "variants.email.html", "the append filter takes 1 argument(s)"),
        (email("<p>a\u0000b</p>"), "variants.email.html", "NUL character"),
        (email("<p>ok</p>", subject="a\ud800"), "variants.email.subject", "lone surrogate"),
        (
            {"variants": {"email": {"subject": "s", "mjml": "<mj-section><mj-column></mj-column></mj-section>"}}},
            "variants.email.mjml",
            "<mjml><mj-body>",
        ),
        (email("{{ " + "9" * 5000 + " }}"), "variants.email.html", "cannot be read as a number"),
        (
            {"kind": "marketing",
             "variants": {"email": {"subject": "s", "mjml": "<mjml><mj-body><mj-nope></mj-body></mjml>"}}},
            "variants.email.mjml",
            "the MJML is not well-formed: <mj-nope> at line 1 is not closed before </mj-body> at line 1",
        ),  # fmt: skip
    ],
)
def test_saving_a_bad_template_is_a_400_in_the_user_terms(http, shop, definition, field, words):
    body = raw_json(definition)
    r = http.put("/api/templates/bad", content=body["content"], headers={**shop, **body["headers"]})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"].endswith(field) and words in body["message"], body
    assert "end of stream" not in body["message"]  # mjml-python's words
    assert_user_terms(body)


def test_a_hostile_template_is_skipped_within_the_budget_and_the_server_keeps_answering(http, server, shop):
    assert http.put("/api/templates/chain", json=email(CHAIN), headers=shop).status_code == 200
    answered = []

    def other_requests():  # the server answers others while the render runs (it runs in a worker thread)
        for _ in range(5):
            started = time.monotonic()
            assert http.get("/api/templates/chain", headers=shop).status_code == 200
            answered.append(time.monotonic() - started)

    probe = threading.Thread(target=other_requests)
    started = time.monotonic()
    probe.start()
    r = http.post("/api/messages", json={"to": {"email": "ana@example.com"}, "template": "chain"},
                  headers={**shop, "Idempotency-Key": "chain-1"})  # fmt: skip
    elapsed = time.monotonic() - started
    probe.join(30)
    assert r.status_code == 201, r.text
    m = r.json()
    assert m["status"] == "skipped" and "1 CPU second" in m["reason"], m
    assert elapsed < 15, elapsed  # a hang guard, not a timing test: the limit itself is CPU time
    assert len(answered) == 5
    # the preview renders with the same renderer and stops the same way
    r = http.post("/api/messages/preview", json={"to": {"email": "ana@example.com"}, "template": "chain"},
                  headers=shop)  # fmt: skip
    assert r.status_code == 200, r.text
    assert "1 CPU second" in r.json()["variants"]["email"]["reason"]


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("1e400", "plus: the text '1e400' does not give a finite number"),
        ("nan", "plus: the text 'nan' does not give a finite number"),
        ("x", None),  # Liquid reads a text that is not a number as 0
    ],
)
def test_preview_and_send_give_the_same_reason_in_the_user_terms(http, shop, value, words):
    tpl = email("<p>{{ data.v | plus: 1 }}</p>")
    assert http.put("/api/templates/sum", json=tpl, headers=shop).status_code == 200
    req = {"to": {"email": "ana@example.com"}, "template": "sum", "data": {"v": value}}
    preview = http.post("/api/messages/preview", json=req, headers=shop)
    assert preview.status_code == 200, preview.text
    sent = http.post("/api/messages", json=req, headers={**shop, "Idempotency-Key": f"sum-{value}"})
    assert sent.status_code == 201, sent.text
    variant, message = preview.json()["variants"]["email"], sent.json()
    if words is None:
        assert not variant["skipped"] and message["status"] == "queued", (variant, message)
        return
    assert variant["skipped"] and variant["reason"].startswith(words), variant
    assert message["status"] == "skipped" and words in message["reason"], message
    assert not INTERNALS.search(variant["reason"]) and not INTERNALS.search(message["reason"])


def test_preview_sees_computed_traits_as_the_send_does(http, shop):
    # one context for both: a template using computed.* must not preview as a missing value
    tpl = email("<p>{{ computed.clv_12m | default: 'none' }}</p>")
    assert http.put("/api/templates/clv", json=tpl, headers=shop).status_code == 200
    req = {"to": {"email": "ana@example.com"}, "template": "clv"}
    variant = http.post("/api/messages/preview", json=req, headers=shop).json()["variants"]["email"]
    assert not variant["skipped"] and "none" in variant["html"], variant


@pytest.mark.parametrize("path", ["/api/messages", "/api/messages/preview"])
def test_a_phone_number_error_says_what_is_wrong(http, shop, path):
    r = http.post(path, json={"to": {"phone": "06 12 34 56 78"}, "template": "cart"},
                  headers={**shop, "Idempotency-Key": "phone-1"})  # fmt: skip
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"].endswith("phone") and "international format" in body["message"], body
    assert "(0)" not in body["message"] and "default region" in body["message"]


def test_a_phone_trait_error_is_a_readable_warning(http, server, shop, workspace):
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                  json={"userId": "u9", "traits": {"phone": "12", "email": "u9@example.com"}})  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    profile = http.get("/api/profiles", params={"email": "u9@example.com"}, headers=shop).json()
    warnings = [w["warning"] for w in profile["identifier_warnings"]]
    assert warnings and "traits.phone ignored as an identifier: not a valid phone number" in warnings[0], profile
    text = repr(warnings)
    assert not re.search(r"\(\d\) |Missing or invalid|NumberParseException", text), text


def test_message_data_that_cannot_be_stored_is_a_400_naming_the_path(http, shop):
    for data, field in (({"items": ["ok", "a\u0000"]}, "data.items[1]"), ({"k": "\udc00"}, "data.k")):
        for path in ("/api/messages", "/api/messages/preview"):
            body = raw_json({"to": {"email": "ana@example.com"}, "template": "cart", "data": data})
            r = http.post(path, content=body["content"],
                          headers={**shop, **body["headers"], "Idempotency-Key": f"d-{field}"})  # fmt: skip
            assert r.status_code == 400, (path, r.text)
            assert r.json()["field"].endswith(field), r.json()
            assert_user_terms(r.json())



@pytest.mark.parametrize("text_variant", [None, "Your cart: https://shop.example/cart?id=7."])
def test_the_text_part_links_are_tracked_like_the_html_part(http, server, shop, smtp_server, text_variant):
    tpl = email('<p>Your cart</p><a href="https://shop.example/cart?id=7">Back to your cart</a>')
    if text_variant:
        tpl["variants"]["email"]["text"] = text_variant
    assert http.put("/api/templates/linked", json=tpl, headers=shop).status_code == 200
    r = http.post("/api/messages", json={"to": {"email": "ana@example.com"}, "template": "linked"},
                  headers={**shop, "Idempotency-Key": f"linked-{bool(text_variant)}"})  # fmt: skip
    assert r.status_code == 201 and r.json()["status"] == "queued", r.text
    wait_until(lambda: smtp_server.messages)
    mail = smtp_server.messages[-1]["msg"]
    html = mail.get_body(("html",)).get_content()
    text = mail.get_body(("plain",)).get_content()
    click = re.search(rf'href="({re.escape(server.base_url)}/c/[^"]+)"', html).group(1).replace("&amp;", "&")
    assert click in text, text  # the same redirect, so a reader of the text part counts too
    target = http.get(click, follow_redirects=False).headers["location"]
    assert "utm_medium=email" in target and "utm_campaign=linked" in target


def doc_examples() -> tuple[dict, dict]:
    """The first two JSON blocks of docs/messaging.md, as written there: the layout partial and the definition."""
    text = (Path(__file__).parents[2] / "docs" / "messaging.md").read_text()
    partial, definition = re.findall(r"```json\n(.*?)\n```", text, re.S)[:2]
    return json.loads(partial), json.loads(definition)


def test_the_first_example_of_the_docs_works_as_written(http, shop):
    partial, definition = doc_examples()
    r = http.put("/api/partials/brand_layout", json=partial, headers=shop)
    assert r.status_code == 200, r.text
    r = http.put(f"/api/templates/{definition['name']}", json=definition, headers=shop)
    assert r.status_code == 200, r.text
    event = {"url": "https://shop.example/cart/7", "order_id": "A-17", "sku": "SKU-1"}
    for locale, subject in ((None, "Ana, your cart"), ("fr", "Votre panier")):
        req = {"to": {"email": "ana@example.com"}, "template": definition["name"], "event": event}
        r = http.post("/api/messages/preview", json={**req, **({"locale": locale} if locale else {})}, headers=shop)
        assert r.status_code == 200, r.text
        variants = r.json()["variants"]
        assert set(variants) == set(definition["variants"])
        assert not [v for v in variants.values() if v["skipped"]], variants
        assert variants["email"]["subject"] == subject
        assert "Shop Inc." in variants["email"]["html"] and "/u/" in variants["email"]["html"]


@pytest.mark.parametrize("number", ["1E+400", "-1e999", "123456789012345678901234567890"])
def test_message_data_numbers_out_of_range_are_a_400_in_the_user_terms(http, shop, number):
    body = '{"to": {"email": "ana@example.com"}, "template": "cart", "data": {"v": NUMBER}}'.replace("NUMBER", number)
    headers = {**shop, "Content-Type": "application/json", "Idempotency-Key": number}
    for path in ("/api/messages", "/api/messages/preview"):
        r = http.post(path, content=body, headers=headers)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["field"].endswith("data.v") or r.json()["field"] == "body", r.json()
        assert_user_terms(r.json())
        assert "Decimal" not in r.text and "inf" not in r.json()["message"].lower().replace("infinity", "")


@pytest.mark.parametrize(
    ("source", "words"),
    [
        ("bye\u0000", "NUL character"),
        ("line one\n{{ x | }}\nline three\nline four", "line 2"),
        ("{{ x | date }}", "the date filter takes 1 argument(s): fmt"),
    ],
)
def test_saving_a_bad_partial_is_a_400_naming_the_source(http, shop, source, words):
    body = raw_json({"source": source})
    r = http.put("/api/partials/footer", content=body["content"], headers={**shop, **body["headers"]})
    assert r.status_code == 400, r.text
    assert r.json()["field"].endswith("source") and words in r.json()["message"], r.json()
    assert_user_terms(r.json())
