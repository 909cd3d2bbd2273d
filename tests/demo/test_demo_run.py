"""`chorus demo` end to end, as a user runs it (a subprocess), then the issue's invariants checked against the store
it wrote: totals reconcile between the report and the store, everything sent really arrived (SMTP server, sink
files) and nothing else did, holdouts received nothing after their split, nobody got a message from a journey
after leaving it, an unsubscribe stopped that topic's marketing email at once, and a spam complaint (a feedback
loop's ARF report) every email.

The run changes model parameters (``--set``) so that a small population produces unsubscribes, spam complaints,
returns and purchases caused by messages to check."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from decimal import Decimal

import orjson
import pytest
import sqlalchemy as sa
from PIL import Image

from chorus.demo import charts, install, report
from chorus.journeys import definition as jdef
from chorus.timeutil import parse_ts

START = "2026-03-02"


def demo(tmp_path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "chorus.cli", "demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}",
           "--outbox", str(tmp_path / "outbox"), "--lake", str(tmp_path / "lake"), *args]  # fmt: skip
    env = {**os.environ, "COLUMNS": "500"}  # Typer's error box wraps at the terminal width: one line per message
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env)


RUN = ("--customers", "90", "--days", "14", "--seed", "11", "--start", START, "--json",
       "--set", "email_open=0.6", "--set", "email_unsubscribe=0.15", "--set", "sms_stop=0.3",
       "--set", "return_rate_online=0.5", "--set", "return_rate_store=0.3",
       "--set", "convert_after_click=0.6", "--set", "email_complaint=0.03",
       "--set", "pickup_share=0.8", "--set", "stock_cover=0.5")  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    r = demo(tmp, *RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    (tmp / "stderr.txt").write_text(r.stderr)  # the keys and the command to explore the store
    engine = sa.create_engine(f"sqlite:///{tmp / 'demo.db'}")
    with engine.connect() as conn:
        store = {
            "messages": [dict(m._mapping) for m in conn.execute(sa.text("SELECT * FROM messages"))],
            "statuses": [dict(m._mapping) for m in conn.execute(sa.text("SELECT * FROM message_status"))],
            "instances": [dict(m._mapping) for m in conn.execute(sa.text("SELECT * FROM journey_instances"))],
            "records": [dict(m._mapping) for m in conn.execute(sa.text("SELECT * FROM journey_records"))],
            "channels": Counter(dict(conn.execute(sa.text("SELECT channel, count(*) FROM events GROUP BY 1")).all())),
            "store_orders": {ts(t) for (t,) in conn.execute(sa.text(
                "SELECT timestamp FROM events WHERE event = 'Order Completed' AND channel = 'store'"))},
            "orders": [(c, orjson.loads(p)) for c, p in conn.execute(sa.text(
                "SELECT channel, payload FROM events WHERE event IN ('Order Completed', 'Order Refunded')"))],
            "cancelled": [orjson.loads(p) for (p,) in conn.execute(sa.text(
                "SELECT payload FROM events WHERE event = 'Order Cancelled'"))],
            # customer number -> the profiles holding any of her identifiers (user id cust-0000012, e-mail
            # name.12@customers.example, loyalty card KL-00000012)
            "profiles_of": _profiles_of(conn),
        }
    engine.dispose()
    return orjson.loads(r.stdout), store, tmp


def _profiles_of(conn) -> dict[int, set[str]]:
    import re

    out: dict[int, set[str]] = {}
    for ident, pid in conn.execute(sa.text("SELECT ident, profile_id FROM identifiers")):
        m = re.fullmatch(r"user_id:cust-(\d+)|email:[a-z]+\.(\d+)@customers\.example|loyalty_id:KL-(\d+)", ident)
        if m:
            out.setdefault(int(next(g for g in m.groups() if g)), set()).add(pid)
    return out


def ts(value) -> datetime:
    return value if isinstance(value, datetime) else parse_ts(value)


def test_a_run_again_with_the_same_seed_reports_the_same(run, tmp_path):
    """The seed makes the run repeatable to the message: the holdouts are drawn by identifier (the customers' user
    ids), not by Chorus' random profile ids, and the omnichannel bootstrap draws over customers in the order of
    their figures. Only where the files went, the ids Chorus made, the timings and the engine's floating-point
    rounding (a variance summed in row order: the last digits) may differ."""
    first, _, _ = run
    r = demo(tmp_path, *RUN)
    assert r.returncode == 0, r.stderr[-3000:]
    again = orjson.loads(r.stdout)
    differ: list[str] = []

    def same(a, b, path: str) -> None:
        if path in (".charts", ".database_url", ".lake_dir", ".log", ".outbox", ".workspace_id", ".cpu_seconds",
                    ".worker", ".lake.workspaces", ".elapsed_seconds") or path.endswith((".message_id", ".profile_id")):
            return  # fmt: skip
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                same(a.get(k), b.get(k), f"{path}.{k}")
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                same(x, y, f"{path}[{i}]")
        elif isinstance(a, float) and isinstance(b, float):
            if abs(a - b) > 1e-9 * max(1.0, abs(a)):
                differ.append(f"{path}: {a} != {b}")
        elif a != b:
            differ.append(f"{path}: {str(a)[:80]} != {str(b)[:80]}")

    same(first, again, "")
    assert not differ, "\n".join(differ[:40])
    assert first["messages"]["total"] > 0 and any(r["holdout"] for r in first["analytics"]["uplift"]["rows"])


def test_the_report_reconciles_with_the_store(run):
    rep, store, _ = run
    msgs = store["messages"]
    assert rep["messages"]["total"] == len(msgs) > 0
    got = {(r["channel"], r["status"]): r["count"] for r in rep["messages"]["by_channel_status"]}
    assert got == dict(Counter((m["channel"], m["status"]) for m in msgs))
    inst = Counter(i["journey_id"] for i in store["instances"])
    for j in rep["journeys"]:
        assert j["totals"]["entered"] == inst[j["id"]], j["id"]
        (version,) = j["versions"]
        if j["id"] in ("welcome", "abandoned_cart", "browse_abandonment", "winback"):  # the split comes first
            assert sum(a["entered"] for a in version["arms"]) == j["totals"]["entered"], j["id"]
    assert sum(j["totals"]["entered"] for j in rep["journeys"]) > 30, "the journeys must have had work to do"
    assert rep["broadcasts"] and rep["broadcasts"][0]["id"] == "spring_sale"
    assert any(m["journey_id"] == "spring_sale" for m in msgs), "the broadcast went out on day 7"


def test_the_stores_cancel_the_pickups_they_have_no_stock_for(run):
    """Stock per store (demo/stock.py): every click-and-collect order the stores could not pick reached Chorus as
    an `Order Cancelled` for an order it had, refunded in full by the order system (paid online, never delivered:
    an outside probe found the cancelled orders counted in the net revenue), and the pickup_cancelled journey took
    each one."""
    rep, store, _ = run
    st = rep["stock"]
    posted = rep["actions"].get("pickup_cancelled", 0)
    # the plan alone has two pick-ups cancelled within the period at these parameters (seed 11); what messages make
    # people buy takes from the same shelves and may change which (review: a till purchase can fail a pick-up of
    # three items and so leave two for later ones), so at least one
    assert posted >= 1, "the run's parameters make some pick-ups fail"
    assert len(store["cancelled"]) == posted == sum(c["cancelled"] for c in st["click_and_collect"].values())
    assert posted <= sum(c["refused"] for c in st["click_and_collect"].values())
    completed = {p["properties"]["order_id"]: p for _c, p in store["orders"] if p["event"] == "Order Completed"}
    refunded = {p["properties"]["order_id"]: p for _c, p in store["orders"] if p["event"] == "Order Refunded"}
    for c in store["cancelled"]:
        order = completed[c["properties"]["order_id"]]
        assert order["properties"]["fulfillment"] == "store_pickup" and c["properties"]["reason"] == "out_of_stock"
        assert c["properties"]["store_id"] == order["properties"]["store_id"]
        refund = refunded[c["properties"]["order_id"]]
        assert refund["properties"]["reason"] == "cancelled" and _amount(refund) == _amount(order)
    (journey,) = [j for j in rep["journeys"] if j["id"] == "pickup_cancelled"]
    assert journey["totals"]["entered"] == posted
    assert sum(st["units_sold"].values()) > 0 and set(st["units_per_delivery"]) == {
        "AMS-01", "RTM-01", "UTR-01", "GRQ-01", "EIN-01"}  # fmt: skip


def test_nothing_failed_inside(run):
    rep, _, tmp = run
    assert rep["errors_logged"] == 0, (tmp / "chorus-demo.log").read_text()[-3000:]
    assert " ERROR " not in (tmp / "chorus-demo.log").read_text()


def test_the_analytics_on_the_lake_agree_with_the_journeys_records(run):
    """Across reports: the uplift report (the lake, DuckDB) counts, per journey, the people the journey runtime put in
    each arm (its records in the store); the omnichannel report's groups add up to its total."""
    rep, store, _ = run
    assert rep["lake"]["events"] > 0 and rep["lake"]["held_back"] == 0
    arms: dict[str, dict[str, set]] = {}
    for r in store["records"]:
        if r["arm"]:
            arms.setdefault(r["journey_id"], {"treated": set(), "holdout": set()})[
                "holdout" if r["arm"] == "holdout" else "treated"].add(r["profile_id"])
    rows = {r["journey_id"]: r for r in rep["analytics"]["uplift"]["rows"]}
    assert rows and set(rows) <= set(arms)
    for jid, row in rows.items():
        assert (row["treated"], row["holdout"]) == (len(arms[jid]["treated"]), len(arms[jid]["holdout"])), jid
    omni = rep["analytics"]["omnichannel"]
    by_channels = [g for g in omni["groups"] if g["dimension"] == "channels"]
    assert sum(g["customers"] for g in by_channels) == omni["totals"]["customers"] > 0
    totals = rep["analytics"]["showrooming"]["totals"]
    assert totals["webrooming"]["purchases"] > 0 and totals["webrooming"]["roomed"] > 0


