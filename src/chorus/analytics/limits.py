"""The bounds of the analytics reports' numeric parameters: one definition for the CLI (``chorus attribution``,
``chorus clv``, ``chorus report ...``, ``chorus lake export``) and the admin API (/api/analytics/*).

A value outside them either means nothing (a negative penalty, a 0-month horizon) or costs without limit (a
billion bootstrap replicates fill memory; a horizon of 10^20 months overflows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta

from chorus.errors import ChorusError


@dataclass(frozen=True)
class Bound:
    """``low`` ≤ value ≤ ``high`` (``<`` where ``low_open``/``high_open``); ``whole`` for a count."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    whole: bool = False

    def query(self) -> dict:
        """The bound as keyword arguments of FastAPI's ``Query`` (or pydantic's ``Field``)."""
        return {"gt" if self.low_open else "ge": self.low, "lt" if self.high_open else "le": self.high}

    def words(self) -> str:
        low, high = _num(self.low), _num(self.high)
        if self.low_open and self.high_open:
            return f"between {low} and {high}, both excluded"
        if self.low_open:
            return f"above {low} and at most {high}"
        if self.high_open:
            return f"at least {low} and below {high}"
        return f"between {low} and {high}"

    def check(self, value: float, field: str) -> float:
        """``value`` if it is within the bound (finite, and whole for a count), else a 400 naming ``field``."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ChorusError(f"{field} must be a finite number {self.words()}", field=field)
        if self.whole and value != int(value):
            raise ChorusError(f"{field} must be a whole number", field=field)
        low_ok = value > self.low if self.low_open else value >= self.low
        high_ok = value < self.high if self.high_open else value <= self.high
        if not (low_ok and high_ok):
            raise ChorusError(f"{field} must be {self.words()}", field=field)
        return value


def days(bound: Bound, value: float, field: str) -> timedelta:
    """A number of days within ``bound`` as a duration of at least a second (1e-320 days is no time at all)."""
    bound.check(value, field)
    if timedelta(days=value) < timedelta(seconds=1):
        raise ChorusError(f"{field} must be at least one second (0.0000116 days)", field=field)
    return timedelta(days=value)


def _num(value: float) -> str:
    return f"{int(value):,}".replace(",", "") if value == int(value) else f"{value:g}"


MARKOV_ORDER = Bound(1, 3, whole=True)
HALF_LIFE_DAYS = Bound(0, 3660, low_open=True)
WINDOW_DAYS = Bound(0, 3660, low_open=True)
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
