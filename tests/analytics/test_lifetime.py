"""Lifetime value (chorus.analytics.lifetime): BG/NBD and Gamma-Gamma against the published CDNOW figures that
lifetimes 0.11.3 tests against, against formulas written out here, and the input checks.

The CDNOW files ship in the lifetimes wheel (MIT). They are test data only: they are read where pip installed the
package, found without importing lifetimes (its import depends on pkg_resources and old pandas behaviour). Without
them these tests skip, except under CI (CI=true), where they fail: `pip install lifetimes==0.11.3`.
"""

from __future__ import annotations

import importlib.util
import math
import os
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.optimize import check_grad
from scipy.special import gammaln, hyp2f1

from chorus.analytics import lifetime
from chorus.analytics.lifetime import (
    BGNBDParams,
    ConvergenceError,
    GammaGammaParams,
    customer_lifetime_value,
    expected_average_value,
    expected_purchases,
    expected_purchases_population,
    fit_bgnbd,
    fit_gamma_gamma,
    month_length,
    probability_alive,
)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CALIBRATION_END = date(1997, 9, 30)  # inclusive: the 39-week CDNOW calibration period

# Published values (Fader, Hardie & Lee 2005; Hardie's notes 004/025 spreadsheets; lifetimes' tests)
CDNOW_BGNBD = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
CDNOW_LL = -9582.4
CDNOW_GG = {"p": 6.25, "q": 3.74, "v": 15.44}


def lifetimes_dataset(name: str) -> Path:
    """A file of lifetimes/datasets, located through the installed package's directory without importing it.
    Skips when it is missing, but fails under CI."""
    try:
        spec = importlib.util.find_spec("lifetimes")
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "datasets" / name
        if path.is_file():
            return path
    message = f"lifetimes' {name} not found: `pip install lifetimes==0.11.3` (used as test data only)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def read_csv(name: str) -> dict[str, np.ndarray]:
    path = lifetimes_dataset(name)
    with path.open() as f:
        header = f.readline().strip().split(",")
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return {col: data[:, i] for i, col in enumerate(header)}


@pytest.fixture(scope="module")
def cdnow():
    """cdnow_customers_summary.csv: ID, frequency, recency, T (weeks), 2,357 customers."""
    return read_csv("cdnow_customers_summary.csv")


@pytest.fixture(scope="module")
def cdnow_money():
    """cdnow_customers_summary_with_transactions.csv: ID, x, t_x, T, zbar."""
    return read_csv("cdnow_customers_summary_with_transactions.csv")


@pytest.fixture(scope="module")
def bgnbd(cdnow):
    return fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"])


@pytest.fixture(scope="module")
def gg(cdnow_money):
    return fit_gamma_gamma(cdnow_money["x"], cdnow_money["zbar"])


# --- formulas written out independently of the module ---------------------------------------------------------------
def reference_bgnbd_ll(p: BGNBDParams, x, t_x, T) -> float:
    """Σ ln L_i, row by row, exactly as section 7 of Fader, Hardie & Lee (2005) writes it (no grouping)."""
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    total = 0.0
    for xi, ti, Ti in zip(x, t_x, T, strict=True):
        a1 = gammaln(r + xi) - gammaln(r) + r * math.log(alpha)
        a2 = gammaln(a + b) + gammaln(b + xi) - gammaln(b) - gammaln(a + b + xi)
        a3 = -(r + xi) * math.log(alpha + Ti)
        mix = math.exp(a3)
        if xi > 0:
            mix += math.exp(math.log(a) - math.log(b + xi - 1) - (r + xi) * math.log(alpha + ti))
        total += a1 + a2 + math.log(mix)
    return total


def reference_conditional_purchases(p: BGNBDParams, t, x, t_x, T) -> float:
    """Eq. 10, scalar, straight from the paper."""
    r, alpha, a, b = p.r, p.alpha, p.a, p.b
    num = (a + b + x - 1) / (a - 1)
    num *= 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, t / (alpha + T + t))
    den = 1 + (x > 0) * (a / (b + x - 1)) * ((alpha + T) / (alpha + t_x)) ** (r + x)
    return num / den


