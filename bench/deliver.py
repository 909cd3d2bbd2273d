#!/usr/bin/env python
"""Delivery benchmark: personalised email over SMTP and SMS to a Twilio-format server, outbox included, against
bare senders of the same bytes in the same run.

Per engine (SQLite, PostgreSQL):

1. receivers in their own processes: an aiosmtpd sink (accepts and drops) and the Twilio Messages API stand-in
   of the tests (tests/standins/twilio.py) under uvicorn;
2. bare email: `smtplib` sends the same pre-rendered messages (built by chorus' SMTP provider, not timed) over
   one reused connection; bare SMS: `httpx.AsyncClient` posts the same form bodies, `--concurrency` at a time;
3. chorus: a fresh database with N profiles (email + phone; set up, not timed), a template with an MJML email
   variant and an SMS variant, then, timed: `outbox.enqueue_many` of N messages per channel in batches of 500
   (what `POST /api/messages/batch` runs, without the HTTP layer: render, channel choice, consent, caps, the
   outbox rows, their statuses and timeline events) and their delivery until every message is `sent`: by a
   `chorus worker` process running meanwhile (`--modes pipeline`, as deployed) or, afterwards, by a `Deliverer`
   in this process (`sequential`, which also reports CPU per message).

Prints messages/s for chorus and for the bare sender, and their ratio; writes bench/results/deliver-<engine>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS_DIR, FreshDB, free_port, log, make_tmpdir, write_json  # noqa: E402

MJML = """<mjml><mj-head><mj-preview>{{ traits.first_name }}, your cart is waiting</mj-preview></mj-head>
<mj-body><mj-section><mj-column>
<mj-text font-size="20px">Hi {{ traits.first_name }},</mj-text>
<mj-text>You left {{ event.product }} in your cart. It is still there, in size {{ event.size }}.</mj-text>
<mj-button href="https://shop.example/cart?c={{ event.cart }}">Back to my cart</mj-button>
<mj-text font-size="11px"><a href="{{ message.unsubscribe_url }}">Unsubscribe</a></mj-text>
</mj-column></mj-section></mj-body></mjml>"""
TEMPLATE = {
    "kind": "marketing", "topic": "offers",
    "variants": {
        "email": {"subject": "{{ traits.first_name }}, your {{ event.product }} is waiting", "mjml": MJML},
        "sms": {"text": "{{ traits.first_name }}, your {{ event.product }} is still in your cart: "
                        "https://shop.example/c/{{ event.cart }}"},
    },
}  # fmt: skip
SINK = """
import asyncio, sys
from aiosmtpd.controller import Controller
class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
print("ready", flush=True)
sys.stdin.read()
"""
TWILIO = """
import sys, uvicorn
sys.path.insert(0, sys.argv[2])
from tests.standins.twilio import TwilioStandIn
s = TwilioStandIn("AC" + "0" * 31 + "1", "bench-token")
uvicorn.run(s.app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
ROOT = Path(__file__).resolve().parents[1]
BATCH = 500


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip


def wait_port(port: int, timeout: float = 20) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def seed(engine, n: int):
    """A workspace with n profiles (email + phone), providers and the template; returns (workspace, ids)."""
    from chorus import workspaces
    from chorus.collect import ingest
    from chorus.collect.messages import normalise
    from chorus.identity.resolver import Resolver
    from chorus.messaging import outbox

    w = workspaces.create(engine, "bench")
    now = datetime.now(UTC)
    with engine.begin() as conn:
        src = workspaces.source_by_write_key(conn, w["server_write_key"])
        for start_i in range(0, n, 1000):
            evs = [normalise({"type": "identify", "userId": f"u{i}", "messageId": f"seed-{i}",
                              "traits": {"email": f"person{i}@example.com", "phone": f"+3161{i:07d}",
                                         "first_name": f"Name{i}"}}, received_at=now, source_kind="server")
                   for i in range(start_i, min(n, start_i + 1000))]  # fmt: skip
            ingest.store(conn, src, evs, [], now)
    Resolver(engine).drain(5000)
    outbox.save_template(engine, w["id"], "cart", TEMPLATE)
    return w


def run_chorus(db: FreshDB, n: int, ports: tuple[int, int], modes: list[str], channels: list[str], tmp: Path) -> dict:
    smtp_port, twilio_port = ports
    os.environ["CHORUS_BENCH_TWILIO_TOKEN"] = "bench-token"
    from chorus import workspaces
    from chorus.messaging.links import Links
    from chorus.store.db import create_engine, upgrade

    upgrade(db.url)
    engine = create_engine(db.url)
    log(f"[{db.engine}] seeding {n} profiles")
    w = seed(engine, n)
    providers = {
        "email": [{"type": "smtp", "host": "127.0.0.1", "port": smtp_port, "security": "none",
                   "from": "Shop <news@shop.example>"}],
        "sms": [{"type": "twilio", "account_sid": "AC" + "0" * 31 + "1", "auth_token_env": "CHORUS_BENCH_TWILIO_TOKEN",
                 "from": "+15005550006", "base_url": f"http://127.0.0.1:{twilio_port}", "concurrency": 8}],
    }  # fmt: skip
    workspaces.update_settings(engine, w["id"], {"messaging": {"providers": providers}})
    with engine.connect() as conn:
        ws = workspaces.get(conn, w["id"])
    links = Links("https://chorus.example", b"bench-key" * 4)
    out = {}
    for mode in modes:
        worker = None
        if mode == "pipeline":  # the product's own worker process, as deployed next to `chorus serve`
            # its log goes to a file: a pipe nobody reads would fill up and stop the worker
            worker_log = tmp / f"worker-{db.engine}.log"
            worker = subprocess.Popen([sys.executable, "-m", "chorus.cli", "worker", "--db", db.url],
                                      stdout=subprocess.DEVNULL, stderr=open(worker_log, "w"))  # fmt: skip
            deadline = time.monotonic() + 30
            while "worker started" not in worker_log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            if "worker started" not in worker_log.read_text():
                raise RuntimeError(f"chorus worker did not start: {worker_log.read_text()[-2000:]}")
        try:
            for channel in channels:
                res = _run_channel(engine, ws, links, mode, channel, n)
                out[f"{mode}:{channel}"] = res
                log(f"[{db.engine}] chorus {mode} {channel}: {res}")
        finally:
            if worker is not None:
                worker.terminate()
                worker.wait(30)
    engine.dispose()
    return out


def _run_channel(engine, ws, links, mode: str, channel: str, n: int) -> dict:
    import sqlalchemy as sa

    from chorus.messaging import outbox
    from chorus.messaging.delivery import DUE, Deliverer
    from chorus.store.db import read_only
    from chorus.store.tables import messages

    def sent() -> int:  # once, at the end: it scans every message
        with engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).where(
                    messages.c.channel == channel, messages.c.status == "sent",
                    messages.c.idempotency_key.like(f"{mode}-%"),
                )
            ).scalar_one()  # fmt: skip

    t0, c0 = time.perf_counter(), time.process_time()
    for start_i in range(0, n, BATCH):  # a broadcast: requests in batches, as POST /api/messages/batch takes them
        items = [(outbox.parse_request({"to": {"user_id": f"u{i}"}, "template": "cart", "channel": channel,
                                        "event": {"product": "red shoes", "size": 38, "cart": f"c{i}"}}),
                  f"{mode}-{channel}-{i}") for i in range(start_i, min(n, start_i + BATCH))]  # fmt: skip
        results = outbox.enqueue_many(engine, ws, items, links)
        if any(not created for _r, created in results):
            raise RuntimeError(f"not queued: {[r for r, c in results if not c][:3]}")
    t_enq, c_enq = time.perf_counter() - t0, time.process_time() - c0
    if mode == "sequential":  # then delivery, in this process
        d = Deliverer(engine)
        while d.run_once(500):
            pass
        d.close()
    else:
        # wait until nothing is left to deliver: a read-only look through the due index, cheap at any size (a
        # COUNT over all messages every 50 ms held SQLite's write lock and scanned gigabytes on both engines)
        deadline = time.monotonic() + max(120, n / 20)
        while time.monotonic() < deadline:
            with read_only(engine) as conn:
                if conn.execute(sa.select(messages.c.id).where(DUE).limit(1)).first() is None:
                    break
            time.sleep(0.05)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    if (got := sent()) != n:
        raise RuntimeError(f"{mode} {channel}: {got} of {n} sent")
    res = {"messages": n, "seconds": round(total, 2), "msg_per_s": round(n / total),
           "enqueue_msg_per_s": round(n / t_enq)}  # fmt: skip
    if mode == "sequential":  # CPU of this process per message: what bounds it on a shared two-core machine
        res["cpu_ms_per_msg"] = {"enqueue": round(c_enq * 1000 / n, 2), "deliver": round((cpu - c_enq) * 1000 / n, 2)}
    return res


