"""Time in segment rules: durations, dates, the profile's time zone, and the tests on one instant.

Plain functions, no I/O. Two kinds of time appear in rules, and they are kept apart on purpose:

* **Durations** (``30m``, ``12h``, ``7d``, ``2w``) are exact lengths of time: a day is 24 hours, whatever the
  clocks do. Rolling windows ("in the last 7 days") are therefore the same for everybody and need no time zone,
  so a compiler binds one cut-off for all profiles (decision 0023).
* **Calendar dates** are the profile's: a date without a time (``"2024-01-01"``, a birthday ``"1990-05-17"``)
  means the first instant of that day in the profile's time zone (profile attribute ``timezone``, an IANA name;
  UTC when absent or unknown), and anniversaries count local calendar days. A date-time with ``Z`` or an offset is
  an instant; a naive one is UTC, as everywhere in Chorus (:func:`chorus.timeutil.parse_ts`).

Every test here is a function of ``now`` that is constant on half-open intervals ``[a, b)``, and returns the
exact next instant after ``now`` at which its answer changes (see :class:`Result`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from chorus.timeutil import UTC_ZONE, parse_ts, zone  # noqa: F401 (zone: this module's users import it from here)

# Sentinels for "before everything" and "never": arithmetic that would leave datetime's range lands on them, so
# a date in year 9999 plus a window is "never" instead of an OverflowError (a 500) on somebody's data.
EARLIEST = datetime.min.replace(tzinfo=UTC)
NEVER = datetime.max.replace(tzinfo=UTC)

UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
UNIT_NAMES = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_DURATION = timedelta(days=3660)  # ten years: a longer window is "ever"
_DURATION = re.compile(r"([1-9][0-9]{0,6})([mhdw])")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
MAX_ANNIVERSARY_DAYS = 180  # a wider span would overlap the next year's occurrence (always true)


class Result(NamedTuple):
    """A condition's answer at ``now`` and the exact next instant after ``now`` when time alone changes it
    (None: time alone never does). The answer is constant on ``[now, next_change)``."""

    value: bool
    next_change: datetime | None


@dataclass(frozen=True, slots=True)
class Duration:
    """An exact length of time as the rule wrote it (kept as written, so a rule round-trips unchanged)."""

    amount: int
    unit: str  # m, h, d, w

    @property
    def delta(self) -> timedelta:
        return self.amount * UNITS[self.unit]

    def text(self) -> str:
        return f"{self.amount}{self.unit}"


def _given(value: object) -> str:
    """``value`` as a person wrote it in JSON or YAML (null, true, "7 days"), never a Python repr, and never a
    long text echoed whole."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else ("true" if value else "false")
    if isinstance(value, int | float):
        return f"the number {value}" if len(str(value)) <= 20 else "a number"
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 40 else "the text given"
    return "a list" if isinstance(value, list) else "an object" if isinstance(value, dict) else "the value given"


def parse_duration(value: object) -> Duration:
    """``"7d"`` → Duration(7, "d"). Raises ValueError with the reason in the user's terms."""
    m = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        raise ValueError(
            f"{_given(value)} is not a duration: write a whole number and a unit, m (minutes), h (hours), d (days) or "
            "w (weeks), e.g. 7d"
        )
    d = Duration(int(m.group(1)), m.group(2))
    if d.delta > MAX_DURATION:
        raise ValueError(f"{_given(value)} is longer than ten years (3660d); leave the window out to mean ever")
    return d


@dataclass(frozen=True, slots=True)
class DateValue:
    """A date as a rule wrote it: ``day`` for a calendar date (local to each profile), else ``at`` (an instant)."""

    text: str
    day: date | None = None
    at: datetime | None = None


def parse_date(value: object) -> DateValue:
    """A calendar date ``YYYY-MM-DD`` or an ISO-8601 date-time. Raises ValueError with the reason."""
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            return DateValue(value, day=date.fromisoformat(value))
        except ValueError:
            raise ValueError(f"{_given(value)} is not a date (no such day)") from None
    if isinstance(value, str) and len(value) <= 64 and "T" in value.upper():
        try:
            return DateValue(value, at=parse_ts(value))
        except (ValueError, OverflowError):
            pass
    raise ValueError(
        f"{_given(value)} is not a date: write YYYY-MM-DD (a day in the profile's time zone) or an ISO-8601 date-time "
        "such as 2024-01-01T09:00:00Z"
    )


def plus(t: datetime, d: timedelta) -> datetime:
    """``t + d`` saturated at the sentinels (a window after year 9999 never ends)."""
    try:
        return t + d
    except OverflowError:
        return NEVER if d > timedelta(0) else EARLIEST


def _local_date(t: datetime, tz: ZoneInfo) -> date:
    try:
        return t.astimezone(tz).date()
    except OverflowError:
        return date.max if t > datetime(5000, 1, 1, tzinfo=UTC) else date.min


