"""``identifier_limits``: a profile holds at most n values of a limited kind (1,000 anonymous ids by default).

A flood of claims (the public write key sending a customer's user id with a new anonymous id each time) leaves her
profile with n anonymous ids and stores at most twice that many links from her user id; the graph refuses the rest,
and they are dropped (no link, no profile), so a replay of her profile reads a bounded component whatever was
sent. The order-independence property runs with limits its few identifiers can reach but its claims cannot pass
twice over (4 anonymous ids for a limit of 2): past that, which claims keep a link depends on arrival."""

from __future__ import annotations

import logging
import re
import uuid

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from chorus import workspaces
from chorus.identity.graph import TRUSTED, UNTRUSTED, Link, replay
from chorus.identity.identifiers import IdentityConfig
from chorus.profiles import privacy
from chorus.store.tables import events, identifiers, identity_links
from tests.identity.helpers import T0, profile_of, resolve, send
from tests.identity.test_order_independence import check_order_independence, scenario

LIMITED = IdentityConfig(limits={"anonymous_id": 2})


def key(minute: int) -> tuple[str, str]:
    return (f"2026-01-01T10:{minute:02d}:00.000000Z", f"m{minute}")


def test_a_newcomer_past_the_limit_gets_a_profile_of_its_own_whoever_sends_it():
    for trust in (UNTRUSTED, TRUSTED):
        g = replay([Link(key(i), "user_id:u", f"anonymous_id:a{i}", trust) for i in range(1, 5)], LIMITED)
        assert g.partition() == frozenset({
            frozenset({"user_id:u", "anonymous_id:a1", "anonymous_id:a2"}),
            frozenset({"anonymous_id:a3"}), frozenset({"anonymous_id:a4"}),
        })  # fmt: skip
        assert [why for _, why in g.refusals] == ["more than 2 anonymous_id on one profile"] * 2


def test_the_earliest_values_keep_their_place_in_any_arrival_order(engine):
    """Through the resolver: one event a batch, latest first, gives what the events in time order give."""
    evs = [({"type": "track", "event": "E", "userId": "u", "anonymousId": f"a{i}", "messageId": f"m{i}",
             "timestamp": f"2026-01-01T10:0{i}:00Z"}, True, T0) for i in range(1, 5)]  # fmt: skip
    check_order_independence(engine, (evs, [3, 2, 1, 0], [1, 2, 3]), {"identifier_limits": {"anonymous_id": 2}})


def test_a_trusted_rename_merges_past_a_limit():
    links = [
        Link(key(1), "user_id:old", "anonymous_id:a1", TRUSTED),
        Link(key(2), "user_id:new", "anonymous_id:a2", TRUSTED),
        Link(key(3), "user_id:new", "user_id:old", TRUSTED),  # alias: the customer's id changed
    ]
    g = replay(links, IdentityConfig(limits={"anonymous_id": 1}))
    assert g.partition() == frozenset({frozenset({"user_id:old", "user_id:new", "anonymous_id:a1", "anonymous_id:a2"})})


def test_two_profiles_whose_union_would_pass_the_limit_stay_apart():
    links = [
        Link(key(1), "user_id:u", "anonymous_id:a1", TRUSTED),
        Link(key(2), "anonymous_id:a2", "anonymous_id:a3", TRUSTED),  # an anonymous profile holding two
        Link(key(3), "user_id:u", "anonymous_id:a2", TRUSTED),  # would give her three
        Link(key(4), "user_id:u", "email:u@example.com", TRUSTED),  # other kinds still join her
    ]
    g = replay(links, LIMITED)
    assert g.partition() == frozenset({
        frozenset({"user_id:u", "anonymous_id:a1", "email:u@example.com"}),
        frozenset({"anonymous_id:a2", "anonymous_id:a3"}),
    })  # fmt: skip
    assert not g.merges


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario())
def test_limited_profiles_do_not_depend_on_arrival_order(engine, data):
    """The order-independence property, with limits small enough for its few identifiers to reach them."""
    check_order_independence(engine, data, {"identifier_limits": {"anonymous_id": 2, "email": 2, "device_token": 1}})


def _links_from(engine, ws: str, a: str) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        q = sa.select(identity_links.c.b, identity_links.c.trust).where(
            identity_links.c.workspace_id == ws, identity_links.c.a == a
        )
        return sorted(conn.execute(q).all())


def _anonymous_ids_of(engine, ws: str, pid: str) -> set[str]:
    with engine.connect() as conn:
        q = sa.select(identifiers.c.ident).where(identifiers.c.workspace_id == ws, identifiers.c.profile_id == pid)
        return {i for i in conn.execute(q).scalars() if i.startswith("anonymous_id:")}


def _idents(engine, ws: str) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(identifiers.c.ident).where(identifiers.c.workspace_id == ws)).scalars())


def claim(user: str, anon: str, n: int, minute: int = 0) -> dict:
    return {"type": "track", "event": "Viewed", "userId": user, "anonymousId": anon,
            "messageId": f"c-{user}-{n:02d}", "timestamp": f"2026-01-01T1{minute}:{n:02d}:00Z"}  # fmt: skip


