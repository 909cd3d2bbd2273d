"""The analytics commands: ``chorus attribution``, ``chorus clv``, ``chorus report ...``.

Each reads the lake on DuckDB or Spark, prints tables (or ``--format json|csv``) and can write a chart (``--chart
out.png|out.html``). Heavy libraries are imported when a command runs, so that ``chorus`` itself starts fast.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime, timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from chorus.errors import ChorusError

report_app = typer.Typer(help="Omnichannel reports from the event lake.", no_args_is_help=True)
out = Console(soft_wrap=True)

LakeOpt = Annotated[str, typer.Option("--lake", help="The lake's directory (written by `chorus lake export`)")]
WsOpt = Annotated[
    str | None,
    typer.Option(
        "--workspace", "-w", help="Workspace id (or name, looked up in --db); needed when the lake holds several"
    ),  # fmt: skip
]
EngineOpt = Annotated[str, typer.Option("--engine", help="duckdb (embedded) or spark (local, or $CHORUS_SPARK_MASTER)")]
FormatOpt = Annotated[str, typer.Option("--format", help="table, json or csv")]
ChartOpt = Annotated[str | None, typer.Option("--chart", help="Write a chart: a .png file or a .html page")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="First day of conversions (YYYY-MM-DD, UTC)")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="Last day of conversions (YYYY-MM-DD, inclusive)")]
ConfigOpt = Annotated[
    str | None, typer.Option("--config", help="JSON file: conversions, touchpoint rules, lookback (docs/analytics.md)")
]
DbOpt = Annotated[str | None, typer.Option("--db", help="Database URL (for workspace names and --write-traits)")]


def fail(exc: Exception, code: int = 2):
    field = getattr(exc, "field", None)
    msg = getattr(exc, "message", str(exc))
    named = f" ({field})" if field and not msg.startswith(field) else ""  # "--since must be ...": named already
    # the message and field as text: they can hold a file name or a value the user gave (review: "[/x]" a crash)
    Console(stderr=True, soft_wrap=True).print(f"[red]error[/red]{escape(named)}: {escape(msg)}",
                                                markup=True, highlight=False)  # fmt: skip
    raise typer.Exit(code)


def _failure(exc: Exception):
    """Say what went wrong at a command's boundary in our words: a bad value (ChorusError, ValueError,
    OverflowError: exit 2), a lake file DuckDB cannot read (exit 1); never a traceback, DuckDB's text or SQL.
    Anything else is raised again."""
    import re

    if isinstance(exc, ChorusError):
        fail(exc)
    if isinstance(exc, ValueError | OverflowError) and not type(exc).__module__.startswith(("duckdb", "_duckdb")):
        fail(ChorusError(_plain(exc)))
    # DuckDB's failure to read a file (chorus.analytics.engine.readable's two classes), told by module and name so
    # that duckdb is not imported for it; any other engine error is a bug and keeps its traceback
    if not (type(exc).__module__.startswith(("duckdb", "_duckdb"))
            and type(exc).__name__ in ("IOException", "InvalidInputException")):  # fmt: skip
        raise exc
    found = re.search(r"""['"]([^'"]+\.parquet)['"]""", str(exc))
    if found:
        fail(ChorusError(f"the lake file {found.group(1)} is not readable Parquet (export the lake again into an "
                         "empty directory)", field="lake"), code=1)  # fmt: skip
    fail(ChorusError("the lake could not be read (a file may be damaged: export it again into an empty directory)",
                     field="lake"), code=1)  # fmt: skip


def _plain(exc: Exception) -> str:
    """A ValueError's message (the analytics modules word theirs, naming the field); an overflow said generally."""
    text = str(exc)
    if isinstance(exc, OverflowError) or not text:
        return "a value is out of range"
    return text


def _day(value: str | None, field: str) -> date | None:
    """``value`` (YYYY-MM-DD) as a date within the API's years, or a 400 naming ``field``: the API's parse
    (chorus.analytics.limits.day)."""
    from chorus.analytics import limits

    return limits.day(value, field)


