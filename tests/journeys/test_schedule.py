"""Scheduled entries and broadcasts on the store, on both engines: a run starts everybody in the segment once,
recurring runs start them again, missed runs are not replayed one by one, local-time runs start each person at
that time in her own zone (across a DST change), a holdout arm gets nothing and is recorded."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from chorus.journeys import manage, schedule, store
from chorus.segments import rules
from chorus.segments import store as segments_store
from chorus.store.tables import journey_records, journey_runs, journey_timers, messages
from tests.identity.helpers import profile_of
from tests.identity.helpers import send as _send
from tests.journeys.conftest import T0, failing_sends


def identify(user, at, zone=None, **traits):
    m = {"type": "identify", "userId": user, "traits": traits, "messageId": uuid.uuid4().hex,
         "timestamp": at.isoformat(), "context": {"channel": "web"}}  # fmt: skip
    if zone:
        m["context"]["timezone"] = zone
    return m


def settle(worker, n=4):
    for _ in range(n):
        worker.run_once()


def people(engine, ws, worker, who):
    """who: user -> (zone, plan); the segment `newsletter` holds those on the plan "news"."""
    _send(engine, ws, [identify(u, T0, zone, plan=plan) for u, (zone, plan) in who.items()], received_at=T0)
    with engine.begin() as conn:
        segments_store.save(conn, ws, "newsletter", "Newsletter",
                            rules.parse({"trait": {"name": "plan", "equals": "news"}}), T0)  # fmt: skip
    settle(worker, 6)
    with engine.connect() as conn:
        assert len(segments_store.members(conn, ws, "newsletter")) == sum(p == "news" for _, p in who.values())
    return {u: profile_of(engine, ws, f"user_id:{u}") for u in who}


def sent(engine, ws, jid):
    with engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.profile_id, messages.c.created_at).where(
            messages.c.workspace_id == ws, messages.c.journey_id == jid)).all()  # fmt: skip
    out: dict[str, int] = {}
    for pid, _ in rows:
        out[pid] = out.get(pid, 0) + 1
    return out


def broadcast(engine, ws, at, **raw):
    with engine.begin() as conn:
        return manage.publish_broadcast(conn, ws, {"id": "b1", "template": "offer", "channel": ["in_app"],
                                                   "segment": "newsletter", **raw}, at)  # fmt: skip


def test_a_broadcast_now_reaches_each_member_once(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {"u1": (None, "news"), "u2": (None, "news"), "u3": (None, "other")})
    broadcast(engine, ws, T0)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 1, pids["u2"]: 1}
    clock.at = T0 + timedelta(days=3)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 1, pids["u2"]: 1}  # a one-off run runs once
    with engine.connect() as conn:
        (run,) = conn.execute(sa.select(journey_runs).where(journey_runs.c.workspace_id == ws)).all()
    assert run.done and run.started == 2


def test_a_run_walked_again_after_a_crash_starts_nobody_twice(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(7)})
    broadcast(engine, ws, T0)
    schedule.tick(engine, chunk=3)  # the first chunks
    with engine.begin() as conn:  # as if the last chunk's commit had been lost: walk the run from the start
        conn.execute(journey_runs.update().where(journey_runs.c.workspace_id == ws).values(after=None, done=False))
    settle(worker)
    assert sent(engine, ws, "b1") == dict.fromkeys(pids.values(), 1)


def test_an_erasure_leaves_a_run_walked_up_to_her_no_copy_of_her_id(engine, ws, clock, worker):
    """A run's walk standing at her profile id keeps only a prefix of it, and the table is scrubbed with her other
    rows (found by an outside probe: on PostgreSQL the row's old version, her whole id in it, stayed in
    journey_runs' files, which the erasure did not vacuum)."""
    from chorus.profiles import privacy

    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(4)})
    broadcast(engine, ws, T0)
    schedule.tick(engine, chunk=2)  # one chunk: the walk stands at the second member's id
    with engine.connect() as conn:
        (run,) = conn.execute(sa.select(journey_runs).where(journey_runs.c.workspace_id == ws)).all()
    assert run.after in pids.values() and not run.done
    out = privacy.forget(engine, ws, run.after, vacuum="plain")
    assert out["deleted"]["journey_runs_rewritten"] == 1
    with engine.connect() as conn:
        (after,) = conn.execute(sa.select(journey_runs.c.after).where(journey_runs.c.workspace_id == ws)).one()
    assert after == run.after[:8]
    if engine.dialect.name == "postgresql":
        assert "journey_runs" in out["scrubbed"]["done"]
    settle(worker)  # the walk goes on from the prefix: the others get it once, she is gone
    assert sent(engine, ws, "b1") == {p: 1 for p in pids.values() if p != run.after}


