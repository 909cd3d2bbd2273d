"""An erasure reads the person's rows by index, not the workspace's, on SQLite: every statement of one is explained.

Found on the store of a demo (docs/benchmarks.md): the identity links of her identifiers (one OR of both sides of
the link) and her changes in the feed (one OR of hers and the merges naming her as survivor, which had no index)
were found by reading every link and every change the workspace kept, under the store's one write lock: seconds
each at a million customers, for every erasure of a bulk request."""

from __future__ import annotations

import sqlalchemy as sa

from chorus.profiles import privacy
from chorus.store.tables import identity_links, profile_changes
from tests.identity.helpers import profile_of, resolve, send
from tests.plans import plan, statements, wide


def test_an_erasure_reads_the_persons_rows_by_index(engine, workspace):
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL's plans depend on its statistics: the SQLite plans are the structural check
    ws = workspace["id"]
    people = [{"type": "identify", "userId": f"u{i}", "anonymousId": f"a{i}", "messageId": f"i{i}",
               "timestamp": "2026-01-01T10:00:00Z", "traits": {"email": f"p{i}@example.com"}}
              for i in range(40)]  # fmt: skip
    send(engine, ws, people, trusted=True)
    # u3 browsed anonymously on a second device, then signed in there: a merge that names her as the survivor
    send(engine, ws, [{"type": "track", "event": "Viewed", "anonymousId": "b3", "messageId": "b1",
                       "timestamp": "2026-01-01T10:01:00Z"}], trusted=True)  # fmt: skip
    resolve(engine)
    send(engine, ws, [{"type": "identify", "userId": "u3", "anonymousId": "b3", "messageId": "b2",
                       "timestamp": "2026-01-01T10:02:00Z"}], trusted=True)  # fmt: skip
    # claimants: her app's token reported from the client (goes with her), and a kiosk's token, opened
    # anonymously by many, which her user id claimed too (stays)
    app = {"type": "track", "event": "Viewed", "timestamp": "2026-01-01T10:03:00Z"}
    send(engine, ws, [
        {**app, "userId": "u3", "anonymousId": "app3", "messageId": "c1", "context": {"device": {"token": "tok3"}}},
        *({**app, "anonymousId": f"kiosk-{k}", "messageId": f"k{k}", "context": {"device": {"token": "kiosk"}}}
          for k in range(30)),
        {**app, "userId": "u3", "anonymousId": "kiosk-0", "messageId": "c2", "context": {"device": {"token": "kiosk"}}},
    ], trusted=False)  # fmt: skip
    resolve(engine)
    her = profile_of(engine, ws, "user_id:u3")
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(profile_changes).where(
            profile_changes.c.target_id == her)).scalar() >= 1  # fmt: skip

    token, kiosk = profile_of(engine, ws, "device_token:tok3"), profile_of(engine, ws, "device_token:kiosk")
    assert token not in (None, her) and kiosk not in (None, her, token)
    out: dict = {}
    seen = statements(engine, lambda conn: out.update(privacy.erase(conn, ws, her)), write=True)
    assert out["erased_with"] == [token]  # the kiosk, with links of its own, stays
    assert profile_of(engine, ws, "device_token:kiosk") == kiosk
    read = [(s, p) for s, p in seen if s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "WITH"))]
    assert any("FROM identity_links" in s for s, _ in read) and any("FROM profile_changes" in s for s, _ in read)
    broad = [(" ".join(s.split())[:300], wide(plan(engine, s, p))) for s, p in read]
    assert not [b for b in broad if b[1]], "\n".join(f"{s}\n    {w}" for s, w in broad if w)
    with engine.connect() as conn:  # and the erasure did its work: nothing of hers in the graph or the feed
        idents = ["user_id:u3", "anonymous_id:a3", "anonymous_id:b3", "email:p3@example.com"]
        assert not conn.execute(sa.select(identity_links).where(
            identity_links.c.workspace_id == ws, sa.or_(identity_links.c.a.in_(idents),
                                                        identity_links.c.b.in_(idents)))).all()  # fmt: skip
        assert not conn.execute(sa.select(profile_changes).where(
            sa.or_(profile_changes.c.profile_id == her, profile_changes.c.target_id == her))).all()  # fmt: skip
    assert profile_of(engine, ws, "user_id:u4") is not None  # the others stay
