"""Journey and broadcast endpoints of the admin API: publish (with dry runs and migrations), control, API starts,
statistics, who is at a node, and a person's journeys. The rules live in chorus.journeys (``manage``, ``stats``);
this module parses requests and answers.

A journey and a broadcast share one id space (a broadcast is a journey with a scheduled entry and one message step):
an id of the other kind is a 404 here that names it, and where it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection

from chorus.api import listing
from chorus.api.admin import SVC, WS, Cursor, Limit
from chorus.api.common import JSON
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError, NotFound
from chorus.journeys import manage, runtime, stats, store
from chorus.messaging import outbox
from chorus.messaging.policy import MESSAGE_CHANNELS
from chorus.profiles import views
from chorus.store.db import read_only

router = APIRouter(prefix="/api", tags=["journeys"], route_class=AdminRoute)


# -- what the endpoints answer, as /openapi.json documents it (closed: an undocumented field fails the check) -------
class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Version(_Closed):
    version: int
    published_at: datetime


class Run(_Closed):
    run_at: datetime
    version: int
    done: bool
    started: int = Field(description="people started in this run so far")
    attempts: int = Field(description="failures of its current chunk since it last moved on (0 when none)")
    retry_at: datetime | None = Field(description="when a failed chunk is tried again; null when none failed")
    error: str | None = Field(description="why the current chunk last failed; null when none failed")


class Journey(_Closed):
    id: str
    name: str
    kind: Literal["journey", "broadcast"]
    entry: Literal["event", "segment", "schedule", "api"]
    status: Literal["active", "paused", "stopped", "archived"]
    version: int = Field(description="the current version: new people enter it")
    created_at: datetime
    updated_at: datetime
    versions: list[Version]
    runs: list[Run] | None = Field(description="a scheduled entry's runs; null for other entries")


class Journeys(_Closed):
    journeys: list[Journey]


class Broadcasts(_Closed):
    broadcasts: list[Journey]


class Where(_Closed):
    version: int
    node: str | None
    status: str = Field(description="active, tracking (in the goal window after the end) or new (held while paused)")
    people: int
    moves_to: str | None = Field(None, description="the node of the new version the migration moves them to")


class Published(_Closed):
    id: str
    kind: Literal["journey", "broadcast"]
    version: int = Field(description="the version published (with dry_run: the one it would be)")
    dry_run: bool
    people_inside: int = Field(description="people inside the journey now, every version")
    where: list[Where] = Field(description="where they are, per version, node and status")
    moving: int = Field(description="how many the migration moves")


class Started(_Closed):
    entered: bool
    held: bool | None = Field(None, description="true when the journey is paused: the start runs on resume")
    instance_id: str | None = None
    status: str | None = None
    node: str | None = None
    reason: str | None = Field(None, description="why she did not enter")


class Count(_Closed):
    key: str | None = Field(description="the branch, or the exit reason (null: none)")
    count: int


class NodeStats(_Closed):
    node: str
    type: str
    entered: int = Field(description="arrivals at the node (a person looping back arrives again)")
    waiting_now: int = Field(description="people at the node now")
    tracking_now: int = Field(description="people past their path's end here, in the goal window")
    passed: int
    passed_by_branch: list[Count]
    exited: int
    exited_by_reason: list[Count]
    converted: int = Field(description="conversions while at the node")
    converted_by_branch: list[Count]
    errors: int = Field(description="side effects refused at the node")
    pass_rate: float | None = Field(description="passed / entered; null when nobody entered")
    conversion_rate: float | None = Field(description="converted / entered; null when nobody entered")


class Totals(_Closed):
    entered: int
    inside: int = Field(description="active + tracking + held starts")
    active: int
    tracking: int
    converted: int
    exited: int
    conversion_rate: float | None


class ArmStats(_Closed):
    split: str
    arm: str
    holdout: bool
    entered: int
    converted: int = Field(description="people of the arm who converted after entering it")
    conversion_rate: float | None


class VersionStats(_Closed):
    version: int
    totals: Totals
    nodes: list[NodeStats] = Field(description="every node of the version, from the start on (breadth first)")
    arms: list[ArmStats]


class Stats(_Closed):
    journey_id: str
    kind: Literal["journey", "broadcast"]
    status: str
    version: int | None = Field(description="the version asked for; null: all of them")
    totals: Totals
    versions: list[VersionStats]


class Person(_Closed):
    instance_id: str
    profile_id: str
    version: int
    status: Literal["active", "tracking"]
    entered_at: datetime
    since: datetime = Field(description="her last transition")


class PeoplePage(_Closed):
    people: list[Person]
    next_cursor: str | None = Field(description="the cursor of the next page; null on the last one")


class Instance(_Closed):
    instance_id: str
    journey_id: str
    version: int
    status: str
    node: str | None
    branch: str | None
    key: str | None
    entered_at: datetime
    converted_at: datetime | None
    exited_at: datetime | None
    exit_reason: str | None
    arms: dict[str, str] = Field(description="split node -> her arm")


class Record(_Closed):
    journey_id: str
    version: int
    instance_id: str
    kind: Literal["entered", "waiting", "step", "converted", "exited", "error"]
    node: str | None
    branch: str | None
    arm: str | None
    at: datetime
    detail: str | None


class ProfileJourneys(_Closed):
    profile_id: str = Field(description="the profile's current id (a merged id resolves to it)")
    instances: list[Instance] = Field(description="newest first")
    records: list[Record] = Field(description="oldest first, the first 500")


class Messages(_Closed):
    total: int
    by_status: dict[str, int] = Field(description="messages per current status")
    reached: dict[str, int] = Field(description="messages that ever reached each status (clicked ones were opened)")
    withdrawn: int = Field(description="skipped because the person left by the goal or an exit criterion, or the "
                                       "broadcast was stopped, before the message went out (reason 'withdrawn: …')")


class Broadcast(Journey):
    stats: Stats
    messages: Messages


def _created(model: type[BaseModel]) -> dict:
    return {201: {"model": model, "description": "Published"}}


# -- helpers ---------------------------------------------------------------------------------------------------------
def _of_kind(conn: Connection, ws: str, jid: str, kind: str) -> store.Journey:
    try:
        jr = store.get(conn, ws, jid)
    except NotFound as exc:
        raise NotFound(exc.message, field=f"{kind}_id") from None
    if jr.kind != kind:
        raise NotFound(f"{jid} is a {jr.kind}, not a {kind}: see /api/{jr.kind}s/{jid}", field=f"{kind}_id")
    return jr


@contextmanager
def _snapshot(svc) -> Iterator[Connection]:
    """A read-only connection whose statements all see one snapshot: statistics are several queries (records,
    instances, messages, runs), and under READ COMMITTED a transition committing between two of them would show
    people exited and never entered, or messages sent by a run that started nobody. SQLite's deferred read
    transaction is one snapshot already."""
    with read_only(svc.engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        yield conn


def _migrate(values: list[str] | None) -> dict[str, str] | None:
    """``?migrate=old:new`` repeated or comma-separated, as the mapping manage.publish takes."""
    if not values:
        return None
    out: dict[str, str] = {}
    for part in (p.strip() for v in values for p in v.split(",")):
        old, sep, new = part.partition(":")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            shown = f"'{part[:64]}'" if part else "an empty one"
            raise ChorusError(f"migrate: {shown}: each migration is old_node:new_node", field="migrate")
        if old in out and out[old] != new:  # the same move twice is one move
            field = f"migrate.{old[:64]}"
            raise ChorusError(f"{field}: '{old[:64]}' is migrated twice (to '{out[old][:64]}' and to '{new[:64]}'); "
                              "people at one node move to one node", field=field)  # fmt: skip
        out[old] = new
    return out


DryRun = Annotated[bool, Query(description="validate and say what would change (people affected, where), writing "
                               "nothing")]  # fmt: skip
Migrate = Annotated[list[str] | None, Query(description=(
    "move the people waiting at an old node to a node of the same waiting kind (delay, wait) of the new version: "
    "old:new, repeated or comma-separated"))]  # fmt: skip
VersionQ = Annotated[int | None, Query(ge=1, le=2**31 - 1, description="one version (default: all of them)")]

# The request bodies as /openapi.json describes them: their top-level fields, types and what is required. The
# handlers take the body as it is and validate it themselves (manage.publish, manage.publish_broadcast), so an
# error names the field in the product's words; these schemas only document it (a body they refuse is a 400).
_ID = {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$",
       "description": "1 to 64 letters, digits, '_', '.' or '-' (not starting with '.' or '-')"}  # fmt: skip
_REF = {"type": "string", "minLength": 1, "maxLength": 64}  # the id of a template, segment, ...
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_DEFINITION_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["id", "entry", "start", "nodes"],
    "description": "the journey definition as JSON (docs/journeys.md)",
    "properties": {
        "id": _ID,
        "name": _NAME,
        "entry": {"type": "object", "description": "one of event, segment, schedule, api",
                  "minProperties": 1, "maxProperties": 1},
        "reentry": {"anyOf": [{"type": "string", "enum": ["never", "after_exit", "per_key"]},
                              {"type": "object", "required": ["cooldown"], "additionalProperties": False,
                               "properties": {"cooldown": {"type": "string", "description": "e.g. 7d"}}}]},
        "goal": {"type": "object", "description": "event, segment or rule, and within"},
        "exit_on_goal": {"type": "boolean", "default": True},
        "exit": {"type": "array", "minItems": 1, "maxItems": 20, "items": {"type": "object"},
                 "description": "exit criteria"},
        "start": {**_ID, "description": "the id of the first node"},
        "nodes": {"type": "object", "minProperties": 1, "maxProperties": 200, "description": "node id -> node",
                  "propertyNames": {"pattern": _ID["pattern"]}, "additionalProperties": {"type": "object"}},
    },
}  # fmt: skip
_DEFINITION = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": _DEFINITION_SCHEMA,
    "example": {"id": "welcome", "entry": {"event": {"event": "Signed Up"}}, "start": "hello",
                "nodes": {"hello": {"type": "message", "template": "welcome", "next": "done"},
                          "done": {"type": "exit"}}}}}}}  # fmt: skip
_BROADCAST_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["id", "template"],
    "properties": {
        "id": _ID,
        "name": _NAME,
        "template": {**_REF, "description": "the template's id"},
        "segment": {**_REF, "description": "the audience: a segment's id"},
        "channel": {"anyOf": [{"type": "string", "enum": ["auto", *MESSAGE_CHANNELS]},
                              {"type": "array", "minItems": 1,
                               "items": {"type": "string", "enum": [*MESSAGE_CHANNELS]}}],
                    "default": "auto", "description": "auto (the person's preferred reachable channel), a channel, or "
                    "a list of channels"},
        "kind": {"type": "string", "enum": list(outbox.KINDS), "default": "marketing"},
        "topic": {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
        "data": {"type": "object", "description": "the message's data"},
        "schedule": {"anyOf": [{"type": "string", "enum": ["now"]}, {"type": "object", "description":
                               "a journey schedule: at, every, time, ..."}], "default": "now"},
        "goal": {"type": "object", "description": "event, segment or rule, and within"},
        "holdout": {"type": "integer", "minimum": 1, "maximum": 99,
                    "description": "the percentage kept out, measured against goal (which needs within)"},
        "holdout_by": {"type": "string", "enum": ["profile", "identifier"], "default": "profile",
                       "description": "what a person's holdout bucket hashes (with holdout)"},
    },
}  # fmt: skip
_BROADCAST = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": _BROADCAST_SCHEMA,
    "example": {"id": "spring-sale", "segment": "newsletter", "template": "spring", "schedule": "now",
                "goal": {"event": {"event": "Order Completed"}, "within": "7d"}, "holdout": 10}}}}}  # fmt: skip
# The /start body is read as Any (checked in the handler): as dict | None, FastAPI documented "object or null" beside
# this object
_START = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": False,
               "oneOf": [{"required": ["profile_id"]}, {"required": ["to"]}], "properties": {
        "profile_id": {"type": "string", "minLength": 1},
        "to": {"type": "object", "description": "or one identifier: email, phone, user_id, a declared kind...",
               "minProperties": 1, "maxProperties": 1, "additionalProperties": {"type": "string"}},
        "data": {"type": "object", "description": "the start's fields (the entry key among them)"}}},
    "example": {"to": {"email": "ana@example.com"}, "data": {"order_id": "o-1001"}}}}}}  # fmt: skip


# -- journeys --------------------------------------------------------------------------------------------------------
@router.get("/journeys", summary="The workspace's journeys (broadcasts are at /api/broadcasts)",
            response_model=Journeys)  # fmt: skip
def list_journeys(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        ids = [jid for jid, jr in store.all_journeys(conn, ws.id).items() if jr.kind == "journey"]
        return JSON({"journeys": [manage.view(conn, ws.id, jid) for jid in ids]})


@router.post("/journeys", summary="Publish a journey: validated, its references checked, stored as a new immutable "
             "version (people inside keep theirs unless migrated)", openapi_extra=_DEFINITION,
             response_model=Published, responses=_created(Published),
             response_description="A dry run: what publishing would do")  # fmt: skip
def publish_journey(ws: WS, svc: SVC, body: Annotated[dict, Body()], dry_run: DryRun = False,
                    migrate: Migrate = None):  # fmt: skip
    moves = _migrate(migrate)
    with svc.engine.begin() as conn:
        out = manage.publish(conn, ws.id, body, runtime.now(), kind="journey", dry_run=dry_run, migrate=moves)
    svc.wake_worker.set()
    return JSON(out, status_code=200 if dry_run else 201)


@router.get("/journeys/{journey_id}", summary="A journey: status, versions, runs", response_model=Journey)
def get_journey(ws: WS, svc: SVC, journey_id: str):
    with read_only(svc.engine) as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        return JSON(manage.view(conn, ws.id, journey_id))


@router.get("/journeys/{journey_id}/definition", summary="A version's definition, in its canonical JSON",
            response_model=dict[str, Any])  # fmt: skip
def get_definition(ws: WS, svc: SVC, journey_id: str, version: Annotated[int | None, Query(
        ge=1, le=2**31 - 1, description="the version (default: the current one)")] = None):  # fmt: skip
    with read_only(svc.engine) as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        return JSON(manage.definition_json(conn, ws.id, journey_id, version))


@router.get("/journeys/{journey_id}/stats", summary="Per version and node: entered, waiting now, passed, exited, "
            "converted, with rates; totals; split arms", response_model=Stats)  # fmt: skip
def journey_stats(ws: WS, svc: SVC, journey_id: str, version: VersionQ = None):
    with _snapshot(svc) as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        return JSON(stats.stats(conn, ws.id, journey_id, version))


@router.get("/journeys/{journey_id}/people", summary="Who is at a node now (keyset pages by instance id)",
            response_model=PeoplePage)  # fmt: skip
def journey_people(ws: WS, svc: SVC, journey_id: str, node: Annotated[str, Query(min_length=1, max_length=64)],
                   version: VersionQ = None, limit: Limit = 100, cursor: Cursor = None):  # fmt: skip
    after = listing.decode_cursor(cursor, "journey-people", (str,))[0] if cursor else None
    with read_only(svc.engine) as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        page = stats.people_at(conn, ws.id, journey_id, node, version, limit, after)
    nxt = listing.encode_cursor("journey-people", [page[-1]["instance_id"]]) if len(page) == limit else None
    return JSON({"people": page, "next_cursor": nxt})


@router.post("/journeys/{journey_id}/start", summary="Start one person in a journey entered by an API call "
             "(idempotent with the Idempotency-Key header)", openapi_extra=_START,
             response_model=Started)  # fmt: skip
def start_journey(ws: WS, svc: SVC, journey_id: str, body: Annotated[Any, Body()] = None,
                  idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1,
                                                                max_length=200)] = None):  # fmt: skip
    if body is not None and not isinstance(body, dict):
        raise ChorusError("body must be a JSON object", field="body")
    body = body or {}  # none, or null: _person names what is missing
    unknown = set(body) - {"profile_id", "to", "data"}
    if unknown:
        raise ChorusError("the body has profile_id or to, and data", field=sorted(unknown)[0][:64])
    # the key is the start's id: the same key again is the same start, which enters nobody twice
    request_id = idempotency_key or uuid.uuid4().hex
    with svc.engine.begin() as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        pid = _person(conn, ws, body)
        out = manage.start(conn, ws.id, journey_id, pid, body.get("data"), request_id, runtime.now())
    svc.wake_worker.set()
    return JSON(out)


def _person(conn: Connection, ws, body: dict) -> str:
    if ("profile_id" in body) == ("to" in body):
        raise ChorusError("give the person as profile_id or as to (one identifier), one of the two",
                          field="profile_id")  # fmt: skip
    if "profile_id" in body:
        if not isinstance(body["profile_id"], str) or not body["profile_id"]:
            raise ChorusError("profile_id is a profile id", field="profile_id")
        return body["profile_id"]
    to = body["to"]
    kinds = ("email", "phone", "user_id", "anonymous_id", *ws.identity.declared)
    if not isinstance(to, dict) or len(to) != 1 or next(iter(to)) not in kinds or not isinstance(
            next(iter(to.values())), str):  # fmt: skip
        raise ChorusError(f"to is one identifier as text, of a kind: {', '.join(kinds)}", field="to")
    ((kind, value),) = to.items()
    try:
        return views.find_by_ident(conn, ws.id, views.lookup_ident(ws.identity, **{kind: value}))
    except ChorusError as exc:
        raise type(exc)(exc.message, field=f"to.{kind}") from None


Action = Literal["pause", "resume", "stop", "archive"]


@router.post("/journeys/{journey_id}/{action}", summary="pause (inputs are held), resume (they are given again in "
             "time order), stop or archive (everybody inside exits; cannot be undone)",
             response_model=Journey)  # fmt: skip
def control_journey(ws: WS, svc: SVC, journey_id: str, action: Action):
    with svc.engine.begin() as conn:
        _of_kind(conn, ws.id, journey_id, "journey")
        out = manage.control(conn, ws.id, journey_id, action, runtime.now())
    svc.wake_worker.set()  # the sweep gives held inputs again, or tells everybody inside
    return JSON(out)


@router.get("/profiles/{profile_id}/journeys", summary="A person's journeys: her instances and her records",
            response_model=ProfileJourneys)  # fmt: skip
def profile_journeys(ws: WS, svc: SVC, profile_id: str):
    with read_only(svc.engine) as conn:
        try:
            pid = views.resolve_id(conn, ws.id, profile_id)
        except NotFound as exc:
            raise NotFound(exc.message, field="profile_id") from None
        return JSON(stats.person_journeys(conn, ws.id, pid))


# -- broadcasts ------------------------------------------------------------------------------------------------------
@router.get("/broadcasts", summary="The workspace's broadcasts", response_model=Broadcasts)
def list_broadcasts(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        ids = [jid for jid, jr in store.all_journeys(conn, ws.id).items() if jr.kind == "broadcast"]
        return JSON({"broadcasts": [manage.view(conn, ws.id, jid) for jid in ids]})


@router.post("/broadcasts", summary="Publish a broadcast: one message to a segment, now, once or on a schedule, "
             "with an optional holdout", openapi_extra=_BROADCAST, response_model=Published,
             responses=_created(Published), response_description="A dry run: what publishing would do")  # fmt: skip
def publish_broadcast(ws: WS, svc: SVC, body: Annotated[dict, Body()], dry_run: DryRun = False):
    with svc.engine.begin() as conn:
        out = manage.publish_broadcast(conn, ws.id, body, runtime.now(), dry_run=dry_run)
    svc.wake_worker.set()
    return JSON(out, status_code=200 if dry_run else 201)


@router.get("/broadcasts/{broadcast_id}", summary="A broadcast: status, runs, statistics, its messages by status",
            response_model=Broadcast)  # fmt: skip
def get_broadcast(ws: WS, svc: SVC, broadcast_id: str):
    with _snapshot(svc) as conn:
        _of_kind(conn, ws.id, broadcast_id, "broadcast")
        return JSON({**manage.view(conn, ws.id, broadcast_id), "stats": stats.stats(conn, ws.id, broadcast_id),
                     "messages": outbox.journey_message_counts(conn, ws.id, broadcast_id)})  # fmt: skip


@router.post("/broadcasts/{broadcast_id}/{action}", summary="pause, resume, stop or archive a broadcast",
             response_model=Journey)  # fmt: skip
def control_broadcast(ws: WS, svc: SVC, broadcast_id: str, action: Action):
    with svc.engine.begin() as conn:
        _of_kind(conn, ws.id, broadcast_id, "broadcast")
        out = manage.control(conn, ws.id, broadcast_id, action, runtime.now())
    svc.wake_worker.set()
    return JSON(out)
