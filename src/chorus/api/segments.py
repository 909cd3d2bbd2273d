"""Segment and static list endpoints of the admin API. The rules and their checks live in chorus.segments; this
module parses requests and answers."""

from __future__ import annotations

import csv
import io
import logging
import re
from typing import Annotated

from fastapi import APIRouter, Body, Query, Request
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from chorus.api import listing
from chorus.api import segment_schemas as schemas
from chorus.api.admin import SVC, WS, Cursor, Limit
from chorus.api.common import JSON
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError
from chorus.profiles import views
from chorus.segments import engine, preview, rules, store
from chorus.store.db import read_only
from chorus.timeutil import utcnow

log = logging.getLogger("chorus.segments")
router = APIRouter(prefix="/api", tags=["segments"], route_class=AdminRoute)

_EXAMPLE = {"name": "Browse abandoners: laptops", "rule": {"and": [
    {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                   "window": "7d", "times": {"gte": 3}}},
    {"not": {"performed": {"event": "Order Completed", "window": "7d"}}},
]}}  # fmt: skip


def _definition_body(body: object, extra: frozenset = frozenset({"name"})) -> tuple[str | None, rules.Node]:
    if not isinstance(body, dict) or set(body) - {"rule", "yaml"} - extra:
        keys = ", ".join(f'"{k}"' for k in sorted(extra | {"rule"}))
        raise ChorusError(f'the body must be an object with {keys} (or "yaml": "<the rule as YAML>" for "rule")',
                          field="body")  # fmt: skip
    name = body.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise ChorusError("name must be text of 1 to 200 characters", field="name")
    if ("rule" in body) == ("yaml" in body):
        raise ChorusError("give the rule as JSON (rule) or as YAML text (yaml), one of the two", field="rule")
    if "yaml" in body:
        if not isinstance(body["yaml"], str):
            raise ChorusError("yaml must be the rule as YAML text", field="yaml")
        # errors name what was sent: the YAML text (its line and column), or a node of the rule in it (yaml.and[1])
        return name, rules.parse_yaml(body["yaml"], "yaml")
    return name, rules.parse(body["rule"], "rule")


# The request bodies as /openapi.json describes them. The handlers take the body as it is and validate it themselves
# (_definition_body), so that an error names the field in the product's words; these schemas only document it.
_NAME = {"type": "string", "minLength": 1, "maxLength": 200}
_RULE = {"rule": {"type": "object", "minProperties": 1, "maxProperties": 1,
                  "description": "the rule as JSON (docs/segments.md): a condition, its kind as its one key"},
         "yaml": {"type": "string", "description": "or the rule as YAML text"}}  # fmt: skip
_RULE_OR_YAML = [{"required": ["rule"]}, {"required": ["yaml"]}]  # one of the two
_SEGMENT_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": False, "oneOf": _RULE_OR_YAML,
               "properties": {"name": _NAME, **_RULE}},
    "example": _EXAMPLE}}}}  # fmt: skip
_PREVIEW_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": False, "oneOf": _RULE_OR_YAML, "properties": {
        **_RULE, "sample": {"type": "integer", "minimum": 0, "maximum": preview.MAX_SAMPLE, "default": 10,
                            "description": "how many members to show"}}},
    "example": {"rule": _EXAMPLE["rule"], "sample": 5}}}}}  # fmt: skip
_LIST_NAME_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "additionalProperties": False,
               "properties": {"name": {**_NAME, "description": "the list's name (default: its id)"}}},
    "example": {"name": "VIP guests"}}}}}  # fmt: skip


@router.put("/segments/{segment_id}", summary="Create or change a segment (its members are computed by the worker); "
            "the answer carries an estimate: how many people the rule holds now", openapi_extra=_SEGMENT_BODY,
            response_model=schemas.SavedSegment, responses=schemas.created(schemas.SavedSegment),
            response_description="Changed")  # fmt: skip
