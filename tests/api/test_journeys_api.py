"""The journey and broadcast endpoints over real HTTP on both engines: publish (bad definitions named, dry runs,
migrations), control, API starts made idempotent by their Idempotency-Key, statistics, who is at a node (keyset
pages), a person's journeys, broadcasts and their messages; every answer checked against /openapi.json, and every
operation refused to a write key."""

from __future__ import annotations

import pytest

from chorus.messaging import outbox
from tests.api.openapi_check import Documented
from tests.conftest import wait_until

WAITER = {
    "id": "onboard", "name": "Onboarding", "entry": {"api": {}}, "reentry": "after_exit",
    "start": "pause",
    "nodes": {
        "pause": {"type": "delay", "for": "2d", "next": "mark"},
        "mark": {"type": "update_trait", "trait": "onboarded", "value": True, "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip
# started by a call, no key: a second start is refused only while she is inside (reentry after_exit), so only the
# start's own id (the Idempotency-Key) can make a retried call start nobody twice
ONCE = {
    "id": "ping", "entry": {"api": {}}, "reentry": "after_exit", "start": "mark",
    "nodes": {"mark": {"type": "update_trait", "trait": "pinged", "value": True, "next": "done"},
              "done": {"type": "exit"}},
}  # fmt: skip


@pytest.fixture
def h(workspace):
    return {"Authorization": f"Bearer {workspace['api_key']}"}


@pytest.fixture
def people(http, server, workspace, h, engine) -> dict[str, str]:
    """Five people with emails, by user id; a template for broadcasts."""
    batch = [{"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@example.com"}} for i in range(5)]
    assert http.post("/v1/batch", json={"batch": batch}, auth=(workspace["server_write_key"], "")).status_code == 200
    server.settle()
    outbox.save_template(engine, workspace["id"], "offer", {"kind": "marketing", "variants": {
        "in_app": {"title": "Offer", "body": "for you"}}})  # fmt: skip
    return {f"u{i}": http.get("/api/profiles", params={"user_id": f"u{i}"}, headers=h).json()["id"] for i in range(5)}


@pytest.fixture
def doc(http):
    return Documented(http.get("/openapi.json").json())


def call(http, doc, h, method: str, template: str, path: str, status: int, **kw):
    r = http.request(method, path, headers={**h, **kw.pop("headers", {})}, **kw)
    assert r.status_code == status, (method, path, r.status_code, r.text)
    return doc.check(r, template).json()


def test_publish_control_start_stats_and_people(http, h, doc, people):
    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    # a bad definition: 400 naming the node and field, nothing stored
    bad = {**WAITER, "nodes": {**WAITER["nodes"], "pause": {"type": "delay", "for": "2d", "next": "nowhere"}}}
    err = c("POST", "/api/journeys", "/api/journeys", 400, json=bad)
    assert err["code"] == "bad_request" and err["field"].startswith("nodes.pause"), err
    err = c("POST", "/api/journeys", "/api/journeys", 400, json={**WAITER, "nodes": {
        **WAITER["nodes"], "mark": {"type": "message", "template": "missing", "next": "done"}}})  # fmt: skip
    assert "mark" in err["field"], err
    assert c("GET", "/api/journeys", "/api/journeys", 200) == {"journeys": []}

    # a dry run writes nothing; publishing makes version 1
    dry = c("POST", "/api/journeys", "/api/journeys", 200, json=WAITER, params={"dry_run": "true"})
    assert (dry["dry_run"], dry["version"], dry["people_inside"]) == (True, 1, 0)
    c("GET", "/api/journeys/{journey_id}", "/api/journeys/onboard", 404)
    got = c("POST", "/api/journeys", "/api/journeys", 201, json=WAITER)
    assert (got["version"], got["dry_run"]) == (1, False)
    view = c("GET", "/api/journeys/{journey_id}", "/api/journeys/onboard", 200)
    assert (view["status"], view["entry"], view["kind"], view["runs"]) == ("active", "api", "journey", None)
    defn = c("GET", "/api/journeys/{journey_id}/definition", "/api/journeys/onboard/definition", 200,
             params={"version": 1})  # fmt: skip
    assert defn["id"] == "onboard" and set(defn["nodes"]) == {"pause", "mark", "done"}
    c("GET", "/api/journeys/{journey_id}/definition", "/api/journeys/onboard/definition", 404, params={"version": 7})

    # starts: by profile id or by an identifier; each person waits at the delay
    for i, (_user, pid) in enumerate(sorted(people.items())):
        body = {"profile_id": pid} if i % 2 else {"to": {"email": f"u{i}@example.com"}}
        got = c("POST", "/api/journeys/{journey_id}/start", "/api/journeys/onboard/start", 200,
                json={**body, "data": {"n": i}})  # fmt: skip
        assert (got["entered"], got["node"], got["status"]) == (True, "pause", "active"), got
    err = c("POST", "/api/journeys/{journey_id}/start", "/api/journeys/onboard/start", 404,
            json={"to": {"email": "nobody@example.com"}})  # fmt: skip
    assert err["field"] == "to.email"
    err = c("POST", "/api/journeys/{journey_id}/start", "/api/journeys/onboard/start", 400,
            json={"profile_id": people["u0"], "to": {"email": "u0@example.com"}})  # fmt: skip
    assert err["field"] == "profile_id"

    st = c("GET", "/api/journeys/{journey_id}/stats", "/api/journeys/onboard/stats", 200)
    assert (st["totals"]["entered"], st["totals"]["active"], st["totals"]["inside"]) == (5, 5, 5)
    pause = st["versions"][0]["nodes"][0]
    assert (pause["node"], pause["entered"], pause["waiting_now"], pause["passed"]) == ("pause", 5, 5, 0)
    c("GET", "/api/journeys/{journey_id}/stats", "/api/journeys/onboard/stats", 400, params={"version": 3})

    # who is at the delay: two pages of 3 and 2, every person once
    sizes, seen, cursor = [], [], None
    for _ in range(3):
        page = c("GET", "/api/journeys/{journey_id}/people", "/api/journeys/onboard/people", 200,
                 params={"node": "pause", "limit": 3, **({"cursor": cursor} if cursor else {})})  # fmt: skip
        sizes.append(len(page["people"]))
        seen += page["people"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sizes == [3, 2] and sorted(p["profile_id"] for p in seen) == sorted(people.values())
    c("GET", "/api/journeys/{journey_id}/people", "/api/journeys/onboard/people", 400,
      params={"node": "pause", "cursor": "bm90LWEtY3Vyc29y"})  # fmt: skip
    empty = c("GET", "/api/journeys/{journey_id}/people", "/api/journeys/onboard/people", 200, params={"node": "mark"})
    assert empty == {"people": [], "next_cursor": None}

    # a person's journeys: her instance and records
    mine = c("GET", "/api/profiles/{profile_id}/journeys", f"/api/profiles/{people['u1']}/journeys", 200)
    (inst,) = mine["instances"]
    assert (inst["journey_id"], inst["node"], inst["status"]) == ("onboard", "pause", "active")
    assert [r["kind"] for r in mine["records"]] == ["entered", "waiting"]
    c("GET", "/api/profiles/{profile_id}/journeys", "/api/profiles/p_nobody/journeys", 404)

    # a new version with a migration (dry run first): those at the delay move to the new delay
    v2 = {
        **WAITER,
        "start": "hold",
        "nodes": {
            "hold": {"type": "delay", "for": "1d", "next": "mark"},
            "mark": WAITER["nodes"]["mark"],
            "done": WAITER["nodes"]["done"],
        },
    }
    dry = c("POST", "/api/journeys", "/api/journeys", 200, json=v2, params={"dry_run": "true", "migrate": "pause:hold"})
    assert (dry["version"], dry["people_inside"], dry["moving"]) == (2, 5, 5)
    assert dry["where"] == [{"version": 1, "node": "pause", "status": "active", "people": 5, "moves_to": "hold"}]
    err = c("POST", "/api/journeys", "/api/journeys", 400, json=v2, params={"migrate": "pause"})
    assert err["field"] == "migrate"
    err = c("POST", "/api/journeys", "/api/journeys", 400, json=v2, params={"migrate": ["pause:mark"]})
    assert err["field"] == "migrate.pause"
    got = c("POST", "/api/journeys", "/api/journeys", 201, json=v2, params={"migrate": ["pause:hold"]})
    assert (got["version"], got["moving"]) == (2, 5)
    st = c("GET", "/api/journeys/{journey_id}/stats", "/api/journeys/onboard/stats", 200, params={"version": 2})
    assert st["version"] == 2 and st["versions"][0]["nodes"][0]["waiting_now"] == 5

    # control: pause, pause again (no change), resume, stop; then stopped is final
    assert c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/pause", 200)["status"] == "paused"
    assert c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/pause", 200)["status"] == "paused"
    assert c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/resume", 200)["status"] == "active"
    assert c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/stop", 200)["status"] == "stopped"
    err = c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/resume", 409)
    assert err["field"] == "action"
    c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/onboard/explode", 400)
    c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/nope/pause", 404)
    listed = c("GET", "/api/journeys", "/api/journeys", 200)["journeys"]
    assert [(j["id"], j["status"], j["version"]) for j in listed] == [("onboard", "stopped", 2)]


def test_the_idempotency_key_is_the_start(http, h, doc, people):
    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    c("POST", "/api/journeys", "/api/journeys", 201, json=ONCE)
    path, tpl = "/api/journeys/ping/start", "/api/journeys/{journey_id}/start"
    who = {"profile_id": people["u0"]}
    first = c("POST", tpl, path, 200, json=who, headers={"Idempotency-Key": "order-1"})
    assert first["entered"] is True and first["status"] == "exited"  # through the trait step to the exit at once
    again = c("POST", tpl, path, 200, json=who, headers={"Idempotency-Key": "order-1"})
    assert again["entered"] is False and again["instance_id"] == first["instance_id"]
    other = c("POST", tpl, path, 200, json=who, headers={"Idempotency-Key": "order-2"})
    assert other["entered"] is True and other["instance_id"] != first["instance_id"]
    # without a key, each call is its own start
    assert c("POST", tpl, path, 200, json=who)["entered"] is True
    assert c("POST", tpl, path, 200, json=who)["entered"] is True
    st = c("GET", "/api/journeys/{journey_id}/stats", "/api/journeys/ping/stats", 200)
    assert (st["totals"]["entered"], st["totals"]["exited"]) == (4, 4)
    mark = st["versions"][0]["nodes"][0]
    assert (mark["entered"], mark["passed"], mark["pass_rate"]) == (4, 4, 1.0)
    mine = c("GET", "/api/profiles/{profile_id}/journeys", f"/api/profiles/{people['u0']}/journeys", 200)
    assert len(mine["instances"]) == 4


def test_broadcasts_have_their_own_endpoint_stats_and_messages(http, h, doc, people, workspace):
    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    spring = {"id": "spring", "template": "offer", "channel": "in_app", "schedule": {"at": "2030-01-01T09:00:00Z"},
              "goal": {"event": {"event": "Order Completed"}, "within": "7d"}, "holdout": 10}  # fmt: skip
    err = c("POST", "/api/broadcasts", "/api/broadcasts", 400, json={**spring, "holdout": 100})
    assert err["field"] == "holdout"
    err = c("POST", "/api/broadcasts", "/api/broadcasts", 400, json={**spring, "colour": "red"})
    assert err["field"] == "colour"
    for bad in ({**spring, "holdout_by": "user_id"}, {**spring, "holdout_by": ["identifier"]}):
        err = c("POST", "/api/broadcasts", "/api/broadcasts", 400, json=bad)
        assert err["field"] == "holdout_by" and "profile or identifier" in err["message"], err
    err = c("POST", "/api/broadcasts", "/api/broadcasts", 400,
            json={**spring, "holdout": None, "holdout_by": "identifier"})
    assert err["field"] == "holdout_by" and "give holdout too" in err["message"], err
    dry = c("POST", "/api/broadcasts", "/api/broadcasts", 200, json=spring, params={"dry_run": "true"})
    assert dry["kind"] == "broadcast" and dry["dry_run"] is True
    assert c("GET", "/api/broadcasts", "/api/broadcasts", 200) == {"broadcasts": []}
    assert c("POST", "/api/broadcasts", "/api/broadcasts", 201, json=spring)["version"] == 1
    # a message the broadcast sent (queued through the outbox with its journey id)
    r = http.post("/api/messages", json={"profile_id": people["u0"], "template": "offer", "channel": "in_app",
                                         "journey_id": "spring"}, headers=h)  # fmt: skip
    assert r.status_code in (200, 201), r.text
    got = c("GET", "/api/broadcasts/{broadcast_id}", "/api/broadcasts/spring", 200)
    assert (got["kind"], got["entry"], got["status"]) == ("broadcast", "schedule", "active")
    assert got["runs"] is not None and got["stats"]["totals"]["entered"] == 0
    assert [n["node"] for n in got["stats"]["versions"][0]["nodes"]] == ["arm", "send", "done"]
    assert got["messages"]["total"] == 1 and sum(got["messages"]["by_status"].values()) == 1
    assert got["messages"]["reached"].get("queued") == 1
    assert [b["id"] for b in c("GET", "/api/broadcasts", "/api/broadcasts", 200)["broadcasts"]] == ["spring"]
    assert c("GET", "/api/journeys", "/api/journeys", 200) == {"journeys": []}

    # one id space, two endpoints: each names the other
    err = c("GET", "/api/journeys/{journey_id}", "/api/journeys/spring", 404)
    assert "/api/broadcasts/spring" in err["message"] and err["field"] == "journey_id"
    c("POST", "/api/journeys/{journey_id}/{action}", "/api/journeys/spring/pause", 404)
    c("POST", "/api/journeys", "/api/journeys", 409, json={"id": "spring", "entry": {"api": {}}, "start": "done",
                                                            "nodes": {"done": {"type": "exit"}}})  # fmt: skip
    c("POST", "/api/journeys", "/api/journeys", 201, json=ONCE)
    err = c("GET", "/api/broadcasts/{broadcast_id}", "/api/broadcasts/ping", 404)
    assert "/api/journeys/ping" in err["message"] and err["field"] == "broadcast_id"
    c("POST", "/api/broadcasts", "/api/broadcasts", 409, json={**spring, "id": "ping"})

    tpl = "/api/broadcasts/{broadcast_id}/{action}"
    assert c("POST", tpl, "/api/broadcasts/spring/pause", 200)["status"] == "paused"
    assert c("POST", tpl, "/api/broadcasts/spring/archive", 200)["status"] == "archived"
    c("POST", tpl, "/api/broadcasts/spring/resume", 409)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the key is refused before any store is touched
def test_a_write_key_opens_none_of_them(http, workspace, people, doc):
    ops = sorted(doc.operations("journeys"))
    assert len(ops) == 13, ops
    for method, path in ops:
        url = path.replace("{journey_id}", "onboard").replace("{broadcast_id}", "spring").replace(
            "{action}", "pause").replace("{profile_id}", people["u0"])  # fmt: skip
        for key in (workspace["server_write_key"], workspace.get("client_write_key") or "wk_x"):
            r = http.request(method.upper(), url, params={"node": "pause"}, json={} if method == "post" else None,
                             headers={"Authorization": f"Bearer {key}"})  # fmt: skip
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", (method, path, r.text)
            doc.check(r, path)


def test_a_broadcast_sent_now_reaches_everybody_and_counts_it(http, h, doc, people):
    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    c("POST", "/api/broadcasts", "/api/broadcasts", 201, json={"id": "flash", "template": "offer", "channel": "in_app"})

    def sent():  # the in-process worker runs the schedule: everybody starts, is sent the offer and exits
        got = c("GET", "/api/broadcasts/{broadcast_id}", "/api/broadcasts/flash", 200)
        return got if got["messages"]["total"] == 5 and got["stats"]["totals"]["exited"] == 5 else None

    got = wait_until(sent, timeout=30)
    assert got["runs"][0]["started"] == 5 and got["stats"]["totals"]["entered"] == 5
    send = {n["node"]: n for n in got["stats"]["versions"][0]["nodes"]}["send"]
    assert (send["entered"], send["passed"], send["pass_rate"]) == (5, 5, 1.0)
    assert got["messages"]["reached"]["queued"] == 5
    mine = c("GET", "/api/profiles/{profile_id}/journeys", f"/api/profiles/{people['u2']}/journeys", 200)
    assert [(i["journey_id"], i["status"]) for i in mine["instances"]] == [("flash", "exited")]


def test_stopping_a_broadcast_withdraws_what_waits_out_quiet_hours(http, h, doc, people):
    """A broadcast stopped while its messages wait in the outbox (quiet hours here) sends none of them: each is
    withdrawn, and the broadcast's messages say how many (decision 0045)."""
    from datetime import UTC, datetime, timedelta

    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    now = datetime.now(UTC)
    quiet = {"start": (now - timedelta(hours=1)).strftime("%H:%M"), "end": (now + timedelta(hours=2)).strftime("%H:%M"),
             "channels": ["in_app"]}  # fmt: skip
    r = http.patch("/api/workspace/settings", json={"messaging": {"timezone": "UTC", "quiet_hours": quiet}}, headers=h)
    assert r.status_code == 200, r.text
    c("POST", "/api/broadcasts", "/api/broadcasts", 201, json={"id": "late", "template": "offer", "channel": "in_app"})
    got = wait_until(lambda: (g := c("GET", "/api/broadcasts/{broadcast_id}", "/api/broadcasts/late", 200))[
        "messages"]["total"] == 5 and g, timeout=30)  # fmt: skip
    assert got["messages"]["by_status"] == {"queued": 5} and got["messages"]["withdrawn"] == 0
    assert c("POST", "/api/broadcasts/{broadcast_id}/{action}", "/api/broadcasts/late/stop", 200)["status"] == "stopped"
    got = wait_until(lambda: (g := c("GET", "/api/broadcasts/{broadcast_id}", "/api/broadcasts/late", 200))[
        "messages"]["withdrawn"] == 5 and g, timeout=30)  # fmt: skip
    assert got["messages"]["by_status"] == {"skipped": 5} and got["messages"]["reached"].get("sent") is None


@pytest.mark.parametrize("path", ["/api/journeys/onboard/definition?version=1099511627776",
                                  "/api/journeys/onboard/stats?version=1099511627776",
                                  "/api/journeys/onboard/people?node=pause&version=1099511627776"])  # fmt: skip
def test_a_version_beyond_any_is_a_4xx_naming_it(http, workspace, h, path):
    """Past PostgreSQL's integer: an error naming the version, never a database error (found by review)."""
    assert http.post("/api/journeys", json=WAITER, headers=h).status_code == 201
    r = http.get(path, headers=h)
    assert 400 <= r.status_code < 500 and "version" in r.text, (r.status_code, r.text[:200])


def test_hostile_input_is_a_4xx_naming_the_field(http, h, doc, people):
    """Found by the hostile-input probe: a migration checked only against the people inside, a broadcast's errors
    naming the journey that runs it, webhook urls and huge values accepted, 404s of a start without a field."""
    c = lambda *a, **kw: call(http, doc, h, *a, **kw)  # noqa: E731
    pub = lambda status, body, **params: c("POST", "/api/journeys", "/api/journeys", status, json=body,  # noqa: E731
                                           params=params)  # fmt: skip
    c("POST", "/api/journeys", "/api/journeys", 201, json=WAITER)
    v2 = {**WAITER, "start": "hold", "nodes": {"hold": {"type": "delay", "for": "1d", "next": "mark"},
                                               "mark": WAITER["nodes"]["mark"], "done": WAITER["nodes"]["done"]}}
    # nobody is inside: the mapping is checked against the two versions all the same, dry run or not
    for dry in ("true", "false"):
        for migrate, field, why in [
            ("nope:nope2", "migrate.nope", "no node 'nope'"),
            ("pause:nope2", "migrate.pause", "no node 'nope2' in the new version"),
            ("mark:done", "migrate.mark", "update_trait node"),
            ("pause:mark", "migrate.pause", "same waiting kind"),
            ("pause:hold,pause:done", "migrate.pause", "migrated twice"),
            (["pause:hold", "pause:mark"], "migrate.pause", "migrated twice"),
            ("pause", "migrate", "old_node:new_node"),
        ]:
            err = pub(400, v2, migrate=migrate, dry_run=dry)
            assert err["field"] == field and why in err["message"], (migrate, err)
    assert pub(200, v2, migrate="pause:hold,pause:hold", dry_run="true")["moving"] == 0

    # a broadcast's errors name its own fields, as sent
    spring = {"id": "spring", "template": "offer", "channel": "in_app", "schedule": {"at": "2030-01-01T09:00:00Z"}}
    for bad, field in [({"template": "nope"}, "template"), ({"segment": "nope"}, "segment"),
                       ({"channel": "sms"}, "channel"), ({"schedule": {"at": "soon"}}, "schedule.at"),
                       ({"holdout": 100, "goal": {"event": {"event": "Order Completed"}, "within": "7d"}}, "holdout"),
                       ({"holdout": 10, "goal": {"event": {"event": "Order Completed"}}}, "holdout"),
                       ({"data": {"code": "x" * 2**20}}, "data")]:  # fmt: skip
        err = c("POST", "/api/broadcasts", "/api/broadcasts", 400, json={**spring, **bad})
        assert err["field"] == field and err["message"].startswith(field), (bad, err)

    # a definition's free values and urls
    hook = {"id": "hook", "entry": {"api": {"key": "order_id"}}, "start": "call",
            "nodes": {"call": {"type": "webhook", "url": "javascript:alert(1)", "next": "done"},
                      "done": {"type": "exit"}}}  # fmt: skip
    for url in ("javascript:alert(1)", "file:///etc/passwd", "/relative", "http://exa mple.com/", "http://:80/"):
        err = pub(400, {**hook, "nodes": {**hook["nodes"], "call": {**hook["nodes"]["call"], "url": url}}})
        assert err["field"] == "nodes.call.url", (url, err)
    err = pub(400, {**WAITER, "nodes": {**WAITER["nodes"], "mark": {**WAITER["nodes"]["mark"], "value": "x" * 2**20}}})
    assert err["field"] == "nodes.mark.value" and len(err["message"]) < 300, err["message"][:300]
    split = {"type": "split", "arms": [{"name": "a", "weight": 50, "holdout": True},
                                       {"name": "b", "weight": 50, "holdout": True}]}  # fmt: skip
    err = pub(400, {**WAITER, "goal": {"event": {"event": "Order Completed"}, "within": "7d"},
                    "nodes": {**WAITER["nodes"], "pause": {**split, "max_visits": 1, "overflow": "mark"}}})
    assert err["field"] == "nodes.pause.arms" and "holdout" in err["message"], err

    # a start: unknown journey and person are 404s naming the field; a huge key or data a 400
    start = "/api/journeys/{journey_id}/start"
    err = c("POST", start, "/api/journeys/nobody/start", 404, json={"profile_id": people["u0"]})
    assert err["field"] == "journey_id", err
    err = c("POST", start, "/api/journeys/onboard/start", 404, json={"profile_id": "p_nobody"})
    assert err["field"] == "profile_id", err
    err = c("GET", "/api/profiles/{profile_id}/journeys", "/api/profiles/p_nobody/journeys", 404)
    assert err["field"] == "profile_id", err
    keyed = {**hook, "nodes": {**hook["nodes"], "call": {"type": "update_trait", "trait": "t", "value": 1,
                                                          "next": "done"}}}  # fmt: skip
    pub(201, keyed)
    err = c("POST", start, "/api/journeys/hook/start", 400, json={"profile_id": people["u0"],
                                                                  "data": {"order_id": "o" * 2**20}})  # fmt: skip
    assert err["field"] == "data", err
    err = c("POST", start, "/api/journeys/hook/start", 400, json={"profile_id": people["u0"],
                                                                  "data": {"order_id": "o" * 201}})  # fmt: skip
    assert err["field"] == "data.order_id", err
    assert c("POST", start, "/api/journeys/hook/start", 200, json={"profile_id": people["u0"],
                                                                   "data": {"order_id": "o" * 200}})["entered"]
