"""The change feed: every change to a profile, recorded in the transaction that makes it, for the deciders.

Whatever changes a profile (an event folded by identity resolution, a merge, a replay of the identity graph,
consent Chorus learns itself, computed traits, a message status, an erasure) calls :func:`record` with the
caller's connection, so the change and its record commit together or not at all. A change names the profile, its
cause, the event it came from (``events.seq``) and, for a merge, the survivor; ``detail`` says what changed (an
event's name and channel, the consent slots, the computed traits, a message's status), so that a consumer can tell
cheaply whether the change can matter to it.

Consumers (segments, journeys; later the lake export and webhooks out) each get their own copy of every change
(a row in ``feed_pending``, written with the change): no shared high-water mark, which would lose changes because
transactions commit out of ``seq`` order. A consumer claims its rows with ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL (any number of workers), handles one person's changes in ``seq`` order, and deletes the rows in the same
transaction as its own effects: a crash rolls back both, so a change is never lost nor applied twice.

One person's changes become visible in ``seq`` order: on PostgreSQL, :func:`record` takes a transaction lock on
the person's bucket before its rows get their ``seq``, so two transactions changing one person commit in the order
of their sequence numbers (SQLite has one writer at a time). A claim takes, per person, only the changes up to the
first one another worker holds, so two workers never handle one person's changes out of order.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import metrics
from chorus.store import bulk, txn
from chorus.store.db import transient
from chorus.store.tables import feed_consumers, feed_pending, profile_changes
from chorus.timeutil import utcnow

log = logging.getLogger("chorus.feed")

CAUSES = ("event", "merge", "replay", "created", "consent", "computed", "message", "segment", "list")
# PostgreSQL advisory locks that order one person's changes (a person maps to one): few enough that a transaction
# changing thousands of people cannot exhaust the server's lock table (max_locks_per_transaction)
BUCKETS = 128
LOCK_SPACE = 0x5EED  # first key of the two-key advisory locks (the identity lock uses the one-key form)
MAX_ATTEMPTS = 5  # a change a consumer failed on this many times is parked (left in feed_pending, not claimed)
PRUNE_BATCH = 10_000
RETENTION = timedelta(days=7)  # handled changes are kept this long for inspection, then pruned


@dataclass(frozen=True, slots=True)
class Change:
    profile_id: str
    cause: str
    event_seq: int | None = None
    target_id: str | None = None  # a merge: the survivor (``profile_id`` is the profile merged into it)
    detail: dict | None = None


@dataclass(frozen=True, slots=True)
class Delivered:
    """A change as a consumer receives it."""

    seq: int
    workspace_id: str
    profile_id: str
    cause: str
    event_seq: int | None
    target_id: str | None
    at: datetime
    detail: dict = field(default_factory=dict)


# (conn, workspace id, profile id, that person's changes in seq order) -> None; raises to have them retried.
# A handler may also have a ``many(conn, {(workspace id, profile id): changes})`` attribute: the whole claim at
# once, so that a consumer can read and write many people in one statement each (the segments engine: decision
# 0034). If it raises, its savepoint is rolled back and the claim is handed over person by person.
Handler = Callable[[Connection, str, str, list[Delivered]], None]


def _bucket(ws: str, profile_id: str) -> int:
    return zlib.crc32(f"{ws}:{profile_id}".encode()) % BUCKETS


# -- interest: which changes a consumer wants a copy of -----------------------------------------------------------
_INTEREST: dict[str, Callable[[Change], bool]] = {}


def interest(consumer: str, wants: Callable[[Change], bool]) -> None:
    """Record only the changes ``wants`` accepts for ``consumer`` (a package declares it when it registers its
    consumer). It must accept every change the consumer could act on: a change it refuses is never handed over.
    Only a static test of the change itself (its cause and detail): what a consumer's definitions say may change
    between the record and the claim (a segment saved meanwhile), so the segments consumer declares none. A process
    that has not loaded the consumer's package records everything for it (a superset is always safe)."""
    _INTEREST[consumer] = wants


