"""The outbox: a send request becomes one ``messages`` row, exactly once per idempotency key.

``enqueue`` decides everything that can be decided before delivery, in one transaction: the profile, the
channel (and why), consent, the rendered content (or the reason it cannot be rendered). The row, its first
status and the matching timeline event commit together, so a crash leaves either nothing or a queued message.
Every later state change goes through :func:`set_status`, which appends to the history and records the event on
the profile timeline (``Message Sent``, ``Message Opened``...).

:func:`enqueue_in` does the same on the caller's connection, inside its transaction: a package whose own state must
commit with its messages (a journey's transition) calls it, and the message exists if and only if that state does.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_sql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from chorus import metrics, safejson
from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.messages import Event, normalise_internal
from chorus.errors import ChorusError, Conflict, NotFound
from chorus.messaging import content, policy
from chorus.messaging.consent import identity_fields
from chorus.messaging.links import Links, track_email
from chorus.messaging.subscriptions import endpoints_for, with_push_addresses_all
from chorus.profiles import feed, views
from chorus.store import bulk
from chorus.store.db import FreshStatistics, read_only
from chorus.store.tables import message_status, messages, partials, templates
from chorus.timeutil import iso, utcnow
from chorus.workspaces import verification

KINDS = ("marketing", "transactional")
# Timeline event names (Segment-style object-action) for the states a person or a segment can care about.
STATUS_EVENTS = {
    "queued": "Message Queued",
    "skipped": "Message Skipped",
    "sent": "Message Sent",
    "delivered": "Message Delivered",
    "opened": "Message Opened",
    "clicked": "Message Clicked",
    "bounced": "Message Bounced",
    "complained": "Message Complained",
    "failed": "Message Failed",
    "replied": "Message Replied",
    "unsubscribed": "Message Unsubscribed",
}
# What the person did (counts as activity on the channel); the rest is Chorus talking.
INBOUND = frozenset({"opened", "clicked", "complained", "replied", "unsubscribed"})
PENDING = ("queued", "retrying", "sending")
# A message's own status (the ``status`` column): where its delivery stands. Engagement (ENGAGEMENT) is its history.
DELIVERY = ("queued", "sending", "retrying", "sent", "delivered", "skipped", "failed", "bounced")
ENGAGEMENT = frozenset({"opened", "clicked", "replied", "unsubscribed", "complained"})
# Messages that count against frequency caps: going out, or gone out.
PACED = ("queued", "retrying", "sending", "sent", "delivered", "opened", "clicked", "replied", "unsubscribed",
         "complained")  # fmt: skip


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


# -- the request ------------------------------------------------------------------------------------------------
def parse_request(body: object) -> dict:
    """Validate a send request; errors name the field."""
    if not isinstance(body, dict):
        raise ChorusError("the body must be a JSON object", field="body")
    unknown = set(body) - {
        "profile_id", "to", "template", "content", "channel", "kind", "topic", "event", "data", "locale",
        "journey_id", "campaign_id",
    }  # fmt: skip
    if unknown:
        raise ChorusError(f"unknown field {sorted(unknown)[0]!r}", field=sorted(unknown)[0])
    if bool(body.get("profile_id")) == bool(body.get("to")):
        raise ChorusError('give exactly one of profile_id or to (an identifier: {"email": ...})', field="profile_id")
    if body.get("to") is not None:
        if not isinstance(body["to"], dict) or len(body["to"]) != 1:
            raise ChorusError('to must be one identifier, e.g. {"email": "ana@example.com"}', field="to")
        ((id_kind, value),) = body["to"].items()
        if not isinstance(value, str) or not value.strip() or len(value) > 400:
            raise ChorusError(f"to.{id_kind} must be a non-empty string", field=f"to.{id_kind}")
    if bool(body.get("template")) == bool(body.get("content")):
        raise ChorusError("give exactly one of template (a saved template's name) or content", field="template")
    channel = body.get("channel", "auto")
    if channel != "auto":
        chans = channel if isinstance(channel, list) else [channel]
        if not chans or any(c not in policy.MESSAGE_CHANNELS for c in chans):
            raise ChorusError(
                f"channel must be 'auto', a channel or a list of channels among {', '.join(policy.MESSAGE_CHANNELS)}",
                field="channel",
            )
        channel = list(dict.fromkeys(chans))
    kind = body.get("kind")
    if kind is not None and kind not in KINDS:
        raise ChorusError("kind must be marketing or transactional", field="kind")
    for key in ("event", "data"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise ChorusError(f"{key} must be a JSON object", field=key)
        if body.get(key) is not None:  # templates output these values: what they output must be storable
            safejson.check(body[key], key)
    for key in ("topic", "locale", "journey_id", "campaign_id", "profile_id", "template"):
        if body.get(key) is not None and (not isinstance(body[key], str) or len(body[key]) > 64):
            raise ChorusError(f"{key} must be a string of at most 64 characters", field=key)
    if body.get("topic") is not None:
        # read as consent names its slots (trimmed, lower case: "Offers" is the slot email:offers), then checked
        body = {**body, "topic": body["topic"].strip().lower()}
        if not policy.TOPIC_NAME.fullmatch(body["topic"]):
            raise ChorusError(f"topic must be {policy.TOPIC_RULE}, as topics are named in consent", field="topic")
    return {**body, "channel": channel}


def request_hash(req: dict) -> str:
    return hashlib.sha256(orjson.dumps(req, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- templates --------------------------------------------------------------------------------------------------
def load_partials(conn: Connection, ws: str) -> dict[str, str]:
    return dict(conn.execute(sa.select(partials.c.name, partials.c.source).where(partials.c.workspace_id == ws)).all())


def load_template(conn: Connection, ws: str, name: str) -> dict:
    row = conn.execute(
        sa.select(templates.c.definition).where(templates.c.workspace_id == ws, templates.c.name == name)
    ).first()
    if row is None:
        raise NotFound(f"template {name!r} not found", field="template")
    return row.definition


def save_template(engine: Engine, ws: str, name: str, doc: dict) -> dict:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ChorusError("a template name is 1 to 64 letters, digits, '_', '.' or '-'", field="name")
    with engine.begin() as conn:
        parts = load_partials(conn, ws)
        defn = _validated({**doc, "name": name}, parts)
        # one statement: two saves of one name at once (PostgreSQL) cannot both insert, where the second failed on
        # the key (a 500), nor both read version n and write n + 1 (one version lost, both answers alike)
        ins = _insert(conn, templates).values(workspace_id=ws, name=name, definition=defn, version=1,
                                              updated_at=utcnow())  # fmt: skip
        version = conn.execute(ins.on_conflict_do_update(
            index_elements=["workspace_id", "name"],
            set_={"definition": ins.excluded.definition, "version": templates.c.version + 1,
                  "updated_at": ins.excluded.updated_at},
        ).returning(templates.c.version)).scalar_one()  # fmt: skip
    return {"name": name, "version": version, "definition": defn}


def save_partial(engine: Engine, ws: str, name: str, source: str) -> dict:
    try:
        content.validate_partial(name, source)
    except content.ContentError as exc:
        raise ChorusError(str(exc), field=exc.field) from None
    with engine.begin() as conn:
        ins = _insert(conn, partials).values(workspace_id=ws, name=name, source=source, updated_at=utcnow())
        conn.execute(ins.on_conflict_do_update(index_elements=["workspace_id", "name"], set_={
            "source": ins.excluded.source, "updated_at": ins.excluded.updated_at}))  # fmt: skip
    return {"name": name}


def _insert(conn: Connection, table: sa.Table):
    """The engine's own INSERT, which has ``on_conflict_do_update`` (both engines write it alike)."""
    return (pg_sql.insert if conn.dialect.name == "postgresql" else sqlite_sql.insert)(table)


