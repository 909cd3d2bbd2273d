"""The public write key reads nobody's data: a hostile browser, over real HTTP on both engines.

An anonymous browser claims a known customer's email, phone or loyalty id (the merge into her profile is the
normal "visitor becomes customer" path), then tries to read her inbox, mark it read, follow its stream, attach its
own browser to her pushes and read her traits. It sees only what was addressed to its own anonymous id; the real
customer, with the user hash her brand's server computed, sees her inbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from chorus.errors import Unauthorized
from chorus.workspaces import verification
from chorus.workspaces.verification import Forbidden, addressed_to, claim
from tests.api.verify import user_hash
from tests.conftest import _ASGIThread, wait_until
from tests.standins.pushservice import PushService

HI = 'Hi {{ traits.first_name | default: "there" }}'
TEMPLATE = {"kind": "transactional", "topic": "account", "variants": {
    "in_app": {"title": HI, "body": 'Your card {{ traits.loyalty_id | default: "none" }} has 120 points'},
    "push": {"title": HI, "body": "Your order shipped", "url": "https://shop.example/o"}}}
CLAIMS = {
    "email": {"traits": {"email": "Vera@Example.com"}},
    "phone": {"traits": {"phone": "+44 7911 123456"}},
    "loyalty_id": {"context": {"externalIds": [{"type": "loyalty_id", "id": "L-77", "encoding": "none"}]}},
}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def send(http, h, key, to, channel="in_app"):
    r = http.post("/api/messages", json={"to": to, "template": "account", "channel": channel},
                  headers={**h, "Idempotency-Key": key})  # fmt: skip
    assert r.status_code == 201, r.text
    return r.json()


def sent(http, h, mid):
    done = ("sent", "skipped", "failed")
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in done and m)


@pytest.fixture
def vera(http, server, workspace):
    """Vera, known from the brand's server; one in-app message to her; a visitor who got one message of its own."""
    h = bearer(workspace)
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""), json={
        "userId": "vera", "traits": {"email": "vera@example.com", "phone": "+447911123456", "loyalty_id": "L-77",
                                     "first_name": "Vera"}})  # fmt: skip
    assert r.status_code == 200
    r = http.post("/v1/page", auth=(workspace["write_key"], ""), json={"anonymousId": "mal", "name": "Home"})
    assert r.status_code == 200
    server.settle()
    assert http.put("/api/templates/account", json=TEMPLATE, headers=h).status_code == 200
    hers = send(http, h, "v1", {"user_id": "vera"})
    visitor = send(http, h, "a1", {"anonymous_id": "mal"})  # while "mal" is an anonymous visitor
    assert sent(http, h, hers["id"])["status"] == "sent"
    assert sent(http, h, visitor["id"])["status"] == "sent"
    return {"h": h, "hers": hers["id"], "visitor": visitor["id"]}


@pytest.mark.parametrize("claimed", list(CLAIMS))
def test_a_browser_claiming_a_customer_reads_nothing_of_hers(http, server, workspace, vera, claimed):
    wk, h = (workspace["write_key"], ""), vera["h"]
    r = http.post("/v1/identify", auth=wk, json={"anonymousId": "mal", **CLAIMS[claimed]})
    assert r.status_code == 200
    server.settle()
    prof = http.get("/api/profiles", params={"user_id": "vera"}, headers=h).json()
    assert "mal" in prof["identifiers"]["anonymous_id"]  # the claim joined her profile: the dangerous case

    # the anonymous id sees its own message only: not hers, not her name, not her loyalty number
    r = http.get("/v1/inbox", params={"anonymousId": "mal"}, auth=wk)
    assert r.status_code == 200 and [m["id"] for m in r.json()["messages"]] == [vera["visitor"]]
    assert "Vera" not in r.text and "L-77" not in r.text
    r = http.post(f"/v1/inbox/{vera['hers']}/read", json={"anonymousId": "mal"}, auth=wk)
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    assert "opened" not in [s["status"] for s in http.get(f"/api/messages/{vera['hers']}", headers=h).json()["history"]]
    assert http.post(f"/v1/inbox/{vera['visitor']}/read", json={"anonymousId": "mal"}, auth=wk).status_code == 200

    # her user id without her hash: refused, with the reason and the field
    r = http.get("/v1/inbox", params={"userId": "vera"}, auth=wk)
    assert r.status_code == 401 and r.json()["field"] == "userHash" and "userHash is missing" in r.json()["message"]
    for wrong in ("0" * 64, user_hash(http, h, "mal"), "é", "x" * 5000):
        r = http.get("/v1/inbox", params={"userId": "vera", "userHash": wrong}, auth=wk)
        assert r.status_code == 403 and r.json()["field"] == "userHash", (wrong, r.text)

    # Vera herself, with the hash her brand's server computed, reads her inbox
    r = http.get("/v1/inbox", params={"userId": "vera", "userHash": user_hash(http, h, "vera")}, auth=wk)
    assert r.status_code == 200 and vera["hers"] in [m["id"] for m in r.json()["messages"]]
    assert "Hi Vera" in r.text