def put_segment(ws: WS, svc: SVC, segment_id: str, body: Annotated[dict, Body()],
                estimate: Annotated[bool, Query(description="Count the members the rule holds now (one query over "
                                                "the workspace; false to skip it)")] = True):  # fmt: skip
    store.check_id(segment_id)
    name, rule = _definition_body(body)
    with svc.engine.begin() as conn:
        existed = segment_id in store.definitions(conn, ws.id)
        d, _changed = store.save(conn, ws.id, segment_id, name or segment_id, rule, utcnow())
        out = store.view(conn, ws.id, d)
    svc.wake_worker.set()  # the worker computes it now
    if estimate:  # after the commit: the query does not hold the definitions lock that evaluations wait for
        out["estimate"] = _estimate(ws, svc, segment_id, rule)
    return JSON(out, status_code=200 if existed else 201)


def _estimate(ws, svc, segment_id: str, rule: rules.Node) -> dict | None:
    """How many people the saved rule holds now, or None when that cannot be said within the budget (or fails):
    the save has committed, the estimate is only a courtesy."""
    try:
        with read_only(svc.engine) as conn:  # on SQLite, no write lock for a read that may take seconds
            est = preview.preview(conn, ws, rule, utcnow(), sample=0, segment_id=segment_id,
                                  budget=svc.settings.segment_preview_seconds)  # fmt: skip
    except (ChorusError, SQLAlchemyError):
        log.warning("segment %s saved; its estimate could not be computed", segment_id, exc_info=True)
        return None
    return {"count": est["count"], "computed_at": est["computed_at"]}


@router.post("/segments/preview", summary="Who a rule holds now, without saving it: the count and a sample",
             openapi_extra=_PREVIEW_BODY, response_model=schemas.Preview, responses=schemas.OVER_BUDGET)  # fmt: skip
def preview_segment(ws: WS, svc: SVC, body: Annotated[dict, Body()]):
    _, rule = _definition_body(body, frozenset({"sample"}))
    with read_only(svc.engine) as conn:  # on SQLite, no write lock for a read that may take seconds
        return JSON(preview.preview(conn, ws, rule, utcnow(), sample=body.get("sample", 10),
                                    budget=svc.settings.segment_preview_seconds))  # fmt: skip