def test_one_failing_person_does_not_stop_a_broadcast_for_the_others(engine, ws, clock, worker, monkeypatch):
    """A chunk runs as one claim; when one person's transition raises, the chunk is tried again later and later (the
    error kept on the run); after three failures its people go one at a time: the others get the message, she is
    left out of the run (loudly), and the run completes instead of failing forever."""

    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(5)})
    bad = pids["u2"]
    failing_sends(monkeypatch, lambda run, s: run.person.id == bad)
    broadcast(engine, ws, T0)
    for wait in (0, 1, 2):  # the chunk fails together, is tried again 1 and then 2 minutes later
        clock.at += timedelta(minutes=wait)
        settle(worker)
        assert sent(engine, ws, "b1") == {}
    with engine.connect() as conn:
        (run,) = conn.execute(sa.select(journey_runs).where(journey_runs.c.workspace_id == ws)).all()
    assert run.attempts == 3 and run.error == "ValueError: a data error for this one person" and not run.done
    assert run.retry_at.replace(tzinfo=UTC) == clock.at + timedelta(minutes=4)
    clock.at += timedelta(minutes=4)  # then one person at a time: she is left out, the others get it
    settle(worker)
    assert sent(engine, ws, "b1") == {p: 1 for u, p in pids.items() if p != bad}
    with engine.connect() as conn:
        (run,) = conn.execute(sa.select(journey_runs).where(journey_runs.c.workspace_id == ws)).all()
    assert run.done and run.started == 5 and run.attempts == 0 and run.error is None


def test_a_failing_broadcast_backs_off_and_does_not_hold_up_another(engine, ws, clock, worker, monkeypatch):
    """A run whose chunk fails waits for its retry out of the way (not tried at every pass), while another
    broadcast's run goes on; once the cause is gone, the same run reaches everybody."""

    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(3)})
    calls = {"b1": 0}

    def fails(run, s):
        calls["b1"] += s.journey_id == "b1"
        return s.journey_id == "b1"

    fixed = failing_sends(monkeypatch, fails, "this broadcast cannot be sent")
    broadcast(engine, ws, T0)
    with engine.begin() as conn:
        manage.publish_broadcast(conn, ws, {"id": "b2", "template": "welcome", "channel": ["in_app"],
                                            "segment": "newsletter"}, T0)  # fmt: skip
    settle(worker, 8)
    assert sent(engine, ws, "b1") == {} and sent(engine, ws, "b2") == dict.fromkeys(pids.values(), 1)
    assert calls["b1"] == 1  # eight passes, one try: the run waits for its retry
    with engine.connect() as conn:
        runs = {r.journey_id: r for r in conn.execute(sa.select(journey_runs).where(journey_runs.c.workspace_id == ws))}
    assert not runs["b1"].done and runs["b1"].started == 0 and runs["b1"].attempts == 1 and runs["b2"].done
    fixed()  # the cause fixed: the same run reaches everybody
    clock.at += timedelta(minutes=1)
    settle(worker)
    assert sent(engine, ws, "b1") == dict.fromkeys(pids.values(), 1)


def test_a_recurring_broadcast_runs_again_and_a_missed_week_is_sent_once(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {"u1": (None, "news")})
    broadcast(engine, ws, T0, schedule={"every": "1d", "start": (T0 + timedelta(hours=1)).isoformat()})
    settle(worker)
    assert sent(engine, ws, "b1") == {}  # not due yet
    clock.at = T0 + timedelta(hours=1)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 1}
    clock.at = T0 + timedelta(days=1, hours=1)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 2}
    clock.at = T0 + timedelta(days=8, hours=2)  # a week without a worker: one run, the latest
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 3}
    with engine.connect() as conn:
        runs = conn.execute(sa.select(journey_runs.c.run_at).where(journey_runs.c.workspace_id == ws)
                            .order_by(journey_runs.c.run_at)).scalars().all()  # fmt: skip
    assert runs[-1] == T0 + timedelta(days=8, hours=1)


