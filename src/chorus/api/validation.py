"""Chorus' own wording for FastAPI's request validation errors.

FastAPI validates parameters and bodies with pydantic, whose messages speak of its own types ("Input should be a
valid dictionary", "Field required", "unable to parse string as an integer"). :func:`explain` turns the first
error into a :class:`chorus.errors.ChorusError` that names the field (a dotted path, list indexes as ``[i]``, as
:func:`chorus.safejson.join` writes them) and where it was (query parameter, path segment, header), in words of
our own: the error's *type* picks the sentence, its context only the numbers and the allowed values. Nothing of
pydantic's text, nor the input, reaches the client: a type not listed here gets a generic sentence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from chorus.errors import ChorusError
from chorus.safejson import join

_LOCATIONS = {"query": "query parameter", "path": "path segment", "header": "header", "cookie": "cookie"}

# pydantic error type -> what is wrong, after the field's name ("limit must be a whole number")
_FIXED = {
    "missing": "is required",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "mapping_type": "must be a JSON object",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "iterable_type": "must be a list",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_parsing_size": "must be a whole number within 64 bits",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text",
    "string_unicode": "must be text (UTF-8)",
    "string_sub_type": "must be text",
    "bytes_type": "must be text",
    "string_pattern_mismatch": "is not in the expected format",
    "json_invalid": "is not valid JSON",
    "json_type": "must be JSON text",
    "extra_forbidden": "is not a known field",
    "none_required": "must be null",
    "date_type": "must be a date like 2026-01-31",
    "date_parsing": "must be a date like 2026-01-31",
    "date_from_datetime_parsing": "must be a date like 2026-01-31",
    "date_from_datetime_inexact": "must be a date like 2026-01-31, without a time of day",
    "datetime_type": "must be a date and time like 2026-01-31T09:30:00Z",
    "datetime_parsing": "must be a date and time like 2026-01-31T09:30:00Z",
    "datetime_from_date_parsing": "must be a date and time like 2026-01-31T09:30:00Z",
    "datetime_object_invalid": "is not a date and time that exists",
    "time_type": "must be a time of day like 09:30",
    "time_parsing": "must be a time of day like 09:30",
    "timezone_aware": "must carry a UTC offset (Z or +01:00)",
    "timezone_naive": "must not carry a UTC offset",
    "time_delta_type": "must be a duration",
    "time_delta_parsing": "must be a duration",
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
    "url_type": "must be a URL",
    "url_parsing": "must be a URL",
    "url_scheme": "must be an http or https URL",
    "url_syntax_violation": "must be a URL",
}

# types whose sentence carries a number from the error's context: (context key, sentence)
_BOUNDS = {
    "greater_than": ("gt", "must be greater than {}"),
    "greater_than_equal": ("ge", "must be at least {}"),
    "less_than": ("lt", "must be less than {}"),
    "less_than_equal": ("le", "must be at most {}"),
    "multiple_of": ("multiple_of", "must be a multiple of {}"),
    "string_too_short": ("min_length", "must be at least {} characters long"),
    "string_too_long": ("max_length", "must be at most {} characters long"),
    "too_short": ("min_length", "must hold at least {} items"),
    "too_long": ("max_length", "must hold at most {} items"),
    "decimal_max_digits": ("max_digits", "must have at most {} digits"),
    "decimal_max_places": ("decimal_places", "must have at most {} decimal places"),
}

GENERIC = "is not valid"


def field_path(loc: Sequence[object]) -> tuple[str, str | None]:
    """``(field, location)`` of an error's ``loc``: ``("body", "items", 2, "sku")`` is ``items[2].sku`` in the body,
    ``("query", "limit")`` is ``limit``, a query parameter."""
    parts = list(loc)
    where = None
    if parts and parts[0] in ("body", *_LOCATIONS):
        where = str(parts.pop(0))
    path = ""
    for part in parts:
        path = join(path, part if isinstance(part, int) else str(part))
    return path or (where or "body"), where


def wording(error: dict) -> str:
    """What is wrong, in Chorus' words, for one pydantic error (its field's name not included)."""
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind in _FIXED:
        return _FIXED[kind]
    if kind in _BOUNDS:
        key, sentence = _BOUNDS[kind]
        value = ctx.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            if kind == "string_too_short" and value == 1:
                return "must not be empty"
            return sentence.format(int(value) if isinstance(value, float) and value.is_integer() else value)
        return GENERIC
    if kind in ("literal_error", "enum"):
        allowed = _allowed(ctx.get("expected"))
        return f"must be one of {allowed}" if allowed else "is not one of the allowed values"
    return GENERIC


def _allowed(expected: object) -> str | None:
    """``"'a', 'b' or 'c'"`` (pydantic's list of the allowed values) as ``a, b, c``; None if it is not that."""
    if not isinstance(expected, str):
        return None
    values = re.findall(r"'((?:[^'\\]|\\.)*)'|(-?\d+(?:\.\d+)?|True|False|None)", expected)
    names = [quoted or bare for quoted, bare in values]
    if not names or sum(len(n) for n in names) > 300:
        return None
    return ", ".join(names)


def explain(errors: Sequence[dict]) -> ChorusError:
    """The 400 for FastAPI's validation errors: the first one, named and worded by Chorus."""
    first = errors[0] if errors else {}
    loc = tuple(first.get("loc", ()))
    if first.get("type") == "json_invalid" and loc[:1] == ("body",):
        # its loc holds a character offset, not a field (the admin routes parse JSON before this, with a line)
        return ChorusError("body is not valid JSON", field="body")
    field, where = field_path(loc)
    place = f" ({_LOCATIONS[where]})" if where in _LOCATIONS else ""
    return ChorusError(f"{field}{place} {wording(first)}", field=field)
