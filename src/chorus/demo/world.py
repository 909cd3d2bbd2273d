"""The customers' side of the demo, as state without I/O: the actions still to come (the model's plan, and what
messages make them do), what each customer is doing now (her open cart, whether she has an account, when she last
acted), and what she does with a message she receives (``receive``): callbacks to make and actions to add.

``run.py`` does the I/O: it posts what ``due_actions`` gives, makes what ``due_callbacks`` gives over HTTP, and
hands every delivery it reads (mail, texts, sink files) to ``receive``.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from chorus.demo import events, fbl, model, stock
from chorus.demo.brand import BRAND
from chorus.demo.inbox import Delivery
from chorus.demo.twilio import TwilioStandIn

# messages about what the person just did: the model's relevance lift applies
RELEVANT = {"cart_reminder", "cart_reminder_2", "browse_offer", "pickup_cancelled", "delivery_offer", "receipt",
            "welcome_code"}  # fmt: skip
CART_REMINDERS = ("cart_reminder", "cart_reminder_2")
WINBACK = ("winback_offer", "winback_last_chance")
RECENT_BUYER = timedelta(days=30)  # a win-back offer to someone who bought within this is wasted
# a cross-sell comes ten days (and up to an hour of the worker's passes) after the order it follows
# (definitions/journeys/post_purchase.json): another purchase since that order means she bought again (an outside
# probe: a repeat purchase the day after the first was missed when this was "a purchase within nine days")
CROSS_SELL = timedelta(days=10)
CROSS_SELL_AFTER = CROSS_SELL + timedelta(hours=1)
# from "this is spam" to Chorus: the provider's loop mails its report within minutes, the brand's abuse mailbox
# forwards it at once (an assumption; Yahoo's and Microsoft's loops report in near real time)
REPORT_DELAY = timedelta(minutes=5)


@dataclass(frozen=True)
class Callback:
    """A request a person's mail client, her browser, her mailbox provider or Twilio makes to Chorus."""

    at: datetime
    kind: str  # open, click (GET a link), unsubscribe (RFC 8058 POST), twilio (a signed form POST), complaint
    url: str  # (a feedback loop's ARF report, forwarded by the brand to Chorus' feedback webhook: ``body``)
    form: dict | None = None
    record: dict | None = None  # an opt-out to report: the instant Chorus received it is added to it
    body: bytes | None = field(default=None, repr=False)  # a complaint's ARF report (RFC 5965), raw


@dataclass
class Tally:
    actions: Counter = field(default_factory=Counter)
    deliveries: Counter = field(default_factory=Counter)
    responses: Counter = field(default_factory=Counter)
    unsubscribes: list = field(default_factory=list)  # email one-click unsubscribes: message, user, topic, time
    stops: list = field(default_factory=list)  # SMS STOP replies: message, phone, time
    complaints: list = field(default_factory=list)  # emails reported as spam (feedback loop): message, user, time
    # messages about what she had already done, by the customers' own record (Chorus may not know it): a cart
    # reminder after she bought (online or in a store) since her last add to cart, a browse offer after she bought
    # since her last product view, a cross-sell after she bought again, a win-back offer within 30 days of a
    # purchase, a marketing email of a topic she had unsubscribed from or after she reported the brand's email as
    # spam (in another workspace: a team that does not share consent); message, user, template, channel, why
    wasted: list = field(default_factory=list)
    purchases: Counter = field(default_factory=Counter)  # online orders and till receipts that reached Chorus
    revenue: Decimal = Decimal(0)  # their value, from the catalog's prices
    # the planned actions posted, in order: two runs with one seed and size post the same plan (compare.py)
    plan: Any = field(default_factory=hashlib.sha256)


