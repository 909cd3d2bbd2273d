"""The bounds of the analytics reports' numeric parameters: one definition for the CLI (``chorus attribution``,
``chorus clv``, ``chorus report ...``, ``chorus lake export``) and the admin API (/api/analytics/*).

A value outside them either means nothing (a negative penalty, a 0-month horizon) or costs without limit (a
billion bootstrap replicates fill memory; a horizon of 10^20 months overflows).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, timedelta

from chorus.errors import ChorusError


@dataclass(frozen=True)
class Bound:
    """``low`` ≤ value ≤ ``high`` (``<`` where ``low_open``/``high_open``); ``whole`` for a count."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    whole: bool = False
    low_words: str | None = None  # the low end in words ("one second (0.0000116 days)") where its digits say little

    def query(self) -> dict:
        """The bound as keyword arguments of FastAPI's ``Query`` (or pydantic's ``Field``)."""
        return {"gt" if self.low_open else "ge": self.low, "lt" if self.high_open else "le": self.high}

    def schema(self) -> dict:
        """The bound as JSON Schema keywords only, for a parameter our own code checks (with :meth:`check`'s words
        rather than the generic ``must be at least 1.1574074074074073e-05``): pass it as ``json_schema_extra``."""
        return {"exclusiveMinimum" if self.low_open else "minimum": self.low,
                "exclusiveMaximum" if self.high_open else "maximum": self.high}  # fmt: skip

    def words(self) -> str:
        low, high = _num(self.low), _num(self.high)
        if self.low_words:
            return f"at least {self.low_words} and {'below' if self.high_open else 'at most'} {high}"
        if self.low_open and self.high_open:
            return f"between {low} and {high}, both excluded"
        if self.low_open:
            return f"above {low} and at most {high}"
        if self.high_open:
            return f"at least {low} and below {high}"
        return f"between {low} and {high}"

    def check(self, value: float, field: str, where: str = "") -> float:
        """``value`` if it is within the bound (finite, and whole for a count), else a 400 naming ``field``;
        ``where`` follows the field's name in the message (the API's `` (query parameter)``)."""
        name = field + where
        if isinstance(value, float) and not math.isfinite(value):
            raise ChorusError(f"{name} must be a finite number {self.words()}", field=field)
        if self.whole and value != int(value):
            raise ChorusError(f"{name} must be a whole number", field=field)
        low_ok = value > self.low if self.low_open else value >= self.low
        high_ok = value < self.high if self.high_open else value <= self.high
        if not (low_ok and high_ok):
            raise ChorusError(f"{name} must be {self.words()}", field=field)
        return value


def days(bound: Bound, value: float, field: str, where: str = "") -> timedelta:
    """A number of days within ``bound`` as a duration (its low end is a second: 1e-320 days is no time at all)."""
    bound.check(value, field, where)
    if timedelta(days=value) < timedelta(seconds=1):  # a bound made without SECOND_DAYS
        raise ChorusError(f"{field}{where} must be at least one second (0.0000116 days)", field=field)
    return timedelta(days=value)


# Days of the reports' periods (``since``, ``until``, ``end``; ``--since``...): reports reach back from ``since`` by
# the lookback window and forward from ``until`` by a day, and dates near year 1 or 9999 overflow Python's date
# arithmetic. Nobody's data is from before 1000 or after 9000.
DATE_MIN, DATE_MAX = date(1000, 1, 1), date(9000, 12, 31)
# the documented format only: YYYY-MM-DD in ASCII digits. date.fromisoformat alone also takes 20261207, and
# pydantic's lax dates take epoch seconds (0, 86400) and date-times at midnight, which the CLI never did
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


def day(value: str | None, field: str, where: str = "") -> date | None:
    """``value`` (YYYY-MM-DD) as a date between DATE_MIN and DATE_MAX, else a 400 naming ``field``: the one parse
    of the API's ``since``/``until``/``end`` and the CLI's ``--since``/``--until``/``--end``. ``where`` follows the
    field's name in the message (the API's `` (query parameter)``)."""
    if value is None:
        return None
    parsed = None
    if isinstance(value, str) and _DAY.fullmatch(value):
        try:
            parsed = date.fromisoformat(value)
        except ValueError:
            parsed = None  # 2026-02-30
    if parsed is None:
        shown = value if len(value) <= 40 else value[:20] + "…" + value[-10:]
        raise ChorusError(f"{field}{where} {shown!r} is not a date (YYYY-MM-DD)", field=field)
    if not DATE_MIN <= parsed <= DATE_MAX:
        raise ChorusError(f"{field}{where} must be between {DATE_MIN} and {DATE_MAX}", field=field)
    return parsed


def _num(value: float) -> str:
    return f"{int(value):,}".replace(",", "") if value == int(value) else f"{value:g}"


MARKOV_ORDER = Bound(1, 3, whole=True)
# a number of days is at least a second (1e-320 days is no time at all): the bound /openapi.json states, checked
# with these words by the API and the CLI alike
SECOND_DAYS = 1 / 86_400
HALF_LIFE_DAYS = Bound(SECOND_DAYS, 3660, low_words="one second (0.0000116 days)")
WINDOW_DAYS = Bound(SECOND_DAYS, 3660, low_words="one second (0.0000116 days)")
CLV_MONTHS = Bound(1, 120, whole=True)
DISCOUNT_RATE = Bound(0, 1, high_open=True)
UNIT_DAYS = Bound(1, 366)  # purchases are counted by day: a smaller unit adds nothing, and near 0 the fit breaks
PENALIZER = Bound(0, 10)
CLV_LIMIT = Bound(0, 10_000, whole=True)
PATHS_TOP = Bound(1, 1000, whole=True)
# z = inv_cdf(0.5 + c/2) needs 0.5 + c/2 < 1 in floating point: six nines at most (omnichannel.CONFIDENCE_MAX)
CONFIDENCE = Bound(0, 0.999999, low_open=True)
BOOTSTRAP = Bound(100, 20_000, whole=True)
# `chorus lake export --settle`: a transaction open longer than a day is not one to wait for
SETTLE_SECONDS = Bound(0, 86_400)

# The largest order (or refund) value a report adds up, in the currency's main unit: 10^15 is beyond any real order
# in any currency (a trillion dollars in rials), and below 2^53, so whole amounts are exact. The tracking API takes
# any finite number, and two orders of 1.7e308 (anybody holding the public write key can send them) add up to
# infinity: a value above it counts as 0 in every sum, as a negative one does, and the report says so.
MAX_ORDER_VALUE = 1e15
