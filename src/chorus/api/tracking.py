"""The Segment-compatible tracking API: /v1/identify|track|page|screen|group|alias|batch and the short paths.

Accepts every way the official clients send: the write key as the HTTP Basic user (empty password) or as
``writeKey`` in the body; ``application/json`` or ``text/plain``; ``Content-Encoding: gzip``. Limits are checked
on the inflated body: 500 KB and 2,500 events per batch, 32 KB per message.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from chorus import metrics, safejson
from chorus.api.common import JSON, Services, TooLarge, error_response, write_key
from chorus.api.guard import FORM_TYPES, inflate
from chorus.collect import ingest
from chorus.collect.messages import (
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_MESSAGE_BYTES,
    SHORT_PATHS,
    TYPES,
    Rejection,
    merge_batch_defaults,
    normalise,
)
from chorus.errors import ChorusError, Saturated, Unauthorized, UnsupportedMediaType
from chorus.timeutil import utcnow
from chorus.workspaces import verification

log = logging.getLogger("chorus.api.tracking")
router = APIRouter(prefix="/v1", tags=["tracking"])
# A body nested deeper than the JSON parser goes (orjson: 1024 levels) cannot be split into messages: it is a
# malformed request as a whole. Anything shallower is parsed and each message checked against safejson's 64.
PARSER_DEPTH = 1024
UTF8_BOM = b"\xef\xbb\xbf"

# ISO-8601, or epoch seconds or milliseconds as a number or a string of 9 to 13 digits (timeutil.parse_ts)
_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "number"},
                   {"type": "string", "pattern": "^[0-9]{9,13}(\\.[0-9]{1,6})?$"}]}  # fmt: skip
_MESSAGE_SCHEMA = {
    "type": "object",
    "description": "A Segment-spec message (https://segment.com/docs/connections/spec/).",
    "properties": {
        "type": {"type": "string", "enum": list(TYPES)},
        "messageId": {"type": "string"},
        "userId": {"type": "string"},
        "anonymousId": {"type": "string"},
        "event": {"type": "string"},
        "timestamp": _TIME,
        "originalTimestamp": _TIME,
        "sentAt": _TIME,
        "context": {"type": "object", "properties": {"channel": {"type": "string"}}},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}
_BATCH_SCHEMA = {
    "type": "object",
    "properties": {"batch": {"type": "array", "items": _MESSAGE_SCHEMA, "maxItems": MAX_BATCH_EVENTS},
                   "context": {"type": "object"}, "integrations": {"type": "object"}, "sentAt": {"type": "string"},
                   "writeKey": {"type": "string"}},
    "required": ["batch"],
}  # fmt: skip
_RESPONSES = {
    200: {"description": "Stored (events failing validation are kept as rejected and listed in `rejected`)."},
    400: {"description": "Malformed JSON or a size limit exceeded: `{code, message, field}`"},
    401: {"description": "Unknown write key"},
    429: {"description": "Ingestion saturated; retry after `Retry-After` seconds"},
}


class Gate:
    """Bounded concurrency for the store: requests past the waiting room are told to come back later."""

    def __init__(self, inflight: int, waiting: int):
        self._sem = asyncio.Semaphore(inflight)
        self._waiting = 0
        self._max_waiting = waiting

    async def __aenter__(self):
        if self._sem.locked() and self._waiting >= self._max_waiting:
            raise Saturated("ingestion is saturated; retry later", retry_after=2)
        self._waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self._waiting -= 1

    async def __aexit__(self, *exc):
        self._sem.release()


def _inflate(body: bytes, encoding: str) -> bytes:
    """The batch as its Content-Encoding says, with the admin API's rules (``guard.inflate``: gzip, x-gzip or
    deflate, one whole stream), at most 500 KB once inflated."""
    try:
        return inflate(body, encoding, MAX_BATCH_BYTES)
    except TooLarge:
        raise ChorusError("batch is larger than 500 KB after decompression", field="batch") from None


async def _read_capped(request: Request) -> bytes:
    """The body, refused as soon as it passes 500 KB (compressed bodies never inflate to less)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BATCH_BYTES:
        raise ChorusError("batch is larger than 500 KB", field="batch")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BATCH_BYTES:
            raise ChorusError("batch is larger than 500 KB", field="batch")
        chunks.append(chunk)
    return b"".join(chunks)