def _amount(payload: dict) -> Decimal:
    props = payload["properties"]
    return Decimal(str(props.get("revenue", props.get("total"))))


def test_returns_reduce_net_revenue_by_what_the_store_holds(run):
    """Every return the model made reached Chorus (the order system's `Order Refunded`, the till's returns file), and
    every pick-up the store cancelled (the order system's refund); each refunds exactly what its order was paid, and
    the report's net revenue is the orders' revenue less those refunds, as the API (the omnichannel report on the
    lake) gives them."""
    rep, store, _ = run
    paid = {p["properties"]["order_id"]: _amount(p) for _c, p in store["orders"] if p["event"] == "Order Completed"}
    refunds = [(c, p) for c, p in store["orders"] if p["event"] == "Order Refunded"]
    assert {c for c, _p in refunds} == {"store", "server"}, "returns at the till and through the order system"
    for _c, p in refunds:
        assert _amount(p) == paid[p["properties"]["order_id"]] > 0, p
    refunded = sum((_amount(p) for _c, p in refunds), Decimal(0))
    r = report.returns(rep)
    assert r["made"] == rep["actions"]["return"] > 0 and r["cancelled"] == rep["actions"].get("pickup_cancelled", 0)
    assert r["refunds"] == len(refunds) == r["made"] + r["cancelled"]  # returns, and cancelled pick-ups
    assert Decimal(str(round(r["refunded"], 2))) == refunded
    assert r["revenue"] == sum(paid.values()) == rep["analytics"]["omnichannel"]["totals"]["revenue"]
    assert r["net_revenue"] == pytest.approx(r["revenue"] - r["refunded"]) and r["net_revenue"] < r["revenue"]