# --- BG/NBD on CDNOW ----------------------------------------------------------------------------------------------
def test_bgnbd_reproduces_the_published_cdnow_parameters_and_log_likelihood(cdnow, bgnbd):
    got = [bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b]
    np.testing.assert_array_almost_equal(got, list(CDNOW_BGNBD.values()), decimal=3)
    assert bgnbd.log_likelihood == pytest.approx(CDNOW_LL, abs=0.05)
    assert bgnbd.n_customers == 2357
    assert bgnbd.n_patterns < 2357  # compressed: 1,016 distinct (x, t_x, T)
    # the reported log-likelihood is the row-by-row total in weeks, not lifetimes' mean on its scaled time axis
    assert bgnbd.log_likelihood == pytest.approx(reference_bgnbd_ll(bgnbd, cdnow["frequency"], cdnow["recency"],
                                                                    cdnow["T"]), abs=1e-6)  # fmt: skip


def test_bgnbd_fit_is_a_maximum_of_the_reference_likelihood(cdnow, bgnbd):
    """A wrong hand-written gradient would stop the optimiser elsewhere: every nudge lowers the likelihood."""
    x, t_x, T = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    best = reference_bgnbd_ll(bgnbd, x, t_x, T)
    for name in ("r", "alpha", "a", "b"):
        for factor in (0.999, 1.001):
            nudged = BGNBDParams(**{**bgnbd.__dict__, name: getattr(bgnbd, name) * factor})
            assert reference_bgnbd_ll(nudged, x, t_x, T) < best


def test_bgnbd_time_unit_only_rescales_alpha(cdnow, bgnbd):
    days = fit_bgnbd(cdnow["frequency"], cdnow["recency"] * 7, cdnow["T"] * 7)
    assert [days.r, days.a, days.b] == pytest.approx([bgnbd.r, bgnbd.a, bgnbd.b], rel=1e-6)
    assert days.alpha == pytest.approx(bgnbd.alpha * 7, rel=1e-6)
    # ln L changes by the Jacobian of the time change: Σ x · ln 7
    assert days.log_likelihood == pytest.approx(bgnbd.log_likelihood - cdnow["frequency"].sum() * math.log(7))


def test_bgnbd_on_patterns_with_weights_equals_the_rows(cdnow, bgnbd):
    rows = np.stack([cdnow["frequency"], cdnow["recency"], cdnow["T"]], axis=1)
    patterns, counts = np.unique(rows, axis=0, return_counts=True)
    weighted = fit_bgnbd(patterns[:, 0], patterns[:, 1], patterns[:, 2], weights=counts)
    assert weighted.n_customers == 2357
    for name in ("r", "alpha", "a", "b", "log_likelihood"):
        assert getattr(weighted, name) == pytest.approx(getattr(bgnbd, name), rel=1e-9)


def test_bgnbd_gradient_matches_finite_differences(cdnow):
    P = lifetime._Patterns(cdnow["frequency"], cdnow["recency"], cdnow["T"], np.ones(cdnow["T"].size))
    scale = 1.0 / cdnow["T"].max()
    for theta in (np.full(4, 0.1), np.log([0.243, 4.414 / 38.86, 0.793, 2.426]), np.array([-1.0, 0.5, 1.0, -0.5])):
        err = check_grad(lambda th: lifetime._bgnbd_terms(th, P, P.uT * scale, P.ut * scale)[0],
                         lambda th: lifetime._bgnbd_terms(th, P, P.uT * scale, P.ut * scale)[1], theta)  # fmt: skip
        assert err < 1e-4 * max(1.0, np.abs(lifetime._bgnbd_terms(theta, P, P.uT * scale, P.ut * scale)[1]).max())


