"""`chorus segments ...` as a user runs it, on both engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

from chorus import workspaces
from tests.identity.helpers import resolve, send

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))


def chorus(*args, db):
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run([sys.executable, "-m", "chorus.cli", *args, "--db", db], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


def test_create_list_show_members_export_recompute(db_url, engine, tmp_path):
    w = workspaces.create(engine, "cli-shop")
    now = datetime.now(UTC)
    send(engine, w["id"], [
        {"type": "track", "userId": f"u{i}", "event": "Order Completed", "messageId": f"o{i}",
         "timestamp": (now - timedelta(days=i * 20)).isoformat(), "properties": {"total": 10 * i}}
        for i in range(1, 4)
    ], received_at=now)  # fmt: skip
    resolve(engine)
    rule = tmp_path / "buyers.yaml"
    rule.write_text("performed:\n  event: Order Completed\n  window: 30d\n")
    r = chorus("segments", "preview", "--rule", str(rule), "-w", "cli-shop", "--json", db=db_url)
    assert r.returncode == 0, r.stderr
    (seen,) = json.loads(r.stdout)["sample"]
    assert json.loads(r.stdout)["count"] == 1 and seen["identifiers"]["user_id"] == ["u1"]
    r = chorus("segments", "preview", "--rule", str(rule), "-w", "cli-shop", "--sample", "500", db=db_url)
    assert r.returncode == 2 and "sample" in r.stderr
    r = chorus("segments", "create", "recent-buyers", "--rule", str(rule), "-w", "cli-shop", "--name", "Recent",
               "--json", db=db_url)  # fmt: skip
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert (made["members"], made["status"], made["name"]) == (1, "ready", "Recent")

    r = chorus("segments", "list", "-w", "cli-shop", db=db_url)
    assert r.returncode == 0 and "recent-buyers\t1 members\tready\tRecent" in r.stdout
    r = chorus("segments", "show", "recent-buyers", "-w", "cli-shop", "--json", db=db_url)
    assert json.loads(r.stdout)["rule"] == {"performed": {"event": "Order Completed", "window": "30d"}}
    r = chorus("segments", "members", "recent-buyers", "-w", "cli-shop", "--json", db=db_url)
    (member,) = json.loads(r.stdout)["members"]
    out = tmp_path / "members.csv"
    r = chorus("segments", "export", "recent-buyers", "-w", "cli-shop", "--out", str(out), db=db_url)
    assert r.returncode == 0 and out.read_text().splitlines()[1].startswith(member["profile_id"] + ",u1,")

    rule.write_text("performed:\n  event: Order Completed\n  window: 50d\n")  # a wider window: one more buyer
    r = chorus("segments", "create", "recent-buyers", "--rule", str(rule), "-w", "cli-shop", "--json", db=db_url)
    assert json.loads(r.stdout)["members"] == 2 and json.loads(r.stdout)["version"] == 2
    r = chorus("segments", "recompute", "recent-buyers", "-w", "cli-shop", "--json", db=db_url)
    assert json.loads(r.stdout) == {"segment_id": "recent-buyers", "entered": 0, "exited": 0}


def test_a_bad_rule_file_names_the_node_and_exits_2(db_url, engine, tmp_path):
    workspaces.create(engine, "cli-bad")
    rule = tmp_path / "bad.json"
    rule.write_text(json.dumps({"and": [{"performed": {"event": "X", "times": {"gte": -1}}}]}))
    r = chorus("segments", "create", "s", "--rule", str(rule), "-w", "cli-bad", db=db_url)
    assert r.returncode == 2 and "rule.and[0].performed.times" in r.stderr, r.stderr
    r = chorus("segments", "show", "missing", "-w", "cli-bad", db=db_url)
    assert r.returncode == 2 and "no segment 'missing'" in r.stderr
