"""Message definitions: checks at save time, rendering per channel, locales, escaping, limits, hostile templates."""

import copy
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging import content, sms
from chorus.messaging.content import (
    CHANNELS,
    MAX_SIZES,
    ContentError,
    Rendered,
    Skip,
    preview,
    render,
    validate_definition,
    validate_partial,
)

PARTIALS = {
    "brand_layout": (
        "<mjml><mj-head><mj-style>.promo { color: #ff0000; }</mj-style>"
        "<mj-style>@media (max-width: 480px) { .promo { font-size: 18px; } }</mj-style></mj-head>"
        "<mj-body>{{ content }}<mj-section><mj-column><mj-text>Brand footer</mj-text></mj-column></mj-section>"
        "</mj-body></mjml>"
    ),
    "html_layout": "<html><body><div class='wrap'>{{ content }}</div><p>Unsubscribe</p></body></html>",
    "greeting": "Hello {{ traits.first_name | default: 'there' }}",
    "self_include": "x{% include 'self_include' %}",
    "self_render": "x{% render 'self_render' %}{% render 'self_render' %}",
    "nested": "{% include 'greeting' %}!",
    # Ten includes of the next level, thirteen levels deep: 10**13 renders without a node budget.
    **{f"wide_{i}": f"{{% include 'wide_{i + 1}' %}}" * 10 for i in range(1, 13)},
    "wide_13": "",
}

CTX = {
    "profile": {"id": "p_1"},
    "traits": {"first_name": "Ada", "city": "Lyon"},
    "event": {"url": "https://shop.example/cart?id=7&utm=x", "order_id": "A-17", "sku": "SKU-1"},
    "message": {"id": "m_1"},
}

MJML_BODY = (
    "<mj-section><mj-column>"
    "<mj-text css-class='promo'>Hi {{ traits.first_name }}, "
    '<a href="{{ event.url }}">Back to your cart</a></mj-text>'
    "</mj-column></mj-section>"
)

DOC = {
    "name": "cart_reminder",
    "topic": "offers",
    "layout": "brand_layout",
    "variants": {
        "email": {"subject": "{{ traits.first_name }}, your cart", "preheader": "Still thinking?", "mjml": MJML_BODY},
        "sms": {"text": "{% include 'greeting' %}, your cart: {{ event.url }}"},
        "push": {"title": "Your cart", "body": "{{ traits.first_name }}, come back", "url": "{{ event.url }}"},
        "whatsapp": {
            "template": {
                "name": "order_update",
                "language": "en_US",
                "parameters": ["{{ traits.first_name }}", "{{ event.order_id }}"],
            }
        },
        "messenger": {"text": "Hey {{ traits.first_name }}"},
        "in_app": {"title": "Cart", "body": "Still there?", "cta": {"label": "Open", "url": "{{ event.url }}"}},
        "webhook": {
            "body": {"customer": "{{ profile.id }}", "items": [{"sku": "{{ event.sku }}", "qty": 2}], "ok": True}
        },
    },
    "locales": {
        "fr": {"email": {"subject": "Votre panier, {{ traits.first_name }}"}, "sms": {"text": "Votre panier"}},
        "fr-CA": {"email": {"subject": "Ton panier"}},
    },
}


def definition(**changes):
    doc = copy.deepcopy(DOC)
    doc.update(changes)
    return validate_definition(doc, PARTIALS)


def with_variant(channel, variant, **top):
    return {"name": "t", **top, "variants": {channel: variant}}


def rendered(defn, channel, ctx=CTX, **kw):
    out = render(defn, channel, ctx, partials=PARTIALS, **kw)
    assert isinstance(out, Rendered), out
    return out


# --- validation --------------------------------------------------------------------------------------------------