def test_penalizer_follows_lifetimes(cdnow, bgnbd):
    """lifetimes adds penalizer·Σθ² to the *mean* NLL with alpha on the time axis scaled to max(T) = 1; with
    penalizer_coef=0.01 its BetaGeoFitter gives these parameters on CDNOW (measured with lifetimes 0.11.3)."""
    pen = fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"], penalizer=0.01)
    assert [pen.r, pen.alpha, pen.a, pen.b] == pytest.approx([0.24294034, 4.43243717, 0.28564154, 0.65845367],
                                                             rel=1e-5)  # fmt: skip
    assert pen.penalizer == 0.01
    assert pen.log_likelihood < bgnbd.log_likelihood  # unpenalised, at the penalised estimate


# --- BG/NBD predictions -----------------------------------------------------------------------------------------------
def test_conditional_expected_purchases_matches_hardie(bgnbd):
    assert expected_purchases(bgnbd, 39, 2, 30.43, 38.86) == pytest.approx(1.226, abs=1e-3)


def test_population_expected_purchases_matches_hardie(bgnbd):
    t = np.array([0.1429, 1.0, 3.0, 31.8571, 32.0, 78.0])
    expected = [0.0078, 0.0532, 0.1506, 1.0405, 1.0437, 1.8576]
    np.testing.assert_array_almost_equal(expected_purchases_population(bgnbd, t), expected, decimal=3)
    assert expected_purchases_population(bgnbd, 0.0) == 0.0


def test_expected_purchases_vectorised_equals_the_formula(cdnow, bgnbd):
    x, t_x, T = cdnow["frequency"][:300], cdnow["recency"][:300], cdnow["T"][:300]
    for t in (1.0, 13.0, 52.0):
        got = expected_purchases(bgnbd, t, x, t_x, T)  # one t for all: evaluated per distinct (x, T)
        want = [reference_conditional_purchases(bgnbd, t, *row) for row in zip(x, t_x, T, strict=True)]
        np.testing.assert_allclose(got, want, rtol=1e-10)
    ts = np.linspace(0, 60, 300)  # one t per customer
    want = [reference_conditional_purchases(bgnbd, *row) for row in zip(ts, x, t_x, T, strict=True)]
    np.testing.assert_allclose(expected_purchases(bgnbd, ts, x, t_x, T), want, rtol=1e-10)
    assert expected_purchases(bgnbd, 0.0, 3, 20.0, 38.0) == 0.0


def test_expected_purchases_when_hyp2f1_overflows():
    """For x = 300 and 500 ₂F₁ overflows to inf; the Euler transform lifetimes falls back on gives the values of a
    50-digit mpmath evaluation of eq. 10."""
    p = BGNBDParams(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0, n_customers=0)
    assert np.isinf(hyp2f1(p.r + 300, p.b + 300, p.a + p.b + 299, 1000 / (p.alpha + 38.86 + 1000)))
    got = expected_purchases(p, 1000, [200, 300, 500], 38.0, 38.86)
    np.testing.assert_allclose(got, [744.126527781528326, 649.521205068888378, 60.528458462120292], rtol=1e-9)


def test_probability_alive(cdnow, bgnbd):
    x, t_x, T = cdnow["frequency"], cdnow["recency"], cdnow["T"]
    alive = probability_alive(bgnbd, x, t_x, T)
    assert np.all(alive[x == 0] == 1.0)
    assert probability_alive(bgnbd, 0, 0, 38.86) == 1.0
    assert np.all((alive > 0) & (alive <= 1))
    r, alpha, a, b = bgnbd.r, bgnbd.alpha, bgnbd.a, bgnbd.b
    rep = x > 0
    want = 1 / (1 + a / (b + x[rep] - 1) * ((alpha + T[rep]) / (alpha + t_x[rep])) ** (r + x[rep]))
    np.testing.assert_allclose(alive[rep], want, rtol=1e-12)
    # a recent buyer is more likely alive than one who stopped long ago
    assert probability_alive(bgnbd, 5, 38.0, 38.86) > probability_alive(bgnbd, 5, 10.0, 38.86)


