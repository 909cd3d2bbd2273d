"""Customer lifetime value: the RFM summary of each customer's purchases (computed by the engine), BG/NBD and
Gamma-Gamma fitted on it (:mod:`chorus.analytics.lifetime`), and per-customer predictions that can be written back
to profiles as computed traits.

The summary follows the convention of Fader, Hardie & Lee and of the ``lifetimes`` package: purchases on the same
day are one purchase (their values summed); ``frequency`` is the number of repeat purchase days (the first
purchase is not counted); ``recency`` is the time from the first to the last purchase and ``T`` from the first
purchase to the end of the observation, both in ``unit_days``; ``monetary_value`` is the mean value of the repeat
purchase days (0 without repeats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import ibis
import ibis.expr.types as ir
import numpy as np

from chorus.analytics import lifetime
from chorus.analytics import touchpoints as tp
from chorus.errors import ChorusError

DAY = 86_400
MODEL = "clv:bgnbd+gamma_gamma"
# When a fit has no finite maximum (or gives invalid parameters), it is tried again with each larger penalizer in
# turn; the one used is reported. An L2 penalty keeps parameters from running off to infinity, not to 0.
PENALIZERS = (0.001, 0.01, 0.1, 1.0)
MIN_REPEAT_CUSTOMERS = 2  # below this the models are not fitted at all (docs/analytics.md)
# the fit's time unit, in days: purchases are counted by day (a smaller unit adds nothing, and near 0 the recency
# and tenure overflow to infinity); at most a year
MIN_UNIT_DAYS, MAX_UNIT_DAYS = 1, 366
MAX_PENALIZER = 10


@dataclass
class Fit:
    """How one model was fitted: the model used, the penalizer it needed, and the attempts rejected before it."""

    model: str  # "BG/NBD", "NBD (no dropout)", "Gamma-Gamma", "mean order value"
    penalizer: float | None = None
    rejected: list[dict] = field(default_factory=list)  # {"model", "penalizer", "reason"}
    fallback_reason: str | None = None

    def as_dict(self) -> dict:
        return {"model": self.model, "penalizer": self.penalizer, "rejected": self.rejected,
                "fallback_reason": self.fallback_reason}  # fmt: skip

    def text(self, what: str) -> str:
        if self.fallback_reason:
            return f"{what}: {self.model} ({self.fallback_reason})"
        how = "without a penalizer" if not self.penalizer else f"with penalizer {self.penalizer:g}"
        tried = ", ".join(_attempt(r) for r in self.rejected)
        return f"{what}: {self.model} fitted {how}" + (f" (no valid fit {tried})" if tried else "")


def _attempt(r: dict) -> str:
    pen = "without a penalizer" if not r["penalizer"] else f"with penalizer {r['penalizer']:g}"
    return f"{r['model']} {pen}"


def _ladder(penalizer: float) -> list[float]:
    return [penalizer] + [p for p in PENALIZERS if p > penalizer]


def _reason(exc: Exception) -> str:
    return str(exc).split(": ", 1)[-1].split(" The data ")[0].split(". The data")[0]


def fit_purchases(freq, rec, T, penalizer: float = 0.0) -> tuple[lifetime.BGNBDParams, Fit]:
    """BG/NBD with the smallest penalizer of the ladder that gives a finite fit with valid predictions; when none
    does (typically: no customer looks lapsed, a -> 0, which no L2 penalty prevents), its no-dropout limit (NBD)
    the same way. ChorusError when neither can be fitted."""
    fit = Fit("BG/NBD")
    for model, fitter in (("BG/NBD", lifetime.fit_bgnbd), ("NBD (no dropout)", lifetime.fit_nbd)):
        for pen in _ladder(penalizer):
            try:
                params = fitter(freq, rec, T, penalizer=pen)
                _check_purchases(params, freq, rec, T)
            except (lifetime.ConvergenceError, ValueError) as exc:
                fit.rejected.append({"model": model, "penalizer": pen, "reason": _reason(exc)})
                runaway = getattr(exc, "runaway", {})
                if model == "BG/NBD" and (runaway.get("a") == "0" or runaway.get("b") == "inf"):
                    # the dropout probability Beta(a, b) runs off to 0: the data show nobody lapsing, and the
                    # likelihood's supremum is its no-dropout limit (NBD), fitted next; a penalty would only bias
                    # a dropout the data do not show (and cannot stop a -> 0)
                    break
                continue
            fit.model, fit.penalizer = model, pen
            return params, fit
    first = fit.rejected[0]["reason"] if fit.rejected else "no attempt"
    raise ChorusError(f"the purchase model could not be fitted on this data: BG/NBD ({first}), nor its no-dropout "
                      f"limit with any penalizer up to {max(_ladder(penalizer)):g}", field="clv")  # fmt: skip


def _check_purchases(params: lifetime.BGNBDParams, freq, rec, T) -> None:
    with np.errstate(all="ignore"):
        e = np.asarray(lifetime.expected_purchases(params, 52.0, freq, rec, T))
        p = np.asarray(lifetime.probability_alive(params, freq, rec, T))
    if not (np.all(np.isfinite(e)) and np.all(e >= 0) and np.all((p >= 0) & (p <= 1))):
        raise ValueError(f"the fitted parameters (r={params.r:.3g}, alpha={params.alpha:.3g}, a={params.a:.3g}, "
                         f"b={params.b:.3g}) give invalid predictions")  # fmt: skip


def fit_spend(freq, mon, penalizer: float = 0.0) -> tuple[lifetime.GammaGammaParams | None, Fit]:
    """Gamma-Gamma on the repeat customers (``freq`` > 0, ``mon`` > 0) with the smallest penalizer of the ladder
    whose fit has a finite mean spend (q > 1); None (value everyone at the mean order value) with the reason when
    none has."""
    fit = Fit("Gamma-Gamma")
    if int(np.count_nonzero(freq > 0)) < 2:
        fit.model, fit.fallback_reason = "mean order value", "fewer than two repeat customers with revenue"
        return None, fit
    fit.model = "mean order value"
    for pen in _ladder(penalizer):
        try:
            gg = lifetime.fit_gamma_gamma(freq, mon, penalizer=pen)
            if gg.q <= 1.0:
                raise ValueError(f"q = {gg.q:.3g} <= 1: the population's mean spend is infinite")
        except (lifetime.ConvergenceError, ValueError) as exc:
            fit.rejected.append({"model": "Gamma-Gamma", "penalizer": pen, "reason": _reason(exc)})
            runaway = getattr(exc, "runaway", {})
            if "inf" in runaway.values():
                # a degenerate spend distribution: q, v -> infinity with p·v/(q − 1) finite is spend that does not
                # differ between customers beyond chance (the limit values everyone at the population's mean);
                # p -> infinity is spend that does not vary between a customer's orders. A penalty would invent
                # the spread the data do not show; the mean order value is what is left to say.
                off = ", ".join(f"{k} → {'∞' if d == 'inf' else '0'}" for k, d in sorted(runaway.items()))
                why = ("customers' spend does not differ beyond chance" if {"q", "v"} & set(runaway)
                       else "the spread of spend it models is not in these data")  # fmt: skip
                fit.fallback_reason = f"Gamma-Gamma does not identify on this data ({off}: {why})"
                return None, fit
            continue
        fit.model, fit.penalizer = "Gamma-Gamma", pen
        return gg, fit
    fit.fallback_reason = f"no valid Gamma-Gamma fit with any penalizer up to {max(_ladder(penalizer)):g}: " + (
        fit.rejected[-1]["reason"] if fit.rejected else "no attempt")
    return None, fit


def rfm_summary(tx: ir.Table, *, end: date, unit_days: float = 7.0, customer: str = "profile_id",
                ts: str = "ts", value: str = "revenue") -> ir.Table:  # fmt: skip
    """Per customer (``customer``): ``frequency, recency, T, monetary_value, orders, revenue, first_day, last_day``
    from a transactions table, observed up to ``end`` (inclusive, UTC days)."""
    end_day = (datetime(end.year, end.month, end.day, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)).days
    t = tx.select(cust=tx[customer], day=tx[ts].epoch_seconds() // DAY, value=ibis.coalesce(tx[value], 0.0))
    t = t.filter(t.day <= end_day)
    days = t.group_by(["cust", "day"]).agg(value=t.value.sum(), orders=t.count())
    per = days.group_by("cust").agg(
        first_day=days.day.min(), last_day=days.day.max(), n_days=days.count(), revenue=days.value.sum(),
        orders=days.orders.sum(),
    )  # fmt: skip
    first = days.select(f_cust="cust", f_day="day", first_value="value")
    per = per.join(first, [per.cust == first.f_cust, per.first_day == first.f_day])
    freq = per.n_days - 1
    return per.select(
        customer=per.cust,
        frequency=freq,
        recency=(per.last_day - per.first_day).cast("float64") / unit_days,
        T=(ibis.literal(end_day) - per.first_day).cast("float64") / unit_days,
        monetary_value=ibis.cases((freq > 0, (per.revenue - per.first_value) / freq.cast("float64")), else_=0.0),
        orders=per.orders,
        revenue=per.revenue,
        first_day=per.first_day,
        last_day=per.last_day,
    )


@dataclass
class LifetimeValues:
    """The fitted models and one row per customer."""

    end: date
    unit_days: float
    months: int
    discount_rate: float
    bgnbd: lifetime.BGNBDParams
    gamma_gamma: lifetime.GammaGammaParams | None
    customers: dict[str, np.ndarray]  # columns: customer, frequency, recency, T, monetary_value, predictions...
    warnings: list[str] = field(default_factory=list)
    purchases_fit: Fit = field(default_factory=lambda: Fit("BG/NBD", 0.0))
    spend_fit: Fit = field(default_factory=lambda: Fit("Gamma-Gamma", 0.0))

    def fit_notes(self) -> list[str]:
        """One line per model: which was used, with which penalizer, or the fallback and why."""
        return [self.purchases_fit.text("purchases"), self.spend_fit.text("order value")]

    @property
    def n(self) -> int:
        return len(self.customers["customer"])

    def rows(self, limit: int | None = None, order_by: str = "clv") -> list[dict]:
        cols = self.customers
        idx = np.argsort(-np.nan_to_num(cols[order_by], nan=-np.inf), kind="stable") if order_by else range(self.n)
        if limit is not None:
            idx = idx[:limit]
        out = []
        for i in idx:
            out.append({k: _py(v[i]) for k, v in cols.items()})
        return out

    def traits(self) -> dict[str, dict]:
        """Profile id -> the computed traits written back to profiles."""
        c = self.customers
        horizon = f"{self.months}m"
        out = {}
        for i, pid in enumerate(c["customer"]):
            out[str(pid)] = {
                f"clv_{horizon}": round(float(c["clv"][i]), 2),
                "probability_alive": round(float(c["probability_alive"][i]), 4),
                f"expected_orders_{horizon}": round(float(c["expected_orders"][i]), 3),
                "expected_order_value": round(float(c["expected_order_value"][i]), 2),
                "rfm_frequency": int(c["frequency"][i]),
                "rfm_recency_days": round(float(c["recency"][i]) * self.unit_days, 1),
                "rfm_tenure_days": round(float(c["T"][i]) * self.unit_days, 1),
                "rfm_monetary_value": round(float(c["monetary_value"][i]), 2),
            }
        return out

    def summary(self) -> dict:
        c = self.customers
        b = self.bgnbd
        g = self.gamma_gamma
        return {
            "customers": self.n,
            "repeat_customers": int((c["frequency"] > 0).sum()),
            "end": self.end.isoformat(),
            "unit_days": self.unit_days,
            "horizon_months": self.months,
            "monthly_discount_rate": self.discount_rate,
            "bgnbd": {"r": b.r, "alpha": b.alpha, "a": b.a, "b": b.b, "log_likelihood": b.log_likelihood,
                      "model": self.purchases_fit.model, "penalizer": self.purchases_fit.penalizer},
            "gamma_gamma": {"p": g.p, "q": g.q, "v": g.v, "log_likelihood": g.log_likelihood,
                            "penalizer": self.spend_fit.penalizer} if g else None,
            "fits": {"purchases": self.purchases_fit.as_dict(), "order_value": self.spend_fit.as_dict()},
            "total_clv": float(np.nansum(c["clv"])),
            "mean_clv": float(np.nanmean(c["clv"])) if self.n else 0.0,
            "expected_orders": float(np.sum(c["expected_orders"])),
            "mean_probability_alive": float(np.mean(c["probability_alive"])) if self.n else 0.0,
            "warnings": self.warnings,
        }


def lifetime_values(
    lake,
    cfg: tp.Config = tp.Config(),
    *,
    end: date | None = None,
    unit_days: float = 7.0,
    months: int = 12,
    discount_rate: float = 0.01,
    penalizer: float = 0.0,
) -> LifetimeValues:
    """Fit BG/NBD and Gamma-Gamma on the lake's conversions observed up to ``end`` (default: the day of the last
    one) and predict, per customer, expected orders, probability alive, expected order value and the CLV over
    ``months`` discounted at ``discount_rate`` per month."""
    if not _number(unit_days) or not MIN_UNIT_DAYS <= unit_days <= MAX_UNIT_DAYS:
        raise ChorusError(f"unit_days, the time unit, must be a number of days from {MIN_UNIT_DAYS} to "
                          f"{MAX_UNIT_DAYS} (purchases are counted by day)", field="unit_days")  # fmt: skip
    if months < 1:
        raise ChorusError("the horizon must be at least one month", field="months")
    if not _number(discount_rate) or not 0 <= discount_rate < 1:
        raise ChorusError("the monthly discount rate must be in [0, 1)", field="discount_rate")
    if not _number(penalizer) or not 0 <= penalizer <= MAX_PENALIZER:
        raise ChorusError(f"penalizer must be a finite number from 0 to {MAX_PENALIZER}", field="penalizer")
    ev = tp.resolved_events(lake, cfg, tp.Period())
    conv = tp.conversions(ev, cfg)
    if end is None:
        last = conv.ts.max().to_pyarrow().as_py()
        if last is None:
            raise ChorusError("the lake has no conversions to fit lifetime value on", field="conversions")
        end = last.astimezone(UTC).date()
    summary = rfm_summary(conv, end=end, unit_days=unit_days).to_pyarrow()
    cols = {name: summary.column(name).to_numpy(zero_copy_only=False) for name in summary.column_names}
    cols["customer"] = np.asarray(summary.column("customer").to_pylist(), dtype=object)
    if len(cols["customer"]) == 0:
        raise ChorusError(f"no customer purchased on or before {end}", field="end")
    res = predict(cols, end=end, unit_days=unit_days, months=months, discount_rate=discount_rate,
                  penalizer=penalizer)  # fmt: skip
    observed = conv.filter(conv.ts < datetime(end.year, end.month, end.day, tzinfo=UTC) + timedelta(days=1))
    warning = tp.oversized_warning(*tp.oversized_orders(observed))
    if warning:
        res.warnings.append(warning)
    return res


def predict(cols: dict[str, np.ndarray], *, end: date, unit_days: float = 7.0, months: int = 12,
            discount_rate: float = 0.01, penalizer: float = 0.0) -> LifetimeValues:  # fmt: skip
    """Fit the models on RFM columns (those of :func:`rfm_summary`: customer, frequency, recency, T,
    monetary_value, orders, revenue) and predict per customer. Never fails on data with at least
    MIN_REPEAT_CUSTOMERS repeat customers: a fit that needs it is regularised or replaced by its limit, and the
    summary says which (``fits``)."""
    cols = dict(cols)
    warnings: list[str] = []
    n = len(cols["customer"])
    freq = cols["frequency"].astype(np.float64)
    rec, T, mon = cols["recency"], cols["T"], cols["monetary_value"]
    repeat = freq > 0
    if int(repeat.sum()) < MIN_REPEAT_CUSTOMERS:
        raise ChorusError(
            f"lifetime value needs at least {MIN_REPEAT_CUSTOMERS} customers who bought on two or more days; "
            f"{int(repeat.sum())} of the {n} customers observed to {end} did", field="conversions"
        )  # fmt: skip
    bg, purchases_fit = fit_purchases(freq, rec, T, penalizer)
    ok = repeat & (mon > 0)
    gg, spend_fit = fit_spend(freq[ok], mon[ok], penalizer)
    if spend_fit.fallback_reason:
        warnings.append(f"{spend_fit.fallback_reason}: every customer is valued at the mean order value")
    if purchases_fit.model != "BG/NBD":
        why = purchases_fit.rejected[0]["reason"] if purchases_fit.rejected else "no attempt"
        warnings.append(f"BG/NBD has no valid fit on this data ({why}; typically no customer looks lapsed): "
                        "nobody is assumed to drop out (its limit without dropout, NBD), so P(alive) is 1 for "
                        "everyone")  # fmt: skip
    if int((repeat & ~ok).sum()):
        warnings.append(
            f"{int((repeat & ~ok).sum())} repeat customers have no positive repeat revenue: they are left out of "
            "the Gamma-Gamma fit and valued at the population's mean order value"
        )
    try:
        horizon = months * lifetime.month_length(unit_days)
        cols["expected_orders"] = lifetime.expected_purchases(bg, horizon, freq, rec, T)
        cols["probability_alive"] = lifetime.probability_alive(bg, freq, rec, T)
        if gg is not None:
            # E[M | x, m = population mean] is the population mean: what a customer without usable spend gets
            m = np.where(repeat & ~ok, gg.population_mean, mon)
            cols["expected_order_value"] = lifetime.expected_average_value(gg, freq, m)
            cols["clv"] = lifetime.customer_lifetime_value(
                bg, gg, freq, rec, T, m, months=months, discount_rate=discount_rate, time_unit_days=unit_days
            )
        else:
            aov = float(cols["revenue"].sum() / max(1, cols["orders"].sum()))
            cols["expected_order_value"] = np.full(n, aov)
            cols["clv"] = aov * lifetime.discounted_purchases(
                bg, freq, rec, T, months=months, discount_rate=discount_rate, time_unit_days=unit_days
            )
    except ValueError as exc:
        raise ChorusError(f"the lifetime-value models could not be fitted: {exc}", field="clv") from exc
    return LifetimeValues(end, unit_days, months, discount_rate, bg, gg, cols, warnings, purchases_fit, spend_fit)


def clv_by_profile(lake, cfg: tp.Config = tp.Config(), *, end: date | None = None, months: int = 12):
    """Profile id -> predicted CLV, for reports that compare groups of customers by value; (None, why) when the
    models cannot be fitted on this data."""
    try:
        res = lifetime_values(lake, cfg, end=end, months=months)
    except ChorusError as exc:
        return None, f"no predicted CLV: {exc.message}"
    values = np.asarray(res.customers["clv"], dtype=np.float64)
    finite = np.isfinite(values)
    by_profile = {str(c): float(v) for c, v, ok in zip(res.customers["customer"], values, finite, strict=True) if ok}
    if finite.all():
        return by_profile, None
    # a fit on extreme values can still predict an infinite or undefined CLV for someone: that customer has no
    # prediction (the report's "no predicted CLV" count), never a report that fails for everyone
    return by_profile, (f"{int((~finite).sum())} customers' predicted CLV is not a finite number (extreme order "
                        "values): they have no predicted CLV")  # fmt: skip


def _number(v) -> bool:
    """A finite int or float (not a bool, not NaN or infinite)."""
    return not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v
