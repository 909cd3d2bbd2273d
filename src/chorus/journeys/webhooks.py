"""A journey's webhook step: queued by the transition, delivered by a worker task, never inside the transaction.

The transition only writes a row (``journey_webhooks``) keyed by the step's idempotency key (``<instance>:<step>``),
on its own connection: a transition given again queues nothing new, and one rolled back queues nothing at all. The
``journey_webhooks`` task then claims due rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so any number of workers
share them), and sends each request outside any transaction:

- the step's method (POST or PUT) with the interpreter's JSON body, signed as the messaging webhook channel signs
  (``Chorus-Signature: t=<unix seconds>,v1=<hex>``, HMAC-SHA256 over ``"<t>." + body`` with the secret named by
  ``settings.journeys.webhooks.secret_env``), and ``Idempotency-Key: <key>``: a claim lasts longer than a request,
  so a worker that dies mid-request leaves the row due again and the receiver drops the repeat by that key;
- a 2xx answer delivers it; a timeout, a connection error, 408, 425, 429 or a 5xx is tried again with exponential
  backoff (:data:`BACKOFF`, at most :data:`MAX_ATTEMPTS` attempts), then the row fails with the last reason; any
  other answer (a 3xx too: redirects are not followed) fails it at once.

Only ``http`` and ``https`` URLs are called, and only public addresses: the host is resolved once at delivery, every
address it resolves to must be public (:func:`chorus.messaging.providers.public.is_public`, the web push check: not
private, loopback, link-local, reserved or multicast, nor an IPv6 form carrying such an IPv4 address: IPv4-mapped or
-compatible, 6to4, Teredo, NAT64), and the request connects to those checked addresses and no other (the journey
author must not reach the brand's internal network through Chorus, and a DNS name answering a public address to the
check and 127.0.0.1 to a second lookup must not either). The Host header, the TLS server name and the certificate
check keep the URL's host. ``settings.journeys.webhooks.allow_private`` allows private addresses for one workspace,
and ``CHORUS_ALLOW_PRIVATE_WEBHOOKS=1`` for a whole process (local tests), as ``CHORUS_ALLOW_LOOPBACK_PUSH`` does for
push endpoints (the request still goes to the address resolved once). The person's rows are erased with her.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import orjson
import sqlalchemy as sa
import urllib3
from sqlalchemy.engine import Connection, Engine

from chorus import workspaces as ws_api
from chorus.errors import ChorusError, NotFound
from chorus.journeys import definition as d
from chorus.journeys import interpreter as j
from chorus.journeys import runtime
from chorus.journeys.runtime import PersonRun, effect
from chorus.messaging.providers import ConfigError, secret
from chorus.messaging.providers.http import Client, HTTPError, Response
from chorus.messaging.providers.public import connect_in_turn, is_public
from chorus.messaging.providers.webhook import sign
from chorus.registry import Person
from chorus.store import bulk
from chorus.store.db import read_only
from chorus.store.tables import journey_webhooks

log = logging.getLogger("chorus.journeys")

MAX_ATTEMPTS = 8
BACKOFF = (timedelta(seconds=30), timedelta(hours=1))  # the first retry's delay, doubled each time up to the second
TIMEOUT = 10.0  # seconds for one request
LEASE = timedelta(minutes=2)  # a claimed row is due again after this (longer than any request)
ALLOW_ENV = "CHORUS_ALLOW_PRIVATE_WEBHOOKS"
SETTINGS_KEYS = {"secret_env", "allow_private"}
RETRY_STATUS = (408, 425, 429)


# -- the workspace setting ---------------------------------------------------------------------------------------------
def validate_settings(value: object, *, workspace: str | None = None) -> dict:
    """``settings.journeys``: ``{"webhooks": {"secret_env": NAME, "allow_private": false}}``; ValueError names the
    setting that is wrong. The secret itself stays in the worker's environment. ``workspace`` (its name, where
    known) refuses another workspace's ``CHORUS_WS_`` variable (decision 0051)."""
    if not isinstance(value, dict) or set(value) - {"webhooks"}:
        raise ValueError('settings.journeys must be an object {"webhooks": {...}}')
    hooks = value.get("webhooks", {})
    if not isinstance(hooks, dict):
        raise ValueError("settings.journeys.webhooks must be an object {secret_env, allow_private}")
    unknown = set(hooks) - SETTINGS_KEYS
    if unknown:
        raise ValueError(f"settings.journeys.webhooks.{sorted(unknown)[0]} is not a webhook setting")
    if not isinstance(hooks.get("allow_private", False), bool):
        raise ValueError("settings.journeys.webhooks.allow_private must be true or false")
    try:
        secret(hooks, "secret", "settings.journeys.webhooks", resolve=False, workspace=workspace)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


