"""`chorus demo --compare` end to end (a subprocess, as a user runs it), then its claims checked against the two
stores it wrote: both runs posted the same plan; the multichannel brand sent messages after the person had bought
elsewhere (the store says so: her purchase, in another team's workspace, came before the message) and the
omnichannel brand sent nothing after a journey's exit; every message sent was allowed by the consent its workspace
held (no email at all after a spam complaint); the comparison's figures are the stores' own (messages per channel,
unsubscribes, spam complaints, journey conversions, revenue in the brand's books) and the customers' (what they
bought, the complaints they made).

Model parameters are changed (``--set``) so that a small population unsubscribes, reports email as spam, answers
STOP and buys abandoned carts in a store often enough to check."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from decimal import Decimal

import orjson
import pytest
import sqlalchemy as sa

from chorus.demo import compare, events, install, model
from chorus.demo.params import DEFAULTS
from tests.demo.test_demo_run import START, demo, ts

CUSTOMERS = 100


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compare")
    r = demo(tmp, "--compare", "--customers", str(CUSTOMERS), "--days", "21", "--seed", "11", "--start", START,
             "--json", "--set", "email_open=0.6", "--set", "email_unsubscribe=0.15", "--set", "email_complaint=0.03",
             "--set", "sms_stop=0.3",
             "--set", "add_rate=0.7", "--set", "cart_return_online=0", "--set", "cart_return_store=1",
             timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    stores = {}
    for side, name in (("omnichannel", "demo.db"), ("multichannel", "demo-multichannel.db")):
        engine = sa.create_engine(f"sqlite:///{tmp / name}")
        with engine.connect() as conn:
            q = lambda sql: [dict(m._mapping) for m in conn.execute(sa.text(sql))]  # noqa: E731
            stores[side] = {
                "workspaces": {w["id"]: w["name"] for w in q("SELECT id, name FROM workspaces")},
                "messages": q("SELECT * FROM messages"),
                "statuses": q("SELECT * FROM message_status"),
                "records": q("SELECT * FROM journey_records"),
                "orders": q("SELECT workspace_id, profile_id, timestamp, payload FROM events "
                            "WHERE event = 'Order Completed'"),
                "adds": q("SELECT workspace_id, profile_id, timestamp FROM events WHERE event = 'Product Added'"),
                "customer_of": {(i["workspace_id"], i["profile_id"]): int(m.group(1) or m.group(2) or m.group(3))
                                for i in q("SELECT workspace_id, ident, profile_id FROM identifiers")
                                if (m := re.fullmatch(r"user_id:cust-(\d+)|email:[a-z]+\.(\d+)@customers\."
                                                      r"example|loyalty_id:KL-(\d+)", i["ident"]))},
            }  # fmt: skip
        engine.dispose()
    return orjson.loads(r.stdout), stores


def test_both_runs_posted_the_same_plan(run):
    doc, _ = run
    runs = doc["runs"]
    assert doc["comparison"]["same_plan"] is True
    assert runs["multichannel"]["plan_digest"] == runs["omnichannel"]["plan_digest"] != ""
    # and what the customers answered differs: the brands sent them different things
    assert runs["multichannel"]["responses"] != runs["omnichannel"]["responses"]
    assert doc["errors_logged"] == 0


def _customer_orders(store: dict) -> dict[int, list[datetime]]:
    out: dict[int, list[datetime]] = {}
    for o in store["orders"]:
        n = store["customer_of"].get((o["workspace_id"], o["profile_id"]))
        if n is not None:
            out.setdefault(n, []).append(ts(o["timestamp"]))
    return out


def test_the_multichannel_brand_reminded_people_of_carts_they_had_bought_in_a_store(run):
    """The world's record checked against the multichannel store: each such cart reminder was sent after an order of
    hers made after her last add to cart, and some of those orders are only in another team's workspace."""
    doc, stores = run
    store = stores["multichannel"]
    wasted = [w for w in doc["runs"]["multichannel"]["wasted"] if w["why"] == "cart reminder after she bought"]
    assert wasted, doc["comparison"]["sides"]["multichannel"]
    by_id = {m["id"]: m for m in store["messages"]}
    orders = _customer_orders(store)
    adds: dict[int, list[datetime]] = {}
    for a in store["adds"]:
        n = store["customer_of"].get((a["workspace_id"], a["profile_id"]))
        adds.setdefault(n, []).append(ts(a["timestamp"]))
    elsewhere = 0
    for w in wasted:
        msg = by_id[w["message_id"]]
        n = int(w["user_id"].removeprefix("cust-"))
        at = ts(msg["sent_at"])  # when she got it (a capped message waits: it may be created before she bought)
        last_add = max(t for t in adds[n] if t <= at)
        assert any(last_add <= t <= at for t in orders[n]), (w, last_add, orders[n])
        # the sending workspace's own copy of her orders has none since her last add: another team's system has it
        own = {o["profile_id"] for o in store["orders"] if o["workspace_id"] == msg["workspace_id"]
               and last_add <= ts(o["timestamp"]) <= at}  # fmt: skip
        elsewhere += msg["profile_id"] not in own
    assert elsewhere > 0
    assert doc["comparison"]["sides"]["multichannel"]["wasted"] > doc["comparison"]["sides"]["omnichannel"]["wasted"]


