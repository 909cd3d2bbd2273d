"""Signed links in messages: one-click unsubscribe (RFC 8058), the preference page, click tracking, open pixel.

A token is ``base64url(payload).base64url(HMAC-SHA256(key, payload))``: anyone holding the link can use it (that
is what an unsubscribe link is for), nobody can forge one for another message or URL. The key comes from
``CHORUS_SECRET_KEY``; without it Chorus generates one and keeps it in the database, so links keep working
across restarts.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from chorus.config import Settings
from chorus.errors import NotFound
from chorus.store.tables import instance_secrets


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signing_key(engine: Engine) -> bytes:
    env = os.environ.get("CHORUS_SECRET_KEY")
    if env:
        return env.encode()
    with engine.connect() as conn:
        key = _stored_key(conn)
    if key:
        return key
    try:
        with engine.begin() as conn:
            conn.execute(instance_secrets.insert().values(name="link_key", value=secrets.token_urlsafe(48)))
    except IntegrityError:  # another process created it first
        pass
    return signing_key(engine)


def signing_key_in(conn: Connection) -> bytes:
    """:func:`signing_key` on the caller's connection, inside its transaction: no other connection is opened (on
    SQLite a second writer would wait for ever on the caller's write lock). A key created here commits with the
    caller's transaction, so Links built from it must not outlive a rollback."""
    env = os.environ.get("CHORUS_SECRET_KEY")
    if env:
        return env.encode()
    key = _stored_key(conn)
    if key is None:
        try:
            with conn.begin_nested():
                conn.execute(instance_secrets.insert().values(name="link_key", value=secrets.token_urlsafe(48)))
        except IntegrityError:  # a concurrent transaction created it and committed: read committed sees it now
            pass
        key = _stored_key(conn)
    assert key is not None
    return key


def for_store(conn: Connection, public_url: str | None = None) -> Links:
    """The Links of this installation from a connection inside a transaction (a feed consumer's, the journey
    runtime's): the signing key as :func:`signing_key_in` finds it, the public URL given or ``CHORUS_PUBLIC_URL``
    (chorus.config's default without it), as the app builds its own."""
    url = public_url or os.environ.get("CHORUS_PUBLIC_URL", Settings.public_url)
    return Links(url.rstrip("/"), signing_key_in(conn))


def _stored_key(conn: Connection) -> bytes | None:
    row = conn.execute(sa.select(instance_secrets.c.value).where(instance_secrets.c.name == "link_key")).first()
    return row.value.encode() if row else None


@functools.lru_cache(maxsize=1024)
def _signed(key: bytes, payload: bytes) -> str:
    """The token of ``payload`` under ``key`` (a pure function of both). Cached: a message's unsubscribe token is
    asked for by its template context (the unsubscribe and preference URLs) and again by its email headers."""
    sig = hmac.new(key, payload, hashlib.sha256).digest()[:16]
    return f"{_b64(payload)}.{_b64(sig)}"


@dataclass(frozen=True)
class Links:
    public_url: str
    key: bytes

    def token(self, kind: str, *parts: str) -> str:
        return _signed(self.key, orjson.dumps([kind, *parts]))

    def verify(self, token: str, kind: str) -> list[str]:
        try:
            body, sig = token.split(".", 1)
            payload = _unb64(body)
            good = hmac.compare_digest(_unb64(sig), hmac.new(self.key, payload, hashlib.sha256).digest()[:16])
            parts = orjson.loads(payload) if good else None
        except (ValueError, orjson.JSONDecodeError):
            parts = None
        if not parts or parts[0] != kind:
            raise NotFound("this link is not valid")
        return parts[1:]

    # -- the URLs a message carries ------------------------------------------------------------------------------
    def unsubscribe_url(self, message_id: str) -> str:
        return f"{self.public_url}/u/{self.token('u', message_id)}"

    def preferences_url(self, message_id: str) -> str:
        return f"{self.public_url}/u/{self.token('u', message_id)}/preferences"

    def click_url(self, message_id: str, url: str) -> str:
        return f"{self.public_url}/c/{self.token('c', message_id, url)}"

    def open_url(self, message_id: str) -> str:
        return f"{self.public_url}/o/{self.token('o', message_id)}.gif"


