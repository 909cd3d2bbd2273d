"""The outbox: a send request becomes one ``messages`` row, exactly once per idempotency key.

``enqueue`` decides everything that can be decided before delivery, in one transaction: the profile, the
channel (and why), consent, the rendered content (or the reason it cannot be rendered). The row, its first
status and the matching timeline event commit together, so a crash leaves either nothing or a queued message.
Every later state change goes through :func:`set_status`, which appends to the history and records the event on
the profile timeline (``Message Sent``, ``Message Opened``...).
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from chorus import metrics
from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event, normalise
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.messaging import content, policy
from chorus.messaging.consent import identity_fields
from chorus.messaging.links import Links, track_html
from chorus.messaging.subscriptions import endpoints_of, with_push_addresses
from chorus.profiles import views
from chorus.store.tables import message_status, messages, partials, templates
from chorus.timeutil import iso, utcnow

KINDS = ("marketing", "transactional")
# Timeline event names (Segment-style object-action) for the states a person or a segment can care about.
STATUS_EVENTS = {
    "queued": "Message Queued",
    "skipped": "Message Skipped",
    "sent": "Message Sent",
    "delivered": "Message Delivered",
    "opened": "Message Opened",
    "clicked": "Message Clicked",
    "bounced": "Message Bounced",
    "complained": "Message Complained",
    "failed": "Message Failed",
    "replied": "Message Replied",
    "unsubscribed": "Message Unsubscribed",
}
# What the person did (counts as activity on the channel); the rest is Chorus talking.
INBOUND = frozenset({"opened", "clicked", "complained", "replied", "unsubscribed"})
PENDING = ("queued", "retrying", "sending")
ENGAGEMENT = frozenset({"opened", "clicked", "replied", "unsubscribed", "complained"})
# Messages that count against frequency caps: going out, or gone out.
PACED = ("queued", "retrying", "sending", "sent", "delivered", "opened", "clicked", "replied", "unsubscribed",
         "complained")  # fmt: skip


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# -- the request ------------------------------------------------------------------------------------------------
def parse_request(body: object) -> dict:
    """Validate a send request; errors name the field."""
    if not isinstance(body, dict):
        raise ChorusError("the body must be a JSON object", field="body")
    unknown = set(body) - {
        "profile_id", "to", "template", "content", "channel", "kind", "topic", "event", "data", "locale",
        "journey_id", "campaign_id",
    }  # fmt: skip
    if unknown:
        raise ChorusError(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    if bool(body.get("profile_id")) == bool(body.get("to")):
        raise ChorusError('give exactly one of profile_id or to (an identifier: {"email": ...})', field="profile_id")
    if body.get("to") is not None:
        if not isinstance(body["to"], dict) or len(body["to"]) != 1:
            raise ChorusError('to must be one identifier, e.g. {"email": "ana@example.com"}', field="to")
        ((id_kind, value),) = body["to"].items()
        if not isinstance(value, str) or not value.strip() or len(value) > 400:
            raise ChorusError(f"to.{id_kind} must be a non-empty string", field=f"to.{id_kind}")
    if bool(body.get("template")) == bool(body.get("content")):
        raise ChorusError("give exactly one of template (a saved template's name) or content", field="template")
    channel = body.get("channel", "auto")
    if channel != "auto":
        chans = channel if isinstance(channel, list) else [channel]
        if not chans or any(c not in policy.MESSAGE_CHANNELS for c in chans):
            raise ChorusError(
                f"channel must be 'auto', a channel or a list of channels among {', '.join(policy.MESSAGE_CHANNELS)}",
                field="channel",
            )
        channel = list(dict.fromkeys(chans))
    kind = body.get("kind")
    if kind is not None and kind not in KINDS:
        raise ChorusError("kind must be marketing or transactional", field="kind")
    for key in ("event", "data"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ChorusError(f"{key} must be a JSON object", field=key)
    for key in ("topic", "locale", "journey_id", "campaign_id", "profile_id", "template"):
        if body.get(key) is not None and (not isinstance(body[key], str) or len(body[key]) > 64):
            raise ChorusError(f"{key} must be a string of at most 64 characters", field=key)
    return {**body, "channel": channel}


def request_hash(req: dict) -> str:
    return hashlib.sha256(orjson.dumps(req, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- templates --------------------------------------------------------------------------------------------------
def load_partials(conn: Connection, ws: str) -> dict[str, str]:
    return dict(conn.execute(sa.select(partials.c.name, partials.c.source).where(partials.c.workspace_id == ws)).all())


def load_template(conn: Connection, ws: str, name: str) -> dict:
    row = conn.execute(
        sa.select(templates.c.definition).where(templates.c.workspace_id == ws, templates.c.name == name)
    ).first()
    if row is None:
        raise NotFound(f"template {name!r} not found", field="template")
    return row.definition


def save_template(engine: Engine, ws: str, name: str, doc: dict) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ChorusError("a template name is 1 to 64 letters, digits, '_', '.' or '-'", field="name")
    with engine.begin() as conn:
        parts = load_partials(conn, ws)
        defn = _validated({**doc, "name": name}, parts)
        row = conn.execute(
            sa.select(templates.c.version).where(templates.c.workspace_id == ws, templates.c.name == name)
        ).first()
        now = utcnow()
        if row is None:
            conn.execute(
                templates.insert().values(workspace_id=ws, name=name, definition=defn, version=1, updated_at=now)
            )
            version = 1
        else:
            version = row.version + 1
            conn.execute(
                templates.update()
                .where(templates.c.workspace_id == ws, templates.c.name == name)
                .values(definition=defn, version=version, updated_at=now)
            )
    return {"name": name, "version": version, "definition": defn}


def save_partial(engine: Engine, ws: str, name: str, source: str) -> dict:
    try:
        content.validate_partial(name, source)
    except content.ContentError as exc:
        raise ChorusError(str(exc), field=exc.field) from None
    with engine.begin() as conn:
        now = utcnow()
        exists = conn.execute(
            sa.select(partials.c.name).where(partials.c.workspace_id == ws, partials.c.name == name)
        ).first()
        if exists:
            conn.execute(
                partials.update()
                .where(partials.c.workspace_id == ws, partials.c.name == name)
                .values(source=source, updated_at=now)
            )
        else:
            conn.execute(partials.insert().values(workspace_id=ws, name=name, source=source, updated_at=now))
    return {"name": name}


def _validated(doc: object, parts: dict[str, str]) -> dict:
    try:
        return content.validate_definition(doc, parts)
    except content.ContentError as exc:
        raise ChorusError(str(exc), field=exc.field) from None


# -- timeline events --------------------------------------------------------------------------------------------
def _record_event(conn: Connection, msg: dict, profile: dict, status: str, at: datetime, detail: dict, n: int) -> None:
    name = STATUS_EVENTS.get(status)
    if name is None:
        return
    ident = identity_fields(profile)
    if not ident:
        return
    props = {
        "message_id": msg["id"], "channel": msg["channel"], "template": msg["template"], "kind": msg["kind"],
        "topic": msg["topic"], "journey_id": msg["journey_id"], "campaign_id": msg["campaign_id"], **detail,
    }  # fmt: skip
    ctx = {**ident.get("context", {}), "channel": msg["channel"] or "unknown"}
    ctx["direction"] = "inbound" if status in INBOUND else "outbound"
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "track", "event": name, "properties": props, "context": ctx,
        "messageId": f"chorus-{msg['id']}-{n}", "timestamp": iso(at),
    }  # fmt: skip
    ev = normalise(raw, received_at=at, source_kind="internal", require_ids=False)
    if not isinstance(ev, Event):  # cannot happen with the fields above; never lose the status change over it
        return
    source = ws_api.internal_source(conn, msg["workspace_id"], "internal", "chorus-messaging")
    ingest.store(conn, source, [ev], [], at)


def set_status(
    conn: Connection, msg: dict, status: str, *, at: datetime, detail: dict | None = None, profile: dict | None = None,
    **columns,
) -> None:  # fmt: skip
    """Append a state to the message's history, update the row, and put the event on the profile timeline.

    Nothing is written for a message that no longer exists (the person was erased meanwhile): the row update
    comes first, and on PostgreSQL it waits for a concurrent erasure to commit.
    """
    detail = detail or {}
    if status == "deferred":  # caps or quiet hours at send time: back in the queue, later
        columns["status"] = "queued"
    elif status not in ENGAGEMENT:  # engagement is history; the message's status stays its delivery outcome
        columns["status"] = status
    updated = conn.execute(messages.update().where(messages.c.id == msg["id"]).values(updated_at=at, **columns))
    if updated.rowcount == 0:
        return
    metrics.message_status.labels(channel=msg.get("channel") or "none", status=status).inc()
    res = conn.execute(
        message_status.insert().values(message_id=msg["id"], workspace_id=msg["workspace_id"], status=status, at=at,
                                       detail=detail)
    )  # fmt: skip
    if profile is None:
        try:
            profile = views.get_profile(conn, msg["workspace_id"], msg["profile_id"], _cfg(conn, msg["workspace_id"]))
        except NotFound:  # erased meanwhile: no one to hold the event
            return
    _record_event(conn, msg, profile, status, at, detail, res.inserted_primary_key[0])


def _cfg(conn: Connection, ws: str):
    return ws_api.get(conn, ws).identity


def recipient(conn: Connection, ws: ws_api.Workspace, req: dict) -> str:
    """The profile id a request is for: ``profile_id`` (old merged ids resolve) or one identifier in ``to``."""
    if req.get("profile_id"):
        return views.resolve_id(conn, ws.id, req["profile_id"])
    ((kind, value),) = req["to"].items()
    if kind not in ("email", "phone", "user_id", "anonymous_id", *ws.identity.declared):
        raise ChorusError(f"to.{kind} is not an identifier kind", field=f"to.{kind}")
    return views.find_by_ident(conn, ws.id, views.lookup_ident(ws.identity, **{kind: value}))


# -- enqueue ----------------------------------------------------------------------------------------------------
def enqueue(
    engine: Engine,
    ws: ws_api.Workspace,
    req: dict,
    idempotency_key: str | None,
    links: Links,
    clock=utcnow,
) -> tuple[dict, bool]:
    """Create the message for ``req`` (see :func:`parse_request`); returns (message view, created)."""
    key = idempotency_key or ("auto-" + uuid.uuid4().hex)
    if len(key) > 200:
        raise ChorusError("Idempotency-Key is longer than 200 characters", field="Idempotency-Key")
    rhash = request_hash(req)
    with engine.connect() as conn:
        existing = _by_key(conn, ws.id, key)
    if existing is not None:
        return _replay(engine, ws.id, existing, rhash), False
    try:
        with engine.begin() as conn:
            view = _create(conn, ws, req, key, rhash, clock(), links)
    except IntegrityError:  # the same key committed by a concurrent request: that one is the message
        with engine.connect() as conn:
            existing = _by_key(conn, ws.id, key)
        if existing is None:
            raise
        return _replay(engine, ws.id, existing, rhash), False
    return view, True


def _by_key(conn: Connection, ws: str, key: str):
    return conn.execute(
        sa.select(messages.c.id, messages.c.request_hash).where(
            messages.c.workspace_id == ws, messages.c.idempotency_key == key
        )
    ).first()


def _replay(engine: Engine, ws: str, row, rhash: str) -> dict:
    if row.request_hash != rhash:
        raise Conflict("this Idempotency-Key was used for a different request", field="Idempotency-Key")
    with engine.connect() as conn:
        return get_message(conn, ws, row.id)


def _create(
    conn: Connection, ws: ws_api.Workspace, req: dict, key: str, rhash: str, now: datetime, links: Links
) -> dict:
    cfg = ws.identity
    pid = recipient(conn, ws, req)
    profile = views.get_profile(conn, ws.id, pid, cfg)
    subs = endpoints_of(conn, ws.id, profile)
    profile = with_push_addresses(conn, ws.id, profile, subs)
    parts = load_partials(conn, ws.id)
    if req.get("template"):
        defn = load_template(conn, ws.id, req["template"])
    else:
        defn = _validated(req["content"], parts)
    kind = req.get("kind") or defn.get("kind", "marketing")
    topic = req.get("topic") or defn.get("topic") or ("transactional" if kind == "transactional" else "marketing")
    msettings = ws.settings.get("messaging") or {}
    choice = policy.choose_channel(
        profile, list(defn["variants"]), req["channel"], topic=topic, kind=kind,
        topics=msettings.get("topics"), fallback=msettings.get("fallback_order"),
    )  # fmt: skip
    msg = {
        "id": new_message_id(), "workspace_id": ws.id, "idempotency_key": key, "request_hash": rhash,
        "profile_id": pid, "template": req.get("template"), "kind": kind, "topic": topic, "channel": choice.channel,
        "address": choice.address, "status": "new", "reason": None, "choice": choice.as_dict(), "content": None,
        "journey_id": req.get("journey_id"), "campaign_id": req.get("campaign_id"), "provider": None,
        "provider_message_id": None, "attempts": 0, "next_attempt_at": None, "created_at": now, "updated_at": now,
    }  # fmt: skip
    status, reason, rendered = "skipped", choice.reason, None
    if choice.channel is not None:
        ctx = {
            "profile": {k: profile.get(k) for k in ("id", "traits", "channels_used", "last_channel", "timezone",
                                                     "locale")},
            "traits": profile.get("traits") or {},
            "event": req.get("event") or {},
            "data": req.get("data") or {},
            "message": {"id": msg["id"], "channel": choice.channel, "topic": topic, "kind": kind,
                        "unsubscribe_url": links.unsubscribe_url(msg["id"]),
                        "preferences_url": links.preferences_url(msg["id"])},
        }  # fmt: skip
        out = content.render(
            defn, choice.channel, ctx, locale=req.get("locale") or profile.get("locale"), partials=parts
        )
        if isinstance(out, content.Skip):
            reason = f"not rendered: {out.reason}" + (f" ({out.field})" if out.field else "")
        else:
            status, reason = "queued", None
            rendered = {**out.fields, "locale": out.locale}
            if choice.channel == "email":
                _email_links(rendered, msg, profile, links)
            elif choice.channel == "push" and choice.address in subs:  # web push: the browser's keys go along
                rendered["subscription"] = {"keys": subs[choice.address]}
            elif choice.channel == "sms":  # Twilio reports delivery to this URL (signed with the auth token)
                rendered["headers"] = {"StatusCallback": f"{links.public_url}/webhooks/twilio/{ws.id}/status"}
    send_at = now
    if status == "queued":
        paced = apply_pacing(conn, ws, msg, profile, now)
        if paced.at is None:
            status, reason = "skipped", paced.reason
        elif paced.at > now:
            send_at, reason = paced.at, paced.reason
    msg.update(status=status, reason=reason, content=rendered, next_attempt_at=send_at if status == "queued" else None)
    conn.execute(messages.insert().values(**msg))
    detail = {"reason": reason} if reason else {"channel_reason": choice.reason}
    set_status(conn, msg, status, at=now, detail=detail, profile=profile)
    return get_message(conn, ws.id, msg["id"])


def _email_links(rendered: dict, msg: dict, profile: dict, links: Links) -> None:
    """UTM tags, click and open tracking (unless the person denied tracking), RFC 8058 unsubscribe headers."""
    consent = profile.get("consent") or {}
    track = not any((consent.get(s) or {}).get("status") == "denied" for s in ("email:tracking", "*:tracking"))
    campaign = msg["campaign_id"] or msg["journey_id"] or msg["template"] or ""
    utm = {"utm_source": "chorus", "utm_medium": "email", "utm_campaign": campaign, "utm_content": msg["id"]}
    if rendered.get("html"):
        rendered["html"] = track_html(rendered["html"], msg["id"], links, utm, track)
    rendered["tracking"] = track
    if msg["kind"] == "marketing":
        rendered["headers"] = {
            "List-Unsubscribe": f"<{links.unsubscribe_url(msg['id'])}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


def has_status(conn: Connection, message_id: str, status: str, **detail) -> bool:
    """Whether the history already holds this status (with these detail values): repeated callbacks are no-ops."""
    rows = conn.execute(
        sa.select(message_status.c.detail).where(
            message_status.c.message_id == message_id, message_status.c.status == status
        )
    ).scalars()
    return any(all(d.get(k) == v for k, v in detail.items()) for d in rows)


def pacing_history(
    conn: Connection, ws: str, profile_id: str, now: datetime, exclude: str | None = None
) -> list[tuple]:
    """(channel, send time) of the person's marketing messages sent or scheduled within the longest cap window
    (a week) before ``now``: what caps count."""
    when = sa.func.coalesce(messages.c.sent_at, messages.c.next_attempt_at)
    q = sa.select(messages.c.channel, when).where(
        messages.c.workspace_id == ws,
        messages.c.profile_id == profile_id,
        messages.c.kind == "marketing",
        messages.c.status.in_(PACED),
        when.is_not(None),
        when > now - max(policy.WINDOWS.values()),
    )
    if exclude:
        q = q.where(messages.c.id != exclude)
    return [(ch, at) for ch, at in conn.execute(q) if ch]


def apply_pacing(conn: Connection, ws: ws_api.Workspace, msg: dict, profile: dict, now: datetime) -> policy.Pace:
    settings = ws.settings.get("messaging") or {}
    if msg["kind"] == "transactional" or not (settings.get("caps") or settings.get("quiet_hours")):
        return policy.Pace(now, None)  # nothing to check: spare the history query
    history = pacing_history(conn, ws.id, msg["profile_id"], now, exclude=msg["id"]) if settings.get("caps") else []
    return policy.pace(
        now, channel=msg["channel"], kind=msg["kind"], timezone_name=profile.get("timezone"), history=history,
        settings=settings,
    )  # fmt: skip


# -- reading ----------------------------------------------------------------------------------------------------
def get_message(conn: Connection, ws: str, message_id: str) -> dict:
    row = conn.execute(sa.select(messages).where(messages.c.workspace_id == ws, messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    history = conn.execute(
        sa.select(message_status.c.status, message_status.c.at, message_status.c.detail)
        .where(message_status.c.message_id == message_id)
        .order_by(message_status.c.id)
    ).all()
    return {
        "id": row.id, "profile_id": row.profile_id, "template": row.template, "kind": row.kind, "topic": row.topic,
        "channel": row.channel, "address": row.address, "status": row.status, "reason": row.reason,
        "choice": row.choice, "content": row.content, "journey_id": row.journey_id, "campaign_id": row.campaign_id,
        "provider": row.provider, "provider_message_id": row.provider_message_id, "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if row.next_attempt_at else None,
        "sent_at": iso(row.sent_at) if row.sent_at else None,
        "created_at": iso(row.created_at),
        "history": [{"status": h.status, "at": iso(h.at), **h.detail} for h in history],
    }  # fmt: skip


def row_dict(row) -> dict:
    return dict(row._mapping)
