"""Profile state is a commutative fold: any split of a history, merged back, equals the fold of the whole."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from chorus.profiles import state as pstate

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
            "type": draw(st.sampled_from(["identify", "track"])),
            "event": "E",
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
    for key in ("traits", "channels", "consent", "attrs", "sums"):
        assert merged[key] == whole[key], key


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
