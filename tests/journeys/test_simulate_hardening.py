"""`chorus journeys simulate` after an outside probe (a black-box run against the live runtime): messages the
collector rejects are rejected here too, with its reason; times late in year 9999 run; an API journey with an entry
key is simulated with the starts' data; a segment the journey names must be defined; file errors name the line in
words; a split's branches are counted as the live stats count them (a holdout arm is no way on)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from chorus import workspaces
from chorus.cli import app
from chorus.errors import ChorusError
from chorus.journeys import definition as d
from chorus.journeys import simulate as sm
from chorus.journeys import stats
from chorus.journeys.cli import backtest_subjects
from chorus.profiles import views
from chorus.store.tables import messages
from tests.journeys.test_runtime import publish, send, settle

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

T = datetime(2026, 12, 1, tzinfo=UTC)
LIBRARY_TEXT = ("Traceback", "OverflowError", "codec", "position", "Errno")
JOURNEY = {"id": "jr", "entry": {"event": {"event": "Product Added"}}, "start": "m", "nodes": {
    "m": {"type": "message", "template": "t", "channel": "email", "kind": "transactional", "next": "done"},
    "done": {"type": "exit"}}}  # fmt: skip
RECEIPT = {"id": "japi", "entry": {"api": {"key": "order_id"}}, "reentry": "per_key", "start": "m", "nodes": {
    "m": {"type": "message", "template": "t", "channel": "email", "kind": "transactional", "next": "done"},
    "done": {"type": "exit"}}}  # fmt: skip


def added(user: str = "a", at: str = "2026-12-01T00:00:00Z", **extra) -> dict:
    return {"type": "track", "userId": user, "event": "Product Added", "timestamp": at, **extra}


def write(path, *lines) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def simulate(*args: str):
    return CliRunner().invoke(app, ["journeys", "simulate", *args],
                              env={"COLUMNS": "250", "CHORUS_DATABASE_URL": None})  # fmt: skip


def ok(r) -> dict:
    assert r.exit_code == 0, (r.exit_code, r.output[-2000:], r.exception)
    return json.loads(r.output)


def error(r) -> str:
    """The one line of a refused run: exit code 2, no traceback and no library's wording."""
    assert r.exit_code == 2, (r.exit_code, r.output[-2000:], r.exception)
    assert not isinstance(r.exception, Exception) or isinstance(r.exception, SystemExit), repr(r.exception)
    text = " ".join(r.output.split())
    for word in LIBRARY_TEXT:
        assert word not in text, (word, text)
    return text


@pytest.fixture
def journey(tmp_path):
    return write(tmp_path / "j.json", JOURNEY)


# -- 5: what the collector's door rejects ---------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "reason"), [
    ({"sentAt": "garbage"}, "line 2: sentAt is not an ISO-8601 timestamp: 'garbage'"),
    ({"originalTimestamp": "bad"}, "line 2: originalTimestamp is not an ISO-8601 timestamp: 'bad'"),
    ({"properties": {"big": "y" * 40000}}, "line 2: message is larger than 32 KB"),
    ({"event": "Journey Entered"}, "line 2: event: 'Journey Entered' is an event Chorus records itself"),
])  # fmt: skip
def test_a_message_the_collector_rejects_is_rejected_with_its_line_and_the_collectors_reason(tmp_path, journey,
                                                                                              extra, reason):
    events = write(tmp_path / "e.jsonl", added("b"), added(**extra))
    with pytest.raises(ChorusError, match=reason):
        sm.read_events(events)
    assert reason in error(simulate(journey, "--events", events, "--json"))


def test_a_valid_sent_at_is_checked_but_the_time_is_the_timestamp_as_sent(tmp_path, journey):
    events = write(tmp_path / "e.jsonl", added(sentAt="2026-12-01T00:05:00Z", originalTimestamp="2026-12-01T00:00:00Z"),
                   added("b", sentAt="2026-12-01T00:00:09Z"))  # fmt: skip
    a, b = sm.read_events(events)
    assert a["timestamp"] == b["timestamp"] == "2026-12-01T00:00:00.000000Z"  # no clock-skew correction
    assert ok(simulate(journey, "--events", events, "--json"))["entries"] == 2


def test_an_event_before_2000_is_refused_not_placed_where_the_collector_would_not(tmp_path, journey):
    events = write(tmp_path / "e.jsonl", added(at=-5))
    text = error(simulate(journey, "--events", events))
    assert "line 1: timestamp: outside the accepted range: the event time 1969-12-31 is before 2000-01-01" in text