def test_validate_fills_defaults_and_returns_a_copy():
    doc = with_variant("sms", {"text": "hi"})
    out = validate_definition(doc)
    assert out == {
        "name": "t",
        "kind": "marketing",
        "topic": "marketing",
        "layout": None,
        "variants": {"sms": {"text": "hi"}},
        "locales": {},
    }
    out["variants"]["sms"]["text"] = "changed"
    assert doc["variants"]["sms"]["text"] == "hi"
    assert validate_definition({**doc, "kind": "transactional"})["topic"] == "transactional"
    wa = validate_definition(with_variant("whatsapp", {"template": {"name": "hello", "language": "en"}}))
    assert wa["variants"]["whatsapp"]["template"]["parameters"] == []


def test_full_definition_validates():
    out = definition()
    assert list(out["variants"]) == list(CHANNELS)
    assert out["topic"] == "offers"
    assert out["layout"] == "brand_layout"


@pytest.mark.parametrize(
    ("doc", "field", "words"),
    [
        ("not an object", "definition", "object"),
        ({"variants": {"sms": {"text": "x"}}}, "name", "required"),
        ({**with_variant("sms", {"text": "x"}), "colour": "red"}, "colour", "unknown field"),
        ({**with_variant("sms", {"text": "x"}), "kind": "spam"}, "kind", "marketing"),
        ({**with_variant("sms", {"text": "x"}), "topic": "Bad Topic"}, "topic", "a-z"),
        ({"name": "t", "variants": {}}, "variants", "at least one"),
        (with_variant("fax", {"text": "x"}), "variants.fax", "unknown channel"),
        (with_variant("sms", {"text": "x", "body": "y"}), "variants.sms.body", "unknown field"),
        (with_variant("sms", {"text": 3}), "variants.sms.text", "string"),
        (with_variant("sms", {}), "variants.sms.text", "required"),
        (with_variant("sms", "hello"), "variants.sms", "object"),
        (with_variant("email", {"mjml": "<mjml></mjml>"}), "variants.email.subject", "required"),
        (with_variant("email", {"subject": "s"}), "variants.email", "exactly one of mjml or html"),
        (with_variant("email", {"subject": "s", "html": "<p>x</p>", "mjml": "<mjml/>"}), "variants.email", "exactly"),
        (with_variant("email", {"subject": "s", "mjml": "<mjml><mj-body><mj-text>"}), "variants.email.mjml", "MJML"),
        (with_variant("email", {"subject": "s", "mjml": "<p>not mjml</p>"}), "variants.email.mjml", "MJML"),
        (with_variant("whatsapp", {}), "variants.whatsapp", "exactly one of text or template"),
        (with_variant("whatsapp", {"text": "a", "template": {"name": "x", "language": "en"}}), "variants.whatsapp", ""),
        (
            with_variant("whatsapp", {"template": {"name": "Bad Name", "language": "en"}}),
            "variants.whatsapp.template.name",
            "",
        ),
        (with_variant("whatsapp", {"template": {"name": "ok"}}), "variants.whatsapp.template.language", "required"),
        (
            with_variant("whatsapp", {"template": {"name": "ok", "language": "en", "parameters": [1]}}),
            "variants.whatsapp.template.parameters",
            "strings",
        ),
        (with_variant("in_app", {"body": "b", "cta": {"label": "x"}}), "variants.in_app.cta.url", "required"),
        (with_variant("webhook", {"body": {"a": {1, 2}}}), "variants.webhook.body.a", "JSON"),
        ({**with_variant("sms", {"text": "x"}), "layout": "nope"}, "layout", "no partial"),
        ({**with_variant("sms", {"text": "x"}), "layout": "greeting"}, "layout", "content"),
        (
            {**with_variant("sms", {"text": "x"}), "locales": {"fr": {"push": {"body": "x"}}}},
            "locales.fr.push",
            "no default",
        ),
        ({**with_variant("sms", {"text": "x"}), "locales": {"not a locale": {}}}, "locales.not a locale", "locale"),
        (
            {**with_variant("sms", {"text": "x"}), "locales": {"fr": {"sms": {"txt": "x"}}}},
            "locales.fr.sms.txt",
            "unknown",
        ),
        (
            {**with_variant("sms", {"text": "x"}), "locales": {"fr": {"sms": {"text": "{{ x"}}}},
            "locales.fr.sms.text",
            "",
        ),
    ],
)
def test_structure_errors_name_the_field(doc, field, words):
    with pytest.raises(ContentError) as err:
        validate_definition(doc, PARTIALS)
    assert err.value.field == field
    assert words in err.value.message
    assert str(err.value).startswith(field)


