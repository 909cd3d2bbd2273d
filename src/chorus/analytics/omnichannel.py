"""Omnichannel value: are customers who use more channels worth more?

Customers are the people (profile ids mapped through later merges) with at least one conversion in the period.
Each customer's **channels** are the distinct channels, among ``online`` and ``offline``, of their touchpoint
events (those :func:`chorus.analytics.touchpoints.touchpoints` makes touchpoints of under the configured rules:
interactions, sessions, engagement with messages, never outbound messages; taken by the event's own ``channel``
column, not a rule's label such as a UTM medium) and of their conversions, both in the period. Channels in
neither list (``server`` for orders sent by a back end, ``unknown``, ...) say nothing about where the person was
and are ignored; they are reported in ``totals["ignored_channels"]`` (with their number of customers).

Customers are grouped twice, each grouping a partition of the customers:

* by number of channels: ``1``, ``2``, ``3+``, and ``unknown`` (no online or offline channel at all);
* by mix: ``online`` (online channels only), ``offline`` (offline only), ``both``, and ``unknown``.

The totals also give the period's refunds (``Order Refunded`` events: ``refunds``, ``refunded``) and
``net_revenue``, the orders' revenue minus the refunds (:func:`refund_totals`); the groups' values are gross.

Per group: customers, orders, revenue, **value** (revenue per customer), **frequency** (orders per customer),
**aov** (average order value: revenue / orders), **retention** (the share of customers who bought again: orders
on at least two different UTC days in the period; a second order on the same day is not a return) and, when
``clv`` maps profile ids to predicted lifetime values, **clv** (their mean over the group's customers that have
one).

Confidence intervals: retention has Wilson's score interval; value, frequency, aov and clv have percentile
bootstrap intervals, resampling the group's customers with replacement ``bootstrap`` times (aov and clv are
ratios of resampled sums, so the customer stays the unit). **Comparisons** give, for each metric, the relative
difference ``group / reference - 1`` of the multi-channel groups to the single-channel one (``2``, ``3+`` and
``2+`` vs ``1``; ``both`` vs ``online`` and vs ``offline``): ``value`` of ``2+`` vs ``1`` = 0.35 says that
multi-channel customers are worth 35 % more. Its percentile interval comes from the same replicates (groups are
resampled independently, i.e. a stratified bootstrap; ``2+`` pools the ``2`` and ``3+`` replicates); it is None
when the reference is 0.

The per-customer figures are computed by the engine; the bootstrap runs in numpy on the per-customer arrays.
Groups of more than :data:`BOOTSTRAP_UNITS` customers are resampled in that many random batches of (nearly)
equal size instead of customer by customer: the customers are shuffled and cut into batches, and batches are
resampled. With independent customers the sums of random batches have the mean, variance and skewness of the
customers' sums, so the intervals are the same up to Monte Carlo error, and the cost stays
``bootstrap × BOOTSTRAP_UNITS`` per group: a million customers take seconds. The draws come from a generator
seeded with ``seed``, over the customers in the order of their figures, so the same data give the same intervals
whatever the customers' ids or the engine's row order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist

import ibis
import ibis.expr.types as ir
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from chorus.analytics import limits
from chorus.analytics import touchpoints as tp
from chorus.errors import ChorusError

ONLINE = (
    "web", "app", "email", "sms", "push", "whatsapp", "messenger", "social", "ads", "in_app", "marketplace", "chat",
)  # fmt: skip
OFFLINE = ("store", "call_center", "catalog")
CHANNEL_GROUPS = ("1", "2", "3+", "unknown")
MIX_GROUPS = ("online", "offline", "both", "unknown")
# (dimension, group, reference): "2+" pools the groups 2 and 3+
COMPARISONS = (
    ("channels", "2", "1"), ("channels", "3+", "1"), ("channels", "2+", "1"),
    ("mix", "both", "online"), ("mix", "both", "offline"),
)  # fmt: skip
METRICS = ("value", "frequency", "aov", "retention", "clv")
BOOTSTRAP_UNITS = 5_000  # a group with more customers is resampled in this many random batches
SMALL_GROUP = 30
_CHUNK = 65_536  # resampled units drawn at once: their counts stay in the CPU cache
# the columns summed per customer: customers, revenue, orders, repeat customers, CLV sum, customers with a CLV
_N, _REV, _ORD, _REP, _CLV, _HAS = range(6)


@dataclass
class OmnichannelValue:
    """``rows``: one per group (``dimension`` channels or mix); ``comparisons``: one per (comparison, metric)."""

    rows: list[dict]
    comparisons: list[dict]
    totals: dict
    params: dict
    warnings: list[str] = field(default_factory=list)

    def group(self, dimension: str, group: str) -> dict:
        return next(r for r in self.rows if r["dimension"] == dimension and r["group"] == group)

    def comparison(self, group: str, reference: str, metric: str = "value") -> dict:
        return next(
            c for c in self.comparisons if c["group"] == group and c["reference"] == reference and c["metric"] == metric
        )

    def as_dict(self) -> dict:
        return {
            "groups": self.rows, "comparisons": self.comparisons, "totals": self.totals, "params": self.params,
            "warnings": self.warnings,
        }  # fmt: skip


def omnichannel_value(
    lake,
    cfg: tp.Config = tp.Config(),
    period: tp.Period = tp.Period(),
    *,
    online: tuple[str, ...] = ONLINE,
    offline: tuple[str, ...] = OFFLINE,
    confidence: float = 0.95,
    bootstrap: int = 2000,
    seed: int = 0,
    clv: Mapping[str, float] | None = None,
) -> OmnichannelValue:
    """Customers of the period compared by number of channels and by online/offline mix (see the module doc)."""
    online, offline = check_channels(online, offline)
    check_period(period)
    check_confidence(confidence)
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 100:
        raise ChorusError("bootstrap must be a whole number of replicates, at least 100", field="bootstrap")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ChorusError("seed must be a whole number", field="seed")
    clv_keys, clv_values = _clv_mapping(clv)

    table, currencies, ignored = customer_table(lake, cfg, period, online=online, offline=offline)
    c = _arrays(table, clv_keys, clv_values)
    n = c["orders"].size
    units = np.zeros((n, 6))
    units[:, _N] = 1.0
    units[:, _REV] = c["revenue"]
    units[:, _ORD] = c["orders"]
    units[:, _REP] = c["repeat"]
    has = ~np.isnan(c["clv"])
    units[:, _CLV] = np.where(has, c["clv"], 0.0)
    units[:, _HAS] = has
    # the customers in the order of their figures alone (ties are interchangeable): the bootstrap's draws and the
    # sums' rounding then depend on the data, not on the engine's row order or the customers' random profile ids,
    # so the same data gives the same intervals to the last digit (a demo run again with its seed, decision 0048)
    order = np.lexsort((c["offline"], c["online"], c["channels"], *units.T[::-1]))
    units, c = units[order], {k: v[order] for k, v in c.items()}

    channels = np.select([c["channels"] == 0, c["channels"] == 1, c["channels"] == 2], ["unknown", "1", "2"], "3+")
    mix = np.select(
        [c["online"] & c["offline"], c["online"], c["offline"]], ["both", "online", "offline"], "unknown"
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    sums: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}  # (point sums, replicate sums)
    for dimension, labels, names in (("channels", channels, CHANNEL_GROUPS), ("mix", mix, MIX_GROUPS)):
        for name in names:
            u = units[labels == name]
            point = u.sum(axis=0)
            reps = resample_sums(u, bootstrap, rng)
            sums[(dimension, name)] = (point, reps)
            rows.append(_group_row(dimension, name, point, reps, n, confidence, clv is not None))
    sums[("channels", "2+")] = tuple(
        a + b for a, b in zip(sums[("channels", "2")], sums[("channels", "3+")], strict=True)
    )

    comparisons = []
    for dimension, group, reference in COMPARISONS:
        (gp, gr), (rp, rr) = sums[(dimension, group)], sums[(dimension, reference)]
        g_point, g_reps = metrics(gp), metrics(gr)
        r_point, r_reps = metrics(rp), metrics(rr)
        for m in METRICS:
            if m == "clv" and clv is None:
                continue
            rel = _relative(g_point[m], r_point[m])
            lo, hi = percentile_interval(_relative(g_reps[m], r_reps[m]), confidence)
            comparisons.append({
                "dimension": dimension, "group": group, "reference": reference, "metric": m,
                "group_value": _num(g_point[m]), "reference_value": _num(r_point[m]),
                "relative_difference": _num(rel), "lo": lo, "hi": hi,
            })  # fmt: skip

    total = units.sum(axis=0)
    tm = metrics(total)
    refunds, refunded, oversized_refunds = refund_totals(lake, cfg, period)
    oversized, named = tp.oversized_orders(within(tp.conversions(tp.resolved_events(lake, cfg, period), cfg), period))
    totals = {
        "customers": n, "orders": int(total[_ORD]), "revenue": float(total[_REV]),
        "refunds": refunds, "refunded": refunded, "net_revenue": float(total[_REV]) - refunded,
        "value": _num(tm["value"]),
        "frequency": _num(tm["frequency"]), "aov": _num(tm["aov"]), "retention": _num(tm["retention"]),
        "clv": _num(tm["clv"]), "clv_customers": int(total[_HAS]), "currencies": currencies,
        "ignored_channels": ignored, "oversized_revenue_orders": oversized, "oversized_refunds": oversized_refunds,
    }  # fmt: skip
    warnings = [w for w in (tp.oversized_warning(oversized, named, "orders"),
                            tp.oversized_warning(oversized_refunds, [], "refunds")) if w]  # fmt: skip
    if len(currencies) > 1:
        warnings.append(
            f"revenue adds up orders in several currencies ({', '.join(currencies)}); convert them upstream or "
            "report one currency at a time"
        )
    unknown = int((channels == "unknown").sum())
    if unknown:
        seen = f" (channels ignored: {', '.join(ignored)})" if ignored else ""
        warnings.append(
            f"{unknown} customer(s) used no online or offline channel{seen}: they are in the unknown groups"
        )
    small = [f"{r['dimension']} {r['group']} ({r['customers']})" for r in rows
             if 0 < r["customers"] < SMALL_GROUP and r["group"] != "unknown"]  # fmt: skip
    if small:
        warnings.append(f"groups with fewer than {SMALL_GROUP} customers have wide, unreliable intervals: "
                        + ", ".join(small))  # fmt: skip
    if clv is not None and int(total[_HAS]) < n:
        warnings.append(f"{n - int(total[_HAS])} of {n} customers have no predicted CLV: the clv means leave them out")
    params = {
        "online": list(online), "offline": list(offline), "confidence": confidence, "bootstrap": bootstrap,
        "seed": seed, "bootstrap_units": BOOTSTRAP_UNITS, "clv": clv is not None,
        "since": period.since.isoformat() if period.since else None,
        "until": period.until.isoformat() if period.until else None,
        "engine": lake.engine, "config": cfg.as_dict(),
    }  # fmt: skip
    return OmnichannelValue(rows, comparisons, totals, params, warnings)


# -- the engine's part --------------------------------------------------------------------------------------------
def customer_table(
    lake, cfg: tp.Config, period: tp.Period, *, online: tuple[str, ...] = ONLINE, offline: tuple[str, ...] = OFFLINE
) -> tuple[pa.Table, list[str], dict[str, int]]:
    """One row per customer of the period, sorted by ``profile_id``: ``orders, revenue, days`` (distinct UTC days
    with an order), ``channels`` (distinct online or offline channels used), ``online, offline`` (whether one of
    them is online, offline); with the currencies of the orders and the ignored channels (neither online nor
    offline) with their number of customers. One query."""
    ev = tp.resolved_events(lake, cfg, period)
    conv = within(tp.conversions(ev, cfg), period)
    touches = within(touch_events(ev, cfg), period)
    day = conv.ts.epoch_seconds() // 86400
    orders = conv.group_by("profile_id").agg(
        orders=conv.count(), revenue=conv.revenue.sum(), days=day.nunique(),
        currencies=conv.currency.collect(distinct=True),
    )  # fmt: skip
    pairs = conv.select("profile_id", "channel").union(touches.select("profile_id", "channel"))
    pairs = pairs.filter(pairs.channel.notnull()).distinct()
    known = pairs.channel.isin(online + offline)
    per = pairs.group_by("profile_id").agg(
        channels=known.cast("int64").sum(),
        n_online=pairs.channel.isin(online).cast("int64").sum(),
        n_offline=pairs.channel.isin(offline).cast("int64").sum(),
        ignored=pairs.channel.collect(where=~known),
    ).rename(_pid="profile_id")  # fmt: skip
    j = orders.left_join(per, orders.profile_id == per._pid)
    t = j.select(
        profile_id=j.profile_id,
        orders=j.orders.cast("int64"),
        revenue=j.revenue.cast("float64"),
        days=j.days.cast("int64"),
        channels=ibis.coalesce(j.channels, 0).cast("int64"),
        online=ibis.coalesce(j.n_online, 0) > 0,
        offline=ibis.coalesce(j.n_offline, 0) > 0,
        currencies=j.currencies,
        ignored=j.ignored,
    ).to_pyarrow()
    t = t.take(pc.sort_indices(t, [("profile_id", "ascending")]))  # the same order on every engine
    currencies = sorted(x for x in pc.unique(pc.list_flatten(t.column("currencies"))).to_pylist() if x)
    counts = pc.value_counts(pc.list_flatten(t.column("ignored"))).to_pylist()
    ignored = {c["values"]: int(c["counts"]) for c in sorted(counts, key=lambda c: c["values"]) if c["values"]}
    return t.drop_columns(["currencies", "ignored"]), currencies, ignored


REFUND_EVENT = "Order Refunded"  # Segment's e-commerce spec


def refund_totals(lake, cfg: tp.Config, period: tp.Period) -> tuple[int, float, int]:
    """The refunds of the period (every ``Order Refunded`` event of a known person, valued by its ``revenue``, else
    ``total``, as orders are; a missing or negative amount counts as 0) and their sum: ``net_revenue`` in the totals
    is the orders' revenue minus this sum. A refund is not tied to its order: one of an order made before the period
    counts too, as a brand's books count it. The same ``order_id`` refunded twice (the shop and the server both
    report it) counts once, as orders do (``touchpoints.conversions``). A value above ``limits.MAX_ORDER_VALUE``
    counts as 0, as an order's does: the third number says how many did."""
    ev = tp.resolved_events(lake, cfg, period)
    r = ev.filter((ev.type == "track") & (ev.event == REFUND_EVENT))
    r = r.mutate(_key=ibis.coalesce(r.order_id, r.seq.cast("string")))
    w = ibis.window(group_by=r.profile_id, order_by=[r._key, r.timestamp, r.seq])
    # The window goes in a column before the filter: a window inside a filter compiles to SQL Spark cannot resolve.
    r = r.mutate(_first=ibis.coalesce(r._key.lag().over(w) != r._key, True))
    r = r.filter(r._first)  # the first report of each refund
    r = within(r.mutate(ts=r.timestamp), period)
    amount, _, oversized = tp.order_value(r.revenue)  # the orders' rule: one of 1.7e308 is no refund to add up
    got = r.aggregate(n=r.count(), amount=amount.sum(), oversized=oversized.cast("int64").sum())
    got = got.to_pyarrow().to_pylist()[0]
    return int(got["n"] or 0), float(got["amount"] or 0.0), int(got["oversized"] or 0)


