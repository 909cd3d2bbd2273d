"""The admin API (/api): profiles, timeline, export, erasure, rejected events, imports, workspace settings.

Every call needs ``Authorization: Bearer <api_key>``; a key opens exactly one workspace.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from chorus import safejson
from chorus import workspaces as ws_api
from chorus.api import listing
from chorus.api.common import JSON, Services, bearer_key
from chorus.api.guard import AdminRoute
from chorus.errors import ChorusError, field_of
from chorus.profiles import privacy, views
from chorus.store.db import read_only

router = APIRouter(prefix="/api", tags=["admin"], route_class=AdminRoute)


def services(request: Request) -> Services:
    return request.app.state.services


def workspace(request: Request) -> ws_api.Workspace:
    """The workspace the request's api key opens (401 without a key, or with one that opens none). Looked up once
    per request: AdminRoute calls this before it reads a body, and the operation's dependency then gets the same."""
    found = getattr(request.state, "workspace", None)
    if found is None:
        key = bearer_key(request)
        with read_only(services(request).engine) as conn:
            found = request.state.workspace = ws_api.by_api_key(conn, key)
    return found


workspace.authenticates = True  # AdminRoute checks the key before it reads a body (guard.authenticator)


WS = Annotated[ws_api.Workspace, Depends(workspace)]
SVC = Annotated[Services, Depends(services)]
# every list: the same two parameters (see chorus.api.listing)
Limit = Annotated[int, Query(ge=1, le=listing.MAX_LIMIT, description="items per page")]
Cursor = Annotated[str | None, Query(max_length=1000, description="next_cursor of the previous page")]


@router.get("/workspace", summary="The workspace this key opens, with its settings")
def get_workspace(ws: WS):
    return JSON({"id": ws.id, "name": ws.name, "settings": ws.settings})


@router.patch("/workspace/settings", summary="Change settings (default_region, identifiers, trait_policies)")
def patch_settings(ws: WS, svc: SVC, patch: dict):
    try:
        return JSON({"settings": ws_api.update_settings(svc.engine, ws.id, patch)})
    except ValueError as exc:
        raise ChorusError(str(exc), field=field_of(str(exc))) from None


@router.get("/keys", summary="The workspace's write keys by source (client keys in full; server keys are secret)")
def get_keys(ws: WS, svc: SVC):
    with read_only(svc.engine) as conn:
        return JSON({"api_key": {"count": 1, "revocable": False}, "write_keys": ws_api.list_keys(conn, ws.id)})


@router.post("/keys/api/rotate", summary="A new api key, shown once; the key of this request stops working at once")
def rotate_api_key(ws: WS, svc: SVC):
    return JSON(ws_api.rotate_api_key(svc.engine, ws.id))


@router.delete("/keys/api", summary="Refused (409): the api key is the workspace's only admin key; rotate it instead")
def revoke_api_key(ws: WS, svc: SVC):
    ws_api.revoke_api_key(svc.engine, ws.id)


@router.post("/keys/write/{source}/rotate", summary="A new write key for a source, shown once; the old one stops")
def rotate_write_key(ws: WS, svc: SVC, source: str):
    out = ws_api.rotate_write_key(svc.engine, ws.id, source)
    svc.keys.forget_source(out.pop("source_id"))
    return JSON(out)


@router.delete("/keys/write/{source}", summary="Revoke a source's write key (its events stay; rotate to re-key it)")
def revoke_write_key(ws: WS, svc: SVC, source: str):
    out = ws_api.revoke_write_key(svc.engine, ws.id, source)
    svc.keys.forget_source(out.pop("source_id"))
    return JSON(out)


@router.get("/profiles", summary="Find a profile by one identifier")
def find_profile(
    ws: WS, svc: SVC, request: Request,
    email: str | None = None, phone: str | None = None, user_id: str | None = None, anonymous_id: str | None = None,
):  # fmt: skip
    cfg = ws.identity
    declared = {k: v for k, v in request.query_params.items() if k in cfg.declared}
    ident = views.lookup_ident(cfg, email=email, phone=phone, user_id=user_id, anonymous_id=anonymous_id, **declared)
    with read_only(svc.engine) as conn:
        return JSON(views.get_profile(conn, ws.id, views.find_by_ident(conn, ws.id, ident), cfg))


@router.get("/profiles/search", summary="Profiles whose identifier of a kind, or a trait, starts with a prefix")
def search_profiles(
    ws: WS, svc: SVC,
    prefix: Annotated[str, Query(min_length=1, max_length=200, description="exact; emails lower-cased")],
    identifier: Annotated[str | None, Query(description="an identifier kind: email, phone, user_id, ...")] = None,
    trait: Annotated[str | None, Query(max_length=200, description="a trait name")] = None,
    limit: Limit = 50, cursor: Cursor = None,
):  # fmt: skip
    with read_only(svc.engine) as conn:
        return JSON(listing.search_profiles(conn, ws.id, ws.identity, limit, cursor, prefix=prefix,
                                            identifier=identifier, trait=trait))  # fmt: skip


