"""The garbage collector of a long-running Chorus process (``chorus serve``, ``chorus worker``): decision 0041.

CPython's cyclic collector runs a young-generation pass every 700 net container allocations and, every 100 of
those, a full pass over every tracked object. A Chorus process holds a large, long-lived heap from the moment it
starts (SQLAlchemy's metadata and compiled statements, pydantic models, the Liquid environment, the definitions),
and its hot paths allocate many short-lived dicts and tuples that reference counting alone frees. So the default
collector spends its time re-scanning the same startup objects: about a sixth of a journey transition's time
(``bench/journeys.py transitions``), and its full passes are pauses that put the worst latencies of segment
membership over the 100 ms bar (``bench/segments_latency.py``, with and without, in docs/benchmarks.md).

:func:`tune`, called once when the process has finished starting:

- ``gc.freeze()`` moves everything alive at startup into the permanent generation, which no pass scans;
- the young generation is collected every ``GEN0`` net allocations instead of 700, and the older ones less often
  too: the passes are about 70 times fewer, and a cycle of garbage waits longer to be freed (one that survived
  a young pass waits for a middle one, every ``GEN0 * GEN1`` allocations, or a full one; what it holds, a
  traceback's rows say, waits with it). The resident memory is in ``/metrics`` (``process_resident_memory_bytes``).

Reference cycles are still collected: only how often changes. ``CHORUS_GC=default`` keeps CPython's settings (to
compare, or if a deployment prefers memory to speed).
"""

from __future__ import annotations

import gc
import os

GEN0 = 50_000  # net container allocations between two young-generation passes (CPython: 700)
GEN1 = 20  # young passes between two middle-generation passes (CPython: 10)
GEN2 = 20  # middle passes between two full passes (CPython: 10; a full pass also waits for 25 % growth)


def mode() -> str:
    """``CHORUS_GC``, checked: ``tuned`` (the default) or ``default``. The commands read it before doing anything,
    so a wrong value stops them at once."""
    value = os.environ.get("CHORUS_GC", "tuned") or "tuned"
    if value not in ("tuned", "default"):
        raise SystemExit(f"CHORUS_GC must be tuned or default, got {value!r}")
    return value


def tune() -> bool:
    """Freeze the startup heap and space the collector's passes; returns whether it did (not with
    ``CHORUS_GC=default``). Safe to call more than once: each call freezes what has been made since."""
    if mode() == "default":
        return False
    gc.collect()  # what startup left as garbage is freed now, not frozen forever
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
    return True
