#!/usr/bin/env python
"""Lifetime-value fitting benchmark: chorus.analytics.lifetime against lifetimes 0.11.3 on the same customers.

1. simulate N customers (default 1,000,000) from a BG/NBD process with known parameters, in days: a cohort whose
   first purchases spread over a year (T uniform on 1..365 days), purchase rate λ ~ Gamma(r, α), drop-out
   probability p ~ Beta(a, b) after each repeat purchase; recency rounded to whole days, as a daily summary
   would give it (same-day repeat purchases are not merged, so a few customers have x > 0 and recency 0).
   Spend: ν ~ Gamma(q, v), each purchase ~ Gamma(p, ν), m = the mean of the x repeat purchases;
2. fit BG/NBD + Gamma-Gamma with chorus (`fit_bgnbd`, `fit_gamma_gamma`) and with lifetimes (`BetaGeoFitter`,
   `GammaGammaFitter`) on the same arrays, one after the other in this process; optionally (`--lifetimes-weighted`)
   lifetimes again on the distinct patterns with their counts as `weights`, the best a lifetimes user can do;
3. a 12-month CLV for every customer with both (lifetimes `freq="D"`, chorus `time_unit_days=1`).

Prints the seconds of each, both sets of parameters, the true ones, and the largest relative difference between
chorus and lifetimes (parameters and CLV). Writes bench/results/analytics-clv.json.

Timing notes: lifetimes' `fit` also computes a Hessian with autograd (for standard errors), which chorus does not;
the JSON keeps lifetimes' optimiser time apart (`lifetimes.*.minimize_s`) so the two can be compared either way.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from common import RESULTS_DIR, log, write_json  # noqa: E402

from chorus.analytics import lifetime  # noqa: E402

# CDNOW's published parameters (weeks), with alpha converted to days: 4.414 weeks × 7
TRUE_BGNBD = {"r": 0.243, "alpha": 30.898, "a": 0.793, "b": 2.426}
TRUE_GG = {"p": 6.25, "q": 3.74, "v": 15.44}
HORIZON_DAYS = 365


def simulate(n: int, seed: int) -> dict[str, np.ndarray]:
    """(frequency, recency, T, monetary_value) of n customers of a BG/NBD + Gamma-Gamma process, in days."""
    rng = np.random.default_rng(seed)
    r, alpha, a, b = (TRUE_BGNBD[k] for k in ("r", "alpha", "a", "b"))
    lam = rng.gamma(r, 1.0 / alpha, n)
    drop = rng.beta(a, b, n)
    T = rng.integers(1, HORIZON_DAYS + 1, n).astype(np.float64)
    N = rng.poisson(lam * T)  # purchases in (0, T] had the customer stayed alive
    D = rng.geometric(drop)  # drops out right after its D-th repeat purchase
    x = np.minimum(N, D)
    pos = x > 0
    # the x-th of N uniform purchase times on (0, T): T · Beta(x, N − x + 1), rounded to a whole day
    t_x = np.zeros(n)
    t_x[pos] = np.round(T[pos] * rng.beta(x[pos], N[pos] - x[pos] + 1))
    p, q, v = (TRUE_GG[k] for k in ("p", "q", "v"))
    nu = rng.gamma(q, 1.0 / v, n)
    m = np.zeros(n)
    m[pos] = rng.gamma(p * x[pos], 1.0 / nu[pos]) / x[pos]
    return {"frequency": x.astype(np.float64), "recency": t_x, "T": T, "monetary_value": m}


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run_chorus(d: dict) -> dict:
    bg, t_bg = _timed(lifetime.fit_bgnbd, d["frequency"], d["recency"], d["T"])
    gg, t_gg = _timed(lifetime.fit_gamma_gamma, d["frequency"], d["monetary_value"])
    clv, t_clv = _timed(lifetime.customer_lifetime_value, bg, gg, d["frequency"], d["recency"], d["T"],
                        d["monetary_value"], months=12, discount_rate=0.01, time_unit_days=1)  # fmt: skip
    return {
        "bgnbd_s": t_bg, "gamma_gamma_s": t_gg, "fit_s": t_bg + t_gg, "clv_s": t_clv,
        "bgnbd": {"r": bg.r, "alpha": bg.alpha, "a": bg.a, "b": bg.b}, "bgnbd_log_likelihood": bg.log_likelihood,
        "bgnbd_patterns": bg.n_patterns, "bgnbd_iterations": bg.iterations,
        "gamma_gamma": {"p": gg.p, "q": gg.q, "v": gg.v}, "gamma_gamma_log_likelihood": gg.log_likelihood,
        "gamma_gamma_patterns": gg.n_patterns, "gamma_gamma_iterations": gg.iterations,
        "_clv": clv,
    }  # fmt: skip


class _MinimizeClock:
    """Times scipy.optimize.minimize inside lifetimes' fitters (the rest of `fit` is mostly the autograd Hessian)."""

    def __init__(self):
        import lifetimes.fitters as lf

        self.module = lf
        self.original = lf.minimize
        self.seconds = 0.0

    def __enter__(self):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        self.module.minimize = timed
        return self

    def __exit__(self, *exc):
        self.module.minimize = self.original


