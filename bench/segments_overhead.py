#!/usr/bin/env python
"""What incremental segments cost identity resolution, per engine, measured side by side in one run.

The same deterministic workload (``--events`` events for ``--people`` people over the last two days, a fifth of
them anonymous first, so there are merges) is stored, then a worker made of the embedded worker's tasks for this
path (identity resolution, the change feed with the ``segments`` consumer, the segment timers; ``worker.Worker``
passes, in flow order, one thread) works until it is idle, on a fresh database per run, with:

- **0 segments** (the baseline: the consumer runs and finds nothing to evaluate),
- **5 segments** and **20 segments** (windowed behaviour, sums, channels, traits, reachability, segments of
  segments: a store's usual rules; every one of them reads events, so every change evaluates them).

Each run prints two rates: **resolved ev/s** (events over the time until the last one is resolved) and **decided
ev/s** (events over the time until the ``segments`` consumer has handled every change too: the rate at which the
worker can take events in without the segments falling behind). The ratios to the baseline are the cost of the
segments. The order of the runs alternates between rounds, so that machine noise hits all alike; the best round
of each is printed. Storing the events and saving the segments is not timed.

    python bench/segments_overhead.py                                   # 10,000 events, both engines
    python bench/segments_overhead.py --events 20000 --people 2000 --rounds 2 --engines sqlite
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.collect import ingest  # noqa: E402
from chorus.collect.messages import normalise  # noqa: E402
from chorus.identity.task import Resolution  # noqa: E402
from chorus.profiles import feed  # noqa: E402
from chorus.registry import Registry, Step, each_pass  # noqa: E402
from chorus.segments import engine as seg  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments import store  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.timeutil import utcnow  # noqa: E402
from chorus.worker import Worker  # noqa: E402

CATEGORIES = ["laptops", "phones", "tv", "audio"]
CHANNELS = ["web", "app", "web", "store"]

# in the order they are saved (a segment after those it refers to); the first five are the 5-segment runs
SEGMENTS: list[tuple[str, dict]] = [
    ("laptop_fans", {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                                   "window": "7d", "times": {"gte": 3}}}),
    ("buyers_30d", {"performed": {"event": "Order Completed", "window": "30d"}}),
    ("big_spender", {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                   "window": "30d", "gte": 1500}}),
    ("in_store", {"used_channel": {"channel": "store", "window": "7d"}}),
    ("abandoned", {"and": [{"performed": {"event": "Product Viewed", "window": "1d"}},
                           {"not": {"performed": {"event": "Order Completed", "window": "1d"}}}]}),
    ("phone_fans", {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "phones"}],
                                  "window": "3d", "times": {"gte": 2}}}),
    ("tv_viewers", {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "tv"}],
                                  "window": "14d"}}),
    ("audio_lovers", {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "audio"}],
                                    "window": "30d", "times": {"gte": 2}}}),
    ("frequent", {"performed": {"event": "Order Completed", "window": "7d", "times": {"gte": 3}}}),
    ("avg_basket", {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total",
                                  "window": "30d", "gt": 400}}),
    ("many_views", {"aggregate": {"event": "Product Viewed", "function": "count", "window": "1d", "gte": 5}}),
    ("omnichannel", {"channel_count": {"gte": 2, "window": "30d"}}),
    ("last_web", {"last_channel": {"equals": "web"}}),
    ("mixed", {"channel_mix": {"equals": "both", "window": "30d"}}),
    ("recent", {"last_time": {"event": "Order Completed", "within_last": "2d"}}),
    ("emailable", {"reachable": {"channel": "email"}}),
    ("has_email", {"trait": {"name": "email", "exists": True}}),
    ("vip", {"and": [{"segment": "big_spender"}, {"segment": "frequent"}]}),
    ("lapsing", {"and": [{"segment": "buyers_30d"}, {"not": {"segment": "recent"}}]}),
    ("target", {"and": [{"segment": "laptop_fans"}, {"segment": "emailable"}, {"not": {"segment": "vip"}}]}),
]  # fmt: skip


def workload(n_events: int, n_people: int, seed: int, end) -> list[dict]:
    """analytics.js-like events of ``n_people`` over the two days before ``end``, in time order per person."""
    rnd = random.Random(seed)
    out = []
    per = max(2, n_events // n_people)
    start = end - timedelta(days=2)
    step = timedelta(days=2) / (n_people * per + 1)
    k = 0
    for p in range(n_people):
        uid, a1, a2 = f"u{p}", f"a{p}-1", f"a{p}-2"
        anon_first = rnd.random() < 0.2
        for i in range(per):
            k += 1
            ts = start + step * k
            ids = {"userId": uid, "anonymousId": a2 if anon_first else a1}
            if anon_first and i < per // 2:
                ids = {"anonymousId": a1 if i % 2 else a2}
            if (anon_first and i == per // 2) or (not anon_first and i == 0):
                msg = {"type": "identify", "userId": uid, "anonymousId": a1, "traits": {"email": f"{uid}@x.io"}}
            elif rnd.random() < 0.8:
                msg = {"type": "track", "event": "Product Viewed", **ids,
                       "properties": {"category": rnd.choice(CATEGORIES), "price": rnd.randint(5, 900)}}
            else:
                msg = {"type": "track", "event": "Order Completed", **ids, "properties": {"total": rnd.randint(5, 900)}}
            msg.update(messageId=f"m{p}-{i}", timestamp=ts.isoformat(),
                       context={"channel": rnd.choice(CHANNELS)})  # fmt: skip
            out.append(msg)
    return out


def worker(engine) -> Worker:
    """The embedded worker's tasks on this path, in flow order: resolution, the feed (segments only), timers."""
    reg = Registry()
    reg.task("resolve", Resolution, step=Step.UNIFY)
    reg.consumer(seg.CONSUMER, seg.consumer())
    reg.task("feed", lambda e, o: feed.FeedTask(e, reg.consumers()), step=Step.DECIDE)
    reg.task("segment_timers", each_pass(seg.due), step=Step.DECIDE)
    return Worker(engine, registry=reg.freeze())


