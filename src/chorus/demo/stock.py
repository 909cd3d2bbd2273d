"""Stock per store: what each store has on its shelves of each product, which till purchases and click-and-collect
orders draw from. State without I/O, kept by ``world.World`` in time order (stock is shared by the customers, so
it cannot be part of one customer's plan: the plans say what people want, the stock says what they get).

- **Deliveries.** Every store is delivered once a week, on Monday at ``DELIVERY_HOUR`` in the brand's time zone:
  each product is topped up to the store's *level* for it (a shelf holding more, after returns, keeps it).
- **Levels** are set the way a retailer sets them from a demand forecast: ``stock_cover`` weeks of the product's
  forecast weekly demand at that store, rounded up, and at least one unit (every store carries the whole
  catalog). The forecast is the plans' own average demand (till purchases and click-and-collect orders, by store
  and product) times a log-normal error of spread ``forecast_error``, drawn once per store and product; what
  messages make people buy is demand nobody forecast. So an under-forecast product, a busy week or a promotion
  that works empties a shelf until the next delivery.
- **A till purchase** takes what is on the shelf: an item that is out is not bought (a lost sale), and a receipt
  with nothing left is not made at all.
- **A click-and-collect order** is picked from the store's shelf when it is placed: all of it, or the store
  cancels the order (``reserve`` answers False) and nothing is taken.
- **A till return** puts its items back on the shelf (an online return goes to the warehouse, not a store).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

DELIVERY_HOUR = 6  # local time, Monday
WEEK = timedelta(days=7)


def first_delivery(start: datetime, tz: str) -> datetime:
    """The last Monday delivery at or before ``start``: the shelves are full when the period begins."""
    local = start.astimezone(ZoneInfo(tz))
    day = local.replace(hour=DELIVERY_HOUR, minute=0, second=0, microsecond=0) - timedelta(days=local.weekday())
    if day > local:
        day -= WEEK
    return day.astimezone(start.tzinfo)


def levels_from_demand(demand: Counter, weeks: float, stores: Iterable[str], skus: Iterable[str], cover: float,
                       error: Callable[[str, str], float] = lambda _s, _k: 1.0) -> dict[tuple[str, str], int]:
    """``cover`` weeks of each (store, sku)'s forecast weekly demand, rounded up, at least 1. The forecast is the
    average weekly ``demand`` (units over ``weeks``) times ``error(store, sku)``: no forecast is exact, and the
    products it under-forecasts are the ones that run out, at any size of the population."""
    weeks = max(weeks, 1.0)  # a period shorter than a week is stocked for a week
    return {(s, k): max(1, math.ceil(cover * error(s, k) * demand.get((s, k), 0) / weeks - 1e-9))
            for s in stores for k in skus}  # fmt: skip


def deliveries_since(first: datetime, at: datetime, tz: str) -> int:
    """Monday deliveries after ``first`` (itself one), up to and including ``at``: counted on the local calendar, so a
    delivery stays at 06:00 local across a change of the clocks (a week is then 167 or 169 hours)."""
    if at < first:
        return -1
    zone = ZoneInfo(tz)
    latest = first_delivery(at, tz).astimezone(zone)  # the last delivery at or before ``at``
    return (latest.date() - first.astimezone(zone).date()).days // 7


@dataclass
class Stock:
    levels: dict[tuple[str, str], int]  # (store, sku) -> units after a delivery
    first: datetime  # the first delivery (the shelves' state at the start)
    tz: str  # where the stores are: deliveries are at 06:00 on Mondays there
    on_hand: dict[tuple[str, str], int] = field(default_factory=dict)
    delivered: dict[tuple[str, str], int] = field(default_factory=dict)  # the last delivery each shelf had
    # what it did, for the report
    short: Counter = field(default_factory=Counter)  # (store, sku) -> units a till customer wanted and did not get
    refused: Counter = field(default_factory=Counter)  # store -> click-and-collect orders it could not pick
    picked: Counter = field(default_factory=Counter)  # store -> click-and-collect orders it picked
    sold: Counter = field(default_factory=Counter)  # (store, sku) -> units sold at the till or picked

    def _shelf(self, key: tuple[str, str], at: datetime) -> int:
        n = deliveries_since(self.first, at, self.tz)  # the first delivery is number 0; before it, -1: nothing
        if self.delivered.get(key, -1) < n:
            self.on_hand[key] = max(self.on_hand.get(key, 0), self.levels.get(key, 0))
            self.delivered[key] = n
        return self.on_hand.setdefault(key, 0)

    def available(self, store: str, sku: str, at: datetime) -> int:
        return self._shelf((store, sku), at)

    def take(self, store: str, skus: Sequence[str], at: datetime) -> tuple[str, ...]:
        """A till purchase of ``skus`` (one unit of each listed, in order) at ``at``: the items it got."""
        got = []
        for sku in skus:
            key = (store, sku)
            if self._shelf(key, at) > 0:
                self.on_hand[key] -= 1
                self.sold[key] += 1
                got.append(sku)
            else:
                self.short[key] += 1
        return tuple(got)

    def reserve(self, store: str, skus: Sequence[str], at: datetime) -> bool:
        """A click-and-collect order: picked whole from the shelf (True), or cancelled with nothing taken."""
        need = Counter((store, sku) for sku in skus)
        if any(self._shelf(key, at) < n for key, n in need.items()):
            self.refused[store] += 1
            return False
        for key, n in need.items():
            self.on_hand[key] -= n
            self.sold[key] += n
        self.picked[store] += 1
        return True

    def give_back(self, store: str, skus: Sequence[str], at: datetime) -> None:
        """A till return: the items are back on the shelf."""
        for sku in skus:
            key = (store, sku)
            self._shelf(key, at)
            self.on_hand[key] += 1

    def summary(self, cancelled: Counter) -> dict:
        """The stores' record; ``cancelled``: store -> the cancellations that reached Chorus (one decided near the
        end of the period may fall after it: counted in ``refused`` only)."""
        stores = sorted({s for s, _ in self.levels})
        return {
            "click_and_collect": {s: {"picked": self.picked[s], "refused": self.refused[s],
                                      "cancelled": cancelled[s]} for s in stores},
            "till_items_short": {s: sum(n for (st, _k), n in self.short.items() if st == s) for s in stores},
            "units_sold": {s: sum(n for (st, _k), n in self.sold.items() if st == s) for s in stores},
            "units_per_delivery": {s: sum(n for (st, _k), n in self.levels.items() if st == s) for s in stores},
        }  # fmt: skip
