"""The ``messaging`` workspace setting: topics, the channel fallback order, and providers per channel."""

from __future__ import annotations

from chorus.messaging.policy import MESSAGE_CHANNELS
from chorus.messaging.providers import ConfigError, build


def validate(value: object) -> dict:
    """Raise ValueError naming the setting that is wrong; secrets are referenced by environment variable name."""
    if not isinstance(value, dict):
        raise ValueError("settings.messaging must be an object {topics, fallback_order, providers}")
    unknown = set(value) - {"topics", "fallback_order", "providers"}
    if unknown:
        raise ValueError(f"settings.messaging.{sorted(unknown)[0]} is not a messaging setting")
    for name, conf in (value.get("topics") or {}).items():
        if not isinstance(conf, dict) or conf.get("mode") not in ("opt_in", "opt_out") or set(conf) - {"mode", "label"}:
            raise ValueError(f'settings.messaging.topics.{name} must be {{"mode": "opt_in" | "opt_out", "label"}}')
    order = value.get("fallback_order")
    if order is not None and (not isinstance(order, list) or any(c not in MESSAGE_CHANNELS for c in order)):
        raise ValueError(f"settings.messaging.fallback_order must list channels among {', '.join(MESSAGE_CHANNELS)}")
    providers = value.get("providers") or {}
    if not isinstance(providers, dict):
        raise ValueError("settings.messaging.providers must be an object {channel: [provider, ...]}")
    for channel, confs in providers.items():
        where = f"settings.messaging.providers.{channel}"
        if channel not in MESSAGE_CHANNELS:
            raise ValueError(f"{where}: {channel} is not a channel")
        if not isinstance(confs, list):
            raise ValueError(f"{where} must be a list (primary first, then fail-over providers)")
        for i, conf in enumerate(confs):
            try:
                prov = build(conf, f"{where}[{i}]", resolve_secrets=False)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if prov.channel != channel:
                raise ValueError(f"{where}[{i}] is a {prov.channel} provider")
    return value
