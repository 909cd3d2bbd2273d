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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chorus import metrics
from chorus import workspaces as ws_api
from chorus.messaging import outbox, policy, reports
from chorus.messaging.consent import lock_owners, record_consent
from chorus.messaging.providers import (
    DEFAULT_CONCURRENCY,
    AmbiguousError,
    ConfigError,
    Outgoing,
    PermanentError,
    Provider,
    TransientError,
    Unsuitable,
    build,
    concurrency_of,
    sink,
)
from chorus.messaging.providers.webhook import InboxProvider
from chorus.profiles import views
from chorus.store import bulk
from chorus.store.db import any_row, read_only, rolled_back
from chorus.store.tables import messages
from chorus.timeutil import iso, utcnow

log = logging.getLogger("chorus.delivery")
MAX_ATTEMPTS = 8
NO_PROVIDER = "no_provider"  # the reason code of a message skipped because no configured provider can send it
BACKOFF_BASE = timedelta(seconds=30)
BACKOFF_MAX = timedelta(hours=6)
LEASE = timedelta(minutes=10)
RECORD_ATTEMPTS = 4  # tries of a recording the database rolled back (a deadlock it broke): _write_outcomes
# Seconds after which a claimed batch reads each person's consent again right before her send (an opt-out that came
# while the batch waited for a rate limit); a batch sent within it was checked that recently already.
RECHECK = 1.0
# Seconds one read of a batch's message rows answers for, right before each provider call (erased? withdrawn?
# taken over?): the rows of every message of the batch not yet sent are read together, again once this has passed.
# A read per message made a busy worker fall behind (in-app sends at 500 a second: p99 from an event to its message
# queued 3.7 s instead of 0.4 s); a change is seen at most this long after it committed.
STILL_FRESH = 0.25
# The partial index ix_messages_due's condition, word for word: SQLite uses a partial index only when the query
# repeats its WHERE with the same literals (bound parameters do not count), else it scans every message.
DUE = sa.text("messages.status IN ('queued', 'retrying', 'sending')")
SENDING = sa.text("messages.status = 'sending'")  # ix_messages_sending's condition, likewise
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


Built = tuple[Provider, RateLimiter, threading.BoundedSemaphore]


class ProviderSet:
    """The configured providers of a workspace's channel, built once per configuration and reused, each with its
    rate limit and a gate that admits ``concurrency`` calls at once.

    ``fallback`` (channel -> one provider configuration) stands in for a channel the workspace configured no
    provider for: ``chorus serve --dev`` gives the file sinks of :func:`chorus.messaging.providers.sink.dev_confs`.
    Without it (always, but in dev mode) such a channel has no provider and its messages are skipped."""

    def __init__(self, fallback: dict[str, dict] | None = None):
        self._cache: dict[tuple[str, str], tuple[str, list[Built]]] = {}
        self._lock = threading.Lock()
        self.fallback = dict(fallback or {})

    def get(self, ws: ws_api.Workspace, channel: str) -> list[Built]:
        confs = ((ws.settings.get("messaging") or {}).get("providers") or {}).get(channel) or []
        if not confs and channel in self.fallback:
            confs = [self.fallback[channel]]
        digest = hashlib.sha256(orjson.dumps(confs, option=orjson.OPT_SORT_KEYS)).hexdigest()
        with self._lock:
            hit = self._cache.get((ws.id, channel))
            if hit and hit[0] == digest:
                return hit[1]
            if hit:
                for p, *_ in hit[1]:
                    p.close()
            built = []
            for i, conf in enumerate(confs):
                where = f"settings.messaging.providers.{channel}[{i}]"
                gate = threading.BoundedSemaphore(concurrency_of(conf, where))
                prov = build(conf, where, channel=channel, workspace=ws.name)  # whose CHORUS_WS_ variables
                built.append((prov, RateLimiter(conf.get("rate_per_second")), gate))
            if channel == "in_app" and not built:  # the inbox is built in
                built.append((InboxProvider(), RateLimiter(None), threading.BoundedSemaphore(DEFAULT_CONCURRENCY)))
            self._cache[(ws.id, channel)] = (digest, built)
            return built

    def close(self) -> None:
        with self._lock:
            for _digest, provs in self._cache.values():
                for p, *_ in provs:
                    p.close()
            self._cache.clear()


