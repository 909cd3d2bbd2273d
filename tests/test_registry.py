"""Register, don't reach: erasure participants, settings sections and worker tasks come from the packages that
registered them, and the code that runs them (privacy, workspaces, the worker) names none of them."""

from __future__ import annotations

import logging
import threading

import pytest
import sqlalchemy as sa

from chorus import registry, workspaces
from chorus.profiles import privacy
from chorus.registry import Person, Phase, Registry, Step
from chorus.store.tables import events, identifiers, metadata, profiles
from chorus.worker import Worker
from tests.conftest import wait_until
from tests.identity.helpers import resolve, send


# -- the installed packages ---------------------------------------------------------------------------------------
def test_the_installed_packages_register_every_part_once():
    r = registry.installed()
    parts = r.participants()
    assert [p.name for p in parts] == ["messaging_hold", "collect", "segments", "journeys", "journey_webhooks",
                                       "messaging", "audiences", "identity", "profiles", "feed"]  # fmt: skip
    assert [p.phase for p in parts] == sorted(p.phase for p in parts)  # run in phase order
    # unify, decide, deliver
    assert [t.name for t in r.tasks()] == ["resolve", "activity_backfill", "feed", "segment_timers", "segment_batch",
                                       "journey_schedule", "journey_timers", "journey_sweep", "journey_webhooks",
                                       "deliver", "audience_follow", "audience_changes"]  # fmt: skip
    assert set(r.setting_keys) == {"default_region", "identifiers", "identifier_limits", "trait_policies",
                                   "messaging", "audiences", "attribution", "journeys"}  # fmt: skip
    # a segment is not deleted while a journey, a broadcast or an audience uses it (segments name none of them)
    assert r.segment_user_names() == ["journeys", "audiences"]
    with pytest.raises(RuntimeError, match="frozen"):  # the process-wide registry cannot be changed behind its back
        r.setting("probe", lambda v: v)


def test_every_table_that_names_a_profile_is_erased_by_some_participant():
    """A package that adds a table with a profile_id (segment memberships, journey instances) must register the
    erasure of its rows; this fails until it does."""
    erased = set(registry.installed().table_of_count().values())
    naming = {t.name for t in metadata.sorted_tables if "profile_id" in t.c} | {"profiles"}
    assert naming - erased == set()


def test_a_name_is_registered_once():
    r = Registry()
    r.task("t", lambda e, o: None, step=Step.DECIDE)
    with pytest.raises(ValueError, match="twice"):
        r.task("t", lambda e, o: None, step=Step.DECIDE)
    r.setting("s", lambda v: v)
    with pytest.raises(ValueError, match="twice"):
        r.setting("s", lambda v: v)


# -- erasure ------------------------------------------------------------------------------------------------------
def _person(engine, ws: str) -> str:
    send(engine, ws, [
        {"type": "identify", "userId": "ana", "anonymousId": "dev-1", "messageId": "m1",
         "traits": {"email": "ana@example.com", "name": "Ana"}},
        {"type": "track", "userId": "ana", "event": "Viewed", "messageId": "m2"},
    ])  # fmt: skip
    send(engine, ws, [{"type": "identify", "userId": "bo", "messageId": "b1", "traits": {"email": "bo@example.com"}}])
    resolve(engine)
    with engine.connect() as conn:
        return conn.execute(sa.select(identifiers.c.profile_id).where(identifiers.c.ident == "user_id:ana")).scalar()


def _count(conn, table, *where) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()


