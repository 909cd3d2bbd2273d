"""Rotating and revoking keys, over real HTTP and from the CLI: the new key works, the old one stops at once in
the serving process, and the api key can never be revoked into a lock-out."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from chorus import workspaces
from chorus.errors import Unauthorized


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def track(http, key):
    return http.post("/v1/track", json={"userId": "u1", "event": "Tested"}, auth=(key, ""))


def test_rotate_write_key_old_stops_new_works(http, workspace):
    assert track(http, workspace["write_key"]).status_code == 200  # now cached by the server
    r = http.post("/api/keys/write/browser/rotate", headers=bearer(workspace["api_key"]))
    assert r.status_code == 200, r.text
    new = r.json()["write_key"]
    assert new.startswith("wk_") and new != workspace["write_key"] and r.json()["source"] == "browser"
    old = track(http, workspace["write_key"])
    assert old.status_code == 401 and old.json()["code"] == "unauthorized"  # not served from the cache
    assert track(http, new).status_code == 200
    keys = http.get("/api/keys", headers=bearer(workspace["api_key"])).json()
    browser = next(k for k in keys["write_keys"] if k["source"] == "browser")
    assert browser == {**browser, "write_key": new, "revoked": False, "kind": "client"}
    server = next(k for k in keys["write_keys"] if k["source"] == "server")
    assert server["write_key"] is None  # secret keys are never shown again


def test_revoke_write_key_then_rotate_rekeys(http, workspace):
    assert track(http, workspace["server_write_key"]).status_code == 200
    r = http.delete("/api/keys/write/server", headers=bearer(workspace["api_key"]))
    assert r.status_code == 200 and r.json() == {"source": "server", "kind": "server", "revoked": True}
    assert track(http, workspace["server_write_key"]).status_code == 401
    assert track(http, workspace["write_key"]).status_code == 200  # other sources are untouched
    keys = http.get("/api/keys", headers=bearer(workspace["api_key"])).json()["write_keys"]
    assert [k["revoked"] for k in keys if k["source"] == "server"] == [True]
    new = http.post("/api/keys/write/server/rotate", headers=bearer(workspace["api_key"])).json()["write_key"]
    assert new.startswith("sk_") and track(http, new).status_code == 200


def test_rotate_api_key_and_revoking_it_is_refused(http, workspace):
    old = workspace["api_key"]
    refused = http.delete("/api/keys/api", headers=bearer(old))
    assert refused.status_code == 409 and refused.json()["field"] == "api_key"
    assert "lock" in refused.json()["message"] and "rotate" in refused.json()["message"]
    assert http.get("/api/workspace", headers=bearer(old)).status_code == 200  # still works
    new = http.post("/api/keys/api/rotate", headers=bearer(old)).json()["api_key"]
    assert new.startswith("ak_") and new != old
    assert http.get("/api/workspace", headers=bearer(old)).status_code == 401
    assert http.get("/api/workspace", headers=bearer(new)).json()["id"] == workspace["id"]


@pytest.mark.parametrize("source", ["nope", "import"])
def test_unknown_or_keyless_source_is_404(http, workspace, engine, source):
    with engine.begin() as conn:
        workspaces.internal_source(conn, workspace["id"], "import", "import")
    for method, path in (("POST", f"/api/keys/write/{source}/rotate"), ("DELETE", f"/api/keys/write/{source}")):
        r = http.request(method, path, headers=bearer(workspace["api_key"]))
        assert r.status_code == 404 and r.json()["field"] == "source", r.text


def test_keys_of_another_workspace_are_out_of_reach(http, workspace, engine):
    other = workspaces.create(engine, "other-shop")
    http.delete("/api/keys/write/browser", headers=bearer(workspace["api_key"]))
    assert track(http, other["write_key"]).status_code == 200


def test_cli_rotate_and_revoke(db_url, engine, workspace):
    from chorus.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["keys", "rotate", workspace["name"], "--source", "browser", "--db", db_url])
    assert out.exit_code == 0, out.output
    new = out.stdout.strip().splitlines()[0]
    with engine.connect() as conn:
        assert workspaces.source_by_write_key(conn, new).name == "browser"
        with pytest.raises(Unauthorized):
            workspaces.source_by_write_key(conn, workspace["write_key"])
    out = runner.invoke(app, ["keys", "revoke", workspace["name"], "--source", "browser", "--db", db_url])
    assert out.exit_code == 0, out.output
    with engine.connect() as conn, pytest.raises(Unauthorized):
        workspaces.source_by_write_key(conn, new)
    listed = runner.invoke(app, ["keys", "list", workspace["name"], "--db", db_url])
    assert "browser\tclient\trevoked" in listed.stdout and "server\tserver\t(secret)" in listed.stdout
    refused = runner.invoke(app, ["keys", "revoke", workspace["name"], "--api", "--db", db_url])
    assert refused.exit_code == 2 and "lock everyone out" in refused.output
    out = runner.invoke(app, ["keys", "rotate", workspace["name"], "--api", "--db", db_url])
    api_key = out.stdout.strip().splitlines()[0]
    with engine.connect() as conn:
        assert workspaces.by_api_key(conn, api_key).id == workspace["id"]
        with pytest.raises(Unauthorized):
            workspaces.by_api_key(conn, workspace["api_key"])