@dataclass
class _Outcome:
    """What happened to one message in the send phase, recorded with the others of its batch."""

    msg: dict
    kind: str  # sent | permanent | transient | skipped (no provider can send it) | withdrawn (right before) | lost
    provider: str = ""
    provider_id: str = ""
    error: PermanentError | None = None
    reason: str = ""
    profile: dict | None = None


class _Lease:
    """The batch's claim, renewed for the messages not yet sent whenever a third of the lease has passed, so a
    slow batch (rate limits, a slow provider) is never expired under the worker's feet; a message another worker
    expired meanwhile is left alone."""

    def __init__(self, deliverer: Deliverer, msgs: list[dict]):
        self.d, self.lock = deliverer, threading.Lock()
        self.pending = {m["id"]: m for m in msgs}
        self.ours: set[str] = set()
        self.at = -1e18
        self.prepared = deliverer._consent_read  # when Deliverer._prepare read the batch's consent
        # the messages still to be sent or being sent (their provider calls, fail-over included, not over): what a
        # read of the batch's rows covers
        self.unsent = set(self.pending)
        self.rows: dict[str, tuple] = {}  # message id -> (attempts, withdraw_reason), as ``still`` last read them
        self.read_at = -1e18
        self.covered: set[str] = set()  # the ids the last read asked for (one missing from ``rows`` is gone)
        self.msgs = dict(self.pending)
        # workspace id -> (when, the profile ids read, profile id -> view), for RECHECK
        self.people: dict[str, tuple[float, set[str], dict]] = {}

    def done(self, msg: dict) -> None:
        """Its provider calls are over (sent, failed, or not sent): later reads leave it out."""
        with self.lock:
            self.unsent.discard(msg["id"])

    def _ids_to_read(self, msg: dict, last: float, ids: set[str]) -> list[str]:
        """What a stale read covers: the whole batch while its sends come close together (each read answers for
        many), only this one when they are paced further apart than STILL_FRESH (a rate limit: a read of the whole
        rest for each send would read the batch quadratically; review)."""
        if time.monotonic() - last < 2 * STILL_FRESH or last < 0:
            return sorted(ids | {msg["id"]})
        return [msg["id"]]

    def holds(self, msg: dict) -> bool:
        with self.lock:
            if time.monotonic() - self.at > LEASE.total_seconds() / 3:
                self.ours = self.d._renew_leases(list(self.pending.values()))
                self.at = time.monotonic()
            self.pending.pop(msg["id"], None)
            return msg["id"] in self.ours

    def still(self, msg: dict, ws: ws_api.Workspace) -> tuple[str, str | None]:
        """Right before a provider call: may it go? ``("go", None)``; ``("lost", None)`` when the message is gone
        (erased) or no longer this attempt's; ``("withdrawn", why)`` when it must not be sent any more. The batch's rows
        as read at most :data:`STILL_FRESH` ago, and the person's consent again if the batch was prepared more than
        :data:`RECHECK` ago (rate limits and a provider's concurrency hold a batch for minutes). Outside probes saw
        claimed emails reach an erased person for 43 s, texts go out 4-15 s after the person's STOP was answered, and a
        stopped broadcast send 255 more texts (its withdrawal marks what a worker holds, ``withdraw_reason``, which
        nobody read here). What is in flight at the instant of the change (the provider call itself) cannot be called
        back."""
        with self.lock:
            if time.monotonic() - self.read_at > STILL_FRESH or msg["id"] not in self.covered:
                ids = self._ids_to_read(msg, self.read_at, self.unsent)
                with read_only(self.d.engine) as conn:
                    found = conn.execute(sa.select(messages.c.id, messages.c.attempts, messages.c.withdraw_reason)
                                         .where(bulk.in_(messages.c.id, ids, conn.dialect.name),
                                                SENDING)).all()  # fmt: skip
                self.rows = {r.id: (r.attempts, r.withdraw_reason) for r in found}
                self.covered, self.read_at = set(ids), time.monotonic()
            attempts, withdrawn = self.rows.get(msg["id"], (None, None))
        if attempts != msg["attempts"]:
            return "lost", None
        if withdrawn:
            return "withdrawn", outbox.WITHDRAWN + withdrawn
        if time.monotonic() - self.prepared > RECHECK:
            profile = self._person(msg, ws)
            if profile is None:  # erased meanwhile (her message row goes with her)
                return "lost", None
            why = self.d._consent_withdrawn(ws, msg, profile)
            if why:
                return "withdrawn", why
        return "go", None

    def _person(self, msg: dict, ws: ws_api.Workspace) -> dict | None:
        """Her profile as read at most STILL_FRESH ago: the people of the workspace's unsent messages together."""
        with self.lock:
            at, read, found = self.people.get(ws.id, (-1e18, set(), {}))
            if time.monotonic() - at > STILL_FRESH or msg["profile_id"] not in read:
                ids = self._ids_to_read(msg, at, {i for i in self.unsent if self.msgs[i]["workspace_id"] == ws.id})
                pids = sorted({self.msgs[i]["profile_id"] for i in ids if i in self.msgs} | {msg["profile_id"]})
                with read_only(self.d.engine) as conn:
                    found = _current_profiles(conn, ws, pids)
                self.people[ws.id] = (time.monotonic(), set(pids), found)
            return found.get(msg["profile_id"])


