"""Delivery: claim due outbox rows, hand them to the channel's providers, record what happened.

Guarantee (docs/messaging.md): a row is marked ``sending`` and committed *before* the provider is called, and
``sent`` after. A worker that dies in between leaves a ``sending`` row whose lease expires; it is then marked
``failed`` with reason ``interrupted`` and never sent again, because it may already have gone out. So email,
SMS, push and chat messages go out at most once; nothing is ever sent twice.

Transient failures (provider down, throttled, SMTP 4xx) move to the next provider of the channel (failover),
and when every provider failed, the message is retried with exponential backoff up to ``MAX_ATTEMPTS``.
Permanent failures are recorded with the provider's reason; a hard bounce also denies the channel for the
person (``email:*``), like a complaint or an SMS STOP.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from datetime import timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chorus import metrics
from chorus import workspaces as ws_api
from chorus.messaging import outbox
from chorus.messaging.consent import record_consent
from chorus.messaging.providers import (
    AmbiguousError,
    ConfigError,
    Outgoing,
    PermanentError,
    Provider,
    TransientError,
    build,
)
from chorus.messaging.providers.webhook import InboxProvider
from chorus.store.tables import messages
from chorus.timeutil import iso, utcnow

log = logging.getLogger("chorus.delivery")
MAX_ATTEMPTS = 8
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=6)
LEASE = timedelta(minutes=10)
# Channels where delivering twice is harmless: the webhook carries the message id as Idempotency-Key for the
# receiver to deduplicate, and the inbox "delivery" is only making the message visible. An interrupted send is
# repeated there; everywhere else it is given up (at most once).
AT_LEAST_ONCE = frozenset({"webhook", "in_app"})


def backoff(attempts: int, rng: random.Random | None = None) -> timedelta:
    """Delay before attempt ``attempts + 1``: 30 s, 1 min, 2 min... capped at 6 h, with ±20 % jitter."""
    base = min(BACKOFF_BASE * (2 ** max(attempts - 1, 0)), BACKOFF_MAX)
    return base * (0.8 + 0.4 * (rng or random).random())


class RateLimiter:
    """Token bucket: at most ``rate`` sends a second on average, bursts of up to ``rate`` (at least 1)."""

    def __init__(self, rate: float | None):
        self.rate = rate
        self.tokens = max(rate or 1, 1)
        self.at = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.rate:
            return
        with self.lock:
            while True:
                now = time.monotonic()
                self.tokens = min(max(self.rate, 1), self.tokens + (now - self.at) * self.rate)
                self.at = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                time.sleep((1 - self.tokens) / self.rate)


class ProviderSet:
    """The configured providers of a workspace's channel, built once per configuration and reused."""

    def __init__(self):
        self._cache: dict[tuple[str, str], tuple[str, list[tuple[Provider, RateLimiter]]]] = {}

    def get(self, ws: ws_api.Workspace, channel: str) -> list[tuple[Provider, RateLimiter]]:
        confs = ((ws.settings.get("messaging") or {}).get("providers") or {}).get(channel) or []
        digest = hashlib.sha256(orjson.dumps(confs, option=orjson.OPT_SORT_KEYS)).hexdigest()
        hit = self._cache.get((ws.id, channel))
        if hit and hit[0] == digest:
            return hit[1]
        if hit:
            for p, _ in hit[1]:
                p.close()
        built = []
        for i, conf in enumerate(confs):
            where = f"settings.messaging.providers.{channel}[{i}]"
            built.append((build(conf, where), RateLimiter(conf.get("rate_per_second"))))
        if channel == "in_app" and not built:  # the inbox is built in
            built.append((InboxProvider(), RateLimiter(None)))
        self._cache[(ws.id, channel)] = (digest, built)
        return built

    def close(self) -> None:
        for _digest, provs in self._cache.values():
            for p, _ in provs:
                p.close()
        self._cache.clear()