def test_purchases_caused_by_messages_are_those_made(run):
    """The report counts a purchase a message caused once it reached Chorus: an order with the message's UTM tags or
    a till receipt, never one the model decided after the period or online for someone without an account."""
    rep, store, _ = run
    resp = rep["responses"]
    online = sum(1 for c, p in store["orders"] if p["event"] == "Order Completed" and p["properties"]["order_id"]
                 .split("-")[-1].startswith("m") and c != "store")  # fmt: skip
    in_store = sum(1 for c, p in store["orders"] if p["event"] == "Order Completed" and c == "store"
                   and p["properties"]["order_id"].split("-")[-1].startswith("m"))  # fmt: skip
    assert (resp.get("purchase:online", 0), resp.get("purchase:store", 0)) == (online, in_store)
    assert online + in_store > 0


def test_the_charts_are_pngs_of_the_reports_figures(run):
    rep, _, tmp = run
    want = {"messages_by_channel", "journey_funnels", "ltv_by_channels", "uplift", "attribution", "revenue"}
    assert set(rep["charts"]) == want
    for name, path in rep["charts"].items():
        assert path == str(tmp / "chorus-demo-charts" / f"{name}.png")
        with Image.open(path) as im:
            im.verify()  # a whole, valid PNG
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size == (1000, 600), (name, im.size)
    data = {name: charts.read_data(path) for name, path in rep["charts"].items()}
    by_status = Counter()
    for ch, statuses in data["messages_by_channel"].items():
        for status, n in statuses.items():
            by_status[(None if ch == "none" else ch, status)] += n
    assert by_status == {(r["channel"], r["status"]): r["count"] for r in rep["messages"]["by_channel_status"]}
    assert sum(by_status.values()) == rep["messages"]["total"]
    assert set(data["journey_funnels"]) == {j["id"] for j in rep["journeys"]}
    for j in rep["journeys"]:
        nodes = dict(map(tuple, data["journey_funnels"][j["id"]]))
        assert nodes == {n["node"]: n["entered"] for n in j["versions"][0]["nodes"]}
    omni = rep["analytics"]["omnichannel"]
    groups = {g["group"]: g for g in omni["groups"] if g["dimension"] == "channels" and g["customers"]}
    assert {k: (v["customers"], v["value"], v["clv"]) for k, v in data["ltv_by_channels"].items()} == {
        k: (g["customers"], g["value"], g["clv"]) for k, g in groups.items()}
    assert sum(v["customers"] for v in data["ltv_by_channels"].values()) == omni["totals"]["customers"]
    assert data["uplift"] == {r["journey_id"]: {k: r[k] for k in data["uplift"][r["journey_id"]]}
                              for r in rep["analytics"]["uplift"]["rows"]}  # fmt: skip
    att = rep["analytics"]["attribution"]
    assert list(data["attribution"]) == att["models"]
    for row in att["rows"]:
        assert data["attribution"][row["model"]][row["label"]] == row["conversions"]
    assert data["revenue"] == report.returns(rep)


