"""A journey's webhook step signed with its workspace's own secret variable (``CHORUS_WS_<NAME>__...``, decision
0051), delivered by the worker to a real HTTP server on loopback; another workspace's variable is never read, and
is refused when saved."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest

from chorus import registry as reg
from chorus import workspaces
from chorus.journeys import webhooks
from chorus.messaging.providers import workspace_prefix
from chorus.store.tables import workspaces as workspaces_table
from tests.journeys.conftest import T0
from tests.journeys.test_effects import Receiver, hook_journey, rows, signup
from tests.journeys.test_runtime import publish, settle

SECRET = "their-own-s3cret"


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def loopback_ok(monkeypatch):
    monkeypatch.setenv(webhooks.ALLOW_ENV, "1")  # the receiver listens on 127.0.0.1


def name_of(engine, ws_id: str) -> str:
    with engine.connect() as conn:
        return workspaces.get(conn, ws_id).name


def signed_with(req, key: str) -> bool:
    parts = dict(p.split("=", 1) for p in req["headers"]["chorus-signature"].split(","))
    mac = hmac.new(key.encode(), f"{parts['t']}.".encode() + req["body"], hashlib.sha256).hexdigest()
    return hmac.compare_digest(mac, parts["v1"])


def test_a_webhook_step_is_signed_with_its_workspaces_own_variable(
    engine, ws, clock, worker, receiver, loopback_ok, monkeypatch
):
    env = workspace_prefix(name_of(engine, ws)) + "HOOK_SECRET"
    monkeypatch.setenv(env, SECRET)
    workspaces.update_settings(engine, ws, {"journeys": {"webhooks": {"secret_env": env}}})
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    settle(worker)
    (row,) = rows(engine, ws)
    assert (row.status, row.error) == ("delivered", None)
    (req,) = receiver.requests
    assert signed_with(req, SECRET)


def test_a_webhook_step_never_reads_another_workspaces_variable(
    engine, ws, clock, worker, receiver, loopback_ok, monkeypatch
):
    other = workspaces.create(engine, f"other-{uuid.uuid4().hex[:6]}")
    env = workspace_prefix(other["name"]) + "HOOK_SECRET"  # set: the other workspace's secret
    monkeypatch.setenv(env, SECRET)
    with engine.begin() as conn:  # as stored before a save refused it
        conn.execute(workspaces_table.update().where(workspaces_table.c.id == ws)
                     .values(settings={"journeys": {"webhooks": {"secret_env": env}}}))  # fmt: skip
    publish(engine, ws, hook_journey(receiver.url))
    signup(engine, ws, T0)
    settle(worker)
    (row,) = rows(engine, ws)
    assert row.status == "failed"
    assert row.error.startswith(f"settings.journeys.webhooks.secret_env names ${env}, another workspace's variable")
    assert receiver.requests == []


def test_saving_another_workspaces_variable_for_webhooks_names_the_setting(engine, ws):
    """Through the settings change with the journeys package's save check (registered by the package)."""
    r = reg.load()
    other = workspaces.create(engine, f"other-{uuid.uuid4().hex[:6]}")
    theirs = workspace_prefix(other["name"]) + "HOOK_SECRET"
    with pytest.raises(ValueError, match=r"^settings\.journeys\.webhooks\.secret_env names \$CHORUS_WS_OTHER_"):
        workspaces.update_settings(engine, ws, {"journeys": {"webhooks": {"secret_env": theirs}}}, registry=r)
    mine = workspace_prefix(name_of(engine, ws)) + "HOOK_SECRET"
    saved = workspaces.update_settings(engine, ws, {"journeys": {"webhooks": {"secret_env": mine}}}, registry=r)
    assert saved["journeys"] == {"webhooks": {"secret_env": mine}}