def _check(**values) -> None:
    """Each ``name=value`` of an option within its bound of chorus.analytics.limits (the API's): a 400 naming
    ``--name`` otherwise."""
    from chorus.analytics import limits

    names = {"order": limits.MARKOV_ORDER, "half_life_days": limits.HALF_LIFE_DAYS,
             "window_days": limits.WINDOW_DAYS, "months": limits.CLV_MONTHS, "discount_rate": limits.DISCOUNT_RATE,
             "unit_days": limits.UNIT_DAYS, "penalizer": limits.PENALIZER, "limit": limits.CLV_LIMIT,
             "top": limits.PATHS_TOP, "confidence": limits.CONFIDENCE, "bootstrap": limits.BOOTSTRAP}  # fmt: skip
    for name, value in values.items():
        names[name].check(value, "--" + name.replace("_", "-"))
        if name in ("half_life_days", "window_days"):  # a number of days is at least a second, as in the API
            limits.days(names[name], value, "--" + name.replace("_", "-"))


def _period(since: str | None, until: str | None):
    from chorus.analytics.touchpoints import Period

    s, u = _day(since, "--since"), _day(until, "--until")
    if s and u and u < s:
        raise ChorusError("--until is before --since", field="--until")
    start = datetime(s.year, s.month, s.day, tzinfo=UTC) if s else None
    end = datetime(u.year, u.month, u.day, tzinfo=UTC) + timedelta(days=1) if u else None
    return Period(start, end)


def _has_db(db: str | None) -> bool:
    """A database named by the user: never fall back to creating ./chorus.db from an analytics command."""
    import os

    return bool(db or os.environ.get("CHORUS_DATABASE_URL"))


def _workspace(lake_dir: str, workspace: str | None, db: str | None) -> str | None:
    from chorus.analytics.engine import workspace_ids

    if workspace is None or workspace in workspace_ids(lake_dir):
        return workspace
    if not _has_db(db):
        raise ChorusError(
            f"the lake has no workspace with id {workspace!r} (it holds "
            f"{', '.join(workspace_ids(lake_dir)) or 'none'}); name it by id, or give --db to look its name up",
            field="workspace",
        )
    from chorus import workspaces
    from chorus.cli import _engine

    _, engine = _engine(db, upgrade=False)
    with engine.connect() as conn:
        return workspaces.find(conn, workspace).id


def open_lake(lake_dir: str, workspace: str | None, engine: str, db: str | None = None):
    from chorus.analytics.engine import open_lake as _open

    return _open(lake_dir, engine=engine, workspace_id=_workspace(lake_dir, workspace, db))


def _config(path: str | None, lk, db: str | None):
    """``--config`` if given; else the workspace's ``attribution`` setting when a database is named (``--db`` or
    $CHORUS_DATABASE_URL), so the CLI and the API count the same touchpoints; else the defaults."""
    from chorus.analytics import touchpoints

    if path is not None:
        return touchpoints.parse_config(_config_file(path))
    if lk.workspace_id is None or not _has_db(db):
        return touchpoints.Config()
    from chorus import workspaces
    from chorus.cli import _engine

    _, engine = _engine(db, upgrade=False)
    with engine.connect() as conn:
        try:
            raw = workspaces.get(conn, lk.workspace_id).settings.get("attribution")
        except ChorusError:
            raw = None  # a lake copied from another installation: its workspace is not in this database
    return touchpoints.parse_config(raw) if raw else touchpoints.Config()


def _config_file(path: str) -> object:
    """The JSON of a ``--config`` file, read and checked as the API checks a body (chorus.safejson): a file that
    cannot be read, or is not JSON, is a 400 naming the file and, for JSON, the line and column."""
    from chorus import safejson
    from chorus.errors import unreadable

    if not path:
        raise ChorusError("--config needs a file name", field="--config")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ChorusError(f"--config {path} {unreadable(exc)}", field="--config") from None
    value = safejson.parse(data, f"--config {path}")
    bad = safejson.problem(value, "")
    if bad:
        where, why = bad
        raise ChorusError(f"--config {path}: {where + ': ' if where else ''}{why}", field=where or "--config")
    return value


