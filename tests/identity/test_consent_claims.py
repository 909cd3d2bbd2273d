"""A browser cannot grant consent for someone else (decision 0014), over real HTTP on both engines.

The public write key is in every page. A browser that knows a customer's email sends ``identify`` with it and a
consent grant: the anonymous id joins her profile (how a visitor becomes a customer), but her opt-out stands, her
email and phone traits stay hers, and the refused grant is listed on her profile. The real customer, with the user
hash her brand's server computed, opts in again; an anonymous newsletter sign-up still records its grant; an
opt-out from any browser always applies.
"""

from __future__ import annotations

import sqlalchemy as sa

from chorus.store.tables import events
from tests.api.verify import user_hash

VERA = {"email": "vera@example.com", "phone": "+447911123456", "first_name": "Vera"}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def post(http, key, path, body):
    r = http.post(f"/v1/{path}", auth=(key, ""), json=body)
    assert r.status_code == 200 and "rejected" not in r.json(), r.text
    return r


def profile(http, ws, **by):
    r = http.get("/api/profiles", params=by, headers=bearer(ws))
    assert r.status_code == 200, r.text
    return r.json()


def ts(minute: int) -> str:
    return f"2026-03-01T10:{minute:02d}:00Z"


def stored(engine, message_id: str) -> dict:
    with engine.connect() as conn:
        return conn.execute(sa.select(events.c.payload).where(events.c.message_id == message_id)).scalar_one()


def test_a_browser_cannot_reverse_a_known_customers_opt_out(http, server, workspace, engine):
    sk, wk = workspace["server_write_key"], workspace["write_key"]
    post(http, sk, "identify", {"userId": "vera", "traits": VERA, "messageId": "v1", "timestamp": ts(1)})
    post(http, sk, "track", {"userId": "vera", "event": "Consent Updated", "messageId": "v2", "timestamp": ts(2),
                             "properties": {"channel": "email", "status": "denied"}})  # fmt: skip

    # Mallory's browser: her email (written differently), a grant, and a phone and name of Mallory's own
    attack = {"anonymousId": "mal", "messageId": "m1", "timestamp": ts(3), "userHashVerified": True,
              "traits": {"email": "Vera@Example.com", "first_name": "Mal", "phone": "+447911123999",
                         "consent": {"email": {"*": "granted"}}},
              "context": {"consent": {"categoryPreferences": {"newsletter": True}}}}  # fmt: skip
    post(http, wk, "identify", attack)
    # then with the anonymous id alone (now on her profile), with her user id, with a wrong hash
    post(http, wk, "track", {"anonymousId": "mal", "event": "Consent Updated", "messageId": "m2",
                             "timestamp": ts(4), "properties": {"channel": "email", "granted": True}})  # fmt: skip
    post(http, wk, "track", {"userId": "vera", "event": "Consent Updated", "messageId": "m3", "timestamp": ts(5),
                             "properties": {"channel": "email", "status": "granted"}})  # fmt: skip
    post(http, wk, "identify", {"userId": "vera", "userHash": user_hash(http, bearer(workspace), "mal"),
                                "messageId": "m4", "timestamp": ts(6),
                                "traits": {"consent": {"email": {"*": True}}}})  # fmt: skip
    server.settle()

    vera = profile(http, workspace, user_id="vera")
    assert "mal" in vera["identifiers"]["anonymous_id"]  # the claim joined her profile: the dangerous case
    assert vera["consent"]["email:*"]["status"] == "denied"
    assert vera["consent"]["email:*"]["source"] == "event:v2"
    # a grant nobody had denied is not an opt-out reversed: it is recorded like a newsletter form's
    assert vera["consent"]["*:newsletter"]["status"] == "granted"
    # her address traits stay hers; other traits follow the browser (Segment's client-side semantics)
    assert vera["traits"]["email"] == "vera@example.com" and vera["traits"]["phone"] == "+447911123456"
    assert vera["traits"]["first_name"] == "Mal"
    # the refused grant is not silent: the newest one on the slot is listed, with the reason
    warnings = vera["consent_warnings"]
    assert [(w["slot"], w["message_id"]) for w in warnings] == [("email:*", "m4")]
    assert "opt-out stands" in warnings[0]["warning"] and "userHash" in warnings[0]["warning"]
    # a client cannot mark its own event as verified, and no user hash is ever stored
    assert "userHashVerified" not in stored(engine, "m1") and "userHash" not in stored(engine, "m4")

    # Vera herself, with the hash her brand's server computed (context.userHash, as a page sends it), opts in
    good = user_hash(http, bearer(workspace), "vera")
    post(http, wk, "identify", {"userId": "vera", "anonymousId": "vera-phone", "messageId": "v3",
                                "timestamp": ts(7), "context": {"userHash": good},
                                "traits": {"consent": {"email": {"*": "granted"}}}})  # fmt: skip
    server.settle()
    vera = profile(http, workspace, user_id="vera")
    assert vera["consent"]["email:*"]["status"] == "granted" and vera["consent"]["email:*"]["source"] == "event:v3"
    assert vera["consent_warnings"] == []
    assert stored(engine, "v3")["userHashVerified"] is True and "userHash" not in stored(engine, "v3")["context"]

    # an opt-out from any browser always applies (the safe direction), even from Mallory's
    post(http, wk, "track", {"anonymousId": "mal", "event": "Consent Updated", "messageId": "m5",
                             "timestamp": ts(8), "properties": {"channel": "email", "status": "denied"}})  # fmt: skip
    server.settle()
    vera = profile(http, workspace, user_id="vera")
    assert vera["consent"]["email:*"]["status"] == "denied"
    # and only a vouched grant (top-level userHash this time) undoes it; Mallory's later grant does not
    post(http, wk, "identify", {"anonymousId": "mal", "messageId": "m6", "timestamp": ts(9),
                                "traits": {"consent": {"email": {"*": "granted"}}}})  # fmt: skip
    server.settle()
    assert profile(http, workspace, user_id="vera")["consent"]["email:*"]["status"] == "denied"
    post(http, wk, "track", {"userId": "vera", "userHash": good, "event": "Consent Updated", "messageId": "v4",
                             "timestamp": ts(10), "properties": {"channel": "email", "status": "granted"}})  # fmt: skip
    server.settle()
    assert profile(http, workspace, user_id="vera")["consent"]["email:*"]["status"] == "granted"


