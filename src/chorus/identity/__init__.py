"""unify: identifiers, the identity graph and deterministic merges."""


def register(registry) -> None:
    """What identity adds (see chorus.registry): resolution, the first task of every worker pass; the identity
    settings; and the person's graph, erased after everyone who may still read it."""
    from chorus.identity import erasure, settings
    from chorus.identity.task import Resolution
    from chorus.registry import Phase, Step

    registry.task("resolve", Resolution, step=Step.UNIFY, label="identity resolution batch")
    registry.setting("default_region", settings.validate_default_region)
    registry.setting("identifiers", settings.validate_identifiers)
    registry.setting("identifier_limits", settings.validate_identifier_limits)
    registry.erasure("identity", erasure.forget, tables=erasure.TABLES, phase=Phase.IDENTITY)
