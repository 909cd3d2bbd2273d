"""What each action looks like on the wire: the Segment-spec message a web shop (analytics.js), the app (a mobile
SDK) or the brand's back end would send to ``/v1/batch``, or the row a till, the call centre or the catalog
mailing house puts in the file imported through ``POST /api/imports``. Plain functions, no I/O.

Online events carry ``context.channel`` (web, app, store for an in-store scan) and the context the real clients
send (a page and user agent, or an app, OS and device token); the time zone is the browser's or the phone's
(``context.timezone``, where Chorus learns a profile's zone for local-time delays).
"""

from __future__ import annotations

from decimal import Decimal

from chorus.demo.brand import Brand
from chorus.demo.model import Action, Customer
from chorus.timeutil import iso

# where each action goes: "client" (public write key), "server" (server write key) or an import source
CLIENT, SERVER = "client", "server"
IMPORTS = {"store_purchase": "store", "call": "call_center", "catalog_sent": "catalog"}
# the files imported through POST /api/imports: route -> (source, mapping); a till's returns are a file of their own,
# its rows `Order Refunded` events (the mapping names the event; docs/import.md)
RETURNS_FILE = "store_returns"
IMPORT_FILES = {**{s: (s, None) for s in IMPORTS.values()}, RETURNS_FILE: ("store", {"event": "Order Refunded"})}


def route(a: Action) -> str:
    if a.kind in IMPORTS:
        return IMPORTS[a.kind]
    if a.kind == "return":  # at the till it was bought at; an online order's through the order system
        return RETURNS_FILE if a.channel == "store" else SERVER
    # a sign-up is the brand's back end creating the account: only a trusted identify may join the new account to
    # the profile her till purchases made (loyalty card, e-mail); a browser's would be a claim, refused (decision
    # 0014), and she would be two people
    return SERVER if a.kind in ("known", "pickup_cancelled", "signup") else CLIENT


def _product(brand: Brand, sku: str) -> dict:
    p = brand.product(sku)
    return {"product_id": p.sku, "sku": p.sku, "name": p.name, "category": p.category, "price": _money(p.price),
            "quantity": 1}  # fmt: skip


def _money(value: Decimal) -> float:
    # Segment's spec has numbers for money; two decimals survive a JSON number exactly enough for display, and
    # Chorus' revenue reports sum them as decimals
    return float(value)


def _total(brand: Brand, skus: tuple[str, ...]) -> Decimal:
    return sum((brand.product(s).price for s in skus), Decimal(0))


def _traits(c: Customer) -> dict:
    t = {"email": c.email, "first_name": c.first_name, "preferred_channel": c.preferred_channel}
    if c.phone:
        t["phone"] = c.phone
    if c.loyalty_id:
        t["loyalty_id"] = c.loyalty_id
    return t


def _context(c: Customer, channel: str, brand: Brand, path: str) -> dict:
    if channel == "web":
        return {"channel": "web", "page": {"path": path, "url": f"https://{brand.domain}{path}"},
                "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0", "timezone": brand.timezone}  # fmt: skip
    ctx = {"channel": channel, "app": {"name": "Kestrel", "version": "4.2.0"}, "os": {"name": "iOS"},
           "device": {"type": "ios", "token": push_token(c)}, "timezone": brand.timezone}  # fmt: skip
    return ctx


def push_token(c: Customer) -> str | None:
    return f"tok-{c.app_device}" if c.app_device else None


def device_id(c: Customer, channel: str) -> str:
    return c.app_device if channel in ("app", "store") and c.app_device else c.web_device


