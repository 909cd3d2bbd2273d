"""Erasing a person cleans up after the browsers that claimed her identifiers, whatever they called them: a trait
whose value is her email under another name, and her user id sent as an alias' previousId (which makes it an
anonymous id of the claimant) leave no byte of hers on the claimant (docs/identity.md, erasure and claims).

Everything goes through the public HTTP API of a real server, on SQLite and PostgreSQL; the claimant's rows are
then read back from the database."""

from __future__ import annotations

import secrets

import orjson
import sqlalchemy as sa

from chorus.store.tables import events, identifiers, identity_links, profiles
from tests.conftest import wait_until


def _people() -> dict:
    tag = secrets.token_hex(5)
    return {"zoe": f"zoeuser{tag}", "email": f"Zoe{tag}@Example.com", "mal": f"maluser{tag}",
            "mal_email": f"mal{tag}@example.com", "tag": tag}  # fmt: skip


def _profile(http, admin: dict, **query) -> dict:
    wait_until(lambda: http.get("/api/profiles", params=query, headers=admin).status_code == 200)
    return http.get("/api/profiles", params=query, headers=admin).json()


def _claim(http, server, workspace: dict, p: dict, messages: list[dict]) -> tuple[dict, dict, dict]:
    """Zoe and Mallory are known from the brand's server; then Mallory's browser sends ``messages``."""
    admin = {"Authorization": f"Bearer {workspace['api_key']}"}
    sk, wk = (workspace["server_write_key"], ""), (workspace["write_key"], "")
    r = http.post("/v1/batch", auth=sk, json={"batch": [
        {"type": "identify", "userId": p["zoe"], "traits": {"email": p["email"], "name": "Zoe"}},
        {"type": "identify", "userId": p["mal"], "traits": {"email": p["mal_email"], "name": "Mal"}},
    ]})  # fmt: skip
    assert r.status_code == 200, r.text
    server.settle()
    r = http.post("/v1/batch", auth=wk, json={"batch": messages})
    assert r.status_code == 200, r.text
    server.settle()
    return admin, _profile(http, admin, user_id=p["zoe"]), _profile(http, admin, user_id=p["mal"])


def _erase_and_read(http, server, admin: dict, zoe: dict, mal: dict) -> tuple[dict, str, str, str]:
    r = http.delete(f"/api/profiles/{zoe['id']}", headers=admin)
    assert r.status_code == 200, r.text
    server.settle()
    prof = http.get(f"/api/profiles/{mal['id']}", headers=admin)
    export = http.get(f"/api/profiles/{mal['id']}/export", headers=admin)
    evs = http.get(f"/api/profiles/{mal['id']}/events", headers=admin)
    assert prof.status_code == export.status_code == 200, (prof.text, export.text)
    with server.engine.connect() as conn:  # the claimant's rows, as stored
        rows = [
            conn.execute(sa.select(profiles).where(profiles.c.id == mal["id"])).mappings().all(),
            conn.execute(sa.select(events).where(events.c.profile_id == mal["id"])).mappings().all(),
            conn.execute(sa.select(identifiers).where(identifiers.c.profile_id == mal["id"])).mappings().all(),
            conn.execute(sa.select(identity_links)).mappings().all(),
        ]
    db = orjson.dumps([[{str(k): v for k, v in r.items()} for r in t] for t in rows], default=str).decode()
    return prof.json(), export.text + (evs.text if evs.status_code == 200 else ""), db, r.text


def _gone(p: dict, *blobs: str) -> None:
    for blob in blobs:
        for needle in (p["zoe"], p["email"].lower()):
            assert needle not in blob.lower(), f"{needle} left in {blob[:2000]}"


def test_a_trait_holding_her_email_under_another_name_is_erased_from_the_claimant(http, server, workspace):
    p = _people()
    admin, zoe, mal = _claim(http, server, workspace, p, [
        {"type": "identify", "userId": p["mal"], "messageId": f"m1-{p['tag']}",
         "traits": {"email": p["email"], "backup_email": f"  {p['email'].upper()} ", "plan": "gold"}},
        {"type": "track", "userId": p["mal"], "event": "Shared", "messageId": f"m2-{p['tag']}",
         "properties": {"to": [p["email"], "friend@example.com"], "note": "kept"}},
    ])  # fmt: skip
    assert zoe["id"] != mal["id"]
    assert mal["traits"]["backup_email"].strip().lower() == p["email"].lower()  # what the claim put there
    prof, export, db, answer = _erase_and_read(http, server, admin, zoe, mal)
    assert orjson.loads(answer)["deleted"]["claimant_events_redacted"] == 2
    _gone(p, orjson.dumps(prof).decode(), export, db)
    # Mallory's own data stays: her email, name, plan, the rest of her events
    assert prof["traits"]["email"] == p["mal_email"] and prof["traits"]["name"] == "Mal"
    assert prof["traits"]["plan"] == "gold" and "backup_email" not in prof["traits"]
    assert "friend@example.com" in export and '"note":"kept"' in export.replace(" ", "")
    assert _profile(http, admin, user_id=p["mal"])["id"] == mal["id"]


def test_her_user_id_sent_as_an_alias_previous_id_is_erased_from_the_claimant(http, server, workspace):
    p = _people()
    anon = f"malbrowser{p['tag']}"
    admin, zoe, mal = _claim(http, server, workspace, p, [
        {"type": "identify", "userId": p["mal"], "anonymousId": anon, "messageId": f"m1-{p['tag']}",
         "traits": {"email": p["email"], "backup_email": p["email"]}},
        {"type": "alias", "userId": p["mal"], "previousId": p["zoe"], "messageId": f"m2-{p['tag']}"},
    ])  # fmt: skip
    assert p["zoe"] in mal["identifiers"].get("anonymous_id", [])  # what the claim put there
    prof, export, db, _answer = _erase_and_read(http, server, admin, zoe, mal)
    _gone(p, orjson.dumps(prof).decode(), export, db)
    assert prof["identifiers"]["anonymous_id"] == [anon]  # her own browser's id stays
    assert prof["traits"]["email"] == p["mal_email"]
    assert _profile(http, admin, anonymous_id=anon)["id"] == mal["id"]


def test_an_alias_alone_makes_a_claimant_too(http, server, workspace):
    """Mallory's browser only aliases her user id: no link touches Zoe's identifiers, yet her user id is on
    Mallory's profile as an anonymous id."""
    p = _people()
    admin, zoe, mal = _claim(http, server, workspace, p, [
        {"type": "alias", "userId": p["mal"], "previousId": p["zoe"], "messageId": f"m1-{p['tag']}"},
        {"type": "track", "userId": p["mal"], "event": "Viewed", "messageId": f"m2-{p['tag']}"},
    ])  # fmt: skip
    assert p["zoe"] in mal["identifiers"].get("anonymous_id", [])
    prof, export, db, _answer = _erase_and_read(http, server, admin, zoe, mal)
    _gone(p, orjson.dumps(prof).decode(), export, db)
    assert prof["traits"]["email"] == p["mal_email"] and "Viewed" in export
