"""Offline import through the CLI and the admin API: events land on the same profiles as online events."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).parent / "data"


def chorus(*args, db: str, check=True):
    r = subprocess.run(
        [sys.executable, "-m", "chorus.cli", *args, "--db", db], capture_output=True, text=True, timeout=120
    )
    if check and r.returncode not in (0, 1):
        raise AssertionError(r.stderr)
    return r


def test_cli_import_is_idempotent_and_reports_bad_rows(db_url, engine, tmp_path, workspace):
    csv = tmp_path / "pos.csv"
    csv.write_text(
        "receipt_no,timestamp,loyalty_id,email,revenue,currency\n"
        "R1,2026-03-01 10:00:00,LC-1,ana@example.com,19.90,EUR\n"
        "R2,not a date,LC-2,,5.00,EUR\n"
        "R3,2026-03-01 11:00:00,,,7.00,EUR\n"
        "R4,2026-03-01 12:00:00,LC-2,bo@example.com,abc,EUR\n"
        "R5,2026-03-01 13:00:00,,bad-email,3.00,EUR\n"
        "R6,2026-03-01 14:00:00,LC-3,,12.00,EUR\n"
    )
    r = chorus("import", "events", str(csv), "--source", "store", "-w", workspace["name"], "--json", db=db_url)
    out = json.loads(r.stdout)
    assert r.returncode == 1  # some rows failed
    assert (out["rows"], out["imported"], out["duplicates"], out["failed"]) == (6, 2, 0, 4)
    lines = {e["line"]: e for e in out["errors"]}
    assert set(lines) == {3, 4, 5, 6}
    assert lines[3]["field"] == "timestamp" and lines[5]["field"] == "revenue"
    assert "email" in lines[6]["reason"]
    again = json.loads(chorus("import", "events", str(csv), "--source", "store", "-w", workspace["name"], "--json",
                              db=db_url).stdout)  # fmt: skip
    assert (again["imported"], again["duplicates"]) == (0, 2)
    human = chorus("import", "events", str(csv), "--source", "store", "-w", workspace["name"], db=db_url)
    assert "line 3:" in human.stdout and "2 already there" in human.stdout


def test_cli_errors_name_the_problem(db_url, workspace, tmp_path):
    r = chorus(
        "import",
        "events",
        str(tmp_path / "missing.csv"),
        "--source",
        "store",
        "-w",
        workspace["name"],
        db=db_url,
        check=False,
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
    bad_map = tmp_path / "m.json"
    bad_map.write_text('{"evnt": "X"}')
    f = tmp_path / "x.csv"
    f.write_text("email,timestamp\na@example.com,2026-01-01\n")
    r = chorus("import", "events", str(f), "--source", "store", "-w", workspace["name"], "--mapping", str(bad_map),
               db=db_url, check=False)  # fmt: skip
    assert r.returncode == 2 and "evnt" in r.stderr


def test_api_import_lands_on_the_online_profile(http, server, workspace):
    # The shopper is known online by email; the store knows her loyalty card and email.
    r = http.post("/v1/identify", json={"userId": "web-9", "traits": {"email": "ana@example.com"}},
                  auth=(workspace["server_write_key"], ""))  # fmt: skip
    assert r.status_code == 200
    mapping = {"identifiers": {"loyalty_id": "card"}, "key": ["receipt_no"]}
    content = ("receipt_no,timestamp,card,email,revenue,currency,store\n"
               "R1,2026-03-01T10:00:00Z,LC-1,ana@example.com,19.90,EUR,Utrecht\n"
               "R2,2026-03-02T10:00:00Z,LC-1,,5.00,EUR,Utrecht\n"
               "R3,yesterday,LC-1,,5.00,EUR,Utrecht\n")  # fmt: skip
    auth = {"Authorization": f"Bearer {workspace['api_key']}"}
    r = http.post("/api/imports", files={"file": ("pos.csv", content, "text/csv")},
                  data={"source": "store", "mapping": json.dumps(mapping)}, headers=auth)  # fmt: skip
    assert r.status_code == 200, r.text
    res = r.json()
    assert (res["imported"], res["failed"]) == (2, 1) and res["errors"][0]["line"] == 4
    assert http.get(f"/api/imports/{res['id']}", headers=auth).json()["errors"] == res["errors"]
    server.settle()
    p = http.get("/api/profiles", params={"loyalty_id": "LC-1"}, headers=auth).json()
    assert p["identifiers"]["user_id"] == ["web-9"]
    assert p["channels"]["store"]["count"] == 2
    events = http.get(f"/api/profiles/{p['id']}/events", headers=auth).json()["events"]
    store = [e for e in events if e["channel"] == "store"]
    assert {e["event"] for e in store} == {"Order Completed"} and store[0]["properties"]["revenue"] == "5.00"
    r = http.post(
        "/api/imports", files={"file": ("pos.txt", "x", "text/plain")}, data={"source": "store"}, headers=auth
    )
    assert r.status_code == 400 and r.json()["field"] == "file"
    r = http.post("/api/imports", files={"file": ("pos.csv", content, "text/csv")}, data={"source": "store",
                  "mapping": "{"}, headers=auth)  # fmt: skip
    assert r.status_code == 400 and r.json()["field"] == "mapping"


def test_sample_files_import(db_url, workspace):
    for name, source in [("store_pos.csv", "store"), ("call_center.jsonl", "call_center"),
                         ("catalog_mailing.csv", "catalog")]:  # fmt: skip
        r = chorus(
            "import", "events", str(DATA / name), "--source", source, "-w", workspace["name"], "--json", db=db_url
        )
        out = json.loads(r.stdout)
        assert out["rows"] > 0 and out["imported"] + out["failed"] == out["rows"], out
