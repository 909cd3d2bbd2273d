"""Publishing and controlling journeys and broadcasts: what the HTTP API and the CLI call (they parse and answer;
the rules are here and in ``definition``).

- **publish**: the definition is validated (``definition.parse``), its references checked against what the
  workspace has (templates and their channels, segments, static lists, audiences), its steps against the effects
  this runtime can carry out, then stored as a new immutable version. People inside keep their version, unless a
  **migration** (``migrate: {old node: new node}``) moves those waiting at an old node to a node of the new version
  of the same kind (a delay to a delay, a wait to a wait): their timers stay, a delay then goes on to the new
  node's next. A **dry run** does all of it and answers how many people the change affects and where they are,
  writing nothing.
- **pause / resume / stop / archive**, safe at any time: paused, inputs are held (nothing is lost, nothing runs);
  resumed, the held inputs are given again in their own time order (``runtime.sweep``); stopped or archived, every
  person inside exits, timers are cancelled, nothing more is sent, and nobody enters.
- **broadcasts**: a one-off or recurring send of one message to a segment is a journey with a scheduled entry and
  one message step (:func:`broadcast_definition`): it runs on the same runtime, with its own endpoint and stats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus import safejson
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.journeys import runtime, store
from chorus.messaging import outbox
from chorus.messaging.audiences import store as audiences_store
from chorus.segments import store as segments_store
from chorus.segments.evaluate import lookup
from chorus.store.tables import journey_instances
from chorus.timeutil import iso

ACTIONS = {"pause": "paused", "resume": "active", "stop": "stopped", "archive": "archived"}
MAX_START_KEY = 200  # characters of an API start's entry key value (an order id, a booking reference)
WAITING_KIND = {"delay": d.Delay, "wait": d.Wait}


def check(conn: Connection, ws: str, defn: d.Definition) -> None:
    """Everything the journey names exists in the workspace, and every step can run here."""
    d.check_references(
        defn, templates=outbox.template_channels(conn, ws), segments=segments_store.ids(conn, ws, hold=True),
        lists={x["id"] for x in segments_store.all_lists(conn, ws)},
        audiences={a["name"] for a in audiences_store.list_all(conn, ws)},
    )  # fmt: skip
    if isinstance(defn.entry, d.SegmentEntry | d.Schedule) and (reads := d.entry_event_reads(defn)):
        # accepted, it would never match: same always false, the condition always "else", the delay "no_date" (an
        # outside probe); checked at publish only, so that a version stored before still loads
        how = "a segment" if isinstance(defn.entry, d.SegmentEntry) else "a schedule"
        raise ChorusError(f"{reads[0]}: reads the entry event's properties, and a journey entered by {how} has "
                          "none (enter it by an event, or read a trait or a segment instead)", field=reads[0])
    following = audiences_store.following(conn, ws)
    for n in defn.nodes:  # an audience that follows a segment takes its members from there only
        if isinstance(n.body, d.AudienceStep) and n.body.audience in following:
            raise ChorusError(f"audience '{n.body.audience}' follows a segment: a journey cannot add or remove people",
                              field=f"nodes.{n.id}.audience")  # fmt: skip
    runtime.supported(defn)


def parse_migrate(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise ChorusError("migrate maps an old node id to a new node id", field="migrate")
    for old, new in raw.items():
        if not d._ID.fullmatch(old):
            raise ChorusError(f"migrate: '{old[:64]}' is not a node id", field="migrate")
        if not d._ID.fullmatch(new):
            raise ChorusError(f"migrate.{old}: '{new[:64]}' is not a node id", field=f"migrate.{old}")
    return dict(raw)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def check_migration(olds: Sequence[d.Definition], new: d.Definition, moves: Mapping[str, str]) -> None:
    """A migration is checked against the definitions, whoever is inside: every old node is a waiting node (a
    delay or a wait) of a published version (``olds``, newest first: the current one, then those people may have
    been left on), and its new node is one of the same kind in ``new``."""
    for node, target in moves.items():
        where = f"migrate.{node}"
        o = next((v.by_id[node] for v in olds if node in v.by_id), None)
        if o is None:
            raise ChorusError(f"{where}: no node '{node}' in any published version of {new.id}", field=where)
        if type(o.body) not in WAITING_KIND.values():
            raise ChorusError(f"{where}: '{node}' is {_a(o.type)} node: only people waiting at a delay or a wait "
                              "can be moved", field=where)  # fmt: skip
        t = new.by_id.get(target)
        if t is None:
            raise ChorusError(f"{where}: no node '{target}' in the new version", field=where)
        if type(t.body) is not type(o.body):
            raise ChorusError(f"{where}: people at '{node}' (a {o.type}) can move only to a node of the same "
                              f"waiting kind, not to '{target}' ({_a(t.type)})", field=where)  # fmt: skip


def _where(conn: Connection, ws: str, jid: str) -> list[tuple[int, str | None, str, int]]:
    t = journey_instances.c
    rows = conn.execute(sa.select(t.version, t.node, t.status, sa.func.count()).where(
        t.workspace_id == ws, t.journey_id == jid, t.status != "exited").group_by(t.version, t.node, t.status)
        .order_by(t.version, t.node, t.status)).all()  # fmt: skip
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def _migration_plan(conn: Connection, ws: str, jid: str, new: d.Definition, migrate: Mapping[str, str],
                    current: int | None) -> list[dict]:  # fmt: skip
    """Per (version, node) of people inside: how many, and where the migration takes them (or why not)."""
    out = []
    for version, node, status, n in _where(conn, ws, jid):
        item = {"version": version, "node": node, "status": status, "people": n}
        target = migrate.get(node or "")
        if target is not None and status == "active" and current is not None:
            old = store.definition(conn, ws, jid, version).by_id.get(node or "")
            tnode = new.by_id.get(target)
            if tnode is None:
                raise ChorusError(f"migrate.{node}: no node '{target}' in the new version", field=f"migrate.{node}")
            if old is None or type(old.body) is not type(tnode.body) or type(old.body) not in WAITING_KIND.values():
                raise ChorusError(  # people left at an older version, where the node is of another kind
                    f"migrate.{node}: people at '{node}' of version {version} ({_a(old.type) if old else 'gone'}) "
                    f"can move only to a node of the same waiting kind (delay or wait), not {_a(tnode.type)}",
                    field=f"migrate.{node}",
                )
            item["moves_to"] = target
        out.append(item)
    return out


def publish(conn: Connection, ws: str, raw: object, now: datetime, *, kind: str = "journey", dry_run: bool = False,
            migrate: object = None) -> dict:  # fmt: skip
    """Validate and publish ``raw`` (decoded JSON) as a new version; with ``dry_run``, only say what it would do."""
    defn = d.parse(raw)
    check(conn, ws, defn)
    moves = parse_migrate(migrate)
    if not dry_run:
        _lock(conn, ws, defn.id)
    try:
        cur = store.get(conn, ws, defn.id, lock=not dry_run)
    except ChorusError:
        cur = None
    if cur is not None and cur.kind != kind:
        raise Conflict(f"{defn.id} is a {cur.kind}, not a {kind}", field="id")
    if moves and cur is None:
        raise ChorusError("nothing to migrate: the journey is new", field="migrate")
    if moves:
        olds = [store.definition(conn, ws, defn.id, cur.version)]
        if any(node not in olds[0].by_id for node in moves):  # people may be left at a node of an older version
            olds += [store.definition(conn, ws, defn.id, v) for v in range(cur.version - 1, 0, -1)]
        check_migration(olds, defn, moves)
    before = store.definition(conn, ws, defn.id, cur.version) if cur is not None else None
    changed = before is None or d.to_json(before)["entry"] != d.to_json(defn)["entry"]
    if isinstance(defn.entry, d.Schedule) and _no_run_left(defn.entry, now) and (
            before is None or not isinstance(before.entry, d.Schedule) or _timing(before.entry) != _timing(defn.entry)):
        # it would be accepted and never run, silently (an outside probe); a version that keeps the times it had
        # (a fixed name after a one-off ran, a new audience for a "now" broadcast that has run) is not refused
        raise ChorusError("entry.schedule: every run of this schedule is in the past (nobody's local time is still "
                          'ahead): give a time to come, or "now" for a broadcast', field="entry.schedule")
    plan = _migration_plan(conn, ws, defn.id, defn, moves, cur.version if cur else None) if cur else []
    answer = {"id": defn.id, "kind": kind, "version": (cur.version + 1) if cur else 1, "dry_run": dry_run,
              "people_inside": sum(p["people"] for p in plan), "where": plan,
              "moving": sum(p["people"] for p in plan if "moves_to" in p)}  # fmt: skip
    if dry_run:
        return answer
    if changed and before is not None and isinstance(before.entry, d.Schedule):
        # a new time, day or audience: the old schedule's starts not reached yet would still run beside the new
        # one's (an outside probe: a broadcast moved to the next day was sent on both days)
        store.reschedule(conn, ws, defn.id)
    version = store.create_version(conn, ws, defn, kind, now)
    if moves:
        _move(conn, ws, defn, version, moves, now)
    runtime.forget_parsed(conn)
    # the version made, under the journey's row lock: what was read before it can be older when another publish
    # of the same id ran in between (an outside probe: two at once both answered version 1)
    return {**answer, "version": version}


LAST_ZONE = ZoneInfo("Etc/GMT+12")  # where a local time happens last (UTC-12)


def _timing(s: d.Schedule) -> d.Schedule:
    """The schedule's times alone (its audience aside)."""
    return replace(s, segment=None)


