"""The event lake: the store's events, messages (with their status history) and profiles as Parquet files under
one directory, exported incrementally and idempotently (``chorus lake export``). Analytics read the lake, never
the production store.

Layout (Hive-style partitions that DuckDB, Spark, pandas and pyarrow read as columns)::

    events/workspace_id=<ws>/date=<YYYY-MM-DD>/part-<first seq>-<last seq>.parquet   appended, by event time
    messages/workspace_id=<ws>/date=<YYYY-MM-DD>/messages.parquet                    a day rewritten when one
    message_statuses/workspace_id=<ws>/date=<YYYY-MM-DD>/statuses.parquet             of its messages changed
    profiles/workspace_id=<ws>/profiles.parquet                                      rewritten every run
    profile_aliases/workspace_id=<ws>/aliases.parquet                                merged-away id -> current id
    _chorus_lake.json                                                                what has been exported
    .chorus_lake.lock                                                                held by the running export

Events are immutable once resolved, so they are appended: a run exports the events after the last exported
``seq`` that are resolved and were received at least ``settle`` ago (a transaction still open when the run starts
cannot slip under the watermark unless it stays open that long). Their ``profile_id`` is the profile at export
time; a later merge makes it an alias, which ``profile_aliases`` maps to the current profile. Messages change
(statuses arrive for days), so the days (of creation) with a message updated since the last run are rewritten
whole, with the status history of their messages. Every file is written to a temporary name and renamed, and the
watermarks are saved last: a run that stops half-way leaves files past the watermark, which the next run deletes
before writing them again, so re-running never duplicates a row. The lake belongs to one store, whose id it
records, and a run checks that the store did not go back behind the marks (a restore): decision 0054.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import os
import re
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from chorus.profiles.privacy import erased_hash
from chorus.store import bulk
from chorus.store.tables import (
    erasures,
    events,
    message_status,
    messages,
    profile_aliases,
    profiles,
    store_identity,
    workspaces,
)
from chorus.timeutil import utcnow

STATE_FILE = "_chorus_lake.json"
LOCK_FILE = ".chorus_lake.lock"  # held (flock) by the export writing the lake
LOCK_TRIES = 10  # about 0.2 s: past a reader's instant probe, not a wait for another export
CHUNK = 50_000  # events read and written per step: bounds memory whatever the backlog
SETTLE = timedelta(seconds=60)
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")

TS = pa.timestamp("us", tz="UTC")
EVENT_SCHEMA = pa.schema([
    ("seq", pa.int64()), ("message_id", pa.string()), ("type", pa.string()), ("event", pa.string()),
    ("channel", pa.string()), ("user_id", pa.string()), ("anonymous_id", pa.string()), ("profile_id", pa.string()),
    ("timestamp", TS), ("received_at", TS), ("source_id", pa.string()), ("trusted", pa.bool_()),
    # the Segment fields analytics need most, extracted once here so that every engine reads plain columns
    ("revenue", pa.float64()), ("currency", pa.string()), ("order_id", pa.string()),
    ("campaign_name", pa.string()), ("campaign_source", pa.string()), ("campaign_medium", pa.string()),
    ("direction", pa.string()), ("chorus_message_id", pa.string()),
    ("campaign_id", pa.string()), ("journey_id", pa.string()), ("variant", pa.string()), ("category", pa.string()),
    ("payload", pa.string()),  # the whole event as JSON
])  # fmt: skip
MESSAGE_SCHEMA = pa.schema([
    ("id", pa.string()), ("profile_id", pa.string()), ("template", pa.string()), ("kind", pa.string()),
    ("topic", pa.string()), ("channel", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("journey_id", pa.string()), ("campaign_id", pa.string()), ("provider", pa.string()), ("attempts", pa.int32()),
    ("created_at", TS), ("sent_at", TS), ("updated_at", TS), ("choice", pa.string()),
])  # fmt: skip
STATUS_SCHEMA = pa.schema([
    ("id", pa.int64()), ("message_id", pa.string()), ("status", pa.string()), ("at", TS), ("detail", pa.string()),
])  # fmt: skip
PROFILE_SCHEMA = pa.schema([
    ("id", pa.string()), ("known", pa.bool_()), ("created_at", TS), ("first_seen", TS), ("last_seen", TS),
    ("last_channel", pa.string()), ("traits", pa.string()), ("channels", pa.string()), ("updated_at", TS),
])  # fmt: skip
ALIAS_SCHEMA = pa.schema([("alias_id", pa.string()), ("profile_id", pa.string())])


@dataclass
class ExportResult:
    events: int = 0
    event_files: int = 0
    message_days: int = 0
    messages: int = 0
    profiles: int = 0
    removed_orphans: int = 0
    erased_profiles: int = 0
    files_rewritten_for_erasure: int = 0
    workspaces: list[str] = field(default_factory=list)
    # what this run left for a later one (nothing is dropped: the watermark stays before them)
    settle_seconds: float = 0.0
    settling: int = 0  # events stored less than settle_seconds ago
    settled_from: datetime | None = None  # when the first of them may be exported
    settled_by: datetime | None = None  # when the last of them may be
    unresolved: int = 0  # events waiting for identity resolution
    behind_unresolved: int = 0  # resolved, settled events after the first unresolved one: they wait with it

    @property
    def held_back(self) -> int:
        """Events stored but not exported by this run."""
        return self.settling + self.unresolved + self.behind_unresolved

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("settled_from", "settled_by"):
            d[k] = d[k].isoformat() if d[k] else None
        d["held_back"] = self.held_back
        return d

    def held_back_text(self) -> str | None:
        """Why some stored events are not in the lake yet, and when they will be; None when all are."""
        parts = []
        if self.settling:
            when = self.settled_from.strftime("%H:%M:%S")
            if self.settled_by != self.settled_from:
                when = f"from {when} to {self.settled_by.strftime('%H:%M:%S')}"
            parts.append(
                f"{self.settling} events stored in the last {self.settle_seconds:g} s are held back until they "
                f"settle (--settle {self.settle_seconds:g}): they can be exported {when} UTC"
            )
        if self.unresolved:
            parts.append(
                f"{self.unresolved} events wait for identity resolution (a running `chorus worker` or `chorus serve` "
                f"resolves them)" + (f", and {self.behind_unresolved} resolved events after the first of them wait "
                                     "with them" if self.behind_unresolved else "")
            )
        if not parts:
            return None
        return "; ".join(parts) + "; the next `chorus lake export` after that adds them."


class LakeConflict(ValueError):
    """The lake cannot be brought up to date from this store as it is (another export holds it, it belongs to
    another store, or the store went back behind it): the run refuses, saying why and what to do (exit 2)."""


def export(engine: Engine, out: str | Path, *, settle: timedelta = SETTLE, now: datetime | None = None) -> ExportResult:
    """Bring the lake at ``out`` up to date with the store; returns what was written. One run at a time per lake
    (a lock file in it): a second run started meanwhile fails at once, changing nothing (decision 0054)."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        return _export(engine, root, settle, now or utcnow())


