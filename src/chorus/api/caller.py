"""Who a write-key request may be: the one place where every write-key endpoint that reads or changes one
person's data (the in-app inbox, its read marks and stream, browser push subscriptions) learns who is calling.

The rule itself is :func:`chorus.workspaces.verification.claim`: ``userId`` with a matching ``userHash`` (query
parameter or JSON body field, like ``userId``: an ``EventSource`` cannot send headers), or ``anonymousId``, which
reaches only what was addressed to that anonymous id. Forgetting a push subscription needs no claim: its endpoint
URL, which only the browser and its push service know, is the proof.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from chorus import workspaces as ws_api
from chorus.api.common import Services, read_limited, write_key
from chorus.errors import ChorusError, NotFound
from chorus.safejson import loads
from chorus.store.db import read_only
from chorus.store.tables import identifiers, profile_aliases
from chorus.workspaces import verification
from chorus.workspaces.verification import Claim

BODY_LIMIT = 64 * 1024  # a PushSubscription or a read mark is well under 2 kB
PERSON_FIELDS = ("userId", "anonymousId", "userHash", "writeKey")


@dataclass(frozen=True)
class Caller:
    workspace: ws_api.Workspace
    claim: Claim


def caller(svc: Services, headers, params: dict) -> Caller:
    """Check the write key, then who the request says it is (401/403 for a missing or wrong userHash)."""
    source = svc.keys.source(write_key(headers, params))
    with read_only(svc.engine) as conn:
        ws = ws_api.get(conn, source.workspace_id)
    claim = verification.claim(
        params.get("userId"), params.get("anonymousId"), params.get("userHash"),
        secret=lambda: verification.secret(svc.engine, ws.id), verify=verification.required(ws.settings),
    )  # fmt: skip
    return Caller(ws, claim)


def profile_ids(conn: Connection, who: Caller) -> list[str]:
    """The profile the claimed id belongs to, with its former (merged) ids; NotFound before it is seen."""
    pid = conn.execute(
        sa.select(identifiers.c.profile_id).where(
            identifiers.c.workspace_id == who.workspace.id, identifiers.c.ident == who.claim.ident
        )
    ).scalar_one_or_none()
    if pid is None:
        raise NotFound("no inbox for this person yet")
    aliases = conn.execute(sa.select(profile_aliases.c.alias_id).where(profile_aliases.c.profile_id == pid))
    return [pid, *aliases.scalars()]


async def json_body(request, *, required: bool) -> dict:
    """A small JSON object body through the one validation point (safejson); ``{}`` when optional and empty."""
    raw = await read_limited(request, BODY_LIMIT, "body")
    if not raw.strip() and not required:
        return {}
    body = loads(raw)
    if not isinstance(body, dict):
        raise ChorusError("body must be a JSON object", field="body")
    return body
