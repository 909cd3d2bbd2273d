"""What a brand's server does for its signed-in users: userHash = hex(HMAC-SHA256(identity secret, userId))."""

from __future__ import annotations

import hashlib
import hmac


def user_hash(http, api_headers: dict, user_id: str) -> str:
    secret = http.get("/api/workspace/identity-secret", headers=api_headers).json()["identity_secret"]
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()