def _export(engine: Engine, root: Path, settle: timedelta, now: datetime) -> ExportResult:
    state = _load_state(root)
    cutoff = now - settle
    result = ExportResult()
    store_id = _store_id(engine)
    if state.get("store_id") not in (None, store_id):
        raise LakeConflict(
            f"the lake at {root} was exported from another store (store id {state['store_id']}; the store at --db "
            f"is {store_id}): nothing was changed. Export this store into its own, new --out directory"
        )
    with engine.connect() as conn:
        behind = _went_back(conn, state)
        if behind and behind[0] == "events":
            held = _numbers_of_erased_events(conn, root, state)
            if held is not None:
                state["events_seq"], behind = held, None  # the lake's mark goes back with the store's numbers
        if behind:
            # the lake's rows can no longer be matched with the store's: nothing is exported, but every person the
            # store has erased leaves the lake now, whatever the marks say (an erasure never waits for a rebuild)
            everyone = conn.execute(sa.select(erasures.c.profile_hashes)).scalars().all()
            _forget(root, {h for hashes in everyone for h in hashes}, result)
            raise LakeConflict(
                f"the store went back behind the lake at {root}: {behind[1]}. A store restored from a backup does "
                "this; its new events and erasures would be skipped. This run exported nothing; it removed from the "
                f"lake every person the store has erased ({result.files_rewritten_for_erasure} files rewritten). "
                "Rebuild the lake: export into a new, empty --out directory, point the readers ($CHORUS_LAKE_DIR, "
                "--lake) at it, then delete this one"
            )
        result.removed_orphans = _remove_orphans(root, state["events_seq"])
        erased_upto = state["erasures_id"]
        gone = conn.execute(sa.select(erasures).where(erasures.c.id > erased_upto).order_by(erasures.c.id)).all()
        if gone:  # first, so that nothing of an erased person survives this run
            _forget(root, {h for r in gone for h in r.profile_hashes}, result)
            rewritten = {s for r in gone for s in (r.rewritten_seqs or ())}
            _rewrite(conn, root, rewritten, state["events_seq"], gone[-1].id, result)
            erased_upto = gone[-1].id
        result.workspaces = sorted(conn.execute(sa.select(workspaces.c.id)).scalars())
        seq = _export_events(conn, root, state["events_seq"], cutoff, result)
        _held_back(conn, seq, cutoff, settle, result)
        since = datetime.fromisoformat(state["messages_cutoff"]) if state.get("messages_cutoff") else None
        _export_messages(conn, root, since, result)
        _export_profiles(conn, root, result)
        # what the marks point at, so that the next run can tell a store that went back (see _went_back)
        last = conn.execute(sa.select(events.c.message_id).where(events.c.seq == seq)).scalar() if seq else None
        mark = conn.execute(sa.select(erasures).where(erasures.c.id == erased_upto)).first() if erased_upto else None
    state.update({"store_id": store_id, "events_seq": seq, "events_last": last,
                  "messages_cutoff": cutoff.isoformat(), "erasures_id": erased_upto,
                  "erasures_last": _erasure_print(mark) if mark is not None else None,
                  "exported_at": now.isoformat()})  # fmt: skip
    _save_state(root, state)
    return result


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Hold the lake's lock file (flock, exclusive) for the run: two overlapping runs would both read the same
    watermark and write the same events twice. A second run fails at once rather than wait: runs on a schedule
    would pile up behind a slow one, and the next scheduled run picks up what this one would have done."""
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for attempt in range(LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # a report's reader probes the lock (shared, for an instant) to tell a changing lake from a damaged
                # one (engine._export_running): a few short tries before calling it another export (review)
                if attempt < LOCK_TRIES - 1:
                    time.sleep(0.02)
        else:
            raise LakeConflict(
                f"another `chorus lake export` is writing the lake at {root} (it holds {root / LOCK_FILE}): this run "
                "changed nothing; run it again when that one has finished"
            ) from None
        yield  # the lock goes with the descriptor; the file stays (removing it would let a third run lock another)
    finally:
        os.close(fd)


def _store_id(engine: Engine) -> str:
    """The store's id: made once (by migration 0022, or here for a store whose row was removed), kept by its
    backups and copies. The lake records it, so that another store's export into the lake is refused."""
    if not sa.inspect(engine).has_table(store_identity.name):
        raise LakeConflict("the store at --db has no id for the lake to check (it was made by an older Chorus): "
                           "run `chorus db upgrade` on it first")  # fmt: skip
    with engine.connect() as conn:
        found = conn.execute(sa.select(store_identity.c.id).where(store_identity.c.key == "store")).scalar()
    if found:
        return found
    try:
        with engine.begin() as conn:
            conn.execute(store_identity.insert().values(key="store", id=f"st_{uuid.uuid4().hex}", created_at=utcnow()))
    except sa.exc.IntegrityError:
        pass  # another process made it first: theirs is the id
    with engine.connect() as conn:
        return conn.execute(sa.select(store_identity.c.id).where(store_identity.c.key == "store")).scalar_one()


