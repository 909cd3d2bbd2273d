"""The OpenAPI description says what the API really answers: errors are ``{code, message, field}``, never 422.

FastAPI documents a 422 ``HTTPValidationError`` on every operation with parameters, but Chorus answers every
validation error with 400 and its own error shape (``app.py``), and it never documents 401 or 404. Generated
clients then fail on the real answers. :func:`describe` rewrites the generated document once, for every
operation, instead of each endpoint declaring its errors by hand.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "description": "stable machine-readable reason, e.g. bad_request, not_found"},
        "message": {"type": "string", "description": "what was wrong, for a person"},
        "field": {"type": "string", "description": "the field, parameter or JSON path at fault, when there is one"},
    },
}
ERROR_REF = {"$ref": "#/components/schemas/Error"}

# What any admin API operation may answer besides success. 403 is not listed: a key opens exactly one workspace and
# everything in it, so no request is ever refused for a lack of permission (an unknown or revoked key is 401).
ADMIN_ERRORS = {
    "400": "Bad request: malformed JSON, a value that cannot be stored, a bad parameter; `field` names it",
    "401": "Missing, unknown or revoked api key",
    "404": "The thing named in the path or query does not exist in this workspace",
    "409": "Conflict: the name is taken, the change would lock the workspace out, or the same work is running",
    "413": "The request body is larger than the limit",
    "429": "Saturated; retry after the Retry-After header (seconds)",
}
UNSUPPORTED_MEDIA = "The body is not in a media type this operation reads (e.g. text/plain where JSON is expected)"
VALIDATION_ERROR = "Bad request: a parameter or body failed validation; `field` names it"


def _error(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _absent_not_null(param: dict) -> dict:
    """An optional parameter's schema as what may be sent: FastAPI writes ``str | None`` as ``anyOf [string, null]``,
    which hides its constraints (a cursor's maxLength) from clients and fuzzers, and a query parameter or header is
    never null, only absent."""
    schema = param.get("schema") or {}
    alts = schema.get("anyOf")
    if param.get("required") or not isinstance(alts, list) or len(alts) != 2 or {"type": "null"} not in alts:
        return schema
    (sent,) = [a for a in alts if a != {"type": "null"}]
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**sent, **rest}


def describe(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` (FastAPI's generated document) with the real error responses, changed in place and returned."""
    for path, item in schema.get("paths", {}).items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "patch", "delete", "head", "options"):
                continue
            for param in op.get("parameters", []):
                param["schema"] = _absent_not_null(param)
            responses = op.setdefault("responses", {})
            had_validation = responses.pop("422", None) is not None
            if path.startswith("/api/"):
                for status, text in ADMIN_ERRORS.items():
                    responses.setdefault(status, _error(text))
                if op.get("requestBody"):
                    responses.setdefault("415", _error(UNSUPPORTED_MEDIA))
            elif had_validation:
                responses.setdefault("400", _error(VALIDATION_ERROR))
            for status, resp in responses.items():
                # an endpoint that declares an error by description alone (e.g. 502) gets the error shape
                if status[0] in "45" and "content" not in resp:
                    resp["content"] = {"application/json": {"schema": ERROR_REF}}
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["Error"] = ERROR_SCHEMA
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Serve :func:`describe`'s document at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe(
                get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
