"""Probe findings 4, 8, 9 and 13 on the analytics endpoints, over real HTTP (SQLite: the reports read the lake).

4: two orders of 1.7e308 made attribution's totals null and omnichannel a 400 blaming `clv`. 8: `models` took a
model twice (every row twice) and an empty list. 9: /openapi.json said `exclusiveMinimum: 0` for numbers of days
refused under a second, free strings for `by` and `shapley`, and dates the CLI refused were taken. 13: the 400 of a
workspace missing from the lake showed the server's path."""

from __future__ import annotations

import math

import httpx
import pytest

from chorus import workspaces
from tests.analytics.lakegen import LakeWriter
from tests.conftest import LiveServer

SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
HUGE = 1.7e308


@pytest.fixture
def live(db_url, engine, workspace, tmp_path):
    """A server whose lake holds 3 ordinary customers of ``workspace`` and a visitor with two orders of 1.7e308."""
    w = LakeWriter(tmp_path / "lake", workspace=workspace["id"])
    for i, channel in enumerate(("web", "store", "email")):
        w.touch(f"p{i}", 0, channel).order(f"p{i}", 1, 10.0 + i).touch(f"p{i}", 30, "web").order(f"p{i}", 50, 5.0)
    w.touch("evil", 2, "web").order("evil", 3, HUGE, order_id="e1").order("evil", 4, HUGE, order_id="e2")
    root = w.write()
    with LiveServer(db_url, engine, lake_dir=str(root)) as srv, httpx.Client(base_url=srv.base_url, timeout=120) as c:
        c.headers["Authorization"] = f"Bearer {workspace['api_key']}"
        yield c, workspace, root


def _refused(r, field: str, *words: str) -> dict:
    assert r.status_code == 400, (r.request.url, r.status_code, r.text)
    body = r.json()
    assert body["field"] == field, body
    for w in words:
        assert w in body["message"], body
    return body


def _finite(value, path="body") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{path}[{i}]")
    elif isinstance(value, float):
        assert math.isfinite(value), path


@SQLITE
def test_two_huge_orders_leave_every_report_finite_and_named(live):
    http, _, _ = live
    r = http.get("/api/analytics/attribution", params={"models": "linear"})
    assert r.status_code == 200, r.text
    t = r.json()["totals"]
    assert t["revenue"] == 48.0 and t["unattributed_revenue"] == 0.0 and t["oversized_revenue_conversions"] == 2, t
    assert any("order e1, order e2" in w for w in r.json()["warnings"]), r.json()["warnings"]
    # omnichannel with its CLV comparison (the default): before, a 400 naming `clv`, a parameter never sent
    r = http.get("/api/analytics/omnichannel", params={"bootstrap": 100})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["totals"]["revenue"] == 48.0 and body["totals"]["oversized_revenue_orders"] == 2, body["totals"]
    assert any("order e1, order e2" in w for w in body["warnings"]), body["warnings"]
    _finite(body)
    for report in ("paths", "showrooming", "uplift", "clv"):
        r = http.get(f"/api/analytics/{report}")
        assert r.status_code in (200, 400), r.text
        if r.status_code == 400:  # clv on 4 customers may not fit: a data problem named as such, never `clv`
            assert r.json()["field"] != "clv", r.text
        _finite(r.json())
    assert "order e1, order e2" in " ".join(http.get("/api/analytics/paths").json()["warnings"])


@SQLITE
def test_models_are_parsed_as_the_cli_parses_them(live):
    http, _, _ = live
    _refused(http.get("/api/analytics/attribution", params={"models": "linear,linear, linear"}), "models",
             "linear more than once")  # fmt: skip
    _refused(http.get("/api/analytics/attribution", params={"models": ","}), "models", "at least one model")
    _refused(http.get("/api/analytics/attribution", params={"models": ""}), "models", "at least one model")
    r = http.get("/api/analytics/attribution", params={"models": "linear, markov"})
    assert r.status_code == 200 and r.json()["models"] == ["linear", "markov"], r.text


@SQLITE
def test_openapi_states_what_is_checked(live):
    http, _, _ = live
    doc = http.get("/openapi.json").json()["paths"]
    params = {(path.rsplit("/", 1)[-1], p["name"]): p["schema"]
              for path, item in doc.items() if path.startswith("/api/analytics/")
              for p in item["get"]["parameters"]}  # fmt: skip
    for key in (("attribution", "half_life_days"), ("showrooming", "window_days"), ("uplift", "window_days")):
        schema = params[key]
        assert schema.get("minimum") == 1 / 86400 and "exclusiveMinimum" not in schema, (key, schema)
        assert schema.get("maximum") == 3660, (key, schema)
    assert params[("attribution", "by")]["enum"] == ["channel", "campaign"]
    assert params[("paths", "by")]["enum"] == ["channel", "campaign"]
    assert params[("attribution", "shapley")]["enum"] == ["auto", "exact", "simplified"]
    for key in (("attribution", "since"), ("omnichannel", "until"), ("clv", "end"), ("uplift", "since")):
        assert params[key].get("format") == "date", (key, params[key])
    # the schema's minimum is accepted, what is under it refused, in the CLI's words
    for report, name in (("showrooming", "window_days"), ("attribution", "half_life_days")):
        extra = {"models": "linear"} if report == "attribution" else {}
        assert http.get(f"/api/analytics/{report}", params={name: 1 / 86400, **extra}).status_code == 200
        _refused(http.get(f"/api/analytics/{report}", params={name: "0.00001"}), name, "at least one second")
    _refused(http.get("/api/analytics/attribution", params={"by": "Channel"}), "by", "channel, campaign")
    _refused(http.get("/api/analytics/paths", params={"by": "x"}), "by", "channel, campaign")
    _refused(http.get("/api/analytics/attribution", params={"shapley": "fast"}), "shapley", "auto, exact")


@SQLITE
@pytest.mark.parametrize("value", ["0", "86400", "-86400", "2026-12-07T00:00:00Z", "20261207", "2026-12-7"])
def test_dates_are_yyyy_mm_dd_only(live, value):
    http, _, _ = live
    for report, name in (("attribution", "since"), ("paths", "until"), ("clv", "end"), ("omnichannel", "since")):
        _refused(http.get(f"/api/analytics/{report}", params={name: value}), name, "is not a date (YYYY-MM-DD)")
    r = http.get("/api/analytics/paths", params={"since": "2026-03-01", "until": "2026-03-31"})
    assert r.status_code == 200, r.text


@SQLITE
def test_a_workspace_missing_from_the_lake_is_told_without_the_servers_path(live, engine):
    http, _, root = live
    other = workspaces.create(engine, "other-shop")
    r = http.get("/api/analytics/paths", headers={"Authorization": f"Bearer {other['api_key']}"})
    body = _refused(r, "lake", "no events of this workspace yet", "chorus lake export")
    assert str(root) not in body["message"] and "/" not in body["message"].replace("/api", ""), body
