"""A workspace's own secret variables (``CHORUS_WS_<NAME>__...``, decision 0051) in social audiences and in saved
settings: an audience syncs with its own workspace's variable over real loopback HTTP (the admin API, and Meta's
Marketing API stand-in), another workspace's is refused when read, and saving another workspace's variable is a 400
naming the setting."""

from __future__ import annotations

import uuid

import pytest

from chorus import registry as reg
from chorus import workspaces
from chorus.journeys import webhooks as journey_hooks
from chorus.messaging import settings as messaging_settings
from chorus.messaging.audiences import settings as audience_settings
from chorus.messaging.providers import workspace_prefix
from chorus.store.tables import workspaces as workspaces_table
from tests.conftest import _ASGIThread
from tests.standins.meta_audiences import MetaAudiencesStandIn

AUD = "23851234567890123"
TOKEN = "EAAB-ads-token"
ANA = {"type": "identify", "userId": "u-ana", "traits": {"email": "ana@example.com"}}


def bearer(ws: dict) -> dict:
    return {"Authorization": f"Bearer {ws['api_key']}"}


def own_variable(ws: dict, secret: str) -> str:
    """The name of ``ws``'s own variable ``secret``: ``CHORUS_WS_<ITS NAME>__<SECRET>``."""
    return workspace_prefix(ws["name"]) + secret


def meta_provider(base_url: str, token_env: str) -> dict:
    return {"type": "meta", "name": "meta", "access_token_env": token_env, "base_url": base_url,
            "retry_base_seconds": 0.01}  # fmt: skip


def stored_settings(engine, ws_id: str, settings: dict) -> None:
    """Settings written as they may already be stored: saved before the save refused another workspace's variable."""
    with engine.begin() as conn:
        conn.execute(workspaces_table.update().where(workspaces_table.c.id == ws_id).values(settings=settings))


def settings_of(engine, ws_id: str) -> dict:
    with engine.connect() as conn:
        return workspaces.get(conn, ws_id).settings


@pytest.fixture
def meta():
    standin = MetaAudiencesStandIn(TOKEN)
    with _ASGIThread(standin.app) as srv:
        standin.base_url = srv.base_url
        yield standin


@pytest.fixture
def other(engine) -> dict:
    return workspaces.create(engine, f"other-{uuid.uuid4().hex[:6]}")


def known_person(http, server, ws: dict) -> None:
    r = http.post("/v1/batch", json={"batch": [ANA]}, auth=(ws["server_write_key"], ""))
    assert r.status_code == 200, r.text
    server.settle()


def audience(http, ws: dict) -> None:
    r = http.post("/api/audiences", json={"name": "vip", "provider": "meta", "destination": AUD}, headers=bearer(ws))
    assert r.status_code == 201, r.text


# -- gap 1: an audience sync reads its own workspace's variables ----------------------------------------------------
def test_an_audience_syncs_with_its_own_workspaces_variable(http, server, workspace, meta, monkeypatch):
    env = own_variable(workspace, "META_ADS_TOKEN")
    monkeypatch.setenv(env, TOKEN)
    r = http.patch("/api/workspace/settings", json={"audiences": {"providers": [meta_provider(meta.base_url, env)]}},
                   headers=bearer(workspace))  # fmt: skip
    assert r.status_code == 200, r.text
    known_person(http, server, workspace)
    audience(http, workspace)
    r = http.post("/api/audiences/vip/sync", json={"profiles": [{"email": "ana@example.com"}]},
                  headers=bearer(workspace))  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["added"] == 1
    (req,) = meta.requests
    assert req["authorization"] == f"Bearer {TOKEN}"  # the value of the workspace's own variable


def test_an_audience_never_reads_another_workspaces_variable(http, server, workspace, other, engine, meta, monkeypatch):
    env = own_variable(workspace, "META_ADS_TOKEN")  # the first workspace's: set, and accepted by the stand-in
    monkeypatch.setenv(env, TOKEN)
    stored_settings(engine, other["id"], {"audiences": {"providers": [meta_provider(meta.base_url, env)]}})
    known_person(http, server, other)
    audience(http, other)
    r = http.post("/api/audiences/vip/sync", json={"profiles": [{"email": "ana@example.com"}]}, headers=bearer(other))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "provider"
    assert f"${env}, another workspace's variable" in r.json()["message"]
    assert meta.requests == []  # nothing sent: the token was never read for it


