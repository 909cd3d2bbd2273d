"""Identifiers carried by an event, normalised: plain functions over the message and the workspace settings.

An identifier is the string ``kind:value``. Built-in kinds: ``user_id``, ``anonymous_id``, ``email`` (validated,
lower-cased), ``phone`` (E.164, parsed with the workspace's default region). Workspaces declare more kinds
(loyalty id, device token, Messenger PSID, WhatsApp id, social handle) in their settings; they are read from
``traits.<kind>``, ``context.traits.<kind>`` and ``context.externalIds[] {type, id}``; ``device_token`` also
from ``context.device.token``.
"""

from __future__ import annotations

from collections.abc import Iterable
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
# How many values of a kind one profile may hold (``identifier_limits``; Segment's identity resolution has the
# same per-kind limits). A browser mints a new anonymous id per cookie and device, so an honest customer holds a
# handful to a few hundred; without a bound, anyone with the public write key could attach any number to a
# customer's profile by sending her user id, and every later event of hers would load them all.
DEFAULT_LIMITS = {"anonymous_id": 1000}


@dataclass(frozen=True)
class IdentityConfig:
    """What a workspace says about identifiers. Built from the workspace settings."""

    default_region: str | None = None
    declared: dict = field(default_factory=lambda: dict(DEFAULT_DECLARED))
    limits: dict = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    @classmethod
    def from_settings(cls, settings: dict) -> IdentityConfig:
        return cls(
            default_region=settings.get("default_region"),
            declared=dict(settings.get("identifiers", DEFAULT_DECLARED)),
            limits=dict(settings.get("identifier_limits", DEFAULT_LIMITS)),
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


MAX_IDENT_LEN = 400  # the identifiers and identity_links columns: ``kind:value`` never exceeds it
OPAQUE_KINDS = ("user_id", "anonymous_id")


def id_text(value: object, kind: str = "user_id") -> str | None:
    """The one normalisation of an id value, used by validation at the door, identity resolution and the
    identifiers of rejected events alike, so that the same value always yields the same identifier.

    Strings and integers (an integral float counts as its integer: ``5.0`` is ``"5"``) become text; empty,
    booleans, objects and lists are no id (None). ``userId``/``anonymousId`` are opaque, as in Segment: kept as
    sent; every other kind (loyalty id, device token, ...) is stripped of surrounding whitespace.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value if kind in OPAQUE_KINDS else value.strip()
    elif isinstance(value, int):
        text = str(value)
    elif isinstance(value, float):
        text = str(int(value)) if value.is_integer() else repr(value)
    else:
        return None
    return text or None


def anchor_order(ident: str, cfg: IdentityConfig) -> tuple[int, str]:
    """The order of identifiers for anchoring: the lowest rank first, then the text (so any set has one first)."""
    return cfg.rank(kind_of(ident)), ident


def anchor_of(idents: Iterable[str], cfg: IdentityConfig) -> str | None:
    """A person's anchor identifier: the first of hers in :func:`anchor_order` (her user id when she has one, else
    her email, ..., else her anonymous id), the one identity resolution anchors an event on. It depends on her
    identifiers alone, never on Chorus' random profile id: a journey split ``by: identifier`` hashes it."""
    return min(idents, key=lambda i: anchor_order(i, cfg), default=None)


def event_anchor(payload: dict, cfg: IdentityConfig, trusted: bool = False) -> str | None:
    """The identifier identity resolution anchors one event on (:func:`extract`'s anchor), None for an event
    without one. A function of the event alone, whatever else is known of its person when it is read: a journey
    split ``by: identifier`` draws by the anchor of the event that entered her, so the same events give the same
    arms however the worker's passes fell (review: her identifiers as stored at processing time included those of
    events resolved after the entry, so a replay could draw her otherwise)."""
    try:
        return extract(payload, cfg, trusted).anchor
    except NoIdentifier:
        return None


def kind_of(ident: str) -> str:
    return ident.split(":", 1)[0]