def test_syntax_error_names_field_and_line():
    doc = with_variant("email", {"subject": "s", "html": "<p>one</p>\n<p>two</p>\n<p>{{ traits.name | }</p>"})
    with pytest.raises(ContentError) as err:
        validate_definition(doc)
    assert err.value.field == "variants.email.html"
    assert err.value.line == 3
    assert "variants.email.html" in str(err.value) and "line 3" in str(err.value)


def test_unclosed_block_reported_at_the_last_line():
    with pytest.raises(ContentError) as err:
        validate_definition(with_variant("sms", {"text": "a\n{% if traits.vip %}\nb"}))
    assert err.value.field == "variants.sms.text"
    assert err.value.line == 3
    assert "endif" in err.value.message


def test_locale_syntax_error_names_the_locale_field():
    doc = {**with_variant("sms", {"text": "x"}), "locales": {"fr": {"sms": {"text": "ok\n{% if %}"}}}}
    with pytest.raises(ContentError) as err:
        validate_definition(doc)
    assert err.value.field == "locales.fr.sms.text"
    assert err.value.line == 2


def test_missing_static_partial_rejected_at_save():
    with pytest.raises(ContentError) as err:
        validate_definition(with_variant("sms", {"text": "a\n{% include 'footer' %}"}), PARTIALS)
    assert (err.value.field, err.value.line) == ("variants.sms.text", 2)
    assert "'footer' does not exist" in err.value.message
    # Partials of partials are followed too.
    with pytest.raises(ContentError, match="'missing'.*included by 'outer'"):
        validate_definition(with_variant("sms", {"text": "{% render 'outer' %}"}), {"outer": "{% render 'missing' %}"})


def test_validate_partial():
    validate_partial("footer_v2", "<p>{{ traits.first_name | default: 'you' }}</p>{% include 'other' %}")
    for name in ("", "Footer", "../x", "a/b", "x" * 65, 3):
        with pytest.raises(ContentError) as err:
            validate_partial(name, "ok")
        assert err.value.field == "name"
    with pytest.raises(ContentError) as err:
        validate_partial("footer", "line\n{% for x in y %}\n{% endif %}")
    assert (err.value.field, err.value.line) == ("source", 3)
    with pytest.raises(ContentError, match="unknown filter 'shout'"):
        validate_partial("footer", "{{ x | shout }}")


# --- rendering: every channel ----------------------------------------------------------------------------------


def test_every_channel_renders_its_fields():
    out = preview(definition(), CTX, partials=PARTIALS)
    assert list(out) == list(CHANNELS)
    assert all(isinstance(r, Rendered) and r.locale is None for r in out.values()), out

    email = out["email"].fields
    assert set(email) == {"subject", "preheader", "html", "text"}
    assert email["subject"] == "Ada, your cart"
    assert email["preheader"] == "Still thinking?"

    assert out["sms"].fields == {
        "text": "Hello Ada, your cart: https://shop.example/cart?id=7&utm=x",
        "encoding": "GSM-7",
        "segments": 1,
        "characters": 58,
    }
    assert out["push"].fields == {
        "title": "Your cart",
        "body": "Ada, come back",
        "url": "https://shop.example/cart?id=7&utm=x",
        "image": None,
    }
    assert out["whatsapp"].fields == {
        "template": {"name": "order_update", "language": "en_US", "parameters": ["Ada", "A-17"]}
    }
    assert out["messenger"].fields == {"text": "Hey Ada"}
    assert out["in_app"].fields == {
        "title": "Cart",
        "body": "Still there?",
        "cta": {"label": "Open", "url": "https://shop.example/cart?id=7&utm=x"},
    }
    assert out["webhook"].fields == {"body": {"customer": "p_1", "items": [{"sku": "SKU-1", "qty": 2}], "ok": True}}