def _validated(doc: object, parts: dict[str, str], at: str = "") -> dict:
    try:
        return content.validate_definition(doc, parts, at=at)
    except content.ContentError as exc:
        raise ChorusError(str(exc), field=exc.field) from None


# -- status changes ---------------------------------------------------------------------------------------------
@dataclass
class Change:
    """One state change of a message: what :func:`set_statuses` applies."""

    msg: dict
    status: str
    at: datetime
    detail: dict = field(default_factory=dict)
    columns: dict = field(default_factory=dict)
    profile: dict | None = None


def _event(msg: dict, profile: dict, status: str, at: datetime, detail: dict) -> Event | None:
    name = STATUS_EVENTS.get(status)
    ident = identity_fields(profile) if name else None
    if not ident:
        return None
    props = {
        "message_id": msg["id"], "channel": msg["channel"], "template": msg["template"], "kind": msg["kind"],
        "topic": msg["topic"], "journey_id": msg["journey_id"], "campaign_id": msg["campaign_id"], **detail,
    }  # fmt: skip
    ctx = {**ident.get("context", {}), "channel": msg["channel"] or "unknown"}
    ctx["direction"] = "inbound" if status in INBOUND else "outbound"
    raw = {
        **{k: v for k, v in ident.items() if k != "context"},
        "type": "track", "event": name, "properties": props, "context": ctx,
        # unique per change (a message can be opened or retried many times)
        "messageId": f"chorus-{msg['id']}-{status}-{secrets.token_hex(6)}", "timestamp": iso(at),
    }  # fmt: skip
    ev = normalise_internal(raw, at=at, received_at=at)
    return ev if isinstance(ev, Event) else None  # cannot fail with the fields above; never lose the change over it


def set_status(
    conn: Connection, msg: dict, status: str, *, at: datetime, detail: dict | None = None, profile: dict | None = None,
    **columns,
) -> None:  # fmt: skip
    """Append a state to the message's history, update the row, and put the event on the profile timeline."""
    set_statuses(conn, [Change(msg, status, at, detail or {}, columns, profile)])


def set_statuses(conn: Connection, changes: list[Change]) -> None:
    """Apply state changes: the row, the history and the timeline events, a few statements for any number.

    Nothing is written for a message that no longer exists (the person was erased meanwhile): the rows are
    updated (or locked) first, and on PostgreSQL that waits for a concurrent erasure to commit. ``sent`` never
    moves a message back: a provider's delivery report may have been recorded first.
    """
    if not changes:
        return
    alive: set[str] | None = None
    if len(changes) > 1:
        # every row of the batch locked first, in one statement, in id order: the order of every writer of several
        # messages (review: the rows given back to the queue locked first, then the others, was not id order and
        # deadlocked with a stop's withdrawal); PostgreSQL waits here for a concurrent erasure too
        ids = [ch.msg["id"] for ch in changes]
        q = sa.select(messages.c.id).where(bulk.in_(messages.c.id, ids, conn.dialect.name))
        if conn.dialect.name == "postgresql":
            q = q.order_by(messages.c.id).with_for_update()
        alive = set(conn.execute(q).scalars())
    changes = _unless_withdrawn(conn, changes)
    groups: dict[tuple, list[dict]] = {}
    changed_at = utcnow()  # when the row changed (``at`` may be a provider's earlier timestamp): what the lake follows
    for ch in changes:
        cols = dict(ch.columns)
        if ch.status == "deferred":  # caps or quiet hours at send time: back in the queue, later
            cols["status"] = "queued"
        elif ch.status not in ENGAGEMENT:  # engagement is history; the message's status stays its delivery outcome
            cols["status"] = ch.status
        row = {"_id": ch.msg["id"], "updated_at": max(ch.at, changed_at), **cols}
        groups.setdefault(tuple(sorted(cols)), []).append(row)
    if alive is None:
        alive = {changes[0].msg["id"]} if _update(conn, next(iter(groups.items()))) else set()
    else:
        for group in groups.items():
            _update(conn, (group[0], [r for r in group[1] if r["_id"] in alive]))
    _recorded(conn, [ch for ch in changes if ch.msg["id"] in alive])


