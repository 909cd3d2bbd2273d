"""Segment rules compiled to one set-based SQL query: the whole membership of a segment at ``now``.

The reference semantics are :func:`chorus.segments.evaluate.evaluate`: for every profile of the workspace,
``members(conn, ws, rule, now)`` holds exactly the profiles for which ``evaluate(rule, person, now).value`` is true.
The language and the shape of the query are in ``docs/segments.md`` ("Batch"); why this shape, decision 0025.

The query (SQLAlchemy Core; every value from a rule is a bound parameter):

* ``profiles p`` of the workspace, filtered by one boolean formula: ``and``/``or``/``not`` are SQL's, over leaves
  that are never NULL (each is wrapped in COALESCE), so three-valued logic never leaks into ``not``;
* the behaviour, channel and event-time leaves of the rule become aggregate columns (``count(*) FILTER (WHERE
  ...)``, ``min``, ``max``, exact sums) of **one** pass over the workspace's events grouped by profile (``ev``),
  LEFT JOINed to the profiles (a profile with no matching event has zero counts);
* message leaves likewise over ``message_status`` and ``messages`` (``mg``), by the profile that owns the message
  now (a merged-away id resolves through ``profile_aliases``);
* ``last_value`` leaves take the newest matching event per profile (``row_number()``), one subquery each;
* computed traits are joined by name; segment and list references are EXISTS probes of their primary keys;
  buckets hash the profile id in SQL (``sha256``; on SQLite the store registers it on every connection);
* calendar dates depend on the profile's time zone: the few zones present in the workspace are read first, and
  every zone-dependent instant, day or anniversary set is computed in Python for each of them (``times``) and
  bound in a small ``zt`` table joined on the profile's zone.

A few parts are **hybrid**: SQL narrows the candidates, Python decides exactly those with the real functions, and
the ids it found true are bound into the query:

* ``reachable`` and ``subscribed``: the consent rule is the messaging policy's (``consent_decision``,
  ``addresses_for``), never copied into SQL. Profiles without an address for the channel are not reachable;
  profiles with an address and no consent at all get one answer, computed once by the evaluator; the others are
  evaluated one by one with the evaluator on their stored state and addresses;
* dates written in any other form than ``YYYY-MM-DD``, ``YYYY-MM-DDTHH:MM:SSZ`` or
  ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (an offset, no seconds, a lower-case ``t``...): SQL reads those three forms
  itself; any other text that might be a date goes to ``evaluate.check``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BIT, JSONB
from sqlalchemy.engine import Connection

from chorus.identity.identifiers import IdentityConfig
from chorus.messaging.policy import addresses_for
from chorus.profiles.state import empty
from chorus.segments import rules as r
from chorus.segments.evaluate import ACTIVITY_CHANNELS, MESSAGE_FILTERS, check, evaluate
from chorus.segments.person import Person
from chorus.segments.times import EARLIEST, NEVER, UTC_ZONE, anniversary_holds, day_start, instant, zone
from chorus.store.tables import (
    computed_traits,
    events,
    identifiers,
    list_members,
    message_status,
    messages,
    profile_aliases,
    profiles,
    segment_members,
)
from chorus.store.types import UTCDateTime

__all__ = ["SegmentQuery", "members", "members_query", "zones_of", "needs_zones"]

BIG = 2**53  # beyond this a double and an integer may compare differently as doubles and as exact decimals
PAGE_LIKE = ("page", "screen")
_SQLITE_TYPES_NUMBER = ("integer", "real")


# -- the result -------------------------------------------------------------------------------------------------
@dataclass
class Hybrid:
    """One part decided in Python: ``candidates`` selects the rows to decide (their id first); ``decide`` returns
    the ids among them for which the part holds; those are bound as parameter ``key``."""

    key: str
    candidates: sa.Select
    decide: Callable[[Connection, list], set]
    what: str  # for the docs and errors: which node


@dataclass
class SegmentQuery:
    """The compiled rule: ``select`` returns the member ids once every hybrid's parameter is bound
    (:meth:`run`)."""

    select: sa.Select
    hybrids: list[Hybrid]
    dialect: str

    def params(self, decided: Mapping[str, set]) -> dict:
        return {h.key: _encode_ids(decided[h.key], self.dialect) for h in self.hybrids}

    def run(self, conn: Connection) -> set[str]:
        decided = decide_hybrids(conn, self.hybrids, self.dialect)
        return set(conn.execute(self.select, self.params(decided)).scalars())


def _bind_names(stmt) -> set[str]:
    # the named parameters of a statement, by walking it (compiling it to read them cost several ms a part)
    from sqlalchemy.sql import visitors

    return {x.key for x in visitors.iterate(stmt) if isinstance(x, sa.BindParameter)}


def decide_hybrids(conn: Connection, hybrids: list[Hybrid], dialect: str) -> dict[str, set]:
    """Decide every hybrid part, each once the parts its candidates read are decided: a candidates query may read
    a shared pass whose filter binds another part's answer (an event-level date test in a ``where``, beside a
    ``last_value`` in the same events pass)."""
    decided: dict[str, set] = {}
    keys = {h.key for h in hybrids}
    reads = {h.key: _bind_names(h.candidates) & keys for h in hybrids}
    todo = list(hybrids)
    while todo:
        ready = [h for h in todo if reads[h.key] <= decided.keys()]
        if not ready:
            raise RuntimeError(f"hybrid parts read each other: {sorted(h.key for h in todo)}")
        for h in ready:
            params = {k: _encode_ids(decided[k], dialect) for k in reads[h.key]}
            decided[h.key] = h.decide(conn, conn.execute(h.candidates, params).all())
        todo = [h for h in todo if h.key not in decided]
    return decided


def _encode_ids(ids: set, dialect: str):
    values = sorted(ids)
    return values if dialect == "postgresql" else orjson.dumps(values).decode()


# -- entry points ---------------------------------------------------------------------------------------------------
def needs_zones(rule: r.Node) -> bool:
    """Whether the answer depends on the profile's time zone (a calendar date, an anniversary)."""
    return r.dependencies(rule).timezone


def zone_key(state, dialect: str):
    """The profile's ``timezone`` attribute as :attr:`Person.timezone` reads it (the first item of
    ``state.attrs.timezone`` when that is a list whose first item is text), else NULL."""
    if dialect == "postgresql":
        def path(*parts):
            return sa.cast(sa.literal(list(parts), ARRAY(sa.Text)), ARRAY(sa.Text))

        tz, first = path("attrs", "timezone"), path("attrs", "timezone", "0")
        return sa.case(
            (sa.and_(sa.func.jsonb_typeof(state.op("#>", return_type=JSONB)(tz)) == "array",
                     sa.func.jsonb_typeof(state.op("#>", return_type=JSONB)(first)) == "string"),
             state.op("#>>", return_type=sa.Text)(first)),
        )  # fmt: skip
    return sa.case(
        (sa.and_(sa.func.json_type(state, "$.attrs.timezone") == "array",
                 sa.func.json_type(state, "$.attrs.timezone[0]") == "text"),
         sa.func.json_extract(state, "$.attrs.timezone[0]")),
    )  # fmt: skip


def zones_of(conn: Connection, ws: str) -> list[str | None]:
    """The distinct time zone attributes of the workspace's profiles (NULL for none): a handful, even for millions
    of people."""
    key = zone_key(profiles.c.state, conn.dialect.name)
    return list(conn.execute(sa.select(key).where(profiles.c.workspace_id == ws).distinct()).scalars())


