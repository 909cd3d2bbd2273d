"""The rule language: what parses, what is refused and where, YAML, references between segments."""

from __future__ import annotations

import orjson
import pytest

from chorus.analytics import omnichannel
from chorus.errors import ChorusError
from chorus.segments import rules as r
from chorus.segments.times import Duration

BROWSE_ABANDONMENT = {
    "and": [
        {
            "performed": {
                "event": "Product Viewed",
                "where": [{"property": "category", "equals": "laptops"}],
                "window": "7d",
                "times": {"gte": 3},
            }
        },
        {
            "not": {
                "performed": {
                    "event": "Product Added",
                    "where": [{"property": "category", "equals": "laptops"}],
                    "window": "7d",
                }
            }
        },
    ]
}

# one example of every kind of condition, as docs/segments.md shows them
EXAMPLES = [
    {"trait": {"name": "plan", "equals": "gold"}},
    {"trait": {"name": "plan", "not_equals": "gold"}},
    {"trait": {"name": "country", "in": ["FR", "BE"]}},
    {"trait": {"name": "email", "contains": "@example."}},
    {"trait": {"name": "phone", "starts_with": "+33"}},
    {"trait": {"name": "email", "exists": True}},
    {"trait": {"name": "computed.clv_12m", "gt": 500}},
    {"trait": {"name": "computed.probability_alive", "lte": 0.3}},
    {"trait": {"name": "age", "between": [18, 30]}},
    {"trait": {"name": "tags", "includes": "vip"}},
    {"trait": {"name": "last_login", "within_last": "7d"}},
    {"trait": {"name": "created_at", "more_than_ago": "30d"}},
    {"trait": {"name": "renewal_date", "within_next": "3d"}},
    {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}},
    {"trait": {"name": "signup_date", "since": "2024-01-01"}},
    {"trait": {"name": "signup_date", "before": "2024-01-01T00:00:00Z"}},
    {"trait": {"name": "signup_date", "date_between": ["2024-01-01", "2024-02-01"]}},
    {"performed": {"event": "Order Completed", "where": [{"property": "total", "gt": 100}], "window": "30d"}},
    {
        "performed": {
            "event": "Order Completed",
            "window": {"since": "2024-11-29", "before": "2024-12-03"},
            "times": {"eq": 2},
        }
    },
    {"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}},
    {"performed": {"type": "page", "channel": "web", "times": {"lte": 5}}},
    {"performed": {"event": "Order Completed", "channel_group": "offline"}},
    {"first_time": {"event": "Order Completed", "more_than_ago": "365d"}},
    {"last_time": {"event": "Order Completed", "within_last": "90d"}},
    {"last_value": {"event": "Order Completed", "property": "payment", "equals": "card"}},
    {"aggregate": {"event": "Order Completed", "function": "sum", "property": "total", "window": "90d", "gte": 500}},
    {"aggregate": {"event": "Order Completed", "function": "avg", "property": "total", "between": [20, 80]}},
    {"aggregate": {"event": "Order Completed", "function": "count", "window": "365d", "gt": 3}},
    {"used_channel": {"channel": "store", "window": "30d"}},
    {"used_channel": {"channel": ["web", "app"]}},
    {"used_channel": {"channel_group": "online", "window": "7d"}},
    {"last_channel": {"in": ["web", "app"]}},
    {"channel_count": {"gte": 2, "window": "90d"}},
    {"channel_mix": {"equals": "both", "window": "365d"}},
    {"reachable": {"channel": "sms"}},
    {"reachable": {"channel": "email", "topic": "offers"}},
    {"subscribed": {"channel": "email", "topic": "newsletter"}},
    {"message": {"status": "opened", "template": "welcome", "window": "30d"}},
    {"message": {"status": ["clicked", "replied"], "campaign": "black-friday", "times": {"gte": 2}}},
    {"message": {"status": "received", "journey": "onboarding", "channel": "email"}},
    {"message": {"status": "bounced", "message_id": "msg_0123"}},
    {"message": {"status": "unsubscribed", "topic": "offers", "window": {"since": "2024-01-01"}}},
    {"segment": "vip"},
    {"bucket": {"from": 0, "to": 10}},
    {"bucket": {"from": 50, "to": 100, "seed": "holdout-2024"}},
    {"list": "csv-upload-42"},
    BROWSE_ABANDONMENT,
    {"or": [{"segment": "vip"}, {"not": {"list": "staff"}}]},
]


