"""Stock per store (``demo/stock.py``) against a reference that plays every Monday delivery as an explicit event,
and the world's use of it: what the shelves let people buy, the cancelled click-and-collect orders, and the
plan that stays the same whatever the stock."""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.demo import model, params, stock
from chorus.demo.brand import BRAND
from chorus.demo.twilio import TwilioStandIn
from chorus.demo.world import World, demand

TZ = "Europe/Amsterdam"
START = datetime(2026, 3, 4, 15, 30, tzinfo=UTC)  # a Wednesday
STORES, SKUS = ("A", "B"), ("x", "y", "z")


def test_the_first_delivery_is_the_last_monday_morning_before_the_start():
    for start in (START, datetime(2026, 3, 2, 4, 59, tzinfo=UTC), datetime(2026, 3, 2, 5, 0, tzinfo=UTC),
                  datetime(2026, 10, 26, 12, tzinfo=UTC)):  # fmt: skip
        first = stock.first_delivery(start, TZ)
        local = first.astimezone(ZoneInfo(TZ))
        assert (local.weekday(), local.hour, local.minute) == (0, stock.DELIVERY_HOUR, 0), local
        assert start - stock.WEEK < first <= start
    # 06:00 in Amsterdam on 2 March 2026 is 05:00 UTC: a minute before, the delivery was the previous week's
    assert stock.first_delivery(datetime(2026, 3, 2, 4, 59, tzinfo=UTC), TZ) == datetime(2026, 2, 23, 5, tzinfo=UTC)
    assert stock.first_delivery(datetime(2026, 3, 2, 5, 0, tzinfo=UTC), TZ) == datetime(2026, 3, 2, 5, tzinfo=UTC)


def test_levels_cover_the_forecast_and_every_store_carries_everything():
    demand = Counter({("A", "x"): 10, ("A", "y"): 1})
    levels = stock.levels_from_demand(demand, 5, STORES, SKUS, 1.5)
    assert levels[("A", "x")] == 3  # 1.5 x 10 / 5 weeks
    assert levels[("A", "y")] == 1 and levels[("B", "z")] == 1  # at least one, even with no demand
    err = stock.levels_from_demand(demand, 5, STORES, SKUS, 1.5, lambda s, k: 2.0 if k == "x" else 0.5)
    assert err[("A", "x")] == 6 and err[("A", "y")] == 1
    assert stock.levels_from_demand(demand, 0.5, STORES, SKUS, 1.0)[("A", "x")] == 10  # under a week: a week


ops = st.lists(st.tuples(
    st.integers(0, 40 * 24),  # hours after the start
    st.sampled_from(["take", "reserve", "give_back"]),
    st.sampled_from(STORES),
    st.lists(st.sampled_from(SKUS), min_size=1, max_size=3)), max_size=60)  # fmt: skip


def reference(levels: dict, first: datetime, steps: list) -> tuple[list, dict]:
    """Deliveries as events: at each Monday delivery (06:00 on the stores' clocks, which change in spring and
    autumn: wall-clock arithmetic on the local time) every shelf is topped up to its level."""
    shelf = dict(levels)
    out = []
    delivery = first.astimezone(ZoneInfo(TZ)) + stock.WEEK
    for at, op, store, skus in steps:
        while delivery <= at:
            shelf = {k: max(v, levels[k]) for k, v in shelf.items()}
            delivery += stock.WEEK
        if op == "take":
            got = []
            for k in skus:
                if shelf[(store, k)] > 0:
                    shelf[(store, k)] -= 1
                    got.append(k)
            out.append(tuple(got))
        elif op == "reserve":
            need = Counter(skus)
            ok = all(shelf[(store, k)] >= n for k, n in need.items())
            if ok:
                for k, n in need.items():
                    shelf[(store, k)] -= n
            out.append(ok)
        else:
            for k in skus:
                shelf[(store, k)] += 1
            out.append(None)
    return out, shelf


