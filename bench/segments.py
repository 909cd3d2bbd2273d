#!/usr/bin/env python
"""Batch segment computation: the same 20 segments answered by hand-written SQL (the limit), by
``segments.many.members_many`` all at once, and by ``segments.compile.members`` one at a time, on the same engine,
in the same run.

The workload (deterministic, ``--seed``), generated inside the database (``INSERT ... SELECT`` over a counter, each
random draw an integer hash both engines compute alike): ``--profiles`` N profiles and 10·N events, with traits
(plan, age, a sign-up instant, a birthday), a time zone among six, e-mail addresses for 80 %, consent denials for
12 %, computed lifetime values for 60 %, messages with statuses for 30 % and a static list. Events: product views,
cart adds and orders with properties (category, price, total with cents), page views, an identify now and then,
and Chorus' own outbound records, over 180 days on the web, the app, in stores, by e-mail and on the phone.

The 20 segments (``segment_rules.py``) mix traits, windowed behaviour with property filters, sums and averages,
channels, messages, consent, buckets and segments of segments. The hand-written side answers them in dependency
order and the members of the ones referred to are written to ``segment_members`` between them (not timed). Prints,
per engine, the seconds of each segment on each side, whether the answers are the same, and the totals.

    python bench/segments.py                                   # 20,000 profiles, both engines
    python bench/segments.py --profiles 1000000 --no-variants  # the issue's bar: 1M profiles, 10M events
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import FreshDB, make_tmpdir  # noqa: E402
from segment_rules import SEGMENTS  # noqa: E402

from chorus import workspaces  # noqa: E402
from chorus.segments import rules as r  # noqa: E402
from chorus.segments.compile import members, zones_of  # noqa: E402
from chorus.segments.many import members_many  # noqa: E402
from chorus.store import bulk  # noqa: E402
from chorus.store.db import create_engine, upgrade  # noqa: E402
from chorus.store.tables import segment_members  # noqa: E402
from chorus.timeutil import iso  # noqa: E402

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
ZONES = ["Europe/Paris", "America/New_York", "UTC", "Asia/Kolkata", "Australia/Sydney", "America/Sao_Paulo"]
CATEGORIES = ["laptops", "phones", "tv", "audio", "cameras"]
CHUNK = 20_000


# -- the workload, generated inside the database ---------------------------------------------------------------
# Every random draw is a hash of (seed, row, draw number) that the database computes itself: integer arithmetic
# modulo primes below 2^31 (every product stays under 2^63 on both engines), so PostgreSQL and SQLite hold the same
# rows for one seed. Generating the rows in SQL instead of Python is what makes 1,000,000 profiles loadable: the
# Python loader built about 180 profiles (1,800 events) a second on the loaded machine, 90 minutes for 1M.
P1, P2, P3 = 2147483647, 2147483629, 2147483587
EPOCH_NOW = int(NOW.timestamp())
PROFILE_KEYS = 1_000_000_000  # profile i draws with keys PROFILE_KEYS + 32 i + salt; its event k, 8 (10 i + k) + salt
MAX_PROFILES = 10_000_000  # keeps every key under 2^31 (and apart), so that key × multiplier stays under 2^63
LOAD_CHUNK = 50_000  # profiles per transaction
CONSENT_KEY = [iso(NOW - timedelta(days=400)), "m0"]


def draw(x: int, seed: int) -> int:
    """The draw ``_Sql.draw`` computes for key ``x``, in Python (``check_draws`` compares the two)."""
    a = (x * 1103515245 + 12345 + seed * 7919) % P1
    b = (x * 48271 + 1013904223) % P2
    return (((a * b) % P3) * ((a + b) % P2)) % P1


class _Sql:
    """The expressions whose spelling differs between PostgreSQL and SQLite."""

    def __init__(self, dialect: str, seed: int):
        self.pg = dialect == "postgresql"
        self.seed = seed

    def draw(self, key: str, salt: int) -> str:
        """``draw(key + salt, seed)``: an integer in [0, 2^31 - 1), of ``key`` (an SQL integer expression)."""
        x = f"(CAST({key} AS BIGINT) + {salt})" if self.pg else f"({key} + {salt})"
        a = f"(({x} * 1103515245 + {12345 + self.seed * 7919}) % {P1})"
        b = f"(({x} * 48271 + 1013904223) % {P2})"
        return f"((({a} * {b}) % {P3}) * (({a} + {b}) % {P2}) % {P1})"

    def series(self, name: str, lo: str, hi: str, col: str = "i") -> str:
        """A CTE ``name(col)`` of the integers lo <= col < hi."""
        if self.pg:
            return f"{name}({col}) AS (SELECT generate_series(CAST({lo} AS BIGINT), {hi} - 1))"
        return (f"{name}({col}) AS (SELECT {lo} WHERE {lo} < {hi} UNION ALL SELECT {col} + 1 FROM {name} "
                f"WHERE {col} + 1 < {hi})")  # fmt: skip

    def obj(self, *pairs: str) -> str:
        args = ", ".join(f"'{k}', {v}" for k, v in zip(pairs[::2], pairs[1::2], strict=True))
        return f"jsonb_build_object({args})" if self.pg else f"json_object({args})"

    def arr(self, *items: str) -> str:
        return f"jsonb_build_array({', '.join(items)})" if self.pg else f"json_array({', '.join(items)})"

    def lit(self, doc) -> str:
        """A JSON literal."""
        text = orjson.dumps(doc).decode().replace("'", "''")
        return f"CAST('{text}' AS jsonb)" if self.pg else f"json('{text}')"

    def pad(self, expr: str, width: int) -> str:
        return f"lpad(CAST({expr} AS TEXT), {width}, '0')" if self.pg else f"printf('%0{width}d', {expr})"

    def stamp(self, secs_before: str = "0", minutes_after: str = "0") -> str:
        """The column value of NOW - secs_before seconds + minutes_after minutes (naive UTC; SQLite: the text that
        SQLAlchemy stores, microseconds included)."""
        if self.pg:
            return (f"(TIMESTAMP '{NOW.replace(tzinfo=None).isoformat(' ')}' - ({secs_before}) * INTERVAL '1 second'"
                    f" + ({minutes_after}) * INTERVAL '1 minute')")  # fmt: skip
        return (f"strftime('%Y-%m-%d %H:%M:%S.000000', {EPOCH_NOW} - ({secs_before}) + 60 * ({minutes_after}), "
                f"'unixepoch')")  # fmt: skip

    def iso(self, secs_before: str, micro: bool = True) -> str:
        """iso() of NOW - secs_before seconds (2026-06-01T12:00:00.000000Z), or without the fraction."""
        if self.pg:
            fmt = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' if micro else 'YYYY-MM-DD"T"HH24:MI:SS"Z"'
            return f"to_char({self.stamp(secs_before)}, '{fmt}')"
        fmt = "%Y-%m-%dT%H:%M:%S.000000Z" if micro else "%Y-%m-%dT%H:%M:%SZ"
        return f"strftime('{fmt}', {EPOCH_NOW} - ({secs_before}), 'unixepoch')"

    def true(self) -> str:
        return "TRUE" if self.pg else "1"

    def money(self, cents: str) -> str:
        """cents / 100 as a number with two decimals (a JSON number either way)."""
        return f"ROUND(CAST({cents} AS NUMERIC) / 100, 2)" if self.pg else f"ROUND(({cents}) / 100.0, 2)"

    def pick(self, d: str, choices: list[str]) -> str:
        whens = " ".join(f"WHEN {j} THEN '{c}'" for j, c in enumerate(choices))
        return f"(CASE {d} % {len(choices)} {whens} END)"


def statements(dialect: str, seed: int) -> list[str]:
    """INSERT ... SELECT statements writing profiles :lo <= i < :hi of workspace :ws, with their identifiers,
    events, computed traits, messages, statuses and list entries (the distributions of the module's docstring)."""
    q = _Sql(dialect, seed)

    def profiles_cte(*salts: int) -> str:
        """Profiles :lo <= i < :hi with the draws r<salt> a statement uses, computed once a row (MATERIALIZED:
        both engines would otherwise inline the expressions at each use)."""
        cols = "".join(f", {q.draw(f'({PROFILE_KEYS} + i * 32)', salt)} AS r{salt}" for salt in salts)
        return f"WITH RECURSIVE {q.series('s', ':lo', ':hi')}, p AS MATERIALIZED (SELECT i{cols} FROM s) "

    pid = f"('p' || {q.pad('i', 8)})"
    denied = q.lit({"status": "denied", "key": CONSENT_KEY, "source": "event:m0"})
    offers, everything = "r6 % 100 < 10", "r7 % 100 < 2"  # 10 % deny e-mail offers, 2 % everything: 12 %
    both = q.obj("email:offers", denied, "*:*", denied)
    consent = (f"(CASE WHEN {offers} AND {everything} THEN {both} WHEN {offers} THEN {q.obj('email:offers', denied)} "
               f"WHEN {everything} THEN {q.obj('*:*', denied)} ELSE {q.lit({})} END)")  # fmt: skip
    has_email = "r8 % 100 < 80"
    email = "('u' || CAST(i AS TEXT) || '@example.com')"
    year, month, day = q.pad("1950 + r3 % 56", 4), q.pad("1 + r4 % 12", 2), q.pad("1 + r5 % 28", 2)
    birthday = f"({year} || '-' || {month} || '-' || {day})"
    traits = ["plan", q.pick("r0", ["gold", "silver", "bronze", "free"]), "age", "(18 + r1 % 63)",
              "signup", q.iso(f"r2 % {400 * 86400}", micro=False), "birthday", birthday]  # fmt: skip
    traits_doc = f"(CASE WHEN {has_email} THEN {q.obj(*traits, 'email', email)} ELSE {q.obj(*traits)} END)"
    timezone = q.arr(q.pick("r9", ZONES), q.lit(CONSENT_KEY))
    state = q.obj("traits", traits_doc, "trait_at", q.lit({}), "sums", q.lit({}), "channels", q.lit({}),
                  "consent", consent, "attrs", q.obj("timezone", timezone))  # fmt: skip
    now = q.stamp()
    # lifetime value: lognormal(5, 1) by Box-Muller from two draws (the first shifted off zero for the logarithm)
    clv = "exp(5 + sqrt(-2 * ln((r11 + 1) / 2147483648.0)) * cos(2 * pi() * r12 / 2147483647.0))"
    clv_doc = f"to_jsonb(ROUND(CAST({clv} AS NUMERIC), 2))" if q.pg else f"CAST(ROUND({clv}, 2) AS TEXT)"
    sent = f"(r14 % {60 * 86400})"
    campaign = q.pick("r15", ["bf", "spring"])
    statuses = ("st(j, status) AS (SELECT 0, 'queued' UNION ALL SELECT 1, 'sent' UNION ALL SELECT 2, 'delivered' "
                "UNION ALL SELECT 3, 'opened') ")  # fmt: skip
    return [
        f"{profiles_cte(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)}INSERT INTO profiles (id, workspace_id, created_at, created_msg, "
        f"links_max_at, links_max_msg, known, first_seen, last_seen, last_channel, state, updated_at) SELECT {pid}, "
        f":ws, {now}, 'm', {now}, 'm', {q.true()}, NULL, NULL, NULL, {state}, {now} FROM p ORDER BY i",
        f"{profiles_cte(8)}INSERT INTO identifiers (workspace_id, ident, profile_id) SELECT :ws, 'user_id:u' || "
        f"CAST(i AS TEXT), {pid} FROM p UNION ALL SELECT :ws, 'email:' || {email}, {pid} FROM p WHERE {has_email}",
        f"{profiles_cte(10, 11, 12)}INSERT INTO computed_traits (workspace_id, profile_id, name, value, model, "
        f"computed_at) SELECT :ws, {pid}, 'clv_12m', {clv_doc}, 'bench', {now} FROM p WHERE r10 % 100 < 60",
        f"{profiles_cte(13, 14, 15)}INSERT INTO messages (id, workspace_id, idempotency_key, request_hash, profile_id, "
        f"template, kind, topic, channel, status, choice, attempts, campaign_id, created_at, updated_at) SELECT 'msg' "
        f"|| CAST(i AS TEXT), :ws, 'msg' || CAST(i AS TEXT), 'h', {pid}, 'promo', 'marketing', 'offers', 'email', "
        f"'delivered', {q.lit({})}, 1, {campaign}, {q.stamp(sent)}, {q.stamp(sent)} FROM p WHERE r13 % 100 < 30",
        # queued, sent, delivered a minute apart, and opened for 40 % of the messages
        f"{profiles_cte(13, 14, 16)}, {statuses}INSERT INTO message_status (message_id, workspace_id, status, at, "
        f"detail) SELECT 'msg' || CAST(i AS TEXT), :ws, st.status, {q.stamp(sent, 'st.j')}, {q.lit({})} FROM p "
        f"CROSS JOIN st WHERE r13 % 100 < 30 AND (st.j < 3 OR r16 % 100 < 40) ORDER BY i, st.j",
        f"{profiles_cte(17)}INSERT INTO list_members (workspace_id, list_id, profile_id, added_at) SELECT :ws, "
        f"'staff', {pid}, {now} FROM p WHERE r17 % 100 < 2",
        _events_statement(q),
    ]


def _events_statement(q: _Sql) -> str:
    """Events :k0 <= k < :k1 of profiles :lo <= i < :hi (``load``: ten a profile), over 180 days: 45 % product
    views, 15 % cart adds, 10 % orders (category, price or total with cents), 23 % page views, 4 % identifies,
    3 % Chorus' own outbound e-mails; channels web 50 %, app 25 %, store 15 %, e-mail 7 %, phone 3 %."""
    cols = ", ".join(f"{q.draw('((i * 10 + k) * 8)', salt)} AS r{salt}" for salt in range(5))
    ctes = (f"WITH RECURSIVE {q.series('s', ':lo', ':hi')}, {q.series('ks', ':k0', ':k1', 'k')}, "
            f"d AS MATERIALIZED (SELECT i, k, {cols} FROM s CROSS JOIN ks), x AS MATERIALIZED (SELECT "
            f"i, k, CASE WHEN r1 % 100 < 45 THEN 0 WHEN r1 % 100 < 60 THEN 1 WHEN r1 % 100 < 70 THEN 2 WHEN r1 % 100 "
            f"< 93 THEN 3 WHEN r1 % 100 < 97 THEN 4 ELSE 5 END AS kind, CASE WHEN r2 % 100 < 50 THEN 'web' WHEN "
            f"r2 % 100 < 75 THEN 'app' WHEN r2 % 100 < 90 THEN 'store' WHEN r2 % 100 < 97 THEN 'email' ELSE "
            f"'call_center' END AS ch0, r0 % {180 * 86400} AS secs, {q.pick('r3', CATEGORIES)} AS cat, "
            f"{q.money('500 + r4 % 89501')} AS amount FROM d) ")  # fmt: skip
    ch = "(CASE WHEN kind = 5 THEN 'email' ELSE ch0 END)"
    mid = f"('e' || {q.pad('i', 8)} || '-' || CAST(k AS TEXT))"
    uid = "('u' || CAST(i AS TEXT))"
    etype = "(CASE kind WHEN 3 THEN 'page' WHEN 4 THEN 'identify' ELSE 'track' END)"
    name = ("(CASE kind WHEN 0 THEN 'Product Viewed' WHEN 1 THEN 'Product Added' WHEN 2 THEN 'Order Completed' "
            "WHEN 3 THEN 'Home' WHEN 5 THEN 'Message Sent' END)")  # fmt: skip
    at = q.iso("secs")
    common = ["type", etype, "messageId", mid, "timestamp", at, "receivedAt", at, "channel", ch, "userId", uid]
    context = q.obj("channel", "ch0")
    page = q.obj(*common, "context", q.obj("channel", "ch0", "page", q.lit({"path": "/"})), "name", "'Home'",
                 "properties", q.lit({"path": "/"}))  # fmt: skip
    identify = q.obj(*common, "context", context)
    outbound = q.obj(*common, "context", q.lit({"channel": "email", "direction": "outbound"}), "event",
                     "'Message Sent'", "properties", q.lit({}))  # fmt: skip
    order = q.obj(*common, "context", context, "event", name, "properties",
                  q.obj("category", "cat", "total", "amount", "currency", "'EUR'"))  # fmt: skip
    product = q.obj(*common, "context", context, "event", name, "properties",
                    q.obj("category", "cat", "price", "amount"))  # fmt: skip
    payload = (f"(CASE kind WHEN 3 THEN {page} WHEN 4 THEN {identify} WHEN 5 THEN {outbound} WHEN 2 THEN {order} "
               f"ELSE {product} END)")  # fmt: skip
    return (f"{ctes}INSERT INTO events (workspace_id, message_id, type, event, channel, user_id, anonymous_id, "
            f"timestamp, received_at, source_id, trusted, payload, profile_id) SELECT :ws, {mid}, {etype}, {name}, "
            f"{ch}, {uid}, NULL, {q.stamp('secs')}, {q.stamp('secs')}, NULL, {q.true()}, {payload}, "
            f"('p' || {q.pad('i', 8)}) FROM x ORDER BY i, k")  # fmt: skip


def more_events(conn, ws: str, seed: int, i: int, k0: int, k1: int) -> None:
    """Events k0 <= k < k1 of profile i (``load`` wrote 0 to 9), drawn as ``load`` draws them: a longer history
    for one person (``segments_person.py``)."""
    sql = _events_statement(_Sql(conn.dialect.name, seed))
    conn.execute(sa.text(sql), {"ws": ws, "lo": i, "hi": i + 1, "k0": k0, "k1": k1})


def check_draws(conn, seed: int, n: int) -> None:
    """The engine's draws are the Python ones, at the smallest and the largest keys of ``n`` profiles: SQLite turns
    an integer product past 2^63 into a float without a word, which would change the data, not fail."""
    q = _Sql(conn.dialect.name, seed)
    keys = [0, 1, 8 * (10 * n - 1) + 7, PROFILE_KEYS, PROFILE_KEYS + 32 * (n - 1) + 31]
    got = conn.execute(sa.text("SELECT " + ", ".join(q.draw(str(x), 0) for x in keys))).one()
    want = tuple(draw(x, seed) for x in keys)
    if tuple(got) != want:
        raise RuntimeError(f"the engine's draws {tuple(got)} are not {want}")


def load(engine, ws: str, n: int, seed: int) -> None:
    if n > MAX_PROFILES:
        raise SystemExit(f"--profiles {n:,}: at most {MAX_PROFILES:,} (the draws' keys would overlap)")
    with engine.connect() as conn:
        check_draws(conn, seed, n)
    sqls = statements(engine.dialect.name, seed)
    for lo in range(0, n, LOAD_CHUNK):
        hi = min(n, lo + LOAD_CHUNK)
        with engine.begin() as conn:
            for sql in sqls:
                conn.execute(sa.text(sql), {"ws": ws, "lo": lo, "hi": hi, "k0": 0, "k1": 10})
        print(f"  loaded {hi:,} profiles", file=sys.stderr, flush=True)
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
def run(engine_name: str, n: int, seed: int, tmp: Path, variants: bool, one_by_one: bool) -> None:
    """Hand-written SQL one question at a time, then all 20 at once, then (``one_by_one``) ``compile.members`` one
    rule at a time, each table printed as soon as it is known (a long run stopped early keeps what it printed).
    The members of the segments others refer to are written to ``segment_members`` from the hand-written answers,
    between the questions (not timed); the compiled rules read them there too."""
    with FreshDB(engine_name, "segments", tmp) as db:
        upgrade(db.url)
        engine = create_engine(db.url)
        ws = workspaces.create(engine, "bench")["id"]
        started = time.perf_counter()
        load(engine, ws, n, seed)
        print(f"{engine_name}: {n:,} profiles, {10 * n:,} events loaded in {time.perf_counter() - started:.0f} s",
              flush=True)  # fmt: skip
        order = r.check_references({sid: r.parse(rule) for sid, rule in SEGMENTS.items()})
        theirs, t_theirs = {}, {}
        with engine.connect() as conn:
            if engine_name == "sqlite":
                from chorus.segments.evaluate import bucket

                conn.connection.driver_connection.create_function("bench_bucket", 1, bucket, deterministic=True)
            hand = hand_sql(engine_name)
            params = {"ws": ws, "now": NOW.replace(tzinfo=None), "now_iso": iso(NOW),
                      "now30_iso": iso(NOW - timedelta(days=30))}  # fmt: skip
            for d in (7, 30, 60, 90, 180):
                params[f"c{d}"] = (NOW - timedelta(days=d)).replace(tzinfo=None)
            if engine_name == "sqlite":  # SQLite compares the stored text
                params = {k: v.isoformat(" ", "microseconds") if isinstance(v, datetime) else v
                          for k, v in params.items()}  # fmt: skip
            for sid in order:
                t = time.perf_counter()
                theirs[sid] = set(conn.execute(sa.text(hand[sid]), params).scalars())
                t_theirs[sid] = time.perf_counter() - t
                _write(conn, ws, sid, theirs[sid])
            conn.commit()
            total_t = sum(t_theirs.values())
            print(f"\n{engine_name}: {n:,} profiles, {10 * n:,} events; hand-written SQL, one question at a time")
            print("| segment | members | hand-written s |\n|---|---:|---:|")
            for sid in order:
                print(f"| {sid} | {len(theirs[sid]):,} | {t_theirs[sid]:.2f} |")
            print(f"| **all 20** | | **{total_t:.1f}** |", flush=True)
            many = _many_runs(conn, engine_name, ws, variants, order, theirs, total_t)
            if one_by_one:
                _one_by_one(conn, engine_name, ws, order, theirs, t_theirs, many)
        engine.dispose()


def _one_by_one(conn, engine_name: str, ws: str, order: list[str], theirs: dict, t_theirs: dict, many: dict) -> None:
    """``compile.members`` of each segment in turn beside its hand-written time; a row printed as each ends."""
    t = time.perf_counter()
    zones = zones_of(conn, ws)
    t_zones = time.perf_counter() - t
    first = next(iter(many.values()))[1]
    print(f"\n{engine_name}: compile.members one rule at a time (time zones read once: {t_zones:.2f} s)")
    print("| segment | members | compiled s | hand-written s | ratio | same answer (hand, all at once) |")
    print("|---|---:|---:|---:|---:|---|", flush=True)
    t_ours = {}
    for sid in order:
        t = time.perf_counter()
        ours = members(conn, ws, SEGMENTS[sid], NOW, zones=zones)
        t_ours[sid] = time.perf_counter() - t
        same = "yes" if ours == theirs[sid] else f"no ({len(ours ^ theirs[sid]):,} differ)"
        same += ", yes" if ours == first[sid] else f", no ({len(ours ^ first[sid]):,} differ)"
        ratio = t_ours[sid] / t_theirs[sid] if t_theirs[sid] else float("nan")
        print(f"| {sid} | {len(ours):,} | {t_ours[sid]:.2f} | {t_theirs[sid]:.2f} | {ratio:.1f}× | {same} |",
              flush=True)  # fmt: skip
    conn.commit()
    total_o, total_t = sum(t_ours.values()) + t_zones, sum(t_theirs.values())
    print(f"| **all 20** | | **{total_o:.1f}** | **{total_t:.1f}** | **{total_o / total_t:.1f}×** | |", flush=True)


SQLITE_VARIANTS = {  # each alone, then together: what each buys
    "temp_store=MEMORY": ["PRAGMA temp_store = MEMORY"],
    "cache_size=1 GiB": ["PRAGMA cache_size = -1048576"],
    "mmap_size=4 GiB": ["PRAGMA mmap_size = 4294967296"],
}


def _many_runs(
    conn, engine_name: str, ws: str, variants: bool, order: list[str], theirs: dict, total_t: float
) -> dict[str, tuple[float, dict]]:
    """``members_many`` of all 20: as shipped, then (``variants``) with PostgreSQL's JIT on, or each SQLite pragma.
    Each run is its own transaction (SET LOCAL ends with it); a row printed as each ends, its answers compared
    with the hand-written ones."""
    runs: dict[str, tuple[float, dict]] = {}
    print(f"\n{engine_name}: all 20 at once (segments.many.members_many, zones and consent included) beside the "
          f"hand-written total {total_t:.1f} s")  # fmt: skip
    print("| how | s | × hand-written | same answers as hand-written |\n|---|---:|---:|---|", flush=True)

    def timed(how: str, setup=(), **kw) -> None:
        for sql in setup:
            conn.exec_driver_sql(sql)
        t = time.perf_counter()
        got = members_many(conn, ws, SEGMENTS, NOW, **kw)
        runs[how] = (secs := time.perf_counter() - t, got)
        conn.commit()
        wrong = [f"{sid} ({len(got[sid] ^ theirs[sid]):,} differ)" for sid in order if got[sid] != theirs[sid]]
        same = "yes" if not wrong else "no: " + ", ".join(wrong)
        print(f"| {how} | {secs:.1f} | {secs / total_t:.2f}× | {same} |", flush=True)

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
    ap.add_argument("--no-one-by-one", action="store_true",
                    help="skip compile.members one rule at a time (hand-written SQL and all 20 at once only)")
    args = ap.parse_args()
    tmp = make_tmpdir()
    for eng in args.engines.split(","):
        run(eng, args.profiles, args.seed, tmp, not args.no_variants, not args.no_one_by_one)


if __name__ == "__main__":
    main()
