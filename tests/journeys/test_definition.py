"""The journey definition language: what parses, what is refused and exactly where, references, schedules."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import orjson
import pytest

from chorus.errors import ChorusError
from chorus.journeys import definition as d
from tests.journeys.driver import SEEDS, seed

BASE = {
    "id": "cart",
    "entry": {"event": {"event": "Product Added", "key": "cart_id"}},
    "reentry": "per_key",
    "goal": {"event": {"event": "Order Completed"}, "within": "7d"},
    "start": "wait_cart",
    "nodes": {
        "wait_cart": {
            "type": "wait",
            "branches": [
                {"name": "bought", "event": {"event": "Order Completed", "same": ["cart_id"]}, "next": "done"},
                {"name": "emptied", "event": {"event": "Cart Emptied", "where": [{"property": "n", "equals": 0}]},
                 "next": "done"},
            ],
            "timeout": {"after": "1h", "next": "remind"},
        },
        "remind": {"type": "message", "template": "cart", "channel": "auto", "next": "done"},
        "done": {"type": "exit"},
    },
}  # fmt: skip


def changed(path: list, value, base: dict | None = None) -> dict:
    """BASE with the value at ``path`` replaced (``...`` deletes the key)."""
    doc = copy.deepcopy(base or BASE)
    cur = doc
    for part in path[:-1]:
        cur = cur[part]
    if value is ...:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


def error(doc: dict) -> ChorusError:
    with pytest.raises(ChorusError) as exc:
        d.parse(doc)
    return exc.value


def test_base_parses_and_round_trips():
    defn = d.parse(BASE)
    assert defn.entry_key == "cart_id"
    assert [n.id for n in defn.nodes] == ["done", "remind", "wait_cart"]  # a map: kept sorted by id
    assert d.parse(d.to_json(defn)) == defn
    assert d.to_json(d.parse(d.to_json(defn))) == d.to_json(defn)


@pytest.mark.parametrize("name", SEEDS)
def test_seed_definitions_round_trip_through_json_and_yaml(name):
    import yaml

    defn = seed(name)
    canonical = d.to_json(defn)
    assert d.parse(orjson.loads(orjson.dumps(canonical))) == defn
    assert d.parse_yaml(yaml.safe_dump(canonical)) == defn
    splits = [n for n in defn.nodes if isinstance(n.body, d.Split)]
    assert any(a.holdout for n in splits for a in n.body.arms), "every seed scenario has a holdout arm"


# (path to change, new value, the error's field, a fragment of the message)
REFUSED = [
    (["nodes", "wait_cart", "branches", 1, "event", "where", 0, "equals"], [1],
     "nodes.wait_cart.branches[1].event.where[0].equals", "a value is text, a number, true or false"),
    (["nodes", "wait_cart", "branches", 0, "event", "window"], "7d",
     "nodes.wait_cart.branches[0].event.window", "takes no window"),
    (["nodes", "wait_cart", "branches", 0, "event", "same"], [], "nodes.wait_cart.branches[0].event.same",
     "list of 1 to 10"),
    (["nodes", "wait_cart", "branches", 0, "next"], "nowhere", "nodes.wait_cart.branches[0].next",
     "no node 'nowhere'"),
    (["nodes", "wait_cart", "branches", 0, "name"], "timeout", "nodes.wait_cart.branches[0].name", "used twice"),
    (["nodes", "wait_cart", "branches", 1, "name"], "bought", "nodes.wait_cart.branches[1].name", "used twice"),
    (["nodes", "wait_cart", "timeout"], ..., "nodes.wait_cart.timeout", "needs a timeout"),
    (["nodes", "wait_cart", "timeout", "after"], "1 hour", "nodes.wait_cart.timeout.after", "is not a duration"),
    (["nodes", "wait_cart", "branches"], [], "nodes.wait_cart.branches", "1 to 20 branches"),
    (["nodes", "remind", "type"], "sms", "nodes.remind.type", "a node's type is one of"),
    (["nodes", "remind", "channel"], "fax", "nodes.remind.channel", "'fax' is not a channel: give auto, or one of"),
    (["nodes", "remind", "channel"], ["sms", "pigeon"], "nodes.remind.channel[1]", "a channel"),
    (["nodes", "remind", "kind"], "promo", "nodes.remind.kind", "kind is one of marketing, transactional"),
    (["nodes", "remind", "topic"], "a:b", "nodes.remind.topic", "a topic is a name"),
    (["nodes", "remind", "next"], ..., "nodes.remind.next", "name the node that comes next"),
    (["nodes", "remind", "colour"], "red", "nodes.remind.colour", "unknown key 'colour'"),
    (["nodes", "remind", "data"], [1], "nodes.remind.data", "data is a JSON object"),
    (["nodes", "remind", "overflow"], "done", "nodes.remind.overflow", "set max_visits"),
    (["nodes", "remind", "max_visits"], 0, "nodes.remind.max_visits", "from 1 to 1000"),
    (["nodes", "done", "next"], "remind", "nodes.done.next", "unknown key 'next'"),
    (["nodes", "bad id!"], {"type": "exit"}, "nodes.bad id!", "a node id is"),
    (["nodes", "orphan"], {"type": "exit"}, "nodes.orphan", "cannot be reached from start ('wait_cart')"),
    (["start"], "remind2", "start", "no node 'remind2'"),
    (["start"], ..., "start", "a journey needs start"),
    (["id"], "", "id", "a journey id is"),
    (["entry"], {"event": {"event": "A"}, "segment": "s"}, "entry", "exactly one key"),
    (["entry"], {"webhook": {}}, "entry", "unknown kind 'webhook'"),
    (["entry", "event", "where"], [{"property": "x", "within_last": "1d"}], "entry.event.where[0].within_last",
     "does not apply here"),
    (["entry", "event", "same"], ["x"], "entry.event.same", "unknown key 'same'"),
    (["entry", "event", "event"], "", "entry.event.event", "an event name must be non-empty text"),
    (["reentry"], "sometimes", "reentry", "reentry is one of never, after_exit, cooldown, per_key"),
    (["reentry"], "cooldown", "reentry", 'give the cool-down: {"cooldown": "7d"}'),
    (["reentry"], {"cooldown": "7 days"}, "reentry.cooldown", "is not a duration"),
    (["goal", "within"], "forever", "goal.within", "is not a duration"),
    (["goal"], {"segment": {"joined": "vip"}}, "goal.segment.joined", "unknown key 'joined'"),
    (["goal", "event", "same"], [{"property": "a"}], "goal.event.same[0].entry", "must be non-empty text"),
    (["exit"], [], "exit", "list of 1 to 20 criteria"),
    (["exit"], [{"event": {"event": "X"}}, {"list": "y"}], "exit[1]", "unknown kind 'list'"),
    (["exit_on_goal"], "yes", "exit_on_goal", "true or false"),
    (["nodes"], {}, "nodes", "node id -> node"),
    (["colour"], 1, "journey.colour", "unknown key 'colour'"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "field", "why"), REFUSED, ids=[x[2] for x in REFUSED])
def test_refused_with_the_exact_path(path, value, field, why):
    exc = error(changed(path, value))
    assert exc.field == field, exc.message
    assert exc.message.startswith(f"{field}: ")
    assert why in exc.message


def test_per_key_needs_a_key():
    doc = changed(["entry", "event", "key"], ...)
    assert error(doc).field == "reentry"


NODES = {
    "delay": [
        ({"type": "delay", "for": "1h", "at": "09:00", "next": "done"}, "nodes.n", "one of for"),
        ({"type": "delay", "at": "9am", "next": "done"}, "nodes.n.at", "HH:MM"),
        ({"type": "delay", "at": "24:00", "next": "done"}, "nodes.n.at", "HH:MM"),
        ({"type": "delay", "at": "09:00", "weekdays": ["mon", "fri", "sunday"], "next": "done"},
         "nodes.n.weekdays[2]", "a weekday is one of"),
        ({"type": "delay", "for": "1h", "weekdays": ["mon"], "next": "done"}, "nodes.n.weekdays",
         "weekdays does not go with for"),
        ({"type": "delay", "until": {"trait": "birthday"}, "offset": "1 day", "next": "done"}, "nodes.n.offset",
         "is not a duration"),
        ({"type": "delay", "until": {"column": "x"}, "next": "done"}, "nodes.n.until", "unknown kind 'column'"),
        ({"type": "delay", "until": {"property": "x"}, "missing": "nope", "next": "done"}, "nodes.n.missing",
         "no node 'nope'"),
        ({"type": "delay", "for": "20y", "next": "done"}, "nodes.n.for", "is not a duration"),
    ],
    "condition": [
        ({"type": "condition", "if": {"trait": {"name": "plan", "gt": "gold"}}, "then": "done", "else": "done"},
         "nodes.n.if.trait.gt", "takes a number"),
        ({"type": "condition", "if": {"and": [{"segment": "a"}, {"sgment": "b"}]}, "then": "done", "else": "done"},
         "nodes.n.if.and[1]", "unknown condition 'sgment'"),
        ({"type": "condition", "then": "done", "else": "done"}, "nodes.n.if", "give if"),
        ({"type": "condition", "entry": {"property": "channel", "within_next": "1d"}, "then": "done",
          "else": "done"}, "nodes.n.entry.within_next", "does not apply here"),
        ({"type": "condition", "if": {"segment": "a"}, "then": "done"}, "nodes.n.else", "name the node"),
    ],
    "split": [
        ({"type": "split", "arms": [{"name": "a", "weight": 50, "next": "done"}]}, "nodes.n.arms", "2 to 20 arms"),
        ({"type": "split", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                    {"name": "b", "weight": 40, "next": "done"}]}, "nodes.n.arms", "(here 90)"),
        ({"type": "split", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                    {"name": "a", "weight": 50, "next": "done"}]}, "nodes.n.arms[1].name", "twice"),
        ({"type": "split", "arms": [{"name": "a", "weight": 0.5, "next": "done"},
                                    {"name": "b", "weight": 50, "next": "done"}]}, "nodes.n.arms[0].weight", "whole"),
        ({"type": "split", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                    {"name": "h", "weight": 50, "holdout": True, "next": "done"}]},
         "nodes.n.arms[1].next", "a holdout arm gets nothing"),
        ({"type": "split", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                    {"name": "h", "weight": 50, "holdout": "yes"}]},
         "nodes.n.arms[1].holdout", "true or false"),
        ({"type": "split", "by": "user_id", "arms": [{"name": "a", "weight": 50, "next": "done"},
                                                     {"name": "b", "weight": 50, "next": "done"}]},
         "nodes.n.by", "a split is by profile or identifier"),
        ({"type": "split", "by": ["identifier"], "arms": [{"name": "a", "weight": 50, "next": "done"},
                                                          {"name": "b", "weight": 50, "next": "done"}]},
         "nodes.n.by", "a split is by profile or identifier"),
    ],
    "message": [
        ({"type": "message", "next": "done"}, "nodes.n.template", "an id must be non-empty text"),
    ],
    "update_trait": [
        ({"type": "update_trait", "trait": "computed.clv", "value": 1, "next": "done"}, "nodes.n.trait",
         "computed traits"),
        ({"type": "update_trait", "trait": "vip", "next": "done"}, "nodes.n.value", "give the value"),
    ],
    "list": [({"type": "list", "list": "l", "action": "toggle", "next": "done"}, "nodes.n.action", "add, remove")],
    "audience": [({"type": "audience", "action": "add", "next": "done"}, "nodes.n.audience", "an id")],
    "webhook": [
        ({"type": "webhook", "url": "ftp://x", "next": "done"}, "nodes.n.url", "http:// or https://"),
        ({"type": "webhook", "url": "https://x.test/a b", "next": "done"}, "nodes.n.url", "a space"),
        ({"type": "webhook", "url": "https://x.test", "method": "GET", "next": "done"}, "nodes.n.method", "POST"),
    ],
    "wait": [
        ({"type": "wait", "branches": [{"message": {"status": "opened", "node": "done"}, "next": "done"}],
          "timeout": {"after": "1d", "next": "done"}}, "nodes.n.branches[0].message.node", "not a message node"),
        ({"type": "wait", "branches": [{"message": {"status": "queued"}, "next": "done"}],
          "timeout": {"after": "1d", "next": "done"}}, "nodes.n.branches[0].message.status", "a status is one of"),
        ({"type": "wait", "branches": [{"segment": {"entered": "a"}, "event": {"event": "b"}, "next": "done"}],
          "timeout": {"after": "1d", "next": "done"}}, "nodes.n.branches[0]", "one of event, segment or message"),
        ({"type": "wait", "branches": [{"segment": {"entered": "a", "exited": "b"}, "next": "done"}],
          "timeout": {"after": "1d", "next": "done"}}, "nodes.n.branches[0].segment", "give {"),
    ],
}  # fmt: skip
NODE_CASES = [(body, field, why) for cases in NODES.values() for body, field, why in cases]


def one_node(body: dict) -> dict:
    return {"id": "j", "entry": {"api": {}}, "start": "n", "nodes": {"n": body, "done": {"type": "exit"}}}


@pytest.mark.parametrize(("body", "field", "why"), NODE_CASES, ids=[f"{b['type']}:{f}" for b, f, _ in NODE_CASES])
def test_node_refused_with_the_exact_path(body, field, why):
    exc = error(one_node(body))
    assert exc.field == field, exc.message
    assert why in exc.message, exc.message


def test_every_node_type_has_a_refusal_case():
    assert set(NODES) | {"exit"} == set(d.NODE_TYPES)


def test_holdout_needs_a_goal_with_a_window():
    doc = one_node({"type": "split", "arms": [{"name": "a", "weight": 90, "next": "done"},
                                              {"name": "h", "weight": 10, "holdout": True}]})  # fmt: skip
    assert error(doc).field == "nodes.n.arms[1].holdout"
    doc["goal"] = {"event": {"event": "Order Completed"}}
    assert error(doc).field == "nodes.n.arms[1].holdout"
    doc["goal"]["within"] = "7d"
    assert d.parse(doc).goal.within.text() == "7d"


def test_a_split_whose_arms_are_all_holdouts_is_refused():
    """Nobody could ever go on from it (found by the hostile-input probe)."""
    doc = one_node({"type": "split", "arms": [{"name": "h1", "weight": 50, "holdout": True},
                                              {"name": "h2", "weight": 50, "holdout": True}]})  # fmt: skip
    doc["goal"] = {"event": {"event": "Order Completed"}, "within": "7d"}
    doc["nodes"]["n"]["max_visits"] = 1
    doc["nodes"]["n"]["overflow"] = "done"  # done stays reachable: the refusal is the split's own
    exc = error(doc)
    assert exc.field == "nodes.n.arms" and "every arm is a holdout" in exc.message, exc.message


# -- webhook addresses (found by the hostile-input probe) ---------------------------------------------------------
@pytest.mark.parametrize(("url", "why"), [
    ("javascript:alert(1)", "http:// or https://"),
    ("file:///etc/passwd", "http:// or https://"),
    ("/hooks/relative", "http:// or https://"),
    ("example.com/hook", "http:// or https://"),
    ("//example.com/hook", "http:// or https://"),
    ("http:example.com", "http:// or https://"),
    ("mailto:ops@example.com", "http:// or https://"),
    ("http://", "no host"),
    ("http://:8080/x", "no host"),
    ("https://@/x", "no host"),
    ("https://?q=1", "no host"),
    ("https://exa mple.com/", "a space"),
    ("https://example.com/a\tb", "a space"),
    ("https://example.com/\x7f", "control character"),
    ("https://exa%20mple.com/", "not a host name"),
    ("https://a..b/", "not a host name"),
    ("https://-/", "not a host name"),
    ("https://example.com:99999/", "not a valid URL"),
    ("https://example.com:port/", "not a valid URL"),
    ("https://[::1/", "not a valid URL"),
    ("https://example.com\\@evil.test/", "backslash"),
])  # fmt: skip
def test_a_webhook_url_is_refused_naming_the_node_and_field(url, why):
    exc = error(one_node({"type": "webhook", "url": url, "next": "done"}))
    assert exc.field == "nodes.n.url" and why in exc.message, exc.message
    assert exc.message.startswith("nodes.n.url: the url")


@pytest.mark.parametrize("url", [
    "https://example.com/hook", "HTTPS://Example.COM/hook?a=1#b", "http://127.0.0.1:8080/hook",
    "http://localhost/x", "http://[::1]:9000/", "http://10.0.0.7/hook", "https://bücher.example/x",
    "https://user:secret@example.com/x", "https://example.com./x",
])  # fmt: skip
def test_a_webhook_url_to_any_host_is_accepted_private_ones_are_refused_at_delivery(url):
    """Loopback and private hosts are allowed here: delivery refuses them unless the workspace allows them
    (``settings.journeys.webhooks.allow_private``), and the runtime's check is the same function."""
    from chorus.journeys import webhooks

    assert d.parse(one_node({"type": "webhook", "url": url, "next": "done"})).node("n").body.url == url
    assert webhooks.check_url(url) is None


