"""Scheduled entries: a journey (or a broadcast) whose entry is a schedule starts everybody in its segment (everybody
without one) at each run.

A run is a row (``journey_runs``), added when it is due, then walked in chunks of profile ids (keyset, so a worker
that dies mid-run resumes after the last chunk it committed, and a million people cost no worker memory):

- a run at a **fixed instant** (``at``, ``every``) gives each person a ``Start`` dated by the run, in the chunk's
  transaction;
- a run at a **local time** (``time`` on a day, or on weekdays) is the calendar day; each person gets a timer at
  that time in her own zone (``journey_timers``, no instance yet), and the timer task starts her then. The run is
  due when the time first happens anywhere (UTC+14), so nobody's local time has passed when her timer is set.

The start's id is the run (and the person, for local runs), so the interpreter's instance id is one per run and
person: a chunk given again after a crash starts nobody twice. Runs missed while no worker ran are not all
replayed: only the latest due one (a daily newsletter missed for a week is sent once, not seven times).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.journeys import runtime, store
from chorus.profiles import feed, views
from chorus.segments import load
from chorus.segments import store as segments_store
from chorus.store.db import read_only
from chorus.store.tables import journeys
from chorus.timeutil import iso

log = logging.getLogger("chorus.journeys")

FIRST_ZONE = ZoneInfo("Etc/GMT-14")  # where a local time happens first (UTC+14, Kiribati)
# From a local time in FIRST_ZONE to the same local time where it happens last (UTC-12): a day's local run is still
# ahead for somebody this long after it began
LOCAL_SPAN = timedelta(hours=26)
CHUNK = 500


def is_local(s: d.Schedule) -> bool:
    return s.time is not None


def next_due(s: d.Schedule, after: datetime) -> datetime | None:
    """The first run strictly after ``after``: a fixed instant, or when a local run's time first happens."""
    return d.next_run(s, after, FIRST_ZONE if is_local(s) else ZoneInfo("UTC"))


def latest_due(conn: Connection, ws: str, jr: store.Journey, s: d.Schedule, at: datetime) -> datetime | None:
    """The journey's latest run due at ``at`` that is not there yet, or None. Only the runs of its current schedule
    count: a schedule changed (another time, another day) plans its own runs from when it was published."""
    since, _published = _since(conn, ws, jr)
    last = store.last_run(conn, ws, jr.id, since)
    after = last if last is not None else began(conn, ws, jr) - timedelta(microseconds=1)
    if last is None and is_local(s):
        # its first day may have begun in UTC+14 before it was published, with 09:00 still hours ahead in Paris or
        # New York (an outside probe: published at 20:00Z on a Saturday, "Sunday 09:00" ran for nobody): that day
        # runs, for the people whose local time is still to come (step_run)
        after -= LOCAL_SPAN
    due, nxt = None, next_due(s, after)
    for _ in range(100_000):  # the latest due run only; bounded (an hourly schedule missed for years)
        if nxt is None or nxt > at:
            break
        due, nxt = nxt, next_due(s, nxt)
    return due


# (workspace, journey, version) -> the version where its schedule took effect, and when that was published
_SINCE: dict[tuple[str, str, int], tuple[int, datetime]] = {}


def _since(conn: Connection, ws: str, jr: store.Journey) -> tuple[int, datetime]:
    key = (ws, jr.id, jr.version)
    if key not in _SINCE:
        _SINCE[key] = store.schedule_since(conn, ws, jr.id, jr.version)
    return _SINCE[key]


def began(conn: Connection, ws: str, jr: store.Journey) -> datetime:
    """When the journey's current schedule started taking people: no run of it starts anybody at a local time
    before that. The journey's first publication, or the publication of the version that changed its schedule (an
    outside probe moved a local-time broadcast to the next day: the old day's starts and the new day's both ran)."""
    since, published = _since(conn, ws, jr)
    first = jr.started_at or jr.created_at
    return first if since == 1 else max(first, published)


def plan(conn: Connection, ws: str, jr: store.Journey, defn: d.Definition, at: datetime) -> datetime | None:
    """Add the journey's latest run due at ``at`` that is not there yet. Returns its instant, or None."""
    s = defn.entry
    assert isinstance(s, d.Schedule)
    due = latest_due(conn, ws, jr, s, at)
    if due is None:
        return None
    store.add_run(conn, ws, jr.id, due, jr.version)
    return due


# (workspace, journey, version) -> its schedule: a published version never changes, so it is parsed once per process
_SCHEDULES: dict[tuple[str, str, int], d.Schedule] = {}