def _no_run_left(s: d.Schedule, now: datetime) -> bool:
    """No run of ``s`` is still to come at ``now``: a fixed instant past, or a local time passed everywhere."""
    return d.next_run(s, now - timedelta(microseconds=1), LAST_ZONE if s.time is not None else ZoneInfo("UTC")) is None


def _move(conn: Connection, ws: str, new: d.Definition, version: int, moves: Mapping[str, str], now: datetime) -> None:
    t = journey_instances.c
    rows = conn.execute(sa.select(t.id, t.state).where(
        t.workspace_id == ws, t.journey_id == new.id, t.status == "active", t.node.in_(sorted(moves)),
        t.version != version)).all()  # fmt: skip
    for row in rows:
        s = j.state_from_json(row.state)
        target = new.node(moves[s.node or ""])
        s.version, s.node = version, target.id
        if isinstance(target.body, d.Delay):
            for timer in s.timers.values():  # the delay goes on to the new node's next
                if timer.get("purpose") == "delay":
                    timer["next"] = target.body.next
        conn.execute(journey_instances.update().where(t.workspace_id == ws, t.id == row.id).values(
            version=version, node=s.node, state=j.state_to_json(s), updated_at=now))  # fmt: skip


def control(conn: Connection, ws: str, jid: str, action: str, now: datetime) -> dict:
    """pause, resume, stop or archive. Stopping and archiving cannot be undone (publish a new journey instead)."""
    if action not in ACTIONS:
        raise ChorusError(f"action is one of {', '.join(ACTIONS)}", field="action")
    jr = store.get(conn, ws, jid, lock=True)
    status = ACTIONS[action]
    if jr.status == "archived" or (jr.status == "stopped" and status != "archived"):
        raise Conflict(f"{jr.kind} {jid} is {jr.status}", field="action")
    if jr.status == status:
        return view(conn, ws, jid)
    # resume gives the held inputs again; stop and archive tell everybody inside: both left to the sweep task
    sweep = status in ("active", "stopped", "archived")
    store.set_status(conn, ws, jid, status, now, sweep=sweep)
    if status in ("stopped", "archived"):
        # a stopped journey sends nothing more: its messages not gone out yet are withdrawn, whether or not the
        # instance that sent one is still inside (a broadcast's have all left by then: the message was their path);
        # the first batch now, those due first, the rest by the sweep
        runtime.withdraw_stopped(conn, store.get(conn, ws, jid), ws, now)
    runtime.forget_parsed(conn)
    return view(conn, ws, jid)


