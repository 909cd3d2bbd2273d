"""A local stand-in for Google's OAuth 2.0 token endpoint and the Google Ads API (REST) ``OfflineUserDataJobService``
for Customer Match, written from Google's published reference:

* ``POST /token`` (https://developers.google.com/identity/protocols/oauth2/web-server#offline):
  ``grant_type=refresh_token``, ``client_id``, ``client_secret``, ``refresh_token`` → ``{"access_token",
  "expires_in", "scope", "token_type"}``; ``invalid_grant`` (400) for an expired or revoked refresh token,
  ``invalid_client`` (401) for a wrong client.
* ``POST /{version}/customers/{customer_id}/offlineUserDataJobs:create`` (job type ``CUSTOMER_MATCH_USER_LIST``,
  ``customerMatchUserListMetadata.userList`` and ``consent``) → ``{"resourceName"}``;
  ``.../offlineUserDataJobs/{id}:addOperations`` (``create``/``remove``/``removeAll`` of ``UserData``,
  ``enablePartialFailure``) → ``{}`` or ``{"partialFailureError"}``; ``.../offlineUserDataJobs/{id}:run``.
  Headers ``Authorization: Bearer``, ``developer-token``, and ``login-customer-id`` when the account is reached
  through a manager. Limits: 100,000 identifiers a request, 20 per ``UserData``; hashed fields are lower-case hex
  SHA-256; a job cannot mix creates and removes (``CONFLICTING_OPERATION``).
* Errors: ``{"error": {"code", "message", "status", "details": [{"@type": "type.googleapis.com/google.ads.
  googleads.<v>.errors.GoogleAdsFailure", "errors": [{"errorCode": {...}, "message", "location"}],
  "requestId"}]}}`` (https://developers.google.com/google-ads/api/docs/get-started/handle-errors).

A list's members are kept as a set of users (each a frozenset of identifiers); a removal takes out the users that
share an identifier with it. A job is applied when it is run (Google takes hours; here it is at once).
"""

from __future__ import annotations

import re
import time
import uuid

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_IDENTIFIERS, MAX_PER_USER = 100_000, 20
CONSENT = {"GRANTED", "DENIED", "UNSPECIFIED", "UNKNOWN"}
ID_FIELDS = ("hashedEmail", "hashedPhoneNumber", "mobileId", "thirdPartyUserId", "addressInfo")
_CREATE = re.compile(r"(v\d+)/customers/([^/]+)/offlineUserDataJobs:create")
_JOB = re.compile(r"(v\d+)/customers/([^/]+)/offlineUserDataJobs/(\d+):(addOperations|run)")


