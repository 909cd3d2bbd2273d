"""Omnichannel value: customers grouped by number of channels and online/offline mix, with bootstrap intervals."""

from __future__ import annotations

import math
import random
from datetime import timedelta

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats

from chorus.analytics import omnichannel as om
from chorus.analytics import touchpoints as tp
from chorus.analytics.engine import open_lake
from chorus.errors import ChorusError
from tests.analytics.lakegen import T0, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def shop(w: LakeWriter) -> LakeWriter:
    """Six customers (a-f) and a visitor who never buys (g)."""
    # a: web only. Its page came from an email campaign (UTM medium "email"): still the web channel; the outbound
    # SMS Chorus sent is not a channel the person used
    w.touch("a", 0, "web", campaign_medium="email", campaign_name="spring")
    w.event("a", 0.5, "Message Sent", channel="sms", direction="outbound")
    w.order("a", 1, 100.0, order_id="A1")
    # b: web only, two orders on two days: a repeat customer
    w.order("b", 1, 50.0, order_id="B1")
    w.order("b", 30, 70.0, order_id="B2")
    # c: store visit then two web orders the same day (not a repeat); the shop and the server report C1 twice
    w.touch("c", 0, "store")
    w.order("c", 2, 60.0, order_id="C1")
    w.order("c", 2.1, 60.0, order_id="C1")
    w.order("c", 3, 40.0, order_id="C2")
    # d: email, app, then buys in the store: 3 channels
    w.event("d", 0, "Message Opened", channel="email")
    w.touch("d", 1, "app")
    w.order("d", 2, 90.0, channel="store", order_id="D1")
    # e: store only
    w.touch("e", 0, "store")
    w.order("e", 1, 30.0, channel="store", order_id="E1")
    # f: an order sent by the back end: no channel the person used
    w.order("f", 1, 10.0, channel="server", order_id="F1")
    # g: browses, never buys
    w.touch("g", 0, "web")
    return w


@pytest.fixture
def lake(tmp_path):
    return open_lake(shop(LakeWriter(tmp_path)).write())


def test_groups_by_number_of_channels(lake):
    res = om.omnichannel_value(lake, bootstrap=200)
    one = res.group("channels", "1")  # a, b, e
    assert (one["customers"], one["orders"], one["revenue"], one["repeat_customers"]) == (3, 4, 250.0, 1)
    assert one["value"] == pytest.approx(250 / 3)
    assert one["frequency"] == pytest.approx(4 / 3)
    assert one["aov"] == pytest.approx(62.5)
    assert one["retention"] == pytest.approx(1 / 3)
    two = res.group("channels", "2")  # c: store + web, C1 counted once, two orders the same day
    assert (two["customers"], two["orders"], two["revenue"], two["repeat_customers"]) == (1, 2, 100.0, 0)
    three = res.group("channels", "3+")  # d
    assert (three["customers"], three["revenue"]) == (1, 90.0)
    unknown = res.group("channels", "unknown")  # f
    assert (unknown["customers"], unknown["revenue"]) == (1, 10.0)
    assert sum(r["customers"] for r in res.rows if r["dimension"] == "channels") == 6
    assert res.totals["customers"] == 6 and res.totals["revenue"] == 450.0 and res.totals["orders"] == 8
    assert res.totals["ignored_channels"] == {"server": 1}
    assert any("unknown groups" in w for w in res.warnings)


def test_groups_by_mix(lake):
    res = om.omnichannel_value(lake, bootstrap=200)
    got = {r["group"]: (r["customers"], r["orders"], r["revenue"]) for r in res.rows if r["dimension"] == "mix"}
    assert got == {"online": (2, 3, 220.0), "offline": (1, 1, 30.0), "both": (2, 3, 190.0), "unknown": (1, 1, 10.0)}


def test_relative_differences_to_single_channel_customers(lake):
    res = om.omnichannel_value(lake, bootstrap=200)
    one = 250 / 3
    assert res.comparison("2", "1")["relative_difference"] == pytest.approx(100 / one - 1)  # +20 %
    assert res.comparison("3+", "1")["relative_difference"] == pytest.approx(90 / one - 1)
    assert res.comparison("2+", "1")["relative_difference"] == pytest.approx(95 / one - 1)
    assert res.comparison("2+", "1", "frequency")["relative_difference"] == pytest.approx(1.5 / (4 / 3) - 1)
    assert res.comparison("both", "online")["relative_difference"] == pytest.approx(95 / 110 - 1)
    assert res.comparison("both", "offline")["relative_difference"] == pytest.approx(95 / 30 - 1)
    c = res.comparison("2", "1")
    # group 2 has one customer (no sampling variation): the interval is 100 / (the bootstrap of group 1) - 1
    assert c["lo"] <= c["relative_difference"] <= c["hi"]
    assert c["lo"] == pytest.approx(100 / 120 - 1) and c["hi"] == pytest.approx(100 / 30 - 1)
    assert not [c for c in res.comparisons if c["metric"] == "clv"]


