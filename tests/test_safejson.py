"""The one validation point for JSON from outside: what passes can be stored and written again by orjson."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chorus import safejson
from chorus.errors import ChorusError

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
documents = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4),
    max_leaves=30,
)


@given(documents)
def test_what_passes_round_trips_through_orjson(doc):
    bad = safejson.problem(doc, "properties")
    if bad is None:
        assert orjson.loads(orjson.dumps(doc)) == doc
    else:
        path, why = bad
        assert path.startswith("properties") and why


@given(documents)
def test_what_fails_names_a_path_that_leads_to_the_bad_value(doc):
    bad = safejson.problem(doc, "p")
    if bad is None or bad[0].endswith("…"):
        return
    with pytest.raises(ChorusError) as info:
        safejson.check(doc, "p")
    assert info.value.field == bad[0] and info.value.status == 400


def nest(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b'{"a": {"b": ' + nest(300) + b"}}", "traits.a.b[0][0][0]…", "deeper than 64"),
        (nest(5000), "traits", "deeper than 64"),
        (b'{"a": [1, {"b": "x\\u0000"}]}', "traits.a[1].b", "NUL"),
        (b'{"k\\u0000": 1}', "traits", "key that contains a NUL"),
        (b'{"a": "\\ud800"}', "traits.a", "lone surrogate"),  # parsed, then named like any other bad value
        (b"{bad", "traits", "not valid JSON: expected a key in double quotes at line 1, column 2"),
    ],
)
def test_hostile_json_is_a_clear_400(body, field, words):
    with pytest.raises(ChorusError) as info:
        safejson.loads(body, "traits")
    assert info.value.field == field
    assert words in info.value.message
    assert "(char" not in info.value.message  # no parser offsets


def test_limits_at_their_edges():
    assert safejson.check({"n": 2**64 - 1, "m": -(2**63)}) is not None
    for value in (2**64, -(2**63) - 1, float("nan"), float("inf")):
        with pytest.raises(ChorusError):
            safejson.check({"n": value})
    assert safejson.check(orjson.loads(nest(64))) is not None
    with pytest.raises(ChorusError):
        safejson.check(orjson.loads(nest(65)))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"n": 100000000000000000000000}', "body.n"),  # orjson alone reads it as the float 1e+23
        (b'{"a": [1, -9223372036854775809]}', "body.a[1]"),
        (b"18446744073709551616", "body"),
    ],
)
def test_loads_refuses_integer_literals_beyond_64_bits(raw, field):
    with pytest.raises(ChorusError) as exc:
        safejson.loads(raw)
    assert exc.value.field == field and "64 bits" in exc.value.message


def test_loads_keeps_big_floats_and_64_bit_integers():
    assert safejson.loads(b'{"f": 1e23, "g": -1.5e300, "u": 18446744073709551615}') == {
        "f": 1e23, "g": -1.5e300, "u": 2**64 - 1
    }


def test_parse_errors_are_in_our_words_with_line_and_column():
    cases = [(b'{"a": ', "the text ends before the document is complete at line 1, column 7"),
             (b'{"a": 1,\n}', "a comma before a closing bracket or brace at line 1, column 8"),
             (b'{"a": 01}', "a number with a leading zero at line 1, column 7"),
             (b"", "the text is empty at line 1, column 1")]  # fmt: skip
    for data, why in cases:
        with pytest.raises(ChorusError) as info:
            safejson.loads(data, "body")
        assert info.value.message == f"body is not valid JSON: {why}", info.value.message


def test_duplicate_key_names_the_first_repeated_key_by_its_path():
    assert safejson.duplicate_key(b'{"a": 1, "b": {"a": 2}}') is None
    assert safejson.duplicate_key(b'{"a": 1, "a": 2}') == "body.a"
    assert safejson.duplicate_key(b'{"x": [{}, {"k": 1, "k": 1}], "y": {"z": 0, "z": 0}}', "def") == "def.x[1].k"
    assert safejson.duplicate_key(b"[1, 2]") is None
