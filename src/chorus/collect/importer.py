"""Offline-channel import: turn .csv / .jsonl / .parquet files into Segment-spec messages (plain dicts).

This module only parses; the caller feeds the messages to the normal ingestion pipeline.

    mapping = load_mapping("pos.json", "store")        # or load_mapping(None, "store") for the defaults
    for line, item in iter_import("pos.csv", "store", mapping):
        if isinstance(item, RowError): report(line, item)
        else: ingest(item)

Files
-----
The format comes from the extension: ``.csv``, ``.jsonl`` / ``.ndjson``, ``.parquet``. Files are streamed
(CSV/JSONL line by line, parquet by record batches). Every data row yields exactly one item, in file order:
a message or a :class:`RowError`; good rows next to bad rows are all yielded. Line numbers are 1-based:

* CSV: UTF-8, optional BOM; the first line is the header (names are stripped of surrounding spaces; blank
  names are allowed, but a value under a blank name is an error). Blank lines before the header (empty or
  spaces only) are skipped; a header that names no columns at all (``,,,``) is an ImportFileError, so that the
  first data row is never taken for the header. A row's line is the physical line it starts on, counting any
  blank lines before the header (quoted cells may span lines). Blank rows (no cell has a non-space character)
  are skipped. A row with the wrong number of cells, or containing bytes that are not UTF-8, is a RowError.
* JSONL: one JSON object per line, already in column form (keys are column names); the same mapping applies.
  Blank lines are skipped; a line that is not UTF-8, not JSON or not an object is a RowError. JSON numbers
  with a fraction or exponent are read exactly (so money stays exact).
* A RowError quotes a bad value as the file wrote it: a text in quotes, anything else JSON-style (``-1e20``,
  ``{"a": [1, 1, 1]}``), cut at SHOW_LIMIT characters; never a Python repr.
* parquet: line = row index + 1.

Mapping (JSON file; YAML too if PyYAML is importable). Every key is optional; absent keys take the source's
defaults; an unknown key or a bad value raises :class:`MappingError` naming the key::

    {
      "type": "track",                          # or "identify"
      "event": "Order Completed",               # constant, or {"column": "event_name"}; not for identify
      "timestamp": "sold_at",                   # a column, or columns joined with " ": ["date", "time"]
      "timezone": "Europe/Paris",               # for naive times (default "UTC")
      "user_id": "customer_no",                 # the standard identifiers: user_id, anonymous_id, email,
      "email": "mail", "phone": null,           #   phone, loyalty_id (null = do not use that identifier)
      "identifiers": {"loyalty_id": "loyalty_card", "crm_id": "crm"},   # identifier name -> column
      "properties": {"store": "store_id", "revenue": "total_eur"},     # property name -> column (or a list
                                                                        #   of columns, same names)
      "types": {"revenue": "decimal", "items": "int"},                  # decimal | int | float | bool | str
      "currency": "currency",                   # column (null = none)
      "products": "products",                   # column holding a JSON list of product objects (null = none)
      "key": ["receipt_no", "line_no"],         # columns that identify the row (for messageId)
      "delimiter": ";",                         # CSV only (default ",")
      "direction": "outbound"                   # the brand's own sends (default for the catalog's Catalog Sent)
    }

Defaults per source:

* ``event``: store -> "Order Completed", call_center -> "Call Completed", catalog -> "Catalog Sent" (a promo
  code redemption file maps ``"event": "Promo Code Redeemed"``); any other source must name the event, else
  MappingError (for ``type: track``).
* ``timestamp``: the first of these present in the row: ``timestamp``, ``created_at``, ``date`` + ``time``
  (both present: joined), ``date``, ``time``.
* identifiers: ``user_id``, ``anonymous_id``, ``email``, ``phone``, ``loyalty_id`` from same-named columns.
* ``properties``: every column of the row not used for the event, timestamp, identifiers, currency or
  products, under its own name. An explicit ``properties`` lists exactly the columns to use.
* ``types``: store -> revenue, total, subtotal, tax, shipping, discount, amount are ``decimal``; explicit
  ``types`` are merged over these.
* ``currency`` column "currency", ``products`` column "products".
* ``key``: all mapped columns of the row, in header (column) order.

Values
------
* Empty cells (None, "", only spaces; NaN in parquet) are omitted.
* Untyped values: CSV cells stay strings exactly as written (``"0042"`` stays ``"0042"``); JSONL/parquet
  values keep their JSON type (JSON fractions become floats). Parquet decimals become exact decimal strings,
  dates and times ISO strings.
* Typed values: ``int`` -> JSON integer, ``float`` -> JSON number, ``bool`` (true/false/yes/no/1/0/t/f/y/n),
  ``str``, and ``decimal`` -> an exact decimal *string* such as ``"19.90"``: monetary amounts from imports are
  exact decimal strings, never binary floats. A value that does not convert is a RowError naming the column.
* Timestamps: ISO-8601 (``Z``/offset or naive), ``YYYY-MM-DD HH:MM:SS``, a date alone (midnight), or epoch
  seconds. Naive times are local times in ``timezone`` (an ambiguous DST time takes the first occurrence).
  Output is ``chorus.timeutil.iso`` (UTC, ``Z``). Missing or unparseable -> RowError naming the column.
* Identifiers are strings (integers are accepted and stringified; surrounding spaces stripped). Formats of
  email/phone are not checked here. A row with no identifier at all is a RowError.

Output messages
---------------
track::

    {"type": "track", "event": ..., "messageId": ..., "timestamp": ..., "userId"?: ..., "anonymousId"?: ...,
     "properties": {...  "currency"?: ..., "products"?: [...]},
     "context": {"channel": source, "source": {"type": "import", "name": source, "file": basename},
                 "import_line": line, "traits"?: {"email": ..., "phone": ..., "loyalty_id": ..., ...}}}

identify: the same without ``event``/``properties``; the properties and the non-id identifiers (email, phone,
loyalty_id, ...) go into top-level ``traits`` instead (identifiers win on a name clash).

``messageId = "imp-" + sha256(source + "\\x1f" + "\\x1f".join(key values)).hexdigest()[:32]``; key values
are the cells' raw text (JSON values: strings as-is, others as compact JSON, null as ""; a \\x1e or \\x1f
inside a value is escaped with \\x1e so that distinct keys never share an id). Re-importing the same file
gives the same ids (so the pipeline deduplicates); a changed key cell gives a new id. Two identical rows share
an id: put a receipt/line number in ``key`` (or the file) when repeated rows are distinct events.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from chorus import safejson
from chorus.errors import ChorusError, unreadable
from chorus.safejson import MAX_DEPTH
from chorus.timeutil import iso

__all__ = [
    "ImportFileError",
    "Mapping",
    "MappingError",
    "RowError",
    "count_rows",
    "iter_import",
    "load_mapping",
]

STANDARD_IDENTIFIERS = ("user_id", "anonymous_id", "email", "phone", "loyalty_id")
TYPE_NAMES = ("decimal", "int", "float", "bool", "str")
DEFAULT_EVENTS = {"store": "Order Completed", "call_center": "Call Completed", "catalog": "Catalog Sent"}
DEFAULT_TYPES = {
    "store": {k: "decimal" for k in ("revenue", "total", "subtotal", "tax", "shipping", "discount", "amount")},
}
DEFAULT_TIMESTAMPS: tuple[tuple[str, ...], ...] = (
    ("timestamp",),
    ("created_at",),
    ("date", "time"),
    ("date",),
    ("time",),
)
MAPPING_KEYS = frozenset(
    {"type", "event", "timestamp", "timezone", "identifiers", "properties", "types", "currency", "products",
     "key", "delimiter", "direction", *STANDARD_IDENTIFIERS}
)  # fmt: skip
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PARQUET_BATCH_ROWS = 8192

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SOURCE_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DECIMAL_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)$", re.ASCII)
_FLOAT_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$", re.ASCII)
_INT_RE = re.compile(r"^[+-]?\d+$", re.ASCII)
_EPOCH_RE = re.compile(r"^-?\d+(?:\.\d+)?$", re.ASCII)
_SURROGATE_RE = re.compile("[\udc80-\udcff]")  # undecodable bytes under errors="surrogateescape"
_BOOLS = {"true": True, "t": True, "yes": True, "y": True, "1": True,
          "false": False, "f": False, "no": False, "n": False, "0": False}  # fmt: skip


class MappingError(ValueError):
    """The mapping (file or dict) is invalid; the message names the offending key."""


class ImportFileError(ValueError):
    """The file as a whole cannot be read (unknown extension, unreadable header, corrupt parquet)."""


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based: CSV physical line the row starts on (header = 1), JSONL line, parquet row index + 1
    field: str | None  # the column (or mapping field) at fault, if any
    reason: str  # human-readable, names the field/column


@dataclass(frozen=True)
class Mapping:
    """A resolved mapping: source defaults already applied. Build it with :func:`load_mapping`."""

    source: str
    type: str = "track"
    event: str | None = None  # constant event name
    event_column: str | None = None  # or: the column holding the event name
    timestamp: tuple[tuple[str, ...], ...] = DEFAULT_TIMESTAMPS  # candidate column groups, first present wins
    timezone: str = "UTC"
    identifiers: tuple[tuple[str, str], ...] = ()  # (identifier name, column)
    # (property name, column); None = every column not used for something else
    properties: tuple[tuple[str, str], ...] | None = None
    types: tuple[tuple[str, str], ...] = ()  # (property name, type name)
    currency: str | None = "currency"
    products: str | None = "products"
    key: tuple[str, ...] | None = None  # None = all mapped columns of the row in column order
    delimiter: str = ","
    # "outbound": the rows are the brand's own sends (a catalog mailed), not something the person did
    direction: str = "inbound"
    _types: dict[str, str] = field(init=False, repr=False, compare=False)
    _tz: ZoneInfo = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_types", dict(self.types))
        object.__setattr__(self, "_tz", ZoneInfo(self.timezone))

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    def type_of(self, prop: str) -> str | None:
        return self._types.get(prop)


# --------------------------------------------------------------------------------------------- mapping


def _check_source(source: str) -> str:
    if not isinstance(source, str) or not _SOURCE_RE.match(source):
        raise ValueError(f"source must be lower-case letters, digits and _ (like 'store'), got {source!r}")
    return source


def _column(key: str, value: Any, *, nullable: bool = True) -> str | None:
    if value is None and nullable:
        return None
    if not isinstance(value, str) or not value.strip():
        raise MappingError(f"mapping key {key!r} must be a column name{' or null' if nullable else ''}")
    return value.strip()


def _read_mapping_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise MappingError(f"mapping file {path.name!r} is not UTF-8 text") from None
    except OSError as exc:
        raise MappingError(f"mapping file {str(path)!r} {unreadable(exc)}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml  # type: ignore[import-untyped]
        except ImportError:
            raise MappingError(
                f"mapping file {path.name!r} is YAML but PyYAML is not installed; use a JSON mapping file"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise MappingError(f"mapping file {path.name!r} is not valid YAML{_yaml_problem(exc)}") from None
        except RecursionError:
            raise MappingError(f"mapping file {path.name!r} is nested too deeply") from None
    else:
        try:
            data = json.loads(text)
        except RecursionError:
            raise MappingError(f"mapping file {path.name!r} is nested too deeply") from None
        except ValueError:
            raise MappingError(_not_json(text, f"mapping file {path.name!r}")) from None
        # the parser keeps the last of repeated keys: a mapping that says a key twice is a mistake to name (as the
        # admin API names it in a mapping given as JSON)
        duplicated = safejson.duplicate_key(text, "mapping")
        if duplicated:
            raise MappingError(
                f"mapping file {path.name!r}: {duplicated} appears more than once in its object; give it once"
            )
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MappingError(f"mapping file {path.name!r} must contain an object (key: value pairs)")
    return data


def _yaml_problem(exc: Exception) -> str:
    """`` at line L, column C: <what>`` for a PyYAML error: where (from its problem_mark) and, for the problems
    the segment rules' table knows, what, in our words; never PyYAML's own message."""
    from chorus.segments.rules import yaml_problem as known_problem

    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = known_problem(getattr(exc, "problem", None) or "")
    return where + ("" if "rule" in what else what)  # a rule's advice ("rules do not take tags") is not a mapping's


# "line 1, column 9" at the end of safejson's wording: for a text of one line, its column alone says where
_AT_LINE_1 = re.compile(r"(?:: | at )line 1, column (\d+)$")


def _not_json(text: str, what: str, *, cell: bool = False) -> str:
    """``<what> is not valid JSON: <why> at line L, column C`` for ``text`` that the standard parser refused: in
    safejson's words (the HTTP API's), never the parser's message or a character offset. A text of one line
    (a JSONL line, most cells) is placed by its column alone; in a cell, the place is said to be the cell's."""
    text = text.rstrip("\r\n")
    try:
        safejson.parse(text, what)
    except ChorusError as exc:
        reason = exc.message
    else:  # orjson reads what the standard parser would not (none known): no place to give
        return f"{what} is not valid JSON"
    one_line = _AT_LINE_1.search(reason) if "\n" not in text else None
    if one_line:
        at = f"position {one_line.group(1)} in the cell" if cell else f"column {one_line.group(1)}"
        return f"{reason[: one_line.start()]} at {at}"
    return reason + " of the cell" if cell and re.search(r"column \d+$", reason) else reason