def test_whatsapp_text_and_sms_unicode():
    defn = validate_definition(
        {"name": "t", "variants": {"whatsapp": {"text": "Hi {{ traits.first_name }}"}, "sms": {"text": "Ça va 😀"}}}
    )
    assert rendered(defn, "whatsapp").fields == {"text": "Hi Ada"}
    assert rendered(defn, "sms").fields == {"text": "Ça va 😀", "encoding": "UCS-2", "segments": 1, "characters": 8}


def test_mjml_compiles_to_html_with_inlined_styles():
    html = rendered(definition(), "email").fields["html"]
    assert html.lstrip().lower().startswith("<!doctype html>")
    promo = re.search(r'<td[^>]*class="promo"[^>]*>', html).group(0)
    assert "color: #ff0000" in promo  # the class rule moved onto the element
    styles = "".join(re.findall(r"<style[^>]*>(.*?)</style>", html, re.S))
    assert ".promo { color" not in styles and "{ color: #ff0000" not in styles
    assert "@media (max-width: 480px)" in styles  # media queries cannot be inlined: css_inline keeps them
    assert 'style="' in re.search(r"<body[^>]*>", html).group(0)
    assert "Brand footer" in html  # the layout wrapped the body


def test_html_variant_inlined_and_wrapped_in_layout():
    doc = with_variant(
        "email",
        {"subject": "s", "html": "<style>p { color: blue; }</style><p>Hi {{ traits.first_name }}</p>"},
        layout="html_layout",
    )
    html = rendered(validate_definition(doc, PARTIALS), "email").fields["html"]
    assert '<p style="color: blue;">Hi Ada</p>' in html
    assert "<style" not in html  # nothing left that could not be inlined
    assert '<div class="wrap"><p' in html and "Unsubscribe" in html


def test_preheader_is_hidden_preview_text_at_top_of_body():
    html = rendered(definition(), "email").fields["html"]
    after_body = html[re.search(r"<body[^>]*>", html).end() :]
    assert after_body.startswith('<div style="display:none;')
    assert after_body.index("Still thinking?") < after_body.index("Back to your cart")


def test_mj_preview_works_without_preheader():
    mjml = "<mjml><mj-head><mj-preview>Peek inside</mj-preview></mj-head><mj-body>" + MJML_BODY + "</mj-body></mjml>"
    out = rendered(validate_definition(with_variant("email", {"subject": "s", "mjml": mjml})), "email").fields
    assert out["preheader"] is None
    assert re.search(r'<div style="display:none;[^"]*">Peek inside</div>', out["html"])
    assert "Peek inside" not in out["text"]


def test_text_part_generated_from_html_with_links():
    text = rendered(definition(), "email").fields["text"]
    assert "Hi Ada" in text
    assert "[Back to your cart](https://shop.example/cart?id=7&utm=x)" in text
    assert "Brand footer" in text
    assert "Still thinking?" not in text  # the hidden preheader is not body text
    assert "<" not in text and "  " not in text


def test_text_variant_used_when_given():
    doc = with_variant("email", {"subject": "s", "html": "<p>x</p>", "text": "Plain {{ traits.first_name }} <3"})
    assert rendered(validate_definition(doc), "email").fields["text"] == "Plain Ada <3"


def test_subject_is_one_line():
    doc = with_variant("email", {"subject": "Hi {{ traits.first_name }}", "html": "<p>x</p>"})
    out = rendered(validate_definition(doc), "email", {"traits": {"first_name": "Ada\r\nBcc: x@evil.example"}})
    assert out.fields["subject"] == "Hi Ada Bcc: x@evil.example"


