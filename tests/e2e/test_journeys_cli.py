"""`chorus journeys publish|list|show|pause|resume|stop|broadcast` as an operator runs them: a journey file
published (errors name the node and field, exit code 2), a dry run with a migration, the status controls and their
refusals, a broadcast checked against the workspace."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "src"))
ENV = {**os.environ, "PYTHONPATH": SRC}

TAG = """
id: tag
name: Tag new sign-ups
entry: {event: {event: Signed Up}}
start: wait
nodes:
  wait: {type: delay, for: 1h, next: tag}
  tag: {type: update_trait, trait: onboarded, value: true, next: done}
  done: {type: exit}
"""


def chorus(*args):
    return subprocess.run([sys.executable, "-m", "chorus.cli", *args], capture_output=True, text=True, timeout=120,
                          env=ENV)  # fmt: skip


def test_publish_control_and_broadcast_from_the_command_line(tmp_path):
    db = f"sqlite:///{tmp_path / 'chorus.db'}"
    r = chorus("workspace", "create", "shop", "--db", db)
    assert r.returncode == 0, r.stderr
    ws = ("-w", "shop", "--db", db)

    bad = tmp_path / "bad.yaml"
    bad.write_text(TAG.replace("tag: {type: update_trait", "tag: {type: message, template: nope, kind: marketing"
                               "").replace(", trait: onboarded, value: true", ""))  # fmt: skip
    r = chorus("journeys", "publish", str(bad), *ws)
    assert r.returncode == 2 and "nodes.tag.template" in r.stderr and "does not exist" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr

    good = tmp_path / "tag.yaml"
    good.write_text(TAG)
    r = chorus("journeys", "publish", str(good), *ws)
    assert r.returncode == 0 and "published tag version 1" in r.stdout, r.stderr
    r = chorus("journeys", "publish", str(good), *ws, "--dry-run", "--migrate", "wait=wait", "--json")
    out = json.loads(r.stdout)
    assert (out["dry_run"], out["version"], out["people_inside"]) == (True, 2, 0)
    r = chorus("journeys", "publish", str(good), *ws, "--migrate", "wait")
    assert r.returncode == 2 and "OLD=NEW" in r.stderr

    r = chorus("journeys", "list", *ws)
    assert r.returncode == 0 and r.stdout.split("\t")[:5] == ["tag", "journey", "event", "active", "v1"]
    r = chorus("journeys", "show", "tag", *ws, "--json")
    assert json.loads(r.stdout)["definition"]["nodes"]["wait"]["for"] == "1h"

    r = chorus("journeys", "stats", "tag", *ws)
    assert r.returncode == 0 and r.stdout.startswith("tag: 0 entered") and "wait" in r.stdout, r.stderr
    for action, status in (("pause", "paused"), ("resume", "active"), ("stop", "stopped")):
        r = chorus("journeys", action, "tag", *ws)
        assert r.returncode == 0 and r.stdout.strip() == f"tag: {status}", r.stderr
    r = chorus("journeys", "resume", "tag", *ws)
    assert r.returncode == 2 and "is stopped" in r.stderr
    r = chorus("journeys", "pause", "nope", *ws)
    assert r.returncode == 2 and "not found" in r.stderr

    b = tmp_path / "b.json"
    b.write_text(json.dumps({"id": "spring", "template": "spring", "segment": "newsletter"}))
    r = chorus("journeys", "broadcast", str(b), *ws, "--dry-run")
    assert r.returncode == 2 and "segment: segment 'newsletter' does not exist" in r.stderr, r.stderr
    b.write_text(json.dumps({"id": "spring", "template": "spring", "holdout": 10}))
    r = chorus("journeys", "broadcast", str(b), *ws)
    assert r.returncode == 2 and "holdout" in r.stderr and "goal" in r.stderr
