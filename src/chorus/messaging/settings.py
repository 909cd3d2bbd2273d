"""The ``messaging`` workspace setting: topics, the channel fallback order, and providers per channel."""

from __future__ import annotations

import re

from chorus.messaging.policy import MESSAGE_CHANNELS, TOPIC_NAME, TOPIC_RULE
from chorus.messaging.providers import PROVIDER_TYPES, ConfigError, build, is_sink
from chorus.timeutil import known_zone

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")  # what XML 1.0 cannot hold (and DEL)


def validate(value: object, *, workspace: str | None = None) -> dict:
    """Raise ValueError naming the setting that is wrong; secrets are referenced by environment variable name.
    ``workspace`` (its name, where known) refuses another workspace's ``CHORUS_WS_`` variable (decision 0051)."""
    if not isinstance(value, dict):
        raise ValueError("settings.messaging must be an object {topics, fallback_order, providers}")
    unknown = set(value) - {
        "topics", "fallback_order", "providers", "caps", "quiet_hours", "pacing_action", "timezone", "sms_help",
        "inbox_verification",
    }  # fmt: skip
    if unknown:
        raise ValueError(f"settings.messaging.{sorted(unknown)[0]} is not a messaging setting")
    topics = value.get("topics") or {}
    if not isinstance(topics, dict):
        raise ValueError('settings.messaging.topics must be an object {topic: {"mode": "opt_in" | "opt_out"}}')
    for name, conf in topics.items():
        if not TOPIC_NAME.fullmatch(name):
            raise ValueError(f"settings.messaging.topics: a topic's name must be {TOPIC_RULE} ({name[:70]!r})")
        if not isinstance(conf, dict) or conf.get("mode") not in ("opt_in", "opt_out") or set(conf) - {"mode", "label"}:
            raise ValueError(f'settings.messaging.topics.{name} must be {{"mode": "opt_in" | "opt_out", "label"}}')
        label = conf.get("label")
        if label is not None and (not isinstance(label, str) or not 0 < len(label) <= 200):
            # shown on the preference page (a number there made the page a 500 for everyone: an outside probe)
            raise ValueError(f"settings.messaging.topics.{name}.label must be a text of 1 to 200 characters")
    order = value.get("fallback_order")
    if order is not None and (not isinstance(order, list) or any(c not in MESSAGE_CHANNELS for c in order)):
        raise ValueError(f"settings.messaging.fallback_order must list channels among {', '.join(MESSAGE_CHANNELS)}")
    _check_pacing(value)
    if not isinstance(value.get("inbox_verification", False), bool):
        raise ValueError("settings.messaging.inbox_verification must be true or false")
    if value.get("sms_help") is not None and (not isinstance(value["sms_help"], str) or len(value["sms_help"]) > 320):
        raise ValueError("settings.messaging.sms_help must be a text of at most 320 characters")
    if isinstance(value.get("sms_help"), str) and _CONTROL.search(value["sms_help"]):
        # it is answered as TwiML, an XML document: a control character there makes Twilio refuse the answer, and
        # the person who texted HELP gets nothing (an outside probe)
        raise ValueError("settings.messaging.sms_help must not hold control characters (new lines and tabs may)")
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
            if isinstance(conf, dict) and not isinstance(conf.get("type"), str):  # a list is no dictionary key
                raise ValueError(f"{where}[{i}].type must be a provider type ({', '.join(PROVIDER_TYPES)})")
            try:
                prov = build(conf, f"{where}[{i}]", resolve_secrets=False, channel=channel, workspace=workspace)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
            if prov.channel != channel:
                raise ValueError(f"{where}[{i}] is a {prov.channel} provider")
            # a sink marks messages sent without sending them: as the fail-over of a real provider it would hide
            # an outage, and before one it would take every message
            if is_sink(prov) and len(confs) > 1:
                raise ValueError(f"{where}[{i}] is a sink ({conf['type']}): it must be the channel's only provider")
    return value


_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _check_pacing(value: dict) -> None:
    caps = value.get("caps") or {}
    if not isinstance(caps, dict):
        raise ValueError("settings.messaging.caps must be an object {channel or 'total': {'day': n, 'week': n}}")
    for scope, limits in caps.items():
        where = f"settings.messaging.caps.{scope}"
        if scope != "total" and scope not in MESSAGE_CHANNELS:
            raise ValueError(f"{where}: caps are per channel or 'total'")
        if not isinstance(limits, dict) or not limits or set(limits) - {"day", "week"}:
            raise ValueError(f"{where} must be {{'day': n, 'week': n}}")
        for window, n in limits.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}.{window} must be a whole number of messages, at least 1")
    quiet = value.get("quiet_hours")
    if quiet is not None:
        where = "settings.messaging.quiet_hours"
        if not isinstance(quiet, dict) or set(quiet) - {"start", "end", "channels"}:
            raise ValueError(f"{where} must be {{'start': 'HH:MM', 'end': 'HH:MM', 'channels': [...]}}")
        for key in ("start", "end"):
            if not isinstance(quiet.get(key), str) or not _HHMM.match(quiet[key]):
                raise ValueError(f"{where}.{key} must be a local time HH:MM")
        chans = quiet.get("channels", list(MESSAGE_CHANNELS))
        if not isinstance(chans, list) or any(c not in MESSAGE_CHANNELS for c in chans):
            raise ValueError(f"{where}.channels must list channels among {', '.join(MESSAGE_CHANNELS)}")
    if value.get("pacing_action", "defer") not in ("defer", "drop"):
        raise ValueError("settings.messaging.pacing_action must be defer or drop")
    tz = value.get("timezone")
    if tz is not None and not isinstance(tz, str):
        raise ValueError("settings.messaging.timezone must be the name of an IANA time zone, such as Europe/Paris")
    if tz is not None and known_zone(tz) is None:  # the rule every local time follows (timeutil.zone)
        raise ValueError(f"settings.messaging.timezone {tz[:64]!r} is not an IANA time zone") from None
