#!/usr/bin/env python
"""The journey runtime's figures (issue 13, Performance), each beside a baseline measured in the same run.

Four subcommands, on fresh databases:

* ``transitions``: ``--people`` people (default 2,000) each send one ``Product Added`` (stored as the tracking API
  stores them, ``ingest.store``, then resolved by the resolver: not timed), then the ``journeys`` feed consumer
  (``feed.consume(engine, "journeys", runtime.Consumer())``, 500 changes a claim) runs a no-delay journey (entry,
  an in_app message, exit) for everybody: on SQLite in this process (what the embedded worker runs), on
  PostgreSQL in 1 and in 2 worker processes (each consuming until it finds nothing). **Raw**: the same state
  changes as bare SQL on the same engine and data: the rows the consumer inserted (instances, records, messages
  and their status, the timeline events and their feed rows...) and deleted (the feed rows it handled) are read
  back, undone, then written again by hand, 500 people a transaction: their profile rows locked in one statement,
  then one ``INSERT`` per table (all 500 people's rows: SQLAlchemy's multi-row insert) and one ``DELETE``. Prints
  transitions/s (people, each one entry, one message, one exit) and the ratio. ``--history N`` first gives each
  person N older events (inserted as resolved rows, not timed, not in the feed: her history, not inputs), spread
  over the past year, 90 % ``Page Viewed`` and 10 % ``Order Completed``, and the journey an exit rule on the last
  7 days of ``Order Completed`` (``HISTORY_EXIT``): a claim then has something of her history to read, which a
  restricted read (decision 0043) keeps to a week of orders. The history rows are left out of the raw side.
* ``latency``: ``chorus serve`` (HTTP on loopback, embedded worker; with ``--workers N``, ``serve --no-worker`` and
  N ``chorus worker`` processes) on PostgreSQL; a steady ``--rate`` (500) events
  per second for ``--seconds`` (20), each a new person's ``Product Added`` to ``/v1/batch``; per event, from its
  request's ``200`` to its message row's ``created_at`` (the runtime's clock when the transition began, before its
  commit: a slight underestimate). Baseline: the same stream with no journey published, from the ``200`` to the
  resolution's feed change (``profile_changes.at``), the part of the path that is not the journey's.
* ``timers``: ``--waiting`` people (default 100,000) waiting on a 1-day delay, made in bulk (one real person is run
  through the journey; her profile, instance and timer rows are cloned with new ids, ``COPY`` on PostgreSQL), then a
  worker process (``runtime.due``, the timer task) polls ``--passes`` times while nothing is due: its RSS idle
  (after imports and a connection: the baseline), after the polls, then after a slice (``--fire``, 2,000) is made
  due and fired.
* ``broadcast``: a broadcast "now" (``manage.publish_broadcast``) to a segment of ``--profiles`` members (20,000;
  profiles and memberships made in bulk), run by the schedule task (``schedule.tick``) until every message is
  queued. Baseline: the same message rows, read back, deleted, and inserted again by bare ``INSERT``s of 500 rows
  a transaction. Prints profiles/s and the time 1,000,000 would take at that rate.

    python bench/journeys.py transitions [--people 2000] [--engines sqlite,postgresql] [--history 200]
    python bench/journeys.py latency [--rate 500 --seconds 20] [--workers 2]
    python bench/journeys.py timers [--waiting 100000 --engine postgresql]
    python bench/journeys.py broadcast [--profiles 20000 --engine postgresql]
    python bench/journeys.py ... --profile DIR     # also a cProfile of the timed chorus part, top functions printed

Figures go to stdout; the JSON of each run to ``bench/results/journeys-<sub>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import multiprocessing as mp
import pstats
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    ChorusServer,
    FreshDB,
    _status_kb,
    log,
    make_tmpdir,
    ro_connect,
    write_json,
)

TEMPLATE = {"kind": "marketing", "variants": {"in_app": {"title": "Still thinking of it?", "body": "see you soon"}}}
NUDGE = {  # the no-delay journey: entry, message, exit
    "id": "nudge", "name": "No-delay nudge", "entry": {"event": {"event": "Product Added"}}, "reentry": "after_exit",
    "start": "send",
    "nodes": {"send": {"type": "message", "template": "nudge", "channel": ["in_app"], "kind": "marketing",
                       "next": "done"},
              "done": {"type": "exit"}},
}  # fmt: skip
# with --history: reads a week of orders at every input, and never holds (everybody gets her message)
HISTORY_EXIT = [{"rule": {"performed": {"event": "Order Completed", "window": "7d", "times": {"gte": 100}}}}]
WAITER = {  # a 1-day delay before the message: people wait on a timer row
    **NUDGE, "id": "waiter", "name": "One day later", "start": "wait",
    "nodes": {"wait": {"type": "delay", "for": "1d", "next": "send"}, **NUDGE["nodes"]},
}  # fmt: skip


# -- setup ------------------------------------------------------------------------------------------------------------
def chorus_ready():
    """Every package registered (effects, the journeys consumer's interest), as a worker would have it."""
    from chorus import registry as reg

    reg.installed()


def workspace(engine, journey: dict | None = NUDGE) -> str:
    from chorus import workspaces
    from chorus.journeys import manage
    from chorus.messaging import links, outbox

    ws = workspaces.create(engine, "bench")["id"]
    outbox.save_template(engine, ws, "nudge", TEMPLATE)
    # The link-signing key and the internal sources of the journeys' and the messages' timeline events are made on
    # their first use, inside the first transition's transaction: in a fresh database two workers' first claims
    # would both insert them, and the second would wait for the first's whole claim (as after any fresh install).
    # Made here, as an installation that has sent anything has them.
    with engine.begin() as conn:
        links.for_store(conn)
        for name in ("chorus-journeys", "chorus-messaging"):
            workspaces.internal_source(conn, ws, "internal", name)
    if journey is not None:
        with engine.begin() as conn:
            manage.publish(conn, ws, journey, datetime.now(UTC))
    return ws


def product_added(uid: str, at: datetime) -> dict:
    return {"type": "track", "event": "Product Added", "userId": uid, "messageId": uuid.uuid4().hex,
            "timestamp": at.isoformat(), "properties": {"product_id": "p1", "price": 42},
            "context": {"channel": "web"}}  # fmt: skip


def store_and_resolve(engine, ws: str, msgs: list[dict]) -> None:
    """As the tracking API stores events (``ingest.store``), then the resolver (both untimed)."""
    from chorus import workspaces
    from chorus.collect import ingest
    from chorus.collect.messages import normalise
    from chorus.identity.resolver import Resolver

    at = datetime.now(UTC)
    with engine.begin() as conn:
        src = workspaces.internal_source(conn, ws, "server", "bench")
        for i in range(0, len(msgs), 2000):
            ingest.store(conn, src, [normalise(m, received_at=at, source_kind="server") for m in msgs[i : i + 2000]],
                         [], at)  # fmt: skip
    Resolver(engine).drain(2000)


def count(engine, sql: str) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


class Profiler:
    """An optional cProfile of the timed chorus part; prints the top functions by cumulative time to stderr."""

    def __init__(self, out: str | None, name: str):
        self.out, self.name = out, name
        self.prof = cProfile.Profile() if out else None

    def __enter__(self):
        if self.prof:
            self.prof.enable()
        return self

    def __exit__(self, *exc):
        if not self.prof:
            return
        self.prof.disable()
        Path(self.out).mkdir(parents=True, exist_ok=True)
        self.prof.dump_stats(str(Path(self.out) / f"{self.name}.prof"))
        s = io.StringIO()
        pstats.Stats(self.prof, stream=s).sort_stats("cumulative").print_stats(40)
        log(f"profile {self.name}:\n{s.getvalue()}")


# -- transitions ------------------------------------------------------------------------------------------------------
def _consume_all(engine) -> int:
    from chorus.journeys import runtime
    from chorus.profiles import feed

    consumer, done = runtime.Consumer(), 0
    while True:
        n = feed.consume(engine, "journeys", consumer, 500)
        if not n:
            return done
        done += n


def _worker(url: str, ready, go, out, prof: str | None = None) -> None:
    """One worker process: connect, say ready, wait for the start, consume until nothing is left."""
    chorus_ready()
    from chorus.store.db import create_engine

    engine = create_engine(url)
    count(engine, "SELECT 1")
    ready.set()
    go.wait()
    with Profiler(prof, f"worker-{url.rsplit('_', 1)[-1]}-{__import__('os').getpid()}"):
        t0 = time.perf_counter()
        n = _consume_all(engine)
        took = time.perf_counter() - t0
    out.put((n, took))
    engine.dispose()


def _snapshot(engine, history: tuple[int, int] | None = None) -> dict[str, dict]:
    """Every row of every table, by primary key (the events of ``history``, a range of seq, left out)."""
    from chorus.store.tables import metadata

    out = {}
    with engine.connect() as conn:
        for t in metadata.sorted_tables:
            pk = [c.name for c in t.primary_key.columns]
            q = t.select()
            if t.name == "events" and history is not None:
                q = q.where(~t.c.seq.between(*history))
            out[t.name] = {tuple(r._mapping[c] for c in pk): dict(r._mapping) for r in conn.execute(q)}
    return out


def add_history(engine, ws: str, per_person: int, now: datetime) -> tuple[int, int]:
    """``per_person`` older events for every person of ``ws``, as resolved rows cloned from her Product Added (not
    through the feed: a history, not inputs), spread over the past year; their seq range. Statistics refreshed, as
    a database that grew so would have them."""
    import random

    import sqlalchemy as sa

    from chorus.store.tables import events
    from chorus.timeutil import iso

    rnd = random.Random(7)
    with engine.begin() as conn:
        people = conn.execute(sa.select(events).where(events.c.workspace_id == ws,
                                                      events.c.event == "Product Added")).all()  # fmt: skip
        lo = conn.execute(sa.select(sa.func.max(events.c.seq))).scalar() + 1
        rows = []
        for row in people:
            base = dict(row._mapping)
            del base["seq"]
            for _ in range(per_person):
                at = now - timedelta(days=1 + rnd.random() * 364)
                name = "Order Completed" if rnd.random() < 0.1 else "Page Viewed"
                mid = uuid.uuid4().hex
                payload = {**base["payload"], "event": name, "messageId": mid, "timestamp": iso(at),
                           "properties": {"total": rnd.randint(5, 200)}}  # fmt: skip
                rows.append({**base, "message_id": mid, "event": name, "timestamp": at, "payload": payload})
                if len(rows) >= 5000:
                    conn.execute(events.insert(), rows)
                    rows = []
        if rows:
            conn.execute(events.insert(), rows)
        hi = conn.execute(sa.select(sa.func.max(events.c.seq))).scalar()
    with engine.connect() as conn:
        conn.execute(sa.text("ANALYZE"))
        conn.commit()
    return lo, hi


def _tables():
    from chorus.store.tables import metadata

    return {t.name: t for t in metadata.sorted_tables}


def _owner(table: str, row: dict, msg_owner: dict) -> str | None:
    if table == "message_status":
        return msg_owner.get(row["message_id"])
    return row.get("profile_id")


def transitions_run(engine_name: str, workers: int, people: int, tmp: Path, prof: str | None,
                    history: int = 0) -> dict:  # fmt: skip
    import sqlalchemy as sa

    from chorus.store.db import create_engine, upgrade

    with FreshDB(engine_name, f"jt{workers}", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        from chorus.profiles import feed

        feed.subscribe(engine, "journeys")
        ws = workspace(engine, {**NUDGE, "exit": HISTORY_EXIT} if history else NUDGE)
        at = datetime.now(UTC)
        store_and_resolve(engine, ws, [product_added(f"u{i}", at) for i in range(people)])
        seqs = add_history(engine, ws, history, at) if history else None
        if seqs:
            log(f"{engine_name}: {seqs[1] - seqs[0] + 1} history events added")
        pending = count(engine, "SELECT count(*) FROM feed_pending WHERE consumer = 'journeys'")
        before = _snapshot(engine, seqs)
        log(f"{engine_name} x{workers}: {people} people stored and resolved, {pending} feed rows; consuming")
        # chorus
        if workers == 0:
            with Profiler(prof, f"transitions-{engine_name}"):
                t0 = time.perf_counter()
                handled = _consume_all(engine)
                took = time.perf_counter() - t0
        else:
            ctx = mp.get_context("spawn")
            go, out = ctx.Event(), ctx.Queue()
            readies = [ctx.Event() for _ in range(workers)]
            procs = [ctx.Process(target=_worker, args=(db.url, r, go, out, prof)) for r in readies]
            for p in procs:
                p.start()
            for r in readies:
                r.wait(120)
            t0 = time.perf_counter()
            go.set()
            results = [out.get(timeout=600) for _ in procs]
            took = time.perf_counter() - t0
            for p in procs:
                p.join(30)
            handled = sum(n for n, _ in results)
        left = count(engine, "SELECT count(*) FROM feed_pending WHERE consumer = 'journeys'")
        sent = count(engine, "SELECT count(*) FROM messages WHERE journey_id = 'nudge'")
        assert left == 0 and sent == people, (left, sent, people)
        after = _snapshot(engine, seqs)
        tables = _tables()
        added = {t: [r for k, r in after[t].items() if k not in before[t]] for t in after}
        removed = {t: [r for k, r in before[t].items() if k not in after[t]] for t in before}
        changed = {t: sum(1 for k, r in after[t].items() if k in before[t] and before[t][k] != r) for t in after}
        rows = {t: len(v) for t, v in added.items() if v}
        gone = {t: len(v) for t, v in removed.items() if v}
        updated = {t: n for t, n in changed.items() if n}
        # undo the consumer's work, then do its inserts and deletes again by hand
        with engine.begin() as conn:
            for t, rs in added.items():
                if rs:
                    pk = list(tables[t].primary_key.columns)
                    for r in rs:
                        conn.execute(tables[t].delete().where(*[c == r[c.name] for c in pk]))
            for t, rs in removed.items():
                if rs:
                    conn.execute(tables[t].insert(), rs)
        msg_owner = {r["id"]: r["profile_id"] for r in added.get("messages", [])}
        per_person: dict[str, dict[str, list]] = {}
        for t, rs in added.items():
            for r in rs:
                per_person.setdefault(_owner(t, r, msg_owner), {}).setdefault(t, []).append(r)
        dels: dict[str, list] = {}
        for r in removed.get("feed_pending", []):
            dels.setdefault(r["profile_id"], []).append(r["seq"])
        pids = sorted(p for p in per_person if p is not None)
        shared = per_person.pop(None, {})  # rows of nobody (the journeys' internal source): the first transaction
        fp = tables["feed_pending"]
        prof_t = tables["profiles"]
        order = [t for t in tables if t in added]  # parents first (metadata order)
        t0 = time.perf_counter()
        for i in range(0, len(pids), 500):
            with engine.begin() as conn:
                for t in order if i == 0 else ():
                    if t in shared:
                        conn.execute(tables[t].insert(), shared[t])
                chunk = pids[i : i + 500]
                # the chunk's profile rows locked in one statement, then one INSERT per table for all of them and
                # one DELETE: what any batched writer of these rows does at best
                q = sa.select(prof_t.c.id).where(prof_t.c.workspace_id == ws, prof_t.c.id.in_(chunk))
                if engine.dialect.name == "postgresql":
                    q = q.order_by(prof_t.c.id).with_for_update()
                conn.execute(q).all()
                for t in order:
                    rs = [r for pid in chunk for r in per_person[pid].get(t, ())]
                    if rs:
                        conn.execute(tables[t].insert(), rs)
                seqs = [s for pid in chunk for s in dels.get(pid, ())]
                if seqs:
                    conn.execute(fp.delete().where(fp.c.consumer == "journeys", fp.c.seq.in_(seqs)))
        raw = time.perf_counter() - t0
        assert count(engine, "SELECT count(*) FROM messages WHERE journey_id = 'nudge'") == people
        engine.dispose()
    return {"engine": engine_name, "workers": workers or "embedded", "people": people, "history": history,
            "changes_handled": handled,
            "chorus_s": took, "chorus_per_s": people / took, "raw_s": raw, "raw_per_s": people / raw,
            "ratio": (people / took) / (people / raw), "rows_inserted": rows, "rows_deleted": gone,
            "rows_updated_not_replayed": updated,
            "shared_rows": {t: len(v) for t, v in shared.items()}}  # fmt: skip


def cmd_transitions(args) -> None:
    tmp = make_tmpdir()
    runs = []
    plan = []
    for e in args.engines.split(","):
        plan += [("sqlite", 0)] if e == "sqlite" else [("postgresql", 1), ("postgresql", 2)]
    for eng, w in plan:
        r = transitions_run(eng, w, args.people, tmp, args.profile, args.history)
        runs.append(r)
        log(f"{eng} x{r['workers']}: chorus {r['chorus_per_s']:.0f}/s, raw {r['raw_per_s']:.0f}/s")
    hist = f", each with {args.history:,} older events and an exit rule on 7 days of orders" if args.history else ""
    print(f"\ntransitions, {args.people:,} people (one entry, one in_app message, one exit each{hist})\n")
    print("| engine | workers | chorus transitions/s | raw SQL transitions/s | chorus/raw | bar ≥ 0.5 |")
    print("| --- | --- | ---: | ---: | ---: | --- |")
    for r in runs:
        ok = "yes" if r["ratio"] >= 0.5 else f"no ({0.5 / r['ratio']:.1f}x short)"
        print(f"| {r['engine']} | {r['workers']} | {r['chorus_per_s']:,.0f} | {r['raw_per_s']:,.0f} | "
              f"{r['ratio']:.2f} | {ok} |")  # fmt: skip
    print(f"\nrows per run (inserted): {runs[0]['rows_inserted']}; deleted: {runs[0]['rows_deleted']}; "
          f"updated (not replayed by raw): {runs[0]['rows_updated_not_replayed']}")  # fmt: skip
    write_json(Path(args.out) / "journeys-transitions.json", runs)


# -- latency ----------------------------------------------------------------------------------------------------------
def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def cmd_latency(args) -> None:
    from segments_latency import send  # the open-loop HTTP client of the segments' latency bench

    from chorus import workspaces
    from chorus.journeys import manage
    from chorus.messaging import outbox
    from chorus.store.db import create_engine, upgrade

    tmp = make_tmpdir()
    n = int(args.rate * args.seconds)
    with FreshDB(args.engine, "jlat", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        w = workspaces.create(engine, "bench")
        outbox.save_template(engine, w["id"], "nudge", TEMPLATE)
        with engine.begin() as conn:
            manage.publish(conn, w["id"], NUDGE, datetime.now(UTC))
        engine.dispose()
        # --workers 0: the embedded worker (one process); N: `serve --no-worker` and N `chorus worker` processes
        server = ChorusServer(db.url, tmp / "serve.log", worker=args.workers == 0)
        workers = [ChorusServer(db.url, tmp / f"worker{i}.log", mode="worker") for i in range(args.workers)]
        try:
            server.wait_ready()
            for w_ in workers:
                w_.wait_ready()
            evs = [product_added(f"u{i}", datetime.now(UTC)) for i in range(n)]
            log(f"serve ready; {n:,} events at {args.rate}/s")
            reqs = asyncio.run(send(server.base_url, w["write_key"], evs, args.batch, args.rate, 8, give_up=10.0))
            accepted: dict[str, float] = {}
            for first, _due, _sent, acc, status in reqs:
                if status == 200:
                    for e in evs[first : first + args.batch]:
                        accepted[e["userId"]] = acc
            log(f"{len(accepted):,} accepted; waiting for their messages")
            conn = ro_connect(db)
            deadline = time.time() + args.drain
            while time.time() < deadline:
                m = conn.execute("SELECT count(*) FROM messages WHERE journey_id = 'nudge'").fetchone()[0]
                if m >= len(accepted):
                    break
                time.sleep(0.5)
            drained_s = time.time() - max(accepted.values())
            sent_at = dict(conn.execute(
                "SELECT i.ident, m.created_at FROM messages m JOIN identifiers i ON i.profile_id = m.profile_id "
                "WHERE m.journey_id = 'nudge' AND i.ident LIKE 'user_id:%'").fetchall())  # fmt: skip
            resolved_at = dict(conn.execute(
                "SELECT i.ident, min(c.at) FROM profile_changes c JOIN identifiers i ON i.profile_id = c.profile_id "
                "WHERE c.cause = 'event' AND i.ident LIKE 'user_id:%' GROUP BY i.ident").fetchall())  # fmt: skip
            conn.close()
        finally:
            server.stop()
            for w_ in workers:
                w_.stop()
    lat = {"resolved": [], "message": []}
    for uid, acc in accepted.items():
        for name, src in (("resolved", resolved_at), ("message", sent_at)):
            at = src.get(f"user_id:{uid}")
            if isinstance(at, str):  # SQLite's DATETIME text (SQLAlchemy's format, UTC)
                at = datetime.fromisoformat(at)
            if at is None:  # not there when the wait ended: counted, as later than anything seen ("inf")
                lat[name].append(float("inf"))
            else:
                lat[name].append(
                    at.replace(tzinfo=UTC).timestamp() - acc if at.tzinfo is None else at.timestamp() - acc
                )
    rows = {k: {"n": sum(1 for x in v if x != float("inf")), "p50": pct(v, 0.5), "p95": pct(v, 0.95),
                "p99": pct(v, 0.99), "max": max(v, default=0)} for k, v in lat.items()}  # fmt: skip
    late = [r for r in reqs if r[2] is not None and r[2] - r[1] > 0.5]
    print(f"\nlatency: {n:,} events at {args.rate}/s for {args.seconds}s through /v1/batch ({args.batch} a request), "
          f"chorus serve on {args.engine}, "
          f"{f'{args.workers} chorus worker processes' if args.workers else 'embedded worker'}, no-delay journey\n")
    print("| from the request's 200 to | n | p50 ms | p95 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k, label in (("resolved", "its resolution (feed change, the part before the journey: baseline)"),
                     ("message", "its message row's created_at (the journey)")):  # fmt: skip
        r = rows[k]
        print(f"| {label} | {r['n']:,} | {r['p50'] * 1000:,.0f} | {r['p95'] * 1000:,.0f} | {r['p99'] * 1000:,.0f} | "
              f"{r['max'] * 1000:,.0f} |")  # fmt: skip
    print("\n(n: messages there when the wait ended; one not there counts as later than any, inf)")
    print(f"accepted {len(accepted):,} of {n:,}; requests sent more than 0.5 s late: {len(late)}; last message "
          f"{drained_s:.1f} s after the last 200; bar: p99 < 200 ms")  # fmt: skip
    write_json(Path(args.out) / "journeys-latency.json", {"rate": args.rate, "seconds": args.seconds, "events": n,
               "workers": args.workers,
               "accepted": len(accepted), "late_requests": len(late), "drained_s": drained_s, **rows})  # fmt: skip


# -- bulk people -------------------------------------------------------------------------------------------------------
def clone_rows(engine, table, template: dict, ids: list[tuple[dict, dict]], chunk: int = 20_000) -> None:
    """Copies of ``template`` (a row) with every occurrence of each old id string replaced by its new one (in
    JSON columns too), through ``bulk.insert_rows`` (COPY on PostgreSQL), ``chunk`` rows a transaction.
    ``ids``: per copy, {old: new} and the column values to set."""
    from chorus.store import bulk

    raw = orjson.dumps(template, default=str, option=orjson.OPT_NON_STR_KEYS)
    stamps = [c.name for c in table.columns if _is_time(c)]
    for i in range(0, len(ids), chunk):
        rows = []
        for subst, fixed in ids[i : i + chunk]:
            b = raw
            for old, new in subst.items():
                b = b.replace(old.encode(), new.encode())
            row = orjson.loads(b)
            for k in stamps:  # the datetimes back from their JSON text
                if row.get(k) is not None:
                    row[k] = datetime.fromisoformat(row[k])
            row.update(fixed)
            rows.append(row)
        with engine.begin() as conn:
            bulk.insert_rows(conn, table, rows)


def _is_time(col) -> bool:
    import sqlalchemy as sa

    return isinstance(col.type, sa.DateTime) or isinstance(getattr(col.type, "impl", None), sa.DateTime)


def one_row(engine, table, **where) -> dict:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table).where(*[table.c[k] == v for k, v in where.items()])).one()._mapping)


