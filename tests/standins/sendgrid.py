"""A local stand-in for SendGrid's v3 Mail Send API and a signer for its Signed Event Webhook.

It follows SendGrid's published request and response format (https://www.twilio.com/docs/sendgrid/api-reference/
mail-send/mail-send and .../for-developers/tracking-events/getting-started-event-webhook-security-features): 202
with an empty body and ``X-Message-Id`` on success, ``{"errors": [{"message", "field", "help"}]}`` otherwise.
Only what Chorus uses is checked. Events are signed as SendGrid signs them: ECDSA P-256 with SHA-256 over the
timestamp header followed by the raw body, the DER signature in base64, the public key shown as base64 DER.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
import uuid

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_PAYLOAD = 20 * 1024 * 1024
HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html#message."
ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
# Headers SendGrid sets itself and refuses in `headers`.
RESERVED = {"x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding", "to",
            "from", "subject", "reply-to", "cc", "bcc"}  # fmt: skip
NOT_VERIFIED = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved."
    " Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the Sender Identity"
    " requirements"
)


def _errors(status: int, *errors: tuple[str, str | None, str | None]) -> JSONResponse:
    body = {"errors": [{"message": m, "field": f, "help": h} for m, f, h in errors]}
    return JSONResponse(body, status_code=status)


class SendGridStandIn:
    def __init__(self, api_key: str):
        self.api_key = api_key
        self.sent: list[dict] = []  # {"body", "headers", "message_id"} for every accepted request
        self.down = False
        self.invalid_addresses: set[str] = set()  # recipients SendGrid's validator refuses
        self.verified_senders: set[str] | None = None  # None: every sender is verified
        self.app = Starlette(routes=[Route("/v3/mail/send", self.send, methods=["POST"])])

    async def send(self, request: Request):
        if self.down:
            return _errors(503, ("Service Unavailable", None, None))
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _errors(401, ("The provided authorization grant is invalid, expired, or revoked", None, None))
        declared = request.headers.get("content-length") or "0"
        if int(declared) > MAX_PAYLOAD or len(raw := await request.body()) > MAX_PAYLOAD:
            return _errors(413, ("The JSON payload you have included in your request is too large.", None, None))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return _errors(400, ("Bad Request", None, None))
        problems = self._check(body if isinstance(body, dict) else {})
        if problems:
            return _errors(400, *problems)
        sender = body["from"]["email"]
        if self.verified_senders is not None and sender not in self.verified_senders:
            return _errors(403, (NOT_VERIFIED, "from", None))
        message_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
        self.sent.append({"body": body, "headers": dict(request.headers), "message_id": message_id})
        return Response(status_code=202, headers={"X-Message-Id": message_id})

    def _check(self, body: dict) -> list[tuple[str, str | None, str | None]]:
        out = []
        pers = body.get("personalizations")
        if not isinstance(pers, list) or not pers:
            out.append(("The personalizations field is required and must have at least one personalization.",
                        "personalizations", HELP + "personalizations"))  # fmt: skip
            pers = []
        for i, p in enumerate(pers):
            for j, to in enumerate(p.get("to") or []):
                email = to.get("email") if isinstance(to, dict) else None
                if not isinstance(email, str) or not ADDRESS.match(email) or email in self.invalid_addresses:
                    out.append(("Does not contain a valid address.", f"personalizations.{i}.to.{j}.email",
                                HELP + "personalizations.to"))  # fmt: skip
            for k, v in (p.get("custom_args") or {}).items():
                if not isinstance(v, str):
                    out.append((f"Custom args must be strings; {k} is not.", f"personalizations.{i}.custom_args",
                                HELP + "custom_args"))  # fmt: skip
        sender = body.get("from")
        if not isinstance(sender, dict) or not ADDRESS.match(str(sender.get("email") or "")):
            out.append(("The from object must be provided for every email send. It is an object that requires the "
                        "email parameter, but may also contain a name parameter.", "from.email",
                        HELP + "from"))  # fmt: skip
        if not body.get("subject") and not body.get("template_id"):
            out.append(("The subject is required. You can get around this requirement if you use a template with a "
                        "subject defined or if every personalization has a subject defined.", "subject",
                        HELP + "subject"))  # fmt: skip
        content = body.get("content")
        if not body.get("template_id") and (not isinstance(content, list) or not content):
            out.append(("Unless a valid template_id is provided, the content parameter is required. There must be at "
                        "least one defined content block.", "content", HELP + "content"))  # fmt: skip
        types = [c.get("type") for c in content or [] if isinstance(c, dict)]
        if "text/html" in types and "text/plain" in types and types.index("text/plain") > types.index("text/html"):
            out.append(("If present, text/plain and text/html may only be provided in order, with text/plain first.",
                        "content", HELP + "content"))  # fmt: skip
        if any(not c.get("value") for c in content or [] if isinstance(c, dict)):
            out.append(("The content value must be a string at least one character in length.", "content.0.value",
                        HELP + "content.value"))  # fmt: skip
        for name, value in (body.get("headers") or {}).items():
            if name.lower() in RESERVED or not isinstance(value, str):
                out.append((f"The header {name} is reserved or not a string.", "headers", HELP + "headers"))
        return out


class EventSigner:
    """Signs Event Webhook batches with a fresh P-256 key, as SendGrid does for a signed webhook."""

    def __init__(self):
        self._key = ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        self.public_key = base64.b64encode(der).decode()  # what SendGrid shows as the verification key

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        ts = timestamp or str(int(time.time()))
        sig = self._key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "Content-Type": "application/json",
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": ts,
        }


def event(sent: dict, kind: str, **fields) -> dict:
    """One Event Webhook event about a message the stand-in accepted: custom args as top-level keys."""
    p = sent["body"]["personalizations"][0]
    return {
        "email": p["to"][0]["email"], "timestamp": int(time.time()), "event": kind,
        "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "sg_message_id": f"{sent['message_id']}.filterdrecv-5645d9c87f-78xgx-1-5F2B{uuid.uuid4().hex[:8]}-2.0",
        "smtp-id": f"<{sent['message_id']}@geopod-ismtpd-4>", **(p.get("custom_args") or {}), **fields,
    }  # fmt: skip
