"""The batch on the SQL compiler, on SQLite and PostgreSQL: a span of profile ids computes exactly the evaluator's
answer for those profiles; the people whose answer time alone can change are all found (so the batch leaves the
evaluator's timers); a chunk the compiler fails on is evaluated person by person; and on PostgreSQL an evaluation
committed while a batch waits for its locks is not undone."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus import workspaces
from chorus.segments import batch, load
from chorus.segments import compile as sql
from chorus.segments import engine as seg
from chorus.segments import rules as r
from chorus.segments.evaluate import evaluate
from chorus.segments.needs import ALL
from chorus.store.tables import events, profiles, segment_history, segment_timers
from chorus.timeutil import iso
from tests.identity.helpers import profile_of, resolve
from tests.segments import test_compile as tc
from tests.segments import test_properties as props
from tests.segments.conftest import T0
from tests.segments.test_engine import define, ev, members, send


def spans(ids: list[str], cuts: list[int]) -> list[tuple[str | None, str]]:
    """The profile ids cut into consecutive spans ``(after, last]`` at the given positions."""
    bounds = sorted({min(c, len(ids) - 1) for c in cuts} | {len(ids) - 1})
    out, after = [], None
    for b in bounds:
        out.append((after, ids[b]))
        after = ids[b]
    return out


def check_spans(engine, people, questions, cuts) -> None:
    """For every rule and instant, and every span of a cut of the profiles: ``members(span=)`` is the evaluator's
    answer for the span's people, and the timed candidates hold every person with a ``next_change``."""
    w = tc.new_workspace(engine)
    ws = w["id"]
    tc.store_people(engine, w, people)
    with engine.connect() as conn:
        cfg = workspaces.get(conn, ws).identity
        ids = sorted(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == ws)).scalars())
        everybody = load.people(conn, ws, ids, cfg)
        for raw, now in questions:
            rule = r.parse(raw)
            results = {p: evaluate(rule, who, now, topics=tc.TOPICS) for p, who in everybody.items()}
            for span in spans(ids, cuts):
                mine = {p for p in ids if (span[0] is None or p > span[0]) and p <= span[1]}
                got = sql.members(conn, ws, rule, now, tc.TOPICS, span=span)
                assert got == {p for p in mine if results[p].value}, (raw, now, span)
                timed = {p for p in mine if results[p].next_change is not None}
                found = batch.timed_candidates(conn, ws, rule, now, span)
                assert timed <= found <= mine, (raw, now, sorted(timed - found))


cuts = st.lists(st.integers(0, 3), max_size=3)


@tc.SETTINGS
@given(st.lists(tc.a_person(), min_size=1, max_size=4),
       st.lists(st.tuples(tc.rules, props.nows), min_size=3, max_size=6), cuts)
def test_a_span_is_the_evaluators_answer_and_every_timed_person_a_candidate(engine, people, questions, cuts):
    check_spans(engine, people, questions, cuts)


near = st.builds(lambda h: tc.T0 + timedelta(hours=h), st.integers(-8 * 24, 8 * 24))  # windows are up to a week
later = st.builds(lambda h: tc.T0 + timedelta(hours=h), st.integers(1, 8 * 24))


@st.composite
def a_near_person(draw):
    """A person whose events and message statuses are within a week of T0: the instants asked about, so that most
    windows hold some of them and the answer has a next change."""
    who = draw(tc.a_person())
    who["messages"] = [{**m, "timestamp": iso(draw(near))} for m in who["messages"]]
    who["sent"] = [(t, [(status, draw(near)) for status, _ in statuses]) for t, statuses in who["sent"]]
    return who


@tc.SETTINGS
@given(st.lists(a_near_person(), min_size=1, max_size=4),
       st.lists(st.tuples(props.TIMED_LEAVES, later), min_size=3, max_size=6), cuts)
