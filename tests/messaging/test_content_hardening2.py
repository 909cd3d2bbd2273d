"""Message content, from outside probes and review: links a person taps never run code (a deny-list of schemes: an
app's own deep links still go), an inline definition's errors name the field as the request has it, a text a
message cannot go without is refused empty at save, template names follow the id rule, and a template's topic is
checked by consent's own rule."""

from __future__ import annotations

import pytest

from chorus.demo.install import _load
from chorus.messaging import content, policy
from chorus.messaging.content import ContentError, Rendered, Skip, render, validate_definition

# --- Links a person taps ----------------------------------------------------------------------------------------

DENIED = [
    ("javascript:alert(1)", "javascript"), (" JavaScript:alert(1)", "javascript"),
    ("java\tscript:alert(1)", "javascript"), ("\x01\x02 java\nscr\ript:alert(1)", "javascript"),
    ("JAVASCRIPT:alert(1)", "javascript"), ("javascript&colon;alert(1)", "javascript"),
    ("data:text/html,<script>alert(1)</script>", "data"), ("Data:Image/SVG+xml,<svg/>", "data"),
    ("vbscript:msgbox(1)", "vbscript"), ("file:///etc/passwd", "file"),
]  # fmt: skip
ALLOWED = [
    "https://shop.example/cart?id=1", "http://shop.example/", "shop://p/1", "myapp+beta://x",
    "mailto:care@shop.example", "tel:+31612345678", "sms:+31612345678", "/cart?id=1", "cart", "?q=javascript:x",
    "#top", "//cdn.shop.example/i.png", "https://shop.example/?next=javascript:x", "javascripts/app.js",
    "data/img.png",
]  # fmt: skip
LINKS = (
    ("in_app", lambda url: {"body": "b", "cta": {"label": "Go", "url": url}}, "variants.in_app.cta.url",
     "in_app.cta.url"),
    ("push", lambda url: {"body": "b", "url": url}, "variants.push.url", "push.url"),
    ("push", lambda url: {"body": "b", "image": url}, "variants.push.image", "push.image"),
)  # fmt: skip


def definition(channel: str, variant: dict, **extra) -> dict:
    return {"name": "t", "kind": "transactional", "variants": {channel: variant}, **extra}


@pytest.mark.parametrize(("url", "scheme"), DENIED)
@pytest.mark.parametrize(("channel", "variant", "field", "name"), LINKS)
def test_a_link_that_runs_code_from_event_data_skips_the_message_naming_the_field(channel, variant, field, name, url,
                                                                                   scheme):  # fmt: skip
    """An outside probe: an in-app call to action's url, from event data, went out as "javascript:alert(1)" and the
    inbox served it as it was; a push's url and image likewise."""
    out = render(validate_definition(definition(channel, variant("{{ data.u }}"))), channel, {"data": {"u": url}})
    assert isinstance(out, Skip), (url, out)
    assert out.field == field, out
    assert out.reason.startswith(f"{name} is a {scheme}: link"), out.reason
    assert "shop://" in out.reason  # says what to use instead


@pytest.mark.parametrize("url", ALLOWED)
@pytest.mark.parametrize(("channel", "variant", "field", "name"), LINKS)
def test_web_links_app_deep_links_and_relative_links_are_sent(channel, variant, field, name, url):
    """3b9a02b's allow-list refused shop://p/1, an app's own deep link that FCM pushes legitimately open."""
    out = render(validate_definition(definition(channel, variant("{{ data.u }}"))), channel, {"data": {"u": url}})
    assert isinstance(out, Rendered), (url, out)
    sent = out.fields["cta"]["url"] if channel == "in_app" else out.fields[field.rsplit(".", 1)[1]]
    assert sent == url.strip()


@pytest.mark.parametrize(("url", "scheme"), DENIED)
@pytest.mark.parametrize(("channel", "variant", "field", "name"), LINKS)
def test_a_link_that_runs_code_as_written_is_refused_at_save(channel, variant, field, name, url, scheme):
    for source in (url, url + "{{ data.rest }}"):  # the scheme is in the text before any Liquid: known at save
        with pytest.raises(ContentError) as caught:
            validate_definition(definition(channel, variant(source)))
        assert caught.value.field == field, caught.value
        assert caught.value.message.startswith(f"{name} is a {scheme}: link"), caught.value.message


def test_a_link_refused_in_a_locale_override_names_the_override():
    doc = definition("push", {"body": "b", "url": "https://shop.example"},
                     locales={"fr": {"push": {"url": "javascript:alert(1)"}}})  # fmt: skip
    with pytest.raises(ContentError) as caught:
        validate_definition(doc)
    assert caught.value.field == "locales.fr.push.url"


