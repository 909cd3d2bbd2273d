"""The demo's report, read only through Chorus' own API (what a brand's analyst would read), and its Rich rendering.

``collect`` gathers it as plain JSON (the `--json` output, and what the tests check against the store); ``show``
prints it.
"""

from __future__ import annotations

from collections import Counter

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chorus.demo import params
from chorus.demo.client import Chorus


def _key(item) -> tuple:
    return tuple(str(v) for v in item[0])  # a skipped message has no channel (None)


def collect(api: Chorus, out) -> dict:
    msgs = api.pages("/api/messages", "messages")
    by_channel = Counter((m["channel"], m["status"]) for m in msgs)
    by_template = Counter((m["template"], m["channel"]) for m in msgs)
    journeys = []
    for j in api.get("/api/journeys", limit=1000)["journeys"]:
        stats = api.get(f"/api/journeys/{j['id']}/stats")
        journeys.append({"id": j["id"], "totals": stats["totals"], "versions": stats["versions"]})
    broadcasts = [api.get(f"/api/broadcasts/{b['id']}") for b in api.get("/api/broadcasts", limit=1000)["broadcasts"]]
    segments = {s["id"]: s["members"] for s in api.get("/api/segments", limit=1000)["segments"]}
    # the reports a brand's analyst runs on the lake (`chorus lake export` was run at the end of the period)
    analytics = {
        "uplift": api.get("/api/analytics/uplift", window_days=30),
        "omnichannel": api.get("/api/analytics/omnichannel", bootstrap=1000),
        "showrooming": api.get("/api/analytics/showrooming", window_days=7),
        # every model side by side (rule-based, Markov, Shapley), credit per channel
        "attribution": api.get("/api/analytics/attribution", by="channel"),
    }
    audiences = {a["name"]: a.get("members") for a in api.get("/api/audiences", limit=1000)["audiences"]}
    return {
        "workspace_id": out.workspace_id,
        "actions": dict(out.actions),
        "events_sent": out.events_sent,
        "deliveries_seen": dict(out.deliveries),
        "responses": dict(out.responses),
        "unsubscribes": out.unsubscribes,
        "stops": out.stops,
        # spam complaints: those the customers made (their feedback-loop reports posted), and those Chorus recorded
        # (GET /api/messages?status=complained: the message's history)
        "complaints": out.complaints,
        "complaints_recorded": len(api.pages("/api/messages", "messages", status="complained")),
        "worker": {"passes": out.passes, "seconds": round(out.worker_seconds, 1)},
        "messages": {"total": len(msgs),
                     "by_channel_status": [{"channel": c, "status": s, "count": n}
                                           for (c, s), n in sorted(by_channel.items(), key=_key)],
                     "by_template": [{"template": t, "channel": c, "count": n}
                                     for (t, c), n in sorted(by_template.items(), key=_key)]},
        "journeys": journeys,
        "broadcasts": broadcasts,
        "segments": segments,
        "lake": out.lake,
        "analytics": analytics,
        "audiences": audiences,
        # the stores' own record (stock is not data Chorus holds): what the shelves let people buy
        "stock": out.stock,
    }  # fmt: skip


def show_params(console: Console, values: dict | None = None) -> None:
    t = Table(title="Behaviour model: every parameter and where it comes from", title_justify="left")
    for col in ("parameter", "value", "meaning", "source"):
        t.add_column(col, overflow="fold")
    for p in params.PARAMS:
        v = (values or {}).get(p.name, p.value)
        changed = v != p.value
        t.add_row(p.name, f"[bold yellow]{v:g}[/] (was {p.value:g})" if changed else f"{v:g}", escape(p.meaning),
                  "set on the command line" if changed else escape(p.source))
    console.print(t)
    console.print("[dim]Sources: the seed articles (docs/demo.md lists them). 'assumption' means nobody measured "
                  "it: the outcome of this simulation is an illustration, not evidence.[/dim]")  # fmt: skip


def _rate(arm: dict | None) -> float | None:
    return arm["converted"] / arm["entered"] if arm and arm["entered"] else None