async def _handle(request: Request, kind: str) -> JSON:
    svc: Services = request.app.state.services
    try:
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        raw = await _read_capped(request)
        body = _inflate(raw, request.headers.get("content-encoding", ""))
        if body.startswith(UTF8_BOM):  # some clients (on Windows) write one before the JSON; it is not part of it
            body = body[len(UTF8_BOM) :]
        if kind != "batch" and len(body) > MAX_MESSAGE_BYTES:
            raise ChorusError("message is larger than 32 KB", field="body")
        # Parsed, not checked: each message is checked by normalise, so one bad message is rejected alone.
        try:
            doc = safejson.parse(body, "body", max_depth=PARSER_DEPTH)
        except ChorusError:
            # JSON labelled as a form is still JSON (`curl -d '{…}'` labels it so: review), but a real form is
            # not: say what to send rather than where the JSON parser stumbled on the boundary line
            if media in FORM_TYPES:
                raise UnsupportedMediaType(f"the body must be JSON: send it as application/json or text/plain, "
                                           f"not {media}", field="Content-Type") from None  # fmt: skip
            raise
        if not isinstance(doc, dict):
            raise ChorusError("body must be a JSON object", field="body")
        key = write_key(request.headers, doc)
        if safejson.text_problem(key):  # a lone surrogate cannot even be hashed; no key holds one
            raise Unauthorized("unknown write key")
        source = await run_in_threadpool(svc.keys.source, key)
        backlog = svc.backlog.fresh()
        if backlog is None:  # re-reading it is a query: off the event loop, or a slow store freezes every route
            backlog = await run_in_threadpool(svc.backlog.value)
        if backlog > svc.settings.max_backlog:
            raise Saturated("ingestion backlog is full; retry later", retry_after=5)

        received_at = utcnow()
        accepted, rejected, rejected_info = [], [], []
        if kind == "batch":
            items = doc.get("batch")
            if not isinstance(items, list):
                raise ChorusError("batch must be an array of messages", field="batch")
            if len(items) > MAX_BATCH_EVENTS:
                raise ChorusError(f"batch has {len(items)} events; the limit is {MAX_BATCH_EVENTS}", field="batch")
            # no item can be over 32 KB otherwise (the batch's own context counts in each item it merges into)
            max_bytes = MAX_MESSAGE_BYTES if len(body) > MAX_MESSAGE_BYTES else None
            for idx, item in enumerate(items):
                if isinstance(item, dict):
                    item = merge_batch_defaults(item, doc)
                res = normalise(item, received_at=received_at, source_kind=source.kind, max_bytes=max_bytes)
                if isinstance(res, Rejection):
                    rejected.append(res)
                    rejected_info.append({"index": idx, "field": res.field, "reason": res.reason})
                else:
                    accepted.append(res)
        else:
            res = normalise(doc, received_at=received_at, source_kind=source.kind, forced_type=kind)
            if isinstance(res, Rejection):
                rejected.append(res)
                rejected_info.append({"index": 0, "field": res.field, "reason": res.reason})
            else:
                accepted.append(res)

        async with request.app.state.gate:
            svc.storing += 1
            try:
                await run_in_threadpool(_store, svc, source, accepted, rejected, received_at)
            finally:
                svc.storing -= 1
        svc.wake_worker.set()
    except ChorusError as exc:
        if isinstance(exc, Saturated):
            metrics.saturated.inc()
        return error_response(exc)
    out: dict = {"success": True}
    if rejected_info:
        out["rejected"] = rejected_info
    return JSON(out)


def _store(svc: Services, source, accepted, rejected, received_at):
    # Whether each event is vouched for (userId with a valid userHash) is decided now, once (decision 0014).
    check = verification.checker(svc.engine, source.workspace_id)
    for e in accepted:
        verification.seal(e.payload, e.user_id, trusted=source.trusted, check=check)
    with svc.engine.begin() as conn:
        return ingest.store(conn, source, accepted, rejected, received_at)


def _route(kind: str):
    async def endpoint(request: Request):
        return await _handle(request, kind)

    endpoint.__name__ = f"track_{kind}"
    return endpoint


for _kind in (*TYPES, "batch"):
    _schema = _BATCH_SCHEMA if _kind == "batch" else _MESSAGE_SCHEMA
    router.add_api_route(
        f"/{_kind}", _route(_kind), methods=["POST"], summary=f"Segment {_kind}", responses=_RESPONSES,
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": _schema}}, "required": True}},
    )  # fmt: skip
for _short, _kind in {**SHORT_PATHS, "b": "batch"}.items():
    router.add_api_route(f"/{_short}", _route(_kind), methods=["POST"], include_in_schema=False)


@router.post("/m", include_in_schema=False)
async def analytics_js_metrics() -> JSON:
    # analytics.js posts its own usage counters here when apiHost points at Chorus; they carry no customer data.
    return JSON({"success": True})


@router.get("/projects/{write_key}/settings", summary="analytics.js settings (what its CDN would serve)")
async def analytics_js_settings(request: Request, write_key: str) -> JSON:
    """Lets a page load analytics.js with ``cdnURL`` pointed at Chorus: events then go to this server."""
    svc: Services = request.app.state.services
    try:
        await run_in_threadpool(svc.keys.source, write_key)
    except ChorusError as exc:
        return error_response(exc)
    host = request.headers.get("host", f"{request.url.hostname}:{request.url.port}")
    return JSON(
        {
            "integrations": {
                "Segment.io": {"apiKey": write_key, "apiHost": f"{host}/v1", "protocol": request.url.scheme}
            },
            "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}}},
            "metrics": {"sampleRate": 0},
        }
    )