@pytest.mark.parametrize("source", ["{{ data.u }}", "java{{ data.rest }}", "{{ data.scheme }}:alert(1)",
                                    "https://shop.example/{{ data.path }}", "shop://p/{{ data.id }}"])  # fmt: skip
def test_a_link_whose_scheme_depends_on_the_data_is_saved_and_checked_when_rendered(source):
    doc = validate_definition(definition("push", {"body": "b", "url": source}))
    data = {"u": "javascript:x", "rest": "script:x", "scheme": "javascript", "path": "cart", "id": 1}
    out = render(doc, "push", {"data": data})
    if source.startswith(("https", "shop")):
        assert isinstance(out, Rendered), out
    else:
        assert isinstance(out, Skip) and out.field == "variants.push.url", out


def test_a_link_in_a_webhook_or_an_email_is_not_a_link_a_person_taps_here():
    # webhook bodies go to the brand's own server; email links are HTML the email client sanitises
    doc = validate_definition(definition("webhook", {"body": {"u": "javascript:x"}}))
    assert isinstance(render(doc, "webhook", {}), Rendered)


# --- Texts a message cannot go without ----------------------------------------------------------------------------

EMPTY = [
    ("sms", {"text": ""}, "variants.sms.text", "an SMS with no text cannot be sent"),
    ("sms", {"text": " \n\t"}, "variants.sms.text", "an SMS with no text cannot be sent"),
    ("email", {"subject": "  ", "html": "<p>x</p>"}, "variants.email.subject", "an email with no subject"),
    ("push", {"title": "T", "body": ""}, "variants.push.body", "a push notification with no body"),
    ("whatsapp", {"text": "\u2003"}, "variants.whatsapp.text", "a WhatsApp message with no text"),
    ("whatsapp", {"template": {"name": "order", "language": "en_US", "parameters": ["{{ x }}", " "]}},
     "variants.whatsapp.template.parameters[1]", "WhatsApp refuses a template parameter with no text"),
    ("messenger", {"text": ""}, "variants.messenger.text", "a Messenger message with no text"),
    ("in_app", {"body": ""}, "variants.in_app.body", "an in-app message with no body"),
]  # fmt: skip


@pytest.mark.parametrize(("channel", "variant", "field", "words"), EMPTY)
def test_a_required_text_that_is_empty_as_written_is_refused_at_save(channel, variant, field, words):
    """An SMS whose text is "" was saved, and every send of it was skipped ("sms.text is empty")."""
    with pytest.raises(ContentError) as caught:
        validate_definition(definition(channel, variant))
    assert caught.value.field == field, caught.value
    assert caught.value.message.startswith("is empty: ") and words in caught.value.message, caught.value.message


def test_an_empty_required_text_in_a_locale_override_is_refused_naming_it():
    with pytest.raises(ContentError) as caught:
        validate_definition(definition("sms", {"text": "Hi"}, locales={"fr-CA": {"sms": {"text": ""}}}))
    assert caught.value.field == "locales.fr-CA.sms.text"


def test_optional_texts_may_be_empty_and_a_text_empty_only_from_data_is_a_skip():
    validate_definition(definition("push", {"title": "", "body": "b", "url": "", "image": ""}))
    validate_definition(definition("email", {"subject": "S", "html": "<p>x</p>", "text": "", "preheader": ""}))
    validate_definition(definition("in_app", {"title": "", "body": "b"}))
    doc = validate_definition(definition("sms", {"text": "{{ traits.note }}"}))
    assert render(doc, "sms", {"traits": {"note": " "}}) == Skip("sms.text is empty", "variants.sms.text")


# --- A template's topic: consent's own rule ---------------------------------------------------------------------


@pytest.mark.parametrize("topic", ["offers", "a.b-c_1", "x" * 64, "x" * 65, "Offers", "of fers", "*", "", "é"])
def test_a_templates_topic_follows_the_topic_rule_of_consent(topic):
    doc = definition("sms", {"text": "hi"}, topic=topic, kind="marketing")
    if policy.TOPIC_NAME.fullmatch(topic):
        assert validate_definition(doc)["topic"] == topic
    else:
        with pytest.raises(ContentError) as caught:
            validate_definition(doc)
        assert (caught.value.field, caught.value.message) == ("topic", f"must be {policy.TOPIC_RULE}")


def test_the_topic_rule_is_policys_own():
    """One truth per rule: content kept its own copy of policy.TOPIC_NAME, free to drift from what consent reads."""
    assert not hasattr(content, "_TOPIC")


# --- Through the API: inline content and template names -----------------------------------------------------------