def _wanted(consumer: str, c: Change) -> bool:
    wants = _INTEREST.get(consumer)
    if wants is None:
        return True
    try:
        return bool(wants(c))
    except Exception:  # noqa: BLE001 - a broken test must not lose a change: the consumer gets it
        log.exception("the interest of feed consumer %s failed on a %s change; recorded for it", consumer, c.cause)
        return True


# -- recording: buffered in the transaction (chorus.store.txn), written at commit ----------------------------------
# (workspace, Change, at) recorded by the transaction, written at its commit (``_write``), before anything is counted
_CHANGES = txn.Buffer("chorus_feed", lambda conn, pending: _write(conn, pending), order=0)


def record(conn: Connection, ws: str, changes: Iterable[Change], at: datetime | None = None) -> int:
    """Record ``changes`` (in this order) in the caller's transaction, one copy for every consumer. Returns how many.

    The changes are kept on the connection and written when the transaction commits, as its last statements (a
    savepoint rolled back drops those recorded inside it; a rollback drops all). Writing last is what makes the
    person's order safe without deadlocks: on PostgreSQL the write first locks the people's buckets, all of them in
    one sorted acquisition, and takes their sequence numbers under those locks, so two transactions changing one
    person commit in ``seq`` order; and since no transaction takes another lock after these, none can wait for one
    that waits for it (the resolver's identity lock, a message row)."""
    changes = list(changes)
    for c in changes:
        if c.cause not in CAUSES:
            raise ValueError(f"unknown change cause {c.cause!r}")
    if not changes:
        return 0
    at = at or utcnow()
    _CHANGES.add(conn, ((ws, c, at) for c in changes))
    return len(changes)


def _discard(conn: Connection, ws: str, profile_ids: Iterable[str]) -> None:
    """Forget changes recorded earlier in this transaction for these profiles (they are being erased)."""
    ids = set(profile_ids)
    _CHANGES.drop(conn, lambda x: x[0] == ws and x[1].profile_id in ids)


def _write(conn: Connection, pending: list) -> None:
    """The changes a transaction recorded, written in its commit event (class-level, before an engine's own
    listeners: before the SQLite writer queue's "commit" listener lets the next writer in)."""
    rows = [
        {"seq": None, "workspace_id": ws, "profile_id": c.profile_id, "cause": c.cause, "event_seq": c.event_seq,
         "target_id": c.target_id, "at": at, "detail": c.detail or {}}
        for ws, c, at in pending
    ]  # fmt: skip
    if conn.dialect.name == "postgresql":
        keys = sorted({_bucket(ws, c.profile_id) for ws, c, _ in pending})
        # one statement, the keys in ascending order (unnest keeps the array's order): recorders never deadlock
        conn.execute(sa.text("SELECT count(pg_advisory_xact_lock(:space, k)) FROM unnest(CAST(:keys AS int[])) AS k"),
                     {"space": LOCK_SPACE, "keys": keys})  # fmt: skip
        # the sequence numbers are taken after the locks: one person's changes commit in seq order
        seqs = sorted(conn.execute(sa.text("SELECT nextval(pg_get_serial_sequence('profile_changes', 'seq')) "
                                           "FROM generate_series(1, :n)"), {"n": len(rows)}).scalars())  # fmt: skip
        for row, seq in zip(rows, seqs, strict=True):
            row["seq"] = seq
        bulk.insert_rows(conn, profile_changes, rows)
    else:
        # SQLite: one writer at a time, and AUTOINCREMENT: the rows of this executemany take consecutive numbers
        # after the largest ever used (never one a deleted change had)
        for row in rows:
            del row["seq"]
        bulk.insert_rows(conn, profile_changes, rows)
        last = conn.exec_driver_sql("SELECT last_insert_rowid()").scalar_one()
        seqs = list(range(last - len(rows) + 1, last + 1))
    consumers = list(conn.execute(sa.select(feed_consumers.c.name).order_by(feed_consumers.c.name)).scalars())
    if consumers:
        bulk.insert_rows(conn, feed_pending, [
            {"consumer": name, "seq": seq, "workspace_id": ws, "profile_id": c.profile_id, "attempts": 0}
            for name in consumers for seq, (ws, c, _) in zip(seqs, pending, strict=True) if _wanted(name, c)
        ])  # fmt: skip
    metrics.after_commit(conn, lambda: metrics.feed_changes.inc(len(rows)))  # counted after, by the metrics' buffer


