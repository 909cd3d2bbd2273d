"""`chorus journeys simulate` as a user runs it: a journey file over an events file (a table, or --json), errors
that name the file and line with exit code 2, and a backtest over a store filled by `chorus import events` and
resolved by `chorus worker`; nothing is sent and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from chorus.store.tables import events, journey_instances, messages
from tests.conftest import wait_until

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
CART = str(Path(__file__).parent.parent / "journeys" / "definitions" / "abandoned_cart.yaml")
ENV = {**os.environ, "PYTHONPATH": SRC, "CHORUS_WORKER_POLL_SECONDS": "0.05"}


def chorus(*args):
    return subprocess.run([sys.executable, "-m", "chorus.cli", *args], capture_output=True, text=True, timeout=120,
                          env=ENV)  # fmt: skip


def test_simulate_an_events_file_as_a_table_and_as_json(tmp_path):
    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    lines = []
    for i in range(20):
        at = t0 + timedelta(minutes=i)
        lines.append({"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com"},
                      "timestamp": at.isoformat()})  # fmt: skip
        lines.append({"type": "track", "userId": f"u{i}", "event": "Product Added", "properties": {"cart_id": f"c{i}"},
                      "timestamp": (at + timedelta(seconds=5)).isoformat(), "context": {"channel": "web"}})  # fmt: skip
        if i % 2:  # bought at the till within the hour
            paid = (at + timedelta(minutes=30)).isoformat()
            lines.append({"type": "track", "userId": f"u{i}", "event": "Order Completed", "timestamp": paid,
                          "properties": {"cart_id": f"c{i}"}, "context": {"channel": "store"}})  # fmt: skip
    evs = tmp_path / "events.jsonl"
    evs.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    tpl = tmp_path / "templates.yaml"
    tpl.write_text("cart_reminder: [email, sms]\ncart_reminder_2: [email]\n")

    r = chorus("journeys", "simulate", CART, "--events", str(evs), "--templates", str(tpl), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["people"], doc["entries"], doc["waiting"]) == (20, 20, 0)
    assert doc["conversions"]["total"] == 10 and doc["exits"]["goal reached"] == 10
    arms = doc["conversions"]["by_arm"]["arm"]
    treated = arms["treatment"]["entered"] - arms["treatment"]["converted"]
    assert arms.get("holdout", {"messages": 0})["messages"] == 0
    # each treated cart not bought: a reminder, a day later the second one, by email (the only address)
    assert doc["messages"]["by_channel"] == {"email": 2 * treated}
    for nid, n in doc["nodes"].items():
        assert n["entered"] == n["passed"] + n["waiting"] + n["exited"], nid

    r = chorus("journeys", "simulate", CART, "--events", str(evs), "--until", "2026-03-02T09:45:00Z")
    assert r.returncode == 0, r.stderr
    # at 09:45 the orders of u1 to u15 are in (8 carts); the 12 others wait for theirs, the clock stopped
    assert "abandoned_cart" in r.stdout and "wait_cart" in r.stdout and "12 waiting now, 8 conversions" in r.stdout


def test_errors_name_the_file_and_line_and_exit_2(tmp_path):
    evs = tmp_path / "events.jsonl"
    evs.write_text('{"type": "track", "userId": "a", "event": "X", "timestamp": "2026-03-02T09:00:00Z"}\n'
                   '{"type": "track", "userId": "a", "timestamp": "2026-03-02T09:00:00Z"}\n')  # fmt: skip
    r = chorus("journeys", "simulate", CART, "--events", str(evs))
    assert r.returncode == 2 and "events.jsonl line 2: event: track requires a non-empty event name" in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    bad = tmp_path / "j.json"
    bad.write_text(json.dumps({"id": "x", "entry": {"event": {"event": "A"}}, "start": "a",
                               "nodes": {"a": {"type": "message", "template": "t", "next": "nowhere"}}}))  # fmt: skip
    r = chorus("journeys", "simulate", str(bad), "--events", str(evs))
    assert r.returncode == 2 and "j.json: nodes.a.next" in r.stderr and "Traceback" not in r.stderr
    r = chorus("journeys", "simulate", CART)
    assert r.returncode == 2 and "--events" in r.stderr
    r = chorus("journeys", "simulate", CART, "--events", str(tmp_path / "none.jsonl"))
    assert r.returncode == 2 and "none.jsonl" in r.stderr


def test_backtest_over_imported_events_writes_and_sends_nothing(db_url, engine, tmp_path):
    r = chorus("workspace", "create", "sim-shop", "--db", db_url)
    assert r.returncode == 0, r.stderr
    now = datetime.now(UTC)
    rows = []
    for i in range(6):
        at = now - timedelta(hours=5, minutes=i)
        rows.append({"user_id": f"u{i}", "event": "Product Added", "cart_id": f"c{i}", "timestamp": at.isoformat()})
        if i % 2 == 0:  # three carts bought in the store 20 minutes later
            rows.append({"user_id": f"u{i}", "event": "Order Completed", "cart_id": f"c{i}",
                         "timestamp": (at + timedelta(minutes=20)).isoformat()})  # fmt: skip
    (tmp_path / "pos.jsonl").write_text("\n".join(json.dumps(x) for x in rows) + "\n")
    (tmp_path / "map.json").write_text(json.dumps({"event": {"column": "event"}}))
    r = chorus("import", "events", str(tmp_path / "pos.jsonl"), "--source", "store", "-w", "sim-shop", "--mapping",
               str(tmp_path / "map.json"), "--db", db_url, "--json")  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout)["imported"] == 9, r.stdout + r.stderr
    worker = subprocess.Popen([sys.executable, "-m", "chorus.cli", "worker", "--db", db_url], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def resolved():
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(events).where(
                events.c.profile_id.is_not(None))).scalar() == 9  # fmt: skip

    try:
        wait_until(resolved, timeout=60)
    finally:
        worker.terminate()
        worker.wait(20)

    def counts():
        with engine.connect() as conn:
            return [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar()
                    for t in (events, messages, journey_instances)]  # fmt: skip

    before = counts()
    # the workspace has no templates: checked as a publish checks it, the backtest names the missing one (an outside
    # probe: it reported messages on channel "none" as if all were well)
    r = chorus("journeys", "simulate", CART, "--backtest", "1", "-w", "sim-shop", "--db", db_url, "--json")
    assert r.returncode == 2 and "cart_reminder" in r.stderr, r.stdout + r.stderr
    # with the templates given as a file, it runs on them: each treated cart not bought gets its reminder (on no
    # channel: the till's customers left no address)
    (tmp_path / "tpl.yaml").write_text("cart_reminder: [email]\ncart_reminder_2: [email]\n")
    r = chorus("journeys", "simulate", CART, "--backtest", "1", "-w", "sim-shop", "--db", db_url, "--json",
               "--templates", str(tmp_path / "tpl.yaml"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (doc["people"], doc["entries"], doc["conversions"]["total"]) == (6, 6, 3)
    assert doc["exits"] == {"goal reached": 3} and doc["waiting"] == 3  # the others wait: wait_click or a holdout
    arms = doc["conversions"]["by_arm"]["arm"]
    treated = arms["treatment"]["entered"] - arms["treatment"]["converted"]
    assert doc["messages"]["by_channel"] == ({"none": treated} if treated else {})
    assert arms.get("holdout", {"messages": 0})["messages"] == 0
    assert counts() == before  # nothing stored, nothing queued
    r = chorus("journeys", "simulate", CART, "--backtest", "1", "--db", db_url)
    assert r.returncode == 2 and "--workspace" in r.stderr
