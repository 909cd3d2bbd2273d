"""Browser push subscriptions of a person: the addresses of the web push channel."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.store.tables import push_subscriptions


def endpoints_of(conn: Connection, ws: str, profile: dict) -> dict[str, dict]:
    """endpoint -> {"p256dh", "auth"} for the profile's browsers (by its user and anonymous ids), newest first."""
    ids = profile.get("identifiers") or {}
    idents = [f"user_id:{v}" for v in ids.get("user_id", [])] + [
        f"anonymous_id:{v}" for v in ids.get("anonymous_id", [])
    ]
    if not idents:
        return {}
    rows = conn.execute(
        sa.select(push_subscriptions.c.endpoint, push_subscriptions.c.p256dh, push_subscriptions.c.auth)
        .where(push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(idents))
        .order_by(push_subscriptions.c.created_at.desc())
    ).all()
    return {r.endpoint: {"p256dh": r.p256dh, "auth": r.auth} for r in rows}


def with_push_addresses(profile: dict, subs: dict[str, dict]) -> dict:
    """The profile view with its browsers added to the push addresses (device tokens stay after them)."""
    if not subs:
        return profile
    addresses = dict(profile.get("addresses") or {})
    addresses["push"] = [*subs, *(a for a in addresses.get("push", []) if a not in subs)]
    return {**profile, "addresses": addresses}
