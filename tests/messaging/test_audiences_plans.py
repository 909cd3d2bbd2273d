"""What a following audience's sync reads, by SQLite's query plans: a person's identifiers by the profile index, and
the feed's changes since the last sync by the range of their numbers.

Found in the demo (10,000 customers, 30 days; docs/benchmarks.md): ordered by ``ident`` alone, the identifiers of
the few people a sync reads were found by walking the workspace's whole primary key (33,000 identifiers a call),
and "what changed since the last sync" read every change the workspace kept (7 days) through the workspace's index
instead of the hour after the mark. Both grew with the store, every hour. Plans, not timings; and the answers."""

from __future__ import annotations

import re

from chorus import workspaces
from chorus.messaging.audiences import store
from chorus.profiles import feed
from chorus.store.db import create_engine, upgrade
from tests.identity.helpers import resolve, send
from tests.plans import plans

PEOPLE = 300


def test_a_sync_reads_its_people_and_the_recent_changes_not_the_workspace(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    upgrade(url)
    engine = create_engine(url)
    ws = workspaces.create(engine, "shop")["id"]
    other = workspaces.create(engine, "other")["id"]  # its changes share the range: they must not be answered
    for w in (ws, other):
        send(engine, w, [{"type": "identify", "userId": f"u{i}", "messageId": f"{w}-i{i}",
                          "traits": {"email": f"p{i}@example.com", "phone": f"+3361234{i:04d}"}}
                         for i in range(PEOPLE)])  # fmt: skip
    resolve(engine)
    with engine.connect() as conn:
        mark = store.feed_mark(conn)
        owners = store.owners(conn, ws, [f"user_id:u{i}" for i in range(PEOPLE)])
        others = store.owners(conn, other, [f"user_id:u{i}" for i in range(PEOPLE)])
    pids = [owners[f"user_id:u{i}"] for i in range(PEOPLE)]
    # after the mark: three of hers change traits, one of the other workspace's too
    send(engine, ws, [{"type": "identify", "userId": f"u{i}", "messageId": f"later{i}", "traits": {"plan": "pro"}}
                      for i in (3, 5, 8)])  # fmt: skip
    send(engine, other, [{"type": "identify", "userId": "u9", "messageId": "other-later", "traits": {"x": 1}}])
    resolve(engine)
    with engine.begin() as conn:  # a change that cannot change a row (a message's status) is left out
        feed.record(conn, ws, [feed.Change(pids[11], "message", detail={"status": "sent"})])
    with engine.connect() as conn:
        upto = store.feed_mark(conn)
    assert len(pids) * store.PROBE_RATIO > upto - mark  # the range after the mark is the cheaper way

    with engine.connect() as conn:
        changed = store.changed_since(conn, ws, mark, False, set(pids), upto)
    assert changed == {pids[3], pids[5], pids[8]}
    assert others["user_id:u9"] not in changed
    read = plans(engine, lambda conn: store.changed_since(conn, ws, mark, False, set(pids), upto))
    feed_reads = [(s, p) for s, p in read if re.search(r"\bFROM profile_changes\b", s)]
    assert feed_reads, read
    for statement, plan in feed_reads:
        assert "INTEGER PRIMARY KEY (rowid>?)" in plan, (statement, plan)

    with engine.connect() as conn:
        people = store.people(conn, ws, [pids[7], pids[2]])
    assert sorted(people) == sorted([pids[7], pids[2]])
    assert people[pids[7]]["identifiers"] == {"email": ["p7@example.com"], "phone": ["+33612340007"],
                                              "user_id": ["u7"]}  # fmt: skip
    read = plans(engine, lambda conn: store.people(conn, ws, [pids[7], pids[2]]))
    ident_reads = [(s, p) for s, p in read if re.search(r"\bFROM identifiers\b", s)]
    assert ident_reads, read
    for statement, plan in ident_reads:
        assert "ix_identifiers_profile (workspace_id=? AND profile_id=?)" in plan, (statement, plan)
    engine.dispose()
