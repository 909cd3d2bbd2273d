"""Showrooming and webrooming: people who look in one world and buy in the other.

* **Showrooming**: a store visit followed by an online purchase. A *visit* is any event on an ``offline`` channel
  (``store``, ``call_center``, ``catalog`` by default) that is not a conversion and not an outbound message; an
  *online purchase* is a conversion (:func:`chorus.analytics.touchpoints.conversions`, one per order) on an
  ``online`` channel. The purchase is showroomed when the same person (profile ids mapped through later merges)
  has a visit at most ``window`` before it (visit time <= purchase time <= visit time + window).
* **Webrooming**: online browsing followed by a store purchase. *Browsing* is a ``page`` or ``screen`` call, or a
  ``Product Viewed`` event, on a ``browse_channels`` channel (``web`` and ``app``); a *store purchase* is a
  conversion on an ``offline`` channel, webroomed when a browse of the same person is at most ``window`` before
  it. When browse events carry a ``category``, a webroomed purchase is ``same_category`` if one of the browses in
  its window has the purchase's category, ``other_category`` if none has but the purchase and some browse have a
  category, and ``unknown_category`` otherwise (the three add up to the webroomed purchases).

A purchase counts at most once per direction, however many visits or browses precede it. Purchases are those of
the period (by purchase time); the visits and browses before them may be up to ``window`` earlier than the
period's start. Figures are given per category of the purchase (an order's category is that of its first product)
and in total: purchases (online ones for showrooming, store ones for webrooming), how many were showroomed
(webroomed), their revenue, and the shares of purchases and of revenue. Everything is computed by the engine: a
join on the person with a time condition, then one row per purchase.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

import ibis
import ibis.expr.types as ir

from chorus.analytics import touchpoints as tp
from chorus.analytics.omnichannel import OFFLINE, ONLINE, check_channels, check_period, within
from chorus.errors import ChorusError

DIRECTIONS = ("showrooming", "webrooming")
BROWSE_TYPES = ("page", "screen")
BROWSE_EVENTS = ("Product Viewed",)
BROWSE_CHANNELS = ("web", "app")
_COUNTS = ("purchases", "roomed", "same_category", "other_category", "unknown_category")


@dataclass
class Rooming:
    """``rows``: one per (direction, purchase category); ``totals``: per direction, the same figures over every
    category."""

    rows: list[dict]
    totals: dict[str, dict]
    params: dict
    warnings: list[str] = field(default_factory=list)

    def row(self, direction: str, category: str | None) -> dict:
        return next(r for r in self.rows if r["direction"] == direction and r["category"] == category)

    def as_dict(self) -> dict:
        return {"totals": self.totals, "rows": self.rows, "params": self.params, "warnings": self.warnings}


def showrooming(
    lake,
    cfg: tp.Config = tp.Config(),
    period: tp.Period = tp.Period(),
    *,
    window: timedelta = timedelta(days=7),
    online: tuple[str, ...] = ONLINE,
    offline: tuple[str, ...] = OFFLINE,
    browse_channels: tuple[str, ...] = BROWSE_CHANNELS,
) -> Rooming:
    """Showroomed online purchases and webroomed store purchases of the period, by category (see the module doc)."""
    p = purchases(lake, cfg, period, window=window, online=online, offline=offline, browse_channels=browse_channels)
    roomed = p.roomed.cast("int64")
    agg = p.group_by(["direction", "category"]).agg(
        purchases=p.count(),
        purchase_revenue=p.revenue.sum(),
        roomed=roomed.sum(),
        roomed_revenue=(p.revenue * roomed.cast("float64")).sum(),
        same_category=(p.category_match == "same").cast("int64").sum(),
        other_category=(p.category_match == "other").cast("int64").sum(),
        unknown_category=(p.category_match == "unknown").cast("int64").sum(),
        currencies=p.currency.collect(distinct=True),
    )
    raw = agg.to_pyarrow().to_pylist()
    rows, totals = [], {}
    for direction in DIRECTIONS:
        mine = [r for r in raw if r["direction"] == direction]
        mine.sort(key=lambda r: (-r["roomed"], -r["purchases"], r["category"] is None, r["category"] or ""))
        total = {"direction": direction, "category": None}
        for k in _COUNTS:
            total[k] = sum(int(r[k] or 0) for r in mine)
        for k in ("purchase_revenue", "roomed_revenue"):
            total[k] = sum(float(r[k] or 0.0) for r in mine)
        rows += [_row(direction, r) for r in mine]
        totals[direction] = _row(direction, total)
        del totals[direction]["category"]
    currencies = sorted({c for r in raw for c in r["currencies"] or () if c})
    warnings = []
    if len(currencies) > 1:
        warnings.append(
            f"revenue adds up purchases in several currencies ({', '.join(currencies)}); convert them upstream or "
            "report one currency at a time"
        )
    oversized = tp.oversized_warning(*tp.oversized_orders(p), "purchases")
    if oversized:
        warnings.append(oversized)
    for direction, what in (("showrooming", "online"), ("webrooming", "store")):
        if not totals[direction]["purchases"]:
            warnings.append(f"no {what} purchase in the period: nothing to say about {direction}")
    params = {
        "window_days": window.total_seconds() / 86400, "online": list(online), "offline": list(offline),
        "browse_channels": list(browse_channels), "browse_events": list(BROWSE_EVENTS),
        "since": period.since.isoformat() if period.since else None,
        "until": period.until.isoformat() if period.until else None,
        "engine": lake.engine, "config": cfg.as_dict(),
    }  # fmt: skip
    return Rooming(rows, totals, params, warnings)


def purchases(
    lake,
    cfg: tp.Config = tp.Config(),
    period: tp.Period = tp.Period(),
    *,
    window: timedelta = timedelta(days=7),
    online: tuple[str, ...] = ONLINE,
    offline: tuple[str, ...] = OFFLINE,
    browse_channels: tuple[str, ...] = BROWSE_CHANNELS,
) -> ir.Table:
    """One row per online or store purchase of the period: ``direction`` (showrooming for online purchases,
    webrooming for store ones), ``profile_id, ts, seq, order_id, channel, category, revenue, oversized`` (its value
    was above ``limits.MAX_ORDER_VALUE``: counted as 0)``, currency``,
    ``roomed`` (a visit, resp. a browse, at most ``window`` before it) and ``category_match`` (webroomed
    purchases: same, other or unknown; else null)."""
    online, offline = check_channels(online, offline)
    check_period(period)
    if not isinstance(window, timedelta) or window <= timedelta(0):
        raise ChorusError("the window must be a positive duration", field="window")
    if isinstance(browse_channels, str):
        browse_channels = (browse_channels,)
    if not browse_channels or not all(isinstance(c, str) and c for c in browse_channels):
        raise ChorusError("browse_channels must be a non-empty list of channel names", field="browse_channels")
    # the events before the period that a window can reach must be read too
    ev = tp.resolved_events(lake, replace(cfg, lookback=max(cfg.lookback, window)), period)
    conv = within(tp.conversions(ev, cfg), period)
    not_conv = ev.event.isnull() | ~ev.event.isin(cfg.conversions)
    inbound = ev.direction.isnull() | (ev.direction != "outbound")
    visits = ev.filter(ev.channel.isin(offline), not_conv, inbound)
    visits = visits.select(v_pid="profile_id", v_ts="timestamp", v_cat=ibis.null("string"))
    browses = ev.filter(
        ev.channel.isin(browse_channels), ev.type.isin(BROWSE_TYPES) | ev.event.isin(BROWSE_EVENTS), not_conv
    ).select(v_pid="profile_id", v_ts="timestamp", v_cat="category")
    show = _matched(conv.filter(conv.channel.isin(online)), visits, window, "showrooming")
    web = _matched(conv.filter(conv.channel.isin(offline)), browses, window, "webrooming")
    return show.union(web)


def _matched(buys: ir.Table, before: ir.Table, window: timedelta, direction: str) -> ir.Table:
    """``buys`` with whether an event of ``before`` of the same person is at most ``window`` before each."""
    j = buys.join(
        before,
        [buys.profile_id == before.v_pid, before.v_ts <= buys.ts, before.v_ts >= buys.ts - as_interval(window)],
    )
    same = ibis.coalesce(j.v_cat == j.category, False).cast("int64")
    known = (j.v_cat.notnull() & j.category.notnull()).cast("int64")
    hits = j.group_by([j.profile_id, j.seq]).agg(_same=same.max(), _known=known.max())
    hits = hits.rename(_pid="profile_id", _seq="seq")
    m = buys.left_join(hits, [buys.profile_id == hits._pid, buys.seq == hits._seq])
    roomed = m._seq.notnull()
    match = ibis.cases(
        (~roomed, ibis.null("string")),
        (m._same == 1, "same"),
        (m._known == 1, "other"),
        else_="unknown",
    )
    return m.select(
        direction=ibis.literal(direction), profile_id=m.profile_id, ts=m.ts, seq=m.seq, order_id=m.order_id,
        channel=m.channel, category=m.category, revenue=m.revenue, oversized=m.oversized, currency=m.currency,
        roomed=roomed,
        category_match=match if direction == "webrooming" else ibis.null("string"),
    )  # fmt: skip


def as_interval(window: timedelta):
    seconds, micro = divmod(window // timedelta(microseconds=1), 1_000_000)
    return ibis.interval(microseconds=window // timedelta(microseconds=1)) if micro else ibis.interval(seconds=seconds)


def _row(direction: str, r: dict) -> dict:
    purchases = int(r["purchases"] or 0)
    roomed = int(r["roomed"] or 0)
    revenue = float(r["purchase_revenue"] or 0.0)
    roomed_revenue = float(r["roomed_revenue"] or 0.0)
    web = direction == "webrooming"
    return {
        "direction": direction, "category": r["category"], "purchases": purchases, "roomed": roomed,
        "share": roomed / purchases if purchases else None, "purchase_revenue": revenue,
        "roomed_revenue": roomed_revenue, "revenue_share": roomed_revenue / revenue if revenue else None,
        "same_category": int(r["same_category"] or 0) if web else None,
        "other_category": int(r["other_category"] or 0) if web else None,
        "unknown_category": int(r["unknown_category"] or 0) if web else None,
    }  # fmt: skip
