"""Spam complaints from mailbox providers' feedback loops: ARF reports (RFC 5965).

A brand that sends over its own SMTP server learns that a recipient pressed "this is spam" from the feedback loops
of the mailbox providers it enrolled with (Yahoo's CFL, Microsoft's JMRP, many ISPs): each complaint is an email to
the brand's abuse mailbox, a ``multipart/report; report-type=feedback-report`` with a human-readable part, a
machine-readable ``message/feedback-report`` part (``Feedback-Type: abuse``, ``User-Agent``, ``Version: 1``,
``Arrival-Date``…) and the original message (``message/rfc822``) or its headers (``text/rfc822-headers``).

:func:`parse` reads one report. The complaint names its message by the original's signed ``List-Unsubscribe``
URL (the token of :mod:`chorus.messaging.links`): like the one-click unsubscribe that URL serves, holding the
message is what lets one opt its recipient out, so a report needs no API key and a forged one names no message.
Transactional messages carry no such link (none is offered to unsubscribe from a receipt): their reports are
refused, and say so. :func:`record` applies a complaint: ``complained`` in the message's history (once, whatever
reported it before: this or SendGrid's event webhook) and email consent denied for every topic, as a hard bounce.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value, parsedate_to_datetime

from sqlalchemy.engine import Connection

from chorus.errors import ChorusError
from chorus.messaging import consent, outbox
from chorus.messaging.links import Links

REPORT_TYPE = "feedback-report"
# What a report's Feedback-Type means here (RFC 5965 section 7.3, and not-spam from RFC 6650's registry): a
# complaint, or nothing to do (a report that a message is *not* spam, or a virus/fraud report about its content).
COMPLAINTS = frozenset({"abuse"})
KNOWN_TYPES = frozenset({"abuse", "fraud", "other", "virus", "not-spam", "auth-failure", "dmarc"})
_UNSUB = re.compile(r"<([^<>\s]+)>")


@dataclass(frozen=True)
class Report:
    feedback_type: str
    user_agent: str  # the feedback loop that sent it ("Yahoo!-Mail-Feedback/2.0"), "" when not given
    arrival: datetime | None  # when the complained-of message arrived (Arrival-Date): not when she complained
    reported: datetime | None  # the report's own Date: the closest to when she pressed "this is spam"
    token: str  # the signed token of the original message's unsubscribe URL
    original_id: str | None  # the original's X-Chorus-Message header, when the report kept it

    @property
    def complaint(self) -> bool:
        return self.feedback_type in COMPLAINTS


def parse(raw: bytes) -> Report:
    """The report in ``raw`` (the report email as delivered); a ChorusError naming the part that is wrong."""
    try:
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    except Exception:  # noqa: BLE001 - the stdlib parser is lenient; never let a malformed report be a 500
        raise ChorusError("the body is not an email message", field="body") from None
    report = next((p for p in msg.walk() if p.get_content_type() == "multipart/report"), None)
    kind = report.get_param("report-type") if report is not None else None
    if report is None or collapse_rfc2231_value(kind or "").strip().lower() != REPORT_TYPE:  # RFC 2231 too
        raise ChorusError("the body is not a feedback report (RFC 5965): no multipart/report part with "
                          "report-type=feedback-report", field="body")  # fmt: skip
    parts = report.get_payload()
    if not isinstance(parts, list):
        raise ChorusError("the feedback report has no parts", field="body")
    fields = _fields(parts)
    ftype = (fields.get("feedback-type") or "").strip().lower()
    if not ftype:
        raise ChorusError("the message/feedback-report part has no Feedback-Type", field="Feedback-Type")
    if ftype not in KNOWN_TYPES:
        raise ChorusError(f"Feedback-Type {ftype[:40]!r} is not one of {', '.join(sorted(KNOWN_TYPES))}",
                          field="Feedback-Type")  # fmt: skip
    original = _original(parts)
    token = _token(original)
    ident = _text(original.get("X-Chorus-Message")) or None
    return Report(ftype, (fields.get("user-agent") or "").strip()[:200], _date(fields.get("arrival-date")),
                  _date(_text(msg.get("Date"))), token, ident)  # fmt: skip


def _fields(parts: list) -> dict[str, str]:
    part = next((p for p in parts if isinstance(p, Message) and p.get_content_type() == "message/feedback-report"),
                None)  # fmt: skip
    if part is None:
        raise ChorusError("the feedback report has no message/feedback-report part", field="message/feedback-report")
    body = part.get_payload()
    # the parser reads the part's fields as the headers of a message in it; a part it kept as text is parsed here
    holder = body[0] if isinstance(body, list) and body and isinstance(body[0], Message) else None
    if holder is None:
        text = body if isinstance(body, str) else ""
        holder = BytesHeaderParser(policy=email.policy.compat32).parsebytes(text.encode("utf-8", "replace"))
    return {k.lower(): str(v) for k, v in holder.items()}


def _original(parts: list) -> Message:
    for p in parts:
        if not isinstance(p, Message):
            continue
        kind = p.get_content_type()
        if kind == "message/rfc822":
            body = p.get_payload()
            if isinstance(body, list) and body and isinstance(body[0], Message):
                return body[0]
        elif kind == "text/rfc822-headers":
            raw = p.get_payload(decode=True) or b""
            return BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    raise ChorusError("the feedback report does not include the original message or its headers "
                      "(message/rfc822 or text/rfc822-headers)", field="message/rfc822")  # fmt: skip


def _token(original: Message) -> str:
    """The token of the original's Chorus unsubscribe URL (``<https://host/u/TOKEN>`` in List-Unsubscribe)."""
    for value in original.get_all("List-Unsubscribe") or []:
        for url in _UNSUB.findall(re.sub(r"\s+", "", str(value))):
            path = url.split("?", 1)[0].rstrip("/")
            head, _, token = path.rpartition("/")
            if head.endswith("/u") and token:
                return token
    raise ChorusError("the original message carries no Chorus unsubscribe link (List-Unsubscribe): it is not a "
                      "marketing message Chorus sent (transactional messages carry none)",
                      field="List-Unsubscribe")  # fmt: skip


def _text(value) -> str:
    """A header's value as text: the parser gives a Header object, not a str, for one with raw 8-bit bytes."""
    return str(value).strip() if value is not None else ""


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        at = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return at if at.tzinfo is not None else None


def message_id(report: Report, links: Links) -> str:
    """The Chorus message the report is about (NotFound for a token that does not verify)."""
    (mid,) = links.verify(report.token, "u")
    if report.original_id is not None and report.original_id != mid:
        raise ChorusError("the original's X-Chorus-Message does not match its unsubscribe link",
                          field="X-Chorus-Message")  # fmt: skip
    return mid


def record(conn: Connection, msg: dict, report: Report, at: datetime) -> bool:
    """Apply a complaint on the caller's transaction (which took the identity lock before the message row, see
    ``consent.lock_identity``); False when the message was complained about already (a report sent twice)."""
    if outbox.has_status(conn, msg["id"], "complained"):
        return False
    how = "spam complaint (feedback loop" + (f": {report.user_agent})" if report.user_agent else ")")
    consent.record_consent(conn, msg, "*", "denied", how, at, direction="inbound")
    detail = {"how": "feedback loop", "feedback_type": report.feedback_type}
    if report.user_agent:
        detail["user_agent"] = report.user_agent
    outbox.set_status(conn, msg, "complained", at=at, detail=detail)
    return True
