"""Import reports speak of JSON values in JSON's words: a JSONL line that is valid JSON but not an object is
"null", "a string", "a number", "true"/"false" or "an array", never a Python type name (NoneType, str,
_JsonDecimal). And a JSON mapping file that gives a key twice is a MappingError naming the key (the parser would
keep the last value silently), as the admin API names one in a mapping given as JSON text."""

from __future__ import annotations

import pytest

from chorus.collect.importer import MappingError, RowError, iter_import, load_mapping


def test_jsonl_lines_that_are_not_objects_are_named_in_json_words(tmp_path):
    f = tmp_path / "calls.jsonl"
    f.write_bytes(b'null\n"s"\n5\ntrue\n1.5\nfalse\n[1, 2]\n-1e20\n')
    reasons = {line: item.reason for line, item in iter_import(f, "call_center") if isinstance(item, RowError)}
    what = {1: "null", 2: "a string", 3: "a number", 4: "true", 5: "a number", 6: "false", 7: "an array",
            8: "a number"}  # fmt: skip
    assert reasons == {line: f"line is {w}, not an object (column: value pairs)" for line, w in what.items()}


def test_a_mapping_file_giving_a_key_twice_is_refused_naming_it(tmp_path):
    f = tmp_path / "m.json"
    f.write_text('{"event": "Visit", "types": {"total": "decimal", "total": "int"}}')
    with pytest.raises(MappingError) as err:
        load_mapping(f, "store")
    assert str(err.value) == (
        "mapping file 'm.json': mapping.types.total appears more than once in its object; give it once"
    )
    f.write_text('{"event": "Visit", "event": "Call"}')
    with pytest.raises(MappingError, match="mapping.event appears more than once"):
        load_mapping(f, "store")
    # the same keys in different objects are not repeated
    f.write_text('{"event": "Visit", "types": {"event": "str"}}')
    assert load_mapping(f, "store").event == "Visit"
