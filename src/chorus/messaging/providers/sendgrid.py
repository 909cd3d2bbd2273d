"""Email through SendGrid's v3 Mail Send API, and the verification of its Signed Event Webhook.

Sending is ``POST {base_url}/v3/mail/send`` with ``Authorization: Bearer <API key>`` and a JSON body: one
personalization (the recipient, and ``custom_args`` carrying the Chorus message and workspace ids, which SendGrid
copies into every event about the message), ``from``, ``reply_to``, ``subject``, ``content`` (text/plain first,
then text/html, as SendGrid requires), ``headers`` (List-Unsubscribe...) and ``tracking_settings`` turning
SendGrid's own click, open and subscription tracking off: Chorus rewrites links and adds its pixel itself. A 202
carries the message id in ``X-Message-Id``.

Event Webhook requests are signed with ECDSA (P-256, SHA-256) over the ``X-Twilio-Email-Event-Webhook-Timestamp``
header followed by the raw body; ``X-Twilio-Email-Event-Webhook-Signature`` is the base64 of the DER signature,
and the verification key SendGrid shows is the base64 of a DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from chorus.messaging.providers import (
    ConfigError,
    HTTPClient,
    Outgoing,
    PermanentError,
    TransientError,
    check_settings,
    http_failure,
    secret,
    timeout_of,
)
from chorus.messaging.providers.email import address_setting, recipient
from chorus.messaging.providers.http import HTTPError, Response

KNOWN = {"type", "name", "api_key_env", "from", "reply_to", "base_url", "timeout", "rate_per_second",
         "webhook_public_key"}  # fmt: skip
# Clicks and opens are tracked by Chorus (links.py); SendGrid's own tracking would rewrite Chorus' links again.
TRACKING_OFF = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
    "subscription_tracking": {"enable": False},
    "ganalytics": {"enable": False},
}


def _address(value, where: str, key: str) -> dict:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} is required, e.g. 'Shop <news@shop.example>'")
    # one address, its domain IDNA-encoded, as for SMTP (chorus.messaging.providers.email)
    name, addr = address_setting(value, f"{where}.{key}", "e.g. 'Shop <news@shop.example>'")
    return {"email": addr, "name": name} if name else {"email": addr}


def load_public_key(value: str) -> ec.EllipticCurvePublicKey:
    """The verification key as SendGrid shows it (base64 DER); a PEM block is accepted too. Raises ValueError saying
    what the key is not, in our words (the ``cryptography`` library's text never reaches a settings error)."""
    text = "".join(line for line in value.strip().splitlines() if not line.startswith("-----"))
    try:
        key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (binascii.Error, ValueError, TypeError):  # TypeError: a DER private key, say
        raise ValueError("not a PEM or base64 DER public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("not an ECDSA P-256 public key")
    return key


def valid_signature(key: ec.EllipticCurvePublicKey, signature: str | None, timestamp: str | None, body: bytes) -> bool:
    if not signature or not timestamp:
        return False
    try:
        der = base64.b64decode(signature, validate=True)
        key.verify(der, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (binascii.Error, ValueError, InvalidSignature):
        return False
    return True


class SendGridProvider(HTTPClient):
    channel = "email"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "sendgrid")
        check_settings(conf, KNOWN, where, "SendGrid")
        self.api_key = secret(conf, "api_key", where, resolve_secrets, workspace=workspace)
        if self.api_key is None:
            raise ConfigError(f"{where}.api_key_env is required (the variable holding the API key)")
        self.sender = _address(conf.get("from"), where, "from")
        self.reply_to = _address(conf["reply_to"], where, "reply_to") if conf.get("reply_to") else None
        base_url = conf.get("base_url") or "https://api.sendgrid.com"
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout_of(conf, where, 30)
        self.webhook_key = None
        if conf.get("webhook_public_key") is not None:
            if not isinstance(conf["webhook_public_key"], str):
                raise ConfigError(f"{where}.webhook_public_key must be the verification key SendGrid shows")
            try:
                self.webhook_key = load_public_key(conf["webhook_public_key"])
            except ValueError as exc:
                raise ConfigError(f"{where}.webhook_public_key is {exc}") from None

    def _client_options(self) -> dict:
        return dict(base_url=self.base_url, timeout=self.timeout, headers={"Authorization": f"Bearer {self.api_key}"})

    def body(self, out: Outgoing) -> dict:
        c = out.content
        content = [{"type": t, "value": c[k]} for t, k in (("text/plain", "text"), ("text/html", "html")) if c.get(k)]
        body = {
            "personalizations": [{
                # an internationalised domain goes IDNA-encoded, as over SMTP (a part before the @ that is not
                # ASCII goes intact: SendGrid's API answers for it)
                "to": [{"email": recipient(out.address)[0]}],
                "custom_args": {"chorus_message_id": out.message_id, "chorus_workspace_id": out.workspace_id},
            }],
            "from": self.sender,
            "subject": c.get("subject") or "",
            "content": content,
            "headers": {**out.headers, "X-Chorus-Message": out.message_id},
            "tracking_settings": TRACKING_OFF,
        }  # fmt: skip
        if self.reply_to:
            body["reply_to"] = self.reply_to
        return body

    def send(self, out: Outgoing) -> str:
        try:
            r = self._http().post("/v3/mail/send", json=self.body(out))
        except HTTPError as exc:
            raise http_failure(exc, "SendGrid") from None
        if r.status_code in (200, 202):  # 200 only in sandbox mode
            return r.headers.get("x-message-id", "")
        reason = f"SendGrid {r.status_code}: {_errors(r)}"
        if r.status_code == 429 or r.status_code >= 500 or r.status_code in (401, 403):
            raise TransientError(reason, code=str(r.status_code))  # throttled, down, or our credentials/sender
        raise PermanentError(reason, code=str(r.status_code))


def _errors(r: Response) -> str:
    """SendGrid's ``{"errors": [{"message", "field", "help"}]}`` as one line."""
    try:
        errors = r.json().get("errors") or []
    except (ValueError, AttributeError):
        errors = []
    parts = []
    for e in errors if isinstance(errors, list) else []:
        if isinstance(e, dict) and e.get("message"):
            parts.append(str(e["message"]) + (f" (field {e['field']})" if e.get("field") else ""))
    return "; ".join(parts)[:500] or (r.text[:300] or r.reason_phrase)
