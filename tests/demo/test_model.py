"""The behaviour model's invariants, for any seed and size (hypothesis)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.demo import model, params
from chorus.demo.brand import BRAND

START = datetime(2026, 3, 1, tzinfo=UTC)
seeds = st.integers(min_value=0, max_value=2**32)
sizes = st.integers(min_value=1, max_value=40)
spans = st.integers(min_value=1, max_value=120)


@settings(max_examples=40, deadline=None)
@given(seeds, sizes, spans)
def test_the_same_seed_gives_the_same_plans(seed, n, days):
    a = [(p.customer, p.actions) for p in model.customers(seed, n, START, days)]
    b = [(p.customer, p.actions) for p in model.customers(seed, n, START, days)]
    assert a == b


@settings(max_examples=20, deadline=None)
@given(seeds, sizes)
def test_a_customer_does_not_depend_on_how_many_others_there_are(seed, n):
    small = list(model.customers(seed, n, START, 30))
    big = list(model.customers(seed, n + 5, START, 30))
    assert [(p.customer, p.actions) for p in small] == [(p.customer, p.actions) for p in big[:n]]


@settings(max_examples=60, deadline=None)
@given(seeds, sizes, spans)
def test_actions_are_in_the_period_ordered_and_consistent(seed, n, days):
    end = START + timedelta(days=days)
    skus = {p.sku for p in BRAND.catalog}
    stores = {s.id for s in BRAND.stores}
    for p in model.customers(seed, n, START, days):
        c, acts = p.customer, p.actions
        assert [a.at for a in acts] == sorted(a.at for a in acts)
        stop = c.churn_at or end
        assert all(START <= a.at < stop <= end for a in acts), "nothing before the start, after churn or the end"
        assert all(a.customer == c.index and a.kind in model.KINDS for a in acts)
        signed_up = c.existing
        orders, cancelled, returned = set(), set(), set()
        for a in acts:
            assert set(a.skus) <= skus, a
            assert a.store is None or a.store in stores
            if a.kind == "signup":
                assert not signed_up, "one sign-up at most, and none for a registered customer"
                signed_up = True
            if a.signed_in:
                assert signed_up, f"signed in before signing up: {a}"
            if a.kind in ("order", "store_purchase", "add", "view", "store_view", "pickup_cancelled"):
                assert a.skus, a
            if a.kind in ("order", "store_purchase"):
                assert a.order_id and a.order_id not in orders
                orders.add(a.order_id)
            if a.kind == "order":
                assert a.signed_in and a.channel in model.ONLINE
            if a.kind == "pickup_cancelled":
                assert a.order_id in orders, "only an order placed before can be cancelled"
                cancelled.add(a.order_id)
            if a.kind == "return":  # a purchase of hers, made before, never cancelled, returned once, where bought
                assert a.order_id in orders and a.order_id not in cancelled | returned and a.skus, a
                assert (a.channel == "store") == a.order_id.startswith("rcpt"), a
                returned.add(a.order_id)
            if c.store_only:
                assert a.channel in ("store", "catalog", "call_center"), a
            if a.channel == "app":
                assert c.app_device is not None
            if a.kind == "store_purchase":
                assert c.loyalty_id or signed_up, "a till sale with no card nor account cannot be tied to her"


# response rates raised (a complaint is rare at the defaults) within their ranges, or the defaults
rates = st.one_of(st.just(params.DEFAULTS), st.fixed_dictionaries({
    "email_open": st.floats(0.01, 1), "email_unsubscribe": st.floats(0, 0.3), "email_complaint": st.floats(0, 0.3),
    "annoyance_lift": st.floats(1, 5)}).map(params.with_overrides))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(seeds, st.text(max_size=20), st.sampled_from(["email", "sms", "push", "messenger", "in_app"]),
       st.booleans(), st.integers(min_value=0, max_value=10**7), st.booleans(), st.booleans(), rates)
def test_responses_are_deterministic_and_coherent(seed, key, channel, relevant, age_s, marketing, annoyed, p):
    age = timedelta(seconds=age_s)
    r = model.respond(seed, key, channel, relevant, age, marketing, p, annoyed)
    assert r == model.respond(seed, key, channel, relevant, age, marketing, p, annoyed)
    assert not r.clicked or r.opened or channel != "email"
    assert r.purchase is None or r.clicked
    assert not r.unsubscribed or (marketing and channel in ("email", "sms"))
    # a spam complaint: only about an opened marketing email she did not click, and instead of an unsubscribe
    assert not r.complained or (marketing and channel == "email" and r.opened and not r.clicked)
    assert not (r.complained and r.unsubscribed)
    assert timedelta(0) < r.delay <= timedelta(hours=36)
    # complaints change nothing else: the same answer as a model without them, but the complaint
    calm = model.respond(seed, key, channel, relevant, age, marketing, {**p, "email_complaint": 0.0}, annoyed)
    assert not calm.complained and calm == dataclasses.replace(r, complained=False)


def test_relevance_and_freshness_raise_response_rates():
    def rate(relevant, age):
        return sum(model.respond(7, str(i), "email", relevant, age, True).clicked for i in range(4000)) / 4000

    fresh, stale = timedelta(hours=1), timedelta(days=10)
    assert rate(True, fresh) > 1.5 * rate(False, fresh)
    assert rate(False, fresh) > 3 * rate(False, stale)


def test_spam_complaints_are_rare_and_the_annoyed_lift_raises_them():
    """Per marketing email received, about ``email_complaint`` (so a brand at the defaults stays within Google's
    0.1 %), times ``annoyance_lift`` for a message about what she had already done; never for a transactional one."""
    n = 100_000

    def rate(annoyed, marketing=True):
        return sum(model.respond(5, str(i), "email", False, timedelta(hours=2), marketing, annoyed=annoyed).complained
                   for i in range(n)) / n  # fmt: skip

    calm, annoyed = rate(False), rate(True)
    want = params.DEFAULTS["email_complaint"] * (1 - params.DEFAULTS["email_click"])  # opened, then not clicked
    assert 0.6 * want < calm < 1.4 * want < 0.001, (calm, want)
    assert annoyed > 2 * calm
    assert rate(True, marketing=False) == 0


def test_every_parameter_has_a_meaning_and_a_source():
    names = [p.name for p in params.PARAMS]
    assert len(names) == len(set(names))
    for p in params.PARAMS:
        assert p.meaning and (p.source == params.ASSUMPTION or p.source.startswith(params.ASSUMPTION + ": ")
                              or p.source.startswith("[s0")), p  # fmt: skip


def test_the_population_shows_the_behaviours_the_demo_is_about():
    """At a realistic size every behaviour the issue names occurs (a regression guard on the parameters)."""
    plans = list(model.customers(3, 1500, START, 90))
    kinds = {a.kind for p in plans for a in p.actions}
    assert kinds == set(model.KINDS) - {"pickup_cancelled"}  # the stock cancels pick-ups (world.py, test_stock)
    carts = {a.cart_id for p in plans for a in p.actions if a.kind == "add"}
    ordered = {a.cart_id for p in plans for a in p.actions if a.kind == "order"}
    assert 0.3 < len(carts - ordered) / len(carts) < 0.8, "a good share of carts is abandoned"
    churned = sum(p.customer.churn_at is not None for p in plans) / len(plans)
    assert 0.15 < churned < 0.45
    pickups = [a for p in plans for a in p.actions if a.fulfillment == "store_pickup" and a.kind == "order"]
    assert pickups and {a.store for a in pickups} == {s.id for s in BRAND.stores}


def test_overrides_change_the_model_and_are_range_checked():
    import pytest

    more = params.with_overrides({"visits_per_week": 3.0})
    base = sum(len(p.actions) for p in model.customers(5, 200, START, 30))
    busy = sum(len(p.actions) for p in model.customers(5, 200, START, 30, BRAND, more))
    assert busy > 2 * base
    assert params.DEFAULTS["visits_per_week"] == 0.7, "the defaults are not changed by an override"
    for bad in ({"email_open": 1.5}, {"visits_per_week": 0}, {"churn_per_30d": 1}, {"nope": 1},
                {"email_open": float("nan")}, {"relevance_lift": -1}):  # fmt: skip
        with pytest.raises(ValueError, match="--set"):
            params.with_overrides(bad)


def test_the_docs_table_is_the_parameter_table():
    """docs/demo.md shows every parameter with its value and source, as the demo prints them."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "demo.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:5]]
            for line in doc.splitlines() if line.startswith("| `") and line.count("|") == 5}  # fmt: skip
    assert rows == {p.name: [f"{p.value:g}", p.meaning, p.source] for p in params.PARAMS}
