"""The in-app inbox (read with the write key, marked read, streamed as server-sent events) and the webhook
channel (signed JSON to the brand's URL, with the message id as Idempotency-Key)."""

from __future__ import annotations

import hashlib
import hmac
import threading

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.api.verify import user_hash
from tests.conftest import _ASGIThread, wait_until

TEMPLATE = {
    "kind": "marketing",
    "topic": "offers",
    "variants": {
        "in_app": {"title": "Hi {{ traits.first_name }}", "body": "Your {{ data.item }} is back in stock",
                   "cta": {"label": "See it", "url": "https://shop.example/p/{{ data.sku }}"}},
        "webhook": {"body": {"name": "{{ traits.first_name }}", "item": "{{ data.item }}", "sku": "{{ data.sku }}"}},
    },
}  # fmt: skip


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def shop(http, server, workspace):
    h = bearer(workspace)
    r = http.post("/v1/identify", auth=(workspace["write_key"], ""),
                  json={"userId": "u1", "anonymousId": "a1", "traits": {"first_name": "Ana"}})  # fmt: skip
    assert r.status_code == 200
    server.settle()
    assert http.put("/api/templates/restock", json=TEMPLATE, headers=h).status_code == 200
    return h


def send(http, h, key, channel, **data):
    body = {"to": {"user_id": "u1"}, "template": "restock", "channel": channel,
            "data": {"item": "red shoes", "sku": "RS-1", **data}}  # fmt: skip
    r = http.post("/api/messages", json=body, headers={**h, "Idempotency-Key": key})
    assert r.status_code == 201, r.text
    return r.json()


def wait_status(http, h, mid, *statuses):
    return wait_until(lambda: (m := http.get(f"/api/messages/{mid}", headers=h).json())["status"] in statuses and m)


def test_inbox_lists_marks_read_and_streams(http, server, workspace, shop):
    wk = (workspace["write_key"], "")
    me = {"userId": "u1", "userHash": user_hash(http, shop, "u1")}
    m = send(http, shop, "i1", "in_app")
    assert m["channel"] == "in_app" and m["address"] == m["profile_id"]
    wait_status(http, shop, m["id"], "sent")
    box = http.get("/v1/inbox", params=me, auth=wk).json()
    assert box["unread"] == 1
    item = box["messages"][0]
    assert item["id"] == m["id"] and item["title"] == "Hi Ana" and item["body"] == "Your red shoes is back in stock"
    assert item["cta"] == {"label": "See it", "url": "https://shop.example/p/RS-1"} and item["read_at"] is None
    # the browser's anonymous id alone does not open the inbox of the known person it joined
    assert http.get("/v1/inbox", params={"anonymousId": "a1"}, auth=wk).json() == {"messages": [], "unread": 0}
    for _ in range(2):  # reading twice is one read
        assert http.post(f"/v1/inbox/{m['id']}/read", json=me, auth=wk).status_code == 200
    box = http.get("/v1/inbox", params=me, auth=wk).json()
    assert box["unread"] == 0 and box["messages"][0]["read_at"]
    hist = http.get(f"/api/messages/{m['id']}", headers=shop).json()["history"]
    assert [h["status"] for h in hist] == ["queued", "sent", "opened"]
    assert http.post("/v1/inbox/msg_nope/read", json=me, auth=wk).status_code == 404
    # the list finds a message by what the person did with it (its history), next to its delivery status
    other = send(http, shop, "listed-2", "in_app")
    wait_status(http, shop, other["id"], "sent")
    listed = {x["id"]: x for x in http.get("/api/messages", headers=shop).json()["messages"]}
    assert listed[m["id"]]["status"] == "sent" and listed[m["id"]]["engagement"] == ["opened"]
    assert listed[other["id"]]["engagement"] == []
    opened = http.get("/api/messages", params={"status": "opened"}, headers=shop).json()["messages"]
    assert [x["id"] for x in opened] == [m["id"]]
    assert {x["id"] for x in http.get("/api/messages", params={"status": "sent"}, headers=shop).json()["messages"]} \
        == {m["id"], other["id"]}
    r = http.get("/api/messages", params={"status": "read"}, headers=shop)
    assert r.status_code == 400 and r.json()["field"] == "status" and "opened" in r.json()["message"]
    assert http.get("/v1/inbox", params={**me, "limit": "²"}, auth=wk).json()["field"] == "limit"
    r = http.post(f"/v1/inbox/{m['id']}/read", content=b"{nope", auth=wk, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["field"] == "body"

    # the stream sends a message that arrives while it is open
    got: list[dict] = []
    ready = threading.Event()

    def listen():
        with httpx.stream("GET", f"{server.base_url}/v1/inbox/stream", params=me, auth=wk,
                          timeout=30) as r:  # fmt: skip
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                ready.set()
                if line.startswith("data: "):
                    got.append(orjson.loads(line[6:]))
                    return

    t = threading.Thread(target=listen, daemon=True)
    t.start()
    assert ready.wait(10)
    m2 = send(http, shop, "i2", "in_app", item="blue hat")
    t.join(20)
    assert got and got[0]["id"] == m2["id"] and got[0]["body"] == "Your blue hat is back in stock"


def test_inbox_identity_verification(http, server, engine, workspace, shop):
    wk = (workspace["write_key"], "")
    good = user_hash(http, shop, "u1")
    r = http.get("/v1/inbox", params={"userId": "u1"}, auth=wk)  # verification is on by default
    assert r.status_code == 401 and r.json()["field"] == "userHash" and "HMAC-SHA256" in r.json()["message"]
    r = http.get("/v1/inbox", params={"userId": "u1", "userHash": "0" * 64}, auth=wk)
    assert r.status_code == 403 and r.json() == {
        "code": "forbidden", "field": "userHash",
        "message": "userHash does not match userId (was it computed with the current identity secret?)"}
    assert http.get("/v1/inbox", params={"userId": "u1", "userHash": good}, auth=wk).status_code == 200
    assert http.get("/v1/inbox", params={"userId": "u1", "userHash": good.upper()}, auth=wk).status_code == 200
    # a workspace may turn it off (development only): then userId alone is believed
    r = http.patch("/api/workspace/settings", json={"messaging": {"inbox_verification": False}}, headers=shop)
    assert r.status_code == 200, r.text
    assert http.get("/v1/inbox", params={"userId": "u1"}, auth=wk).status_code == 200
    from chorus import workspaces

    other = workspaces.create(engine, "rival")
    rival = {"Authorization": f"Bearer {other['api_key']}"}
    r = http.get("/v1/inbox", params={"userId": "u1", "userHash": user_hash(http, rival, "u1")},
                 auth=(other["write_key"], ""))  # fmt: skip
    assert r.status_code == 404  # another workspace's key sees nothing of this one
    r = http.get("/v1/inbox", params={"userId": "u1", "userHash": good}, auth=(other["write_key"], ""))
    assert r.status_code == 403  # and each workspace has its own secret
    assert http.get("/v1/inbox", params={"userId": "u1"}, auth=("wk_unknown", "")).status_code == 401


class Receiver:
    def __init__(self):
        self.requests: list[dict] = []
        self.answers: list[int] = []
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request):
        self.requests.append({"headers": dict(request.headers), "body": await request.body()})
        status = self.answers.pop(0) if self.answers else 200
        return JSONResponse({"ok": status < 300}, status_code=status)