def test_a_registered_participant_is_called_in_its_phase_within_the_erasure(engine):
    ws = workspaces.create(engine, "shop")["id"]
    pid = _person(engine, ws)
    seen = []

    def probe(phase):
        def forget(conn, ws_id: str, person: Person) -> dict[str, int]:
            # what the erasure's own transaction shows this participant at its phase
            seen.append((phase, ws_id, person,
                         _count(conn, identifiers, identifiers.c.profile_id == person.profile_id),
                         _count(conn, profiles, profiles.c.id == person.profile_id),
                         _count(conn, events, events.c.profile_id == person.profile_id)))  # fmt: skip
            return {f"probe_{phase.name.lower()}": 1}

        return forget

    r = registry.load()
    # added in reverse: phases, not the order of registration, decide when each runs
    r.erasure("probe-profile", probe(Phase.PROFILE), tables={"probe_profile": None}, phase=Phase.PROFILE)
    r.erasure("probe-data", probe(Phase.DATA), tables={"probe_data": "events"})
    out = privacy.forget(engine, ws, pid, vacuum="plain", registry=r)

    (p1, ws1, person, idents1, prof1, evs1), (p2, _, _, idents2, prof2, evs2) = seen
    assert (p1, p2) == (Phase.DATA, Phase.PROFILE)
    assert ws1 == ws and person.profile_id == pid
    assert set(person.identifiers) == {"user_id:ana", "anonymous_id:dev-1", "email:ana@example.com"}
    assert person.values("email") == ["ana@example.com"]
    # DATA runs after collect (registered first) but before identity: the graph and the profile are intact
    assert (idents1, prof1, evs1) == (3, 1, 0)
    # PROFILE runs after identity and after the installed profiles participant
    assert (idents2, prof2, evs2) == (0, 0, 0)
    assert out["deleted"]["probe_data"] == 1 and out["deleted"]["probe_profile"] == 1
    assert out["deleted"]["events"] == 2 and out["deleted"]["identifiers"] == 3 and out["deleted"]["profiles"] == 1
    if engine.dialect.name == "postgresql":  # the tables named by the counts are the tables scrubbed
        assert {"events", "identifiers", "profiles"} <= set(out["scrubbed"]["done"])
    with engine.connect() as conn:  # the other person is untouched
        assert _count(conn, identifiers, identifiers.c.ident == "user_id:bo") == 1


@pytest.mark.parametrize("failure", ["raises", "undeclared count"])
def test_a_participant_that_fails_fails_the_whole_erasure(engine, failure):
    ws = workspaces.create(engine, "shop")["id"]
    pid = _person(engine, ws)

    def bad(conn, ws_id, person):
        if failure == "raises":
            raise RuntimeError("disk on fire")
        return {"surprise": 1}

    r = registry.load()
    r.erasure("bad", bad, tables={}, phase=Phase.PROFILE)  # last: everything else was deleted by then
    with pytest.raises(RuntimeError, match="disk on fire" if failure == "raises" else "did not declare"):
        privacy.forget(engine, ws, pid, registry=r)
    with engine.connect() as conn:  # one transaction: nothing was deleted
        assert _count(conn, identifiers, identifiers.c.profile_id == pid) == 3
        assert _count(conn, events, events.c.profile_id == pid) == 2
        assert _count(conn, profiles, profiles.c.id == pid) == 1


def test_a_participant_adds_its_sections_to_the_export(engine):
    ws = workspaces.create(engine, "shop")["id"]
    pid = _person(engine, ws)
    r = registry.load()
    r.erasure("probe", lambda c, w, p: {}, tables={},
              export=lambda conn, ws_id, person: {"probe": sorted(person.values("user_id", "email"))})  # fmt: skip
    with engine.connect() as conn:
        doc = privacy.export(conn, ws, pid, workspaces.get(conn, ws).identity, registry=r)
    assert doc["probe"] == ["ana", "ana@example.com"]
    assert [e["messageId"] for e in doc["events"]] == ["m1", "m2"] and doc["profile"]["id"] == pid


# -- settings -----------------------------------------------------------------------------------------------------
def test_each_settings_section_is_checked_by_the_validator_its_package_registered():
    r = Registry()
    calls = []

    def segments(value):
        calls.append(value)
        if not isinstance(value, dict):
            raise ValueError("settings.segments must be an object")
        return {**value, "checked": True}

    r.setting("segments", segments)
    assert workspaces.validate_settings({"segments": {"a": 1}}, registry=r) == {"segments": {"a": 1, "checked": True}}
    with pytest.raises(ValueError, match=r"^settings\.segments must be an object$"):
        workspaces.validate_settings({"segments": 3}, registry=r)
    assert calls == [{"a": 1}, 3]
    with pytest.raises(ValueError, match=r"^settings\.messaging is not a known setting$"):  # not registered here
        workspaces.validate_settings({"messaging": {}}, registry=r)


