"""The limits every piece of JSON from outside obeys: one validation point for the tracking API, imports,
the admin API and provider webhooks.

A value that passes :func:`check` can be stored in both engines and serialised again by orjson:

- nesting at most ``MAX_DEPTH`` levels (orjson cannot write deeper than 254, and nobody's event needs more);
- no NUL character in any string or key (PostgreSQL's ``text`` and ``jsonb`` cannot hold ``\\u0000``), and no
  lone surrogate (it cannot be encoded as UTF-8);
- integers within 64 bits, signed or unsigned (what orjson writes; PostgreSQL would take more, SQLite and
  orjson would not);
- floats finite (JSON has no NaN or Infinity; PostgreSQL's ``jsonb`` refuses them).

Errors are :class:`chorus.errors.ChorusError` (400) whose ``field`` is the path to the bad value in the user's
terms (``properties.items[2].sku``), never a parser's internal message or character offset.
"""

from __future__ import annotations

import json
import math
import re

import orjson

from chorus.errors import ChorusError

MAX_DEPTH = 64
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1


def join(path: str, key: str | int) -> str:
    """``path`` extended by an object key or a list index, as error messages name fields."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def text_problem(value: str) -> str | None:
    """Why a string cannot be stored (a NUL or a lone surrogate), or None."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an invalid \\uD800-\\uDFFF escape), which is not valid UTF-8"
    return None


def check_text(value: str, field: str) -> str:
    """``value`` if it can be stored as text, else a 400 naming ``field``."""
    problem = text_problem(value)
    if problem:
        raise ChorusError(f"{field}: {problem}", field=field)
    return value


def problem(value: object, field: str = "body", *, max_depth: int = MAX_DEPTH) -> tuple[str, str] | None:
    """The first ``(field path, reason)`` that makes ``value`` unstorable, or None. Iterative: any depth."""
    stack: list[tuple[object, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            why = text_problem(item)
            if why:
                return path, why
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                return path, "integer is out of range (JSON numbers here must fit in 64 bits)"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return path, "number is not finite (NaN and Infinity are not JSON)"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return _short(path), f"nested deeper than {max_depth} levels"
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            children = []
            for key, child in pairs:
                if isinstance(key, str):
                    why = text_problem(key)
                    if why:
                        return path, f"a key {why.replace('contains', 'that contains', 1)}"
                children.append((child, join(path, key), depth + 1))
            stack.extend(reversed(children))  # depth-first, in document order
    return None


def check(value: object, field: str = "body", *, max_depth: int = MAX_DEPTH) -> object:
    """``value`` if it obeys the limits above, else a 400 whose ``field`` is the path to the bad value."""
    bad = problem(value, field, max_depth=max_depth)
    if bad:
        path, why = bad
        raise ChorusError(f"{path}: {why}", field=path)
    return value


def loads(data: bytes | str, field: str = "body", *, max_depth: int = MAX_DEPTH) -> object:
    """Parse JSON from outside and :func:`check` it; malformed JSON is a 400 naming ``field``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if not str(exc).startswith("depth limit"):
            raise ChorusError(f"{field} is not valid JSON ({_reason(exc)})", field=field) from None
        raise ChorusError(f"{field}: nested deeper than {max_depth} levels", field=field) from None
    except RecursionError:
        raise ChorusError(f"{field}: nested deeper than {max_depth} levels", field=field) from None
    check(value, field, max_depth=max_depth)
    if _has_huge_float(value):
        # orjson reads an integer literal beyond 64 bits as a float (100000000000000000000000 -> 1e+23), silently
        # losing digits. The stdlib keeps it an int for check() to refuse by its path; the depth is known to be
        # within max_depth here, so it cannot recurse too deep.
        check(json.loads(data), field, max_depth=max_depth)
    return value


def _has_huge_float(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and abs(item) >= 2**63:
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _short(path: str) -> str:
    # a path 64 levels deep helps nobody: its first steps say where the deep value is
    parts = re.findall(r"\[\d+\]|\.?[^.\[]+", path)
    return path if len(parts) <= 6 else "".join(parts[:6]) + "…"


def _reason(exc: orjson.JSONDecodeError) -> str:
    # orjson says e.g. "unexpected character: line 1 column 6 (char 5)": keep the reason and the line and column
    # a person can find, drop the character offset
    text = str(exc)
    return text.split(" (char ", 1)[0]