def test_a_local_time_run_starts_each_person_at_that_time_in_her_zone_across_dst(engine, ws, clock, worker):
    # Sunday 8 March 2026: clocks go forward in New York at 02:00 (09:00 is EDT, UTC-4); Paris stays UTC+1
    pids = people(engine, ws, worker, {"ny": ("America/New_York", "news"), "paris": ("Europe/Paris", "news"),
                                       "apia": ("Pacific/Apia", "news")})  # fmt: skip
    broadcast(engine, ws, T0, schedule={"time": "09:00", "on": "2026-03-08"})
    clock.at = datetime(2026, 3, 7, 19, 0, tzinfo=UTC)  # 09:00 on the 8th first happens at UTC+14
    settle(worker)
    with engine.connect() as conn:
        due = dict(conn.execute(sa.select(journey_timers.c.profile_id, journey_timers.c.due_at).where(
            journey_timers.c.workspace_id == ws)).all())  # fmt: skip
    assert due == {pids["ny"]: datetime(2026, 3, 8, 13, 0, tzinfo=UTC),
                   pids["paris"]: datetime(2026, 3, 8, 8, 0, tzinfo=UTC),
                   pids["apia"]: datetime(2026, 3, 7, 20, 0, tzinfo=UTC)}  # fmt: skip
    clock.at = datetime(2026, 3, 8, 8, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["apia"]: 1}
    clock.at = datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["apia"]: 1, pids["ny"]: 1}


def test_a_local_time_run_takes_the_workspaces_zone_for_a_person_without_one(engine, ws, clock, worker):
    """``messaging.timezone`` is the local time of a customer the till or the CRM made (no device gave her zone):
    09:00 is 09:00 in New York for her, not in UTC; one with a zone of her own keeps it."""
    from chorus import workspaces

    workspaces.update_settings(engine, ws, {"messaging": {"timezone": "America/New_York"}})
    pids = people(engine, ws, worker, {"crm": (None, "news"), "paris": ("Europe/Paris", "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "on": "2026-03-10"})
    clock.at = datetime(2026, 3, 9, 19, 0, tzinfo=UTC)
    settle(worker)
    with engine.connect() as conn:
        due = dict(conn.execute(sa.select(journey_timers.c.profile_id, journey_timers.c.due_at).where(
            journey_timers.c.workspace_id == ws)).all())  # fmt: skip
    assert due == {pids["crm"]: datetime(2026, 3, 10, 13, 0, tzinfo=UTC),  # EDT, UTC-4
                   pids["paris"]: datetime(2026, 3, 10, 8, 0, tzinfo=UTC)}  # fmt: skip


def test_a_holdout_gets_nothing_and_its_arm_is_recorded(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(40)})
    broadcast(engine, ws, T0, holdout=30, goal={"event": {"event": "Order Completed"}, "within": "3d"})
    settle(worker)
    with engine.connect() as conn:
        arms = dict(conn.execute(sa.select(journey_records.c.profile_id, journey_records.c.arm).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "entered")).all())  # fmt: skip
    got = sent(engine, ws, "b1")
    held = {p for p, a in arms.items() if a == "holdout"}
    assert set(arms) == set(pids.values())
    assert 0 < len(held) < 40 and not held & set(got)
    assert set(got) == set(pids.values()) - held


@pytest.mark.parametrize(("raw", "field", "why"), [
    ({"id": "b", "template": "offer", "colour": 1}, "colour", "unknown key"),
    ({"id": "b"}, "template", "required"),
    ({"id": "b", "template": "offer", "holdout": 10}, "holdout", "goal"),
    ({"id": "b", "template": "offer", "holdout": 0, "goal": {"event": {"event": "x"}}}, "holdout", "1 to 99"),
    ({"id": "b", "template": "offer", "schedule": "tomorrow"}, "schedule", "now"),
    ({"id": "b", "template": "offer", "holdout": 100, "goal": {"event": {"event": "x"}, "within": "7d"}},
     "holdout", "1 to 99"),
    ({"id": "b", "template": "offer", "holdout": 10, "goal": {"event": {"event": "x"}}}, "holdout", "within"),
    ({"id": "b", "template": "offer", "schedule": "tomorrow"}, "schedule", "now"),
    # the broadcast's own fields, never the journey's that runs it (found by the hostile-input probe)
    ({"id": "b", "template": "nope"}, "template", "^template: template 'nope' does not exist"),
    ({"id": "b", "template": ""}, "template", "^template: "),
    ({"id": "b", "template": "offer", "segment": "nope"}, "segment", "^segment: segment 'nope' does not exist"),
    ({"id": "b", "template": "offer", "segment": ["a"]}, "segment", "^segment: "),
    ({"id": "b", "template": "offer", "channel": ["sms"]}, "channel", "^channel: template 'offer' has no sms"),
    ({"id": "b", "template": "offer", "channel": ["in_app", "sms"]}, "channel[1]", "^channel\\[1\\]: .* no sms"),
    ({"id": "b", "template": "offer", "channel": "pigeon"}, "channel", "^channel: "),
    ({"id": "b", "template": "offer", "kind": "loud"}, "kind", "^kind: kind is one of"),
    ({"id": "b", "template": "offer", "topic": "a:b"}, "topic", "^topic: "),
    ({"id": "b", "template": "offer", "data": [1]}, "data", "^data: "),
    ({"id": "b", "template": "offer", "data": {"code": "x" * 2**20}}, "data", "^data: .* at most 32 KB"),
    ({"id": "b", "template": "offer", "schedule": {"at": "tomorrow"}}, "schedule.at", "^schedule.at: "),
    ({"id": "b", "template": "offer", "schedule": {"at": None}}, "schedule.at", "^schedule.at: a date is required"),
    ({"id": "b", "template": "offer", "schedule": {"every": "1m", "start": "2026-03-02T09:00:00Z"}},
     "schedule.every", "^schedule.every: "),
    ({"id": "b", "template": "offer", "schedule": {}}, "schedule", "^schedule: give one of"),
    ({"id": "b", "template": "offer", "schedule": {"at": "2026-03-02T09:00:00Z", "segment": "x"}},
     "schedule.segment", "segment"),
    ({"id": "b", "template": "offer", "goal": {"event": 5, "within": "7d"}}, "goal.event", "^goal.event: "),
    ({"id": "b", "template": "offer", "goal": {"event": {"event": "x"}, "within": None}}, "goal.within",
     "^goal.within: a duration is required"),
    ({"id": "b", "template": "offer", "holdout": 10, "holdout_by": "cookie",
      "goal": {"event": {"event": "x"}, "within": "7d"}}, "holdout_by", "profile or identifier"),
    ({"id": "", "template": "offer"}, "id", "^id: "),
    ({"id": "b", "template": "offer", "name": ""}, "name", "^name: "),
])  # fmt: skip
def test_a_bad_broadcast_is_refused_naming_the_field(engine, ws, raw, field, why):
    with engine.begin() as conn, pytest.raises(Exception, match=why) as e:
        manage.publish_broadcast(conn, ws, raw, T0)
    assert e.value.field == field
    assert "nodes." not in e.value.message and "entry." not in e.value.message, e.value.message
    with engine.connect() as conn, pytest.raises(Exception, match="not found"):
        store.get(conn, ws, "b")


def test_the_uplift_report_reads_the_holdout_the_runtime_assigned(engine, ws, clock, worker, tmp_path):
    """The arms a broadcast's holdout split assigned are on the people's timelines (Journey Step with a variant):
    exported to the lake, the uplift report counts exactly those groups, and their orders."""
    from chorus.analytics import lake
    from chorus.analytics import uplift as up
    from chorus.analytics.engine import open_lake

    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(40)})
    broadcast(engine, ws, T0, holdout=30, goal={"event": {"event": "Order Completed"}, "within": "3d"})
    settle(worker)
    with engine.connect() as conn:
        arms = dict(conn.execute(sa.select(journey_records.c.profile_id, journey_records.c.arm).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "entered")).all())  # fmt: skip
    held = {p for p, a in arms.items() if a == "holdout"}
    buyers = [u for u, p in sorted(pids.items()) if p in held][:2] + [u for u, p in sorted(pids.items())
                                                                        if p not in held][:5]  # fmt: skip
    at = T0 + timedelta(hours=5)
    _send(engine, ws, [{"type": "track", "userId": u, "event": "Order Completed", "messageId": f"o-{u}",
                        "timestamp": at.isoformat(), "properties": {"order_id": f"o-{u}", "revenue": 10},
                        "context": {"channel": "web"}} for u in buyers], received_at=at)  # fmt: skip
    clock.at = T0 + timedelta(days=4)
    settle(worker)
    lake.export(engine, tmp_path / "lake", now=T0 + timedelta(days=5))
    r = up.uplift(open_lake(tmp_path / "lake"), window=timedelta(days=3)).journey("b1")
    assert (r["holdout"], r["treated"]) == (len(held), 40 - len(held))
    assert (r["holdout_converted"], r["treated_converted"]) == (2, 5)


