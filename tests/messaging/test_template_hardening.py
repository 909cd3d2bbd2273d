"""Hostile and mixed-up templates: refusing a malformed template costs linear time (python-liquid's lexers are
quadratic on some inputs), comparison errors are in the template's terms, and an html variant cannot go into an
MJML layout."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from liquid.builtin.expressions import _tokenize
from liquid.builtin.tags.liquid_tag import _compile_rules, _tokenize_liquid_expression
from liquid.lex import get_lexer
from liquid.token import Token

from chorus.messaging import content
from chorus.messaging.content import ContentError, Rendered, Skip, render, validate_definition
from tests.messaging.test_content_limits import INTERNALS

# --- Lexing in linear time ------------------------------------------------------------------------------------

PIECES = [
    "{{", "}}", "{%", "%}", "{{-", "-}}", "{%-", "-%}", "-", " ", "  ", "\t", "\r", "\n", "\n\n", "\x0b", "\u00a0",
    "\u2028", "a", "x_y", "é", "٣", "1", "#", "{", "}", "%", "raw", "endraw", "{%- raw -%}", "{% endraw %}", "doc",
    "enddoc", "comment", "endcomment", "if", "liquid", "echo", '"', "'", "[", "]", '["', '"]', "(", ")", "..", ".",
    "|", ":", ",",
]  # fmt: skip
SOURCES = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
PARENT = Token("TAG", "liquid", 0, "")
LIQUID_TAG_RULES = _compile_rules(
    (
        ("LIQUID_EXPR", r"[ \t]*(?P<name>#|\w+)[ \t]*(?P<expr>.*?)[ \t\r]*?(\n+|$)"),
        ("SKIP", r"[\r\n]+"),
        ("illegal", r"."),
    )
)  # python-liquid's own, as LiquidTag builds them without comment syntax


def outcome(tokens) -> object:
    try:
        return list(tokens())
    except Exception as err:  # noqa: BLE001 - the same error, at the same place, is part of the outcome
        return type(err).__name__, getattr(err, "message", None), getattr(err, "token", None)


def python_liquid_expression(source: str) -> list:
    fast, _tokenize._RE = _tokenize._RE, _tokenize._RE.rules
    try:
        return list(_tokenize.tokenize(source, PARENT))
    finally:
        _tokenize._RE = fast


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SOURCES)
def test_the_linear_lexers_give_exactly_python_liquids_tokens_and_errors(source):
    ours = content._ENVS["lax"].tokenizer()
    assert outcome(lambda: ours(source)) == outcome(lambda: get_lexer()(source))
    liquid_tag = content._ENVS["lax"].tags["liquid"]._tokenize
    theirs = _tokenize_liquid_expression(source, rules=LIQUID_TAG_RULES, token=PARENT, comment_start_string="")
    assert outcome(lambda: liquid_tag(source, token=PARENT)) == outcome(lambda: theirs)
    assert outcome(lambda: _tokenize.tokenize(source, PARENT)) == outcome(lambda: python_liquid_expression(source))
    markup = re.compile(r"\{\{.*?\}\}|\{%.*?%\}", re.S)
    assert [source[start:end] for start, end in content._markup_spans(source)] == markup.findall(source)


class CountingPattern:
    def __init__(self, pattern: re.Pattern[str]):
        self.pattern, self.searches = pattern, 0

    def search(self, *args):
        self.searches += 1
        return self.pattern.search(*args)


def test_a_search_that_found_nothing_is_not_repeated(monkeypatch):
    """python-liquid looked for the closing "}}" again from every "{{" (16,000 characters took 15 s to refuse)."""
    closes = CountingPattern(content._OUT_CLOSE)
    monkeypatch.setattr(content, "_OUT_CLOSE", closes)
    with pytest.raises(ContentError, match=r"expected '}}', found end of file \(line 1\)"):
        content._check_template("{{" * 100_000, "variants.sms.text", None)
    assert closes.searches == 1


LIMIT = content.SOURCE_LIMIT


def fill(unit: str, room: int = 64) -> str:
    return unit * ((LIMIT - room) // len(unit))


HOSTILE = {
    # each took from minutes to hours at the source limit (16,000 characters of "{{" took 15 s)
    "unclosed outputs": fill("{{"),
    "unclosed outputs, three braces": fill("{{{"),
    "braces": fill("{"),
    "spaces inside an output": "{{" + fill(" ") + "}}",
    "spaces after a tag name": "{% if" + fill(" ") + "%}x{% endif %}",
    "a tag name without an end": "{%" + fill("a"),
    "raw tags without endraw": fill("{% raw %}"),
    "doc tags without enddoc": fill("{% doc %}"),
    "braces in a comment": "{% comment %}" + fill("{{") + "{% endcomment %}",
    "spaces inside a liquid tag line": "{% liquid echo 'a'" + fill(" ") + "'b' %}",
    "parentheses": "{{ " + fill("(") + " }}",
    "parentheses before a range": "{{ " + fill("(") + ".. }}",
    "unclosed quoted indexes": "{{ a" + fill('["[') + " }}",
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_at_the_size_limit_is_checked_in_linear_time(source):
    assert len(source) <= LIMIT
    definition = {"name": "n", "kind": "transactional", "variants": {"in_app": {"body": source}}}
    try:
        validate_definition(definition)
    except ContentError as err:
        assert err.field == "variants.in_app.body"


@pytest.mark.timeout(60)
def test_an_email_whose_comment_is_full_of_braces_renders_in_linear_time():
    # the plain-text part found the Liquid tags with a regex that scanned to the end from every "{{"
    html = "<p>Hi {{ traits.name }}</p>{% comment %}" + fill("{{", 200) + "{% endcomment %}"
    definition = validate_definition({"name": "n", "kind": "transactional",
                                      "variants": {"email": {"subject": "s", "html": html}}})  # fmt: skip
    rendered = render(definition, "email", {"traits": {"name": "Ada"}})
    assert isinstance(rendered, Rendered), rendered
    assert rendered.fields["text"] == "Hi Ada"


OLD_MJML_TAG = re.compile(r"<(/?)(mjml|mj-[\w-]+)\b[^<>]*?(/?)>")  # before it was made linear


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(["<", ">", "/", "/>", "mj-", "mjml", "a", "-", " ", "text", "\n", "é", "_"]),
                max_size=20).map("".join))  # fmt: skip
def test_the_mjml_tag_scan_finds_what_it_found_before(source):
    def found(pattern):
        return [(m.span(), m.groups()) for m in pattern.finditer(source)]

    assert found(content._MJML_TAG) == found(OLD_MJML_TAG)


@pytest.mark.timeout(60)
def test_mjml_with_a_long_broken_tag_name_is_refused_in_linear_time():
    # every shorter name ending on a "-" was tried again to the end of the text (16,000 characters took 13 s);
    # 90,000 characters: under the email's size limit, which is checked first
    mjml = "<mjml><mj-body><mj-a" + "-a" * 45_000 + "</mj-body></mjml>"
    with pytest.raises(ContentError, match="the MJML is not well-formed") as caught:
        validate_definition({"name": "n", "kind": "transactional",
                             "variants": {"email": {"subject": "s", "mjml": mjml}}})  # fmt: skip
    assert caught.value.field == "variants.email.mjml"


DEEP = """
import sys, threading
from chorus.messaging import content
definition = {"name": "n", "kind": "transactional", "variants": {"email": {"subject": "s", sys.argv[1]: sys.argv[2]}}}
def run():
    try:
        print(content.render(content.validate_definition(definition), "email", {}))
    except content.ContentError as err:
        print(f"ContentError({err.field!r}, {err.message!r})")
