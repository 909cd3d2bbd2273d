"""A brand's first day, only through the public interfaces: the CLI and HTTP.

`chorus serve` on a fresh store, a visitor browsing the web shop anonymously, signing up in the app, buying in
a physical store (POS file import) and calling the call centre — one profile, one timeline across channels —
then the event lake that measurement reads.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import httpx
import pyarrow.dataset as ds
import pytest

from tests.conftest import free_port, wait_until


def ago(seconds: int) -> str:
    """A moment of the last few minutes (negative: a few seconds from now). Browsers and apps send their events as
    they happen: a claim's identity links sort at its arrival (decision 0022), so the store's purchase and the call
    come after the sign-up that this test sends now."""
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(*args, db, env=None):
    return subprocess.run([sys.executable, "-m", "chorus.cli", *args, "--db", db], capture_output=True, text=True,
                          timeout=120, env=env)  # fmt: skip


@pytest.fixture
def served(db_url, tmp_path):
    port = free_port()
    env = {**os.environ, "CHORUS_WORKER_POLL_SECONDS": "0.05"}
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "chorus.cli", "serve", "--port", str(port), "--db", db_url],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(base + "/healthz").status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=30)
        log.seek(0)
        yield base, log.read()
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_first_day_of_an_omnichannel_brand(db_url, served, tmp_path):
    base, startup = served
    # serve created the default workspace on first run and printed its keys
    keys = dict(re.findall(r"(write_key|server_write_key|api_key): (\S+)", startup))
    assert set(keys) == {"write_key", "server_write_key", "api_key"}
    # and a second workspace comes from the CLI
    made = run("workspace", "create", "outlet", "--json", db=db_url)
    assert made.returncode == 0, made.stderr
    outlet = json.loads(made.stdout)
    assert set(outlet) >= {"id", "name", "write_key", "api_key"}
    admin = {"Authorization": f"Bearer {keys['api_key']}"}
    c = httpx.Client(base_url=base, timeout=30)

    # 1. web: anonymous browsing (as analytics.js sends it: text/plain, key in the body)
    for i, path in enumerate(["/", "/laptops", "/laptops/pro-14"]):
        body = {"type": "page", "anonymousId": "browser-1", "messageId": f"w{i}", "writeKey": keys["write_key"],
                "context": {"page": {"path": path}, "userAgent": "Mozilla/5.0"},
                "timestamp": ago(300 - i)}  # fmt: skip
        assert c.post("/v1/p", content=json.dumps(body), headers={"Content-Type": "text/plain"}).status_code == 200
    # 2. app: signs up (the app sends its own anonymous id too)
    r = c.post("/v1/batch", auth=(keys["write_key"], ""), json={"batch": [
        {"type": "identify", "userId": "C-100", "anonymousId": "phone-1", "messageId": "a1",
         "timestamp": ago(240), "context": {"app": {"name": "Shop"}, "os": {"name": "iOS"}},
         "traits": {"email": "noor@example.com", "phone": "+31 6 1111 2222", "first_name": "Noor"}},
    ]})  # fmt: skip
    assert r.status_code == 200
    # 3. the web visitor logs in: the anonymous web history joins the profile
    r = c.post("/v1/identify", auth=(keys["write_key"], ""), json={
        "userId": "C-100", "anonymousId": "browser-1", "messageId": "w-login", "timestamp": ago(180),
        "context": {"userAgent": "Mozilla/5.0"}})  # fmt: skip
    assert r.status_code == 200
    # 4. store: the POS export names her by email; 5. call centre: by phone
    pos = tmp_path / "pos.csv"
    pos.write_text("receipt_no,timestamp,email,revenue,currency,store\n"
                   f"R-1,{ago(-2)[:19].replace('T', ' ')},NOOR@example.com,1299.00,EUR,Amsterdam\n")  # fmt: skip
    calls = tmp_path / "calls.jsonl"
    calls.write_text(
        json.dumps({"timestamp": ago(-3), "phone": "+31611112222", "topic": "warranty"}) + "\n"
    )
    for f, src in [(pos, "store"), (calls, "call_center")]:
        out = run("import", "events", str(f), "--source", src, "-w", "default", "--json", db=db_url)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["imported"] == 1

    def profile():
        r = c.get("/api/profiles", params={"email": "noor@example.com"}, headers=admin)
        if r.status_code != 200:
            return None
        p = r.json()
        return p if sum(ch["count"] for ch in p["channels"].values()) == 7 else None

    p = wait_until(profile, timeout=30)
    assert p["channels_used"] == ["app", "call_center", "store", "web"]
    assert p["last_channel"] == "call_center"
    assert set(p["identifiers"]["anonymous_id"]) == {"browser-1", "phone-1"}
    timeline = c.get(f"/api/profiles/{p['id']}/events", headers=admin).json()["events"]
    assert [e["channel"] for e in timeline] == ["call_center", "store", "web", "app", "web", "web", "web"]
    # the outlet workspace sees none of it
    r = c.get(
        "/api/profiles", params={"email": "noor@example.com"}, headers={"Authorization": f"Bearer {outlet['api_key']}"}
    )
    assert r.status_code == 404
    # measure: the lake has every channel's events, the store's revenue included; a second run adds nothing
    out = run("lake", "export", "--out", str(tmp_path / "lake"), "--settle", "0", "--json", db=db_url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["events"] >= 7
    lake_events = ds.dataset(tmp_path / "lake" / "events", partitioning="hive").to_table().to_pylist()
    mine = [e for e in lake_events if e["profile_id"] == p["id"]]
    expected = [ch for ch, stats in p["channels"].items() for _ in range(stats["count"])]
    assert sorted(e["channel"] for e in mine) == sorted(expected)
    assert sum(e["revenue"] or 0 for e in mine) == 1299.0
    again = run("lake", "export", "--out", str(tmp_path / "lake"), "--settle", "0", "--json", db=db_url)
    assert json.loads(again.stdout)["events"] == 0
    # erasure on request
    assert c.delete(f"/api/profiles/{p['id']}", headers=admin).status_code == 200
    assert c.get("/api/profiles", params={"email": "noor@example.com"}, headers=admin).status_code == 404
    time.sleep(0.2)
    c.close()
