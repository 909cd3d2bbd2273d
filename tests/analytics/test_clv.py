"""Lifetime value from a lake: the fit on the engine's RFM summary, predictions per customer, the traits written
back, and the fallbacks when the data do not identify a model."""

from __future__ import annotations

import random
from datetime import date

import numpy as np
import pytest

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