@settings(max_examples=200, deadline=None)
@given(ops, st.dictionaries(st.sampled_from([(s, k) for s in STORES for k in SKUS]), st.integers(1, 4)))
def test_the_ledger_is_the_reference_played_with_explicit_deliveries(steps, given_levels):
    levels = {(s, k): given_levels.get((s, k), 1) for s in STORES for k in SKUS}
    first = stock.first_delivery(START, TZ)
    timed = sorted(((START + timedelta(hours=h), op, s, tuple(skus)) for h, op, s, skus in steps),
                   key=lambda x: x[0])  # fmt: skip
    want, shelf = reference(levels, first, timed)
    ledger = stock.Stock(levels, first, TZ)
    got = []
    for at, op, store, skus in timed:
        got.append(None if op == "give_back" else getattr(ledger, op)(store, skus, at))
        if op == "give_back":
            ledger.give_back(store, skus, at)
    assert got == want
    end = timed[-1][0] if timed else START
    assert {k: ledger.available(*k, end) for k in levels} == shelf
    assert all(v >= 0 for v in ledger.on_hand.values())
    # what was wanted at the till is what was sold there plus what was short
    tills = Counter((s, k) for _at, op, s, skus in timed if op == "take" for k in skus)
    picked = Counter((s, k) for (_at, op, s, skus), ok in zip(timed, got, strict=True) if op == "reserve" and ok
                     for k in skus)  # fmt: skip
    assert all(ledger.sold[k] + ledger.short[k] == tills[k] + picked[k] for k in levels)
    assert sum(ledger.refused.values()) == sum(1 for (_a, op, _s, _k), ok in zip(timed, got, strict=True)
                                                 if op == "reserve" and not ok)  # fmt: skip


def world(p: dict, n: int = 400, days: int = 28, seed: int = 5) -> tuple[World, list]:
    plans = list(model.customers(seed, n, START, days, p=p))
    return World(seed, START, p, plans, TwilioStandIn(), "http://chorus.test/in", days), plans


def test_the_world_cancels_the_pickups_it_cannot_pick_and_makes_no_return_for_them():
    w, plans = world(params.with_overrides({"pickup_share": 0.8, "stock_cover": 0.5, "return_rate_online": 0.5,
                                            "return_rate_store": 0.5}))  # fmt: skip
    done = w.due_actions(START + timedelta(days=40))
    kinds = Counter(a.kind for _c, a, _m in done)
    assert kinds["pickup_cancelled"] > 5
    orders = {a.order_id: a for _c, a, _m in done if a.kind == "order"}
    cancelled = [a for _c, a, _m in done if a.kind == "pickup_cancelled"]
    for a in cancelled:
        o = orders[a.order_id]  # the order was placed, for a pick-up in that store, before
        assert (o.fulfillment, o.store, o.skus, o.customer) == ("store_pickup", a.store, a.skus, a.customer)
        assert timedelta(hours=2) <= a.at - o.at <= timedelta(hours=26 + 11)  # within the store's opening hours
        assert 8 <= a.at.astimezone(ZoneInfo(BRAND.timezone)).hour < 22
    returned = {a.order_id for _c, a, _m in done if a.kind == "return"}
    assert not returned & w.not_made
    planned_returns = {a.order_id for p in plans for a in p.actions if a.kind == "return"}
    assert planned_returns & w.not_made, "some planned returns were of orders the stock did not let happen"
    # a till receipt holds what the shelf had: a subset of what she came for, never empty
    planned = {a.order_id: a.skus for p in plans for a in p.actions if a.kind == "store_purchase"}
    tills = [a for _c, a, _m in done if a.kind == "store_purchase"]
    assert tills and all(a.skus and set(a.skus) <= set(planned.get(a.order_id, a.skus)) for a in tills)
    assert w.tally.actions["store_purchase_not_made"] == len({o for o in w.not_made if o.startswith("rcpt")})
    s = w.stock.summary(w.cancelled)
    assert sum(v["cancelled"] for v in s["click_and_collect"].values()) == kinds["pickup_cancelled"]
    assert sum(v["refused"] for v in s["click_and_collect"].values()) >= kinds["pickup_cancelled"]