def _to_plan(engine: Engine, at: datetime) -> list[tuple[str, str]]:
    """The scheduled journeys with a run to add at ``at``, read without a write transaction: most passes have none,
    and on SQLite a write transaction takes the one write lock that ingestion waits for (an idle pass took it for
    this alone). :func:`plan` decides again under the lock; a journey whose schedule cannot be read is listed, so
    that its failure is logged there as before."""
    todo = []
    with read_only(engine) as conn:
        for ws, jid in store.scheduled(conn):
            try:
                jr = store.get(conn, ws, jid)
                key = (ws, jid, jr.version)
                if key not in _SCHEDULES:
                    entry = store.definition(conn, ws, jid, jr.version).entry
                    assert isinstance(entry, d.Schedule)
                    _SCHEDULES[key] = entry
                if jr.status == "active" and latest_due(conn, ws, jr, _SCHEDULES[key], at) is None:
                    continue
            except Exception:  # noqa: BLE001 - planned under the lock, where a failure is logged and retried
                pass
            todo.append((ws, jid))
    return todo


def _people(conn: Connection, ws: str, s: d.Schedule, after: str | None, limit: int) -> list[str]:
    if s.segment is None:
        return views.profile_ids_page(conn, ws, after, limit)
    return [m["profile_id"] for m in segments_store.members_page(conn, ws, s.segment, limit, after)]


def step_run(conn: Connection, js: runtime.Journeys, row, at: datetime, chunk: int = CHUNK) -> int:
    """Start one chunk of a run's people (the caller's transaction). Returns how many were started."""
    ws, jid = js.ws.id, row.journey_id
    jr = js.all.get(jid)
    if jr is None or jr.status in ("stopped", "archived"):
        store.move_run(conn, ws, jid, row.run_at, row.after, 0, True)
        return 0
    s = js.defn(jid, row.version).entry
    assert isinstance(s, d.Schedule)
    pids = _people(conn, ws, s, row.after, chunk)
    if is_local(s):
        assert s.time is not None
        day = row.run_at.astimezone(FIRST_ZONE).date()
        people = load.people(conn, ws, pids, js.ws.identity, parts=(), zone_default=js.ws.timezone)
        first = began(conn, ws, jr)
        store.set_timers(conn, ws, [
            {"key": store.start_key(jid, f"run:{day.isoformat()}", pid), "journey_id": jid, "instance_id": "",
             "profile_id": pid, "due_at": due}
            for pid, p in people.items()
            if (due := d.local_instant(day, s.time, p.zone)) >= first  # her time had passed when it was published
        ])  # fmt: skip
    else:
        start = j.scheduled_start(f"run:{iso(row.run_at)}", row.run_at)
        locked = views.lock_people(conn, ws, pids)
        if row.attempts < store.RUN_ATTEMPTS:
            _start(conn, js, jid, locked, start, at)  # the chunk's people together, one claim; a failure: tick
        else:  # failed together RUN_ATTEMPTS times: one person must not stop a run for everybody
            for pid in locked:
                try:
                    with conn.begin_nested():
                        _start(conn, js, jid, [pid], start, at)
                except Exception as exc:  # noqa: BLE001 - she is left out of this run, loudly
                    feed.reraise_transient(exc)
                    log.exception("journey %s: starting profile %s in run %s failed; left out of it", jid, pid,
                                  start.id)  # fmt: skip
                    js = runtime.journeys_of(conn, ws)  # read again: the rollback dropped its cache and locks
    store.move_run(conn, ws, jid, row.run_at, pids[-1] if pids else row.after, len(pids), len(pids) < chunk)
    return len(pids)


def _start(conn: Connection, js: runtime.Journeys, jid: str, pids: list[str], start: j.Start, at: datetime) -> None:
    for claim in runtime.claims(conn, js, pids, at, start.at):
        for run in claim.runs.values():
            run.give(start, only=[jid])
        claim.flush()


def hold(conn: Connection, ws: str, jid: str) -> None:
    """The journey's row, shared, before a run is planned or walked (PostgreSQL; SQLite has one writer). A publish
    holds it exclusively (``manage._lock``), so the two take turns and always in this order: a republish of a
    broadcast sent "now" sees the run planned before it (and keeps its instant), and no plan or walk goes on under
    a publish that changes the schedule (an outside probe: everybody got a broadcast twice; once a deadlock
    between the republish's reschedule and the walk, which had locked the run first)."""
    if conn.dialect.name == "postgresql":
        t = journeys.c
        conn.execute(sa.select(t.id).where(t.workspace_id == ws, t.id == jid).with_for_update(read=True))


