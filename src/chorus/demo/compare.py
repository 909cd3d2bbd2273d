"""`chorus demo --compare`: the same customers twice through the real Chorus, once as a multichannel brand and once
as an omnichannel one, side by side (decision 0042).

* **multichannel**: a workspace per channel team (``definitions/silos.json``), each fed only by its own systems and
  sending only on its own channels: the online team (web shop and app back end: email, SMS, Messenger), the app
  team's push tool (fed by the app's SDK), the stores and loyalty club (till, call-centre and catalog files; its own
  email). Each runs the standard journeys its channels can send, on its own data: no shared profile, no exit on a
  purchase made on another team's channel, caps per team. The email cart reminder goes out although the person
  bought in the store, because the online team never sees the till.
* **omnichannel**: one workspace that gets everything, the standard definitions (`chorus demo`), one cap across
  every journey and channel.

Both runs are the whole demo (``run.run``): the same plan (the model's, per seed), the same public paths, the same
worker, in two stores. What differs is only how the brand uses Chorus (a ``run.Layout``), and so what the customers
receive, and so what they do (``model.respond``: a message about what she has already done annoys).

The comparison is read through each run's own API (messages, journey stats, the omnichannel report on each lake);
what only the customers know (that a message came after she had bought elsewhere) is the world's record.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from importlib import resources

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from chorus.clitools import err
from chorus.demo import events, install, model, run
from chorus.demo.client import Chorus

SIDES = ("multichannel", "omnichannel")
# the same frequency cap in every workspace: across every journey and channel in the omnichannel brand, per team in
# the multichannel one (each team caps what it sends; nobody sees the others' sends). Transactional messages are
# exempt (Chorus' policy). An assumption, as a common marketing rule of thumb.
CAPS = {"total": {"day": 1, "week": 3}}


@dataclass(frozen=True)
class Cost:
    channel: str
    eur: float  # per message sent
    source: str


COSTS: tuple[Cost, ...] = (
    Cost("email", 0.001, "assumption: about EUR 1 per 1,000 emails, the order of an email service's list price"),
    Cost("sms", 0.09, "assumption: an outbound SMS to a Dutch mobile number; CPaaS prices are per destination "
                      "country (US numbers cost about a tenth of that)"),
    Cost("push", 0.0, "assumption: FCM and APNs charge nothing per notification"),
    Cost("messenger", 0.0, "assumption: Meta charges nothing per Messenger message (the Send API)"),
)
_COST = {c.channel: c.eur for c in COSTS}


def silos() -> dict:
    """The multichannel brand's teams: what each one's workspace is fed and sends (``definitions/silos.json``)."""
    return orjson.loads(resources.files(install.PACKAGE).joinpath("silos.json").read_bytes())


def restrict(doc: dict, channels: list[str], templates: dict) -> dict | None:
    """A journey as a team that has only ``channels`` runs it: each message step sends on the channels it asked for
    that the team has (``auto`` kept when the team has all of them); a step left with none is passed over (its
    predecessors go on to its next node). None when no message step is left."""
    doc = copy.deepcopy(doc)
    nodes = doc["nodes"]
    for nid, node in list(nodes.items()):
        if node["type"] != "message":
            continue
        variants = list(templates[node["template"]]["variants"])
        asked = node.get("channel", "auto")
        asked = variants if asked == "auto" else [asked] if isinstance(asked, str) else list(asked)
        allowed = [c for c in asked if c in channels and c in variants]
        if allowed == asked:
            continue
        if allowed:
            node["channel"] = allowed
            continue
        _relink(doc, nid, nodes.pop(nid)["next"])
    return doc if any(n["type"] == "message" for n in nodes.values()) else None


def _relink(x, old: str, new: str) -> None:
    """Every reference to node ``old`` (a next, then, else or start) made to ``new``, in place."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k in ("next", "then", "else", "start") and v == old:
                x[k] = new
            else:
                _relink(v, old, new)
    elif isinstance(x, list):
        for v in x:
            _relink(v, old, new)


def silo_definitions(defs: install.Definitions, silo: dict, start: datetime) -> install.Definitions:
    journeys = {}
    for jid in silo["journeys"]:
        doc = restrict(defs.journeys[jid], silo["channels"], defs.templates)
        if doc is not None:
            journeys[jid] = doc
    out = dataclasses.replace(defs, journeys=journeys, audiences=defs.audiences if silo["audiences"] else [],
                              broadcast=defs.broadcast if silo["broadcast"] else None)  # fmt: skip
    install.check(out, start)  # Chorus' own validators, as for the standard definitions
    return out