def _erasure_print(row) -> str:
    """What identifies an erasure beyond its number (which a restored store gives again to another erasure)."""
    doc = [row.workspace_id, sorted(row.profile_hashes or []), _utc(row.erased_at).isoformat()]
    return hashlib.sha256(orjson.dumps(doc)).hexdigest()


def _went_back(conn, state: dict) -> tuple[str, str] | None:
    """Which numbering of the store went back behind the lake's marks ("events" or "erasures") and why, or None.
    The marks are numbers the store hands out once, except after a restore from a backup (and SQLite gives the
    numbers of the last rows again when they were deleted): then events and erasures with numbers at or below the
    marks are new, and would be skipped."""
    mark = state["erasures_id"]
    if mark:
        row = conn.execute(sa.select(erasures).where(erasures.c.id == mark)).first()
        if row is None:
            return "erasures", f"it has no erasure {mark}, the last one the lake applied"
        if state.get("erasures_last") and _erasure_print(row) != state["erasures_last"]:
            return "erasures", f"its erasure {mark} is not the one the lake applied under that number"
    mark = state["events_seq"]
    if mark:
        at_mark = conn.execute(sa.select(events.c.message_id).where(events.c.seq == mark)).first()
        if at_mark is not None and state.get("events_last") and at_mark.message_id != state["events_last"]:
            return "events", f"its event {mark} is not the one the lake exported under that number"
        since = state.get("exported_at")
        top = conn.execute(
            sa.select(events.c.seq, events.c.received_at).where(events.c.seq <= mark).order_by(events.c.seq.desc())
            .limit(1)
        ).first()  # fmt: skip
        if since and top is not None and _utc(top.received_at) > datetime.fromisoformat(since):
            return "events", (f"its event {top.seq} (at or below {mark}, the last the lake exported) was stored "
                              "after the lake's last export")  # fmt: skip
    return None


