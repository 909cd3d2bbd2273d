"""A YAML rule (or journey) that does not parse is refused with the line and column and a reason in Chorus' words
whenever the parser knows them: a control character gave just "not valid YAML" (PyYAML's reader has no mark), a
list as a key "not valid YAML (line 1, column 3)" with no reason. Found by a probe."""

from __future__ import annotations

import pytest

from chorus.errors import ChorusError
from chorus.journeys import definition
from chorus.segments import rules

pytest.importorskip("yaml")


@pytest.mark.parametrize(("text", "message"), [
    ("trait: {name: a, equals: '\x07'}", "rule: not valid YAML (line 1, column 27): a character YAML does not allow "
                                          'in its text (U+0007); write it as "\\u0007" in a double-quoted value'),
    ("trait:\r\n  name: a\r\n  equals: \x1b", "rule: not valid YAML (line 3, column 11): a character YAML does not "
                                              'allow in its text (U+001B); write it as "\\u001B" in a double-quoted '
                                              "value"),
    ("? [a]\n: 1", "rule: not valid YAML (line 1, column 3): a key that is a list or a mapping: a key is a name"),
    ('a: "\\x4"', "rule: not valid YAML (line 1, column 7): an escape (\\x, \\u, \\U) without its hexadecimal "
                  "digits"),
])  # fmt: skip
def test_yaml_errors_say_where_and_why(text, message):
    with pytest.raises(ChorusError) as info:
        rules.load_yaml(text)
    assert info.value.message == message
    assert info.value.field == "rule"


def test_every_yaml_error_has_a_reason_and_a_place():
    # a problem the table does not know (an anchor given twice) still says where and why, never PyYAML's text
    for text in ("&a x: &a y", "a: [1, 2\n", "a: b: c", "\x00", "a: 'x\x7f'"):
        with pytest.raises(ChorusError) as info:
            rules.load_yaml(text)
        message = info.value.message
        assert message.startswith("rule: not valid YAML (line "), message
        assert not message.endswith(")") and "): " in message, message
        assert "found" not in message and "expected" not in message, message


def test_journey_yaml_gets_the_same_words():
    with pytest.raises(ChorusError) as info:
        definition.load_yaml("id: j\nstart: '\x07'")
    assert info.value.message.startswith("journey: not valid YAML (line 2, column 9): a character YAML does not")
