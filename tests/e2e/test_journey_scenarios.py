"""The seed journeys (tests/journeys/definitions/*.yaml) run end to end, only through public interfaces: `chorus
serve` as a subprocess, the tracking API (/v1/*), the admin API (templates, providers, journeys, imports, messages,
stats), a real SMTP server and the provider stand-ins (Twilio, FCM, Meta's Messenger). Every scenario has a holdout
arm: its people receive nothing after the split and are counted in the journey's statistics.

The scenarios that wait for a wall-clock hour (browse abandonment's 09:00 local, win-back's 60 days without
activity) are in tests/e2e/test_journey_scenarios_clock.py: there the server runs under libfaketime (a test-only
tool) and the test moves its wall clock.
The abandoned cart's one-hour wait is shortened to the grammar's shortest duration, one minute: that test is
marked slow.

Who lands in a holdout is the person's stable bucket (docs/journeys.md, *split*): SHA-256 of ``seed:profile_id``.
The profiles are made first, and a seed is picked (computed here from the documented rule, not with Chorus' own
function) that puts each person in the arm the scenario needs; the journey's statistics then show whether Chorus
assigned the arms by that rule.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from tests.conftest import ServeProcess, _ASGIThread, wait_until
from tests.standins.fcm import FCMStandIn
from tests.standins.meta import MetaStandIn

DEFINITIONS = Path(__file__).parents[1] / "journeys" / "definitions"
SMS_FROM = "+15005550006"
DONE = ("sent", "delivered", "failed", "bounced", "skipped", "retrying")


def bucket(profile_id: str, seed: str) -> int:
    """docs/journeys.md: the first 4 bytes of SHA-256 of ``seed:profile_id``, big-endian, modulo 100."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{profile_id}".encode()).digest()[:4], "big") % 100


def seed_for(want: dict[str, bool], holdout_from: int = 90) -> str:
    """A split seed under which each profile id in ``want`` is in the holdout (True) or not: a 90/10 split with the
    holdout last takes the buckets from 90 up."""
    for i in range(100_000):
        seed = f"e2e-{i}"
        if all((bucket(pid, seed) >= holdout_from) == held for pid, held in want.items()):
            return seed
    raise AssertionError("no seed found")


def definition(name: str, **override) -> dict:
    """A seed definition as JSON, top-level keys replaced by ``override``."""
    return {**yaml.safe_load((DEFINITIONS / f"{name}.yaml").read_text()), **override}


def now_iso(shift: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=shift)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Shop:
    """One running `chorus serve` with every provider pointed at a local stand-in, and the calls the scenarios
    make."""

    def __init__(self, base: str, keys: dict, smtp, twilio, fcm, meta):
        self.smtp, self.twilio, self.fcm, self.meta = smtp, twilio, fcm, meta
        self.keys = keys
        self.http = httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {keys['api_key']}"})
        self.tracking = httpx.Client(base_url=base, timeout=30)

    def ok(self, r: httpx.Response, *status: int) -> dict:
        assert r.status_code in (status or (200,)), (r.request.method, str(r.request.url), r.status_code, r.text)
        return r.json() if r.content else {}

    def track(self, *messages: dict, server: bool = False) -> None:
        key = self.keys["server_write_key" if server else "write_key"]
        got = self.ok(self.tracking.post("/v1/batch", auth=(key, ""), json={"batch": list(messages)}))
        assert "rejected" not in got, got

    def template(self, name: str, body: dict) -> None:
        self.ok(self.http.put(f"/api/templates/{name}", json=body))

    def publish(self, defn: dict) -> dict:
        return self.ok(self.http.post("/api/journeys", json=defn), 201)

    def profile(self, user_id: str) -> dict:
        return wait_until(lambda: (r := self.http.get("/api/profiles", params={"user_id": user_id})).status_code
                          == 200 and r.json(), timeout=30)  # fmt: skip

    def messages(self, **filters) -> list[dict]:
        return self.ok(self.http.get("/api/messages", params={"limit": 1000, **filters}))["messages"]

    def settled(self, count: int, timeout: float = 30, **filters) -> list[dict]:
        """Wait until ``count`` messages matching ``filters`` exist and each has an outcome."""

        def done():
            got = self.messages(**filters)
            return got if len(got) >= count and all(m["status"] in DONE for m in got) else None

        return wait_until(done, timeout=timeout, interval=0.2)

    def stats(self, journey: str) -> dict:
        return self.ok(self.http.get(f"/api/journeys/{journey}/stats"))

    def arms(self, journey: str) -> dict[str, dict]:
        (version,) = self.stats(journey)["versions"]
        return {a["arm"]: a for a in version["arms"]}

    def node(self, journey: str, node: str) -> dict:
        (version,) = self.stats(journey)["versions"]
        return {n["node"]: n for n in version["nodes"]}[node]

    def instances(self, profile_id: str, journey: str) -> list[dict]:
        got = self.ok(self.http.get(f"/api/profiles/{profile_id}/journeys"))["instances"]
        return [i for i in got if i["journey_id"] == journey]


