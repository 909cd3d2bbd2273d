"""Consent changes that Chorus itself learns (unsubscribe link, preference page, bounce, SMS STOP/START).

Each becomes a ``Consent Updated`` track event on the person's timeline, like consent from any other source, so
the profile state stays a fold of events. It is also applied to the stored profile state at once, in the same
transaction: the resolver folds the event a moment later, and no send in between may miss an opt-out. The fold
is idempotent (the same key never changes a slot twice), so applying it twice is harmless.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event, normalise
from chorus.errors import NotFound
from chorus.profiles import feed, views
from chorus.profiles import state as pstate
from chorus.store.tables import profiles


def identity_fields(profile: dict) -> dict:
    """Event fields that resolve to this profile: its strongest identifier."""
    ids = profile.get("identifiers") or {}
    if ids.get("user_id"):
        return {"userId": ids["user_id"][0]}
    if ids.get("email"):
        return {"context": {"traits": {"email": ids["email"][0]}}}
    if ids.get("phone"):
        return {"context": {"traits": {"phone": ids["phone"][0]}}}
    for kind, values in sorted(ids.items()):
        if kind != "anonymous_id":
            return {"context": {"externalIds": [{"type": kind, "id": values[0]}]}}
    return {"anonymousId": ids["anonymous_id"][0]} if ids.get("anonymous_id") else {}


def record(
    conn: Connection, ws_id: str, ident: dict, *, channel: str, topic: str, status: str, reason: str, at: datetime,
    direction: str, key: str, profile_id: str | None = None, message_id: str | None = None,
    unique_key: bool = False,
) -> None:  # fmt: skip
    """Record a consent change for whoever ``ident`` identifies (``profile_id`` when already known).

    With ``unique_key`` (a provider's id of the inbound message), a replayed notification is the same event and
    is stored once; otherwise the time is part of the id, so the same link can unsubscribe, resubscribe and
    unsubscribe again.
    """
    props = {"channel": channel, "topic": topic, "status": status, "reason": reason}
    if message_id:
        props["message_id"] = message_id
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "track", "event": "Consent Updated", "properties": props,
        "context": {**ident.get("context", {}), "channel": channel, "direction": direction},
        "messageId": f"chorus-consent-{key}-{channel}-{topic}-{status}" + ("" if unique_key else f"-{at.timestamp()}"),
        "timestamp": at.isoformat(),
    }  # fmt: skip
    ev = normalise(raw, received_at=at, source_kind="internal", require_ids=False)
    if not isinstance(ev, Event):
        raise ValueError(f"consent event not valid: {ev.reason}")
    ingest.store(conn, ws_api.internal_source(conn, ws_id, "internal", "chorus-messaging"), [ev], [], at)
    if profile_id is None:
        return
    if conn.dialect.name == "postgresql":  # the resolver rewrites profile state under this lock: never interleave
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws_id})
    try:  # merged into another while this waited for the lock (or read before it): the survivor is her now
        profile_id = views.resolve_id(conn, ws_id, profile_id)
    except NotFound:  # erased: nothing to apply
        return
    row = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == profile_id)).first()
    if row is not None:
        st = row.state
        pstate.apply_consent(st, ev.payload)
        conn.execute(profiles.update().where(profiles.c.id == profile_id).values(state=st))
        feed.record(conn, ws_id, [feed.Change(profile_id, "consent", detail={
            "slot": f"{channel}:{topic}", "status": status, "reason": reason})], at)  # fmt: skip


def record_consent(
    conn: Connection, msg: dict, topic: str, status: str, reason: str, at: datetime, direction: str = "outbound"
) -> None:
    """A consent change caused by a message (bounce, complaint, unsubscribe link) on the message's channel."""
    ws = ws_api.get(conn, msg["workspace_id"])
    try:
        profile = views.get_profile(conn, ws.id, msg["profile_id"], ws.identity)
    except NotFound:  # erased meanwhile
        return
    record(
        conn, ws.id, identity_fields(profile), channel=msg["channel"], topic=topic, status=status, reason=reason,
        at=at, direction=direction, key=msg["id"], profile_id=profile["id"], message_id=msg["id"],
    )  # fmt: skip
