"""SendGrid's Event Webhook: delivery, engagement, bounces, complaints and unsubscribes of email sent through it.

SendGrid posts a JSON array of events to ``/webhooks/sendgrid/{workspace_id}/events``. Every request must carry a
valid Signed Event Webhook signature for the ``webhook_public_key`` of one of the workspace's SendGrid providers;
anything else is a 403 and changes nothing. An event names its message by the ``chorus_message_id`` custom arg
sent with it; events about messages this workspace does not have are ignored.

SendGrid delivers each batch at least once (it retries on errors and timeouts), so every event is applied at most
once: its ``sg_event_id`` goes into the detail of the status it wrote, and an id already in the message's history
is skipped. Events about one message are applied in one transaction that holds the message row.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool

from chorus import workspaces as ws_api
from chorus.api.common import JSON, Services, read_limited
from chorus.api.webhooks import Forbidden
from chorus.errors import ChorusError, NotFound
from chorus.messaging import consent, outbox
from chorus.messaging.providers import ConfigError, build
from chorus.messaging.providers.sendgrid import valid_signature
from chorus.store.db import read_only
from chorus.store.tables import message_status, messages
from chorus.timeutil import parse_ts, utcnow

router = APIRouter(prefix="/webhooks", include_in_schema=False)
MAX_BODY = 16 * 1024 * 1024
# What each SendGrid event becomes; processed, deferred and group_resubscribe change nothing.
STATUS_OF = {
    "delivered": "delivered", "open": "opened", "click": "clicked", "bounce": "bounced", "dropped": "failed",
    "spamreport": "complained", "unsubscribe": "unsubscribed", "group_unsubscribe": "unsubscribed",
}  # fmt: skip


def _verify(svc: Services, request: Request, workspace_id: str, body: bytes) -> ws_api.Workspace:
    try:
        with read_only(svc.engine) as conn:
            ws = ws_api.get(conn, workspace_id)
    except NotFound:
        raise Forbidden("unknown workspace") from None
    signature = request.headers.get("x-twilio-email-event-webhook-signature")
    timestamp = request.headers.get("x-twilio-email-event-webhook-timestamp")
    confs = ((ws.settings.get("messaging") or {}).get("providers") or {}).get("email") or []
    for i, conf in enumerate(confs):
        if not isinstance(conf, dict) or conf.get("type") != "sendgrid":
            continue
        try:  # the key is public and stored in settings: the API key's variable need not be set here
            key = build(conf, f"settings.messaging.providers.email[{i}]", resolve_secrets=False,
                        workspace=ws.name).webhook_key
        except ConfigError:
            continue
        if key is not None and valid_signature(key, signature, timestamp, body):
            return ws
    raise Forbidden(
        "X-Twilio-Email-Event-Webhook-Signature does not verify with the webhook_public_key of any SendGrid"
        " provider of this workspace"
    )


@router.post("/sendgrid/{workspace_id}/events")
async def sendgrid_events(request: Request, workspace_id: str):
    svc: Services = request.app.state.services
    body = await read_limited(request, MAX_BODY, "the event batch")
    ws = await run_in_threadpool(_verify, svc, request, workspace_id, body)
    try:
        events = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ChorusError("the body must be a JSON array of events", field="body") from None
    if not isinstance(events, list):
        raise ChorusError("the body must be a JSON array of events", field="body")
    applied = await run_in_threadpool(_apply, svc, ws, events)
    if applied:
        svc.wake_worker.set()  # consent events and timeline events to resolve
    return JSON({"ok": True, "applied": applied})


def _event_id(ev: dict) -> str:
    eid = ev.get("sg_event_id")
    if isinstance(eid, str) and eid:
        return eid
    return "sha256:" + hashlib.sha256(orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _at(ev: dict, now: datetime) -> datetime:
    try:
        return min(parse_ts(ev.get("timestamp")), now)
    except (ValueError, OverflowError, OSError):
        return now


def _apply(svc: Services, ws: ws_api.Workspace, events: list) -> int:
    """Apply the batch; returns how many events changed something."""
    by_message: dict[str, list[dict]] = {}
    for ev in events:
        if not isinstance(ev, dict) or ev.get("event") not in STATUS_OF:
            continue
        mid = ev.get("chorus_message_id")
        if not isinstance(mid, str) or ev.get("chorus_workspace_id", ws.id) != ws.id:
            continue
        by_message.setdefault(mid, []).append(ev)
    now = utcnow()
    applied = 0
    for mid in sorted(by_message):  # a fixed order of row locks: two batches never wait on each other in a cycle
        with svc.engine.begin() as conn:
            if any(_withdraws_consent(ev) for ev in by_message[mid]):  # before the row (see consent.lock_owners)
                consent.lock_owners(conn, ws.id, consent.message_owners(conn, ws.id, messages.c.id == mid))
            q = sa.select(messages).where(messages.c.workspace_id == ws.id, messages.c.id == mid)
            if conn.dialect.name == "postgresql":  # SQLite transactions take the write lock at BEGIN already
                q = q.with_for_update()
            row = conn.execute(q).first()
            if row is None:
                continue
            msg = dict(row._mapping)
            seen = {
                d.get("sg_event_id")
                for (d,) in conn.execute(sa.select(message_status.c.detail).where(message_status.c.message_id == mid))
            }
            for ev in sorted(by_message[mid], key=lambda e: _at(e, now)):
                eid = _event_id(ev)
                if eid in seen:
                    continue
                seen.add(eid)
                _apply_event(conn, msg, ev, eid, _at(ev, now))
                applied += 1
    return applied


def _withdraws_consent(ev: dict) -> bool:
    """Whether ``_apply_event`` calls ``consent.record_consent`` for this event."""
    kind = ev["event"]
    if kind == "bounce":
        return ev.get("type") != "blocked"
    return kind in ("spamreport", "unsubscribe", "group_unsubscribe")


def _apply_event(conn: Connection, msg: dict, ev: dict, eid: str, at: datetime) -> None:
    kind = ev["event"]
    status = STATUS_OF[kind]
    provider = msg["provider"] or "sendgrid"
    detail: dict = {"provider_event": kind, "sg_event_id": eid}
    reason = str(ev.get("reason") or ev.get("response") or "").strip()[:500]
    if kind == "bounce" and ev.get("type") == "blocked":
        status = "failed"
    if status in ("bounced", "failed"):
        what = "blocked" if kind == "bounce" and status == "failed" else kind
        detail["reason"] = reason or what
        if ev.get("status"):
            detail["smtp_status"] = str(ev["status"])
        outbox.set_status(
            conn, msg, status, at=at, detail=detail, reason=f"{provider}: {what}" + (f": {reason}" if reason else "")
        )
        if status == "bounced":
            consent.record_consent(conn, msg, "*", "denied", f"hard bounce: {reason or 'SendGrid bounce'}", at)
        return
    if kind == "click":
        detail["url"] = str(ev.get("url") or "")
    elif kind == "open" and ev.get("sg_machine_open"):
        detail["machine_open"] = True
    elif kind == "spamreport":
        outbox.set_status(conn, msg, status, at=at, detail=detail)
        consent.record_consent(conn, msg, "*", "denied", "spam complaint (SendGrid)", at, direction="inbound")
        return
    elif status == "unsubscribed":
        how = f"SendGrid {kind}" + (f" (group {ev['asm_group_id']})" if ev.get("asm_group_id") else "")
        consent.record_consent(conn, msg, msg["topic"], "denied", how, at, direction="inbound")
        detail.update(topic=msg["topic"], how=how)
    outbox.set_status(conn, msg, status, at=at, detail=detail)
