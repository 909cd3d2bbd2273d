"""Uplift of journeys with a holdout: how many conversions (and how much revenue) a journey adds, measured against
the people it randomly held out.

Event contract
--------------
A person enters a journey with a ``track`` event named ``Journey Entered`` whose properties carry
``journey_id`` (required: events without one are ignored) and ``variant`` (the lake's ``journey_id`` and
``variant`` columns). ``variant`` ``holdout`` or ``control`` (any case) means the person was held out: the
journey sends them nothing. Any other variant, or none, means treated. The assignment must be random for the
comparison to mean anything: that is the journey's business, not this module's.

Chorus' own journeys assign the arm at a split node, which may come after the entry (a receipt first, then the
holdout of the marketing that follows): the runtime puts the arm as ``variant`` on the ``Journey Step`` event of
that split (``journeys.runtime``). Such an event is the person's assignment, dated when it happened; in a journey
where anybody has one, only the people assigned count (those who never reached the split were not in the
experiment), and a ``Journey Entered`` without a variant is not an assignment.

What is measured
----------------
Per ``journey_id``, the people who entered it in the period (by entry time; profile ids mapped through later
merges). A person counts once, at their first entry in the period, in the group of that entry; people who
entered in both groups (a re-entry after a change of assignment, a merge of two profiles) stay in their first
group and are counted in ``inconsistent``. A person *converted* when they have a conversion (one per order, see
:func:`chorus.analytics.touchpoints.conversions`) after that entry and at most ``window`` later (entry time <
conversion time <= entry time + window); their revenue is the sum of those conversions' revenue (0 when none).

* conversion rate per group = converted people / people; **uplift** = treated rate - holdout rate, with the
  normal-approximation (Wald, unpooled) interval ``uplift ± z·sqrt(p_t(1-p_t)/n_t + p_h(1-p_h)/n_h)``: with
  no conversion at all (or every person converting) in both groups the interval collapses to a point, which is
  why a warning says so;
* revenue per person per group (people without a conversion count with 0) and their difference, with Welch's
  t interval (unequal variances, Welch–Satterthwaite degrees of freedom);
* incremental conversions = uplift × treated people, incremental revenue = revenue difference × treated
  people, with the intervals scaled the same way.

A warning is given per journey with no holdout, a holdout under :data:`MIN_HOLDOUT` people, a holdout (or a
treated group) without any conversion, or inconsistent people. Everything up to the per-group sums is computed
by the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import timedelta

import ibis
import ibis.expr.types as ir
from scipy import stats

from chorus.analytics import touchpoints as tp
from chorus.analytics.omnichannel import check_confidence, check_period, z_score
from chorus.analytics.rooming import as_interval
from chorus.errors import ChorusError
from chorus.journeys.definition import HOLDOUT_VARIANTS

ENTRY_EVENT = "Journey Entered"
STEP_EVENT = "Journey Step"  # with a variant: an assignment at a split
MIN_HOLDOUT = 30


@dataclass
class Uplift:
    """``rows``: one per journey, sorted by journey id."""

    rows: list[dict]
    params: dict
    warnings: list[str] = field(default_factory=list)

    def journey(self, journey_id: str) -> dict:
        return next(r for r in self.rows if r["journey_id"] == journey_id)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "params": self.params, "warnings": self.warnings}


def uplift(
    lake,
    cfg: tp.Config = tp.Config(),
    period: tp.Period = tp.Period(),
    *,
    window: timedelta = timedelta(days=30),
    confidence: float = 0.95,
) -> Uplift:
    """Per journey with entries in the period: treated vs held-out conversion rate and revenue per person (see the
    module doc)."""
    check_confidence(confidence)
    groups = group_table(lake, cfg, period, window=window)
    raw = groups.to_pyarrow().to_pylist()
    by_journey: dict[str, dict[bool, dict]] = {}
    for r in raw:
        by_journey.setdefault(r["journey_id"], {})[bool(r["held"])] = r
    rows, warnings = [], []
    for journey_id in sorted(by_journey):
        row = _journey_row(journey_id, by_journey[journey_id], confidence)
        rows.append(row)
        warnings += [f"{journey_id}: {w}" for w in row.pop("_warnings")]
    if not rows:
        warnings.append(f"no {ENTRY_EVENT!r} event with a journey_id in the period")
    oversized = tp.oversized_warning(sum(int(r["oversized"] or 0) for r in raw), [])
    if oversized:
        warnings.append(oversized)
    params = {
        "window_days": window.total_seconds() / 86400, "confidence": confidence, "entry_event": ENTRY_EVENT,
        "holdout_variants": list(HOLDOUT_VARIANTS), "min_holdout": MIN_HOLDOUT,
        "since": period.since.isoformat() if period.since else None,
        "until": period.until.isoformat() if period.until else None,
        "engine": lake.engine, "conversions": list(cfg.conversions),
    }  # fmt: skip
    return Uplift(rows, params, warnings)


def people(
    lake, cfg: tp.Config = tp.Config(), period: tp.Period = tp.Period(), *, window: timedelta = timedelta(days=30)
) -> ir.Table:
    """One row per (journey, person) who entered it in the period: ``journey_id, profile_id, entered`` (the first
    entry), ``held`` (held out at that entry), ``inconsistent`` (entered in both groups), ``converted`` (a
    conversion within ``window`` after the entry), ``revenue`` (of those conversions) and ``oversized`` (how many
    of them were valued above ``limits.MAX_ORDER_VALUE``: counted as 0)."""
    check_period(period)
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise ChorusError("the window must be a positive duration", field="window")
    # conversions up to a window after the period's last entry must be read too
    until = period.until + window if period.until is not None else None
    ev = tp.resolved_events(lake, replace(cfg, lookback=timedelta(0)), tp.Period(period.since, until))
    split = (ev.event == STEP_EVENT) & ev.variant.notnull() & (ev.variant.strip() != "")
    e = ev.filter((ev.type == "track") & ev.journey_id.notnull() & ((ev.event == ENTRY_EVENT) | split))
    if period.since is not None:
        e = e.filter(e.timestamp >= period.since)
    if period.until is not None:
        e = e.filter(e.timestamp < period.until)
    # a journey that assigns at a split (a Journey Step with a variant): its people are those assigned
    e = e.mutate(_at_split=(e.event == STEP_EVENT).cast("int64"))
    e = e.mutate(_splits=e._at_split.max().over(group_by=e.journey_id))
    e = e.filter((e._splits == 0) | (e._at_split == 1))
    held = ibis.coalesce(e.variant.lower().strip().isin(HOLDOUT_VARIANTS), False).cast("int64")
    e = e.mutate(_held=held)
    person = [e.journey_id, e.profile_id]
    e = e.mutate(
        _n=ibis.row_number().over(group_by=person, order_by=[e.timestamp, e.seq]),
        _mixed=e._held.max().over(group_by=person) != e._held.min().over(group_by=person),
    )
    first = e.filter(e._n == 0).select(
        journey_id="journey_id", profile_id="profile_id", entered="timestamp", held=e._held == 1,
        inconsistent="_mixed",
    )  # fmt: skip
    conv = tp.conversions(ev, cfg).select(c_pid="profile_id", c_ts="ts", c_revenue="revenue", c_over="oversized")
    window_end = first.entered + as_interval(window)
    j = first.join(conv, [first.profile_id == conv.c_pid, conv.c_ts > first.entered, conv.c_ts <= window_end])
    hits = j.group_by([j.journey_id, j.profile_id]).agg(
        _revenue=j.c_revenue.sum(), _oversized=j.c_over.cast("int64").sum()
    )  # fmt: skip
    hits = hits.rename(_jid="journey_id", _pid="profile_id")
    m = first.left_join(hits, [first.journey_id == hits._jid, first.profile_id == hits._pid])
    return m.select(
        "journey_id", "profile_id", "entered", "held", "inconsistent", converted=m._pid.notnull(),
        revenue=ibis.coalesce(m._revenue, 0.0).cast("float64"), oversized=ibis.coalesce(m._oversized, 0),
    )  # fmt: skip


def group_table(lake, cfg: tp.Config, period: tp.Period, *, window: timedelta) -> ir.Table:
    """Per (journey, held): people, inconsistent people, converted people, revenue sum and sample variance."""
    p = people(lake, cfg, period, window=window)
    return p.group_by(["journey_id", "held"]).agg(
        people=p.count(),
        inconsistent=p.inconsistent.cast("int64").sum(),
        converted=p.converted.cast("int64").sum(),
        revenue=p.revenue.sum(),
        revenue_var=p.revenue.var(how="sample"),
        oversized=p.oversized.sum(),
    )


def diff_proportions(k1: int, n1: int, k2: int, n2: int, confidence: float) -> tuple[float, float, float]:
    """p1 - p2 with its Wald (unpooled) interval."""
    p1, p2 = k1 / n1, k2 / n2
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    z = z_score(confidence)
    d = p1 - p2
    return d, d - z * se, d + z * se


def welch(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int, confidence: float):
    """m1 - m2 with Welch's t interval (sample variances v1, v2); None bounds with fewer than 2 per group."""
    d = m1 - m2
    if n1 < 2 or n2 < 2:
        return d, None, None
    a, b = v1 / n1, v2 / n2
    se = math.sqrt(a + b)
    if se == 0:
        return d, d, d
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    t = float(stats.t.ppf(0.5 + check_confidence(confidence) / 2, df))
    return d, d - t * se, d + t * se


