"""The consent and address rule for unvouched claims (decision 0014), as properties of the pure fold.

Events are vouched (a trusted source, or a user hash) or claims. Whatever the events and their arrival order:
the fold is order independent and a split history merged back equals the whole; a claimed grant never undoes an
opt-out (when the newest denial is newer than every vouched grant, the slot is denied) and counts once a vouched
grant came after the denial; without any denial, or with vouched events only, the newest word wins as before; a
vouched email or phone is never replaced by a claim.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.profiles import state as pstate

SLOTS = [("email", "*"), ("email", "news"), ("*", "news")]
STATUSES = ["granted", "denied", "unknown"]


@st.composite
def history(draw):
    n = draw(st.integers(1, 10))
    out = []
    for i in range(n):
        channel, topic = draw(st.sampled_from(SLOTS))
        status = draw(st.sampled_from(STATUSES))
        msg = {"type": "identify", "messageId": f"m{i}", "channel": "web",
               "timestamp": f"2026-01-01T00:{draw(st.integers(0, 5)):02d}:00.000000Z",
               "traits": {"consent": {channel: {topic: status}}}}  # fmt: skip
        if draw(st.booleans()):
            msg["traits"]["email"] = draw(st.sampled_from(["a@x.com", "b@x.com", "c@x.com"]))
        out.append((msg, draw(st.booleans())))
    return out


def fold(items, start=None):
    st_ = start if start is not None else pstate.empty()
    for msg, vouched in items:
        pstate.apply_event(st_, msg, "anonymous_id:a", vouched=vouched)
    return st_


def key(msg):
    return [msg["timestamp"], msg["messageId"]]


def newest(items):
    return max(items, key=lambda it: key(it[0])) if items else None


def slot_items(items, slot):
    c, t = slot
    return [(m, v) for m, v in items if (m["traits"]["consent"].get(c) or {}).get(t)]


def status(msg, slot):
    return msg["traits"]["consent"][slot[0]][slot[1]]


@settings(max_examples=400, deadline=None)
@given(history(), st.data())
def test_the_fold_is_order_independent_and_merges(items, data):
    whole = fold(items)
    shuffled = data.draw(st.permutations(items))
    assert fold(shuffled) == whole
    cut = data.draw(st.integers(0, len(items)))
    merged = pstate.merge(fold(shuffled[:cut]), fold(shuffled[cut:]))
    for part in ("traits", "consent", "consent_log", "claimed"):
        assert merged.get(part) == whole.get(part), part
    assert pstate.refused_grants(merged) == pstate.refused_grants(whole)


@settings(max_examples=400, deadline=None)
@given(history())
def test_a_claim_never_undoes_an_opt_out(items):
    st_ = fold(items)
    for slot in SLOTS:
        mine = slot_items(items, slot)
        if not mine:
            assert f"{slot[0]}:{slot[1]}" not in st_["consent"]
            continue
        got = st_["consent"][f"{slot[0]}:{slot[1]}"]
        denial = newest([it for it in mine if status(it[0], slot) == "denied"])
        vouched_yes = newest([it for it in mine if it[1] and status(it[0], slot) != "denied"])
        if denial and (vouched_yes is None or key(vouched_yes[0]) < key(denial[0])):
            assert got["status"] == "denied", (slot, got)
        if denial is None or all(v for _m, v in mine):  # no opt-out to protect, or nothing but vouched events
            assert got["key"] == key(newest(mine)[0])
        # the whole rule: a claimed grant or unknown counts unless the newest word a claim cannot override (a
        # vouched word or a denial) is a denial; a denial a vouched grant came after does not stand
        firm = [it for it in mine if it[1] or status(it[0], slot) == "denied"]
        claims = [it for it in mine if not it[1] and status(it[0], slot) != "denied"]
        stands = firm and status(newest(firm)[0], slot) == "denied"
        assert got["key"] == key(newest(firm + ([] if stands else claims))[0]), (slot, got)
        # a refused grant is listed exactly when a claim was the newest word on the slot and did not count
        top = newest(mine)
        refused = [w for w in pstate.refused_grants(st_) if w["slot"] == f"{slot[0]}:{slot[1]}"]
        assert bool(refused) == (got["key"] != key(top[0]) and not top[1] and status(top[0], slot) != "denied")


@settings(max_examples=300, deadline=None)
@given(history())
def test_a_claim_never_replaces_a_vouched_email(items):
    st_ = fold(items)
    with_email = [(m, v) for m, v in items if "email" in m["traits"]]
    vouched = newest([it for it in with_email if it[1]])
    claimed = newest([it for it in with_email if not it[1]])
    expected = (vouched or claimed or (None,))[0]
    assert st_["traits"].get("email") == (expected["traits"]["email"] if expected else None)


def test_a_state_stored_before_the_rule_keeps_its_opt_out():
    """Profiles folded before this change have a status per slot and no log: it counts as vouched."""
    old = {**pstate.empty(), "consent": {"email:*": {"status": "denied", "key": ["2026-01-01", "x"],
                                                      "source": "event:x"}}}  # fmt: skip
    grant = {"type": "identify", "messageId": "y", "timestamp": "2026-02-01", "traits": {"consent": {"email": {
        "*": "granted"}}}}  # fmt: skip
    assert pstate.apply_event(old, dict(grant), "anonymous_id:a", vouched=False)["consent"]["email:*"]["status"] \
        == "denied"  # fmt: skip
    assert pstate.apply_event(old, dict(grant, messageId="z"), "user_id:u")["consent"]["email:*"]["status"] \
        == "granted"  # fmt: skip


def test_a_denial_she_undid_herself_no_longer_blocks_or_warns():
    """A browser's denial, then her own grant (vouched), then a browser's ``unknown``: no opt-out stands any more,
    so the claim counts and no warning says one does."""
    items = []
    for i, (status_, vouched) in enumerate([("denied", False), ("granted", True), ("unknown", False)]):
        items.append(({"type": "identify", "messageId": f"m{i}", "timestamp": f"2026-01-01T00:0{i}:00.000000Z",
                       "traits": {"consent": {"email": {"*": status_}}}}, vouched))  # fmt: skip
    st_ = fold(items)
    assert st_["consent"]["email:*"]["status"] == "unknown"
    assert pstate.refused_grants(st_) == []
    # while her opt-out stands, the same claim is refused and listed
    st_ = fold([items[1], (items[0][0] | {"timestamp": "2026-01-01T00:01:30.000000Z"}, False), items[2]])
    assert st_["consent"]["email:*"]["status"] == "denied"
    assert [w["message_id"] for w in pstate.refused_grants(st_)] == ["m2"]
