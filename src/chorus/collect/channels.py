"""Which channel an event came from.

The rule, in order (first match wins):
1. an explicit ``context.channel`` (lower-cased; letters, digits and ``_`` only);
2. a source bound to a channel (an import ``--source store``, a provider webhook for ``sms``) gives that channel;
3. a mobile context — ``context.app``, ``context.device`` (other than a desktop browser's) or a ``screen`` call,
   or ``context.os.name`` of iOS/Android — is ``app``;
4. a ``page`` call, ``context.page`` or ``context.userAgent`` is ``web``;
5. anything else sent with a server write key is ``server``; otherwise ``unknown``.
"""

from __future__ import annotations

import re

KNOWN_CHANNELS = (
    "web", "app", "email", "sms", "push", "whatsapp", "messenger", "social", "store", "call_center",
    "catalog", "chat", "delivery", "in_app", "marketplace", "ads", "server", "unknown",
)  # fmt: skip
_CHANNEL_RE = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_MOBILE_OS = {"ios", "android", "ipados"}


def valid_channel(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    value = value.strip().lower().replace("-", "_").replace(" ", "_")
    return value if _CHANNEL_RE.match(value) else None


def infer_channel(msg: dict, source_kind: str, source_channel: str | None = None) -> str:
    ctx = msg.get("context") or {}
    explicit = valid_channel(ctx.get("channel"))
    if explicit:
        return explicit
    if source_channel:
        return source_channel
    device = ctx.get("device") if isinstance(ctx.get("device"), dict) else None
    os_name = str((ctx.get("os") or {}).get("name", "")).lower() if isinstance(ctx.get("os"), dict) else ""
    if (
        ctx.get("app")
        or msg.get("type") == "screen"
        or os_name in _MOBILE_OS
        or (device and str(device.get("type", "")).lower() not in ("", "browser", "desktop"))
    ):
        return "app"
    if msg.get("type") == "page" or ctx.get("page") or ctx.get("userAgent"):
        return "web"
    return "server" if source_kind == "server" else "unknown"
