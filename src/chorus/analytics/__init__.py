"""Measurement: the event lake and the analytics that read it."""


def register(registry) -> None:
    """What analytics adds (see chorus.registry): the ``attribution`` setting. (Computed traits are the profiles
    package's; the lake removes erased people itself, from the erasure records.)"""
    registry.setting("attribution", _attribution)


def _attribution(value: object) -> object:
    """What counts as a touchpoint and a conversion (null: back to the defaults); errors name the field."""
    from chorus.analytics.touchpoints import parse_config
    from chorus.errors import ChorusError

    try:
        if value is not None:
            parse_config(value)
    except ChorusError as exc:
        raise ValueError(f"settings.attribution.{exc.field}: {exc.message}") from None
    return value