def test_every_person_a_timed_condition_will_change_is_a_candidate(engine, people, questions, cuts):
    """One time-dependent condition at a time, at instants near the people's events (mostly after them: the
    simplest examples have the events at T0 and ask an hour later, when they are in most windows)."""
    check_spans(engine, people, questions, cuts)


def test_timed_reads_keep_only_what_time_can_change(engine):
    now = T0
    reads, traits = batch.timed_reads(r.parse({"and": [
        {"performed": {"event": "Product Viewed", "window": "7d"}},
        {"performed": {"event": "Order Completed"}},  # no window: only an event stamped later than now
        {"trait": {"name": "birthday", "anniversary": {"next_days": 3}}},
        {"trait": {"name": "plan", "equals": "pro"}},  # constant in time
        {"first_time": {"event": "Signed Up", "more_than_ago": "30d"}},  # ages: every such event
    ]}), now)  # fmt: skip
    assert reads.names == {"Product Viewed": now - timedelta(days=7), "Order Completed": now,
                           "Signed Up": ALL}  # fmt: skip
    assert traits == ["birthday"] and reads.messages is None and reads.any_event is None


def test_the_batch_leaves_the_evaluators_timers_and_removes_the_others(engine, ws, clock, worker):
    """Viewed 3 times in 7 days: the batch sets the member's timer to the instant her first view leaves the window,
    the instant the incremental path would; a person with nothing that time can change has no timer, and a stale
    timer is removed."""
    send(engine, ws, [ev("Product Viewed", T0 + timedelta(hours=h), user="u1") for h in range(3)])
    send(engine, ws, [{"type": "identify", "userId": "u2", "messageId": "i2", "timestamp": T0.isoformat()}])
    resolve(engine)
    clock.at = T0 + timedelta(hours=5)
    define(engine, ws, "thrice", {"performed": {"event": "Product Viewed", "window": "7d", "times": {"gte": 3}}})
    u1, u2 = profile_of(engine, ws, "user_id:u1"), profile_of(engine, ws, "user_id:u2")
    with engine.begin() as conn:  # a timer left by something else, which the rule does not give her
        conn.execute(segment_timers.insert().values(workspace_id=ws, segment_id="thrice", profile_id=u2,
                                                    due_at=T0 + timedelta(days=1)))  # fmt: skip
    out = seg.recompute(engine, ws, "thrice", chunk=1)
    assert out.entered == [u1] and members(engine, ws, "thrice") == {u1}
    with engine.connect() as conn:
        due = dict(conn.execute(sa.select(segment_timers.c.profile_id, segment_timers.c.due_at).where(
            segment_timers.c.workspace_id == ws)).all())  # fmt: skip
    assert due == {u1: T0 + timedelta(days=7)}


def test_a_chunk_the_compiler_fails_on_is_evaluated_person_by_person(engine, ws, clock, monkeypatch, caplog):
    for u in range(3):
        send(engine, ws, [ev("Product Viewed", T0, user=f"u{u}")])
    resolve(engine)
    clock.at = T0 + timedelta(hours=1)
    define(engine, ws, "viewers", {"performed": {"event": "Product Viewed", "window": "1d"}})

    def cannot(*args, **kwargs):
        raise NotImplementedError("a rule this compiler cannot do")

    monkeypatch.setattr(sql, "members_query", cannot)
    with caplog.at_level(logging.ERROR, logger="chorus.segments"):
        out = seg.recompute(engine, ws, "viewers", chunk=2)
    everybody = {profile_of(engine, ws, f"user_id:u{u}") for u in range(3)}
    assert set(out.entered) == everybody == members(engine, ws, "viewers")
    assert sum("evaluated one by one" in m for m in caplog.messages) == 2  # two chunks
    with engine.connect() as conn:  # the evaluator's timers: each view leaves the window a day later
        assert set(conn.execute(sa.select(segment_timers.c.due_at).where(
            segment_timers.c.workspace_id == ws)).scalars()) == {T0 + timedelta(days=1)}  # fmt: skip