def messages(c: Customer, a: Action, brand: Brand, message_id: str) -> list[dict]:
    """The tracking messages of one online or back-end action (``route`` is client or server)."""
    ts = iso(a.at)
    if a.kind == "known":  # the CRM's record of an existing customer, sent by the brand's server
        msg = {"type": "identify", "userId": c.user_id, "traits": _traits(c), "timestamp": ts,
               "messageId": message_id}  # fmt: skip
        if c.messenger_psid:
            msg["context"] = {"externalIds": [{"type": "messenger_psid", "id": c.messenger_psid,
                                                "collection": "users"}]}  # fmt: skip
        return [msg]
    if a.kind == "pickup_cancelled":  # the order system tells Chorus that the store cancelled the pick-up
        # and gives her money back (paid online): the order's revenue is not the brand's (an outside probe found
        # the cancelled orders in the net revenue, the compare's books included)
        return [{"type": "track", "event": "Order Cancelled", "userId": c.user_id, "timestamp": ts,
                 "messageId": message_id, "properties": {
                     "order_id": a.order_id, "fulfillment": "store_pickup", "reason": "out_of_stock",
                     "store_id": a.store, "order_channel": a.channel,
                     "products": [_product(brand, s) for s in a.skus]}},
                {"type": "track", "event": "Order Refunded", "userId": c.user_id, "timestamp": ts,
                 "messageId": message_id + "-refund", "properties": {
                     "order_id": a.order_id, "total": _money(_total(brand, a.skus)), "currency": brand.currency,
                     "order_channel": a.channel, "reason": "cancelled",
                     "products": [_product(brand, s) for s in a.skus]}}]  # fmt: skip
    if a.kind == "return":  # the order system refunds a returned order (Segment's `Order Refunded`: its total)
        return [{"type": "track", "event": "Order Refunded", "userId": c.user_id, "timestamp": ts,
                 "messageId": message_id, "properties": {
                     "order_id": a.order_id, "total": _money(_total(brand, a.skus)), "currency": brand.currency,
                     "order_channel": a.channel, "products": [_product(brand, s) for s in a.skus]}}]  # fmt: skip
    base = {"anonymousId": device_id(c, a.channel), "timestamp": ts, "messageId": message_id,
            "context": _context(c, a.channel, brand, _path(a))}  # fmt: skip
    if a.signed_in:
        base["userId"] = c.user_id
    if a.via:  # she followed a message's link: the UTM tags of the link, as analytics.js reports them
        base["context"]["campaign"] = {"source": "chorus", "medium": a.via[0], "content": a.via[1]}
    if a.kind in ("signup", "login"):
        ident = {**base, "type": "identify", "userId": c.user_id}
        if a.kind == "signup":
            ident["traits"] = _traits(c)
            return [ident, {**base, "userId": c.user_id, "type": "track", "event": "Signed Up",
                            "messageId": message_id + "-s", "properties": {"method": a.channel}}]  # fmt: skip
        return [ident]
    event, props = _track(a, brand)
    return [{**base, "type": "track", "event": event, "properties": props}]


def _path(a: Action) -> str:
    if a.kind == "view" or a.kind == "store_view":
        return f"/p/{a.skus[0]}"
    return {"search": "/search", "add": "/cart", "order": "/checkout/done", "signup": "/account/new",
            "login": "/account/login"}.get(a.kind, "/")  # fmt: skip


def _track(a: Action, brand: Brand) -> tuple[str, dict]:
    if a.kind == "search":
        return "Products Searched", {"query": a.query}
    if a.kind in ("view", "store_view"):
        props = _product(brand, a.skus[0])
        if a.store:
            props["store_id"] = a.store
        return "Product Viewed", props
    if a.kind == "add":
        return "Product Added", {**_product(brand, a.skus[0]), "cart_id": a.cart_id}
    if a.kind == "order":
        props = {"order_id": a.order_id, "revenue": _money(_total(brand, a.skus)), "currency": brand.currency,
                 "products": [_product(brand, s) for s in a.skus], "fulfillment": a.fulfillment,
                 "order_channel": a.channel}  # fmt: skip
        if a.cart_id:
            props["cart_id"] = a.cart_id
        if a.store:
            props["store_id"] = a.store
        if a.promo_code:
            props["coupon"] = a.promo_code
        return "Order Completed", props
    raise ValueError(f"no tracking event for a {a.kind!r} action")


def import_row(c: Customer, a: Action, brand: Brand) -> dict:
    """One line of the till, call-centre or catalog file (JSON lines; Chorus' default mapping per source)."""
    # the loyalty card, registered with her email; without a card, the email she gave for an e-receipt
    row: dict = {"timestamp": iso(a.at), "email": c.email}
    if c.loyalty_id:
        row["loyalty_id"] = c.loyalty_id
    if a.kind in ("store_purchase", "return"):  # a sale, or (the returns file) the refund of one
        row.update({"order_id": a.order_id, "store_id": a.store, "revenue": str(_total(brand, a.skus)),
                    "currency": brand.currency, "order_channel": "store",
                    "products": [_product(brand, s) for s in a.skus]})  # fmt: skip
    elif a.kind == "call":
        row.update({"call_id": f"call-{c.index}-{a.at.timestamp():.0f}", "topic": "product question"})
    elif a.kind == "catalog_sent":
        row.update({"catalog": "spring", "promo_codes": ",".join(brand.catalog_promo_codes)})
    else:
        raise ValueError(f"a {a.kind!r} action is not imported")
    return row