def _numbers_of_erased_events(conn, root: Path, state: dict) -> int | None:
    """SQLite gives the next event the number after the highest one left, so erasing the person of the last
    exported events hands their numbers to new events without any restore. That is the case when, once the
    erasures are applied, the lake holds no event above some number ``held`` and the store holds only new events
    (stored after the last export) between it and the mark: returns ``held``, from where the export goes on.
    None when the lake holds events the store lost (a restore)."""
    pending = conn.execute(
        sa.select(erasures.c.profile_hashes).where(erasures.c.id > state["erasures_id"])
    ).scalars().all()  # fmt: skip
    if pending:  # the erased rows leave the lake first (applied again, with the rest, by the run)
        _forget(root, {h for hashes in pending for h in hashes}, ExportResult())
    held = _lake_max_seq(root)
    mark, since = state["events_seq"], state.get("exported_at")
    if held >= mark or not since:
        return None
    old = conn.execute(
        sa.select(sa.func.count()).where(events.c.seq > held, events.c.seq <= mark,
                                         events.c.received_at <= datetime.fromisoformat(since))
    ).scalar()  # fmt: skip
    return None if old else held


def _lake_max_seq(root: Path) -> int:
    """The highest event number in the lake's files (from their footers' statistics, else their seq column)."""
    top = 0
    for path in (root / "events").glob("workspace_id=*/date=*/*.parquet"):
        meta = pq.ParquetFile(path).metadata
        col = meta.schema.names.index("seq")
        for i in range(meta.num_row_groups):
            stats = meta.row_group(i).column(col).statistics
            if stats is None or not stats.has_min_max:
                top = max(top, pc.max(pq.ParquetFile(path).read(columns=["seq"])["seq"]).as_py() or 0)
                break
            top = max(top, stats.max)
    return top


# -- events -------------------------------------------------------------------------------------------------------
def _export_events(conn, root: Path, after: int, cutoff: datetime, result: ExportResult) -> int:
    """Append resolved, settled events after ``after``; returns the new watermark."""
    first_pending = conn.execute(sa.select(sa.func.min(events.c.seq)).where(events.c.profile_id.is_(None))).scalar()
    upper = conn.execute(
        sa.select(sa.func.max(events.c.seq)).where(events.c.seq > after, events.c.received_at <= cutoff)
    ).scalar()
    if upper is None:
        return after
    if first_pending is not None:
        upper = min(upper, first_pending - 1)
    watermark = after
    while watermark < upper:
        rows = conn.execute(
            sa.select(events).where(events.c.seq > watermark, events.c.seq <= upper).order_by(events.c.seq).limit(CHUNK)
        ).all()
        if not rows:
            break
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for r in rows:
            groups[(r.workspace_id, r.timestamp.date().isoformat())].append(r)
        for (ws, day), part in groups.items():
            path = root / "events" / f"workspace_id={ws}" / f"date={day}" / f"part-{part[0].seq}-{part[-1].seq}.parquet"
            _write(path, _event_table(part))
            result.event_files += 1
        result.events += len(rows)
        watermark = rows[-1].seq
    return max(watermark, after)


