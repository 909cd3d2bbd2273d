"""Identity verification: who a request made with the public write key may be.

The write key is in every page's source, so a request made with it can only *claim* a person. Chorus believes a
claimed ``userId`` only together with ``userHash`` = hex(HMAC-SHA256(identity secret, userId)), which the brand's
server computes with the workspace's identity secret (the scheme of Intercom's ``user_hash`` and Chatwoot's
``identifier_hash``). Without it a caller is the anonymous id it names, and sees only what was addressed to that
anonymous id: a browser that sent ``identify`` with a customer's email under its own anonymous id has joined that
customer's profile, but reads nothing that was sent to the customer.

The rules are plain functions (:func:`claim`, :func:`addressed_to`); :mod:`chorus.api.caller` applies them to a
request, once, for every write-key endpoint that reads or changes one person's data.

Tracked events follow the same rule (:func:`seal`, decision 0014): a write-key event whose ``userId`` comes with a
valid ``userHash`` is marked vouched when it is stored (the hash itself is never stored: it is a credential), so
that the profile fold, a pure function that cannot read secrets, knows which events may undo an opt-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from chorus import workspaces as ws_api
from chorus.errors import ChorusError, Unauthorized
from chorus.safejson import check_text
from chorus.store.db import read_only
from chorus.store.tables import instance_secrets

ALGORITHM = "hex(HMAC-SHA256(identity_secret, userId))"
MAX_ID = 200  # the longest user or anonymous id taken (events keep 200 characters of each)
MAX_ANONYMOUS_IDS = 100  # anonymous ids recorded on one in-app message (a person rarely has more than a few)


class Forbidden(ChorusError):
    status = 403
    code = "forbidden"


def _name(ws_id: str) -> str:
    return f"identity:{ws_id}"


def secret(engine: Engine, ws_id: str) -> str:
    """The workspace's identity secret, generated on first use and kept until rotated.

    Read without the write lock (``read_only``): a verified inbox read or tracking call must not wait behind a
    worker's write on SQLite; only the first use, which generates it, writes."""
    with read_only(engine) as conn:
        row = conn.execute(sa.select(instance_secrets.c.value).where(instance_secrets.c.name == _name(ws_id))).first()
    if row:
        return row.value
    try:
        with engine.begin() as conn:
            conn.execute(instance_secrets.insert().values(name=_name(ws_id), value=_new()))
    except IntegrityError:  # another process generated it first: theirs is the secret
        pass
    return secret(engine, ws_id)


def rotate(engine: Engine, ws_id: str) -> str:
    """A new identity secret; every hash computed with the old one stops working at once."""
    value = _new()
    with engine.begin() as conn:
        done = conn.execute(
            instance_secrets.update().where(instance_secrets.c.name == _name(ws_id)).values(value=value)
        ).rowcount
        if not done:
            conn.execute(instance_secrets.insert().values(name=_name(ws_id), value=value))
    return value


def _new() -> str:
    return "is_" + secrets.token_urlsafe(32)


