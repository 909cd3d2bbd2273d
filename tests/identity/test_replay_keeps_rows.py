"""PostgreSQL: a replay of the identity graph rewrites the profiles it keeps in place. It deleted every profile row of
the component and inserted them again with the same ids: a transaction waiting to lock one of them
(``views.lock_people``: a journey's or a segment's consumer, a timer) then found the row it waited for deleted, and
PostgreSQL's lock returned without it (the new row is not in the statement's snapshot). The consumer took her for
merged away or erased and marked her changes handled: her journey inputs were lost. Found in review."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from chorus.identity import resolver as resolver_mod
from chorus.identity.resolver import Resolver
from chorus.profiles import views
from tests.identity.helpers import profile_of
from tests.identity.test_optout_race import _two_profiles_and_a_pending_merge


@pytest.fixture
def pg(engine):
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    return engine


def _waiting_for_a_row(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN ('transactionid', 'tuple') "
            "AND database IS DISTINCT FROM 0")).scalar_one())  # fmt: skip


def test_a_consumer_waiting_for_her_row_during_a_replay_gets_it(pg, monkeypatch):
    ws, known = _two_profiles_and_a_pending_merge(pg)
    anon = profile_of(pg, ws, "anonymous_id:a1")
    got: dict = {}

    def lock():
        with pg.begin() as conn:
            got["locked"] = views.lock_people(conn, ws, sorted([known, anon]))

    waiter = threading.Thread(target=lock)
    real_info = resolver_mod.log.info

    def info(msg, *args):  # the replay has rewritten the rows and holds them: a consumer comes to lock her now
        if msg.startswith("replayed identity component") and not waiter.is_alive() and "locked" not in got:
            waiter.start()
            deadline = time.monotonic() + 20
            while _waiting_for_a_row(pg) < 1:
                assert time.monotonic() < deadline, "the consumer did not wait for her row"
                time.sleep(0.02)
        return real_info(msg, *args)

    monkeypatch.setattr(resolver_mod.log, "info", info)
    assert Resolver(pg).process_pending() >= 1
    waiter.join(30)
    survivor = profile_of(pg, ws, "user_id:u1")
    assert profile_of(pg, ws, "anonymous_id:a1") == survivor
    assert got["locked"] == [survivor], (got, survivor, known, anon)