class GoogleAdsStandIn:
    def __init__(
        self,
        customer_id: str = "1234567890",
        lists: tuple[str, ...] = ("555001",),
        developer_token: str = "dev-token-abc",
        client_id: str = "client-1.apps.googleusercontent.com",
        client_secret: str = "client-secret-1",
        refresh_token: str = "1//refresh-token-1",
        login_customer_id: str | None = None,
    ):
        self.customer_id, self.developer_token, self.login_customer_id = customer_id, developer_token, login_customer_id
        self.client = (client_id, client_secret)
        self.refresh_tokens = {refresh_token}
        self.access_tokens: dict[str, float] = {}  # token -> expiry (time.time())
        self.token_lifetime = 3599
        self.lists: dict[str, set[frozenset]] = {f"customers/{customer_id}/userLists/{i}": set() for i in lists}
        self.jobs: dict[str, dict] = {}
        self.requests: list[dict] = []  # every Ads API request: path, headers, body
        self.token_requests = 0
        self.rate_limited = 0  # the next N Ads API requests answer 429 RESOURCE_EXHAUSTED
        self.retry_delay = "0.01s"
        self.app = Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/{path:path}", self.ads, methods=["POST"]),
            ]
        )

    # -- OAuth ----------------------------------------------------------------------------------------------------
    async def token(self, request: Request):
        self.token_requests += 1
        form = dict(await request.form())
        if form.get("grant_type") != "refresh_token":
            return JSONResponse(
                {
                    "error": "unsupported_grant_type",
                    "error_description": f"Invalid grant_type: {form.get('grant_type')}",
                },
                400,
            )
        if (form.get("client_id"), form.get("client_secret")) != self.client:
            return JSONResponse(
                {"error": "invalid_client", "error_description": "The OAuth client was not found."}, 401
            )
        if form.get("refresh_token") not in self.refresh_tokens:
            return JSONResponse(
                {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}, 400
            )
        access = "ya29." + uuid.uuid4().hex
        self.access_tokens[access] = time.time() + self.token_lifetime
        return JSONResponse(
            {
                "access_token": access,
                "expires_in": self.token_lifetime,
                "scope": "https://www.googleapis.com/auth/adwords",
                "token_type": "Bearer",
            }
        )

    def expire_tokens(self) -> None:
        for t in self.access_tokens:
            self.access_tokens[t] = 0.0

    # -- members ----------------------------------------------------------------------------------------------------
    def members(self, user_list_id: str) -> set[frozenset]:
        return self.lists[f"customers/{self.customer_id}/userLists/{user_list_id}"]

    def identifiers(self, user_list_id: str, kind: str) -> set[str]:
        return {i.split(":", 1)[1] for user in self.members(user_list_id) for i in user if i.startswith(kind + ":")}

    # -- errors -----------------------------------------------------------------------------------------------------
    @staticmethod
    def failure(version: str, errors: list[dict]) -> dict:
        return {
            "@type": f"type.googleapis.com/google.ads.googleads.{version}.errors.GoogleAdsFailure",
            "errors": errors,
            "requestId": uuid.uuid4().hex[:22],
        }

    def error(self, version: str, http: int, status: str, message: str, errors: list[dict], extra=()) -> JSONResponse:
        details = [self.failure(version, errors), *extra] if errors else list(extra)
        return JSONResponse({"error": {"code": http, "message": message, "status": status, "details": details}}, http)

    def one(
        self,
        version: str,
        http: int,
        status: str,
        message: str,
        kind: str,
        code: str,
        text: str,
        path: list[dict] | None = None,
    ) -> JSONResponse:
        return self.error(version, http, status, message, [self.err(kind, code, text, path)])

    @staticmethod
    def err(kind: str, code: str, message: str, path: list[dict] | None = None) -> dict:
        e: dict = {"errorCode": {kind: code}, "message": message}
        if path:
            e["location"] = {"fieldPathElements": path}
        return e

    # -- the API ----------------------------------------------------------------------------------------------------
    async def ads(self, request: Request):
        path = request.path_params["path"]
        raw = await request.body()
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            body = None
        self.requests.append({"path": path, "headers": dict(request.headers), "body": body})
        m_create, m_job = _CREATE.fullmatch(path), _JOB.fullmatch(path)
        version = (m_create or m_job).group(1) if (m_create or m_job) else "v26"
        if not (m_create or m_job):
            return JSONResponse({"error": {"code": 404, "message": "Method not found.", "status": "NOT_FOUND"}}, 404)
        bad_auth = (
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or "
            "other valid authentication credential."
        )
        auth = request.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        if token is None:
            return self.one(
                version,
                401,
                "UNAUTHENTICATED",
                bad_auth,
                "authenticationError",
                "OAUTH_TOKEN_HEADER_INVALID",
                "Oauth token HTTP header is malformed.",
            )
        if token not in self.access_tokens:
            return self.one(
                version,
                401,
                "UNAUTHENTICATED",
                bad_auth,
                "authenticationError",
                "OAUTH_TOKEN_INVALID",
                "Oauth token in the header is not valid.",
            )
        if self.access_tokens[token] < time.time():
            return self.one(
                version,
                401,
                "UNAUTHENTICATED",
                bad_auth,
                "authenticationError",
                "OAUTH_TOKEN_EXPIRED",
                "Oauth token in the header has expired.",
            )
        if request.headers.get("developer-token") != self.developer_token:
            return self.one(
                version,
                401,
                "UNAUTHENTICATED",
                "The developer token is not valid.",
                "authenticationError",
                "DEVELOPER_TOKEN_INVALID",
                "The developer token is not valid.",
            )
        customer = (m_create or m_job).group(2)
        if not customer.isdigit():
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "requestError",
                "INVALID_CUSTOMER_ID",
                "Customer ID is invalid (it must be digits, without dashes).",
            )
        if customer != self.customer_id or (
            self.login_customer_id and request.headers.get("login-customer-id") != self.login_customer_id
        ):
            return self.one(
                version,
                403,
                "PERMISSION_DENIED",
                "The caller does not have permission",
                "authorizationError",
                "USER_PERMISSION_DENIED",
                "User doesn't have permission to access customer. "
                "Note: If you're accessing a client customer, the manager's customer id must be set in the "
                "'login-customer-id' header.",
            )
        if self.rate_limited:
            self.rate_limited -= 1
            retry = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": self.retry_delay}
            return self.error(
                version,
                429,
                "RESOURCE_EXHAUSTED",
                "Resource has been exhausted (e.g. check quota).",
                [self.err("quotaError", "RESOURCE_TEMPORARILY_EXHAUSTED", "Too many requests. Retry in 1 seconds.")],
                extra=[retry],
            )
        if not isinstance(body, dict):
            return self.error(version, 400, "INVALID_ARGUMENT", "Invalid JSON payload received.", [])
        if m_create:
            return self.create(version, body)
        name = f"customers/{customer}/offlineUserDataJobs/{m_job.group(3)}"
        job = self.jobs.get(name)
        if job is None:
            return self.one(
                version,
                404,
                "NOT_FOUND",
                "Requested entity was not found.",
                "mutateError",
                "RESOURCE_NOT_FOUND",
                "The requested resource was not found.",
            )
        if m_job.group(4) == "run":
            return self.run(version, name, job)
        return self.add_operations(version, job, body)

    def create(self, version: str, body: dict):
        job = body.get("job") or {}
        if job.get("type") != "CUSTOMER_MATCH_USER_LIST":
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "fieldError",
                "REQUIRED",
                "The required field was not present.",
                [{"fieldName": "job"}, {"fieldName": "type"}],
            )
        meta = job.get("customerMatchUserListMetadata") or {}
        if meta.get("userList") not in self.lists:
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "offlineUserDataJobError",
                "INVALID_USER_LIST_ID",
                "The user list ID provided for the job is invalid.",
                [{"fieldName": "job"}, {"fieldName": "customer_match_user_list_metadata"}, {"fieldName": "user_list"}],
            )
        consent = meta.get("consent") or {}
        for key, value in consent.items():
            if key not in ("adUserData", "adPersonalization") or value not in CONSENT:
                return self.error(version, 400, "INVALID_ARGUMENT", f"Invalid value at 'job.consent.{key}'", [])
        job_id = str(len(self.jobs) + 1 + 7_000_000)
        name = f"customers/{self.customer_id}/offlineUserDataJobs/{job_id}"
        self.jobs[name] = {"list": meta["userList"], "consent": consent, "operations": [], "status": "PENDING"}
        return JSONResponse({"resourceName": name})

    def check_user(self, data: object, at: list[dict]) -> tuple[frozenset | None, list[dict]]:
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("userIdentifiers"), list)
            or not data["userIdentifiers"]
        ):
            return None, [
                self.err(
                    "offlineUserDataJobError",
                    "MISSING_USER_IDENTIFIER",
                    "The user identifier is missing valid data.",
                    at,
                )
            ]
        ids = data["userIdentifiers"]
        if len(ids) > MAX_PER_USER:
            return None, [
                self.err(
                    "offlineUserDataJobError",
                    "TOO_MANY_USER_IDENTIFIERS",
                    "Maximum number of user identifiers allowed per request is 100,000 and per operation is 20.",
                    at,
                )
            ]
        out = set()
        for j, ident in enumerate(ids):
            here = [*at, {"fieldName": "user_identifiers", "index": j}]
            keys = [k for k in ID_FIELDS if isinstance(ident, dict) and k in ident]
            if len(keys) != 1:
                return None, [
                    self.err(
                        "offlineUserDataJobError",
                        "MISSING_USER_IDENTIFIER",
                        "The user identifier is missing valid data.",
                        here,
                    )
                ]
            key = keys[0]
            value = ident[key]
            if key in ("hashedEmail", "hashedPhoneNumber"):
                if not isinstance(value, str) or not HEX64.fullmatch(value):
                    return None, [
                        self.err(
                            "offlineUserDataJobError",
                            "INVALID_SHA256_FORMAT",
                            "The SHA256 encoded value is malformed.",
                            [*here, {"fieldName": key}],
                        )
                    ]
                out.add(f"{key}:{value}")
            elif key == "addressInfo":
                a = value if isinstance(value, dict) else {}
                for field in ("hashedFirstName", "hashedLastName"):
                    if not isinstance(a.get(field), str) or not HEX64.fullmatch(a[field]):
                        return None, [
                            self.err(
                                "offlineUserDataJobError",
                                "INVALID_SHA256_FORMAT",
                                "The SHA256 encoded value is malformed.",
                                [*here, {"fieldName": "address_info"}, {"fieldName": field}],
                            )
                        ]
                if not isinstance(a.get("countryCode"), str) or not re.fullmatch(r"[A-Z]{2}", a["countryCode"]):
                    return None, [
                        self.err(
                            "offlineUserDataJobError", "INVALID_COUNTRY_CODE", "The country code is invalid.", here
                        )
                    ]
                if not a.get("postalCode"):
                    return None, [
                        self.err(
                            "offlineUserDataJobError",
                            "MISSING_USER_IDENTIFIER",
                            "The user identifier is missing valid data.",
                            here,
                        )
                    ]
                out.add(
                    "address:"
                    + "|".join(a[f] for f in ("hashedFirstName", "hashedLastName", "countryCode", "postalCode"))
                )
            else:
                out.add(f"{key}:{value}")
        return frozenset(out), []

    def add_operations(self, version: str, job: dict, body: dict):
        if job["status"] != "PENDING":
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "offlineUserDataJobError",
                "JOB_ALREADY_STARTED",
                "Once the upload job is started, new operations cannot be added.",
            )
        ops = body.get("operations")
        if not isinstance(ops, list) or not ops:
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "fieldError",
                "REQUIRED",
                "The required field was not present.",
                [{"fieldName": "operations"}],
            )
        total = sum(
            len((op.get("create") or op.get("remove") or {}).get("userIdentifiers") or [])
            for op in ops
            if isinstance(op, dict)
        )
        if total > MAX_IDENTIFIERS:
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "offlineUserDataJobError",
                "TOO_MANY_USER_IDENTIFIERS",
                "Maximum number of user identifiers allowed per request is 100,000 and per operation is 20.",
            )
        kinds = {op for op, _user in job["operations"]}
        accepted, errors = [], []
        for i, op in enumerate(ops):
            at = [{"fieldName": "operations", "index": i}]
            present = [k for k in ("create", "remove", "removeAll") if isinstance(op, dict) and k in op]
            if len(present) != 1:
                errors.append(
                    self.err(
                        "requestError",
                        "BAD_RESOURCE_ID",
                        "Exactly one of create, remove or remove_all must be set.",
                        at,
                    )
                )
                continue
            kind = present[0]
            if kind == "removeAll":
                if i != 0:
                    errors.append(
                        self.err(
                            "offlineUserDataJobError",
                            "INVALID_OPERATION_ORDER",
                            "When a remove-all "
                            "operation is provided, it has to be the first operation of the operation "
                            "list.",
                            at,
                        )
                    )
                    continue
                accepted.append(("removeAll", None))
                continue
            if ({"create", "remove"} - {kind}) & (kinds | {k for k, _u in accepted}):
                errors.append(
                    self.err(
                        "offlineUserDataJobError",
                        "CONFLICTING_OPERATION",
                        "Mixing creation and removal of offline data in the same job is not allowed.",
                        at,
                    )
                )
                continue
            user, problems = self.check_user(op[kind], [*at, {"fieldName": kind}])
            if problems:
                errors.extend(problems)
            else:
                accepted.append((kind, user))
        if errors and not body.get("enablePartialFailure"):
            return self.error(version, 400, "INVALID_ARGUMENT", "Request contains an invalid argument.", errors)
        job["operations"].extend(accepted)
        if not errors:
            return JSONResponse({})
        return JSONResponse(
            {
                "partialFailureError": {
                    "code": 3,
                    "message": f"Multiple errors in 'details'. First error: {errors[0]['message']}",
                    "details": [self.failure(version, errors)],
                }
            }
        )

    def run(self, version: str, name: str, job: dict):
        if job["status"] != "PENDING":
            return self.one(
                version,
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                "offlineUserDataJobError",
                "JOB_ALREADY_STARTED",
                "The job has already been started.",
            )
        members = self.lists[job["list"]]
        for kind, user in job["operations"]:
            if kind == "removeAll":
                members.clear()
            elif kind == "create":
                members.add(user)
            else:
                for held in [m for m in members if m & user]:
                    members.discard(held)
        job["status"] = "SUCCESS"
        return JSONResponse({"name": f"customers/{self.customer_id}/operations/{name.rsplit('/', 1)[1]}"})