class Deliverer:
    """Delivers due messages in batches: checks for the whole batch, provider calls in parallel (up to each
    provider's ``concurrency``), outcomes recorded together."""

    def __init__(self, engine: Engine, clock=utcnow, providers: ProviderSet | None = None, threads: int = 16):
        self.engine = engine
        self.clock = clock
        self.providers = providers or ProviderSet()
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._workspaces: dict[str, ws_api.Workspace] = {}
        self._consent_read = time.monotonic()

    def run_once(self, limit: int = 500) -> int:
        """Deliver up to ``limit`` due messages; returns how many were attempted."""
        self._expire_leases()
        claimed = self._claim(limit)
        if not claimed:
            return 0
        self._workspaces = {}  # read once per batch, not once per message
        ready = self._prepare(claimed)
        lease = _Lease(self, [r[0] for r in ready])
        pool = self._pool or ThreadPoolExecutor(self.threads, thread_name_prefix="chorus-deliver")
        self._pool = pool
        futures = [pool.submit(self._send, msg, ws, profile, lease) for msg, ws, profile in ready]
        done: list[_Outcome] = []
        last = time.monotonic()
        for fut, (msg, _ws, _profile) in zip(futures, ready, strict=True):
            try:
                out = fut.result()
            except Exception as exc:  # noqa: BLE001 - a bug of ours after the provider answered: never resend
                log.exception("message %s: delivery failed", msg["id"])
                out = _Outcome(
                    msg,
                    "permanent",
                    "chorus",
                    error=PermanentError(
                        f"internal error: {type(exc).__name__}: {exc}; not sent again, it may have gone out"[:500]
                    ),
                )
            if out.kind != "lost":
                done.append(out)
            # outcomes are recorded together, and often enough that a report on a message is soon readable
            if len(done) >= 200 or time.monotonic() - last > 1:
                self._record(done)
                done, last = [], time.monotonic()
        self._record(done)
        return len(claimed)

    def _record(self, outcomes: list[_Outcome]) -> None:
        try:
            self._write_outcomes(outcomes)
        except Exception:  # noqa: BLE001 - the messages stay "sending"; their lease expiry gives them up (at most once)
            log.exception("recording %d delivery outcomes failed", len(outcomes))

    def drain(self, limit: int = 500) -> int:
        total = 0
        while n := self.run_once(limit):
            total += n
        return total

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.providers.close()

    # -- claiming ------------------------------------------------------------------------------------------------
    def _claim(self, limit: int) -> list[dict]:
        now = self.clock()
        due = (messages.c.status.in_(("queued", "retrying")), messages.c.next_attempt_at <= now, DUE)
        if not any_row(self.engine, sa.select(messages.c.id).where(*due)):  # an idle poll takes no write lock
            return []
        with self.engine.begin() as conn:
            q = sa.select(messages).where(*due).order_by(messages.c.next_attempt_at).limit(limit)
            if conn.dialect.name == "postgresql":
                q = q.with_for_update(skip_locked=True)
            rows = [dict(r._mapping) for r in conn.execute(q)]
            if rows:
                conn.execute(
                    messages.update()
                    .where(bulk.in_(messages.c.id, [m["id"] for m in rows], conn.dialect.name))
                    .values(status="sending", attempts=messages.c.attempts + 1, next_attempt_at=now + LEASE,
                            updated_at=now)
                )  # fmt: skip
            for m in rows:
                m["attempts"] += 1
            return rows

    def _expire_leases(self) -> None:
        now = self.clock()
        expired = (SENDING, messages.c.next_attempt_at < now)
        if not any_row(self.engine, sa.select(messages.c.id).where(*expired)):  # nearly always nothing to expire
            return
        with self.engine.begin() as conn:
            q = sa.select(messages).where(*expired).limit(100)
            if conn.dialect.name == "postgresql":  # two workers never expire the same row
                q = q.with_for_update(skip_locked=True)
            changes = []
            for m in (dict(r._mapping) for r in conn.execute(q)):
                if m["channel"] in AT_LEAST_ONCE:  # a repeat is harmless there: send again
                    changes.append(outbox.Change(m, "retrying", now, {"reason": "interrupted"}, {
                        "next_attempt_at": now, "reason": "interrupted: sending again",
                        "approved_at": None}))  # fmt: skip
                    continue
                changes.append(outbox.Change(m, "failed", now, {"reason": "interrupted"}, {
                    "next_attempt_at": None,
                    "reason": "interrupted: the worker stopped while sending; not retried, it may have been sent",
                }))  # fmt: skip
            outbox.set_statuses(conn, changes)

    def _renew_leases(self, msgs: list[dict]) -> set[str]:
        """Extend the claim of these messages if still ours (same attempt, sending); returns the ids that are."""
        if not msgs:
            return set()
        now = self.clock()
        until = now + LEASE
        with self.engine.begin() as conn:
            ids = [m["id"] for m in msgs]
            if conn.dialect.name == "postgresql":  # in id order, as every writer of several messages locks them (an
                # UPDATE locks rows in the order its plan meets them: a bitmap scan's is the table's)
                conn.execute(sa.select(messages.c.id).where(bulk.in_(messages.c.id, ids, "postgresql"))
                             .order_by(messages.c.id).with_for_update()).all()  # fmt: skip
            conn.execute(
                messages.update()
                .where(bulk.in_(messages.c.id, ids, conn.dialect.name), messages.c.status == "sending")
                .values(next_attempt_at=until)
            )
            attempts = {m["id"]: m["attempts"] for m in msgs}
            rows = conn.execute(
                sa.select(messages.c.id, messages.c.attempts).where(
                    bulk.in_(messages.c.id, ids, conn.dialect.name), messages.c.status == "sending",
                    messages.c.next_attempt_at == until,
                )
            ).all()  # fmt: skip
        return {r.id for r in rows if attempts[r.id] == r.attempts}

    # -- before sending: the checks of the whole batch ------------------------------------------------------------
    def _prepare(self, claimed: list[dict]) -> list[tuple[dict, ws_api.Workspace, dict]]:
        """Checks that need no provider, for the whole batch; returns the messages to send with their profile."""
        profiles: dict[str, dict] = {}
        self._approved: dict[str, list[tuple]] = {}
        self._batch_ids = {m["id"] for m in claimed}
        self._consent_read = time.monotonic()  # consent is read now: what changes after it is read again (_Lease)
        with read_only(self.engine) as conn:
            for wid in {m["workspace_id"] for m in claimed}:
                ws = self._workspaces[wid] = ws_api.get(conn, wid)
                pids = [m["profile_id"] for m in claimed if m["workspace_id"] == wid]
                profiles |= _current_profiles(conn, ws, pids)
        ready, changes = [], []
        for msg in claimed:
            now, ws, profile = self.clock(), self._workspaces[msg["workspace_id"]], profiles.get(msg["profile_id"])
            if profile is None:
                changes.append(outbox.Change(msg, "skipped", now, {}, {
                    "next_attempt_at": None, "reason": "the profile was erased before delivery"}))  # fmt: skip
                continue
            try:
                if self._paced(ws, msg, profile):
                    continue
                if msg["channel"] == "push" and not self._push_address_alive(ws.id, msg):
                    gone = "the browser unsubscribed from push after the message was queued"
                    changes.append(outbox.Change(msg, "skipped", now, {}, {"next_attempt_at": None, "reason": gone},
                                                 profile))  # fmt: skip
                    continue
            except Exception as exc:  # noqa: BLE001 - one message's problem must not strand the others
                log.exception("message %s: delivery failed", msg["id"])
                changes.append(self._retry(msg, f"internal error: {type(exc).__name__}: {exc}"[:500], now))
                continue
            withdrawn = self._consent_withdrawn(ws, msg, profile)
            if withdrawn:
                changes.append(outbox.Change(msg, "skipped", now, {"reason": withdrawn}, {
                    "next_attempt_at": None, "reason": withdrawn}, profile))  # fmt: skip
                continue
            ready.append((msg, ws, profile))
            if msg["kind"] == "marketing":  # the person's next message in this batch counts this one against caps
                self._approved.setdefault(profile["id"], []).append((msg["channel"], now))
        if changes:
            with self.engine.begin() as conn:
                outbox.set_statuses(conn, changes)
        return ready

    # -- sending (in the pool's threads) -------------------------------------------------------------------------
    def _send(self, msg: dict, ws: ws_api.Workspace, profile: dict, lease: _Lease) -> _Outcome:
        try:
            return self._call_providers(msg, ws, profile, lease)
        except Exception as exc:  # noqa: BLE001 - provider calls catch their own: this is before any, retry is safe
            log.exception("message %s: delivery failed", msg["id"])
            return _Outcome(msg, "transient", reason=f"internal error: {type(exc).__name__}: {exc}"[:500])
        finally:
            lease.done(msg)

    def _call_providers(self, msg: dict, ws: ws_api.Workspace, profile: dict, lease: _Lease) -> _Outcome:
        """The provider calls of one message: failover in order; never a database write here but the lease."""
        out = Outgoing(
            message_id=msg["id"], workspace_id=msg["workspace_id"], channel=msg["channel"], address=msg["address"],
            content=msg["content"] or {}, kind=msg["kind"], topic=msg["topic"],
            headers=(msg["content"] or {}).get("headers") or {},
        )  # fmt: skip
        errors: list[str] = []
        unsuitable: list[tuple[str, Unsuitable]] = []  # providers that cannot take it (tried the next one)
        try:
            provs = self.providers.get(ws, msg["channel"])
        except ConfigError as exc:  # a provider that cannot be built (e.g. its secret's variable unset): retried
            provs, errors = [], [str(exc)]
        # Nothing configured could ever send it: retrying for hours would change nothing, so it is skipped at once.
        # (Adding a provider later does not revive it: send again.)
        nobody = None
        if not provs and not errors:
            nobody = f"no provider is configured for {msg['channel']} (settings.messaging.providers)"
        elif provs and not (provs := [p for p in provs if getattr(p[0], "accepts", lambda _o: True)(out)]):
            nobody = f"no {msg['channel']} provider takes this address"
        if (provs or nobody) and not lease.holds(msg):  # expired by another worker meanwhile: not ours any more
            log.warning("message %s: lease lost before sending; left alone", msg["id"])
            metrics.messages_not_sent.labels(channel=msg["channel"], why="lease").inc()
            return _Outcome(msg, "lost")
        if nobody:
            return _Outcome(msg, "skipped", reason=nobody, profile=profile)
        for prov, limiter, gate in provs:
            limiter.wait()
            with gate:  # its turn at the provider: checked again now (erased, withdrawn, opted out while it waited?)
                verdict, why = lease.still(msg, ws)
                if verdict == "lost":
                    log.warning("message %s: gone or taken over before sending; not sent", msg["id"])
                    metrics.messages_not_sent.labels(channel=msg["channel"], why="gone").inc()
                    return _Outcome(msg, "lost")
                if verdict == "withdrawn":
                    log.info("message %s: not sent: %s", msg["id"], why)
                    metrics.messages_not_sent.labels(channel=msg["channel"], why="withdrawn").inc()
                    return _Outcome(msg, "withdrawn", reason=why or "", profile=profile)
                started, result = time.perf_counter(), "error"
                try:
                    provider_id = prov.send(out)
                    result = "ok"
                except AmbiguousError as exc:
                    if msg["channel"] in AT_LEAST_ONCE:  # a repeat is harmless there
                        errors.append(f"{prov.name}: {exc.reason}")
                        continue
                    err = PermanentError(f"{exc.reason}; not sent again, it may have arrived")
                    return _Outcome(msg, "permanent", prov.name, error=err, profile=profile)
                except TransientError as exc:
                    errors.append(f"{prov.name}: {exc.reason}")
                    log.warning("message %s: %s failed transiently: %s", msg["id"], prov.name, exc.reason)
                    continue
                except Unsuitable as exc:
                    unsuitable.append((prov.name, exc))
                    log.info("message %s: %s cannot take it (%s): the next provider is tried", msg["id"], prov.name,
                             exc.reason)  # fmt: skip
                    continue
                except PermanentError as exc:
                    return _Outcome(msg, "permanent", prov.name, error=exc, profile=profile)
                except Exception as exc:  # noqa: BLE001 - a provider bug: the message may or may not have gone out
                    log.exception("message %s: provider %s raised", msg["id"], prov.name)
                    if msg["channel"] in AT_LEAST_ONCE:
                        errors.append(f"{prov.name}: {type(exc).__name__}: {exc}")
                        continue
                    err = PermanentError(f"{type(exc).__name__}: {exc}; not sent again, it may have gone out")
                    return _Outcome(msg, "permanent", prov.name, error=err, profile=profile)
                finally:
                    metrics.provider_seconds.labels(channel=msg["channel"], outcome=result).observe(
                        time.perf_counter() - started
                    )
                return _Outcome(msg, "sent", prov.name, provider_id=str(provider_id)[:400], profile=profile)
        if unsuitable and not errors:  # none of them can take it: retrying would change nothing
            name, last = unsuitable[-1]  # recorded as "<last>: <its reason> (and <first>: <its reason>, ...)"
            earlier = ", ".join(f"{n}: {e.reason}" for n, e in unsuitable[:-1])
            why = last.reason + (f" (and {earlier})" if earlier else "")
            return _Outcome(msg, "permanent", name, error=Unsuitable(why, code=last.code), profile=profile)
        errors += [f"{n}: {e.reason}" for n, e in unsuitable]
        return _Outcome(msg, "transient", reason="; ".join(errors), profile=profile)

    # -- after sending: one transaction for many outcomes --------------------------------------------------------
    def _write_outcomes(self, outcomes: list[_Outcome]) -> None:
        if not outcomes:
            return
        now = self.clock()
        changes, no_provider = [], []
        for o in outcomes:
            if o.kind == "sent":
                changes.append(outbox.Change(o.msg, "sent", now, {"provider": o.provider}, {
                    "provider": o.provider, "provider_message_id": o.provider_id, "next_attempt_at": None,
                    "reason": None, "sent_at": now}, o.profile))  # fmt: skip
            elif o.kind == "permanent":
                status = "bounced" if o.error.bounce else "failed"
                changes.append(outbox.Change(o.msg, status, now, {"provider": o.provider, "reason": o.error.reason}, {
                    "provider": o.provider, "reason": f"{o.provider}: {o.error.reason}", "next_attempt_at": None},
                    o.profile))  # fmt: skip
            elif o.kind == "withdrawn":  # withdrawn (a stop, a goal) or consent withdrawn while it waited its turn
                changes.append(outbox.Change(o.msg, "skipped", now, {"reason": "withdrawn", "message": o.reason}, {
                    "next_attempt_at": None, "reason": o.reason}, o.profile))  # fmt: skip
            elif o.kind == "skipped":
                changes.append(outbox.Change(o.msg, "skipped", now, {"reason": NO_PROVIDER, "message": o.reason}, {
                    "next_attempt_at": None, "reason": f"{NO_PROVIDER}: {o.reason}"}, o.profile))  # fmt: skip
                no_provider.append(o.msg["channel"])
            else:
                changes.append(self._retry(o.msg, o.reason, now, o.profile))
        early: dict[str, list[str]] = {}  # Meta may have reported on these before now: apply what it said
        for o in outcomes:
            if o.kind == "sent" and o.msg["channel"] in reports.CHANNELS:
                early.setdefault(o.msg["workspace_id"], []).append(o.provider_id)
        # a bounce (now, or in a report Meta sent before the send was recorded) withdraws consent, which takes the
        # identity lock and writes her profile: take both before set_statuses locks the message rows (the order of
        # an inbound reply, and of a journey's transition withdrawing her messages: consent.lock_owners)
        consenting: dict[str, set[str]] = {}
        for o in outcomes:
            if o.kind == "permanent" and o.error.bounce:
                consenting.setdefault(o.msg["workspace_id"], set()).add(o.msg["profile_id"])
        # A transaction the database rolled back for a passing reason (PostgreSQL broke a deadlock by failing this
        # side, a serialization failure: SQLSTATE class 40, nothing committed) is written again: giving up leaves
        # every message of the batch "sending" until its lease expires as "failed: may have been sent", although
        # they went out. Not a lost connection: its commit may have happened, and writing again would write twice.
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                self._commit_outcomes(outcomes, changes, early, consenting, now)
                break
            except sa.exc.DBAPIError as exc:
                if attempt == RECORD_ATTEMPTS or not rolled_back(exc):
                    raise
                log.warning("recording %d delivery outcomes: %s; writing them again", len(outcomes),
                            type(exc.orig).__name__)  # fmt: skip
                time.sleep(0.05 * attempt)
        for channel in no_provider:  # counted once committed (a recording written again counts once)
            metrics.messages_no_provider.labels(channel=channel).inc()
        self._unsink_erased([o for o in outcomes if o.kind == "sent" and o.provider == sink.NAME])

    def _commit_outcomes(self, outcomes: list[_Outcome], changes: list[outbox.Change], early: dict[str, list[str]],
                         consenting: dict[str, set[str]], now) -> None:  # fmt: skip
        consenting = {ws_id: set(pids) for ws_id, pids in consenting.items()}  # this attempt's own
        with self.engine.begin() as conn:
            # reports Meta sent first are rare, bounces among them rarer: a plain read (no row lock) says which of
            # these sends one bounces, so that an ordinary batch of WhatsApp sends locks nobody and does not queue
            # behind the resolver for the identity lock
            for ws_id, ids in early.items():
                if bounced := reports.held_bounces(conn, ws_id, ids):
                    sent = {o.msg["profile_id"] for o in outcomes if o.kind == "sent" and o.provider_id in bounced}
                    consenting.setdefault(ws_id, set()).update(sent)
            for ws_id in sorted(consenting):
                lock_owners(conn, ws_id, consenting[ws_id])
            outbox.set_statuses(conn, changes)
            for ws_id, provider_ids in early.items():
                reports.release(conn, ws_id, provider_ids)
            for o in outcomes:
                if o.kind != "permanent":
                    continue
                if o.error.bounce:
                    record_consent(conn, o.msg, "*", "denied", f"hard bounce: {o.error.reason}", now)
                if o.error.code == "subscription_gone":  # that device is gone; the person's other devices are not
                    forget_push_address(conn, o.msg["workspace_id"], o.msg["address"], o.error.reason, now)

    def _unsink_erased(self, sunk: list[_Outcome]) -> None:
        """A file sink wrote these outside any transaction: a message erased meanwhile (claimed, then its person
        erased before the file existed, so her erasure could not delete it) loses its file now (review)."""
        if not sunk:
            return
        with read_only(self.engine) as conn:
            ids = [o.msg["id"] for o in sunk]
            q = sa.select(messages.c.id).where(bulk.in_(messages.c.id, ids, conn.dialect.name))
            alive = set(conn.execute(q).scalars())
        if gone := [o.msg["id"] for o in sunk if o.msg["id"] not in alive]:
            sink.forget_files(gone)  # one search of the outbox for all of them

    def _retry(self, msg: dict, reason: str, now, profile: dict | None = None) -> outbox.Change:
        """Back off and try again later, or give up after MAX_ATTEMPTS."""
        if msg["attempts"] >= MAX_ATTEMPTS:
            return outbox.Change(msg, "failed", now, {"reason": reason, "attempts": msg["attempts"]}, {
                "next_attempt_at": None, "reason": f"gave up after {msg['attempts']} attempts: {reason}"},
                profile)  # fmt: skip
        nxt = now + backoff(msg["attempts"])
        return outbox.Change(
            msg, "retrying", now,
            {"reason": reason, "attempt": msg["attempts"], "next_attempt_at": nxt.isoformat()},
            {"next_attempt_at": nxt, "reason": reason, "approved_at": None}, profile,
        )  # fmt: skip

    def _paced(self, ws: ws_api.Workspace, msg: dict, profile: dict) -> bool:
        """Caps and quiet hours again at send time (other messages may have gone out since it was queued)."""
        if msg["kind"] == "transactional":
            return False
        settings = ws.settings.get("messaging") or {}
        if not settings.get("caps") and not settings.get("quiet_hours"):
            return False
        now = self.clock()
        with self.engine.begin() as conn:
            if settings.get("caps") and conn.dialect.name == "postgresql":
                # one worker at a time checks a person's caps; SQLite's BEGIN IMMEDIATE already serialises
                key = f"pace:{msg['workspace_id']}:{profile['id']}"  # her current id: one lock for all her ids
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": key})
            batch = (self._batch_ids, self._approved.get(profile["id"], []))
            paced = outbox.apply_pacing(conn, ws, msg, profile, now, batch)
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
            if settings.get("caps"):  # other workers' checks count it from now on
                conn.execute(messages.update().where(messages.c.id == msg["id"]).values(approved_at=now))
        return False

    def _push_address_alive(self, ws: str, msg: dict) -> bool:
        from chorus.store.tables import dead_addresses, push_subscriptions

        with read_only(self.engine) as conn:
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
        topics = (ws.settings.get("messaging") or {}).get("topics")
        d = policy.consent_decision(profile, msg["channel"], msg["topic"], msg["kind"], topics)
        return None if d.allowed else f"consent withdrawn before delivery: {d.reason}"


