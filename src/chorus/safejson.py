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
    if _clean(value, max_depth):  # the common case, without building a path for every value
        return None
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


def _clean(value: object, max_depth: int) -> bool:
    """True when ``value`` certainly obeys the limits; False sends it to :func:`problem`'s walk, which says why.

    On the ingestion hot path, so the common case is decided in C: orjson refuses lone surrogates, integers
    past 64 bits and non-string keys; a NUL shows as ``\\u0000`` in its output; fewer containers than
    ``max_depth`` cannot nest deeper. It writes NaN and Infinity as ``null``, so output holding ``null`` (or
    a ``\\u0000`` that may be an escaped backslash) is walked: containers by exact type, no path strings."""
    try:
        data = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return False
    if b"\\u0000" not in data and b"null" not in data and data.count(b"[") + data.count(b"{") <= max_depth:
        return True
    return _walk_clean(value, max_depth)


def _walk_clean(value: object, max_depth: int) -> bool:
    if type(value) is not dict and type(value) is not list:
        return _leaf_ok(value)
    stack = [(value, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth = pop()
        if depth >= max_depth:
            return False
        if type(item) is dict:
            for key in item:
                if type(key) is not str or "\x00" in key or not (key.isascii() or text_problem(key) is None):
                    return False
            children = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is str:
                if "\x00" in child or not (child.isascii() or text_problem(child) is None):
                    return False
            elif kind is dict or kind is list:
                push((child, depth + 1))
            elif not _leaf_ok(child):
                return False
    return True


def _leaf_ok(item: object) -> bool:
    kind = type(item)
    if item is None or kind is bool:
        return True
    if kind is str:
        return "\x00" not in item and (item.isascii() or text_problem(item) is None)
    if kind is int:
        return INT_MIN <= item <= INT_MAX
    if kind is float:
        return math.isfinite(item)
    return False  # a subclass or another type: the full walk decides


def check(value: object, field: str = "body", *, max_depth: int = MAX_DEPTH) -> object:
    """``value`` if it obeys the limits above, else a 400 whose ``field`` is the path to the bad value."""
    bad = problem(value, field, max_depth=max_depth)
    if bad:
        path, why = bad
        raise ChorusError(f"{path}: {why}", field=path)
    return value


# An integer beyond 64 bits has at least 19 digits (-2^63 - 1 has 19): only a document with such a run can hold
# one (a cheap test in C before the slower standard parser).
_LONG_NUMBER = re.compile(rb"[0-9]{19,}")


def parse(data: bytes | str, field: str = "body", *, max_depth: int = MAX_DEPTH) -> object:
    """Parse JSON from outside without :func:`check`: for a body whose parts are checked one by one (a tracking
    batch rejects a bad message, not the request). Malformed JSON is a 400 naming ``field``."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            # orjson refuses a lone surrogate escape ("\ud800") in the whole document; the standard parser keeps
            # it, so that check/problem reject only the part that holds it (one message of a batch, not all)
            try:
                return json.loads(data)
            except (ValueError, RecursionError):
                pass
        if not str(exc).startswith("depth limit"):
            raise ChorusError(f"{field} is not valid JSON: {_reason(exc)}", field=field) from None
        raise ChorusError(f"{field}: nested deeper than {max_depth} levels", field=field) from None
    except RecursionError:
        raise ChorusError(f"{field}: nested deeper than {max_depth} levels", field=field) from None
    if _LONG_NUMBER.search(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass")):
        # orjson reads an integer literal beyond 64 bits as a float (100000000000000000000000 -> 1e+23), silently
        # losing digits (two such user ids would become one). The standard parser keeps it an int, which
        # check/problem then refuse by its path; a document too deep for it keeps orjson's reading.
        try:
            value = json.loads(data)
        except (ValueError, RecursionError):
            pass
    return value


def loads(data: bytes | str, field: str = "body", *, max_depth: int = MAX_DEPTH) -> object:
    """Parse JSON from outside and :func:`check` it; malformed JSON is a 400 naming ``field``."""
    return check(parse(data, field, max_depth=max_depth), field, max_depth=max_depth)


def escape(value: str) -> str:
    """``value`` with what text columns cannot hold (NUL, lone surrogates) written as ``\\uXXXX`` escapes: for
    storing and showing text that failed :func:`check_text` (a rejected event, an import error)."""
    if text_problem(value) is None:
        return value
    return "".join(
        f"\\u{ord(ch):04x}" if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in value
    )


def dumps_lossy(value: object, *, max_depth: int = MAX_DEPTH, max_chars: int = 64 * 1024) -> str:
    """JSON text for ANY parsed value, for keeping what was refused: levels past ``max_depth`` become the string
    ``"…"``, NUL and lone surrogates are escaped, and text past ``max_chars`` is cut (then it is no longer
    JSON). Never raises: storing a rejection must not fail for the reason the value was rejected."""
    try:
        if problem(value, max_depth=max_depth) is None:
            text = orjson.dumps(value).decode()
            return text if len(text) <= max_chars else text[:max_chars] + "…"
    except (TypeError, ValueError):  # an object orjson cannot write: the generic path below copes
        pass
    out: list[str] = []
    size = 0
    stack: list[object] = [(value, 0)]
    while stack and size <= max_chars:
        item = stack.pop()
        if isinstance(item, _Raw):
            out.append(item)
            size += len(item)
            continue
        node, depth = item
        if isinstance(node, dict | list) and depth >= max_depth:
            node = "…"
        if isinstance(node, dict):
            parts: list[object] = [_Raw("{")]
            for i, (key, child) in enumerate(node.items()):
                parts.append(_Raw(("," if i else "") + _string(str(key)) + ":"))
                parts.append((child, depth + 1))
            parts.append(_Raw("}"))
            stack.extend(reversed(parts))
        elif isinstance(node, list):
            parts = [_Raw("[")]
            for i, child in enumerate(node):
                if i:
                    parts.append(_Raw(","))
                parts.append((child, depth + 1))
            parts.append(_Raw("]"))
            stack.extend(reversed(parts))
        else:
            text = _scalar(node)
            out.append(text)
            size += len(text)
    text = "".join(out)
    return text if len(text) <= max_chars and not stack else text[:max_chars] + "…"


class _Raw(str):
    """Ready JSON text on the :func:`dumps_lossy` stack (as opposed to a value still to write)."""


def _string(value: str) -> str:
    # ensure_ascii escapes NUL and lone surrogates alike; only then is any str writable
    return json.dumps(value, ensure_ascii=True)


def _scalar(value: object) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int):
        return str(value) if INT_MIN <= value <= INT_MAX else _string(str(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else _string(repr(value))
    return _string(value if isinstance(value, str) else str(value))


def _short(path: str) -> str:
    # a path 64 levels deep helps nobody: its first steps say where the deep value is
    parts = re.findall(r"\[\d+\]|\.?[^.\[]+", path)
    return path if len(parts) <= 6 else "".join(parts[:6]) + "…"


# orjson's reasons, by how they begin, in our words (its text never reaches a client: a reason not listed here
# is said as "not valid JSON" with the line and column alone)
_REASONS = (
    ("unexpected end of data", "the text ends before the document is complete"),
    ("eof while parsing", "the text ends before the document is complete"),
    ("trailing comma", "a comma before a closing bracket or brace"),
    ("unexpected character, expected a string key", "expected a key in double quotes"),
    ("unexpected character, expected ':'", "expected a colon after the key"),
    ("unexpected character, expected ','", "expected a comma or a closing bracket or brace"),
    ("unexpected character", "a character that cannot be there"),
    ("unexpected content after document", "more text after the end of the document"),
    ("number with leading zero", "a number with a leading zero"),
    ("number is infinity", "a number too large to be finite"),
    ("invalid number", "a malformed number"),
    ("invalid escape", "an invalid escape sequence in a string"),
    ("invalid literal", "a word that is not true, false or null"),
    ("no low surrogate", "an invalid \\u escape (a lone surrogate)"),
    ("no high surrogate", "an invalid \\u escape (a lone surrogate)"),
    ("str is not valid utf-8", "text that is not UTF-8"),
    ("unexpected control character", "a control character inside a string (escape it)"),
    ("control character", "a control character inside a string (escape it)"),
    ("input is a zero-length", "the text is empty"),
    ("input data is empty", "the text is empty"),
)


def _reason(exc: orjson.JSONDecodeError) -> str:
    """What is wrong and where (line and column a person can find; never a character offset or orjson's text)."""
    text = str(exc).lower()
    why = next((ours for theirs, ours in _REASONS if text.startswith(theirs)), None)
    where = f"line {exc.lineno}, column {exc.colno}"
    return f"{why} at {where}" if why else where


def duplicate_key(data: bytes | str, field: str = "body") -> str | None:
    """The path of the first key that appears twice in one object of the JSON text ``data`` (``body.rule.name``),
    or None. JSON parsers keep the last value silently; a definition that says a thing twice is a mistake to name,
    not to guess at. For ``data`` that :func:`parse` accepted (its depth bounded): the standard parser reads it
    again, so it costs a second parse; for small bodies (admin definitions), not for the ingestion path."""
    found = False

    def pairs(items: list) -> dict:
        nonlocal found
        out = dict(items)
        if len(out) != len(items):
            found = True
            seen: set = set()
            key = next(k for k, _ in items if k in seen or seen.add(k))
            return _Duplicated(out, key)
        return out

    try:
        value = json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return None
    if not found:
        return None
    stack: list[tuple[object, str]] = [(value, field)]
    while stack:  # depth-first, in document order: the first duplicate a reader meets
        item, path = stack.pop()
        if isinstance(item, _Duplicated):
            return join(path, item.key)
        pairs_ = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        stack.extend(reversed([(child, join(path, key)) for key, child in pairs_]))
    return None


class _Duplicated(dict):
    """An object in which ``key`` appeared more than once (what :func:`duplicate_key` looks for)."""

    def __init__(self, items: dict, key: str):
        super().__init__(items)
        self.key = key
