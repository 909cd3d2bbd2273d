"""Web push (browsers): RFC 8291 message encryption (aes128gcm) and RFC 8292 VAPID, through ``pywebpush``.

The address is the subscription's endpoint; its keys (``p256dh``, ``auth``) travel in the message content, put
there when the message was created. The payload is the push variant as JSON, for the site's service worker to
show: ``{"title", "body", "url", "image", "message_id"}``.
"""

from __future__ import annotations

import base64
import socket
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush
from requests.adapters import HTTPAdapter

from chorus.messaging.providers import (
    AmbiguousError,
    ConfigError,
    Outgoing,
    PermanentError,
    TransientError,
    check_settings,
    secret,
    timeout_of,
    ttl_of,
)
from chorus.messaging.providers.public import connect_in_turn, refused_address


class RefusedAddress(Exception):
    """The push endpoint's host resolves to an address the worker must not call (see providers.public). Not an
    OSError, so neither urllib3 nor requests takes it for a network failure: it reaches :meth:`WebPushProvider.send`."""


class _PublicOnly:
    """A connection that resolves its host itself, refuses it unless every address is public, and connects to the
    addresses it checked (not a second lookup a DNS name could answer differently). TLS still names the host."""

    def _new_conn(self) -> socket.socket:
        try:
            found, refused = refused_address(self._dns_host, self.port)
        except socket.gaierror as exc:  # as urllib3 says it: nothing was sent
            raise urllib3.exceptions.NameResolutionError(self.host, self, exc) from exc
        if refused is not None:
            raise RefusedAddress(refused)
        return connect_in_turn(self, found, super()._new_conn)


def _check_host(url: str) -> None:
    parts = urlsplit(url)
    try:
        port = parts.port or 443
    except ValueError:
        raise PermanentError("the push endpoint's port is not a port number", code="address") from None
    try:
        _found, refused = refused_address(parts.hostname or "", port)
    except socket.gaierror as exc:
        raise TransientError(f"push service unreachable: {parts.hostname} does not resolve ({exc})",
                             code="connect") from None  # fmt: skip
    if refused is not None:
        raise RefusedAddress(refused)


class _HTTPSConnection(_PublicOnly, urllib3.connection.HTTPSConnection):
    pass


class _HTTPConnection(_PublicOnly, urllib3.connection.HTTPConnection):
    pass


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _PublicOnlyAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def public_session() -> requests.Session:
    """A requests session that connects only to public addresses (unless CHORUS_ALLOW_LOOPBACK_PUSH=1 lets a
    loopback one through, for a local test push service)."""
    session = requests.Session()
    adapter = _PublicOnlyAdapter()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


KNOWN = {"type", "name", "vapid_private_key_env", "subject", "ttl", "urgency", "timeout", "rate_per_second"}


def application_server_key(vapid: Vapid) -> str:
    """The public key browsers pass to ``pushManager.subscribe`` (base64url, uncompressed P-256 point)."""
    raw = vapid.public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def load_vapid(pem_or_b64: str, what: str = "the VAPID private key") -> Vapid:
    """A VAPID key as PEM, or base64url DER or raw 32 bytes (what ``vapid --gen`` and web-push tools print).
    ConfigError saying that ``what`` is not one, in our words (never py_vapid's or cryptography's text)."""
    try:
        if pem_or_b64.lstrip().startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(pem_or_b64.encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
                raise ValueError("not a P-256 key")
            return Vapid(key)
        return Vapid.from_string(private_key=pem_or_b64)
    except Exception:  # noqa: BLE001 - py_vapid raises several kinds for a bad key
        raise ConfigError(f"{what} is not a P-256 private key (PEM, or base64url DER or raw 32 bytes)") from None


class WebPushProvider:
    channel = "push"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "webpush")
        check_settings(conf, KNOWN, where, "web push")
        subject = conf.get("subject")
        if not isinstance(subject, str) or not subject.startswith(("mailto:", "https://")):
            raise ConfigError(f"{where}.subject must be a mailto: or https: contact for push services (RFC 8292)")
        self.subject = subject
        key = secret(conf, "vapid_private_key", where, resolve_secrets, workspace=workspace)
        if key is None:
            raise ConfigError(f"{where}.vapid_private_key_env is required")
        env = conf.get("vapid_private_key_env")
        self.vapid = load_vapid(key, f"the key in ${env} ({where}.vapid_private_key_env)") if resolve_secrets else None
        self.ttl = ttl_of(conf, where)
        self.urgency = conf.get("urgency", "normal")
        if self.urgency not in ("very-low", "low", "normal", "high"):
            raise ConfigError(f"{where}.urgency must be very-low, low, normal or high")
        self.timeout = timeout_of(conf, where, 10)
        self._session = public_session()  # the endpoint is the browser's, so anyone's: never an inward address

    def accepts(self, out: Outgoing) -> bool:
        return "subscription" in out.content  # a browser; device tokens go through FCM

    def close(self) -> None:
        self._session.close()

    def send(self, out: Outgoing) -> str:
        sub = out.content.get("subscription") or {}
        if not sub.get("keys"):
            raise PermanentError("the message carries no push subscription keys", code="no_subscription")
        payload = {k: out.content.get(k) for k in ("title", "body", "url", "image")}
        payload["message_id"] = out.message_id
        try:
            if requests.utils.get_environ_proxies(out.address):  # through the operator's proxy: the proxy connects,
                _check_host(out.address)  # not the checked connection below, so the host is checked here
            r = webpush(
                {"endpoint": out.address, "keys": sub["keys"]}, data=orjson.dumps(payload).decode(),
                vapid_private_key=self.vapid, vapid_claims={"sub": self.subject}, ttl=self.ttl,
                headers={"Urgency": self.urgency, "Topic": out.message_id[-32:]}, timeout=self.timeout,
                requests_session=self._session,
            )  # fmt: skip
        except RefusedAddress as exc:  # a DNS name pointing inward, or a subscription saved before the check
            raise PermanentError(str(exc), code="private_address") from None
        except WebPushException as exc:
            status = exc.response.status_code if exc.response is not None else None
            text = (exc.response.text[:300] if exc.response is not None else str(exc)).strip()
            reason = f"push service answered {status}: {text}" if status else f"push failed: {text}"
            if status in (404, 410):  # the browser unsubscribed or the subscription expired
                raise PermanentError(reason, code="subscription_gone") from None
            if status is None or status == 429 or status >= 500:
                raise TransientError(reason, code=str(status or "connect")) from None
            raise PermanentError(reason, code=str(status)) from None
        except (requests.ConnectTimeout, requests.exceptions.SSLError) as exc:
            raise TransientError(f"push service unreachable: {exc}", code="connect") from None
        except requests.ConnectionError as exc:
            cause = getattr(exc.args[0], "reason", None) if exc.args else None  # urllib3's MaxRetryError's
            if isinstance(cause, urllib3.exceptions.NewConnectionError) or "NewConnectionError" in repr(exc) or (
                "Name or service not known" in str(exc)
            ):  # nothing was sent
                raise TransientError(f"push service unreachable: {exc}", code="connect") from None
            raise AmbiguousError(f"no answer from the push service after sending: {exc}", code="ambiguous") from None
        except requests.RequestException as exc:  # a read timeout: the push service may have taken it
            raise AmbiguousError(f"no answer from the push service after sending: {exc}", code="ambiguous") from None
        return r.headers.get("Location") or out.message_id