def _emit(fmt: str, data: dict, rows: list[dict], columns: list[str]) -> bool:
    """JSON or CSV to stdout; False when the caller prints tables."""
    from chorus.analytics import output

    if fmt == "json":
        sys.stdout.write(output.to_json(data) + "\n")
        return True
    if fmt == "csv":
        sys.stdout.write(output.to_csv(rows, columns))
        return True
    return False


def attribution(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    by: Annotated[str, typer.Option("--by", help="channel, or campaign (campaigns and journeys)")] = "channel",
    models: Annotated[
        str,
        typer.Option(
            "--models",
            help="Comma-separated: first_touch, last_touch, linear, time_decay, position_based, markov, shapley",
        ),  # fmt: skip
    ] = "first_touch,last_touch,linear,time_decay,position_based,markov,shapley",
    order: Annotated[int, typer.Option("--order", help="Markov order: 1, 2 or 3")] = 1,
    half_life_days: Annotated[float, typer.Option("--half-life-days", help="Time-decay half-life")] = 7.0,
    shapley: Annotated[str, typer.Option("--shapley", help="auto, exact (≤ 12 channels) or simplified")] = "auto",
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    chart: ChartOpt = None,
    db: DbOpt = None,
):
    """Credit for conversions and revenue per channel (or campaign) under rule-based, Markov and Shapley models."""
    from chorus.analytics import attribution as attr
    from chorus.analytics import output

    try:
        output.check_format(fmt)
        chart_path = output.check_chart(chart)
        period = _period(since, until)
        names = attr.parse_models(models)  # the API's parse of `models`
        _check(order=order, half_life_days=half_life_days)
        lk = open_lake(lake, workspace, engine, db)
        cfg = _config(config, lk, db)
        res = attr.attribute(
            lk, cfg, period, by=by, models=names, half_life=timedelta(days=half_life_days), markov_order=order,
            shapley=shapley,
        )  # fmt: skip
    except Exception as exc:
        _failure(exc)
    if chart_path:
        _attribution_chart(res, chart_path)
    if _emit(fmt, res.as_dict(), res.rows, ["model", "label", "conversions", "revenue"]):
        return
    labels = sorted({r["label"] for r in res.rows})
    tables = {m: res.table(m) for m in res.models}
    for key, title in (("conversions", "Conversions"), ("revenue", "Revenue")):
        rows = [[lab] + [tables[m].get(lab, {}).get(key, 0.0) for m in res.models] for lab in labels]
        rows.sort(key=lambda r: -sum(r[1:]))
        output.print_table(out, f"{title} by {res.by}", [res.by, *res.models], rows)
    t = res.totals
    out.print(
        f"{t['conversions']:,} conversions, revenue {t['revenue']:,.2f}; {t['unattributed_conversions']:,} with no "
        f"touchpoint in the lookback ({t['unattributed_revenue']:,.2f}); {t['open_journeys']:,} journeys not converted"
    )
    for w in res.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


def _attribution_chart(res, path):
    from chorus.analytics import output

    labels = sorted({r["label"] for r in res.rows}, key=lambda lab: -sum(
        r["conversions"] for r in res.rows if r["label"] == lab))  # fmt: skip
    tables = {m: res.table(m) for m in res.models}

    def draw(fig):
        ax = fig.add_subplot(1, 1, 1)
        width = 0.8 / max(1, len(res.models))
        for i, m in enumerate(res.models):
            total = sum(r["conversions"] for r in tables[m].values()) or 1.0
            ys = [100 * tables[m].get(lab, {}).get("conversions", 0.0) / total for lab in labels]
            ax.bar([x + i * width for x in range(len(labels))], ys, width=width, label=m)
        ax.set_xticks([x + width * (len(res.models) - 1) / 2 for x in range(len(labels))], labels, rotation=30,
                      ha="right")  # fmt: skip
        ax.set_ylabel("share of conversions (%)")
        ax.legend(fontsize="small")

    rows = [[lab] + [tables[m].get(lab, {}).get("conversions", 0.0) for m in res.models] for lab in labels]
    output.write_chart(path, draw, title=f"Attribution by {res.by}",
                       tables=[("Attributed conversions", [res.by, *res.models], rows)])  # fmt: skip


