"""Probe finding 4: two `Order Completed` events of revenue 1.7e308 (anybody holding the public write key can send
them) added up to infinity, and the reports degraded: attribution's totals became null, omnichannel failed with a
400 blaming its `clv` argument. The rule (docs/analytics.md): an order or refund value above
``limits.MAX_ORDER_VALUE`` (1e15) counts as 0 in every sum, as a negative one does, and each report counts the
orders left out and names the first few in a warning."""

from __future__ import annotations

import math

import ibis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from chorus.analytics import attribution, clv, limits, omnichannel, paths, rooming, uplift
from chorus.analytics import touchpoints as tp
from chorus.analytics.engine import open_lake
from chorus.cli import app
from tests.analytics.lakegen import WS, LakeWriter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
HUGE = 1.7e308
BOUND = 1e15  # limits.MAX_ORDER_VALUE, as documented


def _store(w: LakeWriter) -> LakeWriter:
    """12 ordinary customers (two orders each, 312.0 in all) and one visitor with two orders of 1.7e308."""
    for i in range(12):
        ch = ("web", "store", "email")[i % 3]
        w.touch(f"p{i}", i, ch).order(f"p{i}", i + 1, 10.0 + i, order_id=f"o{i}a", channel=ch)
        w.touch(f"p{i}", 30 + i, "web").order(f"p{i}", 200 + i, 5.0 + i, order_id=f"o{i}b")
    w.touch("evil", 5, "web").order("evil", 6, HUGE, order_id="e1").order("evil", 7, HUGE, order_id="e2")
    return w


ORDINARY = sum(10.0 + i + 5.0 + i for i in range(12))  # 312.0


def _finite(value) -> None:
    """Every number in a report (nested dicts and lists) is finite: nothing turned into inf, NaN or null sums."""
    if isinstance(value, dict):
        for v in value.values():
            _finite(v)
    elif isinstance(value, list | tuple):
        for v in value:
            _finite(v)
    elif isinstance(value, float):
        assert math.isfinite(value), value


def _named(warnings: list[str]) -> str:
    found = [w for w in warnings if "above 1e15" in w]
    assert len(found) == 1, warnings
    assert "order e1, order e2" in found[0], found
    return found[0]


def test_attribution_leaves_the_two_orders_out_and_says_so(tmp_path):
    lk = open_lake(str(_store(LakeWriter(tmp_path)).write()), workspace_id=WS)
    res = attribution.attribute(lk, models=("linear", "markov", "shapley"))
    t = res.totals
    assert t["conversions"] == 26  # the two orders still count as conversions
    assert t["revenue"] == ORDINARY and t["attributed_revenue"] == ORDINARY, t
    assert t["unattributed_revenue"] == 0.0 and t["oversized_revenue_conversions"] == 2, t
    _named(res.warnings)
    _finite(res.as_dict())
    for model in res.models:  # each model's credit still adds up to the attributed revenue
        assert sum(r["revenue"] for r in res.rows if r["model"] == model) == pytest.approx(ORDINARY)


def test_omnichannel_with_clv_stays_a_report(tmp_path):
    """Before: clv_by_profile passed infinite CLVs and omnichannel_value refused them (ChorusError field=clv)."""
    lk = open_lake(str(_store(LakeWriter(tmp_path)).write()), workspace_id=WS)
    by_profile, why = clv.clv_by_profile(lk)
    assert by_profile and all(math.isfinite(v) for v in by_profile.values()), by_profile
    res = omnichannel.omnichannel_value(lk, bootstrap=100, clv=by_profile)
    if why:
        res.warnings.append(why)
    assert res.totals["revenue"] == ORDINARY and res.totals["oversized_revenue_orders"] == 2, res.totals
    _named(res.warnings)
    _finite(res.as_dict())


