"""Browser push subscriptions of a person: the addresses of the web push channel."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.store.tables import dead_addresses, push_subscriptions


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


def with_push_addresses(conn: Connection, ws: str, profile: dict, subs: dict[str, dict]) -> dict:
    """The profile view with its browsers first among the push addresses, then its device tokens, minus the
    tokens a push service said are gone."""
    addresses = dict(profile.get("addresses") or {})
    tokens = [a for a in addresses.get("push", []) if a not in subs]
    if tokens:
        dead = set(
            conn.execute(
                sa.select(dead_addresses.c.address).where(
                    dead_addresses.c.workspace_id == ws, dead_addresses.c.channel == "push",
                    dead_addresses.c.address.in_(tokens),
                )
            ).scalars()
        )  # fmt: skip
        tokens = [t for t in tokens if t not in dead]
    if not subs and tokens == addresses.get("push", []):
        return profile
    addresses["push"] = [*subs, *tokens]
    return {**profile, "addresses": addresses}
