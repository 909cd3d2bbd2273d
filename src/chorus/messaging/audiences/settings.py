"""The ``audiences`` workspace setting (the ad platform accounts) and audience definitions, validated.

```json
{"audiences": {"providers": [
  {"type": "meta", "name": "meta", "access_token_env": "CHORUS_META_ADS_TOKEN"},
  {"type": "google", "name": "google", "customer_id": "123-456-7890", "developer_token_env": "CHORUS_GADS_DEV_TOKEN",
   "client_id_env": "CHORUS_GADS_CLIENT_ID", "client_secret_env": "CHORUS_GADS_CLIENT_SECRET",
   "refresh_token_env": "CHORUS_GADS_REFRESH_TOKEN"}
]}}
```

It is a setting of its own rather than a key of ``messaging``: a settings PATCH replaces a top-level key whole,
and the ad accounts change on another rhythm than the message channels.
"""

from __future__ import annotations

import re

from chorus.messaging.audiences import rows as R
from chorus.messaging.audiences.base import NAME_CHARS, AudienceClient
from chorus.messaging.audiences.google import CONSENT_VALUES, GoogleCustomerMatch
from chorus.messaging.audiences.meta import MetaAudiences
from chorus.messaging.providers import ConfigError

CLIENTS = {"meta": MetaAudiences, "google": GoogleCustomerMatch}
FILE = "file"  # an audience that is only exported as a file, never uploaded
CONSENT_MODES = ("opt_out", "opt_in")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_TOPIC = re.compile(r"[a-z0-9_.-]{1,64}")
AUDIENCE_FIELDS = {"name", "provider", "destination", "identifiers", "consent", "format", "ad_consent", "source"}
# A followed segment is synced at most once per interval: the platforms count calls per ad account, and a busy
# segment changes many times a minute (docs/decisions/0029-audiences-follow-segments-by-interval.md).
FOLLOW_INTERVAL = 300
FOLLOW_INTERVAL_RANGE = (1, 86_400)
_SEGMENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def validate_source(source: object) -> dict | None:
    """``{"segment": id, "interval_seconds": n}`` -> the follow state kept in the audience's options; None for the
    caller's lists (no source). Whether the segment exists is the store's check (it needs the workspace)."""
    if source is None:
        return None
    if not isinstance(source, dict) or "segment" not in source or set(source) - {"segment", "interval_seconds"}:
        raise ValueError('source must be {"segment": "<segment id>", "interval_seconds": 300}')
    segment = source["segment"]
    if not isinstance(segment, str) or not _SEGMENT_ID.fullmatch(segment):
        raise ValueError("source.segment must be a segment id")
    interval = source.get("interval_seconds", FOLLOW_INTERVAL)
    low, high = FOLLOW_INTERVAL_RANGE
    if isinstance(interval, bool) or not isinstance(interval, int) or not low <= interval <= high:
        raise ValueError(f"source.interval_seconds must be a whole number from {low} to {high}")
    # epochs (store.want_sync, store.begin_follow_sync): a sync is due while changed >= synced. Created due, so the
    # first sync uploads the whole membership.
    return {"segment": segment, "interval_seconds": interval, "epoch": 1, "changed": 1, "synced": 1, "synced_at": None}


def build(conf: object, where: str, resolve_secrets: bool = True, *, workspace: str | None = None) -> AudienceClient:
    """The client a provider configuration describes; ``workspace`` is the name of the workspace whose settings these
    are: which ``CHORUS_WS_`` variables its secrets may name (decision 0051; None: none is read)."""
    if not isinstance(conf, dict):
        raise ConfigError(f"{where} must be an object with a type")
    kind = conf.get("type")
    cls = CLIENTS.get(kind) if isinstance(kind, str) else None  # a list or an object is no dictionary key
    if cls is None:
        shown = f" {kind[:64]!r}" if isinstance(kind, str) else ""
        raise ConfigError(f"{where}.type{shown} is not an audience provider type (meta, google)")
    name = conf.get("name", conf["type"])
    if not isinstance(name, str) or not name or len(name) > 64 or set(name) - NAME_CHARS or name == FILE:
        raise ConfigError(f"{where}.name must be 1 to 64 of a-z, 0-9, _ and - (and not {FILE!r})")
    return cls(conf, where, resolve_secrets, workspace=workspace)


def validate(value: object, *, workspace: str | None = None) -> dict:
    """Raise ValueError naming the setting that is wrong; secrets are referenced by environment variable name.
    ``workspace`` (its name, where known) refuses another workspace's ``CHORUS_WS_`` variable."""
    if not isinstance(value, dict):
        raise ValueError("settings.audiences must be an object {providers: [...]}")
    unknown = set(value) - {"providers"}
    if unknown:
        raise ValueError(f"settings.audiences.{sorted(unknown)[0]} is not an audiences setting")
    providers = value.get("providers", [])
    if not isinstance(providers, list):
        raise ValueError("settings.audiences.providers must be a list of ad platform accounts")
    names: set[str] = set()
    for i, conf in enumerate(providers):
        where = f"settings.audiences.providers[{i}]"
        try:
            client = build(conf, where, resolve_secrets=False, workspace=workspace)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        if client.name in names:
            raise ValueError(f"{where}.name {client.name!r} is used twice")
        names.add(client.name)
    return value


