"""Offline import: a file of store/call-centre/catalog rows becomes events through the normal pipeline.

Rows are parsed by :mod:`chorus.collect.importer`, validated like any tracked message, and stored in batches
with a stable message id per row, so re-importing a file is a no-op. Bad rows are reported with their line
and reason; every good row is imported.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from chorus import safejson
from chorus import workspaces as ws_api
from chorus.collect import ingest
from chorus.collect.channels import valid_channel
from chorus.collect.importer import (
    ImportFileError,
    Mapping,
    MappingError,
    RowError,
    count_rows,
    iter_import,
    load_mapping,
)
from chorus.collect.messages import Rejection, normalise
from chorus.errors import ChorusError, NotFound
from chorus.identity.identifiers import NoIdentifier, extract
from chorus.store.tables import imports
from chorus.timeutil import iso, utcnow

BATCH = 1000
MAX_REPORTED_ERRORS = 10_000


def _mapping(source: str, mapping_path: str | None, mapping_json: str | None) -> Mapping:
    try:
        if mapping_json:
            doc = safejson.loads(mapping_json, "mapping")
            if not isinstance(doc, dict):
                raise ChorusError("mapping must be a JSON object", field="mapping")
            return load_mapping(doc, source)
        return load_mapping(mapping_path, source)
    except MappingError as exc:
        raise ChorusError(f"mapping: {safejson.escape(str(exc))}", field="mapping") from None


def _error(line: int, field: str | None, reason: str) -> dict:
    # a column name or a cell can hold anything (NUL included): the report is stored and shown, so escape it
    return {"line": line, "field": safejson.escape(field)[:200] if field else field, "reason": safejson.escape(reason)}


def run_import(
    engine: Engine,
    workspace_id: str,
    path: str,
    source: str,
    *,
    mapping_path: str | None = None,
    mapping_json: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    channel = valid_channel(source)
    if channel is None:
        raise ChorusError(
            f"source {source!r} must be a channel name such as store, call_center, catalog", field="source"
        )
    if not os.path.exists(path):
        raise ChorusError(f"file {path} does not exist", field="file")
    mapping = _mapping(channel, mapping_path, mapping_json)
    with engine.begin() as conn:
        cfg = ws_api.get(conn, workspace_id).identity
        src = ws_api.internal_source(conn, workspace_id, "import", f"import:{channel}")
    errors: list[dict] = []
    rows = imported = duplicates = 0
    accepted, rejected = [], []

    def flush():
        nonlocal imported, duplicates, accepted, rejected
        if accepted or rejected:
            with engine.begin() as conn:
                res = ingest.store(conn, src, accepted, [], utcnow())
            imported += res.accepted
            duplicates += res.duplicates
            if progress:
                progress(len(accepted) + len(rejected))
        accepted, rejected = [], []

    try:
        for line, item in iter_import(path, channel, mapping):
            rows += 1
            if isinstance(item, RowError):
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(_error(line, item.field, item.reason))
                rejected.append(item)
            else:
                res = normalise(
                    item, received_at=utcnow(), source_kind="import", source_channel=channel, require_ids=False
                )
                if not isinstance(res, Rejection) and res.adjusted:
                    # a file states when things happened: a time outside the accepted range is the file's error
                    # to fix, not a time to replace by the import's own (as tracking does for device clocks)
                    res = Rejection("timestamp", f"timestamp is outside the accepted range: {res.adjusted}",
                                    res.message_id, res.payload)  # fmt: skip
                if not isinstance(res, Rejection):
                    try:
                        extract(res.payload, cfg)
                    except NoIdentifier as exc:
                        res = Rejection("identifiers", str(exc), res.message_id, res.payload)
                if isinstance(res, Rejection):
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append(_error(line, res.field, res.reason))
                    rejected.append(res)
                else:
                    accepted.append(res)
            if len(accepted) + len(rejected) >= BATCH:
                flush()
        flush()
    except MappingError as exc:
        raise ChorusError(f"mapping: {exc}", field="mapping") from None
    except ImportFileError as exc:
        raise ChorusError(f"file: {exc}", field="file") from None
    import_id = "imp_" + uuid.uuid4().hex[:20]
    bad = rows - imported - duplicates
    result = {
        "id": import_id,
        "source": channel,
        "file": safejson.escape(os.path.basename(path))[:400],
        "rows": rows,
        "imported": imported,
        "duplicates": duplicates,
        "failed": bad,
        "errors": errors,
    }
    with engine.begin() as conn:
        conn.execute(
            imports.insert().values(
                id=import_id, workspace_id=workspace_id, source=channel, filename=result["file"], rows=rows,
                imported=imported, duplicates=duplicates, errors=errors, created_at=utcnow(),
            )
        )  # fmt: skip
    return result


def get(conn: Connection, workspace_id: str, import_id: str) -> dict:
    r = conn.execute(
        sa.select(imports).where(imports.c.workspace_id == workspace_id, imports.c.id == import_id)
    ).first()
    if r is None:
        raise NotFound(f"import {import_id} not found")
    return {
        "id": r.id, "source": r.source, "file": r.filename, "rows": r.rows, "imported": r.imported,
        "duplicates": r.duplicates, "failed": r.rows - r.imported - r.duplicates, "errors": r.errors,
        "created_at": iso(r.created_at),
    }  # fmt: skip


__all__ = ["run_import", "get", "count_rows"]
