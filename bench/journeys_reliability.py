"""Journeys under SIGKILL (issue 13, Reliability): N people through the abandoned-cart journey on PostgreSQL while
``chorus worker`` processes are SIGKILLed at random moments and restarted; afterwards every person must have exactly
the messages the simulator predicts over the same stored events, none twice, none lost.

How time is driven: the journey grammar's shortest duration is a minute (``1m``), so the run uses the seed journey
(``tests/journeys/definitions/abandoned_cart.yaml``) with its waits shortened to minutes, on a **fast clock**: one
virtual clock for everybody, ``base + (wall - wall0) * speed``, read by this script (event timestamps, arrival
times) and by every worker. A worker is the real ``chorus worker`` command (``chorus.cli.main``) started by a tiny
launcher that only replaces the runtime's and the segment engine's ``now`` with that clock (as the tests' virtual
clock does); it is derived from the wall clock, so a worker restarted after a kill reads the same time.

People (deterministic from ``--seed``): each adds a cart (``Product Added``) at a random instant of the entry span;
40 % buy it in a store 15 s later (within the 2-minute wait: no reminder), 20 % buy it 3 min later (after the first
reminder, before the second: one message), 40 % never (two messages); the journey's 10 % holdout gets none and waits
out the goal window. Events are stored when their time comes, through the tracking API's store path
(``collect.ingest.store``), so workers see them arrive as they would live. The margins (105 s between a purchase
within the wait and the timeout, 60 s between the first reminder and a late purchase) are how late, in virtual time,
an input may be handled without changing what happens: at the default speed (10) 10 s and 6 s of wall time. Since
the runtime applies a person's inputs in their time order across the feed and the timers (the consumer fires her
overdue timers first; the timer task leaves her to the consumer while she has changes pending), a lag beyond them
no longer changes what she gets; before that fix it showed as messages missing or extra (``docs/benchmarks.md``).

The run ends when every event is resolved, the journeys consumer has nothing pending, no timer is left and no input
is held; then the stored events are backtested (``journeys.simulate`` over ``backtest_subjects``, as
``tests/journeys/test_simulate.py`` does) and the outbox's messages compared with the prediction per person and
instance: none missing, none extra, none twice.

    python bench/journeys_reliability.py --people 2000 --workers 2 --kills 10

``tests/journeys/test_reliability.py`` runs :func:`run` at a small size.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_JOURNEY = ROOT / "tests" / "journeys" / "definitions" / "abandoned_cart.yaml"
CLOCK_ENV = "CHORUS_BENCH_FAST_CLOCK"  # "wall0 base_epoch speed": the shared fast clock of a run

# The launcher of one worker: the real CLI, with the journeys' and segments' clock made the run's fast clock.
LAUNCHER = f"""
import os, sys, time
from datetime import UTC, datetime
wall0, base, speed = (float(x) for x in os.environ["{CLOCK_ENV}"].split())
def fast():
    return datetime.fromtimestamp(base + (time.time() - wall0) * speed, UTC)
from chorus.journeys import runtime
from chorus.segments import engine
runtime.now = fast
engine.now = fast
from chorus.cli import main
sys.argv = ["chorus", *sys.argv[1:]]
main()
"""

WAIT_CART = timedelta(minutes=2)  # the journey's first timeout (the seed's 1h)
WITHIN = timedelta(seconds=15)  # a purchase within the wait
LATE = timedelta(minutes=3)  # a purchase after the first reminder, before the second
SECOND = timedelta(minutes=4)  # wait_click's timeout (the seed's 1d): the second reminder at 2m + 4m
GOAL = timedelta(minutes=7)  # the goal window (the seed's 7d): everybody stays until it closes


class Clock:
    """The run's fast clock: virtual time = base + wall time elapsed since wall0, times ``speed``."""

    def __init__(self, speed: float, base: datetime | None = None, wall0: float | None = None):
        self.speed = speed
        self.wall0 = time.time() if wall0 is None else wall0
        self.base = base or datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.base + timedelta(seconds=(time.time() - self.wall0) * self.speed)

    def env(self) -> str:
        return f"{self.wall0!r} {self.base.timestamp()!r} {self.speed!r}"

    def wall_of(self, at: datetime) -> float:
        """The wall time (``time.time()``) at which the virtual clock reads ``at``."""
        return self.wall0 + (at - self.base).total_seconds() / self.speed