def test_a_webhook_url_is_required_not_null():
    exc = error(one_node({"type": "webhook", "url": None, "next": "done"}))
    assert exc.field == "nodes.n.url" and "is required" in exc.message and "None" not in exc.message


# -- sizes of free values (found by the hostile-input probe) ------------------------------------------------------
MB = "x" * 2**20


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "update_trait", "trait": "note", "value": MB, "next": "done"}, "nodes.n.value"),
    ({"type": "update_trait", "trait": "note", "value": {"a": [MB]}, "next": "done"}, "nodes.n.value"),
    ({"type": "message", "template": "t", "data": {"code": MB}, "next": "done"}, "nodes.n.data"),
    ({"type": "webhook", "url": "https://example.com/", "data": {"blob": MB}, "next": "done"}, "nodes.n.data"),
    ({"type": "webhook", "url": "https://example.com/" + MB, "next": "done"}, "nodes.n.url"),
])  # fmt: skip
def test_a_huge_value_in_a_step_is_refused_naming_it(body, field):
    exc = error(one_node(body))
    assert exc.field == field and ("KB" in exc.message or "at most" in exc.message), exc.message[:200]
    assert len(exc.message) < 300


def test_values_up_to_the_bound_are_accepted():
    value = "x" * (d.MAX_VALUE - 2)  # with its quotes, exactly the bound
    assert d.parse(one_node({"type": "update_trait", "trait": "note", "value": value, "next": "done"}))
    exc = error(one_node({"type": "update_trait", "trait": "note", "value": value + "x", "next": "done"}))
    assert exc.field == "nodes.n.value"


