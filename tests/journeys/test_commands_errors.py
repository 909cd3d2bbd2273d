"""``chorus journeys publish|broadcast FILE``: a definition file that is not JSON is refused in the HTTP API's
words (what is wrong, at which line and column of the file), never orjson's text or its character offset."""

from __future__ import annotations

import pytest

from chorus.errors import ChorusError
from chorus.journeys.commands import _document

ORJSON_WORDS = ("unexpected character", "(char", "expected ',' or '}'", "EOF while parsing", "JSONDecodeError")


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"id": "tag",\n "nodes": {} "edges": []}',
         "expected a comma or a closing bracket or brace at line 2, column 14"),
        ('{"id": "tag",\n', "the text ends before the document is complete at line 2, column 1"),
        ('{"id": "tag",}', "a comma before a closing bracket or brace at line 1, column 13"),
    ],
)
def test_a_journey_file_that_is_not_json_names_line_and_column(tmp_path, text, why):
    f = tmp_path / "journey.json"
    f.write_text(text)
    with pytest.raises(ChorusError) as info:
        _document(str(f))
    assert info.value.message == f"{f} is not valid JSON: {why}"
    assert not any(w in info.value.message for w in ORJSON_WORDS), info.value.message


def test_a_json_journey_file_still_reads(tmp_path):
    f = tmp_path / "journey.json"
    f.write_text('{"id": "tag", "nodes": {}}')
    assert _document(str(f)) == {"id": "tag", "nodes": {}}