@router.get("/segments", summary="The workspace's segments, with their member counts", response_model=schemas.Segments)
def list_segments(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        return JSON({"segments": [store.view(conn, ws.id, d) for d in store.definitions(conn, ws.id).values()]})


@router.get("/segments/{segment_id}", summary="A segment: its rule, status and member count",
            response_model=schemas.Segment)  # fmt: skip
def get_segment(ws: WS, svc: SVC, segment_id: str):
    with read_only(svc.engine) as conn:
        return JSON(store.view(conn, ws.id, store.get(conn, ws.id, segment_id)))


@router.delete("/segments/{segment_id}",
               summary="Delete a segment (409 while a segment, an active journey, a broadcast or an audience uses it)",
               status_code=204, response_class=Response, response_description="Deleted: no body")  # fmt: skip
def delete_segment(ws: WS, svc: SVC, segment_id: str):
    engine.drop(svc.engine, ws.id, segment_id)  # its members leave it first: journeys see them go
    return Response(status_code=204)


@router.get("/segments/{segment_id}/members", summary="Who is in the segment now, by profile id (keyset pages)",
            response_model=schemas.MembersPage)  # fmt: skip
def get_members(ws: WS, svc: SVC, segment_id: str, limit: Limit = 100, cursor: Cursor = None):
    after = listing.decode_cursor(cursor, "segment-members", (str,))[0] if cursor else None
    with read_only(svc.engine) as conn:
        store.get(conn, ws.id, segment_id)
        page = store.members_page(conn, ws.id, segment_id, limit, after)
    nxt = listing.encode_cursor("segment-members", [page[-1]["profile_id"]]) if len(page) == limit else None
    return JSON({"members": page, "next_cursor": nxt})


@router.get("/segments/{segment_id}/export", summary="The members as CSV: profile id, user id, email, phone",
            response_class=Response, responses=schemas.CSV)  # fmt: skip
def export_members(ws: WS, svc: SVC, segment_id: str):
    with read_only(svc.engine) as conn:  # on SQLite, no write lock while every member is read
        store.get(conn, ws.id, segment_id)
        text = store.members_csv(conn, ws, segment_id)
    return Response(text, media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{segment_id}.csv"'})  # fmt: skip


@router.post("/segments/{segment_id}/recompute", summary="Compute the segment for everybody now (a diff: entries "
             "and exits are recorded with the cause batch)", response_model=schemas.Recomputed)  # fmt: skip
async def recompute(ws: WS, svc: SVC, segment_id: str):
    def run():  # off the event loop, the 404 check too: on SQLite a connection may wait for the write lock
        with read_only(svc.engine) as conn:
            store.get(conn, ws.id, segment_id)
        return engine.recompute(svc.engine, ws.id, segment_id)

    out = await run_in_threadpool(run)
    return JSON({"segment_id": segment_id, "entered": len(out.entered), "exited": len(out.exited)})


@router.get("/profiles/{profile_id}/segments", summary="The segments a person is in now, and her entries and exits",
            response_model=schemas.ProfileSegments)  # fmt: skip
def profile_segments(ws: WS, svc: SVC, profile_id: str):
    with read_only(svc.engine) as conn:
        pid = views.resolve_id(conn, ws.id, profile_id)
        return JSON(store.profile_segments(conn, ws.id, pid))


# -- static lists ----------------------------------------------------------------------------------------------------
@router.put("/lists/{list_id}", summary="Create or rename a static list", response_model=schemas.StaticList,
            openapi_extra=_LIST_NAME_BODY, responses=schemas.created(schemas.StaticList),
            response_description="Renamed")  # fmt: skip
def put_list(ws: WS, svc: SVC, list_id: str, body: Annotated[dict, Body()]):
    store.check_id(list_id)
    if not isinstance(body, dict) or set(body) - {"name"}:
        raise ChorusError('the body must be {"name": "..."}', field="body")
    name = body.get("name", list_id)
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ChorusError("name must be text of 1 to 200 characters", field="name")
    with svc.engine.begin() as conn:
        created = store.save_list(conn, ws.id, list_id, name, utcnow())
        out = store.get_list(conn, ws.id, list_id)
    return JSON(out, status_code=201 if created else 200)


@router.get("/lists", summary="The workspace's static lists", response_model=schemas.StaticLists)
def get_lists(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        return JSON({"lists": store.all_lists(conn, ws.id)})


_LIST_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": {"type": "object", "properties": {
        "add": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}},
        "remove": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "object"}]}}},
        "additionalProperties": False},
        "example": {"add": ["p_3f2a…", {"email": "ana@example.com"}], "remove": []}},
    "text/csv": {"schema": {"type": "string"}, "example": "email\nana@example.com\n"},
}}}  # fmt: skip


@router.post("/lists/{list_id}/members", summary="Add or remove people: JSON {add, remove} of profile ids or "
             "{kind: value} identifiers, or a CSV with profile_id or identifier columns (user_id, email, phone, …)",
             openapi_extra=_LIST_BODY, response_model=schemas.ListChange)  # fmt: skip
