"""`chorus channels test`: a test message for one channel, addressed as that channel's providers expect."""

from __future__ import annotations

import orjson

from chorus.identity.identifiers import normalise_email, normalise_phone


class ProbeError(ValueError):
    """The address given for a test message is not one the channel can use."""


def probe_message(channel: str, to: str | None, region: str | None) -> tuple[str, dict]:
    """(address, rendered content) of a short transactional test message on ``channel``."""
    text = "A test message from Chorus."
    if channel == "in_app":
        raise ProbeError("the in-app inbox has no provider to test: send a message to a profile instead")
    if channel == "webhook":
        return to or "test", {"body": {"test": True, "text": text}}
    if not to:
        raise ProbeError(f"--to is required for {channel}")
    try:
        if channel == "email":
            return normalise_email(to), {"subject": "Chorus test message", "text": text, "html": f"<p>{text}</p>"}
        if channel in ("sms", "whatsapp"):
            return normalise_phone(to, region), {"text": text, "segments": 1}
    except ValueError as exc:
        raise ProbeError(f"--to: {exc}") from None
    if channel == "messenger":
        if not to.isdigit():
            raise ProbeError("--to: a Messenger page-scoped id (PSID) is a number")
        return to, {"text": text}
    if channel == "push":
        if to.lstrip().startswith("{"):  # a browser's PushSubscription as JSON: web push
            try:
                sub = orjson.loads(to)
                endpoint, keys = sub["endpoint"], {"p256dh": sub["keys"]["p256dh"], "auth": sub["keys"]["auth"]}
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ProbeError("--to: a web push subscription needs endpoint and keys.p256dh/keys.auth") from None
            return endpoint, {"title": "Chorus", "body": text, "subscription": {"keys": keys}}
        return to, {"title": "Chorus", "body": text}  # an app's device token: FCM
    raise ProbeError(f"unknown channel {channel!r}")