def value_of(ident: str) -> str:
    return ident.split(":", 1)[1]


# email_validator's own messages ("An email address must have an @-sign.") speak of its parser and quote the
# characters they refuse: say what is wrong with the address instead, by the start of its message (first match).
_EMAIL_PROBLEMS = (
    ("An email address must have an @-sign", "it has no @"),
    ("The email address has the \"small commercial at\"", "it has a small commercial at (\ufe6b) instead of @"),
    ("There must be something before the @-sign", "nothing comes before the @"),
    ("There must be something after the @-sign", "nothing comes after the @"),
    ("The part after the @-sign contains invalid characters",
     "its domain has a character not allowed in a domain name"),
    ("The part after the @-sign is not valid. It should have a period", "its domain has no period (example.com)"),
    ("The part after the @-sign is not valid. It is not within a valid top-level domain",
     "its domain does not end in a valid top-level domain"),
    ("The part after the @-sign is a special-use or reserved name",
     "its domain is a reserved name that takes no email"),
    ("A bracketed IP address after the @-sign", "its domain is an IP address in brackets; give a domain name"),
    ("The part after the @-sign", "its domain is not a valid domain name"),
    ("The address in brackets after the @-sign", "its domain is not a valid domain name"),
    ("The IPv6 address in brackets after the @-sign", "its domain is not a valid domain name"),
    ("An email address cannot have a period and a hyphen next to each other",
     "its domain has a period and a hyphen next to each other"),
    ("An email address cannot have two letters followed by two dashes",
     "its domain has two letters then two hyphens in a part"),
    ("An email address cannot have a hyphen", "its domain starts or ends a part with a hyphen"),
    ("An email address cannot have two periods in a row", "it has two periods in a row"),
    ("An email address cannot start with a period", "it starts with a period"),
    ("An email address cannot end with a period", "it ends with a period"),
    ("An email address cannot have a period immediately before the @-sign", "a period comes just before the @"),
    ("An email address cannot have a period immediately after the @-sign", "a period comes just after the @"),
    ("The email address is too long after the @-sign", "its domain is too long"),
    ("The email address is too long before the @-sign", "the part before the @ is too long"),
    ("The email address is too long", "it is too long"),
    ("The email address contains unsafe characters", "it has an invisible or control character"),
    ("The email address contains invalid characters in quotes",
     "the part before the @ has a character not allowed there"),
    ("The email address contains invalid characters before the @-sign",
     "the part before the @ has a character not allowed there"),
    ("Internationalized characters before the @-sign", "the part before the @ has a character not allowed there"),
    ("Quoting the part before the @-sign", "the part before the @ is quoted; give it without quotes"),
    ("A display name and angle brackets", "it has a name or angle brackets around it; give the address alone"),
    ("An open angle bracket", "it has a name or angle brackets around it; give the address alone"),
    ("There can't be anything after the email address", "something follows the address; give the address alone"),
    ("Extra character(s) found after close quote", "something follows the address; give the address alone"),
)  # fmt: skip


def email_problem(message: str) -> str:
    """Why an address is not valid, in our words, for one of email_validator's messages (never its own text)."""
    why = next((ours for theirs, ours in _EMAIL_PROBLEMS if message.startswith(theirs)), None)
    return f"not a valid email address: {why}" if why else "not a valid email address"


@lru_cache(maxsize=200_000)
def normalise_email(raw: str) -> str:
    """Raises ValueError with the reason, in our words (:func:`email_problem`)."""
    try:
        info = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(email_problem(str(exc))) from None
    return info.normalized.lower()


# phonenumbers' own messages ("(0) Missing or invalid default region.") speak of its parser: say what is wrong
# with the number instead.
_PHONE_PROBLEMS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "its country code is missing or unknown",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "it does not look like a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short after the international prefix",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "it is too short",
    phonenumbers.NumberParseException.TOO_LONG: "it is too long",
}