# -- 6: year 9999 ------------------------------------------------------------------------------------------------------
def test_an_event_or_a_start_late_in_year_9999_runs_to_the_last_instant(tmp_path, journey):
    events = write(tmp_path / "e.jsonl", added(), {"type": "track", "userId": "a", "event": "Order Completed",
                                                  "timestamp": "9999-12-31T00:00:00Z"})  # fmt: skip
    doc = ok(simulate(journey, "--events", events, "--json"))
    assert doc["entries"] == 1 and doc["until"] == "9999-12-31T23:59:59.999999Z"
    late = write(tmp_path / "late.jsonl", added(at="9999-12-31T23:59:59.999Z"))
    assert ok(simulate(journey, "--events", late, "--json"))["entries"] == 1
    api = write(tmp_path / "api.json", {**JOURNEY, "id": "api", "entry": {"api": {}}})
    doc = ok(simulate(api, "--events", events, "--start", "9999-12-31T23:59:59Z", "--json"))
    assert doc["entries"] == 1 and doc["since"] == "2026-12-01T00:00:00.000000Z"


# -- 8: an API journey with an entry key ------------------------------------------------------------------------------
def test_start_alone_cannot_simulate_a_keyed_api_journey_and_says_so(tmp_path):
    japi = write(tmp_path / "japi.json", RECEIPT)
    events = write(tmp_path / "e.jsonl", {"type": "identify", "userId": "a", "timestamp": "2026-12-01T00:00:00Z",
                                          "traits": {"email": "a@ex.com"}})  # fmt: skip
    text = error(simulate(japi, "--events", events, "--start", "2026-12-02T00:00:00Z", "--json"))
    assert "--start: japi is entered by an API call with the key order_id" in text and "--start-data" in text


def test_start_data_enters_as_the_api_call_with_its_data(tmp_path):
    japi = write(tmp_path / "japi.json", RECEIPT)
    at = "2026-12-01T00:00:00Z"
    events = write(tmp_path / "e.jsonl",
                   {"type": "identify", "userId": "a", "timestamp": at, "traits": {"email": "a@x.io"}},
                   {"type": "identify", "userId": "b", "timestamp": at, "traits": {"email": "b@x.io"}},
                   {"type": "identify", "anonymousId": "v", "timestamp": at})  # fmt: skip
    starts = write(tmp_path / "s.jsonl",
                   {"userId": "a", "data": {"order_id": "1001"}, "at": "2026-12-02T00:00:00Z"},
                   {"userId": "a", "data": {"order_id": "1002"}},  # at: --start's
                   {"userId": "a", "data": {"order_id": "1001"}, "at": "2026-12-03T00:00:00Z"},  # entered already
                   {"userId": "b", "data": {"order_id": "2001"}, "id": "r1"},
                   {"userId": "b", "data": {"order_id": "2002"}, "id": "r1"},  # the same call again: one start
                   {"anonymousId": "v", "data": {"total": 5}},  # no key: enters nobody, as live
                   "")  # fmt: skip
    doc = ok(simulate(japi, "--events", events, "--start-data", starts, "--start", "2026-12-02T12:00:00Z", "--json"))
    assert (doc["people"], doc["entries"], doc["people_entered"]) == (3, 3, 2)
    assert doc["messages"]["by_channel"] == {"email": 3}
    # without --start, a line without its time is named
    text = error(simulate(japi, "--events", events, "--start-data", starts, "--json"))
    assert "s.jsonl line 2: at: a start needs its time" in text


@pytest.mark.parametrize(("line", "reason"), [
    ({"userId": "zz", "data": {"order_id": "1"}}, "line 1: no person 'zz' in the events"),
    ({"data": {"order_id": "1"}}, "line 1: a start names its person by one of userId, anonymousId, profile_id"),
    ({"userId": "a", "data": [1]}, "line 1: data: data is an object"),
    ({"userId": "a", "data": {"order_id": "x" * 201}}, "line 1: data.order_id: the entry key is at most 200"),
    ({"userId": "a", "data": {"order_id": "1"}, "at": "soon"}, "line 1: at: not an ISO-8601 timestamp: 'soon'"),
    ({"userId": "a", "to": {"email": "a@x.io"}}, "line 1: to: not a field of a start"),
    ("[1]", "line 1: a start is a JSON object"),
])  # fmt: skip
def test_a_bad_start_line_is_named(tmp_path, line, reason):
    japi = write(tmp_path / "japi.json", RECEIPT)
    events = write(tmp_path / "e.jsonl", {"type": "identify", "userId": "a", "timestamp": "2026-12-01T00:00:00Z"})
    starts = write(tmp_path / "s.jsonl", line)
    assert reason in error(simulate(japi, "--events", events, "--start-data", starts, "--start",
                                    "2026-12-02T00:00:00Z"))  # fmt: skip


