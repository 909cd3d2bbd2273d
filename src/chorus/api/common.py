"""Shared pieces of the HTTP layer: JSON responses, error shape, the service container."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from dataclasses import dataclass, field

import orjson
from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response

from chorus import workspaces as ws_api
from chorus.collect.ingest import Backlog
from chorus.config import Settings
from chorus.errors import ChorusError, Saturated, Unauthorized
from chorus.messaging.links import Links
from chorus.store.db import read_only


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


# An error names what was wrong; it does not echo a 5 MB value back. Longer messages keep their beginning (the
# field) and their end (what was expected), the middle (an echoed value) cut; a field path longer than its cap
# (a hostile key name) keeps its beginning.
MAX_MESSAGE = 400
MAX_FIELD = 200


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` if it fits in ``limit`` characters, else its beginning and its end around an ellipsis."""
    if len(text) <= limit:
        return text
    head = limit * 3 // 4
    tail = limit - head - 1
    return text[:head] + "…" + text[len(text) - tail :]


def shorten_field(field: str) -> str:
    return field if len(field) <= MAX_FIELD else field[: MAX_FIELD - 1] + "…"


def error_body(exc: ChorusError) -> dict:
    """The ``{code, message, field}`` of an error, as every answer (and every item of a batch answer) shows it."""
    body = {"code": exc.code, "message": shorten(exc.message)}
    if exc.field:
        body["field"] = shorten_field(exc.field)
    return body


def error_response(exc: ChorusError) -> JSON:
    body = error_body(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Saturated) else None
    return JSON(body, status_code=exc.status, headers=headers)


# Starlette's form parser explains itself in its own words ("Missing boundary in multipart."): ours, by their start
_FORM_PROBLEMS = (
    ("missing boundary", "its Content-Type has no boundary"),
    ("invalid multipart", "it is not valid multipart data"),
    ("too many files", "too many files"),
    ("too many fields", "too many fields"),
    ("part exceeded maximum size", "a part is larger than the limit"),
    ("field exceeded maximum size", "a field is larger than the limit"),
    ("the content-disposition header", "a part has no name in its Content-Disposition"),
)


def form_problem(exc: Exception) -> str:
    """Why a form body could not be read, in our words (never the parser's text)."""
    text = str(getattr(exc, "detail", None) or getattr(exc, "message", None) or exc).lower()
    return next((ours for theirs, ours in _FORM_PROBLEMS if text.startswith(theirs)), "it is not multipart data")


def is_form_problem(exc: Exception) -> bool:
    """Is this the form parser's own 400 (raised wherever a route reads its form: ``request.form()``, ``Form()``)?"""
    text = str(getattr(exc, "detail", None) or "").lower()
    return getattr(exc, "status_code", None) == 400 and any(text.startswith(theirs) for theirs, _ in _FORM_PROBLEMS)


def basic_user(header: str | None) -> str | None:
    """The user of an HTTP Basic ``Authorization`` header (where Segment clients put the write key)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip()).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Authorization header is not valid Basic auth") from None
    return decoded.split(":", 1)[0] or None


def write_key(headers, fields: dict) -> str:
    """The write key of a request: the Basic auth user, else ``writeKey`` in the body or query."""
    key = basic_user(headers.get("authorization")) or fields.get("writeKey")
    if not key or not isinstance(key, str):
        raise Unauthorized("write key missing: send it as the Basic auth user or as writeKey")
    return key


class ClientGone(ChorusError):
    """The client closed the connection before its whole body arrived: nothing of it was done. Answered (to
    nobody) with nginx's 499 "client closed request" so that access logs tell it from a server fault."""

    status = 499
    code = "client_closed_request"



def bearer_key(request: Request) -> str:
    """The api key of an admin request (``Authorization: Bearer <api_key>``); 401 when there is none."""
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer ") or not header[7:].strip():
        raise Unauthorized("send the workspace api key as 'Authorization: Bearer <api_key>'")
    return header[7:].strip()


class TooLarge(ChorusError):
    status = 413
    code = "too_large"


async def read_limited(request, limit: int, what: str) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, declared or streamed."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"{what} is larger than {limit // 2**20} MB")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"{what} is larger than {limit // 2**20} MB")
        chunks.append(chunk)
    return b"".join(chunks)


class KeyCache:
    """Write keys are checked on every tracking request; a short TTL keeps that off the database.

    The TTL is the bound on revocation: a write key rotated or revoked through this process's admin API stops
    working here at once (:meth:`forget_source`); in other processes (other servers, or after `chorus keys` on
    the command line) it stops within ``ttl`` seconds."""

    def __init__(self, engine: Engine, ttl: float = 30.0):
        self.engine, self.ttl = engine, ttl
        self._items: dict[str, tuple[float, ws_api.Source]] = {}
        self._lock = threading.Lock()
        self._forgotten = 0  # bumped by forget_source: a lookup that overlapped it is not cached

    def source(self, write_key: str) -> ws_api.Source:
        hit = self._items.get(write_key)
        now = time.monotonic()
        if hit and now - hit[0] < self.ttl:
            return hit[1]
        generation = self._forgotten
        with read_only(self.engine) as conn:
            src = ws_api.source_by_write_key(conn, write_key)  # raises Unauthorized
        with self._lock:
            # a lookup that read the row before a rotation committed must not put the old key back in the cache
            if generation == self._forgotten:
                if len(self._items) > 10_000:
                    self._items.clear()
                self._items[write_key] = (now, src)
        return src

    def forget_source(self, source_id: str) -> None:
        """Drop the cached keys of a source whose key was rotated or revoked (the cache holds keys, not hashes)."""
        with self._lock:
            self._forgotten += 1
            for key in [k for k, (_, src) in self._items.items() if src.id == source_id]:
                del self._items[key]


@dataclass
class Services:
    settings: Settings
    engine: Engine
    keys: KeyCache
    backlog: Backlog
    links: Links
    wake_worker: threading.Event = field(default_factory=threading.Event)
    # set when the process begins to stop (SIGINT, SIGTERM): responses that would never end by themselves end
    stopping: threading.Event = field(default_factory=threading.Event)
    storing: int = 0  # tracking requests writing to the store right now (read by the in-process worker)