def show(console: Console, rep: dict) -> None:
    t = Table(title="Journeys and broadcasts: conversions by arm (GET /api/journeys/{id}/stats, /api/broadcasts/{id})",
              title_justify="left")  # fmt: skip
    for col in ("journey", "entered", "converted", "arm", "arm entered", "arm converted", "rate", "vs holdout"):
        t.add_column(col, justify="right" if col not in ("journey", "arm") else "left")
    flows = [*rep["journeys"], *({**b["stats"], "id": b["id"]} for b in rep["broadcasts"])]
    for j in flows:
        tot = j["totals"]
        arms = [a for v in j["versions"] for a in v.get("arms", [])]
        held = _rate(next((a for a in arms if a["holdout"]), None))
        first = True
        for a in arms or [None]:
            rate = _rate(a)
            lift = "" if rate is None or held is None or a["holdout"] else f"{100 * (rate - held):+.1f} pp"
            t.add_row(j["id"] if first else "", str(tot.get("entered", 0)) if first else "",
                      str(tot.get("converted", 0)) if first else "", a["arm"] if a else "",
                      str(a["entered"]) if a else "", str(a["converted"]) if a else "",
                      "" if rate is None else f"{rate:.1%}", lift)  # fmt: skip
            first = False
    console.print(t)
    console.print("[dim]'vs holdout': the treated arm's conversion rate minus the holdout's, in percentage points; "
                  "small arms make it noisy (no interval yet).[/dim]")  # fmt: skip

    n = Table(title="Journey funnels per node", title_justify="left")
    for col in ("journey", "node", "entered", "passed", "waiting now", "exited", "converted"):
        n.add_column(col, justify="right" if col not in ("journey", "node") else "left")
    for j in rep["journeys"]:
        for v in j["versions"]:
            for node in v["nodes"]:
                n.add_row(j["id"], node["node"], *(str(node.get(k, 0)) for k in
                                                   ("entered", "passed", "waiting_now", "exited", "converted")))
    console.print(n)

    m = Table(title=f"Messages by channel and status ({rep['messages']['total']} in all, GET /api/messages)",
              title_justify="left")  # fmt: skip
    for col in ("channel", "status", "messages"):
        m.add_column(col, justify="right" if col == "messages" else "left")
    for row in rep["messages"]["by_channel_status"]:
        m.add_row(str(row["channel"] or "(none)"), row["status"], str(row["count"]))
    console.print(m)

    r = Table(title="What the customers did with what they received (the model's answers)", title_justify="left")
    r.add_column("response")
    r.add_column("count", justify="right")
    for k, v in sorted(rep["responses"].items()):
        r.add_row(k, str(v))
    console.print(r)
    console.print(f"[dim]Spam complaints: {len(rep['complaints'])} reported by the customers' mailbox provider's "
                  "feedback loop (ARF reports posted to /webhooks/email/feedback), "
                  f"{rep['complaints_recorded']} recorded by Chorus (GET /api/messages?status=complained); "
                  "email:complained above counts the model's answers, some of which fall after the period.[/dim]")
    _show_returns(console, rep)
    _show_stock(console, rep)
    _show_analytics(console, rep["analytics"])
    segs = ", ".join(f"{k}: {v}" for k, v in rep["segments"].items())
    auds = ", ".join(f"{k}: {v}" for k, v in rep["audiences"].items())
    console.print(f"[bold]Segments now[/bold] {segs}\n[bold]Audiences[/bold] {auds}")


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.0f} %"


def _pp(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f} pp"


def _share(x: float | None) -> str:
    return "" if x is None else f"{x:.1%}"


def _money(x: float | None) -> str:
    return "" if x is None else f"{x:,.0f}"


def ltv_by_channels(omni: dict) -> list[dict]:
    """The groups by number of channels that have customers (1, 2, 3+; unknown: no online or offline channel)."""
    return [g for g in omni["groups"] if g["dimension"] == "channels" and g["customers"]]


