"""Mobile push through Firebase Cloud Messaging's HTTP v1 API, authenticated with a service account.

The service-account JSON (from the Firebase console) is read from the environment variable the settings name;
``google-auth`` signs the OAuth 2.0 JWT assertion and exchanges it at the account's ``token_uri`` for an access
token, refreshed before it expires. Sending is ``POST {base_url}/v1/projects/{project_id}/messages:send``.
"""

from __future__ import annotations

import threading
import time

import orjson

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
    ttl_of,
)
from chorus.messaging.providers.http import HTTPError

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
KNOWN = {"type", "name", "service_account_env", "project_id", "base_url", "timeout", "rate_per_second", "ttl"}
# FcmError.errorCode values (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)
GONE = {"UNREGISTERED"}  # the app was uninstalled or the token expired
RETRY = {"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL", "THIRD_PARTY_AUTH_ERROR"}


class FCMProvider(HTTPClient):
    channel = "push"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "fcm")
        check_settings(conf, KNOWN, where, "FCM")
        raw = secret(conf, "service_account", where, resolve_secrets, workspace=workspace)
        if raw is None:
            raise ConfigError(f"{where}.service_account_env is required (the service account JSON)")
        self.info = None
        if resolve_secrets:
            try:
                self.info = orjson.loads(raw)
                assert isinstance(self.info, dict) and self.info.get("type") == "service_account"
            except (orjson.JSONDecodeError, AssertionError):
                raise ConfigError(f"{where}.service_account_env does not hold a service account JSON") from None
        self.project_id = conf.get("project_id") or (self.info or {}).get("project_id")
        if resolve_secrets and not self.project_id:
            raise ConfigError(f"{where}.project_id is required (or project_id in the service account JSON)")
        self.base_url = str(conf.get("base_url") or "https://fcm.googleapis.com").rstrip("/")
        self.timeout = timeout_of(conf, where, 10)
        self.ttl = ttl_of(conf, where)
        self._creds = None
        self._lock = threading.Lock()

    def accepts(self, out: Outgoing) -> bool:
        return "subscription" not in out.content  # device tokens; browser subscriptions go through web push

    def _token(self) -> str:
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.requests import Request
        from google.oauth2 import service_account

        with self._lock:
            try:
                if self._creds is None:
                    self._creds = service_account.Credentials.from_service_account_info(self.info, scopes=[SCOPE])
                if not self._creds.valid:
                    self._creds.refresh(Request())
            except (GoogleAuthError, ValueError) as exc:
                self._creds = None
                raise TransientError(f"FCM OAuth token: {exc}", code="auth") from None
            return self._creds.token

    def _client_options(self) -> dict:
        return {"base_url": self.base_url, "timeout": self.timeout}

    def send(self, out: Outgoing) -> str:
        c = out.content
        notification = {k: c[k] for k in ("title", "body", "image") if c.get(k)}
        data = {"message_id": out.message_id, **({"url": c["url"]} if c.get("url") else {})}
        message = {
            "token": out.address, "notification": notification, "data": data,
            "android": {"ttl": f"{self.ttl}s"},
            "apns": {"headers": {"apns-expiration": str(int(time.time()) + self.ttl) if self.ttl else "0"}},
        }  # fmt: skip
        headers = {"Authorization": f"Bearer {self._token()}"}
        try:
            r = self._http().post(f"/v1/projects/{self.project_id}/messages:send", json={"message": message},
                                  headers=headers)  # fmt: skip
        except HTTPError as exc:
            raise http_failure(exc, "FCM") from None
        if r.status_code == 200:
            return r.json().get("name", out.message_id)
        try:
            err = r.json().get("error") or {}
        except ValueError:
            err = {}
        code = next(
            (d.get("errorCode") for d in err.get("details") or [] if str(d.get("@type", "")).endswith("FcmError")),
            None,
        )
        reason = f"FCM {r.status_code} {code or err.get('status', '')}: {err.get('message', r.text[:200])}"
        if code in GONE:
            raise PermanentError(reason, code="subscription_gone")
        if code in RETRY or r.status_code in (401, 429) or r.status_code >= 500:
            if r.status_code == 401:
                self._creds = None  # a revoked or expired token: get a new one next time
            raise TransientError(reason, code=code or str(r.status_code))
        raise PermanentError(reason, code=code or str(r.status_code))