# --- Gamma-Gamma ----------------------------------------------------------------------------------------------------
def test_gamma_gamma_reproduces_the_published_cdnow_parameters(cdnow_money, gg):
    np.testing.assert_array_almost_equal([gg.p, gg.q, gg.v], list(CDNOW_GG.values()), decimal=2)
    assert gg.n_customers == 946
    rep = cdnow_money["x"] > 0  # filtering first, as lifetimes' users must, gives the same fit
    filtered = fit_gamma_gamma(cdnow_money["x"][rep], cdnow_money["zbar"][rep])
    assert (filtered.p, filtered.q, filtered.v) == (gg.p, gg.q, gg.v)
    assert gg.population_mean == pytest.approx(gg.p * gg.v / (gg.q - 1))


def test_expected_average_value_matches_hardie(cdnow_money):
    params = GammaGammaParams(**CDNOW_GG, log_likelihood=0.0, n_customers=0)
    got = expected_average_value(params, cdnow_money["x"][:10], cdnow_money["zbar"][:10])
    np.testing.assert_allclose(got, [24.65, 18.91, 35.17, 35.17, 35.17, 71.46, 18.91, 35.17, 27.28, 35.17], atol=0.1)
    # no repeat purchase: the population mean, whatever monetary_value says
    mean = 6.25 * 15.44 / (3.74 - 1)  # 35.22 with the rounded parameters, 35.17 with the exact fit
    assert expected_average_value(params, [0, 0], [0.0, np.nan]).tolist() == pytest.approx([mean, mean], rel=1e-12)


def test_expected_average_value_needs_q_above_1():
    params = GammaGammaParams(p=4.1, q=0.97, v=3.8, log_likelihood=0.0, n_customers=0)
    with pytest.raises(ValueError, match="q = 0.97"):
        expected_average_value(params, [1], [10.0])


# --- CLV ------------------------------------------------------------------------------------------------------------
def test_customer_lifetime_value_is_the_discounted_sum(bgnbd, gg):
    x, t_x, T, m = np.array([0, 1, 4, 9]), np.array([0.0, 5.0, 30.0, 38.0]), np.array([20.0, 38.86, 38.86, 39.0]),\
        np.array([0.0, 12.5, 30.0, 55.0])  # fmt: skip
    for unit_days, month in ((7, 4.345), (1, 30.0), (1 / 24, 720.0), (14, 30 / 14)):
        assert month_length(unit_days) == pytest.approx(month)
        got = customer_lifetime_value(bgnbd, gg, x, t_x, T, m, months=6, discount_rate=0.02,
                                      time_unit_days=unit_days)  # fmt: skip
        for i in range(4):
            spend = expected_average_value(gg, x[i], m[i])
            total = 0.0
            for k in range(1, 7):
                purchases = reference_conditional_purchases(bgnbd, k * month, x[i], t_x[i], T[i])
                purchases -= reference_conditional_purchases(bgnbd, (k - 1) * month, x[i], t_x[i], T[i])
                total += spend * purchases / 1.02**k
            assert got[i] == pytest.approx(total, rel=1e-10)
    assert customer_lifetime_value(bgnbd, gg, 1, 5.0, 38.86, 12.5, time_unit_days=7) == pytest.approx(
        customer_lifetime_value(bgnbd, gg, x, t_x, T, m, time_unit_days=7)[1]
    )


def test_customer_lifetime_value_time_unit_trap(cdnow_money, bgnbd, gg):
    """lifetimes' documented CLV of CDNOW customers 1-3 (140.096, 18.943, 38.181) comes from its default
    freq="D" on data in weeks, i.e. 30-week "months"; time_unit_days=1 reproduces it, 7 gives the right figures."""
    args = (cdnow_money["x"][:3], cdnow_money["t_x"][:3], cdnow_money["T"][:3], cdnow_money["zbar"][:3])
    documented = customer_lifetime_value(bgnbd, gg, *args, months=12, discount_rate=0.01, time_unit_days=1)
    np.testing.assert_allclose(documented, [140.096218, 18.943466, 38.180575], atol=1e-5)
    weeks = customer_lifetime_value(bgnbd, gg, *args, months=12, discount_rate=0.01, time_unit_days=7)
    np.testing.assert_allclose(weeks, [36.278496, 4.637466, 8.344093], atol=1e-5)  # lifetimes freq="W"


