"""Property: the final profiles do not depend on the order in which the same events arrive.

The same events are resolved once in timestamp order and once shuffled into random batches (so links arrive
out of order and components are replayed). Partitions of identifiers, traits, channel activity, consent and
refused consent grants must be equal, and equal to the pure replay of the links (:func:`chorus.identity.graph.replay`).
Events carry addresses (emails, phones, push tokens) from trusted, untrusted and vouched (valid userHash) sources,
so the rule that a claim never moves an address into a known profile is covered too; some are received hours after
their timestamp (a claim's links sort at its receipt, decision 0022).
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus import workspaces
from chorus.collect.messages import normalise
from chorus.identity.graph import links_of, replay
from chorus.identity.identifiers import IdentityConfig, extract
from chorus.identity.resolver import link_key, trust_of
from chorus.workspaces.verification import VOUCHED
from tests.identity.helpers import T0, partition, resolve, send, states_by_group

USERS = ["u1", "u2", "u3"]
ANONS = ["a1", "a2", "a3", "a4"]
EMAILS = ["e1@example.com", "e2@example.com", "e3@example.com"]
PHONES = ["+447911123451", "+447911123452"]
TOKENS = ["tok-1", "tok-2"]


# before every timestamp (the event is on time), or late: within the timestamps, so that claims reorder
RECEIVED = st.sampled_from([T0, T0, T0 + timedelta(hours=10, minutes=7), T0 + timedelta(hours=10, minutes=15)])


@st.composite
def event(draw, n):
    user = draw(st.sampled_from([None, *USERS]))
    anon = draw(st.sampled_from([None, *ANONS])) if user else draw(st.sampled_from(ANONS))
    email = draw(st.sampled_from([None, None, *EMAILS]))
    traits = {}
    if email:
        traits["email"] = email
    phone = draw(st.sampled_from([None, None, *PHONES]))
    if phone:
        traits["phone"] = phone
    if draw(st.booleans()):
        traits["name"] = draw(st.sampled_from(["Ana", "Bo", ""]))
    if draw(st.booleans()):
        traits["visits"] = draw(st.integers(0, 5))
    if user and draw(st.integers(0, 5)) == 0:
        prev = draw(st.sampled_from([*USERS, *ANONS]))
        msg = {"type": "alias", "userId": user, "previousId": prev, "messageId": f"m{n}",
               "timestamp": f"2026-01-01T10:{draw(st.integers(0, 20)):02d}:00Z"}  # fmt: skip
        return msg, draw(st.booleans()), draw(RECEIVED)
    msg = {
        "type": draw(st.sampled_from(["identify", "track", "page"])),
        "messageId": f"m{n}",
        "timestamp": f"2026-01-01T10:{draw(st.integers(0, 20)):02d}:00Z",
        "context": {"channel": draw(st.sampled_from(["web", "app", "store"]))},
    }
    if msg["type"] == "track":
        msg["event"] = "E"
        msg["context"]["traits"] = traits
    elif msg["type"] == "identify":
        msg["traits"] = traits
        if draw(st.integers(0, 2)) == 0:  # consent, from trusted and untrusted sources (decision 0014)
            msg["traits"] = {**traits, "consent": {"email": {"*": draw(st.sampled_from(["granted", "denied"]))}}}
    else:
        msg["context"]["traits"] = traits
    token = draw(st.sampled_from([None, None, *TOKENS]))
    if token:
        msg["context"]["device"] = {"token": token}
    if user:
        msg["userId"] = user
        if draw(st.integers(0, 3)) == 0:  # as sealed by the tracking API for a valid userHash (untrusted sources)
            msg[VOUCHED] = True
    if anon:
        msg["anonymousId"] = anon
    return msg, draw(st.booleans()), draw(RECEIVED)


@st.composite
def scenario(draw):
    n = draw(st.integers(1, 14))
    evs = [draw(event(i)) for i in range(n)]
    order = draw(st.permutations(list(range(n))))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, n - 1)), max_size=4)))
    return evs, order, cuts


def _run(engine, evs, order, cuts, extra_settings=None):
    ws = workspaces.create(engine, "prop-" + uuid.uuid4().hex[:8])["id"]
    workspaces.update_settings(engine, ws, {"trait_policies": {"visits": "sum"}, **(extra_settings or {})})
    bounds = [0, *cuts, len(order)]
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        chunk = [evs[i] for i in order[lo:hi]]
        for trusted, received in sorted({(t, r) for _, t, r in chunk}):
            part = [m for m, t, r in chunk if t is trusted and r == received]
            send(engine, ws, part, trusted=trusted, received_at=received)
        resolve(engine)
    return partition(engine, ws), states_by_group(engine, ws)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario())
def test_profiles_do_not_depend_on_arrival_order(engine, data):
    check_order_independence(engine, data)


def check_order_independence(engine, data, extra_settings=None):
    evs, order, cuts = data
    in_time = sorted(range(len(evs)), key=lambda i: (evs[i][0]["timestamp"], evs[i][0]["messageId"]))
    part_a, states_a = _run(engine, evs, in_time, [], extra_settings)
    part_b, states_b = _run(engine, evs, order, cuts, extra_settings)
    assert part_a == part_b
    assert states_a == states_b

    # and both equal the reference semantics: replaying the links in key order
    cfg = IdentityConfig.from_settings({**workspaces.default_settings(), **(extra_settings or {})})
    links = []
    for msg, trusted, received in evs:
        norm = normalise(msg, received_at=received, source_kind="server" if trusted else "client")
        ext = extract(norm.payload, cfg, trusted)
        key = link_key(norm.payload, trusted)
        links += links_of(ext.anchor, ext.others, key, trust_of(norm.payload, trusted))
    earliest = {}
    for ln in links:
        k = (ln.a, ln.b, ln.trust)
        if k not in earliest or ln.key < earliest[k].key:
            earliest[k] = ln
    assert replay(earliest.values(), cfg).partition() == part_a