def _held_back(conn, watermark: int, cutoff: datetime, settle: timedelta, result: ExportResult) -> None:
    """Count the stored events after the new watermark and say why each waits: inside the settle window (and when
    it ends for them), unresolved, or behind an unresolved one."""
    result.settle_seconds = settle.total_seconds()
    after = events.c.seq > watermark
    n, first, last = conn.execute(
        sa.select(sa.func.count(), sa.func.min(events.c.received_at), sa.func.max(events.c.received_at))
        .where(after, events.c.received_at > cutoff)
    ).one()  # fmt: skip
    result.settling = int(n)
    if n:
        result.settled_from, result.settled_by = _utc(first) + settle, _utc(last) + settle
    unresolved, rest = conn.execute(
        sa.select(
            sa.func.count().filter(events.c.profile_id.is_(None)),
            sa.func.count().filter(events.c.profile_id.is_not(None)),
        ).where(after, events.c.received_at <= cutoff)
    ).one()
    result.unresolved, result.behind_unresolved = int(unresolved), int(rest)


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)  # SQLite returns naive UTC


def _event_table(rows: list) -> pa.Table:
    cols: dict[str, list] = {name: [] for name in EVENT_SCHEMA.names}
    for r in rows:
        p = r.payload if isinstance(r.payload, dict) else {}
        props = p.get("properties") if isinstance(p.get("properties"), dict) else {}
        ctx = p.get("context") if isinstance(p.get("context"), dict) else {}
        camp = ctx.get("campaign") if isinstance(ctx.get("campaign"), dict) else {}
        for name, value in (
            ("seq", r.seq), ("message_id", r.message_id), ("type", r.type), ("event", r.event),
            ("channel", r.channel), ("user_id", r.user_id), ("anonymous_id", r.anonymous_id),
            ("profile_id", r.profile_id), ("timestamp", r.timestamp), ("received_at", r.received_at),
            ("source_id", r.source_id), ("trusted", r.trusted),
            ("revenue", _number(props.get("revenue", props.get("total")))), ("currency", _text(props.get("currency"))),
            ("order_id", _text(props.get("order_id", props.get("orderId")))),
            ("campaign_name", _text(camp.get("name"))), ("campaign_source", _text(camp.get("source"))),
            ("campaign_medium", _text(camp.get("medium"))), ("direction", _text(ctx.get("direction"))),
            ("chorus_message_id", _text(props.get("message_id")) if r.message_id.startswith("chorus-") else None),
            ("campaign_id", _text(props.get("campaign_id"))), ("journey_id", _text(props.get("journey_id"))),
            ("variant", _text(props.get("variant"))), ("category", _category(props)),
            ("payload", orjson.dumps(p).decode()),
        ):  # fmt: skip
            cols[name].append(value)
    return pa.table(cols, schema=EVENT_SCHEMA)


def _remove_orphans(root: Path, watermark: int) -> int:
    """Delete event files a stopped run wrote past the saved watermark (they are written again)."""
    removed = 0
    base = root / "events"
    if not base.exists():
        return 0
    for path in base.glob("workspace_id=*/date=*/part-*.parquet"):
        m = _PART.fullmatch(path.name)
        if m and int(m.group(1)) > watermark:
            path.unlink()
            removed += 1
    for tmp in root.rglob("*.parquet.tmp"):
        tmp.unlink()
    return removed


# -- messages -----------------------------------------------------------------------------------------------------
def _export_messages(conn, root: Path, since: datetime | None, result: ExportResult) -> None:
    """Rewrite every (workspace, day of creation) that holds a message changed since ``since``."""
    q = sa.select(messages.c.workspace_id, messages.c.created_at)
    if since is not None:
        q = q.where(messages.c.updated_at > since)
    days = sorted({(ws, created.date()) for ws, created in conn.execute(q)})
    for ws, day in days:
        lo = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        rows = conn.execute(
            sa.select(messages)
            .where(messages.c.workspace_id == ws, messages.c.created_at >= lo,
                   messages.c.created_at < lo + timedelta(days=1))
            .order_by(messages.c.created_at, messages.c.id)
        ).all()  # fmt: skip
        ids = [r.id for r in rows]
        statuses = []
        for i in range(0, len(ids), 500):
            statuses.extend(conn.execute(
                sa.select(message_status)
                .where(bulk.in_(message_status.c.message_id, ids[i : i + 500], conn.dialect.name))
                .order_by(message_status.c.id)
            ).all())  # fmt: skip
        part = f"workspace_id={ws}/date={day.isoformat()}"
        _write(root / "messages" / part / "messages.parquet", _message_table(rows))
        _write(root / "message_statuses" / part / "statuses.parquet", _status_table(statuses))
        result.message_days += 1
        result.messages += len(rows)