def view(conn: Connection, ws: str, jid: str) -> dict:
    jr = store.get(conn, ws, jid)
    return {"id": jr.id, "name": jr.name, "kind": jr.kind, "entry": jr.entry, "status": jr.status,
            "version": jr.version, "created_at": iso(jr.created_at), "updated_at": iso(jr.updated_at),
            "versions": store.versions(conn, ws, jid), "runs": store.runs_of(conn, ws, jid) if jr.entry == "schedule"
            else None}  # fmt: skip


def definition_json(conn: Connection, ws: str, jid: str, version: int | None = None) -> dict:
    jr = store.get(conn, ws, jid)
    return d.to_json(store.definition(conn, ws, jid, version or jr.version))


def start(conn: Connection, ws: str, jid: str, profile_id: str, data: object, request_id: str, now: datetime) -> dict:
    """The API entry: start one person (``data``: the start's fields, the entry key among them)."""
    from chorus.profiles import views

    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ChorusError("data is an object", field="data")
    safejson.check(data, "data")
    if len(orjson.dumps(data)) > d.MAX_VALUE:  # kept with her instance, as a tracked event's properties are
        raise ChorusError(f"data is at most {d.MAX_VALUE // 1024} KB as JSON", field="data")
    try:
        jr = store.get(conn, ws, jid)
    except NotFound as exc:
        raise NotFound(exc.message, field="journey_id") from None
    if jr.entry != "api":
        raise ChorusError(f"{jid} is not entered by an API call (its entry is {jr.entry})", field="journey")
    key = store.definition(conn, ws, jid, jr.version).entry_key
    value = lookup(data, key) if key is not None else None
    if isinstance(value, str) and len(value) > MAX_START_KEY:
        raise ChorusError(f"data.{key}: the entry key is at most {MAX_START_KEY} characters", field=f"data.{key}")
    try:
        pid = views.resolve_id(conn, ws, profile_id)
    except NotFound as exc:
        raise NotFound(exc.message, field="profile_id") from None
    return runtime.start_person(conn, ws, jid, pid, j.Start(request_id, now, data), now)