def load_mapping(path: str | Path | dict | None, source: str) -> Mapping:
    """Read a mapping file (JSON; YAML if PyYAML is importable) — or take a dict, or None for the defaults —
    and resolve it against ``source``'s defaults. Raises MappingError naming the bad key."""
    _check_source(source)
    if path is None:
        raw: dict = {}
    elif isinstance(path, dict):
        raw = path
    else:
        raw = _read_mapping_file(Path(path))
    return _resolve(raw, source)


def _resolve(raw: dict, source: str) -> Mapping:
    unknown = sorted(str(k) for k in raw if k not in MAPPING_KEYS)
    if unknown:
        raise MappingError(f"unknown mapping key {unknown[0]!r} (allowed: {', '.join(sorted(MAPPING_KEYS))})")

    mtype = raw.get("type", "track")
    if mtype not in ("track", "identify"):
        raise MappingError(f"mapping key 'type' must be 'track' or 'identify', got {mtype!r}")

    event = event_column = None
    if mtype == "identify":
        if raw.get("event") is not None:
            raise MappingError("mapping key 'event' is not allowed with type 'identify'")
    else:
        spec = raw.get("event", DEFAULT_EVENTS.get(source))
        if spec is None:
            raise MappingError(
                f"mapping key 'event' is required for source {source!r}: a constant event name or "
                '{"column": "..."} (defaults exist only for ' + ", ".join(sorted(DEFAULT_EVENTS)) + ")"
            )
        if isinstance(spec, str) and spec.strip():
            event = spec.strip()
        elif isinstance(spec, dict) and set(spec) == {"column"}:
            event_column = _column("event.column", spec["column"], nullable=False)
        else:
            raise MappingError('mapping key \'event\' must be an event name or {"column": "<column>"}')

    if "timestamp" in raw:
        spec = raw["timestamp"]
        if isinstance(spec, str):
            timestamp: tuple[tuple[str, ...], ...] = ((_column("timestamp", spec, nullable=False),),)
        elif isinstance(spec, list) and spec:
            timestamp = (tuple(_column("timestamp", c, nullable=False) for c in spec),)  # type: ignore[misc]
        else:
            raise MappingError("mapping key 'timestamp' must be a column name or a non-empty list of columns")
    else:
        timestamp = DEFAULT_TIMESTAMPS

    tz = raw.get("timezone", "UTC")
    try:
        if not isinstance(tz, str) or not tz:
            raise ValueError
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        raise MappingError(f"mapping key 'timezone' must be an IANA zone like 'Europe/Paris', got {tz!r}") from None

    ids: dict[str, str | None] = {name: name for name in STANDARD_IDENTIFIERS}
    explicit_ids: set[str] = set()
    for name in STANDARD_IDENTIFIERS:
        if name in raw:
            ids[name] = _column(name, raw[name])
            explicit_ids.add(name)
    extra = raw.get("identifiers", {})
    if extra is None:
        extra = {}
    if not isinstance(extra, dict):
        raise MappingError("mapping key 'identifiers' must be an object {identifier name: column}")
    for name, col in extra.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise MappingError(f"mapping key 'identifiers' has an invalid identifier name {name!r}")
        if name in explicit_ids:
            raise MappingError(f"mapping key 'identifiers.{name}' repeats the top-level key {name!r}")
        ids[name] = _column(f"identifiers.{name}", col)
    identifiers = tuple((n, c) for n, c in ids.items() if c is not None)

    properties: tuple[tuple[str, str], ...] | None = None
    if raw.get("properties") is not None:
        spec = raw["properties"]
        if isinstance(spec, list):
            spec = {c: c for c in spec} if all(isinstance(c, str) for c in spec) else None
        if not isinstance(spec, dict):
            raise MappingError("mapping key 'properties' must be an object {property: column} or a list of columns")
        props = []
        for name, col in spec.items():
            if not isinstance(name, str) or not name:
                raise MappingError(f"mapping key 'properties' has an invalid property name {name!r}")
            props.append((name, _column(f"properties.{name}", col, nullable=False)))
        properties = tuple(props)  # type: ignore[arg-type]

    types = dict(DEFAULT_TYPES.get(source, {}))
    spec = raw.get("types", {}) or {}
    if not isinstance(spec, dict):
        raise MappingError("mapping key 'types' must be an object {property: type}")
    prop_names = {n for n, _ in properties} if properties is not None else None
    for name, tname in spec.items():
        if tname not in TYPE_NAMES:
            raise MappingError(f"mapping key 'types.{name}' must be one of {', '.join(TYPE_NAMES)}, got {tname!r}")
        if prop_names is not None and name not in prop_names:
            raise MappingError(f"mapping key 'types.{name}' names a property that 'properties' does not map")
        types[name] = tname

    currency = _column("currency", raw["currency"]) if "currency" in raw else "currency"
    products = _column("products", raw["products"]) if "products" in raw else "products"

    key = None
    if raw.get("key") is not None:
        spec = raw["key"]
        if not isinstance(spec, list) or not spec:
            raise MappingError("mapping key 'key' must be a non-empty list of columns")
        key = tuple(_column("key", c, nullable=False) for c in spec)  # type: ignore[misc]

    delimiter = raw.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '"\r\n':
        raise MappingError(f"mapping key 'delimiter' must be a single character, got {delimiter!r}")

    # the catalog's default event is the brand mailing it (an outside probe: counted as the customer's own
    # touchpoint, a store "visit" before a purchase, a channel she used); a redemption file maps its own event
    direction = raw.get("direction", "outbound" if event is not None and event == DEFAULT_EVENTS.get(source) ==
                        "Catalog Sent" else "inbound")  # fmt: skip
    if direction not in ("inbound", "outbound"):
        raise MappingError(f"mapping key 'direction' must be 'inbound' or 'outbound', got {direction!r}")
    if direction == "outbound" and mtype != "track":
        raise MappingError("mapping key 'direction': only track rows can be outbound (the brand's sends)")
    return Mapping(
        direction=direction,
        source=source,
        type=mtype,
        event=event,
        event_column=event_column,
        timestamp=timestamp,
        timezone=tz,
        identifiers=identifiers,
        properties=properties,
        types=tuple(sorted(types.items())),
        currency=currency,
        products=products,
        key=key,  # type: ignore[arg-type]
        delimiter=delimiter,
    )


