"""A message whose channel has no provider that can send it is skipped at once with reason ``no_provider`` (not
retried for hours), visible in the API and counted in /metrics; over real HTTP to a running server."""

from __future__ import annotations

import re

from tests.conftest import wait_until

TEMPLATE = {
    "kind": "transactional",
    "variants": {"email": {"subject": "Your receipt", "html": "<p>Thanks</p>"}, "sms": {"text": "Thanks"}},
}


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


def _skipped_count(http, channel: str) -> float:
    text = http.get("/metrics").text
    m = re.search(rf'^chorus_messages_no_provider_total{{channel="{channel}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _send(http, workspace, key: str, channel: str) -> dict:
    r = http.post("/api/messages", headers={**bearer(workspace), "Idempotency-Key": key},
                  json={"to": {"user_id": "np-1"}, "template": "receipt", "channel": channel})  # fmt: skip
    assert r.status_code == 201, r.text
    m = r.json()
    return wait_until(
        lambda: (got := http.get(f"/api/messages/{m['id']}", headers=bearer(workspace)).json())["status"]
        not in ("queued", "sending") and got
    )


def test_no_provider_skips_at_once_with_the_reason(http, server, workspace):
    r = http.post("/v1/identify", auth=(workspace["server_write_key"], ""),
                  json={"userId": "np-1", "traits": {"email": "np@example.com", "phone": "+31612345679"}})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    assert http.put("/api/templates/receipt", json=TEMPLATE, headers=bearer(workspace)).status_code == 200
    before = _skipped_count(http, "email")

    m = _send(http, workspace, "r-1", "email")  # nothing configured at all
    assert m["status"] == "skipped", m  # not "retrying": no attempt later could succeed
    assert m["reason"].startswith("no_provider: no provider is configured for email")
    assert m["next_attempt_at"] is None and m["attempts"] == 1
    assert [h["status"] for h in m["history"]] == ["queued", "skipped"]
    assert m["history"][-1]["reason"] == "no_provider"
    assert _skipped_count(http, "email") == before + 1

    # providers for email only: an SMS still has nobody to send it
    smtp = {"type": "smtp", "name": "mail", "host": "127.0.0.1", "port": 2525, "from": "shop@example.com"}
    r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"email": [smtp]}}},
                   headers=bearer(workspace))  # fmt: skip
    assert r.status_code == 200, r.text
    before_sms = _skipped_count(http, "sms")
    m = _send(http, workspace, "r-2", "sms")
    assert m["status"] == "skipped" and m["reason"].startswith("no_provider: no provider is configured for sms"), m
    assert _skipped_count(http, "sms") == before_sms + 1