@pytest.fixture
def fcm():
    standin = FCMStandIn()
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def meta():
    standin = MetaStandIn("EAAG-test-token")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def shop(db_url, tmp_path, smtp_server, twilio, fcm, meta):
    env = {
        "CHORUS_WORKER_POLL_SECONDS": "0.05", "CHORUS_SMTP_PASSWORD": "s3cret",
            "CHORUS_TWILIO_TOKEN": twilio.auth_token,
        "CHORUS_FCM_ACCOUNT": orjson.dumps(fcm.service_account(fcm.base_url)).decode(),
        "CHORUS_META_TOKEN": meta.access_token, "CHORUS_META_APP_SECRET": "0123456789abcdef0123456789abcdef",
    }  # fmt: skip
    providers = {
        "email": [{"type": "smtp", "name": "relay", "host": "127.0.0.1", "port": smtp_server.port,
                   "username": "chorus", "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>",
                   "ca_file": smtp_server.ca_file}],
        "sms": [{"type": "twilio", "name": "twilio", "account_sid": twilio.account_sid,
                 "auth_token_env": "CHORUS_TWILIO_TOKEN", "from": SMS_FROM, "base_url": twilio.base_url}],
        "push": [{"type": "fcm", "service_account_env": "CHORUS_FCM_ACCOUNT", "base_url": fcm.base_url}],
        # a tag lets transactional updates (the receipt) out of Messenger's 24-hour window
        "messenger": [{"type": "messenger", "name": "messenger", "access_token_env": "CHORUS_META_TOKEN",
                       "app_secret_env": "CHORUS_META_APP_SECRET", "base_url": meta.base_url,
                       "tag": "POST_PURCHASE_UPDATE"}],
    }  # fmt: skip
    with ServeProcess(db_url, tmp_path, **env) as srv:
        s = Shop(srv.base_url, srv.keys, smtp_server, twilio, fcm, meta)
        s.ok(s.http.patch("/api/workspace/settings", json={"messaging": {"providers": providers}}))
        try:
            yield s
        finally:
            s.http.close()
            s.tracking.close()


def web(user_id: str, **more) -> dict:
    """What analytics.js sends: a page context, a browser's anonymous id."""
    return {"userId": user_id, "anonymousId": f"browser-{user_id}", "messageId": uuid.uuid4().hex,
            "timestamp": now_iso(), "context": {"page": {"path": "/"}, "userAgent": "Mozilla/5.0"}, **more}  # fmt: skip


def app(user_id: str, **more) -> dict:
    """What the mobile SDK sends: an app context with the device's push token."""
    return {"userId": user_id, "messageId": uuid.uuid4().hex, "timestamp": now_iso(),
            "context": {"app": {"name": "Shop"}, "os": {"name": "iOS"},
                        "device": {"type": "ios", "token": f"tok-{user_id}"}}, **more}  # fmt: skip


