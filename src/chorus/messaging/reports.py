"""Delivery reports of Meta's channels (WhatsApp, Messenger) applied to their messages, including reports that
arrive before the worker has recorded the send they are about.

Meta names a message only by its own id (``wamid.…``, ``mid``), which the worker learns from the Graph API's
answer and records with the outcome, in a batch, up to a second later; Meta can call back sooner. A report for an
id that is not recorded yet is *held* (``early_reports``) and applied as soon as the send is recorded, by the
worker in the same transaction, or by the webhook right after holding it if the send was recorded meanwhile.
Reports still unmatched after :data:`HOLD` (statuses of messages another tool sent from the same number) are
dropped.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus.messaging import consent, outbox
from chorus.messaging.providers.meta import NOT_ON_WHATSAPP, RE_ENGAGEMENT, TO_SENDER
from chorus.store import bulk
from chorus.store.tables import early_reports, messages

CHANNELS = ("whatsapp", "messenger")
LABEL = {"whatsapp": "WhatsApp", "messenger": "Messenger"}
WA_BOUNCES = {NOT_ON_WHATSAPP, TO_SENDER}
HOLD = timedelta(hours=1)


def withdraws_consent(status: str, error: dict | None) -> bool:
    """Whether this report bounces its message, which withdraws the address's consent (``consent.record``): the
    caller takes the identity lock and the message's person before the message row (:func:`lock_owners`)."""
    return status == "failed" and (error or {}).get("code") in WA_BOUNCES


def report(
    conn: Connection, ws_id: str, provider_id: str, status: str, provider_status: str, at: datetime,
    error: dict | None, now: datetime,
) -> tuple[int, bool]:  # fmt: skip
    """Apply a report to the message Meta calls ``provider_id``, or hold it; returns (applied, held)."""
    msg = _find(conn, ws_id, provider_id)
    if msg is None:
        conn.execute(early_reports.delete().where(early_reports.c.received_at < now - HOLD))
        conn.execute(early_reports.insert().values(
            workspace_id=ws_id, provider_message_id=provider_id[:400], status=status, provider_status=provider_status,
            at=at, error=error, received_at=now,
        ))  # fmt: skip
        return 0, True
    return apply(conn, msg, status, provider_status, at, error), False


def lock_owners(conn: Connection, ws_id: str, provider_ids: list[str]) -> None:
    """What a report that may bounce takes before its message row: the identity lock and the messages' people
    (``consent.lock_owners``)."""
    consent.lock_owners(conn, ws_id, consent.message_owners(conn, ws_id, sa.and_(
        bulk.in_(messages.c.provider_message_id, provider_ids, conn.dialect.name), messages.c.channel.in_(CHANNELS))))


def held_bounces(conn: Connection, ws_id: str, provider_ids: list[str]) -> set[str]:
    """Those of these messages that a held report bounces (a plain read: no lock): the ones whose people a
    recording or a release locks first (:func:`lock_owners`). A bounce held after this read and released in the same
    transaction writes her consent without that lock: a deadlock PostgreSQL may break, and whichever side it fails
    is done again (a delivery's recording at once, a journey's transition at the feed consumer's next pass)."""
    if not provider_ids:
        return set()
    e = early_reports.c
    rows = conn.execute(sa.select(e.provider_message_id, e.status, e.error).where(
        e.workspace_id == ws_id, bulk.in_(e.provider_message_id, provider_ids, conn.dialect.name)))  # fmt: skip
    return {pid for pid, status, error in rows if withdraws_consent(status, error)}


def release(conn: Connection, ws_id: str, provider_ids: list[str]) -> int:
    """Apply the held reports on these messages that are now recorded; returns how many were applied."""
    if not provider_ids:
        return 0
    q = (
        sa.select(early_reports)
        .where(early_reports.c.workspace_id == ws_id,
               bulk.in_(early_reports.c.provider_message_id, provider_ids, conn.dialect.name))
        .order_by(early_reports.c.id)
    )  # fmt: skip
    if conn.dialect.name == "postgresql":  # the worker and a webhook releasing the same report: one of them does
        q = q.with_for_update(skip_locked=True)
    applied = 0
    for held in conn.execute(q).all():
        msg = _find(conn, ws_id, held.provider_message_id)
        if msg is None:
            continue
        applied += apply(conn, msg, held.status, held.provider_status, held.at, held.error)
        conn.execute(early_reports.delete().where(early_reports.c.id == held.id))
    return applied


def _find(conn: Connection, ws_id: str, provider_id: str) -> dict | None:
    q = sa.select(messages).where(
        messages.c.workspace_id == ws_id, messages.c.provider_message_id == provider_id,
        messages.c.channel.in_(CHANNELS),
    )  # fmt: skip
    if conn.dialect.name == "postgresql":  # a repeated notification racing this one waits, then sees the status
        q = q.with_for_update()
    row = conn.execute(q).first()
    return dict(row._mapping) if row is not None else None


def apply(
    conn: Connection, msg: dict, status: str, provider_status: str, at: datetime, error: dict | None
) -> int:  # fmt: skip
    """One report on one message: its status, history and timeline event, at most once per provider status."""
    label = LABEL[msg["channel"]]
    code = error.get("code") if error else None
    if withdraws_consent(status, error):
        status = "bounced"
    if outbox.has_status(conn, msg["id"], status, provider_status=provider_status):
        return 0  # Meta repeats notifications; each state counts once
    detail: dict = {"provider_status": provider_status}
    if status in ("failed", "bounced"):
        if msg["status"] in ("failed", "bounced"):
            return 0
        title = str(error.get("title") or error.get("message") or "") if error else ""
        data = (error or {}).get("error_data")
        details = str((data if isinstance(data, dict) else {}).get("details") or "")
        reason = f"{label} error {code}" if code is not None else f"{label}: failed"
        reason += f": {title}" if title else ""
        reason += f" ({details})" if details and details != title else ""
        if code == RE_ENGAGEMENT:
            reason += (
                "; more than 24 hours passed since the person's last message: only an approved template can be sent"
            )
        if code is not None:
            detail["error_code"] = code
        detail["reason"] = reason[:500]
        outbox.set_status(conn, msg, status, at=at, detail=detail, reason=reason[:500])
        if status == "bounced":
            consent.record_consent(conn, msg, "*", "denied", f"undeliverable ({label} error {code})", at)
        return 1
    if status == "delivered" and msg["status"] != "sent":
        return 0  # already delivered, or failed meanwhile: never move a message back
    outbox.set_status(conn, msg, status, at=at, detail=detail)
    return 1
