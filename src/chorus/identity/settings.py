"""The identity sections of the workspace settings: ``default_region`` (how national phone numbers are read) and
``identifiers`` (the declared identifier kinds). Errors name the field."""

from __future__ import annotations

BUILT_IN = ("user_id", "anonymous_id", "email", "phone")


def validate_default_region(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 2:
        raise ValueError("settings.default_region must be a two-letter region code such as 'US'")
    value = value.upper()
    # phonenumbers knows every region it supports through an example number
    import phonenumbers

    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"settings.default_region {value!r} is not a known region")
    return value


def validate_identifiers(value: object) -> dict:
    if not isinstance(value, dict):
        raise ValueError("settings.identifiers must be an object {name: {known, unique, channel}}")
    for name, decl in value.items():
        if name in BUILT_IN or not name.replace("_", "").isalnum():
            raise ValueError(f"settings.identifiers.{name}: not an allowed identifier name")
        if not isinstance(decl, dict) or set(decl) - {"known", "unique", "channel"}:
            raise ValueError(f"settings.identifiers.{name}: expected keys known, unique, channel")
    return value
