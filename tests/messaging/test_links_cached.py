"""What links.py caches (a token per key and payload, a link's parsed query) gives what computing it afresh gives:
a token never carries over from one signing key to another, and UTM tags are added exactly as urllib would."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from chorus.errors import NotFound
from chorus.messaging.links import Links, with_utm


def test_tokens_follow_the_signing_key():
    a, b = Links("http://chorus.test", b"a" * 32), Links("http://chorus.test", b"b" * 32)
    ta, tb = a.token("u", "msg_1"), b.token("u", "msg_1")
    assert ta != tb  # the cached token of one key is never the other key's
    assert a.verify(ta, "u") == ["msg_1"] and b.verify(tb, "u") == ["msg_1"]
    with pytest.raises(NotFound):
        b.verify(ta, "u")
    assert a.token("u", "msg_1") == ta and a.token("u", "msg_2") != ta
    assert a.unsubscribe_url("msg_1") + "/preferences" == a.preferences_url("msg_1")


def _fresh(url: str, utm: dict[str, str]) -> str:
    """with_utm as it was before its parse was cached."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    have = {k for k, _ in query}
    query += [(k, v) for k, v in utm.items() if v and k not in have]
    return urlunsplit(parts._replace(query=urlencode(query)))


URLS = [
    "https://a.example/x", "https://a.example/x?", "https://a.example/x?a=1&b=&c", "https://a.example/x?utm_source=brand#f",
    "https://a.example/x?q=a+b%20c%7E&x=%26#f", "https://[::1]/x?y=1", "https://a.example/?utm_campaign=&utm_medium=sms",
    "https://a.example/p;param?x=1;y=2", "https://user:pw@a.example:8080/x?é=ü",
]  # fmt: skip
UTMS = [
    {"utm_source": "chorus", "utm_medium": "email", "utm_campaign": "c d&e", "utm_content": "msg_1"},
    {"utm_source": "chorus", "utm_medium": "email", "utm_campaign": "", "utm_content": "msg_2"},
    {},
]


@pytest.mark.parametrize("url", URLS)
def test_utm_tags_as_urllib_adds_them(url):
    for utm in [*UTMS, *UTMS]:  # twice: the second time from the cache
        assert with_utm(url, utm) == _fresh(url, utm)


def test_a_link_that_cannot_be_split_fails_every_time():
    for _ in range(2):
        with pytest.raises(ValueError):
            with_utm("https://[::1/x", UTMS[0])