def _recorded(conn: Connection, changes: list[Change]) -> None:
    """What :func:`set_statuses` writes once the rows are updated: the history, the metrics, the change feed and the
    timeline events of ``changes`` (all of messages that exist)."""
    if not changes:
        return
    bulk.insert_rows(
        conn, message_status,
        [{"message_id": ch.msg["id"], "workspace_id": ch.msg["workspace_id"], "status": ch.status, "at": ch.at,
          "detail": ch.detail} for ch in changes],
    )  # fmt: skip
    counts: dict[tuple[str, str], int] = {}  # one increment per label pair, of as many as it counts
    for ch in changes:
        label = (ch.msg.get("channel") or "none", ch.status)
        counts[label] = counts.get(label, 0) + 1

    def count() -> None:
        for (channel, status), n in counts.items():
            metrics.message_status.labels(channel=channel, status=status).inc(n)

    metrics.after_commit(conn, count)
    resolved = _record_changes(conn, changes)
    by_ws: dict[str, list[Change]] = {}
    for ch in changes:
        if ch.status in STATUS_EVENTS:
            by_ws.setdefault(ch.msg["workspace_id"], []).append(ch)
    for ws, mine in by_ws.items():
        # a message keeps the profile id it was sent to: after a merge its events go on the survivor's timeline
        current = resolved.get(ws, {})
        wanted = sorted({current[p] for ch in mine
                         if ch.profile is None and (p := ch.msg.get("profile_id")) in current})
        # the event names her by her strongest identifier (``_event``): her identifiers are all it reads, not the
        # whole view (state, aliases, computed traits), which an open pixel or a delivery report paid for each time
        idents = views.identifiers_of(conn, ws, wanted)
        found = {pid: {"id": pid, "identifiers": idents.get(pid, {})} for pid in wanted}
        evs, attributed = [], {}
        for ch in mine:
            profile = ch.profile or found.get(current.get(ch.msg["profile_id"]))
            if profile is not None and (ev := _event(ch.msg, profile, ch.status, ch.at, ch.detail)) is not None:
                evs.append(ev)
                if ch.status not in INBOUND:
                    # Chorus talking to a known person: it names them by an identifier they already have and is
                    # not their activity, so resolving it would change nothing; it goes on their timeline at once
                    attributed[ev.message_id] = profile["id"]
        if evs:
            source = ws_api.internal_source(conn, ws, "internal", "chorus-messaging")
            ingest.store(conn, source, evs, [], max(ch.at for ch in mine), attributed)


def _record_changes(conn: Connection, changes: list[Change]) -> dict[str, dict[str, str]]:
    """Every status change of a person's message is a change of that person (chorus.profiles.feed): segments and
    journeys react to a message received, opened, clicked, bounced... Each is dated by its change (the caller's
    clock, or the provider's time), not the wall clock: a journey on a virtual clock sees its messages' events then.
    Returns, per workspace, each message's profile id -> her current profile (merges followed; unknown ids missing).
    """
    by_ws: dict[str, list[tuple[feed.Change, datetime]]] = {}
    for ch in changes:
        m = ch.msg
        if not m.get("profile_id"):
            continue
        # the key ties the change to what asked for the message (a journey's key names its instance and step)
        detail = {"status": ch.status, "message_id": m["id"], "idempotency_key": m.get("idempotency_key"),
                  "channel": m.get("channel"), "template": m.get("template"), "journey_id": m.get("journey_id"),
                  "campaign_id": m.get("campaign_id")}  # fmt: skip
        by_ws.setdefault(m["workspace_id"], []).append(
            (feed.Change(m["profile_id"], "message", detail={k: v for k, v in detail.items() if v is not None}), ch.at)
        )  # fmt: skip
    resolved: dict[str, dict[str, str]] = {}
    for ws, mine in by_ws.items():
        # a message keeps the profile id it was sent to; the person may have been merged since
        current = resolved[ws] = views.resolve_ids(conn, ws, sorted({c.profile_id for c, _ in mine}))
        # one record per run of changes with the same time, so that they keep their order
        for at, run in itertools.groupby(mine, key=lambda x: x[1]):
            feed.record(conn, ws, [
                feed.Change(current.get(c.profile_id, c.profile_id), c.cause, detail=c.detail) for c, _ in run
            ], at)  # fmt: skip
    return resolved


def _update(conn: Connection, group: tuple[tuple, list[dict]]) -> bool:
    """UPDATE messages for rows that set the same columns (executemany); whether a single row was found."""
    cols, rows = group
    if not rows:
        return False
    values = {c: sa.bindparam(c, type_=messages.c[c].type) for c in (*cols, "updated_at") if c != "status"}
    if "status" in cols:
        new = sa.bindparam("status", type_=messages.c.status.type)
        # ``sent`` only replaces the in-flight states: an early delivery report (or a failure) stays
        values["status"] = sa.case(
            (sa.and_(new == "sent", *(messages.c.status != p for p in PENDING)), messages.c.status), else_=new
        )
    stmt = messages.update().where(messages.c.id == sa.bindparam("_id")).values(**values)
    result = conn.execute(stmt, rows if len(rows) > 1 else rows[0])
    return len(rows) == 1 and result.rowcount == 1


def recipient(conn: Connection, ws: ws_api.Workspace, req: dict) -> str:
    """The profile id a request is for: ``profile_id`` (old merged ids resolve) or one identifier in ``to``; the
    error a send of it would give (a preview named ``email`` where the send named ``to.email``: an outside probe)."""
    found = recipients_of(conn, ws, [req])[0]
    if isinstance(found, ChorusError):
        raise found
    return found


def recipients_of(conn: Connection, ws: ws_api.Workspace, reqs: list[dict]) -> dict[int, str | ChorusError]:
    """Each request's profile id (its place in ``reqs`` -> id), or the error naming its field: in a few
    statements for a whole batch."""
    pid: dict[int, str | ChorusError] = {}
    by_id = views.resolve_ids(conn, ws.id, [r["profile_id"] for r in reqs if r.get("profile_id")])
    idents: dict[int, str] = {}
    for i, req in enumerate(reqs):
        if req.get("profile_id"):
            pid[i] = by_id.get(req["profile_id"]) or NotFound(f"profile {req['profile_id']} not found",
                                                              field="profile_id")  # fmt: skip
            continue
        ((kind, value),) = req["to"].items()
        if kind not in ("email", "phone", "user_id", "anonymous_id", *ws.identity.declared):
            pid[i] = ChorusError(f"to.{kind} is not an identifier kind", field=f"to.{kind}")
            continue
        try:
            idents[i] = views.lookup_ident(ws.identity, **{kind: value})
        except ChorusError as exc:
            pid[i] = ChorusError(str(exc), field=f"to.{kind}")
    found = views.find_by_idents(conn, ws.id, list(idents.values()))
    for i, ident in idents.items():
        kind, value = ident.split(":", 1)
        pid[i] = found.get(ident) or NotFound(f"no profile with {kind} {value!r}", field=f"to.{kind}")
    return pid


# -- enqueue ----------------------------------------------------------------------------------------------------
def enqueue(
    engine: Engine,
    ws: ws_api.Workspace,
    req: dict,
    idempotency_key: str | None,
    links: Links,
    clock=utcnow,
) -> tuple[dict, bool]:
    """Create the message for ``req`` (see :func:`parse_request`); returns (message view, created)."""
    ((result, created),) = enqueue_many(engine, ws, [(req, idempotency_key)], links, clock, full=True)
    if isinstance(result, Exception):
        raise result
    return result, created