def _message_table(rows: list) -> pa.Table:
    return pa.table({
        "id": [r.id for r in rows], "profile_id": [r.profile_id for r in rows], "template": [r.template for r in rows],
        "kind": [r.kind for r in rows], "topic": [r.topic for r in rows], "channel": [r.channel for r in rows],
        "status": [r.status for r in rows], "reason": [r.reason for r in rows],
        "journey_id": [r.journey_id for r in rows], "campaign_id": [r.campaign_id for r in rows],
        "provider": [r.provider for r in rows], "attempts": [r.attempts for r in rows],
        "created_at": [r.created_at for r in rows], "sent_at": [r.sent_at for r in rows],
        "updated_at": [r.updated_at for r in rows], "choice": [orjson.dumps(r.choice).decode() for r in rows],
    }, schema=MESSAGE_SCHEMA)  # fmt: skip


def _status_table(rows: list) -> pa.Table:
    return pa.table({
        "id": [r.id for r in rows], "message_id": [r.message_id for r in rows], "status": [r.status for r in rows],
        "at": [r.at for r in rows], "detail": [orjson.dumps(r.detail).decode() for r in rows],
    }, schema=STATUS_SCHEMA)  # fmt: skip


# -- profiles -----------------------------------------------------------------------------------------------------
def _export_profiles(conn, root: Path, result: ExportResult) -> None:
    """Rewrite each workspace's profiles and aliases (profiles change with every event)."""
    for ws in result.workspaces:
        cols: dict[str, list] = {name: [] for name in PROFILE_SCHEMA.names}
        q = sa.select(profiles).where(profiles.c.workspace_id == ws).order_by(profiles.c.id)
        for r in conn.execution_options(yield_per=5000).execute(q):
            state = r.state if isinstance(r.state, dict) else {}
            for name, value in (
                ("id", r.id), ("known", r.known), ("created_at", r.created_at), ("first_seen", r.first_seen),
                ("last_seen", r.last_seen), ("last_channel", r.last_channel),
                ("traits", orjson.dumps(state.get("traits") or {}).decode()),
                ("channels", orjson.dumps(state.get("channels") or {}).decode()), ("updated_at", r.updated_at),
            ):  # fmt: skip
                cols[name].append(value)
        _write(root / "profiles" / f"workspace_id={ws}" / "profiles.parquet", pa.table(cols, schema=PROFILE_SCHEMA))
        result.profiles += len(cols["id"])
        aliases = conn.execute(
            sa.select(profile_aliases.c.alias_id, profile_aliases.c.profile_id)
            .where(profile_aliases.c.workspace_id == ws)
            .order_by(profile_aliases.c.alias_id)
        ).all()
        table = pa.table({"alias_id": [a for a, _ in aliases], "profile_id": [p for _, p in aliases]},
                         schema=ALIAS_SCHEMA)  # fmt: skip
        _write(root / "profile_aliases" / f"workspace_id={ws}" / "aliases.parquet", table)


# -- erasure ------------------------------------------------------------------------------------------------------
def _forget(root: Path, hashes: set[str], result: ExportResult) -> None:
    """Remove erased people's rows from the files already written: their events, messages and statuses.
    ``erasures`` keeps SHA-256 hashes of the profile ids, so the ids in each file are hashed to find them."""
    result.erased_profiles += len(hashes)
    for path in sorted((root / "events").glob("workspace_id=*/date=*/*.parquet")):
        ids = _erased_in(pq.ParquetFile(path).read(columns=["profile_id"])["profile_id"], hashes)
        if ids is not None:
            _drop_rows(path, "profile_id", ids)
            result.files_rewritten_for_erasure += 1
    for path in sorted((root / "messages").glob("workspace_id=*/date=*/messages.parquet")):
        table = pq.ParquetFile(path).read(columns=["id", "profile_id"])
        ids = _erased_in(table["profile_id"], hashes)
        if ids is None:
            continue
        theirs = table.filter(pc.is_in(table["profile_id"], value_set=ids))["id"].combine_chunks()
        _drop_rows(path, "profile_id", ids)
        statuses = root / "message_statuses" / path.parent.relative_to(root / "messages") / "statuses.parquet"
        if statuses.exists():
            _drop_rows(statuses, "message_id", theirs)
        result.files_rewritten_for_erasure += 1


