"""Journeys and attribution over a lake: which touchpoints make a journey, and the credit each model gives."""

from __future__ import annotations

import math
from datetime import timedelta

import pytest

from chorus.analytics import attribution as attr
from chorus.analytics import touchpoints as tp
from chorus.analytics.clv import rfm_summary
from chorus.analytics.engine import open_lake
from chorus.analytics.paths import path_report
from chorus.errors import ChorusError
from tests.analytics.lakegen import T0, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def credit(res, model, key="conversions"):
    return {label: round(r[key], 6) for label, r in res.table(model).items()}


@pytest.fixture
def lake3(tmp_path):
    """One journey email -> web (cpc) -> store -> order 100 (store), and a person with no touchpoint who buys."""
    w = LakeWriter(tmp_path)
    w.event("ana", 0, "Message Opened", channel="email", campaign_id="spring")
    w.event("ana", 0.1, "Message Clicked", channel="email", campaign_id="spring")  # same touchpoint: 6 min later
    w.touch("ana", 24, "web", campaign_medium="cpc", campaign_name="brand")
    w.touch("ana", 24.2, "web")  # the same session
    w.touch("ana", 48, "store")
    w.order("ana", 72, 100.0, channel="store", order_id="A1")
    w.order("bob", 5, 30.0, order_id="B1")
    return open_lake(w.write())


def test_rule_based_models_on_one_journey(lake3):
    res = attr.attribute(lake3, models=attr.RULE_MODELS, half_life=timedelta(days=1))
    assert credit(res, "first_touch") == {"email": 1.0}
    assert credit(res, "last_touch") == {"store": 1.0}
    assert credit(res, "linear") == {k: round(1 / 3, 6) for k in ("email", "cpc", "store")}
    assert credit(res, "position_based") == {"email": 0.4, "cpc": 0.2, "store": 0.4}
    # touches 72 h, 48 h and 24 h before the order, half-life 24 h: weights 1/8, 1/4, 1/2
    assert credit(res, "time_decay") == {"email": round(1 / 7, 6), "cpc": round(2 / 7, 6), "store": round(4 / 7, 6)}
    assert credit(res, "linear", "revenue") == {k: round(100 / 3, 6) for k in ("email", "cpc", "store")}
    t = res.totals
    assert (t["conversions"], t["revenue"], t["attributed_conversions"], t["unattributed_conversions"]) == (
        2, 130.0, 1, 1)  # fmt: skip
    assert t["unattributed_revenue"] == 30.0 and t["currencies"] == ["EUR"]


def test_by_campaign_names_touchpoints_without_one_by_their_channel(lake3):
    res = attr.attribute(lake3, by="campaign", models=("linear",))
    assert set(credit(res, "linear")) == {"spring", "brand", "(store)"}


def test_data_driven_models_split_a_single_path_by_its_channels(lake3):
    res = attr.attribute(lake3, models=("markov", "shapley"))
    for model in ("markov", "shapley"):
        c = {label: r["conversions"] for label, r in res.table(model).items()}
        assert set(c) == {"email", "cpc", "store"} and math.isclose(sum(c.values()), 1.0)
        assert all(math.isclose(v, 1 / 3, rel_tol=1e-9) for v in c.values())
    assert res.totals["shapley_method"] == "exact"