def enqueue_many(
    engine: Engine,
    ws: ws_api.Workspace,
    items: list[tuple[dict, str | None]],
    links: Links,
    clock=utcnow,
    full: bool = False,
) -> list[tuple[dict | ChorusError, bool]]:
    """Create the messages for many requests in one transaction (a broadcast, a batch API call).

    Returns, per item in order, (summary, created) or (the error that names the field, False): one bad request
    never stops the others. A key already used returns its message (or a conflict if the request differs).
    ``full`` returns each message's whole view as of the commit (before a worker can take it).
    :func:`enqueue_in` does the same in the caller's transaction.
    """
    prepared = _prepare(items)
    for attempt in (1, 2):
        try:
            now = clock()
            # decide and render outside the write transaction (on SQLite it would hold the store's only write
            # lock for all the rendering), then write, deciding again only if one of the keys appeared meanwhile
            with read_only(engine) as conn:
                plan = _plan(conn, ws, prepared, links, now)
            with engine.begin() as conn:
                if _taken(conn, ws.id, plan.rows):
                    plan = _plan(conn, ws, prepared, links, now)
                results = _write(conn, ws.id, plan, full)
            _note_growth(engine, len(plan.rows))
            return results
        except IntegrityError:  # a key committed by a concurrent request meanwhile: the second pass replays it
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def enqueue_in(
    conn: Connection,
    ws: ws_api.Workspace,
    items: list[tuple[dict, str | None]],
    links: Links,
    now: datetime,
    *,
    full: bool = False,
) -> list[tuple[dict | ChorusError, bool]]:
    """:func:`enqueue_many` on the caller's connection and transaction, dated ``now``: for a package whose own
    state must commit with its messages (a journey's transition and the message its step sends), so that a
    rollback or a crash drops both and a retry of the step finds its key unused, or used by its own message.

    Nothing is committed or rolled back here: the caller's commit makes the messages, its rollback drops them. The
    writes go in a savepoint; when a concurrent transaction committed one of the keys meanwhile (on PostgreSQL the
    unique index makes the insert wait for it, then fail), the savepoint is rolled back and the batch is decided
    again on this connection, which then sees that message (read committed) and returns it as a replay.
    """
    prepared = _prepare(items)
    for attempt in (1, 2):
        try:
            with conn.begin_nested():
                plan = _plan(conn, ws, prepared, links, now)
                results = _write(conn, ws.id, plan, full)
            break
        except IntegrityError:
            if attempt == 2:
                raise
    _note_growth(conn.engine, len(plan.rows))  # another connection on PostgreSQL only (nothing on SQLite)
    return results


def _prepare(items: list[tuple[dict, str | None]]) -> list[tuple[dict, str, str] | ChorusError]:
    """Each item as (request, key, request hash), or the error of its key; a missing key is a fresh one."""
    prepared: list[tuple[dict, str, str] | ChorusError] = []
    for req, key in items:
        key = key or ("auto-" + uuid.uuid4().hex)
        if len(key) > 200:
            prepared.append(ChorusError("Idempotency-Key is longer than 200 characters", field="Idempotency-Key"))
        else:
            prepared.append((req, key, request_hash(req)))
    return prepared


def _write(conn: Connection, ws: str, plan: _Plan, full: bool) -> list[tuple[dict | ChorusError, bool]]:
    """Insert a plan's messages and their first states; the results, with ``full`` each message's whole view."""
    if plan.rows:
        # The rows go in with their first state already (status, reason, next attempt: _build set them) and the
        # ``updated_at`` that set_statuses' UPDATE would give them (the later of ``now`` and the wall clock), so the
        # first states need no UPDATE nor the check that their rows exist (they were inserted just now, in this
        # transaction): only their history, feed changes and timeline events (_recorded), as set_statuses writes
        # them. A first state is never a put-back (queued or skipped), so no withdrawal applies to it.
        changed_at = utcnow()
        # in key order: two transactions inserting some of the same keys wait for each other on PostgreSQL's
        # unique index, and in one order neither can wait for the other (a deadlock) whatever their batches
        bulk.insert_rows(conn, messages, sorted(
            ({**r, "updated_at": max(r["updated_at"], changed_at)} for r in plan.rows),
            key=lambda r: r["idempotency_key"]))  # fmt: skip
        _recorded(conn, plan.changes)
    if not full:
        return plan.results
    return [(get_message(conn, ws, r["id"]) if isinstance(r, dict) else r, c) for r, c in plan.results]


# the outbox tables' statistics, per database (a key lookup on a table analysed when empty becomes a scan)
_STATS: dict[str, FreshStatistics] = {}


def _note_growth(engine: Engine, n: int) -> None:
    stats = _STATS.setdefault(str(engine.url), FreshStatistics("messages, message_status, events", 2000))
    stats.note(engine, n)


def _taken(conn: Connection, ws: str, rows: list[dict]) -> bool:
    keys = [r["idempotency_key"] for r in rows]
    q = sa.select(messages.c.id).where(
        messages.c.workspace_id == ws, bulk.in_(messages.c.idempotency_key, keys, conn.dialect.name)
    )
    # no LIMIT 1: PostgreSQL would plan it as a scan of the whole table hoping for an early match
    return bool(keys) and conn.execute(q).first() is not None


def _summary(msg: dict) -> dict:
    return {k: msg[k] for k in ("id", "idempotency_key", "profile_id", "channel", "status", "reason")}


class _Recipients:
    """Profiles, browsers and templates of a batch, read once."""

    def __init__(self, conn: Connection, ws: ws_api.Workspace, reqs: list[dict], now: datetime):
        self.conn, self.ws = conn, ws
        self.pid = recipients_of(conn, ws, reqs)
        pids = [p for p in self.pid.values() if isinstance(p, str)]
        profiles = views.get_profiles(conn, ws.id, pids, ws.identity)
        self.subs = endpoints_for(conn, ws.id, list(profiles.values()))
        self.profiles = with_push_addresses_all(conn, ws.id, profiles, self.subs)
        self.partials = load_partials(conn, ws.id)
        self._templates: dict[str, dict | NotFound] = {}
        msettings = ws.settings.get("messaging") or {}
        self.history: dict[str, list[tuple]] = {}
        if msettings.get("caps"):
            self.history = pacing_histories(conn, ws.id, pids, now)

    def template(self, name: str) -> dict:
        if name not in self._templates:
            try:
                self._templates[name] = load_template(self.conn, self.ws.id, name)
            except NotFound as exc:
                self._templates[name] = exc
        found = self._templates[name]
        if isinstance(found, NotFound):
            raise found
        return found