def test_the_omnichannel_brand_sent_nothing_after_a_journeys_exit(run):
    """In the one workspace: no step through a message node after the instance's exit, one message per such step,
    and no marketing email after an unsubscribe from its topic (which the multichannel brand's other teams send)."""
    doc, stores = run
    store = stores["omnichannel"]
    exited = {r["instance_id"]: ts(r["at"]) for r in store["records"] if r["kind"] == "exited"}
    steps = Counter()
    defs = install.load(datetime.fromisoformat(START + "T00:00:00+00:00"))
    message_nodes = {(jid, nid) for jid, d in defs.journeys.items()
                     for nid, node in d["nodes"].items() if node["type"] == "message"}  # fmt: skip
    for r in store["records"]:
        if r["kind"] == "step" and (r["journey_id"], r["node"]) in message_nodes:
            steps[r["instance_id"]] += 1
            assert r["instance_id"] not in exited or ts(r["at"]) <= exited[r["instance_id"]], r
    sent = Counter(m["idempotency_key"].split(":")[0] for m in store["messages"] if m["journey_id"] in defs.journeys)
    assert sent == steps and sum(sent.values()) > 20
    wasted = Counter(w["why"] for w in doc["runs"]["omnichannel"]["wasted"])
    assert wasted["marketing email after she unsubscribed from its topic"] == 0
    assert wasted["marketing email after she reported the brand's email as spam"] == 0
    # a message still waiting (a cap, quiet hours) when her instance left by its goal or an exit criterion was
    # withdrawn, not sent: no message of such an instance went out after it was withdrawn (decision 0045)
    left = {r["instance_id"] for r in store["records"] if r["kind"] == "exited"
            and (r["detail"] == "goal reached" or r["detail"].startswith("exit["))}  # fmt: skip
    withdrawn = [m for m in store["messages"] if (m["reason"] or "").startswith("withdrawn: ")]
    assert withdrawn and all(m["idempotency_key"].split(":")[0] in left and m["sent_at"] is None for m in withdrawn)
    assert wasted["cart reminder after she bought"] < doc["comparison"]["sides"]["multichannel"]["wasted"]