def test_clv_means_and_json(lake):
    import orjson

    res = om.omnichannel_value(lake, bootstrap=200, clv={"a": 10.0, "b": 30, "c": 50.0, "nobody": 1.0})
    one = res.group("channels", "1")
    assert (one["clv"], one["clv_customers"]) == (20.0, 2)  # a and b; e has none
    assert one["clv_lo"] >= 10.0 and one["clv_hi"] <= 30.0
    assert res.group("channels", "2")["clv"] == 50.0 and res.group("channels", "3+")["clv"] is None
    assert res.comparison("2", "1", "clv")["relative_difference"] == pytest.approx(1.5)
    assert any("no predicted CLV" in w for w in res.warnings)
    assert orjson.loads(orjson.dumps(res.as_dict()))["groups"] == res.rows


def test_period_counts_its_conversions_and_touchpoints_only(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "store")  # before the period: not a channel of p in it
    w.order("p", 48, 20.0, order_id="P1")
    w.order("q", 1, 99.0, order_id="Q1")  # a customer before the period only
    w.order("q", 200, 5.0, order_id="Q2")  # after it
    res = om.omnichannel_value(
        open_lake(w.write()), period=tp.Period(T0 + timedelta(hours=24), T0 + timedelta(hours=100)), bootstrap=200
    )
    assert res.totals["customers"] == 1 and res.totals["revenue"] == 20.0
    assert res.group("mix", "online")["customers"] == 1


def test_merged_profiles_are_one_customer(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("old", 0, "store")
    w.order("new", 1, 40.0, order_id="N1")
    w.alias("old", "new")
    res = om.omnichannel_value(open_lake(w.write()), bootstrap=200)
    assert res.totals["customers"] == 1 and res.group("mix", "both")["customers"] == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0}, "confidence"),
        ({"bootstrap": 10}, "bootstrap"),
        ({"bootstrap": 200.0}, "bootstrap"),
        ({"seed": "x"}, "seed"),
        ({"online": ("web", "store")}, "offline"),
        ({"online": ()}, "online"),
        ({"offline": [""]}, "offline"),
        ({"clv": {"a": float("nan")}}, "clv"),
        ({"clv": {"a": "12"}}, "clv"),
        ({"clv": [1.0]}, "clv"),
        ({"period": tp.Period(T0, T0)}, "until"),
    ],
)
def test_bad_arguments_name_their_field(lake, kwargs, field):
    with pytest.raises(ChorusError) as exc:
        om.omnichannel_value(lake, **kwargs)
    assert exc.value.field == field


# -- the bootstrap ------------------------------------------------------------------------------------------------
def mean_units(x) -> np.ndarray:
    u = np.zeros((len(x), 6))
    u[:, 0] = 1.0
    u[:, 1] = x
    u[:, 2] = 1.0
    return u


@pytest.mark.parametrize("n", [4_000, 200_000])  # customer by customer, and in batches
def test_bootstrap_interval_of_a_mean_matches_the_t_interval(n):
    x = np.random.default_rng(42).normal(50.0, 20.0, n)
    reps = om.resample_sums(mean_units(x), 2000, np.random.default_rng(0))
    lo, hi = om.percentile_interval(om.metrics(reps)["value"], 0.95)
    t_lo, t_hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=x.std(ddof=1) / math.sqrt(n))
    width = t_hi - t_lo
    assert abs(lo - t_lo) < 0.08 * width and abs(hi - t_hi) < 0.08 * width
    assert (hi - lo) == pytest.approx(width, rel=0.1)


def test_batches_keep_the_spread_of_a_skewed_mean():
    rng = np.random.default_rng(3)
    x = rng.lognormal(3.0, 1.2, 60_000)  # revenue-like
    exact = om.resample_sums(mean_units(x), 1000, np.random.default_rng(1), max_units=60_000)
    batched = om.resample_sums(mean_units(x), 1000, np.random.default_rng(1), max_units=2_000)
    sd_exact = om.metrics(exact)["value"].std()
    sd_batched = om.metrics(batched)["value"].std()
    assert sd_batched == pytest.approx(sd_exact, rel=0.12)
    assert sd_exact == pytest.approx(x.std() / math.sqrt(x.size), rel=0.1)


