"""Messaging: message content and templates, channel choice, outbox and channel adapters."""


def register(registry) -> None:
    """What messaging adds (see chorus.registry): delivery, the last task of a worker pass; the ``messaging``
    setting; and the person's messages, push subscriptions and dead addresses, erased with them."""
    from chorus.messaging import erasure, settings
    from chorus.messaging.providers import refuse_others_on_save
    from chorus.registry import Phase, Step

    registry.task("deliver", _deliverer, step=Step.DELIVER, label="message delivery")
    registry.setting("messaging", settings.validate)
    # checked again in the change's transaction, where the workspace is known: another's CHORUS_WS_ variable is a 400
    registry.on_setting("messaging", "workspace_variables", refuse_others_on_save(settings.validate))
    registry.erasure("messaging", erasure.forget, tables=erasure.TABLES, export=erasure.export)
    registry.erasure("messaging_hold", erasure.hold, tables={}, phase=Phase.HOLD)


def _deliverer(engine, options):
    """The delivery task of a worker, made when the worker starts: it warns once where messages are written instead
    of sent (sinks in workspace settings; with ``--dev``, the sinks standing in for channels without a provider)."""
    from chorus.messaging.delivery import Deliverer, ProviderSet, warn_sinks
    from chorus.messaging.providers.sink import dev_confs

    fallback = dev_confs() if options is not None and options.dev else None
    warn_sinks(engine, fallback)
    return Deliverer(engine, providers=ProviderSet(fallback))
