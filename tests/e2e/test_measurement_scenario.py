"""Scenario: a brand measures. Store receipts and call-centre calls are imported, web visits tracked, the lake
exported; then attribution and lifetime value come from the CLI and from the API alike, and the lifetime values
land on the profiles as computed traits. Only public interfaces: the CLI and HTTP."""

from __future__ import annotations

import json
import random
import time
from datetime import datetime, timedelta

import httpx

from tests.conftest import wait_until
from tests.e2e.test_omnichannel_scenario import run, served  # noqa: F401  (fixture)

START = datetime(2026, 1, 5, 10, 0)


def _history(rng: random.Random, n: int):
    """Receipts of n customers with different buying rates and lifetimes, and calls before some purchases."""
    receipts, calls = [], []
    for i in range(n):
        rate = rng.gammavariate(0.8, 1 / 20)  # purchases per day while active
        life = rng.expovariate(1 / 120)  # days until the customer lapses
        spend = rng.gammavariate(6, 8)  # this customer's typical receipt
        t = rng.uniform(0, 60)
        first = True
        while t < min(life, 170) or first:
            at = START + timedelta(days=t)
            receipts.append(
                (f"R-{i}-{len(receipts)}", at, f"c{i}@example.com", round(spend * rng.uniform(0.7, 1.3), 2))
            )
            if rng.random() < 0.4:
                calls.append({"timestamp": (at - timedelta(hours=20)).isoformat() + "Z", "email": f"c{i}@example.com",
                              "topic": "advice"})  # fmt: skip
            first = False
            t += rng.expovariate(rate) if rate > 0 else 1e9
    return receipts, calls


