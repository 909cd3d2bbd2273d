"""The in-app inbox: what a site or app shows its signed-in (or anonymous) user, read with the public write key.

``GET /v1/inbox``, ``POST /v1/inbox/{message_id}/read`` and the server-sent-events stream ``GET /v1/inbox/stream``
take the person as ``userId`` or ``anonymousId``. The write key is public, so a workspace that turns on
``messaging.inbox_verification`` also requires ``userHash`` = hex HMAC-SHA256(inbox secret, userId), computed by
the brand's server (the secret comes from ``GET /api/workspace/inbox-secret``); anonymous ids are then refused.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import AsyncIterator

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from chorus.api.admin import SVC, WS
from chorus.api.common import JSON, Services, write_key
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError, NotFound, Unauthorized
from chorus.messaging import outbox
from chorus.store.tables import identifiers, message_status, messages, profile_aliases
from chorus.timeutil import iso, parse_ts, utcnow

router = APIRouter(prefix="/v1/inbox", tags=["inbox"])
admin_router = APIRouter(prefix="/api", tags=["messaging"], route_class=AdminRoute)
VISIBLE = ("sent", "delivered", "opened", "clicked", "replied")
HEARTBEAT_SECONDS = 15.0
POLL_SECONDS = 1.0


def inbox_secret(svc: Services, ws_id: str) -> str:
    return hmac.new(svc.links.key, f"inbox:{ws_id}".encode(), hashlib.sha256).hexdigest()


def user_hash_ok(svc: Services, ws_id: str, user_id: str, given) -> bool:
    want = hmac.new(inbox_secret(svc, ws_id).encode(), user_id.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(want, str(given or ""))


@admin_router.get("/workspace/inbox-secret", summary="The secret your server uses to compute inbox userHash values")
def get_inbox_secret(ws: WS, svc: SVC):
    return JSON({"inbox_secret": inbox_secret(svc, ws.id), "algorithm": "hex(HMAC-SHA256(inbox_secret, userId))"})


def _person(request: Request, svc: Services, params: dict) -> tuple[str, str]:
    """(workspace id, profile id) of the person the request is about, after checking the key and the hash."""
    source = svc.keys.source(write_key(request.headers, params))
    user_id, anonymous_id = params.get("userId"), params.get("anonymousId")
    if bool(user_id) == bool(anonymous_id):
        raise ChorusError("give exactly one of userId or anonymousId", field="userId")
    with svc.engine.connect() as conn:
        from chorus import workspaces as ws_api

        ws = ws_api.get(conn, source.workspace_id)
        if (ws.settings.get("messaging") or {}).get("inbox_verification"):
            if not user_id:
                raise Unauthorized("this inbox needs userId with userHash (identity verification is on)")
            if not user_hash_ok(svc, ws.id, str(user_id), params.get("userHash")):
                raise Unauthorized("userHash does not match userId")
        ident = f"user_id:{user_id}" if user_id else f"anonymous_id:{anonymous_id}"
        pid = conn.execute(
            sa.select(identifiers.c.profile_id).where(identifiers.c.workspace_id == ws.id, identifiers.c.ident == ident)
        ).scalar_one_or_none()
    if pid is None:
        raise NotFound("no inbox for this person yet")
    return ws.id, pid


def _items(svc: Services, ws: str, pid: str, since=None, limit: int = 50) -> list[dict]:
    with svc.engine.connect() as conn:
        ids = [pid, *conn.execute(sa.select(profile_aliases.c.alias_id).where(profile_aliases.c.profile_id == pid))
               .scalars()]  # fmt: skip
        q = sa.select(messages).where(
            messages.c.workspace_id == ws,
            messages.c.profile_id.in_(ids),
            messages.c.channel == "in_app",
            messages.c.status.in_(VISIBLE),
        )
        if since is not None:
            q = q.where(messages.c.sent_at > since)
        rows = conn.execute(q.order_by(messages.c.sent_at.desc()).limit(limit)).all()
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
    ws, pid = await run_in_threadpool(_person, request, svc, params)
    raw_limit = str(params.get("limit", "50"))
    if not re.fullmatch(r"[0-9]{1,4}", raw_limit):
        raise ChorusError("limit must be a number from 1 to 200", field="limit")
    limit = min(max(int(raw_limit), 1), 200)
    items = await run_in_threadpool(_items, svc, ws, pid, None, limit)
    return JSON({"messages": items, "unread": sum(1 for i in items if i["read_at"] is None)})


@router.post("/{message_id}/read", summary="Mark an in-app message read (records 'opened')")
async def mark_read(request: Request, message_id: str):
    svc: Services = request.app.state.services
    params = dict(request.query_params)
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError as exc:
            raise ChorusError(f"body is not valid JSON: {exc}", field="body") from None
        if isinstance(body, dict):
            params.update({k: v for k, v in body.items() if isinstance(v, str)})
    ws, pid = await run_in_threadpool(_person, request, svc, params)
    await run_in_threadpool(_read, svc, ws, pid, message_id)
    return JSON({"ok": True})


def _read(svc: Services, ws: str, pid: str, message_id: str) -> None:
    with svc.engine.begin() as conn:
        ids = [pid, *conn.execute(sa.select(profile_aliases.c.alias_id).where(profile_aliases.c.profile_id == pid))
               .scalars()]  # fmt: skip
        row = conn.execute(
            sa.select(messages).where(
                messages.c.id == message_id, messages.c.workspace_id == ws, messages.c.profile_id.in_(ids),
                messages.c.channel == "in_app", messages.c.status.in_(VISIBLE),
            )
        ).first()  # fmt: skip
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
    ws, pid = await run_in_threadpool(_person, request, svc, params)

    async def events() -> AsyncIterator[bytes]:
        since = utcnow()
        yield b": connected\n\nretry: 3000\n\n"
        quiet = 0.0
        while not await request.is_disconnected():
            items = await run_in_threadpool(_items, svc, ws, pid, since, 50)
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