def run(engine_name: str, n_segments: int, msgs: list[dict], tmp: Path) -> tuple[float, float]:
    with FreshDB(engine_name, f"segover{n_segments}", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        now = utcnow()
        with engine.begin() as conn:
            src = workspaces.internal_source(conn, ws, "server", "bench")
            for i in range(0, len(msgs), 2000):
                evs = [normalise(m, received_at=now, source_kind="server") for m in msgs[i : i + 2000]]
                ingest.store(conn, src, evs, [], now)
            for sid, rule in SEGMENTS[:n_segments]:
                d, _ = store.save(conn, ws, sid, sid, r.parse(rule), now)
                store.mark_computed(conn, ws, sid, d.version, now)  # nobody yet: no batch to run
        w = worker(engine)  # subscribes the consumer: every change from now on is recorded for it
        resolve = w.task("resolve")
        resolved = idle = 0
        t_resolved = None
        started = time.perf_counter()
        while idle < 2:  # two passes in a row with nothing to do
            done = 0
            for _name, _label, task in w.tasks:
                n = task.run_once()
                done += n
                if task is resolve:
                    resolved += n
                    if t_resolved is None and resolved >= len(msgs):
                        t_resolved = time.perf_counter() - started
            idle = 0 if done else idle + 1
        t_decided = time.perf_counter() - started
        with engine.connect() as conn:
            lag = feed.lag(conn)
        w.stop()
        engine.dispose()
        assert resolved == len(msgs), (resolved, len(msgs))
        assert all(x["waiting"] == 0 and x["parked"] == 0 for x in lag), lag
        return len(msgs) / t_resolved, len(msgs) / t_decided


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--people", type=int, default=1_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--segments", default="0,5,20", help="segment counts to run; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    from chorus import gctune

    # the chorus code measured in this process gets the collector settings of `chorus worker` (decision 0041;
    # CHORUS_GC=default to measure with CPython's)
    gctune.tune()
    counts = [int(x) for x in args.segments.split(",")]
    msgs = workload(args.events, args.people, args.seed, utcnow())
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        rates: dict[int, list[tuple[float, float]]] = {n: [] for n in counts}
        for rnd in range(args.rounds):
            for n in counts if rnd % 2 == 0 else counts[::-1]:
                rates[n].append(run(eng, n, msgs, tmp))
                res, dec = rates[n][-1]
                print(f"{eng} round {rnd + 1} {n:2d} segments {res:9,.0f} resolved ev/s {dec:9,.0f} decided ev/s",
                      flush=True)  # fmt: skip
        best = {n: (max(x[0] for x in v), max(x[1] for x in v)) for n, v in rates.items()}
        base = best[counts[0]]
        print(f"\n{eng}: {len(msgs):,} events, {args.people:,} people, best of {args.rounds} round(s)")
        print("| segments | resolved ev/s | x slower | decided ev/s | x slower |")
        print("|---:|---:|---:|---:|---:|")
        for n in counts:
            res, dec = best[n]
            print(f"| {n} | {res:,.0f} | {base[0] / res:.2f} | {dec:,.0f} | {base[1] / dec:.2f} |")
        print(flush=True)


if __name__ == "__main__":
    main()