def test_every_message_sent_arrived_and_nothing_else_did(run):
    rep, store, tmp = run
    sent = Counter(m["channel"] for m in store["messages"] if m["sent_at"] is not None)
    assert sent["email"] > 0 and sent["sms"] + sent["push"] + sent["messenger"] > 0, sent
    assert rep["deliveries_seen"] == dict(sent)  # what the SMTP server, Twilio's stand-in and the sinks received
    for channel in ("push", "messenger"):
        folder = tmp / "outbox" / channel
        files = sorted(p.stem for p in folder.glob("*.json")) if folder.exists() else []
        assert files == sorted(m["id"] for m in store["messages"] if m["channel"] == channel and m["sent_at"])


def test_the_demo_used_every_public_path(run):
    _, store, _ = run
    ch = store["channels"]
    for channel in ("web", "app", "store", "catalog", "server"):  # tracking (both keys) and the till imports
        assert ch[channel] > 0, (channel, ch)
    statuses = Counter(s["status"] for s in store["statuses"])
    # the open pixel, tracked links, RFC 8058, a feedback loop's ARF report, Twilio's status callback
    for status in ("opened", "clicked", "unsubscribed", "complained", "delivered"):
        assert statuses[status] > 0, statuses


def test_engagement_is_recorded_when_it_is_made(run):
    """An open or a click reaches Chorus at its own instant on the virtual clock, in time order with the customers'
    actions (review: made at the end of each hour's step, it came after the purchase it caused): the statuses'
    times are not all on the steps' boundaries."""
    _, store, _ = run
    engaged = [ts(s["at"]) for s in store["statuses"] if s["status"] in ("opened", "clicked")]
    assert engaged
    off_boundary = [t for t in engaged if (t.minute, t.second, t.microsecond) != (0, 0, 0)]
    assert len(off_boundary) > len(engaged) // 2, (len(off_boundary), len(engaged))


def test_every_customer_is_one_profile(run):
    """Unified profiles: her account, her e-mail and her loyalty card (known first from the till's imports, or from
    the web) are one profile, whichever channel met her first (review: a sign-up sent from the browser could not
    join the till's profile, and she was two people, her receipts skipped for want of an address)."""
    _, store, _ = run
    assert store["profiles_of"]
    split = {n: pids for n, pids in store["profiles_of"].items() if len(pids) > 1}
    assert not split, split


def test_a_till_purchase_ends_an_abandoned_cart_journey(run):
    """The omnichannel case: carts abandoned online and bought in a store, the till's file imported, end the
    journey (its goal, reached on any channel) before or after a reminder; the records name the till's time."""
    _, store, _ = run
    converted = [ts(r["at"]) for r in store["records"]
                 if r["journey_id"] == "abandoned_cart" and r["kind"] == "converted"]  # fmt: skip
    assert converted
    assert any(at in store["store_orders"] for at in converted)


def _before_split(doc: dict) -> set[str]:
    """The templates a journey sends before its first split: all its holdout arm may ever receive."""
    jdef.parse(doc)  # a valid journey: the walk below reads its JSON
    out, todo, seen = set(), [doc["start"]], set()
    while todo:
        nid = todo.pop()
        if nid in seen:
            continue
        seen.add(nid)
        node = doc["nodes"][nid]
        if node["type"] == "split":
            continue
        if node["type"] == "message":
            out.add(node["template"])
        nexts = [node.get(k) for k in ("next", "then", "else")] + [b.get("next") for b in node.get("branches", [])]
        nexts.append((node.get("timeout") or {}).get("next"))
        todo.extend(n for n in nexts if n)
    return out


