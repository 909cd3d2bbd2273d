"""`chorus channels test` sends through each configured provider and reports what each one answered."""

from __future__ import annotations

import os
import subprocess
import sys

from chorus import workspaces
from tests.conftest import free_port


def run(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "chorus.cli", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_channels_test_reports_each_provider(db_url, engine, smtp_server):
    ws = workspaces.create(engine, "cli-shop")
    good = {
        "type": "smtp", "name": "relay", "host": "127.0.0.1", "port": smtp_server.port, "username": "chorus",
        "password_env": "CHORUS_SMTP_PASSWORD", "from": "Shop <news@shop.example>", "ca_file": smtp_server.ca_file,
    }  # fmt: skip
    down = {**good, "name": "old-relay", "port": free_port(), "timeout": 2}
    workspaces.update_settings(engine, ws["id"], {"messaging": {"providers": {"email": [good, down]}}})
    r = run("channels", "test", "email", "--to", "Ops@Example.com", "-w", "cli-shop", "--db", db_url,
            env={"CHORUS_SMTP_PASSWORD": "s3cret"})  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert "relay: sent (<test_" in r.stdout and "old-relay: FAILED (TransientError): cannot connect" in r.stdout
    assert [m["to"] for m in smtp_server.messages] == [["ops@example.com"]]
    assert smtp_server.messages[0]["msg"]["Subject"] == "Chorus test message"
    r = run("channels", "test", "email", "--to", "not-an-address", "-w", "cli-shop", "--db", db_url)
    assert r.returncode != 0 and "--to" in r.stdout + r.stderr


def test_channels_test_sms(db_url, engine, twilio):
    ws = workspaces.create(engine, "cli-sms")
    conf = {"type": "twilio", "account_sid": twilio.account_sid, "auth_token_env": "CHORUS_TWILIO_TOKEN",
            "from": "+15005550006", "base_url": twilio.base_url}  # fmt: skip
    workspaces.update_settings(engine, ws["id"], {"messaging": {"providers": {"sms": [conf]}}})
    r = run("channels", "test", "sms", "--to", "+31 6 12345678", "-w", "cli-sms", "--db", db_url,
            env={"CHORUS_TWILIO_TOKEN": twilio.auth_token})  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "twilio: sent (SM" in r.stdout
    assert twilio.sent[0]["To"] == "+31612345678" and "test message" in twilio.sent[0]["Body"]


def test_channels_test_push_and_webhook_and_bad_addresses(db_url, engine):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from tests.conftest import _ASGIThread
    from tests.standins.fcm import FCMStandIn

    got = []

    async def hook(request):
        got.append(await request.json())
        return JSONResponse({"ok": True})

    fcm = FCMStandIn()
    with _ASGIThread(fcm.app) as f, _ASGIThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as h:
        ws = workspaces.create(engine, "cli-push")
        providers = {
            "push": [{"type": "fcm", "service_account_env": "CHORUS_FCM", "base_url": f.base_url}],
            "webhook": [{"type": "webhook", "url": f"{h.base_url}/hook", "secret_env": "CHORUS_HOOK"}],
        }
        workspaces.update_settings(engine, ws["id"], {"messaging": {"providers": providers}})
        import orjson

        env = {"CHORUS_FCM": orjson.dumps(fcm.service_account(f.base_url)).decode(), "CHORUS_HOOK": "s"}
        r = run("channels", "test", "push", "--to", "device-tok-1", "-w", "cli-push", "--db", db_url, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert fcm.sent[0]["token"] == "device-tok-1" and fcm.sent[0]["notification"]["title"] == "Chorus"
        r = run("channels", "test", "webhook", "-w", "cli-push", "--db", db_url, env=env)
        assert r.returncode == 0 and got[0]["body"]["test"] is True, r.stdout + r.stderr
        for args, words in ((("messenger", "--to", "abc"), "PSID"), (("sms",), "--to is required"),
                            (("in_app", "--to", "x"), "no provider to test")):  # fmt: skip
            r = run("channels", "test", *args, "-w", "cli-push", "--db", db_url, env=env)
            assert r.returncode != 0 and words in r.stdout + r.stderr, (args, r.stdout, r.stderr)
