#!/usr/bin/env python
"""One change of one person with a long history: the incremental engine's evaluation (``engine.Evaluator.person``)
of a store's usual segments, reading only what the rules can still look at (``segments.needs``, decision 0028)
beside reading the person's whole history, alternately, in the same run, on the same database.

The person has ``--events`` events over 180 days (the mix of ``bench/segments.py``: product views and cart adds
with properties, orders, page views, identifies, Chorus' own outbound records). The segments are windowed
behaviour over 1 to 30 days, a sum over 30 days, a channel condition over 7 days and a trait: what a change
re-evaluates most of the time. Prints, per engine, the median milliseconds of an evaluation each way and how many
events each read.

``--unbounded`` measures instead the conditions with no window (ever ordered, ordered 5 times, first and last
order, the number of channels, the last channel), answered from her activity summary (``segments.summary``,
decision 0046) beside the same evaluation without the summary (as for a profile stored before it: her events are
read), alternately. Her profile state is folded from her events first (``profiles.state``), as the resolver would
have (the bench store writes profiles by SQL).

    python bench/segments_person.py                       # 10,000 events, both engines
    python bench/segments_person.py --events 50000 --engines postgresql
    python bench/segments_person.py --unbounded
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sqlalchemy as sa  # noqa: E402
from common import FreshDB, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.profiles import state as pstate  # noqa: E402
from chorus.segments import engine as seg  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments import store  # noqa: E402
from chorus.segments.evaluate import evaluate  # noqa: E402
from chorus.segments.summary import Summary  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.store.tables import events, profiles  # noqa: E402
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
UNBOUNDED: dict[str, dict] = {
    "customer": {"performed": {"event": "Order Completed"}},
    "loyal": {"performed": {"event": "Order Completed", "times": {"gte": 5}}},
    "lapsed": {"last_time": {"event": "Order Completed", "more_than_ago": "60d"}},
    "new": {"first_time": {"event": "Order Completed", "within_last": "30d"}},
    "browser": {"aggregate": {"event": "Product Viewed", "function": "count", "gte": 100}},
    "omnichannel": {"channel_count": {"gte": 2}},
    "web_last": {"last_channel": {"equals": "web"}},
}  # fmt: skip


def fold_state(conn, ws: str, pid: str) -> None:
    """Her state's activity and channels folded from her events, as the resolver keeps them."""
    st = pstate.empty()
    for payload in conn.execute(sa.select(events.c.payload).where(events.c.workspace_id == ws,
                                                                  events.c.profile_id == pid)).scalars():  # fmt: skip
        pstate.apply_event(st, payload, "user_id:bench")
    state = conn.execute(sa.select(profiles.c.state).where(profiles.c.workspace_id == ws,
                                                           profiles.c.id == pid)).scalar_one()  # fmt: skip
    conn.execute(profiles.update().where(profiles.c.workspace_id == ws, profiles.c.id == pid).values(
        state={**state, "activity": st["activity"], "channels": st["channels"]}))  # fmt: skip


def run(engine_name: str, n_events: int, rounds: int, seed: int, tmp: Path, unbounded: bool = False) -> None:
    segments = UNBOUNDED if unbounded else SEGMENTS
    modes = ("summary", "events") if unbounded else ("needs", "full")
    with FreshDB(engine_name, "segperson", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        load(engine, ws, 1, seed)  # profile p00000000 with its traits and 10 events
        pid = "p00000000"
        with engine.begin() as conn:
            more_events(conn, ws, seed, 0, 10, n_events)  # her other events, drawn as bench/segments.py draws
            for sid, rule in segments.items():
                store.save(conn, ws, sid, sid, r.parse(rule), NOW)
            if unbounded:
                fold_state(conn, ws, "p00000000")
        if engine_name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("ANALYZE")
        sids = set(segments)
        took: dict[str, list[float]] = {m: [] for m in modes}
        read: dict[str, int] = {}
        members: dict[str, set] = {}
        for i in range(2 * rounds):
            mode = modes[i % 2]
            with engine.begin() as conn, _no_summary(mode == "events"):
                ev = seg.Evaluator(conn, ws, NOW)
                if mode == "full":
                    ev.needs = lambda ids: None  # the whole person, as before decision 0028
                t = time.perf_counter()
                ev.person(pid, sids, "event")
                took[mode].append(time.perf_counter() - t)
                person = seg.load_person(conn, ev.ws, pid, ev.needs(sids))
                read[mode] = len(person.events) if person else 0
                members[mode] = {sid for sid in sids if evaluate(r.parse(segments[sid]), person, NOW).value}
                if unbounded:
                    conn.rollback()  # each round decides from the same memberships (none)
        engine.dispose()
        med = {m: statistics.median(v) * 1000 for m, v in took.items()}
        a, b = modes
        same = "same members" if members[a] == members[b] else f"DIFFERENT members {members[a]} {members[b]}"
        print(f"{engine_name}: {n_events:,} events, {len(segments)} segments, median of {rounds}: "
              f"{a} {med[a]:.1f} ms ({read[a]:,} events read), "
              f"{b} {med[b]:.1f} ms ({read[b]:,} events read), x{med[b] / med[a]:.1f}; {same} "
              f"({', '.join(sorted(members[a]))})", flush=True)  # fmt: skip


@contextlib.contextmanager
def _no_summary(on: bool):
    """Her summary unread (as for a profile stored before activity was kept): the same code path, her events."""
    if not on:
        yield
        return
    saved = Summary.of
    Summary.of = classmethod(lambda cls, state: None)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        Summary.of = saved  # type: ignore[method-assign]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--unbounded", action="store_true", help="conditions with no window: summary against events")
    args = ap.parse_args()
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        run(eng, args.events, args.rounds, args.seed, tmp, args.unbounded)


if __name__ == "__main__":
    main()