# -- broadcasts --------------------------------------------------------------------------------------------------------
BROADCAST_KEYS = ("id", "name", "segment", "template", "channel", "kind", "topic", "data", "schedule", "goal",
                  "holdout", "holdout_by")  # fmt: skip
# Where each field of a broadcast is in the journey that runs it (:func:`broadcast_definition`), so that an error
# about that journey names the broadcast's own field as the user sent it: (journey path, broadcast field, whether
# what follows the path is kept: ``entry.schedule.at`` is ``schedule.at``, ``nodes.arm.arms[0].holdout`` is
# ``holdout``). The first match wins; a path named by none is left as it is.
BROADCAST_FIELDS = (
    ("entry.schedule.segment", "segment", False),
    ("entry.schedule", "schedule", True),
    ("entry", "schedule", False),
    ("nodes.send.type", "template", False),  # the message step cannot run here
    ("nodes.send", "", True),  # template, channel, channel[1], kind, topic, data.x
    ("nodes.arm.by", "holdout_by", False),
    ("nodes.arm", "holdout", False),  # the holdout split: its arms and weights are the holdout
    ("exit_on_goal", "goal", False),
    ("goal", "goal", True),
    ("id", "id", True),
    ("name", "name", True),
)


def broadcast_field(path: str) -> str:
    """The broadcast's own field for ``path``, a place in the journey that runs it (:data:`BROADCAST_FIELDS`)."""
    for inner, outer, keep in BROADCAST_FIELDS:
        if path == inner:
            return outer or "template"
        if path.startswith((inner + ".", inner + "[")):
            if not keep:  # a place inside it is the broadcast's field itself (nodes.arm.arms[0].holdout: holdout)
                return outer
            rest = path[len(inner):]
            return outer + rest if outer else rest.lstrip(".")
    return path


def _as_broadcast(exc: ChorusError) -> ChorusError:
    """``exc`` (about the journey that runs a broadcast) naming the broadcast's field instead, in its message too."""
    if exc.field is None:
        return exc
    outer = broadcast_field(exc.field)
    if outer == exc.field:
        return exc
    message = exc.message
    if message.startswith(exc.field + ": "):
        message = f"{outer}: {message[len(exc.field) + 2:]}"
    return type(exc)(message, field=outer)


def _lock(conn: Connection, ws: str, jid: str) -> None:
    """Publishes of one id one at a time, a new one too (PostgreSQL; SQLite has one writer): two first publishes at
    once both made version 1, and the second failed on the versions' key. Then the journey's row, which the schedule
    task holds shared while it plans or walks a run (``schedule.hold``), in that order everywhere."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"journey:{ws}:{jid}"})
        try:
            store.get(conn, ws, jid, lock=True)
        except NotFound:
            pass


def _sent_at(conn: Connection, ws: str, jid: str) -> datetime | None:
    """The instant of a one-off broadcast's run, if it has run (None for a recurring one, or one not run yet)."""
    try:
        cur = store.get(conn, ws, jid)
    except NotFound:
        return None
    if cur.kind != "broadcast":
        return None
    entry = store.definition(conn, ws, jid, cur.version).entry
    if not isinstance(entry, d.Schedule) or entry.at is None:
        return None
    last = store.last_run(conn, ws, jid)
    return entry.at if last is not None and last >= entry.at else None


