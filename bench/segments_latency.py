#!/usr/bin/env python
"""Latency of segment membership: from an event accepted by ``/v1/batch`` to the membership change it causes,
recorded, under a steady stream of events, with ``chorus serve`` (HTTP on loopback, embedded worker).

Per engine and per rate, two runs on fresh databases with the same deterministic stream (``--seed``):

* **baseline**: no segment defined; per event, from its request's ``200`` to its resolution (the change feed's
  ``event`` row, written in the transaction that attaches the event to its profile);
* **segments**: four segments (a trait, browse abandonment "viewed laptops 3 times in 7 days, no add, no order", a
  30-day sum of orders, "no purchase for 60 days"); per entry the client predicted (it knows each person's events),
  from the ``200`` of the request holding the event that makes her enter to the ``segment_history`` row.

Before the measured stream, everybody's first event (an identify that makes her profile) is sent and resolved
(not measured): the figures are those of a steady stream of known people. Both sides run on this machine's clock.
A row's commit is bracketed: the ``at`` the server wrote in it (its clock read when it started the work, before
the commit) is a lower bound, and the start of the first poll (every ``--poll`` s, on its own connection) that
sees the row is an upper bound. The figures are the upper bound ("seen"); the JSON has both.

    python bench/segments_latency.py                               # 1,000 ev/s for 60 s, both engines
    python bench/segments_latency.py --rates 250,1000 --seconds 30 --engines sqlite

Prints a table and writes ``bench/results/segments-latency-<engine>.json``. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ChorusServer,
    DbCpuSampler,
    FreshDB,
    MemSampler,
    add_run_args,
    cpu_seconds,
    create_workspace,
    db_upgrade,
    drained,
    log,
    make_tmpdir,
    ro_connect,
    snapshot_code,
    system_cpu,
    write_json,
)
from segment_rules import SEGMENTS as BATCH_SEGMENTS  # noqa: E402

CATEGORIES = ["laptops", "phones", "tv", "audio"]
SEGMENTS: dict[str, dict] = {  # three of bench/segments.py's rules; a sum over 30 days (its is over 90)
    **{sid: BATCH_SEGMENTS[sid] for sid in ("gold", "browse_abandon", "lapsed")},
    "big_spender": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                  "window": "30d", "gte": 500}},
}  # fmt: skip


# -- the stream -----------------------------------------------------------------------------------------------------
class Person:
    """What the client knows of one person, to predict when she enters each segment (every event of the run is
    inside every window, so the rules reduce to counts)."""

    __slots__ = ("plan", "views", "blocked", "spent")

    def __init__(self):
        self.plan, self.views, self.blocked, self.spent = None, 0, False, 0

    def inside(self) -> dict[str, bool]:
        return {"gold": self.plan == "gold", "browse_abandon": self.views >= 3 and not self.blocked,
                "big_spender": self.spent >= 500}  # fmt: skip


def stream(n_events: int, n_people: int, seed: int, tag: str) -> tuple[list[dict], list[tuple[int, str, str]]]:
    """The events (without timestamps: stamped when sent) and the predicted entries (event index, user, segment).

    People take turns in a fixed shuffled order, so one person's events are ``n_people`` events apart (seconds at
    the rates measured): her events are never in flight together and arrive in order. Her first event is an
    identify with a plan; then views (40 %, laptops 40 % of them), pages, cart adds, orders and plan changes."""
    rnd = random.Random(seed)
    order = list(range(n_people))
    rnd.shuffle(order)
    people = [Person() for _ in range(n_people)]
    out, entries = [], []
    for i in range(n_events):
        k = order[i % n_people]
        p, user = people[k], f"u{k}"
        before = p.inside()
        msg: dict = {"messageId": f"{tag}-{i}", "userId": user, "context": {"channel": "web"}}
        roll = rnd.random()
        if i < n_people or roll < 0.05:
            p.plan = rnd.choice(["gold", "silver", "bronze", "free"])
            msg.update(type="identify", traits={"plan": p.plan})
        elif roll < 0.45:
            cat = rnd.choices(CATEGORIES, [40, 20, 20, 20])[0]
            p.views += cat == "laptops"
            msg.update(type="track", event="Product Viewed", properties={"category": cat, "price": 499})
        elif roll < 0.50:
            cat = rnd.choices(CATEGORIES, [40, 20, 20, 20])[0]
            p.blocked |= cat == "laptops"
            msg.update(type="track", event="Product Added", properties={"category": cat, "price": 499})
        elif roll < 0.55:
            total = rnd.randrange(50, 400)
            p.blocked, p.spent = True, p.spent + total
            msg.update(type="track", event="Order Completed", properties={"total": total, "currency": "EUR"})
        else:
            msg.update(type="page", name="Home", properties={"path": "/"})
        after = p.inside()
        entries += [(i, user, sid) for sid in after if after[sid] and not before[sid]]
        out.append(msg)
    return out, entries


# -- the sender -----------------------------------------------------------------------------------------------------
def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


async def send(base_url: str, write_key: str, events: list[dict], batch: int, rate: float, concurrency: int,
               give_up: float, first: int = 0) -> list:
    """An open loop: request k is due at start + k·batch/rate whatever the server does (at most ``concurrency``
    in flight; a request that waits for a free slot is late, which the figures show). A server that cannot take
    the rate would make the run last for ever: the first request more than ``give_up`` s late, and every one after
    it, is not sent (slots are granted in due order, so what was sent is a prefix of the stream and the client's
    predictions hold for it). Returns per request (index of its first event in the stream, counting from
    ``first``, due, sent, accepted, status) in wall-clock seconds; a request not sent has sent = accepted = None."""
    import httpx

    reqs = [events[i : i + batch] for i in range(0, len(events), batch)]
    slots = asyncio.Semaphore(concurrency)
    out: list = [None] * len(reqs)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, auth=(write_key, ""), limits=limits,
                                 timeout=httpx.Timeout(60.0)) as client:  # fmt: skip

        stopped = False

        async def one(k: int, due: float) -> None:
            nonlocal stopped
            async with slots:
                sent = time.time()
                if stopped or sent - due > give_up:
                    stopped = True
                    out[k] = (first + k * batch, due, None, None, None)
                    return
                for e in reqs[k]:
                    e["timestamp"] = _stamp(sent)
                body = orjson.dumps({"batch": reqs[k]})
                status = 0
                for _attempt in range(20):
                    r = await client.post("/v1/batch", content=body, headers={"Content-Type": "application/json"})
                    status = r.status_code
                    if status != 429:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                out[k] = (first + k * batch, due, sent, time.time(), status)

        start = time.time() + 0.2
        tasks = []
        for k in range(len(reqs)):
            due = start + k * batch / rate
            delay = due - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(k, due)))
        await asyncio.gather(*tasks)
    return out


# -- watching commits -----------------------------------------------------------------------------------------------
class Watcher(threading.Thread):
    """Polls the change feed and the segment history for new rows on its own connection and notes, per row, the
    start of the first poll that saw it (the row committed before that instant). Both tables are written by the
    embedded worker only, one transaction at a time, so their keys become visible in increasing order."""

    def __init__(self, db: FreshDB, interval: float):
        super().__init__(daemon=True)
        self.db, self.interval = db, interval
        self.change_seen: dict[int, float] = {}  # profile_changes.seq -> first seen
        self.history_seen: dict[int, float] = {}  # segment_history.id -> first seen
        self.gaps: list[float] = []
        self._halt = threading.Event()
        self.conn = ro_connect(db, threaded=True)
        if db.engine == "sqlite":
            self.conn.isolation_level = None  # each SELECT its own snapshot

    def poll(self) -> float:
        t = time.time()
        last_c = max(self.change_seen, default=0)
        last_h = max(self.history_seen, default=0)
        q = "SELECT seq FROM profile_changes WHERE seq > %s" if self.db.engine != "sqlite" else \
            "SELECT seq FROM profile_changes WHERE seq > ?"  # fmt: skip
        for (seq,) in self.conn.execute(q, (last_c,)).fetchall():
            self.change_seen[seq] = t
        q = q.replace("seq", "id").replace("profile_changes", "segment_history")
        for (hid,) in self.conn.execute(q, (last_h,)).fetchall():
            self.history_seen[hid] = t
        return t

    def run(self) -> None:
        prev = None
        while not self._halt.is_set():
            t = self.poll()
            if prev is not None:
                self.gaps.append(t - prev)
            prev = t
            self._halt.wait(max(0.0, self.interval - (time.time() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)
        self.poll()  # anything committed since: seen late, but seen
        self.conn.close()


# -- one run ----------------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * len(s) + 0.5) - 1))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50": pct(ms, 50), "p95": pct(ms, 95), "p99": pct(ms, 99), "max": max(ms, default=None)}


def run_once(engine: str, with_segments: bool, args, tmp: Path, rate: float) -> dict:
    n_events = int(rate * args.seconds)
    n_people = args.people or max(50, n_events // 40)
    tag = f"r{int(rate)}"
    events, predicted = stream(n_events, n_people, args.seed, tag)
    label = "segments" if with_segments else "baseline"
    with FreshDB(engine, f"latency_{label}", tmp) as db:
        db_upgrade(db.url)
        ws = create_workspace(db.url)
        server = ChorusServer(db.url, tmp / f"serve-{engine}-{label}-{tag}.log")
        try:
            server.wait_ready()
            if with_segments:
                define(server.base_url, ws["api_key"])
            warm_up(server.base_url, ws["write_key"], events[:n_people], db, engine)
            watcher = Watcher(db, args.poll)
            mem, dbcpu = MemSampler(server.pid), DbCpuSampler(db)
            watcher.start()
            mem.start()
            dbcpu.start()
            cpu0, busy0, wall0 = cpu_seconds(server.pid), system_cpu()[0], time.time()
            me0 = time.process_time()
            reqs = asyncio.run(send(server.base_url, ws["write_key"], events[n_people:], args.batch, rate,
                                    args.concurrency, args.give_up, first=n_people))
            sent_end = time.time()
            log(f"{engine} {label} {rate:g} ev/s: sent; waiting for the worker to catch up")
            poll_conn = watcher.conn if engine != "sqlite" else ro_connect(db)
            deadline = time.time() + args.drain
            while time.time() < deadline and not drained(poll_conn, engine):
                time.sleep(0.2)
            caught_up = time.time()
            watcher.stop()
            mem.stop()
            cpu = {"server": cpu_seconds(server.pid) - cpu0, "client": time.process_time() - me0,
                   "postgres": dbcpu.stop(), "machine_busy": system_cpu()[0] - busy0, "wall": caught_up - wall0,
                   "loadavg": os.getloadavg()}  # fmt: skip
            cpu["others"] = cpu["machine_busy"] - cpu["server"] - cpu["client"] - cpu["postgres"]
            rows = read_back(db, engine)
        finally:
            server.stop()
    return measure(engine, label, rate, args, events, predicted, reqs, watcher, rows, cpu, mem.peak_mb,
                   caught_up - sent_end)  # fmt: skip


def warm_up(base_url: str, write_key: str, first_events: list[dict], db: FreshDB, engine: str) -> None:
    """Everybody's first event (an identify that makes her profile), sent as fast as the server takes them and
    resolved before the measured stream starts: the figures are those of a steady stream of known people, not of
    a burst of new profiles (not measured)."""
    asyncio.run(send(base_url, write_key, first_events, 100, 1e9, 2, give_up=float("inf")))
    with contextlib.closing(ro_connect(db)) as conn:
        deadline = time.time() + 600
        while time.time() < deadline and not drained(conn, engine):
            time.sleep(0.2)


def define(base_url: str, api_key: str) -> None:
    import httpx

    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60) as c:
        for sid, rule in SEGMENTS.items():
            c.put(f"/api/segments/{sid}", json={"name": sid, "rule": rule}).raise_for_status()
        deadline = time.time() + 60
        while time.time() < deadline:  # an empty workspace's batch is quick; entries must not wait for it
            if all(s["status"] == "ready" for s in c.get("/api/segments").json()["segments"]):
                return
            time.sleep(0.2)
    raise RuntimeError("segments did not become ready in 60 s")


def read_back(db: FreshDB, engine: str) -> dict:
    """Everything the run wrote that the figures need, read after the worker caught up."""
    with ro_connect(db) as conn:
        seq_of = dict(conn.execute("SELECT seq, message_id FROM events").fetchall())
        changes = conn.execute("SELECT seq, event_seq, at FROM profile_changes WHERE cause = 'event'").fetchall()
        history = conn.execute("SELECT id, segment_id, profile_id, change, at, cause FROM segment_history "
                               "ORDER BY id").fetchall()  # fmt: skip
        users = dict(conn.execute("SELECT ident, profile_id FROM identifiers WHERE ident LIKE 'user_id:%'").fetchall())
        failures = conn.execute("SELECT count(*) FROM feed_pending").fetchone()[0]
    return {"seq_of": seq_of, "changes": changes, "history": history, "users": users, "feed_left": failures}


def _epoch(v) -> float:
    if isinstance(v, str):  # SQLite keeps the fixed-width UTC text
        v = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if v.tzinfo is None:
        v = v.replace(tzinfo=UTC)
    return v.timestamp()


def measure(engine, label, rate, args, events, predicted, reqs, watcher, rows, cpu, peak_mb, catch_up) -> dict:
    ok_at: dict[int, float] = {}  # event index -> its request's 200
    statuses: dict[int, int] = defaultdict(int)
    lags = []
    for first, due, sent, done, status in reqs:
        statuses[status if sent is not None else "not sent"] += 1
        if sent is None:
            continue
        lags.append((sent - due) * 1000)
        if status == 200:
            for i in range(first, min(first + args.batch, len(events))):
                ok_at[i] = done
    index = {e["messageId"]: i for i, e in enumerate(events)}  # warm-up events have no ok_at: left out
    # resolution: the feed's event row of each event of the stream
    resolved_seen, resolved_at = [], []
    for seq, event_seq, at in rows["changes"]:
        i = index.get(rows["seq_of"].get(event_seq))
        if i is None or i not in ok_at or seq not in watcher.change_seen:
            continue
        resolved_seen.append((watcher.change_seen[seq] - ok_at[i]) * 1000)
        resolved_at.append((_epoch(at) - ok_at[i]) * 1000)
    measured = sum(min(args.batch, len(events) - r[0]) for r in reqs)  # the stream after the warm-up
    out = {"engine": engine, "run": label, "rate": rate, "events": measured, "batch": args.batch,
           "requests": len(reqs), "statuses": dict(statuses), "resolved_seen_ms": summary(resolved_seen),
           "resolved_at_ms": summary(resolved_at), "send_lag_ms": summary(lags), "cpu_seconds": cpu,
           "server_peak_rss_mb": peak_mb, "catch_up_after_last_request_s": catch_up,
           "poll_gap_ms": summary([g * 1000 for g in watcher.gaps]), "feed_left": rows["feed_left"],
           "changes_unseen": sum(1 for c in rows["changes"] if c[0] not in watcher.change_seen)}  # fmt: skip
    accepted = [r for r in reqs if r[4] == 200]
    if accepted:  # over the time the sender was sending: from the first due instant to the last 200
        span = max(r[3] for r in accepted) - min(r[1] for r in reqs)
        out["accepted_ev_per_s"] = sum(min(args.batch, len(events) - r[0]) for r in accepted) / span
        out["events_sent"] = sum(min(args.batch, len(events) - r[0]) for r in reqs if r[2] is not None)
        out["sending_s"] = span
    # the sender kept up when (almost) every request left on time: the server was taking them as they came
    out["kept_up"] = bool(lags) and pct(lags, 99) < 100 and statuses.get(200, 0) == len(reqs)
    if label == "segments":
        out.update(entries(predicted, rows, watcher, ok_at, warm=min(r[0] for r in reqs)))
    return out


def entries(predicted, rows, watcher, ok_at, warm: int) -> dict:
    """Match the k-th predicted entry of (person, segment) with the k-th entry row of her profile and segment.
    Entries caused by the warm-up (events before ``warm``) are matched but not measured; those of events never sent
    (a stream the sender gave up on) are left out."""
    rows_of: dict[tuple[str, str], list] = defaultdict(list)
    for hid, sid, pid, change, at, cause in rows["history"]:
        if change == "entered":
            rows_of[(pid, sid)].append((hid, at, cause))
    taken: dict[tuple[str, str], int] = defaultdict(int)
    seen, at_ms, per_segment, missing, measured = [], [], defaultdict(list), 0, 0
    for i, user, sid in predicted:
        if i >= warm and i not in ok_at:
            continue
        measured += i >= warm
        pid = rows["users"].get(f"user_id:{user}")
        key = (pid, sid)
        k = taken[key]
        if pid is None or k >= len(rows_of[key]):
            missing += 1
            continue
        taken[key] += 1
        hid, at, _cause = rows_of[key][k]
        if i < warm:
            continue
        if hid not in watcher.history_seen:
            missing += 1
            continue
        ms = (watcher.history_seen[hid] - ok_at[i]) * 1000
        seen.append(ms)
        per_segment[sid].append(ms)
        at_ms.append((_epoch(at) - ok_at[i]) * 1000)
    extra = sum(len(v) for v in rows_of.values()) - sum(taken.values())
    return {"entered_seen_ms": summary(seen), "entered_at_ms": summary(at_ms), "entries_predicted": measured,
            "entries_missing": missing, "entries_unpredicted": extra,
            "entered_by_segment_ms": {s: summary(v) for s, v in sorted(per_segment.items())}}  # fmt: skip


# -- output -----------------------------------------------------------------------------------------------------------
def _f(v) -> str:
    return "-" if v is None else f"{v:,.0f}"


def table(results: list[dict]) -> str:
    lines = ["| engine | rate ev/s | run | events sent | accepted ev/s | kept up (send lag p99 ms) | "
             "latency measured | n | p50 ms | p95 ms | p99 ms | max ms | "
             "caught up s after last request | machine busy / wall |",
             "|---|---:|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        figs = [("accepted → resolved", r["resolved_seen_ms"])]
        if r["run"] == "segments":
            figs.append(("accepted → entered", r["entered_seen_ms"]))
        for what, s in figs:
            c = r["cpu_seconds"]
            busy = f"{c['machine_busy'] / c['wall']:.2f} cores"
            lines.append(f"| {r['engine']} | {r['rate']:g} | {r['run']} | {_f(r.get('events_sent'))} of "
                         f"{r['events']:,} | {_f(r.get('accepted_ev_per_s'))} | "
                         f"{'yes' if r['kept_up'] else 'no'} ({_f(r['send_lag_ms']['p99'])}) | {what} | {s['n']:,} | "
                         f"{_f(s['p50'])} | {_f(s['p95'])} | {_f(s['p99'])} | {_f(s['max'])} | "
                         f"{r['catch_up_after_last_request_s']:.1f} | {busy} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="1000", help="events per second, a comma-separated list")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--batch", type=int, default=20, help="events per /v1/batch request")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight at most")
    ap.add_argument("--people", type=int, default=0, help="default: one per 40 events")
    ap.add_argument("--poll", type=float, default=0.01, help="seconds between two polls for committed rows")
    ap.add_argument("--give-up", type=float, default=10, help="stop sending once a request is this many s late")
    ap.add_argument("--drain", type=float, default=300, help="longest wait for the worker after the last request")
    add_run_args(ap, out_help="directory for segments-latency-<engine>.json")
    args = ap.parse_args()
    tmp = make_tmpdir()
    code = snapshot_code(tmp, args.code)
    results = []
    for engine in args.engines.split(","):
        for rate in (float(x) for x in args.rates.split(",")):
            for with_segments in (False, True):
                res = run_once(engine, with_segments, args, tmp, rate)
                log(f"{engine} {res['run']} {rate:g} ev/s: {orjson.dumps(res['resolved_seen_ms']).decode()}")
                results.append(res)
        write_json(Path(args.out) / f"segments-latency-{engine}.json",
                   {"code": code, "args": vars(args), "results": [r for r in results if r["engine"] == engine]})
    print(table(results))
    for r in results:
        if r["run"] == "segments":
            p99 = r["entered_seen_ms"]["p99"]
            ok = p99 is not None and p99 < 100
            print(f"{r['engine']} at {r['rate']:g} ev/s: entry p99 {_f(p99)} ms: bar (p99 < 100 ms) "
                  f"{'met' if ok else 'NOT met'}; predicted entries {r['entries_predicted']:,}, not found "
                  f"{r['entries_missing']:,}, entries not predicted {r['entries_unpredicted']:,}")


if __name__ == "__main__":
    main()
