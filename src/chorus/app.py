"""ASGI app factory: tracking API (/v1), admin API (/api), OpenAPI at /openapi.json."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from chorus import __version__, metrics
from chorus.api import (
    admin,
    analytics,
    audiences,
    inbox,
    journeys,
    messages,
    openapi,
    public,
    push,
    segments,
    tracking,
    validation,
    webhooks,
    webhooks_feedback,
    webhooks_meta,
    webhooks_sendgrid,
)
from chorus.api.common import (
    JSON,
    ClientGone,
    KeyCache,
    Services,
    error_response,
    form_problem,
    is_form_problem,
    shorten,
)
from chorus.collect.ingest import Backlog
from chorus.config import Settings
from chorus.errors import ChorusError
from chorus.messaging.links import Links, signing_key
from chorus.store.db import create_engine
from chorus.worker import Worker

log = logging.getLogger("chorus.api")
STATIC = Path(__file__).parent / "api" / "static"  # swagger-ui-dist 5.35.0 (Apache-2.0), vendored from npm


def create_app(settings: Settings | None = None, *, run_worker: bool = True, engine=None) -> FastAPI:
    settings = settings or Settings.from_env()
    engine = engine or create_engine(settings.database_url)
    links = Links(settings.public_url, signing_key(engine))
    svc = Services(settings=settings, engine=engine, keys=KeyCache(engine), backlog=Backlog(engine), links=links)
    worker = (
        Worker(
            engine, settings.worker_batch, settings.worker_poll_seconds, svc.wake_worker, busy=lambda: svc.storing > 0,
            dev=settings.dev,
        )
        if run_worker
        else None
    )

    def begin_shutdown() -> None:
        """Called as soon as the server is told to stop, before it waits for open requests: streams end, and the
        worker ends its pass after the task (the transaction) it is in."""
        svc.stopping.set()
        if worker:
            worker.stopping.set()
            worker.wake.set()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.gate = tracking.Gate(settings.max_inflight, settings.max_waiting)
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
            # close every pooled connection: on SQLite the last one to close checkpoints and deletes the WAL, which
            # would otherwise outlive the process with old copies of pages (an erased person's among them)
            engine.dispose()

    app = FastAPI(
        title="Chorus",
        version=__version__,
        description="Omnichannel customer engagement platform: Segment-compatible tracking API and admin API.",
        lifespan=lifespan,
        docs_url=None,  # served below from vendored assets: the default page loads Swagger UI from a CDN
        redoc_url=None,
        # POST /api/segments/ answered a 307 to /api/segments that clients do not follow with their body: a path
        # is what it says, and a 404 says which one (and that the slash is the difference)
        redirect_slashes=False,
    )
    openapi.install(app)
    app.state.services = svc
    app.state.begin_shutdown = begin_shutdown
    app.state.gate = tracking.Gate(settings.max_inflight, settings.max_waiting)
    # Browsers post tracking calls from the shop's own origin; write keys are public, so any origin may send.
    app.add_middleware(
        CORSMiddleware, allow_origin_regex=".*", allow_methods=["*"], allow_headers=["*"], allow_credentials=False,
        expose_headers=["Retry-After"], max_age=86400,
    )  # fmt: skip

    @app.exception_handler(ChorusError)
    async def chorus_error(_request: Request, exc: ChorusError):
        return error_response(exc)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, _exc: ClientDisconnect):
        # a browser leaving the page mid-request, a dropped mobile connection, a provider's timeout: ordinary, not a
        # server error (left to the catch-all below, each was an ERROR with a traceback, and uvicorn logged another)
        log.debug("client closed %s %s before its body was read; nothing done", request.method, request.url.path)
        return error_response(ClientGone("the client closed the connection before the body was read", field="body"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if is_form_problem(exc):  # a form the parser could not read (the unsubscribe pages, provider webhooks)
            return error_response(ChorusError(f"the body is not a valid form ({form_problem(exc)})", field="body"))
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        body = {"code": codes.get(exc.status_code, "http_error"), "message": str(exc.detail)}
        path = shorten(request.url.path, 200)
        if exc.status_code == 404 and exc.detail == "Not Found":  # Starlette's own: no route has this path
            hint = " (without the trailing slash?)" if len(path) > 1 and path.endswith("/") else ""
            body.update(message=f"no such path: {path}{hint}", field="path")
        elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
            allowed = (getattr(exc, "headers", None) or {}).get("Allow")
            body["message"] = f"{request.method} is not allowed on {path}" + (f"; use {allowed}" if allowed else "")
        body["message"] = shorten(body["message"])
        return JSON(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(_request: Request, exc: Exception):
        log.exception("unhandled error")  # the traceback goes to the log, never to the client
        return JSON(
            {"code": "internal_error", "message": "internal error; the request was not processed"}, status_code=500
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError):
        # pydantic's own sentences ("Input should be a valid dictionary") never reach the client: Chorus words them
        return error_response(validation.explain(exc.errors()))

    app.mount("/static/docs", StaticFiles(directory=STATIC), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} API",
            swagger_js_url="/static/docs/swagger-ui-bundle.js",
            swagger_css_url="/static/docs/swagger-ui.css",
            swagger_favicon_url="/static/docs/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # else the page asks validator.swagger.io for a badge
        )

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return JSON({"ok": True})

    @app.get("/metrics", include_in_schema=False)
    def prometheus_metrics():  # a plain def: it runs in the threadpool, so the backlog's read never holds the loop
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        from starlette.responses import Response

        svc.backlog.value()
        return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(tracking.router)
    app.include_router(admin.router)
    app.include_router(messages.router)
    app.include_router(audiences.router)
    app.include_router(segments.router)
    app.include_router(journeys.router)
    app.include_router(analytics.router)
    app.include_router(inbox.router)
    app.include_router(inbox.admin_router)
    app.include_router(push.router)
    app.include_router(public.router)
    app.include_router(webhooks.router)
    app.include_router(webhooks_sendgrid.router)
    app.include_router(webhooks_feedback.router)
    app.include_router(webhooks_meta.router)
    return app