def test_a_brand_measures_its_channels_and_customers(db_url, served, tmp_path):  # noqa: F811
    base, startup = served
    api_key = dict(__import__("re").findall(r"(api_key): (\S+)", startup))["api_key"]
    admin = {"Authorization": f"Bearer {api_key}"}
    receipts, calls = _history(random.Random(5), 150)
    pos = tmp_path / "pos.csv"
    pos.write_text("receipt_no,timestamp,email,revenue,currency\n" + "".join(
        f"{r},{at:%Y-%m-%d %H:%M:%S},{email},{rev:.2f},EUR\n" for r, at, email, rev in receipts))  # fmt: skip
    (tmp_path / "calls.jsonl").write_text("".join(json.dumps(c) + "\n" for c in calls))
    for f, src in [(pos, "store"), (tmp_path / "calls.jsonl", "call_center")]:
        out = run("import", "events", str(f), "--source", src, "-w", "default", "--json", db=db_url)
        assert out.returncode == 0, out.stderr
    lake = str(tmp_path / "lake")  # where the server (cwd tmp_path) reads it: ./lake

    def exported():
        out = run("lake", "export", "--out", lake, "--settle", "0", "--json", db=db_url)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["events"]

    c = httpx.Client(base_url=base, timeout=120, headers=admin)
    # the server's worker resolves identities as the imports land; the lake takes resolved events only
    wait_until(lambda: c.get("/api/profiles", params={"email": receipts[-1][2]}).status_code == 200, timeout=60)
    total = 0
    for _ in range(100):
        total += exported() or 0
        if total >= len(receipts) + len(calls):
            break
        time.sleep(0.1)
    assert total == len(receipts) + len(calls)

    cli = run("attribution", "--lake", lake, "-w", "default", "--format", "json", db=db_url)
    assert cli.returncode == 0, cli.stderr
    att = json.loads(cli.stdout)
    assert att["totals"]["conversions"] == len(receipts)
    assert round(att["totals"]["revenue"], 2) == round(sum(r[3] for r in receipts), 2)
    assert {r["label"] for r in att["rows"]} == {"call_center"}  # the only touchpoints: calls before purchases
    markov = sum(r["conversions"] for r in att["rows"] if r["model"] == "markov")
    assert markov == att["totals"]["attributed_conversions"] > 0
    api = c.get("/api/analytics/attribution").json()
    assert api["totals"] == att["totals"]
    assert [(r["model"], r["label"]) for r in api["rows"]] == [(r["model"], r["label"]) for r in att["rows"]]
    for mine, theirs in zip(api["rows"], att["rows"], strict=True):  # sums in another order: float rounding only
        assert (
            abs(mine["revenue"] - theirs["revenue"]) < 1e-6 and abs(mine["conversions"] - theirs["conversions"]) < 1e-9
        )

    cli = run("clv", "--lake", lake, "-w", "default", "--write-traits", "--format", "json", db=db_url)
    assert cli.returncode == 0, cli.stderr
    clv = json.loads(cli.stdout)
    assert clv["summary"]["customers"] == 150 and clv["summary"]["traits_written"]["profiles"] == 150
    best = max(clv["customers"], key=lambda r: r["clv"])
    api = c.get("/api/analytics/clv", params={"limit": 1}).json()
    assert api["customers"][0]["customer"] == best["customer"]
    assert abs(api["customers"][0]["clv"] - best["clv"]) < 1e-6 * max(1.0, best["clv"])
    profile = c.get(f"/api/profiles/{best['customer']}").json()
    traits = profile["computed_traits"]
    assert traits["clv_12m"]["value"] == round(best["clv"], 2)
    assert 0 <= traits["probability_alive"]["value"] <= 1 and traits["rfm_frequency"]["value"] == best["frequency"]
    assert traits["clv_12m"]["model"] == "clv:bgnbd+gamma_gamma"

    paths = run("report", "paths", "--lake", lake, "-w", "default", "--format", "csv", db=db_url)
    assert paths.returncode == 0, paths.stderr
    assert paths.stdout.splitlines()[0] == "path,journeys,conversions,revenue,conversion_rate"
    assert c.get("/api/analytics/paths").json()["top_paths"][0]["path"] == ["call_center"]
    omni = run("report", "omnichannel", "--lake", lake, "-w", "default", "--format", "json", db=db_url)
    assert omni.returncode == 0, omni.stderr
    omni = json.loads(omni.stdout)
    by_channels = {r["group"]: r for r in omni["groups"] if r["dimension"] == "channels"}
    assert sum(r["customers"] for r in by_channels.values()) == 150
    callers = {e["email"] for e in calls}
    assert by_channels["2"]["customers"] == len(callers)  # store + call centre; the others store only
    assert {r["group"]: r["customers"] for r in omni["groups"] if r["dimension"] == "mix"}["offline"] == 150
    assert by_channels["1"]["clv"] is not None and by_channels["1"]["clv_lo"] <= by_channels["1"]["clv"]
    api = c.get("/api/analytics/omnichannel").json()  # seeded bootstrap: the same intervals
    assert [(r["group"], r["customers"]) for r in api["groups"]] == [
        (r["group"], r["customers"]) for r in omni["groups"]
    ]
    for mine, theirs in zip(api["groups"], omni["groups"], strict=True):
        assert (mine["value_lo"] is None) == (theirs["value_lo"] is None)
        assert mine["value_lo"] is None or abs(mine["value_lo"] - theirs["value_lo"]) < 1e-9 * max(1, mine["value_lo"])
    # the brand narrows its definition: a call counts only within 12 hours of the purchase (the calls here came
    # 20 hours before). The workspace setting serves the API and the CLI alike.
    bad = c.patch("/api/workspace/settings", json={"attribution": {"lookback_days": "soon"}})
    assert bad.status_code == 400 and "attribution.lookback_days" in bad.json()["message"]
    ok = c.patch("/api/workspace/settings", json={"attribution": {"lookback_days": 0.5}})
    assert ok.status_code == 200, ok.text
    api = c.get("/api/analytics/attribution").json()
    cli = json.loads(run("attribution", "--lake", lake, "-w", "default", "--format", "json", db=db_url).stdout)
    assert api["totals"] == cli["totals"]
    narrowed = api["totals"]["attributed_conversions"]
    # only a call followed within 12 h by a purchase (an earlier one of the same customer) still counts
    assert narrowed < att["totals"]["attributed_conversions"] / 4
    bad = c.get("/api/analytics/attribution", params={"models": "magic"})
    assert bad.status_code == 400 and bad.json()["field"] == "models"
    c.close()
