#!/usr/bin/env python
"""What the change feed costs identity resolution, per engine, measured side by side in one run.

The same deterministic workload (``--events`` events for ``--people`` people, a fifth of them anonymous first, so
there are merges) is stored, then resolved by chorus' resolver (``Resolver.drain``, 2,000-event batches) on a fresh
database three times, in alternating order so that machine noise hits all alike:

- **no feed** (the baseline: resolution as it was before the feed; ``feed.record`` is replaced by a no-op);
- **feed, no consumer**: every change recorded in ``profile_changes``;
- **feed, 2 consumers**: also one ``feed_pending`` row per change and consumer (segments and journeys).

Prints resolved events per second for each and the ratios to the baseline. Storing the events is not timed.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.collect import ingest  # noqa: E402
from chorus.collect.messages import normalise  # noqa: E402
from chorus.identity.resolver import Resolver  # noqa: E402
from chorus.profiles import feed  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def workload(n_events: int, n_people: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    out = []
    per = max(1, n_events // n_people)
    for p in range(n_people):
        uid, a1, a2 = f"u{p}", f"a{p}-1", f"a{p}-2"
        anon_first = rnd.random() < 0.2
        for i in range(per):
            ts = T0 + timedelta(seconds=p * 7 + i)
            if anon_first and i < per // 2:
                msg = {"type": "track", "event": "Product Viewed", "anonymousId": a1 if i % 2 else a2,
                       "properties": {"category": rnd.choice(["laptops", "phones"]), "price": rnd.randint(5, 900)}}
            elif anon_first and i == per // 2:
                msg = {"type": "identify", "userId": uid, "anonymousId": a1, "traits": {"email": f"{uid}@x.io"}}
            elif i == 0:
                msg = {"type": "identify", "userId": uid, "anonymousId": a1, "traits": {"email": f"{uid}@x.io"}}
            else:
                msg = {"type": "track", "event": rnd.choice(["Product Viewed", "Order Completed"]), "userId": uid,
                       "anonymousId": a2 if anon_first else a1, "properties": {"total": rnd.randint(5, 900)}}
            msg.update(messageId=f"m{p}-{i}", timestamp=ts.isoformat(), context={"channel": "web"})
            out.append(msg)
    return out


def run(engine_name: str, mode: str, msgs: list[dict], tmp: Path) -> float:
    with FreshDB(engine_name, f"feed-{mode}", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        with engine.begin() as conn:
            src = workspaces.internal_source(conn, ws, "server", "bench")
            for i in range(0, len(msgs), 2000):
                evs = [normalise(m, received_at=T0 + timedelta(days=1), source_kind="server") for m in msgs[i:i + 2000]]
                ingest.store(conn, src, evs, [], T0 + timedelta(days=1))
        if mode == "feed+2":
            for name in ("segments", "journeys"):
                feed.subscribe(engine, name)
        real = feed.record
        if mode == "none":
            feed.record = lambda *a, **k: 0
        try:
            started = time.perf_counter()
            n = Resolver(engine).drain(2000)
            took = time.perf_counter() - started
        finally:
            feed.record = real
        engine.dispose()
        assert n == len(msgs), (n, len(msgs))
        return n / took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    msgs = workload(args.events, args.people, args.seed)
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        rates: dict[str, list[float]] = {"none": [], "feed": [], "feed+2": []}
        for r in range(args.rounds):
            order = ["none", "feed", "feed+2"] if r % 2 == 0 else ["feed+2", "feed", "none"]
            for mode in order:
                rates[mode].append(run(eng, mode, msgs, tmp))
                print(f"{eng} round {r + 1} {mode:7s} {rates[mode][-1]:10,.0f} ev/s", flush=True)
        best = {m: max(v) for m, v in rates.items()}
        print(f"\n{eng}: {len(msgs):,} events, best of {args.rounds} rounds")
        print(f"  no feed (baseline)   {best['none']:10,.0f} resolved ev/s")
        for mode, label in (("feed", "feed, no consumer "), ("feed+2", "feed, 2 consumers ")):
            print(f"  {label}   {best[mode]:10,.0f} resolved ev/s   x{best['none'] / best[mode]:.2f} slower")


if __name__ == "__main__":
    main()
