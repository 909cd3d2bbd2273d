#!/usr/bin/env python
"""The time budget of a segment preview (``store.budget``, the API's preview and a save's estimate): what it costs
a preview that fits in it, and how soon it answers for one that does not, beside the same preview without a budget,
in the same run, on the same database.

The store is ``bench/segments.py``'s (``--profiles`` people with 10 events each over 180 days). Prints, per engine:

- the median milliseconds of ``preview.preview`` for a few usual rules, with a budget too large to stop anything
  and without one, alternately (``--rounds`` each): the budget's overhead (SQLite calls a Python handler every
  1,000 virtual machine steps; PostgreSQL runs one more statement to set the timeout);
- for the most expensive rule, the seconds until the preview answers with a budget of a quarter of its unbudgeted
  time (stopped: ``OverBudget``) beside that unbudgeted time.

    python bench/segments_budget.py                        # 50,000 profiles, both engines
    python bench/segments_budget.py --profiles 200000 --engines postgresql
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
from chorus.segments import preview  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.store.budget import OverBudget  # noqa: E402
from chorus.store.db import create_engine, read_only, upgrade  # noqa: E402
from segments import NOW, load  # noqa: E402

RULES: dict[str, dict] = {
    "gold": {"trait": {"name": "plan", "equals": "gold"}},
    "laptop_fans": {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                                  "window": "30d", "times": {"gte": 2}}},
    "big_spender": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                  "window": "180d", "gte": 500}},
    "omnichannel": {"channel_count": {"window": "180d", "gte": 3}},
}  # fmt: skip
LARGE = 3600.0  # a budget nothing here reaches: what is measured is its cost


def _preview(engine, ws, rule, budget: float | None) -> tuple[float, int | None]:
    """Seconds of one preview and its count (None: stopped by the budget)."""
    started = time.perf_counter()
    try:
        with read_only(engine) as conn:
            count = preview.preview(conn, ws, rule, NOW, sample=10, budget=budget)["count"]
    except OverBudget:
        count = None
    return time.perf_counter() - started, count


def run(engine_name: str, n: int, rounds: int, seed: int, tmp: Path) -> None:
    with FreshDB(engine_name, "segbudget", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws_id = workspaces.create(engine, "bench")["id"]
        load(engine, ws_id, n, seed)
        with engine.connect() as conn:
            ws = workspaces.get(conn, ws_id)
        rules = {name: r.parse(rule) for name, rule in RULES.items()}
        times: dict[str, dict[str, list[float]]] = {name: {"budget": [], "none": []} for name in rules}
        for name, rule in rules.items():
            _preview(engine, ws, rule, None)  # warm the caches once, not measured
            for _ in range(rounds):
                for label, budget in (("budget", LARGE), ("none", None)):
                    seconds, count = _preview(engine, ws, rule, budget)
                    assert count is not None
                    times[name][label].append(seconds)
        slowest = max(rules, key=lambda k: statistics.median(times[k]["none"]))
        full = statistics.median(times[slowest]["none"])
        stopped, count = _preview(engine, ws, rules[slowest], full / 4)
        engine.dispose()
    print(f"\n{engine_name}: {n:,} profiles, {10 * n:,} events; median of {rounds} previews each way")
    print("| rule | with a budget (ms) | without (ms) | ratio |\n|---|---:|---:|---:|")
    for name in rules:
        b, w = (statistics.median(times[name][k]) * 1000 for k in ("budget", "none"))
        print(f"| {name} | {b:.1f} | {w:.1f} | {b / w:.2f}× |")
    what = "stopped (503 over_budget)" if count is None else f"not stopped ({count:,} members)"
    print(f"{slowest} with a budget of {full / 4:.3f} s: answered in {stopped:.3f} s, {what}; "
          f"without a budget: {full:.3f} s", flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=50_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        run(eng, args.profiles, args.rounds, args.seed, tmp)


if __name__ == "__main__":
    main()
