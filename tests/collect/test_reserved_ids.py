"""Message ids Chorus derives itself cannot be pre-empted through the public (client) write key.

A workspace stores a messageId once whoever sent it. A browser that sends first the id an import row will get
(``imp-`` + sha256 of its source and key cells, documented) or the very body the brand's server will send without
a messageId (``chorus-<hash of content>``) must not turn the trusted copy into an ignored duplicate."""

from __future__ import annotations

import hashlib
import json

import sqlalchemy as sa

from chorus.store.tables import events


def _ids(engine, ws_id) -> list[str]:
    with engine.connect() as conn:
        q = sa.select(events.c.message_id).where(events.c.workspace_id == ws_id).order_by(events.c.seq)
        return list(conn.execute(q).scalars())


def _admin(workspace) -> dict:
    return {"Authorization": f"Bearer {workspace['api_key']}"}


def test_client_key_cannot_send_reserved_message_ids(http, server, workspace):
    imp = "imp-" + hashlib.sha256(b"store\x1fR-1").hexdigest()[:32]
    batch = [{"type": "track", "anonymousId": "a1", "event": "Order Completed", "messageId": imp},
             {"type": "track", "anonymousId": "a1", "event": "Consent Updated", "messageId": "chorus-consent-u-email"},
             {"type": "track", "anonymousId": "a1", "event": "Viewed", "messageId": "mine-1"}]  # fmt: skip
    r = http.post("/v1/batch", json={"batch": batch}, auth=(workspace["write_key"], ""))
    assert r.status_code == 200, r.text
    rejected = r.json()["rejected"]
    assert [(x["index"], x["field"]) for x in rejected] == [(0, "messageId"), (1, "messageId")]
    assert "'imp-'" in rejected[0]["reason"] and "'chorus-'" in rejected[1]["reason"]
    assert all("reserves" in x["reason"] for x in rejected)
    r = http.post("/v1/track", json={"userId": "u", "event": "X", "messageId": "chorus-abc"},
                  auth=(workspace["write_key"], ""))  # fmt: skip
    assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "messageId"
    assert _ids(server.engine, workspace["id"]) == ["mine-1"]
    listed = http.get("/api/events/rejected", headers=_admin(workspace)).json()["rejected"]
    assert {x["message_id"]: x["field"] for x in listed} == {
        imp: "messageId", "chorus-consent-u-email": "messageId", "chorus-abc": "messageId"}


def test_trusted_server_may_keep_chorus_ids(http, server, workspace):
    # e.g. a brand's server re-sending events exported from Chorus: the ids it keeps still deduplicate
    imp = "imp-" + hashlib.sha256(b"store\x1fR-2").hexdigest()[:32]
    batch = [{"type": "track", "userId": "u", "event": "Order Completed", "messageId": imp},
             {"type": "track", "userId": "u", "event": "Viewed", "messageId": "chorus-0123abcd"}]  # fmt: skip
    r = http.post("/v1/batch", json={"batch": batch}, auth=(workspace["server_write_key"], ""))
    assert r.status_code == 200 and r.json() == {"success": True}
    assert _ids(server.engine, workspace["id"]) == [imp, "chorus-0123abcd"]


def test_import_row_is_not_preempted_by_a_browser(http, server, workspace):
    mid = "imp-" + hashlib.sha256(b"store\x1fR-77").hexdigest()[:32]
    forged = {"anonymousId": "mallory", "event": "Order Completed", "messageId": mid,
              "properties": {"revenue": "99999.00", "receipt_no": "R-77"}, "context": {"channel": "store"}}
    assert http.post("/v1/track", json=forged, auth=(workspace["write_key"], "")).status_code == 200
    csv = "receipt_no,timestamp,email,revenue\nR-77,2024-03-02 09:15:00,vic@example.com,42.50\n"
    r = http.post("/api/imports", files={"file": ("pos.csv", csv, "text/csv")},
                  data={"source": "store", "mapping": json.dumps({"key": ["receipt_no"]})},
                  headers=_admin(workspace))  # fmt: skip
    assert r.status_code == 200, r.text
    assert (r.json()["imported"], r.json()["duplicates"]) == (1, 0)
    server.settle()
    p = http.get("/api/profiles", params={"email": "vic@example.com"}, headers=_admin(workspace))
    assert p.status_code == 200, p.text
    evs = http.get(f"/api/profiles/{p.json()['id']}/events", headers=_admin(workspace)).json()["events"]
    assert [(e["event"], e["properties"]["revenue"]) for e in evs] == [("Order Completed", "42.50")]


def test_server_identify_is_not_a_duplicate_of_a_browser_copy(http, server, workspace):
    sk, wk = (workspace["server_write_key"], ""), (workspace["write_key"], "")
    http.post("/v1/identify", json={"anonymousId": "crm-1", "traits": {"email": "ada@example.com"}}, auth=sk)
    http.post("/v1/track", json={"userId": "u-ada", "event": "Signed Up"}, auth=sk)
    server.settle()
    body = {"userId": "u-ada", "traits": {"email": "ada@example.com"}}  # no messageId: the id is content-derived
    assert http.post("/v1/identify", json=body, auth=wk).status_code == 200  # the browser's copy, first
    assert http.post("/v1/identify", json=body, auth=sk).status_code == 200
    server.settle()
    by_user = http.get("/api/profiles", params={"user_id": "u-ada"}, headers=_admin(workspace)).json()
    by_email = http.get("/api/profiles", params={"email": "ada@example.com"}, headers=_admin(workspace)).json()
    assert by_user["id"] == by_email["id"]  # the server's trusted link merged them
    ids = _ids(server.engine, workspace["id"])
    assert len(ids) == 4 and len(set(ids)) == 4 and all(i.startswith("chorus-") for i in ids)


def test_content_ids_still_dedupe_retries_of_each_sender(http, server, workspace):
    body = {"userId": "u", "event": "Tapped", "properties": {"n": 1}}
    for auth in [(workspace["write_key"], "")] * 2 + [(workspace["server_write_key"], "")] * 2:
        assert http.post("/v1/track", json=body, auth=auth).status_code == 200
    assert len(_ids(server.engine, workspace["id"])) == 2  # one per sender: retries deduplicate, senders do not
