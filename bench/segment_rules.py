"""The segment rules the benchmarks share, in one place: plain data (no chorus import), so that a bench that
snapshots the package before importing it (``common.snapshot_code``) can import them first.

``SEGMENTS`` are ``bench/segments.py``'s 20 (traits, windowed behaviour with property filters, sums and averages,
channels, messages, consent, buckets, segments of segments); ``segments_latency.py`` and ``segments_timers.py``
take theirs from it.
"""

from __future__ import annotations

SEGMENTS: dict[str, dict] = {
    "gold": {"trait": {"name": "plan", "equals": "gold"}},
    "thirties": {"trait": {"name": "age", "between": [30, 39]}},
    "new": {"trait": {"name": "signup", "within_last": "30d"}},
    "birthday": {"trait": {"name": "birthday", "anniversary": {"next_days": 7}}},
    "high_clv": {"trait": {"name": "computed.clv_12m", "gt": 500}},
    "browse_abandon": {"and": [
        {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                       "window": "7d", "times": {"gte": 3}}},
        {"not": {"or": [
            {"performed": {"event": "Product Added", "where": [{"property": "category", "equals": "laptops"}],
                           "window": "7d"}},
            {"performed": {"event": "Order Completed", "window": "7d"}}]}}]},
    "big_spenders": {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total",
                                   "window": "90d", "gte": 500}},
    "big_baskets": {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total", "gte": 300}},
    "lapsed": {"and": [{"performed": {"event": "Order Completed"}},
                       {"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}}]},
    "webroomers": {"and": [
        {"performed": {"event": "Product Viewed", "channel_group": "online", "window": "30d"}},
        {"performed": {"event": "Order Completed", "channel_group": "offline", "window": "30d"}}]},
    "store_visitors": {"used_channel": {"channel": "store", "window": "30d"}},
    "multichannel": {"channel_count": {"gte": 3, "window": "90d"}},
    "last_online": {"last_channel": {"in": ["web", "app"]}},
    "omnichannel": {"channel_mix": {"equals": "both", "window": "180d"}},
    "opened_bf": {"message": {"status": ["opened", "clicked"], "campaign": "bf", "window": "30d"}},
    "ignored_bf": {"and": [{"message": {"status": "received", "campaign": "bf"}},
                           {"not": {"message": {"status": ["opened", "clicked"], "campaign": "bf"}}}]},
    "reachable_offers": {"reachable": {"channel": "email", "topic": "offers"}},
    "vip_to_mail": {"and": [{"segment": "high_clv"}, {"segment": "reachable_offers"}, {"not": {"list": "staff"}}]},
    "gold_holdout": {"and": [{"segment": "gold"}, {"bucket": {"from": 0, "to": 10, "seed": "holdout"}}]},
    "laptop_buyers": {"last_value": {"event": "Order Completed", "property": "category", "equals": "laptops",
                                     "window": "180d"}},
}  # fmt: skip