def test_webhook_channel_is_signed_and_idempotent(http, server, workspace, shop, monkeypatch):
    monkeypatch.setenv("CHORUS_HOOK_SECRET", "whsec_test")
    recv = Receiver()
    with _ASGIThread(recv.app) as srv:
        conf = {"type": "webhook", "name": "crm", "url": f"{srv.base_url}/hook", "secret_env": "CHORUS_HOOK_SECRET"}
        r = http.patch("/api/workspace/settings", json={"messaging": {"providers": {"webhook": [conf]}}}, headers=shop)
        assert r.status_code == 200, r.text
        m = send(http, shop, "w1", "webhook")
        assert wait_status(http, shop, m["id"], "sent", "failed", "retrying")["status"] == "sent"
        req = recv.requests[0]
        body = orjson.loads(req["body"])
        assert body["body"] == {"name": "Ana", "item": "red shoes", "sku": "RS-1"}
        assert body["message_id"] == m["id"] and body["profile_id"] == m["profile_id"]
        assert req["headers"]["idempotency-key"] == m["id"]
        t, v1 = (part.split("=", 1)[1] for part in req["headers"]["chorus-signature"].split(","))
        assert v1 == hmac.new(b"whsec_test", f"{t}.".encode() + req["body"], hashlib.sha256).hexdigest()

        recv.answers = [503]
        m = send(http, shop, "w2", "webhook")
        retrying = wait_status(http, shop, m["id"], "retrying", "sent", "failed")
        assert retrying["status"] == "retrying" and "503" in retrying["reason"]
        recv.answers = [422]
        m = send(http, shop, "w3", "webhook")
        failed = wait_status(http, shop, m["id"], "failed", "sent", "retrying")
        assert failed["status"] == "failed" and "422" in failed["reason"]
