"""Meta Custom Audiences through the Marketing API (Graph API).

``POST {base_url}/{version}/{custom_audience_id}/users`` adds people and ``DELETE`` on the same edge removes
them. Both take ``payload`` = ``{"schema": ["EMAIL", "PHONE", ...], "data": [[<sha256>, <sha256>, ...], ...]}``
(the multi-key form; every key but ``EXTERN_ID``/``MADID`` hashed) and ``session`` = ``{"session_id",
"batch_seq", "last_batch_flag", "estimated_num_total"}`` to tie the batches of one upload together; at most
10,000 rows per request. The access token (a system user token with ``ads_management`` on the ad account that
owns the audience) goes in ``Authorization: Bearer``; with ``app_secret_env``, ``appsecret_proof`` (HMAC-SHA256
of the token keyed with the app secret) is sent too. The answer is ``{"audience_id", "session_id",
"num_received", "num_invalid_entries", "invalid_entry_samples"}``; errors are Graph's
``{"error": {"message", "type", "code", "error_subcode", "error_user_title", "error_user_msg", "fbtrace_id"}}``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as pysecrets

import orjson

from chorus.messaging.audiences import rows as R
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
from chorus.messaging.providers.meta import GRAPH_ID, GRAPH_VERSION, graph_int

MAX_ROWS = 10_000  # per request, Meta's limit
# Graph/Marketing API codes (https://developers.facebook.com/docs/marketing-api/error-reference)
RATE_LIMITED = {4, 17, 32, 613, 80003}  # app, user, page, ad-account and custom-audience (BUC) request limits
TEMPORARY = {1, 2}  # unknown / temporary service error
TOKEN = 190  # access token invalid or expired
TERMS = 1870034  # (code 200) the Custom Audience terms are not accepted for the ad account
KNOWN = {"type", "name", "access_token_env", "app_secret_env", "base_url", "api_version", "timeout", "batch_size",
         "max_attempts", "retry_base_seconds"}  # fmt: skip


class MetaAudiences(HTTPClient):
    type = "meta"

    def __init__(self, conf: dict, where: str, resolve_secrets: bool = True, *, workspace: str | None = None):
        check_known(conf, KNOWN, where, "Meta audiences")
        self.name = str(conf.get("name") or "meta")
        self.token_env = conf.get("access_token_env")
        self.access_token = secret(conf, "access_token", where, resolve_secrets, workspace=workspace)
        if self.access_token is None:
            raise ConfigError(f"{where}.access_token_env is required (the variable holding a system user token)")
        self.app_secret = secret(conf, "app_secret", where, resolve_secrets, workspace=workspace)
        self.base_url = setting_url(conf, "base_url", where, "https://graph.facebook.com")
        self.version = conf.get("api_version", "v25.0")
        if not isinstance(self.version, str) or not GRAPH_VERSION.fullmatch(self.version):
            raise ConfigError(f"{where}.api_version must be a Graph API version such as v25.0")
        self.timeout = setting_number(conf, "timeout", where, 60, 1, 600)
        self.batch_size = setting_number(conf, "batch_size", where, MAX_ROWS, 1, MAX_ROWS, whole=True)
        self.retrying = Retrying(conf, where)

    def _client_options(self) -> dict:
        return {"base_url": self.base_url, "timeout": self.timeout,
                "headers": {"Authorization": f"Bearer {self.access_token}"}}  # fmt: skip

    def check_destination(self, destination: object, where: str) -> str:
        if isinstance(destination, int) and not isinstance(destination, bool):
            destination = str(destination)
        if not isinstance(destination, str) or not GRAPH_ID.fullmatch(destination.strip()):
            raise ConfigError(f"{where} must be the Meta custom audience ID (digits)")
        return destination.strip()

    # -- errors -------------------------------------------------------------------------------------------------
    def classify(self, status: int, body: object, text: str, headers) -> PermanentError | TransientError:
        err = body.get("error") if isinstance(body, dict) else None
        err = err if isinstance(err, dict) else {}
        code, sub = graph_int(err.get("code")), graph_int(err.get("error_subcode"))
        message = str(err.get("message") or text[:300] or f"HTTP {status}")
        for extra in (err.get("error_user_title"), err.get("error_user_msg")):
            if extra and str(extra) not in message:
                message += f" — {str(extra)[:300]}"
        label = f"Meta {status}" + (f" error {code}" + (f"/{sub}" if sub else "") if code is not None else "")
        reason = f"{label}: {message[:600]}"
        code_s = str(code if code is not None else status)
        if code == TOKEN:
            fix = f"put a valid system user token in ${self.token_env}"
            return PermanentError(f"{reason}; the access token is invalid or expired: {fix}", code=code_s)
        if sub == TERMS:
            return PermanentError(f"{reason}; accept the Custom Audience terms for the ad account", code=code_s)
        if code == 100 and sub == 33:
            return PermanentError(
                f"{reason}; the custom audience does not exist or the token's system user cannot manage the ad "
                "account that owns it",
                code=code_s,
            )
        busy = code in RATE_LIMITED or code in TEMPORARY or 80000 <= (code or 0) <= 80014  # 800xx: BUC limits
        if status == 429 or status >= 500 or busy:
            return transient(reason, code_s, retry_after(headers))
        return PermanentError(reason, code=code_s)

    # -- requests -----------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, form: dict) -> dict:
        if self.app_secret:
            form = {**form, "appsecret_proof": hmac.new(self.app_secret.encode(), self.access_token.encode(),
                                                        hashlib.sha256).hexdigest()}  # fmt: skip
        try:
            r = self._http().request(method, f"/{self.version}/{path}", data=form)
        except HTTPError as exc:
            raise http_failure(exc, "Meta") from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code == 200 and isinstance(data, dict) and "error" not in data:
            return data
        raise self.classify(r.status_code, data, r.text, r.headers)

    def apply(self, destination: str, op: str, rows: list[dict], done: Done, options: dict) -> Upload:
        """Add (``op="add"``, POST) or remove (``op="remove"``, DELETE) rows in batches of ``batch_size``."""
        out = Upload()
        if not rows:
            return out
        method = "POST" if op == "add" else "DELETE"
        session_id = pysecrets.randbits(62)
        batches = [list(range(i, min(i + self.batch_size, len(rows)))) for i in range(0, len(rows), self.batch_size)]
        for seq, indexes in enumerate(batches, start=1):
            part = [rows[i] for i in indexes]
            schema = [k for k in R.META_SCHEMA if any(k in r for r in part)]
            payload = {"schema": schema, "data": [[r.get(k, "") for k in schema] for r in part]}
            session = {"session_id": session_id, "batch_seq": seq, "last_batch_flag": seq == len(batches),
                       "estimated_num_total": len(rows)}  # fmt: skip
            form = {"payload": orjson.dumps(payload).decode(), "session": orjson.dumps(session).decode()}
            data = self.retrying(lambda f=form: self._request(method, f"{destination}/users", f), f"{op} batch {seq}")
            got = Upload(
                received=graph_int(data.get("num_received")) or 0,
                invalid=graph_int(data.get("num_invalid_entries")) or 0,
            )
            samples = data.get("invalid_entry_samples")
            if isinstance(samples, dict):
                got.samples = {str(k)[:100]: str(v)[:200] for k, v in list(samples.items())[:20]}
            out.merge(got)
            done(indexes, {})  # Meta does not say which rows were invalid, only how many
        return out
