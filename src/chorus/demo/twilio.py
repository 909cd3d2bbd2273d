"""A local stand-in for Twilio's Messages API, so that the demo's SMS go through Chorus' real Twilio provider and
come back as Twilio's real callbacks (status reports, inbound STOP), signed as Twilio signs them.

Written from Twilio's public documentation (https://www.twilio.com/docs/messaging/api/message-resource,
https://www.twilio.com/docs/usage/security#validating-requests); only what the demo needs: creating a message
(Basic auth with the account SID and auth token, ``To``/``From``/``Body``/``StatusCallback`` form fields, a
``201`` with the message's ``sid``), and, for the demo's customers, the requests Twilio makes to Chorus.
"""

from __future__ import annotations

import base64
import re
import secrets
import threading
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from chorus.messaging.providers.twilio import signature

E164 = re.compile(r"^\+[1-9]\d{7,14}$")


@dataclass(frozen=True)
class Text:
    sid: str
    to: str
    sender: str
    body: str
    status_callback: str | None


class TwilioStandIn:
    def __init__(self):
        self.account_sid = "AC" + secrets.token_hex(16)
        self.auth_token = secrets.token_hex(16)
        self.number = "+3197010000001"  # the brand's sending number (a Dutch machine-to-machine range)
        self.lock = threading.Lock()
        self.texts: list[Text] = []
        self.app = Starlette(routes=[Route("/2010-04-01/Accounts/{sid}/Messages.json", self.create, methods=["POST"])])

    def provider(self, base_url: str, token_env: str) -> dict:
        """The workspace's provider setting pointing at this stand-in."""
        return {"type": "twilio", "name": "twilio", "account_sid": self.account_sid, "auth_token_env": token_env,
                "from": self.number, "base_url": base_url}  # fmt: skip

    @staticmethod
    def _error(status: int, code: int, message: str) -> JSONResponse:
        info = f"https://www.twilio.com/docs/errors/{code}"
        return JSONResponse({"code": code, "message": message, "status": status, "more_info": info}, status_code=status)

    async def create(self, request: Request):
        auth = request.headers.get("authorization", "")
        try:
            user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            user = password = ""
        if (user, password) != (self.account_sid, self.auth_token) or request.path_params["sid"] != user:
            return self._error(401, 20003, "Authenticate")
        form = {k: str(v) for k, v in (await request.form()).items()}
        to = form.get("To", "")
        if not E164.match(to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not form.get("Body"):
            return self._error(400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        with self.lock:
            self.texts.append(Text(sid, to, form.get("From", ""), form["Body"], form.get("StatusCallback")))
        return JSONResponse({"sid": sid, "account_sid": self.account_sid, "to": to, "from": form.get("From"),
                             "body": form["Body"], "status": "queued", "num_segments": "1",
                             "direction": "outbound-api", "api_version": "2010-04-01"}, status_code=201)  # fmt: skip

    def take(self) -> list[Text]:
        with self.lock:
            got, self.texts = self.texts, []
        return got

    def signed(self, url: str, form: dict[str, str]) -> dict[str, str]:
        """The X-Twilio-Signature header Twilio puts on its request to ``url`` with ``form``."""
        return {"X-Twilio-Signature": signature(self.auth_token, url, form)}

    def status(self, text: Text, status: str) -> dict[str, str]:
        return {"MessageSid": text.sid, "SmsSid": text.sid, "AccountSid": self.account_sid, "From": text.sender,
                "To": text.to, "MessageStatus": status, "SmsStatus": status, "ApiVersion": "2010-04-01"}  # fmt: skip

    def inbound(self, phone: str, body: str) -> dict[str, str]:
        sid = "SM" + secrets.token_hex(16)
        return {"MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid, "From": phone, "To": self.number,
                "Body": body, "NumMedia": "0", "ApiVersion": "2010-04-01"}  # fmt: skip
