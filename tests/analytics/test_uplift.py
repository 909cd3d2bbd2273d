"""Uplift of journeys against their holdout: conversion rate and revenue per person, treated vs held out."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from chorus.analytics import touchpoints as tp
from chorus.analytics import uplift as up
from chorus.analytics.engine import open_lake
from chorus.errors import ChorusError
from tests.analytics.lakegen import T0, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DAY = 24
TREATED_REVENUE = [10.0, 20.0, 30.0, 40.0, 50.0, 0, 0, 0, 0, 0]
HOLDOUT_REVENUE = [10.0, 0, 0, 0]


def enter(w, person, at, journey="welcome", variant="A"):
    w.event(person, at, "Journey Entered", journey_id=journey, variant=variant)


def shop(w: LakeWriter) -> LakeWriter:
    # welcome: 10 treated (5 buy), 4 held out (1 buys)
    for i, revenue in enumerate(TREATED_REVENUE):
        enter(w, f"t{i}", 0)
        if revenue:
            w.order(f"t{i}", DAY, revenue, order_id=f"T{i}")
    enter(w, "t0", 1, variant="Control")  # t0 re-enters held out: stays treated, inconsistent
    for i, revenue in enumerate(HOLDOUT_REVENUE):
        enter(w, f"h{i}", 0, variant="holdout" if i % 2 else "HOLDOUT")
        if revenue:
            w.order(f"h{i}", DAY, revenue, order_id=f"H{i}")
    # what is not counted: an order before the entry, one after the window, one at the entry's very instant
    w.order("t5", -1, 99.0, order_id="X1")
    w.order("t6", 31 * DAY, 99.0, order_id="X2")
    w.order("t7", 0, 99.0, order_id="X3")
    # ... and what is: an order exactly at the end of the window, for t1 who already bought (two orders, one
    # converted person, revenue added up)
    w.order("t1", 30 * DAY, 5.0, order_id="T1b")
    # winback: no holdout at all
    enter(w, "w1", 0, journey="winback", variant=None)
    w.order("w1", 2, 12.0, order_id="W1")
    return w


@pytest.fixture
def lake(tmp_path):
    return open_lake(shop(LakeWriter(tmp_path)).write())


def test_conversion_uplift_with_its_normal_interval(lake):
    res = up.uplift(lake)
    r = res.journey("welcome")
    assert (r["treated"], r["holdout"], r["inconsistent"]) == (10, 4, 1)
    assert (r["treated_converted"], r["holdout_converted"]) == (5, 1)
    assert (r["treated_rate"], r["holdout_rate"], r["uplift"]) == (0.5, 0.25, 0.25)
    se = math.sqrt(0.5 * 0.5 / 10 + 0.25 * 0.75 / 4)
    z = stats.norm.ppf(0.975)
    assert r["uplift_lo"] == pytest.approx(0.25 - z * se) and r["uplift_hi"] == pytest.approx(0.25 + z * se)
    assert r["relative_uplift"] == pytest.approx(1.0)
    assert r["incremental_conversions"] == pytest.approx(2.5)
    assert r["incremental_conversions_lo"] == pytest.approx(10 * (0.25 - z * se))


def test_revenue_uplift_with_welchs_interval(lake):
    r = up.uplift(lake).journey("welcome")
    treated = list(TREATED_REVENUE)
    treated[1] += 5.0  # t1's second order, at the end of the window
    assert r["treated_revenue"] == 155.0 and r["holdout_revenue"] == 10.0
    assert r["treated_revenue_per_person"] == 15.5 and r["holdout_revenue_per_person"] == 2.5
    assert r["revenue_uplift"] == pytest.approx(13.0)
    ci = stats.ttest_ind(treated, HOLDOUT_REVENUE, equal_var=False).confidence_interval(0.95)
    assert (r["revenue_uplift_lo"], r["revenue_uplift_hi"]) == pytest.approx((ci.low, ci.high))
    assert r["incremental_revenue"] == pytest.approx(130.0)
    assert r["incremental_revenue_hi"] == pytest.approx(10 * ci.high)


def test_warnings(lake):
    res = up.uplift(lake)
    welcome = res.journey("welcome")["warning"]
    assert "only 4 people" in welcome and "1 person entered both" in welcome
    winback = res.journey("winback")
    assert (winback["treated"], winback["holdout"], winback["uplift"], winback["revenue_uplift"]) == (1, 0, None, None)
    assert "no holdout" in winback["warning"]
    assert [w.split(":")[0] for w in res.warnings] == ["welcome", "welcome", "winback"]
    assert [r["journey_id"] for r in res.rows] == ["welcome", "winback"]


def test_a_holdout_without_conversions_is_flagged(tmp_path):
    w = LakeWriter(tmp_path)
    for i in range(40):
        enter(w, f"t{i}", 0)
        enter(w, f"h{i}", 0, variant="holdout")
        if i < 4:
            w.order(f"t{i}", 2, 10.0, order_id=f"T{i}")
    r = up.uplift(open_lake(w.write())).journey("welcome")
    assert (r["treated"], r["holdout"], r["uplift"]) == (40, 40, 0.1)
    assert r["relative_uplift"] is None
    assert r["warning"] == "nobody in the holdout converted: the interval of the uplift is not reliable"


def test_window_and_period(lake):
    r = up.uplift(lake, window=timedelta(days=2)).journey("welcome")
    assert r["treated_revenue"] == 150.0  # without t1's order on day 30
    # entries in the period only; conversions up to the window after it are still read (pruned partitions)
    late = up.uplift(lake, period=tp.Period(T0 - timedelta(hours=1), T0 + timedelta(hours=1)))
    assert late.journey("welcome")["treated_revenue"] == 155.0
    assert late.journey("welcome")["inconsistent"] == 0  # t0's second entry (at 1 h) is outside
    none = up.uplift(lake, period=tp.Period(T0 + timedelta(days=1), T0 + timedelta(days=2)))
    assert none.rows == [] and "no 'Journey Entered' event" in none.warnings[0]


def test_merged_profiles_are_one_person(tmp_path):
    w = LakeWriter(tmp_path)
    enter(w, "old", 0, variant="holdout")
    w.order("new", 2, 10.0, order_id="N1")
    w.alias("old", "new")
    r = up.uplift(open_lake(w.write())).journey("welcome")
    assert (r["holdout"], r["holdout_converted"], r["holdout_revenue"]) == (1, 1, 10.0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": timedelta(0)}, "window"),
        ({"window": timedelta(seconds=-5)}, "window"),
        ({"window": 30}, "window"),
        ({"confidence": 95}, "confidence"),
        ({"confidence": True}, "confidence"),
        ({"period": tp.Period(T0, T0)}, "until"),
    ],
)
def test_bad_arguments_name_their_field(lake, kwargs, field):
    with pytest.raises(ChorusError) as exc:
        up.uplift(lake, **kwargs)
    assert exc.value.field == field


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 500), st.integers(1, 500), st.data())
def test_difference_of_proportions(n1, n2, data):
    k1, k2 = data.draw(st.integers(0, n1)), data.draw(st.integers(0, n2))
    d, lo, hi = up.diff_proportions(k1, n1, k2, n2, 0.95)
    assert lo <= d <= hi and d == pytest.approx(k1 / n1 - k2 / n2)
    assert hi - d == pytest.approx(d - lo)
    back, blo, bhi = up.diff_proportions(k2, n2, k1, n1, 0.95)
    assert (back, blo, bhi) == pytest.approx((-d, -hi, -lo))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy, on a group of equal values
@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 1000), min_size=2, max_size=30), st.lists(st.integers(0, 1000), min_size=2, max_size=30))
def test_welch_matches_scipy(a, b):
    a, b = np.array(a, dtype=float), np.array(b, dtype=float)
    d, lo, hi = up.welch(np.mean(a), np.var(a, ddof=1), len(a), np.mean(b), np.var(b, ddof=1), len(b), 0.9)
    assert lo <= d <= hi
    if np.var(a) > 0 or np.var(b) > 0:
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.9)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-6, abs=1e-6)


def test_duckdb_and_spark_agree(tmp_path, spark_session, same_result):
    root = shop(LakeWriter(tmp_path)).write()
    results = []
    for engine in ("duckdb", "spark"):
        lk = open_lake(root, engine=engine, spark=spark_session if engine == "spark" else None)
        d = up.uplift(lk, window=timedelta(days=30)).as_dict()
        assert d["params"].pop("engine") == engine
        results.append(d)
    same_result(*results)
