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
- form fields (multipart uploads): their text checked the same way;
- query and path parameters: their names and values checked for NUL and lone surrogates, and every parameter the
  endpoint declares as an integer bounded to a signed 64-bit integer (what both stores can compare).

One place, so a new endpoint gets all of it by being on an admin router.
"""

from __future__ import annotations

import email.message
import re
import types
import typing
from decimal import Decimal

from fastapi.params import File, Form
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request

from chorus import safejson
from chorus.api.common import read_limited
from chorus.errors import ChorusError

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


def _json_content(content_type: str | None) -> bool:
    if not content_type:
        return False  # FastAPI (strict_content_type) does not read a body without Content-Type as JSON either
    msg = email.message.Message()
    msg["content-type"] = content_type
    subtype = msg.get_content_subtype()
    return msg.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def check_params(request: Request, int_params: frozenset[str]) -> None:
    """Query and path parameters: storable text, and declared integers within 64 bits."""
    for where, items in (("path", request.path_params.items()), ("query", request.query_params.multi_items())):
        for name, value in items:
            safejson.check_text(name, f"{where} parameter name")
            if isinstance(value, str):
                safejson.check_text(value, name)
                if name in int_params:
                    _check_int(value, name)


# What pydantic turns into an int (ASCII digits, underscores, a zero fraction such as "12.0"): anything else it
# refuses itself with a 400, and "²".isdigit() is true while int("²") fails, so only this shape is read here.
_INT_TEXT = re.compile(r"\s*[+-]?[0-9_]+(\.0*)?\s*", re.ASCII)


def _check_int(value: str, name: str) -> None:
    if not _INT_TEXT.fullmatch(value):
        return
    try:
        number = int(Decimal(value.strip().replace("_", "")))
    except (ValueError, ArithmeticError):
        return
    if not PARAM_MIN <= number <= PARAM_MAX:
        raise ChorusError(f"{name} is out of range (at most {PARAM_MAX})", field=name)


async def check_body(request: Request, expects_form: bool) -> None:
    content_type = request.headers.get("content-type") or ""
    is_form = content_type.lower().startswith(("multipart/form-data", "application/x-www-form-urlencoded"))
    if expects_form and is_form:
        try:
            form = await request.form()  # cached: FastAPI reads the same parsed form
        except (HTTPException, MultiPartException) as exc:
            why = getattr(exc, "detail", None) or getattr(exc, "message", None) or "unreadable"
            raise ChorusError(f"body is not a valid form ({why})", field="body") from None
        for name, value in form.multi_items():
            safejson.check_text(name, "form field name")
            if isinstance(value, str):
                safejson.check_text(value, name)
        return
    body = await read_limited(request, MAX_JSON_BODY, "body")
    request._body = body  # read_limited consumed the stream; FastAPI reads the body from here
    if body and _json_content(content_type):
        request._json = safejson.loads(body, "body")  # what FastAPI's `await request.json()` returns
    elif body and expects_form:
        raise ChorusError("send this as a multipart form (Content-Type: multipart/form-data)", field="body")


class AdminRoute(APIRoute):
    """An APIRoute whose requests pass the checks above before FastAPI parses them."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        params = [*self.dependant.query_params, *self.dependant.path_params]
        for dep in self.dependant.dependencies:
            params += [*dep.query_params, *dep.path_params]
        int_params = frozenset(p.alias for p in params if _is_int(p.field_info.annotation))
        expects_form = any(isinstance(p.field_info, Form | File) for p in self.dependant.body_params)

        async def guarded(request: Request):
            check_params(request, int_params)
            if request.method not in ("GET", "HEAD", "OPTIONS"):
                await check_body(request, expects_form)
            return await handler(request)

        return guarded