def _warnings(console: Console, part: dict) -> None:
    """What the API said about the figures above (an arm under 30 people, a person in both arms): printed beside them,
    as the JSON has them, so that a wide interval from 9 people is not read as conclusive (an outside probe)."""
    for w in part.get("warnings") or []:
        console.print(f"[yellow]warning[/yellow]: {escape(str(w))}")


def _show_analytics(console: Console, a: dict) -> None:
    u = Table(title="Uplift against the holdouts, 30 days after entry (GET /api/analytics/uplift)",
              title_justify="left")  # fmt: skip
    for col in ("journey", "treated", "holdout", "treated rate", "holdout rate", "uplift (95 % interval)",
                "incremental revenue"):  # fmt: skip
        u.add_column(col, justify="left" if col == "journey" else "right")
    for r in a["uplift"]["rows"]:  # a value is None where an arm is too small to give it
        interval = "" if r["uplift"] is None else f"{_pp(r['uplift'])} [{_pp(r['uplift_lo'])}, {_pp(r['uplift_hi'])}]"
        u.add_row(r["journey_id"], str(r["treated"]), str(r["holdout"]), _share(r["treated_rate"]),
                  _share(r["holdout_rate"]), interval, _money(r["incremental_revenue"]))  # fmt: skip
    console.print(u)
    _warnings(console, a["uplift"])

    lt = Table(title="Lifetime value by number of channels (GET /api/analytics/omnichannel, groups)",
               title_justify="left")  # fmt: skip
    for col in ("channels used", "customers", "revenue per customer (period)",
                "predicted 12-month CLV (95 % interval)"):
        lt.add_column(col, justify="left" if col == "channels used" else "right")
    for g in ltv_by_channels(a["omnichannel"]):
        interval = "" if g["clv"] is None else f"{_money(g['clv'])} [{_money(g['clv_lo'])}, {_money(g['clv_hi'])}]"
        lt.add_row(g["group"], str(g["customers"]), _money(g["value"]), interval)
    console.print(lt)
    _warnings(console, a["omnichannel"])

    o = Table(title="Value per customer by channels used, against one channel (GET /api/analytics/omnichannel)",
              title_justify="left")  # fmt: skip
    for col in ("group", "customers", "revenue per customer", "vs reference (95 % interval)",
                "predicted 12-month CLV", "CLV vs reference", "reference"):  # fmt: skip
        o.add_column(col, justify="left" if col in ("group", "reference") else "right")
    customers = {(g["dimension"], g["group"]): g for g in a["omnichannel"]["groups"]}
    clv = {(c["dimension"], c["group"], c["reference"]): c for c in a["omnichannel"]["comparisons"]
           if c["metric"] == "clv"}  # fmt: skip
    for c in a["omnichannel"]["comparisons"]:
        if c["metric"] != "value":
            continue
        g = customers.get((c["dimension"], c["group"]), {})
        k = clv.get((c["dimension"], c["group"], c["reference"]))
        o.add_row(f"{c['dimension']}: {c['group']}", str(g.get("customers", "")), _money(c["group_value"]),
                  f"{_pct(c['relative_difference'])} [{_pct(c['lo'])}, {_pct(c['hi'])}]",
                  _money(k and k["group_value"]), k and f"{_pct(k['relative_difference'])} [{_pct(k['lo'])}, "
                  f"{_pct(k['hi'])}]" or "", c["reference"])  # fmt: skip
    console.print(o)
    console.print("[dim]The seeds claim customers on several touchpoints are worth ~30 % more (\\[s000]); here that is "
                  "what the model's assumptions produce, measured by the report a brand would run.[/dim]")  # fmt: skip

    r = Table(title="Showrooming and webrooming, 7-day window (GET /api/analytics/showrooming)", title_justify="left")
    for col in ("direction", "purchases", "after research on the other side", "share", "revenue share"):
        r.add_column(col, justify="left" if col == "direction" else "right")
    for d in a["showrooming"]["totals"].values():
        r.add_row(d["direction"], str(d["purchases"]), str(d["roomed"]), _share(d["share"]),
                  _share(d["revenue_share"]))  # fmt: skip
    console.print(r)
    _warnings(console, a["showrooming"])
    _show_attribution(console, a["attribution"])