def test_a_schedule_until_the_end_of_the_calendar_runs_and_holds_up_nobody(engine, ws, clock, worker):
    """``until: 9999-12-31`` ("forever") is a valid schedule: it runs every day, and the day after its last, past
    the calendar, is no run rather than an error (review: the planner's OverflowError, every pass, held up every
    scheduled journey and broadcast of the installation)."""
    pids = people(engine, ws, worker, {"u1": (None, "news"), "u2": (None, "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "until": "9999-12-31"})
    with engine.begin() as conn:
        manage.publish_broadcast(conn, ws, {"id": "b2", "template": "welcome", "channel": ["in_app"],
                                            "segment": "newsletter"}, T0)  # fmt: skip
    settle(worker)
    assert sent(engine, ws, "b2") == dict.fromkeys(pids.values(), 1)
    clock.at = T0 + timedelta(hours=12)  # Tuesday's run is due (09:00 has come in UTC+14): its timers are set
    settle(worker)
    clock.at = T0 + timedelta(days=1, hours=1)  # Tuesday 10:00 UTC: their 09:00 has come
    settle(worker)
    # Monday's too: published at 09:00 UTC on Monday, their 09:00 had not passed (it was then)
    assert sent(engine, ws, "b1") == dict.fromkeys(pids.values(), 2)
    assert schedule.d.next_run(schedule.d.Schedule(None, time=schedule.d.time(9), until=schedule.d.date.max),
                               datetime(9999, 12, 31, 10, tzinfo=UTC), schedule.FIRST_ZONE) is None  # fmt: skip


def test_a_journey_whose_planning_fails_holds_up_no_other(engine, ws, clock, worker, monkeypatch):
    pids = people(engine, ws, worker, {"u1": (None, "news")})
    broadcast(engine, ws, T0, schedule={"every": "1d", "start": T0.isoformat()})
    with engine.begin() as conn:
        manage.publish_broadcast(conn, ws, {"id": "b2", "template": "welcome", "channel": ["in_app"],
                                            "segment": "newsletter", "schedule": {"every": "1d",
                                                                                 "start": T0.isoformat()}}, T0)
    real = schedule.plan

    def plan(conn, ws_id, jr, defn, at):
        if jr.id == "b1":
            raise RuntimeError("this journey's plan cannot be made")
        return real(conn, ws_id, jr, defn, at)

    monkeypatch.setattr(schedule, "plan", plan)
    settle(worker)
    assert sent(engine, ws, "b1") == {} and sent(engine, ws, "b2") == {pids["u1"]: 1}


@pytest.mark.parametrize(("inner", "outer"), [
    ("nodes.send.template", "template"), ("nodes.send.channel[1]", "channel[1]"), ("nodes.send.data.x", "data.x"),
    ("entry.schedule.at", "schedule.at"), ("entry.schedule.segment", "segment"), ("nodes.arm.by", "holdout_by"),
    ("nodes.arm.arms[0].holdout", "holdout"), ("nodes.arm.arms", "holdout"), ("nodes.arm", "holdout"),
    ("goal.within", "goal.within"), ("exit_on_goal", "goal"), ("name", "name"),
])  # fmt: skip
def test_a_place_in_a_broadcasts_journey_is_named_by_the_broadcasts_field(inner, outer):
    """One table maps them; a place inside a field that is not kept is that field (review: the table's own example,
    nodes.arm.arms[0].holdout, came back unchanged)."""
    assert manage.broadcast_field(inner) == outer


def test_a_local_time_run_published_after_it_began_in_utc_plus_14_runs_where_its_time_is_still_ahead(
        engine, ws, clock, worker):  # fmt: skip
    """Published at 20:00Z on Saturday 7 March, "Sunday 09:00" has begun in UTC+14 (19:00Z) but is hours ahead in
    Paris and New York: they get it then (an outside probe: it ran for nobody, silently); Kiritimati (UTC+14), where
    09:00 had passed an hour before, gets nothing rather than a late message."""
    pids = people(engine, ws, worker, {"ny": ("America/New_York", "news"), "paris": ("Europe/Paris", "news"),
                                       "kiri": ("Pacific/Kiritimati", "news")})  # fmt: skip
    published = clock.at = datetime(2026, 3, 7, 20, 0, tzinfo=UTC)
    broadcast(engine, ws, published, schedule={"time": "09:00", "on": "2026-03-08"})
    settle(worker)
    with engine.connect() as conn:
        due = dict(conn.execute(sa.select(journey_timers.c.profile_id, journey_timers.c.due_at).where(
            journey_timers.c.workspace_id == ws)).all())  # fmt: skip
    assert due == {pids["ny"]: datetime(2026, 3, 8, 13, 0, tzinfo=UTC), pids["paris"]: datetime(2026, 3, 8, 8, 0,
                                                                                                 tzinfo=UTC)}
    clock.at = datetime(2026, 3, 8, 13, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}
    clock.at = datetime(2026, 3, 10, 13, 0, tzinfo=UTC)  # a one-off: nothing more
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}


def test_a_weekly_local_run_published_late_keeps_that_day_and_the_next_ones(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news")})
    published = clock.at = datetime(2026, 3, 7, 20, 0, tzinfo=UTC)  # Saturday; Sunday 09:00 Paris still ahead
    broadcast(engine, ws, published, schedule={"time": "09:00", "weekdays": ["sun"]})
    for day in (8, 15):
        clock.at = datetime(2026, 3, day, 8, 0, tzinfo=UTC)
        settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 2}


def test_a_broadcast_message_deferred_past_her_purchase_is_withdrawn(engine, ws, clock, worker):
    """An outside probe: a sale email deferred by the frequency cap went out two days after the person bought (a
    broadcast kept converted people's messages). Reaching the goal now withdraws what has not gone out; the
    conversion counts."""
    from chorus import registry as reg
    from chorus import workspaces

    quiet = {"messaging": {"timezone": "UTC",
                           "quiet_hours": {"start": "08:00", "end": "20:00", "channels": ["in_app"]}}}
    workspaces.update_settings(engine, ws, quiet, registry=reg.installed())
    worker.task("deliver").clock = clock
    pids = people(engine, ws, worker, {"u1": (None, "news"), "u2": (None, "news")})
    from chorus.messaging import outbox

    outbox.save_template(engine, ws, "sale", {"kind": "marketing", "variants": {"in_app": {"title": "Sale",
                                                                                            "body": "20% off"}}})
    broadcast(engine, ws, T0, template="sale", goal={"event": {"event": "Order Completed"}, "within": "3d"})
    settle(worker)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(messages.c.status, messages.c.reason).where(messages.c.workspace_id == ws)).all()
        assert {r.status for r in rows} == {"queued"}, rows  # deferred by quiet hours until 20:00
    clock.at = T0 + timedelta(hours=1)
    _send(engine, ws, [{"type": "track", "userId": "u1", "event": "Order Completed", "messageId": "o1",
                        "timestamp": clock.at.isoformat(), "context": {"channel": "store"}}], received_at=clock.at)
    settle(worker)
    clock.at = T0 + timedelta(hours=12)  # 21:00: quiet hours are over
    settle(worker)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.select(messages.c.profile_id, messages.c.status).where(
            messages.c.workspace_id == ws)).all())  # fmt: skip
        converted = conn.execute(sa.select(journey_records.c.profile_id).where(
            journey_records.c.workspace_id == ws, journey_records.c.kind == "converted")).scalars().all()  # fmt: skip
    assert got == {pids["u1"]: "skipped", pids["u2"]: "sent"}
    assert converted == [pids["u1"]]