def test_a_setting_hook_hears_a_change_in_its_transaction_and_only_a_change(engine):
    """``on_setting``: called with the section before and after, only when it differs, in the change's transaction
    (a hook that fails leaves the settings as they were)."""
    r = Registry()
    r.setting("probe", lambda v: v)
    r.setting("other", lambda v: v)
    heard = []

    def hook(conn, ws_id, before, after):
        heard.append((ws_id, before, after))
        if after == "boom":
            raise RuntimeError("the hook failed")

    r.on_setting("probe", "listener", hook)
    with pytest.raises(ValueError, match="registered twice"):
        r.on_setting("probe", "listener", hook)
    w = workspaces.create(engine, "hooked")
    workspaces.update_settings(engine, w["id"], {"probe": 1, "other": 5}, registry=r)
    workspaces.update_settings(engine, w["id"], {"probe": 1}, registry=r)  # unchanged: not heard
    workspaces.update_settings(engine, w["id"], {"other": 6}, registry=r)  # another section: not heard
    workspaces.update_settings(engine, w["id"], {"probe": 2}, registry=r)
    assert heard == [(w["id"], None, 1), (w["id"], 1, 2)]
    with pytest.raises(RuntimeError, match="the hook failed"):
        workspaces.update_settings(engine, w["id"], {"probe": "boom", "other": 7}, registry=r)
    with engine.connect() as conn:
        assert workspaces.get(conn, w["id"]).settings["probe"] == 2  # rolled back with the hook
        assert workspaces.get(conn, w["id"]).settings["other"] == 6
    r.freeze()
    with pytest.raises(RuntimeError, match="frozen"):
        r.on_setting("other", "late", hook)


@pytest.mark.parametrize("patch, message", [
    ({"nope": 1}, r"^settings\.nope is not a known setting$"),
    ({"default_region": "XX"}, r"^settings\.default_region: 'XX' is not a known region$"),
    ({"identifiers": {"email": {}}}, r"^settings\.identifiers\.email: not an allowed identifier name$"),
    ({"identifier_limits": {"user_id": 2}}, r"^settings\.identifier_limits\.user_id: a profile always has at most "),
    ({"identifier_limits": {"anonymous_id": 0}}, r"^settings\.identifier_limits\.anonymous_id must be a whole number "),
    ({"identifier_limits": {"anonymous_id": True}}, r"^settings\.identifier_limits\.anonymous_id must be a whole "),
    ({"identifier_limits": {"a b": 3}}, r"^settings\.identifier_limits\.a b: not an identifier name$"),
    ({"identifier_limits": [1]}, r"^settings\.identifier_limits must be an object"),
    ({"trait_policies": {"visits": "avg"}}, r"^settings\.trait_policies: each policy must be one of "),
    ({"messaging": {"colour": "red"}}, r"^settings\.messaging\.colour is not a messaging setting$"),
    ({"messaging": {"timezone": "America"}}, r"^settings\.messaging\.timezone 'America' is not an IANA time zone$"),
    ({"messaging": {"timezone": "localtime"}}, r"^settings\.messaging\.timezone 'localtime' is not an IANA "),
    ({"audiences": []}, r"^settings\.audiences must be an object"),
    ({"attribution": {"lookback_days": -1}}, r"^settings\.attribution\.lookback_days: "),
])  # fmt: skip
def test_the_installed_sections_name_the_field(patch, message):
    with pytest.raises(ValueError, match=message):
        workspaces.validate_settings(patch)


def test_installed_sections_clean_their_values():
    assert workspaces.validate_settings({"default_region": "nl", "attribution": None}) == {
        "default_region": "NL", "attribution": None,
    }  # fmt: skip