def test_refunds_of_1_7e308_do_not_reach_net_revenue(tmp_path):
    w = _store(LakeWriter(tmp_path))
    w.event("p0", 300, "Order Refunded", revenue=HUGE, order_id="r1").event("p1", 301, "Order Refunded",
                                                                           revenue=HUGE, order_id="r2")  # fmt: skip
    w.event("p2", 302, "Order Refunded", revenue=4.0, order_id="r3")
    lk = open_lake(str(w.write()), workspace_id=WS)
    res = omnichannel.omnichannel_value(lk, bootstrap=100)
    t = res.totals
    assert (t["refunds"], t["refunded"], t["oversized_refunds"]) == (3, 4.0, 2), t
    assert t["net_revenue"] == ORDINARY - 4.0, t
    assert any("2 refunds have a revenue above 1e15" in w for w in res.warnings), res.warnings
    _finite(res.as_dict())


def test_clv_paths_rooming_and_uplift_stay_finite_and_say_so(tmp_path):
    w = _store(LakeWriter(tmp_path))
    for i in range(4):  # a journey with a holdout, and the visitor entered it
        w.event(f"p{i}", 100, "Journey Entered", journey_id="j1", variant="holdout" if i % 2 else "a")
    w.event("evil", 5.5, "Journey Entered", journey_id="j1", variant="a")
    lk = open_lake(str(w.write()), workspace_id=WS)
    lv = clv.lifetime_values(lk)
    _named(lv.warnings)
    _finite(lv.summary())
    _finite(lv.rows())
    rep = paths.path_report(lk)
    assert rep.totals["oversized_revenue_conversions"] == 2
    _named(rep.warnings)
    _finite(rep.as_dict())
    room = rooming.showrooming(lk)
    _named(room.warnings)
    _finite(room.as_dict())
    up = uplift.uplift(lk)
    assert any("2 conversions have a revenue above 1e15" in w for w in up.warnings), up.warnings
    _finite(up.as_dict())


def test_the_cli_prints_the_warning(tmp_path):
    lake = _store(LakeWriter(tmp_path)).write()
    for command in (["attribution", "--models", "linear"], ["report", "paths"],
                    ["report", "omnichannel", "--bootstrap", "100"]):  # fmt: skip
        r = CliRunner().invoke(app, [*command, "--lake", str(lake), "--format", "json"])
        assert r.exit_code == 0, (r.output[-2000:], r.exception)
        assert "order e1, order e2" in r.output and "Infinity" not in r.output, r.output[-2000:]


# -- the rule itself, on any value --------------------------------------------------------------------------------
money = st.one_of(
    st.floats(allow_nan=True, allow_infinity=False),
    st.sampled_from([BOUND, math.nextafter(BOUND, math.inf), HUGE, -HUGE, 0.0]),
    st.floats(min_value=0, max_value=1e6),
    st.none(),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(money, max_size=12))
def test_order_value_keeps_what_a_report_can_add_up(values):
    """Counted: 0 to MAX_ORDER_VALUE inclusive. Left out (0, flagged): above it. Negative: 0, flagged as negative.
    Missing or NaN: 0, not flagged. Any list of them adds up to a finite sum."""
    assert limits.MAX_ORDER_VALUE == BOUND
    con = ibis.duckdb.connect()
    t = ibis.memtable({"revenue": values or [None]}, schema={"revenue": "float64"})
    value, negative, oversized = tp.order_value(t.revenue)
    got = con.to_pyarrow(t.select(value=value, negative=negative, oversized=oversized)).to_pylist()
    total = con.to_pyarrow(t.select(value=value).value.sum())
    for raw, row in zip(values or [None], got, strict=True):
        missing = raw is None or math.isnan(raw)
        assert row["oversized"] == (not missing and raw > BOUND), (raw, row)
        assert row["negative"] == (not missing and raw < 0), (raw, row)
        kept = not missing and 0 <= raw <= BOUND
        assert row["value"] == (raw if kept else 0.0), (raw, row)
    assert math.isfinite(total.as_py() or 0.0)
    con.disconnect()
