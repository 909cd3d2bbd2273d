"""Profiles stored before the state kept its activity summary get it from the worker's backfill task
(``profiles.activity``, decision 0046): the same summary the resolver's fold would have kept, on both engines."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from chorus.profiles.activity import Backfill
from chorus.store.tables import profiles
from chorus.timeutil import iso
from tests.segments import test_compile as comp

T0 = comp.props.T0


def _states(engine, ws: str) -> dict[str, dict]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(profiles.c.id, profiles.c.state).where(
            profiles.c.workspace_id == ws)).all())  # fmt: skip


def _forget_activity(engine, ws: str) -> None:
    """Make every profile of ``ws`` look as if stored before activity was kept."""
    states = _states(engine, ws)
    with engine.begin() as conn:
        for pid, state in states.items():
            state.pop("activity", None)
            conn.execute(profiles.update().where(profiles.c.id == pid).values(state=state))


def _drain(engine) -> int:
    task, total = Backfill(engine), 0
    while (n := task.run_once()) > 0:
        total += n
    assert task.finished and task.run_once() == 0
    return total


@comp.SETTINGS
@given(st.lists(comp.a_person(), min_size=1, max_size=3))
def test_the_backfill_gives_the_summary_the_fold_keeps(engine, people):
    """Random people (tracks, pages, identifies, outbound events they sent, Chorus' own message records) resolved
    as usual; their summaries removed; the backfill folds them again to exactly what the resolver kept."""
    w = comp.new_workspace(engine)
    comp.store_people(engine, w, people)
    kept = _states(engine, w["id"])
    assert all("activity" in s for s in kept.values())
    _forget_activity(engine, w["id"])
    assert _drain(engine) >= len(kept)
    again = _states(engine, w["id"])
    assert {pid: s["activity"] for pid, s in again.items()} == {pid: s["activity"] for pid, s in kept.items()}
    assert {pid: {k: v for k, v in s.items() if k != "activity"} for pid, s in again.items()} == {
        pid: {k: v for k, v in s.items() if k != "activity"} for pid, s in kept.items()}  # the rest untouched


def test_a_profile_resolved_after_the_backfill_keeps_counting(engine):
    w = comp.new_workspace(engine)
    orders = [{"type": "track", "event": "Order Completed", "timestamp": iso(T0 - timedelta(days=d)),
               "context": {"channel": "web"}} for d in range(1, 4)]  # fmt: skip
    by_user = comp.store_people(engine, w, [{"messages": orders}])
    _forget_activity(engine, w["id"])
    assert _drain(engine) == 1
    comp.send(engine, w["id"], [{"type": "track", "event": "Order Completed", "userId": "u0", "messageId": "late",
                                 "timestamp": iso(T0)}])  # fmt: skip
    comp.resolve(engine)
    act = _states(engine, w["id"])[by_user["u0"]]["activity"]
    assert act["names"]["track"]["Order Completed"] == [4, iso(T0 - timedelta(days=3)), iso(T0)]


def test_the_walk_covers_every_profile_once_over_many_passes(engine, monkeypatch):
    """More profiles than a pass takes, in two workspaces: the cursor walks all of them over several passes, each
    folded once."""
    from chorus.profiles import activity

    monkeypatch.setattr(activity, "BATCH", 3)
    folded: list[str] = []
    real = activity.bulk.update_rows

    def update_rows(conn, table, key, rows, *a, **kw):
        if table is profiles:
            folded.extend(r["id"] for r in rows)
        return real(conn, table, key, rows, *a, **kw)

    monkeypatch.setattr(activity.bulk, "update_rows", update_rows)
    order = {"type": "track", "event": "Order Completed", "timestamp": iso(T0 - timedelta(days=1)),
             "context": {"channel": "web"}}  # fmt: skip
    spaces = [comp.new_workspace(engine) for _ in range(2)]
    for w, n in zip(spaces, (4, 5), strict=True):
        comp.store_people(engine, w, [{"messages": [order]} for _ in range(n)])
        _forget_activity(engine, w["id"])
    task, passes, done = Backfill(engine), 0, 0
    while (n := task.run_once()) > 0:
        passes, done = passes + 1, done + n
        assert n <= 3
    # other tests' workspaces share the store: at least ours, each once, in at least ceil(9 / 3) passes
    assert passes >= 3 and done >= 9
    ours = set()
    for w in spaces:
        states = _states(engine, w["id"])
        ours |= set(states)
        acts = [s.get("activity") for s in states.values()]
        assert acts and all(a is not None and a["names"]["track"]["Order Completed"][0] == 1 for a in acts)
    mine = [pid for pid in folded if pid in ours]
    assert sorted(mine) == sorted(ours) and len(mine) == 9, "each of our nine profiles folded exactly once"