# -- gap 2: saving another workspace's variable is refused, naming the setting ----------------------------------------
def test_saving_another_workspaces_variable_in_audiences_is_a_400_naming_it(http, workspace, other, engine, meta):
    theirs = own_variable(other, "META_ADS_TOKEN")
    body = {"audiences": {"providers": [meta_provider(meta.base_url, theirs)]}}
    r = http.patch("/api/workspace/settings", json=body, headers=bearer(workspace))
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "settings.audiences.providers[0].access_token_env"
    assert f"${theirs}, another workspace's variable" in r.json()["message"]
    assert "audiences" not in settings_of(engine, workspace["id"])  # nothing saved
    # its own, and a variable shared by every workspace, are saved
    for env in (own_variable(workspace, "META_ADS_TOKEN"), "CHORUS_META_ADS_TOKEN"):
        body = {"audiences": {"providers": [meta_provider(meta.base_url, env)]}}
        r = http.patch("/api/workspace/settings", json=body, headers=bearer(workspace))
        assert r.status_code == 200, r.text


SECTIONS = [
    ("messaging", messaging_settings.validate,
     {"providers": {"webhook": [{"type": "webhook", "url": "https://crm.example/hook", "secret_env": "{env}"}]}},
     "settings.messaging.providers.webhook[0].secret_env"),
    ("journeys", journey_hooks.validate_settings, {"webhooks": {"secret_env": "{env}"}},
     "settings.journeys.webhooks.secret_env"),
    ("audiences", audience_settings.validate,
     {"providers": [{"type": "meta", "access_token_env": "{env}"}]},
     "settings.audiences.providers[0].access_token_env"),
]  # fmt: skip


def section(template: dict, env: str) -> dict:
    """``template`` with every "{env}" as ``env``."""
    if isinstance(template, dict):
        return {k: section(v, env) for k, v in template.items()}
    if isinstance(template, list):
        return [section(v, env) for v in template]
    return env if template == "{env}" else template


@pytest.mark.parametrize("key, validate, template, field", SECTIONS, ids=[s[0] for s in SECTIONS])
def test_each_section_checked_on_save_refuses_another_workspaces_variable(engine, key, validate, template, field):
    """Each section that names secrets, checked on save by :func:`refuse_others_on_save` (each package registers
    it), through the real settings change: refused naming the setting, nothing saved; the workspace's own variable
    saved."""
    r = reg.load()
    mine = workspaces.create(engine, f"Shop {uuid.uuid4().hex[:6]}")  # a space and lower case: CHORUS_WS_SHOP_...
    theirs = workspaces.create(engine, f"shop-{uuid.uuid4().hex[:6]}")
    before = settings_of(engine, mine["id"])
    with pytest.raises(ValueError) as exc:
        workspaces.update_settings(engine, mine["id"], {key: section(template, own_variable(theirs, "X"))}, registry=r)
    assert str(exc.value).split(" ", 1)[0] == field
    assert "another workspace's variable" in str(exc.value)
    assert settings_of(engine, mine["id"]) == before
    own = section(template, own_variable(mine, "X"))
    assert workspaces.update_settings(engine, mine["id"], {key: own}, registry=r)[key] == own


def test_a_workspace_named_as_a_prefix_of_another_cannot_save_its_variable(engine):
    """"shop" may not name "shop b"'s variables although they begin with CHORUS_WS_SHOP_ (the double underscore ends
    the name)."""
    mine = workspaces.create(engine, f"s{uuid.uuid4().hex[:6]}")
    longer = workspaces.create(engine, mine["name"] + " b")
    env = own_variable(longer, "TOKEN")
    assert env.startswith(workspace_prefix(mine["name"])[:-2])
    with pytest.raises(ValueError, match=r"^settings\.audiences\.providers\[0\]\.access_token_env names"):
        workspaces.update_settings(engine, mine["id"], {"audiences": {"providers": [
            {"type": "meta", "access_token_env": env}]}})  # fmt: skip


# The installed packages: each registers its check on save in its own register()
@pytest.mark.parametrize("key, validate, template, field", [
    pytest.param(*SECTIONS[0], id="messaging"),
    pytest.param(*SECTIONS[1], id="journeys"),
    pytest.param(*SECTIONS[2], id="audiences"),
])  # fmt: skip
def test_the_installed_sections_refuse_another_workspaces_variable_on_save(engine, key, validate, template, field):
    mine = workspaces.create(engine, f"mine-{uuid.uuid4().hex[:6]}")
    theirs = workspaces.create(engine, f"theirs-{uuid.uuid4().hex[:6]}")
    with pytest.raises(ValueError) as exc:
        workspaces.update_settings(engine, mine["id"], {key: section(template, own_variable(theirs, "X"))})
    assert str(exc.value).split(" ", 1)[0] == field


def test_the_validators_name_the_setting_of_another_workspaces_variable():
    for key, validate, template, field in SECTIONS:
        value = section(template, "CHORUS_WS_B__X")
        with pytest.raises(ValueError) as exc:
            validate(value, workspace="a")
        assert str(exc.value).split(" ", 1)[0] == field, key
        assert validate(value, workspace="b") == value  # its own
        assert validate(value) == value  # whose is unknown: the name only (it is never read without a workspace)
        assert validate(section(template, "CHORUS_SHARED_X"), workspace="a")  # shared by every workspace

