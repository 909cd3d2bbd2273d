"""What the audience sync needs from an ad platform client, and the pieces both clients share.

A client takes rows (see :mod:`rows`) and applies them to a destination (a Meta custom audience id, a Google
Customer Match user list) in batches within the platform's limits. After each part the platform has accepted,
it calls ``done(indexes, rejected)`` so that the sync records exactly what the platform holds even if a later
part fails. Failures are the provider errors of :mod:`chorus.messaging.providers`: transient ones (429, 5xx,
rate-limit codes, a connection that failed) are retried here with exponential backoff, because adding or
removing the same hashed rows twice has the same effect as once; a permanent one stops the sync with the
platform's reason.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from chorus.messaging.providers import AmbiguousError, ConfigError, ProviderError, TransientError

Done = Callable[[list[int], dict[int, str]], None]  # (indexes the platform now holds, {index: why rejected})
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789_-")


@dataclass
class Upload:
    """What a platform answered for one ``apply``: rows received, rows it called invalid, samples of why."""

    received: int = 0
    invalid: int = 0
    samples: dict[str, str] = field(default_factory=dict)
    jobs: list[str] = field(default_factory=list)  # Google: the offline user data jobs that carry the change

    def merge(self, other: Upload) -> None:
        self.received += other.received
        self.invalid += other.invalid
        for k, v in other.samples.items():
            if len(self.samples) < 20:
                self.samples.setdefault(k, v)
        self.jobs.extend(other.jobs)

    def as_dict(self) -> dict:
        return {"received": self.received, "invalid": self.invalid, "invalid_samples": self.samples,
                "jobs": self.jobs}  # fmt: skip


class AudienceClient(Protocol):
    name: str
    type: str  # "meta" | "google": also the row format it takes

    def check_destination(self, destination: object, where: str) -> str: ...

    def apply(self, destination: str, op: str, rows: list[dict], done: Done, options: dict) -> Upload: ...

    def close(self) -> None: ...


def setting_str(conf: dict, key: str, where: str, default: str | None = None) -> str | None:
    value = conf.get(key, default)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigError(f"{where}.{key} must be a text")
    return value


def setting_url(conf: dict, key: str, where: str, default: str) -> str:
    url = conf.get(key, default)
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.{key} must be an http(s) URL")
    return url.rstrip("/")


def setting_number(conf: dict, key: str, where: str, default: float, low: float, high: float, *, whole=False):
    value = conf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or (whole and not isinstance(value, int)):
        raise ConfigError(f"{where}.{key} must be a {'whole ' if whole else ''}number from {low:g} to {high:g}")
    if not low <= value <= high:
        raise ConfigError(f"{where}.{key} must be from {low:g} to {high:g}")
    return value


def check_known(conf: dict, known: set[str], where: str, what: str) -> None:
    unknown = set(conf) - known
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]} is not a {what} setting")


class Retrying:
    """Run a call, retrying transient failures: ``max_attempts`` in all, waiting ``retry_base_seconds`` × 2ⁿ
    (with jitter, at most a minute) or the platform's ``Retry-After``."""

    def __init__(self, conf: dict, where: str, sleep: Callable[[float], None] = time.sleep):
        self.attempts = setting_number(conf, "max_attempts", where, 5, 1, 20, whole=True)
        self.base = setting_number(conf, "retry_base_seconds", where, 2.0, 0, 300)
        self.sleep = sleep
        self.retries = 0  # how many retries this client made (reported by the sync)

    def __call__(self, call: Callable, what: str):
        for attempt in range(1, self.attempts + 1):
            try:
                return call()
            except (TransientError, AmbiguousError) as exc:
                if attempt == self.attempts:
                    raise TransientError(
                        f"{exc.reason} (gave up after {self.attempts} attempts of {what})", code=exc.code
                    ) from None
                wait = getattr(exc, "retry_after", None)
                if wait is None:
                    wait = self.base * 2 ** (attempt - 1) * (0.75 + random.random() / 2)
                self.retries += 1
                self.sleep(min(float(wait), 60.0))
        raise AssertionError("unreachable")


def retry_after(headers) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def transient(reason: str, code: str, wait: float | None = None) -> TransientError:
    exc = TransientError(reason, code=code)
    exc.retry_after = wait  # type: ignore[attr-defined]
    return exc


__all__ = ["AudienceClient", "Upload", "Retrying", "ProviderError", "ConfigError"]
