"""One rule decorates every link of an email, in its HTML part and in its text part (issue 11 §6)."""

import html as html_lib
import re
from urllib.parse import parse_qs, urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.messaging.links import Decorator, Links, track_email

LINKS = Links("https://chorus.example", b"k" * 32)
UTM = {"utm_source": "chorus", "utm_medium": "email", "utm_campaign": "spring", "utm_content": "msg_1"}


def hrefs(html: str) -> list[str]:
    return [html_lib.unescape(u) for u in re.findall(r'href="([^"]+)"', html)]


def test_text_links_get_the_utm_tags_and_the_click_redirect_of_their_html_twins():
    rendered = {
        "html": '<p><a href="https://shop.example/cart?id=7&amp;utm_campaign=own">Cart</a> '
        '<a href="https://chorus.example/u/tok">Unsubscribe</a></p></body>',
        "text": "Cart: https://shop.example/cart?id=7&utm_campaign=own.\n"
        "[Cart](https://shop.example/cart?id=7&utm_campaign=own)\n"
        "Unsubscribe: https://chorus.example/u/tok",
    }
    track_email(rendered, "msg_1", LINKS, UTM, track=True)
    click = hrefs(rendered["html"])[0]
    assert click.startswith("https://chorus.example/c/")
    text = rendered["text"]
    assert text.count(click) == 2  # the same redirect as the HTML part, in the sentence and in the Markdown link
    assert f"Cart: {click}.\n" in text and f"[Cart]({click})" in text  # punctuation and brackets stay outside
    assert "Unsubscribe: https://chorus.example/u/tok" in text  # Chorus' own pages are not engagement
    assert '<img src="https://chorus.example/o/' in rendered["html"]


def test_without_tracking_both_parts_get_the_utm_tags_only():
    rendered = {"html": '<a href="https://shop.example/a">A</a>', "text": "A https://shop.example/a"}
    track_email(rendered, "msg_1", LINKS, UTM, track=False)
    url = hrefs(rendered["html"])[0]
    assert parse_qs(urlsplit(url).query)["utm_medium"] == ["email"]
    assert rendered["text"] == f"A {url}" and "/o/" not in rendered["html"]


def test_the_brand_utm_values_win_in_both_parts():
    own = "https://shop.example/?utm_campaign=own"
    rendered = {"html": f'<a href="{own}">x</a>', "text": own}
    track_email(rendered, "m", LINKS, UTM, track=False)
    for url in (hrefs(rendered["html"])[0], rendered["text"]):
        assert parse_qs(urlsplit(url).query)["utm_campaign"] == ["own"]


PATH = st.text(alphabet="abcxyz0189-_~/%.", max_size=20)
QUERY = st.dictionaries(st.text(alphabet="abc_", min_size=1, max_size=5), st.text(alphabet="xyz019 +", max_size=5),
                        max_size=3)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["http", "https"]), PATH, QUERY), min_size=1, max_size=4), st.booleans())
def test_every_link_is_decorated_the_same_way_in_both_parts(urls, track):
    from urllib.parse import urlencode

    plain = [f"{scheme}://shop.example/{path}" + (f"?{urlencode(q)}" if q else "") for scheme, path, q in urls]
    plain = [u.rstrip(".,;:!?") for u in plain]  # a URL ending in a full stop reads as the end of a sentence
    html = "".join(f'<a href="{html_lib.escape(u)}">x</a>' for u in plain)
    text = "\n".join(f"see {u} now" for u in plain)
    rendered = {"html": html, "text": text}
    track_email(rendered, "msg_9", LINKS, UTM, track)
    expected = [Decorator("msg_9", LINKS, UTM, track).url(u) for u in plain]
    assert hrefs(rendered["html"]) == expected
    assert rendered["text"] == "\n".join(f"see {u} now" for u in expected)


def test_a_link_the_url_parser_refuses_is_left_as_it_is():
    # a person's data can put anything in an href; urlsplit raises on an unclosed IPv6 bracket
    rendered = {"html": '<a href="https://[::1/x">A</a><a href="https://shop.example/a">B</a>', "text": "B"}
    track_email(rendered, "msg_1", LINKS, UTM, track=True)
    first, second = hrefs(rendered["html"])
    assert first == "https://[::1/x" and second.startswith("https://chorus.example/c/")
