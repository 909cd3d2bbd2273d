"""The audience sync against the store (SQLite and PostgreSQL), with a client double that records what it is
asked to send: merges between syncs, and an erasure that lands while a sync is uploading."""

from __future__ import annotations

import sqlalchemy as sa

from chorus import workspaces
from chorus.messaging.audiences import store, sync
from chorus.messaging.audiences.base import Upload
from chorus.messaging.audiences.membership import Entry
from chorus.profiles import privacy
from chorus.store.tables import audience_members, audience_removals
from chorus.timeutil import utcnow
from tests.identity.helpers import resolve, send


class Recorder:
    """An AudienceClient that holds rows in memory; ``during`` runs inside the upload (before ``done``)."""

    name, type = "fake", "meta"

    def __init__(self, during=None):
        self.held: set[str] = set()
        self.calls: list[tuple[str, int]] = []
        self.during = during

    def apply(self, destination, op, rows, done, options):
        self.calls.append((op, len(rows)))
        for row in rows:
            (self.held.add if op == "add" else self.held.discard)(row["EMAIL"])
        if self.during:
            self.during()
        done(list(range(len(rows))), {})
        return Upload(received=len(rows))

    def close(self):
        pass


def setup(engine):
    ws = workspaces.create(engine, "aud-store")
    send(engine, ws["id"], [
        {"type": "identify", "userId": "u1", "messageId": "m1", "timestamp": "2026-01-01T00:00:00Z",
         "traits": {"email": "one@example.com"}},
        {"type": "identify", "anonymousId": "a2", "messageId": "m2", "timestamp": "2026-01-01T00:00:01Z",
         "traits": {"email": "two@example.com"}},
    ])  # fmt: skip
    resolve(engine)
    with engine.connect() as conn:
        w = workspaces.get(conn, ws["id"])
        ids = {
            e: store.owners(conn, w.id, [f"email:{e}"])[f"email:{e}"] for e in ("one@example.com", "two@example.com")
        }
    clean = {"name": "vip", "provider": "meta", "format": "meta", "destination": "1", "identifiers": ["email"],
             "consent_topic": "marketing", "consent_mode": "opt_out", "options": {}}  # fmt: skip
    store.create(engine, w.id, clean, utcnow())
    return w, ids


def test_members_follow_merges(engine):
    w, ids = setup(engine)
    client = Recorder()
    got = sync.sync(engine, w, "vip", [Entry("x", profile_id=p) for p in ids.values()], client=client)
    assert got["added"] == 2 and len(client.held) == 2
    # the anonymous visitor logs in as u1: the two profiles merge
    send(engine, w.id, [{"type": "alias", "userId": "u1", "previousId": "a2", "messageId": "m3",
                         "timestamp": "2026-01-01T00:00:02Z"}])  # fmt: skip
    resolve(engine)
    with engine.connect() as conn:
        now_of = store.resolve_profile_ids(conn, w.id, list(ids.values()))
    assert len(set(now_of.values())) == 1
    got = sync.sync(engine, w, "vip", [], mode="add", client=client)
    # one profile now, with the first email it has as its row: the other row leaves the platform
    assert (got["added"], got["removed"], got["unchanged"], got["members"]) == (0, 1, 1, 1)
    with engine.connect() as conn:
        (pid,) = conn.execute(sa.select(audience_members.c.profile_id)).scalars()
    assert pid == next(iter(set(now_of.values())))


def test_an_erasure_during_an_upload_is_not_undone(engine):
    w, ids = setup(engine)
    one = ids["one@example.com"]

    def erase():
        with engine.begin() as conn:
            privacy.erase(conn, w.id, one)

    client = Recorder(during=erase)
    got = sync.sync(engine, w, "vip", [Entry("x", profile_id=p) for p in ids.values()], client=client)
    assert got["added"] == 2 and len(client.held) == 2  # the platform took both before the erasure committed
    with engine.connect() as conn:
        assert conn.execute(sa.select(audience_members.c.profile_id)).scalars().all() == [ids["two@example.com"]]
        assert conn.execute(sa.select(sa.func.count()).select_from(audience_removals)).scalar_one() == 1
    client.during = None
    got = sync.sync(engine, w, "vip", [], mode="add", client=client)
    assert got["removed_by_reason"] == {"erased": 1} and len(client.held) == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audience_removals)).scalar_one() == 0