def journey() -> dict:
    """The seed abandoned-cart journey, its durations shortened to minutes (the grammar has no seconds)."""
    from chorus.journeys import definition as d

    raw = d.to_json(d.parse_yaml(SEED_JOURNEY.read_text()))
    raw["id"] = "abandoned_cart"
    raw["goal"]["within"] = f"{GOAL.seconds // 60}m"
    raw["nodes"]["wait_cart"]["timeout"]["after"] = f"{WAIT_CART.seconds // 60}m"
    raw["nodes"]["wait_click"]["timeout"]["after"] = f"{SECOND.seconds // 60}m"
    return raw


def plan(people: int, start: datetime, span: timedelta, seed: int) -> list[tuple[datetime, dict]]:
    """Every person's events, in time order: a cart added in the span, then maybe its order (in a store)."""
    rng = random.Random(seed)
    out = []
    for k in range(people):
        user, cart = f"r{k}", f"c{k}"
        at = start + timedelta(seconds=rng.uniform(0, span.total_seconds()))
        out.append((at, _track(user, "Product Added", at, "web", cart, rng)))
        fate = rng.random()
        if fate < 0.4:
            out.append((at + WITHIN, _track(user, "Order Completed", at + WITHIN, "store", cart, rng)))
        elif fate < 0.6:
            out.append((at + LATE, _track(user, "Order Completed", at + LATE, "store", cart, rng)))
    out.sort(key=lambda x: x[0])
    return out


def _track(user: str, name: str, at: datetime, channel: str, cart: str, rng: random.Random) -> dict:
    return {"type": "track", "userId": user, "event": name, "timestamp": at.isoformat(),
            "messageId": f"{user}-{name}-{rng.getrandbits(48):012x}", "properties": {"cart_id": cart},
            "context": {"channel": channel}}  # fmt: skip


@dataclass
class Result:
    people: int
    events: int
    kills: int
    restarts: int
    predicted: int  # messages the simulator predicts
    sent: int  # messages in the outbox
    missing: list = field(default_factory=list)  # (profile, instance, channel) predicted, not in the outbox
    extra: list = field(default_factory=list)  # in the outbox, not predicted (a message twice is one of these)
    parked: int = 0  # journeys feed changes parked after repeated failures
    seconds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.extra and not self.parked and self.sent == self.predicted


class Workers:
    """``n`` ``chorus worker`` subprocesses on the fast clock; a killed one is restarted in its slot."""

    def __init__(self, url: str, n: int, clock: Clock, logdir: Path):
        self.url, self.clock, self.logdir = url, clock, logdir
        self.env = {**os.environ, CLOCK_ENV: clock.env(), "CHORUS_DATABASE_URL": url}
        src = str(ROOT / "src")
        self.env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])
        self.procs: list[subprocess.Popen] = []
        self.started = 0
        for _ in range(n):
            self.procs.append(self._start())

    def _start(self) -> subprocess.Popen:
        self.started += 1
        log = open(self.logdir / f"worker-{self.started}.log", "wb")  # noqa: SIM115 - the child holds it
        return subprocess.Popen([sys.executable, "-c", LAUNCHER, "worker", "--db", self.url], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)  # fmt: skip

    def kill_one(self, rng: random.Random) -> int:
        """SIGKILL a random worker (mid-transaction or not: whatever it is doing) and start another in its slot."""
        i = rng.randrange(len(self.procs))
        p = self.procs[i]
        p.send_signal(signal.SIGKILL)
        p.wait()
        self.procs[i] = self._start()
        return p.pid

    def check(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.pid} exited by itself ({p.returncode}); see {self.logdir}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def outstanding(conn, ws: str) -> dict[str, int]:
    """The journeys' work not done yet for ``ws``: events not resolved, journeys changes pending, timers, held
    inputs (each a count; all zero when the run is over)."""
    import sqlalchemy as sa

    from chorus.journeys.runtime import CONSUMER
    from chorus.profiles.feed import MAX_ATTEMPTS
    from chorus.store.tables import events, feed_pending, journey_held, journey_timers

    def count(q):
        return conn.execute(sa.select(sa.func.count()).select_from(q.subquery())).scalar_one()

    fp = feed_pending.c
    return {
        "unresolved": count(sa.select(events.c.seq).where(events.c.workspace_id == ws, events.c.profile_id.is_(None))),
        "feed": count(sa.select(fp.seq).where(fp.workspace_id == ws, fp.consumer == CONSUMER,
                                              fp.attempts < MAX_ATTEMPTS)),
        "parked": count(sa.select(fp.seq).where(fp.workspace_id == ws, fp.consumer == CONSUMER,
                                                fp.attempts >= MAX_ATTEMPTS)),
        "timers": count(sa.select(journey_timers.c.key).where(journey_timers.c.workspace_id == ws)),
        "held": count(sa.select(journey_held.c.profile_id).where(journey_held.c.workspace_id == ws)),
    }  # fmt: skip


