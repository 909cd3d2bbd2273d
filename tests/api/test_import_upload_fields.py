"""POST /api/imports over real HTTP: each form field is given once. A second `file` part would otherwise be
dropped without a word (the answer reporting the last file only), a repeated `source` or `mapping` would
silently lose to the last, and a key said twice in the mapping's JSON would keep the last value: each is a 400
naming the field, and nothing is imported. (SQLite: the form is read before the store is touched.)"""

from __future__ import annotations

import json

import pytest

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def _imports(http, ws) -> list:
    return http.get("/api/imports", headers=bearer(ws)).json()["imports"]


def _found(http, ws, email: str) -> int:
    return http.get("/api/profiles", params={"email": email}, headers=bearer(ws)).status_code


def _refused(r, field: str) -> str:
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["field"] == field, body
    assert body["message"].startswith(field), body
    return body["message"]


@SQLITE
def test_two_files_are_refused_naming_file(http, server, workspace):
    files = [("file", ("a.csv", b"email,timestamp\nfirst@example.com,2024-01-01\n")),
             ("file", ("b.csv", b"email,timestamp\nsecond@example.com,2024-01-01\n"))]  # fmt: skip
    r = http.post("/api/imports", files=files, data={"source": "store"}, headers=bearer(workspace))
    assert "one file per import" in _refused(r, "file")
    assert _imports(http, workspace) == []
    server.settle()
    assert _found(http, workspace, "second@example.com") == 404


@SQLITE
@pytest.mark.parametrize("field", ["source", "mapping"])
def test_a_repeated_form_field_is_refused_naming_it(http, server, workspace, field):
    values = {"source": ["store", "call_center"], "mapping": ['{"event": "Visit"}', '{"event": "Call"}']}[field]
    data = {"source": "store", field: values}
    r = http.post("/api/imports", files={"file": ("a.csv", b"email,timestamp\nx@example.com,2024-01-01\n")},
                  data=data, headers=bearer(workspace))  # fmt: skip
    assert "2 times" in _refused(r, field)
    assert _imports(http, workspace) == []


@SQLITE
def test_a_key_given_twice_in_the_mapping_is_refused_naming_mapping(http, server, workspace):
    mapping = '{"event": "Visit", "types": {"total": "decimal", "total": "int"}}'
    r = http.post("/api/imports", files={"file": ("a.csv", b"email,timestamp,total\nx@example.com,2024-01-01,1\n")},
                  data={"source": "store", "mapping": mapping}, headers=bearer(workspace))  # fmt: skip
    message = _refused(r, "mapping")
    assert message == "mapping.types.total: this key appears more than once in its object; give it once"
    assert _imports(http, workspace) == []


@SQLITE
def test_one_of_each_still_imports(http, server, workspace):
    r = http.post("/api/imports", files={"file": ("a.csv", b"email,timestamp\none@example.com,2024-01-01\n")},
                  data={"source": "store", "mapping": json.dumps({"event": "Visit"})},
                  headers=bearer(workspace))  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 1
