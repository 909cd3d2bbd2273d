"""The demo run: the real Chorus (HTTP app, worker, channel adapters) driven on a virtual clock, in this process.

Setup (the clock stands an hour before the period): a store migrated, a workspace with its keys (as `chorus
workspace create` makes it), the SMTP server and the HTTP app started, providers, templates, segments, the
retargeting audience, journeys and the broadcast installed through the admin API.

Then the clock advances one step at a time. At each step: the step's actions are posted (tracking API, imports),
the callbacks due are made (open pixels, tracked clicks, one-click unsubscribes, feedback-loop reports of spam
complaints, visits from a message's link), the worker runs passes until it reports no work (resolution, the change
feed, segments, journeys and their timers, schedules, delivery: exactly what `chorus serve`'s worker runs), and what
the customers received (the SMTP server's mail, the sinks' files) is answered per the model: callbacks and
purchases for later steps.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from chorus import gctune, workspaces
from chorus.analytics import lake
from chorus.demo import events, inbox, install, model
from chorus.demo.brand import BRAND
from chorus.demo.client import Chorus, DemoError
from chorus.demo.params import DEFAULTS
from chorus.demo.servers import AppServer, ASGIServer, MailServer
from chorus.demo.twilio import TwilioStandIn
from chorus.demo.world import World
from chorus.store.db import create_engine, upgrade
from chorus.timeutil import iso, use_clock
from chorus.worker import Worker

SINK_CHANNELS = ("push", "messenger")  # SMS goes through Twilio's stand-in
TWILIO_TOKEN_ENV = "CHORUS_DEMO_TWILIO_TOKEN"
MAX_PASSES = 200  # worker passes per step before the demo says the worker does not settle


@dataclass(frozen=True)
class Options:
    customers: int
    days: int
    seed: int
    database_url: str
    outbox: str  # absolute directory of the file sinks
    lake: str  # absolute directory of the event lake the analytics read
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
    complaints: list = field(default_factory=list)  # spam complaints (feedback-loop reports): message, user, time
    passes: int = 0
    lake: dict = field(default_factory=dict)
    worker_seconds: float = 0.0
    report: dict = field(default_factory=dict)
    workspaces: dict = field(default_factory=dict)  # name -> keys, one per workspace of the layout
    apis: dict = field(default_factory=dict, repr=False)  # name -> its admin client (open during ``report``)
    wasted: list = field(default_factory=list)  # world.Tally.wasted: messages about what she had already done
    purchases: Counter = field(default_factory=Counter)  # world.Tally's: what the customers bought, and its value
    revenue: Decimal = Decimal(0)
    plan_digest: str = ""  # of the planned actions, in order (posted, or not made for want of stock)
    stock: dict = field(default_factory=dict)  # stock.Stock.summary(): the stores' own record


Progress = Callable[[str, int, int], None]  # (phase, done, total)


class Layout:
    """How the brand uses Chorus: its workspaces, how each is configured, and which of them each action reaches.
    This one is the omnichannel brand of `chorus demo`: one workspace, ``demo``, that gets everything and runs the
    standard definitions. ``compare.Silos`` is the multichannel brand (a workspace per channel team)."""

    names: tuple[str, ...] = ("demo",)
    sms: str = "demo"  # the workspace whose number the customers' STOP replies are sent to

    def targets(self, a: model.Action) -> tuple[str, ...]:
        """The workspaces an action's events or import rows are sent to."""
        return self.names

    def setup(self, apis: dict[str, Chorus], smtp_port: int, sms: dict, defs: install.Definitions) -> None:
        setup(apis["demo"], smtp_port, sms, defs)


def run(opts: Options, progress: Progress | None = None, report: Callable[[Chorus, Outcome], dict] | None = None,
        layout: Layout | None = None) -> Outcome:  # fmt: skip
    progress = progress or (lambda *_: None)
    layout = layout or Layout()
    defs = install.load(opts.start)
    plans = list(model.customers(opts.seed, opts.customers, opts.start, opts.days, BRAND, opts.params))
    clock = VirtualClock(opts.start - timedelta(hours=1))
    saved_env = {k: os.environ.get(k) for k in ("CHORUS_PUBLIC_URL", "CHORUS_OUTBOX_DIR", TWILIO_TOKEN_ENV)}
    twilio = TwilioStandIn()
    with use_clock(clock):
        upgrade(opts.database_url)
        engine = create_engine(opts.database_url)
        # what `chorus workspace create NAME` does
        made = {name: workspaces.create(engine, name) for name in layout.names}
        keys = made[layout.names[0]]
        try:
            with (MailServer() as smtp, ASGIServer(twilio.app, "the Twilio stand-in") as sms,
                  AppServer(engine, opts.database_url, opts.lake) as app):
                # the worker builds links and file sinks from the process environment, as `chorus serve` sets it
                os.environ["CHORUS_PUBLIC_URL"] = app.base_url
                os.environ["CHORUS_OUTBOX_DIR"] = opts.outbox
                os.environ[TWILIO_TOKEN_ENV] = twilio.auth_token  # the provider names its secret by variable
                apis = {name: Chorus(app.base_url, k) for name, k in made.items()}
                api = apis[layout.names[0]]
                worker = Worker(engine, batch=2000, poll=0.05)
                try:
                    out = Outcome(keys, app.base_url, keys["id"], workspaces=made, apis=apis)
                    layout.setup(apis, smtp.port, twilio.provider(sms.base_url, TWILIO_TOKEN_ENV), defs)
                    gctune.tune()  # as `chorus serve` does once started (decision 0041; CHORUS_GC=default opts out)
                    _Loop(opts, clock, layout, apis, worker, smtp, twilio, plans, out, progress).run()
                    out.events_sent = sum(a.sent_events for a in apis.values())
                    progress("exporting the event lake", 0, 1)
                    # what `chorus lake export` does, at the end of the period: every event settled (the worker is
                    # idle), so nothing is held back for a later export
                    out.lake = lake.export(engine, opts.lake, settle=timedelta(0)).as_dict()
                    if report is not None:
                        out.report = report(api, out)
                    return out
                finally:
                    worker.stop()
                    for a in apis.values():
                        a.close()
        finally:
            engine.dispose()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