# --- locales ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "used", "subject"),
    [
        ("fr-CA", "fr-CA", "Ton panier"),
        ("fr_ca", "fr-CA", "Ton panier"),
        ("fr-BE", "fr", "Votre panier, Ada"),
        ("fr", "fr", "Votre panier, Ada"),
        ("de-DE", None, "Ada, your cart"),
        (None, None, "Ada, your cart"),
    ],
)
def test_locale_fallback_exact_then_language_then_default(locale, used, subject):
    out = rendered(definition(), "email", locale=locale)
    assert (out.locale, out.fields["subject"]) == (used, subject)
    assert "Hi Ada" in out.fields["html"]  # fields not overridden come from the default variant


def test_locale_layers_language_under_exact_per_channel():
    defn = definition()
    assert rendered(defn, "sms", locale="fr-CA").fields["text"] == "Votre panier"  # fr-CA has no sms override
    assert rendered(defn, "sms", locale="fr-CA").locale == "fr"
    assert rendered(defn, "push", locale="fr-CA").locale is None


def test_locale_override_can_switch_alternatives():
    doc = {
        **with_variant("email", {"subject": "s", "mjml": "<mjml><mj-body></mj-body></mjml>"}),
        "locales": {"de": {"email": {"html": "<p>Hallo</p>"}}},
    }
    out = rendered(validate_definition(doc), "email", locale="de")
    assert "Hallo" in out.fields["html"] and out.locale == "de"


# --- missing values and defaults ---------------------------------------------------------------------------------


def test_missing_value_skips_and_names_the_variable():
    out = render(definition(), "email", {**CTX, "traits": {}}, partials=PARTIALS)
    assert out == Skip(reason="missing value traits.first_name", field="variants.email.subject")


def test_missing_value_in_locale_override_names_that_field():
    out = render(definition(), "email", {**CTX, "traits": {}}, locale="fr", partials=PARTIALS)
    assert out == Skip(reason="missing value traits.first_name", field="locales.fr.email.subject")


def test_missing_top_level_and_nested_values():
    defn = validate_definition(with_variant("sms", {"text": "{{ event.cart.total }} {{ coupon }}"}))
    assert render(defn, "sms", {"event": {}}) == Skip("missing value event.cart", "variants.sms.text")
    assert render(defn, "sms", {"event": {"cart": {"total": 3}}}) == Skip("missing value coupon", "variants.sms.text")


def test_default_filter_and_conditions_on_missing_values():
    text = "Hi {{ traits.first_name | default: 'there' }}{% if traits.vip %} VIP{% endif %}"
    text += "{% unless traits.x %}!{% endunless %}"
    defn = validate_definition(with_variant("sms", {"text": text}))
    assert rendered(defn, "sms", {"traits": {}}).fields["text"] == "Hi there!"
    assert rendered(defn, "sms", {"traits": {"first_name": "Bo", "vip": True}}).fields["text"] == "Hi Bo VIP!"


def test_value_that_renders_empty_is_a_skip():
    defn = validate_definition(with_variant("sms", {"text": "{{ traits.note }}"}))
    assert render(defn, "sms", {"traits": {"note": "  "}}) == Skip("sms.text is empty", "variants.sms.text")


def test_whatsapp_parameter_rules():
    defn = definition()
    out = render(defn, "whatsapp", {**CTX, "traits": {"first_name": ""}}, partials=PARTIALS)
    assert out == Skip("whatsapp.template.parameters[0] is empty", "variants.whatsapp.template.parameters[0]")
    out = render(defn, "whatsapp", {**CTX, "traits": {"first_name": "a\nb"}}, partials=PARTIALS)
    assert isinstance(out, Skip) and "new line" in out.reason


# --- escaping -----------------------------------------------------------------------------------------------------


def test_values_escaped_in_html_but_not_in_text_channels():
    ctx = {**CTX, "traits": {"first_name": "<script>alert(1)</script>"}}
    out = preview(definition(), ctx, partials=PARTIALS)
    html = out["email"].fields["html"]
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert out["email"].fields["subject"] == "<script>alert(1)</script>, your cart"
    assert out["push"].fields["body"] == "<script>alert(1)</script>, come back"
    assert out["whatsapp"].fields["template"]["parameters"][0] == "<script>alert(1)</script>"