# -- 1. welcome -----------------------------------------------------------------------------------------------------
def test_welcome_sms_with_a_first_purchase_code_and_a_counted_holdout(shop):
    shop.template("welcome_code", {"kind": "marketing", "topic": "offers", "variants": {
        "sms": {"text": "Welcome {{ traits.first_name }}! Your first-purchase code: {{ data.code }}"}}})  # fmt: skip
    people = {f"w{i}": f"+3161111220{i}" for i in range(4)}
    # they sign up in the app: identify with email and phone (the profile exists before the journey does, so that
    # the split's seed can be chosen from the profile ids)
    shop.track(*[app(u, type="identify", traits={"email": f"{u}@example.com", "phone": phone, "first_name": u.upper()})
                 for u, phone in people.items()])  # fmt: skip
    pid = {u: shop.profile(u)["id"] for u in people}
    held = {"w3"}
    seed = seed_for({pid[u]: u in held for u in people})
    defn = definition("welcome")
    defn["nodes"]["holdout"]["seed"] = seed
    shop.publish(defn)
    shop.track(*[app(u, type="track", event="Signed Up") for u in people])

    sent = shop.settled(3, template="welcome_code")
    assert sorted((m["profile_id"], m["channel"], m["status"]) for m in sent) == sorted(
        (pid[u], "sms", "sent") for u in people if u not in held
    )
    assert all(m["journey_id"] == "welcome" for m in sent)
    # Twilio received exactly those, each with the code from the node's data
    assert sorted(s["To"] for s in shop.twilio.sent) == sorted(people[u] for u in people if u not in held)
    for s in shop.twilio.sent:
        user = next(u for u, phone in people.items() if phone == s["To"])
        assert s["Body"] == f"Welcome {user.upper()}! Your first-purchase code: WELCOME10" and s["From"] == SMS_FROM
    # the step after the message marked the treated, not the holdout
    wait_until(lambda: all(("welcome_code_sent" in shop.profile(u)["traits"]) == (u not in held) for u in people))

    arms = shop.arms("welcome")
    assert (arms["treatment"]["entered"], arms["treatment"]["holdout"]) == (3, False)
    assert (arms["holdout"]["entered"], arms["holdout"]["holdout"], arms["holdout"]["converted"]) == (1, True, 0)
    # the holdout stays in the journey at the split, sent nothing, until the goal window ends
    (inst,) = shop.instances(pid["w3"], "welcome")
    assert (inst["status"], inst["node"], inst["arms"]) == ("active", "holdout", {"holdout": "holdout"}), inst
    assert shop.messages(profile_id=pid["w3"], template="welcome_code") == []

    # the held-out person buys: the conversion is counted for her arm, and she leaves (nothing left to measure)
    shop.track(web("w3", type="track", event="Order Completed", properties={"order_id": "O-1", "revenue": 20}))
    wait_until(lambda: shop.arms("welcome")["holdout"]["converted"] == 1, timeout=30)
    (inst,) = shop.instances(pid["w3"], "welcome")
    assert (inst["status"], inst["exit_reason"]) == ("exited", "goal reached"), inst
    assert shop.arms("welcome")["treatment"]["converted"] == 0
    assert shop.stats("welcome")["totals"]["entered"] == 4
    assert len(shop.twilio.sent) == 3  # nothing more went out