def members_query(
    rule: r.Node | Mapping, ws: str, now: datetime, *, dialect: str, topics: Mapping | None = None,
    zones: Iterable[str | None] | None = None, identity: IdentityConfig | None = None,
    span: tuple[str | None, str] | None = None, zone_default: str | None = None,
) -> SegmentQuery:  # fmt: skip
    """Compile ``rule`` for workspace ``ws`` at ``now`` (aware).

    ``span`` ``(after, last)`` restricts the answer to the profiles whose id is in ``(after, last]`` (``after``
    None: from the first); every pass (events, messages, last values, hybrid candidates) reads only theirs, so a
    batch computing a segment chunk by chunk reads each person's data once.

    ``zones`` are the time zone attributes present among the profiles (:func:`zones_of`): a rule that depends on
    the profile's zone is exact only for profiles whose zone is listed (the others are taken as ``zone_default``,
    the workspace's ``messaging.timezone``: the zone of a profile without one, as ``Person.zone``). ``identity``
    is the workspace's identity settings (which identifier kinds are addresses of which channel), for
    ``reachable``; ``topics`` its ``messaging.topics``, as for :func:`evaluate`."""
    if isinstance(rule, Mapping):
        rule = r.parse(dict(rule))
    if now.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    c = _Compiler(ws, now.astimezone(UTC), dialect, topics, list(zones or ()), identity or IdentityConfig({}),
                  zone_default)  # fmt: skip
    c.span = span
    return c.compile(rule)


def members(
    conn: Connection, ws: str, rule: r.Node | Mapping, now: datetime, topics: Mapping | None = None,
    *, zones: Iterable[str | None] | None = None, span: tuple[str | None, str] | None = None,
    zone_default: str | None = None,
) -> set[str]:  # fmt: skip
    """The ids of the workspace's profiles in the segment at ``now`` (in ``span``, see :func:`members_query`):
    the query, and its hybrid parts. Without ``zones``, the profiles' zones and the workspace's default are read."""
    from chorus import workspaces as ws_api

    if isinstance(rule, Mapping):
        rule = r.parse(dict(rule))
    if zones is None and needs_zones(rule):
        zones, zone_default = zones_of(conn, ws), ws_api.get(conn, ws).timezone
    identity = None
    if any(isinstance(n, r.Reachable) for n, _ in r.walk(rule)):
        identity = ws_api.get(conn, ws).identity
    q = members_query(rule, ws, now, dialect=conn.dialect.name, topics=topics, zones=zones, identity=identity,
                      span=span, zone_default=zone_default)  # fmt: skip
    return q.run(conn)


# -- JSON values in SQL ---------------------------------------------------------------------------------------------
def _pg_text(value: str):
    # explicit types: ``jsonb -> unknown`` is ambiguous (text key or array index)
    return sa.cast(sa.literal(value, sa.Text), sa.Text)


_PG_INT = re.compile(r"\s*[+-]?[0-9]+")


def _pg_path_safe(part: str, key_only: bool) -> bool:
    """Does PostgreSQL's ``#>`` step read this part as ``evaluate.lookup`` does? On an object both take the key; on
    an array ``#>`` takes any text ``strtol`` reads as an index (``-1`` counts from the end), Python only digits."""
    if _PG_INT.fullmatch(part):
        return not key_only and part.isdigit() and part.isascii()
    return not (part.isdigit() and not key_only)  # a non-ASCII digit string indexes a list in Python only


def _simple_key(part: str) -> bool:
    """Can SQLite address this key inside a quoted path step (``$."key"``)? Its path syntax has no escapes."""
    return not any(ch in part for ch in '"\\') and all(ord(ch) >= 0x20 for ch in part)


@dataclass
class JVal:
    """A JSON value in SQL, or missing. PostgreSQL: ``j`` is jsonb (NULL when missing). SQLite: ``t`` is its
    ``json_type`` (NULL when missing) and ``v`` its SQL value (text, number, 1/0, or JSON text for arrays and
    objects); on PostgreSQL ``t`` may hold the value read as text at once (``#>>``)."""

    j: Any = None
    t: Any = None
    v: Any = None


class _Json:
    """Builds :class:`JVal` lookups and the tests of ``evaluate.check`` for one dialect."""

    def __init__(self, dialect: str):
        self.pg = dialect == "postgresql"

    # -- lookups: ``evaluate.lookup`` (dotted paths; a digit part indexes a list; null is missing) -------------
    def lookup(self, base, prefix: list[str], parts: list[str], *, first_is_key: bool = True) -> JVal:
        """The value at ``prefix`` then ``parts`` in the JSON document ``base`` (jsonb / JSON text). The prefix
        names keys of objects Chorus writes (``traits``, ``properties``); ``first_is_key``: the first part names
        a key too (the container is always an object in Python: traits, an event's properties)."""
        steps = [(p, True) for p in prefix] + [(p, first_is_key and i == 0) for i, p in enumerate(parts)]
        if self.pg:
            if all(_pg_path_safe(part, key_only) for part, key_only in steps):
                # one #> for the whole path: no copy of every object on the way (each -> returns one)
                path = sa.cast(sa.literal([p for p, _ in steps], ARRAY(sa.Text)), ARRAY(sa.Text))
                return JVal(j=base.op("#>", return_type=JSONB)(path), t=base.op("#>>", return_type=sa.Text)(path))
            cur = base
            for part, key_only in steps:
                by_key = cur.op("->", return_type=JSONB)(_pg_text(part))
                if part.isdigit() and not key_only:
                    n = int(part)
                    by_index = (cur.op("->", return_type=JSONB)(sa.cast(sa.literal(n), sa.Integer))
                                if n < 2**31 else sa.null())  # fmt: skip
                    cur = sa.case((sa.func.jsonb_typeof(cur) == "array", by_index), else_=by_key)
                else:
                    cur = by_key
            return JVal(j=cur)
        return self._sqlite_lookup(base, steps)

    def _sqlite_lookup(self, base, steps) -> JVal:
        path: Any = "$"  # a Python string while it is static, else an SQL text expression

        def extend(p, suffix: str):
            return p + suffix if isinstance(p, str) else p.concat(suffix)

        def lit(p):
            return sa.literal(p, sa.Text) if isinstance(p, str) else p

        for k, (part, key_only) in enumerate(steps):
            last = k == len(steps) - 1
            if not _simple_key(part):
                # SQLite's path syntax cannot name this key: json_each reads labels decoded. Only objects and
                # arrays are descended into (a string's value would not be JSON text).
                container = sa.case((sa.func.json_type(base, lit(path)).in_(("object", "array")),
                                     sa.func.json_extract(base, lit(path))))  # fmt: skip
                each = sa.func.json_each(container).table_valued("key", "type", "value").alias(f"je{k}")
                pick = each.c.key == sa.literal(part, sa.Text)
                if last:
                    return JVal(t=sa.select(each.c.type).where(pick).scalar_subquery(),
                                v=sa.select(each.c.value).where(pick).scalar_subquery())  # fmt: skip
                base = sa.select(sa.case((each.c.type.in_(("object", "array")), each.c.value))).where(
                    pick).scalar_subquery()  # fmt: skip
                path = "$"
                continue
            keyed = extend(path, '."' + part + '"')
            if part.isdigit() and not key_only:
                n = int(part)
                indexed = lit(extend(path, f"[{n}]")) if n < 2**31 else sa.null()
                path = sa.case((sa.func.json_type(base, lit(path)) == "array", indexed), else_=lit(keyed))
            else:
                path = keyed
        p = lit(path)
        return JVal(t=sa.func.json_type(base, p), v=sa.func.json_extract(base, p))

    # -- kinds of value ---------------------------------------------------------------------------------------
    def missing(self, x: JVal):
        if self.pg:
            return sa.or_(x.j.is_(None), sa.func.jsonb_typeof(x.j) == "null")
        return sa.or_(x.t.is_(None), x.t == "null")

    def is_text(self, x: JVal):
        return sa.func.jsonb_typeof(x.j) == "string" if self.pg else x.t == "text"

    def text(self, x: JVal):
        """The text of a string value (NULL for other kinds)."""
        if self.pg:
            return sa.case((sa.func.jsonb_typeof(x.j) == "string",
                            x.j.op("#>>", return_type=sa.Text)(sa.cast(sa.literal("{}"), ARRAY(sa.Text)))))  # fmt: skip
        return sa.case((x.t == "text", x.v))

    def any_text(self, x: JVal):
        """The text of a string value, and some text for other values (never NULL for a present value)."""
        if self.pg:
            if x.t is not None:  # PostgreSQL: the path read as text at once (#>>)
                return x.t
            return x.j.op("#>>", return_type=sa.Text)(sa.cast(sa.literal("{}"), ARRAY(sa.Text)))
        return x.v

    def is_number(self, x: JVal):
        return sa.func.jsonb_typeof(x.j) == "number" if self.pg else x.t.in_(_SQLITE_TYPES_NUMBER)

    def number(self, x: JVal):
        """The number (exact NUMERIC on PostgreSQL; the stored integer or double on SQLite), NULL otherwise."""
        if self.pg:
            return sa.case((sa.func.jsonb_typeof(x.j) == "number", sa.cast(x.j, sa.Numeric)))
        return sa.case((x.t.in_(_SQLITE_TYPES_NUMBER), x.v))

    # -- comparisons of numbers, exact ------------------------------------------------------------------------
    def num_cmp(self, num, op: str, arg, n=None):
        """``num op arg`` (``num op arg * n`` with a count ``n``, for averages), as exact decimals: a float is the
        decimal it is written as (``evaluate.same``). ``num`` is NULL for a value that is not a number."""
        if self.pg:
            a = sa.cast(sa.literal(_decimal(arg), sa.Numeric), sa.Numeric)
            if n is not None:
                a = a * sa.cast(n, sa.Numeric)
            return _op(num, op, a)
        if n is None and abs(arg) < BIG:
            # doubles and integers of this size compare the same natively and as decimals (decision 0025)
            return _op(num, op, sa.literal(arg))
        return _op(sa.func.decimal_cmp(num, sa.literal(arg), n if n is not None else 1), op, 0)

    # -- the tests of evaluate.check, except dates ------------------------------------------------------------
    def same(self, x: JVal, arg):
        """``evaluate.same(value, arg)`` for a scalar ``arg``."""
        if self.pg:
            return x.j == sa.cast(sa.literal(orjson.dumps(arg).decode(), sa.Text), JSONB)
        if isinstance(arg, bool):
            return x.t == ("true" if arg else "false")
        if isinstance(arg, str):
            return sa.and_(x.t == "text", x.v == sa.literal(arg, sa.Text))
        return sa.and_(x.t.in_(_SQLITE_TYPES_NUMBER), self.num_cmp(x.v, "eq", arg))

    def one_of(self, x: JVal, args: tuple):
        if self.pg:
            listed = sa.cast(sa.literal(orjson.dumps(list(args)).decode(), sa.Text), JSONB)
            return sa.and_(sa.func.jsonb_typeof(x.j).notin_(("object", "array")),
                           listed.op("@>", return_type=sa.Boolean)(sa.func.jsonb_build_array(x.j)))  # fmt: skip
        texts = [a for a in args if isinstance(a, str)]
        small = [a for a in args if not isinstance(a, bool | str) and abs(a) < BIG]
        parts = []
        if texts:
            parts.append(sa.and_(x.t == "text", x.v.in_(_sqlite_list(texts))))
        if small:
            parts.append(sa.and_(x.t.in_(_SQLITE_TYPES_NUMBER), x.v.in_(_sqlite_list(small))))
        parts += [self.same(x, a) for a in args if isinstance(a, bool) or (not isinstance(a, str) and abs(a) >= BIG)]
        return sa.or_(*parts) if parts else sa.false()

    def includes(self, x: JVal, arg):
        if self.pg:
            one = sa.cast(sa.literal(orjson.dumps([arg]).decode(), sa.Text), JSONB)
            return sa.and_(sa.func.jsonb_typeof(x.j) == "array", x.j.op("@>", return_type=sa.Boolean)(one))
        each = sa.func.json_each(sa.case((x.t == "array", x.v))).table_valued("type", "value").alias("inc")
        return sa.and_(x.t == "array", sa.exists(sa.select(1).select_from(each).where(
            self.same(JVal(t=each.c.type, v=each.c.value), arg))))  # fmt: skip