@dataclass
class _Plan:
    results: list[tuple[dict | ChorusError, bool]]
    rows: list[dict]  # the messages to insert
    changes: list[Change]  # and their first states


def _plan(conn: Connection, ws: ws_api.Workspace, prepared: list, links: Links, now: datetime) -> _Plan:
    """Everything ``enqueue_many`` decides, without writing: a result per item, the rows and their states."""
    keys = [p[1] for p in prepared if not isinstance(p, ChorusError)]
    existing = {
        r.idempotency_key: r
        for r in conn.execute(
            sa.select(messages).where(
                messages.c.workspace_id == ws.id, bulk.in_(messages.c.idempotency_key, keys, conn.dialect.name)
            )
        )
    } if keys else {}  # fmt: skip
    todo = [i for i, p in enumerate(prepared) if not isinstance(p, ChorusError) and p[1] not in existing]
    recipients = _Recipients(conn, ws, [prepared[i][0] for i in todo], now)
    results: list[tuple[dict | ChorusError, bool]] = []
    made: dict[str, tuple[dict, str]] = {}  # key -> (message, request hash): the same key twice in one batch
    rows, changes = [], []
    slot = {i: n for n, i in enumerate(todo)}
    for i, p in enumerate(prepared):
        if isinstance(p, ChorusError):
            results.append((p, False))
            continue
        req, key, rhash = p
        old = existing.get(key) or made.get(key)
        if old is not None:
            old_msg, old_hash = (dict(old._mapping), old.request_hash) if key in existing else old
            if old_hash != rhash:
                results.append((Conflict("this Idempotency-Key was used for a different request",
                                         field="Idempotency-Key"), False))  # fmt: skip
            else:
                results.append((_summary(old_msg), False))
            continue
        pid = recipients.pid[slot[i]]
        if isinstance(pid, ChorusError):
            results.append((pid, False))
            continue
        try:
            msg, change = _build(recipients, req, key, rhash, pid, now, links)
        except ChorusError as exc:
            results.append((exc, False))
            continue
        made[key] = (msg, rhash)
        rows.append(msg)
        changes.append(change)
        results.append((_summary(msg), True))
    return _Plan(results, rows, changes)


@dataclass
class _Draft:
    """What a send decides about one request before rendering: shared by :func:`_build` and :func:`preview`."""

    profile: dict
    defn: dict
    kind: str
    topic: str
    choice: policy.Choice
    msg: dict


def _draft(rc: _Recipients, req: dict, key: str, rhash: str, pid: str, now: datetime) -> _Draft:
    ws = rc.ws
    profile = rc.profiles.get(pid)
    if profile is None:
        raise NotFound(f"profile {pid} not found", field="profile_id")
    defn = rc.template(req["template"]) if req.get("template") else _validated(req["content"], rc.partials, "content")
    kind = req.get("kind") or defn.get("kind", "marketing")
    topic = req.get("topic") or defn.get("topic") or ("transactional" if kind == "transactional" else "marketing")
    msettings = ws.settings.get("messaging") or {}
    choice = policy.choose_channel(
        profile, list(defn["variants"]), req["channel"], topic=topic, kind=kind,
        topics=msettings.get("topics"), fallback=msettings.get("fallback_order"), now=now,
        anytime=_anytime(defn, kind, msettings),
    )  # fmt: skip
    msg = {
        "id": new_message_id(), "workspace_id": ws.id, "idempotency_key": key, "request_hash": rhash,
        "profile_id": pid, "template": req.get("template"), "kind": kind, "topic": topic, "channel": choice.channel,
        "address": choice.address, "status": "new", "reason": None, "content": None,
        # an in-app message to an anonymous person names the anonymous ids it is for: the only write-key
        # callers that may read it without a user hash (chorus.workspaces.verification)
        "choice": {**choice.as_dict(), **verification.anonymous_recipient(profile, choice.channel)},
        "journey_id": req.get("journey_id"), "campaign_id": req.get("campaign_id"), "provider": None,
        "provider_message_id": None, "attempts": 0, "next_attempt_at": None, "sent_at": None, "approved_at": None,
        "created_at": now,
        "updated_at": now,
    }  # fmt: skip
    return _Draft(profile, defn, kind, topic, choice, msg)


def _finish(rendered: dict, msg: dict, profile: dict, subs: dict, ws_id: str, links: Links) -> str | None:
    """What a send adds to a channel's rendering (``msg["channel"]``): tracked links and unsubscribe headers, a
    browser's push keys, the SMS status callback. Why it cannot go as rendered, or None. Send and preview both call
    it, so a preview shows the headers and links a send puts on."""
    channel = msg["channel"]
    if channel == "email":
        _email_links(rendered, msg, profile, links)
        # the limit is on what is sent: each tracked link becomes a signed redirect of about 250 characters (an
        # outside probe: 87 KB rendered went out as 373 KB, past where Gmail clips it and hides the unsubscribe link)
        if over := content.over_limit("email.html", rendered.get("html") or "", "html with its tracked links"):
            return f"not rendered: {over}"
    elif channel == "push" and msg["address"] in subs:  # web push: the browser's keys go along
        rendered["subscription"] = {"keys": subs[msg["address"]]}
    elif channel == "sms":  # Twilio reports delivery to this URL (signed with the auth token); the message id in it
        # finds the message even before its Twilio SID is recorded
        rendered["headers"] = {"StatusCallback": f"{links.public_url}/webhooks/twilio/{ws_id}/status?m={msg['id']}"}
    return None


