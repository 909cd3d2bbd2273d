"""Channel providers: each speaks one real protocol or provider API and reports failures in two kinds.

A provider gets a :class:`Outgoing` (rendered content, address, ids) and returns the provider's message id, or
raises :class:`TransientError` (try again later, or on the secondary provider) or :class:`PermanentError`
(never retried; ``bounce`` marks an address that must not be used again).
"""

from __future__ import annotations

import importlib
import math
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy.engine import Connection


class ProviderError(Exception):
    def __init__(self, reason: str, *, code: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.code = code


class TransientError(ProviderError):
    """The provider could not take the message now (down, throttled, 4xx SMTP reply): retry with backoff."""


class PermanentError(ProviderError):
    """The provider refused the message for good (bad address, content rejected)."""

    def __init__(self, reason: str, *, code: str | None = None, bounce: bool = False):
        super().__init__(reason, code=code)
        self.bounce = bounce


class Unsuitable(PermanentError):
    """This provider cannot take this message (a capability it lacks, such as an SMTP server without SMTPUTF8 for
    an address that needs it), before anything was sent: the channel's next provider is tried, and the message
    fails for good only when none can take it."""


class AmbiguousError(ProviderError):
    """The request may have reached the provider, but no answer came back (a read timeout, a connection dropped
    after the message was written). Sending again could duplicate it, so at-most-once channels give up."""


def http_failure(exc, what: str) -> ProviderError:
    """Classify a request that got no answer: nothing was sent (transient, safe to retry elsewhere) or maybe it
    was (:class:`~chorus.messaging.providers.http.HTTPError` says which)."""
    if not exc.sent:
        return TransientError(f"{what} unreachable: {exc}", code="connect")
    return AmbiguousError(f"no answer from {what} after sending: {exc}", code="ambiguous")


class ConfigError(ValueError):
    """A provider configuration is unusable; the message names the setting."""


# Settings every provider takes: how fast and how many calls at once the delivery worker makes to it.
COMMON = frozenset({"rate_per_second", "concurrency"})
DEFAULT_CONCURRENCY = 4


def check_settings(conf: dict, known: set[str], where: str, what: str) -> None:
    """Refuse a setting the provider does not know (a typo would otherwise be silently ignored)."""
    unknown = set(conf) - known - COMMON
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]} is not a {what} setting")


@dataclass
class Outgoing:
    message_id: str
    workspace_id: str
    channel: str
    address: str
    content: dict
    kind: str
    topic: str
    headers: dict[str, str] = field(default_factory=dict)  # e.g. List-Unsubscribe for email


class Provider(Protocol):
    name: str
    channel: str

    def send(self, out: Outgoing) -> str: ...

    def close(self) -> None: ...


# The variables Chorus reads for its own configuration (chorus.config and the few modules that read one
# directly: links, sinks, push, journeys' webhooks, the analytics engine, the GC tuning), and the test suite's and
# benchmarks' database URLs. A provider may never name one: their values (the database's password, the key that
# signs every link) would go to whatever server the workspace's settings point at. A variable Chorus starts to
# read for itself is added here.
OWN_VARIABLES = frozenset({
    "CHORUS_DATABASE_URL", "CHORUS_SECRET_KEY", "CHORUS_PUBLIC_URL", "CHORUS_LAKE_DIR", "CHORUS_OUTBOX_DIR",
    "CHORUS_MAX_BACKLOG", "CHORUS_MAX_INFLIGHT", "CHORUS_MAX_WAITING", "CHORUS_WORKER_BATCH",
    "CHORUS_WORKER_POLL_SECONDS", "CHORUS_ERASURE_VACUUM", "CHORUS_SEGMENT_PREVIEW_SECONDS", "CHORUS_GC",
    "CHORUS_ALLOW_PRIVATE_WEBHOOKS", "CHORUS_ALLOW_LOOPBACK_PUSH", "CHORUS_SPARK_MASTER",
    "CHORUS_SPARK_DRIVER_MEMORY", "CHORUS_SPARK_LOG_LEVEL",
    "CHORUS_TEST_POSTGRES_URL", "CHORUS_BENCH_PG",
})  # fmt: skip
SECRET_PREFIX = "CHORUS_"  # a provider names only variables set for Chorus: never DATABASE_URL, PGPASSWORD, AWS_
WORKSPACE_PREFIX = "CHORUS_WS_"  # CHORUS_WS_<WORKSPACE>__<NAME>: one workspace's own variables


