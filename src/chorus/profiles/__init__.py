"""Profiles: traits, consent, channel activity, timeline, privacy (export and erasure)."""


def register(registry) -> None:
    """What profiles adds (see chorus.registry): the trait policies setting, and the profile row erased last."""
    from chorus.profiles import privacy
    from chorus.registry import Phase

    registry.setting("trait_policies", _trait_policies)
    registry.erasure("profiles", privacy.forget_profile, tables=privacy.PROFILE_TABLES, phase=Phase.PROFILE)


def _trait_policies(value: object) -> dict:
    from chorus.profiles.state import POLICIES

    if not isinstance(value, dict) or any(p not in POLICIES for p in value.values()):
        raise ValueError(f"settings.trait_policies: each policy must be one of {', '.join(POLICIES)}")
    return value