def attribution_table(att: dict) -> tuple[list[str], list[str], dict[tuple[str, str], float]]:
    """The channels (most credited first, over every model), the models, and the conversions each model credits
    each channel with."""
    credit = {(r["label"], r["model"]): r["conversions"] for r in att["rows"]}
    channels = sorted({lab for lab, _m in credit}, key=lambda lab: (-sum(v for (x, _m), v in credit.items()
                                                                          if x == lab), lab))  # fmt: skip
    return channels, list(att["models"]), credit


def _show_attribution(console: Console, att: dict) -> None:
    channels, models, credit = attribution_table(att)
    t = Table(title="Attribution by model: conversions credited to each channel (GET /api/analytics/attribution)",
              title_justify="left")  # fmt: skip
    t.add_column("channel")
    for m in models:
        t.add_column(m, justify="right")
    for ch in channels:
        t.add_row(ch, *(f"{credit.get((ch, m), 0.0):.1f}" for m in models))
    console.print(t)
    tot = att["totals"]
    console.print(f"[dim]{tot.get('conversions', '?')} conversions, {_money(tot.get('revenue'))} revenue in all; a "
                  "touchpoint is a visit, a store or call-centre interaction, or engagement with a message (never a "
                  "send). The models disagree most on channels that open journeys (first touch) and those that "
                  "close them (last touch).[/dim]")  # fmt: skip
    for w in att.get("warnings", []):
        console.print(f"[yellow]warning[/yellow]: {escape(w)}")


def _show_stock(console: Console, rep: dict) -> None:
    st = rep.get("stock")
    if not st:
        return
    t = Table(title="Stock per store (the stores' own record: weekly deliveries, what the shelves let people buy)",
              title_justify="left")  # fmt: skip
    for col in ("store", "units a delivery", "units sold", "till items out of stock", "click & collect picked",
                "cancelled (out of stock)"):
        t.add_column(col, justify="left" if col == "store" else "right")
    for s in st["units_per_delivery"]:
        cc = st["click_and_collect"][s]
        late = cc["refused"] - cc["cancelled"]  # decided at the order, told after the period
        told = str(cc["cancelled"]) + (f" (+{late} after the period)" if late else "")
        t.add_row(s, str(st["units_per_delivery"][s]), str(st["units_sold"][s]), str(st["till_items_short"][s]),
                  str(cc["picked"]), told)  # fmt: skip
    console.print(t)
    entered = next((j["totals"].get("entered", 0) for j in rep["journeys"] if j["id"] == "pickup_cancelled"), None)
    console.print(f"[dim]A till receipt with nothing left on the shelf is not made "
                  f"({rep['actions'].get('store_purchase_not_made', 0)} of them); a cancelled click-and-collect order "
                  f"reaches Chorus as `Order Cancelled` (reason out_of_stock), the pickup_cancelled journey's entry"
                  + (f": {entered} entered it" if entered is not None else "") + ".[/dim]")


def returns(rep: dict) -> dict:
    """Returns as the model made them, and the refunds and net revenue of the omnichannel report (the lake)."""
    tot = rep["analytics"]["omnichannel"]["totals"]
    return {"made": rep["actions"].get("return", 0), "cancelled": rep["actions"].get("pickup_cancelled", 0),
            "refunds": tot["refunds"], "revenue": tot["revenue"],
            "refunded": tot["refunded"], "net_revenue": tot["net_revenue"]}  # fmt: skip


def _show_returns(console: Console, rep: dict) -> None:
    r = returns(rep)
    t = Table(title="Revenue and returns over the period (GET /api/analytics/omnichannel, totals)",
              title_justify="left")  # fmt: skip
    for col in ("orders' revenue", "returns made", "pick-ups cancelled", "refunds recorded", "refunded",
                "net revenue"):  # fmt: skip
        t.add_column(col, justify="right")
    t.add_row(_money(r["revenue"]), str(r["made"]), str(r["cancelled"]), str(r["refunds"]), _money(r["refunded"]),
              _money(r["net_revenue"]))  # fmt: skip
    console.print(t)
