"""Google Ads Customer Match through the Google Ads API (REST), ``OfflineUserDataJobService``.

One change of a Customer Match user list is one *offline user data job*:

1. ``POST {base_url}/{version}/customers/{customer_id}/offlineUserDataJobs:create`` with ``{"job": {"type":
   "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": {"userList": "customers/{id}/userLists/{id}",
   "consent": {"adUserData", "adPersonalization"}}}}`` answers ``{"resourceName"}``;
2. ``POST .../offlineUserDataJobs/{id}:addOperations`` with ``{"operations": [{"create": UserData} |
   {"remove": UserData}], "enablePartialFailure": true}``, at most 100,000 identifiers per request and 20 per
   ``UserData``; bad operations come back in ``partialFailureError`` (a ``GoogleAdsFailure`` whose errors point
   at ``operations[i]``) while the others are kept;
3. ``POST .../offlineUserDataJobs/{id}:run`` starts it (Google processes it within hours).

Google refuses a job that mixes ``create`` and ``remove`` (``CONFLICTING_OPERATION``), so removals and additions
are two jobs. Every call carries ``Authorization: Bearer <access token>``, ``developer-token`` and, when the
account is reached through a manager account, ``login-customer-id``. The access token comes from the OAuth 2.0
refresh token (``POST {token_url}`` with ``grant_type=refresh_token``) and is renewed when it expires or Google
answers ``OAUTH_TOKEN_EXPIRED``. Errors are ``{"error": {"code", "message", "status", "details": [{"@type":
"type.googleapis.com/google.ads.googleads.<version>.errors.GoogleAdsFailure", "errors": [{"errorCode": {...},
"message", "location"}], "requestId"}]}}``.
"""

from __future__ import annotations

import re
import threading
import time

from chorus.messaging.audiences.base import (
    Done,
    Retrying,
    Upload,
    check_known,
    retry_after,
    setting_number,
    setting_url,
    transient,
)
from chorus.messaging.providers import ConfigError, HTTPClient, PermanentError, TransientError, http_failure, secret
from chorus.messaging.providers.http import HTTPError

MAX_IDENTIFIERS = 100_000  # per addOperations request (and 20 per UserData), Google's limits
RETRY_STATUS = {"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED", "ABORTED"}
KNOWN = {"type", "name", "customer_id", "login_customer_id", "developer_token_env", "client_id_env",
         "client_secret_env", "refresh_token_env", "base_url", "token_url", "api_version", "timeout", "batch_size",
         "max_attempts", "retry_base_seconds"}  # fmt: skip
CONSENT_VALUES = ("GRANTED", "DENIED", "UNSPECIFIED")
_VERSION = re.compile(r"v\d+")
_LIST = re.compile(r"customers/(\d+)/userLists/(\d+)")


def _customer_id(conf: dict, key: str, where: str, required: bool) -> str | None:
    value = conf.get(key)
    if value is None and not required:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    digits = value.replace("-", "") if isinstance(value, str) else ""
    if not digits.isdigit() or not 6 <= len(digits) <= 12:
        raise ConfigError(f"{where}.{key} must be a Google Ads customer ID such as 123-456-7890")
    return digits


def user_data(row: dict) -> dict:
    """A row as Google's ``UserData``: one ``UserIdentifier`` per identifier (the field is a oneof)."""
    ids: list[dict] = []
    if row.get("hashedEmail"):
        ids.append({"hashedEmail": row["hashedEmail"]})
    if row.get("hashedPhoneNumber"):
        ids.append({"hashedPhoneNumber": row["hashedPhoneNumber"]})
    if row.get("hashedFirstName"):
        ids.append({"addressInfo": {k: row[k] for k in ("hashedFirstName", "hashedLastName", "countryCode",
                                                         "postalCode")}})  # fmt: skip
    return {"userIdentifiers": ids}


def failures(status: dict | None) -> list[dict]:
    """The ``GoogleAdsError`` list inside a ``google.rpc.Status`` (an error body or a ``partialFailureError``)."""
    out: list[dict] = []
    for detail in (status or {}).get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("GoogleAdsFailure"):
            out.extend(e for e in detail.get("errors") or [] if isinstance(e, dict))
    return out


def error_code(err: dict) -> str:
    code = err.get("errorCode") or {}
    return ".".join(f"{k}.{v}" for k, v in code.items()) if isinstance(code, dict) and code else "unknown"