@pytest.mark.parametrize("raw", EXAMPLES, ids=lambda raw: next(iter(raw)))
def test_examples_parse_and_round_trip(raw):
    rule = r.parse(raw)
    assert r.to_json(rule) == raw  # already canonical: nothing is rewritten
    assert r.parse(orjson.loads(orjson.dumps(r.to_json(rule)))) == rule


def test_the_parsed_rule_is_plain_immutable_data():
    rule = r.parse(BROWSE_ABANDONMENT)
    assert isinstance(rule, r.And)
    viewed = rule.children[0]
    assert viewed == r.Performed(
        r.Selection("Product Viewed", where=(r.Filter("category", r.Test("equals", "laptops")),),
                    window=r.Window(within=Duration(7, "d"))),
        r.Count("gte", 3),
    )  # fmt: skip
    with pytest.raises(AttributeError):
        viewed.times = r.Count()  # type: ignore[misc]
    hash(rule)  # usable as a cache key by an engine


# -- refused rules: (rule, field, words the message must contain) ------------------------------------------------
BAD = [
    ({}, "rule", "exactly one key"),
    ({"and": [], "or": []}, "rule", "exactly one key"),
    ({"anf": []}, "rule", "unknown condition 'anf'"),
    ([], "rule", "exactly one key"),
    ({"and": []}, "rule.and", "non-empty list"),
    (
        {"and": [{"segment": "a"}, {"segment": "b"}, {"performed": {"event": "X", "window": "7 days"}}]},
        "rule.and[2].performed.window",
        "not a duration",
    ),
    ({"not": {"trait": {"name": "plan"}}}, "rule.not.trait", "give one test"),
    ({"trait": {"name": "plan", "equals": "a", "in": ["b"]}}, "rule.trait.in", "one test per condition"),
    ({"trait": {"name": "plan", "equals": [1]}}, "rule.trait.equals", "a value is text"),
    ({"trait": {"name": "plan", "equals": None}}, "rule.trait.equals", "a value is text"),
    ({"trait": {"name": "", "equals": 1}}, "rule.trait.name", "non-empty"),
    ({"trait": {"name": "a..b", "equals": 1}}, "rule.trait.name", "empty part"),
    ({"trait": {"name": "computed.", "equals": 1}}, "rule.trait.name", "computed trait"),
    ({"trait": {"name": "x", "gt": "100"}}, "rule.trait.gt", "takes a number"),
    ({"trait": {"name": "x", "gt": True}}, "rule.trait.gt", "takes a number"),
    ({"trait": {"name": "x", "between": [5, 1]}}, "rule.trait.between[1]", "not be below"),
    ({"trait": {"name": "x", "between": [1]}}, "rule.trait.between", "[low, high]"),
    ({"trait": {"name": "x", "in": []}}, "rule.trait.in", "list of 1"),
    ({"trait": {"name": "x", "in": ["a", {"b": 1}]}}, "rule.trait.in[1]", "a value is text"),
    ({"trait": {"name": "x", "in": list(range(1001))}}, "rule.trait.in", "list of 1 to 1000"),
    ({"trait": {"name": "x", "gte": 1, "window": "7d"}}, "rule.trait.window", "unknown key 'window'"),
    ({"trait": {"name": "x", "exists": "yes"}}, "rule.trait.exists", "true or false"),
    ({"trait": {"name": "x", "since": "01/02/2024"}}, "rule.trait.since", "not a date"),
    ({"trait": {"name": "x", "since": "2024-02-30"}}, "rule.trait.since", "no such day"),
    ({"trait": {"name": "x", "date_between": ["2024-02-01", "2024-01-01"]}}, "rule.trait.date_between[1]", "later"),
    (
        {"trait": {"name": "x", "date_between": ["2024-01-01", "2024-02-01T00:00:00Z"]}},
        "rule.trait.date_between[1]",
        "both as days",
    ),
    ({"trait": {"name": "x", "anniversary": {"next_days": 400}}}, "rule.trait.anniversary.next_days", "180"),
    ({"trait": {"name": "x", "anniversary": {"in": 3}}}, "rule.trait.anniversary", "next_days"),
    ({"trait": {"name": "x", "equals": 2**64}}, "rule.trait.equals", "64 bits"),
    ({"trait": {"name": "x", "equals": "a\x00b"}}, "rule.trait.equals", "NUL"),
    ({"trait": {"name": "x", "contains": "x" * 1001}}, "rule.trait.contains", "at most 1000"),
    ({"trait": {"name": "x", "equals": 1, "colour": "red"}}, "rule.trait.colour", "unknown key 'colour'"),
    ({"performed": {"window": "7d"}}, "rule.performed.event", "name the event"),
    ({"performed": {"event": "X", "times": {"gt": 3}}}, "rule.performed.times.gt", "eq, gte, lte"),
    ({"performed": {"event": "X", "times": {"gte": -1}}}, "rule.performed.times.gte", "whole number"),
    ({"performed": {"event": "X", "times": 3}}, "rule.performed.times", "one comparison"),
    ({"performed": {"event": "X", "window": "0d"}}, "rule.performed.window", "not a duration"),
    ({"performed": {"event": "X", "window": "3661d"}}, "rule.performed.window", "ten years"),
    (
        {"performed": {"event": "X", "window": {"since": "2024-02-01", "before": "2024-01-01"}}},
        "rule.performed.window.before",
        "later than since",
    ),
    ({"performed": {"event": "X", "window": {"from": "2024-02-01"}}}, "rule.performed.window.from", "unknown key"),
    ({"performed": {"event": "X", "window": {}}}, "rule.performed.window", "a window is"),
    ({"performed": {"event": "X", "where": {"category": "laptops"}}}, "rule.performed.where", "list of 1"),
    (
        {"performed": {"event": "X", "where": [{"property": "p", "within_last": "7d"}]}},
        "rule.performed.where[0].within_last",
        "does not apply here",
    ),
    ({"performed": {"event": "X", "where": [{"property": "p"}]}}, "rule.performed.where[0]", "give one test"),
    ({"performed": {"event": "X", "type": "click"}}, "rule.performed.type", "an event type"),
    ({"performed": {"event": "X", "channel": "Web Site"}}, "rule.performed.channel", "lower-case"),
    (
        {"performed": {"event": "X", "channel": "web", "channel_group": "online"}},
        "rule.performed.channel_group",
        "not both",
    ),
    ({"performed": {"event": "X", "channel_group": "everywhere"}}, "rule.performed.channel_group", "online"),
    ({"aggregate": {"event": "X", "function": "median", "property": "p", "gt": 1}}, "rule.aggregate.function", "sum"),
    ({"aggregate": {"event": "X", "function": "sum", "gt": 1}}, "rule.aggregate.property", "non-empty"),
    (
        {"aggregate": {"event": "X", "function": "count", "property": "p", "gt": 1}},
        "rule.aggregate.property",
        "no property",
    ),
    (
        {"aggregate": {"event": "X", "function": "sum", "property": "p", "contains": "1"}},
        "rule.aggregate.contains",
        "the test contains does not apply here; use equals, gt",
    ),
    ({"first_time": {"event": "X", "window": "7d", "exists": True}}, "rule.first_time.window", "no window"),
    (
        {"last_time": {"event": "X", "anniversary": {"next_days": 1}}},
        "rule.last_time.anniversary",
        "does not apply here",
    ),
    ({"last_value": {"event": "X", "equals": 1}}, "rule.last_value.property", "non-empty"),
    ({"used_channel": {"window": "7d"}}, "rule.used_channel.channel", "name the channel"),
    ({"last_channel": {"equals": "Web"}}, "rule.last_channel.equals", "lower-case"),
    ({"channel_count": {"gte": "two"}}, "rule.channel_count.gte", "takes a number"),
    ({"channel_mix": {"equals": "mixed"}}, "rule.channel_mix.equals", "online, offline, both, unknown"),
    ({"reachable": {"channel": "pigeon"}}, "rule.reachable.channel", "message channel"),
    ({"reachable": {"channel": "email", "topic": "a:b"}}, "rule.reachable.topic", "no ':'"),
    ({"subscribed": {"channel": "email"}}, "rule.subscribed.topic", "name the topic"),
    ({"message": {"template": "welcome"}}, "rule.message.status", "name the status"),
    ({"message": {"status": "read"}}, "rule.message.status", "a status is one of"),
    ({"message": {"status": ["opened", "read"]}}, "rule.message.status[1]", "a status is one of"),
    ({"message": {"status": "opened", "channel": "web"}}, "rule.message.channel", "message channel"),
    ({"message": {"status": "opened", "template": ""}}, "rule.message.template", "non-empty"),
    ({"segment": ""}, "rule.segment", "non-empty"),
    ({"segment": {"id": "vip"}}, "rule.segment", "non-empty text"),
    ({"list": "x" * 65}, "rule.list", "at most 64"),
    ({"bucket": {"from": 10, "to": 10}}, "rule.bucket.to", "greater than from"),
    ({"bucket": {"from": 0, "to": 101}}, "rule.bucket.to", "0 to 100"),
    ({"bucket": {"from": 0.5, "to": 10}}, "rule.bucket.from", "whole number"),
    ({"trait": "plan"}, "rule.trait", "takes an object"),
]


