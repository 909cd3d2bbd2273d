"""WhatsApp (Cloud API) and Messenger (Send API) through Meta's Graph API, and the verification of its webhooks.

WhatsApp: ``POST {base_url}/{version}/{phone_number_id}/messages`` with ``Authorization: Bearer <access token>``
and ``{"messaging_product": "whatsapp", "recipient_type": "individual", "to": <digits>, "type": "text" |
"template", ...}``; a 200 carries ``messages[0].id`` (``wamid.…``). Free-form text is only delivered within 24 hours
of the person's last message to the business; outside that window Meta answers error 131047 and only an approved
template may be sent.

Messenger: ``POST {base_url}/{version}/me/messages`` (or ``/{page_id}/messages``) with the page access token and
``{"recipient": {"id": <PSID>}, "messaging_type": "RESPONSE" | "MESSAGE_TAG", "message": {"text": ...}}``;
a 200 carries ``message_id``. Outside the 24-hour window only a message tag may be used.

Errors come as ``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id", "error_data"}}``. Webhooks
carry ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body keyed with the app secret>``.
"""

from __future__ import annotations

import hashlib
import hmac
import re

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

# Graph API error codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes,
# https://developers.facebook.com/docs/messenger-platform/error-codes).
RATE_LIMITED = {4, 80007, 130429, 131048, 131056}  # app, account, throughput, spam and per-recipient limits
TEMPORARY = {1, 2, 131000, 133004}  # unknown / service errors: try again
OUR_SIDE = {190, 10, 200}  # access token invalid or expired, permission missing: another provider may work
RE_ENGAGEMENT = 131047  # free-form WhatsApp text more than 24 h after the person's last message
NOT_ON_WHATSAPP = 131026  # message undeliverable: the number is not a WhatsApp user (or cannot receive)
TO_SENDER = 131021  # the recipient is the business number itself
UNAVAILABLE = 551  # Messenger: "This person isn't available right now"
OUTSIDE_WINDOW = 2018278  # Messenger subcode (with code 10): sent outside the 24 h window without a tag
BOUNCES = {NOT_ON_WHATSAPP, TO_SENDER, UNAVAILABLE}
MESSENGER_TAGS = ("ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "HUMAN_AGENT", "POST_PURCHASE_UPDATE")
COMMON = {"type", "name", "access_token_env", "app_secret_env", "verify_token", "base_url", "api_version", "timeout",
          "rate_per_second"}  # fmt: skip
GRAPH_VERSION = re.compile(r"v\d+\.\d+")
GRAPH_ID = re.compile(r"\d{1,32}")


def signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends with a webhook request."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def valid_signature(app_secret: str, body: bytes, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(signature(app_secret, body), given or "")


def app_secret(conf: dict, where: str, workspace: str | None = None) -> str | None:
    """The app secret of a provider configuration, read from its variable (None when not configured)."""
    return secret(conf, "app_secret", where, workspace=workspace)


def graph_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else None


def classify(status: int, body: object, what: str, text: str = "") -> PermanentError | TransientError:
    """A Graph API error answer as a Chorus provider error."""
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code, sub = graph_int(err.get("code")), graph_int(err.get("error_subcode"))
    message = str(err.get("message") or text[:300] or f"HTTP {status}")
    details = (err.get("error_data") or {}).get("details") if isinstance(err.get("error_data"), dict) else None
    if details and str(details) not in message:
        message += f" ({str(details)[:300]})"
    label = f"{what} {status}" + (f" error {code}" + (f"/{sub}" if sub else "") if code is not None else "")
    reason = f"{label}: {message[:500]}"
    code_s = str(code if code is not None else status)
    if code == RE_ENGAGEMENT:
        return PermanentError(
            f"{reason}; more than 24 hours passed since the person's last message: only an approved template can"
            " be sent (give the whatsapp variant a template)",
            code=code_s,
        )
    if code == 10 and sub == OUTSIDE_WINDOW:
        return PermanentError(
            f"{reason}; more than 24 hours passed since the person's last message: configure a message tag on the"
            " Messenger provider for updates that may be sent outside the window",
            code=code_s,
        )
    if status == 429 or status >= 500 or code in RATE_LIMITED or code in TEMPORARY or code in OUR_SIDE:
        return TransientError(reason, code=code_s)
    if code is None and status in (401, 403):  # no envelope: still about our credentials
        return TransientError(reason, code=code_s)
    return PermanentError(reason, code=code_s, bounce=code in BOUNCES)


class _Graph(HTTPClient):
    what = "Meta"
    known: frozenset[str] = frozenset(COMMON)

    def __init__(self, conf: dict, where: str, resolve_secrets: bool, workspace: str | None = None):
        check_settings(conf, self.known, where, self.what)
        self.name = str(conf.get("name") or conf["type"])
        self.access_token = secret(conf, "access_token", where, resolve_secrets, workspace=workspace)
        if self.access_token is None:
            raise ConfigError(f"{where}.access_token_env is required (the variable holding the access token)")
        secret(conf, "app_secret", where, resolve=False, workspace=workspace)  # checks the variable's name
        token = conf.get("verify_token")
        if token is not None and (not isinstance(token, str) or not 8 <= len(token) <= 200):
            raise ConfigError(f"{where}.verify_token must be a text of 8 to 200 characters")
        self.verify_token = token
        base_url = conf.get("base_url") or "https://graph.facebook.com"
        if not isinstance(base_url, str) or not base_url.startswith(("https://", "http://")):
            raise ConfigError(f"{where}.base_url must be an http(s) URL")
        self.base_url = base_url.rstrip("/")
        self.version = conf.get("api_version", "v21.0")
        if not isinstance(self.version, str) or not GRAPH_VERSION.fullmatch(self.version):
            raise ConfigError(f"{where}.api_version must be a Graph API version such as v21.0")
        self.timeout = timeout_of(conf, where, 15)

    def _client_options(self) -> dict:
        return dict(
            base_url=self.base_url, timeout=self.timeout, headers={"Authorization": f"Bearer {self.access_token}"}
        )

    def _post(self, path: str, body: dict) -> dict:
        try:
            r = self._http().post(f"/{self.version}/{path}", json=body)
        except HTTPError as exc:
            raise http_failure(exc, self.what) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200 and isinstance(data, dict) and "error" not in data:
            return data
        raise classify(r.status_code, data, self.what, r.text)


def _id_setting(conf: dict, key: str, where: str, what: str, required: bool) -> str | None:
    value = conf.get(key)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not GRAPH_ID.fullmatch(value):
        raise ConfigError(f"{where}.{key} must be the {what} (digits)")
    return value


class WhatsAppProvider(_Graph):
    channel = "whatsapp"
    what = "WhatsApp"
    known = frozenset(COMMON | {"phone_number_id"})

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        super().__init__(conf, where, resolve_secrets, workspace)
        self.phone_number_id = _id_setting(conf, "phone_number_id", where, "WhatsApp phone number ID", True)

    def body(self, out: Outgoing) -> dict:
        to = out.address.strip().removeprefix("+")
        if not to.isdigit():
            raise PermanentError(f"{out.address!r} is not a WhatsApp number", code="address")
        body: dict = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": to}
        template = out.content.get("template")
        if template:
            tpl: dict = {"name": template["name"], "language": {"code": template["language"]}}
            params = template.get("parameters") or []
            if params:
                tpl["components"] = [{"type": "body", "parameters": [{"type": "text", "text": p} for p in params]}]
            return {**body, "type": "template", "template": tpl}
        return {**body, "type": "text", "text": {"body": out.content.get("text") or "", "preview_url": False}}

    def send(self, out: Outgoing) -> str:
        data = self._post(f"{self.phone_number_id}/messages", self.body(out))
        try:
            return str(data["messages"][0]["id"])
        except (KeyError, IndexError, TypeError):
            raise PermanentError(f"WhatsApp answered 200 without a message id: {str(data)[:300]}") from None


class MessengerProvider(_Graph):
    channel = "messenger"
    what = "Messenger"
    known = frozenset(COMMON | {"page_id", "tag"})

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        super().__init__(conf, where, resolve_secrets, workspace)
        self.page_id = _id_setting(conf, "page_id", where, "Facebook Page ID", False)
        self.tag = conf.get("tag")
        if self.tag is not None and self.tag not in MESSENGER_TAGS:
            raise ConfigError(f"{where}.tag must be one of {', '.join(MESSENGER_TAGS)}")

    def body(self, out: Outgoing) -> dict:
        body: dict = {
            "recipient": {"id": out.address},
            "messaging_type": "MESSAGE_TAG" if self.tag else "RESPONSE",
            "message": {"text": out.content.get("text") or ""},
        }
        if self.tag:
            body["tag"] = self.tag
        return body

    def send(self, out: Outgoing) -> str:
        data = self._post(f"{self.page_id or 'me'}/messages", self.body(out))
        if not data.get("message_id"):
            raise PermanentError(f"Messenger answered 200 without a message id: {str(data)[:300]}")
        return str(data["message_id"])