def rss_kb() -> int:
    import os

    return _status_kb(os.getpid(), "VmRSS")


# -- timers -----------------------------------------------------------------------------------------------------------
def _timer_worker(url: str, passes: int, conn_) -> None:
    """The timer task in a process of its own: RSS idle, after ``passes`` polls with nothing due, after firing."""
    chorus_ready()
    from chorus.journeys import runtime
    from chorus.store.db import create_engine

    engine = create_engine(url)
    count(engine, "SELECT 1")
    idle = rss_kb()
    t0 = time.perf_counter()
    for _ in range(passes):
        assert runtime.due(engine) == 0
    poll_s = (time.perf_counter() - t0) / passes
    polled = rss_kb()
    conn_.send((idle, polled, poll_s))
    conn_.recv()  # the parent made a slice due
    t0, fired = time.perf_counter(), 0
    while n := runtime.due(engine):
        fired += n
    took = time.perf_counter() - t0
    for _ in range(passes):  # and polling on afterwards, nothing due again
        runtime.due(engine)
    conn_.send((fired, took, rss_kb(), _status_kb(__import__("os").getpid(), "VmHWM")))
    engine.dispose()


def cmd_timers(args) -> None:
    import sqlalchemy as sa

    from chorus.profiles import feed
    from chorus.store.db import create_engine, upgrade
    from chorus.store.tables import journey_instances, journey_timers, profiles

    tmp = make_tmpdir()
    with FreshDB(args.engine, "jtimers", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        feed.subscribe(engine, "journeys")
        ws = workspace(engine, WAITER)
        store_and_resolve(engine, ws, [product_added("u0", datetime.now(UTC))])
        _consume_all(engine)
        inst = one_row(engine, journey_instances, workspace_id=ws)
        pid, iid = inst["profile_id"], inst["id"]
        prof = one_row(engine, profiles, id=pid)
        timer = one_row(engine, journey_timers, workspace_id=ws, instance_id=iid)
        log(f"cloning {args.waiting:,} waiting people (profile, instance, timer rows)")
        t0 = time.perf_counter()
        ids = [(f"{pid[:24]}{k:010d}", f"{iid[:24]}{k:010d}") for k in range(1, args.waiting)]
        clone_rows(engine, profiles, prof, [({pid: p}, {}) for p, _ in ids])
        clone_rows(engine, journey_instances, inst, [({pid: p, iid: i}, {}) for p, i in ids])
        clone_rows(engine, journey_timers, timer, [({pid: p, iid: i}, {}) for p, i in ids])
        made = time.perf_counter() - t0
        waiting = count(engine, "SELECT count(*) FROM journey_timers")
        log(f"{waiting:,} timers in {made:.0f}s; starting the timer worker")
        ctx = mp.get_context("spawn")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_timer_worker, args=(db.url, args.passes, there))
        proc.start()
        idle, polled, poll_s = here.recv()
        # a slice due now: the first ``--fire`` timers in key order
        with engine.begin() as conn:
            keys = (
                conn.execute(sa.select(journey_timers.c.key).order_by(journey_timers.c.key).limit(args.fire))
                .scalars()
                .all()
            )
            conn.execute(journey_timers.update().where(journey_timers.c.key.in_(keys))
                         .values(due_at=datetime.now(UTC) - timedelta(seconds=1)))  # fmt: skip
        here.send("go")
        fired, took, after, hwm = here.recv()
        proc.join(30)
        sent = count(engine, "SELECT count(*) FROM messages WHERE journey_id = 'waiter'")
        left = count(engine, "SELECT count(*) FROM journey_timers")
        size = db.size_mb()
        engine.dispose()
    res = {"engine": args.engine, "waiting": waiting, "made_s": made, "passes": args.passes, "poll_ms": poll_s * 1000,
           "rss_idle_mb": idle / 1024, "rss_after_polls_mb": polled / 1024, "fired": fired, "fire_s": took,
           "fired_per_s": fired / took if took else None, "rss_after_fire_mb": after / 1024, "hwm_mb": hwm / 1024,
           "messages": sent, "timers_left": left, "db_mb": size}  # fmt: skip
    print(f"\ntimers: {waiting:,} people waiting on a 1-day delay ({args.engine}; made in {made:.0f} s, database "
          f"{size:.0f} MB)\n")  # fmt: skip
    print("| worker RSS | MB |\n| --- | ---: |")
    print(f"| idle, after imports and a connection (baseline) | {idle / 1024:.1f} |")
    print(f"| after {args.passes} timer passes, nothing due ({poll_s * 1000:.1f} ms a pass) | {polled / 1024:.1f} |")
    print(f"| after firing {fired:,} timers ({fired / took if took else 0:,.0f}/s) and {args.passes} more passes | "
          f"{after / 1024:.1f} (peak {hwm / 1024:.1f}) |")  # fmt: skip
    print(f"\nmessages sent by the slice: {sent:,}; timers left waiting: {left:,}")
    write_json(Path(args.out) / f"journeys-timers-{args.engine}.json", res)


