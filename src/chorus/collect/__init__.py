"""collect: the Segment-compatible tracking API, channel inference and offline import."""


def register(registry) -> None:
    """What collect adds (see chorus.registry): the person's events, rejected events and quotes in import reports
    are erased with them."""
    from chorus.collect import erasure

    registry.erasure("collect", erasure.forget, tables=erasure.TABLES, export=erasure.export)
