"""Values from outside that used to be accepted and then went wrong later: integers beyond 64 bits read as floats
(two user ids became one), a user hash kept in a rejected event, a summed trait overflowing 64 bits (the person's
later events were refused). Real HTTP, both engines."""

from __future__ import annotations

import sqlalchemy as sa

from chorus import workspaces
from chorus.store.tables import events, rejected_events
from tests.identity.test_consent_claims import bearer, post, ts


def test_integers_beyond_64_bits_are_refused_by_their_path_not_rounded(http, server, workspace):
    body = (b'{"batch": [{"type": "track", "event": "x", "messageId": "m1", "userId": 18446744073709551617},'
            b' {"type": "track", "event": "x", "messageId": "m2", "userId": 18446744073709551618},'
            b' {"type": "track", "event": "x", "messageId": "m3", "anonymousId": "a",'
            b' "properties": {"order": -9223372036854775809}},'
            b' {"type": "track", "event": "x", "messageId": "m4", "userId": 18446744073709551615}]}')
    r = http.post("/v1/batch", content=body, headers={"content-type": "application/json"},
                  auth=(workspace["write_key"], ""))  # fmt: skip
    assert r.status_code == 200, r.text
    assert [(x["index"], x["field"]) for x in r.json()["rejected"]] == [
        (0, "userId"), (1, "userId"), (2, "properties.order")
    ]
    with server.engine.connect() as conn:
        rows = conn.execute(sa.select(events.c.message_id, events.c.user_id)
                            .where(events.c.workspace_id == workspace["id"])).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [("m4", "18446744073709551615")]  # the largest 64-bit value, exact


def test_a_rejected_event_keeps_no_user_hash_or_write_key(http, server, workspace):
    body = {"type": "track", "event": "x", "messageId": "m9", "userId": "u1", "userHash": "SECRET-HASH-abc",
            "context": {"userHash": "SECRET-HASH-def"}, "writeKey": workspace["write_key"], "timestamp": "yesterday"}
    r = http.post("/v1/track", json=body, auth=(workspace["write_key"], ""))
    assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "timestamp", r.text
    with server.engine.connect() as conn:
        kept = " ".join(conn.execute(sa.select(rejected_events.c.payload)).scalars())
    assert "m9" in kept and "SECRET-HASH" not in kept and workspace["write_key"] not in kept


def test_a_summed_trait_past_64_bits_refuses_none_of_the_persons_events(http, server, workspace, engine):
    workspaces.update_settings(engine, workspace["id"], {"trait_policies": {"visits": "sum"}})
    sk, wk = workspace["server_write_key"], workspace["write_key"]
    post(http, sk, "identify", {"userId": "vera", "traits": {"email": "vera@example.com"},
                                "messageId": "v1", "timestamp": ts(1)})  # fmt: skip
    server.settle()
    # anyone, with the public key: each value fits in 64 bits, their sum does not
    post(http, wk, "identify", {"anonymousId": "mal", "traits": {"email": "vera@example.com",
                                "visits": 18446744073709551615}, "messageId": "m1", "timestamp": ts(2)})  # fmt: skip
    server.settle()
    for i in range(3):
        post(http, sk, "identify", {"userId": "vera", "traits": {"visits": 4 + i, "plan": "gold"},
                                    "messageId": f"v{3 + i}", "timestamp": ts(3 + i)})  # fmt: skip
    server.settle()
    with engine.connect() as conn:
        assert conn.execute(sa.select(rejected_events.c.message_id, rejected_events.c.reason)).all() == []
    r = http.get("/api/profiles", params={"user_id": "vera"}, headers=bearer(workspace))
    assert r.status_code == 200 and r.json()["traits"]["plan"] == "gold"
    assert r.json()["traits"]["visits"] == float(18446744073709551615 + 6)