CHANNELS = ("email", "sms", *SINK_CHANNELS)


def setup(api: Chorus, smtp_port: int, sms: dict, defs: install.Definitions, channels: tuple[str, ...] = CHANNELS,
          caps: dict | None = None) -> None:  # fmt: skip
    """Configure the workspace as an operator would, through the admin API: providers for ``channels`` only,
    frequency ``caps`` if given (the messaging setting's format), the definitions."""
    providers = {
        "email": [{"type": "smtp", "name": "demo-smtp", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                   "from": f"{BRAND.name} <news@{BRAND.domain}>"}],
        "sms": [sms],
        **{ch: [{"type": "file", "dir": ch}] for ch in SINK_CHANNELS},
    }  # fmt: skip
    providers = {ch: p for ch, p in providers.items() if ch in channels}
    if "messenger" in providers:
        # as a real Messenger provider for receipts would be: tagged updates may leave the 24-hour window
        providers["messenger"][0]["tag"] = "POST_PURCHASE_UPDATE"
    # the brand's zone for quiet hours and local send times of the profiles that have none of their own (those the
    # tills and the CRM made: no client reported a zone for them), as an operator sets it
    messaging = {"providers": providers, "timezone": BRAND.timezone, **({"caps": caps} if caps else {})}
    api.patch("/api/workspace/settings", {"default_region": BRAND.region, "messaging": messaging})
    for name, doc in defs.templates.items():
        api.put(f"/api/templates/{name}", doc)
    for sid, seg in defs.segments.items():
        api.put(f"/api/segments/{sid}", {"name": seg["name"], "rule": seg["rule"]})
    for aud in defs.audiences:
        api.post("/api/audiences", aud)
    for doc in defs.journeys.values():
        api.post("/api/journeys", doc)
    if defs.broadcast:
        api.post("/api/broadcasts", defs.broadcast)