def _theirs(ws: str, profile_ids: list[str]):
    """The pending rows of these people, for every consumer. Their index leads with the consumer (a claim reads one
    consumer's rows): without a term on it, both engines read every pending row of every consumer (a scan of
    ``feed_pending`` per merge: 340,000 rows behind a large import). The consumers are the few rows of
    ``feed_consumers``; every pending row names one of them (:func:`subscribe` comes first)."""
    return sa.and_(feed_pending.c.consumer.in_(sa.select(feed_consumers.c.name)), feed_pending.c.workspace_id == ws,
                   feed_pending.c.profile_id.in_(profile_ids))  # fmt: skip


def lock_person(conn: Connection, ws: str, profile_ids: list[str]) -> None:
    """Wait for the consumers that claimed changes of these profiles (PostgreSQL): an erasure calls it before it
    locks the profile row, the order the consumers take them in (their claim, then the person)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(feed_pending.c.seq).where(_theirs(ws, profile_ids))
                     .with_for_update(of=feed_pending)).all()  # fmt: skip


def repoint(conn: Connection, ws: str, merged: str, survivor: str) -> None:
    """A profile merged into another: the changes of the merged one that consumers have not handled yet are handled
    as the survivor's, in one order with hers (one person, one order)."""
    conn.execute(feed_pending.update().where(_theirs(ws, [merged])).values(profile_id=survivor))


def subscribe(engine: Engine, name: str) -> bool:
    """Make ``name`` a consumer: from now on every change is recorded for it too. True when it is new."""
    with engine.begin() as conn:
        done = bulk.insert_rows(conn, feed_consumers, [{"name": name, "since": utcnow()}], conflict=["name"],
                                returning="name")  # fmt: skip
    return bool(done)


def unsubscribe(conn: Connection, name: str) -> None:
    """Stop recording changes for ``name`` and drop what it had not handled."""
    conn.execute(feed_pending.delete().where(feed_pending.c.consumer == name))
    conn.execute(feed_consumers.delete().where(feed_consumers.c.name == name))