touch_events = tp.touch_events  # the events touchpoints() makes touchpoints of, before sessions


def within(t: ir.Table, period: tp.Period) -> ir.Table:
    """The rows of ``t`` (with a ``ts`` column) in the period."""
    if period.since is not None:
        t = t.filter(t.ts >= period.since)
    if period.until is not None:
        t = t.filter(t.ts < period.until)
    return t


def check_channels(online, offline) -> tuple[tuple[str, ...], tuple[str, ...]]:
    out = []
    for name, value in (("online", online), ("offline", offline)):
        if isinstance(value, str):
            value = (value,)
        if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
            raise ChorusError(f"{name} must be a non-empty list of channel names", field=name)
        out.append(tuple(value))
    both = sorted(set(out[0]) & set(out[1]))
    if both:
        raise ChorusError(f"a channel cannot be both online and offline: {', '.join(both)}", field="offline")
    return out[0], out[1]


def check_period(period: tp.Period) -> None:
    if period.since is not None and period.until is not None and period.until <= period.since:
        raise ChorusError("the period must end after it starts", field="until")


# -- numpy's part -------------------------------------------------------------------------------------------------
def resample_sums(
    units: np.ndarray, replicates: int, rng: np.random.Generator, *, max_units: int = BOOTSTRAP_UNITS
) -> np.ndarray:
    """Bootstrap replicates of the column sums of ``units`` (one row per customer, any number of columns): each
    replicate draws as many rows as there are, uniformly with replacement. Returns ``(replicates, columns)``.

    More than ``max_units`` rows are first shuffled and summed into ``max_units`` batches (sizes differing by at
    most one), which are resampled instead (see the module doc)."""
    units = np.asarray(units, dtype=np.float64)
    n, k = units.shape
    out = np.zeros((replicates, k))
    if n == 0:
        return out
    if n > max_units:
        starts = (np.arange(max_units, dtype=np.int64) * n) // max_units
        units = np.add.reduceat(units[rng.permutation(n)], starts, axis=0)
        n = max_units
    chunk = max(1, _CHUNK // n)
    for lo in range(0, replicates, chunk):
        c = min(chunk, replicates - lo)
        idx = rng.integers(0, n, size=(c, n))
        idx += np.arange(c, dtype=np.int64)[:, None] * n  # row r's draws count in bins r*n .. r*n + n - 1
        counts = np.bincount(idx.ravel(), minlength=c * n).reshape(c, n)
        out[lo : lo + c] = counts.astype(np.float64) @ units
    return out


def metrics(s: np.ndarray) -> dict[str, np.ndarray]:
    """The group metrics from the summed columns (the last axis): value, frequency, aov, retention, clv."""
    return {
        "value": _ratio(s[..., _REV], s[..., _N]),
        "frequency": _ratio(s[..., _ORD], s[..., _N]),
        "aov": _ratio(s[..., _REV], s[..., _ORD]),
        "retention": _ratio(s[..., _REP], s[..., _N]),
        "clv": _ratio(s[..., _CLV], s[..., _HAS]),
    }


# The largest confidence level an interval is computed at (analytics.limits: the API's and the CLI's bound too)
CONFIDENCE_MAX = limits.CONFIDENCE.high


def check_confidence(confidence: object) -> float:
    """``confidence`` if it is a number above 0 and at most CONFIDENCE_MAX, else a ChorusError naming it."""
    if (isinstance(confidence, bool) or not isinstance(confidence, int | float)
            or not 0 < confidence <= CONFIDENCE_MAX):  # fmt: skip
        raise ChorusError(f"confidence must be a number above 0 and at most {CONFIDENCE_MAX} (e.g. 0.95)",
                          field="confidence")  # fmt: skip
    return float(confidence)


def z_score(confidence: float) -> float:
    """The standard normal quantile of a two-sided interval at ``confidence`` (checked: never inv_cdf(1))."""
    return NormalDist().inv_cdf(0.5 + check_confidence(confidence) / 2)


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    """The percentile interval of the replicates that are defined (not NaN); (None, None) when none is."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[~np.isnan(r)]
    if not r.size:
        return None, None
    alpha = 1.0 - confidence
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float | None, float | None]:
    """Wilson's score interval for a proportion."""
    if n <= 0:
        return None, None
    z = z_score(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, whatever the rounding
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _group_row(dimension, name, point, reps, n_all, confidence, with_clv) -> dict:
    pm, rm = metrics(point), metrics(reps)
    customers = int(point[_N])
    row = {
        "dimension": dimension, "group": name, "customers": customers,
        "share": customers / n_all if n_all else None, "orders": int(point[_ORD]), "revenue": float(point[_REV]),
    }  # fmt: skip
    for m in ("value", "frequency", "aov"):
        row[m] = _num(pm[m])
        row[f"{m}_lo"], row[f"{m}_hi"] = percentile_interval(rm[m], confidence) if customers else (None, None)
    row["repeat_customers"] = int(point[_REP])
    row["retention"] = _num(pm["retention"])
    row["retention_lo"], row["retention_hi"] = wilson_interval(int(point[_REP]), customers, confidence)
    row["clv_customers"] = int(point[_HAS])
    row["clv"] = _num(pm["clv"]) if with_clv else None
    row["clv_lo"], row["clv_hi"] = percentile_interval(rm["clv"], confidence) if with_clv else (None, None)
    return row


def _arrays(t: pa.Table, clv_keys: pa.Array | None, clv_values: np.ndarray | None) -> dict[str, np.ndarray]:
    def col(name, dtype):
        return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=dtype)

    out = {
        "orders": col("orders", np.int64),
        "revenue": np.nan_to_num(col("revenue", np.float64)),
        "repeat": col("days", np.int64) >= 2,
        "channels": col("channels", np.int64),
        "online": col("online", bool),
        "offline": col("offline", bool),
        "clv": np.full(t.num_rows, np.nan),
    }
    if clv_keys is not None and t.num_rows:
        pos = pc.index_in(t.column("profile_id"), value_set=clv_keys).fill_null(-1).to_numpy(zero_copy_only=False)
        found = pos >= 0
        out["clv"][found] = clv_values[pos[found]]
    return out


def _clv_mapping(clv) -> tuple[pa.Array | None, np.ndarray | None]:
    if clv is None:
        return None, None
    if not hasattr(clv, "keys"):
        raise ChorusError("clv must map profile ids to predicted lifetime values", field="clv")
    items = dict(clv)
    if not all(isinstance(k, str) for k in items):
        raise ChorusError("clv must be keyed by profile id (strings)", field="clv")
    values = list(items.values())
    if any(isinstance(v, bool) or not isinstance(v, int | float | np.integer | np.floating) for v in values):
        raise ChorusError("clv values must be numbers", field="clv")
    arr = np.asarray(values, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ChorusError("clv values must be finite numbers (no NaN or infinity)", field="clv")
    return pa.array(list(items), pa.string()), arr


def _ratio(num, den):
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _relative(group, reference):
    """group / reference - 1, NaN where the reference is not positive."""
    g, r = np.asarray(group, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(r > 0, g / np.where(r > 0, r, 1.0) - 1.0, np.nan)


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x