def test_start_data_is_only_for_an_api_journey(tmp_path, journey):
    events = write(tmp_path / "e.jsonl", added())
    starts = write(tmp_path / "s.jsonl", {"userId": "a", "at": "2026-12-02T00:00:00Z"})
    text = error(simulate(journey, "--events", events, "--start-data", starts))
    assert "--start-data: jr is not entered by an API call (it is entered by an event)" in text


# -- 9: a segment missing from --segments ------------------------------------------------------------------------
def test_a_segment_the_journey_names_must_be_defined(tmp_path):
    js = write(tmp_path / "s.json", {"id": "js", "entry": {"segment": "nosuchseg"}, "start": "done",
                                     "nodes": {"done": {"type": "exit"}}})  # fmt: skip
    segs = tmp_path / "segs.yaml"
    segs.write_text("big:\n  trait: {name: spend, gt: 100}\n")
    events = write(tmp_path / "e.jsonl", {"type": "identify", "userId": "a", "timestamp": "2026-12-01T00:00:00Z",
                                          "traits": {"spend": 500}})  # fmt: skip
    text = error(simulate(js, "--events", events, "--segments", str(segs), "--json"))
    assert "s.json: entry.segment: segment 'nosuchseg' does not exist in" in text and "segs.yaml" in text
    text = error(simulate(js, "--events", events, "--json"))
    assert "entry.segment: segment 'nosuchseg' is not defined: give its rule with --segments FILE" in text
    cond = write(tmp_path / "c.json", {"id": "jc", "entry": {"event": {"event": "Go"}}, "start": "c", "nodes": {
        "c": {"type": "condition", "if": {"segment": "vip"}, "then": "done", "else": "done"},
        "done": {"type": "exit"}}})  # fmt: skip
    assert "c.json: nodes.c.if.segment: segment 'vip' does not exist" in error(
        simulate(cond, "--events", events, "--segments", str(segs)))  # fmt: skip
    segs.write_text("big:\n  trait: {name: spend, gt: 100}\nnosuchseg:\n  trait: {name: spend, gt: 100}\n")
    assert ok(simulate(js, "--events", events, "--segments", str(segs), "--json"))["entries"] == 1


# -- 10: the bytes of the file ----------------------------------------------------------------------------------------
def test_a_byte_that_is_not_utf8_is_named_by_its_line(tmp_path, journey):
    path = tmp_path / "e.jsonl"
    path.write_bytes(json.dumps(added()).encode() + b"\n" + json.dumps(added("b")).encode()[:-2] + b"\xff\"}\n")
    text = error(simulate(journey, "--events", str(path)))
    assert "e.jsonl line 2: not UTF-8 text (byte 0xff at column" in text and "save the file as UTF-8" in text


def test_a_byte_order_mark_at_the_start_is_skipped_elsewhere_named(tmp_path, journey):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(added()).encode() + b"\n")
    assert ok(simulate(journey, "--events", str(path), "--json"))["entries"] == 1
    bommed = tmp_path / "j.json"
    bommed.write_bytes(b"\xef\xbb\xbf" + json.dumps(JOURNEY).encode())
    assert ok(simulate(str(bommed), "--events", str(path), "--json"))["entries"] == 1
    path.write_bytes(json.dumps(added()).encode() + b"\n\xef\xbb\xbf" + json.dumps(added("b")).encode() + b"\n")
    assert "e.jsonl line 2: starts with a byte-order mark (U+FEFF)" in error(simulate(journey, "--events", str(path)))


# -- 11: a split with a holdout --------------------------------------------------------------------------------------
HOLDOUT = {"id": "jh", "entry": {"event": {"event": "Go"}}, "goal": {"event": {"event": "Buy"}, "within": "1d"},
           "start": "sp", "nodes": {
               "sp": {"type": "split", "arms": [{"name": "t", "weight": 50, "next": "done"},
                                                {"name": "h", "weight": 50, "holdout": True}]},
               "done": {"type": "exit"}}}  # fmt: skip


def test_a_splits_branches_are_the_ways_on_and_add_up_to_passed(tmp_path):
    js = write(tmp_path / "s.json", HOLDOUT)
    events = write(tmp_path / "e.jsonl", *({"type": "track", "userId": f"u{i}", "event": "Go",
                                            "timestamp": "2026-12-01T00:00:00Z"} for i in range(40)))  # fmt: skip
    doc = ok(simulate(js, "--events", events, "--json"))
    sp, arms = doc["nodes"]["sp"], doc["conversions"]["by_arm"]["sp"]
    assert sum(sp["branches"].values()) == sp["passed"] == arms["t"]["entered"] and "h" not in sp["branches"]
    assert sp["exited"] == arms["h"]["entered"] > 0 and sp["entered"] == sp["passed"] + sp["waiting"] + sp["exited"]


