"""Consent changes that Chorus itself learns (unsubscribe link, preference page, bounce, SMS STOP/START).

Each becomes a ``Consent Updated`` track event on the person's timeline, like consent from any other source, so
the profile state stays a fold of events. It is also applied to the stored profile state at once, in the same
transaction: the resolver folds the event a moment later, and no send in between may miss an opt-out. It is applied
to the profile the resolver will fold it into (the owner of its anchor identifier, read under the identity lock),
whatever profile the caller looked up earlier. The fold is idempotent (the same key never changes a slot twice), so
applying it twice is harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event, normalise
from chorus.errors import NotFound
from chorus.identity.identifiers import NoIdentifier, extract
from chorus.profiles import feed, views
from chorus.profiles import state as pstate
from chorus.store.tables import messages, profiles

log = logging.getLogger("chorus.messaging.consent")


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


def lock_identity(conn: Connection, ws_id: str) -> None:
    """The workspace's identity lock (PostgreSQL; re-entrant in a transaction; SQLite has one writer): the resolver
    holds it while it rewrites profiles, and :func:`record` takes it. A transaction that may reach :func:`record`
    takes it before its first row lock (a message row): an inbound reply takes this lock and then its message, so
    the other order would be a deadlock cycle."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "identity:" + ws_id})


def lock_owners(conn: Connection, ws_id: str, profile_ids) -> None:
    """Before the first message row of a transaction that may record consent about those messages (a bounce, a
    complaint): the identity lock, then the current profiles of their people (merges followed) in id order, the
    order ``views.lock_people`` takes them. Every writer takes the identity lock, then people, then their messages:
    a journey's transition locks her row, then withdraws her messages in flight; a bounce that locked the message
    first and then wrote her consent on her row was the other order, a deadlock cycle (PostgreSQL failed one: a
    callback lost, or a delivery's whole batch left "sending")."""
    lock_identity(conn, ws_id)
    if conn.dialect.name != "postgresql":
        return
    current = views.resolve_ids(conn, ws_id, [p for p in profile_ids if p])
    if current:
        views.lock_people(conn, ws_id, sorted(set(current.values())))


def message_owners(conn: Connection, ws_id: str, where) -> list[str]:
    """The profile ids of the workspace's messages matching ``where``, read without a lock: what
    :func:`lock_owners` locks before those messages are."""
    q = sa.select(messages.c.profile_id).where(messages.c.workspace_id == ws_id, where)
    return [p for p in conn.execute(q).scalars() if p]


def record(
    conn: Connection, ws_id: str, ident: dict, *, channel: str, topic: str, status: str, reason: str, at: datetime,
    direction: str, key: str, profile_id: str | None = None, message_id: str | None = None,
    unique_key: bool = False,
) -> None:  # fmt: skip
    """Record a consent change for whoever ``ident`` identifies, and apply it at once to the profile that owns the
    event's anchor identifier after the identity lock (see :func:`_target`; ``profile_id``, what the caller found,
    counts only for an event with no identifier the resolver can attribute).

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
    src = ws_api.internal_source(conn, ws_id, "internal", "chorus-messaging")
    ingest.store(conn, src, [ev], [], at)
    lock_identity(conn, ws_id)  # the resolver rewrites profile state under this lock: never interleave
    target = _target(conn, ws_id, ev.payload, src.trusted, profile_id)
    if target is None:
        return
    row = conn.execute(sa.select(profiles.c.state).where(profiles.c.id == target)).first()
    if row is not None:
        st = row.state
        pstate.apply_consent(st, ev.payload)
        conn.execute(profiles.update().where(profiles.c.id == target).values(state=st))
        feed.record(conn, ws_id, [feed.Change(target, "consent", detail={
            "slot": f"{channel}:{topic}", "status": status, "reason": reason})], at)  # fmt: skip


def _target(conn: Connection, ws_id: str, payload: dict, trusted: bool, named: str | None) -> str | None:
    """The profile to apply a consent event to before it is resolved: the one the resolver will fold it into, i.e.
    the owner of its anchor identifier now, under the identity lock (None: nobody owns it yet, and the event makes
    her profile when it is resolved; or she was erased).

    Not the profile the caller names: a webhook looks up the owner of the sender's phone before this lock, and a
    merge, a split or a replay that moves the phone to another profile may commit in between; the consent then
    landed on a profile that no longer owns the address, and the one that does could be sent to until the event
    was resolved. Likewise a caller that found nobody (``named`` None) may be racing the resolver creating her
    profile. Only an event the resolver cannot attribute (no identifier of a kind the workspace still declares: it
    will be rejected) goes to the named profile, or the survivor of its merge."""
    try:
        anchor = extract(payload, ws_api.get(conn, ws_id).identity, trusted).anchor
    except NoIdentifier:
        anchor = None
    if anchor is not None:
        owner = views.find_by_idents(conn, ws_id, [anchor]).get(anchor)
        if owner is None and named is not None:
            # right by the resolver (the event will make her profile), but the caller knew her: an identifier that
            # no longer normalises as it did when stored would drop a bounce or an unsubscribe here, so say so
            log.warning("consent for profile %s applied to nobody yet: no profile owns its anchor identifier", named)
        return owner
    if named is None:
        return None
    try:
        return views.resolve_id(conn, ws_id, named)
    except NotFound:  # erased: nothing to apply
        return None


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