def test_customer_lifetime_value_arguments(bgnbd, gg):
    with pytest.raises(TypeError):
        customer_lifetime_value(bgnbd, gg, [1], [1.0], [2.0], [10.0])  # the time unit is never implicit
    with pytest.raises(ValueError, match="time_unit_days"):
        customer_lifetime_value(bgnbd, gg, [1], [1.0], [2.0], [10.0], time_unit_days=0)
    with pytest.raises(ValueError, match="months"):
        customer_lifetime_value(bgnbd, gg, [1], [1.0], [2.0], [10.0], months=0, time_unit_days=7)
    with pytest.raises(ValueError, match="monetary_value"):
        customer_lifetime_value(bgnbd, gg, [1], [1.0], [2.0], [0.0], time_unit_days=7)


# --- weights (hypothesis) -------------------------------------------------------------------------------------------
def simulate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, t_x, T (whole weeks) and m from a BG/NBD + Gamma-Gamma process."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.5, 1 / 4.0, n)
    drop = rng.beta(0.8, 2.4, n)
    T = rng.integers(1, 40, n).astype(float)
    N = rng.poisson(lam * T)
    x = np.minimum(N, rng.geometric(drop))
    t_x = np.zeros(n)
    rep = x > 0
    t_x[rep] = np.round(T[rep] * rng.beta(x[rep], N[rep] - x[rep] + 1))  # rounded, not ceil: no bias
    m = np.zeros(n)
    m[rep] = np.round(rng.gamma(6.0 * x[rep], 1 / rng.gamma(3.7, 1 / 15.0, rep.sum())) / x[rep], 2)
    return x.astype(float), t_x, T, m


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), counts=st.lists(st.integers(0, 4), min_size=120, max_size=120))
def test_weighted_patterns_fit_like_the_expanded_rows(seed, counts):
    x, t_x, T, m = simulate(120, seed)
    w = np.array(counts)
    if not (w[x > 0] > 0).any():
        w[np.flatnonzero(x > 0)[:1]] = 1
        if not (x > 0).any():
            x[0], t_x[0], m[0] = 1.0, T[0], 10.0
            w[0] = 1
    rows = np.repeat(np.arange(120), w)
    rng = np.random.default_rng(seed)
    rng.shuffle(rows)  # row order must not matter either
    for fit, args in ((fit_bgnbd, (x, t_x, T)), (fit_gamma_gamma, (x, m))):
        try:
            expanded = fit(*(a[rows] for a in args))
        except ConvergenceError:
            with pytest.raises(ConvergenceError):
                fit(*args, weights=w)
            continue
        weighted = fit(*args, weights=w)
        assert weighted.n_customers == expanded.n_customers == (w[x > 0].sum() if fit is fit_gamma_gamma else w.sum())
        for name in ("log_likelihood", *(("r", "alpha", "a", "b") if fit is fit_bgnbd else ("p", "q", "v"))):
            assert getattr(weighted, name) == pytest.approx(getattr(expanded, name), rel=1e-9, abs=1e-9)


def test_simulated_parameters_are_recovered():
    x, t_x, T, m = simulate(20_000, 3)
    bg = fit_bgnbd(x, t_x, T)
    assert [bg.r, bg.alpha, bg.a, bg.b] == pytest.approx([0.5, 4.0, 0.8, 2.4], rel=0.2)
    gg = fit_gamma_gamma(x, m)
    assert [gg.p, gg.q, gg.v] == pytest.approx([6.0, 3.7, 15.0], rel=0.2)


