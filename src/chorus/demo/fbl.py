"""The customers' mailbox provider's feedback loop: when she presses "this is spam" on a brand's email, the
provider mails the brand an abuse report in the Abuse Reporting Format (ARF, RFC 5965), quoting the message as it
arrived; the brand's abuse mailbox forwards it to Chorus (``POST /webhooks/email/feedback``, the raw report).

:func:`report` builds that report from the raw email the demo's SMTP server received, with Python's ``email``
package, as Yahoo's or Microsoft's loop would send it: a ``multipart/report; report-type=feedback-report`` with a
human-readable part, the ``message/feedback-report`` fields and the original message (``message/rfc822``), whose
``List-Unsubscribe`` and ``Message-ID`` headers are kept as they arrived.
"""

from __future__ import annotations

import email
from datetime import datetime
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, make_msgid

from chorus.demo.brand import BRAND

# the customers' addresses are @customers.example: their mailbox provider's loop
USER_AGENT = "CustomersExample-Feedback-Loop/1.0"
PROVIDER = "customers.example"


def report(original: bytes, rcpt: str, arrived: datetime, made: datetime) -> bytes:
    """The ARF report of a spam complaint about ``original`` (the email as delivered to ``rcpt`` at ``arrived``),
    written and sent by the loop at ``made`` (its Date, which Chorus dates the complaint by: after she opened the
    email and pressed "this is spam", not before)."""
    msg = MIMEMultipart("report", report_type="feedback-report")
    msg["From"] = f"Feedback Loop <fbl@{PROVIDER}>"
    msg["To"] = f"abuse@{BRAND.domain}"
    msg["Subject"] = "Email Feedback Report for IP 127.0.0.1"
    msg["Date"] = format_datetime(made)
    msg["Message-ID"] = make_msgid(domain=PROVIDER)
    msg.attach(MIMEText(f"This is an email abuse report for an email message received from IP 127.0.0.1 on "
                        f"{format_datetime(arrived)}.\nA user of {PROVIDER} marked it as spam.\n"))  # fmt: skip
    fields = MIMEBase("message", "feedback-report")
    fields.set_payload(f"Feedback-Type: abuse\r\nUser-Agent: {USER_AGENT}\r\nVersion: 1\r\n"
                       f"Original-Rcpt-To: {rcpt}\r\nArrival-Date: {format_datetime(arrived)}\r\n")  # fmt: skip
    msg.attach(fields)
    msg.attach(MIMEMessage(email.message_from_bytes(original)))
    return msg.as_bytes()
