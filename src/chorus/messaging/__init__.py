"""Messaging: message content and templates, channel choice, outbox and channel adapters."""


def register(registry) -> None:
    """What messaging adds (see chorus.registry): delivery, the last task of a worker pass; the ``messaging``
    setting; and the person's messages, push subscriptions and dead addresses, erased with them."""
    from chorus.messaging import erasure, settings
    from chorus.messaging.delivery import Deliverer
    from chorus.registry import Step

    registry.task("deliver", lambda engine, options: Deliverer(engine), step=Step.DELIVER, label="message delivery")
    registry.setting("messaging", settings.validate)
    registry.erasure("messaging", erasure.forget, tables=erasure.TABLES, export=erasure.export)