# -- 4. post-purchase -----------------------------------------------------------------------------------------------
def test_post_purchase_receipt_on_the_preferred_channel_then_marketing_held_out(shop):
    text = "{{ traits.first_name }}, thank you for order {{ event.order_id }}"
    shop.template("receipt", {"kind": "transactional", "variants": {
        "email": {"subject": "Your receipt", "html": f"<p>{text}</p>"}, "messenger": {"text": text}}})  # fmt: skip
    shop.template("review_request", {"kind": "marketing", "topic": "reviews", "variants": {
        "email": {"subject": "How was order {{ event.order_id }}?", "html": "<p>Tell us</p>"},
        "messenger": {"text": "How was it?"}}})  # fmt: skip
    shop.template("cross_sell", {"variants": {"email": {"subject": "You may also like", "html": "<p>…</p>"}}})
    psid = {"m0": "2400000000000010", "m1": "2400000000000011"}
    # they asked for Messenger: the preferred channel trait, and the page-scoped id Messenger gave the shop
    shop.track(*[web(u, type="identify", traits={"email": f"{u}@example.com", "first_name": u.upper(),
                                                  "preferred_channel": "messenger"},
                     context={"page": {"path": "/account"}, "userAgent": "Mozilla/5.0",
                              "externalIds": [{"type": "messenger_psid", "id": p, "collection": "users"}]})
                 for u, p in psid.items()])  # fmt: skip
    pid = {u: shop.profile(u)["id"] for u in psid}
    defn = definition("post_purchase")
    defn["nodes"]["arm"]["seed"] = seed_for({pid["m0"]: False, pid["m1"]: True})
    shop.publish(defn)
    shop.track(*[web(u, type="track", event="Order Completed", properties={"order_id": f"O-{u}", "revenue": 50})
                 for u in psid])  # fmt: skip

    # the receipt is transactional: everybody gets it, on Messenger, outside the 24-hour window under the tag
    receipts = shop.settled(2, template="receipt")
    assert sorted((m["profile_id"], m["channel"], m["status"]) for m in receipts) == sorted(
        (pid[u], "messenger", "sent") for u in psid
    )
    got = sorted((s["body"]["recipient"]["id"], s["body"]["message"]["text"], s["body"]["tag"])
                 for s in shop.meta.sent)  # fmt: skip
    assert got == sorted(
        (p, f"{u.upper()}, thank you for order O-{u}", "POST_PURCHASE_UPDATE") for u, p in psid.items()
    )
    assert shop.smtp.messages == []

    # the order is delivered: the treated get the review request (marketing may not go out under a Messenger tag,
    # and her window is closed, so `auto` falls back to email); the holdout gets nothing
    shop.track(*[web(u, type="track", event="Order Delivered", properties={"order_id": f"O-{u}"}) for u in psid])
    (review,) = shop.settled(1, template="review_request")
    assert (review["profile_id"], review["channel"], review["status"]) == (pid["m0"], "email", "sent"), review
    wait_until(lambda: len(shop.smtp.messages) == 1)
    mail = shop.smtp.messages[0]
    assert mail["to"] == ["m0@example.com"] and mail["msg"]["Subject"] == "How was order O-m0?"
    wait_until(lambda: shop.node("post_purchase", "later")["waiting_now"] == 1)  # the treated waits 14 days
    arms = shop.arms("post_purchase")
    assert (arms["treatment"]["entered"], arms["holdout"]["entered"], arms["holdout"]["holdout"]) == (1, 1, True)
    (inst,) = shop.instances(pid["m1"], "post_purchase")
    assert (inst["status"], inst["node"]) == ("active", "arm"), inst
    assert [m["template"] for m in shop.messages(profile_id=pid["m1"])] == ["receipt"]
    assert len(shop.meta.sent) == 2