def with_utm(url: str, utm: dict[str, str]) -> str:
    """Add UTM parameters the link does not already carry (the brand's own values win)."""
    parts, have, query = _split(url)
    # urlencode of the link's pairs then the new ones is the two encodings joined by "&" (it joins "k=v" pairs)
    extra = urlencode([(k, v) for k, v in utm.items() if v and k not in have])
    return urlunsplit(parts._replace(query=f"{query}&{extra}" if query and extra else query or extra))


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[SplitResult, frozenset[str], str]:
    """A link parsed once (every recipient of a message has the same links): its parts, the names of its query
    parameters and its query re-encoded. A link that cannot be split raises its ValueError every time."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    return parts, frozenset(k for k, _ in query), urlencode(query)


_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"']+)\2""", re.IGNORECASE)
# A link in plain text ends at white space, a bracket or a quote (a Markdown-style ``[label](url)`` keeps its
# parenthesis); punctuation that ends a sentence is not part of it.
_TEXT_URL = re.compile(r"""https?://[^\s<>()\[\]{}"'`]+""", re.IGNORECASE)
_TRAILING = ".,;:!?"


@dataclass(frozen=True)
class Decorator:
    """The one rule for every link of a message, in its HTML and in its text part: UTM parameters the link does
    not carry yet and, with ``track``, the click redirect. Links to Chorus' own unsubscribe/preference pages are
    left alone (a click there is not engagement)."""

    message_id: str
    links: Links
    utm: dict[str, str]
    track: bool

    def url(self, url: str) -> str:
        if url.startswith(self.links.public_url + "/u/"):
            return url
        try:
            url = with_utm(url, self.utm)
        except ValueError:  # not a URL the parser can split (e.g. "https://[::1/x" from a person's data): left as is
            return url
        return self.links.click_url(self.message_id, url) if self.track else url

    def html(self, html: str) -> str:
        """Every ``<a href>`` decorated; with ``track``, an open pixel at the end of the body."""

        def rewrite(m: re.Match) -> str:
            url = m.group(3).replace("&amp;", "&")
            return f"{m.group(1)}{m.group(2)}{self.url(url).replace('&', '&amp;')}{m.group(2)}"

        out = _HREF.sub(rewrite, html)
        if self.track:
            src = self.links.open_url(self.message_id)
            pixel = f'<img src="{src}" width="1" height="1" alt="" style="display:none">'
            idx = out.lower().rfind("</body>")
            out = out[:idx] + pixel + out[idx:] if idx >= 0 else out + pixel
        return out

    def text(self, text: str) -> str:
        """Every http(s) URL of a plain-text part decorated as its HTML twin is."""

        def rewrite(m: re.Match) -> str:
            url = m.group(0)
            core = url.rstrip(_TRAILING)
            return self.url(core) + url[len(core) :]

        return _TEXT_URL.sub(rewrite, text)


def track_html(html: str, message_id: str, links: Links, utm: dict[str, str], track: bool) -> str:
    """UTM on every http(s) link; with ``track``, links go through the click redirect and an open pixel is added."""
    return Decorator(message_id, links, utm, track).html(html)


def track_email(rendered: dict, message_id: str, links: Links, utm: dict[str, str], track: bool) -> None:
    """Decorate the links of both parts of a rendered email in place: the text part gets the same UTM tags and
    click tracking as the HTML part (a reader of the text part is counted too)."""
    decorate = Decorator(message_id, links, utm, track)
    if rendered.get("html"):
        rendered["html"] = decorate.html(rendered["html"])
    if rendered.get("text"):
        rendered["text"] = decorate.text(rendered["text"])


# A 1x1 transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
