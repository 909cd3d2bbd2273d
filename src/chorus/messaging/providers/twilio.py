"""SMS through Twilio's Programmable Messaging API, its status callbacks and its inbound-message webhook.

Sending is ``POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json`` (form-encoded ``To``, ``From`` or
``MessagingServiceSid``, ``Body``, ``StatusCallback``; HTTP Basic auth with the account SID and auth token).
Webhooks from Twilio are authenticated by ``X-Twilio-Signature``: base64 of HMAC-SHA1 over the full URL followed
by every POST parameter name and value, sorted by name, keyed with the auth token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping

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
from chorus.messaging.providers.http import HTTPError

# Twilio error codes (https://www.twilio.com/docs/api/errors) that say the number itself cannot receive SMS.
UNREACHABLE_NUMBER = {21211, 21214, 21612, 21614}
OPTED_OUT = 21610  # the recipient replied STOP to this sender: Twilio refuses until they send START
# Codes that are about our side (credentials, account, throttling): another provider may work.
OUR_SIDE = {20003, 20005, 20429, 30001}
KNOWN = {"type", "name", "account_sid", "auth_token_env", "from", "messaging_service_sid", "base_url", "timeout",
         "rate_per_second", "status_callback"}  # fmt: skip


def signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The X-Twilio-Signature of a request: what Twilio sends and what a receiver recomputes."""
    payload = url + "".join(f"{k}{params[k]}" for k in sorted(params))
    return base64.b64encode(hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()).decode()


def valid_signature(auth_token: str, url: str, params: Mapping[str, str], given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(signature(auth_token, url, params), given)


class TwilioSMS(HTTPClient):
    channel = "sms"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        self.name = str(conf.get("name") or "twilio")
        check_settings(conf, KNOWN, where, "Twilio")
        self.account_sid = conf.get("account_sid")
        if not isinstance(self.account_sid, str) or not self.account_sid.startswith("AC"):
            raise ConfigError(f"{where}.account_sid must be the account SID (AC…)")
        self.auth_token = secret(conf, "auth_token", where, resolve_secrets, workspace=workspace)
        if self.auth_token is None:
            raise ConfigError(f"{where}.auth_token_env is required (the variable holding the auth token)")
        self.sender = conf.get("from")
        self.service = conf.get("messaging_service_sid")
        if bool(self.sender) == bool(self.service):
            raise ConfigError(f"{where} needs exactly one of from (an E.164 number) or messaging_service_sid")
        self.base_url = str(conf.get("base_url") or "https://api.twilio.com").rstrip("/")
        self.status_callback = conf.get("status_callback")
        self.timeout = timeout_of(conf, where, 15)

    def _client_options(self) -> dict:
        return dict(base_url=self.base_url, auth=(self.account_sid, self.auth_token or ""), timeout=self.timeout)

    def send(self, out: Outgoing) -> str:
        form = {"To": out.address, "Body": out.content.get("text") or ""}
        form.update({"From": self.sender} if self.sender else {"MessagingServiceSid": self.service})
        callback = out.headers.get("StatusCallback") or self.status_callback
        if callback:
            form["StatusCallback"] = callback
        try:
            r = self._http().post(f"/2010-04-01/Accounts/{self.account_sid}/Messages.json", data=form)
        except HTTPError as exc:
            raise http_failure(exc, "Twilio") from None
        if r.status_code in (200, 201):
            return r.json()["sid"]
        try:
            body = r.json()
        except ValueError:
            body = {}
        code = body.get("code")
        reason = (
            f"Twilio {r.status_code}" + (f" error {code}" if code else "") + f": {body.get('message', r.text)[:300]}"
        )
        if r.status_code == 429 or r.status_code >= 500 or code in OUR_SIDE or r.status_code in (401, 403):
            raise TransientError(reason, code=str(code or r.status_code))
        raise PermanentError(
            reason, code=str(code or r.status_code), bounce=code in UNREACHABLE_NUMBER or code == OPTED_OUT
        )


# Status callback values (MessageStatus) -> Chorus message statuses.
STATUS_MAP = {"sent": "sent", "delivered": "delivered", "undelivered": "failed", "failed": "failed", "read": "opened"}

# Keywords carriers and Twilio treat as opt-out / opt-in / help (case-insensitive, whole message).
STOP_WORDS = {"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"}
START_WORDS = {"START", "YES", "UNSTOP", "OPTIN"}
HELP_WORDS = {"HELP", "INFO"}


def keyword(body: str) -> str | None:
    word = body.strip().upper().rstrip(".!")
    if word in STOP_WORDS:
        return "stop"
    if word in START_WORDS:
        return "start"
    if word in HELP_WORDS:
        return "help"
    return None
