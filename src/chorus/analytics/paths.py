"""Paths: the most common journeys to conversion, the channel transition matrix, and the step-by-step flows a Sankey
chart draws. Built from the distinct paths the engine counts (:func:`chorus.analytics.touchpoints.path_counts`)."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from chorus.analytics import touchpoints as tp

START, CONVERSION, NULL = "(start)", "(conversion)", "(null)"
SANKEY_STEPS = 5  # later steps are folded into the fifth: a chart with more columns is unreadable


@dataclass
class PathReport:
    by: str
    top: list[dict]  # path, journeys, conversions, revenue, conversion_rate
    transitions: list[dict]  # from, to, journeys, probability (consecutive repeats collapsed, as the Markov model)
    sankey: dict  # nodes [{id, label, step}], links [{source, target, value}]
    totals: dict
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"by": self.by, "totals": self.totals, "top_paths": self.top, "transitions": self.transitions,
                "sankey": self.sankey, "warnings": self.warnings}  # fmt: skip


def path_report(lake, cfg: tp.Config = tp.Config(), period: tp.Period = tp.Period(), *, by: str = "channel",
                top: int = 20) -> PathReport:  # fmt: skip
    j = tp.build(lake, cfg, period, by=by)
    paths, conv, value, nulls = tp.path_counts(j)
    rep = summarise(paths, conv, value, nulls, by=by, top=top)
    n, named = tp.oversized_orders(j.conversions)
    rep.totals["oversized_revenue_conversions"] = n
    if n:
        rep.warnings.append(tp.oversized_warning(n, named))
    return rep


def summarise(paths, conv, value, nulls, *, by: str = "channel", top: int = 20) -> PathReport:
    """The report from counted paths (pure: tested without an engine)."""
    rows = []
    trans: Counter = Counter()
    out_of: Counter = Counter()
    links: Counter = Counter()
    for path, c, v, n in zip(paths, conv, value, nulls, strict=True):
        journeys = c + n
        if not path or journeys == 0:
            continue
        rows.append({"path": list(path), "journeys": journeys, "conversions": c, "revenue": round(v, 6),
                     "conversion_rate": c / journeys})  # fmt: skip
        states = [START] + _collapse(path)
        for a, b in zip(states, states[1:], strict=False):
            trans[(a, b)] += journeys
            out_of[a] += journeys
        for end, k in ((CONVERSION, c), (NULL, n)):
            if k:
                trans[(states[-1], end)] += k
                out_of[states[-1]] += k
        steps = [(min(i, SANKEY_STEPS - 1), ch) for i, ch in enumerate(_collapse(path))]
        for a, b in zip(steps, steps[1:], strict=False):
            if a != b:
                links[(a, b)] += journeys
        for end, k in ((CONVERSION, c), (NULL, n)):
            if k:
                links[(steps[-1], (SANKEY_STEPS, end))] += k
    rows.sort(key=lambda r: (-r["conversions"], -r["journeys"], r["path"]))
    transitions = [
        {"from": a, "to": b, "journeys": k, "probability": k / out_of[a]}
        for (a, b), k in sorted(trans.items(), key=lambda kv: (kv[0][0] != START, kv[0][0], -kv[1], kv[0][1]))
    ]
    ids: dict = {}
    nodes = []
    for key in sorted({n for link in links for n in link}):
        ids[key] = len(nodes)
        nodes.append({"id": len(nodes), "label": key[1], "step": key[0] + 1})
    ordered = sorted(links.items(), key=lambda kv: (-kv[1], kv[0]))  # ties by node: the same on every engine
    sankey = {"nodes": nodes, "links": [{"source": ids[a], "target": ids[b], "value": k} for (a, b), k in ordered]}
    by_len: dict[int, int] = defaultdict(int)
    for r in rows:
        by_len[len(_collapse(r["path"]))] += r["conversions"]
    totals = {
        "distinct_paths": len(rows),
        "journeys": sum(r["journeys"] for r in rows),
        "conversions": sum(r["conversions"] for r in rows),
        "conversions_by_length": dict(sorted(by_len.items())),
    }
    return PathReport(by, rows[:top], transitions, sankey, totals)


def _collapse(path) -> list[str]:
    out: list[str] = []
    for ch in path:
        if not out or out[-1] != ch:
            out.append(ch)
    return out
