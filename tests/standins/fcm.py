"""Local stand-ins for Google's OAuth 2.0 token endpoint (service-account JWT bearer grant, RFC 7523) and the
FCM HTTP v1 send endpoint, following their published request and response formats, errors included
(https://firebase.google.com/docs/reference/fcm/rest/v1/projects.messages/send, .../ErrorCode)."""

from __future__ import annotations

import base64
import json
import time
import uuid

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FCMStandIn:
    def __init__(self, project_id: str = "shop-app"):
        self.project_id = project_id
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.tokens_issued: list[str] = []
        self.sent: list[dict] = []
        self.unregistered: set[str] = set()
        self.down = False
        self.app = Starlette(routes=[
            Route("/token", self.token, methods=["POST"]),
            Route("/v1/projects/{pid}/messages:send", self.send, methods=["POST"]),
        ])  # fmt: skip

    def service_account(self, base_url: str) -> dict:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {"type": "service_account", "project_id": self.project_id, "private_key_id": "k1", "private_key": pem,
                "client_email": f"chorus@{self.project_id}.iam.gserviceaccount.com", "client_id": "1",
                "token_uri": f"{base_url}/token"}  # fmt: skip

    async def token(self, request: Request):
        form = dict(await request.form())
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        try:
            head, body, sig = form["assertion"].split(".")
            self.key.public_key().verify(_unb64u(sig), f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
            claims = json.loads(_unb64u(body))
        except (KeyError, ValueError, InvalidSignature):
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        ok = (
            # the audience is Google's token endpoint, whatever URL the assertion is posted to
            claims.get("aud") in ("https://oauth2.googleapis.com/token", str(request.url))
            and "firebase.messaging" in claims.get("scope", "")
            and claims.get("iss", "").endswith(".iam.gserviceaccount.com")
            and claims.get("exp", 0) > time.time()
        )
        if not ok:
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT claims."}, 400)
        tok = "ya29." + uuid.uuid4().hex
        self.tokens_issued.append(tok)
        return JSONResponse({"access_token": tok, "expires_in": 3599, "token_type": "Bearer"})

    @staticmethod
    def _error(status: int, grpc: str, message: str, code: str | None = None):
        details = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}] if code else []
        return JSONResponse({"error": {"code": status, "message": message, "status": grpc, "details": details}},
                            status_code=status)  # fmt: skip

    async def send(self, request: Request):
        if request.headers.get("authorization", "").removeprefix("Bearer ") not in self.tokens_issued:
            return self._error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.path_params["pid"] != self.project_id:
            return self._error(403, "PERMISSION_DENIED", "Permission denied.", "SENDER_ID_MISMATCH")
        if self.down:
            return self._error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE")
        msg = (await request.json()).get("message") or {}
        token = msg.get("token")
        if not token:
            return self._error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.", "INVALID_ARGUMENT")
        if token in self.unregistered:
            return self._error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
        self.sent.append(msg)
        return JSONResponse(
            {"name": f"projects/{self.project_id}/messages/0:{int(time.time() * 1000)}%{uuid.uuid4().hex[:8]}"}
        )