def test_a_new_version_of_a_broadcast_sent_now_does_not_send_it_again(engine, ws, clock, worker):
    """An outside probe fixed a sent broadcast's name (a new version) and every member got it a second time. The
    new version of a one-off "now" broadcast that has run keeps its instant; a new id sends again."""
    pids = people(engine, ws, worker, {"u1": (None, "news"), "u2": (None, "news")})
    broadcast(engine, ws, T0)
    settle(worker)
    clock.at = T0 + timedelta(hours=1)
    assert broadcast(engine, ws, clock.at, name="Spring sale")["version"] == 2
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["u1"]: 1, pids["u2"]: 1}
    broadcast(engine, ws, clock.at, id="b1-again")
    settle(worker)
    assert sent(engine, ws, "b1-again") == {pids["u1"]: 1, pids["u2"]: 1}


def _due(engine, ws) -> dict:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(journey_timers.c.profile_id, journey_timers.c.due_at).where(
            journey_timers.c.workspace_id == ws, journey_timers.c.instance_id == "")).all())  # fmt: skip


def test_a_local_time_broadcast_moved_to_the_next_day_is_sent_once_on_the_new_day(engine, ws, clock, worker):
    """An outside probe: moved from 8 to 9 March after the 8th's run had set its local timers, it was sent on both
    days (the 8th's starts were not cancelled). Now the new schedule replaces the old one's pending starts."""
    pids = people(engine, ws, worker, {"ny": ("America/New_York", "news"), "paris": ("Europe/Paris", "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "on": "2026-03-08"})
    clock.at = datetime(2026, 3, 7, 19, 0, tzinfo=UTC)  # the 8th's run has begun (UTC+14): timers set
    settle(worker)
    assert set(_due(engine, ws)) == set(pids.values())
    broadcast(engine, ws, clock.at, schedule={"time": "09:00", "on": "2026-03-09"})
    assert _due(engine, ws) == {}  # the 8th's starts are gone with its schedule
    for day in (8, 9, 10):
        clock.at = datetime(2026, 3, day, 14, 0, tzinfo=UTC)
        settle(worker)
        assert sent(engine, ws, "b1") == ({} if day == 8 else {pids["ny"]: 1, pids["paris"]: 1}), day


def test_a_local_time_broadcast_moved_later_the_same_day_goes_out_at_the_new_time(engine, ws, clock, worker):
    """The probe's other case: moved from 09:00 to 11:00 on the day, it still went out at 09:00."""
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news"), "ny": ("America/New_York", "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "on": "2026-03-09"})
    clock.at = datetime(2026, 3, 9, 7, 0, tzinfo=UTC)  # 08:00 in Paris
    settle(worker)
    broadcast(engine, ws, clock.at, schedule={"time": "11:00", "on": "2026-03-09"})
    settle(worker)
    assert _due(engine, ws) == {pids["paris"]: datetime(2026, 3, 9, 10, 0, tzinfo=UTC),
                                pids["ny"]: datetime(2026, 3, 9, 15, 0, tzinfo=UTC)}  # fmt: skip
    clock.at = datetime(2026, 3, 9, 9, 30, tzinfo=UTC)  # 10:30 in Paris: not yet
    settle(worker)
    assert sent(engine, ws, "b1") == {}
    clock.at = datetime(2026, 3, 9, 16, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}


DAILY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def test_a_daily_broadcast_moved_to_a_later_hour_sends_nobody_twice_that_day(engine, ws, clock, worker):
    """Paris has had today's 09:00 when the time moves to 17:00: the day's run is one start per person (its id is the
    day), so she gets nothing more today; New York, still before 09:00, gets it at 17:00; both get tomorrow's."""
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news"), "ny": ("America/New_York", "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "weekdays": DAILY})
    clock.at = datetime(2026, 3, 9, 9, 0, tzinfo=UTC)  # 10:00 in Paris, 05:00 in New York
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1}
    broadcast(engine, ws, clock.at, schedule={"time": "17:00", "weekdays": DAILY})
    clock.at = datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}
    clock.at = datetime(2026, 3, 10, 23, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 2, pids["ny"]: 2}


