#!/usr/bin/env python
"""Memory of the worker while people wait on time-based flips: the RSS of a ``chorus worker`` process running its
passes (the segment timer task among them) while 0, N/10, N/2 and N people each have a timer in
``segment_timers``, beside, at the same moments, the RSS of the same worker on a database with no timer.

The rule is "bought before, but not in the last 60 days"; every person bought once, so each has one timer (the
instant her purchase leaves the 60-day window). The data is written through the store's bulk paths
(``store.bulk.insert_rows``: COPY on PostgreSQL) in stages while both workers run; ``--due-share`` of each stage's
people bought more than 60 days ago and their timers are already due, so the timer pass has people to evaluate
(they enter the segment) at every stage, not only an index to probe.

    python bench/segments_timers.py                          # 100,000 people, both engines
    python bench/segments_timers.py --profiles 1000000 --engines postgresql

Prints a table and writes ``bench/results/segments-timers-<engine>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ChorusServer,
    FreshDB,
    _status_kb,
    add_run_args,
    bulk_write,
    log,
    make_tmpdir,
    proc_tree,
    snapshot_code,
    system_cpu,
    write_json,
)
from segment_rules import SEGMENTS  # noqa: E402

RULE = SEGMENTS["lapsed"]  # bought before, but not in the last 60 days
CHUNK = 20_000


def prepare(url: str):
    """A workspace with the segment, marked computed (the worker's batch must not evaluate everybody: the timers
    are the bench's to write)."""
    from chorus import workspaces
    from chorus.segments import rules as r
    from chorus.segments import store
    from chorus.store.db import create_engine, upgrade
    from chorus.timeutil import utcnow

    upgrade(url)
    engine = create_engine(url)
    ws = workspaces.create(engine, "bench")["id"]
    with engine.begin() as conn:
        d, _ = store.save(conn, ws, "lapsed", "lapsed", r.parse(RULE), utcnow())
        store.mark_computed(conn, ws, "lapsed", d.version, utcnow())
    return engine, ws


def load(engine, ws: str, start: int, stop: int, due_share: float) -> None:
    """People start..stop-1: a profile, its user id, one resolved purchase and its timer."""
    from chorus.timeutil import iso, utcnow

    now = utcnow()
    due_every = round(1 / due_share) if due_share > 0 else 0
    for lo in range(start, stop, CHUNK):
        rows: dict = {"p": [], "i": [], "e": [], "t": []}
        for i in range(lo, min(stop, lo + CHUNK)):
            pid = f"p{i:08d}"
            due = due_every and i % due_every == 0
            # waiting: bought 1 to 59 days ago; due: 61 to 90 days ago (the flip has passed, not yet evaluated)
            bought = now - timedelta(days=61 + i % 30 if due else 1 + i % 59, seconds=i % 86_400)
            state = {"traits": {"plan": "free"}, "trait_at": {}, "sums": {}, "channels": {}, "consent": {},
                     "attrs": {}}  # fmt: skip
            rows["p"].append({"id": pid, "workspace_id": ws, "created_at": bought, "created_msg": f"o{i}",
                              "links_max_at": bought, "links_max_msg": f"o{i}", "known": True, "first_seen": bought,
                              "last_seen": bought, "last_channel": "web", "state": state,
                              "updated_at": now})  # fmt: skip
            rows["i"].append({"workspace_id": ws, "ident": f"user_id:u{i}", "profile_id": pid})
            payload = {"type": "track", "event": "Order Completed", "messageId": f"o{i}", "timestamp": iso(bought),
                       "userId": f"u{i}", "channel": "web", "properties": {"total": 42}}  # fmt: skip
            rows["e"].append({"workspace_id": ws, "message_id": f"o{i}", "type": "track", "event": "Order Completed",
                              "channel": "web", "user_id": f"u{i}", "anonymous_id": None, "timestamp": bought,
                              "received_at": bought, "source_id": None, "trusted": True, "payload": payload,
                              "profile_id": pid})  # fmt: skip
            rows["t"].append({"workspace_id": ws, "segment_id": "lapsed", "profile_id": pid,
                              "due_at": bought + timedelta(days=60)})  # fmt: skip
        _write(engine, rows)


def _write(engine, rows: dict) -> None:
    """One chunk in one transaction (retried while a worker holds SQLite's lock: ``common.bulk_write``)."""
    from chorus.store.tables import events, identifiers, profiles, segment_timers

    bulk_write(engine, [(profiles, rows["p"]), (identifiers, rows["i"]), (events, rows["e"]),
                        (segment_timers, rows["t"])])  # fmt: skip


def rss_mb(pid: int) -> float:
    return sum(_status_kb(p, "VmRSS") for p in proc_tree(pid)) / 1024


def watch(workers: dict[str, ChorusServer], seconds: float, interval: float = 0.25) -> dict[str, list[float]]:
    """RSS samples of each worker, taken at the same moments."""
    out: dict[str, list[float]] = {k: [] for k in workers}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for k, w in workers.items():
            out[k].append(rss_mb(w.pid))
        time.sleep(interval)
    return out


def counts(engine, ws: str) -> dict:
    from chorus.store.tables import segment_members, segment_timers

    with engine.connect() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(segment_timers)
                         .where(segment_timers.c.workspace_id == ws)).scalar_one()  # fmt: skip
        m = conn.execute(sa.select(sa.func.count()).select_from(segment_members)
                         .where(segment_members.c.workspace_id == ws)).scalar_one()  # fmt: skip
    return {"timers": n, "members": m}


