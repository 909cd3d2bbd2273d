#!/usr/bin/env python
"""A flood of claims against one customer: anyone with the public write key sends her user id with a new anonymous
id, ``--flood`` times. What it costs identity resolution afterwards, with ``identifier_limits`` as shipped (1,000
anonymous ids a profile, claim links capped at twice that) beside the same run without a limit (a limit of 100,000:
the behaviour before it), in one database, and a customer nobody flooded as the baseline.

Per engine and workspace it prints:
- the seconds to resolve the flood (batches of 500, as the tracking API's worker takes them);
- the median milliseconds to resolve one ordinary event of hers (``--events`` of them, each resolved alone, as a
  worker on a live site does), and of the unflooded customer's;
- the seconds of one replay of her profile (a store purchase imported with an earlier date), the links it read;
- how many anonymous ids her profile holds and how many links leave her user id.

    python bench/identity_flood.py                          # 5,000 claims, both engines
    python bench/identity_flood.py --flood 20000 --engines sqlite
"""

from __future__ import annotations

import argparse
import logging
import re
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqlalchemy as sa  # noqa: E402
from common import FreshDB, engines_of, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.collect import ingest  # noqa: E402
from chorus.collect.messages import normalise  # noqa: E402
from chorus.identity.resolver import Resolver  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.store.tables import identifiers, identity_links  # noqa: E402

T0 = datetime(2026, 11, 1, tzinfo=UTC)


class Replays(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.sizes: list[int] = []

    def emit(self, record):
        m = re.search(r"replayed identity component of \d+ identifiers, (\d+) links", record.getMessage())
        if m:
            self.sizes.append(int(m[1]))


def send(engine, ws: str, msgs: list[dict], trusted: bool, received: datetime) -> None:
    with engine.begin() as conn:
        src = workspaces.internal_source(conn, ws, "server" if trusted else "client", f"bench-{trusted}")
        ingest.store(conn, src, [normalise(m, received_at=received, source_kind=src.kind) for m in msgs], [], received)


def ts(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(engine, ws: str, flood: int, n_events: int, replays: Replays) -> dict:
    resolver = Resolver(engine)
    for uid in ("vera", "olga"):  # known from the brand's server
        send(engine, ws, [{"type": "identify", "userId": uid, "messageId": f"{ws}-{uid}-0", "timestamp": ts(T0),
                           "traits": {"email": f"{uid}@example.com"}}], True, T0)  # fmt: skip
    resolver.drain()
    t = time.perf_counter()
    for lo in range(0, flood, 500):
        at = T0 + timedelta(seconds=1 + lo)
        send(engine, ws, [
            {"type": "track", "event": "Product Viewed", "userId": "vera", "anonymousId": f"x{i}",
             "messageId": f"{ws}-c{i}", "timestamp": ts(at + timedelta(milliseconds=i - lo))}
            for i in range(lo, min(flood, lo + 500))
        ], False, at)  # fmt: skip
        resolver.drain()
    flood_s = time.perf_counter() - t
    per: dict[str, list[float]] = {"vera": [], "olga": []}
    base = T0 + timedelta(days=1)
    for i in range(n_events):
        for uid in ("vera", "olga"):  # alternately, so that the machine's noise falls on both
            at = base + timedelta(seconds=i)
            send(engine, ws, [{"type": "track", "event": "Order Completed", "userId": uid, "properties": {"total": 10},
                               "messageId": f"{ws}-{uid}-o{i}", "timestamp": ts(at)}], True, at)  # fmt: skip
            t = time.perf_counter()
            resolver.drain()
            per[uid].append((time.perf_counter() - t) * 1000)
    replays.sizes.clear()
    send(engine, ws, [{"type": "track", "event": "Order Completed", "userId": "vera", "anonymousId": "store-1",
                       "messageId": f"{ws}-s1", "timestamp": ts(T0 + timedelta(milliseconds=500))}], True, base)
    t = time.perf_counter()
    resolver.drain()
    replay_s = time.perf_counter() - t
    with engine.connect() as conn:
        pid = conn.execute(sa.select(identifiers.c.profile_id).where(
            identifiers.c.workspace_id == ws, identifiers.c.ident == "user_id:vera")).scalar_one()  # fmt: skip
        anon = conn.execute(sa.select(sa.func.count()).where(
            identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid,
            identifiers.c.ident.like("anonymous%"))).scalar_one()  # fmt: skip
        links = conn.execute(sa.select(sa.func.count()).where(
            identity_links.c.workspace_id == ws, identity_links.c.a == "user_id:vera")).scalar_one()  # fmt: skip
    return {
        "flood_s": flood_s, "her_ms": statistics.median(per["vera"]), "other_ms": statistics.median(per["olga"]),
        "replay_s": replay_s, "replay_links": max(replays.sizes, default=0), "anon_ids": anon, "links_from_her": links,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--flood", type=int, default=5000, help="claims sent against her (default 5,000)")
    ap.add_argument("--events", type=int, default=30, help="ordinary events of hers and of the baseline customer")
    args = ap.parse_args()
    replays = Replays()
    logging.getLogger("chorus.identity").addHandler(replays)
    logging.getLogger("chorus.identity").setLevel(logging.INFO)
    tmp = make_tmpdir()
    rows = []
    for eng in engines_of(ap, args.engines):
        with FreshDB(eng, "flood", tmp) as db:
            upgrade(db.url)
            engine = create_engine(db.url)
            for label, limits in (("limit 1,000 (shipped)", None), ("no limit (before)", {"anonymous_id": 100_000})):
                ws = workspaces.create(engine, label)["id"]
                if limits:
                    workspaces.update_settings(engine, ws, {"identifier_limits": limits})
                r = run(engine, ws, args.flood, args.events, replays)
                rows.append((eng, label, r))
                print(f"{eng:<10} {label:<22} flood {r['flood_s']:7.1f} s | one event of hers {r['her_ms']:7.1f} ms, "
                      f"of another customer {r['other_ms']:5.1f} ms | replay {r['replay_s']:6.2f} s "
                      f"({r['replay_links']:,} links) | her anonymous ids {r['anon_ids']:,}, links from her "
                      f"{r['links_from_her']:,}", flush=True)  # fmt: skip
            engine.dispose()


if __name__ == "__main__":
    main()
