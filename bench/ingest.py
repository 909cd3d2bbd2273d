#!/usr/bin/env python
"""End-to-end ingestion benchmark: HTTP /v1/batch -> events -> identity resolution, against a raw-insert baseline.

Per engine (SQLite, PostgreSQL), in one run:

1. a deterministic (seeded) Segment workload: N events for P people, pre-serialised to /v1/batch bodies;
2. baseline: the same event rows (built with chorus' own `normalise` and `ingest.store` row shape) inserted raw into
   a fresh `events` table created by `chorus db upgrade`: SQLite `executemany` in 500-row transactions, PostgreSQL
   `COPY ... FROM STDIN` of 500 rows committed per batch (plus one big COPY / one big transaction for reference);
3. `chorus serve` on a fresh database: K concurrent HTTP connections send every batch (429 Retry-After is
   honoured); accepted ev/s = events / time until the last 200; resolved ev/s = events / time until no event has
   `profile_id IS NULL`; the server's peak RSS (VmHWM of its process tree);
4. the same volume without anonymous-first people (no merges): merge slowdown = resolved rate without merges /
   resolved rate with merges.

Prints a table and writes bench/results/ingest-<engine>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ChorusServer,
    DbCpuSampler,
    FreshDB,
    MemSampler,
    Poller,
    PySpy,
    add_run_args,
    cpu_seconds,
    create_workspace,
    db_upgrade,
    engines_of,
    log,
    make_tmpdir,
    proc_tree,
    snapshot_code,
    system_cpu,
    write_json,
)

# --- the workload -----------------------------------------------------------------------------------------------
EPOCH = datetime(2026, 3, 2, tzinfo=UTC)
WINDOW_SECONDS = 86_400  # people start their visits over one day
USER_AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile "
    "Safari/537.36",
]
LOCALES = [("en-US", "America/New_York"), ("en-GB", "Europe/London"), ("fr-FR", "Europe/Paris"),
           ("de-DE", "Europe/Berlin"), ("es-ES", "Europe/Madrid"), ("pt-BR", "America/Sao_Paulo")]  # fmt: skip
CATEGORIES = ["shoes", "jackets", "bags", "accessories", "sale", "new-in", "kids", "home"]
TRACK_EVENTS = ["Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Products Searched",
                "Order Completed", "Product List Viewed", "Coupon Applied"]  # fmt: skip
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "icloud.com", "proton.me", "hotmail.co.uk", "orange.fr"]
FIRST = ["ana", "ben", "chloe", "david", "emma", "farid", "grace", "hugo", "ines", "jonas", "kira", "liam"]
LAST = ["silva", "martin", "smith", "dubois", "muller", "garcia", "rossi", "kowalski", "nguyen", "okafor"]
SITE = "https://shop.example.com"


class Person:
    __slots__ = ("n", "anon_first", "user_id", "anon_a", "anon_b", "email", "first", "last", "ua", "ua_b", "loc",
                 "plan", "n_pre_a", "n_pre_b")  # fmt: skip


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _iso(t: float) -> str:
    return (EPOCH + timedelta(seconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _counts(rng: random.Random, mins: list[int], total: int) -> list[int]:
    mean = total / len(mins)
    counts = [max(m, round(rng.gauss(mean, mean / 3))) for m in mins]
    diff = total - sum(counts)
    while diff:
        i = rng.randrange(len(counts))
        if diff > 0:
            counts[i] += 1
            diff -= 1
        elif counts[i] > mins[i]:
            counts[i] -= 1
            diff += 1
    return counts


def _page(rng: random.Random) -> tuple[str, str, dict]:
    r = rng.random()
    if r < 0.15:
        path, name = "/", "Home"
    elif r < 0.55:
        path, name = f"/products/{rng.randrange(1, 20_000)}", "Product"
    elif r < 0.8:
        path, name = f"/category/{rng.choice(CATEGORIES)}", "Category"
    elif r < 0.9:
        path, name = "/cart", "Cart"
    else:
        path, name = "/search", "Search"
    search = f"?q={rng.choice(CATEGORIES)}" if name == "Search" else ""
    ref = rng.choice(["https://www.google.com/", "", SITE + "/", "https://www.instagram.com/"])
    page = {"path": path, "referrer": ref, "search": search, "title": f"{name} | Example Shop",
            "url": SITE + path + search}  # fmt: skip
    return path, name, page


def _context(rng: random.Random, p: Person, ua: str, page: dict) -> dict:
    locale, tz = p.loc
    return {
        "library": {"name": "analytics.js", "version": "npm:next-1.72.0"},
        "page": page,
        "userAgent": ua,
        "locale": locale,
        "timezone": tz,
        "ip": f"203.0.113.{p.n % 250 + 1}",
    }


def _message(rng: random.Random, p: Person, i: int, t: float) -> dict:
    """Event i of person p. Anonymous-first people: n_pre_a anonymous events on device A, n_pre_b on device B,
    identify on A (the anonymous profile becomes known), identify on B (B's anonymous profile merges into it),
    then identified events. Others: identify (userId + anonymousId) first, then identified events."""
    msg: dict = {"messageId": _uuid(rng), "timestamp": _iso(t)}
    anon = p.anon_a
    user = p.user_id
    identify = False
    if p.anon_first:
        pre = p.n_pre_a + p.n_pre_b
        if i < pre:
            user = None
            anon = p.anon_a if i < p.n_pre_a else p.anon_b
        elif i == pre:
            identify = True
        elif i == pre + 1:
            identify, anon = True, p.anon_b
        else:
            anon = p.anon_a if rng.random() < 0.5 else p.anon_b
    elif i == 0:
        identify = True
    ua = p.ua_b if anon == p.anon_b else p.ua
    if user is not None:
        msg["userId"] = user
    msg["anonymousId"] = anon
    path, name, page = _page(rng)
    if identify:
        msg["type"] = "identify"
        msg["traits"] = {
            "email": p.email,
            "firstName": p.first.title(),
            "lastName": p.last.title(),
            "plan": p.plan,
            "createdAt": _iso(t - 86_400 * (p.n % 700)),
        }
    elif rng.random() < 0.55:
        msg["type"] = "page"
        msg["name"] = name
        msg["properties"] = dict(page)
    else:
        msg["type"] = "track"
        ev = rng.choice(TRACK_EVENTS)
        msg["event"] = ev
        if ev == "Products Searched":
            msg["properties"] = {"query": rng.choice(CATEGORIES)}
        else:
            price = round(rng.uniform(5, 250), 2)
            msg["properties"] = {
                "product_id": f"sku-{rng.randrange(1, 20_000):05d}",
                "category": rng.choice(CATEGORIES),
                "price": price,
                "quantity": rng.randint(1, 3),
                "currency": "EUR",
            }
            if ev == "Order Completed":
                msg["properties"]["order_id"] = _uuid(rng)[:18]
                msg["properties"]["revenue"] = price
    msg["context"] = _context(rng, p, ua, page)
    return msg


def make_workload(n_events: int, n_people: int, anon_share: float, seed: int, batch_size: int) -> tuple[list, dict]:
    """Batches as pre-serialised /v1/batch bodies, in timestamp order, plus a description of the workload."""
    rng = random.Random(seed)
    n_anon = round(n_people * anon_share)
    anon_idx = set(rng.sample(range(n_people), n_anon))
    mins = [4 if i in anon_idx else 1 for i in range(n_people)]
    if sum(mins) > n_events:
        raise SystemExit(f"{n_events} events are too few for {n_people} people (need >= {sum(mins)})")
    counts = _counts(rng, mins, n_events)
    people: list[Person] = []
    timeline: list[tuple[float, int, int]] = []
    for n in range(n_people):
        p = Person()
        p.n = n
        p.anon_first = n in anon_idx
        p.user_id = f"u{n:07d}"
        p.anon_a, p.anon_b = _uuid(rng), _uuid(rng)
        p.first, p.last = rng.choice(FIRST), rng.choice(LAST)
        p.email = f"{p.first}.{p.last}.{n}@{rng.choice(DOMAINS)}"
        p.ua, p.ua_b = rng.choice(USER_AGENTS), rng.choice(USER_AGENTS)
        p.loc = rng.choice(LOCALES)
        p.plan = rng.choice(["free", "free", "plus", "pro"])
        c = counts[n]
        if p.anon_first:
            pre = max(2, min(c - 2, round(0.4 * c)))
            p.n_pre_a = (pre + 1) // 2
            p.n_pre_b = pre - p.n_pre_a
        else:
            p.n_pre_a = p.n_pre_b = 0
        people.append(p)
        t = rng.uniform(0, WINDOW_SECONDS)
        for i in range(c):
            timeline.append((t, n, i))
            t += rng.expovariate(1 / 40)  # ~40 s between a person's events
    timeline.sort()
    batches: list[bytes] = []
    types: dict[str, int] = {}
    current: list[dict] = []
    max_body = 0
    for t, n, i in timeline:
        m = _message(rng, people[n], i, t)
        types[m["type"]] = types.get(m["type"], 0) + 1
        current.append(m)
        if len(current) == batch_size:
            batches.append(orjson.dumps({"batch": current}))
            max_body = max(max_body, len(batches[-1]))
            current = []
    if current:
        batches.append(orjson.dumps({"batch": current}))
        max_body = max(max_body, len(batches[-1]))
    total_bytes = sum(len(b) for b in batches)
    desc = {
        "events": n_events,
        "people": n_people,
        "anonymous_first_people": n_anon,
        "expected_merges": n_anon,  # the identify on device B merges B's anonymous profile into the known one
        "seed": seed,
        "batch_size": batch_size,
        "batches": len(batches),
        "types": types,
        "avg_event_bytes": round(total_bytes / n_events),
        "max_body_bytes": max_body,
    }
    if max_body > 500 * 1024:
        raise SystemExit(f"a batch body is {max_body} bytes, over chorus' 500 KB limit: use a smaller --batch")
    return batches, desc


# --- baseline: raw inserts of the same rows -------------------------------------------------------------------
COLS = ("workspace_id", "message_id", "type", "event", "channel", "user_id", "anonymous_id", "timestamp",
        "received_at", "source_id", "trusted", "payload")  # fmt: skip


def chorus_rows(batches: list[bytes]) -> list[dict]:
    """The row dicts `chorus.collect.ingest.store` would insert, built with chorus' own normalisation."""
    from chorus.collect.messages import Event, merge_batch_defaults, normalise

    ws_id, src_id = "ws_" + uuid.uuid4().hex[:20], "src_" + uuid.uuid4().hex[:20]
    received_at = datetime.now(UTC)
    rows = []
    for body in batches:
        doc = orjson.loads(body)
        for item in doc["batch"]:
            e = normalise(merge_batch_defaults(item, doc), received_at=received_at, source_kind="client")
            assert isinstance(e, Event), e
            rows.append({
                "workspace_id": ws_id, "message_id": e.message_id, "type": e.type, "event": e.event,
                "channel": e.channel, "user_id": e.user_id, "anonymous_id": e.anonymous_id,
                "timestamp": e.timestamp, "received_at": e.received_at, "source_id": src_id,
                "trusted": False, "payload": e.payload,
            })  # fmt: skip
    return rows


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None)