# -- broadcast --------------------------------------------------------------------------------------------------------
def cmd_broadcast(args) -> None:
    import sqlalchemy as sa

    from chorus.journeys import manage, schedule
    from chorus.segments import rules
    from chorus.segments import store as segments_store
    from chorus.store.db import create_engine, upgrade
    from chorus.store.tables import messages, profiles, segment_members

    tmp = make_tmpdir()
    with FreshDB(args.engine, "jbroad", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspace(engine, None)
        now = datetime.now(UTC)
        with engine.begin() as conn:
            segments_store.save(conn, ws, "gold", "Gold", rules.parse({"trait": {"name": "plan", "equals": "gold"}}),
                                now)  # fmt: skip
        store_and_resolve(engine, ws, [{"type": "identify", "userId": "u0", "traits": {"plan": "gold"},
                                        "messageId": "m0", "timestamp": now.isoformat()}])  # fmt: skip
        with engine.connect() as conn:
            pid = conn.execute(sa.select(profiles.c.id)).scalar_one()
        prof = one_row(engine, profiles, id=pid)
        log(f"cloning {args.profiles:,} profiles and memberships")
        ids = [f"{pid[:24]}{k:010d}" for k in range(1, args.profiles)]
        clone_rows(engine, profiles, prof, [({pid: p}, {}) for p in ids])
        member = {"workspace_id": ws, "segment_id": "gold", "profile_id": pid, "since": now}
        clone_rows(engine, segment_members, member, [({}, {"profile_id": p, "since": now}) for p in [pid, *ids]])
        n = count(engine, "SELECT count(*) FROM segment_members")
        log(f"{n:,} members; broadcasting")
        with Profiler(args.profile, f"broadcast-{args.engine}"):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                manage.publish_broadcast(conn, ws, {"id": "b1", "segment": "gold", "template": "nudge",
                                                    "channel": "in_app"}, datetime.now(UTC))  # fmt: skip
            while schedule.tick(engine):
                pass
            took = time.perf_counter() - t0
        sent = count(engine, "SELECT count(*) FROM messages WHERE journey_id = 'b1'")
        with engine.connect() as conn:
            statuses = dict(conn.execute(sa.text("SELECT status, count(*) FROM messages GROUP BY status")).all())
        # the baseline: the same message rows, inserted again by hand, 500 a transaction
        with engine.begin() as conn:
            rows = [dict(r._mapping) for r in conn.execute(sa.select(messages).where(messages.c.journey_id == "b1"))]
            conn.execute(messages.delete().where(messages.c.journey_id == "b1"))
        t0 = time.perf_counter()
        for i in range(0, len(rows), 500):
            with engine.begin() as conn:
                conn.execute(messages.insert(), rows[i : i + 500])
        raw = time.perf_counter() - t0
        engine.dispose()
    res = {"engine": args.engine, "profiles": n, "messages": sent, "chorus_s": took, "chorus_per_s": sent / took,
           "raw_s": raw, "raw_per_s": len(rows) / raw, "million_s": 1e6 / (sent / took),
           "statuses": statuses}  # fmt: skip
    print(f"\nbroadcast 'now' to a segment of {n:,} profiles ({args.engine}); {sent:,} messages queued\n")
    print("| | seconds | profiles/s | 1,000,000 would take |\n| --- | ---: | ---: | ---: |")
    print(
        f"| chorus (publish + schedule task) | {took:.1f} | {sent / took:,.0f} | {1e6 / (sent / took) / 60:.0f} min |"
    )
    print(f"| raw INSERT of the same message rows | {raw:.1f} | {len(rows) / raw:,.0f} | "
          f"{1e6 / (len(rows) / raw) / 60:.1f} min |")  # fmt: skip
    print(f"\nchorus/raw {(sent / took) / (len(rows) / raw):.3f}; bar: 1,000,000 in under 2 min; statuses {statuses}")
    write_json(Path(args.out) / f"journeys-broadcast-{args.engine}.json", res)


# -- main -------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS_DIR), help="directory for the JSON results")
    ap.add_argument("--profile", metavar="DIR", help="cProfile the timed chorus part into DIR (top 40 on stderr)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("transitions")
    t.add_argument("--people", type=int, default=1000)
    t.add_argument("--engines", default="sqlite,postgresql")
    t.add_argument("--history", type=int, default=0,
                   help="older events per person (a past year of page views and orders) and a 7-day exit rule")
    lt = sub.add_parser("latency")
    lt.add_argument("--rate", type=float, default=500)
    lt.add_argument("--seconds", type=float, default=20)
    lt.add_argument("--batch", type=int, default=20, help="events per /v1/batch request")
    lt.add_argument("--drain", type=float, default=120, help="seconds to wait for the last messages")
    lt.add_argument("--engine", default="postgresql")
    lt.add_argument("--workers", type=int, default=0,
                    help="0: serve's embedded worker; N: serve --no-worker and N `chorus worker` processes")
    t = sub.add_parser("timers")
    t.add_argument("--waiting", type=int, default=100_000)
    t.add_argument("--fire", type=int, default=500, help="timers made due and fired after the polls")
    t.add_argument("--passes", type=int, default=20, help="timer passes with nothing due")
    t.add_argument("--engine", default="postgresql")
    b = sub.add_parser("broadcast")
    b.add_argument("--profiles", type=int, default=2000)
    b.add_argument("--engine", default="postgresql")
    args = ap.parse_args()
    from chorus import gctune

    # the chorus code measured in this process gets the collector settings of `chorus worker` (decision 0041;
    # CHORUS_GC=default to measure with CPython's)
    gctune.tune()
    chorus_ready()
    {"transitions": cmd_transitions, "latency": cmd_latency, "timers": cmd_timers, "broadcast": cmd_broadcast}[
        args.cmd
    ](args)


if __name__ == "__main__":
    main()