def clv(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    end: Annotated[str | None, typer.Option("--end", help="Last day observed (default: the last purchase's)")] = None,
    months: Annotated[int, typer.Option("--months", help="CLV horizon in months")] = 12,
    discount_rate: Annotated[float, typer.Option("--discount-rate", help="Monthly discount rate")] = 0.01,
    unit_days: Annotated[float, typer.Option("--unit-days", help="Time unit of the fit (7 = weeks)")] = 7.0,
    penalizer: Annotated[
        float,
        typer.Option("--penalizer", help="L2 penalty to try first (0 = none); larger ones are tried if a fit needs it"),
    ] = 0.0,
    limit: Annotated[int, typer.Option("--limit", help="Customers listed (table format), by CLV")] = 20,
    write_traits: Annotated[
        bool, typer.Option("--write-traits", help="Write the results to profiles as computed traits (needs --db)")
    ] = False,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    chart: ChartOpt = None,
    db: DbOpt = None,
):
    """Lifetime value: RFM summary, BG/NBD + Gamma-Gamma fit, expected orders, probability alive and CLV per
    customer; optionally written back to profiles."""
    from chorus.analytics import clv as clv_mod
    from chorus.analytics import output

    try:
        output.check_format(fmt)
        chart_path = output.check_chart(chart)
        _check(months=months, discount_rate=discount_rate, unit_days=unit_days, penalizer=penalizer, limit=limit)
        end_day = _day(end, "--end")
        lk = open_lake(lake, workspace, engine, db)
        cfg = _config(config, lk, db)
        res = clv_mod.lifetime_values(
            lk, cfg, end=end_day, unit_days=unit_days, months=months, discount_rate=discount_rate,
            penalizer=penalizer,
        )  # fmt: skip
        written = _write_traits(res, lk.workspace_id, db) if write_traits else None
    except Exception as exc:
        _failure(exc)
    summary = res.summary()
    if written is not None:
        summary["traits_written"] = written
    if chart_path:
        _clv_chart(res, chart_path)
    columns = ["customer", "frequency", "recency", "T", "monetary_value", "orders", "revenue", "expected_orders",
               "probability_alive", "expected_order_value", "clv"]  # fmt: skip
    if fmt == "json":
        if _emit(fmt, {"summary": summary, "customers": res.rows(limit=None)}, [], columns):
            return
    if _emit(fmt, {}, res.rows(limit=None), columns):
        return
    b = res.bgnbd
    out.print(
        f"{res.n:,} customers observed to {res.end} ({summary['repeat_customers']:,} repeat); "
        + (f"BG/NBD r={b.r:.3f} α={b.alpha:.3f} a={b.a:.3f} b={b.b:.3f}" if b.dropout
           else f"NBD r={b.r:.3f} α={b.alpha:.3f}")
        + f" (unit {res.unit_days:g} days)"
        + (
            f"; Gamma-Gamma p={res.gamma_gamma.p:.2f} q={res.gamma_gamma.q:.2f} v={res.gamma_gamma.v:.2f}"
            if res.gamma_gamma
            else ""
        )  # fmt: skip
    )
    rows = [[r["customer"], r["frequency"], r["orders"], r["revenue"], r["expected_orders"], r["probability_alive"],
             r["expected_order_value"], r["clv"]] for r in res.rows(limit=limit)]  # fmt: skip
    output.print_table(out, f"Top {len(rows)} customers by {months}-month CLV",
                       ["customer", "repeat days", "orders", "revenue", "expected orders", "P(alive)",
                        "order value", "CLV"], rows)  # fmt: skip
    out.print(f"Total {months}-month CLV: {summary['total_clv']:,.2f} (mean {summary['mean_clv']:,.2f})")
    if written is not None:
        out.print(
            f"Computed traits written to {written['profiles']:,} profiles ({written['removed']:,} stale removed; "
            f"{written['skipped']:,} customers no longer profiles, e.g. erased)"
        )
    for note in res.fit_notes():  # the regularisation or fallback each model needed, always said
        out.print(f"Fit: {note}")
    for w in res.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