class Unified(run.Layout):
    """The omnichannel brand of `chorus demo`, with one frequency cap across every journey and channel."""

    def setup(self, apis: dict[str, Chorus], smtp_port: int, sms: dict, defs: install.Definitions) -> None:
        run.setup(apis["demo"], smtp_port, sms, defs, caps=CAPS)


class Silos(run.Layout):
    """The multichannel brand: a workspace per team, each fed by its own systems only (``silos.json``)."""

    def __init__(self, teams: dict, start: datetime):
        self.teams, self.start = teams, start
        self.names = tuple(teams)
        self.sms = next(n for n, t in teams.items() if "sms" in t["channels"])

    def targets(self, a: model.Action) -> tuple[str, ...]:
        key = "tracked" if events.route(a) in (events.CLIENT, events.SERVER) else "imported"
        got = tuple(n for n, t in self.teams.items() if a.channel in t[key])
        if not got:
            raise ValueError(f"no team's system gets a {key} {a.kind} action on {a.channel} (silos.json)")
        return got

    def setup(self, apis: dict[str, Chorus], smtp_port: int, sms: dict, defs: install.Definitions) -> None:
        for name, team in self.teams.items():
            run.setup(apis[name], smtp_port, sms, silo_definitions(defs, team, self.start), tuple(team["channels"]),
                      CAPS)  # fmt: skip


# -- what each run says about itself, through its own API ---------------------------------------------------------
def collect(_api: Chorus, out: run.Outcome) -> dict:
    """Per workspace: the messages (GET /api/messages), the conversions its journeys and broadcasts report, and the
    omnichannel report on its lake; with the world's record of the run."""
    spaces = {}
    for name, api in out.apis.items():
        msgs = api.pages("/api/messages", "messages")
        flows = [api.get(f"/api/journeys/{j['id']}/stats") | {"id": j["id"]}
                 for j in api.get("/api/journeys", limit=1000)["journeys"]]  # fmt: skip
        flows += [api.get(f"/api/broadcasts/{b['id']}")["stats"] | {"id": b["id"]}
                  for b in api.get("/api/broadcasts", limit=1000)["broadcasts"]]  # fmt: skip
        omni = _omnichannel(api)
        spaces[name] = {
            "sent": dict(Counter(m["channel"] for m in msgs if m["sent_at"])),
            "messages": len(msgs),
            "statuses": dict(Counter(m["status"] for m in msgs)),
            # spam complaints recorded (the message's history holds complained), through the status filter
            "complaints": len(api.pages("/api/messages", "messages", status="complained")),
            "conversions": {f["id"]: f["totals"].get("converted", 0) for f in flows},
            "orders": omni["totals"]["orders"], "revenue": omni["totals"]["revenue"],
            "customers": omni["totals"]["customers"],
            "value_by_channels": [c for c in omni["comparisons"]
                                  if c["metric"] == "value" and c["dimension"] == "channels"],
        }  # fmt: skip
    return {
        "workspaces": spaces,
        # the opt-outs the customers made, as Chorus recorded them: in the message's history (GET /api/messages/{id}),
        # in the consent of the profile the STOP came from (GET /api/profiles?phone=)
        "unsubscribes_recorded": sum(_recorded(out.apis, r["message_id"]) for r in out.unsubscribes),
        "stops_recorded": sum(_stopped(out.apis, r["phone"]) for r in out.stops),
        "complaints_recorded": sum(_recorded(out.apis, r["message_id"], "complained") for r in out.complaints),
        "events_sent": out.events_sent,
        "wasted": out.wasted,
        "unsubscribes": len(out.unsubscribes),
        "stops": len(out.stops),
        "stop_records": out.stops,
        "complaints": len(out.complaints),
        "complaint_records": out.complaints,
        "purchases": dict(out.purchases),
        "revenue": float(out.revenue),
        "plan_digest": out.plan_digest,
        "responses": dict(out.responses),
    }


