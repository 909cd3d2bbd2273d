"""One builder of the RFC 5322 message for every email provider that hands over the raw message (SMTP, and the file
sink that writes it to disk): headers, bodies, the Message-ID and the DKIM signature, built the same way whichever
provider sends or keeps it.

The Message-ID is derived from the Chorus message id, so a message can be recognised wherever it ends up (and a
receiving system that deduplicates by Message-ID sees one message even if it were ever transmitted twice).
"""

from __future__ import annotations

import binascii
from email.header import Header
from email.utils import format_datetime, formataddr, getaddresses
from functools import lru_cache

import idna  # email-validator's own dependency: the IDNA 2008 that validated a profile's address

from chorus.messaging.providers import ConfigError, Outgoing, PermanentError, secret
from chorus.timeutil import utcnow

# The settings the composer reads from a provider's configuration.
SETTINGS = frozenset({"from", "reply_to", "dkim"})


def check_from(value, where: str) -> tuple[str, str]:
    """The ``from`` setting, its domain IDNA-encoded (see :func:`address_setting`)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.from is required, e.g. 'Shop <news@shop.example>'")
    return address_setting(value, f"{where}.from", "e.g. 'Shop <news@shop.example>'")


def address_setting(value: str, field: str, example: str) -> tuple[str, str]:
    """One address setting (``from``, ``reply_to``) as it goes into headers: one address, an optional display name
    (RFC 2047-encoded later when it is not ASCII), and a domain in its ASCII form: an internationalised domain
    (``news@bücher.example``) is IDNA-encoded (``news@xn--bcher-kva.example``), which every mail server takes. A
    non-ASCII local part would need SMTPUTF8, which Chorus does not use: refused in its words (an outside probe got
    Python's codec error, with a fragment of it as the field)."""
    found = getaddresses([value])
    if len(found) > 1:
        raise ConfigError(f"{field} must be one email address, {example}")
    if not found or "@" not in found[0][1]:
        raise ConfigError(f"{field} {value!r} has no address")
    name, addr = found[0]
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        raise ConfigError(f"{field} must be one email address, {example}")
    if not local.isascii():
        raise ConfigError(f"{field}: the part before @ must be ASCII (addresses needing SMTPUTF8 are not supported)")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise ConfigError(f"{field}: {domain!r} is not a valid domain name") from None
    return name, f"{local}@{domain}"


@lru_cache(maxsize=10_000)
def recipient(address: str) -> tuple[str, bool]:
    """A recipient's address as it goes on the envelope (``RCPT TO``) and in ``To``, and whether it needs SMTPUTF8
    (RFC 6531, 6532).

    An internationalised domain with an ASCII part before the ``@`` goes IDNA-encoded (``ana@bücher.example`` as
    ``ana@xn--bcher-kva.example``), which every mail server takes. It is IDNA 2008, as the address was validated on
    the profile (email-validator): Python's ``idna`` codec is IDNA 2003, which writes ``straße.de`` as
    ``strasse.de``, another domain. A part before the ``@`` that is not ASCII (``josé@example.com``) has no ASCII
    form at all: the address goes intact, domain and all (RFC 6531 takes a domain in Unicode), and only to a server
    that offers SMTPUTF8. An address whose domain has no IDNA form cannot be sent to: a PermanentError, never a
    bounce (nothing says the address is gone)."""
    if address.isascii():
        return address, False
    local, at, domain = address.rpartition("@")
    if not at or not local.isascii():
        return address, True
    try:
        return f"{local}@{idna.encode(domain, uts46=True).decode('ascii')}", False
    except UnicodeError:  # idna.IDNAError is one
        raise PermanentError(f"the address's domain {domain!r} has no ASCII (IDNA) form", code="address") from None


class Composer:
    """Builds the raw message from a provider configuration's ``from``, ``reply_to`` and ``dkim``."""

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        sender = check_from(conf.get("from"), where)
        self.envelope_from = sender[1]
        self.from_domain = self.envelope_from.rsplit("@", 1)[1].lower()
        self.reply_to = conf.get("reply_to")
        if self.reply_to is not None:
            if not isinstance(self.reply_to, str):
                raise ConfigError(f"{where}.reply_to must be an email address, e.g. 'Care <care@shop.example>'")
            reply_to = address_setting(self.reply_to, f"{where}.reply_to", "e.g. 'Care <care@shop.example>'")
        # the same for every message: parsed and encoded once
        self._from_header = self.sender = _addr_header(*sender)
        self._reply_to_header = _addr_header(*reply_to) if self.reply_to is not None else None
        dkim_conf = conf.get("dkim")
        self.dkim = None
        if dkim_conf:
            if not isinstance(dkim_conf, dict):
                raise ConfigError(f"{where}.dkim must be an object {{domain, selector, private_key_env}}")
            key = secret(dkim_conf, "private_key", f"{where}.dkim", resolve_secrets, workspace=workspace)
            if not key or not dkim_conf.get("selector") or not dkim_conf.get("domain"):
                raise ConfigError(f"{where}.dkim needs domain, selector and private_key_env")
            if not isinstance(dkim_conf["selector"], str) or not isinstance(dkim_conf["domain"], str):
                raise ConfigError(f"{where}.dkim.domain and {where}.dkim.selector must be text")
            unknown = set(dkim_conf) - {"domain", "selector", "private_key_env"}
            if unknown:
                raise ConfigError(f"{where}.dkim.{sorted(unknown)[0]} is not a DKIM setting")
            self.dkim = (dkim_conf["selector"].encode(), dkim_conf["domain"].encode(), key.encode())

    def message_id(self, out: Outgoing) -> str:
        """The Message-ID header of the message (also what the SMTP provider reports as its provider id)."""
        return f"<{out.message_id}@{self.from_domain}>"

    def build(self, out: Outgoing) -> bytes:
        """The RFC 5322 message: headers through the email package's encoders, bodies assembled directly (the
        email package's MIME tree costs several milliseconds a message; this is a fraction of that)."""
        c = out.content
        to, utf8 = recipient(out.address)
        headers = [
            ("From", self._from_header),
            ("To", to),
            *((("Reply-To", self._reply_to_header),) if self._reply_to_header else ()),
            ("Subject", _text_header(c["subject"])),
            ("Date", format_datetime(utcnow())),
            ("Message-ID", self.message_id(out)),
            ("MIME-Version", "1.0"),
            ("X-Chorus-Message", out.message_id),
            *((k, _text_header(v)) for k, v in out.headers.items()),
        ]
        text = _qp(c.get("text") or "")
        if c.get("html"):
            boundary = f"=_chorus_{out.message_id}"
            headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
            body = (
                f"--{boundary}\r\n" + _PART.format("plain") + text + f"\r\n--{boundary}\r\n" + _PART.format("html")
                + _qp(c["html"]) + f"\r\n--{boundary}--\r\n"
            )  # fmt: skip
        else:
            headers += [
                ("Content-Type", 'text/plain; charset="utf-8"'),
                ("Content-Transfer-Encoding", "quoted-printable"),
            ]
            body = text + "\r\n"
        # Every header is ASCII (RFC 2047 words) but a To that needs SMTPUTF8, which is UTF-8 as RFC 6532 has it
        raw = ("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n" + body).encode("utf-8" if utf8 else "ascii")
        if self.dkim:
            import dkim

            selector, domain, key = self.dkim
            signed = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
            signed += [k.lower().encode() for k in out.headers]
            raw = dkim.sign(raw, selector, domain, key, include_headers=signed) + raw
        return raw


_PART = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'


def _qp(text: str) -> str:
    """Quoted-printable (C-accelerated), CRLF line ends, lines within the 76-character limit."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # b2a_qp's soft line breaks end in a bare LF, which SMTP forbids: every line end becomes CRLF. A long line
    # is split by soft breaks, and a space right before one is dropped by some decoders: quote spaces there.
    return "\r\n".join(
        binascii.b2a_qp(b, quotetabs=len(b) > 70, istext=False).decode("ascii").replace("\n", "\r\n")
        for b in (line.encode("utf-8") for line in lines)
    )


def _text_header(value: str) -> str:
    """A header value, RFC 2047-encoded when it is not plain ASCII; folded on one logical line."""
    value = " ".join(str(value).split())  # a header never carries a line break from a template
    if value.isascii():
        return value
    return Header(value, "utf-8", header_name="Subject").encode(linesep="\r\n")


def _addr_header(name: str, addr: str) -> str:
    return formataddr((name, addr), charset="utf-8") if name else addr