@router.get("/profiles/{profile_id}", summary="A profile (merged ids resolve to the survivor)")
def get_profile(ws: WS, svc: SVC, profile_id: str):
    with read_only(svc.engine) as conn:
        return JSON(views.get_profile(conn, ws.id, profile_id, ws.identity))


@router.get("/profiles/{profile_id}/events", summary="Timeline across channels, newest first")
def get_timeline(
    ws: WS, svc: SVC, profile_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50, cursor: Cursor = None, channel: str | None = None,
):  # fmt: skip
    with read_only(svc.engine) as conn:
        return JSON(views.timeline(conn, ws.id, profile_id, limit, cursor, channel))


@router.get("/profiles/{profile_id}/merges", summary="Merges into this profile")
def get_merges(ws: WS, svc: SVC, profile_id: str):
    with read_only(svc.engine) as conn:
        pid = views.resolve_id(conn, ws.id, profile_id)
        return JSON({"profile_id": pid, "merges": views.merge_history(conn, ws.id, pid)})


@router.get("/profiles/{profile_id}/export", summary="Everything held about the person")
def export_profile(ws: WS, svc: SVC, profile_id: str):
    with read_only(svc.engine) as conn:
        return JSON(privacy.export(conn, ws.id, profile_id, ws.identity))


@router.delete("/profiles/{profile_id}", summary="Erase the person: profile, identifiers, aliases, events")
def delete_profile(ws: WS, svc: SVC, profile_id: str):
    # Events still waiting for resolution may belong to the person under an email or phone only: resolve
    # them first so that they are erased with the profile.
    from chorus.identity.resolver import Resolver

    Resolver(svc.engine).drain()
    return JSON(privacy.forget(svc.engine, ws.id, profile_id, svc.settings.erasure_vacuum))


@router.get("/events/rejected", summary="Events that failed validation, with the reason, newest first")
def get_rejected(
    ws: WS, svc: SVC, limit: Limit = 100, cursor: Cursor = None,
    before: Annotated[int | None, Query(ge=0, deprecated=True, description="use cursor")] = None,
):  # fmt: skip
    with read_only(svc.engine) as conn:
        return JSON(listing.list_rejected(conn, ws.id, limit, cursor, before))


@router.get("/imports", summary="Imports, newest first, with their counts")
def list_imports(ws: WS, svc: SVC, limit: Limit = 50, cursor: Cursor = None):
    with read_only(svc.engine) as conn:
        return JSON(listing.list_imports(conn, ws.id, limit, cursor))


@router.post("/imports", summary="Import an offline file (.csv, .jsonl, .parquet) as events")
async def post_import(
    request: Request, ws: WS, svc: SVC,
    file: Annotated[UploadFile, File(description="the file; its extension picks the format")],
    source: Annotated[str, Form(description="store, call_center, catalog, ...")],
    mapping: Annotated[str | None, Form(description="mapping as JSON (see docs/import.md)")] = None,
):  # fmt: skip
    # FastAPI hands over the last of repeated parts: a second file (or source, or mapping) would be dropped
    # without a word, so the request is refused instead (the form is the one the guard already parsed)
    form = await request.form()
    for part in ("file", "source", "mapping"):
        given = len(form.getlist(part))
        if given > 1:
            once = "send one file per import" if part == "file" else "give it once"
            raise ChorusError(f"{part} is given {given} times; {once}", field=part)
    if mapping is not None:
        # the mapping's JSON is read by a parser that keeps the last of repeated keys: say so, as for every
        # definition the admin API takes (chorus.api.guard)
        duplicated = safejson.duplicate_key(mapping, "mapping")
        if duplicated:
            raise ChorusError(f"{duplicated}: this key appears more than once in its object; give it once",
                              field="mapping")  # fmt: skip
    name = os.path.basename(file.filename or "upload")
    suffix = os.path.splitext(name)[1].lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".parquet"):
        raise ChorusError("file must be .csv, .jsonl, .ndjson or .parquet", field="file")
    # copied, imported and removed in a worker thread: the event loop that also takes the tracking API's requests
    # is not held while a large upload is written to disk or its directory removed
    result = await run_in_threadpool(_import_upload, svc.engine, ws.id, file.file, name, source, mapping)
    svc.wake_worker.set()
    return JSON(result)


def _import_upload(engine, ws_id: str, upload, name: str, source: str, mapping: str | None) -> dict:
    from chorus.collect import imports

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, name)
        upload.seek(0)
        with open(path, "wb") as fh:
            shutil.copyfileobj(upload, fh, 1 << 20)
        return imports.run_import(engine, ws_id, path, source, mapping_json=mapping)


@router.get("/imports/{import_id}", summary="An import's result, with its bad rows")
def get_import(ws: WS, svc: SVC, import_id: str):
    from chorus.collect import imports

    with read_only(svc.engine) as conn:
        return JSON(imports.get(conn, ws.id, import_id))