def _conf(settings: dict) -> dict:
    return ((settings or {}).get("journeys") or {}).get("webhooks") or {}


# -- queued by the transition ------------------------------------------------------------------------------------------
def check_url(url: object) -> str | None:
    """Why ``url`` cannot be called (None: it can, as far as its text goes; its address is checked at delivery)."""
    if not isinstance(url, str) or len(url) > d.MAX_URL:
        return f"the url must be a text of at most {d.MAX_URL} characters"
    return d.url_problem(url)  # the definition's own check: a version stored before it may still fail it


@effect(j.Webhook)
def queue(run: PersonRun, s: j.State, c: j.Webhook) -> None:
    """The step's request, queued on the transition's connection under its key (a repeat queues nothing)."""
    reason = check_url(c.url)
    if reason is None and c.method not in ("POST", "PUT"):
        reason = f"the method '{c.method}' is not POST or PUT"
    if reason is not None:  # a definition stored before the checks it would fail now
        run.error(s, c, ChorusError(reason, field="url"))
        return
    bulk.insert_rows(run.conn, journey_webhooks, [{
        "workspace_id": run.ws, "key": c.key, "journey_id": s.journey_id, "instance_id": s.instance_id,
        "profile_id": run.person.id, "url": c.url, "method": c.method, "body": dict(c.body), "status": "pending",
        "attempts": 0, "due_at": run.now, "created_at": run.now,
    }], conflict=["workspace_id", "key"])  # fmt: skip


# -- delivered by the task ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retry | failed
    answer: int | None = None
    reason: str | None = None