@pytest.fixture
def zoe(http, server, workspace):
    """Zoe, known by her email only (a store's CRM, sent by the brand's server), with an in-app message."""
    h = bearer(workspace)
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""), json={
        "anonymousId": "crm-zoe", "traits": {"email": "zoe@example.com", "first_name": "Zoe", "loyalty_id": "L-99"}})
    assert r.status_code == 200
    server.settle()
    assert http.put("/api/templates/account", json=TEMPLATE, headers=h).status_code == 200
    hers = send(http, h, "z1", {"email": "zoe@example.com"})
    assert sent(http, h, hers["id"])["status"] == "sent"
    return {"h": h, "hers": hers["id"]}


# Mallory has an account of her own ("mallory"), so the brand's server gives her browser a valid userHash for it.
MALLORY_CLAIMS = {
    "signed in, first event": [{"hash": True}],
    "signed in, seen before": [{"hash": True, "traits": {}}, {"hash": True}],
    "user id without a hash, hash later": [{"hash": False}],
    "backdated to 2000": [{"hash": True, "timestamp": "2000-01-02T00:00:00Z"}],
}


@pytest.mark.parametrize("how", list(MALLORY_CLAIMS))
def test_a_user_hash_proves_the_user_id_not_the_email_next_to_it(http, server, workspace, zoe, how):
    """A userHash proves who sends the event, not that the email in it is hers (decision 0022): Mallory's user id
    never joins Zoe's profile, so Mallory's own valid hash reads none of Zoe's messages."""
    wk, h = (workspace["write_key"], ""), zoe["h"]
    mallory_hash = user_hash(http, h, "mallory")
    for step in MALLORY_CLAIMS[how]:
        body = {"userId": "mallory", "traits": step.get("traits", {"email": "Zoe@Example.com"})}
        if step["hash"]:
            body["userHash"] = mallory_hash
        if "timestamp" in step:
            body["timestamp"] = step["timestamp"]
        assert http.post("/v1/identify", auth=wk, json=body).status_code == 200
        server.settle()

    z = http.get("/api/profiles", params={"email": "zoe@example.com"}, headers=h).json()
    assert z["identifiers"] == {"anonymous_id": ["crm-zoe"], "email": ["zoe@example.com"], "loyalty_id": ["L-99"]}
    m = http.get("/api/profiles", params={"user_id": "mallory"}, headers=h).json()
    assert m["id"] != z["id"] and "zoe@example.com" not in str(m) and "Zoe" not in str(m)
    r = http.get("/v1/inbox", params={"userId": "mallory", "userHash": mallory_hash}, auth=wk)
    assert r.status_code == 200 and r.json()["messages"] == []
    assert "Zoe" not in r.text and "L-99" not in r.text


def test_a_server_or_an_import_still_links_a_sign_up_to_a_customer_known_by_email(http, server, workspace, zoe):
    """What a brand does so a new account joins the customer its store already knows: say it from the server."""
    wk, h = (workspace["write_key"], ""), zoe["h"]
    zoe_hash = user_hash(http, h, "zoe")
    body = {"userId": "zoe", "userHash": zoe_hash, "anonymousId": "zoe-phone", "traits": {"email": "zoe@example.com"}}
    assert http.post("/v1/identify", auth=wk, json=body).status_code == 200
    server.settle()
    assert http.get("/v1/inbox", params={"userId": "zoe", "userHash": zoe_hash}, auth=wk).json()["messages"] == []
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                  json={"userId": "zoe", "traits": {"email": "zoe@example.com"}})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    z = http.get("/api/profiles", params={"user_id": "zoe"}, headers=h).json()
    assert z["identifiers"]["email"] == ["zoe@example.com"] and "zoe-phone" in z["identifiers"]["anonymous_id"]
    r = http.get("/v1/inbox", params={"userId": "zoe", "userHash": zoe_hash}, auth=wk)
    assert [m["id"] for m in r.json()["messages"]] == [zoe["hers"]] and "Hi Zoe" in r.text


