"""Counters of what a transaction wrote count when it commits (chorus.metrics.after_commit): a transaction rolled
back and retried (a deadlock on PostgreSQL, a failed claim handled again one person at a time) counted its rows
twice, and a savepoint rolled back counted rows that were never stored."""

from __future__ import annotations

import uuid

import pytest

from chorus import metrics, workspaces
from chorus.collect import ingest
from chorus.collect.messages import normalise
from tests.identity.helpers import T0


def accepted() -> float:
    return metrics.REGISTRY.get_sample_value("chorus_events_accepted_total") or 0


def store(conn, ws: str, n: int) -> None:
    src = workspaces.internal_source(conn, ws, "server", "metrics-test")
    evs = [normalise({"type": "track", "userId": "u1", "event": "E", "messageId": uuid.uuid4().hex},
                     received_at=T0, source_kind="server") for _ in range(n)]  # fmt: skip
    ingest.store(conn, src, evs, [], T0)


def test_a_rolled_back_transaction_counts_nothing_and_a_committed_one_counts_once(engine, workspace):
    ws = workspace["id"]
    before = accepted()
    with pytest.raises(RuntimeError), engine.begin() as conn:
        store(conn, ws, 3)
        raise RuntimeError("a deadlock, say: the transaction is rolled back, then retried")
    assert accepted() == before
    with engine.begin() as conn:
        store(conn, ws, 3)
        assert accepted() == before  # written, not committed yet
    assert accepted() == before + 3


def test_a_savepoint_rolled_back_drops_what_it_counted(engine, workspace):
    ws = workspace["id"]
    before = accepted()
    with engine.begin() as conn:
        store(conn, ws, 1)
        with pytest.raises(RuntimeError), conn.begin_nested():
            store(conn, ws, 5)
            raise RuntimeError("undone")
        with conn.begin_nested():
            store(conn, ws, 2)
    assert accepted() == before + 3


def test_outside_a_transaction_a_count_is_made_at_once(engine):
    n = []
    with engine.connect() as conn:
        metrics.after_commit(conn, lambda: n.append(1))
        assert n == [1]


def feed_changes() -> float:
    return metrics.REGISTRY.get_sample_value("chorus_feed_changes_total") or 0


def test_feed_changes_count_when_their_transaction_commits(engine, workspace):
    """Review: the feed writes its changes in the commit event itself, after after_commit's counts had run, so a
    count it deferred was never made."""
    from chorus.profiles import feed

    before = feed_changes()
    with pytest.raises(RuntimeError), engine.begin() as conn:
        feed.record(conn, workspace["id"], [feed.Change("p1", "event")])
        raise RuntimeError("rolled back")
    with engine.begin() as conn:
        feed.record(conn, workspace["id"], [feed.Change("p1", "event"), feed.Change("p2", "event")])
    assert feed_changes() == before + 2
