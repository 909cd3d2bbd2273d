"""A local stand-in for Twilio's Messages API (api.twilio.com/2010-04-01), following its published request and
response format, including its error responses: https://www.twilio.com/docs/messaging/api/message-resource and
https://www.twilio.com/docs/usage/twilios-response. Only what Chorus uses is implemented."""

from __future__ import annotations

import base64
import re
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

E164 = re.compile(r"^\+[1-9]\d{7,14}$")


class TwilioStandIn:
    def __init__(self, account_sid: str, auth_token: str):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.sent: list[dict] = []
        self.opted_out: set[str] = set()
        self.down = False
        self.app = Starlette(routes=[Route("/2010-04-01/Accounts/{sid}/Messages.json", self.create, methods=["POST"])])

    @staticmethod
    def _error(status: int, code: int, message: str) -> JSONResponse:
        return JSONResponse(
            {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
             "status": status},
            status_code=status,
        )  # fmt: skip

    async def create(self, request: Request):
        if self.down:
            return self._error(503, 20500, "Service unavailable")
        auth = request.headers.get("authorization", "")
        try:
            user, _, password = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        except ValueError:
            user = password = ""
        if (user, password) != (self.account_sid, self.auth_token) or request.path_params["sid"] != user:
            return self._error(401, 20003, "Authenticate")
        form = dict(await request.form())
        to = form.get("To", "")
        if not E164.match(to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(400, 21603, "A 'From' phone number is required.")
        if not form.get("Body"):
            return self._error(400, 21602, "Message body is required.")
        if to in self.opted_out:
            return self._error(400, 21610, "Attempt to send to unsubscribed recipient")
        sid = "SM" + uuid.uuid4().hex
        self.sent.append({**form, "sid": sid})
        return JSONResponse(
            {"sid": sid, "account_sid": self.account_sid, "to": to, "from": form.get("From"), "body": form["Body"],
             "status": "queued", "num_segments": "1", "direction": "outbound-api", "error_code": None,
             "error_message": None, "api_version": "2010-04-01", "price": None,
             "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
             "messaging_service_sid": form.get("MessagingServiceSid")},
            status_code=201,
        )  # fmt: skip