def test_the_stream_of_an_anonymous_id_carries_none_of_her_messages(http, server, workspace, vera):
    wk, h = (workspace["write_key"], ""), vera["h"]
    http.post("/v1/identify", auth=wk, json={"anonymousId": "mal", **CLAIMS["email"]})
    server.settle()
    got: list[bytes] = []
    ready = threading.Event()
    stop = threading.Event()

    def listen(params):
        try:
            with httpx.stream("GET", f"{server.base_url}/v1/inbox/stream", params=params, auth=wk, timeout=30) as r:
                for line in r.iter_lines():
                    ready.set()
                    if line.startswith("data: "):
                        got.append(line.encode())
                    if stop.is_set():
                        return
        except httpx.HTTPError:  # the server stops at the end of the test while the stream is idle
            pass

    t = threading.Thread(target=listen, args=({"anonymousId": "mal"},), daemon=True)
    t.start()
    assert ready.wait(10)
    m = send(http, h, "v2", {"user_id": "vera"})
    assert sent(http, h, m["id"])["status"] == "sent"
    time.sleep(2.5)  # the stream polls every second: two polls after the message became visible
    stop.set()
    assert got == []
    r = httpx.get(f"{server.base_url}/v1/inbox/stream", params={"userId": "vera"}, auth=wk, timeout=10)
    assert r.status_code == 401 and r.json()["field"] == "userHash"  # refused before the stream starts


@pytest.fixture
def pushes(http, workspace, vera, monkeypatch):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    monkeypatch.setenv("CHORUS_VAPID_KEY", pem.decode())
    monkeypatch.setenv("CHORUS_ALLOW_LOOPBACK_PUSH", "1")  # the stand-in push service listens on 127.0.0.1
    service = PushService()
    with _ASGIThread(service.app) as srv:
        service.base_url = srv.base_url
        conf = {"type": "webpush", "vapid_private_key_env": "CHORUS_VAPID_KEY", "subject": "mailto:ops@shop.example"}
        patch = {"messaging": {"providers": {"push": [conf]}}}
        r = http.patch("/api/workspace/settings", json=patch, headers=vera["h"])
        assert r.status_code == 200, r.text
        yield service


def test_a_claimed_browser_gets_none_of_her_pushes(http, server, workspace, vera, pushes):
    wk, h = (workspace["write_key"], ""), vera["h"]
    mallory = pushes.browser(pushes.base_url, "mallory")
    # subscribed while anonymous, then the claim: the browser's anonymous id is now on Vera's profile
    r = http.post("/v1/push/subscriptions", auth=wk, json={"anonymousId": "mal", "subscription": mallory.subscription})
    assert r.status_code == 201
    http.post("/v1/identify", auth=wk, json={"anonymousId": "mal", **CLAIMS["phone"]})
    server.settle()
    m = send(http, h, "p1", {"user_id": "vera"}, channel="push")
    assert m["status"] == "skipped" and "no reachable address" in orjson.dumps(m["choice"]).decode()
    # attaching the browser to her user id needs her hash
    body = {"userId": "vera", "subscription": mallory.subscription}
    assert http.post("/v1/push/subscriptions", auth=wk, json=body).status_code == 401
    assert http.post("/v1/push/subscriptions", auth=wk, json={**body, "userHash": "ab" * 32}).status_code == 403
    assert http.post("/v1/push/subscriptions", auth=wk, json={**body, "userHash": 7}).status_code == 403
    # her own browser, registered with her hash, gets her push; the claimant's never gets anything
    hers = pushes.browser(pushes.base_url, "vera")
    r = http.post("/v1/push/subscriptions", auth=wk,
                  json={"userId": "vera", "userHash": user_hash(http, h, "vera"), "subscription": hers.subscription})
    assert r.status_code == 201
    m = send(http, h, "p2", {"user_id": "vera"}, channel="push")
    assert m["address"] == hers.subscription["endpoint"] and sent(http, h, m["id"])["status"] == "sent"
    assert [p["sid"] for p in pushes.received] == ["vera"] and pushes.received[0]["payload"]["title"] == "Hi Vera"
    # guessing her endpoint to forget it finds nothing
    r = http.request("DELETE", "/v1/push/subscriptions", auth=wk,
                     json={"subscription": {"endpoint": f"{pushes.base_url}/push/guess"}})  # fmt: skip
    assert r.status_code == 404