@pytest.mark.parametrize("where", [
    ["nodes", "remind", "data"], ["nodes"], [], ["entry", "event"], ["nodes", "remind"],
])  # fmt: skip
def test_a_huge_key_is_refused_without_echoing_it(where):
    doc = copy.deepcopy(BASE)
    doc["nodes"]["remind"]["data"] = {}
    cur = doc
    for part in where:
        cur = cur[part]
    cur["k" * 2**20] = {"type": "exit"} if where == ["nodes"] else 1
    exc = error(doc)
    assert "a key is at most 200 characters" in exc.message and len(exc.message) < 400, exc.message[:300]
    assert exc.field == (".".join(where) or "journey")


def test_the_entry_key_and_names_are_bounded():
    exc = error(changed(["entry", "event", "key"], "k" * 2**20))
    assert exc.field == "entry.event.key" and "at most 200" in exc.message and len(exc.message) < 200
    exc = error(changed(["name"], "n" * 2**20))
    assert exc.field == "name" and len(exc.message) < 200


# -- no Python reprs in messages (found by the hostile-input probe: "None is not a duration") ---------------------
@pytest.mark.parametrize("value", [None, 5, 1.5, True, [], ["1h"], {}, {"h": 1}])
@pytest.mark.parametrize(("path", "field"), [
    (["nodes", "wait_cart", "timeout", "after"], "nodes.wait_cart.timeout.after"),
    (["goal", "within"], "goal.within"),
    (["reentry"], "reentry.cooldown"),
])  # fmt: skip
def test_a_missing_or_mistyped_duration_is_named_not_repred(path, field, value):
    doc = changed(path, {"cooldown": value} if path == ["reentry"] else value)
    exc = error(doc)
    assert exc.field == field, exc.message
    assert repr(value) not in exc.message and "None" not in exc.message, exc.message
    assert ("is required" if value is None else "is text") in exc.message, exc.message