def resolve(url: str, allow_private: bool) -> tuple[list[str], str | None]:
    """The addresses the host of ``url`` resolves to, looked up once: the request connects to these and to no other
    (:func:`send`), and why they must not be called (None: every one is public, or private ones are allowed). Every
    address is checked, not only the first. A host that does not resolve is an :class:`OSError` (tried again: DNS
    fails for a while)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = list(dict.fromkeys(str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)))
    if not found:
        raise OSError(f"{host} has no address")
    if allow_private:
        return found, None
    for text in found:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if not is_public(ip):
            return found, f"the url's host {host} resolves to {ip}, a private address: not called"
    return found, None


def refused_address(url: str, allow_private: bool) -> str | None:
    """Why the host of ``url`` must not be called (None: every address it resolves to is public, or private ones
    are allowed). A host that does not resolve is an :class:`OSError`."""
    if allow_private:
        return None
    return resolve(url, False)[1]


ANSWER_BYTES = 64 * 1024  # of a webhook's answer, read: its status and the beginning of a failure's reason


class _Pinned:
    """A connection to the addresses its request was checked against (``addresses``), never to a second lookup of
    the host, which a DNS name could answer differently (a public address to the check, 127.0.0.1 to the
    connection). The Host header, the TLS server name and the certificate check keep the URL's host."""

    def __init__(self, *args, addresses: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self._addresses = addresses

    def _new_conn(self) -> socket.socket:
        return connect_in_turn(self, self._addresses, super()._new_conn)


class _HTTPConnection(_Pinned, urllib3.connection.HTTPConnection):
    pass


class _HTTPSConnection(_Pinned, urllib3.connection.HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


def send(client: Client, method: str, url: str, addresses: list[str], *, body: bytes, headers: dict) -> Response:
    """``method url`` connected to ``addresses`` only (what :func:`resolve` checked), with ``client``'s timeout and
    headers; one connection for this request (a pooled one may have been opened to another address, for another
    workspace's check). :class:`HTTPError` as :meth:`Client.request` raises it."""
    parts = urllib3.util.parse_url(url)
    pool_class = _HTTPSPool if parts.scheme == "https" else _HTTPPool
    pool = pool_class(parts.host, parts.port, timeout=client.timeout, maxsize=1, retries=False,
                      addresses=tuple(addresses))  # fmt: skip
    try:
        r = pool.urlopen(method, parts.request_uri, body=body, headers={**client.headers, **headers},
                         redirect=False, preload_content=False, decode_content=False,
                         assert_same_host=False)  # fmt: skip
        # only the status and the answer's beginning are kept (a failure's reason): read that much, undecoded, so
        # that an endless or compressed answer cannot fill the worker's memory (review: a 204 KB gzip answer
        # held 200 MB)
        head = r.read(ANSWER_BYTES, decode_content=False)
        if (r.headers.get("content-encoding") or "identity").strip().lower() != "identity":
            head = b""  # compressed: its bytes would say nothing in a reason, and are not inflated
        r.release_conn()
    except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
            urllib3.exceptions.SSLError, urllib3.exceptions.LocationValueError) as exc:  # fmt: skip
        raise HTTPError(f"{type(exc).__name__}: {exc}", sent=False) from None
    except urllib3.exceptions.HTTPError as exc:  # read timeout, connection reset or closed mid-answer
        raise HTTPError(f"{type(exc).__name__}: {exc}", sent=True) from None
    finally:
        pool.close()
    return Response(r.status, r.headers, head)


def attempt(client: Client, row, settings: dict, workspace: str | None = None) -> Outcome:
    """One request for a claimed row: what happened (no database work here). ``workspace`` is the name of the
    row's workspace: the one whose ``CHORUS_WS_`` variables its secret may name (None: none is read)."""
    conf = _conf(settings)
    reason = check_url(row.url)
    if reason is not None:
        return Outcome("failed", reason=reason)
    allow = bool(conf.get("allow_private")) or os.environ.get(ALLOW_ENV) == "1"
    try:
        addresses, refused = resolve(row.url, allow)
    except OSError as exc:  # no answer from DNS, or no such host: it may resolve later
        return Outcome("retry", reason=f"the url's host does not resolve: {exc}")
    if refused is not None:
        return Outcome("failed", reason=refused)
    try:
        key = secret(conf, "secret", "settings.journeys.webhooks", workspace=workspace)
    except ConfigError as exc:
        return Outcome("failed", reason=str(exc))
    if key is None:
        return Outcome("failed", reason="settings.journeys.webhooks.secret_env is required: every webhook is signed")
    body = orjson.dumps(row.body)
    headers = {
        "Content-Type": "application/json", "Idempotency-Key": row.key, "Chorus-Journey-Id": row.journey_id,
        "Chorus-Signature": sign(key, body, int(time.time())), "User-Agent": "Chorus-Webhook/1",
    }  # fmt: skip
    try:
        r = send(client, row.method, row.url, addresses, body=body, headers=headers)  # the checked addresses only
    except HTTPError as exc:
        return Outcome("retry", reason=f"webhook unreachable: {exc}"[:300])
    if 200 <= r.status_code < 300:
        return Outcome("delivered", r.status_code)
    reason = f"webhook answered {r.status_code}: {r.text[:200]}"
    if r.status_code in RETRY_STATUS or r.status_code >= 500:
        return Outcome("retry", r.status_code, reason)
    return Outcome("failed", r.status_code, reason)


def backoff(attempts: int) -> timedelta:
    """The wait after the ``attempts``-th failed attempt."""
    first, most = BACKOFF
    return min(first * (2 ** min(max(attempts - 1, 0), 20)), most)  # the exponent capped: no overflow


def claim(conn: Connection, at: datetime, limit: int) -> list:
    """Due pending rows, earliest first, each leased (due again after :data:`LEASE`) and its attempt counted.
    PostgreSQL: rows another worker holds are skipped."""
    t = journey_webhooks.c
    q = sa.select(journey_webhooks).where(t.status == "pending", t.due_at <= at).order_by(t.due_at).limit(limit)
    if conn.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = conn.execute(q).all()
    for r in rows:
        conn.execute(journey_webhooks.update().where(t.workspace_id == r.workspace_id, t.key == r.key)
                     .values(due_at=at + LEASE, attempts=r.attempts + 1))  # fmt: skip
    return rows


def deliver(engine: Engine, client: Client, limit: int = 50, clock: Callable[[], datetime] | None = None) -> int:
    """One pass: claim due requests (one short transaction), send them, record each outcome. Returns how many were
    attempted."""
    at = (clock or runtime.now)()
    owners: dict[str, ws_api.Workspace | None] = {}
    t = journey_webhooks.c
    with read_only(engine) as probe:  # an idle poll takes no write lock (SQLite)
        if probe.execute(sa.select(t.key).where(t.status == "pending", t.due_at <= at).limit(1)).first() is None:
            return 0
    with engine.begin() as conn:
        rows = claim(conn, at, limit)
        for ws in {r.workspace_id for r in rows}:
            try:
                owners[ws] = ws_api.get(conn, ws)
            except NotFound:  # the workspace is gone: its rows fail below with no secret
                owners[ws] = None
    for r in rows:
        owner = owners[r.workspace_id]
        try:
            # its name too: the secret may be one of its own CHORUS_WS_<NAME>__ variables (decision 0051)
            out = attempt(client, r, owner.settings if owner else {}, owner.name if owner else None)
        except Exception as exc:  # noqa: BLE001 - one bad row must not stop the others; it is tried again
            log.exception("journey webhook %s failed unexpectedly", r.key)
            out = Outcome("retry", reason=f"{type(exc).__name__}: {exc}"[:300])
        record(engine, r, r.attempts + 1, out, (clock or runtime.now)())
    return len(rows)


def record(engine: Engine, row, attempts: int, out: Outcome, at: datetime) -> None:
    """The outcome of attempt number ``attempts`` (a row claimed again since, after its lease, is left alone)."""
    values: dict = {"answer": out.answer, "error": out.reason and out.reason[:300]}
    if out.status == "retry" and attempts >= MAX_ATTEMPTS:
        values.update(status="failed", done_at=at, error=f"gave up after {attempts} attempts: {out.reason}"[:300])
    elif out.status == "retry":
        values.update(due_at=at + backoff(attempts))
    else:
        values.update(status=out.status, done_at=at)
    if out.status != "delivered":
        log.warning("journey webhook %s (attempt %d): %s", row.key, attempts, out.reason)
    t = journey_webhooks.c
    with engine.begin() as conn:
        conn.execute(journey_webhooks.update().where(
            t.workspace_id == row.workspace_id, t.key == row.key, t.status == "pending", t.attempts == attempts,
        ).values(**values))  # fmt: skip


class WebhookTask:
    """The ``journey_webhooks`` worker task: one delivery pass per run."""

    def __init__(self, engine: Engine, options=None):
        self.engine = engine
        self.client = Client(timeout=TIMEOUT)

    def run_once(self) -> int:
        return deliver(self.engine, self.client)

    def close(self) -> None:
        self.client.close()


# -- erasure -----------------------------------------------------------------------------------------------------------
TABLES = {"journey_webhooks": "journey_webhooks"}


def forget(conn: Connection, ws: str, person: Person) -> dict[str, int]:
    """Erasure: her queued, delivered and failed requests (their bodies carry her profile id and event)."""
    t = journey_webhooks.c
    n = conn.execute(journey_webhooks.delete().where(t.workspace_id == ws, bulk.in_(
        t.profile_id, person.profile_ids, conn.dialect.name))).rowcount  # fmt: skip
    return {"journey_webhooks": n or 0}