def bare_email(n: int, port: int) -> dict:
    from chorus.messaging.providers import Outgoing
    from chorus.messaging.providers.smtp import SMTPProvider

    prov = SMTPProvider({"type": "smtp", "host": "127.0.0.1", "port": port, "security": "none",
                         "from": "Shop <news@shop.example>"}, "bench")  # fmt: skip
    html = "<html><body>" + "<p>Hi, you left red shoes in your cart.</p>" * 40 + "</body></html>"
    raws = [prov.build(Outgoing(f"m{i}", "ws", "email", f"person{i}@example.com",
                                {"subject": f"Name{i}, your red shoes", "html": html, "text": "Hi"}, "marketing", "o"))
            for i in range(n)]  # fmt: skip
    conn = smtplib.SMTP("127.0.0.1", port)
    t0 = time.perf_counter()
    for i, raw in enumerate(raws):
        conn.sendmail("news@shop.example", [f"person{i}@example.com"], raw)
    dt = time.perf_counter() - t0
    conn.quit()
    return {"messages": n, "seconds": round(dt, 2), "msg_per_s": round(n / dt), "avg_bytes": sum(map(len, raws)) // n}


def bare_sms(n: int, port: int, concurrency: int) -> dict:
    import httpx

    url = f"http://127.0.0.1:{port}/2010-04-01/Accounts/{'AC' + '0' * 31 + '1'}/Messages.json"
    forms = [{"To": f"+3161{i:07d}", "From": "+15005550006", "Body": f"Name{i}, your red shoes are in your cart"}
             for i in range(n)]  # fmt: skip

    async def main() -> float:
        async with httpx.AsyncClient(auth=("AC" + "0" * 31 + "1", "bench-token")) as client:
            queue = iter(forms)

            async def worker():
                for form in queue:
                    r = await client.post(url, data=form)
                    assert r.status_code == 201, r.text

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return time.perf_counter() - t0

    dt = asyncio.run(main())
    return {"messages": n, "seconds": round(dt, 2), "msg_per_s": round(n / dt), "concurrency": concurrency}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000, help="messages per channel (default 100,000)")
    ap.add_argument("--engines", default="sqlite,postgresql")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent requests of the bare SMS sender")
    ap.add_argument("--modes", default="pipeline,sequential",
                    help="pipeline: enqueue here while a `chorus worker` process delivers (as deployed); "
                         "sequential: enqueue everything, then deliver in this process")  # fmt: skip
    ap.add_argument("--channels", default="email,sms")
    ap.add_argument("--out", default=str(RESULTS_DIR))
    args = ap.parse_args(argv)
    channels = args.channels.split(",")
    tmp = make_tmpdir()
    smtp_port, twilio_port = free_port(), free_port()
    sink = start(SINK, str(smtp_port))
    twilio = start(TWILIO, str(twilio_port), str(ROOT))
    rows = []
    try:
        wait_port(smtp_port)
        wait_port(twilio_port)
        for engine in args.engines.split(","):
            # the bare senders right before each engine's run: the machine's speed drifts between runs
            log(f"bare senders, {args.count} messages each")
            base = {}
            if "email" in channels:
                base["email"] = bare_email(args.count, smtp_port)
            if "sms" in channels:
                base["sms"] = bare_sms(args.count, twilio_port, args.concurrency)
            log(f"bare: {base}")
            with FreshDB(engine, "deliver", tmp) as db:
                res = run_chorus(db, args.count, (smtp_port, twilio_port), args.modes.split(","), channels, tmp)
            doc = {"engine": engine, "count": args.count, "bare": base, "chorus": res}
            write_json(Path(args.out) / f"deliver-{engine}.json", doc)
            for key, r in res.items():
                mode, ch = key.split(":")
                rows.append((engine, mode, ch, r["msg_per_s"], base[ch]["msg_per_s"],
                             r["msg_per_s"] / base[ch]["msg_per_s"], r["enqueue_msg_per_s"]))  # fmt: skip
    finally:
        for p in (sink, twilio):
            p.kill()
    print("\n| engine | mode | channel | chorus msg/s (enqueue + deliver) | bare msg/s | chorus/bare | enqueue msg/s |")
    print("|---|---|---|---:|---:|---:|---:|")
    for e, m, ch, c, b, r, q in rows:
        print(f"| {e} | {m} | {ch} | {c:,} | {b:,} | {r:.2f} | {q:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