def _write_traits(res, workspace_id: str | None, db: str | None) -> dict:
    from chorus.analytics.clv import MODEL
    from chorus.cli import _engine
    from chorus.profiles import computed
    from chorus.timeutil import utcnow

    if workspace_id is None:
        raise ChorusError("the lake has no workspace to write traits to", field="workspace")
    if not _has_db(db):
        raise ChorusError("--write-traits writes to the store: give --db (or set $CHORUS_DATABASE_URL)", field="db")
    _, engine = _engine(db)
    with engine.begin() as conn:
        written = computed.replace(conn, workspace_id, MODEL, res.traits(), utcnow())
        if res.n and not written["profiles"]:
            # nothing matched: the wrong database for this lake; roll back rather than remove the old traits
            raise ChorusError(
                f"none of the {res.n} customers is a profile of workspace {workspace_id} in this database", field="db"
            )
    return written


def _clv_chart(res, path):
    import numpy as np

    from chorus.analytics import output

    c = res.customers

    def draw(fig):
        ax1 = fig.add_subplot(1, 2, 1)
        ax1.hist(np.clip(c["clv"], 0, np.percentile(c["clv"], 99) if len(c["clv"]) else 1), bins=40)
        ax1.set_xlabel(f"{res.months}-month CLV (clipped at the 99th percentile)")
        ax1.set_ylabel("customers")
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.hist(c["probability_alive"], bins=20, range=(0, 1))
        ax2.set_xlabel("probability alive")

    s = res.summary()
    output.write_chart(path, draw, title="Customer lifetime value", tables=[
        ("Model", ["parameter", "value"], [[k, v] for k, v in s["bgnbd"].items()]
         + ([[k, v] for k, v in s["gamma_gamma"].items()] if s["gamma_gamma"] else [])),
        ("Top customers", ["customer", "orders", "revenue", "CLV"],
         [[r["customer"], r["orders"], r["revenue"], r["clv"]] for r in res.rows(limit=20)]),
    ])  # fmt: skip


@report_app.command("paths")
def report_paths(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    by: Annotated[str, typer.Option("--by", help="channel, or campaign")] = "channel",
    top: Annotated[int, typer.Option("--top", help="Paths listed")] = 20,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    chart: ChartOpt = None,
    db: DbOpt = None,
):
    """Top paths to conversion, the channel transition matrix, and Sankey data (--format json)."""
    from chorus.analytics import output
    from chorus.analytics.paths import path_report

    try:
        output.check_format(fmt)
        chart_path = output.check_chart(chart)
        _check(top=top)
        period = _period(since, until)
        lk = open_lake(lake, workspace, engine, db)
        rep = path_report(lk, _config(config, lk, db), period, by=by, top=top)
    except Exception as exc:
        _failure(exc)
    rows = [{**r, "path": " > ".join(r["path"])} for r in rep.top]
    if chart_path:
        _paths_chart(rep, chart_path)
    if _emit(fmt, rep.as_dict(), rows, ["path", "journeys", "conversions", "revenue", "conversion_rate"]):
        return
    output.print_table(out, f"Top {len(rows)} paths to conversion", ["path", "journeys", "conversions", "revenue",
                       "conversion rate"], [[r["path"], r["journeys"], r["conversions"], r["revenue"],
                                             r["conversion_rate"]] for r in rows])  # fmt: skip
    states = sorted({t["from"] for t in rep.transitions})
    targets = sorted({t["to"] for t in rep.transitions})
    prob = {(t["from"], t["to"]): t["probability"] for t in rep.transitions}
    output.print_table(out, "Transition probabilities (from row to column)", ["from", *targets],
                       [[a] + [prob.get((a, b)) for b in targets] for a in states])  # fmt: skip
    for w in rep.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


