"""Email over SMTP: STARTTLS or implicit TLS, AUTH, one reused connection. The message itself (multipart/alternative,
Message-ID, List-Unsubscribe, DKIM) is built by :mod:`chorus.messaging.providers.email`, as for the file sink.
"""

from __future__ import annotations

import os
import smtplib
import ssl
import stat
import threading

from chorus.messaging.providers import (
    AmbiguousError,
    ConfigError,
    Outgoing,
    PermanentError,
    TransientError,
    Unsuitable,
    secret,
    timeout_of,
)
from chorus.messaging.providers.email import Composer, recipient

# The reason a message to such an address fails on a server without SMTPUTF8 (the message's reason, as said).
SMTPUTF8_MISSING = "the address needs SMTPUTF8, which the server does not offer"
# Enhanced status codes 5.1.x are about the address itself (no such user, bad domain): a hard bounce.
_HARD_BOUNCE_CODES = {550, 551, 553}


class SMTPProvider:
    channel = "email"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "smtp")
        self.host = conf.get("host")
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"{where}.host is required")
        self.security = conf.get("security", "starttls")
        if self.security not in ("starttls", "tls", "none"):
            raise ConfigError(f"{where}.security must be starttls, tls or none")
        self.port = conf.get("port", {"tls": 465, "starttls": 587, "none": 25}[self.security])
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ConfigError(f"{where}.port must be a whole number from 1 to 65535")
        self.username = conf.get("username")
        self.password = secret(conf, "password", where, resolve_secrets, workspace=workspace)
        self.composer = Composer(conf, where, resolve_secrets, workspace=workspace)  # from, reply_to, dkim
        self.sender, self.from_domain = self.composer.sender, self.composer.from_domain
        self._envelope_from = self.composer.envelope_from
        self.timeout = timeout_of(conf, where, 30)
        self.tls_context = _tls_context(conf.get("ca_file"), f"{where}.ca_file")
        if conf.get("tls_verify") is False:  # a private relay with a self-signed certificate
            self.tls_context.check_hostname = False
            self.tls_context.verify_mode = ssl.CERT_NONE
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
        """The raw message, as every email provider that hands one over builds it (see providers.email)."""
        return self.composer.build(out)

    def send(self, out: Outgoing) -> str:
        """One SMTP transaction on a reused connection (or a new one). Until DATA nothing has been sent: a reused
        connection the server closed meanwhile is replaced and the transaction starts again; a connection lost
        during DATA may have delivered the message (ambiguous).

        An address that needs SMTPUTF8 (a part before the ``@`` that is not ASCII) goes with the ``SMTPUTF8`` option
        where the server offers it (RFC 6531); where it does not, the message fails for good before ``MAIL FROM``:
        nothing was sent, and no later attempt on this server could send it."""
        rcpt, utf8 = recipient(out.address)
        raw = self.build(out)
        sender = self._envelope_from
        for fresh in (False, True):
            conn, reused = self._take(fresh)
            if utf8 and not (conn.does_esmtp and conn.has_extn("smtputf8")):
                self._give_back(conn)  # no command was sent on it: as good as before
                raise Unsuitable(SMTPUTF8_MISSING, code="smtputf8")
            try:
                options = [f"SIZE={len(raw)}"] if conn.does_esmtp and conn.has_extn("size") else []
                if utf8:  # the envelope and the To header are UTF-8: 8-bit data, which SMTPUTF8 servers take
                    options += ["SMTPUTF8", *(["BODY=8BITMIME"] if conn.has_extn("8bitmime") else [])]
                code, reply = conn.mail(sender, options)
                if code == 421 and reused and not fresh:  # the server is closing this connection: take another
                    self._discard(conn)
                    continue
                if code != 250:
                    self._reset(conn)
                    raise _classify(code, reply, recipient=False)
                code, reply = conn.rcpt(rcpt)
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
            return self.composer.message_id(out)
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


MAX_CA_FILE = 16 * 1024 * 1024  # bytes: a CA bundle is a few hundred KB; more is not one


def _tls_context(ca_file, field: str) -> ssl.SSLContext:
    """The TLS context, trusting the CAs of ``ca_file`` when given: a readable regular file of PEM certificates, or a
    ConfigError naming the setting. The same words whatever is wrong with the path (missing, unreadable, a
    directory, not certificates), so the answer says no more about the server's files than that; never a device
    or FIFO, which OpenSSL would read without end (/dev/zero)."""
    if ca_file is None:
        return ssl.create_default_context()
    problem = f"{field} must be the path of a file of PEM CA certificates, readable by Chorus"
    if not isinstance(ca_file, str) or not ca_file or "\0" in ca_file:
        raise ConfigError(problem)
    try:
        info = os.stat(ca_file)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CA_FILE:
            raise ConfigError(problem)
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError):  # ssl.SSLError is an OSError: no certificate found, or a broken one
        raise ConfigError(problem) from None


def _text(value) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _classify(code: int, text, *, recipient: bool):
    reason = f"{code} {_text(text)}".strip()
    if 400 <= code < 500:
        return TransientError(reason, code=str(code))
    bounce = recipient and (code in _HARD_BOUNCE_CODES or " 5.1." in f" {_text(text)}")
    return PermanentError(reason, code=str(code), bounce=bounce)
