"""Loaded (as ``sitecustomize``) only by a `chorus serve` subprocess that a test runs under libfaketime
(tests/e2e/fakeclock.py); never part of the product.

libfaketime 0.9.10 (Debian 12's) breaks ``time.sleep`` on Python 3.11+ when the monotonic clock is not faked:
Python sleeps with ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` and libfaketime hands the kernel a negative
deadline, so every sleep fails with EINVAL (wolfcw/libfaketime#426). ``select`` with a relative timeout is not
affected and sleeps the same real time; it is what ``time.sleep`` did before 3.11.
"""

import select
import time

_real_sleep = time.sleep


def _sleep(seconds: float) -> None:
    if seconds < 0:
        _real_sleep(seconds)  # the same ValueError
    elif seconds > 0:
        select.select([], [], [], seconds)  # retried with the time left when a signal interrupts it (PEP 475)


time.sleep = _sleep