def run_lifetimes(d: dict, weighted: bool) -> dict:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lifetimes import BetaGeoFitter, GammaGammaFitter

        x, t_x, T, m = d["frequency"], d["recency"], d["T"], d["monetary_value"]
        rep = x > 0
        out: dict = {}
        if weighted:  # the distinct patterns and their counts, as lifetimes' docs suggest for large data
            pat, w = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
            bg_args = (pat[:, 0], pat[:, 1], pat[:, 2], w)
            mpat, mw = np.unique(np.stack([x[rep], m[rep]], axis=1), axis=0, return_counts=True)
            gg_args = (mpat[:, 0], mpat[:, 1], mw)
        else:
            bg_args = (x, t_x, T)
            gg_args = (x[rep], m[rep])
        with _MinimizeClock() as clock:
            bgf, t_bg = _timed(BetaGeoFitter().fit, *bg_args)
            out["bgnbd_minimize_s"] = clock.seconds
            clock.seconds = 0.0
            ggf, t_gg = _timed(GammaGammaFitter().fit, *gg_args)
            out["gamma_gamma_minimize_s"] = clock.seconds
        out.update({"bgnbd_s": t_bg, "gamma_gamma_s": t_gg, "fit_s": t_bg + t_gg,
                    "bgnbd": {k: float(bgf.params_[k]) for k in ("r", "alpha", "a", "b")},
                    "gamma_gamma": {k: float(ggf.params_[k]) for k in ("p", "q", "v")}})  # fmt: skip
        if not weighted:
            s = {k: pd.Series(v) for k, v in d.items()}
            clv, t_clv = _timed(ggf.customer_lifetime_value, bgf, s["frequency"], s["recency"], s["T"],
                                s["monetary_value"], time=12, discount_rate=0.01, freq="D")  # fmt: skip
            out["clv_s"] = t_clv
            out["_clv"] = clv.to_numpy()
    return out


def max_rel_diff(ours: dict, theirs: dict) -> float:
    return max(abs(ours[k] - theirs[k]) / abs(theirs[k]) for k in theirs)