def user_hash(secret_value: str, user_id: str) -> str:
    """What the brand's server computes for a signed-in user (and what Chorus compares with)."""
    return hmac.new(secret_value.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()


def hash_matches(secret_value: str, user_id: str, given: str) -> bool:
    # bytes, not str: compare_digest refuses non-ASCII text, and a hostile hash must be a 403, not a crash
    return hmac.compare_digest(user_hash(secret_value, user_id).encode(), given.strip().lower().encode())


# Set by Chorus on a stored write-key event whose userId was proven by its userHash; removed from what clients send.
VOUCHED = "userHashVerified"


def seal(payload: dict, user_id: str | None, *, trusted: bool, check: Callable[[str, object], bool]) -> None:
    """Decide, once, whether a tracked event is vouched for, and keep no credential in it (in place).

    ``userHash`` (top level or ``context.userHash``) is checked against ``user_id`` by ``check`` and removed; a
    client's own ``userHashVerified`` is dropped. Events from trusted sources are vouched by their source."""
    given = payload.pop("userHash", None)
    ctx = payload.get("context")
    if isinstance(ctx, dict) and "userHash" in ctx:
        ctx = payload["context"] = dict(ctx)  # the context may be shared with other batch items
        inner = ctx.pop("userHash")
        if given is None or given == "":
            given = inner
    payload.pop(VOUCHED, None)
    if not trusted and user_id is not None and check(user_id, given):
        payload[VOUCHED] = True


def vouched(payload: dict, trusted: bool) -> bool:
    """May this stored event undo an opt-out or replace a vouched email/phone? (see chorus.profiles.state)"""
    return trusted or payload.get(VOUCHED) is True


def checker(engine: Engine, ws_id: str) -> Callable[[str, object], bool]:
    """``check`` for :func:`seal`: the workspace's verification setting and secret, read once and only if needed.

    With verification off (development), a ``userId`` is believed without a hash, as by :func:`claim`."""
    cache: dict = {}

    def check(user_id: str, given: object) -> bool:
        if "verify" not in cache:
            with read_only(engine) as conn:
                cache["verify"] = required(ws_api.get(conn, ws_id).settings)
        if not cache["verify"]:
            return True
        if not isinstance(given, str) or not given:
            return False
        if "secret" not in cache:
            cache["secret"] = secret(engine, ws_id)
        return hash_matches(cache["secret"], user_id, given)

    return check


def required(settings: dict) -> bool:
    """Verification is on unless the workspace turned it off (``messaging.inbox_verification: false``)."""
    return (settings.get("messaging") or {}).get("inbox_verification", True) is not False


@dataclass(frozen=True)
class Claim:
    """Who the caller is: ``user_id:…`` (proven by its hash, or taken on trust when verification is off) or
    ``anonymous_id:…`` (which anyone may claim, so it sees only what was addressed to it)."""

    ident: str
    anonymous: bool

    @property
    def value(self) -> str:
        return self.ident.split(":", 1)[1]


def _id(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ChorusError(f"{field} must be a string", field=field)
    text = check_text(str(value), field)
    if len(text) > MAX_ID:
        raise ChorusError(f"{field} is longer than {MAX_ID} characters", field=field)
    return text


def claim(user_id: object, anonymous_id: object, given_hash: object, *, secret: Callable[[], str],
          verify: bool) -> Claim:  # fmt: skip
    """The one rule for every write-key read or change of a person's data.

    ``userId`` needs a matching ``userHash`` (401 when it is missing, 403 when it does not match) unless ``verify``
    is off; ``anonymousId`` needs nothing but only reaches what was addressed to it (:func:`addressed_to`).
    """
    uid, aid = _id(user_id, "userId"), _id(anonymous_id, "anonymousId")
    if (uid is None) == (aid is None):
        raise ChorusError("give exactly one of userId or anonymousId", field="userId")
    if aid is not None:
        return Claim(f"anonymous_id:{aid}", anonymous=True)
    assert uid is not None
    if verify:
        if given_hash is None or given_hash == "":
            raise Unauthorized(
                "userHash is missing: with identity verification on (the default), userId needs userHash = "
                f"{ALGORITHM}, computed by your server",
                field="userHash",
            )
        if not isinstance(given_hash, str) or not hash_matches(secret(), uid, given_hash):
            raise Forbidden("userHash does not match userId (was it computed with the current identity secret?)",
                            field="userHash")  # fmt: skip
    return Claim(f"user_id:{uid}", anonymous=False)


def addressed_to(claim_: Claim, choice: dict | None) -> bool:
    """May the caller see a message? A verified person sees everything sent to their profile; an anonymous
    caller only the in-app messages sent while the recipient was anonymous and had this anonymous id."""
    if not claim_.anonymous:
        return True
    return claim_.value in ((choice or {}).get("anonymous_ids") or ())


def anonymous_recipient(profile: dict, channel: str | None) -> dict:
    """What an in-app message records about an anonymous recipient: the anonymous ids it was addressed to, the
    only callers that may read it without a user hash. A known recipient records nothing (needs the hash)."""
    if channel != "in_app" or profile.get("known"):
        return {}
    ids = ((profile.get("identifiers") or {}).get("anonymous_id") or [])[:MAX_ANONYMOUS_IDS]
    return {"anonymous_ids": [str(i) for i in ids]}