def test_a_recurring_broadcast_with_a_goal_window_longer_than_its_period_reaches_everybody_at_every_run(
        engine, ws, clock, worker):  # fmt: skip
    """An outside probe: an hourly broadcast with a 7-day goal reached each person at its first run only (she was
    still in the broadcast, waiting for the goal, when the next runs came). Each run is entered on its own now; a
    purchase still converts and ends what is waiting, and the holdout stays out of every run."""
    pids = people(engine, ws, worker, {f"u{i}": (None, "news") for i in range(6)})
    broadcast(engine, ws, T0, schedule={"every": "1h", "start": (T0 + timedelta(hours=1)).isoformat()},
              goal={"event": {"event": "Order Completed"}, "within": "7d"}, holdout=30)  # fmt: skip
    for h in (1, 2, 3):
        clock.at = T0 + timedelta(hours=h)
        settle(worker)
    got = sent(engine, ws, "b1")
    assert got and set(got.values()) == {3}, got  # every reached person at every run
    with engine.connect() as conn:
        arms = dict(conn.execute(sa.select(journey_records.c.profile_id, journey_records.c.arm).where(
            journey_records.c.workspace_id == ws, journey_records.c.arm.is_not(None))).all())  # fmt: skip
    held_out = {pid for pid, arm in arms.items() if arm == "holdout"}
    assert held_out.isdisjoint(got) and set(got) | held_out == set(pids.values()), (got, arms)