def test_a_flood_of_claims_stays_bounded_and_her_events_stay_hers(engine, caplog):
    ws = workspaces.create(engine, "flood-" + uuid.uuid4().hex[:8])["id"]
    workspaces.update_settings(engine, ws, {"identifier_limits": {"anonymous_id": 5}})
    send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "v0", "timestamp": "2026-01-01T09:00:00Z",
                       "traits": {"email": "vera@example.com"}}])  # fmt: skip
    resolve(engine)
    for lo, hi in ((0, 3), (3, 8), (8, 30), (30, 40)):  # some batches alone, one of 22 at once
        send(engine, ws, [claim("vera", f"x{i:02d}", i) for i in range(lo, hi)], trusted=False)
        resolve(engine)

    vera = profile_of(engine, ws, "user_id:vera")
    assert _anonymous_ids_of(engine, ws, vera) == {f"anonymous_id:x{i:02d}" for i in range(5)}
    pairs = [b for b, t in _links_from(engine, ws, "user_id:vera") if b.startswith("anonymous_id:")]
    # five taken, five refused and stored (twice the limit), the rest dropped: no link, no profile
    assert pairs == [f"anonymous_id:x{i:02d}" for i in range(10)]
    idents = _idents(engine, ws)
    assert {f"anonymous_id:x{i:02d}" for i in range(10)} <= idents
    assert not {f"anonymous_id:x{i:02d}" for i in range(10, 40)} & idents
    for i in range(10, 40):
        assert _links_from(engine, ws, f"anonymous_id:x{i:02d}") == []
    with engine.connect() as conn:
        owners = conn.execute(
            sa.select(events.c.profile_id).where(events.c.workspace_id == ws, events.c.message_id.like("c-%"))
        ).scalars().all()
    assert len(owners) == 40 and set(owners) == {vera}  # every event counts for the user id it names

    # a store purchase imported with an earlier date replays her component: it reads her links, not the flood's
    caplog.set_level(logging.INFO, logger="chorus.identity")
    send(engine, ws, [{"type": "track", "event": "Order Completed", "userId": "vera", "anonymousId": "store-1",
                       "messageId": "s1", "timestamp": "2026-01-01T09:30:00Z"}])  # fmt: skip
    resolve(engine)
    replays = [re.search(r"of (\d+) identifiers, (\d+) links", r.getMessage()) for r in caplog.records]
    sizes = [(int(m[1]), int(m[2])) for m in replays if m]
    assert sizes and max(n for _, n in sizes) <= 14, sizes  # her lone links, email, store-1, 10 claims
    assert profile_of(engine, ws, "user_id:vera") == vera
    # the trusted store id came first by key: it takes a place, and the latest claim kept loses its own
    kept = {"anonymous_id:store-1", *(f"anonymous_id:x{i:02d}" for i in range(4))}
    assert _anonymous_ids_of(engine, ws, vera) == kept


def test_claims_refused_for_other_reasons_do_not_use_up_her_room(engine):
    """Review: claims the guards refuse (her user id with anonymous ids of other known people) counted towards the
    cap, so a flood of them made the cap drop her own next device, which the graph would take."""
    ws = workspaces.create(engine, "room-" + uuid.uuid4().hex[:8])["id"]
    workspaces.update_settings(engine, ws, {"identifier_limits": {"anonymous_id": 2}})
    send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "v0", "timestamp": "2026-01-01T09:00:00Z"}])
    send(engine, ws, [{"type": "identify", "userId": f"mal{i}", "anonymousId": f"y{i}", "messageId": f"m{i}",
                       "timestamp": "2026-01-01T09:01:00Z"} for i in range(6)])  # fmt: skip
    resolve(engine)
    send(engine, ws, [claim("vera", f"y{i}", i) for i in range(6)], trusted=False)  # both known: refused
    resolve(engine)
    assert _anonymous_ids_of(engine, ws, profile_of(engine, ws, "user_id:vera")) == set()
    send(engine, ws, [claim("vera", "her-phone", 30)], trusted=False)  # her own new device, from her browser
    resolve(engine)
    assert profile_of(engine, ws, "anonymous_id:her-phone") == profile_of(engine, ws, "user_id:vera")


def test_an_erasure_leaves_none_of_the_anonymous_ids_sent_with_her_user_id(engine):
    """Review: claims past the cap were kept as identifiers alone, which nothing tied to her, and outlived her."""
    ws = workspaces.create(engine, "erase-" + uuid.uuid4().hex[:8])["id"]
    workspaces.update_settings(engine, ws, {"identifier_limits": {"anonymous_id": 2}})
    send(engine, ws, [{"type": "identify", "userId": "vera", "messageId": "v0", "timestamp": "2026-01-01T09:00:00Z",
                       "traits": {"email": "vera@example.com"}}])  # fmt: skip
    resolve(engine)
    send(engine, ws, [claim("vera", f"x{i}", i) for i in range(8)], trusted=False)
    resolve(engine)
    assert "anonymous_id:x3" in _idents(engine, ws) and "anonymous_id:x7" not in _idents(engine, ws)
    vera = profile_of(engine, ws, "user_id:vera")
    with engine.begin() as conn:
        privacy.erase(conn, ws, vera)
    assert not {i for i in _idents(engine, ws) if i.startswith("anonymous_id:x")}


def test_trusted_links_are_stored_but_the_profile_keeps_its_limit(engine):
    ws = workspaces.create(engine, "trusted-" + uuid.uuid4().hex[:8])["id"]
    workspaces.update_settings(engine, ws, {"identifier_limits": {"anonymous_id": 3}})
    send(engine, ws, [
        {"type": "track", "event": "E", "userId": "u", "anonymousId": f"d{i}", "messageId": f"t{i}",
         "timestamp": f"2026-01-01T10:0{i}:00Z"}
        for i in range(8)
    ])  # fmt: skip
    resolve(engine)
    u = profile_of(engine, ws, "user_id:u")
    assert _anonymous_ids_of(engine, ws, u) == {"anonymous_id:d0", "anonymous_id:d1", "anonymous_id:d2"}
    assert len([b for b, _ in _links_from(engine, ws, "user_id:u") if b.startswith("anonymous_id:")]) == 8