def _journey_row(journey_id: str, g: dict[bool, dict], confidence: float) -> dict:
    empty = {"people": 0, "inconsistent": 0, "converted": 0, "revenue": 0.0, "revenue_var": None}
    t, h = g.get(False, empty), g.get(True, empty)
    n_t, n_h = int(t["people"]), int(h["people"])
    k_t, k_h = int(t["converted"] or 0), int(h["converted"] or 0)
    r_t, r_h = float(t["revenue"] or 0.0), float(h["revenue"] or 0.0)
    row = {
        "journey_id": journey_id, "treated": n_t, "holdout": n_h,
        "inconsistent": int(t["inconsistent"] or 0) + int(h["inconsistent"] or 0),
        "treated_converted": k_t, "holdout_converted": k_h,
        "treated_rate": k_t / n_t if n_t else None, "holdout_rate": k_h / n_h if n_h else None,
        "uplift": None, "uplift_lo": None, "uplift_hi": None, "relative_uplift": None,
        "treated_revenue": r_t, "holdout_revenue": r_h,
        "treated_revenue_per_person": r_t / n_t if n_t else None,
        "holdout_revenue_per_person": r_h / n_h if n_h else None,
        "revenue_uplift": None, "revenue_uplift_lo": None, "revenue_uplift_hi": None,
        "incremental_conversions": None, "incremental_conversions_lo": None, "incremental_conversions_hi": None,
        "incremental_revenue": None, "incremental_revenue_lo": None, "incremental_revenue_hi": None,
    }  # fmt: skip
    warnings = []
    if n_t and n_h:
        d, lo, hi = diff_proportions(k_t, n_t, k_h, n_h, confidence)
        row.update(uplift=d, uplift_lo=lo, uplift_hi=hi)
        row["relative_uplift"] = d / (k_h / n_h) if k_h else None
        row.update(incremental_conversions=d * n_t, incremental_conversions_lo=lo * n_t,
                   incremental_conversions_hi=hi * n_t)  # fmt: skip
        d, lo, hi = welch(r_t / n_t, _var(t["revenue_var"]), n_t, r_h / n_h, _var(h["revenue_var"]), n_h, confidence)
        row.update(revenue_uplift=d, revenue_uplift_lo=lo, revenue_uplift_hi=hi, incremental_revenue=d * n_t,
                   incremental_revenue_lo=None if lo is None else lo * n_t,
                   incremental_revenue_hi=None if hi is None else hi * n_t)  # fmt: skip
    if not n_h:
        warnings.append("no holdout: nobody entered with variant holdout, so there is no uplift to measure")
    elif n_h < MIN_HOLDOUT:
        warnings.append(f"the holdout has only {n_h} people (fewer than {MIN_HOLDOUT}): the intervals are unreliable")
    if not n_t:
        warnings.append("nobody was treated: every entry was held out")
    if n_h and not k_h:
        warnings.append("nobody in the holdout converted: the interval of the uplift is not reliable")
    elif n_t and not k_t:
        warnings.append("nobody treated converted: the interval of the uplift is not reliable")
    if row["inconsistent"]:
        warnings.append(
            f"{row['inconsistent']} {'person' if row['inconsistent'] == 1 else 'people'} entered both as treated and "
            "as held out; each is counted in the group of their first entry"
        )
    row["warning"] = "; ".join(warnings) or None
    row["_warnings"] = warnings
    return row


def _var(v) -> float:
    """A sample variance from the engine: None or NaN (one person) counts as 0."""
    return 0.0 if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