def run(customers: int = 1_000_000, seed: int = 7, lifetimes: bool = True, lifetimes_weighted: bool = False) -> dict:
    log(f"simulating {customers:,} customers (seed {seed})")
    d, t_sim = _timed(simulate, customers, seed)
    rep = int((d["frequency"] > 0).sum())
    log(f"simulated in {t_sim:.1f}s: {rep:,} with repeat purchases")
    doc: dict = {"customers": customers, "seed": seed, "repeat_customers": rep, "simulate_s": t_sim,
                 "true": {"bgnbd": TRUE_BGNBD, "gamma_gamma": TRUE_GG, "time_unit": "day"}}  # fmt: skip
    log("chorus: fit_bgnbd + fit_gamma_gamma + CLV")
    doc["chorus"] = run_chorus(d)
    log(f"chorus: fit {doc['chorus']['fit_s']:.2f}s")
    if lifetimes:
        log("lifetimes: BetaGeoFitter + GammaGammaFitter + CLV on every row")
        doc["lifetimes"] = run_lifetimes(d, weighted=False)
        log(f"lifetimes: fit {doc['lifetimes']['fit_s']:.2f}s")
    if lifetimes_weighted:
        log("lifetimes on the distinct patterns with weights")
        doc["lifetimes_weighted"] = run_lifetimes(d, weighted=True)
        log(f"lifetimes weighted: fit {doc['lifetimes_weighted']['fit_s']:.2f}s")
    ours = doc["chorus"]
    clv_ours = ours.pop("_clv")
    for name in ("lifetimes", "lifetimes_weighted"):
        if name not in doc:
            continue
        other = doc[name]
        other["max_rel_diff_params"] = max(max_rel_diff(ours["bgnbd"], other["bgnbd"]),
                                           max_rel_diff(ours["gamma_gamma"], other["gamma_gamma"]))  # fmt: skip
        other["speedup_fit"] = other["fit_s"] / ours["fit_s"]
        if "_clv" in other:
            clv = other.pop("_clv")
            other["max_rel_diff_clv"] = float(np.max(np.abs(clv_ours - clv) / np.abs(clv)))
            other["speedup_clv"] = other["clv_s"] / ours["clv_s"]
    return doc


def _print(doc: dict) -> None:
    names = [n for n in ("chorus", "lifetimes", "lifetimes_weighted") if n in doc]
    keys = ["r", "alpha", "a", "b", "p", "q", "v"]

    def params(res):
        return {**res["bgnbd"], **res["gamma_gamma"]}

    truth = {**doc["true"]["bgnbd"], **doc["true"]["gamma_gamma"]}
    print(f"\n{doc['customers']:,} customers ({doc['repeat_customers']:,} with repeat purchases), seed {doc['seed']}; "
          f"chorus saw {doc['chorus']['bgnbd_patterns']:,} BG/NBD and {doc['chorus']['gamma_gamma_patterns']:,} "
          "Gamma-Gamma patterns\n")  # fmt: skip
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, key in (("BG/NBD fit s", "bgnbd_s"), ("Gamma-Gamma fit s", "gamma_gamma_s"), ("fits s", "fit_s"),
                       ("12-month CLV s", "clv_s")):  # fmt: skip
        print(f"| {label} | " + " | ".join(f"{doc[n][key]:.2f}" if key in doc[n] else "" for n in names) + " |")
    for n in names[1:]:
        print(f"| {n} optimiser only (no Hessian) s | " + " | ".join(
            f"{doc[n]['bgnbd_minimize_s'] + doc[n]['gamma_gamma_minimize_s']:.2f}" if m == n else "" for m in names
        ) + " |")  # fmt: skip
    print("\n| param | true | " + " | ".join(names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    for k in keys:
        print(f"| {k} | {truth[k]:g} | " + " | ".join(f"{params(doc[n])[k]:.6f}" for n in names) + " |")
    for n in names[1:]:
        o = doc[n]
        line = f"\n{n}: fit {o['speedup_fit']:.1f}x slower than chorus; max relative difference of the parameters "
        line += f"{o['max_rel_diff_params']:.2e}"
        if "max_rel_diff_clv" in o:
            line += f"; CLV {o['speedup_clv']:.1f}x slower, max relative difference {o['max_rel_diff_clv']:.2e}"
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=1_000_000, help="simulated customers (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-lifetimes", action="store_true", help="chorus only (lifetimes not installed)")
    ap.add_argument("--lifetimes-weighted", action="store_true",
                    help="also fit lifetimes on the distinct patterns with their counts as weights")  # fmt: skip
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args(argv)
    doc = run(args.customers, args.seed, lifetimes=not args.no_lifetimes, lifetimes_weighted=args.lifetimes_weighted)
    write_json(Path(args.out) / "analytics-clv.json", doc)
    _print(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
