"""The Meta and Google audience clients over real loopback HTTP against stand-ins written from the platforms'
published formats: batches within the limits, retries of throttling and outages, clear permanent failures."""

from __future__ import annotations

import pytest

from chorus.messaging.audiences import normalise as n
from chorus.messaging.audiences import settings as S
from chorus.messaging.audiences.google import GoogleCustomerMatch
from chorus.messaging.audiences.meta import MetaAudiences
from chorus.messaging.providers import ConfigError, PermanentError, TransientError
from tests.conftest import _ASGIThread
from tests.standins.google_ads import GoogleAdsStandIn
from tests.standins.meta_audiences import MetaAudiencesStandIn

AUD = "23851234567890123"


@pytest.fixture
def meta(monkeypatch):
    standin = MetaAudiencesStandIn("EAAB-ads-token", app_secret="app-secret-1")
    monkeypatch.setenv("CHORUS_META_ADS_TOKEN", "EAAB-ads-token")
    monkeypatch.setenv("CHORUS_META_APP_SECRET", "app-secret-1")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def google(monkeypatch):
    standin = GoogleAdsStandIn(login_customer_id="9876543210")
    for key, value in (("DEV", standin.developer_token), ("ID", standin.client[0]), ("SECRET", standin.client[1]),
                       ("REFRESH", next(iter(standin.refresh_tokens)))):  # fmt: skip
        monkeypatch.setenv(f"CHORUS_GADS_{key}", value)
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


def meta_client(meta, **over) -> MetaAudiences:
    conf = {"type": "meta", "access_token_env": "CHORUS_META_ADS_TOKEN", "app_secret_env": "CHORUS_META_APP_SECRET",
            "base_url": meta.base_url, "retry_base_seconds": 0.01, **over}  # fmt: skip
    return MetaAudiences(conf, "settings.audiences.providers[0]")


def google_conf(google, **over) -> dict:
    return {
        "type": "google", "customer_id": "123-456-7890", "login_customer_id": "987-654-3210",
        "developer_token_env": "CHORUS_GADS_DEV", "client_id_env": "CHORUS_GADS_ID",
        "client_secret_env": "CHORUS_GADS_SECRET", "refresh_token_env": "CHORUS_GADS_REFRESH",
        "base_url": google.base_url, "token_url": f"{google.base_url}/token",
        "retry_base_seconds": 0.01, **over,
    }  # fmt: skip


def email_rows(*names, phone=False):
    rows = []
    for i, name in enumerate(names):
        row = {"EMAIL": n.sha256_hex(f"{name}@example.com")}
        if phone:
            row["PHONE"] = n.sha256_hex(f"3161234567{i}")
        rows.append(row)
    return rows


class Done:
    def __init__(self):
        self.calls: list[tuple[list[int], dict]] = []

    def __call__(self, indexes, rejected):
        self.calls.append((list(indexes), dict(rejected)))


# -- Meta ---------------------------------------------------------------------------------------------------------
def test_meta_batches_with_one_session(meta):
    client = meta_client(meta, batch_size=2)
    rows = email_rows("a", "b", "c", "d", "e")
    rows[2]["PHONE"] = n.sha256_hex("31612345678")
    done = Done()
    up = client.apply(AUD, "add", rows, done, {})
    assert (up.received, up.invalid) == (5, 0)
    assert [d[0] for d in done.calls] == [[0, 1], [2, 3], [4]]
    sessions = [r["session"] for r in meta.requests]
    assert [s["batch_seq"] for s in sessions] == [1, 2, 3] and len({s["session_id"] for s in sessions}) == 1
    assert [s["last_batch_flag"] for s in sessions] == [False, False, True]
    assert {s["estimated_num_total"] for s in sessions} == {5}
    assert [r["payload"]["schema"] for r in meta.requests] == [["EMAIL"], ["EMAIL", "PHONE"], ["EMAIL"]]
    assert meta.requests[1]["payload"]["data"][1] == [rows[3]["EMAIL"], ""]  # a missing key is sent empty
    assert all(r["authorization"] == "Bearer EAAB-ads-token" and r["method"] == "POST" for r in meta.requests)
    assert meta.emails(AUD) == {r["EMAIL"] for r in rows}

    client.apply(AUD, "remove", rows[:2], Done(), {})
    assert meta.requests[-1]["method"] == "DELETE"
    assert meta.emails(AUD) == {r["EMAIL"] for r in rows[2:]}
    client.close()