@pytest.mark.parametrize("value", [None, 20260302, ["2026-03-02"], {"day": 2}])
def test_a_missing_or_mistyped_date_is_named_not_repred(value):
    exc = error({"id": "b", "entry": {"schedule": {"at": value}}, "start": "x", "nodes": {"x": {"type": "exit"}}})
    assert exc.field == "entry.schedule.at" and repr(value) not in exc.message, exc.message
    assert ("is required" if value is None else "is text") in exc.message, exc.message


def test_a_long_duration_text_is_not_echoed():
    exc = error(changed(["goal", "within"], "7" * 2**20 + "d"))
    assert exc.field == "goal.within" and len(exc.message) < 200, exc.message[:200]


def test_names_in_messages_are_quoted_not_repred():
    exc = error(changed(["start"], "nowhere"))
    assert exc.message == "start: no node 'nowhere' in this journey"


# -- cycles ------------------------------------------------------------------------------------------------------
def loop(**extra) -> dict:
    """a -> b -> a, b being a delay; extra fields go on node a."""
    return {
        "id": "j", "entry": {"api": {}}, "start": "a",
        "nodes": {
            "a": {"type": "message", "template": "t", "next": "b", **extra},
            "b": {"type": "delay", "for": "1d", "next": "a"},
        },
    }  # fmt: skip


