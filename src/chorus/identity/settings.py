"""The identity sections of the workspace settings: ``default_region`` (how national phone numbers are read),
``identifiers`` (the declared identifier kinds) and ``identifier_limits`` (values of a kind one profile may hold).
Errors name the field."""

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
        raise ValueError(f"settings.default_region: {value!r} is not a known region")
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


MAX_LIMIT = 100_000


def validate_identifier_limits(value: object) -> dict:
    """``{kind: n}``: a profile holds at most n values of the kind (``graph.Graph.over_limit``). ``user_id`` is
    always one (it is unique, and a trusted ``alias`` is the way to rename); a kind may be declared later, so any
    identifier name is taken."""
    if not isinstance(value, dict):
        raise ValueError("settings.identifier_limits must be an object {kind: maximum values on one profile}")
    for name, n in value.items():
        if name == "user_id":
            raise ValueError("settings.identifier_limits.user_id: a profile always has at most one user id")
        if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or len(name) > 64:
            raise ValueError(f"settings.identifier_limits.{name}: not an identifier name")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LIMIT:
            raise ValueError(f"settings.identifier_limits.{name} must be a whole number from 1 to {MAX_LIMIT:,}")
    return value