# --- input checks -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("frequency", "recency", "T", "weights", "match"),
    [
        ([1, 2], [1.0], [2.0, 3.0], None, "frequency, recency, T must have the same length"),
        ([1, -1], [1.0, 0.0], [2.0, 3.0], None, "frequency must be >= 0"),
        ([1, 1.5], [1.0, 1.0], [2.0, 3.0], None, "frequency must be whole numbers"),
        ([1, 2], [1.0, 4.0], [2.0, 3.0], None, r"recency must be <= T \(1 row\(s\), first at index 1\)"),
        ([1, 0], [1.0, 1.0], [2.0, 3.0], None, "recency must be 0 when frequency is 0"),
        ([1, 2], [1.0, -1.0], [2.0, 3.0], None, "recency must be >= 0"),
        ([1, 2], [1.0, np.nan], [2.0, 3.0], None, "recency must be finite"),
        ([1, 2], [1.0, 2.0], [2.0, np.inf], None, "T must be finite"),
        ([np.nan, 2], [1.0, 2.0], [2.0, 3.0], None, "frequency must be finite"),
        ([1, 2], [1.0, 2.0], [2.0, 3.0], [1, -1], "weights must be whole numbers >= 0"),
        ([1, 2], [1.0, 2.0], [2.0, 3.0], [1], "weights must have one value per row"),
        ([], [], [], None, "frequency is empty"),
        ([0, 0], [0.0, 0.0], [2.0, 3.0], None, "needs some repeat purchases"),
        ([1, 2], [1.0, 2.0], [2.0, 3.0], [0, 0], "weights are all 0"),
        ([[1, 2]], [[1.0, 2.0]], [[2.0, 3.0]], None, "frequency must be one-dimensional"),
        (["a"], [1.0], [2.0], None, "frequency must be numeric"),
    ],
)
def test_fit_bgnbd_rejects_bad_input(frequency, recency, T, weights, match):
    with pytest.raises(ValueError, match=match):
        fit_bgnbd(frequency, recency, T, weights=weights)


def test_fit_gamma_gamma_input():
    with pytest.raises(
        ValueError, match=r"monetary_value must be > 0 where frequency > 0 \(1 row\(s\), first at index 1"
    ):
        fit_gamma_gamma([1, 2, 0], [10.0, 0.0, 5.0])
    with pytest.raises(ValueError, match="monetary_value must be > 0"):
        fit_gamma_gamma([1, 2], [10.0, np.nan])
    with pytest.raises(ValueError, match="monetary_value must be > 0"):
        fit_gamma_gamma([1, 2], [10.0, -3.0])
    with pytest.raises(ValueError, match="frequency, monetary_value must have the same length"):
        fit_gamma_gamma([1, 2], [10.0])
    with pytest.raises(ValueError, match="frequency is 0 for every customer"):
        fit_gamma_gamma([0, 0], [0.0, 0.0])
    with pytest.raises(ValueError, match="monetary_value must be finite"):
        fit_gamma_gamma([1, 0], [10.0, np.inf])
    x, _, _, m = simulate(3_000, 1)
    m_nan = np.where(x == 0, np.nan, m)  # frequency-0 rows are ignored, whatever their monetary value
    assert fit_gamma_gamma(x, m_nan) == fit_gamma_gamma(x, m)


def test_prediction_input_checks(bgnbd, gg):
    with pytest.raises(ValueError, match="frequency, recency, T must have the same length"):
        expected_purchases(bgnbd, 10, [1, 2], [1.0, 2.0, 3.0], [5.0, 5.0])
    with pytest.raises(ValueError, match="t, frequency must have the same length"):
        expected_purchases(bgnbd, [1.0, 2.0, 3.0], [1, 2], [1.0, 2.0], [5.0, 5.0])
    with pytest.raises(ValueError, match="t must be >= 0"):
        expected_purchases(bgnbd, -1, 1, 1.0, 5.0)
    with pytest.raises(ValueError, match="recency must be <= T"):
        probability_alive(bgnbd, 1, 6.0, 5.0)
    with pytest.raises(ValueError, match="frequency must be finite"):
        probability_alive(bgnbd, np.nan, 1.0, 5.0)
    with pytest.raises(ValueError, match="frequency must be >= 0"):
        expected_average_value(gg, -1, 5.0)


