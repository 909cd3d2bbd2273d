#!/usr/bin/env python
"""The engine's batch (``segments.engine.recompute``): per segment, the batch on the SQL compiler beside the
person-by-person batch it replaces (``batch_step(compiled=False)``: the reference evaluator for every profile), on
the same data, in the same run.

The workload is ``bench/segments.py``'s (``--profiles`` N profiles, 10·N events, traits, zones, consent, computed
values, messages, a list) and its 20 segments, saved as definitions. For each segment, in dependency order, from no
members: the person-by-person batch, then (its members and timers deleted) the compiled batch, both in chunks
of 500 profiles as the worker runs them; both write entries, history, timeline events, feed changes and timers.
Then both again, with nothing left to change (a recompute on demand): the cost of reading and deciding alone.
Prints the seconds of each, and whether both left the same members and the same timers.

    python bench/segments_batch.py                        # 500 profiles, both engines
    python bench/segments_batch.py --profiles 5000 --segments gold,viewed_laptops_7d

``--together``: the 20 segments pending at once, computed as the worker does now (``engine.batch_many``: one
chunk of all of them per step, one ``members_many`` query a chunk) beside one segment at a time in dependency
order (``batch_step`` of each until it is complete: one query a chunk and segment), both from empty and again with
nothing left to change; prints the seconds and whether both left the same members and timers.

    python bench/segments_batch.py --together --profiles 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402

import segments as workload  # noqa: E402
from chorus import workspaces  # noqa: E402
from chorus.segments import engine as seg  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments import store  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.store.tables import segment_members, segment_timers, segments  # noqa: E402


def batch(engine, ws: str, sid: str, at, compiled: bool) -> float:
    """Seconds of a whole batch of ``sid`` (every chunk) from the beginning."""
    with engine.begin() as conn:
        conn.execute(segments.update().where(segments.c.workspace_id == ws, segments.c.id == sid)
                     .values(batch_after=None, batch_version=None))  # fmt: skip
    t = time.perf_counter()
    while not seg.batch_step(engine, ws, sid, 500, lambda: at, compiled=compiled)[1]:
        pass
    return time.perf_counter() - t


def state(engine, ws: str, sid: str) -> tuple[set, dict]:
    with engine.connect() as conn:
        m = set(conn.execute(sa.select(segment_members.c.profile_id).where(
            segment_members.c.workspace_id == ws, segment_members.c.segment_id == sid)).scalars())  # fmt: skip
        t = dict(conn.execute(sa.select(segment_timers.c.profile_id, segment_timers.c.due_at).where(
            segment_timers.c.workspace_id == ws, segment_timers.c.segment_id == sid)).all())  # fmt: skip
    return m, t


def forget(engine, ws: str, sid: str) -> None:
    """The segment empty again (members and timers; its history stays), for the second computation."""
    with engine.begin() as conn:
        for t in (segment_members, segment_timers):
            conn.execute(t.delete().where(t.c.workspace_id == ws, t.c.segment_id == sid))


def run(engine_name: str, n: int, seed: int, only: set[str] | None, tmp: Path) -> None:
    with FreshDB(engine_name, "segments-batch", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        workload.load(engine, ws, n, seed)
        order = r.check_references({sid: r.parse(rule) for sid, rule in workload.SEGMENTS.items()})
        rows = []
        with engine.begin() as conn:  # the workload's static list, as a definition refers to it
            store.save_list(conn, ws, "staff", "Staff", workload.NOW)
        for sid in order:
            with engine.begin() as conn:
                store.save(conn, ws, sid, sid, r.parse(workload.SEGMENTS[sid]), workload.NOW)
            if only and sid not in only and not any(sid in r.dependencies(r.parse(workload.SEGMENTS[o])).segments
                                                    for o in only):  # fmt: skip
                continue
            # the old path first, at NOW; the new one a microsecond later (its timeline events are new rows too)
            t_old = batch(engine, ws, sid, workload.NOW, compiled=False)
            old = state(engine, ws, sid)
            forget(engine, ws, sid)
            t_new = batch(engine, ws, sid, workload.NOW + timedelta(microseconds=1), compiled=True)
            new = state(engine, ws, sid)
            same_t = old[1] == new[1] or _same_timers(old[1], new[1])
            # again, with nothing to change (a recompute on demand): what reading and deciding cost alone
            a_old = batch(engine, ws, sid, workload.NOW + timedelta(microseconds=1), compiled=False)
            a_new = batch(engine, ws, sid, workload.NOW + timedelta(microseconds=1), compiled=True)
            rows.append((sid, len(new[0]), len(new[1]), t_old, t_new, a_old, a_new, old[0] == new[0], same_t))
            print(f"  {sid}: per person {t_old:.2f} s, compiled {t_new:.2f} s; again {a_old:.2f} s, {a_new:.2f} s",
                  flush=True)  # fmt: skip
        engine.dispose()
    print(f"\n{engine_name}: {n:,} profiles, {10 * n:,} events, chunks of 500")
    print("| segment | members | timers | from empty: per person s | compiled s | speed-up | again: per person s | "
          "compiled s | speed-up | same members | same timers |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for sid, k, nt, t_old, t_new, a_old, a_new, same_m, same_t in rows:
        print(f"| {sid} | {k:,} | {nt:,} | {t_old:.2f} | {t_new:.2f} | {t_old / t_new:.1f}× | {a_old:.2f} | "
              f"{a_new:.2f} | {a_old / a_new:.1f}× | {'yes' if same_m else 'no'} | {'yes' if same_t else 'no'} |")
    tot = [sum(x[i] for x in rows) for i in (3, 4, 5, 6)]
    print(f"| **all {len(rows)}** | | | **{tot[0]:.1f}** | **{tot[1]:.1f}** | **{tot[0] / tot[1]:.1f}×** | "
          f"**{tot[2]:.1f}** | **{tot[3]:.1f}** | **{tot[2] / tot[3]:.1f}×** | | |", flush=True)


def everything(engine, ws: str) -> tuple[dict, dict]:
    """Members and timers of every segment of the workspace."""
    m: dict[str, set] = {}
    t: dict[tuple, object] = {}
    with engine.connect() as conn:
        for sid, pid in conn.execute(sa.select(segment_members.c.segment_id, segment_members.c.profile_id).where(
                segment_members.c.workspace_id == ws)):  # fmt: skip
            m.setdefault(sid, set()).add(pid)
        for sid, pid, due in conn.execute(sa.select(segment_timers.c.segment_id, segment_timers.c.profile_id,
                                                    segment_timers.c.due_at).where(
                segment_timers.c.workspace_id == ws)):  # fmt: skip
            t[(sid, pid)] = due
    return m, t


def pending_again(engine, ws: str, empty: bool) -> None:
    """Every segment pending from its first profile (as after a change of rule); ``empty``: no members or timers."""
    with engine.begin() as conn:
        if empty:
            for t in (segment_members, segment_timers):
                conn.execute(t.delete().where(t.c.workspace_id == ws))
        conn.execute(segments.update().where(segments.c.workspace_id == ws).values(
            computed_version=None, batch_after=None, batch_version=None))  # fmt: skip


def one_at_a_time(engine, ws: str, order: list[str], at) -> float:
    t = time.perf_counter()
    for sid in order:
        while not seg.batch_step(engine, ws, sid, 500, lambda: at)[1]:
            pass
    return time.perf_counter() - t


def together(engine, ws: str, at) -> tuple[float, int]:
    t = time.perf_counter()
    steps = 0
    while seg.batch_many(engine, ws, 500, lambda: at).segments:
        steps += 1
    return time.perf_counter() - t, steps


def run_together(engine_name: str, n: int, seed: int, tmp: Path) -> None:
    """The 20 segments pending at once: one at a time, then together, from empty; then again, nothing to change
    (together first this time, so that neither always runs on a warmer cache)."""
    with FreshDB(engine_name, "segments-batch-many", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        workload.load(engine, ws, n, seed)
        order = r.check_references({sid: r.parse(rule) for sid, rule in workload.SEGMENTS.items()})
        with engine.begin() as conn:
            store.save_list(conn, ws, "staff", "Staff", workload.NOW)
            for sid in order:
                store.save(conn, ws, sid, sid, r.parse(workload.SEGMENTS[sid]), workload.NOW)
        at = workload.NOW  # each run a microsecond later: its timeline events are new rows too
        t_alone = one_at_a_time(engine, ws, order, at)
        alone = everything(engine, ws)
        print(f"  from empty, one at a time: {t_alone:.2f} s", flush=True)
        pending_again(engine, ws, empty=True)
        t_many, steps = together(engine, ws, at + timedelta(microseconds=1))
        many = everything(engine, ws)
        print(f"  from empty, together: {t_many:.2f} s ({steps} steps)", flush=True)
        pending_again(engine, ws, empty=False)
        a_many, _ = together(engine, ws, at + timedelta(microseconds=1))
        pending_again(engine, ws, empty=False)
        a_alone = one_at_a_time(engine, ws, order, at + timedelta(microseconds=1))
        print(f"  again: together {a_many:.2f} s, one at a time {a_alone:.2f} s", flush=True)
        same_m = alone[0] == many[0]
        same_t = alone[1].keys() == many[1].keys() and all(
            abs(many[1][k] - alone[1][k]) <= timedelta(microseconds=1) for k in alone[1])  # fmt: skip
        members = sum(len(v) for v in many[0].values())
        engine.dispose()
    print(f"\n{engine_name}: {n:,} profiles, {10 * n:,} events, {len(order)} segments pending, chunks of 500; "
          f"{members:,} memberships, {len(many[1]):,} timers")  # fmt: skip
    print("| | one at a time s | together s | speed-up |\n|---|---:|---:|---:|")
    print(f"| from empty | {t_alone:.2f} | {t_many:.2f} | {t_alone / t_many:.1f}× |")
    print(f"| again | {a_alone:.2f} | {a_many:.2f} | {a_alone / a_many:.1f}× |")
    print(f"same members: {'yes' if same_m else 'NO'}; same timers: {'yes' if same_t else 'NO'}", flush=True)


def _same_timers(old: dict, new: dict) -> bool:
    """The timers are instants after the computation's ``now``: the two runs are a microsecond apart, so a rolling
    window's instant is too (a calendar instant is not)."""
    return old.keys() == new.keys() and all(abs(new[p] - old[p]) <= timedelta(microseconds=1) for p in old)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=500)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--segments", default="", help="only these (comma-separated; and what they refer to)")
    ap.add_argument("--together", action="store_true", help="all 20 pending: together vs one at a time")
    args = ap.parse_args()
    tmp = make_tmpdir()
    only = set(filter(None, args.segments.split(","))) or None
    for eng in args.engines.split(","):
        if args.together:
            run_together(eng, args.profiles, args.seed, tmp)
        else:
            run(eng, args.profiles, args.seed, only, tmp)


if __name__ == "__main__":
    main()
