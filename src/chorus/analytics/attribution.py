"""Attribution: which channels (or campaigns) get the credit for conversions and revenue.

The rule-based models (first touch, last touch, linear, time decay, position-based) weight each touchpoint of a
converting journey and are computed by the engine, touchpoint by touchpoint. The data-driven ones (Markov chain,
Shapley value) need the distinct paths only: the engine counts them and :mod:`chorus.analytics.markov` and
:mod:`chorus.analytics.shapley` solve them exactly on this machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import ibis

from chorus.analytics import touchpoints as tp
from chorus.analytics.markov import fit_markov
from chorus.analytics.shapley import shapley_exact, shapley_simplified
from chorus.errors import ChorusError

RULE_MODELS = ("first_touch", "last_touch", "linear", "time_decay", "position_based")
MODELS = (*RULE_MODELS, "markov", "shapley")
SHAPLEY_EXACT_MAX = 12


@dataclass
class Attribution:
    by: str
    models: tuple[str, ...]
    rows: list[dict]  # {label, model, conversions, revenue}, sorted by model then credit
    totals: dict
    params: dict
    warnings: list[str] = field(default_factory=list)

    def table(self, model: str) -> dict[str, dict]:
        return {r["label"]: r for r in self.rows if r["model"] == model}

    def as_dict(self) -> dict:
        return {
            "by": self.by, "models": list(self.models), "totals": self.totals, "params": self.params,
            "warnings": self.warnings, "rows": self.rows,
        }  # fmt: skip


def parse_models(text: str, field: str = "models") -> tuple[str, ...]:
    """The models of a comma-separated list (``linear, markov``): the one parse of the API's ``models`` and the
    CLI's ``--models``. Blanks around a name and empty items are ignored; an empty list, an unknown name or a name
    given twice is a 400 naming ``field``."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names:
        raise ChorusError(f"{field} must name at least one model: {', '.join(MODELS)}", field=field)
    for m in names:
        if m not in MODELS:
            shown = m if len(m) <= 40 else m[:40] + "…"
            raise ChorusError(f"{field}: unknown model {shown!r}; models: {', '.join(MODELS)}", field=field)
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise ChorusError(f"{field} names {', '.join(twice)} more than once (each model's credit adds up to the "
                          "conversions: a model listed twice would count them twice)", field=field)  # fmt: skip
    return names


def attribute(
    lake,
    cfg: tp.Config = tp.Config(),
    period: tp.Period = tp.Period(),
    *,
    by: str = "channel",
    models: tuple[str, ...] = MODELS,
    half_life: timedelta = timedelta(days=7),
    markov_order: int = 1,
    shapley: str = "auto",
) -> Attribution:
    """Credit per channel (or campaign) under each model, in conversions and in revenue.

    ``shapley``: ``simplified`` (Zhao et al. 2018), ``exact`` (enumerating coalitions; at most 12 channels) or
    ``auto`` (exact when there are at most 12 channels)."""
    for m in models:
        if m not in MODELS:
            raise ChorusError(f"unknown model {m!r}; models: {', '.join(MODELS)}", field="models")
    if not models:
        raise ChorusError("name at least one model", field="models")
    twice = sorted({m for m in models if models.count(m) > 1})
    if twice:  # each model's rows add up to the conversions: one named twice would count them twice
        raise ChorusError(f"models names {', '.join(twice)} more than once", field="models")
    if not 1 <= markov_order <= 3:
        raise ChorusError("the Markov order must be 1, 2 or 3", field="order")
    if half_life.total_seconds() <= 0:
        raise ChorusError("the half-life must be positive", field="half_life")
    if shapley not in ("auto", "simplified", "exact"):
        raise ChorusError("shapley must be auto, simplified or exact", field="shapley")
    j = tp.build(lake, cfg, period, by=by)
    # every model reads the journeys: computed once (a temporary table on DuckDB, a cached frame on Spark)
    j.touches = j.touches.cache()
    j.conversions = j.conversions.cache()
    try:
        rows, totals, warnings = _models(j, models, half_life, markov_order, shapley)
    finally:
        j.touches.release()
        j.conversions.release()
    order = {m: i for i, m in enumerate(models)}
    rows.sort(key=lambda r: (order[r["model"]], -r["conversions"], r["label"]))
    params = {
        "by": by, "markov_order": markov_order, "half_life_days": half_life.total_seconds() / 86400,
        "since": period.since.isoformat() if period.since else None,
        "until": period.until.isoformat() if period.until else None,
        "engine": lake.engine, "config": cfg.as_dict(),
    }  # fmt: skip
    return Attribution(by, tuple(models), rows, totals, params, warnings)