@pytest.mark.parametrize(("raw", "field", "words"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_invalid_rules_name_the_bad_node(raw, field, words):
    with pytest.raises(ChorusError) as err:
        r.parse(raw)
    assert err.value.field == field
    assert words in err.value.message
    assert err.value.message.startswith(f"{field}: ")
    assert err.value.status == 400


def nested(depth: int) -> dict:
    rule: dict = {"segment": "a"}
    for _ in range(depth - 1):
        rule = {"not": rule}
    return rule


def test_depth_is_bounded():
    r.parse(nested(r.MAX_DEPTH))
    with pytest.raises(ChorusError) as err:
        r.parse(nested(r.MAX_DEPTH + 1))
    assert err.value.field == "rule" + ".not" * r.MAX_DEPTH
    assert "16 levels" in err.value.message


def test_size_is_bounded():
    r.parse({"or": [{"segment": str(i)} for i in range(r.MAX_NODES - 1)]})
    with pytest.raises(ChorusError) as err:
        r.parse({"or": [{"segment": str(i)} for i in range(r.MAX_NODES)]})
    assert err.value.field == f"rule.or[{r.MAX_NODES - 1}]"
    assert "at most 500 conditions" in err.value.message


def test_a_hostile_depth_is_refused_by_path_not_by_recursion():
    raw: object = {"segment": "a"}
    for _ in range(100_000):
        raw = {"not": raw}
    with pytest.raises(ChorusError) as err:
        r.parse(raw)
    assert "nested deeper" in err.value.message or "levels deep" in err.value.message


# -- YAML -------------------------------------------------------------------------------------------------------
def test_yaml_rules_read_like_json_ones():
    text = """
and:
  - performed:
      event: Product Viewed
      where:
        - {property: category, equals: laptops}
      window: 7d
      times: {gte: 3}
  - not:
      performed:
        event: Product Added
        where:
          - {property: category, equals: laptops}
        window: 7d
"""
    assert r.parse_yaml(text) == r.parse(BROWSE_ABANDONMENT)


def test_yaml_dates_stay_the_text_the_rule_means():
    rule = r.parse_yaml("trait: {name: signup_date, since: 2024-01-01}")
    assert rule == r.parse({"trait": {"name": "signup_date", "since": "2024-01-01"}})


def test_yaml_aliases_are_refused():
    bomb = "a: &a [{segment: x}, {segment: y}]\nb: &b [*a, *a]\nor: *b\n"
    with pytest.raises(ChorusError) as err:
        r.parse_yaml(bomb)
    assert err.value.field == "rule" and "aliases" in err.value.message


def test_yaml_errors_name_the_line():
    with pytest.raises(ChorusError) as err:
        r.parse_yaml("and:\n  - segment: a\n - segment: b\n")
    assert err.value.field == "rule" and "line 3" in err.value.message


def test_yaml_keys_must_be_text():
    with pytest.raises(ChorusError) as err:
        r.parse_yaml("trait: {name: x, on: 1}")
    assert err.value.field == "rule.trait" and "quote it" in err.value.message


@pytest.mark.parametrize(
    "text",
    [
        "segment: !!python/object:os.system x",
        "trait: {name: x, since: !!timestamp 2024-01-01}",
        "trait: {name: x, equals: !!binary aGVsbG8=}",
        "trait: !!set {name, x}",
        "trait: !!omap [{name: x}, {equals: 1}]",
    ],
)
def test_yaml_gives_json_types_only(text):
    with pytest.raises(ChorusError) as err:
        r.parse_yaml(text)
    assert err.value.field == "rule" and "line 1" in err.value.message


@pytest.mark.parametrize(
    ("text", "line", "ours"),
    [
        ("and: [{segment: a},", 1, "a value is missing"),
        ("trait: a\n  op: x", 2, "check the indentation"),
        ("and:\n\t- segment: a", 2, "indent with spaces"),
        ("segment: 'a", 1, "a quote is not closed"),
        ('segment: "\\q"', 1, "unknown escape"),
        ("{segment: a", 1, "'{' is not closed"),
        ("and:\n  - segment: a\n - segment: b\n", 3, "does not line up"),
        ("segment: @a", 1, "quote the value"),
        ("--- {segment: a}\n--- {segment: b}", 2, "more than one document"),
        ("trait: {name: plan, equals: a, equals: b}", 1, 'the key "equals" appears twice'),
        ("segment: a\nsegment: b", 2, 'the key "segment" appears twice'),
    ],
)
def test_yaml_errors_are_in_our_words_with_line_and_column(text, line, ours):
    """PyYAML's problems ("mapping values are not allowed here", "expected the node content, but found '<stream
    end>'") never reach the client: ours, at the line and column it gives; a key given twice is refused, as in a JSON
    body (PyYAML keeps the last silently)."""
    with pytest.raises(ChorusError) as err:
        r.parse_yaml(text, "yaml")
    msg = err.value.message
    assert err.value.field == "yaml" and f"(line {line}, column " in msg and ours in msg, msg
    for theirs in ("expected", "found", "mapping values", "could not", "while scanning", "<stream end>", "'\\t'"):
        assert theirs not in msg.split("): ", 1)[-1], msg


# -- references between segments ---------------------------------------------------------------------------------
def test_references_in_dependency_order():
    defs = {
        "vip": r.parse({"trait": {"name": "plan", "equals": "gold"}}),
        "lapsed_vip": r.parse({"and": [{"segment": "vip"}, {"segment": "lapsed"}]}),
        "lapsed": r.parse({"performed": {"event": "Order Completed", "window": "60d", "times": {"eq": 0}}}),
    }
    order = r.check_references(defs)
    assert sorted(order) == sorted(defs)
    assert order.index("vip") < order.index("lapsed_vip") and order.index("lapsed") < order.index("lapsed_vip")


def test_an_unknown_reference_is_refused():
    defs = {"a": r.parse({"or": [{"segment": "b"}, {"segment": "ghost"}]}), "b": r.parse({"list": "l"})}
    with pytest.raises(ChorusError) as err:
        r.check_references(defs)
    assert err.value.field == "rule.or[1].segment"
    assert "'ghost'" in err.value.message and "'a'" in err.value.message


def test_a_cycle_is_refused_with_its_chain():
    defs = {
        "a": r.parse({"and": [{"list": "l"}, {"segment": "b"}]}),
        "b": r.parse({"not": {"segment": "c"}}),
        "c": r.parse({"or": [{"segment": "a"}]}),
    }
    with pytest.raises(ChorusError) as err:
        r.check_references(defs, focus="b")
    assert err.value.field == "rule.not.segment"  # in b's rule: the segment being saved
    assert "'b' → 'c' → 'a' → 'b'" in err.value.message


def test_a_segment_that_refers_to_itself():
    with pytest.raises(ChorusError) as err:
        r.check_references({"a": r.parse({"not": {"segment": "a"}})})
    assert err.value.field == "rule.not.segment" and "refers to itself" in err.value.message


def test_long_reference_chains_do_not_recurse():
    defs = {str(i): r.parse({"segment": str(i + 1)}) for i in range(5000)}
    defs["5000"] = r.parse({"list": "l"})
    assert r.check_references(defs)[0] == "5000"


# -- what a rule reads --------------------------------------------------------------------------------------------
def test_dependencies_name_the_inputs():
    rule = r.parse({"and": [
        BROWSE_ABANDONMENT,
        {"trait": {"name": "computed.clv_12m", "gt": 10}},
        {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}},
        {"reachable": {"channel": "email"}},
        {"segment": "vip"},
        {"message": {"status": "opened"}},
    ]})  # fmt: skip
    deps = r.dependencies(rule)
    assert deps.events == {"Product Viewed", "Product Added"}
    assert deps.traits == {"birthday"} and deps.computed == {"clv_12m"}
    assert deps.consent and deps.messages and deps.timed and deps.timezone
    assert deps.segments == {"vip"} and not deps.activity
    assert not r.dependencies(r.parse({"trait": {"name": "plan", "equals": "gold"}})).timed


def test_channel_groups_are_the_omnichannel_reports():
    assert r.ONLINE == omnichannel.ONLINE
    assert r.OFFLINE == omnichannel.OFFLINE
    assert r.MIXES == omnichannel.MIX_GROUPS


def test_every_rule_in_the_docs_parses():
    """docs/segments.md shows rules in ```json and ```yaml blocks: each must be a valid rule."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "segments.md").read_text()
    blocks = re.findall(r"```(json|yaml)\n(.*?)```", text, re.S)
    assert len(blocks) >= 12
    for lang, body in blocks:
        rule = r.parse(orjson.loads(body)) if lang == "json" else r.parse_yaml(body)
        assert r.parse(r.to_json(rule)) == rule


def test_a_huge_unknown_name_is_quoted_short_and_the_message_keeps_what_was_expected():
    """A 5,000-character key is quoted at 60 characters, so the list of what was expected survives the API's cap
    on a message's length (review: cut in the middle, the list read as part of the quoted key)."""
    with pytest.raises(ChorusError) as err:
        r.parse({"x" * 5000: 1})
    assert len(err.value.message) < 400 and err.value.message.endswith(", ".join(r.KINDS)), err.value.message
    with pytest.raises(ChorusError) as err:
        r.parse({"trait": {"name": "plan", "y" * 5000: 1}})
    assert len(err.value.message) < 400 and len(err.value.field) < 100 and "expected name" in err.value.message


def test_a_yaml_merge_key_still_merges_an_inline_mapping():
    """`<<: {...}` is YAML's merge, not a key given twice (review: the duplicate check refused it as a tag)."""
    assert r.parse_yaml("trait:\n  <<: {name: plan}\n  equals: gold") == r.parse(
        {"trait": {"name": "plan", "equals": "gold"}})  # fmt: skip