def tick(engine: Engine, clock: Callable[[], datetime] | None = None, chunk: int = CHUNK) -> int:
    """One pass: add the runs that are due, then walk one chunk of each open run (one transaction each)."""
    at = (clock or runtime.now)()
    done = 0
    todo = _to_plan(engine, at)
    with engine.begin() if todo else contextlib.nullcontext() as conn:
        for ws, jid in todo:
            hold(conn, ws, jid)
            js = runtime.journeys_of(conn, ws)
            jr = js.all.get(jid)
            if jr is None or jr.status != "active" or jr.entry != "schedule":  # changed since it was read
                continue
            try:  # one journey whose plan fails must not hold up the others' (review: none ran while one failed)
                with conn.begin_nested():
                    plan(conn, ws, jr, js.defn(jid, jr.version), at)
            except Exception as exc:  # noqa: BLE001 - logged, tried again next pass
                feed.reraise_transient(exc)
                log.exception("journey %s: planning its next scheduled run failed; tried again next pass", jid)
    with read_only(engine) as probe:  # on SQLite without the write lock (PostgreSQL: lock_run claims each below)
        open_runs = [(r.workspace_id, r.journey_id, r.run_at) for r in store.runs_open(probe, at)]
        probe.rollback()
    for ws, jid, run_at in open_runs:  # each open run one chunk, whatever the others do
        try:
            with engine.begin() as conn:
                hold(conn, ws, jid)
                row = store.lock_run(conn, ws, jid, run_at)
                if row is not None:
                    done += step_run(conn, runtime.journeys_of(conn, ws), row, at, chunk)
        except Exception as exc:  # noqa: BLE001 - a run that fails must not hold up the other journeys' runs
            feed.reraise_transient(exc)
            log.exception("journey %s: a chunk of its run of %s failed; tried again later", jid, iso(run_at))
            with engine.begin() as conn:  # out of the way until then (runs_open leaves it out)
                store.run_failed(conn, ws, jid, run_at, at, f"{type(exc).__name__}: {exc}")
    return done



def _use(path: str) -> str:
    """Where a journey names a segment (a path of definition.references), as a segment's 409 says it."""
    if path.startswith("entry."):
        return "entry"
    if path.startswith("goal"):
        return "goal"
    if path.startswith("exit"):
        return "exit"
    return f"step '{path.split('.')[1]}'"  # nodes.<id>...: a condition, a wait branch, a split


def takes_no_more(conn: Connection, ws: str, jr: store.Journey, s: d.Schedule) -> bool:
    """A scheduled journey whose current schedule has started everybody it ever will: every run was added (none is
    still to come) and walked, and no local-time start is pending (a one-off broadcast that has gone out)."""
    since, _published = _since(conn, ws, jr)
    last = store.last_run(conn, ws, jr.id, since)
    after = last if last is not None else began(conn, ws, jr) - timedelta(microseconds=1)
    if last is None and is_local(s):
        after -= LOCAL_SPAN  # as latest_due: its first day may still run for those whose time is ahead
    return next_due(s, after) is None and not store.starting(conn, ws, jr.id)


def segment_uses(conn: Connection, ws: str, segment_id: str) -> list[str]:
    """How the workspace's journeys and broadcasts use segment ``segment_id`` (chorus.registry.SegmentUsers), e.g.
    ``journey 'welcome' (entry, step 'vip')``, ``broadcast 'bf'``. Only what can still act counts: a stopped or
    archived one sends nothing more; the entry of a scheduled one whose runs have all started their people (a
    one-off broadcast sent) takes nobody more; steps, goals and exits count for the current version and for every
    version somebody is still inside."""
    out = []
    for jr in sorted(store.all_journeys(conn, ws).values(), key=lambda x: (x.kind != "journey", x.id)):
        if jr.status in ("stopped", "archived"):
            continue
        uses: list[str] = []
        current = store.definition(conn, ws, jr.id, jr.version)
        # a scheduled one whose runs have all started their people (a one-off broadcast sent) takes nobody more:
        # its current version counts only while somebody is inside it, like an older one (review: a sent
        # broadcast's goal held its segment forever)
        done = isinstance(current.entry, d.Schedule) and takes_no_more(conn, ws, jr, current.entry)
        versions = store.versions_inside(conn, ws, jr.id) | (set() if done else {jr.version})
        for version in sorted(versions):
            defn = current if version == jr.version else store.definition(conn, ws, jr.id, version)
            paths = [p for p, kind, name in d.references(defn) if kind == "segment" and name == segment_id]
            if version != jr.version or done:  # nobody enters by this version's entry any more
                paths = [p for p in paths if not p.startswith("entry.")]
            uses += [u for u in map(_use, paths) if u not in uses]
        if not uses:
            continue
        if jr.kind == "broadcast":  # its entry is its audience: "broadcast 'bf'", its goal named
            uses = [u for u in uses if u != "entry"]
        out.append(f"{jr.kind} {jr.id!r}" + (f" ({', '.join(uses)})" if uses else ""))
    return out