def _build(
    rc: _Recipients, req: dict, key: str, rhash: str, pid: str, now: datetime, links: Links
) -> tuple[dict, Change]:
    """The outbox row for one request and its first state: everything decided before delivery."""
    ws = rc.ws
    d = _draft(rc, req, key, rhash, pid, now)
    profile, choice, msg = d.profile, d.choice, d.msg
    status, reason, rendered = "skipped", choice.reason, None
    if choice.channel is not None:
        ctx = template_context(profile, req, msg["id"], choice.channel, d.topic, d.kind, links)
        out = content.render(
            d.defn, choice.channel, ctx, locale=req.get("locale") or profile.get("locale"), partials=rc.partials
        )
        if isinstance(out, content.Skip):
            reason = f"not rendered: {out.reason}" + (f" ({out.field})" if out.field else "")
        else:
            status, reason = "queued", None
            rendered = {**out.fields, "locale": out.locale}
            if why := _finish(rendered, msg, profile, rc.subs.get(pid, {}), ws.id, links):
                status, reason, rendered = "skipped", why, None
    send_at = now
    if status == "queued":
        paced = _pace(ws, msg, profile, now, rc.history.get(pid, []))
        if paced.at is None:
            status, reason = "skipped", paced.reason
        elif paced.at > now:
            send_at, reason = paced.at, paced.reason
        if status == "queued" and msg["kind"] == "marketing":  # the next message of this batch counts this one
            rc.history.setdefault(pid, []).append((msg["channel"], send_at))
    msg.update(status=status, reason=reason, content=rendered, next_attempt_at=send_at if status == "queued" else None)
    detail = {"reason": reason} if reason else {"channel_reason": choice.reason}
    return msg, Change(msg, status, now, detail, {}, profile)


PREVIEW_ID = "msg_preview"  # the message id a preview renders with: its links lead nowhere


def preview(conn: Connection, ws: ws_api.Workspace, req: dict, links: Links, now: datetime) -> dict:
    """Every variant of a message as a send would render it for this person (the same context, tracked links,
    unsubscribe headers and size limit: ``_draft`` and ``_finish``), and what a send now would decide: the channel
    chosen with the reason for each one considered (consent, address, window), and caps or quiet hours. Writes
    nothing."""
    rc = _Recipients(conn, ws, [req], now)
    pid = rc.pid[0]
    if isinstance(pid, ChorusError):
        raise pid
    d = _draft(rc, req, PREVIEW_ID, "", pid, now)
    d.msg["id"] = PREVIEW_ID
    ctx = template_context(d.profile, req, PREVIEW_ID, None, d.topic, d.kind, links)
    variants: dict[str, dict] = {}
    unsendable: dict[str, str] = {}  # channel -> why a send on it would be skipped, in a send's words (``_build``)
    subs = rc.subs.get(pid, {})
    rendered_all = content.preview(d.defn, ctx, locale=req.get("locale") or d.profile.get("locale"),
                                   partials=rc.partials)  # fmt: skip
    for channel, out in rendered_all.items():
        if isinstance(out, content.Skip):
            variants[channel] = {"skipped": True, "reason": out.reason, "field": out.field}
            unsendable[channel] = f"not rendered: {out.reason}" + (f" ({out.field})" if out.field else "")
            continue
        rendered = {**out.fields, "locale": out.locale}
        on = {**d.msg, "channel": channel, "address": d.choice.address if channel == d.choice.channel else None}
        if why := _finish(rendered, on, d.profile, subs, ws.id, links):
            variants[channel] = {"skipped": True, "reason": why.removeprefix("not rendered: "), "field": "email.html"}
            unsendable[channel] = why
        else:
            variants[channel] = {"skipped": False, **rendered}
    send: dict = {"channel": d.choice.channel, "address": d.choice.address, "status": "skipped",
                  "reason": d.choice.reason, "send_at": None, "choice": d.msg["choice"]}  # fmt: skip
    if d.choice.channel is not None:
        if d.choice.channel in unsendable:
            send["reason"] = unsendable[d.choice.channel]
        else:
            paced = _pace(ws, d.msg, d.profile, now, rc.history.get(pid, []))
            if paced.at is None:
                send["reason"] = paced.reason
            else:
                send.update(status="queued", reason=paced.reason, send_at=iso(paced.at))
    return {"profile_id": pid, "variants": variants, "send": send}


def template_context(
    profile: dict, req: dict, message_id: str, channel: str | None, topic: str | None, kind: str | None, links: Links
) -> dict:
    """What templates see: one function for a send and for its preview, so a preview shows what is sent."""
    return {
        "profile": {k: profile.get(k) for k in ("id", "traits", "channels_used", "last_channel", "timezone", "locale")},
        "traits": profile.get("traits") or {},
        # what analytics computed (clv_12m, probability_alive...): {% if computed.probability_alive < 0.3 %}
        "computed": {k: v.get("value") for k, v in (profile.get("computed_traits") or {}).items()},
        "event": req.get("event") or {},
        "data": req.get("data") or {},
        "message": {"id": message_id, "channel": channel, "topic": topic, "kind": kind,
                    "unsubscribe_url": links.unsubscribe_url(message_id),
                    "preferences_url": links.preferences_url(message_id)},
    }  # fmt: skip


def _anytime(defn: dict, kind: str, msettings: dict) -> set[str]:
    """The windowed channels this message may use outside the person's 24-hour window: WhatsApp with a template
    variant; Messenger for a transactional message when the workspace's Messenger provider sends tagged updates."""
    out = set()
    if "template" in ((defn.get("variants") or {}).get("whatsapp") or {}):
        out.add("whatsapp")
    providers = (msettings.get("providers") or {}).get("messenger") or []
    if kind == "transactional" and any(isinstance(p, dict) and p.get("tag") for p in providers):
        out.add("messenger")
    return out