def _models(j: tp.Journeys, models, half_life, markov_order, shapley):
    totals = _totals(j)
    rows: list[dict] = []
    warnings: list[str] = []
    if len(totals["currencies"]) > 1:
        warnings.append(
            f"revenue adds up conversions in several currencies ({', '.join(totals['currencies'])}); "
            "convert them upstream or report one currency's conversions at a time"
        )
    if totals["negative_revenue_conversions"]:
        warnings.append(
            f"{totals['negative_revenue_conversions']} conversions have a negative revenue: counted as 0 (send "
            "refunds as `Order Refunded`, not as negative orders)"
        )
    n, named = tp.oversized_orders(j.conversions)
    totals["oversized_revenue_conversions"] = n
    if n:
        warnings.append(tp.oversized_warning(n, named))
    rule_models = [m for m in models if m in RULE_MODELS]
    if rule_models:
        rows += _rule_based(j, rule_models, half_life)
    if "markov" in models or "shapley" in models:
        paths, conv, value, nulls = tp.path_counts(j)
        has_conv = any(c > 0 for c, p in zip(conv, paths, strict=True) if p)
        if "markov" in models and has_conv:
            try:
                markov = fit_markov(paths, conv, value, nulls, order=markov_order)
            except ValueError as exc:  # the engine's counts are validated; this names what was still wrong
                raise ChorusError(f"the Markov model cannot use these journeys: {exc}", field="markov") from exc
            rows += _rows("markov", markov.channels, markov.conversions, markov.values)
        if "shapley" in models and has_conv:
            n_channels = len({c for p, k in zip(paths, conv, strict=True) if k for c in p})
            exact = shapley == "exact" or (shapley == "auto" and n_channels <= SHAPLEY_EXACT_MAX)
            if exact:
                if n_channels > SHAPLEY_EXACT_MAX:
                    raise ChorusError(
                        f"exact Shapley values enumerate every coalition: at most {SHAPLEY_EXACT_MAX} channels, "
                        f"and these journeys convert through {n_channels}; use --shapley simplified (same numbers "
                        "for this characteristic function) or --by channel", field="shapley")  # fmt: skip
                res = shapley_exact(paths, conv, value, max_channels=SHAPLEY_EXACT_MAX)
            else:
                res = shapley_simplified(paths, conv, value)
            rows += _rows("shapley", res.channels, res.conversions, res.values)
            totals["shapley_method"] = "exact" if exact else "simplified"
    return rows, totals, warnings


def _rows(model: str, labels, conversions, values) -> list[dict]:
    out = []
    for i, label in enumerate(labels):
        out.append({
            "label": label, "model": model, "conversions": round(float(conversions[i]), 9),
            "revenue": round(float(values[i]), 6) if values is not None else 0.0,
        })  # fmt: skip
    return out


def _rule_based(j: tp.Journeys, models: list[str], half_life: timedelta) -> list[dict]:
    t = j.touches.filter(j.touches.converted)
    n = t.n.cast("float64")
    journey = [t.profile_id, t.journey]
    # ages from the journey's last touchpoint, not the conversion: normalised, the weights are the same, and the
    # latest touchpoint weighs 1 however old the journey, so ½^age never underflows to 0/0
    last = tp.seconds(t.ts.max().over(group_by=journey))
    decay = ibis.literal(0.5) ** ((last - tp.seconds(t.ts)) / half_life.total_seconds())
    t = t.mutate(_decay=decay.cast("float64"))
    weights = {
        "first_touch": (t.position == 1).cast("float64"),
        "last_touch": (t.position == t.n).cast("float64"),
        "linear": 1.0 / n,
        "time_decay": t._decay / t._decay.sum().over(group_by=journey),
        # 40 % to the first and the last, 20 % shared by those between; one or two touchpoints share it all
        "position_based": ibis.cases(
            (t.n == 1, 1.0), (t.n == 2, 0.5), ((t.position == 1) | (t.position == t.n), 0.4), else_=0.2 / (n - 2.0)
        ),
    }
    t = t.mutate(**{f"w_{m}": weights[m] for m in models})
    aggs = {}
    for m in models:
        aggs[f"c_{m}"] = t[f"w_{m}"].sum()
        aggs[f"r_{m}"] = (t[f"w_{m}"] * t.revenue).sum()
    res = t.group_by("channel").agg(**aggs).to_pyarrow().to_pylist()
    out = []
    for m in models:
        for r in res:
            if r[f"c_{m}"]:
                out.append({
                    "label": r["channel"], "model": m, "conversions": round(float(r[f"c_{m}"]), 9),
                    "revenue": round(float(r[f"r_{m}"] or 0.0), 6),
                })  # fmt: skip
    return out


def _totals(j: tp.Journeys) -> dict:
    c = j.conversions
    conv = c.agg(
        conversions=c.count(), revenue=c.revenue.sum(), negative=c.negative.cast("int64").sum()
    ).to_pyarrow().to_pylist()[0]  # fmt: skip
    currencies = sorted(
        x for x in c.select("currency").distinct().to_pyarrow().column(0).to_pylist() if x is not None
    )  # fmt: skip
    t = j.touches
    per = t.group_by(["profile_id", "journey"]).agg(converted=t.converted.max(), revenue=t.revenue.max())
    jr = per.agg(
        converting=per.converted.cast("int64").sum(),
        open=(1 - per.converted.cast("int64")).sum(),
        revenue=(per.revenue * per.converted.cast("float64")).sum(),
    ).to_pyarrow().to_pylist()[0]  # fmt: skip
    # sums of money rounded to a millionth: the engines add in different orders (0.0 vs -1.8e-12)
    total_rev = round(float(conv["revenue"] or 0.0), 6)
    touched = int(jr["converting"] or 0)
    touched_rev = round(float(jr["revenue"] or 0.0), 6)
    return {
        "conversions": int(conv["conversions"]),
        "revenue": total_rev,
        "attributed_conversions": touched,
        "attributed_revenue": touched_rev,
        "unattributed_conversions": int(conv["conversions"]) - touched,
        "unattributed_revenue": round(total_rev - touched_rev, 6),
        "open_journeys": int(jr["open"] or 0),
        "currencies": currencies,
        "negative_revenue_conversions": int(conv["negative"] or 0),
    }
