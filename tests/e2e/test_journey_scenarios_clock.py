"""The two seed journeys that wait for the wall clock, end to end: browse abandonment (09:00 local the next
morning, across a DST change and around midnight) and win-back (60 days without activity). Only public
interfaces: `chorus serve` as a subprocess whose wall clock the test moves with libfaketime (tests/e2e/fakeclock.py:
a test-only tool), the tracking API, the admin API, the Twilio and Meta audiences stand-ins. Events carry
timestamps on the moved clock. Each scenario has a holdout arm that receives nothing and is counted.

Browse abandonment runs on SQLite and on PostgreSQL (25-30 s each); win-back, whose 60 days and a week of clock
moves take 40-46 s, on PostgreSQL only (the production store; the same journey runs on SQLite's runtime on a
virtual clock in tests/journeys/test_simulate.py).

The time zone is the browser's (``context.timezone``, as analytics.js sends it): that is where Chorus learns a
profile's zone (docs/identity.md); a ``timezone`` trait is not read.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from tests.api.test_audiences import AUD
from tests.conftest import _ASGIThread, wait_until
from tests.e2e.fakeclock import FakeClock
from tests.e2e.test_journey_scenarios import SMS_FROM, Shop, definition, seed_for
from tests.standins.meta_audiences import MetaAudiencesStandIn

PARIS = ZoneInfo("Europe/Paris")  # clocks go forward on Sunday 29 March 2026 at 02:00 (CET -> CEST)
BROWSE_RULE = {"and": [
    {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                   "window": "7d", "times": {"gte": 3}}},
    {"not": {"or": [
        {"performed": {"event": "Product Added", "window": "7d"}},
        {"performed": {"event": "Order Completed", "window": "7d"}},
    ]}},
]}  # fmt: skip
LAPSED_RULE = {"channel_count": {"equals": 0, "window": "60d"}}  # no activity on any channel, online or offline
WORKER_ROUNDS = 1.0  # seconds of real time: many worker polls (0.05 s), for the "nothing happened yet" checks


@pytest.fixture
def ads():
    standin = MetaAudiencesStandIn("EAAB-ads-token")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


def clock_shop(clock: FakeClock, db_url, tmp_path, twilio, ads):
    """`chorus serve` on the fake clock with SMS on the Twilio stand-in and audiences on Meta's (both plain HTTP:
    a TLS certificate would not be valid on a clock moved months away)."""
    env = {"CHORUS_WORKER_POLL_SECONDS": "0.05", "CHORUS_TWILIO_TOKEN": twilio.auth_token,
           "CHORUS_META_ADS_TOKEN": "EAAB-ads-token"}  # fmt: skip
    sms = [{"type": "twilio", "name": "twilio", "account_sid": twilio.account_sid,
            "auth_token_env": "CHORUS_TWILIO_TOKEN", "from": SMS_FROM, "base_url": twilio.base_url}]  # fmt: skip
    meta = [{"type": "meta", "name": "meta", "access_token_env": "CHORUS_META_ADS_TOKEN", "base_url": ads.base_url,
             "retry_base_seconds": 0.01}]  # fmt: skip

    class _Ctx:
        def __enter__(self):
            self.srv = clock.serve(db_url, tmp_path, **env).__enter__()
            s = self.shop = Shop(self.srv.base_url, self.srv.keys, None, twilio, None, None)
            settings = {"messaging": {"providers": {"sms": sms}}, "audiences": {"providers": meta}}
            s.ok(s.http.patch("/api/workspace/settings", json=settings))
            return s

        def __exit__(self, *exc):
            self.shop.http.close()
            self.shop.tracking.close()
            self.srv.__exit__(*exc)

    return _Ctx()


def at(clock: FakeClock, user_id: str, shift: float = -1, tz: str | None = None, **more) -> dict:
    """A web event stamped on the server's clock, ``shift`` seconds from its now, with analytics.js' context: the
    browser's time zone (``context.timezone``, where Chorus learns the profile's zone) when ``tz`` is given."""
    context = {"page": {"path": "/"}, "userAgent": "Mozilla/5.0", **({"timezone": tz} if tz else {})}
    return {
        "userId": user_id,
        "anonymousId": f"browser-{user_id}",
        "messageId": uuid.uuid4().hex,
        "timestamp": (clock.now() + timedelta(seconds=shift)).isoformat(),
        "context": context,
        **more,
    }


def views(clock: FakeClock, user_id: str) -> list[dict]:
    return [at(clock, user_id, -30 + 10 * i, "Europe/Paris", type="track", event="Product Viewed",
               properties={"category": "laptops", "sku": f"LP-{i}"}) for i in range(3)]  # fmt: skip


def segment(shop: Shop, sid: str, rule: dict) -> None:
    shop.ok(shop.http.put(f"/api/segments/{sid}", json={"name": sid, "rule": rule}), 201)
    wait_until(lambda: shop.ok(shop.http.get(f"/api/segments/{sid}"))["status"] == "ready")


def members(shop: Shop, sid: str) -> set[str]:
    return {m["profile_id"] for m in shop.ok(shop.http.get(f"/api/segments/{sid}/members"))["members"]}


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# -- 3. browse abandonment ------------------------------------------------------------------------------------------
def test_browse_abandonment_offer_at_nine_local_next_morning_across_dst_and_midnight(db_url, tmp_path, twilio, ads):
    """In Paris the night clocks go forward (29 March 2026, 02:00 CET -> 03:00 CEST): Eva browses laptops at 23:30
    on Saturday, Max at 00:10 on Sunday, just after midnight. Both are put in the retargeting audience at once and
    both get the laptop offer on Sunday at 09:00 CEST (07:00 UTC): the next morning for Eva, the same morning for
    Max, and not at 09:00 CET (08:00 UTC) nor 09:00 UTC. At 08:59 local nothing has gone out; at 09:00:30 both
    have, and they leave the audience. Hana, held out, browses too: nothing, no audience, counted in her arm."""
    eve = datetime(2026, 3, 28, 20, 0, tzinfo=PARIS)
    clock = FakeClock(tmp_path, eve)
    with clock_shop(clock, db_url, tmp_path, twilio, ads) as shop:
        segment(shop, "browse_abandoners", BROWSE_RULE)
        shop.ok(shop.http.post("/api/audiences", json={"name": "retargeting_laptops", "provider": "meta",
                                                       "destination": AUD, "identifiers": ["email"]}), 201)  # fmt: skip
        shop.template("category_offer", {"kind": "marketing", "topic": "offers", "variants": {
            "sms": {"text": "Still thinking about {{ data.category }}? 10% off today"}}})  # fmt: skip
        people = {"eva": "+33611111101", "max": "+33611111102", "hana": "+33611111103"}
        shop.track(*[at(clock, u, tz="Europe/Paris", type="identify",
                        traits={"email": f"{u}@example.com", "phone": phone})
                     for u, phone in people.items()])  # fmt: skip
        pid = {u: shop.profile(u)["id"] for u in people}
        defn = definition("browse_abandonment")
        defn["nodes"]["arm"]["seed"] = seed_for({pid[u]: u == "hana" for u in people})
        shop.publish(defn)

        # Saturday 23:30 CET: Eva and Hana view laptops three times
        clock.set(datetime(2026, 3, 28, 23, 30, tzinfo=PARIS))
        shop.track(*views(clock, "eva"), *views(clock, "hana"))
        wait_until(lambda: shop.node("browse_abandonment", "morning")["waiting_now"] == 1, timeout=30)
        wait_until(lambda: ads.emails(AUD) == {sha("eva@example.com")}, timeout=30)  # retargeted at once
        # Sunday 00:10 CET, after midnight: Max
        clock.set(datetime(2026, 3, 29, 0, 10, tzinfo=PARIS))
        shop.track(*views(clock, "max"))
        wait_until(lambda: shop.node("browse_abandonment", "morning")["waiting_now"] == 2, timeout=30)
        wait_until(lambda: ads.emails(AUD) == {sha("eva@example.com"), sha("max@example.com")}, timeout=30)
        assert members(shop, "browse_abandoners") == set(pid.values())

        # 09:00 CET would be 08:00 UTC, 09:00 UTC later still: at 08:59 CEST (06:59 UTC) nothing may have gone out
        assert datetime(2026, 3, 29, 8, 59, tzinfo=PARIS) == datetime(2026, 3, 29, 6, 59, tzinfo=UTC)  # CEST
        clock.set(datetime(2026, 3, 29, 8, 59, tzinfo=PARIS))
        time.sleep(WORKER_ROUNDS)
        assert shop.messages(template="category_offer") == [] and twilio.sent == []
        assert shop.node("browse_abandonment", "morning")["waiting_now"] == 2

        clock.set(datetime(2026, 3, 29, 9, 0, 30, tzinfo=PARIS))
        offers = shop.settled(2, template="category_offer")
        assert sorted((m["profile_id"], m["channel"], m["status"]) for m in offers) == sorted(
            (pid[u], "sms", "sent") for u in ("eva", "max")
        )
        assert sorted((s["To"], s["Body"]) for s in twilio.sent) == sorted(
            (people[u], "Still thinking about laptops? 10% off today") for u in ("eva", "max")
        )
        # after the offer, out of the retargeting audience
        wait_until(lambda: ads.emails(AUD) == set(), timeout=30)
        assert [r["method"] for r in ads.requests].count("DELETE") >= 1

        # the holdout: nothing sent, never in the audience, counted; she waits out the goal window at the split
        assert shop.messages(profile_id=pid["hana"]) == []
        assert all(sha("hana@example.com") not in str(r["payload"]) for r in ads.requests)
        arms = shop.arms("browse_abandonment")
        assert (arms["treatment"]["entered"], arms["holdout"]["entered"], arms["holdout"]["holdout"]) == (2, 1, True)
        (held,) = shop.instances(pid["hana"], "browse_abandonment")
        assert (held["status"], held["node"]) == ("active", "arm"), held
        for u in ("eva", "max"):
            (inst,) = shop.instances(pid[u], "browse_abandonment")
            assert inst["status"] in ("exited", "tracking") and inst["node"] != "morning", inst


# -- 5. win-back ----------------------------------------------------------------------------------------------------
def test_winback_after_60_days_without_activity_stops_when_they_return(db_url, tmp_path, twilio, ads):
    """(PostgreSQL only: see the module's docstring.)
    Three customers are active on the web shop on 5 January 2026, then nothing. Exactly 60 days after each
    one's last activity she enters `lapsed_60d` (a timer of the segment engine: no event causes it) and the
    treated get the win-back offer; a minute before, nobody is lapsed. Bo comes back three days later (a page
    view): he leaves the segment, his instance exits and he gets no last chance. Ava, still away, gets the last
    chance a week after the offer. Hugo, held out, gets nothing and is counted."""
    if not db_url.startswith("postgresql"):
        pytest.skip("40+ s of clock moves: once, on the production store (SQLite: tests/journeys/test_simulate.py)")
    t0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    clock = FakeClock(tmp_path, t0)
    with clock_shop(clock, db_url, tmp_path, twilio, ads) as shop:
        segment(shop, "lapsed_60d", LAPSED_RULE)
        shop.template("winback_offer", {"kind": "marketing", "topic": "offers", "variants": {
            "sms": {"text": "We miss you: 20% off your next order"}}})  # fmt: skip
        shop.template("winback_last_chance", {"kind": "marketing", "topic": "offers", "variants": {
            "sms": {"text": "Last chance: 20% off ends tonight"}}})  # fmt: skip
        people = {"ava": "+33622222201", "bo": "+33622222202", "hugo": "+33622222203"}
        shop.track(*[at(clock, u, type="identify", traits={"email": f"{u}@example.com", "phone": phone})
                     for u, phone in people.items()])  # fmt: skip
        pid = {u: shop.profile(u)["id"] for u in people}
        last = {}
        for u in people:  # their last activity: a product page, each at a known instant
            view = at(clock, u, -5, type="page", name="Product", properties={"path": "/p/LP-1"})
            shop.track(view)
            last[u] = datetime.fromisoformat(view["timestamp"])
        defn = definition("winback")
        defn["nodes"]["arm"]["seed"] = seed_for({pid[u]: u == "hugo" for u in people})
        shop.publish(defn)
        time.sleep(WORKER_ROUNDS)
        assert members(shop, "lapsed_60d") == set()

        lapse = max(last.values()) + timedelta(days=60)
        clock.set(lapse - timedelta(minutes=1))
        time.sleep(WORKER_ROUNDS)
        assert members(shop, "lapsed_60d") == set() and shop.messages() == []

        # two seconds before: the clock runs on into the instant, and the segment's timer flips them as it passes
        clock.set(lapse - timedelta(seconds=2))
        wait_until(lambda: members(shop, "lapsed_60d") == set(pid.values()), timeout=30)
        # entered by the segment's timer as the instant passed: the change is stamped with the time of the worker's
        # pass that found the timer due (a few polls on a busy 2-core machine), never before the instant
        for u in people:
            history = shop.ok(shop.http.get(f"/api/profiles/{pid[u]}/segments"))["history"]
            (entered,) = [h for h in history if h["segment_id"] == "lapsed_60d"]
            assert entered["change"] == "entered" and entered["cause"] == "timer", entered
            late = datetime.fromisoformat(entered["at"].replace("Z", "+00:00")) - (last[u] + timedelta(days=60))
            assert timedelta(0) <= late < timedelta(seconds=5), (u, entered, last[u])
        offers = shop.settled(2, template="winback_offer")
        assert sorted((m["profile_id"], m["channel"], m["status"]) for m in offers) == sorted(
            (pid[u], "sms", "sent") for u in ("ava", "bo")
        )

        # Bo comes back on the web shop three days later: out of the segment, his journey ends
        clock.set(lapse + timedelta(days=3))
        shop.track(at(clock, "bo", type="page", name="Home", properties={"path": "/"}))
        wait_until(lambda: [i["status"] for i in shop.instances(pid["bo"], "winback")] == ["exited"], timeout=30)
        (inst,) = shop.instances(pid["bo"], "winback")
        assert inst["exit_reason"] == "exit[0] met", inst
        assert members(shop, "lapsed_60d") == {pid["ava"], pid["hugo"]}

        # a week after the offer: the last chance for Ava only
        clock.set(lapse + timedelta(days=7, minutes=2))
        (chance,) = shop.settled(1, template="winback_last_chance")
        assert (chance["profile_id"], chance["status"]) == (pid["ava"], "sent"), chance
        time.sleep(WORKER_ROUNDS)
        assert [m["profile_id"] for m in shop.messages(template="winback_last_chance")] == [pid["ava"]]
        assert sorted((s["To"], s["Body"]) for s in twilio.sent) == sorted(
            [(people["ava"], "We miss you: 20% off your next order"),
             (people["bo"], "We miss you: 20% off your next order"),
             (people["ava"], "Last chance: 20% off ends tonight")]
        )  # fmt: skip

        # the holdout: nothing sent, counted
        assert shop.messages(profile_id=pid["hugo"]) == []
        arms = shop.arms("winback")
        assert (arms["treatment"]["entered"], arms["holdout"]["entered"], arms["holdout"]["holdout"]) == (2, 1, True)