def test_a_loop_needs_a_bound():
    exc = error(loop())
    assert exc.field == "nodes.b.next"
    assert "the loop a → b → a must pass a node with max_visits" in exc.message


def test_a_bounded_loop_through_a_delay_is_accepted():
    defn = d.parse(loop(max_visits=3))
    assert defn.node("a").max_visits == 3


def test_a_bounded_loop_without_a_wait_is_refused():
    doc = loop(max_visits=3)
    doc["nodes"]["b"] = {"type": "update_trait", "trait": "x", "value": 1, "next": "a"}
    exc = error(doc)
    assert exc.field == "nodes.b.next"
    assert "must pass a node with a delay or wait" in exc.message


def test_a_self_loop_and_an_overflow_loop_are_checked():
    doc = {"id": "j", "entry": {"api": {}}, "start": "a",
           "nodes": {"a": {"type": "delay", "for": "1d", "next": "a"}}}  # fmt: skip
    assert error(doc).field == "nodes.a.next"
    doc["nodes"]["a"]["max_visits"] = 2
    assert d.parse(doc)
    # the overflow target may lead back instantaneously only through a waiting node
    doc = loop(max_visits=2, overflow="c")
    doc["nodes"]["c"] = {"type": "update_trait", "trait": "x", "value": 1, "next": "a"}
    exc = error(doc)
    assert "a delay or wait" in exc.message


