"""A local push service (what browsers' vendors run, e.g. FCM's web push endpoint or Mozilla's autopush) as
RFC 8030 / 8291 / 8292 describe it: it checks the VAPID JWT, and this test double also holds the subscriber's
private key, so it decrypts what it receives, as the browser would."""

from __future__ import annotations

import base64
import json
import os
import time
from urllib.parse import urlsplit

import http_ece
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Browser:
    """One browser's push subscription: its key pair and auth secret."""

    def __init__(self, endpoint: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.auth = os.urandom(16)
        pub = self.key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.subscription = {"endpoint": endpoint, "keys": {"p256dh": b64u(pub), "auth": b64u(self.auth)}}


class PushService:
    def __init__(self):
        self.browsers: dict[str, Browser] = {}
        self.received: list[dict] = []
        self.gone: set[str] = set()
        self.app = Starlette(routes=[Route("/push/{sid}", self.push, methods=["POST"])])

    def browser(self, base_url: str, sid: str) -> Browser:
        self.browsers[sid] = Browser(f"{base_url}/push/{sid}")
        return self.browsers[sid]

    async def push(self, request: Request):
        sid = request.path_params["sid"]
        if sid in self.gone or sid not in self.browsers:
            return Response("subscription expired", status_code=410)
        problem = self._vapid(request)
        if problem:
            return Response(problem, status_code=403)
        if request.headers.get("content-encoding") != "aes128gcm" or "ttl" not in request.headers:
            return Response("aes128gcm body and TTL header required", status_code=400)
        b = self.browsers[sid]
        plain = http_ece.decrypt(await request.body(), private_key=b.key, auth_secret=b.auth, version="aes128gcm")
        self.received.append({"sid": sid, "payload": json.loads(plain), "headers": dict(request.headers)})
        return Response(status_code=201, headers={"Location": f"/m/{len(self.received)}"})

    @staticmethod
    def _vapid(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("vapid "):
            return "VAPID authorization required"
        fields = dict(part.strip().split("=", 1) for part in auth[6:].split(","))
        token, k = fields.get("t", ""), fields.get("k", "")
        try:
            head, body, sig = token.split(".")
            pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64u(k))
            raw = unb64u(sig)
            der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
            pub.verify(der, f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
            claims = json.loads(unb64u(body))
        except (ValueError, InvalidSignature) as exc:
            return f"bad VAPID token: {exc!r}"
        url = urlsplit(str(request.url))
        if claims.get("aud") != f"{url.scheme}://{url.netloc}":
            return "aud must be the push service origin"
        if not claims.get("exp") or claims["exp"] < time.time() or claims["exp"] > time.time() + 24 * 3600:
            return "exp must be within 24 hours"
        if not str(claims.get("sub", "")).startswith(("mailto:", "https:")):
            return "sub must be a contact"
        request.state.vapid_key = k
        return None