# -- 6. pick-up in store cancelled ----------------------------------------------------------------------------------
def test_pickup_cancelled_notice_at_once_on_the_channel_ordered_from(shop):
    shop.template("pickup_cancelled", {"kind": "transactional", "variants": {
        "email": {"subject": "Order {{ event.order_id }}: pick-up cancelled", "html": "<p>Out of stock, sorry</p>"},
        "sms": {"text": "Order {{ event.order_id }} cancelled: out of stock"},
        "push": {"title": "Pick-up cancelled", "body": "Order {{ event.order_id }} is out of stock"}}})  # fmt: skip
    shop.template("delivery_offer", {"kind": "marketing", "topic": "offers", "variants": {
        "email": {"subject": "We can deliver it", "html": "<p>Free delivery</p>"},
        "push": {"title": "We can deliver it", "body": "Free delivery"}}})  # fmt: skip
    # two app customers and two web customers; in each pair one is held out of the offer
    shop.track(*[app(u, type="identify", traits={"email": f"{u}@example.com"}) for u in ("a0", "a1")],
               *[web(u, type="identify", traits={"email": f"{u}@example.com"}) for u in ("b0", "b1")])  # fmt: skip
    pid = {u: shop.profile(u)["id"] for u in ("a0", "a1", "b0", "b1")}
    held = {"a1", "b1"}
    defn = definition("pickup_cancelled")
    defn["nodes"]["arm"]["seed"] = seed_for({pid[u]: u in held for u in pid})
    shop.publish(defn)
    cancelled = {"fulfillment": "store_pickup", "reason": "out_of_stock"}
    # the order system tells Chorus from the server; a cancellation for another reason starts nothing
    shop.track(
        *[{"type": "track", "userId": u, "event": "Order Cancelled", "timestamp": now_iso(),
           "properties": {**cancelled, "order_id": f"P-{u}", "order_channel": "app" if u[0] == "a" else "web"}}
          for u in pid],
        {"type": "track", "userId": "b0", "event": "Order Cancelled", "timestamp": now_iso(),
         "properties": {**cancelled, "reason": "customer_request", "order_id": "P-x", "order_channel": "web"}},
        server=True,
    )  # fmt: skip

    notices = shop.settled(4, template="pickup_cancelled")
    assert sorted((m["profile_id"], m["channel"], m["status"]) for m in notices) == sorted(
        [(pid["a0"], "push", "sent"), (pid["a1"], "push", "sent"), (pid["b0"], "email", "sent"),
         (pid["b1"], "email", "sent")]
    )  # fmt: skip
    offers = shop.settled(2, template="delivery_offer")
    assert sorted((m["profile_id"], m["status"]) for m in offers) == sorted([(pid["a0"], "sent"), (pid["b0"], "sent")])
    # the app customer's offer went where she is active (the app: push), the web customer's by email
    assert {m["profile_id"]: m["channel"] for m in offers} == {pid["a0"]: "push", pid["b0"]: "email"}
    pushed = sorted((s["token"], s["notification"]["body"]) for s in shop.fcm.sent)
    assert pushed == [("tok-a0", "Free delivery"), ("tok-a0", "Order P-a0 is out of stock"),
                      ("tok-a1", "Order P-a1 is out of stock")]  # fmt: skip
    wait_until(lambda: len(shop.smtp.messages) == 3)
    mails = sorted((m["to"][0], m["msg"]["Subject"]) for m in shop.smtp.messages)
    assert mails == [("b0@example.com", "Order P-b0: pick-up cancelled"), ("b0@example.com", "We can deliver it"),
                     ("b1@example.com", "Order P-b1: pick-up cancelled")]  # fmt: skip

    stats = shop.stats("pickup_cancelled")
    assert stats["totals"]["entered"] == 4  # the other cancellation did not enter
    arms = shop.arms("pickup_cancelled")
    assert (arms["treatment"]["entered"], arms["holdout"]["entered"], arms["holdout"]["holdout"]) == (2, 2, True)
    branches = {b["key"]: b["count"] for b in shop.node("pickup_cancelled", "ordered_in_app")["passed_by_branch"]}
    assert branches == {"then": 2, "else": 2}


