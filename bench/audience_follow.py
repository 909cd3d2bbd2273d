#!/usr/bin/env python
"""A following audience's periodic sync: incremental (what changed since the last sync) against full (every member
read, decided and hashed), side by side in one run (docs/decisions/0049-incremental-follow-sync.md).

Per engine (SQLite, PostgreSQL), not timed: a fresh database, `--members` people resolved from one identify each
(e-mail, phone, first and last name), all of them members of one segment (member rows written as the segment
engine writes them), and two file audiences following it (e-mail, phone and name: the rows are recorded, uploaded
nowhere), each synced twice (the first sync is the full upload; the second leaves a base the third can use).

Then `--rounds` times: `--changed` (default 1 %) of the members change their name and phone (identify events,
resolved), and, timed, audience `inc` syncs as the worker task does (`sync_followed(..., incremental=True)`) and
audience `full` syncs as before (a full pass, the baseline). Both send the same removals and additions. Prints the
seconds of each and their ratio; writes bench/results/audience_follow-<engine>.json.

    python bench/audience_follow.py                                   # 20,000 members, both engines
    python bench/audience_follow.py --members 5000 --engines sqlite
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, FreshDB, log, make_tmpdir, write_json  # noqa: E402

BATCH = 2000


def send_resolve(engine, ws_id: str, messages: list[dict]) -> None:
    from chorus import workspaces
    from chorus.collect import ingest
    from chorus.collect.messages import Event, normalise
    from chorus.identity.resolver import Resolver

    at = datetime.now(UTC)
    for i in range(0, len(messages), BATCH):
        with engine.begin() as conn:
            src = workspaces.internal_source(conn, ws_id, "server", "bench")
            evs = [normalise(m, received_at=at, source_kind=src.kind) for m in messages[i : i + BATCH]]
            assert all(isinstance(e, Event) for e in evs)
            ingest.store(conn, src, evs, [], at)
    Resolver(engine).drain()


def identify(i: int, n: int, when: datetime) -> dict:
    return {"type": "identify", "userId": f"u{i}", "messageId": f"m{i}-{n}", "timestamp": when.isoformat(),
            "traits": {"email": f"p{i}@example.com", "phone": f"+3161{(i * 7 + n) % 10**7:07d}",
                       "firstName": f"F{n}", "lastName": f"L{i}"}}  # fmt: skip


def run_engine(eng: str, args, tmpdir: Path) -> dict:
    from chorus import workspaces
    from chorus.messaging.audiences import store, sync
    from chorus.messaging.audiences.settings import validate_audience
    from chorus.segments import rules
    from chorus.segments import store as segment_store
    from chorus.store.db import create_engine, upgrade
    from chorus.timeutil import utcnow

    rng = random.Random(args.seed)
    with FreshDB(eng, "audfollow", tmpdir) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws_id = workspaces.create(engine, "bench")["id"]
        t0 = time.perf_counter()
        start = datetime(2026, 1, 1, tzinfo=UTC)
        send_resolve(engine, ws_id, [identify(i, 0, start) for i in range(args.members)])
        with engine.begin() as conn:
            pids = sorted(store.owners(conn, ws_id, [f"user_id:u{i}" for i in range(args.members)]).values())
            rule = rules.parse({"trait": {"name": "plan", "equals": "pro"}})  # the rule is not run here
            segment_store.save(conn, ws_id, "s", "S", rule, utcnow())
        for i in range(0, len(pids), BATCH):
            with engine.begin() as conn:
                segment_store.enter(conn, ws_id, "s", pids[i : i + BATCH], utcnow(), "event")
        for name in ("inc", "full"):
            body = {"name": name, "provider": "file", "identifiers": ["email", "phone", "name"],
                    "source": {"segment": "s", "interval_seconds": 300}}  # fmt: skip
            store.create(engine, ws_id, validate_audience(body, {}), utcnow())
        clock = [utcnow()]

        def follow(name: str, incremental: bool) -> tuple[float, dict]:
            with engine.connect() as conn:
                w = workspaces.get(conn, ws_id)
            began = time.perf_counter()
            got = sync.sync_followed(engine, w, name, clock=lambda: clock[0], incremental=incremental)
            return time.perf_counter() - began, got

        for _ in range(2):
            clock[0] += timedelta(minutes=10)
            for name in ("inc", "full"):
                follow(name, name == "inc")
        log(f"{eng}: {args.members} members set up in {time.perf_counter() - t0:.1f} s")

        rounds = []
        for r in range(1, args.rounds + 1):
            changed = rng.sample(range(args.members), max(1, round(args.members * args.changed)))
            send_resolve(engine, ws_id, [identify(i, r, start + timedelta(days=r)) for i in changed])
            clock[0] += timedelta(minutes=10)
            inc_s, inc = follow("inc", True)
            full_s, full = follow("full", False)
            assert inc["follow_pass"]["pass"] == "incremental", inc["follow_pass"]
            for key in ("added", "removed", "unchanged", "skipped"):
                assert inc[key] == full[key], (key, inc[key], full[key])
            rounds.append({"changed": len(changed), "incremental_s": round(inc_s, 3), "full_s": round(full_s, 3),
                           "rows_built_incremental": inc["follow_pass"]["rows_built"],
                           "rows_built_full": full["follow_pass"]["rows_built"], "added": inc["added"],
                           "removed": inc["removed"]})  # fmt: skip
            log(f"{eng} round {r}: {len(changed)} changed: incremental {inc_s:.3f} s "
                f"({inc['follow_pass']['rows_built']} rows built), full {full_s:.3f} s "
                f"({full['follow_pass']['rows_built']} rows built); added {inc['added']}, removed {inc['removed']}")
        engine.dispose()
    inc_med = statistics.median(x["incremental_s"] for x in rounds)
    full_med = statistics.median(x["full_s"] for x in rounds)
    return {"engine": eng, "members": args.members, "changed_share": args.changed, "rounds": rounds,
            "incremental_median_s": inc_med, "full_median_s": full_med,
            "speedup": round(full_med / inc_med, 1) if inc_med else None}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=20_000)
    ap.add_argument("--changed", type=float, default=0.01, help="share of the members changed between two syncs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    tmpdir = make_tmpdir()
    out = []
    for eng in args.engines.split(","):
        res = run_engine(eng, args, tmpdir)
        out.append(res)
        write_json(RESULTS_DIR / f"audience_follow-{eng}.json", res)
    print(f"{'engine':<11} {'members':>8} {'changed':>8} {'incremental s':>14} {'full s':>8} {'speedup':>8}")
    for res in out:
        changed = res["rounds"][0]["changed"]
        print(f"{res['engine']:<11} {res['members']:>8} {changed:>8} {res['incremental_median_s']:>14.3f} "
              f"{res['full_median_s']:>8.3f} {res['speedup']:>7}x")


if __name__ == "__main__":
    main()