def _paths_chart(rep, path):
    from chorus.analytics import output

    states = sorted({t["from"] for t in rep.transitions})
    targets = sorted({t["to"] for t in rep.transitions})
    prob = {(t["from"], t["to"]): t["probability"] for t in rep.transitions}

    def draw(fig):
        ax = fig.add_subplot(1, 2, 1)
        top = rep.top[:10][::-1]
        ax.barh([" > ".join(r["path"]) for r in top], [r["conversions"] for r in top])
        ax.set_xlabel("conversions")
        ax2 = fig.add_subplot(1, 2, 2)
        grid = [[prob.get((a, b), 0.0) for b in targets] for a in states]
        im = ax2.imshow(grid, cmap="Blues", vmin=0, vmax=1)
        ax2.set_xticks(range(len(targets)), targets, rotation=45, ha="right")
        ax2.set_yticks(range(len(states)), states)
        fig.colorbar(im, ax=ax2, fraction=0.046)

    output.write_chart(path, draw, title="Paths to conversion", tables=[
        ("Top paths", ["path", "journeys", "conversions", "revenue"],
         [[" > ".join(r["path"]), r["journeys"], r["conversions"], r["revenue"]] for r in rep.top]),
        ("Transition probabilities", ["from", *targets], [[a] + [prob.get((a, b)) for b in targets] for a in states]),
    ])  # fmt: skip


def _rows_table(title: str, rows: list[dict], columns: list[str]):
    from chorus.analytics import output

    output.print_table(out, title, columns, [[r.get(c) for c in columns] for r in rows])


@report_app.command("omnichannel")
def report_omnichannel(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    confidence: Annotated[float, typer.Option("--confidence", help="Confidence level of the intervals")] = 0.95,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates")] = 2000,
    with_clv: Annotated[
        bool, typer.Option("--clv/--no-clv", help="Compare predicted 12-month CLV too (BG/NBD + Gamma-Gamma)")
    ] = True,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    chart: ChartOpt = None,
    db: DbOpt = None,
):
    """Customers by number of channels (1, 2, 3+) and online/offline mix: value, frequency, order value,
    retention, with confidence intervals, and how much more multichannel customers are worth."""
    from chorus.analytics import output
    from chorus.analytics.omnichannel import omnichannel_value

    try:
        output.check_format(fmt)
        chart_path = output.check_chart(chart)
        _check(confidence=confidence, bootstrap=bootstrap)
        period = _period(since, until)
        lk = open_lake(lake, workspace, engine, db)
        cfg = _config(config, lk, db)
        clv_map, why = _clv_map(lk, cfg, period) if with_clv else (None, None)
        res = omnichannel_value(lk, cfg, period, confidence=confidence, bootstrap=bootstrap, clv=clv_map)
    except Exception as exc:
        _failure(exc)
    if why:
        res.warnings.append(why)
    cols = ["dimension", "group", "customers", "value", "value_lo", "value_hi", "frequency", "aov", "retention",
            "retention_lo", "retention_hi"] + (["clv", "clv_lo", "clv_hi"] if with_clv else [])  # fmt: skip
    if chart_path:
        groups = [r for r in res.rows if r["customers"]]

        def draw(fig):
            ax = fig.add_subplot(1, 1, 1)
            xs = range(len(groups))
            ax.bar(xs, [r["value"] for r in groups],
                   yerr=[[r["value"] - r["value_lo"] for r in groups], [r["value_hi"] - r["value"] for r in groups]],
                   capsize=4)  # fmt: skip
            ax.set_xticks(list(xs), [f"{r['dimension']}: {r['group']}" for r in groups], rotation=30, ha="right")
            ax.set_ylabel(f"revenue per customer ({int(confidence * 100)} % CI)")

        output.write_chart(chart_path, draw, title="Value of omnichannel customers", tables=[
            ("Groups", cols, [[r.get(c) for c in cols] for r in res.rows]),
            ("Compared", ["group", "reference", "metric", "relative_difference", "lo", "hi"],
             [[c["group"], c["reference"], c["metric"], c["relative_difference"], c["lo"], c["hi"]]
              for c in res.comparisons]),
        ])  # fmt: skip
    if _emit(fmt, res.as_dict(), res.rows, list(res.rows[0]) if res.rows else cols):
        return
    _rows_table("Customers by channels used and by mix", res.rows, cols)
    _rows_table("Relative difference (group / reference − 1)",
                [c for c in res.comparisons if c["metric"] == "value"],
                ["group", "reference", "relative_difference", "lo", "hi"])  # fmt: skip
    t = res.totals
    out.print(f"Orders' revenue {t['revenue']:,.2f}; {t['refunds']:,} refunds ({t['refunded']:,.2f}); net revenue "
              f"{t['net_revenue']:,.2f}")  # fmt: skip
    for w in res.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


