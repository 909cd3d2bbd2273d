"""A claim never adds the claimant's identifiers to a known customer (docs/identity.md, merge guards).

The attacks, with the public write key:
``identify {anonymousId: "mal", traits: {email: <Vera's>, phone: <Mallory's>}}``. Before the rule, Mallory's phone
joined Vera's known profile, so Vera's SMS (her name, her orders) went to Mallory.
And ``identify {userId: <Mallory's>, userHash: <valid for Mallory>, traits: {email: <Vera's>}}`` put Mallory's user id
on Vera's profile, so Mallory read Vera's inbox with her own hash (decision 0022: a hash proves the user id only).
The graph rule is property-tested on the pure graph; the attacks run over real HTTP on both engines.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chorus import workspaces
from chorus.identity.graph import TRUSTED, UNTRUSTED, VOUCHED, Graph, Link, links_of, replay
from chorus.identity.identifiers import IdentityConfig, kind_of
from tests.api.verify import user_hash
from tests.conftest import wait_until

CFG = IdentityConfig.from_settings(workspaces.default_settings())
POOL = [
    *(f"user_id:u{i}" for i in range(3)),
    *(f"email:e{i}@example.com" for i in range(3)),
    *(f"phone:+4479111234{i:02d}" for i in range(3)),
    *(f"anonymous_id:a{i}" for i in range(4)),
    *(f"device_token:t{i}" for i in range(2)),
]
ADDRESSES = ["email:new@example.com", "phone:+447911000333", "device_token:t-new"]


@st.composite
def graphs(draw):
    """Random events (a set of identifiers each, of any trust), as the links the resolver would store. A vouched
    event is anchored by the user id its hash proves, as in the resolver (a user id ranks first)."""
    links = []
    for n in range(draw(st.integers(1, 12))):
        idents = sorted(draw(st.sets(st.sampled_from(POOL), min_size=1, max_size=4)),
                        key=lambda i: (CFG.rank(kind_of(i)), i))  # fmt: skip
        key = (f"2026-01-01T10:{draw(st.integers(0, 30)):02d}:00.000000Z", f"m{n}")
        levels = [UNTRUSTED, TRUSTED, *([VOUCHED] if kind_of(idents[0]) == "user_id" else [])]
        links += links_of(idents[0], idents[1:], key, draw(st.sampled_from(levels)))
    return links


LATE = ("2026-01-02T00:00:00.000000Z", "claim")


@settings(max_examples=300, deadline=None)
@given(graphs(), st.data())
def test_a_late_untrusted_claim_never_adds_an_address_to_a_known_profile(links, data):
    g = replay(links, CFG)
    known = sorted(i for n in g.nodes.values() if g.known(n) for i in n.idents)
    if not known:
        return
    anchor = data.draw(st.sampled_from(known))
    address = data.draw(st.sampled_from(ADDRESSES))
    claim = [Link(LATE, anchor, anchor, UNTRUSTED), Link(LATE, anchor, address, UNTRUSTED),
             Link(LATE, anchor, "anonymous_id:claimant", UNTRUSTED)]  # fmt: skip
    if CFG.rank(kind_of(address)) < CFG.rank(kind_of(anchor)):  # the claimed address anchors the event then
        claim = links_of(address, [anchor, "anonymous_id:claimant"], LATE, UNTRUSTED)
    after = replay([*links, *claim], CFG)
    victim = after.nodes[after.owner[anchor]]
    assert address not in victim.idents
    assert victim.idents - {"anonymous_id:claimant"} == g.nodes[g.owner[anchor]].idents  # gains no identifier
    assert after.owner[address] != after.owner[anchor]  # the claimant's address is its own profile

    # the same claim from a trusted source is believed, and so is one vouched by the userHash of her own user id
    trusted = [Link(ln.key, ln.a, ln.b, TRUSTED) for ln in claim]
    after = replay([*links, *trusted], CFG)
    assert after.owner[address] == after.owner[anchor]
    if kind_of(anchor) == "user_id" and claim[0].a == anchor:
        after = replay([*links, *(Link(ln.key, ln.a, ln.b, VOUCHED) for ln in claim)], CFG)
        assert after.owner[address] == after.owner[anchor]


def claimed(ident: str) -> bool:
    """What a claim may not move into someone else's profile: whatever names a person or receives her messages."""
    return kind_of(ident) not in CFG.anonymous_kinds or bool(CFG.address_channels(kind_of(ident)))