def retry_delay(status: dict) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` detail (``"retryDelay": "30s"``), if Google sent one."""
    for detail in status.get("details") or []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            try:
                return max(0.0, float(str(detail.get("retryDelay", "")).rstrip("s")))
            except ValueError:
                return None
    return None


def location(err: dict) -> str:
    parts = []
    for el in (err.get("location") or {}).get("fieldPathElements") or []:
        name = str(el.get("fieldName", ""))
        parts.append(f"{name}[{el['index']}]" if "index" in el else name)
    return ".".join(parts)


class GoogleCustomerMatch(HTTPClient):
    type = "google"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        check_known(conf, KNOWN, where, "Google Customer Match")
        self.name = str(conf.get("name") or "google")
        self.customer_id = _customer_id(conf, "customer_id", where, True)
        self.login_customer_id = _customer_id(conf, "login_customer_id", where, False)
        self.envs = {k: conf.get(f"{k}_env") for k in ("developer_token", "client_id", "client_secret",
                                                          "refresh_token")}  # fmt: skip
        values = {}
        for key, what in (("developer_token", "the Google Ads developer token"), ("client_id", "the OAuth client ID"),
                          ("client_secret", "the OAuth client secret"),
                          ("refresh_token", "the OAuth refresh token")):  # fmt: skip
            values[key] = secret(conf, key, where, resolve_secrets, workspace=workspace)
            if values[key] is None:
                raise ConfigError(f"{where}.{key}_env is required (the variable holding {what})")
        self.developer_token = values["developer_token"]
        self.client_id, self.client_secret = values["client_id"], values["client_secret"]
        self.refresh_token = values["refresh_token"]
        self.base_url = setting_url(conf, "base_url", where, "https://googleads.googleapis.com")
        self.token_url = setting_url(conf, "token_url", where, "https://oauth2.googleapis.com/token")
        self.version = conf.get("api_version", "v26")
        if not isinstance(self.version, str) or not _VERSION.fullmatch(self.version):
            raise ConfigError(f"{where}.api_version must be a Google Ads API version such as v26")
        self.timeout = setting_number(conf, "timeout", where, 60, 1, 600)
        self.batch_size = setting_number(conf, "batch_size", where, MAX_IDENTIFIERS, 1, MAX_IDENTIFIERS, whole=True)
        self.retrying = Retrying(conf, where)
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def _client_options(self) -> dict:
        return {"base_url": self.base_url, "timeout": self.timeout}

    def check_destination(self, destination: object, where: str) -> str:
        if isinstance(destination, int) and not isinstance(destination, bool):
            destination = str(destination)
        text = destination.strip() if isinstance(destination, str) else ""
        if text.isdigit():
            return f"customers/{self.customer_id}/userLists/{text}"
        m = _LIST.fullmatch(text)
        if not m:
            raise ConfigError(f"{where} must be the Customer Match user list ID (digits) or its resource name")
        if m.group(1) != self.customer_id:
            raise ConfigError(f"{where} belongs to customer {m.group(1)}, not {self.customer_id} of the provider")
        return text

    # -- OAuth --------------------------------------------------------------------------------------------------
    def _token(self) -> str:
        with self._lock:
            if self._access and time.monotonic() < self._expires:
                return self._access
            form = {"grant_type": "refresh_token", "client_id": self.client_id, "client_secret": self.client_secret,
                    "refresh_token": self.refresh_token}  # fmt: skip
            try:
                r = self._http().post(self.token_url, data=form)
            except HTTPError as exc:
                raise http_failure(exc, "Google OAuth") from None
            try:
                data = r.json()
            except ValueError:
                data = {}
            if r.status_code == 200 and isinstance(data, dict) and data.get("access_token"):
                self._access = str(data["access_token"])
                expires_in = data.get("expires_in") if isinstance(data.get("expires_in"), int) else 3600
                self._expires = time.monotonic() + max(30, expires_in - 60)
                return self._access
            err = data.get("error") if isinstance(data, dict) else None
            desc = data.get("error_description") if isinstance(data, dict) else None
            reason = f"Google OAuth {r.status_code}: {err or r.text[:200]}" + (f" ({desc})" if desc else "")
            if r.status_code == 429 or r.status_code >= 500:
                raise transient(reason, "oauth", retry_after(r.headers))
            if err == "invalid_grant":
                raise PermanentError(
                    f"{reason}; the refresh token expired or was revoked: create a new one and put it in "
                    f"${self.envs['refresh_token']}",
                    code="invalid_grant",
                )
            if err in ("invalid_client", "unauthorized_client"):
                raise PermanentError(
                    f"{reason}; check the OAuth client in ${self.envs['client_id']} and ${self.envs['client_secret']}",
                    code=str(err),
                )
            raise PermanentError(reason, code=str(err or r.status_code))

    # -- errors -------------------------------------------------------------------------------------------------
    def classify(self, status: int, body: object, text: str, headers) -> PermanentError | TransientError:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        state = str(err.get("status") or "")
        errors = failures(err)
        first = errors[0] if errors else {}
        request_id = next((d.get("requestId") for d in err.get("details") or [] if isinstance(d, dict)
                           and d.get("requestId")), None)  # fmt: skip
        detail = f"{error_code(first)}: {first.get('message', '')}" if first else str(err.get("message") or text[:300])
        where = location(first) if first else ""
        reason = f"Google Ads {status} {state}: {detail[:500]}".rstrip() + (f" (at {where})" if where else "")
        if request_id:
            reason += f" [request {request_id}]"
        code = error_code(first) if first else (state or str(status))
        codes = {error_code(e) for e in errors}
        if status == 429 or status >= 500 or state in RETRY_STATUS or any(c.startswith("quotaError") for c in codes):
            return transient(reason, code, retry_after(headers) or retry_delay(err))
        if any("DEVELOPER_TOKEN" in c for c in codes):
            reason += f"; check the developer token in ${self.envs['developer_token']}"
        elif "authorizationError.USER_PERMISSION_DENIED" in codes:
            reason += "; if the account is managed through a manager account, set login_customer_id"
        elif "offlineUserDataJobError.CUSTOMER_NOT_ACCEPTED_CUSTOMER_DATA_TERMS" in codes:
            reason += "; accept the customer data terms in the Google Ads account"
        return PermanentError(reason, code=code)

    def _call(self, path: str, body: dict) -> dict:
        for attempt in (1, 2):
            headers = {"Authorization": f"Bearer {self._token()}", "developer-token": self.developer_token}
            if self.login_customer_id:
                headers["login-customer-id"] = self.login_customer_id
            try:
                r = self._http().post(f"/{self.version}/{path}", json=body, headers=headers)
            except HTTPError as exc:
                raise http_failure(exc, "Google Ads") from None
            try:
                data = r.json()
            except ValueError:
                data = None
            if r.status_code == 200 and isinstance(data, dict):
                return data
            if r.status_code == 401 and attempt == 1:  # expired or revoked access token (OAUTH_TOKEN_EXPIRED...)
                with self._lock:
                    self._access = None  # renew the access token once, then try again
                continue
            raise self.classify(r.status_code, data, r.text, r.headers)
        raise AssertionError("unreachable")

    # -- upload -------------------------------------------------------------------------------------------------
    def apply(self, destination: str, op: str, rows: list[dict], done: Done, options: dict) -> Upload:
        """One job for the rows: create, add operations in batches within the identifier limit, run."""
        out = Upload()
        if not rows:
            return out
        meta: dict = {"userList": destination}
        consent = options.get("ad_consent")
        if consent:
            meta["consent"] = {
                "adUserData": consent["ad_user_data"],
                "adPersonalization": consent["ad_personalization"],
            }
        job = {"type": "CUSTOMER_MATCH_USER_LIST", "customerMatchUserListMetadata": meta}
        created = self.retrying(
            lambda: self._call(f"customers/{self.customer_id}/offlineUserDataJobs:create", {"job": job}), "job create"
        )
        name = created.get("resourceName")
        if not isinstance(name, str) or not name.startswith(f"customers/{self.customer_id}/offlineUserDataJobs/"):
            raise PermanentError(f"Google Ads created a job without a resource name: {str(created)[:300]}")
        key = "create" if op == "add" else "remove"
        rejected: dict[int, str] = {}
        batch: list[int] = []
        count = 0

        def send(indexes: list[int]) -> None:
            body = {"operations": [{key: user_data(rows[i])} for i in indexes], "enablePartialFailure": True}
            data = self.retrying(lambda: self._call(f"{name}:addOperations", body), f"{op} operations")
            for err in failures(data.get("partialFailureError")):
                elements = (err.get("location") or {}).get("fieldPathElements") or [{}]
                if elements[0].get("fieldName") == "operations" and isinstance(elements[0].get("index"), int):
                    i = indexes[elements[0]["index"]]
                    rejected.setdefault(i, f"{error_code(err)}: {err.get('message', '')}"[:300])

        for i, row in enumerate(rows):
            n = len(user_data(row)["userIdentifiers"])
            if batch and count + n > self.batch_size:
                send(batch)
                batch, count = [], 0
            batch.append(i)
            count += n
        if batch:
            send(batch)
        self.retrying(lambda: self._call(f"{name}:run", {}), "job run")
        done([i for i in range(len(rows)) if i not in rejected], rejected)
        out.received, out.invalid, out.jobs = len(rows), len(rejected), [name]
        out.samples = {f"row {i}": why for i, why in list(rejected.items())[:20]}
        return out