async def change_list(ws: WS, svc: SVC, list_id: str, request: Request):
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    raw = await request.body()
    names = None  # what an error names an entry by: its CSV line, else its place in the list (add[3])
    if kind == "text/csv":
        (add, names), remove = _csv_entries(raw, _kinds(ws)), []
    else:
        from chorus import safejson

        body = safejson.loads(raw, "body")
        if not isinstance(body, dict) or set(body) - {"add", "remove"}:
            raise ChorusError('the body must be {"add": [...], "remove": [...]} or a CSV (Content-Type: text/csv)',
                              field="body")  # fmt: skip
        add, remove = body.get("add", []), body.get("remove", [])
    invalid: list[dict] = []  # a CSV's rows whose value is not valid: reported, the good rows applied all the same

    def apply():
        # who the entries name is read first, without the write lock (on SQLite a 100,000-row upload held it for
        # half a minute while tracking waited: an outside probe); the write then takes their current ids in one
        # read under the lock, so a profile merged or erased meanwhile is followed or left out, never written back
        with read_only(svc.engine) as conn:
            if names is not None:
                ids_add, missing_add = _resolve_rows(conn, ws, add, names, invalid)
            else:
                ids_add, missing_add = _resolve(conn, ws, add, "add")
            ids_remove, missing_remove = _resolve(conn, ws, remove, "remove")
        with svc.engine.begin() as conn:
            now_add = views.resolve_ids(conn, ws.id, ids_add)
            now_remove = views.resolve_ids(conn, ws.id, ids_remove)
            changed = store.change_list(conn, ws.id, list_id, [now_add[p] for p in ids_add if p in now_add],
                                        [now_remove[p] for p in ids_remove if p in now_remove], utcnow())  # fmt: skip
            return changed, missing_add + missing_remove

    out, unknown = await run_in_threadpool(apply)  # never on the event loop: an upload may name 100,000 people
    extra = {"invalid": invalid[:100], "invalid_count": len(invalid)} if names is not None else {}
    return JSON({**out, "not_found": unknown[:100], "not_found_count": len(unknown), **extra})


MAX_ENTRIES = 100_000
# a CSV's header as spreadsheets and mailing tools export it ("Email Address", "Phone Number", "User ID"): compared
# in lower case with spaces and hyphens as underscores, then these names
_COLUMN_ALIASES = {"email_address": "email", "e_mail": "email", "phone_number": "phone", "mobile": "phone",
                   "mobile_number": "phone", "userid": "user_id", "profileid": "profile_id"}  # fmt: skip


def _column(header: str) -> str:
    name = re.sub(r"[\s-]+", "_", header.strip().lower())
    return _COLUMN_ALIASES.get(name, name)