@settings(max_examples=500, deadline=None)
@given(graphs())
def test_a_claim_never_moves_a_known_identifier_or_an_address_into_a_profile_known_before_it(links):
    """Untrusted and vouched links alike; the one exception is a vouched link adding to the profile of the user id
    its hash proves (her own new phone)."""
    g = Graph(CFG)
    at, before = None, {}
    for ln in sorted(set(links)):
        if ln.key != at:  # a new event (every event has its own key here): what was known before it
            at, before = ln.key, {pid: set(n.idents) for pid, n in g.nodes.items() if g.known(n)}
        g.apply(ln)
        if ln.trust == TRUSTED:
            continue
        for pid, idents in before.items():
            assert pid in g.nodes  # a known profile is never merged away by a claim
            gained = g.nodes[pid].idents - idents
            if ln.trust == VOUCHED and ln.a in idents:
                continue  # her own profile, proven by her hash
            assert not [i for i in gained if claimed(i)], (ln, idents, gained)


def test_a_signed_in_claimant_keeps_her_own_user_id_off_another_known_profile():
    """Mallory (signed in: her links are vouched) claims Vera's email, whether or not Mallory was seen before."""
    k0, k1, k2 = ("2026-01-01T09:00", "m0"), ("2026-01-01T10:00", "m1"), ("2026-01-01T10:01", "m2")
    vera = links_of("email:vera@example.com", ["anonymous_id:v"], k0, TRUSTED)  # known by her email only
    for mallory_before in ([], links_of("user_id:mal", ["anonymous_id:m"], k1, VOUCHED)):
        for level in (VOUCHED, UNTRUSTED):
            claim = links_of("user_id:mal", ["email:vera@example.com", "anonymous_id:m2"], k2, level)
            g = replay([*vera, *mallory_before, *claim], CFG)
            assert g.owner["user_id:mal"] != g.owner["email:vera@example.com"], (mallory_before, level)
            assert g.nodes[g.owner["email:vera@example.com"]].idents == {"email:vera@example.com", "anonymous_id:v"}
    # her own new phone, with her hash, does join her profile; without it, it does not
    g = replay([*vera, *links_of("user_id:mal", [], k1, VOUCHED),
                *links_of("user_id:mal", ["phone:+447911000111"], k2, VOUCHED)], CFG)  # fmt: skip
    assert g.owner["phone:+447911000111"] == g.owner["user_id:mal"]
    g = replay([*vera, *links_of("user_id:mal", [], k1, UNTRUSTED),
                *links_of("user_id:mal", ["phone:+447911000111"], k2, UNTRUSTED)], CFG)  # fmt: skip
    assert g.owner["phone:+447911000111"] != g.owner["user_id:mal"]


def test_a_sign_up_keeps_its_email_and_phone_and_a_later_claim_does_not_add_one():
    k1, k2, k3 = ("2026-01-01T10:00", "m1"), ("2026-01-01T10:01", "m2"), ("2026-01-01T10:02", "m3")
    links = [
        *links_of("anonymous_id:a1", [], k1, UNTRUSTED),  # browsing
        *links_of("user_id:u1", ["anonymous_id:a1", "email:ana@example.com", "phone:+442079460958"], k2, UNTRUSTED),
        *links_of("email:ana@example.com", ["phone:+447911000000", "anonymous_id:mal"], k3, UNTRUSTED),
    ]
    assert replay(links, CFG).partition() == {
        frozenset({"user_id:u1", "anonymous_id:a1", "email:ana@example.com", "phone:+442079460958",
                   "anonymous_id:mal"}),
        frozenset({"phone:+447911000000"}),
    }  # fmt: skip


# -- the attack over real HTTP -------------------------------------------------------------------------------------

DONE = ("sent", "skipped", "failed")
VERA_PHONE, MAL_PHONE = "+447911123456", "+447911000333"


