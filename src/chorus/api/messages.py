"""Messaging endpoints of the admin API: templates, partials, preview, send, status."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Header, Query
from starlette.concurrency import run_in_threadpool

from chorus.api import listing
from chorus.api.admin import SVC, WS, Cursor, Limit
from chorus.api.common import JSON, error_body, shorten_field
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError
from chorus.messaging import outbox
from chorus.segments import store as segment_store
from chorus.store.db import read_only
from chorus.timeutil import utcnow

router = APIRouter(prefix="/api", tags=["messaging"], route_class=AdminRoute)

_DEFINITION_EXAMPLE = {
    "kind": "marketing",
    "topic": "offers",
    "variants": {
        "email": {
            "subject": "{{ traits.first_name | default: 'Hello' }}, your cart is waiting",
            "mjml": "<mjml>…</mjml>",
        },
        "sms": {"text": "Your cart is waiting: {{ data.cart_url }}"},
    },
}


@router.get("/templates", summary="Saved templates by name")
def list_templates(ws: WS, svc: SVC, limit: Limit = 100, cursor: Cursor = None):
    with read_only(svc.engine) as conn:
        return JSON(listing.list_templates(conn, ws.id, limit, cursor))


@router.get("/partials", summary="Saved partials and layouts by name")
def list_partials(ws: WS, svc: SVC, limit: Limit = 100, cursor: Cursor = None):
    with read_only(svc.engine) as conn:
        return JSON(listing.list_partials(conn, ws.id, limit, cursor))


@router.get("/messages", summary="Messages, newest first, filtered by profile, status, channel, template and time")
def list_messages(
    ws: WS, svc: SVC, limit: Limit = 50, cursor: Cursor = None,
    profile_id: Annotated[str | None, Query(description="a profile id (merged ids included)")] = None,
    status: Annotated[str | None, Query(description="a delivery status (queued, sending, retrying, sent, delivered, "
                                        "skipped, failed, bounced) or an engagement in the message's history "
                                        "(opened, clicked, replied, unsubscribed, complained)")] = None,
    channel: str | None = None, template: str | None = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO-8601; no offset: UTC)")] = None,
    until: Annotated[datetime | None, Query(description="created before")] = None,
):  # fmt: skip
    with read_only(svc.engine) as conn:
        return JSON(listing.list_messages(
            conn, ws.id, limit, cursor, profile_id=profile_id, status=status, channel=channel, template=template,
            since=listing.instant(since, "since"), until=listing.instant(until, "until"),
        ))  # fmt: skip


@router.put("/templates/{name}", summary="Save a message template (validated: syntax errors are rejected)")
def put_template(ws: WS, svc: SVC, name: str, definition: Annotated[dict, Body(examples=[_DEFINITION_EXAMPLE])]):
    # a template is named as segments and lists are (one rule for a definition's id): ".hidden", "-x" or "_x"
    # passed the save's own character check
    segment_store.check_id(name, "name")
    return JSON(outbox.save_template(svc.engine, ws.id, name, definition))


@router.get("/templates/{name}", summary="A saved template")
def get_template(ws: WS, svc: SVC, name: str):
    with read_only(svc.engine) as conn:
        return JSON({"name": name, "definition": outbox.load_template(conn, ws.id, name)})


@router.put("/partials/{name}", summary="Save a partial or layout that templates include")
def put_partial(ws: WS, svc: SVC, name: str, body: Annotated[dict, Body(examples=[{"source": "<p>…</p>"}])]):
    if not isinstance(body.get("source"), str):
        raise ChorusError("source must be the partial's Liquid text", field="source")
    return JSON(outbox.save_partial(svc.engine, ws.id, name, body["source"]))


@router.post("/messages/preview", summary="Render every variant of a message for a profile and an event, as a send "
             "would, and say what a send now would do")  # fmt: skip
def preview(ws: WS, svc: SVC, body: dict):
    req = outbox.parse_request(body)
    with read_only(svc.engine) as conn:
        return JSON(outbox.preview(conn, ws, req, svc.links, utcnow()))


@router.post(
    "/messages",
    summary="Send a message to a profile (idempotent with the Idempotency-Key header)",
    status_code=201,
    responses={200: {"description": "the message already created with this Idempotency-Key"}},
)
async def post_message(
    ws: WS, svc: SVC, body: dict,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
):  # fmt: skip
    req = outbox.parse_request(body)
    view, created = await run_in_threadpool(outbox.enqueue, svc.engine, ws, req, idempotency_key, svc.links)
    svc.wake_worker.set()
    return JSON(view, status_code=201 if created else 200)


BATCH_MAX = 1000


@router.post(
    "/messages/batch",
    summary="Send many messages in one call: one result per item, in order (a bad item never stops the others)",
)
async def post_messages_batch(
    ws: WS, svc: SVC,
    body: Annotated[dict, Body(examples=[{"messages": [
        {"idempotency_key": "spring-sale-u1", "to": {"email": "ana@example.com"}, "template": "spring_sale"},
    ]}])],
):  # fmt: skip
    """Each item is a ``POST /api/messages`` body plus its ``idempotency_key``; the results say ``created``,
    ``existing`` (the key was used before: the same message) or ``error`` with the field, prefixed by the item."""
    items = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(items, list) or not items:
        raise ChorusError("messages must be a non-empty list of message requests", field="messages")
    if len(items) > BATCH_MAX:
        raise ChorusError(f"at most {BATCH_MAX} messages per batch, got {len(items)}", field="messages")
    results: list[dict | None] = [None] * len(items)
    todo, where = [], []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise ChorusError("each message must be a JSON object", field="")
            key = item.get("idempotency_key")
            if key is not None and (not isinstance(key, str) or not key):
                raise ChorusError("idempotency_key must be a non-empty string", field="idempotency_key")
            req = outbox.parse_request({k: v for k, v in item.items() if k != "idempotency_key"})
        except ChorusError as exc:
            results[i] = _item_error(i, exc)
            continue
        todo.append((req, key))
        where.append(i)
    if todo:
        done = await run_in_threadpool(outbox.enqueue_many, svc.engine, ws, todo, svc.links)
        for i, (result, created) in zip(where, done, strict=True):
            if isinstance(result, ChorusError):
                results[i] = _item_error(i, result)
            else:
                results[i] = {"index": i, "result": "created" if created else "existing", "message": result}
        svc.wake_worker.set()
    counts = {k: sum(r["result"] == k for r in results) for k in ("created", "existing", "error")}
    return JSON({**counts, "results": results})


def _item_error(i: int, exc: ChorusError) -> dict:
    name = "idempotency_key" if exc.field == "Idempotency-Key" else exc.field  # the header's name in a batch item
    field = f"messages[{i}]" + (f".{name}" if name else "")
    return {"index": i, "result": "error", "error": {**error_body(exc), "field": shorten_field(field)}}


@router.get("/messages/{message_id}", summary="A message: channel choice, content and status history")
def get_message(ws: WS, svc: SVC, message_id: str):
    with read_only(svc.engine) as conn:
        return JSON(outbox.get_message(conn, ws.id, message_id))