# -- consuming --------------------------------------------------------------------------------------------------------
def claim(conn: Connection, consumer: str, limit: int) -> dict[tuple[str, str], list[Delivered]]:
    """Claim up to ``limit`` of ``consumer``'s changes: {(workspace, person): their changes in seq order}.

    A person's changes are taken only up to the first one this claim could not take (another worker holds it), so
    the changes of one person are never handled by two workers at once nor out of order. Parked changes (failed
    MAX_ATTEMPTS times) are neither claimed nor in the way."""
    q = (
        sa.select(feed_pending.c.seq, feed_pending.c.workspace_id, feed_pending.c.profile_id)
        .where(feed_pending.c.consumer == consumer, feed_pending.c.attempts < MAX_ATTEMPTS)
        .order_by(feed_pending.c.seq)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    mine = conn.execute(q).all()
    if not mine:
        return {}
    taken = {r.seq for r in mine}
    people = sorted({r.profile_id for r in mine})
    # every pending change of these people, taken or not: a person's run stops at the first one not taken
    pending: dict[str, list[int]] = {}
    person_of: dict[int, str] = {}  # seq -> the profile it is for now (a merged profile's go to the survivor)
    for part in _chunks(people):
        for seq, pid in conn.execute(
            sa.select(feed_pending.c.seq, feed_pending.c.profile_id).where(
                feed_pending.c.consumer == consumer, feed_pending.c.attempts < MAX_ATTEMPTS,
                bulk.in_(feed_pending.c.profile_id, part, conn.dialect.name),
            )
        ):  # fmt: skip
            pending.setdefault(pid, []).append(seq)
            person_of[seq] = pid
    run: set[int] = set()
    for seqs in pending.values():
        for seq in sorted(seqs):
            if seq not in taken:
                break
            run.add(seq)
    out: dict[tuple[str, str], list[Delivered]] = {}
    for part in _chunks(sorted(run)):
        for r in conn.execute(sa.select(profile_changes).where(bulk.in_(profile_changes.c.seq, part,
                                                                         conn.dialect.name))):  # fmt: skip
            out.setdefault((r.workspace_id, person_of[r.seq]), []).append(
                Delivered(r.seq, r.workspace_id, r.profile_id, r.cause, r.event_seq, r.target_id, r.at, r.detail or {})
            )
    for changes in out.values():
        changes.sort(key=lambda d: d.seq)
    found = {c.seq for changes in out.values() for c in changes}
    handled(conn, consumer, sorted(run - found))  # a change erased meanwhile: nothing left to hand over
    return out


def pending_people(conn: Connection, consumer: str, ws: str, profile_ids: list[str]) -> set[str]:
    """Those of these people who have changes ``consumer`` has not handled yet (parked ones aside)."""
    if not profile_ids:
        return set()
    q = sa.select(feed_pending.c.profile_id).where(
        feed_pending.c.consumer == consumer, feed_pending.c.workspace_id == ws,
        feed_pending.c.attempts < MAX_ATTEMPTS, bulk.in_(feed_pending.c.profile_id, profile_ids, conn.dialect.name),
    ).distinct()  # fmt: skip
    return set(conn.execute(q).scalars())


def pending_events(conn: Connection, consumer: str, ws: str, profile_id: str) -> set[int]:
    """``events.seq`` of the person's event changes ``consumer`` has not handled yet (those of its current claim
    included, until its transaction deletes them): what it has not seen of her events."""
    return pending_events_of(conn, consumer, ws, [profile_id])[profile_id]


def pending_events_of(conn: Connection, consumer: str, ws: str, profile_ids: list[str]) -> dict[str, set[int]]:
    """:func:`pending_events` of several people, in one statement: profile id -> ``events.seq``."""
    out: dict[str, set[int]] = {p: set() for p in profile_ids}
    if not profile_ids:
        return out
    who = feed_pending.c.profile_id
    q = (
        sa.select(who, profile_changes.c.event_seq)
        .join(feed_pending, feed_pending.c.seq == profile_changes.c.seq)
        .where(feed_pending.c.consumer == consumer, feed_pending.c.workspace_id == ws,
               who == profile_ids[0] if len(profile_ids) == 1 else bulk.in_(who, profile_ids, conn.dialect.name),
               profile_changes.c.cause == "event")
    )  # fmt: skip
    for pid, seq in conn.execute(q):
        if seq is not None:
            out.setdefault(pid, set()).add(seq)
    return out


def handled(conn: Connection, consumer: str, seqs: list[int]) -> None:
    for part in _chunks(seqs):
        # one array parameter (bulk.in_): the same statement text whatever the count, so it is compiled and
        # prepared once, not once per length of the list
        conn.execute(feed_pending.delete().where(feed_pending.c.consumer == consumer,
                                                 bulk.in_(feed_pending.c.seq, part, conn.dialect.name)))  # fmt: skip


def failed(conn: Connection, consumer: str, seqs: list[int], error: str) -> None:
    for part in _chunks(seqs):
        conn.execute(
            feed_pending.update()
            .where(feed_pending.c.consumer == consumer, bulk.in_(feed_pending.c.seq, part, conn.dialect.name))
            .values(attempts=feed_pending.c.attempts + 1, error=error[:2000])
        )


def consume(engine: Engine, consumer: str, handle: Handler, limit: int = 500) -> int:
    """One transaction: claim, hand each person's changes to ``handle``, delete what was handled. Returns how many
    changes were handled. A handler with ``many`` gets the whole claim at once (``Handler``); when that fails, it
    is rolled back and each person's changes are handed over alone, as follows.

    A person whose changes ``handle`` fails on is rolled back alone (a savepoint), then her changes are tried one
    by one, in order: those before the failing one are handled, the failing one counts an attempt, the later ones
    wait (her order is kept). After MAX_ATTEMPTS failures a change is parked with its error and her later changes
    go on, so one poisoned change costs a few attempts, not the person's feed."""
    from chorus.store.db import read_only

    with read_only(engine) as conn:  # idle: no write transaction (on SQLite it would take the one write lock)
        waiting = conn.execute(sa.select(feed_pending.c.seq).where(
            feed_pending.c.consumer == consumer, feed_pending.c.attempts < MAX_ATTEMPTS).limit(1)).first()  # fmt: skip
    if waiting is None:
        return 0
    done = 0
    with engine.begin() as conn:
        claimed = dict(sorted(claim(conn, consumer, limit).items()))
        many = getattr(handle, "many", None)
        if many is not None and len(claimed) > 1:
            try:
                with conn.begin_nested():
                    many(conn, claimed)
            except Exception as exc:  # noqa: BLE001 - one person's failure: each person alone, below
                reraise_transient(exc)
                log.warning("change feed consumer %s failed on a claim of %d people; handled one by one: %s",
                            consumer, len(claimed), exc)  # fmt: skip
                metrics.feed_bulk_fallbacks.labels(consumer).inc()
            else:
                seqs = [c.seq for changes in claimed.values() for c in changes]
                handled(conn, consumer, seqs)
                return len(seqs)
        ok: list[int] = []  # handled, deleted in one statement before the commit (one per person cost as much)
        # people in profile id order: every writer that locks several people (segment timers, batches) does too
        for (ws, pid), changes in claimed.items():
            try:
                with conn.begin_nested():
                    handle(conn, ws, pid, changes)
            except Exception as exc:  # noqa: BLE001 - one person's failure must not stop the others
                reraise_transient(exc)
                done += _one_by_one(conn, consumer, handle, ws, pid, changes)
                continue
            ok += [c.seq for c in changes]
            done += len(changes)
        handled(conn, consumer, ok)
    return done


def _one_by_one(conn: Connection, consumer: str, handle: Handler, ws: str, pid: str, changes: list[Delivered]) -> int:
    for i, c in enumerate(changes):
        try:
            with conn.begin_nested():
                handle(conn, ws, pid, [c])
        except Exception as exc:  # noqa: BLE001
            reraise_transient(exc)
            log.exception("change feed consumer %s failed on change %d of profile %s", consumer, c.seq, pid)
            failed(conn, consumer, [c.seq], f"{type(exc).__name__}: {exc}")
            metrics.feed_failures.inc()
            return i
        handled(conn, consumer, [c.seq])
    return len(changes)


def reraise_transient(exc: Exception) -> None:
    """A database that is busy or unavailable (a deadlock, a lost connection) is not the change's fault: the whole
    transaction is abandoned and retried at the next pass, and no attempt is counted."""
    if transient(exc):
        raise exc


def prune(conn: Connection, now: datetime, retention: timedelta = RETENTION) -> int:
    """Delete changes no consumer still has to handle once their ``at`` is ``retention`` old. One statement, so
    that a change committed while it runs is either seen as pending or not deleted; in ``seq`` order, where the old
    changes are, so that no time index is needed (every index costs every change)."""
    old = profile_changes.c.at < now - retention
    unhandled = sa.exists().where(feed_pending.c.seq == profile_changes.c.seq)
    # at most PRUNE_BATCH rows a statement: on SQLite a delete holds the one write lock of the store
    batch = sa.select(profile_changes.c.seq).where(old, ~unhandled).order_by(profile_changes.c.seq).limit(PRUNE_BATCH)
    return conn.execute(profile_changes.delete().where(profile_changes.c.seq.in_(batch))).rowcount


def lag(conn: Connection) -> list[dict]:
    """Per consumer: changes waiting, parked, and the oldest waiting change's time."""
    rows = conn.execute(
        sa.select(
            feed_consumers.c.name,
            sa.func.count(feed_pending.c.seq).filter(feed_pending.c.attempts < MAX_ATTEMPTS),
            sa.func.count(feed_pending.c.seq).filter(feed_pending.c.attempts >= MAX_ATTEMPTS),
            sa.func.min(profile_changes.c.at),
        )
        .select_from(
            feed_consumers.outerjoin(feed_pending, feed_pending.c.consumer == feed_consumers.c.name).outerjoin(
                profile_changes, profile_changes.c.seq == feed_pending.c.seq
            )
        )
        .group_by(feed_consumers.c.name)
        .order_by(feed_consumers.c.name)
    ).all()
    return [{"consumer": n, "waiting": w, "parked": p, "oldest": o} for n, w, p, o in rows]


def changes_of(conn: Connection, ws: str, profile_ids: list[str], limit: int = 100) -> list[dict]:
    """The newest recorded changes of these profiles (a profile and its aliases), newest first."""
    rows = conn.execute(
        sa.select(profile_changes)
        .where(profile_changes.c.workspace_id == ws, profile_changes.c.profile_id.in_(profile_ids))
        .order_by(profile_changes.c.seq.desc())
        .limit(limit)
    ).all()
    return [
        {"seq": r.seq, "profile_id": r.profile_id, "cause": r.cause, "event_seq": r.event_seq,
         "target_id": r.target_id, "at": r.at, "detail": r.detail or {}}
        for r in rows
    ]  # fmt: skip


def _chunks(seq: list, n: int = 5000):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# -- erasure -----------------------------------------------------------------------------------------------------------
TABLES = {"profile_changes": "profile_changes", "feed_pending": "feed_pending"}


def forget(conn: Connection, ws: str, person) -> dict[str, int]:
    """Erasure participant (chorus.registry): the person's recorded changes (hers, and those naming her as a merge's
    survivor) and what consumers had not handled of them go. Consumers are not told through the feed: a change
    would have to name her, and the erasure leaves no byte of her behind. Each consumer's package forgets her in
    the erasure's own transaction, as its erasure participant (segments: segments.store.forget)."""
    ids = person.profile_ids
    t = profile_changes.c
    # hers, and the merges naming her as the survivor: a statement for each, each by its index (one OR of both read
    # every change the workspace kept; the same with the pending rows)
    hers = [sa.and_(t.workspace_id == ws, t.profile_id.in_(ids)), sa.and_(t.workspace_id == ws, t.target_id.in_(ids))]
    pending = sum(conn.execute(feed_pending.delete().where(feed_pending.c.seq.in_(sa.select(t.seq).where(w))))
                  .rowcount for w in hers)  # fmt: skip
    pending += conn.execute(feed_pending.delete().where(_theirs(ws, ids))).rowcount  # handed over to her (a merge)
    counts = {
        "feed_pending": pending,
        "profile_changes": sum(conn.execute(profile_changes.delete().where(w)).rowcount for w in hers),
    }
    _discard(conn, ws, ids)  # changes recorded for her earlier in this transaction are not written either
    return counts


# -- as a worker task -----------------------------------------------------------------------------------------------
class FeedTask:
    """Runs every registered consumer once per worker pass (registry ``consumer``), and prunes now and then."""

    PRUNE_EVERY = 300.0  # seconds
    # A consume transaction holds SQLite's one write lock (PostgreSQL: the people's rows) while it evaluates: 500
    # changes with 20 segments held it for seconds, and resolution and ingestion waited. A pass still handles up
    # to ``batch`` changes of each consumer, but in transactions of about MAX_HOLD seconds each (the resolver's
    # figure, identity.task): each claims as many changes as the consumer handled in MAX_HOLD at its recent rate,
    # at least MIN_BATCH; the first one of a consumer, its rate unknown, claims MIN_BATCH.
    MAX_HOLD = 0.25
    MIN_BATCH = 20
    # PostgreSQL: the feed's tables are re-analysed each time this many changes more were handled (doubling, as the
    # resolver's and the outbox's tables are): a bulk load (1,000,000 customers imported) fills feed_pending faster
    # than autovacuum re-analyses it, and with the statistics of a small table the planner claimed a consumer's
    # first changes by sorting all of them (290 ms a claim at 340,000 waiting, 14 ms once analysed); the claims,
    # sized by time, then shrank to a few changes each
    ANALYZE_EVERY = 2000

    def __init__(self, engine: Engine, consumers: list[tuple[str, Handler]], batch: int = 500):
        from chorus.store.db import FreshStatistics

        self.engine = engine
        self.consumers = consumers
        self.batch = batch
        self._stats = FreshStatistics("profile_changes, feed_pending", self.ANALYZE_EVERY)
        self._pruned_at: float | None = None
        self._rate: dict[str, float] = {}  # consumer -> changes handled per second of transaction, recent passes
        # a consumer receives the changes recorded from the moment its first worker is made, before any pass
        for name, _ in consumers:
            subscribe(engine, name)

    def run_once(self) -> int:
        import time

        done = 0
        for name, handle in self.consumers:
            try:
                done += self._consume(name, handle)
            except Exception:  # one consumer's bad pass (the database busy...) must not stop the others
                log.exception("change feed consumer %s failed; its changes are retried at the next pass", name)
        if self._pruned_at is None or time.monotonic() - self._pruned_at > self.PRUNE_EVERY:
            while True:  # a transaction per batch: other writers get the store between them
                with self.engine.begin() as conn:
                    if prune(conn, utcnow(), RETENTION) < PRUNE_BATCH:
                        break
            self._pruned_at = time.monotonic()
        try:
            self._stats.note(self.engine, done)
        except Exception:  # noqa: BLE001 - statistics are a help to the planner; the pass's work is done
            log.warning("change feed: analysing its tables failed; tried again later", exc_info=True)
        return done

    def limit(self, name: str) -> int:
        """How many changes the next transaction of ``name`` claims: about MAX_HOLD seconds of work."""
        rate = self._rate.get(name)
        if rate is None:
            return self.MIN_BATCH
        return max(self.MIN_BATCH, int(rate * self.MAX_HOLD))

    def _consume(self, name: str, handle: Handler) -> int:
        """Up to ``batch`` changes of one consumer, in transactions sized by time; stops early when one handles
        fewer than it asked for (nothing more waiting, another worker holds the rest, or a change failed). A
        transaction that fails ends the pass, counting what the earlier ones committed (the worker is not idle)."""
        import time

        done = 0
        while done < self.batch:
            want = min(self.batch - done, self.limit(name))
            started = time.perf_counter()
            try:
                n = consume(self.engine, name, handle, want)
            except Exception:  # noqa: BLE001 - its changes are retried at the next pass
                if not done:
                    raise
                log.exception("change feed consumer %s failed; its changes are retried at the next pass", name)
                break
            took = time.perf_counter() - started
            if n and took > 0:  # an idle call says nothing of the rate
                old = self._rate.get(name)
                self._rate[name] = n / took if old is None else 0.5 * (old + n / took)
            done += n
            if n < want:
                break
        return done

    def close(self) -> None:
        pass