def _csv_entries(raw: bytes, kinds: tuple[str, ...]) -> tuple[list, list[str]]:
    """The rows of a CSV upload, each the list of what its identifier columns name (in the order of ``kinds``,
    profile id first: the first that names somebody is the row's person), and the line each is on (``line 3``:
    the header is line 1)."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ChorusError("the CSV is not UTF-8 text", field="body") from None
    if "\x00" in text:
        raise ChorusError("the CSV holds a NUL character", field="body")
    reader = csv.DictReader(io.StringIO(text))
    out, lines = [], []
    try:
        found: dict[str, str] = {}  # kind -> its header (the one column that names it)
        by_name = {_column(k): k for k in ("profile_id", *kinds)}  # a declared kind in any case: crmId, CRMID
        for header in reader.fieldnames or []:
            if isinstance(header, str) and (kind := by_name.get(_column(header))):
                if kind in found:  # which one holds a row's value? Neither is taken over the other (an outside
                    # probe: a value only in the second column was dropped, the row reported nowhere)
                    line = f"line {reader.line_num}"  # the header's (1, unless blank lines come first)
                    raise ChorusError(f"{line}: columns '{found[kind][:64]}' and '{header[:64]}' both name {kind}; "
                                      "keep one column per identifier", field=line)  # fmt: skip
                found[kind] = header
        cols = [(k, found[k]) for k in ("profile_id", *kinds) if k in found]
        if not cols:
            raise ChorusError(f"the CSV needs a header with a column of profile_id or an identifier: "
                              f"{', '.join(kinds)}", field="body")  # fmt: skip
        for row in reader:
            # the csv module counts the physical lines it read (blank ones too): this row ends on this line
            line = f"line {reader.line_num}"
            if len(out) >= MAX_ENTRIES:
                raise ChorusError(f"{line}: at most {MAX_ENTRIES} rows per upload", field=line)
            names = [v.strip() if k == "profile_id" else {k: v.strip()}
                     for k, h in cols if isinstance(v := row.get(h), str) and v.strip()]  # fmt: skip
            out.append(names)  # a row with no value names nobody: reported as invalid, never dropped unseen
            lines.append(line)
    except csv.Error as exc:  # a field over the csv module's limit, a broken quote (its text is the module's)
        why = "a cell longer than the limit" if "field larger" in str(exc) else "a broken quote or line ending"
        line = f"line {max(reader.reader.line_num, 1)}"  # the line it was reading (DictReader's own lags a row)
        raise ChorusError(f"{line}: not readable as CSV ({why})", field=line) from None
    return out, lines


def _kinds(ws) -> tuple[str, ...]:
    """The identifier kinds an entry may name a person by."""
    return ("user_id", "email", "phone", "anonymous_id", *ws.identity.declared)


def _resolve_one(conn, ws, e: object, field: str) -> str:
    """The profile id an entry names (ChorusError 404: nobody; 400: not an entry, or not a valid value)."""
    if isinstance(e, str):
        return views.resolve_id(conn, ws.id, e)
    if isinstance(e, dict) and len(e) == 1 and next(iter(e)) in _kinds(ws) and isinstance(next(iter(e.values())), str):
        ((k, v),) = e.items()
        return views.find_by_ident(conn, ws.id, views.lookup_ident(ws.identity, **{k: v}))
    raise ChorusError("each entry is a profile id or one identifier of a known kind, as text, such as "
                      '{"email": "ana@example.com"}', field=field)  # fmt: skip


def _resolve(conn, ws, entries: object, field: str) -> tuple[list[str], list]:
    """Profile ids of a JSON body's entries, and those that name nobody; an invalid entry is a 400 naming its
    place in ``field`` (``add[3]``)."""
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ChorusError(f"{field} must be a list of at most {MAX_ENTRIES} profile ids or identifiers", field=field)
    ids, missing = [], []
    for i, e in enumerate(entries):
        try:
            ids.append(_resolve_one(conn, ws, e, f"{field}[{i}]"))
        except ChorusError as exc:
            if exc.status != 404:
                raise ChorusError(exc.message, field=f"{field}[{i}]") from None
            missing.append(e)
    return ids, missing


def _resolve_rows(conn, ws, rows: list[list], lines: list[str], invalid: list[dict]) -> tuple[list[str], list]:
    """Profile ids of a CSV's rows: each row's person is the first of its identifiers that names somebody (an
    export's stale profile id falls back to the email beside it). A row none of whose identifiers names anybody is
    not found (its identifiers together); one whose values are all invalid or unknown, with an invalid one, is put
    in ``invalid`` (its line and why), as is one with no value at all, and the others applied: good rows next to a
    bad one are not lost."""
    ids, missing = [], []
    for names, line in zip(rows, lines, strict=True):
        if not names:  # every identifier cell of the row is empty
            invalid.append({"line": int(line.removeprefix("line ")), "reason": "the row has no value in its "
                            "profile_id or identifier columns"})  # fmt: skip
            continue
        why = None
        for e in names:
            try:
                ids.append(_resolve_one(conn, ws, e, line))
                break
            except ChorusError as exc:
                if exc.status != 404 and why is None:
                    why = exc.message
        else:
            if why is not None:
                invalid.append({"line": int(line.removeprefix("line ")), "reason": why})
            elif len(names) == 1:
                missing.append(names[0])
            else:
                missing.append({k: v for e in names
                                for k, v in ({"profile_id": e} if isinstance(e, str) else e).items()})
    return ids, missing
