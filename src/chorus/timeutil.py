"""UTC time helpers and the clock that every component takes (tests and simulations pass a virtual one)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def parse_ts(value) -> datetime:
    """ISO-8601 (with Z or offset; naive = UTC) or epoch seconds/milliseconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, int | float):
        secs = value / 1000 if value > 1e11 else value
        return datetime.fromtimestamp(secs, UTC)
    if not isinstance(value, str) or not value:
        raise ValueError("not a timestamp")
    text = value.strip()
    if text.endswith("Z") or text.endswith("z"):
        text = text[:-1] + "+00:00"
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def iso(dt: datetime) -> str:
    """Fixed-width UTC ISO string: sorts as text in the same order as the instants."""
    # isoformat with a fixed timespec is C code and always prints the microseconds (strftime is 5x slower). An
    # instant already in UTC (nearly all: the store and utcnow give them) prints as it is, less its "+00:00"
    # (years are always 4 digits, so the first 26 characters are the date and time)
    if dt.tzinfo is UTC:
        return dt.isoformat(timespec="microseconds")[:26] + "Z"
    return dt.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