def provider_conf(ws_settings: dict, name: str) -> tuple[dict, str]:
    """The configuration of the named provider and its settings path, or ConfigError."""
    for i, conf in enumerate((ws_settings.get("audiences") or {}).get("providers") or []):
        if isinstance(conf, dict) and conf.get("name", conf.get("type")) == name:
            return conf, f"settings.audiences.providers[{i}]"
    raise ConfigError(f"no audience provider named {name!r} in settings.audiences.providers")


def client_for(
    ws_settings: dict, name: str, resolve_secrets: bool = True, *, workspace: str | None = None
) -> AudienceClient:
    conf, where = provider_conf(ws_settings, name)
    return build(conf, where, resolve_secrets, workspace=workspace)


def validate_audience(body: object, ws_settings: dict) -> dict:
    """An audience definition, checked against the workspace's providers; ValueError names the field."""
    if not isinstance(body, dict):
        raise ValueError("the audience must be an object {name, provider, destination, identifiers, consent}")
    unknown = set(body) - AUDIENCE_FIELDS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]} is not an audience field ({', '.join(sorted(AUDIENCE_FIELDS))})")
    name = body.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError("name must be 1 to 64 of a-z, 0-9, _, . and -, starting with a letter or digit")
    provider = body.get("provider")
    if not isinstance(provider, str) or not provider:
        raise ValueError(f"provider must name one of settings.audiences.providers, or be {FILE!r}")
    destination = None
    if provider == FILE:
        fmt = body.get("format", "meta")
        if fmt not in R.FORMATS:
            raise ValueError("format must be meta or google (how the file's rows are normalised and hashed)")
        if body.get("destination") is not None:
            raise ValueError("destination: a file audience is not uploaded anywhere")
    else:
        try:
            client = client_for(ws_settings, provider, resolve_secrets=False)
            destination = client.check_destination(body.get("destination"), "destination")
        except ConfigError as exc:
            raise ValueError(f"provider: {exc}" if str(exc).startswith("no audience provider") else str(exc)) from None
        fmt = client.type
        if body.get("format", fmt) != fmt:
            raise ValueError(f"format: a {fmt} provider takes {fmt} rows")
    kinds = body.get("identifiers", R.DEFAULT_KINDS)
    allowed = R.KINDS[fmt]
    if not isinstance(kinds, list) or not kinds or any(not isinstance(k, str) for k in kinds):
        raise ValueError(f"identifiers must be a non-empty list among {', '.join(allowed)}")
    for i, kind in enumerate(kinds):
        if kind not in allowed:
            hint = " (Google takes names inside address)" if fmt == "google" and kind == "name" else ""
            raise ValueError(f"identifiers[{i}]: {kind} is not sent to {fmt} ({', '.join(allowed)}){hint}")
    consent = body.get("consent") or {}
    if not isinstance(consent, dict) or set(consent) - {"topic", "mode"}:
        raise ValueError('consent must be {"topic": "...", "mode": "opt_out" | "opt_in"}')
    topic = consent.get("topic", "marketing")
    if not isinstance(topic, str) or not _TOPIC.fullmatch(topic):
        raise ValueError("consent.topic must be 1 to 64 of a-z, 0-9, _, . and -")
    topics = (ws_settings.get("messaging") or {}).get("topics") or {}
    mode = consent.get("mode", (topics.get(topic) or {}).get("mode", "opt_out"))
    if mode not in CONSENT_MODES:
        raise ValueError("consent.mode must be opt_out or opt_in")
    ad_consent = body.get("ad_consent")
    if ad_consent is not None:
        if fmt != "google" or provider == FILE:
            raise ValueError("ad_consent is Google's consent signal: only for an audience of a google provider")
        if not isinstance(ad_consent, dict) or set(ad_consent) != {"ad_user_data", "ad_personalization"}:
            raise ValueError('ad_consent must be {"ad_user_data": ..., "ad_personalization": ...}')
        for key, value in ad_consent.items():
            if value not in CONSENT_VALUES:
                raise ValueError(f"ad_consent.{key} must be one of {', '.join(CONSENT_VALUES)}")
    elif fmt == "google" and provider != FILE and mode == "opt_in":
        # everyone uploaded granted ads:<topic>: tell Google so (EEA users need it since March 2024)
        ad_consent = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
    follow = validate_source(body.get("source"))
    options = {"ad_consent": ad_consent} if ad_consent else {}
    if follow is not None:
        options["follow"] = follow
    return {
        "name": name, "provider": provider, "format": fmt, "destination": destination,
        "identifiers": list(dict.fromkeys(kinds)), "consent_topic": topic, "consent_mode": mode, "options": options,
    }  # fmt: skip