class _Loop:
    """The I/O of the run: what the world does goes to Chorus over HTTP; what Chorus sends comes back to it."""

    def __init__(self, opts: Options, clock: VirtualClock, layout: Layout, apis: dict[str, Chorus], worker: Worker,
                 smtp: MailServer, twilio: TwilioStandIn, plans: list[model.Plan], out: Outcome, progress: Progress
                 ):  # fmt: skip
        self.opts, self.clock, self.worker, self.smtp = opts, clock, worker, smtp
        self.layout, self.apis, self.api = layout, apis, apis[layout.names[0]]
        self.twilio = twilio
        self.out, self.progress = out, progress
        inbound = f"{self.api.base_url}/webhooks/twilio/{out.workspaces[layout.sms]['id']}/inbound"
        self.world = World(opts.seed, opts.start, opts.params, plans, twilio, inbound, opts.days)
        self.sinks = inbox.SinkReader(opts.outbox, SINK_CHANNELS)
        self.meta: dict[str, dict] = {}  # message id -> its row in GET /api/messages

    def run(self) -> None:
        opts = self.opts
        t, end = opts.start, opts.start + timedelta(days=opts.days)
        steps = math.ceil((end - t) / opts.step)  # the last step may be short: every action of the period is posted
        self.clock.now = t
        self.drain()  # segments computed, schedules set, before the first customer acts
        for n in range(steps):
            nxt = min(t + opts.step, end)
            self.act(nxt)
            self.drain()
            self.answer(nxt)
            t = nxt
            self.progress("simulating", n + 1, steps)
        tally = self.world.tally
        self.out.actions, self.out.deliveries, self.out.responses = tally.actions, tally.deliveries, tally.responses
        # an opt-out whose request would have come after the period never reached Chorus: not reported as made.
        # In time order (then by customer): the messages of one step reach the customers in the order the servers
        # got them, which a run with the same seed need not repeat.
        def made(rows: list[dict]) -> list[dict]:
            return sorted((r for r in rows if "at" in r),
                          key=lambda r: (r["at"], str(r.get("user_id") or r.get("phone") or r.get("address"))))

        self.out.unsubscribes, self.out.stops = made(tally.unsubscribes), made(tally.stops)
        self.out.complaints = made(tally.complaints)
        self.out.wasted = sorted(tally.wasted, key=lambda w: tuple(str(w.get(k)) for k in
                                                                   ("user_id", "template", "channel", "why")))
        self.out.purchases, self.out.revenue = tally.purchases, tally.revenue
        self.out.plan_digest = tally.plan.hexdigest()
        self.out.stock = self.world.stock.summary(self.world.cancelled)

    def act(self, until: datetime) -> None:
        """The step's actions and responses to messages, in one time order, each at its own instant on the
        virtual clock: a click is recorded when it is made, before the purchase it leads to (review: the callbacks
        made at the step's end were dated after the purchases they caused)."""
        for cb in self.world.due_callbacks(until):
            self.clock.now = max(self.clock.now, cb.at)
            self.post_actions(cb.at)  # what the customers did before it
            self.make_callback(cb)
        self.clock.now = until
        self.post_actions(until)

    # -- the customers act ----------------------------------------------------------------------------------------
    def post_actions(self, until: datetime) -> None:
        # per workspace: what its web shop and app (client), its back end (server) and its imports send
        sends: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for c, a, mid in self.world.due_actions(until):
            route = events.route(a)
            wire = events.import_row(c, a, BRAND) if route not in (events.CLIENT, events.SERVER) else None
            for name in self.layout.targets(a):
                if wire is None:
                    sends[name][route].extend(events.messages(c, a, BRAND, mid))
                else:
                    sends[name][route].append(wire)
        for name, routes in sends.items():
            api = self.apis[name]
            if routes.get(events.SERVER):
                api.track(routes.pop(events.SERVER), server=True)
            if routes.get(events.CLIENT):
                api.track(routes.pop(events.CLIENT))
            for route, rows in routes.items():  # the tills' (call centre's, mailing house's) export of the hour
                source, mapping = events.IMPORT_FILES[route]
                api.import_rows(source, rows, f"{route}-{until:%Y%m%d%H%M}", mapping)

    def make_callback(self, cb) -> None:
        if cb.kind == "twilio":
            status = self.api.provider_callback(cb.url, cb.form or {}, self.twilio.signed(cb.url, cb.form or {}))
        elif cb.kind == "unsubscribe":
            status = self.api.one_click_unsubscribe(cb.url)
        elif cb.kind == "complaint":
            status, answer = self.api.feedback_report(cb.body or b"")
            # the report must be read as about its message (a repeat, complained false, is harmless)
            if status < 400 and answer.get("message_id") != (cb.record or {}).get("message_id"):
                raise DemoError(f"the feedback webhook answered {answer} to a complaint about "
                                f"{(cb.record or {}).get('message_id')}")  # fmt: skip
        else:
            status = self.api.follow(cb.url)
        if status >= 400:
            raise DemoError(f"the {cb.kind} callback answered {status}: {cb.url[:160] or (cb.record or {})}")
        if cb.record is not None:
            cb.record["at"] = iso(self.clock.now)

    # -- the worker ---------------------------------------------------------------------------------------------
    def drain(self) -> None:
        started = time.perf_counter()
        # a bound against a worker that never settles, not on the work: a broadcast to many people takes a pass
        # per 500 messages delivered
        limit = max(MAX_PASSES, self.opts.customers // 100)
        for _ in range(limit):
            self.out.passes += 1
            if self.worker.run_once() == 0:
                break
        else:
            raise DemoError(f"the worker still had work after {limit} passes at {iso(self.clock.now)}")
        self.out.worker_seconds += time.perf_counter() - started

    # -- what they received ----------------------------------------------------------------------------------------
    def answer(self, now: datetime) -> None:
        got = [d for m in self.smtp.take() for d in inbox.from_mail(m, self.api.base_url)] + self.sinks.take()
        got += [inbox.from_text(t) for t in self.twilio.take()]
        if not got:
            return
        for api in self.apis.values():
            for row in api.pages("/api/messages", "messages", since=iso(now)):
                self.meta[row["id"]] = row
        for d in got:
            meta = self.meta.pop(d.message_id, None) or self._message(d.message_id)
            c = self.world.customer_at(d.address)
            if c is None:
                raise DemoError(f"message {d.message_id} went to {d.address}, who is none of the demo's customers")
            self.world.receive(c, d, meta, now)

    def _message(self, message_id: str) -> dict:
        """A message the listing since the step did not give, from the workspace that has it."""
        for api in self.apis.values():
            r = api.admin.get(f"/api/messages/{message_id}")
            if r.status_code == 200:
                return r.json()
        raise DemoError(f"no workspace knows message {message_id}")