def _rewrite(conn, root: Path, seqs: set[int], watermark: int, erasure_id: int, result: ExportResult) -> None:
    """Other people's events an erasure rewrote in the store (a claimant's event that carried the erased person's
    email): their exported rows are replaced by the store's current version. Those not exported yet (after the
    watermark) are exported as they are now by the normal run."""
    seqs = {s for s in seqs if s <= watermark}
    if not seqs:
        return
    wanted = pa.array(sorted(seqs), pa.int64())
    for path in sorted((root / "events").glob("workspace_id=*/date=*/*.parquet")):
        column = pq.ParquetFile(path).read(columns=["seq"])["seq"]
        if pc.any(pc.is_in(column, value_set=wanted)).as_py():
            _drop_rows(path, "seq", wanted)
            result.files_rewritten_for_erasure += 1
    rows = []
    for i in range(0, len(wanted), 5000):
        part = wanted[i : i + 5000].to_pylist()
        rows += conn.execute(sa.select(events).where(events.c.seq.in_(part)).order_by(events.c.seq)).all()
    groups: dict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        if r.profile_id is not None:  # still an event of someone: written again, without the erased person
            groups[(r.workspace_id, r.timestamp.date().isoformat())].append(r)
    for (ws, day), part in groups.items():
        # "part-<first>-<last>-e<erasure>": a name the orphan sweep (part-<first>-<last>) leaves alone
        path = root / "events" / f"workspace_id={ws}" / f"date={day}" / (
            f"part-{part[0].seq}-{part[-1].seq}-e{erasure_id}.parquet")  # fmt: skip
        _write(path, _event_table(part))


def _erased_in(column: pa.ChunkedArray, hashes: set[str]) -> pa.Array | None:
    """The profile ids of ``column`` whose hash is in ``hashes``, or None."""
    found = [pid for pid in pc.unique(column).to_pylist() if pid is not None and erased_hash(pid) in hashes]
    return pa.array(found, pa.string()) if found else None


def _drop_rows(path: Path, column: str, values: pa.Array) -> None:
    """Rewrite ``path`` without the rows whose ``column`` is in ``values`` (delete it if none is left)."""
    # ParquetFile reads the file alone (read_table would add the directory's partition columns)
    table = pq.ParquetFile(path).read()
    keep = table.filter(pc.invert(pc.is_in(table[column], value_set=values)))
    if keep.num_rows:
        _write(path, keep)
    else:
        path.unlink()


# -- files --------------------------------------------------------------------------------------------------------
def _write(path: Path, table: pa.Table) -> None:
    """Write whole or not at all: to a temporary name, then renamed over the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _load_state(root: Path) -> dict:
    """The saved marks, checked: a value of the wrong kind is an error naming the file and the key (never Python's
    words, and never a negative mark that would export everything again without a word)."""
    path = root / STATE_FILE
    if not path.exists():
        return {"events_seq": 0, "erasures_id": 0}
    try:
        state = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); remove it to export everything again") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a JSON object; remove it to export everything again")

    def bad(key: str, what: str) -> ValueError:
        shown = orjson.dumps(state[key]).decode()
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return ValueError(f"{path}: {key!r} must be {what}, not {shown}; remove the file to export everything again")

    for key in ("events_seq", "erasures_id"):
        value = state.setdefault(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise bad(key, "a whole number, 0 or more")
    for key in ("messages_cutoff", "exported_at"):
        value = state.get(key)
        if value is None:
            continue
        try:
            ok = isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
        except ValueError:
            ok = False
        if not ok:
            raise bad(key, "a date and time with its offset (ISO 8601)")
    for key in ("store_id", "events_last", "erasures_last"):
        if state.get(key) is not None and not (isinstance(state[key], str) and state[key]):
            raise bad(key, "text")
    return state


def _save_state(root: Path, state: dict) -> None:
    tmp = root / (STATE_FILE + ".tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    os.replace(tmp, root / STATE_FILE)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None  # "NaN" or "inf" in a payload is not a revenue


def _category(props: dict) -> str | None:
    """A product event's category; an order's is its first product's (Segment's ``products[].category``)."""
    if props.get("category") is not None:
        return _text(props.get("category"))
    products = props.get("products")
    if isinstance(products, list):
        for p in products:
            if isinstance(p, dict) and p.get("category") is not None:
                return _text(p.get("category"))
    return None


def _text(value) -> str | None:
    return None if value is None or isinstance(value, dict | list) else str(value)
