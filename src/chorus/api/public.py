"""Pages and redirects people reach from a message: unsubscribe, preferences, click tracking, open pixel.

No key is needed: each URL carries a signed token (see :mod:`chorus.messaging.links`). A GET never changes
consent (mail scanners fetch links); unsubscribing is a POST, which is exactly what RFC 8058 one-click sends.
"""

from __future__ import annotations

import html
from typing import Annotated

import sqlalchemy as sa
from fastapi import APIRouter, Form, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, RedirectResponse, Response

from chorus import workspaces as ws_api
from chorus.api.common import Services
from chorus.errors import NotFound
from chorus.messaging import outbox, policy
from chorus.messaging.consent import record_consent
from chorus.messaging.links import PIXEL
from chorus.profiles import views
from chorus.store.db import read_only
from chorus.store.tables import messages
from chorus.timeutil import utcnow

router = APIRouter(include_in_schema=False)


def _svc(request: Request) -> Services:
    return request.app.state.services


def _message(svc: Services, message_id: str) -> dict:
    with read_only(svc.engine) as conn:
        row = conn.execute(sa.select(messages).where(messages.c.id == message_id)).first()
    if row is None:
        raise NotFound("this message no longer exists")
    return dict(row._mapping)


def _unsub_message(svc: Services, token: str) -> dict:
    (message_id,) = svc.links.verify(token, "u")
    return _message(svc, message_id)


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}
button{{font-size:1rem;padding:.5rem 1rem}} label{{display:block;margin:.4rem 0}}</style></head>
<body><h1>{html.escape(title)}</h1>{body}</body></html>"""
    return HTMLResponse(doc, status_code=status)


def _not_found(exc: NotFound) -> HTMLResponse:
    return _page("Link not valid", f"<p>{html.escape(exc.message)}</p>", status=404)


def _unsubscribe(svc: Services, msg: dict, topic: str, how: str) -> None:
    now = utcnow()
    with svc.engine.begin() as conn:
        again = outbox.has_status(conn, msg["id"], "unsubscribed", topic=topic)
        if again and _still_denied(conn, msg, topic):
            return  # mailbox providers may post the one-click request more than once
        # a first unsubscribe, or one after she subscribed again (the preference page, a grant since): it stands
        # (an outside probe: the second one-click was taken for a repeat and she kept receiving the topic)
        record_consent(conn, msg, topic, "denied", how, now, direction="inbound")
        if not again:
            outbox.set_status(conn, msg, "unsubscribed", at=now, detail={"topic": topic, "how": how})


def _still_denied(conn, msg: dict, topic: str) -> bool:
    """Whether her newest word on the message's topic by its channel is still a denial, as a send reads it (the
    profile it went to, or the one it was merged into; an erased one: nothing to record). Her slot alone is not the
    answer: a later grant of the channel's marketing or of the topic everywhere outranks it (review); and a block
    of the whole channel (a bounce, a complaint) is no word on the topic: when it ends, her click must stand."""
    ws = ws_api.get(conn, msg["workspace_id"])
    try:
        profile = views.get_profile(conn, ws.id, msg["profile_id"], ws.identity)
    except NotFound:
        return True
    return policy.topic_denied(profile, msg["channel"] or "", topic)


@router.get("/u/{token}")
def unsubscribe_page(request: Request, token: str):
    svc = _svc(request)
    try:
        msg = _unsub_message(svc, token)
    except NotFound as exc:
        return _not_found(exc)
    topic, channel = html.escape(msg["topic"]), html.escape(msg["channel"] or "")
    return _page(
        "Unsubscribe",
        f"<p>Stop receiving <b>{topic}</b> messages by {channel}?</p>"
        f'<form method="post"><button type="submit" name="confirm" value="1">Unsubscribe</button></form>'
        f'<p><a href="/u/{html.escape(token)}/preferences">Choose what you receive instead</a></p>',
    )


@router.post("/u/{token}")
async def unsubscribe(request: Request, token: str):
    """RFC 8058 one-click (body ``List-Unsubscribe=One-Click``) or the confirm button of the page above."""
    svc = _svc(request)
    form = await request.form()
    one_click = form.get("List-Unsubscribe") == "One-Click"
    try:
        msg = _unsub_message(svc, token)
    except NotFound as exc:
        return _not_found(exc)
    if not one_click and form.get("confirm") != "1":
        return _page("Unsubscribe", "<p>Nothing was changed.</p>", status=400)
    await run_in_threadpool(_unsubscribe, svc, msg, msg["topic"], "one-click" if one_click else "unsubscribe page")
    svc.wake_worker.set()
    return _page("You are unsubscribed", f"<p>You will not receive {html.escape(msg['topic'])} messages any more.</p>")


def _topics(ws: ws_api.Workspace, msg: dict) -> dict[str, str]:
    conf = (ws.settings.get("messaging") or {}).get("topics") or {}
    out = {name: c.get("label") or name for name, c in conf.items()}
    out.setdefault(msg["topic"], msg["topic"])
    out.pop("transactional", None)
    return out


@router.get("/u/{token}/preferences")
def preferences_page(request: Request, token: str):
    svc = _svc(request)
    try:
        msg = _unsub_message(svc, token)
        with read_only(svc.engine) as conn:
            ws = ws_api.get(conn, msg["workspace_id"])
            profile = views.get_profile(conn, ws.id, msg["profile_id"], ws.identity)
    except NotFound as exc:
        return _not_found(exc)
    channel = msg["channel"]
    topics_conf = (ws.settings.get("messaging") or {}).get("topics")
    rows = []
    for name, label in sorted(_topics(ws, msg).items()):
        on = policy.consent_decision(profile, channel, name, "marketing", topics_conf).allowed
        rows.append(
            f'<label><input type="checkbox" name="topic" value="{html.escape(name)}"{" checked" if on else ""}> '
            f"{html.escape(label)}</label>"
        )
    return _page(
        "Your preferences",
        f'<p>What would you like to receive by {html.escape(channel)}?</p><form method="post">{"".join(rows)}'
        f'<label><input type="checkbox" name="none" value="1"> Nothing at all by {html.escape(channel)} '
        "(except messages about your orders and account)</label>"
        '<button type="submit">Save</button></form>',
    )


@router.post("/u/{token}/preferences")
def save_preferences(
    request: Request, token: str, topic: Annotated[list[str] | None, Form()] = None, none: Annotated[str, Form()] = ""
):
    svc = _svc(request)
    try:
        msg = _unsub_message(svc, token)
        with read_only(svc.engine) as conn:
            ws = ws_api.get(conn, msg["workspace_id"])
    except NotFound as exc:
        return _not_found(exc)
    wanted = set(topic or [])
    now = utcnow()
    with svc.engine.begin() as conn:
        record_consent(conn, msg, "marketing", "denied" if none else "granted", "preference page", now, "inbound")
        for name in _topics(ws, msg):
            status = "granted" if name in wanted and not none else "denied"
            record_consent(conn, msg, name, status, "preference page", now, direction="inbound")
    svc.wake_worker.set()
    return _page("Preferences saved", "<p>Thank you, your choices are saved.</p>")


def _engagement(svc: Services, message_id: str, status: str, detail: dict) -> None:
    try:
        msg = _message(svc, message_id)
    except NotFound:  # the message was erased: the person still gets the page or the image
        return
    with svc.engine.begin() as conn:
        outbox.set_status(conn, msg, status, at=utcnow(), detail=detail)


@router.get("/c/{token}")
def click(request: Request, token: str):
    svc = _svc(request)
    try:
        message_id, url = svc.links.verify(token, "c")
    except NotFound as exc:
        return _not_found(exc)
    _engagement(svc, message_id, "clicked", {"url": url})
    return RedirectResponse(url, status_code=302)


@router.get("/o/{token}.gif")
def opened(request: Request, token: str):
    svc = _svc(request)
    try:
        (message_id,) = svc.links.verify(token, "o")
        _engagement(svc, message_id, "opened", {})
    except NotFound:
        pass
    return Response(PIXEL, media_type="image/gif", headers={"Cache-Control": "no-store"})
