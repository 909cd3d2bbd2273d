"""Fuzz over real HTTP, on both engines: hostile input to /v1/* (every type, batch, short paths, gzip, write keys)
and to imports (CSV and JSONL through the admin API and the CLI). Never a 5xx; a 4xx is the error shape; good
events next to bad ones are always stored, and resolved; nothing accepted fails identity resolution."""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import json
import os

import orjson
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chorus.collect import imports
from chorus.store.tables import events, rejected_events
from tests.collect import hostile
from tests.collect.test_import_pipeline import chorus

# 20 examples per test and engine keep the suite fast; CHORUS_FUZZ_EXAMPLES=500 fuzzes longer locally.
FUZZ = settings(
    max_examples=int(os.environ.get("CHORUS_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PATHS = ["identify", "track", "page", "screen", "group", "alias", "i", "t", "p", "s", "g", "a"]
RAW_BODIES = [
    b"{not json", b"", b"[]", b"null", b'"x"', b"\xff\xfe{}", b"[" * 1100 + b"]" * 1100,
    b'{"batch": "x"}', b'{"batch": [' + b"[" * 2000 + b"]" * 2000 + b"]}", b'{"userId": "u", "event": "\\ud800"}',
]  # fmt: skip


def _error_shaped(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text)
    if r.status_code >= 400:
        body = r.json()
        assert set(body) <= {"code", "message", "field"} and body["code"] and body["message"], body
        assert "Traceback" not in body["message"] and "orjson" not in body["message"].lower()


def _good(tag: str, i: int) -> dict:
    ext = [{"type": "loyalty_id", "id": f"L-{tag}-{i}"}]
    return {"type": "track", "userId": f"good-{tag}-{i}", "event": "Good", "messageId": f"good-{tag}-{i}",
            "properties": {"i": i}, "context": {"externalIds": ext}}  # fmt: skip


def _resolved_and_clean(server, ws_id: str, good_ids: set[str]) -> None:
    server.settle()
    with server.engine.connect() as conn:
        rows = conn.execute(
            sa.select(events.c.message_id, events.c.profile_id).where(events.c.workspace_id == ws_id)
        ).all()
        failed = conn.execute(
            sa.select(rejected_events.c.message_id, rejected_events.c.reason).where(
                rejected_events.c.workspace_id == ws_id, rejected_events.c.reason.like("identity resolution failed%")
            )
        ).all()
    stored = {m: p for m, p in rows}
    assert good_ids <= set(stored), sorted(good_ids - set(stored))[:5]
    assert all(stored[m] for m in good_ids)  # resolved to a profile
    assert not failed, failed[:3]  # the door let nothing through that resolution cannot process


def test_tracking_api_never_5xx_and_keeps_good_events(server, http, workspace):
    tags = itertools.count()
    good_ids: set[str] = set()
    key = workspace["write_key"]

    @FUZZ
    @given(
        bad=st.lists(hostile.message(), max_size=4),
        n_good=st.integers(1, 3),
        order=st.randoms(use_true_random=False),
        how=st.sampled_from(["batch", "b", "single"]),
        gz=st.booleans(),
        top=st.fixed_dictionaries({}, optional={"context": hostile.sane_context, "integrations": st.just({"x": True}),
                                                "sentAt": st.just("2026-06-01T10:00:00Z")}),
        hostile_top=st.none() | st.fixed_dictionaries({}, optional={
            "context": hostile.json_value, "sentAt": hostile.timestamp, "integrations": hostile.json_value,
            "writeKey": hostile.scalar}),
        raw=st.none() | st.sampled_from(RAW_BODIES),
        auth=st.sampled_from(["basic", "body", "hostile"]),
        path=st.sampled_from(PATHS),
    )  # fmt: skip
    def run(bad, n_good, order, how, gz, top, hostile_top, raw, auth, path):
        tag = str(next(tags))
        good = [_good(tag, i) for i in range(n_good)]
        headers = {"Content-Type": "application/json"}
        creds = (key, "") if auth == "basic" else ("k\x00ey" if auth == "hostile" else None)

        def post(url: str, body: dict | bytes):
            data = body if isinstance(body, bytes) else hostile.dumps(
                {"writeKey": key, **body} if auth == "body" and isinstance(body, dict) else body)
            hdrs = dict(headers)
            if gz:
                data, hdrs["Content-Encoding"] = gzip.compress(data), "gzip"
            if auth == "hostile":
                return http.post(url, content=data, headers={**hdrs, "Authorization": "Basic a2V5AAA6"})
            return http.post(url, content=data, headers=hdrs, auth=creds if auth == "basic" else None)  # fmt: skip

        if raw is not None:
            r = post(f"/v1/{path}", raw)
            _error_shaped(r)
            assert r.status_code in (400, 401) or "rejected" in r.json()
        if how == "single":
            for msg in bad:
                _error_shaped(post(f"/v1/{path}", msg if isinstance(msg, dict) else {"x": msg}))
            for msg in good:
                r = post("/v1/track", msg)
                _error_shaped(r)
                if auth != "hostile":
                    assert r.status_code == 200 and "rejected" not in r.json(), r.text
                    good_ids.add(msg["messageId"])
            return
        items = [*bad, *good]
        order.shuffle(items)
        body = {"batch": items, **top, **(hostile_top or {})}
        r = post(f"/v1/{how}", body)
        _error_shaped(r)
        if auth == "hostile":
            assert r.status_code == 401
            return
        if hostile_top and "writeKey" in hostile_top and auth == "body":
            return  # the body's write key was replaced by a hostile one
        assert r.status_code == 200, r.text
        rejected = {x["index"] for x in r.json().get("rejected", [])}
        assert all(isinstance(x["reason"], str) and x["reason"] for x in r.json().get("rejected", []))
        if not hostile_top:  # a hostile batch-level context or sentAt is merged into every item
            for i, item in enumerate(items):
                if item in good:
                    assert i not in rejected, r.json()
                    good_ids.add(item["messageId"])

    run()
    _resolved_and_clean(server, workspace["id"], good_ids)


# --- imports ----------------------------------------------------------------------------------------------------
HEADER = ["receipt_no", "timestamp", "loyalty_id", "email", "revenue", "note"]
cell = hostile.text | st.sampled_from(["2026-03-01 10:00:00", "LC-1", "1.00", "ana@example.com"])
json_cell = hostile.json_value | cell


def _good_row(tag: str, i: int) -> dict:
    return {"receipt_no": f"G-{tag}-{i}", "timestamp": "2026-03-01 10:00:00", "loyalty_id": f"LC-{tag}",
            "email": "", "revenue": "1.00", "note": "ok"}  # fmt: skip


def _csv(rows: list[list[str] | str]) -> bytes:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(HEADER)
    for row in rows:
        if isinstance(row, str):
            out.write(row + "\n")
        else:
            w.writerow(row)
    return out.getvalue().encode("utf-8", "surrogatepass")  # a lone surrogate becomes bytes that are not UTF-8


def _jsonl(rows: list[object]) -> bytes:
    lines = []
    for row in rows:
        lines.append(row if isinstance(row, bytes) else hostile.dumps(row))
    return b"\n".join(lines) + b"\n"


raw_line = st.one_of(
    st.text(st.characters(exclude_characters='"\r\n'), max_size=30),
    st.sampled_from(["\x00", "a,b", ",,,,,,,,,", "G,2026-03-01 10:00:00,LC-x,,1.00,\x00note"]),
)
hostile_json_line = st.one_of(
    st.fixed_dictionaries({k: json_cell for k in HEADER[:3]}, optional={k: json_cell for k in HEADER[3:]}),
    hostile.json_value,
    st.sampled_from([b"[" * 5000 + b"]" * 5000, b'{"receipt_no": ' + b"[" * 5000 + b"]" * 5000 + b"}", b"{x",
                     b"\xff\xfe", b'{"receipt_no": "R", "timestamp": "2026-03-01", "loyalty_id": "L\\u0000"}',
                     b'{"receipt_no": "R", "timestamp": "1999-03-01", "loyalty_id": "L"}']),
)  # fmt: skip


def _stored_receipts(engine, ws_id: str) -> set[str]:
    with engine.connect() as conn:
        payloads = conn.execute(sa.select(events.c.payload).where(events.c.workspace_id == ws_id)).scalars().all()
    return {(p.get("properties") or {}).get("receipt_no") for p in payloads}


def test_imports_never_5xx_and_keep_good_rows(server, http, workspace):
    tags = itertools.count()
    auth = {"Authorization": f"Bearer {workspace['api_key']}"}
    good_receipts: set[str] = set()

    @FUZZ
    @given(
        fmt=st.sampled_from(["csv", "jsonl"]),
        bad_csv=st.lists(st.lists(cell, min_size=6, max_size=6) | st.lists(cell, max_size=8) | raw_line, max_size=4),
        bad_json=st.lists(hostile_json_line, max_size=4),
        n_good=st.integers(1, 3),
        order=st.randoms(use_true_random=False),
    )  # fmt: skip
    def run(fmt, bad_csv, bad_json, n_good, order):
        tag = str(next(tags))
        good = [_good_row(tag, i) for i in range(n_good)]
        if fmt == "csv":
            rows: list = [*bad_csv, *([g[h] for h in HEADER] for g in good)]
            order.shuffle(rows)
            content = _csv(rows)
        else:
            rows = [*bad_json, *good]
            order.shuffle(rows)
            content = _jsonl(rows)
        r = http.post("/api/imports", files={"file": (f"fuzz.{fmt}", content)}, data={"source": "store"},
                      headers=auth)  # fmt: skip
        _error_shaped(r)
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["rows"] >= n_good and res["imported"] + res["duplicates"] >= n_good, res
        good_receipts.update(g["receipt_no"] for g in good)

    run()
    assert good_receipts <= _stored_receipts(server.engine, workspace["id"])
    server.settle()
    with server.engine.connect() as conn:
        assert not conn.execute(
            sa.select(rejected_events.c.reason).where(rejected_events.c.reason.like("identity resolution failed%"))
        ).all()
        assert conn.execute(sa.select(sa.func.count()).select_from(events).where(events.c.profile_id.is_(None))
                            ).scalar_one() == 0  # fmt: skip


def test_cli_import_of_hostile_files(db_url, engine, workspace, tmp_path):
    """The issue's import examples: a JSONL line nested 5,000 deep (through the CLI), NUL in ids and values (JSONL
    and CSV), a date before 2000."""
    jsonl = tmp_path / "calls.jsonl"
    jsonl.write_bytes(_jsonl([
        _good_row("c", 1),
        b'{"receipt_no": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        {"receipt_no": "N1", "timestamp": "2026-03-01 10:00:00", "loyalty_id": "LC\x00-1", "note": "x"},
        {"receipt_no": "N2\x00", "timestamp": "2026-03-01 10:00:00", "loyalty_id": "LC-2", "note": "x\x00y"},
        {"receipt_no": "N3", "timestamp": "2026-03-01 10:00:00", "loyalty_id": "LC-3", "note": hostile.nested(300)},
        _good_row("c", 2),
    ]))  # fmt: skip
    r = chorus("import", "events", str(jsonl), "--source", "store", "-w", workspace["name"], "--json", db=db_url)
    out = json.loads(r.stdout)
    assert r.returncode == 1 and (out["rows"], out["imported"], out["failed"]) == (6, 2, 4), out
    lines = {e["line"]: e for e in out["errors"]}
    assert "nested deeper than 64" in lines[2]["reason"]
    assert lines[3]["field"] == "context.traits.loyalty_id" and "NUL" in lines[3]["reason"]
    assert lines[4]["field"] == "properties.receipt_no" or "NUL" in lines[4]["reason"]
    assert lines[5]["field"].startswith("properties.note")
    csv_file = tmp_path / "pos.csv"
    csv_file.write_bytes(_csv([
        [_good_row("d", 1)[h] for h in HEADER],
        ["R\x00", "2026-03-01 10:00:00", "LC-9", "", "1.00", "n"],
        ["R2", "1999-03-01 10:00:00", "LC-9", "", "1.00", "n"],
        [_good_row("d", 2)[h] for h in HEADER],
    ]))  # fmt: skip
    out = imports.run_import(engine, workspace["id"], str(csv_file), "store")  # what the CLI runs
    assert (out["rows"], out["imported"], out["failed"]) == (4, 2, 2), out
    lines = {e["line"]: e for e in out["errors"]}
    assert "NUL" in lines[3]["reason"] and lines[4]["field"] == "timestamp" and "2000" in lines[4]["reason"]
    assert {"G-c-1", "G-c-2", "G-d-1", "G-d-2"} <= _stored_receipts(engine, workspace["id"])
    assert orjson.dumps(out)  # the report itself is clean JSON
