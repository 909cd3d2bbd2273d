#!/usr/bin/env python
"""Batch segment computation: ``segments.compile.members`` for 20 segments, beside the same 20 questions answered by
hand-written SQL on the same engine, in the same run (the limit).

The workload (deterministic, ``--seed``): ``--profiles`` N profiles and 10·N events written through the store's bulk
paths (``store.bulk.insert_rows``: COPY on PostgreSQL), with traits (plan, age, a sign-up instant, a birthday), a time
zone among six, e-mail addresses for 80 %, consent denials for 12 %, computed lifetime values for 60 %, messages with
statuses for 30 % and a static list. Events: product views, cart adds and orders with properties (category, price,
total with cents), page views, an identify now and then, and Chorus' own outbound records, over 180 days on the web,
the app, in stores, by e-mail and on the phone.

The 20 segments mix traits, windowed behaviour with property filters, sums and averages, channels, messages,
consent, buckets and segments of segments. Both sides compute them in dependency order and the members of the ones
referred to are written to ``segment_members`` between them (not timed). Prints, per engine, the seconds of each
segment on both sides, whether the answers are the same, and the totals.

    python bench/segments.py                       # 20,000 profiles, both engines (about a minute)
    python bench/segments.py --profiles 1000000    # the issue's bar: 1,000,000 profiles, 10,000,000 events
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments.compile import members, zones_of  # noqa: E402
from chorus.segments.many import members_many  # noqa: E402
from chorus.store import bulk  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.store.tables import (  # noqa: E402
    computed_traits,
    events,
    identifiers,
    list_members,
    message_status,
    messages,
    profiles,
    segment_members,
)
from chorus.timeutil import iso  # noqa: E402

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ZONES = ["Europe/Paris", "America/New_York", "UTC", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo"]
CATEGORIES = ["laptops", "phones", "tv", "audio", "cameras"]
CHUNK = 20_000

SEGMENTS: dict[str, dict] = {
    "gold": {"trait": {"name": "plan", "equals": "gold"}},
    "thirties": {"trait": {"name": "age", "between": [30, 39]}},
    "new": {"trait": {"name": "signup", "within_last": "30d"}},
    "birthday": {"trait": {"name": "birthday", "anniversary": {"next_days": 7}}},
    "high_clv": {"trait": {"name": "computed.clv_12m", "gt": 500}},
    "browse_abandon": {"and": [
        {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                       "window": "7d", "times": {"gte": 3}}},
        {"not": {"or": [
            {"performed": {"event": "Product Added", "where": [{"property": "category", "equals": "laptops"}],
                           "window": "7d"}},
            {"performed": {"event": "Order Completed", "window": "7d"}}]}}]},
    "big_spenders": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                   "window": "90d", "gte": 500}},
    "big_baskets": {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total", "gte": 300}},
    "lapsed": {"and": [{"performed": {"event": "Order Completed"}},
                       {"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}}]},
    "webroomers": {"and": [
        {"performed": {"event": "Product Viewed", "channel_group": "online", "window": "30d"}},
        {"performed": {"event": "Order Completed", "channel_group": "offline", "window": "30d"}}]},
    "store_visitors": {"used_channel": {"channel": "store", "window": "30d"}},
    "multichannel": {"channel_count": {"gte": 3, "window": "90d"}},
    "last_online": {"last_channel": {"in": ["web", "app"]}},
    "omnichannel": {"channel_mix": {"equals": "both", "window": "180d"}},
    "opened_bf": {"message": {"status": ["opened", "clicked"], "campaign": "bf", "window": "30d"}},
    "ignored_bf": {"and": [{"message": {"status": "received", "campaign": "bf"}},
                           {"not": {"message": {"status": ["opened", "clicked"], "campaign": "bf"}}}]},
    "reachable_offers": {"reachable": {"channel": "email", "topic": "offers"}},
    "vip_to_mail": {"and": [{"segment": "high_clv"}, {"segment": "reachable_offers"}, {"not": {"list": "staff"}}]},
    "gold_holdout": {"and": [{"segment": "gold"}, {"bucket": {"from": 0, "to": 10, "seed": "holdout"}}]},
    "laptop_buyers": {"last_value": {"event": "Order Completed", "property": "category", "equals": "laptops",
                                     "window": "180d"}},
}  # fmt: skip


# -- the workload -----------------------------------------------------------------------------------------------
def _event(rnd: random.Random, pid: str, i: int, k: int) -> dict:
    at = NOW - timedelta(seconds=rnd.randrange(180 * 86400))
    roll = rnd.random()
    channel = rnd.choices(["web", "app", "store", "email", "call_center"], [50, 25, 15, 7, 3])[0]
    props: dict = {}
    ctx: dict = {"channel": channel}
    if roll < 0.45:
        etype, name = "track", "Product Viewed"
        props = {"category": rnd.choice(CATEGORIES), "price": round(rnd.uniform(5, 900), 2)}
    elif roll < 0.6:
        etype, name = "track", "Product Added"
        props = {"category": rnd.choice(CATEGORIES), "price": round(rnd.uniform(5, 900), 2)}
    elif roll < 0.7:
        etype, name = "track", "Order Completed"
        props = {"category": rnd.choice(CATEGORIES), "total": round(rnd.uniform(5, 900), 2), "currency": "EUR"}
    elif roll < 0.93:
        etype, name = "page", "Home"
        ctx["page"] = {"path": "/"}
    elif roll < 0.97:
        etype, name = "identify", None
    else:
        etype, name = "track", "Message Sent"
        ctx = {"channel": "email", "direction": "outbound"}
        channel = "email"
    payload = {"type": etype, "messageId": f"e{i}-{k}", "timestamp": iso(at), "receivedAt": iso(at),
               "channel": channel, "userId": f"u{i}", "context": ctx}  # fmt: skip
    if etype == "track":
        payload["event"] = name
        payload["properties"] = props
    elif etype == "page":
        payload["name"] = name
        payload["properties"] = {"path": "/"}
    return {"workspace_id": None, "message_id": payload["messageId"], "type": etype, "event": name,
            "channel": channel, "user_id": f"u{i}", "anonymous_id": None, "timestamp": at, "received_at": at,
            "source_id": None, "trusted": True, "payload": payload, "profile_id": pid}  # fmt: skip


def load(engine, ws: str, n: int, seed: int) -> None:
    rnd = random.Random(seed)
    key = [iso(NOW - timedelta(days=400)), "m0"]
    for start in range(0, n, CHUNK):
        rows: dict[str, list] = {t: [] for t in ("p", "i", "e", "c", "m", "s", "l")}
        for i in range(start, min(n, start + CHUNK)):
            pid = f"p{i:08d}"
            traits = {"plan": rnd.choice(["gold", "silver", "bronze", "free"]), "age": rnd.randint(18, 80),
                      "signup": iso(NOW - timedelta(seconds=rnd.randrange(400 * 86400)))[:19] + "Z",
                      "birthday": f"{rnd.randint(1950, 2005)}-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"}
            consent = {}
            if rnd.random() < 0.1:
                consent["email:offers"] = {"status": "denied", "key": key, "source": "event:m0"}
            if rnd.random() < 0.02:
                consent["*:*"] = {"status": "denied", "key": key, "source": "event:m0"}
            has_email = rnd.random() < 0.8
            if has_email:
                traits["email"] = f"u{i}@example.com"
                rows["i"].append({"workspace_id": ws, "ident": f"email:u{i}@example.com", "profile_id": pid})
            rows["i"].append({"workspace_id": ws, "ident": f"user_id:u{i}", "profile_id": pid})
            state = {"traits": traits, "trait_at": {}, "sums": {}, "channels": {}, "consent": consent,
                     "attrs": {"timezone": [rnd.choice(ZONES), key]}}  # fmt: skip
            rows["p"].append({"id": pid, "workspace_id": ws, "created_at": NOW, "created_msg": "m", "links_max_at": NOW,
                              "links_max_msg": "m", "known": True, "first_seen": None, "last_seen": None,
                              "last_channel": None, "state": state, "updated_at": NOW})  # fmt: skip
            for k in range(10):
                e = _event(rnd, pid, i, k)
                e["workspace_id"] = ws
                rows["e"].append(e)
            if rnd.random() < 0.6:
                rows["c"].append({"workspace_id": ws, "profile_id": pid, "name": "clv_12m",
                                  "value": round(rnd.lognormvariate(5, 1), 2), "model": "bench", "computed_at": NOW})
            if rnd.random() < 0.3:
                mid = f"msg{i}"
                sent = NOW - timedelta(seconds=rnd.randrange(60 * 86400))
                rows["m"].append({"id": mid, "workspace_id": ws, "idempotency_key": mid, "request_hash": "h",
                                  "profile_id": pid, "template": "promo", "kind": "marketing", "topic": "offers",
                                  "channel": "email", "status": "delivered", "choice": {}, "attempts": 1,
                                  "campaign_id": rnd.choice(["bf", "spring"]), "created_at": sent,
                                  "updated_at": sent})  # fmt: skip
                statuses = ["queued", "sent", "delivered"] + (["opened"] if rnd.random() < 0.4 else [])
                for j, status in enumerate(statuses):
                    rows["s"].append({"message_id": mid, "workspace_id": ws, "status": status,
                                      "at": sent + timedelta(minutes=j), "detail": {}})  # fmt: skip
            if rnd.random() < 0.02:
                rows["l"].append({"workspace_id": ws, "list_id": "staff", "profile_id": pid, "added_at": NOW})
        with engine.begin() as conn:
            for t, table in (("p", profiles), ("i", identifiers), ("e", events), ("c", computed_traits),
                             ("m", messages), ("s", message_status), ("l", list_members)):  # fmt: skip
                bulk.insert_rows(conn, table, rows[t])
        print(f"  loaded {min(n, start + CHUNK):,} profiles", file=sys.stderr, flush=True)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


# -- the same questions in hand-written SQL ------------------------------------------------------------------------
def hand_sql(dialect: str) -> dict[str, str]:
    pg = dialect == "postgresql"

    def prop(name: str, alias: str = "e") -> str:
        if pg:
            return f"({alias}.payload->'properties'->>'{name}')"
        return f"json_extract({alias}.payload, '$.properties.{name}')"

    def trait(name: str) -> str:
        return f"(p.state->'traits'->>'{name}')" if pg else f"json_extract(p.state, '$.traits.{name}')"

    def num(name: str) -> str:
        return f"({prop(name)})::numeric" if pg else prop(name)

    outbound = ("(e.payload->'context'->>'direction') IS DISTINCT FROM 'outbound'" if pg
                else "json_extract(e.payload, '$.context.direction') IS NOT 'outbound'")  # fmt: skip
    ev = "SELECT e.profile_id FROM events e WHERE e.workspace_id = :ws AND e.timestamp <= :now"

    def window(d: int) -> str:
        return f" AND e.timestamp > :c{d}"

    tz = "p.state->'attrs'->'timezone'->>0" if pg else "json_extract(p.state, '$.attrs.timezone[0]')"
    clv = "(c.value)::numeric" if pg else "json_extract(c.value, '$')"
    holdout = ("('x' || substr(encode(sha256(convert_to('holdout:' || profile_id, 'UTF8')), 'hex'), 1, 8))"
               "::bit(32)::bigint % 100 < 10" if pg else "bench_bucket('holdout:' || profile_id) < 10")

    def md(d: int) -> str:
        if pg:
            local = f"(CAST(:now AS timestamp) AT TIME ZONE 'UTC') AT TIME ZONE ({tz})"
            return f"to_char({local} + interval '{d} days', 'MM-DD')"
        return f"strftime('%m-%d', :now, '+{d} days')"

    return {
        "gold": f"SELECT p.id FROM profiles p WHERE p.workspace_id = :ws AND {trait('plan')} = 'gold'",
        "thirties": f"SELECT p.id FROM profiles p WHERE p.workspace_id = :ws AND "
                    f"{'(' + trait('age') + ')::numeric' if pg else trait('age')} BETWEEN 30 AND 39",
        "new": f"SELECT p.id FROM profiles p WHERE p.workspace_id = :ws AND {trait('signup')} <= :now_iso "
               f"AND {trait('signup')} > :now30_iso",
        # a person writing this takes the local dates in SQL (the server's zone database; SQLite: UTC only)
        "birthday": f"SELECT p.id FROM profiles p WHERE p.workspace_id = :ws AND substr({trait('birthday')}, 6, 5) "
                    f"IN ({', '.join(md(d) for d in range(8))})",
        "high_clv": "SELECT c.profile_id FROM computed_traits c WHERE c.workspace_id = :ws AND c.name = 'clv_12m' "
                    f"AND {clv} > 500",
        "browse_abandon": f"{ev} AND e.event = 'Product Viewed' AND {prop('category')} = 'laptops'{window(7)} "
                          f"GROUP BY e.profile_id HAVING count(*) >= 3 EXCEPT {ev} AND ((e.event = 'Product Added' "
                          f"AND {prop('category')} = 'laptops') OR e.event = 'Order Completed'){window(7)}",
        "big_spenders": f"{ev} AND e.event = 'Order Completed'{window(90)} GROUP BY e.profile_id "
                        f"HAVING sum({num('total')}) >= 500",
        "big_baskets": f"{ev} AND e.event = 'Order Completed' GROUP BY e.profile_id HAVING avg({num('total')}) >= 300",
        "lapsed": f"{ev} AND e.event = 'Order Completed' EXCEPT {ev} AND e.event = 'Order Completed'{window(60)}",
        "webroomers": f"{ev} AND e.event = 'Product Viewed' AND e.channel IN ('web', 'app', 'email'){window(30)} "
                      f"INTERSECT {ev} AND e.event = 'Order Completed' AND e.channel IN ('store', 'call_center')"
                      f"{window(30)}",
        "store_visitors": f"{ev} AND e.channel = 'store' AND {outbound}{window(30)}",
        "multichannel": f"{ev} AND {outbound} AND e.channel IN ('web', 'app', 'store', 'email', 'call_center')"
                        f"{window(90)} GROUP BY e.profile_id HAVING count(DISTINCT e.channel) >= 3",
        "last_online": f"SELECT profile_id FROM (SELECT e.profile_id, e.channel, row_number() OVER (PARTITION BY "
                       f"e.profile_id ORDER BY e.timestamp DESC, e.channel DESC) rn FROM events e WHERE "
                       f"e.workspace_id = :ws AND e.timestamp <= :now AND e.profile_id IS NOT NULL AND {outbound}) x "
                       f"WHERE rn = 1 AND channel IN ('web', 'app')",
        "omnichannel": f"{ev} AND {outbound} AND e.channel IN ('web', 'app', 'email'){window(180)} INTERSECT "
                       f"{ev} AND {outbound} AND e.channel IN ('store', 'call_center'){window(180)}",
        "opened_bf": "SELECT m.profile_id FROM messages m JOIN message_status s ON s.message_id = m.id "
                     "WHERE m.workspace_id = :ws AND m.campaign_id = 'bf' AND s.status IN ('opened', 'clicked') "
                     "AND s.at <= :now AND s.at > :c30",
        "ignored_bf": "SELECT m.profile_id FROM messages m JOIN message_status s ON s.message_id = m.id "
                      "WHERE m.workspace_id = :ws AND m.campaign_id = 'bf' AND s.status IN ('sent', 'delivered') "
                      "AND s.at <= :now EXCEPT SELECT m.profile_id FROM messages m JOIN message_status s ON "
                      "s.message_id = m.id WHERE m.workspace_id = :ws AND m.campaign_id = 'bf' AND s.status IN "
                      "('opened', 'clicked') AND s.at <= :now",
        "reachable_offers": "SELECT p.id FROM profiles p WHERE p.workspace_id = :ws AND EXISTS (SELECT 1 FROM "
                            "identifiers i WHERE i.workspace_id = :ws AND i.profile_id = p.id AND i.ident LIKE "
                            "'email:%') AND NOT EXISTS (SELECT 1 FROM " + (
                                "jsonb_each(p.state->'consent') c WHERE c.value->>'status' = 'denied' AND c.key IN "
                                if pg else "json_each(p.state, '$.consent') c WHERE json_extract(c.value, '$.status') "
                                "= 'denied' AND c.key IN ") +
                            "('email:*', '*\\:*', 'email:offers', '*\\:offers', 'email:marketing', '*\\:marketing'))",
        "vip_to_mail": "SELECT profile_id FROM segment_members WHERE workspace_id = :ws AND segment_id = 'high_clv' "
                       "INTERSECT SELECT profile_id FROM segment_members WHERE workspace_id = :ws AND segment_id = "
                       "'reachable_offers' EXCEPT SELECT profile_id FROM list_members WHERE workspace_id = :ws AND "
                       "list_id = 'staff'",
        "gold_holdout": "SELECT profile_id FROM segment_members WHERE workspace_id = :ws AND segment_id = 'gold' AND "
                        + holdout,
        "laptop_buyers": f"SELECT profile_id FROM (SELECT e.profile_id, {prop('category')} AS c, row_number() OVER "
                         f"(PARTITION BY e.profile_id ORDER BY e.timestamp DESC, e.message_id DESC) rn FROM events e "
                         f"WHERE e.workspace_id = :ws AND e.event = 'Order Completed' AND e.timestamp <= :now"
                         f"{window(180)} AND {prop('category')} IS NOT NULL) x WHERE rn = 1 AND c = 'laptops'",
    }  # fmt: skip


# -- running ----------------------------------------------------------------------------------------------------------
def run(engine_name: str, n: int, seed: int, tmp: Path, variants: bool) -> None:
    with FreshDB(engine_name, "segments", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        started = time.perf_counter()
        load(engine, ws, n, seed)
        print(f"{engine_name}: {n:,} profiles, {10 * n:,} events loaded in {time.perf_counter() - started:.0f} s",
              flush=True)  # fmt: skip
        order = r.check_references({sid: r.parse(rule) for sid, rule in SEGMENTS.items()})
        ours, theirs, t_ours, t_theirs = {}, {}, {}, {}
        with engine.connect() as conn:
            if engine_name == "sqlite":
                from chorus.segments.evaluate import bucket

                conn.connection.driver_connection.create_function("bench_bucket", 1, bucket, deterministic=True)
            t = time.perf_counter()
            zones = zones_of(conn, ws)
            t_zones = time.perf_counter() - t
            for sid in order:
                t = time.perf_counter()
                ours[sid] = members(conn, ws, SEGMENTS[sid], NOW, zones=zones)
                t_ours[sid] = time.perf_counter() - t
                _write(conn, ws, sid, ours[sid])
            hand = hand_sql(engine_name)
            params = {"ws": ws, "now": NOW.replace(tzinfo=None), "now_iso": iso(NOW),
                      "now30_iso": iso(NOW - timedelta(days=30))}  # fmt: skip
            for d in (7, 30, 60, 90, 180):
                params[f"c{d}"] = (NOW - timedelta(days=d)).replace(tzinfo=None)
            if engine_name == "sqlite":  # SQLite compares the stored text
                params = {k: v.isoformat(" ", "microseconds") if isinstance(v, datetime) else v
                          for k, v in params.items()}
            for sid in order:
                t = time.perf_counter()
                theirs[sid] = set(conn.execute(sa.text(hand[sid]), params).scalars())
                t_theirs[sid] = time.perf_counter() - t
            conn.commit()
            many = _many_runs(conn, engine_name, ws, variants)
        engine.dispose()
    print(f"\n{engine_name}: {n:,} profiles, {10 * n:,} events; time zones read once: {t_zones:.2f} s")
    print("| segment | members | compiled s | hand-written s | ratio | same answer |\n|---|---:|---:|---:|---:|---|")
    for sid in order:
        same = "yes" if ours[sid] == theirs[sid] else f"no ({len(ours[sid] ^ theirs[sid]):,} differ)"
        ratio = t_ours[sid] / t_theirs[sid] if t_theirs[sid] else float("nan")
        print(f"| {sid} | {len(ours[sid]):,} | {t_ours[sid]:.2f} | {t_theirs[sid]:.2f} | {ratio:.1f}× | {same} |")
    total_o, total_t = sum(t_ours.values()) + t_zones, sum(t_theirs.values())
    print(f"| **all 20** | | **{total_o:.1f}** | **{total_t:.1f}** | **{total_o / total_t:.1f}×** | |", flush=True)
    print(f"\n{engine_name}: all 20 at once (segments.many.members_many, zones and consent included) beside the "
          f"hand-written total {total_t:.1f} s")
    print("| how | s | × hand-written | same answers as one by one |\n|---|---:|---:|---|")
    for how, (secs, answers) in many.items():
        wrong = [sid for sid in order if answers[sid] != ours[sid]]
        same = "yes" if not wrong else "no: " + ", ".join(wrong)
        print(f"| {how} | {secs:.1f} | {secs / total_t:.2f}× | {same} |", flush=True)


SQLITE_VARIANTS = {  # each alone, then together: what each buys
    "temp_store=MEMORY": ["PRAGMA temp_store = MEMORY"],
    "cache_size=1 GiB": ["PRAGMA cache_size = -1048576"],
    "mmap_size=4 GiB": ["PRAGMA mmap_size = 4294967296"],
}


def _many_runs(conn, engine_name: str, ws: str, variants: bool) -> dict[str, tuple[float, dict]]:
    """``members_many`` of all 20: as shipped, then (``variants``) with PostgreSQL's JIT on, or each SQLite pragma.
    Each run is its own transaction (SET LOCAL ends with it)."""
    runs: dict[str, tuple[float, dict]] = {}

    def timed(how: str, setup=(), **kw) -> None:
        for sql in setup:
            conn.exec_driver_sql(sql)
        t = time.perf_counter()
        got = members_many(conn, ws, SEGMENTS, NOW, **kw)
        runs[how] = (time.perf_counter() - t, got)
        conn.commit()

    timed("one pass (PostgreSQL: JIT off)" if engine_name == "postgresql" else "one pass (default pragmas)")
    if not variants:
        return runs
    if engine_name == "postgresql":
        timed("one pass, JIT as configured (on)", jit=True)
        return runs
    saved = {sql.split()[1]: conn.exec_driver_sql(f"PRAGMA {sql.split()[1]}").scalar()
             for sqls in SQLITE_VARIANTS.values() for sql in sqls}  # fmt: skip
    for how, sqls in SQLITE_VARIANTS.items():
        timed(f"one pass, {how}", sqls)
        for name, value in saved.items():
            conn.exec_driver_sql(f"PRAGMA {name} = {value}")
    timed("one pass, all three pragmas", [s for sqls in SQLITE_VARIANTS.values() for s in sqls])
    timed("one pass (default pragmas), again", [f"PRAGMA {k} = {v}" for k, v in saved.items()])
    return runs


def _write(conn, ws: str, sid: str, ids: set[str]) -> None:
    """The members of a segment others refer to, as the engine would have written them (not timed)."""
    if not any(sid in r.dependencies(r.parse(rule)).segments for rule in SEGMENTS.values()):
        return
    rows = [{"workspace_id": ws, "segment_id": sid, "profile_id": p, "since": NOW} for p in sorted(ids)]
    for i in range(0, len(rows), CHUNK):
        bulk.insert_rows(conn, segment_members, rows[i : i + CHUNK])
    conn.commit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", type=int, default=20_000)
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--no-variants", action="store_true",
                    help="all 20 at once only as shipped (no JIT-on or SQLite pragma runs)")
    args = ap.parse_args()
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        run(eng, args.profiles, args.seed, tmp, not args.no_variants)


if __name__ == "__main__":
    main()