@lru_cache(maxsize=65536)  # pure; a compile asks it for the same days of each zone many times (one rule, many nodes)
def day_start(d: date, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) whose local date in ``tz`` is ``d`` or later.

    Usually local midnight; where midnight does not exist (a DST jump at midnight, as Brazil and Chile had) it is
    the instant of the jump, and for a day a zone skipped entirely (Pacific/Apia, 30 December 2011) it is the start
    of the next day. Where midnight happens twice (clocks back at midnight), the first one.
    """
    try:
        cands = [datetime.combine(d, time(0), tzinfo=tz).replace(fold=f).astimezone(UTC) for f in (0, 1)]
    except OverflowError:
        return EARLIEST if d.year < 5000 else NEVER
    exact = [u for u in cands if _round_trips(u, d, tz)]
    if exact:
        return min(exact)
    # midnight is in a gap: find the jump, to the microsecond (transitions fall on whole seconds anyway)
    lo, hi = min(cands) - timedelta(days=1), max(cands) + timedelta(days=1)
    a, b = 0, (hi - lo) // timedelta(microseconds=1)  # invariant: local date at lo + b µs >= d, at lo + a µs < d
    while b - a > 1:
        mid = (a + b) // 2
        if _local_date(lo + timedelta(microseconds=mid), tz) >= d:
            b = mid
        else:
            a = mid
    return lo + timedelta(microseconds=b)


def _round_trips(u: datetime, d: date, tz: ZoneInfo) -> bool:
    try:
        local = u.astimezone(tz)
    except OverflowError:
        return False
    return local.date() == d and local.time() == time(0)


def instant(v: DateValue, tz: ZoneInfo) -> datetime:
    """Where a rule's date falls for a profile in ``tz``."""
    if v.at is not None:
        return v.at
    assert v.day is not None
    return day_start(v.day, tz)


def value_instant(value: object, tz: ZoneInfo) -> tuple[datetime, date] | None:
    """A trait or property value read as a date: (instant, calendar date), or None when it is not one.

    Only strings are dates (a number could be anything). ``YYYY-MM-DD`` is the local day; a date-time is an instant
    whose calendar date is taken in UTC (a birthday exported as midnight UTC stays on its day everywhere)."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        v = parse_date(value)
    except ValueError:
        return None
    if v.day is not None:
        return day_start(v.day, tz), v.day
    assert v.at is not None
    return v.at, v.at.date()


# -- tests on one instant --------------------------------------------------------------------------------------
def _inside(now: datetime, start: datetime, end: datetime) -> Result:
    """``start <= now < end`` and when that changes (the interval is fixed)."""
    if now < start:
        return Result(False, start if start < end else None)
    if now < end:
        return Result(True, end if end < NEVER else None)
    return Result(False, None)


def relative(op: str, d: timedelta, x: datetime, now: datetime) -> Result:
    """``within_last`` (x in (now − d, now]), ``more_than_ago`` (x <= now − d), ``within_next`` (x in (now, now + d]).

    Written as intervals of ``now`` so that each is constant on ``[a, b)``: within_last is now in [x, x + d),
    more_than_ago is now in [x + d, ∞), within_next is now in [x − d, x)."""
    if op == "within_last":
        return _inside(now, x, plus(x, d))
    if op == "more_than_ago":
        return _inside(now, plus(x, d), NEVER)
    if op == "within_next":
        return _inside(now, plus(x, -d), x)
    raise ValueError(op)


def occurrence(month: int, day: int, year: int) -> date | None:
    """The anniversary of (month, day) in ``year``; 29 February is kept on the 28th in other years."""
    if not 1 <= year <= 9999:
        return None
    if month == 2 and day == 29:
        try:
            return date(year, 2, 29)
        except ValueError:
            return date(year, 2, 28)
    return date(year, month, day)


# No zone's local date moves by more than a day at once (the largest jumps, Alaska in 1867 and the islands that
# crossed the date line, are 24 hours): a day at least this far from today's local date starts on the side of
# ``now`` its date says, without asking the zone.
_SURE_DAYS = 3


def _starts_by(d: date, today: date, now: datetime, tz: ZoneInfo) -> bool:
    """``day_start(d, tz) <= now`` where ``today`` is now's local date, working out the instant only near today."""
    gap = (d - today).days
    if gap <= -_SURE_DAYS:
        return True
    if gap >= _SURE_DAYS:
        return False
    return day_start(d, tz) <= now


def _span_days(day: date, before: int, after: int, today: date):
    """(first day, day after the last) of the spans around the anniversaries of ``day`` last year, this year and
    next (local years of ``today``)."""
    for year in (today.year - 1, today.year, today.year + 1):
        a = occurrence(day.month, day.day, year)
        if a is None:
            continue
        try:
            yield a - timedelta(days=before), a + timedelta(days=after + 1)
        except OverflowError:
            continue


def anniversary_holds(day: date, before: int, after: int, now: datetime, tz: ZoneInfo,
                      today: date | None = None) -> bool:  # fmt: skip
    """``anniversary(...).value`` without the instant of the next change: the spans' ends are compared with now by
    their dates, and worked out in the zone only within a few days of today (a compiler asks this for every
    month-day near today, in every zone present). ``today``: now's local date in ``tz``, if known."""
    if today is None:
        today = _local_date(now, tz)
    for first, last in _span_days(day, before, after, today):
        # start <= now < end (an empty span, a day the zone skipped, holds nothing: then end <= start <= now)
        if _starts_by(first, today, now, tz) and not _starts_by(last, today, now, tz):
            return True
    return False


def anniversary(day: date, before: int, after: int, now: datetime, tz: ZoneInfo) -> Result:
    """Is today (local) within ``before`` days before to ``after`` days after an anniversary of ``day``?

    ``{"next_days": 3}`` is (3, 0): the anniversary is today or on one of the next 3 local days; ``{"last_days":
    7}`` is (0, 7). True from the local start of (anniversary − before) until the local start of
    (anniversary + after + 1 day); those instants are where the answer changes.
    """
    today = _local_date(now, tz)
    spans = []
    for first, last in _span_days(day, before, after, today):
        start, end = day_start(first, tz), day_start(last, tz)
        if start < end:  # a day the zone skipped can make it empty
            spans.append((start, end))
    upcoming = None
    for start, end in spans:  # disjoint: at most 181 days each, a year apart
        if start <= now < end:
            return Result(True, end if end < NEVER else None)
        if now < start and (upcoming is None or start < upcoming):
            upcoming = start
    return Result(False, upcoming if upcoming is not None and upcoming < NEVER else None)