class Deliverer:
    def __init__(self, engine: Engine, clock=utcnow, providers: ProviderSet | None = None):
        self.engine = engine
        self.clock = clock
        self.providers = providers or ProviderSet()
        self._called = False  # whether the current message reached a provider (see _internal_error)
        self._workspaces: dict[str, ws_api.Workspace] = {}

    def run_once(self, limit: int = 100) -> int:
        """Deliver up to ``limit`` due messages; returns how many were attempted."""
        self._expire_leases()
        claimed = self._claim(limit)
        self._workspaces: dict[str, ws_api.Workspace] = {}  # read once per batch, not once per message
        for msg in claimed:
            self._called = False
            try:
                self._deliver(msg)
            except Exception as exc:  # noqa: BLE001 - one message's problem must not strand the others
                log.exception("message %s: delivery failed", msg["id"])
                self._internal_error(msg, exc)
        return len(claimed)

    def _internal_error(self, msg: dict, exc: Exception) -> None:
        """After the provider was called, a retry could send twice (at-most-once channels give up); before, retry."""
        reason = f"internal error: {type(exc).__name__}: {exc}"[:500]
        if self._called and msg["channel"] not in AT_LEAST_ONCE:
            self._permanent(msg, "chorus", PermanentError(f"{reason}; not sent again, it may have gone out"))
        else:
            self._transient(msg, reason)

    def drain(self, limit: int = 100) -> int:
        total = 0
        while n := self.run_once(limit):
            total += n
        return total

    def close(self) -> None:
        self.providers.close()

    # -- claiming ------------------------------------------------------------------------------------------------
    def _claim(self, limit: int) -> list[dict]:
        now = self.clock()
        with self.engine.begin() as conn:
            q = (
                sa.select(messages)
                .where(messages.c.status.in_(("queued", "retrying")), messages.c.next_attempt_at <= now)
                .order_by(messages.c.next_attempt_at)
                .limit(limit)
            )
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = [dict(r._mapping) for r in conn.execute(q)]
            for m in rows:
                m["attempts"] += 1
                conn.execute(
                    messages.update()
                    .where(messages.c.id == m["id"])
                    .values(status="sending", attempts=m["attempts"], next_attempt_at=now + LEASE, updated_at=now)
                )
            return rows

    def _expire_leases(self) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            q = sa.select(messages).where(messages.c.status == "sending", messages.c.next_attempt_at < now).limit(100)
            if conn.dialect.name == "postgresql":  # two workers never expire the same row
                q = q.with_for_update(skip_locked=True)
            stale = [dict(r._mapping) for r in conn.execute(q)]
            for m in stale:
                if m["channel"] in AT_LEAST_ONCE:  # a repeat is harmless there: send again
                    outbox.set_status(
                        conn, m, "retrying", at=now, next_attempt_at=now, reason="interrupted: sending again",
                        detail={"reason": "interrupted"},
                    )  # fmt: skip
                    continue
                outbox.set_status(
                    conn, m, "failed", at=now, next_attempt_at=None,
                    reason="interrupted: the worker stopped while sending; not retried, it may have been sent",
                    detail={"reason": "interrupted"},
                )  # fmt: skip

    # -- sending -------------------------------------------------------------------------------------------------
    def _deliver(self, msg: dict) -> None:
        from chorus.errors import NotFound
        from chorus.profiles import views

        with self.engine.connect() as conn:
            ws = self._workspaces.get(msg["workspace_id"])
            if ws is None:
                ws = self._workspaces[msg["workspace_id"]] = ws_api.get(conn, msg["workspace_id"])
            try:  # read once: pacing, consent and the status events all use it
                profile = views.get_profile(conn, ws.id, msg["profile_id"], ws.identity)
            except NotFound:
                profile = None
        if profile is None:
            with self.engine.begin() as conn:
                outbox.set_status(conn, msg, "skipped", at=self.clock(), next_attempt_at=None,
                                  reason="the profile was erased before delivery")  # fmt: skip
            return
        out = Outgoing(
            message_id=msg["id"], workspace_id=msg["workspace_id"], channel=msg["channel"], address=msg["address"],
            content=msg["content"] or {}, kind=msg["kind"], topic=msg["topic"],
            headers=(msg["content"] or {}).get("headers") or {},
        )  # fmt: skip
        if self._paced(ws, msg, profile):
            return
        if msg["channel"] == "push" and not self._push_address_alive(ws.id, msg):
            with self.engine.begin() as conn:
                outbox.set_status(conn, msg, "skipped", at=self.clock(), next_attempt_at=None, profile=profile,
                                  reason="the browser unsubscribed from push after the message was queued")  # fmt: skip
            return
        withdrawn = self._consent_withdrawn(ws, msg, profile)
        if withdrawn:
            with self.engine.begin() as conn:
                outbox.set_status(
                    conn, msg, "skipped", at=self.clock(), next_attempt_at=None, reason=withdrawn,
                    detail={"reason": withdrawn}, profile=profile,
                )  # fmt: skip
            return
        errors: list[str] = []
        try:
            provs = self.providers.get(ws, msg["channel"])
        except ConfigError as exc:
            provs, errors = [], [str(exc)]
        if not provs and not errors:
            errors.append(f"no provider is configured for {msg['channel']} (settings.messaging.providers)")
        provs = [(p, lim) for p, lim in provs if getattr(p, "accepts", lambda _o: True)(out)]
        if not provs and not errors:
            errors.append(f"no {msg['channel']} provider takes this address")
        for prov, limiter in provs:
            limiter.wait()
            if not self._renew_lease(msg):  # expired by another worker meanwhile: it is not ours to send
                log.warning("message %s: lease lost before sending; left alone", msg["id"])
                return
            self._called = True
            started, outcome = time.perf_counter(), "error"
            try:
                provider_id = prov.send(out)
                outcome = "ok"
            except AmbiguousError as exc:
                if msg["channel"] in AT_LEAST_ONCE:  # a repeat is harmless there
                    errors.append(f"{prov.name}: {exc.reason}")
                    continue
                self._permanent(msg, prov.name, PermanentError(f"{exc.reason}; not sent again, it may have arrived"))
                return
            except TransientError as exc:
                errors.append(f"{prov.name}: {exc.reason}")
                log.warning("message %s: %s failed transiently: %s", msg["id"], prov.name, exc.reason)
                continue
            except PermanentError as exc:
                self._permanent(msg, prov.name, exc)
                return
            except Exception as exc:  # noqa: BLE001 - a provider bug: the message may or may not have gone out
                log.exception("message %s: provider %s raised", msg["id"], prov.name)
                if msg["channel"] in AT_LEAST_ONCE:
                    errors.append(f"{prov.name}: {type(exc).__name__}: {exc}")
                    continue
                reason = f"{type(exc).__name__}: {exc}; not sent again, it may have gone out"
                self._permanent(msg, prov.name, PermanentError(reason))
                return
            finally:
                metrics.provider_seconds.labels(channel=msg["channel"], outcome=outcome).observe(
                    time.perf_counter() - started
                )
            self._sent(msg, prov.name, provider_id, profile)
            return
        self._transient(msg, "; ".join(errors))

    def _paced(self, ws: ws_api.Workspace, msg: dict, profile: dict) -> bool:
        """Caps and quiet hours again at send time (other messages may have gone out since it was queued)."""
        if msg["kind"] == "transactional":
            return False
        settings = ws.settings.get("messaging") or {}
        if not settings.get("caps") and not settings.get("quiet_hours"):
            return False
        now = self.clock()
        with self.engine.begin() as conn:
            paced = outbox.apply_pacing(conn, ws, msg, profile, now)
            if paced.at is None:
                outbox.set_status(conn, msg, "skipped", at=now, next_attempt_at=None, reason=paced.reason,
                                  detail={"reason": paced.reason}, profile=profile)  # fmt: skip
                return True
            if paced.at > now:  # not an attempt: give it back
                outbox.set_status(
                    conn, msg, "deferred", at=now, next_attempt_at=paced.at, reason=paced.reason,
                    attempts=msg["attempts"] - 1, detail={"reason": paced.reason, "until": iso(paced.at)},
                    profile=profile,
                )  # fmt: skip
                return True
        return False

    def _renew_lease(self, msg: dict) -> bool:
        """Extend the claim right before the provider call, only if it is still ours (same attempt, sending)."""
        now = self.clock()
        with self.engine.begin() as conn:
            n = conn.execute(
                messages.update()
                .where(
                    messages.c.id == msg["id"], messages.c.status == "sending", messages.c.attempts == msg["attempts"]
                )
                .values(next_attempt_at=now + LEASE)
            ).rowcount
        return n == 1

    def _push_address_alive(self, ws: str, msg: dict) -> bool:
        from chorus.store.tables import dead_addresses, push_subscriptions

        with self.engine.connect() as conn:
            if "subscription" in (msg["content"] or {}):  # a browser: still subscribed?
                return (
                    conn.execute(
                        sa.select(push_subscriptions.c.endpoint).where(
                            push_subscriptions.c.workspace_id == ws, push_subscriptions.c.endpoint == msg["address"]
                        )
                    ).first()
                    is not None
                )
            return conn.execute(  # a device token: not reported gone meanwhile?
                sa.select(dead_addresses.c.address).where(
                    dead_addresses.c.workspace_id == ws, dead_addresses.c.channel == "push",
                    dead_addresses.c.address == msg["address"],
                )
            ).first() is None  # fmt: skip

    def _consent_withdrawn(self, ws: ws_api.Workspace, msg: dict, profile: dict) -> str | None:
        """Consent is checked again right before sending: an opt-out after queuing stops the message."""
        from chorus.messaging import policy

        topics = (ws.settings.get("messaging") or {}).get("topics")
        d = policy.consent_decision(profile, msg["channel"], msg["topic"], msg["kind"], topics)
        return None if d.allowed else f"consent withdrawn before delivery: {d.reason}"

    def _sent(self, msg: dict, provider: str, provider_id: str, profile: dict | None = None) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            outbox.set_status(
                conn, msg, "sent", at=now, detail={"provider": provider}, provider=provider,
                provider_message_id=str(provider_id)[:400], next_attempt_at=None, reason=None, sent_at=now,
                profile=profile,
            )  # fmt: skip

    def _permanent(self, msg: dict, provider: str, exc: PermanentError) -> None:
        now = self.clock()
        status = "bounced" if exc.bounce else "failed"
        with self.engine.begin() as conn:
            outbox.set_status(
                conn, msg, status, at=now, detail={"provider": provider, "reason": exc.reason},
                provider=provider, reason=f"{provider}: {exc.reason}", next_attempt_at=None,
            )  # fmt: skip
            if exc.bounce:
                record_consent(conn, msg, "*", "denied", f"hard bounce: {exc.reason}", now)
            if exc.code == "subscription_gone":  # that device is gone; the person's other devices are not
                forget_push_address(conn, msg["workspace_id"], msg["address"], exc.reason, now)

    def _transient(self, msg: dict, reason: str) -> None:
        now = self.clock()
        with self.engine.begin() as conn:
            if msg["attempts"] >= MAX_ATTEMPTS:
                outbox.set_status(
                    conn, msg, "failed", at=now, next_attempt_at=None,
                    reason=f"gave up after {msg['attempts']} attempts: {reason}",
                    detail={"reason": reason, "attempts": msg["attempts"]},
                )  # fmt: skip
            else:
                nxt = now + backoff(msg["attempts"])
                outbox.set_status(
                    conn, msg, "retrying", at=now, next_attempt_at=nxt, reason=reason,
                    detail={"reason": reason, "attempt": msg["attempts"], "next_attempt_at": nxt.isoformat()},
                )  # fmt: skip


def forget_push_address(conn, ws: str, address: str, reason: str, at) -> None:
    """A browser subscription is deleted; a device token (an identifier of the profile) is remembered as dead."""
    from chorus.store import bulk
    from chorus.store.tables import dead_addresses, push_subscriptions

    gone = conn.execute(
        push_subscriptions.delete().where(
            push_subscriptions.c.workspace_id == ws, push_subscriptions.c.endpoint == address
        )
    ).rowcount
    if not gone:
        bulk.insert_rows(
            conn, dead_addresses,
            [{"workspace_id": ws, "channel": "push", "address": address, "reason": reason[:500], "at": at}],
            conflict=["workspace_id", "channel", "address"], update=["reason", "at"],
        )  # fmt: skip