# --------------------------------------------------------------------------------------------- values


class _JsonDecimal(Decimal):
    """A JSON number with a fraction/exponent, read exactly; untyped it becomes a float. ``text`` is the number
    as the file wrote it (``-1e20``, not Decimal's ``-1E+20``), for error messages."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> _JsonDecimal:
        self = super().__new__(cls, text)
        self.text = text
        return self


class _Bad(Exception):
    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


SHOW_LIMIT = 60  # characters of a value quoted in an error message


def _show(value: Any) -> str:
    """A value for an error message, as the file wrote it: a text in quotes (``'yesterday'``), anything else
    JSON-style (``-1e20``, ``{"a": [1, 1, 1]}``, ``true``); a parquet date or time in ISO form, a binary value
    by its kind. Cut at SHOW_LIMIT characters (``…``); never a Python repr (``Decimal('-1E+20')``)."""
    if isinstance(value, str):
        return repr(value[:SHOW_LIMIT] + ("…" if len(value) > SHOW_LIMIT else ""))
    if isinstance(value, bytes | bytearray | memoryview):
        return "a binary value"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    text = ""
    for piece in _json_pieces(value):  # stops as soon as enough is written: a huge or deep value costs nothing
        text += piece
        if len(text) > SHOW_LIMIT:
            return text[:SHOW_LIMIT] + "…"
    return text


def _json_pieces(value: Any) -> Iterator[str]:
    """``value`` as JSON text, piece by piece (keys and strings as JSON strings, ``, `` and ``: `` between)."""
    if value is None or isinstance(value, bool):
        yield {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, str):  # cut first: only the start is shown; unprintable characters escaped, as JSON
        text = json.dumps(value[: SHOW_LIMIT + 1], ensure_ascii=False)
        yield "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)
    elif isinstance(value, _JsonDecimal):
        yield value.text
    elif isinstance(value, int):  # (JSON and parquet integers have far fewer than Python's 4,300 printable digits)
        yield str(value) if value.bit_length() < 14_000 else "<a very large integer>"
    elif isinstance(value, float):
        if math.isfinite(value):
            yield repr(value)
        else:
            yield "NaN" if math.isnan(value) else "-Infinity" if value < 0 else "Infinity"
    elif isinstance(value, Decimal):  # parquet: exact, as stored (12.50)
        yield str(value)
    elif isinstance(value, datetime | date | time):
        yield f'"{value.isoformat()}"'
    elif isinstance(value, dict):
        yield "{"
        for i, (k, v) in enumerate(value.items()):
            yield (", " if i else "") + next(_json_pieces(str(k))) + ": "
            yield from _json_pieces(v)
        yield "}"
    elif isinstance(value, list | tuple):
        yield "["
        for i, v in enumerate(value):
            if i:
                yield ", "
            yield from _json_pieces(v)
        yield "]"
    else:  # a binary value, a duration: said by kind, not by Python's repr
        yield "<binary>" if isinstance(value, bytes | bytearray | memoryview) else "<value>"


def _plain(value: Any, col: str) -> Any:
    """An untyped value as JSON-able Python."""
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, _JsonDecimal):
        return float(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise _Bad(col, f"column {col!r}: {_show(value)} is not a finite number")
        return format(value, "f")
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            raise _Bad(col, f"column {col!r}: {_show(value)} is not a finite number")
        return value
    if isinstance(value, datetime):
        return iso(value) if value.tzinfo is not None else value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise _Bad(col, f"column {col!r}: binary value is not UTF-8 text") from None
    if isinstance(value, list | tuple):
        return [_plain(v, col) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, col) for k, v in value.items()}
    raise _Bad(col, f"column {col!r}: unsupported value of type {type(value).__name__}")


def _convert(value: Any, tname: str, col: str) -> Any:
    """Convert a non-empty value to a declared type; _Bad naming the column otherwise."""
    text = value.strip() if isinstance(value, str) else None

    def bad() -> _Bad:  # (the value is quoted only when it is bad)
        return _Bad(col, f"column {col!r}: {_show(value)} is not a valid {tname}")

    if tname == "str":
        if isinstance(value, dict | list | tuple):
            raise bad()
        plain = _plain(value, col)
        return plain if isinstance(plain, str) else json.dumps(plain)
    if isinstance(value, bool):
        if tname == "bool":
            return value
        raise bad()
    if tname == "bool":
        if text is not None and text.lower() in _BOOLS:
            return _BOOLS[text.lower()]
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad()
    if tname == "int":
        if text is not None:
            if _INT_RE.match(text):
                return int(text)
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, Decimal | float):
            try:
                if value == int(value):
                    return int(value)
            except (ValueError, OverflowError, InvalidOperation):
                pass
        raise bad()
    if tname == "float":
        if text is not None:
            if not _FLOAT_RE.match(text):
                raise bad()
            result = float(text)
        elif isinstance(value, int | float | Decimal):
            result = float(value)
        else:
            raise bad()
        if not math.isfinite(result):
            raise bad()
        return result
    # decimal: an exact decimal string
    if text is not None:
        if not _DECIMAL_RE.match(text):
            raise bad()
        dec = Decimal(text)
    elif isinstance(value, Decimal):
        dec = value
    elif isinstance(value, int):
        dec = Decimal(value)
    elif isinstance(value, float):
        dec = Decimal(repr(value))
    else:
        raise bad()
    if not dec.is_finite():
        raise bad()
    return format(dec, "f")


def _key_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        text = value
    elif isinstance(value, _JsonDecimal):
        text = str(value)
    elif isinstance(value, bool | int | float | list | dict):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    elif isinstance(value, datetime | date | time):
        text = value.isoformat()
    else:
        text = str(value)
    if "\x1e" in text or "\x1f" in text:  # escape the separator so that distinct keys never collide
        text = text.replace("\x1e", "\x1e\x1e").replace("\x1f", "\x1e\x1f")
    return text


def _parse_ts(value: Any, tz: ZoneInfo, col: str) -> str:
    def bad() -> _Bad:  # (the value is quoted only when it is bad)
        return _Bad(col, f"column {col!r}: {_show(value)} is not a timestamp "
                         "(ISO-8601, 'YYYY-MM-DD HH:MM:SS' or epoch seconds)")  # fmt: skip

    try:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int | float | Decimal):
            return iso(datetime.fromtimestamp(float(value), UTC))
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, date):
            dt = datetime(value.year, value.month, value.day)
        elif isinstance(value, str):
            text = value.strip()
            if _EPOCH_RE.match(text):
                return iso(datetime.fromtimestamp(float(text), UTC))
            if text[-1:] in ("Z", "z"):
                text = text[:-1] + "+00:00"
            dt = datetime.fromisoformat(text)
        else:
            raise bad()
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        return iso(dt)
    except (ValueError, OverflowError, OSError):
        raise bad() from None


def _ident(value: Any, name: str, col: str) -> str | None:
    if _is_empty(value):
        return None
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _Bad(col, f"column {col!r} ({name}): {_show(value)} is not a string or an integer")


# --------------------------------------------------------------------------------------------- rows


class _Builder:
    def __init__(self, mapping: Mapping, source: str, file_name: str):
        self.m = mapping
        self.source = source
        self.source_ctx = {"type": "import", "name": source, "file": file_name}
        self.id_columns = tuple(c for _, c in mapping.identifiers)

    def build(self, row: dict[str, Any], columns: Iterable[str], line: int) -> dict | RowError:
        try:
            return self._build(row, columns, line)
        except _Bad as bad:
            return RowError(line, bad.field, bad.reason)
        except RecursionError:  # a value nested deeper than Python can walk; the limit is safejson's 64 anyway
            return RowError(line, None, _TOO_DEEP)

    def _build(self, row: dict[str, Any], columns: Iterable[str], line: int) -> dict:
        m = self.m
        used: set[str] = set()

        event = m.event
        if m.event_column is not None:
            col = m.event_column
            used.add(col)
            value = row.get(col)
            if _is_empty(value) or not isinstance(value, str):
                what = "missing from the row" if col not in row else f"not an event name: {_show(value)}"
                raise _Bad(col, f"event column {col!r} is {what}")
            event = value.strip()

        group = next((g for g in m.timestamp if all(c in row for c in g)), None)
        if group is None:
            looked = ", ".join("+".join(repr(c) for c in g) for g in m.timestamp)
            raise _Bad(m.timestamp[0][0], f"no timestamp column: looked for {looked}")
        used.update(group)
        for col in group:
            if _is_empty(row[col]):
                raise _Bad(col, f"timestamp column {col!r} is empty")
        if len(group) == 1:
            timestamp = _parse_ts(row[group[0]], m.tz, group[0])
        else:
            parts = [v.isoformat() if isinstance(v, date | time) else str(v).strip() for v in (row[c] for c in group)]
            timestamp = _parse_ts(" ".join(parts), m.tz, "+".join(group))

        user_id = anonymous_id = None
        id_traits: dict[str, str] = {}
        for name, col in m.identifiers:
            used.add(col)
            value = _ident(row.get(col), name, col)
            if value is None:
                continue
            if name == "user_id":
                user_id = value
            elif name == "anonymous_id":
                anonymous_id = value
            else:
                id_traits[name] = value
        if user_id is None and anonymous_id is None and not id_traits:
            looked = ", ".join(repr(c) for c in self.id_columns) or "(none mapped)"
            raise _Bad(None, f"no identifier: columns {looked} are all missing or empty")

        extras: list[tuple[str, str]] = []  # (property name, column) handled specially
        if m.currency is not None:
            extras.append(("currency", m.currency))
        if m.products is not None:
            extras.append(("products", m.products))
        used.update(c for _, c in extras)

        if m.properties is None:
            pairs = [(c, c) for c in columns if c not in used and c]
        else:
            pairs = list(m.properties)
        props: dict[str, Any] = {}
        for name, col in pairs:
            used.add(col)
            value = row.get(col)
            if _is_empty(value):
                continue
            tname = m.type_of(name)
            value = _convert(value, tname, col) if tname else _plain(value, col)
            if value is not None:
                props[name] = value

        if m.currency is not None and not _is_empty(row.get(m.currency)):
            value = row[m.currency]
            if not isinstance(value, str):
                raise _Bad(m.currency, f"column {m.currency!r}: {_show(value)} is not a currency code")
            props["currency"] = value.strip()
        if m.products is not None and not _is_empty(row.get(m.products)):
            props["products"] = self._products(row[m.products], m.products)

        if "" in row and not _is_empty(row[""]):
            raise _Bad(None, f"value {_show(row[''])} is in a column without a header name")

        if m.key is not None:
            for col in m.key:
                if col not in row:
                    raise _Bad(col, f"key column {col!r} is missing from the row")
            key_cols: Iterable[str] = m.key
        else:
            key_cols = [c for c in columns if c in used and c]
        digest = hashlib.sha256(
            (self.source + "\x1f" + "\x1f".join(_key_text(row.get(c)) for c in key_cols)).encode(
                "utf-8", "surrogatepass"
            )
        )

        msg: dict[str, Any] = {"type": m.type}
        if m.type == "track":
            msg["event"] = event
        msg["messageId"] = "imp-" + digest.hexdigest()[:32]
        msg["timestamp"] = timestamp
        if user_id is not None:
            msg["userId"] = user_id
        if anonymous_id is not None:
            msg["anonymousId"] = anonymous_id
        context: dict[str, Any] = {
            "channel": self.source,
            "source": dict(self.source_ctx),
            "import_line": line,
        }
        if m.direction == "outbound":
            context["direction"] = "outbound"
        if m.type == "track":
            msg["properties"] = props
            if id_traits:
                context["traits"] = id_traits
        else:
            msg["traits"] = {**props, **id_traits}
        msg["context"] = context
        return msg

    @staticmethod
    def _products(value: Any, col: str) -> list:
        if isinstance(value, str):
            try:
                value = json.loads(value, parse_float=_JsonDecimal, parse_constant=_reject_constant)
            except ValueError:  # also NaN, Infinity, an integer of more than 4,300 digits
                raise _Bad(col, _not_json(value, f"column {col!r}", cell=True)) from None
        if not isinstance(value, list | tuple) or not all(isinstance(p, dict) for p in value):
            raise _Bad(col, f"column {col!r} must be a JSON list of product objects")
        return _plain(value, col)


_TOO_DEEP = f"line is nested deeper than {MAX_DEPTH} levels"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")  # never shown: _not_json says why, and where


def _csv_problem(exc: csv.Error) -> str:
    """Why the csv module could not read a row, in our words (its own text never reaches the report)."""
    text = str(exc)
    if "field larger than field limit" in text:
        return f"a cell is longer than the limit of {csv.field_size_limit():,} characters"
    if "end of data" in text:
        return "a quoted cell is never closed"
    if "expected after" in text:
        return 'text follows the closing quote of a cell (a quote inside a quoted cell is written twice: "")'
    return "a broken quote or line ending"


# --------------------------------------------------------------------------------------------- files


def _format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImportFileError(f"cannot import {path.name!r}: the extension must be one of {', '.join(sorted(FORMATS))}")
    return fmt


def _text_lines(fh: io.BufferedIOBase, newline: str | None) -> io.TextIOWrapper:
    # utf-8-sig drops an optional BOM; surrogateescape keeps going past bad bytes so that one bad line
    # is one RowError (found by looking for the escape surrogates).
    return io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline=newline)


def _iter_csv(path: Path, builder: _Builder) -> Iterator[tuple[int, dict | RowError]]:
    with open(path, "rb") as raw, _text_lines(raw, "") as text:
        # Blank lines before the header (empty or spaces only: no delimiter, no quote) are skipped; line numbers
        # stay physical. A line of delimiters (or "") is a header that names no columns, an error: skipping it
        # would take the first data row for the header, and lose it.
        delimiter = builder.m.delimiter
        skipped = 0
        for first in text:
            if first.strip() or delimiter in first:
                break
            skipped += 1
        else:
            return  # an empty file, or blank lines only: no rows
        reader = csv.reader(itertools.chain([first], text), delimiter=delimiter, strict=True)
        start = skipped + 1
        try:
            header = next(reader)
        except StopIteration:  # (cannot happen: the line is not blank)
            return
        except csv.Error as exc:
            why = _csv_problem(exc)
            raise ImportFileError(f"{path.name}: line {start}: the header is not readable as CSV: {why}") from None
        if any(_SURROGATE_RE.search(h) for h in header):
            raise ImportFileError(f"{path.name}: line {start}: the header line is not valid UTF-8")
        header = [h.strip() for h in header]
        named = [h for h in header if h]
        if not named:
            raise ImportFileError(f"{path.name}: line {start}: the header names no columns")
        if len(set(named)) != len(named):
            dup = next(h for h in named if named.count(h) > 1)
            raise ImportFileError(f"{path.name}: line {start}: column {dup!r} appears twice in the header")
        width = len(header)
        unnamed = [i for i, h in enumerate(header) if not h]
        while True:
            start = skipped + reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield start, RowError(start, None, f"row is not readable as CSV: {_csv_problem(exc)}")
                continue
            end = skipped + reader.line_num
            if not any(c.strip() for c in cells):
                continue
            bad = next((i for i, c in enumerate(cells) if _SURROGATE_RE.search(c)), None)
            if bad is not None:
                col = header[bad] if bad < width and header[bad] else None
                where = f" in column {col!r}" if col else ""
                yield start, RowError(start, col, f"row contains bytes that are not valid UTF-8{where}")
                continue
            if len(cells) != width:
                span = f" (it spans lines {start}-{end}: check for an unbalanced quote)" if end > start else ""
                reason = f"row has {len(cells)} cells, the header has {width}{span}"
                yield start, RowError(start, None, reason)
                continue
            stray = next((i for i in unnamed if cells[i].strip()), None)
            if stray is not None:
                reason = f"cell {stray + 1} ({_show(cells[stray])}) is in a column without a header name"
                yield start, RowError(start, None, reason)
                continue
            row = {h: c for h, c in zip(header, cells, strict=True) if h}
            yield start, builder.build(row, header, start)


def _iter_jsonl(path: Path, builder: _Builder) -> Iterator[tuple[int, dict | RowError]]:
    with open(path, "rb") as raw, _text_lines(raw, "\n") as text:
        for line, content in enumerate(text, start=1):
            if not content.strip():
                continue
            if _SURROGATE_RE.search(content):
                yield line, RowError(line, None, "line contains bytes that are not valid UTF-8")
                continue
            try:
                row = json.loads(content, parse_float=_JsonDecimal, parse_constant=_reject_constant)
            except ValueError:  # also NaN, Infinity, an integer of more than 4,300 digits
                yield line, RowError(line, None, _not_json(content, "line"))
                continue
            except RecursionError:
                yield line, RowError(line, None, _TOO_DEEP)
                continue
            if not isinstance(row, dict):
                yield line, RowError(line, None, f"line is {_json_kind(row)}, not an object (column: value pairs)")
                continue
            yield line, builder.build(row, list(row), line)


def _json_kind(value: Any) -> str:
    """What a JSON value is, in the words of the JSON text (never a Python type name such as NoneType)."""
    if value is None:
        return "null"
    if isinstance(value, bool):  # before the numbers: a bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "a JSON value"


def _iter_parquet(path: Path, builder: _Builder) -> Iterator[tuple[int, dict | RowError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
        columns = list(pf.schema_arrow.names)
    except (pa.ArrowException, OSError) as exc:  # pyarrow's text never reaches the report
        why = "it has no parquet footer" if "magic bytes" in str(exc) else "its metadata is damaged or cut short"
        raise ImportFileError(f"{path.name}: not a readable parquet file ({why})") from None
    line = 0
    with pf:
        batches = pf.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (pa.ArrowException, OSError):  # a damaged page: what follows it cannot be read
                line += 1
                yield line, RowError(line, None, _DAMAGED)
                return
            try:
                rows = batch.to_pylist()
            # a value Python cannot hold (a date past 9999; a time zone it does not know, a KeyError): find its rows
            except (pa.ArrowException, ValueError, OverflowError, KeyError):
                rows = None
            for i in range(batch.num_rows):
                line += 1
                row = rows[i] if rows is not None else _parquet_row(batch, i, columns, line)
                yield line, row if isinstance(row, RowError) else builder.build(row, columns, line)


_DAMAGED = "the parquet data from this row to the end of the file cannot be read (the file is damaged)"


def _parquet_row(batch: Any, i: int, columns: list[str], line: int) -> dict | RowError:
    """Row ``i`` of a batch whose values did not all convert (a date past year 9999, say), value by value: a
    RowError naming the column of the first value that does not."""
    row = {}
    for j, col in enumerate(columns):
        try:
            row[col] = batch.column(j)[i].as_py()
        except (ValueError, OverflowError, ArithmeticError):
            kind = str(batch.schema.field(j).type)[:60]
            return RowError(line, col, f"column {col!r}: a {kind} value outside the range that can be read")
        except KeyError:  # a timestamp in a time zone this machine's database does not have
            kind = str(batch.schema.field(j).type)[:60]
            return RowError(line, col, f"column {col!r}: a {kind} value in a time zone not known here")
    return row


_READERS = {"csv": _iter_csv, "jsonl": _iter_jsonl, "parquet": _iter_parquet}


def iter_import(path: str | Path, source: str, mapping: Mapping | None = None) -> Iterator[tuple[int, dict | RowError]]:
    """Yield ``(line, message)`` or ``(line, RowError)`` for every data row of the file, in file order.

    Raises at call time (not on first iteration) for a bad source, a mapping resolved for another source,
    a missing file or an unknown extension; ImportFileError later if the CSV header or parquet metadata is
    unreadable."""
    _check_source(source)
    path = Path(path)
    if mapping is None:
        mapping = load_mapping(None, source)
    elif mapping.source != source:
        raise MappingError(f"the mapping was loaded for source {mapping.source!r}, not {source!r}")
    reader = _READERS[_format(path)]
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {str(path)!r}")
    return reader(path, _Builder(mapping, source, path.name))


def count_rows(path: str | Path) -> int | None:
    """A cheap row-count estimate for a progress bar: data lines for CSV (minus the header) and JSONL,
    metadata ``num_rows`` for parquet; None when it cannot tell (unknown extension, unreadable file)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        return None
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(path).metadata.num_rows)
        lines = 0
        last = b"\n"
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
        if last != b"\n":
            lines += 1
    except Exception:  # noqa: BLE001 - a progress bar must never break the import
        return None
    return max(lines - 1, 0) if fmt == "csv" else lines