@pytest.mark.parametrize("side", ["multichannel", "omnichannel"])
def test_every_message_was_allowed_by_its_workspaces_consent(run, side):
    """From the instant Chorus took an unsubscribe, no marketing email of that topic to her from that workspace;
    from a spam complaint (the feedback loop's report), no email at all to her from that workspace; from a STOP, no
    SMS at all to that number."""
    doc, stores = run
    store = stores[side]
    by_id = {m["id"]: m for m in store["messages"]}
    unsubscribed = [(by_id[s["message_id"]], ts(s["at"])) for s in store["statuses"] if s["status"] == "unsubscribed"]
    assert unsubscribed, side
    for msg, at in unsubscribed:
        later = [m["id"] for m in store["messages"] if m["workspace_id"] == msg["workspace_id"]
                 and m["profile_id"] == msg["profile_id"] and m["channel"] == "email" and m["kind"] == "marketing"
                 and m["topic"] == msg["topic"] and ts(m["created_at"]) > at]  # fmt: skip
        assert later == [], (side, msg["id"], later)
    complaints = doc["runs"][side]["complaint_records"]
    assert complaints, side
    for c in complaints:
        msg, at = by_id[c["message_id"]], ts(c["at"])  # when Chorus received the report
        later = [m["id"] for m in store["messages"] if m["workspace_id"] == msg["workspace_id"]
                 and (m["profile_id"] == msg["profile_id"] or m["address"] == c["address"])
                 and m["channel"] == "email" and m["sent_at"] is not None and ts(m["sent_at"]) > at]  # fmt: skip
        assert later == [], (side, c, later)
    stops = [(s["phone"], ts(s["at"])) for s in doc["runs"][side]["stop_records"]]
    for address, at in stops:
        assert not [m for m in store["messages"] if m["channel"] == "sms" and m["address"] == address
                    and ts(m["created_at"]) > at]  # fmt: skip


@pytest.mark.parametrize("side", ["multichannel", "omnichannel"])
def test_the_comparison_is_what_each_runs_store_and_customers_say(run, side):
    doc, stores = run
    store, row = stores[side], doc["comparison"]["sides"][side]
    sent = Counter(m["channel"] for m in store["messages"] if m["sent_at"] is not None)
    assert row["sent_by_channel"] == dict(sent) and row["messages_sent"] == sum(sent.values()) > 0
    channel_of = {m["id"]: m["channel"] for m in store["messages"]}
    unsubscribed = Counter(channel_of[s["message_id"]] for s in store["statuses"] if s["status"] == "unsubscribed")
    assert row["unsubscribes"] == row["unsubscribes_recorded"] == unsubscribed["email"] > 0, (row, unsubscribed)
    assert row["stops"] == row["stops_recorded"] > 0, row
    # every complaint the customers made is in its message's history, and the stores hold no other
    complained = [s["message_id"] for s in store["statuses"] if s["status"] == "complained"]
    assert sorted(complained) == sorted(c["message_id"] for c in doc["runs"][side]["complaint_records"])
    assert row["complaints"] == row["complaints_made"] == row["complaints_recorded"] == len(complained) > 0, row
    assert all(channel_of[m] == "email" for m in complained)
    assert row["conversions_reported"] == sum(r["kind"] == "converted" for r in store["records"])
    # the brand's books: the workspaces that hold orders (the app team's copy of app orders is not counted twice)
    books = {w for w, name in store["workspaces"].items()
             if name == "demo" or compare.silos().get(name, {}).get("books")}  # fmt: skip
    revenue = sum(Decimal(str(orjson.loads(o["payload"])["properties"]["revenue"])) for o in store["orders"]
                  if o["workspace_id"] in books)  # fmt: skip (the tills' files give it as a string)
    assert row["revenue"] == pytest.approx(float(revenue)) == pytest.approx(doc["runs"][side]["revenue"])
    assert row["orders"] == sum(doc["runs"][side]["purchases"].values())
    costs = {c["channel"]: c["eur"] for c in doc["costs"]}
    assert row["cost"] == pytest.approx(sum(n * costs[ch] for ch, n in sent.items()), abs=0.02)
    table = {what.strip(): (m, o) for what, m, o in compare.rows(doc["comparison"])}
    assert table["messages sent"][0 if side == "multichannel" else 1] == sum(sent.values())
    assert table["spam complaints (feedback loop)"][0 if side == "multichannel" else 1] == len(complained)