def test_attribute_values_are_escaped_too():
    doc = with_variant("email", {"subject": "s", "html": '<a href="{{ event.url }}">x</a>'})
    html = rendered(validate_definition(doc), "email", {"event": {"url": 'x" onclick="evil()'}}).fields["html"]
    assert 'onclick="evil()"' not in html


# --- partials -----------------------------------------------------------------------------------------------------


def test_partials_include_and_render():
    defn = validate_definition(
        with_variant("sms", {"text": "{% render 'greeting' %} / {% include 'nested' %}"}), PARTIALS
    )
    assert rendered(defn, "sms").fields["text"] == "Hello Ada / Hello Ada!"
    # Liquid's rule: a partial loaded with render cannot use include.
    defn = validate_definition(with_variant("sms", {"text": "{% render 'nested' %}"}), PARTIALS)
    assert render(defn, "sms", CTX, partials=PARTIALS).reason == "include usage is not allowed in this context"


def test_dynamic_partial_name_that_does_not_exist_is_a_skip():
    defn = validate_definition(with_variant("sms", {"text": "{% include traits.block %}"}), PARTIALS)
    assert rendered(defn, "sms", {"traits": {"block": "greeting"}}).fields["text"] == "Hello there"
    out = render(defn, "sms", {"traits": {"block": "/etc/passwd"}}, partials=PARTIALS)
    assert out == Skip("partial '/etc/passwd' does not exist (line 1)", "variants.sms.text")


def test_missing_layout_at_render_is_a_skip():
    defn = definition()
    out = render(defn, "email", CTX, partials={k: v for k, v in PARTIALS.items() if k != "brand_layout"})
    assert out == Skip("layout 'brand_layout' does not exist", "layout")


def test_parsed_templates_are_cached():
    source = "cached {{ traits.first_name }}"
    assert content._parse("text", source) is content._parse("text", source)
    assert content._parse("text", source) is not content._parse("html", source)


# --- hostile templates --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "outcome", "words"),
    [
        ("{{ traits.__class__ }}", "error", "Python attributes"),
        ("{{ traits.__dict__ }}", "error", "Python attributes"),
        ("{{ traits['__class__'].__mro__ }}", "error", "Python attributes"),
        ("{{ traits | shell: 'ls' }}", "error", "unknown filter 'shell'"),
        ("{% include '/etc/passwd' %}", "error", "'/etc/passwd' does not exist"),
        ("{% render '../secrets' %}", "error", "'../secrets' does not exist"),
        ("{% include event.path %}", "skip", "'/etc/passwd' does not exist"),
        ("{% for i in (1..1000000000) %}x{% endfor %}", "skip", "loop limit"),
        ("{% for i in (1..1000000000000) reversed %}x{% endfor %}", "skip", "loop limit"),
        ("{{ (1..100000000) | join: ',' }}", "skip", "loop limit"),
        ("{% for i in (1..5000) %}{% for j in (1..5000) %}{% endfor %}{% endfor %}", "skip", "loop limit"),
        ("{% for i in (1..6000) %}{% endfor %}{% for i in (1..6000) %}{% endfor %}", "skip", "loop limit"),
        ("{% include 'self_include' %}", "skip", "nest too deeply"),
        ("{% render 'self_render' %}", "skip", "nest too deeply"),
        ("{% for i in (1..9999) %}" + "x" * 100 + "{% endfor %}", "skip", "output exceeds"),
        ("{% capture c %}{% for i in (1..9999) %}" + "y" * 100 + "{% endfor %}{% endcapture %}", "skip", "output"),
        (
            "{% assign s = 'abcdefgh' %}{% for i in (1..40) %}{% assign s = s | append: s %}{% endfor %}",
            "skip",
            "assign",
        ),
        ("{% assign s = '" + "z" * 1000 + "' %}{{ s | replace: '', s | replace: '', s }}", "skip", "could exceed"),
        ("{% assign n = 99999999 %}{% for i in (1..60) %}{% assign n = n | times: n %}{% endfor %}", "skip", "64 bits"),
        ("{{ 1 | divided_by: 0 }}", "skip", "divide by 0"),
        ("{% for i in (1..10000) %}" + "{% if 1 == 1 %}{% endif %}" * 500 + "{% endfor %}", "skip", "100,000 tags"),
        (
            "{% assign s = '" + "abcdefghij" * 900 + "' %}"
            "{% for i in (1..9000) %}{% assign n = s | split: '' | sort | size %}{% endfor %}",
            "skip",
            "more than 1 CPU second",
        ),
        ("{% include 'wide_1' %}", "skip", "100,000 tags|1 CPU second"),
    ],
    ids=lambda value: value[:60] if isinstance(value, str) else None,
)
def test_hostile_templates_end_in_an_error_or_a_skip_quickly(template, outcome, words):
    start = time.perf_counter()
    try:
        defn = validate_definition(with_variant("sms", {"text": template}), PARTIALS)
    except ContentError as err:
        result = err
    else:
        result = render(defn, "sms", {**CTX, "event": {"path": "/etc/passwd"}}, partials=PARTIALS)
    # not a timing test: a guard against a hang (the limits themselves are CPU-time, so a loaded CI does not matter)
    assert time.perf_counter() - start < 10.0
    if outcome == "error":
        assert isinstance(result, ContentError) and result.field == "variants.sms.text", result
        assert words in result.message
    else:
        assert isinstance(result, Skip) and result.field == "variants.sms.text", result
        assert re.search(words, result.reason), result.reason


