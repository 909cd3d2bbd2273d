"""The webhook channel: the rendered JSON body POSTed to the brand's URL, signed, with the message id as
``Idempotency-Key`` so that a receiver can drop the duplicate of a retried delivery.

Signature (``Chorus-Signature: t=<unix seconds>,v1=<hex>``): HMAC-SHA256 with the configured secret over
``"<t>." + body``, the scheme Stripe popularised; receivers should also refuse a ``t`` older than a few minutes.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import orjson

from chorus.messaging.providers import (
    ConfigError,
    HTTPClient,
    Outgoing,
    PermanentError,
    TransientError,
    check_settings,
    secret,
    timeout_of,
)
from chorus.messaging.providers.http import HTTPError

KNOWN = {"type", "name", "url", "secret_env", "timeout", "rate_per_second"}


def sign(secret_value: str, body: bytes, t: int) -> str:
    mac = hmac.new(secret_value.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


class WebhookProvider(HTTPClient):
    channel = "webhook"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "webhook")
        check_settings(conf, KNOWN, where, "webhook")
        url = conf.get("url")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.url must be an http(s) URL")
        self.url = url
        self.secret = secret(conf, "secret", where, resolve_secrets, workspace=workspace)
        if self.secret is None:
            raise ConfigError(f"{where}.secret_env is required: every webhook is signed")
        self.timeout = timeout_of(conf, where, 10)

    def _client_options(self) -> dict:
        return {"timeout": self.timeout}

    def send(self, out: Outgoing) -> str:
        body = orjson.dumps(
            {"message_id": out.message_id, "workspace_id": out.workspace_id, "profile_id": out.address,
             "kind": out.kind, "topic": out.topic, "body": out.content.get("body")}
        )  # fmt: skip
        headers = {
            "Content-Type": "application/json", "Idempotency-Key": out.message_id, "Chorus-Message-Id": out.message_id,
            "Chorus-Signature": sign(self.secret or "", body, int(time.time())), "User-Agent": "Chorus-Webhook/1",
        }  # fmt: skip
        try:
            r = self._http().post(self.url, content=body, headers=headers)
        except HTTPError as exc:
            raise TransientError(f"webhook unreachable: {type(exc).__name__}: {exc}", code="connect") from None
        if 200 <= r.status_code < 300:
            return r.headers.get("x-request-id") or out.message_id
        reason = f"webhook answered {r.status_code}: {r.text[:300]}"
        if r.status_code in (408, 409, 425, 429) or r.status_code >= 500:
            raise TransientError(reason, code=str(r.status_code))
        raise PermanentError(reason, code=str(r.status_code))


class InboxProvider:
    """The in-app inbox needs no outside party: delivering is making the message visible to the app."""

    channel = "in_app"
    name = "inbox"

    def send(self, out: Outgoing) -> str:
        return f"inbox:{out.message_id}"

    def close(self) -> None:
        pass