# -- worker tasks -------------------------------------------------------------------------------------------------
class Probe:
    def __init__(self, name: str, log: list, work: int = 0, fails: bool = False, close_fails: bool = False):
        self.name, self.log, self.work, self.fails, self.close_fails = name, log, work, fails, close_fails
        self.runs = 0
        self.closed = False

    def run_once(self) -> int:
        self.runs += 1
        self.log.append(self.name)
        if self.fails:
            raise RuntimeError(f"{self.name} is broken")
        return self.work

    def close(self) -> None:
        self.closed = True
        if self.close_fails:
            raise RuntimeError("cannot close")


def _tasks(log: list, **kw) -> tuple[Registry, dict[str, Probe]]:
    made: dict[str, Probe] = {}

    def task(name, **opts):
        def make(engine, options):
            made[name] = Probe(name, log, **opts)
            return made[name]

        return make

    r = Registry()
    # registered out of flow order: the step decides
    r.task("deliver", task("deliver", work=2, close_fails=True), step=Step.DELIVER)
    r.task("segments", task("segments", work=1), step=Step.DECIDE)
    r.task("resolve", task("resolve", fails=True), step=Step.UNIFY, label="identity resolution batch")
    return r, made


def test_a_pass_runs_every_registered_task_in_flow_order_and_one_failing_stops_none(caplog):
    log: list[str] = []
    r, made = _tasks(log)
    w = Worker(None, registry=r)  # type: ignore[arg-type]  # the probes need no store
    with caplog.at_level(logging.ERROR, logger="chorus.worker"):
        assert w.run_once() == 3  # resolve failed; segments (1) and delivery (2) still ran
    assert log == ["resolve", "segments", "deliver"]
    assert [rec.getMessage() for rec in caplog.records] == ["identity resolution batch failed"]
    assert caplog.records[0].exc_info[1].args == ("resolve is broken",)
    assert w.task("segments") is made["segments"]
    w.stop()  # every task is closed, even after one that cannot close
    assert all(p.closed for p in made.values())


def test_the_running_worker_keeps_passing_while_a_task_fails():
    log: list[str] = []
    r, made = _tasks(log)
    w = Worker(None, poll=0.01, registry=r)  # type: ignore[arg-type]
    w.start()
    try:
        wait_until(lambda: made["deliver"].runs >= 3 and made["resolve"].runs >= 3, timeout=10)
    finally:
        w.stop()
    assert not w._thread.is_alive()


def test_a_stopping_worker_ends_its_pass_after_the_task_in_progress():
    """Stopping waits for the task (its transaction) in progress, not for the rest of the pass: a pass of slow tasks
    (delivery calling a provider that times out) kept `chorus serve` from exiting for as long."""
    log: list[str] = []
    r, made = _tasks(log)
    w = Worker(None, registry=r)  # type: ignore[arg-type]
    inside, go_on = threading.Event(), threading.Event()
    first = w.tasks[0][2]

    def slow_run_once():
        inside.set()
        go_on.wait(10)
        return first.work

    first.run_once = slow_run_once
    w.start()
    try:
        assert inside.wait(10)
        w.stopping.set()  # what the server does at SIGINT/SIGTERM
        go_on.set()
        w._thread.join(10)
    finally:
        w.stop()
    assert not w._thread.is_alive()
    assert log == []  # the task in progress finished; none after it ran


def test_the_installed_worker_resolves_then_delivers(engine):
    ws = workspaces.create(engine, "shop")["id"]
    send(engine, ws, [{"type": "identify", "userId": "ana", "messageId": "m1"}])
    w = Worker(engine)
    try:
        names = [name for name, _label, _task in w.tasks]
        assert names == ["resolve", "activity_backfill", "feed", "segment_timers", "segment_batch",
                         "journey_schedule", "journey_timers", "journey_sweep", "journey_webhooks", "deliver",
                         "audience_follow", "audience_changes"]  # fmt: skip
        # one event resolved, its change handed to the segments, journeys and audiences consumers
        assert w.run_once() == 4
        assert w.run_once() == 0
    finally:
        w.stop()
    with engine.connect() as conn:
        assert _count(conn, events, events.c.profile_id.is_(None)) == 0
