#!/usr/bin/env python
"""Offline import on SQLite, alone and while a worker resolves: `chorus import events` of one store file into a
fresh database, timed (1) with nothing else running and (2) with a `chorus worker` process resolving the imported
events as they arrive (what happens when a brand imports a POS history into a running installation).

Per run, in one invocation (same file, same code, fresh database each time):

* import alone: seconds of `chorus import events`; then a worker is started and drains the backlog (resolve time);
* import + worker: a `chorus worker` is running before the import starts; seconds of the import, and seconds until
  the last event is resolved (from the import's start);
* the ratio of the two import times (the slowdown from sharing SQLite's single write lock).

The file is a deterministic (seeded) CSV of store receipts: `--rows` rows for `--people` customers identified by
email and loyalty card, one receipt per row with a decimal total.

Prints a table and writes bench/results/import-contention.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ChorusServer,
    FreshDB,
    Poller,
    add_run_args,
    chorus_cmd,
    cpu_seconds,
    create_workspace,
    db_upgrade,
    log,
    make_tmpdir,
    snapshot_code,
    system_cpu,
    write_json,
)

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def make_file(path: Path, rows: int, people: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["receipt_no", "timestamp", "email", "loyalty_id", "store_id", "total"])
        for i in range(rows):
            p = rng.randrange(people)
            t = EPOCH + timedelta(seconds=rng.randrange(365 * 86_400))
            w.writerow([f"R{i:08d}", t.strftime("%Y-%m-%d %H:%M:%S"), f"customer{p}@example.com", f"L{p:07d}",
                        f"S{rng.randrange(40):02d}", f"{rng.uniform(5, 300):.2f}"])  # fmt: skip


def run_import(url: str, path: Path) -> tuple[float, dict]:
    import orjson

    t0 = time.perf_counter()
    out = subprocess.run(
        [*chorus_cmd(), "import", "events", str(path), "--source", "store", "-w", "bench", "--db", url, "--json"],
        capture_output=True,
    )
    took = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise RuntimeError(f"import failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    return took, orjson.loads(out.stdout)


def wait_resolved(db: FreshDB, t0: float, timeout: float = 3600) -> float:
    poll = Poller(db)
    try:
        deadline = time.monotonic() + timeout
        while poll.any_pending():
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not resolve the import in time")
            time.sleep(0.25)
        return time.perf_counter() - t0
    finally:
        poll.close()


def one_run(label: str, path: Path, tmpdir: Path, with_worker: bool) -> dict:
    res: dict = {"label": label}
    with FreshDB("sqlite", label, tmpdir) as db:
        db_upgrade(db.url)
        create_workspace(db.url)
        worker = None
        if with_worker:
            worker = ChorusServer(db.url, tmpdir / f"{label}-worker.log", mode="worker")
            worker.wait_ready()
        cpu0, wall0 = system_cpu(), time.perf_counter()
        try:
            log(f"[{label}] importing")
            took, out = run_import(db.url, path)
            res["import_s"] = round(took, 2)
            res["imported"] = out["imported"]
            log(f"[{label}] import: {took:.1f}s ({out['imported']:,} events)")
            t0 = time.perf_counter()
            if worker is None:  # the backlog left by the import alone, resolved by a worker started now
                worker = ChorusServer(db.url, tmpdir / f"{label}-worker.log", mode="worker")
                worker.wait_ready()
                res["resolve_after_s"] = round(wait_resolved(db, t0), 2)
                log(f"[{label}] backlog resolved in {res['resolve_after_s']:.1f}s after the import")
            else:
                res["resolved_s"] = round(took + wait_resolved(db, t0), 2)
                log(f"[{label}] every event resolved {res['resolved_s']:.1f}s after the import started")
            res["worker_cpu_s"] = round(cpu_seconds(worker.pid), 1)
        finally:
            if worker is not None:
                worker.stop()
        cpu1 = system_cpu()
        res["wall_s"] = round(time.perf_counter() - wall0, 1)
        res["machine_busy_s"] = round(cpu1[0] - cpu0[0], 1)  # CPU seconds of the whole machine: ~2 x wall = full
        res["steal_s"] = round(cpu1[1] - cpu0[1], 1)
        res["db_mb"] = round(db.size_mb() or 0, 1)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows in the import file (default 100,000)")
    ap.add_argument("--people", type=int, default=20_000, help="distinct customers (default 20,000)")
    ap.add_argument("--repeat", type=int, default=1, help="run both variants this many times, alternating")
    add_run_args(ap, engines=False, out_help="directory for import-contention.json")  # SQLite only
    args = ap.parse_args(argv)

    tmpdir = make_tmpdir()
    code = snapshot_code(tmpdir, args.code)
    log(f"code: snapshot of {code['source']} (HEAD {code['git_head']}, files sha256 {code['sha256']})")
    path = tmpdir / "receipts.csv"
    make_file(path, args.rows, args.people, args.seed)
    log(f"file: {args.rows:,} rows, {args.people:,} customers, {path.stat().st_size / 2**20:.1f} MB")
    runs = []
    try:
        for i in range(args.repeat):
            runs.append(one_run(f"alone{i}", path, tmpdir, with_worker=False))
            runs.append(one_run(f"worker{i}", path, tmpdir, with_worker=True))
    finally:
        shutil.rmtree(code["snapshot"], ignore_errors=True)
        for f in tmpdir.glob("*"):
            if f.is_file():
                f.unlink()
        tmpdir.rmdir()
    alone = [r for r in runs if r["label"].startswith("alone")]
    both = [r for r in runs if r["label"].startswith("worker")]
    doc = {"config": {"rows": args.rows, "people": args.people, "seed": args.seed, "cores": os.cpu_count(),
                      "python": sys.version.split()[0], "started": datetime.now(UTC).isoformat()},
           "code": code, "runs": runs}  # fmt: skip
    write_json(Path(args.out) / "import-contention.json", doc)
    print("| run | import alone s | backlog resolved after s | import with worker s | all resolved s | slowdown |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i, (a, b) in enumerate(zip(alone, both, strict=True)):
        print(f"| {i + 1} | {a['import_s']:.1f} | {a['resolve_after_s']:.1f} | {b['import_s']:.1f} | "
              f"{b['resolved_s']:.1f} | {b['import_s'] / a['import_s']:.2f}x |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