def test_a_million_customers_resample_in_batches():
    units = mean_units(np.ones(1_000_000))
    reps = om.resample_sums(units, 100, np.random.default_rng(0))
    assert reps.shape == (100, 6)
    assert np.allclose(om.metrics(reps)["value"], 1.0)
    assert reps[:, 0].mean() == pytest.approx(1_000_000, rel=0.01)


def test_wilson_interval_known_values():
    # Wilson (1927) / Newcombe (1998), 81 of 263: 0.2553 to 0.3662
    lo, hi = om.wilson_interval(81, 263, 0.95)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert om.wilson_interval(0, 10, 0.95)[0] == 0.0 and om.wilson_interval(10, 10, 0.95)[1] == 1.0
    assert om.wilson_interval(0, 0, 0.95) == (None, None)


values = st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(values, st.integers(0, 2**32 - 1))
def test_intervals_contain_the_point_estimate(x, seed):
    u = mean_units(x)
    u[:, 2] = np.arange(len(x)) % 3 + 1  # orders
    point = om.metrics(u.sum(axis=0))
    m = om.metrics(om.resample_sums(u, 200, np.random.default_rng(seed)))
    for metric in ("value", "frequency", "aov"):
        lo, hi = om.percentile_interval(m[metric], 0.95)
        if not math.isnan(point[metric]):
            assert lo - 1e-9 * (1 + abs(lo)) <= point[metric] <= hi + 1e-9 * (1 + abs(hi))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 50), st.integers(1, 50))
def test_wilson_contains_the_proportion(k, n):
    k = min(k, n)
    lo, hi = om.wilson_interval(k, n, 0.9)
    assert 0.0 <= lo <= k / n <= hi <= 1.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(1.0, 1e4, allow_nan=False), min_size=1, max_size=30), st.integers(0, 2**32 - 1))
def test_identical_groups_differ_by_nothing(x, seed):
    rng = np.random.default_rng(seed)
    a = om.metrics(om.resample_sums(mean_units(x), 300, rng))["value"]
    b = om.metrics(om.resample_sums(mean_units(x), 300, rng))["value"]
    lo, hi = om.percentile_interval(a / b - 1, 0.95)
    assert lo <= 0 <= hi


CHANNELS = ("web", "app", "email", "store", "catalog", "server")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1))
def test_groups_partition_the_customers_like_a_reference(tmp_path_factory, seed):
    """Random shops: the groups, their revenue, orders and repeat customers are those counted by hand."""
    rng = random.Random(seed)
    w = LakeWriter(tmp_path_factory.mktemp("shop"))
    expected: dict[str, dict] = {}
    for i in range(rng.randint(1, 12)):
        p = f"p{i}"
        used, revenue, days, orders = set(), 0.0, set(), 0
        for k in range(rng.randint(1, 5)):
            at = rng.uniform(0, 24 * 5)
            channel = rng.choice(CHANNELS)
            if rng.random() < 0.5:
                amount = float(rng.randint(1, 200))
                w.order(p, at, amount, channel=channel, order_id=f"{p}-{k}")
                revenue += amount
                orders += 1
                days.add((T0 + timedelta(hours=at)).date())
                used.add(channel)
            elif channel != "server":
                w.touch(p, at, channel)
                used.add(channel)
        if orders:
            used.discard("server")
            online = bool(used & {"web", "app", "email"})
            offline = bool(used & {"store", "catalog"})
            expected[p] = {
                "channels": {0: "unknown", 1: "1", 2: "2"}.get(len(used), "3+"),
                "mix": "both" if online and offline else "online" if online else "offline" if offline else "unknown",
                "revenue": revenue, "orders": orders, "repeat": len(days) >= 2,
            }  # fmt: skip
    if not w.rows:
        return
    res = om.omnichannel_value(open_lake(w.write()), bootstrap=100, seed=seed)
    assert res.totals["customers"] == len(expected)
    for dimension, names in (("channels", om.CHANNEL_GROUPS), ("mix", om.MIX_GROUPS)):
        assert sum(res.group(dimension, g)["customers"] for g in names) == len(expected)
        for g in names:
            mine = [e for e in expected.values() if e[dimension] == g]
            row = res.group(dimension, g)
            assert row["customers"] == len(mine)
            assert row["revenue"] == pytest.approx(sum(e["revenue"] for e in mine))
            assert row["orders"] == sum(e["orders"] for e in mine)
            assert row["repeat_customers"] == sum(e["repeat"] for e in mine)
            if mine:
                assert row["value_lo"] <= row["value"] + 1e-9 and row["value"] <= row["value_hi"] + 1e-9