@pytest.mark.parametrize("schedule", [{"at": "2026-03-01T09:00:00Z"}, {"time": "09:00", "on": "2026-03-01"},
                                      {"time": "09:00", "weekdays": ["mon"], "until": "2026-03-02"}])  # fmt: skip
def test_a_schedule_with_every_run_in_the_past_is_refused_naming_it(engine, ws, clock, schedule):
    """An outside probe: accepted (200 on the dry run, 201 on publish), it stayed active and never ran."""
    from chorus.errors import ChorusError

    clock.at = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
    for dry in (True, False):
        with engine.begin() as conn, pytest.raises(ChorusError) as caught:
            manage.publish_broadcast(conn, ws, {"id": "late", "template": "offer", "channel": ["in_app"],
                                                "schedule": schedule}, clock.at, dry_run=dry)  # fmt: skip
        assert caught.value.status == 400 and caught.value.field == "schedule", caught.value
        assert "in the past" in caught.value.message


def test_a_day_whose_local_time_is_still_ahead_somewhere_is_accepted(engine, ws, clock):
    clock.at = datetime(2026, 3, 1, 18, 0, tzinfo=UTC)  # 09:00 on the 1st has passed in Europe, not in Hawaii
    with engine.begin() as conn:
        manage.publish_broadcast(conn, ws, {"id": "west", "template": "offer", "channel": ["in_app"],
                                            "schedule": {"time": "09:00", "on": "2026-03-01"}}, clock.at)  # fmt: skip


