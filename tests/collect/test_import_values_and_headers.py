"""A bad value is quoted as the file wrote it (JSON-style, cut at 60 characters), never as a Python repr
(``"Decimal('-1E+20')"``, ``"{'a': [1, 1, 1]}"``); a CSV header that names no columns stops the import with
its line, instead of the first data row being taken for the header and lost (outside probe)."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from chorus.collect.importer import ImportFileError, RowError, _show, iter_import, load_mapping

TS = "is not a timestamp (ISO-8601, 'YYYY-MM-DD HH:MM:SS' or epoch seconds)"
PYTHON_WORDS = ("Decimal(", "datetime.", "b'", "{'", "['", "True", "False", "None", "inf", "nan")


def items(path, source="store", mapping=None) -> list:
    return list(iter_import(path, source, mapping))


def clean(text: str) -> str:
    assert not any(w in text for w in PYTHON_WORDS), text
    return text


# ------------------------------------------------------------------------------------- values


def test_jsonl_values_are_quoted_as_written_not_as_python_reprs(tmp_path):
    f = tmp_path / "pos.jsonl"
    f.write_text(
        '{"user_id": "u", "timestamp": -1e20}\n'  # 1
        '{"user_id": "u", "timestamp": 1e300}\n'  # 2
        '{"user_id": "u", "timestamp": "2024-01-01", "revenue": {"a": [1, 1, 1]}}\n'  # 3
        '{"user_id": "u", "timestamp": {"a": 1.50, "b": [true, false, null]}}\n'  # 4
        '{"user_id": "u", "timestamp": [' + ", ".join(["12345"] * 30) + "]}\n"  # 5: cut at 60 characters
        '{"user_id": "u", "timestamp": true}\n'  # 6
        '{"user_id": "u", "timestamp": "2024-01-01", "revenue": ["a\\u0000b", "\\u202e"]}\n'  # 7
        '{"user_id": "u", "timestamp": ' + "[" * 500 + "]" * 500 + "}\n"  # 8: deep, costs nothing to quote
        '{"user_id": "u", "timestamp": "2024-01-01", "revenue": 12.50}\n'  # 9: good, next to the bad
    )
    got = {line: item for line, item in items(f)}
    assert {line: e.reason for line, e in got.items() if isinstance(e, RowError)} == {
        1: f"column 'timestamp': -1e20 {TS}",
        2: f"column 'timestamp': 1e300 {TS}",
        3: 'column \'revenue\': {"a": [1, 1, 1]} is not a valid decimal',
        4: f'column \'timestamp\': {{"a": 1.50, "b": [true, false, null]}} {TS}',
        5: f"column 'timestamp': [{', '.join(['12345'] * 30)}"[: len("column 'timestamp': ") + 60] + f"… {TS}",
        6: f"column 'timestamp': true {TS}",
        7: 'column \'revenue\': ["a\\u0000b", "\\u202e"] is not a valid decimal',
        8: f"column 'timestamp': {'[' * 60}… {TS}",
    }
    for e in got.values():
        if isinstance(e, RowError):
            clean(e.reason)
    assert got[9]["properties"] == {"revenue": "12.50"}


def test_parquet_values_are_quoted_json_style(tmp_path):
    table = pa.table({
        "user_id": ["u1", "u2", "u3", "u4"],
        "timestamp": ["2024-01-01"] * 4,
        "blob": pa.array([b"\x00\xff", None, None, None], type=pa.binary()),
        "revenue": pa.array([None, {"a": 1, "b": "x"}, None, None],
                            type=pa.struct([("a", pa.int64()), ("b", pa.string())])),
        "ratio": pa.array([None, None, float("inf"), None]),
        "amount": pa.array([None, None, None, Decimal("12.50")], type=pa.decimal128(6, 2)),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "v.parquet")
    mapping = load_mapping({"types": {"amount": "int", "blob": "decimal"}}, "store")
    got = dict(items(tmp_path / "v.parquet", mapping=mapping))
    assert got[1] == RowError(1, "blob", "column 'blob': a binary value is not a valid decimal")
    assert got[2] == RowError(2, "revenue", 'column \'revenue\': {"a": 1, "b": "x"} is not a valid decimal')
    assert got[3] == RowError(3, "ratio", "column 'ratio': Infinity is not a finite number")
    assert got[4] == RowError(4, "amount", "column 'amount': 12.50 is not a valid int")


def test_show_quotes_texts_and_says_kinds():
    assert _show("yesterday") == "'yesterday'"
    assert _show("x" * 100) == "'" + "x" * 60 + "…'"
    assert _show(b"\x00") == "a binary value"
    assert _show(float("nan")) == "NaN" and _show(float("-inf")) == "-Infinity" and _show(1.5) == "1.5"
    assert _show({"k": Decimal("1E+2")}) == '{"k": 1E+2}'  # a parquet decimal: as stored
    assert _show(10**5000) == "<a very large integer>"


# ------------------------------------------------------------------------------------ headers


@pytest.mark.parametrize(
    "content",
    [
        b"\xef\xbb\xbf,,,\n1,2,3,4\n5,6,7,8\n",  # the probe's file: line 2 was taken for the header, and lost
        b"\xef\xbb\xbf,,,\n1,2,3,4\n",  # ... and with one data row: "0 rows, 0 failed", exit 0
        b" , ,\ntimestamp,user_id,x\n2024-01-01,u1,1\n",
        b'""\n2024-01-01\n2024-01-02\n',  # a quoted empty name is a header too, not a blank line
    ],
)
def test_a_header_that_names_no_columns_is_a_file_error(tmp_path, content):
    f = tmp_path / "x.csv"
    f.write_bytes(content)
    with pytest.raises(ImportFileError) as info:
        items(f)
    assert str(info.value) == "x.csv: line 1: the header names no columns"


def test_a_header_of_tab_delimiters_names_no_columns(tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(b"\t\t\n2024-01-01\tu1\tx\n")
    with pytest.raises(ImportFileError, match="^x.csv: line 1: the header names no columns$"):
        items(f, mapping=load_mapping({"delimiter": "\t"}, "store"))


def test_blank_lines_before_the_header_are_skipped_and_lines_stay_physical(tmp_path):
    f = tmp_path / "pos.csv"
    f.write_bytes(b"\xef\xbb\xbf\n  \r\nuser_id,timestamp\nu1,2024-01-01\n\nu2,yesterday\n,,\nu3\n")
    got = items(f)
    assert [line for line, _ in got] == [4, 6, 8]
    assert got[0][1]["context"]["import_line"] == 4
    assert got[1][1] == RowError(6, "timestamp", f"column 'timestamp': 'yesterday' {TS}")
    assert got[2][1] == RowError(8, None, "row has 1 cells, the header has 2")
    f.write_bytes(b"\n\n,,\n1,2,3\n")
    with pytest.raises(ImportFileError, match="^pos.csv: line 3: the header names no columns$"):
        items(f)
    f.write_bytes(b"\n\na,timestamp,a\n1,2,3\n")
    with pytest.raises(ImportFileError, match="^pos.csv: line 3: column 'a' appears twice in the header$"):
        items(f)
    f.write_bytes(b"\n \n\n")  # blank lines only: no rows, nothing to lose
    assert items(f) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_cli_stops_on_a_header_that_names_no_columns(db_url, workspace, tmp_path):
    f = tmp_path / "x.csv"
    f.write_bytes(b"\xef\xbb\xbf,,,\n1,2,3,4\n")
    r = subprocess.run([sys.executable, "-m", "chorus.cli", "import", "events", str(f), "--source", "store", "-w",
                        workspace["name"], "--db", db_url], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "x.csv: line 1: the header names no columns" in r.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_api_import_record_quotes_values_json_style(http, workspace):
    auth = {"Authorization": f"Bearer {workspace['api_key']}"}
    content = (b'{"user_id": "u1", "timestamp": -1e20}\n'
               b'{"user_id": "u2", "timestamp": "2024-01-01T00:00:00Z", "revenue": {"a": [1, 1, 1]}}\n'
               b'{"user_id": "u3", "timestamp": "2024-01-01T00:00:00Z", "revenue": 9.90}\n')  # fmt: skip
    r = http.post("/api/imports", files={"file": ("pos.jsonl", content, "application/octet-stream")},
                  data={"source": "store"}, headers=auth)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 1
    r = http.get(f"/api/imports/{r.json()['id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["errors"] == [
        {"line": 1, "field": "timestamp", "reason": f"column 'timestamp': -1e20 {TS}"},
        {"line": 2, "field": "revenue", "reason": 'column \'revenue\': {"a": [1, 1, 1]} is not a valid decimal'},
    ]
