"""The reference evaluator, one kind of condition at a time, with readable examples."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from chorus.segments import rules as r
from chorus.segments.evaluate import Result, bucket, evaluate
from chorus.segments.person import Event, Person
from tests.segments.people import T0, at, msg, person, record

NEVER_CHANGES = None


def ev(rule: dict, who: Person, now: datetime, **kw) -> Result:
    return evaluate(r.parse(rule), who, now, **kw)


# -- traits ---------------------------------------------------------------------------------------------------
SHOPPER = person(
    msg(at(-30), type="identify", traits={
        "plan": "gold", "email": "ana@example.com", "age": 34, "tags": ["vip", "newsletter"], "score": 0.3,
        "active": True, "zip": "75001", "address": {"city": "Paris"}, "signup_date": "2024-01-15",
        "last_login": "2024-02-28T09:00:00Z", "renewal_date": "2024-03-04",
    }),
)  # fmt: skip


@pytest.mark.parametrize(
    ("test", "expected"),
    [
        ({"name": "plan", "equals": "gold"}, True),
        ({"name": "plan", "equals": "Gold"}, False),  # text is compared exactly
        ({"name": "plan", "not_equals": "silver"}, True),
        ({"name": "nickname", "not_equals": "x"}, True),  # no value is not "x"
        ({"name": "plan", "in": ["silver", "gold"]}, True),
        ({"name": "email", "contains": "@example."}, True),
        ({"name": "email", "starts_with": "ana@"}, True),
        ({"name": "email", "exists": True}, True),
        ({"name": "nickname", "exists": False}, True),
        ({"name": "age", "gt": 30}, True),
        ({"name": "age", "gte": 34}, True),
        ({"name": "age", "lt": 34}, False),
        ({"name": "age", "lte": 34.0}, True),
        ({"name": "age", "between": [18, 34]}, True),  # both ends included
        ({"name": "score", "equals": 0.3}, True),
        ({"name": "tags", "includes": "vip"}, True),
        ({"name": "tags", "includes": "sms"}, False),
        ({"name": "active", "equals": 1}, False),  # true is not 1
        ({"name": "zip", "equals": 75001}, False),  # "75001" is not 75001
        ({"name": "zip", "gt": 1}, False),  # text is not a number
        ({"name": "address.city", "equals": "Paris"}, True),
        ({"name": "signup_date", "since": "2024-01-01"}, True),
        ({"name": "signup_date", "before": "2024-01-15"}, False),
        ({"name": "signup_date", "date_between": ["2024-01-15", "2024-01-16"]}, True),
        ({"name": "plan", "within_last": "7d"}, False),  # not a date
    ],
)
def test_trait_tests(test, expected):
    assert ev({"trait": test}, SHOPPER, T0) == (expected, NEVER_CHANGES)


def test_computed_traits_are_read_apart():
    who = Person("p1", computed={"clv_12m": 812.5, "probability_alive": 0.25})
    assert ev({"trait": {"name": "computed.clv_12m", "gt": 500}}, who, T0).value
    assert ev({"trait": {"name": "computed.probability_alive", "lte": 0.3}}, who, T0).value
    assert not ev({"trait": {"name": "clv_12m", "exists": True}}, who, T0).value  # not an event trait


def test_relative_trait_dates_say_when_they_change():
    # last_login 2024-02-28T09:00Z; now 2024-03-01T12:00Z
    assert ev({"trait": {"name": "last_login", "within_last": "7d"}}, SHOPPER, T0) == (
        True, datetime(2024, 3, 6, 9, tzinfo=UTC))  # fmt: skip
    assert ev({"trait": {"name": "last_login", "more_than_ago": "30d"}}, SHOPPER, T0) == (
        False, datetime(2024, 3, 29, 9, tzinfo=UTC))  # fmt: skip


def test_a_calendar_date_is_the_profiles_local_day():
    paris = person(
        msg(at(-30), type="identify", traits={"renewal_date": "2024-03-04"}, context={"timezone": "Europe/Paris"})
    )
    # 4 March starts at 23:00 UTC on the 3rd in Paris: "in the next 3 days" from 00:00 Paris on 1 March
    rule = {"trait": {"name": "renewal_date", "within_next": "3d"}}
    assert ev(rule, paris, T0) == (True, datetime(2024, 3, 3, 23, tzinfo=UTC))
    assert ev(rule, SHOPPER, T0) == (True, datetime(2024, 3, 4, tzinfo=UTC))  # no zone: UTC midnight


def test_birthday_in_the_next_three_days_in_the_profiles_zone():
    tokyo = person(msg(at(-30), type="identify", traits={"birthday": "1990-03-04"}, context={"timezone": "Asia/Tokyo"}))
    rule = {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}}
    # 2024-03-01T12:00Z is 21:00 on 1 March in Tokyo: the 4th is 3 days ahead
    assert ev(rule, tokyo, T0) == (True, datetime(2024, 3, 4, 15, tzinfo=UTC))  # 5 March 00:00 JST
    # at 2024-02-29T14:59Z it is 23:59 on the 29th in Tokyo: not yet
    assert ev(rule, tokyo, datetime(2024, 2, 29, 14, 59, tzinfo=UTC)) == (False, datetime(2024, 2, 29, 15, tzinfo=UTC))


def test_an_unknown_zone_is_utc():
    who = person(msg(at(-30), type="identify", traits={"birthday": "1990-03-02"}, context={"timezone": "Nowhere/X"}))
    rule = {"trait": {"name": "birthday", "anniversary": {"next_days": 0}}}
    assert ev(rule, who, T0) == (False, datetime(2024, 3, 2, tzinfo=UTC))


# -- behaviour --------------------------------------------------------------------------------------------------
def viewed(days: float, category: str = "laptops", channel: str = "web") -> dict:
    return msg(at(days), event="Product Viewed", properties={"category": category}, context={"channel": channel})


BROWSE_ABANDONMENT = {
    "and": [
        {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                       "window": "7d", "times": {"gte": 3}}},
        {"not": {"or": [
            {"performed": {"event": "Product Added", "where": [{"property": "category", "equals": "laptops"}],
                           "window": "7d"}},
            {"performed": {"event": "Order Completed", "window": "7d"}},
        ]}},
    ]
}  # fmt: skip


def test_browse_abandonment_fills_and_a_store_purchase_empties_it():
    three_views = person(viewed(0), viewed(1), viewed(2, channel="app"), viewed(2.5, "phones"))
    assert ev(BROWSE_ABANDONMENT, three_views, at(2)) == (True, at(7))  # the first view leaves the window
    assert ev(BROWSE_ABANDONMENT, three_views, at(1.5)) == (False, at(2))  # the third view is still to come
    bought = person(viewed(0), viewed(1), viewed(2), msg(at(3), event="Order Completed",
                    properties={"total": 999}, context={"channel": "store"}))  # fmt: skip
    assert ev(BROWSE_ABANDONMENT, bought, at(2.5)) == (True, at(3))
    assert ev(BROWSE_ABANDONMENT, bought, at(3)) == (False, None)  # the views leave before the purchase does
    carted = person(
        viewed(0), viewed(1), viewed(2), msg(at(2.1), event="Product Added", properties={"category": "laptops"})
    )
    assert ev(BROWSE_ABANDONMENT, carted, at(2.2)) == (False, None)


def test_count_comparisons():
    who = person(viewed(0), viewed(1), viewed(2))
    assert ev({"performed": {"event": "Product Viewed", "times": {"eq": 3}}}, who, at(3)) == (True, None)
    assert ev({"performed": {"event": "Product Viewed", "times": {"lte": 2}}}, who, at(1.5)) == (True, at(2))
    assert ev({"performed": {"event": "Product Viewed", "window": "36h", "times": {"lte": 1}}}, who, at(2)) == (
        False, at(2.5))  # fmt: skip


def test_no_purchase_for_sixty_days():
    lapsed = {"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}}
    who = person(msg(at(-10), event="Order Completed"), msg(at(-5), event="Order Completed"))
    assert ev(lapsed, who, T0) == (False, at(55))  # sixty days after the last order
    assert ev(lapsed, person(), T0) == (True, None)  # never bought: lapsed, and time alone changes nothing
    assert ev({"not": {"performed": {"event": "Order Completed", "window": "60d"}}}, who, T0) == (False, at(55))


def test_between_dates_in_the_profiles_zone():
    black_friday = {"performed": {"event": "Order Completed",
                                  "window": {"since": "2024-11-29", "before": "2024-12-03"}}}  # fmt: skip
    late = datetime(2024, 11, 29, 3, tzinfo=UTC)  # 28 November, 22:00 in New York; 29 November in UTC
    ny = person(msg(late, event="Order Completed", context={"timezone": "America/New_York"}))
    utc = person(msg(late, event="Order Completed"))
    assert ev(black_friday, ny, datetime(2025, 1, 1, tzinfo=UTC)) == (False, None)
    assert ev(black_friday, utc, datetime(2025, 1, 1, tzinfo=UTC)) == (True, None)
    assert ev(black_friday, utc, datetime(2024, 11, 29, tzinfo=UTC)) == (False, late)


def test_property_filters_and_channels():
    who = person(
        msg(at(0), event="Order Completed", properties={"total": 150}, context={"channel": "web"}),
        msg(at(1), event="Order Completed", properties={"total": 80}, context={"channel": "store"}),
    )
    big = {"performed": {"event": "Order Completed", "where": [{"property": "total", "gt": 100}]}}
    assert ev(big, who, at(2)).value
    assert not ev({"performed": {**big["performed"], "channel": "store"}}, who, at(2)).value
    assert ev({"performed": {"event": "Order Completed", "channel_group": "offline"}}, who, at(2)).value
    assert ev({"performed": {"type": "track", "channel": ["web", "store"], "times": {"eq": 2}}}, who, at(2)).value


def test_sum_average_and_count_of_a_property():
    who = person(*(msg(at(d), event="Order Completed", properties={"total": v})
                   for d, v in ((0, 0.1), (1, 0.2), (2, "n/a"), (3, 50))))  # fmt: skip
    spend = {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total", "window": "90d"}}
    # 0.1 + 0.2 is 0.3; the orders of days 2 and 3 come, then all leave: the last one on day 93
    assert ev({"aggregate": {**spend["aggregate"], "gte": 0.3}}, who, at(1)) == (True, at(93))
    assert ev({"aggregate": {**spend["aggregate"], "lte": 0.3}}, who, at(1)) == (True, at(3))
    assert ev({"aggregate": {**spend["aggregate"], "equals": 50.3}}, who, at(3)) == (True, at(90))
    avg = {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total", "lt": 10}}
    assert ev(avg, who, at(2)) == (True, at(3))  # (0.1 + 0.2) / 2, then 50.3 / 3; "n/a" is left out
    assert ev(avg, person(), at(2)) == (False, None)  # no average of nothing
    count = {"aggregate": {"event": "Order Completed", "function": "count", "window": "2d", "gte": 2}}
    assert ev(count, who, at(2)) == (True, at(4))  # counts every matching event, numeric or not


def test_last_value_of_a_property():
    who = person(
        msg(at(0), event="Order Completed", properties={"payment": "card"}),
        msg(at(1), event="Order Completed", properties={}),
        msg(at(2), event="Order Completed", properties={"payment": "paypal"}),
    )
    rule = {"last_value": {"event": "Order Completed", "property": "payment", "equals": "card"}}
    assert ev(rule, who, at(1.5)) == (True, at(2))  # the order without a payment does not hide the card
    assert ev(rule, who, at(3)) == (False, None)


def test_first_and_last_time():
    who = person(msg(at(-400), event="Order Completed"), msg(at(-20), event="Order Completed"))
    assert ev({"first_time": {"event": "Order Completed", "more_than_ago": "365d"}}, who, T0) == (True, None)
    assert ev({"last_time": {"event": "Order Completed", "within_last": "30d"}}, who, T0) == (True, at(10))
    assert ev({"last_time": {"event": "Order Completed", "exists": True}}, person(), T0) == (False, None)
    assert ev({"first_time": {"event": "Order Completed", "since": "2024-01-01"}}, who, T0) == (False, None)


# -- channels ---------------------------------------------------------------------------------------------------
def test_used_channel_in_a_window():
    who = person(viewed(0, channel="store"), viewed(5, channel="web"))
    assert ev({"used_channel": {"channel": "store", "window": "30d"}}, who, at(6)) == (True, at(30))
    assert ev({"used_channel": {"channel_group": "online"}}, who, at(1)) == (False, at(5))


def test_outbound_messages_are_not_activity():
    sent = msg(at(0), event="Message Sent", properties={"message_id": "msg_1"},
               context={"channel": "email", "direction": "outbound"})  # fmt: skip
    who = person(sent)
    assert who.events[0].outbound
    assert not ev({"used_channel": {"channel": "email"}}, who, at(1)).value
    assert ev({"performed": {"event": "Message Sent"}}, who, at(1)).value  # asked for by name, it is there


def test_last_active_channel_is_the_profiles():
    who = person(viewed(0, channel="web"), viewed(1, channel="store"), viewed(1, channel="app"))
    # two channels at the same instant: the greater name, as profiles.state.summary decides last_channel
    assert ev({"last_channel": {"equals": "store"}}, who, at(2)).value
    from chorus.profiles.state import summary

    assert summary(who.state)["last_channel"] == "store"
    assert ev({"last_channel": {"in": ["web", "app"]}}, who, at(0.5)) == (True, at(1))


def test_number_of_channels_used():
    who = person(viewed(0, channel="web"), viewed(10, channel="store"), viewed(11, channel="web"),
                 viewed(12, channel="server"))  # fmt: skip
    rule = {"channel_count": {"gte": 2, "window": "30d"}}
    assert ev(rule, who, at(12)) == (True, at(40))  # server says nothing about where the person was
    assert ev({"channel_count": {"equals": 1}}, who, at(5)) == (True, at(10))


def test_online_offline_mix():
    who = person(viewed(0, channel="web"), msg(at(3), event="Order Completed", context={"channel": "store"}))
    mix = {"channel_mix": {"equals": "both", "window": "30d"}}
    assert ev(mix, who, at(1)) == (False, at(3))
    assert ev(mix, who, at(3)) == (True, at(30))  # the web visit leaves the window
    assert ev({"channel_mix": {"equals": "unknown"}}, person(), T0) == (True, None)
    webrooming = {"and": [
        {"performed": {"event": "Order Completed", "channel_group": "offline"}},
        {"performed": {"event": "Product Viewed", "channel_group": "online"}},
    ]}  # fmt: skip
    assert ev(webrooming, who, at(4)) == (True, None)


# -- reachability and subscriptions: the messaging policy's rules --------------------------------------------------
def consent(when: datetime, channel: str, topic: str, status: str) -> dict:
    return msg(when, event="Consent Updated", properties={"channel": channel, "topic": topic, "status": status})


def test_reachable_needs_an_address_and_no_channel_block():
    who = person(consent(at(0), "sms", "*", "denied"), addresses={"email": ("ana@example.com",), "sms": ("+331",)})
    assert ev({"reachable": {"channel": "email"}}, who, T0).value
    assert not ev({"reachable": {"channel": "sms"}}, who, at(1)).value  # STOP blocks every sms
    assert not ev({"reachable": {"channel": "push"}}, who, at(1)).value  # no address
    assert ev({"reachable": {"channel": "in_app"}}, who, at(1)).value  # the inbox belongs to the profile


def test_reachable_for_marketing_on_a_topic():
    who = person(consent(at(0), "email", "offers", "denied"), addresses={"email": ("ana@example.com",)})
    assert ev({"reachable": {"channel": "email"}}, who, at(1)).value  # transactional mail still goes
    assert not ev({"reachable": {"channel": "email", "topic": "offers"}}, who, at(1)).value
    assert ev({"reachable": {"channel": "email", "topic": "news"}}, who, at(1)).value


def test_subscribed_follows_opt_in_topics():
    topics = {"newsletter": {"mode": "opt_in"}}
    nobody = Person("p1")
    granted = person(consent(at(0), "*", "newsletter", "granted"))
    withdrawn = person(consent(at(0), "*", "newsletter", "granted"), consent(at(1), "email", "marketing", "denied"))
    rule = {"subscribed": {"channel": "email", "topic": "newsletter"}}
    assert ev(rule, nobody, T0).value  # opt-out by default: nothing denied
    assert not ev(rule, nobody, T0, topics=topics).value  # opt-in: needs a grant
    assert ev(rule, granted, at(2), topics=topics).value
    assert not ev(rule, withdrawn, at(2), topics=topics).value  # "no marketing by email" is newer


# -- messages ---------------------------------------------------------------------------------------------------
def test_messages_received_opened_clicked():
    who = Person("p1", messages=(
        record("msg_1", "sent", at(0), template="welcome", journey_id="onboarding"),
        record("msg_1", "delivered", at(0, 1), template="welcome", journey_id="onboarding"),
        record("msg_1", "opened", at(1), template="welcome", journey_id="onboarding"),
        record("msg_1", "opened", at(4), template="welcome", journey_id="onboarding"),
        record("msg_2", "sent", at(2), template="promo", campaign_id="black-friday", channel="sms"),
        record("msg_3", "bounced", at(3), template="promo", campaign_id="black-friday"),
    ))  # fmt: skip
    # received counts messages, not status changes: msg_1 was sent and delivered
    assert ev({"message": {"status": "received", "times": {"eq": 2}}}, who, at(5)) == (True, None)
    assert ev({"message": {"status": "opened", "template": "welcome", "window": "7d"}}, who, at(5)) == (True, at(11))
    assert ev({"message": {"status": "clicked"}}, who, at(5)) == (False, None)
    assert ev({"message": {"status": "bounced", "campaign": "black-friday"}}, who, at(5)).value
    assert ev({"message": {"status": "sent", "journey": "onboarding", "channel": "sms"}}, who, at(5)).value is False
    assert ev({"message": {"status": ["sent", "bounced"], "template": "promo", "times": {"gte": 2}}}, who, at(2.5)) == (
        False, at(3))  # fmt: skip


# -- references, lists, buckets ------------------------------------------------------------------------------------
def test_segment_and_list_membership():
    who = Person("p1", segments=frozenset({"vip"}), lists=frozenset({"staff"}))
    assert ev({"segment": "vip"}, who, T0) == (True, None)
    assert ev({"and": [{"segment": "vip"}, {"not": {"list": "staff"}}]}, who, T0) == (False, None)


def test_buckets_are_stable_and_even():
    assert bucket("p1") == bucket("p1") and 0 <= bucket("p1") < 100
    assert bucket("p1", "exp-a") != bucket("p1", "exp-b") or bucket("p2", "exp-a") != bucket("p2", "exp-b")
    counts = Counter(bucket(f"profile-{i}") // 10 for i in range(20_000))
    assert all(1700 < n < 2300 for n in counts.values()) and len(counts) == 10
    b = bucket("p1")
    assert ev({"bucket": {"from": b, "to": b + 1}}, Person("p1"), T0) == (True, None)
    assert ev({"bucket": {"from": 0, "to": 100}}, Person("anyone"), T0).value


def test_bucket_is_sha256_of_the_id():
    import hashlib

    digest = hashlib.sha256(b"seed:p1").hexdigest()
    assert bucket("p1", "seed") == int(digest[:8], 16) % 100


# -- and / or / not ---------------------------------------------------------------------------------------------
def test_and_waits_for_its_false_children():
    who = person(viewed(0), msg(at(2), event="Order Completed"))
    rule = {"and": [
        {"performed": {"event": "Product Viewed", "window": "1d"}},  # true until day 1
        {"performed": {"event": "Order Completed"}},  # false until day 2
    ]}  # fmt: skip
    assert ev(rule, who, at(0.5)) == (False, None)  # both are never true together
    assert ev({"or": rule["and"]}, who, at(0.5)) == (True, at(1))  # false from day 1 to day 2


def test_a_composite_that_never_changes_says_so_or_is_safe():
    who = person(msg(at(-30), type="identify", traits={"birthday": "1990-03-10"}))
    soon = {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}}
    result = ev({"or": [soon, {"not": soon}]}, who, T0)
    assert result.value is True
    assert result.next_change is None or result.next_change > T0 + timedelta(days=365 * 50)


def test_evaluate_takes_json_and_needs_an_aware_now():
    assert evaluate({"segment": "x"}, Person("p1", segments=frozenset({"x"})), T0).value
    with pytest.raises(ValueError):
        evaluate({"segment": "x"}, Person("p1"), datetime(2024, 1, 1))


def test_events_read_from_stored_payloads():
    page = person(msg(at(0), type="page", name="Pricing", context={"page": {"url": "https://x.test/pricing"}}))
    assert page.events[0] == Event("Pricing", "page", at(0), "web", {}, "m0000")
    assert ev({"performed": {"type": "page", "event": "Pricing"}}, page, at(1)).value


def test_last_value_with_equal_keys_and_values_that_do_not_compare():
    twins = Person("p1", events=(
        Event("Order Completed", "track", T0, "web", {"p": {"a": 1}}),
        Event("Order Completed", "track", T0, "web", {"p": 3}),
    ))  # fmt: skip
    rule = {"last_value": {"event": "Order Completed", "property": "p", "exists": True}}
    assert ev(rule, twins, at(1)) == (True, None)


def test_birthday_soon_across_new_yorks_spring_forward():
    ny = person(
        msg(at(-30), type="identify", traits={"birthday": "1985-03-12"}, context={"timezone": "America/New_York"})
    )
    rule = {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}}
    enters = datetime(2024, 3, 9, 5, tzinfo=UTC)  # Saturday 9 March, 00:00 EST
    leaves = datetime(2024, 3, 13, 4, tzinfo=UTC)  # Wednesday 13 March, 00:00 EDT: clocks went forward on the 10th
    assert ev(rule, ny, enters - timedelta(microseconds=1)) == (False, enters)
    assert ev(rule, ny, enters) == (True, leaves)
    assert ev(rule, ny, leaves) == (False, datetime(2025, 3, 9, 5, tzinfo=UTC))