def _sqlite_list(values: list):
    each = sa.func.json_each(sa.literal(orjson.dumps(values).decode(), sa.Text)).table_valued("value")
    return sa.select(each.c.value).scalar_subquery()


def _decimal(x) -> Decimal | int:
    return x if isinstance(x, int) else Decimal(repr(x))


def _op(a, op: str, b):
    return {"eq": a == b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


NUM_OPS = {"equals": "eq", "gt": "gt", "gte": "gte", "lt": "lt", "lte": "lte"}


# -- dates in text: the forms SQL reads itself ----------------------------------------------------------------------
class _Dates:
    """Recognises ``YYYY-MM-DD`` (a local day) and ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (an instant) in SQL, with
    their validity; everything else that may be a date is left to Python (:meth:`odd`)."""

    DAY = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"
    INSTANT = DAY + "T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]"

    def __init__(self, dialect: str):
        self.pg = dialect == "postgresql"

    def _like(self, s, glob: str, regex: str):
        if self.pg:
            return s.op("~", return_type=sa.Boolean)(sa.literal(regex, sa.Text))
        return s.op("GLOB", return_type=sa.Boolean)(sa.literal(glob, sa.Text))

    def _valid_day(self, s):
        y = sa.cast(sa.func.substr(s, 1, 4), sa.Integer)
        m, d = sa.func.substr(s, 6, 2), sa.func.substr(s, 9, 2)
        leap = sa.or_(sa.and_(y % 4 == 0, y % 100 != 0), y % 400 == 0)
        last = sa.case((m == "02", sa.case((leap, "29"), else_="28")), (m.in_(("04", "06", "09", "11")), "30"),
                       else_="31")  # fmt: skip
        return sa.and_(y >= 1, m.between("01", "12"), d >= "01", d <= last)

    SHORT_MONTHS = ("02-30", "02-31", "04-31", "06-31", "09-31", "11-31")

    def _shape(self, s):
        """PostgreSQL: the text with every ASCII digit as 0 (a regular expression costs several times more)."""
        return sa.func.translate(s, "0123456789", "0000000000")

    def _pg_valid(self, s, time: bool):
        md = sa.func.substr(s, 6, 5)
        y = sa.cast(sa.func.substr(s, 1, 4), sa.Integer)
        leap = sa.or_(sa.and_(y % 4 == 0, y % 100 != 0), y % 400 == 0)
        m, d = sa.func.substr(s, 6, 2), sa.func.substr(s, 9, 2)
        ok = [sa.func.substr(s, 1, 4) != "0000", m.between("01", "12"), d.between("01", "31"),
              sa.case((md == "02-29", leap), else_=md.notin_(self.SHORT_MONTHS))]  # fmt: skip
        if time:
            ok += [sa.func.substr(s, 12, 2) <= "23", sa.func.substr(s, 15, 2) <= "59", sa.func.substr(s, 18, 2) <= "59"]
        return sa.and_(*ok)

    def day(self, s):
        """``s`` is a valid YYYY-MM-DD (guarded: PostgreSQL does not promise the order of AND)."""
        if self.pg:
            return sa.case((self._shape(s) == "0000-00-00", self._pg_valid(s, time=False)), else_=sa.false())
        shape = self._like(s, self.DAY, "")
        return sa.case((shape, self._valid_day(s)), else_=sa.false())

    def instant_ok(self, s):
        if self.pg:
            shaped = self._shape(s).in_(("0000-00-00T00:00:00Z", "0000-00-00T00:00:00.000000Z"))
            return sa.case((shaped, self._pg_valid(s, time=True)), else_=sa.false())
        long_ = self._like(s, self.INSTANT + ".[0-9][0-9][0-9][0-9][0-9][0-9]Z", "")
        short = self._like(s, self.INSTANT + "Z", "")
        valid = sa.and_(self._valid_day(s), sa.func.substr(s, 12, 2) <= "23", sa.func.substr(s, 15, 2) <= "59",
                        sa.func.substr(s, 18, 2) <= "59")  # fmt: skip
        return sa.case((sa.or_(long_, short), valid), else_=sa.false())

    def instant_text(self, s):
        """The instant as ``timeutil.iso`` writes it (fixed width: compares as text in time order)."""
        return sa.case((sa.func.length(s) == 20, sa.func.substr(s, 1, 19).concat(".000000Z")), else_=s)

    def maybe(self, s):
        """Given neither form above: may ``s`` be a date in another form (see :meth:`odd`)?"""
        length = sa.func.length(s)
        nbytes = sa.func.octet_length(s) if self.pg else sa.func.length(sa.cast(s, sa.LargeBinary))
        find = sa.func.strpos if self.pg else sa.func.instr
        return sa.and_(length <= 64, sa.or_(find(s, "t") > 0, find(s, "T") > 0, nbytes != length, length == 10))

    def odd(self, s):
        """Text that may be a date SQL does not read: short enough (``times.value_instant``), not one of the forms
        above, and with a ``t`` (a date-time), a non-ASCII character (a case mapping to ``T``) or ten characters
        (``YYYY-MM-DD`` of other digits, or an impossible day). Python decides those."""
        return sa.and_(s.isnot(None), sa.not_(self.day(s)), sa.not_(self.instant_ok(s)), self.maybe(s))


# -- days and instants around a threshold, per zone -----------------------------------------------------------------
def _local_date(t: datetime, tz) -> date | None:
    try:
        return t.astimezone(tz).date()
    except OverflowError:
        return None


def _last_day(t: datetime, tz, strict: bool) -> str:
    """The latest day d with ``day_start(d) <= t`` (``< t`` when strict), as text; '' when there is none. Days
    are compared as text: day_start never decreases with the day, so these sets are ranges of days."""

    def ok(d: date) -> bool:
        s = day_start(d, tz)
        return s < t if strict else s <= t

    if t >= NEVER:
        return date.max.isoformat()
    d = _local_date(t, tz) or (date.min if t < datetime(5000, 1, 1, tzinfo=UTC) else date.max)
    for _ in range(5):  # at most a couple of steps: a local date never strays a day from the instant's
        if ok(d) or d == date.min:
            break
        d -= timedelta(days=1)
    if not ok(d):
        return ""
    while d < date.max and ok(d + timedelta(days=1)):
        d += timedelta(days=1)
    return d.isoformat()


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _minus(t: datetime, d: timedelta) -> datetime | None:
    try:
        return t - d
    except OverflowError:
        return None


def _plus(t: datetime, d: timedelta) -> datetime | None:
    try:
        return t + d
    except OverflowError:
        return None


# -- the compiler -----------------------------------------------------------------------------------------------------
@dataclass
class _Pass:
    """Aggregate columns of one grouped pass (events or messages), referenced by name from the outer query."""

    alias: str
    columns: list = field(default_factory=list)  # labelled aggregate expressions
    filters: list = field(default_factory=list)  # row filters (their OR restricts the pass)


class _Compiler:
    def __init__(self, ws: str, now: datetime, dialect: str, topics, zones: list, identity: IdentityConfig,
                 zone_default: str | None = None):  # fmt: skip
        self.ws, self.now, self.dialect, self.topics, self.identity = ws, now, dialect, topics, identity
        self.zone_default = zone_default  # the zone of a profile without one of her own (Person.zone)
        self.pg = dialect == "postgresql"
        self.json = _Json(dialect)
        self.dates = _Dates(dialect)
        self.zone_keys = sorted({z for z in zones if z is not None})
        self.zt_rows: dict[str, dict] = {z: {} for z in self.zone_keys}
        self.zt_cols: dict[str, Any] = {}  # column name -> type
        self.zt_same: dict[tuple, str] = {}  # (type, default's value, each zone's value) -> its column
        self.scope = "outer"  # where the expression being built is evaluated: outer, ev, mg, lvN
        self.zoned: set[str] = set()  # the scopes that read a zone parameter (they join the profile's zone)
        self.ev = _Pass("ev")
        self.mg = _Pass("mg")
        self.lvs: list[sa.Subquery] = []
        self.cts: dict[str, Any] = {}  # computed trait name -> its alias
        self.hybrids: list[Hybrid] = []
        self.n = itertools.count()
        self.p = profiles.alias("p")
        self.pz = profiles.alias("pz")  # the profile of an event or a message, for its zone
        self.prefilter = None  # the cheap part of the last selection built (see selection)
        self.span: tuple[str | None, str] | None = None  # (after, last]: the profile ids computed (None: all)

    # -- zone parameters --------------------------------------------------------------------------------------
    def zparam(self, fn: Callable[[Any], Any], type_):
        """``fn(zone)`` for the profile's zone (``Person.zone``: hers if known, else the workspace's default, else
        UTC): one bound value when every zone gives the same, else a column of the ``zt`` table (a profile with no
        zone, or one not listed, gets the default's)."""
        base = fn(zone(self.zone_default))
        values = {z: fn(zone(z, self.zone_default)) for z in self.zone_keys}
        if all(v == base for v in values.values()):
            return sa.literal(base, type_)
        same = (type_.__name__ if isinstance(type_, type) else repr(type_), base, tuple(values.items()))
        name = self.zt_same.get(same)  # one column per distinct set of values: many tests may share one span
        if name is None:
            name = self.zt_same[same] = f"c{len(self.zt_cols)}"
            self.zt_cols[name] = type_
            for z, v in values.items():
                self.zt_rows[z][name] = v
        self.zoned.add(self.scope)
        return sa.func.coalesce(sa.literal_column(f"zt.{name}", type_), sa.literal(base, type_))

    def _zt_cte(self):
        cols = list(self.zt_cols)

        def value(z, c):
            v = sa.literal(self.zt_rows[z][c], self.zt_cols[c])
            # PostgreSQL types a UNION of parameters as text unless told; SQLite's CAST AS DATETIME is numeric
            return sa.cast(v, self.zt_cols[c]) if self.pg else v

        selects = [
            sa.select(sa.literal(z, sa.Text).label("zkey"), *(value(z, c).label(c) for c in cols))
            for z in self.zone_keys
        ]
        return (sa.union_all(*selects) if len(selects) > 1 else selects[0]).cte("zt")

    def _zt_join(self, left, state_col):
        return left.outerjoin(sa.table("zt"), sa.literal_column("zt.zkey") == zone_key(state_col, self.dialect))

    # -- helpers ----------------------------------------------------------------------------------------------
    def lit_ts(self, t: datetime):
        return sa.literal(t, UTCDateTime())

    def text_cmp(self, a, b):
        """Text compared in code point order (PostgreSQL's database collation may not be)."""
        return (a.collate("C"), b) if self.pg else (a, b)

    def leaf(self, pred):
        return sa.func.coalesce(pred, sa.false())

    def in_ids(self, col, key: str, elem=sa.String):
        if self.pg:
            return col == sa.any_(sa.bindparam(key, type_=ARRAY(elem)))
        each = sa.func.json_each(sa.bindparam(key, type_=sa.Text)).table_valued("value")
        return col.in_(sa.select(each.c.value))

    def in_span(self, col):
        """``col`` (a profile id) within the span computed: a range of the primary key and of the events' and
        members' (workspace, profile) indexes."""
        if self.span is None:
            return sa.true()
        after, last = self.span
        return sa.and_(col > after if after is not None else sa.true(), col <= last)

    def payload(self):
        return sa.cast(events.c.payload, JSONB) if self.pg else events.c.payload

    # -- the rule ---------------------------------------------------------------------------------------------
    def compile(self, rule: r.Node) -> SegmentQuery:
        formula = self.node(rule)
        p = self.p
        q = sa.select(p.c.id).select_from(self.outer_from()).where(p.c.workspace_id == self.ws, self.in_span(p.c.id),
                                                                   formula)  # fmt: skip
        if self.zt_cols:
            q = q.add_cte(self._zt_cte())
            for h in self.hybrids:
                h.candidates = h.candidates.add_cte(self._zt_cte())
        return SegmentQuery(q, self.hybrids, self.dialect)

    def outer_from(self, only: set | None = None):
        """The profiles joined to every source the formula reads (``only``: those named)."""
        p = self.p

        def want(name):
            return only is None or name in only

        frm = p
        if self.ev.columns and want("ev"):
            frm = frm.outerjoin(self._pass_subquery(self.ev), sa.literal_column("ev.profile_id") == p.c.id)
        if self.mg.columns and want("mg"):
            frm = frm.outerjoin(self._pass_subquery(self.mg), sa.literal_column("mg.profile_id") == p.c.id)
        for sub in self.lvs:
            if sub is not None and want(sub.name):
                frm = frm.outerjoin(sub, sub.c.profile_id == p.c.id)
        for first, ct in self.cts.items():
            if want(ct.name):
                frm = frm.outerjoin(ct, sa.and_(ct.c.workspace_id == self.ws, ct.c.profile_id == p.c.id,
                                                ct.c.name == first))  # fmt: skip
        if "outer" in self.zoned and only is None:
            frm = self._zt_join(frm, p.c.state)
        return frm

    def node(self, n: r.Node):
        match n:
            case r.And(children):
                return sa.and_(*(self.node(c) for c in children))
            case r.Or(children):
                return sa.or_(*(self.node(c) for c in children))
            case r.Not(child):
                return sa.not_(self.node(child))
            case r.Trait():
                return self.trait(n)
            case r.Performed(sel, times):
                count = self.ev_column(COUNT, None, lambda: self.selection(sel, window=True), sa.Integer)
                return self.leaf(_count_holds(sa.func.coalesce(count, 0), times))
            case r.Aggregate():
                return self.aggregate(n)
            case r.LastValue():
                return self.last_value(n)
            case r.EventTime():
                return self.event_time(n)
            case r.UsedChannel(channels, group, window):
                chans = tuple(channels or r.CHANNEL_GROUPS[group or ""])
                count = self.ev_column(COUNT, None, lambda: sa.and_(
                    self.activity(), events.c.channel.in_(chans), self.window_pred(window, events.c.timestamp)),
                    sa.Integer)  # fmt: skip
                return self.leaf(sa.func.coalesce(count, 0) >= 1)
            case r.LastChannel(test):
                return self.last_channel(test)
            case r.ChannelCount(test, window):
                count = self.ev_column(DISTINCT, events.c.channel, lambda: sa.and_(
                    self.activity(), events.c.channel.in_(tuple(sorted(ACTIVITY_CHANNELS))),
                    self.window_pred(window, events.c.timestamp)), sa.Integer)  # fmt: skip
                return self.leaf(self.number_test(sa.func.coalesce(count, 0), test))
            case r.ChannelMix(test, window):
                return self.channel_mix(test, window)
            case r.Reachable() | r.Subscribed():
                return self.consent(n)
            case r.Message():
                return self.message(n)
            case r.SegmentRef(segment):
                sm = segment_members
                return sa.exists(sa.select(1).where(sm.c.workspace_id == self.ws, sm.c.segment_id == segment,
                                                    sm.c.profile_id == self.p.c.id))  # fmt: skip
            case r.InList(list_id):
                # an entry keeps the id it was made for: the ids merged into the profile count too, as the engine
                # reads them (segments.load)
                # Two EXISTS, each a keyed probe (the entry by its primary key; the ids merged into her by
                # ix_profile_aliases_profile, then their entry by the primary key). One EXISTS with
                # ``profile_id = p.id OR profile_id IN (merged ids)`` kept both engines from probing: every
                # profile tested walked the list's entries (574 s for one rule at 1M profiles, bench/segments.py)
                lm, pa = list_members, profile_aliases
                own = sa.exists(sa.select(1).where(lm.c.workspace_id == self.ws, lm.c.list_id == list_id,
                                                   lm.c.profile_id == self.p.c.id))  # fmt: skip
                # written as IN (her merged ids): SQLite without statistics (production is never ANALYZEd) plans a
                # join the other way round, walking the list's entries for each profile (review: 21 s against 27 ms)
                # correlated by name: it sits two levels down (IN inside EXISTS), where SQLAlchemy's automatic
                # correlation does not reach, and uncorrelated it put everybody on a list with a merged entry
                ids = (sa.select(pa.c.alias_id).where(pa.c.workspace_id == self.ws, pa.c.profile_id == self.p.c.id)
                       .correlate(self.p))  # fmt: skip
                merged = sa.exists(sa.select(1).where(lm.c.workspace_id == self.ws, lm.c.list_id == list_id,
                                                      lm.c.profile_id.in_(ids)))  # fmt: skip
                return sa.or_(own, merged)
            case r.Bucket(start, end, seed):
                b = self.bucket(self.p.c.id, seed)
                return self.leaf(sa.and_(b >= start, b < end))
        raise TypeError(f"not a rule node: {n!r}")

    # -- traits -----------------------------------------------------------------------------------------------
    def trait(self, n: r.Trait):
        p = self.p
        if n.computed is not None:
            first, *rest = n.computed.split(".")
            ct = self.cts.get(first)
            if ct is None:
                ct = self.cts[first] = computed_traits.alias(f"ct{len(self.cts)}")
            doc = sa.cast(ct.c.value, JSONB) if self.pg else ct.c.value
            value = self.json.lookup(doc, [], rest, first_is_key=False)
            source = ct.name
        else:
            state = sa.cast(p.c.state, JSONB) if self.pg else p.c.state
            value = self.json.lookup(state, ["traits"], n.name.split("."))
            source = None
        return self.value_test(n.test, value, self.now, what=f"trait {n.name}", sources={source} - {None})

    # -- value tests ------------------------------------------------------------------------------------------
    def value_test(self, test: r.Test, x: JVal, now: datetime, *, what: str, sources=frozenset(), event_level=None):
        """``evaluate.check(test, value, now, tz)`` as a NULL-free SQL predicate. ``event_level`` is
        ``(from, where)`` of the events the value belongs to (else it belongs to the profile)."""
        op, arg = test.op, test.arg
        J = self.json
        if op == "equals":
            return self.leaf(J.same(x, arg))
        if op == "not_equals":
            return sa.not_(self.leaf(J.same(x, arg)))
        if op == "in":
            return self.leaf(J.one_of(x, arg))
        if op == "exists":
            present = sa.not_(self.leaf(J.missing(x)))
            return present if arg else sa.not_(present)
        if op == "contains":
            s, needle = J.text(x), sa.literal(arg, sa.Text)
            return self.leaf((sa.func.strpos(s, needle) if self.pg else sa.func.instr(s, needle)) > 0)
        if op == "starts_with":
            return self.leaf(sa.func.substr(J.text(x), 1, len(arg)) == sa.literal(arg, sa.Text))
        if op == "includes":
            return self.leaf(J.includes(x, arg))
        if op in r.NUMBER_OPS:
            return self.leaf(self.number_test(J.number(x), test))
        # dates: text in one of the forms SQL reads, and the rest decided in Python; each form is recognised once.
        # The text of any JSON value will do: a number, true or an object never reads as a date, in SQL or Python
        raw = s = J.any_text(x)
        on_day, on_instant = self.date_test(s, test, now)
        odd = self.dates.odd(raw)
        key = f"h{next(self.n)}"
        if event_level is None:
            ids, zkey = self.p.c.id, zone_key(self.p.c.state, self.dialect)
            frm, where = self.outer_from(set(sources)), [self.p.c.workspace_id == self.ws, self.in_span(self.p.c.id)]
        else:
            ids, zkey = events.c.seq, zone_key(self.pz.c.state, self.dialect)
            frm, where = event_level
            where = [*where, self.in_span(events.c.profile_id)]
        cand = sa.select(ids, raw, zkey).select_from(frm).where(*where, odd)

        def decide(conn, rows, test=test, now=now, default=self.zone_default):
            return {row[0] for row in rows if check(test, row[1], now, zone(row[2], default)).value}

        self.hybrids.append(Hybrid(key, cand, decide, f"dates in other forms ({what})"))
        decided = self.in_ids(ids, key, sa.String if event_level is None else sa.BigInteger)
        return self.leaf(sa.case(
            (s.is_(None), sa.false()),
            (self.dates.day(s), on_day),
            (self.dates.instant_ok(s), on_instant),
            (self.dates.maybe(s), decided),
            else_=sa.false(),
        ))  # fmt: skip

    def number_test(self, num, test: r.Test, n=None):
        op, arg = test.op, test.arg
        if op == "between":
            return sa.and_(self.json.num_cmp(num, "gte", arg[0], n), self.json.num_cmp(num, "lte", arg[1], n))
        return self.json.num_cmp(num, NUM_OPS[op], arg, n)

    # -- dates --------------------------------------------------------------------------------------------------
    def date_test(self, s, test: r.Test, now: datetime):
        """A date test on text ``s`` as two predicates: when ``s`` is a ``YYYY-MM-DD`` (the profile's local day),
        and when it is an instant in ``Z`` (``it``, its fixed-width text)."""
        op, arg = test.op, test.arg
        it = self.dates.instant_text(s)

        def at_most(t_of_zone, strict=False):  # the date's instant <= T (< T when strict)
            d = self.zparam(lambda tz: _last_day(t_of_zone(tz), tz, strict=strict), sa.Text)
            i = self.zparam(lambda tz: _iso(t_of_zone(tz)), sa.Text)
            return _le(self, s, d), (_lt if strict else _le)(self, it, i)

        def at_least(t_of_zone):  # >= T: not < T
            d, i = at_most(t_of_zone, strict=True)
            return sa.not_(d), sa.not_(i)

        def both(*pairs):
            return sa.and_(*(a for a, _ in pairs)), sa.and_(*(b for _, b in pairs))

        def neg(pair):
            return sa.not_(pair[0]), sa.not_(pair[1])

        if op == "since":
            return at_least(lambda tz: instant(arg, tz))
        if op == "before":
            return at_most(lambda tz: instant(arg, tz), strict=True)
        if op == "date_between":
            since, before = arg
            return both(at_least(lambda tz: instant(since, tz)), at_most(lambda tz: instant(before, tz), strict=True))
        if op in r.RELATIVE_DATE_OPS:
            d = arg.delta
            if op == "within_last":  # x <= now < x + d, i.e. now - d < x <= now
                lo = _minus(now, d)
                return both(at_most(lambda tz: now), neg(at_most(lambda tz: lo)) if lo is not None else
                            (sa.true(), sa.true()))  # fmt: skip
            if op == "more_than_ago":  # x + d <= now
                lo = _minus(now, d)
                return at_most(lambda tz: lo) if lo is not None else (sa.false(), sa.false())
            # within_next: x - d <= now < x, i.e. now < x <= now + d
            hi = _plus(now, d)
            return both(neg(at_most(lambda tz: now)), at_most(lambda tz: hi) if hi is not None else
                        (sa.true(), sa.true()))  # fmt: skip
        if op == "anniversary":
            days = self.zparam(lambda tz: _anniversary_set(arg.before, arg.after, now, tz), sa.Text)
            md = sa.literal(",", sa.Text).concat(sa.func.substr(s, 6, 5)).concat(",")
            hit = (sa.func.strpos(days, md) if self.pg else sa.func.instr(days, md)) > 0
            return hit, hit
        raise AssertionError(op)

    # -- windows and selections over events ------------------------------------------------------------------
    def window_pred(self, win: r.Window, ts):
        conds = [ts <= self.lit_ts(self.now)]
        if win.within is not None:
            cut = _minus(self.now, win.within.delta)
            if cut is not None:
                conds.append(ts > self.lit_ts(cut))
        else:
            for bound, lower in ((win.since, True), (win.before, False)):
                if bound is None:
                    continue
                if bound.day is None:
                    t = self.lit_ts(bound.at)
                else:
                    t = self.zparam(lambda tz, b=bound: instant(b, tz), UTCDateTime())
                conds.append(ts >= t if lower else ts < t)
        return sa.and_(*conds)

    def event_name(self, name: str):
        """``Event.name == name``: a track event's name, or the ``name`` of any other type (page, screen; the
        column holds the first 200 characters of a page's name)."""
        e = events.c
        given = self.json.lookup(self.payload(), [], ["name"])
        text = self.json.text(given)
        whole = sa.or_(sa.func.length(e.event) < 200, sa.func.length(text) == 200)
        return sa.or_(
            sa.and_(e.type == "track", e.event == name),
            sa.and_(e.type.in_(PAGE_LIKE), e.event == name, self.leaf(whole)),
            sa.and_(e.type.notin_(("track", *PAGE_LIKE)), self.leaf(text == name)),
        )

    def activity(self):
        """Not Chorus' own record of a message it sent (``context.direction`` is ``outbound``)."""
        d = self.json.lookup(self.payload(), [], ["context", "direction"])
        # the text of any JSON value: only the string "outbound" reads as outbound
        return sa.not_(self.leaf(self.json.any_text(d) == "outbound"))

    def selection(self, sel: r.Selection, *, window: bool, extra=()):
        e = events.c
        conds = []
        if sel.event is not None:
            conds.append(self.event_name(sel.event))
        if sel.type is not None:
            conds.append(e.type == sel.type)
        chans = sel.channels or r.CHANNEL_GROUPS.get(sel.channel_group or "", ())
        if chans:
            conds.append(e.channel.in_(tuple(chans)))
        base = list(conds)
        for f in sel.where:
            x = self.json.lookup(self.payload(), ["properties"], f.property.split("."))
            frm = events.join(self.pz, sa.and_(self.pz.c.workspace_id == e.workspace_id, self.pz.c.id == e.profile_id))
            where = [e.workspace_id == self.ws, e.profile_id.isnot(None), *base]
            conds.append(self.value_test(f.test, x, EARLIEST, what=f"property {f.property}",
                                         event_level=(frm, where)))  # fmt: skip
        if window:
            conds.append(self.window_pred(sel.window, e.timestamp))
            base.append(conds[-1])
        # what the pass's WHERE repeats: names, types, channels and times, not the JSON of the property tests
        self.prefilter = sa.and_(*base, *extra)
        return sa.and_(*conds, *extra)

    # -- the events and messages passes ---------------------------------------------------------------------------
    def ev_column(self, agg, arg, build, type_):
        """``agg(arg)`` over the events pass, for the events where ``build()`` holds (built in the pass's scope)."""
        outer, self.scope = self.scope, "ev"
        self.prefilter = None
        try:
            cond = build()
        finally:
            self.scope = outer
        name = f"a{len(self.ev.columns)}"
        self.ev.columns.append((name, agg, arg, cond))
        self.ev.filters.append(self.prefilter if self.prefilter is not None else cond)
        return sa.literal_column(f"ev.{name}", type_)

    def _events_from(self, scope: str):
        frm = events
        if scope in self.zoned:
            pz = self.pz
            frm = frm.join(pz, sa.and_(pz.c.workspace_id == events.c.workspace_id, pz.c.id == events.c.profile_id))
            frm = self._zt_join(frm, pz.c.state)
        return frm

    @property
    def owners(self):
        """Who a message belongs to now: a profile's own id, and every id merged into it (a message keeps the id it
        was sent to). A plain column to group by: SQLite indexes a LEFT JOINed pass on it, not on an expression."""
        if "_owners" not in self.__dict__:
            pa = profile_aliases
            self._owners = sa.union_all(
                sa.select(profiles.c.id.label("owner"), profiles.c.id.label("sent_to")).where(
                    profiles.c.workspace_id == self.ws, self.in_span(profiles.c.id)),
                sa.select(pa.c.profile_id, pa.c.alias_id).where(pa.c.workspace_id == self.ws,
                                                                self.in_span(pa.c.profile_id)),
            ).subquery("owners")  # fmt: skip
        return self._owners

    def _owner(self):
        return self.owners.c.owner

    def _messages_from(self):
        m, ms = messages, message_status
        frm = self.owners.join(m, sa.and_(m.c.workspace_id == self.ws, m.c.profile_id == self.owners.c.sent_to)).join(
            ms, ms.c.message_id == m.c.id)  # fmt: skip
        if "mg" in self.zoned:
            pz = self.pz
            frm = frm.join(pz, sa.and_(pz.c.workspace_id == self.ws, pz.c.id == self._owner()))
            frm = self._zt_join(frm, pz.c.state)
        return frm

    def _pass_subquery(self, ps: _Pass):
        if ps.alias == "mg":
            group, frm = self._owner(), self._messages_from()
            q = sa.select(group.label("profile_id"), *ps.columns).select_from(frm).where(
                message_status.c.workspace_id == self.ws, sa.or_(*ps.filters))  # fmt: skip
            return q.group_by(group).subquery(ps.alias)
        e = events.c
        where = [e.workspace_id == self.ws, e.profile_id.isnot(None), self.in_span(e.profile_id), sa.or_(*ps.filters)]
        frm = self._events_from("ev")
        if not self.pg:
            # SQLite reads the events in profile order through the timeline index: no sort to feed
            cols = [_aggregate(agg, arg, arg, cond).label(name) for name, agg, arg, cond in ps.columns]
            q = sa.select(e.profile_id.label("profile_id"), *cols).select_from(frm).where(*where)
            return q.group_by(e.profile_id).subquery(ps.alias)
        # PostgreSQL evaluates an aggregate's FILTER after sorting or hashing the rows: each event would carry its
        # whole payload there (and spill to disk). The conditions and arguments are computed first, into narrow
        # rows; OFFSET 0 keeps the planner from pulling them back into the aggregates.
        inner_cols = []
        for name, _agg, arg, cond in ps.columns:
            inner_cols.append(cond.label(f"f_{name}"))
            if arg is not None:
                inner_cols.append(arg.label(f"x_{name}"))
        rows = sa.select(e.profile_id, *inner_cols).select_from(frm).where(*where).offset(0).subquery("evrows")
        cols = [_aggregate(agg, rows.c[f"x_{name}"] if arg is not None else None, arg, rows.c[f"f_{name}"]).label(name)
                for name, agg, arg, cond in ps.columns]  # fmt: skip
        q = sa.select(rows.c.profile_id, *cols).group_by(rows.c.profile_id)
        return q.subquery(ps.alias)

    # -- aggregates --------------------------------------------------------------------------------------------
    def aggregate(self, n: r.Aggregate):
        if n.function == "count":
            count = self.ev_column(COUNT, None, lambda: self.selection(n.selection, window=True), sa.Integer)
            return self.leaf(self.number_test(sa.func.coalesce(count, 0), n.test))
        assert n.property is not None
        x = self.json.lookup(self.payload(), ["properties"], n.property.split("."))

        def numbers():
            return sa.and_(self.selection(n.selection, window=True), self.json.is_number(x))

        k = sa.func.coalesce(self.ev_column(COUNT, None, numbers, sa.Integer), 0)
        if self.pg:
            total = sa.func.coalesce(self.ev_column(sa.func.sum, self.json.number(x), numbers, sa.Numeric), 0)
            test = self.number_test(total, n.test, None if n.function == "sum" else k)
        else:
            # SQLite has no exact decimal: the store's decimal_sum adds the numbers as the decimals they are
            # written as, and decimal_cmp compares (decision 0025)
            total = sa.func.coalesce(self.ev_column(sa.func.decimal_sum, self.json.number(x), numbers, sa.Text), "0")
            test = self._decimal_test(total, n.test, 1 if n.function == "sum" else k)
        return self.leaf(test if n.function == "sum" else sa.and_(k > 0, test))

    def _decimal_test(self, total, test: r.Test, n):
        op, arg = test.op, test.arg

        def cmp(o, a):
            return _op(sa.func.decimal_cmp(total, sa.literal(a), n), o, 0)

        if op == "between":
            return sa.and_(cmp("gte", arg[0]), cmp("lte", arg[1]))
        return cmp(NUM_OPS[op], arg)

    def event_time(self, n: r.EventTime):
        ts = events.c.timestamp
        if n.which == "first":
            first = self.ev_column(sa.func.min, ts, lambda: self.selection(n.selection, window=False), UTCDateTime())
            value = sa.case((first <= self.lit_ts(self.now), first))
        else:
            value = self.ev_column(sa.func.max, ts, lambda: self.selection(
                n.selection, window=False, extra=[ts <= self.lit_ts(self.now)]), UTCDateTime())  # fmt: skip
        return self.leaf(self.time_test(value, n.test))

    def time_test(self, at, test: r.Test):
        """A PAST_TESTS test of an instant (NULL: none)."""
        op, arg = test.op, test.arg
        if op == "exists":
            return at.isnot(None) if arg else at.is_(None)

        def bound(v):
            return self.lit_ts(v.at) if v.day is None else self.zparam(lambda tz: instant(v, tz), UTCDateTime())

        if op == "since":
            return at >= bound(arg)
        if op == "before":
            return at < bound(arg)
        if op == "date_between":
            return sa.and_(at >= bound(arg[0]), at < bound(arg[1]))
        lo = _minus(self.now, arg.delta)
        if op == "within_last":
            return sa.and_(at <= self.lit_ts(self.now), at > self.lit_ts(lo) if lo is not None else sa.true())
        if op == "more_than_ago":
            return at <= self.lit_ts(lo) if lo is not None else sa.false()
        raise AssertionError(op)

    # -- last value ----------------------------------------------------------------------------------------------
    def last_value(self, n: r.LastValue):
        if not self.pg:
            return self._last_value_by_key(n)
        name = f"lv{len(self.lvs)}"
        e = events.c
        x = self.json.lookup(self.payload(), ["properties"], n.property.split("."))
        outer, self.scope = self.scope, name
        try:
            cond = self.selection(n.selection, window=True, extra=[sa.not_(self.leaf(self.json.missing(x)))])
        finally:
            self.scope = outer
        order = e.message_id.collate("C") if self.pg else e.message_id
        rn = sa.func.row_number().over(partition_by=e.profile_id, order_by=(e.timestamp.desc(), order.desc()))
        cols = [x.j.label("j")] if self.pg else [x.t.label("t"), x.v.label("v")]
        inner = (
            sa.select(e.profile_id, *cols, rn.label("rn"))
            .select_from(self._events_from(name))
            .where(e.workspace_id == self.ws, e.profile_id.isnot(None), self.in_span(e.profile_id), cond)
            .subquery(f"{name}_all")
        )
        picked = [inner.c.j] if self.pg else [inner.c.t, inner.c.v]
        sub = sa.select(inner.c.profile_id, *picked).where(inner.c.rn == 1).subquery(name)
        self.lvs.append(sub)
        value = JVal(j=sub.c.j) if self.pg else JVal(t=sub.c.t, v=sub.c.v)
        return self.value_test(n.test, value, self.now, what=f"last value of {n.property}", sources={name})

    def _last_value_by_key(self, n: r.LastValue):
        """SQLite: the newest event is the greatest fixed-width time followed by its message id (ids are unique in
        a workspace), an aggregate of the events pass; its value is then read by that id (an index probe). SQLite
        would scan a window-function subquery once per profile in a LEFT JOIN."""
        e = events.c
        parts = n.property.split(".")
        x = self.json.lookup(self.payload(), ["properties"], parts)
        newest = self.ev_column(sa.func.max, sa.cast(e.timestamp, sa.Text).concat(e.message_id), lambda: self.selection(
            n.selection, window=True, extra=[sa.not_(self.leaf(self.json.missing(x)))]), sa.Text)  # fmt: skip
        e2 = events.alias(f"lv{len(self.lvs)}")
        self.lvs.append(None)
        at = self.json.lookup(e2.c.payload, ["properties"], parts)
        probe = [e2.c.workspace_id == self.ws, e2.c.message_id == sa.func.substr(newest, 27)]
        value = JVal(t=sa.select(at.t).where(*probe).scalar_subquery(),
                     v=sa.select(at.v).where(*probe).scalar_subquery())  # fmt: skip
        return self.value_test(n.test, value, self.now, what=f"last value of {n.property}", sources={"ev"})

    # -- channels ------------------------------------------------------------------------------------------------
    def last_channel(self, test: r.Test):
        """The channel of the newest activity at or before now; at the same instant the greatest name: the
        maximum of the fixed-width time followed by the channel."""
        ts = events.c.timestamp
        stamp = sa.func.to_char(ts, "YYYY-MM-DD HH24:MI:SS.US") if self.pg else sa.cast(ts, sa.Text)
        keyed = stamp.concat(events.c.channel)
        if self.pg:
            keyed = keyed.collate("C")
        newest = self.ev_column(sa.func.max, keyed, lambda: sa.and_(self.activity(), ts <= self.lit_ts(self.now)),
                                sa.Text)  # fmt: skip
        channel = sa.func.substr(newest, 27)
        op, arg = test.op, test.arg
        if op == "exists":
            return newest.isnot(None) if arg else newest.is_(None)
        if op == "equals":
            return self.leaf(channel == arg)
        if op == "not_equals":
            return sa.not_(self.leaf(channel == arg))
        return self.leaf(channel.in_(tuple(arg)))

    def channel_mix(self, test: r.Test, window: r.Window):
        def group(chans):
            return lambda: sa.and_(self.activity(), events.c.channel.in_(chans),
                                   self.window_pred(window, events.c.timestamp))  # fmt: skip

        online = sa.func.coalesce(self.ev_column(COUNT, None, group(r.ONLINE), sa.Integer), 0) > 0
        offline = sa.func.coalesce(self.ev_column(COUNT, None, group(r.OFFLINE), sa.Integer), 0) > 0
        # the four mixes tested here once, with the evaluator's own test
        ok = [m for m in r.MIXES if check(test, m, self.now, UTC_ZONE).value]
        cases = {"both": sa.and_(online, offline), "online": sa.and_(online, sa.not_(offline)),
                 "offline": sa.and_(offline, sa.not_(online)), "unknown": sa.and_(sa.not_(online), sa.not_(offline))}
        return self.leaf(sa.or_(sa.false(), *(cases[m] for m in ok)))

    # -- messages ------------------------------------------------------------------------------------------------
    def message(self, n: r.Message):
        m, ms = messages.c, message_status.c
        statuses = sorted({s for name in n.statuses for s in (r.RECEIVED if name == "received" else (name,))})
        conds = [ms.status.in_(statuses)]
        cols = {"message_id": m.id, "template": m.template, "journey_id": m.journey_id,
                "campaign_id": m.campaign_id, "channel": m.channel, "topic": m.topic}  # fmt: skip
        for key, attr in MESSAGE_FILTERS:
            values = getattr(n, key)
            if values:
                conds.append(cols[attr].in_(tuple(values)))
        outer, self.scope = self.scope, "mg"
        try:
            conds.append(self.window_pred(n.window, ms.at))
        finally:
            self.scope = outer
        cond = sa.and_(*conds)
        name = f"m{len(self.mg.columns)}"
        self.mg.columns.append(sa.func.count(sa.distinct(m.id)).filter(cond).label(name))
        self.mg.filters.append(cond)
        count = sa.func.coalesce(sa.literal_column(f"mg.{name}", sa.Integer), 0)
        return self.leaf(_count_holds(count, n.times))

    # -- consent: the messaging policy's own rule, in Python --------------------------------------------------------
    def consent(self, n: r.Reachable | r.Subscribed):
        p, topics = self.p, self.topics
        has_consent = self._has_consent(p.c.state)
        if isinstance(n, r.Reachable):
            always = bool(addresses_for({"id": "-", "addresses": {}}, n.channel))  # the inbox, webhooks
            has_address = sa.true() if always else self._has_address(p.c.id, n.channel)
            blank = Person("-", state=empty(), addresses={} if always else {n.channel: ("-",)})
        else:
            has_address = sa.true()
            blank = Person("-", state=empty())
        # one answer for everybody with an address (when one is needed) and no consent recorded: the evaluator's
        blank_answer = evaluate(n, blank, self.now, topics=topics).value
        key = f"h{next(self.n)}"
        cand = sa.select(p.c.id, p.c.state).where(p.c.workspace_id == self.ws, self.in_span(p.c.id), has_address,
                                                  has_consent)  # fmt: skip
        identity, ws, now = self.identity, self.ws, self.now

        def decide(conn, rows, n=n):
            from chorus.profiles.views import addresses_of

            addrs = addresses_of(conn, ws, [row[0] for row in rows], identity) if isinstance(n, r.Reachable) else {}
            out = set()
            for pid, state in rows:
                who = Person(pid, state=state, addresses={ch: tuple(a) for ch, a in addrs.get(pid, {}).items()})
                if evaluate(n, who, now, topics=topics).value:
                    out.add(pid)
            return out

        what = f"{'reachable' if isinstance(n, r.Reachable) else 'subscribed'} {n.channel}"
        self.hybrids.append(Hybrid(key, cand, decide, what))
        decided = self.in_ids(p.c.id, key)
        return self.leaf(sa.and_(has_address, sa.case((has_consent, decided), else_=sa.true() if blank_answer
                                                      else sa.false())))  # fmt: skip

    def _has_consent(self, state):
        if self.pg:
            c = sa.cast(state, JSONB).op("->", return_type=JSONB)(_pg_text("consent"))
            return self.leaf(sa.and_(sa.func.jsonb_typeof(c) == "object", c != sa.cast(sa.literal("{}"), JSONB)))
        each = sa.func.json_each(state, "$.consent").table_valued("key").alias("cs")
        return sa.exists(sa.select(1).select_from(each))

    def _has_address(self, pid, channel: str):
        """An identifier of a kind whose values are addresses of the channel (as ``views.addresses_of``)."""
        kinds = [k for k in dict.fromkeys(["email", "phone", *sorted(self.identity.declared)])
                 if channel in self.identity.address_channels(k)]  # fmt: skip
        if not kinds:
            return sa.false()
        i = identifiers.c
        prefix = sa.or_(*(sa.func.substr(i.ident, 1, len(k) + 1) == f"{k}:" for k in kinds))
        return sa.exists(sa.select(1).where(i.workspace_id == self.ws, i.profile_id == pid, prefix))

    # -- buckets ---------------------------------------------------------------------------------------------------
    def bucket(self, pid, seed: str | None):
        """``evaluate.bucket``: the first 4 bytes of SHA-256 of ``seed:id``, big-endian, modulo 100."""
        key = pid if seed is None else sa.literal(f"{seed}:", sa.Text).concat(pid)
        if self.pg:
            digest = sa.func.sha256(sa.func.convert_to(key, "UTF8"))
            head = sa.literal("x", sa.Text).concat(sa.func.substr(sa.func.encode(digest, "hex"), 1, 8))
            return sa.cast(sa.cast(head, BIT(32)), sa.BigInteger) % 100
        # SQLite: sha256 is registered on every connection (store.db); the hex digits are read one by one
        head = sa.func.hex(sa.func.substr(sa.func.sha256(key), 1, 4))
        hx = sa.select(head.label("h")).correlate(self.p).subquery("hx")
        total = None
        for i in range(8):
            digit = (sa.func.instr("0123456789ABCDEF", sa.func.substr(hx.c.h, i + 1, 1)) - 1) * (16 ** (7 - i))
            total = digit if total is None else total + digit
        return sa.select(total % 100).select_from(hx).scalar_subquery()


COUNT, DISTINCT = "count", "distinct"


def _aggregate(agg, value, arg, cond):
    """``agg`` of ``value`` filtered by ``cond`` (``COUNT``: rows; ``DISTINCT``: distinct values)."""
    if agg == COUNT:
        return sa.func.count().filter(cond)
    if agg == DISTINCT:
        return sa.func.count(sa.distinct(value)).filter(cond)
    return agg(value).filter(cond)


def _count_holds(count, times: r.Count):
    return count == times.n if times.op == "eq" else count >= times.n if times.op == "gte" else count <= times.n


def _ge(c: _Compiler, a, b):
    a, b = c.text_cmp(a, b)
    return a >= b


def _gt(c: _Compiler, a, b):
    a, b = c.text_cmp(a, b)
    return a > b


def _le(c: _Compiler, a, b):
    a, b = c.text_cmp(a, b)
    return a <= b


def _lt(c: _Compiler, a, b):
    a, b = c.text_cmp(a, b)
    return a < b


@lru_cache(maxsize=4096)  # a rule may test many traits with one span; a batch compiles it again for each chunk
def _anniversary_set(before: int, after: int, now: datetime, tz) -> str:
    """The month-days (``,MM-DD,``) whose anniversary holds at ``now`` in ``tz``: the evaluator's own answer
    (``times.anniversary_holds``) for each day that can hold: those whose anniversary this year, last or next is
    within the span of today's local date, a few days either side (it reads only the month and the day)."""
    today = _local_date(now, tz)
    if today is None:
        return ","
    days = set()
    for k in range(-after - 3, before + 4):
        try:
            days.add((today + timedelta(days=k)).replace(year=2000))
        except (OverflowError, ValueError):
            continue
    days.update((date(2000, 2, 28), date(2000, 2, 29), date(2000, 3, 1)))  # 29 February falls on the 28th
    hits = sorted(d.strftime("%m-%d") for d in days if anniversary_holds(d, before, after, now, tz, today))
    return "," + ",".join(hits) + ","