def db_tuples(rows: list[dict], engine: str) -> list[tuple]:
    """Values exactly as chorus' column types send them: naive UTC datetimes (SQLite: SQLAlchemy's text format),
    booleans (SQLite: 0/1), payload serialised with orjson."""
    out = []
    for r in rows:
        payload = orjson.dumps(r["payload"], option=orjson.OPT_NON_STR_KEYS).decode()
        ts, rcv = _naive(r["timestamp"]), _naive(r["received_at"])
        if engine == "sqlite":
            ts, rcv = ts.strftime("%Y-%m-%d %H:%M:%S.%f"), rcv.strftime("%Y-%m-%d %H:%M:%S.%f")
            trusted = int(r["trusted"])
        else:
            trusted = r["trusted"]
        out.append((r["workspace_id"], r["message_id"], r["type"], r["event"], r["channel"], r["user_id"],
                    r["anonymous_id"], ts, rcv, r["source_id"], trusted, payload))  # fmt: skip
    return out


def raw_sqlite(db: FreshDB, rows: list[tuple], batch: int) -> float:
    """Seconds to insert rows with bare executemany, one transaction per `batch` rows (chorus' pragmas)."""
    import sqlite3

    con = sqlite3.connect(db.path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000", "foreign_keys=ON"):
        con.execute(f"PRAGMA {pragma}")
    sql = f"INSERT INTO events ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})"
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows[i : i + batch])
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == len(rows)
    con.close()
    return elapsed


