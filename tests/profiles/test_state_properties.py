"""Profile state is a commutative fold: any split of a history, merged back, equals the fold of the whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.profiles import state as pstate
from chorus.segments.person import Event

POLICIES = {"visits": "sum", "signup": "first", "score": "max", "low": "min"}


@st.composite
def messages(draw):
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        traits = draw(st.dictionaries(
            st.sampled_from(["name", "visits", "signup", "score", "low", "city"]),
            st.one_of(st.none(), st.just(""), st.integers(-5, 50), st.sampled_from(["a", "b", "c"])),
            max_size=4,
        ))  # fmt: skip
        msg = {
            "type": draw(st.sampled_from(["identify", "track", "page"])),
            "event": draw(st.sampled_from(["E", "F", "G", "H"])),
            "name": draw(st.sampled_from(["A", "B", "C", None])),
            "messageId": f"m{i}",
            "timestamp": f"2026-01-01T00:{draw(st.integers(0, 9)):02d}:00.000000Z",
            "channel": draw(st.sampled_from(["web", "app", "store", "email"])),
            "context": {"timezone": draw(st.sampled_from(["Europe/Paris", "America/Lima", None]))},
        }
        if msg["type"] == "identify":
            msg["traits"] = traits
        else:
            msg["context"]["traits"] = traits
        if draw(st.booleans()):
            msg["context"]["consent"] = {"categoryPreferences": {"offers": draw(st.booleans())}}
        out.append((msg, draw(st.sampled_from(["user_id:u", "anonymous_id:a", "anonymous_id:b"]))))
    return out


def fold(items):
    s = pstate.empty()
    for msg, anchor in items:
        pstate.apply_event(s, msg, anchor, POLICIES)
    return s


@settings(max_examples=300, deadline=None)
@given(messages(), st.data())
def test_fold_is_order_independent_and_merge_matches(items, data):
    whole = fold(items)
    shuffled = data.draw(st.permutations(items))
    assert fold(shuffled) == whole
    mask = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
    left = fold([x for x, m in zip(items, mask, strict=True) if m])
    right = fold([x for x, m in zip(items, mask, strict=True) if not m])
    merged = pstate.merge(left, right, POLICIES)
    assert merged == pstate.merge(right, left, POLICIES)
    for key in ("traits", "channels", "consent", "attrs", "sums", "activity"):
        assert merged[key] == whole[key], key


@settings(max_examples=300, deadline=None)
@given(messages(), st.data(), st.integers(1, 3))
def test_activity_with_few_names_kept_folds_and_merges_the_same(items, data, limit):
    """With room for only ``limit`` names per type, the names kept and their tallies still do not depend on the
    order of arrival nor on how the history was split; every name kept has its exact tally, and every name past
    the cut is one the type really had beyond the kept ones."""
    saved = dict(pstate.MAX_NAMES), pstate.MAX_NAMES_OTHER
    pstate.MAX_NAMES.update(track=limit)
    pstate.MAX_NAMES_OTHER = limit
    try:
        whole = fold(items)
        assert fold(data.draw(st.permutations(items)))["activity"] == whole["activity"]
        mask = data.draw(st.lists(st.booleans(), min_size=len(items), max_size=len(items)))
        left = fold([x for x, m in zip(items, mask, strict=True) if m])
        right = fold([x for x, m in zip(items, mask, strict=True) if not m])
        assert pstate.merge(left, right, POLICIES)["activity"] == whole["activity"]
    finally:
        pstate.MAX_NAMES.clear()
        pstate.MAX_NAMES.update(saved[0])
        pstate.MAX_NAMES_OTHER = saved[1]
    act = whole["activity"]
    for etype in {m["type"] for m, _ in items}:
        mine = [m for m, _ in items if m["type"] == etype]
        times = sorted(m["timestamp"] for m in mine)
        assert act["types"][etype] == [len(mine), times[0], times[-1]]
        # the name a rule selects an event by, as the evaluator reads it from the stored payload
        names = sorted({n for m in mine if isinstance(n := Event.from_payload(m).name, str)})
        kept = names[:limit]
        assert sorted(act["names"].get(etype, {})) == kept
        assert act["cut"].get(etype) == (kept[-1] if len(names) > limit else None)
        for name in kept:
            stamps = sorted(m["timestamp"] for m in mine if Event.from_payload(m).name == name)
            assert act["names"][etype][name] == [len(stamps), stamps[0], stamps[-1]]


def test_a_state_from_before_activity_never_gains_a_partial_one():
    old = pstate.empty()
    del old["activity"]
    msg = {"type": "track", "event": "Order Completed", "messageId": "1", "channel": "web",
           "timestamp": "2026-01-01T00:00:00.000000Z"}  # fmt: skip
    pstate.apply_event(old, msg, "user_id:u")
    assert "activity" not in old
    assert "activity" not in pstate.merge(old, fold([(msg, "user_id:u")]))
    assert fold([(msg, "user_id:u")])["activity"]["names"] == {"track": {"Order Completed": [1, msg["timestamp"],
                                                                                              msg["timestamp"]]}}


def test_policies_by_example():
    items = [
        ({"type": "identify", "messageId": "1", "timestamp": "2026-01-01T00:00:00.000000Z", "channel": "web",
          "traits": {"visits": 2, "signup": "ads", "name": "A", "score": 3}}, "anonymous_id:a"),
        ({"type": "identify", "messageId": "2", "timestamp": "2026-01-02T00:00:00.000000Z", "channel": "app",
          "traits": {"visits": 5, "signup": "store", "name": "", "score": 1}}, "user_id:u"),
        ({"type": "identify", "messageId": "3", "timestamp": "2026-01-03T00:00:00.000000Z", "channel": "app",
          "traits": {"visits": 6}}, "user_id:u"),
    ]  # fmt: skip
    s = fold(items)
    assert s["traits"] == {"visits": 8, "signup": "ads", "name": "A", "score": 3}
    summary = pstate.summary(s)
    assert summary == {"first_seen": "2026-01-01T00:00:00.000000Z", "last_seen": "2026-01-03T00:00:00.000000Z",
                       "last_channel": "app"}  # fmt: skip
