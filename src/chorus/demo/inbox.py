"""What the customers received: mail from the demo's SMTP server and messages the file sinks wrote (SMS, push,
Messenger), read the way a person sees them, with the links a person (or her mailbox provider) can follow."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from email import message_from_bytes
from urllib.parse import parse_qs, urlsplit

import orjson

from chorus.demo.servers import Mail
from chorus.demo.twilio import Text

_HREF = re.compile(r"""(?:href|src)=["']([^"']+)["']""")


@dataclass(frozen=True)
class Delivery:
    message_id: str
    channel: str
    address: str
    open_url: str | None = None  # the email's open pixel
    click_urls: tuple[str, ...] = ()  # its tracked links
    unsubscribe_url: str | None = None  # List-Unsubscribe (RFC 8058 one-click), marketing email only
    text: Text | None = None  # an SMS as Twilio took it (its status callback URL names the message)
    raw: bytes | None = field(default=None, repr=False, compare=False)  # an email as the SMTP server received it


def from_mail(mail: Mail, public_url: str) -> list[Delivery]:
    # compat32 (the email package's default) parses several times faster than policy.default, and the demo only
    # needs two headers and the HTML part's links
    msg = message_from_bytes(mail.data)
    mid = str(msg.get("X-Chorus-Message") or "")
    html = next((p for p in msg.walk() if p.get_content_type() == "text/html"), None)
    body = html.get_payload(decode=True).decode("utf-8", "replace") if html is not None else ""
    links = _HREF.findall(body)
    opens = [u for u in links if u.startswith(f"{public_url}/o/")]
    clicks = tuple(u for u in links if u.startswith(f"{public_url}/c/"))
    unsub = None
    for part in str(msg.get("List-Unsubscribe") or "").split(","):
        url = part.strip().strip("<>")
        if url.startswith(f"{public_url}/u/"):
            unsub = url
    return [Delivery(mid, "email", rcpt, opens[0] if opens else None, clicks, unsub, raw=mail.data) for rcpt in mail.to]


def from_text(text: Text) -> Delivery:
    query = parse_qs(urlsplit(text.status_callback or "").query)
    return Delivery((query.get("m") or [""])[0], "sms", text.to, text=text)


@dataclass
class SinkReader:
    """New files of the file sinks under ``root/<channel>/`` (each message is one file, written atomically)."""

    root: str
    channels: tuple[str, ...]
    seen: set[str] = field(default_factory=set)

    def take(self) -> list[Delivery]:
        out = []
        for channel in self.channels:
            folder = os.path.join(self.root, channel)
            if not os.path.isdir(folder):
                continue
            for entry in os.scandir(folder):
                if not entry.name.endswith(".json") or entry.name in self.seen:
                    continue
                self.seen.add(entry.name)
                with open(entry.path, "rb") as fh:
                    doc = orjson.loads(fh.read())
                out.append(Delivery(doc["message_id"], doc["channel"], str(doc["address"])))
        return out
