"""Identifiers carried by an event, normalised: plain functions over the message and the workspace settings.

An identifier is the string ``kind:value``. Built-in kinds: ``user_id``, ``anonymous_id``, ``email`` (validated,
lower-cased), ``phone`` (E.164, parsed with the workspace's default region). Workspaces declare more kinds
(loyalty id, device token, Messenger PSID, WhatsApp id, social handle) in their settings; they are read from
``traits.<kind>``, ``context.traits.<kind>`` and ``context.externalIds[] {type, id}``; ``device_token`` also
from ``context.device.token``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import phonenumbers
from email_validator import EmailNotValidError, validate_email

DEFAULT_DECLARED = {
    "loyalty_id": {"known": True, "unique": True},
    "device_token": {"known": False, "unique": False, "channel": "push"},
    "messenger_psid": {"known": True, "unique": False, "channel": "messenger"},
    "whatsapp_id": {"known": True, "unique": False, "channel": "whatsapp"},
    "social_handle": {"known": True, "unique": False, "channel": "social"},
}
BUILTIN_KINDS = ("user_id", "email", "phone", "anonymous_id")


@dataclass(frozen=True)
class IdentityConfig:
    """What a workspace says about identifiers. Built from the workspace settings."""

    default_region: str | None = None
    declared: dict = field(default_factory=lambda: dict(DEFAULT_DECLARED))

    @classmethod
    def from_settings(cls, settings: dict) -> IdentityConfig:
        return cls(
            default_region=settings.get("default_region"),
            declared=dict(settings.get("identifiers", DEFAULT_DECLARED)),
        )

    @property
    def unique_kinds(self) -> frozenset[str]:
        return frozenset(["user_id", *(k for k, v in self.declared.items() if v.get("unique"))])

    @property
    def anonymous_kinds(self) -> frozenset[str]:
        return frozenset(["anonymous_id", *(k for k, v in self.declared.items() if not v.get("known", True))])

    def rank(self, kind: str) -> int:
        """Lower ranks anchor an event: the event belongs to the profile of its lowest-ranked identifier."""
        if kind == "user_id":
            return 0
        decl = self.declared.get(kind)
        if decl is not None:
            if decl.get("unique"):
                return 1
            return 4 if decl.get("known", True) else 5
        return {"email": 2, "phone": 3, "anonymous_id": 6}.get(kind, 7)

    def address_channels(self, kind: str) -> tuple[str, ...]:
        if kind == "email":
            return ("email",)
        if kind == "phone":
            return ("sms", "whatsapp")
        ch = (self.declared.get(kind) or {}).get("channel")
        return (ch,) if ch else ()


def kind_of(ident: str) -> str:
    return ident.split(":", 1)[0]


def value_of(ident: str) -> str:
    return ident.split(":", 1)[1]


@lru_cache(maxsize=200_000)
def normalise_email(raw: str) -> str:
    """Raises ValueError with the validator's reason."""
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc)) from None
    return info.normalized.lower()


@lru_cache(maxsize=200_000)
def normalise_phone(raw: str, region: str | None) -> str:
    """E.164. Raises ValueError when the number cannot be parsed or is not a valid number."""
    try:
        num = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        raise ValueError(f"not a phone number: {exc}") from None
    if not phonenumbers.is_valid_number(num):
        raise ValueError("not a valid phone number" + ("" if region else " (no default region is set)"))
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


class NoIdentifier(ValueError):
    """An event with nothing that identifies a person (only possible for imports keyed by email or phone)."""


@dataclass(slots=True)
class Extracted:
    anchor: str
    others: list[str]
    warnings: list[str]


def _trait_sources(msg: dict) -> list[dict]:
    out = []
    ctx = msg.get("context") or {}
    if isinstance(ctx.get("traits"), dict):
        out.append(ctx["traits"])
    if msg.get("type") == "identify" and isinstance(msg.get("traits"), dict):
        out.append(msg["traits"])
    return out


