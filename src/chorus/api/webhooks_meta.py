"""Meta's webhooks for WhatsApp and Messenger: delivery statuses, opt-out keywords and replies.

``GET /webhooks/meta/{workspace_id}`` answers Meta's verification handshake: ``hub.mode=subscribe`` and a
``hub.verify_token`` equal to the ``verify_token`` of one of the workspace's WhatsApp or Messenger providers get
``hub.challenge`` back; anything else is a 403.

``POST /webhooks/meta/{workspace_id}`` must carry ``X-Hub-Signature-256`` (HMAC-SHA256 of the raw body keyed with
the app secret of one of those providers); anything else is a 403 and changes nothing. WhatsApp payloads
(``object: whatsapp_business_account``) carry ``statuses`` and ``messages``; Messenger payloads (``object: page``)
carry ``messaging`` events with ``message``, ``delivery`` or ``read``. Statuses are matched to messages by the
provider message id (``wamid.…``, ``mid``); a status that arrives before the send is recorded is held until it
is (:mod:`chorus.messaging.reports`). Meta delivers each notification at least once, so every change is
applied at most once: statuses are deduplicated on the message history, inbound messages on their Meta id.
A verified request is answered 200 even when parts of it mean nothing to Chorus, since Meta disables webhooks
that keep failing.
"""

from __future__ import annotations

import hmac
from datetime import datetime

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse

from chorus import workspaces as ws_api
from chorus.api.common import JSON, Services, read_limited
from chorus.api.webhooks import Forbidden, lock_identity
from chorus.errors import NotFound
from chorus.identity.identifiers import normalise_phone
from chorus.messaging import consent, outbox, reports
from chorus.messaging.providers import ConfigError, build
from chorus.messaging.providers.meta import app_secret, valid_signature
from chorus.messaging.providers.twilio import keyword
from chorus.messaging.reports import CHANNELS, LABEL
from chorus.store import bulk
from chorus.store.db import read_only
from chorus.store.tables import identifiers, messages
from chorus.timeutil import iso, parse_ts, utcnow

router = APIRouter(prefix="/webhooks", include_in_schema=False)
MAX_BODY = 4 * 1024 * 1024
# WhatsApp status values -> Chorus statuses ("sent" is already known from the send itself).
WA_STATUS = {"delivered": "delivered", "read": "opened", "failed": "failed"}
MAX_TEXT = 4096
READ_BATCH = 200  # a Messenger read watermark marks at most this many earlier messages of the conversation


