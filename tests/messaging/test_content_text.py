"""The email's plain-text part made once per template equals the one made from each recipient's HTML."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging import content

MJML = """<mjml><mj-head><mj-preview>{{ traits.first_name }}, your cart is waiting</mj-preview></mj-head>
<mj-body><mj-section><mj-column>
<mj-text font-size="20px">Hi {{ traits.first_name | default: "there" }},</mj-text>
<mj-text>You left {{ event.product | upcase }} in your cart {% comment %}x{% endcomment %}.</mj-text>
<mj-button href="https://shop.example/cart?c={{ event.cart }}&amp;x=1">Back to my {{ event.product }}</mj-button>
<mj-text font-size="11px"><a href="{{ message.unsubscribe_url }}">Unsubscribe</a> {curly} braces</mj-text>
</mj-column></mj-section></mj-body></mjml>"""
HTML = """<html><body><h1>Hello {{ traits.first_name }}</h1><p>Your {{ event.product }} &amp; more.</p>
<ul><li>{{ event.cart }}</li><li>{{ traits.first_name | append: "!" }}</li></ul>
<p style="display:none">hidden {{ event.cart }}</p><a href="https://x.example/{{ event.cart }}">go</a></body></html>"""
LAYOUT = "<mjml><mj-body><mj-section><mj-column><mj-text>Shop {{ traits.first_name }}</mj-text></mj-column>" \
         "</mj-section>{{ content }}</mj-body></mjml>"  # fmt: skip
BODY = "<mj-section><mj-column><mj-text>Dear {{ traits.first_name }}: {{ event.product }}</mj-text></mj-column>" \
       "</mj-section>"  # fmt: skip

# Whitespace runs are left out: HTML collapses them, the text part keeps a value as it is.
word = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp", "Co", "Cn")), min_size=1, max_size=12
)
value = st.lists(word, min_size=1, max_size=4).map(" ".join)
# Values inside a link's URL are URL-safe: the MJML compiler escapes a backslash or a combining mark inside an
# attribute (``\u{b4d}``), which only the text made from its HTML would show.
url_value = st.text(alphabet=string.ascii_letters + string.digits + "-._~%", min_size=1, max_size=12)


def _definition(variant: dict, layout: str | None = None) -> dict:
    return content.validate_definition(
        {"name": "t", "layout": layout, "variants": {"email": {"subject": "Hi", **variant}}},
        {"frame": LAYOUT} if layout else {},
    )


CASES = {
    "mjml": (_definition({"mjml": MJML.replace("{% comment %}x{% endcomment %}", "")}), {}),
    "html": (_definition({"html": HTML}), {}),
    "layout": (_definition({"mjml": BODY}, "frame"), {"frame": LAYOUT}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=40, deadline=None)
@given(name=value, product=value, cart=url_value)
def test_text_part_from_the_template_equals_text_from_the_html(case, name, product, cart):
    definition, partials = CASES[case]
    ctx = {"traits": {"first_name": name}, "event": {"product": product, "cart": cart},
           "message": {"unsubscribe_url": "https://c.example/u/1"}}  # fmt: skip
    out = content.render(definition, "email", ctx, partials=partials)
    assert isinstance(out, content.Rendered), out
    assert out.fields["text"] == content._html_to_text(out.fields["html"])


def test_the_text_part_is_made_once_per_template_when_the_liquid_is_output_tags_only():
    assert content._text_part("mjml", MJML.replace("{% comment %}x{% endcomment %}", ""), None) is not None
    assert content._text_part("mjml", BODY, LAYOUT) is not None
    # a loop, a condition, a partial or a markup filter changes the HTML per recipient: made from each HTML
    for source in (MJML, HTML.replace("<li>", "{% for x in event.items %}<li>").replace("</ul>", "{% endfor %}</ul>"),
                   HTML.replace("{{ event.cart }}", "{{ event.cart | newline_to_br }}")):  # fmt: skip
        assert content._text_part("html" if source.startswith("<html") else "mjml", source, None) is None


def test_literal_braces_and_escapes_survive():
    definition, _ = CASES["mjml"]
    ctx = {"traits": {"first_name": "A&B <x>"}, "event": {"product": "{{ no }}", "cart": "1"},
           "message": {"unsubscribe_url": "https://c.example/u/1"}}  # fmt: skip
    text = content.render(definition, "email", ctx).fields["text"]
    assert "Hi A&B <x>," in text and "{curly} braces" in text and "{{ NO }}" in text
