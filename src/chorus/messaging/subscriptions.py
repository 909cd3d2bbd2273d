"""Browser push subscriptions of a person: the addresses of the web push channel."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.store import bulk
from chorus.store.tables import dead_addresses, push_subscriptions


def _idents(profile: dict) -> list[str]:
    """The ids whose browsers receive the person's pushes. A browser registered under an anonymous id gets the
    pushes of an anonymous profile only: anyone can claim an anonymous id and then a customer's email, so pushes
    to a known person go to browsers registered with a verified user id (see chorus.workspaces.verification)."""
    ids = profile.get("identifiers") or {}
    anonymous = [] if profile.get("known") else [f"anonymous_id:{v}" for v in ids.get("anonymous_id", [])]
    return [f"user_id:{v}" for v in ids.get("user_id", [])] + anonymous


def endpoints_of(conn: Connection, ws: str, profile: dict) -> dict[str, dict]:
    """endpoint -> {"p256dh", "auth"} for the profile's browsers (by its user and anonymous ids), newest first."""
    return endpoints_for(conn, ws, [profile]).get(profile["id"], {})


def endpoints_for(conn: Connection, ws: str, views: list[dict]) -> dict[str, dict[str, dict]]:
    """:func:`endpoints_of` for many profiles in one query: profile id -> endpoints."""
    owner = {ident: v["id"] for v in views for ident in _idents(v)}
    if not owner:
        return {}
    rows = conn.execute(
        sa.select(push_subscriptions.c.ident, push_subscriptions.c.endpoint, push_subscriptions.c.p256dh,
                  push_subscriptions.c.auth)
        .where(push_subscriptions.c.workspace_id == ws,
               bulk.in_(push_subscriptions.c.ident, list(owner), conn.dialect.name))
        .order_by(push_subscriptions.c.created_at.desc())
    ).all()  # fmt: skip
    out: dict[str, dict[str, dict]] = {}
    for r in rows:
        out.setdefault(owner[r.ident], {})[r.endpoint] = {"p256dh": r.p256dh, "auth": r.auth}
    return out


def with_push_addresses(conn: Connection, ws: str, profile: dict, subs: dict[str, dict]) -> dict:
    """The profile view with its browsers first among the push addresses, then its device tokens, minus the
    tokens a push service said are gone."""
    return with_push_addresses_all(conn, ws, {profile["id"]: profile}, {profile["id"]: subs})[profile["id"]]


def with_push_addresses_all(
    conn: Connection, ws: str, views: dict[str, dict], subs: dict[str, dict[str, dict]]
) -> dict[str, dict]:
    """:func:`with_push_addresses` for many profiles, one query for the dead tokens of all of them."""
    tokens = {
        pid: [a for a in (v.get("addresses") or {}).get("push", []) if a not in subs.get(pid, {})]
        for pid, v in views.items()
    }
    every = [t for ts in tokens.values() for t in ts]
    dead: set[str] = set()
    if every:
        dead = set(
            conn.execute(
                sa.select(dead_addresses.c.address).where(
                    dead_addresses.c.workspace_id == ws, dead_addresses.c.channel == "push",
                    bulk.in_(dead_addresses.c.address, every, conn.dialect.name),
                )
            ).scalars()
        )  # fmt: skip
    out = {}
    for pid, view in views.items():
        mine = subs.get(pid, {})
        alive = [t for t in tokens[pid] if t not in dead]
        addresses = dict(view.get("addresses") or {})
        if not mine and alive == addresses.get("push", []):
            out[pid] = view
            continue
        addresses["push"] = [*mine, *alive]
        out[pid] = {**view, "addresses": addresses}
    return out
