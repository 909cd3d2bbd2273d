"""Lifetime value from a lake: the fit on the engine's RFM summary, predictions per customer, the traits written
back, and the fallbacks when the data do not identify a model."""

from __future__ import annotations

import random
from datetime import date

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.analytics import clv
from chorus.analytics.engine import open_lake
from chorus.errors import ChorusError
from tests.analytics.lakegen import LakeWriter


def shop(root, n=300, seed=3, spend_varies=True):
    rng = random.Random(seed)
    w = LakeWriter(root)
    for i in range(n):
        rate = rng.gammavariate(0.8, 1 / 15)  # orders per day while active
        life = rng.expovariate(1 / 90)
        mean = rng.gammavariate(5, 10) if spend_varies else 40.0
        t, k = rng.uniform(0, 60), 0
        while k == 0 or (t < min(life, 180)):
            w.order(f"c{i}", t * 24, round(mean * rng.uniform(0.8, 1.2), 2) if spend_varies else 40.0,
                    order_id=f"o{i}-{k}")  # fmt: skip
            k += 1
            t += rng.expovariate(rate) if rate > 0 else 1e9
    return open_lake(w.write())


def test_fit_predictions_and_traits(tmp_path):
    lk = shop(tmp_path)
    lv = clv.lifetime_values(lk)
    c = lv.customers
    last_order = lk.table("events").timestamp.max().to_pyarrow().as_py()
    assert lv.end == last_order.date() and lv.n == 300 and lv.gamma_gamma is not None and not lv.warnings
    assert np.all(c["clv"] >= 0) and np.all((c["probability_alive"] > 0) & (c["probability_alive"] <= 1))
    assert np.all(c["probability_alive"][c["frequency"] == 0] == 1.0)
    traits = lv.traits()
    one = traits[str(c["customer"][0])]
    assert set(one) == {"clv_12m", "probability_alive", "expected_orders_12m", "expected_order_value",
                        "rfm_frequency", "rfm_recency_days", "rfm_tenure_days", "rfm_monetary_value"}  # fmt: skip
    top = lv.rows(limit=3)
    assert [r["clv"] for r in top] == sorted((r["clv"] for r in top), reverse=True)
    assert lv.summary()["total_clv"] == pytest.approx(float(c["clv"].sum()))
    # a longer horizon is worth more; a higher discount rate less
    longer = clv.lifetime_values(shop(tmp_path / "b"), months=24)
    cheaper = clv.lifetime_values(shop(tmp_path / "c"), discount_rate=0.05)
    assert longer.customers["clv"].sum() > c["clv"].sum() > cheaper.customers["clv"].sum()


def test_spend_that_does_not_vary_falls_back_to_the_mean_order_value(tmp_path):
    lv = clv.lifetime_values(shop(tmp_path, spend_varies=False))
    assert lv.gamma_gamma is None and "mean order value" in lv.warnings[0]
    assert np.allclose(lv.customers["expected_order_value"], 40.0)
    assert np.all(lv.customers["clv"] > 0)


def test_observation_end_and_bad_arguments(tmp_path):
    lk = shop(tmp_path, n=50)
    with pytest.raises(ChorusError) as e:
        clv.lifetime_values(lk, end=date(2020, 1, 1))
    assert e.value.field == "end"
    for kwargs, field in (({"months": 0}, "months"), ({"unit_days": 0}, "unit_days"),
                          ({"discount_rate": 1.5}, "discount_rate")):  # fmt: skip
        with pytest.raises(ChorusError) as e:
            clv.lifetime_values(lk, **kwargs)
        assert e.value.field == field


# --- small stores: a result on any data with enough repeat buyers, and the fit used always said ---------------------
def _rfm(purchases: list[list[tuple[int, float]]], end_day: int, unit_days: float = 7.0) -> dict[str, np.ndarray]:
    """RFM columns as rfm_summary computes them, from each customer's (day, value) purchases."""
    rows = []
    for i, orders in enumerate(purchases):
        days: dict[int, float] = {}
        for d, v in orders:
            days[d] = days.get(d, 0.0) + v
        ds = sorted(days)
        x = len(ds) - 1
        mon = (sum(days.values()) - days[ds[0]]) / x if x else 0.0
        rows.append((f"c{i}", x, (ds[-1] - ds[0]) / unit_days, (end_day - ds[0]) / unit_days, mon, len(orders),
                     sum(days.values())))  # fmt: skip
    names = ("customer", "frequency", "recency", "T", "monetary_value", "orders", "revenue")
    cols = {k: np.array([r[j] for r in rows]) for j, k in enumerate(names)}
    cols["customer"] = np.array(cols["customer"], dtype=object)
    return cols