@lru_cache(maxsize=200_000)
def normalise_phone(raw: str, region: str | None) -> str:
    """E.164. Raises ValueError when the number cannot be parsed or is not a valid number."""
    try:
        num = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException as exc:
        why = _PHONE_PROBLEMS.get(exc.error_type, "it does not look like a phone number")
        national = not raw.strip().startswith("+")
        if exc.error_type == phonenumbers.NumberParseException.INVALID_COUNTRY_CODE and national and not region:
            why += " (write it in international format, +33 6 12 34 56 78, or set the workspace's default region)"
        raise ValueError(f"not a valid phone number: {why}") from None
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
    ctx = msg.get("context") if isinstance(msg.get("context"), dict) else {}
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
        text = id_text(value, kind)  # the one normalisation of id values
        return None if text is None else f"{kind}:{text}"
    return None


def extract(msg: dict, cfg: IdentityConfig, trusted: bool = False) -> Extracted:
    """Identifiers of a normalised message. Invalid emails/phones become warnings, never rejections."""
    found: dict[str, None] = {}
    warnings: list[str] = []

    def add(kind: str, value: object, where: str) -> None:
        text = id_text(value, kind)
        if text is None:
            return
        ident = f"{kind}:{text}"
        if len(ident) > MAX_IDENT_LEN:  # the door limits userId & co.; a declared trait can be any length
            warnings.append(f"{where} ignored as an identifier: longer than {MAX_IDENT_LEN - len(kind) - 1} "
                            "characters")  # fmt: skip
        else:
            found[ident] = None

    add("user_id", msg.get("userId"), "userId")
    add("anonymous_id", msg.get("anonymousId"), "anonymousId")
    for traits in _trait_sources(msg):
        for kind in ("email", "phone"):
            try:
                ident = trait_ident(kind, traits.get(kind), cfg)
            except ValueError as exc:
                warnings.append(f"traits.{kind} ignored as an identifier: {exc}")
                continue
            if ident is not None:
                found[ident] = None
        for kind in cfg.declared:
            add(kind, traits.get(kind), f"traits.{kind}")
    ctx = msg.get("context") if isinstance(msg.get("context"), dict) else {}
    ext = ctx.get("externalIds")
    if isinstance(ext, list):  # its shape is validated at the door (collect.messages); stay total anyway
        for i, item in enumerate(ext):
            if isinstance(item, dict) and isinstance(item.get("type"), str) and item["type"] in cfg.declared:
                add(item["type"], item.get("id"), f"context.externalIds[{i}].id")
    device = ctx.get("device")
    if "device_token" in cfg.declared and isinstance(device, dict):
        add("device_token", device.get("token"), "context.device.token")
    if not found:
        raise NoIdentifier(
            "no usable identifier: " + ("; ".join(warnings) or "userId, anonymousId, email, phone all missing")
        )
    idents = sorted(found, key=lambda i: anchor_order(i, cfg))
    others = idents[1:]
    previous = id_text(msg.get("previousId")) if msg.get("type") == "alias" else None
    if previous is not None and len(previous) <= MAX_IDENT_LEN - len("anonymous_id:"):
        # previousId is an anonymous id or a former user id; which one cannot be known from the message, and
        # looking it up would make the result depend on arrival order. It links as an anonymous id, and from a
        # trusted source also as a former user id (a rename).
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
    def names(kind: object, value: object) -> bool:  # the identifier as extract() makes it (id_text), in idents
        return isinstance(kind, str) and f"{kind}:{id_text(value, kind)}" in idents

    ext = ctx.get("externalIds")
    if isinstance(ext, list):
        ctx["externalIds"] = [
            item for item in ext if not (isinstance(item, dict) and names(item.get("type"), item.get("id")))
        ]
    device = ctx.get("device")
    if isinstance(device, dict) and names("device_token", device.get("token")):
        ctx["device"] = {k: v for k, v in device.items() if k != "token"}
    if msg.get("context") is not None:
        out["context"] = ctx
    return out