def workspace_prefix(workspace: str) -> str:
    """The prefix of the variables only ``workspace`` (its name) may read: ``CHORUS_WS_<NAME>__``, the name upper-cased
    with every run of other characters than A-Z and 0-9 as one ``_`` (so the name part never holds ``__``, and
    where it ends is never in doubt: workspace "a" cannot read "a_b"'s ``CHORUS_WS_A_B__TOKEN``)."""
    name = re.sub(r"[^A-Z0-9]+", "_", workspace.upper()).strip("_")
    return f"{WORKSPACE_PREFIX}{name}__"


def check_variable(env: str, field: str, workspace: str | None, resolving: bool) -> None:
    """Refuse a variable a workspace's settings may not name (``field`` is the setting, ``workspace`` the
    workspace's name, or None where the caller does not know it). ConfigError naming the setting.

    A workspace's own variable (``CHORUS_WS_<NAME>__...``) is checked against its workspace; where the workspace is
    unknown it is accepted as a name (saving settings: nothing is read) but never read (``resolving``)."""
    if not env.startswith(SECRET_PREFIX) or env == SECRET_PREFIX:
        raise ConfigError(f"{field} must name a variable whose name starts with {SECRET_PREFIX}, e.g. "
                          "CHORUS_SMTP_PASSWORD (a provider may read no other)")  # fmt: skip
    if env in OWN_VARIABLES:
        raise ConfigError(f"{field} names ${env}, one of Chorus' own settings: a provider may not read it")
    if not env.startswith(WORKSPACE_PREFIX):
        return
    owner, sep, rest = env[len(WORKSPACE_PREFIX) :].partition("__")
    if not owner or not sep or not rest:
        raise ConfigError(f"{field}: a workspace's variable is named {WORKSPACE_PREFIX}<WORKSPACE>__<NAME>, "
                          f"e.g. {WORKSPACE_PREFIX}SHOP__SMTP_PASSWORD")  # fmt: skip
    if workspace is None:
        if resolving:  # fail closed: never read a workspace's variable for a caller that cannot say whose it is
            raise ConfigError(f"{field} names ${env}, a workspace's own variable, where the workspace is not known")
        return
    mine = workspace_prefix(workspace)
    if not env.startswith(mine):
        raise ConfigError(f"{field} names ${env}, another workspace's variable: this workspace's own variables "
                          f"start with {mine}")  # fmt: skip


def refuse_others_on_save(validate: Callable[..., object]) -> Callable[[Connection, str, object, object], None]:
    """A settings hook (``registry.on_setting``) that checks a section again knowing whose it is:
    ``validate(value, workspace=<its name>)``. A validator registered with ``registry.setting`` is given the value
    alone, so there a ``CHORUS_WS_`` name is checked only as a name, and another workspace's was saved without a word
    (never read for it, but the admin learnt nothing). The hook runs in the settings change's transaction: its
    ValueError, naming the setting, undoes the change (a 400 from the API, the CLI's error)."""

    def hook(conn: Connection, ws_id: str, before: object, after: object) -> None:
        from chorus.workspaces import get  # here: loading a provider does not load the workspaces and identity

        validate(after, workspace=get(conn, ws_id).name)

    return hook


def secret(
    conf: dict, key: str, where: str, resolve: bool = True, *, workspace: str | None = None
) -> str | None:
    """Secrets are never stored in settings: a provider names the environment variable that holds each one.

    A name is checked by :func:`check_variable` whether or not its value is read: a ``CHORUS_`` variable, none of
    Chorus' own settings, and
    a ``CHORUS_WS_<NAME>__`` variable only by the workspace named ``workspace`` (an outside probe had a workspace
    send the server's other secrets, $CHORUS_SECRET_KEY among them, to its own SMTP server).

    With ``resolve=False`` (checking settings on the API server, whose environment may not be the worker's) only
    the name is checked.
    """
    env = conf.get(key + "_env")
    if env is None:
        return None
    field = f"{where}.{key}_env"
    if not isinstance(env, str) or not env.replace("_", "").isalnum() or not env.isascii():
        raise ConfigError(f"{field} must be the name of an environment variable")
    check_variable(env, field, workspace, resolving=resolve)
    if not resolve:
        return "unresolved"
    value = os.environ.get(env)
    if value is None:
        raise ConfigError(f"{field} names ${env}, which is not set")
    return value


MAX_TIMEOUT = 300.0  # seconds: a provider call that takes longer is not coming back


def timeout_of(conf: dict, where: str, default: float) -> float:
    """``timeout``: seconds to wait for the provider, finite, more than 0 and at most 300 (a number, or its text,
    as accepted before; "nan", 1e300 or 0 would make every call fail at once or hang a worker's thread)."""
    value = conf.get("timeout", default)
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if not 0 < seconds <= MAX_TIMEOUT:  # NaN fails every comparison
        raise ConfigError(f"{where}.timeout must be a number of seconds, more than 0 and at most {MAX_TIMEOUT:g}")
    return seconds


