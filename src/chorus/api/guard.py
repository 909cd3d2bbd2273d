"""The one gate every admin API (/api) request passes before FastAPI reads it.

FastAPI parses JSON bodies with the stdlib (a body nested a few thousand levels deep raises RecursionError, one
nested 300 levels deep is accepted and then cannot be written back by orjson), and hands query and path
parameters to the endpoint as they came (a NUL character reaches PostgreSQL, which cannot compare it; an integer
beyond 64 bits reaches a ``WHERE id < :before`` and overflows). :class:`AdminRoute` runs, for every route of a
router made with ``route_class=AdminRoute``:

- the body: read with a size limit (413), parsed and checked by :func:`chorus.safejson.loads` (depth, NUL, lone
  surrogates, 64-bit integers, finite floats; errors name the path), and the checked value stored where FastAPI's
  own body reading finds it (Starlette caches ``request.json()`` in ``request._json``), so model validation sees
  the checked value and never the raw bytes;
- its format: a body in a media type the operation does not read (text/plain, a form where JSON is expected,
  no Content-Type at all) is a 415 naming the types it reads, not a confusing complaint about the body's shape;
- duplicate keys: an object that says a key twice is a 400 naming its path (parsers would keep the last silently;
  a definition or setting that says a thing twice is a mistake). Only here: the tracking API and provider
  webhooks take what browsers' and providers' JSON.parse take;
- form fields (multipart uploads): their text checked the same way;
- query and path parameters: their names and values checked for NUL and lone surrogates, and every parameter the
  endpoint declares as an integer bounded to a signed 64-bit integer (what both stores can compare).

One place, so a new endpoint gets all of it by being on an admin router.
"""

from __future__ import annotations

import email.message
import math
import re
import types
import typing
import zlib
from collections.abc import Mapping
from decimal import Decimal

from fastapi.params import File, Form
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from chorus import safejson
from chorus.api.common import TooLarge, bearer_key, form_problem, read_limited
from chorus.errors import ChorusError, UnsupportedMediaType

# Admin JSON bodies are definitions, settings and message batches (at most 1000 items): 10 MB is generous. File
# uploads (multipart) are not JSON and are streamed to disk by their endpoint.
MAX_JSON_BODY = 10 * 2**20
PARAM_MIN = -(2**63)
PARAM_MAX = 2**63 - 1  # SQL integer columns are signed 64-bit on PostgreSQL and SQLite


def _is_int(annotation) -> bool:
    """Whether a parameter's annotation is int, ``int | None`` or ``Annotated[int, ...]`` (bool is not)."""
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _is_int(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_is_int(a) for a in typing.get_args(annotation) if a is not type(None))
    return False


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


def _media_type(content_type: str | None) -> str | None:
    """``type/subtype`` of a Content-Type header, lower-cased, or None without one."""
    if not content_type:
        return None
    msg = email.message.Message()
    msg["content-type"] = content_type
    return msg.get_content_type() if "/" in content_type.split(";", 1)[0] else None


def _json_content(content_type: str | None) -> bool:
    # FastAPI (strict_content_type) does not read a body without Content-Type as JSON either
    media = _media_type(content_type)
    return bool(media) and media.startswith("application/") and (media == "application/json" or media.endswith("+json"))


def _accepts(accepted: tuple[str, ...], content_type: str | None) -> bool:
    media = _media_type(content_type)
    if media is None:
        return False
    return media in accepted or ("application/json" in accepted and _json_content(content_type))


def _unsupported(accepted: tuple[str, ...], content_type: str | None) -> UnsupportedMediaType:
    want = " or ".join(accepted)
    given = f"not {_media_type(content_type) or content_type.split(';', 1)[0].strip()}" if content_type else (
        "with a Content-Type header")  # fmt: skip
    what = "JSON" if accepted[0] == "application/json" else "a form" if accepted[0] in FORM_TYPES else accepted[0]
    return UnsupportedMediaType(f"the body must be {what}: send it as {want}, {given}", field="Content-Type")


