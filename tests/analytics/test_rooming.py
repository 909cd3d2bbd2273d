"""Showrooming (store visit, then an online purchase) and webrooming (online browsing, then a store purchase)."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.analytics import rooming
from chorus.analytics import touchpoints as tp
from chorus.analytics.engine import open_lake
from chorus.errors import ChorusError
from tests.analytics.lakegen import T0, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DAY = 24


def shop(w: LakeWriter) -> LakeWriter:
    # -- showrooming: online purchases
    w.touch("a", 0, "store")
    w.order("a", DAY, 100.0, order_id="A1", category="shoes")  # a day after the visit: showroomed
    w.order("a", DAY + 0.1, 100.0, order_id="A1", category="shoes")  # the same order reported again
    w.order("a", 8 * DAY, 70.0, order_id="A2", category="shoes")  # 8 days after it: not
    w.order("b", 10, 20.0, order_id="B1", category="bags")  # the store visit comes after the purchase: not
    w.touch("b", 20, "store")
    w.touch("c", 0, "store")
    w.touch("c", 5, "store")
    w.order("c", 30, 40.0, channel="app", order_id="C1", category="bags")  # two visits before: counted once
    w.event("d", 0, "Message Sent", channel="call_center", direction="outbound")  # Chorus calling is no visit
    w.order("d", 5, 15.0, order_id="D1", category="toys")
    w.touch("j_old", 0, "store")  # a profile merged into j since
    w.order("j", 5, 25.0, order_id="J1", category="toys")
    w.alias("j_old", "j")
    # -- webrooming: store purchases
    w.touch("e", 0, "web", category="shoes")
    w.order("e", 2 * DAY, 80.0, channel="store", order_id="E1", category="shoes")  # same category
    w.event("f", 0, "Product Viewed", channel="app", category="bags")
    w.order("f", 10, 60.0, channel="store", order_id="F1", category="shoes")  # another category
    w.touch("g", 0, "web")
    w.order("g", 10, 50.0, channel="store", order_id="G1", category="shoes")  # the browse has no category
    w.touch("h", 0, "web", category="shoes")
    w.order("h", 8 * DAY, 30.0, channel="store", order_id="H1", category="shoes")  # browsed 8 days before: not
    w.event("i", 0, "Product Added", channel="web", category="toys")  # not browsing
    w.order("i", 1, 20.0, channel="store", order_id="I1", category="toys")
    return w


@pytest.fixture
def lake(tmp_path):
    return open_lake(shop(LakeWriter(tmp_path)).write())


def test_which_purchases_are_showroomed_and_webroomed(lake):
    rows = rooming.purchases(lake).to_pyarrow().to_pylist()
    got = {r["order_id"]: (r["direction"], r["roomed"], r["category_match"]) for r in rows}
    assert got == {
        "A1": ("showrooming", True, None), "A2": ("showrooming", False, None), "B1": ("showrooming", False, None),
        "C1": ("showrooming", True, None), "D1": ("showrooming", False, None), "J1": ("showrooming", True, None),
        "E1": ("webrooming", True, "same"), "F1": ("webrooming", True, "other"),
        "G1": ("webrooming", True, "unknown"), "H1": ("webrooming", False, None), "I1": ("webrooming", False, None),
    }  # fmt: skip
    assert len(rows) == 11  # A1 once


def test_counts_revenue_and_shares_by_category(lake):
    res = rooming.showrooming(lake)
    show = res.totals["showrooming"]
    assert (show["purchases"], show["roomed"], show["purchase_revenue"], show["roomed_revenue"]) == (6, 3, 270.0, 165.0)
    assert show["share"] == 0.5 and show["revenue_share"] == pytest.approx(165 / 270)
    assert show["same_category"] is None
    by_cat = {r["category"]: (r["purchases"], r["roomed"], r["purchase_revenue"], r["roomed_revenue"])
              for r in res.rows if r["direction"] == "showrooming"}  # fmt: skip
    assert by_cat == {"shoes": (2, 1, 170.0, 100.0), "bags": (2, 1, 60.0, 40.0), "toys": (2, 1, 40.0, 25.0)}
    web = res.totals["webrooming"]
    assert (web["purchases"], web["roomed"], web["purchase_revenue"], web["roomed_revenue"]) == (5, 3, 240.0, 190.0)
    assert (web["same_category"], web["other_category"], web["unknown_category"]) == (1, 1, 1)
    shoes = res.row("webrooming", "shoes")
    assert (shoes["purchases"], shoes["roomed"], shoes["share"]) == (4, 3, 0.75)
    toys = res.row("webrooming", "toys")
    assert (toys["purchases"], toys["roomed"], toys["share"], toys["revenue_share"]) == (1, 0, 0.0, 0.0)
    # most roomed first, then by purchases and name
    assert [(r["direction"], r["category"]) for r in res.rows] == [
        ("showrooming", "bags"), ("showrooming", "shoes"), ("showrooming", "toys"),
        ("webrooming", "shoes"), ("webrooming", "toys"),
    ]  # fmt: skip
    assert res.warnings == []


def test_window_bounds_are_inclusive(lake):
    res = rooming.showrooming(lake, window=timedelta(days=1))
    # A1 is exactly a day after the visit; C1 25 h after the last one: out
    assert res.totals["showrooming"]["roomed"] == 2  # A1, J1
    res = rooming.showrooming(lake, window=timedelta(days=8))
    assert res.totals["showrooming"]["roomed"] == 4  # + A2, exactly 8 days after
    assert res.totals["webrooming"]["roomed"] == 4  # + H1


def test_period_counts_its_purchases_and_visits_before_it(lake):
    res = rooming.showrooming(lake, period=tp.Period(T0 + timedelta(hours=12), T0 + timedelta(days=3)))
    show = res.totals["showrooming"]  # A1 (its visit is before the period) and C1
    assert (show["purchases"], show["roomed"]) == (2, 2)
    web = res.totals["webrooming"]  # E1
    assert (web["purchases"], web["roomed"]) == (1, 1)


def test_custom_online_and_offline_channels(lake):
    # with "app" offline, C1 (bought in the app) is a store-side purchase, browsed by nobody
    res = rooming.showrooming(lake, online=("web",), offline=("store", "app"))
    assert res.totals["showrooming"]["purchases"] == 5
    assert res.totals["webrooming"]["purchases"] == 6


def test_no_purchase_is_said(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("x", 0, "store")
    res = rooming.showrooming(open_lake(w.write()))
    assert res.totals["showrooming"]["share"] is None and len(res.warnings) == 2


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"window": timedelta(0)}, "window"),
        ({"window": timedelta(days=-1)}, "window"),
        ({"window": 7}, "window"),
        ({"online": ("web",), "offline": ("web",)}, "offline"),
        ({"offline": ()}, "offline"),
        ({"browse_channels": ()}, "browse_channels"),
        ({"period": tp.Period(T0, T0 - timedelta(days=1))}, "until"),
    ],
)
def test_bad_arguments_name_their_field(lake, kwargs, field):
    with pytest.raises(ChorusError) as exc:
        rooming.showrooming(lake, **kwargs)
    assert exc.value.field == field


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 2**32 - 1), st.integers(1, 6))
def test_random_shops_match_a_reference(tmp_path_factory, seed, days):
    """The purchases roomed are those found by comparing every pair by hand; widening the window only adds."""
    rng = random.Random(seed)
    w = LakeWriter(tmp_path_factory.mktemp("shop"))
    visits, browses, buys = [], [], []
    for i in range(rng.randint(1, 8)):
        p = f"p{i}"
        for k in range(rng.randint(1, 6)):
            at = rng.uniform(0, 24 * 10)
            kind = rng.choice(["visit", "browse", "web_order", "store_order"])
            if kind == "visit":
                w.touch(p, at, "store")
                visits.append((p, at))
            elif kind == "browse":
                w.touch(p, at, "web")
                browses.append((p, at))
            else:
                channel = "web" if kind == "web_order" else "store"
                w.order(p, at, 10.0, channel=channel, order_id=f"{p}-{k}")
                buys.append((f"{p}-{k}", p, at, channel))
    window = timedelta(days=days)
    h = days * 24
    expected = {}
    for order_id, p, at, channel in buys:
        before = visits if channel == "web" else browses
        expected[order_id] = any(q == p and 0 <= at - t <= h for q, t in before)
    lake = open_lake(w.write())
    got = {r["order_id"]: r["roomed"] for r in rooming.purchases(lake, window=window).to_pyarrow().to_pylist()}
    assert got == expected
    wider = {r["order_id"]: r["roomed"] for r in rooming.purchases(lake, window=2 * window).to_pyarrow().to_pylist()}
    assert all(wider[o] for o, roomed in got.items() if roomed)


def test_duckdb_and_spark_agree(tmp_path, spark_session, same_result):
    root = shop(LakeWriter(tmp_path)).write()
    results = []
    for engine in ("duckdb", "spark"):
        lk = open_lake(root, engine=engine, spark=spark_session if engine == "spark" else None)
        d = rooming.showrooming(lk, window=timedelta(days=7, hours=12)).as_dict()
        assert d["params"].pop("engine") == engine
        results.append(d)
    same_result(*results)


def test_several_currencies_are_flagged(tmp_path):
    w = LakeWriter(tmp_path)
    w.order("p", 1, 10.0, order_id="a")
    w.order("q", 1, 10.0, order_id="b", currency="USD", channel="store")
    res = rooming.showrooming(open_lake(w.write()))
    assert "several currencies (EUR, USD)" in res.warnings[0]