def run(url: str, people: int, workers: int = 2, kills: int = 3, seed: int = 42, speed: float = 10.0,
        rate: float = 5.0, logdir: Path | None = None, timeout: float = 600.0,
        say=lambda msg: None) -> Result:  # fmt: skip
    """The whole run on the (migrated) store at ``url``: see the module docstring. ``rate``: carts added per wall
    second, on average (the arrival rate must stay below what the workers handle, or their lag grows past the
    margins and the run measures the backlog, not the kills)."""
    import tempfile

    import sqlalchemy as sa

    from chorus import registry, workspaces
    from chorus.collect import ingest
    from chorus.collect.messages import Event, normalise
    from chorus.journeys import definition as d
    from chorus.journeys import manage
    from chorus.journeys import simulate as sm
    from chorus.journeys.cli import backtest_subjects
    from chorus.journeys.runtime import CONSUMER
    from chorus.messaging import outbox
    from chorus.profiles import feed
    from chorus.store.db import create_engine
    from chorus.store.tables import events, messages

    rng = random.Random(seed)
    logdir = logdir or Path(tempfile.mkdtemp(prefix="chorus-reliability-"))
    engine = create_engine(url)
    registry.installed()
    feed.subscribe(engine, CONSUMER)  # the journeys receive what is stored from now on, before any worker starts
    ws = workspaces.create(engine, "rel-" + uuid.uuid4().hex[:6])["id"]
    for name in ("cart_reminder", "cart_reminder_2"):  # in-app only: the inbox needs no provider
        outbox.save_template(engine, ws, name, {"kind": "marketing",
                                                "variants": {"in_app": {"title": name, "body": "b"}}})  # fmt: skip
    raw = journey()
    clock = Clock(speed)
    start = clock() + timedelta(seconds=5 * speed)  # the first cart 5 s of wall time after the workers start
    span = timedelta(seconds=people / rate * speed)
    with engine.begin() as conn:
        manage.publish(conn, ws, raw, clock())
    todo = plan(people, start, span, seed)
    last = todo[-1][0]
    expected_end = clock.wall_of(last + SECOND + WAIT_CART + GOAL)  # about when the last goal window closes
    wall = {"start": time.time()}
    pool = Workers(url, workers, clock, logdir)
    kill_at = sorted(rng.uniform(time.time() + 1, expected_end) for _ in range(kills))
    killed = 0
    try:
        with engine.begin() as conn:
            src = workspaces.internal_source(conn, ws, "server", "bench-reliability")
        i = 0
        while True:
            now = clock()
            due = []
            while i < len(todo) and todo[i][0] <= now:
                due.append(todo[i][1])
                i += 1
            if due:  # what the tracking API would store now: normalised, then ingest.store, one transaction
                evs = [normalise(m, received_at=now, source_kind=src.kind) for m in due]
                assert all(isinstance(e, Event) for e in evs), evs
                with engine.begin() as conn:
                    ingest.store(conn, src, evs, [], now)
            while kill_at and kill_at[0] <= time.time():
                kill_at.pop(0)
                pid = pool.kill_one(rng)
                killed += 1
                say(f"SIGKILL worker {pid} ({killed}/{kills}); restarted")
            pool.check()
            if i == len(todo) and not kill_at:
                with engine.connect() as conn:
                    left = outstanding(conn, ws)
                if not any(v for k, v in left.items() if k != "parked"):
                    break
                if time.time() - wall["start"] > timeout:
                    raise RuntimeError(f"work left after {timeout:.0f} s: {left}; logs in {logdir}")
                time.sleep(0.5)
            else:
                time.sleep(0.05)
        wall["done"] = time.time()
    finally:
        pool.stop()
    end = clock()

    with engine.connect() as conn:
        left = outstanding(conn, ws)
        sent = conn.execute(sa.select(messages.c.profile_id, messages.c.idempotency_key, messages.c.channel)
                            .where(messages.c.workspace_id == ws)).all()  # fmt: skip
        # how far behind the journeys were: a cart's arrival to her Journey Entered (stored at the transition's
        # clock), in wall seconds; the margins above are what it may reach without changing any outcome
        e, entered = events.alias("e"), events.alias("entered")
        lags = sorted(
            (row.done - row.got).total_seconds() / speed
            for row in conn.execute(sa.select(e.c.received_at.label("got"),
                                              sa.func.min(entered.c.received_at).label("done"))
                                    .join(entered, entered.c.profile_id == e.c.profile_id)
                                    .where(e.c.workspace_id == ws, e.c.event == "Product Added",
                                           entered.c.event == "Journey Entered")
                                    .group_by(e.c.seq, e.c.received_at))
        )  # fmt: skip
        wk = workspaces.find(conn, ws)
        since = start - timedelta(minutes=1)
        subjects = backtest_subjects(conn, wk, since, end)
        templates = outbox.template_channels(conn, ws)
    report = sm.simulate(d.parse(raw), subjects, templates=templates, since=since, until=end + timedelta(hours=1),
                         trace=True)  # fmt: skip
    wall["compared"] = time.time()
    engine.dispose()

    predicted = Counter((who, iid, ch) for who, iid, _node, ch in report.sent)
    live = Counter((pid, key.rsplit(":", 1)[0], ch) for pid, key, ch in sent)
    return Result(
        people=people, events=len(todo), kills=killed, restarts=pool.started - workers,
        predicted=sum(predicted.values()), sent=len(sent),
        missing=sorted((predicted - live).elements()), extra=sorted((live - predicted).elements()),
        parked=left["parked"],
        seconds={"run": round(wall["done"] - wall["start"], 1), "compare": round(wall["compared"] - wall["done"], 1),
                 "virtual_minutes": round((end - clock.base).total_seconds() / 60, 1),
                 "entry_lag_p50": round(lags[len(lags) // 2], 2) if lags else None,
                 "entry_lag_max": round(lags[-1], 2) if lags else None},
    )  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--people", type=int, default=10_000)
    ap.add_argument("--db", help="a PostgreSQL URL (default: a fresh database on $CHORUS_BENCH_PG's server)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--speed", type=float, default=10.0, help="virtual seconds per wall second (default 10)")
    ap.add_argument("--rate", type=float, default=5.0, help="carts added per wall second (default 5)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="give up after this many wall seconds")
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import FreshDB, db_upgrade, log, make_tmpdir

    tmp = make_tmpdir()
    db = None
    url = args.db
    if url is None:
        db = FreshDB("postgresql", "reliability", tmp)
        url = db.url
        db_upgrade(url)
    elif not url.startswith("postgresql"):
        ap.error("--db: the run needs PostgreSQL (several workers claim rows with FOR UPDATE SKIP LOCKED)")
    try:
        log(
            f"{args.people} people, {args.workers} workers, {args.kills} kills, seed {args.seed}, "
            f"speed {args.speed}, rate {args.rate}/s"
        )
        res = run(url, args.people, args.workers, args.kills, args.seed, args.speed, args.rate, logdir=tmp,
                  timeout=args.timeout, say=log)  # fmt: skip
    finally:
        if db is not None:
            db.drop()
    print(f"people {res.people}, events {res.events}, workers {args.workers}, SIGKILLs {res.kills} "
          f"(restarts {res.restarts})")  # fmt: skip
    print(f"messages predicted {res.predicted}, in the outbox {res.sent}; missing {len(res.missing)}, "
          f"extra or twice {len(res.extra)}, parked changes {res.parked}")  # fmt: skip
    print(f"wall seconds: run {res.seconds['run']}, backtest and compare {res.seconds['compare']}; "
          f"virtual minutes {res.seconds['virtual_minutes']}; entry lag p50 {res.seconds['entry_lag_p50']} s, "
          f"max {res.seconds['entry_lag_max']} s")  # fmt: skip
    for what, rows in (("missing", res.missing), ("extra", res.extra)):
        for row in rows[:10]:
            print(f"  {what}: {row}")
    print("RESULT:", "OK" if res.ok else "FAILED")
    sys.exit(0 if res.ok else 1)


if __name__ == "__main__":
    main()
