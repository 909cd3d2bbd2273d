"""The demo run: the real Chorus (HTTP app, worker, channel adapters) driven on a virtual clock, in this process.

Setup (the clock stands an hour before the period): a store migrated, a workspace with its keys (as `chorus
workspace create` makes it), the SMTP server and the HTTP app started, providers, templates, segments, the
retargeting audience, journeys and the broadcast installed through the admin API.

Then the clock advances one step at a time. At each step: the step's actions are posted (tracking API, imports),
the callbacks due are made (open pixels, tracked clicks, one-click unsubscribes, visits from a message's link),
the worker runs passes until it reports no work (resolution, the change feed, segments, journeys and their timers,
schedules, delivery: exactly what `chorus serve`'s worker runs), and what the customers received (the SMTP
server's mail, the sinks' files) is answered per the model: callbacks and purchases for later steps.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from chorus import workspaces
from chorus.demo import events, inbox, install, model
from chorus.demo.brand import BRAND
from chorus.demo.client import Chorus, DemoError
from chorus.demo.params import DEFAULTS
from chorus.demo.servers import AppServer, ASGIServer, MailServer
from chorus.demo.twilio import TwilioStandIn
from chorus.store.db import create_engine, upgrade
from chorus.timeutil import iso, use_clock
from chorus.worker import Worker

SINK_CHANNELS = ("push", "messenger")  # SMS goes through Twilio's stand-in
TWILIO_TOKEN_ENV = "CHORUS_DEMO_TWILIO_TOKEN"
# messages about what the person just did: the model's relevance lift applies
RELEVANT = {"cart_reminder", "cart_reminder_2", "browse_offer", "pickup_cancelled", "delivery_offer", "receipt",
            "welcome_code"}  # fmt: skip
MAX_PASSES = 200  # worker passes per step before the demo says the worker does not settle


@dataclass(frozen=True)
class Options:
    customers: int
    days: int
    seed: int
    database_url: str
    outbox: str  # absolute directory of the file sinks
    start: datetime
    step: timedelta = timedelta(hours=1)
    params: dict = field(default_factory=lambda: dict(DEFAULTS))


class VirtualClock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Outcome:
    keys: dict
    base_url: str
    workspace_id: str
    actions: Counter = field(default_factory=Counter)
    events_sent: int = 0
    deliveries: Counter = field(default_factory=Counter)
    responses: Counter = field(default_factory=Counter)
    unsubscribes: list = field(default_factory=list)  # email one-click unsubscribes: message, user, time
    stops: list = field(default_factory=list)  # SMS STOP replies: message, phone, time
    passes: int = 0
    worker_seconds: float = 0.0
    report: dict = field(default_factory=dict)


Progress = Callable[[str, int, int], None]  # (phase, done, total)


def run(opts: Options, progress: Progress | None = None, report: Callable[[Chorus, Outcome], dict] | None = None
        ) -> Outcome:  # fmt: skip
    progress = progress or (lambda *_: None)
    defs = install.load(opts.start)
    plans = list(model.customers(opts.seed, opts.customers, opts.start, opts.days, BRAND, opts.params))
    clock = VirtualClock(opts.start - timedelta(hours=1))
    saved_env = {k: os.environ.get(k) for k in ("CHORUS_PUBLIC_URL", "CHORUS_OUTBOX_DIR", TWILIO_TOKEN_ENV)}
    twilio = TwilioStandIn()
    with use_clock(clock):
        upgrade(opts.database_url)
        engine = create_engine(opts.database_url)
        keys = workspaces.create(engine, "demo")  # what `chorus workspace create demo` does
        try:
            with (MailServer() as smtp, ASGIServer(twilio.app, "the Twilio stand-in") as sms,
                  AppServer(engine, opts.database_url) as app):
                # the worker builds links and file sinks from the process environment, as `chorus serve` sets it
                os.environ["CHORUS_PUBLIC_URL"] = app.base_url
                os.environ["CHORUS_OUTBOX_DIR"] = opts.outbox
                os.environ[TWILIO_TOKEN_ENV] = twilio.auth_token  # the provider names its secret by variable
                api = Chorus(app.base_url, keys)
                worker = Worker(engine, batch=2000, poll=0.05)
                try:
                    out = Outcome(keys, app.base_url, keys["id"])
                    setup(api, smtp.port, twilio.provider(sms.base_url, TWILIO_TOKEN_ENV), defs)
                    _Loop(opts, clock, api, worker, smtp, twilio, plans, out, progress).run()
                    out.events_sent = api.sent_events
                    if report is not None:
                        out.report = report(api, out)
                    return out
                finally:
                    worker.stop()
                    api.close()
        finally:
            engine.dispose()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def setup(api: Chorus, smtp_port: int, sms: dict, defs: install.Definitions) -> None:
    """Configure the workspace as an operator would, through the admin API."""
    providers = {
        "email": [{"type": "smtp", "name": "demo-smtp", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                   "from": f"{BRAND.name} <news@{BRAND.domain}>"}],
        "sms": [sms],
        **{ch: [{"type": "file", "dir": ch}] for ch in SINK_CHANNELS},
    }  # fmt: skip
    # as a real Messenger provider for receipts would be: tagged updates may leave the 24-hour window
    providers["messenger"][0]["tag"] = "POST_PURCHASE_UPDATE"
    api.patch("/api/workspace/settings", {"default_region": BRAND.region, "messaging": {"providers": providers}})
    for name, doc in defs.templates.items():
        api.put(f"/api/templates/{name}", doc)
    for sid, seg in defs.segments.items():
        api.put(f"/api/segments/{sid}", {"name": seg["name"], "rule": seg["rule"]})
    for aud in defs.audiences:
        api.post("/api/audiences", aud)
    for doc in defs.journeys.values():
        api.post("/api/journeys", doc)
    api.post("/api/broadcasts", defs.broadcast)


class _Loop:
    def __init__(self, opts: Options, clock: VirtualClock, api: Chorus, worker: Worker, smtp: MailServer,
                 twilio: TwilioStandIn, plans: list[model.Plan], out: Outcome, progress: Progress):  # fmt: skip
        self.opts, self.clock, self.api, self.worker, self.smtp = opts, clock, api, worker, smtp
        self.twilio = twilio
        self.out, self.progress = out, progress
        self.customers = [p.customer for p in plans]
        self.by_address: dict[str, int] = {}
        for c in self.customers:
            for addr in (c.email, c.phone, c.messenger_psid, events.push_token(c)):
                if addr:
                    self.by_address[addr] = c.index
        self.seq = itertools.count()
        # pending actions: (at, order, customer, action, message id)
        self.queue: list = []
        for p in plans:
            for i, a in enumerate(p.actions):
                self.queue.append((a.at, next(self.seq), a, f"demo-{opts.seed}-{a.customer}-{i}"))
        heapq.heapify(self.queue)
        self.callbacks: list = []  # (at, order, kind, payload)
        self.sinks = inbox.SinkReader(opts.outbox, SINK_CHANNELS)
        self.meta: dict[str, dict] = {}  # message id -> its row in GET /api/messages
        self.last_active: dict[int, datetime] = {}
        self.open_cart: dict[int, tuple[str, tuple[str, ...]]] = {}
        self.received = Counter()  # (customer, template) -> messages so far: the stable key of a response
        self.extra = itertools.count()
        self.signed_up: set[int] = set()

    def run(self) -> None:
        opts = self.opts
        t, end = opts.start, opts.start + timedelta(days=opts.days)
        steps = int((end - t) / opts.step + 0.5)
        self.clock.now = t
        self.drain()  # segments computed, schedules set, before the first customer acts
        for n in range(steps):
            nxt = t + opts.step
            self.clock.now = nxt
            self.post_actions(nxt)
            self.make_callbacks(nxt)
            self.drain()
            self.answer(nxt)
            t = nxt
            self.progress("simulating", n + 1, steps)

    # -- the customers act ----------------------------------------------------------------------------------------
    def post_actions(self, until: datetime) -> None:
        client, server = [], []
        imports: dict[str, list[dict]] = defaultdict(list)
        while self.queue and self.queue[0][0] < until:
            _at, _o, a, mid = heapq.heappop(self.queue)
            c = self.customers[a.customer]
            self.out.actions[a.kind] += 1
            self.note(c, a)
            route = events.route(a)
            if route == events.CLIENT:
                client.extend(events.messages(c, a, BRAND, mid))
            elif route == events.SERVER:
                server.extend(events.messages(c, a, BRAND, mid))
            else:
                imports[route].append(events.import_row(c, a, BRAND))
        if server:
            self.api.track(server, server=True)
        if client:
            self.api.track(client)
        for source, rows in imports.items():  # the tills' (call centre's, mailing house's) export of the hour
            self.api.import_rows(source, rows, f"{source}-{until:%Y%m%d%H%M}")

    def note(self, c: model.Customer, a: model.Action) -> None:
        if a.kind in ("catalog_sent", "pickup_cancelled"):
            return  # the brand acted, not she
        self.last_active[c.index] = a.at
        if a.kind in ("known", "signup"):
            self.signed_up.add(c.index)
        if a.kind == "add":
            cart = self.open_cart.get(c.index)
            skus = (cart[1] if cart and cart[0] == a.cart_id else ()) + a.skus
            self.open_cart[c.index] = (a.cart_id, skus)
        elif a.kind in ("order", "store_purchase"):
            cart = self.open_cart.get(c.index)
            if cart and (a.cart_id == cart[0] or a.kind == "store_purchase"):
                self.open_cart.pop(c.index, None)

    def later(self, a: model.Action) -> None:
        heapq.heappush(self.queue, (a.at, next(self.seq), a, f"demo-{self.opts.seed}-{a.customer}-x{next(self.extra)}"))

    # -- the worker ---------------------------------------------------------------------------------------------
    def drain(self) -> None:
        started = time.perf_counter()
        for _ in range(MAX_PASSES):
            self.out.passes += 1
            if self.worker.run_once() == 0:
                break
        else:
            raise DemoError(f"the worker still had work after {MAX_PASSES} passes at {iso(self.clock.now)}")
        self.out.worker_seconds += time.perf_counter() - started

    # -- what they received, and what they do about it -------------------------------------------------------------
    def answer(self, now: datetime) -> None:
        got = [d for m in self.smtp.take() for d in inbox.from_mail(m, self.api.base_url)] + self.sinks.take()
        got += [inbox.from_text(t) for t in self.twilio.take()]
        if not got:
            return
        for row in self.api.pages("/api/messages", "messages", since=iso(now)):
            self.meta[row["id"]] = row
        for d in got:
            meta = self.meta.pop(d.message_id, None) or self.api.get(f"/api/messages/{d.message_id}")
            cust = self.by_address.get(d.address)
            if cust is None:
                raise DemoError(f"message {d.message_id} went to {d.address}, who is none of the demo's customers")
            self.respond(self.customers[cust], d, meta, now)

    def respond(self, c: model.Customer, d: inbox.Delivery, meta: dict, now: datetime) -> None:
        template = meta.get("template") or "?"
        self.out.deliveries[d.channel] += 1
        self.received[(c.index, template)] += 1
        key = f"{c.index}:{template}:{self.received[(c.index, template)]}"
        age = now - self.last_active.get(c.index, self.opts.start)
        r = model.respond(self.opts.seed, key, d.channel, template in RELEVANT, age, meta.get("kind") == "marketing",
                          self.opts.params)
        at = now + r.delay
        if d.channel == "email":
            if r.opened and d.open_url:
                self.callback(at, "open", d.open_url)
            if r.clicked and d.click_urls:
                self.callback(at + timedelta(minutes=1), "click", d.click_urls[0])
            if r.unsubscribed and d.unsubscribe_url:
                done = {"message_id": d.message_id, "user_id": c.user_id, "topic": meta.get("topic")}
                self.out.unsubscribes.append(done)
                self.callback(at, "unsubscribe", (d.unsubscribe_url, done))
        if d.text is not None:  # the carrier delivered it: Twilio reports so to the message's callback URL
            self.callback(now + timedelta(seconds=30), "twilio", (d.text.status_callback,
                                                                   self.twilio.status(d.text, "delivered"), None))
            if r.unsubscribed:  # she answers STOP: Twilio forwards the reply to the number's inbound webhook
                url = f"{self.api.base_url}/webhooks/twilio/{self.out.workspace_id}/inbound"
                done = {"message_id": d.message_id, "phone": d.address}
                self.out.stops.append(done)
                self.callback(at, "twilio", (url, self.twilio.inbound(d.address, "STOP"), done))
        if d.channel != "email" and r.clicked:  # its link opened the site or the app: a visit with its UTM tags
            channel = "app" if d.channel == "push" and c.app_device else "web"
            sku = self._sku(c, f"{key}:visit")
            self.later(model.Action(at, c.index, "view", channel, signed_in=c.index in self.signed_up, skus=(sku,),
                                    via=(d.channel, d.message_id)))  # fmt: skip
        for what in ("opened", "clicked", "unsubscribed"):
            if getattr(r, what):
                self.out.responses[f"{d.channel}:{what}"] += 1
        if r.purchase:
            self.out.responses[f"purchase:{r.purchase}"] += 1
            self.purchase(c, at + timedelta(minutes=10), r.purchase, key, (d.channel, d.message_id))

    def purchase(self, c: model.Customer, at: datetime, where: str, key: str, via: tuple[str, str]) -> None:
        cart = self.open_cart.get(c.index)
        skus = cart[1] if cart else (self._sku(c, key),)
        n = next(self.extra)
        if where == "store":
            self.later(model.Action(at, c.index, "store_purchase", "store", skus=skus, order_id=f"rcpt-{c.index}-m{n}",
                                    store=c.home_store))  # fmt: skip
        elif c.index in self.signed_up:  # an online order needs her account
            channel = "app" if c.app_device else "web"
            self.later(model.Action(at, c.index, "order", channel, signed_in=True, skus=skus,
                                    cart_id=cart[0] if cart else None, order_id=f"ord-{c.index}-m{n}",
                                    fulfillment="delivery", via=via))  # fmt: skip

    def _sku(self, c: model.Customer, key: str) -> str:
        rng = random.Random(f"{self.opts.seed}:sku:{key}")
        return rng.choice(BRAND.in_category(c.favourite)).sku

    def callback(self, at: datetime, kind: str, what) -> None:
        heapq.heappush(self.callbacks, (at, next(self.seq), kind, what))

    def make_callbacks(self, until: datetime) -> None:
        while self.callbacks and self.callbacks[0][0] < until:
            _at, _o, kind, what = heapq.heappop(self.callbacks)
            done = None  # the record of an opt-out, to which the instant Chorus received it is added
            if kind == "twilio":
                url, form, done = what
                status = self.api.provider_callback(url, form, self.twilio.signed(url, form))
            elif kind == "unsubscribe":
                url, done = what
                status = self.api.one_click_unsubscribe(url)
            else:
                status = self.api.follow(what)
            if status >= 400:
                raise DemoError(f"the {kind} callback answered {status}: {str(what)[:160]}")
            if done is not None:
                done["at"] = iso(self.clock.now)
