#!/usr/bin/env python
"""One change of one person with a long history: the incremental engine's evaluation (``engine.Evaluator.person``)
of a store's usual segments, reading only what the rules can still look at (``segments.needs``, decision 0028)
beside reading the person's whole history, alternately, in the same run, on the same database.

The person has ``--events`` events over 180 days (the mix of ``bench/segments.py``: product views and cart adds
with properties, orders, page views, identifies, Chorus' own outbound records). The segments are windowed
behaviour over 1 to 30 days, a sum over 30 days, a channel condition over 7 days and a trait: what a change
re-evaluates most of the time. Prints, per engine, the median milliseconds of an evaluation each way and how many
events each read.

    python bench/segments_person.py                       # 10,000 events, both engines
    python bench/segments_person.py --events 50000 --engines postgresql
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.segments import engine as seg  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments import store  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from segments import NOW, load, more_events  # noqa: E402

SEGMENTS: dict[str, dict] = {
    "laptop_fans": {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                                  "window": "7d", "times": {"gte": 3}}},
    "abandoned": {"and": [{"performed": {"event": "Product Added", "window": "1d"}},
                          {"not": {"performed": {"event": "Order Completed", "window": "1d"}}}]},
    "big_spender": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                  "window": "30d", "gte": 500}},
    "in_store": {"used_channel": {"channel": "store", "window": "7d"}},
    "gold": {"trait": {"name": "plan", "equals": "gold"}},
}  # fmt: skip


def run(engine_name: str, n_events: int, rounds: int, seed: int, tmp: Path) -> None:
    with FreshDB(engine_name, "segperson", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        load(engine, ws, 1, seed)  # profile p00000000 with its traits and 10 events
        pid = "p00000000"
        with engine.begin() as conn:
            more_events(conn, ws, seed, 0, 10, n_events)  # her other events, drawn as bench/segments.py draws
            for sid, rule in SEGMENTS.items():
                store.save(conn, ws, sid, sid, r.parse(rule), NOW)
        if engine_name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        sids = set(SEGMENTS)
        took: dict[str, list[float]] = {"needs": [], "full": []}
        read: dict[str, int] = {}
        for i in range(2 * rounds):
            mode = ("needs", "full")[i % 2]
            with engine.begin() as conn:
                ev = seg.Evaluator(conn, ws, NOW)
                if mode == "full":
                    ev.needs = lambda ids: None  # the whole person, as before decision 0028
                t = time.perf_counter()
                ev.person(pid, sids, "event")
                took[mode].append(time.perf_counter() - t)
                person = seg.load_person(conn, ev.ws, pid, ev.needs(sids))
                read[mode] = len(person.events) if person else 0
        engine.dispose()
        med = {m: statistics.median(v) * 1000 for m, v in took.items()}
        print(f"{engine_name}: {n_events:,} events, {len(SEGMENTS)} segments, median of {rounds}: "
              f"needs {med['needs']:.1f} ms ({read['needs']:,} events read), "
              f"full {med['full']:.1f} ms ({read['full']:,} events read), x{med['full'] / med['needs']:.1f}",
              flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        run(eng, args.events, args.rounds, args.seed, tmp)


if __name__ == "__main__":
    main()
