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

from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import ibis
import ibis.expr.types as ir
import numpy as np

from chorus.analytics import journeys as jn
from chorus.analytics import lifetime
from chorus.errors import ChorusError

DAY = 86_400
MODEL = "clv:bgnbd+gamma_gamma"


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
            "bgnbd": {"r": b.r, "alpha": b.alpha, "a": b.a, "b": b.b, "log_likelihood": b.log_likelihood},
            "gamma_gamma": {"p": g.p, "q": g.q, "v": g.v, "log_likelihood": g.log_likelihood} if g else None,
            "total_clv": float(np.nansum(c["clv"])),
            "mean_clv": float(np.nanmean(c["clv"])) if self.n else 0.0,
            "expected_orders": float(np.sum(c["expected_orders"])),
            "mean_probability_alive": float(np.mean(c["probability_alive"])) if self.n else 0.0,
            "warnings": self.warnings,
        }


def lifetime_values(
    lake,
    cfg: jn.Config = jn.Config(),
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
    if unit_days <= 0:
        raise ChorusError("the time unit must be a positive number of days", field="unit_days")
    if months < 1:
        raise ChorusError("the horizon must be at least one month", field="months")
    if not 0 <= discount_rate < 1:
        raise ChorusError("the monthly discount rate must be in [0, 1)", field="discount_rate")
    ev = jn.resolved_events(lake, cfg, jn.Period())
    conv = jn.conversions(ev, cfg)
    if end is None:
        last = conv.ts.max().to_pyarrow().as_py()
        if last is None:
            raise ChorusError("the lake has no conversions to fit lifetime value on", field="conversions")
        end = last.astimezone(UTC).date()
    summary = rfm_summary(conv, end=end, unit_days=unit_days).to_pyarrow()
    cols = {name: summary.column(name).to_numpy(zero_copy_only=False) for name in summary.column_names}
    cols["customer"] = np.asarray(summary.column("customer").to_pylist(), dtype=object)
    warnings: list[str] = []
    n = len(cols["customer"])
    if n == 0:
        raise ChorusError(f"no customer purchased on or before {end}", field="end")
    freq = cols["frequency"].astype(np.float64)
    rec, T, mon = cols["recency"], cols["T"], cols["monetary_value"]
    try:
        bg = lifetime.fit_bgnbd(freq, rec, T, penalizer=penalizer)
        repeat = freq > 0
        ok = repeat & (mon > 0)
        gg = None
        if int(ok.sum()) >= 2:
            try:
                gg = lifetime.fit_gamma_gamma(freq[ok], mon[ok], penalizer=penalizer)
            except lifetime.ConvergenceError:
                # spend that does not vary between customers more than within them: Gamma-Gamma's limit is
                # the population mean for everyone, which is what the fallback below uses
                warnings.append(
                    "Gamma-Gamma does not identify on this data (customers' spend does not differ beyond chance): "
                    "every customer is valued at the mean order value"
                )
        else:
            warnings.append("fewer than two repeat customers with revenue: every customer is valued at the mean "
                            "order value")  # fmt: skip
        if int((repeat & ~ok).sum()):
            warnings.append(
                f"{int((repeat & ~ok).sum())} repeat customers have no positive repeat revenue: they are left out of "
                "the Gamma-Gamma fit and valued at the population's mean order value"
            )
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
    except (lifetime.ConvergenceError, ValueError) as exc:
        raise ChorusError(f"the lifetime-value models could not be fitted: {exc}", field="clv") from exc
    return LifetimeValues(end, unit_days, months, discount_rate, bg, gg, cols, warnings)


def clv_by_profile(lake, cfg: jn.Config = jn.Config(), *, end: date | None = None, months: int = 12):
    """Profile id -> predicted CLV, for reports that compare groups of customers by value; (None, why) when the
    models cannot be fitted on this data."""
    try:
        res = lifetime_values(lake, cfg, end=end, months=months)
    except ChorusError as exc:
        return None, f"no predicted CLV: {exc.message}"
    return dict(zip((str(c) for c in res.customers["customer"]), res.customers["clv"].tolist(), strict=True)), None


def _py(v):
    if isinstance(v, np.generic):
        return v.item()
    return v
