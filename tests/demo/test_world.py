"""The customers' side of the run without servers: what a delivery makes them do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from chorus.demo import model, params
from chorus.demo.brand import BRAND
from chorus.demo.inbox import Delivery
from chorus.demo.twilio import Text, TwilioStandIn
from chorus.demo.world import World

START = datetime(2026, 3, 1, tzinfo=UTC)
END = START + timedelta(days=20)
BRAND_TZ = ZoneInfo(BRAND.timezone)


def world(p: dict, n: int = 300) -> World:
    plans = list(model.customers(9, n, START, 20, p=p))
    return World(9, START, p, plans, TwilioStandIn(), "http://chorus.test/webhooks/twilio/ws/inbound", 20)


def test_a_reminder_that_converts_buys_the_open_cart_and_the_links_are_followed():
    p = params.with_overrides({"email_open": 1, "email_click": 1, "convert_after_click": 1, "convert_in_store": 0,
                               "staleness_half_life_h": 1000})  # however long ago she left the cart
    w = world(p)
    w.due_actions(END)  # everything planned happened: carts are open or bought
    carts = {i: cart for i, cart in w.open_cart.items() if i in w.signed_up}
    assert len(carts) > 5
    for i in carts:
        c = w.customers[i]
        d = Delivery(f"msg_{i}", "email", c.email, "http://chorus.test/o/x.gif", ("http://chorus.test/c/y",), None)
        w.receive(c, d, {"template": "cart_reminder", "kind": "marketing", "topic": "cart"}, END)
    later = w.due_actions(END + timedelta(days=3))
    orders = [a for _c, a, _mid in later if a.kind == "order"]
    assert len(orders) > len(carts) / 2, "most reminders convert with these parameters"
    for a in orders:
        assert (a.cart_id, a.skus) == carts[a.customer], a
        assert a.via == ("email", f"msg_{a.customer}") and a.at > END
    calls = w.due_callbacks(END + timedelta(days=3))
    assert {cb.kind for cb in calls} == {"open", "click"}
    assert all(cb.at > END for cb in calls)
    assert w.tally.deliveries["email"] == len(carts)


def test_stop_goes_to_the_inbound_webhook_and_the_delivery_report_to_the_message():
    p = params.with_overrides({"sms_stop": 1, "sms_click": 0})
    w = world(p, 50)
    c = next(c for c in w.customers if c.phone)
    text = Text("SM1", c.phone, "+3197010000001", "Sale!", "http://chorus.test/webhooks/twilio/ws/status?m=msg_1")
    w.receive(c, Delivery("msg_1", "sms", c.phone, text=text), {"template": "winback_offer", "kind": "marketing"},
              END)  # fmt: skip
    calls = w.due_callbacks(END + timedelta(days=3))
    by_url = {cb.url: cb for cb in calls}
    report = by_url[text.status_callback]
    assert report.form["MessageStatus"] == "delivered" and report.form["MessageSid"] == "SM1"
    stop = by_url["http://chorus.test/webhooks/twilio/ws/inbound"]
    assert stop.form["Body"] == "STOP" and stop.form["From"] == c.phone and stop.record == w.tally.stops[0]
    # a transactional text is never answered with STOP by the model
    w.receive(c, Delivery("msg_2", "sms", c.phone, text=text), {"template": "receipt", "kind": "transactional"}, END)
    assert len(w.tally.stops) == 1


def test_a_complaint_is_a_feedback_loops_arf_report_chorus_reads():
    """She reports an opened marketing email as spam: a callback for later carries an ARF report (RFC 5965) of the
    email as it arrived, which Chorus' own parser reads as an abuse report naming the message by its unsubscribe
    link; she does not also unsubscribe."""
    from email.message import EmailMessage

    from chorus.messaging import feedback

    p = params.with_overrides({"email_open": 1, "email_click": 0, "email_unsubscribe": 0, "email_complaint": 1})
    w = world(p, 5)
    c = w.customers[0]
    original = EmailMessage()
    original["From"] = "Kestrel <news@kestrel.example>"
    original["To"] = c.email
    original["Message-ID"] = "<msg_1@kestrel.example>"
    original["X-Chorus-Message"] = "msg_1"
    original["List-Unsubscribe"] = "<http://chorus.test/u/TOKEN123>"
    original["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    original.set_content("Spring sale")
    d = Delivery("msg_1", "email", c.email, None, (), "http://chorus.test/u/TOKEN123", raw=original.as_bytes())
    now = START + timedelta(days=1)
    w.receive(c, d, {"template": "spring_sale", "kind": "marketing", "topic": "offers"}, now)
    (cb,) = w.due_callbacks(END)
    assert cb.kind == "complaint" and cb.at > now and w.tally.complaints == [cb.record] and not w.tally.unsubscribes
    assert cb.record == {"message_id": "msg_1", "user_id": c.user_id, "address": c.email}
    report = feedback.parse(cb.body)
    assert (report.feedback_type, report.token, report.original_id, report.arrival) == ("abuse", "TOKEN123", "msg_1",
                                                                                        now)  # fmt: skip
    assert report.complaint and report.user_agent
    # dated when the loop sends it (Chorus dates the complaint by it): after the open, not before (review)
    assert report.reported == cb.at.replace(microsecond=0) and report.reported > now


def test_a_purchase_a_message_caused_takes_her_cart_as_it_is_when_she_gets_there():
    """She decides when the message arrives and buys up to a day and a half later (a store's opening hours): her
    cart as it is then, and not at all when she bought it in between (review: the cart as at the message, which she
    could buy twice)."""
    p = params.with_overrides({"email_open": 1, "email_click": 1, "convert_after_click": 1, "convert_in_store": 1,
                               "staleness_half_life_h": 1000})  # fmt: skip
    w = world(p)
    w.due_actions(END)
    carts = dict(w.open_cart)
    assert len(carts) > 10
    night = datetime(2026, 3, 21, 23, 0, tzinfo=UTC)  # midnight in Amsterdam: the stores open at 08:00
    extra = BRAND.catalog[-1].sku
    bought, added = [], []
    for n, (i, (cart_id, skus)) in enumerate(sorted(carts.items())):
        c = w.customers[i]
        if n % 2:  # she orders her cart online in the night, before the stores open
            w._later(model.Action(night + timedelta(minutes=1), i, "order", "web", signed_in=True, skus=skus,
                                  cart_id=cart_id, order_id=f"night-{i}"))  # fmt: skip
            bought.append(i)
        else:  # she adds to it
            w._later(model.Action(night + timedelta(minutes=1), i, "add", "web", skus=(extra,), cart_id=cart_id))
            added.append(i)
        d = Delivery(f"msg_{i}", "email", c.email, "http://chorus.test/o/x.gif", ("http://chorus.test/c/y",), None)
        w.receive(c, d, {"template": "cart_reminder", "kind": "marketing", "topic": "cart"}, night)
    decided = {int(order.split("-")[1]) for order in w.for_cart}  # the reminders she acted on (most)
    assert len(decided & set(bought)) > 3 and len(decided & set(added)) > 3
    w.stock.take = lambda store, skus, at: tuple(skus)  # every shelf full: what she takes is what she came for
    made = [a for _c, a, _mid in w.due_actions(night + timedelta(days=3)) if a.via]
    assert made and not [a for a in made if a.customer in bought], "nobody buys twice the cart she bought"
    assert w.tally.actions["purchase_bought_meanwhile"] == len(decided & set(bought))
    for a in made:
        assert a.kind == "store_purchase" and a.at.astimezone(BRAND_TZ).hour >= 8
        assert a.skus == (*carts[a.customer][1], extra), a
    assert {a.customer for a in made} == decided & set(added)


def test_a_cross_sell_is_wasted_when_she_bought_again_after_the_order_it_follows():
    """The cross-sell goes out ten days after the order it follows (and up to an hour of passes): a purchase after
    that order, however soon (an outside probe: the next morning's till receipt was missed when this was "within nine
    days"), makes it wasted; an earlier order, or none after, does not."""
    w = world(params.with_overrides({}), n=5)
    c = w.customers[0]
    order = START + timedelta(days=1, hours=10)
    w.purchases[c.index] = [order]
    w.last_purchase[c.index] = order
    sent = order + timedelta(days=10, minutes=20)
    assert w.wasted(c, "cross_sell", sent) is None
    again = order + timedelta(hours=23)
    w.purchases[c.index] = [order, again]
    w.last_purchase[c.index] = again
    assert w.wasted(c, "cross_sell", sent) == "cross-sell after she bought again"
    w.purchases[c.index] = [order - timedelta(hours=5), order]  # one before it: not "again"
    w.last_purchase[c.index] = order
    assert w.wasted(c, "cross_sell", sent) is None
