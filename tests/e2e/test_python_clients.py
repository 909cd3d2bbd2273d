"""The official server-side clients work unchanged with their host pointed at Chorus."""

from __future__ import annotations

import datetime as dt

import pytest


def _profile(http, ws, **params):
    r = http.get("/api/profiles", params=params, headers={"Authorization": f"Bearer {ws['api_key']}"})
    assert r.status_code == 200, r.text
    return r.json()


def _timeline(http, ws, pid):
    r = http.get(f"/api/profiles/{pid}/events", headers={"Authorization": f"Bearer {ws['api_key']}"})
    return r.json()["events"]


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_analytics_python(http, server, workspace, gzip):
    from segment.analytics.client import Client

    errors = []
    client = Client(workspace["server_write_key"], host=server.base_url, gzip=gzip, sync_mode=True,
                    on_error=lambda e, batch: errors.append(e))  # fmt: skip
    client.identify("seg-1", {"email": "seg@example.com", "plan": "gold"}, anonymous_id="seg-anon")
    client.track("seg-1", "Order Completed", {"revenue": 42.5, "currency": "EUR"})
    client.page("seg-1", "Docs", "Setup", {"url": "https://shop.example/docs"})
    client.screen("seg-1", "App", "Home")
    client.group("seg-1", "acme-inc", {"name": "Acme"})
    client.alias("seg-anon-2", "seg-1")
    client.track(anonymous_id="seg-anon", event="Late", timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    client.flush()
    assert errors == []
    server.settle()
    p = _profile(http, workspace, user_id="seg-1")
    assert p["identifiers"]["email"] == ["seg@example.com"]
    assert set(p["identifiers"]["anonymous_id"]) == {"seg-anon", "seg-anon-2"}
    assert p["traits"]["plan"] == "gold"
    events = _timeline(http, workspace, p["id"])
    assert sorted(e["type"] for e in events) == ["alias", "group", "identify", "page", "screen", "track", "track"]
    late = next(e for e in events if e.get("event") == "Late")
    assert late["timestamp"].startswith("2026-01-01T00:00:0")  # the client's explicit timestamp, skew-corrected
    assert {e["channel"] for e in events if e["type"] == "screen"} == {"app"}


def test_rudder_sdk_python(http, server, workspace):
    import rudderstack.analytics as rudder_analytics
    from rudderstack.analytics.client import Client

    assert rudder_analytics  # the public module imports too
    errors = []
    client = Client(workspace["server_write_key"], host=server.base_url, sync_mode=True,
                    on_error=lambda e, batch: errors.append(e))  # fmt: skip
    client.identify("rs-1", {"email": "rs@example.com"}, anonymous_id="rs-anon")
    client.track("rs-1", "Product Added", {"sku": "SKU-1"})
    client.page("rs-1", "Shop", "Cart")
    client.flush()
    assert errors == []
    server.settle()
    p = _profile(http, workspace, email="rs@example.com")
    assert p["identifiers"]["user_id"] == ["rs-1"] and p["identifiers"]["anonymous_id"] == ["rs-anon"]
    assert sorted(e["type"] for e in _timeline(http, workspace, p["id"])) == ["identify", "page", "track"]