class World:
    def __init__(self, seed: int, start: datetime, params: dict, plans: list[model.Plan], twilio: TwilioStandIn,
                 inbound_url: str, days: float):  # fmt: skip
        self.seed, self.start, self.params = seed, start, params
        self.twilio, self.inbound_url = twilio, inbound_url
        self.customers = [p.customer for p in plans]
        self.by_address: dict[str, int] = {}
        for c in self.customers:
            for addr in (c.email, c.phone, c.messenger_psid, events.push_token(c)):
                if addr:
                    self.by_address[addr] = c.index
        self.seq = itertools.count()  # ties in time keep the order things were added in
        self.extra = itertools.count()  # ids of what messages make people do
        self.queue: list = [(a.at, next(self.seq), a, f"demo-{seed}-{a.customer}-{i}")
                            for p in plans for i, a in enumerate(p.actions)]  # fmt: skip
        heapq.heapify(self.queue)
        self.callbacks: list = []
        self.last_active: dict[int, datetime] = {}
        self.open_cart: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.signed_up: set[int] = set()
        self.last_add: dict[int, datetime] = {}
        self.last_view: dict[int, datetime] = {}
        self.unsubscribed: dict[int, list[dict]] = {}  # her one-click unsubscribes (their "at": when made)
        self.complained: dict[int, list[dict]] = {}  # her spam complaints (their "at": when Chorus got the report)
        self.last_purchase: dict[int, datetime] = {}
        self.purchases: dict[int, list[datetime]] = {}  # every purchase of hers, in time order
        self.received: Counter = Counter()  # (customer, template) -> messages so far: the stable key of a response
        self.tally = Tally()
        sigma = params["forecast_error"]
        levels = stock.levels_from_demand(
            demand(plans), days / 7, [s.id for s in BRAND.stores], [p.sku for p in BRAND.catalog],
            params["stock_cover"], lambda s, k: random.Random(f"{seed}:forecast:{s}:{k}").lognormvariate(0, sigma))
        self.stock = stock.Stock(levels, stock.first_delivery(start, BRAND.timezone), BRAND.timezone)
        self.cancelled: Counter = Counter()  # store -> its pick-up cancellations posted
        self.got: dict[str, tuple[str, ...]] = {}  # order id -> what a till purchase really got
        self.not_made: set[str] = set()  # orders cancelled, and till purchases of nothing: no return follows
        # a purchase a message made her decide on for her open cart: order id -> that cart's id (what she buys is
        # settled when she gets to the till or the checkout, up to a day and a half later)
        self.for_cart: dict[str, str] = {}

    # -- what happens next ---------------------------------------------------------------------------------------
    def due_actions(self, until: datetime) -> list[tuple[model.Customer, model.Action, str]]:
        """The actions before ``until`` in time order, with their message ids; the customers' state follows them."""
        out = []
        while self.queue and self.queue[0][0] < until:
            _at, _o, a, mid = heapq.heappop(self.queue)
            c = self.customers[a.customer]
            if "-x" not in mid:  # planned, not made by a message (whatever the stock makes of it)
                self.tally.plan.update(f"{mid} {a.kind} {a.at.isoformat()}\n".encode())
            a = self._at_checkout(c, a)
            a = self._stocked(a) if a is not None else None
            if a is None:
                continue
            self.tally.actions[a.kind] += 1
            if a.kind in ("order", "store_purchase"):
                self.tally.purchases["store" if a.kind == "store_purchase" else "online"] += 1
                self.tally.revenue += sum((BRAND.product(s).price for s in a.skus), Decimal(0))
            if a.via and a.kind in ("order", "store_purchase"):  # a purchase a message caused, now really made
                self.tally.responses[f"purchase:{'store' if a.kind == 'store_purchase' else 'online'}"] += 1
            self._note(c, a)
            out.append((c, a, mid))
        return out

    def _at_checkout(self, c: model.Customer, a: model.Action) -> model.Action | None:
        """A purchase a message made her decide on for her open cart, as it is when she gets to the till or the
        checkout: that cart as it is now (she may have added to it since), or nothing when it is no longer open (she
        bought it in between, online or in a store: the message's reason is gone, and she does not buy it twice)."""
        cart_id = self.for_cart.pop(a.order_id or "", None) if a.kind in ("order", "store_purchase") else None
        if cart_id is None:
            return a
        cart = self.open_cart.get(c.index)
        if cart is None or cart[0] != cart_id:
            self.tally.actions["purchase_bought_meanwhile"] += 1
            return None
        return replace(a, skus=cart[1])

    def _stocked(self, a: model.Action) -> model.Action | None:
        """The action as the stores' stock lets it happen (``stock.py``), None if it does not happen."""
        if a.kind == "return" and a.order_id in self.not_made:
            return None
        if a.kind == "pickup_cancelled":
            self.cancelled[a.store or ""] += 1
        if a.kind == "return" and a.channel == "store":
            a = replace(a, skus=self.got.get(a.order_id, a.skus))  # she brings back what she got
            self.stock.give_back(a.store or "", a.skus, a.at)
        elif a.kind == "store_purchase":
            got = self.stock.take(a.store or "", a.skus, a.at)
            if not got:  # nothing she came for was there
                self.not_made.add(a.order_id or "")
                self.tally.actions["store_purchase_not_made"] += 1
                return None
            self.got[a.order_id or ""] = got
            a = replace(a, skus=got)
        elif a.kind == "order" and a.fulfillment == "store_pickup" and not self.stock.reserve(a.store or "", a.skus,
                                                                                               a.at):  # fmt: skip
            # she ordered; the store finds it cannot pick the order and cancels it within its next opening hours
            self.not_made.add(a.order_id or "")
            delay = timedelta(hours=random.Random(f"{self.seed}:cancel:{a.order_id}").uniform(2, 26))
            self._later(replace(a, at=_opening_hours(a.at + delay), kind="pickup_cancelled", via=None,
                                signed_in=False, cart_id=None, promo_code=None))  # fmt: skip
        return a

    def due_callbacks(self, until: datetime) -> list[Callback]:
        out = []
        while self.callbacks and self.callbacks[0][0] < until:
            out.append(heapq.heappop(self.callbacks)[2])
        return out

    def _note(self, c: model.Customer, a: model.Action) -> None:
        if a.kind in ("catalog_sent", "pickup_cancelled"):
            return  # the brand acted, not she
        self.last_active[c.index] = a.at
        if a.kind in ("known", "signup"):
            self.signed_up.add(c.index)
        if a.kind in ("order", "store_purchase"):
            self.last_purchase[c.index] = a.at
            self.purchases.setdefault(c.index, []).append(a.at)
        if a.kind in ("view", "store_view"):
            self.last_view[c.index] = a.at
        if a.kind == "add":
            self.last_add[c.index] = a.at
            cart = self.open_cart.get(c.index)
            skus = (cart[1] if cart and cart[0] == a.cart_id else ()) + a.skus
            self.open_cart[c.index] = (a.cart_id, skus)
        elif a.kind in ("order", "store_purchase"):
            cart = self.open_cart.get(c.index)
            if cart and (a.cart_id == cart[0] or a.kind == "store_purchase"):
                self.open_cart.pop(c.index, None)

    def _later(self, a: model.Action) -> None:
        heapq.heappush(self.queue, (a.at, next(self.seq), a, f"demo-{self.seed}-{a.customer}-x{next(self.extra)}"))

    def _call(self, cb: Callback) -> None:
        heapq.heappush(self.callbacks, (cb.at, next(self.seq), cb))

    # -- a message arrives ---------------------------------------------------------------------------------------
    def customer_at(self, address: str) -> model.Customer | None:
        i = self.by_address.get(address)
        return None if i is None else self.customers[i]

    def receive(self, c: model.Customer, d: Delivery, meta: dict, now: datetime) -> None:
        """She received ``d`` (``meta``: the message as GET /api/messages describes it) at ``now``."""
        template = meta.get("template") or "?"
        self.tally.deliveries[d.channel] += 1
        self.received[(c.index, template)] += 1
        key = f"{c.index}:{template}:{self.received[(c.index, template)]}"
        age = now - self.last_active.get(c.index, self.start)
        why = self.wasted(c, template, now)
        if why is None and d.channel == "email" and meta.get("kind") == "marketing" and any(
                r.get("topic") == meta.get("topic") and "at" in r for r in self.unsubscribed.get(c.index, ())):
            why = "marketing email after she unsubscribed from its topic"
        if why is None and d.channel == "email" and meta.get("kind") == "marketing" and any(
                "at" in r for r in self.complained.get(c.index, ())):
            why = "marketing email after she reported the brand's email as spam"
        if why:
            self.tally.wasted.append({"message_id": d.message_id, "user_id": c.user_id, "template": template,
                                      "channel": d.channel, "why": why})  # fmt: skip
        r = model.respond(self.seed, key, d.channel, template in RELEVANT, age, meta.get("kind") == "marketing",
                          self.params, annoyed=why is not None)  # fmt: skip
        at = now + r.delay
        if d.channel == "email":
            if r.opened and d.open_url:
                self._call(Callback(at, "open", d.open_url))
            if r.clicked and d.click_urls:
                self._call(Callback(at + timedelta(minutes=1), "click", d.click_urls[0]))
            if r.unsubscribed and d.unsubscribe_url:
                record = {"message_id": d.message_id, "user_id": c.user_id, "topic": meta.get("topic")}
                self.tally.unsubscribes.append(record)
                self.unsubscribed.setdefault(c.index, []).append(record)
                self._call(Callback(at, "unsubscribe", d.unsubscribe_url, record=record))
            if r.complained and d.unsubscribe_url and d.raw is not None:  # "this is spam": her provider reports it
                record = {"message_id": d.message_id, "user_id": c.user_id, "address": d.address}
                self.tally.complaints.append(record)
                self.complained.setdefault(c.index, []).append(record)
                self._call(Callback(at + REPORT_DELAY, "complaint", "", record=record,
                                    body=fbl.report(d.raw, d.address, now, at + REPORT_DELAY)))  # fmt: skip
        if d.text is not None:  # the carrier delivered it: Twilio reports so to the message's callback URL
            self._call(Callback(now + timedelta(seconds=30), "twilio", d.text.status_callback or "",
                                self.twilio.status(d.text, "delivered")))  # fmt: skip
            if r.unsubscribed:  # she answers STOP: Twilio forwards the reply to the number's inbound webhook
                record = {"message_id": d.message_id, "phone": d.address}
                self.tally.stops.append(record)
                self._call(Callback(at, "twilio", self.inbound_url, self.twilio.inbound(d.address, "STOP"), record))
        if d.channel != "email" and r.clicked:  # its link opened the site or the app: a visit with its UTM tags
            channel = "app" if d.channel == "push" and c.app_device else "web"
            self._later(model.Action(at, c.index, "view", channel, signed_in=c.index in self.signed_up,
                                     skus=(self._sku(c, f"{key}:visit"),), via=(d.channel, d.message_id)))  # fmt: skip
        for what in ("opened", "clicked", "unsubscribed", "complained"):
            if getattr(r, what):
                self.tally.responses[f"{d.channel}:{what}"] += 1
        if r.purchase:  # counted when it is made (due_actions): not if it would fall after the period, nor online
            # by someone who has no account
            self._purchase(c, at + timedelta(minutes=10), r.purchase, key, (d.channel, d.message_id))

    def wasted(self, c: model.Customer, template: str, now: datetime) -> str | None:
        """Why a message is about something she has already done (None: it is not)."""
        bought = self.last_purchase.get(c.index)
        if bought is None:
            return None
        if template in CART_REMINDERS and bought >= self.last_add.get(c.index, bought):
            return "cart reminder after she bought"
        if template == "browse_offer" and bought >= self.last_view.get(c.index, bought):
            return "browse offer after she bought"
        if template == "cross_sell":  # the order it follows (the latest one its delay before now), then another
            times = self.purchases.get(c.index, [])
            followed = max((t for t in times if now - CROSS_SELL_AFTER <= t <= now - CROSS_SELL), default=None)
            if followed is not None and any(followed < t < now for t in times):
                return "cross-sell after she bought again"
        if template in WINBACK and now - bought < RECENT_BUYER:
            return "win-back offer within 30 days of a purchase"
        return None

    def _purchase(self, c: model.Customer, at: datetime, where: str, key: str, via: tuple[str, str]) -> None:
        """What she wanted (her open cart, else something in her favourite category), in a store or online."""
        cart = self.open_cart.get(c.index)
        skus = cart[1] if cart else (self._sku(c, key),)
        n = next(self.extra)
        if where == "store":  # when the store is open
            if cart:
                self.for_cart[f"rcpt-{c.index}-m{n}"] = cart[0]
            self._later(model.Action(_opening_hours(at), c.index, "store_purchase", "store", skus=skus,
                                     order_id=f"rcpt-{c.index}-m{n}", store=c.home_store, via=via))  # fmt: skip
        elif c.index in self.signed_up:  # an online order needs her account
            if cart:
                self.for_cart[f"ord-{c.index}-m{n}"] = cart[0]
            self._later(model.Action(at, c.index, "order", "app" if c.app_device else "web", signed_in=True,
                                     skus=skus, cart_id=cart[0] if cart else None, order_id=f"ord-{c.index}-m{n}",
                                     fulfillment="delivery", via=via))  # fmt: skip

    def _sku(self, c: model.Customer, key: str) -> str:
        return random.Random(f"{self.seed}:sku:{key}").choice(BRAND.in_category(c.favourite)).sku


def demand(plans: list[model.Plan]) -> Counter:
    """Units the plans buy at each (store, sku): till purchases and click-and-collect orders (the forecast the
    stores' levels are set from)."""
    out: Counter = Counter()
    for p in plans:
        for a in p.actions:
            if a.kind == "store_purchase" or (a.kind == "order" and a.fulfillment == "store_pickup"):
                out.update((a.store, sku) for sku in a.skus)
    return out


def _opening_hours(t: datetime) -> datetime:
    """``t``, or the next opening, 08:00 in the brand's time zone, when the stores are closed (22:00 to 08:00)."""
    tz = ZoneInfo(BRAND.timezone)
    local = t.astimezone(tz)
    if 8 <= local.hour < 22:
        return t
    day = local.replace(hour=8, minute=0, second=0, microsecond=0)
    if local.hour >= 22:
        day += timedelta(days=1)
    return day.astimezone(t.tzinfo)