# -- review: a changed schedule whose run falls at the instant of an older schedule's run -----------------------------
def test_local_broadcast_audience_change_same_time_still_sends_today(engine, ws, clock, worker):
    """Docs: a new audience replaces the schedule, the new one plans as if published then. Paris (09:00 = 08:00Z) and
    New York (09:00 = 14:00Z) are both still ahead at 07:00Z: both should get today's send."""
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news"), "ny": ("America/New_York", "news")})
    with engine.begin() as conn:
        segments_store.save(conn, ws, "newsletter2", "Newsletter 2",
                            rules.parse({"trait": {"name": "plan", "equals": "news"}}), T0)  # fmt: skip
    settle(worker, 4)
    broadcast(engine, ws, T0, schedule={"time": "09:00", "weekdays": DAILY})
    clock.at = datetime(2026, 3, 9, 7, 0, tzinfo=UTC)  # 08:00 in Paris: the 9th's run began in UTC+14
    settle(worker)
    assert set(_due(engine, ws)) == set(pids.values())
    broadcast(engine, ws, clock.at, schedule={"time": "09:00", "weekdays": DAILY}, segment="newsletter2")
    settle(worker)
    clock.at = datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}


def test_local_broadcast_gaining_a_weekday_still_sends_today_to_those_still_ahead(engine, ws, clock, worker):
    """Same mechanism: a daily-on-weekdays 09:00 local broadcast that gains Saturday on Monday at 07:00Z: its
    Monday run_at (Sun 19:00Z) is the old version's, add_run conflicts, nobody gets Monday's send."""
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news"), "ny": ("America/New_York", "news")})
    wk = ["mon", "tue", "wed", "thu", "fri"]
    broadcast(engine, ws, T0, schedule={"time": "09:00", "weekdays": wk})
    clock.at = datetime(2026, 3, 9, 7, 0, tzinfo=UTC)  # Monday
    settle(worker)
    broadcast(engine, ws, clock.at, schedule={"time": "09:00", "weekdays": [*wk, "sat"]})
    settle(worker)
    clock.at = datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}


def test_local_broadcast_moved_and_moved_back_the_same_day(engine, ws, clock, worker):
    pids = people(engine, ws, worker, {"paris": ("Europe/Paris", "news"), "ny": ("America/New_York", "news")})
    broadcast(engine, ws, T0, schedule={"time": "09:00", "weekdays": DAILY})
    clock.at = datetime(2026, 3, 9, 7, 0, tzinfo=UTC)
    settle(worker)
    broadcast(engine, ws, clock.at, schedule={"time": "11:00", "weekdays": DAILY})
    settle(worker)
    clock.at = datetime(2026, 3, 9, 7, 10, tzinfo=UTC)
    broadcast(engine, ws, clock.at, schedule={"time": "09:00", "weekdays": DAILY})
    settle(worker)
    clock.at = datetime(2026, 3, 9, 23, 0, tzinfo=UTC)
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["paris"]: 1, pids["ny"]: 1}


def test_the_conflicting_run_is_planned_again_at_every_pass(engine, ws, clock, worker):
    people(engine, ws, worker, {"ny": ("America/New_York", "news")})
    with engine.begin() as conn:
        segments_store.save(conn, ws, "newsletter2", "N2", rules.parse({"trait": {"name": "plan", "equals": "news"}}),
                            T0)  # fmt: skip
    broadcast(engine, ws, T0, schedule={"time": "09:00", "weekdays": DAILY})
    clock.at = datetime(2026, 3, 9, 7, 0, tzinfo=UTC)
    settle(worker)
    broadcast(engine, ws, clock.at, schedule={"time": "09:00", "weekdays": DAILY}, segment="newsletter2")
    settle(worker)
    with engine.begin() as conn:
        jr = store.get(conn, ws, "b1")
        due = schedule.latest_due(conn, ws, jr, store.definition(conn, ws, "b1", jr.version).entry, clock.at)
    assert due is None, f"still due every pass: {due} (a run row for it exists already, of version 1)"


def test_a_now_broadcast_that_has_run_takes_a_new_audience_without_sending_again(engine, ws, clock, worker):
    """Review: republished with "now" and another segment, it was refused as "in the past" (its "now" keeps the
    instant it ran at), with advice to use "now"."""
    pids = people(engine, ws, worker, {"a": (None, "news")})
    with engine.begin() as conn:
        segments_store.save(conn, ws, "newsletter2", "N2", rules.parse({"trait": {"name": "plan", "equals": "news"}}),
                            T0)  # fmt: skip
    broadcast(engine, ws, clock.at, schedule="now")
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["a"]: 1}
    clock.at = T0 + timedelta(hours=1)
    broadcast(engine, ws, clock.at, schedule="now", segment="newsletter2")
    settle(worker)
    assert sent(engine, ws, "b1") == {pids["a"]: 1}