def trait_ident(kind: str, value: object, cfg: IdentityConfig) -> str | None:
    """The identifier a trait value names (``traits.email`` -> ``email:…``), None when the key names none.

    Raises ValueError (the reason) for an email or phone that does not validate."""
    if kind == "email":
        if isinstance(value, str) and value.strip():
            return f"email:{normalise_email(value)}"
    elif kind == "phone":
        if isinstance(value, str | int) and str(value).strip():
            return f"phone:{normalise_phone(str(value), cfg.default_region)}"
    elif kind in cfg.declared:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return f"{kind}:{str(value).strip()}"
    return None


def extract(msg: dict, cfg: IdentityConfig, trusted: bool = False) -> Extracted:
    """Identifiers of a normalised message. Invalid emails/phones become warnings, never rejections."""
    found: dict[str, None] = {}
    warnings: list[str] = []
    if msg.get("userId") not in (None, ""):
        found[f"user_id:{msg['userId']}"] = None
    if msg.get("anonymousId") not in (None, ""):
        found[f"anonymous_id:{msg['anonymousId']}"] = None
    for traits in _trait_sources(msg):
        for kind in ("email", "phone", *cfg.declared):
            try:
                ident = trait_ident(kind, traits.get(kind), cfg)
            except ValueError as exc:
                warnings.append(f"traits.{kind} ignored as an identifier: {exc}")
                continue
            if ident is not None:
                found[ident] = None
    ctx = msg.get("context") or {}
    ext = ctx.get("externalIds")
    if isinstance(ext, list):
        for item in ext:
            if isinstance(item, dict) and item.get("type") in cfg.declared and item.get("id") not in (None, ""):
                found[f"{item['type']}:{str(item['id']).strip()}"] = None
    device = ctx.get("device")
    if "device_token" in cfg.declared and isinstance(device, dict) and device.get("token"):
        found[f"device_token:{device['token']}"] = None
    if not found:
        raise NoIdentifier(
            "no usable identifier: " + ("; ".join(warnings) or "userId, anonymousId, email, phone all missing")
        )
    idents = sorted(found, key=lambda i: (cfg.rank(kind_of(i)), i))
    others = idents[1:]
    if msg.get("type") == "alias" and msg.get("previousId") not in (None, ""):
        # previousId is an anonymous id or a former user id; which one cannot be known from the message, and
        # looking it up would make the result depend on arrival order. It links as an anonymous id, and from a
        # trusted source also as a former user id (a rename).
        previous = str(msg["previousId"])
        for ident in (f"anonymous_id:{previous}", *((f"user_id:{previous}",) if trusted else ())):
            if ident not in found:
                others.append(ident)
    return Extracted(anchor=idents[0], others=others, warnings=warnings)


def without_identifiers(msg: dict, cfg: IdentityConfig, idents: set[str] | frozenset[str]) -> dict:
    """A copy of ``msg`` without the trait values, external ids and device token that name one of ``idents``.

    The resolver folds an event into its profile through this when some of the event's identifiers belong to
    another profile (a refused merge), so that a claimant never keeps someone else's email as a trait; erasure
    uses it to take the erased person's identifiers out of the events of the profiles that claimed them.
    ``userId`` and ``anonymousId`` stay: they are the event's own anchor."""
    if not idents:
        return msg
    out = dict(msg)
    ctx = dict(msg.get("context") or {})
    for holder in (out, ctx):
        traits = holder.get("traits")
        if not isinstance(traits, dict):
            continue
        kept = {}
        for key, value in traits.items():
            try:
                ident = trait_ident(key, value, cfg)
            except ValueError:
                ident = None
            if ident is None or ident not in idents:
                kept[key] = value
        if len(kept) != len(traits):
            holder["traits"] = kept
    ext = ctx.get("externalIds")
    if isinstance(ext, list):
        ctx["externalIds"] = [
            item for item in ext
            if not (isinstance(item, dict) and f"{item.get('type')}:{str(item.get('id')).strip()}" in idents)
        ]  # fmt: skip
    device = ctx.get("device")
    if isinstance(device, dict) and device.get("token") and f"device_token:{device['token']}" in idents:
        ctx["device"] = {k: v for k, v in device.items() if k != "token"}
    if msg.get("context") is not None:
        out["context"] = ctx
    return out