def test_the_posted_stream_replays_through_the_ledger():
    """(review) Every receipt is what the shelf had of what she came for, every pick-up is picked or cancelled as
    the shelf says, every till return is the receipt's items and puts them back: the planned actions replayed
    through a fresh ledger give what the world posted."""
    w, plans = world(params.with_overrides({"pickup_share": 0.8, "stock_cover": 0.5, "return_rate_online": 0.5,
                                            "return_rate_store": 0.5}))  # fmt: skip
    planned = {a.order_id: a for p in plans for a in p.actions if a.kind in ("store_purchase", "order")}
    end = START + timedelta(days=40)
    posted = {(a.order_id, a.kind): a for _c, a, _m in w.due_actions(end)}
    ledger = stock.Stock(dict(w.stock.levels), w.stock.first, TZ)
    receipts, returns = {}, 0
    for p_a in sorted((a for p in plans for a in p.actions if a.at < end), key=lambda a: a.at):
        if p_a.kind == "store_purchase":
            got = ledger.take(p_a.store, p_a.skus, p_a.at)
            a = posted.get((p_a.order_id, "store_purchase"))
            assert (a.skus if a else ()) == got, (p_a, a, got)
            receipts[p_a.order_id] = got
        elif p_a.kind == "order" and p_a.fulfillment == "store_pickup":
            assert (p_a.order_id in w.not_made) == (not ledger.reserve(p_a.store, p_a.skus, p_a.at))
        elif p_a.kind == "return" and p_a.channel == "store" and receipts.get(p_a.order_id):
            a = posted[(p_a.order_id, "return")]
            assert a.skus == receipts[p_a.order_id], (a, receipts[p_a.order_id])
            ledger.give_back(p_a.store, a.skus, p_a.at)
            returns += 1
    assert returns > 0 and any(len(r) < len(planned[o].skus) for o, r in receipts.items() if r)


def test_deliveries_stay_at_six_on_the_stores_clocks_across_a_change_of_the_clocks():
    """(review) Counted in weeks of 168 hours, the deliveries after the spring change came at 07:00 local."""
    ams = ZoneInfo(TZ)
    s = stock.Stock({("A", "x"): 1}, stock.first_delivery(START, TZ), TZ)
    assert s.take("A", ["x"], datetime(2026, 4, 5, 12, tzinfo=ams)) == ("x",)  # the Sunday after the change
    assert s.available("A", "x", datetime(2026, 4, 6, 5, 59, tzinfo=ams)) == 0
    assert s.available("A", "x", datetime(2026, 4, 6, 6, 0, tzinfo=ams)) == 1
    assert s.take("A", ["x"], datetime(2026, 10, 25, 12, tzinfo=ams)) == ("x",)  # the autumn change's Sunday
    assert s.available("A", "x", datetime(2026, 10, 26, 5, 59, tzinfo=ams)) == 0
    assert s.available("A", "x", datetime(2026, 10, 26, 6, 0, tzinfo=ams)) == 1
    fresh = stock.Stock({("A", "x"): 1}, stock.first_delivery(START, TZ), TZ)  # the ledger only moves forward
    assert fresh.available("A", "x", START - timedelta(days=30)) == 0  # before the first delivery: nothing yet


def test_the_plan_is_the_same_whatever_the_stock():
    digests = []
    for cover in (0.3, 5.0):
        w, _ = world(params.with_overrides({"stock_cover": cover}), n=150)
        w.due_actions(START + timedelta(days=40))
        digests.append(w.tally.plan.hexdigest())
    assert digests[0] == digests[1]


def test_the_levels_follow_the_plans_demand():
    p = {**params.DEFAULTS, "forecast_error": 0.0}  # an exact forecast: the levels are the cover of the demand
    w, plans = world(p, n=300)
    wanted = demand(plans)
    assert sum(wanted.values()) > 50
    assert set(w.stock.levels) == {(s.id, k.sku) for s in BRAND.stores for k in BRAND.catalog}
    for (s, k), level in w.stock.levels.items():  # 28 days: 4 weeks
        assert level == max(1, math.ceil(p["stock_cover"] * wanted.get((s, k), 0) / 4 - 1e-9)), (s, k)
    assert any(level > 1 for level in w.stock.levels.values())
    noisy, _ = world(params.DEFAULTS, n=300)
    assert noisy.stock.levels != w.stock.levels  # the forecast error moves some levels
