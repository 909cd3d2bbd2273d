"""Results to the terminal (tables), to files (JSON, CSV) and to charts (PNG, or a self-contained HTML page with
the chart as inline SVG and the figures as tables: no script, no network)."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chorus.errors import ChorusError
from chorus.safecsv import cell

FORMATS = ("table", "json", "csv")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ChorusError(f"--format must be one of {', '.join(FORMATS)}", field="format")
    return fmt


def check_chart(path: str | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() not in (".png", ".html"):
        raise ChorusError("a chart is written as .png or .html", field="chart")
    return p


def to_json(data) -> str:
    return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


def to_csv(rows: Sequence[dict], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell_csv(r.get(k)) for k in columns})
    return buf.getvalue()


def _cell_csv(v):
    if isinstance(v, float):
        return repr(round(v, 6))
    if isinstance(v, list | dict):
        return cell(orjson.dumps(v).decode())
    return cell(v)


def print_table(console: Console, title: str, columns: Sequence[str], rows: Sequence[Sequence], *, caption=None):
    # all as plain text: a campaign's or channel's name is the sender's (a row, a column of a transition matrix, a
    # title), and rich would read "[/x]" as markup (a crash) or "[link=…]" as a link (review)
    t = Table(title=Text(title), caption=Text(caption) if caption else None, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(Text(str(c)), justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[Text(fmt_cell(v)) for v in r])
    console.print(t)


def fmt_cell(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) >= 1 or v == 0 else f"{v:.4f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def write_chart(path: Path, draw: Callable, *, title: str, tables: Sequence[tuple[str, list[str], list[list]]] = ()):
    """``draw(fig)`` fills a matplotlib figure; a .png gets the figure, a .html the figure as SVG and ``tables``
    (caption, header, rows) below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(10, 6), dpi=110)
    try:
        draw(fig)
        fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".png":
            fig.savefig(path, format="png")
            return
        svg = io.StringIO()
        fig.savefig(svg, format="svg")
    finally:
        plt.close(fig)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}td:first-child,"
        "th:first-child{text-align:left}caption{text-align:left;font-weight:bold;margin:.5em 0}</style>",
        f"</head><body><h1>{html.escape(title)}</h1>",
        svg.getvalue().split("?>", 1)[-1],  # the SVG without its XML declaration
    ]
    for caption, header, rows in tables:
        parts.append(f"<table><caption>{html.escape(caption)}</caption><tr>")
        parts += [f"<th>{html.escape(str(h))}</th>" for h in header]
        parts.append("</tr>")
        for r in rows:
            parts.append("<tr>" + "".join(f"<td>{html.escape(fmt_cell(v))}</td>" for v in r) + "</tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
