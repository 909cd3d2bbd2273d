"""Hypothesis strategies for hostile input to the tracking API and imports (shared by the fuzz tests)."""

from __future__ import annotations

import json

from hypothesis import strategies as st

NASTY_CHARS = ["\x00", "\ud800", "\udfff", "\u2028", "\x1e", "\x1f", "'", '"', "\\", "\n", "é", "😀"]
text = st.one_of(
    st.text(max_size=12),
    st.lists(st.sampled_from(NASTY_CHARS) | st.text(max_size=3), max_size=6).map("".join),
    st.sampled_from(["", " ", "x" * 201, "x" * 5000, "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]),
)
number = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([2**64, -(2**63) - 1, 10**40, 0, -1, 1e308, -1e308, 5.0, 1e11 + 0.5]),
    st.floats(allow_nan=False, allow_infinity=False),
)
scalar = st.one_of(st.none(), st.booleans(), number, text)


def nested(depth: int, leaf: object = "x") -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


deep = st.sampled_from([1, 62, 63, 64, 65, 254, 300, 900]).map(nested)  # past 1024 the body is malformed
json_value = st.recursive(
    scalar | deep,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=12,
)
timestamp = st.one_of(
    st.sampled_from([
        "2026-06-01T10:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00", "1970-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "yesterday", "",
        "2026-02-30T00:00:00Z", "10000-01-01T00:00:00Z",
    ]),
    number,
    json_value,
)  # fmt: skip
external_ids = st.one_of(
    json_value,
    st.lists(
        st.one_of(
            json_value,
            st.fixed_dictionaries({}, optional={"type": st.sampled_from(["loyalty_id", "device_token"]) | json_value,
                                                "id": scalar | json_value, "collection": json_value}),
        ),
        max_size=3,
    ),
)  # fmt: skip
context = st.fixed_dictionaries(
    {},
    optional={
        "externalIds": external_ids,
        "traits": st.dictionaries(st.sampled_from(["email", "phone", "loyalty_id", "consent", "name"]) | text,
                                  json_value, max_size=4),
        "device": st.fixed_dictionaries({}, optional={"token": scalar | json_value, "type": json_value}) | json_value,
        "channel": json_value,
        "direction": st.sampled_from(["inbound", "outbound"]) | json_value,
        "timezone": json_value,
        "locale": json_value,
        "os": json_value,
        "app": json_value,
    },
)  # fmt: skip
TYPES = ["identify", "track", "page", "screen", "group", "alias"]
word = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
sane_json = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(-1e6, 1e6) | word,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(word, children, max_size=3),
    max_leaves=8,
)
sane_traits = st.fixed_dictionaries(
    {},
    optional={
        "email": st.sampled_from(["ana@example.com", " Bo@Example.COM ", "not-an-email"]),
        "phone": st.sampled_from(["+31 6 12345678", "0612345678", "12"]),
        "loyalty_id": word,
        "name": word,
        "consent": st.fixed_dictionaries({"email": st.sampled_from(["opted_in", "opted_out"])}),
    },
)
sane_context = st.fixed_dictionaries(
    {},
    optional={
        "externalIds": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["loyalty_id", "device_token"]),
                                                       "id": word, "collection": st.just("users")}), max_size=2),
        "traits": sane_traits,
        "device": st.fixed_dictionaries({"token": word, "type": st.sampled_from(["ios", "android"])}),
        "channel": st.sampled_from(["web", "app", "store"]),
        "page": st.fixed_dictionaries({"url": st.just("https://shop.example/")}),
        "timezone": st.just("Europe/Amsterdam"),
    },
)  # fmt: skip
HOSTILE = {
    "type": st.sampled_from(TYPES) | json_value,
    "userId": scalar | json_value,
    "anonymousId": scalar | json_value,
    "messageId": scalar | json_value,
    "event": text | json_value,
    "name": text | json_value,
    "groupId": scalar | json_value,
    "previousId": scalar | json_value,
    "properties": st.dictionaries(text, json_value, max_size=4) | json_value,
    "traits": st.dictionaries(st.sampled_from(["email", "phone", "loyalty_id", "consent"]) | text, json_value,
                              max_size=4) | json_value,
    "context": context | json_value,
    "integrations": json_value,
    "timestamp": timestamp,
    "originalTimestamp": timestamp,
    "sentAt": timestamp,
}  # fmt: skip


@st.composite
def message(draw) -> object:
    """A plausible message with zero to two hostile fields (now and then not even an object)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_value)
    msg: dict = {"type": draw(st.sampled_from(TYPES)), "event": draw(word), "groupId": "g1", "previousId": "old-1"}
    msg["userId" if draw(st.booleans()) else "anonymousId"] = draw(word)
    extras = draw(st.fixed_dictionaries({}, optional={
        "properties": st.dictionaries(word, sane_json, max_size=3), "traits": sane_traits, "context": sane_context,
        "messageId": word, "name": word,
        "timestamp": st.sampled_from(["2026-06-01T10:00:00Z", "2026-05-31T23:00:00.123+02:00"]),
        "sentAt": st.sampled_from(["2026-06-01T10:00:05Z"]),
    }))  # fmt: skip
    msg.update(extras)
    for key in draw(st.lists(st.sampled_from(sorted(HOSTILE)), max_size=2, unique=True)):
        msg[key] = draw(HOSTILE[key])
    return msg


def dumps(value: object) -> bytes:
    """JSON as a hostile client writes it: lone surrogates and NUL escaped, integers of any size."""
    return json.dumps(value, ensure_ascii=True, allow_nan=False).encode()
