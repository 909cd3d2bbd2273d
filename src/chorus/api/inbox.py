"""The in-app inbox: what a site or app shows its signed-in (or anonymous) user, read with the public write key.

``GET /v1/inbox``, ``POST /v1/inbox/{message_id}/read`` and the server-sent-events stream ``GET /v1/inbox/stream``
take the person as ``userId`` with ``userHash`` (hex HMAC-SHA256 of the user id with the workspace's identity
secret, computed by the brand's server), or as ``anonymousId``, which shows only the messages addressed to that
anonymous id. :mod:`chorus.api.caller` decides who the caller is, for these and for push subscriptions alike.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from chorus.api.admin import SVC, WS
from chorus.api.caller import PERSON_FIELDS, Caller, caller, json_body, profile_ids
from chorus.api.common import JSON, Services
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError, NotFound
from chorus.messaging import outbox
from chorus.safejson import check_text
from chorus.store.db import read_only
from chorus.store.tables import message_status, messages
from chorus.timeutil import iso, parse_ts, utcnow
from chorus.workspaces import verification

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])
admin_router = APIRouter(prefix="/api", tags=["messaging"], route_class=AdminRoute)
VISIBLE = ("sent", "delivered", "opened", "clicked", "replied")
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 1.0
ANONYMOUS_SCAN = 1000  # in-app messages of one profile looked at for those addressed to an anonymous caller


def _secret_view(svc: Services, ws, value: str | None = None) -> dict:
    # admin api key only: the secret is never returned through a write key
    return {"identity_secret": value or verification.secret(svc.engine, ws.id), "algorithm": verification.ALGORITHM,
            "required": verification.required(ws.settings)}  # fmt: skip


@admin_router.get("/workspace/identity-secret", summary="The secret your server uses to compute userHash values")
def get_identity_secret(ws: WS, svc: SVC):
    return JSON(_secret_view(svc, ws))


@admin_router.post("/workspace/identity-secret/rotate", summary="Replace the identity secret (old hashes stop working)")
def rotate_identity_secret(ws: WS, svc: SVC):
    return JSON(_secret_view(svc, ws, verification.rotate(svc.engine, ws.id)))


def _visible(conn, who: Caller, since=None, message_id: str | None = None, limit: int = 1):
    """The in-app messages the caller may see, newest first: all of the profile's when the caller is a verified
    user, only those addressed to its anonymous id otherwise."""
    q = sa.select(messages).where(
        messages.c.workspace_id == who.workspace.id,
        messages.c.profile_id.in_(profile_ids(conn, who)),
        messages.c.channel == "in_app",
        messages.c.status.in_(VISIBLE),
    )
    if since is not None:
        q = q.where(messages.c.sent_at > since)
    if message_id is not None:
        q = q.where(messages.c.id == message_id)
    rows = conn.execute(q.order_by(messages.c.sent_at.desc()).limit(ANONYMOUS_SCAN if who.claim.anonymous else limit))
    return [r for r in rows if verification.addressed_to(who.claim, r.choice)][:limit]


def _items(svc: Services, who: Caller, since=None, limit: int = 50) -> list[dict]:
    with read_only(svc.engine) as conn:
        rows = _visible(conn, who, since, limit=limit)
        read = dict(
            conn.execute(
                sa.select(message_status.c.message_id, sa.func.min(message_status.c.at))
                .where(message_status.c.message_id.in_([r.id for r in rows]), message_status.c.status == "opened")
                .group_by(message_status.c.message_id)
            ).all()
        ) if rows else {}  # fmt: skip
    return [
        {"id": r.id, "title": (r.content or {}).get("title"), "body": (r.content or {}).get("body"),
         "cta": (r.content or {}).get("cta"), "created_at": iso(r.sent_at or r.created_at),
         "read_at": iso(read[r.id]) if r.id in read else None, "campaign_id": r.campaign_id}
        for r in rows
    ]  # fmt: skip


@router.get("", summary="The person's in-app messages, newest first")
async def get_inbox(request: Request):
    svc: Services = request.app.state.services
    params = dict(request.query_params)
    who = await run_in_threadpool(caller, svc, request.headers, params)
    raw_limit = str(params.get("limit", "50"))
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit):
        raise ChorusError("limit must be a number from 1 to 200", field="limit")
    limit = min(max(int(raw_limit), 1), 200)
    items = await run_in_threadpool(_items, svc, who, None, limit)
    return JSON({"messages": items, "unread": sum(1 for i in items if i["read_at"] is None)})


@router.post("/{message_id}/read", summary="Mark an in-app message read (records 'opened')")
async def mark_read(request: Request, message_id: str):
    svc: Services = request.app.state.services
    params = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await json_body(request, required=False)
        params.update({k: body[k] for k in PERSON_FIELDS if k in body})
    who = await run_in_threadpool(caller, svc, request.headers, params)
    await run_in_threadpool(_read, svc, who, check_text(message_id, "message_id"))
    return JSON({"ok": True})


def _read(svc: Services, who: Caller, message_id: str) -> None:
    with svc.engine.begin() as conn:
        rows = _visible(conn, who, message_id=message_id)
        row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"message {message_id} is not in this inbox")
        seen = conn.execute(
            sa.select(message_status.c.id).where(
                message_status.c.message_id == message_id, message_status.c.status == "opened"
            )
        ).first()
        if seen is None:  # reading twice is still one read
            outbox.set_status(conn, dict(row._mapping), "opened", at=utcnow(), detail={"via": "inbox"})


@router.get("/stream", summary="Server-sent events: each new in-app message as it arrives")
async def stream(request: Request):
    svc: Services = request.app.state.services
    params = dict(request.query_params)
    who = await run_in_threadpool(caller, svc, request.headers, params)

    async def events() -> AsyncIterator[bytes]:
        since = utcnow()
        yield b": connected\n\nretry: 3000\n\n"
        quiet = 0.0
        # ends when the client goes, or when the server begins to stop: uvicorn waits for every open response before
        # it shuts the app down, and this one would never end by itself
        while not svc.stopping.is_set() and not await request.is_disconnected():
            try:
                items = await run_in_threadpool(_items, svc, who, since, 50)
            except NotFound:  # not seen yet (her first events are still being resolved): her messages come later
                items = []
            for item in reversed(items):
                yield b"event: message\nid: " + item["id"].encode() + b"\ndata: " + orjson.dumps(item) + b"\n\n"
            if items:
                since = max(parse_ts(i["created_at"]) for i in items)
                quiet = 0.0
            else:
                quiet += POLL_SECONDS
                if quiet >= HEARTBEAT_SECONDS:  # keeps proxies from closing an idle connection
                    yield b": heartbeat\n\n"
                    quiet = 0.0
            await asyncio.sleep(POLL_SECONDS)

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
