#!/usr/bin/env python
"""Analytics benchmarks, each side by side with its baseline in the same run:

markov   Markov attribution, order 1, on 1,000,000 journeys: chorus (exact) vs ChannelAttribution's markov_model
         (bench/analytics_markov.py; time and peak memory, each side in its own process)
clv      BG/NBD + Gamma-Gamma fit on 1,000,000 customers: chorus vs lifetimes (bench/analytics_clv.py)
engines  the whole attribution report (journeys, 5 rule-based models, Markov, Shapley) on a lake of 10,000,000
         events: the same code on DuckDB and on Spark (local mode, all cores), each in its own process

  python bench/analytics.py                           # all three at full size
  python bench/analytics.py --part engines --events 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

CHANNELS = np.array(["web", "app", "email", "sms", "push", "store", "call_center", "catalog", "social", "chat"])
WS = "ws_bench"
START = datetime(2026, 1, 1, tzinfo=UTC)


def make_lake(root: Path, events: int, seed: int = 11) -> dict:
    """A lake of ``events`` events of events/10 people over 60 days: touchpoints on 10 channels and ~6 % orders."""
    import pyarrow as pa

    from chorus.analytics import lake

    rng = np.random.default_rng(seed)
    people = max(1, events // 10)
    pool = pa.array([f"p{i:08d}" for i in range(people)])
    who = rng.integers(0, people, events)
    ts_us = (rng.random(events) * 60 * 86_400e6).astype(np.int64)
    order = np.lexsort((ts_us,))
    who, ts_us = who[order], ts_us[order]
    is_order = rng.random(events) < 0.06
    chan = CHANNELS[rng.choice(len(CHANNELS), events, p=[0.3, 0.15, 0.12, 0.06, 0.05, 0.12, 0.06, 0.03, 0.06, 0.05])]
    chan = np.where(is_order, np.where(rng.random(events) < 0.7, "web", "store"), chan)
    ev_name = np.where(is_order, "Order Completed", np.where(np.isin(chan, ["email", "sms", "push"]),
                       "Message Clicked", "Interaction"))  # fmt: skip
    typ = np.where(np.isin(chan, ["web", "app"]) & ~is_order, "page", "track")
    ev_name = np.where(typ == "page", None, ev_name)
    revenue = np.where(is_order, np.round(rng.gamma(3, 25, events), 2), np.nan)
    seq = np.arange(1, events + 1)
    epoch = int(START.timestamp() * 1e6)
    days = (ts_us // 86_400_000_000).astype(np.int64)
    n_files = 0
    for d in np.unique(days):
        sl = np.flatnonzero(days == d)
        cols = {name: pa.nulls(len(sl), t.type) for name, t in zip(lake.EVENT_SCHEMA.names, lake.EVENT_SCHEMA,
                                                                     strict=True)}  # fmt: skip
        pid = pool.take(pa.array(who[sl]))
        cols.update(
            seq=pa.array(seq[sl]), message_id=pa.array([f"m{s}" for s in seq[sl]]), type=pa.array(typ[sl]),
            event=pa.array(ev_name[sl].tolist(), pa.string()), channel=pa.array(chan[sl]), profile_id=pid,
            user_id=pid, timestamp=pa.array(ts_us[sl] + epoch, pa.timestamp("us", tz="UTC")),
            revenue=pa.array(revenue[sl], from_pandas=True),
            currency=pa.array(np.where(is_order[sl], "EUR", None).tolist(), pa.string()),
            order_id=pa.array([f"o{s}" if o else None for s, o in zip(seq[sl], is_order[sl], strict=True)],
                              pa.string()),
            trusted=pa.array(np.ones(len(sl), bool)),
        )  # fmt: skip
        cols["received_at"] = cols["timestamp"]
        table = pa.table(cols, schema=lake.EVENT_SCHEMA)
        day = (START + timedelta(days=int(d))).date().isoformat()
        lake._write(root / "events" / f"workspace_id={WS}" / f"date={day}" /
                    f"part-{seq[sl][0]}-{seq[sl][-1]}.parquet", table)  # fmt: skip
        n_files += 1
    return {"events": events, "people": people, "orders": int(is_order.sum()), "files": n_files}


def _engine_worker(root: str, engine: str) -> dict:
    from chorus.analytics import attribution
    from chorus.analytics.engine import local_spark_session, open_lake

    t0 = time.perf_counter()
    spark = local_spark_session() if engine == "spark" else None
    started = time.perf_counter() - t0
    t1 = time.perf_counter()
    res = attribution.attribute(open_lake(root, engine=engine, spark=spark))
    took = time.perf_counter() - t1
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return {"engine": engine, "report_s": took, "startup_s": started, "peak_rss_mb_driver": hwm / 1024,
            "totals": res.totals,
            "markov": {r["label"]: r["conversions"] for r in res.rows if r["model"] == "markov"}}  # fmt: skip


def run_engines(events: int, spark: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="chorus-lake-") as tmp:
        t = time.perf_counter()
        info = make_lake(Path(tmp), events)
        info["generate_s"] = time.perf_counter() - t
        out = {"lake": info, "runs": []}
        for engine in ("duckdb", "spark") if spark else ("duckdb",):
            proc = subprocess.run([sys.executable, __file__, "--worker", engine, "--lake", tmp], capture_output=True,
                                  text=True)  # fmt: skip
            if proc.returncode:
                raise SystemExit(f"{engine} failed:\n{proc.stderr[-3000:]}")
            out["runs"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if len(out["runs"]) == 2:
            a, b = (r["markov"] for r in out["runs"])
            out["markov_max_abs_diff"] = max(abs(a[k] - b.get(k, 0.0)) for k in a)
        return out


def _print_engines(res: dict) -> None:
    lk = res["lake"]
    print(f"\n== attribution report on {lk['events']:,} events ({lk['people']:,} people, {lk['orders']:,} orders; "
          f"lake written in {lk['generate_s']:.1f} s) ==")  # fmt: skip
    for r in res["runs"]:
        print(f"{r['engine']:>7}: report {r['report_s']:7.1f} s  (+ session start {r['startup_s']:.1f} s)   "
              f"driver peak RSS {r['peak_rss_mb_driver']:,.0f} MB   "
              f"conversions {r['totals']['conversions']:,}")  # fmt: skip
    if "markov_max_abs_diff" in res:
        print(f"Markov credit, largest difference between the engines: {res['markov_max_abs_diff']:.2e} conversions")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", choices=["all", "markov", "clv", "engines"], default="all")
    ap.add_argument("--journeys", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--no-spark", action="store_true")
    ap.add_argument("--worker", choices=["duckdb", "spark"], help=argparse.SUPPRESS)
    ap.add_argument("--lake", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_engine_worker(args.lake, args.worker)))
        return 0
    results = {}
    if args.part in ("all", "markov"):
        import analytics_markov

        results["markov"] = analytics_markov.run(journeys=args.journeys)
        analytics_markov._print(results["markov"])
    if args.part in ("all", "clv"):
        import analytics_clv

        results["clv"] = analytics_clv.run(customers=args.customers)
        analytics_clv._print(results["clv"])
    if args.part in ("all", "engines"):
        results["engines"] = run_engines(args.events, spark=not args.no_spark)
        _print_engines(results["engines"])
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"analytics-{int(time.time())}.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    raise SystemExit(main())
