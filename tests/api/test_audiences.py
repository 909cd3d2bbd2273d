"""Social audiences through the admin API over real HTTP, uploading to stand-ins of Meta's Marketing API and the
Google Ads API on loopback: sync modes, consent, erasure, provider failures, customer-file exports, and the CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest

from chorus.messaging.audiences import normalise as n
from tests.api.test_admin import _scan_for
from tests.conftest import _ASGIThread, wait_until
from tests.standins.google_ads import GoogleAdsStandIn
from tests.standins.meta_audiences import MetaAudiencesStandIn

AUD = "23851234567890123"
PEOPLE = [
    {"type": "identify", "userId": "u-ana", "traits": {"email": "Ana.Bakker@GMail.com", "phone": "06 12345678",
     "firstName": "Ana", "lastName": "Bakker", "city": "Den Haag", "zip": "2511 AB", "country": "NL"}},
    {"type": "identify", "userId": "u-bo", "traits": {"email": "bo@example.com", "first_name": "Bo"}},
    {"type": "identify", "userId": "u-cas", "traits": {"phone": "+31 6 87654321"}},
    {"type": "identify", "anonymousId": "anon-dee", "traits": {"first_name": "Dee"}},
    {"type": "identify", "userId": "u-eve", "traits": {"email": "eve@example.com"}},
    {"type": "track", "userId": "u-eve", "event": "Consent Updated",
     "properties": {"channel": "ads", "status": "denied"}},
]  # fmt: skip


def bearer(ws):
    return {"Authorization": f"Bearer {ws['api_key']}"}


@pytest.fixture
def meta(monkeypatch):
    standin = MetaAudiencesStandIn("EAAB-ads-token")
    monkeypatch.setenv("CHORUS_META_ADS_TOKEN", "EAAB-ads-token")
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def google(monkeypatch):
    standin = GoogleAdsStandIn()
    for key, value in (("DEV", standin.developer_token), ("ID", standin.client[0]), ("SECRET", standin.client[1]),
                       ("REFRESH", next(iter(standin.refresh_tokens)))):  # fmt: skip
        monkeypatch.setenv(f"CHORUS_GADS_{key}", value)
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def shop(http, server, workspace, meta, google):
    """Providers configured, five people known: the api key headers and their profile ids by name."""
    h = bearer(workspace)
    providers = [
        {"type": "meta", "name": "meta", "access_token_env": "CHORUS_META_ADS_TOKEN", "base_url": meta.base_url,
         "retry_base_seconds": 0.01},
        {"type": "google", "name": "google", "customer_id": "123-456-7890", "developer_token_env": "CHORUS_GADS_DEV",
         "client_id_env": "CHORUS_GADS_ID", "client_secret_env": "CHORUS_GADS_SECRET",
         "refresh_token_env": "CHORUS_GADS_REFRESH", "base_url": google.base_url,
         "token_url": f"{google.base_url}/token", "retry_base_seconds": 0.01},
    ]  # fmt: skip
    r = http.patch("/api/workspace/settings", json={"default_region": "NL", "audiences": {"providers": providers}},
                   headers=h)  # fmt: skip
    assert r.status_code == 200, r.text
    r = http.post("/v1/batch", json={"batch": PEOPLE}, auth=(workspace["server_write_key"], ""))
    assert r.status_code == 200, r.text
    server.settle()
    ids = {}
    for name, params in (("ana", {"user_id": "u-ana"}), ("bo", {"user_id": "u-bo"}), ("cas", {"user_id": "u-cas"}),
                         ("dee", {"anonymous_id": "anon-dee"}), ("eve", {"user_id": "u-eve"})):  # fmt: skip
        ids[name] = http.get("/api/profiles", params=params, headers=h).json()["id"]
    return {"h": h, "ids": ids}


def create(http, shop, **body):
    r = http.post("/api/audiences", json=body, headers=shop["h"])
    assert r.status_code == 201, r.text
    return r.json()


def sync(http, shop, name, profiles, mode="replace", status=200):
    r = http.post(f"/api/audiences/{name}/sync", json={"profiles": profiles, "mode": mode}, headers=shop["h"])
    assert r.status_code == status, r.text
    return r.json()


ANA_EMAIL = n.sha256_hex("ana.bakker@gmail.com")  # Meta: trimmed and lower case (the dot stays)
BO_EMAIL = n.sha256_hex("bo@example.com")
CAS_PHONE = n.sha256_hex("31687654321")


def test_definitions_are_validated(http, shop):
    h = shop["h"]
    bad = [
        ({"name": "x", "provider": "tiktok", "destination": "1"}, "provider"),
        ({"name": "x", "provider": "meta", "destination": "act_12"}, "destination"),
        ({"name": "x", "provider": "google", "destination": "555001", "identifiers": ["email", "gender"]},
         "identifiers[1]"),
        ({"name": "x", "provider": "meta", "destination": AUD, "consent": {"mode": "sometimes"}}, "consent.mode"),
        ({"name": "Bad Name", "provider": "meta", "destination": AUD}, "name"),
        ({"name": "x", "provider": "meta", "destination": AUD, "colour": "red"}, "colour"),
        ({"name": "x", "provider": "meta", "destination": AUD, "ad_consent": {"ad_user_data": "GRANTED"}},
         "ad_consent"),
    ]  # fmt: skip
    for body, field in bad:
        r = http.post("/api/audiences", json=body, headers=h)
        assert r.status_code == 400 and r.json()["field"] == field, (body, r.text)
    made = create(http, shop, name="vip", provider="meta", destination=AUD)
    assert made["identifiers"] == ["email", "phone"] and made["consent"] == {"topic": "marketing", "mode": "opt_out"}
    assert http.post("/api/audiences", json={"name": "vip", "provider": "file"}, headers=h).status_code == 409
    assert [a["name"] for a in http.get("/api/audiences", headers=h).json()["audiences"]] == ["vip"]
    assert http.get("/api/audiences/nope", headers=h).status_code == 404
    r = http.patch("/api/workspace/settings", json={"audiences": {"providers": [{"type": "meta"}]}}, headers=h)
    assert r.status_code == 400 and "settings.audiences.providers[0].access_token_env" in r.json()["message"]


def test_sync_add_replace_remove(http, shop, meta):
    ids = shop["ids"]
    create(http, shop, name="vip", provider="meta", destination=AUD, identifiers=["email", "phone", "name"])
    got = sync(http, shop, "vip", [ids["ana"], {"email": "BO@example.com"}, {"email": "nobody@example.com"},
                                   {"phone": "12"}, ids["dee"], ids["eve"], "p_gone"], mode="add")  # fmt: skip
    assert (got["added"], got["removed"], got["members"]) == (2, 0, 2)
    skipped = {i["at"]: i["reason"] for i in got["skipped"]["items"]}
    assert skipped == {"profiles[2]": "unknown_profile", "profiles[3]": "invalid_input", "profiles[4]": "no_identifier",
                       "profiles[5]": "consent_denied", "profiles[6]": "unknown_profile"}  # fmt: skip
    assert got["skipped"]["by_reason"] == {"unknown_profile": 2, "invalid_input": 1, "no_identifier": 1,
                                           "consent_denied": 1}  # fmt: skip
    assert meta.emails(AUD) == {ANA_EMAIL, BO_EMAIL}
    (req,) = meta.requests
    assert req["method"] == "POST" and req["payload"]["schema"] == ["EMAIL", "PHONE", "FN", "LN"]
    assert meta.keys(AUD, "PHONE") == {n.sha256_hex("31612345678")}  # 06 12345678 with the default region NL

    got = sync(http, shop, "vip", [ids["bo"], ids["cas"]])  # replace
    assert (got["added"], got["removed"], got["unchanged"], got["members"]) == (1, 1, 1, 2)
    assert got["removed_by_reason"] == {"left": 1}
    assert meta.emails(AUD) == {BO_EMAIL} and meta.keys(AUD, "PHONE") == {CAS_PHONE}
    assert [r["method"] for r in meta.requests[1:]] == ["DELETE", "POST"]  # removals first

    before = len(meta.requests)
    got = sync(http, shop, "vip", [ids["cas"], ids["bo"]])  # nothing changed: nothing is sent
    assert (got["added"], got["removed"], got["unchanged"]) == (0, 0, 2) and len(meta.requests) == before

    got = sync(http, shop, "vip", [{"phone": "+31687654321"}], mode="remove")
    assert (got["added"], got["removed"], got["members"]) == (0, 1, 1)
    assert meta.keys(AUD, "PHONE") == set() and meta.emails(AUD) == {BO_EMAIL}
    view = http.get("/api/audiences/vip", headers=shop["h"]).json()
    assert view["members"] == 1 and view["last_sync"]["ok"] is True and view["syncing"] is False

    r = http.post("/api/audiences/vip/sync", json={"profiles": [], "mode": "merge"}, headers=shop["h"])
    assert r.status_code == 400 and r.json()["field"] == "mode"
    r = http.post("/api/audiences/vip/sync", json={"profiles": "everyone"}, headers=shop["h"])
    assert r.status_code == 400 and r.json()["field"] == "profiles"


def test_a_person_who_opts_out_is_removed_at_the_next_sync(http, server, shop, meta, workspace):
    ids = shop["ids"]
    create(http, shop, name="vip", provider="meta", destination=AUD)
    sync(http, shop, "vip", [ids["ana"], ids["bo"]])
    assert meta.emails(AUD) == {ANA_EMAIL, BO_EMAIL}
    optout = {"type": "track", "userId": "u-ana", "event": "Consent Updated",
              "properties": {"channel": "ads", "topic": "marketing", "status": "denied"}}  # fmt: skip
    assert http.post("/v1/track", json=optout, auth=(workspace["server_write_key"], "")).status_code == 200
    server.settle()
    got = sync(http, shop, "vip", [], mode="add")  # no new members: the audience is re-checked
    assert got["removed"] == 1 and got["removed_by_reason"] == {"consent_denied": 1}
    assert meta.emails(AUD) == {BO_EMAIL}
    got = sync(http, shop, "vip", [ids["ana"], ids["bo"]])  # and she is not uploaded again
    assert got["added"] == 0 and got["skipped"]["by_reason"] == {"consent_denied": 1}


def test_erasure_removes_the_person_everywhere(http, server, shop, meta, google):
    ids = shop["ids"]
    create(http, shop, name="vip", provider="meta", destination=AUD, identifiers=["email", "phone", "name"])
    create(http, shop, name="gvip", provider="google", destination="555001")
    sync(http, shop, "vip", [ids["ana"], ids["bo"]])
    sync(http, shop, "gvip", [ids["ana"], ids["bo"]])
    exported = http.get(f"/api/profiles/{ids['ana']}/export", headers=shop["h"]).json()
    assert [a["audience"] for a in exported["audiences"]] == ["gvip", "vip"]
    assert exported["audiences"][1]["hashed_keys"]["EMAIL"] == ANA_EMAIL

    r = http.delete(f"/api/profiles/{ids['ana']}", headers=shop["h"])
    assert r.status_code == 200, r.text
    assert r.json()["deleted"]["audience_members"] == 2 and r.json()["deleted"]["audience_removals_queued"] == 2
    needles = ["u-ana", "ana.bakker@gmail.com", "+31612345678", ids["ana"]]
    assert _scan_for(server.engine, needles) == []  # only hashes are left, queued for removal at the platforms
    assert http.get("/api/audiences/vip", headers=shop["h"]).json()["pending_removals"] == 1

    got = sync(http, shop, "vip", [], mode="add")
    assert got["removed"] == 1 and got["removed_by_reason"] == {"erased": 1} and got["members"] == 1
    assert meta.emails(AUD) == {BO_EMAIL}
    got = sync(http, shop, "gvip", [], mode="add")
    assert got["removed"] == 1 and google.identifiers("555001", "hashedEmail") == {BO_EMAIL}
    assert http.get("/api/audiences/vip", headers=shop["h"]).json()["pending_removals"] == 0


def test_provider_failures(http, shop, meta):
    ids = shop["ids"]
    create(http, shop, name="vip", provider="meta", destination=AUD)
    meta.rate_limited = 2  # throttled twice (code 80003): retried with backoff
    got = sync(http, shop, "vip", [ids["ana"]])
    assert got["added"] == 1 and got["provider"]["retries"] == 2 and got["provider"]["received"] == 1

    meta.tokens = {"a-newer-token"}  # the configured token expired: a clear failure, nothing half-recorded
    r = http.post("/api/audiences/vip/sync", json={"profiles": [ids["ana"], ids["bo"]]}, headers=shop["h"])
    assert r.status_code == 502 and r.json()["code"] == "provider_error"
    message = r.json()["message"]
    assert "error 190/463" in message and "$CHORUS_META_ADS_TOKEN" in message and "0 added" in message
    view = http.get("/api/audiences/vip", headers=shop["h"]).json()
    assert view["members"] == 1 and view["last_sync"]["ok"] is False and not view["syncing"]
    meta.tokens = {"EAAB-ads-token"}
    assert sync(http, shop, "vip", [ids["ana"], ids["bo"]])["added"] == 1  # the next sync carries on


def test_one_sync_of_an_audience_at_a_time(http, server, shop, meta):
    from chorus.store.tables import audiences
    from chorus.timeutil import utcnow

    create(http, shop, name="vip", provider="meta", destination=AUD)
    with server.engine.begin() as conn:  # another process is syncing it
        conn.execute(audiences.update().where(audiences.c.name == "vip").values(sync_started_at=utcnow()))
    r = http.post("/api/audiences/vip/sync", json={"profiles": [shop["ids"]["ana"]]}, headers=shop["h"])
    assert r.status_code == 409 and "being synced right now" in r.json()["message"] and not meta.requests


def test_google_customer_match_and_customer_files(http, server, shop, google, workspace):
    ids = shop["ids"]
    grant = {"type": "track", "userId": "u-ana", "event": "Consent Updated",
             "properties": {"channel": "ads", "topic": "offers", "status": "granted"}}  # fmt: skip
    assert http.post("/v1/track", json=grant, auth=(workspace["server_write_key"], "")).status_code == 200
    server.settle()
    create(http, shop, name="offers", provider="google", destination="555001",
           identifiers=["email", "phone", "address"], consent={"topic": "offers", "mode": "opt_in"})  # fmt: skip
    got = sync(http, shop, "offers", [ids["ana"], ids["bo"]])
    assert got["added"] == 1 and got["skipped"]["items"][0]["reason"] == "consent_denied"
    assert "opt-in" in got["skipped"]["items"][0]["detail"] and len(got["provider"]["jobs"]) == 1
    job = next(iter(google.jobs.values()))
    assert job["consent"] == {"adUserData": "GRANTED", "adPersonalization": "GRANTED"}
    gmail = n.sha256_hex("anabakker@gmail.com")  # Google: dots before @gmail.com removed
    assert google.identifiers("555001", "hashedEmail") == {gmail}
    assert google.identifiers("555001", "hashedPhoneNumber") == {n.sha256_hex("+31612345678")}
    assert google.identifiers("555001", "address") == {
        f"{n.sha256_hex('ana')}|{n.sha256_hex('bakker')}|NL|2511 AB"
    }  # fmt: skip

    r = http.get("/api/audiences/offers/export", params={"format": "google"}, headers=shop["h"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert 'filename="offers-google.csv"' in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows == [["Email", "Phone", "First Name", "Last Name", "Country", "Zip"],
                    [gmail, n.sha256_hex("+31612345678"), n.sha256_hex("ana"), n.sha256_hex("bakker"), "NL",
                     "2511 AB"]]  # fmt: skip
    r = http.get("/api/audiences/offers/export", params={"format": "meta"}, headers=shop["h"])
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["email", "phone", "ct", "st", "zip", "country"]
    assert rows[1] == [ANA_EMAIL, n.sha256_hex("31612345678"), n.sha256_hex("denhaag"), "", n.sha256_hex("2511ab"),
                       n.sha256_hex("nl")]  # fmt: skip
    r = http.get("/api/audiences/offers/export", params={"format": "tiktok"}, headers=shop["h"])
    assert r.status_code == 400 and r.json()["field"] == "format"


def test_file_audience(http, shop):
    ids = shop["ids"]
    create(http, shop, name="print-run", provider="file", format="meta", identifiers=["email", "external_id"])
    got = sync(http, shop, "print-run", [ids["ana"], ids["bo"], ids["cas"]])
    assert got["added"] == 3 and got["skipped"]["by_reason"] == {}  # cas has no email but a user id: EXTERN_ID
    got = sync(http, shop, "print-run", [ids["ana"], ids["cas"]])
    assert (got["added"], got["removed"], got["members"]) == (0, 1, 2)
    r = http.get("/api/audiences/print-run/export", headers=shop["h"])
    head, *lines = r.text.splitlines()
    assert head == "email,extern_id" and sorted(lines) == [",u-cas", f"{ANA_EMAIL},u-ana"]
    assert r.headers["x-chorus-rows"] == "2"


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "chorus.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_cli_sync_and_export(http, shop, meta, workspace, db_url, tmp_path):
    create(http, shop, name="vip", provider="meta", destination=AUD)
    lines = tmp_path / "vip.txt"
    lines.write_text(f"# spring sale\n{shop['ids']['ana']}\nemail:bo@example.com\nphone:not-a-number\n"
                     "email:nobody@example.com\n")  # fmt: skip
    args = ["-w", workspace["name"], "--db", db_url]
    r = run("audiences", "sync", "vip", "--profiles", str(lines), *args)
    assert r.returncode == 1, r.stdout + r.stderr  # some lines were skipped; the others are synced
    assert "vip: 2 added, 0 removed, 0 unchanged, 2 skipped; 2 members" in r.stdout
    assert "line 4: invalid_input" in r.stdout and "line 5: unknown_profile" in r.stdout
    assert meta.emails(AUD) == {ANA_EMAIL, BO_EMAIL}

    out = tmp_path / "vip.csv"
    r = run("audiences", "export", "vip", "--format", "google", "--out", str(out), *args)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 rows written" in r.stdout
    assert out.read_text().splitlines()[0] == "Email,Phone"
    r = run("audiences", "sync", "nope", "--profiles", str(lines), *args)
    assert r.returncode == 2 and "audience 'nope' not found" in r.stderr
    r = run("audiences", "sync", "vip", "--profiles", str(tmp_path / "missing.txt"), *args)
    assert r.returncode == 2 and "--profiles" in r.stderr


def test_cli_creates_shows_and_syncs_an_audience_following_a_segment(http, shop, meta, workspace, db_url):
    r = http.put("/api/segments/has-email", json={"rule": {"reachable": {"channel": "email"}}}, headers=shop["h"])
    assert r.status_code == 201, r.text
    wait_until(lambda: http.get("/api/segments/has-email", headers=shop["h"]).json()["status"] == "ready")
    args = ["-w", workspace["name"], "--db", db_url]
    r = run("audiences", "create", "mailers", "--provider", "meta", "--destination", AUD, "--identifiers", "email",
            "--segment", "nope", *args)  # fmt: skip
    assert r.returncode == 2 and "no segment 'nope'" in r.stderr, r.stdout + r.stderr
    r = run("audiences", "create", "mailers", "--provider", "meta", "--destination", AUD, "--identifiers", "email",
            "--segment", "has-email", "--interval", "3600", *args)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["source"]["segment"] == "has-email"
    # the server's worker makes the first, full, upload at once: everyone reachable by email but Eve (ads denied)
    wait_until(lambda: not http.get("/api/audiences/mailers", headers=shop["h"]).json()["source"]["changes_pending"])
    assert meta.emails(AUD) == {ANA_EMAIL, BO_EMAIL}
    r = run("audiences", "sync", "mailers", "--json", *args)  # now, by hand: nothing changed, nothing sent
    assert r.returncode == 0, r.stdout + r.stderr  # Eve is listed as skipped: not an error for a segment's member
    got = json.loads(r.stdout)
    assert got["source"] == {"segment": "has-email", "members": 3, "deleted": False}
    assert (got["added"], got["removed"], got["unchanged"]) == (0, 0, 2)
    assert got["skipped"]["by_reason"] == {"consent_denied": 1}
    r = run("audiences", "show", "mailers", *args)
    assert r.returncode == 0 and json.loads(r.stdout)["members"] == got["members"], r.stdout + r.stderr