# -- 2. abandoned cart ----------------------------------------------------------------------------------------------
@pytest.mark.slow  # the shortest wait the grammar has is a minute
def test_abandoned_cart_reminder_on_auto_and_a_store_purchase_ends_it(shop, tmp_path, db_url):
    if not db_url.startswith("postgresql"):
        # a minute of real time: once, on the production store (the same journey runs on SQLite's runtime in
        # tests/journeys/test_runtime.py and test_simulate.py on a virtual clock)
        pytest.skip("one real-time run is enough: PostgreSQL")
    shop.template("cart_reminder", {"kind": "marketing", "topic": "cart", "variants": {
        "email": {"subject": "Your cart {{ event.cart_id }} is waiting", "html": "<p>Still thinking?</p>"},
        "push": {"title": "Your cart", "body": "Cart {{ event.cart_id }} is waiting"}}})  # fmt: skip
    shop.template("cart_reminder_2", {"kind": "marketing", "topic": "cart", "variants": {
        "email": {"subject": "Last call for your cart", "html": "<p>…</p>"}}})  # fmt: skip
    # a web visitor, an app user (both with an email), a web visitor who then buys in a store, one held out
    shop.track(web("c_web", type="identify", traits={"email": "c_web@example.com"}),
               app("c_app", type="identify", traits={"email": "c_app@example.com"}),
               web("c_pos", type="identify", traits={"email": "c_pos@example.com"}),
               web("c_hold", type="identify", traits={"email": "c_hold@example.com"}))  # fmt: skip
    users = ("c_web", "c_app", "c_pos", "c_hold")
    pid = {u: shop.profile(u)["id"] for u in users}
    defn = definition("abandoned_cart")
    defn["nodes"]["arm"]["seed"] = seed_for({pid[u]: u == "c_hold" for u in users})
    defn["nodes"]["wait_cart"]["timeout"]["after"] = "1m"
    shop.publish(defn)
    started = time.monotonic()
    shop.track(*[(app if u == "c_app" else web)(u, type="track", event="Product Added",
                                                properties={"cart_id": f"K-{u}", "sku": "LP-13"})
                 for u in users])  # fmt: skip
    wait_until(lambda: shop.node("abandoned_cart", "wait_cart")["waiting_now"] == 3, timeout=30)

    # the store's till export names her by email and the cart: the purchase ends her journey while she waits
    at = (datetime.now(UTC) + timedelta(seconds=2)).strftime("%Y-%m-%d %H:%M:%S")
    pos = f"receipt_no,timestamp,email,cart_id,revenue,currency\nR-1,{at},C_POS@example.com,K-c_pos,80.00,EUR\n"
    report = shop.ok(shop.http.post("/api/imports", files={"file": ("pos.csv", pos.encode(), "text/csv")},
                                    data={"source": "store"}))  # fmt: skip
    assert (report["imported"], report["failed"]) == (1, 0), report
    wait_until(lambda: [i["status"] for i in shop.instances(pid["c_pos"], "abandoned_cart")] == ["exited"])
    (inst,) = shop.instances(pid["c_pos"], "abandoned_cart")
    assert inst["exit_reason"] == "goal reached" and inst["converted_at"] is not None, inst
    assert time.monotonic() - started < 55, "the purchase must have ended the wait before its timeout"

    # after the minute: a reminder on `auto`, by where each was last active (web: email, for no browser subscribed
    # to push; the app: push to the device)
    reminders = shop.settled(2, timeout=90, template="cart_reminder")
    assert sorted((m["profile_id"], m["channel"], m["status"]) for m in reminders) == sorted(
        [(pid["c_web"], "email", "sent"), (pid["c_app"], "push", "sent")]
    )
    wait_until(lambda: len(shop.smtp.messages) == 1)
    (mail,) = shop.smtp.messages
    assert mail["to"] == ["c_web@example.com"] and mail["msg"]["Subject"] == "Your cart K-c_web is waiting"
    assert [(s["token"], s["notification"]["body"]) for s in shop.fcm.sent] == [
        ("tok-c_app", "Cart K-c_app is waiting")
    ]
    for u in ("c_pos", "c_hold"):
        assert shop.messages(profile_id=pid[u]) == [], u

    wait_until(lambda: shop.node("abandoned_cart", "wait_click")["waiting_now"] == 2)
    arms = shop.arms("abandoned_cart")
    assert (arms["treatment"]["entered"], arms["treatment"]["converted"]) == (3, 1)
    assert (arms["holdout"]["entered"], arms["holdout"]["converted"], arms["holdout"]["holdout"]) == (1, 0, True)
    wait_cart = shop.node("abandoned_cart", "wait_cart")
    assert (wait_cart["entered"], wait_cart["converted"], wait_cart["waiting_now"]) == (3, 1, 0)
    assert {b["key"]: b["count"] for b in wait_cart["passed_by_branch"]} == {"timeout": 2}
    (held,) = shop.instances(pid["c_hold"], "abandoned_cart")
    assert (held["status"], held["node"]) == ("active", "arm"), held