def test_no_row_is_silently_dropped(cdnow):
    """Customers whose first purchase is at the very end (T = 0) and zero-weight rows are part of the input."""
    x = np.append(cdnow["frequency"], [0.0, 0.0])
    t_x = np.append(cdnow["recency"], [0.0, 0.0])
    T = np.append(cdnow["T"], [0.0, 0.0])
    fit = fit_bgnbd(x, t_x, T)
    assert fit.n_customers == 2359
    base = fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    assert fit.log_likelihood == pytest.approx(base.log_likelihood, abs=1e-6)  # T = 0 carries no information


def test_optimiser_failure_is_an_error(monkeypatch, cdnow):
    from scipy.optimize import OptimizeResult

    def failing(fun, x0, **kwargs):
        return OptimizeResult(x=np.asarray(x0), fun=float(fun(x0)[0]), jac=np.ones_like(x0), success=False,
                              status=2, message="Desired error not necessarily achieved", nit=3)  # fmt: skip

    monkeypatch.setattr(lifetime, "minimize", failing)
    with pytest.raises(ConvergenceError, match="fit_bgnbd: the model did not converge") as err:
        fit_bgnbd(cdnow["frequency"], cdnow["recency"], cdnow["T"])
    # SciPy's own words ("Desired error not necessarily achieved...") stay out: the message reaches API clients
    assert "Desired error" not in str(err.value) and "try a larger penalizer" in str(err.value)
    with pytest.raises(ConvergenceError, match="fit_gamma_gamma"):
        fit_gamma_gamma([1, 2, 3], [10.0, 12.0, 9.0])


def test_a_likelihood_without_maximum_is_an_error():
    """Everyone buying at one rate with no sign of lapsing: the likelihood increases forever towards a → 0 and
    r, α → ∞ with r/α fixed, and BFGS "converges" with a ~ 1e-16, r ~ 3e8 where it happened to stop."""
    with pytest.raises(ConvergenceError, match=r"no finite maximum on this data \(r = .*a = .*e-1\d"):
        fit_bgnbd([10.0] * 4, [10.0] * 4, [10.0] * 4)
    with pytest.raises(ConvergenceError, match=r"no finite maximum on this data \(a = "):
        fit_bgnbd([10.0] * 4, [10.0] * 4, [10.0] * 4, penalizer=0.01)  # the penalizer cannot stop a -> 0
    with pytest.raises(ConvergenceError, match="fit_gamma_gamma: the likelihood has no finite maximum"):
        fit_gamma_gamma([1, 2, 3, 4], [10.0] * 4)  # no spread in spend: q, v -> infinity


