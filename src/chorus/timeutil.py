"""UTC time helpers and the clock that every component takes (tests and simulations pass a virtual one)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Clock = Callable[[], datetime]

# The process-wide clock, when one is in use (``use_clock``). About 24 modules import ``utcnow`` as a name and
# call it directly (and several take ``clock=utcnow`` as a default argument, bound at import), so the override
# has to live inside ``utcnow`` itself: replacing the module attribute would miss every one of them. It is a
# plain global, not a context variable, on purpose: the demo runs the HTTP server in a uvicorn thread and
# delivery in a thread pool, and all of them must see the same virtual time.
_override: Clock | None = None


def utcnow() -> datetime:
    clock = _override  # one read of the global: the default path stays a single comparison
    if clock is None:
        return datetime.now(UTC)
    return clock()


@contextmanager
def use_clock(clock: Clock) -> Iterator[None]:
    """Make ``utcnow()`` answer ``clock()`` in the whole process until the block ends (``chorus demo`` runs the
    real system on virtual time this way). Not nestable: two virtual clocks in one process would be a bug in
    the caller, so the second is refused rather than silently shadowing the first."""
    global _override
    if _override is not None:
        raise RuntimeError("a clock is already in use in this process")
    _override = clock
    try:
        yield
    finally:
        _override = None


_EPOCH_TEXT = re.compile(r"[0-9]{9,13}(\.[0-9]{1,6})?", re.ASCII)


def parse_ts(value) -> datetime:
    """ISO-8601 (with Z or offset; naive = UTC) or epoch seconds/milliseconds, as a number or as a string of 9 to 13
    digits (CSV files and some SDKs quote them; no ISO-8601 form is 9 or more digits alone). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("not a timestamp")
    if isinstance(value, str) and _EPOCH_TEXT.fullmatch(value.strip()):
        value = float(value.strip())
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


UTC_ZONE = ZoneInfo("UTC")


# names the host's zoneinfo resolves by its own configuration: two hosts could read them differently
HOST_ZONES = frozenset({"localtime", "posixrules", "Factory"})


def known_zone(name: object) -> ZoneInfo | None:
    """The IANA zone ``name``, or None when it is not text, too long, unknown, a directory (``America``) or a
    host-dependent name."""
    if not isinstance(name, str) or not name or len(name) > 64 or name in HOST_ZONES:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def zone(name: object, fallback: object = None) -> ZoneInfo:
    """The IANA zone ``name``; when it is absent or unknown (a profile's zone comes from a device), ``fallback``'s
    (the workspace's ``messaging.timezone``), else UTC. Every local time of a person goes through this rule: segment
    dates, journey waits and schedules, quiet hours."""
    for candidate in (name, fallback):
        found = known_zone(candidate)
        if found is not None:
            return found
    return UTC_ZONE