def test_meta_reports_invalid_entries(meta):
    client = meta_client(meta)
    rows = [*email_rows("a"), {"EMAIL": "ana@example.com"}]  # not hashed: Meta counts it invalid
    up = client.apply(AUD, "add", rows, Done(), {})
    assert (up.received, up.invalid) == (2, 1)
    assert "SHA-256" in next(iter(up.samples.values()))


def test_meta_retries_throttling_and_outages(meta):
    client = meta_client(meta)
    meta.rate_limited, meta.down = 2, 1
    up = client.apply(AUD, "add", email_rows("a"), Done(), {})
    assert up.received == 1 and client.retrying.retries == 3 and len(meta.requests) == 4
    meta.down = 10
    with pytest.raises(TransientError, match=r"error 2: Service temporarily unavailable.*gave up after 5 attempts"):
        client.apply(AUD, "add", email_rows("b"), Done(), {})


def test_meta_permanent_failures_name_the_fix(meta):
    meta.tokens = {"another-token"}  # the configured token expired
    client = meta_client(meta)
    done = Done()
    with pytest.raises(PermanentError) as exc:
        client.apply(AUD, "add", email_rows("a"), done, {})
    assert (
        exc.value.code == "190" and "error 190/463" in exc.value.reason and "$CHORUS_META_ADS_TOKEN" in exc.value.reason
    )
    assert len(meta.requests) == 1 and not done.calls  # not retried, nothing recorded
    meta.tokens = {"EAAB-ads-token"}
    with pytest.raises(PermanentError, match=r"error 100/33: Unsupported post request.*does not exist"):
        client.apply("111", "add", email_rows("a"), Done(), {})


def test_meta_settings_name_the_field(monkeypatch):
    with pytest.raises(ConfigError, match=r"providers\[0\]\.access_token_env is required"):
        MetaAudiences({"type": "meta"}, "settings.audiences.providers[0]")
    with pytest.raises(ConfigError, match=r"providers\[0\]\.batch_size must be from 1 to 10000"):
        MetaAudiences({"type": "meta", "access_token_env": "CHORUS_X", "batch_size": 20000},
            "settings.audiences.providers[0]",
                      resolve_secrets=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"\.access_token_env names \$CHORUS_NOT_SET_ANYWHERE"):
        MetaAudiences({"type": "meta", "access_token_env": "CHORUS_NOT_SET_ANYWHERE"},
            "settings.audiences.providers[0]")
    with pytest.raises(ValueError, match=r"providers\[1\]\.name 'meta' is used twice"):
        S.validate(
            {"providers": [{"type": "meta", "access_token_env": "CHORUS_A"}, {"type": "meta",
                "access_token_env": "CHORUS_B"}]}
        )
    with pytest.raises(ValueError, match=r"providers\[0\]\.type 'tiktok' is not an audience provider"):
        S.validate({"providers": [{"type": "tiktok"}]})
    with pytest.raises(ValueError, match=r"providers\[0\]\.customer_id must be a Google Ads customer ID"):
        S.validate({"providers": [{"type": "google", "customer_id": "abc"}]})


# -- Google -------------------------------------------------------------------------------------------------------
def g_rows(*names, address=False):
    rows = []
    for i, name in enumerate(names):
        row = {
            "hashedEmail": n.sha256_hex(f"{name}@example.com"),
            "hashedPhoneNumber": n.sha256_hex(f"+316123456{i:02d}"),
        }
        if address:
            row.update(hashedFirstName=n.sha256_hex(name), hashedLastName=n.sha256_hex("jansen"), countryCode="NL",
                       postalCode="1011 AA")  # fmt: skip
        rows.append(row)
    return rows