def test_size_is_bounded():
    nodes = {f"n{i}": {"type": "update_trait", "trait": "x", "value": i, "next": f"n{i + 1}"} for i in range(200)}
    nodes["n200"] = {"type": "exit"}
    exc = error({"id": "j", "entry": {"api": {}}, "start": "n0", "nodes": nodes})
    assert exc.field == "nodes" and "at most 200 nodes" in exc.message


def test_hostile_values_are_refused_by_path():
    assert error(changed(["name"], "a\x00b")).field == "name"
    assert error(changed(["nodes", "remind", "data"], {"n": 2**70})).field == "nodes.remind.data.n"
    assert error(changed(["nodes", "remind", "data"], {"n": float("nan")})).field == "nodes.remind.data.n"
    assert error([1]).field == "journey"


def test_yaml_errors_name_the_line():
    with pytest.raises(ChorusError) as exc:
        d.parse_yaml("id: j\nentry: [\n")
    assert "line" in exc.value.message and exc.value.field == "journey"
    with pytest.raises(ChorusError) as exc:
        d.parse_yaml("id: &a j\nname: *a\n")
    assert "aliases" in exc.value.message


# -- references ------------------------------------------------------------------------------------------------
KNOWN = {
    "templates": {"welcome_code": {"sms", "email"}, "cart_reminder": {"email", "push"}, "cart_reminder_2": {"email"},
                  "category_offer": {"email"}, "receipt": {"email", "messenger"}, "review_request": {"email"},
                  "cross_sell": {"email"}, "winback_offer": {"email"}, "winback_last_chance": {"email"},
                  "pickup_cancelled": {"push", "email", "sms"}, "delivery_offer": {"email"}},
    "segments": {"browse_abandoners", "lapsed_60d"},
    "lists": set(),
    "audiences": {"retargeting_laptops"},
}  # fmt: skip