def test_same_seed_same_intervals(lake):
    a = om.omnichannel_value(lake, bootstrap=300, seed=5).as_dict()
    b = om.omnichannel_value(lake, bootstrap=300, seed=5).as_dict()
    assert a == b


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1))
def test_the_same_customers_under_other_ids_and_in_another_order_get_the_same_intervals(tmp_path_factory, seed):
    """Two runs of one population (the demo with its seed) give the customers other random profile ids, and the
    engine returns them in another order: the report, intervals included, is the same to the last digit."""
    rng = random.Random(seed)
    people = [[(rng.uniform(0, 24 * 20), rng.choice(["web", "app", "store", "email"]), float(rng.randint(1, 300)))
               for _ in range(rng.randint(1, 4))] for _ in range(rng.randint(20, 60))]  # fmt: skip
    results = []
    for names in ([f"p{i:03d}" for i in range(len(people))],
                  [f"{rng.getrandbits(64):016x}" for _ in people]):  # fmt: skip
        w = LakeWriter(tmp_path_factory.mktemp("shop"))
        for name, orders in sorted(zip(names, people, strict=True), key=lambda x: x[0]):
            for k, (at, channel, amount) in enumerate(orders):
                w.order(name, at, amount, channel=channel, order_id=f"{name}-{k}")
        results.append(om.omnichannel_value(open_lake(w.write()), bootstrap=200, seed=3).as_dict())
    assert results[0] == results[1]


def test_duckdb_and_spark_agree(tmp_path, spark_session, same_result):
    root = shop(LakeWriter(tmp_path)).event("a", 48, "Order Refunded", revenue=100.0, order_id="A1").write()
    results = []
    for engine in ("duckdb", "spark"):
        lk = open_lake(root, engine=engine, spark=spark_session if engine == "spark" else None)
        d = om.omnichannel_value(lk, bootstrap=300, clv={"a": 3.0, "d": 4.0}).as_dict()
        assert d["params"].pop("engine") == engine
        results.append(d)
    same_result(*results)


def test_a_period_without_customers(lake):
    res = om.omnichannel_value(lake, period=tp.Period(T0 + timedelta(days=300), T0 + timedelta(days=301)))
    assert res.totals["customers"] == 0 and res.totals["value"] is None
    assert all(r["customers"] == 0 and r["value"] is None and r["value_lo"] is None for r in res.rows)
    assert all(c["relative_difference"] is None and c["lo"] is None for c in res.comparisons)


def test_several_currencies_are_flagged(tmp_path):
    w = LakeWriter(tmp_path)
    w.order("p", 1, 10.0, order_id="a")
    w.order("q", 1, 10.0, order_id="b", currency="USD")
    res = om.omnichannel_value(open_lake(w.write()), bootstrap=100)
    assert res.totals["currencies"] == ["EUR", "USD"] and "several currencies" in res.warnings[0]


def test_refunds_and_net_revenue(tmp_path):
    """`Order Refunded` events of the period lower the net revenue by their amount (the lake's revenue: the payload's
    revenue, else its total); the groups
    stay gross; a refund outside the period, of an unknown person, or with a negative amount does not count, and one
    reported twice (its order_id) counts once, as orders do."""
    w = shop(LakeWriter(tmp_path))
    w.event("a", 48, "Order Refunded", revenue=100.0, order_id="A1")
    w.event("a", 49, "Order Refunded", channel="server", revenue=100.0, order_id="A1")  # the back end reports it too
    w.event("c", 72, "Order Refunded", channel="store", revenue=40.0, order_id="C2")  # the till
    w.event("b", 96, "Order Refunded", revenue=-5.0, order_id="B1")  # counted, as 0
    w.event(None, 96, "Order Refunded", revenue=70.0, order_id="X")  # nobody known
    w.event("b", 24 * 60, "Order Refunded", revenue=70.0, order_id="B2")  # after the period
    lake = open_lake(w.write())
    period = tp.Period(None, T0 + timedelta(days=40))
    res = om.omnichannel_value(lake, period=period, bootstrap=200)
    t = res.totals
    assert (t["revenue"], t["refunds"], t["refunded"], t["net_revenue"]) == (450.0, 3, 140.0, 310.0)
    assert res.group("channels", "1")["revenue"] == 250.0  # a's order stays in her group's (gross) revenue
    assert om.omnichannel_value(lake, bootstrap=200).totals["refunds"] == 4