def run(engine_name: str, args, tmp: Path) -> dict:
    n = args.profiles
    stages = [0, n // 10, n // 2, n]
    with FreshDB(engine_name, "timers", tmp) as db, FreshDB(engine_name, "timers_base", tmp) as base:
        engine, ws = prepare(db.url)
        base_engine, _ = prepare(base.url)
        workers = {"timers": ChorusServer(db.url, tmp / f"worker-{engine_name}.log", mode="worker"),
                   "baseline": ChorusServer(base.url, tmp / f"worker-{engine_name}-base.log", mode="worker")}
        out = []
        try:
            for w in workers.values():
                w.wait_ready()
            loaded = 0
            for target in stages:
                t = time.perf_counter()
                load(engine, ws, loaded, target, args.due_share)
                load_s = time.perf_counter() - t
                loaded = target
                busy0, t0 = system_cpu()[0], time.monotonic()
                samples = watch(workers, args.stage_seconds)
                busy = (system_cpu()[0] - busy0) / (time.monotonic() - t0)
                row = {"people_loaded": target, "load_s": load_s, **counts(engine, ws), "machine_busy_cores": busy,
                       "loadavg": os.getloadavg()}  # fmt: skip
                for k, s in samples.items():
                    row[f"{k}_rss_mb"] = {"median": statistics.median(s), "max": max(s), "last": s[-1]}
                    row[f"{k}_hwm_mb"] = _status_kb(workers[k].pid, "VmHWM") / 1024
                log(f"{engine_name}: {row}")
                out.append(row)
        finally:
            for w in workers.values():
                w.stop()
            engine.dispose()
            base_engine.dispose()
    return {"engine": engine_name, "profiles": n, "stages": out}


def table(results: list[dict]) -> str:
    lines = ["| engine | people loaded | timers waiting | timers fired (members) | worker RSS MB (median / max) | "
             "baseline worker RSS MB, no timers (median / max) | difference MB (median) | machine busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for res in results:
        for s in res["stages"]:
            a, b = s["timers_rss_mb"], s["baseline_rss_mb"]
            lines.append(f"| {res['engine']} | {s['people_loaded']:,} | {s['timers']:,} | {s['members']:,} | "
                         f"{a['median']:.1f} / {a['max']:.1f} | {b['median']:.1f} / {b['max']:.1f} | "
                         f"{a['median'] - b['median']:+.1f} | {s['machine_busy_cores']:.2f} cores |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument("--stage-seconds", type=float, default=20, help="how long both workers are watched per stage")
    ap.add_argument("--due-share", type=float, default=0.01, help="share of people whose timer is already due")
    add_run_args(ap, out_help="directory for segments-timers-<engine>.json")
    args = ap.parse_args()
    tmp = make_tmpdir()
    code = snapshot_code(tmp, args.code)
    results = []
    for eng in args.engines.split(","):
        res = run(eng, args, tmp)
        results.append(res)
        write_json(Path(args.out) / f"segments-timers-{eng}.json", {"code": code, "args": vars(args), **res})
    print(table(results))
    for res in results:
        first, last = res["stages"][0], res["stages"][-1]
        growth = last["timers_rss_mb"]["median"] - first["timers_rss_mb"]["median"]
        base = last["baseline_rss_mb"]["median"] - first["baseline_rss_mb"]["median"]
        print(f"{res['engine']}: worker RSS from 0 to {res['profiles']:,} waiting timers: {growth:+.1f} MB "
              f"(baseline worker over the same time: {base:+.1f} MB)")


if __name__ == "__main__":
    main()