def test_the_multichannel_brand_is_a_workspace_per_team_fed_by_its_own_systems():
    """Every action of a plan reaches a team, the tills' files only the stores' workspace, an app event the app
    team's too; each team's journeys send only on its channels and pass Chorus' validators."""
    start = datetime.fromisoformat(START + "T00:00:00+00:00")
    teams = compare.silos()
    layout = compare.Silos(teams, start)
    seen = Counter()
    for plan in model.customers(3, 40, start, 30, p=DEFAULTS):
        for a in plan.actions:
            got = layout.targets(a)
            seen.update(got)
            if events.route(a) not in (events.CLIENT, events.SERVER):
                assert got == ("stores",), a
            else:
                assert "online" in got and ("app" in got) == (a.channel in ("app", "store")), a
    assert all(seen[n] for n in teams)
    defs = install.load(start)
    for name, team in teams.items():
        mine = compare.silo_definitions(defs, team, start)
        assert mine.journeys, name
        for doc in mine.journeys.values():
            for node in doc["nodes"].values():
                if node["type"] == "message":
                    asked = node.get("channel", "auto")
                    variants = defs.templates[node["template"]]["variants"]
                    channels = list(variants) if asked == "auto" else asked
                    assert set(channels) <= set(team["channels"]), (name, doc["id"], node)
    app = compare.silo_definitions(defs, teams["app"], start)
    assert "welcome" not in app.journeys  # the welcome code has no push variant
    cart = app.journeys["abandoned_cart"]["nodes"]
    assert "second_reminder" not in cart and cart["wait_click"]["timeout"]["next"] == "done"


def test_compare_is_refused_on_postgresql_and_with_an_existing_second_store(tmp_path):
    r = demo(tmp_path, "--compare", "--db", "postgresql://127.0.0.1/nothing_here", timeout=60)
    assert r.returncode == 2 and "--compare" in r.stderr, r.stderr[-500:]
    (tmp_path / "demo-multichannel.db").write_bytes(b"precious")
    r = demo(tmp_path, "--compare", "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode == 2 and "--replace" in r.stderr, r.stderr[-500:]
    assert (tmp_path / "demo-multichannel.db").read_bytes() == b"precious"
    assert not (tmp_path / "demo.db").exists() and not (tmp_path / "outbox").exists()


def test_compare_refuses_serve_and_leaves_the_charts_of_another_run_alone(tmp_path):
    """--compare prints its own comparison: --serve (which store?) is refused before anything is made, and a
    charts directory another run filled neither stops it nor is emptied by --replace (review)."""
    r = demo(tmp_path, "--compare", "--serve", "--customers", "5", "--days", "1", timeout=60)
    assert r.returncode == 2 and "--serve" in r.stderr, r.stderr[-500:]
    assert not (tmp_path / "demo.db").exists() and not (tmp_path / "outbox").exists()
    charts = tmp_path / "chorus-demo-charts"
    charts.mkdir()
    (charts / ".chorus-demo").write_text("")
    (charts / "uplift.png").write_bytes(b"a chart")
    r = demo(tmp_path, "--compare", "--replace", "--json", "--customers", "30", "--days", "7", "--start", START,
             timeout=180)
    assert r.returncode == 0, r.stderr[-800:]
    assert (charts / "uplift.png").read_bytes() == b"a chart"



def test_a_compare_run_where_a_team_reaches_nobody_reports_zeros_for_it(tmp_path):
    """Five customers for a day: some team's workspace gets no event at all, and its lake has nothing of it (the API
    answers 400 naming the lake); the comparison reports that team as zeros (it stopped the run)."""
    r = demo(tmp_path, "--compare", "--json", "--customers", "5", "--days", "1", "--seed", "1", "--start", START,
             timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-800:]
    spaces = orjson.loads(r.stdout)["runs"]["multichannel"]["workspaces"]
    empty = [n for n, w in spaces.items() if w["messages"] == 0 and w["customers"] == 0]
    assert empty and all(spaces[n]["orders"] == 0 and spaces[n]["revenue"] == 0 for n in empty)


def test_the_text_report_shows_the_comparison_the_assumptions_and_the_claims(run):
    """What a person running `chorus demo --compare` in a terminal reads (the tests above read --json)."""
    from rich.console import Console

    from chorus.demo import report

    doc, _ = run
    console = Console(record=True, width=200)
    report.show_params(console, doc["parameters"])
    compare.show_assumptions(console, doc["teams"])
    compare.show(console, doc)
    text = console.export_text()
    for title in ("Behaviour model: every parameter", "annoyance_lift", "a workspace per team", "Cost per message",
                  "Multichannel vs omnichannel: the same 100 customers", "sent after she had already done it",
                  "The same plan in both runs: yes", "The seeds' claims", "[s000]", "[s003]", "This is a simulation"):
        assert title in text, title
