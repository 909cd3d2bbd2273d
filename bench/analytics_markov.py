#!/usr/bin/env python
"""Markov attribution benchmark: chorus.analytics.markov (exact) against ChannelAttribution's markov_model.

1. A deterministic (seeded) workload of N journeys over C channels ("ch00".."ch09"): lengths uniform in 1-8,
   channels drawn by popularity with a tendency to repeat the previous one, conversion probability
   rising with the distinct channels touched, and a conversion value that depends on the last channel.
2. Aggregated to distinct paths: one row per path with its conversions, nulls and total value, paths written as
   ChannelAttribution expects them ("ch01 > ch03 > ch01"), saved to a Parquet file (not timed).
3. Each side runs in its own fresh Python process that loads the file, then times one order-1 fit on the same
   rows: (a) chorus `fit_markov(paths, conversions, values, nulls, sep=">")`, the public string-input form (it also
   times `fit_markov_encoded` on the integer codes, the fast input form, as a second figure); (b)
   `ChannelAttribution.markov_model(..., order=1, var_value, var_null, ncore=1, seed)` with its default
   simulation settings. Peak memory is the process' VmHWM (so the C++ side is counted too), printed with the RSS
   it had just before the fit (libraries and the loaded data).
4. Prints both figures side by side and the L1 distance between the two attributions over total conversions
   (ChannelAttribution simulates, so a few percent are its Monte-Carlo error, not a disagreement).

ChannelAttribution (GPL-3) is only ever run here and in the tests, never imported by chorus:
`pip install matplotlib channelattribution==2.2.5` (it compiles C++; about a minute).

    python bench/analytics_markov.py                      # 1,000,000 journeys
    python bench/analytics_markov.py --journeys 100000 --no-ca
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, log, write_json  # noqa: E402

MAX_LEN = 8


# --- workload -------------------------------------------------------------------------------------------------
def generate(journeys: int, channels: int, seed: int) -> dict:
    """Aggregated journeys: path strings, integer codes (CSR) and per-path conversions / nulls / value."""
    rng = np.random.default_rng(seed)
    names = [f"ch{i:02d}" for i in range(channels)]
    popularity = 1.0 / np.arange(1, channels + 1) ** 0.4
    popularity /= popularity.sum()
    lengths = rng.integers(1, MAX_LEN + 1, size=journeys)
    seq = np.full((journeys, MAX_LEN), -1, dtype=np.int64)
    seq[:, 0] = rng.choice(channels, size=journeys, p=popularity)
    for j in range(1, MAX_LEN):
        fresh = rng.choice(channels, size=journeys, p=popularity)
        repeat = rng.random(journeys) < 0.15
        step = np.where(repeat, seq[:, j - 1], fresh)
        seq[:, j] = np.where(j < lengths, step, -1)
    # conversion: logistic in the distinct channels touched; value: lognormal scaled by the last channel
    effect = rng.normal(0.0, 0.6, channels)
    touched = np.zeros((journeys, channels), dtype=bool)
    for j in range(MAX_LEN):
        ok = seq[:, j] >= 0
        touched[np.flatnonzero(ok), seq[ok, j]] = True
    logit = -2.2 + touched.astype(np.float64) @ effect + 0.15 * lengths
    converted = rng.random(journeys) < 1.0 / (1.0 + np.exp(-logit))
    last = seq[np.arange(journeys), lengths - 1]
    value_scale = rng.uniform(20, 120, channels)
    value = np.where(converted, rng.lognormal(0.0, 0.5, journeys) * value_scale[last], 0.0)

    # aggregate to distinct paths (a path as base-(C+1) digits)
    key = np.zeros(journeys, dtype=np.int64)
    for j in range(MAX_LEN):
        key = key * (channels + 1) + (seq[:, j] + 1)
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.ravel()
    conv = np.bincount(inv, weights=converted, minlength=uniq.size)
    null = np.bincount(inv, weights=~converted, minlength=uniq.size)
    val = np.bincount(inv, weights=value, minlength=uniq.size)
    rows = seq[first]
    row_len = lengths[first]
    codes = rows[rows >= 0]
    offsets = np.concatenate([[0], np.cumsum(row_len)])
    paths = [" > ".join(names[c] for c in r[:n]) for r, n in zip(rows.tolist(), row_len.tolist(), strict=True)]
    return {"names": names, "paths": paths, "codes": codes, "offsets": offsets, "conv": conv, "null": null,
            "value": val, "journeys": journeys}  # fmt: skip


def save(data: dict, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "path": data["paths"],
        "total_conversions": data["conv"].astype(np.int64),
        "total_null": data["null"].astype(np.int64),
        "total_conversion_value": data["value"],
    }
    table = pa.table(columns)
    pq.write_table(table, path)
    np.savez(path.with_suffix(".npz"), codes=data["codes"], offsets=data["offsets"], names=np.array(data["names"]))


# --- the measured processes -----------------------------------------------------------------------------------
def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _worker(side: str, data_path: Path, seed: int) -> dict:
    """Runs in the child process: load, measure RSS, time one fit, return figures and the attribution."""
    import pyarrow.parquet as pq

    out: dict = {"side": side}
    if side == "chorus":
        from chorus.analytics.markov import fit_markov, fit_markov_encoded

        t = pq.read_table(data_path)
        paths = t.column("path").to_pylist()
        conv = t.column("total_conversions").to_numpy()
        null = t.column("total_null").to_numpy()
        value = t.column("total_conversion_value").to_numpy()
        enc = np.load(data_path.with_suffix(".npz"))
        del t
        out["rss_before_mb"] = _rss_kb("VmRSS") / 1024
        t0 = time.perf_counter()
        res = fit_markov(paths, conv, values=value, nulls=null, order=1, sep=">")
        out["seconds"] = time.perf_counter() - t0
        out["peak_rss_mb"] = _rss_kb("VmHWM") / 1024
        t0 = time.perf_counter()
        fit_markov_encoded(enc["codes"], enc["offsets"], enc["names"].tolist(), conv, values=value, nulls=null)
        out["encoded_seconds"] = time.perf_counter() - t0
        out["channels"] = list(res.channels)
        out["conversions"] = res.conversions.tolist()
        out["values"] = res.values.tolist()
    else:
        import contextlib
        import io

        import pandas as pd
        from ChannelAttribution import markov_model

        df = pd.read_parquet(data_path)
        out["rss_before_mb"] = _rss_kb("VmRSS") / 1024
        buf = io.StringIO()
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(buf):
            res = markov_model(df, "path", "total_conversions", var_value="total_conversion_value",
                               var_null="total_null", order=1, ncore=1, seed=seed, verbose=True,
                               flg_pro=False)  # fmt: skip
        out["seconds"] = time.perf_counter() - t0
        out["peak_rss_mb"] = _rss_kb("VmHWM") / 1024
        out["log"] = buf.getvalue().strip().splitlines()
        out["channels"] = res["channel_name"].tolist()
        out["conversions"] = res["total_conversions"].tolist()
        out["values"] = res["total_conversion_value"].tolist()
    out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _run_side(side: str, data_path: Path, seed: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, __file__, "--worker", side, "--data", str(data_path), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _l1(a: dict, b: dict, key: str) -> float:
    ours = dict(zip(a["channels"], a[key], strict=True))
    theirs = dict(zip(b["channels"], b[key], strict=True))
    total = sum(ours.values())
    return sum(abs(ours.get(c, 0.0) - theirs.get(c, 0.0)) for c in set(ours) | set(theirs)) / total


def run(journeys: int = 1_000_000, channels: int = 10, seed: int = 7, with_ca: bool = True) -> dict:
    """Generate, aggregate, fit both sides (each in its own process) and compare. Returns the figures."""
    t0 = time.perf_counter()
    data = generate(journeys, channels, seed)
    log(f"generated {journeys:,} journeys -> {len(data['paths']):,} distinct paths in {time.perf_counter() - t0:.1f}s")
    result: dict = {
        "journeys": journeys, "channels": channels, "seed": seed, "distinct_paths": len(data["paths"]),
        "tokens": int(data["codes"].size), "total_conversions": float(data["conv"].sum()),
        "total_nulls": float(data["null"].sum()), "total_value": float(data["value"].sum()),
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chorus-bench-markov-") as tmp:
        path = Path(tmp) / "paths.parquet"
        save(data, path)
        del data
        result["chorus"] = _run_side("chorus", path, seed)
        log(f"chorus: {result['chorus']['seconds']:.2f}s, peak RSS {result['chorus']['peak_rss_mb']:.0f} MB")
        if with_ca:
            result["channelattribution"] = _run_side("channelattribution", path, seed)
            ca = result["channelattribution"]
            log(f"ChannelAttribution: {ca['seconds']:.2f}s, peak RSS {ca['peak_rss_mb']:.0f} MB")
            result["l1_conversions_over_total"] = _l1(result["chorus"], ca, "conversions")
            result["l1_value_over_total"] = _l1(result["chorus"], ca, "values")
    return result


def _print(res: dict) -> None:
    print(f"{res['journeys']:,} journeys, {res['channels']} channels -> {res['distinct_paths']:,} distinct paths "
          f"({res['tokens']:,} touchpoints), {res['total_conversions']:,.0f} conversions, "
          f"{res['total_nulls']:,.0f} nulls; order 1")  # fmt: skip
    print("| side | fit seconds | peak RSS MB | RSS before fit MB | peak - before MB |")
    print("| --- | --- | --- | --- | --- |")
    sides = [("chorus fit_markov (exact)", res["chorus"])]
    if "channelattribution" in res:
        sides.append(("ChannelAttribution markov_model", res["channelattribution"]))
    for name, s in sides:
        print(f"| {name} | {s['seconds']:.2f} | {s['peak_rss_mb']:.0f} | {s['rss_before_mb']:.0f} | "
              f"{s['peak_rss_mb'] - s['rss_before_mb']:.0f} |")  # fmt: skip
    print(f"chorus fit_markov_encoded (integer codes): {res['chorus']['encoded_seconds']:.2f} s")
    if "channelattribution" in res:
        print(f"L1(chorus - CA) / total conversions: {res['l1_conversions_over_total']:.4f}; "
              f"same for value: {res['l1_value_over_total']:.4f}")  # fmt: skip
        print(f"speed-up: {res['channelattribution']['seconds'] / res['chorus']['seconds']:.1f}x")
        for line in res["channelattribution"].get("log", []):
            print(f"  CA: {line}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--journeys", type=int, default=1_000_000)
    ap.add_argument("--channels", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-ca", action="store_true", help="skip ChannelAttribution")
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--worker", choices=["chorus", "channelattribution"], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.data, args.seed)))
        return 0
    res = run(args.journeys, args.channels, args.seed, with_ca=not args.no_ca)
    _print(res)
    write_json(args.out / "analytics-markov.json", res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
