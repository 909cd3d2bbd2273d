"""A `chorus serve` subprocess whose wall clock the test moves: Debian's libfaketime (LD_PRELOAD) reads the time
from a file on every call, so writing ``@2026-03-28 21:30:00`` into it sets the server's clock, which then runs on
at the real rate. The monotonic clock is left real (FAKETIME_DONT_FAKE_MONOTONIC): timeouts, pools and the
worker's poll keep real time. Chorus takes every time from Python's clock (no database-side now()), so the
journeys' timers, the segments' time windows and the worker all see the moved clock.

libfaketime is GPL-2 and a TEST-ONLY tool (like the GPL `channelattribution` package used only by the
attribution tests): it is installed by scripts/test, preloaded into a test's subprocess, and never imported,
linked or shipped by Chorus.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import IN_CI, ServeProcess

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu/faketime", "/usr/lib/aarch64-linux-gnu/faketime", "/usr/lib/faketime")
SITE = Path(__file__).with_name("faketime_site")  # its sitecustomize works around libfaketime's time.sleep bug


def faketime_library() -> str | None:
    """The multithreaded libfaketime (serve runs threads), from dpkg's file list or the usual directories."""
    candidates: list[str] = []
    try:
        listed = subprocess.run(["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=False).stdout
        candidates += [line for line in listed.splitlines() if line.endswith("/libfaketimeMT.so.1")]
    except OSError:
        pass
    candidates += [f"{d}/libfaketimeMT.so.1" for d in LIB_DIRS]
    return next((c for c in candidates if os.path.exists(c)), None)


def require_faketime() -> str:
    lib = faketime_library()
    if lib is None:
        why = "libfaketime is not installed (apt-get install faketime; scripts/test installs it)"
        if IN_CI:
            pytest.fail(f"{why}: required under CI")
        pytest.skip(why)
    return lib


class FakeClock:
    """The wall clock of the processes started with :meth:`env`. ``set`` moves it (forward) to an instant;
    ``now`` is where it is, as the server reads it."""

    def __init__(self, tmp_path: Path, start: datetime):
        self.library = require_faketime()
        self.path = tmp_path / "faketime.rc"
        self.set(start)

    def set(self, when: datetime) -> None:
        when = when.astimezone(UTC)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"@{when:%Y-%m-%d %H:%M:%S}\n")
        tmp.replace(self.path)  # atomic: the server never reads half a line
        self._at, self._mono = when.replace(microsecond=0), time.monotonic()

    def now(self) -> datetime:
        return self._at + timedelta(seconds=time.monotonic() - self._mono)

    def env(self) -> dict[str, str]:
        import chorus

        src = str(Path(chorus.__file__).parents[1])
        return {"LD_PRELOAD": self.library, "FAKETIME_TIMESTAMP_FILE": str(self.path), "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TZ": "UTC",
                "PYTHONPATH": os.pathsep.join([str(SITE), src])}  # fmt: skip

    def serve(self, db_url: str, tmp_path: Path, **env) -> ServeProcess:
        return ServeProcess(db_url, tmp_path, **self.env(), **env)