def _dicts(value: object) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _obj(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _confs(ws: ws_api.Workspace):
    """(configuration, settings path) of each WhatsApp and Messenger provider of the workspace."""
    providers = (ws.settings.get("messaging") or {}).get("providers") or {}
    for channel in CHANNELS:
        for i, conf in enumerate(providers.get(channel) or []):
            if isinstance(conf, dict) and conf.get("type") == channel:
                yield conf, f"settings.messaging.providers.{channel}[{i}]"


def _workspace(svc: Services, workspace_id: str) -> ws_api.Workspace:
    try:
        with read_only(svc.engine) as conn:
            return ws_api.get(conn, workspace_id)
    except NotFound:
        raise Forbidden("unknown workspace") from None


@router.get("/meta/{workspace_id}")
async def meta_verify(request: Request, workspace_id: str):
    svc: Services = request.app.state.services
    ws = await run_in_threadpool(_workspace, svc, workspace_id)
    q = request.query_params
    token, challenge = q.get("hub.verify_token") or "", q.get("hub.challenge")
    if q.get("hub.mode") == "subscribe" and token and challenge is not None:
        for conf, where in _confs(ws):
            try:
                expected = build(conf, where, resolve_secrets=False, workspace=ws.name).verify_token
            except ConfigError:
                continue
            if expected and hmac.compare_digest(expected.encode(), token.encode()):
                return PlainTextResponse(challenge[:200])
    raise Forbidden("hub.verify_token does not match the verify_token of any WhatsApp or Messenger provider")


def _verify(svc: Services, workspace_id: str, given: str | None, body: bytes) -> ws_api.Workspace:
    ws = _workspace(svc, workspace_id)
    for conf, where in _confs(ws):
        try:  # only the app secret is needed here: the access token's variable may be set on the worker only
            build(conf, where, resolve_secrets=False, workspace=ws.name)
            key = app_secret(conf, where, ws.name)
        except ConfigError:
            continue
        if key and valid_signature(key, body, given):
            return ws
    raise Forbidden("X-Hub-Signature-256 does not match the app secret of any WhatsApp or Messenger provider")


@router.post("/meta/{workspace_id}")
async def meta_events(request: Request, workspace_id: str):
    svc: Services = request.app.state.services
    body = await read_limited(request, MAX_BODY, "the notification")
    ws = await run_in_threadpool(_verify, svc, workspace_id, request.headers.get("x-hub-signature-256"), body)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        payload = None
    applied = await run_in_threadpool(_apply, svc, ws, _obj(payload))
    if applied:
        svc.wake_worker.set()  # consent and timeline events to resolve
    return JSON({"ok": True, "applied": applied})


def _at(value: object, now: datetime) -> datetime:
    """Meta's timestamps: epoch seconds as a string (WhatsApp) or epoch milliseconds (Messenger)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    try:
        return min(parse_ts(value), now)
    except (ValueError, OverflowError, OSError):
        return now


def _apply(svc: Services, ws: ws_api.Workspace, payload: dict) -> int:
    """Apply a notification, one transaction per item; returns how many items were applied (a repeated status or
    reply counts 0; a repeated STOP/START counts, but its consent event, keyed by Meta's id and time, is stored once).
    """
    now = utcnow()
    applied = 0
    if payload.get("object") == "whatsapp_business_account":
        for entry in _dicts(payload.get("entry")):
            for change in _dicts(entry.get("changes")):
                if change.get("field", "messages") != "messages":
                    continue
                value = _obj(change.get("value"))
                for st in _dicts(value.get("statuses")):
                    applied += _wa_status(svc, ws, st, now)
                for m in _dicts(value.get("messages")):
                    applied += _wa_message(svc, ws, m, now)
    elif payload.get("object") == "page":
        for entry in _dicts(payload.get("entry")):
            for ev in _dicts(entry.get("messaging")):
                psid = str(_obj(ev.get("sender")).get("id") or "")
                at = _at(ev.get("timestamp"), now)
                if not psid:
                    continue
                if isinstance(ev.get("message"), dict):
                    applied += _ms_message(svc, ws, psid, ev["message"], at)
                if isinstance(ev.get("delivery"), dict):
                    for mid in ev["delivery"].get("mids") or []:
                        if isinstance(mid, str):
                            applied += _report(svc, ws, mid, "delivered", "delivery", at, None, now)
                if isinstance(ev.get("read"), dict):
                    applied += _ms_read(svc, ws, psid, _at(ev["read"].get("watermark"), now))
    return applied


# -- statuses -----------------------------------------------------------------------------------------------------
def _locked(conn: Connection, q):
    if conn.dialect.name == "postgresql":  # a repeated notification racing this one waits, then sees the status
        q = q.with_for_update()
    return conn.execute(q).first()


def _wa_status(svc: Services, ws: ws_api.Workspace, st: dict, now: datetime) -> int:
    status = WA_STATUS.get(str(st.get("status")))
    wamid = st.get("id")
    if status is None or not isinstance(wamid, str):
        return 0
    return _report(svc, ws, wamid, status, str(st["status"]), _at(st.get("timestamp"), now),
                   _first(_dicts(st.get("errors"))), now)  # fmt: skip


def _report(
    svc: Services, ws: ws_api.Workspace, provider_id: str, status: str, provider_status: str, at: datetime,
    error: dict | None, now: datetime,
) -> int:  # fmt: skip
    with svc.engine.begin() as conn:
        if reports.withdraws_consent(status, error):  # before the message row (see consent.lock_owners)
            reports.lock_owners(conn, ws.id, [provider_id])
        applied, held = reports.report(conn, ws.id, provider_id, status, provider_status, at, error, now)
    if held:  # the worker may have recorded the send between that lookup and this commit
        with svc.engine.begin() as conn:
            if reports.held_bounces(conn, ws.id, [provider_id]):  # a held bounce: her profile before the message
                reports.lock_owners(conn, ws.id, [provider_id])
            applied = reports.release(conn, ws.id, [provider_id])
    return applied


def _first(errors: list[dict]) -> dict | None:
    if not errors:
        return None
    code = errors[0].get("code")
    if isinstance(code, str) and code.isdigit():
        return {**errors[0], "code": int(code)}
    return errors[0]


def _ms_read(svc: Services, ws: ws_api.Workspace, psid: str, watermark: datetime) -> int:
    """Everything sent to the person before the watermark has been read."""
    applied = 0
    with svc.engine.begin() as conn:
        q = (
            sa.select(messages)
            .where(
                messages.c.workspace_id == ws.id,
                messages.c.channel == "messenger",
                messages.c.address == psid,
                messages.c.status.in_(("sent", "delivered")),
                messages.c.sent_at <= watermark,
            )
            .order_by(messages.c.sent_at.desc())
            .limit(READ_BATCH)
        )
        if conn.dialect.name == "postgresql":
            # which ones read without a lock, then locked in id order, the order every writer of several messages
            # takes them (an erasure holding her messages deadlocked with a receipt locking them newest first), and
            # checked again under the lock
            ids = list(conn.execute(q.with_only_columns(messages.c.id)).scalars())
            if not ids:
                return 0
            q = (q.where(bulk.in_(messages.c.id, ids, "postgresql")).order_by(None).limit(None)
                 .order_by(messages.c.id).with_for_update())  # fmt: skip
        rows = sorted(conn.execute(q).all(), key=lambda r: r.sent_at, reverse=True)
        for row in rows:
            applied += reports.apply(conn, dict(row._mapping), "opened", "read", watermark, None)
    return applied


# -- inbound messages ---------------------------------------------------------------------------------------------
def _wa_message(svc: Services, ws: ws_api.Workspace, m: dict, now: datetime) -> int:
    sender, mid, mtype = str(m.get("from") or ""), m.get("id"), str(m.get("type") or "")
    if not sender.isdigit() or not isinstance(mid, str) or mtype == "system":
        return 0  # "system": the person changed number, nothing they said
    text = (
        _obj(m.get("text")).get("body")
        or _obj(m.get("button")).get("text")
        or _obj(_obj(m.get("interactive")).get("button_reply")).get("title")
        or _obj(_obj(m.get("interactive")).get("list_reply")).get("title")
        or _obj(m.get("reaction")).get("emoji")
        or ""
    )
    candidates = []  # who sent it: the phone first, then a declared WhatsApp id
    try:
        phone = normalise_phone("+" + sender, None)
        candidates.append((f"phone:{phone}", {"context": {"traits": {"phone": phone}}}))
    except ValueError:
        pass
    if "whatsapp_id" in ws.identity.declared:
        candidates.append(
            (f"whatsapp_id:{sender}", {"context": {"externalIds": [{"type": "whatsapp_id", "id": sender}]}})
        )
    if not candidates:
        return 0
    with svc.engine.begin() as conn:
        return _inbound(conn, ws, "whatsapp", candidates, str(text), mtype, mid, _at(m.get("timestamp"), now))


def _ms_message(svc: Services, ws: ws_api.Workspace, psid: str, message: dict, at: datetime) -> int:
    mid = message.get("mid")
    if message.get("is_echo") or not isinstance(mid, str) or "messenger_psid" not in ws.identity.declared:
        return 0  # an echo is the page's own message
    ident = {"context": {"externalIds": [{"type": "messenger_psid", "id": psid}]}}
    text = message.get("text") if isinstance(message.get("text"), str) else ""
    mtype = "text" if text else ("attachments" if message.get("attachments") else "other")
    with svc.engine.begin() as conn:
        return _inbound(conn, ws, "messenger", [(f"messenger_psid:{psid}", ident)], text, mtype, mid, at)


def _inbound(
    conn: Connection, ws: ws_api.Workspace, channel: str, candidates: list[tuple[str, dict]], text: str, mtype: str,
    inbound_id: str, at: datetime,
) -> int:  # fmt: skip
    """STOP/START or a reply, from whoever the first known candidate identifier names (else the first one)."""
    lock_identity(conn, ws.id)  # before reading the owner (see webhooks.lock_identity)
    owner, ident = None, candidates[0][1]
    for key, cand in candidates:
        owner = conn.execute(
            sa.select(identifiers.c.profile_id).where(identifiers.c.workspace_id == ws.id, identifiers.c.ident == key)
        ).scalar_one_or_none()
        if owner is not None:
            ident = cand
            break
    word = keyword(text) if text else None
    if word in ("stop", "start"):  # Meta's own timestamp and id make a repeated notification the same event
        consent.record(
            conn, ws.id, ident, channel=channel, topic="*", status="denied" if word == "stop" else "granted",
            reason=f"{LABEL[channel]} keyword {text.strip()!r}", at=at, direction="inbound", key=inbound_id,
            profile_id=owner, unique_key=True,
        )  # fmt: skip
        return 1
    detail = {"text": text[:MAX_TEXT], "inbound_id": inbound_id}
    if mtype != "text":
        detail["type"] = mtype
    last = None
    if owner is not None:
        last = _locked(
            conn,
            sa.select(messages)
            .where(messages.c.workspace_id == ws.id, messages.c.profile_id == owner, messages.c.channel == channel)
            .order_by(messages.c.created_at.desc())
            .limit(1),
        )
    if last is not None:
        if outbox.has_status(conn, last.id, "replied", inbound_id=inbound_id):
            return 0
        outbox.set_status(conn, dict(last._mapping), "replied", at=at, detail=detail)
        return 1
    from chorus.collect import ingest
    from chorus.collect.messages import Event, normalise

    props = {k: v for k, v in detail.items() if k != "inbound_id"}
    raw = {"type": "track", "event": "Message Received", "messageId": f"{channel}-{inbound_id}"[:200],
           "timestamp": iso(at), "properties": props,
           "context": {**ident["context"], "channel": channel, "direction": "inbound"}}  # fmt: skip
    ev = normalise(raw, received_at=at, source_kind="webhook", require_ids=False)
    src = ws_api.internal_source(conn, ws.id, "webhook", channel)
    if not isinstance(ev, Event):  # refused by the door (a NUL in the text...): kept with its reason, never dropped
        ingest.store(conn, src, [], [ev], utcnow())
        return 0
    return ingest.store(conn, src, [ev], [], utcnow()).accepted  # 0 for a repeated notification