def test_a_reminder_waiting_out_quiet_hours_is_withdrawn_by_a_store_purchase(shop):
    """Scenario 2's promise "even while the reminder is waiting", when it waits in the outbox: quiet hours hold the
    email; the till's file says she bought; the reminder is withdrawn, never sent, and says why. Another shopper's
    reminder waits on, untouched (decision 0045)."""
    now = datetime.now(UTC)
    messaging = shop.ok(shop.http.get("/api/workspace"))["settings"]["messaging"]
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=2)).strftime("%H:%M"),
             "channels": ["email"]}  # fmt: skip
    shop.ok(shop.http.patch("/api/workspace/settings", json={"messaging": {**messaging, "timezone": "UTC",
                                                                           "quiet_hours": quiet}}))  # fmt: skip
    shop.template("cart_now", {"kind": "marketing", "topic": "cart", "variants": {
        "email": {"subject": "Cart {{ event.cart_id }}", "html": "<p>Still thinking?</p>"}}})  # fmt: skip
    shop.publish({"id": "cart_now", "name": "Cart, at once", "entry": {"event": {"event": "Product Added",
                  "key": "cart_id"}}, "goal": {"event": {"event": "Order Completed"}, "within": "7d"},
                  "exit_on_goal": True, "start": "remind", "nodes": {
                      "remind": {"type": "message", "template": "cart_now", "channel": ["email"], "kind": "marketing",
                                 "next": "done"}, "done": {"type": "exit"}}})  # fmt: skip
    shop.track(*[web(u, type="identify", traits={"email": f"{u}@example.com"}) for u in ("w_pos", "w_wait")])
    pid = {u: shop.profile(u)["id"] for u in ("w_pos", "w_wait")}
    shop.track(*[web(u, type="track", event="Product Added", properties={"cart_id": f"K-{u}"})
                 for u in ("w_pos", "w_wait")])  # fmt: skip
    queued = wait_until(lambda: len(got := shop.messages(template="cart_now")) == 2 and got, timeout=30)
    assert {m["status"] for m in queued} == {"queued"} and all("quiet hours" in m["reason"] for m in queued)

    at = (datetime.now(UTC) + timedelta(seconds=1)).strftime("%Y-%m-%d %H:%M:%S")
    pos = f"receipt_no,timestamp,email,cart_id,revenue,currency\nR-9,{at},w_pos@example.com,K-w_pos,80.00,EUR\n"
    report = shop.ok(shop.http.post("/api/imports", files={"file": ("pos.csv", pos.encode(), "text/csv")},
                                    data={"source": "store"}))  # fmt: skip
    assert (report["imported"], report["failed"]) == (1, 0), report
    (withdrawn,) = wait_until(lambda: shop.messages(template="cart_now", status="skipped"), timeout=30)
    assert withdrawn["profile_id"] == pid["w_pos"]
    assert withdrawn["reason"] == "withdrawn: journey cart_now: the person left it (goal reached) before it went out"
    (waiting,) = shop.messages(template="cart_now", status="queued")
    assert waiting["profile_id"] == pid["w_wait"] and shop.smtp.messages == []
