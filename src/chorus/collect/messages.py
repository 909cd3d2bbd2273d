"""Validation and normalisation of Segment-spec messages: plain functions, no I/O.

A message either becomes a :class:`Event` ready to store or a :class:`Rejection` naming the field and the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import orjson

from chorus.collect.channels import infer_channel
from chorus.timeutil import iso, parse_ts

TYPES = ("identify", "track", "page", "screen", "group", "alias")
SHORT_PATHS = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_LEN = 200


@dataclass(slots=True)
class Event:
    message_id: str
    type: str
    event: str | None
    channel: str
    user_id: str | None
    anonymous_id: str | None
    timestamp: datetime
    received_at: datetime
    payload: dict


@dataclass(slots=True)
class Rejection:
    field: str | None
    reason: str
    message_id: str | None
    payload: dict | str


def _id(value, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(field, f"{field} must be a string or a number")
    text = str(value) if not isinstance(value, float) or not value.is_integer() else str(int(value))
    if len(text) > MAX_ID_LEN:
        raise _Bad(field, f"{field} is longer than {MAX_ID_LEN} characters")
    return text


class _Bad(Exception):
    def __init__(self, field: str | None, reason: str):
        self.field, self.reason = field, reason


def _ts(msg: dict, field: str) -> datetime | None:
    raw = msg.get(field)
    if raw is None or raw == "":
        return None
    try:
        return parse_ts(raw)
    except (ValueError, OverflowError, OSError):
        raise _Bad(field, f"{field} is not an ISO-8601 timestamp: {str(raw)[:60]!r}") from None


def content_message_id(msg: dict) -> str:
    """Clients normally send messageId; without one, identical retries still deduplicate by content."""
    return "chorus-" + hashlib.sha256(orjson.dumps(msg, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def normalise(
    msg: object,
    *,
    received_at: datetime,
    source_kind: str,
    source_channel: str | None = None,
    forced_type: str | None = None,
    require_ids: bool = True,
) -> Event | Rejection:
    """Validate one message and compute its message id, corrected timestamp and channel."""
    if not isinstance(msg, dict):
        return Rejection(None, "a message must be a JSON object", None, orjson.dumps(msg).decode()[:2000])
    message_id = msg.get("messageId")
    try:
        message_id = _id(message_id, "messageId") or content_message_id(msg)
        mtype = forced_type or msg.get("type")
        if not mtype:
            raise _Bad("type", "type is missing")
        if mtype not in TYPES:
            raise _Bad("type", f"type {str(mtype)[:40]!r} is not one of {', '.join(TYPES)}")
        user_id = _id(msg.get("userId"), "userId")
        anonymous_id = _id(msg.get("anonymousId"), "anonymousId")
        if user_id is None and anonymous_id is None and require_ids:
            raise _Bad("userId", "userId or anonymousId is required")
        for obj in ("context", "properties", "traits", "integrations"):
            if msg.get(obj) is not None and not isinstance(msg[obj], dict):
                raise _Bad(obj, f"{obj} must be a JSON object")
        event = None
        if mtype == "track":
            event = msg.get("event")
            if not isinstance(event, str) or not event.strip():
                raise _Bad("event", "track requires a non-empty event name")
            if len(event) > 200:
                raise _Bad("event", "event name is longer than 200 characters")
        elif mtype in ("page", "screen"):
            name = msg.get("name")
            event = name[:200] if isinstance(name, str) and name else None  # the full name stays in the payload
        elif mtype == "group":
            if _id(msg.get("groupId"), "groupId") is None:
                raise _Bad("groupId", "group requires groupId")
        elif mtype == "alias":
            if user_id is None:
                raise _Bad("userId", "alias requires userId")
            if _id(msg.get("previousId"), "previousId") is None:
                raise _Bad("previousId", "alias requires previousId")
        original = _ts(msg, "originalTimestamp") or _ts(msg, "timestamp")
        sent_at = _ts(msg, "sentAt")
    except _Bad as bad:
        mid = message_id if isinstance(message_id, str) else None
        return Rejection(bad.field, bad.reason, mid, msg)

    # Segment's clock-skew correction: the device clock may be wrong, but sentAt and originalTimestamp
    # come from the same clock, so their difference is trustworthy.
    if original is not None and sent_at is not None:
        timestamp = received_at - (sent_at - original)
    else:
        timestamp = original or received_at
    payload = dict(msg)
    payload.pop("writeKey", None)  # a (server) write key sent in the body must not end up in stored events
    payload["type"] = mtype
    payload["messageId"] = message_id
    payload["receivedAt"] = iso(received_at)
    payload["timestamp"] = iso(timestamp)
    if original is not None:
        payload["originalTimestamp"] = iso(original)
    channel = infer_channel(payload, source_kind, source_channel)
    payload["channel"] = channel
    return Event(message_id, mtype, event, channel, user_id, anonymous_id, timestamp, received_at, payload)


def merge_batch_defaults(item: dict, batch: dict) -> dict:
    """Top-level batch context/integrations (and sentAt) apply to every item; the item's own keys win."""
    out = item
    for key in ("context", "integrations"):
        top = batch.get(key)
        if isinstance(top, dict) and top:
            mine = item.get(key)
            if mine is None:
                merged = dict(top)
            elif isinstance(mine, dict):
                merged = {**top, **mine}
            else:
                continue
            if out is item:
                out = dict(item)
            out[key] = merged
    if "sentAt" in batch and "sentAt" not in item:
        if out is item:
            out = dict(item)
        out["sentAt"] = batch["sentAt"]
    return out