def check_params(request: Request, int_params: Mapping[str, tuple[int, int]]) -> None:
    """Query and path parameters: storable text, and declared integers within 64 bits (``int_params``: each one's
    declared bounds, which a number beyond 64 bits is told, not the 64 bits)."""
    for where, items in (("path", request.path_params.items()), ("query", request.query_params.multi_items())):
        for name, value in items:
            safejson.check_text(name, f"{where} parameter name")
            if isinstance(value, str):
                safejson.check_text(value, name)
                if name in int_params:
                    place = "query parameter" if where == "query" else "path segment"
                    _check_int(value, name, int_params[name], place)


# What pydantic turns into an int (ASCII digits, underscores, a zero fraction such as "12.0"): anything else it
# refuses itself with a 400, and "²".isdigit() is true while int("²") fails, so only this shape is read here.
_INT_TEXT = re.compile(r"\s*[+-]?[0-9_]+(\.0*)?\s*", re.ASCII)


def _check_int(value: str, name: str, bounds: tuple[int, int] = (PARAM_MIN, PARAM_MAX), place: str = "query parameter"
               ) -> None:  # fmt: skip
    if not _INT_TEXT.fullmatch(value):
        return
    try:
        number = int(Decimal(value.strip().replace("_", "")))
    except (ValueError, ArithmeticError):
        return
    low, high = bounds
    if number > PARAM_MAX or number > high:
        raise ChorusError(f"{name} ({place}) must be at most {high}", field=name)
    if number < PARAM_MIN or number < low:
        raise ChorusError(f"{name} ({place}) must be at least {low}", field=name)


# Content-Encoding as the tracking API reads it: gzip (x-gzip) and deflate are inflated, identity is none, any
# other is refused naming the header (a body in an encoding not read would otherwise be parsed as it came: review)
_INFLATABLE = ("gzip", "x-gzip", "deflate")


def inflate(body: bytes, encoding: str | None, limit: int = MAX_JSON_BODY) -> bytes:
    """``body`` decoded as its Content-Encoding says, at most ``limit`` bytes once inflated (413 past it)."""
    encoding = (encoding or "").strip().lower()
    if encoding in ("", "identity") or not body:
        return body
    if encoding not in _INFLATABLE:
        raise ChorusError(f"Content-Encoding {encoding[:40]!r} is not supported (use gzip)", field="Content-Encoding")
    wbits = zlib.MAX_WBITS if encoding == "deflate" else 16 + zlib.MAX_WBITS
    out, rest = b"", body
    while True:  # gzip may hold several members, one after the other (RFC 1952): each is read, one limit for all
        d = zlib.decompressobj(wbits)
        try:
            out += d.decompress(rest, limit + 1 - len(out))
        except zlib.error:  # zlib's own text ("Error -3 while decompressing data") says nothing to a sender
            raise ChorusError(f"body is not {encoding}-compressed data, as its Content-Encoding says (send it "
                              "compressed, or without the header)", field="Content-Encoding") from None  # fmt: skip
        if len(out) > limit or d.unconsumed_tail:
            raise TooLarge(f"body is larger than {limit // 2**20} MB after decompression")
        if not d.eof:  # cut short (review): not what was sent
            raise ChorusError(f"body is not one whole {encoding}-compressed stream, as its Content-Encoding says (it "
                              "is cut short)", field="Content-Encoding")  # fmt: skip
        rest = d.unused_data
        if not rest:
            break
        if encoding == "deflate" or not rest.startswith(b"\x1f\x8b"):
            raise ChorusError(f"body is not one whole {encoding}-compressed stream, as its Content-Encoding says (it "
                              "has data after its end)", field="Content-Encoding")  # fmt: skip
        if len(out) == limit:
            raise TooLarge(f"body is larger than {limit // 2**20} MB after decompression")
    return out