def test_holdouts_received_nothing_and_nobody_heard_from_a_journey_after_leaving_it(run):
    """In the journey's own time (its records carry the time of the input that moved her): every message of an
    instance is one step through a message node, and none of those steps comes after her exit. (A message's
    created_at is when the worker processed the step, up to one virtual-clock step later.)"""
    _, store, _ = run
    defs = install.load(datetime.fromisoformat(START + "T00:00:00+00:00"))
    message_nodes = {(jid, nid) for jid, doc in defs.journeys.items()
                     for nid, node in doc["nodes"].items() if node["type"] == "message"}  # fmt: skip
    held = {r["instance_id"] for r in store["records"] if r["arm"] == "holdout"}
    exited = {r["instance_id"]: ts(r["at"]) for r in store["records"] if r["kind"] == "exited"}
    sends = Counter()
    for r in store["records"]:
        if r["kind"] == "step" and (r["journey_id"], r["node"]) in message_nodes:
            sends[r["instance_id"]] += 1
            if r["instance_id"] in exited:
                assert ts(r["at"]) <= exited[r["instance_id"]], r
    assert held, "some people were held out"
    got = Counter()
    for m in store["messages"]:
        if m["journey_id"] in defs.journeys:
            instance = m["idempotency_key"].split(":")[0]
            got[instance] += 1
            if instance in held:
                assert m["template"] in _before_split(defs.journeys[m["journey_id"]]), m
    assert got == sends, "one message per step through a message node, and no other"
    assert sum(got.values()) > 20


def test_an_unsubscribe_stops_that_topic_at_once(run):
    _, store, _ = run
    by_id = {m["id"]: m for m in store["messages"]}
    unsubscribed = [(by_id[s["message_id"]], ts(s["at"])) for s in store["statuses"] if s["status"] == "unsubscribed"]
    assert unsubscribed
    for msg, at in unsubscribed:
        later = [m for m in store["messages"] if m["profile_id"] == msg["profile_id"] and m["channel"] == "email"
                 and m["kind"] == "marketing" and m["topic"] == msg["topic"] and ts(m["created_at"]) > at]  # fmt: skip
        assert later == [], (msg["id"], later)


def test_a_spam_complaint_is_recorded_and_ends_every_email(run):
    """Every complaint the customers made reached Chorus as a feedback loop's ARF report and is in its message's
    history, and the report's count is the store's; from the instant Chorus received the report, no email went to
    her (her email consent is denied for every topic, receipts included)."""
    rep, store, _ = run
    complained = {s["message_id"] for s in store["statuses"] if s["status"] == "complained"}
    assert rep["complaints"] and {c["message_id"] for c in rep["complaints"]} == complained
    assert rep["complaints_recorded"] == len(complained) == len(rep["complaints"])
    assert rep["responses"]["email:complained"] >= len(complained)
    by_id = {m["id"]: m for m in store["messages"]}
    for c in rep["complaints"]:
        msg, at = by_id[c["message_id"]], ts(c["at"])
        assert msg["channel"] == "email" and msg["kind"] == "marketing" and msg["address"] == c["address"], msg
        later = [m["id"] for m in store["messages"] if m["channel"] == "email" and m["sent_at"] is not None
                 and (m["profile_id"] == msg["profile_id"] or m["address"] == c["address"])
                 and ts(m["sent_at"]) > at]  # fmt: skip
        assert later == [], (c, later)


def test_an_sms_stop_ends_every_sms_at_once(run):
    """STOP went to Chorus as Twilio sends it (the inbound webhook, signed); from the instant Chorus received it, no
    SMS to that number, transactional ones included."""
    rep, store, _ = run
    assert rep["stops"]
    for stop in rep["stops"]:
        at = ts(stop["at"])
        later = [m["id"] for m in store["messages"]
                 if m["channel"] == "sms" and m["address"] == stop["phone"] and ts(m["created_at"]) >= at]  # fmt: skip
        assert later == [], stop


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--customers", "0"], "--customers"),
        (["--days", "-3"], "--days"),
        (["--customers", "lots"], "--customers"),
        (["--set", "email_open=2"], "out of range"),
        (["--set", "nonsense=1"], "no such parameter"),
        (["--set", "email_open"], "NAME=NUMBER"),
        (["--start", "yesterday"], "--start"),
        (["--db", "mysql://x/y"], "--db"),
    ],
)
def test_bad_input_is_refused_with_exit_code_2(tmp_path, args, message):
    r = demo(tmp_path, *args, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr[-500:])
    assert message in r.stderr
    assert not (tmp_path / "demo.db").exists(), "nothing is created for a refused command"


def test_a_directory_as_the_store_or_a_file_as_the_outbox_is_refused(tmp_path):
    (tmp_path / "d").mkdir()
    r = demo(tmp_path, "--db", f"sqlite:///{tmp_path / 'd'}", "--replace", timeout=60)
    assert r.returncode == 2 and "is a directory" in r.stderr and (tmp_path / "d").is_dir()
    (tmp_path / "f").write_text("x")
    r = demo(tmp_path, "--outbox", str(tmp_path / "f"), timeout=60)
    assert r.returncode == 2 and "is a file" in r.stderr and (tmp_path / "f").read_text() == "x"


