"""The demo's charts: PNG images drawn with matplotlib (Agg, no display needed) from the report, which was read
through Chorus' API. Each image carries the figures it plots in its PNG text chunk ``chorus:data`` (JSON), so a
reader (or a test) can check a chart against the report without reading pixels.

``write(report, directory)`` writes every chart and returns their paths, by name:

* ``messages_by_channel.png``: messages by channel, stacked by status (``GET /api/messages``);
* ``journey_funnels.png``: per journey, the people who entered each node (``GET /api/journeys/{id}/stats``);
* ``ltv_by_channels.png``: revenue per customer in the period and predicted 12-month lifetime value, by number of
  channels used, with the CLV's 95 % interval (``GET /api/analytics/omnichannel``);
* ``uplift.png``: conversion rate of each journey's treated arm against its holdout, with the uplift's interval
  (``GET /api/analytics/uplift``);
* ``attribution.png``: conversions credited to each channel under each model (``GET /api/analytics/attribution``);
* ``revenue.png``: the orders' revenue, the refunds of returns and the net revenue (the omnichannel report's totals).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson

from chorus.demo import report

DATA_KEY = "chorus:data"  # the PNG text chunk holding the plotted figures
SIZE = (10, 6)
DPI = 100


def _save(path: Path, title: str, data: dict, draw: Callable) -> None:
    # a Figure without pyplot: no global state, no display, nothing left open; PNG is drawn by Agg
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=DPI)
    draw(fig)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Title": title, "Software": "chorus demo",
                                             DATA_KEY: orjson.dumps(data).decode()})  # fmt: skip


def _pairs(fig, labels: list[str], left: tuple[str, list], right: tuple[str, list], yerr=None):
    """Two bars per label, side by side (``left`` and ``right``: a legend name and the values); the axes."""
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], left[1], width=0.4, label=left[0])
    ax.bar([x + 0.2 for x in xs], right[1], width=0.4, label=right[0], yerr=yerr, capsize=4 if yerr else 0)
    ax.set_xticks(list(xs), labels, fontsize="small")
    ax.legend(fontsize="small")
    return ax


def messages_by_channel(rep: dict) -> dict:
    """{channel: {status: messages}}; a skipped message has no channel ("none")."""
    out: dict[str, dict[str, int]] = {}
    for r in rep["messages"]["by_channel_status"]:
        out.setdefault(r["channel"] or "none", {})[r["status"]] = r["count"]
    return out


def funnels(rep: dict) -> dict:
    """{journey: [(node, entered), ...]} most entered first (a funnel's order: no node is entered by more people
    than the nodes before it on every path)."""
    out = {}
    for j in rep["journeys"]:
        nodes = [(n["node"], n.get("entered", 0)) for v in j["versions"] for n in v["nodes"]]
        out[j["id"]] = sorted(nodes, key=lambda x: -x[1])
    return out


def ltv(rep: dict) -> dict:
    return {g["group"]: {"customers": g["customers"], "value": g["value"], "clv": g["clv"], "clv_lo": g["clv_lo"],
                         "clv_hi": g["clv_hi"]}
            for g in report.ltv_by_channels(rep["analytics"]["omnichannel"])}  # fmt: skip


def uplift(rep: dict) -> dict:
    return {r["journey_id"]: {k: r[k] for k in ("treated", "holdout", "treated_rate", "holdout_rate", "uplift",
                                                 "uplift_lo", "uplift_hi")}
            for r in rep["analytics"]["uplift"]["rows"]}  # fmt: skip


def attribution(rep: dict) -> dict:
    channels, models, credit = report.attribution_table(rep["analytics"]["attribution"])
    return {m: {ch: credit.get((ch, m), 0.0) for ch in channels} for m in models}


def write(rep: dict, directory: str | Path) -> dict[str, str]:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    out = {}

    def save(name: str, title: str, data: dict, draw: Callable) -> None:
        path = d / f"{name}.png"
        _save(path, title, data, draw)
        out[name] = str(path)

    msgs = messages_by_channel(rep)

    def draw_messages(fig):
        ax = fig.add_subplot(1, 1, 1)
        channels = sorted(msgs, key=lambda c: -sum(msgs[c].values()))
        statuses = sorted({s for v in msgs.values() for s in v})
        bottom = [0] * len(channels)
        for s in statuses:
            ys = [msgs[c].get(s, 0) for c in channels]
            ax.bar(channels, ys, bottom=bottom, label=s)
            bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
        for x, total in enumerate(bottom):
            ax.annotate(f"{total:,}", (x, total), ha="center", va="bottom")
        ax.set_ylabel("messages")
        ax.legend(title="last status", fontsize="small")

    save("messages_by_channel", f"Messages by channel ({rep['messages']['total']:,} in all)", msgs, draw_messages)

    fun = funnels(rep)

    def draw_funnels(fig):
        n = max(1, len(fun))
        cols = 3 if n > 4 else 2 if n > 1 else 1
        rows = -(-n // cols)
        for i, (jid, nodes) in enumerate(fun.items()):
            ax = fig.add_subplot(rows, cols, i + 1)
            names = [x[0] for x in nodes][::-1]
            ax.barh(names, [x[1] for x in nodes][::-1], color="tab:blue")
            ax.set_title(jid, fontsize="medium")
            ax.tick_params(labelsize="x-small")

    save("journey_funnels", "Journey funnels: people who entered each node", fun, draw_funnels)

    lt = ltv(rep)

    def draw_ltv(fig):
        groups = list(lt)
        clv = [lt[g]["clv"] or 0 for g in groups]
        lo = [c - lt[g]["clv_lo"] if lt[g]["clv_lo"] is not None else 0 for g, c in zip(groups, clv, strict=True)]
        hi = [lt[g]["clv_hi"] - c if lt[g]["clv_hi"] is not None else 0 for g, c in zip(groups, clv, strict=True)]
        ax = _pairs(fig, [f"{g} channel{'s' if g != '1' else ''}\n({lt[g]['customers']} customers)" for g in groups],
                    ("revenue per customer (period)", [lt[g]["value"] or 0 for g in groups]),
                    ("predicted 12-month CLV (95 % interval)", clv), yerr=[[max(0, x) for x in lo],
                                                                          [max(0, x) for x in hi]])  # fmt: skip
        ax.set_ylabel("per customer")

    save("ltv_by_channels", "Lifetime value by number of channels used", lt, draw_ltv)

    up = uplift(rep)

    def draw_uplift(fig):
        jids = list(up)
        ax = _pairs(fig, [f"{j}\n({up[j]['treated']} / {up[j]['holdout']})" for j in jids],
                    ("treated", [100 * (up[j]["treated_rate"] or 0) for j in jids]),
                    ("holdout", [100 * (up[j]["holdout_rate"] or 0) for j in jids]))  # fmt: skip
        for x, j in enumerate(jids):
            u = up[j]
            if u["uplift"] is not None:
                ax.annotate(f"{100 * u['uplift']:+.1f} pp\n[{100 * u['uplift_lo']:+.1f}, {100 * u['uplift_hi']:+.1f}]",
                            (x, 100 * max(u["treated_rate"] or 0, u["holdout_rate"] or 0)), ha="center",
                            va="bottom", fontsize="x-small")  # fmt: skip
        ax.set_ylabel("converted within 30 days (%)")

    save("uplift", "Uplift against the holdouts (treated / holdout people)", up, draw_uplift)

    att = attribution(rep)

    def draw_attribution(fig):
        ax = fig.add_subplot(1, 1, 1)
        models = list(att)
        channels = list(next(iter(att.values()), {}))
        width = 0.8 / max(1, len(models))
        for i, m in enumerate(models):
            ax.bar([x + i * width for x in range(len(channels))], [att[m][c] for c in channels], width=width,
                   label=m)  # fmt: skip
        ax.set_xticks([x + width * (len(models) - 1) / 2 for x in range(len(channels))], channels, rotation=30,
                      ha="right")  # fmt: skip
        ax.set_ylabel("conversions credited")
        ax.legend(fontsize="small", ncols=2)

    save("attribution", "Attribution by model: conversions credited per channel", att, draw_attribution)

    rev = report.returns(rep)

    def draw_revenue(fig):
        ax = fig.add_subplot(1, 1, 1)
        bars = ["orders' revenue", "refunded (returns)", "net revenue"]
        ys = [rev["revenue"], rev["refunded"], rev["net_revenue"]]
        ax.bar(bars, ys, color=["tab:blue", "tab:red", "tab:green"])
        for x, y in enumerate(ys):
            ax.annotate(f"{y:,.0f}", (x, y), ha="center", va="bottom")
        ax.set_ylabel("EUR")

    save("revenue", f"Revenue, returns ({rev['refunds']} refunds) and net revenue", rev, draw_revenue)
    return out


def read_data(path: str | Path) -> dict:
    """The figures a chart plots, from its PNG text chunk."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return orjson.loads(im.text[DATA_KEY])