def test_google_job_create_add_run(google):
    client = GoogleCustomerMatch(google_conf(google), "settings.audiences.providers[0]")
    dest = client.check_destination("555001", "destination")
    assert dest == "customers/1234567890/userLists/555001"
    rows = g_rows("ana", "bo", "cas", address=True)
    done = Done()
    consent = {"ad_user_data": "GRANTED", "ad_personalization": "GRANTED"}
    up = client.apply(dest, "add", rows, done, {"ad_consent": consent})
    assert (up.received, up.invalid, len(up.jobs)) == (3, 0, 1) and done.calls == [([0, 1, 2], {})]
    create, ops, run = google.requests
    assert create["path"] == "v26/customers/1234567890/offlineUserDataJobs:create"
    assert create["body"]["job"] == {
        "type": "CUSTOMER_MATCH_USER_LIST",
        "customerMatchUserListMetadata": {"userList": dest, "consent": {"adUserData": "GRANTED",
                                                                        "adPersonalization": "GRANTED"}},
    }  # fmt: skip
    assert ops["path"] == f"v26/{up.jobs[0]}:addOperations" and ops["body"]["enablePartialFailure"] is True
    assert ops["body"]["operations"][0]["create"]["userIdentifiers"][2]["addressInfo"]["countryCode"] == "NL"
    assert run["path"] == f"v26/{up.jobs[0]}:run"
    assert {r["headers"]["developer-token"] for r in google.requests} == {google.developer_token}
    assert {r["headers"]["login-customer-id"] for r in google.requests} == {"9876543210"}
    assert google.identifiers("555001", "hashedEmail") == {r["hashedEmail"] for r in rows}
    assert google.token_requests == 1  # the access token is reused

    # removals are a job of their own: Google refuses a job that mixes creates and removes
    client.apply(dest, "remove", rows[:2], Done(), {})
    assert google.identifiers("555001", "hashedEmail") == {rows[2]["hashedEmail"]}
    assert len(google.jobs) == 2


def test_google_batches_by_identifier_count_and_keeps_good_operations(google):
    client = GoogleCustomerMatch(google_conf(google, batch_size=5), "p")
    rows = g_rows("a", "b", "c", "d")  # 2 identifiers each: 2 rows a request
    rows[1]["hashedEmail"] = "Ana@Example.com"  # not a SHA-256: Google rejects that operation only
    done = Done()
    up = client.apply(client.check_destination(555001, "d"), "add", rows, done, {})
    batches = [r["body"]["operations"] for r in google.requests if r["path"].endswith(":addOperations")]
    assert [len(b) for b in batches] == [2, 2]
    assert up.invalid == 1 and done.calls[0][0] == [0, 2, 3]
    assert "offlineUserDataJobError.INVALID_SHA256_FORMAT" in done.calls[0][1][1]
    assert google.identifiers("555001", "hashedEmail") == {rows[i]["hashedEmail"] for i in (0, 2, 3)}


def test_google_renews_an_expired_access_token_and_retries_quota(google):
    client = GoogleCustomerMatch(google_conf(google), "p")
    dest = client.check_destination("555001", "d")
    client.apply(dest, "add", g_rows("a"), Done(), {})
    google.expire_tokens()
    google.rate_limited = 2
    client.apply(dest, "add", g_rows("b"), Done(), {})
    assert google.token_requests == 2 and client.retrying.retries == 2
    assert len(google.identifiers("555001", "hashedEmail")) == 2


def test_google_permanent_failures_name_the_fix(google):
    google.refresh_tokens = {"1//another"}  # the refresh token was revoked
    client = GoogleCustomerMatch(google_conf(google), "p")
    with pytest.raises(PermanentError) as exc:
        client.apply(client.check_destination("555001", "d"), "add", g_rows("a"), Done(), {})
    assert exc.value.code == "invalid_grant" and "Token has been expired or revoked" in exc.value.reason
    assert "$CHORUS_GADS_REFRESH" in exc.value.reason and google.token_requests == 1

    google.refresh_tokens = {"1//refresh-token-1"}
    client = GoogleCustomerMatch(google_conf(google, login_customer_id=None), "p")  # a manager's client account
    with pytest.raises(PermanentError, match="USER_PERMISSION_DENIED.*set login_customer_id"):
        client.apply(client.check_destination("555001", "d"), "add", g_rows("a"), Done(), {})
    client = GoogleCustomerMatch(google_conf(google), "p")
    with pytest.raises(PermanentError, match="INVALID_USER_LIST_ID"):
        client.apply(client.check_destination("999", "d"), "add", g_rows("a"), Done(), {})
    with pytest.raises(ConfigError, match="belongs to customer 1111111111"):
        client.check_destination("customers/1111111111/userLists/5", "destination")