def _omnichannel(api: Chorus) -> dict:
    """The omnichannel report of a workspace; an empty one for a workspace of which the lake, exported just before,
    has no event at all (a team nobody reached in a small run: no events, no messages), which the API answers with a
    400 naming the lake."""
    r = api.admin.get("/api/analytics/omnichannel", params={"bootstrap": 200})
    if r.status_code == 400 and r.json().get("field") == "lake":
        return {"totals": {"orders": 0, "revenue": 0.0, "customers": 0}, "comparisons": []}
    return api.ok(r)


def _recorded(apis: dict[str, Chorus], message_id: str, status: str = "unsubscribed") -> bool:
    for api in apis.values():
        r = api.admin.get(f"/api/messages/{message_id}")
        if r.status_code == 200:
            return any(h["status"] == status for h in r.json()["history"])
    return False


def _stopped(apis: dict[str, Chorus], phone: str) -> bool:
    for api in apis.values():
        r = api.admin.get("/api/profiles", params={"phone": phone})
        if r.status_code == 200 and (r.json().get("consent") or {}).get("sms:*", {}).get("status") == "denied":
            return True
    return False


def side(rep: dict, books: tuple[str, ...]) -> dict:
    """One column of the comparison, from one run's report. ``books``: the workspaces that hold the brand's orders
    (a team's copy of another's data is not counted twice)."""
    ws = rep["workspaces"]
    sent = Counter()
    for w in ws.values():
        sent.update(w["sent"])
    cost = {ch: round(n * _COST.get(ch, 0.0), 2) for ch, n in sent.items()}
    wasted = Counter(w["why"] for w in rep["wasted"])
    return {
        "messages_sent": sum(sent.values()),
        "sent_by_channel": dict(sent),
        "wasted": len(rep["wasted"]),
        "wasted_by_reason": dict(wasted),
        "unsubscribes": rep["unsubscribes"],
        "unsubscribes_recorded": rep["unsubscribes_recorded"],
        "stops": rep["stops"],
        "stops_recorded": rep["stops_recorded"],
        # spam complaints in the brand's stores (every workspace's messages whose history holds complained), the
        # complaints the customers made (their reports posted), and how many of those Chorus recorded
        "complaints": sum(w["complaints"] for w in ws.values()),
        "complaints_made": rep["complaints"],
        "complaints_recorded": rep["complaints_recorded"],
        "conversions_reported": sum(sum(w["conversions"].values()) for w in ws.values()),
        "orders": sum(ws[b]["orders"] for b in books),
        "revenue": round(sum(ws[b]["revenue"] for b in books), 2),
        "cost_by_channel": cost,
        "cost": round(sum(cost.values()), 2),
    }


def compare(reports: dict[str, dict], teams: dict, customers: int) -> dict:
    books = {"multichannel": tuple(n for n, t in teams.items() if t["books"]), "omnichannel": ("demo",)}
    sides = {s: side(reports[s], books[s]) for s in SIDES}
    m, o = sides["multichannel"]["revenue"], sides["omnichannel"]["revenue"]
    return {
        "same_plan": reports["multichannel"]["plan_digest"] == reports["omnichannel"]["plan_digest"],
        "sides": sides,
        "revenue_per_customer": {s: round(sides[s]["revenue"] / customers, 2) for s in SIDES},
        "omnichannel_revenue_vs_multichannel": (o - m) / m if m else None,
        "value_by_channels": {s: {n: w["value_by_channels"] for n, w in reports[s]["workspaces"].items()}
                              for s in SIDES},  # fmt: skip
    }


# -- the command ------------------------------------------------------------------------------------------------
def second_store(db: str) -> str:
    """The multichannel brand's store: next to the omnichannel one (``X.db`` -> ``X-multichannel.db``)."""
    root, ext = os.path.splitext(db[len("sqlite:///"):])
    return f"sqlite:///{root}-multichannel{ext or '.db'}"


def check(db: str, replace: bool) -> None:
    """Before anything is made or deleted: --compare needs two stores, so SQLite files (bad input otherwise)."""
    from chorus.demo.cli import _check_db

    if not db.startswith("sqlite:///"):
        raise typer.BadParameter("--compare makes two stores: give an sqlite:///FILE (the multichannel brand's is "
                                 "FILE-multichannel.db next to it)", param_hint="--db")  # fmt: skip
    _check_db(second_store(db), replace)


