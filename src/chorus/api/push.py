"""Browser push subscriptions, sent by the site with its write key after ``pushManager.subscribe``.

Whose browser it is comes from :mod:`chorus.api.caller`, as for the inbox: ``userId`` with ``userHash``, or an
``anonymousId``, whose browser then gets only the pushes of an anonymous profile."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from chorus import workspaces as ws_api
from chorus.api.caller import caller, json_body
from chorus.api.common import JSON, Services, write_key
from chorus.errors import ChorusError, NotConfigured, NotFound
from chorus.messaging.providers.public import endpoint_problem
from chorus.store import bulk
from chorus.store.db import read_only
from chorus.store.tables import push_subscriptions
from chorus.timeutil import utcnow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/push", tags=["push"])


def _source(request: Request, svc: Services, body: dict):
    return svc.keys.source(write_key(request.headers, body))


def _subscription(body: dict) -> tuple[str, str, str]:
    sub = body.get("subscription")
    if not isinstance(sub, dict):
        raise ChorusError("subscription must be the browser's PushSubscription as JSON", field="subscription")
    endpoint = sub.get("endpoint")
    try:
        parts = urlsplit(endpoint) if isinstance(endpoint, str) else None
    except ValueError:  # an unclosed [ (urllib's "Invalid IPv6 URL")
        parts = None
    if not parts or not parts.netloc or len(endpoint) > 400:
        raise ChorusError("subscription.endpoint must be the push service URL", field="subscription.endpoint")
    # the worker will call it: refused here when its text is inward (2130706433, [::ffff:127.0.0.1], 10.x...), and
    # again when it is called, for a name that resolves inward (providers.public)
    problem = endpoint_problem(endpoint)
    if problem is not None:
        raise ChorusError(f"subscription.endpoint {problem}", field="subscription.endpoint")
    keys = sub.get("keys") if isinstance(sub.get("keys"), dict) else {}
    for k, size in (("p256dh", 200), ("auth", 100)):
        if not isinstance(keys.get(k), str) or not keys[k] or len(keys[k]) > size:
            raise ChorusError(f"subscription.keys.{k} is missing or too long", field=f"subscription.keys.{k}")
    return endpoint, keys["p256dh"], keys["auth"]


@router.post("/subscriptions", status_code=201, summary="Register (or refresh) a browser push subscription")
async def subscribe(request: Request):
    svc: Services = request.app.state.services
    body = await json_body(request, required=True)
    who = await run_in_threadpool(caller, svc, request.headers, body)
    endpoint, p256dh, auth = _subscription(body)
    ident = who.claim.ident
    row = {"workspace_id": who.workspace.id, "endpoint": endpoint, "p256dh": p256dh, "auth": auth, "ident": ident,
           "created_at": utcnow()}  # fmt: skip

    def save():
        with svc.engine.begin() as conn:
            bulk.insert_rows(conn, push_subscriptions, [row], conflict=["workspace_id", "endpoint"],
                             update=["p256dh", "auth", "ident", "created_at"])  # fmt: skip

    await run_in_threadpool(save)
    return JSON({"success": True}, status_code=201)


@router.delete("/subscriptions", summary="Forget a browser push subscription (the user turned notifications off)")
async def unsubscribe(request: Request):
    svc: Services = request.app.state.services
    body = await json_body(request, required=True)
    source = await run_in_threadpool(_source, request, svc, body)
    endpoint = (body.get("subscription") or {}).get("endpoint") if isinstance(body.get("subscription"), dict) else None
    if not isinstance(endpoint, str) or not endpoint:
        raise ChorusError("subscription.endpoint must be the push service URL", field="subscription.endpoint")

    def delete() -> int:
        with svc.engine.begin() as conn:
            return conn.execute(
                push_subscriptions.delete().where(
                    push_subscriptions.c.workspace_id == source.workspace_id, push_subscriptions.c.endpoint == endpoint
                )
            ).rowcount

    if not await run_in_threadpool(delete):
        raise NotFound("no such subscription")
    return JSON({"success": True})


_NOT_CONFIGURED = {503: {"description": "push_not_configured: the server's VAPID key variable is unset or does not "
                                        "hold a P-256 private key (the server's log says which)"}}  # fmt: skip


@router.get("/vapid-key", summary="The applicationServerKey for pushManager.subscribe", responses=_NOT_CONFIGURED)
async def vapid_key(request: Request):
    from chorus.messaging.providers import ConfigError, secret
    from chorus.messaging.providers.webpush import application_server_key, load_vapid

    svc: Services = request.app.state.services
    source = await run_in_threadpool(_source, request, svc, dict(request.query_params))
    with read_only(svc.engine) as conn:
        ws = ws_api.get(conn, source.workspace_id)
    for i, conf in enumerate(((ws.settings.get("messaging") or {}).get("providers") or {}).get("push") or []):
        if isinstance(conf, dict) and conf.get("type") == "webpush":
            where = f"settings.messaging.providers.push[{i}].vapid_private_key_env"
            try:  # the variable unset or not a key: the operator's to fix (named in the log), never the caller's
                key = secret(conf, "vapid_private_key", f"settings.messaging.providers.push[{i}]", workspace=ws.name)
                if key is None:
                    raise ConfigError(f"{where} is required")
                vapid = load_vapid(key, f"the key in ${conf.get('vapid_private_key_env')} ({where})")
            except ConfigError as exc:
                log.warning("GET /v1/push/vapid-key for workspace %s: %s", ws.id, exc)
                raise NotConfigured(
                    "this server is not configured for web push (its VAPID key is missing or unusable); "
                    "the server's log says why",
                    code="push_not_configured",
                ) from None
            return JSON({"publicKey": application_server_key(vapid)})
    raise NotFound("no web push provider is configured for this workspace")