def _current_profiles(conn, ws: ws_api.Workspace, pids: list[str]) -> dict[str, dict]:
    """The views of the people these messages were sent to, by the id each message keeps: a message keeps the
    profile id it was queued for, and a merge since (a visitor who signed up) makes it an alias of the survivor
    (review: the merged-away id found no profile, and the message was skipped as if she had been erased)."""
    current = views.resolve_ids(conn, ws.id, pids)
    found = views.get_profiles(conn, ws.id, sorted(set(current.values())), ws.identity)
    return {pid: found[cur] for pid, cur in current.items() if cur in found}


def warn_sinks(engine: Engine, fallback: dict[str, dict] | None = None) -> list[str]:
    """Say loudly, once when a worker starts, where messages are kept instead of sent: each workspace channel
    whose provider is a sink, and dev mode's sinks for channels without a provider. Returns the warnings."""
    from chorus.messaging.providers import is_sink
    from chorus.messaging.providers.sink import outbox_root

    said = []
    if fallback:
        said.append(f"dev mode: messages to a channel without a provider ({', '.join(sorted(fallback))}) are "
                    f"written to files under {outbox_root()}, not sent")  # fmt: skip
    try:
        with read_only(engine) as conn:
            found = ws_api.list_all(conn)
    except sa.exc.SQLAlchemyError:  # no schema yet (a worker started before the first migration): nothing to say
        found = []
    for ws in found:
        for channel, confs in (((ws.settings or {}).get("messaging") or {}).get("providers") or {}).items():
            for i, conf in enumerate(confs or []):
                where = f"settings.messaging.providers.{channel}[{i}]"
                if not isinstance(conf, dict) or not conf.get("type"):
                    continue
                try:
                    prov = build(conf, where, resolve_secrets=False, channel=channel, workspace=ws.name)
                except Exception:  # noqa: BLE001 - unusable here (a CA file missing on this host...): said when
                    continue  # a message needs it; a start must never fail for one workspace's settings
                if is_sink(prov):
                    said.append(f"workspace {ws.name} ({ws.id}): {where} is a sink: {prov.describe()}")
    for line in said:
        logging.getLogger("chorus.messaging").warning("%s", line)
    return said


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
