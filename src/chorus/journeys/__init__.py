"""journeys: automations that react to what a person does on any channel, wait, branch and speak (issue 13).

``definition`` parses and validates journeys (JSON, or YAML in files) into immutable nodes; ``interpreter`` is the
one pure interpreter, ``step(definition, state, input, ctx) -> (state, commands)``, and ``enter`` decides entry and
re-entry; ``dispatch.offer`` gives one input to one journey's instances. ``store`` owns the tables, ``runtime``
runs the interpreter on them (the change-feed consumer, timers, resume and stop), ``effects`` carries out the side
effects (``webhooks``: webhook steps, delivered outside the transition), ``schedule`` starts scheduled entries and
broadcasts, ``manage`` publishes and controls journeys.
"""


def register(registry) -> None:
    """What journeys adds (see chorus.registry): a consumer of the change feed, the timer, schedule and sweep tasks,
    the webhook delivery task and its ``journeys`` setting, and the person's instances, timers, held inputs, records
    and webhook requests erased with her; and the segments its journeys and broadcasts use, kept from deletion."""
    from chorus.journeys import effects, runtime, schedule, store, webhooks  # noqa: F401 - effects register themselves
    from chorus.messaging.providers import refuse_others_on_save
    from chorus.profiles import feed
    from chorus.registry import Step, each_pass

    registry.erasure("journeys", store.forget, tables=store.TABLES, export=store.export)
    registry.erasure("journey_webhooks", webhooks.forget, tables=webhooks.TABLES)
    registry.setting("journeys", webhooks.validate_settings)
    # checked again in the change's transaction, where the workspace is known: another's CHORUS_WS_ variable is a 400
    registry.on_setting("journeys", "workspace_variables", refuse_others_on_save(webhooks.validate_settings))
    feed.interest(runtime.CONSUMER, runtime.wants)
    registry.consumer(runtime.CONSUMER, runtime.Consumer())
    registry.task("journey_schedule", each_pass(schedule.tick), step=Step.DECIDE, label="journey schedules")
    registry.task("journey_timers", each_pass(runtime.due), step=Step.DECIDE, label="journey timers")
    registry.task("journey_sweep", each_pass(runtime.sweep), step=Step.DECIDE, label="journey resume and stop")
    registry.task("journey_webhooks", webhooks.WebhookTask, step=Step.DELIVER, label="journey webhooks")
    # a segment is not deleted while a journey or broadcast that can still send uses it
    registry.segment_users("journeys", schedule.segment_uses)