def broadcast_definition(raw: object, now: datetime) -> dict:
    """A broadcast (one message to a segment, once or on a schedule) as the journey that runs it: a scheduled entry,
    an optional holdout split (``holdout``: the percentage kept out, measured against ``goal``; ``holdout_by``: what
    the person's bucket hashes, the split's ``by``), the message, exit.
    ``schedule`` is a journey schedule (``docs/journeys.md``), or "now"."""
    if not isinstance(raw, dict):
        raise ChorusError("broadcast: a broadcast is an object: id, segment, template, schedule, ...",
                          field="broadcast")  # fmt: skip
    for k in raw:
        if k not in BROADCAST_KEYS:
            raise ChorusError(f"{str(k)[:64]}: unknown key; a broadcast has {', '.join(BROADCAST_KEYS)}",
                              field=str(k)[:64])  # fmt: skip
    for k in ("id", "template"):
        if k not in raw:
            raise ChorusError(f"{k}: {k} is required", field=k)
    sched = raw.get("schedule")
    if sched is None or sched == "now":
        sched = {"at": iso(now)}
    if not isinstance(sched, dict):
        raise ChorusError('schedule: schedule is "now" or a schedule object (at, every, time, ...)', field="schedule")
    if "segment" in sched:
        raise ChorusError("schedule.segment: a broadcast's audience is its segment (beside schedule)",
                          field="schedule.segment")  # fmt: skip
    if raw.get("segment") is not None:
        sched = {**sched, "segment": raw["segment"]}
    message = {"type": "message", "template": raw["template"], "channel": raw.get("channel", "auto"),
               "kind": raw.get("kind", "marketing"), "next": "done"}  # fmt: skip
    for k in ("topic", "data"):
        if raw.get(k) is not None:
            message[k] = raw[k]
    nodes: dict = {"send": message, "done": {"type": "exit"}}
    # each run is a send of its own, entered side by side with the earlier ones (per run): a person still in her
    # goal window from the last run gets this one too (an outside probe: with a 7-day goal, an hourly broadcast
    # reached each person once a week)
    out: dict = {"id": raw["id"], "entry": {"schedule": sched}, "reentry": "per_key", "start": "send",
                 "nodes": nodes}  # fmt: skip
    if raw.get("name") is not None:
        out["name"] = raw["name"]
    if raw.get("goal") is not None:
        out["goal"] = raw["goal"]
        # she converted before her message went out (deferred by a cap or quiet hours): it is withdrawn (an outside
        # probe: a sale email deferred by the cap went out two days after she bought); the conversion still counts
        out["exit_on_goal"] = True
    if raw.get("holdout") is not None:
        h = raw["holdout"]
        if isinstance(h, bool) or not isinstance(h, int) or not 1 <= h <= 99:
            raise ChorusError("holdout: holdout is a whole percentage from 1 to 99", field="holdout")
        if raw.get("goal") is None:
            raise ChorusError("holdout: a holdout is measured against a goal (with within): add goal", field="holdout")
        if isinstance(raw["goal"], dict) and "within" not in raw["goal"]:
            raise ChorusError("holdout: a holdout is measured over the goal's window: give goal a within (e.g. 7d)",
                              field="holdout")  # fmt: skip
        nodes["arm"] = {"type": "split", "arms": [{"name": "holdout", "weight": h, "holdout": True},
                                                 {"name": "send", "weight": 100 - h, "next": "send"}]}  # fmt: skip
        if raw.get("holdout_by") is not None:
            if raw["holdout_by"] not in d.SPLIT_BY:
                raise ChorusError(f"holdout_by: holdout_by is {' or '.join(d.SPLIT_BY)} (what the person's bucket "
                                  "hashes)", field="holdout_by")  # fmt: skip
            nodes["arm"]["by"] = raw["holdout_by"]
        out["start"] = "arm"
    elif raw.get("holdout_by") is not None:
        raise ChorusError("holdout_by: holdout_by says how a holdout is drawn: give holdout too", field="holdout_by")
    return out


def parse_broadcast(raw: object, now: datetime) -> d.Definition:
    """The journey that runs broadcast ``raw``, validated; an error names the broadcast's own field (pure)."""
    try:
        return d.parse(broadcast_definition(raw, now))
    except ChorusError as exc:
        raise _as_broadcast(exc) from None


def publish_broadcast(conn: Connection, ws: str, raw: object, now: datetime, *, dry_run: bool = False) -> dict:
    if isinstance(raw, dict) and raw.get("schedule") in (None, "now") and isinstance(raw.get("id"), str):
        # a new version of a broadcast sent "now" that has run: the same send, not another one (an outside probe
        # fixed its name and everybody got it twice); to send it again, publish it under a new id. Asked under the
        # broadcast's lock, which the schedule task holds (shared) while it plans or walks a run: asked before it,
        # a run planned meanwhile was not seen, the new version got a new instant and everybody got it twice
        # (an outside probe, 3 rounds in 140 on PostgreSQL)
        if not dry_run:
            _lock(conn, ws, raw["id"])
        sent = _sent_at(conn, ws, raw["id"])
        if sent is not None:
            raw = {**raw, "schedule": {"at": iso(sent)}}
    defn = d.to_json(parse_broadcast(raw, now))
    try:
        return publish(conn, ws, defn, now, kind="broadcast", dry_run=dry_run)
    except ChorusError as exc:  # a reference the workspace lacks (template, segment, channel): the broadcast's field
        raise _as_broadcast(exc) from None