def test_lookback_conversions_split_journeys_and_open_journeys(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "store")  # 40 days before the first order: outside the 30-day lookback
    w.touch("p", 24 * 40, "sms")
    w.order("p", 24 * 40 + 1, 10.0, order_id="o1")
    w.touch("p", 24 * 41, "app")  # belongs to the second order only
    w.order("p", 24 * 42, 20.0, order_id="o2")
    w.order("p", 24 * 42 + 2, 20.0, order_id="o2", channel="server")  # the same order reported again
    w.touch("p", 24 * 50, "call_center")  # after the last order: an open journey
    lk = open_lake(w.write())
    j = tp.build(lk)
    rows = j.touches.order_by("ts").to_pyarrow().to_pylist()
    assert [(r["channel"], r["journey"], r["converted"], r["revenue"]) for r in rows] == [
        ("sms", 1, True, 10.0), ("app", 2, True, 20.0), ("call_center", 3, False, 0.0)]  # fmt: skip
    paths, conv, value, nulls = tp.path_counts(j)
    assert sorted(zip(paths, conv, value, nulls, strict=True)) == [
        (("app",), 1, 20.0, 0), (("call_center",), 0, 0.0, 1), (("sms",), 1, 10.0, 0)]  # fmt: skip
    res = attr.attribute(lk, models=("last_touch",))
    assert res.totals["conversions"] == 2 and res.totals["revenue"] == 30.0 and res.totals["open_journeys"] == 1
    assert credit(res, "last_touch", "revenue") == {"sms": 10.0, "app": 20.0}


def test_sessions_touch_gap_and_new_campaigns(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "web")
    w.touch("p", 0.25, "web")  # 15 min later: same session
    w.touch("p", 0.5, "web", campaign_medium="social", campaign_name="promo")  # a new campaign: a new touchpoint
    w.touch("p", 0.6, "web")  # continues the social session
    w.touch("p", 2, "web")  # 84 min after: a new session
    w.event("p", 2.1, "Message Sent", channel="email", direction="outbound")  # a send is not a touchpoint
    w.event("p", 2.2, "Message Unsubscribed", channel="email", direction="inbound")  # excluded by default
    w.order("p", 3, 50.0, order_id="x")
    lk = open_lake(w.write())
    paths = tp.path_counts(tp.build(lk))[0]
    assert paths == [("web", "social", "web")]
    cfg = tp.parse_config({"touch_gap_minutes": 0})
    assert tp.path_counts(tp.build(lk, cfg))[0] == [("web", "web", "social", "web", "web")]  # each event alone


