"""Social audience endpoints of the admin API: define audiences, sync them to Meta or Google, export them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from chorus.api.admin import SVC, WS
from chorus.api.common import JSON
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError, field_of
from chorus.messaging.audiences import settings as audience_settings
from chorus.messaging.audiences import store, sync
from chorus.messaging.audiences.membership import MAX_ENTRIES, parse_entry
from chorus.store.db import read_only
from chorus.timeutil import utcnow

router = APIRouter(prefix="/api", tags=["audiences"], route_class=AdminRoute)

_AUDIENCE_EXAMPLE = {
    "name": "vip-instagram",
    "provider": "meta",
    "destination": "23851234567890123",
    "identifiers": ["email", "phone", "name", "address"],
    "consent": {"topic": "marketing", "mode": "opt_out"},
}
_FOLLOWING_EXAMPLE = {
    "name": "laptop-browsers-instagram",
    "provider": "meta",
    "destination": "23851234567890123",
    "identifiers": ["email", "phone"],
    "source": {"segment": "laptop-browsers", "interval_seconds": 300},
}
_SYNC_EXAMPLE = {"profiles": ["p_3f2a…", {"email": "ana@example.com"}, {"phone": "+31612345678"}], "mode": "replace"}


@router.post("/audiences", summary="Define an audience (Meta Custom Audience, Google Customer Match list, or file)",
             status_code=201)  # fmt: skip
def create_audience(ws: WS, svc: SVC, body: Annotated[dict, Body(examples=[_AUDIENCE_EXAMPLE, _FOLLOWING_EXAMPLE])]):
    try:
        clean = audience_settings.validate_audience(body, ws.settings)
    except ValueError as exc:
        raise ChorusError(str(exc), field=field_of(str(exc))) from None
    return JSON(store.create(svc.engine, ws.id, clean, utcnow()), status_code=201)


@router.get("/audiences", summary="The workspace's audiences, with their member counts and last sync")
def list_audiences(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        return JSON({"audiences": store.list_all(conn, ws.id)})


@router.get("/audiences/{name}", summary="An audience, its member count and its last sync")
def get_audience(ws: WS, svc: SVC, name: str):
    with read_only(svc.engine) as conn:
        return JSON(store.view(conn, store.get(conn, ws.id, name)))


@router.post(
    "/audiences/{name}/sync",
    summary="Sync the audience: replace its members, add or remove some; {} syncs a following audience now",
)
async def sync_audience(ws: WS, svc: SVC, name: str, body: Annotated[dict, Body(examples=[_SYNC_EXAMPLE])]):
    if not isinstance(body, dict) or set(body) - {"profiles", "mode"}:
        raise ChorusError('the body must be {"profiles": [...], "mode": "replace" | "add" | "remove"}')
    if not body:  # an audience that follows a segment: sync it now, from the segment's members
        return JSON(await run_in_threadpool(sync.sync_followed, svc.engine, ws, name))
    items = body.get("profiles")
    if not isinstance(items, list):
        raise ChorusError("profiles must be a list of profile ids or objects with one identifier", field="profiles")
    if len(items) > MAX_ENTRIES:
        raise ChorusError(f"profiles holds more than {MAX_ENTRIES:,} items; sync in parts with mode add",
                          field="profiles")  # fmt: skip
    declared = tuple(ws.identity.declared)
    entries = [parse_entry(item, f"profiles[{i}]", declared) for i, item in enumerate(items)]
    result = await run_in_threadpool(sync.sync, svc.engine, ws, name, entries, body.get("mode", "replace"))
    return JSON(result)


@router.get(
    "/audiences/{name}/export",
    summary="The audience's members as the platform's customer-file CSV (hashed)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def export_audience(
    ws: WS, svc: SVC, name: str,
    format: Annotated[str | None, Query(description="meta or google (default: the audience's own)")] = None,
):  # fmt: skip
    text, counts = sync.export(svc.engine, ws, name, format)
    return Response(
        text.encode(),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}-{counts["format"]}.csv"',
            "X-Chorus-Rows": str(counts["rows"]),
            "X-Chorus-Skipped": ",".join(f"{k}={v}" for k, v in sorted(counts["skipped"].items())),
        },
    )
