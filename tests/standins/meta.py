"""A local stand-in for Meta's Graph API send endpoints, following their published request and response formats:
the WhatsApp Cloud API (``POST /{version}/{phone_number_id}/messages``,
https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages) and the Messenger Send API
(``POST /{version}/me/messages`` or ``/{page_id}/messages``,
https://developers.facebook.com/docs/messenger-platform/reference/send-api), with Graph's error envelope
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id", "error_data"}}`` and the codes of
https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes. Only what Chorus uses is implemented.

Also: builders for the webhook notifications Meta posts, and their ``X-Hub-Signature-256``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
import uuid

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

TAGS = {"ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "HUMAN_AGENT", "POST_PURCHASE_UPDATE"}
DIGITS = re.compile(r"^\d{8,15}$")


def error(status: int, code: int, message: str, *, subcode: int | None = None, kind: str = "OAuthException",
          details: str | None = None) -> JSONResponse:  # fmt: skip
    err: dict = {"message": message, "type": kind, "code": code, "fbtrace_id": "A" + uuid.uuid4().hex[:22]}
    if subcode is not None:
        err["error_subcode"] = subcode
    if details is not None:
        err["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return JSONResponse({"error": err}, status_code=status)


class MetaStandIn:
    """``within_24h`` holds the WhatsApp ids and PSIDs that wrote to the business in the last 24 hours; free-form
    messages to anyone else are refused (131047 on WhatsApp, 10/2018278 on Messenger)."""

    def __init__(self, access_token: str, phone_number_id: str = "106540352242922", page_id: str = "102030405060708"):
        self.access_token, self.phone_number_id, self.page_id = access_token, phone_number_id, page_id
        self.page_tokens = {access_token}
        self.sent: list[dict] = []  # every accepted request: {"api", "path", "body", "id"}
        self.requests: list[dict] = []  # every request, accepted or not
        self.within_24h: set[str] = set()
        self.not_on_whatsapp: set[str] = set()
        self.unavailable: set[str] = set()  # Messenger PSIDs that get 551
        self.templates: dict[str, dict[str, int]] = {"order_update": {"en_US": 2, "nl": 2}}  # name: {lang: params}
        self.down = False
        self.before_answer = None  # called with the wamid of an accepted WhatsApp message before it is answered
        self.app = Starlette(
            routes=[
                Route("/{version}/me/messages", self.messenger, methods=["POST"]),
                Route("/{version}/{node}/messages", self.messages, methods=["POST"]),
            ]
        )

    async def _read(self, request: Request, api: str) -> tuple[dict | None, JSONResponse | None]:
        raw = await request.body()
        auth = request.headers.get("authorization", "")
        self.requests.append({"api": api, "path": request.url.path, "raw": raw, "authorization": auth})
        if self.down:
            return None, error(500, 2, "An unexpected error has occurred. Please retry your request later.")
        if not request.path_params["version"].startswith("v"):
            return None, error(400, 2500, "Unknown path components", kind="OAuthException")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else request.query_params.get("access_token")
        if not token:
            return None, error(
                400, 2500, "An active access token must be used to query information about the current user."
            )
        if token not in self.page_tokens:
            return None, error(401, 190, "Error validating access token: Session has expired.", subcode=463)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None, error(400, 100, "(#100) Invalid parameter", kind="OAuthException")
        return (body if isinstance(body, dict) else {}), None

    # -- WhatsApp ------------------------------------------------------------------------------------------------
    async def messages(self, request: Request):
        if request.path_params["node"] == self.page_id:
            return await self.messenger(request)
        body, refused = await self._read(request, "whatsapp")
        if refused:
            return refused
        if request.path_params["node"] != self.phone_number_id:
            return error(400, 100, f"Unsupported post request. Object with ID '{request.path_params['node']}' does not"
                         " exist, cannot be loaded due to missing permissions, or does not support this operation.",
                         subcode=33, kind="GraphMethodException")  # fmt: skip
        if body.get("messaging_product") != "whatsapp":
            return error(400, 100, "(#100) The parameter messaging_product is required.")
        to = str(body.get("to") or "")
        if not DIGITS.match(to):
            return error(400, 100, "(#100) Invalid parameter", details="Invalid 'to' parameter.")
        if to == "15550001234":  # the business number itself
            return error(400, 131021, "(#131021) Recipient cannot be sender.",
                         details="Sender and recipient phone number is the same.")  # fmt: skip
        if to in self.not_on_whatsapp:
            return error(400, 131026, "(#131026) Message undeliverable", details="Message Undeliverable.")
        kind = body.get("type")
        if kind == "text":
            text = body.get("text") or {}
            if not isinstance(text.get("body"), str) or not text["body"]:
                return error(400, 100, "(#100) The parameter text['body'] is required.")
            if to not in self.within_24h:
                return error(400, 131047, "(#131047) Re-engagement message",
                             details="Message failed to send because more than 24 hours have passed since the"
                             " customer last replied to this number.")  # fmt: skip
        elif kind == "template":
            tpl = body.get("template") or {}
            langs = self.templates.get(tpl.get("name"))
            lang = (tpl.get("language") or {}).get("code")
            if not langs or lang not in langs:
                return error(404, 132001, "(#132001) Template name does not exist in the translation",
                             details=f"template name ({tpl.get('name')}) does not exist in {lang}")  # fmt: skip
            params = [p for c in tpl.get("components") or [] if c.get("type") == "body" for p in c.get("parameters")]
            if len(params) != langs[lang] or any(p.get("type") != "text" or not p.get("text") for p in params):
                return error(400, 132000, "(#132000) Number of parameters does not match the expected number of params",
                             details=f"body: number of localizable_params ({len(params)}) does not match the expected"
                             f" number of params ({langs[lang]})")  # fmt: skip
        else:
            return error(400, 100, "(#100) Param type must be one of {TEXT, TEMPLATE, ...}")
        wamid = "wamid.HBgL" + uuid.uuid4().hex.upper()
        self.sent.append({"api": "whatsapp", "path": request.url.path, "body": body, "id": wamid})
        if self.before_answer is not None:  # what Meta may do: call back before its answer reaches the sender
            self.before_answer(wamid)
        msg = {"id": wamid, **({"message_status": "accepted"} if kind == "template" else {})}
        return JSONResponse({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": to}],
                             "messages": [msg]})  # fmt: skip

    # -- Messenger -----------------------------------------------------------------------------------------------
    async def messenger(self, request: Request):
        body, refused = await self._read(request, "messenger")
        if refused:
            return refused
        psid = str((body.get("recipient") or {}).get("id") or "")
        if not psid:
            return error(400, 100, "(#100) The parameter recipient is required")
        mtype, tag = body.get("messaging_type"), body.get("tag")
        if mtype not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return error(400, 100, "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}")
        if mtype == "MESSAGE_TAG" and tag not in TAGS:
            return error(400, 100, "(#100) Param tag must be one of {" + ", ".join(sorted(TAGS)) + "}")
        if not isinstance((body.get("message") or {}).get("text"), str):
            return error(400, 100, "(#100) Must send either message or sender action")
        if psid in self.unavailable:
            return error(400, 551, "(#551) This person isn't available right now.", subcode=1545041)
        if mtype != "MESSAGE_TAG" and psid not in self.within_24h:
            return error(400, 10, "(#10) This message is sent outside of allowed window.", subcode=2018278)
        mid = "m_" + uuid.uuid4().hex
        self.sent.append({"api": "messenger", "path": request.url.path, "body": body, "id": mid})
        return JSONResponse({"recipient_id": psid, "message_id": mid})


# -- webhooks ------------------------------------------------------------------------------------------------------
def sign(app_secret: str, body: bytes) -> dict[str, str]:
    """The headers Meta sends with a notification: X-Hub-Signature-256 over the raw body."""
    digest = hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def whatsapp_notification(value: dict, waba_id: str = "102290129340398", phone_number_id: str = "106540352242922"):
    """A WhatsApp Business Account notification with one change (statuses and/or messages)."""
    meta = {"display_phone_number": "15550001234", "phone_number_id": phone_number_id}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": {"messaging_product": "whatsapp", "metadata": meta,
                                                               **value}, "field": "messages"}]}]}  # fmt: skip


def wa_status(wamid: str, status: str, recipient: str, errors: list[dict] | None = None) -> dict:
    st = {"id": wamid, "status": status, "timestamp": str(int(time.time())), "recipient_id": recipient}
    if status in ("sent", "delivered"):
        st["conversation"] = {"id": uuid.uuid4().hex, "origin": {"type": "marketing"}}
        st["pricing"] = {"billable": True, "pricing_model": "CBP", "category": "marketing"}
    if errors:
        st["errors"] = errors
    return st


def wa_text(sender: str, body: str, name: str = "Noor", ago: int = 0) -> dict:
    """``contacts`` and ``messages`` of an inbound text, sent ``ago`` seconds before now (WhatsApp timestamps are
    whole seconds: two messages in the same second are only ordered by that)."""
    wamid = "wamid.HBgL" + uuid.uuid4().hex.upper()
    return {"contacts": [{"profile": {"name": name}, "wa_id": sender}],
            "messages": [{"from": sender, "id": wamid, "timestamp": str(int(time.time()) - ago), "type": "text",
                          "text": {"body": body}}]}  # fmt: skip


def messenger_notification(page_id: str, *events: dict) -> dict:
    now = int(time.time() * 1000)
    return {"object": "page", "entry": [{"id": page_id, "time": now, "messaging": list(events)}]}


def ms_text(psid: str, page_id: str, text: str) -> dict:
    return {"sender": {"id": psid}, "recipient": {"id": page_id}, "timestamp": int(time.time() * 1000),
            "message": {"mid": "m_" + uuid.uuid4().hex, "text": text}}  # fmt: skip


def ms_delivery(psid: str, page_id: str, *mids: str) -> dict:
    now = int(time.time() * 1000)
    return {"sender": {"id": psid}, "recipient": {"id": page_id}, "delivery": {"mids": list(mids), "watermark": now}}


def ms_read(psid: str, page_id: str) -> dict:
    now = int(time.time() * 1000)
    return {"sender": {"id": psid}, "recipient": {"id": page_id}, "timestamp": now, "read": {"watermark": now}}