order = st.tuples(st.integers(0, 120), st.one_of(st.just(0.0), st.just(25.0), st.floats(0.01, 500.0)))
one_time = st.lists(order, min_size=1, max_size=1)
repeat = st.lists(order, min_size=2, max_size=8).filter(lambda o: len({d for d, _ in o}) >= 2)


@st.composite
def small_store(draw):
    """A newcomer's store: a handful to a few dozen customers, at least MIN_REPEAT_CUSTOMERS of them repeat buyers;
    spend sometimes constant, sometimes 0."""
    buyers = draw(st.lists(repeat, min_size=clv.MIN_REPEAT_CUSTOMERS, max_size=12))
    buyers += draw(st.lists(one_time, max_size=40))
    return buyers, max(d for b in buyers for d, _ in b) + draw(st.integers(0, 30))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_store(), st.sampled_from([0.0, 0.01]))
def test_small_stores_always_get_a_result_and_the_fit_used_is_reported(store, penalizer):
    purchases, end_day = store
    lv = clv.predict(_rfm(purchases, end_day), end=date(2026, 1, 1), penalizer=penalizer)
    c = lv.customers
    for col in ("expected_orders", "probability_alive", "expected_order_value", "clv"):
        assert np.all(np.isfinite(c[col])), col
    assert np.all(c["clv"] >= 0) and np.all((c["probability_alive"] >= 0) & (c["probability_alive"] <= 1))
    p, s = lv.purchases_fit, lv.spend_fit
    assert p.model in ("BG/NBD", "NBD (no dropout)") and p.penalizer in clv._ladder(penalizer)
    assert (p.model == "BG/NBD") == lv.bgnbd.dropout
    assert s.model in ("Gamma-Gamma", "mean order value")
    assert (lv.gamma_gamma is None) == (s.model == "mean order value") == (s.fallback_reason is not None)
    if lv.gamma_gamma is not None:
        assert lv.gamma_gamma.q > 1 and s.penalizer in clv._ladder(penalizer)
    # every rejected attempt is listed, and what was used is said in words
    notes = lv.fit_notes()
    assert notes[0].startswith(f"purchases: {p.model}") and notes[1].startswith(f"order value: {s.model}")
    assert all(r["reason"] for r in p.rejected + s.rejected)
    summary = lv.summary()
    assert summary["fits"]["purchases"]["model"] == p.model and summary["bgnbd"]["penalizer"] == p.penalizer


def test_below_the_minimum_of_repeat_buyers_the_error_says_so():
    cols = _rfm([[(0, 10.0), (5, 10.0)]] + [[(3, 20.0)]] * 10, 60)
    with pytest.raises(ChorusError) as e:
        clv.predict(cols, end=date(2026, 1, 1))
    assert "at least 2 customers" in e.value.message and "1 of the 11" in e.value.message


def test_nobody_lapsed_falls_back_to_no_dropout_and_says_so():
    # every repeat buyer is still buying at the end: BG/NBD's dropout runs off to 0, whatever the penalty
    buyers = [[(d, 30.0 + i) for d in range(i % 3, 91, 7 + i % 5)] for i in range(8)]
    lv = clv.predict(_rfm(buyers + [[(40 + i, 20.0)] for i in range(20)], 90), end=date(2026, 1, 1))
    assert lv.purchases_fit.model == "NBD (no dropout)" and not lv.bgnbd.dropout
    assert lv.purchases_fit.rejected[0]["model"] == "BG/NBD"
    assert np.all(lv.customers["probability_alive"] == 1.0)
    assert any("no customer looks lapsed" in w for w in lv.warnings)
    assert lv.fit_notes()[0].startswith("purchases: NBD (no dropout) fitted")


def test_the_clv_command_on_a_small_fresh_store(tmp_path):
    """The newcomer's case end to end: a few dozen customers, a handful of repeat buyers, `chorus clv` through the
    CLI gives a result and prints which fit (and penalizer) each model needed."""
    import subprocess
    import sys

    rng = random.Random(11)
    w = LakeWriter(tmp_path / "lake")
    for i in range(36):
        for k in range(1 + (i % 6 == 0) * rng.randint(1, 3)):
            w.order(f"c{i}", rng.uniform(0, 24 * 60), round(rng.uniform(20, 80), 2), order_id=f"o{i}-{k}")
    w.write()
    r = subprocess.run([sys.executable, "-m", "chorus.cli", "clv", "--lake", str(tmp_path / "lake")],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "36 customers" in r.stdout and "Fit: purchases: " in r.stdout and "Fit: order value: " in r.stdout
    r = subprocess.run([sys.executable, "-m", "chorus.cli", "clv", "--lake", str(tmp_path / "lake"), "--format",
                        "json"], capture_output=True, text=True, timeout=120)  # fmt: skip
    import json

    fits = json.loads(r.stdout)["summary"]["fits"]
    assert set(fits) == {"purchases", "order_value"} and fits["purchases"]["penalizer"] is not None