MAX_TTL = 28 * 24 * 3600  # seconds: 4 weeks, the most the Web Push protocol (RFC 8030) and FCM keep a message


def ttl_of(conf: dict, where: str, default: int = 24 * 3600) -> int:
    """``ttl``: how long the push service keeps an undelivered message, whole seconds from 0 to 4 weeks (a number,
    or its text, as accepted before)."""
    value = conf.get("ttl", default)
    try:
        ttl = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError, OverflowError):
        ttl = -1
    if not 0 <= ttl <= MAX_TTL:
        raise ConfigError(f"{where}.ttl must be a whole number of seconds from 0 to {MAX_TTL} (4 weeks)")
    return ttl


# type -> (module, class): imported on first use, so a workspace without push never loads pywebpush.
_REGISTRY = {
    "smtp": ("smtp", "SMTPProvider"),
    "sendgrid": ("sendgrid", "SendGridProvider"),
    "twilio": ("twilio", "TwilioSMS"),
    "fcm": ("fcm", "FCMProvider"),
    "webpush": ("webpush", "WebPushProvider"),
    "whatsapp": ("meta", "WhatsAppProvider"),
    "messenger": ("meta", "MessengerProvider"),
    "webhook": ("webhook", "WebhookProvider"),
    "file": ("sink", "FileSink"),  # a sink, for any channel: writes messages to files instead of sending them
}
PROVIDER_TYPES = tuple(_REGISTRY)


def build(
    conf: dict, where: str, resolve_secrets: bool = True, channel: str | None = None, *, workspace: str | None = None
) -> Provider:
    """The provider a configuration describes. A provider class that serves every channel (``every_channel``, the
    file sink) is told the ``channel`` it is configured under; the others serve one channel, their own.
    ``workspace`` is the name of the workspace whose settings these are: which ``CHORUS_WS_`` variables its
    secrets may name (see :func:`secret`)."""
    if not isinstance(conf, dict):
        raise ConfigError(f"{where} must be an object with a type")
    kind = conf.get("type")
    if not isinstance(kind, str):  # missing, or a list or an object (no dictionary key): said, not a TypeError
        raise ConfigError(f"{where}.type must be a provider type ({', '.join(PROVIDER_TYPES)})")
    entry = _REGISTRY.get(kind)
    if entry is None:  # the text as written, quoted, at most 64 characters (not Python's repr of it)
        shown = kind if len(kind) <= 64 else kind[:63] + "…"
        raise ConfigError(f"{where}.type '{shown}' is not a known provider type ({', '.join(PROVIDER_TYPES)})")
    concurrency_of(conf, where)
    rate_of(conf, where)
    cls = getattr(importlib.import_module(f"chorus.messaging.providers.{entry[0]}"), entry[1])
    if getattr(cls, "every_channel", False):
        return cls(conf, where, resolve_secrets, channel=channel, workspace=workspace)
    return cls(conf, where, resolve_secrets, workspace=workspace)


def is_sink(provider: object) -> bool:
    """A provider that keeps messages instead of sending them (the file sink)."""
    return bool(getattr(provider, "sink", False))


def concurrency_of(conf: dict, where: str) -> int:
    """How many calls to this provider a worker makes at once (``concurrency``, default 4)."""
    n = conf.get("concurrency", DEFAULT_CONCURRENCY)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 64:
        raise ConfigError(f"{where}.concurrency must be a whole number from 1 to 64")
    return n


MAX_RATE = 100_000.0  # sends a second: more is no limit at all, and a typo


def rate_of(conf: dict, where: str) -> float | None:
    """``rate_per_second``: at most this many calls to the provider a second (None or absent: no limit), a number more
    than 0. A negative rate was accepted and then made every send fail in the worker's token bucket (an outside
    probe: every email of the workspace retrying with Python's "sleep length must be non-negative")."""
    rate = conf.get("rate_per_second")
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= MAX_RATE:  # NaN fails too
        raise ConfigError(f"{where}.rate_per_second must be a number of sends a second, more than 0 and at most "
                          f"{MAX_RATE:g} (leave it out for no limit)")  # fmt: skip
    return float(rate)


_CLIENT_LOCK = threading.Lock()


class HTTPClient:
    """One reused HTTP client per provider (a connection pool per host), opened on first use."""

    _client = None

    def _client_options(self) -> dict:
        return {}

    def _http(self):
        from chorus.messaging.providers.http import Client

        if self._client is None:
            with _CLIENT_LOCK:  # the delivery worker's threads share the provider
                if self._client is None:
                    self._client = Client(**self._client_options())
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