@pytest.mark.parametrize("name", SEEDS)
def test_seed_references_check(name):
    d.check_references(seed(name), **KNOWN)


def test_references_are_reported_by_path():
    defn = seed("browse_abandonment")
    with pytest.raises(ChorusError) as exc:
        d.check_references(defn, **{**KNOWN, "segments": set()})
    assert exc.value.field == "entry.segment"
    with pytest.raises(ChorusError) as exc:
        d.check_references(defn, **{**KNOWN, "audiences": set()})
    assert exc.value.field == "nodes.retarget.audience"
    with pytest.raises(ChorusError) as exc:
        d.check_references(seed("winback"), **{**KNOWN, "segments": {"lapsed_60d"}, "templates": {}})
    assert exc.value.field == "nodes.offer.template"
    doc = one_node({"type": "condition", "if": {"or": [{"segment": "vip"}, {"list": "press"}]},
                    "then": "done", "else": "done"})  # fmt: skip
    assert [p for p, _, _ in d.references(d.parse(doc))] == ["nodes.n.if.or[0].segment", "nodes.n.if.or[1].list"]
    with pytest.raises(ChorusError) as exc:
        d.check_references(d.parse(doc), templates={}, segments={"vip"}, lists=set())
    assert exc.value.field == "nodes.n.if.or[1].list"


def test_message_channels_must_fit_the_template_variants():
    defn = seed("pickup_cancelled")
    with pytest.raises(ChorusError) as exc:
        d.check_references(defn, **{**KNOWN, "templates": {**KNOWN["templates"], "pickup_cancelled": {"email", "sms"}}})
    assert exc.value.field == "nodes.notice_push.channel[0]"
    assert "has no push variant (it has: email, sms)" in exc.value.message
    with pytest.raises(ChorusError) as exc:
        d.check_references(seed("welcome"), **{**KNOWN, "templates": {"welcome_code": {"email"}}})
    assert exc.value.field == "nodes.welcome_sms.channel"
    with pytest.raises(ChorusError) as exc:
        d.check_references(seed("winback"), **{**KNOWN, "templates": {**KNOWN["templates"], "winback_offer": set()}})
    assert exc.value.field == "nodes.offer.channel" and "no variant for any channel" in exc.value.message


# -- local times and schedules ------------------------------------------------------------------------------------
NY = ZoneInfo("America/New_York")


def test_local_instant_in_a_gap_is_the_jump_and_in_an_overlap_the_first():
    # 2026-03-08: New York jumps from 02:00 EST to 03:00 EDT (07:00 UTC)
    assert d.local_instant(date(2026, 3, 8), time(2, 30), NY) == datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert d.local_instant(date(2026, 3, 8), time(3, 0), NY) == datetime(2026, 3, 8, 7, tzinfo=UTC)
    assert d.local_instant(date(2026, 3, 8), time(9, 0), NY) == datetime(2026, 3, 8, 13, tzinfo=UTC)
    assert d.local_instant(date(2026, 3, 7), time(9, 0), NY) == datetime(2026, 3, 7, 14, tzinfo=UTC)
    # 2026-11-01: 01:30 happens twice (EDT, then EST): the first
    assert d.local_instant(date(2026, 11, 1), time(1, 30), NY) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    # Pacific/Apia skipped 30 December 2011 entirely: its 09:00 is the first valid instant, 31 December 00:00
    apia = ZoneInfo("Pacific/Apia")
    assert d.local_instant(date(2011, 12, 30), time(9), apia).astimezone(apia).date() == date(2011, 12, 31)


def test_next_local_is_inclusive_and_respects_weekdays():
    at = datetime(2026, 3, 7, 14, tzinfo=UTC)  # Saturday 09:00 in New York
    assert d.next_local(at, time(9), (), NY) == at
    assert d.next_local(at, time(9), (), NY, inclusive=False) == datetime(2026, 3, 8, 13, tzinfo=UTC)
    assert d.next_local(at, time(9), (0,), NY) == datetime(2026, 3, 9, 13, tzinfo=UTC)  # the next Monday


