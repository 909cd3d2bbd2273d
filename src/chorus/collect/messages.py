"""Validation and normalisation of Segment-spec messages: plain functions, no I/O.

A message either becomes a :class:`Event` ready to store or a :class:`Rejection` naming the field and the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

from chorus.collect.channels import infer_channel
from chorus.identity.identifiers import id_text
from chorus.safejson import problem, text_problem
from chorus.timeutil import iso, parse_ts
from chorus.workspaces import TRUSTED_KINDS

TYPES = ("identify", "track", "page", "screen", "group", "alias")
SHORT_PATHS = {"i": "identify", "t": "track", "p": "page", "s": "screen", "g": "group", "a": "alias"}
MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
MAX_BATCH_EVENTS = 2500
MAX_ID_LEN = 200
MAX_EXTERNAL_IDS = 50
# The accepted range of event times (see event_time and docs/api.md): nothing this product measures happened
# before 2000, and an event time more than two days ahead of our clock is a broken clock or a typo (a wrong
# time zone is at most 14 hours off, a date sent for tomorrow a day), not an event to file in the future.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_FUTURE = timedelta(days=2)


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
    # why the client's time was not used (the event took receivedAt), or None
    adjusted: str | None = None


@dataclass(slots=True)
class Rejection:
    field: str | None
    reason: str
    message_id: str | None
    payload: object  # what was refused, as parsed (stored as lossy JSON text: see ingest.rejected_payload)


def _id(value, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _Bad(field, f"{field} must be a string or a number")
    text = id_text(value)  # the same text identity resolution makes of it (5.0 is "5")
    if text is not None and len(text) > MAX_ID_LEN:
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


def event_time(original: datetime | None, sent_at: datetime | None, received_at: datetime) -> tuple[datetime, str]:
    """When the event happened, and how that was decided: ``corrected``, ``as sent``, ``received`` (no client
    time), or why the client's time was not used.

    Segment's clock-skew correction: ``sentAt`` and ``originalTimestamp`` come from the same (possibly wrong)
    device clock, so their difference, the time the event waited on the device, is trustworthy and
    ``timestamp = receivedAt - (sentAt - originalTimestamp)``. It is applied only when it is sane: the wait is
    not negative (an event cannot be sent before it happened: such a ``sentAt`` is from another clock or made
    up) and the result falls in the accepted range ``[EARLIEST, receivedAt + MAX_FUTURE]``. Otherwise the
    client's own time is used if it falls in that range, else ``receivedAt`` (the client's values stay in the
    payload either way).
    """
    if original is None:
        return received_at, "received"
    if sent_at is not None and sent_at >= original:
        try:
            corrected = received_at - (sent_at - original)
        except OverflowError:  # a wait of thousands of years: no instant to correct to
            corrected = None
        if corrected is not None and EARLIEST <= corrected <= received_at + MAX_FUTURE:
            return corrected, "corrected"
    if original < EARLIEST:
        return received_at, f"the event time {iso(original)[:10]} is before {iso(EARLIEST)[:10]}"
    if original > received_at + MAX_FUTURE:
        return received_at, f"the event time {iso(original)[:19]}Z is more than {MAX_FUTURE.days} days ahead"
    return original, "as sent"


# The messageId prefixes of ids Chorus derives itself: ``imp-`` an import row's (importer), ``chorus-`` a message's
# sent without one (content_message_id) and Chorus' own records (journeys, segments, messaging, consent). A workspace
# stores a messageId once whoever sent it, so a public (client) key that could send one of these would file its
# forgery first and turn the trusted row (a receipt imported later, a consent change) into an ignored duplicate.
RESERVED_ID_PREFIXES = ("imp-", "chorus-")


def content_message_id(msg: dict, trusted: bool = False) -> str:
    """Clients normally send messageId; without one, identical retries still deduplicate by content.

    An untrusted (client) sender's content is hashed in its own domain: a browser that sends first the very body
    the brand's server will send must not make the server's copy (a trusted identify linking userId and email) a
    duplicate of its own. A trusted sender's id is the content's hash alone, as it always was (ids already stored
    and retries across an upgrade still match); a JSON object starts with ``{``, so the two never hash the same.
    Untrusted unless told: an id that cannot collide with a trusted one is the safe one to get by default."""
    content = orjson.dumps(msg, option=orjson.OPT_SORT_KEYS)
    return "chorus-" + hashlib.sha256(content if trusted else b"untrusted\x1f" + content).hexdigest()[:32]


def _check_external_ids(ctx: dict) -> None:
    ext = ctx.get("externalIds")
    if ext is None:
        return
    if not isinstance(ext, list):
        raise _Bad("context.externalIds", "context.externalIds must be a list of {type, id} objects")
    if len(ext) > MAX_EXTERNAL_IDS:
        raise _Bad("context.externalIds", f"context.externalIds has more than {MAX_EXTERNAL_IDS} items")
    for i, item in enumerate(ext):
        where = f"context.externalIds[{i}]"
        if not isinstance(item, dict):
            raise _Bad(where, f"{where} must be an object with type and id")
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.strip():
            raise _Bad(f"{where}.type", f"{where}.type must be a non-empty string")
        if len(kind) > 64:
            raise _Bad(f"{where}.type", f"{where}.type is longer than 64 characters")
        if _id(item.get("id"), f"{where}.id") is None:
            raise _Bad(f"{where}.id", f"{where}.id must be a non-empty string or number")


def _check_device_token(ctx: dict) -> None:
    device = ctx.get("device")
    if device is None:
        return
    if not isinstance(device, dict):
        raise _Bad("context.device", "context.device must be a JSON object")
    token = device.get("token")
    if token is not None and (isinstance(token, bool) or not isinstance(token, str | int)):
        raise _Bad("context.device.token", "context.device.token must be a string")


def _message_id(raw: object) -> str | None:
    """The messageId to file a rejection under: only one that fits the column and can be stored."""
    if isinstance(raw, str) and 0 < len(raw) <= MAX_ID_LEN and text_problem(raw) is None:
        return raw
    return None


def normalise(
    msg: object,
    *,
    received_at: datetime,
    source_kind: str,
    source_channel: str | None = None,
    forced_type: str | None = None,
    require_ids: bool = True,
    max_bytes: int | None = None,
) -> Event | Rejection:
    """Validate one message and compute its message id, corrected timestamp and channel.

    The one door every tracked, imported or webhook message passes: anything it accepts can be stored on both
    engines and resolved (the JSON limits of :mod:`chorus.safejson`, id types and lengths, the shape of
    ``context.externalIds``). ``max_bytes`` bounds the message's JSON size (a batch item's 32 KB).
    """
    if not isinstance(msg, dict):
        return Rejection(None, "a message must be a JSON object", None, msg)
    bad_json = problem(msg, "")
    if bad_json:
        path, why = bad_json
        return Rejection(path or None, f"{path}: {why}" if path else why, _message_id(msg.get("messageId")), msg)
    if max_bytes is not None and len(orjson.dumps(msg)) > max_bytes:
        return Rejection("batch", f"message is larger than {max_bytes // 1024} KB",
                         _message_id(msg.get("messageId")), msg)  # fmt: skip
    message_id = msg.get("messageId")
    trusted = source_kind in TRUSTED_KINDS
    try:
        sent_id = _id(message_id, "messageId")
        if sent_id is not None and not trusted and sent_id.startswith(RESERVED_ID_PREFIXES):
            # a trusted source (the brand's server replaying Chorus' own events, say) may keep these ids
            prefix = next(p for p in RESERVED_ID_PREFIXES if sent_id.startswith(p))
            raise _Bad("messageId", f"messageId starts with {prefix!r}, which Chorus reserves for the ids it makes "
                                    "itself (imports, messages sent without messageId): send another id, or none")
        message_id = sent_id or content_message_id(msg, trusted)
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
        ctx = msg.get("context") or {}
        _check_external_ids(ctx)
        _check_device_token(ctx)
        event = None
        if mtype == "track":
            event = msg.get("event")
            if not isinstance(event, str) or not event.strip():
                raise _Bad("event", "track requires a non-empty event name")
            if len(event) > 200:
                raise _Bad("event", "event name is longer than 200 characters")
            if event in RESERVED_EVENTS and source_kind != "internal":
                # Chorus writes these itself; one sent from outside would count in a segment ("performed Segment
                # Entered") or a report as if it were Chorus' own (an outside probe forged one with the write key)
                raise _Bad("event", f"{event!r} is an event Chorus records itself: send your own under another name")
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
        return Rejection(bad.field, bad.reason, _message_id(message_id), msg)

    timestamp, how = event_time(original, sent_at, received_at)
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
    adjusted = None if how in ("received", "as sent", "corrected") else how
    return Event(message_id, mtype, event, channel, user_id, anonymous_id, timestamp, received_at, payload, adjusted)


_INTERNAL_KEYS = frozenset({"type", "event", "properties", "context", "messageId", "timestamp", "userId",
                            "anonymousId"})  # fmt: skip


def _plain_id(value: object) -> bool:
    return value is None or (type(value) is str and 0 < len(value) <= MAX_ID_LEN)


# The names of Chorus' own records of what its segments and journeys did to a person: no other source may send them
RESERVED_EVENTS = frozenset({"Segment Entered", "Segment Exited", "Journey Entered", "Journey Step",
                             "Journey Exited", "Journey Converted"})  # fmt: skip


# Chorus' own timeline records, which it stores already attributed to a known person (a message's status, a segment
# entry, a journey step): outbound tracks named in these namespaces, never folded into her profile state. A summary
# of her activity (segments.summary) does not count them, so it leaves these names to her events.
OWN_PREFIXES = ("Message ", "Segment ", "Journey ")


def own_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(OWN_PREFIXES)


def own_record(payload: dict) -> bool:
    """Whether a stored event is of the shape Chorus' own attributed records have: an outbound track with a
    reserved name (the only events ``ingest.store`` lets be stored already attributed)."""
    ctx = payload.get("context")
    return ((payload.get("type") or "track") == "track" and own_name(payload.get("event"))
            and isinstance(ctx, dict) and ctx.get("direction") == "outbound")  # fmt: skip


def normalise_internal(msg: dict, *, at: datetime, received_at: datetime) -> Event | Rejection:
    """:func:`normalise` of a track event Chorus writes on a person's timeline itself (a journey's step, a segment
    entry, a message's status), whose ``timestamp`` is ``iso(at)``: the same Event, without parsing back the ids
    and the time Chorus has just written (a transition writes several such events a person; their validation
    was a sixth of it). Whatever is not of that plain shape (another field, an id that is not a short string, a
    device or external ids in the context, text that could not be stored) goes through :func:`normalise` itself,
    so the answer is always normalise's (a property test compares the two)."""
    event, mid, ctx = msg.get("event"), msg.get("messageId"), msg.get("context")
    props, at_text = msg.get("properties"), iso(at)
    if (at.tzinfo is not UTC or msg.get("type") != "track" or not msg.keys() <= _INTERNAL_KEYS
            or type(event) is not str or not 0 < len(event) <= 200 or not event.strip()
            or type(mid) is not str or not 0 < len(mid) <= MAX_ID_LEN
            or not _plain_id(msg.get("userId")) or not _plain_id(msg.get("anonymousId"))
            or (ctx is not None and (type(ctx) is not dict or "externalIds" in ctx or "device" in ctx))
            or (props is not None and type(props) is not dict)
            or msg.get("timestamp") != at_text or problem(msg, "") is not None):  # fmt: skip
        return normalise(msg, received_at=received_at, source_kind="internal", require_ids=False)
    timestamp, how = event_time(at, None, received_at)
    payload = dict(msg)
    payload["receivedAt"] = at_text if received_at == at else iso(received_at)
    payload["timestamp"] = at_text if timestamp == at else iso(timestamp)
    payload["originalTimestamp"] = at_text
    channel = infer_channel(payload, "internal", None)
    payload["channel"] = channel
    adjusted = None if how in ("received", "as sent", "corrected") else how
    return Event(mid, "track", event, channel, msg.get("userId"), msg.get("anonymousId"), timestamp, received_at,
                 payload, adjusted)  # fmt: skip


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