async def check_body(request: Request, expects_form: bool, accepted: tuple[str, ...] = ()) -> None:
    """The body's checks; ``accepted`` are the media types the operation reads (none: it declares no body)."""
    content_type = request.headers.get("content-type") or ""
    encoding = (request.headers.get("content-encoding") or "").strip().lower()
    is_form = content_type.lower().startswith(FORM_TYPES)
    if is_form and encoding not in ("", "identity"):  # the form parser reads the stream as it comes
        raise ChorusError("a form is read uncompressed: send it without Content-Encoding", field="Content-Encoding")
    if expects_form and is_form:
        try:
            form = await request.form()  # cached: FastAPI reads the same parsed form
        except (HTTPException, MultiPartException) as exc:
            raise ChorusError(f"body is not a valid form ({form_problem(exc)})", field="body") from None
        for name, value in form.multi_items():
            safejson.check_text(name, "form field name")
            if isinstance(value, str):
                safejson.check_text(value, name)
        return
    body = await read_limited(request, MAX_JSON_BODY, "body")
    if encoding not in ("", "identity") and body:  # up to 10 MB inflated: off the event loop (review)
        body = await run_in_threadpool(inflate, body, encoding)
    request._body = body  # read_limited consumed the stream; FastAPI reads the body (inflated) from here
    if body and accepted and not _accepts(accepted, content_type):
        raise _unsupported(accepted, content_type)
    if body and _json_content(content_type):
        request._json = safejson.loads(body, "body")  # what FastAPI's `await request.json()` returns
        duplicated = safejson.duplicate_key(body, "body")
        if duplicated:
            raise ChorusError(f"{duplicated}: this key appears more than once in its object; give it once",
                              field=duplicated)  # fmt: skip
    elif body and expects_form:
        raise ChorusError("send this as a multipart form (Content-Type: multipart/form-data)", field="body")


def accepted_media(route: APIRoute, expects_form: bool) -> tuple[str, ...]:
    """The media types an operation reads its body in: what its document declares (``openapi_extra``), else a form
    or JSON as its parameters say; none when it takes no body."""
    declared = ((route.openapi_extra or {}).get("requestBody") or {}).get("content")
    if declared:
        return tuple(declared)
    if expects_form:
        return FORM_TYPES
    return ("application/json",) if route.dependant.body_params else ()


def _int_bounds(metadata: list) -> tuple[int, int]:
    """The bounds an integer parameter declares (``Query(ge=1, le=3)``), within the 64 bits of the stores."""
    low, high = PARAM_MIN, PARAM_MAX
    for m in metadata:
        if (v := getattr(m, "ge", None)) is not None:
            low = max(low, math.ceil(v))
        if (v := getattr(m, "gt", None)) is not None:
            low = max(low, math.floor(v) + 1)
        if (v := getattr(m, "le", None)) is not None:
            high = min(high, math.floor(v))
        if (v := getattr(m, "lt", None)) is not None:
            high = min(high, math.ceil(v) - 1)
    return low, high


def authenticator(dependant):
    """The dependency that authenticates the operation with the admin api key (one marked ``authenticates``, as
    ``admin.workspace``), at any depth of its dependencies, or None."""
    for dep in dependant.dependencies:
        if getattr(dep.call, "authenticates", False):
            return dep.call
        if (found := authenticator(dep)) is not None:
            return found
    return None


class AdminRoute(APIRoute):
    """An APIRoute whose requests pass the checks above before FastAPI parses them; one that takes the admin api
    key is refused without it (401) before its body is read or inflated (review: an unauthenticated request got
    the body's 400, and had the server inflate up to 10 MB)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        params = [*self.dependant.query_params, *self.dependant.path_params]
        for dep in self.dependant.dependencies:
            params += [*dep.query_params, *dep.path_params]
        int_params = {p.alias: _int_bounds(p.field_info.metadata) for p in params if _is_int(p.field_info.annotation)}
        expects_form = any(isinstance(p.field_info, Form | File) for p in self.dependant.body_params)
        accepted = accepted_media(self, expects_form)

        authenticate = authenticator(self.dependant)

        async def guarded(request: Request):
            check_params(request, int_params)
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                if authenticate is not None:
                    # the key itself, not only the header: a wrong key is a 401 before the body is read (the
                    # dependency keeps its answer on the request, so the operation does not look it up again)
                    bearer_key(request)
                    await run_in_threadpool(authenticate, request)
                await check_body(request, expects_form, accepted)
            return await handler(request)

        return guarded
