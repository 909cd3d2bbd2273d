"""Settings from the environment (CHORUS_*), read in one place."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from exc


def _seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86_400:  # NaN too
        raise SystemExit(f"{name} must be a number of seconds above 0 and below a day, got {raw!r}")
    return value


def _choice(name: str, allowed: tuple[str, ...], default: str) -> str:
    raw = os.environ.get(name) or default
    if raw not in allowed:
        raise SystemExit(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///./chorus.db"
    # Ingestion answers 429 when this many accepted events still wait for identity resolution.
    max_backlog: int = 2_000_000
    # Concurrent ingestion requests writing to the store; more wait, and past max_waiting get 429.
    max_inflight: int = 4
    max_waiting: int = 64
    worker_batch: int = 2000
    worker_poll_seconds: float = 0.2
    # Where people reach this server: unsubscribe, preference, click and open links in messages point here.
    public_url: str = "http://127.0.0.1:8000"
    # The event lake `chorus lake export` writes and /api/analytics reads.
    lake_dir: str = "./lake"
    # After an erasure: "full" (PostgreSQL: VACUUM FULL, an exclusive lock on each table while it is rewritten;
    # SQLite: VACUUM, the writers wait for it; no bytes of the person left in the files) or "plain" (PostgreSQL:
    # VACUUM, no lock; SQLite: the WAL checkpoint only; bytes may remain in freed or unused space until
    # overwritten). See docs/operations.md.
    erasure_vacuum: str = "full"
    # A segment preview (POST /api/segments/preview) and a save's estimate: their statements share a deadline
    # this many seconds after they start (preview answers 503 over_budget, the save estimate null), so an expensive
    # rule on a big store does not hold an API worker for minutes. The worker's own computations have no budget.
    segment_preview_seconds: float = 5.0
    # `chorus serve --dev` / `chorus worker --dev` only (never from the environment, never a default): channels a
    # workspace configured no provider for are written to files under $CHORUS_OUTBOX_DIR instead of being skipped.
    dev: bool = False

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        values = dict(
            database_url=os.environ.get("CHORUS_DATABASE_URL", cls.database_url),
            max_backlog=_int("CHORUS_MAX_BACKLOG", cls.max_backlog),
            max_inflight=_int("CHORUS_MAX_INFLIGHT", cls.max_inflight),
            max_waiting=_int("CHORUS_MAX_WAITING", cls.max_waiting),
            worker_batch=_int("CHORUS_WORKER_BATCH", cls.worker_batch),
            worker_poll_seconds=float(os.environ.get("CHORUS_WORKER_POLL_SECONDS", cls.worker_poll_seconds)),
            public_url=os.environ.get("CHORUS_PUBLIC_URL", cls.public_url).rstrip("/"),
            lake_dir=os.environ.get("CHORUS_LAKE_DIR", cls.lake_dir),
            erasure_vacuum=_choice("CHORUS_ERASURE_VACUUM", ("full", "plain"), cls.erasure_vacuum),
            segment_preview_seconds=_seconds("CHORUS_SEGMENT_PREVIEW_SECONDS", cls.segment_preview_seconds),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