def _clv_map(lk, cfg, period):
    """Predicted CLV per customer as of the period's end, for the omnichannel comparison."""
    from chorus.analytics.clv import clv_by_profile

    end = (period.until - timedelta(days=1)).date() if period.until else None
    return clv_by_profile(lk, cfg, end=end)


@report_app.command("showrooming")
def report_showrooming(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    window_days: Annotated[float, typer.Option("--window-days", help="Visit-to-purchase window")] = 7.0,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    db: DbOpt = None,
):
    """Showrooming (store visit, then online purchase) and webrooming (online browsing, then store purchase),
    by category."""
    from chorus.analytics import output
    from chorus.analytics.rooming import showrooming

    try:
        output.check_format(fmt)
        _check(window_days=window_days)
        period = _period(since, until)
        lk = open_lake(lake, workspace, engine, db)
        res = showrooming(lk, _config(config, lk, db),
                          period, window=timedelta(days=window_days))  # fmt: skip
    except Exception as exc:
        _failure(exc)
    cols = list(res.rows[0]) if res.rows else ["direction", "category"]
    if _emit(fmt, res.as_dict(), res.rows, cols):
        return
    _rows_table("Showrooming and webrooming", res.rows, cols)
    for w in res.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


@report_app.command("uplift")
def report_uplift(
    lake: LakeOpt = "./lake",
    workspace: WsOpt = None,
    engine: EngineOpt = "duckdb",
    window_days: Annotated[float, typer.Option("--window-days", help="Conversion window after entry")] = 30.0,
    confidence: Annotated[float, typer.Option("--confidence")] = 0.95,
    since: SinceOpt = None,
    until: UntilOpt = None,
    config: ConfigOpt = None,
    fmt: FormatOpt = "table",
    db: DbOpt = None,
):
    """Journeys with a holdout: conversion and revenue of treated vs held-out people, with confidence intervals."""
    from chorus.analytics import output
    from chorus.analytics.uplift import uplift

    try:
        output.check_format(fmt)
        _check(window_days=window_days, confidence=confidence)
        period = _period(since, until)
        lk = open_lake(lake, workspace, engine, db)
        res = uplift(lk, _config(config, lk, db), period,
                     window=timedelta(days=window_days), confidence=confidence)  # fmt: skip
    except Exception as exc:
        _failure(exc)
    cols = list(res.rows[0]) if res.rows else ["journey_id"]
    if _emit(fmt, res.as_dict(), res.rows, cols):
        return
    _rows_table("Uplift of journeys with a holdout", res.rows, cols)
    for w in res.warnings:
        out.print(f"[yellow]warning[/yellow]: {escape(w)}")  # data in it: no markup


def register(app: typer.Typer) -> None:
    app.command("attribution")(attribution)
    app.command("clv")(clv)
    app.add_typer(report_app, name="report")