def test_an_anonymous_newsletter_signup_records_its_grant(http, server, workspace):
    sk, wk = workspace["server_write_key"], workspace["write_key"]
    post(http, wk, "identify", {"anonymousId": "n-1", "messageId": "n1", "timestamp": ts(1),
                                "traits": {"email": "Nora@Example.com",
                                           "consent": {"email": {"newsletter": "granted"}}}})  # fmt: skip
    server.settle()
    nora = profile(http, workspace, email="nora@example.com")
    assert nora["consent"]["email:newsletter"]["status"] == "granted"
    assert nora["traits"]["email"] == "Nora@Example.com" and nora["consent_warnings"] == []
    # she signs up later: the brand's server joins her user id; her grant and her own browser's opt-out stand
    post(http, sk, "identify", {"userId": "nora", "messageId": "n2", "timestamp": ts(2),
                                "traits": {"email": "nora@example.com"}})  # fmt: skip
    server.settle()
    nora = profile(http, workspace, user_id="nora")
    assert "n-1" in nora["identifiers"]["anonymous_id"]
    assert nora["consent"]["email:newsletter"]["status"] == "granted"
    assert nora["traits"]["email"] == "nora@example.com"  # the server's value now wins over the browser's
    post(http, wk, "track", {"anonymousId": "n-1", "event": "Consent Updated", "messageId": "n3",
                             "timestamp": ts(3), "properties": {"channel": "email", "topic": "newsletter",
                                                                 "granted": False}})  # fmt: skip
    server.settle()
    assert profile(http, workspace, user_id="nora")["consent"]["email:newsletter"]["status"] == "denied"


def test_a_hostile_user_hash_is_a_claim_never_an_error(http, server, workspace, engine):
    """Any userHash a page sends is accepted with the event (good data is never lost) and vouches for nothing."""
    sk, wk = workspace["server_write_key"], workspace["write_key"]
    post(http, sk, "track", {"userId": "ida", "event": "Consent Updated", "messageId": "i0", "timestamp": ts(1),
                             "properties": {"channel": "sms", "status": "denied"}})  # fmt: skip
    hostile = [12345, {"h": 1}, ["x"], True, "é" * 3000, "0" * 64, " ", "\u202e" + "a" * 63]
    batch = [{"type": "track", "userId": "ida", "event": "Consent Updated", "messageId": f"i{n + 1}",
              "timestamp": ts(n + 2), "properties": {"channel": "sms", "status": "granted"},
              **({"userHash": h} if n % 2 else {"context": {"userHash": h}})}
             for n, h in enumerate(hostile)]  # fmt: skip
    post(http, wk, "batch", {"batch": batch})
    server.settle()
    ida = profile(http, workspace, user_id="ida")
    assert ida["consent"]["sms:*"]["status"] == "denied"
    assert [w["message_id"] for w in ida["consent_warnings"]] == [f"i{len(hostile)}"]
    for n in range(len(hostile)):
        payload = stored(engine, f"i{n + 1}")
        assert "userHash" not in payload and "userHash" not in payload.get("context", {})
        assert "userHashVerified" not in payload
