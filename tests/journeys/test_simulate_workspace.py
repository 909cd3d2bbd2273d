"""`chorus journeys simulate --events FILE --workspace W` reads the workspace as a backtest does: its time zone for
people without one (an outside probe: the events-file mode ran a 09:00 local delay at 09:00 UTC while the live
runtime, with the workspace in New York, waited for 09:00 there), its topics, identity and trait policies, and
its segments and templates unless files are given."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import yaml

from chorus import workspaces
from tests.e2e.test_journey_simulate_cli import ENV

JOURNEY = {"id": "morning", "entry": {"event": {"event": "Signed Up"}}, "start": "wait",
           "nodes": {"wait": {"type": "delay", "at": "09:00", "next": "done"}, "done": {"type": "exit"}}}


def test_events_mode_takes_the_workspace_zone_for_a_person_without_one(db_url, engine, tmp_path):
    w = workspaces.create(engine, "sim-zone")
    workspaces.update_settings(engine, w["id"], {"messaging": {"timezone": "America/New_York"}})
    (tmp_path / "j.yaml").write_text(yaml.safe_dump(JOURNEY))
    signed = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 07:00 in New York: 09:00 there is 14:00Z
    (tmp_path / "e.jsonl").write_text(json.dumps({"type": "track", "userId": "u1", "event": "Signed Up",
                                                  "timestamp": signed.isoformat()}) + "\n")  # fmt: skip

    def waiting_at(until: str, *ws) -> int:
        r = subprocess.run([sys.executable, "-m", "chorus.cli", "journeys", "simulate", str(tmp_path / "j.yaml"),
                            "--events", str(tmp_path / "e.jsonl"), "--until", until, "--json", "--db", db_url, *ws],
                           capture_output=True, text=True, timeout=120, env=ENV)  # fmt: skip
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["nodes"]["wait"]["waiting"]

    assert waiting_at("2026-03-02T13:30:00Z") == 1 and waiting_at("2026-03-02T13:30:00Z", "-w", "sim-zone") == 1
    assert waiting_at("2026-03-02T15:00:00Z", "-w", "sim-zone") == 0  # after 09:00 in New York
    assert waiting_at("2026-03-03T08:30:00Z", "-w", "sim-zone") == 0
    assert waiting_at("2026-03-02T13:30:00Z") == 1  # without the workspace: UTC, 09:00Z the next day
    assert waiting_at("2026-03-03T08:30:00Z") == 1 and waiting_at("2026-03-03T09:30:00Z") == 0