# --- the RFM summary the fits consume -------------------------------------------------------------------------------
def rfm_summary_reference(customer_ids, dates, values, observation_end: date, time_unit_days: float) -> dict:
    """lifetimes' ``summary_data_from_transaction_data(freq="D", freq_multiplier=time_unit_days,
    monetary_value_col=...)`` in plain Python, one row per customer with a purchase on or before
    ``observation_end`` (inclusive), sorted by customer id:

    * purchases on the same day are one purchase, their values summed;
    * frequency = the number of purchase days − 1 (the first purchase is not a repeat);
    * recency = (last day − first day), T = (observation_end − first day), in days / time_unit_days;
    * monetary_value = the mean over the *repeat* days of each day's summed value (the first day excluded); 0 when
      frequency is 0. Values keep their type (pass Decimal for exact cents).
    """
    days: dict = {}
    for cid, day, value in zip(customer_ids, dates, values, strict=True):
        if day > observation_end:
            continue
        per_day = days.setdefault(cid, {})
        per_day[day] = per_day[day] + value if day in per_day else value
    out: dict[str, list] = {"customer_id": [], "frequency": [], "recency": [], "T": [], "monetary_value": []}
    for cid in sorted(days):
        per_day = days[cid]
        ordered = sorted(per_day)
        repeat = [per_day[d] for d in ordered[1:]]
        out["customer_id"].append(cid)
        out["frequency"].append(len(repeat))
        out["recency"].append((ordered[-1] - ordered[0]).days / time_unit_days)
        out["T"].append((observation_end - ordered[0]).days / time_unit_days)
        out["monetary_value"].append(sum(repeat) / len(repeat) if repeat else 0 * per_day[ordered[0]])
    return {k: np.array(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def cdnow_sample():
    """CDNOW_sample.txt: master id, sample id (0001-2357), YYYYMMDD, number of CDs, dollar value (6,919 rows)."""
    rows = [line.split() for line in lifetimes_dataset("CDNOW_sample.txt").read_text().splitlines() if line.strip()]
    return {
        "ids": [int(r[1]) for r in rows],
        "dates": [date(int(r[2][:4]), int(r[2][4:6]), int(r[2][6:])) for r in rows],
        "values": [Decimal(r[4]) for r in rows],
    }


def test_summary_semantics_reproduce_the_cdnow_summary(cdnow_sample, cdnow_money):
    s = rfm_summary_reference(cdnow_sample["ids"], cdnow_sample["dates"], cdnow_sample["values"], CALIBRATION_END, 7)
    assert s["customer_id"].tolist() == cdnow_money["ID"].astype(int).tolist()  # all 2,357, by sample id
    assert np.array_equal(s["frequency"], cdnow_money["x"])
    assert np.array_equal(np.round(s["recency"], 2), cdnow_money["t_x"])
    assert np.array_equal(np.round(s["T"], 2), cdnow_money["T"])
    # zbar is rounded half up (22.345 -> 22.35), so compare exact decimal means, not floats
    zbar = [Decimal(m).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) for m in s["monetary_value"]]
    assert [float(z) for z in zbar] == cdnow_money["zbar"].tolist()
    # and the summary fits like the published file
    fit = fit_bgnbd(s["frequency"], s["recency"], s["T"])
    np.testing.assert_array_almost_equal([fit.r, fit.alpha, fit.a, fit.b], list(CDNOW_BGNBD.values()), decimal=2)


def test_summary_traps(cdnow_sample, cdnow_money):
    """What does *not* give the CDNOW summary, for whoever writes the summary query."""
    ids, dates, values = cdnow_sample["ids"], cdnow_sample["dates"], cdnow_sample["values"]
    calibration = [(i, d, v) for i, d, v in zip(ids, dates, values, strict=True) if d <= CALIBRATION_END]
    # counting transactions instead of purchase days: 146 same-day rows in the calibration period
    rows_per_customer: dict[int, int] = {}
    for i, _, _ in calibration:
        rows_per_customer[i] = rows_per_customer.get(i, 0) + 1
    by_rows = np.array([rows_per_customer[int(i)] - 1 for i in cdnow_money["ID"]])
    assert (by_rows == cdnow_money["x"]).sum() == 2277
    # dropping $0 transactions loses the 8 customers whose first purchase was free
    paid = [(i, d, v) for i, d, v in calibration if v > 0]
    assert len({i for i, _, _ in paid}) == 2349
    # an exclusive end (or T counted to the next day) shifts every T
    s = rfm_summary_reference(ids, dates, values, date(1997, 10, 1), 7)
    assert not np.any(np.round(s["T"], 2) == cdnow_money["T"])
    # averaging transactions instead of daily totals changes zbar for customers with same-day repeat purchases
    first_day: dict[int, date] = {}
    for i, d, _ in calibration:
        first_day[i] = min(d, first_day.get(i, d))
    repeat_tx: dict[int, list] = {}
    for i, d, v in calibration:
        if d != first_day[i]:
            repeat_tx.setdefault(i, []).append(v)
    s = rfm_summary_reference(ids, dates, values, CALIBRATION_END, 7)
    daily = dict(zip(s["customer_id"].tolist(), s["monetary_value"].tolist(), strict=True))
    assert sum(1 for i, vs in repeat_tx.items() if sum(vs) / len(vs) != daily[i]) > 0
