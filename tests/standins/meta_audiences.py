"""A local stand-in for the Marketing API's Custom Audience users edge, written from Meta's published reference
(https://developers.facebook.com/docs/marketing-api/reference/custom-audience/users and the "Customer File Custom
Audiences" guide): ``POST /{version}/{custom_audience_id}/users`` adds and ``DELETE`` on the same edge removes,
with ``payload`` = ``{"schema": [...], "data": [[...]]}`` (or the single-key form ``{"schema": "EMAIL_SHA256",
"data": [...]}``) and an optional ``session``, at most 10,000 rows a request, as form fields, query parameters or
a JSON body. Hashed keys must be lower-case hex SHA-256; ``EXTERN_ID`` and ``MADID`` are not hashed. Answers
``{"audience_id", "session_id", "num_received", "num_invalid_entries", "invalid_entry_samples"}``, or Graph's
error envelope (https://developers.facebook.com/docs/marketing-api/error-reference): 190 for a bad or expired
token, 100/33 for an unknown audience, 100 for a bad payload, 80003 when the ad account's custom audience calls
are throttled, 2 when the service is down.

Membership is kept as a set of rows (each a frozenset of ``(key, value)``); a removal takes out the rows that
share an identifying value with it, as Meta matches people rather than rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MULTI_KEYS = {
    "EXTERN_ID",
    "EMAIL",
    "PHONE",
    "GEN",
    "DOBY",
    "DOBM",
    "DOBD",
    "LN",
    "FN",
    "FI",
    "CT",
    "ST",
    "ZIP",
    "MADID",
    "COUNTRY",
    "LOOKALIKE_VALUE",
}
SINGLE_KEYS = {"EMAIL_SHA256": "EMAIL", "PHONE_SHA256": "PHONE", "MOBILE_ADVERTISER_ID": "MADID"}
UNHASHED = {"EXTERN_ID", "MADID", "LOOKALIKE_VALUE"}
IDENTIFYING = {"EMAIL", "PHONE", "EXTERN_ID", "MADID"}
HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_ROWS = 10_000


def error(
    status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    kind: str = "OAuthException",
    transient: bool = False,
) -> JSONResponse:
    err: dict = {"message": message, "type": kind, "code": code, "fbtrace_id": "A" + uuid.uuid4().hex[:22]}
    if subcode is not None:
        err["error_subcode"] = subcode
    if transient:
        err["is_transient"] = True
    return JSONResponse({"error": err}, status_code=status)


class MetaAudiencesStandIn:
    def __init__(
        self, access_token: str, audiences: tuple[str, ...] = ("23851234567890123",), app_secret: str | None = None
    ):
        self.tokens = {access_token}
        self.app_secret = app_secret
        self.audiences: dict[str, set[frozenset]] = {a: set() for a in audiences}
        self.requests: list[dict] = []  # every request: method, audience, payload, session, authorization
        self.rate_limited = 0  # the next N requests are throttled (code 80003)
        self.down = 0  # the next N requests fail with a server error
        self.app = Starlette(routes=[Route("/{version}/{audience}/users", self.users, methods=["POST", "DELETE"])])

    def emails(self, audience: str) -> set[str]:
        return {v for row in self.audiences[audience] for k, v in row if k == "EMAIL"}

    def keys(self, audience: str, key: str) -> set[str]:
        return {v for row in self.audiences[audience] for k, v in row if k == key}

    async def _params(self, request: Request) -> dict:
        params = dict(request.query_params)
        ctype = request.headers.get("content-type", "")
        if "application/json" in ctype:
            try:
                body = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                body = None
            if isinstance(body, dict):
                params.update(body)
        elif "form" in ctype:
            params.update(dict(await request.form()))
        return params

    async def users(self, request: Request):
        params = await self._params(request)
        auth = request.headers.get("authorization", "")
        audience = request.path_params["audience"]
        record = {"method": request.method, "audience": audience, "authorization": auth, "params": params}
        self.requests.append(record)
        if not re.fullmatch(r"v\d+\.\d+", request.path_params["version"]):
            return error(400, 2500, "Unknown path components: /" + request.path_params["version"])
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else params.get("access_token")
        if not token:
            return error(400, 2500, "An active access token must be used to query information about the current user.")
        if token not in self.tokens:
            return error(
                401,
                190,
                "Error validating access token: Session has expired on Tuesday, 24-Nov-26 10:00:00 PST. "
                "The current time is Wednesday, 25-Nov-26 09:00:00 PST.",
                subcode=463,
            )
        if self.app_secret is not None:
            proof = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if params.get("appsecret_proof") != proof:
                return error(
                    400, 100, "Invalid appsecret_proof provided in the API argument", kind="GraphMethodException"
                )
        if self.down:
            self.down -= 1
            return error(500, 2, "Service temporarily unavailable", transient=True)
        if self.rate_limited:
            self.rate_limited -= 1
            return error(
                400,
                80003,
                "There have been too many calls to this ad-account. Wait a bit and try again. "
                "For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/"
                "rate-limiting#custom-audience.",
                transient=True,
            )
        if audience not in self.audiences:
            return error(
                400,
                100,
                f"Unsupported post request. Object with ID '{audience}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation. Please read the "
                "Graph API documentation at https://developers.facebook.com/docs/graph-api",
                subcode=33,
                kind="GraphMethodException",
            )
        payload = params.get("payload")
        if isinstance(payload, str):
            try:
                payload = orjson.loads(payload)
            except orjson.JSONDecodeError:
                return error(400, 100, "(#100) param payload must be a JSON object")
        if not isinstance(payload, dict):
            return error(400, 100, "(#100) The parameter payload is required")
        record["payload"] = payload
        session = params.get("session")
        if session is not None:
            if isinstance(session, str):
                try:
                    session = orjson.loads(session)
                except orjson.JSONDecodeError:
                    return error(400, 100, "(#100) param session must be a JSON object")
            ok = (
                isinstance(session, dict)
                and isinstance(session.get("session_id"), int)
                and (isinstance(session.get("batch_seq"), int) and session["batch_seq"] >= 1)
                and isinstance(session.get("last_batch_flag", False), bool)
            )
            if not ok:
                return error(400, 100, "(#100) session must have session_id, batch_seq and last_batch_flag")
            record["session"] = session
        schema, data = payload.get("schema"), payload.get("data")
        if isinstance(schema, str):
            if schema not in SINGLE_KEYS:
                return error(400, 100, f"(#100) Invalid schema: {schema}")
            schema = [SINGLE_KEYS[schema]]
            data = [[d] for d in data] if isinstance(data, list) else data
        if not isinstance(schema, list) or not schema or any(k not in MULTI_KEYS for k in schema):
            return error(400, 100, f"(#100) Invalid schema: {schema}")
        if len(set(schema)) != len(schema):
            return error(400, 100, "(#100) Duplicate keys in schema")
        if not isinstance(data, list) or not data:
            return error(400, 100, "(#100) The parameter data is required and must be a non-empty array")
        if len(data) > MAX_ROWS:
            return error(400, 100, f"(#100) Too many users in a request: {len(data)}; the limit is {MAX_ROWS}")
        invalid: dict[str, str] = {}
        rows = []
        for row in data:
            if not isinstance(row, list) or len(row) != len(schema):
                invalid.setdefault(str(row)[:64], "the number of values does not match the schema")
                continue
            values = {}
            bad = None
            for key, value in zip(schema, row, strict=True):
                if value in ("", None):
                    continue
                if key not in UNHASHED and not (isinstance(value, str) and HEX64.fullmatch(value)):
                    bad = (str(value)[:64], f"{key} must be hashed with SHA-256 (64 lower-case hex characters)")
                    break
                values[key] = str(value)
            if bad:
                invalid.setdefault(*bad)
            elif not values:
                invalid.setdefault("", "no value in the row")
            else:
                rows.append(frozenset(values.items()))
        members = self.audiences[audience]
        if request.method == "POST":
            members.update(rows)
        else:
            for row in rows:
                ident = {(k, v) for k, v in row if k in IDENTIFYING} or set(row)
                for held in [m for m in members if m & ident]:
                    members.discard(held)
        return JSONResponse(
            {
                "audience_id": audience,
                "session_id": str((session or {}).get("session_id") or uuid.uuid4().int % 10**15),
                "num_received": len(data),
                "num_invalid_entries": len(data) - len(rows),
                "invalid_entry_samples": dict(list(invalid.items())[:10]),
            }
        )
