"""The incremental segment engine over the store, on both engines: changes from the feed, exact timers, references,
merges, erasure, and the batch computation agreeing with the incremental one."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from chorus import workspaces
from chorus.profiles import privacy
from chorus.segments import engine as seg
from chorus.segments import rules, store
from chorus.store.tables import events, profile_changes, profiles, segment_history, segment_timers, segments
from chorus.timeutil import iso
from tests.identity.helpers import profile_of
from tests.identity.helpers import send as _send
from tests.segments.conftest import T0

BROWSE = {"and": [
    {"performed": {"event": "Product Viewed", "where": [{"property": "category", "equals": "laptops"}],
                   "window": "7d", "times": {"gte": 3}}},
    {"not": {"or": [
        {"performed": {"event": "Product Added", "where": [{"property": "category", "equals": "laptops"}],
                       "window": "7d"}},
        {"performed": {"event": "Order Completed", "window": "7d"}},
    ]}},
]}  # fmt: skip


def send(engine, ws, msgs, received_at=None):
    """Stored as the tracking API would at the latest of their times (a timestamp more than two days after its
    arrival would be refused by the door)."""
    latest = max(datetime.fromisoformat(m["timestamp"]) for m in msgs)
    _send(engine, ws, msgs, received_at=received_at or latest)


def define(engine, ws, sid, rule, name=None):
    with engine.begin() as conn:
        return store.save(conn, ws, sid, name or sid, rules.parse(rule), T0)


def ev(name, at, user="u1", **props):
    return {"type": "track", "userId": user, "event": name, "messageId": uuid.uuid4().hex, "timestamp": at.isoformat(),
            "properties": props, "context": {"channel": "web"}}  # fmt: skip


def members(engine, ws, sid):
    with engine.connect() as conn:
        return store.members(conn, ws, sid)


def history(engine, ws, sid):
    with engine.connect() as conn:
        return [(h.change, h.cause) for h in conn.execute(
            sa.select(segment_history).where(segment_history.c.workspace_id == ws, segment_history.c.segment_id == sid)
            .order_by(segment_history.c.id))]  # fmt: skip


def settle(worker, n=4):
    for _ in range(n):
        worker.run_once()


def test_browse_abandonment_fills_from_web_events_and_empties_at_the_exact_instant(engine, ws, clock, worker):
    define(engine, ws, "browse", BROWSE)
    settle(worker)  # the batch computation of the new segment (nobody yet)
    for i in range(3):  # Monday 09:00, Tuesday 10:00, Wednesday 11:00
        clock.at = T0 + timedelta(days=i, hours=i)
        send(engine, ws, [ev("Product Viewed", clock.at, category="laptops")], received_at=clock.at)
        settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "browse") == {pid}
    with engine.connect() as conn:
        (due,) = conn.execute(sa.select(segment_timers.c.due_at).where(segment_timers.c.profile_id == pid)).scalars()
        timeline = [r.payload["event"] for r in conn.execute(sa.select(events.c.payload).where(
            events.c.workspace_id == ws, events.c.profile_id == pid))]  # fmt: skip
        fed = [r.detail for r in conn.execute(sa.select(profile_changes).where(profile_changes.c.cause == "segment",
                                                                               profile_changes.c.workspace_id == ws))]
    assert due == T0 + timedelta(days=7)  # the next Monday 09:00: the first view leaves the window
    assert "Segment Entered" in timeline and fed == [{"segment": "browse", "change": "entered"}]
    clock.at = due - timedelta(microseconds=1)
    settle(worker)
    assert members(engine, ws, "browse") == {pid}  # not a microsecond early
    clock.at = due
    settle(worker)
    assert members(engine, ws, "browse") == set()
    assert history(engine, ws, "browse") == [("entered", "event"), ("exited", "timer")]


def test_a_late_worker_decides_each_timer_at_its_own_instant_and_misses_no_flip_in_between(engine, ws, clock,
                                                                                           worker):
    """Time is exact even when the worker is late: a person is decided at the instant her timer fell due, not when
    a worker found it, so her entry is dated then, and an entry and exit that both fell due while no worker ran
    are both made, in order (a worker deciding at its own late instant would see her out and make neither)."""
    # "viewed in the last 3 days but not in the last day": one view at T0 puts her in from T0+1d to T0+3d
    define(engine, ws, "cooling", {"and": [{"performed": {"event": "Product Viewed", "window": "3d"}},
                                           {"not": {"performed": {"event": "Product Viewed", "window": "1d"}}}]})
    settle(worker)
    send(engine, ws, [ev("Product Viewed", T0, category="laptops")], received_at=T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "cooling") == set()
    clock.at = T0 + timedelta(days=5, hours=7)  # the worker was down for five days
    settle(worker)
    assert members(engine, ws, "cooling") == set()
    with engine.connect() as conn:
        hist = [(h.change, h.cause, h.at) for h in conn.execute(sa.select(segment_history).where(
            segment_history.c.workspace_id == ws, segment_history.c.segment_id == "cooling")
            .order_by(segment_history.c.id))]  # fmt: skip
        fed = [(r.detail["change"], r.at) for r in conn.execute(sa.select(profile_changes).where(
            profile_changes.c.cause == "segment", profile_changes.c.workspace_id == ws)
            .order_by(profile_changes.c.seq))]  # fmt: skip
        timeline = sorted((r.payload["event"], r.payload["timestamp"]) for r in conn.execute(
            sa.select(events.c.payload).where(events.c.workspace_id == ws, events.c.profile_id == pid))
            if r.payload["event"].startswith("Segment"))  # fmt: skip
    entered, exited = T0 + timedelta(days=1), T0 + timedelta(days=3)
    assert hist == [("entered", "timer", entered), ("exited", "timer", exited)]
    assert fed == [("entered", entered), ("exited", exited)]  # what a journey on this segment is given, and when
    assert timeline == [("Segment Entered", iso(entered)), ("Segment Exited", iso(exited))]


def test_a_timer_due_later_is_not_decided_back_at_an_earlier_timers_instant(engine, ws, clock, worker):
    """A person with two due timers is decided at the earlier one's instant for that segment only: the other
    segment was decided since (a cart add of hers), and deciding it back then would see her add as not made yet,
    take her out at that instant and put her back in at the add: an exit and an entry that never happened."""
    define(engine, ws, "cooling", {"and": [{"performed": {"event": "Product Viewed", "window": "3d"}},
                                           {"not": {"performed": {"event": "Product Viewed", "window": "1d"}}}]})
    define(engine, ws, "carted", {"performed": {"event": "Product Added", "window": "1d"}})
    settle(worker)
    send(engine, ws, [ev("Product Viewed", T0)], received_at=T0)
    settle(worker)  # cooling's timer: T0 + 1d
    clock.at = T0 + timedelta(days=2)
    send(engine, ws, [ev("Product Added", clock.at)], received_at=clock.at)
    for task in ("resolve", "feed"):  # the add is decided before the late timer task runs
        worker.task(task).run_once()
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "carted") == {pid}
    clock.at = T0 + timedelta(days=5)  # both timers due: cooling's at T0+1d, carted's at T0+3d
    settle(worker)
    with engine.connect() as conn:
        hist = [(h.segment_id, h.change, h.at) for h in conn.execute(sa.select(segment_history).where(
            segment_history.c.workspace_id == ws).order_by(segment_history.c.id))]  # fmt: skip
    day = timedelta(days=1)
    assert sorted(hist, key=lambda h: (h[2], h[0])) == [
        ("cooling", "entered", T0 + day), ("carted", "entered", T0 + 2 * day),
        ("carted", "exited", T0 + 3 * day), ("cooling", "exited", T0 + 3 * day)]  # fmt: skip


def test_a_segment_referring_to_a_late_timers_segment_is_never_decided_before_its_last_change(engine, ws, clock,
                                                                                               worker):
    """"hot" (recently viewed and added to cart) refers to "recent" (viewed within a day). Her add is decided by the
    feed at day 2 (hot entered, reading "recent" before its day-1 timer fired); the late timer task then decides
    "recent" at day 1 and, from it, "hot": not back at day 1, which would date hot's exit before its entry (found
    by review), but at day 2, its last recorded change."""
    define(engine, ws, "recent", {"performed": {"event": "Product Viewed", "window": "1d"}})
    define(engine, ws, "hot", {"and": [{"segment": "recent"},
                                       {"performed": {"event": "Product Added", "window": "30d"}}]})
    settle(worker)
    send(engine, ws, [ev("Product Viewed", T0)], received_at=T0)
    settle(worker)
    clock.at = T0 + timedelta(days=2)
    send(engine, ws, [ev("Product Added", clock.at)], received_at=clock.at)
    for task in ("resolve", "feed"):  # the timer task is behind
        worker.task(task).run_once()
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "hot") == {pid}
    clock.at = T0 + timedelta(days=5)
    settle(worker)
    with engine.connect() as conn:
        hist = [(h.segment_id, h.change, h.at) for h in conn.execute(sa.select(segment_history).where(
            segment_history.c.workspace_id == ws).order_by(segment_history.c.id))]  # fmt: skip
    hot = [(change, at) for sid, change, at in hist if sid == "hot"]
    assert hot == [("entered", T0 + timedelta(days=2)), ("exited", T0 + timedelta(days=2))]
    assert ("recent", "exited", T0 + timedelta(days=2)) in hist  # decided with it, at the same instant
    assert members(engine, ws, "hot") == members(engine, ws, "recent") == set()


def test_a_person_whose_timer_fails_is_decided_at_its_first_instant_when_it_is_tried_again(engine, ws, clock, worker,
                                                                                             monkeypatch):
    """Her evaluation at the timer raises (the others' go on); a minute later it is tried again and she is decided
    at the instant the timer first fell due, so her exit is dated then, as if nothing had failed."""
    define(engine, ws, "recent", {"performed": {"event": "Product Viewed", "window": "1d"}})
    settle(worker)
    for user in ("u1", "u2"):
        send(engine, ws, [ev("Product Viewed", T0, user=user)], received_at=T0)
    settle(worker)
    bad = profile_of(engine, ws, "user_id:u1")
    real, failed = seg.decide, []

    def flaky(defs, order, dependents, sids, person, *rest):
        if person.id == bad and len(failed) < 2:  # all together, then she alone: both fail
            failed.append(person.id)
            raise RuntimeError("a bad profile")
        return real(defs, order, dependents, sids, person, *rest)

    monkeypatch.setattr(seg, "decide", flaky)
    due = T0 + timedelta(days=1)
    clock.at = due + timedelta(seconds=5)
    settle(worker, 1)
    assert failed and members(engine, ws, "recent") == {bad}  # the other one left; she waits a minute
    with engine.connect() as conn:
        (row,) = conn.execute(sa.select(segment_timers).where(segment_timers.c.profile_id == bad)).all()
    assert (row.due_at, row.first_due) == (clock.at + timedelta(minutes=1), due)
    clock.at += timedelta(minutes=2)
    settle(worker)
    assert members(engine, ws, "recent") == set()
    with engine.connect() as conn:
        hers = conn.execute(sa.select(segment_history.c.change, segment_history.c.at).where(
            segment_history.c.profile_id == bad).order_by(segment_history.c.id)).all()  # fmt: skip
        assert conn.execute(sa.select(sa.func.count()).select_from(segment_timers).where(
            segment_timers.c.profile_id == bad)).scalar() == 0  # fmt: skip
    assert [tuple(h) for h in hers] == [("entered", T0), ("exited", due)]


def test_a_timer_that_keeps_failing_is_tried_less_and_less_often(engine, ws, clock, worker, monkeypatch):
    """The waits double from a minute (store.retry_after), at most a day, counted from the first failure however late
    the timer was; the instant it first fell due is kept, and when the cause is gone she is decided then."""
    define(engine, ws, "recent", {"performed": {"event": "Product Viewed", "window": "1d"}})
    settle(worker)
    send(engine, ws, [ev("Product Viewed", T0)], received_at=T0)
    settle(worker)
    bad = profile_of(engine, ws, "user_id:u1")
    real, broken = seg.decide, [True]

    def flaky(defs, order, dependents, sids, person, *rest):
        if broken[0]:
            raise RuntimeError("a bad profile")
        return real(defs, order, dependents, sids, person, *rest)

    monkeypatch.setattr(seg, "decide", flaky)
    due = T0 + timedelta(days=1)
    clock.at = due + timedelta(hours=6)  # late (a worker was down): the first retry is still a minute later
    retries = []
    for _ in range(16):
        settle(worker, 1)
        with engine.connect() as conn:
            (row,) = conn.execute(sa.select(segment_timers).where(segment_timers.c.profile_id == bad)).all()
        assert row.first_due == due
        retries.append(row.due_at - clock.at)
        clock.at = row.due_at
    minutes = [int(r.total_seconds() // 60) for r in retries]
    assert minutes[:8] == [1, 2, 4, 8, 16, 32, 64, 128]
    assert max(retries) == timedelta(days=1) and minutes[-1] == 24 * 60  # a day at most
    broken[0] = False
    settle(worker, 1)
    assert members(engine, ws, "recent") == set()
    with engine.connect() as conn:
        hers = conn.execute(sa.select(segment_history.c.change, segment_history.c.at).where(
            segment_history.c.profile_id == bad).order_by(segment_history.c.id)).all()  # fmt: skip
    assert [tuple(h) for h in hers] == [("entered", T0), ("exited", due)]


def test_a_store_purchase_empties_the_segment_at_once(engine, ws, clock, worker):
    define(engine, ws, "browse", BROWSE)
    for i in range(3):
        send(engine, ws, [ev("Product Viewed", T0 + timedelta(hours=i), category="laptops")])
    clock.at = T0 + timedelta(hours=3)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "browse") == {pid}
    clock.at = T0 + timedelta(hours=5)
    buy = ev("Order Completed", clock.at, total=1299)
    buy["context"]["channel"] = "store"
    send(engine, ws, [buy])
    settle(worker)
    assert members(engine, ws, "browse") == set()
    assert history(engine, ws, "browse")[-1] == ("exited", "event")


def test_a_segment_of_a_segment_follows_it_in_the_same_pass(engine, ws, clock, worker):
    define(engine, ws, "buyers", {"performed": {"event": "Order Completed"}})
    define(engine, ws, "big", {"and": [{"segment": "buyers"}, {"trait": {"name": "plan", "equals": "pro"}}]})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat(),
                       "traits": {"plan": "pro"}}, ev("Order Completed", T0 + timedelta(minutes=1))])  # fmt: skip
    clock.at = T0 + timedelta(minutes=2)
    settle(worker, 2)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "buyers") == {pid} and members(engine, ws, "big") == {pid}
    with engine.begin() as conn, pytest.raises(Exception, match="is used by big"):
        store.delete(conn, ws, "buyers")


def test_batch_computation_on_creation_agrees_with_the_incremental_engine(engine, ws, clock, worker):
    for u in range(6):
        msgs = [ev("Product Viewed", T0 + timedelta(hours=h), user=f"u{u}", category="laptops") for h in range(u)]
        send(engine, ws, msgs or [{"type": "identify", "userId": f"u{u}", "messageId": f"i{u}",
                                   "timestamp": T0.isoformat()}])  # fmt: skip
    clock.at = T0 + timedelta(hours=8)
    define(engine, ws, "incremental", BROWSE)  # defined before the events are resolved: follows them
    settle(worker)
    define(engine, ws, "batch", BROWSE)  # defined after: computed in batch
    settle(worker)
    want = {profile_of(engine, ws, f"user_id:u{u}") for u in range(3, 6)}
    assert members(engine, ws, "incremental") == want == members(engine, ws, "batch")
    assert {c for c, _ in history(engine, ws, "batch")} == {"entered"} and len(history(engine, ws, "batch")) == 3
    assert {cause for _, cause in history(engine, ws, "batch")} == {"batch"}
    # a changed rule is computed again, as a difference
    define(engine, ws, "batch", {**BROWSE, "and": [{**BROWSE["and"][0], "performed": {
        **BROWSE["and"][0]["performed"], "times": {"gte": 5}}}, BROWSE["and"][1]]})
    settle(worker)
    assert members(engine, ws, "batch") == {profile_of(engine, ws, "user_id:u5")}


def test_a_merged_away_profile_leaves_its_segments_and_the_survivor_is_evaluated(engine, ws, clock, worker):
    define(engine, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()}])
    send(engine, ws, [{**ev("Product Viewed", T0 + timedelta(minutes=1)), "userId": None, "anonymousId": "a1"}])
    clock.at = T0 + timedelta(minutes=2)
    settle(worker)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    assert members(engine, ws, "viewers") == {anon}
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": (T0 + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    settle(worker)
    known = profile_of(engine, ws, "user_id:u1")
    assert known != anon and members(engine, ws, "viewers") == {known}
    # her history holds what happened under the merged-away id too, as her export does (an outside probe: only
    # the survivor's own rows were shown)
    with engine.connect() as conn:
        hist = store.profile_segments(conn, ws, known)["history"]
    assert [(h["segment_id"], h["change"], h["profile_id"]) for h in reversed(hist)] == [
        ("viewers", "entered", anon), ("viewers", "exited", anon), ("viewers", "entered", known)]


def test_an_erased_member_leaves_no_segment_row(engine, ws, clock, worker):
    define(engine, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    send(engine, ws, [ev("Product Viewed", T0)])
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "viewers") == {pid}
    with engine.begin() as conn:
        out = privacy.erase(conn, ws, pid)
    assert out["deleted"]["segment_members"] == 1 and out["deleted"]["segment_history"] >= 1
    settle(worker)
    with engine.connect() as conn:
        for t in (segment_history, segment_timers):
            assert conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.profile_id == pid)).scalar() == 0
    assert members(engine, ws, "viewers") == set()


# -- incremental and batch agree, whatever happens ------------------------------------------------------------------
RULES = {
    "browse": BROWSE,
    "pro": {"trait": {"name": "plan", "equals": "pro"}},
    "recent": {"performed": {"event": "Product Viewed", "window": "2d"}},
    "pro_browsers": {"and": [{"segment": "pro"}, {"segment": "recent"}]},
    "quiet": {"and": [{"performed": {"event": "Order Completed", "window": "2d", "times": {"eq": 0}}},
                      {"last_time": {"event": "Product Added", "within_last": "1d"}}]},
    # read only what an event that changes the profile brings (a track may carry traits in its context): the
    # consumer routes other events away from them (engine.Index)
    "emailable": {"reachable": {"channel": "email"}},
    "home": {"performed": {"event": "Home", "window": "1d"}},
    "not_pro": {"not": {"trait": {"name": "plan", "equals": "pro"}}},  # true of a new profile made by a page view
}
ORDER = ("browse", "pro", "recent", "pro_browsers", "quiet", "emailable", "home", "not_pro")  # dependency order


def timers(engine, ws) -> dict:
    t = segment_timers.c
    with engine.connect() as conn:
        return {(s, p): due for s, p, due in conn.execute(sa.select(t.segment_id, t.profile_id, t.due_at).where(
            t.workspace_id == ws))}  # fmt: skip


def test_incremental_and_batch_give_the_same_members_at_every_step(engine, clock, worker):
    """A hypothesis state machine: random events from known and anonymous people, sign-ins that merge profiles,
    trait changes, erasures and clock moves. After each step (and the worker's passes), every segment's members as
    kept incrementally equal the rule evaluated afresh for every profile; and the batch (``recompute``, the SQL
    compiler in chunks of two profiles) finds nothing to change and leaves exactly the incremental path's timers,
    which it is made to write again; and so do all the segments computed together (``recompute_pending``)."""
    from hypothesis import HealthCheck, settings
    from hypothesis import strategies as st
    from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

    class Machine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self.ws = workspaces.create(engine, "sm-" + uuid.uuid4().hex[:6])["id"]
            clock.at = T0
            for sid, rl in RULES.items():
                define(engine, self.ws, sid, rl)
            settle(worker)
            self.n = 0

        def _send(self, msg):
            self.n += 1
            msg = {**msg, "messageId": f"m{self.n}", "timestamp": clock.at.isoformat()}
            send(engine, self.ws, [msg], received_at=clock.at)

        @rule(who=st.sampled_from(["u1", "u2", "a1", "a2", "a3"]),
              name=st.sampled_from(["Product Viewed", "Product Added", "Order Completed"]),
              category=st.sampled_from(["laptops", "phones"]))  # fmt: skip
        def act(self, who, name, category):
            key = "userId" if who.startswith("u") else "anonymousId"
            self._send({"type": "track", key: who, "event": name, "properties": {"category": category}})

        @rule(user=st.sampled_from(["u1", "u2"]), anon=st.sampled_from(["a1", "a2", "a3"]))
        def sign_in(self, user, anon):
            self._send({"type": "identify", "userId": user, "anonymousId": anon})

        @rule(user=st.sampled_from(["u1", "u2"]), plan=st.sampled_from(["pro", "free"]))
        def plan(self, user, plan):
            self._send({"type": "identify", "userId": user, "traits": {"plan": plan}})

        @rule(who=st.sampled_from(["u1", "a1", "a2"]), trait=st.sampled_from(["plan", "email"]))
        def trait_in_context(self, who, trait):
            """A track that changes the profile: a trait (or an email, an address) in its context."""
            key = "userId" if who.startswith("u") else "anonymousId"
            value = "pro" if trait == "plan" else f"{who}@example.com"
            self._send({"type": "track", key: who, "event": "Form Sent", "context": {"traits": {trait: value}}})

        @rule(who=st.sampled_from(["u1", "u2", "a1"]))
        def page(self, who):
            key = "userId" if who.startswith("u") else "anonymousId"
            self._send({"type": "page", key: who, "name": "Home", "properties": {"path": "/"}})

        @rule(hours=st.sampled_from([1, 5, 24, 47, 49, 24 * 7]))
        def wait(self, hours):
            clock.at = clock.at + timedelta(hours=hours)

        @rule(user=st.sampled_from(["u1", "u2", "a1"]))
        def erase(self, user):
            settle(worker)
            kind = "user_id" if user.startswith("u") else "anonymous_id"
            with engine.begin() as conn:
                from chorus.profiles import views

                try:
                    pid = views.find_by_ident(conn, self.ws, f"{kind}:{user}")
                except Exception:  # noqa: BLE001 - not (or no longer) a profile
                    return
                privacy.erase(conn, self.ws, pid)

        @invariant()
        def agree(self):
            settle(worker)
            with engine.connect() as conn:
                w = workspaces.get(conn, self.ws)
                pids = list(conn.execute(sa.select(profiles.c.id).where(profiles.c.workspace_id == self.ws)).scalars())
                people = {p: seg.load_person(conn, w, p) for p in pids}
            from chorus.segments.evaluate import evaluate

            inside: dict[str, set[str]] = {sid: set() for sid in RULES}
            for sid in ORDER:
                for pid, person in people.items():
                    from dataclasses import replace

                    person = replace(person, segments=frozenset(s for s in inside if pid in inside[s]))
                    if evaluate(rules.parse(RULES[sid]), person, clock.at).value:
                        inside[sid].add(pid)
            for sid in RULES:
                assert members(engine, self.ws, sid) == inside[sid], (sid, clock.at)
            kept = timers(engine, self.ws)
            with engine.begin() as conn:  # the batch must write every timer again
                conn.execute(segment_timers.delete().where(segment_timers.c.workspace_id == self.ws))
            for sid in ORDER:
                out = seg.recompute(engine, self.ws, sid, chunk=2)
                assert (out.entered, out.exited) == ([], []), (sid, clock.at)
                assert members(engine, self.ws, sid) == inside[sid], (sid, clock.at)
            assert timers(engine, self.ws) == kept, clock.at
            # and all of them pending, computed together (one query a chunk, pro_browsers reading the new answers
            # of pro and recent inside it): nothing to change either, the same timers
            with engine.begin() as conn:
                conn.execute(segment_timers.delete().where(segment_timers.c.workspace_id == self.ws))
                conn.execute(segments.update().where(segments.c.workspace_id == self.ws).values(computed_version=None))
            done = seg.recompute_pending(engine, self.ws, chunk=2)
            assert set(done) == set(RULES), clock.at
            assert all((o.entered, o.exited) == ([], []) for o in done.values()), clock.at
            assert {sid: members(engine, self.ws, sid) for sid in RULES} == inside, clock.at
            assert timers(engine, self.ws) == kept, clock.at

    Machine.TestCase.settings = settings(max_examples=8, stateful_step_count=12, deadline=None,
                                         suppress_health_check=list(HealthCheck))  # fmt: skip
    Machine.TestCase().runTest()


def vip_merged(engine, ws, worker, refs=()) -> tuple[str, str]:
    """A static list ``vip`` and the segment ``vips`` of it (and segments ``refs`` referring to it); an anonymous
    visitor is put on the list, then signs in as the known ``u1``: her profile merges into his. Returns the
    anonymous profile and the survivor."""
    with engine.begin() as conn:
        store.save_list(conn, ws, "vip", "VIP", T0)
    define(engine, ws, "vips", {"list": "vip"})
    for sid in refs:
        define(engine, ws, sid, {"segment": "vips"})
    send(engine, ws, [{"type": "identify", "userId": "u1", "messageId": "i1", "timestamp": T0.isoformat()}])
    send(engine, ws, [{**ev("Product Viewed", T0), "userId": None, "anonymousId": "a1"}])
    settle(worker)
    anon = profile_of(engine, ws, "anonymous_id:a1")
    with engine.begin() as conn:
        store.change_list(conn, ws, "vip", [anon], [], T0)
    settle(worker)
    assert members(engine, ws, "vips") == {anon}
    send(engine, ws, [{"type": "identify", "userId": "u1", "anonymousId": "a1", "messageId": "i2",
                       "timestamp": (T0 + timedelta(minutes=3)).isoformat()}])  # fmt: skip
    settle(worker)
    survivor = profile_of(engine, ws, "user_id:u1")
    assert survivor != anon
    return anon, survivor


def test_a_merged_profiles_list_entries_and_messages_are_the_survivors(engine, ws, clock, worker):
    """List entries and messages keep the profile id they were made for; after a merge they still count."""
    _, survivor = vip_merged(engine, ws, worker)
    assert members(engine, ws, "vips") == {survivor}
    with engine.begin() as conn:  # she is named by her profile id now: the entry made under the merged id goes
        assert store.change_list(conn, ws, "vip", [], [survivor], T0)["removed"] == 1
    settle(worker)
    assert members(engine, ws, "vips") == set()


def test_a_rule_on_chorus_own_timeline_events_follows_them(engine, ws, clock, worker):
    """'Segment Entered' is stored already attributed (no event change): the engine still sees it."""
    define(engine, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    define(engine, ws, "entered-once", {"performed": {"event": "Segment Entered"}})
    send(engine, ws, [ev("Product Viewed", T0)])
    clock.at = T0 + timedelta(minutes=1)
    settle(worker, 6)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "entered-once") == {pid}


def test_a_rule_changed_in_the_middle_of_its_batch_is_computed_again_from_the_start(engine, ws, clock):
    for u in range(6):
        send(engine, ws, [{"type": "identify", "userId": f"u{u}", "messageId": f"i{u}", "timestamp": T0.isoformat(),
                           "traits": {"tier": u % 2}}])  # fmt: skip
    from tests.identity.helpers import resolve

    resolve(engine)
    define(engine, ws, "tier", {"trait": {"name": "tier", "equals": 0}})
    out, complete = seg.batch_step(engine, ws, "tier", chunk=3)
    assert not complete
    define(engine, ws, "tier", {"trait": {"name": "tier", "equals": 1}})  # the rule changes mid-batch
    while not seg.batch_step(engine, ws, "tier", chunk=3)[1]:
        pass
    odd = {profile_of(engine, ws, f"user_id:u{u}") for u in (1, 3, 5)}
    assert members(engine, ws, "tier") == odd
    with engine.connect() as conn:
        assert store.view(conn, ws, store.get(conn, ws, "tier"))["status"] == "ready"


def test_deleting_a_segment_takes_every_member_out_with_the_same_records_chunk_by_chunk(engine, ws, clock, worker,
                                                                                      monkeypatch):  # fmt: skip
    """A deleted segment's members leave it first, cause ``deleted``: a ``Segment Exited`` event on each timeline
    and a ``segment`` feed change each (journeys see them go), in chunks of people locked together."""
    monkeypatch.setattr(seg, "DROP_CHUNK", 2)
    define(engine, ws, "buyers", {"performed": {"event": "Order Completed"}})
    define(engine, ws, "viewers", {"performed": {"event": "Product Viewed"}})
    settle(worker)
    clock.at = T0 + timedelta(hours=1)
    send(engine, ws, [ev("Order Completed", T0, user=f"u{i}") for i in range(5)]
         + [ev("Product Viewed", T0, user="u0")])  # fmt: skip
    settle(worker)
    pids = {profile_of(engine, ws, f"user_id:u{i}") for i in range(5)}
    assert members(engine, ws, "buyers") == pids
    assert seg.drop(engine, ws, "buyers", clock=lambda: clock.at) == 5
    assert history(engine, ws, "buyers") == []  # went with the definition
    with engine.connect() as conn:
        exits = conn.execute(sa.select(events.c.profile_id).where(
            events.c.workspace_id == ws, events.c.event == "Segment Exited")).scalars().all()  # fmt: skip
        fed = [p for p, d in conn.execute(sa.select(profile_changes.c.profile_id, profile_changes.c.detail).where(
            profile_changes.c.workspace_id == ws, profile_changes.c.cause == "segment"))
            if d == {"segment": "buyers", "change": "exited"}]  # fmt: skip
        assert store.get(conn, ws, "viewers") is not None
    assert sorted(exits) == sorted(fed) == sorted(pids)
    assert members(engine, ws, "viewers") == {profile_of(engine, ws, "user_id:u0")}  # the other segment is untouched


def test_a_change_of_the_workspaces_time_zone_computes_again_the_segments_that_read_it(engine, ws, clock, worker):
    """A person without a zone of her own lives in ``messaging.timezone``. A calendar window (``since`` a day) reads
    it; when it changes, the segments that read it are computed again from the start (memberships and timers), the
    others are not touched, and a change of nothing they read (quiet hours) leaves every segment computed."""
    define(engine, ws, "november", {"performed": {"event": "Order Completed",
                                                  "window": {"since": "2024-11-29", "before": "2024-12-03"}}})
    define(engine, ws, "buyers", {"performed": {"event": "Order Completed"}})
    settle(worker)
    clock.at = datetime.fromisoformat("2024-11-29T03:00:00+00:00")  # 04:00 in Paris; 22:00 the 28th in New York
    send(engine, ws, [ev("Order Completed", clock.at)], received_at=clock.at)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "november") == {pid}  # no zone anywhere: UTC, the 29th

    def state():
        with engine.connect() as conn:
            return {r.id: (r.version, r.computed_version) for r in conn.execute(
                sa.select(segments).where(segments.c.workspace_id == ws))}  # fmt: skip

    before = state()
    workspaces.update_settings(engine, ws, {"messaging": {"quiet_hours": {"start": "21:00", "end": "08:00"}}})
    assert state() == before  # nothing a segment reads

    workspaces.update_settings(engine, ws, {"messaging": {"timezone": "America/New_York"}})
    after = state()
    assert after["november"] == (before["november"][0], None)  # pending, the rule unchanged
    assert after["buyers"] == before["buyers"]
    settle(worker)
    assert members(engine, ws, "november") == set()  # the 28th in New York
    assert members(engine, ws, "buyers") == {pid}
    assert state() == before  # computed again
    assert history(engine, ws, "november")[-1][0] == "exited"

    workspaces.update_settings(engine, ws, {"messaging": {"timezone": "Europe/Paris"}})
    settle(worker)
    assert members(engine, ws, "november") == {pid}


def test_a_change_of_identifier_channels_computes_reachable_segments_again(engine, ws, clock, worker):
    """settings.identifiers decides which identifiers are addresses of which channel (IdentityConfig.address_channels),
    which `reachable` reads: a change computes those segments again (found by a review)."""
    from chorus.identity.identifiers import DEFAULT_DECLARED
    from chorus.segments import load
    from chorus.segments.evaluate import evaluate

    define(engine, ws, "pushable", {"reachable": {"channel": "push"}})
    settle(worker)
    msg = ev("App Opened", T0)
    msg["context"]["device"] = {"type": "ios", "token": "tok-123"}
    send(engine, ws, [msg], received_at=T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "pushable") == {pid}
    declared = {**DEFAULT_DECLARED, "device_token": {"known": False, "unique": False}}  # no longer a push address
    workspaces.update_settings(engine, ws, {"identifiers": declared})
    settle(worker)
    with engine.connect() as conn:
        w = workspaces.get(conn, ws)
        who = load.people(conn, ws, [pid], w.identity, zone_default=w.timezone)[pid]
        now_answer = evaluate(rules.parse({"reachable": {"channel": "push"}}), who, clock.at).value
    assert not now_answer and members(engine, ws, "pushable") == set()


def test_a_change_of_topics_computes_subscribed_segments_again(engine, ws, clock, worker):
    """An opt-out topic made opt-in: nobody has granted it, so nobody is subscribed any more."""
    workspaces.update_settings(engine, ws, {"messaging": {"topics": {"offers": {"mode": "opt_out"}}}})
    define(engine, ws, "offers", {"subscribed": {"channel": "email", "topic": "offers"}})
    settle(worker)
    msg = ev("Signed Up", T0)
    msg["type"] = "identify"
    msg.pop("event")
    msg["traits"] = {"email": "a@example.com"}
    send(engine, ws, [msg], received_at=T0)
    settle(worker)
    pid = profile_of(engine, ws, "user_id:u1")
    assert members(engine, ws, "offers") == {pid}
    workspaces.update_settings(engine, ws, {"messaging": {"topics": {"offers": {"mode": "opt_in"}}}})
    settle(worker)
    assert members(engine, ws, "offers") == set()