@pytest.fixture
def shop(http, server, workspace, twilio, monkeypatch):
    """Vera, known from the brand's server (email, phone, name); SMS through the Twilio stand-in."""
    monkeypatch.setenv("CHORUS_TWILIO_TOKEN", twilio.auth_token)
    h = {"Authorization": f"Bearer {workspace['api_key']}"}
    conf = {"type": "twilio", "name": "twilio", "account_sid": twilio.account_sid, "from": "+15005550006",
            "auth_token_env": "CHORUS_TWILIO_TOKEN", "base_url": twilio.base_url}  # fmt: skip
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"sms": [conf]}}}, headers=h)
    assert r.status_code == 200, r.text
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""), json={
        "userId": "vera", "traits": {"email": "vera@example.com", "phone": VERA_PHONE, "first_name": "Vera"}})
    assert r.status_code == 200
    tpl = {"variants": {"sms": {"text": "Hi {{ traits.first_name }}, your order {{ data.order }} has shipped"}}}
    assert http.put("/api/templates/shipped", json=tpl, headers=h).status_code == 200
    server.settle()
    return h


def _profile(http, h, **q) -> dict:
    r = http.get("/api/profiles?" + urlencode(q), headers=h)  # "+" of a phone as %2B
    assert r.status_code == 200, r.text
    return r.json()


def test_a_browser_cannot_add_its_address_to_a_known_customer(http, server, workspace, twilio, shop):
    wk, h = (workspace["write_key"], ""), shop
    # her email with Mallory's phone, and her phone with Mallory's email
    for body in ({"anonymousId": "mal", "traits": {"email": "Vera@Example.com", "phone": MAL_PHONE}},
                 {"anonymousId": "mal2", "traits": {"phone": VERA_PHONE, "email": "mallory@example.com"}},
                 {"userId": "vera", "traits": {"phone": "+447911000999"}}):  # her user id without her userHash
        assert http.post("/v1/identify", auth=wk, json=body).status_code == 200
    server.settle()

    vera = _profile(http, h, user_id="vera")
    assert vera["identifiers"]["email"] == ["vera@example.com"]
    assert vera["identifiers"]["phone"] == [VERA_PHONE]
    assert vera["addresses"]["sms"] == [VERA_PHONE] and vera["addresses"]["email"] == ["vera@example.com"]
    assert vera["traits"].get("phone") in (None, VERA_PHONE)
    # the claimed addresses are profiles of their own, with none of her data
    mal = _profile(http, h, phone=MAL_PHONE)
    assert mal["id"] != vera["id"] and "vera@example.com" not in str(mal) and "Vera" not in str(mal)
    assert _profile(http, h, email="mallory@example.com")["id"] != vera["id"]

    # a message to Vera goes to her own phone only
    msg = {"to": {"user_id": "vera"}, "template": "shipped", "channel": "sms", "data": {"order": "A-17"}}
    r = http.post("/api/messages", json=msg, headers={**h, "Idempotency-Key": "v1"})
    assert r.status_code == 201, r.text
    mid = r.json()["id"]
    done = wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in DONE and m)
    assert done["status"] == "sent", done
    assert [s["To"] for s in twilio.sent] == [VERA_PHONE]
    assert twilio.sent[0]["Body"] == "Hi Vera, your order A-17 has shipped"


def test_a_signed_in_customer_or_the_server_still_adds_a_new_phone(http, server, workspace, shop):
    wk, h = (workspace["write_key"], ""), shop
    hashed = {"userId": "vera", "userHash": user_hash(http, h, "vera"), "traits": {"phone": "+447911000111"}}
    assert http.post("/v1/identify", auth=wk, json=hashed).status_code == 200
    assert http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                     json={"userId": "vera", "traits": {"email": "vera@work.example"}}).status_code == 200  # fmt: skip
    server.settle()
    vera = _profile(http, h, user_id="vera")
    assert sorted(vera["identifiers"]["phone"]) == sorted([VERA_PHONE, "+447911000111"])
    assert sorted(vera["identifiers"]["email"]) == ["vera@example.com", "vera@work.example"]


def test_an_anonymous_visitor_who_signs_up_gets_her_email_and_phone(http, server, workspace, shop):
    wk, h = (workspace["write_key"], ""), shop
    assert http.post("/v1/page", auth=wk, json={"anonymousId": "v-1", "name": "Home"}).status_code == 200
    server.settle()
    body = {"anonymousId": "v-1", "userId": "noor", "traits": {"email": "noor@example.com", "phone": "+447911000222"}}
    assert http.post("/v1/identify", auth=wk, json=body).status_code == 200
    server.settle()
    noor = _profile(http, h, user_id="noor")
    assert noor["identifiers"]["email"] == ["noor@example.com"]
    assert noor["identifiers"]["phone"] == ["+447911000222"]
    assert noor["identifiers"]["anonymous_id"] == ["v-1"]