def _email_links(rendered: dict, msg: dict, profile: dict, links: Links) -> None:
    """UTM tags, click and open tracking (unless the person denied tracking), RFC 8058 unsubscribe headers."""
    consent = profile.get("consent") or {}
    track = not any((consent.get(s) or {}).get("status") == "denied" for s in ("email:tracking", "*:tracking"))
    campaign = msg["campaign_id"] or msg["journey_id"] or msg["template"] or ""
    utm = {"utm_source": "chorus", "utm_medium": "email", "utm_campaign": campaign, "utm_content": msg["id"]}
    track_email(rendered, msg["id"], links, utm, track)
    rendered["tracking"] = track
    if msg["kind"] == "marketing":
        rendered["headers"] = {
            "List-Unsubscribe": f"<{links.unsubscribe_url(msg['id'])}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }


WITHDRAWABLE = ("queued", "retrying")  # not gone out yet, and no worker is sending it
WITHDRAWN = "withdrawn: "  # the reason of a message withdrawn (skipped), before why
PUT_BACK = ("deferred", "retrying")  # a worker gives a message it was sending back to the queue


def withdrawable(conn: Connection, ws: str, journey_id: str, keys: list[str]) -> dict[str, str]:
    """Of these idempotency keys of a journey's messages, those :func:`withdraw` would still take (marketing, not
    gone out yet and no worker sending it), each with the profile it was queued for."""
    if not keys:
        return {}
    return dict(conn.execute(sa.select(messages.c.idempotency_key, messages.c.profile_id).where(
        messages.c.workspace_id == ws, messages.c.journey_id == journey_id,
        bulk.in_(messages.c.idempotency_key, sorted(keys), conn.dialect.name),
        messages.c.status.in_(WITHDRAWABLE), messages.c.kind == "marketing")).all())  # fmt: skip


def withdraw(conn: Connection, ws: str, journey_id: str, items: list[tuple[str, str]], at: datetime) -> list[str]:
    """Skip the marketing messages a journey asked for under these idempotency keys (``(key, reason)``) that have not
    gone out yet, in the caller's transaction: the journey no longer wants them (its person bought in the store while
    her reminder waited out quiet hours or a cap). Queued (a deferred one included) and waiting for a retry are
    withdrawn; one gone out stays so. One a worker is sending at this instant may be going out: it is left to the
    worker, with the reason noted (``withdraw_reason``), and if the worker gives it back to the queue (deferred,
    or a retry after a transient failure) it is skipped then (:func:`set_statuses`). Returns the ids withdrawn.

    On PostgreSQL the rows are locked first: a worker claiming or giving back one at the same moment either
    commits first (and the row is read again after it) or finds the withdrawal."""
    if not items:
        return []
    why = dict(items)
    q = sa.select(messages).where(
        messages.c.workspace_id == ws, messages.c.journey_id == journey_id,
        bulk.in_(messages.c.idempotency_key, sorted(why), conn.dialect.name),
        messages.c.status.in_((*WITHDRAWABLE, "sending")),
        # a transactional message is owed whatever she did since (the receipt of her first order, when she places
        # a second): only a stop withdraws one (withdraw_journey)
        messages.c.kind == "marketing",
    ).order_by(messages.c.id)  # fmt: skip
    return _withdraw(conn, q, lambda m: why[m["idempotency_key"]], at)[0]


def withdraw_journey(conn: Connection, ws: str, journey_id: str, reason: str, at: datetime,
                     limit: int | None = None) -> list[str]:  # fmt: skip
    """:func:`withdraw` the messages of a journey or broadcast not gone out yet (it was stopped): up to ``limit`` of
    them, those due first first; call again until :func:`withdraw_journey_batch` picks fewer than ``limit``."""
    return withdraw_journey_batch(conn, ws, journey_id, reason, at, limit)[0]


def withdraw_journey_batch(conn: Connection, ws: str, journey_id: str, reason: str, at: datetime,
                           limit: int | None = None) -> tuple[list[str], int]:  # fmt: skip
    """:func:`withdraw_journey`, and how many it picked. Some picked may have gone out before the lock (PostgreSQL
    checks again under it), so "fewer picked than ``limit``" is what says none is left (review: counting those
    withdrawn, a sweep stopped early; picking again in the same transaction broke the id order)."""
    q = sa.select(messages).where(messages.c.workspace_id == ws, messages.c.journey_id == journey_id,
                                  sa.or_(messages.c.status.in_(WITHDRAWABLE),
                                         sa.and_(messages.c.status == "sending", messages.c.withdraw_reason.is_(None))))
    return _withdraw(conn, q.order_by(messages.c.next_attempt_at, messages.c.id).limit(limit), lambda _m: reason, at)


def _withdraw(conn: Connection, q, reason_of, at: datetime) -> tuple[list[str], int]:
    """Withdraw what ``q`` selects: (the ids withdrawn, how many ``q`` picked)."""
    picked_n = None
    if conn.dialect.name == "postgresql":
        # which ones in the caller's order and limit, read without a lock; then locked in id order, the order every
        # writer of several messages takes them (set_statuses), and checked again under the lock (an outside
        # probe: a stop locking in due order deadlocked with a delivery recording its batch, and was lost)
        picked = list(conn.execute(q.with_only_columns(messages.c.id)).scalars())
        picked_n = len(picked)
        if not picked:
            return [], 0
        q = (q.where(bulk.in_(messages.c.id, picked, conn.dialect.name)).order_by(None).limit(None)
             .order_by(messages.c.id).with_for_update())  # fmt: skip
    rows = [dict(r._mapping) for r in conn.execute(q)]
    flying = [m for m in rows if m["status"] == "sending"]
    if flying:
        conn.execute(messages.update().where(messages.c.id == sa.bindparam("_id")).values(
            withdraw_reason=sa.bindparam("why")), [{"_id": m["id"], "why": reason_of(m)} for m in flying])  # fmt: skip
    gone = [m for m in rows if m["status"] != "sending"]
    set_statuses(conn, [_withdrawn(m, reason_of(m), at) for m in gone])
    return [m["id"] for m in rows], len(rows) if picked_n is None else picked_n


def _withdrawn(msg: dict, reason: str, at: datetime, profile: dict | None = None) -> Change:
    return Change(msg, "skipped", at, {"reason": "withdrawn", "message": reason},
                  {"next_attempt_at": None, "reason": WITHDRAWN + reason}, profile)  # fmt: skip


def _unless_withdrawn(conn: Connection, changes: list[Change]) -> list[Change]:
    """A message a worker gives back to the queue (deferred, a retry) that was withdrawn while it was being sent is
    skipped instead: read under the row's lock, so a withdrawal committing meanwhile is either seen here or finds
    the message queued again (and withdraws it then)."""
    back = [ch.msg["id"] for ch in changes if ch.status in PUT_BACK]
    if not back:
        return changes
    # every row locked, marked or not (review): PostgreSQL locks only rows that match the WHERE in its snapshot, so
    # a condition on the mark would not wait for a withdrawal marking the row and not committed yet
    q = sa.select(messages.c.id, messages.c.withdraw_reason).where(bulk.in_(messages.c.id, back, conn.dialect.name))
    if conn.dialect.name == "postgresql":  # in id order, as every writer of several messages locks them
        q = q.order_by(messages.c.id).with_for_update()
    marked = {mid: why for mid, why in conn.execute(q).all() if why is not None}
    if not marked:
        return changes
    return [_withdrawn(ch.msg, marked[ch.msg["id"]], ch.at, ch.profile)
            if ch.status in PUT_BACK and ch.msg["id"] in marked else ch for ch in changes]  # fmt: skip


def has_status(conn: Connection, message_id: str, status: str, **detail) -> bool:
    """Whether the history already holds this status (with these detail values): repeated callbacks are no-ops."""
    rows = conn.execute(
        sa.select(message_status.c.detail).where(
            message_status.c.message_id == message_id, message_status.c.status == status
        )
    ).scalars()
    return any(all(d.get(k) == v for k, v in detail.items()) for d in rows)


def pacing_histories(conn: Connection, ws: str, profile_ids: list[str], now: datetime) -> dict[str, list[tuple]]:
    """Per profile, (channel, send time) of its marketing messages sent or scheduled within the longest cap window
    (a week) before ``now``: what caps count. One query for many profiles."""
    # sent: when it went out; in flight and let through by a worker: then; queued: when it is due
    when = sa.func.coalesce(messages.c.sent_at, messages.c.approved_at, messages.c.next_attempt_at)
    q = sa.select(messages.c.profile_id, messages.c.id, messages.c.channel, when).where(
        messages.c.workspace_id == ws,
        bulk.in_(messages.c.profile_id, list(dict.fromkeys(profile_ids)), conn.dialect.name),
        messages.c.kind == "marketing",
        messages.c.status.in_(PACED),
        when.is_not(None),
        when > now - max(policy.WINDOWS.values()),
    )
    out: dict[str, list[tuple]] = {}
    for pid, mid, ch, at in conn.execute(q):
        if ch:
            out.setdefault(pid, []).append((ch, at, mid))
    return out


def pacing_history(
    conn: Connection, ws: str, profile_id: str, now: datetime, exclude: str | set[str] | None = None
) -> list[tuple]:
    """:func:`pacing_histories` of one person, without the message(s) ``exclude``."""
    skip = {exclude} if isinstance(exclude, str) else exclude or set()
    return [
        (ch, at) for ch, at, mid in pacing_histories(conn, ws, [profile_id], now).get(profile_id, []) if mid not in skip
    ]


def apply_pacing(
    conn: Connection,
    ws: ws_api.Workspace,
    msg: dict,
    profile: dict,
    now: datetime,
    batch: tuple[set[str], list[tuple]] | None = None,
) -> policy.Pace:
    """Caps and quiet hours for ``msg``. ``batch`` is (ids, sends) of a delivery batch in flight: its messages'
    rows hold a lease time, not a send time, so they count by the sends the worker already let through."""
    settings = ws.settings.get("messaging") or {}
    if msg["kind"] == "transactional" or not (settings.get("caps") or settings.get("quiet_hours")):
        return policy.Pace(now, None)  # nothing to check: spare the history query
    skip, also = batch or ({msg["id"]}, [])
    history = []
    if settings.get("caps"):
        # every id she had: a message queued before a merge keeps the merged-away id (review: capped apart)
        ids = [profile["id"], *profile.get("aliases", ())] if profile else [msg["profile_id"]]
        got = pacing_histories(conn, ws.id, list(dict.fromkeys([msg["profile_id"], *ids])), now)
        history = [(ch, t) for pid in got for ch, t, mid in got[pid] if mid not in skip]
    return _pace(ws, msg, profile, now, [*history, *also])


def _pace(ws: ws_api.Workspace, msg: dict, profile: dict, now: datetime, history: list[tuple]) -> policy.Pace:
    settings = ws.settings.get("messaging") or {}
    if msg["kind"] == "transactional" or not (settings.get("caps") or settings.get("quiet_hours")):
        return policy.Pace(now, None)
    return policy.pace(
        now, channel=msg["channel"], kind=msg["kind"], timezone_name=profile.get("timezone"),
        history=[(h[0], h[1]) for h in history], settings=settings,
    )  # fmt: skip


# -- reading ----------------------------------------------------------------------------------------------------
def get_message(conn: Connection, ws: str, message_id: str) -> dict:
    row = conn.execute(sa.select(messages).where(messages.c.workspace_id == ws, messages.c.id == message_id)).first()
    if row is None:
        raise NotFound(f"message {message_id} not found")
    history = conn.execute(
        sa.select(message_status.c.status, message_status.c.at, message_status.c.detail)
        .where(message_status.c.message_id == message_id)
        .order_by(message_status.c.id)
    ).all()
    return {
        "id": row.id, "profile_id": row.profile_id, "template": row.template, "kind": row.kind, "topic": row.topic,
        "channel": row.channel, "address": row.address, "status": row.status, "reason": row.reason,
        "choice": row.choice, "content": row.content, "journey_id": row.journey_id, "campaign_id": row.campaign_id,
        "provider": row.provider, "provider_message_id": row.provider_message_id, "attempts": row.attempts,
        "next_attempt_at": iso(row.next_attempt_at) if row.next_attempt_at else None,
        "sent_at": iso(row.sent_at) if row.sent_at else None,
        "created_at": iso(row.created_at),
        "history": [{"status": h.status, "at": iso(h.at), **h.detail} for h in history],
    }  # fmt: skip


def row_dict(row) -> dict:
    return dict(row._mapping)


def template_channels(conn: Connection, ws: str) -> dict[str, frozenset[str]]:
    """Every template of the workspace -> the channels it has a variant for (what a journey's message step may use)."""
    rows = conn.execute(sa.select(templates.c.name, templates.c.definition).where(templates.c.workspace_id == ws))
    return {name: frozenset((doc or {}).get("variants") or {}) for name, doc in rows}


def journey_message_counts(conn: Connection, ws: str, journey_id: str) -> dict:
    """The messages a journey or broadcast queued: how many, how many per current status, and how many ever reached
    each status (a clicked message was opened and delivered first: its current status alone would hide that)."""
    m, s = messages.c, message_status.c
    mine = sa.and_(m.workspace_id == ws, m.journey_id == journey_id)
    now = dict(conn.execute(sa.select(m.status, sa.func.count()).where(mine).group_by(m.status)).all())
    ever = dict(conn.execute(sa.select(s.status, sa.func.count(sa.distinct(s.message_id))).select_from(
        message_status.join(messages, s.message_id == m.id)).where(mine).group_by(s.status)).all())  # fmt: skip
    withdrawn = conn.execute(sa.select(sa.func.count()).where(
        mine, m.status == "skipped", m.reason.startswith(WITHDRAWN))).scalar()  # fmt: skip
    return {"total": sum(now.values()), "by_status": dict(sorted(now.items())), "reached": dict(sorted(ever.items())),
            "withdrawn": withdrawn}  # fmt: skip