thread = threading.Thread(target=run)  # as in the server: a worker thread, with a thread's stack
thread.start()
thread.join()
"""


@pytest.mark.parametrize(
    ("markup", "source", "outcome"),
    [
        ("mjml", "<mjml><mj-body>" + "<mj-section>" * 5_000 + "</mj-body></mjml>",
         "ContentError('variants.email.mjml', 'the MJML nests elements more than 1,000 deep (are tags left open?)')"),
        ("html", "<b>" * 20_000 + "{{ x | default: '' }}",
         "Skip(reason='the HTML nests elements more than 1,000 deep (are tags left open?)', "
         "field='variants.email.html')"),
        ("html", "{% for i in (1..5000) %}<div>{% endfor %}",
         "Skip(reason='the HTML nests elements more than 1,000 deep (are tags left open?)', "
         "field='variants.email.html')"),
    ],
)  # fmt: skip
def test_markup_nested_too_deep_for_the_native_parsers_is_refused_instead_of_crashing_the_process(
    markup, source, outcome
):
    # mrml and css-inline recurse in native code: deep enough, they overflowed the stack (a segmentation fault)
    done = subprocess.run([sys.executable, "-c", DEEP, markup, source], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == outcome


def test_ordinary_markup_is_not_counted_as_deep():
    html = "<table>" + "<tr><td><p>item<br><img src='x'><li>x" * 3_000 + "</table>" + "<div>" * 50 + "</div>" * 50
    assert content._nesting_problem(html, "HTML") is None
    assert content._nesting_problem("<mjml><mj-body>" + "<mj-image src='x' />" * 3_000 + "</mj-body></mjml>",
                                    "MJML") is None  # fmt: skip


# --- Comparison errors in the template's terms -----------------------------------------------------------------


def in_app(body: str) -> dict:
    return validate_definition({"name": "n", "kind": "transactional", "variants": {"in_app": {"body": body}}})


@pytest.mark.parametrize(
    ("body", "context", "words"),
    [
        ('{% if traits.points > "10" %}gold{% endif %}', {"traits": {"points": 3}},
         "cannot compare text with a number using < or >"),
        ("x\n{% if traits.a < traits.b %}y{% endif %}", {"traits": {"a": [1], "b": {}}},
         "cannot compare a list with an object using < or >"),
        ("{% if traits.a contains 's' %}y{% endif %}", {"traits": {"a": 1.5}},
         "contains cannot look for text in a number"),
    ],
)  # fmt: skip
def test_a_comparison_of_values_of_different_kinds_is_skipped_in_the_template_terms(body, context, words):
    skip = render(in_app(body), "in_app", context)
    assert isinstance(skip, Skip), skip
    assert skip.field == "variants.in_app.body"
    assert words in skip.reason, skip.reason
    assert f"(line {body.count(chr(10)) + 1})" in skip.reason
    assert not INTERNALS.search(skip.reason), skip.reason
    assert "'str'" not in skip.reason and "'int'" not in skip.reason


def test_preview_gives_the_same_comparison_reason():
    skip = content.preview(in_app('{% if traits.points > "10" %}gold{% endif %}'), {"traits": {"points": 3}})
    assert skip["in_app"] == Skip(
        "cannot compare text with a number using < or >: compare values of the same kind (a text holding a number "
        "becomes a number with | plus: 0) (line 1)",
        "variants.in_app.body",
    )


# --- An html variant in an MJML layout --------------------------------------------------------------------------

MJML_LAYOUT = (
    "<mjml><mj-head><mj-title>Shop</mj-title></mj-head><mj-body>{{ content }}"
    "<mj-section><mj-column><mj-text>Shop Inc.</mj-text></mj-column></mj-section></mj-body></mjml>"
)
HTML_LAYOUT = "<html><body><div class='wrap'>{{ content }}</div></body></html>"
PARTIALS = {"mjml_layout": MJML_LAYOUT, "html_layout": HTML_LAYOUT, "commented": "{% comment %}x{% endcomment %}\n"
            "<!-- brand -->\n" + MJML_LAYOUT}  # fmt: skip


def receipt(layout: str, **extra) -> dict:
    variant = {"subject": "Receipt", "html": "<p>Thanks for your order</p>"}
    return {"name": "r", "kind": "transactional", "layout": layout, "variants": {"email": variant}, **extra}


@pytest.mark.parametrize("layout", ["mjml_layout", "commented"])
def test_an_html_variant_in_an_mjml_layout_is_refused_naming_the_field(layout):
    with pytest.raises(ContentError) as caught:
        validate_definition(receipt(layout), PARTIALS)
    assert caught.value.field == "variants.email.html"
    assert f"layout {layout!r} is an MJML document" in caught.value.message


def test_an_html_locale_override_in_an_mjml_layout_is_refused_naming_the_field():
    mjml = "<mj-section><mj-column><mj-text>Thanks</mj-text></mj-column></mj-section>"
    definition = {"name": "r", "kind": "transactional", "layout": "mjml_layout",
                  "variants": {"email": {"subject": "Receipt", "mjml": mjml}},
                  "locales": {"fr": {"email": {"html": "<p>Merci</p>"}}}}  # fmt: skip
    with pytest.raises(ContentError) as caught:
        validate_definition(definition, PARTIALS)
    assert caught.value.field == "locales.fr.email.html"


def test_an_html_variant_in_an_html_layout_is_still_sent():
    rendered = render(validate_definition(receipt("html_layout"), PARTIALS), "email", {}, partials=PARTIALS)
    assert isinstance(rendered, Rendered), rendered
    assert "<div class=\"wrap\"><p>Thanks for your order</p></div>" in rendered.fields["html"]


def test_a_layout_changed_to_mjml_after_the_save_skips_instead_of_sending_raw_mjml():
    definition = validate_definition(receipt("html_layout"), PARTIALS)
    skip = render(definition, "email", {}, partials={"html_layout": MJML_LAYOUT})
    assert isinstance(skip, Skip), skip
    assert skip.field == "variants.email.html"
    assert "layout 'html_layout' is an MJML document" in skip.reason


def test_saving_an_html_variant_with_an_mjml_layout_is_a_400_naming_the_field(http, workspace):
    headers = {"Authorization": f"Bearer {workspace['api_key']}"}
    assert http.put("/api/partials/shop_layout", json={"source": MJML_LAYOUT}, headers=headers).status_code == 200
    r = http.put("/api/templates/receipt", json=receipt("shop_layout"), headers=headers)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == "variants.email.html", body
    assert "layout 'shop_layout' is an MJML document" in body["message"], body