@pytest.fixture
def ana(http, server, workspace) -> dict:
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                  json={"userId": "u1", "traits": {"email": "ana@example.com"}})  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    return h


BAD_CONTENT = [
    ({"name": "x", "variants": {"email": {"subject": "{{ x", "html": "<p>x</p>"}}}, "content.variants.email.subject"),
    ({"name": "x", "variants": {"sms": {"text": ""}}}, "content.variants.sms.text"),
    ({"name": "x", "variants": {"push": {"body": "b", "url": "javascript:alert(1)"}}}, "content.variants.push.url"),
    ({"variants": {"sms": {"text": "hi"}}}, "content.name"),
    ({"name": "x", "variants": {"fax": {}}}, "content.variants.fax"),
    ({"name": "x", "variants": {"sms": {"text": "hi"}}, "locales": {"fr": {"sms": {"text": "{% if %}"}}}},
     "content.locales.fr.sms.text"),
]  # fmt: skip


@pytest.mark.parametrize(("inline", "field"), BAD_CONTENT)
def test_an_inline_contents_error_names_the_field_as_the_request_has_it(http, ana, inline, field):
    """A message sent with inline content named `variants.email.subject`, which is not in the request: the field is
    `content.variants.email.subject`. Preview and a batch item say the same."""
    req = {"to": {"email": "ana@example.com"}, "content": inline}
    for path in ("/api/messages", "/api/messages/preview"):
        r = http.post(path, json=req, headers={**ana, "Idempotency-Key": "k1"})
        assert r.status_code == 400, (path, r.text)
        assert r.json()["field"] == field, (path, r.json())
        assert r.json()["message"].startswith(f"{field}: "), (path, r.json())
    r = http.post("/api/messages/batch", json={"messages": [{**req, "idempotency_key": "b1"}]}, headers=ana)
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["error"]["field"] == f"messages[0].{field}", r.json()


def test_a_saved_templates_error_still_names_the_field_from_the_definition(http, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.put("/api/templates/cart", json={"variants": {"sms": {"text": ""}}}, headers=h)
    assert (r.status_code, r.json()["field"]) == (400, "variants.sms.text"), r.text
    assert "an SMS with no text cannot be sent" in r.json()["message"]


@pytest.mark.parametrize("name", [".hidden", "-draft", "_draft", ".x", "a b", "a%09b", "t" * 65, "caf\u00e9"])
def test_a_template_name_follows_the_id_rule_of_segments(http, workspace, name):
    """PUT /api/templates/{name} checked the characters only: ".hidden" or "-draft" were saved, names a segment or a
    list (whose ids the same URLs carry) cannot have."""
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.put(f"/api/templates/{name}", json={"variants": {"sms": {"text": "hi"}}}, headers=h)
    assert r.status_code == 400, (name, r.text)
    assert r.json()["field"] == "name", r.json()
    assert "starting with a letter or digit" in r.json()["message"], r.json()
    assert http.get("/api/templates", headers=h).json()["templates"] == []


def test_the_demo_templates_and_ordinary_names_are_still_saved(http, workspace):
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    demo = _load("templates.json")
    for name, doc in demo.items():
        r = http.put(f"/api/templates/{name}", json=doc, headers=h)
        assert r.status_code == 200, (name, r.text)
    for name in ("t", "Spring.Sale-2026_v2", "7", "x" * 64):
        r = http.put(f"/api/templates/{name}", json={"variants": {"sms": {"text": "hi"}}}, headers=h)
        assert r.status_code == 200, (name, r.text)


PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVO"
       "RK5CYII=")


def test_a_push_image_inline_is_an_image_not_a_link():
    """Review: a push's image as an inline picture (data:image/png;base64,…) was refused at save, and a template saved
    with one before skipped every push. An image is shown, never opened; a data: url, and an SVG image (a document),
    are still refused."""
    defn = definition("push", {"title": "Sale", "body": "50% off", "url": "https://shop.example/", "image": PNG})
    validate_definition(defn)
    ctx = {"profile": {}, "traits": {}, "computed": {}, "event": {}, "data": {}, "message": {"id": "m"}}
    out = render(defn, "push", ctx)
    assert not isinstance(out, Skip) and out.fields["image"] == PNG
    for key, value in (("url", PNG), ("image", "data:image/svg+xml,<svg onload='alert(1)'/>"),
                       ("image", "data:text/html,<script>alert(1)</script>")):  # fmt: skip
        bad = {**defn, "variants": {"push": {**defn["variants"]["push"], key: value}}}
        with pytest.raises(ContentError, match=rf"push\.{key} is a data: link"):
            validate_definition(bad)
