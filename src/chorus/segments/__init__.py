"""segments: who is in a group right now, kept true the moment anything changes (issue 12).

``rules`` parses and validates rules (JSON, or YAML in files) into immutable nodes; ``evaluate`` answers "is this
person in the segment at ``now``, and when can time alone change that" over plain data (``person``); ``windows``
and ``times`` are the small exact functions both rest on; ``store`` owns the segments' tables (definitions,
members, history, timers, static lists).
"""


def register(registry) -> None:
    """What segments adds (see chorus.registry): the person's memberships, history, timers and list entries are
    erased with her."""
    from chorus.registry import Step, each_pass
    from chorus.segments import engine, store

    registry.erasure("segments", store.forget, tables=store.TABLES, export=store.export)
    registry.on_setting("messaging", "segments", store.messaging_changed)
    registry.on_setting("identifiers", "segments", store.identifiers_changed)
    registry.consumer(engine.CONSUMER, engine.consumer())
    registry.task("segment_timers", each_pass(engine.due), step=Step.DECIDE, label="segment timers")
    registry.task("segment_batch", engine.BatchTask, step=Step.DECIDE, label="segment batch computation")