def test_an_evaluation_committed_while_the_batch_waits_for_her_is_not_undone(engine, ws, clock):
    """The batch locks the chunk's profile rows before it runs its query. Here her one view has left the window
    (her timer is due) and the consumer holds her row: a new view of hers becomes visible and she stays in, both
    committed while the batch waits for her row. The batch, reading after its locks (READ COMMITTED: each statement
    sees what committed before it), finds her a member and changes nothing. Had it read before the locks, it would
    have taken her out on her old view alone."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    for u in range(3):
        send(engine, ws, [{"type": "identify", "userId": f"u{u}", "messageId": f"i{u}", "timestamp": T0.isoformat()}])
    send(engine, ws, [ev("Product Viewed", T0, user="u1")])
    resolve(engine)
    define(engine, ws, "recent", {"performed": {"event": "Product Viewed", "window": "1d"}})
    clock.at = T0 + timedelta(minutes=5)
    seg.recompute(engine, ws, "recent")
    her = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "recent") == {her}
    clock.at = T0 + timedelta(days=2)
    view = {**ev("Product Viewed", clock.at - timedelta(minutes=1), user="u1"), "messageId": uuid.uuid4().hex}
    send(engine, ws, [view], received_at=clock.at)  # stored, not yet resolved: no profile reads it
    errors: list = []
    with engine.connect() as consumer:
        tx = consumer.begin()
        seg.lock_person(consumer, ws, her)
        # her event is attributed in this transaction, and the consumer evaluates her with it: she stays
        consumer.execute(events.update().where(events.c.workspace_id == ws, events.c.message_id == view["messageId"])
                         .values(profile_id=her))  # fmt: skip
        assert seg.Evaluator(consumer, ws, clock.at).person(her, {"recent"}, "event").exited == []

        def run():
            try:
                seg.recompute(engine, ws, "recent", chunk=10)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        t = threading.Thread(target=run)
        t.start()
        time.sleep(1.0)  # the batch waits for her row
        assert t.is_alive()
        tx.commit()
        t.join(30)
    assert not errors and not t.is_alive()
    assert members(engine, ws, "recent") == {her}
    with engine.connect() as conn:
        changes = conn.execute(sa.select(segment_history.c.change, segment_history.c.cause).where(
            segment_history.c.workspace_id == ws, segment_history.c.profile_id == her)).all()  # fmt: skip
    assert [tuple(c) for c in changes] == [("entered", "batch")]


def test_list_entries_made_under_a_merged_id_count_for_the_survivor_in_the_batch(engine, ws, clock, worker):
    """A list entry keeps the id it was made for: once that anonymous profile merges into a known one, the entry
    is the survivor's for the loader, the incremental path and the compiled batch alike (no exit on recompute)."""
    from chorus.segments import store
    from tests.segments.test_engine import settle

    with engine.begin() as conn:
        store.save_list(conn, ws, "vip", "VIP", T0)
    define(engine, ws, "vips", {"list": "vip"})
    define(engine, ws, "vipref", {"segment": "vips"})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()}])
    send(engine, ws, [{**ev("Product Viewed", T0), "userId": None, "anonymousId": "a1"}])
    settle(worker)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    with engine.begin() as conn:
        store.change_list(conn, ws, "vip", [anon], [], T0)
    settle(worker)
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": (T0 + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    settle(worker)
    survivor = profile_of(engine, ws, "user_id:u1")
    assert survivor != anon
    with engine.connect() as conn:
        assert load.people(conn, ws, [survivor], workspaces.get(conn, ws).identity)[survivor].lists == {"vip"}
    assert members(engine, ws, "vips") == members(engine, ws, "vipref") == {survivor}
    for sid in ("vips", "vipref"):
        out = seg.recompute(engine, ws, sid, chunk=1)
        assert (out.entered, out.exited) == ([], []), sid
    assert members(engine, ws, "vips") == members(engine, ws, "vipref") == {survivor}