def test_merged_profiles_join_through_aliases(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("anon-1", 0, "web")
    w.order("ana", 5, 10.0, order_id="o")
    w.alias("anon-1", "ana")
    res = attr.attribute(open_lake(w.write()), models=("first_touch",))
    assert credit(res, "first_touch") == {"web": 1.0}


def test_period_filters_conversions_not_their_touchpoints(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "email")
    w.order("p", 48, 10.0, order_id="in")
    w.touch("q", 0, "sms")
    w.order("q", 1, 10.0, order_id="before")
    lk = open_lake(w.write())
    since = T0 + timedelta(hours=24)
    res = attr.attribute(lk, period=tp.Period(since=since), models=("linear",))
    assert credit(res, "linear") == {"email": 1.0} and res.totals["conversions"] == 1


def test_config_is_validated_field_by_field():
    with pytest.raises(ChorusError) as e:
        tp.parse_config({"touchpoints": [{"name": "x", "label": ["nope"]}]})
    assert e.value.field == "touchpoints[0].label"
    with pytest.raises(ChorusError) as e:
        tp.parse_config({"lookback_days": -1})
    assert e.value.field == "lookback_days"
    with pytest.raises(ChorusError) as e:
        tp.parse_config({"conversion": ["x"]})
    assert e.value.field == "conversion"
    cfg = tp.parse_config({"conversions": "Signed Up", "touchpoints": [{"name": "all", "channels": ["web"]}]})
    assert cfg.conversions == ("Signed Up",) and cfg.rules[0].channels == ("web",)
    assert tp.parse_config(cfg.as_dict()) == cfg  # the printed config reads back


def test_custom_conversion_and_rules(tmp_path):
    w = LakeWriter(tmp_path)
    w.event("p", 0, "Catalog Code Used", channel="catalog", campaign_id="autumn-catalog")
    w.event("p", 1, "Signed Up", channel="web", revenue=None)
    lk = open_lake(w.write())
    cfg = tp.parse_config({"conversions": ["Signed Up"],
                           "touchpoints": [{"name": "codes", "events": ["Catalog Code Used"]}]})  # fmt: skip
    res = attr.attribute(lk, cfg, models=("last_touch",), by="campaign")
    assert credit(res, "last_touch") == {"autumn-catalog": 1.0} and res.totals["revenue"] == 0.0


def test_bad_arguments_name_their_field(lake3):
    for kwargs, field in (({"models": ("magic",)}, "models"), ({"markov_order": 4}, "order"),
                          ({"by": "store"}, "by"), ({"shapley": "guess"}, "shapley")):  # fmt: skip
        with pytest.raises(ChorusError) as e:
            attr.attribute(lake3, **kwargs)
        assert e.value.field == field


def test_several_currencies_are_flagged(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "web")
    w.order("p", 1, 10.0, order_id="a")
    w.touch("q", 0, "web")
    w.order("q", 1, 10.0, order_id="b", currency="USD")
    res = attr.attribute(open_lake(w.write()), models=("linear",))
    assert res.totals["currencies"] == ["EUR", "USD"] and "several currencies" in res.warnings[0]


def test_duckdb_and_spark_agree(tmp_path, spark_session, same_result):
    import random

    rng = random.Random(7)
    w = LakeWriter(tmp_path)
    chans = ["email", "sms", "store", "web", "app", "call_center"]
    for i in range(300):
        t = float(rng.randint(0, 200))
        for _ in range(rng.randint(1, 4)):
            t += rng.randint(0, 40)  # whole hours: touchpoints and orders at the same instant too
            c = rng.choice(chans)
            if c in ("email", "sms"):
                w.event(f"p{i}", t, "Message Clicked", channel=c, campaign_id=rng.choice(["a", "b"]))
            else:
                w.touch(f"p{i}", t, c)
        if rng.random() < 0.5:
            w.order(f"p{i}", t + rng.randint(0, 1), round(rng.uniform(5, 50), 2), order_id=f"o{i}",
                    campaign_medium=rng.choice([None, "cpc"]))  # fmt: skip
        if rng.random() < 0.3:
            w.order(f"p{i}", t + rng.randint(30, 300), round(rng.uniform(5, 50), 2), order_id=f"r{i}")
    root = w.write()
    period = tp.Period(T0 + timedelta(days=2), T0 + timedelta(days=14))
    results, others = [], []
    for engine in ("duckdb", "spark"):
        lk = open_lake(root, engine=engine, spark=spark_session if engine == "spark" else None)
        results.append(attr.attribute(lk, period=period, by="campaign", markov_order=2))
        ev = tp.conversions(tp.resolved_events(lk, tp.Config()), tp.Config())
        rfm = rfm_summary(ev, end=(T0 + timedelta(days=14)).date()).to_pyarrow().to_pylist()
        others.append((path_report(lk, period=period).as_dict(), sorted(rfm, key=lambda r: r["customer"])))
    assert others[0][0] == others[1][0]  # paths, transitions, Sankey: counts, exact
    assert len(others[0][1]) > 100
    same_result(others[0][1], others[1][1])  # pytest.approx does not compare lists of dicts (pytest 9 refuses)
    duck, spark = results
    same_result(duck.totals, spark.totals)  # pytest 9: approx takes no dict holding a list (currencies)
    assert {(r["model"], r["label"]) for r in duck.rows} == {(r["model"], r["label"]) for r in spark.rows}
    sp = {(r["model"], r["label"]): r for r in spark.rows}
    for r in duck.rows:
        other = sp[(r["model"], r["label"])]
        assert math.isclose(r["conversions"], other["conversions"], rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(r["revenue"], other["revenue"], rel_tol=1e-9, abs_tol=2e-6)  # rounded to 1e-6


def test_reports_are_as_of_until(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "email")
    w.order("p", 24 * 5, 10.0, order_id="later")  # converts after the period
    lk = open_lake(w.write())
    for days in (1, 2, 3, 4):  # whatever the distance to the order, as of until it had not converted
        j = tp.build(lk, period=tp.Period(until=T0 + timedelta(days=days)))
        assert tp.path_counts(j) == ([("email",)], [0], [0.0], [1])
    j = tp.build(lk, period=tp.Period(until=T0 + timedelta(days=6)))
    assert tp.path_counts(j) == ([("email",)], [1], [10.0], [0])


def test_a_new_campaign_on_the_same_medium_is_a_new_touchpoint(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "web", campaign_medium="cpc", campaign_name="brand")
    w.touch("p", 0.2, "web", campaign_medium="cpc", campaign_name="spring-sale")
    w.touch("p", 0.3, "web", campaign_medium="cpc", campaign_name="spring-sale")  # a reload of the same landing
    w.order("p", 1, 10.0, order_id="o")
    res = attr.attribute(open_lake(w.write()), by="campaign", models=("first_touch", "last_touch", "linear"))
    assert credit(res, "first_touch") == {"brand": 1.0} and credit(res, "last_touch") == {"spring-sale": 1.0}
    assert credit(res, "linear") == {"brand": 0.5, "spring-sale": 0.5}


def test_touchpoints_at_the_instant_of_the_conversion_count_for_it(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 1, "store")
    w.order("p", 1, 10.0, channel="store", order_id="o")
    w.touch("p", 1 + 1 / 3600, "web")  # a second later: the next journey
    j = tp.build(open_lake(w.write()))
    paths, conv, _, nulls = tp.path_counts(j)
    assert sorted(zip(paths, conv, nulls, strict=True)) == [(("store",), 1, 0), (("web",), 0, 1)]


def test_time_decay_on_old_journeys_and_short_half_lives(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "email")
    w.touch("p", 1, "web")
    w.touch("p", 2, "sms")
    w.order("p", 24 * 19, 10.0, order_id="o")  # 19 days after: ½^(age/15 min) underflows
    res = attr.attribute(open_lake(w.write()), models=("time_decay",), half_life=timedelta(minutes=15))
    c = credit(res, "time_decay")
    assert all(math.isfinite(v) for v in c.values()) and math.isclose(sum(c.values()), 1.0, abs_tol=1e-6)
    # 1 h and 2 h before the last touchpoint: weights 2^-4 and 2^-8 of its weight
    assert c == {"sms": round(256 / 273, 6), "web": round(16 / 273, 6), "email": round(1 / 273, 6)}


def test_negative_or_missing_revenue_counts_as_zero_and_is_reported(tmp_path):
    w = LakeWriter(tmp_path)
    w.touch("p", 0, "email")
    w.order("p", 1, -40.0, order_id="refund")
    w.touch("q", 0, "sms")
    w.order("q", 1, float("nan"), order_id="nan")
    w.touch("r", 0, "web")
    w.order("r", 1, 25.0, order_id="ok")
    res = attr.attribute(open_lake(w.write()))
    assert res.totals["revenue"] == 25.0 and res.totals["negative_revenue_conversions"] == 1
    assert any("negative revenue" in x for x in res.warnings)
    for model in res.models:
        assert math.isclose(sum(r["revenue"] for r in res.table(model).values()), 25.0)
        assert math.isclose(sum(r["conversions"] for r in res.table(model).values()), 3.0)


def test_exact_shapley_beyond_twelve_channels_is_a_clear_error(tmp_path):
    w = LakeWriter(tmp_path)
    for i in range(13):
        w.event(f"p{i}", 0, "Interaction", channel="store", campaign_id=f"c{i}")
        w.order(f"p{i}", 1, 1.0, order_id=f"o{i}")
    lk = open_lake(w.write())
    with pytest.raises(ChorusError) as e:
        attr.attribute(lk, by="campaign", models=("shapley",), shapley="exact")
    assert e.value.field == "shapley" and "13" in e.value.message
    res = attr.attribute(lk, by="campaign", models=("shapley",))  # auto: the closed form
    assert res.totals["shapley_method"] == "simplified" and len(res.table("shapley")) == 13
