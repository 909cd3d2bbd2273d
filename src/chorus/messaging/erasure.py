"""What messaging holds about a person, for export and erasure: the messages to them (their content and address
identify the person; queued ones must never go out now), their status history and timeline records, the person's
browser push subscriptions and the dead addresses that were theirs."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.collect.erasure import forget_pending_by_message_id
from chorus.messaging.providers import sink
from chorus.registry import Person
from chorus.store.tables import dead_addresses, message_status, messages, push_subscriptions

TABLES = {
    "sink_files": None,  # files, not rows: deleted outright, nothing left to scrub
    "events": "events", "message_status": "message_status", "messages": "messages",
    "dead_addresses": "dead_addresses", "push_subscriptions": "push_subscriptions",
}  # fmt: skip
PUSH_KINDS = ("user_id", "anonymous_id")  # the identifiers a browser push subscription is filed under


def hold(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    """Lock her messages (PostgreSQL) before any of her rows is deleted. Delivery records a status holding the
    message row (``outbox.set_statuses``) and writes her timeline event (`Message Sent`) in that transaction: taken
    here first, an erasure waits for such a writer to commit and its events' delete then sees them (review: taken
    by the messages' delete, after the events were deleted, the writer's events survived her erasure); a writer
    coming later waits for the erasure and finds the messages gone, so writes nothing."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            sa.select(messages.c.id)
            .where(messages.c.workspace_id == ws, messages.c.profile_id.in_(person.profile_ids))
            .order_by(messages.c.id)
            .with_for_update()
        ).all()
    return {}


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    ids = person.profile_ids
    msg_ids = list(
        conn.execute(
            sa.select(messages.c.id).where(messages.c.workspace_id == ws, messages.c.profile_id.in_(ids))
        ).scalars()
    )
    counts = {}
    # What a file sink (dev mode, a staging copy of production) kept of her messages: her address and their content.
    # Every message of hers, not only those recorded as the sink's: one being sent now may be written already. Found
    # anywhere in the outbox, not in the directories the settings name now: a sink's dir may have changed since.
    counts["sink_files"] = sink.forget_files(msg_ids) if msg_ids else 0
    # The timeline events of those messages (chorus-<message id>-<status>-…) not yet resolved: one known only by
    # its email would otherwise create a profile for that email again.
    counts["events"] = forget_pending_by_message_id(conn, ws, [f"chorus-{m}-" for m in msg_ids])
    counts["message_status"] = 0
    for i in range(0, len(msg_ids), 500):
        counts["message_status"] += conn.execute(
            message_status.delete().where(message_status.c.message_id.in_(msg_ids[i : i + 500]))
        ).rowcount
    counts["messages"] = conn.execute(
        messages.delete().where(messages.c.workspace_id == ws, messages.c.profile_id.in_(ids))
    ).rowcount
    push_idents = _push_idents(person)
    endpoints = list(
        conn.execute(
            sa.select(push_subscriptions.c.endpoint).where(
                push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(push_idents)
            )
        ).scalars()
    )
    counts["dead_addresses"] = 0
    values = person.values() + endpoints
    for i in range(0, len(values), 500):
        counts["dead_addresses"] += conn.execute(
            dead_addresses.delete().where(
                dead_addresses.c.workspace_id == ws, dead_addresses.c.address.in_(values[i : i + 500])
            )
        ).rowcount
    counts["push_subscriptions"] = (
        conn.execute(
            push_subscriptions.delete().where(
                push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(push_idents)
            )
        ).rowcount
        if push_idents
        else 0
    )
    return counts


def export(conn: Connection, ws: str, person: Person) -> dict:
    return {
        "push_subscriptions": [
            {"endpoint": r.endpoint, "created_at": r.created_at}
            for r in conn.execute(
                sa.select(push_subscriptions).where(
                    push_subscriptions.c.workspace_id == ws, push_subscriptions.c.ident.in_(_push_idents(person))
                )
            )
        ],
        "messages": [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(
                    messages.c.id,
                    messages.c.channel,
                    messages.c.address,
                    messages.c.status,
                    messages.c.content,
                    messages.c.created_at,
                )
                .where(messages.c.workspace_id == ws, messages.c.profile_id.in_(person.profile_ids))
                .order_by(messages.c.created_at)
            )
        ],
    }


def _push_idents(person: Person) -> list[str]:
    return [i for i in person.identifiers if i.split(":", 1)[0] in PUSH_KINDS]