def raw_pg(db: FreshDB, rows: list[tuple], batch: int | None) -> float:
    """Seconds to COPY rows in, `batch` rows per COPY, committed per COPY (None: one COPY, one commit)."""
    import psycopg

    cols = ", ".join(f'"{c}"' for c in COLS)
    sql = f"COPY events ({cols}) FROM STDIN"
    step = batch or len(rows)
    with psycopg.connect(db.dsn) as conn:
        t0 = time.perf_counter()
        for i in range(0, len(rows), step):
            with conn.cursor() as cur, cur.copy(sql) as cp:
                for r in rows[i : i + step]:
                    cp.write_row(r)
            conn.commit()
        elapsed = time.perf_counter() - t0
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == len(rows)
    return elapsed


def raw_update(db: FreshDB, n: int, chunk: int = 2000) -> float:
    """Seconds to set events.profile_id on every row, `chunk` rows per transaction, the way a resolver at least
    has to if it writes the profile onto each event (SQLite: executemany; PostgreSQL: COPY into a temp table +
    UPDATE ... FROM, like chorus.store.bulk.update_rows). A reference for what the current design costs the
    database, not something chorus is compared with in the table."""
    rng = random.Random(7)
    pids = ["p_" + uuid.UUID(int=rng.getrandbits(128)).hex[:24] for _ in range(max(1, n // 10))]
    if db.engine == "sqlite":
        import sqlite3

        con = sqlite3.connect(db.path, isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
            con.execute(f"PRAGMA {pragma}")
        seqs = [r[0] for r in con.execute("SELECT seq FROM events ORDER BY seq")]
        t0 = time.perf_counter()
        for i in range(0, len(seqs), chunk):
            con.execute("BEGIN IMMEDIATE")
            con.executemany(
                "UPDATE events SET profile_id = ? WHERE seq = ?", [(rng.choice(pids), q) for q in seqs[i : i + chunk]]
            )
            con.execute("COMMIT")
        elapsed = time.perf_counter() - t0
        con.close()
        return elapsed
    import psycopg

    with psycopg.connect(db.dsn) as conn:
        seqs = [r[0] for r in conn.execute("SELECT seq FROM events ORDER BY seq")]
        conn.execute("CREATE TEMP TABLE _u (seq bigint, profile_id varchar(40))")
        conn.commit()
        t0 = time.perf_counter()
        for i in range(0, len(seqs), chunk):
            with conn.cursor() as cur:
                with cur.copy("COPY _u (seq, profile_id) FROM STDIN") as cp:
                    for q in seqs[i : i + chunk]:
                        cp.write_row((q, rng.choice(pids)))
                cur.execute("UPDATE events AS t SET profile_id = s.profile_id FROM _u AS s WHERE t.seq = s.seq")
                cur.execute("TRUNCATE _u")
            conn.commit()
        return time.perf_counter() - t0


def baseline(engine: str, batches: list[bytes], batch: int, tmpdir: Path) -> dict:
    log(f"[{engine}] baseline: building rows with chorus.collect.messages.normalise (not timed)")
    rows = db_tuples(chorus_rows(batches), engine)
    n = len(rows)
    out = {"rows": n}
    with FreshDB(engine, "raw", tmpdir) as db:
        db_upgrade(db.url)
        if engine == "sqlite":
            log(f"[{engine}] baseline: executemany, {batch} rows per transaction")
            secs = raw_sqlite(db, rows, batch)
            out["method"] = f"sqlite3 executemany, {batch}-row transactions, WAL + synchronous=NORMAL"
        else:
            log(f"[{engine}] baseline: COPY FROM STDIN, {batch} rows per COPY + commit")
            secs = raw_pg(db, rows, batch)
            out["method"] = f"psycopg COPY FROM STDIN, {batch} rows per COPY, commit per COPY"
        out["seconds"] = round(secs, 3)
        out["ev_per_s"] = round(n / secs)
        out["db_mb"] = round(db.size_mb(), 1)
        log(f"[{engine}] baseline reference: set profile_id on every row, 2000 rows per transaction")
        upd = raw_update(db, n)
        out["update_profile_id_seconds"] = round(upd, 3)
        out["update_profile_id_ev_per_s"] = round(n / upd)
        out["insert_then_update_ev_per_s"] = round(n / (secs + upd))
    with FreshDB(engine, "rawbig", tmpdir) as db:
        db_upgrade(db.url)
        log(f"[{engine}] baseline reference: all rows in one transaction")
        secs = raw_sqlite(db, rows, n) if engine == "sqlite" else raw_pg(db, rows, None)
        out["one_txn_seconds"] = round(secs, 3)
        out["one_txn_ev_per_s"] = round(n / secs)
        out["one_txn_method"] = "one executemany, one transaction" if engine == "sqlite" else "one COPY, one commit"
    del rows
    gc.collect()
    return out


# --- chorus end to end ------------------------------------------------------------------------------------------
async def send_all(base_url: str, write_key: str, batches: list[bytes], concurrency: int, state: dict) -> None:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Content-Type": "application/json"}
    it = iter(range(len(batches)))
    latencies: list[float] = []

    async with httpx.AsyncClient(
        base_url=base_url, auth=(write_key, ""), limits=limits, timeout=httpx.Timeout(300.0), headers=headers
    ) as client:

        async def worker():
            for i in it:
                body = batches[i]
                while True:
                    t0 = time.perf_counter()
                    r = await client.post("/v1/batch", content=body)
                    if r.status_code == 429:
                        state["429"] += 1
                        await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                        continue
                    if r.status_code != 200:
                        raise RuntimeError(f"batch {i}: HTTP {r.status_code}: {r.text[:300]}")
                    doc = r.json()
                    state["rejected"] += len(doc.get("rejected", ()))
                    latencies.append(time.perf_counter() - t0)
                    state["last_ok"] = time.perf_counter()
                    state["sent"] += 1
                    break

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    latencies.sort()
    state["latency_ms"] = {
        "p50": round(latencies[len(latencies) // 2] * 1000, 1),
        "p95": round(latencies[int(len(latencies) * 0.95)] * 1000, 1),
        "max": round(latencies[-1] * 1000, 1),
    }


def run_chorus(engine: str, label: str, batches: list[bytes], desc: dict, args, tmpdir: Path) -> dict:
    n = desc["events"]
    with FreshDB(engine, label, tmpdir) as db:
        ws = create_workspace(db.url)
        logf = tmpdir / f"serve-{engine}-{label}.log"
        server = ChorusServer(db.url, logf)
        spy = None
        try:
            server.wait_ready()
            poller = Poller(db)
            mem = MemSampler(server.pid)
            mem.start()
            dbcpu = DbCpuSampler(db)
            dbcpu.sample()
            dbcpu0 = sum(dbcpu.cpu.values())
            dbcpu.start()
            if args.py_spy:
                out = Path(args.py_spy) / f"ingest-{engine}-{label}.txt"
                out.parent.mkdir(parents=True, exist_ok=True)
                spy = PySpy(server.pid, out)
            state = {"sent": 0, "429": 0, "rejected": 0, "last_ok": None}
            cpu0_srv = sum(cpu_seconds(p) for p in proc_tree(server.pid))
            cpu0_me = sum(os.times()[:2])
            sys0, steal0 = system_cpu()
            log(f"[{engine}/{label}] sending {len(batches)} batches ({n} events) with {args.concurrency} connections")
            t0 = time.perf_counter()
            backlog_peak = 0
            loop_err: list[BaseException] = []

            import threading

            def client():
                try:
                    asyncio.run(send_all(server.base_url, ws["write_key"], batches, args.concurrency, state))
                except BaseException as exc:  # noqa: BLE001
                    loop_err.append(exc)

            th = threading.Thread(target=client, daemon=True)
            th.start()
            next_report = t0 + 30
            next_count = t0
            while th.is_alive():
                th.join(0.5)
                if time.perf_counter() >= next_count:  # the backlog is sampled every 10 s: a count is not free
                    next_count += 10
                    backlog_peak = max(backlog_peak, poller.pending())
                if time.perf_counter() >= next_report:
                    next_report += 30
                    log(f"[{engine}/{label}] {state['sent'] * args.batch}/{n} accepted, backlog {backlog_peak} max")
                if server.proc.poll() is not None:
                    raise RuntimeError(f"server died; see {logf}")
            if loop_err:
                raise loop_err[0]
            t_acc = state["last_ok"] - t0
            cpu_acc_srv = sum(cpu_seconds(p) for p in proc_tree(server.pid)) - cpu0_srv
            log(f"[{engine}/{label}] all accepted in {t_acc:.1f}s ({n / t_acc:,.0f} ev/s); waiting for resolution")
            while poller.any_pending():
                if time.perf_counter() >= next_report:
                    next_report += 30
                    log(f"[{engine}/{label}] {poller.pending()} pending")
                if server.proc.poll() is not None:
                    raise RuntimeError(f"server died; see {logf}")
                time.sleep(0.1 if n <= 100_000 else 0.25)
            t_res = time.perf_counter() - t0
            cpu_srv = sum(cpu_seconds(p) for p in proc_tree(server.pid)) - cpu0_srv
            cpu_me = sum(os.times()[:2]) - cpu0_me
            sys1, steal1 = system_cpu()
            mem.stop()
            cpu_db = dbcpu.stop() - dbcpu0
            if spy:
                spy.stop()
            stored = poller.scalar("SELECT count(*) FROM events")
            merges = poller.scalar("SELECT count(*) FROM merges")
            profiles = poller.scalar("SELECT count(*) FROM profiles")
            idents = poller.scalar("SELECT count(*) FROM identifiers")
            poller.close()
        finally:
            if spy:
                spy.stop()
            server.stop()
        replays = server.log_count("replayed identity component")
        failures = server.log_count("identity resolution batch failed")
        res = {
            "events": n,
            "stored": stored,
            "rejected": state["rejected"],
            "http_429": state["429"],
            "accepted_seconds": round(t_acc, 3),
            "accepted_ev_per_s": round(n / t_acc),
            "resolved_seconds": round(t_res, 3),
            "resolved_ev_per_s": round(n / t_res),
            "server_peak_rss_mb": round(mem.peak_mb, 1),
            "backlog_peak": backlog_peak,
            "latency_ms": state["latency_ms"],
            "merges": merges,
            "replays": replays,
            "worker_failures": failures,
            "profiles": profiles,
            "identifiers": idents,
            "cpu_seconds": {
                "server_while_accepting": round(cpu_acc_srv, 1),
                "server_total": round(cpu_srv, 1),
                "bench_client": round(cpu_me, 1),
                "postgres_backends": round(cpu_db, 1) if engine == "postgresql" else None,
                "machine_busy": round(sys1 - sys0, 1),
                "other_tenants_and_system": round((sys1 - sys0) - cpu_srv - cpu_me - cpu_db, 1),
                "wall": round(t_res, 1),
                "steal": round(steal1 - steal0, 1),
            },
            "db_mb": round(db.size_mb(), 1),
            "sqlite_wal_mb": round(db.wal_mb(), 1) if engine == "sqlite" else None,
        }
        if args.keep_logs:
            res["server_log"] = str(logf)
    if stored != n:
        log(f"[{engine}/{label}] WARNING: {stored} events stored, expected {n}")
    log(
        f"[{engine}/{label}] accepted {res['accepted_ev_per_s']:,} ev/s, resolved {res['resolved_ev_per_s']:,} ev/s, "
        f"peak RSS {res['server_peak_rss_mb']} MB, {merges} merges, {replays} replays"
    )
    return res


def run_split(engine: str, batches: list[bytes], desc: dict, args, tmpdir: Path) -> dict:
    """Diagnostic: ingestion with no worker (`serve --no-worker`), then `chorus worker` alone draining the backlog."""
    n = desc["events"]
    with FreshDB(engine, "split", tmpdir) as db:
        ws = create_workspace(db.url)
        server = ChorusServer(db.url, tmpdir / f"serve-{engine}-split.log", worker=False)
        try:
            server.wait_ready()
            mem = MemSampler(server.pid)
            mem.start()
            state = {"sent": 0, "429": 0, "rejected": 0, "last_ok": None}
            c0 = cpu_seconds(server.pid)
            t0 = time.perf_counter()
            asyncio.run(send_all(server.base_url, ws["write_key"], batches, args.concurrency, state))
            t_acc = state["last_ok"] - t0
            c_acc = cpu_seconds(server.pid) - c0
            mem.stop()
        finally:
            server.stop()
        log(f"[{engine}/split] ingest only: {n / t_acc:,.0f} ev/s; now `chorus worker` alone")
        poller = Poller(db)
        worker = ChorusServer(db.url, tmpdir / f"worker-{engine}-split.log", mode="worker")
        try:
            worker.wait_ready()
            wmem = MemSampler(worker.pid)
            wmem.start()
            w0 = cpu_seconds(worker.pid)
            t1 = time.perf_counter()
            while poller.any_pending():
                time.sleep(0.25)
                if worker.proc.poll() is not None:
                    raise RuntimeError("worker died")
            t_res = time.perf_counter() - t1
            w_cpu = cpu_seconds(worker.pid) - w0
            wmem.stop()
        finally:
            poller.close()
            worker.stop()
    out = {
        "ingest_only_ev_per_s": round(n / t_acc),
        "ingest_only_server_cpu_s": round(c_acc, 1),
        "ingest_only_peak_rss_mb": round(mem.peak_mb, 1),
        "worker_only_ev_per_s": round(n / t_res),
        "worker_only_cpu_s": round(w_cpu, 1),
        "worker_only_peak_rss_mb": round(wmem.peak_mb, 1),
    }
    log(f"[{engine}/split] {out}")
    return out


# --- report -----------------------------------------------------------------------------------------------------
def summary_row(engine: str, r: dict) -> dict:
    raw = r["baseline"]["ev_per_s"]
    m, f = r["chorus"], r["chorus_no_merges"]
    slowdown = f["resolved_ev_per_s"] / m["resolved_ev_per_s"] if f else None
    row = {
        "engine": engine,
        "chorus_accepted_ev_per_s": m["accepted_ev_per_s"],
        "chorus_resolved_ev_per_s": m["resolved_ev_per_s"],
        "raw_insert_ev_per_s": raw,
        "ratio_accepted_raw": round(m["accepted_ev_per_s"] / raw, 3),
        "ratio_resolved_raw": round(m["resolved_ev_per_s"] / raw, 3),
        "server_peak_rss_mb": max(m["server_peak_rss_mb"], f["server_peak_rss_mb"] if f else 0),
        "merge_slowdown": round(slowdown, 2) if slowdown else None,
    }
    row["bar"] = {
        "resolved_at_least_half_raw": row["ratio_resolved_raw"] >= 0.5,
        "peak_rss_under_500mb": row["server_peak_rss_mb"] < 500,
        "merge_slowdown_under_2x": slowdown is not None and slowdown < 2,
    }
    return row


def print_table(rows: list[dict]) -> None:
    heads = ["engine", "chorus accepted ev/s", "chorus resolved ev/s", "raw insert ev/s", "accepted/raw",
             "resolved/raw", "server peak RSS MB", "merge slowdown"]  # fmt: skip
    keys = ["engine", "chorus_accepted_ev_per_s", "chorus_resolved_ev_per_s", "raw_insert_ev_per_s",
            "ratio_accepted_raw", "ratio_resolved_raw", "server_peak_rss_mb", "merge_slowdown"]  # fmt: skip

    def fmt(v):
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.2f}" if v < 100 else f"{v:,.0f}"
        return str(v)

    cells = [heads] + [[fmt(r[k]) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(heads))]
    line = "+".join("-" * (w + 2) for w in widths)
    print()
    for j, c in enumerate(cells):
        print(
            "| "
            + " | ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True)))
            + " |"
        )
        if j == 0:
            print("|" + line + "|")
    print()
    for r in rows:
        bar = ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in r["bar"].items())
        print(f"{r['engine']}: bar: {bar}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events per run (default 1,000,000)")
    ap.add_argument("--people", type=int, default=100_000, help="distinct people (default 100,000)")
    ap.add_argument("--batch", type=int, default=500, help="events per /v1/batch request and per raw transaction")
    ap.add_argument("--concurrency", type=int, default=4, help="concurrent client connections (default 4)")
    ap.add_argument("--anon-share", type=float, default=0.2, help="share of anonymous-first people (default 0.2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 50,000 events, 5,000 people")
    ap.add_argument("--no-merge-free", action="store_true", help="skip the merge-free variant")
    ap.add_argument("--no-baseline", action="store_true", help="skip the raw-insert baseline")
    ap.add_argument("--baseline-only", action="store_true", help="only the raw baseline (JSON, no table)")
    ap.add_argument("--split", action="store_true",
                    help="also run ingest-only (serve --no-worker) then worker-only, for diagnosis")  # fmt: skip
    ap.add_argument("--py-spy", metavar="DIR", help="record a py-spy profile (collapsed stacks) of each server run")
    ap.add_argument("--keep-logs", action="store_true", help="keep the server logs (their paths go in the JSON)")
    add_run_args(ap, out_help="directory for ingest-<engine>.json")
    ap.add_argument("--live-code", action="store_true",
                    help="run the installed chorus as it is on disk at each server start (default: a snapshot "
                         "taken at the start, so all runs use the same code)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.people = 50_000, 5_000
    engines = engines_of(ap, args.engines)

    tmpdir = make_tmpdir(keep=args.keep_logs)  # the logs kept are in it
    code = None if args.live_code and not args.code else snapshot_code(tmpdir, args.code)
    if code:
        log(f"code: snapshot of {code['source']} (HEAD {code['git_head']}, files sha256 {code['sha256']})")
    log(f"workload: {args.events:,} events, {args.people:,} people, {args.anon_share:.0%} anonymous first, "
        f"seed {args.seed}; temp dir {tmpdir}")  # fmt: skip
    t = time.perf_counter()
    batches, desc = make_workload(args.events, args.people, args.anon_share, args.seed, args.batch)
    log(f"workload built in {time.perf_counter() - t:.1f}s: {desc}")
    batches_nm, desc_nm = None, None
    if not args.no_merge_free and not args.baseline_only:
        batches_nm, desc_nm = make_workload(args.events, args.people, 0.0, args.seed + 1, args.batch)
        log(f"merge-free workload built: {desc_nm['types']}")

    rows = []
    try:
        for engine in engines:
            result: dict = {
                "engine": engine,
                "config": {"events": args.events, "people": args.people, "batch": args.batch,
                           "concurrency": args.concurrency, "seed": args.seed, "cores": os.cpu_count(),
                           "python": sys.version.split()[0], "started": datetime.now(UTC).isoformat()},
                "code": code,
                "workload": desc,
                "workload_no_merges": desc_nm,
            }  # fmt: skip
            result["baseline"] = None if args.no_baseline else baseline(engine, batches, args.batch, tmpdir)
            if args.baseline_only:
                write_json(Path(args.out) / f"ingest-{engine}-baseline.json", result)
                continue
            result["chorus"] = run_chorus(engine, "merges", batches, desc, args, tmpdir)
            result["chorus_no_merges"] = (
                run_chorus(engine, "nomerges", batches_nm, desc_nm, args, tmpdir) if batches_nm else None
            )
            if args.split:
                result["split"] = run_split(engine, batches, desc, args, tmpdir)
            if result["baseline"]:
                result["summary"] = summary_row(engine, result)
                rows.append(result["summary"])
            path = Path(args.out) / f"ingest-{engine}.json"
            write_json(path, result)
            log(f"[{engine}] wrote {path}")
    finally:
        if code:
            shutil.rmtree(code["snapshot"], ignore_errors=True)
        if not args.keep_logs:
            for f in tmpdir.glob("*.log"):
                f.unlink()
            try:
                tmpdir.rmdir()
            except OSError:
                pass
    if rows:
        print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
