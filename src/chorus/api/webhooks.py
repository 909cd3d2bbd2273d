"""Provider webhooks: Twilio status callbacks and inbound SMS (STOP/START/HELP, replies).

Every request must carry a valid ``X-Twilio-Signature`` for one of the workspace's Twilio providers, computed over
the URL Twilio was given (``CHORUS_PUBLIC_URL`` + path); anything else is a 403 and changes nothing.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

import sqlalchemy as sa
from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from chorus import workspaces as ws_api
from chorus.api.common import JSON, Services
from chorus.errors import ChorusError, NotFound
from chorus.identity.identifiers import normalise_phone
from chorus.messaging import consent, outbox
from chorus.messaging.providers import ConfigError, build
from chorus.messaging.providers.twilio import STATUS_MAP, UNREACHABLE_NUMBER, keyword, valid_signature
from chorus.store.db import read_only
from chorus.store.tables import identifiers, messages
from chorus.timeutil import utcnow

router = APIRouter(prefix="/webhooks", include_in_schema=False)
DEFAULT_HELP = "Reply STOP to stop receiving messages, START to receive them again."
# Delivery error codes in status callbacks that mean the number cannot receive SMS (a hard bounce).
UNDELIVERABLE = {30003, 30005, 30006} | UNREACHABLE_NUMBER
# How far a message got: a callback never moves it back.
OUTCOME_RANK = {"queued": 0, "retrying": 0, "sending": 0, "sent": 1, "delivered": 2, "failed": 3, "bounced": 3}
# statuses of a message no provider has taken: queued (not claimed yet) and skipped (not sent, or withdrawn before
# it went out). A signed callback naming one (a replayed or mis-routed URL) made a skipped text "bounced" and
# denied the person every SMS (an outside probe)
NEVER_SENT = frozenset({"queued", "skipped"})


class Forbidden(ChorusError):
    status = 403
    code = "forbidden"


def lock_identity(conn, ws_id: str) -> None:
    """Take the workspace's identity lock (PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes the resolver)
    before reading who owns a sender's identifier: a merge, a split or a replay that the resolver commits after
    that read would leave a reply on the last message of a profile that no longer owns the address (and its
    timeline event on that person). The STOP path takes it again in ``consent.record`` (it is re-entrant); the
    message row is locked after it, in the order an erasure takes them.

    Every transaction that may reach ``consent.record`` (a bounce, a spam complaint, an unsubscribe) takes it
    before its first row lock: one that locked a message first and then waited here for a reply's transaction,
    which holds this lock and waits for that message, would be a deadlock."""
    consent.lock_identity(conn, ws_id)


def _twiml(text: str | None = None) -> Response:
    body = f"<Message>{escape(text)}</Message>" if text else ""
    return Response(f'<?xml version="1.0" encoding="UTF-8"?><Response>{body}</Response>', media_type="text/xml")


async def _verified(request: Request, workspace_id: str) -> tuple[ws_api.Workspace, dict[str, str]]:
    svc: Services = request.app.state.services
    form = {k: str(v) for k, v in (await request.form()).items()}
    try:
        with read_only(svc.engine) as conn:
            ws = ws_api.get(conn, workspace_id)
    except NotFound:
        raise Forbidden("unknown workspace") from None
    url = svc.links.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    given = request.headers.get("x-twilio-signature")
    confs = ((ws.settings.get("messaging") or {}).get("providers") or {}).get("sms") or []
    for i, conf in enumerate(confs):
        if conf.get("type") != "twilio":
            continue
        try:
            token = build(conf, f"settings.messaging.providers.sms[{i}]", workspace=ws.name).auth_token
        except ConfigError:
            continue
        if token and valid_signature(token, url, form, given):
            return ws, form
    raise Forbidden("X-Twilio-Signature does not match any Twilio provider of this workspace")


@router.post("/twilio/{workspace_id}/status")
async def twilio_status(request: Request, workspace_id: str):
    ws, form = await _verified(request, workspace_id)
    svc: Services = request.app.state.services
    status = STATUS_MAP.get(form.get("MessageStatus", ""))
    if status is None:  # queued / accepted / sending: nothing new to record
        return JSON({"ok": True})
    await run_in_threadpool(_apply_status, svc, ws, form, status, request.query_params.get("m"))
    return JSON({"ok": True})


def _apply_status(svc: Services, ws: ws_api.Workspace, form: dict, status: str, message_id: str | None) -> None:
    now = utcnow()
    sid = form.get("MessageSid")
    code = form.get("ErrorCode")
    bounce = status == "failed" and bool(code) and code.isdigit() and int(code) in UNDELIVERABLE
    with svc.engine.begin() as conn:
        # The callback URL names the message (``?m=``, signed with the rest of the URL): a report that arrives
        # before the worker recorded Twilio's SID still finds it. Older URLs only have the SID.
        by = messages.c.id == message_id if message_id else messages.c.provider_message_id == sid
        if bounce:  # it withdraws consent: the identity lock and her profile before the message row (lock_owners)
            consent.lock_owners(conn, ws.id, consent.message_owners(conn, ws.id, by))
        q = sa.select(messages).where(messages.c.workspace_id == ws.id, by)
        if conn.dialect.name == "postgresql":  # two copies of a callback at once: one waits for the other
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None or (row.provider_message_id and row.provider_message_id != sid):
            return
        if row.status in NEVER_SENT:  # no provider ever had it: a report about it is about another message
            return
        msg = dict(row._mapping)
        columns = {} if row.provider_message_id else {"provider_message_id": sid}
        if outbox.has_status(conn, msg["id"], status, provider_status=form.get("MessageStatus")):
            return  # Twilio repeats callbacks; each state counts once
        if OUTCOME_RANK.get(status, 0) < OUTCOME_RANK.get(msg["status"], 0) and status != "opened":
            return  # callbacks arrive out of order: a late "sent" never undoes "delivered" or "failed"
        detail = {"provider_status": form.get("MessageStatus")}
        if code:
            detail["error_code"] = code
        if bounce:
            outbox.set_status(conn, msg, "bounced", at=now, detail=detail, reason=f"Twilio error {code}", **columns)
            consent.record_consent(conn, msg, "*", "denied", f"undeliverable number (Twilio error {code})", now)
        elif status == "failed":
            outbox.set_status(conn, msg, "failed", at=now, detail=detail, reason=f"Twilio: {form.get('MessageStatus')}"
                              + (f" (error {code})" if code else ""), **columns)  # fmt: skip
        elif status != msg["status"]:
            outbox.set_status(conn, msg, status, at=now, detail=detail, **columns)


@router.post("/twilio/{workspace_id}/inbound")
async def twilio_inbound(request: Request, workspace_id: str):
    ws, form = await _verified(request, workspace_id)
    svc: Services = request.app.state.services
    reply = await run_in_threadpool(_inbound, svc, ws, form)
    svc.wake_worker.set()
    return _twiml(reply)


def _inbound(svc: Services, ws: ws_api.Workspace, form: dict) -> str | None:
    try:
        phone = normalise_phone(form.get("From", ""), ws.identity.default_region)
    except ValueError:
        return None  # a short code or alphanumeric sender: no person to attach it to
    body = form.get("Body", "")
    word = keyword(body)
    now = utcnow()
    with svc.engine.begin() as conn:
        lock_identity(conn, ws.id)
        owner = conn.execute(
            sa.select(identifiers.c.profile_id).where(
                identifiers.c.workspace_id == ws.id, identifiers.c.ident == f"phone:{phone}"
            )
        ).scalar_one_or_none()
        ident = {"context": {"traits": {"phone": phone}}}
        sid = form.get("MessageSid") or now.isoformat()
        if word in ("stop", "start"):
            status = "denied" if word == "stop" else "granted"
            consent.record(
                conn, ws.id, ident, channel="sms", topic="*", status=status, reason=f"SMS keyword {body.strip()!r}",
                at=now, direction="inbound", key=sid, profile_id=owner, unique_key=bool(form.get("MessageSid")),
            )  # fmt: skip
            return None  # Twilio (and the carrier) answer STOP and START themselves
        if word == "help":
            return (ws.settings.get("messaging") or {}).get("sms_help") or DEFAULT_HELP
        last = None
        if owner is not None:
            last = conn.execute(
                sa.select(messages)
                .where(messages.c.workspace_id == ws.id, messages.c.profile_id == owner, messages.c.channel == "sms")
                .order_by(messages.c.created_at.desc())
                .limit(1)
            ).first()
        if last is not None:
            if not outbox.has_status(conn, last.id, "replied", sid=sid):  # Twilio retries webhooks
                outbox.set_status(
                    conn, dict(last._mapping), "replied", at=now, detail={"text": body[:1600], "sid": sid}
                )
        else:
            from chorus.collect import ingest
            from chorus.collect.messages import Event, normalise

            raw = {"type": "track", "event": "Message Received", "messageId": f"twilio-{sid}",
                   "timestamp": now.isoformat(), "properties": {"text": body[:1600], "to": form.get("To")},
                   "context": {"traits": {"phone": phone}, "channel": "sms", "direction": "inbound"}}  # fmt: skip
            ev = normalise(raw, received_at=now, source_kind="webhook", require_ids=False)
            src = ws_api.internal_source(conn, ws.id, "webhook", "twilio")
            # a message the door refuses (a NUL in its text...) is kept with its reason, never dropped
            ingest.store(conn, src, *(([ev], []) if isinstance(ev, Event) else ([], [ev])), now)
    return None
