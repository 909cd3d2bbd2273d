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


def _unreadable_file(tmp_path, monkeypatch):
    f = tmp_path / "locked.json"
    f.write_text("{}")
    real = open

    def refuse(path, *args, **kwargs):  # chmod 0 does not stop root, who runs the tests in CI's containers
        if str(path) == str(f):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    return f


def _latin1_file(tmp_path, _monkeypatch):
    f = tmp_path / "latin1.json"
    f.write_bytes(b'{"id": "caf\xe9"}')
    return f


@pytest.mark.parametrize(
    "make, why",
    [
        (lambda tmp, _: tmp / "missing.json", "does not exist"),
        (lambda tmp, _: tmp, "is a directory, not a file"),
        (_unreadable_file, "cannot be read (permission denied)"),
        (_latin1_file, "is not UTF-8 text"),
    ],
)
def test_an_unreadable_journey_file_is_said_in_our_words(tmp_path, monkeypatch, make, why):
    """Not Python's exception class (``cannot be read (FileNotFoundError)``): what is wrong with the file, as
    ``chorus import`` says it of a mapping file."""
    path = make(tmp_path, monkeypatch)
    with pytest.raises(ChorusError) as info:
        _document(str(path))
    assert info.value.message == f"{path} {why}"
    assert "Error" not in info.value.message and "Errno" not in info.value.message