def test_live_stats_and_the_simulator_count_a_holdout_reached_after_its_window_alike(engine, clock, worker):
    """A holdout reached after the goal window ended exits at once: live writes a step by the arm, then the exit.
    The stats counted that step as passed (a holdout key in passed_by_branch, entered < passed + exited)."""
    ws = workspaces.create(engine, "hold-" + uuid.uuid4().hex[:6])["id"]
    raw = {**HOLDOUT, "goal": {"event": {"event": "Buy"}, "within": "1h"}, "start": "wait",
           "nodes": {**HOLDOUT["nodes"], "wait": {"type": "delay", "for": "2h", "next": "sp"}}}  # fmt: skip
    defn = d.parse(raw)
    publish(engine, ws, raw, at=T)
    clock.at = T
    send(engine, ws, [{"type": "track", "userId": f"u{i}", "event": "Go", "timestamp": T.isoformat(),
                       "messageId": f"go{i}"} for i in range(16)], T)  # fmt: skip
    settle(worker)
    clock.at = T + timedelta(hours=2, minutes=1)
    settle(worker)
    with engine.connect() as conn:
        doc = stats.stats(conn, ws, "jh")
        subjects = backtest_subjects(conn, workspaces.find(conn, ws), T - timedelta(days=1), T + timedelta(days=1))
    (sp,) = [n for n in doc["versions"][0]["nodes"] if n["node"] == "sp"]
    live = {p["key"]: p["count"] for p in sp["passed_by_branch"]}
    assert sp["entered"] == 16 and 0 < sp["exited"] < 16  # both arms drawn
    assert "h" not in live and sp["passed"] == sum(live.values()) == 16 - sp["exited"]
    assert sp["entered"] == sp["passed"] + sp["waiting_now"] + sp["tracking_now"] + sp["exited"]
    report = sm.simulate(defn, subjects, since=T - timedelta(days=1), until=T + timedelta(days=1))
    predicted = report.to_json()["nodes"]["sp"]
    assert predicted["branches"] == live and predicted["exited"] == sp["exited"]


def test_a_backtest_gives_nobody_a_phone_resolution_left_on_another_profile(engine, clock, worker):
    """An outside probe: an event of user b named a phone that is user a's (two user ids: resolution does not merge
    them, the phone stays a's). Live, b has no phone and her SMS is skipped; the backtest folded the phone into b and
    predicted an SMS to a's phone."""
    from chorus.messaging import outbox

    ws = workspaces.create(engine, "phone-" + uuid.uuid4().hex[:6])["id"]
    outbox.save_template(engine, ws, "t", {"variants": {"sms": {"text": "Your cart"}}})
    raw = {**JOURNEY, "nodes": {**JOURNEY["nodes"], "m": {**JOURNEY["nodes"]["m"], "channel": "sms"}}}
    publish(engine, ws, raw, at=T - timedelta(hours=1))
    clock.at = T
    send(engine, ws, [{"type": "identify", "userId": "a", "traits": {"phone": "+14155550100"},
                       "timestamp": (T - timedelta(minutes=5)).isoformat(), "messageId": "ida"},
                      {**added("b", T.isoformat()), "messageId": "addb",
                       "context": {"traits": {"phone": "+14155550100"}}}], T)  # fmt: skip
    settle(worker)
    with engine.connect() as conn:
        live = conn.execute(sa.select(messages.c.profile_id, messages.c.channel, messages.c.status)
                            .where(messages.c.workspace_id == ws)).all()  # fmt: skip
        w = workspaces.find(conn, ws)
        subjects = backtest_subjects(conn, w, T - timedelta(days=1), T + timedelta(days=1))
        owners = {p: set(i) for p, i in views.idents_of(conn, ws, [s.id for s in subjects]).items()}
    (msg,) = live
    assert "phone:+14155550100" not in owners[msg.profile_id]  # the phone stayed a's
    assert (msg.channel, msg.status) == (None, "skipped")
    report = sm.simulate(d.parse(raw), subjects, since=T - timedelta(days=1), until=T + timedelta(days=1),
                         templates={"t": frozenset({"sms"})}, timezone=w.timezone)  # fmt: skip
    assert report.to_json()["messages"]["by_channel"] == {sm.UNREACHABLE: 1}