def test_reasonable_nesting_is_allowed():
    partials = {f"level_{i}": f"{i}{{% include 'level_{i + 1}' %}}" for i in range(1, 10)} | {"level_10": "10"}
    loops = "{% for a in (1..2) %}{% for b in (1..2) %}{% for c in (1..2) %}{% for d in (1..2) %}x"
    text = "{% include 'level_1' %}" + loops + "{% endfor %}" * 4
    defn = validate_definition(with_variant("sms", {"text": text}), partials)
    out = render(defn, "sms", {}, partials=partials)
    assert out.fields["text"] == "12345678910" + "x" * 16


def test_loop_budget_is_per_render_not_per_recipient():
    defn = validate_definition(with_variant("sms", {"text": "{% for i in (1..6000) %}{% endfor %}ok"}))
    for _ in range(3):
        assert rendered(defn, "sms").fields["text"] == "ok"


# --- size limits --------------------------------------------------------------------------------------------------


def test_over_limit_sms_is_a_skip_naming_the_limit():
    defn = validate_definition(with_variant("sms", {"text": "{{ traits.bio }}"}))
    assert rendered(defn, "sms", {"traits": {"bio": "a" * 1530}}).fields["segments"] == 10
    out = render(defn, "sms", {"traits": {"bio": "a" * 1531}})
    assert out == Skip(
        "sms.text is 11 segments; the limit is 10 segments (1,530 GSM-7 characters)", "variants.sms.text"
    )
    out = render(defn, "sms", {"traits": {"bio": "я" * 671}})
    assert out.reason == "sms.text is 11 segments; the limit is 10 segments (670 UCS-2 characters)"


@pytest.mark.parametrize(
    ("channel", "variant", "field", "words"),
    [
        ("sms", {"text": "a" * 1600 + "{{ traits.x }}"}, "variants.sms.text", "10 segments"),
        ("messenger", {"text": "m" * 2001}, "variants.messenger.text", "2,000 characters"),
        ("whatsapp", {"text": "w" * 4097}, "variants.whatsapp.text", "4,096 characters"),
        ("push", {"title": "t" * 257, "body": "b"}, "variants.push.title", "256 bytes"),
        ("push", {"body": "é" * 800}, "variants.push.body", "1,536 bytes"),
        ("email", {"subject": "s", "html": "<p>" + "x" * 105_000 + "</p>"}, "variants.email.html", "Gmail"),
        ("webhook", {"body": {"blob": "b" * 262_144}}, "variants.webhook.body", "262,144 bytes"),
    ],
)
def test_static_text_over_the_limit_rejected_at_save(channel, variant, field, words):
    with pytest.raises(ContentError) as err:
        validate_definition(with_variant(channel, variant))
    assert err.value.field == field
    assert "already over the limit" in err.value.message and words in err.value.message