def test_replace_never_empties_a_directory_the_demo_did_not_make(tmp_path):
    """--replace empties only a directory a demo made (its marker), and only once every option is good (review: a
    refused command had already deleted the outbox given, whatever it held)."""
    precious = tmp_path / "outbox"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    r = demo(tmp_path, "--replace", "--db", "mysql://x/y", timeout=60)
    assert r.returncode == 2 and (precious / "thesis.txt").read_text() == "years of work"
    r = demo(tmp_path, "--replace", "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode == 2 and "not made by chorus demo" in r.stderr
    assert (precious / "thesis.txt").read_text() == "years of work" and not (tmp_path / "demo.db").exists()
    r = demo(tmp_path, "--replace", "--outbox", str(tmp_path), "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode == 2 and "never emptied" in r.stderr and (precious / "thesis.txt").exists()


def test_a_store_in_a_missing_directory_is_refused(tmp_path):
    r = demo(tmp_path, "--db", f"sqlite:///{tmp_path / 'no' / 'such' / 'x.db'}", timeout=60)
    assert r.returncode == 2 and "not a directory this user can write in" in r.stderr, r.stderr[-500:]


def test_every_data_file_of_the_package_is_installed():
    """A wheel or `pip install .` carries the files the code reads (review: the demo's definitions were left out of
    the package data, so only an editable install could run it)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    import chorus

    root = Path(chorus.__file__).parent
    project = Path(chorus.__file__).parents[2] / "pyproject.toml"
    globs = tomllib.loads(project.read_text())["tool"]["setuptools"]["package-data"]["chorus"]
    data = [p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]  # fmt: skip
    assert data
    assert [f for f in data if not any(fnmatch.fnmatch(f, g) for g in globs)] == []


def test_a_wrong_chorus_gc_stops_the_demo_before_it_creates_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("CHORUS_GC", "sometimes")
    r = demo(tmp_path, "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode != 0 and "CHORUS_GC must be tuned or default" in r.stderr
    assert not (tmp_path / "demo.db").exists()


def test_an_existing_store_is_not_overwritten_without_replace(tmp_path):
    (tmp_path / "demo.db").write_bytes(b"precious")
    r = demo(tmp_path, "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode == 2 and "--replace" in r.stderr
    assert (tmp_path / "demo.db").read_bytes() == b"precious"


def test_a_store_with_chorus_data_is_refused(db_url, engine, tmp_path):
    """The demo's made-up customers never mix with an installation's data (SQLite: the file exists; PostgreSQL:
    the database holds workspaces)."""
    from chorus import workspaces

    workspaces.create(engine, "shop")
    cmd = [sys.executable, "-m", "chorus.cli", "demo", "--db", db_url, "--customers", "5", "--days", "1",
           "--outbox", str(tmp_path / "outbox")]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path, env=os.environ.copy())
    assert r.returncode == 2, r.stderr[-800:]
    assert "--db" in r.stderr
    with engine.connect() as conn:
        assert [w.name for w in workspaces.list_all(conn)] == ["shop"]


def test_the_text_report_prints_every_section(tmp_path):
    """What a person running `chorus demo` in a terminal reads (the tests above read --json)."""
    r = demo(tmp_path, "--customers", "40", "--days", "9", "--seed", "3", "--start", START, "--set", "sms_stop=0.5")
    assert r.returncode == 0, r.stderr[-3000:]
    for title in ("Behaviour model: every parameter", "Journeys and broadcasts: conversions by arm",
                  "Journey funnels per node", "Messages by channel and status", "What the customers did",
                  "Uplift against the holdouts", "Value per customer by channels used", "Showrooming and webrooming",
                  "Revenue and returns over the period", "Stock per store", "Lifetime value by number of channels",
                  "Attribution by model: conversions credited", "Spam complaints: "):  # fmt: skip
        assert title in r.stdout, title  # the report on stdout: `chorus demo > report.txt` keeps it
    for line in ("charts: ", "Workspace 'demo' (keys are shown only now): api_key ak_", "40 customers over 9 days"):
        assert line in r.stderr, line  # progress, keys and the summary on stderr
    assert "spring_sale" in r.stdout and "[s004]" in r.stdout, "the broadcast and the parameters' sources"
    # the API's warnings about small arms are printed beside the figures, as the JSON has them
    assert "warning: " in r.stdout and "fewer than 30" in r.stdout
    assert "errors were logged" not in r.stderr


def _kill_group(proc: subprocess.Popen) -> None:
    """The demo and the server it started (its child, in the demo's session): a failed test leaves neither behind."""
    import signal

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _wait_for_the_guide(proc: subprocess.Popen, err_path) -> None:
    """Until `chorus demo --serve` has printed its guide to the served store (the server answers)."""
    import time

    deadline = time.monotonic() + 120
    while "Ctrl-C stops the server" not in err_path.read_text():
        assert proc.poll() is None, err_path.read_text()[-3000:]
        assert time.monotonic() < deadline, err_path.read_text()[-3000:]
        time.sleep(0.3)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_printed_serve_command_erases_the_sink_files_of_a_persons_messages(run, tmp_path):
    """The command the demo prints to explore its store (with --json too, on stderr) serves it with the demo's
    outbox, so an erasure there deletes the push and Messenger files of her messages (a probe found them left: the
    server looked in ./chorus-outbox). On a copy of the run's store and outbox: the run's own stay as they are."""
    import re
    import shutil
    import signal
    import sqlite3
    import time

    import httpx

    _, _, tmp = run
    text = (tmp / "stderr.txt").read_text()
    key = re.search(r"api_key (ak_\S+),", text).group(1)
    line = re.search(r"Explore it: (CHORUS_LAKE_DIR=(\S+) CHORUS_OUTBOX_DIR=(\S+) chorus serve --no-worker --db (\S+))",
                     text)  # fmt: skip
    assert line, text[-2000:]
    lake, outbox, db = line.group(2), line.group(3), line.group(4)
    assert outbox == str(tmp / "outbox") and db == f"sqlite:///{tmp / 'demo.db'}"
    shutil.copy(tmp / "demo.db", tmp_path / "demo.db")
    shutil.copytree(outbox, tmp_path / "outbox")
    files = sorted(p for ch in ("push", "messenger") for p in (tmp_path / "outbox" / ch).glob("*.json"))
    assert files, "the run wrote no push or Messenger file to erase"
    con = sqlite3.connect(tmp_path / "demo.db")
    owner = {p: con.execute("SELECT profile_id FROM messages WHERE id = ?", (p.stem,)).fetchone()[0] for p in files}
    aliases = dict(con.execute("SELECT alias_id, profile_id FROM profile_aliases").fetchall())
    con.close()
    pid = aliases.get(owner[files[0]], owner[files[0]])  # her profile now (a message keeps the id it was sent to)
    port = _free_port()
    env = {**os.environ, "CHORUS_LAKE_DIR": lake, "CHORUS_OUTBOX_DIR": str(tmp_path / "outbox")}
    cmd = [sys.executable, "-m", "chorus.cli", "serve", "--no-worker", "--db", f"sqlite:///{tmp_path / 'demo.db'}",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "chorus serve did not start"
            time.sleep(0.2)
        r = httpx.delete(f"{base}/api/profiles/{pid}", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == 200, r.text[:500]
        erased = {pid, *r.json().get("erased_with", [])}  # and a profile that held only her app's token, if any
        hers = {p for p in files if aliases.get(owner[p], owner[p]) in erased}
        assert r.json()["deleted"]["sink_files"] == len(hers), r.text[:500]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert not any(p.exists() for p in hers)
    assert all(p.exists() for p in files if p not in hers)  # nobody else's
    assert (tmp / "outbox" / files[0].parent.name / files[0].name).exists()  # the run's own outbox untouched


def test_serve_answers_over_http_until_stopped(tmp_path):
    """`chorus demo --serve`: once the report is printed, `chorus serve` answers on the port given with the demo's
    data (its journeys, its analytics on the lake) to the api key printed; SIGINT (Ctrl-C) stops it, exit code 0."""
    import re
    import signal

    import httpx

    port = _free_port()
    cmd = [sys.executable, "-m", "chorus.cli", "demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--customers",
           "30", "--days", "3", "--seed", "5", "--start", START, "--serve", "--port", str(port)]  # fmt: skip
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, cwd=tmp_path,
                                env={**os.environ, "COLUMNS": "200"}, start_new_session=True)  # fmt: skip
        try:
            _wait_for_the_guide(proc, err_path)
            text = err_path.read_text()
            assert f"served on http://127.0.0.1:{port}" in text
            key = re.search(r"API key \(admin API, Authorization: Bearer\): (ak_\S+)", text).group(1)
            auth = {"Authorization": f"Bearer {key}"}
            base = f"http://127.0.0.1:{port}"
            got = httpx.get(f"{base}/api/journeys", headers=auth, timeout=30)
            assert got.status_code == 200 and "abandoned_cart" in {j["id"] for j in got.json()["journeys"]}
            omni = httpx.get(f"{base}/api/analytics/omnichannel", headers=auth, timeout=60)
            assert omni.status_code == 200 and omni.json()["totals"]["customers"] > 0, omni.text[:300]
            assert httpx.get(f"{base}/api/journeys", timeout=30).status_code == 401, "the admin API needs the key"
            # the guide's first curl line: one of the demo's customers, across her channels
            pid = re.search(rf"curl -H \"Authorization: Bearer {key}\" {base}/api/profiles/(\S+)\n", text).group(1)
            profile = httpx.get(f"{base}/api/profiles/{pid}", headers=auth, timeout=30)
            assert profile.status_code == 200 and profile.json()["id"] == pid, profile.text[:300]
            # a second demo in the same directory, with --replace, would delete this one's data under it: refused,
            # naming what is in use, and nothing of the first one's is touched (review: the second emptied the
            # first's outbox); with a store of its own, the shared outbox is still refused
            outbox = tmp_path / "chorus-demo-outbox"
            before = sorted(p.name for p in outbox.iterdir())
            second = [sys.executable, "-m", "chorus.cli", "demo", "--customers", "5", "--days", "1", "--replace"]
            own = ["--outbox", "o2", "--lake", "l2", "--charts", "c2", "--db", cmd[cmd.index("--db") + 1]]
            for extra, option in (([], "--outbox"), (["--db", f"sqlite:///{tmp_path / 'other.db'}"], "--outbox"),
                                  (own, "--db")):
                r = subprocess.run([*second, *extra], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                   env={**os.environ, "COLUMNS": "500"})  # fmt: skip
                assert r.returncode == 2 and "in use by another chorus demo" in r.stderr, r.stderr[-800:]
                assert f"Invalid value for {option}:" in r.stderr, r.stderr[-800:]
            assert sorted(p.name for p in outbox.iterdir()) == before and not (tmp_path / "other.db").exists()
            again = httpx.get(f"{base}/api/profiles/{pid}", headers=auth, timeout=30)
            assert again.status_code == 200 and again.json()["id"] == pid, again.text[:300]
            proc.send_signal(signal.SIGINT)
            try:  # the server is given 15 s to stop gracefully, then killed; a loaded machine may need the rest
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError("the demo did not stop on SIGINT:\n" + err_path.read_text()[-3000:]) from None
            assert code == 0, err_path.read_text()[-3000:]
        finally:
            _kill_group(proc)
    with pytest.raises(httpx.ConnectError):  # the server stopped with it
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "Stopped." in err_path.read_text()
    # once it stopped, the same command may replace it (the lock went with the process)
    r = subprocess.run([*cmd[:cmd.index("--serve")], "--replace", "--json"], capture_output=True, text=True,
                       timeout=240, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def test_serve_on_a_taken_port_is_refused_before_the_run(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = demo(tmp_path, "--customers", "5", "--days", "1", "--serve", "--port", str(s.getsockname()[1]), timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "demo.db").exists()


def test_serve_stops_on_ctrl_c_whichever_thread_the_kernel_hands_it_to(tmp_path):
    """The kernel delivers a process's SIGINT to any of its threads. The demo's main thread waited for the server in
    one blocking ``waitpid``: when Ctrl-C went to another thread (the demo's servers and pools leave some), Python's
    handler never ran and the demo hung (the suite saw it twice under load). Here SIGINT is sent to a thread other
    than the main one (``tgkill``), deterministically."""
    import ctypes
    import signal

    port = _free_port()
    cmd = [sys.executable, "-m", "chorus.cli", "demo", "--db", f"sqlite:///{tmp_path / 'demo.db'}", "--customers",
           "10", "--days", "1", "--seed", "5", "--start", START, "--serve", "--port", str(port)]  # fmt: skip
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_file, cwd=tmp_path,
                                env={**os.environ, "COLUMNS": "200"}, start_new_session=True)  # fmt: skip
        try:
            _wait_for_the_guide(proc, err_path)
            def blocks_sigint(tid: int) -> bool:  # a thread that blocks it (jemalloc's) would never take it
                with open(f"/proc/{proc.pid}/task/{tid}/status") as fh:
                    mask = next(line for line in fh if line.startswith("SigBlk:")).split()[1]
                return bool(int(mask, 16) & (1 << (signal.SIGINT - 1)))

            others = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")
                      if int(t) != proc.pid and not blocks_sigint(int(t))]  # fmt: skip
            assert others, "the demo has threads besides its main one"
            libc = ctypes.CDLL(None, use_errno=True)
            assert libc.syscall(234, proc.pid, others[0], signal.SIGINT) == 0  # tgkill (x86-64)
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                raise AssertionError("the demo did not stop on SIGINT:\n" + err_path.read_text()[-2000:]) from None
            assert code == 0 and "Stopped." in err_path.read_text()
        finally:
            _kill_group(proc)


def test_the_printed_store_url_works_from_any_directory(tmp_path, monkeypatch):
    """The default store is ``./chorus-demo.db``: the printed command names it by its absolute path (an outside probe
    ran it from another directory and got a new empty store, and a 401 for the printed key)."""
    from chorus.demo.cli import _absolute

    monkeypatch.chdir(tmp_path)
    assert _absolute("sqlite:///./chorus-demo.db") == f"sqlite:///{tmp_path / 'chorus-demo.db'}"
    assert _absolute(f"sqlite:///{tmp_path / 'a.db'}") == f"sqlite:///{tmp_path / 'a.db'}"
    assert _absolute("postgresql://u@h/db") == "postgresql://u@h/db"
