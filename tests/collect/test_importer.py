"""Offline-channel import: files -> Segment-spec messages (chorus.collect.importer)."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.collect.importer import (
    ImportFileError,
    Mapping,
    MappingError,
    RowError,
    count_rows,
    iter_import,
    load_mapping,
)

DATA = Path(__file__).parent / "data"


def run(path, source="store", mapping=None):
    return list(iter_import(path, source, mapping))


def messages(items):
    return [item for _, item in items if isinstance(item, dict)]


def errors(items):
    return [item for _, item in items if isinstance(item, RowError)]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    return path


# ----------------------------------------------------------------------------------- defaults per source


def test_store_pos_defaults():
    items = run(DATA / "store_pos.csv", "store")
    assert [line for line, _ in items] == [2, 3, 4]
    assert errors(items) == []
    first, second, third = messages(items)
    assert first["type"] == "track"
    assert first["event"] == "Order Completed"
    assert first["timestamp"].startswith("2024-03-02T09:15:00")
    assert first["timestamp"].endswith("Z")
    assert "userId" not in first and "anonymousId" not in first
    assert first["context"]["traits"] == {"email": "ana@example.com", "loyalty_id": "LC-778"}
    assert first["context"]["channel"] == "store"
    assert first["context"]["source"] == {"type": "import", "name": "store", "file": "store_pos.csv"}
    assert first["context"]["import_line"] == 2
    props = first["properties"]
    # money is an exact decimal string; other CSV cells stay strings exactly as written
    assert props["revenue"] == "42.50"
    assert props["tax"] == "7.08"
    assert props["register"] == "3"
    assert props["receipt_no"] == "R-1001"
    assert props["store_id"] == "PAR-01"
    assert props["currency"] == "EUR"
    assert props["products"] == [
        {"sku": "TEA-01", "quantity": 2, "price": 12.5},
        {"sku": "MUG-02", "quantity": 1, "price": 17.5},
    ]
    for used in ("timestamp", "email", "loyalty_id"):
        assert used not in props
    # empty cells are omitted
    assert second["context"]["traits"] == {"loyalty_id": "LC-912"}
    assert "products" not in second["properties"]
    assert third["properties"]["revenue"] == "120.00"
    assert len({m["messageId"] for m in messages(items)}) == 3
    assert all(re.fullmatch(r"imp-[0-9a-f]{32}", m["messageId"]) for m in messages(items))


def test_call_center_jsonl_defaults():
    items = run(DATA / "call_center.jsonl", "call_center")
    assert [line for line, _ in items] == [1, 2, 3]
    assert errors(items) == []
    a, b, c = messages(items)
    assert {m["event"] for m in (a, b, c)} == {"Call Completed"}
    assert a["userId"] == "cust-17"
    assert a["context"]["traits"] == {"phone": "+33612345678"}
    assert a["timestamp"].startswith("2024-03-04T08:30:00")
    # JSON types are kept for untyped properties
    assert a["properties"] == {"agent": "a.martin", "reason": "delivery", "duration_seconds": 312, "resolved": True}
    # an offset is honoured; only the phone identifies the caller
    assert b["timestamp"].startswith("2024-03-04T08:05:12")
    assert "userId" not in b and b["context"]["traits"] == {"phone": "+33698765432"}
    # epoch seconds; a JSON fraction becomes a float
    assert c["timestamp"] == _iso(datetime.fromtimestamp(1709545500, UTC))
    assert c["properties"]["duration_seconds"] == 40.5
    assert c["context"]["channel"] == "call_center"


def test_catalog_defaults_date_and_time_columns():
    items = run(DATA / "catalog_mailing.csv", "catalog")
    assert errors(items) == []
    a, b = messages(items)
    assert a["event"] == "Catalog Sent"
    # "date" + "time" are joined into one timestamp and are not properties
    assert a["timestamp"].startswith("2024-02-26T08:00:00")
    assert a["properties"] == {"catalog": "spring", "edition": "2024-S"}
    assert a["userId"] == "cust-17" and a["context"]["traits"] == {"email": "ana@example.com"}
    assert b["userId"] == "cust-44" and "traits" not in b["context"]
    # the brand mailed it: its send, not something the customer did (an outside probe: the analytics counted it as
    # her touchpoint, a store "visit" and a channel she used)
    assert a["context"]["direction"] == b["context"]["direction"] == "outbound"


def test_catalog_promo_redemption_with_mapping_file():
    mapping = load_mapping(DATA / "catalog_promo_mapping.json", "catalog")
    items = run(DATA / "catalog_promo.csv", "catalog", mapping)
    assert errors(items) == []
    a, b = messages(items)
    assert a["event"] == "Promo Code Redeemed"
    assert a["userId"] == "cust-17"
    assert a["context"]["traits"] == {"email": "ana@example.com"}
    # 14:22:05 in Paris (CET, +01:00) is 13:22:05 UTC
    assert a["timestamp"].startswith("2024-03-10T13:22:05")
    assert a["properties"] == {"promo_code": "SPRING10", "catalog": "spring", "revenue": "58.40"}
    assert b["properties"]["revenue"] == "19.99"
    assert "traits" not in b["context"]
    assert "direction" not in a["context"]  # a redemption is the customer's own


def test_other_source_needs_an_event():
    with pytest.raises(MappingError, match="'event'"):
        load_mapping(None, "kiosk")
    with pytest.raises(MappingError, match="'event'"):
        iter_import(DATA / "store_pos.csv", "kiosk")
    mapping = load_mapping({"event": "Kiosk Visit"}, "kiosk")
    msgs = messages(run(DATA / "store_pos.csv", "kiosk", mapping))
    assert {m["event"] for m in msgs} == {"Kiosk Visit"}
    # only the store source has money defaults
    assert msgs[0]["properties"]["revenue"] == "42.50"
    assert msgs[0]["context"]["channel"] == "kiosk"


# ----------------------------------------------------------------------------------- explicit mapping


def test_explicit_mapping_identifiers_properties_types_event_column(tmp_path):
    f = write(
        tmp_path / "pos.csv",
        "sold_at,kind,card,crm,cust,qty,unit,gift,note,total_eur\n"
        "2024-05-01T12:00:00Z,Order Refunded,C-1,crm-9,u-1,3,2.5,yes,keep me out,7.50\n",
    )
    mapping = load_mapping(
        {
            "event": {"column": "kind"},
            "timestamp": "sold_at",
            "user_id": "cust",
            "email": None,
            "identifiers": {"loyalty_id": "card", "crm_id": "crm"},
            "properties": {"quantity": "qty", "price": "unit", "gift": "gift", "revenue": "total_eur"},
            "types": {"quantity": "int", "price": "float", "gift": "bool"},
        },
        "store",
    )
    [(line, msg)] = run(f, "store", mapping)
    assert line == 2
    assert msg["event"] == "Order Refunded"
    assert msg["userId"] == "u-1"
    assert msg["context"]["traits"] == {"loyalty_id": "C-1", "crm_id": "crm-9"}
    # store default types still apply (revenue -> decimal); explicit types are merged over them
    assert msg["properties"] == {"quantity": 3, "price": 2.5, "gift": True, "revenue": "7.50"}
    assert msg["timestamp"].startswith("2024-05-01T12:00:00")


def test_identify_mapping(tmp_path):
    f = write(tmp_path / "members.csv", "created_at,user_id,email,first_name,tier\n2024-01-01,u1,a@x.io,Ana,gold\n")
    mapping = load_mapping({"type": "identify"}, "store")
    [(_, msg)] = run(f, "store", mapping)
    assert msg["type"] == "identify"
    assert "event" not in msg and "properties" not in msg
    assert msg["userId"] == "u1"
    assert msg["traits"] == {"first_name": "Ana", "tier": "gold", "email": "a@x.io"}
    assert msg["timestamp"].startswith("2024-01-01T00:00:00")


def test_mapping_file_json(tmp_path):
    f = write(tmp_path / "m.json", json.dumps({"event": "Visit", "timezone": "America/New_York"}))
    mapping = load_mapping(f, "kiosk")
    assert isinstance(mapping, Mapping)
    assert mapping.event == "Visit" and mapping.timezone == "America/New_York"
    assert mapping.source == "kiosk"


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        ({"evnt": "X"}, "evnt"),
        ({"type": "page"}, "type"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"types": {"revenue": "money"}}, "types.revenue"),
        ({"properties": {"a": "a"}, "types": {"b": "int"}}, "types.b"),
        ({"event": {"col": "x"}}, "event"),
        ({"event": ""}, "event"),
        ({"type": "identify", "event": "X"}, "event"),
        ({"identifiers": {"loyalty id": "card"}}, "identifiers"),
        ({"identifiers": ["card"]}, "identifiers"),
        ({"key": []}, "key"),
        ({"timestamp": 5}, "timestamp"),
        ({"user_id": 3}, "user_id"),
        ({"delimiter": ";;"}, "delimiter"),
        ({"direction": "sideways"}, "direction"),
        ({"type": "identify", "direction": "outbound"}, "direction"),
    ],
)
def test_bad_mappings_name_the_key(raw, named):
    with pytest.raises(MappingError, match=re.escape(repr(named)) if "." not in named else re.escape(named)):
        load_mapping(raw, "store")


def test_bad_mapping_files(tmp_path):
    with pytest.raises(MappingError, match="not valid JSON"):
        load_mapping(write(tmp_path / "m.json", "{nope"), "store")
    with pytest.raises(MappingError, match="must contain an object"):
        load_mapping(write(tmp_path / "l.json", "[1]"), "store")
    with pytest.raises(MappingError, match="missing.json' does not exist"):
        load_mapping(tmp_path / "missing.json", "store")
    with pytest.raises(MappingError, match="unknown mapping key 'colour'"):
        load_mapping(write(tmp_path / "k.json", '{"colour": "red"}'), "store")
    assert issubclass(MappingError, ValueError)


def test_yaml_mapping_only_with_pyyaml(tmp_path):
    f = write(tmp_path / "m.yaml", "event: Visit\ntimezone: Europe/Paris\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(MappingError, match="PyYAML"):
            load_mapping(f, "kiosk")
    else:
        assert load_mapping(f, "kiosk").event == "Visit"


def test_mapping_for_another_source_is_refused():
    with pytest.raises(MappingError, match="'store'"):
        iter_import(DATA / "catalog_mailing.csv", "catalog", load_mapping(None, "store"))


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(ImportFileError, match="extension"):
        iter_import(write(tmp_path / "x.xlsx", "a"), "store")
    with pytest.raises(FileNotFoundError):
        iter_import(tmp_path / "nope.csv", "store")


# ----------------------------------------------------------------------------------- bad rows


def test_csv_bad_rows_have_line_numbers_and_good_rows_survive(tmp_path):
    f = write(
        tmp_path / "pos.csv",
        b"timestamp,user_id,revenue,products,note\n"  # 1
        b"2024-03-01 10:00:00,u1,10.00,,ok\n"  # 2
        b"yesterday,u2,10.00,,bad timestamp\n"  # 3
        b"2024-03-01 10:00:00,,10.00,,no identifier\n"  # 4
        b"2024-03-01 10:00:00,u3,12;50,,bad number\n"  # 5
        b"2024-03-01 10:00:00,u4,10.00\n"  # 6 ragged
        b'2024-03-01 10:00:00,u5,10.00,"[{""sku"": 1}",bad products json\n'  # 7
        b"\n"  # 8 blank line: skipped
        b'2024-03-01 10:00:00,u6,10.00,,"two\nlines"\n'  # 9-10
        b"2024-03-01 10:00:00,u\xff7,10.00,,not utf-8\n"  # 11
        b"2024-03-01 10:00:00,u8,10.00,,ok\n"  # 12
        b"2024-03-01 10:00:00,u9,10.00,,ok,extra\n"  # 13 ragged
        b"2024-03-01 10:00:00,u10,1.0,,last line without newline",  # 14
    )
    items = run(f, "store")
    assert [line for line, _ in items] == [2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14]
    by_line = dict(items)
    assert isinstance(by_line[2], dict) and by_line[2]["userId"] == "u1"
    bad_ts = by_line[3]
    assert bad_ts == RowError(3, "timestamp", bad_ts.reason) and "'timestamp'" in bad_ts.reason
    no_id = by_line[4]
    assert no_id.line == 4 and no_id.field is None
    for col in ("user_id", "anonymous_id", "email", "phone", "loyalty_id"):
        assert repr(col) in no_id.reason
    assert by_line[5] == RowError(5, "revenue", by_line[5].reason) and "'revenue'" in by_line[5].reason
    assert by_line[6].line == 6 and "3 cells" in by_line[6].reason and "5" in by_line[6].reason
    assert by_line[7].field == "products" and "JSON" in by_line[7].reason
    assert by_line[9]["properties"]["note"] == "two\nlines"
    assert by_line[9]["context"]["import_line"] == 9
    assert by_line[11].field == "user_id" and "UTF-8" in by_line[11].reason
    assert by_line[12]["userId"] == "u8" and by_line[12]["context"]["import_line"] == 12
    assert isinstance(by_line[13], RowError) and "6 cells" in by_line[13].reason
    assert by_line[14]["userId"] == "u10"


def test_malformed_quotes(tmp_path):
    f = write(
        tmp_path / "q.csv",
        'timestamp,user_id,note\n2024-01-01,u1,"x"y\n2024-01-01,u2,a"b\n2024-01-01,u3,"never closed\n2024-01-01,u4,z\n',
    )
    items = run(f)
    assert [line for line, _ in items] == [2, 3, 4]
    assert isinstance(items[0][1], RowError) and "not readable as CSV" in items[0][1].reason
    assert items[1][1]["properties"] == {"note": 'a"b'}
    assert isinstance(items[2][1], RowError) and "never closed" in items[2][1].reason


def test_jsonl_bad_lines(tmp_path):
    f = write(
        tmp_path / "calls.jsonl",
        b'{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u1"}\n'  # 1
        b"{not json\n"  # 2
        b"[1, 2]\n"  # 3
        b"\n"  # 4 blank: skipped
        b'{"timestamp": "2024-03-01T10:00:00Z", "user_id": "u\xfe2"}\n'  # 5
        b'{"timestamp": "2024-03-01T10:00:00Z", "user_id": {"a": 1}}\n'  # 6
        b'{"timestamp": "2024-03-01T10:00:00Z", "anonymous_id": 42, "x": NaN}\n'  # 7
        b'{"timestamp": "2024-03-01T10:00:00Z", "anonymous_id": 42}\r\n',  # 8
    )
    items = run(f, "call_center")
    assert [line for line, _ in items] == [1, 2, 3, 5, 6, 7, 8]
    by_line = dict(items)
    assert by_line[1]["userId"] == "u1"
    assert by_line[2] == RowError(2, None, by_line[2].reason) and "JSON" in by_line[2].reason
    assert isinstance(by_line[3], RowError) and "object" in by_line[3].reason
    assert isinstance(by_line[5], RowError) and "UTF-8" in by_line[5].reason
    assert by_line[6].field == "user_id"
    assert isinstance(by_line[7], RowError) and "JSON" in by_line[7].reason
    assert by_line[8]["anonymousId"] == "42"


def test_missing_timestamp_column_and_empty_timestamp(tmp_path):
    f = write(tmp_path / "x.csv", "user_id,when\nu1,2024-01-01\n")
    [(_, err)] = run(f, "store")
    assert isinstance(err, RowError) and err.field == "timestamp" and "'created_at'" in err.reason
    f = write(tmp_path / "y.csv", "timestamp,user_id\n ,u1\n")
    [(_, err)] = run(f, "store")
    assert err == RowError(2, "timestamp", err.reason) and "empty" in err.reason


@pytest.mark.parametrize(
    ("tname", "cell", "expected"),
    [
        ("int", "12", 12),
        ("int", "-3", -3),
        ("int", "1.5", None),
        ("float", "1.25", 1.25),
        ("float", "1e3", 1000.0),
        ("float", "nan", None),
        ("bool", "Yes", True),
        ("bool", "0", False),
        ("bool", "maybe", None),
        ("decimal", " 19.90 ", "19.90"),
        ("decimal", "+.5", "0.5"),
        ("decimal", "1e3", None),
        ("decimal", "1,5", None),
        ("str", "007", "007"),
    ],
)
def test_declared_types(tmp_path, tname, cell, expected):
    f = write(tmp_path / "t.csv", f'timestamp,user_id,v\n2024-01-01,u1,"{cell}"\n')
    [(_, item)] = run(f, "store", load_mapping({"types": {"v": tname}}, "store"))
    if expected is None:
        assert isinstance(item, RowError) and item.field == "v" and "'v'" in item.reason
    else:
        assert item["properties"]["v"] == expected
        assert type(item["properties"]["v"]) is type(expected)


def test_jsonl_money_stays_exact(tmp_path):
    f = write(
        tmp_path / "o.jsonl",
        '{"timestamp": "2024-01-01", "user_id": "u", "revenue": 12345678901234567.10, "total": 5, "x": 0.1}\n',
    )
    [(_, msg)] = run(f, "store")
    assert msg["properties"] == {"revenue": "12345678901234567.10", "total": "5", "x": 0.1}


# ----------------------------------------------------------------------------------- message ids


def test_message_ids_stable_and_change_with_the_row(tmp_path):
    rows = [
        "timestamp,user_id,revenue",
        "2024-03-01 10:00:00,u1,10.00",
        "2024-03-01 11:00:00,u2,20.00",
    ]
    a = write(tmp_path / "a.csv", "\n".join(rows) + "\n")
    ids1 = [m["messageId"] for m in messages(run(a, "store"))]
    ids2 = [m["messageId"] for m in messages(run(a, "store"))]
    assert ids1 == ids2 and len(set(ids1)) == 2
    # same content in another file (with another line layout) -> same ids
    b = write(tmp_path / "b.csv", "\n".join([rows[0], "", rows[2], rows[1]]) + "\n")
    assert sorted(m["messageId"] for m in messages(run(b, "store"))) == sorted(ids1)
    # a changed row gets a new id; the unchanged one keeps its id
    c = write(tmp_path / "c.csv", "\n".join([rows[0], rows[1].replace("10.00", "10.01"), rows[2]]) + "\n")
    ids3 = [m["messageId"] for m in messages(run(c, "store"))]
    assert ids3[0] != ids1[0] and ids3[1] == ids1[1]
    # the source is part of the id
    other = [m["messageId"] for m in messages(run(a, "catalog"))]
    assert set(other).isdisjoint(ids1)


def test_message_id_formula_and_explicit_key(tmp_path):
    import hashlib

    f = write(tmp_path / "a.csv", "receipt,timestamp,user_id,note\nR1,2024-03-01,u1,first\n")
    [(_, msg)] = run(f, "store")
    expected = hashlib.sha256(b"store\x1fR1\x1f2024-03-01\x1fu1\x1ffirst").hexdigest()[:32]
    assert msg["messageId"] == "imp-" + expected

    mapping = load_mapping({"key": ["receipt"]}, "store")
    [(_, keyed)] = run(f, "store", mapping)
    g = write(tmp_path / "b.csv", "receipt,timestamp,user_id,note\nR1,2024-03-01,u1,edited\n")
    [(_, keyed2)] = run(g, "store", mapping)
    assert keyed["messageId"] == keyed2["messageId"] == "imp-" + hashlib.sha256(b"store\x1fR1").hexdigest()[:32]

    h = write(tmp_path / "c.csv", "timestamp,user_id\n2024-03-01,u1\n")
    [(_, err)] = run(h, "store", mapping)
    assert err == RowError(2, "receipt", err.reason)


def test_separator_inside_values_does_not_collide(tmp_path):
    f = write(tmp_path / "s.csv", "timestamp,user_id,a,b\n2024-01-01,u1,x\x1fy,\n2024-01-01,u1,x,y\x1f\n")
    a, b = messages(run(f))
    assert a["properties"] == {"a": "x\x1fy"} and b["properties"] == {"a": "x", "b": "y\x1f"}
    assert a["messageId"] != b["messageId"]


def test_default_key_uses_mapped_columns_only(tmp_path):
    mapping = load_mapping({"properties": ["store"]}, "store")
    a = write(tmp_path / "a.csv", "timestamp,user_id,store,ignored\n2024-03-01,u1,S1,x\n")
    b = write(tmp_path / "b.csv", "timestamp,user_id,store,ignored\n2024-03-01,u1,S1,y\n")
    [(_, ma)] = run(a, "store", mapping)
    [(_, mb)] = run(b, "store", mapping)
    assert ma["properties"] == {"store": "S1"}
    assert ma["messageId"] == mb["messageId"]


# ----------------------------------------------------------------------------------- timestamps, BOM


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@pytest.mark.parametrize(
    ("cell", "expected"),
    [
        ("2024-01-15 09:30:00", datetime(2024, 1, 15, 8, 30, tzinfo=UTC)),  # CET +01:00
        ("2024-07-15T09:30:00", datetime(2024, 7, 15, 7, 30, tzinfo=UTC)),  # CEST +02:00
        ("2024-07-15", datetime(2024, 7, 14, 22, 0, tzinfo=UTC)),  # midnight local
        ("2024-07-15T09:30:00Z", datetime(2024, 7, 15, 9, 30, tzinfo=UTC)),  # explicit zone wins
        ("2024-07-15T09:30:00-04:00", datetime(2024, 7, 15, 13, 30, tzinfo=UTC)),
        ("1721035800", datetime(2024, 7, 15, 9, 30, tzinfo=UTC)),  # epoch seconds are UTC
    ],
)
def test_naive_timestamps_use_the_mapping_timezone(tmp_path, cell, expected):
    f = write(tmp_path / "t.csv", f"timestamp,user_id\n{cell},u1\n")
    [(_, msg)] = run(f, "store", load_mapping({"timezone": "Europe/Paris"}, "store"))
    assert msg["timestamp"] == _iso(expected)


def test_default_timezone_is_utc(tmp_path):
    f = write(tmp_path / "t.csv", "time,user_id\n2024-07-15 09:30:00,u1\n")
    [(_, msg)] = run(f, "store")
    assert msg["timestamp"] == _iso(datetime(2024, 7, 15, 9, 30, tzinfo=UTC))


def test_bom_is_ignored(tmp_path):
    f = write(tmp_path / "bom.csv", b"\xef\xbb\xbftimestamp,user_id\r\n2024-03-01 10:00:00,u1\r\n")
    [(line, msg)] = run(f, "store")
    assert line == 2 and msg["userId"] == "u1" and "timestamp" not in msg["properties"]
    g = write(tmp_path / "bom.jsonl", b'\xef\xbb\xbf{"timestamp": "2024-03-01", "user_id": "u1"}\n')
    [(line, msg)] = run(g, "store")
    assert line == 1 and msg["userId"] == "u1"


def test_semicolon_delimiter_and_header_spaces(tmp_path):
    f = write(tmp_path / "eu.csv", "timestamp ; user_id;revenue\n2024-03-01;u1;3.20\n")
    [(_, msg)] = run(f, "store", load_mapping({"delimiter": ";"}, "store"))
    assert msg["userId"] == "u1" and msg["properties"] == {"revenue": "3.20"}


def test_csv_header_problems(tmp_path):
    with pytest.raises(ImportFileError, match="'a' appears twice"):
        run(write(tmp_path / "d.csv", "a,timestamp,a\n1,2,3\n"))
    assert run(write(tmp_path / "empty.csv", b"")) == []
    # trailing commas (unnamed columns) are fine while empty
    items = run(write(tmp_path / "t.csv", "timestamp,user_id,,\n2024-01-01,u1,,\n2024-01-01,u2,,oops\n"))
    assert isinstance(items[0][1], dict) and items[0][1]["properties"] == {}
    assert isinstance(items[1][1], RowError) and "without a header" in items[1][1].reason


# ----------------------------------------------------------------------------------- parquet


def test_parquet_round_trip(tmp_path):
    table = pa.table(
        {
            "created_at": pa.array(
                [datetime(2024, 3, 1, 10, 0), datetime(2024, 7, 1, 10, 0), None], type=pa.timestamp("us")
            ),
            "user_id": ["u1", None, "u3"],
            "loyalty_card": ["L1", "L2", None],
            "revenue": pa.array([Decimal("19.90"), Decimal("5.00"), Decimal("1.00")], type=pa.decimal128(10, 2)),
            "items": pa.array([2, 1, 1], type=pa.int64()),
            "share": [0.25, float("nan"), 1.0],
            "tags": [["a", "b"], [], None],
        }
    )
    f = tmp_path / "orders.parquet"
    pq.write_table(table, f, row_group_size=2)
    mapping = load_mapping({"timezone": "Europe/Paris", "identifiers": {"loyalty_id": "loyalty_card"}}, "store")
    items = run(f, "store", mapping)
    assert [line for line, _ in items] == [1, 2, 3]
    a, b, c = (item for _, item in items)
    assert a["timestamp"] == _iso(datetime(2024, 3, 1, 9, 0, tzinfo=UTC))
    assert a["userId"] == "u1" and a["context"]["traits"] == {"loyalty_id": "L1"}
    assert a["properties"] == {"revenue": "19.90", "items": 2, "share": 0.25, "tags": ["a", "b"]}
    assert a["context"]["source"]["file"] == "orders.parquet" and a["context"]["import_line"] == 1
    assert b["timestamp"] == _iso(datetime(2024, 7, 1, 8, 0, tzinfo=UTC))
    assert "userId" not in b and b["properties"] == {"revenue": "5.00", "items": 1, "tags": []}
    assert c == RowError(3, "created_at", c.reason)
    assert count_rows(f) == 3
    # stable ids across runs
    assert [m["messageId"] for m in messages(run(f, "store", mapping))] == [a["messageId"], b["messageId"]]


def test_parquet_aware_timestamps_and_untyped_decimal(tmp_path):
    table = pa.table(
        {
            "timestamp": pa.array([datetime(2024, 3, 1, 10, 0, tzinfo=UTC)], type=pa.timestamp("ms", tz="UTC")),
            "anonymous_id": ["anon-1"],
            "price": pa.array([Decimal("3.10")], type=pa.decimal128(6, 2)),
        }
    )
    f = tmp_path / "x.parquet"
    pq.write_table(table, f)
    [(_, msg)] = run(f, "catalog", load_mapping({"timezone": "Asia/Tokyo"}, "catalog"))
    assert msg["timestamp"] == _iso(datetime(2024, 3, 1, 10, 0, tzinfo=UTC))
    assert msg["anonymousId"] == "anon-1"
    assert msg["properties"] == {"price": "3.10"}


def test_corrupt_parquet(tmp_path):
    f = write(tmp_path / "bad.parquet", b"not parquet at all")
    with pytest.raises(ImportFileError):
        run(f)
    assert count_rows(f) is None


# ----------------------------------------------------------------------------------- count_rows, laziness


def test_count_rows(tmp_path):
    assert count_rows(DATA / "store_pos.csv") == 3
    assert count_rows(DATA / "call_center.jsonl") == 3
    assert count_rows(write(tmp_path / "n.csv", "a,b\n1,2\n3,4")) == 2
    assert count_rows(write(tmp_path / "e.csv", "")) == 0
    assert count_rows(write(tmp_path / "x.txt", "a\n")) is None
    assert count_rows(tmp_path / "missing.csv") is None


def test_iteration_is_streaming(tmp_path):
    f = tmp_path / "big.csv"
    with open(f, "w", encoding="utf-8") as fh:
        fh.write("timestamp,user_id\n")
        for i in range(50_000):
            fh.write(f"2024-03-01 10:00:00,u{i}\n")
    it = iter_import(f, "store")
    line, first = next(it)
    assert line == 2 and first["userId"] == "u0"
    it.close()


# ----------------------------------------------------------------------------------- property


_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
_row = st.tuples(
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8).filter(lambda s: s.strip()),
    st.one_of(
        st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1)).map(str),
        _text,  # usually not a timestamp: a RowError, still exactly one item for the row
    ),
    _text,
    _text,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(_row, max_size=25), fmt=st.sampled_from(["csv", "jsonl"]))
def test_one_item_per_row_in_order_with_unique_ids(rows, fmt):
    header = ["user_id", "timestamp", "note", "revenue"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows.{fmt}"
        expected_lines = []
        if fmt == "csv":
            with open(path, "w", encoding="utf-8", newline="") as fh:
                csv.writer(fh).writerow(header)
                line = 2
                for row in rows:
                    expected_lines.append(line)
                    buf = io.StringIO()
                    csv.writer(buf).writerow(row)
                    fh.write(buf.getvalue())
                    line += len(_LINE_BREAK.findall(buf.getvalue()))  # physical lines of this row
        else:
            with open(path, "w", encoding="utf-8", newline="") as fh:
                for i, row in enumerate(rows):
                    fh.write(json.dumps(dict(zip(header, row, strict=True)), ensure_ascii=False) + "\n")
                    expected_lines.append(i + 1)
        items = list(iter_import(path, "store", load_mapping({"types": {"revenue": "str"}}, "store")))

    assert len(items) == len(rows)
    lines = [line for line, _ in items]
    assert lines == expected_lines
    assert all(a < b for a, b in zip(lines, lines[1:], strict=False))
    ids: dict[tuple, str] = {}
    for row, (line, item) in zip(rows, items, strict=True):
        if isinstance(item, RowError):
            assert item.line == line and item.field == "timestamp"
            continue
        assert item["context"]["import_line"] == line
        assert item["userId"] == row[0].strip()
        ids[row] = item["messageId"]
    assert len(set(ids.values())) == len(ids)  # distinct rows (keys) -> distinct ids
