"""Prometheus metrics (exposed at /metrics). No personal data and no per-workspace labels (unbounded)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import GC_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy.engine import Connection

from chorus.store import txn

log = logging.getLogger("chorus.metrics")
REGISTRY = CollectorRegistry(auto_describe=True)
# The standard process and collector metrics (python_gc_*, process_*): memory, CPU, and how often the cyclic
# collector runs in each generation, which chorus.gctune changes (decision 0041)
REGISTRY.register(GC_COLLECTOR)
REGISTRY.register(PROCESS_COLLECTOR)

events_accepted = Counter("chorus_events_accepted", "Events stored by the tracking API and imports", registry=REGISTRY)
events_duplicate = Counter(
    "chorus_events_duplicate", "Events ignored because their messageId was known", registry=REGISTRY
)
events_rejected = Counter("chorus_events_rejected", "Events rejected by validation", ["field"], registry=REGISTRY)
events_resolved = Counter("chorus_events_resolved", "Events resolved into profiles", registry=REGISTRY)
events_failed = Counter("chorus_events_failed", "Events that identity resolution could not process", registry=REGISTRY)
merges = Counter("chorus_profile_merges", "Profiles merged into another", registry=REGISTRY)
merges_refused = Counter(
    "chorus_profile_merges_refused", "Links that would have merged profiles, refused by a guard", registry=REGISTRY
)
feed_changes = Counter("chorus_feed_changes", "Profile changes recorded in the change feed", registry=REGISTRY)
feed_failures = Counter(
    "chorus_feed_consumer_failures", "Times a change-feed consumer failed on one person's changes", registry=REGISTRY
)
feed_bulk_fallbacks = Counter(
    "chorus_feed_bulk_fallbacks",
    "Times a consumer's whole claim (or the segment timers of a group of people) failed together and was handled "
    "one person at a time",
    ["consumer"],
    registry=REGISTRY,
)
saturated = Counter("chorus_ingest_saturated", "Tracking requests answered 429", registry=REGISTRY)
backlog = Gauge("chorus_ingest_backlog", "Accepted events waiting for identity resolution", registry=REGISTRY)
resolve_seconds = Histogram(
    "chorus_resolve_batch_seconds", "Time to resolve one worker batch", registry=REGISTRY,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip
message_status = Counter(
    "chorus_messages_status", "Message state changes (queued, sent, failed, opened...)", ["channel", "status"],
    registry=REGISTRY,
)  # fmt: skip
messages_no_provider = Counter(
    "chorus_messages_no_provider", "Messages skipped because no provider of their channel is configured or takes "
    "the address", ["channel"], registry=REGISTRY,
)  # fmt: skip
messages_not_sent = Counter(
    "chorus_messages_dropped_before_send", "Claimed messages a worker gave up right before its provider call: "
    "'lease' (another worker took it over after the lease expired), 'gone' (erased, or its status changed, while it "
    "waited for its turn), 'withdrawn' (its journey withdrew it, or the person's consent no longer allows it)",
    ["channel", "why"], registry=REGISTRY,
)  # fmt: skip
provider_seconds = Histogram(
    "chorus_provider_send_seconds", "Time of one provider call", ["channel", "outcome"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip


# -- counting what committed -------------------------------------------------------------------------------------
# A counter of what a transaction wrote (events stored, changes recorded, message statuses) is incremented when the
# transaction commits, not when the rows are written: a transaction rolled back and retried (a deadlock on
# PostgreSQL, a failed claim handled again one person at a time) counted its rows twice. Callbacks wait in their
# transaction's buffer (chorus.store.txn: a savepoint rolled back drops those made inside it, a rollback drops
# them all). SQLAlchemy's Core has
# no event after a commit: they run in its "commit" event, just before the COMMIT itself, so a COMMIT that fails
# (none of Chorus' writes defers a constraint to it) would still have counted.
def _count(conn: Connection, counts: list) -> None:
    for count in counts:
        try:
            count()
        except Exception:  # a count must never fail the commit it follows
            log.exception("a metric could not be counted")


# last of the commit's buffers: what another writes there (the change feed) may still fail the commit
_COUNTS = txn.Buffer("chorus_metrics", _count, order=100)


def after_commit(conn: Connection, count: Callable[[], object]) -> None:
    """Run ``count`` (a counter's increment) once ``conn``'s transaction commits; at once outside a transaction."""
    if not conn.in_transaction():
        count()
        return
    _COUNTS.add(conn, [count])