def test_text_inside_a_condition_is_not_counted_as_static():
    text = "{% if traits.long %}" + "a" * 1600 + "{% endif %}short"
    defn = validate_definition(with_variant("sms", {"text": text}))
    assert rendered(defn, "sms", {"traits": {}}).fields["text"] == "short"
    assert isinstance(render(defn, "sms", {"traits": {"long": True}}), Skip)


def test_email_over_gmail_clip_is_a_skip():
    defn = validate_definition(with_variant("email", {"subject": "s", "html": "<p>{{ event.blob }}</p>"}))
    out = render(defn, "email", {"event": {"blob": "x" * 110_000}})
    assert isinstance(out, Skip) and out.field == "variants.email.html"
    assert "email.html is" in out.reason and "the limit is 104,448 bytes" in out.reason and "Gmail" in out.reason


def test_push_and_webhook_rendered_limits():
    defn = validate_definition(with_variant("push", {"body": "{{ event.text }}"}))
    out = render(defn, "push", {"event": {"text": "€" * 600}})
    assert out == Skip(
        "push.body is 1,800 bytes; the limit is 1,536 bytes (share of the 4 KB push payload)", "variants.push.body"
    )
    defn = validate_definition(with_variant("webhook", {"body": {"a": "{{ event.text }}", "b": "{{ event.text }}"}}))
    out = render(defn, "webhook", {"event": {"text": "x" * 200_000}})
    assert isinstance(out, Skip) and out.field == "variants.webhook.body" and "262,144 bytes" in out.reason


def test_max_sizes_documented():
    assert MAX_SIZES["sms.text"].size == 10 and MAX_SIZES["sms.text"].unit == "segments"
    assert MAX_SIZES["email.html"].size == 102 * 1024
    assert MAX_SIZES["messenger.text"].size == 2000 and MAX_SIZES["whatsapp.text"].size == 4096
    push = sum(MAX_SIZES[f"push.{k}"].size for k in ("title", "body", "url", "image"))
    assert push <= 4096 - 256


# --- misc ---------------------------------------------------------------------------------------------------------


def test_channel_without_variant_is_a_skip_and_unknown_channel_an_error():
    defn = validate_definition(with_variant("sms", {"text": "x"}))
    assert render(defn, "push", CTX) == Skip("the message has no push variant", "variants.push")
    with pytest.raises(ContentError):
        render(defn, "fax", CTX)


@settings(max_examples=150, deadline=None)
@given(st.text(min_size=1, max_size=1600).filter(lambda s: s.strip()))
def test_any_trait_text_renders_into_sms_verbatim(value):
    defn = validate_definition(with_variant("sms", {"text": "{{ traits.note }}"}))
    out = render(defn, "sms", {"traits": {"note": value}})
    info = sms.segments(value)
    if info.segments > 10:
        assert isinstance(out, Skip) and "the limit is 10 segments" in out.reason
    else:
        assert isinstance(out, Rendered)
        assert out.fields == {
            "text": value,
            "encoding": info.encoding,
            "segments": info.segments,
            "characters": info.characters,
        }


JSON = st.recursive(
    # integers within 64 bits: what JSON from outside may hold (chorus.safejson), a definition included
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(alphabet="ab <>&\"'é\n"),
    # keys without NUL or lone surrogates: the store cannot hold them (chorus.safejson)
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=3),
                      inner, max_size=3),  # fmt: skip
    max_leaves=10,
)


@settings(max_examples=50, deadline=None)
@given(JSON)
def test_webhook_body_without_liquid_passes_through_unescaped(body):
    defn = validate_definition(with_variant("webhook", {"body": body}))
    assert render(defn, "webhook", {}) == Rendered("webhook", None, {"body": body})