def schedule(**body) -> d.Schedule:
    defn = d.parse({"id": "b", "entry": {"schedule": body}, "start": "x", "nodes": {"x": {"type": "exit"}}})
    assert isinstance(defn.entry, d.Schedule)
    return defn.entry


def test_schedules():
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    one = schedule(segment="vip", at="2026-03-02T09:00:00Z")
    assert not one.recurring
    assert d.next_run(one, t0, NY) == datetime(2026, 3, 2, 9, tzinfo=UTC)
    assert d.next_run(one, datetime(2026, 3, 2, 9, tzinfo=UTC), NY) is None
    every = schedule(every="1w", start="2026-03-02T09:00:00Z")
    assert every.recurring
    assert d.next_run(every, datetime(2026, 3, 9, 9, tzinfo=UTC), NY) == datetime(2026, 3, 16, 9, tzinfo=UTC)
    local = schedule(on="2026-03-08", time="09:00")
    assert not local.recurring
    assert d.next_run(local, t0, NY) == datetime(2026, 3, 8, 13, tzinfo=UTC)
    assert d.next_run(local, t0, ZoneInfo("Europe/Paris")) == datetime(2026, 3, 8, 8, tzinfo=UTC)
    weekly = schedule(time="09:00", weekdays=["mon"], until="2026-03-16")
    runs, t = [], t0
    while (t := d.next_run(weekly, t, NY)) is not None:
        runs.append(t)
    assert runs == [datetime(2026, 3, 2, 14, tzinfo=UTC), datetime(2026, 3, 9, 13, tzinfo=UTC),
                    datetime(2026, 3, 16, 13, tzinfo=UTC)]  # fmt: skip
    assert d.to_json(d.parse(d.to_json(d.parse({"id": "b", "entry": {"schedule": {"time": "09:00"}}, "start": "x",
                                                   "nodes": {"x": {"type": "exit"}}}))))  # fmt: skip


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"at": "2026-03-02"}, "entry.schedule.at"),
        ({"every": "30m", "start": "2026-03-02T09:00:00Z"}, "entry.schedule.every"),
        ({"every": "1d"}, "entry.schedule.start"),
        ({"at": "2026-03-02T09:00:00Z", "time": "09:00"}, "entry.schedule"),
        ({"time": "09:00", "start": "2026-03-02T09:00:00Z"}, "entry.schedule.start"),
        ({"time": "09:00", "on": "2026-03-02", "until": "2026-03-01"}, "entry.schedule.until"),
        ({"time": "09:00", "on": "2026-03-02T00:00:00Z"}, "entry.schedule.on"),
    ],
)
def test_schedule_refused(body, field):
    exc = error({"id": "b", "entry": {"schedule": body}, "start": "x", "nodes": {"x": {"type": "exit"}}})
    assert exc.field == field, exc.message


def test_every_schedule_runs_on_its_grid():
    every = schedule(every="1d", start="2026-03-02T09:00:00Z")
    t0 = datetime(2026, 3, 2, 9, tzinfo=UTC)
    assert d.next_run(every, t0 - timedelta(days=3), NY) == t0
    for k in range(1, 4):
        grid = t0 + timedelta(days=k)
        assert d.next_run(every, grid - timedelta(microseconds=1), NY) == grid
        assert d.next_run(every, grid, NY) == grid + timedelta(days=1)


def test_the_reference_documents_every_node_type_and_entry():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "journeys.md").read_text()
    for kind in d.NODE_TYPES:
        assert f"`{kind}`" in text or f"### {kind}" in text, kind
    for key in ("`event`", "`segment`", "`schedule`", "`api`", "`never`", "`after_exit`", "cooldown", "`per_key`"):
        assert key in text, key


def test_yaml_limits_speak_of_journeys():
    with pytest.raises(ChorusError) as exc:
        d.parse_yaml("x" * (300 * 1024))
    assert exc.value.message == "journey: a YAML journey is text of at most 256 KB"
    with pytest.raises(ChorusError) as exc:
        d.parse_yaml("[" * 5000 + "]" * 5000)
    assert exc.value.field == "journey"
