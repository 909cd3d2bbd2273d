"""Email over SMTP: STARTTLS or implicit TLS, AUTH, one reused connection, multipart/alternative, DKIM.

The Message-ID is derived from the Chorus message id, so a message can be recognised wherever it ends up (and a
receiving system that deduplicates by Message-ID sees one message even if it were ever transmitted twice).
"""

from __future__ import annotations

import binascii
import smtplib
import ssl
import threading
from email.header import Header
from email.utils import format_datetime, formataddr, parseaddr

from chorus.messaging.providers import AmbiguousError, ConfigError, Outgoing, PermanentError, TransientError, secret
from chorus.timeutil import utcnow

# Enhanced status codes 5.1.x are about the address itself (no such user, bad domain): a hard bounce.
_HARD_BOUNCE_CODES = {550, 551, 553}


def _check_from(value, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.from is required, e.g. 'Shop <news@shop.example>'")
    _name, addr = parseaddr(value)
    if "@" not in addr:
        raise ConfigError(f"{where}.from {value!r} has no address")
    return value


class SMTPProvider:
    channel = "email"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True):
        self.name = str(conf.get("name") or "smtp")
        self.host = conf.get("host")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"{where}.host is required")
        self.security = conf.get("security", "starttls")
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigError(f"{where}.security must be starttls, tls or none")
        self.port = int(conf.get("port") or {"tls": 465, "starttls": 587, "none": 25}[self.security])
        self.username = conf.get("username")
        self.password = secret(conf, "password", where, resolve_secrets)
        self.sender = _check_from(conf.get("from"), where)
        self.from_domain = parseaddr(self.sender)[1].rsplit("@", 1)[1].lower()
        self.reply_to = conf.get("reply_to")
        # the same for every message: parsed and encoded once
        self._from_header = _addr_header(self.sender)
        self._reply_to_header = _addr_header(self.reply_to) if self.reply_to else None
        self._envelope_from = parseaddr(self.sender)[1]
        self.timeout = float(conf.get("timeout", 30))
        self.tls_context = ssl.create_default_context(cafile=conf.get("ca_file"))
        if conf.get("tls_verify") is False:  # a private relay with a self-signed certificate
            self.tls_context.check_hostname = False
            self.tls_context.verify_mode = ssl.CERT_NONE
        dkim_conf = conf.get("dkim")
        self.dkim = None
        if dkim_conf:
            key = secret(dkim_conf, "private_key", f"{where}.dkim", resolve_secrets)
            if not key or not dkim_conf.get("selector") or not dkim_conf.get("domain"):
                raise ConfigError(f"{where}.dkim needs domain, selector and private_key_env")
            self.dkim = (dkim_conf["selector"].encode(), dkim_conf["domain"].encode(), key.encode())
        known = {"type", "name", "host", "port", "security", "username", "password_env", "from", "reply_to",
                 "timeout", "ca_file", "tls_verify", "dkim", "rate_per_second", "concurrency"}  # fmt: skip
        if set(conf) - known:
            raise ConfigError(f"{where}.{sorted(set(conf) - known)[0]} is not an SMTP setting")
        self._idle: list[smtplib.SMTP] = []  # open connections no thread is using: one per concurrent send
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------------------------------
    def _connect(self) -> smtplib.SMTP:
        try:
            if self.security == "tls":
                conn = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self.tls_context)
            else:
                conn = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            conn.ehlo()
            if self.security == "starttls":
                conn.starttls(context=self.tls_context)
                conn.ehlo()
            if self.username:
                conn.login(self.username, self.password or "")
        except smtplib.SMTPAuthenticationError as exc:
            reason = f"SMTP authentication failed: {exc.smtp_code} {_text(exc.smtp_error)}"
            raise TransientError(reason, code="auth") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise TransientError(f"SMTP server does not support what is configured: {exc}", code="config") from None
        except (OSError, smtplib.SMTPException) as exc:
            raise TransientError(f"cannot connect to {self.host}:{self.port}: {exc}", code="connect") from None
        return conn

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()

    # -- the message ---------------------------------------------------------------------------------------------
    def build(self, out: Outgoing) -> bytes:
        """The RFC 5322 message: headers through the email package's encoders, bodies assembled directly (the
        email package's MIME tree costs several milliseconds a message; this is a fraction of that)."""
        c = out.content
        headers = [
            ("From", self._from_header),
            ("To", out.address),
            *((("Reply-To", self._reply_to_header),) if self._reply_to_header else ()),
            ("Subject", _text_header(c["subject"])),
            ("Date", format_datetime(utcnow())),
            ("Message-ID", f"<{out.message_id}@{self.from_domain}>"),
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
        raw = ("".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n" + body).encode("ascii")
        if self.dkim:
            import dkim

            selector, domain, key = self.dkim
            headers = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
            headers += [k.lower().encode() for k in out.headers]
            sig = dkim.sign(raw, selector, domain, key, include_headers=headers)
            raw = sig + raw
        return raw

    def send(self, out: Outgoing) -> str:
        """One SMTP transaction on a reused connection (or a new one). Until DATA nothing has been sent: a reused
        connection the server closed meanwhile is replaced and the transaction starts again; a connection lost
        during DATA may have delivered the message (ambiguous)."""
        raw = self.build(out)
        sender = self._envelope_from
        for fresh in (False, True):
            conn, reused = self._take(fresh)
            try:
                options = [f"SIZE={len(raw)}"] if conn.does_esmtp and conn.has_extn("size") else []
                code, reply = conn.mail(sender, options)
                if code == 421 and reused and not fresh:  # the server is closing this connection: take another
                    self._discard(conn)
                    continue
                if code != 250:
                    self._reset(conn)
                    raise _classify(code, reply, recipient=False)
                code, reply = conn.rcpt(out.address)
                if code not in (250, 251):
                    self._reset(conn)
                    raise _classify(code, reply, recipient=True)
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                self._discard(conn)
                if reused and not fresh:  # closed by the server while idle: nothing was sent
                    continue
                raise TransientError(f"SMTP connection lost before sending: {exc}", code="connect") from None
            try:
                code, reply = conn.data(raw)
            except smtplib.SMTPDataError as exc:  # DATA itself refused: nothing was sent
                self._reset(conn)
                raise _classify(exc.smtp_code, exc.smtp_error, recipient=False) from None
            except (OSError, smtplib.SMTPServerDisconnected) as exc:
                # Dropped in the middle of the transaction: the server may have queued the message already.
                self._discard(conn)
                raise AmbiguousError(f"SMTP connection lost while sending: {exc}", code="ambiguous") from None
            if code != 250:
                self._reset(conn)
                raise _classify(code, reply, recipient=False)
            self._give_back(conn)
            return f"<{out.message_id}@{self.from_domain}>"
        raise TransientError("SMTP server closed two connections in a row", code="connect")

    def _take(self, fresh: bool) -> tuple[smtplib.SMTP, bool]:
        if not fresh:
            with self._lock:
                if self._idle:
                    return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: smtplib.SMTP) -> None:
        with self._lock:
            self._idle.append(conn)

    def _discard(self, conn: smtplib.SMTP) -> None:
        try:
            conn.close()
        except OSError:
            pass

    def _reset(self, conn: smtplib.SMTP) -> None:
        """After a refused transaction the connection is reusable once RSET clears it."""
        try:
            if conn.rset()[0] == 250:
                self._give_back(conn)
                return
        except (OSError, smtplib.SMTPException):
            pass
        self._discard(conn)


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


def _addr_header(value: str) -> str:
    name, addr = parseaddr(value)
    return formataddr((name, addr), charset="utf-8") if name else addr


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _classify(code: int, text, *, recipient: bool):
    reason = f"{code} {_text(text)}".strip()
    if 400 <= code < 500:
        return TransientError(reason, code=str(code))
    bounce = recipient and (code in _HARD_BOUNCE_CODES or " 5.1." in f" {_text(text)}")
    return PermanentError(reason, code=str(code), bounce=bounce)