def test_the_identity_secret_is_for_admins_and_rotates(http, server, db_url, workspace, vera):
    wk, h = (workspace["write_key"], ""), vera["h"]
    assert http.get("/api/workspace/identity-secret").status_code == 401
    assert http.get("/api/workspace/identity-secret", headers={"Authorization": f"Bearer {wk[0]}"}).status_code == 401
    first = http.get("/api/workspace/identity-secret", headers=h).json()
    assert first["algorithm"] == "hex(HMAC-SHA256(identity_secret, userId))" and first["required"] is True
    old = user_hash(http, h, "vera")
    cli = [sys.executable, "-m", "chorus.cli", "workspace", "identity-secret", workspace["name"], "--db", db_url]
    run = subprocess.run(cli, capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert run.returncode == 0 and run.stdout.strip() == first["identity_secret"], run.stderr
    rotated = http.post("/api/workspace/identity-secret/rotate", headers=h).json()["identity_secret"]
    assert rotated != first["identity_secret"]
    assert http.get("/v1/inbox", params={"userId": "vera", "userHash": old}, auth=wk).status_code == 403
    assert http.get("/v1/inbox", params={"userId": "vera", "userHash": user_hash(http, h, "vera")},
                    auth=wk).status_code == 200  # fmt: skip
    run = subprocess.run([*cli, "--rotate"], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert run.returncode == 0 and run.stdout.strip() not in ("", rotated)
    assert http.get("/api/workspace/identity-secret", headers=h).json()["identity_secret"] == run.stdout.strip()
    # nothing the write key reaches ever shows it
    for path in (f"/v1/projects/{wk[0]}/settings", "/v1/push/vapid-key"):
        assert run.stdout.strip() not in http.get(path, auth=wk).text


def test_hostile_person_fields_get_a_clear_400(http, server, workspace, vera):
    wk = (workspace["write_key"], "")
    cases = [
        ({"userId": "v\x00"}, "userId"),
        ({"anonymousId": "a" * 201}, "anonymousId"),
        ({"userId": "vera", "anonymousId": "mal"}, "userId"),
        ({}, "userId"),
    ]
    for params, field in cases:
        r = http.get("/v1/inbox", params=params, auth=wk)
        assert r.status_code == 400 and r.json()["field"] == field, (params, r.text)
    for body, field in ((b"[1]", "body"), (b'{"anonymousId": "\\ud800"}', "body.anonymousId"), (b"{" * 100, "body")):
        r = http.post("/v1/push/subscriptions", auth=wk, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    r = http.post("/v1/push/subscriptions", auth=wk, json={"anonymousId": True, "subscription": {}})
    assert r.status_code == 400 and r.json()["field"] == "anonymousId"
    r = http.post("/v1/inbox/%00/read", auth=wk, json={"anonymousId": "mal"})
    assert r.status_code == 400 and r.json()["field"] == "message_id"


# -- the rule itself, over arbitrary ids, hashes and secrets ----------------------------------------------------
ids = st.text(min_size=1, max_size=60).filter(lambda s: "\x00" not in s)


@given(secret=st.text(min_size=1, max_size=40), uid=ids, other=st.text(max_size=80))
def test_only_the_true_hash_proves_a_user_id(secret, uid, other):
    try:
        uid.encode()
    except UnicodeEncodeError:
        return  # lone surrogates are refused before this (safejson); checked in the HTTP test above
    good = verification.user_hash(secret, uid)
    assert claim(uid, None, good, secret=lambda: secret, verify=True).ident == f"user_id:{uid}"
    if other.strip().lower() != good:
        with pytest.raises(Forbidden) as exc:
            claim(uid, None, other or "-", secret=lambda: secret, verify=True)
        assert exc.value.status == 403
    with pytest.raises(Unauthorized):
        claim(uid, None, None, secret=lambda: secret, verify=True)
    assert claim(uid, None, None, secret=lambda: secret, verify=False).anonymous is False


@given(anon=ids, recorded=st.lists(ids, max_size=5))
def test_an_anonymous_caller_sees_only_what_names_it(anon, recorded):
    try:
        anon.encode()
    except UnicodeEncodeError:
        return
    c = claim(None, anon, "anything", secret=lambda: "never read", verify=True)
    assert c.anonymous and c.ident == f"anonymous_id:{anon}"
    assert addressed_to(c, {"anonymous_ids": recorded}) == (anon in recorded)
    assert addressed_to(c, {}) is False and addressed_to(c, None) is False
    assert verification.anonymous_recipient({"known": True, "identifiers": {"anonymous_id": [anon]}}, "in_app") == {}
    assert verification.anonymous_recipient({"known": False, "identifiers": {"anonymous_id": [anon]}}, "in_app") == {
        "anonymous_ids": [anon]}
