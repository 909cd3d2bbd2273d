"""The six seed scenarios of issue 13 through the interpreter, each with its holdout arm, on a virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from chorus.journeys import interpreter as j
from chorus.segments.evaluate import bucket
from chorus.segments.person import Person
from tests.journeys.driver import Driver, event, seed

T = datetime(2026, 3, 2, 9, tzinfo=UTC)  # a Monday


def person_in(defn, node: str, arm: str, tz: str | None = None, **state) -> Person:
    """A person whose stable bucket puts her on ``arm`` of split ``node``."""
    split = defn.node(node).body
    for n in range(1000):
        pid = f"p{n}"
        if j.arm_at(split, bucket(pid, split.seed or f"{defn.id}:{node}")).name == arm:
            attrs = {"attrs": {"timezone": [tz]}} if tz else {}
            return Person(pid, state={**attrs, **state})
    raise AssertionError("no such person in 1000 ids")


def sends(dr: Driver) -> list[j.Send]:
    return dr.of(j.Send)


# -- 1. welcome --------------------------------------------------------------------------------------------------
def test_welcome_sends_the_code_by_sms_once():
    defn = seed("welcome")
    dr = Driver(defn, person_in(defn, "holdout", "treatment"), T)
    dr.give(event("Signed Up", T, email="ana@example.com", phone="+33612345678"))
    [send] = sends(dr)
    assert (send.template, send.channel, send.kind, send.topic) == ("welcome_code", ("sms",), "marketing", "offers")
    assert send.data == {"code": "WELCOME10"} and send.event["phone"] == "+33612345678"
    assert send.request()["channel"] == ["sms"] and send.request()["journey_id"] == "welcome"
    assert dr.of(j.UpdateTrait) == [j.UpdateTrait("welcome_code_sent", True, f"{send.instance_id}:3")]
    assert dr.instances[0].status == "tracking" and dr.instances[0].waiting == "goal_window"  # nothing more sent
    dr.run_until(T + timedelta(days=14))
    assert len(sends(dr)) == 1 and dr.instances[0].status == "exited" and dr.timers == {}
    dr.give(event("Signed Up", T + timedelta(days=1), n=1))  # reentry: never
    assert len(dr.instances) == 1 and len(sends(dr)) == 1


def test_welcome_holdout_gets_nothing_and_is_counted():
    defn = seed("welcome")
    dr = Driver(defn, person_in(defn, "holdout", "holdout"), T)
    dr.give(event("Signed Up", T))
    assert sends(dr) == [] and dr.of(j.UpdateTrait) == []
    assert [(r.kind, r.node, r.branch) for r in dr.of(j.Record)] == [
        ("entered", "holdout", None), ("waiting", "holdout", "holdout"),
    ]  # fmt: skip
    dr.run_until(T + timedelta(days=2))
    dr.give(event("Order Completed", dr.now, channel="store", order_id="o1"))
    [conv] = dr.records("converted")
    assert (conv.node, conv.branch) == ("holdout", "holdout")
    assert dr.instances[0].exit_reason == "goal reached" and dr.timers == {}


def test_welcome_holdout_leaves_when_the_goal_window_ends():
    defn = seed("welcome")
    dr = Driver(defn, person_in(defn, "holdout", "holdout"), T)
    dr.give(event("Signed Up", T))
    dr.run_until(T + timedelta(days=14) - timedelta(microseconds=1))
    assert dr.instances[0].status == "active"
    dr.run_until(T + timedelta(days=15))
    assert dr.instances[0].exit_reason == "holdout: goal window over"
    assert dr.instances[0].exited_at == T + timedelta(days=14)
    dr.give(event("Order Completed", dr.now))  # too late: nothing
    assert dr.records("converted") == []


# -- 2. abandoned cart -------------------------------------------------------------------------------------------
def cart(arm: str = "treatment") -> Driver:
    defn = seed("abandoned_cart")
    dr = Driver(defn, person_in(defn, "arm", arm), T)
    dr.give(event("Product Added", T, cart_id="c1", sku="sku-1"))
    return dr


def test_abandoned_cart_reminds_after_one_hour_on_the_auto_channel():
    dr = cart()
    dr.run_until(T + timedelta(minutes=59))
    assert sends(dr) == []
    dr.run_until(T + timedelta(hours=1))
    [send] = sends(dr)
    assert (send.template, send.channel, send.node) == ("cart_reminder", "auto", "remind")
    assert send.event == {"cart_id": "c1", "sku": "sku-1"}
    dr.run_until(T + timedelta(days=2))
    assert [s.template for s in sends(dr)] == ["cart_reminder", "cart_reminder_2"]
    assert dr.instances[0].exit_reason == "exit node"


def test_a_store_purchase_cancels_the_cart_while_it_waits():
    dr = cart()
    dr.run_until(T + timedelta(minutes=30))
    dr.give(event("Order Completed", T + timedelta(minutes=20), channel="store", order_id="pos-9"))  # no cart_id
    assert sends(dr) == [] and dr.timers == {}
    [conv] = dr.records("converted")
    assert (conv.node, conv.branch) == ("wait_cart", "treatment")
    dr.run_until(T + timedelta(days=3))
    assert sends(dr) == []


def test_a_purchase_while_the_reminder_waits_for_a_click_stops_the_second_reminder():
    dr = cart()
    dr.run_until(T + timedelta(hours=2))
    dr.give(event("Order Completed", dr.now, channel="store"))
    dr.run_until(T + timedelta(days=3))
    assert [s.template for s in sends(dr)] == ["cart_reminder"]
    assert dr.records("converted")[0].node == "wait_click"


def test_a_click_on_the_reminder_takes_its_branch():
    dr = cart()
    dr.run_until(T + timedelta(hours=2))
    [send] = sends(dr)
    dr.give(j.MessageEvent("opened", "msg_1", "abandoned_cart", send.key, dr.now))  # not the status waited for
    assert dr.instances[0].node == "wait_click"
    dr.give(j.MessageEvent("clicked", "msg_1", "abandoned_cart", "someone-else:2", dr.now))  # not its message
    assert dr.instances[0].node == "wait_click"
    dr.give(j.MessageEvent("clicked", "msg_1", "abandoned_cart", send.key, dr.now))
    assert dr.instances[0].exit_reason == "exit node"
    assert ("wait_click", "clicked") in [(r.node, r.branch) for r in dr.records("step")]


def test_the_same_cart_enters_once_and_other_carts_run_concurrently():
    dr = cart()
    dr.give(event("Product Added", T + timedelta(minutes=5), n=1, cart_id="c1"))
    assert len(dr.instances) == 1
    dr.give(event("Product Added", T + timedelta(minutes=10), n=2, cart_id="c2"))
    assert len(dr.instances) == 2
    dr.give(event("Cart Emptied", T + timedelta(minutes=15), cart_id="c2"))  # c2's branch, not c1's
    assert [s.status for s in dr.instances] == ["active", "tracking"]  # c2 sent nothing, its goal window still open
    dr.run_until(T + timedelta(hours=1, minutes=30))
    assert [s.event["cart_id"] for s in sends(dr)] == ["c1"]
    dr.give(event("Product Added", T + timedelta(hours=2), n=3))  # no cart_id: no entry
    assert len(dr.instances) == 2


def test_abandoned_cart_holdout_is_never_reminded_but_converts():
    dr = cart("holdout")
    dr.run_until(T + timedelta(days=1))
    dr.give(event("Order Completed", dr.now, cart_id="c1"))
    assert sends(dr) == []
    assert [(r.node, r.branch) for r in dr.records("converted")] == [("arm", "holdout")]


# -- 3. browse abandonment: 09:00 local the next morning ------------------------------------------------------------
NY = "America/New_York"


@pytest.mark.parametrize(
    ("entered", "offer"),
    [
        # Saturday 7 March 2026 in New York, the night before clocks go forward (EST -> EDT at 02:00 local)
        (datetime(2026, 3, 7, 14, 30, tzinfo=UTC), datetime(2026, 3, 8, 13, tzinfo=UTC)),  # 09:30 EST: next day
        (datetime(2026, 3, 8, 4, 59, 59, tzinfo=UTC), datetime(2026, 3, 8, 13, tzinfo=UTC)),  # 23:59:59 EST
        (datetime(2026, 3, 8, 5, 0, 1, tzinfo=UTC), datetime(2026, 3, 8, 13, tzinfo=UTC)),  # 00:00:01: same morning
        (datetime(2026, 3, 7, 13, 59, tzinfo=UTC), datetime(2026, 3, 7, 14, tzinfo=UTC)),  # 08:59 EST: this morning
        # clocks back on 1 November 2026: 09:00 EST is 14:00 UTC
        (datetime(2026, 10, 31, 23, tzinfo=UTC), datetime(2026, 11, 1, 14, tzinfo=UTC)),
    ],
)
def test_browse_abandonment_offer_is_at_nine_local_the_next_morning(entered, offer):
    defn = seed("browse_abandonment")
    dr = Driver(defn, person_in(defn, "arm", "treatment", tz=NY), entered)
    dr.give(j.SegmentChanged("browse_abandoners", "entered", entered))
    assert dr.of(j.AudienceChange)[0] == j.AudienceChange("retargeting_laptops", "add", dr.of(j.AudienceChange)[0].key)
    [timer] = dr.of(j.SetTimer)
    assert timer.at == offer
    dr.run_until(offer)
    [send] = sends(dr)
    assert send.template == "category_offer" and send.data == {"category": "laptops"}
    assert [a.action for a in dr.of(j.AudienceChange)] == ["add", "remove"]


def test_browse_abandonment_in_another_zone_and_in_utc():
    defn = seed("browse_abandonment")
    at = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # Paris: clocks go forward at 02:00 on 29 March
    paris = Driver(defn, person_in(defn, "arm", "treatment", tz="Europe/Paris"), at)
    paris.give(j.SegmentChanged("browse_abandoners", "entered", at))
    assert paris.of(j.SetTimer)[0].at == datetime(2026, 3, 29, 7, tzinfo=UTC)  # 09:00 CEST
    nowhere = Driver(defn, person_in(defn, "arm", "treatment", tz="Not/AZone"), at)  # unknown zone: UTC
    nowhere.give(j.SegmentChanged("browse_abandoners", "entered", at))
    assert nowhere.of(j.SetTimer)[0].at == datetime(2026, 3, 29, 9, tzinfo=UTC)


def test_a_local_time_that_does_not_exist_waits_until_the_jump():
    from chorus.journeys import definition as d

    doc = d.to_json(seed("browse_abandonment"))
    doc["nodes"]["morning"]["at"] = "02:30"  # does not exist in New York on 8 March 2026
    defn = d.parse(doc)
    at = datetime(2026, 3, 8, 5, tzinfo=UTC)  # midnight EST
    dr = Driver(defn, person_in(defn, "arm", "treatment", tz=NY), at)
    dr.give(j.SegmentChanged("browse_abandoners", "entered", at))
    assert dr.of(j.SetTimer)[0].at == datetime(2026, 3, 8, 7, tzinfo=UTC)  # 03:00 EDT, the jump


def test_browse_abandonment_exits_on_add_to_cart_and_cools_down():
    defn = seed("browse_abandonment")
    at = datetime(2026, 3, 7, 20, tzinfo=UTC)
    dr = Driver(defn, person_in(defn, "arm", "treatment", tz=NY), at)
    dr.give(j.SegmentChanged("browse_abandoners", "entered", at))
    dr.give(event("Product Added", at + timedelta(hours=1), channel="app"))
    assert dr.instances[0].exit_reason == "exit[0] met" and dr.timers == {}
    dr.run_until(at + timedelta(days=1))
    assert sends(dr) == []
    dr.give(j.SegmentChanged("browse_abandoners", "entered", at + timedelta(days=2)))
    assert len(dr.instances) == 1  # within the 14-day cool-down
    dr.now = at + timedelta(days=14)
    dr.give(j.SegmentChanged("browse_abandoners", "entered", dr.now))
    assert len(dr.instances) == 2


def test_browse_abandonment_holdout_is_not_retargeted():
    defn = seed("browse_abandonment")
    dr = Driver(defn, person_in(defn, "arm", "holdout", tz=NY), T)
    dr.give(j.SegmentChanged("browse_abandoners", "entered", T))
    dr.run_until(T + timedelta(days=4))
    assert dr.of(j.AudienceChange) == [] and sends(dr) == []
    assert dr.instances[0].exit_reason == "holdout: goal window over"


# -- 4. post-purchase ---------------------------------------------------------------------------------------------
def post(arm: str = "treatment") -> Driver:
    defn = seed("post_purchase")
    p = person_in(defn, "arm", arm, traits={"preferred_channel": "messenger"})
    dr = Driver(defn, p, T)
    dr.give(event("Order Completed", T, channel="web", order_id="o1", total=80))
    return dr


def test_post_purchase_receipt_review_and_cross_sell():
    dr = post()
    [receipt] = sends(dr)
    assert (receipt.template, receipt.kind, receipt.channel) == ("receipt", "transactional", "auto")
    dr.give(event("Order Delivered", T + timedelta(days=1), order_id="other"))
    assert len(sends(dr)) == 1
    dr.give(event("Order Delivered", T + timedelta(days=2), channel="store", order_id="o1"))
    assert [s.template for s in sends(dr)] == ["receipt", "review_request"]
    dr.run_until(T + timedelta(days=17))
    assert [s.template for s in sends(dr)] == ["receipt", "review_request", "cross_sell"]


def test_post_purchase_no_cross_sell_after_buying_again():
    dr = post()
    dr.give(event("Order Delivered", T + timedelta(days=2), order_id="o1"))
    again = event("Order Completed", T + timedelta(days=5), channel="store", order_id="o2")
    dr.now = again.at  # processed when it happens (an entry stamped ahead of now is dated now: o1 would count)
    dr.give(again)
    assert len(dr.records("converted")) == 1  # exit_on_goal: false, she stays in
    assert len(dr.instances) == 2 and dr.instances[0].status == "active"  # and o2 starts its own instance
    dr.person = Person(dr.person.id, state=dr.person.state, events=(again,))  # the condition reads her events
    dr.run_until(T + timedelta(days=17))
    first = [s.template for s in sends(dr) if s.instance_id == dr.instances[0].instance_id]
    assert first == ["receipt", "review_request"]
    assert ("bought_again", "then") in [(r.node, r.branch) for r in dr.records("step")]


def test_post_purchase_holdout_gets_the_receipt_only():
    dr = post("holdout")
    dr.give(event("Order Delivered", T + timedelta(days=2), order_id="o1"))
    dr.run_until(T + timedelta(days=40))
    assert [s.template for s in sends(dr)] == ["receipt"]
    assert dr.instances[0].exit_reason == "holdout: goal window over"


# -- 5. win-back --------------------------------------------------------------------------------------------------
def test_winback_offers_twice_and_stops_when_they_return():
    defn = seed("winback")
    dr = Driver(defn, person_in(defn, "arm", "treatment"), T)
    dr.give(j.SegmentChanged("lapsed_60d", "entered", T))
    dr.run_until(T + timedelta(days=8))
    assert [s.template for s in sends(dr)] == ["winback_offer", "winback_last_chance"]

    dr2 = Driver(defn, dr.person, T)
    dr2.give(j.SegmentChanged("lapsed_60d", "entered", T))
    dr2.give(j.SegmentChanged("lapsed_60d", "exited", T + timedelta(days=3)))
    dr2.run_until(T + timedelta(days=8))
    assert [s.template for s in sends(dr2)] == ["winback_offer"]
    assert dr2.instances[0].exit_reason == "exit[0] met"
    dr2.give(j.SegmentChanged("lapsed_60d", "entered", T + timedelta(days=70)))  # lapsed again: after_exit
    assert len(dr2.instances) == 2


def test_winback_an_open_of_any_of_its_messages_ends_it():
    defn = seed("winback")
    dr = Driver(defn, person_in(defn, "arm", "treatment"), T)
    dr.give(j.SegmentChanged("lapsed_60d", "entered", T))
    [offer] = sends(dr)
    dr.give(j.MessageEvent("opened", "msg_9", "winback", offer.key, T + timedelta(hours=3), "email"))
    dr.run_until(T + timedelta(days=8))
    assert [s.template for s in sends(dr)] == ["winback_offer"]


def test_winback_holdout():
    defn = seed("winback")
    dr = Driver(defn, person_in(defn, "arm", "holdout"), T)
    dr.give(j.SegmentChanged("lapsed_60d", "entered", T))
    dr.give(event("Order Completed", T + timedelta(days=10), channel="call_center"))
    assert sends(dr) == [] and [(r.node, r.branch) for r in dr.records("converted")] == [("arm", "holdout")]


# -- 6. pick-up in store cancelled --------------------------------------------------------------------------------
@pytest.mark.parametrize(("ordered", "channel"), [("app", ("push", "email")), ("web", ("email", "sms"))])
def test_pickup_cancelled_is_told_at_once_on_the_channel_ordered_from(ordered, channel):
    defn = seed("pickup_cancelled")
    dr = Driver(defn, person_in(defn, "arm", "treatment"), T)
    dr.give(event("Order Cancelled", T, channel="store", order_id="o7", fulfillment="store_pickup",
                  reason="out_of_stock", order_channel=ordered))  # fmt: skip
    notice, offer = sends(dr)
    assert (notice.template, notice.channel, notice.kind) == ("pickup_cancelled", channel, "transactional")
    assert offer.template == "delivery_offer" and dr.instances[0].status == "tracking"


def test_pickup_cancelled_other_cancellations_do_not_enter_and_holdout_gets_the_notice_only():
    defn = seed("pickup_cancelled")
    dr = Driver(defn, person_in(defn, "arm", "holdout"), T)
    dr.give(event("Order Cancelled", T, order_id="o1", fulfillment="store_pickup", reason="customer"))
    dr.give(event("Order Cancelled", T, n=1, order_id="o2", fulfillment="delivery", reason="out_of_stock"))
    assert dr.instances == []
    dr.give(event("Order Cancelled", T, n=2, order_id="o3", fulfillment="store_pickup", reason="out_of_stock"))
    assert [s.template for s in sends(dr)] == ["pickup_cancelled"]


# -- the journey's status -----------------------------------------------------------------------------------------
def test_a_stopped_journey_sends_nothing_more_and_exits():
    dr = cart()
    dr.status = "stopped"
    dr.give(event("Page Viewed", T + timedelta(minutes=1)))
    assert dr.timers == {} and sends(dr) == []
    assert dr.instances[0].exit_reason == "journey stopped"
    dr.run_until(T + timedelta(days=2))
    assert sends(dr) == []


def test_a_paused_journey_holds_inputs_and_applies_them_on_resume():
    dr = cart()
    dr.status = "paused"
    before = j.state_to_json(dr.instances[0])
    dr.run_until(T + timedelta(hours=3))
    assert sends(dr) == [] and j.state_to_json(dr.instances[0]) == before
    assert len(dr.pending) == 1  # the timeout, held
    dr.resume()
    assert [s.template for s in sends(dr)] == ["cart_reminder"]  # sent on resume, not lost


def test_the_holdout_is_the_segment_rule_bucket_with_the_same_seed():
    from chorus.segments.evaluate import evaluate

    defn = seed("abandoned_cart")
    rule = {"bucket": {"from": 90, "to": 100, "seed": "abandoned_cart:arm"}}
    for n in range(300):
        p = Person(f"id-{n}")
        dr = Driver(defn, p, T)
        dr.give(event("Product Added", T, cart_id="c1"))
        assert (dr.instances[0].arms["arm"] == "holdout") == evaluate(rule, p, T).value