def command(opts: run.Options, replace: bool, json_out: bool, console: Console, log_path: str, logged) -> None:
    """Both runs, with progress bars, then the comparison (tables, or JSON on stdout)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from chorus.demo import report
    from chorus.demo.cli import _remove_sqlite

    teams = silos()
    multi_db = second_store(opts.database_url)
    if replace:
        _remove_sqlite(multi_db)
    runs = {
        "multichannel": (dataclasses.replace(opts, database_url=multi_db, outbox=os.path.join(opts.outbox, "multi"),
                                             lake=os.path.join(opts.lake, "multi")), Silos(teams, opts.start)),
        "omnichannel": (dataclasses.replace(opts, outbox=os.path.join(opts.outbox, "omni"),
                                            lake=os.path.join(opts.lake, "omni")), Unified()),
    }  # fmt: skip
    if not json_out:
        report.show_params(console, opts.params)
        show_assumptions(console, teams)
    started, cpu = time.monotonic(), time.process_time()
    reports = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, disable=json_out) as bar:  # fmt: skip
        for name, (o, layout) in runs.items():
            task = bar.add_task(f"{name}: {opts.customers:,} customers", total=None)

            def progress(phase: str, done: int, total: int, task=task, name=name) -> None:
                bar.update(task, completed=done, total=total, description=f"{name}: {phase}")

            try:
                os.makedirs(o.outbox, exist_ok=True)
                reports[name] = run.run(o, progress, collect, layout).report
            except Exception as exc:  # noqa: BLE001 - as `chorus demo`: a message and exit 1, details in the log
                import logging

                logging.getLogger("chorus.demo").exception("the %s run failed", name)
                console.print(f"[red]error:[/red] the {name} run failed: {exc} (details in {log_path})")
                raise typer.Exit(1) from None
    result = compare(reports, teams, opts.customers)
    doc = {"comparison": result, "runs": reports, "caps": CAPS, "costs": [dataclasses.asdict(c) for c in COSTS],
           "teams": teams, "parameters": opts.params, "customers": opts.customers, "days": opts.days,
           "seed": opts.seed, "start": opts.start.isoformat(),
           "stores": {"multichannel": multi_db, "omnichannel": opts.database_url},
           "elapsed_seconds": round(time.monotonic() - started, 1),
           "cpu_seconds": round(time.process_time() - cpu, 1), "errors_logged": logged.errors, "log": log_path}
    if json_out:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return
    show(console, doc)
    if logged.errors:
        console.print(f"[bold red]{logged.errors} errors were logged by Chorus during the runs: see {log_path}[/]")


# -- rendering ------------------------------------------------------------------------------------------------
def show_assumptions(console: Console, teams: dict) -> None:
    t = Table(title="The multichannel brand: a workspace per team, fed only by its own systems", title_justify="left")
    for col in ("team", "gets", "sends on", "runs"):
        t.add_column(col, overflow="fold")
    for name, team in teams.items():
        gets = [f"tracking from {', '.join(team['tracked'])}"] if team["tracked"] else []
        gets += [f"imports from {', '.join(team['imported'])}"] if team["imported"] else []
        runs = ", ".join(team["journeys"]) + (", the spring sale" if team["broadcast"] else "")
        t.add_row(f"{name}: {escape(team['name'])}", "; ".join(gets), ", ".join(team["channels"]), runs)
    console.print(t)
    c = Table(title="Cost per message sent (EUR)", title_justify="left")
    for col in ("channel", "cost", "source"):
        c.add_column(col, overflow="fold")
    for cost in COSTS:
        c.add_row(cost.channel, f"{cost.eur:g}", escape(cost.source))
    console.print(c)
    console.print(f"[dim]Frequency cap in every workspace (marketing messages): {CAPS['total']['day']} a day, "
                  f"{CAPS['total']['week']} a week (assumption); the omnichannel brand's covers every channel and "
                  "journey, each team's only its own sends.[/dim]")  # fmt: skip


def _diff(m, o) -> str:
    if not isinstance(m, int | float) or not isinstance(o, int | float):
        return ""
    return f"{o - m:+,.2f}" if isinstance(m, float) or isinstance(o, float) else f"{o - m:+,}"


def rows(cmp: dict) -> list[tuple[str, object, object]]:
    """The comparison table: (what, multichannel, omnichannel)."""
    m, o = cmp["sides"]["multichannel"], cmp["sides"]["omnichannel"]
    out: list[tuple[str, object, object]] = [("messages sent", m["messages_sent"], o["messages_sent"])]
    for ch in sorted(set(m["sent_by_channel"]) | set(o["sent_by_channel"])):
        out.append((f"  by {ch}", m["sent_by_channel"].get(ch, 0), o["sent_by_channel"].get(ch, 0)))
    out.append(("sent after she had already done it elsewhere", m["wasted"], o["wasted"]))
    for why in sorted(set(m["wasted_by_reason"]) | set(o["wasted_by_reason"])):
        out.append((f"  {why}", m["wasted_by_reason"].get(why, 0), o["wasted_by_reason"].get(why, 0)))
    out += [
        ("email unsubscribes (one-click)", m["unsubscribes"], o["unsubscribes"]),
        ("SMS STOP replies", m["stops"], o["stops"]),
        ("spam complaints (feedback loop)", m["complaints"], o["complaints"]),
        ("conversions the journeys report (sum over teams)", m["conversions_reported"], o["conversions_reported"]),
        ("orders and till receipts (the brand's books)", m["orders"], o["orders"]),
        ("revenue, EUR (the brand's books)", m["revenue"], o["revenue"]),
        ("revenue per customer, EUR", cmp["revenue_per_customer"]["multichannel"],
         cmp["revenue_per_customer"]["omnichannel"]),
    ]  # fmt: skip
    for ch in sorted(set(m["cost_by_channel"]) | set(o["cost_by_channel"])):
        out.append((f"message cost, {ch}, EUR", m["cost_by_channel"].get(ch, 0.0), o["cost_by_channel"].get(ch, 0.0)))
    out.append(("message cost, EUR", m["cost"], o["cost"]))
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _claims(cmp: dict) -> list[tuple[str, str, str]]:
    def value(s: str) -> str:
        parts = []
        for ws, comps in cmp["value_by_channels"][s].items():
            for c in comps:
                if c["relative_difference"] is not None:
                    parts.append(f"{ws}: {c['group']} vs {c['reference']} {100 * c['relative_difference']:+.0f} %")
        return "; ".join(parts) or "no customer seen on more than one channel"

    rel = cmp["omnichannel_revenue_vs_multichannel"]
    return [
        ("[s000] customers on several touchpoints are worth ~30 % more", value("multichannel"), value("omnichannel")),
        ("[s003] omnichannel campaigns: ~30 % higher lifetime value", "(the reference)",
         "" if rel is None else f"revenue per customer {100 * rel:+.1f} % against the multichannel brand"),
    ]  # fmt: skip


def show(console: Console, doc: dict) -> None:
    cmp = doc["comparison"]
    t = Table(title=f"Multichannel vs omnichannel: the same {doc['customers']:,} customers over {doc['days']} days, "
                    f"seed {doc['seed']}", title_justify="left")  # fmt: skip
    for col in ("", "multichannel (a workspace per team)", "omnichannel (one Chorus workspace)", "difference"):
        t.add_column(col, justify="left" if not col or col == "" else "right")
    for what, m, o in rows(cmp):
        t.add_row(what, _fmt(m), _fmt(o), _diff(m, o))
    console.print(t)
    console.print(f"[dim]The same plan in both runs: {'yes' if cmp['same_plan'] else '[bold red]NO[/]'} (a digest of "
                  "the planned actions each run met, whether or not the stores' stock let them happen: what messages "
                  "make people buy draws on the same shelves, so which till purchases and pick-ups happen may "
                  "differ). Messages, unsubscribes, complaints and revenue are read "
                  "through each run's API (GET /api/messages, the journeys' stats, GET /api/analytics/omnichannel); "
                  "which messages came after she had already bought is the customers' record, not the brand's."
                  "[/dim]")
    c = Table(title="The seeds' claims next to what each brand's own reports say", title_justify="left")
    for col in ("claim", "multichannel brand's data", "omnichannel brand's data"):
        c.add_column(col, overflow="fold")
    for claim, m, o in _claims(cmp):
        c.add_row(escape(claim), escape(m), escape(o))
    console.print(c)
    console.print("[bold]This is a simulation:[/bold] the outcome follows from the behaviour model's assumptions "
                  "printed above (the relevance lift, the annoyance of a message about what she already did, the "
                  "response rates, the costs), not from evidence.")  # fmt: skip
    console.print(f"\nStores: {doc['stores']['multichannel']} (multichannel), {doc['stores']['omnichannel']} "
                  f"(omnichannel); {doc['elapsed_seconds']:.0f} s ({doc['cpu_seconds']:.0f} s of CPU).")
